// A Hugging Face tokenizer.json (the real Llama 2 vocabulary and merges, test/helpers/llama-tokenizer-json.ts)
// read as a SentencePiece vocabulary: its encodings against two oracles, Google's SentencePiece on Meta's
// tokenizer.model (the shared fixture and sentencepiece-js) and tokenizers.js (Hugging Face's JavaScript port
// of the tokenizers library, reading the same tokenizer.json); then model folders that carry only
// tokenizer.json, and every way such a file can be wrong.
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { Tokenizer as HfTokenizer } from "@huggingface/tokenizers";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { jinjaChatTemplate } from "../lib/chat-template-jinja.js";
import { convertModel } from "../lib/convert.js";
import { Llama2Error } from "../lib/errors.js";
import { Llama2 } from "../lib/llama2.js";
import { Rng } from "../lib/rng.js";
import { native } from "../lib/native.js";
import { Tokenizer } from "../lib/tokenizer.js";
import { tokenizerForModel } from "../lib/tokenizer/for-model.js";
import { parseHfTokenizerJson } from "../lib/tokenizer/hf-tokenizer-json.js";
import { PieceType } from "../lib/tokenizer/sentencepiece-model.js";
import { llamaTokenizerJson } from "./helpers/llama-tokenizer-json.js";
import { Scratch } from "./helpers/corrupt.js";
import { describeShared, readSharedJson, sharedPath, type TinyCase } from "./helpers/shared.js";

const tmp = mkdtempSync(path.join(tmpdir(), "llama2-tokjson-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** Texts where BPE orders matter: runs of spaces, newlines and tabs, scripts, emoji, digits, unknown characters. */
const hardTexts = [
  "a  b   c    d     e      f",
  "      leading and trailing      ",
  " ",
  "  ",
  "\n\n\n\t\t  \n",
  "def f(x):\n    return x  # two spaces\n        nested",
  "1234567890 3.14159 1e-9 0x7fff",
  "你好，世界！これは日本語です。안녕하세요",
  "Ünïcödé çàfé naïve façade",
  "emoji 🦙🦙 👩‍👩‍👧 🇫🇷",
  "Ἀθῆναι ܫܠܡܐ ሰላም \u{10FFFF}\u0378",
  "<s> [INST] not special [/INST] </s>",
  "supercalifragilisticexpialidocious antidisestablishmentarianism",
  "the the the the the the the the",
  "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
  "▁ ▁▁ literal block pieces ▁▁▁",
];

function randomTexts(count: number, seed: number): string[] {
  const rng = new Rng(seed);
  const r = () => rng.next();
  const pool = [..."abcdefghijklmnopqrstuvwxyz ETAOIN.,;:!?'\"()-_/\n\t0123456789", " ", "  ", "   ", "é", "ñ", "ß", "中", "文", "🦙", "ー", "ア", "\u0301", "the", "ing", "tion", " and", "▁"];
  return Array.from({ length: count }, () => {
    const n = 1 + Math.floor(r() * 60);
    let s = "";
    for (let i = 0; i < n; i++) s += pool[Math.floor(r() * pool.length)];
    return s;
  });
}

function writeJson(name: string, json: unknown): string {
  const file = path.join(tmp, name);
  writeFileSync(file, typeof json === "string" ? json : JSON.stringify(json));
  return file;
}

const hfIds = (hf: HfTokenizer, text: string): number[] => hf.encode(text, { add_special_tokens: false }).ids;

describeShared("tokenizer.json (Llama 2's) as a SentencePiece vocabulary", ["models/tokenizer.model", "fixtures/llama2-tokenizer.json"], () => {
  const fixture = readSharedJson<{ encode: { text: string; ids: number[] }[] }>("fixtures/llama2-tokenizer.json");
  let spm: Tokenizer;
  const forms = [
    { name: "legacy normalizer, merges as strings", opts: {} },
    { name: "Metaspace 'first', merges as pairs", opts: { variant: "metaspace", mergeForm: "pairs" } },
    { name: "Metaspace 'always'", opts: { variant: "metaspace", prepend: "always" } },
    { name: "Metaspace 'never'", opts: { variant: "metaspace", prepend: "never" } },
    { name: "legacy normalizer without Prepend (add_prefix_space false)", opts: { prepend: false } },
  ] as const;
  const loaded: { name: string; tok: Tokenizer; hf: HfTokenizer }[] = [];

  beforeAll(async () => {
    spm = await Tokenizer.fromFile(sharedPath("models/tokenizer.model"));
    for (const f of forms) {
      const json = llamaTokenizerJson(f.opts);
      const file = writeJson(`form-${loaded.length}.json`, json);
      loaded.push({ name: f.name, tok: await Tokenizer.fromFile(file), hf: new HfTokenizer(json, { add_bos_token: true, add_eos_token: false }) });
    }
  });

  it("has tokenizer.model's pieces, piece types and special ids", () => {
    const meta = spm.vocabulary;
    for (const { tok } of loaded) {
      const v = tok.vocabulary;
      expect(v.tokens).toEqual(meta.tokens);
      expect([...v.types]).toEqual([...meta.types]);
      expect([v.unkId, v.bosId, v.eosId, v.padId]).toEqual([meta.unkId, meta.bosId, meta.eosId, meta.padId]);
      // Meta's scores fall with the id; the merge ranks order the merged pieces the same way (runs of "▁" apart).
      let last = Infinity;
      for (let id = 259; id < v.tokens.length; id++) {
        if (v.scores[id]! === v.scores[0]! || /^▁+$/.test(v.tokens[id]!) || [...v.tokens[id]!].length < 2) continue;
        expect(v.scores[id]!).toBeLessThan(last);
        last = v.scores[id]!;
      }
    }
  });

  it("encodes the shared fixture's texts as Google's SentencePiece did", () => {
    for (const { name, tok } of loaded) {
      for (const c of fixture.encode) {
        if (tok.vocabulary.spacePrefix === "never") continue;
        if (tok.vocabulary.spacePrefix && /^\s/.test(c.text)) continue; // Metaspace puts no "▁" before a leading space (below)
        expect(tok.encode(c.text), `${name}: ${JSON.stringify(c.text)}`).toEqual(c.ids);
      }
    }
  });

  it("encodes hard and random texts as SentencePiece and tokenizers.js do", () => {
    const texts = [...hardTexts, ...randomTexts(300, 7)];
    for (const { name, tok, hf } of loaded) {
      for (const text of texts) {
        // Metaspace adds no "▁" before a leading space, where SentencePiece's dummy prefix always does.
        if (!tok.vocabulary.spacePrefix) expect(tok.encode(text), `${name} vs SentencePiece: ${JSON.stringify(text)}`).toEqual(spm.encode(text));
        // Hugging Face reads special pieces written in text ("<s>"): ours does when asked.
        expect(tok.encode(text, { special: true }), `${name} vs tokenizers.js: ${JSON.stringify(text)}`).toEqual(hfIds(hf, text));
      }
    }
  });

  it("decodes as tokenizer.model does", () => {
    const { tok } = loaded[0]!;
    for (const text of [...hardTexts, ...randomTexts(50, 11)]) {
      const ids = spm.encode(text);
      expect(tok.decode(ids)).toBe(spm.decode(ids));
    }
  });

  it("reads added tokens: special ones as control pieces, others as user-defined ones", async () => {
    const json = llamaTokenizerJson({ added: [{ content: "<|im_start|>", special: true }, { content: "<|im_end|>", special: true }, { content: "<tool>", special: false }] });
    const tok = await Tokenizer.fromFile(writeJson("added.json", json));
    expect(tok.vocabSize).toBe(32003);
    expect([tok.piece(32000), tok.piece(32001), tok.piece(32002)]).toEqual(["<|im_start|>", "<|im_end|>", "<tool>"]);
    expect([...tok.vocabulary.types.subarray(32000)]).toEqual([PieceType.CONTROL, PieceType.CONTROL, PieceType.USER_DEFINED]);
    const hf = new HfTokenizer(json, {});
    // Hugging Face cuts text at every added token and encodes each stretch on its own, as ours does when
    // asked (special); otherwise a control piece is text and a user-defined one is read inside SentencePiece.
    for (const text of ["<|im_start|>user\nHi <tool> there<|im_end|>", "a <tool> b", "<tool><tool> <|im_end|>"]) {
      expect(tok.encode(text, { special: true }), text).toEqual(hfIds(hf, text));
    }
    expect(tok.encode("a <tool> b <|im_end|>")).toEqual([...tok.encode("a"), 29871, 32002, ...tok.encode("b <|im_end|>")]);
  });
});

describeShared("chat templates with transformers' '▁' rules", ["models/tokenizer.model"], () => {
  // Zephyr's format (TinyLlama-Chat) writes no special piece but </s>; ChatML's are added tokens.
  const ZEPHYR = "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}";
  const CHATML = "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
  const dialog = [
    { role: "user", content: "Hi there" },
    { role: "assistant", content: " Hello!  How can I help?" },
    { role: "user", content: " two leading spaces and\nlines 🦙" },
  ] as const;
  const render = (source: string) =>
    source === ZEPHYR
      ? dialog.map((m) => `<|${m.role}|>\n${m.content}</s>\n`).join("") + "<|assistant|>\n"
      : dialog.map((m) => `<|im_start|>${m.role}\n${m.content}<|im_end|>\n`).join("") + "<|im_start|>assistant\n";

  for (const prepend of ["first", "always", undefined] as const) {
    it(`prompt ids equal tokenizers.js's on the rendered text, and a session's turn is their tail (spacePrefix ${prepend ?? "SentencePiece"})`, async () => {
      const added = [{ content: "<|im_start|>", special: true }, { content: "<|im_end|>", special: true }];
      const json = llamaTokenizerJson({ ...(prepend && { variant: "metaspace", prepend }), added });
      const tok = await Tokenizer.fromFile(writeJson(`chat-${prepend}.json`, json));
      const hf = new HfTokenizer(json, {});
      for (const source of [ZEPHYR, CHATML]) {
        const t = jinjaChatTemplate(source, tok, "t");
        const ids = t.encodeDialog([...dialog], tok);
        expect(ids[0]).toBe(tok.bosId); // added as llama.cpp adds it: these templates write no BOS
        expect(ids.slice(1)).toEqual(hfIds(hf, render(source)));
        const turn = t.encodeUserTurn([...dialog], tok)!;
        expect(ids.slice(ids.length - turn.length)).toEqual(turn);
      }
    });
  }
});

describe("tokenizer.json errors", () => {
  const base = () => llamaTokenizerJson();
  const cases: [string, (j: any) => unknown, RegExp][] = [
    ["not JSON", () => "{ not json", /not valid JSON/],
    ["an array", () => [], /not a tokenizer.json object/],
    ["no model", (j) => ({ ...j, model: undefined }), /model is missing/],
    ["a WordPiece model", (j) => ({ ...j, model: { ...j.model, type: "WordPiece" } }), /model.type is "WordPiece"/],
    ["a Unigram model", (j) => ({ ...j, model: { ...j.model, type: "Unigram" } }), /model.type is "Unigram"/],
    ["byte-level BPE (GPT-2, Llama 3)", (j) => ({ ...j, model: { ...j.model, byte_fallback: false }, normalizer: null, pre_tokenizer: { type: "ByteLevel", add_prefix_space: false } }), /byte_fallback is not true/],
    ["a ByteLevel pre-tokenizer", (j) => ({ ...j, normalizer: null, pre_tokenizer: { type: "ByteLevel" } }), /pre_tokenizer "ByteLevel" is not/],
    ["an NFKC normalizer", (j) => ({ ...j, normalizer: { type: "Sequence", normalizers: [{ type: "NFKC" }, ...j.normalizer.normalizers] } }), /normalizer step "NFKC"/],
    ["two Metaspace steps", (j) => ({ ...j, normalizer: null, pre_tokenizer: { type: "Sequence", pretokenizers: [{ type: "Metaspace" }, { type: "Metaspace" }] } }), /more than one Metaspace/],
    ["an unknown prepend_scheme", (j) => ({ ...j, normalizer: null, pre_tokenizer: { type: "Metaspace", prepend_scheme: "sometimes" } }), /prepend_scheme "sometimes"/],
    ["a Metaspace after a Prepend", (j) => ({ ...j, pre_tokenizer: { type: "Metaspace" } }), /Metaspace after a normalizer/],
    ["spaces kept", (j) => ({ ...j, normalizer: { type: "Prepend", prepend: "\u2581" } }), /spaces are not replaced/],
    ["Metaspace that splits words", (j) => ({ ...j, normalizer: null, pre_tokenizer: { type: "Metaspace", replacement: "\u2581", prepend_scheme: "first", split: true } }), /split: true/],
    ["a missing byte piece", (j) => ({ ...j, model: { ...j.model, vocab: { ...j.model.vocab, "<0x41>": undefined, "<0x4I>": 68 } } }), /255 of the 256 byte pieces/],
    ["ids with a hole", (j) => ({ ...j, model: { ...j.model, vocab: { ...j.model.vocab, "▁zzz": 32005 } } }), /no piece with id 32000/],
    ["two pieces for one id", (j) => ({ ...j, model: { ...j.model, vocab: { ...j.model.vocab, "▁zzz": 500 } } }), /gives id 500 to "▁zzz"/],
    ["an added token that renames a piece", (j) => ({ ...j, added_tokens: [...j.added_tokens, { id: 3, content: "<pad>", special: true }] }), /added_tokens\[3\] gives id 3/],
    ["a negative id", (j) => ({ ...j, model: { ...j.model, vocab: { ...j.model.vocab, "▁zzz": -1 } } }), /has id -1/],
    ["a deeply nested id (named, not printed)", (j) => JSON.stringify({ ...j, model: { ...j.model, vocab: { ...j.model.vocab, "▁zzz": "@@DEEP@@" } } }).replace('"@@DEEP@@"', "[".repeat(100000) + "]".repeat(100000)), /"▁zzz"\] has id an array/],
    ["a deeply nested merge", (j) => JSON.stringify({ ...j, model: { ...j.model, merges: ["@@DEEP@@"] } }).replace('"@@DEEP@@"', "[".repeat(100000) + "]".repeat(100000)), /merges\[0\] is an array, not two pieces/],
    ["a merge of unknown pieces", (j) => ({ ...j, model: { ...j.model, merges: ["▁ t", "qq zz"] } }), /merges\[1\] "qq zz" names a piece/],
    ["a merge that is not two pieces", (j) => ({ ...j, model: { ...j.model, merges: ["▁t"] } }), /merges\[0\] is "▁t", not two pieces/],
    ["no merges", (j) => ({ ...j, model: { ...j.model, merges: undefined } }), /model.merges is not an array/],
    ["an unknown unk_token", (j) => ({ ...j, model: { ...j.model, unk_token: "<unknown>" } }), /unk_token "<unknown>" is not a piece/],
    ["no </s>", (j) => ({ ...j, model: { ...j.model, vocab: { ...j.model.vocab, "</s>": undefined, "<eos>": 2 } }, added_tokens: j.added_tokens.slice(0, 2) }), /has no <\/s> piece/],
  ];
  for (const [what, mutate, message] of cases) {
    it(`refuses ${what} with ERR_TOKENIZER naming the field`, async () => {
      const json = mutate(base());
      const file = writeJson("bad.json", typeof json === "string" ? json : JSON.stringify(json, (_k, v) => v));
      const err = await Tokenizer.fromFile(file).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(Llama2Error);
      expect((err as Llama2Error).code).toBe("ERR_TOKENIZER");
      expect((err as Error).message).toContain(file);
      expect((err as Error).message).toMatch(message);
    });
  }

  it("reads a file with a UTF-8 BOM and leading whitespace", async () => {
    const file = writeJson("bom.json", `\uFEFF \n${JSON.stringify(base())}`);
    expect((await Tokenizer.fromFile(file)).encode("Hello")).toEqual((await Tokenizer.fromFile(writeJson("plain.json", base()))).encode("Hello"));
  });

  it("parseHfTokenizerJson gives plain data (no tokenizer loaded)", () => {
    const v = parseHfTokenizerJson(JSON.stringify(base()), "x.json");
    expect(v.tokens.length).toBe(32000);
    expect(v.types[3]).toBe(PieceType.BYTE);
  });
});

describeShared("a Hugging Face folder with tokenizer.json and no tokenizer.model", ["models/tiny-llama-hf", "fixtures/tiny-llama-hf-reference.json"], () => {
  const scratch = new Scratch("llama2-tokjson-dir-");
  afterAll(() => scratch.cleanup());
  const cases = readSharedJson<{ cases: TinyCase[] }>("fixtures/tiny-llama-hf-reference.json").cases;

  it("loads, encodes each prompt as transformers did and generates its greedy ids", async () => {
    const dir = scratch.hfDir(sharedPath("models/tiny-llama-hf"), { files: { "tokenizer.model": null, "tokenizer.json": JSON.stringify(llamaTokenizerJson()) } });
    expect(native().readModelInfo(dir, false).tokenizerPath).toBe(path.join(dir, "tokenizer.json"));
    const m = await Llama2.load(dir, { device: "cpu", maxSequences: 1 });
    try {
      expect(m.tokenizer!.source).toBe(path.join(dir, "tokenizer.json"));
      for (const c of cases) {
        expect(m.tokenizer!.encode(c.text, { bos: true })).toEqual(c.prompt);
        const r = await m.generate(c.text, { temperature: 0, stopOnEos: false, maxTokens: c.generated.length }).result;
        expect(r.tokenIds).toEqual(c.generated);
      }
    } finally {
      await m.dispose();
    }
  });

  it("tokenizer.model wins when both are there; added tokens and tokenizer_config.json's eos_token apply to tokenizer.json", async () => {
    const both = scratch.hfDir(sharedPath("models/tiny-llama-hf"), { files: { "tokenizer.json": "{ broken" } });
    expect((await tokenizerForModel(both)).source).toBe(path.join(both, "tokenizer.model"));
    const json = llamaTokenizerJson({ added: [{ content: "<|im_start|>", special: true }, { content: "<|im_end|>", special: true }] });
    const chatml = scratch.hfDir(sharedPath("models/tiny-llama-hf"), {
      config: (c) => void (c.vocab_size = 32004), // a model padded past its tokenizer
      files: { "tokenizer.model": null, "tokenizer.json": JSON.stringify(json), "tokenizer_config.json": JSON.stringify({ eos_token: "<|im_end|>" }) },
    });
    const tok = await tokenizerForModel(chatml);
    expect(tok.vocabSize).toBe(32004);
    expect(tok.eosId).toBe(32001);
    expect([tok.piece(32002), tok.piece(32003)]).toEqual(["[PAD32002]", "[PAD32003]"]);
    expect(tok.encode("<|im_start|>user\nHi<|im_end|>", { special: true })).toEqual([32000, ...tok.encode("user\nHi"), 32001]);
  });

  it("converts to a GGUF that tokenizes as the folder does (add_space_prefix for 'never'); Metaspace 'first' is reported as not kept", async () => {
    for (const variant of ["legacy", "never", "metaspace"] as const) {
      const json = JSON.stringify(variant === "never" ? llamaTokenizerJson({ prepend: false }) : llamaTokenizerJson({ variant }));
      const dir = scratch.hfDir(sharedPath("models/tiny-llama-hf"), { files: { "tokenizer.model": null, "tokenizer.json": json } });
      const out = scratch.path(`${variant}.gguf`);
      const r = await convertModel(dir, out, { dtype: "f16" });
      expect(r.tokenizer).toBe(path.join(dir, "tokenizer.json"));
      const [fromDir, fromGguf] = [await tokenizerForModel(dir), await tokenizerForModel(out)];
      const texts = [...hardTexts, ...randomTexts(100, 5)];
      if (variant !== "metaspace") {
        expect(r.tokenizerNote).toBeUndefined();
        expect(fromGguf.vocabulary.spacePrefix).toBe(fromDir.vocabulary.spacePrefix);
        for (const t of texts) expect(fromGguf.encode(t, { special: true }), t).toEqual(fromDir.encode(t, { special: true }));
      } else {
        expect(r.tokenizerNote).toMatch(/"first".* no GGUF key/);
        // Text that neither starts with a space nor follows a special piece still encodes the same.
        for (const t of texts.filter((x) => !/^[\s\u2581]/.test(x) && !x.includes("<"))) expect(fromGguf.encode(t), t).toEqual(fromDir.encode(t));
        expect(fromGguf.encode(" x")).not.toEqual(fromDir.encode(" x"));
      }
    }
  });

  it("a tokenizer.model folder encodes with transformers' '▁' rule: tokenizer.json's, else tokenizer_config.json's legacy / add_prefix_space", async () => {
    const hf = (opts: Parameters<typeof llamaTokenizerJson>[0]) => new HfTokenizer(llamaTokenizerJson(opts), {});
    const cases = [
      // legacy: false and no tokenizer.json: transformers converts tokenizer.model with Metaspace "first".
      { files: { "tokenizer_config.json": JSON.stringify({ legacy: false }) }, rule: "first", oracle: hf({ variant: "metaspace" }) },
      { files: { "tokenizer_config.json": JSON.stringify({ legacy: true, add_prefix_space: false }) }, rule: "never", oracle: hf({ prepend: false }) },
      // A tokenizer.json is used as it is, whatever the flags say.
      { files: { "tokenizer_config.json": JSON.stringify({ legacy: false }), "tokenizer.json": JSON.stringify(llamaTokenizerJson()) }, rule: undefined, oracle: hf({}) },
      { files: { "tokenizer.json": JSON.stringify(llamaTokenizerJson({ variant: "metaspace", prepend: "always" })) }, rule: "always", oracle: hf({ variant: "metaspace", prepend: "always" }) },
      // add_prefix_space set makes transformers convert tokenizer.model (from_slow) rather than load tokenizer.json.
      { files: { "tokenizer_config.json": JSON.stringify({ legacy: false, add_prefix_space: true }), "tokenizer.json": JSON.stringify(llamaTokenizerJson()) }, rule: "first", oracle: hf({ variant: "metaspace" }) },
      { files: { "tokenizer_config.json": JSON.stringify({ add_prefix_space: false }), "tokenizer.json": JSON.stringify(llamaTokenizerJson()) }, rule: "never", oracle: hf({ prepend: false }) },
      // One that is not a Llama tokenizer.json is passed over (tokenizer.model is what is loaded).
      { files: { "tokenizer_config.json": JSON.stringify({ legacy: false }), "tokenizer.json": "{ broken" }, rule: "first", oracle: hf({ variant: "metaspace" }) },
    ] as const;
    for (const c of cases) {
      const dir = scratch.hfDir(sharedPath("models/tiny-llama-hf"), { files: c.files });
      const tok = await tokenizerForModel(dir);
      expect(tok.vocabulary.spacePrefix, JSON.stringify(c.files).slice(0, 80)).toBe(c.rule);
      expect(tok.source).toContain(path.join(dir, "tokenizer.model"));
      for (const t of [...hardTexts, ...randomTexts(60, 3)]) expect(tok.encode(t, { special: true }), t).toEqual(hfIds(c.oracle, t));
    }
  });

  it("a broken tokenizer.json fails the load with ERR_TOKENIZER naming it", async () => {
    const dir = scratch.hfDir(sharedPath("models/tiny-llama-hf"), { files: { "tokenizer.model": null, "tokenizer.json": JSON.stringify({ model: { type: "Unigram" } }) } });
    const err = await Llama2.load(dir, { device: "cpu", maxSequences: 1 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(Llama2Error);
    expect((err as Llama2Error).code).toBe("ERR_TOKENIZER");
    expect((err as Error).message).toContain(path.join(dir, "tokenizer.json"));
  });
});
