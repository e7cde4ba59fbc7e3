// Results of other engines, converted into BenchResult rows so that `llama2 compare` puts them in
// the same table as ours (matched by model file name):
//  - llama.cpp: `llama-bench -o json` (an array of tests; pp tests -> prefill, tg tests -> decode).
//  - node-llama-cpp: the small timing JSON described below (see bench/peers/README.md for a script).
// Figures a peer does not report (TTFT from llama-bench, load time, roofline) become empty stats (n = 0).
import { BENCH_SCHEMA, stat, type BenchResult, type Stat } from "./result.js";
import { Llama2Error } from "../errors.js";

/** One test of `llama-bench -o json` (the fields used here; others are ignored). */
export interface LlamaBenchTest {
  model_filename: string;
  model_type?: string;
  model_size?: number;
  model_n_params?: number;
  n_prompt: number;
  n_gen: number;
  n_depth?: number;
  n_batch?: number;
  n_ubatch?: number;
  n_gpu_layers?: number;
  type_k?: string;
  type_v?: string;
  flash_attn?: boolean;
  backends?: string;
  gpu_info?: string;
  cpu_info?: string;
  n_threads?: number;
  build_commit?: string;
  build_number?: number;
  test_time?: string;
  avg_ts: number;
  stddev_ts: number;
  samples_ts?: number[];
}

/**
 * node-llama-cpp timings, one object per run (or an array of them):
 * prompt of `promptTokens` tokens, then greedy decoding of `genTokens` (default 128) tokens.
 */
export interface NodeLlamaCppTiming {
  engine: "node-llama-cpp";
  version: string;
  /** Model file path (its file name matches rows of other engines). */
  model: string;
  /** GPU name, or null for a CPU run. */
  gpu: string | null;
  promptTokens: number;
  prefillTokensPerSecond: number;
  decodeTokensPerSecond: number;
  genTokens?: number;
  /** Time to first token, ms. */
  ttftMs?: number;
  /** Model file size, bytes. */
  modelBytes?: number;
  createdAt?: string;
}

const EMPTY: Stat = stat([]);

function fail(source: string, what: string): never {
  throw new Llama2Error("ERR_FORMAT_UNSUPPORTED", `${source}: ${what}`);
}

function num(v: unknown): number {
  return typeof v === "number" && Number.isFinite(v) ? v : NaN;
}

/** A Stat of tokens/s from llama-bench's samples, or from its mean and stddev when absent. */
function tsStat(t: LlamaBenchTest): Stat {
  if (Array.isArray(t.samples_ts) && t.samples_ts.length) return stat(t.samples_ts);
  return { median: t.avg_ts, mean: t.avg_ts, min: t.avg_ts, max: t.avg_ts, stdev: num(t.stddev_ts) || 0, n: 1 };
}

function invert(s: Stat): Stat {
  // ms per step from tokens/s: the order of min and max swaps
  return { median: 1000 / s.median, mean: 1000 / s.mean, min: 1000 / s.max, max: 1000 / s.min, stdev: NaN, n: s.n };
}

export function isLlamaBench(json: unknown): json is LlamaBenchTest[] {
  return Array.isArray(json) && json.length > 0 && json.every((t) => t && typeof t === "object" && "avg_ts" in t && "model_filename" in t);
}

export function isNodeLlamaCpp(json: unknown): boolean {
  const items = Array.isArray(json) ? json : [json];
  return items.length > 0 && items.every((t) => t && typeof t === "object" && (t as { engine?: unknown }).engine === "node-llama-cpp");
}

/** llama-bench tests -> one BenchResult per (model, device, settings). */
export function fromLlamaBench(tests: LlamaBenchTest[], source: string): BenchResult[] {
  const groups = new Map<string, LlamaBenchTest[]>();
  for (const [i, t] of tests.entries()) {
    if (typeof t.model_filename !== "string" || !Number.isFinite(t.avg_ts) || !Number.isInteger(t.n_prompt) || !Number.isInteger(t.n_gen))
      fail(source, `test ${i} lacks model_filename, n_prompt, n_gen or avg_ts: not llama-bench JSON`);
    const key = JSON.stringify([t.model_filename, t.gpu_info, t.backends, t.build_commit, t.n_gpu_layers, t.type_k, t.type_v, t.flash_attn, t.n_batch, t.n_ubatch]);
    groups.set(key, [...(groups.get(key) ?? []), t]);
  }
  return [...groups.values()].map((g) => {
    const t = g[0]!;
    const onGpu = /cuda|metal|vulkan|rocm|hip|sycl/i.test(t.backends ?? "") && (t.n_gpu_layers ?? 99) > 0;
    const size = num(t.model_size);
    const notes = [`converted from llama-bench JSON (${source})`];
    if (g.some((x) => x.n_prompt > 0 && x.n_gen > 0)) notes.push("combined pp+tg tests are not shown");
    if (Number.isFinite(size)) notes.push("decode bytesPerStep = model_size (weights only)");
    const decode = g
      .filter((x) => x.n_gen > 0 && x.n_prompt === 0)
      .map((x) => {
        const tps = tsStat(x);
        return {
          batch: 1,
          promptTokens: x.n_depth ?? 0,
          genTokens: x.n_gen,
          tokensPerSecond: tps,
          msPerStep: invert(tps),
          bytesPerStep: size,
          achievedGBs: (size * tps.median) / 1e9,
          rooflineFraction: NaN,
        };
      });
    const prefill = g
      .filter((x) => x.n_prompt > 0 && x.n_gen === 0)
      .map((x) => ({ promptTokens: x.n_prompt, ttftMs: EMPTY, tokensPerSecond: tsStat(x) }));
    const dtype = (t.model_type ?? "").split(" ").at(-1)?.toLowerCase() || "unknown";
    const result: BenchResult = {
      schema: BENCH_SCHEMA,
      createdAt: t.test_time ?? "",
      engine: {
        name: "llama.cpp",
        version: t.build_number !== undefined ? `b${t.build_number}${t.build_commit ? ` (${t.build_commit})` : ""}` : (t.build_commit ?? "unknown"),
        backend: onGpu ? "cuda" : "cpu",
        command: "llama-bench",
      },
      machine: {
        hostname: "",
        os: "",
        cpu: { model: t.cpu_info ?? "", cores: t.n_threads ?? 0 },
        hostMemoryBytes: NaN,
        ...(onGpu ? { gpu: { name: t.gpu_info ?? "GPU", computeCapability: "", driver: "", memoryBytes: NaN, smCount: 0, measuredBandwidthGBs: NaN } } : {}),
      },
      model: {
        path: t.model_filename,
        format: "gguf",
        params: num(t.model_n_params),
        dtype,
        weightBytes: size,
        contextLength: NaN,
        config: Object.fromEntries(
          Object.entries({ model_type: t.model_type, type_k: t.type_k, type_v: t.type_v, n_batch: t.n_batch, n_ubatch: t.n_ubatch, n_gpu_layers: t.n_gpu_layers, flash_attn: t.flash_attn }).filter(
            ([, v]) => v !== undefined,
          ),
        ) as Record<string, string | number | boolean>,
      },
      load: { warmMs: EMPTY },
      prefill,
      decode,
      memory: { peakRssBytes: NaN, weightBytes: size, kvCacheBytes: NaN },
      repetitions: Math.max(0, ...g.map((x) => x.samples_ts?.length ?? 1)),
      notes,
    };
    return result;
  });
}

/** node-llama-cpp timing objects -> BenchResults. */
export function fromNodeLlamaCpp(json: unknown, source: string): BenchResult[] {
  const items = (Array.isArray(json) ? json : [json]) as NodeLlamaCppTiming[];
  return items.map((t, i) => {
    for (const f of ["promptTokens", "prefillTokensPerSecond", "decodeTokensPerSecond"] as const)
      if (!(typeof t[f] === "number" && t[f] > 0)) fail(source, `node-llama-cpp item ${i}: '${f}' must be a positive number`);
    if (typeof t.model !== "string" || !t.model) fail(source, `node-llama-cpp item ${i}: 'model' (the model file) is required`);
    if (t.gpu !== null && typeof t.gpu !== "string") fail(source, `node-llama-cpp item ${i}: 'gpu' must be a GPU name or null`);
    const one = (v: number): Stat => ({ median: v, mean: v, min: v, max: v, stdev: 0, n: 1 });
    const size = num(t.modelBytes);
    const decodeTps = one(t.decodeTokensPerSecond);
    return {
      schema: BENCH_SCHEMA,
      createdAt: t.createdAt ?? "",
      engine: { name: "node-llama-cpp", version: String(t.version ?? "unknown"), backend: t.gpu ? "cuda" : "cpu" },
      machine: {
        hostname: "",
        os: "",
        cpu: { model: "", cores: 0 },
        hostMemoryBytes: NaN,
        ...(t.gpu ? { gpu: { name: t.gpu, computeCapability: "", driver: "", memoryBytes: NaN, smCount: 0, measuredBandwidthGBs: NaN } } : {}),
      },
      model: { path: t.model, format: "gguf", params: NaN, dtype: dtypeFromName(t.model), weightBytes: size, contextLength: NaN, config: {} },
      load: { warmMs: EMPTY },
      prefill: [{ promptTokens: t.promptTokens, ttftMs: t.ttftMs ? one(t.ttftMs) : EMPTY, tokensPerSecond: one(t.prefillTokensPerSecond) }],
      decode: [
        {
          batch: 1,
          promptTokens: t.promptTokens,
          genTokens: t.genTokens ?? 128,
          tokensPerSecond: decodeTps,
          msPerStep: invert(decodeTps),
          bytesPerStep: size,
          achievedGBs: (size * t.decodeTokensPerSecond) / 1e9,
          rooflineFraction: NaN,
        },
      ],
      memory: { peakRssBytes: NaN, weightBytes: size, kvCacheBytes: NaN },
      repetitions: 1,
      notes: [`converted from node-llama-cpp timings (${source})`],
    };
  });
}

/** "llama-2-7b.Q8_0.gguf" -> "q8_0"; "unknown" when the name does not say. */
function dtypeFromName(file: string): string {
  const m = /(?:^|[.\-_])(f32|f16|bf16|q8_0|q[2-6]_k(?:_[sml])?|q4_[01]|q5_[01])(?=[.\-_]|$)/i.exec(file.split("/").at(-1) ?? "");
  return m ? m[1]!.toLowerCase() : "unknown";
}
