// The OpenAI-compatible generation endpoints: request -> backend stream -> JSON or server-sent events.
import { randomBytes } from "node:crypto";
import type { ServerResponse } from "node:http";
import { fromNative, InvalidArgumentError, Llama2Error } from "../errors.js";
import type { FinishReason, GenerateOptions, GenerationStats, GenerationStream, TokenLogprob } from "../types.js";
import { countChatTokens, type ChatBackend } from "./backend.js";
import { ContextLengthError, parseChatRequest, parseCompletionRequest, resolveMaxTokens, type ParsedRequest } from "./validate.js";

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
  const promptTokens = countChatTokens(backend, req.messages);
  return serve(ctx, "chat", req, promptTokens, "messages", (opts) => backend.chat(req.messages, opts));
}

export async function completions(ctx: GenerationContext, body: unknown): Promise<GenerationOutcome> {
  const { backend } = ctx;
  const req = parseCompletionRequest(body, backend.info.config.vocabSize);
  const promptTokens = backend.tokenize(req.prompt, { bos: true }).length;
  return serve(ctx, "text", req, promptTokens, "prompt", (opts) => backend.generate(req.prompt, opts));
}

async function serve(
  ctx: GenerationContext,
  kind: "chat" | "text",
  req: ParsedRequest,
  promptTokens: number,
  promptField: string,
  start: (opts: GenerateOptions) => GenerationStream,
): Promise<GenerationOutcome> {
  const { res, signal } = ctx;
  const maxTokens = resolveMaxTokens(req.maxTokens, promptTokens, ctx.backend.info.contextLength, promptField, req.maxTokensField);
  const t0 = performance.now();
  const stream = start({ ...req.options, maxTokens, ...(req.stop && { stop: req.stop }), signal });
  const id = `${kind === "chat" ? "chatcmpl" : "cmpl"}-${randomBytes(12).toString("hex")}`;
  const created = Math.floor(Date.now() / 1000);
  const object = kind === "chat" ? "chat.completion.chunk" : "text_completion";
  // With stream_options.include_usage, OpenAI puts `usage: null` on every chunk before the usage chunk.
  const wantLogprobs = req.options.logprobs !== undefined;
  let offset = 0; // text_offset of the legacy endpoint's logprobs
  const formatLogprobs = (l: TokenLogprob[]): object | null => {
    if (!wantLogprobs) return null;
    if (kind === "chat") return { content: l.map((x) => ({ ...alternative(x), top_logprobs: x.top.map(alternative) })), refusal: null };
    const text_offset = l.map((x) => ((offset += x.token.length), offset - x.token.length));
    return {
      tokens: l.map((x) => x.token),
      token_logprobs: l.map((x) => finiteLogprob(x.logprob)),
      top_logprobs: l.map((x) => Object.fromEntries(x.top.map((t) => [t.token, finiteLogprob(t.logprob)]))),
      text_offset,
    };
  };
  let pending: TokenLogprob[] = []; // logprobs of tokens whose text has not been sent yet
  const chunk = (delta: { role?: string; content?: string }, finish: string | null, extra: object = {}, lp: TokenLogprob[] | null = null): object => ({
    id,
    object,
    created,
    model: ctx.modelId,
    choices: [
      kind === "chat"
        ? { index: 0, delta, logprobs: lp && formatLogprobs(lp), finish_reason: finish }
        : { index: 0, text: delta.content ?? "", logprobs: lp && formatLogprobs(lp), finish_reason: finish },
    ],
    ...(req.includeUsage && { usage: null }),
    ...extra,
  });

  let text = "";
  let completionTokens = 0;
  let firstTokenMs: number | undefined;
  let stats: GenerationStats | undefined;
  let failure: unknown;
  if (req.stream) {
    res.writeHead(200, SSE_HEADERS);
    if (kind === "chat") await send(res, sse(chunk({ role: "assistant", content: "" }, null)));
  }
  try {
    for await (const c of stream) {
      if (c.tokenIds.length > 0) firstTokenMs ??= performance.now() - t0;
      completionTokens += c.tokenIds.length;
      if (c.stats) stats = c.stats;
      if (c.logprobs) pending.push(...c.logprobs);
      if (!c.text) continue;
      if (req.stream) {
        await send(res, sse(chunk({ content: c.text }, null, {}, wantLogprobs ? pending : null)));
        pending = [];
      } else text += c.text;
    }
  } catch (err) {
    // An abort may surface as a thrown ERR_ABORTED rather than finishReason "abort".
    if (!signal.aborted) failure = err;
  }
  const ttftMs = stats?.timeToFirstTokenMs ?? firstTokenMs;
  const outcome: GenerationOutcome = {
    stream: req.stream,
    promptTokens: stats?.promptTokens ?? promptTokens,
    completionTokens: stats?.completionTokens ?? completionTokens,
    ...(ttftMs !== undefined && { ttftMs }),
    ...(stats && { tokensPerSecond: stats.tokensPerSecond }),
    status: 200,
  };
  const cut = ctx.cutReason();
  if (signal.aborted && !cut) return { ...outcome, status: 499, finishReason: "client_disconnected" };

  const usage = { prompt_tokens: outcome.promptTokens, completion_tokens: outcome.completionTokens, total_tokens: outcome.promptTokens + outcome.completionTokens };
  const timings = {
    ttft_ms: round(ttftMs),
    tokens_per_second: round(stats?.tokensPerSecond),
    prompt_tokens_per_second: round(stats?.promptTokensPerSecond),
    total_ms: round(stats?.totalMs ?? performance.now() - t0),
  };
  if (!req.stream) {
    if (failure) throw failure;
    if (cut) throw new HttpError(503, `generation cut: ${cut.message}`, "server_error", cut.code);
    const finish = openaiFinish(stats?.finishReason ?? "stop");
    const logprobs = formatLogprobs(pending);
    const choice = kind === "chat" ? { index: 0, message: { role: "assistant", content: text }, logprobs, finish_reason: finish } : { index: 0, text, logprobs, finish_reason: finish };
    sendJson(res, 200, { id, object: kind === "chat" ? "chat.completion" : "text_completion", created, model: ctx.modelId, choices: [choice], usage, timings });
    return { ...outcome, finishReason: finish };
  }
  // Streaming: headers are gone, so problems travel in the stream as OpenAI-style error events.
  let finishReason: string;
  if (failure || cut) {
    const e = cut ? new HttpError(503, `generation cut: ${cut.message}`, "server_error", cut.code) : toHttpError(failure);
    if (cut) await send(res, sse(chunk({}, "length", { timings })));
    if (cut && req.includeUsage) await send(res, sse({ id, object, created, model: ctx.modelId, choices: [], usage }));
    await send(res, sse(JSON.parse(errorBody(e))));
    finishReason = cut ? "length" : "error";
    outcome.status = cut ? 200 : e.status;
  } else {
    finishReason = openaiFinish(stats?.finishReason ?? "stop");
    await send(res, sse(chunk({}, finishReason, { timings }, wantLogprobs && pending.length > 0 ? pending : null)));
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
