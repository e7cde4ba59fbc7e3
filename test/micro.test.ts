// `llama2 micro` and the native op benches it runs (native/engine/op_bench.h): argument validation,
// the traffic each op reports, and the CLI's result on the tiny shape.
import { describe, expect, it } from "vitest";
import { native } from "../lib/native.js";
import { opCases, OP_SHAPES } from "../lib/bench/micro-ops.js";
import type { MicroResult } from "../lib/cli/commands/micro.js";
import { hasShared, sharedPath } from "./helpers/shared.js";
import { runCli } from "./helpers/cli.js";

const run = runCli;

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (e) {
    return (e as { code?: string }).code;
  }
  return undefined;
}

describe("native op benches", () => {
  it("matvec reports its weight traffic and runs", () => {
    const op = native().createOpBench({ op: "matvec", device: "cpu", dtype: "f16", rows: 256, cols: 512, threads: 1 });
    expect(op.bytes).toBe(256 * 512 * 2 + (512 + 256) * 4);
    expect(op.flops).toBe(2 * 256 * 512);
    expect(op.description).toMatch(/cpu matvec f16/);
    const s = op.run(3);
    expect(s).toBeGreaterThan(0);
    expect(s).toBeLessThan(5);
    op.dispose();
    expect(codeOf(() => op.run(1))).toBe("ERR_DISPOSED");
    const q8 = native().createOpBench({ op: "matvec", device: "cpu", dtype: "int8", rows: 256, cols: 512 });
    expect(q8.bytes).toBe(256 * (512 / 32) * 34 + (512 + 256) * 4); // Q8_0 blocks: fp16 scale + 32 int8
    const q4 = native().createOpBench({ op: "matvec", device: "cpu", dtype: "q4", rows: 256, cols: 512 });
    expect(q4.bytes).toBe(256 * (512 / 32) * 20 + (512 + 256) * 4); // Q4_1 blocks: fp16 scale and minimum + 16 nibble bytes
    expect(q4.description).toMatch(/cpu matvec q4/);
    expect(q4.run(2)).toBeGreaterThan(0);
    q4.dispose();
    q8.dispose();
  });

  it("attention reports its KV-cache traffic and runs", () => {
    const op = native().createOpBench({ op: "attention", device: "cpu", context: 100, heads: 4, kvHeads: 2, headDim: 64, batch: 2 });
    expect(op.bytes).toBe(2 * 100 * 2 * 64 * 4 * 2 + 2 * 2 * 4 * 64 * 4);
    expect(op.run(2)).toBeGreaterThan(0);
    op.dispose();
  });

  it("rejects bad specs with ERR_INVALID_ARGUMENT naming the field", () => {
    const bad: [object, RegExp][] = [
      [{ op: "conv", device: "cpu" }, /^op:/],
      [{ op: "matvec", device: "tpu", rows: 8, cols: 64 }, /^device:/],
      [{ op: "matvec", device: "cpu", dtype: "f64", rows: 8, cols: 64 }, /^dtype:/],
      [{ op: "matvec", device: "cpu", rows: 8, cols: 70 }, /^cols:/],
      [{ op: "matvec", device: "cpu", rows: 0, cols: 64 }, /^rows:/],
      [{ op: "attention", device: "cpu", context: 16, heads: 6, kvHeads: 4, headDim: 64 }, /^kvHeads:/],
      [{ op: "attention", device: "cpu", context: 16, heads: 4, headDim: 96 }, /^headDim:/],
      [{ op: "attention", device: "cpu", context: 0, heads: 4, headDim: 64 }, /^context:/],
      [{ op: "matvec", device: "cpu", rows: 8, cols: 64, batch: 1.5 }, /^batch:/],
    ];
    for (const [spec, msg] of bad) {
      let err: { code?: string; message?: string } | undefined;
      try {
        native().createOpBench(spec as never);
      } catch (e) {
        err = e as typeof err;
      }
      expect(err?.code, JSON.stringify(spec)).toBe("ERR_INVALID_ARGUMENT");
      expect(err?.message).toMatch(msg);
    }
    const op = native().createOpBench({ op: "matvec", device: "cpu", rows: 8, cols: 64 });
    expect(codeOf(() => op.run(0))).toBe("ERR_INVALID_ARGUMENT");
    op.dispose();
  });

  it.skipIf(native().buildInfo().cudaAvailable)("cuda without a usable GPU is ERR_DEVICE_UNAVAILABLE or ERR_CUDA_DRIVER", () => {
    expect(["ERR_DEVICE_UNAVAILABLE", "ERR_CUDA_DRIVER"]).toContain(codeOf(() => native().createOpBench({ op: "matvec", device: "cuda", rows: 128, cols: 64 })));
  });

  it("the 7B decode step's matrices are the engine's fused shapes", () => {
    const cases = opCases(OP_SHAPES["llama2-7b"]!, { device: "cpu", dtypes: ["f16"], contexts: [512] });
    expect(cases.map((c) => [c.spec.rows, c.spec.cols])).toEqual([
      [12288, 4096],
      [4096, 4096],
      [22016, 4096],
      [4096, 11008],
      [32000, 4096],
      [undefined, undefined],
    ]);
    const layer = cases.filter((c) => c.spec.op === "matvec" && !c.name.includes("classifier")).reduce((s, c) => s + c.spec.rows! * c.spec.cols!, 0);
    // 32 layers + classifier + embedding + norms = Llama 2 7B's 6,738,415,616 parameters
    expect(layer * 32 + 2 * 32000 * 4096 + (2 * 32 + 1) * 4096).toBe(6_738_415_616);
  });
});

describe("llama2 micro", () => {
  it("benchmarks native ops at the tiny shape and reports bandwidth", async () => {
    const r = await run(["micro", "--only", "ops", "--shape", "tiny", "--device", "cpu", "--context", "32,128", "--time", "20", "--json"]);
    expect(r.code, r.stderr).toBe(0);
    const res = JSON.parse(r.stdout) as MicroResult;
    expect(res.schema).toBe("llama2-native-micro/1");
    expect(res.device).toBe("cpu");
    expect(res.tasks).toHaveLength(5 * 2 + 2);
    for (const t of res.tasks) {
      expect(t.name).toMatch(/^native: (matvec|attention)/);
      expect(t.samples).toBeGreaterThan(0);
      expect(t.latencyMs.p50).toBeGreaterThan(0);
      expect(t.bandwidthGBs).toBeGreaterThan(0);
      expect(t.bandwidthGBs).toBeCloseTo(t.bytes! / (t.latencyMs.p50 / 1000) / 1e9, 6);
      // --time bounds the time spent timing (each sample runs itersPerSample iterations): tinybench once
      // charged only one iteration's time per sample, so µs-scale ops ran hundreds of times longer.
      const spentMs = t.samples * t.itersPerSample! * t.latencyMs.mean;
      expect(spentMs, t.name).toBeLessThan(20 * 3 + 5 * t.itersPerSample! * t.latencyMs.max);
    }
    expect(r.stderr).toContain("[micro] native: attention ctx 128");
  }, 60_000);

  it.skipIf(!hasShared("models/tokenizer.model"))("benchmarks the tokenizer and the sampler (table output)", async () => {
    const r = await run(["micro", "--only", "tokenizer,sampler", "--tokenizer", sharedPath("models/tokenizer.model"), "--time", "20"]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^task\s+median ms\s+mean ms/m);
    expect(r.stdout).toMatch(/^tokenizer: encode .* B paragraph\s+\S+/m);
    expect(r.stdout).toMatch(/^sampler: top-p 0\.95, full logits/m);
    expect(r.stdout).not.toContain("native:");
  }, 60_000);

  it("rejects bad flags", async () => {
    for (const argv of [
      ["micro", "--only", "gpu"],
      ["micro", "--shape", "llama3"],
      ["micro", "--device", "tpu"],
      ["micro", "--device", "cpu", "--dtype", "f8"],
      ["micro", "--device", "cpu", "--context", "0"],
      ["micro", "--time", "1"],
    ]) {
      const r = await run(argv);
      expect(r.code, argv.join(" ")).not.toBe(0);
      expect(r.stderr, argv.join(" ")).toMatch(/ERR_INVALID_ARGUMENT/);
    }
  });
});
