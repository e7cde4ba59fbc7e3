// Embeddings: the engine's final hidden states (output -3: after the last RMSNorm, what the classifier reads)
// and embed()'s pooling. The oracle is the model's own classifier read from the file: each hidden state
// times the classifier rows must give the logits the engine returns for the same token, which a state taken
// before the norm, from another row, or from another position would not.
import { readFileSync } from "node:fs";
import { afterAll, beforeAll, expect, it } from "vitest";
import { Llama2 } from "../lib/llama2.js";
import { f16ToF32 } from "../lib/synth/half.js";
import { describeShared, readSharedJson, sharedPath, type StoriesCase } from "./helpers/shared.js";

const STORIES = "models/stories260K.bin";
const STORIES_FX = "fixtures/stories260K-greedy.json";
const TINY_HF = "models/tiny-llama-hf/model.safetensors";
const TINY_DIR = "models/tiny-llama-hf";

// llama2.c's file: 7 int32 (dim, hidden, layers, heads, kv heads, vocab (< 0: untied), seq), then the fp32
// token embedding, which a positive vocab size shares with the classifier.
function storiesClassifier(file: string): { rows: Float32Array; dim: number; vocab: number } {
  const buf = readFileSync(file);
  const dim = buf.readInt32LE(0);
  const vocab = buf.readInt32LE(20);
  expect(vocab).toBeGreaterThan(0); // tied
  const rows = new Float32Array(vocab * dim);
  for (let i = 0; i < rows.length; i++) rows[i] = buf.readFloatLE(28 + 4 * i);
  return { rows, dim, vocab };
}

// A safetensors file's fp16 `lm_head.weight`.
function safetensorsClassifier(file: string): { rows: Float32Array; dim: number; vocab: number } {
  const buf = readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString("utf8")) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  const t = header["lm_head.weight"]!;
  expect(t.dtype).toBe("F16");
  const [vocab, dim] = t.shape as [number, number];
  const rows = new Float32Array(vocab * dim);
  const base = 8 + n + t.data_offsets[0];
  for (let i = 0; i < rows.length; i++) rows[i] = f16ToF32(buf.readUInt16LE(base + 2 * i));
  return { rows, dim, vocab };
}

// The worst |hidden . W[v] - logits[v]| over the vocabulary, relative to the logits' largest magnitude.
function classifierError(hidden: Float32Array, logits: Float32Array, W: { rows: Float32Array; dim: number; vocab: number }): number {
  let worst = 0;
  let scale = 0;
  for (let v = 0; v < W.vocab; v++) {
    let dot = 0;
    for (let i = 0; i < W.dim; i++) dot += hidden[i]! * W.rows[v * W.dim + i]!;
    worst = Math.max(worst, Math.abs(dot - logits[v]!));
    scale = Math.max(scale, Math.abs(logits[v]!));
  }
  return worst / scale;
}

const norm = (v: Float32Array) => Math.sqrt(v.reduce((s, x) => s + x * x, 0));

describeShared("embeddings (final hidden states, pooled)", [STORIES, STORIES_FX, TINY_HF], () => {
  let stories: Llama2;
  let tiny: Llama2;
  const cases = () => readSharedJson<{ cases: StoriesCase[] }>(STORIES_FX).cases;
  beforeAll(async () => {
    stories = await Llama2.load(sharedPath(STORIES), { device: "cpu" });
    tiny = await Llama2.load(sharedPath(TINY_DIR), { device: "cpu" });
  });
  afterAll(async () => {
    await stories?.dispose();
    await tiny?.dispose();
  });

  // Hidden states of `ids` (every token's, or the last one's) and the last token's logits, each from its
  // own sequence.
  async function hiddenAndLogits(m: Llama2, ids: number[], every: boolean): Promise<{ hidden: Float32Array; logits: Float32Array }> {
    const n = m._native();
    const a = n.createSequence();
    const b = n.createSequence();
    try {
      const [h, l] = await n.forward([
        { seq: a, tokens: Int32Array.from(ids), output: -3, every },
        { seq: b, tokens: Int32Array.from(ids), output: -1 },
      ]);
      expect(h).toBeInstanceOf(Float32Array);
      expect(l).toBeInstanceOf(Float32Array);
      return { hidden: h as Float32Array, logits: l as Float32Array };
    } finally {
      n.freeSequence(a);
      n.freeSequence(b);
    }
  }

  it("a token's hidden state times the classifier gives its logits (stories260K: tied fp32; tiny-llama: fp16 lm_head)", async () => {
    const W = storiesClassifier(sharedPath(STORIES));
    const T = safetensorsClassifier(sharedPath(TINY_HF));
    const errs: number[] = [];
    for (const c of cases().slice(0, 3)) {
      const { hidden, logits } = await hiddenAndLogits(stories, [...c.prompt, ...c.generated.slice(0, 20)], false);
      expect(hidden.length).toBe(W.dim);
      errs.push(classifierError(hidden, logits, W));
    }
    const ids = tiny.tokenize("The quick brown fox jumps over the lazy dog", { bos: true });
    const t = await hiddenAndLogits(tiny, ids, false);
    expect(t.hidden.length).toBe(T.dim);
    errs.push(classifierError(t.hidden, t.logits, T));
    console.log(`hidden . classifier vs logits, worst relative: ${errs.map((e) => e.toExponential(1)).join(", ")}`);
    for (const e of errs) expect(e).toBeLessThan(1e-5);
    // The un-normed residual would not do: scaling the state breaks the identity by whole units.
    expect(classifierError(t.hidden.map((x) => x * 1.5), t.logits, T)).toBeGreaterThan(0.1);
  }, 60_000);

  it("every token's row (output -3 with every) is that prefix's last hidden state, in order, bit for bit", async () => {
    const c = cases()[1]!;
    const ids = [...c.prompt, ...c.generated.slice(0, 12)];
    const all = (await hiddenAndLogits(stories, ids, true)).hidden;
    const D = stories.info.config.dim;
    expect(all.length).toBe(ids.length * D);
    for (const r of [0, 1, Math.floor(ids.length / 2), ids.length - 1]) {
      const last = (await hiddenAndLogits(stories, ids.slice(0, r + 1), false)).hidden;
      expect(Array.from(all.subarray(r * D, (r + 1) * D))).toEqual(Array.from(last));
    }
  }, 60_000);

  it("embed(): mean over the tokens but BOS, or the last token's; unit length unless normalize: false", async () => {
    const text = "Once upon a time, there was a little dog named Max.";
    const ids = tiny.tokenize(text, { bos: true });
    const D = tiny.info.config.dim;
    const rows = (await hiddenAndLogits(tiny, ids, true)).hidden;
    const mean = new Float64Array(D);
    for (let r = 1; r < ids.length; r++) for (let i = 0; i < D; i++) mean[i]! += rows[r * D + i]! / (ids.length - 1);

    const raw = await tiny.embed(text, { normalize: false });
    expect(raw.tokenCount).toBe(ids.length);
    expect(raw.embedding.length).toBe(D);
    for (let i = 0; i < D; i++) expect(raw.embedding[i]).toBeCloseTo(mean[i]!, 5);

    const unit = await tiny.embed(text);
    expect(norm(unit.embedding)).toBeCloseTo(1, 5);
    const r = norm(raw.embedding);
    for (let i = 0; i < D; i++) expect(unit.embedding[i]).toBeCloseTo(raw.embedding[i]! / r, 6);

    const last = await tiny.embed(ids, { pooling: "last", normalize: false });
    expect(Array.from(last.embedding)).toEqual(Array.from(rows.subarray((ids.length - 1) * D)));
    // addBos: false embeds the text's own tokens; then every token is pooled.
    const noBos = await tiny.embed(text, { addBos: false, normalize: false });
    expect(noBos.tokenCount).toBe(ids.length - 1);
    // One token (a lone BOS): its own state.
    const bos = await tiny.embed([tiny.info.bosId], { normalize: false });
    expect(Array.from(bos.embedding)).toEqual(Array.from(rows.subarray(0, D)));
  }, 60_000);

  it("similar texts embed closer than unrelated ones, and concurrent embeds (one batch, beside a generation) equal sequential ones", async () => {
    const texts = ["Tom had a red ball. He liked to play with the ball.", "Tom had a red ball and he played with it.", "The sun is hot.", "Lily saw a big cat in the garden."];
    const alone = [];
    for (const t of texts) alone.push((await tiny.embed(t)).embedding);
    const [together] = await Promise.all([Promise.all(texts.map((t) => tiny.embed(t))), tiny.generate("Hello", { maxTokens: 8, temperature: 0 }).result]);
    // The CPU backend is batch-invariant: the same bits in a shared step.
    expect(together.map((r) => Array.from(r.embedding))).toEqual(alone.map((e) => Array.from(e)));
    const cos = (a: Float32Array, b: Float32Array) => a.reduce((s, x, i) => s + x * b[i]!, 0);
    // Random weights (tiny-llama) carry no meaning, but two texts sharing most of their tokens still pool
    // to closer vectors than texts sharing none: a check that pooling follows the tokens at all.
    expect(cos(alone[0]!, alone[1]!)).toBeGreaterThan(cos(alone[0]!, alone[2]!));
    expect(tiny._native().kvState().freeBlocks).toBe(tiny._native().kvState().totalBlocks);
  }, 60_000);

  it("bad input: typed errors, the model keeps working", async () => {
    await expect(tiny.embed("hi", { pooling: "max" as never })).rejects.toMatchObject({ code: "ERR_INVALID_ARGUMENT" });
    await expect(tiny.embed("hi", { normalize: 1 as never })).rejects.toMatchObject({ code: "ERR_INVALID_ARGUMENT" });
    await expect(tiny.embed("hi", { bogus: 1 } as never)).rejects.toMatchObject({ code: "ERR_INVALID_ARGUMENT" });
    await expect(stories.embed("hi")).rejects.toMatchObject({ code: "ERR_TOKENIZER" }); // llama2.c files carry no tokenizer
    await expect(stories.embed([])).rejects.toMatchObject({ code: "ERR_INVALID_ARGUMENT" });
    await expect(stories.embed([1, 99999])).rejects.toMatchObject({ code: "ERR_INVALID_ARGUMENT" });
    await expect(stories.embed(42 as never)).rejects.toMatchObject({ code: "ERR_INVALID_ARGUMENT" });
    await expect(stories.embed(new Array(stories.info.contextLength + 1).fill(5))).rejects.toMatchObject({ code: "ERR_CONTEXT_OVERFLOW" });
    const ac = new AbortController();
    ac.abort();
    await expect(tiny.embed("hi", { signal: ac.signal })).rejects.toMatchObject({ code: "ERR_ABORTED" });
    // The native step rejects an output code out of range.
    const n = stories._native();
    const s = n.createSequence();
    await expect(n.forward([{ seq: s, tokens: Int32Array.from([1, 2]), output: -4 }])).rejects.toMatchObject({ code: "ERR_INVALID_ARGUMENT" });
    n.freeSequence(s);
    expect((await stories.embed([1, 5, 9])).embedding.length).toBe(stories.info.config.dim);
  }, 60_000);
});
