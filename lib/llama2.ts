// The public model class: `await Llama2.load(path, opts)`, then generate / chat / sessions.
// Text <-> ids (tokenizer, chat template) and sampling happen here in TypeScript; each step of
// every active generation is batched by the Scheduler into one native forward pass.
import { getChatTemplate, type ChatTemplate } from "./chat-template.js";
import { draftMismatch, MAX_DRAFT_TOKENS } from "./engine/draft-model.js";
import { lookupDraft } from "./engine/lookup.js";
import { fimTokens, infillPromptIds } from "./infill.js";
import { commonPrefix, PrefixCache, type PrefixCacheStats } from "./engine/prefix-cache.js";
import { Scheduler } from "./engine/scheduler.js";
import { compileResponseFormat, createConstraint } from "./grammar/response-format.js";
import { logSumExp, tokenLogprob } from "./logprobs.js";
import { checkLora, checkRopeScaling } from "./model-changes.js";
import type { Constraint } from "./grammar/token-constraint.js";
import { InvalidArgumentError, Llama2Error, fromNative, showValue } from "./errors.js";
import { native, type NativeModel, type NativeStepOutput } from "./native.js";
import { Sampler } from "./sampler.js";
import { ChatSession } from "./session.js";
import { StopMatcher } from "./stop.js";
import { createGenerationStream } from "./stream.js";
import { Tokenizer, type EncodeOptions } from "./tokenizer.js";
import { resolveTokenizer } from "./tokenizer/for-model.js";
import { chooseChatTemplate, MODEL_TEMPLATE, readModelChatTemplate, type ChosenTemplate } from "./model-chat-template.js";
import { checkSameModel, modelFingerprint, openSessionState, type ModelFingerprint } from "./session-state.js";
import type {
  ChatMessage,
  FinishReason,
  GenerateOptions,
  GenerationChunk,
  GenerationResult,
  GenerationStats,
  GenerationStream,
  InfillOptions,
  LoadOptions,
  LoadProgress,
  LoraOptions,
  ModelInfo,
  RopeScalingOptions,
  TokenLogprob,
} from "./types.js";

export interface ChatOptions extends GenerateOptions {
  /** Chat template: a registered name, or "model" (the model's own); default `info.chatTemplate`. */
  template?: string;
}

/** What score() returns. */
export interface ScoreResult {
  /** The tokens scored (BOS included for text, unless addBos: false). */
  tokenIds: number[];
  /** log P(tokenIds[i + 1] | tokenIds[0..i]) for each token after the first (natural log, float64 softmax). */
  logprobs: number[];
  /** Their sum: the log-likelihood of the text after its first token. */
  sum: number;
  /** exp(-sum / logprobs.length). */
  perplexity: number;
  /**
   * With `topLogprobs`: each scored token (tokenIds[1..]) with its text, bytes, log-probability and the
   * `topLogprobs` most likely tokens at its position, as generation's `logprobs` reports them.
   */
  tokens?: TokenLogprob[];
  totalMs: number;
}

/** embed()'s options. */
export interface EmbedOptions {
  /** How token states become one vector: `mean` over the tokens (a leading BOS left out; default) or the `last` token's. */
  pooling?: "mean" | "last";
  /** Scale the vector to unit length (default true: cosine similarity is then a dot product). */
  normalize?: boolean;
  /** Prepend BOS to a text (default true); token ids are taken as they are. */
  addBos?: boolean;
  signal?: AbortSignal;
}

/** What embed() returns. */
export interface EmbedResult {
  /** The pooled final hidden state: the model's `dim` values. */
  embedding: Float32Array;
  /** Tokens evaluated (BOS included for text, unless addBos: false). */
  tokenCount: number;
  totalMs: number;
}

/** score()'s options. */
export interface ScoreOptions {
  /** Prepend BOS to a text (default true); token ids are taken as they are. */
  addBos?: boolean;
  signal?: AbortSignal;
  /** Also report each scored token with this many alternatives (0..20) in `tokens`. */
  topLogprobs?: number;
  /**
   * Keep the scored tokens' KV cache in the prefix cache (evicted like any cached prefix), so that a
   * generation from the same tokens evaluates only its last ones (the server's echo does this).
   */
  keepPrefix?: boolean;
}

/** Row `r` of an every-token output of `rows` rows: logits [rows][V] or candidates [rows][k]. */
function outputRow(out: NonNullable<NativeStepOutput>, r: number, rows: number, V: number): NonNullable<NativeStepOutput> {
  if (out instanceof Float32Array) return out.subarray(r * V, (r + 1) * V);
  const k = out.ids.length / rows;
  return { ids: out.ids.subarray(r * k, (r + 1) * k), logits: out.logits.subarray(r * k, (r + 1) * k) };
}

/** Mean of rows [from, n) of `rows` ([n][D]) into `out`, summed in float64; with from = n - 1, the last row. */
function poolRows(rows: Float32Array, D: number, from: number, out: Float32Array): void {
  const n = rows.length / D;
  const sum = new Float64Array(D);
  for (let r = from; r < n; r++) for (let i = 0; i < D; i++) sum[i]! += rows[r * D + i]!;
  for (let i = 0; i < D; i++) out[i] = sum[i]! / (n - from);
}

/** Scales `v` to unit L2 norm (a zero vector stays zero). */
function normalizeL2(v: Float32Array): void {
  let ss = 0;
  for (const x of v) ss += x * x;
  const norm = Math.sqrt(ss);
  if (norm > 0) for (let i = 0; i < v.length; i++) v[i] = v[i]! / norm;
}

/** log-softmax of one row of logits at `id` (lse: the row's logSumExp), in float64; NaN when the row holds a NaN or no finite logit. */
function rowLogprob(row: Float32Array, id: number, lse: number): number {
  return Number.isFinite(lse) && !row.some(Number.isNaN) ? row[id]! - lse : NaN;
}

export interface SessionOptions {
  /** Folded into the first turn by the template (Llama 2: `<<SYS>>`); kept when old turns are dropped. */
  systemPrompt?: string;
  /** Chat template: a registered name, or "model" (the model's own); default `info.chatTemplate`. */
  template?: string;
  /**
   * Drop the oldest exchanges when a turn would not leave room for its reply (default true). The room
   * asked for is the turn's `maxTokens` (at most half the context), or a quarter of the context without it.
   */
  contextShift?: boolean;
  /**
   * A conversation to resume (e.g. a saved `session.messages`): user / assistant pairs, oldest first,
   * without the system prompt. The first turn prompts it whole.
   */
  messages?: readonly ChatMessage[];
}

/** What a generation runs on: a native sequence and the tokens to append before sampling. @internal */
export interface GenerationPlan {
  seq: number;
  /** Tokens to evaluate (prompt, or a session's new turn). */
  prompt: number[];
  /** Tokens already in the sequence's cache before this call. */
  cached: number;
  /** Tokens the penalties may look back on (the prompt side of `history`). */
  history: number[];
  stripLeadingSpace: boolean;
  /** Called once with the outcome (sessions update their state here). */
  onEnd?: (r: {
    generated: number[];
    evaluated: number;
    text: string;
    finishReason: FinishReason;
    error?: unknown;
    /** After a context shift inside the reply: the tokens the sequence holds now. */
    shifted?: number[];
  }) => void;
  /** Frees the sequence at the end (one-shot calls), or hands it to the prefix cache. */
  ownsSequence: boolean;
  /**
   * The token ids the sequence holds before `prompt` (length `cached`), when known: the prefix
   * cache keeps snapshots of the sequence only then.
   */
  context?: number[];
  /**
   * The sequence is empty and the prompt may start from a cached prefix: admission then replaces
   * `seq` with a fork of the cached prefix (freeing the empty one), moves the cached tokens from
   * `prompt` to `context`/`cached` and calls `onSequence`.
   */
  reuse?: boolean;
  onSequence?: (seq: number) => void;
  /** The chat template's stop strings (matched like `stop`, not counted against its limit). */
  templateStops?: readonly string[];
  /** The chat template's end-of-turn tokens besides EOS: they end the reply as EOS does. */
  templateStopIds?: readonly number[];
  /**
   * While waiting for admission only (the sequence is in no step): give the sequence's KV up (to the
   * prefix cache) and prompt everything instead, keeping cached + prompt. False when it cannot.
   */
  park?: () => boolean;
}

const LOAD_KEYS = new Set(["device", "deviceIndex", "dtype", "kvCacheType", "contextLength", "maxSequences", "threads", "cpuActivations", "tokenizerPath", "onProgress", "signal", "prefixCache", "ropeScaling", "lora", "chatTemplate"]);
const GEN_KEYS = new Set([
  "maxTokens", "stop", "stopOnEos", "addBos", "signal", "temperature", "topK", "topP", "minP",
  "repetitionPenalty", "presencePenalty", "frequencyPenalty", "penaltyLastN", "logitBias", "seed", "responseFormat", "logprobs", "lookup", "draft", "contextShift",
]);
const CHAT_KEYS = new Set([...GEN_KEYS, "template"]);
const INFILL_KEYS = new Set([...[...GEN_KEYS].filter((k) => k !== "addBos"), "suffixFirst"]);

/** Generations drafting (lookup, a draft model) propose drafts only while at most this many requests run. */
const MAX_DRAFT_BATCH = 4;

/** Where a generation's draft tokens come from (a draft model, or prompt lookup). @internal */
export interface Drafter {
  /** Up to `max` tokens that may follow `history` (whose last token is about to be evaluated). */
  propose(history: readonly number[], max: number, signal: AbortSignal): Promise<number[]>;
  /** The generation is over: frees what the drafter holds. */
  close(): void;
}

function checkInt(v: unknown, field: string, min: number, max: number): number | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max) {
    throw new InvalidArgumentError(field, `expected an integer in [${min}, ${max}], got ${showValue(v)}`);
  }
  return v;
}

function checkKeys(opts: object, allowed: Set<string>, what: string): void {
  for (const k of Object.keys(opts)) if (!allowed.has(k)) throw new InvalidArgumentError(`${what}.${k}`, "unknown option");
}

export class Llama2 {
  readonly info: ModelInfo;
  /** null when the model has no tokenizer (llama2.c files without tokenizerPath): use token ids. */
  readonly tokenizer: Tokenizer | null;
  private readonly model: NativeModel;
  private readonly scheduler: Scheduler;
  private readonly active = new Set<AbortController>();
  private readonly waiting: (() => void)[] = [];
  /** Generations started and not yet settled (running, prefilling or waiting for KV room). */
  private inFlight = 0;
  /** Worst-case KV blocks each running generation may still allocate. */
  private readonly growth = new Map<symbol, number>();
  /** Live chat sessions (idle ones can be parked to make KV room); weak: an abandoned session can go. */
  private readonly sessions = new Set<WeakRef<ChatSession>>();
  /** Plans waiting in admit() for KV room (their sequences are in no step). */
  private readonly admitting = new Set<GenerationPlan>();
  private disposed = false;
  private readonly blockSize: number;
  /** Cached prompt prefixes (null when LoadOptions.prefixCache is false). */
  private readonly prefixes: PrefixCache | null;
  private fingerprint: Promise<ModelFingerprint> | undefined;
  /** The chat template requests use when they name none, and the model's own (null: none). */
  private readonly chatTemplates: { default: ChatTemplate; model: ChatTemplate | null };

  private constructor(model: NativeModel, info: ModelInfo, tokenizer: Tokenizer | null, prefixCache: LoadOptions["prefixCache"], templates: ChosenTemplate) {
    this.model = model;
    this.chatTemplates = { default: templates.template, model: templates.modelTemplate ?? null };
    this.info = info;
    this.tokenizer = tokenizer;
    this.blockSize = model.info().kvBlockSize;
    const chunk = info.device === "cuda" ? 2048 : 512;
    const maxStep = model.info().maxStepSequences;
    this.scheduler = new Scheduler(model, { maxStepTokens: chunk, prefillChunk: chunk, maxStepSequences: maxStep, maxStepOutputs: maxStep });
    this.prefixes =
      prefixCache === false
        ? null
        : new PrefixCache(model, { blockSize: this.blockSize, ...(typeof prefixCache === "object" && prefixCache.maxEntries !== undefined && { maxEntries: prefixCache.maxEntries }) });
  }

  /** Loads a Hugging Face directory, a .gguf or a llama2.c .bin. */
  static async load(modelPath: string, options: LoadOptions = {}): Promise<Llama2> {
    if (typeof modelPath !== "string" || modelPath === "") throw new InvalidArgumentError("path", "expected a model path");
    if (typeof options !== "object" || options === null) throw new InvalidArgumentError("options", "expected an object");
    checkKeys(options, LOAD_KEYS, "options");
    const { device = "auto", dtype = "auto", kvCacheType = "auto", cpuActivations = "f32", signal, onProgress, tokenizerPath } = options;
    if (!["auto", "cpu", "cuda"].includes(device)) throw new InvalidArgumentError("device", `expected 'auto', 'cpu' or 'cuda', got ${showValue(device)}`);
    if (!["auto", "f32", "f16", "bf16", "int8", "q4"].includes(dtype)) throw new InvalidArgumentError("dtype", `expected auto, f32, f16, bf16, int8 or q4, got ${showValue(dtype)}`);
    if (!["auto", "int8"].includes(kvCacheType)) throw new InvalidArgumentError("kvCacheType", `expected auto or int8, got ${showValue(kvCacheType)}`);
    if (!["f32", "int8"].includes(cpuActivations)) throw new InvalidArgumentError("cpuActivations", `expected f32 or int8, got ${showValue(cpuActivations)}`);
    checkInt(options.deviceIndex, "deviceIndex", 0, 64);
    checkInt(options.contextLength, "contextLength", 1, 1 << 20);
    checkInt(options.maxSequences, "maxSequences", 1, 4096);
    checkInt(options.threads, "threads", 0, 1024);
    if (onProgress !== undefined && typeof onProgress !== "function") throw new InvalidArgumentError("onProgress", "expected a function");
    if (tokenizerPath !== undefined && typeof tokenizerPath !== "string") throw new InvalidArgumentError("tokenizerPath", "expected a path");
    const { chatTemplate = "auto" } = options;
    if (typeof chatTemplate !== "string" || chatTemplate === "") throw new InvalidArgumentError("chatTemplate", 'expected "auto", "model" or a template name');
    if (chatTemplate !== "auto" && chatTemplate !== MODEL_TEMPLATE) getChatTemplate(chatTemplate); // an unknown name fails before the weights load
    if (signal !== undefined && !(signal instanceof AbortSignal)) throw new InvalidArgumentError("signal", "expected an AbortSignal");
    if (signal?.aborted) throw new Llama2Error("ERR_ABORTED", "loading was aborted");
    const { prefixCache } = options;
    if (prefixCache !== undefined && typeof prefixCache !== "boolean") {
      if (typeof prefixCache !== "object" || prefixCache === null) throw new InvalidArgumentError("prefixCache", "expected a boolean or { maxEntries }");
      checkKeys(prefixCache, new Set(["maxEntries"]), "prefixCache");
      checkInt(prefixCache.maxEntries, "prefixCache.maxEntries", 1, 4096);
    }
    const ropeScaling = checkRopeScaling(options.ropeScaling);
    const lora = checkLora(options.lora);

    const cancel = new Int32Array(new SharedArrayBuffer(4));
    const onAbort = () => Atomics.store(cancel, 0, 1);
    signal?.addEventListener("abort", onAbort, { once: true });
    let model: NativeModel;
    try {
      model = await native().loadModel(
        modelPath,
        {
          device,
          dtype,
          kvCacheType,
          deviceIndex: options.deviceIndex ?? 0,
          contextLength: options.contextLength ?? 0,
          maxSequences: options.maxSequences ?? 4,
          threads: options.threads ?? 0,
          cpuActivations,
          ...(ropeScaling && { ropeScaling }),
          ...(lora.length > 0 && { lora }),
        },
        onProgress
          ? (p) => {
              try {
                onProgress({ phase: p.phase as LoadProgress["phase"], bytes: p.bytes, totalBytes: p.totalBytes, tensors: p.tensors, totalTensors: p.totalTensors });
              } catch {
                /* a throwing progress callback must not break loading */
              }
            }
          : undefined,
        cancel,
      );
    } catch (err) {
      throw fromNative(err);
    } finally {
      signal?.removeEventListener("abort", onAbort);
    }
    try {
      const ni = model.info(true);
      const tokenizer = await resolveTokenizer(ni, tokenizerPath);
      if (tokenizer && tokenizer.vocabSize !== ni.config.vocabSize) {
        throw new Llama2Error("ERR_TOKENIZER", `the tokenizer has ${tokenizer.vocabSize} pieces but the model's vocabulary is ${ni.config.vocabSize} (${tokenizer.source})`);
      }
      // Without a tokenizer there is no chat; the names still resolve (a later chat call says why it fails).
      const templates: ChosenTemplate = tokenizer
        ? chooseChatTemplate(readModelChatTemplate(ni), tokenizer, chatTemplate)
        : { template: getChatTemplate(chatTemplate === "auto" || chatTemplate === MODEL_TEMPLATE ? undefined : chatTemplate) };
      const fim = tokenizer ? fimTokens(tokenizer) : null;
      const info: ModelInfo = {
        path: ni.path,
        format: ni.format,
        config: ni.config,
        device: ni.device,
        deviceName: ni.deviceName,
        dtype: ni.dtype,
        kvCacheType: ni.kvCacheType,
        fileDtype: ni.fileDtype,
        ...(ni.matrixDtypes && { matrixDtypes: ni.matrixDtypes }),
        contextLength: ni.contextLength,
        maxSequences: ni.maxSequences,
        weightBytes: ni.weightBytes,
        kvCacheBytes: ni.kvCacheBytes,
        lora: ni.lora,
        hasTokenizer: tokenizer !== null,
        bosId: tokenizer?.bosId ?? ni.tokenizer?.bosId ?? 1,
        eosId: tokenizer?.eosId ?? ni.tokenizer?.eosId ?? 2,
        chatTemplate: templates.template.name,
        ...(templates.note && { chatTemplateNote: templates.note }),
        ...(fim && { fimTokens: fim }),
      };
      return new Llama2(model, info, tokenizer, prefixCache, templates);
    } catch (err) {
      model.dispose();
      throw err;
    }
  }

  /** Text -> token ids (no BOS unless asked). */
  tokenize(text: string, opts: EncodeOptions = {}): number[] {
    return this.requireTokenizer().encode(text, opts);
  }

  /** Token ids -> text, exactly as SentencePiece decodes. */
  detokenize(ids: readonly number[]): string {
    return this.requireTokenizer().decode(ids);
  }

  /** Requests running or waiting (counted from the call that starts them). */
  get pending(): number {
    return this.inFlight;
  }

  /** GPU memory used by this model, bytes (undefined on the CPU). */
  deviceMemoryBytes(): number | undefined {
    if (this.disposed || this.info.device !== "cuda") return undefined;
    return this.model.info().deviceMemoryUsed;
  }

  /** Live figures: KV blocks, scheduler counters and the prefix cache (null when disabled). */
  stats(): {
    kv: { freeBlocks: number; totalBlocks: number; blockSize: number };
    scheduler: Scheduler["stats"];
    queueDepth: number;
    prefixCache: PrefixCacheStats | null;
  } {
    this.checkAlive();
    return {
      kv: this.model.kvState(),
      scheduler: { ...this.scheduler.stats },
      queueDepth: this.scheduler.depth,
      prefixCache: this.prefixes?.stats() ?? null,
    };
  }

  /**
   * Prefills a prompt prefix once and keeps its KV cache, so every later request (generate, chat,
   * a session's first turn) whose prompt starts with it evaluates only the rest. Text is encoded as
   * generate() does (BOS unless addBos: false); `{ systemPrompt }` caches the chat template's start
   * of a dialog with that system prompt. Resolves with the prefix's length in tokens (0 when it is
   * shorter than one KV block, too short to be worth caching) and how many of them were already
   * cached. Cached prefixes are evicted, least recently used first, when requests need KV blocks.
   */
  async cachePrefix(
    prefix: string | readonly number[] | { systemPrompt: string; template?: string },
    opts: { addBos?: boolean; signal?: AbortSignal } = {},
  ): Promise<{ tokens: number; reusedTokens: number }> {
    this.checkAlive();
    if (typeof opts !== "object" || opts === null) throw new InvalidArgumentError("options", "expected an object");
    checkKeys(opts, new Set(["addBos", "signal"]), "options");
    if (opts.signal !== undefined && !(opts.signal instanceof AbortSignal)) throw new InvalidArgumentError("signal", "expected an AbortSignal");
    if (!this.prefixes) throw new InvalidArgumentError("prefixCache", "the prefix cache is off (the model was loaded with prefixCache: false)");
    let ids: number[];
    if (typeof prefix === "string") {
      ids = this.requireTokenizer().encode(prefix, { bos: opts.addBos ?? true });
    } else if (Array.isArray(prefix)) {
      ids = this.checkIds(prefix, "prefix").slice();
    } else if (typeof prefix === "object" && prefix !== null && typeof (prefix as { systemPrompt?: unknown }).systemPrompt === "string") {
      const { systemPrompt, template } = prefix as { systemPrompt: string; template?: string };
      const t = this.templateFor(template);
      const tok = this.requireTokenizer();
      // The dialog's tokens up to where the user's message starts: common to any user message.
      const a = t.encodeDialog([{ role: "system", content: systemPrompt }, { role: "user", content: "x" }], tok);
      const b = t.encodeDialog([{ role: "system", content: systemPrompt }, { role: "user", content: "?" }], tok);
      ids = a.slice(0, commonPrefix(a, b));
    } else {
      throw new InvalidArgumentError("prefix", "expected a string, an array of token ids or { systemPrompt }");
    }
    if (ids.length > this.info.contextLength) {
      throw new Llama2Error("ERR_CONTEXT_OVERFLOW", `the prefix is ${ids.length} tokens but the context length is ${this.info.contextLength}`);
    }
    if (ids.length < this.prefixes.minTokens) return { tokens: 0, reusedTokens: 0 };
    const have = this.prefixes.match(ids);
    if (have && have.length === ids.length) {
      this.prefixes.touch(have);
      return { tokens: ids.length, reusedTokens: ids.length };
    }
    if (opts.signal?.aborted) throw new Llama2Error("ERR_ABORTED", "aborted");
    const prefixes = this.prefixes;
    const plan: GenerationPlan = { seq: this.model.createSequence(), prompt: ids, cached: 0, context: [], history: ids, stripLeadingSpace: false, ownsSequence: true, reuse: true };
    await this.evalPrompt(plan, 0, opts.signal, () => {
      prefixes.insert(plan.seq, ids);
      return true;
    });
    return { tokens: ids.length, reusedTokens: plan.cached };
  }

  /** score() and embed(): the options object, its keys (`addBos`, `signal` and the caller's `own`) and the shared ones' types. */
  private checkEvalOptions(opts: { addBos?: unknown; signal?: unknown }, own: string[]): void {
    this.checkAlive();
    if (typeof opts !== "object" || opts === null) throw new InvalidArgumentError("options", "expected an object");
    checkKeys(opts, new Set(["addBos", "signal", ...own]), "options");
    if (opts.signal !== undefined && !(opts.signal instanceof AbortSignal)) throw new InvalidArgumentError("signal", "expected an AbortSignal");
    if (opts.addBos !== undefined && typeof opts.addBos !== "boolean") throw new InvalidArgumentError("addBos", "expected a boolean");
  }

  /**
   * score() and embed(): the input as token ids (text encoded as generate() does: BOS unless addBos: false;
   * ids taken as they are), at least `min` (else `tooFew`'s message) and at most the context (else
   * ERR_CONTEXT_OVERFLOW with `suggestion`); ERR_ABORTED when the signal already fired.
   */
  private evalInputIds(input: string | readonly number[], opts: { addBos?: boolean; signal?: AbortSignal }, min: number, tooFew: (n: number) => string, suggestion: string): number[] {
    let ids: number[];
    if (typeof input === "string") ids = this.requireTokenizer().encode(input, { bos: opts.addBos ?? true });
    else if (Array.isArray(input)) ids = this.checkIds(input, "input").slice();
    else throw new InvalidArgumentError("input", "expected a string or an array of token ids");
    if (ids.length < min) throw new InvalidArgumentError("input", tooFew(ids.length));
    if (ids.length > this.info.contextLength) {
      throw new Llama2Error("ERR_CONTEXT_OVERFLOW", `the text is ${ids.length} tokens but the context length is ${this.info.contextLength}`, { suggestion });
    }
    if (opts.signal?.aborted) throw new Llama2Error("ERR_ABORTED", "aborted");
    return ids;
  }

  /** A plan for evalPrompt: `ids` on a new sequence of its own, nothing cached. */
  private evalPlan(ids: number[]): GenerationPlan {
    return { seq: this.model.createSequence(), prompt: ids, cached: 0, context: [], history: [], stripLeadingSpace: false, ownsSequence: true, reuse: false };
  }

  /**
   * Evaluates `plan`'s prompt alone (admitted with no reply: maxTokens 0) with `output` (for every token
   * with `every`), and hands the step's
   * output to `use` while the sequence is still held. The sequence is freed afterwards unless `use` returns
   * true (it kept it). Aborting `signal` (or disposing the model) ends it with ERR_ABORTED.
   */
  private async evalPrompt(plan: GenerationPlan, output: number, signal: AbortSignal | undefined, use: (out: NativeStepOutput) => boolean, every = false): Promise<void> {
    const controller = new AbortController();
    const onAbort = () => controller.abort();
    signal?.addEventListener("abort", onAbort, { once: true });
    const key = Symbol("evalPrompt");
    let kept = false;
    this.inFlight++;
    try {
      await this.admit(plan, 0, key, controller.signal);
      this.active.add(controller);
      kept = use(await this.scheduler.eval(plan.seq, plan.prompt, output, controller.signal, every));
    } catch (err) {
      throw controller.signal.aborted && !this.disposed ? new Llama2Error("ERR_ABORTED", "aborted") : err instanceof Llama2Error ? err : fromNative(err);
    } finally {
      this.inFlight--;
      signal?.removeEventListener("abort", onAbort);
      this.active.delete(controller);
      this.growth.delete(key);
      if (!kept && !this.disposed) {
        try {
          this.model.freeSequence(plan.seq);
        } catch {
          /* already gone */
        }
      }
      this.wakeWaiters();
    }
  }

  /**
   * Scores a text (teacher forcing): the model's log-probability of each token given the ones before it,
   * from one evaluation of the whole text (no sampling), and the perplexity over them. Text is encoded
   * as generate() does (BOS unless addBos: false); token ids are taken as they are. At least 2 tokens, at
   * most the context length. Runs beside other requests (continuous batching), in chunks of the step's
   * output rows.
   */
  async score(input: string | readonly number[], opts: ScoreOptions = {}): Promise<ScoreResult> {
    this.checkEvalOptions(opts, ["topLogprobs", "keepPrefix"]);
    if (opts.keepPrefix !== undefined && typeof opts.keepPrefix !== "boolean") throw new InvalidArgumentError("keepPrefix", "expected a boolean");
    const top = opts.topLogprobs;
    if (top !== undefined && (!Number.isInteger(top) || top < 0 || top > 20)) throw new InvalidArgumentError("topLogprobs", `expected an integer in [0, 20], got ${showValue(top)}`);
    const ids = this.evalInputIds(input, opts, 2, (n) => `needs at least 2 tokens to score, got ${n}`, "score it in windows (llama2 perplexity does)");
    const keep = opts.keepPrefix === true && this.prefixes !== null && ids.length >= this.prefixes.minTokens;
    const plan = this.evalPlan(ids);
    const V = this.info.config.vocabSize;
    const logprobs: number[] = [];
    const tokens: TokenLogprob[] | undefined = top !== undefined ? [] : undefined;
    const tokenText = (id: number) => this.tokenizer?.tokenBytes()[id] ?? null;
    const t0 = performance.now();
    await this.evalPrompt(plan, -2, opts.signal, (out) => {
      // Row r of the logits predicts token r + 1; the last token's row predicts nothing.
      if (!(out instanceof Float32Array) || out.length !== ids.length * V) throw new Llama2Error("ERR_INTERNAL", `score: expected ${ids.length} rows of logits`);
      for (let r = 0; r + 1 < ids.length; r++) {
        const row = out.subarray(r * V, (r + 1) * V);
        const lse = logSumExp(row); // once per row, for both
        logprobs.push(rowLogprob(row, ids[r + 1]!, lse));
        tokens?.push(tokenLogprob(row, ids[r + 1]!, top!, tokenText, lse));
      }
      if (!keep || logprobs.some((l) => Number.isNaN(l))) return false;
      this.prefixes!.insert(plan.seq, ids);
      return true;
    });
    if (logprobs.some((l) => Number.isNaN(l))) throw new Llama2Error("ERR_MODEL_CORRUPT", `${this.info.path}: the model's logits are not numbers (NaN)`);
    const sum = logprobs.reduce((a, b) => a + b, 0);
    return { tokenIds: ids, logprobs, sum, perplexity: Math.exp(-sum / logprobs.length), ...(tokens && { tokens }), totalMs: performance.now() - t0 };
  }

  /**
   * An embedding of a text or of token ids: the model's final hidden states (after its last RMSNorm, what
   * the classifier reads) pooled over the tokens: `mean` (default) over every token but a leading BOS, or
   * the `last` token's; L2-normalized unless `normalize: false`. Text is encoded as generate() does (BOS
   * unless addBos: false). At most the context length; runs beside other requests (continuous batching).
   */
  async embed(input: string | readonly number[], opts: EmbedOptions = {}): Promise<EmbedResult> {
    this.checkEvalOptions(opts, ["pooling", "normalize"]);
    if (opts.normalize !== undefined && typeof opts.normalize !== "boolean") throw new InvalidArgumentError("normalize", "expected a boolean");
    const pooling = opts.pooling ?? "mean";
    if (pooling !== "mean" && pooling !== "last") throw new InvalidArgumentError("pooling", `expected "mean" or "last", got ${showValue(pooling)}`);
    const ids = this.evalInputIds(input, opts, 1, () => "is empty (no tokens to embed)", "embed it in shorter pieces");
    const plan = this.evalPlan(ids);
    const D = this.info.config.dim;
    const embedding = new Float32Array(D);
    const t0 = performance.now();
    const mean = pooling === "mean";
    await this.evalPrompt(
      plan,
      -3,
      opts.signal,
      (out) => {
        const rows = mean ? ids.length : 1;
        if (!(out instanceof Float32Array) || out.length !== rows * D) throw new Llama2Error("ERR_INTERNAL", `embed: expected ${rows} hidden states`);
        poolRows(out, D, mean && ids.length > 1 && ids[0] === this.info.bosId ? 1 : 0, embedding);
        return false;
      },
      mean,
    );
    if (embedding.some((v) => !Number.isFinite(v))) throw new Llama2Error("ERR_MODEL_CORRUPT", `${this.info.path}: the model's hidden states are not finite numbers`);
    if (opts.normalize ?? true) normalizeL2(embedding);
    return { embedding, tokenCount: ids.length, totalMs: performance.now() - t0 };
  }

  /** Drops every cached prefix (their KV blocks return to the pool once no request shares them). */
  clearPrefixCache(): void {
    this.checkAlive();
    this.prefixes?.clear();
  }

  /** Raw completion of a text prompt (BOS prepended unless addBos: false) or of token ids. */
  generate(prompt: string | readonly number[], opts: GenerateOptions = {}): GenerationStream {
    this.checkAlive();
    this.checkGenerateOptions(opts, GEN_KEYS);
    let ids: number[];
    if (typeof prompt === "string") {
      ids = this.requireTokenizer().encode(prompt, { bos: opts.addBos ?? true });
    } else if (Array.isArray(prompt)) {
      ids = this.checkIds(prompt, "prompt");
    } else {
      throw new InvalidArgumentError("prompt", "expected a string or an array of token ids");
    }
    if (ids.length === 0) throw new InvalidArgumentError("prompt", "is empty (no tokens to condition on)");
    return this.runOneShot(ids, opts, {});
  }

  /**
   * Fill in the middle: the text between `prefix` and `suffix`, for models trained for it (Code Llama 7B
   * and 13B: `info.fimTokens`), in Meta's prompt format. The reply ends at the model's end-of-middle piece
   * (or EOS, or the usual limits) and keeps its leading space. ERR_FORMAT_UNSUPPORTED for other models.
   */
  infill(prefix: string, suffix: string, opts: InfillOptions = {}): GenerationStream {
    this.checkAlive();
    this.checkGenerateOptions(opts, INFILL_KEYS);
    const fim = this.info.fimTokens;
    const ids = this.infillPrompt(prefix, suffix, opts);
    return this.runOneShot(ids, opts, { stopIds: [fim!.eot] });
  }

  /** The prompt `infill` evaluates (its length bounds maxTokens the way a generate prompt's does). */
  infillPrompt(prefix: string, suffix: string, opts: { suffixFirst?: boolean } = {}): number[] {
    this.checkAlive();
    if (typeof prefix !== "string") throw new InvalidArgumentError("prefix", `expected a string, got ${showValue(prefix)}`);
    if (typeof suffix !== "string") throw new InvalidArgumentError("suffix", `expected a string, got ${showValue(suffix)}`);
    const suffixFirst = opts?.suffixFirst ?? false;
    if (typeof suffixFirst !== "boolean") throw new InvalidArgumentError("suffixFirst", `expected a boolean, got ${showValue(suffixFirst)}`);
    const tok = this.requireTokenizer();
    const fim = this.info.fimTokens;
    if (!fim) {
      throw new Llama2Error("ERR_FORMAT_UNSUPPORTED", `${this.info.path} was not trained for infilling: its vocabulary has no ▁<PRE> / ▁<SUF> / ▁<MID> / ▁<EOT> pieces (Code Llama 7B and 13B have them)`);
    }
    return infillPromptIds(tok, fim, prefix, suffix, suffixFirst);
  }

  /** Chat completion with the model's chat template (Llama 2's by default). */
  chat(messages: readonly ChatMessage[], opts: ChatOptions = {}): GenerationStream {
    this.checkAlive();
    this.checkGenerateOptions(opts, CHAT_KEYS);
    const template = this.templateFor(opts.template);
    const ids = template.encodeDialog(messages as ChatMessage[], this.requireTokenizer());
    return this.runOneShot(ids, opts, { chat: true, stops: template.stopStrings ?? [], ...(template.stopTokenIds && { stopIds: template.stopTokenIds }) });
  }

  /** Prompt tokens a chat request would use (the dialog through the chat template). */
  chatPromptTokens(messages: readonly ChatMessage[], template?: string): number {
    return this.templateFor(template).encodeDialog(messages as ChatMessage[], this.requireTokenizer()).length;
  }

  /**
   * A conversation that keeps its KV cache between turns (while the cache has room: an idle session is
   * parked for other requests when it runs out, and its next turn re-prompts the conversation). With
   * `contextShift` (default true), a turn that would not leave room for its reply (`maxTokens` up to half
   * the context, or a quarter of the context) drops the oldest exchanges from the model's window (`droppedMessages`);
   * false makes such a turn fail with ERR_CONTEXT_OVERFLOW once the prompt itself no longer fits.
   */
  createSession(opts: SessionOptions = {}): ChatSession {
    this.checkAlive();
    if (typeof opts !== "object" || opts === null) throw new InvalidArgumentError("options", "expected an object");
    checkKeys(opts, new Set(["systemPrompt", "template", "contextShift", "messages"]), "options");
    if (opts.contextShift !== undefined && typeof opts.contextShift !== "boolean") throw new InvalidArgumentError("options.contextShift", "expected a boolean");
    const session = new ChatSession(this, this.templateFor(opts.template), opts.systemPrompt, opts.contextShift ?? true, opts.messages);
    this.sessions.add(new WeakRef(session));
    return session;
  }

  /**
   * Resumes a chat saved with `ChatSession.save()`: its messages, system prompt, template and KV cache,
   * so that the next turn evaluates only itself. The model must be the one that saved it, loaded the same
   * way (weights, dtype, device kind, kvCacheType, ropeScaling, lora): anything else is ERR_SESSION_STATE.
   */
  async restoreSession(file: string, opts: { contextShift?: boolean; signal?: AbortSignal } = {}): Promise<ChatSession> {
    this.checkAlive();
    if (typeof file !== "string" || file === "") throw new InvalidArgumentError("file", "expected a path");
    if (typeof opts !== "object" || opts === null) throw new InvalidArgumentError("options", "expected an object");
    checkKeys(opts, new Set(["contextShift", "signal"]), "options");
    if (opts.contextShift !== undefined && typeof opts.contextShift !== "boolean") throw new InvalidArgumentError("options.contextShift", "expected a boolean");
    const state = await openSessionState(file);
    try {
      checkSameModel(file, state.header.model, await this._fingerprint());
      this.checkAlive();
      const s = state.header.session;
      const session = new ChatSession(this, this.templateFor(s.template), s.systemPrompt, opts.contextShift ?? s.contextShift, s.messages);
      await session._restore(state, file, opts.signal);
      this.sessions.add(new WeakRef(session));
      return session;
    } finally {
      await state.close().catch(() => {});
    }
  }

  /** Aborts running generations, rejects queued ones and frees the model (GPU memory included). */
  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    for (const c of this.active) c.abort();
    this.scheduler.close();
    this.wakeWaiters();
    this.prefixes?.close();
    this.sessions.clear();
    this.model.dispose();
  }

  // ---------------------------------------------------------------- internals (used by ChatSession)

  /** @internal */
  _native(): NativeModel {
    this.checkAlive();
    return this.model;
  }

  /** @internal Runs one generation described by `plan`. */
  _run(plan: GenerationPlan, opts: GenerateOptions): GenerationStream {
    return createGenerationStream((emit, signal) => this.generation(plan, opts, emit, signal), opts.signal);
  }

  /** @internal */
  _checkOptions(opts: GenerateOptions): void {
    this.checkGenerateOptions(opts, GEN_KEYS);
  }

  /** @internal A disposed session leaves the parking candidates. */
  _forgetSession(s: ChatSession): void {
    for (const r of this.sessions) if (r.deref() === s || r.deref() === undefined) this.sessions.delete(r);
  }

  /** Parks the least recently used idle session that holds KV blocks; false when there is none. */
  private parkIdleSession(): boolean {
    const live: ChatSession[] = [];
    for (const r of this.sessions) {
      const s = r.deref();
      if (s) live.push(s);
      else this.sessions.delete(r);
    }
    return live.sort((a, b) => a._lastUsed - b._lastUsed).some((s) => s._park());
  }

  /** A turn still waiting for admission gives up its KV (the latest first); false when none can. */
  private parkWaitingTurn(self: GenerationPlan): boolean {
    return [...this.admitting].reverse().some((p) => p !== self && p.park?.() === true);
  }

  /**
   * @internal Frees KV blocks for `blocks` more (cached prefixes first, then idle sessions), keeping what
   * admitted generations may still take; ERR_KV_CACHE_FULL when that cannot be done.
   */
  _makeKvRoom(blocks: number, what: string): void {
    for (;;) {
      let reserved = 0;
      for (const g of this.growth.values()) reserved += g;
      if (this.model.kvState().freeBlocks - Math.ceil(reserved) >= blocks) return;
      if (this.prefixes?.evictLRU()) continue;
      if (this.parkIdleSession()) continue;
      throw new Llama2Error("ERR_KV_CACHE_FULL", `${what} needs ${blocks * this.blockSize} tokens of KV cache, and running requests hold the rest`, {
        suggestion: "retry when they end, or raise maxSequences / contextLength",
      });
    }
  }

  /** @internal What this model's KV depends on (saved sessions), read once. */
  _fingerprint(): Promise<ModelFingerprint> {
    this.fingerprint ??= modelFingerprint(this.info, this.blockSize, this.model.info().kvBlockBytes);
    this.fingerprint.catch(() => (this.fingerprint = undefined));
    return this.fingerprint;
  }

  /** @internal Whether the model is still loaded (not disposed). */
  get _alive(): boolean {
    return !this.disposed;
  }

  /** @internal Whether the prefix cache is on. */
  get _prefixCacheEnabled(): boolean {
    return this.prefixes !== null;
  }

  /**
   * @internal Keeps `tokens` (held by `seq`) in the prefix cache. `handOver`: the cache takes the
   * sequence itself (or frees it); otherwise it keeps a fork and `seq` stays the caller's.
   */
  _cacheSequence(seq: number, tokens: number[], handOver: boolean): void {
    if (this.disposed) return;
    if (!this.prefixes) {
      if (handOver) this.model.freeSequence(seq);
      return;
    }
    if (handOver) this.prefixes.insert(seq, tokens);
    else this.prefixes.snapshot(seq, tokens, tokens.length);
    this.wakeWaiters();
  }

  /** `template`: set for chat requests (its stop strings and tokens apply; a chat reply strips its leading space). */
  /**
   * One request on its own sequence. `chat`: a reply (its leading space is dropped); `stops` / `stopIds`: the
   * template's (or infilling's) own ends besides EOS.
   */
  private runOneShot(ids: number[], opts: GenerateOptions, ends: { chat?: boolean; stops?: readonly string[]; stopIds?: readonly number[] }): GenerationStream {
    const { chat = false, stops: templateStops, stopIds: templateStopIds } = ends;
    return createGenerationStream(async (emit, signal) => {
      const seq = this.model.createSequence();
      const plan: GenerationPlan = { seq, prompt: ids, cached: 0, context: [], history: ids, stripLeadingSpace: chat, ownsSequence: true, reuse: true, templateStops, ...(templateStopIds && { templateStopIds }) };
      return this.generation(plan, opts, emit, signal);
    }, opts.signal);
  }

  private async generation(
    plan: GenerationPlan,
    opts: GenerateOptions,
    emit: (c: GenerationChunk) => void,
    signal: AbortSignal,
  ): Promise<GenerationResult> {
    const t0 = performance.now();
    this.inFlight++;
    const ctx = this.info.contextLength;
    const generated: number[] = [];
    const logprobs: GenerationResult["logprobs"] = opts.logprobs === undefined ? undefined : [];
    let evaluated = 0; // prompt tokens that made it into the cache
    let finishReason: FinishReason = "length";
    const controller = new AbortController();
    const onAbort = () => controller.abort();
    signal.addEventListener("abort", onAbort, { once: true });
    if (signal.aborted) controller.abort(); // aborted before it started: no event will come
    const key = Symbol("generation");
    let streamed = "";
    const push = (c: GenerationChunk) => {
      streamed += c.text;
      emit(c);
    };
    // KV blocks this generation may still allocate, given how long its sequence is now.
    let worst = 0;
    let have = 0; // blocks the sequence held when admitted
    let keep = false; // hand the sequence to the prefix cache at the end
    let drafter: Drafter | null = null;
    const grew = (len: number) => this.growth.set(key, Math.max(0, worst - (Math.ceil(len / this.blockSize) - have)));
    // The plan's end hook runs once; a hook that throws (e.g. the model was disposed meanwhile) does not
    // turn a finished generation into a failure.
    let ended = false;
    const onEnd = (r: Parameters<NonNullable<GenerationPlan["onEnd"]>>[0]) => {
      if (ended) return;
      ended = true;
      try {
        plan.onEnd?.(r);
      } catch {
        /* see above */
      }
    };
    try {
      if (plan.cached + plan.prompt.length > ctx) {
        throw new Llama2Error("ERR_CONTEXT_OVERFLOW", `the prompt needs ${plan.cached + plan.prompt.length} tokens but the context length is ${ctx}`);
      }
      const constraint = createConstraint(opts.responseFormat, this.tokenizer);
      const sampler = new Sampler(opts, this.info.config.vocabSize, { constrained: constraint !== null });
      const needs = sampler.needs;
      // Log-probabilities need the whole distribution's normalizer: full logits.
      const output = needs.fullLogits || logprobs ? -1 : needs.candidates;
      const tokenText = (id: number) => this.tokenizer?.tokenBytes()[id] ?? null;
      const stopOnEos = opts.stopOnEos ?? true;
      const room = ctx - plan.cached - plan.prompt.length;
      // Whether the tokens before the prompt are known (not for a parked session): then `seqTokens` below
      // holds everything the sequence does, from position 0.
      const known = plan.context !== undefined && plan.context.length === plan.cached;
      // Context shift inside a reply: when the context is full, the oldest half of what follows the kept
      // start leaves it and the rest is evaluated again.
      const canShift = opts.contextShift === true && known;
      const maxTokens = canShift ? (opts.maxTokens ?? Infinity) : Math.min(opts.maxTokens ?? Infinity, room + 1);
      const decoder = this.tokenizer?.createStreamDecoder({ stripLeadingSpace: plan.stripLeadingSpace });
      const stop = new StopMatcher(opts.stop ?? [], plan.templateStops);
      const history = plan.history.slice();
      const eos = this.info.eosId;
      // Prompt lookup decoding: drafts copied from earlier in the history are evaluated with the token
      // that precedes them, one row of logits each, and kept while the sampler confirms them (greedy: the
      // argmax; sampling: speculative sampling, which keeps the sampler's distribution exactly).
      const lookup = opts.draft ? (opts.draft.tokens ?? 8) : (opts.lookup ?? 0);
      drafter = opts.draft ? opts.draft.model._createDrafter() : lookup > 0 ? { propose: async (h, max) => lookupDraft(h, max), close: () => {} } : null;
      // The tokens the sequence holds (prompt and reply): what drafts follow and what a shift cuts.
      const seqTokens = known ? plan.context!.concat(plan.prompt) : history;
      // What a shift keeps: the whole prompt when it takes at most half the context, else its first token.
      const keepOnShift = seqTokens.length <= ctx / 2 ? seqTokens.length : 1;
      let shifted = false;
      let drafted: number[] = []; // drafts evaluated after the last evaluated token
      let row = 0; // the row of `out` the next token is sampled from
      let kvValid = 0; // the sequence's tokens whose KV holds what the generation kept
      let draftTokens = 0;
      let acceptedDraftTokens = 0;
      // Drafts per step adapt to how they fare: doubled (up to `lookup`) when all came true, halved when
      // none did, so that text that does not repeat costs little.
      let draftMax = lookup;
      const V = this.info.config.vocabSize;

      try {
        worst = await this.admit(plan, maxTokens, key, controller.signal);
      } catch (err) {
        // Aborted before it started (or while queued for KV room): it ends like any aborted generation.
        if (controller.signal.aborted && !this.disposed) return this.finish(push, onEnd, streamed, plan, generated, 0, "abort", { t0, tAdmit: t0, tPrefill: t0, tFirst: 0 }, logprobs);
        throw err;
      }
      have = Math.ceil(plan.cached / this.blockSize);
      this.active.add(controller);
      const tAdmit = performance.now();
      let out: NativeStepOutput;
      try {
        out = await this.scheduler.eval(plan.seq, plan.prompt, output, controller.signal);
      } catch (err) {
        if (controller.signal.aborted) {
          evaluated = this.model.sequenceLength(plan.seq) - plan.cached;
          finishReason = "abort";
          return this.finish(push, onEnd, streamed, plan, generated, evaluated, finishReason, { t0, tAdmit, tPrefill: performance.now(), tFirst: 0 }, logprobs);
        }
        throw err;
      }
      evaluated = plan.prompt.length;
      kvValid = plan.cached + evaluated;
      grew(plan.cached + evaluated);
      if (this.prefixes && plan.context && plan.context.length === plan.cached) {
        // Later requests with the same start can fork the prompt's full blocks right away.
        const B = this.blockSize;
        const full = plan.context.concat(plan.prompt);
        this.prefixes.snapshot(plan.seq, full, Math.floor(full.length / B) * B);
      }
      const tPrefill = performance.now();
      let tFirst = 0;
      for (;;) {
        if (controller.signal.aborted) {
          finishReason = "abort";
          break;
        }
        const logits = drafted.length > 0 ? outputRow(out!, row, drafted.length + 1, V) : out!;
        const tok = this.sampleOrExplain(sampler, logits, history, constraint, row < drafted.length ? drafted[row]! : -1);
        if (tFirst === 0) tFirst = performance.now();
        // Under a response format EOS is allowed only where the document is complete, and ends it.
        if ((tok === eos || plan.templateStopIds?.includes(tok)) && (stopOnEos || constraint)) {
          finishReason = "stop";
          break;
        }
        constraint?.accept(tok);
        generated.push(tok);
        history.push(tok);
        if (seqTokens !== history) seqTokens.push(tok);
        // The draft at this row was right: its KV is in the cache and the next row follows it.
        const hit = row < drafted.length && tok === drafted[row];
        if (hit) {
          kvValid++;
          acceptedDraftTokens++;
        }
        const piece = decoder ? decoder.push(tok) : "";
        const r = stop.push(piece);
        if (logprobs) {
          const lp = tokenLogprob(logits as Float32Array, tok, opts.logprobs!, tokenText);
          logprobs.push(lp);
          push({ text: r.text, tokenIds: [tok], logprobs: [lp] });
        } else push({ text: r.text, tokenIds: [tok] });
        if (r.stopped) {
          finishReason = "stopSequence";
          break;
        }
        if (constraint?.done) {
          finishReason = "stop"; // the document is complete and nothing may follow it
          break;
        }
        // Another token needs this one evaluated into the cache: cached + evaluated + generated positions.
        if (generated.length >= maxTokens) {
          finishReason = "length";
          break;
        }
        // Positions the sequence needs: seqTokens when known (shifts cut it), else the prompt and reply.
        if ((known ? seqTokens.length : plan.cached + evaluated + generated.length) > ctx) {
          if (!canShift) {
            finishReason = "length";
            break;
          }
          // Keep the start, drop the oldest half of the rest, and evaluate what remains after the start
          // (this token last) into the cache again: exact, where shifting the cached keys' RoPE would not be.
          const tail = seqTokens.length - keepOnShift;
          const drop = Math.max(1, Math.floor(tail / 2));
          const window = seqTokens.slice(0, keepOnShift).concat(seqTokens.slice(keepOnShift + drop));
          this.model.truncateSequence(plan.seq, keepOnShift);
          grew(keepOnShift);
          out = await this.scheduler.eval(plan.seq, window.slice(keepOnShift), output, controller.signal).catch((err) => {
            if (controller.signal.aborted) return null;
            throw err;
          });
          seqTokens.length = 0;
          seqTokens.push(...window);
          kvValid = out === null ? keepOnShift : window.length;
          if (out === null) {
            finishReason = "abort";
            break;
          }
          shifted = true;
          drafted = [];
          row = 0;
          grew(kvValid);
          continue;
        }
        if (hit) {
          row++;
          continue;
        }
        // Evaluate the token (after dropping the KV of drafts that did not come true), with new drafts
        // that may all come true within maxTokens and the context.
        if (this.model.sequenceLength(plan.seq) > kvValid) {
          this.model.truncateSequence(plan.seq, kvValid);
          grew(kvValid); // the freed blocks go back under this generation's reservation
        }
        if (drafted.length > 0) draftMax = row === drafted.length ? Math.min(lookup, draftMax * 2) : row === 0 ? Math.max(1, draftMax >> 1) : draftMax;
        // Drafts only while the batch is small: a batched step already reads the weights once for many
        // tokens, and each sequence's drafts would add rows to every step of the batch.
        const draft = drafter && this.inFlight <= MAX_DRAFT_BATCH ? await drafter.propose(seqTokens, Math.min(draftMax, maxTokens - generated.length - 1, ctx - kvValid - 1), controller.signal) : [];
        // With drafts, every token's row: what the sampler needs (candidates or logits) for each.
        out = await this.scheduler.eval(plan.seq, [tok, ...draft], output, controller.signal, draft.length > 0).catch((err) => {
          if (controller.signal.aborted) return null;
          throw err;
        });
        if (out === null) {
          finishReason = "abort";
          break;
        }
        drafted = draft;
        row = 0;
        draftTokens += draft.length;
        kvValid++;
        grew(kvValid + draft.length);
      }
      // Drafts evaluated past what the generation kept (or an aborted step's part) leave the cache: the
      // prefix cache and sessions take the sequence to hold exactly the tokens kept.
      if (!this.disposed && this.model.sequenceLength(plan.seq) > kvValid) this.model.truncateSequence(plan.seq, kvValid);
      if (finishReason !== "stopSequence") {
        const tail = stop.push(decoder ? decoder.flush() : "").text + stop.flush();
        if (tail) push({ text: tail, tokenIds: [] });
      }
      // After a shift the sequence no longer holds the prompt and reply from their start: not cached.
      keep = finishReason !== "abort" && !shifted;
      const draft = lookup > 0 ? { draftTokens, acceptedDraftTokens } : undefined;
      const held = shifted ? seqTokens.slice(0, this.disposed ? 0 : this.model.sequenceLength(plan.seq)) : undefined;
      return this.finish(push, onEnd, streamed, plan, generated, evaluated, finishReason, { t0, tAdmit, tPrefill, tFirst }, logprobs, draft, held);
    } catch (err) {
      const e = err instanceof Llama2Error ? err : fromNative(err);
      onEnd({ generated, evaluated, text: streamed, finishReason: "abort", error: e });
      throw e;
    } finally {
      drafter?.close();
      this.inFlight--;
      signal.removeEventListener("abort", onAbort);
      this.active.delete(controller);
      this.growth.delete(key);
      if (plan.ownsSequence && !this.disposed) {
        try {
          if (keep && this.prefixes && plan.context && plan.context.length === plan.cached) {
            // The prompt and the reply stay cached: a follow-up turn of this dialog starts from them.
            const len = this.model.sequenceLength(plan.seq);
            this.prefixes.insert(plan.seq, plan.context.concat(plan.prompt, generated).slice(0, len));
          } else {
            this.model.freeSequence(plan.seq);
          }
        } catch {
          /* already gone */
        }
      }
      this.wakeWaiters();
    }
  }

  /** The sampler's pick; a model whose logits are all NaN / -Infinity gets an error naming it. */
  private sampleOrExplain(sampler: Sampler, out: Parameters<Sampler["sample"]>[0], history: ArrayLike<number>, constraint: Constraint | null, draft = -1): number {
    try {
      return draft >= 0 ? sampler.sampleDraft(out, history, draft, constraint ?? undefined) : sampler.sample(out, history, constraint ?? undefined);
    } catch (e) {
      if (e instanceof Llama2Error && e.code === "ERR_MODEL_CORRUPT") {
        // logitBias bans fewer tokens than the vocabulary (validated), so the model's output is at fault.
        throw new Llama2Error("ERR_MODEL_CORRUPT", `${this.info.path}: ${e.message}: the model's output is not a number (NaN or Inf in its weights, or activations that overflow)`);
      }
      throw e;
    }
  }

  /** Every request waiting for KV blocks re-checks, in arrival order. */
  private wakeWaiters(): void {
    for (const w of this.waiting.splice(0)) w();
  }

  private finish(
    emit: (c: GenerationChunk) => void,
    onEnd: NonNullable<GenerationPlan["onEnd"]>,
    text: string,
    plan: GenerationPlan,
    generated: number[],
    evaluated: number,
    finishReason: FinishReason,
    t: { t0: number; tAdmit: number; tPrefill: number; tFirst: number },
    logprobs?: GenerationResult["logprobs"],
    draft?: { draftTokens: number; acceptedDraftTokens: number },
    shifted?: number[],
  ): GenerationResult {
    const tEnd = performance.now();
    const stats: GenerationStats = {
      promptTokens: plan.cached + plan.prompt.length,
      cachedPromptTokens: plan.cached,
      completionTokens: generated.length,
      timeToFirstTokenMs: t.tFirst ? t.tFirst - t.t0 : 0,
      promptTokensPerSecond: t.tPrefill > t.tAdmit && evaluated > 0 ? evaluated / ((t.tPrefill - t.tAdmit) / 1000) : 0,
      tokensPerSecond: generated.length > 1 && t.tFirst ? (generated.length - 1) / ((tEnd - t.tFirst) / 1000) : 0,
      totalMs: tEnd - t.t0,
      finishReason,
      ...draft,
    };
    onEnd({ generated, evaluated, text, finishReason, ...(shifted && { shifted }) });
    emit({ text: "", tokenIds: [], stats });
    return { text, tokenIds: generated, ...(logprobs && { logprobs }), stats };
  }

  // Admission control: a generation starts only when the KV cache can hold its worst case
  // (prompt + maxTokens, capped by the context) on top of what running generations may still take.
  // Blocks held by cached prefixes are not free: when the request does not fit, other cached
  // prefixes are evicted (least recently used first) before it waits for running generations to
  // end; the prefix it would fork is evicted only when nothing is running, before failing. A request
  // that may start from a cached prefix is checked with the blocks the fork saves, and forked in the
  // same synchronous step, so nothing can evict the prefix in between.
  private async admit(plan: GenerationPlan, maxTokens: number, key: symbol, signal: AbortSignal): Promise<number> {
    const B = this.blockSize;
    const total = plan.cached + plan.prompt.length;
    for (;;) {
      if (this.disposed) throw new Llama2Error("ERR_DISPOSED", "the model has been disposed");
      if (signal.aborted) throw new Llama2Error("ERR_ABORTED", "aborted while waiting for the KV cache");
      // At least one prompt token must be evaluated: its output is the first sampled token.
      const match = plan.reuse && this.prefixes ? this.prefixes.match(plan.prompt, plan.prompt.length - 1) : null;
      const cached = match ? match.length : plan.cached;
      // One block of margin, but never more than a sequence can ever allocate: a full context less the
      // full cached blocks (a partial shared one is copied on write). Without that cap a request
      // needing the whole context could never run with maxSequences 1.
      const ceiling = Math.ceil(this.info.contextLength / B) - Math.floor(cached / B);
      const worst = Math.min(ceiling, Math.ceil(Math.min(this.info.contextLength, total + maxTokens) / B) - Math.ceil(cached / B) + 1);
      const kv = this.model.kvState();
      if (worst > kv.totalBlocks) {
        throw new Llama2Error("ERR_KV_CACHE_FULL", `this request may need ${worst * B} tokens of KV cache, more than the ${kv.totalBlocks * B} the model was loaded with`, {
          suggestion: "raise contextLength/maxSequences or lower maxTokens",
        });
      }
      let reserved = 0;
      for (const g of this.growth.values()) reserved += g;
      // Admitted generations (they hold reservations until they end) will free blocks.
      const running = this.growth.size > 0;
      if (kv.freeBlocks - Math.ceil(reserved) >= worst) {
        if (match) this.startFromPrefix(plan, match);
        else if (plan.reuse) this.prefixes?.miss();
        this.growth.set(key, worst);
        return worst;
      }
      if (this.prefixes) {
        // Other prefixes go first, unless even all of them would not make room while running
        // generations will free blocks anyway; the prefix this request forks goes last, only when
        // nothing else can free blocks.
        const hopeless = kv.freeBlocks + this.prefixes.blockBound(match?.entry) - Math.ceil(reserved) < worst;
        if (!(hopeless && running) && this.prefixes.evictLRU(match?.entry)) continue;
        if (!running && match && this.prefixes.evict(match.entry)) continue;
      }
      if (!running) {
        // Nothing running will free blocks: idle sessions give theirs up (their next turn re-prompts).
        if (this.parkIdleSession() || this.parkWaitingTurn(plan)) continue;
        throw new Llama2Error("ERR_KV_CACHE_FULL", "the KV cache is full and nothing holding it can be released; raise maxSequences or contextLength");
      }
      this.admitting.add(plan);
      try {
        await new Promise<void>((resolve) => {
          const wake = () => {
            signal.removeEventListener("abort", wake);
            const i = this.waiting.indexOf(wake);
            if (i >= 0) this.waiting.splice(i, 1);
            resolve();
          };
          this.waiting.push(wake);
          signal.addEventListener("abort", wake, { once: true });
        });
      } finally {
        this.admitting.delete(plan);
      }
    }
  }

  /** Replaces an empty plan sequence by a fork of the cached prefix `m`. */
  private startFromPrefix(plan: GenerationPlan, m: NonNullable<ReturnType<PrefixCache["match"]>>): void {
    const fork = this.prefixes!.fork(m);
    const empty = plan.seq;
    plan.seq = fork;
    plan.context = (plan.context ?? []).concat(plan.prompt.slice(0, m.length));
    plan.cached += m.length;
    plan.prompt = plan.prompt.slice(m.length);
    plan.reuse = false;
    try {
      this.model.freeSequence(empty);
    } catch {
      /* already gone */
    }
    plan.onSequence?.(fork);
  }

  private templateFor(name?: string): ChatTemplate {
    if (name === undefined || name === "auto") return this.chatTemplates.default;
    if (typeof name !== "string") throw new InvalidArgumentError("template", "expected a template name");
    if (name === MODEL_TEMPLATE) {
      if (!this.chatTemplates.model) throw new InvalidArgumentError("template", `${this.info.path} carries no working chat template${this.info.chatTemplateNote ? ` (${this.info.chatTemplateNote})` : ""}`);
      return this.chatTemplates.model;
    }
    return getChatTemplate(name);
  }

  private checkGenerateOptions(opts: GenerateOptions, allowed: Set<string>): void {
    if (typeof opts !== "object" || opts === null) throw new InvalidArgumentError("options", "expected an object");
    checkKeys(opts, allowed, "options");
    checkInt(opts.maxTokens, "maxTokens", 1, 1 << 20);
    checkInt(opts.logprobs, "logprobs", 0, 20);
    checkInt(opts.lookup, "lookup", 0, MAX_DRAFT_TOKENS);
    if (opts.contextShift !== undefined && typeof opts.contextShift !== "boolean") throw new InvalidArgumentError("contextShift", "expected a boolean");
    if (opts.draft !== undefined) this.checkDraft(opts);
    for (const k of ["stopOnEos", "addBos"] as const) {
      if (opts[k] !== undefined && typeof opts[k] !== "boolean") throw new InvalidArgumentError(k, "expected a boolean");
    }
    if (opts.signal !== undefined && !(opts.signal instanceof AbortSignal)) throw new InvalidArgumentError("signal", "expected an AbortSignal");
    new StopMatcher(opts.stop ?? []);
    Sampler.validate(opts, this.info.config.vocabSize);
    if (compileResponseFormat(opts.responseFormat) !== null && !this.tokenizer)
      throw new InvalidArgumentError("responseFormat", `constrained output needs a tokenizer, and ${this.info.path} has none: load it with tokenizerPath`);
  }

  private checkDraft(opts: GenerateOptions): void {
    const d = opts.draft as unknown;
    if (typeof d !== "object" || d === null) throw new InvalidArgumentError("draft", "expected { model, tokens }");
    checkKeys(d as object, new Set(["model", "tokens"]), "draft");
    const { model, tokens } = d as { model?: unknown; tokens?: unknown };
    if (!(model instanceof Llama2)) throw new InvalidArgumentError("draft.model", "expected a loaded Llama2 model");
    if (model === this) throw new InvalidArgumentError("draft.model", "is this model itself: a draft model must be a second, smaller model");
    if (!model._alive) throw new InvalidArgumentError("draft.model", "has been disposed");
    checkInt(tokens, "draft.tokens", 1, MAX_DRAFT_TOKENS);
    if (opts.lookup) throw new InvalidArgumentError("draft", "cannot be combined with lookup");
    const mismatch = draftMismatch(this.info, model.info);
    if (mismatch) throw new InvalidArgumentError("draft.model", mismatch);
  }

  /**
   * Greedy draft proposals from this model for another model's speculative decoding. It keeps one
   * sequence whose KV follows the history it is shown (truncated back to the part it shares), starting
   * from this model's prefix cache and handing the sequence back to it at the end (a chat's next turn, or
   * a request with the same system prompt, then skips what the draft model already evaluated). It gives
   * up for good (returning no drafts) on the first error: drafting is best effort.
   * @internal
   */
  _createDrafter(): Drafter {
    let seq: number | null = null;
    let held: number[] = []; // the tokens in seq's KV
    let broken = false;
    const close = (keep = true): void => {
      if (seq !== null && !this.disposed) {
        try {
          if (keep && this.prefixes && this.model.sequenceLength(seq) === held.length) this.prefixes.insert(seq, held);
          else this.model.freeSequence(seq);
        } catch {
          /* already gone */
        }
      }
      seq = null;
      held = [];
    };
    return {
      propose: async (history, max, signal) => {
        if (broken || max <= 0 || this.disposed) return [];
        try {
          if (seq === null) {
            const m = this.prefixes?.match(history, history.length - 1);
            seq = m ? this.prefixes!.fork(m) : this.model.createSequence();
            held = m ? history.slice(0, m.length) : [];
          }
          // At least one token is evaluated: its logits give the first draft.
          const keep = Math.min(commonPrefix(held, history), history.length - 1);
          if (keep < held.length) {
            this.model.truncateSequence(seq, keep);
            held.length = keep;
          }
          const out: number[] = [];
          let feed = history.slice(keep);
          while (out.length < max && held.length + feed.length <= this.info.contextLength) {
            // Cached prefixes (earlier drafting sequences among them) give way when the KV pool runs low:
            // nothing admits the drafter's steps, so it makes its own room.
            const need = Math.ceil(feed.length / this.blockSize) + 1;
            while (this.model.kvState().freeBlocks < need && this.prefixes?.evictLRU()) {
              /* evicted one */
            }
            const r = await this.scheduler.eval(seq, feed, 1, signal);
            held.push(...feed);
            const t = r && !(r instanceof Float32Array) ? r.ids[0] : undefined;
            if (t === undefined) throw new Llama2Error("ERR_INTERNAL", "the draft model gave no candidate");
            out.push(t);
            feed = [t];
          }
          return out;
        } catch {
          broken = true;
          close(false);
          return [];
        }
      },
      close: () => close(),
    };
  }

  private checkIds(ids: readonly unknown[], field: string): number[] {
    const V = this.info.config.vocabSize;
    ids.forEach((t, i) => {
      if (typeof t !== "number" || !Number.isInteger(t) || t < 0 || t >= V) {
        throw new InvalidArgumentError(`${field}[${i}]`, `token id ${showValue(t)} is out of range [0, ${V})`);
      }
    });
    return ids as number[];
  }

  private requireTokenizer(): Tokenizer {
    this.checkAlive();
    if (!this.tokenizer) {
      throw new Llama2Error("ERR_TOKENIZER", `${this.info.path} has no tokenizer (llama2.c files carry none): load it with one (tokenizerPath in the API, --tokenizer in the CLI), or use token ids`);
    }
    return this.tokenizer;
  }

  private checkAlive(): void {
    if (this.disposed) throw new Llama2Error("ERR_DISPOSED", "the model has been disposed");
  }
}
