// The bench result file (`llama2 bench --out FILE`): one JSON object per run. bench/compare and the
// peer readers (llama.cpp, node-llama-cpp) all produce or consume this shape.

export const BENCH_SCHEMA = "llama2-native-bench/1";
/** `llama2 micro --out` files (lib/cli/commands/micro.ts): they share bench/results/, and compare skips them. */
export const MICRO_SCHEMA = "llama2-native-micro/1";

/** Summary of repeated measurements. */
export interface Stat {
  median: number;
  min: number;
  max: number;
  mean: number;
  /** Sample standard deviation (0 when n = 1). */
  stdev: number;
  n: number;
}

export interface GpuInfo {
  name: string;
  /** e.g. "9.0" */
  computeCapability: string;
  driver: string;
  memoryBytes: number;
  smCount: number;
  /** Device-to-device copy bandwidth measured by the bench itself, counting read + write, GB/s. */
  measuredBandwidthGBs: number;
}

export interface MachineInfo {
  hostname: string;
  os: string;
  cpu: { model: string; cores: number };
  hostMemoryBytes: number;
  gpu?: GpuInfo;
  /** Host memory bandwidth estimate (a large memcpy), GB/s, for CPU runs. */
  hostBandwidthGBs?: number;
}

export interface PrefillFigure {
  promptTokens: number;
  /** Time to first token (prefill + first sample), ms. */
  ttftMs: Stat;
  tokensPerSecond: Stat;
}

export interface DecodeFigure {
  batch: number;
  promptTokens: number;
  genTokens: number;
  /** Aggregate generated tokens per second over all sequences of the batch. */
  tokensPerSecond: Stat;
  /** Wall time of one decode step (all sequences advance one token), ms. */
  msPerStep: Stat;
  /** Bytes one decode step must read at least (weights once + KV cache at mid-generation). */
  bytesPerStep: number;
  /** bytesPerStep / median step time, GB/s. */
  achievedGBs: number;
  /** achievedGBs / measured bandwidth (GPU: device copy; CPU: host memcpy). */
  rooflineFraction: number;
}

export interface BenchResult {
  schema: typeof BENCH_SCHEMA;
  createdAt: string;
  engine: {
    name: string;
    version: string;
    backend: "cpu" | "cuda";
    command?: string;
    /** The engine's A/B switches set for the run (LLAMA2_GEMM_*, LLAMA2_ATTN_*, ...; see engineSwitches). */
    switches?: Record<string, string>;
  };
  machine: MachineInfo;
  model: {
    path: string;
    format: string;
    /** Synthetic preset name when known, e.g. "llama2-7b". */
    preset?: string;
    params: number;
    dtype: string;
    /** KV cache precision (absent in results written before it was recorded). */
    kvCacheType?: string;
    weightBytes: number;
    contextLength: number;
    config: Record<string, number | string | boolean>;
  };
  load: { coldMs?: Stat; warmMs: Stat };
  prefill: PrefillFigure[];
  decode: DecodeFigure[];
  /** Host time per generated token spent outside the native forward pass (sampling, JS), µs. */
  overheadPerTokenUs?: Stat;
  memory: { peakRssBytes: number; deviceBytes?: number; weightBytes: number; kvCacheBytes: number };
  repetitions: number;
  notes?: string[];
}

/** Summary of a list of samples. */
export function stat(samples: number[]): Stat {
  const n = samples.length;
  if (n === 0) return { median: NaN, min: NaN, max: NaN, mean: NaN, stdev: 0, n: 0 };
  const s = [...samples].sort((a, b) => a - b);
  const median = n % 2 ? s[(n - 1) / 2]! : (s[n / 2 - 1]! + s[n / 2]!) / 2;
  const mean = s.reduce((a, b) => a + b, 0) / n;
  const stdev = n > 1 ? Math.sqrt(s.reduce((a, b) => a + (b - mean) ** 2, 0) / (n - 1)) : 0;
  return { median, min: s[0]!, max: s[n - 1]!, mean, stdev, n };
}

/**
 * The environment variables that change which kernels or engine paths run (the A/B switches the GPU lease
 * steps set: LLAMA2_GEMM_*, LLAMA2_GEMV_*, LLAMA2_ATTN_*, LLAMA2_GRAPH_*, LLAMA2_FUSED_*, LLAMA2_CPU_*,
 * LLAMA2_CUDA_F32_*, and the emulator's L2EMU_*), so that a result file says what it measured. Names are
 * matched by rule, so paths, keys and tokens (LLAMA2_HOME, LLAMA2_API_KEY, ...) never land in a result.
 */
export function engineSwitches(env: NodeJS.ProcessEnv = process.env): Record<string, string> {
  const out: Record<string, string> = {};
  for (const name of Object.keys(env).sort())
    if (/^(LLAMA2_(GEMM|GEMV|ATTN|GRAPH|FUSED|CPU|CUDA_F32)_[A-Z0-9_]+|L2EMU_[A-Z0-9_]+)$/.test(name) && env[name] !== undefined) out[name] = env[name]!;
  return out;
}
