// Temporarily corrupted copies of models for the bad-input tests: truncations at known structural
// points, byte surgery on GGUF headers and tensor infos (located by a small GGUF walker), and
// rewritten safetensors headers / config.json files. Everything goes into one temp directory per
// test file, removed by `cleanup()`.
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";

export class Scratch {
  readonly dir: string;
  private n = 0;
  constructor(prefix = "llama2-corrupt-") {
    this.dir = mkdtempSync(path.join(os.tmpdir(), prefix));
  }
  /** A fresh path inside the scratch directory (`name` keeps its extension, which the loaders look at). */
  path(name: string): string {
    return path.join(this.dir, `${this.n++}-${name}`);
  }
  /** Writes `bytes` to a new file named like `name`. */
  write(name: string, bytes: Uint8Array | string): string {
    const p = this.path(name);
    writeFileSync(p, bytes);
    return p;
  }
  /** The first `length` bytes of `src`, as a new file with the same name. */
  truncated(src: string, length: number): string {
    const buf = readFileSync(src);
    if (length > buf.length) throw new Error(`truncated: ${length} > ${buf.length}`);
    return this.write(path.basename(src), buf.subarray(0, length));
  }
  /** A copy of `src` with `edit` applied to its bytes (in place on a copy). */
  patched(src: string, edit: (buf: Buffer) => void, name = path.basename(src)): string {
    const buf = Buffer.from(readFileSync(src));
    edit(buf);
    return this.write(name, buf);
  }
  /**
   * A copy of a Hugging Face directory: files are symlinked unless replaced. `config` edits the parsed
   * config.json (or replaces its text when it returns a string); `files` replaces or adds files
   * (null removes one).
   */
  hfDir(
    src: string,
    opts: { config?: (c: Record<string, any>) => Record<string, any> | string | void; files?: Record<string, Uint8Array | string | null> } = {},
  ): string {
    const dir = this.path(path.basename(src));
    mkdirSync(dir);
    const files = opts.files ?? {};
    for (const f of readdirSync(src)) {
      if (f in files || (f === "config.json" && opts.config)) continue;
      symlinkSync(path.join(src, f), path.join(dir, f));
    }
    if (opts.config) {
      const cfg = JSON.parse(readFileSync(path.join(src, "config.json"), "utf8"));
      const out = opts.config(cfg);
      writeFileSync(path.join(dir, "config.json"), typeof out === "string" ? out : JSON.stringify(out ?? cfg, null, 2));
    }
    for (const [f, data] of Object.entries(files)) if (data !== null) writeFileSync(path.join(dir, f), data);
    return dir;
  }
  copy(src: string): string {
    const p = this.path(path.basename(src));
    copyFileSync(src, p);
    return p;
  }
  cleanup(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }
}

// ------------------------------------------------------------------------------------------ GGUF

export interface GgufKv {
  key: string;
  /** Byte offset of the key's length prefix. */
  start: number;
  /** Offset of the value type (u32). */
  typeAt: number;
  type: number;
  /** Offset of the value itself. */
  valueAt: number;
  end: number;
  /** Scalars and strings (arrays are skipped). */
  value?: number | string;
}

export interface GgufTensorInfo {
  name: string;
  start: number;
  nDims: number;
  /** Offset of the first dimension (u64 each, innermost first). */
  dimsAt: number;
  dims: number[];
  /** Offset of the ggml type (u32). */
  typeAt: number;
  type: number;
  /** Offset of the data offset (u64). */
  offsetAt: number;
  offset: number;
  end: number;
}

export interface GgufLayout {
  version: number;
  /** End of the fixed header (magic, version, tensor count, kv count). */
  headerEnd: number;
  kvs: GgufKv[];
  kvEnd: number;
  tensors: GgufTensorInfo[];
  infosEnd: number;
  alignment: number;
  dataStart: number;
  size: number;
}

const SCALAR_BYTES: Record<number, number> = { 0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8 };

/** Walks a (valid) GGUF file and returns where each part lies. */
export function ggufLayout(buf: Buffer): GgufLayout {
  if (buf.toString("latin1", 0, 4) !== "GGUF") throw new Error("not a GGUF file");
  let pos = 4;
  const u32 = () => {
    const v = buf.readUInt32LE(pos);
    pos += 4;
    return v;
  };
  const u64 = () => {
    const v = Number(buf.readBigUInt64LE(pos));
    pos += 8;
    return v;
  };
  const str = () => {
    const n = u64();
    const s = buf.toString("utf8", pos, pos + n);
    pos += n;
    return s;
  };
  const scalar = (t: number): number => {
    const at = pos;
    pos += SCALAR_BYTES[t]!;
    switch (t) {
      case 0: return buf.readUInt8(at);
      case 1: return buf.readInt8(at);
      case 2: return buf.readUInt16LE(at);
      case 3: return buf.readInt16LE(at);
      case 4: return buf.readUInt32LE(at);
      case 5: return buf.readInt32LE(at);
      case 6: return buf.readFloatLE(at);
      case 7: return buf.readUInt8(at);
      case 10: return Number(buf.readBigUInt64LE(at));
      case 11: return Number(buf.readBigInt64LE(at));
      case 12: return buf.readDoubleLE(at);
    }
    throw new Error(`bad scalar type ${t}`);
  };
  const version = u32();
  const nTensors = u64();
  const nKv = u64();
  const headerEnd = pos;
  const kvs: GgufKv[] = [];
  for (let i = 0; i < nKv; i++) {
    const start = pos;
    const key = str();
    const typeAt = pos;
    const type = u32();
    const valueAt = pos;
    let value: number | string | undefined;
    if (type === 8) value = str();
    else if (type === 9) {
      const et = u32();
      const n = u64();
      if (et === 8) for (let k = 0; k < n; k++) str();
      else pos += n * SCALAR_BYTES[et]!;
    } else value = scalar(type);
    kvs.push({ key, start, typeAt, type, valueAt, end: pos, value });
  }
  const kvEnd = pos;
  const tensors: GgufTensorInfo[] = [];
  for (let i = 0; i < nTensors; i++) {
    const start = pos;
    const name = str();
    const nDims = u32();
    const dimsAt = pos;
    const dims: number[] = [];
    for (let d = 0; d < nDims; d++) dims.push(u64());
    const typeAt = pos;
    const type = u32();
    const offsetAt = pos;
    const offset = u64();
    tensors.push({ name, start, nDims, dimsAt, dims, typeAt, type, offsetAt, offset, end: pos });
  }
  const infosEnd = pos;
  const al = kvs.find((k) => k.key === "general.alignment");
  const alignment = typeof al?.value === "number" ? al.value : 32;
  const dataStart = Math.ceil(infosEnd / alignment) * alignment;
  return { version, headerEnd, kvs, kvEnd, tensors, infosEnd, alignment, dataStart, size: buf.length };
}

/**
 * The GGUF file `buf` with metadata added after its own (string, f32 or u32 values), the tensor data
 * moved to the next aligned offset: a valid file of the same model with more keys.
 */
export function ggufWithMetadata(buf: Buffer, extra: Array<[string, string | { f32: number } | { u32: number }]>): Buffer {
  const l = ggufLayout(buf);
  const parts: Buffer[] = [];
  const u32 = (v: number) => { const b = Buffer.alloc(4); b.writeUInt32LE(v); return b; };
  const u64 = (v: number) => { const b = Buffer.alloc(8); b.writeBigUInt64LE(BigInt(v)); return b; };
  const str = (v: string) => Buffer.concat([u64(Buffer.byteLength(v)), Buffer.from(v)]);
  for (const [key, v] of extra) {
    if (typeof v === "string") parts.push(str(key), u32(8), str(v));
    else if ("f32" in v) { const b = Buffer.alloc(4); b.writeFloatLE(v.f32); parts.push(str(key), u32(6), b); }
    else parts.push(str(key), u32(4), u32(v.u32));
  }
  const head = Buffer.from(buf.subarray(0, l.headerEnd));
  head.writeBigUInt64LE(BigInt(l.kvs.length + extra.length), l.headerEnd - 8);
  const meta = Buffer.concat([head, buf.subarray(l.headerEnd, l.kvEnd), ...parts, buf.subarray(l.kvEnd, l.infosEnd)]);
  const pad = Buffer.alloc((l.alignment - (meta.length % l.alignment)) % l.alignment);
  return Buffer.concat([meta, pad, buf.subarray(l.dataStart)]);
}

export function ggufTensor(layout: GgufLayout, name: string): GgufTensorInfo {
  const t = layout.tensors.find((x) => x.name === name);
  if (!t) throw new Error(`no tensor ${name}`);
  return t;
}

export function ggufKv(layout: GgufLayout, key: string): GgufKv {
  const k = layout.kvs.find((x) => x.key === key);
  if (!k) throw new Error(`no metadata ${key}`);
  return k;
}

// --------------------------------------------------------------------------------- safetensors

export interface SafetensorsFile {
  header: Record<string, any>;
  data: Buffer;
}

export function readSafetensors(file: string): SafetensorsFile {
  const buf = readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  return { header: JSON.parse(buf.toString("utf8", 8, 8 + n)), data: buf.subarray(8 + n) };
}

/**
 * Serializes a safetensors file (the header padded with spaces to 8 bytes, as the reference does).
 * `opts.json` rewrites the header text first (e.g. to write NaN, which JSON.stringify cannot);
 * `opts.pad` sets the data section's start modulo 8 (default 0: aligned).
 */
export function encodeSafetensors(f: SafetensorsFile, opts: { json?: (text: string) => string; pad?: number } = {}): Buffer {
  let json = JSON.stringify(f.header);
  if (opts.json) json = opts.json(json);
  while ((8 + Buffer.byteLength(json)) % 8 !== (opts.pad ?? 0)) json += " ";
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
  return Buffer.concat([len, Buffer.from(json), f.data]);
}

/** Byte length of a safetensors file's 8-byte prefix + header. */
export function safetensorsHeaderBytes(file: string): number {
  return 8 + Number(readFileSync(file).readBigUInt64LE(0));
}
