// Turns token ids back into text exactly like SentencePiece's DecodeIds, one token at a time, so that
// one-shot decoding (Tokenizer.decode) and streaming share a single implementation.
//
// SentencePiece's rules (sentencepiece_processor.cc, Decode), reproduced here:
//  - control pieces (<s>, </s>) decode to "", the unknown piece to the unk surface " ⁇ ";
//  - "▁" becomes " "; while nothing has been output yet, the first piece starting with "▁" loses
//    that one "▁" (the dummy prefix added by encoding), only once;
//  - a run of consecutive byte pieces (<0xNN>) is decoded as UTF-8 where each byte that does not
//    start a complete, valid character becomes U+FFFD on its own; any non-byte piece (even a
//    control one) ends the run.
import { InvalidArgumentError, Llama2Error, showValue } from "../errors.js";
import { PieceType, type Vocabulary } from "./sentencepiece-model.js";

/** Same string as the unk_surface that buildSentencePieceModel writes. */
const UNK_SURFACE = " \u2047 ";

/** Per-id data the decoder needs, precomputed once per vocabulary. */
export interface DecoderTable {
  /** Decoded text of each non-byte piece ("▁" as " "): "" for control pieces, the unk surface for unknown. */
  readonly surface: readonly string[];
  /** Byte value of byte-fallback pieces, -1 for others. */
  readonly byteValue: Int16Array;
  /** 1 where the piece starts with a "▁" that may be dropped at the start of a decode. */
  readonly leadingSpace: Uint8Array;
}

export function buildDecoderTable(vocab: Vocabulary, source: string): DecoderTable {
  const n = vocab.tokens.length;
  const surface: string[] = new Array(n);
  const byteValue = new Int16Array(n).fill(-1);
  const leadingSpace = new Uint8Array(n);
  for (let id = 0; id < n; id++) {
    const piece = vocab.tokens[id]!;
    const type = vocab.types[id];
    surface[id] = "";
    if (type === PieceType.CONTROL) continue;
    if (type === PieceType.UNKNOWN) {
      surface[id] = UNK_SURFACE;
    } else if (type === PieceType.BYTE) {
      const m = /^<0x([0-9A-Fa-f]{2})>$/.exec(piece);
      if (!m) throw new Llama2Error("ERR_TOKENIZER", `${source}: byte piece ${id} is "${piece}", expected <0xNN>`);
      byteValue[id] = parseInt(m[1]!, 16);
    } else {
      surface[id] = piece.replaceAll("\u2581", " ");
      leadingSpace[id] = piece.startsWith("\u2581") ? 1 : 0;
    }
  }
  return { surface, byteValue, leadingSpace };
}

/**
 * SentencePiece's DecodeUTF8 on `b[i..]`: the code point and its length when the bytes there form a
 * complete valid character; 0 when they are a proper prefix of a valid character (more bytes may
 * complete it); -1 when invalid (the byte at i becomes U+FFFD).
 */
function utf8At(b: readonly number[], i: number): { cp: number; len: number } | 0 | -1 {
  const b0 = b[i]!;
  if (b0 < 0x80) return { cp: b0, len: 1 };
  const len = (b0 & 0xe0) === 0xc0 ? 2 : (b0 & 0xf0) === 0xe0 ? 3 : (b0 & 0xf8) === 0xf0 ? 4 : 0;
  if (len === 0) return -1;
  const avail = b.length - i;
  if (avail >= len) return decodeFull(b.slice(i, i + len));
  // Incomplete: can some continuation make it valid? Validity depends only on the first two bytes
  // (range/surrogate/overlong checks), so later bytes can be filled with 0x80; a lone lead byte
  // needs every possible second byte tried.
  const prefix = b.slice(i);
  const seconds = avail >= 2 ? [-1] : Array.from({ length: 64 }, (_, k) => 0x80 + k);
  for (const s of seconds) {
    const cand = s < 0 ? [...prefix] : [...prefix, s];
    while (cand.length < len) cand.push(0x80);
    if (decodeFull(cand) !== -1) return 0;
  }
  return -1;
}

function decodeFull(s: readonly number[]): { cp: number; len: number } | -1 {
  for (let k = 1; k < s.length; k++) if ((s[k]! & 0xc0) !== 0x80) return -1;
  const n = s.length;
  const cp =
    n === 2
      ? ((s[0]! & 0x1f) << 6) | (s[1]! & 0x3f)
      : n === 3
        ? ((s[0]! & 0x0f) << 12) | ((s[1]! & 0x3f) << 6) | (s[2]! & 0x3f)
        : ((s[0]! & 0x07) << 18) | ((s[1]! & 0x3f) << 12) | ((s[2]! & 0x3f) << 6) | (s[3]! & 0x3f);
  const min = n === 2 ? 0x80 : n === 3 ? 0x800 : 0x10000;
  const valid = cp >= min && (cp < 0xd800 || (cp >= 0xe000 && cp <= 0x10ffff));
  return valid ? { cp, len: n } : -1;
}

export interface StreamDecoderOptions {
  /**
   * Drop the leading "▁" of the first piece the way SentencePiece does at the start of a decode
   * (default true, so that the stream equals Tokenizer.decode). Use false when the ids continue text
   * already shown (e.g. a completion after its prompt), where that space is real.
   */
  stripLeadingSpace?: boolean;
}

export interface StreamDecoder {
  /** Adds one token; returns the text it completes (possibly ""), never a partial character. */
  push(id: number): string;
  /** Ends the stream: returns held-back bytes, U+FFFD for each that never formed a character. */
  flush(): string;
}

export function createStreamDecoder(table: DecoderTable, options: StreamDecoderOptions = {}): StreamDecoder {
  if (options === null || typeof options !== "object") throw new InvalidArgumentError("options", "must be an object");
  const strip = options.stripLeadingSpace ?? true;
  if (typeof strip !== "boolean") throw new InvalidArgumentError("stripLeadingSpace", "must be a boolean");
  const n = table.surface.length;
  const pending: number[] = [];
  let atStart = strip; // SentencePiece's is_bos_ws

  // Resolves the held bytes; `end`: the byte run is over, so incomplete characters are invalid.
  const drain = (end: boolean): string => {
    let out = "";
    let i = 0;
    while (i < pending.length) {
      const r = utf8At(pending, i);
      if (r === 0 && !end) break;
      if (typeof r === "object") {
        out += String.fromCodePoint(r.cp);
        i += r.len;
      } else {
        out += "\uFFFD";
        i += 1;
      }
    }
    pending.splice(0, i);
    if (out) atStart = false;
    return out;
  };

  return {
    push(id: number): string {
      if (!Number.isInteger(id) || id < 0 || id >= n) {
        throw new InvalidArgumentError("id", `token id must be an integer in [0, ${n}), got ${showValue(id)}`);
      }
      const byte = table.byteValue[id]!;
      if (byte >= 0) {
        pending.push(byte);
        return drain(false);
      }
      const before = drain(true);
      let text = table.surface[id]!;
      if (atStart && table.leadingSpace[id]) {
        text = text.slice(1);
        atStart = false;
      }
      if (text) atStart = false;
      return before + text;
    },
    flush(): string {
      return drain(true);
    },
  };
}
