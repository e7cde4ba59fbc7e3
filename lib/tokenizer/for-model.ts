// Which tokenizer goes with a model, found without loading its weights: an explicit tokenizer.model,
// a GGUF's metadata, an HF directory's tokenizer.model (else its tokenizer.json), or a tokenizer.model
// beside a llama2.c file.
// `Llama2.load` resolves through `resolveTokenizer`; the CLI (`llama2 tokenize/inspect`) through
// `tokenizerForModel`, which reads only the model's header (native `readModelInfo`).
import { existsSync, statSync } from "node:fs";
import path from "node:path";
import { InvalidArgumentError, Llama2Error, fromNative } from "../errors.js";
import { native, type NativeModelSourceInfo } from "../native.js";
import { Tokenizer } from "../tokenizer.js";
import { withHfAddedTokens } from "./hf-added-tokens.js";
import { hfSpacePrefix } from "./hf-tokenizer-json.js";

/** The model's tokenizer: an explicit file, the GGUF's metadata, the HF directory's tokenizer.model or
 * tokenizer.json (with its added tokens), or a tokenizer.model beside a llama2.c file (only when its vocabulary size matches). null: none. */
export async function resolveTokenizer(info: NativeModelSourceInfo, explicit?: string): Promise<Tokenizer | null> {
  if (explicit) return Tokenizer.fromFile(explicit);
  if (info.tokenizer) {
    const t = info.tokenizer;
    if (t.model !== "llama") {
      throw new Llama2Error("ERR_TOKENIZER", `${info.path}: tokenizer model '${t.model}' is not supported (only SentencePiece 'llama')`);
    }
    return Tokenizer.fromVocabulary(
      { tokens: t.tokens, scores: t.scores, types: t.types, unkId: t.unkId, bosId: t.bosId, eosId: t.eosId, padId: t.padId, ...(t.addSpacePrefix === false && { spacePrefix: "never" as const }) },
      `${info.path} (GGUF metadata)`,
    );
  }
  if (info.tokenizerPath) {
    const tok = await Tokenizer.fromFile(info.tokenizerPath);
    // An HF fine-tune's added tokens (tokenizer_config.json) fill the vocabulary past its tokenizer's, its
    // bos_token / eos_token may name them, and where "▁" goes is transformers' rule (hfSpacePrefix).
    if (info.format !== "hf" || tok.vocabSize > info.config.vocabSize) return tok;
    const dir = path.dirname(info.tokenizerPath);
    let vocab = withHfAddedTokens(tok.vocabulary, dir, info.config.vocabSize);
    if (!/\.json$/i.test(info.tokenizerPath)) {
      const spacePrefix = hfSpacePrefix(dir);
      if (spacePrefix !== vocab.spacePrefix) vocab = { ...vocab, spacePrefix };
    }
    return vocab === tok.vocabulary ? tok : Tokenizer.fromVocabulary(vocab, `${info.tokenizerPath} (with the folder's tokenizer settings)`);
  }
  const beside = path.join(path.dirname(info.path), "tokenizer.model");
  if (info.format === "llama2c" && existsSync(beside)) {
    const tok = await Tokenizer.fromFile(beside);
    return tok.vocabSize === info.config.vocabSize ? tok : null;
  }
  return null;
}

/** Whether `p` names a model (HF directory, config.json, .gguf, llama2.c .bin) rather than a tokenizer file. */
export function isModelPath(p: string): boolean {
  let isDir = false;
  try {
    isDir = statSync(p).isDirectory();
  } catch {
    /* missing: decided by the name below, and reported by whoever opens it */
  }
  return isDir || /\.(gguf|bin|llama2c)$/i.test(p) || path.basename(p) === "config.json";
}

/**
 * The tokenizer for `modelPath`: a SentencePiece tokenizer.model itself, or the tokenizer that goes
 * with a model (GGUF metadata, HF directory, beside a llama2.c file), read without loading weights.
 * Throws ERR_TOKENIZER when the model has none; file errors keep their codes.
 */
export async function tokenizerForModel(modelPath: string, opts: { tokenizerPath?: string } = {}): Promise<Tokenizer> {
  if (typeof modelPath !== "string" || modelPath === "") throw new InvalidArgumentError("path", "expected a model or tokenizer path");
  if (opts.tokenizerPath) return Tokenizer.fromFile(opts.tokenizerPath);
  if (!isModelPath(modelPath)) return Tokenizer.fromFile(modelPath);
  let info: NativeModelSourceInfo;
  try {
    info = native().readModelInfo(modelPath, false);
  } catch (err) {
    throw fromNative(err);
  }
  const tok = await resolveTokenizer(info);
  if (!tok) {
    throw new Llama2Error("ERR_TOKENIZER", `${info.path} has no tokenizer (a ${info.format} model without one): pass a tokenizer.model`);
  }
  return tok;
}
