// Micro-benchmarks of the TypeScript sampler at Llama 2's vocabulary size: the per-token CPU cost that
// decoding pays on top of the forward pass, for full logits and for device-selected candidates.
import type { Bench } from "tinybench";
import { Rng } from "../rng.js";
import { Sampler, type Candidates } from "../sampler.js";

const VOCAB = 32000;

/** Logits shaped like a language model's: a Gaussian bulk plus a few strongly preferred tokens. */
function realisticLogits(rng: Rng): Float32Array {
  const a = new Float32Array(VOCAB);
  for (let i = 0; i < VOCAB; i++) {
    const u = rng.next() || 1e-12;
    a[i] = 2.5 * Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * rng.next());
  }
  for (let j = 0; j < 20; j++) a[Math.floor(rng.next() * VOCAB)]! += 6 + rng.next() * 8;
  return a;
}

function topCandidates(logits: Float32Array, k: number): Candidates {
  const ids = Array.from(logits, (_, i) => i)
    .sort((a, b) => logits[b]! - logits[a]! || a - b)
    .slice(0, k);
  return { ids: Int32Array.from(ids), logits: Float32Array.from(ids, (i) => logits[i]!) };
}

export function addSamplerBenches(bench: Bench): void {
  const rng = new Rng(2024);
  // Several distinct logit vectors, cycled, so that one cached array does not flatter the numbers.
  const logits = Array.from({ length: 8 }, () => realisticLogits(rng));
  const history = Array.from({ length: 256 }, () => Math.floor(rng.next() * VOCAB));
  const cand1 = logits.map((l) => topCandidates(l, 1));
  const cand40 = logits.map((l) => topCandidates(l, 40));
  const task = (name: string, opts: ConstructorParameters<typeof Sampler>[0], input: (i: number) => Float32Array | Candidates) => {
    const sampler = new Sampler({ seed: 1, ...opts }, VOCAB);
    let i = 0;
    bench.add(`sampler: ${name}`, () => sampler.sample(input(i++ & 7), history));
  };
  const full = (i: number) => logits[i]!;
  task("greedy, full logits", { temperature: 0 }, full);
  task("greedy, 1 candidate", { temperature: 0 }, (i) => cand1[i]!);
  task("T 0.8 + top-k 40, 40 candidates", { temperature: 0.8, topK: 40 }, (i) => cand40[i]!);
  task("T 0.8 + top-k 40 (defaults), full logits", {}, full);
  task("top-p 0.95, full logits (topK 0, minP 0)", { topK: 0, topP: 0.95, minP: 0 }, full);
  task("repetition penalty 1.1 + top-p 0.95, full logits (topK 0, minP 0)", { topK: 0, topP: 0.95, minP: 0, repetitionPenalty: 1.1 }, full);
}
