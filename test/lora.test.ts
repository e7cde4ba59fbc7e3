// LoRA adapters (PEFT format) merged at load, against the float64 reference forward pass with the same
// deltas merged (test/helpers/reference-llama.ts, itself checked against transformers' logits in
// rope-scaling.test.ts). tiny-llama in three files: HF fp16 (the adapter's own row order), GGUF F16
// (llama.cpp's interleaved q/k rows: the delta rows must be permuted the same way) and GGUF Q8_0.
import { mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Llama2Error } from "../lib/errors.js";
import { Llama2 } from "../lib/llama2.js";
import { parseRunSpec } from "../lib/runner/spec.js";
import type { LoadOptions } from "../lib/types.js";
import { runCli } from "./helpers/cli.js";
import { Scratch } from "./helpers/corrupt.js";
import { lastLogits, relErr } from "./helpers/logits.js";
import { writeAdapter, writeGgufAdapter } from "./helpers/lora.js";
import { ReferenceLlama, type LoraDelta } from "./helpers/reference-llama.js";
import { describeShared, sharedPath } from "./helpers/shared.js";

const HF = "models/tiny-llama-hf";
const F16 = "models/tiny-llama-f16.gguf";
const Q8 = "models/tiny-llama-q8_0.gguf";
const IDS = [1, 9038, 2501, 263, 931, 29892, 727, 471, 263, 2217, 7826, 4257, 365, 2354, 29889, 2296, 18012, 304, 1708];

describeShared("LoRA adapters merged at load", [HF, F16, Q8], () => {
  const scratch = new Scratch("llama2-lora-");
  const open: Llama2[] = [];
  let ref: ReferenceLlama;
  let adapter = "";
  let deltas: LoraDelta[] = [];
  const load = async (p: string, o: LoadOptions = {}) => {
    const m = await Llama2.load(p, { device: "cpu", maxSequences: 1, ...o });
    open.push(m);
    return m;
  };
  const err = (p: Promise<unknown>) => p.then(() => null, (e: unknown) => e as Llama2Error);

  beforeAll(() => {
    ref = new ReferenceLlama(sharedPath(HF));
    adapter = scratch.path("adapter");
    deltas = writeAdapter(sharedPath(HF), adapter, { rank: 4, alpha: 8 });
  });
  afterAll(async () => {
    for (const m of open) await m.dispose();
    scratch.cleanup();
  });

  it("the adapter changes the logits (so the comparisons below can fail)", () => {
    expect(relErr(ref.withLora(deltas).lastLogits(IDS), ref.lastLogits(IDS))).toBeGreaterThan(0.05);
  });

  it("HF fp16 base: the merged model's logits equal the reference's with the adapter merged into fp16", async () => {
    const m = await load(sharedPath(HF), { lora: adapter });
    expect(relErr(await lastLogits(m, IDS), ref.withLora(deltas, true).lastLogits(IDS))).toBeLessThan(1e-4);
    expect(m.info.lora).toEqual([{ path: adapter, rank: 4, alpha: 8, scale: 2, modules: ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"], matrices: 14 }]);
    expect(m.info.dtype).toBe("f16"); // merged into the base's own storage type
  });

  it("GGUF F16 base (llama.cpp's interleaved q/k rows): the same logits, so the deltas' rows were permuted like the base's", async () => {
    const m = await load(sharedPath(F16), { lora: adapter });
    expect(relErr(await lastLogits(m, IDS), ref.withLora(deltas, true).lastLogits(IDS))).toBeLessThan(1e-4);
    // Only q and k are permuted: an adapter on them alone still matches.
    const qk = scratch.path("adapter-qk");
    const d = writeAdapter(sharedPath(HF), qk, { modules: ["wq", "wk"], seed: 3 });
    const m2 = await load(sharedPath(F16), { lora: qk });
    expect(relErr(await lastLogits(m2, IDS), ref.withLora(d, true).lastLogits(IDS))).toBeLessThan(1e-4);
    expect(relErr(ref.withLora(d).lastLogits(IDS), ref.lastLogits(IDS))).toBeGreaterThan(0.02);
  });

  it("GGUF Q8_0 base: merged and requantized to Q8_0, within int8 error of the reference", async () => {
    const m = await load(sharedPath(Q8), { lora: adapter });
    expect(m.info.dtype).toBe("int8");
    expect(relErr(await lastLogits(m, IDS), ref.withLora(deltas).lastLogits(IDS))).toBeLessThan(3e-2);
  });

  it("llama.cpp's GGUF adapters (convert_lora_to_gguf.py's layout): on the GGUF base as they are, on the HF base with the q/k rows permuted back", async () => {
    const file = scratch.path("adapter.gguf");
    await writeGgufAdapter(file, deltas, 8, ref.headDim);
    const want = ref.withLora(deltas, true).lastLogits(IDS);
    for (const base of [F16, HF]) {
      const m = await load(sharedPath(base), { lora: file });
      expect(relErr(await lastLogits(m, IDS), want), base).toBeLessThan(1e-4);
      expect(m.info.lora[0]).toMatchObject({ path: file, rank: 4, alpha: 8, scale: 2, matrices: 14 });
    }
    // alpha 0 (unset): B A merged as is, as llama.cpp does.
    const raw = scratch.path("adapter-raw.gguf");
    await writeGgufAdapter(raw, deltas, 0, ref.headDim);
    const m = await load(sharedPath(F16), { lora: raw });
    expect(m.info.lora[0]!.scale).toBe(1);
    expect(relErr(await lastLogits(m, IDS), ref.withLora(deltas.map((d) => ({ ...d, scale: 1 })), true).lastLogits(IDS))).toBeLessThan(1e-4);
    // An adapter is not a model, and a model is not an adapter.
    await expect(Llama2.load(file, { device: "cpu" })).rejects.toMatchObject({ code: "ERR_FORMAT_UNSUPPORTED", message: expect.stringContaining("a LoRA adapter, not a model") });
    await expect(Llama2.load(sharedPath(F16), { device: "cpu", lora: sharedPath(F16) })).rejects.toMatchObject({ code: "ERR_FORMAT_UNSUPPORTED", message: expect.stringContaining("not a LoRA adapter") });
  });

  it("scale: 0 gives the base model's bits; two adapters merge in order; rsLoRA divides alpha by sqrt(r); F16 adapter files", async () => {
    const base = await lastLogits(await load(sharedPath(HF)), IDS);
    const zero = await lastLogits(await load(sharedPath(HF), { lora: { path: adapter, scale: 0 } }), IDS);
    expect(Buffer.from(zero.buffer).equals(Buffer.from(base.buffer))).toBe(true);

    const second = scratch.path("adapter-2");
    const d2 = writeAdapter(sharedPath(HF), second, { rank: 2, alpha: 2, modules: ["wv", "w2"], seed: 11, rslora: true, f16: true });
    const both = await load(sharedPath(HF), { lora: [{ path: adapter, scale: 0.5 }, second] });
    expect(both.info.lora.map((l) => l.scale)).toEqual([1, expect.closeTo(2 / Math.sqrt(2), 6)]);
    // Each merge stores fp16, as the reference does after each adapter.
    const want = ref.withLora(deltas.map((d) => ({ ...d, scale: d.scale * 0.5 })), true).withLora(d2, true);
    expect(relErr(await lastLogits(both, IDS), want.lastLogits(IDS))).toBeLessThan(1e-4);
  });

  it("bad adapters -> typed errors naming the file and tensor; bad options -> ERR_INVALID_ARGUMENT naming the field", async () => {
    const cases: Array<[string, (dir: string) => void, string, string[]]> = [
      ["dora", (d) => writeAdapter(sharedPath(HF), d, { config: { use_dora: true } }), "ERR_FORMAT_UNSUPPORTED", ["use_dora"]],
      ["fan", (d) => writeAdapter(sharedPath(HF), d, { config: { fan_in_fan_out: true } }), "ERR_FORMAT_UNSUPPORTED", ["fan_in_fan_out"]],
      ["pattern", (d) => writeAdapter(sharedPath(HF), d, { config: { rank_pattern: { q_proj: 8 } } }), "ERR_FORMAT_UNSUPPORTED", ["rank_pattern"]],
      ["type", (d) => writeAdapter(sharedPath(HF), d, { config: { peft_type: "IA3" } }), "ERR_FORMAT_UNSUPPORTED", ["'IA3'"]],
      ["no-r", (d) => writeAdapter(sharedPath(HF), d, { config: { r: null } }), "ERR_MODEL_CONFIG", ["'r'"]],
      ["rank", (d) => writeAdapter(sharedPath(HF), d, { config: { r: 8 } }), "ERR_TENSOR_SHAPE", ["lora_A", "at rank 8"]],
      ["embed", (d) => writeAdapter(sharedPath(HF), d, { extraTensors: { "base_model.model.model.embed_tokens.lora_embedding_A": [[4, 8], Array(32).fill(0)] } }), "ERR_FORMAT_UNSUPPORTED", ["embed_tokens.lora_embedding_A"]],
      ["layer", (d) => writeAdapter(sharedPath(HF), d, { extraTensors: { "base_model.model.model.layers.9.self_attn.q_proj.lora_A.weight": [[4, 64], Array(256).fill(0)], "base_model.model.model.layers.9.self_attn.q_proj.lora_B.weight": [[64, 4], Array(256).fill(0)] } }), "ERR_TENSOR_SHAPE", ["layers.9", "layer 9"]],
      ["no-b", (d) => writeAdapter(sharedPath(HF), d, { drop: ["base_model.model.model.layers.1.mlp.up_proj.lora_B.weight"] }), "ERR_TENSOR_MISSING", ["layers.1.mlp.up_proj.lora_A", "no lora_B"]],
      ["no-a", (d) => writeAdapter(sharedPath(HF), d, { drop: ["base_model.model.model.layers.0.self_attn.o_proj.lora_A.weight"] }), "ERR_TENSOR_MISSING", ["layers.0.self_attn.o_proj.lora_B", "no lora_A"]],
      ["nan", (d) => writeAdapter(sharedPath(HF), d, { extraTensors: {}, amp: NaN }), "ERR_MODEL_CORRUPT", ["non-finite"]],
      // Finite values whose product F16 cannot hold (|B A| * 2 ~ 8e6 > 65504): refused naming the adapter, not NaN logits later.
      ["huge", (d) => writeAdapter(sharedPath(HF), d, { amp: 1000 }), "ERR_MODEL_CORRUPT", ["adapter_model.safetensors", "F16 cannot hold", "the adapter's values are too large"]],
      ["bin", (d) => { mkdirSync(d, { recursive: true }); writeFileSync(path.join(d, "adapter_config.json"), JSON.stringify({ r: 4 })); writeFileSync(path.join(d, "adapter_model.bin"), "x"); }, "ERR_FILE_NOT_FOUND", ["safe_serialization"]],
      ["empty", (d) => mkdirSync(d, { recursive: true }), "ERR_FILE_NOT_FOUND", ["adapter_config.json"]],
    ];
    for (const [name, make, code, mentions] of cases) {
      const dir = scratch.path(name);
      make(dir);
      const e = await err(Llama2.load(sharedPath(HF), { device: "cpu", maxSequences: 1, lora: dir }));
      expect(e, name).toBeInstanceOf(Llama2Error);
      expect(e!.code, `${name}: ${e!.message}`).toBe(code);
      for (const m of [dir, ...mentions]) expect(e!.message, name).toContain(m);
    }
    // An adapter made for another shape (tiny-llama's FFN is 172): the matrix and shapes are named.
    const wide = scratch.hfDir(sharedPath(HF), { config: (c) => void (c.intermediate_size = 256) });
    const other = scratch.path("wide-adapter");
    writeAdapter(wide, other, { modules: ["w1"] });
    const e = await err(Llama2.load(sharedPath(HF), { device: "cpu", lora: other }));
    expect(e?.code).toBe("ERR_TENSOR_SHAPE");
    expect(e?.message).toContain("[256, 4]");
    for (const [v, field] of [[5, "lora"], [{ path: "" }, "lora.path"], [{ path: adapter, scale: "1" }, "lora.scale"], [[adapter, { path: adapter, scale: 1e9 }], "lora[1].scale"], [{ path: adapter, weight: 1 }, "lora"]] as const) {
      const e2 = await err(Llama2.load(sharedPath(HF), { device: "cpu", lora: v as LoadOptions["lora"] }));
      expect(e2?.code, JSON.stringify(v)).toBe("ERR_INVALID_ARGUMENT");
      expect(e2?.message).toContain(field);
    }
  });

  it("CLI --lora / --lora-scale, and llama2 run's job spec", async () => {
    const gen = (extra: string[]) => runCli(["generate", "--model", sharedPath(HF), "--device", "cpu", "--prompt-ids", IDS.join(","), "--max-tokens", "8", "--temperature", "0", "--json", ...extra]);
    const plain = await gen([]);
    const off = await gen(["--lora", adapter, "--lora-scale", "0"]);
    const on = await gen(["--lora", adapter]);
    for (const r of [plain, off, on]) expect(r.code, r.stderr).toBe(0);
    const ids = (r: { stdout: string }) => JSON.parse(r.stdout).ids as number[];
    expect(ids(off)).toEqual(ids(plain));
    const m = await load(sharedPath(HF), { lora: adapter });
    expect(ids(on)).toEqual((await m.generate(IDS, { maxTokens: 8, temperature: 0 }).result).tokenIds);
    const bad = await runCli(["generate", "--model", sharedPath(HF), "--lora-scale", "2", "--prompt", "x"]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain("--lora-scale: needs --lora");
    expect(parseRunSpec({ lora: "rel/adapter", loraScale: 0.5 }).lora).toEqual([{ path: path.resolve("rel/adapter"), scale: 0.5 }]);
  });
});

describe("LoadOptions.lora without the shared models", () => {
  it("a missing adapter directory -> ERR_FILE_NOT_FOUND naming it, before any weights are merged", async () => {
    const { ensureDemoModel } = await import("../lib/synth/demo.js");
    const demo = await ensureDemoModel();
    const e = await Llama2.load(demo, { device: "cpu", lora: "/nonexistent/adapter" }).then(() => null, (x: Llama2Error) => x);
    expect(e?.code).toBe("ERR_FILE_NOT_FOUND");
    expect(e?.message).toContain("/nonexistent/adapter");
  });
});
