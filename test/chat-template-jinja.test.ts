// Chat templates models carry (Jinja): Meta's own Llama-2-chat template against the reference ids
// (shared fixture), TinyLlama's Zephyr format against its model card's text, the session-turn property,
// special pieces in message text, templates that cannot append a turn, how a model's template is found
// and chosen, end to end through Llama2.load, convert, the CLI and the job runner; an HF directory's added
// tokens (a ChatML fine-tune).
import { copyFileSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { llama2Template, type ChatTemplate } from "../lib/chat-template.js";
import { jinjaChatTemplate } from "../lib/chat-template-jinja.js";
import { convertModel } from "../lib/convert.js";
import { Llama2Error } from "../lib/errors.js";
import { Llama2 } from "../lib/llama2.js";
import { chooseChatTemplate, readModelChatTemplate } from "../lib/model-chat-template.js";
import type { NativeModelSourceInfo } from "../lib/native.js";
import { Tokenizer } from "../lib/tokenizer.js";
import { withHfAddedTokens } from "../lib/tokenizer/hf-added-tokens.js";
import { llamaVocabulary } from "../lib/tokenizer/llama-vocab.js";
import { PieceType } from "../lib/tokenizer/sentencepiece-model.js";
import type { ChatMessage } from "../lib/types.js";
import { PassThrough } from "node:stream";
import { cancelJob } from "../lib/runner/cancel.js";
import type { Job } from "../lib/runner/job.js";
import { runJob } from "../lib/runner/run.js";
import { parseRunSpec } from "../lib/runner/spec.js";
import { runCli } from "./helpers/cli.js";
import { postJson, waitFor } from "./helpers/fake-backend.js";
import { chatDialogs } from "./helpers/chat-dialogs.js";
import { describeShared, readSharedJson, sharedPath } from "./helpers/shared.js";

// meta-llama/Llama-2-7b-chat-hf, tokenizer_config.json "chat_template" (as published).
const LLAMA2_CHAT_HF =
  "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}";
// TinyLlama/TinyLlama-1.1B-Chat-v1.0 (Zephyr's format), tokenizer_config.json "chat_template".
const ZEPHYR =
  "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}";
// mistralai/Mistral-7B-Instruct-v0.1's: no system role (raise_exception).
const MISTRAL =
  "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token + ' ' }}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}";
// Not prefix-stable: the dialog's length comes first, so an earlier rendering is not a prefix of a later one.
const COUNTED = "{{ messages|length }} messages\n{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{{ eos_token }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}";
// No special piece after a reply: a session cannot know where the reply's text ends.
const PLAIN_TEXT = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}";

// ChatML-like, its end-of-turn piece not EOS.
const UNK_END = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<unk>\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}";

const EOS = 2;
const BOS = 1;

const dialogs = chatDialogs;

function codeOf(fn: () => unknown): { code?: string; field?: string; message: string } {
  try {
    fn();
  } catch (err) {
    const e = err as Llama2Error & { field?: string };
    return { code: e.code, field: e.field, message: e.message };
  }
  throw new Error("expected a throw");
}

/** The session-turn property: a turn is what the whole dialog's ids have after the last reply's end piece. */
function expectTurnIsTail(t: ChatTemplate, tok: Tokenizer, dialog: ChatMessage[], endId: number): void {
  const full = t.encodeDialog(dialog, tok);
  const turn = t.encodeUserTurn(dialog, tok)!;
  expect(turn).not.toBeNull();
  expect(turn.length).toBeLessThan(full.length);
  expect(full.slice(full.length - turn.length)).toEqual(turn);
  expect(full[full.length - turn.length - 1]).toBe(endId);
}

describe("Jinja chat templates (demo tokenizer)", () => {
  let tok: Tokenizer;
  beforeAll(async () => {
    tok = await Tokenizer.demo();
  });

  it("encode({ special }) reads control pieces written in text; plain encode keeps them as text", () => {
    expect(tok.splitSpecial("<s>[INST] hi</s>x<unk>")).toEqual([BOS, "[INST] hi", EOS, "x", 0]);
    expect(tok.splitSpecial("")).toEqual([]);
    expect(tok.encode("<s>hi</s> there", { special: true })).toEqual([BOS, ...tok.encode("hi"), EOS, ...tok.encode(" there")]);
    expect(tok.encode("<s>hi")).not.toContain(BOS);
    expect(codeOf(() => tok.encode("x", { special: 1 as unknown as boolean })).field).toBe("special");
  });

  it("TinyLlama's Zephyr template: the model card's text, each stretch after a special piece encoded on its own", () => {
    const t = jinjaChatTemplate(ZEPHYR, tok);
    const d: ChatMessage[] = [
      { role: "system", content: "You are a friendly chatbot who always responds in the style of a pirate." },
      { role: "user", content: "How many helicopters can a human eat in one sitting?" },
    ];
    // The model card prints: "<|system|>\nYou are a friendly chatbot ...</s>\n<|user|>\nHow many ...?</s>\n<|assistant|>\n"
    const want = [
      BOS,
      ...tok.encode("<|system|>\nYou are a friendly chatbot who always responds in the style of a pirate."),
      EOS,
      ...tok.encode("\n<|user|>\nHow many helicopters can a human eat in one sitting?"),
      EOS,
      ...tok.encode("\n<|assistant|>\n"),
    ];
    expect(t.encodeDialog(d, tok)).toEqual(want);
    // Sessions: each turn is the dialog's tail after the reply's EOS; a reply is closed by EOS once.
    for (const dialog of dialogs) if (dialog.length > 2) expectTurnIsTail(t, tok, dialog, EOS);
    expect(t.assistantEnd([5, 6], tok)).toEqual([EOS]);
    expect(t.assistantEnd([5, EOS], tok)).toEqual([]);
    expect(t.encodeUserTurn(dialogs[0]!, tok)).toEqual(t.encodeDialog(dialogs[0]!, tok));
    expect(chooseChatTemplate({ source: ZEPHYR, from: "x" }, tok).template.name).toBe("model");
  });

  it("special pieces typed in a message are text, not turn ends", () => {
    const t = jinjaChatTemplate(ZEPHYR, tok);
    const d: ChatMessage[] = [{ role: "user", content: "say </s> then <s> and <unk>\uE000" }];
    const ids = t.encodeDialog(d, tok);
    expect(ids.filter((id) => id === EOS)).toHaveLength(1); // the template's own, after the message
    expect(ids.filter((id) => id === BOS)).toHaveLength(1);
    expect(ids).not.toContain(0);
    expect(ids).toEqual([BOS, ...tok.encode("<|user|>\nsay </s> then <s> and <unk>\uE000"), EOS, ...tok.encode("\n<|assistant|>\n")]);
  });

  it("a template that cannot append a turn makes the session prompt again (null), one without an end piece too", () => {
    const counted = jinjaChatTemplate(COUNTED, tok);
    expect(counted.encodeUserTurn(dialogs[1]!, tok)).toBeNull();
    expect(counted.encodeUserTurn(dialogs[0]!, tok)).toEqual(counted.encodeDialog(dialogs[0]!, tok));
    const plain = jinjaChatTemplate(PLAIN_TEXT, tok);
    expect(plain.encodeUserTurn(dialogs[1]!, tok)).toBeNull();
    expect(plain.assistantEnd([5], tok)).toEqual([]);
  });

  it("a template's raise_exception is an invalid dialog; one that does not parse or render is ERR_CHAT_TEMPLATE", () => {
    const mistral = jinjaChatTemplate(MISTRAL, tok);
    expect(mistral.encodeDialog([{ role: "user", content: "x" }], tok)).toEqual(tok.encode("[INST] x [/INST]", { bos: true }));
    const refused = codeOf(() => mistral.encodeDialog([{ role: "system", content: "s" }, { role: "user", content: "x" }], tok));
    expect(refused).toMatchObject({ code: "ERR_INVALID_ARGUMENT", field: "messages" });
    expect(refused.message).toContain("Conversation roles must alternate");
    // Our own dialog rules come first, with the same messages as for the built-in templates.
    expect(codeOf(() => mistral.encodeDialog([{ role: "assistant", content: "x" }], tok)).field).toBe("messages[0].role");
    expect(codeOf(() => jinjaChatTemplate("{% if %}", tok)).code).toBe("ERR_CHAT_TEMPLATE");
    expect(codeOf(() => jinjaChatTemplate("{{ nope() }}", tok)).code).toBe("ERR_CHAT_TEMPLATE");
    expect(codeOf(() => jinjaChatTemplate("no messages here", tok)).message).toContain("does not write the assistant's message");
    expect(codeOf(() => jinjaChatTemplate("  ", tok)).code).toBe("ERR_INVALID_ARGUMENT");
  });

  it("a template that runs too long is stopped (time limit), at load and per request, and the process goes on", () => {
    // Nested loops: endless in practice, with little memory (each inner range is 100,000 integers).
    const endless = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}";
    let t = performance.now();
    const atLoad = codeOf(() => jinjaChatTemplate(endless + ZEPHYR, tok));
    expect(atLoad).toMatchObject({ code: "ERR_CHAT_TEMPLATE" });
    expect(atLoad.message).toMatch(/took over 1 s to render/);
    expect(performance.now() - t).toBeLessThan(5000);
    const chosen = chooseChatTemplate({ source: endless + ZEPHYR, from: "slow.gguf" }, tok);
    expect(chosen.template).toBe(llama2Template);
    expect(chosen.note).toMatch(/slow\.gguf.*took over 1 s/);
    // Fast on the probes, endless on a long dialog: that request fails with the template's error.
    const sometimes = jinjaChatTemplate(`{% if messages|length > 6 %}${endless}{% endif %}` + ZEPHYR, tok);
    const long = Array.from({ length: 7 }, (_, i) => ({ role: i % 2 ? "assistant" : "user", content: `m${i}` })) as ChatMessage[];
    t = performance.now();
    expect(codeOf(() => sometimes.encodeDialog(long, tok))).toMatchObject({ code: "ERR_CHAT_TEMPLATE" });
    expect(performance.now() - t).toBeLessThan(5000);
    expect(sometimes.encodeDialog(long.slice(0, 5), tok).length).toBeGreaterThan(5); // the next request renders
  }, 30_000);

  it("choosing: auto takes a working model template, falls back to llama2 (with a note), model requires one", () => {
    expect(chooseChatTemplate(undefined, tok)).toEqual({ template: llama2Template });
    const broken = chooseChatTemplate({ source: "{% if %}", from: "m.gguf" }, tok);
    expect(broken.template).toBe(llama2Template);
    expect(broken.note).toMatch(/m\.gguf.*does not work, using llama2/);
    expect(codeOf(() => chooseChatTemplate({ source: "{% if %}", from: "m.gguf" }, tok, "model")).code).toBe("ERR_CHAT_TEMPLATE");
    expect(codeOf(() => chooseChatTemplate(undefined, tok, "model"))).toMatchObject({ code: "ERR_INVALID_ARGUMENT", field: "chatTemplate" });
    const plainChosen = chooseChatTemplate({ source: ZEPHYR, from: "x" }, tok, "plain");
    expect(plainChosen.template.name).toBe("plain");
    expect(plainChosen.modelTemplate?.name).toBe("model");
    expect(codeOf(() => chooseChatTemplate(undefined, tok, "nope")).field).toBe("template");
  });

  it("an HF directory's template: chat_template.jinja first, then tokenizer_config.json (string or named list)", () => {
    const dir = mkdtempSync(path.join(tmpdir(), "llama2-chat-template-"));
    try {
      const info = { format: "hf", path: dir } as NativeModelSourceInfo;
      expect(readModelChatTemplate(info)).toBeUndefined();
      const cfg = path.join(dir, "tokenizer_config.json");
      writeFileSync(cfg, JSON.stringify({ chat_template: ZEPHYR }));
      expect(readModelChatTemplate(info)).toEqual({ source: ZEPHYR, from: `${cfg}: chat_template` });
      expect(readModelChatTemplate({ ...info, path: path.join(dir, "config.json") })?.source).toBe(ZEPHYR);
      writeFileSync(cfg, JSON.stringify({ chat_template: [{ name: "tool_use", template: "x" }, { name: "default", template: MISTRAL }] }));
      expect(readModelChatTemplate(info)?.source).toBe(MISTRAL);
      writeFileSync(cfg, JSON.stringify({ bos_token: "<s>" }));
      expect(readModelChatTemplate(info)).toBeUndefined();
      writeFileSync(cfg, "{ not json");
      expect(codeOf(() => readModelChatTemplate(info))).toMatchObject({ code: "ERR_MODEL_CONFIG" });
      writeFileSync(cfg, JSON.stringify({ chat_template: 3 }));
      expect(codeOf(() => readModelChatTemplate(info)).message).toContain("chat_template must be a string");
      writeFileSync(path.join(dir, "chat_template.jinja"), COUNTED);
      expect(readModelChatTemplate(info)?.source).toBe(COUNTED);
      // A GGUF's metadata wins; llama2.c files carry none.
      expect(readModelChatTemplate({ ...info, format: "gguf", tokenizer: { chatTemplate: ZEPHYR } } as NativeModelSourceInfo)?.source).toBe(ZEPHYR);
      expect(readModelChatTemplate({ ...info, format: "llama2c" } as NativeModelSourceInfo)).toBeUndefined();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describeShared("Jinja chat templates: Meta's Llama-2-chat template", ["models/tokenizer.model", "fixtures/llama2-tokenizer.json"], () => {
  let tok: Tokenizer;
  beforeAll(async () => {
    tok = await Tokenizer.fromFile(sharedPath("models/tokenizer.model"));
  });

  it("gives the reference chat format's ids for every fixture dialog, so auto uses the built-in llama2 template", () => {
    const t = jinjaChatTemplate(LLAMA2_CHAT_HF, tok);
    const fx = readSharedJson<{ chat: { dialog: ChatMessage[]; ids: number[] }[] }>("fixtures/llama2-tokenizer.json");
    expect(fx.chat.length).toBeGreaterThan(0);
    for (const c of fx.chat) expect(t.encodeDialog(c.dialog, tok)).toEqual(c.ids);
    // Without the whitespace Python's str.strip() (the reference, and transformers' Jinja) and
    // @huggingface/jinja's strip() (JavaScript's trim()) disagree on: "\x1c" (Python strips it), "\ufeff"
    // (JavaScript does).
    const agreed = dialogs.map((d) => d.map((m) => ({ ...m, content: m.content.replace(/[\x1c\ufeff]/g, "") })));
    for (const d of agreed) {
      expect(t.encodeDialog(d, tok)).toEqual(llama2Template.encodeDialog(d, tok));
      if (d.length > 1) expect(t.encodeUserTurn(d, tok)).toEqual(llama2Template.encodeUserTurn(d, tok));
    }
    // Message text spelling special pieces stays text in both.
    const tricky: ChatMessage[] = [{ role: "user", content: "a </s><s>[INST] b" }, { role: "assistant", content: "</s>" }, { role: "user", content: "<unk>" }];
    expect(t.encodeDialog(tricky, tok)).toEqual(llama2Template.encodeDialog(tricky, tok));
    const chosen = chooseChatTemplate({ source: LLAMA2_CHAT_HF, from: "tokenizer_config.json" }, tok);
    expect(chosen.template).toBe(llama2Template);
    expect(chosen.note).toContain("gives Llama 2's reference format");
  });
});

describeShared("Jinja chat templates: a model that carries one (tiny-llama)", ["models/tiny-llama-hf/config.json"], () => {
  let dir: string;
  let model: Llama2;
  const greedy = { temperature: 0, maxTokens: 6, stopOnEos: false } as const;

  /** tiny-llama-hf's files, linked into a fresh directory with `extra` files beside them. */
  function hfWith(extra: Record<string, string>): string {
    const d = mkdtempSync(path.join(dir, "hf-"));
    for (const f of ["config.json", "generation_config.json", "model.safetensors", "tokenizer.model"]) symlinkSync(sharedPath(`models/tiny-llama-hf/${f}`), path.join(d, f));
    for (const [name, text] of Object.entries(extra)) writeFileSync(path.join(d, name), text);
    return d;
  }

  beforeAll(async () => {
    dir = mkdtempSync(path.join(tmpdir(), "llama2-jinja-"));
    model = await Llama2.load(hfWith({ "tokenizer_config.json": JSON.stringify({ chat_template: ZEPHYR }) }), { device: "cpu" });
  });
  afterAll(async () => {
    await model?.dispose();
    rmSync(dir, { recursive: true, force: true });
  });

  it("loads with the model's template as the default; chat prompts through it", async () => {
    expect(model.info.chatTemplate).toBe("model");
    expect(model.info.chatTemplateNote).toMatch(/^from .*tokenizer_config\.json: chat_template$/);
    const tok = model.tokenizer!;
    const d: ChatMessage[] = [{ role: "system", content: "Be a pirate." }, { role: "user", content: "Hello!" }];
    const ids = jinjaChatTemplate(ZEPHYR, tok).encodeDialog(d, tok);
    const r = await model.chat(d, greedy).result;
    expect(r.stats.promptTokens).toBe(ids.length);
    expect(r.tokenIds).toEqual((await model.generate(ids, greedy).result).tokenIds);
    // template: "llama2" still works per request, and gives a different prompt.
    const r2 = await model.chat(d, { ...greedy, template: "llama2" }).result;
    expect(r2.stats.promptTokens).toBe(llama2Template.encodeDialog(d, tok).length);
    expect(model.chatPromptTokens(d)).toBe(ids.length);
  });

  it("a session appends each turn after the reply's EOS: the same ids as a one-shot run", async () => {
    const tok = model.tokenizer!;
    const t = jinjaChatTemplate(ZEPHYR, tok);
    const session = model.createSession({ systemPrompt: "Be a pirate." });
    try {
      const d1: ChatMessage[] = [{ role: "system", content: "Be a pirate." }, { role: "user", content: "Hello!" }];
      const r1 = await session.send("Hello!", greedy).result;
      expect(r1.stats.promptTokens).toBe(t.encodeDialog(d1, tok).length);
      const d2: ChatMessage[] = [...d1, { role: "assistant", content: r1.text }, { role: "user", content: "And then?" }];
      const turn2 = t.encodeUserTurn(d2, tok)!;
      const r2 = await session.send("And then?", greedy).result;
      expect(r2.stats.promptTokens - r2.stats.cachedPromptTokens).toBe(1 + 1 + turn2.length); // last reply token, EOS, the turn
      const full = [...t.encodeDialog(d1, tok), ...r1.tokenIds, EOS, ...turn2];
      expect(r2.tokenIds).toEqual((await model.generate(full, greedy).result).tokenIds);
    } finally {
      session.dispose();
    }
  });

  it("a template that cannot append a turn: the session prompts the dialog again and answers as a one-shot chat does", async () => {
    const m = await Llama2.load(hfWith({ "chat_template.jinja": COUNTED }), { device: "cpu" });
    try {
      expect(m.info.chatTemplate).toBe("model");
      const session = m.createSession();
      try {
        const r1 = await session.send("Hello!", greedy).result;
        const r2 = await session.send("And then?", greedy).result;
        const d: ChatMessage[] = [{ role: "user", content: "Hello!" }, { role: "assistant", content: r1.text }, { role: "user", content: "And then?" }];
        const alone = await m.chat(d, greedy).result;
        expect(r2.tokenIds).toEqual(alone.tokenIds);
        expect(r2.stats.cachedPromptTokens).toBeGreaterThan(0); // what the new prompt shares with the cache is kept
      } finally {
        session.dispose();
      }
    } finally {
      await m.dispose();
    }
  });

  it("an end-of-turn piece other than EOS ends the reply as EOS does, and closes it in a session", async () => {
    // "<unk>" stands in for an added "<|im_end|>" (the vocabulary has no other special piece).
    const m = await Llama2.load(hfWith({ "chat_template.jinja": UNK_END }), { device: "cpu" });
    try {
      const d: ChatMessage[] = [{ role: "user", content: "Hello!" }];
      const forced = { ...greedy, stopOnEos: true, logitBias: { 0: 100 } }; // stopOnEos: false would ignore it, as EOS
      const r = await m.chat(d, forced).result;
      expect(r.stats).toMatchObject({ finishReason: "stop", completionTokens: 0 });
      // Not a stop token for plain generation, nor under the llama2 template.
      expect((await m.chat(d, { ...forced, template: "llama2" }).result).tokenIds).toEqual([0, 0, 0, 0, 0, 0]);
      const session = m.createSession();
      try {
        await session.send("Hello!", forced).result;
        const r2 = await session.send("Again", greedy).result;
        const turn = jinjaChatTemplate(UNK_END, m.tokenizer!).encodeUserTurn([...d, { role: "assistant", content: "" }, { role: "user", content: "Again" }], m.tokenizer!)!;
        expect(r2.stats.promptTokens - r2.stats.cachedPromptTokens).toBe(1 + turn.length); // the end piece, then the turn
      } finally {
        session.dispose();
      }
    } finally {
      await m.dispose();
    }
  });

  it("chatTemplate at load: llama2 overrides the model's, model requires one, an unknown name fails before loading", async () => {
    const hf = hfWith({ "tokenizer_config.json": JSON.stringify({ chat_template: ZEPHYR }) });
    const m = await Llama2.load(hf, { device: "cpu", chatTemplate: "llama2" });
    try {
      expect(m.info.chatTemplate).toBe("llama2");
      const d: ChatMessage[] = [{ role: "user", content: "Hi" }];
      expect(m.chatPromptTokens(d)).toBe(llama2Template.encodeDialog(d, m.tokenizer!).length);
      expect(m.chatPromptTokens(d, "model")).toBe(jinjaChatTemplate(ZEPHYR, m.tokenizer!).encodeDialog(d, m.tokenizer!).length);
    } finally {
      await m.dispose();
    }
    await expect(Llama2.load(hf, { device: "cpu", chatTemplate: "nope" })).rejects.toMatchObject({ code: "ERR_INVALID_ARGUMENT" });
    await expect(Llama2.load(sharedPath("models/tiny-llama-hf"), { device: "cpu", chatTemplate: "model" })).rejects.toMatchObject({ code: "ERR_INVALID_ARGUMENT", field: "chatTemplate" });
    // A broken template in the model does not stop it loading: llama2, with the reason in the note.
    const broken = await Llama2.load(hfWith({ "tokenizer_config.json": JSON.stringify({ chat_template: "{% for %}" }) }), { device: "cpu" });
    try {
      expect(broken.info.chatTemplate).toBe("llama2");
      expect(broken.info.chatTemplateNote).toContain("does not work, using llama2");
      expect(() => broken.chatPromptTokens([{ role: "user", content: "x" }], "model")).toThrow(/carries no working chat template/);
    } finally {
      await broken.dispose();
    }
    const plainModel = await Llama2.load(sharedPath("models/tiny-llama-hf"), { device: "cpu" });
    try {
      expect(plainModel.info.chatTemplate).toBe("llama2");
      expect(plainModel.info.chatTemplateNote).toBeUndefined();
    } finally {
      await plainModel.dispose();
    }
  });

  it("the chatbot job: the OpenAI API chats through the model's template, or --chat-template's", async () => {
    const hf = hfWith({ "tokenizer_config.json": JSON.stringify({ chat_template: ZEPHYR }) });
    const d: ChatMessage[] = [{ role: "user", content: "Hello there!" }];
    for (const [flag, want] of [
      [undefined, jinjaChatTemplate(ZEPHYR, model.tokenizer!).encodeDialog(d, model.tokenizer!).length],
      ["llama2", llama2Template.encodeDialog(d, model.tokenizer!).length],
    ] as const) {
      const spec = parseRunSpec({ model: hf, device: "cpu", context: 256, port: 0, ...(flag && { chatTemplate: flag }) });
      let job: Job | undefined;
      const done = runJob(spec, { stderr: new PassThrough().resume(), jobsDir: path.join(dir, "jobs"), onJob: (j) => (job = j), controlPollMs: 20 });
      done.catch(() => {});
      try {
        await waitFor(() => job?.record.url !== undefined || job?.state === "failed", 60_000, "the model to load");
        expect(job!.record.error).toBeUndefined();
        const url = job!.record.url!;
        const listed = (await (await fetch(`${url}v1/models`)).json()).data[0];
        expect(listed.llama2.chat_template).toBe(flag ?? "model");
        const r = await (await postJson(`${url}v1/chat/completions`, { messages: d, max_tokens: 2, temperature: 0 })).json();
        expect(r.usage.prompt_tokens).toBe(want);
      } finally {
        if (job?.state === "running") await cancelJob(path.join(dir, "jobs"), job.id, { waitMs: 10_000 });
        await done.catch(() => {});
      }
    }
    expect(() => parseRunSpec({ model: hf, chatTemplate: "nope" })).toThrow(/--chat-template: unknown chat template "nope"/);
  });

  it("convert keeps the template (tokenizer.chat_template); the GGUF loads with it", async () => {
    const out = path.join(dir, "with-template.gguf");
    await convertModel(model.info.path, out, { dtype: "f16" });
    const g = await Llama2.load(out, { device: "cpu" });
    try {
      expect(g.info.chatTemplate).toBe("model");
      expect(g.info.chatTemplateNote).toBe(`from ${out}: tokenizer.chat_template`);
      const d: ChatMessage[] = [{ role: "user", content: "Hello!" }];
      expect(g.chatPromptTokens(d)).toBe(model.chatPromptTokens(d));
    } finally {
      await g.dispose();
    }
  });

  it("the CLI: inspect names the template; tokenize --chat uses it unless --template says otherwise", async () => {
    const ins = await runCli(["inspect", "--model", model.info.path]);
    expect(ins.code).toBe(0);
    expect(ins.stdout).toMatch(/chat: +template model \(from .*tokenizer_config\.json: chat_template\)/);
    const dialogFile = path.join(dir, "dialog.json");
    const d: ChatMessage[] = [{ role: "user", content: "Hello!" }];
    writeFileSync(dialogFile, JSON.stringify(d));
    const own = await runCli(["tokenize", "--model", model.info.path, "--chat", dialogFile, "--json"]);
    expect(own.code).toBe(0);
    expect(JSON.parse(own.stdout).ids).toEqual(jinjaChatTemplate(ZEPHYR, model.tokenizer!).encodeDialog(d, model.tokenizer!));
    const l2 = await runCli(["tokenize", "--model", model.info.path, "--chat", dialogFile, "--template", "llama2", "--json"]);
    expect(JSON.parse(l2.stdout).ids).toEqual(llama2Template.encodeDialog(d, model.tokenizer!));
    const bad = await runCli(["tokenize", "--model", model.info.path, "--chat", dialogFile, "--template", "nope"]);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toContain("--template");
    const none = await runCli(["tokenize", "--model", sharedPath("models/tiny-llama-hf"), "--chat", dialogFile, "--template", "model"]);
    expect(none.code).not.toBe(0);
    expect(none.stderr).toMatch(/--template: .*carries no chat template/);
    // --chat-template (every command that loads a model) is checked before the model loads.
    const badLoad = await runCli(["chat", "--model", "/nonexistent/model.gguf", "--chat-template", "nope"]);
    expect(badLoad.code).not.toBe(0);
    expect(badLoad.stderr).toMatch(/--chat-template: unknown chat template "nope"/);
    const badSession = await runCli(["chat", "--model", "/nonexistent/model.gguf", "--template", "nope"]);
    expect(badSession.stderr).toMatch(/--template: unknown chat template "nope"/);
  });
});

describe("an HF directory's added tokens (withHfAddedTokens, demo vocabulary)", () => {
  it("extends the vocabulary: special tokens as control pieces, others user-defined, the rest [PAD{id}]; errors name the file", () => {
    const dir = mkdtempSync(path.join(tmpdir(), "llama2-added-"));
    try {
      const base = llamaVocabulary();
      const cfg = path.join(dir, "tokenizer_config.json");
      writeFileSync(cfg, JSON.stringify({ added_tokens_decoder: { "2": { content: "</s>", special: true }, "32000": { content: "<|im_end|>", special: true }, "32001": { content: "<tool>", special: false } }, eos_token: { content: "<|im_end|>" } }));
      writeFileSync(path.join(dir, "added_tokens.json"), JSON.stringify({ "<pad>": 32002 }));
      const v = withHfAddedTokens(base, dir, 32004);
      expect(v.tokens.slice(32000)).toEqual(["<|im_end|>", "<tool>", "<pad>", "[PAD32003]"]);
      expect([...v.types.slice(32000)]).toEqual([PieceType.CONTROL, PieceType.USER_DEFINED, PieceType.USER_DEFINED, PieceType.UNUSED]);
      expect(v.eosId).toBe(32000);
      expect(v.bosId).toBe(1);
      expect(v.tokens.slice(0, 32000)).toEqual(base.tokens);
      // An older save names EOS in special_tokens_map.json only; tokenizer_config.json's name wins over it.
      writeFileSync(cfg, JSON.stringify({ added_tokens_decoder: { "32000": { content: "<|im_end|>", special: true } } }));
      writeFileSync(path.join(dir, "special_tokens_map.json"), JSON.stringify({ eos_token: "<|im_end|>", bos_token: { content: "<s>" } }));
      expect(withHfAddedTokens(base, dir, 32004)).toMatchObject({ eosId: 32000, bosId: 1 });
      writeFileSync(cfg, JSON.stringify({ added_tokens_decoder: { "32000": { content: "<|im_end|>", special: true } }, eos_token: "</s>" }));
      expect(withHfAddedTokens(base, dir, 32004).eosId).toBe(2);
      rmSync(path.join(dir, "special_tokens_map.json"));
      writeFileSync(cfg, JSON.stringify({ added_tokens_decoder: { "32005": { content: "<x>", special: true } } }));
      expect(codeOf(() => withHfAddedTokens(base, dir, 32004)).message).toMatch(/tokenizer_config\.json: added token 32005 is past the model's vocabulary of 32004/);
      writeFileSync(cfg, JSON.stringify({ added_tokens_decoder: { "32000": { content: "hello", special: false } } }));
      expect(codeOf(() => withHfAddedTokens(base, dir, 32004))).toMatchObject({ code: "ERR_TOKENIZER" });
      writeFileSync(cfg, "{");
      // The same error as the chat template's reading of the file gives.
      expect(codeOf(() => withHfAddedTokens(base, dir, 32004))).toMatchObject({ code: "ERR_MODEL_CONFIG", message: expect.stringContaining("tokenizer_config.json: not valid JSON") });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describeShared("a ChatML fine-tune with added tokens (HF directory)", ["models/tokenizer.model"], () => {
  const CHATML = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
  let dir: string;
  beforeAll(async () => {
    dir = mkdtempSync(path.join(tmpdir(), "llama2-chatml-"));
    const hf = path.join(dir, "hf");
    const made = await runCli(["make-model", "--preset", "tiny", "--format", "hf", "--vocab", "32004", "--out", hf, "-q"]);
    expect(made.code).toBe(0);
    copyFileSync(sharedPath("models/tokenizer.model"), path.join(hf, "tokenizer.model"));
    writeFileSync(
      path.join(hf, "tokenizer_config.json"),
      JSON.stringify({
        added_tokens_decoder: { "32000": { content: "<|im_end|>", special: true }, "32001": { content: "<|im_start|>", special: true }, "32002": { content: "<tool>", special: false } },
        eos_token: "<|im_end|>",
        chat_template: CHATML,
      }),
    );
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it("loads with its added tokens as EOS and special pieces, chats through ChatML, and converts to a GGUF that does the same", async () => {
    const m = await Llama2.load(path.join(dir, "hf"), { device: "cpu" });
    let ggufIds: number[] = [];
    const d: ChatMessage[] = [{ role: "system", content: "S" }, { role: "user", content: "Hi <|im_end|> <tool>" }];
    let ids: number[];
    try {
      const tok = m.tokenizer!;
      expect(tok.vocabSize).toBe(32004);
      expect(m.info.eosId).toBe(32000);
      expect(tok.isControl(32001)).toBe(true);
      expect(tok.piece(32003)).toBe("[PAD32003]");
      // A user-defined piece is matched in plain text (as SentencePiece and transformers do); control pieces only with special.
      expect(tok.encode("a<tool>b")).toContain(32002);
      expect(tok.encode("a<|im_end|>b")).not.toContain(32000);
      expect(tok.decode(tok.encode("a<tool>b"))).toBe("a<tool>b");
      ids = jinjaChatTemplate(CHATML, tok).encodeDialog(d, tok);
      expect(ids.slice(0, 2)).toEqual([BOS, 32001]);
      expect(ids.filter((id) => id === 32000)).toHaveLength(2); // after each message, not the typed one
      expect(ids).toContain(32002); // "<tool>" typed in a message is that piece, as in transformers
      const r = await m.chat(d, { temperature: 0, maxTokens: 5, logitBias: { 32000: 100 } }).result;
      expect(r.stats).toMatchObject({ finishReason: "stop", completionTokens: 0, promptTokens: ids.length });
      const out = path.join(dir, "chatml.gguf");
      await convertModel(m.info.path, out, { dtype: "f16" });
      const g = await Llama2.load(out, { device: "cpu" });
      try {
        expect(g.info.eosId).toBe(32000);
        expect(g.info.chatTemplate).toBe("model");
        ggufIds = jinjaChatTemplate(CHATML, g.tokenizer!).encodeDialog(d, g.tokenizer!);
        expect(g.chatPromptTokens(d)).toBe(ids.length);
      } finally {
        await g.dispose();
      }
    } finally {
      await m.dispose();
    }
    expect(ggufIds).toEqual(ids);
  });
});
