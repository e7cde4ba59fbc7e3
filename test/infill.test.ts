// Fill in the middle (Code Llama's infilling) on a synthetic model with Code Llama's vocabulary layout:
// Llama 2's 32,000 pieces and 16 more, ▁<PRE> ▁<SUF> ▁<MID> ▁<EOT> at 32007-32010. The prompt ids are checked
// against Meta's formula computed with sentencepiece-js on the real tokenizer.model (its encode, and its
// encode("☺" + s)[2:] for text without the leading space); then the end at ▁<EOT>, the kept leading space,
// the server's `suffix` and the CLI's --suffix. No Code Llama weights are run (none here).
import { mkdtempSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, expect, it } from "vitest";
import { Llama2Error } from "../lib/errors.js";
import { Llama2 } from "../lib/llama2.js";
import { startServer, type RunningServer } from "../lib/server/http.js";
import { Tokenizer } from "../lib/tokenizer.js";
import { runCli } from "./helpers/cli.js";
import { CODE_LLAMA_FIM, writeCodeLlamaLikeModel } from "./helpers/code-llama.js";
import { postJson } from "./helpers/fake-backend.js";
import { describeShared, sharedPath } from "./helpers/shared.js";

const FIM = CODE_LLAMA_FIM;
const greedy = (n: number) => ({ temperature: 0, maxTokens: n });

describeShared("fill in the middle (Code Llama's prompt format)", ["models/tokenizer.model", "models/tiny-llama-f16.gguf"], () => {
  const tmp = mkdtempSync(path.join(tmpdir(), "llama2-infill-"));
  let code: Llama2; // Code Llama's vocabulary
  let plain: Llama2; // Llama 2's: no infilling pieces
  let sp: { encodeIds(s: string): number[] };
  let server: RunningServer;
  let url: string;

  beforeAll(async () => {
    const base = await Tokenizer.fromFile(sharedPath("models/tokenizer.model"));
    code = await Llama2.load(await writeCodeLlamaLikeModel(tmp, base.vocabulary), { device: "cpu", maxSequences: 4 });
    plain = await Llama2.load(sharedPath("models/tiny-llama-f16.gguf"), { device: "cpu", maxSequences: 2 });
    const { SentencePieceProcessor } = createRequire(import.meta.url)("@agnai/sentencepiece-js");
    const proc = new SentencePieceProcessor();
    await proc.load(sharedPath("models/tokenizer.model"));
    sp = proc;
    server = await startServer({ backend: code, port: 0 });
    url = server.url.replace(/\/$/, "");
  }, 120_000);

  afterAll(async () => {
    await server?.shutdown();
    await code?.dispose();
    await plain?.dispose();
    rmSync(tmp, { recursive: true, force: true });
  });

  /** Meta's infilling_prompt_tokens, with sentencepiece-js as the tokenizer. */
  const metaPrompt = (pre: string, suf: string, suffixFirst = false): number[] => {
    const encodeInfilling = (s: string) => sp.encodeIds("☺" + s).slice(2);
    return suffixFirst
      ? [1, FIM.prefix, FIM.suffix, ...encodeInfilling(suf), FIM.middle, ...sp.encodeIds(pre)]
      : [1, FIM.prefix, ...sp.encodeIds(pre), FIM.suffix, ...encodeInfilling(suf), FIM.middle];
  };

  const cases: [string, string][] = [
    ["def remove_non_ascii(s: str) -> str:\n    \"\"\" ", "\n    return result\n"],
    ["", ""],
    ["x = 1", " # a comment"],
    ["    indented", "   three leading spaces"],
    ["// 日本語 🦙", "\n}\n"],
  ];

  it("finds the pieces; the prompt is Meta's, in both orders", () => {
    expect(code.info.fimTokens).toEqual(FIM);
    expect(plain.info.fimTokens).toBeUndefined();
    for (const [pre, suf] of cases) {
      expect(code.infillPrompt(pre, suf), JSON.stringify([pre, suf])).toEqual(metaPrompt(pre, suf));
      expect(code.infillPrompt(pre, suf, { suffixFirst: true })).toEqual(metaPrompt(pre, suf, true));
    }
  });

  it("generates the middle from that prompt, ends at ▁<EOT>, and keeps the middle's leading space", async () => {
    const [pre, suf] = cases[0]!;
    const r = await code.infill(pre, suf, greedy(6)).result;
    const same = await code.generate(code.infillPrompt(pre, suf), greedy(6)).result;
    expect(r.tokenIds).toEqual(same.tokenIds);
    expect(r.stats.promptTokens).toBe(metaPrompt(pre, suf).length);
    // ▁<EOT> ends the middle (finish "stop") and is not part of it.
    const ended = await code.infill(pre, suf, { ...greedy(6), logitBias: { [FIM.eot]: 100 } }).result;
    expect(ended).toMatchObject({ tokenIds: [], text: "", stats: { finishReason: "stop" } });
    // A middle that starts with a "▁" piece keeps its space (Meta's decode_infilling).
    const ret = code.tokenize("return", { bos: false })[0]!; // "▁return"
    const spaced = await code.infill(pre, suf, { ...greedy(1), logitBias: { [ret]: 100 } }).result;
    expect(spaced.text).toBe(" return");
    // Streaming gives the same text.
    let streamed = "";
    for await (const c of code.infill(pre, suf, greedy(6))) streamed += c.text;
    expect(streamed).toBe(r.text);
  });

  it("refuses models without the pieces, bad arguments and generate-only options, typed", async () => {
    const err = (fn: () => unknown) => {
      try {
        fn();
      } catch (e) {
        return e as Llama2Error;
      }
      throw new Error("expected a throw");
    };
    expect(err(() => plain.infill("a", "b"))).toMatchObject({ code: "ERR_FORMAT_UNSUPPORTED" });
    expect(err(() => plain.infill("a", "b")).message).toMatch(/not trained for infilling.*▁<PRE>/);
    expect(err(() => code.infill(5 as unknown as string, "b"))).toMatchObject({ code: "ERR_INVALID_ARGUMENT", field: "prefix" });
    expect(err(() => code.infill("a", null as unknown as string))).toMatchObject({ code: "ERR_INVALID_ARGUMENT", field: "suffix" });
    expect(err(() => code.infill("a", "b", { suffixFirst: "yes" as unknown as boolean }))).toMatchObject({ code: "ERR_INVALID_ARGUMENT", field: "suffixFirst" });
    expect(err(() => code.infill("a", "b", { addBos: false } as object))).toMatchObject({ code: "ERR_INVALID_ARGUMENT" });
    // The model is still fine.
    expect((await code.infill("a", "b", greedy(2)).result).tokenIds).toHaveLength(2);
  });

  it("the server: /v1/completions with suffix is infilling; refused without the pieces, with echo or token ids", async () => {
    const [pre, suf] = cases[0]!;
    const want = await code.infill(pre, suf, greedy(5)).result;
    const res = await postJson(`${url}/v1/completions`, { prompt: pre, suffix: suf, max_tokens: 5, temperature: 0 });
    expect(res.status).toBe(200);
    const j = await res.json();
    expect(j.choices[0].text).toBe(want.text);
    expect(j.usage.prompt_tokens).toBe(metaPrompt(pre, suf).length);
    const stopped = await (await postJson(`${url}/v1/completions`, { prompt: pre, suffix: suf, max_tokens: 5, logit_bias: { [FIM.eot]: 100 } })).json();
    expect(stopped.choices[0]).toMatchObject({ text: "", finish_reason: "stop" });
    // "" is no suffix: a plain completion, as before.
    const plainRes = await (await postJson(`${url}/v1/completions`, { prompt: pre, suffix: "", max_tokens: 3, temperature: 0 })).json();
    expect(plainRes.choices[0].text).toBe((await code.generate(pre, greedy(3)).result).text);
    for (const body of [
      { prompt: pre, suffix: suf, echo: true },
      { prompt: [1, 2, 3], suffix: suf },
      { prompt: pre, suffix: 5 },
    ]) {
      const bad = await postJson(`${url}/v1/completions`, body);
      expect(bad.status).toBe(400);
      expect((await bad.json()).error.param).toBe("suffix");
    }
    const other = await startServer({ backend: plain, port: 0 });
    try {
      const bad = await postJson(`${other.url}v1/completions`, { prompt: pre, suffix: suf });
      expect(bad.status).toBe(400);
      expect((await bad.json()).error).toMatchObject({ param: "suffix", message: expect.stringMatching(/Code Llama/) });
    } finally {
      await other.shutdown();
    }
  });

  it("llama2 inspect names the pieces", async () => {
    const r = await runCli(["inspect", "--model", code.info.path]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain("infill:     fill in the middle (▁<PRE> 32007, ▁<SUF> 32008, ▁<MID> 32009, ▁<EOT> 32010)");
    const j = await runCli(["inspect", "--model", code.info.path, "--json"]);
    expect(JSON.parse(j.stdout).tokenizer.fimTokens).toEqual(FIM);
  });

  it("llama2 generate --suffix", async () => {
    const [pre, suf] = cases[0]!;
    const want = await code.infill(pre, suf, greedy(4)).result;
    const model = code.info.path;
    const r = await runCli(["generate", "--model", model, "--device", "cpu", "--prompt", pre, "--suffix", suf, "--max-tokens", "4", "--temperature", "0", "--json"]);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout).ids).toEqual(want.tokenIds);
    const first = await runCli(["generate", "--model", model, "--device", "cpu", "--prompt", pre, "--suffix", suf, "--suffix-first", "--max-tokens", "2", "--temperature", "0", "--json"]);
    expect(first.code, first.stderr).toBe(0);
    expect(JSON.parse(first.stdout).ids).toEqual((await code.infill(pre, suf, { ...greedy(2), suffixFirst: true }).result).tokenIds);
    for (const args of [["--prompt-ids", "1,2", "--suffix", "x"], ["--prompt", "a", "--suffix-first"], ["--prompt", "a", "--suffix", "b", "--no-bos"]]) {
      const bad = await runCli(["generate", "--model", model, "--device", "cpu", ...args]);
      expect(bad.code, args.join(" ")).toBe(2);
    }
  }, 60_000);
});
