// The tokenizer against Google's SentencePiece: the shared fixture (encodings by sentencepiece 0.1.97)
// and sentencepiece-js loaded through its own load() as an independent decode oracle.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Llama2Error } from "../lib/errors.js";
import { Tokenizer } from "../lib/tokenizer.js";
import { llamaVocabulary } from "../lib/tokenizer/llama-vocab.js";
import { buildSentencePieceModel, type Vocabulary } from "../lib/tokenizer/sentencepiece-model.js";
import { describeShared, readSharedJson, sharedPath } from "./helpers/shared.js";

interface EncodeCase {
  text: string;
  ids: number[];
  pieces: string[];
  decoded: string;
}
interface Oracle {
  decodeIds(ids: number[]): string;
}

const tmp = mkdtempSync(path.join(tmpdir(), "llama2-tok-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** sentencepiece-js loaded the library's own way (from a file), independent of Tokenizer's loader. */
async function oracle(modelPath: string): Promise<Oracle> {
  const { SentencePieceProcessor } = createRequire(import.meta.url)("@agnai/sentencepiece-js");
  const sp = new SentencePieceProcessor();
  await sp.load(modelPath);
  return sp;
}

/** Deterministic PRNG (mulberry32). */
function rng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const byteId = (b: number) => b + 3; // Llama: <0x00> is id 3
const utf8Ids = (s: string) => [...Buffer.from(s, "utf8")].map(byteId);

/** Random ids that stress decoding: control/unk, "▁" pieces, stray bytes, split characters. */
function randomIds(r: () => number, validOnly = false): number[] {
  const out: number[] = [];
  const n = 1 + Math.floor(r() * 30);
  const chars = ["伥", "🦙", "é", "ü", "\n", "€", "\u{10FFFF}"];
  while (out.length < n) {
    const k = r();
    if (k < 0.25) out.push(...utf8Ids(chars[Math.floor(r() * chars.length)]!));
    else if (k < 0.35 && !validOnly) out.push(byteId(0x80 + Math.floor(r() * 128))); // lead/continuation/invalid bytes
    else if (k < 0.45 && !validOnly) out.push(Math.floor(r() * 3)); // <unk>, <s>, </s>
    else if (k < 0.55) out.push(r() < 0.5 ? 29871 : 259); // "▁", "▁▁"
    else out.push(259 + Math.floor(r() * (32000 - 259)));
  }
  return out;
}

function streamDecode(tok: Tokenizer, ids: number[], stripLeadingSpace?: boolean): string[] {
  const d = tok.createStreamDecoder(stripLeadingSpace === undefined ? {} : { stripLeadingSpace });
  return [...ids.map((id) => d.push(id)), d.flush()];
}

function expectCode(fn: () => unknown, code: string, text?: string | RegExp): void {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(Llama2Error);
  expect((err as Llama2Error).code).toBe(code);
  if (text) expect((err as Error).message).toMatch(text);
}

async function expectReject(p: Promise<unknown>, code: string, text?: string | RegExp): Promise<void> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(Llama2Error);
  expect((err as Llama2Error).code).toBe(code);
  if (text) expect((err as Error).message).toMatch(text);
}

/** The checks every tokenizer of the Llama 2 vocabulary must pass. `get` is read inside tests. */
function decodingSuite(get: () => { tok: Tokenizer; oracle: Oracle }): void {
  it("decode equals SentencePiece's DecodeIds on random id sequences (bytes, control, ▁ pieces)", () => {
    const { tok, oracle } = get();
    const r = rng(1234);
    for (let i = 0; i < 400; i++) {
      const ids = randomIds(r);
      expect(tok.decode(ids), JSON.stringify(ids)).toBe(oracle.decodeIds(ids));
    }
  });

  it("decode handles the leading-space rule like SentencePiece", () => {
    const { tok, oracle } = get();
    for (const ids of [[29871, 15043], [1, 29871, 15043], [259, 15043], [1, 15043, 2, 15043], [0, 15043], [byteId(0x41), 15043], [1, 2]]) {
      expect(tok.decode(ids)).toBe(oracle.decodeIds(ids));
    }
    expect(tok.decode([1, 15043])).toBe("Hello");
  });

  it("stream decoding one token at a time equals decode", () => {
    const { tok } = get();
    const r = rng(99);
    for (let i = 0; i < 400; i++) {
      const ids = randomIds(r);
      expect(streamDecode(tok, ids).join(""), JSON.stringify(ids)).toBe(tok.decode(ids));
    }
  });

  it("stream decoding never emits U+FFFD or half a character for valid UTF-8 split across byte pieces", () => {
    const { tok } = get();
    const r = rng(7);
    for (let i = 0; i < 300; i++) {
      const chunks = streamDecode(tok, randomIds(r, true));
      for (const c of chunks) {
        expect(c).not.toContain("\uFFFD");
        expect(c.isWellFormed()).toBe(true);
      }
    }
    // <0xE4><0xBC><0xBC> is "似": nothing until the last byte
    expect(streamDecode(tok, [byteId(0xe4), byteId(0xbc), byteId(0xbc)])).toEqual(["", "", "似", ""]);
    expect(streamDecode(tok, utf8Ids("🦙"))).toEqual(["", "", "", "🦙", ""]);
  });

  it("stream decoding resolves invalid bytes only when they can no longer form a character", () => {
    const { tok } = get();
    // E4 BC is a valid prefix: held; at flush each byte becomes U+FFFD (SentencePiece's rule)
    expect(streamDecode(tok, [byteId(0xe4), byteId(0xbc)])).toEqual(["", "", "\uFFFD\uFFFD"]);
    // a non-byte piece (even </s>) ends the byte run
    expect(streamDecode(tok, [byteId(0xe4), 2, byteId(0x41)])).toEqual(["", "\uFFFD", "A", ""]);
    // a stray continuation byte is invalid at once; ED A0 (a surrogate) can never complete
    expect(streamDecode(tok, [byteId(0xbc)])).toEqual(["\uFFFD", ""]);
    expect(streamDecode(tok, [byteId(0xed), byteId(0xa0)])).toEqual(["", "\uFFFD\uFFFD", ""]);
  });

  it("stripLeadingSpace: false keeps the first piece's space", () => {
    const { tok } = get();
    expect(streamDecode(tok, [1, 15043, 29892]).join("")).toBe("Hello,");
    expect(streamDecode(tok, [1, 15043, 29892], false).join("")).toBe(" Hello,");
  });
}

describe("Tokenizer.demo (built-in vocabulary)", () => {
  let tok: Tokenizer;
  let spOracle: Oracle;
  beforeAll(async () => {
    tok = await Tokenizer.demo();
    const file = path.join(tmp, "demo.model");
    writeFileSync(file, buildSentencePieceModel(llamaVocabulary()));
    spOracle = await oracle(file);
  });

  it("has Llama 2's special ids and pieces", async () => {
    expect([tok.vocabSize, tok.unkId, tok.bosId, tok.eosId, tok.padId]).toEqual([32000, 0, 1, 2, -1]);
    expect([tok.piece(1), tok.piece(2), tok.piece(13), tok.piece(15043)]).toEqual(["<s>", "</s>", "<0x0A>", "▁Hello"]);
    expect([tok.isControl(1), tok.isControl(2), tok.isControl(0), tok.isControl(15043)]).toEqual([true, true, false, false]);
    await expect(Tokenizer.demo()).resolves.toBe(tok); // cached
  });

  it("encodes like SentencePiece, with optional BOS/EOS; <s> in text is plain text", () => {
    expect(tok.encode("Hello, world!")).toEqual([15043, 29892, 3186, 29991]);
    expect(tok.encode("Hello, world!", { bos: true, eos: true })).toEqual([1, 15043, 29892, 3186, 29991, 2]);
    expect(tok.encodePieces("Hello, world!")).toEqual(["▁Hello", ",", "▁world", "!"]);
    const ids = tok.encode("<s> hi </s>");
    expect(ids).not.toContain(1);
    expect(ids).not.toContain(2);
    expect(tok.decode(ids)).toBe("<s> hi </s>");
    expect(tok.encode("")).toEqual([]);
  });

  it("turns lone surrogates into U+FFFD instead of corrupting the next character", () => {
    expect(tok.encode("a\uD800b")).toEqual(tok.encode("a\uFFFDb"));
    expect(tok.decode(tok.encode("a\uD800b"))).toBe("a\uFFFDb");
  });

  decodingSuite(() => ({ tok, oracle: spOracle }));

  it("rejects bad arguments with InvalidArgumentError", () => {
    const t = tok as unknown as Record<string, (...a: unknown[]) => unknown>;
    expectCode(() => t.encode!(42), "ERR_INVALID_ARGUMENT", /text/);
    expectCode(() => t.encode!(null), "ERR_INVALID_ARGUMENT", /text/);
    expectCode(() => t.encode!("x", { bos: "yes" }), "ERR_INVALID_ARGUMENT", /bos/);
    expectCode(() => t.encodePieces!(undefined), "ERR_INVALID_ARGUMENT", /text/);
    expectCode(() => tok.decode([1, 32000]), "ERR_INVALID_ARGUMENT", /ids\[1\]/);
    expectCode(() => tok.decode([-1]), "ERR_INVALID_ARGUMENT", /ids\[0\]/);
    expectCode(() => tok.decode([1.5]), "ERR_INVALID_ARGUMENT");
    expectCode(() => tok.decode([NaN]), "ERR_INVALID_ARGUMENT");
    expectCode(() => t.decode!("1 2"), "ERR_INVALID_ARGUMENT", /ids/);
    expectCode(() => tok.piece(32000), "ERR_INVALID_ARGUMENT");
    expectCode(() => tok.isControl(-1), "ERR_INVALID_ARGUMENT");
    const d = tok.createStreamDecoder();
    expectCode(() => d.push(40000), "ERR_INVALID_ARGUMENT", /id/);
    expectCode(() => tok.createStreamDecoder({ stripLeadingSpace: 1 as unknown as boolean }), "ERR_INVALID_ARGUMENT");
    expect(tok.decode(Int32Array.from([15043]))).toBe("Hello");
  });
});

describe("Tokenizer loading errors", () => {
  const vocab = (): Vocabulary => llamaVocabulary();

  it("missing file -> ERR_FILE_NOT_FOUND naming the path", async () => {
    const p = path.join(tmp, "nope", "tokenizer.model");
    await expectReject(Tokenizer.fromFile(p), "ERR_FILE_NOT_FOUND", p);
  });

  it("a directory -> ERR_FILE_READ", async () => {
    await expectReject(Tokenizer.fromFile(tmp), "ERR_FILE_READ", tmp);
  });

  it("truncated or garbage model files -> ERR_TOKENIZER naming the path", async () => {
    const bytes = buildSentencePieceModel(vocab());
    const truncated = path.join(tmp, "truncated.model");
    writeFileSync(truncated, bytes.subarray(0, Math.floor(bytes.length / 2)));
    await expectReject(Tokenizer.fromFile(truncated), "ERR_TOKENIZER", truncated);
    const garbage = path.join(tmp, "garbage.model");
    writeFileSync(garbage, Buffer.from("this is not a protobuf at all \xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"));
    await expectReject(Tokenizer.fromFile(garbage), "ERR_TOKENIZER", garbage);
    const empty = path.join(tmp, "empty.model");
    writeFileSync(empty, "");
    await expectReject(Tokenizer.fromFile(empty), "ERR_TOKENIZER", empty);
  });

  it("a vocabulary SentencePiece rejects -> ERR_TOKENIZER (its load status is checked)", async () => {
    const v = vocab();
    const tokens = [...v.tokens];
    tokens[500] = tokens[501]!; // duplicate piece: our parser accepts it, SentencePiece does not
    await expectReject(Tokenizer.fromVocabulary({ ...v, tokens }, "dup-vocab"), "ERR_TOKENIZER", /dup-vocab.*SentencePiece/);
  });

  it("bad vocabularies -> typed errors", async () => {
    const v = vocab();
    await expectReject(Tokenizer.fromVocabulary(null as unknown as Vocabulary, "x"), "ERR_INVALID_ARGUMENT", /vocab/);
    await expectReject(Tokenizer.fromVocabulary({ ...v, bosId: 32000 }, "bad-bos"), "ERR_TOKENIZER", /bad-bos.*bosId/);
    await expectReject(Tokenizer.fromVocabulary({ ...v, scores: v.scores.subarray(1) }, "short"), "ERR_TOKENIZER");
    const tokens = [...v.tokens];
    tokens[3] = "<0xZZ>";
    await expectReject(Tokenizer.fromVocabulary({ ...v, tokens }, "bad-byte"), "ERR_TOKENIZER", /bad-byte/);
    await expectReject(Tokenizer.fromFile(42 as unknown as string), "ERR_INVALID_ARGUMENT", /path/);
  });
});

describeShared("Tokenizer vs the SentencePiece fixture", ["models/tokenizer.model", "fixtures/llama2-tokenizer.json"], () => {
  const cases = (): EncodeCase[] => readSharedJson<{ encode: EncodeCase[] }>("fixtures/llama2-tokenizer.json").encode;
  const tokenizers: Record<string, Tokenizer> = {};
  let spOracle: Oracle;
  beforeAll(async () => {
    tokenizers.file = await Tokenizer.fromFile(sharedPath("models/tokenizer.model"));
    tokenizers.demo = await Tokenizer.demo();
    spOracle = await oracle(sharedPath("models/tokenizer.model"));
  });

  for (const which of ["file", "demo"]) {
    describe(which, () => {
      it("encodes, splits and decodes every fixture text exactly", () => {
        const tok = tokenizers[which]!;
        expect(cases().length).toBeGreaterThan(10);
        for (const c of cases()) {
          expect(tok.encode(c.text), c.text).toEqual(c.ids);
          expect(tok.encodePieces(c.text), c.text).toEqual(c.pieces);
          expect(tok.decode(c.ids), c.text).toBe(c.decoded);
          expect(c.ids.map((id) => tok.piece(id))).toEqual(c.pieces);
        }
      });

      it("streams every fixture one token at a time to the decoded text", () => {
        const tok = tokenizers[which]!;
        for (const c of cases()) {
          const chunks = streamDecode(tok, c.ids);
          expect(chunks.join(""), c.text).toBe(c.decoded);
          for (const ch of chunks) expect(ch).not.toContain("\uFFFD");
        }
      });

      decodingSuite(() => ({ tok: tokenizers[which]!, oracle: spOracle }));
    });
  }

  it("a truncated tokenizer.model -> ERR_TOKENIZER naming the path", async () => {
    const real = readFileSync(sharedPath("models/tokenizer.model"));
    for (const frac of [0.3, 0.999]) {
      const p = path.join(tmp, `cut-${frac}.model`);
      writeFileSync(p, real.subarray(0, Math.floor(real.length * frac)));
      await expectReject(Tokenizer.fromFile(p), "ERR_TOKENIZER", p);
    }
  });
});
