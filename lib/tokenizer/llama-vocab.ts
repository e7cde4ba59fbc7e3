// The Llama 2 vocabulary (32000 pieces) as shipped in the MIT-licensed `llama-tokenizer-js` package,
// with the scores and types of Meta's tokenizer.model reconstructed: control <unk>/<s>/</s>, 256 byte
// pieces, then normal pieces scored by merge rank (-(id - 259)), runs of "▁" (one or more) at -1e9. Used by the
// built-in demo model so that it works on a machine with no model download.
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import { PieceType, type Vocabulary } from "./sentencepiece-model.js";
import { Llama2Error } from "../errors.js";

let cached: Vocabulary | undefined;

export function llamaVocabulary(): Vocabulary {
  if (cached) return cached;
  const require = createRequire(import.meta.url);
  let src: string;
  try {
    src = readFileSync(require.resolve("llama-tokenizer-js/llama-tokenizer.js"), "utf8");
  } catch (err) {
    throw new Llama2Error("ERR_TOKENIZER", "the built-in Llama vocabulary needs the 'llama-tokenizer-js' package", { cause: err });
  }
  const m = /const llama_vocab_base64 = "([^"]+)"/.exec(src);
  if (!m) throw new Llama2Error("ERR_TOKENIZER", "llama-tokenizer-js: vocabulary not found in the package");
  const tokens = Buffer.from(m[1]!, "base64").toString("utf8").split("\n");
  if (tokens.length !== 32000) throw new Llama2Error("ERR_TOKENIZER", `llama-tokenizer-js: expected 32000 pieces, got ${tokens.length}`);
  const scores = new Float32Array(tokens.length);
  const types = new Int32Array(tokens.length).fill(PieceType.NORMAL);
  types[0] = PieceType.UNKNOWN;
  types[1] = PieceType.CONTROL;
  types[2] = PieceType.CONTROL;
  for (let i = 3; i < 259; i++) types[i] = PieceType.BYTE;
  for (let i = 259; i < tokens.length; i++) scores[i] = /^▁+$/.test(tokens[i]!) ? -1e9 : -(i - 259);
  cached = { tokens, scores, types, unkId: 0, bosId: 1, eosId: 2, padId: -1 };
  return cached;
}
