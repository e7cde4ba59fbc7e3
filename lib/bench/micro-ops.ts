// Micro-benchmarks of single native ops at Llama 2 shapes (tinybench): the matrix-vector products of
// one decode step and decode attention at several context lengths, on the CPU or the GPU, with the
// backends' own code (native/engine/op_bench.h). Each sample is timed natively (CUDA events on the
// GPU) and handed to tinybench as the sample's duration, so JS overhead does not count.
import type { Bench } from "tinybench";
import { fromNative, InvalidArgumentError } from "../errors.js";
import { native, type NativeOpBench, type OpBenchSpec } from "../native.js";

export interface OpShape {
  dim: number;
  ffn: number;
  vocab: number;
  heads: number;
  kvHeads: number;
  headDim: number;
}

/** Model shapes whose ops can be benchmarked: Llama 2's (70B: its full width), and a small GQA shape for quick runs. */
export const OP_SHAPES: Record<string, OpShape> = {
  "llama2-7b": { dim: 4096, ffn: 11008, vocab: 32000, heads: 32, kvHeads: 32, headDim: 128 },
  "llama2-13b": { dim: 5120, ffn: 13824, vocab: 32000, heads: 40, kvHeads: 40, headDim: 128 },
  "llama2-70b": { dim: 8192, ffn: 28672, vocab: 32000, heads: 64, kvHeads: 8, headDim: 128 },
  tiny: { dim: 256, ffn: 768, vocab: 512, heads: 4, kvHeads: 2, headDim: 64 },
};

export interface OpCase {
  name: string;
  spec: OpBenchSpec;
}

/**
 * The ops of one decode step of `shape` as the engine runs them (Q/K/V fused, gate/up fused), for
 * each weight dtype, plus attention at each context length, for `batch` sequences.
 */
export function opCases(
  shape: OpShape,
  o: { device: "cpu" | "cuda"; dtypes: ("f16" | "int8" | "f32" | "q4")[]; contexts: number[]; batch?: number; threads?: number; cpuActivations?: "f32" | "int8" },
): OpCase[] {
  const batch = o.batch ?? 1;
  const { dim, ffn, vocab, heads, kvHeads, headDim } = shape;
  const kvDim = kvHeads * headDim;
  const mats: [string, number, number][] = [
    ["qkv", heads * headDim + 2 * kvDim, dim],
    ["wo", dim, heads * headDim],
    ["gate+up", 2 * ffn, dim],
    ["down", dim, ffn],
    ["classifier", vocab, dim],
  ];
  const common = { device: o.device, batch, ...(o.threads !== undefined && { threads: o.threads }) };
  const cases: OpCase[] = [];
  // int8 activations change only the CPU's int8 / 4-bit matvecs (their names say so).
  const int8Act = o.device === "cpu" && o.cpuActivations === "int8";
  for (const dtype of o.dtypes) {
    const act = int8Act && (dtype === "int8" || dtype === "q4");
    for (const [m, rows, cols] of mats) {
      cases.push({
        name: `matvec ${m} ${rows}x${cols} ${dtype}${act ? " int8-act" : ""}${batch > 1 ? ` batch ${batch}` : ""}`,
        spec: { op: "matvec", dtype, rows, cols, ...common, ...(act && { cpuActivations: "int8" }) },
      });
    }
  }
  for (const context of o.contexts) {
    cases.push({
      name: `attention ctx ${context} (${heads}/${kvHeads} heads x ${headDim})${batch > 1 ? ` batch ${batch}` : ""}`,
      spec: { op: "attention", context, heads, kvHeads, headDim, ...common },
    });
  }
  return cases;
}

/** What a case measured, beyond tinybench's latency: its traffic and the bandwidth it achieved. */
export interface OpFigures {
  description: string;
  bytes: number;
  flops: number;
  itersPerSample: number;
}

/**
 * Adds one tinybench task per case. The op's data is allocated before its task runs and freed after
 * (at most one op's data is alive), each sample runs enough back-to-back iterations to last ~1 ms.
 * `figures` receives each case's traffic once it has been set up.
 */
export function addOpBenches(bench: Bench, cases: OpCase[], figures: Map<string, OpFigures>): void {
  for (const c of cases) {
    let op: NativeOpBench | undefined;
    let iters = 1;
    bench.add(
      `native: ${c.name}`,
      () => {
        const seconds = op!.run(iters);
        // The sample is one iteration's time; what it cost against --time is the whole run (without
        // overriddenIterationCost tinybench counts the per-iteration time, so a 3 us op at ~1 ms per
        // sample ran ~300x longer than asked: the CUDA attention op "did not finish" in 40 s).
        return { overriddenDuration: (seconds * 1000) / iters, overriddenIterationCost: seconds * 1000 };
      },
      {
        beforeAll: () => {
          if (op) return;
          try {
            op = native().createOpBench(c.spec);
          } catch (err) {
            throw fromNative(err);
          }
          const once = op.run(1); // also the warm-up
          iters = Math.max(1, Math.min(1000, Math.ceil(1e-3 / Math.max(once, 1e-9))));
          figures.set(`native: ${c.name}`, { description: op.description, bytes: op.bytes, flops: op.flops, itersPerSample: iters });
        },
        afterAll: () => {
          op?.dispose();
          op = undefined;
        },
      },
    );
  }
}

export function parseShape(name: string): OpShape {
  const s = OP_SHAPES[name];
  if (!s) throw new InvalidArgumentError("--shape", `expected one of ${Object.keys(OP_SHAPES).join(", ")}, got '${name}'`);
  return s;
}
