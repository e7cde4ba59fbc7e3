// Synthetic models and the streaming GGUF / safetensors writers, checked with a small independent
// reader against the files llama.cpp's converter and transformers wrote (../shared/models).
import { describe, it, expect, beforeAll, afterAll } from "vitest";
import { mkdtempSync, readFileSync, rmSync, existsSync, statSync, writeFileSync, mkdirSync, readdirSync } from "node:fs";
import { createHash } from "node:crypto";
import os from "node:os";
import path from "node:path";
import { describeShared, sharedPath } from "./helpers/shared.js";
import { runCli } from "./helpers/cli.js";
import { makeSyntheticModel, type SyntheticModelOptions } from "../lib/synth/model.js";
import { ensureDemoModel, DEMO_MODEL_NAME } from "../lib/synth/demo.js";
import { PRESETS } from "../lib/synth/presets.js";
import { quantizeQ8_0, f16ToF32, bf16ToF32, f32ToF16, f32ToBf16 } from "../lib/synth/half.js";
import { permutedSourceRow } from "../lib/synth/tensors.js";
import { writeGguf, gguf } from "../lib/formats/gguf-writer.js";
import { writeSafetensorsFile } from "../lib/formats/safetensors-writer.js";
import { parseSentencePieceModel } from "../lib/tokenizer/sentencepiece-model.js";
import { Llama2Error, InvalidArgumentError } from "../lib/errors.js";

// ---------------------------------------------------------------- a test-only GGUF reader
const TYPE_NAMES = ["u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "str", "arr", "u64", "i64", "f64"];
const GGML = { 0: "F32", 1: "F16", 8: "Q8_0", 30: "BF16" } as Record<number, string>;
interface KV {
  type: string;
  itemType?: string;
  value: unknown;
}
interface GgufFile {
  version: number;
  kv: Map<string, KV>;
  tensors: Map<string, { dims: number[]; type: string; offset: number }>;
  order: string[];
  dataStart: number;
  buf: Buffer;
}
function readGguf(file: string): GgufFile {
  const b = readFileSync(file);
  let p = 0;
  const u32 = () => ((p += 4), b.readUInt32LE(p - 4));
  const u64 = () => ((p += 8), Number(b.readBigUInt64LE(p - 8)));
  const str = () => {
    const n = u64();
    p += n;
    return b.toString("utf8", p - n, p);
  };
  const val = (t: number): unknown => {
    switch (t) {
      case 0: return b.readUInt8(p++);
      case 1: return b.readInt8(p++);
      case 2: return (p += 2), b.readUInt16LE(p - 2);
      case 3: return (p += 2), b.readInt16LE(p - 2);
      case 4: return u32();
      case 5: return (p += 4), b.readInt32LE(p - 4);
      case 6: return (p += 4), b.readFloatLE(p - 4);
      case 7: return b.readUInt8(p++) !== 0;
      case 8: return str();
      case 10: return (p += 8), b.readBigUInt64LE(p - 8);
      case 11: return (p += 8), b.readBigInt64LE(p - 8);
      case 12: return (p += 8), b.readDoubleLE(p - 8);
    }
    throw new Error(`bad type ${t}`);
  };
  expect(b.toString("ascii", 0, 4)).toBe("GGUF");
  p = 4;
  const version = u32();
  const nt = u64();
  const nkv = u64();
  const kv = new Map<string, KV>();
  for (let i = 0; i < nkv; i++) {
    const key = str();
    const t = u32();
    if (t === 9) {
      const it = u32();
      const n = u64();
      const arr: unknown[] = [];
      for (let j = 0; j < n; j++) arr.push(val(it));
      kv.set(key, { type: "arr", itemType: TYPE_NAMES[it], value: arr });
    } else kv.set(key, { type: TYPE_NAMES[t]!, value: val(t) });
  }
  const tensors = new Map<string, { dims: number[]; type: string; offset: number }>();
  const order: string[] = [];
  for (let i = 0; i < nt; i++) {
    const name = str();
    const nd = u32();
    const dims = Array.from({ length: nd }, u64);
    const type = GGML[u32()] ?? "?";
    tensors.set(name, { dims, type, offset: u64() });
    order.push(name);
  }
  const align = (kv.get("general.alignment")?.value as number | undefined) ?? 32;
  const dataStart = Math.ceil(p / align) * align;
  return { version, kv, tensors, order, dataStart, buf: b };
}
function tensorBytes(f: GgufFile, name: string): Buffer {
  const t = f.tensors.get(name)!;
  const n = t.dims.reduce((a, b) => a * b, 1);
  const size = t.type === "F32" ? 4 * n : t.type === "Q8_0" ? (n / 32) * 34 : 2 * n;
  return f.buf.subarray(f.dataStart + t.offset, f.dataStart + t.offset + size);
}
/** A GGUF tensor as floats (Q8_0 dequantized). */
function ggufFloats(f: GgufFile, name: string): Float32Array {
  const t = f.tensors.get(name)!;
  const b = tensorBytes(f, name);
  if (t.type === "F32") return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.length));
  if (t.type === "F16") return Float32Array.from({ length: b.length / 2 }, (_, i) => f16ToF32(b.readUInt16LE(2 * i)));
  if (t.type === "BF16") return Float32Array.from({ length: b.length / 2 }, (_, i) => bf16ToF32(b.readUInt16LE(2 * i)));
  const out = new Float32Array((b.length / 34) * 32);
  for (let k = 0; k < b.length / 34; k++) {
    const d = f16ToF32(b.readUInt16LE(34 * k));
    for (let i = 0; i < 32; i++) out[32 * k + i] = d * b.readInt8(34 * k + 2 + i);
  }
  return out;
}

// ---------------------------------------------------------------- a test-only safetensors reader
interface StFile {
  header: Record<string, any>;
  dataStart: number;
  buf: Buffer;
}
function readSt(file: string): StFile {
  const buf = readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  return { header: JSON.parse(buf.toString("utf8", 8, 8 + n)), dataStart: 8 + n, buf };
}
function stFloats(f: StFile, name: string): Float32Array {
  const t = f.header[name];
  const b = f.buf.subarray(f.dataStart + t.data_offsets[0], f.dataStart + t.data_offsets[1]);
  if (t.dtype === "F32") return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.length));
  const dec = t.dtype === "F16" ? f16ToF32 : bf16ToF32;
  return Float32Array.from({ length: b.length / 2 }, (_, i) => dec(b.readUInt16LE(2 * i)));
}

/** The rows of llama.cpp's permute, written as the reshape/swapaxes it is: (h, half, j) -> (h, j, half). */
function permuteRows(w: Float32Array, rows: number, cols: number, nHead: number): Float32Array {
  const hd = rows / nHead;
  const out = new Float32Array(w.length);
  for (let h = 0; h < nHead; h++)
    for (let half = 0; half < 2; half++)
      for (let j = 0; j < hd / 2; j++) {
        const src = h * hd + half * (hd / 2) + j;
        const dst = h * hd + j * 2 + half;
        out.set(w.subarray(src * cols, (src + 1) * cols), dst * cols);
      }
  return out;
}

const sha = (file: string) => createHash("sha256").update(readFileSync(file)).digest("hex");

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), "llama2-synth-"));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function make(name: string, o: Partial<SyntheticModelOptions>) {
  return makeSyntheticModel({ preset: "tiny", format: "gguf", out: path.join(dir, name), seed: 7, ...o });
}

describe("GGUF writer", () => {
  it("writes every metadata type, honours general.alignment, and pads tensors", async () => {
    const file = path.join(dir, "types.gguf");
    const bytes = (arr: Uint8Array) => () => [arr];
    await writeGguf(file, {
      metadata: [
        ["general.alignment", gguf.u32(64)],
        ["t.u8", gguf.u8(255)],
        ["t.i32", gguf.i32(-5)],
        ["t.u64", gguf.u64(2n ** 40n)],
        ["t.f32", gguf.f32(0.5)],
        ["t.f64", gguf.f64(1e-300)],
        ["t.bool", gguf.bool(true)],
        ["t.str", gguf.str("héllo")],
        ["t.arr_str", gguf.arr("STRING", ["a", "", "▁b"])],
        ["t.arr_i32", gguf.arr("INT32", Int32Array.from([1, -2]))],
        ["t.i16", { type: "INT16", value: -300 }],
        ["t.i64", { type: "INT64", value: -(2n ** 62n) }],
      ],
      tensors: [
        { name: "a", type: "F32", dims: [3], data: bytes(new Uint8Array(12).fill(1)) },
        { name: "b", type: "F16", dims: [4, 2], data: bytes(new Uint8Array(16).fill(2)) },
        { name: "c", type: "Q8_0", dims: [32], data: bytes(new Uint8Array(34).fill(3)) },
      ],
    });
    const f = readGguf(file);
    expect(f.version).toBe(3);
    expect(Object.fromEntries([...f.kv].map(([k, v]) => [k, v.value]))).toEqual({
      "general.alignment": 64,
      "t.u8": 255,
      "t.i32": -5,
      "t.u64": 2n ** 40n,
      "t.f32": 0.5,
      "t.f64": 1e-300,
      "t.bool": true,
      "t.str": "héllo",
      "t.arr_str": ["a", "", "▁b"],
      "t.arr_i32": [1, -2],
      "t.i16": -300,
      "t.i64": -(2n ** 62n),
    });
    expect(f.dataStart % 64).toBe(0);
    expect([...f.tensors.values()].map((t) => t.offset)).toEqual([0, 64, 128]);
    expect(f.tensors.get("b")!.dims).toEqual([4, 2]);
    expect(statSync(file).size).toBe(f.dataStart + 128 + 64); // the last tensor is padded too
    expect([...tensorBytes(f, "c")]).toEqual(new Array(34).fill(3));
  });

  it("rejects bad specs with typed errors naming the field", async () => {
    const file = path.join(dir, "bad.gguf");
    const none = () => [];
    const cases: Array<[Parameters<typeof writeGguf>[1], string]> = [
      [{ metadata: [["k", gguf.u32(-1)]], tensors: [] }, "metadata.k"],
      [{ metadata: [["k", gguf.u8(256)]], tensors: [] }, "metadata.k"],
      [{ metadata: [["k", gguf.str("a")], ["k", gguf.str("b")]], tensors: [] }, "metadata.k"],
      [{ metadata: [["general.alignment", gguf.u32(12)]], tensors: [] }, "metadata.general.alignment"],
      [{ metadata: [], tensors: [{ name: "q", type: "Q8_0", dims: [33], data: none }] }, "tensors.q.dims"],
      [{ metadata: [], tensors: [{ name: "z", type: "F16", dims: [0], data: none }] }, "tensors.z.dims"],
      [{ metadata: [], tensors: [{ name: "x".repeat(64), type: "F16", dims: [1], data: none }] }, `tensors.${"x".repeat(64)}`],
    ];
    for (const [spec, field] of cases) {
      const err = await writeGguf(file, spec).catch((e) => e);
      expect(err).toBeInstanceOf(InvalidArgumentError);
      expect(err.field).toBe(field);
    }
    expect(existsSync(file)).toBe(false);
  });

  it("leaves no file (final or temporary) when a producer fails or gives the wrong size", async () => {
    const file = path.join(dir, "fail.gguf");
    const failing = function* () {
      yield new Uint8Array(8);
      throw new Error("producer broke");
    };
    const err = await writeGguf(file, { metadata: [], tensors: [{ name: "t", type: "F32", dims: [4], data: failing }] }).catch((e) => e);
    expect(err).toBeInstanceOf(Llama2Error);
    expect(err.message).toMatch(/producer broke/);
    const short = await writeGguf(file, { metadata: [], tensors: [{ name: "t", type: "F32", dims: [4], data: () => [new Uint8Array(8)] }] }).catch((e) => e);
    expect(short.code).toBe("ERR_INTERNAL");
    expect(short.message).toMatch(/tensor t: .*8 bytes, expected 16/);
    expect(existsSync(file) || existsSync(`${file}.tmp`)).toBe(false);
  });
});

describeShared("synthetic GGUF vs llama.cpp's converter output", ["models/tiny-llama-f16.gguf", "models/tiny-llama-q8_0.gguf"], () => {
  // The `tiny` preset has the shape of the shared tiny model, so everything but the weights and
  // names must match what convert_hf_to_gguf.py wrote.
  for (const [dtype, ref] of [["f16", "models/tiny-llama-f16.gguf"], ["q8_0", "models/tiny-llama-q8_0.gguf"]] as const) {
    it(`${dtype}: same metadata keys and types, same tensors, dims and types, aligned`, async () => {
      const m = await make(`tiny-${dtype}.gguf`, { dtype });
      const ours = readGguf(m.path);
      const theirs = readGguf(sharedPath(ref));
      for (const [k, v] of theirs.kv) {
        expect(ours.kv.has(k), k).toBe(true);
        expect([ours.kv.get(k)!.type, ours.kv.get(k)!.itemType], k).toEqual([v.type, v.itemType]);
        if (k.startsWith("llama.") || k.startsWith("tokenizer.ggml.") || k === "general.file_type" || k === "general.architecture" || k === "general.size_label") {
          if (k === "tokenizer.ggml.scores") continue; // the built-in vocabulary reconstructs scores (same order)
          expect(ours.kv.get(k)!.value, k).toEqual(v.value);
        }
      }
      expect(ours.kv.get("tokenizer.ggml.add_bos_token")?.value).toBe(true);
      expect(ours.kv.get("tokenizer.ggml.unknown_token_id")?.value).toBe(0);
      expect(new Set(ours.tensors.keys())).toEqual(new Set(theirs.tensors.keys()));
      for (const [name, t] of theirs.tensors) {
        expect({ dims: ours.tensors.get(name)!.dims, type: ours.tensors.get(name)!.type }, name).toEqual({ dims: t.dims, type: t.type });
      }
      expect(ours.dataStart % 32).toBe(0);
      for (const t of ours.tensors.values()) expect(t.offset % 32).toBe(0);
      expect(statSync(m.path).size % 32).toBe(0);
    });
  }
});

describeShared("Q/K permutation and Q8_0 bytes match llama.cpp", ["models/tiny-llama-hf/model.safetensors", "models/tiny-llama-f16.gguf", "models/tiny-llama-q8_0.gguf"], () => {
  // The shared GGUFs were converted from the shared HF weights: re-doing the conversion with our
  // permutation and quantizer must give their bytes exactly.
  it("our permutation of the HF rows is the converter's", () => {
    const hf = readSt(sharedPath("models/tiny-llama-hf/model.safetensors"));
    const g = readGguf(sharedPath("models/tiny-llama-f16.gguf"));
    for (const [hfName, gName, nHead] of [
      ["model.layers.1.self_attn.q_proj.weight", "blk.1.attn_q.weight", 8],
      ["model.layers.1.self_attn.k_proj.weight", "blk.1.attn_k.weight", 4],
    ] as const) {
      const [rows, cols] = hf.header[hfName].shape as [number, number];
      const w = stFloats(hf, hfName);
      const viaLib = new Float32Array(w.length);
      for (let r = 0; r < rows; r++) {
        const s = permutedSourceRow(r, rows, nHead);
        viaLib.set(w.subarray(s * cols, (s + 1) * cols), r * cols);
      }
      expect(viaLib).toEqual(ggufFloats(g, gName));
      expect(permuteRows(w, rows, cols, nHead)).toEqual(ggufFloats(g, gName));
    }
  });

  it("our Q8_0 quantizer gives the converter's bytes", () => {
    const hf = readSt(sharedPath("models/tiny-llama-hf/model.safetensors"));
    const g = readGguf(sharedPath("models/tiny-llama-q8_0.gguf"));
    for (const [hfName, gName, nHead] of [
      ["model.layers.0.mlp.gate_proj.weight", "blk.0.ffn_gate.weight", 0],
      ["model.embed_tokens.weight", "token_embd.weight", 0],
      ["model.layers.0.self_attn.q_proj.weight", "blk.0.attn_q.weight", 8],
    ] as const) {
      const [rows, cols] = hf.header[hfName].shape as [number, number];
      let w = stFloats(hf, hfName);
      if (nHead) w = permuteRows(w, rows, cols, nHead);
      const out = new Uint8Array((w.length / 32) * 34);
      quantizeQ8_0(w, w.length, out, 0);
      expect(Buffer.from(out).equals(tensorBytes(g, gName)), gName).toBe(true);
    }
  });
});

describeShared("synthetic HF directory vs transformers' output", ["models/tiny-llama-hf/model.safetensors"], () => {
  it("same tensor names, shapes and dtypes; a Llama-2-style config.json; a tokenizer.model", async () => {
    const m = await make("tiny-hf", { format: "hf" });
    expect(readdirSync(m.path).sort()).toEqual(["config.json", "generation_config.json", "model.safetensors", "tokenizer.model"]);
    const ours = readSt(path.join(m.path, "model.safetensors"));
    const theirs = readSt(sharedPath("models/tiny-llama-hf/model.safetensors"));
    expect(ours.dataStart % 8).toBe(0);
    const shape = (h: Record<string, any>) =>
      Object.fromEntries(Object.entries(h).filter(([k]) => k !== "__metadata__").map(([k, v]) => [k, [v.dtype, v.shape]]));
    expect(shape(ours.header)).toEqual(shape(theirs.header));
    // data_offsets tile the data section exactly
    const spans = Object.entries(ours.header).filter(([k]) => k !== "__metadata__").map(([, v]) => v.data_offsets as [number, number]).sort((a, b) => a[0] - b[0]);
    spans.forEach((s, i) => expect(s[0]).toBe(i ? spans[i - 1]![1] : 0));
    expect(ours.buf.length).toBe(ours.dataStart + spans.at(-1)![1]);
    const cfg = JSON.parse(readFileSync(path.join(m.path, "config.json"), "utf8"));
    const ref = JSON.parse(readFileSync(sharedPath("models/tiny-llama-hf/config.json"), "utf8"));
    for (const k of ["hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers", "num_key_value_heads", "vocab_size", "max_position_embeddings", "rms_norm_eps", "model_type", "architectures", "tie_word_embeddings", "bos_token_id", "eos_token_id"])
      expect(cfg[k], k).toEqual(ref[k]);
    expect(cfg.rope_theta).toBe(ref.rope_parameters.rope_theta); // Llama-2-7b-chat-hf style: top level
    expect(cfg.torch_dtype).toBe("float16");
    const vocab = parseSentencePieceModel(readFileSync(path.join(m.path, "tokenizer.model")));
    expect(vocab.tokens.length).toBe(32000);
  });
});

describe("one seed, one model in every format", () => {
  let g16: GgufFile, g32: GgufFile, gq8: GgufFile, gbf: GgufFile;
  let h16: StFile, hbf: StFile, h32: StFile;
  beforeAll(async () => {
    // A non-default shape (GQA 8:2, head size 16) so that the permutation is not trivially symmetric.
    const o = { overrides: { dim: 128, heads: 8, kvHeads: 2, ffn: 96, layers: 1, vocab: 300 } };
    g16 = readGguf((await make("s-f16.gguf", { ...o, dtype: "f16" })).path);
    g32 = readGguf((await make("s-f32.gguf", { ...o, dtype: "f32" })).path);
    gbf = readGguf((await make("s-bf16.gguf", { ...o, dtype: "bf16" })).path);
    gq8 = readGguf((await make("s-q8.gguf", { ...o, dtype: "q8_0" })).path);
    h16 = readSt(path.join((await make("s-hf16", { ...o, format: "hf", dtype: "f16" })).path, "model.safetensors"));
    hbf = readSt(path.join((await make("s-hfbf", { ...o, format: "hf", dtype: "bf16" })).path, "model.safetensors"));
    h32 = readSt(path.join((await make("s-hf32", { ...o, format: "hf", dtype: "f32" })).path, "model.safetensors"));
  });

  const pairs = [
    ["model.embed_tokens.weight", "token_embd.weight", 0],
    ["model.layers.0.input_layernorm.weight", "blk.0.attn_norm.weight", 0],
    ["model.layers.0.self_attn.q_proj.weight", "blk.0.attn_q.weight", 8],
    ["model.layers.0.self_attn.k_proj.weight", "blk.0.attn_k.weight", 2],
    ["model.layers.0.self_attn.v_proj.weight", "blk.0.attn_v.weight", 0],
    ["model.layers.0.mlp.down_proj.weight", "blk.0.ffn_down.weight", 0],
    ["model.norm.weight", "output_norm.weight", 0],
    ["lm_head.weight", "output.weight", 0],
  ] as const;

  it("HF f16, bf16 and f32 hold bit-identical values", () => {
    for (const [name] of pairs) {
      expect(stFloats(hbf, name), name).toEqual(stFloats(h16, name));
      expect(stFloats(h32, name), name).toEqual(stFloats(h16, name));
    }
  });

  it("GGUF F16/F32/BF16 hold the HF values, Q and K rows permuted as llama.cpp does", () => {
    for (const [hfName, gName, nHead] of pairs) {
      const shape = h16.header[hfName].shape as number[];
      let w = stFloats(h16, hfName);
      if (nHead) w = permuteRows(w, shape[0]!, shape[1]!, nHead);
      expect(ggufFloats(g16, gName), gName).toEqual(w);
      expect(ggufFloats(g32, gName), gName).toEqual(w);
      expect(ggufFloats(gbf, gName), gName).toEqual(w);
      if (nHead) expect(ggufFloats(g16, gName)).not.toEqual(stFloats(h16, hfName)); // the permutation did something
    }
  });

  it("Q8_0 is the same model within its rounding (|error| <= d/2 + 127 x the fp16 rounding of d)", () => {
    for (const [, gName] of pairs) {
      const ref = ggufFloats(g16, gName);
      const q = ggufFloats(gq8, gName);
      if (gq8.tensors.get(gName)!.type !== "Q8_0") {
        expect(q).toEqual(ref); // norms (F32) and rows not divisible by 32 (F16) are not quantized
        continue;
      }
      for (let b = 0; b < ref.length; b += 32) {
        let amax = 0;
        for (let i = b; i < b + 32; i++) amax = Math.max(amax, Math.abs(ref[i]!));
        const d = amax / 127;
        for (let i = b; i < b + 32; i++) expect(Math.abs(q[i]! - ref[i]!)).toBeLessThanOrEqual(d * (0.5 + 127 * 2 ** -11) + 1e-9);
      }
    }
    expect(gq8.tensors.get("blk.0.ffn_down.weight")!.type).toBe("Q8_0"); // ffn 96 = 3 blocks
  });

  it("weights have the documented scale and no non-finite values", () => {
    const std = (a: Float32Array) => Math.sqrt(a.reduce((s, v) => s + v * v, 0) / a.length);
    expect(std(stFloats(h32, "model.embed_tokens.weight"))).toBeCloseTo(1, 1);
    expect(std(stFloats(h32, "model.layers.0.self_attn.q_proj.weight")) * Math.sqrt(128)).toBeCloseTo(0.5, 1);
    expect(std(stFloats(h32, "model.layers.0.mlp.down_proj.weight")) * Math.sqrt(96)).toBeCloseTo(0.5, 1);
    const norm = stFloats(h32, "model.norm.weight");
    expect(Math.abs(norm.reduce((a, b) => a + b, 0) / norm.length - 1)).toBeLessThan(0.01);
    for (const [n] of pairs) expect(stFloats(h32, n).every(Number.isFinite)).toBe(true);
  });
});

describe("determinism and layout", () => {
  it("same options give byte-identical files; another seed gives other weights", async () => {
    const o = { dtype: "q8_0" as const, overrides: { layers: 1 } };
    const a = await make("d1.gguf", o);
    const b = await make("d2.gguf", o);
    const c = await make("d3.gguf", { ...o, seed: 8 });
    expect(sha(a.path)).toBe(sha(b.path));
    expect(sha(a.path)).not.toBe(sha(c.path));
    const h1 = await make("d1-hf", { format: "hf", overrides: { layers: 1 } });
    const h2 = await make("d2-hf", { format: "hf", overrides: { layers: 1 } });
    for (const f of ["model.safetensors", "config.json", "tokenizer.model"]) expect(sha(path.join(h1.path, f))).toBe(sha(path.join(h2.path, f)));
  });

  it("shards a large HF model with an index like transformers", async () => {
    const m = await make("sharded", { format: "hf", maxShardBytes: 3e6 }); // tiny: ~8.4 MB of weights
    const index = JSON.parse(readFileSync(path.join(m.path, "model.safetensors.index.json"), "utf8"));
    const shards = [...new Set(Object.values(index.weight_map))].sort() as string[];
    expect(shards.length).toBeGreaterThan(1);
    shards.forEach((s, i) => expect(s).toBe(`model-${String(i + 1).padStart(5, "0")}-of-${String(shards.length).padStart(5, "0")}.safetensors`));
    let total = 0;
    const names = new Set<string>();
    for (const s of shards) {
      const f = readSt(path.join(m.path, s));
      for (const [k, v] of Object.entries(f.header)) {
        if (k === "__metadata__") continue;
        expect(index.weight_map[k]).toBe(s);
        names.add(k);
        total += v.data_offsets[1] - v.data_offsets[0];
      }
    }
    expect(names.size).toBe(Object.keys(index.weight_map).length);
    expect(names.size).toBe(2 + 2 * 9 + 1);
    expect(index.metadata.total_size).toBe(total);
    expect(existsSync(path.join(m.path, "model.safetensors"))).toBe(false);
  });

  it("keeps memory bounded while streaming a ~300 MB file", async () => {
    const rss = () => process.memoryUsage().rss;
    global.gc?.();
    const before = rss();
    let peak = before;
    const timer = setInterval(() => (peak = Math.max(peak, rss())), 5);
    const m = await make("big.gguf", {
      overrides: { dim: 1024, ffn: 2752, layers: 8 },
      onProgress: () => (peak = Math.max(peak, rss())),
    });
    clearInterval(timer);
    expect(m.bytes).toBeGreaterThan(300e6);
    // two 16 MB chunk buffers, value tables and the tokenizer metadata; not the file
    expect(peak - before).toBeLessThan(150e6);
    rmSync(m.path);
  });

  it("safetensors writer checks its tensors", async () => {
    const err = await writeSafetensorsFile(path.join(dir, "x.safetensors"), [{ name: "a", dtype: "I8" as "F16", shape: [1], data: () => [] }]).catch((e) => e);
    expect(err).toBeInstanceOf(InvalidArgumentError);
    expect(err.field).toBe("tensors.a.dtype");
  });
});

describe("options and errors", () => {
  it("presets have the documented shapes", () => {
    expect(PRESETS["llama2-7b"]).toMatchObject({ dim: 4096, layers: 32, heads: 32, kvHeads: 32, ffn: 11008, vocab: 32000, context: 4096 });
    expect(PRESETS["llama2-13b"]).toMatchObject({ dim: 5120, layers: 40, heads: 40, kvHeads: 40, ffn: 13824 });
    expect(PRESETS["llama2-70b-shape-2-layers"]).toMatchObject({ dim: 8192, layers: 2, heads: 64, kvHeads: 8, ffn: 28672 });
    expect(PRESETS.tiny).toMatchObject({ dim: 64, layers: 2, heads: 8, kvHeads: 4, ffn: 172, vocab: 32000, context: 512 });
    expect(PRESETS.demo).toMatchObject({ dim: 256, layers: 4, heads: 8, kvHeads: 4, ffn: 688, context: 2048 });
  });

  it("bad options are typed errors naming the field", async () => {
    const cases: Array<[Partial<SyntheticModelOptions>, string]> = [
      [{ preset: "llama3" }, "preset"],
      [{ format: "onnx" as "hf" }, "format"],
      [{ dtype: "q4_0" as "f16" }, "dtype"],
      [{ format: "hf", dtype: "q8_0" }, "dtype"],
      [{ seed: -1 }, "seed"],
      [{ seed: 1.5 }, "seed"],
      [{ overrides: { heads: 6 } }, "heads"],
      [{ overrides: { kvHeads: 3 } }, "kvHeads"],
      [{ overrides: { layers: 0 } }, "layers"],
      [{ overrides: { dim: 2.5 } }, "dim"],
      [{ out: path.join(dir, "no/such/dir/m.gguf") }, "out"],
      [{ tokenizer: sharedPath("models/tokenizer.model"), overrides: { vocab: 1000 } }, "vocab"],
    ];
    for (const [o, field] of cases) {
      const err = await make("bad.gguf", o).catch((e) => e);
      expect(err, field).toBeInstanceOf(InvalidArgumentError);
      expect(err.field).toBe(field);
    }
    const missing = await make("bad.gguf", { tokenizer: path.join(dir, "missing.model") }).catch((e) => e);
    expect(missing.code).toBe("ERR_FILE_NOT_FOUND");
    expect(existsSync(path.join(dir, "bad.gguf"))).toBe(false);
  });

  it("refuses to overwrite without force, and never replaces a non-model directory", async () => {
    const m = await make("once.gguf", { overrides: { vocab: 256 } });
    const err = await make("once.gguf", { overrides: { vocab: 256 } }).catch((e) => e);
    expect(err.field).toBe("out");
    expect((await make("once.gguf", { overrides: { vocab: 256 }, force: true })).path).toBe(m.path);
    const other = path.join(dir, "not-a-model");
    mkdirSync(other);
    writeFileSync(path.join(other, "notes.txt"), "keep me");
    const err2 = await make("not-a-model", { format: "hf", force: true }).catch((e) => e);
    expect(err2.field).toBe("out");
    expect(readFileSync(path.join(other, "notes.txt"), "utf8")).toBe("keep me");
  });

  it("a vocabulary other than 32000 gets no tokenizer", async () => {
    const g = await make("v1000.gguf", { overrides: { vocab: 1000 } });
    expect(g.tokenizer).toBeNull();
    const f = readGguf(g.path);
    expect([...f.kv.keys()].some((k) => k.startsWith("tokenizer."))).toBe(false);
    expect(f.kv.get("llama.vocab_size")!.value).toBe(1000);
    const h = await make("v1000-hf", { format: "hf", overrides: { vocab: 1000 } });
    expect(existsSync(path.join(h.path, "tokenizer.model"))).toBe(false);
  });
});

describeShared("a given tokenizer.model", ["models/tokenizer.model"], () => {
  it("is embedded in GGUF metadata and copied into HF directories", async () => {
    const tok = sharedPath("models/tokenizer.model");
    const g = readGguf((await make("tok.gguf", { tokenizer: tok, overrides: { layers: 1 } })).path);
    const vocab = parseSentencePieceModel(readFileSync(tok));
    expect(g.kv.get("tokenizer.ggml.tokens")!.value).toEqual(vocab.tokens);
    expect(g.kv.get("tokenizer.ggml.scores")!.value).toEqual([...vocab.scores]);
    const h = await make("tok-hf", { format: "hf", tokenizer: tok, overrides: { layers: 1 } });
    expect(sha(path.join(h.path, "tokenizer.model"))).toBe(sha(tok));
  });
});

describe("demo model", () => {
  it("is generated once, atomically, and shared by concurrent callers", async () => {
    const d = path.join(dir, "home", "models");
    const paths = await Promise.all([ensureDemoModel({ dir: d }), ensureDemoModel({ dir: d }), ensureDemoModel({ dir: d })]);
    expect(new Set(paths).size).toBe(1);
    expect(readdirSync(d)).toEqual(["demo-v1.gguf"]); // no temporaries left
    const f = readGguf(paths[0]!);
    expect(f.kv.get("general.name")!.value).toBe(DEMO_MODEL_NAME);
    expect(f.kv.get("llama.embedding_length")!.value).toBe(256);
    expect(f.kv.get("llama.block_count")!.value).toBe(4);
    expect((f.kv.get("tokenizer.ggml.tokens")!.value as string[]).length).toBe(32000);
    const before = statSync(paths[0]!).mtimeMs;
    expect(await ensureDemoModel({ dir: d })).toBe(paths[0]);
    expect(statSync(paths[0]!).mtimeMs).toBe(before);
  });

  it("lives under LLAMA2_HOME by default", async () => {
    const old = process.env.LLAMA2_HOME;
    process.env.LLAMA2_HOME = path.join(dir, "home2");
    try {
      expect(await ensureDemoModel()).toBe(path.join(dir, "home2", "models", "demo-v1.gguf"));
    } finally {
      if (old === undefined) delete process.env.LLAMA2_HOME;
      else process.env.LLAMA2_HOME = old;
    }
  });
});

describe("half-precision helpers", () => {
  it("round to nearest even and round-trip", () => {
    for (const v of [0, -0, 1, -2.5, 65504, 6.103515625e-5, 5.960464477539063e-8]) expect(f16ToF32(f32ToF16(v))).toBe(v); // exact in fp16
    expect(Math.abs(f16ToF32(f32ToF16(0.1)) - 0.1)).toBeLessThanOrEqual(0.1 * 2 ** -11);
    expect(f32ToF16(65520)).toBe(0x7c00); // rounds up to inf
    expect(f32ToF16(1 + 2 ** -11)).toBe(0x3c00); // tie -> even
    expect(f32ToF16(1 + 3 * 2 ** -11)).toBe(0x3c02);
    expect(f32ToBf16(1 + 2 ** -8)).toBe(0x3f80);
    expect(bf16ToF32(f32ToBf16(-3.5))).toBe(-3.5);
  });
});

describe("llama2 make-model", () => {
  const run = (args: string[]) => runCli(["make-model", ...args]);

  it("writes a model, refuses to overwrite, and says when there is no tokenizer", async () => {
    const out = path.join(dir, "cli.gguf");
    const a = await run(["--preset", "tiny", "--out", out, "--vocab", "512", "--layers", "1", "--seed", "3", "--quiet"]);
    expect(a.code).toBe(0);
    expect(a.stdout).toMatch(/tokenizer: none/);
    expect(readGguf(out).kv.get("llama.vocab_size")!.value).toBe(512);
    const b = await run(["--preset", "tiny", "--out", out, "--vocab", "512", "--quiet"]);
    expect(b.code).toBe(2);
    expect(b.stderr).toMatch(/error \[ERR_INVALID_ARGUMENT\]: --out: .*already exists/);
    const c = await run(["--preset", "tiny", "--out", out, "--format", "hf", "--dtype", "q8_0", "--force"]);
    expect(c.stderr).toMatch(/--dtype: q8_0 is a GGUF type/);
    const d = await run(["--out", out]);
    expect(d.stderr).toMatch(/--preset: required/);
  });

  it("prints progress on stderr", async () => {
    const r = await run(["--preset", "tiny", "--format", "hf", "--out", path.join(dir, "cli-hf"), "--layers", "1"]);
    expect(r.code).toBe(0);
    expect(r.stderr).toMatch(/100% /);
    expect(r.stdout).toMatch(/built-in Llama 2 vocabulary/);
  });
});
