// Seeded mutation fuzzing of the model loaders (test/fuzz-loaders.test.ts).
//
// A case is a valid model with a few mutations applied (bit flips, byte overwrites, integer fields set
// to edge values, truncations, insertions; rewritten safetensors headers, config.json and shard index
// fields). Cases are written to disk in batches and opened by a child process (fuzz-child.mjs), so a
// crash, abort, hang or runaway allocation in native code fails the case instead of killing vitest.
// Every case is reproducible from (seed, corpus name, case index).
import { spawn } from "node:child_process";
import { closeSync, mkdirSync, openSync, readFileSync, rmSync, symlinkSync, truncateSync, writeFileSync, writeSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { Rng } from "../../lib/rng.js";
import { ggufLayout } from "./corrupt.js";

// ------------------------------------------------------------------------------------ randomness

export class FuzzRng {
  private readonly r: Rng;
  constructor(seed: number) {
    this.r = new Rng(seed);
  }
  /** Integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.r.next() * n);
  }
  /** Integer in [lo, hi]. */
  range(lo: number, hi: number): number {
    return lo + this.int(hi - lo + 1);
  }
  chance(p: number): boolean {
    return this.r.next() < p;
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)]!;
  }
  /** Picks by weight: [[weight, value], ...]. */
  weighted<T>(xs: readonly (readonly [number, T])[]): T {
    let total = 0;
    for (const [w] of xs) total += w;
    let x = this.r.next() * total;
    for (const [w, v] of xs) {
      if ((x -= w) < 0) return v;
    }
    return xs[xs.length - 1]![1];
  }
  u32(): number {
    return this.r.nextUint32();
  }
  u64(): bigint {
    return (BigInt(this.r.nextUint32()) << 32n) | BigInt(this.r.nextUint32());
  }
  bytes(n: number): Buffer {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) b[i] = this.int(256);
    return b;
  }
}

/** The case's own generator: any case can be regenerated alone from (seed, corpus, index). */
export function caseRng(seed: number, corpus: string, index: number): FuzzRng {
  let h = 0x811c9dc5; // FNV-1a of "corpus#index"
  for (const ch of `${corpus}#${index}`) h = Math.imul(h ^ ch.charCodeAt(0), 0x01000193) >>> 0;
  return new FuzzRng((seed % 0x200000) * 0x100000000 + h);
}

// ------------------------------------------------------------------------------ byte mutations

/** One mutation of a file's bytes, described for the failure report. */
export interface Op {
  desc: string;
  apply(buf: Buffer): Buffer;
}

export function applyOps(base: Buffer, ops: readonly Op[]): Buffer {
  let b: Buffer = Buffer.from(base);
  for (const op of ops) b = op.apply(b);
  return b;
}

/** An integer (or float) field of a binary header. */
export interface Field {
  at: number;
  size: 1 | 2 | 4 | 8;
  name: string;
  float?: boolean;
}

const hex = (v: bigint) => `0x${v.toString(16)}`;

function readField(b: Buffer, f: Field): bigint {
  if (f.at + f.size > b.length) return 0n;
  switch (f.size) {
    case 1: return BigInt(b.readUInt8(f.at));
    case 2: return BigInt(b.readUInt16LE(f.at));
    case 4: return BigInt(b.readUInt32LE(f.at));
    case 8: return b.readBigUInt64LE(f.at);
  }
}

function writeField(b: Buffer, at: number, size: number, v: bigint): void {
  if (at + size > b.length) return;
  const m = v & ((1n << BigInt(size * 8)) - 1n);
  if (size === 1) b.writeUInt8(Number(m), at);
  else if (size === 2) b.writeUInt16LE(Number(m), at);
  else if (size === 4) b.writeUInt32LE(Number(m), at);
  else b.writeBigUInt64LE(m, at);
}

const F32_BITS = [0x7fc00000, 0xffc00000, 0x7f800000, 0xff800000, 0x80000000, 0x00000001, 0x7f7fffff, 0x3f800000, 0xbf800000, 0x4f000000, 0x5f800000];
function f64Bits(x: number): bigint {
  const b = Buffer.alloc(8);
  b.writeDoubleLE(x);
  return b.readBigUInt64LE();
}
const F64_VALUES = [NaN, Infinity, -Infinity, -0, 5e-324, 1e300, -1, 4.5, 2 ** 31, 2 ** 32, 2 ** 63, 1e10, -1e10];

/** An edge value for a field of `size` bytes whose current value is `cur`. */
function edgeValue(rng: FuzzRng, size: number, cur: bigint, fileSize: number, float = false): bigint {
  const bits = BigInt(size * 8);
  const max = (1n << bits) - 1n;
  if (float && rng.chance(0.6)) return size === 4 ? BigInt(rng.pick(F32_BITS)) : f64Bits(rng.pick(F64_VALUES));
  const common = [0n, 1n, 2n, 3n, 4n, 7n, 8n, 9n, 12n, 13n, 30n, 31n, 32n, 33n, 0x7fn, 0x80n, 0xffn, 0x7fffn, 0x8000n, 0xffffn];
  const wide = [0x7fffffffn, 0x80000000n, 0xffffffffn, 0xfffffffen, 0x100000000n, 0x100000001n, 1n << 53n, 1n << 62n, (1n << 63n) - 1n, 1n << 63n, max, max - 1n, 1000000n, 1000001n];
  return rng.weighted<() => bigint>([
    [3, () => rng.pick(common)],
    [3, () => rng.pick(wide) & max],
    [1, () => BigInt(fileSize) & max],
    [1, () => BigInt(fileSize + rng.range(-64, 64)) & max],
    [2, () => (cur + 1n) & max],
    [2, () => (cur - 1n) & max],
    [1, () => (cur * 2n) & max],
    [1, () => cur / 2n],
    [1, () => (cur + 0x100000000n) & max],
    [2, () => cur ^ (1n << BigInt(rng.int(size * 8)))],
    [1, () => (size === 8 ? rng.u64() : BigInt(rng.u32())) & max],
  ])();
}

export function fieldOp(rng: FuzzRng, f: Field, base: Buffer): Op {
  const v = edgeValue(rng, f.size, readField(base, f), base.length, f.float);
  return { desc: `${f.name}@${f.at} := ${hex(v)}`, apply: (b) => (writeField(b, f.at, f.size, v), b) };
}

export const bitFlip = (at: number, bit: number): Op => ({
  desc: `flip bit ${bit} @${at}`,
  apply: (b) => {
    if (at < b.length) b[at]! ^= 1 << bit;
    return b;
  },
});

export const setBytes = (at: number, bytes: Buffer): Op => ({
  desc: `set ${bytes.length} byte(s) @${at} := ${bytes.toString("hex").slice(0, 32)}`,
  apply: (b) => (bytes.copy(b, at, 0, Math.max(0, Math.min(bytes.length, b.length - at))), b),
});

export const truncate = (n: number): Op => ({ desc: `truncate to ${n} bytes`, apply: (b) => b.subarray(0, Math.min(n, b.length)) });

export const insertBytes = (at: number, bytes: Buffer): Op => ({
  desc: `insert ${bytes.length} byte(s) @${at}`,
  apply: (b) => Buffer.concat([b.subarray(0, at), bytes, b.subarray(at)]),
});

export const deleteBytes = (at: number, n: number): Op => ({
  desc: `delete ${n} byte(s) @${at}`,
  apply: (b) => Buffer.concat([b.subarray(0, at), b.subarray(at + n)]),
});

/** A random byte-level mutation at a position drawn by `pos`. */
export function byteOp(rng: FuzzRng, pos: () => number): Op {
  return rng.weighted<() => Op>([
    [4, () => bitFlip(pos(), rng.int(8))],
    [2, () => setBytes(pos(), Buffer.from([0x00]))],
    [2, () => setBytes(pos(), Buffer.from([0xff]))],
    [2, () => setBytes(pos(), rng.bytes(1))],
    [1, () => setBytes(pos(), rng.bytes(rng.range(2, 16)))],
    [1, () => setBytes(pos(), Buffer.alloc(rng.range(2, 16), rng.pick([0x00, 0xff])))],
    [1, () => insertBytes(pos(), rng.bytes(rng.range(1, 8)))],
    [1, () => deleteBytes(pos(), rng.range(1, 8))],
  ])();
}

/** Overwrites one 2- or 4-byte float in [from, to) with NaN / Inf / a huge value (weights data). */
export function nanOp(rng: FuzzRng, from: number, to: number, width: 2 | 4): Op {
  const at = from + rng.int(Math.max(1, Math.floor((to - from) / width))) * width;
  const v = width === 4 ? rng.pick([0x7fc00000, 0x7f800000, 0xff800000, 0x7f7fffff]) : rng.pick([0x7e00, 0x7c00, 0xfc00, 0x7bff]);
  const bytes = Buffer.alloc(width);
  if (width === 4) bytes.writeUInt32LE(v);
  else bytes.writeUInt16LE(v);
  return { ...setBytes(at, bytes), desc: `weights: ${width === 4 ? "f32" : "f16"} @${at} := ${hex(BigInt(v))}` };
}

// -------------------------------------------------------------------------------------- GGUF

export interface GgufMap {
  /** Integer fields by kind: header counts, key/string lengths, value types, array counts, tensor dims... */
  fields: Map<string, Field[]>;
  /** End of the tensor infos; tensor data starts at the next alignment boundary. */
  infosEnd: number;
  dataStart: number;
  /** Tensor data offset fields (u64), for swaps. */
  offsets: Field[];
  /** [start, end) of each F32 / F16 tensor's data, with its element width. */
  data: { from: number; to: number; width: 2 | 4 }[];
}

const SCALAR_BYTES: Record<number, 1 | 2 | 4 | 8> = { 0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8 };

/** Where every integer field of a valid GGUF lies (helpers/corrupt.ts's walker plus array elements). */
export function mapGguf(buf: Buffer): GgufMap {
  const L = ggufLayout(buf);
  const fields = new Map<string, Field[]>();
  const add = (kind: string, f: Field) => {
    if (!fields.has(kind)) fields.set(kind, []);
    fields.get(kind)!.push(f);
  };
  add("header", { at: 4, size: 4, name: "version" });
  add("header", { at: 8, size: 8, name: "tensor_count" });
  add("header", { at: 16, size: 8, name: "metadata_kv_count" });
  for (const kv of L.kvs) {
    add("key length", { at: kv.start, size: 8, name: `len(${kv.key})` });
    add("value type", { at: kv.typeAt, size: 4, name: `type(${kv.key})` });
    if (kv.type === 8) add("string length", { at: kv.valueAt, size: 8, name: `strlen(${kv.key})` });
    else if (kv.type === 9) {
      add("array header", { at: kv.valueAt, size: 4, name: `elem_type(${kv.key})` });
      add("array header", { at: kv.valueAt + 4, size: 8, name: `count(${kv.key})` });
      const et = buf.readUInt32LE(kv.valueAt);
      const n = Number(buf.readBigUInt64LE(kv.valueAt + 4));
      let pos = kv.valueAt + 12;
      for (let i = 0; i < n; i++) {
        if (et === 8) {
          add("array element", { at: pos, size: 8, name: `strlen(${kv.key}[${i}])` });
          pos += 8 + Number(buf.readBigUInt64LE(pos));
        } else {
          const sz = SCALAR_BYTES[et]!;
          add("array element", { at: pos, size: sz, name: `${kv.key}[${i}]`, float: et === 6 || et === 12 });
          pos += sz;
        }
      }
    } else add("scalar value", { at: kv.valueAt, size: SCALAR_BYTES[kv.type]!, name: kv.key, float: kv.type === 6 || kv.type === 12 });
  }
  const offsets: Field[] = [];
  const data: GgufMap["data"] = [];
  for (const t of L.tensors) {
    add("tensor name length", { at: t.start, size: 8, name: `len(${t.name})` });
    add("tensor n_dims", { at: t.dimsAt - 4, size: 4, name: `n_dims(${t.name})` });
    t.dims.forEach((_, i) => add("tensor dim", { at: t.dimsAt + 8 * i, size: 8, name: `ne[${i}](${t.name})` }));
    add("tensor type", { at: t.typeAt, size: 4, name: `ggml_type(${t.name})` });
    const off: Field = { at: t.offsetAt, size: 8, name: `offset(${t.name})` };
    add("tensor offset", off);
    offsets.push(off);
    const width = t.type === 0 ? 4 : t.type === 1 ? 2 : 0;
    const n = t.dims.reduce((a, d) => a * d, 1);
    if (width) data.push({ from: L.dataStart + t.offset, to: L.dataStart + t.offset + n * width, width });
  }
  return { fields, infosEnd: L.infosEnd, dataStart: L.dataStart, offsets, data };
}

/** One GGUF mutation: mostly on the header, metadata and tensor infos, where the parsing happens. */
export function ggufOp(rng: FuzzRng, base: Buffer, m: GgufMap): Op {
  const kinds = [...m.fields.keys()];
  const field = () => rng.pick(m.fields.get(rng.pick(kinds))!);
  // Positions: half uniform over the parsed region, half next to a structural field.
  const pos = () => (rng.chance(0.5) ? rng.int(m.dataStart) : Math.max(0, Math.min(m.dataStart - 1, field().at + rng.range(-12, 20))));
  return rng.weighted<() => Op>([
    [40, () => fieldOp(rng, field(), base)],
    [25, () => byteOp(rng, pos)],
    [8, () => truncate(rng.chance(0.7) ? rng.int(m.dataStart + 64) : rng.range(m.dataStart, base.length - 1))],
    [3, () => {
      // Two tensors' data offsets swapped: both in bounds, sizes differ.
      const a = rng.pick(m.offsets);
      const b = rng.pick(m.offsets);
      const va = readField(base, a);
      const vb = readField(base, b);
      return { desc: `swap ${a.name} and ${b.name}`, apply: (buf) => (writeField(buf, a.at, 8, vb), writeField(buf, b.at, 8, va), buf) };
    }],
    [2, () => setBytes(rng.range(0, 3), Buffer.from([rng.int(256)]))],
    [4, () => {
      // A tensor retyped as one of the 4-6 bit block types (decoded at load) or an unsupported one: the
      // byte sizes then disagree with the data, and rows may not split into the type's blocks.
      const f = rng.pick(m.fields.get("tensor type")!);
      const v = rng.pick([2, 3, 6, 7, 10, 11, 12, 13, 14, 16, 20, 23, 39]);
      return { desc: `${f.name}@${f.at} := ${v}`, apply: (b) => (writeField(b, f.at, 4, BigInt(v)), b) };
    }],
    [5, () => {
      const t = rng.pick(m.data);
      return nanOp(rng, t.from, t.to, t.width);
    }],
  ])();
}

/** 1 mutation most of the time, sometimes 2-4 stacked. */
export function opCount(rng: FuzzRng): number {
  return rng.weighted([
    [70, 1],
    [20, 2],
    [10, rng.range(3, 4)],
  ]);
}

// ------------------------------------------------------------------------------- llama2.c .bin

const LLAMA2C_FIELDS = ["dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"];

export function llama2cOp(rng: FuzzRng, base: Buffer): Op {
  const h = Array.from({ length: 7 }, (_, i) => base.readInt32LE(4 * i));
  const dataEnd = base.length;
  return rng.weighted<() => Op>([
    [40, () => {
      const i = rng.int(7);
      const cur = h[i]!;
      const v = rng.pick([0, -1, 1, 2, 3, -2147483648, 2147483647, -cur, cur + 1, cur - 1, cur * 2, cur >> 1, 8, 64, 512, 32000, 1 << 20, rng.u32() | 0]);
      const b = Buffer.alloc(4);
      b.writeInt32LE(v | 0);
      return { ...setBytes(4 * i, b), desc: `header ${LLAMA2C_FIELDS[i]} := ${v | 0}` };
    }],
    [8, () => {
      const i = rng.int(7);
      const j = rng.int(7);
      return {
        desc: `swap header ${LLAMA2C_FIELDS[i]} and ${LLAMA2C_FIELDS[j]}`,
        apply: (b) => {
          if (b.length < 28) return b;
          const a = b.readInt32LE(4 * i);
          b.writeInt32LE(b.readInt32LE(4 * j), 4 * i);
          b.writeInt32LE(a, 4 * j);
          return b;
        },
      };
    }],
    [15, () => byteOp(rng, () => rng.int(28))],
    [15, () => truncate(rng.weighted([
      [2, rng.int(32)],
      [2, dataEnd - rng.range(1, 4096)],
      [1, rng.int(dataEnd)],
    ]))],
    [5, () => insertBytes(dataEnd, rng.bytes(rng.range(1, 64)))],
    [10, () => nanOp(rng, 28, dataEnd, 4)],
  ])();
}

// ------------------------------------------------------------------- safetensors and HF directories

/** Text-level edits of JSON: numbers replaced by literals other JSON writers emit, and malformed text. */
const NUMBER_LITERALS = ["NaN", "Infinity", "-Infinity", "1e400", "-0", "1e-400", "18446744073709551616", "9007199254740993", "1.0000000000000002", "0x10", "01", "+1", ".5", "1.", "-", "1e", "--1", "1e+", "4294967296", "-2147483649"];
const STRING_JUNK = ["\\ud800", "\\udc00", "\\ud800\\u0041", "\\ud800\\udbff", "\\u0000", "\\x41", "\\u12", "\\", "\u0001", "\u00ff", "\uFFFF", '\\"'];

export function jsonTextOp(rng: FuzzRng, text: string): string {
  return rng.weighted<() => string>([
    [4, () => {
      const nums = [...text.matchAll(/-?\d+(\.\d+)?([eE][-+]?\d+)?/g)];
      if (nums.length === 0) return text;
      const m = rng.pick(nums);
      return text.slice(0, m.index) + rng.pick(NUMBER_LITERALS) + text.slice(m.index! + m[0].length);
    }],
    [2, () => {
      const quotes = [...text.matchAll(/"/g)];
      if (quotes.length === 0) return text;
      const at = rng.pick(quotes).index! + 1;
      return text.slice(0, at) + rng.pick(STRING_JUNK) + text.slice(at);
    }],
    [2, () => text.slice(0, rng.int(text.length))],
    [1, () => text + rng.pick([" ", "\0", "}", ",", "x", "\n\n", "{}"])],
    [1, () => {
      const at = rng.int(text.length);
      return text.slice(0, at) + rng.pick(["{", "}", "[", "]", ",", ":", '"', "\\", "\0", " "]) + text.slice(at);
    }],
    [1, () => {
      const at = rng.int(text.length);
      return text.slice(0, at) + text.slice(at + rng.range(1, 8));
    }],
    [1, () => {
      // Deep nesting as a value.
      const d = rng.pick([63, 64, 65, 200, 100000]);
      const colon = [...text.matchAll(/:/g)];
      if (colon.length === 0) return text;
      const at = colon[rng.int(colon.length)]!.index! + 1;
      return text.slice(0, at) + "[".repeat(d) + "]".repeat(d) + "," + '"zz":' + text.slice(at);
    }],
  ])();
}

export interface SafetensorsParts {
  header: Record<string, any>;
  data: Buffer;
}

/** Serializes like helpers/corrupt.ts's encodeSafetensors; `pad` false leaves the data unaligned. */
export function encodeHeaderText(json: string, data: Buffer, opts: { pad?: boolean; length?: bigint } = {}): Buffer {
  if (opts.pad !== false) while ((8 + Buffer.byteLength(json)) % 8) json += " ";
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(opts.length ?? BigInt(Buffer.byteLength(json)));
  return Buffer.concat([len, Buffer.from(json), data]);
}

const DTYPES = ["F16", "F32", "BF16", "F64", "I8", "U8", "I64", "BOOL", "F8_E4M3", "", "f16", 16, null, ["F16"]];

/** Names a renamed tensor may take in a model's safetensors. */
const MODEL_RENAMES = ["model.layers.99.self_attn.q_proj.weight", "model.layers.-1.mlp.up_proj.weight", "model.layers.00000001.mlp.up_proj.weight", "model.layers.999999.mlp.up_proj.weight", "model.norm.weight", "lm_head.weight", "model.layers.1.self_attn.q_proj.weight", "model.layers..self_attn.q_proj.weight", "model.layers.1", ""];

/** Edits one safetensors header (parsed) in place; returns the description. */
function editHeader(rng: FuzzRng, h: Record<string, any>, dataSize: number, renames: readonly string[]): string {
  const names = Object.keys(h).filter((k) => k !== "__metadata__" && typeof h[k] === "object" && h[k] !== null && !Array.isArray(h[k]));
  if (names.length === 0) return "(no tensor entry left to edit)";
  const name = rng.pick(names);
  const e = h[name];
  const [r, c] = Array.isArray(e?.shape) ? [e.shape[0] ?? 1, e.shape[1] ?? 1] : [1, 1];
  const [b, en] = Array.isArray(e?.data_offsets) ? e.data_offsets : [0, 0];
  return rng.weighted<() => string>([
    [4, () => {
      e.dtype = rng.pick(DTYPES);
      return `${name}.dtype := ${JSON.stringify(e.dtype)}`;
    }],
    [5, () => {
      e.shape = rng.pick([[], [0], [0, c], [-1, c], [c], [r, c, 1], [1, r, c], [2 ** 31, 2], [1e9, 1e9], [1e9, 1e9, 1e9, 1e9], [2 ** 53], [r + 0.5, c], [String(r), c], null, r, [c, r], [r * 2, c / 2], [r + 1, c], [r, c - 1], [r * c]]);
      return `${name}.shape := ${JSON.stringify(e.shape)}`;
    }],
    [6, () => {
      const other = h[rng.pick(names)]?.data_offsets;
      e.data_offsets = rng.pick([[en, b], [0, 0], [b, b], [b, en + 1], [b + 1, en + 1], [b - 1, en - 1], [-1, en], [b, 2 ** 64], [b, 1e300], [0, dataSize], [dataSize, dataSize], [dataSize + 1, dataSize + 2], [b], [b, en, 0], [], null, "0", [String(b), en], [b + 0.5, en + 0.5], other, [b + 2 ** 32, en + 2 ** 32], [b - 2 ** 53, en]]);
      return `${name}.data_offsets := ${JSON.stringify(e.data_offsets)}`;
    }],
    [2, () => {
      const k = rng.pick(["dtype", "shape", "data_offsets"]);
      delete e[k];
      return `delete ${name}.${k}`;
    }],
    [2, () => {
      delete h[name];
      return `delete tensor ${name}`;
    }],
    [2, () => {
      const to = rng.pick(renames);
      h[to] = e;
      delete h[name];
      return `rename ${name} -> ${to}`;
    }],
    [1, () => {
      h[name] = rng.pick([5, "x", [], null, {}, true]);
      return `${name} := ${JSON.stringify(h[name])}`;
    }],
    [1, () => {
      h.__metadata__ = rng.pick([{ format: 5 }, [], "x", 7, { a: { b: { c: [1, 2, 3] } } }, null]);
      return `__metadata__ := ${JSON.stringify(h.__metadata__)}`;
    }],
    [1, () => {
      for (let i = 0; i < 20000; i++) h[`model.layers.${i}.extra.weight`] = { dtype: "F16", shape: [1], data_offsets: [0, 2] };
      return "20000 extra tensor entries";
    }],
  ])();
}

/**
 * A mutated safetensors file (a model's, or a LoRA adapter's with its own `renames`): the header edited
 * (structurally or as text) or the bytes flipped.
 */
export function safetensorsOp(rng: FuzzRng, base: Buffer, renames: readonly string[] = MODEL_RENAMES): Op {
  const hlen = Number(base.readBigUInt64LE(0));
  const headerText = base.toString("utf8", 8, 8 + hlen);
  const data = base.subarray(8 + hlen);
  const stale = rng.chance(0.15); // keep the old length prefix after a rewrite
  const reencode = (json: string, desc: string): Op => {
    const pad = rng.chance(0.85);
    return {
      desc: `${desc}${stale ? " (stale header length)" : ""}${pad ? "" : " (unpadded)"}`,
      apply: () => encodeHeaderText(json, data, { pad, ...(stale && { length: BigInt(hlen) }) }),
    };
  };
  return rng.weighted<() => Op>([
    [15, () => fieldOp(rng, { at: 0, size: 8, name: "header_length" }, base)],
    [15, () => byteOp(rng, () => (rng.chance(0.9) ? rng.int(8 + hlen) : rng.int(base.length)))],
    [35, () => {
      const h = JSON.parse(headerText);
      let desc = editHeader(rng, h, data.length, renames);
      if (rng.chance(0.2)) desc += "; " + editHeader(rng, h, data.length, renames);
      return reencode(JSON.stringify(h), desc);
    }],
    [12, () => reencode(jsonTextOp(rng, headerText.trimEnd()), "header text edited")],
    [4, () => reencode(rng.pick(["[]", '"x"', "1", "null", "{}", "", " ", "{\"a\":"]), "header replaced")],
    [10, () => truncate(rng.chance(0.6) ? rng.int(8 + hlen + 16) : rng.int(base.length))],
    [5, () => {
      const h = JSON.parse(headerText);
      const entries = Object.values(h).filter((e: any) => e?.dtype === "F16" || e?.dtype === "F32") as any[];
      const e = rng.pick(entries);
      const w = e.dtype === "F32" ? 4 : 2;
      return nanOp(rng, 8 + hlen + e.data_offsets[0], 8 + hlen + e.data_offsets[1], w);
    }],
  ])();
}

const CONFIG_FIELDS = [
  "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size", "vocab_size",
  "max_position_embeddings", "rms_norm_eps", "rope_theta", "rope_parameters", "rope_scaling", "tie_word_embeddings", "model_type",
  "torch_dtype", "bos_token_id", "eos_token_id",
];
const TEXT_LITERALS = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"];

/** A mutated config.json (as text); `fields` are the keys it edits by value (another file's: adapter_config.json). */
export function configOp(rng: FuzzRng, text: string, fields: readonly string[] = CONFIG_FIELDS): { desc: string; text: string } {
  const cfg = JSON.parse(text) as Record<string, any>;
  return rng.weighted<() => { desc: string; text: string }>([
    [10, () => {
      const k = rng.pick(fields);
      const cur = typeof cfg[k] === "number" ? cfg[k] : 64;
      if (rng.chance(0.12)) {
        delete cfg[k];
        return { desc: `config: delete ${k}`, text: JSON.stringify(cfg) };
      }
      if (rng.chance(0.15)) {
        // Literals JSON.stringify cannot write (Python's json writes NaN / Infinity).
        const lit = rng.pick(TEXT_LITERALS);
        cfg[k] = "@@LIT@@";
        return { desc: `config: ${k} := ${lit}`, text: JSON.stringify(cfg).replace('"@@LIT@@"', lit) };
      }
      const v = rng.pick<unknown>([
        0, -1, 1, 2, 3, 7, 2 ** 31 - 1, 2 ** 31, 2 ** 32, 1e9, 1e9 + 1, 1e10, 1e308, -1e308, 0.5, 64.5, 1e-45, 5e-324, "64", "", null, true, false, [], {}, [64],
        { rope_theta: rng.pick([0, -1, 1e30, "x", null, 10000]), rope_type: rng.pick(["default", "linear", "yarn", 5, null]) },
        { type: "linear", factor: 2 }, { rope_type: "default" }, "llama", "mistral", cur * 2, cur / 2, cur + 1, cur - 1,
      ]);
      cfg[k] = v;
      return { desc: `config: ${k} := ${JSON.stringify(v)}`, text: JSON.stringify(cfg) };
    }],
    [3, () => ({ desc: "config: text edited", text: jsonTextOp(rng, text) })],
    [1, () => {
      const t = rng.pick(["", "[]", "null", "5", '"x"', "\uFEFF" + text, "{}", text.replace("{", "{\"hidden_size\": 128,"), "x".repeat(2 << 20)]);
      return { desc: `config: replaced by ${JSON.stringify(t.slice(0, 40))}${t.length > 40 ? `... (${t.length} chars)` : ""}`, text: t };
    }],
  ])();
}

/** A mutated model.safetensors.index.json (as text). */
export function indexOp(rng: FuzzRng, text: string): { desc: string; text: string } {
  const idx = JSON.parse(text) as { weight_map: Record<string, unknown> };
  const names = Object.keys(idx.weight_map);
  return rng.weighted<() => { desc: string; text: string }>([
    [5, () => {
      const k = rng.pick(names);
      const v = rng.pick<unknown>(["../model.safetensors", "/etc/passwd", "", ".", "..", "sub/model.safetensors", "missing.safetensors", "config.json", "tokenizer.model", 5, null, ["x"], "model-00001-of-00002.safetensors\u0000"]);
      idx.weight_map[k] = v;
      return { desc: `index: weight_map[${k}] := ${JSON.stringify(v)}`, text: JSON.stringify(idx) };
    }],
    [2, () => {
      const v = rng.pick<unknown>([[], "x", {}, null, 5]);
      (idx as Record<string, unknown>).weight_map = v;
      return { desc: `index: weight_map := ${JSON.stringify(v)}`, text: JSON.stringify(idx) };
    }],
    [2, () => ({ desc: "index: text edited", text: jsonTextOp(rng, text) })],
  ])();
}

// ------------------------------------------------------------------------------------- the runner

export interface FuzzCase {
  /** "corpus#index". */
  id: string;
  desc: string;
  /** Writes the case under `dir`; returns the path to load (with `base`: the LoRA adapter's). */
  make(dir: string): string;
  /** The base model the case's path is a LoRA adapter of: loaded with `lora: path` (readModelInfo skipped). */
  base?: string;
  /** Harness self-test: what the child should do instead of loading. */
  selftest?: "segv" | "abort" | "hang" | "untyped" | "exit" | "sleep";
}

export interface StepOutcome {
  ok: boolean;
  code?: string | null;
  message?: string;
  name?: string;
  typed?: boolean;
  tokens?: number;
}

interface CaseReport {
  id: string;
  info?: StepOutcome;
  load?: StepOutcome;
  generate?: StepOutcome;
  dispose?: StepOutcome;
  ms?: number;
  cpuMs?: number;
  rssMb?: number | null;
}

export interface FuzzFailure {
  id: string;
  desc: string;
  problems: string[];
}

export interface FuzzResult {
  cases: number;
  /** Each case's load outcome: "ok" or the error code ("crash" when the child died). */
  loads: Map<string, string>;
  failures: FuzzFailure[];
  /** Outcome counts: "load ok", "load ERR_MODEL_CORRUPT", "generate ok", ... */
  outcomes: Record<string, number>;
  /** Slowest case, CPU time. */
  maxMs: number;
  maxRssMb: number;
  seconds: number;
}

export interface RunOptions {
  /** Where batches are written (removed after each batch). */
  dir: string;
  batchSize?: number;
  parallel?: number;
  /** A case that reports nothing for this long is a hang: the child is killed. */
  hangMs?: number;
  /** A case that takes more CPU time than this fails (load + generate, all threads of the child). */
  slowMs?: number;
  /** RLIMIT_DATA of the child (KiB): a runaway allocation fails instead of exhausting the machine. */
  dataLimitKb?: number;
  /** Peak resident memory allowed per case (MiB). */
  rssLimitMb?: number;
}

const CHILD = path.join(path.dirname(fileURLToPath(import.meta.url)), "fuzz-child.mjs");
const ALLOWED_LOAD_CODES = /^ERR_(?!INTERNAL$|OUT_OF_MEMORY$)[A-Z0-9_]+$/;

/** What is wrong with one case's report (empty: it passed). */
function judge(c: FuzzCase, modelPath: string, r: CaseReport, o: Required<RunOptions>): string[] {
  const problems: string[] = [];
  const checkError = (step: string, s: StepOutcome | undefined, loading: boolean) => {
    if (!s) return problems.push(`${step}: no report`);
    if (s.ok) return;
    const what = `${s.name} ${s.code ?? "(no code)"}: ${s.message}`;
    if (!s.typed) problems.push(`${step}: not a Llama2Error (${what})`);
    if (typeof s.code !== "string" || !ALLOWED_LOAD_CODES.test(s.code)) problems.push(`${step}: error code ${s.code} is not an input error (${what})`);
    // Generating from a model whose weights are NaN / Inf (mutated weight bytes, swapped tensor data)
    // ends with no possible token: ERR_MODEL_CORRUPT naming the model, like a load error.
    const namesFile = loading || s.code === "ERR_MODEL_CORRUPT";
    if (namesFile && !s.message?.includes(modelPath)) problems.push(`${step}: the message does not name ${modelPath} (${what})`);
  };
  checkError("readModelInfo", r.info, true);
  checkError("load", r.load, true);
  if (r.load?.ok) {
    checkError("generate", r.generate, false);
    if (r.generate?.ok && !(r.generate.tokens! >= 1)) problems.push(`generate: produced ${r.generate.tokens} tokens`);
  }
  if (r.dispose) problems.push(`dispose threw ${r.dispose.code}: ${r.dispose.message}`);
  if ((r.cpuMs ?? 0) > o.slowMs) problems.push(`took ${r.cpuMs} ms of CPU time (limit ${o.slowMs}; ${r.ms} ms wall)`);
  if ((r.rssMb ?? 0) > o.rssLimitMb) problems.push(`peak RSS ${r.rssMb} MiB (limit ${o.rssLimitMb})`);
  return problems;
}

interface ChildRun {
  reports: CaseReport[];
  /** The case that was running when the child died or hung. */
  inFlight?: string;
  died?: string;
}

/** Runs `cases` (already written) in one child until it finishes, dies or hangs. */
function runChild(listFile: string, o: Required<RunOptions>): Promise<ChildRun> {
  return new Promise((resolve) => {
    // RLIMIT_DATA (not RLIMIT_AS: V8's WebAssembly reservations need address space, not memory).
    // Under a sanitizer (LLAMA2_FUZZ_PRELOAD, see runFuzzCases) its shadow memory needs no limit.
    const env: NodeJS.ProcessEnv = { ...process.env };
    const preload = process.env.LLAMA2_FUZZ_PRELOAD;
    if (preload) env.LD_PRELOAD = preload;
    const limit = preload ? "" : `ulimit -d ${o.dataLimitKb} 2>/dev/null; `;
    const script = `${limit}exec "$0" "$@"`;
    const child = spawn("/bin/sh", ["-c", script, process.execPath, "--max-old-space-size=512", "--expose-gc", CHILD, listFile], {
      stdio: ["ignore", "pipe", "pipe"],
      env,
    });
    const run: ChildRun = { reports: [] };
    let buf = "";
    let stderr = "";
    let done = false;
    let timer: NodeJS.Timeout;
    const arm = () => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        run.died = `hung: no report for ${o.hangMs} ms (killed)`;
        child.kill("SIGKILL");
      }, o.hangMs);
    };
    arm();
    child.stdout.on("data", (d: Buffer) => {
      buf += d.toString();
      let nl: number;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (!line.startsWith("@@fuzz ")) continue;
        arm();
        const msg = JSON.parse(line.slice(7));
        if (msg.start) run.inFlight = msg.start;
        else if (msg.done) done = true;
        else {
          run.reports.push(msg);
          run.inFlight = undefined;
        }
      }
    });
    child.stderr.on("data", (d: Buffer) => {
      stderr = (stderr + d.toString()).slice(-2000);
    });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      if (!done && !run.died) run.died = signal ? `killed by ${signal}` : `exited with code ${code} before finishing`;
      if (run.died && stderr.trim()) run.died += `; stderr: ${stderr.trim().split("\n").slice(-6).join(" | ")}`;
      resolve(run);
    });
  });
}

/**
 * Runs every case in child processes, a batch per child; a dead or hung child fails its case and the
 * rest go on. For a sanitizer run, build the addon with -fsanitize=address,undefined and set
 * LLAMA2_ADDON=<that .node> and LLAMA2_FUZZ_PRELOAD="<libasan.so> <libubsan.so>" (preloaded into the
 * children only; time limits are then tripled).
 */
export async function runFuzzCases(cases: FuzzCase[], opts: RunOptions): Promise<FuzzResult> {
  const slow = process.env.LLAMA2_FUZZ_PRELOAD ? 3 : 1;
  const o: Required<RunOptions> = {
    batchSize: 50,
    parallel: Math.max(1, Math.min(2, os.availableParallelism())),
    hangMs: 20_000 * slow,
    slowMs: 5_000 * slow,
    dataLimitKb: 1 << 20,
    rssLimitMb: 768,
    ...opts,
  };
  const t0 = performance.now();
  const failures: FuzzFailure[] = [];
  const loads = new Map<string, string>();
  const outcomes: Record<string, number> = {};
  let maxMs = 0;
  let maxRssMb = 0;
  const count = (k: string) => (outcomes[k] = (outcomes[k] ?? 0) + 1);
  const batches: FuzzCase[][] = [];
  for (let i = 0; i < cases.length; i += o.batchSize) batches.push(cases.slice(i, i + o.batchSize));
  let next = 0;
  const worker = async (w: number) => {
    while (next < batches.length) {
      const bi = next++;
      const batch = batches[bi]!;
      const dir = path.join(o.dir, `batch-${bi}`);
      mkdirSync(dir, { recursive: true });
      try {
        const paths = new Map<string, string>();
        const byId = new Map(batch.map((c) => [c.id, c]));
        for (const c of batch) {
          const caseDir = path.join(dir, c.id.replace(/[^A-Za-z0-9_.-]/g, "_"));
          mkdirSync(caseDir);
          paths.set(c.id, c.selftest ? "" : c.make(caseDir));
        }
        let todo = batch;
        while (todo.length > 0) {
          const listFile = path.join(dir, `cases-${w}-${todo.length}.json`);
          writeFileSync(listFile, JSON.stringify(todo.map((c) => ({ id: c.id, path: paths.get(c.id), base: c.base, selftest: c.selftest }))));
          const run = await runChild(listFile, o);
          for (const r of run.reports) {
            const c = byId.get(r.id)!;
            const problems = judge(c, paths.get(c.id)!, r, o);
            if (problems.length) failures.push({ id: c.id, desc: c.desc, problems });
            loads.set(c.id, r.load?.ok ? "ok" : String(r.load?.code));
            for (const step of ["load", "generate"] as const) {
              const s = r[step];
              if (s) count(`${step} ${s.ok ? "ok" : s.code}`);
            }
            maxMs = Math.max(maxMs, r.cpuMs ?? 0);
            maxRssMb = Math.max(maxRssMb, r.rssMb ?? 0);
          }
          const reported = new Set(run.reports.map((r) => r.id));
          const rest = todo.filter((c) => !reported.has(c.id));
          if (!run.died) break;
          // The case in flight is the culprit; with none in flight (died at startup) the whole rest fails.
          const culprit = run.inFlight ? rest.filter((c) => c.id === run.inFlight) : rest;
          for (const c of culprit) {
            failures.push({ id: c.id, desc: c.desc, problems: [`child process ${run.died}`] });
            loads.set(c.id, "crash");
            count("crash");
          }
          todo = run.inFlight ? rest.filter((c) => c.id !== run.inFlight) : [];
        }
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    }
  };
  await Promise.all(Array.from({ length: o.parallel }, (_, w) => worker(w)));
  failures.sort((a, b) => a.id.localeCompare(b.id, "en", { numeric: true }));
  return { cases: cases.length, loads, failures, outcomes, maxMs, maxRssMb, seconds: (performance.now() - t0) / 1000 };
}

/** A readable failure list for the assertion message. */
export function formatFailures(seed: number, fs: FuzzFailure[], max = 25): string {
  const lines = fs.slice(0, max).map((f) => `  ${f.id} [${f.desc}]\n    ${f.problems.join("\n    ")}`);
  if (fs.length > max) lines.push(`  ... and ${fs.length - max} more`);
  return `${fs.length} failing case(s) with LLAMA2_FUZZ_SEED=${seed}:\n${lines.join("\n")}`;
}

// ----------------------------------------------------------------------------- case builders

/** A single-file case: `base` with `ops` applied, written as `name`. */
export function fileCase(id: string, base: Buffer | (() => Buffer), name: string, ops: Op[]): FuzzCase {
  return {
    id,
    desc: ops.map((o) => o.desc).join("; "),
    make: (dir) => {
      const p = path.join(dir, name);
      writeFileSync(p, applyOps(typeof base === "function" ? base() : base, ops));
      return p;
    },
  };
}

/** A Hugging Face directory case: files replaced by edited bytes/text, the others symlinked to `src`. */
export function dirCase(id: string, desc: string, src: string, files: string[], edits: Record<string, () => Buffer | string>): FuzzCase {
  return {
    id,
    desc,
    make: (dir) => {
      const d = path.join(dir, "model");
      mkdirSync(d);
      for (const f of files) {
        if (edits[f]) writeFileSync(path.join(d, f), edits[f]!());
        else symlinkSync(path.join(src, f), path.join(d, f));
      }
      return d;
    },
  };
}

/**
 * A valid GGUF with one more metadata entry, an array of `count` elements of ggml metadata type
 * `elemType` whose `bodyBytes` of zeros are a hole (a sparse file: nothing is written). The key is
 * padded so that the tensor data stays aligned.
 */
export function writeGgufWithArray(dest: string, base: Buffer, key: string, elemType: number, count: bigint, bodyBytes: number): void {
  const L = ggufLayout(base);
  let k = key;
  while ((8 + Buffer.byteLength(k) + 16 + bodyBytes) % L.alignment !== 0) k += "_";
  const entry = Buffer.alloc(8 + Buffer.byteLength(k) + 16);
  entry.writeBigUInt64LE(BigInt(Buffer.byteLength(k)), 0);
  entry.write(k, 8, "utf8");
  entry.writeUInt32LE(9, entry.length - 16); // array
  entry.writeUInt32LE(elemType, entry.length - 12);
  entry.writeBigUInt64LE(count, entry.length - 8);
  const head = Buffer.concat([base.subarray(0, L.kvEnd), entry]);
  head.writeBigUInt64LE(BigInt(L.kvs.length + 1), 16);
  const tail = base.subarray(L.kvEnd);
  const fd = openSync(dest, "w");
  try {
    writeSync(fd, head, 0, head.length, 0);
    writeSync(fd, tail, 0, tail.length, head.length + bodyBytes);
  } finally {
    closeSync(fd);
  }
}

/** Extends a file with a hole to `size` bytes. */
export function growSparse(file: string, size: number): void {
  truncateSync(file, size);
}
