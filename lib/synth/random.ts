// Fast deterministic random weights. A weight is table[16 random bits], where the 65536-entry table
// holds the quantiles of the target normal distribution: sampling it is exact for that grid and
// costs one xorshift step per two weights (~1 ns each), instead of a Box-Muller per value.
//
// Every table value is representable exactly in fp16, bf16 and f32 (8 significant bits, no fp16
// subnormals), so one seed gives bit-identical weights in every dtype; only Q8_0 rounds.
//
// Each tensor row has its own stream, seeded from (seed, tensor name, row): any row can be produced
// on its own, which lets the GGUF writer emit Q/K rows in llama.cpp's permuted order.
import { f32ToBf16, bf16ToF32, f32ToF16, f16ToF32 } from "./half.js";
import { Llama2Error } from "../errors.js";

export interface ValueTable {
  f16: Uint16Array;
  bf16: Uint16Array;
  f32: Float32Array;
}

/** Inverse of the standard normal CDF (Acklam's rational approximation, relative error < 1.2e-9). */
export function normalQuantile(p: number): number {
  const a = [-3.969683028665376e1, 2.209460984245205e2, -2.759285104469687e2, 1.38357751867269e2, -3.066479806614716e1, 2.506628277459239];
  const b = [-5.447609879822406e1, 1.615858368580409e2, -1.556989798598866e2, 6.680131188771972e1, -1.328068155288572e1];
  const c = [-7.784894002430293e-3, -3.223964580411365e-1, -2.400758277161838, -2.549732539343734, 4.374664141464968, 2.938163982698783];
  const d = [7.784695709041462e-3, 3.224671290700398e-1, 2.445134137142996, 3.754408661907416];
  const lo = 0.02425;
  if (p < lo || p > 1 - lo) {
    const q = Math.sqrt(-2 * Math.log(p < lo ? p : 1 - p));
    const x = (((((c[0]! * q + c[1]!) * q + c[2]!) * q + c[3]!) * q + c[4]!) * q + c[5]!) / ((((d[0]! * q + d[1]!) * q + d[2]!) * q + d[3]!) * q + 1);
    return p < lo ? x : -x;
  }
  const q = p - 0.5;
  const r = q * q;
  return ((((((a[0]! * r + a[1]!) * r + a[2]!) * r + a[3]!) * r + a[4]!) * r + a[5]!) * q) / (((((b[0]! * r + b[1]!) * r + b[2]!) * r + b[3]!) * r + b[4]!) * r + 1);
}

const tables = new Map<string, ValueTable>();

/** The quantile table of N(mean, std^2), every value exact in fp16, bf16 and f32. */
export function normalTable(mean: number, std: number): ValueTable {
  const key = `${mean}:${std}`;
  const hit = tables.get(key);
  if (hit) return hit;
  const t: ValueTable = { f16: new Uint16Array(65536), bf16: new Uint16Array(65536), f32: new Float32Array(65536) };
  for (let i = 0; i < 65536; i++) {
    let v = bf16ToF32(f32ToBf16(mean + std * normalQuantile((i + 0.5) / 65536)));
    if (Math.abs(v) < 2 ** -14) v = 0; // fp16 subnormals have fewer bits than bf16: avoid them
    v = Math.min(Math.max(v, -65504), 65504);
    const h = f32ToF16(v);
    if (f16ToF32(h) !== v) throw new Llama2Error("ERR_INTERNAL", `synthetic table: ${v} is not exact in fp16`);
    t.f16[i] = h;
    t.bf16[i] = f32ToBf16(v);
    t.f32[i] = v;
  }
  tables.set(key, t);
  return t;
}

// murmur3's 32-bit finalizer: a bijection that mixes every input bit into every output bit.
function fmix(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

/** FNV-1a of a string (tensor names). */
export function hashName(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

/**
 * The xorshift128 state of one row. Two independent 32-bit hashes of (seed, tensor, row) give 64 bits,
 * so the ~1.6M rows of a 7B model get distinct streams with overwhelming probability.
 */
export function rowState(seed: number, tensor: number, row: number, out: Uint32Array): void {
  const lo = seed >>> 0;
  const hi = Math.floor(seed / 2 ** 32) >>> 0;
  let a = fmix(lo ^ 0x243f6a88);
  let b = fmix(lo ^ 0x85a308d3);
  a = fmix(a ^ hi);
  b = fmix((b + hi) ^ 0x13198a2e);
  a = fmix(a ^ tensor);
  b = fmix((b + tensor) ^ 0x03707344);
  a = fmix(a ^ row);
  b = fmix((b + row) ^ 0xa4093822);
  out[0] = a;
  out[1] = b;
  out[2] = fmix(a ^ b ^ 0x299f31d0);
  out[3] = fmix((a + Math.imul(b, 3)) ^ 0x082efa98) | 1; // never the all-zero state
}

/**
 * Writes `n` values from `table` into out[at..], from the stream whose state is `s` (Marsaglia's
 * xorshift128, period 2^128 - 1; each step gives two 16-bit indices). Two copies of one loop so that
 * each stays monomorphic (one array type) for V8: this loop is where a 7B model's time goes.
 */
export function fillRow16(out: Uint16Array, at: number, n: number, table: Uint16Array, s: Uint32Array): void {
  let x = s[0]!, y = s[1]!, z = s[2]!, w = s[3]!;
  const end = at + n;
  let i = at;
  for (; i + 1 < end; i += 2) {
    const t = x ^ (x << 11);
    x = y;
    y = z;
    z = w;
    w = (w ^ (w >>> 19) ^ t ^ (t >>> 8)) >>> 0;
    out[i] = table[w & 0xffff]!;
    out[i + 1] = table[w >>> 16]!;
  }
  if (i < end) {
    const t = x ^ (x << 11);
    w = (w ^ (w >>> 19) ^ t ^ (t >>> 8)) >>> 0;
    out[i] = table[w & 0xffff]!;
  }
}

export function fillRow32(out: Float32Array, at: number, n: number, table: Float32Array, s: Uint32Array): void {
  let x = s[0]!, y = s[1]!, z = s[2]!, w = s[3]!;
  const end = at + n;
  let i = at;
  for (; i + 1 < end; i += 2) {
    const t = x ^ (x << 11);
    x = y;
    y = z;
    z = w;
    w = (w ^ (w >>> 19) ^ t ^ (t >>> 8)) >>> 0;
    out[i] = table[w & 0xffff]!;
    out[i + 1] = table[w >>> 16]!;
  }
  if (i < end) {
    const t = x ^ (x << 11);
    w = (w ^ (w >>> 19) ^ t ^ (t >>> 8)) >>> 0;
    out[i] = table[w & 0xffff]!;
  }
}
