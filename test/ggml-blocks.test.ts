// GGUF's 4-6 bit block types (Q4_0 ... Q6_K, the Q4_K_M-style files most people download): the decoder
// against ggml itself, and whole models of such blocks against the same models stored as fp32.
// Oracle: test/fixtures/ggml-blocks.json, rows quantized and decoded by ggml's own code
// (scripts/ggml-oracle/make-fixture.mjs). The models here are built from those ggml-made blocks, with
// ggml's decoded values as the fp32 reference, so "our decode == ggml's" is checked through the loader,
// the dtype conversion and a forward pass, not only block by block.
import { execFileSync } from "node:child_process";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { Llama2 } from "../lib/llama2.js";
import { native } from "../lib/native.js";
import type { LoadOptions, LoadProgress } from "../lib/types.js";
import { LOAD_ONLY, fx, mixedTypes, writeBlockModels, type TypeOf } from "./helpers/block-models.js";
import { Scratch, ggufLayout, ggufTensor } from "./helpers/corrupt.js";
import { expectStepsAndBatchesAgree, lastLogits, relErr } from "./helpers/logits.js";
import { projectRoot } from "./helpers/shared.js";

const scratch = new Scratch("llama2-ggml-blocks-");
afterAll(() => scratch.cleanup());

it("decodes every block type bit for bit as ggml does (quantized rows, edge cases, random bytes); Q4_0 / Q4_1 / Q4_K as W4 groups too", () => {
  const exe = scratch.path("ggml-blocks");
  execFileSync("g++", ["-O2", "-std=c++17", `-I${projectRoot}`, path.join(projectRoot, "test/native/ggml-blocks.cc"), path.join(projectRoot, "native/model/ggml_blocks.cc"), "-o", exe], { stdio: "pipe" });
  for (const name of LOAD_ONLY) {
    const t = fx.types[name]!;
    const blocks = scratch.write(`${name}.bin`, Buffer.from(t.bytes, "base64"));
    const expected = scratch.write(`${name}.f32`, Buffer.from(t.values, "base64"));
    const out = execFileSync(exe, [name, String(fx.cols), String(t.rows), blocks, expected], { encoding: "utf8" });
    const extra = (name === "Q4_0" || name === "Q5_0" ? " +q8" : "") + (["Q4_0", "Q4_1", "Q4_K"].includes(name) ? " +w4" : "") + (name === "Q4_1" ? " +q4_1" : "");
    expect(out.trim(), name).toBe(`ok ${fx.cols * t.rows}${extra}`);
  }
}, 120_000);

const PROMPT = [1, 17, 200, 3, 99, 45, 128, 7, 250, 64];

async function logitsOf(file: string, o: LoadOptions, phases?: LoadProgress[]): Promise<{ logits: Float32Array; dtype: string }> {
  const m = await Llama2.load(file, { device: "cpu", threads: 2, ...o, ...(phases && { onProgress: (p: LoadProgress) => phases.push(p) }) });
  try {
    return { logits: await lastLogits(m, PROMPT), dtype: m.info.dtype };
  } finally {
    await m.dispose();
  }
}

const same = (a: Float32Array, b: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));

// Measured (these models, CPU): requantized int8 5.1e-3 .. 1.5e-2 against the fp32 reference (tiny-llama's
// Q8_0 file against transformers: 1.5e-2 .. 1.8e-2), f16 2.3e-4 .. 4.9e-4. Q4_K run as Q4_1 blocks (its
// sub-block scales and minimums rounded to fp16): 1.4e-3, a tenth of its int8 error (1.2e-2).
const INT8_BOUND = 3e-2;
const F16_BOUND = 2e-3;
const Q4K_BOUND = 3e-3;
// dtype q4 on fp32 weights that were Q4_K values: a second 4-bit rounding, steps 16x int8's (measured 8.0e-2 on
// these random-weight models, whose logits are sensitive; real checkpoints lose far less).
const Q4_BOUND = 0.15;
const FOUR_BIT = ["Q4_0", "Q4_1", "Q4_K"];

describe("GGUF models of 4-6 bit blocks", () => {
  const cases: Array<[string, TypeOf]> = LOAD_ONLY.map((t) => [t, () => t]);
  cases.push(["mixed", mixedTypes]);

  for (const [tag, typeOf] of cases) {
    const fourBit = FOUR_BIT.includes(tag);
    it(`${tag}: f32 gives the logits of ggml's values exactly; auto runs ${fourBit ? "4-bit (Q4_1 blocks)" : tag === "mixed" ? "4-bit and int8" : "int8"}, int8 and f16 stay close`, async () => {
      const { quant, ref } = await writeBlockModels(scratch, typeOf, tag);
      expect(native().readModelInfo(quant, false).fileDtype).toBe(typeOf("blk.0.attn_q.weight", 0));
      const want = await logitsOf(ref, { dtype: "f32" });
      const exact = await logitsOf(quant, { dtype: "f32" });
      expect(exact.dtype).toBe("f32");
      expect(same(exact.logits, want.logits), `${tag} f32 logits differ from the fp32 model's`).toBe(true);
      const phases: LoadProgress[] = [];
      const auto = await logitsOf(quant, {}, phases);
      expect(auto.dtype).toBe(fourBit || tag === "mixed" ? "q4+int8" : "int8");
      const decode = phases.filter((p) => p.phase === "decode");
      expect(decode.length).toBeGreaterThan(0);
      expect(decode.at(-1)!.bytes).toBe(decode.at(-1)!.totalBytes);
      // Q4_0 / Q4_1 run as Q4_1 blocks of the same values, so auto gives the fp32 model's logits bit for bit
      // (the widening and the order of every sum are the fp32 path's); Q4_K's fp16 group scales add ~1e-3.
      if (tag === "Q4_0" || tag === "Q4_1") expect(same(auto.logits, want.logits), `${tag} 4-bit logits differ`).toBe(true);
      else if (tag === "Q4_K") expect(relErr(auto.logits, want.logits)).toBeLessThan(Q4K_BOUND);
      else expect(relErr(auto.logits, want.logits)).toBeLessThan(INT8_BOUND);
      // int8: Q4_0 / Q5_0 blocks become Q8_0 blocks of the same values (the fp32 model's logits); the others
      // are requantized.
      const int8 = await logitsOf(quant, { dtype: "int8" });
      expect(int8.dtype).toBe("int8");
      if (tag === "Q4_0" || tag === "Q5_0") expect(same(int8.logits, want.logits), `${tag} int8 logits differ`).toBe(true);
      else expect(relErr(int8.logits, want.logits)).toBeLessThan(INT8_BOUND);
      if (tag === "Q4_1" || tag === "Q4_K") expect(relErr(auto.logits, want.logits)).toBeLessThan(relErr(int8.logits, want.logits) / 5);
      const f16 = await logitsOf(quant, { dtype: "f16" });
      expect(f16.dtype).toBe("f16");
      expect(relErr(f16.logits, want.logits)).toBeLessThan(F16_BOUND);
    }, 120_000);
  }

  it("4-bit on the CPU: decoding step by step (rows widened in registers) gives the prefill's bits (rows widened into a buffer), alone or batched", async () => {
    const { quant } = await writeBlockModels(scratch, () => "Q4_K", "steps");
    const m = await Llama2.load(quant, { device: "cpu", threads: 2, maxSequences: 3 });
    try {
      expect(m.info.dtype).toBe("q4+int8");
      await expectStepsAndBatchesAgree(m, PROMPT, [128, 7, 250, 64]);  // one token per step, then all at once; alone, then batched
    } finally {
      await m.dispose();
    }
  }, 120_000);

  it("dtype 'q4': 4-bit blocks are rewritten, other types quantized into Q4_1 groups, the classifier into int8", async () => {
    const { quant, ref } = await writeBlockModels(scratch, () => "Q4_K", "q4-dtype");
    const auto = await logitsOf(quant, {});
    const q4 = await logitsOf(quant, { dtype: "q4" });
    expect(q4.dtype).toBe("q4");
    // All-Q4_K file: the same 4-bit layers as auto; only the classifier differs (Q4_K decoded into int8 groups).
    expect(same(q4.logits, auto.logits)).toBe(false);
    expect(relErr(q4.logits, auto.logits)).toBeLessThan(INT8_BOUND);
    // The fp32 twin quantized at load by the Q4_1 rule (min / max per 32): its values are Q4_K's, which a
    // second 4-bit rounding moves by up to half a step.
    const exact = await logitsOf(ref, { dtype: "f32" });
    const requant = await logitsOf(ref, { dtype: "q4" });
    expect(requant.dtype).toBe("q4");
    const err = relErr(requant.logits, exact.logits);
    expect(err).toBeGreaterThan(0);
    expect(err).toBeLessThan(Q4_BOUND);
    const m = await Llama2.load(ref, { device: "cpu", dtype: "q4", threads: 2 });
    try {
      // Every matrix (rows of whole 32-groups here) at 20 bytes per 32 weights, the classifier (vocab x dim) at 34.
      const c = m.info.config;
      const classifier = c.vocabSize * c.dim;
      const f32 = Number(native().readModelInfo(ref, false).fileBytes);
      const want = (f32 / 4 - classifier) * (20 / 32) + classifier * (34 / 32);
      expect(m.info.weightBytes).toBeLessThan(want * 1.01);
      expect(m.info.weightBytes).toBeGreaterThan(want * 0.9);
    } finally {
      await m.dispose();
    }
  }, 120_000);

  it("generates from a Q4_K model and refuses malformed block tensors with typed errors", async () => {
    const { quant } = await writeBlockModels(scratch, () => "Q4_K", "gen");
    const m = await Llama2.load(quant, { device: "cpu", threads: 2 });
    try {
      const r = await m.generate(PROMPT, { maxTokens: 6, temperature: 0 }).result;
      expect(r.tokenIds).toHaveLength(6);
    } finally {
      await m.dispose();
    }
    // FFN 288: whole 32-blocks (Q4_0 is fine), not whole 256-blocks: retyping ffn_down as Q4_K is corrupt.
    const { quant: q288 } = await writeBlockModels(scratch, (name) => (name.includes("ffn_down") ? "Q4_0" : "Q4_K"), "ffn288", 288);
    const bad = scratch.patched(q288, (buf) => {
      const t = ggufTensor(ggufLayout(buf), "blk.0.ffn_down.weight");
      buf.writeUInt32LE(12, t.typeAt);
    });
    await expect(Llama2.load(bad, { device: "cpu" })).rejects.toMatchObject({ code: "ERR_MODEL_CORRUPT", message: expect.stringMatching(/Q4_K tensor 'blk.0.ffn_down.weight' has a row length \(288\) not divisible by its block of 256/) });
    // IQ2_XS (ggml type 17) is named and refused.
    const iq = scratch.patched(q288, (buf) => buf.writeUInt32LE(17, ggufTensor(ggufLayout(buf), "blk.1.attn_q.weight").typeAt));
    await expect(Llama2.load(iq, { device: "cpu" })).rejects.toMatchObject({ code: "ERR_TENSOR_DTYPE", message: expect.stringMatching(/blk.1.attn_q.weight' has ggml type 17 \(IQ2_XS; supported: .*Q4_K/) });
    // A norm stored as Q4_0 (llama.cpp never writes one) is a dtype error naming the tensor.
    const normQ = scratch.patched(q288, (buf) => {
      const t = ggufTensor(ggufLayout(buf), "output_norm.weight");
      buf.writeUInt32LE(2, t.typeAt);
    });
    await expect(Llama2.load(normQ, { device: "cpu" })).rejects.toMatchObject({ code: "ERR_TENSOR_DTYPE", message: expect.stringMatching(/norm tensor output_norm.weight \(Q4_0 \[256\]\).* cannot be Q4_0/) });
  }, 120_000);
});
