// IEEE half (fp16) and bfloat16 conversions, round to nearest even, plus ggml's Q8_0 block quantizer.
const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** fp16 bits of `x` (round to nearest even; overflow -> inf). */
export function f32ToF16(x: number): number {
  f32[0] = x;
  const b = u32[0]!;
  const sign = (b >>> 16) & 0x8000;
  const exp = (b >>> 23) & 0xff;
  let man = b & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (man ? 0x200 : 0);
  let e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    man |= 0x800000; // subnormal: shift in the implicit bit
    const shift = 14 - e;
    const half = 1 << (shift - 1);
    const rest = man & ((1 << shift) - 1);
    let h = man >>> shift;
    if (rest > half || (rest === half && h & 1)) h++;
    return sign | h;
  }
  let h = (e << 10) | (man >>> 13);
  const rest = man & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && h & 1)) h++; // may carry into the exponent: still correct
  return sign | h;
}

/** The value of fp16 bits `h`. */
export function f16ToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const man = h & 0x3ff;
  if (exp === 0) return sign * man * 2 ** -24;
  if (exp === 0x1f) return man ? NaN : sign * Infinity;
  return sign * (1 + man / 1024) * 2 ** (exp - 15);
}

/** bfloat16 bits of `x` (round to nearest even). */
export function f32ToBf16(x: number): number {
  f32[0] = x;
  const b = u32[0]!;
  if ((b & 0x7fffffff) > 0x7f800000) return ((b >>> 16) | 0x40) & 0xffff; // NaN stays NaN
  return ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) & 0xffff;
}

export function bf16ToF32(h: number): number {
  u32[0] = h << 16;
  return f32[0]!;
}

/**
 * Quantizes `n` floats (a multiple of 32) into Q8_0 blocks at out[at..]: per block an fp16 scale
 * d = amax / 127 and 32 int8 q = round(x / d), computed in float32 like gguf-py's quantizer
 * (round half away from zero) so the bytes match llama.cpp's converter.
 */
export function quantizeQ8_0(src: Float32Array, n: number, out: Uint8Array, at: number): number {
  const fr = Math.fround; // float32 products and quotients: exact in double, then rounded once
  const qs = new Int8Array(out.buffer, out.byteOffset); // int stores: a negative double into a Uint8Array is slow
  for (let b = 0; b < n; b += 32) {
    let amax = 0;
    for (let i = b; i < b + 32; i++) amax = Math.max(amax, Math.abs(src[i]!));
    const d = fr(amax / 127);
    const id = d === 0 ? 0 : fr(1 / d);
    const h = f32ToF16(d);
    out[at] = h & 0xff;
    out[at + 1] = h >>> 8;
    for (let i = 0; i < 32; i++) {
      // Round half away from zero without a sign-dependent branch (random signs mispredict):
      // floor(v + 0.5), minus one for the rare negative exact half.
      const v = fr(src[b + i]! * id) + 0.5;
      let q = Math.floor(v);
      if (q === v && v < 0.5) q -= 1;
      qs[at + 2 + i] = q | 0;
    }
    at += 34;
  }
  return at;
}
