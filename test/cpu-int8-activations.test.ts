// cpuActivations "int8" (native/engine/cpu/cpu_ops.cc, Activations::Int8): the CPU backend's Q8_0 and 4-bit
// (Q4_1) matrices take each token's input rounded to int8 per 32 values and dot the blocks in integers, as
// llama.cpp's CPU backend does. Checked here: it stays close to the exact path (and is not the exact path),
// it keeps the CPU backend's determinism (stepped = prefilled, batched = alone, bit for bit), the portable
// scalar code gives the AVX2 code's bits, fp16 / fp32 matrices are untouched, and bad values are refused.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { loadOptionsFromFlags } from "../lib/cli/model-options.js";
import { parseRunSpec } from "../lib/runner/spec.js";
import { Llama2 } from "../lib/llama2.js";
import { native } from "../lib/native.js";
import type { LoadOptions } from "../lib/types.js";
import { mixedTypes, writeBlockModels } from "./helpers/block-models.js";
import { Scratch } from "./helpers/corrupt.js";
import { expectStepsAndBatchesAgree, lastLogits, relErr, sameBits } from "./helpers/logits.js";
import { projectRoot } from "./helpers/shared.js";

const scratch = new Scratch("llama2-int8act-");
afterAll(() => scratch.cleanup());

const PROMPT = [1, 17, 200, 3, 99, 45, 128, 7, 250, 64];
// Measured on these random-weight models (whose logits are sensitive; max difference over the largest logit)
// against the exact path: Q8_0 9.9e-3, Q4_1 9.8e-3, the Q4_K_M-like mix 2.7e-2 (its int8 requantization alone:
// 2.8e-2). A single matvec: under 2e-2.
const BOUND = 4e-2;
const MATVEC_BOUND = 2e-2;

async function run(file: string, o: LoadOptions): Promise<{ logits: Float32Array; name: string }> {
  const m = await Llama2.load(file, { device: "cpu", threads: 2, ...o });
  try {
    return { logits: await lastLogits(m, PROMPT), name: m.info.deviceName };
  } finally {
    await m.dispose();
  }
}

const same = sameBits;

describe("CPU int8 activations", () => {
  const models = new Map<string, Promise<{ quant: string; ref: string }>>();
  const model = (tag: string) => {
    if (!models.has(tag)) models.set(tag, writeBlockModels(scratch, tag === "mixed" ? mixedTypes : () => tag as "Q8_0" | "Q4_1", `act-${tag}`));
    return models.get(tag)!;
  };

  for (const tag of ["Q8_0", "Q4_1", "mixed"]) {
    it(`${tag}: within ${BOUND} of the exact path's logits (and not its bits); the device name says so`, async () => {
      const { quant } = await model(tag);
      const exact = await run(quant, {});
      const fast = await run(quant, { cpuActivations: "int8" });
      expect(exact.name).not.toContain("int8 activations");
      expect(fast.name).toContain("int8 activations");
      expect(same(fast.logits, exact.logits), "int8 activations gave the exact path's bits: not in use").toBe(false);
      const err = relErr(fast.logits, exact.logits);
      expect(err).toBeLessThan(BOUND);
      expect(fast.logits.every(Number.isFinite)).toBe(true);
    }, 120_000);
  }

  it("fp32 matrices are not affected: the same bits", async () => {
    const { ref } = await model("mixed");
    expect(same((await run(ref, { cpuActivations: "int8" })).logits, (await run(ref, {})).logits)).toBe(true);
  }, 120_000);

  it("stepped = prefilled and batched = alone, bit for bit", async () => {
    const { quant } = await model("mixed");
    const m = await Llama2.load(quant, { device: "cpu", threads: 2, maxSequences: 3, cpuActivations: "int8" });
    try {
      await expectStepsAndBatchesAgree(m, PROMPT, [128, 7, 250, 64, 5]);  // one token per step, then all at once; alone, then batched
    } finally {
      await m.dispose();
    }
  }, 120_000);

  // The whole model cannot be compared across code paths: the exact fp32 parts (attention, the scalar dot
  // without fused multiply-adds) differ between them by design. The int8 matvec itself must not.
  it("the matvec gives the same bits on every code path (scalar, AVX2, AVX-VNNI where the CPU has it), near the exact one", () => {
    const cases: { op: string; device: string; dtype: string; rows: number; cols: number; batch: number; threads: number }[] = [];
    for (const dtype of ["int8", "q4"]) for (const batch of [1, 2, 3, 5]) cases.push({ op: "matvec", device: "cpu", dtype, rows: 37, cols: 352, batch, threads: 2 });
    const run = (spec: object) => {
      const b = native().createOpBench(spec as never);
      try {
        b.run(1);
        return b.output();
      } finally {
        b.dispose();
      }
    };
    // The same cases in a child process whose code path is forced by LLAMA2_CPU_SIMD.
    const child = (simd: string) => {
      const script = `
        const { native } = await import(${JSON.stringify(path.join(projectRoot, "dist/native.js"))});
        const out = [];
        for (const spec of ${JSON.stringify(cases)}) {
          const b = native().createOpBench({ ...spec, cpuActivations: "int8" });
          b.run(1);
          const o = b.output();
          out.push({ name: b.description, out: Buffer.from(o.buffer, o.byteOffset, o.byteLength).toString("base64") });
          b.dispose();
        }
        process.stdout.write(JSON.stringify(out));`;
      const res = JSON.parse(execFileSync(process.execPath, ["--input-type=module", "-e", script], { env: { ...process.env, LLAMA2_CPU_SIMD: simd }, encoding: "utf8" }));
      return res.map((r: { name: string; out: string }) => ({ name: r.name, out: new Float32Array(new Uint8Array(Buffer.from(r.out, "base64")).buffer) }));
    };
    const scalar = child("scalar"), avx2 = child("avx2");
    cases.forEach((spec, i) => {
      const here = run({ ...spec, cpuActivations: "int8" });
      const exact = run(spec);
      expect(scalar[i].name).toContain("scalar");
      expect(here.length).toBe(spec.rows * spec.batch);
      expect(same(scalar[i].out, here), `${spec.dtype} batch ${spec.batch}: scalar and this CPU's path differ`).toBe(true);
      if (avx2[i].name.includes("avx2")) expect(same(avx2[i].out, here), `${spec.dtype} batch ${spec.batch}: AVX2 (no VNNI) differs`).toBe(true);
      expect(relErr(here, exact)).toBeLessThan(MATVEC_BOUND);
      expect(same(here, exact)).toBe(false);
    });
    const probe = native().createOpBench({ ...cases[0]!, cpuActivations: "int8" } as never);
    if (!probe.description.includes("avx2")) console.warn("[int8 activations] no AVX2 here: only the scalar path was checked");
    probe.dispose();
  }, 60_000);

  it("the input's quantization rule and its edge cases (NaN / inf blocks give NaN, tiny blocks zero), on every code path (test/native/quant-rows.cc)", () => {
    const dir = mkdtempSync(path.join(tmpdir(), "l2-quant-rows-"));
    try {
      const exe = path.join(dir, "quant-rows");
      const sources = ["native/common", "native/model"].flatMap((d) =>
        readdirSync(path.join(projectRoot, d)).filter((f) => f.endsWith(".cc")).map((f) => path.join(projectRoot, d, f)),
      );
      execFileSync("g++", ["-O2", "-std=c++17", "-pthread", `-I${projectRoot}`, path.join(projectRoot, "test/native/quant-rows.cc"),
        path.join(projectRoot, "native/engine/cpu/cpu_ops.cc"), ...sources, "-o", exe], { stdio: "pipe" });
      for (const simd of ["auto", "avx2", "scalar"]) {
        expect(execFileSync(exe, { encoding: "utf8", env: { ...process.env, LLAMA2_CPU_SIMD: simd }, timeout: 60_000 }).trim(), simd).toBe("quant-rows ok");
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 240_000);

  it("bad values are refused with a typed error naming the option or the flag", async () => {
    const { quant } = await model("Q8_0");
    await expect(Llama2.load(quant, { device: "cpu", cpuActivations: "fp8" as never })).rejects.toMatchObject({ code: "ERR_INVALID_ARGUMENT", message: expect.stringContaining("cpuActivations") });
    // The addon checks it too (callers that skip the TypeScript layer).
    await expect(native().loadModel(quant, { device: "cpu", cpuActivations: "int4" })).rejects.toMatchObject({ code: "ERR_INVALID_ARGUMENT" });
    expect(() => native().createOpBench({ op: "matvec", device: "cpu", dtype: "q4", rows: 64, cols: 64, cpuActivations: "x" })).toThrow(/cpuActivations/);
    expect(() => loadOptionsFromFlags({ device: "cpu", dtype: "auto", kvCache: "auto", cpuActivations: "int4" })).toThrow(/--cpu-activations/);
    expect(loadOptionsFromFlags({ device: "cpu", dtype: "auto", kvCache: "auto", cpuActivations: "int8" }).cpuActivations).toBe("int8");
    // The job runner (llama2 run) takes it too.
    expect(() => parseRunSpec({ cpuActivations: "int4" })).toThrow(/--cpu-activations/);
    expect(parseRunSpec({ cpuActivations: "int8" }).cpuActivations).toBe("int8");
    expect(parseRunSpec({}).cpuActivations).toBeUndefined();
  }, 60_000);
});
