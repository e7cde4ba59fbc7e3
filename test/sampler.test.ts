import { describe, expect, it } from "vitest";
import { InvalidArgumentError, Llama2Error } from "../lib/errors.js";
import { Rng } from "../lib/rng.js";
import { MAX_CANDIDATES, SAMPLING_DEFAULTS, Sampler } from "../lib/sampler.js";
import type { SamplingOptions } from "../lib/types.js";

/** Brute-force reference: the exact distribution the sampler must draw from (llama.cpp order). */
function reference(logits: ArrayLike<number>, opts: SamplingOptions, history: number[] = []): number[] {
  const o = { ...SAMPLING_DEFAULTS, logitBias: {}, ...opts };
  const l = Array.from(logits, (v) => (Number.isNaN(v) ? -Infinity : v));
  for (const [k, b] of Object.entries(o.logitBias as Record<string, number>)) l[Number(k)] += b;
  const win = o.penaltyLastN < 0 ? history : history.slice(Math.max(0, history.length - o.penaltyLastN));
  const counts = new Map<number, number>();
  for (const t of win) counts.set(t, (counts.get(t) ?? 0) + 1);
  for (const [t, c] of counts) {
    l[t] = l[t]! > 0 ? l[t]! / o.repetitionPenalty : l[t]! * o.repetitionPenalty;
    l[t] -= c * o.frequencyPenalty + o.presencePenalty;
  }
  const order = l.map((_, i) => i).sort((a, b) => l[b]! - l[a]! || a - b);
  const p = new Array<number>(l.length).fill(0);
  if (o.temperature === 0) {
    p[order[0]!] = 1;
    return p;
  }
  const kept = o.topK > 0 ? order.slice(0, o.topK) : order;
  const m = l[kept[0]!]!;
  const w = kept.map((i) => Math.exp((l[i]! - m) / o.temperature));
  const z = w.reduce((a, b) => a + b, 0);
  let len = kept.length;
  if (o.topP < 1) {
    let cum = 0;
    len = w.findIndex((x) => (cum += x) >= o.topP * z) + 1;
  }
  while (len > 1 && w[len - 1]! / z < o.minP * (w[0]! / z)) len--;
  const s = w.slice(0, len).reduce((a, b) => a + b, 0);
  for (let j = 0; j < len; j++) p[kept[j]!] = w[j]! / s;
  return p;
}

/** The top n candidates of `logits` as the device would return them. */
function topCandidates(logits: Float32Array, n: number) {
  const order = Array.from(logits, (_, i) => i).sort((a, b) => logits[b]! - logits[a]! || a - b).slice(0, n);
  return { ids: Int32Array.from(order), logits: Float32Array.from(order, (i) => logits[i]!) };
}

function randomLogits(n: number, seed: number, spread = 3): Float32Array {
  const r = new Rng(seed);
  return Float32Array.from({ length: n }, () => (r.next() + r.next() + r.next() - 1.5) * 2 * spread);
}

/** Empirical frequencies over `draws` samples must match `expected` within 5 sigma; impossible tokens never appear. */
function expectDistribution(sample: () => number, expected: number[], draws = 20000): void {
  const counts = new Array<number>(expected.length).fill(0);
  for (let i = 0; i < draws; i++) counts[sample()]++;
  counts.forEach((c, id) => {
    const p = expected[id]!;
    if (p === 0) expect(c, `token ${id} is impossible`).toBe(0);
    else expect(Math.abs(c / draws - p), `token ${id}: p=${p}, got ${c / draws}`).toBeLessThanOrEqual(5 * Math.sqrt((p * (1 - p)) / draws) + 1 / draws);
  });
}

describe("Rng", () => {
  it("is xoshiro128** with a fixed seeding (golden values from a C reference)", () => {
    const golden: [number, number[]][] = [
      [42, [3255778534, 3117055014, 3111523844, 3244274998]],
      [-7, [1590343209, 1317258, 426154999, 3198825086]],
      [9007199254740991, [2665619884, 563188629, 2301225782, 1902069396]],
    ];
    for (const [seed, values] of golden) {
      const r = new Rng(seed);
      expect(values.map(() => r.nextUint32())).toEqual(values);
    }
  });

  it("next() is uniform in [0, 1) with more than 32 bits", () => {
    const r = new Rng(1);
    let sum = 0;
    let fine = 0;
    for (let i = 0; i < 10000; i++) {
      const x = r.next();
      expect(x >= 0 && x < 1).toBe(true);
      sum += x;
      if (x * 2 ** 32 !== Math.floor(x * 2 ** 32)) fine++; // bits below 2^-32 are set
    }
    expect(Math.abs(sum / 10000 - 0.5)).toBeLessThan(0.015);
    expect(fine).toBeGreaterThan(9900);
  });

  it("unseeded generators differ", () => {
    expect(new Rng().nextUint32() === new Rng().nextUint32() && new Rng().nextUint32() === new Rng().nextUint32()).toBe(false);
  });
});

describe("Sampler validation", () => {
  const bad: [SamplingOptions | unknown, string, string][] = [
    [{ temperature: -0.1 }, "temperature", "-0.1"],
    [{ temperature: Infinity }, "temperature", "Infinity"],
    [{ temperature: NaN }, "temperature", "NaN"],
    [{ temperature: "1" }, "temperature", '"1"'],
    [{ topK: 1.5 }, "topK", "1.5"],
    [{ topK: -1 }, "topK", "-1"],
    [{ topP: 0 }, "topP", "0"],
    [{ topP: 1.01 }, "topP", "1.01"],
    [{ minP: 1 }, "minP", "1"],
    [{ minP: -0.1 }, "minP", "-0.1"],
    [{ repetitionPenalty: 0 }, "repetitionPenalty", "0"],
    [{ repetitionPenalty: Infinity }, "repetitionPenalty", "Infinity"],
    [{ presencePenalty: NaN }, "presencePenalty", "NaN"],
    [{ frequencyPenalty: -Infinity }, "frequencyPenalty", "-Infinity"],
    [{ penaltyLastN: -2 }, "penaltyLastN", "-2"],
    [{ penaltyLastN: 2.5 }, "penaltyLastN", "2.5"],
    [{ seed: 1.5 }, "seed", "1.5"],
    [{ seed: 2 ** 53 }, "seed", String(2 ** 53)],
    [{ seed: null }, "seed", "null"],
    [{ logitBias: [1, 2] }, "logitBias", "an array"],
    [{ logitBias: null }, "logitBias", "null"],
    [{ logitBias: { 100: 1 } }, "logitBias", '"100"'],
    [{ logitBias: { "-1": 1 } }, "logitBias", '"-1"'],
    [{ logitBias: { abc: 1 } }, "logitBias", '"abc"'],
    [{ logitBias: { 5: Infinity } }, "logitBias", "Infinity"],
    [{ logitBias: { 5: NaN } }, "logitBias", "NaN"],
    [{ logitBias: { 5: "1" } }, "logitBias", '"1"'],
    [null, "options", "null"],
    [7, "options", "7"],
  ];
  it.each(bad)("rejects %j (field %s)", (opts, field, shown) => {
    let err: unknown;
    try {
      new Sampler(opts as SamplingOptions, 100);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(InvalidArgumentError);
    expect((err as InvalidArgumentError).field).toBe(field);
    expect((err as Error).message).toContain(shown);
  });

  it("rejects a bad vocabulary size", () => {
    expect(() => new Sampler({}, 0)).toThrow(InvalidArgumentError);
    expect(() => new Sampler({}, 1.5)).toThrow(/vocabSize/);
  });

  it("accepts boundary values and fills defaults", () => {
    const o = Sampler.validate(
      { temperature: 0, topK: 0, topP: 1, minP: 0, penaltyLastN: -1, seed: -5, logitBias: { 99: -Infinity, 3: 0 } },
      100,
    );
    expect(o).toMatchObject({ temperature: 0, topK: 0, topP: 1, minP: 0, penaltyLastN: -1, seed: -5 });
    expect([...o.logitBias]).toEqual([[99, -Infinity]]); // zero biases are dropped
    expect(Sampler.validate({}, 10)).toMatchObject({ temperature: 0.8, topK: 40, topP: 0.95, minP: 0.05, repetitionPenalty: 1, penaltyLastN: 64 });
    expect(new Sampler(undefined, 10).options.topK).toBe(40);
  });
});

describe("Sampler.needs", () => {
  const needs = (o: SamplingOptions, V = 32000) => new Sampler(o, V).needs;
  it("asks for the fewest candidates that are exact", () => {
    expect(needs({ temperature: 0 })).toEqual({ fullLogits: false, candidates: 1 });
    expect(needs({})).toEqual({ fullLogits: false, candidates: 40 });
    expect(needs({ topK: 256 })).toEqual({ fullLogits: false, candidates: 256 });
    expect(needs({ topK: 257 })).toEqual({ fullLogits: true, candidates: 0 });
    expect(needs({ topK: 0 })).toEqual({ fullLogits: true, candidates: 0 });
    expect(needs({ topK: 0, temperature: 0 })).toEqual({ fullLogits: false, candidates: 1 });
    // Penalties that only lower logits: top-k plus the penalty window.
    expect(needs({ repetitionPenalty: 1.1 })).toEqual({ fullLogits: false, candidates: 40 + 64 });
    expect(needs({ temperature: 0, presencePenalty: 0.5, penaltyLastN: 8 })).toEqual({ fullLogits: false, candidates: 9 });
    expect(needs({ repetitionPenalty: 1.1, penaltyLastN: 0 })).toEqual({ fullLogits: false, candidates: 40 });
    expect(needs({ repetitionPenalty: 1.1, penaltyLastN: MAX_CANDIDATES })).toEqual({ fullLogits: true, candidates: 0 });
    // Anything that can raise a logit needs all of them.
    expect(needs({ repetitionPenalty: 0.9 }).fullLogits).toBe(true);
    expect(needs({ presencePenalty: -0.5 }).fullLogits).toBe(true);
    expect(needs({ frequencyPenalty: -0.1 }).fullLogits).toBe(true);
    expect(needs({ repetitionPenalty: 1.1, penaltyLastN: -1 }).fullLogits).toBe(true);
    expect(needs({ logitBias: { 5: 2 } }).fullLogits).toBe(true);
    expect(needs({ logitBias: { 5: -Infinity, 6: -1, 7: 0 } })).toEqual({ fullLogits: false, candidates: 42 });
    // A candidate list as large as the vocabulary is just the full logits.
    expect(needs({}, 40)).toEqual({ fullLogits: true, candidates: 0 });
  });
});

describe("Sampler semantics", () => {
  const greedy = (logits: number[], o: SamplingOptions = {}, history: number[] = []) =>
    new Sampler({ temperature: 0, ...o }, logits.length).sample(Float32Array.from(logits), history);

  it("greedy picks the argmax, the lowest id on ties, and ignores NaN", () => {
    expect(greedy([0, 3, 3, 1])).toBe(1);
    expect(greedy([NaN, 1, NaN])).toBe(1);
    expect(greedy([-Infinity, -5, -Infinity])).toBe(1);
    // A denormal temperature (1/T overflows) is greedy too instead of producing NaN weights.
    for (const topK of [0, 2]) expect(greedy([0, 3, 3, 1], { temperature: 1e-310, topK })).toBe(1);
    expect(new Sampler({ temperature: 1e-310 }, 100).needs).toEqual({ fullLogits: false, candidates: 1 });
  });

  it("applies the repetition penalty by sign (divide positive, multiply negative)", () => {
    expect(greedy([2, 1.9, 0], { repetitionPenalty: 1.1 }, [0])).toBe(1);
    expect(greedy([2, 1.9, 0], { repetitionPenalty: 1.1 }, [2])).toBe(0);
    expect(greedy([-1, -1.05], { repetitionPenalty: 1.1 }, [0])).toBe(1);
    expect(greedy([-1, -1.05], { repetitionPenalty: 1.1 }, [1])).toBe(0);
  });

  it("presence counts once, frequency counts occurrences", () => {
    expect(greedy([1, 0.6], { presencePenalty: 0.3 }, [0, 0, 0])).toBe(0); // 0.7 > 0.6
    expect(greedy([1, 0.6], { presencePenalty: 0.5 }, [0, 0, 0])).toBe(1); // 0.5 < 0.6
    expect(greedy([1, 0.6], { frequencyPenalty: 0.1 }, [0, 0, 0])).toBe(0); // 0.7
    expect(greedy([1, 0.6], { frequencyPenalty: 0.15 }, [0, 0, 0])).toBe(1); // 0.55
  });

  it("penalizes only the last penaltyLastN tokens (-1: all)", () => {
    expect(greedy([1, 0.6, -5], { presencePenalty: 0.5, penaltyLastN: 2 }, [0, 2, 2])).toBe(0);
    expect(greedy([1, 0.6, -5], { presencePenalty: 0.5, penaltyLastN: 3 }, [0, 2, 2])).toBe(1);
    const long = [0, ...new Array<number>(500).fill(2)];
    expect(greedy([1, 0.9, -5], { presencePenalty: 0.5 }, long)).toBe(0); // default window: 64
    expect(greedy([1, 0.9, -5], { presencePenalty: 0.5, penaltyLastN: -1 }, long)).toBe(1);
    expect(greedy([1, 0.6], { presencePenalty: 0.5, penaltyLastN: 0 }, [0])).toBe(0);
  });

  it("applies the logit bias before the penalties", () => {
    expect(greedy([0, 1], { logitBias: { 0: 2 } })).toBe(0);
    expect(greedy([5, 1], { logitBias: { 0: -Infinity } })).toBe(1);
    // bias then penalty: (1 + 1) / 2 = 1 < 1.5. Penalty then bias would tie at 1.5 and pick 0.
    expect(greedy([1, 1.5], { logitBias: { 0: 1 }, repetitionPenalty: 2 }, [0])).toBe(1);
  });

  it("never mutates the caller's logits or candidates", () => {
    const logits = randomLogits(300, 1);
    const before = logits.slice();
    const o: SamplingOptions = { repetitionPenalty: 1.5, presencePenalty: 1, logitBias: { 3: -2 }, seed: 1 };
    const s = new Sampler(o, 300);
    s.sample(logits, [1, 2, 3]);
    const c = topCandidates(logits, s.needs.candidates);
    const cBefore = { ids: c.ids.slice(), logits: c.logits.slice() };
    s.sample(c, [1, 2, 3]);
    new Sampler({ ...o, topK: 0 }, 300).sample(logits, [1, 2, 3]);
    expect(logits).toEqual(before);
    expect(c).toEqual(cBefore);
  });

  it("never picks a NaN token and reports when no token is possible", () => {
    const s = new Sampler({ temperature: 1, topK: 0, topP: 1, minP: 0, seed: 3 }, 4);
    for (let i = 0; i < 200; i++) expect(s.sample(Float32Array.from([NaN, 1, NaN, 0]), [])).not.toBe(0);
    for (const o of [{ temperature: 0 }, { topK: 0 }, { topK: 2 }, { logitBias: { 1: -Infinity } }]) {
      const t = new Sampler(o, 3);
      const err = (() => {
        try {
          t.sample(Float32Array.from([NaN, o.logitBias ? 1 : -Infinity, NaN]), []);
        } catch (e) {
          return e as Llama2Error;
        }
      })();
      expect(err).toBeInstanceOf(Llama2Error);
      expect(err?.code).toBe("ERR_MODEL_CORRUPT");
      expect(err?.message).toMatch(/NaN or -Infinity/);
    }
  });

  it("gives +Infinity logits all the mass", () => {
    for (const topK of [0, 3]) {
      const s = new Sampler({ topK, seed: 9 }, 5);
      const seen = new Set<number>();
      for (let i = 0; i < 200; i++) seen.add(s.sample(Float32Array.from([1, Infinity, 2, Infinity, NaN]), []));
      expect([...seen].sort()).toEqual([1, 3]);
    }
  });

  it("rejects inputs that do not match the vocabulary or `needs`", () => {
    const s = new Sampler({ topK: 5 }, 100);
    expect(() => s.sample(new Float32Array(99), [])).toThrow(/99 logits/);
    expect(() => s.sample({ ids: Int32Array.from([1, 2]), logits: Float32Array.from([1, 2]) }, [])).toThrow(/5 candidates/);
    expect(() => s.sample({ ids: Int32Array.from([1]), logits: Float32Array.from([1, 2]) }, [])).toThrow(Llama2Error);
    const full = new Sampler({ topK: 0 }, 100);
    expect(() => full.sample(topCandidates(randomLogits(100, 1), 50), [])).toThrow(/full logits/);
    const pen = new Sampler({ topK: 5, presencePenalty: 1 }, 100);
    expect(() => pen.sample(randomLogits(100, 1), [1, 100])).toThrow(/history: token 100 at index 1/);
  });
});

describe("Sampler distributions (against a brute-force reference)", () => {
  const logits = Float32Array.from([2.0, 1.5, 1.4, 0.3, 0.0, -0.5, -1.0, -2.0, -3.0, -Infinity]);
  const cases: SamplingOptions[] = [
    { temperature: 1, topK: 0, topP: 1, minP: 0 },
    { temperature: 0.5, topK: 0, topP: 1, minP: 0 },
    { temperature: 1, topK: 3, topP: 1, minP: 0 },
    { temperature: 1, topK: 0, topP: 0.7, minP: 0 },
    { temperature: 1.5, topK: 0, topP: 1, minP: 0.2 },
    { temperature: 0.7, topK: 6, topP: 0.9, minP: 0.05 },
    {}, // defaults
    { temperature: 1, topK: 0, topP: 0.9, minP: 0, repetitionPenalty: 1.3, presencePenalty: 0.2, frequencyPenalty: 0.1, logitBias: { 4: 1, 1: -Infinity } },
  ];
  it.each(cases)("matches the exact distribution for %j", (o) => {
    const history = [0, 0, 4, 2];
    const s = new Sampler({ ...o, seed: 1234 }, logits.length);
    expectDistribution(() => s.sample(logits, history), reference(logits, o, history));
  });

  it("matches the reference from device candidates (top-k 4 of 10)", () => {
    const o = { temperature: 1.2, topK: 4, topP: 0.95, minP: 0, seed: 5 };
    const s = new Sampler(o, logits.length);
    const c = topCandidates(logits, s.needs.candidates);
    expect(s.needs).toEqual({ fullLogits: false, candidates: 4 });
    expectDistribution(() => s.sample(c, []), reference(logits, o));
  });

  describe.each(["full logits, topK 0 (bucketed)", "full logits, topK 5", "candidates, topK 5"])("cuts exactly at the top-p / min-p boundary: %s", (path) => {
    // Four real tokens with p = 0.4, 0.3, 0.2, 0.1 among 4000; the rest weigh ~0. Cumulative: .4 .7 .9 1;
    // ratios to pmax: 1 .75 .5 .25.
    const V = 4000;
    const big = new Float32Array(V).fill(-1e4);
    const ids = [3000, 7, 2000, 2500];
    const probs = [0.4, 0.3, 0.2, 0.1];
    probs.forEach((p, j) => (big[ids[j]!] = Math.log(p)));
    const cases: [number, number, number][] = [[0.399, 0, 1], [0.401, 0, 2], [0.699, 0, 2], [0.701, 0, 3], [1, 0, 4], [1, 0.249, 4], [1, 0.251, 3], [0.95, 0.55, 2]];
    it.each(cases)("topP %d, minP %d keeps %d", (topP, minP, keep) => {
      const s = new Sampler({ temperature: 1, topK: path.includes("topK 0") ? 0 : 5, topP, minP, seed: 11 }, V);
      const c = topCandidates(big, 5);
      const expected = new Array<number>(V).fill(0);
      const sum = probs.slice(0, keep).reduce((x, y) => x + y, 0);
      for (let j = 0; j < keep; j++) expected[ids[j]!] = probs[j]! / sum;
      expectDistribution(() => s.sample(path.startsWith("candidates") ? c : big, []), expected, 500);
    });
  });

  it("keeps the lowest ids when top-p cuts through tied logits", () => {
    const V = 3000;
    const s = new Sampler({ temperature: 1, topK: 0, topP: 0.5, minP: 0, seed: 2 }, V);
    const flat = new Float32Array(V);
    let maxSeen = 0;
    for (let i = 0; i < 300; i++) maxSeen = Math.max(maxSeen, s.sample(flat, []));
    expect(maxSeen).toBeLessThan(1500);
    expect(maxSeen).toBeGreaterThan(1400);
  });

  it("keeps the exact top-p set on realistic logits at vocab 32000", () => {
    const V = 32000;
    const l = randomLogits(V, 77, 4);
    for (const o of [{ temperature: 0.8, topK: 0, topP: 0.9, minP: 0 }, { temperature: 1.5, topK: 0, topP: 0.5, minP: 0.01 }]) {
      const expected = reference(l, o);
      const s = new Sampler({ ...o, seed: 8 }, V);
      for (let i = 0; i < 500; i++) expect(expected[s.sample(l, [])]).toBeGreaterThan(0);
      // The boundary token (the least likely kept one) is reachable, so the set is not too small either.
      const kept = expected.filter((p) => p > 0).length;
      expect(kept).toBeGreaterThan(10);
    }
  });
});

describe("Sampler reproducibility", () => {
  const V = 1000;
  const l = randomLogits(V, 3);
  it("same seed, same draws; different seed, different draws", () => {
    const run = (seed: number, o: SamplingOptions = {}) => {
      const s = new Sampler({ ...o, seed, temperature: 1.5, topP: 1, minP: 0 }, V);
      return Array.from({ length: 100 }, () => s.sample(l, []));
    };
    expect(run(7)).toEqual(run(7));
    expect(run(7, { topK: 0 })).toEqual(run(7, { topK: 0 }));
    expect(run(7)).not.toEqual(run(8));
  });

  const equivalent: SamplingOptions[] = [
    { temperature: 0 },
    {},
    { temperature: 1.3, topK: 50, topP: 0.9, minP: 0 },
    { temperature: 0, repetitionPenalty: 1.5, penaltyLastN: 16 },
    { temperature: 1, topK: 8, repetitionPenalty: 1.8, presencePenalty: 0.5, frequencyPenalty: 0.3, penaltyLastN: 16 },
    { temperature: 1, topK: 5, logitBias: { 0: -Infinity, 1: -3, 2: -0.5 } },
  ];
  it.each(equivalent)("candidates and full logits give identical draws: %j", (o) => {
    // Make the top tokens the ones that get penalized/banned, so a too-small candidate set would differ.
    const logits = randomLogits(V, 4);
    const hot = topCandidates(logits, 16).ids;
    const remap = Float32Array.from(logits);
    [0, 1, 2].forEach((id, j) => ([remap[id], remap[hot[j]!]] = [remap[hot[j]!]!, remap[id]!]));
    const full = new Sampler({ ...o, seed: 99 }, V);
    const cand = new Sampler({ ...o, seed: 99 }, V);
    expect(cand.needs.fullLogits).toBe(false);
    const history = Array.from(hot);
    const a: number[] = [];
    const b: number[] = [];
    for (let i = 0; i < 300; i++) {
      a.push(full.sample(remap, history));
      b.push(cand.sample(topCandidates(remap, cand.needs.candidates), history));
      history.push(a[i]!);
    }
    expect(b).toEqual(a);
    if (o.temperature !== 0) expect(new Set(a).size).toBeGreaterThan(3);
  });
});
