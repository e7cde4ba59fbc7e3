// The default model loader for jobs: "demo" -> the built-in demo model, hf:... -> pulled from the Hugging
// Face Hub (lib/hub), otherwise a path; then Llama2.load.
// Both modules are imported lazily: `llama2 jobs` / `logs` / `cancel` never load the native addon.
import type { LoadProgress } from "../types.js";
import type { ChatBackend } from "../server/backend.js";
import type { JobSpec } from "./spec.js";

/** Loading progress: the model's own, or the demo model being generated first. */
export type LoadEvent =
  | LoadProgress
  | { phase: "demo"; bytes: number; totalBytes: number }
  | { phase: "download"; file: string; bytes: number; totalBytes?: number };

export type LoadBackend = (spec: JobSpec, onProgress: (e: LoadEvent) => void, signal: AbortSignal) => Promise<ChatBackend>;

export const loadModel: LoadBackend = async (spec, onProgress, signal) => {
  const path =
    spec.model === "demo"
      ? await (await import("../synth/demo.js")).ensureDemoModel({
          onProgress: (bytes, total) => onProgress({ phase: "demo", bytes, totalBytes: total }),
        })
      : spec.model.startsWith("hf:")
        ? await (await import("../hub/pull.js")).pullModel(spec.model, {
            signal,
            onProgress: (p) => onProgress({ phase: "download", file: p.file, bytes: p.bytes, ...(p.totalBytes !== undefined && { totalBytes: p.totalBytes }) }),
          })
        : spec.model;
  signal.throwIfAborted();
  const { Llama2 } = await import("../llama2.js");
  const model: ChatBackend = await Llama2.load(path, {
    device: spec.device,
    ...(spec.deviceIndex !== undefined && { deviceIndex: spec.deviceIndex }),
    dtype: spec.dtype,
    kvCacheType: spec.kvCacheType,
    ...(spec.contextLength !== undefined && { contextLength: spec.contextLength }),
    ...(spec.maxSequences !== undefined && { maxSequences: spec.maxSequences }),
    onProgress,
    signal,
  });
  return model;
};
