// The default model loader for jobs: "demo" -> the built-in demo model, hf:... -> pulled from the Hugging
// Face Hub (lib/hub), otherwise a path; then Llama2.load.
// Both modules are imported lazily: `llama2 jobs` / `logs` / `cancel` never load the native addon.
import { draftMismatch } from "../engine/draft-model.js";
import { InvalidArgumentError } from "../errors.js";
import type { Llama2 } from "../llama2.js";
import type { GenerateOptions, LoadProgress } from "../types.js";
import type { ChatBackend } from "../server/backend.js";
import type { JobSpec } from "./spec.js";

/** Loading progress: the model's own, or the demo model being generated first. */
export type LoadEvent =
  | LoadProgress
  | { phase: "demo"; bytes: number; totalBytes: number }
  | { phase: "download"; file: string; bytes: number; totalBytes?: number };

export type LoadBackend = (spec: JobSpec, onProgress: (e: LoadEvent) => void, signal: AbortSignal) => Promise<ChatBackend>;

export const loadModel: LoadBackend = async (spec, onProgress, signal) => {
  const path = await resolveModelPath(spec.model, onProgress, signal);
  signal.throwIfAborted();
  const { Llama2 } = await import("../llama2.js");
  const model = await Llama2.load(path, {
    device: spec.device,
    ...(spec.deviceIndex !== undefined && { deviceIndex: spec.deviceIndex }),
    dtype: spec.dtype,
    kvCacheType: spec.kvCacheType,
    ...(spec.cpuActivations && { cpuActivations: spec.cpuActivations }),
    ...(spec.contextLength !== undefined && { contextLength: spec.contextLength }),
    ...(spec.ropeScaling && { ropeScaling: spec.ropeScaling }),
    ...(spec.lora && { lora: spec.lora }),
    ...(spec.chatTemplate !== undefined && { chatTemplate: spec.chatTemplate }),
    ...(spec.maxSequences !== undefined && { maxSequences: spec.maxSequences }),
    onProgress,
    signal,
  });
  if (spec.draftModel === undefined) return model;
  try {
    // The draft model: on the same device, one sequence per request the target may run at once.
    const draft = await Llama2.load(await resolveModelPath(spec.draftModel, onProgress, signal), {
      device: model.info.device,
      ...(spec.deviceIndex !== undefined && { deviceIndex: spec.deviceIndex }),
      contextLength: model.info.contextLength,
      ...(spec.maxSequences !== undefined && { maxSequences: spec.maxSequences }),
      signal,
    });
    const mismatch = draftMismatch(model.info, draft.info);
    if (mismatch) {
      await draft.dispose();
      throw new InvalidArgumentError("--draft-model", `${draft.info.path}: ${mismatch}`);
    }
    return withDraftModel(model, { model: draft, ...(spec.draftTokens !== undefined && { tokens: spec.draftTokens }) });
  } catch (err) {
    await model.dispose();
    throw err;
  }
};

async function resolveModelPath(model: string, onProgress: (e: LoadEvent) => void, signal: AbortSignal): Promise<string> {
  if (model === "demo") {
    return (await import("../synth/demo.js")).ensureDemoModel({ onProgress: (bytes, total) => onProgress({ phase: "demo", bytes, totalBytes: total }) });
  }
  if (model.startsWith("hf:")) {
    return (await import("../hub/pull.js")).pullModel(model, {
      signal,
      onProgress: (p) => onProgress({ phase: "download", file: p.file, bytes: p.bytes, ...(p.totalBytes !== undefined && { totalBytes: p.totalBytes }) }),
    });
  }
  return model;
}

/**
 * The target model as a ChatBackend whose generations all draft with `draft` (unless a request asks for
 * `lookup`); disposing it disposes both models.
 */
export function withDraftModel(target: Llama2, draft: NonNullable<GenerateOptions["draft"]>): ChatBackend {
  const opts = <T extends GenerateOptions>(o: T = {} as T): T => (o.lookup ? o : { ...o, draft });
  return {
    get info() {
      return target.info;
    },
    get tokenizer() {
      return target.tokenizer;
    },
    get pending() {
      return target.pending;
    },
    chat: (messages, o) => target.chat(messages, opts(o)),
    generate: (prompt, o) => target.generate(prompt, opts(o)),
    tokenize: (text, o) => target.tokenize(text, o),
    chatPromptTokens: (messages) => target.chatPromptTokens(messages),
    score: (ids, o) => target.score(ids, o),
    embed: (input, o) => target.embed(input, o),
    deviceMemoryBytes: () => {
      const a = target.deviceMemoryBytes();
      const b = draft.model.deviceMemoryBytes();
      return a === undefined ? b : a + (b ?? 0);
    },
    dispose: async () => {
      await target.dispose();
      await draft.model.dispose();
    },
  };
}
