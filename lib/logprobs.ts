// Log-probabilities of generated tokens (the `logprobs` option): log-softmax of the raw logits.
import type { TokenLogprob, TokenLogprobAlternative } from "./types.js";

/** The bytes and text of a token in the output (null bytes: a control token, which outputs nothing). */
export type TokenText = (id: number) => Uint8Array | null;

const decoder = new TextDecoder();

/**
 * log(sum(exp(logits))) in two passes (max, then the sum), in float64; NaN logits count as -Infinity. The
 * largest logit itself when it is not finite (+Infinity, or -Infinity when every logit is).
 */
export function logSumExp(logits: Float32Array): number {
  let m = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i]! > m) m = logits[i]!;
  if (!Number.isFinite(m)) return m;
  let z = 0;
  for (let i = 0; i < logits.length; i++) z += logits[i]! > -Infinity ? Math.exp(logits[i]! - m) : 0;
  return m + Math.log(z);
}

/**
 * `id`'s log-probability under `logits` and the `top` most likely tokens (logit descending, id ascending).
 * `lse`: logSumExp(logits), when the caller has it already.
 */
export function tokenLogprob(logits: Float32Array, id: number, top: number, text: TokenText, lse = logSumExp(logits)): TokenLogprob {
  const lp = (i: number): number => {
    const v = logits[i]!;
    if (lse === Infinity) return v === Infinity ? -Math.log(countInf(logits)) : -Infinity; // a broken model: +Infinity shares all the mass
    return v > -Infinity ? Math.max(v - lse, -Number.MAX_VALUE) : -Infinity;
  };
  // The `top` best by a small insertion-sorted list (top <= 20).
  const best: number[] = [];
  if (top > 0) {
    for (let i = 0; i < logits.length; i++) {
      const v = logits[i]!;
      if (!(v > -Infinity)) continue;
      if (best.length === top && !(v > logits[best[top - 1]!]!)) continue;
      let j = best.length === top ? top - 1 : best.length;
      while (j > 0 && v > logits[best[j - 1]!]!) {
        best[j] = best[j - 1]!;
        j--;
      }
      best[j] = i;
    }
  }
  const alt = (i: number): TokenLogprobAlternative => {
    const b = text(i) ?? new Uint8Array(0);
    return { id: i, token: decoder.decode(b), bytes: Array.from(b), logprob: lp(i) };
  };
  return { ...alt(id), top: best.map(alt) };
}

function countInf(logits: Float32Array): number {
  let n = 0;
  for (let i = 0; i < logits.length; i++) if (logits[i] === Infinity) n++;
  return n;
}
