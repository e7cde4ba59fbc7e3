// Prompt lookup decoding (`lookup`): drafts copied from the history, verified in one step with the token
// before them. It must never change what greedy decoding generates: ids, text, logprobs, stop handling,
// sessions and the prefix cache are compared with the same calls without it (the CPU backend is
// batch-invariant, so a token evaluated in a multi-token step has the same logits as alone).
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { lookupDraft } from "../lib/engine/lookup.js";
import { Llama2 } from "../lib/llama2.js";
import { Rng } from "../lib/rng.js";
import { Sampler } from "../lib/sampler.js";
import type { GenerateOptions } from "../lib/types.js";
import { describeShared, readSharedJson, sharedPath } from "./helpers/shared.js";

const STORIES = "models/stories260K.bin";
const STORIES_FX = "fixtures/stories260K-greedy.json";
const TINY = "models/tiny-llama-f16.gguf";

describe("lookupDraft", () => {
  it("copies what followed the latest earlier occurrence of the last n-gram, longest n first", () => {
    // ... 5 6 7 | 8 9 ... 5 6 7 -> 8 9 (the 3-gram), and the most recent occurrence wins.
    expect(lookupDraft([5, 6, 7, 1, 2, 5, 6, 7, 8, 9, 4, 5, 6, 7], 2)).toEqual([8, 9]);
    expect(lookupDraft([5, 6, 7, 1, 2, 5, 6, 7, 8, 9, 4, 5, 6, 7], 10)).toEqual([8, 9, 4, 5, 6, 7]);
    // A 4-gram match beats a more recent 2-gram one.
    expect(lookupDraft([1, 2, 3, 4, 50, 51, 9, 3, 4, 60, 1, 2, 3, 4], 2)).toEqual([50, 51]);
    // Only a 2-gram matches.
    expect(lookupDraft([3, 4, 70, 71, 1, 2, 3, 4], 3)).toEqual([70, 71, 1]);
    // No earlier occurrence of even the last 2 tokens, no room, or too short a history: nothing.
    expect(lookupDraft([1, 2, 3, 4, 5], 4)).toEqual([]);
    expect(lookupDraft([1, 2, 1, 2], 0)).toEqual([]);
    expect(lookupDraft([1, 2], 4)).toEqual([]);
    expect(lookupDraft([], 4)).toEqual([]);
    // A repeated token: the overlapping occurrence just before the tail.
    expect(lookupDraft([7, 7, 7, 7], 3)).toEqual([7]);
  });
});

describe("Sampler.sampleDraft (speculative sampling with a deterministic draft)", () => {
  // The draft is kept with its probability and otherwise the token is drawn from the rest, so the
  // frequencies must match plain sampling's: compared on 40,000 draws each (standard error < 0.0025).
  const V = 50;
  const rng = new Rng(11);
  const logits = Float32Array.from({ length: V }, () => (rng.next() - 0.5) * 6);
  const order = Array.from({ length: V }, (_, i) => i).sort((a, b) => logits[b]! - logits[a]! || a - b);
  const freq = (draw: () => number) => {
    const f = new Float64Array(V);
    for (let i = 0; i < 40_000; i++) f[draw()]! += 1 / 40_000;
    return f;
  };
  const cases: [string, object][] = [
    ["whole vocabulary (top-p / min-p over all of it)", { temperature: 1, topK: 0, topP: 1, minP: 0 }],
    ["top-k, top-p and min-p over candidates", { temperature: 0.7, topK: 10, topP: 0.9, minP: 0.05 }],
    ["penalties and bias", { temperature: 1.2, topK: 0, topP: 0.95, minP: 0, repetitionPenalty: 1.3, logitBias: { [order[1]!]: 1.5 } }],
  ];
  for (const [name, opts] of cases) {
    it(name, () => {
      const history = [order[0]!, order[3]!, 7];
      const plain = new Sampler({ ...opts, seed: 1 }, V);
      const want = freq(() => plain.sample(logits, history));
      // The best token, a middling one, and one that top-k / min-p rule out (never drawn, so never kept).
      for (const draft of [order[0]!, order[2]!, order[40]!]) {
        const spec = new Sampler({ ...opts, seed: 2 }, V);
        const got = freq(() => spec.sampleDraft(logits, history, draft));
        const worst = Math.max(...got.map((g, i) => Math.abs(g - want[i]!)));
        expect(worst, `draft ${draft} (p ~ ${want[draft]!.toFixed(3)})`).toBeLessThan(0.015);
      }
    });
  }
  it("a greedy sampler returns the argmax whatever the draft", () => {
    const g = new Sampler({ temperature: 0 }, V);
    expect(g.sampleDraft(logits, [], order[5]!)).toBe(order[0]);
  });
});

describeShared("prompt lookup decoding (greedy: the same tokens, fewer steps)", [STORIES, STORIES_FX, TINY], () => {
  let stories: Llama2;
  let tiny: Llama2;
  beforeAll(async () => {
    stories = await Llama2.load(sharedPath(STORIES), { device: "cpu" });
    tiny = await Llama2.load(sharedPath(TINY), { device: "cpu", contextLength: 256 });
  });
  afterAll(async () => {
    await stories?.dispose();
    await tiny?.dispose();
  });
  const free = (m: Llama2) => {
    m.clearPrefixCache();
    expect(m._native().kvState().freeBlocks).toBe(m._native().kvState().totalBlocks);
  };

  it("gives llama2.c's greedy ids on stories260K, with drafts accepted, alone and batched together", async () => {
    const cases = readSharedJson<{ cases: { prompt: number[]; generated: number[] }[] }>(STORIES_FX).cases;
    const opts: GenerateOptions = { temperature: 0, stopOnEos: false };
    const runs = await Promise.all(cases.map((c) => stories.generate(c.prompt, { ...opts, maxTokens: c.generated.length, lookup: 8 }).result));
    let drafts = 0;
    let accepted = 0;
    runs.forEach((r, i) => {
      expect(r.tokenIds, `case ${i}`).toEqual(cases[i]!.generated);
      drafts += r.stats.draftTokens!;
      accepted += r.stats.acceptedDraftTokens!;
      expect(r.stats.acceptedDraftTokens!).toBeLessThanOrEqual(r.stats.draftTokens!);
    });
    // A trained model's stories repeat names and phrases: some drafts come true.
    expect(accepted).toBeGreaterThan(0);
    expect(drafts).toBeGreaterThan(accepted);
    free(stories);
  });

  it("drafts only while at most 4 requests run: 6 at once draft less than one by one, same ids", async () => {
    const cases = readSharedJson<{ cases: { prompt: number[]; generated: number[] }[] }>(STORIES_FX).cases;
    const prompts = [0, 1, 2, 3, 1, 3].map((i) => cases[i]!.prompt);
    const opts: GenerateOptions = { temperature: 0, stopOnEos: false, maxTokens: 64, lookup: 8 };
    const alone = [];
    for (const p of prompts) alone.push(await stories.generate(p, opts).result);
    const together = await Promise.all(prompts.map((p) => stories.generate(p, opts).result));
    together.forEach((r, i) => expect(r.tokenIds).toEqual(alone[i]!.tokenIds));
    const drafts = (rs: { stats: { draftTokens?: number } }[]) => rs.reduce((a, r) => a + r.stats.draftTokens!, 0);
    expect(drafts(alone)).toBeGreaterThan(0);
    expect(drafts(together)).toBeLessThan(drafts(alone));
    free(stories);
  });

  it("changes nothing in text, logprobs, stop strings, EOS and maxTokens (tiny-llama, real tokenizer)", async () => {
    const prompt = "One two three four. One two three four. One two three four. One two";
    for (const extra of [{ maxTokens: 40 }, { maxTokens: 7 }, { maxTokens: 40, stop: ["four."] }, { maxTokens: 30, logprobs: 2 }, { maxTokens: 60, stopOnEos: true }] as GenerateOptions[]) {
      const base = await tiny.generate(prompt, { temperature: 0, stopOnEos: false, ...extra }).result;
      for (const lookup of [1, 3, 16]) {
        const r = await tiny.generate(prompt, { temperature: 0, stopOnEos: false, ...extra, lookup }).result;
        const what = `${JSON.stringify(extra)} lookup ${lookup}`;
        expect(r.tokenIds, what).toEqual(base.tokenIds);
        expect(r.text, what).toBe(base.text);
        expect(r.stats.finishReason, what).toBe(base.stats.finishReason);
        if (extra.logprobs) r.logprobs!.forEach((l, k) => expect(l.logprob, `${what} token ${k}`).toBeCloseTo(base.logprobs![k]!.logprob, 5));
        expect(r.stats.draftTokens, what).toBeGreaterThanOrEqual(0);
      }
    }
    // Sampling: speculative sampling keeps the distribution (tested above), not the seeded draws; a seed
    // still reproduces the run.
    const a = await tiny.generate(prompt, { temperature: 0.8, seed: 3, maxTokens: 24, lookup: 8, stopOnEos: false }).result;
    const b = await tiny.generate(prompt, { temperature: 0.8, seed: 3, maxTokens: 24, lookup: 8, stopOnEos: false }).result;
    expect(b.tokenIds).toEqual(a.tokenIds);
    expect(a.tokenIds).toHaveLength(24);
    expect(a.stats.draftTokens).toBeGreaterThanOrEqual(0);
    free(tiny);
  });

  it("leaves the cache holding exactly the kept tokens: the prefix cache and sessions continue from it", async () => {
    const prompt = "a b c d e f a b c d e f a b c d e f a b c";
    const first = await tiny.generate(prompt, { temperature: 0, maxTokens: 24, lookup: 6, stopOnEos: false }).result;
    expect(first.stats.acceptedDraftTokens).toBeGreaterThan(0);
    // The prompt and reply went to the prefix cache; a continuation of them starts from it.
    const ids = [...tiny.tokenize(prompt, { bos: true }), ...first.tokenIds];
    const cont = await tiny.generate(ids, { temperature: 0, maxTokens: 8, stopOnEos: false }).result;
    expect(cont.stats.cachedPromptTokens).toBeGreaterThan(0);
    tiny.clearPrefixCache();
    const fresh = await tiny.generate(ids, { temperature: 0, maxTokens: 8, stopOnEos: false }).result;
    expect(fresh.stats.cachedPromptTokens).toBe(0);
    expect(cont.tokenIds).toEqual(fresh.tokenIds);
    // A session with lookup gives the turns a session without it gives, appending to its cache.
    const turns = ["Say a b c d a b c d a b c d", "Again: a b c d a b c d", "And once more"];
    const plain = tiny.createSession({ systemPrompt: "Repeat." });
    const fast = tiny.createSession({ systemPrompt: "Repeat." });
    try {
      for (const t of turns) {
        const want = await plain.send(t, { temperature: 0, maxTokens: 20 }).result;
        const cachedBefore = fast.cachedTokens;
        const got = await fast.send(t, { temperature: 0, maxTokens: 20, lookup: 5 }).result;
        expect(got.tokenIds).toEqual(want.tokenIds);
        expect(got.stats.promptTokens).toBe(want.stats.promptTokens);
        if (cachedBefore > 0) expect(got.stats.cachedPromptTokens).toBe(cachedBefore);
      }
    } finally {
      plain.dispose();
      fast.dispose();
    }
    free(tiny);
  });

  it("refuses a bad lookup", () => {
    for (const lookup of [-1, 33, 1.5, "4"]) {
      expect(() => tiny.generate("x", { lookup } as never)).toThrow(expect.objectContaining({ code: "ERR_INVALID_ARGUMENT", field: "lookup" }));
    }
  });
});
