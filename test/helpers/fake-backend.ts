// A deterministic stand-in for Llama2 (the ChatBackend surface): streams word "tokens" with a
// configurable delay, honours maxTokens / stop / abort (within one token), reports stats, and records
// every call so tests can see what the server asked for and whether it was aborted.
import { setTimeout as sleep } from "node:timers/promises";
import { Llama2Error } from "../../lib/errors.js";
import type { EmbedOptions, EmbedResult } from "../../lib/llama2.js";
import type { ChatBackend } from "../../lib/server/backend.js";
import type {
  ChatMessage, FinishReason, GenerateOptions, GenerationChunk, GenerationResult, GenerationStream, ModelInfo,
} from "../../lib/types.js";

export interface FakeOptions {
  /** Delay before each token, ms (default 1). */
  delayMs?: number;
  contextLength?: number;
  /** Reply with exactly this many tokens ("w0 w1 ..."); default: an echo of the input's last line. */
  replyTokens?: number;
  /** Reply with this text, streamed 5 characters per token (overrides replyTokens and the echo). */
  replyText?: string;
  /** Inputs containing "slow" use this delay per token and replyTokens=slowTokens (for stop/cut tests). */
  slowDelayMs?: number;
  slowTokens?: number;
  /** How an abort ends the stream: a last chunk with finishReason "abort", or a thrown ERR_ABORTED. */
  abortMode?: "finish" | "throw";
  deviceMemoryBytes?: number;
  /** false: a backend without embed() (no /v1/embeddings). */
  embed?: boolean;
}

export interface FakeEmbedCall {
  input: string | readonly number[];
  opts: EmbedOptions;
  aborted: boolean;
  finished: boolean;
}

export interface FakeCall {
  kind: "chat" | "generate";
  input: string;
  messages?: ChatMessage[];
  opts: GenerateOptions;
  tokens: number;
  aborted: boolean;
  finished: boolean;
  finishReason?: FinishReason;
}

const BOS = 1;
const EOS = 2;

/** The reply the fake gives to an input without replyTokens: deterministic, so tests can compare text. */
export function echoReply(input: string): string[] {
  const last = input.trim().split("\n").pop() ?? "";
  return ["Echo:", ...last.split(/\s+/).filter(Boolean).slice(0, 8), "(fake", "model)"];
}

export class FakeBackend implements ChatBackend {
  readonly info: ModelInfo;
  readonly calls: FakeCall[] = [];
  readonly embedCalls: FakeEmbedCall[] = [];
  /**
   * fakeEmbedding() of the input's tokens (text: tokenize() with BOS), after a delay (inputs with "slow":
   * slowDelayMs x 20); as Llama2.embed(), ERR_CONTEXT_OVERFLOW past the context and ERR_ABORTED on abort.
   */
  readonly embed?: (input: string | readonly number[], opts?: EmbedOptions) => Promise<EmbedResult>;
  disposed = false;
  maxActive = 0;
  private active = 0;

  constructor(readonly opts: FakeOptions = {}) {
    this.info = {
      path: "/models/fake-7b.gguf",
      format: "gguf",
      config: {
        dim: 64, nLayers: 2, nHeads: 4, nKvHeads: 4, headDim: 16, ffnDim: 128, vocabSize: 32000, rmsEps: 1e-5, ropeTheta: 10000,
        trainedContextLength: 4096, ropeLayout: "halves", tiedEmbeddings: false,
      },
      device: opts.deviceMemoryBytes !== undefined ? "cuda" : "cpu",
      deviceName: opts.deviceMemoryBytes !== undefined ? "Fake GPU" : "CPU (fake)",
      dtype: "f16",
      kvCacheType: "f16",
      fileDtype: "f16",
      contextLength: opts.contextLength ?? 512,
      maxSequences: 4,
      weightBytes: 1000,
      kvCacheBytes: 100,
      hasTokenizer: true,
      bosId: BOS,
      eosId: EOS,
      chatTemplate: "llama2",
    };
    if (opts.embed !== false) this.embed = (input, o = {}) => this.fakeEmbed(input, o);
  }

  private async fakeEmbed(input: string | readonly number[], opts: EmbedOptions): Promise<EmbedResult> {
    this.check();
    const call: FakeEmbedCall = { input, opts, aborted: false, finished: false };
    this.embedCalls.push(call);
    this.active++;
    this.maxActive = Math.max(this.maxActive, this.active);
    const t0 = performance.now();
    try {
      const ids = typeof input === "string" ? this.tokenize(input, { bos: opts.addBos ?? true }) : [...input];
      if (ids.length > this.info.contextLength) throw new Llama2Error("ERR_CONTEXT_OVERFLOW", `the text is ${ids.length} tokens but the context length is ${this.info.contextLength}`);
      const slow = typeof input === "string" && input.includes("slow");
      try {
        await sleep(slow ? (this.opts.slowDelayMs ?? 50) * 20 : (this.opts.delayMs ?? 1), undefined, opts.signal && { signal: opts.signal });
      } catch {
        call.aborted = true;
        throw new Llama2Error("ERR_ABORTED", "aborted");
      }
      if (typeof input === "string" && input.includes("FAIL")) throw new Llama2Error("ERR_CUDA", "simulated device failure");
      return { embedding: fakeEmbedding(ids, this.info.config.dim, opts), tokenCount: ids.length, totalMs: performance.now() - t0 };
    } finally {
      this.active--;
      call.finished = true;
    }
  }

  get pending(): number {
    return this.active;
  }

  deviceMemoryBytes(): number | undefined {
    return this.opts.deviceMemoryBytes;
  }

  tokenize(text: string, opts: { bos?: boolean; special?: boolean } = {}): number[] {
    const ids = text.split(/\s+/).filter(Boolean).map((w) => 3 + (hash(w) % 31000));
    return opts.bos === false ? ids : [BOS, ...ids];
  }

  chatPromptTokens(messages: ChatMessage[]): number {
    return 1 + messages.reduce((n, m) => n + this.tokenize(m.content, { bos: false }).length + 4, 0);
  }

  chat(messages: ChatMessage[], opts: GenerateOptions = {}): GenerationStream {
    this.check();
    return this.stream({ kind: "chat", input: messages.map((m) => m.content).join("\n"), messages, opts, tokens: 0, aborted: false, finished: false });
  }

  generate(prompt: string | readonly number[], opts: GenerateOptions = {}): GenerationStream {
    this.check();
    // Token ids read as words "t<id>" (the fake's tokenize() of them is a different id: it never round-trips).
    const input = typeof prompt === "string" ? prompt : prompt.map((id) => `t${id}`).join(" ");
    return this.stream({ kind: "generate", input, opts, tokens: 0, aborted: false, finished: false });
  }

  async dispose(): Promise<void> {
    this.disposed = true;
  }

  private check(): void {
    if (this.disposed) throw new Llama2Error("ERR_DISPOSED", "model disposed");
  }

  private stream(call: FakeCall): GenerationStream {
    this.calls.push(call);
    this.active++;
    this.maxActive = Math.max(this.maxActive, this.active);
    const ctl = new AbortController();
    const signal = call.opts.signal ? AbortSignal.any([call.opts.signal, ctl.signal]) : ctl.signal;
    const chunks: GenerationChunk[] = [];
    let wake: (() => void) | undefined;
    let ended = false;
    let error: unknown;
    const push = (c: GenerationChunk): void => {
      chunks.push(c);
      wake?.();
    };
    const result = this.produce(call, signal, push).finally(() => {
      this.active--;
      call.finished = true;
    });
    result.then(
      () => { ended = true; wake?.(); },
      (err: unknown) => { ended = true; error = err; wake?.(); },
    );
    return {
      result,
      abort: () => ctl.abort(),
      async *[Symbol.asyncIterator]() {
        for (let i = 0; ; ) {
          if (i < chunks.length) yield chunks[i++]!;
          else if (ended) {
            if (error) throw error;
            return;
          } else await new Promise<void>((r) => (wake = r));
        }
      },
    };
  }

  private async produce(call: FakeCall, signal: AbortSignal, push: (c: GenerationChunk) => void): Promise<GenerationResult> {
    const t0 = performance.now();
    const slow = call.input.includes("slow");
    const n = slow ? (this.opts.slowTokens ?? 10_000) : this.opts.replyTokens;
    const text0 = slow ? undefined : this.opts.replyText;
    const words = text0 !== undefined ? (text0.match(/[\s\S]{1,5}/g) ?? []) : n !== undefined ? Array.from({ length: n }, (_, i) => `w${i}`) : echoReply(call.input);
    const delay = slow ? (this.opts.slowDelayMs ?? 50) : (this.opts.delayMs ?? 1);
    const max = call.opts.maxTokens ?? Infinity;
    const promptTokens = call.messages ? this.chatPromptTokens(call.messages) : this.tokenize(call.input).length;
    let text = "";
    const ids: number[] = [];
    let firstMs = 0;
    let finish: FinishReason = "stop";
    for (let i = 0; ; i++) {
      if (i >= words.length) break;
      if (i >= max) {
        finish = "length";
        break;
      }
      try {
        await sleep(delay, undefined, { signal });
      } catch {
        finish = "abort";
        break;
      }
      if (call.input.includes("FAIL") && i === 1) throw new Llama2Error("ERR_CUDA", "simulated device failure");
      let piece = (i && text0 === undefined ? " " : "") + words[i];
      const stopAt = (call.opts.stop ?? []).map((s) => (text + piece).indexOf(s)).filter((p) => p >= 0).sort((a, b) => a - b)[0];
      if (stopAt !== undefined) {
        piece = (text + piece).slice(text.length, stopAt);
        finish = "stopSequence";
      }
      const id = 3 + (hash(words[i]!) % 31000);
      if (i === 0) firstMs = performance.now() - t0;
      text += piece;
      ids.push(id);
      call.tokens++;
      push({ text: piece, tokenIds: [id] });
      if (finish === "stopSequence") break;
    }
    if (finish === "abort") {
      call.aborted = true;
      if (this.opts.abortMode === "throw") throw new Llama2Error("ERR_ABORTED", "generation aborted");
    }
    call.finishReason = finish;
    const totalMs = performance.now() - t0;
    const stats = {
      promptTokens,
      cachedPromptTokens: 0,
      completionTokens: ids.length,
      timeToFirstTokenMs: firstMs,
      promptTokensPerSecond: 1000,
      tokensPerSecond: ids.length > 1 ? (ids.length - 1) / ((totalMs - firstMs) / 1000 || 1e-3) : 0,
      totalMs,
      finishReason: finish,
    };
    push({ text: "", tokenIds: [], stats });
    return { text, tokenIds: ids, stats };
  }
}

/**
 * The fake's embedding of token ids: a fixed pseudo-random vector per id, pooled as Llama2.embed() pools
 * (mean without a leading BOS, or the last), L2-normalized unless normalize: false.
 */
export function fakeEmbedding(ids: readonly number[], dim: number, opts: EmbedOptions = {}): Float32Array {
  const pooled = opts.pooling === "last" ? ids.slice(-1) : ids.length > 1 && ids[0] === BOS ? ids.slice(1) : ids;
  const v = new Float32Array(dim);
  for (const id of pooled) for (let k = 0; k < dim; k++) v[k]! += Math.sin(id * 0.618 + k * 1.3) / pooled.length;
  if (opts.normalize ?? true) {
    const norm = Math.hypot(...v);
    v.forEach((x, k) => (v[k] = x / norm));
  }
  return v;
}

function hash(s: string): number {
  let h = 2166136261;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 16777619);
  return h >>> 0;
}

// ---- small HTTP client helpers for the server tests ----

export interface SseResult {
  status: number;
  headers: Headers;
  /** Parsed `data:` payloads, without the final [DONE]. */
  events: any[];
  done: boolean;
}

export async function postJson(url: string, body: unknown, headers: Record<string, string> = {}): Promise<Response> {
  return fetch(url, {
    method: "POST",
    headers: { "Content-Type": "application/json", ...headers },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
}

/** Reads a whole SSE response. */
export async function readSse(res: Response): Promise<SseResult> {
  const text = await res.text();
  const events: any[] = [];
  let done = false;
  for (const block of text.split("\n\n")) {
    const line = block.trim();
    if (!line) continue;
    if (!line.startsWith("data: ")) throw new Error(`not an SSE data line: ${line}`);
    const data = line.slice(6);
    if (data === "[DONE]") done = true;
    else events.push(JSON.parse(data));
  }
  return { status: res.status, headers: res.headers, events, done };
}

/** The streamed text of chat or completion chunks. */
export function streamedText(events: any[]): string {
  return events.map((e) => e.choices?.[0]?.delta?.content ?? e.choices?.[0]?.text ?? "").join("");
}

export async function waitFor(cond: () => boolean, timeoutMs = 5000, what = "condition"): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}
