// The three model formats through the native loaders: readModelInfo's config per format, config.json
// variants (where rope_theta lives, tied embeddings, the config.json path), sharded and fp32
// safetensors, HF vs GGUF giving the same logits (halves vs interleaved RoPE layouts), and every
// weight dtype on the CPU. References: tiny-llama-hf-reference.json (transformers, fp32).
import path from "node:path";
import { afterAll, expect, it } from "vitest";
import { Llama2 } from "../lib/llama2.js";
import { native } from "../lib/native.js";
import { f16ToF32 } from "../lib/synth/half.js";
import type { LoadOptions } from "../lib/types.js";
import { Scratch, encodeSafetensors, readSafetensors } from "./helpers/corrupt.js";
import { lastLogits, relErr } from "./helpers/logits.js";
import { describeShared, readSharedJson, sharedPath, type TinyCase } from "./helpers/shared.js";

const STORIES = "models/stories260K.bin";
const TINY_HF = "models/tiny-llama-hf";
const TINY_F16 = "models/tiny-llama-f16.gguf";
const TINY_Q8 = "models/tiny-llama-q8_0.gguf";
const TINY_FX = "fixtures/tiny-llama-hf-reference.json";

/** Q8_0 logits vs the fp32 reference: measured 1.5e-2 .. 1.8e-2 relative on the three prompts. */
const Q8_BOUND = 3e-2;
/** bf16 weights (8-bit mantissa) vs the fp16 file: measured 4.6e-3 .. 6.6e-3. */
const BF16_BOUND = 2e-2;

const tiny = { dim: 64, nLayers: 2, nHeads: 8, nKvHeads: 4, headDim: 8, ffnDim: 172, vocabSize: 32000, ropeTheta: 10000, trainedContextLength: 512, tiedEmbeddings: false };

describeShared("readModelInfo: config per format", [STORIES, TINY_HF, TINY_F16, TINY_Q8], () => {
  it("stories260K (llama2.c): GQA, interleaved rope, tied embeddings, no tokenizer", () => {
    const i = native().readModelInfo(sharedPath(STORIES), true);
    expect(i.format).toBe("llama2c");
    expect(i.config).toMatchObject({ dim: 64, nLayers: 5, nHeads: 8, nKvHeads: 4, headDim: 8, ffnDim: 172, vocabSize: 512, trainedContextLength: 512, ropeLayout: "interleaved", tiedEmbeddings: true, ropeTheta: 10000 });
    expect(i.config.rmsEps).toBeCloseTo(1e-5, 9);
    expect(i.fileDtype).toBe("F32");
    expect(i.tokenizer).toBeUndefined();
    expect(i.tokenizerPath).toBeUndefined();
    expect(i.tensors!.find((t) => t.name === "output")).toBeUndefined(); // tied: no classifier
    expect(i.tensors!.find((t) => t.name === "layers.4.wk")).toMatchObject({ dtype: "F32", shape: [32, 64] });
  });

  it("tiny-llama HF: halves rope, untied, rope_theta from rope_parameters, tokenizer.model path", () => {
    const i = native().readModelInfo(sharedPath(TINY_HF), true);
    expect(i.format).toBe("hf");
    expect(i.config).toMatchObject({ ...tiny, ropeLayout: "halves" });
    expect(i.config.rmsEps).toBeCloseTo(1e-5, 9);
    expect(i.fileDtype).toBe("F16");
    expect(i.tokenizerPath).toBe(sharedPath(`${TINY_HF}/tokenizer.model`));
    expect(i.tensors).toHaveLength(21); // 2 layers x 9 + embeddings, final norm, output
    expect(i.tensors!.find((t) => t.name === "layers.0.wk")).toMatchObject({ fileName: "model.layers.0.self_attn.k_proj.weight", dtype: "F16", shape: [32, 64] });
    expect(i.tensors!.find((t) => t.name === "output")).toMatchObject({ fileName: "lm_head.weight", shape: [32000, 64] });
  });

  for (const [rel, dtype] of [[TINY_F16, "F16"], [TINY_Q8, "Q8_0"]] as const) {
    it(`${path.basename(rel)}: interleaved rope, untied, ${dtype}, tokenizer in the metadata`, () => {
      const i = native().readModelInfo(sharedPath(rel), true);
      expect(i.format).toBe("gguf");
      expect(i.config).toMatchObject({ ...tiny, ropeLayout: "interleaved" });
      expect(i.config.rmsEps).toBeCloseTo(1e-5, 9);
      expect(i.fileDtype).toBe(dtype);
      expect(i.tokenizer).toMatchObject({ model: "llama", bosId: 1, eosId: 2, unkId: 0 });
      expect(i.tokenizer!.tokens).toHaveLength(32000);
      expect(i.tensors!.find((t) => t.name === "layers.1.wv")).toMatchObject({ fileName: "blk.1.attn_v.weight", dtype, shape: [32, 64] });
      expect(i.tensors!.find((t) => t.name === "output_norm")).toMatchObject({ dtype: "F32", shape: [64] });
    });
  }

  it("a loaded model reports the config readModelInfo reads", async () => {
    for (const rel of [STORIES, TINY_HF, TINY_F16]) {
      const m = await Llama2.load(sharedPath(rel), { device: "cpu", maxSequences: 1 });
      try {
        expect(m.info.config).toEqual(native().readModelInfo(sharedPath(rel)).config);
      } finally {
        await m.dispose();
      }
    }
  });
});

describeShared("Hugging Face directory variants", [TINY_HF, TINY_FX], () => {
  const scratch = new Scratch("llama2-formats-");
  afterAll(() => scratch.cleanup());
  const hf = sharedPath(TINY_HF);
  const cases = readSharedJson<{ cases: TinyCase[] }>(TINY_FX).cases;
  const info = (dir: string) => native().readModelInfo(dir);

  async function logitsOf(dir: string, opts: LoadOptions = {}): Promise<Float32Array[]> {
    const m = await Llama2.load(dir, { device: "cpu", maxSequences: 1, ...opts });
    try {
      const out: Float32Array[] = [];
      for (const c of cases) out.push(await lastLogits(m, c.prompt));
      return out;
    } finally {
      await m.dispose();
    }
  }

  it("rope_theta: rope_parameters, or the top level (older checkpoints), or the default 10000", () => {
    const top = scratch.hfDir(hf, {
      config: (c) => {
        delete c.rope_parameters;
        c.rope_theta = 500000;
      },
    });
    expect(info(top).config.ropeTheta).toBe(500000);
    const nested = scratch.hfDir(hf, { config: (c) => void (c.rope_parameters.rope_theta = 250000) });
    expect(info(nested).config.ropeTheta).toBe(250000);
    const none = scratch.hfDir(hf, { config: (c) => void delete c.rope_parameters });
    expect(info(none).config.ropeTheta).toBe(10000);
  });

  it("optional fields: num_key_value_heads defaults to the heads, head_dim to dim / heads, context to 4096", () => {
    const dir = scratch.hfDir(hf, {
      config: (c) => {
        delete c.num_key_value_heads;
        delete c.head_dim;
        delete c.max_position_embeddings;
      },
    });
    expect(info(dir).config).toMatchObject({ nHeads: 8, nKvHeads: 8, headDim: 8, trainedContextLength: 4096 });
  });

  it("the config.json path loads the directory; tie_word_embeddings without lm_head ties the output", async () => {
    expect(info(path.join(hf, "config.json")).format).toBe("hf");
    const st = readSafetensors(path.join(hf, "model.safetensors"));
    const header = { ...st.header };
    delete header["lm_head.weight"];
    const tied = scratch.hfDir(hf, { config: (c) => void (c.tie_word_embeddings = true), files: { "model.safetensors": encodeSafetensors({ header, data: st.data }) } });
    const i = info(tied);
    expect(i.config.tiedEmbeddings).toBe(true);
    // Loads and runs (the embedding doubles as the classifier).
    const m = await Llama2.load(tied, { device: "cpu", maxSequences: 1 });
    try {
      expect((await m.generate(cases[0]!.prompt, { temperature: 0, maxTokens: 2, stopOnEos: false }).result).tokenIds).toHaveLength(2);
    } finally {
      await m.dispose();
    }
  });

  it("sharded safetensors (model.safetensors.index.json) give the single file's logits exactly", async () => {
    const st = readSafetensors(path.join(hf, "model.safetensors"));
    const names = Object.keys(st.header).filter((n) => n !== "__metadata__");
    const shards: Record<string, string[]> = { "model-00001-of-00002.safetensors": names.slice(0, 9), "model-00002-of-00002.safetensors": names.slice(9) };
    const files: Record<string, Uint8Array | string | null> = { "model.safetensors": null };
    const weightMap: Record<string, string> = {};
    for (const [file, list] of Object.entries(shards)) {
      const header: Record<string, unknown> = {};
      const parts: Buffer[] = [];
      let off = 0;
      for (const n of list) {
        const [b, e] = st.header[n].data_offsets as [number, number];
        parts.push(st.data.subarray(b, e));
        header[n] = { ...st.header[n], data_offsets: [off, off + (e - b)] };
        off += e - b;
        weightMap[n] = file;
      }
      files[file] = encodeSafetensors({ header, data: Buffer.concat(parts) });
    }
    files["model.safetensors.index.json"] = JSON.stringify({ metadata: {}, weight_map: weightMap });
    const sharded = scratch.hfDir(hf, { files });
    expect(native().readModelInfo(sharded, true).tensors).toHaveLength(21);
    const a = await logitsOf(sharded);
    const b = await logitsOf(hf);
    a.forEach((l, i) => expect(relErr(l, b[i]!)).toBe(0));
  });

  it("fp32 safetensors (the fp16 values widened) give the fp16 file's logits", async () => {
    const st = readSafetensors(path.join(hf, "model.safetensors"));
    const header: Record<string, unknown> = {};
    const parts: Buffer[] = [];
    let off = 0;
    for (const [n, t] of Object.entries(st.header)) {
      if (n === "__metadata__") continue;
      const [b, e] = t.data_offsets as [number, number];
      const src = st.data.subarray(b, e);
      const out = Buffer.alloc(src.length * 2);
      for (let i = 0; i < src.length / 2; i++) out.writeFloatLE(f16ToF32(src.readUInt16LE(2 * i)), 4 * i);
      parts.push(out);
      header[n] = { dtype: "F32", shape: t.shape, data_offsets: [off, off + out.length] };
      off += out.length;
    }
    const f32 = scratch.hfDir(hf, { files: { "model.safetensors": encodeSafetensors({ header, data: Buffer.concat(parts) }) } });
    expect(info(f32)).toMatchObject({ fileDtype: "F32" });
    const m = await Llama2.load(f32, { device: "cpu", maxSequences: 1 });
    expect(m.info.dtype).toBe("f32"); // auto on the CPU: as stored
    await m.dispose();
    const a = await logitsOf(f32);
    const b = await logitsOf(hf, { dtype: "f32" });
    a.forEach((l, i) => expect(relErr(l, b[i]!)).toBeLessThan(1e-6));
    // Loaded as f16 they are the fp16 file again.
    const c = await logitsOf(f32, { dtype: "f16" });
    const d = await logitsOf(hf);
    c.forEach((l, i) => expect(relErr(l, d[i]!)).toBeLessThan(1e-6));
  });
});

describeShared("the same weights in every format and dtype", [TINY_HF, TINY_F16, TINY_FX], () => {
  const cases = readSharedJson<{ cases: TinyCase[] }>(TINY_FX).cases;

  it("HF (halves RoPE) and GGUF F16 (llama.cpp's permuted Q/K, interleaved RoPE) give the same logits", async () => {
    const a = await Llama2.load(sharedPath(TINY_HF), { device: "cpu", maxSequences: 1 });
    const b = await Llama2.load(sharedPath(TINY_F16), { device: "cpu", maxSequences: 1 });
    try {
      for (const c of cases) {
        const longer = [...c.prompt, ...c.generated]; // positions up to ~40
        expect(relErr(await lastLogits(a, longer), await lastLogits(b, longer))).toBeLessThan(1e-5);
      }
    } finally {
      await a.dispose();
      await b.dispose();
    }
  });

  it("every dtype on the CPU: f32/f16 exact, bf16 and int8 within their error; info.dtype is what is used", async () => {
    const bytes: Record<string, number> = {};
    const report: string[] = [];
    for (const [dtype, bound] of [
      ["auto", 1e-3],
      ["f32", 1e-3],
      ["f16", 1e-3],
      ["bf16", BF16_BOUND],
      ["int8", Q8_BOUND],
    ] as const) {
      const m = await Llama2.load(sharedPath(TINY_HF), { device: "cpu", maxSequences: 1, dtype });
      try {
        expect(m.info.dtype).toBe(dtype === "auto" ? "f16" : dtype);
        bytes[dtype] = m.info.weightBytes;
        const errs: number[] = [];
        for (const c of cases) {
          errs.push(relErr(await lastLogits(m, c.prompt), c.last_logits));
          expect(errs.at(-1)).toBeLessThan(bound);
          const r = await m.generate(c.prompt, { temperature: 0, stopOnEos: false, maxTokens: c.generated.length }).result;
          if (bound <= 1e-3) expect(r.tokenIds).toEqual(c.generated);
          else expect(r.tokenIds).toHaveLength(c.generated.length);
        }
        report.push(`${dtype}: ${errs.map((e) => e.toExponential(1)).join("/")}`);
      } finally {
        await m.dispose();
      }
    }
    console.log(`[formats] tiny-llama-hf logits vs fp32 reference per dtype: ${report.join(", ")}`);
    expect(bytes.f32).toBe(2 * bytes.f16!);
    expect(bytes.bf16).toBe(bytes.f16);
    expect(bytes.auto).toBe(bytes.f16);
    expect(bytes.int8!).toBeLessThan(0.6 * bytes.f16!);
  });

  it("a GGUF F16 converted on load to int8 equals the HF directory converted to int8", async () => {
    const a = await Llama2.load(sharedPath(TINY_HF), { device: "cpu", maxSequences: 1, dtype: "int8" });
    const b = await Llama2.load(sharedPath(TINY_F16), { device: "cpu", maxSequences: 1, dtype: "int8" });
    try {
      for (const c of cases) expect(relErr(await lastLogits(b, c.prompt), await lastLogits(a, c.prompt))).toBeLessThan(1e-5);
    } finally {
      await a.dispose();
      await b.dispose();
    }
  });
});
