// Seeded mutation fuzzing of the native model loaders: GGUF (F16 and Q8_0, synthetic with a small
// vocabulary and the files llama.cpp wrote), Hugging Face directories (single and sharded safetensors,
// config.json, the shard index; synthetic and the one transformers wrote), llama2.c .bin files and LoRA
// adapters (PEFT directories and llama.cpp GGUF adapters, loaded onto a valid base with `lora`).
// Each case applies 1-4 seeded mutations, concentrated where the parsing happens (headers, metadata,
// tensor infos, JSON), to a valid model, and is opened in a child process (helpers/fuzz-child.mjs)
// with readModelInfo and Llama2.load(path, { device: "cpu" }) plus a 3-token generate when it loads.
// A case passes when every step either works or throws a Llama2Error whose code is an input error
// (ERR_*, not ERR_INTERNAL / ERR_OUT_OF_MEMORY) and whose message names the file; a crash, abort,
// hang (20 s), slow case (5 s of CPU) or runaway memory (1 GiB RLIMIT_DATA, 768 MiB peak RSS) fails it.
//
// LLAMA2_FUZZ_SEED=<n> changes the seed (printed); LLAMA2_FUZZ_SCALE=<x> multiplies the case counts.
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { makeSyntheticModel } from "../lib/synth/model.js";
import { buildSentencePieceModel, PieceType, type Vocabulary } from "../lib/tokenizer/sentencepiece-model.js";
import { ensureDist } from "./helpers/dist.js";
import {
  applyOps,
  caseRng,
  configOp,
  growSparse,
  dirCase,
  fileCase,
  formatFailures,
  ggufOp,
  indexOp,
  jsonTextOp,
  llama2cOp,
  mapGguf,
  opCount,
  runFuzzCases,
  safetensorsOp,
  type FuzzCase,
  type FuzzResult,
  type Op,
  writeGgufWithArray,
} from "./helpers/fuzz.js";
import { tokenizerJsonFor } from "./helpers/llama-tokenizer-json.js";
import { writeAdapter, writeGgufAdapter } from "./helpers/lora.js";
import { describeShared, sharedPath } from "./helpers/shared.js";

const STORIES = "models/stories260K.bin";
const TINY_HF = "models/tiny-llama-hf";
const TINY_F16 = "models/tiny-llama-f16.gguf";
const TINY_Q8 = "models/tiny-llama-q8_0.gguf";

const SEED = process.env.LLAMA2_FUZZ_SEED !== undefined ? Number(process.env.LLAMA2_FUZZ_SEED) : 424242;
if (!Number.isSafeInteger(SEED) || SEED < 0 || SEED >= 2 ** 21) throw new Error(`LLAMA2_FUZZ_SEED must be an integer in [0, 2^21), got ${process.env.LLAMA2_FUZZ_SEED}`);
const SCALE = Number(process.env.LLAMA2_FUZZ_SCALE ?? 1);
const n = (count: number) => Math.max(1, Math.round(count * SCALE));

/** A 331-piece Llama-style vocabulary (unk, BOS, EOS, 256 byte pieces, some merges): tokenizers build fast. */
function smallVocabulary(): Vocabulary {
  const tokens = ["<unk>", "<s>", "</s>"];
  const types: number[] = [PieceType.UNKNOWN, PieceType.CONTROL, PieceType.CONTROL];
  for (let b = 0; b < 256; b++) {
    tokens.push(`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`);
    types.push(PieceType.BYTE);
  }
  const letters = "etaoinshrdlcumwfgypbvkjxqz";
  const merges = ["▁", "▁t", "he", "▁the", "in", "er", "an", "▁a", "on", "▁w", "or", "ll", "▁H", "▁He", "▁Hel", "▁Hello", "▁wor", "▁world", "lo", "ld"];
  for (const p of [...merges, ...letters, ...letters.toUpperCase(), "▁" + letters.slice(0, 20)]) {
    if (tokens.includes(p)) continue;
    tokens.push(p);
    types.push(PieceType.NORMAL);
  }
  const scores = Float32Array.from(tokens, (_, i) => (types[i] === PieceType.NORMAL ? -i : 0));
  return { tokens, scores, types: Int32Array.from(types), unkId: 0, bosId: 1, eosId: 2, padId: -1 };
}

const JSON_JUNK: unknown[] = [null, true, 0, -1, 1, 2 ** 31, 1e300, 0.5, "", "x", "▁", "<0x41>", "<s>", [], {}, ["a", "b"], [1, 2], { content: "<s>" }];

/** One structured edit of a tokenizer.json (a field set to junk, a piece or merge changed) or a text edit. */
function tokenizerJsonOp(rng: ReturnType<typeof caseRng>): { desc: string; apply: (text: string) => string } {
  const field = (desc: string, edit: (j: any) => void) => ({
    desc,
    apply: (text: string) => {
      // Not applied where an earlier edit broke the JSON, changed the shape this one expects (a string where
      // the vocabulary was) or nested it too deeply to write back.
      try {
        const j = JSON.parse(text);
        if (j && typeof j === "object") edit(j);
        return JSON.stringify(j);
      } catch {
        return text;
      }
    },
  });
  const junk = () => rng.pick(JSON_JUNK);
  return rng.weighted<() => { desc: string; apply: (text: string) => string }>([
    [3, () => { const v = junk(); return field(`model.type := ${JSON.stringify(v)}`, (j) => void (j.model && (j.model.type = rng.chance(0.5) ? v : rng.pick(["BPE", "WordPiece", "Unigram", "WordLevel"])))); }],
    [2, () => { const v = junk(); return field(`model.byte_fallback / unk_token := ${JSON.stringify(v)}`, (j) => void (j.model && (j.model[rng.pick(["byte_fallback", "unk_token", "ignore_merges", "fuse_unk"])] = v))); }],
    [6, () => { const v = rng.chance(0.5) ? junk() : rng.range(-2, 400); const k = rng.int(400); return field(`model.vocab[#${k}] := ${JSON.stringify(v)}`, (j) => { const keys = Object.keys(j.model?.vocab ?? {}); if (keys.length) j.model.vocab[keys[k % keys.length]!] = v; }); }],
    [3, () => { const k = rng.int(400); return field(`model.vocab[#${k}] deleted`, (j) => { const keys = Object.keys(j.model?.vocab ?? {}); if (keys.length) delete j.model.vocab[keys[k % keys.length]!]; }); }],
    [6, () => { const v = rng.chance(0.5) ? junk() : rng.pick(["▁ t", "t ▁", "a  b", "▁t", " ", "qq zz", "▁ ▁", "<s> </s>"]); const k = rng.int(100); return field(`model.merges[#${k}] := ${JSON.stringify(v)}`, (j) => { const m = j.model?.merges; if (Array.isArray(m) && m.length) m[k % m.length] = v; }); }],
    [2, () => field("model.merges reversed", (j) => { if (Array.isArray(j.model?.merges)) j.model.merges.reverse(); })],
    [4, () => { const v = junk(); const f = rng.pick(["id", "content", "special"]); const k = rng.int(5); return field(`added_tokens[#${k}].${f} := ${JSON.stringify(v)}`, (j) => { const a = j.added_tokens; if (Array.isArray(a) && a.length) { const t = a[k % a.length]; if (t && typeof t === "object") t[f] = v; else a[k % a.length] = v; } }); }],
    [4, () => {
      const v = rng.pick<unknown>([null, junk(), { type: "Metaspace", replacement: rng.pick(["▁", "_", 5]), prepend_scheme: rng.pick(["first", "always", "never", "x", null]), split: rng.pick([true, false, "x"]) },
        { type: "Sequence", pretokenizers: rng.pick([[], null, [{ type: "Metaspace" }], [{ type: "ByteLevel" }]]) }, { type: "Prepend", prepend: "▁" }, { type: "Replace", pattern: { String: " " }, content: "▁" },
        { type: "Sequence", normalizers: [{ type: "Prepend", prepend: "▁" }, { type: "Replace", pattern: rng.pick([{ String: " " }, { Regex: " " }, null]), content: "▁" }] }]);
      const k = rng.pick(["normalizer", "pre_tokenizer"]);
      return field(`${k} := ${JSON.stringify(v)}`, (j) => void (j[k] = v));
    }],
    [2, () => { const v = junk(); const k = rng.pick(["model", "added_tokens", "model.vocab", "model.merges"]); return field(`${k} := ${JSON.stringify(v)}`, (j) => { if (k.startsWith("model.")) { if (j.model && typeof j.model === "object") j.model[k.slice(6)] = v; } else j[k] = v; }); }],
    [5, () => { const r = rng.int(1 << 30); return { desc: `text edited (${r})`, apply: (text: string) => jsonTextOp(caseRng(r, "tokjson", 0), text) }; }],
  ])();
}

/** tokenizer_config.json replaced by one with junk in the fields the loader reads. */
function tokenizerConfigOp(rng: ReturnType<typeof caseRng>): { desc: string; text: string } {
  const cfg: Record<string, unknown> = { legacy: rng.pick([false, true, null, "no", 0]), eos_token: rng.pick<unknown>(["</s>", "<nope>", "▁t", "<0x41>", "<unk>", 5, null, { content: "</s>" }, { content: 7 }, ""]) };
  if (rng.chance(0.4)) cfg.add_prefix_space = rng.pick([false, true, "x", null]);
  if (rng.chance(0.4)) cfg.bos_token = rng.pick<unknown>(["<s>", "</s>", "<unk>", [], "x"]);
  if (rng.chance(0.4)) cfg.added_tokens_decoder = rng.pick<unknown>([{ "340": { content: "<x>", special: true } }, { "-1": { content: "<x>" } }, { "999999": { content: "<x>" } }, { "340": "str" }, { "0": { content: "<s>" } }, [], null]);
  if (rng.chance(0.3)) cfg.chat_template = rng.pick<unknown>(["{% for", 5, [], [{ name: "default", template: "{{ x" }], "{{ raise_exception('no') }}"]);
  const text = rng.chance(0.1) ? rng.pick(["", "{", "[]", "null", '"x"']) : JSON.stringify(cfg);
  return { desc: `tokenizer_config.json := ${text.slice(0, 120)}`, text };
}

/** Mutation ops for one case. */
function ops(count: number, op: () => Op): Op[] {
  return Array.from({ length: count }, op);
}

describeShared("loader fuzzing: mutated model files never crash the process", [STORIES, TINY_HF, TINY_F16, TINY_Q8], () => {
  let work: string;
  let synth: { f16: string; q8: string; hf: string; sharded: string };
  const results: [string, FuzzResult][] = [];

  beforeAll(async () => {
    ensureDist();
    work = mkdtempSync(path.join(os.tmpdir(), "llama2-fuzz-"));
    const tok = path.join(work, "small-tokenizer.model");
    writeFileSync(tok, buildSentencePieceModel(smallVocabulary()));
    const base = path.join(work, "base");
    mkdirSync(base);
    const make = async (name: string, format: "gguf" | "hf", dtype: "f16" | "q8_0", maxShardBytes?: number) =>
      (await makeSyntheticModel({ preset: "tiny", format, dtype, out: path.join(base, name), seed: 7, tokenizer: tok, ...(maxShardBytes && { maxShardBytes }) })).path;
    synth = {
      f16: await make("tiny-f16.gguf", "gguf", "f16"),
      q8: await make("tiny-q8_0.gguf", "gguf", "q8_0"),
      hf: await make("tiny-hf", "hf", "f16"),
      sharded: await make("tiny-hf-sharded", "hf", "f16", 40_000),
    };
    console.log(`[fuzz-loaders] seed ${SEED} (LLAMA2_FUZZ_SEED to change, LLAMA2_FUZZ_SCALE=${SCALE} to scale the case counts)`);
  }, 120_000);

  afterAll(() => {
    if (work) rmSync(work, { recursive: true, force: true });
    for (const [name, r] of results) {
      const outcomes = Object.entries(r.outcomes)
        .sort((a, b) => b[1] - a[1])
        .map(([k, v]) => `${k} ${v}`)
        .join(", ");
      console.log(`[fuzz-loaders] ${name}: ${r.cases} cases in ${r.seconds.toFixed(1)} s (slowest ${r.maxMs} ms CPU, peak RSS ${r.maxRssMb} MiB): ${outcomes}`);
    }
  });

  /** Runs the cases and requires every one to pass; also that the mutations both break and spare some loads. */
  async function fuzz(name: string, cases: FuzzCase[]): Promise<FuzzResult> {
    const r = await runFuzzCases(cases, { dir: path.join(work, name) });
    results.push([name, r]);
    expect(r.failures, formatFailures(SEED, r.failures)).toEqual([]);
    const loaded = r.outcomes["load ok"] ?? 0;
    expect(loaded, `${name}: no mutated case loaded`).toBeGreaterThan(0);
    expect(loaded, `${name}: every mutated case loaded`).toBeLessThan(cases.length);
    return r;
  }

  function ggufCases(corpus: string, file: string, count: number): FuzzCase[] {
    const base = readFileSync(file);
    const map = mapGguf(base);
    return Array.from({ length: count }, (_, i) => {
      const rng = caseRng(SEED, corpus, i);
      return fileCase(`${corpus}#${i}`, base, "model.gguf", ops(opCount(rng), () => ggufOp(rng, base, map)));
    });
  }

  it("GGUF F16 (synthetic, llama.cpp's layout, 331-piece vocabulary): seeded mutations of header, metadata, tensor infos", async () => {
    await fuzz("gguf-f16", ggufCases("gguf-f16", synth.f16, n(300)));
  }, 120_000);

  it("GGUF Q8_0 (synthetic): seeded mutations", async () => {
    await fuzz("gguf-q8_0", ggufCases("gguf-q8_0", synth.q8, n(150)));
  }, 120_000);

  it("GGUF as llama.cpp's converter wrote it (F16 and Q8_0, 32000-piece vocabulary): seeded mutations", async () => {
    await fuzz("gguf-llama.cpp", [...ggufCases("gguf-llama.cpp-f16", sharedPath(TINY_F16), n(50)), ...ggufCases("gguf-llama.cpp-q8_0", sharedPath(TINY_Q8), n(30))]);
  }, 120_000);

  /** HF directory cases: each mutates config.json, model.safetensors or both. */
  function hfCases(corpus: string, dir: string, count: number, withTokenizer: boolean): FuzzCase[] {
    const files = readdirSync(dir).filter((f) => f !== "tokenizer.model" || withTokenizer);
    const st = readFileSync(path.join(dir, "model.safetensors"));
    const config = readFileSync(path.join(dir, "config.json"), "utf8");
    return Array.from({ length: count }, (_, i) => {
      const rng = caseRng(SEED, corpus, i);
      const which = rng.weighted([
        [55, "safetensors"],
        [30, "config"],
        [15, "both"],
      ] as const);
      const edits: Record<string, () => Buffer | string> = {};
      const descs: string[] = [];
      if (which !== "config") {
        const o = ops(opCount(rng), () => safetensorsOp(rng, st));
        edits["model.safetensors"] = () => applyOps(st, o);
        descs.push(...o.map((x) => `safetensors: ${x.desc}`));
      }
      if (which !== "safetensors") {
        const c = configOp(rng, config);
        edits["config.json"] = () => c.text;
        descs.push(c.desc);
      }
      return dirCase(`${corpus}#${i}`, descs.join("; "), dir, files, edits);
    });
  }

  it("Hugging Face directory (synthetic: config.json + model.safetensors + tokenizer.model): seeded mutations", async () => {
    await fuzz("hf", hfCases("hf", synth.hf, n(250), true));
  }, 120_000);

  it("Hugging Face directory as transformers wrote it: seeded mutations of model.safetensors and config.json", async () => {
    // Without its 32000-piece tokenizer.model (not what is fuzzed here), which takes most of a load's time.
    await fuzz("hf-transformers", hfCases("hf-transformers", sharedPath(TINY_HF), n(50), false));
  }, 120_000);

  it("Hugging Face directory with tokenizer.json and no tokenizer.model (synthetic): seeded mutations of tokenizer.json and tokenizer_config.json", async () => {
    const dir = path.join(work, "tiny-hf-json");
    mkdirSync(dir);
    for (const f of readdirSync(synth.hf)) if (f !== "tokenizer.model") writeFileSync(path.join(dir, f), readFileSync(path.join(synth.hf, f)));
    const json = tokenizerJsonFor(smallVocabulary(), { variant: "metaspace" });
    writeFileSync(path.join(dir, "tokenizer.json"), JSON.stringify(json));
    writeFileSync(path.join(dir, "tokenizer_config.json"), JSON.stringify({ legacy: false, eos_token: "</s>", chat_template: "{% for m in messages %}{{ m['content'] }}</s>{% endfor %}" }));
    const files = readdirSync(dir);
    const cases = Array.from({ length: n(150) }, (_, i) => {
      const rng = caseRng(SEED, "hf-tokenizer-json", i);
      if (rng.chance(0.2)) {
        const c = tokenizerConfigOp(rng);
        return dirCase(`hf-tokenizer-json#${i}`, c.desc, dir, files, { "tokenizer_config.json": () => c.text });
      }
      const count = opCount(rng);
      const edits = Array.from({ length: count }, () => tokenizerJsonOp(rng));
      return dirCase(`hf-tokenizer-json#${i}`, edits.map((e) => e.desc).join("; "), dir, files, {
        "tokenizer.json": () => edits.reduce((text, e) => e.apply(text), JSON.stringify(json)),
      });
    });
    await fuzz("hf-tokenizer-json", cases);
  }, 120_000);

  it("sharded Hugging Face directory (synthetic): seeded mutations of the index, a shard or config.json", async () => {
    const dir = synth.sharded;
    const files = readdirSync(dir);
    const shards = files.filter((f) => /^model-\d+-of-\d+\.safetensors$/.test(f)).sort();
    expect(shards.length).toBeGreaterThan(2);
    const index = readFileSync(path.join(dir, "model.safetensors.index.json"), "utf8");
    const config = readFileSync(path.join(dir, "config.json"), "utf8");
    const cases = Array.from({ length: n(100) }, (_, i) => {
      const rng = caseRng(SEED, "hf-sharded", i);
      const which = rng.weighted([
        [40, "index"],
        [45, "shard"],
        [15, "config"],
      ] as const);
      if (which === "index") {
        const e = indexOp(rng, index);
        return dirCase(`hf-sharded#${i}`, e.desc, dir, files, { "model.safetensors.index.json": () => e.text });
      }
      if (which === "config") {
        const e = configOp(rng, config);
        return dirCase(`hf-sharded#${i}`, e.desc, dir, files, { "config.json": () => e.text });
      }
      const shard = rng.pick(shards);
      const st = readFileSync(path.join(dir, shard));
      const o = ops(opCount(rng), () => safetensorsOp(rng, st));
      return dirCase(`hf-sharded#${i}`, o.map((x) => `${shard}: ${x.desc}`).join("; "), dir, files, {
        [shard]: () => applyOps(st, o),
      });
    });
    await fuzz("hf-sharded", cases);
  }, 120_000);

  // LoRA adapters (merged at load): names a renamed adapter tensor may take, and adapter_config.json's keys.
  const ADAPTER_RENAMES = [
    "base_model.model.model.layers.99.self_attn.q_proj.lora_A.weight", "base_model.model.model.layers.-1.mlp.up_proj.lora_B.weight",
    "base_model.model.model.layers.99999999999999999999.mlp.up_proj.lora_A.weight", "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight",
    "base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight", "base_model.model.model.layers.0.mlp.down_proj.lora_B.weight",
    "base_model.model.lm_head.lora_A.weight", "base_model.model.model.embed_tokens.lora_embedding_A", "model.layers.0.mlp.down_proj.lora_A.weight",
    "base_model.model.model.layers.0.self_attn.q_proj.weight", "base_model.model.model.layers.0.input_layernorm.lora_A.weight", "lora_A.weight", "",
  ];
  const ADAPTER_FIELDS = ["r", "lora_alpha", "use_rslora", "use_dora", "fan_in_fan_out", "peft_type", "rank_pattern", "alpha_pattern", "target_modules"];

  it("LoRA adapters, PEFT (adapter_config.json + adapter_model.safetensors) on HF, GGUF F16 and Q8_0 bases: seeded mutations", async () => {
    const dir = path.join(work, "peft-adapter");
    writeAdapter(synth.hf, dir, { rank: 4, alpha: 8, seed: 11 });
    const files = readdirSync(dir);
    const st = readFileSync(path.join(dir, "adapter_model.safetensors"));
    const config = readFileSync(path.join(dir, "adapter_config.json"), "utf8");
    const cases = Array.from({ length: n(150) }, (_, i): FuzzCase => {
      const rng = caseRng(SEED, "lora-peft", i);
      const base = rng.weighted([[60, synth.hf], [25, synth.f16], [15, synth.q8]] as const);
      const which = rng.weighted([[65, "safetensors"], [25, "config"], [10, "both"]] as const);
      const edits: Record<string, () => Buffer | string> = {};
      const descs = [`base ${path.basename(base)}`];
      if (which !== "config") {
        const o = ops(opCount(rng), () => safetensorsOp(rng, st, ADAPTER_RENAMES));
        edits["adapter_model.safetensors"] = () => applyOps(st, o);
        descs.push(...o.map((x) => `adapter_model.safetensors: ${x.desc}`));
      }
      if (which !== "safetensors") {
        const c = configOp(rng, config, ADAPTER_FIELDS);
        edits["adapter_config.json"] = () => c.text;
        descs.push(c.desc.replace(/^config:/, "adapter_config.json:"));
      }
      return { ...dirCase(`lora-peft#${i}`, descs.join("; "), dir, files, edits), base };
    });
    await fuzz("lora-peft", cases);
  }, 120_000);

  it("LoRA adapters, llama.cpp GGUF (convert_lora_to_gguf.py's layout) on GGUF and HF bases: seeded mutations", async () => {
    const deltas = writeAdapter(synth.hf, path.join(work, "gguf-adapter-deltas"), { rank: 4, alpha: 8, seed: 13 });
    const file = path.join(work, "adapter.gguf");
    const cfg = JSON.parse(readFileSync(path.join(synth.hf, "config.json"), "utf8"));
    await writeGgufAdapter(file, deltas, 8, cfg.hidden_size / cfg.num_attention_heads);
    const bytes = readFileSync(file);
    const map = mapGguf(bytes);
    const cases = Array.from({ length: n(100) }, (_, i): FuzzCase => {
      const rng = caseRng(SEED, "lora-gguf", i);
      const base = rng.weighted([[60, synth.f16], [20, synth.q8], [20, synth.hf]] as const);
      const c = fileCase(`lora-gguf#${i}`, bytes, "adapter.gguf", ops(opCount(rng), () => ggufOp(rng, bytes, map)));
      return { ...c, desc: `base ${path.basename(base)}; ${c.desc}`, base };
    });
    await fuzz("lora-gguf", cases);
  }, 120_000);

  it("GGUF metadata arrays claiming or holding 2^25-2^28 elements (sparse files): no allocation or time in proportion", async () => {
    // Regressions: the loader reserved a vector for any array count up to the file size (32 bytes per
    // claimed string) and materialized every array but the BPE merges as doubles. Under the child's
    // 1 GiB RLIMIT_DATA those allocations fail (ERR_OUT_OF_MEMORY, a failure here).
    const base = readFileSync(synth.f16);
    const tokens = mapGguf(base).fields.get("array header")!.find((f) => f.name === "count(tokenizer.ggml.tokens)")!;
    const cases: [FuzzCase, string][] = [
      [{
        id: "sparse#claim",
        desc: "tokenizer.ggml.tokens claims 2^28 strings in a 272 MiB file (mostly a hole)",
        make: (dir) => {
          const p = path.join(dir, "model.gguf");
          const b = Buffer.from(base);
          b.writeBigUInt64LE(1n << 28n, tokens.at);
          writeFileSync(p, b);
          growSparse(p, 2 ** 28 + 2 ** 24);
          return p;
        },
      }, "ERR_MODEL_CORRUPT"],
      [{
        id: "sparse#u8",
        desc: "a valid GGUF with an unused 2^28-element u8 array",
        make: (dir) => {
          const p = path.join(dir, "model.gguf");
          writeGgufWithArray(p, base, "general.fuzz_blob", 0, 1n << 28n, 2 ** 28);
          return p;
        },
      }, "ok"],
      [{
        id: "sparse#strings",
        desc: "a valid GGUF with an unused array of 2^25 empty strings",
        make: (dir) => {
          const p = path.join(dir, "model.gguf");
          writeGgufWithArray(p, base, "general.fuzz_tags", 8, 1n << 25n, 2 ** 28);
          return p;
        },
      }, "ok"],
    ];
    const r = await runFuzzCases(
      cases.map(([c]) => c),
      { dir: path.join(work, "sparse"), parallel: 1 },
    );
    results.push(["sparse", r]);
    expect(r.failures, formatFailures(SEED, r.failures)).toEqual([]);
    for (const [c, want] of cases) expect(r.loads.get(c.id), c.desc).toBe(want);
  }, 120_000);

  it("llama2.c .bin (stories260K): seeded mutations of the header, size and weights", async () => {
    const base = readFileSync(sharedPath(STORIES));
    const cases = Array.from({ length: n(300) }, (_, i) => {
      const rng = caseRng(SEED, "llama2c", i);
      return fileCase(`llama2c#${i}`, base, "model.bin", ops(opCount(rng), () => llama2cOp(rng, base)));
    });
    await fuzz("llama2c", cases);
  }, 120_000);
});

describe("loader fuzzing harness", () => {
  it("reports a segfault, an abort, a hang, an untyped error and an early exit as failures of the right case, and goes on", async () => {
    ensureDist();
    const dir = mkdtempSync(path.join(os.tmpdir(), "llama2-fuzz-self-"));
    try {
      const kinds = ["segv", "sleep", "abort", "untyped", "hang", "exit", "sleep"] as const;
      const cases: FuzzCase[] = kinds.map((k, i) => ({ id: `self#${i}`, desc: k, selftest: k, make: () => "" }));
      const r = await runFuzzCases(cases, { dir, batchSize: 10, parallel: 1, hangMs: 2000 });
      const byId = new Map(r.failures.map((f) => [f.id, f.problems.join(" | ")]));
      expect([...byId.keys()]).toEqual(["self#0", "self#2", "self#3", "self#4", "self#5"]);
      expect(byId.get("self#0")).toContain("SIGSEGV");
      expect(byId.get("self#2")).toContain("SIGABRT");
      expect(byId.get("self#3")).toContain("not a Llama2Error");
      expect(byId.get("self#4")).toContain("hung");
      expect(byId.get("self#5")).toContain("exited with code 3");
      // The cases after each crash still ran (in a new child).
      expect(r.outcomes["load ok"]).toBe(2);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 60_000);
});
