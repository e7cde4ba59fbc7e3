// convertModel: any model the engine loads (Hugging Face directory, GGUF, llama2.c .bin) written as one GGUF
// file in llama.cpp's layout, optionally with LoRA adapters merged, a rotary scaling recorded, and the
// matrices converted (f16, bf16, f32, q8_0, q4_1) or kept as stored ("auto", K-quants included). What llama.cpp
// spreads over convert_hf_to_gguf.py, llama-export-lora and llama-quantize, in one streaming pass:
// the native side (model/export.h) gives each tensor's rows converted and, for a Hugging Face source, with
// the Q/K rows permuted as the converter permutes them; this file writes the metadata and the file.
import { realpathSync } from "node:fs";
import path from "node:path";
import { InvalidArgumentError, Llama2Error, fromNative, showValue } from "./errors.js";
import { gguf, writeGguf, type GgufTensor, type GgufValue } from "./formats/gguf-writer.js";
import { checkOutputTarget } from "./formats/output-target.js";
import { GgmlType, LlamaFileType, type GgmlTypeName } from "./formats/gguf-constants.js";
import { checkLora, checkRopeScaling } from "./model-changes.js";
import { native, type NativeExport } from "./native.js";
import { llamaGgufMetadata } from "./synth/model.js";
import { resolveTokenizer } from "./tokenizer/for-model.js";
import { readModelChatTemplate } from "./model-chat-template.js";
import type { Vocabulary } from "./tokenizer/sentencepiece-model.js";
import type { LoraInfo, LoraOptions, ModelConfig, RopeScalingOptions } from "./types.js";

export type ConvertDtype = "auto" | "f32" | "f16" | "bf16" | "q8_0" | "q4_1";

export interface ConvertOptions {
  /**
   * Matrix type of the output (default "auto": each matrix as stored; norms are F32 in every case). "q4_1":
   * every matrix in llama.cpp's Q4_1 blocks by its reference rule, as `dtype: "q4"` quantizes at load (5 bits
   * per weight; a Q4_K_M file from llama-quantize is more accurate where one exists).
   */
  dtype?: ConvertDtype;
  /** LoRA adapters merged into the weights (as LoadOptions.lora). */
  lora?: string | LoraOptions | Array<string | LoraOptions>;
  /** Rotary scaling written into the file (as LoadOptions.ropeScaling); default the source's. */
  ropeScaling?: RopeScalingOptions;
  /** A tokenizer.model for a source without one (default: the model's own, as Llama2.load finds it). */
  tokenizerPath?: string;
  /** general.name (default the source's name, else its file name). */
  name?: string;
  /** Replace an existing file at the output path. */
  force?: boolean;
  /** CPU threads converting rows (default: the physical cores). */
  threads?: number;
  onProgress?: (bytesWritten: number, totalBytes: number) => void;
  signal?: AbortSignal;
}

export interface ConvertResult {
  path: string;
  bytes: number;
  /** Tensors by output type, e.g. { F16: 12, F32: 5 }. */
  types: Record<string, number>;
  config: ModelConfig;
  lora: LoraInfo[];
  /** Where the tokenizer came from; null when the file has none (then Llama2.load needs tokenizerPath). */
  tokenizer: string | null;
  /** Set when the GGUF cannot tokenize exactly as the source does (spacePrefix "first" / "always", which GGUF has no key for). */
  tokenizerNote?: string;
  seconds: number;
}

const KEYS = new Set(["dtype", "lora", "ropeScaling", "tokenizerPath", "name", "force", "threads", "onProgress", "signal"]);
const DTYPES: ConvertDtype[] = ["auto", "f32", "f16", "bf16", "q8_0", "q4_1"];
const FILE_TYPE: Partial<Record<string, number>> = { F32: LlamaFileType.ALL_F32, F16: LlamaFileType.MOSTLY_F16, BF16: LlamaFileType.MOSTLY_BF16, Q8_0: LlamaFileType.MOSTLY_Q8_0, Q4_1: LlamaFileType.MOSTLY_Q4_1 };
/** Bytes of converted rows handed over per native call. */
const CHUNK_BYTES = 8 << 20;

/** Writes the model at `source` as a GGUF file at `out`. */
export async function convertModel(source: string, out: string, options: ConvertOptions = {}): Promise<ConvertResult> {
  const t0 = performance.now();
  if (typeof source !== "string" || source === "") throw new InvalidArgumentError("source", "expected a model path");
  if (typeof out !== "string" || out === "") throw new InvalidArgumentError("out", "expected the output .gguf path");
  if (typeof options !== "object" || options === null) throw new InvalidArgumentError("options", "expected an object");
  for (const k of Object.keys(options)) if (!KEYS.has(k)) throw new InvalidArgumentError(k, "unknown option");
  const { dtype = "auto", force = false, threads, onProgress, signal, tokenizerPath, name } = options;
  if (!DTYPES.includes(dtype)) throw new InvalidArgumentError("dtype", `expected one of ${DTYPES.join(", ")}, got ${showValue(dtype)}`);
  if (threads !== undefined && !(Number.isInteger(threads) && threads >= 1 && threads <= 1024)) throw new InvalidArgumentError("threads", "expected an integer in [1, 1024]");
  if (onProgress !== undefined && typeof onProgress !== "function") throw new InvalidArgumentError("onProgress", "expected a function");
  if (signal !== undefined && !(signal instanceof AbortSignal)) throw new InvalidArgumentError("signal", "expected an AbortSignal");
  if (tokenizerPath !== undefined && (typeof tokenizerPath !== "string" || tokenizerPath === "")) throw new InvalidArgumentError("tokenizerPath", "expected a tokenizer.model path");
  if (name !== undefined && typeof name !== "string") throw new InvalidArgumentError("name", "expected a string");
  const ropeScaling = checkRopeScaling(options.ropeScaling);
  const lora = checkLora(options.lora);
  checkOutput(source, out, force, lora);
  if (signal?.aborted) throw new Llama2Error("ERR_ABORTED", "conversion was aborted");

  let x: NativeExport;
  try {
    x = await native().openExport(source, { dtype, ...(lora.length > 0 && { lora }), ...(ropeScaling && { ropeScaling }), ...(threads && { threads }) });
  } catch (err) {
    throw fromNative(err);
  }
  try {
    const info = x.info;
    const tok = await resolveTokenizer(info, tokenizerPath);
    if (tok && tok.vocabSize !== info.config.vocabSize) {
      throw new Llama2Error("ERR_TOKENIZER", `${tok.source}: ${tok.vocabSize} pieces, but ${source} has a vocabulary of ${info.config.vocabSize}`);
    }
    const c = info.config;
    const types: Record<string, number> = {};
    for (const t of x.tensors) types[t.type] = (types[t.type] ?? 0) + 1;
    // general.file_type: the type asked for (a Q8_0 file keeps some F16 matrices, as llama.cpp's), else the
    // matrices' most common type when llama_ftype has a name for it.
    const matrixCounts = new Map<string, number>();
    for (const t of x.tensors) if (!isVector(t.name)) matrixCounts.set(t.type, (matrixCounts.get(t.type) ?? 0) + 1);
    const common = [...matrixCounts].sort((a, b) => b[1] - a[1])[0]?.[0];
    const fileType = FILE_TYPE[dtype === "auto" ? (common ?? "") : dtype.toUpperCase()];
    const shape = { dim: c.dim, layers: c.nLayers, heads: c.nHeads, kvHeads: c.nKvHeads, ffn: c.ffnDim, vocab: c.vocabSize, context: c.trainedContextLength, ropeTheta: c.ropeTheta, normEps: c.rmsEps };
    const metadata = llamaGgufMetadata(shape, name ?? (info.name || path.basename(source)), {
      headDim: c.headDim,
      vocab: tok?.vocabulary as Vocabulary | undefined,
      ...(fileType !== undefined && { fileType }),
      ...(tok && { chatTemplate: readModelChatTemplate(info)?.source }),
    });
    metadata.splice(metadata.findIndex(([k]) => k === "llama.rope.dimension_count") + 1, 0, ...ropeScalingMetadata(c));

    const buffers = [new Uint8Array(0), new Uint8Array(0)];
    let turn = 0;
    const tensors: GgufTensor[] = x.tensors.map((t, index) => {
      if (!(t.type in GgmlType)) throw new Llama2Error("ERR_INTERNAL", `${t.name}: type ${t.type} has no GGUF type`);
      return {
        name: t.name,
        type: t.type as GgmlTypeName,
        dims: isVector(t.name) ? [t.cols] : [t.cols, t.rows], // ggml order: the row first
        data: async function* () {
          const step = Math.max(1, Math.floor(CHUNK_BYTES / t.rowBytes));
          for (let row0 = 0; row0 < t.rows; row0 += step) {
            if (signal?.aborted) throw new Llama2Error("ERR_ABORTED", "conversion was aborted");
            const rows = Math.min(step, t.rows - row0);
            const bytes = rows * t.rowBytes;
            // Two buffers taken in turn: the writer writes one while the next is filled.
            turn ^= 1;
            if (buffers[turn]!.length < bytes) buffers[turn] = new Uint8Array(Math.max(bytes, Math.min(CHUNK_BYTES, t.rows * t.rowBytes)));
            const buf = buffers[turn]!.subarray(0, bytes);
            try {
              await x.read(index, row0, rows, buf);
            } catch (err) {
              throw fromNative(err);
            }
            yield buf;
          }
        },
      };
    });
    const bytes = await writeGguf(out, { metadata, tensors }, { onProgress });
    return {
      path: out,
      bytes,
      types,
      config: c,
      lora: x.lora,
      tokenizer: tok ? tok.source : null,
      ...(tok && (tok.vocabulary.spacePrefix === "first" || tok.vocabulary.spacePrefix === "always") && {
        tokenizerNote: `the tokenizer's '▁' prefix rule ("${tok.vocabulary.spacePrefix}": a Metaspace pre-tokenizer, transformers' legacy: false) has no GGUF key: the file puts a '▁' before every stretch of text, as llama.cpp does; text that starts with a space or follows a special piece encodes differently`,
      }),
      seconds: (performance.now() - t0) / 1000,
    };
  } finally {
    x.close();
  }
}

/** The norm weights: one-dimensional in GGUF. */
function isVector(name: string): boolean {
  return name.endsWith("_norm.weight");
}

/** llama.cpp's rope.scaling.* keys for the scaling the model runs with (none: no keys). */
function ropeScalingMetadata(c: ModelConfig): Array<[string, GgufValue]> {
  const r = c.ropeScaling;
  if (!r) return [];
  const md: Array<[string, GgufValue]> = [["llama.rope.scaling.type", gguf.str(r.type)], ["llama.rope.scaling.factor", gguf.f32(r.factor)]];
  // llama.cpp multiplies YaRN's derived 0.1 ln(factor) + 1 by attn_factor; linear scaling by attn_factor alone.
  const derived = r.type === "yarn" && r.factor > 1 ? 0.1 * Math.log(r.factor) + 1 : 1;
  const attn = r.attentionFactor / derived;
  if (Math.abs(attn - 1) > 1e-6) md.push(["llama.rope.scaling.attn_factor", gguf.f32(attn)]);
  if (r.type === "yarn") {
    md.push(["llama.rope.scaling.original_context_length", gguf.u32(r.originalContextLength ?? c.trainedContextLength)]);
    if (r.betaFast !== undefined && r.betaFast !== 32) md.push(["llama.rope.scaling.yarn_beta_fast", gguf.f32(r.betaFast)]);
    if (r.betaSlow !== undefined && r.betaSlow !== 1) md.push(["llama.rope.scaling.yarn_beta_slow", gguf.f32(r.betaSlow)]);
  }
  return md;
}

/** The output must not be an input (its pages are mapped while it is written) nor replace a file unasked. */
function checkOutput(source: string, out: string, force: boolean, lora: LoraOptions[]): void {
  if (!out.toLowerCase().endsWith(".gguf")) throw new InvalidArgumentError("out", `expected a path ending in .gguf, got ${showValue(out)}`);
  const real = (p: string) => {
    try {
      return realpathSync(p);
    } catch {
      return path.resolve(p);
    }
  };
  const target = real(out);
  for (const input of [source, ...lora.map((l) => l.path)]) {
    if (real(input) === target) throw new InvalidArgumentError("out", `${out} is an input of this conversion (${input}); write to another file`);
  }
  checkOutputTarget(out, "file", force);
}
