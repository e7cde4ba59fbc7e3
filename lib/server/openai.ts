// The OpenAI-compatible generation endpoints: request -> backend stream -> JSON or server-sent events.
import { randomBytes } from "node:crypto";
import type { ServerResponse } from "node:http";
import { fromNative, InvalidArgumentError, Llama2Error } from "../errors.js";
import type { FinishReason, GenerateOptions, GenerationStats, GenerationStream, TokenLogprob, TokenLogprobAlternative } from "../types.js";
import { countChatTokens, type ChatBackend } from "./backend.js";
import { parseToolReply } from "./tools.js";
import { ContextLengthError, parseChatRequest, parseCompletionRequest, resolveMaxTokens, type ParsedRequest, type PromptInput } from "./validate.js";

/** An error with an HTTP status and OpenAI's error fields. */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly type = status === 401 ? "authentication_error" : status >= 500 ? "server_error" : "invalid_request_error",
    readonly code: string | null = null,
    readonly param: string | null = null,
  ) {
    super(message);
  }
}

export function errorBody(e: HttpError): string {
  return JSON.stringify({ error: { message: e.message, type: e.type, param: e.param, code: e.code } });
}

/** Any thrown value -> the HttpError to answer with. */
export function toHttpError(err: unknown): HttpError {
  if (err instanceof HttpError) return err;
  if (err instanceof ContextLengthError) return new HttpError(400, err.message, undefined, err.apiCode, err.field);
  if (err instanceof InvalidArgumentError) return new HttpError(400, err.message, undefined, "invalid_value", err.field);
  const e = err instanceof Llama2Error ? err : fromNative(err);
  switch (e.code) {
    case "ERR_CONTEXT_OVERFLOW":
      return new HttpError(400, e.message, undefined, "context_length_exceeded");
    case "ERR_KV_CACHE_FULL":
    case "ERR_OUT_OF_MEMORY":
      return new HttpError(503, `the model is overloaded, retry later (${e.message})`, undefined, "overloaded");
    case "ERR_TOKENIZER":
      return new HttpError(400, e.message, undefined, "no_tokenizer");
    case "ERR_DISPOSED":
      return new HttpError(503, "the model has been unloaded", undefined, "model_unloaded");
    default:
      return new HttpError(500, `${e.code}: ${e.message}`, undefined, "internal_error");
  }
}

/** What the HTTP layer needs to serve one generation request. */
export interface GenerationContext {
  backend: ChatBackend;
  modelId: string;
  res: ServerResponse;
  /** Aborted when the client goes away or the server cuts the request. */
  signal: AbortSignal;
  /** Why the server cut this request (release/cancel), if it did. */
  cutReason(): { message: string; code: string } | undefined;
}

export interface GenerationOutcome {
  stream: boolean;
  promptTokens: number;
  completionTokens: number;
  ttftMs?: number;
  tokensPerSecond?: number;
  finishReason?: string;
  /** Status to record (499: the client went away). */
  status: number;
}

const SSE_HEADERS = {
  "Content-Type": "text/event-stream; charset=utf-8",
  "Cache-Control": "no-cache, no-transform",
  Connection: "keep-alive",
  // Tells proxies such as nginx not to buffer the stream.
  "X-Accel-Buffering": "no",
};

function openaiFinish(r: FinishReason): "stop" | "length" {
  return r === "length" || r === "abort" ? "length" : "stop";
}

/** Writes respecting back-pressure; resolves early if the client is gone. */
function send(res: ServerResponse, data: string): Promise<void> {
  if (res.destroyed || res.writableEnded) return Promise.resolve();
  if (res.write(data)) return Promise.resolve();
  return new Promise((resolve) => {
    const done = (): void => {
      res.off("drain", done);
      res.off("close", done);
      resolve();
    };
    res.once("drain", done);
    res.once("close", done);
  });
}

const sse = (v: unknown): string => `data: ${JSON.stringify(v)}\n\n`;

export function sendJson(res: ServerResponse, status: number, value: unknown, headers: Record<string, string> = {}): void {
  if (res.headersSent || res.destroyed) return;
  const body = JSON.stringify(value);
  res.writeHead(status, { "Content-Type": "application/json; charset=utf-8", "Content-Length": Buffer.byteLength(body), ...headers });
  res.end(body);
}

export async function chatCompletions(ctx: GenerationContext, body: unknown): Promise<GenerationOutcome> {
  const { backend } = ctx;
  const req = parseChatRequest(body, backend.info.config.vocabSize);
  const tokens = countChatTokens(backend, req.messages);
  const maxTokens = resolveMaxTokens(req.maxTokens, tokens, backend.info.contextLength, "messages", req.maxTokensField, req.options.contextShift);
  return serve(ctx, "chat", req, [{ tokens, maxTokens, start: (opts) => backend.chat(req.messages, opts) }], req.tools !== undefined);
}

/** The legacy endpoint: one prompt or a batch (choice index = prompt index x n + k), optionally echoed. */
export async function completions(ctx: GenerationContext, body: unknown): Promise<GenerationOutcome> {
  const { backend } = ctx;
  const req = parseCompletionRequest(body, backend.info.config.vocabSize);
  const contextLength = backend.info.contextLength;
  const batch = req.prompts.length > 1;
  const suffix = req.suffix;
  if (suffix !== undefined && (!backend.infill || !backend.infillPrompt || !backend.info.fimTokens)) {
    throw new HttpError(400, "suffix (fill in the middle) needs a model trained for it (Code Llama 7B / 13B); this one has no ▁<PRE> / ▁<SUF> / ▁<MID> / ▁<EOT> pieces", undefined, "invalid_value", "suffix");
  }
  const prompts = req.prompts.map((input, i) => {
    const field = batch ? `prompt[${i}]` : "prompt";
    const ids = suffix !== undefined ? backend.infillPrompt!(input as string, suffix) : typeof input === "string" ? backend.tokenize(input, { bos: true }) : input;
    if (req.maxTokens === 0 && ids.length > contextLength)
      throw new ContextLengthError(field, `the prompt is ${ids.length} tokens; the model's context is ${contextLength} tokens`);
    const maxTokens = req.maxTokens === 0 ? 0 : resolveMaxTokens(req.maxTokens, ids.length, contextLength, field, req.maxTokensField, req.options.contextShift);
    return { input, ids, maxTokens };
  });
  // Echo's prompt log-probabilities come from scoring each prompt once (before any header is sent, so
  // that a failure is a plain HTTP error); the scored KV stays in the prefix cache for the generation.
  const echoes = req.echo ? await scoreEchoes(ctx, prompts.map((p) => p.ids), req.options.logprobs) : [];
  return serve(
    ctx,
    "text",
    req,
    prompts.map((p, i) => ({
      tokens: p.ids.length,
      maxTokens: p.maxTokens,
      ...(p.maxTokens > 0 && {
        start: (opts: GenerateOptions) => (suffix !== undefined ? backend.infill!(p.input as string, suffix, opts) : backend.generate(p.input as PromptInput, opts)),
      }),
      ...(echoes[i] && { echo: echoes[i] }),
    })),
  );
}

/** One prompt token as echoed with logprobs (the first has none: nothing predicts it). */
interface EchoEntry {
  token: string;
  logprob: number | null;
  top: TokenLogprobAlternative[] | null;
  offset: number;
}

/** A prompt echoed before its completion: its text, and its tokens when logprobs were asked for. */
interface Echo {
  text: string;
  entries: EchoEntry[] | null;
}

async function scoreEchoes(ctx: GenerationContext, prompts: number[][], top: number | undefined): Promise<Echo[]> {
  const { backend } = ctx;
  const tokenizer = backend.tokenizer;
  if (!tokenizer) throw new HttpError(400, "echo needs the model's tokenizer (this model has none)", undefined, "invalid_value", "echo");
  const score = backend.score?.bind(backend);
  if (top !== undefined && !score) throw new HttpError(400, "echo with logprobs is not supported by this backend", undefined, "invalid_value", "echo");
  // One prompt failing (or the client going away) stops the others.
  const stop = new AbortController();
  const signal = AbortSignal.any([ctx.signal, stop.signal]);
  try {
    return await Promise.all(
      prompts.map(async (ids): Promise<Echo> => {
        // Offsets are where each token's text starts in the decoded prompt (SentencePiece's decode,
        // which gives back the text a prompt string was encoded from).
        const decoder = tokenizer.createStreamDecoder({ stripLeadingSpace: true });
        const offsets: number[] = [];
        let text = "";
        for (const id of ids) {
          offsets.push(text.length);
          text += decoder.push(id);
        }
        text += decoder.flush();
        if (top === undefined) return { text, entries: null };
        const scored = ids.length >= 2 ? await score!(ids, { topLogprobs: top, signal, keepPrefix: true }) : undefined;
        const firstDecoder = tokenizer.createStreamDecoder({ stripLeadingSpace: false });
        const first: EchoEntry = { token: firstDecoder.push(ids[0]!) + firstDecoder.flush(), logprob: null, top: null, offset: 0 };
        const rest = (scored?.tokens ?? []).map((t, k): EchoEntry => ({ token: t.token, logprob: t.logprob, top: t.top, offset: offsets[k + 1]! }));
        return { text, entries: [first, ...rest] };
      }),
    );
  } catch (err) {
    stop.abort();
    const cut = ctx.cutReason();
    if (cut) throw new HttpError(503, `generation cut: ${cut.message}`, "server_error", cut.code);
    if (ctx.signal.aborted) throw new HttpError(499, "the client went away", undefined, "client_disconnected");
    throw err;
  }
}

/** One prompt of a request: its n choices are generated from `start` (none when maxTokens is 0). */
interface PromptJob {
  /** Its length in tokens (usage, unless the generation reports it). */
  tokens: number;
  maxTokens: number;
  start?: (opts: GenerateOptions) => GenerationStream;
  echo?: Echo;
}

async function serve(
  ctx: GenerationContext,
  kind: "chat" | "text",
  req: ParsedRequest,
  jobs: PromptJob[],
  /** The reply is tools.ts's JSON, turned into content or tool_calls at the end (streamed as one delta). */
  toolReply = false,
): Promise<GenerationOutcome> {
  const { res, signal } = ctx;
  const t0 = performance.now();
  // n choices are n generations of the same prompt, batched together by the engine (the prefix cache
  // shares the prompt); with a seed, choice k uses seed + k so that they differ.
  const seed = req.options.seed;
  const n = req.n;
  const streams: (GenerationStream | undefined)[] = [];
  try {
    for (const job of jobs) {
      for (let k = 0; k < n; k++) {
        const opts = { ...req.options, ...(seed !== undefined && { seed: seed + k }), maxTokens: job.maxTokens, ...(req.stop && { stop: req.stop }), signal };
        streams.push(job.start?.(opts));
      }
    }
  } catch (err) {
    for (const s of streams) s?.abort();
    throw err;
  }
  const id = `${kind === "chat" ? "chatcmpl" : "cmpl"}-${randomBytes(12).toString("hex")}`;
  const created = Math.floor(Date.now() / 1000);
  const object = kind === "chat" ? "chat.completion.chunk" : "text_completion";
  const wantLogprobs = req.options.logprobs !== undefined;

  interface Choice {
    text: string;
    completionTokens: number;
    firstTokenMs?: number;
    stats?: GenerationStats;
    /** Logprobs of tokens whose text has not been sent yet (streaming), or all of them. */
    pending: TokenLogprob[];
    /** text_offset of the legacy endpoint's logprobs (after the echoed prompt). */
    offset: number;
    /** The echoed prompt (legacy endpoint, echo: true). */
    echo?: Echo;
  }
  const choices: Choice[] = streams.map((_, i) => {
    const echo = jobs[Math.floor(i / n)]!.echo;
    return { text: "", completionTokens: 0, pending: [], offset: echo?.text.length ?? 0, ...(echo && { echo }) };
  });
  const formatLogprobs = (c: Choice, l: TokenLogprob[], echo: EchoEntry[] = []): object | null => {
    if (!wantLogprobs) return null;
    if (kind === "chat") return { content: l.map((x) => ({ ...alternative(x), top_logprobs: x.top.map(alternative) })), refusal: null };
    const text_offset = l.map((x) => ((c.offset += x.token.length), c.offset - x.token.length));
    const topObject = (top: TokenLogprobAlternative[]) => Object.fromEntries(top.map((t) => [t.token, finiteLogprob(t.logprob)]));
    return {
      tokens: [...echo.map((e) => e.token), ...l.map((x) => x.token)],
      token_logprobs: [...echo.map((e) => (e.logprob === null ? null : finiteLogprob(e.logprob))), ...l.map((x) => finiteLogprob(x.logprob))],
      top_logprobs: [...echo.map((e) => (e.top === null ? null : topObject(e.top))), ...l.map((x) => topObject(x.top))],
      text_offset: [...echo.map((e) => e.offset), ...text_offset],
    };
  };
  // With stream_options.include_usage, OpenAI puts `usage: null` on every chunk before the usage chunk.
  const chunk = (
    index: number,
    delta: { role?: string; content?: string | null; tool_calls?: object[] },
    finish: string | null,
    extra: object = {},
    lp: TokenLogprob[] | null = null,
    echo?: EchoEntry[],
  ): object => {
    const logprobs = lp && formatLogprobs(choices[index]!, lp, echo);
    return {
      id,
      object,
      created,
      model: ctx.modelId,
      choices: [
        kind === "chat" ? { index, delta, logprobs, finish_reason: finish } : { index, text: delta.content ?? "", logprobs, finish_reason: finish },
      ],
      ...(req.includeUsage && { usage: null }),
      ...extra,
    };
  };

  let failure: unknown;
  if (req.stream) {
    res.writeHead(200, SSE_HEADERS);
    if (kind === "chat") for (let i = 0; i < choices.length; i++) await send(res, sse(chunk(i, { role: "assistant", content: "" }, null)));
    // The echoed prompt comes first, with its tokens' logprobs.
    for (const [i, c] of choices.entries()) {
      if (c.echo) await send(res, sse(chunk(i, { content: c.echo.text }, null, {}, wantLogprobs ? [] : null, c.echo.entries ?? [])));
    }
  }
  await Promise.all(
    streams.map(async (stream, i) => {
      const c = choices[i]!;
      if (!stream) return; // max_tokens 0: the echo alone
      try {
        for await (const part of stream) {
          if (part.tokenIds.length > 0) c.firstTokenMs ??= performance.now() - t0;
          c.completionTokens += part.tokenIds.length;
          if (part.stats) c.stats = part.stats;
          if (part.logprobs) c.pending.push(...part.logprobs);
          if (!part.text) continue;
          if (req.stream && !toolReply) {
            await send(res, sse(chunk(i, { content: part.text }, null, {}, wantLogprobs ? c.pending : null)));
            c.pending = [];
          } else c.text += part.text;
        }
      } catch (err) {
        // An abort may surface as a thrown ERR_ABORTED rather than finishReason "abort".
        if (!signal.aborted && failure === undefined) {
          failure = err;
          for (const s of streams) s?.abort(); // one choice failed: the request fails, the others stop
        }
      }
    }),
  );
  const first = choices[0]!;
  const ttfts = choices.map((c) => c.stats?.timeToFirstTokenMs ?? c.firstTokenMs).filter((v): v is number => v !== undefined);
  const ttftMs = ttfts.length > 0 ? Math.min(...ttfts) : undefined;
  const completionTokens = choices.reduce((a, c) => a + (c.stats?.completionTokens ?? c.completionTokens), 0);
  const outcome: GenerationOutcome = {
    stream: req.stream,
    // Each prompt counts once, whatever its n.
    promptTokens: jobs.reduce((a, job, p) => a + (choices[p * n]!.stats?.promptTokens ?? job.tokens), 0),
    completionTokens,
    ...(ttftMs !== undefined && { ttftMs }),
    ...(first.stats && { tokensPerSecond: choices.reduce((a, c) => a + (c.stats?.tokensPerSecond ?? 0), 0) }),
    status: 200,
  };
  const cut = ctx.cutReason();
  if (signal.aborted && !cut) return { ...outcome, status: 499, finishReason: "client_disconnected" };

  const usage = { prompt_tokens: outcome.promptTokens, completion_tokens: outcome.completionTokens, total_tokens: outcome.promptTokens + outcome.completionTokens };
  const timings = {
    ttft_ms: round(ttftMs),
    tokens_per_second: round(first.stats?.tokensPerSecond),
    prompt_tokens_per_second: round(first.stats?.promptTokensPerSecond),
    total_ms: round(first.stats?.totalMs ?? performance.now() - t0),
    // llama.cpp's names: draft tokens evaluated and accepted (lookup or a draft model), over every choice.
    ...(first.stats?.draftTokens !== undefined && {
      draft_n: choices.reduce((a, c) => a + (c.stats?.draftTokens ?? 0), 0),
      draft_n_accepted: choices.reduce((a, c) => a + (c.stats?.acceptedDraftTokens ?? 0), 0),
    }),
  };
  // With tools: the reply's content or tool calls (the raw text when max_tokens cut the JSON).
  const replies = choices.map((c) => (toolReply ? parseToolReply(c.text) : null));
  const finishOf = (c: Choice) => {
    if (!streams[choices.indexOf(c)]) return "length"; // max_tokens 0
    const f = openaiFinish(c.stats?.finishReason ?? "stop");
    return f === "stop" && (replies[choices.indexOf(c)]?.toolCalls.length ?? 0) > 0 ? "tool_calls" : f;
  };
  const message = (c: Choice, i: number) => {
    const r = replies[i];
    if (!toolReply || !r) return { role: "assistant", content: c.text };
    return { role: "assistant", content: r.content, ...(r.toolCalls.length > 0 && { tool_calls: r.toolCalls }) };
  };
  if (!req.stream) {
    if (failure) throw failure;
    if (cut) throw new HttpError(503, `generation cut: ${cut.message}`, "server_error", cut.code);
    const out = choices.map((c, index) => {
      const logprobs = formatLogprobs(c, c.pending, c.echo?.entries ?? undefined);
      return kind === "chat"
        ? { index, message: message(c, index), logprobs, finish_reason: finishOf(c) }
        : { index, text: (c.echo?.text ?? "") + c.text, logprobs, finish_reason: finishOf(c) };
    });
    sendJson(res, 200, { id, object: kind === "chat" ? "chat.completion" : "text_completion", created, model: ctx.modelId, choices: out, usage, timings });
    return { ...outcome, finishReason: finishOf(first) };
  }
  // Streaming: headers are gone, so problems travel in the stream as OpenAI-style error events.
  let finishReason: string;
  if (failure || cut) {
    const e = cut ? new HttpError(503, `generation cut: ${cut.message}`, "server_error", cut.code) : toHttpError(failure);
    if (cut) for (let i = 0; i < choices.length; i++) await send(res, sse(chunk(i, {}, "length", { timings })));
    if (cut && req.includeUsage) await send(res, sse({ id, object, created, model: ctx.modelId, choices: [], usage }));
    await send(res, sse(JSON.parse(errorBody(e))));
    finishReason = cut ? "length" : "error";
    outcome.status = cut ? 200 : e.status;
  } else {
    finishReason = finishOf(first);
    for (let i = 0; i < choices.length; i++) {
      const c = choices[i]!;
      if (toolReply) {
        const m = message(c, i);
        const delta = "tool_calls" in m && m.tool_calls ? { tool_calls: m.tool_calls.map((t, index) => ({ index, ...t })) } : { content: m.content };
        await send(res, sse(chunk(i, delta, null, {}, wantLogprobs ? c.pending : null)));
        c.pending = [];
      }
      await send(res, sse(chunk(i, {}, finishOf(c), { timings }, wantLogprobs && c.pending.length > 0 ? c.pending : null)));
    }
    if (req.includeUsage) await send(res, sse({ id, object, created, model: ctx.modelId, choices: [], usage }));
  }
  await send(res, "data: [DONE]\n\n");
  res.end();
  return { ...outcome, finishReason };
}

/** A token in OpenAI's logprobs shape. */
function alternative(x: { token: string; logprob: number; bytes: number[] }): { token: string; logprob: number; bytes: number[] } {
  return { token: x.token, logprob: finiteLogprob(x.logprob), bytes: x.bytes };
}

/** JSON has no -Infinity: a token the model rules out gets OpenAI's floor, -9999. */
function finiteLogprob(v: number): number {
  return Number.isFinite(v) ? v : -9999;
}

function round(v: number | undefined): number | null {
  return v === undefined || !Number.isFinite(v) ? null : Math.round(v * 100) / 100;
}
