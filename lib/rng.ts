// Seeded PRNG for sampling: xoshiro128** (32-bit state words, so it runs on plain int32 math with
// no BigInt), identical on every platform. next() combines two outputs into 53 random bits.
import { getRandomValues } from "node:crypto";

/** MurmurHash3's 32-bit finalizer: a bijection, so distinct seeds give distinct states. */
function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

export class Rng {
  private s0: number;
  private s1: number;
  private s2: number;
  private s3: number;

  /** `seed`: any safe integer (the caller validates it); omitted -> seeded from crypto. */
  constructor(seed?: number) {
    if (seed === undefined) {
      const w = getRandomValues(new Uint32Array(4));
      [this.s0, this.s1, this.s2, this.s3] = [w[0]!, w[1]!, w[2]!, w[3]!];
      if ((this.s0 | this.s1 | this.s2 | this.s3) === 0) this.s0 = 1; // the all-zero state is a fixed point
    } else {
      const lo = seed >>> 0; // ToUint32 is exact modulo 2^32 for any safe integer, negatives included
      const hi = Math.floor(seed / 0x100000000) >>> 0;
      // s0/s1 are bijections of lo/hi, so (lo, hi) -> state is injective; the constants keep it non-zero.
      this.s0 = fmix32(lo ^ 0x9e3779b9);
      this.s1 = fmix32(hi ^ 0x7f4a7c15);
      this.s2 = fmix32(this.s0 ^ 0x85ebca6b);
      this.s3 = fmix32(this.s1 ^ 0xc2b2ae35) | 1;
      for (let i = 0; i < 8; i++) this.nextUint32(); // decorrelate nearby seeds
    }
  }

  /** 32 uniformly random bits as an unsigned integer. */
  nextUint32(): number {
    const s1 = this.s1;
    const result = Math.imul(rotl(Math.imul(s1, 5), 7), 9) >>> 0;
    const t = s1 << 9;
    this.s2 ^= this.s0;
    this.s3 ^= s1;
    this.s1 ^= this.s2;
    this.s0 ^= this.s3;
    this.s2 ^= t;
    this.s3 = rotl(this.s3, 11);
    return result;
  }

  /** Uniform in [0, 1) with 53 bits of randomness. */
  next(): number {
    const a = this.nextUint32() >>> 5; // 27 bits
    const b = this.nextUint32() >>> 6; // 26 bits
    return (a * 67108864 + b) / 9007199254740992;
  }
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}
