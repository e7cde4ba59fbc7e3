// Reads and writes SentencePiece ModelProto files (tokenizer.model), so that a vocabulary from any
// source (a .model file, a GGUF's metadata, the built-in demo vocabulary) reaches sentencepiece-js
// through one path. Only the fields a Llama (BPE, byte-fallback) tokenizer needs are modelled.
import { Llama2Error } from "../errors.js";

/** SentencePiece piece types (sentencepiece_model.proto). */
export const PieceType = { NORMAL: 1, UNKNOWN: 2, CONTROL: 3, USER_DEFINED: 4, UNUSED: 5, BYTE: 6 } as const;

export interface Vocabulary {
  /** Piece strings, index = token id (e.g. "▁Hello", "<0x0A>", "<s>"). */
  tokens: string[];
  scores: Float32Array;
  /** PieceType per token. */
  types: Int32Array;
  unkId: number;
  bosId: number;
  eosId: number;
  /** -1 when absent. */
  padId: number;
  /**
   * Where a "▁" is put before text (each stretch between special pieces is encoded on its own). Absent:
   * SentencePiece's dummy prefix, before every stretch. The others are a Hugging Face Metaspace
   * pre-tokenizer's prepend_scheme (transformers' `legacy: false`): "always", before every stretch that does
   * not start with a space; "first", only before the stretch that begins the text, unless it starts with a
   * space; "never", none.
   */
  spacePrefix?: "first" | "always" | "never";
}

// ---- protobuf wire format (varint, fixed32, length-delimited) ----

class Reader {
  pos = 0;
  constructor(readonly buf: Uint8Array, readonly source: string) {}
  fail(what: string): never {
    throw new Llama2Error("ERR_TOKENIZER", `invalid SentencePiece model ${this.source}: ${what} at byte ${this.pos}`);
  }
  varint(): number {
    let result = 0;
    let mul = 1;
    for (let i = 0; i < 10; i++) {
      if (this.pos >= this.buf.length) this.fail("truncated varint");
      const b = this.buf[this.pos++]!;
      if (i < 7) result += (b & 0x7f) * mul; // values above 2^49 (e.g. -1 as uint64) are not needed exactly
      mul *= 128;
      if (b < 0x80) return result;
    }
    this.fail("varint too long");
  }
  bytes(): Uint8Array {
    const n = this.varint();
    if (this.pos + n > this.buf.length) this.fail("truncated field");
    const out = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }
  fixed32(): DataView {
    if (this.pos + 4 > this.buf.length) this.fail("truncated fixed32");
    const v = new DataView(this.buf.buffer, this.buf.byteOffset + this.pos, 4);
    this.pos += 4;
    return v;
  }
  skip(wire: number): void {
    if (wire === 0) this.varint();
    else if (wire === 1) this.pos += 8;
    else if (wire === 2) this.bytes();
    else if (wire === 5) this.pos += 4;
    else this.fail(`unsupported wire type ${wire}`);
    if (this.pos > this.buf.length) this.fail("truncated field");
  }
}

class Writer {
  private chunks: number[] = [];
  varint(v: number): void {
    if (v < 0) {
      // negative int32/int64 fields are encoded as 10-byte two's complement
      let lo = v >>> 0;
      for (let i = 0; i < 4; i++) {
        this.chunks.push((lo & 0x7f) | 0x80);
        lo >>>= 7;
      }
      this.chunks.push((lo & 0x0f) | 0x70 | 0x80);
      for (let i = 0; i < 4; i++) this.chunks.push(0xff);
      this.chunks.push(0x01);
      return;
    }
    while (v >= 0x80) {
      this.chunks.push((v % 128) | 0x80);
      v = Math.floor(v / 128);
    }
    this.chunks.push(v);
  }
  tag(field: number, wire: number): void {
    this.varint(field * 8 + wire);
  }
  uint(field: number, v: number): void {
    this.tag(field, 0);
    this.varint(v);
  }
  float(field: number, v: number): void {
    this.tag(field, 5);
    const b = new Uint8Array(4);
    new DataView(b.buffer).setFloat32(0, v, true);
    this.chunks.push(...b);
  }
  bytes(field: number, b: Uint8Array): void {
    this.tag(field, 2);
    this.varint(b.length);
    for (const x of b) this.chunks.push(x);
  }
  string(field: number, s: string): void {
    this.bytes(field, new TextEncoder().encode(s));
  }
  finish(): Uint8Array {
    return Uint8Array.from(this.chunks);
  }
}

/** Parses a tokenizer.model (ModelProto). Throws ERR_TOKENIZER naming `source` when malformed. */
export function parseSentencePieceModel(buf: Uint8Array, source = "tokenizer.model"): Vocabulary {
  const r = new Reader(buf, source);
  const tokens: string[] = [];
  const scores: number[] = [];
  const types: number[] = [];
  let modelType = 1;
  let ids = { unk: 0, bos: 1, eos: 2, pad: -1 };
  const dec = new TextDecoder("utf-8", { fatal: false, ignoreBOM: true }); // piece 30143 is a lone BOM
  while (r.pos < buf.length) {
    const key = r.varint();
    const field = Math.floor(key / 8);
    const wire = key & 7;
    if (field === 1 && wire === 2) {
      const pr = new Reader(r.bytes(), source);
      let piece = "";
      let score = 0;
      let type: number = PieceType.NORMAL;
      while (pr.pos < pr.buf.length) {
        const k = pr.varint();
        const f = Math.floor(k / 8);
        const w = k & 7;
        if (f === 1 && w === 2) piece = dec.decode(pr.bytes());
        else if (f === 2 && w === 5) score = pr.fixed32().getFloat32(0, true);
        else if (f === 3 && w === 0) type = pr.varint();
        else pr.skip(w);
      }
      tokens.push(piece);
      scores.push(score);
      types.push(type);
    } else if (field === 2 && wire === 2) {
      const tr = new Reader(r.bytes(), source);
      while (tr.pos < tr.buf.length) {
        const k = tr.varint();
        const f = Math.floor(k / 8);
        const w = k & 7;
        if (w === 0 && [3, 40, 41, 42, 43].includes(f)) {
          const v = tr.varint();
          const signed = v >= 2 ** 48 ? -1 : v; // -1 is stored as a 64-bit two's complement
          if (f === 3) modelType = v;
          else if (f === 40) ids.unk = signed;
          else if (f === 41) ids.bos = signed;
          else if (f === 42) ids.eos = signed;
          else ids.pad = signed;
        } else tr.skip(w);
      }
    } else {
      r.skip(wire);
    }
  }
  if (tokens.length === 0) r.fail("no pieces");
  if (modelType !== 2) {
    throw new Llama2Error("ERR_TOKENIZER", `${source}: only BPE SentencePiece models (Llama) are supported (model_type ${modelType})`);
  }
  return {
    tokens,
    scores: Float32Array.from(scores),
    types: Int32Array.from(types),
    unkId: ids.unk,
    bosId: ids.bos,
    eosId: ids.eos,
    padId: ids.pad,
  };
}

/**
 * Writes a ModelProto equivalent to Llama 2's tokenizer.model for `vocab`: BPE with byte fallback,
 * identity normalization, a dummy prefix, whitespace kept as is, digits split.
 */
export function buildSentencePieceModel(vocab: Vocabulary): Uint8Array {
  const n = vocab.tokens.length;
  if (vocab.scores.length !== n || vocab.types.length !== n) {
    throw new Llama2Error("ERR_TOKENIZER", `vocabulary arrays differ in length (${n} tokens, ${vocab.scores.length} scores, ${vocab.types.length} types)`);
  }
  const w = new Writer();
  for (let i = 0; i < n; i++) {
    const p = new Writer();
    p.string(1, vocab.tokens[i]!);
    p.float(2, vocab.scores[i]!);
    if (vocab.types[i] !== PieceType.NORMAL) p.uint(3, vocab.types[i]!);
    w.bytes(1, p.finish());
  }
  // TrainerSpec: the fields of Llama 2's own tokenizer.model that affect encoding and decoding.
  const t = new Writer();
  t.uint(3, 2); // model_type = BPE
  t.uint(4, n); // vocab_size
  t.uint(19, 1); // split_by_unicode_script
  t.uint(20, 16); // max_sentencepiece_length
  t.uint(21, 1); // split_by_number
  t.uint(22, 1); // split_by_whitespace
  t.uint(25, 1); // split_digits
  t.uint(26, 1); // allow_whitespace_only_pieces
  t.uint(35, 1); // byte_fallback
  t.uint(40, vocab.unkId);
  t.uint(41, vocab.bosId);
  t.uint(42, vocab.eosId);
  t.tag(43, 0);
  t.varint(vocab.padId);
  t.string(44, " \u2047 "); // unk_surface
  w.bytes(2, t.finish());
  // NormalizerSpec: identity, add_dummy_prefix, keep extra whitespace.
  const nz = new Writer();
  nz.string(1, "identity");
  nz.bytes(2, new Uint8Array(0));
  nz.uint(3, 1);
  nz.uint(4, 0);
  w.bytes(3, nz.finish());
  return w.finish();
}
