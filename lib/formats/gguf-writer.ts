// Streaming GGUF v3 writer: the header (metadata + tensor infos) is built from the known shapes, then
// each tensor's data is streamed from its producer at its aligned offset. Layout as in ggml's
// gguf.cpp: magic, version, tensor count, kv count, kvs, tensor infos, padding to the alignment,
// tensor data (each tensor's offset relative to the data start, a multiple of the alignment).
import { InvalidArgumentError, showValue } from "../errors.js";
import {
  GGUF_DEFAULT_ALIGNMENT,
  GGUF_MAGIC,
  GGUF_VERSION,
  GGML_BLOCK,
  GgmlType,
  GgufValueType,
  ggmlTensorBytes,
  type GgmlTypeName,
  type GgufValueTypeName,
} from "./gguf-constants.js";
import { writeSections, zeros, type FileSection, type TensorProducer } from "./stream-write.js";

type Scalar = Exclude<GgufValueTypeName, "ARRAY">;
export type GgufValue =
  | { type: Exclude<Scalar, "STRING" | "BOOL">; value: number | bigint }
  | { type: "STRING"; value: string }
  | { type: "BOOL"; value: boolean }
  | { type: "ARRAY"; itemType: Scalar; value: ArrayLike<number | bigint | string | boolean> };

/** Typed metadata values (a JS number alone does not say u32 or f32). */
export const gguf = {
  u8: (value: number): GgufValue => ({ type: "UINT8", value }),
  i32: (value: number): GgufValue => ({ type: "INT32", value }),
  u32: (value: number): GgufValue => ({ type: "UINT32", value }),
  u64: (value: number | bigint): GgufValue => ({ type: "UINT64", value }),
  f32: (value: number): GgufValue => ({ type: "FLOAT32", value }),
  f64: (value: number): GgufValue => ({ type: "FLOAT64", value }),
  bool: (value: boolean): GgufValue => ({ type: "BOOL", value }),
  str: (value: string): GgufValue => ({ type: "STRING", value }),
  arr: (itemType: Scalar, value: ArrayLike<number | bigint | string | boolean>): GgufValue => ({ type: "ARRAY", itemType, value }),
};

export interface GgufTensor {
  name: string;
  type: GgmlTypeName;
  /** ggml order: dims[0] is the contiguous (row) dimension, i.e. the reverse of PyTorch's shape. */
  dims: number[];
  data: TensorProducer;
}

export interface GgufSpec {
  /** Written in this order. `general.alignment` (u32), when present, sets the alignment. */
  metadata: Array<[string, GgufValue]>;
  tensors: GgufTensor[];
}

export interface GgufPlan {
  header: Uint8Array;
  alignment: number;
  /** Offset of each tensor relative to the data section. */
  offsets: number[];
  sizes: number[];
  totalBytes: number;
}

const INT_RANGE: Partial<Record<Scalar, [number, number]>> = {
  UINT8: [0, 0xff],
  INT8: [-0x80, 0x7f],
  UINT16: [0, 0xffff],
  INT16: [-0x8000, 0x7fff],
  UINT32: [0, 0xffffffff],
  INT32: [-0x80000000, 0x7fffffff],
};

/** A growable little-endian byte sink for the header. */
class Bytes {
  private parts: Buffer[] = [];
  private cur = Buffer.alloc(1 << 16);
  private pos = 0;
  length = 0;
  private room(n: number): void {
    if (this.pos + n <= this.cur.length) return;
    this.parts.push(this.cur.subarray(0, this.pos));
    this.cur = Buffer.alloc(Math.max(1 << 16, n));
    this.pos = 0;
  }
  put(n: number, f: (b: Buffer, at: number) => void): void {
    this.room(n);
    f(this.cur, this.pos);
    this.pos += n;
    this.length += n;
  }
  raw(b: Uint8Array): void {
    this.room(b.length);
    this.cur.set(b, this.pos);
    this.pos += b.length;
    this.length += b.length;
  }
  u32(v: number): void {
    this.put(4, (b, at) => b.writeUInt32LE(v, at));
  }
  u64(v: number | bigint): void {
    this.put(8, (b, at) => b.writeBigUInt64LE(BigInt(v), at));
  }
  str(s: string): void {
    const b = Buffer.from(s, "utf8");
    this.u64(b.length);
    this.raw(b);
  }
  finish(): Buffer {
    return Buffer.concat([...this.parts, this.cur.subarray(0, this.pos)]);
  }
}

function writeScalar(out: Bytes, type: Scalar, v: unknown, field: string): void {
  const bad = (what: string): never => {
    throw new InvalidArgumentError(field, `${what} (got ${typeof v === "bigint" ? `${v}n` : showValue(v)})`);
  };
  if (type === "STRING") {
    if (typeof v !== "string") bad("expected a string");
    return out.str(v as string);
  }
  if (type === "BOOL") {
    if (typeof v !== "boolean") bad("expected a boolean");
    return out.put(1, (b, at) => b.writeUInt8(v ? 1 : 0, at));
  }
  if (type === "UINT64" || type === "INT64") {
    if (!(typeof v === "bigint" || (typeof v === "number" && Number.isSafeInteger(v)))) bad("expected an integer");
    const big = BigInt(v as number | bigint);
    if (type === "UINT64" ? big < 0n || big >= 1n << 64n : big < -(1n << 63n) || big >= 1n << 63n) bad(`out of ${type} range`);
    return out.put(8, (b, at) => (type === "UINT64" ? b.writeBigUInt64LE(big, at) : b.writeBigInt64LE(big, at)));
  }
  if (typeof v !== "number") bad("expected a number");
  const n = v as number;
  if (type === "FLOAT32") return out.put(4, (b, at) => b.writeFloatLE(n, at));
  if (type === "FLOAT64") return out.put(8, (b, at) => b.writeDoubleLE(n, at));
  const [lo, hi] = INT_RANGE[type]!;
  if (!Number.isInteger(n) || n < lo || n > hi) bad(`expected a ${type} integer in [${lo}, ${hi}]`);
  const size = { UINT8: 1, INT8: 1, UINT16: 2, INT16: 2, UINT32: 4, INT32: 4 }[type as "UINT8"];
  out.put(size, (b, at) => (lo < 0 ? b.writeIntLE(n, at, size) : b.writeUIntLE(n, at, size)));
}

function alignUp(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}

/** Validates the spec and lays the file out (header bytes, tensor offsets, total size). */
export function planGguf(spec: GgufSpec): GgufPlan {
  const out = new Bytes();
  out.raw(Buffer.from(GGUF_MAGIC, "ascii"));
  out.u32(GGUF_VERSION);
  out.u64(spec.tensors.length);
  out.u64(spec.metadata.length);
  let alignment = GGUF_DEFAULT_ALIGNMENT;
  const keys = new Set<string>();
  for (const [key, val] of spec.metadata) {
    const field = `metadata.${key}`;
    if (keys.has(key)) throw new InvalidArgumentError(field, "duplicate key");
    keys.add(key);
    if (key === "general.alignment") {
      if (val.type !== "UINT32" || typeof val.value !== "number" || val.value <= 0 || val.value % 8 !== 0)
        throw new InvalidArgumentError(field, "must be a UINT32 multiple of 8");
      alignment = val.value;
    }
    out.str(key);
    if (!(val.type in GgufValueType)) throw new InvalidArgumentError(field, `unknown value type '${String(val.type)}'`);
    out.u32(GgufValueType[val.type]);
    if (val.type === "ARRAY") {
      if (!(val.itemType in GgufValueType) || (val.itemType as string) === "ARRAY")
        throw new InvalidArgumentError(field, `unsupported array item type '${String(val.itemType)}'`);
      out.u32(GgufValueType[val.itemType]);
      out.u64(val.value.length);
      for (let i = 0; i < val.value.length; i++) writeScalar(out, val.itemType, val.value[i], `${field}[${i}]`);
    } else {
      writeScalar(out, val.type, val.value, field);
    }
  }
  const names = new Set<string>();
  const offsets: number[] = [];
  const sizes: number[] = [];
  let dataBytes = 0;
  for (const t of spec.tensors) {
    const field = `tensors.${t.name}`;
    if (!t.name || Buffer.byteLength(t.name) > 63) throw new InvalidArgumentError(field, "name must be 1 to 63 bytes (GGML_MAX_NAME)");
    if (names.has(t.name)) throw new InvalidArgumentError(field, "duplicate tensor name");
    names.add(t.name);
    if (!(t.type in GgmlType)) throw new InvalidArgumentError(`${field}.type`, `unsupported type '${t.type}'`);
    if (t.dims.length < 1 || t.dims.length > 4 || !t.dims.every((d) => Number.isSafeInteger(d) && d > 0))
      throw new InvalidArgumentError(`${field}.dims`, `expected 1 to 4 positive integers, got [${t.dims.join(", ")}]`);
    if (t.dims[0]! % GGML_BLOCK[t.type].elements !== 0)
      throw new InvalidArgumentError(`${field}.dims`, `${t.type} needs a row length divisible by ${GGML_BLOCK[t.type].elements}, got ${t.dims[0]}`);
    out.str(t.name);
    out.u32(t.dims.length);
    for (const d of t.dims) out.u64(d);
    out.u32(GgmlType[t.type]);
    dataBytes = alignUp(dataBytes, alignment);
    out.u64(dataBytes);
    offsets.push(dataBytes);
    const size = ggmlTensorBytes(t.type, t.dims);
    sizes.push(size);
    dataBytes += size;
  }
  const headerLen = alignUp(out.length, alignment);
  out.raw(zeros(headerLen - out.length));
  // Like ggml and gguf-py, the last tensor is padded too, so the file size is a multiple of the alignment.
  return { header: out.finish(), alignment, offsets, sizes, totalBytes: headerLen + alignUp(dataBytes, alignment) };
}

export interface WriteOptions {
  tmpPath?: string;
  /** Called after each write with the bytes written so far and the file's total size. */
  onProgress?: (bytesWritten: number, totalBytes: number) => void;
}

/** Writes a GGUF file, streaming the tensors. Returns the file size. */
export async function writeGguf(path: string, spec: GgufSpec, opts: WriteOptions = {}): Promise<number> {
  const plan = planGguf(spec);
  const sections: FileSection[] = [plan.header];
  let end = 0;
  spec.tensors.forEach((t, i) => {
    sections.push(zeros(plan.offsets[i]! - end));
    sections.push({ name: t.name, bytes: plan.sizes[i]!, data: t.data });
    end = plan.offsets[i]! + plan.sizes[i]!;
  });
  sections.push(zeros(plan.totalBytes - plan.header.length - end));
  let written = 0;
  return writeSections(path, sections, {
    tmpPath: opts.tmpPath,
    onBytes: (n) => opts.onProgress?.((written += n), plan.totalBytes),
  });
}
