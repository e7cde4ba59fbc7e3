// Bad input never crashes: missing/truncated/corrupt model files, wrong tensor shapes and dtypes,
// bad config.json, unsupported architectures, invalid load and generate options, prompts longer than
// the context, text APIs without a tokenizer. Each gives a typed error with the right `code` and a
// message naming the file / field / value, and a loaded model stays usable afterwards.
// Corrupted copies are written to a temp directory (helpers/corrupt.ts).
import { readFileSync } from "node:fs";
import path from "node:path";
import { afterAll, beforeAll, expect, it } from "vitest";
import { Llama2Error, fromNative, type ErrorCode } from "../lib/errors.js";
import { Llama2 } from "../lib/llama2.js";
import { native } from "../lib/native.js";
import type { GenerateOptions, LoadOptions } from "../lib/types.js";
import { Scratch, encodeSafetensors, ggufKv, ggufLayout, ggufTensor, readSafetensors, safetensorsHeaderBytes } from "./helpers/corrupt.js";
import { describeShared, readSharedJson, sharedPath } from "./helpers/shared.js";

const STORIES = "models/stories260K.bin";
const STORIES_FX = "fixtures/stories260K-greedy.json";
const TINY_HF = "models/tiny-llama-hf";
const TINY_F16 = "models/tiny-llama-f16.gguf";
const TOKENIZER = "models/tokenizer.model";

/** An array nested 100,000 deep: printing it with String() or JSON.stringify overflows the stack. */
function deep(): unknown[] {
  let v: unknown[] = [];
  for (let i = 0; i < 100_000; i++) v = [v];
  return v;
}

/** Awaits `fn` (sync or async) and returns the error it throws (failing when it does not). */
async function failure(fn: () => unknown): Promise<Llama2Error> {
  let result: unknown;
  try {
    result = await fn();
  } catch (err) {
    expect(err).toBeInstanceOf(Llama2Error);
    return err as Llama2Error;
  }
  if (result instanceof Llama2) await result.dispose();
  throw new Error(`expected an error, got ${String(result)}`);
}

/** The error has `code` and its message contains every one of `mentions`. */
async function expectError(fn: () => unknown, code: ErrorCode, ...mentions: string[]): Promise<Llama2Error> {
  const err = await failure(fn);
  expect(err.code, err.message).toBe(code);
  for (const m of mentions) expect(err.message).toContain(m);
  return err;
}

// Thunks for expect(...).rejects / toThrow: loading on the CPU, and readModelInfo with typed errors.
const load = (p: string, o: LoadOptions = {}) => () => Llama2.load(p, { device: "cpu", maxSequences: 1, ...o });
const readInfo = (p: string, withTensors = false) => () => {
  try {
    return native().readModelInfo(p, withTensors);
  } catch (err) {
    throw fromNative(err);
  }
};
const info = (p: string) => readInfo(p);

describeShared("bad model files", [STORIES, TINY_HF, TINY_F16], () => {
  const scratch = new Scratch();
  afterAll(() => scratch.cleanup());
  const hf = sharedPath(TINY_HF);
  const gguf = sharedPath(TINY_F16);
  const stories = sharedPath(STORIES);

  it("missing file or directory -> ERR_FILE_NOT_FOUND naming the path", async () => {
    const missing = path.join(scratch.dir, "nope.gguf");
    await expectError(load(missing), "ERR_FILE_NOT_FOUND", missing);
    await expectError(load(path.join(scratch.dir, "no-such-dir/")), "ERR_FILE_NOT_FOUND", "no-such-dir");
    await expectError(() => Llama2.load(stories, { tokenizerPath: missing }), "ERR_FILE_NOT_FOUND", missing);
  });

  it("a directory without config.json, or without weights -> ERR_FILE_NOT_FOUND naming what is missing", async () => {
    await expectError(load(scratch.dir), "ERR_FILE_NOT_FOUND", scratch.dir, "config.json");
    const noWeights = scratch.hfDir(hf, { files: { "model.safetensors": null } });
    await expectError(load(noWeights), "ERR_FILE_NOT_FOUND", noWeights, "model.safetensors");
  });

  it("a GGUF truncated in the magic, header, metadata, tensor infos or data -> ERR_MODEL_CORRUPT naming the file", async () => {
    const L = ggufLayout(readFileSync(gguf));
    const tokens = ggufKv(L, "tokenizer.ggml.tokens");
    const cuts: [string, number, string][] = [
      ["magic", 3, "GGUF"],
      ["header", 12, "byte"],
      ["metadata key", L.kvs[3]!.start + 10, "byte"],
      ["metadata array", tokens.valueAt + 1000, "byte"],
      ["tensor infos", L.tensors[5]!.start + 12, "byte"],
      ["data", L.dataStart + 1000, "outside the file"],
      ["last byte", L.size - 1, "outside the file"],
    ];
    for (const [where, n, mention] of cuts) {
      const p = scratch.truncated(gguf, n);
      const err = await expectError(load(p), "ERR_MODEL_CORRUPT", p, mention);
      expect(err.message, where).toContain(p);
      await expectError(info(p), "ERR_MODEL_CORRUPT", p);
    }
  });

  it("a GGUF with a bad magic -> ERR_MODEL_CORRUPT; an unknown version -> ERR_FORMAT_UNSUPPORTED", async () => {
    const badMagic = scratch.patched(gguf, (b) => b.write("GGUX", 0, "latin1"));
    await expectError(load(badMagic), "ERR_MODEL_CORRUPT", badMagic, "magic");
    const v99 = scratch.patched(gguf, (b) => b.writeUInt32LE(99, 4));
    await expectError(load(v99), "ERR_FORMAT_UNSUPPORTED", v99, "version 99");
    const huge = scratch.patched(gguf, (b) => b.writeBigUInt64LE(1n << 40n, 16)); // metadata count
    await expectError(load(huge), "ERR_MODEL_CORRUPT", huge);
  });

  it("a GGUF tensor with a wrong shape -> ERR_TENSOR_SHAPE naming the tensor, its shape and the expected one", async () => {
    const L = ggufLayout(readFileSync(gguf));
    const q = ggufTensor(L, "blk.0.attn_q.weight");
    expect(q.dims).toEqual([64, 64]);
    // Same element count (the data still fits), other shape: [32, 128].
    const p = scratch.patched(gguf, (b) => {
      b.writeBigUInt64LE(128n, q.dimsAt);
      b.writeBigUInt64LE(32n, q.dimsAt + 8);
    });
    await expectError(load(p), "ERR_TENSOR_SHAPE", p, "blk.0.attn_q.weight", "[32, 128]", "[64, 64]");
    // readModelInfo only maps the file: it reports the shape as stored.
    expect(native().readModelInfo(p, true).tensors!.find((t) => t.fileName === "blk.0.attn_q.weight")!.shape).toEqual([32, 128]);
  });

  it("a GGUF tensor of an unsupported ggml type -> ERR_TENSOR_DTYPE naming tensor and type", async () => {
    const L = ggufLayout(readFileSync(gguf));
    const k = ggufTensor(L, "blk.1.attn_k.weight");
    const p = scratch.patched(gguf, (b) => b.writeUInt32LE(16, k.typeAt)); // IQ2_XXS
    await expectError(load(p), "ERR_TENSOR_DTYPE", p, "blk.1.attn_k.weight", "type 16 (IQ2_XXS");
    const q = scratch.patched(gguf, (b) => b.writeUInt32LE(12, k.typeAt)); // Q4_K: rows of 64 are not 256-blocks
    await expectError(load(q), "ERR_MODEL_CORRUPT", q, "blk.1.attn_k.weight", "not divisible by its block of 256");
  });

  it("a GGUF of another architecture -> ERR_FORMAT_UNSUPPORTED naming it", async () => {
    const L = ggufLayout(readFileSync(gguf));
    const arch = ggufKv(L, "general.architecture");
    expect(arch.value).toBe("llama");
    const p = scratch.patched(gguf, (b) => b.write("qwen2", arch.valueAt + 8, "latin1"));
    await expectError(load(p), "ERR_FORMAT_UNSUPPORTED", p, "qwen2");
  });

  it("a GGUF with a required metadata key missing or an impossible value -> ERR_MODEL_CONFIG naming it", async () => {
    const L = ggufLayout(readFileSync(gguf));
    const blocks = ggufKv(L, "llama.block_count");
    // Rename the key (same length) so it is missing.
    const renamed = scratch.patched(gguf, (b) => b.write("llama.block_cnnnt", blocks.start + 8, "latin1"));
    await expectError(load(renamed), "ERR_MODEL_CONFIG", renamed, "llama.block_count", "missing");
    // Impossible values -> config validation: 3 KV heads for 8 heads.
    const kvHeads = ggufKv(L, "llama.attention.head_count_kv");
    const three = scratch.patched(gguf, (b) => b.writeUInt32LE(3, kvHeads.valueAt));
    await expectError(load(three), "ERR_MODEL_CONFIG", three, "n_kv_heads = 3");
  });

  it("safetensors truncated in the header or the data -> ERR_MODEL_CORRUPT naming the file", async () => {
    const st = path.join(hf, "model.safetensors");
    const headerBytes = safetensorsHeaderBytes(st);
    const size = readFileSync(st).length;
    for (const [n, mention] of [
      [4, "truncated"],
      [Math.floor(headerBytes / 2), "header"],
      [headerBytes + 100, "outside the file"],
      [size - 1, "outside the file"],
    ] as const) {
      const dir = scratch.hfDir(hf, { files: { "model.safetensors": readFileSync(st).subarray(0, n) } });
      await expectError(load(dir), "ERR_MODEL_CORRUPT", path.join(dir, "model.safetensors"), mention);
    }
  });

  it("a safetensors tensor with a wrong shape, an unsupported dtype, or missing -> the matching code naming it", async () => {
    const st = readSafetensors(path.join(hf, "model.safetensors"));
    const edit = (fn: (h: Record<string, any>) => void) => {
      const header = JSON.parse(JSON.stringify(st.header));
      fn(header);
      return scratch.hfDir(hf, { files: { "model.safetensors": encodeSafetensors({ header, data: st.data }) } });
    };
    const q = "model.layers.0.self_attn.q_proj.weight";
    expect(st.header[q].shape).toEqual([64, 64]);
    const shape = edit((h) => (h[q].shape = [32, 128]));
    await expectError(load(shape), "ERR_TENSOR_SHAPE", q, "[32, 128]", "[64, 64]");
    const dtype = edit((h) => (h["model.layers.1.mlp.up_proj.weight"].dtype = "I8"));
    await expectError(load(dtype), "ERR_TENSOR_DTYPE", "model.layers.1.mlp.up_proj.weight", "I8");
    const missing = edit((h) => {
      h["model.layers.1.mlp.up.weight"] = h["model.layers.1.mlp.up_proj.weight"];
      delete h["model.layers.1.mlp.up_proj.weight"];
    });
    await expectError(load(missing), "ERR_TENSOR_MISSING", missing, "layers.1");
    const size = edit((h) => (h[q].shape = [64, 65]));
    await expectError(load(size), "ERR_MODEL_CORRUPT", q);
  });

  it("bad config.json (missing field, non-number, invalid JSON, impossible values) -> ERR_MODEL_CONFIG / ERR_MODEL_CORRUPT naming the field", async () => {
    const cfgFile = (dir: string) => path.join(dir, "config.json");
    const missing = scratch.hfDir(hf, { config: (c) => void delete c.hidden_size });
    await expectError(load(missing), "ERR_MODEL_CONFIG", cfgFile(missing), "hidden_size", "missing");
    const text = scratch.hfDir(hf, { config: (c) => void (c.num_hidden_layers = "two") });
    await expectError(load(text), "ERR_MODEL_CONFIG", cfgFile(text), "num_hidden_layers", "number");
    const frac = scratch.hfDir(hf, { config: (c) => void (c.intermediate_size = 171.5) });
    await expectError(load(frac), "ERR_MODEL_CONFIG", "intermediate_size", "integer");
    const gqa = scratch.hfDir(hf, { config: (c) => void (c.num_key_value_heads = 3) });
    await expectError(load(gqa), "ERR_MODEL_CONFIG", "n_kv_heads", "3");
    const json = scratch.hfDir(hf, { config: () => "{ not json" });
    await expectError(load(json), "ERR_MODEL_CORRUPT", cfgFile(json), "JSON");
    // A config that disagrees with the tensors.
    const wide = scratch.hfDir(hf, { config: (c) => void (c.intermediate_size = 256) });
    await expectError(load(wide), "ERR_TENSOR_SHAPE", "mlp", "[256, 64]");
  });

  it("unsupported architecture or rope scaling in config.json -> ERR_FORMAT_UNSUPPORTED naming it; a bad factor -> ERR_MODEL_CONFIG", async () => {
    const mistral = scratch.hfDir(hf, { config: (c) => void (c.model_type = "mistral") });
    await expectError(load(mistral), "ERR_FORMAT_UNSUPPORTED", "mistral");
    const dynamic = scratch.hfDir(hf, { config: (c) => void (c.rope_scaling = { type: "dynamic", factor: 2 }) });
    await expectError(load(dynamic), "ERR_FORMAT_UNSUPPORTED", "rope_scaling", "'dynamic'", "linear, yarn");
    const llama3 = scratch.hfDir(hf, { config: (c) => void (c.rope_parameters = { rope_type: "llama3", rope_theta: 10000, factor: 8 }) });
    await expectError(load(llama3), "ERR_FORMAT_UNSUPPORTED", "rope_parameters", "'llama3'");
    // Supported types with a missing or impossible factor: a config error naming the field.
    const noFactor = scratch.hfDir(hf, { config: (c) => void (c.rope_parameters = { rope_type: "yarn", rope_theta: 10000 }) });
    await expectError(load(noFactor), "ERR_MODEL_CONFIG", "rope_parameters", "'factor' is missing");
    const huge = scratch.hfDir(hf, { config: (c) => void (c.rope_scaling = { type: "linear", factor: 1e6 }) });
    await expectError(load(huge), "ERR_MODEL_CONFIG", "rope scaling factor");
    await expectError(load(path.join(hf, "model.safetensors")), "ERR_FORMAT_UNSUPPORTED", "config.json");
    const txt = scratch.write("model.txt", "hello");
    await expectError(load(txt), "ERR_FORMAT_UNSUPPORTED", txt);
  });

  it("a truncated llama2.c file -> ERR_MODEL_CORRUPT naming the file and the sizes", async () => {
    const size = readFileSync(stories).length;
    const tiny = scratch.truncated(stories, 20);
    await expectError(load(tiny), "ERR_MODEL_CORRUPT", tiny, "20 bytes");
    const cut = scratch.truncated(stories, size - 4);
    await expectError(load(cut), "ERR_MODEL_CORRUPT", cut, String(size), String(size - 4));
    const badHeader = scratch.patched(stories, (b) => b.writeInt32LE(3, 16)); // 3 KV heads for 8 heads
    await expectError(load(badHeader), "ERR_MODEL_CONFIG", badHeader, "n_kv_heads");
  });

  it("NaN weights load (no scan of every weight) but generating names the model: ERR_MODEL_CORRUPT, not an internal error", async () => {
    // The token embeddings (also the classifier: stories260K ties them) follow the 28-byte header.
    const nan = scratch.patched(stories, (b) => {
      for (let o = 28; o < 28 + 512 * 64 * 4; o += 4) b.writeUInt32LE(0x7fc00000, o);
    });
    const m = await Llama2.load(nan, { device: "cpu", maxSequences: 1 });
    try {
      await expectError(() => m.generate([1, 2, 3], { maxTokens: 2 }).result, "ERR_MODEL_CORRUPT", nan, "NaN");
      expect((await Llama2.load(stories, { device: "cpu", maxSequences: 1 }).then(async (ok) => {
        const r = await ok.generate([1, 2, 3], { maxTokens: 2, temperature: 0 }).result;
        await ok.dispose();
        return r.tokenIds.length;
      }))).toBe(2);
    } finally {
      await m.dispose();
    }
  });

  it("a bad tokenizer: unreadable tokenizer.model, or one that does not match the vocabulary -> ERR_TOKENIZER", async () => {
    const dir = scratch.hfDir(hf, { files: { "tokenizer.model": "garbage" } });
    await expectError(load(dir), "ERR_TOKENIZER", path.join(dir, "tokenizer.model"));
    await expectError(() => Llama2.load(stories, { tokenizerPath: sharedPath(TOKENIZER) }), "ERR_TOKENIZER", "32000", "512");
  });

  it("after all of that, models load and generate normally", async () => {
    const m = await Llama2.load(gguf, { device: "cpu", maxSequences: 1 });
    try {
      expect((await m.generate("Once upon a time", { temperature: 0, maxTokens: 3, stopOnEos: false }).result).tokenIds).toHaveLength(3);
    } finally {
      await m.dispose();
    }
  });
});

// Regressions from the loader fuzz test (test/fuzz-loaders.test.ts), several found by running it on a
// sanitizer build (ASan + UBSan): each file below once loaded with a wrong result, or reached undefined
// behaviour (a float->int cast out of range, a signed overflow, a misaligned read) that x86 happened
// to survive.
describeShared("corrupt files found by the loader fuzz test", [STORIES, TINY_HF, TINY_F16], () => {
  const scratch = new Scratch();
  afterAll(() => scratch.cleanup());
  const hf = sharedPath(TINY_HF);
  const gguf = sharedPath(TINY_F16);
  const stories = sharedPath(STORIES);
  const info = (p: string) => readInfo(p, true);
  const st = () => readSafetensors(path.join(hf, "model.safetensors"));
  const q = "model.layers.0.self_attn.q_proj.weight";

  it("GGUF integer metadata beyond int32 or not a number -> ERR_MODEL_CONFIG naming the key and value (was a UB cast)", async () => {
    const L = ggufLayout(readFileSync(gguf));
    const blocks = ggufKv(L, "llama.block_count");
    expect(blocks.type).toBe(4); // u32
    const wide = scratch.patched(gguf, (b) => b.writeUInt32LE(0xffffffff, blocks.valueAt));
    await expectError(load(wide), "ERR_MODEL_CONFIG", wide, "llama.block_count", "4294967295");
    await expectError(info(wide), "ERR_MODEL_CONFIG", wide, "llama.block_count");
    // Same-size retype u32 -> f32 NaN.
    const dim = ggufKv(L, "llama.embedding_length");
    const nan = scratch.patched(gguf, (b) => {
      b.writeUInt32LE(6, dim.typeAt);
      b.writeUInt32LE(0x7fc00000, dim.valueAt);
    });
    await expectError(load(nan), "ERR_MODEL_CONFIG", nan, "llama.embedding_length", "nan");
  });

  it("a GGUF tensor whose dimensions multiply past 2^64 -> ERR_MODEL_CORRUPT (its byte size used to wrap to 0 and pass)", async () => {
    const L = ggufLayout(readFileSync(gguf));
    const t = ggufTensor(L, "blk.0.attn_q.weight");
    const p = scratch.patched(gguf, (b) => {
      b.writeBigUInt64LE(1n << 32n, t.dimsAt);
      b.writeBigUInt64LE(1n << 32n, t.dimsAt + 8);
    });
    await expectError(info(p), "ERR_MODEL_CORRUPT", p, "blk.0.attn_q.weight", "implausible size");
    await expectError(load(p), "ERR_MODEL_CORRUPT", p, "blk.0.attn_q.weight");
  });

  it("a GGUF tensor at an offset that is not a multiple of the alignment -> ERR_MODEL_CORRUPT (was read misaligned)", async () => {
    const L = ggufLayout(readFileSync(gguf));
    const t = ggufTensor(L, "blk.0.attn_q.weight");
    const p = scratch.patched(gguf, (b) => b.writeBigUInt64LE(BigInt(t.offset + 2), t.offsetAt));
    await expectError(load(p), "ERR_MODEL_CORRUPT", p, "blk.0.attn_q.weight", "not aligned");
    const moved = scratch.patched(gguf, (b) => b.writeBigUInt64LE(BigInt(t.offset + 32), t.offsetAt)); // aligned: loads
    const m = await Llama2.load(moved, { device: "cpu", maxSequences: 1 });
    await m.dispose();
  });

  it("a GGUF metadata array claiming more elements than the file holds -> ERR_MODEL_CORRUPT naming the array (was reserved first)", async () => {
    const L = ggufLayout(readFileSync(gguf));
    const tokens = ggufKv(L, "tokenizer.ggml.tokens");
    for (const n of [1n << 40n, 5_000_000n, 2_000_000n]) {
      const p = scratch.patched(gguf, (b) => b.writeBigUInt64LE(n, tokens.valueAt + 4));
      await expectError(load(p), "ERR_MODEL_CORRUPT", p, "tokenizer.ggml.tokens", String(n));
    }
  });

  it("safetensors shapes and offsets must be whole numbers whose sizes fit (NaN offsets, 2^63-element shapes, 64.5 rows)", async () => {
    const edit = (fn: (h: Record<string, any>) => void, json?: (t: string) => string) => {
      const f = st();
      fn(f.header);
      return scratch.hfDir(hf, { files: { "model.safetensors": encodeSafetensors(f, { json }) } });
    };
    // 2^29 * 2^29 * 32 elements: the int64 count overflowed to 2^63, and * 2 bytes wrapped to 0 = the byte range.
    const wrap = edit((h) => {
      h[q].shape = [2 ** 29, 2 ** 29, 32];
      h[q].data_offsets = [0, 0];
    });
    await expectError(info(wrap), "ERR_MODEL_CORRUPT", wrap, q, "byte size");
    // NaN offsets passed every range comparison; (size_t)NaN matched 2^62 F16 elements.
    const nan = edit(
      (h) => {
        h[q].shape = [2 ** 29, 2 ** 29, 16];
        h[q].data_offsets = ["@NAN@", "@NAN@"];
      },
      (t) => t.replaceAll('"@NAN@"', "NaN"),
    );
    await expectError(info(nan), "ERR_MODEL_CORRUPT", nan, q, "outside the file");
    // A fractional dimension was truncated and the file loaded.
    const frac = edit((h) => (h[q].shape = [64.5, 64]));
    await expectError(load(frac), "ERR_MODEL_CORRUPT", frac, q, "bad shape");
  });

  it("config.json numbers that are NaN, infinite or beyond any integer -> ERR_MODEL_CONFIG naming the field", async () => {
    for (const lit of ["NaN", "Infinity", "-1e308", "1e400"]) {
      const dir = scratch.hfDir(hf, { config: (c) => JSON.stringify({ ...c, hidden_size: "@X@" }).replace('"@X@"', lit) });
      await expectError(load(dir), "ERR_MODEL_CONFIG", path.join(dir, "config.json"), "hidden_size", "integer");
    }
  });

  it("a llama2.c header with vocab_size INT32_MIN -> ERR_MODEL_CONFIG (was a signed overflow)", async () => {
    const p = scratch.patched(stories, (b) => b.writeInt32LE(-2147483648, 20));
    await expectError(load(p), "ERR_MODEL_CONFIG", p, "vocab_size");
  });

  it("a safetensors file without header padding (tensors misaligned for their type) loads and generates like the padded one", async () => {
    const f = st();
    const odd = scratch.hfDir(hf, { files: { "model.safetensors": encodeSafetensors(f, { pad: 1 }) } });
    expect((8 + Number(readFileSync(path.join(odd, "model.safetensors")).readBigUInt64LE(0))) % 2).toBe(1);
    const run = async (p: string) => {
      const m = await Llama2.load(p, { device: "cpu", maxSequences: 1 });
      try {
        return (await m.generate("Once upon a time", { temperature: 0, maxTokens: 6, stopOnEos: false }).result).tokenIds;
      } finally {
        await m.dispose();
      }
    };
    expect(await run(odd)).toEqual(await run(hf));
  });

  it("JSON: a high surrogate escape followed by a non-surrogate escape keeps the second character", async () => {
    const f = st();
    f.header[q].dtype = "@D@";
    const dir = scratch.hfDir(hf, { files: { "model.safetensors": encodeSafetensors(f, { json: (t) => t.replace('"@D@"', '"\\ud800\\u0058YZ"') }) } });
    await expectError(load(dir), "ERR_TENSOR_DTYPE", q, "XYZ");
  });
});

describeShared("bad options and requests on a loaded model", [STORIES, STORIES_FX, TINY_F16], () => {
  const fx = readSharedJson<{ cases: { prompt: number[]; generated: number[] }[] }>(STORIES_FX).cases;
  let stories: Llama2;
  let tiny: Llama2;
  beforeAll(async () => {
    stories = await Llama2.load(sharedPath(STORIES), { device: "cpu", contextLength: 64, maxSequences: 2 });
    tiny = await Llama2.load(sharedPath(TINY_F16), { device: "cpu", contextLength: 64, maxSequences: 2 });
  });
  afterAll(async () => {
    await stories?.dispose();
    await tiny?.dispose();
  });

  /** Both models still generate what they should. */
  async function stillWorks(): Promise<void> {
    const r = await stories.generate(fx[0]!.prompt, { temperature: 0, stopOnEos: false, maxTokens: 4 }).result;
    expect(r.tokenIds).toEqual(fx[0]!.generated.slice(0, 4));
    const t = await tiny.generate("Hello", { temperature: 0, stopOnEos: false, maxTokens: 2 }).result;
    expect(t.tokenIds).toHaveLength(2);
  }

  it("invalid load options -> ERR_INVALID_ARGUMENT naming the option and the value", async () => {
    const p = sharedPath(STORIES);
    const cases: [LoadOptions | unknown, string, string?][] = [
      [{ device: "tpu" }, "device", "tpu"],
      [{ device: 1 }, "device", "1"],
      [{ dtype: "q4_0" }, "dtype", "q4_0"],
      [{ dtype: "F16" }, "dtype", "F16"],
      [{ kvCacheType: "q4" }, "kvCacheType", "q4"],
      [{ kvCacheType: "f16" }, "kvCacheType", "f16"],
      [{ contextLength: 0 }, "contextLength", "0"],
      [{ contextLength: -5 }, "contextLength", "-5"],
      [{ contextLength: 1.5 }, "contextLength", "1.5"],
      [{ contextLength: "512" }, "contextLength", "512"],
      [{ contextLength: 5000 }, "contextLength", "5000"], // above 8x the trained 512 (checked natively)
      [{ maxSequences: 0 }, "maxSequences", "0"],
      [{ maxSequences: 2.5 }, "maxSequences", "2.5"],
      [{ maxSequences: 5000 }, "maxSequences", "5000"],
      [{ threads: -1 }, "threads", "-1"],
      [{ threads: 1.5 }, "threads", "1.5"],
      [{ deviceIndex: -1 }, "deviceIndex", "-1"],
      [{ tokenizerPath: 5 }, "tokenizerPath"],
      [{ onProgress: "x" }, "onProgress"],
      [{ signal: {} }, "signal"],
      [{ contxtLength: 64 }, "contxtLength", "unknown"],
      [null, "options"],
      ["cpu", "options"],
      // A value nested too deeply to print (String / JSON.stringify overflow the stack) is named, not printed.
      [{ device: deep() }, "device", "an array"],
      [{ dtype: deep() }, "dtype", "an array"],
      [{ kvCacheType: deep() }, "kvCacheType", "an array"],
    ];
    for (const [opts, field, value] of cases) {
      const err = await expectError(() => Llama2.load(p, opts as LoadOptions), "ERR_INVALID_ARGUMENT", field);
      if (value) expect(err.message).toContain(value);
      // `field` names the option, for the checks made in TypeScript and natively alike.
      expect((err as { field?: string }).field, field).toMatch(new RegExp(`^(options\\.)?${field}$`));
      expect(Object.keys(err)).not.toContain("suggestion"); // (no own `suggestion: undefined`)
    }
    await expectError(() => Llama2.load("", {}), "ERR_INVALID_ARGUMENT", "path");
    await expectError(() => Llama2.load(5 as unknown as string), "ERR_INVALID_ARGUMENT", "path");
    await expectError(() => Llama2.load(p, { signal: AbortSignal.abort() }), "ERR_ABORTED");
    await stillWorks();
  });

  it("the addon's integer arguments beyond int32 (1e10, ±Infinity, NaN, 2^31) -> ERR_INVALID_ARGUMENT (was a UB double->int32 cast)", async () => {
    // Found by scripts/sanitizer-test.sh (UBSan float-cast-overflow in addon.cc int_arg): the addon is public
    // (`nativeAddon`), so these reach it unchecked by the TypeScript layer.
    const a = native();
    const bad = [1e10, -1e10, Infinity, -Infinity, NaN, 2 ** 31, -(2 ** 31) - 1];
    const invalid = async (fn: () => unknown, field: string) => {
      let err: unknown;
      try {
        await fn();
      } catch (e) {
        err = e;
      }
      expect(err, field).toBeDefined();
      expect((err as { code?: string }).code, String(err)).toBe("ERR_INVALID_ARGUMENT");
      expect(String((err as Error).message)).toContain(field);
    };
    // An option the addon does not know is refused, not ignored (a newer library over an older binary would
    // otherwise load the model without, say, its LoRA adapter).
    await invalid(() => a.loadModel(sharedPath(STORIES), { device: "cpu", loraAdapters: ["x"] } as never), "'loraAdapters' is not known to this addon");
    const m = await a.loadModel(sharedPath(STORIES), { device: "cpu", contextLength: 32, maxSequences: 1 });
    try {
      const seq = m.createSequence();
      for (const v of bad) {
        await invalid(() => a.loadModel(sharedPath(STORIES), { device: "cpu", contextLength: v }), "contextLength");
        await invalid(() => a.createOpBench({ op: "matvec", rows: v, cols: 64 }), "rows");
        await invalid(() => m.freeSequence(v), "seq");
        await invalid(() => m.truncateSequence(seq, v), "length");
        await invalid(() => m.forward([{ seq: v, tokens: new Int32Array([1]), output: 0 }]), "seq");
        await invalid(() => m.forward([{ seq, tokens: [1, v] as unknown as Int32Array, output: 0 }]), "tokens[]");
        await invalid(() => m.forward([{ seq, tokens: new Int32Array([1]), output: v }]), "output");
      }
      // The extremes that do fit still convert exactly (and are then refused for what they are).
      const err = await m.forward([{ seq, tokens: new Int32Array([1]), output: 2 ** 31 - 1 }]).catch((e: Error) => e);
      expect((err as Error).message).toContain("2147483647");
      const out = await m.forward([{ seq, tokens: new Int32Array([1, 2]), output: -1 }]);
      expect(out[0]).toHaveLength(512);
    } finally {
      m.dispose();
    }
    await stillWorks();
  });

  it("device 'cuda' without a usable GPU -> a device error with a suggestion", async () => {
    if (native().buildInfo().cudaAvailable) return; // the GPU suites cover loading on CUDA
    const err = await failure(() => Llama2.load(sharedPath(STORIES), { device: "cuda" }));
    expect(["ERR_DEVICE_UNAVAILABLE", "ERR_CUDA_DRIVER"]).toContain(err.code);
    expect(err.suggestion).toMatch(/cpu/);
    await stillWorks();
  });

  it("invalid generate options -> ERR_INVALID_ARGUMENT naming the option and the value; the model stays usable", async () => {
    const bad: [Record<string, unknown>, string, string?][] = [
      [{ temperature: -1 }, "temperature", "-1"],
      [{ temperature: NaN }, "temperature", "NaN"],
      [{ temperature: Infinity }, "temperature", "Infinity"],
      [{ temperature: "0.5" }, "temperature", "0.5"],
      [{ topK: -1 }, "topK", "-1"],
      [{ topK: 1.5 }, "topK", "1.5"],
      [{ topP: 0 }, "topP", "0"],
      [{ topP: 1.5 }, "topP", "1.5"],
      [{ minP: 1 }, "minP", "1"],
      [{ minP: -0.1 }, "minP", "-0.1"],
      [{ repetitionPenalty: 0 }, "repetitionPenalty", "0"],
      [{ presencePenalty: NaN }, "presencePenalty", "NaN"],
      [{ frequencyPenalty: "x" }, "frequencyPenalty", "x"],
      [{ penaltyLastN: -2 }, "penaltyLastN", "-2"],
      [{ seed: 1.5 }, "seed", "1.5"],
      [{ seed: "x" }, "seed", "x"],
      [{ logitBias: { 512: 1 } }, "logitBias", "512"],
      [{ logitBias: { a: 1 } }, "logitBias", "a"],
      [{ logitBias: { 1: "x" } }, "logitBias", "x"],
      [{ logitBias: [1] }, "logitBias"],
      [{ maxTokens: 0 }, "maxTokens", "0"],
      [{ maxTokens: -1 }, "maxTokens", "-1"],
      [{ maxTokens: 1.5 }, "maxTokens", "1.5"],
      [{ maxTokens: "5" }, "maxTokens", "5"],
      [{ stop: "x" }, "stop"],
      [{ stop: [""] }, "stop[0]"],
      [{ stop: [1] }, "stop[0]"],
      [{ stop: Array.from({ length: 17 }, (_, i) => `s${i}`) }, "stop", "17"],
      [{ stopOnEos: "yes" }, "stopOnEos"],
      [{ addBos: 1 }, "addBos"],
      [{ signal: {} }, "signal"],
      [{ temprature: 0 }, "temprature", "unknown"],
    ];
    for (const [opts, field, value] of bad) {
      const err = await expectError(() => stories.generate(fx[0]!.prompt, opts as GenerateOptions), "ERR_INVALID_ARGUMENT", field);
      if (value) expect(err.message, JSON.stringify(opts)).toContain(value);
    }
    await expectError(() => stories.generate(fx[0]!.prompt, null as unknown as GenerateOptions), "ERR_INVALID_ARGUMENT", "options");
    expect((await expectError(() => tiny.tokenizer!.decode([1, deep() as unknown as number]), "ERR_INVALID_ARGUMENT", "id")).message).toContain("an array");
    expect((await expectError(() => stories.generate([1, deep() as unknown as number], { maxTokens: 1 }), "ERR_INVALID_ARGUMENT")).message).toContain("an array");
    // The same checks on the text and chat paths.
    await expectError(() => tiny.generate("Hello", { topP: 2 }), "ERR_INVALID_ARGUMENT", "topP", "2");
    await expectError(() => tiny.chat([{ role: "user", content: "Hi" }], { temperature: -3 }), "ERR_INVALID_ARGUMENT", "temperature", "-3");
    await expectError(() => tiny.createSession().send("Hi", { maxTokens: 0 }), "ERR_INVALID_ARGUMENT", "maxTokens", "0");
    await stillWorks();
  });

  it("bad prompts: ids out of range, non-integers, empty prompts, bad chat dialogs -> ERR_INVALID_ARGUMENT naming them", async () => {
    await expectError(() => stories.generate([1, 512]), "ERR_INVALID_ARGUMENT", "prompt[1]", "512", "[0, 512)");
    await expectError(() => stories.generate([-1]), "ERR_INVALID_ARGUMENT", "prompt[0]", "-1");
    await expectError(() => stories.generate([1, 2.5]), "ERR_INVALID_ARGUMENT", "prompt[1]", "2.5");
    await expectError(() => stories.generate(["1"] as unknown as number[]), "ERR_INVALID_ARGUMENT", "prompt[0]", '"1"');
    await expectError(() => stories.generate([]), "ERR_INVALID_ARGUMENT", "prompt", "empty");
    await expectError(() => stories.generate({} as unknown as number[]), "ERR_INVALID_ARGUMENT", "prompt");
    await expectError(() => tiny.generate("", { addBos: false }), "ERR_INVALID_ARGUMENT", "prompt", "empty");
    await expectError(() => tiny.generate([32000]), "ERR_INVALID_ARGUMENT", "prompt[0]", "32000");
    await expectError(() => tiny.chat([]), "ERR_INVALID_ARGUMENT", "messages");
    await expectError(() => tiny.chat([{ role: "assistant", content: "Hi" }]), "ERR_INVALID_ARGUMENT", "messages[0].role", "assistant");
    await expectError(() => tiny.chat([{ role: "user", content: 5 } as never]), "ERR_INVALID_ARGUMENT", "messages[0].content");
    await expectError(() => tiny.chat([{ role: "user", content: "Hi" }], { template: "nope" }), "ERR_INVALID_ARGUMENT", "nope");
    await stillWorks();
  });

  it("a prompt longer than the context -> ERR_CONTEXT_OVERFLOW with both lengths", async () => {
    const long = Array.from({ length: 70 }, (_, i) => fx[3]!.prompt[i % fx[3]!.prompt.length]!);
    await expectError(() => stories.generate(long).result, "ERR_CONTEXT_OVERFLOW", "70", "64");
    const text = "word ".repeat(80);
    await expectError(() => tiny.generate(text).result, "ERR_CONTEXT_OVERFLOW", "64");
    // A session whose conversation outgrows the context: the failed turn is dropped, reset recovers.
    const session = tiny.createSession();
    try {
      await session.send("Hello", { temperature: 0, maxTokens: 4, stopOnEos: false }).result;
      const cached = session.cachedTokens;
      await expectError(() => session.send(text).result, "ERR_CONTEXT_OVERFLOW", "64");
      expect(session.cachedTokens).toBe(cached);
      expect(session.messages).toHaveLength(2);
      session.reset();
      expect((await session.send("Hi", { temperature: 0, maxTokens: 2, stopOnEos: false }).result).tokenIds).toHaveLength(2);
    } finally {
      session.dispose();
    }
    await stillWorks();
  });

  it("text APIs on a model without a tokenizer -> ERR_TOKENIZER naming the model; ids still work", async () => {
    const p = sharedPath(STORIES);
    expect(stories.info.hasTokenizer).toBe(false);
    await expectError(() => stories.generate("Once upon a time"), "ERR_TOKENIZER", p);
    await expectError(() => stories.tokenize("hi"), "ERR_TOKENIZER", p);
    await expectError(() => stories.detokenize([1, 2]), "ERR_TOKENIZER", p);
    await expectError(() => stories.chat([{ role: "user", content: "hi" }]), "ERR_TOKENIZER", p);
    const session = stories.createSession();
    await expectError(() => session.send("hi"), "ERR_TOKENIZER");
    session.dispose();
    await stillWorks();
  });
});
