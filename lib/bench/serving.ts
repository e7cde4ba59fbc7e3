// Serving throughput: N concurrent streams against one loaded model (continuous batching), the way a
// chat server drives it. Reports aggregate generated tokens/s and what each user sees: time to the
// first token, ms per token after it, and the longest pause between two tokens. Prompts are token
// ids (no tokenizer needed); an optional shared start of every prompt models a common system prompt,
// optionally cached up front with the prefix cache.
import type { Llama2 } from "../llama2.js";
import { percentiles, type Percentiles } from "../runner/percentiles.js";

export interface ServingBenchOptions {
  /** Concurrent streams. */
  streams: number;
  /** Prompt length of every stream, BOS included. */
  promptTokens: number;
  /** Tokens generated per stream (EOS does not stop them). */
  maxTokens: number;
  /** How many leading prompt tokens all streams share (default 0: all prompts differ from the 2nd token). */
  sharedPrefixTokens?: number;
  /** `llama.cachePrefix` the shared tokens before starting (default false). */
  cacheSharedPrefix?: boolean;
  /** Start stream i at i * staggerMs (default 0: all at once). */
  staggerMs?: number;
  /** Sampling temperature (default 0.8; 0 = greedy). */
  temperature?: number;
  /** Seeds the prompts and sampling (default 1). */
  seed?: number;
  signal?: AbortSignal;
}

export interface ServingBenchResult {
  streams: number;
  promptTokens: number;
  maxTokens: number;
  sharedPrefixTokens: number;
  wallMs: number;
  completionTokens: number;
  /** Prompt tokens taken from the KV cache instead of prefilled, over all streams. */
  cachedPromptTokens: number;
  /** Generated tokens of all streams / wall time. */
  aggregateTokensPerSecond: number;
  /** Per stream: (last token - first token) / (tokens - 1). */
  perUserMsPerToken: Percentiles;
  timeToFirstTokenMs: Percentiles;
  /** Per stream: the longest pause between two of its tokens. */
  maxGapMs: Percentiles;
  /** Scheduler figures of this run: forward steps, tokens evaluated, ms inside forward calls. */
  steps: number;
  evaluatedTokens: number;
  forwardMs: number;
  /** Largest batch seen by the model so far (a running maximum, not only this run). */
  maxBatch: number;
  /** Time spent in cachePrefix before the streams started (cacheSharedPrefix). */
  cachePrefixMs: number;
}

function prompt(n: number, shared: number, stream: number, seed: number, vocab: number): number[] {
  const ids = [1];
  let x = (seed * 2654435761) >>> 0 || 1;
  let y = ((seed + 1 + stream) * 2246822519) >>> 0 || 1;
  for (let i = 1; i < n; i++) {
    if (i < shared) x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    else y = (Math.imul(y, 1664525) + 1013904223) >>> 0;
    ids.push(3 + ((i < shared ? x : y) % (vocab - 3)));
  }
  return ids;
}

export async function measureServing(llama: Llama2, o: ServingBenchOptions): Promise<ServingBenchResult> {
  const vocab = llama.info.config.vocabSize;
  const seed = o.seed ?? 1;
  const shared = Math.min(o.sharedPrefixTokens ?? 0, o.promptTokens);
  if (o.promptTokens + o.maxTokens > llama.info.contextLength) {
    throw new RangeError(`promptTokens + maxTokens = ${o.promptTokens + o.maxTokens} exceeds the context length ${llama.info.contextLength}`);
  }
  const prompts = Array.from({ length: o.streams }, (_, i) => prompt(o.promptTokens, shared, i, seed, vocab));
  let cachePrefixMs = 0;
  if (o.cacheSharedPrefix && shared > 0) {
    const t = performance.now();
    await llama.cachePrefix(prompts[0]!.slice(0, shared), { ...(o.signal && { signal: o.signal }) });
    cachePrefixMs = performance.now() - t;
  }
  const before = llama.stats().scheduler;
  const t0 = performance.now();
  const perStream = await Promise.all(
    prompts.map(async (p, i) => {
      if (o.staggerMs) await new Promise((r) => setTimeout(r, i * o.staggerMs!));
      const start = performance.now();
      const stream = llama.generate(p, {
        maxTokens: o.maxTokens,
        stopOnEos: false,
        temperature: o.temperature ?? 0.8,
        seed: seed * 100_003 + i,
        ...(o.signal && { signal: o.signal }),
      });
      const times: number[] = [];
      for await (const c of stream) if (c.tokenIds.length > 0) times.push(performance.now());
      const r = await stream.result;
      let gap = 0;
      for (let k = 1; k < times.length; k++) gap = Math.max(gap, times[k]! - times[k - 1]!);
      return {
        tokens: r.tokenIds.length,
        cached: r.stats.cachedPromptTokens,
        ttft: times.length ? times[0]! - start : NaN,
        msPerToken: times.length > 1 ? (times.at(-1)! - times[0]!) / (times.length - 1) : NaN,
        gap,
      };
    }),
  );
  const wallMs = performance.now() - t0;
  const after = llama.stats().scheduler;
  const completionTokens = perStream.reduce((n, s) => n + s.tokens, 0);
  const finite = (v: number[]) => v.filter((x) => Number.isFinite(x));
  return {
    streams: o.streams,
    promptTokens: o.promptTokens,
    maxTokens: o.maxTokens,
    sharedPrefixTokens: shared,
    wallMs,
    completionTokens,
    cachedPromptTokens: perStream.reduce((n, s) => n + s.cached, 0),
    aggregateTokensPerSecond: completionTokens / (wallMs / 1000),
    perUserMsPerToken: percentiles(finite(perStream.map((s) => s.msPerToken))),
    timeToFirstTokenMs: percentiles(finite(perStream.map((s) => s.ttft))),
    maxGapMs: percentiles(perStream.map((s) => s.gap)),
    steps: after.steps - before.steps,
    evaluatedTokens: after.tokens - before.tokens,
    forwardMs: after.forwardMs - before.forwardMs,
    maxBatch: after.maxBatch,
    cachePrefixMs,
  };
}

/** measureServing for each stream count, after one small warm-up run. */
export async function measureServingSweep(
  llama: Llama2,
  streams: number[],
  base: Omit<ServingBenchOptions, "streams">,
  log: (msg: string) => void = () => {},
): Promise<ServingBenchResult[]> {
  await measureServing(llama, { ...base, streams: 1, maxTokens: Math.min(4, base.maxTokens) });
  const out: ServingBenchResult[] = [];
  for (const n of streams) {
    const r = await measureServing(llama, { ...base, streams: n });
    log(
      `${n} streams: ${r.aggregateTokensPerSecond.toFixed(1)} tok/s aggregate, ${r.perUserMsPerToken.p50} ms/token per user (p50), ` +
        `TTFT p50 ${r.timeToFirstTokenMs.p50} ms, max batch ${r.maxBatch}`,
    );
    out.push(r);
  }
  return out;
}
