// Tokenizer micro-benchmarks (tinybench): the host-side costs around each generation step.
import type { Bench } from "tinybench";
import type { Tokenizer } from "../tokenizer.js";

// ~1 KB of ordinary English prose (with a few non-ASCII characters, as chat text has).
const PARAGRAPH =
  "Llamas are domesticated South American camelids, widely used as meat and pack animals by Andean " +
  "cultures since the pre-Columbian era. They are social animals and live with others as a herd. " +
  "Their wool is soft and contains only a small amount of lanolin. Llamas can learn simple tasks " +
  "after a few repetitions. When using a pack, they can carry about 25 to 30% of their body weight " +
  "for 8 to 13 km (5 to 8 miles). The name llama was adopted by European settlers from native " +
  "Peruvians. The ancestors of llamas are thought to have originated from the Great Plains of North " +
  "America about 40 million years ago, and subsequently migrated to South America about three " +
  "million years ago during the Great American Interchange. By the end of the last ice age, camelids " +
  "were extinct in North America. As of 2007, there were over seven million llamas and alpacas in " +
  "South America and over 158,000 llamas and 100,000 alpacas, descended from progenitors imported " +
  "late in the 20th century, in the United States and Canada. In Aymara mythology, llamas are " +
  "important beings — café owners in Cusco still tell their stories.";

export function addTokenizerBenches(bench: Bench, tok: Tokenizer): void {
  let ids = tok.encode(PARAGRAPH);
  while (ids.length < 256) ids = ids.concat(ids);
  const ids256 = ids.slice(0, 256);
  bench
    .add(`tokenizer: encode ${Buffer.byteLength(PARAGRAPH)} B paragraph`, () => tok.encode(PARAGRAPH))
    .add("tokenizer: decode 256 ids", () => tok.decode(ids256))
    .add("tokenizer: stream-decode 256 ids one at a time", () => {
      const d = tok.createStreamDecoder();
      let n = 0;
      for (const id of ids256) n += d.push(id).length;
      return n + d.flush().length;
    });
}
