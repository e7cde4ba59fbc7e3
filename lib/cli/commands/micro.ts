// `llama2 micro`: tinybench micro-benchmarks of the pieces around and inside a decode step: the
// tokenizer (encode, decode, streaming decode), the sampler at vocab 32000, and native ops at a model
// shape (matrix-vector products, decode attention at several context lengths) on the CPU or the GPU.
import { writeFileSync } from "node:fs";
import { checkWritable } from "./bench.js";
import os from "node:os";
import { Bench } from "tinybench";
import { positiveInts } from "../args.js";
import type { Command } from "../command.js";
import { InvalidArgumentError } from "../../errors.js";
import { native } from "../../native.js";
import { addOpBenches, opCases, parseShape, type OpFigures } from "../../bench/micro-ops.js";
import { addSamplerBenches } from "../../bench/micro-sampler.js";
import { addTokenizerBenches } from "../../bench/micro-tokenizer.js";
import { ensureDemoModel } from "../../synth/demo.js";
import { tokenizerForModel } from "../../tokenizer/for-model.js";

import { MICRO_SCHEMA } from "../../bench/result.js";

/** The CPU backend's default thread count (all CPUs when the addon cannot load: tokenizer-only runs). */
function backendThreads(): number {
  try {
    return native().buildInfo().cpuThreads;
  } catch {
    return os.cpus().length;
  }
}
export { MICRO_SCHEMA };

export interface MicroTask {
  name: string;
  samples: number;
  latencyMs: { mean: number; p50: number; min: number; max: number; rme: number };
  opsPerSecond: number;
  /** Native ops: what one run moves and computes, and the rates achieved at the median latency. */
  description?: string;
  bytes?: number;
  flops?: number;
  bandwidthGBs?: number;
  gflops?: number;
  itersPerSample?: number;
}

export interface MicroResult {
  schema: typeof MICRO_SCHEMA;
  createdAt: string;
  machine: { cpu: string; cores: number; gpu?: string };
  device: "cpu" | "cuda";
  shape: string;
  tasks: MicroTask[];
}

const GROUPS = ["tokenizer", "sampler", "ops"] as const;

function fmt(ms: number): string {
  if (ms >= 100) return ms.toFixed(0);
  if (ms >= 1) return ms.toFixed(2);
  if (ms >= 0.001) return ms.toFixed(4);
  return ms.toExponential(2);
}

export function formatMicro(r: MicroResult): string {
  const head = `micro-benchmarks on ${r.device === "cuda" ? r.machine.gpu : `${r.machine.cpu} (${r.machine.cores} threads)`}, native ops at the ${r.shape} shape`;
  const rows = [["task", "median ms", "mean ms", "±%", "samples", "GB/s", "GFLOP/s"]];
  for (const t of r.tasks) {
    rows.push([
      t.name,
      fmt(t.latencyMs.p50),
      fmt(t.latencyMs.mean),
      t.latencyMs.rme.toFixed(1),
      String(t.samples),
      t.bandwidthGBs !== undefined ? t.bandwidthGBs.toFixed(1) : "",
      t.gflops !== undefined ? t.gflops.toFixed(1) : "",
    ]);
  }
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((row) => row[i]!.length)));
  const line = (row: string[]) => row.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join("  ").trimEnd();
  return [head, "", line(rows[0]!), ...rows.slice(1).map(line)].join("\n");
}

const command: Command = {
  name: "micro",
  summary: "tinybench micro-benchmarks: tokenizer, sampler, native matvec and attention at a model shape",
  usage:
    "Usage: llama2 micro [--only tokenizer,sampler,ops] [--device cpu|cuda|auto] [--shape llama2-7b] [--dtype f16,int8,q4] [--context 512,2048,4096] [--batch 1] [--tokenizer PATH] [--time MS] [--json] [--out FILE]",
  flags: {
    only: { type: "list", description: "which groups: tokenizer, sampler, ops", default: [...GROUPS] },
    device: { type: "string", description: "device of the native ops: cpu, cuda or auto (cuda when usable)", default: "auto" },
    shape: { type: "string", description: "model shape of the native ops: llama2-7b, llama2-13b, llama2-70b, tiny", default: "llama2-7b" },
    dtype: { type: "list", description: "matvec weight types (f16, int8, q4; f32 on cpu)", default: ["f16", "int8"] },
    context: { type: "list", description: "attention context lengths", default: ["512", "2048", "4096"] },
    batch: { type: "int", description: "sequences per native op (decode batch)", default: 1 },
    threads: { type: "int", description: "CPU threads for the native ops (default: the physical cores usable)" },
    "cpu-activations": { type: "string", description: "CPU matvecs of int8 / q4 weights: f32 (exact) or int8 (int8-rounded inputs)", default: "f32" },
    tokenizer: { type: "string", description: "tokenizer.model, model directory or GGUF (default: the demo model's)" },
    time: { type: "int", description: "milliseconds of samples per task", default: 500 },
    json: { type: "boolean", description: "print the result JSON instead of the table" },
    out: { type: "string", alias: "o", description: "also write the result JSON here" },
  },
  async run(flags, positionals, io) {
    if (positionals.length) throw new InvalidArgumentError(positionals[0]!, "unexpected argument");
    const only = flags.only as string[];
    for (const g of only) if (!(GROUPS as readonly string[]).includes(g)) throw new InvalidArgumentError("--only", `expected some of ${GROUPS.join(", ")}, got '${g}'`);
    const time = flags.time as number;
    if (time < 10 || time > 600_000) throw new InvalidArgumentError("--time", `expected 10..600000, got ${time}`);
    const threads = flags.threads as number | undefined;
    if (threads !== undefined && (threads < 0 || threads > 1024)) throw new InvalidArgumentError("--threads", `expected 0..1024, got ${threads}`);
    if (typeof flags.out === "string") checkWritable(flags.out, "--out");
    const shapeName = flags.shape as string;
    const shape = parseShape(shapeName);
    let device = flags.device as string;
    if (!["cpu", "cuda", "auto"].includes(device)) throw new InvalidArgumentError("--device", `expected cpu, cuda or auto, got '${device}'`);
    if (device === "auto") device = native().buildInfo().cudaAvailable ? "cuda" : "cpu";
    const dtypes = flags.dtype as string[];
    for (const d of dtypes) {
      if (!["f16", "int8", "q4", "f32"].includes(d) || (d === "f32" && device === "cuda")) {
        throw new InvalidArgumentError("--dtype", `expected f16, int8 or q4${device === "cpu" ? " or f32" : ""}, got '${d}'`);
      }
    }
    const cpuActivations = flags.cpuActivations as string;
    if (!["f32", "int8"].includes(cpuActivations)) throw new InvalidArgumentError("--cpu-activations", `expected f32 or int8, got '${cpuActivations}'`);
    const contexts = positiveInts("--context", flags.context, 131072);
    const batch = flags.batch as number;
    if (batch < 1 || batch > 256) throw new InvalidArgumentError("--batch", `expected 1..256, got ${batch}`);

    const bench = new Bench({ time, warmup: false, iterations: 5 });
    const figures = new Map<string, OpFigures>();
    if (only.includes("tokenizer")) {
      const source = typeof flags.tokenizer === "string" ? flags.tokenizer : await ensureDemoModel();
      addTokenizerBenches(bench, await tokenizerForModel(source));
    }
    if (only.includes("sampler")) addSamplerBenches(bench);
    if (only.includes("ops")) {
      const cases = opCases(shape, {
        device: device as "cpu" | "cuda",
        dtypes: dtypes as ("f16" | "int8" | "f32" | "q4")[],
        contexts,
        batch,
        ...(typeof flags.threads === "number" && { threads: flags.threads }),
        cpuActivations: cpuActivations as "f32" | "int8",
      });
      addOpBenches(bench, cases, figures);
    }
    bench.addEventListener("cycle", (e) => {
      const t = (e as unknown as { task?: { name: string } }).task;
      if (t) io.stderr.write(`[micro] ${t.name}\n`);
    });
    await bench.run();

    const tasks: MicroTask[] = [];
    for (const t of bench.tasks) {
      const r = t.result;
      if (r.state === "errored") throw r.error;
      if (r.state !== "completed") throw new Error(`task ${t.name} did not complete (${r.state})`);
      const task: MicroTask = {
        name: t.name,
        samples: r.latency.samplesCount,
        latencyMs: { mean: r.latency.mean, p50: r.latency.p50, min: r.latency.min, max: r.latency.max, rme: r.latency.rme },
        opsPerSecond: r.throughput.mean,
      };
      const f = figures.get(t.name);
      if (f) {
        const s = r.latency.p50 / 1000;
        Object.assign(task, { description: f.description, bytes: f.bytes, flops: f.flops, bandwidthGBs: f.bytes / s / 1e9, gflops: f.flops / s / 1e9, itersPerSample: f.itersPerSample });
      }
      tasks.push(task);
    }
    const gpu = device === "cuda" ? native().cudaDevices()[0]?.name : undefined;
    const result: MicroResult = {
      schema: MICRO_SCHEMA,
      createdAt: new Date().toISOString(),
      // cores: the threads the CPU ops ran on (--threads, 0 / unset = the backend's default)
      machine: { cpu: os.cpus()[0]?.model ?? "unknown", cores: threads || backendThreads(), ...(gpu && { gpu }) },
      device: device as "cpu" | "cuda",
      shape: shapeName,
      tasks,
    };
    if (typeof flags.out === "string") {
      writeFileSync(flags.out, JSON.stringify(result, null, 2) + "\n");
      io.stderr.write(`[micro] wrote ${flags.out}\n`);
    }
    io.stdout.write(flags.json ? JSON.stringify(result, null, 2) + "\n" : formatMicro(result) + "\n");
    return 0;
  },
};

export default command;
