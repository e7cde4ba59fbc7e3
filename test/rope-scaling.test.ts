// Rotary position scaling (linear and YaRN) from config.json, GGUF metadata and LoadOptions.ropeScaling,
// against an independent float64 forward pass (test/helpers/reference-llama.ts) that first reproduces
// transformers' own logits for the unscaled model. tiny-llama's head_dim 8 has 4 frequency pairs, and
// YaRN over an original context of 128 splits them into kept, ramped and interpolated ones.
import { readFileSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseRopeScalingFlag } from "../lib/cli/load-flags.js";
import { Llama2Error } from "../lib/errors.js";
import { Llama2 } from "../lib/llama2.js";
import { parseRunSpec } from "../lib/runner/spec.js";
import type { LoadOptions } from "../lib/types.js";
import { runCli } from "./helpers/cli.js";
import { Scratch, ggufWithMetadata } from "./helpers/corrupt.js";
import { lastLogits, relErr } from "./helpers/logits.js";
import { ReferenceLlama, type ReferenceRope } from "./helpers/reference-llama.js";
import { describeShared, readSharedJson, sharedPath } from "./helpers/shared.js";

const HF = "models/tiny-llama-hf";
const GGUF = "models/tiny-llama-f16.gguf";
const FIXTURE = "fixtures/tiny-llama-hf-reference.json";

// 300 positions (the model was trained for 512): ids from a fixed LCG over the real vocabulary.
const IDS = (() => {
  let s = 12345;
  const out = [1];
  while (out.length < 300) {
    s = (s * 1103515245 + 12345) % 2 ** 31;
    out.push(3 + (s % 31990));
  }
  return out;
})();

const LINEAR: ReferenceRope = { type: "linear", factor: 4 };
const YARN: ReferenceRope = { type: "yarn", factor: 4, original_max_position_embeddings: 128 };
const YARN_TUNED: ReferenceRope = { type: "yarn", factor: 3, original_max_position_embeddings: 256, beta_fast: 16, beta_slow: 2, attention_factor: 1.2 };

describeShared("rope scaling: linear and YaRN against a float64 reference", [HF, GGUF, FIXTURE], () => {
  let ref: ReferenceLlama;
  const scratch = new Scratch("llama2-rope-");
  const open: Llama2[] = [];
  const load = async (p: string, o: LoadOptions = {}) => {
    const m = await Llama2.load(p, { device: "cpu", maxSequences: 1, contextLength: 512, ...o });
    open.push(m);
    return m;
  };
  const hfWith = (edit: (c: Record<string, any>) => void) => scratch.hfDir(sharedPath(HF), { config: (c) => void edit(c) });
  const ggufWith = (extra: Parameters<typeof ggufWithMetadata>[1]) => scratch.write("tiny.gguf", ggufWithMetadata(readFileSync(sharedPath(GGUF)), extra));

  beforeAll(() => {
    ref = new ReferenceLlama(sharedPath(HF));
  });
  afterAll(async () => {
    for (const m of open) await m.dispose();
    scratch.cleanup();
  });

  it("the reference reproduces transformers' logits for the unscaled model (the oracle is checked first)", () => {
    const fx = readSharedJson(FIXTURE);
    for (const c of fx.cases) {
      expect(relErr(ref.lastLogits(c.prompt), c.last_logits), c.text).toBeLessThan(2e-5);
    }
  });

  it("scaling changes these positions' logits: the comparisons below can fail", () => {
    const plain = ref.lastLogits(IDS);
    for (const r of [LINEAR, YARN, YARN_TUNED]) expect(relErr(ref.lastLogits(IDS, r), plain), r.type).toBeGreaterThan(0.05);
    // YaRN keeps the fastest pair, interpolates the slowest and ramps between (what makes it YaRN).
    const base = ref.ropeFrequencies().inv;
    const y = ref.ropeFrequencies(YARN).inv;
    expect(y[0]).toBe(base[0]);
    expect(y[3]).toBeCloseTo(base[3]! / 4, 12);
    expect(y[1]! < base[1]! && y[1]! > base[1]! / 4).toBe(true);
  });

  it("config.json's rope_scaling (transformers 4) and rope_parameters (transformers 5) -> logits equal to the reference's", async () => {
    const cases: Array<[string, ReferenceRope, (c: Record<string, any>) => void]> = [
      ["linear", LINEAR, (c) => void (c.rope_scaling = { type: "linear", factor: 4 })],
      ["yarn", YARN, (c) => void (c.rope_parameters = { rope_type: "yarn", rope_theta: 10000, factor: 4, original_max_position_embeddings: 128 })],
      ["yarn tuned", YARN_TUNED, (c) => void (c.rope_scaling = { rope_type: "yarn", factor: 3, original_max_position_embeddings: 256, beta_fast: 16, beta_slow: 2, attention_factor: 1.2 })],
    ];
    for (const [name, rope, edit] of cases) {
      const m = await load(hfWith(edit));
      const want = ref.lastLogits(IDS, rope);
      const got = await lastLogits(m, IDS);
      expect(relErr(got, want), name).toBeLessThan(1e-4);
      expect(relErr(got, ref.lastLogits(IDS)), `${name}: not the unscaled logits`).toBeGreaterThan(0.05);
    }
  });

  it("ModelInfo.config.ropeScaling says what is used", async () => {
    const plain = await load(sharedPath(HF));
    expect(plain.info.config.ropeScaling).toBeNull();
    const y = await load(hfWith((c) => void (c.rope_scaling = { type: "yarn", factor: 4, original_max_position_embeddings: 128 })));
    expect(y.info.config.ropeScaling).toEqual({ type: "yarn", factor: 4, originalContextLength: 128, betaFast: 32, betaSlow: 1, attentionFactor: expect.closeTo(0.1 * Math.log(4) + 1, 6) });
    const l = await load(hfWith((c) => void (c.rope_scaling = { type: "linear", factor: 2.5 })));
    expect(l.info.config.ropeScaling).toEqual({ type: "linear", factor: 2.5, attentionFactor: 1 });
  });

  it("GGUF metadata as llama.cpp writes it (rope.scaling.*, the older rope.scale_linear) -> the same logits", async () => {
    const yarn = await load(ggufWith([["llama.rope.scaling.type", "yarn"], ["llama.rope.scaling.factor", { f32: 4 }], ["llama.rope.scaling.original_context_length", { u32: 128 }]]));
    expect(relErr(await lastLogits(yarn, IDS), ref.lastLogits(IDS, YARN))).toBeLessThan(1e-4);
    // A factor without a type is linear (llama.cpp's default); the old key is read when the new one is absent.
    const legacy = await load(ggufWith([["llama.rope.scale_linear", { f32: 4 }]]));
    expect(legacy.info.config.ropeScaling?.type).toBe("linear");
    expect(relErr(await lastLogits(legacy, IDS), ref.lastLogits(IDS, LINEAR))).toBeLessThan(1e-4);
    // Type "none" turns a factor off.
    const off = await load(ggufWith([["llama.rope.scaling.type", "none"], ["llama.rope.scaling.factor", { f32: 4 }]]));
    expect(off.info.config.ropeScaling).toBeNull();
  });

  it("LoadOptions.ropeScaling replaces the file's: bit-equal to a file that carries the same scaling", async () => {
    const fromFile = await lastLogits(await load(hfWith((c) => void (c.rope_scaling = { type: "yarn", factor: 4, original_max_position_embeddings: 128 }))), IDS);
    const fromOption = await lastLogits(await load(sharedPath(HF), { ropeScaling: { type: "yarn", factor: 4, originalContextLength: 128 } }), IDS);
    expect(Buffer.from(fromOption.buffer).equals(Buffer.from(fromFile.buffer))).toBe(true);
    // "none" on a scaled file gives the unscaled model's bits.
    const plain = await lastLogits(await load(sharedPath(HF)), IDS);
    const none = await lastLogits(await load(hfWith((c) => void (c.rope_scaling = { type: "linear", factor: 4 })), { ropeScaling: { type: "none" } }), IDS);
    expect(Buffer.from(none.buffer).equals(Buffer.from(plain.buffer))).toBe(true);
  });

  it("bad ropeScaling options -> ERR_INVALID_ARGUMENT naming the field; bad GGUF scaling -> typed errors", async () => {
    const bad: Array<[unknown, string]> = [
      ["linear", "ropeScaling"],
      [{ type: "dynamic", factor: 2 }, "ropeScaling.type"],
      [{ type: "linear", factor: 0 }, "ropeScaling.factor"],
      [{ type: "linear", factor: -1 }, "ropeScaling.factor"],
      [{ type: "linear", factor: "4" }, "ropeScaling.factor"],
      [{ type: "linear", factor: 2000 }, "ropeScaling.factor"],
      [{ type: "yarn", factor: 0.5 }, "ropeScaling.factor"],
      [{ type: "yarn", factor: 4, originalContextLength: 1.5 }, "ropeScaling.originalContextLength"],
      [{ type: "yarn", factor: 4, betaFast: 8 }, "betaFast"],
    ];
    for (const [v, field] of bad) {
      const err = await Llama2.load(sharedPath(HF), { device: "cpu", ropeScaling: v as LoadOptions["ropeScaling"] }).then(
        () => null,
        (e: unknown) => e,
      );
      expect(err, JSON.stringify(v)).toBeInstanceOf(Llama2Error);
      expect((err as Llama2Error).code).toBe("ERR_INVALID_ARGUMENT");
      expect((err as Llama2Error).message).toContain(field);
    }
    const longrope = ggufWith([["llama.rope.scaling.type", "longrope"], ["llama.rope.scaling.factor", { f32: 4 }]]);
    await expect(load(longrope)).rejects.toMatchObject({ code: "ERR_FORMAT_UNSUPPORTED", message: expect.stringContaining("'longrope'") });
    const huge = ggufWith([["llama.rope.scaling.type", "yarn"], ["llama.rope.scaling.factor", { f32: 1e6 }]]);
    await expect(load(huge)).rejects.toMatchObject({ code: "ERR_MODEL_CONFIG", message: expect.stringContaining("rope scaling factor") });
  });

  it("llama2 inspect shows the scaling; --rope-scaling reaches the loaded model", async () => {
    const dir = hfWith((c) => void (c.rope_scaling = { type: "yarn", factor: 4, original_max_position_embeddings: 128 }));
    const r = await runCli(["inspect", "--model", dir]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain("yarn scaling x4, from 128, beta 32/1, attention x1.1386");
    const g = await runCli(["generate", "--model", sharedPath(HF), "--device", "cpu", "--rope-scaling", "linear:4", "--prompt-ids", "1,2,3", "--max-tokens", "2", "--temperature", "0", "--json"]);
    expect(g.code, g.stderr).toBe(0);
    const bad = await runCli(["generate", "--model", sharedPath(HF), "--rope-scaling", "dynamic:2", "--prompt", "x"]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain("--rope-scaling");
  });
});

describe("--rope-scaling TYPE[:FACTOR[:ORIGINAL]]", () => {
  it("parses none, linear:F and yarn:F[:N]", () => {
    expect(parseRopeScalingFlag("none")).toEqual({ type: "none" });
    expect(parseRopeScalingFlag("linear:4")).toEqual({ type: "linear", factor: 4 });
    expect(parseRopeScalingFlag("linear:0.5")).toEqual({ type: "linear", factor: 0.5 });
    expect(parseRopeScalingFlag("yarn:16")).toEqual({ type: "yarn", factor: 16 });
    expect(parseRopeScalingFlag("yarn:16:4096")).toEqual({ type: "yarn", factor: 16, originalContextLength: 4096 });
  });
  it("llama2 run takes it into the job spec (the chatbot's model loads with it)", () => {
    expect(parseRunSpec({ ropeScaling: "yarn:16:4096" }).ropeScaling).toEqual({ type: "yarn", factor: 16, originalContextLength: 4096 });
    expect(parseRunSpec({}).ropeScaling).toBeUndefined();
    expect(() => parseRunSpec({ ropeScaling: "ntk:2" })).toThrow(/--rope-scaling/);
  });
  it("refuses anything else, naming the flag", () => {
    for (const v of ["", "dynamic:2", "linear", "linear:", "linear:x", "linear:0", "linear:-2", "linear:4:4096", "yarn:0.5", "yarn:4:1.5", "yarn:4:0", "none:2", "yarn:4:128:9", "linear:Infinity"]) {
      expect(() => parseRopeScalingFlag(v), v).toThrow(/--rope-scaling/);
    }
  });
});
