// The throughput bench behind `llama2 bench`: load time (cold and warm page cache), time to first
// token and prefill speed per prompt length, decode speed per batch size, memory, and per-token
// overhead outside the native forward pass, each repeated with the warm-up excluded. Every decode
// figure carries the bytes a step must read and the fraction of the measured bandwidth achieved.
import { readFileSync, readdirSync, statSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { Llama2Error } from "../errors.js";
import { Llama2 } from "../llama2.js";
import { detectNvidiaDriver, native } from "../native.js";
import { Rng } from "../rng.js";
import type { CpuActivations, Device, KvCacheType, ModelConfig, WeightDtype } from "../types.js";
import { BENCH_SCHEMA, engineSwitches, stat, type BenchResult, type DecodeFigure, type MachineInfo, type PrefillFigure, type Stat } from "./result.js";

export interface BenchOptions {
  model: string;
  device: Device;
  dtype: WeightDtype;
  kvCacheType?: KvCacheType;
  prompts: number[];
  gen: number;
  batches: number[];
  /** Prompt length used for the decode runs. */
  decodePrompt: number;
  reps: number;
  contextLength?: number;
  threads?: number;
  cpuActivations?: CpuActivations;
  /** Skip the cold-cache load (dropping the page cache needs the file not to be mapped elsewhere). */
  skipCold?: boolean;
  preset?: string;
  log: (msg: string) => void;
}

export async function runBench(o: BenchOptions): Promise<BenchResult> {
  const addon = native();
  const notes: string[] = [];
  const maxPrompt = Math.max(o.decodePrompt, ...o.prompts);
  const maxBatch = Math.max(...o.batches);
  const context = o.contextLength ?? maxPrompt + o.gen + 16;
  // The KV pool holds maxSequences x context tokens; size it for the largest decode batch (each
  // sequence needs only its prompt + generated tokens), not for maxBatch full contexts.
  const decodeTokens = maxBatch * (o.decodePrompt + o.gen + 32);
  const maxSequences = Math.max(1, Math.ceil(decodeTokens / context));
  const loadOpts = { device: o.device, dtype: o.dtype, kvCacheType: o.kvCacheType ?? "auto", contextLength: context, maxSequences, threads: o.threads,
    ...(o.cpuActivations && { cpuActivations: o.cpuActivations }) };

  // Load times. Cold: drop the files from the page cache first (works without root for unmapped files).
  const files = modelFiles(o.model);
  const coldMs: number[] = [];
  if (!o.skipCold) {
    for (let i = 0; i < Math.min(o.reps, 2); i++) {
      const dropped = files.every((f) => addon.dropPageCache(f));
      if (!dropped) {
        notes.push("cold load skipped: the kernel refused to drop the page cache");
        break;
      }
      o.log(`load (cold page cache) ${i + 1}`);
      const t0 = performance.now();
      const m = await Llama2.load(o.model, loadOpts);
      coldMs.push(performance.now() - t0);
      await m.dispose();
    }
  }
  const warmMs: number[] = [];
  let model: Llama2 | undefined;
  for (let i = 0; i < o.reps; i++) {
    o.log(`load (warm page cache) ${i + 1}/${o.reps}`);
    const t0 = performance.now();
    const m = await Llama2.load(o.model, loadOpts);
    warmMs.push(performance.now() - t0);
    if (i < o.reps - 1) await m.dispose();
    else model = m;
  }
  const llama = model!;
  const info = llama.info;
  const cfg = info.config;
  const V = cfg.vocabSize;
  const rng = new Rng(1234);
  const randomPrompt = (n: number) => Array.from({ length: n }, () => 3 + Math.floor(rng.next() * (V - 3)));
  const greedy = { temperature: 0, stopOnEos: false } as const;

  // Prefill / time to first token.
  const prefill: PrefillFigure[] = [];
  for (const p of o.prompts) {
    const ttft: number[] = [];
    const tps: number[] = [];
    for (let r = -1; r < o.reps; r++) {
      o.log(`prefill ${p} tokens ${r < 0 ? "(warm-up)" : `${r + 1}/${o.reps}`}`);
      const res = await llama.generate(randomPrompt(p), { ...greedy, maxTokens: 1 }).result;
      if (r < 0) continue;
      ttft.push(res.stats.timeToFirstTokenMs);
      tps.push(res.stats.promptTokensPerSecond);
    }
    prefill.push({ promptTokens: p, ttftMs: stat(ttft), tokensPerSecond: stat(tps) });
  }

  // Decode at each batch size: `batch` concurrent sequences decoding in the same steps.
  const bandwidth = info.device === "cuda" ? addon.cudaCopyBandwidth(0) : hostBandwidth();
  // Bytes of one cached token (int8: a byte per value plus an fp16 scale per group of 32).
  const kvValueBytes = info.kvCacheType === "int8" ? 1 + 2 / Math.min(32, cfg.headDim) : info.kvCacheType === "f16" ? 2 : 4;
  const kvBytesPerToken = cfg.nLayers * 2 * cfg.nKvHeads * cfg.headDim * kvValueBytes;
  const decode: DecodeFigure[] = [];
  const overhead: number[] = [];
  for (const b of o.batches) {
    const tps: number[] = [];
    const step: number[] = [];
    for (let r = -1; r < o.reps; r++) {
      o.log(`decode batch ${b}, ${o.gen} tokens ${r < 0 ? "(warm-up)" : `${r + 1}/${o.reps}`}`);
      const before = llama.stats().scheduler;
      const t0 = performance.now();
      // When each token arrived, per sequence (a token's chunk is pushed right after its step).
      const arrivals = await Promise.all(
        Array.from({ length: b }, async () => {
          const times: number[] = [];
          for await (const c of llama.generate(randomPrompt(o.decodePrompt), { ...greedy, maxTokens: o.gen })) {
            for (let i = 0; i < c.tokenIds.length; i++) times.push(performance.now());
          }
          return times;
        }),
      );
      const after = llama.stats().scheduler;
      if (r < 0) continue;
      // Decode phase: from the last first token to the last token, when every sequence decodes in the same
      // steps. Only the tokens that arrived inside it count: with chunked prefill, the sequences whose
      // prompts finished first decoded some tokens before it.
      const firstDone = Math.max(...arrivals.map((t) => t[0] ?? Infinity));
      const end = Math.max(...arrivals.map((t) => t[t.length - 1] ?? -Infinity));
      const inWindow = arrivals.map((t) => t.filter((x) => x > firstDone).length);
      const steps = Math.max(...inWindow);
      if (!(steps > 0 && end > firstDone)) throw new Llama2Error("ERR_INTERNAL", `decode batch ${b}: no tokens after the last first token (use a larger --gen)`);
      step.push((end - firstDone) / steps);
      tps.push(inWindow.reduce((a, n) => a + n, 0) / ((end - firstDone) / 1000));
      // Overhead: wall time of the whole run minus native forward time, per generated token step.
      const wall = performance.now() - t0;
      const fwd = after.forwardMs - before.forwardMs;
      const nSteps = after.steps - before.steps;
      if (nSteps > 0) overhead.push(((wall - fwd) / nSteps) * 1000);
    }
    const bytesPerStep = info.weightBytes + b * kvBytesPerToken * (o.decodePrompt + o.gen / 2);
    const st = stat(step);
    const achieved = bytesPerStep / (st.median / 1000) / 1e9;
    decode.push({
      batch: b,
      promptTokens: o.decodePrompt,
      genTokens: o.gen,
      tokensPerSecond: stat(tps),
      msPerStep: st,
      bytesPerStep,
      achievedGBs: achieved,
      rooflineFraction: bandwidth > 0 ? achieved / bandwidth : 0,
    });
  }

  const live = native().buildInfo();
  const machine = machineInfo(bandwidth, info.device === "cuda");
  const result: BenchResult = {
    schema: BENCH_SCHEMA,
    createdAt: new Date().toISOString(),
    engine: { name: "llama2-native", version: packageVersion(), backend: info.device, command: process.argv.slice(1).join(" "), switches: engineSwitches() },
    machine,
    model: {
      path: path.resolve(o.model),
      format: info.format,
      preset: o.preset,
      params: paramCount(cfg),
      dtype: info.dtype,
      kvCacheType: info.kvCacheType,
      weightBytes: info.weightBytes,
      contextLength: info.contextLength,
      config: benchConfig(cfg),
    },
    load: { coldMs: coldMs.length ? stat(coldMs) : undefined, warmMs: stat(warmMs) },
    prefill,
    decode,
    overheadPerTokenUs: overhead.length ? stat(overhead) : undefined,
    memory: {
      peakRssBytes: process.resourceUsage().maxRSS * 1024,
      deviceBytes: llama.deviceMemoryBytes(),
      weightBytes: info.weightBytes,
      kvCacheBytes: info.kvCacheBytes,
    },
    repetitions: o.reps,
    notes: [...notes, `device: ${info.deviceName}; CPU SIMD ${live.cpuSimd}`],
  };
  await llama.dispose();
  return result;
}

// The result file's flat config: rope scaling (rarely set) as one string, e.g. "yarn x16".
function benchConfig(c: ModelConfig): Record<string, number | string | boolean> {
  const { ropeScaling, ...rest } = c;
  return { ...rest, ...(ropeScaling && { ropeScaling: `${ropeScaling.type} x${ropeScaling.factor}` }) };
}

function paramCount(c: { dim: number; nLayers: number; nHeads: number; nKvHeads: number; headDim: number; ffnDim: number; vocabSize: number; tiedEmbeddings: boolean }): number {
  const q = c.nHeads * c.headDim, kv = c.nKvHeads * c.headDim;
  const layer = c.dim * (q + 2 * kv) + q * c.dim + 3 * c.dim * c.ffnDim + 2 * c.dim;
  return c.vocabSize * c.dim * (c.tiedEmbeddings ? 1 : 2) + c.nLayers * layer + c.dim;
}

function modelFiles(p: string): string[] {
  if (statSync(p).isDirectory()) {
    return readdirSync(p)
      .filter((f) => f.endsWith(".safetensors"))
      .map((f) => path.join(p, f));
  }
  return [p];
}

// A large memcpy through Buffer.copy: the CPU roofline's bandwidth (read + write), GB/s.
function hostBandwidth(): number {
  const n = 256 << 20;
  const a = Buffer.alloc(n, 1);
  const b = Buffer.alloc(n);
  a.copy(b);
  const times: number[] = [];
  for (let i = 0; i < 5; i++) {
    const t0 = performance.now();
    a.copy(b);
    times.push(performance.now() - t0);
  }
  return (2 * n) / (stat(times).median / 1000) / 1e9;
}

function machineInfo(bandwidth: number, cuda: boolean): MachineInfo {
  const cpus = os.cpus();
  const m: MachineInfo = {
    hostname: os.hostname(),
    os: `${os.type()} ${os.release()}`,
    cpu: { model: cpus[0]?.model ?? "unknown", cores: cpus.length },
    hostMemoryBytes: os.totalmem(),
  };
  if (cuda) {
    const d = native().cudaDevices()[0];
    if (d) {
      const drv = d.driverVersion;
      const nvidia = detectNvidiaDriver();
      const cudaVer = `${Math.floor(drv / 1000)}.${(drv % 1000) / 10}`;
      m.gpu = {
        name: d.name,
        computeCapability: d.computeCapability,
        // The NVIDIA driver (as `nvidia-smi` shows it) and the CUDA version it supports.
        driver: nvidia.version ? `${nvidia.version} (CUDA ${cudaVer})` : `CUDA ${cudaVer}`,
        memoryBytes: d.memoryTotal,
        smCount: d.smCount,
        measuredBandwidthGBs: bandwidth,
      };
    }
  } else {
    m.hostBandwidthGBs = bandwidth;
  }
  return m;
}

function packageVersion(): string {
  try {
    return (JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")) as { version: string }).version;
  } catch {
    return "unknown";
  }
}

export function formatStat(s: Stat | undefined, digits = 1): string {
  if (!s || !Number.isFinite(s.median)) return "-";
  const spread = s.n > 1 ? ` ±${((100 * (s.max - s.min)) / 2 / Math.max(Math.abs(s.median), 1e-12)).toFixed(1)}%` : "";
  return `${s.median.toFixed(digits)}${spread}`;
}

/** A short human-readable summary of a result (stdout of `llama2 bench`). */
export function summarize(r: BenchResult): string {
  const lines: string[] = [];
  const dev = r.machine.gpu ? `${r.machine.gpu.name} (${r.machine.gpu.measuredBandwidthGBs.toFixed(0)} GB/s copy)` : `${r.machine.cpu.model} x${r.machine.cpu.cores}`;
  const params = r.model.params >= 1e9 ? `${(r.model.params / 1e9).toFixed(2)}B` : `${(r.model.params / 1e6).toFixed(2)}M`;
  lines.push(`model ${path.basename(r.model.path)} (${params} params, ${r.model.dtype}${r.model.kvCacheType ? `, KV ${r.model.kvCacheType}` : ""}) on ${dev}`);
  const sw = Object.entries(r.engine.switches ?? {});
  if (sw.length > 0) lines.push(`switches: ${sw.map(([k, v]) => `${k}=${v}`).join(" ")}`);
  lines.push(`load: warm ${formatStat(r.load.warmMs, 0)} ms${r.load.coldMs ? `, cold ${formatStat(r.load.coldMs, 0)} ms` : ""}`);
  for (const p of r.prefill) lines.push(`prefill ${p.promptTokens}: ${formatStat(p.tokensPerSecond)} tok/s, TTFT ${formatStat(p.ttftMs)} ms`);
  for (const d of r.decode) {
    lines.push(
      `decode batch ${d.batch}: ${formatStat(d.tokensPerSecond)} tok/s (${formatStat(d.msPerStep, 2)} ms/step, ${d.achievedGBs.toFixed(1)} GB/s = ${(100 * d.rooflineFraction).toFixed(1)}% of measured bandwidth)`,
    );
  }
  if (r.overheadPerTokenUs) lines.push(`overhead outside forward: ${formatStat(r.overheadPerTokenUs)} µs/step`);
  lines.push(`memory: peak RSS ${(r.memory.peakRssBytes / 2 ** 30).toFixed(2)} GiB${r.memory.deviceBytes ? `, device ${(r.memory.deviceBytes / 2 ** 30).toFixed(2)} GiB` : ""}`);
  return lines.join("\n");
}
