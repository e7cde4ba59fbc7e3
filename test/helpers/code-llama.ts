// A synthetic model with Code Llama's vocabulary layout: Llama 2's 32,000 pieces and 16 more, of which
// ▁<PRE> ▁<SUF> ▁<MID> ▁<EOT> are 32007-32010 (random weights: it runs every infilling code path).
import { writeFileSync } from "node:fs";
import path from "node:path";
import { makeSyntheticModel } from "../../lib/synth/model.js";
import { buildSentencePieceModel, PieceType, type Vocabulary } from "../../lib/tokenizer/sentencepiece-model.js";

export const CODE_LLAMA_FIM = { prefix: 32007, suffix: 32008, middle: 32009, eot: 32010 };

/** Writes `dir/tiny-code.gguf` from `base` (Llama 2's vocabulary) and returns its path. */
export async function writeCodeLlamaLikeModel(dir: string, base: Vocabulary, seed = 5): Promise<string> {
  const names: Record<number, string> = { 7: "▁<PRE>", 8: "▁<SUF>", 9: "▁<MID>", 10: "▁<EOT>" };
  const extra = Array.from({ length: 16 }, (_, i) => names[i] ?? `<extra_${i}>`);
  const vocab: Vocabulary = {
    ...base,
    tokens: [...base.tokens, ...extra],
    scores: Float32Array.from([...base.scores, ...extra.map(() => 0)]),
    types: Int32Array.from([...base.types, ...extra.map(() => PieceType.CONTROL)]),
  };
  const tok = path.join(dir, "codellama-tokenizer.model");
  writeFileSync(tok, buildSentencePieceModel(vocab));
  return (await makeSyntheticModel({ preset: "tiny", format: "gguf", out: path.join(dir, "tiny-code.gguf"), seed, tokenizer: tok })).path;
}
