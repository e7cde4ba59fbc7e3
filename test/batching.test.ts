// Continuous batching on the CPU engine: sequences of different prompt lengths decoding side by side
// give exactly the tokens they give alone (greedy and seeded sampling), long prompts are prefilled in
// chunks without changing anything, and KV admission control makes requests wait for room instead of
// failing (or fail with ERR_KV_CACHE_FULL when they can never fit).
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Scheduler } from "../lib/engine/scheduler.js";
import { Llama2 } from "../lib/llama2.js";
import { native, type NativeModel, type NativeStepOutput } from "../lib/native.js";
import { argmax, lastLogits, relErr } from "./helpers/logits.js";
import { describeShared, readSharedJson, sharedPath, timeoutScale } from "./helpers/shared.js";

const STORIES = "models/stories260K.bin";
const STORIES_FX = "fixtures/stories260K-greedy.json";

interface Case {
  prompt: number[];
  generated: number[];
}

describeShared("continuous batching (stories260K)", [STORIES, STORIES_FX], () => {
  const cases = readSharedJson<{ cases: Case[] }>(STORIES_FX).cases;
  let model: Llama2;
  beforeAll(async () => {
    // No prefix cache: every run prefills its whole prompt, alone or batched.
    model = await Llama2.load(sharedPath(STORIES), { device: "cpu", maxSequences: 8, prefixCache: false });
  });
  afterAll(() => model?.dispose());

  it("greedy: prompts of 1..40 tokens decoding together give exactly their tokens alone, in batches > 1", async () => {
    const n = 48;
    const alone: number[][] = [];
    for (const c of cases) alone.push((await model.generate(c.prompt, { temperature: 0, stopOnEos: false, maxTokens: n }).result).tokenIds);
    alone.forEach((ids, i) => expect(ids.slice(0, cases[i]!.generated.length)).toEqual(cases[i]!.generated.slice(0, n)));
    const before = model.stats().scheduler;
    // Staggered starts: some sequences prefill while others decode.
    const runs = cases.map(async (c, i) => {
      await new Promise((r) => setTimeout(r, i * 3));
      return (await model.generate(c.prompt, { temperature: 0, stopOnEos: false, maxTokens: n }).result).tokenIds;
    });
    const together = await Promise.all(runs);
    together.forEach((ids, i) => expect(ids).toEqual(alone[i]));
    const after = model.stats().scheduler;
    expect(after.maxBatch).toBeGreaterThan(1);
    // Fewer steps than tokens: steps were shared.
    expect(after.steps - before.steps).toBeLessThan(cases.length * n);
  });

  it("int8 KV cache: staggered prompts decoding together give exactly their tokens alone", async () => {
    const m = await Llama2.load(sharedPath(STORIES), { device: "cpu", maxSequences: 8, prefixCache: false, kvCacheType: "int8" });
    try {
      const n = 32;
      const alone: number[][] = [];
      for (const c of cases) alone.push((await m.generate(c.prompt, { temperature: 0, stopOnEos: false, maxTokens: n }).result).tokenIds);
      const together = await Promise.all(
        cases.map(async (c, i) => {
          await new Promise((r) => setTimeout(r, i * 3));
          return (await m.generate(c.prompt, { temperature: 0, stopOnEos: false, maxTokens: n }).result).tokenIds;
        }),
      );
      together.forEach((ids, i) => expect(ids).toEqual(alone[i]));
      expect(m.stats().scheduler.maxBatch).toBeGreaterThan(1);
    } finally {
      await m.dispose();
    }
  });

  it("seeded sampling: each sequence draws the same tokens batched as alone", async () => {
    const opts = (seed: number) => ({ temperature: 0.9, seed, stopOnEos: false, maxTokens: 40 });
    const alone: number[][] = [];
    for (const [i, c] of cases.entries()) alone.push((await model.generate(c.prompt, opts(100 + i)).result).tokenIds);
    const together = await Promise.all(cases.map((c, i) => model.generate(c.prompt, opts(100 + i)).result));
    together.forEach((r, i) => expect(r.tokenIds).toEqual(alone[i]));
    // Full-logits samplers (topK 0) in the same batch as candidate samplers.
    const mixed = await Promise.all([
      model.generate(cases[0]!.prompt, { ...opts(1), topK: 0, topP: 1, minP: 0 }).result,
      model.generate(cases[1]!.prompt, opts(101)).result,
      model.generate(cases[2]!.prompt, { temperature: 0, stopOnEos: false, maxTokens: 17 }).result,
    ]);
    const first = await model.generate(cases[0]!.prompt, { ...opts(1), topK: 0, topP: 1, minP: 0 }).result;
    expect(mixed[0].tokenIds).toEqual(first.tokenIds);
    expect(mixed[1].tokenIds).toEqual(alone[1]);
    expect(mixed[2].tokenIds).toEqual(cases[2]!.generated);
  });

  it("a prompt longer than the prefill chunk (512 on the CPU) gives the same logits and tokens", async () => {
    // Context 1024 (above the trained 512: RoPE extends; the values only need to be consistent).
    const m = await Llama2.load(sharedPath(STORIES), { device: "cpu", contextLength: 1024, maxSequences: 2, prefixCache: false });
    try {
      const prompt = Array.from({ length: 700 }, (_, i) => cases[3]!.prompt[i % cases[3]!.prompt.length]!);
      // Reference: the whole prompt in one native forward (no chunking), then greedy step by step.
      const whole = await lastLogits(m, prompt);
      const nm = m._native();
      const seq = nm.createSequence();
      const ref: number[] = [];
      try {
        let [out] = await nm.forward([{ seq, tokens: Int32Array.from(prompt), output: -1 }]);
        for (let i = 0; i < 8; i++) {
          const t = argmaxOf(out!);
          ref.push(t);
          [out] = await nm.forward([{ seq, tokens: Int32Array.of(t), output: -1 }]);
        }
      } finally {
        nm.freeSequence(seq);
      }
      const before = m.stats().scheduler.steps;
      const r = await m.generate(prompt, { temperature: 0, stopOnEos: false, maxTokens: 8 }).result;
      expect(r.tokenIds).toEqual(ref);
      // 700 tokens in chunks of 512: two prefill steps, then 7 decode steps.
      expect(m.stats().scheduler.steps - before).toBe(2 + 7);
      // While a long prompt is prefilled in chunks, a decoding sequence is unaffected.
      const [long, short] = await Promise.all([
        m.generate(prompt, { temperature: 0, stopOnEos: false, maxTokens: 8 }).result,
        m.generate(cases[0]!.prompt, { temperature: 0, stopOnEos: false, maxTokens: 30 }).result,
      ]);
      expect(long.tokenIds).toEqual(ref);
      expect(short.tokenIds).toEqual(cases[0]!.generated.slice(0, 30));
      expect(whole.length).toBe(512);
    } finally {
      await m.dispose();
    }
  });

  it("the scheduler with a small prefill chunk gives the logits of an unchunked prefill", async () => {
    const nm = model._native();
    const sched = new Scheduler(nm, { maxStepTokens: 24, prefillChunk: 16 });
    const prompt = [...cases[3]!.prompt, ...cases[3]!.generated.slice(0, 60)]; // 100 tokens
    const ref = await lastLogits(model, prompt);
    const seqs = [nm.createSequence(), nm.createSequence(), nm.createSequence()];
    try {
      // Three prompts at once through a 24-token step budget: chunks of at most 16 interleave.
      const outs: NativeStepOutput[] = await Promise.all([
        sched.eval(seqs[0]!, prompt, -1),
        sched.eval(seqs[1]!, prompt.slice(0, 37), -1),
        sched.eval(seqs[2]!, cases[0]!.prompt, -1),
      ]);
      expect(relErr(outs[0] as Float32Array, ref)).toBeLessThan(1e-6);
      expect(relErr(outs[1] as Float32Array, await lastLogits(model, prompt.slice(0, 37)))).toBeLessThan(1e-6);
      expect(relErr(outs[2] as Float32Array, await lastLogits(model, cases[0]!.prompt))).toBeLessThan(1e-6);
      expect(sched.stats.steps).toBeGreaterThanOrEqual(Math.ceil((100 + 37 + 17) / 24));
      expect(sched.stats.tokens).toBe(100 + 37 + 17);
      expect(sched.stats.maxBatch).toBeGreaterThan(1);
      expect(seqs.map((s) => nm.sequenceLength(s))).toEqual([100, 37, 17]);
    } finally {
      seqs.forEach((s) => nm.freeSequence(s));
    }
  });

  it("output -2 gives every token's logits, gathered over chunks capped by maxStepOutputs, beside decoding sequences", async () => {
    const nm = model._native();
    const sched = new Scheduler(nm, { maxStepTokens: 24, prefillChunk: 16, maxStepOutputs: 8 });
    const text = [...cases[1]!.prompt, ...cases[1]!.generated.slice(0, 20)];
    const [scored, other] = [nm.createSequence(), nm.createSequence()];
    try {
      const V = model.info.config.vocabSize;
      // A decoding sequence shares the steps: each of its steps takes one of the 8 output rows.
      const decode = (async () => {
        let next: number[] = cases[0]!.prompt;
        for (let k = 0; k < 6; k++) next = [argmax((await sched.eval(other, next, -1)) as Float32Array)];
      })();
      const rows = (await sched.eval(scored, text, -2)) as Float32Array;
      await decode;
      expect(rows.length).toBe(text.length * V);
      for (const r of [0, 1, 7, 8, 15, 16, text.length - 1]) {
        expect(relErr(rows.subarray(r * V, (r + 1) * V), await lastLogits(model, text.slice(0, r + 1))), `row ${r}`).toBeLessThan(1e-6);
      }
      expect(sched.stats.steps).toBeGreaterThanOrEqual(Math.ceil(text.length / 8));
      expect(nm.sequenceLength(scored)).toBe(text.length);
    } finally {
      nm.freeSequence(scored);
      nm.freeSequence(other);
    }
  });

  it("every: top-k candidates for every token (draft verification) equal each row's own top-k, over capped chunks", async () => {
    const nm = model._native();
    const sched = new Scheduler(nm, { maxStepTokens: 24, prefillChunk: 16, maxStepOutputs: 8 });
    const text = [...cases[2]!.prompt, ...cases[2]!.generated.slice(0, 12)];
    const [a, b] = [nm.createSequence(), nm.createSequence()];
    try {
      const V = model.info.config.vocabSize;
      const k = 5;
      const [cands, full] = await Promise.all([sched.eval(a, text, k, undefined, true), sched.eval(b, text, -1, undefined, true)]);
      const c = cands as { ids: Int32Array; logits: Float32Array };
      const f = full as Float32Array;
      expect(c.ids.length).toBe(text.length * k);
      expect(f.length).toBe(text.length * V);
      for (let r = 0; r < text.length; r++) {
        const row = f.subarray(r * V, (r + 1) * V);
        const best = Array.from(row.keys()).sort((x, y) => row[y]! - row[x]! || x - y).slice(0, k);
        expect(Array.from(c.ids.subarray(r * k, (r + 1) * k)), `row ${r}`).toEqual(best);
        expect(Array.from(c.logits.subarray(r * k, (r + 1) * k))).toEqual(best.map((i) => row[i]!));
      }
      // Native requests refuse a non-boolean every.
      const s = nm.createSequence();
      expect(() => nm.forward([{ seq: s, tokens: Int32Array.of(1), output: 1, every: 1 as never }])).toThrow(expect.objectContaining({ code: "ERR_INVALID_ARGUMENT" }));
      nm.freeSequence(s);
    } finally {
      nm.freeSequence(a);
      nm.freeSequence(b);
    }
  });

  it("a step holds at most maxStepSequences (the backend's limit): the rest decode in the next steps, same tokens", async () => {
    const nm = model._native();
    expect(nm.info().maxStepSequences).toBeGreaterThanOrEqual(256);
    const sched = new Scheduler(nm, { maxStepTokens: 512, prefillChunk: 512, maxStepSequences: 2 });
    const seqs = cases.map(() => nm.createSequence());
    try {
      const greedy = async (i: number) => {
        const ids: number[] = [];
        let next: number[] = cases[i]!.prompt;
        for (let k = 0; k < 12; k++) {
          const out = (await sched.eval(seqs[i]!, next, -1)) as Float32Array;
          const id = argmax(out);
          ids.push(id);
          next = [id];
        }
        return ids;
      };
      const ids = await Promise.all(cases.map((_, i) => greedy(i)));
      ids.forEach((got, i) => expect(got).toEqual(cases[i]!.generated.slice(0, 12)));
      expect(sched.stats.maxBatch).toBe(2);
      expect(sched.stats.steps).toBeGreaterThanOrEqual(Math.ceil((cases.length * 12) / 2));
    } finally {
      seqs.forEach((s) => nm.freeSequence(s));
    }
  });

  it("a step naming a freed sequence fails only that request: the others of the step get their logits", async () => {
    const nm = model._native();
    const sched = new Scheduler(nm, { maxStepTokens: 512, prefillChunk: 512 });
    const [a, b, gone] = [nm.createSequence(), nm.createSequence(), nm.createSequence()];
    nm.freeSequence(gone);
    try {
      const ref = await lastLogits(model, cases[0]!.prompt);
      const outs = await Promise.allSettled([sched.eval(a, cases[0]!.prompt, -1), sched.eval(gone, [1, 2], -1), sched.eval(b, cases[0]!.prompt, -1)]);
      expect(outs[1]).toMatchObject({ status: "rejected", reason: { code: "ERR_UNKNOWN_SEQUENCE" } });
      for (const o of [outs[0], outs[2]]) {
        expect(o!.status).toBe("fulfilled");
        expect(Array.from((o as PromiseFulfilledResult<NativeStepOutput>).value as Float32Array)).toEqual(Array.from(ref));
      }
    } finally {
      nm.freeSequence(a);
      nm.freeSequence(b);
    }
  });

  it("more concurrent requests than maxSequences: the extra ones wait for KV room, all complete", async () => {
    const m = await Llama2.load(sharedPath(STORIES), { device: "cpu", maxSequences: 2, contextLength: 128 });
    try {
      // Each may need the whole context: at most two fit at once.
      const runs = [...cases, ...cases].map((c) => m.generate(c.prompt, { temperature: 0, stopOnEos: false }).result);
      const results = await Promise.all(runs);
      results.forEach((r, i) => {
        const c = cases[i % cases.length]!;
        expect(r.stats.finishReason).toBe("length");
        expect(r.tokenIds.slice(0, c.generated.length)).toEqual(c.generated.slice(0, r.tokenIds.length));
        expect(c.prompt.length + r.tokenIds.length).toBeGreaterThanOrEqual(128);
      });
      expect(m.stats().kv.freeBlocks).toBeLessThanOrEqual(m.stats().kv.totalBlocks);
    } finally {
      await m.dispose();
    }
  });

  it("maxSequences 1: two requests each needing the full context run one after the other", async () => {
    const m = await Llama2.load(sharedPath(STORIES), { device: "cpu", maxSequences: 1, contextLength: 64, prefixCache: false });
    try {
      const order: string[] = [];
      const run = async (name: string, c: Case) => {
        const s = m.generate(c.prompt, { temperature: 0, stopOnEos: false });
        let first = true;
        for await (const chunk of s) {
          if (first && chunk.tokenIds.length) order.push(`${name} first token`);
          first = false;
        }
        order.push(`${name} done`);
        return s.result;
      };
      const [a, b] = await Promise.all([run("a", cases[0]!), run("b", cases[2]!)]);
      expect(order).toEqual(["a first token", "a done", "b first token", "b done"]);
      expect(a.tokenIds).toEqual(cases[0]!.generated.slice(0, a.tokenIds.length));
      expect(b.tokenIds.slice(0, cases[2]!.generated.length)).toEqual(cases[2]!.generated);
      expect(cases[0]!.prompt.length + a.tokenIds.length).toBeGreaterThanOrEqual(64);
      expect(m.stats().scheduler.maxBatch).toBe(1);
      expect(m.stats().kv.freeBlocks).toBe(m.stats().kv.totalBlocks);
    } finally {
      await m.dispose();
    }
  });

  it("a request that can never fit the KV cache -> ERR_KV_CACHE_FULL (the model stays usable)", async () => {
    const m = await Llama2.load(sharedPath(STORIES), { device: "cpu", maxSequences: 1, contextLength: 64, prefixCache: false });
    try {
      // A sequence held outside any generation takes the cache; a request needing it all cannot fit.
      const nm = m._native();
      const held = nm.createSequence();
      await nm.forward([{ seq: held, tokens: Int32Array.from(cases[3]!.prompt), output: 0 }]);
      const err = await m.generate(cases[0]!.prompt, { temperature: 0, stopOnEos: false }).result.catch((e) => e);
      expect(err).toMatchObject({ code: "ERR_KV_CACHE_FULL" });
      expect(String(err.message)).toMatch(/KV cache/);
      nm.freeSequence(held);
      const r = await m.generate(cases[0]!.prompt, { temperature: 0, stopOnEos: false, maxTokens: 5 }).result;
      expect(r.tokenIds).toEqual(cases[0]!.generated.slice(0, 5));
    } finally {
      await m.dispose();
    }
  });

  // Copy-on-write of a KV block shared by forked sequences. The engine's own sequences, through the addon
  // (public as `nativeAddon`), whose forward() calls may run concurrently (steps take turns natively).
  describe("forked sequences sharing a partly filled KV block", () => {
    const prompt = [1, 50, 60, 70, 80];
    const next = [90];
    const other = [300, 301, 302, 303, 304, 305, 306, 307, 308, 309];
    let nm: NativeModel;
    let want: Float32Array;
    const fresh = async (tokens: number[]) => {
      const s = nm.createSequence();
      const out = (await nm.forward([{ seq: s, tokens: Int32Array.from(tokens), output: -1 }]))[0] as Float32Array;
      nm.freeSequence(s);
      return out;
    };
    const same = (a: Float32Array, b: Float32Array) => a.length === b.length && a.every((v, j) => Object.is(v, b[j]));
    beforeAll(async () => {
      nm = await native().loadModel(sharedPath(STORIES), { device: "cpu", contextLength: 64, maxSequences: 8, threads: 1 });
      want = await fresh([...prompt, ...next]);
    });
    afterAll(() => nm?.dispose());

    it("both sharers in one step each get their own copy: the logits of unshared sequences", async () => {
      const a = nm.createSequence();
      await nm.forward([{ seq: a, tokens: Int32Array.from(prompt), output: 0 }]);
      const b = nm.forkSequence(a);
      const free = nm.kvState().freeBlocks;
      const [oa, ob] = await nm.forward([
        { seq: a, tokens: Int32Array.from(next), output: -1 },
        { seq: b, tokens: Int32Array.from(other), output: -1 },
      ]);
      expect(same(oa as Float32Array, want)).toBe(true);
      expect(same(ob as Float32Array, await fresh([...prompt, ...other]))).toBe(true);
      // The shared block went back to the pool once both had copied it: one block each, net.
      expect(nm.kvState().freeBlocks).toBe(free - 1);
      nm.freeSequence(a);
      nm.freeSequence(b);
      expect(nm.kvState().freeBlocks).toBe(nm.kvState().totalBlocks);
    });

    it("a sharer truncated and extended in a concurrent step never writes into the block being copied", async () => {
      // Was a race (found reviewing engine.cc while running scripts/sanitizer-test.sh): a's step released
      // its reference on the shared block before copying it; b, truncated into that block, then saw itself
      // its only owner and wrote positions 2.. in place, and when b's step took the step lock first, a's copy
      // carried b's tokens into a's cache (~0.3% of these runs on two cores). The busy wait sweeps the timing.
      // One compute thread (the model above): the race is between two steps on libuv's workers, not in the
      // pool. With 2 threads, a run beside the emulator tests in CI took ~20x its 2.3 ms alone (the pool then
      // waited for descheduled workers), and the span measured under that load stretched every busy wait:
      // 117 s, then a 120 s timeout. Timed on this VM with two busy loops beside it: 9 s for
      // 2500 runs; the old code (mutation) fails 12 of 2500 alone and 28 under that load. The time budget
      // keeps a machine slower still from timing out; it runs at least 150.
      const maxRuns = 2500;
      const budgetMs = 45_000 * timeoutScale;
      const minRuns = 150;
      let wrong = 0;
      const long = Int32Array.from({ length: 16 }, (_, j) => j + 3);
      // b's step lands in the window when it comes about as c's step ends: sweep 0..1.5x c's duration,
      // re-measured at the start of each 50-run sweep so that the span follows the machine's load.
      const measureSpan = async () => {
        const times: number[] = [];
        for (let i = 0; i < 5; i++) {
          const c = nm.createSequence();
          const t0 = performance.now();
          await nm.forward([{ seq: c, tokens: long, output: 0 }]);
          times.push(performance.now() - t0);
          nm.freeSequence(c);
        }
        return 1.5 * times.sort((x, y) => x - y)[2]!;
      };
      let span = 0;
      let runs = 0;
      const deadline = performance.now() + budgetMs;
      for (; runs < maxRuns && (runs < minRuns || performance.now() < deadline); runs++) {
        const i = runs;
        if (i % 50 === 0) span = await measureSpan();
        const a = nm.createSequence();
        await nm.forward([{ seq: a, tokens: Int32Array.from(prompt), output: 0 }]);
        const b = nm.forkSequence(a);
        const c = nm.createSequence(); // a longer step that a's and b's wait behind
        const pc = nm.forward([{ seq: c, tokens: long, output: 0 }]);
        await new Promise((r) => setTimeout(r, 1));
        const pa = nm.forward([{ seq: a, tokens: Int32Array.from(next), output: -1 }]);
        const t0 = performance.now();
        while (performance.now() - t0 < ((i % 50) / 50) * span);
        nm.truncateSequence(b, 2);
        const pb = nm.forward([{ seq: b, tokens: Int32Array.from(other), output: 0 }]);
        const [oa] = await pa;
        await Promise.all([pb, pc]);
        if (!same(oa as Float32Array, want)) wrong++;
        for (const s of [a, b, c]) nm.freeSequence(s);
      }
      if (runs < maxRuns) console.log(`copy-on-write race: ${runs} of ${maxRuns} runs within ${budgetMs / 1000} s`);
      expect(wrong, `${wrong} of ${runs} runs`).toBe(0);
      expect(nm.kvState().freeBlocks).toBe(nm.kvState().totalBlocks);
    }, 180_000 * timeoutScale);
  });
});

function argmaxOf(out: NativeStepOutput): number {
  const a = out as Float32Array;
  let k = 0;
  for (let i = 1; i < a.length; i++) if (a[i]! > a[k]!) k = i;
  return k;
}
