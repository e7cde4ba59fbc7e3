// Serving many sequences at once (continuous batching) is exact and robust, on the built-in demo
// model on the CPU: sequences of different lengths started at different times give exactly the tokens
// they give alone (greedy, seeded, penalties), while the scheduler really batches them; a long prompt
// is prefilled in chunks between the decode steps of running sequences; KV admission control queues
// requests when blocks run out (never crashes, never hangs); aborted requests free their blocks.
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { measureServing } from "../lib/bench/serving.js";
import { Llama2 } from "../lib/llama2.js";
import type { ChatSession } from "../lib/session.js";
import { ensureDemoModel } from "../lib/synth/demo.js";
import type { GenerateOptions, GenerationResult, GenerationStream } from "../lib/types.js";

const DEMO_DIR = path.join(os.tmpdir(), "llama2-native-test-home", "models");

const GREEDY: GenerateOptions = { temperature: 0 };
const SEEDED: GenerateOptions = { temperature: 0.9, seed: 4321 };
const PENALTIES: GenerateOptions = { temperature: 0.7, seed: 99, topK: 0, repetitionPenalty: 1.3, penaltyLastN: -1 };

/** Deterministic pseudo-random token ids in [3, 32000). */
function ids(n: number, seed: number): number[] {
  let x = seed >>> 0 || 1;
  return Array.from({ length: n }, () => {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    return 3 + (x % 31997);
  });
}

interface Timed {
  result: GenerationResult;
  /** performance.now() of each chunk that carried a token. */
  times: number[];
}

/** Consumes a stream chunk by chunk, timing tokens; `onToken(n)` after the n-th token. */
async function consume(stream: GenerationStream, onToken?: (n: number) => void): Promise<Timed> {
  const times: number[] = [];
  for await (const c of stream) {
    if (c.tokenIds.length > 0) {
      times.push(performance.now());
      onToken?.(times.length);
    }
  }
  return { result: await stream.result, times };
}

interface Job {
  prompt: number[];
  opts: GenerateOptions;
}

const JOBS: Job[] = [
  { prompt: [1, ...ids(5, 1)], opts: { ...GREEDY, maxTokens: 40 } },
  { prompt: [1, ...ids(120, 2)], opts: { ...SEEDED, maxTokens: 25 } },
  { prompt: [1, ...ids(33, 3)], opts: { ...PENALTIES, maxTokens: 35 } },
  { prompt: [1, ...ids(300, 4)], opts: { ...GREEDY, maxTokens: 10 } },
  { prompt: [1, ...ids(17, 5)], opts: { ...SEEDED, seed: 9, maxTokens: 30 } },
  { prompt: [1, ...ids(64, 6)], opts: { ...GREEDY, maxTokens: 20 } },
  { prompt: [1, ...ids(700, 7)], opts: { ...SEEDED, seed: 10, maxTokens: 12 } }, // two prefill chunks
].map((j) => ({ ...j, opts: { ...j.opts, stopOnEos: false } }));

/** Starts job k+1 once job k has produced `after` tokens (or ended): staggered, overlapping starts. */
async function staggered(llama: Llama2, jobs: Job[], after = 2): Promise<Timed[]> {
  const out: Promise<Timed>[] = [];
  const start = (k: number): void => {
    if (k >= jobs.length) return;
    let next = false;
    const go = () => {
      if (!next) {
        next = true;
        start(k + 1);
      }
    };
    out[k] = consume(llama.generate(jobs[k]!.prompt, jobs[k]!.opts), (n) => n === after && go()).finally(go);
  };
  start(0);
  // out fills up as jobs start; wait until every one has started and ended.
  for (let k = 0; k < jobs.length; k++) {
    while (out[k] === undefined) await new Promise((r) => setTimeout(r, 1));
    await out[k];
  }
  return Promise.all(out);
}

let model: string;
let big: Llama2; // 2048-token context, no prefix cache
let bigCached: Llama2; // the same with the prefix cache
let small: Llama2; // 128 tokens x 2 sequences = 16 KV blocks, no prefix cache
let smallCached: Llama2;
const alone: GenerationResult[] = [];

beforeAll(async () => {
  model = await ensureDemoModel({ dir: DEMO_DIR });
  big = await Llama2.load(model, { device: "cpu", contextLength: 2048, maxSequences: 2, prefixCache: false });
  bigCached = await Llama2.load(model, { device: "cpu", contextLength: 2048, maxSequences: 2 });
  small = await Llama2.load(model, { device: "cpu", contextLength: 128, maxSequences: 2, prefixCache: false });
  smallCached = await Llama2.load(model, { device: "cpu", contextLength: 128, maxSequences: 2 });
}, 120_000);

afterAll(async () => {
  await Promise.all([big, bigCached, small, smallCached].map((l) => l?.dispose()));
});

describe("continuous batching on the demo model (CPU)", () => {
  it("staggered sequences of different lengths give exactly the tokens they give alone", async () => {
    for (const j of JOBS) alone.push(await big.generate(j.prompt, j.opts).result);
    expect(big.stats().scheduler.maxBatch).toBe(1);
    const steps0 = big.stats().scheduler.steps;
    const got = await staggered(big, JOBS);
    got.forEach((g, k) => {
      expect(g.result.tokenIds, `job ${k}`).toEqual(alone[k]!.tokenIds);
      expect(g.result.stats.finishReason).toBe("length");
    });
    const st = big.stats();
    expect(st.scheduler.maxBatch).toBeGreaterThan(2);
    // Batched: far fewer forward steps than the sum of every job's own steps.
    const own = JOBS.reduce((n, j) => n + (j.opts.maxTokens ?? 0) + Math.ceil(j.prompt.length / 512), 0);
    expect(st.scheduler.steps - steps0).toBeLessThan(own * 0.6);
    expect(st.kv.freeBlocks).toBe(st.kv.totalBlocks);
    console.log(`staggered: ${JOBS.length} jobs in ${st.scheduler.steps - steps0} steps (alone: ${own}), max batch ${st.scheduler.maxBatch}`);
  });

  it("the same with the prefix cache: staggered requests sharing a prefix fork it and stay exact", async () => {
    const shared = [1, ...ids(40, 77)];
    const jobs = JOBS.map((j, k) => ({ prompt: [...shared, ...j.prompt.slice(1, 1 + 30 + k * 7)], opts: j.opts }));
    const want: number[][] = [];
    for (const j of jobs) want.push((await big.generate(j.prompt, j.opts).result).tokenIds);
    const got = await staggered(bigCached, jobs);
    got.forEach((g, k) => expect(g.result.tokenIds, `job ${k}`).toEqual(want[k]));
    // The first request's prompt is cached once prefilled; later ones fork at least the shared part.
    expect(got.slice(1).every((g) => g.result.stats.cachedPromptTokens >= 32)).toBe(true);
    expect(bigCached.stats().scheduler.maxBatch).toBeGreaterThan(2);
  });

  it("a long prompt is prefilled in chunks while a running sequence keeps decoding", async () => {
    const long = [1, ...ids(1535, 8)];
    const t0 = performance.now();
    const longAlone = await big.generate(long, { ...GREEDY, maxTokens: 1 }).result;
    const prefillAlone = performance.now() - t0;
    const dec = { prompt: [1, ...ids(8, 9)], opts: { ...GREEDY, maxTokens: 300, stopOnEos: false } };
    const decAlone = await big.generate(dec.prompt, dec.opts).result;

    const decoder = big.generate(dec.prompt, dec.opts);
    let longStart = 0;
    let longFirst = 0;
    let longRun: Promise<GenerationResult> | undefined;
    const d = consume(decoder, (n) => {
      if (n === 5) {
        longStart = performance.now();
        const s = big.generate(long, { ...GREEDY, maxTokens: 1 });
        longRun = consume(s, () => (longFirst ||= performance.now())).then((t) => {
          // Let the decoder take a few more steps, then stop it.
          setTimeout(() => decoder.abort(), 20);
          return t.result;
        });
      }
    });
    const dr = await d;
    const lr = await longRun!;
    expect(lr.tokenIds).toEqual(longAlone.tokenIds);
    expect(dr.result.stats.finishReason).toBe("abort");
    expect(dr.result.tokenIds).toEqual(decAlone.tokenIds.slice(0, dr.result.tokenIds.length));
    // Tokens the decoder produced while the long prompt was being prefilled, and the longest pause.
    const during = dr.times.filter((t) => t > longStart && t < longFirst);
    const marks = [longStart, ...during, longFirst];
    let maxGap = 0;
    for (let i = 1; i < marks.length; i++) maxGap = Math.max(maxGap, marks[i]! - marks[i - 1]!);
    console.log(
      `chunked prefill: 1536-token prompt alone ${prefillAlone.toFixed(0)} ms; while it was prefilled (${(longFirst - longStart).toFixed(0)} ms) ` +
        `the decoder produced ${during.length} tokens, longest gap ${maxGap.toFixed(0)} ms`,
    );
    expect(during.length).toBeGreaterThanOrEqual(2); // one prefill step would allow at most 1
    // Without chunking the decoder would wait out the whole prefill in one gap.
    expect(maxGap).toBeLessThan((longFirst - longStart) * 0.8);
    expect(big.stats().kv.freeBlocks).toBe(big.stats().kv.totalBlocks);
  });
});

describe("KV admission control", () => {
  it("queues requests when blocks run out: all finish, exactly, at most as many at once as fit", async () => {
    expect(small.stats().kv.totalBlocks).toBe(16);
    // Each may need ceil((prompt + 60) / 16) + 1 = 7 or 8 blocks: two fit at a time.
    const jobs: Job[] = Array.from({ length: 10 }, (_, k) => ({
      prompt: [1, ...ids(20 + k * 2, 100 + k)],
      opts: { ...[GREEDY, SEEDED, PENALTIES][k % 3]!, maxTokens: 50 + k, stopOnEos: false },
    }));
    const want: number[][] = [];
    for (const j of jobs) want.push((await small.generate(j.prompt, j.opts).result).tokenIds);
    let live = 0;
    let maxLive = 0;
    let maxPending = 0;
    const got = await Promise.all(
      jobs.map((j) => {
        let first = true;
        return consume(small.generate(j.prompt, j.opts), () => {
          if (first) {
            first = false;
            maxLive = Math.max(maxLive, ++live);
          }
          maxPending = Math.max(maxPending, small.pending);
        }).finally(() => live--);
      }),
    );
    got.forEach((g, k) => expect(g.result.tokenIds, `job ${k}`).toEqual(want[k]));
    expect(maxLive).toBe(2);
    expect(maxPending).toBeGreaterThan(5);
    expect(small.stats().scheduler.maxBatch).toBe(2);
    expect(small.pending).toBe(0);
    expect(small.stats().kv.freeBlocks).toBe(16);
  });

  it("idle sessions holding the blocks are parked for a request (none waits forever); their next turns re-prompt and give the same ids", async () => {
    const turn = (i: number, k: number) => `Tell me a long story number ${i}, part ${k}.`;
    // (with a repetition penalty: its history is the new turn's tokens whether the session was parked or not)
    const dialog = async (s: ChatSession, i: number) => (await s.send(turn(i, 1), { ...GREEDY, maxTokens: 40, stopOnEos: false, repetitionPenalty: 1.5 }).result).tokenIds;
    // What each session's second turn gives when it never leaves the cache (one session at a time).
    const want: number[][] = [];
    for (const i of [0, 1]) {
      const s = small.createSession();
      await s.send(turn(i, 0), { ...GREEDY, maxTokens: 80, stopOnEos: false }).result;
      want.push(await dialog(s, i));
      s.dispose();
    }
    for (const llama of [small, smallCached]) {
      const sessions = [llama.createSession(), llama.createSession()];
      for (const [i, s] of sessions.entries()) await s.send(turn(i, 0), { ...GREEDY, maxTokens: 80, stopOnEos: false }).result;
      expect(llama.stats().kv.freeBlocks).toBeLessThanOrEqual(4);
      const r = await llama.generate([1, ...ids(30, 5)], { ...GREEDY, maxTokens: 60 }).result;
      expect(r.stats.completionTokens).toBeGreaterThan(0);
      expect(sessions.some((s) => s.cachedTokens === 0)).toBe(true); // at least one was parked
      for (const [i, s] of sessions.entries()) expect(await dialog(s, i)).toEqual(want[i]);
      for (const s of sessions) s.dispose();
      llama.clearPrefixCache();
      expect(llama.pending).toBe(0);
      expect(llama.stats().kv.freeBlocks).toBe(16);
    }
  });

  it("penalties look back on the new turn alike, whether the session was parked or kept its cache", async () => {
    const P = { ...GREEDY, stopOnEos: false, repetitionPenalty: 1.5, penaltyLastN: 64 };
    const second = async (park: boolean) => {
      const s = small.createSession();
      await s.send("Tell me a long story.", { ...P, maxTokens: 50 }).result;
      if (park) {
        const o = small.createSession(); // fills the cache: the request below parks s
        await o.send("Another story please.", { ...P, maxTokens: 60 }).result;
        await small.generate([1, ...Array.from({ length: 60 }, (_, i) => 100 + i)], { ...P, maxTokens: 40 }).result;
        expect(s.cachedTokens).toBe(0);
        o.dispose();
      }
      const r = await s.send("And then?", { ...P, maxTokens: 20 }).result;
      s.dispose();
      return r.tokenIds;
    };
    expect(await second(true)).toEqual(await second(false));
  });

  it("session turns waiting for KV room behind a running request: each gives up its KV in turn, all complete with the ids they give when nothing runs", async () => {
    const G = { ...GREEDY, stopOnEos: false };
    const run = async (llama: Llama2, busy: boolean) => {
      const [a, b, c] = [llama.createSession(), llama.createSession(), llama.createSession()];
      await a.send("Tell me a story 0.", { ...G, maxTokens: 60 }).result;
      await b.send("Tell me a story 1.", { ...G, maxTokens: 60 }).result;
      await c.send("Tell me a story 2.", { ...G, maxTokens: 45 }).result;
      llama.clearPrefixCache();
      const g = busy ? llama.generate([1, 5, 6, 7, 8, 9], { ...G, maxTokens: 10 }).result : undefined;
      const turns = [a, b, c].map((s, i) => s.send(`And then ${i}?`, { ...G, maxTokens: 40 }).result);
      await g;
      const ids = (await Promise.all(turns)).map((r) => r.tokenIds);
      for (const s of [a, b, c]) s.dispose();
      llama.clearPrefixCache();
      expect(llama.stats().kv.freeBlocks).toBe(llama.stats().kv.totalBlocks);
      return ids;
    };
    for (const llama of [small, smallCached]) expect(await run(llama, true)).toEqual(await run(llama, false));
  });

  it("aborted requests free their blocks: running, mid-prefill, queued, and a consumer that stops reading", async () => {
    for (const llama of [small, smallCached, big]) {
      const ac = new AbortController();
      const running = llama.generate([1, ...ids(20, 1)], { ...GREEDY, maxTokens: 80, stopOnEos: false, signal: ac.signal });
      const running2 = llama.generate([1, ...ids(25, 2)], { ...SEEDED, maxTokens: 80, stopOnEos: false });
      // On `small` these two wait for blocks; on `big` they run.
      const queued = llama.generate([1, ...ids(30, 3)], { ...GREEDY, maxTokens: 90 });
      const queued2 = llama.generate([1, ...ids(31, 4)], { ...GREEDY, maxTokens: 20 });
      let n = 0;
      for await (const c of running2) if (c.tokenIds.length && ++n === 3) break; // leaves the loop: aborts
      queued.abort();
      ac.abort();
      const [r1, r2, q1, q2] = await Promise.allSettled([running.result, running2.result, queued.result, queued2.result]);
      expect(r1).toMatchObject({ status: "fulfilled", value: { stats: { finishReason: "abort" } } });
      expect(r2).toMatchObject({ status: "fulfilled", value: { stats: { finishReason: "abort" } } });
      expect(q1.status === "rejected" ? (q1.reason as { code: string }).code : (q1 as PromiseFulfilledResult<GenerationResult>).value.stats.finishReason).toMatch(/ERR_ABORTED|abort/);
      expect(q2).toMatchObject({ status: "fulfilled", value: { stats: { finishReason: expect.stringMatching(/length|stop/) } } });
      if (llama === big) {
        // Abort in the middle of a chunked prefill (between chunks).
        const s = llama.generate([1, ...ids(1500, 6)], { ...GREEDY, maxTokens: 5 });
        const steps = llama.stats().scheduler.steps;
        while (llama.stats().scheduler.steps === steps) await new Promise((r) => setTimeout(r, 2));
        s.abort();
        const r = await s.result.catch((e: unknown) => e);
        expect(r).toMatchObject({ stats: { finishReason: "abort", completionTokens: 0 } });
      }
      llama.clearPrefixCache();
      expect(llama.pending).toBe(0);
      expect(llama.stats().kv.freeBlocks).toBe(llama.stats().kv.totalBlocks);
    }
  });
});

describe("serving bench (lib/bench/serving.ts)", () => {
  it("measures aggregate tokens/s and per-user ms/token at N concurrent streams", async () => {
    const r = await measureServing(bigCached, { streams: 6, promptTokens: 48, sharedPrefixTokens: 40, cacheSharedPrefix: true, maxTokens: 5, temperature: 0 });
    expect(r.completionTokens).toBe(30);
    expect(r.cachedPromptTokens).toBeGreaterThanOrEqual(6 * 32);
    expect(r.aggregateTokensPerSecond).toBeGreaterThan(0);
    expect(r.perUserMsPerToken.p50).toBeGreaterThan(0);
    expect(r.timeToFirstTokenMs.max).toBeGreaterThan(0);
    expect(r.steps).toBeLessThan(30);
    await expect(measureServing(bigCached, { streams: 1, promptTokens: 2040, maxTokens: 20 })).rejects.toThrow(/context length/);
  });
});
