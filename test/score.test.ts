// score(): every token's log-probability given the ones before it, from one evaluation (output -2), checked
// against llama2.c's logits and against the log-probabilities generation reports for the same tokens.
import { afterAll, beforeAll, expect, it } from "vitest";
import { Llama2 } from "../lib/llama2.js";
import { describeShared, readSharedJson, sharedPath } from "./helpers/shared.js";

const STORIES = "models/stories260K.bin";
const STORIES_FX = "fixtures/stories260K-greedy.json";
const TINY = "models/tiny-llama-f16.gguf";

interface Case {
  prompt: number[];
  generated: number[];
  first_logits: number[];
}

const logSoftmax = (l: readonly number[], id: number) => {
  const m = Math.max(...l);
  return l[id]! - m - Math.log(l.reduce((z, v) => z + Math.exp(v - m), 0));
};

describeShared("score (teacher-forced log-probabilities, perplexity)", [STORIES, STORIES_FX, TINY], () => {
  let stories: Llama2;
  let tiny: Llama2;
  const cases = () => readSharedJson<{ cases: Case[] }>(STORIES_FX).cases;
  beforeAll(async () => {
    stories = await Llama2.load(sharedPath(STORIES), { device: "cpu" });
    tiny = await Llama2.load(sharedPath(TINY), { device: "cpu" });
  });
  afterAll(async () => {
    await stories?.dispose();
    await tiny?.dispose();
  });

  it("matches llama2.c's logits and generation's logprobs token for token (stories260K)", async () => {
    for (const c of cases().slice(0, 3)) {
      const ids = [...c.prompt, ...c.generated];
      const s = await stories.score(ids);
      expect(s.tokenIds).toEqual(ids);
      expect(s.logprobs).toHaveLength(ids.length - 1);
      // The first generated token's row is llama2.c's first_logits.
      expect(s.logprobs[c.prompt.length - 1]!).toBeCloseTo(logSoftmax(c.first_logits, c.generated[0]!), 4);
      // Greedy generation with logprobs reports the same numbers for the same tokens.
      const g = await stories.generate(c.prompt, { temperature: 0, stopOnEos: false, maxTokens: c.generated.length, logprobs: 0 }).result;
      expect(g.tokenIds).toEqual(c.generated);
      g.logprobs!.forEach((l, k) => expect(Math.abs(s.logprobs[c.prompt.length - 1 + k]! - l.logprob), `token ${k}`).toBeLessThan(1e-4));
      const sum = s.logprobs.reduce((a, b) => a + b, 0);
      expect(s.sum).toBeCloseTo(sum, 9);
      expect(s.perplexity).toBeCloseTo(Math.exp(-sum / s.logprobs.length), 9);
      // A trained model finds its own greedy story likelier than a shuffled one.
      const shuffled = [ids[0]!, ...ids.slice(1).reverse()];
      expect((await stories.score(shuffled)).perplexity).toBeGreaterThan(s.perplexity);
    }
  });

  it("scores text with the tokenizer, beside running generations; bad input is refused", async () => {
    const text = "The quick brown fox jumps over the lazy dog.";
    const [a, b] = await Promise.all([tiny.score(text), tiny.generate("Hello", { maxTokens: 8, temperature: 0 }).result, tiny.score(text)]).then((r) => [r[0], r[2]] as const);
    expect(a.tokenIds).toEqual(tiny.tokenize(text, { bos: true }));
    expect(b.logprobs).toEqual(a.logprobs); // the CPU backend is batch-invariant
    expect(a.perplexity).toBeGreaterThan(1);
    expect((await tiny.score(text, { addBos: false })).tokenIds).toEqual(tiny.tokenize(text, { bos: false }));
    await expect(tiny.score([1])).rejects.toMatchObject({ code: "ERR_INVALID_ARGUMENT", field: "input" });
    await expect(tiny.score([1, 99999999])).rejects.toMatchObject({ code: "ERR_INVALID_ARGUMENT", field: "input[1]" });
    await expect(tiny.score("x ".repeat(2000))).rejects.toMatchObject({ code: "ERR_CONTEXT_OVERFLOW" });
    await expect(tiny.score(text, { bos: true } as never)).rejects.toMatchObject({ field: "options.bos" });
    const ac = new AbortController();
    ac.abort();
    await expect(tiny.score(text, { signal: ac.signal })).rejects.toMatchObject({ code: "ERR_ABORTED" });
    await expect(tiny.score(text, { topLogprobs: 21 })).rejects.toMatchObject({ field: "topLogprobs" });
    await expect(tiny.score(text, { keepPrefix: 1 as never })).rejects.toMatchObject({ field: "keepPrefix" });
    // Nothing leaked: the KV cache is as free as before.
    expect(tiny._native().kvState().freeBlocks).toBe(tiny._native().kvState().totalBlocks);
  });

  it("topLogprobs reports each scored token with its alternatives; keepPrefix leaves the KV for a generation", async () => {
    const text = "Once upon a time there was a little dog who liked to run in the park with his friends every day.";
    const s = await tiny.score(text, { topLogprobs: 3 });
    expect(s.tokens).toHaveLength(s.logprobs.length);
    const bytes = tiny.tokenizer!.tokenBytes();
    s.tokens!.forEach((t, k) => {
      expect(t.id).toBe(s.tokenIds[k + 1]);
      expect(Buffer.from(t.bytes)).toEqual(Buffer.from(bytes[t.id]!));
      expect(t.logprob).toBe(s.logprobs[k]);
      expect(t.top).toHaveLength(3);
      expect(t.top[0]!.logprob).toBeGreaterThanOrEqual(t.top[1]!.logprob);
      expect(t.top[0]!.logprob).toBeGreaterThanOrEqual(t.logprob);
      // The token is among the top 3 exactly when its log-probability reaches the third's.
      expect(t.top.some((x) => x.id === t.id)).toBe(t.logprob >= t.top[2]!.logprob);
    });
    // Greedy generation's first token is the top alternative of the position after the prompt's prefix.
    const k = 6;
    const g = await tiny.generate(s.tokenIds.slice(0, k + 1), { temperature: 0, maxTokens: 1, logprobs: 3 }).result;
    expect(g.tokenIds[0]).toBe(s.tokens![k]!.top[0]!.id);
    g.logprobs![0]!.top.forEach((x, i) => expect(x.logprob).toBeCloseTo(s.tokens![k]!.top[i]!.logprob, 4));
    expect((await tiny.score(text)).tokens).toBeUndefined();

    // keepPrefix: the scored tokens stay cached, so generating from them evaluates only the last ones.
    tiny.clearPrefixCache();
    const plain = await tiny.generate(s.tokenIds, { temperature: 0, maxTokens: 4 }).result;
    expect(plain.stats.cachedPromptTokens).toBe(0);
    tiny.clearPrefixCache();
    await tiny.score(s.tokenIds, { keepPrefix: true });
    const after = await tiny.generate(s.tokenIds, { temperature: 0, maxTokens: 4 }).result;
    expect(after.stats.cachedPromptTokens).toBeGreaterThan(0);
    expect(after.stats.cachedPromptTokens).toBeLessThan(s.tokenIds.length);
    expect(after.tokenIds).toEqual(plain.tokenIds);
    tiny.clearPrefixCache();
    expect(tiny._native().kvState().freeBlocks).toBe(tiny._native().kvState().totalBlocks);
  });
});
