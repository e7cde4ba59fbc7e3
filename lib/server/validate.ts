// Validation of OpenAI-style request bodies (also used for evaluation dataset lines). Every problem is
// an InvalidArgumentError naming the offending field, e.g. "messages[2].role". Unknown fields are ignored;
// known features the server cannot honour (the functions API, suffix, best_of) are refused, not dropped.
import { MAX_DRAFT_TOKENS } from "../engine/draft-model.js";
import { InvalidArgumentError } from "../errors.js";
import { parseGrammar } from "../grammar/gbnf.js";
import { compileResponseFormat } from "../grammar/response-format.js";
import { dialogWithTools, parseTools, toolsFormat, type ToolRequest } from "./tools.js";
import type { ChatMessage, JsonSchema, ResponseFormat, SamplingOptions } from "../types.js";

/** The prompt does not leave room for the requested completion (OpenAI code context_length_exceeded). */
export class ContextLengthError extends InvalidArgumentError {
  readonly apiCode = "context_length_exceeded";
}

export interface ParsedSampling {
  maxTokens?: number;
  /** The field maxTokens came from (max_tokens or max_completion_tokens), for error messages. */
  maxTokensField?: string;
  stop?: string[];
  options: SamplingOptions & { responseFormat?: ResponseFormat; logprobs?: number; lookup?: number; contextShift?: boolean };
}

export interface ParsedRequest extends ParsedSampling {
  /** Choices to generate (OpenAI's n). */
  n: number;
  stream: boolean;
  includeUsage: boolean;
}

export type Body = Record<string, unknown>;

const MAX_STOP = 16;
const MAX_MESSAGES = 10_000;

// Never JSON.stringify an object here: a deeply nested one would overflow the stack (a 500, not a 400).
function show(v: unknown): string {
  if (typeof v === "object" && v !== null) return Array.isArray(v) ? "[...]" : "{...}";
  const s = v === undefined ? "undefined" : JSON.stringify(v);
  return s.length > 40 ? `${s.slice(0, 37)}...` : s;
}

function typeName(v: unknown): string {
  return v === null ? "null" : Array.isArray(v) ? "array" : typeof v;
}

export function asObject(v: unknown, field: string): Body {
  if (typeof v !== "object" || v === null || Array.isArray(v)) throw new InvalidArgumentError(field, `expected a JSON object, got ${typeName(v)}`);
  return v as Body;
}

/** A number field; null/absent -> undefined. `loOpen`/`hiOpen`: that bound itself is excluded. */
function numberField(o: Body, key: string, lo: number, hi: number, opts: { int?: boolean; loOpen?: boolean; hiOpen?: boolean } = {}): number | undefined {
  const v = o[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "number" || !Number.isFinite(v)) throw new InvalidArgumentError(key, `expected a number, got ${typeName(v)} ${show(v)}`);
  if (opts.int && !Number.isSafeInteger(v)) throw new InvalidArgumentError(key, `expected an integer, got ${v}`);
  if ((opts.loOpen ? v <= lo : v < lo) || (opts.hiOpen ? v >= hi : v > hi))
    throw new InvalidArgumentError(key, `must be in ${opts.loOpen ? "(" : "["}${lo}, ${hi}${opts.hiOpen ? ")" : "]"}, got ${v}`);
  return v;
}

export function boolField(o: Body, key: string): boolean | undefined {
  const v = o[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "boolean") throw new InvalidArgumentError(key, `expected true or false, got ${show(v)}`);
  return v;
}

function stringField(o: Body, key: string): string | undefined {
  const v = o[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "string") throw new InvalidArgumentError(key, `expected a string, got ${typeName(v)}`);
  return v;
}

function parseStop(v: unknown): string[] | undefined {
  if (v === undefined || v === null) return undefined;
  const list = typeof v === "string" ? [v] : v;
  if (!Array.isArray(list)) throw new InvalidArgumentError("stop", `expected a string or an array of strings, got ${typeName(v)}`);
  if (list.length > MAX_STOP) throw new InvalidArgumentError("stop", `at most ${MAX_STOP} stop sequences, got ${list.length}`);
  return list.map((s, i) => {
    if (typeof s !== "string" || s.length === 0 || s.length > 256)
      throw new InvalidArgumentError(`stop[${i}]`, "expected a non-empty string of at most 256 characters");
    return s;
  });
}

function parseLogitBias(v: unknown, vocabSize: number): Record<number, number> | undefined {
  if (v === undefined || v === null) return undefined;
  const o = asObject(v, "logit_bias");
  const out: Record<number, number> = {};
  const keys = Object.keys(o);
  if (keys.length > 1024) throw new InvalidArgumentError("logit_bias", `at most 1024 entries, got ${keys.length}`);
  for (const k of keys) {
    const id = Number(k);
    if (!/^\d{1,9}$/.test(k) || id >= vocabSize) throw new InvalidArgumentError(`logit_bias.${k.slice(0, 20)}`, `not a token id in [0, ${vocabSize})`);
    const b = o[k];
    if (typeof b !== "number" || !Number.isFinite(b) || b < -100 || b > 100)
      throw new InvalidArgumentError(`logit_bias.${k}`, `expected a number in [-100, 100], got ${show(b)}`);
    out[id] = b;
  }
  return out;
}

/**
 * The sampling fields shared by both endpoints and evaluation lines. Omitted fields keep the library's
 * defaults (llama.cpp server's too); `top_k` and `min_p` are llama.cpp's extensions, 0 turning them off.
 */
export function parseSampling(o: Body, vocabSize: number): ParsedSampling {
  // Both are checked even when both are sent; max_tokens wins, as it always has here.
  const legacyMax = numberField(o, "max_tokens", 1, 1 << 24, { int: true });
  const completionMax = numberField(o, "max_completion_tokens", 1, 1 << 24, { int: true });
  const maxTokens = legacyMax ?? completionMax;
  const maxTokensField = legacyMax !== undefined ? "max_tokens" : "max_completion_tokens";
  const stop = parseStop(o.stop);
  const logitBias = parseLogitBias(o.logit_bias, vocabSize);
  const entries: [keyof SamplingOptions | "lookup", number | undefined][] = [
    ["temperature", numberField(o, "temperature", 0, 2)],
    ["topP", numberField(o, "top_p", 0, 1, { loOpen: true })],
    ["topK", numberField(o, "top_k", 0, 1 << 24, { int: true })],
    ["minP", numberField(o, "min_p", 0, 1, { hiOpen: true })],
    ["presencePenalty", numberField(o, "presence_penalty", -2, 2)],
    ["frequencyPenalty", numberField(o, "frequency_penalty", -2, 2)],
    ["seed", numberField(o, "seed", 0, Number.MAX_SAFE_INTEGER, { int: true })],
    // Prompt lookup decoding (an extension: draft tokens per step).
    ["lookup", numberField(o, "lookup", 0, MAX_DRAFT_TOKENS, { int: true })],
  ];
  const options: ParsedSampling["options"] = Object.fromEntries(entries.filter(([, v]) => v !== undefined));
  if (logitBias) options.logitBias = logitBias;
  const responseFormat = parseResponseFormat(o.response_format);
  if (responseFormat) options.responseFormat = responseFormat;
  // llama.cpp's server extension: "grammar" (GBNF rules), compiled here so that a bad one is a 400.
  if (o.grammar !== undefined && o.grammar !== null) {
    if (responseFormat) throw new InvalidArgumentError("grammar", "cannot be combined with response_format");
    if (typeof o.grammar !== "string") throw new InvalidArgumentError("grammar", `expected a string of GBNF rules, got ${show(o.grammar)}`);
    if (o.grammar.trim() !== "") {
      parseGrammar(o.grammar, "grammar");
      options.responseFormat = { type: "grammar", grammar: o.grammar };
    }
  }
  // llama.cpp's context shift, per request here: the reply may go on past the context.
  if (boolField(o, "context_shift")) options.contextShift = true;
  stringField(o, "user");
  stringField(o, "model");
  return { ...(maxTokens !== undefined && { maxTokens, maxTokensField }), ...(stop && { stop }), options };
}

/**
 * OpenAI's response_format: {"type":"text"}, {"type":"json_object"} (llama.cpp's server also takes a
 * "schema" there), or {"type":"json_schema","json_schema":{"name","schema","strict"}}. The schema is
 * compiled here, so that an unsupported one is a 400 naming its keyword before anything runs.
 */
function parseResponseFormat(v: unknown): ResponseFormat | undefined {
  if (v === undefined || v === null) return undefined;
  const o = asObject(v, "response_format");
  let format: ResponseFormat;
  if (o.type === "text") return undefined;
  if (o.type === "json_object") {
    format = o.schema === undefined || o.schema === null ? { type: "json_object" } : { type: "json_object", schema: o.schema as JsonSchema };
  } else if (o.type === "json_schema") {
    const js = asObject(o.json_schema, "response_format.json_schema");
    stringField(js, "name");
    stringField(js, "description");
    boolField(js, "strict");
    if (js.schema === undefined || js.schema === null) throw new InvalidArgumentError("response_format.json_schema.schema", "is required");
    format = { type: "json_schema", schema: js.schema as JsonSchema };
  } else {
    throw new InvalidArgumentError("response_format.type", `expected "text", "json_object" or "json_schema", got ${show(o.type)}`);
  }
  compileResponseFormat(format, o.type === "json_schema" ? "response_format.json_schema" : "response_format");
  return format;
}

/** Choices per request: each is a generation of its own (batched together), so their number is bounded. */
const MAX_N = 16;

function parseStreaming(o: Body): { n: number; stream: boolean; includeUsage: boolean } {
  const n = numberField(o, "n", 1, MAX_N, { int: true }) ?? 1;
  const stream = boolField(o, "stream") ?? false;
  let includeUsage = false;
  if (o.stream_options !== undefined && o.stream_options !== null) {
    const so = asObject(o.stream_options, "stream_options");
    const v = so.include_usage;
    if (v !== undefined && v !== null && typeof v !== "boolean")
      throw new InvalidArgumentError("stream_options.include_usage", `expected true or false, got ${show(v)}`);
    includeUsage = v === true;
  }
  return { n, stream, includeUsage };
}

export function parseMessages(v: unknown, field = "messages"): ChatMessage[] {
  if (!Array.isArray(v)) throw new InvalidArgumentError(field, `expected an array of messages, got ${typeName(v)}`);
  if (v.length === 0) throw new InvalidArgumentError(field, "must contain at least one message");
  if (v.length > MAX_MESSAGES) throw new InvalidArgumentError(field, `at most ${MAX_MESSAGES} messages, got ${v.length}`);
  const messages = v.map((raw, i): ChatMessage => {
    const f = `${field}[${i}]`;
    const m = asObject(raw, f);
    // "developer" is OpenAI's newer name for the system role; tool results are user input (see tools.ts).
    const role = m.role === "developer" ? "system" : m.role === "tool" ? "user" : m.role;
    if (role !== "system" && role !== "user" && role !== "assistant")
      throw new InvalidArgumentError(`${f}.role`, `expected system, user, assistant or tool, got ${show(m.role)}`);
    // An assistant turn that only called tools has no content.
    const callsOnly = role === "assistant" && (m.content === null || m.content === undefined) && Array.isArray(m.tool_calls) && m.tool_calls.length > 0;
    return { role, content: callsOnly ? "" : parseContent(m.content, `${f}.content`) };
  });
  if (!messages.some((m) => m.role === "user")) throw new InvalidArgumentError(field, "needs at least one user message");
  return messages;
}

// A string, or OpenAI's array of content parts of which only text parts are supported.
function parseContent(v: unknown, field: string): string {
  if (typeof v === "string") return v;
  if (!Array.isArray(v)) throw new InvalidArgumentError(field, `expected a string or an array of text parts, got ${typeName(v)}`);
  return v
    .map((p, i) => {
      const part = asObject(p, `${field}[${i}]`);
      if (part.type !== "text" || typeof part.text !== "string")
        throw new InvalidArgumentError(`${field}[${i}]`, `only {"type":"text","text":"..."} parts are supported`);
      return part.text;
    })
    .join("");
}

export function parsePrompt(v: unknown, field = "prompt"): string {
  if (typeof v === "string") return v;
  if (Array.isArray(v) && v.length === 1 && typeof v[0] === "string") return v[0];
  throw new InvalidArgumentError(field, `expected a string (token arrays and batches of prompts are not supported here), got ${typeName(v)}`);
}

/** A completion prompt: a text (BOS is prepended) or token ids (taken as they are). */
export type PromptInput = string | number[];

/** Prompts per completions request (each with its n choices, all batched together). */
const MAX_PROMPTS = 64;
/** Choices per request: prompts x n. */
const MAX_CHOICES = 64;

/**
 * OpenAI's completion prompt: a string, an array of token ids, or a batch of either (an array of
 * strings and / or arrays of token ids). Each id must be an integer in [0, vocabSize).
 */
export function parsePrompts(v: unknown, vocabSize: number, field = "prompt"): PromptInput[] {
  if (typeof v === "string") return [v];
  if (!Array.isArray(v)) throw new InvalidArgumentError(field, `expected a string, an array of token ids or an array of prompts, got ${typeName(v)}`);
  if (v.length === 0) throw new InvalidArgumentError(field, "is an empty array");
  if (typeof v[0] === "number") return [parseTokenIds(v, vocabSize, field)];
  if (v.length > MAX_PROMPTS) throw new InvalidArgumentError(field, `at most ${MAX_PROMPTS} prompts per request, got ${v.length}`);
  return v.map((p, i) => {
    if (typeof p === "string") return p;
    if (Array.isArray(p)) return parseTokenIds(p, vocabSize, `${field}[${i}]`);
    throw new InvalidArgumentError(`${field}[${i}]`, `expected a string or an array of token ids, got ${typeName(p)}`);
  });
}

function parseTokenIds(v: unknown[], vocabSize: number, field: string): number[] {
  if (v.length === 0) throw new InvalidArgumentError(field, "is an empty array of token ids");
  return v.map((id, i) => {
    if (typeof id !== "number" || !Number.isInteger(id) || id < 0 || id >= vocabSize)
      throw new InvalidArgumentError(`${field}[${i}]`, `expected a token id (an integer in [0, ${vocabSize})), got ${show(id)}`);
    return id;
  });
}

export function parseChatRequest(body: unknown, vocabSize: number): ParsedRequest & { messages: ChatMessage[]; tools?: ToolRequest } {
  const o = asObject(body, "body");
  if (o.messages === undefined) throw new InvalidArgumentError("messages", "is required");
  let messages = parseMessages(o.messages);
  refuseUnsupportedChat(o);
  const sampling = parseSampling(o, vocabSize);
  const tools = parseTools(o);
  const raw = o.messages as Body[];
  if (tools || raw.some((m) => m.role === "tool" || (Array.isArray(m.tool_calls) && m.tool_calls.length > 0))) messages = dialogWithTools(raw, messages, tools);
  if (tools) {
    if (sampling.options.responseFormat) {
      const field = sampling.options.responseFormat.type === "grammar" ? "grammar" : "response_format";
      throw new InvalidArgumentError(field, `a ${field === "grammar" ? "grammar" : "response format"} together with tools is not supported`);
    }
    sampling.options.responseFormat = toolsFormat(tools);
  }
  // logprobs: true reports each token's log-probability; top_logprobs (0..20) adds that many alternatives.
  const top = numberField(o, "top_logprobs", 0, 20, { int: true });
  if (boolField(o, "logprobs")) sampling.options.logprobs = top ?? 0;
  else if (top !== undefined) throw new InvalidArgumentError("top_logprobs", "needs logprobs: true");
  return { messages, ...sampling, ...parseStreaming(o), ...(tools && { tools }) };
}

// Silently dropping these would hand the client something it did not ask for, so they are refused;
// their "off" values are accepted. (The deprecated functions API: tools replace it.)
function refuseUnsupportedChat(o: Body): void {
  const set = (k: string): boolean => o[k] !== undefined && o[k] !== null;
  for (const k of ["functions", "function_call"])
    if (set(k)) throw new InvalidArgumentError(k, "the deprecated functions API is not supported: use tools");
}

export function parseCompletionRequest(body: unknown, vocabSize: number): ParsedRequest & { prompts: PromptInput[]; echo: boolean; suffix?: string } {
  const o = asObject(body, "body");
  if (o.prompt === undefined) throw new InvalidArgumentError("prompt", "is required");
  const prompts = parsePrompts(o.prompt, vocabSize);
  const echo = boolField(o, "echo") ?? false;
  // suffix: fill in the middle (models trained for it), of text prompts, without echo. "" is no suffix (as before).
  const suffix = o.suffix === undefined || o.suffix === null || o.suffix === "" ? undefined : o.suffix;
  if (suffix !== undefined) {
    if (typeof suffix !== "string") throw new InvalidArgumentError("suffix", `expected a string, got ${typeName(suffix)}`);
    if (prompts.some((p) => typeof p !== "string")) throw new InvalidArgumentError("suffix", "needs a text prompt (not token ids)");
    if (echo) throw new InvalidArgumentError("suffix", "cannot be used with echo");
  }
  const bestOf = numberField(o, "best_of", 1, 128, { int: true });
  if (bestOf !== undefined && bestOf !== 1) throw new InvalidArgumentError("best_of", `only best_of=1 is supported, got ${bestOf}`);
  // max_tokens 0 with echo: the prompt (and its log-probabilities) alone, as lm-evaluation-harness asks.
  const maxField = o.max_tokens !== undefined && o.max_tokens !== null ? "max_tokens" : "max_completion_tokens";
  const zero = o[maxField] === 0;
  if (zero && !echo) throw new InvalidArgumentError(maxField, "0 is only allowed with echo: true (the prompt alone, with its logprobs)");
  const sampling = parseSampling(zero ? { ...o, max_tokens: undefined, max_completion_tokens: undefined } : o, vocabSize);
  if (zero) Object.assign(sampling, { maxTokens: 0, maxTokensField: maxField });
  // The legacy endpoint's logprobs: how many alternatives per token (0..5); each token's own is always given.
  const logprobs = numberField(o, "logprobs", 0, 5, { int: true });
  if (logprobs !== undefined) sampling.options.logprobs = logprobs;
  const streaming = parseStreaming(o);
  if (prompts.length * streaming.n > MAX_CHOICES)
    throw new InvalidArgumentError("n", `${prompts.length} prompts x n=${streaming.n} is more than ${MAX_CHOICES} choices per request`);
  return { prompts, echo, ...(suffix !== undefined && { suffix: suffix as string }), ...sampling, ...streaming };
}

/**
 * max_tokens bounded by the context left after the prompt; absent -> all of it. `maxField`: where it came
 * from. With `contextShift` the reply may pass the context: any max_tokens, absent -> the context length.
 */
export function resolveMaxTokens(
  requested: number | undefined,
  promptTokens: number,
  contextLength: number,
  promptField: string,
  maxField = "max_tokens",
  contextShift = false,
): number {
  const room = contextLength - promptTokens;
  if (room < 1)
    throw new ContextLengthError(promptField, `the prompt is ${promptTokens} tokens; the model's context is ${contextLength} tokens, which leaves no room to generate`);
  if (contextShift) return requested ?? contextLength;
  if (requested !== undefined && requested > room)
    throw new ContextLengthError(
      maxField,
      `${requested} + ${promptTokens} prompt tokens exceeds the model's context of ${contextLength} tokens (at most ${room} here)`,
    );
  return requested ?? room;
}

/** Inputs per embeddings request (OpenAI's limit). */
const MAX_EMBED_INPUTS = 2048;

export interface EmbeddingRequest {
  inputs: PromptInput[];
  /** Sent as an array of inputs: errors name input[i] rather than input. */
  batch: boolean;
  encodingFormat: "float" | "base64";
  /** Extensions (EmbedOptions): absent -> the library's defaults (mean, normalized). */
  pooling?: "mean" | "last";
  normalize?: boolean;
}

/**
 * OpenAI's embeddings request: `input` a string, an array of token ids, or an array of either (strings
 * and / or arrays of token ids); `encoding_format` "float" or "base64"; `dimensions` only the model's own
 * (`dim`: the vectors are not truncated). `pooling` ("mean" / "last") and `normalize` are extensions.
 */
export function parseEmbeddingRequest(body: unknown, vocabSize: number, dim: number): EmbeddingRequest {
  const o = asObject(body, "body");
  if (o.input === undefined || o.input === null) throw new InvalidArgumentError("input", "is required");
  const { inputs, batch } = parseEmbeddingInputs(o.input, vocabSize);
  const format = o.encoding_format ?? "float";
  if (format !== "float" && format !== "base64") throw new InvalidArgumentError("encoding_format", `expected "float" or "base64", got ${show(format)}`);
  const dimensions = numberField(o, "dimensions", 1, 1 << 24, { int: true });
  if (dimensions !== undefined && dimensions !== dim)
    throw new InvalidArgumentError("dimensions", `this model's embeddings have ${dim} dimensions (they cannot be shortened), got ${dimensions}`);
  const pooling = o.pooling ?? undefined;
  if (pooling !== undefined && pooling !== "mean" && pooling !== "last") throw new InvalidArgumentError("pooling", `expected "mean" or "last", got ${show(pooling)}`);
  const normalize = boolField(o, "normalize");
  stringField(o, "user");
  stringField(o, "model");
  return { inputs, batch, encodingFormat: format, ...(pooling !== undefined && { pooling }), ...(normalize !== undefined && { normalize }) };
}

function parseEmbeddingInputs(v: unknown, vocabSize: number): { inputs: PromptInput[]; batch: boolean } {
  const text = (s: string, field: string): string => {
    if (s.length === 0) throw new InvalidArgumentError(field, "is an empty string (nothing to embed)");
    return s;
  };
  if (typeof v === "string") return { inputs: [text(v, "input")], batch: false };
  if (!Array.isArray(v)) throw new InvalidArgumentError("input", `expected a string, an array of token ids or an array of inputs, got ${typeName(v)}`);
  if (v.length === 0) throw new InvalidArgumentError("input", "is an empty array");
  if (typeof v[0] === "number") return { inputs: [parseTokenIds(v, vocabSize, "input")], batch: false };
  if (v.length > MAX_EMBED_INPUTS) throw new InvalidArgumentError("input", `at most ${MAX_EMBED_INPUTS} inputs per request, got ${v.length}`);
  const inputs = v.map((x, i) => {
    if (typeof x === "string") return text(x, `input[${i}]`);
    if (Array.isArray(x)) return parseTokenIds(x, vocabSize, `input[${i}]`);
    throw new InvalidArgumentError(`input[${i}]`, `expected a string or an array of token ids, got ${typeName(x)}`);
  });
  return { inputs, batch: true };
}
