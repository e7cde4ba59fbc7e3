// Speculative decoding with a draft model (`draft: { model, tokens }`): a second model with the same
// vocabulary proposes tokens greedily; the target keeps those its sampler confirms. Greedy output must be
// token for token the target's own (the CPU backend gives a token the same logits in any step), the draft
// model's KV must follow the target's history, and a draft model that fails must not fail the generation.
import { afterAll, beforeAll, expect, it } from "vitest";
import { Llama2 } from "../lib/llama2.js";
import { describeShared, readSharedJson, sharedPath } from "./helpers/shared.js";

const STORIES = "models/stories260K.bin";
const STORIES_FX = "fixtures/stories260K-greedy.json";
const TINY = "models/tiny-llama-f16.gguf";
const TINY_Q8 = "models/tiny-llama-q8_0.gguf";

describeShared("speculative decoding with a draft model", [STORIES, STORIES_FX, TINY, TINY_Q8], () => {
  let target: Llama2;
  let drafter: Llama2;
  let stories: Llama2;
  beforeAll(async () => {
    target = await Llama2.load(sharedPath(TINY), { device: "cpu", contextLength: 256 });
    // The same model quantized to Q8_0: nearly the same predictions, so most drafts come true.
    drafter = await Llama2.load(sharedPath(TINY_Q8), { device: "cpu", contextLength: 256 });
    stories = await Llama2.load(sharedPath(STORIES), { device: "cpu" });
  });
  afterAll(async () => {
    await target?.dispose();
    await drafter?.dispose();
    await stories?.dispose();
  });
  const allFree = (m: Llama2) => {
    m.clearPrefixCache();
    expect(m._native().kvState().freeBlocks).toBe(m._native().kvState().totalBlocks);
  };

  it("greedy: the target's own tokens, most drafts accepted, alone and several at once", async () => {
    const prompts = ["Once upon a time", "The weather today is", "def fibonacci(n):"];
    const base = await Promise.all(prompts.map((p) => target.generate(p, { temperature: 0, maxTokens: 48, stopOnEos: false }).result));
    for (const tokens of [1, 4, 8]) {
      const runs = await Promise.all(prompts.map((p) => target.generate(p, { temperature: 0, maxTokens: 48, stopOnEos: false, draft: { model: drafter, tokens } }).result));
      runs.forEach((r, i) => {
        expect(r.tokenIds, `${prompts[i]} tokens ${tokens}`).toEqual(base[i]!.tokenIds);
        expect(r.text).toBe(base[i]!.text);
        expect(r.stats.acceptedDraftTokens!).toBeLessThanOrEqual(r.stats.draftTokens!);
      });
      const accepted = runs.reduce((a, r) => a + r.stats.acceptedDraftTokens!, 0);
      const drafted = runs.reduce((a, r) => a + r.stats.draftTokens!, 0);
      console.log(`draft tokens ${tokens}: ${accepted}/${drafted} drafts accepted over ${runs.length * 48} tokens`);
      expect(accepted / drafted).toBeGreaterThan(0.5);
    }
    allFree(target);
    allFree(drafter); // every drafting sequence was freed
  });

  it("llama2.c's ids on stories260K with itself as the draft model (every draft comes true)", async () => {
    const twin = await Llama2.load(sharedPath(STORIES), { device: "cpu" });
    try {
      const c = readSharedJson<{ cases: { prompt: number[]; generated: number[] }[] }>(STORIES_FX).cases[1]!;
      const r = await stories.generate(c.prompt, { temperature: 0, stopOnEos: false, maxTokens: c.generated.length, draft: { model: twin, tokens: 6 } }).result;
      expect(r.tokenIds).toEqual(c.generated);
      expect(r.stats.acceptedDraftTokens).toBe(r.stats.draftTokens);
      // Far fewer target steps than tokens: each step keeps its drafts and adds one.
      expect(r.stats.acceptedDraftTokens!).toBeGreaterThan(c.generated.length * 0.7);
    } finally {
      await twin.dispose();
    }
  });

  it("sampling: a seed reproduces the run; a session's turns follow the draft model too", async () => {
    const opts = { temperature: 0.7, seed: 5, maxTokens: 32, stopOnEos: false, draft: { model: drafter } };
    const a = await target.generate("Once upon a time", opts).result;
    const b = await target.generate("Once upon a time", opts).result;
    expect(b.tokenIds).toEqual(a.tokenIds);
    expect(a.stats.draftTokens).toBeGreaterThan(0);
    const plain = target.createSession({ systemPrompt: "Be brief." });
    const fast = target.createSession({ systemPrompt: "Be brief." });
    drafter.clearPrefixCache();
    try {
      for (const [turn, t] of ["Hello there", "Tell me more"].entries()) {
        const hits = drafter.stats().prefixCache!.hitTokens;
        const want = await plain.send(t, { temperature: 0, maxTokens: 16 }).result;
        const got = await fast.send(t, { temperature: 0, maxTokens: 16, draft: { model: drafter, tokens: 4 } }).result;
        expect(got.tokenIds).toEqual(want.tokenIds);
        expect(got.stats.acceptedDraftTokens).toBeGreaterThan(0);
        // The draft model's sequence went to its prefix cache: the second turn starts from the first's.
        if (turn === 1) expect(drafter.stats().prefixCache!.hitTokens - hits).toBeGreaterThan(want.stats.cachedPromptTokens / 2);
      }
    } finally {
      plain.dispose();
      fast.dispose();
    }
    allFree(drafter);
  });

  it("the draft model's KV fills with cached drafting sequences, which give way to new ones", async () => {
    // A draft model with room for one 64-token sequence: each generation leaves its sequence in the
    // prefix cache, and the next evicts what it needs.
    const small = await Llama2.load(sharedPath(TINY_Q8), { device: "cpu", contextLength: 64, maxSequences: 1 });
    try {
      for (const p of ["Once upon a time", "The weather today is", "def fibonacci(n):", "Dear diary,", "In the beginning"]) {
        const r = await target.generate(p, { temperature: 0, maxTokens: 20, stopOnEos: false, draft: { model: small, tokens: 4 } }).result;
        expect(r.stats.acceptedDraftTokens, p).toBeGreaterThan(0);
      }
      expect(small.stats().prefixCache!.evictions).toBeGreaterThan(0);
    } finally {
      await small.dispose();
    }
  });

  it("a draft model that goes away mid-generation only stops the drafting", async () => {
    const gone = await Llama2.load(sharedPath(TINY_Q8), { device: "cpu", contextLength: 256 });
    const base = await target.generate("Once upon a time", { temperature: 0, maxTokens: 40, stopOnEos: false }).result;
    const stream = target.generate("Once upon a time", { temperature: 0, maxTokens: 40, stopOnEos: false, draft: { model: gone, tokens: 4 } });
    let n = 0;
    for await (const c of stream) {
      n += c.tokenIds.length;
      if (n >= 5 && n < 10) await gone.dispose();
    }
    const r = await stream.result;
    expect(r.tokenIds).toEqual(base.tokenIds);
    allFree(target);
  });

  it("refuses a draft model with another vocabulary, itself, a disposed one, bad tokens, or with lookup", async () => {
    const bad = (draft: unknown, field: string, extra: object = {}) =>
      expect(() => target.generate("x", { draft, ...extra } as never)).toThrow(expect.objectContaining({ code: "ERR_INVALID_ARGUMENT", field }));
    bad({ model: stories }, "draft.model"); // vocabulary 512, not 32000
    bad({ model: target }, "draft.model");
    bad({ model: "tiny.gguf" }, "draft.model");
    bad({ model: drafter, tokens: 0 }, "draft.tokens");
    bad({ model: drafter, tokens: 33 }, "draft.tokens");
    bad({ model: drafter, extra: 1 }, "draft.extra");
    bad({ model: drafter }, "draft", { lookup: 4 });
    bad(null, "draft");
    const disposed = await Llama2.load(sharedPath(TINY_Q8), { device: "cpu", contextLength: 64 });
    await disposed.dispose();
    bad({ model: disposed }, "draft.model");
  });
});
