// llama2-native: the public entry point.
export { Llama2, type ChatOptions, type EmbedOptions, type EmbedResult, type ScoreOptions, type ScoreResult, type SessionOptions } from "./llama2.js";
export { ChatSession } from "./session.js";
export { Tokenizer, type EncodeOptions, type StreamDecoder, type StreamDecoderOptions, type Vocabulary } from "./tokenizer.js";
export { getChatTemplate, registerChatTemplate, type ChatTemplate, type TemplateTokenizer } from "./chat-template.js";
export { jinjaChatTemplate } from "./chat-template-jinja.js";
export { Sampler, type Candidates, type ResolvedSamplingOptions, type SamplerNeeds } from "./sampler.js";
export type { TokenFilter } from "./grammar/token-constraint.js";
export { Llama2Error, InvalidArgumentError, isLlama2Error, type ErrorCode } from "./errors.js";
export {
  native as nativeAddon,
  nativeSelection,
  type BuildInfo,
  type CudaDevice,
  type AddonVariant,
  type NativeAddon,
  type NativeLoadOptions,
  type NativeExport,
  type NativeExportOptions,
  type NativeModel,
  type NativeModelInfo,
  type NativeStepOutput,
  type NativeStepRequest,
  type NativeTokenizerData,
  type NativeModelSourceInfo,
  type NativeOpBench,
  type OpBenchSpec,
  type NativeProgress,
  type NativeSelection,
  type NvidiaDriver,
  type CudaMemoryPlan,
  type PrebuildManifest,
} from "./native.js";
export type { SchedulerStats } from "./engine/scheduler.js";
export type { PrefixCacheStats } from "./engine/prefix-cache.js";
export { ensureDemoModel, DEMO_MODEL_FILE } from "./synth/demo.js";
export { pullModel, localPathOf, type PullOptions, type PullProgress } from "./hub/pull.js";
export { MODEL_ALIASES, parseHubRef, isHubRef, type HubRef, type ModelAlias } from "./hub/refs.js";
export { planCudaMemory, type CudaPlanOptions } from "./cuda-plan.js";
export { convertModel, type ConvertDtype, type ConvertOptions, type ConvertResult } from "./convert.js";
export type * from "./types.js";
