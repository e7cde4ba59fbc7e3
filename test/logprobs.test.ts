// The logprobs option: log-softmax of the raw logits for each generated token and its top alternatives.
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Llama2 } from "../lib/llama2.js";
import { tokenLogprob } from "../lib/logprobs.js";
import { ensureDemoModel } from "../lib/synth/demo.js";
import type { TokenLogprob } from "../lib/types.js";

const text = (id: number) => (id === 0 ? null : new TextEncoder().encode(`t${id}`));

describe("tokenLogprob", () => {
  it("is the log-softmax in float64, with the best alternatives in order (ties: lower id)", () => {
    const logits = Float32Array.from([1.5, -2, 3, NaN, 3, -Infinity, 0.25, 80, -80]);
    let z = 0;
    for (const v of logits) if (v > -Infinity) z += Math.exp(v - 80);
    const want = (i: number) => logits[i]! - 80 - Math.log(z);
    const r = tokenLogprob(logits, 2, 4, text);
    expect(r.id).toBe(2);
    expect(r.logprob).toBeCloseTo(want(2), 12);
    expect(r.token).toBe("t2");
    expect(r.bytes).toEqual([0x74, 0x32]);
    expect(r.top.map((t) => t.id)).toEqual([7, 2, 4, 0]);
    for (const t of r.top) expect(t.logprob).toBeCloseTo(want(t.id), 12);
    expect(r.top[3]!.token).toBe(""); // a control token outputs nothing
    expect(tokenLogprob(logits, 5, 0, text).logprob).toBe(-Infinity);
    expect(tokenLogprob(logits, 2, 0, text).top).toEqual([]);
    // More alternatives asked than finite logits: only the finite ones.
    expect(tokenLogprob(Float32Array.from([0, -Infinity, NaN]), 0, 5, text).top.map((t) => t.id)).toEqual([0]);
  });
});

describe("generate with logprobs (demo model)", () => {
  let llama: Llama2;
  beforeAll(async () => {
    llama = await Llama2.load(await ensureDemoModel({ dir: path.join(os.tmpdir(), "llama2-native-test-home", "models") }), { device: "cpu", contextLength: 256 });
  }, 120_000);
  afterAll(() => llama?.dispose());

  it("reports one entry per token, streamed and whole, without changing what is sampled", async () => {
    for (const opts of [{ temperature: 0 }, { temperature: 0.9, seed: 4 }, { temperature: 0.7, seed: 2, topK: 5, repetitionPenalty: 1.2 }]) {
      const plain = await llama.generate("Once upon a time", { ...opts, maxTokens: 12 }).result;
      expect(plain.logprobs).toBeUndefined();
      const s = llama.generate("Once upon a time", { ...opts, maxTokens: 12, logprobs: 3 });
      const streamed: TokenLogprob[] = [];
      for await (const c of s) if (c.logprobs) streamed.push(...c.logprobs);
      const r = await s.result;
      expect(r.tokenIds).toEqual(plain.tokenIds); // full logits from the engine sample the same tokens
      expect(r.logprobs!.map((l) => l.id)).toEqual(r.tokenIds);
      expect(streamed).toEqual(r.logprobs);
      for (const l of r.logprobs!) {
        expect(l.logprob).toBeLessThanOrEqual(0);
        expect(l.top).toHaveLength(3);
        expect(l.top[0]!.logprob).toBeGreaterThanOrEqual(l.top[1]!.logprob);
        expect(l.top.reduce((a, t) => a + Math.exp(t.logprob), 0)).toBeLessThanOrEqual(1 + 1e-9);
        if (opts.temperature === 0) expect(l.top[0]!.id).toBe(l.id); // greedy takes the most likely token
        if (l.top.some((t) => t.id === l.id)) expect(l.top.find((t) => t.id === l.id)!.logprob).toBe(l.logprob);
      }
    }
  });

  it("validates the option", () => {
    expect(() => llama.generate("x", { logprobs: 21 })).toThrow(expect.objectContaining({ code: "ERR_INVALID_ARGUMENT", field: "logprobs" }));
    expect(() => llama.generate("x", { logprobs: 1.5 })).toThrow(expect.objectContaining({ field: "logprobs" }));
  });
});
