// makeSyntheticModel: a Llama 2 model of any preset shape with deterministic random weights, as a GGUF
// file (like llama.cpp's convert_hf_to_gguf.py writes it) or a Hugging Face directory (config.json,
// safetensors, tokenizer.model). One seed gives the same model in every format and dtype.
import { existsSync, readFileSync, statSync } from "node:fs";
import { mkdir, rename, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { InvalidArgumentError, Llama2Error } from "../errors.js";
import { llamaVocabulary } from "../tokenizer/llama-vocab.js";
import { buildSentencePieceModel, parseSentencePieceModel, type Vocabulary } from "../tokenizer/sentencepiece-model.js";
import { writeGguf, gguf, type GgufValue } from "../formats/gguf-writer.js";
import { checkOutputTarget } from "../formats/output-target.js";
import { LlamaFileType, type GgmlTypeName } from "../formats/gguf-constants.js";
import { writeSafetensorsModel, type SafetensorsDtype } from "../formats/safetensors-writer.js";
import { paramCount, resolveShape, type ModelShape } from "./presets.js";
import { ChunkPool, llamaTensors, tensorProducer, type Encoding } from "./tensors.js";

export type SynthFormat = "gguf" | "hf";
export type SynthDtype = "f32" | "f16" | "bf16" | "q8_0";

export interface SyntheticModelOptions {
  preset: string;
  format: SynthFormat;
  /** Default f16. q8_0 is GGUF only. */
  dtype?: SynthDtype;
  /** GGUF file or HF directory. */
  out: string;
  /** Non-negative integer (default 0). */
  seed?: number;
  /** A tokenizer.model; default: the built-in Llama 2 vocabulary when vocab is 32000, else none. null: none. */
  tokenizer?: string | null;
  /** Shape fields replacing the preset's. */
  overrides?: Partial<ModelShape>;
  /** Replace an existing model at `out`. */
  force?: boolean;
  /** general.name / _name_or_path. */
  name?: string;
  /** HF: largest shard (bytes of tensor data), default 5 GB. */
  maxShardBytes?: number;
  /** Where to build before the final rename (default `<out>.tmp`); must be on the same filesystem. */
  tmpPath?: string;
  onProgress?: (bytesWritten: number, totalBytes: number) => void;
}

export interface SyntheticModel {
  path: string;
  format: SynthFormat;
  dtype: SynthDtype;
  shape: ModelShape;
  params: number;
  /** Bytes written (all files). */
  bytes: number;
  files: string[];
  /** Where the tokenizer came from; null when the model has none. */
  tokenizer: "builtin" | string | null;
  seconds: number;
}

const DTYPES: SynthDtype[] = ["f32", "f16", "bf16", "q8_0"];

export async function makeSyntheticModel(opts: SyntheticModelOptions): Promise<SyntheticModel> {
  const t0 = performance.now();
  const shape = resolveShape(opts.preset, opts.overrides);
  const dtype = opts.dtype ?? "f16";
  if (opts.format !== "gguf" && opts.format !== "hf") throw new InvalidArgumentError("format", `expected gguf or hf, got '${opts.format}'`);
  if (!DTYPES.includes(dtype)) throw new InvalidArgumentError("dtype", `expected one of ${DTYPES.join(", ")}, got '${dtype}'`);
  if (opts.format === "hf" && dtype === "q8_0") throw new InvalidArgumentError("dtype", "q8_0 is a GGUF type; HF safetensors take f16, bf16 or f32");
  const seed = opts.seed ?? 0;
  if (!Number.isSafeInteger(seed) || seed < 0) throw new InvalidArgumentError("seed", `expected a non-negative integer, got ${seed}`);
  if (typeof opts.out !== "string" || opts.out === "") throw new InvalidArgumentError("out", "an output path is required");
  const out = path.resolve(opts.out);
  checkOutputTarget(out, opts.format === "gguf" ? "file" : "model-dir", !!opts.force);
  const tok = loadTokenizer(opts.tokenizer, shape, opts.overrides?.vocab !== undefined);
  const name = opts.name ?? `synthetic ${opts.preset} (random weights, seed ${seed})`;
  const tmp = opts.tmpPath ?? `${out}.tmp`;
  await rm(tmp, { recursive: true, force: true });

  let bytes = 0;
  let files: string[];
  try {
    if (opts.format === "gguf") {
      bytes = await writeGgufModel(tmp, shape, dtype, seed, name, tok?.vocab, opts.onProgress);
      files = [out];
    } else {
      await mkdir(tmp, { recursive: true });
      const names = await writeHfModel(tmp, shape, dtype, seed, name, tok, opts);
      files = names.map((n) => path.join(out, n));
      bytes = names.reduce((a, n) => a + statSync(path.join(tmp, n)).size, 0);
    }
    // A file is replaced atomically by the rename; a directory must go first (checkOutputTarget allowed it).
    if (opts.format === "hf" && existsSync(out)) await rm(out, { recursive: true, force: true });
    await rename(tmp, out);
  } catch (err) {
    await rm(tmp, { recursive: true, force: true }).catch(() => {});
    throw err;
  }
  return {
    path: out,
    format: opts.format,
    dtype,
    shape,
    params: paramCount(shape),
    bytes,
    files,
    tokenizer: tok ? tok.source : null,
    seconds: (performance.now() - t0) / 1000,
  };
}

/** Refuses to overwrite without `force`, and never replaces something that is not a model. */
interface Tokenizer {
  vocab: Vocabulary;
  /** tokenizer.model bytes for HF directories. */
  model: Uint8Array;
  source: "builtin" | string;
}

function loadTokenizer(spec: string | null | undefined, shape: ModelShape, vocabGiven: boolean): Tokenizer | undefined {
  if (spec === null) return undefined;
  if (spec === undefined) {
    if (shape.vocab !== 32000) return undefined; // the built-in vocabulary only fits 32000-token models
    const vocab = llamaVocabulary();
    return { vocab, model: buildSentencePieceModel(vocab), source: "builtin" };
  }
  let model: Uint8Array;
  try {
    model = readFileSync(spec);
  } catch (err) {
    throw new Llama2Error("ERR_FILE_NOT_FOUND", `tokenizer: cannot read ${spec}: ${(err as Error).message}`, { cause: err });
  }
  const vocab = parseSentencePieceModel(model, spec);
  if (vocab.tokens.length !== shape.vocab) {
    if (vocabGiven) throw new InvalidArgumentError("vocab", `${shape.vocab} does not match the tokenizer's ${vocab.tokens.length} pieces`);
    shape.vocab = vocab.tokens.length; // the tokenizer decides the vocabulary size unless one is given
  }
  return { vocab, model, source: path.resolve(spec) };
}

/** llama.cpp's size label: "4.2M", "6.7B". */
function sizeLabel(n: number): string {
  const [scaled, suffix] = n > 1e12 ? [n * 1e-12, "T"] : n > 1e9 ? [n * 1e-9, "B"] : n > 1e6 ? [n * 1e-6, "M"] : [n * 1e-3, "K"];
  const digits = Math.max(2 - String(Math.round(scaled)).replace(/^0+/, "").length, 0);
  return `${scaled.toFixed(digits)}${suffix}`;
}

/**
 * The GGUF metadata of a Llama 2 model of shape `s`: keys, types and order as convert_hf_to_gguf.py writes
 * them; the tokenizer's keys when `vocab` is given; general.file_type when `fileType` is (a llama_ftype);
 * `headDim` when the heads are not dim / heads wide.
 */
export function llamaGgufMetadata(s: ModelShape, name: string, o: { fileType?: number; vocab?: Vocabulary; headDim?: number; chatTemplate?: string } = {}): Array<[string, GgufValue]> {
  const hd = o.headDim ?? s.dim / s.heads;
  const md: Array<[string, GgufValue]> = [
    ["general.architecture", gguf.str("llama")],
    ["general.type", gguf.str("model")],
    ["general.name", gguf.str(name)],
    ["general.size_label", gguf.str(sizeLabel(paramCount(s)))],
    ["llama.block_count", gguf.u32(s.layers)],
    ["llama.context_length", gguf.u32(s.context)],
    ["llama.embedding_length", gguf.u32(s.dim)],
    ["llama.feed_forward_length", gguf.u32(s.ffn)],
    ["llama.attention.head_count", gguf.u32(s.heads)],
    ["llama.attention.head_count_kv", gguf.u32(s.kvHeads)],
    ["llama.rope.freq_base", gguf.f32(s.ropeTheta)],
    ["llama.attention.layer_norm_rms_epsilon", gguf.f32(s.normEps)],
    ["llama.attention.key_length", gguf.u32(hd)],
    ["llama.attention.value_length", gguf.u32(hd)],
    ...(o.fileType === undefined ? [] : [["general.file_type", gguf.u32(o.fileType)] as [string, GgufValue]]),
    ["llama.vocab_size", gguf.u32(s.vocab)],
    ["llama.rope.dimension_count", gguf.u32(hd)],
    ["general.quantization_version", gguf.u32(2)],
  ];
  const vocab = o.vocab;
  if (vocab) {
    md.push(
      ["tokenizer.ggml.model", gguf.str("llama")],
      ["tokenizer.ggml.pre", gguf.str("default")],
      ["tokenizer.ggml.tokens", gguf.arr("STRING", vocab.tokens)],
      ["tokenizer.ggml.scores", gguf.arr("FLOAT32", vocab.scores)],
      ["tokenizer.ggml.token_type", gguf.arr("INT32", vocab.types)],
      ["tokenizer.ggml.bos_token_id", gguf.u32(vocab.bosId)],
      ["tokenizer.ggml.eos_token_id", gguf.u32(vocab.eosId)],
      ["tokenizer.ggml.unknown_token_id", gguf.u32(vocab.unkId)],
    );
    if (vocab.padId >= 0) md.push(["tokenizer.ggml.padding_token_id", gguf.u32(vocab.padId)]);
    md.push(["tokenizer.ggml.add_bos_token", gguf.bool(true)], ["tokenizer.ggml.add_eos_token", gguf.bool(false)]);
    // llama.cpp writes it only when a folder asks for no "▁" (add_prefix_space: false); "first" / "always" have no key.
    if (vocab.spacePrefix === "never") md.push(["tokenizer.ggml.add_space_prefix", gguf.bool(false)]);
    if (o.chatTemplate) md.push(["tokenizer.chat_template", gguf.str(o.chatTemplate)]);
  }
  return md;
}

async function writeGgufModel(
  file: string,
  s: ModelShape,
  dtype: SynthDtype,
  seed: number,
  name: string,
  vocab: Vocabulary | undefined,
  onProgress: SyntheticModelOptions["onProgress"],
): Promise<number> {
  const matrix: Record<SynthDtype, GgmlTypeName> = { f32: "F32", f16: "F16", bf16: "BF16", q8_0: "Q8_0" };
  const fileType = { f32: LlamaFileType.ALL_F32, f16: LlamaFileType.MOSTLY_F16, bf16: LlamaFileType.MOSTLY_BF16, q8_0: LlamaFileType.MOSTLY_Q8_0 }[dtype];
  const md = llamaGgufMetadata(s, name, { fileType, vocab });
  const pool = new ChunkPool();
  const tensors = llamaTensors(s).map((t) => {
    // Like the converter: norms stay F32; Q8_0 falls back to F16 for rows not divisible by 32.
    let type: GgmlTypeName = t.shape.length === 1 ? "F32" : matrix[dtype];
    if (type === "Q8_0" && t.shape.at(-1)! % 32 !== 0) type = "F16";
    return { name: t.gguf, type, dims: [...t.shape].reverse(), data: tensorProducer(t, seed, type as Encoding, true, pool) };
  });
  return writeGguf(file, { metadata: md, tensors }, { onProgress });
}

async function writeHfModel(
  dir: string,
  s: ModelShape,
  dtype: SynthDtype,
  seed: number,
  name: string,
  tok: Tokenizer | undefined,
  opts: SyntheticModelOptions,
): Promise<string[]> {
  const st = ({ f32: "F32", f16: "F16", bf16: "BF16" } as const)[dtype as "f16"] as SafetensorsDtype;
  const pool = new ChunkPool();
  const tensors = llamaTensors(s).map((t) => ({ name: t.hf, dtype: st, shape: t.shape, data: tensorProducer(t, seed, st, false, pool) }));
  const names = await writeSafetensorsModel(dir, tensors, { maxShardBytes: opts.maxShardBytes, onProgress: opts.onProgress });
  const bos = tok?.vocab.bosId ?? 1;
  const eos = tok?.vocab.eosId ?? 2;
  // Llama-2-7b-chat-hf's config.json (rope_theta at the top level), with this model's shape.
  const config = {
    _name_or_path: name,
    architectures: ["LlamaForCausalLM"],
    attention_bias: false,
    attention_dropout: 0.0,
    bos_token_id: bos,
    eos_token_id: eos,
    hidden_act: "silu",
    hidden_size: s.dim,
    initializer_range: 0.02,
    intermediate_size: s.ffn,
    max_position_embeddings: s.context,
    model_type: "llama",
    num_attention_heads: s.heads,
    num_hidden_layers: s.layers,
    num_key_value_heads: s.kvHeads,
    pretraining_tp: 1,
    rms_norm_eps: s.normEps,
    rope_scaling: null,
    rope_theta: s.ropeTheta,
    tie_word_embeddings: false,
    torch_dtype: { f32: "float32", f16: "float16", bf16: "bfloat16" }[dtype as "f16"],
    transformers_version: "4.31.0",
    use_cache: true,
    vocab_size: s.vocab,
  };
  await writeFile(path.join(dir, "config.json"), JSON.stringify(config, null, 2) + "\n");
  await writeFile(path.join(dir, "generation_config.json"), JSON.stringify({ _from_model_config: true, bos_token_id: bos, eos_token_id: eos }, null, 2) + "\n");
  const extra = ["config.json", "generation_config.json"];
  if (tok) {
    await writeFile(path.join(dir, "tokenizer.model"), tok.model);
    extra.push("tokenizer.model");
  }
  return [...extra, ...names];
}
