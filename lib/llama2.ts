// The public model class: `await Llama2.load(path, opts)`, then generate / chat / sessions.
// Text <-> ids (tokenizer, chat template) and sampling happen here in TypeScript; each step of
// every active generation is batched by the Scheduler into one native forward pass.
import { existsSync } from "node:fs";
import path from "node:path";
import { getChatTemplate, type ChatTemplate } from "./chat-template.js";
import { Scheduler } from "./engine/scheduler.js";
import { InvalidArgumentError, Llama2Error, fromNative } from "./errors.js";
import { native, type NativeModel, type NativeModelInfo, type NativeStepOutput } from "./native.js";
import { Sampler } from "./sampler.js";
import { ChatSession } from "./session.js";
import { StopMatcher } from "./stop.js";
import { createGenerationStream } from "./stream.js";
import { Tokenizer } from "./tokenizer.js";
import type {
  ChatMessage,
  FinishReason,
  GenerateOptions,
  GenerationChunk,
  GenerationResult,
  GenerationStats,
  GenerationStream,
  LoadOptions,
  ModelInfo,
} from "./types.js";

export interface ChatOptions extends GenerateOptions {
  /** Chat template name (default "llama2"). */
  template?: string;
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
  onEnd?: (r: { generated: number[]; evaluated: number; text: string; finishReason: FinishReason; error?: unknown }) => void;
  /** Frees the sequence at the end (one-shot calls). */
  ownsSequence: boolean;
}

const LOAD_KEYS = new Set(["device", "deviceIndex", "dtype", "contextLength", "maxSequences", "threads", "tokenizerPath", "onProgress", "signal"]);
const GEN_KEYS = new Set([
  "maxTokens", "stop", "stopOnEos", "addBos", "signal", "temperature", "topK", "topP", "minP",
  "repetitionPenalty", "presencePenalty", "frequencyPenalty", "penaltyLastN", "logitBias", "seed", "template",
]);

function checkInt(v: unknown, field: string, min: number, max: number): number | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max) {
    throw new InvalidArgumentError(field, `expected an integer in [${min}, ${max}], got ${JSON.stringify(v)}`);
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
  /** Worst-case KV blocks each running generation may still allocate. */
  private readonly growth = new Map<symbol, number>();
  private disposed = false;
  private readonly blockSize: number;

  private constructor(model: NativeModel, info: ModelInfo, tokenizer: Tokenizer | null) {
    this.model = model;
    this.info = info;
    this.tokenizer = tokenizer;
    this.blockSize = model.info().kvBlockSize;
    const chunk = info.device === "cuda" ? 2048 : 512;
    this.scheduler = new Scheduler(model, { maxStepTokens: chunk, prefillChunk: chunk });
  }

  /** Loads a Hugging Face directory, a .gguf or a llama2.c .bin. */
  static async load(modelPath: string, options: LoadOptions = {}): Promise<Llama2> {
    if (typeof modelPath !== "string" || modelPath === "") throw new InvalidArgumentError("path", "expected a model path");
    if (typeof options !== "object" || options === null) throw new InvalidArgumentError("options", "expected an object");
    checkKeys(options, LOAD_KEYS, "options");
    const { device = "auto", dtype = "auto", signal, onProgress, tokenizerPath } = options;
    if (!["auto", "cpu", "cuda"].includes(device)) throw new InvalidArgumentError("device", `expected 'auto', 'cpu' or 'cuda', got ${JSON.stringify(device)}`);
    if (!["auto", "f32", "f16", "bf16", "int8"].includes(dtype)) throw new InvalidArgumentError("dtype", `expected auto, f32, f16, bf16 or int8, got ${JSON.stringify(dtype)}`);
    checkInt(options.deviceIndex, "deviceIndex", 0, 64);
    checkInt(options.contextLength, "contextLength", 1, 1 << 20);
    checkInt(options.maxSequences, "maxSequences", 1, 4096);
    checkInt(options.threads, "threads", 0, 1024);
    if (onProgress !== undefined && typeof onProgress !== "function") throw new InvalidArgumentError("onProgress", "expected a function");
    if (tokenizerPath !== undefined && typeof tokenizerPath !== "string") throw new InvalidArgumentError("tokenizerPath", "expected a path");
    if (signal !== undefined && !(signal instanceof AbortSignal)) throw new InvalidArgumentError("signal", "expected an AbortSignal");
    if (signal?.aborted) throw new Llama2Error("ERR_ABORTED", "loading was aborted");

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
          deviceIndex: options.deviceIndex ?? 0,
          contextLength: options.contextLength ?? 0,
          maxSequences: options.maxSequences ?? 4,
          threads: options.threads ?? 0,
        },
        onProgress
          ? (p) => {
              try {
                onProgress({ phase: p.phase as "weights", bytes: p.bytes, totalBytes: p.totalBytes, tensors: p.tensors, totalTensors: p.totalTensors });
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
      const ni = model.info();
      const tokenizer = await resolveTokenizer(ni, tokenizerPath);
      if (tokenizer && tokenizer.vocabSize !== ni.config.vocabSize) {
        throw new Llama2Error("ERR_TOKENIZER", `the tokenizer has ${tokenizer.vocabSize} pieces but the model's vocabulary is ${ni.config.vocabSize} (${tokenizer.source})`);
      }
      const info: ModelInfo = {
        path: ni.path,
        format: ni.format,
        config: ni.config,
        device: ni.device,
        deviceName: ni.deviceName,
        dtype: ni.dtype,
        fileDtype: ni.fileDtype,
        contextLength: ni.contextLength,
        maxSequences: ni.maxSequences,
        weightBytes: ni.weightBytes,
        kvCacheBytes: ni.kvCacheBytes,
        hasTokenizer: tokenizer !== null,
        bosId: tokenizer?.bosId ?? ni.tokenizer?.bosId ?? 1,
        eosId: tokenizer?.eosId ?? ni.tokenizer?.eosId ?? 2,
      };
      return new Llama2(model, info, tokenizer);
    } catch (err) {
      model.dispose();
      throw err;
    }
  }

  /** Text -> token ids (no BOS unless asked). */
  tokenize(text: string, opts: { bos?: boolean; eos?: boolean } = {}): number[] {
    return this.requireTokenizer().encode(text, opts);
  }

  /** Token ids -> text, exactly as SentencePiece decodes. */
  detokenize(ids: readonly number[]): string {
    return this.requireTokenizer().decode(ids);
  }

  /** Requests running or waiting. */
  get pending(): number {
    return this.active.size + this.waiting.length;
  }

  /** GPU memory used by this model, bytes (undefined on the CPU). */
  deviceMemoryBytes(): number | undefined {
    if (this.disposed || this.info.device !== "cuda") return undefined;
    return this.model.info().deviceMemoryUsed;
  }

  /** Live figures: KV blocks and scheduler counters. */
  stats(): { kv: { freeBlocks: number; totalBlocks: number; blockSize: number }; scheduler: Scheduler["stats"]; queueDepth: number } {
    this.checkAlive();
    return { kv: this.model.kvState(), scheduler: { ...this.scheduler.stats }, queueDepth: this.scheduler.depth };
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
    return this.runOneShot(ids, opts, false);
  }

  /** Chat completion with the model's chat template (Llama 2's by default). */
  chat(messages: readonly ChatMessage[], opts: ChatOptions = {}): GenerationStream {
    this.checkAlive();
    this.checkGenerateOptions(opts, GEN_KEYS);
    const template = this.templateFor(opts.template);
    const ids = template.encodeDialog(messages as ChatMessage[], this.requireTokenizer());
    const stop = [...(opts.stop ?? []), ...(template.stopStrings ?? [])];
    return this.runOneShot(ids, { ...opts, stop }, true);
  }

  /** Prompt tokens a chat request would use (the dialog through the chat template). */
  chatPromptTokens(messages: readonly ChatMessage[], template?: string): number {
    return this.templateFor(template).encodeDialog(messages as ChatMessage[], this.requireTokenizer()).length;
  }

  /** A conversation that keeps its KV cache between turns. */
  createSession(opts: { systemPrompt?: string; template?: string } = {}): ChatSession {
    this.checkAlive();
    return new ChatSession(this, this.templateFor(opts.template), opts.systemPrompt);
  }

  /** Aborts running generations, rejects queued ones and frees the model (GPU memory included). */
  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    for (const c of this.active) c.abort();
    this.scheduler.close();
    for (const w of this.waiting.splice(0)) w();
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

  private runOneShot(ids: number[], opts: GenerateOptions, isChat: boolean): GenerationStream {
    return createGenerationStream(async (emit, signal) => {
      const seq = this.model.createSequence();
      const plan: GenerationPlan = { seq, prompt: ids, cached: 0, history: ids, stripLeadingSpace: isChat, ownsSequence: true };
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
    const ctx = this.info.contextLength;
    const generated: number[] = [];
    let evaluated = 0; // prompt tokens that made it into the cache
    let finishReason: FinishReason = "length";
    const controller = new AbortController();
    const onAbort = () => controller.abort();
    signal.addEventListener("abort", onAbort, { once: true });
    const key = Symbol("generation");
    let streamed = "";
    const push = (c: GenerationChunk) => {
      streamed += c.text;
      emit(c);
    };
    // KV blocks this generation may still allocate, given how long its sequence is now.
    let worst = 0;
    const have = Math.ceil(plan.cached / this.blockSize);
    const grew = (len: number) => this.growth.set(key, Math.max(0, worst - (Math.ceil(len / this.blockSize) - have)));
    try {
      if (plan.cached + plan.prompt.length > ctx) {
        throw new Llama2Error("ERR_CONTEXT_OVERFLOW", `the prompt needs ${plan.cached + plan.prompt.length} tokens but the context length is ${ctx}`);
      }
      const sampler = new Sampler(opts, this.info.config.vocabSize);
      const needs = sampler.needs;
      const output = needs.fullLogits ? -1 : needs.candidates;
      const stopOnEos = opts.stopOnEos ?? true;
      const room = ctx - plan.cached - plan.prompt.length;
      const maxTokens = Math.min(opts.maxTokens ?? Infinity, room + 1);
      const decoder = this.tokenizer?.createStreamDecoder({ stripLeadingSpace: plan.stripLeadingSpace });
      const stop = new StopMatcher(opts.stop ?? []);
      const history = plan.history.slice();
      const eos = this.info.eosId;

      worst = await this.admit(plan, maxTokens, key, controller.signal);
      this.active.add(controller);
      const tAdmit = performance.now();
      let out: NativeStepOutput;
      try {
        out = await this.scheduler.eval(plan.seq, plan.prompt, output, controller.signal);
      } catch (err) {
        if (controller.signal.aborted) {
          evaluated = this.model.sequenceLength(plan.seq) - plan.cached;
          finishReason = "abort";
          return this.finish(push, streamed, plan, generated, evaluated, finishReason, { t0, tAdmit, tPrefill: performance.now(), tFirst: 0 });
        }
        throw err;
      }
      evaluated = plan.prompt.length;
      grew(plan.cached + evaluated);
      const tPrefill = performance.now();
      let tFirst = 0;
      for (;;) {
        if (controller.signal.aborted) {
          finishReason = "abort";
          break;
        }
        const tok = sampler.sample(out!, history);
        if (tFirst === 0) tFirst = performance.now();
        if (tok === eos && stopOnEos) {
          finishReason = "stop";
          break;
        }
        generated.push(tok);
        history.push(tok);
        const piece = decoder ? decoder.push(tok) : "";
        const r = stop.push(piece);
        push({ text: r.text, tokenIds: [tok] });
        if (r.stopped) {
          finishReason = "stopSequence";
          break;
        }
        if (generated.length >= maxTokens || plan.cached + evaluated + generated.length >= ctx) {
          finishReason = "length";
          break;
        }
        out = await this.scheduler.eval(plan.seq, [tok], output, controller.signal).catch((err) => {
          if (controller.signal.aborted) return null;
          throw err;
        });
        if (out === null) {
          finishReason = "abort";
          break;
        }
        grew(plan.cached + evaluated + generated.length);
      }
      if (finishReason !== "stopSequence") {
        const tail = stop.push(decoder ? decoder.flush() : "").text + stop.flush();
        if (tail) push({ text: tail, tokenIds: [] });
      }
      return this.finish(push, streamed, plan, generated, evaluated, finishReason, { t0, tAdmit, tPrefill, tFirst });
    } catch (err) {
      const e = err instanceof Llama2Error ? err : fromNative(err);
      plan.onEnd?.({ generated, evaluated, text: streamed, finishReason: "abort", error: e });
      throw e;
    } finally {
      signal.removeEventListener("abort", onAbort);
      this.active.delete(controller);
      this.growth.delete(key);
      if (plan.ownsSequence && !this.disposed) {
        try {
          this.model.freeSequence(plan.seq);
        } catch {
          /* already gone */
        }
      }
      this.waiting.shift()?.();
    }
  }

  private finish(
    emit: (c: GenerationChunk) => void,
    text: string,
    plan: GenerationPlan,
    generated: number[],
    evaluated: number,
    finishReason: FinishReason,
    t: { t0: number; tAdmit: number; tPrefill: number; tFirst: number },
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
    };
    plan.onEnd?.({ generated, evaluated, text, finishReason });
    emit({ text: "", tokenIds: [], stats });
    return { text, tokenIds: generated, stats };
  }

  // Admission control: a generation starts only when the KV cache can hold its worst case
  // (prompt + maxTokens, capped by the context) on top of what running generations may still take.
  private async admit(plan: GenerationPlan, maxTokens: number, key: symbol, signal: AbortSignal): Promise<number> {
    const B = this.blockSize;
    const have = Math.ceil(plan.cached / B);
    const worst = Math.ceil(Math.min(this.info.contextLength, plan.cached + plan.prompt.length + maxTokens) / B) - have + 1;
    for (;;) {
      if (this.disposed) throw new Llama2Error("ERR_DISPOSED", "the model has been disposed");
      if (signal.aborted) throw new Llama2Error("ERR_ABORTED", "aborted while waiting for the KV cache");
      const kv = this.model.kvState();
      if (worst > kv.totalBlocks) {
        throw new Llama2Error("ERR_KV_CACHE_FULL", `this request may need ${worst * B} tokens of KV cache, more than the ${kv.totalBlocks * B} the model was loaded with`, {
          suggestion: "raise contextLength/maxSequences or lower maxTokens",
        });
      }
      let reserved = 0;
      for (const g of this.growth.values()) reserved += g;
      if (kv.freeBlocks - Math.ceil(reserved) >= worst) {
        this.growth.set(key, worst);
        return worst;
      }
      if (this.active.size === 0) {
        throw new Llama2Error("ERR_KV_CACHE_FULL", "the KV cache is held by idle sessions; dispose sessions or raise maxSequences");
      }
      await new Promise<void>((resolve) => {
        const wake = () => {
          signal.removeEventListener("abort", wake);
          resolve();
        };
        this.waiting.push(wake);
        signal.addEventListener("abort", wake, { once: true });
      });
    }
  }

  private templateFor(name?: string): ChatTemplate {
    if (name !== undefined && typeof name !== "string") throw new InvalidArgumentError("template", "expected a template name");
    return getChatTemplate(name);
  }

  private checkGenerateOptions(opts: GenerateOptions, allowed: Set<string>): void {
    if (typeof opts !== "object" || opts === null) throw new InvalidArgumentError("options", "expected an object");
    checkKeys(opts, allowed, "options");
    checkInt(opts.maxTokens, "maxTokens", 1, 1 << 20);
    for (const k of ["stopOnEos", "addBos"] as const) {
      if (opts[k] !== undefined && typeof opts[k] !== "boolean") throw new InvalidArgumentError(k, "expected a boolean");
    }
    if (opts.signal !== undefined && !(opts.signal instanceof AbortSignal)) throw new InvalidArgumentError("signal", "expected an AbortSignal");
    new StopMatcher(opts.stop ?? []);
    Sampler.validate(opts, this.info.config.vocabSize);
  }

  private checkIds(ids: readonly unknown[], field: string): number[] {
    const V = this.info.config.vocabSize;
    ids.forEach((t, i) => {
      if (typeof t !== "number" || !Number.isInteger(t) || t < 0 || t >= V) {
        throw new InvalidArgumentError(`${field}[${i}]`, `token id ${JSON.stringify(t)} is out of range [0, ${V})`);
      }
    });
    return ids as number[];
  }

  private requireTokenizer(): Tokenizer {
    this.checkAlive();
    if (!this.tokenizer) {
      throw new Llama2Error("ERR_TOKENIZER", `${this.info.path} has no tokenizer: pass tokenizerPath when loading, or use token ids`);
    }
    return this.tokenizer;
  }

  private checkAlive(): void {
    if (this.disposed) throw new Llama2Error("ERR_DISPOSED", "the model has been disposed");
  }
}

/** The model's tokenizer: an explicit file, the GGUF's metadata, the HF directory's tokenizer.model,
 * or a tokenizer.model beside a llama2.c file. */
async function resolveTokenizer(info: NativeModelInfo, explicit?: string): Promise<Tokenizer | null> {
  if (explicit) return Tokenizer.fromFile(explicit);
  if (info.tokenizer) {
    const t = info.tokenizer;
    if (t.model !== "llama") {
      throw new Llama2Error("ERR_TOKENIZER", `${info.path}: tokenizer model '${t.model}' is not supported (only SentencePiece 'llama')`);
    }
    return Tokenizer.fromVocabulary(
      { tokens: t.tokens, scores: t.scores, types: t.types, unkId: t.unkId, bosId: t.bosId, eosId: t.eosId, padId: t.padId },
      `${info.path} (GGUF metadata)`,
    );
  }
  if (info.tokenizerPath) return Tokenizer.fromFile(info.tokenizerPath);
  const beside = path.join(path.dirname(info.path), "tokenizer.model");
  if (info.format === "llama2c" && existsSync(beside)) {
    const tok = await Tokenizer.fromFile(beside);
    return tok.vocabSize === info.config.vocabSize ? tok : null;
  }
  return null;
}

