// Public types of the llama2-native API. Implementation lives in llama2.ts / session.ts.

export type Device = "cpu" | "cuda" | "auto";
/**
 * Weight precision on the device. "auto": as stored (CUDA: fp16, or int8 for Q8_0 files); GGUF files of
 * 4-6 bit blocks (Q4_0 ... Q6_K, e.g. Q4_K_M): their Q4_0 / Q4_1 / Q4_K matrices run as 4-bit (info.dtype
 * "q4+int8") and the other types are decoded into int8. A dtype named here decodes them all into it ("f16" /
 * "f32" keep their values exactly; "q4" rewrites a GGUF's 4-bit blocks and quantizes everything else into
 * 4-bit groups by llama.cpp's Q4_1 rule: about 0.63 bytes per weight, for models int8 does not fit; the
 * classifier stays int8, as llama-quantize keeps it at 6+ bits; rows that are not whole 32-groups stay fp16).
 * On CUDA, "f32"
 * is the reference-precision path (fp32 weights, activations and KV cache, llama2.c's order of
 * operations; slow, for small models and checks); "bf16" is CPU-only.
 */
export type WeightDtype = "auto" | "f32" | "f16" | "bf16" | "int8" | "q4";
/**
 * KV cache precision. "auto": the backend's own (CPU fp32, CUDA fp16). "int8": each token's K and V
 * rows quantized per head in groups of 32 (Q8_0's rule): half the memory of fp16, so twice the tokens
 * (or sequences) per GPU, at a small accuracy cost.
 */
export type KvCacheType = "auto" | "int8";
/** How the CPU backend feeds int8 / 4-bit matrices (LoadOptions.cpuActivations). */
export type CpuActivations = "f32" | "int8";

export interface LoadOptions {
  device?: Device;
  /** CUDA device index (default 0). */
  deviceIndex?: number;
  dtype?: WeightDtype;
  kvCacheType?: KvCacheType;
  /** Tokens per sequence (default: the model's trained context, capped at 4096). */
  contextLength?: number;
  /** Sequences that can be live at once (KV cache is sized for contextLength x this). Default 4. */
  maxSequences?: number;
  /**
   * CPU threads (default: one per physical core this process may run on, capped by a cgroup CPU quota;
   * `llama2 doctor` prints it).
   */
  threads?: number;
  /**
   * CPU backend: how int8 and 4-bit matrices take their input. "f32" (default): every weight is widened to
   * fp32, the reference arithmetic. "int8": each token's input is rounded to int8 per 32 values (as
   * llama.cpp's CPU backend does) and the blocks are dotted in integers: about 1.4-1.8x faster decoding, and
   * logits within about 1% of "f32"'s. fp16 / fp32 matrices, and the CUDA backend, are not affected.
   */
  cpuActivations?: CpuActivations;
  /** Tokenizer file (.model) for formats that do not carry one (llama2.c .bin, HF dir without it). */
  tokenizerPath?: string;
  /**
   * The chat template chat requests use when they name none (`info.chatTemplate`). "auto" (default): the
   * model's own Jinja template (a GGUF's tokenizer.chat_template, an HF directory's chat_template.jinja or
   * tokenizer_config.json), except that one giving Llama 2's format uses the built-in "llama2", and a
   * model without one (or whose template does not work: `info.chatTemplateNote` says why) gets "llama2".
   * "model": the model's own, required. Any other: a registered template's name.
   */
  chatTemplate?: string;
  /** Loading progress (bytes read / tensors uploaded). */
  onProgress?: (p: LoadProgress) => void;
  /** Cancels the load. */
  signal?: AbortSignal;
  /**
   * Prefix cache (default on): prompt prefixes already in the KV cache (`Llama2.cachePrefix`, the
   * prompts and replies of earlier requests) are shared by later requests that start with them,
   * which then prefill only the rest. Cached prefixes are evicted (least recently used first) when
   * requests need KV blocks. `false` turns it off; `maxEntries` bounds the cached prefixes (default 32).
   */
  prefixCache?: boolean | { maxEntries?: number };
  /**
   * Replaces the model file's rotary position scaling (llama.cpp's `--rope-scaling` / `--rope-scale`).
   * Files of long-context fine-tunes carry theirs (Hugging Face `rope_scaling` / `rope_parameters`, GGUF
   * `rope.scaling.*`), read without this option; `ModelInfo.config.ropeScaling` shows what is used.
   */
  ropeScaling?: RopeScalingOptions;
  /**
   * LoRA adapters (PEFT directories: adapter_config.json + adapter_model.safetensors; or llama.cpp's .gguf
   * adapters) merged into the weights at load, in order: W + scale x (alpha / r) x B A, as PEFT's `merge_and_unload`. A path, or
   * `{ path, scale }` (scale default 1; llama.cpp's `--lora-scaled`), or a list of them. The merged model
   * runs at the base model's speed; `ModelInfo.lora` lists what was applied.
   */
  lora?: string | LoraOptions | Array<string | LoraOptions>;
}

export interface LoraOptions {
  path: string;
  /** Multiplies the adapter's alpha / r (0 = no effect). Default 1. */
  scale?: number;
}

/** An adapter merged at load (ModelInfo.lora). */
export interface LoraInfo {
  path: string;
  rank: number;
  alpha: number;
  /** The factor B A was merged with: scale x alpha / r (alpha / sqrt(r) for rsLoRA). */
  scale: number;
  /** The adapted projections, e.g. ["q_proj", "v_proj"]. */
  modules: string[];
  /** Matrices merged (layers x modules). */
  matrices: number;
}

/**
 * Rotary position scaling, for running a model past the context it was trained with. "linear": every
 * position divided by `factor` (position interpolation; Vicuna-16k, LLaMA-2-7B-32K). "yarn": YaRN, which
 * interpolates the low frequencies only and scales attention by 0.1 ln(factor) + 1 (YaRN-Llama-2).
 * "none": no scaling, even where the file asks for some. Without fine-tuning, linear scaling lets a
 * Llama 2 read about `factor` times its 4,096 positions with some loss of quality.
 */
export interface RopeScalingOptions {
  type: "none" | "linear" | "yarn";
  /** Context extension factor (linear: (0, 1024]; yarn: [1, 1024]). Default 1. */
  factor?: number;
  /** YaRN: the context the model was trained with before extension (default: the file's context length). */
  originalContextLength?: number;
}

/** The rotary scaling a loaded model uses (ModelConfig.ropeScaling; null: none). */
export interface RopeScalingInfo {
  type: "linear" | "yarn";
  factor: number;
  /** YaRN only. */
  originalContextLength?: number;
  betaFast?: number;
  betaSlow?: number;
  /** What cos and sin are multiplied by (YaRN's derived 0.1 ln(factor) + 1 unless the file sets it; linear 1). */
  attentionFactor: number;
}

export interface LoadProgress {
  /**
   * "decode": the CPU backend decoding a GGUF file's 4-6 bit blocks (Q4_K ...) into the weight dtype
   * (int8 unless `dtype` asks otherwise; a GPU backend decodes them as it uploads); "weights": the CPU
   * backend preparing its weights; "upload": a GPU backend copying them to the device; "ready": done.
   */
  phase: "decode" | "weights" | "upload" | "ready";
  /** Bytes of weights processed so far / in all. */
  bytes: number;
  totalBytes: number;
  tensors: number;
  totalTensors: number;
}

export interface ModelConfig {
  dim: number;
  nLayers: number;
  nHeads: number;
  nKvHeads: number;
  headDim: number;
  ffnDim: number;
  vocabSize: number;
  rmsEps: number;
  ropeTheta: number;
  /** The context the model was trained with (from its files). */
  trainedContextLength: number;
  ropeLayout: "interleaved" | "halves";
  /** Rotary scaling from the file or `LoadOptions.ropeScaling`; null when positions are not scaled. */
  ropeScaling: RopeScalingInfo | null;
  tiedEmbeddings: boolean;
}

export interface ModelInfo {
  path: string;
  format: "hf" | "gguf" | "llama2c";
  config: ModelConfig;
  device: "cpu" | "cuda";
  /** e.g. "NVIDIA H100 80GB HBM3 (sm_90)" or "CPU (8 threads)". */
  deviceName: string;
  /**
   * Weight precision actually used on the device. "q4+int8": a GGUF file's Q4_0 / Q4_1 / Q4_K matrices run as
   * 4-bit, its other quantized matrices (Q8_0, Q6_K ... decoded) as int8.
   */
  dtype: "f32" | "f16" | "bf16" | "int8" | "q4" | "q4+int8" | "q4+f16";
  /** KV cache precision actually used. */
  kvCacheType: "f32" | "f16" | "int8";
  /** Storage precision of the file's matrices (the first layer's wq). */
  fileDtype: string;
  /** Every matrix's storage type: the embedding, the classifier, then per layer wq wk wv wo w1 w2 w3 (planCudaMemory reads it). */
  matrixDtypes?: string[];
  contextLength: number;
  maxSequences: number;
  weightBytes: number;
  /** GPU: the KV cache reserved at load. CPU: the KV blocks allocated so far (they are allocated as they fill). */
  kvCacheBytes: number;
  /** LoRA adapters merged at load (LoadOptions.lora), in order; empty when none. */
  lora: LoraInfo[];
  /** Whether a tokenizer is available (text APIs need one; id APIs do not). */
  hasTokenizer: boolean;
  bosId: number;
  eosId: number;
  /** The chat template chat requests use when they name none: "llama2", "plain", "model" (the model's own), ... */
  chatTemplate: string;
  /** How the model's own chat template was taken (used, found to be Llama 2's, or not working); absent when it has none. */
  chatTemplateNote?: string;
  /** The fill-in-the-middle pieces (Code Llama 7B / 13B) when the vocabulary has them: `infill` works. */
  fimTokens?: FimTokens;
}

/** A model's fill-in-the-middle pieces (Code Llama's ▁<PRE>, ▁<SUF>, ▁<MID>, ▁<EOT>). */
export interface FimTokens {
  prefix: number;
  suffix: number;
  middle: number;
  /** Ends the middle. */
  eot: number;
}

/** Options of `infill`: those of `generate` (text prompt only, so no addBos), and the prompt's order. */
export interface InfillOptions extends Omit<GenerateOptions, "addBos"> {
  /**
   * Put the suffix before the prefix in the prompt (Code Llama's suffix-prefix-middle format, which it
   * was also trained on). Default false (prefix-suffix-middle).
   */
  suffixFirst?: boolean;
}

export interface SamplingOptions {
  /** 0 = greedy. Default 0.8. */
  temperature?: number;
  /** 0 = off. Default 40. */
  topK?: number;
  /** 1 = off. Default 0.95. */
  topP?: number;
  /** 0 = off. Default 0.05. */
  minP?: number;
  /** 1 = off. */
  repetitionPenalty?: number;
  /** 0 = off. */
  presencePenalty?: number;
  /** 0 = off. */
  frequencyPenalty?: number;
  /** How many recent tokens the penalties look at (default 64; -1 = all). */
  penaltyLastN?: number;
  /** token id -> additive bias (use -Infinity to ban). */
  logitBias?: Record<number, number>;
  /** Seed for reproducible sampling. Default: random. */
  seed?: number;
}

/** A JSON Schema (the subset `responseFormat` supports is listed in the README), or true for any value. */
export type JsonSchema = boolean | { [keyword: string]: unknown };

/**
 * Constrains what the model may generate. "json_object": one JSON object (OpenAI's JSON mode);
 * "json_schema": one JSON document that matches `schema`. Tokens that would break the format are
 * never sampled; generation ends when the document is complete (finishReason "stop"), or is cut by
 * maxTokens ("length"). "grammar": text that a GBNF grammar accepts; EOS is allowed where the grammar
 * may end, and generation stops where nothing may follow.
 */
export type ResponseFormat =
  | { type: "text" }
  | { type: "json_object"; schema?: JsonSchema }
  | { type: "json_schema"; schema: JsonSchema }
  /** Output that a GBNF grammar (llama.cpp's format, starting at its `root` rule) accepts. */
  | { type: "grammar"; grammar: string };

export interface GenerateOptions extends SamplingOptions {
  /** Maximum generated tokens (default: until EOS or the context is full). */
  maxTokens?: number;
  /** Stop strings (matched across token boundaries; not included in the output). */
  stop?: string[];
  /** Stop at the EOS token, and at a chat template's own end-of-turn token (default true). */
  stopOnEos?: boolean;
  /** Prepend BOS when the prompt is text (default true). */
  addBos?: boolean;
  /** Constrained output: JSON, optionally following a JSON Schema (default: free text). */
  responseFormat?: ResponseFormat;
  /**
   * Report each generated token's log-probability under the model (log-softmax of its raw logits, before
   * temperature, penalties, logitBias and the response format), with this many most likely alternatives
   * (0..20). Off by default (it needs the full logits from the device each step).
   */
  logprobs?: number;
  /**
   * Prompt lookup decoding: each step also evaluates up to this many draft tokens (0..32) copied from
   * what followed the last earlier occurrence of the latest tokens in the prompt or the reply, and keeps
   * those the sampler confirms (greedy: the argmax; sampling: each with its probability, so the
   * distribution is unchanged); greedy tokens are the same as without it. Pays off when the reply repeats its input (quoting, editing, extracting),
   * most on a GPU, where a batch-1 step costs about the same for a few tokens as for one. Default 0 (off).
   */
  lookup?: number;
  /**
   * Speculative decoding with a draft model: a smaller model with the same vocabulary (e.g. a 1B Llama
   * beside Llama 2 7B) proposes up to `tokens` (1..32, default 8) tokens greedily each step, and they are
   * kept as `lookup`'s drafts are: the output is the same greedy tokens, or the same sampling
   * distribution. The draft model should be loaded for this alone (its KV cache holds one sequence per
   * generation that uses it); drafting stops quietly for a generation when the draft model cannot go on
   * (disposed, out of KV room). Not together with `lookup`.
   */
  draft?: { model: import("./llama2.js").Llama2; tokens?: number };
  /**
   * Generate past the end of the context: when the context is full, the oldest half of the tokens after
   * the kept start leaves it (the start: the whole prompt, or in a session the whole conversation, when it
   * takes at most half the context, else its first token) and the rest is evaluated again, so the reply
   * goes on until `maxTokens`, EOS or a stop (a session's next turn then prompts its window again).
   * Default false: the reply ends with `length` when the context is full.
   */
  contextShift?: boolean;
  signal?: AbortSignal;
}

export type FinishReason = "stop" | "length" | "stopSequence" | "abort";

export interface GenerationStats {
  promptTokens: number;
  /** Prompt tokens that were not prefilled because the KV cache already held them (sessions, the prefix cache). */
  cachedPromptTokens: number;
  completionTokens: number;
  /** From the call to the first generated token, ms. */
  timeToFirstTokenMs: number;
  /** Prefill throughput, tokens/s. */
  promptTokensPerSecond: number;
  /** Decode throughput after the first token, tokens/s. */
  tokensPerSecond: number;
  totalMs: number;
  finishReason: FinishReason;
  /** With `lookup`: draft tokens evaluated, and how many of them became generated tokens. */
  draftTokens?: number;
  acceptedDraftTokens?: number;
}

/** A token and its log-probability (natural log). */
export interface TokenLogprobAlternative {
  id: number;
  /** The token's text on its own (U+FFFD for a byte of an incomplete UTF-8 character). */
  token: string;
  /** The token's bytes in the output. */
  bytes: number[];
  logprob: number;
}

/** The log-probability of a generated token, and the most likely alternatives (best first). */
export interface TokenLogprob extends TokenLogprobAlternative {
  top: TokenLogprobAlternative[];
}

export interface GenerationChunk {
  /** Text decoded since the previous chunk (never a broken UTF-8 character). */
  text: string;
  tokenIds: number[];
  /** With `logprobs`: one entry per id of tokenIds. */
  logprobs?: TokenLogprob[];
  /** Present on the last chunk only. */
  stats?: GenerationStats;
}

export interface GenerationResult {
  text: string;
  tokenIds: number[];
  /** With `logprobs`: one entry per generated token. */
  logprobs?: TokenLogprob[];
  stats: GenerationStats;
}

/** An async iterable of chunks; the last chunk carries `stats`. `result` resolves when generation ends. */
export interface GenerationStream extends AsyncIterable<GenerationChunk> {
  readonly result: Promise<GenerationResult>;
  /** Cancels generation (same as aborting the signal). */
  abort(): void;
}

export type Role = "system" | "user" | "assistant";
export interface ChatMessage {
  role: Role;
  content: string;
}
