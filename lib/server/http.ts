// The HTTP server: chat page, OpenAI-compatible API, health, metrics and job info on one port.
// node:http only, so limits, SSE and shutdown are fully under our control. Nothing a client sends or
// does (garbage, huge bodies, disconnects) may throw out of a request handler.
import http, { type IncomingMessage, type ServerResponse } from "node:http";
import net from "node:net";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { InvalidArgumentError, Llama2Error } from "../errors.js";
import { assertBindAllowed, bearerChecker, hostHeaderAllowed } from "./auth.js";
import type { ChatBackend } from "./backend.js";
import { embeddings } from "./embeddings.js";
import { Metrics } from "./metrics.js";
import { chatCompletions, completions, errorBody, HttpError, sendJson, toHttpError, type GenerationOutcome } from "./openai.js";
import { detokenizeRequest, tokenizeRequest } from "./tokenize.js";
import { PAGE_FILES } from "./page/index.js";

/** What /job and /job/logs show (the job runner provides it). */
export interface JobView {
  snapshot(): unknown;
  recentLogs(n: number): unknown[];
}

export interface ServerOptions {
  backend: ChatBackend;
  host?: string;
  port?: number;
  apiKey?: string;
  /** Allowed cross-origin caller ("*" or an origin); CORS is off without it. */
  cors?: string;
  /** Model name in API responses (default: the model file's base name). */
  modelId?: string;
  /** Request body limit in bytes (default 1 MiB). */
  bodyLimit?: number;
  /** Concurrent requests beyond which new ones get 429 (default 256). */
  maxInFlight?: number;
  job?: JobView;
  log?: (level: "info" | "warn" | "error", msg: string, fields?: Record<string, unknown>) => void;
  /** Called after every request that ran the model (generations, embeddings: figures for job.json). */
  onGeneration?: (o: GenerationOutcome & { endpoint: string; ms: number }) => void;
}

export interface ShutdownOptions {
  /** How long in-flight requests may continue before they are cut. */
  graceMs?: number;
  /** Told to clients whose generation is cut, and to late requests. */
  reason?: string;
  code?: string;
}

export interface RunningServer {
  readonly url: string;
  readonly host: string;
  readonly port: number;
  readonly metrics: Metrics;
  readonly inFlight: number;
  shutdown(opts?: ShutdownOptions): Promise<void>;
}

interface Active {
  ctl: AbortController;
  cut?: { message: string; code: string };
  done: Promise<void>;
}

const ENDPOINTS = new Set(["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models", "/health", "/metrics", "/job", "/job/logs", "/tokenize", "/detokenize"]);
/** The routes that run the model: in-flight tracked, abortable, counted in job.json. */
const MODEL_ROUTES = {
  "/v1/chat/completions": chatCompletions,
  "/v1/completions": completions,
  "/v1/embeddings": embeddings,
} as const;
const isModelRoute = (p: string): p is keyof typeof MODEL_ROUTES => Object.hasOwn(MODEL_ROUTES, p);
const MODEL_PREFIX = "/v1/models/";
const PROTECTED = (p: string): boolean => p.startsWith("/v1/") || p === "/job" || p.startsWith("/job/") || p === "/metrics" || p === "/tokenize" || p === "/detokenize";

export async function startServer(opts: ServerOptions): Promise<RunningServer> {
  const { backend } = opts;
  const host = opts.host ?? "127.0.0.1";
  assertBindAllowed(host, opts.apiKey);
  const checkKey = opts.apiKey ? bearerChecker(opts.apiKey) : undefined;
  const bodyLimit = opts.bodyLimit ?? 1 << 20;
  const maxInFlight = opts.maxInFlight ?? 256;
  const modelId = opts.modelId ?? path.basename(backend.info.path).replace(/\.(gguf|bin|safetensors)$/i, "");
  // Callbacks into the job (log files, job.json) may fail, e.g. on a full disk: never from a request.
  const log: NonNullable<ServerOptions["log"]> = (level, msg, fields) => {
    try {
      opts.log?.(level, msg, fields);
    } catch {
      // nothing sensible left to report to
    }
  };
  const onGeneration: NonNullable<ServerOptions["onGeneration"]> = (o) => {
    try {
      opts.onGeneration?.(o);
    } catch (err) {
      log("error", `recording request figures failed: ${(err as Error).message}`);
    }
  };
  const active = new Set<Active>();
  let closing: Required<Pick<ShutdownOptions, "reason" | "code">> | undefined;
  let shutdownPromise: Promise<void> | undefined;
  const metrics = new Metrics({
    queueDepth: () => backend.pending,
    inFlight: () => active.size,
    deviceMemoryBytes: () => backend.deviceMemoryBytes(),
    model: { id: modelId, device: backend.info.device, dtype: backend.info.dtype },
  });

  function securityHeaders(res: ServerResponse): void {
    res.setHeader("X-Content-Type-Options", "nosniff");
    res.setHeader("Referrer-Policy", "no-referrer");
    if (closing) res.setHeader("Connection", "close");
    if (opts.cors) {
      res.setHeader("Access-Control-Allow-Origin", opts.cors);
      res.setHeader("Vary", "Origin");
    }
  }

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const t0 = performance.now();
    const url = req.url ?? "/";
    const q = url.indexOf("?");
    // No decoding and exact matches only: nothing here ever maps a URL to a file path.
    const pathname = q >= 0 ? url.slice(0, q) : url;
    const query = new URLSearchParams(q >= 0 ? url.slice(q + 1) : "");
    const endpoint = ENDPOINTS.has(pathname) ? pathname
      : pathname.startsWith(MODEL_PREFIX) ? "/v1/models/{id}" // one metrics label, whatever the id
      : Object.hasOwn(PAGE_FILES, pathname) ? "page" : "other";
    const method = req.method ?? "GET";
    securityHeaders(res);
    let outcome: GenerationOutcome | undefined;
    let failure = "";
    try {
      if (!checkKey && !hostHeaderAllowed(req.headers.host)) throw new HttpError(403, "Host header not allowed (use 127.0.0.1 or localhost)", undefined, "host_not_allowed");
      if (method === "OPTIONS") return preflight(req, res);
      if (Object.hasOwn(PAGE_FILES, pathname)) return servePage(req, res, pathname);
      if (PROTECTED(pathname) && checkKey && !checkKey(req.headers.authorization))
        throw new HttpError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'", undefined, "invalid_api_key");
      if (pathname.startsWith(MODEL_PREFIX)) return retrieveModel(method, res, pathname.slice(MODEL_PREFIX.length));
      switch (pathname) {
        case "/health":
          allow(method, "GET", "HEAD");
          return sendJson(res, closing ? 503 : 200, { status: closing ? "shutting_down" : "ok", auth_required: !!checkKey });
        case "/v1/models":
          allow(method, "GET", "HEAD");
          return sendJson(res, 200, { object: "list", data: [modelEntry()] });
        case "/metrics":
          allow(method, "GET", "HEAD");
          res.writeHead(200, { "Content-Type": "text/plain; version=0.0.4; charset=utf-8" });
          return void res.end(metrics.render());
        case "/job":
          allow(method, "GET", "HEAD");
          if (!opts.job) throw new HttpError(404, "this server is not running as a job", undefined, "not_found");
          return sendJson(res, 200, opts.job.snapshot());
        case "/job/logs": {
          allow(method, "GET", "HEAD");
          if (!opts.job) throw new HttpError(404, "this server is not running as a job", undefined, "not_found");
          const n = query.get("n") ?? "100";
          if (!/^\d{1,3}$/.test(n) || +n < 1 || +n > 500) throw new InvalidArgumentError("n", `expected an integer in [1, 500], got '${n.slice(0, 20)}'`);
          return sendJson(res, 200, { lines: opts.job.recentLogs(+n) });
        }
        case "/tokenize":
          allow(method, "POST");
          return sendJson(res, 200, tokenizeRequest(backend, await readJson(req, bodyLimit)));
        case "/detokenize":
          allow(method, "POST");
          return sendJson(res, 200, detokenizeRequest(backend, await readJson(req, bodyLimit)));
        case "/v1/chat/completions":
        case "/v1/completions":
        case "/v1/embeddings": {
          allow(method, "POST");
          if (closing) throw new HttpError(503, `server is shutting down: ${closing.reason}`, undefined, closing.code);
          if (active.size >= maxInFlight) throw new HttpError(429, `too many concurrent requests (${maxInFlight}); retry later`, "rate_limit_error", "too_many_requests");
          const body = await readJson(req, bodyLimit);
          outcome = await modelRequest(res, pathname, body);
          return;
        }
        default:
          throw new HttpError(404, `no route ${method} ${pathname.slice(0, 100)}`, undefined, "not_found");
      }
    } catch (err) {
      const e = toHttpError(err);
      failure = e.message.slice(0, 200);
      if (err instanceof MethodError) res.setHeader("Allow", err.allowed.join(", "));
      if (e.status === 413) res.setHeader("Connection", "close");
      sendJson(res, e.status, JSON.parse(errorBody(e)));
    } finally {
      const ms = performance.now() - t0;
      // Not ended = the client left before any answer could be written.
      const status = outcome?.status ?? (res.writableEnded ? res.statusCode : 499);
      metrics.requests.inc({ endpoint, status: String(status) });
      if (endpoint !== "other" && endpoint !== "page") metrics.latency.observe(ms / 1000, { endpoint });
      if (outcome) {
        metrics.promptTokens.inc({}, outcome.promptTokens);
        metrics.generatedTokens.inc({}, outcome.completionTokens);
        if (outcome.ttftMs !== undefined) metrics.ttft.observe(outcome.ttftMs / 1000);
        log("info", `${method} ${pathname} ${status} ${outcome.stream ? "stream " : ""}prompt=${outcome.promptTokens} completion=${outcome.completionTokens}` +
          `${outcome.ttftMs !== undefined ? ` ttft=${Math.round(outcome.ttftMs)}ms` : ""}${outcome.tokensPerSecond ? ` ${outcome.tokensPerSecond.toFixed(1)} tok/s` : ""}` +
          `${outcome.finishReason ? ` finish=${outcome.finishReason}` : ""} ${Math.round(ms)}ms`);
        onGeneration({ ...outcome, endpoint, ms });
      } else if (status >= 400 && endpoint !== "page") {
        // Refused before generating (bad request, context, the non-streamed cut): still a request for job.json.
        if (isModelRoute(endpoint)) onGeneration({ stream: false, promptTokens: 0, completionTokens: 0, status, endpoint, ms });
        log(status >= 500 ? "error" : "warn", `${method} ${pathname.slice(0, 100)} ${status}${failure ? `: ${failure}` : ""}`);
      }
    }
  }

  async function modelRequest(res: ServerResponse, pathname: keyof typeof MODEL_ROUTES, body: unknown): Promise<GenerationOutcome> {
    const ctl = new AbortController();
    let finish!: () => void;
    const entry: Active = { ctl, done: new Promise<void>((r) => (finish = r)) };
    // 'close' before the response finished = the client went away: stop the model's work for it.
    const onClose = (): void => {
      if (!res.writableFinished) ctl.abort("client disconnected");
    };
    res.on("close", onClose);
    active.add(entry);
    try {
      const ctx = { backend, modelId, res, signal: ctl.signal, cutReason: () => entry.cut };
      return await MODEL_ROUTES[pathname](ctx, body);
    } finally {
      res.off("close", onClose);
      active.delete(entry);
      finish();
    }
  }

  function modelEntry(): object {
    const i = backend.info;
    return {
      id: modelId,
      object: "model",
      created: 0,
      owned_by: "llama2-native",
      llama2: { device: i.device, device_name: i.deviceName, dtype: i.dtype, kv_cache_type: i.kvCacheType, context_length: i.contextLength, format: i.format, chat_template: i.chatTemplate },
    };
  }

  // GET /v1/models/{id}: OpenAI SDKs' models.retrieve(). The id arrives percent-encoded.
  function retrieveModel(method: string, res: ServerResponse, rawId: string): void {
    allow(method, "GET", "HEAD");
    let id: string;
    try {
      id = decodeURIComponent(rawId);
    } catch {
      id = rawId;
    }
    if (id !== modelId) throw new HttpError(404, `model '${id.slice(0, 100)}' not found (this server serves '${modelId}')`, undefined, "model_not_found", "model");
    sendJson(res, 200, modelEntry());
  }

  function preflight(req: IncomingMessage, res: ServerResponse): void {
    if (!opts.cors) throw new HttpError(405, "CORS is not enabled on this server (start it with --cors ORIGIN)", undefined, "cors_disabled");
    // Browsers send only the headers the caller set (the OpenAI SDK adds X-Stainless-*): allow what is
    // asked for, as long as it is a plain list of header names.
    res.writeHead(204, {
      "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
      "Access-Control-Allow-Headers": headerNameList(req.headers["access-control-request-headers"]) ?? "Authorization, Content-Type",
      "Access-Control-Max-Age": "600",
      Vary: "Origin, Access-Control-Request-Headers",
    });
    res.end();
  }

  function servePage(req: IncomingMessage, res: ServerResponse, pathname: string): void {
    allow(req.method ?? "GET", "GET", "HEAD");
    const f = PAGE_FILES[pathname]!;
    res.writeHead(200, {
      "Content-Type": f.type,
      "Content-Length": Buffer.byteLength(f.body),
      "Cache-Control": "no-cache",
      "Content-Security-Policy":
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    });
    res.end(req.method === "HEAD" ? undefined : f.body);
  }

  const server = http.createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      // Last line of defence: never let a request take the process down.
      log("error", `request handler crashed: ${(err as Error)?.stack ?? String(err)}`);
      res.destroy();
    });
  });
  server.on("clientError", (err: NodeJS.ErrnoException, socket) => {
    const status = err.code === "HPE_HEADER_OVERFLOW" ? "431 Request Header Fields Too Large" : "400 Bad Request";
    if (socket.writable) socket.end(`HTTP/1.1 ${status}\r\nConnection: close\r\n\r\n`);
    else socket.destroy();
  });
  await listen(server, host, opts.port ?? 8080);
  const port = (server.address() as { port: number }).port;
  const shownHost = host.includes(":") ? `[${host}]` : host;

  return {
    url: `http://${shownHost}:${port}/`,
    host,
    port,
    metrics,
    get inFlight() {
      return active.size;
    },
    shutdown(s: ShutdownOptions = {}): Promise<void> {
      shutdownPromise ??= (async () => {
        closing = { reason: s.reason ?? "server shutting down", code: s.code ?? "shutting_down" };
        const closed = new Promise<void>((r) => server.close(() => r()));
        server.closeIdleConnections();
        const allDone = (): Promise<unknown> => Promise.all([...active].map((a) => a.done));
        const grace = new AbortController();
        const timedOut = await Promise.race([allDone().then(() => false), sleep(s.graceMs ?? 5000, true, { signal: grace.signal }).catch(() => false)]);
        grace.abort();
        if (timedOut && active.size > 0) {
          log("info", `cutting ${active.size} in-flight request(s): ${closing.reason}`);
          for (const a of active) {
            a.cut = { message: closing.reason, code: closing.code };
            a.ctl.abort(closing.reason);
          }
          // Cut requests end within a token; do not wait forever on a stuck one.
          const t = new AbortController();
          await Promise.race([allDone(), sleep(5000, undefined, { signal: t.signal }).catch(() => {})]);
          t.abort();
        }
        server.closeAllConnections();
        await closed;
      })();
      return shutdownPromise;
    },
  };
}

class MethodError extends HttpError {
  constructor(method: string, readonly allowed: string[]) {
    super(405, `method ${method.slice(0, 20)} not allowed here (allowed: ${allowed.join(", ")})`, undefined, "method_not_allowed");
  }
}

/** A preflight's requested header list, if it is only header names (and not absurdly long). */
function headerNameList(v: string | undefined): string | undefined {
  if (v === undefined || v.length > 1000) return undefined;
  const t = v.trim();
  return /^[A-Za-z0-9-]+(\s*,\s*[A-Za-z0-9-]+)*$/.test(t) ? t : undefined;
}

function allow(method: string, ...allowed: string[]): void {
  if (!allowed.includes(method)) throw new MethodError(method, allowed);
}

async function readJson(req: IncomingMessage, limit: number): Promise<unknown> {
  const type = req.headers["content-type"] ?? "";
  // Requiring JSON also forces a CORS preflight on cross-site requests (a plain form post cannot send it).
  if (!/^application\/json\s*(;|$)/i.test(type))
    throw new HttpError(415, `Content-Type must be application/json, got '${type.slice(0, 50)}'`, undefined, "unsupported_media_type");
  const tooLarge = (): HttpError => new HttpError(413, `request body larger than ${limit} bytes`, undefined, "body_too_large");
  const declared = Number(req.headers["content-length"] ?? 0);
  if (declared > limit) throw tooLarge();
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const c of req as AsyncIterable<Buffer>) {
    size += c.length;
    if (size > limit) throw tooLarge();
    chunks.push(c);
  }
  const text = Buffer.concat(chunks).toString("utf8");
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new HttpError(400, `invalid JSON body: ${(err as Error).message.slice(0, 200)}`, undefined, "invalid_json");
  }
}

/**
 * Fails as startServer would on a busy or unusable host:port, without keeping the port: lets a job refuse
 * it before a long model load. (Racy by nature: the port may still be taken in between.)
 */
export async function assertPortFree(host: string, port: number): Promise<void> {
  if (port === 0) return;
  const probe = net.createServer();
  await listen(probe, host, port);
  await new Promise<void>((r) => probe.close(() => r()));
}

function listen(server: net.Server, host: string, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException): void => {
      server.off("listening", onListening);
      if (err.code === "EADDRINUSE") reject(new InvalidArgumentError("--port", `${host}:${port} is already in use (choose another --port, or 0 for any free port)`));
      else if (err.code === "EACCES") reject(new InvalidArgumentError("--port", `permission denied for port ${port} (ports below 1024 need privileges)`));
      else if (err.code === "EADDRNOTAVAIL" || err.code === "ENOTFOUND") reject(new InvalidArgumentError("--host", `${host} is not an address of this machine`));
      else reject(new Llama2Error("ERR_INTERNAL", `cannot listen on ${host}:${port}: ${err.message}`, { cause: err }));
    };
    const onListening = (): void => {
      server.off("error", onError);
      resolve();
    };
    server.once("error", onError);
    server.once("listening", onListening);
    server.listen(port, host);
  });
}
