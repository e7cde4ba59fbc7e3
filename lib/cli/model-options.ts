// Flags shared by the commands that load a model (generate, chat): loading (--model, --device, ...)
// and sampling (--temperature, --stop, ...). Values are checked before the model loads, and every
// library error about an option is reported under its flag's name (`--top-k: must be ...`).
import type { FlagSpecs } from "./args.js";
import type { CommandIO } from "./command.js";
import { InvalidArgumentError, Llama2Error } from "../errors.js";
import { parseGrammar } from "../grammar/gbnf.js";
import { draftMismatch, MAX_DRAFT_TOKENS } from "../engine/draft-model.js";
import { compileResponseFormat } from "../grammar/response-format.js";
import type { Llama2 } from "../llama2.js";
import { Sampler } from "../sampler.js";
import { readFlagFile } from "./read-input.js";
import { CHAT_TEMPLATE_FLAG, LORA_FLAGS, ROPE_SCALING_FLAG, parseChatTemplateFlag, parseLoraFlags, parseRopeScalingFlag } from "./load-flags.js";
import { StopMatcher } from "../stop.js";
import type { CpuActivations, Device, GenerateOptions, JsonSchema, KvCacheType, LoadOptions, ResponseFormat, WeightDtype } from "../types.js";

export const LOAD_FLAGS: FlagSpecs = {
  model: { type: "string", alias: "m", description: "model: Hugging Face directory, .gguf, llama2.c .bin, or demo (the built-in demo model)" },
  device: { type: "string", description: "cpu, cuda or auto", default: "auto" },
  dtype: { type: "string", description: "weight precision on the device: auto, f32, f16, bf16, int8 or q4", default: "auto" },
  "kv-cache": { type: "string", description: "KV cache precision: auto (CPU fp32, CUDA fp16) or int8 (half of fp16's memory)", default: "auto" },
  context: { type: "int", description: "context length in tokens (default: the model's, at most 4096)" },
  threads: { type: "int", description: "CPU threads (default: the physical cores usable, see llama2 doctor)" },
  "cpu-activations": {
    type: "string",
    description: "CPU: f32 (exact) or int8 (int8 / 4-bit matrices take int8-rounded inputs, as llama.cpp: faster decoding)",
    default: "f32",
  },
  "rope-scaling": ROPE_SCALING_FLAG,
  lora: LORA_FLAGS.lora!,
  "lora-scale": LORA_FLAGS["lora-scale"]!,
  tokenizer: { type: "string", description: "tokenizer.model (or a Llama tokenizer.json), for models that do not carry one" },
  "chat-template": CHAT_TEMPLATE_FLAG,
  quiet: { type: "boolean", alias: "q", description: "nothing on stderr but errors" },
};

export const SAMPLING_FLAGS: FlagSpecs = {
  "max-tokens": { type: "int", alias: "n", description: "most tokens to generate (default: until EOS or the context is full)" },
  temperature: { type: "number", alias: "t", description: "0 = greedy (default 0.8)" },
  "top-k": { type: "int", description: "0 = off (default 40)" },
  "top-p": { type: "number", description: "1 = off (default 0.95)" },
  "min-p": { type: "number", description: "0 = off (default 0.05)" },
  "repetition-penalty": { type: "number", description: "1 = off (default 1)" },
  seed: { type: "int", description: "seed for reproducible sampling (default: random)" },
  stop: {
    type: "string",
    repeatable: true,
    description: "stop string; a comma list, '\\,' for a comma, '\\n' '\\t' '\\\\' escapes",
  },
  "no-stop": { type: "boolean", description: "ignore EOS: generate until --max-tokens or the context is full" },
  "json-object": { type: "boolean", description: "constrain the output to one JSON object" },
  "json-schema": { type: "string", description: "constrain the output to JSON matching this JSON Schema (a file, or the schema itself starting with '{')" },
  grammar: { type: "string", description: "constrain the output to a GBNF grammar (a file, or the rules themselves when they contain '::=')" },
  lookup: { type: "int", description: `prompt lookup decoding: up to N draft tokens per step copied from the text so far (0-${MAX_DRAFT_TOKENS}; same output, fewer steps when the reply repeats its input)` },
};

/** Speculative decoding with a draft model (generate, chat). */
export const DRAFT_FLAGS: FlagSpecs = {
  "draft-model": { type: "string", description: "speculative decoding: a smaller model with the same vocabulary drafts tokens that the model checks (same output)" },
  "draft-tokens": { type: "int", description: `most tokens the draft model proposes per step (1-${MAX_DRAFT_TOKENS}, default 8)` },
};

/** Checks --draft-model / --draft-tokens before anything loads; true when a draft model is asked for. */
export function checkDraftFlags(flags: Record<string, unknown>): boolean {
  const tokens = flags.draftTokens as number | undefined;
  if (tokens !== undefined && (!Number.isInteger(tokens) || tokens < 1 || tokens > MAX_DRAFT_TOKENS))
    throw new InvalidArgumentError("--draft-tokens", `expected 1..${MAX_DRAFT_TOKENS}, got ${tokens}`);
  if (flags.draftModel === undefined) {
    if (tokens !== undefined) throw new InvalidArgumentError("--draft-tokens", "needs --draft-model");
    return false;
  }
  if (typeof flags.draftModel !== "string" || flags.draftModel === "") throw new InvalidArgumentError("--draft-model", "expected a model path");
  if (flags.lookup !== undefined && flags.lookup !== 0) throw new InvalidArgumentError("--draft-model", "cannot be combined with --lookup");
  return true;
}

/**
 * Loads --draft-model beside `target` (same device and context) and returns the `draft` generate option;
 * undefined without the flag. Its vocabulary must be the target's.
 */
export async function loadDraftFromFlags(flags: Record<string, unknown>, io: CommandIO, target: Llama2, signal?: AbortSignal): Promise<GenerateOptions["draft"]> {
  if (!checkDraftFlags(flags)) return undefined;
  const tokens = flags.draftTokens as number | undefined;
  const path = await resolveModelFlag(flags.draftModel as string, flags.quiet ? undefined : io, signal);
  const { Llama2 } = await import("../llama2.js");
  const t = target.info;
  const model = await withFlagNames(
    () => Llama2.load(path, { device: t.device, contextLength: t.contextLength, ...(signal && { signal }) }),
    { path: "--draft-model" },
  );
  const d = model.info;
  const mismatch = draftMismatch(t, d);
  if (mismatch) {
    await model.dispose();
    throw new InvalidArgumentError("--draft-model", `${d.path}: ${mismatch}`);
  }
  if (!flags.quiet) io.stderr.write(`[llama2] draft model ${d.path} (${d.dtype}, ${d.deviceName})\n`);
  return { model, ...(tokens !== undefined && { tokens }) };
}

/** Option field (as the library names it) -> the flag that sets it. */
const FLAG_OF: Record<string, string> = {
  device: "--device",
  dtype: "--dtype",
  kvCacheType: "--kv-cache",
  contextLength: "--context",
  threads: "--threads",
  cpuActivations: "--cpu-activations",
  ropeScaling: "--rope-scaling",
  lora: "--lora",
  tokenizerPath: "--tokenizer",
  maxTokens: "--max-tokens",
  temperature: "--temperature",
  topK: "--top-k",
  topP: "--top-p",
  minP: "--min-p",
  repetitionPenalty: "--repetition-penalty",
  seed: "--seed",
  stop: "--stop",
  lookup: "--lookup",
};

/**
 * Rewrites an option error from the library (`topK: ...`) to name the flag (`--top-k: ...`).
 * `extra` maps more fields (a command's own, e.g. prompt -> --prompt-ids).
 */
export function asFlagError(err: unknown, extra: Record<string, string> = {}): unknown {
  if (!(err instanceof Llama2Error) || err.code !== "ERR_INVALID_ARGUMENT") return err;
  const m = /^([A-Za-z]+)(\[\d+\])?: ([\s\S]*)$/.exec(err.message);
  const flag = m ? (extra[m[1]!] ?? FLAG_OF[m[1]!]) : undefined;
  return flag ? new InvalidArgumentError(flag, (m![2] ? `${m![1]}${m![2]}: ` : "") + m![3]!) : err;
}

/** Runs `fn`, reporting option errors under their flag names. */
export async function withFlagNames<T>(fn: () => T | Promise<T>, extra?: Record<string, string>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    throw asFlagError(err, extra);
  }
}

/** `--stop` values: each is a comma list with backslash escapes (\, \n \t \r \\). */
export function parseStopFlag(values: readonly string[] | undefined): string[] {
  const out: string[] = [];
  for (const v of values ?? []) {
    let cur = "";
    for (let i = 0; i < v.length; i++) {
      const c = v[i]!;
      if (c === "\\" && i + 1 < v.length) {
        const n = v[++i]!;
        cur += n === "n" ? "\n" : n === "t" ? "\t" : n === "r" ? "\r" : n;
      } else if (c === ",") {
        if (cur !== "") out.push(cur);
        cur = "";
      } else {
        cur += c;
      }
    }
    if (cur !== "") out.push(cur);
  }
  return out;
}

/** Load options from the flags, checked (the model path is `flags.model`). */
export function loadOptionsFromFlags(flags: Record<string, unknown>): LoadOptions {
  const device = flags.device as string;
  if (!["auto", "cpu", "cuda"].includes(device)) throw new InvalidArgumentError("--device", `expected cpu, cuda or auto, got '${device}'`);
  const dtype = flags.dtype as string;
  if (!["auto", "f32", "f16", "bf16", "int8", "q4"].includes(dtype)) {
    throw new InvalidArgumentError("--dtype", `expected auto, f32, f16, bf16, int8 or q4, got '${dtype}'`);
  }
  const kvCache = flags.kvCache as string;
  if (!["auto", "int8"].includes(kvCache)) throw new InvalidArgumentError("--kv-cache", `expected auto or int8, got '${kvCache}'`);
  const context = flags.context as number | undefined;
  if (context !== undefined && (context < 1 || context > 1 << 20)) throw new InvalidArgumentError("--context", `expected 1..${1 << 20}, got ${context}`);
  const threads = flags.threads as number | undefined;
  if (threads !== undefined && (threads < 0 || threads > 1024)) throw new InvalidArgumentError("--threads", `expected 0..1024, got ${threads}`);
  const cpuActivations = (flags.cpuActivations as string | undefined) ?? "f32";
  if (!["f32", "int8"].includes(cpuActivations)) throw new InvalidArgumentError("--cpu-activations", `expected f32 or int8, got '${cpuActivations}'`);
  const opts: LoadOptions = { device: device as Device, dtype: dtype as WeightDtype };
  if (cpuActivations !== "f32") opts.cpuActivations = cpuActivations as CpuActivations;
  if (kvCache !== "auto") opts.kvCacheType = kvCache as KvCacheType;
  if (context !== undefined) opts.contextLength = context;
  if (threads !== undefined) opts.threads = threads;
  if (typeof flags.tokenizer === "string") opts.tokenizerPath = flags.tokenizer;
  if (typeof flags.ropeScaling === "string") opts.ropeScaling = parseRopeScalingFlag(flags.ropeScaling);
  const chatTemplate = parseChatTemplateFlag(flags.chatTemplate, "--chat-template");
  if (chatTemplate !== undefined) opts.chatTemplate = chatTemplate;
  const lora = parseLoraFlags(flags);
  if (lora) opts.lora = lora;
  return opts;
}

/** --json-object / --json-schema FILE|JSON, compiled (errors name the flag and the schema's keyword). */
function responseFormatFromFlags(flags: Record<string, unknown>): ResponseFormat | undefined {
  const gbnf = flags.grammar as string | undefined;
  if (gbnf !== undefined) {
    if (flags.jsonSchema !== undefined || flags.jsonObject === true) throw new InvalidArgumentError("--grammar", "cannot be combined with --json-object or --json-schema");
    const text = gbnf.includes("::=") ? gbnf : readFlagFile("--grammar", gbnf);
    parseGrammar(text, "--grammar");
    return { type: "grammar", grammar: text };
  }
  const raw = flags.jsonSchema as string | undefined;
  if (raw === undefined) return flags.jsonObject === true ? { type: "json_object" } : undefined;
  const text = raw.trimStart().startsWith("{") ? raw : readFlagFile("--json-schema", raw);
  let schema: JsonSchema;
  try {
    schema = JSON.parse(text) as JsonSchema;
  } catch (err) {
    throw new InvalidArgumentError("--json-schema", `${raw === text ? "the schema" : raw} is not valid JSON: ${(err as Error).message}`);
  }
  const format: ResponseFormat = flags.jsonObject === true ? { type: "json_object", schema } : { type: "json_schema", schema };
  compileResponseFormat(format, "--json-schema");
  return format;
}

/** Generation options from the sampling flags, checked. */
export function generateOptionsFromFlags(flags: Record<string, unknown>): GenerateOptions {
  const opts: GenerateOptions = {};
  const set = <K extends keyof GenerateOptions>(k: K, flag: string) => {
    const v = flags[flag];
    if (v !== undefined) opts[k] = v as GenerateOptions[K];
  };
  set("maxTokens", "maxTokens");
  set("temperature", "temperature");
  set("topK", "topK");
  set("topP", "topP");
  set("minP", "minP");
  set("repetitionPenalty", "repetitionPenalty");
  set("seed", "seed");
  set("lookup", "lookup");
  if (opts.lookup !== undefined && (opts.lookup < 0 || opts.lookup > MAX_DRAFT_TOKENS)) throw new InvalidArgumentError("--lookup", `expected 0..${MAX_DRAFT_TOKENS}, got ${opts.lookup}`);
  if (opts.maxTokens !== undefined && (opts.maxTokens < 1 || opts.maxTokens > 1 << 20)) {
    throw new InvalidArgumentError("--max-tokens", `expected 1..${1 << 20}, got ${opts.maxTokens}`);
  }
  const stop = parseStopFlag(flags.stop as string[] | undefined);
  if ((flags.stop as string[] | undefined)?.length && stop.length === 0) throw new InvalidArgumentError("--stop", "is empty");
  if (stop.length > 0) opts.stop = stop;
  if (flags.noStop === true) opts.stopOnEos = false;
  const format = responseFormatFromFlags(flags);
  if (format) opts.responseFormat = format;
  try {
    Sampler.validate(opts, Number.MAX_SAFE_INTEGER);
    StopMatcher.validate(opts.stop);
  } catch (err) {
    throw asFlagError(err);
  }
  return opts;
}

/**
 * The path a `--model` value names: `demo` is the built-in demo model (generated into ~/.llama2/models on
 * first use, as `llama2 run` does; a file or folder called demo is `./demo`); a Hugging Face reference
 * (an alias such as llama2-7b-chat, hf:owner/repo[/file.gguf], a huggingface.co URL) is downloaded on
 * first use, with progress on `io.stderr`.
 */
export async function resolveModelFlag(value: string, io?: CommandIO, signal?: AbortSignal): Promise<string> {
  if (value === "demo") {
    const { ensureDemoModel } = await import("../synth/demo.js");
    return ensureDemoModel();
  }
  const { isHubRef } = await import("../hub/refs.js");
  if (!isHubRef(value)) return value;
  return withFlagNames(() => pullWithProgress(value, io, signal ? { signal } : {}), { model: "--model" });
}

/** pullModel with a progress line on io.stderr (none without io). */
export async function pullWithProgress(value: string, io: CommandIO | undefined, opts: import("../hub/pull.js").PullOptions): Promise<string> {
  const { pullModel } = await import("../hub/pull.js");
  if (!io) return pullModel(value, opts);
  const { ProgressLine, formatBytes } = await import("../runner/progress.js");
  const progress = new ProgressLine(io.stderr);
  const t0 = performance.now();
  try {
    return await pullModel(value, {
      ...opts,
      onProgress: (p) => {
        const rate = p.bytes / Math.max(1e-3, (performance.now() - t0) / 1000);
        const label = `downloading ${p.files > 1 ? `${p.file} (${p.fileIndex + 1}/${p.files})` : p.file}`;
        progress.update(label, p.bytes, p.totalBytes ?? 0, `${formatBytes(p.bytes)}${p.totalBytes ? ` / ${formatBytes(p.totalBytes)}` : ""}, ${formatBytes(rate)}/s`);
      },
    });
  } finally {
    progress.end();
  }
}

/** Loads `--model` with the load flags; a one-line summary goes to stderr unless --quiet. */
export async function loadModelFromFlags(flags: Record<string, unknown>, io: CommandIO, signal?: AbortSignal): Promise<Llama2> {
  if (typeof flags.model !== "string" || flags.model === "") throw new InvalidArgumentError("--model", "required (a model directory, .gguf or .bin, or demo)");
  const opts = loadOptionsFromFlags(flags);
  const path = await resolveModelFlag(flags.model, flags.quiet ? undefined : io, signal);
  const { Llama2 } = await import("../llama2.js");
  const t0 = performance.now();
  const model = await withFlagNames(() => Llama2.load(path, { ...opts, ...(signal && { signal }) }));
  if (!flags.quiet) {
    const i = model.info;
    io.stderr.write(
      `[llama2] loaded ${i.path} (${i.format}, ${i.dtype}, KV ${i.kvCacheType}, ${i.deviceName}, context ${i.contextLength}` +
        `${i.hasTokenizer ? "" : ", no tokenizer: token ids only"}) in ${Math.round(performance.now() - t0)} ms\n`,
    );
  }
  return model;
}
