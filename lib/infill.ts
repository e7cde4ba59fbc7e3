// Fill in the middle (code infilling) for the Llama 2 models trained for it: Code Llama 7B and 13B (base and
// instruct) write the code between a prefix and a suffix. The prompt is Meta's (codellama repository,
// llama/generation.py `infilling_prompt_tokens`, which transformers' CodeLlamaTokenizer reproduces):
//   prefix-suffix-middle:  <s> ▁<PRE> encode(prefix) ▁<SUF> encode_infilling(suffix) ▁<MID>
//   suffix first:          <s> ▁<PRE> ▁<SUF> encode_infilling(suffix) ▁<MID> encode(prefix)
// encode_infilling encodes without SentencePiece's leading "▁" (Meta: encode("☺" + s)[2:]: Tokenizer.encodeBare). The middle ends at ▁<EOT> (or EOS) and is decoded keeping its leading space (decode_infilling).
import type { Tokenizer } from "./tokenizer.js";
import type { FimTokens } from "./types.js";


// Code Llama's pieces; GGUF files converted by llama.cpp keep them as they are.
const NAMES = { prefix: ["▁<PRE>", "<PRE>"], suffix: ["▁<SUF>", "<SUF>"], middle: ["▁<MID>", "<MID>"], eot: ["▁<EOT>", "<EOT>"] } as const;

/** The model's infilling pieces, found by name; null when it has not all four (it was not trained for infilling). */
export function fimTokens(tok: Tokenizer): FimTokens | null {
  const v = tok.vocabulary;
  const find = (names: readonly string[]): number => {
    for (const name of names) {
      const id = v.tokens.indexOf(name);
      if (id >= 0) return id;
    }
    return -1;
  };
  const ids = { prefix: find(NAMES.prefix), suffix: find(NAMES.suffix), middle: find(NAMES.middle), eot: find(NAMES.eot) };
  return Object.values(ids).every((id) => id >= 0) ? ids : null;
}

/** The prompt that asks for the middle between `prefix` and `suffix`. */
export function infillPromptIds(tok: Tokenizer, fim: FimTokens, prefix: string, suffix: string, suffixFirst = false): number[] {
  const pre = tok.encode(prefix);
  const suf = tok.encodeBare(suffix); // encode_infilling
  return suffixFirst
    ? [tok.bosId, fim.prefix, fim.suffix, ...suf, fim.middle, ...pre]
    : [tok.bosId, fim.prefix, ...pre, fim.suffix, ...suf, fim.middle];
}
