// Logits straight from the native engine, for comparisons with reference logits: the public API only
// exposes sampled tokens. `lastLogits` runs all `ids` through a fresh sequence in one native forward
// (a teacher-forced prefill) and returns the full logits at the last position.
import type { Llama2 } from "../../lib/llama2.js";

export async function lastLogits(model: Llama2, ids: readonly number[]): Promise<Float32Array> {
  const nm = model._native();
  const seq = nm.createSequence();
  try {
    const [out] = await nm.forward([{ seq, tokens: Int32Array.from(ids), output: -1 }]);
    if (!(out instanceof Float32Array)) throw new Error("forward returned no logits");
    return out;
  } finally {
    nm.freeSequence(seq);
  }
}

/** max |a - b| / max |b|: the error of `a` relative to the reference `b`'s scale. */
export function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} vs ${b.length}`);
  let d = 0;
  let m = 0;
  for (let i = 0; i < b.length; i++) {
    d = Math.max(d, Math.abs(a[i]! - b[i]!));
    m = Math.max(m, Math.abs(b[i]!));
  }
  return d / m;
}

// One argmax for the tests, the self-check and validate.mjs.
export { argmax } from "../../lib/self-check.js";

/** The k largest as [id, logit], largest first (ties: lower id first). */
export function topK(a: ArrayLike<number>, k: number): [number, number][] {
  return Array.from(a, (v, i) => [i, v] as [number, number])
    .sort((x, y) => y[1] - x[1] || x[0] - y[0])
    .slice(0, k);
}

/** Length of the common prefix of two id lists. */
export function commonPrefix(a: readonly number[], b: readonly number[]): number {
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  return i;
}

/** The same bytes (Float32Arrays compared bit for bit: NaN payloads and -0 included). */
export const sameBits = (a: Float32Array, b: Float32Array) =>
  Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));

/**
 * The CPU backend's determinism on `m` (loaded with maxSequences >= 3): the last token's logits are the same
 * bits stepped one token at a time after `prompt` as prefilled with it in one step, and greedy replies to
 * three prompts are the same alone as batched together.
 */
export async function expectStepsAndBatchesAgree(m: Llama2, prompt: readonly number[], feed: readonly number[]): Promise<void> {
  const { expect } = await import("vitest");
  const { trace } = await import("../../lib/self-check.js");
  const stepped = await trace(m, [...prompt], [...feed]);
  const prefilled = await trace(m, [...prompt, ...feed], []);
  expect(sameBits(stepped.at(-1)!, prefilled[0]!), "stepped and prefilled logits differ").toBe(true);
  const greedy = { temperature: 0, stopOnEos: false, maxTokens: 12 } as const;
  const prompts = [[...prompt], [1, 5, 9], [1, 200, 3, 7]];
  const alone = [];
  for (const p of prompts) alone.push((await m.generate(p, greedy).result).tokenIds);
  const together = await Promise.all(prompts.map((p) => m.generate(p, greedy).result));
  expect(together.map((r) => r.tokenIds)).toEqual(alone);
}
