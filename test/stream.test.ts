import { getEventListeners } from "node:events";
import { setTimeout as sleep } from "node:timers/promises";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { InvalidArgumentError, Llama2Error } from "../lib/errors.js";
import { createGenerationStream, type GenerationRun } from "../lib/stream.js";
import type { FinishReason, GenerationChunk, GenerationResult, GenerationStats } from "../lib/types.js";

function stats(finishReason: FinishReason = "stop", completionTokens = 0): GenerationStats {
  return {
    promptTokens: 1,
    cachedPromptTokens: 0,
    completionTokens,
    timeToFirstTokenMs: 1,
    promptTokensPerSecond: 1,
    tokensPerSecond: 1,
    totalMs: 1,
    finishReason,
  };
}
const chunk = (text: string, id: number): GenerationChunk => ({ text, tokenIds: [id] });
const result = (text: string, finishReason: FinishReason = "stop"): GenerationResult => ({
  text,
  tokenIds: [],
  stats: stats(finishReason),
});

/** A run that emits one token per tick until `n` tokens or an abort. */
function ticking(n: number, seen?: { signal?: AbortSignal }): GenerationRun {
  return async (emit, signal) => {
    if (seen) seen.signal = signal;
    let text = "";
    for (let i = 0; i < n; i++) {
      if (signal.aborted) return result(text, "abort");
      await sleep(1);
      text += "t";
      emit(chunk("t", i));
    }
    emit({ text: "", tokenIds: [], stats: stats("stop", n) });
    return result(text);
  };
}

async function collect(stream: AsyncIterable<GenerationChunk>): Promise<GenerationChunk[]> {
  const out: GenerationChunk[] = [];
  for await (const c of stream) out.push(c);
  return out;
}

describe("createGenerationStream", () => {
  let unhandled: unknown[] = [];
  const onUnhandled = (e: unknown) => unhandled.push(e);
  beforeEach(() => {
    unhandled = [];
    process.on("unhandledRejection", onUnhandled);
  });
  afterEach(() => {
    process.off("unhandledRejection", onUnhandled);
  });

  it("buffers chunks for a slow consumer and ends after the stats chunk", async () => {
    const s = createGenerationStream(async (emit) => {
      emit(chunk("a", 1));
      emit(chunk("b", 2));
      emit({ text: "c", tokenIds: [3], stats: stats() });
      emit(chunk("ignored: after the final chunk", 4));
      return result("abc");
    });
    await sleep(5); // everything is emitted before anyone iterates
    const chunks = await collect(s);
    expect(chunks.map((c) => c.text)).toEqual(["a", "b", "c"]);
    expect(chunks[2]!.stats?.finishReason).toBe("stop");
    expect((await s.result).text).toBe("abc");
    const it = s[Symbol.asyncIterator]();
    expect(await it.next()).toEqual({ value: undefined, done: true });
  });

  it("delivers chunks to a consumer that waits for them, and concurrent next() calls in order", async () => {
    const s = createGenerationStream(ticking(3));
    const it = s[Symbol.asyncIterator]();
    const pending = [it.next(), it.next(), it.next(), it.next(), it.next()];
    const got = await Promise.all(pending);
    expect(got.map((r) => (r.done ? "done" : r.value.tokenIds[0] ?? "stats"))).toEqual([0, 1, 2, "stats", "done"]);
  });

  it("appends a stats chunk when run did not emit one", async () => {
    const s = createGenerationStream(async (emit) => {
      emit(chunk("x", 1));
      return { text: "x", tokenIds: [1], stats: stats("length", 1) };
    });
    const chunks = await collect(s);
    expect(chunks).toEqual([chunk("x", 1), { text: "", tokenIds: [], stats: stats("length", 1) }]);
  });

  it("rejects next() after the buffered chunks, and result, with run's error", async () => {
    const boom = new Llama2Error("ERR_CUDA", "device fault");
    const s = createGenerationStream(async (emit) => {
      emit(chunk("a", 1));
      await sleep(1);
      throw boom;
    });
    const it = s[Symbol.asyncIterator]();
    expect((await it.next()).value).toEqual(chunk("a", 1));
    await expect(it.next()).rejects.toBe(boom);
    await expect(s.result).rejects.toBe(boom);
    expect(await it.next()).toEqual({ value: undefined, done: true });
  });

  it("wraps untyped errors and synchronous throws in Llama2Error", async () => {
    const s = createGenerationStream(() => {
      throw new Error("plain");
    });
    await expect(s.result).rejects.toMatchObject({ code: "ERR_INTERNAL", message: "plain" });
    await expect(collect(s)).rejects.toBeInstanceOf(Llama2Error);
  });

  it("does not cause an unhandled rejection when a failing stream is ignored, only iterated, or only awaited", async () => {
    const fail: GenerationRun = async () => {
      await sleep(1);
      throw new Llama2Error("ERR_OUT_OF_MEMORY", "oom");
    };
    createGenerationStream(fail); // never consumed
    await expect(collect(createGenerationStream(fail))).rejects.toThrow("oom"); // result never touched
    await expect(createGenerationStream(fail).result).rejects.toThrow("oom"); // never iterated
    await sleep(20);
    await new Promise((r) => setImmediate(r));
    expect(unhandled).toEqual([]);
  });

  it("abort() aborts the signal run watches", async () => {
    const seen: { signal?: AbortSignal } = {};
    const s = createGenerationStream(ticking(1000, seen));
    await sleep(5);
    s.abort();
    expect(seen.signal?.aborted).toBe(true);
    expect((seen.signal?.reason as Llama2Error).code).toBe("ERR_ABORTED");
    const res = await s.result;
    expect(res.stats.finishReason).toBe("abort");
    expect(res.text.length).toBeLessThan(1000);
    // The synthesized final chunk reports the abort to iterators too.
    const chunks = await collect(s);
    expect(chunks.at(-1)?.stats?.finishReason).toBe("abort");
  });

  it("the external AbortSignal aborts it (reason forwarded), and its listener is removed afterwards", async () => {
    const ac = new AbortController();
    const seen: { signal?: AbortSignal } = {};
    const s = createGenerationStream(ticking(1000, seen), ac.signal);
    expect(getEventListeners(ac.signal, "abort")).toHaveLength(1);
    await sleep(5);
    ac.abort("user cancelled");
    expect(seen.signal?.aborted).toBe(true);
    expect(seen.signal?.reason).toBe("user cancelled");
    expect((await s.result).stats.finishReason).toBe("abort");
    expect(getEventListeners(ac.signal, "abort")).toHaveLength(0);
  });

  it("an already-aborted external signal aborts before run starts", async () => {
    let abortedAtStart: boolean | undefined;
    const s = createGenerationStream(async (_emit, signal) => {
      abortedAtStart = signal.aborted;
      return result("", signal.aborted ? "abort" : "stop");
    }, AbortSignal.abort());
    expect(abortedAtStart).toBe(true);
    expect((await s.result).stats.finishReason).toBe("abort");
  });

  it("breaking out of for-await aborts generation; result still resolves", async () => {
    const seen: { signal?: AbortSignal } = {};
    const s = createGenerationStream(ticking(1000, seen));
    let n = 0;
    for await (const _ of s) if (++n === 2) break;
    expect(seen.signal?.aborted).toBe(true);
    expect((seen.signal?.reason as Llama2Error).code).toBe("ERR_ABORTED");
    expect((await s.result).stats.finishReason).toBe("abort");
    expect(await s[Symbol.asyncIterator]().next()).toEqual({ value: undefined, done: true });
  });

  it("abort() after completion is a no-op", async () => {
    const ac = new AbortController();
    const seen: { signal?: AbortSignal } = {};
    const s = createGenerationStream(ticking(2, seen), ac.signal);
    await collect(s);
    await s.result;
    s.abort();
    ac.abort();
    expect(seen.signal?.aborted).toBe(false);
  });

  it("rejects a signal that is not an AbortSignal", () => {
    expect(() => createGenerationStream(ticking(1), {} as AbortSignal)).toThrow(InvalidArgumentError);
    expect(() => createGenerationStream(ticking(1), "x" as unknown as AbortSignal)).toThrow(/signal/);
  });
});
