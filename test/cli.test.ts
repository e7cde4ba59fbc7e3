// The `llama2` CLI as a user runs it: `node dist/cli/main.js ...` in a child process (dist is built
// first when missing or older than lib/). generate / tokenize / chat / inspect against the fixtures,
// and the error contract: bad flags -> exit 2 with `error [ERR_INVALID_ARGUMENT]: --flag ...`, other
// errors -> exit 1 with their code.
import { spawnSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseArgs } from "../lib/cli/args.js";
import { parseStopFlag } from "../lib/cli/model-options.js";
import { Llama2 } from "../lib/llama2.js";
import { Scratch } from "./helpers/corrupt.js";
import { ensureDist } from "./helpers/dist.js";
import { describeShared, projectRoot, readSharedJson, sharedPath } from "./helpers/shared.js";

const CLI = path.join(projectRoot, "dist/cli/main.js");
const STORIES = "models/stories260K.bin";
const STORIES_FX = "fixtures/stories260K-greedy.json";
const TINY = "models/tiny-llama-f16.gguf";
const TINY_HF = "models/tiny-llama-hf";
const TOKENIZER = "models/tokenizer.model";
const TOK_FX = "fixtures/llama2-tokenizer.json";

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function cli(args: string[], input?: string, env?: Record<string, string>): Run {
  const r = spawnSync(process.execPath, [CLI, ...args], {
    cwd: projectRoot,
    encoding: "utf8",
    input: input ?? "",
    timeout: 60_000,
    ...(env && { env: { ...process.env, ...env } }),
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

beforeAll(() => ensureDist(CLI), 120_000);

describe("CLI flag helpers", () => {
  it("--stop: comma lists with escapes, repeatable", () => {
    expect(parseStopFlag(["a,b", "\\n\\nUser:", "x\\,y", "back\\\\slash", ",,"])).toEqual(["a", "b", "\n\nUser:", "x,y", "back\\slash"]);
    const { flags } = parseArgs(["--stop", "a", "--stop=b,c"], { stop: { type: "string", repeatable: true, description: "" } });
    expect(flags.stop).toEqual(["a", "b,c"]);
  });
});

describe("--model demo", () => {
  // The demo model shared with the other tests that use it (generated once, ~40 MB).
  const env = { LLAMA2_HOME: path.join(os.tmpdir(), "llama2-native-test-home") };
  it("names the built-in demo model in generate, tokenize, inspect and bench, as in llama2 run", () => {
    const gen = cli(["generate", "--model", "demo", "--prompt-ids", "1,15043", "--max-tokens", "4", "--temperature", "0", "--json"], "", env);
    expect(gen.code, gen.stderr).toBe(0);
    expect(gen.stderr).toContain(path.join(env.LLAMA2_HOME, "models", "demo-v1.gguf"));
    expect(JSON.parse(gen.stdout).ids).toHaveLength(4);
    const tok = cli(["tokenize", "--model", "demo", "--text", "Hello", "--json"], "", env);
    expect(tok.code, tok.stderr).toBe(0);
    expect(JSON.parse(tok.stdout).ids).toEqual([15043]); // the real Llama 2 vocabulary
    const info = cli(["inspect", "--model", "demo", "--json"], "", env);
    expect(info.code, info.stderr).toBe(0);
    expect(JSON.parse(info.stdout).format).toBe("gguf");
    // An A/B switch is recorded in the result; a key-like variable is not.
    const bench = cli(["bench", "--model", "demo", "--device", "cpu", "--prompt", "8", "--gen", "4", "--reps", "1", "--skip-cold", "--json"], "", {
      ...env,
      LLAMA2_GEMM_WGMMA_MIN_M: "33",
      LLAMA2_API_KEY: "secret",
    });
    expect(bench.code, bench.stderr).toBe(0);
    const result = JSON.parse(bench.stdout);
    expect(result.model.path).toContain("demo-v1.gguf");
    expect(result.engine.switches).toMatchObject({ LLAMA2_GEMM_WGMMA_MIN_M: "33" });
    expect(result.engine.switches).not.toHaveProperty("LLAMA2_API_KEY");
  }, 120_000);

  it("generate --json-schema (inline or a file) constrains the output; a bad schema exits 2 naming its keyword", () => {
    const schema = { type: "object", properties: { name: { type: "string", maxLength: 8 }, n: { type: "integer" } }, required: ["name", "n"] };
    const scratch = new Scratch("llama2-cli-schema-");
    try {
      const file = path.join(scratch.dir, "schema.json");
      writeFileSync(file, JSON.stringify(schema));
      for (const arg of [JSON.stringify(schema), file]) {
        const r = cli(["generate", "--model", "demo", "--prompt", "Person:", "--temperature", "0", "--max-tokens", "200", "--json-schema", arg, "--json"], "", env);
        expect(r.code, r.stderr).toBe(0);
        const out = JSON.parse(r.stdout);
        expect(out.stats.finishReason).toBe("stop");
        expect(Object.keys(JSON.parse(out.text))).toEqual(["name", "n"]);
      }
    } finally {
      scratch.cleanup();
    }
    const bad = cli(["generate", "--model", "demo", "--prompt", "P", "--json-schema", '{"type":"string","pattern":"x"}'], "", env);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/ERR_INVALID_ARGUMENT.*pattern/);
    const missing = cli(["generate", "--model", "demo", "--prompt", "P", "--json-schema", "/nonexistent/schema.json"], "", env);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain("ERR_FILE_NOT_FOUND");
  }, 120_000);

  it("generate --grammar (GBNF rules inline or a file): the output is what the grammar accepts; bad rules exit 2 with the line", () => {
    const rules = 'root ::= "Code: " [A-Z]{2} "-" digit{3}\ndigit ::= [0-9]';
    const scratch = new Scratch("llama2-cli-grammar-");
    try {
      const file = path.join(scratch.dir, "code.gbnf");
      writeFileSync(file, rules);
      for (const arg of [rules, file]) {
        const r = cli(["generate", "--model", "demo", "--prompt", "Your code", "--seed", "3", "--max-tokens", "40", "--grammar", arg, "--json"], "", env);
        expect(r.code, r.stderr).toBe(0);
        const out = JSON.parse(r.stdout);
        expect(out.text).toMatch(/^Code: [A-Z]{2}-[0-9]{3}$/);
        expect(out.stats.finishReason).toBe("stop");
      }
    } finally {
      scratch.cleanup();
    }
    const bad = cli(["generate", "--model", "demo", "--prompt", "P", "--grammar", 'root ::= item\nitem ::= "a" | [b'], "", env);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/ERR_INVALID_ARGUMENT\]: --grammar: unterminated character class.*\(line 2, column 18\)/);
    const both = cli(["generate", "--model", "demo", "--prompt", "P", "--grammar", 'root ::= "a"', "--json-object"], "", env);
    expect(both.code).toBe(2);
    expect(both.stderr).toContain("--grammar");
  }, 120_000);
});

describeShared("llama2 CLI", [STORIES, STORIES_FX, TINY, TINY_HF, TOKENIZER, TOK_FX], () => {
  const fx = readSharedJson<{ cases: { prompt: number[]; generated: number[] }[] }>(STORIES_FX).cases;
  const tok = readSharedJson<{ encode: { text: string; ids: number[] }[]; chat: { dialog: unknown[]; ids: number[] }[] }>(TOK_FX);
  const stories = sharedPath(STORIES);
  const tiny = sharedPath(TINY);
  const scratch = new Scratch("llama2-cli-");
  afterAll(() => scratch.cleanup());

  it("generate --json on stories260K with --prompt-ids prints one JSON object with the fixture's ids", () => {
    for (const c of [fx[0]!, fx[2]!]) {
      const r = cli(["generate", "--model", stories, "--prompt-ids", c.prompt.join(","), "--temperature", "0", "--no-stop", "--max-tokens", String(c.generated.length), "--json"]);
      expect(r.code, r.stderr).toBe(0);
      const out = JSON.parse(r.stdout); // the whole stdout is one JSON value
      expect(Object.keys(out).sort()).toEqual(["ids", "stats", "text"]);
      expect(out.ids).toEqual(c.generated);
      expect(out.text).toBe("");
      expect(out.stats).toMatchObject({ promptTokens: c.prompt.length, completionTokens: c.generated.length, finishReason: "length" });
      expect(r.stderr).toContain("loaded");
    }
  });

  it("generate --lookup gives the same ids with drafts counted on stderr; a bad --lookup exits 2", () => {
    const c = fx[1]!;
    const r = cli(["generate", "--model", stories, "--prompt-ids", c.prompt.join(","), "-t", "0", "--no-stop", "-n", String(c.generated.length), "--lookup", "6", "--json"]);
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout);
    expect(out.ids).toEqual(c.generated);
    expect(out.stats.acceptedDraftTokens).toBeGreaterThan(0);
    expect(r.stderr).toMatch(/lookup drafts \d+\/\d+ accepted/);
    const bad = cli(["generate", "--model", stories, "--prompt-ids", "1,2", "--lookup", "33"]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain("--lookup");
  });

  it("generate / chat --draft-model: the model's own greedy ids, drafts counted; a draft of another vocabulary exits 2", () => {
    const args = ["generate", "-m", tiny, "--prompt", "Once upon a time", "-t", "0", "--no-stop", "-n", "24", "--json"];
    const base = JSON.parse(cli(args).stdout);
    const r = cli([...args, "--draft-model", sharedPath("models/tiny-llama-q8_0.gguf"), "--draft-tokens", "4"]);
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout);
    expect(out.ids).toEqual(base.ids);
    expect(out.stats.acceptedDraftTokens).toBeGreaterThan(0);
    expect(r.stderr).toMatch(/draft model .*tiny-llama-q8_0\.gguf/);
    expect(r.stderr).toMatch(/, draft model drafts \d+\/\d+ accepted/);
    expect(r.stderr).not.toContain("lookup drafts");
    const chat = cli(["chat", "-m", tiny, "-t", "0", "-n", "8", "--stats", "--draft-model", sharedPath("models/tiny-llama-q8_0.gguf")], "Hello\n");
    expect(chat.code, chat.stderr).toBe(0);
    expect(chat.stderr).toMatch(/drafts \d+\/\d+ accepted/);
    const bad = cli(["generate", "-m", tiny, "--prompt", "x", "--draft-model", stories]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/--draft-model: .*vocabulary \(512 tokens\)/);
    expect(cli(["generate", "-m", tiny, "--prompt", "x", "--draft-tokens", "4"]).stderr).toContain("--draft-tokens: needs --draft-model");
    expect(cli(["generate", "-m", tiny, "--prompt", "x", "--lookup", "4", "--draft-model", tiny]).code).toBe(2);
    // --context-shift: past a 32-token context.
    const long = JSON.parse(cli(["generate", "-m", tiny, "--context", "32", "--prompt", "Once", "-t", "0", "--no-stop", "-n", "80", "--context-shift", "--json"]).stdout);
    expect(long.ids).toHaveLength(80);
  });

  it("generate --kv-cache int8 loads an int8 KV cache (named on the loaded line) and still follows the fixture on case 0", () => {
    // Case 0 has no near-ties in its first 65 tokens: the int8 cache keeps every one (measured).
    const c = fx[0]!;
    const r = cli(["generate", "--model", stories, "--kv-cache", "int8", "--prompt-ids", c.prompt.join(","), "-t", "0", "--no-stop", "-n", String(c.generated.length), "--json"]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/loaded .*KV int8/);
    expect(JSON.parse(r.stdout).ids).toEqual(c.generated);
  });

  it("generate streams text to stdout (the --json text), info on stderr only; --quiet silences stderr", () => {
    const args = ["generate", "-m", tiny, "--prompt", "Once upon a time", "-t", "0", "--no-stop", "-n", "12"];
    const json = cli([...args, "--json"]);
    expect(json.code, json.stderr).toBe(0);
    const { text, ids } = JSON.parse(json.stdout);
    expect(ids).toHaveLength(12);
    const stream = cli(args);
    expect(stream.code).toBe(0);
    expect(stream.stdout).toBe(text.endsWith("\n") ? text : `${text}\n`);
    expect(stream.stderr).toMatch(/12 generated/);
    const quiet = cli([...args, "--quiet"]);
    expect(quiet.stdout).toBe(stream.stdout);
    expect(quiet.stderr).toBe("");
    // Without a tokenizer the ids stream instead of text.
    const idsOut = cli(["generate", "-m", stories, "--prompt-ids", fx[0]!.prompt.join(","), "-t", "0", "--no-stop", "-n", "5", "-q"]);
    expect(idsOut.stdout.trim().split(/\s+/).map(Number)).toEqual(fx[0]!.generated.slice(0, 5));
  });

  it("generate --stop (repeatable, comma lists) and sampling flags reach the generation", () => {
    const base = JSON.parse(cli(["generate", "-m", tiny, "--prompt", "Once upon a time", "-t", "0", "--no-stop", "-n", "12", "--json", "-q"]).stdout);
    const stop = base.text.slice(6, 9);
    const r = cli(["generate", "-m", tiny, "--prompt", "Once upon a time", "-t", "0", "--no-stop", "-n", "12", "--json", "-q", "--stop", "zzz,yyy", "--stop", stop]);
    const out = JSON.parse(r.stdout);
    expect(out.stats.finishReason).toBe("stopSequence");
    expect(out.text).toBe(base.text.slice(0, base.text.indexOf(stop)));
    const seeded = ["generate", "-m", tiny, "--prompt", "Hi", "--temperature", "0.9", "--top-k", "20", "--top-p", "0.9", "--min-p", "0.01", "--repetition-penalty", "1.1", "--seed", "5", "-n", "10", "--no-stop", "--json", "-q"];
    const a = JSON.parse(cli(seeded).stdout);
    const b = JSON.parse(cli(seeded).stdout);
    expect(b.ids).toEqual(a.ids);
    expect(a.ids).toHaveLength(10);
  });

  it("tokenize --json on tokenizer.model, a GGUF and an HF directory gives SentencePiece's ids", () => {
    for (const model of [sharedPath(TOKENIZER), tiny, sharedPath(TINY_HF)]) {
      for (const e of tok.encode.slice(0, 3)) {
        const r = cli(["tokenize", "--model", model, "--text", e.text, "--json"]);
        expect(r.code, r.stderr).toBe(0);
        expect(JSON.parse(r.stdout)).toEqual({ ids: e.ids });
      }
    }
    const bos = cli(["tokenize", "--model", tiny, "--text", tok.encode[0]!.text, "--bos", "--json"]);
    expect(JSON.parse(bos.stdout).ids).toEqual([1, ...tok.encode[0]!.ids]);
    // Without --json: one line per token with its piece, then a count.
    const plain = cli(["tokenize", "--model", sharedPath(TOKENIZER), "--text", "Hello, world!"]);
    expect(plain.code).toBe(0);
    expect(plain.stdout).toMatch(/15043\s+"▁Hello"/);
    expect(plain.stdout).toContain("4 tokens");
  });

  it("tokenize --chat applies the Llama 2 chat template", () => {
    for (const c of tok.chat) {
      const file = scratch.write("dialog.json", JSON.stringify(c.dialog));
      const r = cli(["tokenize", "--model", tiny, "--chat", file, "--json"]);
      expect(r.code, r.stderr).toBe(0);
      expect(JSON.parse(r.stdout).ids).toEqual(c.ids);
    }
    const viaStdin = cli(["tokenize", "--model", sharedPath(TOKENIZER), "--chat", "-", "--json"], JSON.stringify(tok.chat[0]!.dialog));
    expect(JSON.parse(viaStdin.stdout).ids).toEqual(tok.chat[0]!.ids);
    const bad = cli(["tokenize", "--model", tiny, "--chat", scratch.write("bad.json", JSON.stringify([{ role: "assistant", content: "x" }]))]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/^error \[ERR_INVALID_ARGUMENT\]: --chat: messages\[0\]\.role/);
  });

  it("chat with piped stdin answers each line, keeps the conversation, /reset and /exit work", async () => {
    const opts = { temperature: 0, maxTokens: 8, stopOnEos: false };
    // The expected replies, through the library.
    const m = await Llama2.load(tiny, { device: "cpu", prefixCache: false });
    const expected: string[] = [];
    try {
      const s = m.createSession({ systemPrompt: "Be brief." });
      expected.push((await s.send("Hello", opts).result).text);
      expected.push((await s.send("How are you?", opts).result).text);
      s.reset();
      expected.push((await s.send("Hi", opts).result).text);
      s.dispose();
    } finally {
      await m.dispose();
    }
    const r = cli(
      ["chat", "--model", tiny, "--system", "Be brief.", "--temperature", "0", "--max-tokens", "8", "--no-stop"],
      "Hello\nHow are you?\n/reset\nHi\n/exit\nnever answered\n",
    );
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toBe(expected.map((t) => (t.endsWith("\n") ? t : `${t}\n`)).join(""));
    expect(r.stderr).toContain("(conversation reset)");
    // End of input ends the chat too; unknown /commands are reported, not sent.
    const eof = cli(["chat", "-m", tiny, "-t", "0", "-n", "3", "--no-stop", "-q"], "/help\nHello\n");
    expect(eof.code).toBe(0);
    expect(eof.stdout.split("\n").filter(Boolean).length).toBeGreaterThanOrEqual(1);
    expect(eof.stderr).toContain("unknown command /help");
    // A model without a tokenizer cannot chat.
    const noTok = cli(["chat", "-m", stories], "Hello\n");
    expect(noTok.code).toBe(1);
    expect(noTok.stderr).toContain("error [ERR_TOKENIZER]");
  });

  it("chat goes on past a full context: the oldest exchanges leave it, as in a library session", async () => {
    const opts = { temperature: 0, maxTokens: 6, stopOnEos: false };
    const lines = ["Hello there", "Tell me more", "Why so?", "And then what", "Really now"];
    const m = await Llama2.load(tiny, { device: "cpu", prefixCache: false, contextLength: 64 });
    const expected: string[] = [];
    try {
      const s = m.createSession();
      for (const l of lines) expected.push((await s.send(l, opts).result).text);
      expect(s.droppedMessages).toBeGreaterThan(0);
      s.dispose();
    } finally {
      await m.dispose();
    }
    const r = cli(["chat", "--model", tiny, "--context", "64", "-t", "0", "-n", "6", "--no-stop"], lines.join("\n") + "\n");
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toBe(expected.map((t) => (t.endsWith("\n") ? t : `${t}\n`)).join(""));
    expect(r.stderr).toMatch(/the context is full: the \d+ oldest messages no longer reach the model/);
    expect(r.stderr).not.toContain("error [");
  });

  it("chat /save-state writes the conversation with its KV cache; --resume continues it as the chat itself would have", () => {
    const scratch = new Scratch("llama2-cli-state-");
    try {
      const file = path.join(scratch.dir, "talk.l2s");
      const flags = ["-t", "0", "-n", "6", "--no-stop"];
      const whole = cli(["chat", "--model", tiny, "--system", "Be brief.", ...flags], "Hello\nTell me more\nWhy?\n");
      expect(whole.code, whole.stderr).toBe(0);
      const first = cli(["chat", "--model", tiny, "--system", "Be brief.", ...flags], `Hello\nTell me more\n/save-state ${file}\n`);
      expect(first.code, first.stderr).toBe(0);
      expect(first.stderr).toMatch(new RegExp(`saved 2 exchanges and \\d+ cached tokens, \\d+ bytes, to ${file.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}`));
      const resumed = cli(["chat", "--model", tiny, "--resume", file, ...flags], "Why?\n");
      expect(resumed.code, resumed.stderr).toBe(0);
      expect(resumed.stderr).toMatch(/resumed 2 exchanges and \d+ cached tokens/);
      // The third reply: what the uninterrupted chat printed last.
      expect(whole.stdout.endsWith(resumed.stdout)).toBe(true);
      expect(resumed.stdout.length).toBeGreaterThan(0);
      // A state keeps its system prompt; another model is refused.
      const sys = cli(["chat", "--model", tiny, "--resume", file, "--system", "x", ...flags], "Why?\n");
      expect(sys.code).toBe(2);
      expect(sys.stderr).toMatch(/--system: .* is a saved session/);
      const other = cli(["chat", "--model", tiny, "--dtype", "int8", "--resume", file, ...flags], "Why?\n");
      expect(other.code).not.toBe(0);
      expect(other.stderr).toMatch(/ERR_SESSION_STATE.*dtype "f16" \(now "int8"\)/);
      const bad = cli(["chat", "--model", tiny, ...flags], "Hi\n/save-state /nonexistent-dir/x.l2s\n");
      expect(bad.code, bad.stderr).toBe(0);
      expect(bad.stderr).toMatch(/error \[ERR_FILE_WRITE\]: \/save-state: /);
    } finally {
      scratch.cleanup();
    }
  });

  it("chat /save writes the conversation and --resume continues it as a library session resumed from it", async () => {
    const scratch = new Scratch("llama2-cli-resume-");
    try {
      const file = path.join(scratch.dir, "talk.json");
      const flags = ["-t", "0", "-n", "6", "--no-stop"];
      const first = cli(["chat", "--model", tiny, "--system", "Be brief.", ...flags], `Hello\nTell me more\n/save ${file}\n`);
      expect(first.code, first.stderr).toBe(0);
      expect(first.stderr).toContain(`saved 2 exchanges to ${file}`);
      const saved = JSON.parse(readFileSync(file, "utf8"));
      expect(saved.system).toBe("Be brief.");
      expect(saved.messages.map((m: { role: string }) => m.role)).toEqual(["user", "assistant", "user", "assistant"]);
      expect(saved.messages[0].content).toBe("Hello");
      // The resumed chat answers as a session resumed from the saved messages does.
      const m = await Llama2.load(tiny, { device: "cpu", prefixCache: false });
      let expected: string;
      try {
        const s = m.createSession({ systemPrompt: "Be brief.", messages: saved.messages });
        expected = (await s.send("Why?", { temperature: 0, maxTokens: 6, stopOnEos: false }).result).text;
        s.dispose();
      } finally {
        await m.dispose();
      }
      const resumed = cli(["chat", "--model", tiny, "--resume", file, ...flags], "Why?\n");
      expect(resumed.code, resumed.stderr).toBe(0);
      expect(resumed.stdout).toBe(expected.endsWith("\n") ? expected : `${expected}\n`);
      expect(resumed.stderr).toContain("resumed 2 exchanges");
      // Bad files: exit 2 (or 1 for a missing one) naming --resume.
      const bad = scratch.write("bad.json", JSON.stringify({ messages: [{ role: "assistant", content: "x" }, { role: "user", content: "y" }] }));
      const r1 = cli(["chat", "--model", tiny, "--resume", bad], "Hi\n");
      expect(r1.code).toBe(2);
      expect(r1.stderr).toMatch(/error \[ERR_INVALID_ARGUMENT\]: --resume: .*messages\[0\]\.role/);
      const r2 = cli(["chat", "--model", tiny, "--resume", scratch.write("notjson.json", "{")], "Hi\n");
      expect(r2.code).toBe(2);
      expect(r2.stderr).toContain("is not valid JSON");
      const r3 = cli(["chat", "--model", tiny, "--resume", path.join(scratch.dir, "missing.json")], "Hi\n");
      expect(r3.code).toBe(1);
      expect(r3.stderr).toContain("ERR_FILE_NOT_FOUND");
    } finally {
      scratch.cleanup();
    }
  });

  it("perplexity scores windows as llama.cpp does: equal to score() over the same windows; Q8_0 close to F16", async () => {
    const text = tok.encode.map((c) => c.text).join(" ").repeat(6);
    const scratch = new Scratch("llama2-cli-ppl-");
    try {
      const file = scratch.write("text.txt", text);
      const r = cli(["perplexity", "--model", tiny, "--file", file, "--context", "32", "--chunks", "5", "--json"]);
      expect(r.code, r.stderr).toBe(0);
      const out = JSON.parse(r.stdout);
      expect(out).toMatchObject({ windows: 5, context: 32, scoredTokens: 5 * 15 });
      // The same windows through the library.
      const m = await Llama2.load(tiny, { device: "cpu", contextLength: 32 });
      try {
        const ids = m.tokenize(text);
        let nll = 0;
        for (let w = 0; w < 5; w++) {
          const win = ids.slice(w * 32, (w + 1) * 32);
          win[0] = m.info.bosId;
          nll -= (await m.score(win)).logprobs.slice(16).reduce((a, b) => a + b, 0);
        }
        expect(out.perplexity).toBeCloseTo(Math.exp(nll / 75), 6);
      } finally {
        await m.dispose();
      }
      // Q8_0 weights: close to F16's figure on the same text and windows (its quantization error only).
      const q8 = JSON.parse(cli(["perplexity", "--model", sharedPath("models/tiny-llama-q8_0.gguf"), "--file", file, "--context", "32", "--chunks", "5", "--json"]).stdout);
      expect(Math.abs(q8.perplexity / out.perplexity - 1)).toBeLessThan(0.02);
      const human = cli(["perplexity", "--model", tiny, "--text", text, "--context", "32", "--chunks", "2"]);
      expect(human.code, human.stderr).toBe(0);
      expect(human.stdout).toMatch(/^perplexity \d+\.\d{4} over 30 tokens \(2 windows of 32;/);
      expect(human.stderr).toMatch(/\[1\]\d+\.\d+,\[2\]\d+\.\d+/);
      const short = cli(["perplexity", "--model", tiny, "--text", "too short", "--context", "32"]);
      expect(short.code).toBe(2);
      expect(short.stderr).toMatch(/ERR_INVALID_ARGUMENT\]: --text: the text is \d+ tokens/);
      const missing = cli(["perplexity", "--model", tiny, "--file", path.join(scratch.dir, "none.txt")]);
      expect(missing.code).toBe(1);
      expect(missing.stderr).toContain("ERR_FILE_NOT_FOUND");
    } finally {
      scratch.cleanup();
    }
  });

  it("embed prints Llama2.embed()'s vectors as JSON lines (texts from --text or a file), or their similarities", async () => {
    const texts = ["The cat sat on the mat.", "A cat was sitting on a mat.", "Stock markets fell sharply today."];
    const scratch = new Scratch("llama2-cli-embed-");
    try {
      const r = cli(["embed", "--model", tiny, ...texts.flatMap((t) => ["--text", t])]);
      expect(r.code, r.stderr).toBe(0);
      const lines = r.stdout.trim().split("\n").map((l) => JSON.parse(l));
      expect(lines.map((l) => l.index)).toEqual([0, 1, 2]);
      const m = await Llama2.load(tiny, { device: "cpu" });
      try {
        for (const [i, t] of texts.entries()) {
          const e = await m.embed(t);
          expect(lines[i].tokens).toBe(e.tokenCount);
          expect(lines[i].embedding).toEqual(Array.from(e.embedding));
        }
        const last = JSON.parse(cli(["embed", "--model", tiny, "--text", texts[0]!, "--pooling", "last", "--no-normalize"]).stdout);
        expect(last.embedding).toEqual(Array.from((await m.embed(texts[0]!, { pooling: "last", normalize: false })).embedding));
      } finally {
        await m.dispose();
      }
      // A file of lines (blank ones skipped), the similarity matrix: 1 on the diagonal, symmetric.
      const file = scratch.write("lines.txt", texts.join("\n\n") + "\n");
      const sim = cli(["embed", "--model", tiny, "--file", file, "--similarity"]);
      expect(sim.code, sim.stderr).toBe(0);
      const rows = sim.stdout.trim().split("\n").map((l) => l.trim().split(/\s+/).slice(0, 3).map(Number));
      expect(rows).toHaveLength(3);
      for (let i = 0; i < 3; i++) {
        expect(rows[i]![i]).toBeCloseTo(1, 3);
        for (let j = 0; j < 3; j++) expect(rows[i]![j]).toBeCloseTo(rows[j]![i]!, 4);
      }
      for (const [args, field] of [
        [[], "--text"],
        [["--text", "a", "--file", file], "--text"],
        [["--text", "a", "--pooling", "max"], "--pooling"],
        [["--file", scratch.write("empty.txt", "\n\n")], "--file"],
      ] as const) {
        const bad = cli(["embed", "--model", tiny, ...args]);
        expect(bad.code).toBe(2);
        expect(bad.stderr).toContain(`ERR_INVALID_ARGUMENT]: ${field}`);
      }
    } finally {
      scratch.cleanup();
    }
  });

  it("inspect shows format, config, tensors and tokenizer (--json and text)", () => {
    const r = cli(["inspect", "--model", tiny, "--json"]);
    expect(r.code, r.stderr).toBe(0);
    const i = JSON.parse(r.stdout);
    expect(i).toMatchObject({ format: "gguf", fileDtype: "F16", config: { nKvHeads: 4, ropeLayout: "interleaved", vocabSize: 32000 } });
    expect(i.tokenizer).toMatchObject({ vocabSize: 32000, bosId: 1, eosId: 2 });
    expect(i.tensors).toHaveLength(21);
    expect(i.tensors.find((t: { fileName: string }) => t.fileName === "blk.0.attn_k.weight")).toMatchObject({ dtype: "F16", shape: [32, 64] });
    const s = JSON.parse(cli(["inspect", "--model", stories, "--json"]).stdout);
    expect(s).toMatchObject({ format: "llama2c", tokenizer: null, config: { tiedEmbeddings: true } });
    const text = cli(["inspect", "--model", sharedPath(TINY_HF)]);
    expect(text.stdout).toContain("format:     hf");
    expect(text.stdout).toContain("model.layers.0.self_attn.q_proj.weight");
    expect(text.stdout).toMatch(/tokenizer:\s+32000 pieces/);
  });

  it("bad flags -> exit 2 and `error [ERR_INVALID_ARGUMENT]: --flag ...` on stderr", () => {
    const cases: [string[], string][] = [
      [["generate", "--model", stories, "--prompt-ids", "1", "--temperature", "-1"], "--temperature"],
      [["generate", "--model", stories, "--prompt-ids", "1", "--max-tokens", "abc"], "--max-tokens"],
      [["generate", "--model", stories, "--prompt-ids", "1", "--max-tokens", "0"], "--max-tokens"],
      [["generate", "--model", stories, "--prompt-ids", "1", "--top-k", "1.5"], "--top-k"],
      [["generate", "--model", stories, "--prompt-ids", "1", "--top-p", "2"], "--top-p"],
      [["generate", "--model", stories, "--prompt-ids", "1", "--min-p", "1"], "--min-p"],
      [["generate", "--model", stories, "--prompt-ids", "1", "--repetition-penalty", "0"], "--repetition-penalty"],
      [["generate", "--model", stories, "--prompt-ids", "1", "--seed", "x"], "--seed"],
      [["generate", "--model", stories, "--prompt-ids", "1", "--device", "tpu"], "--device"],
      [["generate", "--model", stories, "--prompt-ids", "1", "--dtype", "q3"], "--dtype"],
      [["generate", "--model", stories, "--prompt-ids", "1", "--kv-cache", "f8"], "--kv-cache"],
      [["bench", "--model", stories, "--kv-cache", "f8"], "--kv-cache"],
      // bench checks what would fail late (after loading, or after minutes of runs) before it starts
      [["bench", "--model", stories, "--dtype", "f8"], "--dtype"],
      [["bench", "--model", stories, "--threads", "-1"], "--threads"],
      [["bench", "--model", stories, "--decode-prompt", "0"], "--decode-prompt"],
      [["bench", "--model", stories, "--context", "24", "--gen", "64", "--decode-prompt", "8", "--prompt", "8"], "--context"],
      [["bench", "--model", stories, "--out", "/nonexistent-dir/x.json"], "--out"],
      [["micro", "--only", "sampler", "--out", "/nonexistent-dir/x.json"], "--out"],
      [["generate", "--model", stories, "--prompt-ids", "1", "--context", "0"], "--context"],
      [["generate", "--model", stories, "--prompt-ids", "1", "--context", "100000"], "--context"], // checked by the engine
      [["generate", "--model", stories, "--prompt-ids", "1", "--threads", "-2"], "--threads"],
      [["generate", "--model", stories, "--prompt-ids", "1,x"], "--prompt-ids"],
      [["generate", "--model", stories, "--prompt-ids", "1,600"], "--prompt-ids"], // out of the vocabulary
      [["generate", "--model", stories, "--prompt-ids", "1", "--bogus"], "--bogus"],
      [["generate", "--model", stories, "--prompt-ids", "1", "--stop", ","], "--stop"],
      [["generate", "--model", stories], "--prompt"],
      [["generate", "--model", stories, "--prompt", "x", "--prompt-ids", "1"], "--prompt"],
      [["generate", "--prompt", "x"], "--model"],
      [["tokenize", "--model", tiny], "--text"],
      [["tokenize", "--model", tiny, "--text", "x", "--chat", "f.json"], "--text"],
      [["chat", "--model", tiny, "--template", "nope"], "--template"],
      [["inspect"], "--model"],
    ];
    for (const [args, flag] of cases) {
      const r = cli(args);
      expect(r.code, `${args.join(" ")}: ${r.stderr}`).toBe(2);
      // (after the "loaded" line when the engine itself refuses the value)
      expect(r.stderr, args.join(" ")).toMatch(new RegExp(`^error \\[ERR_INVALID_ARGUMENT\\]: ${flag.replace(/-/g, "\\-")}\\b`, "m"));
      expect(r.stdout).toBe("");
    }
  });

  it("a missing model -> exit 1 with ERR_FILE_NOT_FOUND; a model without a tokenizer given text -> ERR_TOKENIZER", () => {
    const missing = path.join(scratch.dir, "missing.gguf");
    for (const args of [
      ["generate", "--model", missing, "--prompt", "hi"],
      ["tokenize", "--model", missing, "--text", "hi"],
      ["inspect", "--model", missing],
      ["chat", "--model", missing],
      ["bench", "--model", missing],
    ]) {
      const r = cli(args, "");
      expect(r.code, args.join(" ")).toBe(1);
      expect(r.stderr).toMatch(/^error \[ERR_FILE_NOT_FOUND\]: .*missing\.gguf/);
    }
    const text = cli(["generate", "--model", stories, "--prompt", "hi"]);
    expect(text.code).toBe(1);
    expect(text.stderr).toContain("error [ERR_TOKENIZER]");
    const noTok = cli(["tokenize", "--model", stories, "--text", "hi"]);
    expect(noTok.code).toBe(1);
    expect(noTok.stderr).toContain("error [ERR_TOKENIZER]");
    writeFileSync(path.join(scratch.dir, "junk.model"), "junk");
    const junk = cli(["tokenize", "--model", path.join(scratch.dir, "junk.model"), "--text", "hi"]);
    expect(junk.code).toBe(1);
    expect(junk.stderr).toContain("error [ERR_TOKENIZER]");
  });

  it("every command has --help", () => {
    for (const c of ["generate", "tokenize", "chat", "inspect"]) {
      const r = cli([c, "--help"]);
      expect(r.code).toBe(0);
      expect(r.stdout).toContain(`Usage: llama2 ${c}`);
      expect(r.stdout).toContain("--model");
    }
    const top = cli(["--help"]);
    for (const c of ["generate", "tokenize", "chat", "inspect"]) expect(top.stdout).toContain(`  ${c} `);
  });
});
