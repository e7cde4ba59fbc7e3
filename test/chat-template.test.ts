// Chat templates: the llama2 template against Meta's reference format (shared fixture), the
// session-turn property, validation, the registry and the second ("plain") template.
import { beforeAll, describe, expect, it } from "vitest";
import { getChatTemplate, listChatTemplates, pyStrip, registerChatTemplate, type ChatTemplate } from "../lib/chat-template.js";
import { Llama2Error } from "../lib/errors.js";
import { Tokenizer } from "../lib/tokenizer.js";
import type { ChatMessage } from "../lib/types.js";
import { chatDialogs } from "./helpers/chat-dialogs.js";
import { describeShared, readSharedJson, sharedPath } from "./helpers/shared.js";

const EOS = 2;
const SPACE = 29871; // "▁"

const dialogs = chatDialogs;

/** The ids a KV-cached session holds after replaying `dialog` turn by turn with `reply(k)` as the model's ids. */
function sessionIds(t: ChatTemplate, tok: Tokenizer, dialog: ChatMessage[], reply: (text: string) => number[]): number[] {
  const ids: number[] = [];
  dialog.forEach((m, i) => {
    if (m.role === "user") ids.push(...t.encodeUserTurn(dialog.slice(0, i + 1), tok));
    if (m.role === "assistant") {
      const gen = reply(m.content);
      ids.push(...gen, ...t.assistantEnd(gen, tok));
    }
  });
  return ids;
}

function expectInvalid(fn: () => unknown, field: string): void {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(Llama2Error);
  expect((err as Llama2Error).code).toBe("ERR_INVALID_ARGUMENT");
  expect((err as { field?: string }).field).toBe(field);
}

describe("llama2 chat template (demo tokenizer)", () => {
  let tok: Tokenizer;
  const t = getChatTemplate("llama2");
  beforeAll(async () => {
    tok = await Tokenizer.demo();
  });

  it("is the default and encodes the reference format", () => {
    expect(getChatTemplate()).toBe(t);
    expect(t.stopStrings ?? []).toEqual([]);
    // Meta's chat_completion for [user "What is the capital of France?"] (from the fixture)
    expect(t.encodeDialog([{ role: "user", content: "What is the capital of France?" }], tok)).toEqual([
      1, 518, 25580, 29962, 1724, 338, 278, 7483, 310, 3444, 29973, 518, 29914, 25580, 29962,
    ]);
  });

  it("builds the exact reference strings (system folded into the first user turn, stripped)", () => {
    const d = dialogs[1]!;
    const expected = [
      ...tok.encode("[INST] <<SYS>>\n  Be brief. \n<</SYS>>\n\nName a color. [/INST] Blue. ", { bos: true, eos: true }),
      ...tok.encode("[INST] Another? [/INST]", { bos: true }),
    ];
    expect(t.encodeDialog(d, tok)).toEqual(expected);
    expect(t.encodeUserTurn(d, tok)).toEqual(tok.encode("[INST] Another? [/INST]", { bos: true }));
    expect(t.encodeUserTurn(d.slice(0, 2), tok)).toEqual(t.encodeDialog(d.slice(0, 2), tok));
  });

  it("session turns equal encodeDialog except the reference's '▁' before each EOS", () => {
    for (const d of dialogs) {
      const reference = t.encodeDialog(d, tok);
      const withoutSpace = reference.filter((id, i) => !(id === SPACE && reference[i + 1] === EOS));
      const pairs = d.filter((m) => m.role === "assistant").length;
      expect(reference.length - withoutSpace.length).toBe(pairs); // exactly one per reply
      expect(sessionIds(t, tok, d, (text) => tok.encode(pyStrip(text))), JSON.stringify(d)).toEqual(withoutSpace);
      // a reply that the model ended with EOS itself gets no second EOS
      expect(sessionIds(t, tok, d, (text) => tok.encode(pyStrip(text), { eos: true }))).toEqual(withoutSpace);
    }
  });

  it("an empty reply is '▁▁' before EOS in the reference (the documented exception)", () => {
    const ids = t.encodeDialog([{ role: "user", content: "a" }, { role: "assistant", content: " " }, { role: "user", content: "b" }], tok);
    expect(ids.slice(ids.indexOf(EOS) - 2, ids.indexOf(EOS) + 1)).toEqual([29962, 259, EOS]);
  });

  it("assistantEnd appends EOS unless the reply ended with it", () => {
    expect(t.assistantEnd([15043], tok)).toEqual([EOS]);
    expect(t.assistantEnd([15043, EOS], tok)).toEqual([]);
    expect(t.assistantEnd([], tok)).toEqual([EOS]);
  });

  it("strips like Python's str.strip()", () => {
    expect(pyStrip(" \t\n\x1c\x1f\x85\u00a0\u2003\u3000x y\u2028\r\n")).toBe("x y");
    expect(pyStrip("\ufeffx\ufeff")).toBe("\ufeffx\ufeff"); // not whitespace to Python
    expect(pyStrip("")).toBe("");
  });

  it("rejects invalid dialogs naming the message and field", () => {
    const u = (content: unknown) => ({ role: "user", content }) as ChatMessage;
    const a = { role: "assistant", content: "ok" } as ChatMessage;
    const s = { role: "system", content: "sys" } as ChatMessage;
    for (const fn of [t.encodeDialog, t.encodeUserTurn]) {
      const call = (m: unknown) => fn(m as ChatMessage[], tok);
      expectInvalid(() => call([]), "messages");
      expectInvalid(() => call("hi"), "messages");
      expectInvalid(() => call([null]), "messages[0]");
      expectInvalid(() => call([{ role: "bot", content: "x" }]), "messages[0].role");
      expectInvalid(() => call([u(42)]), "messages[0].content");
      expectInvalid(() => call([u("x"), a, u(undefined)]), "messages[2].content");
      expectInvalid(() => call([a, u("x")]), "messages[0].role");
      expectInvalid(() => call([u("x"), u("y")]), "messages[1].role");
      expectInvalid(() => call([u("x"), s, u("y")]), "messages[1].role");
      expectInvalid(() => call([s, a, u("y")]), "messages[1].role");
      expectInvalid(() => call([u("x"), a]), "messages[1].role");
      expectInvalid(() => call([s]), "messages[0]");
    }
  });
});

describe("chat template registry and the plain template", () => {
  let tok: Tokenizer;
  beforeAll(async () => {
    tok = await Tokenizer.demo();
  });

  it("lists, looks up and registers templates", () => {
    expect(listChatTemplates()).toEqual(expect.arrayContaining(["llama2", "plain"]));
    expectInvalid(() => getChatTemplate("chatml"), "template");
    const custom: ChatTemplate = {
      name: "custom-test",
      encodeDialog: () => [7],
      encodeUserTurn: () => [8],
      assistantEnd: () => [],
    };
    registerChatTemplate(custom);
    expect(getChatTemplate("custom-test").encodeDialog([], tok)).toEqual([7]);
    expectInvalid(() => registerChatTemplate({ ...custom, name: "" }), "template.name");
    expectInvalid(() => registerChatTemplate({ ...custom, encodeUserTurn: undefined } as unknown as ChatTemplate), "template.encodeUserTurn");
    expectInvalid(() => registerChatTemplate({ ...custom, stopStrings: [""] }), "template.stopStrings");
  });

  it("plain: a transcript with a stop string, and session turns equal the whole dialog", () => {
    const t = getChatTemplate("plain");
    expect(t.stopStrings).toEqual(["\nUser:"]);
    const d = dialogs[1]!;
    const ids = t.encodeDialog(d, tok);
    expect(ids[0]).toBe(1);
    expect(tok.decode(ids)).toBe("  Be brief. \n\nUser: Name a color.\nAssistant:  Blue.\n\nUser: \x1cAnother?\u3000\nAssistant:");
    for (const dialog of dialogs) {
      expect(sessionIds(t, tok, dialog, (text) => tok.encode(text)), JSON.stringify(dialog)).toEqual(t.encodeDialog(dialog, tok));
    }
    expectInvalid(() => t.encodeDialog([{ role: "assistant", content: "x" }], tok), "messages[0].role");
  });
});

describeShared("llama2 chat template vs the reference fixture", ["models/tokenizer.model", "fixtures/llama2-tokenizer.json"], () => {
  const cases = () => readSharedJson<{ chat: { dialog: ChatMessage[]; ids: number[] }[] }>("fixtures/llama2-tokenizer.json").chat;
  const toks: Record<string, Tokenizer> = {};
  beforeAll(async () => {
    toks.file = await Tokenizer.fromFile(sharedPath("models/tokenizer.model"));
    toks.demo = await Tokenizer.demo();
  });

  for (const which of ["file", "demo"]) {
    it(`${which}: encodeDialog and encodeUserTurn reproduce every fixture dialog`, () => {
      const t = getChatTemplate("llama2");
      const tok = toks[which]!;
      expect(cases().length).toBeGreaterThan(0);
      for (const c of cases()) {
        expect(t.encodeDialog(c.dialog, tok), JSON.stringify(c.dialog)).toEqual(c.ids);
        // the last turn is what follows the last EOS
        expect(t.encodeUserTurn(c.dialog, tok)).toEqual(c.ids.slice(c.ids.lastIndexOf(EOS) + 1));
      }
    });
  }
});
