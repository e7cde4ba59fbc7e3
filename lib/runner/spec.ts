// The job spec: what `llama2 run` was asked to do, validated from CLI flags before anything is loaded.
import path from "node:path";
import { MAX_DRAFT_TOKENS } from "../engine/draft-model.js";
import { InvalidArgumentError } from "../errors.js";
import { parseDuration } from "./duration.js";
import { formatHubRef, isHubRef, parseHubRef } from "../hub/refs.js";
import { parseChatTemplateFlag, parseLoraFlags, parseRopeScalingFlag } from "../cli/load-flags.js";
import type { LoraOptions, RopeScalingOptions } from "../types.js";

export interface SamplingDefaults {
  maxTokens?: number;
  temperature?: number;
  topP?: number;
  seed?: number;
}

export interface JobSpec {
  name?: string;
  handler: string;
  /** Model path (absolute), "demo", or a Hugging Face reference (hf:owner/repo[/file], pulled when the job starts). */
  model: string;
  device: "auto" | "cpu" | "cuda";
  deviceIndex?: number;
  dtype: "auto" | "f16" | "int8" | "q4";
  kvCacheType: "auto" | "int8";
  /** CPU backend: int8 / 4-bit matrices take int8-rounded inputs (LoadOptions.cpuActivations). */
  cpuActivations?: "int8";
  contextLength?: number;
  /** Overrides the file's rotary scaling (LoadOptions.ropeScaling). */
  ropeScaling?: RopeScalingOptions;
  /** LoRA adapters merged at load (LoadOptions.lora; paths absolute). */
  lora?: LoraOptions[];
  /** The chat template chat requests use (LoadOptions.chatTemplate; default auto). */
  chatTemplate?: string;
  /** Full-context sequences the KV cache holds (more shorter ones fit; default 4). */
  maxSequences?: number;
  /** Speculative decoding: a draft model (path, "demo" or Hub reference) and its tokens per step. */
  draftModel?: string;
  draftTokens?: number;
  /** Unload the model and end the job after this long in `running`. */
  autoReleaseMs?: number;
  /** On release/cancel, how long in-flight requests may still run before they are cut. */
  graceMs: number;
  host: string;
  port: number;
  apiKey?: string;
  cors?: string;
  dataset?: string;
  out?: string;
  concurrency: number;
  sampling: SamplingDefaults;
}

export const DEFAULT_GRACE_MS = 5000;

type Flags = Record<string, unknown>;

function str(flags: Flags, key: string): string | undefined {
  const v = flags[key];
  return typeof v === "string" ? v : undefined;
}

function num(flags: Flags, key: string): number | undefined {
  const v = flags[key];
  return typeof v === "number" ? v : undefined;
}

function kebab(key: string): string {
  return "--" + key.replace(/[A-Z]/g, (c) => "-" + c.toLowerCase());
}

function range(flags: Flags, key: string, lo: number, hi: number, opts: { int?: boolean; loOpen?: boolean } = {}): number | undefined {
  const v = num(flags, key);
  if (v === undefined) return undefined;
  if (opts.int && !Number.isSafeInteger(v)) throw new InvalidArgumentError(kebab(key), `expected an integer, got ${v}`);
  if ((opts.loOpen ? v <= lo : v < lo) || v > hi)
    throw new InvalidArgumentError(kebab(key), `must be in ${opts.loOpen ? "(" : "["}${lo}, ${hi}], got ${v}`);
  return v;
}

export function parseDevice(raw: string): { device: JobSpec["device"]; deviceIndex?: number } {
  if (raw === "auto" || raw === "cpu" || raw === "cuda") return { device: raw };
  const m = /^cuda:(\d{1,2})$/.exec(raw);
  if (m) return { device: "cuda", deviceIndex: Number(m[1]) };
  throw new InvalidArgumentError("--device", `expected auto, cpu, cuda or cuda:N, got '${raw}'`);
}

/** Validates an origin for --cors: "*" or scheme://host[:port] exactly. */
export function parseOrigin(raw: string): string {
  if (raw === "*") return raw;
  let url: URL | undefined;
  try {
    url = new URL(raw);
  } catch {
    url = undefined;
  }
  if (!url || (url.protocol !== "http:" && url.protocol !== "https:") || url.origin !== raw)
    throw new InvalidArgumentError("--cors", `expected an origin like https://example.com (no path or trailing slash) or *, got '${raw}'`);
  return raw;
}

export function parseApiKey(raw: string): string {
  // Visible ASCII only: the key travels in an HTTP header and is compared byte for byte.
  if (!/^[\x21-\x7e]{8,512}$/.test(raw))
    throw new InvalidArgumentError("--api-key", "must be 8 to 512 visible ASCII characters (no spaces)");
  return raw;
}

// Flags only the evaluation handler reads (`llama2 run --help` says "evaluation: ..."): given to another
// handler they would be silently ignored, e.g. a --max-tokens that a chatbot's clients never get.
const EVALUATION_FLAGS = ["dataset", "out", "concurrency", "maxTokens", "temperature", "topP", "seed"];

export function parseRunSpec(flags: Flags): JobSpec {
  const handler = str(flags, "handler") ?? "chatbot";
  if (handler !== "evaluation") {
    const given = EVALUATION_FLAGS.find((k) => flags[k] !== undefined);
    if (given) throw new InvalidArgumentError(kebab(given), `only for --handler evaluation (this job's handler is ${handler})`);
  }
  const modelRaw = str(flags, "model") ?? "demo";
  if (modelRaw.trim() === "") throw new InvalidArgumentError("--model", "must be a path, 'demo' or a Hugging Face reference (hf:owner/repo/file.gguf, llama2-7b-chat)");
  const name = str(flags, "name");
  if (name !== undefined && !/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(name))
    throw new InvalidArgumentError("--name", "1-64 characters: letters, digits, '.', '_' or '-'");
  const dtype = str(flags, "dtype") ?? "auto";
  if (dtype !== "auto" && dtype !== "f16" && dtype !== "int8" && dtype !== "q4")
    throw new InvalidArgumentError("--dtype", `expected auto, f16, int8 or q4, got '${dtype}'`);
  const cpuActivations = str(flags, "cpuActivations") ?? "f32";
  if (cpuActivations !== "f32" && cpuActivations !== "int8")
    throw new InvalidArgumentError("--cpu-activations", `expected f32 or int8, got '${cpuActivations}'`);
  const kvCacheType = str(flags, "kvCache") ?? "auto";
  if (kvCacheType !== "auto" && kvCacheType !== "int8") throw new InvalidArgumentError("--kv-cache", `expected auto or int8, got '${kvCacheType}'`);
  const host = str(flags, "host") ?? "127.0.0.1";
  if (!/^[A-Za-z0-9.:\-\[\]]{1,253}$/.test(host)) throw new InvalidArgumentError("--host", `not a host name or address: '${host}'`);
  const autoRelease = str(flags, "autoRelease");
  const grace = str(flags, "grace");
  const apiKey = str(flags, "apiKey");
  const cors = str(flags, "cors");
  const dataset = str(flags, "dataset");
  const out = str(flags, "out");
  const lora = parseLoraFlags(flags);
  const draftRaw = str(flags, "draftModel");
  if (draftRaw !== undefined && draftRaw.trim() === "") throw new InvalidArgumentError("--draft-model", "must be a path, 'demo' or a Hugging Face reference");
  if (flags.draftTokens !== undefined && draftRaw === undefined) throw new InvalidArgumentError("--draft-tokens", "needs --draft-model");
  return {
    ...(name !== undefined && { name }),
    handler,
    model: resolveModelRef(modelRaw, "--model"),
    ...parseDevice(str(flags, "device") ?? "auto"),
    dtype,
    kvCacheType,
    ...(cpuActivations === "int8" && { cpuActivations }),
    ...(flags.context !== undefined && { contextLength: range(flags, "context", 16, 1 << 20, { int: true }) }),
    ...(str(flags, "ropeScaling") !== undefined && { ropeScaling: parseRopeScalingFlag(str(flags, "ropeScaling")!) }),
    ...(lora && { lora: lora.map((a) => ({ ...a, path: path.resolve(a.path) })) }),
    ...(flags.chatTemplate !== undefined && { chatTemplate: parseChatTemplateFlag(flags.chatTemplate, "--chat-template")! }),
    ...(flags.maxSequences !== undefined && { maxSequences: range(flags, "maxSequences", 1, 4096, { int: true }) }),
    ...(draftRaw !== undefined && { draftModel: resolveModelRef(draftRaw, "--draft-model") }),
    ...(flags.draftTokens !== undefined && { draftTokens: range(flags, "draftTokens", 1, MAX_DRAFT_TOKENS, { int: true }) }),
    ...(autoRelease !== undefined && autoRelease !== "off" && { autoReleaseMs: parseDuration("--auto-release", autoRelease) }),
    graceMs: grace !== undefined ? parseDuration("--grace", grace) : DEFAULT_GRACE_MS,
    host: host.replace(/^\[(.*)\]$/, "$1"),
    port: range(flags, "port", 0, 65535, { int: true }) ?? 8080,
    ...(apiKey !== undefined && { apiKey: parseApiKey(apiKey) }),
    ...(cors !== undefined && { cors: parseOrigin(cors) }),
    ...(dataset !== undefined && { dataset: path.resolve(dataset) }),
    ...(out !== undefined && { out: path.resolve(out) }),
    concurrency: range(flags, "concurrency", 1, 256, { int: true }) ?? 1,
    sampling: dropUndefined({
      maxTokens: range(flags, "maxTokens", 1, 1 << 20, { int: true }),
      temperature: range(flags, "temperature", 0, 2),
      topP: range(flags, "topP", 0, 1, { loOpen: true }),
      seed: range(flags, "seed", 0, Number.MAX_SAFE_INTEGER, { int: true }),
    }),
  };
}

/** "demo", a Hub reference (normalized) or an absolute path. */
function resolveModelRef(raw: string, flag: string): string {
  return raw === "demo" ? "demo" : isHubRef(raw) ? formatHubRef(parseHubRef(raw, flag)) : path.resolve(raw);
}

function dropUndefined<T extends object>(o: T): T {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as T;
}

/** The spec as written to job.json and served on /job: never the API key. */
export function redactSpec(spec: JobSpec): Omit<JobSpec, "apiKey"> & { apiKey?: "***" } {
  const { apiKey, ...rest } = spec;
  return apiKey === undefined ? rest : { ...rest, apiKey: "***" };
}
