// The public API on real models (CPU): streaming, stats, every finish reason, stop strings across
// token boundaries, seeds, sessions that keep their KV cache, concurrency, abort and dispose.
// tiny-llama GGUF carries a tokenizer (text APIs); stories260K is used through token ids.
import { getEventListeners } from "node:events";
import { afterAll, beforeAll, expect, it } from "vitest";
import { llama2Template } from "../lib/chat-template.js";
import { Llama2Error } from "../lib/errors.js";
import { Llama2 } from "../lib/llama2.js";
import type { GenerationChunk, GenerationStream } from "../lib/types.js";
import { argmax, lastLogits } from "./helpers/logits.js";
import { describeShared, readSharedJson, sharedPath } from "./helpers/shared.js";

const TINY = "models/tiny-llama-f16.gguf";
const STORIES = "models/stories260K.bin";
const STORIES_FX = "fixtures/stories260K-greedy.json";

async function collect(s: GenerationStream): Promise<GenerationChunk[]> {
  const out: GenerationChunk[] = [];
  for await (const c of s) out.push(c);
  return out;
}

async function outcome(p: Promise<unknown>): Promise<unknown> {
  try {
    return await p;
  } catch (err) {
    return err;
  }
}

/**
 * A logit bias for EOS that makes greedy decoding of `prompt` end with EOS at the first step >= `from`
 * where it can: the bias lies between that step's EOS margin and every earlier one. Returns the step
 * and the ids generated before it. Margins come from teacher-forced native logits.
 */
async function eosBiasAt(model: Llama2, prompt: number[], from: number, upTo = 24): Promise<{ bias: number; step: number; before: number[] }> {
  const eos = model.info.eosId;
  const ids = (await model.generate(prompt, { temperature: 0, stopOnEos: false, maxTokens: upTo }).result).tokenIds;
  let minBefore = Infinity;
  for (let t = 0; t < ids.length; t++) {
    const logits = await lastLogits(model, [...prompt, ...ids.slice(0, t)]);
    const margin = logits[argmax(logits)]! - logits[eos]!;
    if (t >= from && margin < minBefore - 1e-3) return { bias: (margin + minBefore) / 2, step: t, before: ids.slice(0, t) };
    minBefore = Math.min(minBefore, margin);
  }
  throw new Error("no step where EOS can be made the greedy choice");
}

describeShared("Llama2 API on real models", [TINY, STORIES, STORIES_FX], () => {
  const fx = readSharedJson<{ cases: { prompt: number[]; generated: number[] }[] }>(STORIES_FX).cases;
  let tiny: Llama2;
  let stories: Llama2;
  beforeAll(async () => {
    tiny = await Llama2.load(sharedPath(TINY), { device: "cpu" });
    stories = await Llama2.load(sharedPath(STORIES), { device: "cpu" });
  });
  afterAll(async () => {
    await tiny?.dispose();
    await stories?.dispose();
  });

  it("streamed chunks concatenate to result.text; the final chunk alone carries sane stats", async () => {
    const prompt = tiny.tokenize("Once upon a time", { bos: true });
    const s = tiny.generate("Once upon a time", { temperature: 0, stopOnEos: false, maxTokens: 20 });
    const chunks = await collect(s);
    const r = await s.result;
    expect(chunks.map((c) => c.text).join("")).toBe(r.text);
    expect(chunks.flatMap((c) => c.tokenIds)).toEqual(r.tokenIds);
    expect(chunks.slice(0, -1).every((c) => c.stats === undefined)).toBe(true);
    expect(chunks.at(-1)!.stats).toEqual(r.stats);
    // Streaming decoding equals SentencePiece decoding of the whole sequence.
    expect(tiny.detokenize(prompt) + r.text).toBe(tiny.detokenize([...prompt, ...r.tokenIds]));
    const st = r.stats;
    expect(st).toMatchObject({ promptTokens: prompt.length, completionTokens: 20, finishReason: "length" });
    expect(st.cachedPromptTokens).toBeGreaterThanOrEqual(0);
    expect(st.cachedPromptTokens).toBeLessThan(prompt.length);
    expect(st.timeToFirstTokenMs).toBeGreaterThan(0);
    expect(st.timeToFirstTokenMs).toBeLessThanOrEqual(st.totalMs);
    expect(st.promptTokensPerSecond).toBeGreaterThan(0);
    expect(st.tokensPerSecond).toBeGreaterThan(0);
    expect(st.totalMs).toBeLessThan(30_000);
  });

  it("finish reason 'stop': EOS ends generation and is not part of the output (stopOnEos: false keeps going)", async () => {
    const prompt = tiny.tokenize("Once upon a time", { bos: true });
    const { bias, step, before } = await eosBiasAt(tiny, prompt, 2);
    const eos = tiny.info.eosId;
    const r = await tiny.generate(prompt, { temperature: 0, logitBias: { [eos]: bias }, maxTokens: 30 }).result;
    expect(r.stats.finishReason).toBe("stop");
    expect(r.tokenIds).toEqual(before);
    expect(r.stats.completionTokens).toBe(step);
    expect(r.text).toBe(tiny.detokenize([...prompt, ...before]).slice(tiny.detokenize(prompt).length));
    const go = await tiny.generate(prompt, { temperature: 0, logitBias: { [eos]: bias }, maxTokens: step + 3, stopOnEos: false }).result;
    expect(go.tokenIds.slice(0, step + 1)).toEqual([...before, eos]);
    expect(go.stats.finishReason).toBe("length");
  });

  it("finish reason 'length': exactly maxTokens", async () => {
    for (const n of [1, 7]) {
      const r = await stories.generate(fx[0]!.prompt, { temperature: 0, stopOnEos: false, maxTokens: n }).result;
      expect(r.tokenIds).toEqual(fx[0]!.generated.slice(0, n));
      expect(r.stats).toMatchObject({ completionTokens: n, finishReason: "length" });
    }
  });

  it("the end of the context gives 'length' (the sequence never exceeds the context)", async () => {
    const m = await Llama2.load(sharedPath(STORIES), { device: "cpu", contextLength: 32, maxSequences: 1 });
    try {
      const c = fx[0]!; // 17-token prompt
      const r = await m.generate(c.prompt, { temperature: 0, stopOnEos: false }).result;
      expect(r.stats.finishReason).toBe("length");
      const total = c.prompt.length + r.stats.completionTokens;
      // Every slot of the context is used, and the last sampled token needs none: 33 tokens in all.
      expect(total).toBe(33);
      expect(r.tokenIds).toEqual(c.generated.slice(0, r.tokenIds.length));
      // maxTokens larger than the room left is the same.
      const r2 = await m.generate(c.prompt, { temperature: 0, stopOnEos: false, maxTokens: 100 }).result;
      expect(r2.tokenIds).toEqual(r.tokenIds);
    } finally {
      await m.dispose();
    }
  });

  it("finish reason 'stopSequence': stop strings match across token boundaries and are cut from the text", async () => {
    const base = await tiny.generate("Once upon a time", { temperature: 0, stopOnEos: false, maxTokens: 16 }).result;
    // Pieces of each token as streamed.
    const pieces: string[] = [];
    for await (const c of tiny.generate("Once upon a time", { temperature: 0, stopOnEos: false, maxTokens: 16 })) if (c.tokenIds.length) pieces.push(c.text);
    expect(pieces.join("")).toBe(base.text);
    // A stop string made of the end of token k and the start of token k + 1.
    let k = -1;
    let stop = "";
    for (let i = 2; i < pieces.length - 1 && k < 0; i++) {
      const a = pieces[i]!;
      const b = pieces[i + 1]!;
      if (a.length < 2 || b.length < 2) continue;
      const s = a.slice(-2) + b.slice(0, 2);
      if (base.text.indexOf(s) === pieces.slice(0, i).join("").length + a.length - 2) {
        k = i;
        stop = s;
      }
    }
    expect(k).toBeGreaterThan(0);
    const s = tiny.generate("Once upon a time", { temperature: 0, stopOnEos: false, maxTokens: 16, stop: ["zzzz-never", stop] });
    const chunks = await collect(s);
    const r = await s.result;
    expect(r.stats.finishReason).toBe("stopSequence");
    expect(r.text).toBe(base.text.slice(0, base.text.indexOf(stop)));
    expect(chunks.map((c) => c.text).join("")).toBe(r.text);
    expect(r.tokenIds).toEqual(base.tokenIds.slice(0, k + 2)); // generation ends at the token completing it
    // A stop string inside one token cuts that token's text.
    const inside = pieces.find((p, i) => i > 0 && p.length >= 4)!;
    const r2 = await tiny.generate("Once upon a time", { temperature: 0, stopOnEos: false, maxTokens: 16, stop: [inside.slice(1, 3)] }).result;
    expect(r2.stats.finishReason).toBe("stopSequence");
    expect(r2.text).toBe(base.text.slice(0, base.text.indexOf(inside.slice(1, 3))));
  });

  for (const how of ["AbortSignal", "stream.abort()"] as const) {
    it(`finish reason 'abort' via ${how}: generation ends within one token`, async () => {
      const ac = new AbortController();
      const s = stories.generate([1], { temperature: 0, stopOnEos: false, signal: ac.signal });
      let seen = 0;
      let after = 0;
      let aborted = false;
      for await (const c of s) {
        if (aborted) {
          after += c.tokenIds.length;
          continue;
        }
        seen += c.tokenIds.length;
        if (seen >= 5) {
          if (how === "AbortSignal") ac.abort();
          else s.abort();
          aborted = true;
        }
      }
      const r = await s.result;
      expect(r.stats.finishReason).toBe("abort");
      expect(after).toBeLessThanOrEqual(1);
      expect(r.tokenIds.length - seen).toBe(after);
      expect(r.tokenIds).toEqual(fx[1]!.generated.slice(0, r.tokenIds.length));
      // The model goes on working.
      expect((await stories.generate([1], { temperature: 0, stopOnEos: false, maxTokens: 3 }).result).tokenIds).toEqual(fx[1]!.generated.slice(0, 3));
    });
  }

  it("an already aborted signal, and leaving the for-await loop, end with 'abort'", async () => {
    // Aborted before it started: nothing is evaluated, and it resolves like any aborted generation.
    const steps = stories.stats().scheduler.steps;
    const r = await stories.generate([1], { temperature: 0, stopOnEos: false, signal: AbortSignal.abort() }).result;
    expect(r).toMatchObject({ tokenIds: [], stats: { finishReason: "abort", completionTokens: 0 } });
    expect(stories.stats().scheduler.steps).toBe(steps);
    const s = stories.generate([1], { temperature: 0, stopOnEos: false });
    let n = 0;
    for await (const c of s) {
      n += c.tokenIds.length;
      if (n >= 3) break;
    }
    const r2 = await s.result;
    expect(r2.stats.finishReason).toBe("abort");
    expect(r2.tokenIds.length).toBeLessThanOrEqual(4);
  });

  it("seeded sampling is reproducible; other seeds differ", async () => {
    const opts = { temperature: 1, topK: 0, topP: 1, minP: 0, maxTokens: 24, stopOnEos: false };
    const a = await tiny.generate("Once upon a time", { ...opts, seed: 42 }).result;
    const b = await tiny.generate("Once upon a time", { ...opts, seed: 42 }).result;
    const c = await tiny.generate("Once upon a time", { ...opts, seed: 43 }).result;
    expect(b.tokenIds).toEqual(a.tokenIds);
    expect(b.text).toBe(a.text);
    expect(c.tokenIds).not.toEqual(a.tokenIds);
    // Default sampling options (top-k/top-p/min-p through device candidates) are reproducible too.
    const d = await stories.generate([1], { seed: 7, maxTokens: 40, stopOnEos: false }).result;
    const e = await stories.generate([1], { seed: 7, maxTokens: 40, stopOnEos: false }).result;
    expect(e.tokenIds).toEqual(d.tokenIds);
  });

  it("a session keeps its KV cache: the second turn prefills only the new tokens and matches a one-shot run", async () => {
    const tok = tiny.tokenizer!;
    const session = tiny.createSession();
    try {
      const turn1 = llama2Template.encodeUserTurn([{ role: "user", content: "Hello there, session one" }], tok);
      const r1 = await session.send("Hello there, session one", { temperature: 0, maxTokens: 6, stopOnEos: false }).result;
      expect(r1.stats).toMatchObject({ promptTokens: turn1.length, cachedPromptTokens: 0, completionTokens: 6, finishReason: "length" });
      // A reply cut by maxTokens: its last token was sampled but never evaluated, so it is prefilled with turn 2.
      const cachedAfter1 = session.cachedTokens;
      expect(cachedAfter1).toBe(r1.stats.promptTokens + r1.stats.completionTokens - 1);
      const turn2 = llama2Template.encodeUserTurn([{ role: "user", content: "And then?" }], tok);
      const r2 = await session.send("And then?", { temperature: 0, maxTokens: 6, stopOnEos: false }).result;
      expect(r2.stats.cachedPromptTokens).toBe(cachedAfter1);
      expect(r2.stats.promptTokens).toBe(cachedAfter1 + 1 + 1 + turn2.length); // last reply token, EOS, the new turn
      expect(session.messages.map((m) => m.role)).toEqual(["user", "assistant", "user", "assistant"]);
      expect(session.messages[1]!.content).toBe(r1.text);
      // Same tokens through a one-shot generation (no cache reuse): the same reply.
      const full = [...turn1, ...r1.tokenIds, tiny.info.eosId, ...turn2];
      const alone = await tiny.generate(full, { temperature: 0, maxTokens: 6, stopOnEos: false }).result;
      expect(r2.tokenIds).toEqual(alone.tokenIds);
    } finally {
      session.dispose();
    }
  });

  it("a turn ended by EOS is cached whole: the next turn's cachedPromptTokens equals the first turn's total", async () => {
    const tok = tiny.tokenizer!;
    const turn1 = llama2Template.encodeUserTurn([{ role: "user", content: "Say something short" }], tok);
    const { bias, step } = await eosBiasAt(tiny, turn1, 2);
    const session = tiny.createSession();
    try {
      const r1 = await session.send("Say something short", { temperature: 0, maxTokens: 30, logitBias: { [tiny.info.eosId]: bias } }).result;
      expect(r1.stats).toMatchObject({ finishReason: "stop", completionTokens: step, promptTokens: turn1.length });
      const r2 = await session.send("Thanks", { temperature: 0, maxTokens: 4, stopOnEos: false }).result;
      expect(r2.stats.cachedPromptTokens).toBe(r1.stats.promptTokens + r1.stats.completionTokens);
      // reset: the conversation is forgotten, the session stays usable.
      session.reset();
      expect(session.cachedTokens).toBe(0);
      expect(session.messages).toEqual([]);
      const r3 = await session.send("A new start for this session", { temperature: 0, maxTokens: 3, stopOnEos: false }).result;
      expect(r3.stats.promptTokens).toBe(llama2Template.encodeUserTurn([{ role: "user", content: "A new start for this session" }], tok).length);
      expect(r3.stats.cachedPromptTokens).toBeLessThan(r3.stats.promptTokens);
    } finally {
      session.dispose();
    }
    // dispose: further turns are refused, the model is fine.
    expect(() => session.send("hi")).toThrow(expect.objectContaining({ code: "ERR_DISPOSED" }));
    expect(session.cachedTokens).toBe(0);
    expect((await tiny.generate("ok", { maxTokens: 2 }).result).stats.completionTokens).toBeGreaterThan(0);
  });

  it("a session refuses a second turn while one is generating", async () => {
    const session = tiny.createSession();
    try {
      const s = session.send("First", { temperature: 0, maxTokens: 4, stopOnEos: false });
      expect(() => session.send("Second")).toThrow(expect.objectContaining({ code: "ERR_INVALID_ARGUMENT", field: "session" }));
      expect(() => session.reset()).toThrow(expect.objectContaining({ field: "session" }));
      await s.result;
      await session.send("Second", { temperature: 0, maxTokens: 2, stopOnEos: false }).result;
    } finally {
      session.dispose();
    }
  });

  it("a chat template's stop strings do not count against the stop option's limit; generate() takes no template", async () => {
    const stop = Array.from({ length: 16 }, (_, i) => `zq${i}`);
    const r = await tiny.chat([{ role: "user", content: "a" }], { template: "plain", stop, temperature: 0, maxTokens: 3, stopOnEos: false }).result;
    expect(r.stats.completionTokens).toBeGreaterThan(0);
    expect(() => tiny.generate("hi", { template: "plain" } as never)).toThrow(expect.objectContaining({ field: "options.template" }));
    expect(() => tiny.chat([{ role: "user", content: "a" }], { template: "chatml" })).toThrow(expect.objectContaining({ field: "template" }));
  });

  it("unknown options of createSession() and tokenize() are refused, naming the key", () => {
    expect(() => tiny.createSession({ sytemPrompt: "x" } as never)).toThrow(expect.objectContaining({ field: "options.sytemPrompt" }));
    expect(() => tiny.tokenize("x", { bso: true } as never)).toThrow(expect.objectContaining({ field: "options.bso" }));
  });

  it("pending counts a request from the call that starts it", async () => {
    const streams = [0, 1, 2].map(() => tiny.generate("Once", { temperature: 0, maxTokens: 2, stopOnEos: false }));
    expect(tiny.pending).toBe(3);
    await Promise.all(streams.map((s) => s.result));
    expect(tiny.pending).toBe(0);
  });

  it("options that ban every token are an invalid logitBias, not a corrupt model", () => {
    const all = Object.fromEntries(Array.from({ length: stories.info.config.vocabSize }, (_, i) => [i, -Infinity]));
    expect(() => stories.generate([1], { logitBias: all })).toThrow(expect.objectContaining({ code: "ERR_INVALID_ARGUMENT", field: "logitBias" }));
  });

  it("concurrent calls on one model each get the ids they get alone", async () => {
    const prompts = ["Once upon a time", "The capital of France", "Hello", "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12"];
    const opts = { temperature: 0, maxTokens: 12, stopOnEos: false };
    const alone: number[][] = [];
    for (const p of prompts) alone.push((await tiny.generate(p, opts).result).tokenIds);
    const mixed = await Promise.all([
      ...prompts.map((p) => tiny.generate(p, opts).result),
      tiny.chat([{ role: "user", content: "Hi" }], opts).result,
    ]);
    mixed.slice(0, prompts.length).forEach((r, i) => expect(r.tokenIds).toEqual(alone[i]));
    const chatAlone = await tiny.chat([{ role: "user", content: "Hi" }], opts).result;
    expect(mixed.at(-1)!.tokenIds).toEqual(chatAlone.tokenIds);
    expect(mixed.at(-1)!.text).toBe(chatAlone.text);
  });

  it("per-token overhead outside the native forward (a figure for NOTES.md)", async () => {
    for (const [name, m, prompt, opts] of [
      ["stories260K greedy", stories, [1], { temperature: 0 }],
      ["stories260K sampled", stories, [1], { temperature: 0.8, seed: 1 }],
      ["tiny-llama greedy", tiny, tiny.tokenize("Once upon a time", { bos: true }), { temperature: 0 }],
      ["tiny-llama sampled", tiny, tiny.tokenize("Once upon a time", { bos: true }), { temperature: 0.8, seed: 1 }],
    ] as const) {
      const n = 200;
      const before = m.stats().scheduler;
      const t0 = performance.now();
      const r = await m.generate(prompt as number[], { ...opts, maxTokens: n, stopOnEos: false }).result;
      const wall = performance.now() - t0;
      const after = m.stats().scheduler;
      const forward = after.forwardMs - before.forwardMs;
      const steps = after.steps - before.steps;
      const overhead = (wall - forward) / steps;
      console.log(
        `[overhead] ${name}: ${r.tokenIds.length} tokens in ${wall.toFixed(1)} ms (${((1000 * r.tokenIds.length) / wall).toFixed(0)} tok/s); ` +
          `native forward ${(forward / steps).toFixed(3)} ms/step, outside it ${overhead.toFixed(3)} ms/step over ${steps} steps`,
      );
      expect(r.tokenIds.length).toBe(n);
      expect(overhead).toBeGreaterThanOrEqual(-0.01);
      expect(overhead).toBeLessThan(20); // a sanity bound, not a performance target
    }
  });
});

describeShared("dispose", [STORIES, TINY], () => {
  it("dispose() while generating ends every stream with abort or an error, never a crash or a hang", async () => {
    const m = await Llama2.load(sharedPath(STORIES), { device: "cpu", maxSequences: 2 });
    // Two running, two waiting for KV room (each may need the whole context).
    const streams = [0, 1, 2, 3].map((i) => m.generate([1, 300 + i], { temperature: 0, stopOnEos: false }));
    const it0 = streams[0]![Symbol.asyncIterator]();
    await it0.next();
    await it0.next();
    await m.dispose();
    for (const s of streams) {
      const r = await outcome(s.result);
      if (r instanceof Error) {
        expect(r).toBeInstanceOf(Llama2Error);
        expect(["ERR_DISPOSED", "ERR_ABORTED"]).toContain((r as Llama2Error).code);
      } else {
        expect((r as { stats: { finishReason: string } }).stats.finishReason).toBe("abort");
      }
      // Iterating what is left ends too (or throws the same typed error).
      const rest = await outcome(collect(s));
      if (rest instanceof Error) expect(rest).toBeInstanceOf(Llama2Error);
    }
    await m.dispose(); // twice is fine
  });

  it("dispose() during a session turn ends the turn with 'abort'; the session's state stays readable", async () => {
    const m = await Llama2.load(sharedPath(TINY), { device: "cpu" });
    const session = m.createSession();
    const s = session.send("hey", { maxTokens: 200, stopOnEos: false, temperature: 0 });
    let n = 0;
    for await (const c of s) if (c.tokenIds.length > 0 && ++n === 3) await m.dispose();
    const r = await s.result;
    expect(r.stats.finishReason).toBe("abort");
    expect(session.cachedTokens).toBe(0);
    session.reset();
    session.dispose();
  });

  it("a session disposed mid-turn (running or waiting for KV room) ends that turn alone: other requests are untouched", async () => {
    // 2 sequences of 64 tokens = 8 KV blocks; each request below may need 4 (prompt + 30 tokens + margin).
    const m = await Llama2.load(sharedPath(TINY), { device: "cpu", contextLength: 64, maxSequences: 2 });
    try {
      const prompt = m.tokenize("Once upon a time");
      const alone = (await m.generate(prompt, { temperature: 0, stopOnEos: false, maxTokens: 30 }).result).tokenIds;
      for (const waiting of [false, true]) {
        // One other request leaves room for the turn (it runs); two fill the cache (it waits).
        const others = (waiting ? [0, 1] : [0]).map(() => m.generate(prompt, { temperature: 0, stopOnEos: false, maxTokens: 30 }));
        const session = m.createSession();
        const turn = session.send("x", { maxTokens: 30, stopOnEos: false, temperature: 0 });
        if (!waiting) for await (const c of turn) if (c.tokenIds.length > 0) break; // running
        session.dispose();
        expect((await turn.result).stats.finishReason).toBe("abort");
        for (const o of others) expect((await o.result).tokenIds).toEqual(alone);
        expect(m.pending).toBe(0);
        m.clearPrefixCache();
        const kv = m._native().kvState();
        expect(kv.freeBlocks).toBe(kv.totalBlocks);
      }
    } finally {
      await m.dispose();
    }
  });

  it("many requests sharing one AbortSignal: no MaxListenersExceededWarning, all aborted", async () => {
    const m = await Llama2.load(sharedPath(STORIES), { device: "cpu", maxSequences: 4 });
    const warnings: string[] = [];
    const onWarning = (w: Error) => warnings.push(w.name);
    process.on("warning", onWarning);
    try {
      const ac = new AbortController();
      const streams = Array.from({ length: 16 }, (_, i) => m.generate([1, 300 + i], { stopOnEos: false, maxTokens: 200, signal: ac.signal }));
      await new Promise((r) => setTimeout(r, 20));
      ac.abort();
      for (const s of streams) expect((await s.result).stats.finishReason).toBe("abort");
      await new Promise((r) => setImmediate(r));
      expect(warnings).not.toContain("MaxListenersExceededWarning");
      // A long-lived signal that never fires keeps no listener once its requests have ended.
      const shutdown = new AbortController();
      await Promise.all([0, 1, 2].map((i) => m.generate([1, 310 + i], { maxTokens: 3, signal: shutdown.signal }).result));
      expect(getEventListeners(shutdown.signal, "abort")).toHaveLength(0);
    } finally {
      process.off("warning", onWarning);
      await m.dispose();
    }
  });

  it("a request queued for KV room and aborted resolves with 'abort'", async () => {
    const m = await Llama2.load(sharedPath(STORIES), { device: "cpu", maxSequences: 1 });
    try {
      const first = m.generate([1, 300], { temperature: 0, stopOnEos: false, maxTokens: 40 });
      const ac = new AbortController();
      const queued = m.generate([1, 301], { temperature: 0, stopOnEos: false, signal: ac.signal });
      ac.abort();
      expect(await queued.result).toMatchObject({ tokenIds: [], stats: { finishReason: "abort" } });
      expect((await first.result).tokenIds).toHaveLength(40);
    } finally {
      await m.dispose();
    }
  });

  it("every call after dispose() throws ERR_DISPOSED", async () => {
    const m = await Llama2.load(sharedPath(STORIES), { device: "cpu", maxSequences: 1 });
    const session = m.createSession();
    await m.dispose();
    const disposed = expect.objectContaining({ code: "ERR_DISPOSED" });
    expect(() => m.generate([1, 2])).toThrow(disposed);
    expect(() => m.generate("text")).toThrow(disposed);
    expect(() => m.chat([{ role: "user", content: "hi" }])).toThrow(disposed);
    expect(() => m.tokenize("hi")).toThrow(disposed);
    expect(() => m.detokenize([1])).toThrow(disposed);
    expect(() => m.createSession()).toThrow(disposed);
    expect(() => m.stats()).toThrow(disposed);
    expect(() => m._native()).toThrow(disposed);
    expect(() => session.send("hi")).toThrow(Llama2Error);
    session.dispose();
  });
});
