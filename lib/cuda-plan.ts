// GPU memory of a model on the CUDA backend, predicted from its shape and the load options without a
// GPU: the native plan (engine/cuda_plan.h) is what the backend allocates, buffer by buffer.
import { fromNative, InvalidArgumentError, showValue } from "./errors.js";
import { native, type CudaMemoryPlan } from "./native.js";
import type { KvCacheType, ModelConfig, WeightDtype } from "./types.js";

export interface CudaPlanOptions {
  /**
   * As LoadOptions.dtype: "auto" runs a GGUF's Q4_0 / Q4_1 / Q4_K matrices as 4-bit, its other quantized ones
   * (Q8_0, and 5-6 bit blocks decoded) in int8, and everything else in fp16; "f32" is the fp32 path.
   */
  dtype?: WeightDtype;
  kvCacheType?: KvCacheType;
  /** Default: the model's trained context, at most 4096 (as Llama2.load). */
  contextLength?: number;
  /** Default 4 (as Llama2.load). */
  maxSequences?: number;
}

/**
 * The CUDA backend's device memory for a model: `config`, `fileDtype` and `matrixDtypes` as `llama2 inspect`
 * (or `readModelInfo`, `Llama2.info`) reports them. With `matrixDtypes` each matrix gets the format the backend
 * gives it (exact for files that mix types, like Q4_K_M); without them a quantized `fileDtype` counts every
 * matrix as int8 (for 4-bit files an upper bound: their Q4 matrices take ~40% less). Counts our allocations, not
 * the CUDA context (a few hundred MiB per process, driver-dependent).
 */
export function planCudaMemory(model: { config: ModelConfig; fileDtype: string; matrixDtypes?: string[] }, o: CudaPlanOptions = {}): CudaMemoryPlan {
  const dtype = o.dtype ?? "auto";
  if (!["auto", "f32", "f16", "int8", "q4"].includes(dtype)) throw new InvalidArgumentError("dtype", `the CUDA backend runs f32, f16, int8 or q4 weights, got ${showValue(dtype)}`);
  const kvCacheType = o.kvCacheType ?? "auto";
  if (!["auto", "int8"].includes(kvCacheType)) throw new InvalidArgumentError("kvCacheType", `expected auto or int8, got ${showValue(kvCacheType)}`);
  // Without the matrix types: Q8_0 files stay int8, and 4-6 bit block files (Q4_K ...) count as int8.
  const int8Weights = dtype === "int8" || (dtype === "auto" && /^Q(?:8_0|[45]_[01]|[2-6]_K)$/.test(model.fileDtype));
  const contextLength = o.contextLength ?? Math.min(model.config.trainedContextLength, 4096);
  const byMatrix = model.matrixDtypes && dtype !== "f32" ? { matrixDtypes: model.matrixDtypes, dtype: dtype as "auto" | "f16" | "int8" | "q4" } : {};
  try {
    return native().cudaMemoryPlan(model.config, {
      int8Weights,
      q4Weights: dtype === "q4",
      f32Weights: dtype === "f32",
      kvCacheType,
      contextLength,
      maxSequences: o.maxSequences ?? 4,
      ...byMatrix,
    });
  } catch (err) {
    throw fromNative(err);
  }
}
