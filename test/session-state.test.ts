// Saved chat sessions (ChatSession.save / Llama2.restoreSession): a restored session continues exactly as
// the saved one would have, without evaluating its history again (fp32 and int8 KV, a shifted and a
// parked session, a model's own chat template); a state is refused by any other model or load option
// (ERR_SESSION_STATE naming what differs); broken files get typed errors. The CUDA backend's block copies
// are checked on the emulator (test/cuda-emu.test.ts).
import { mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, expect, it } from "vitest";
import { Llama2 } from "../lib/llama2.js";
import type { ChatSession } from "../lib/session.js";
import { runCli } from "./helpers/cli.js";
import { describeShared, sharedPath } from "./helpers/shared.js";

const TINY_HF = "models/tiny-llama-hf";
const g = { temperature: 0, maxTokens: 6, stopOnEos: false } as const;

async function talk(s: ChatSession, turns: string[]): Promise<void> {
  for (const t of turns) await s.send(t, g).result;
}

describeShared("saved chat sessions", [TINY_HF + "/config.json", "models/tiny-llama-f16.gguf"], () => {
  let dir: string;
  let model: Llama2;
  beforeAll(async () => {
    dir = mkdtempSync(path.join(tmpdir(), "llama2-session-state-"));
    model = await Llama2.load(sharedPath(TINY_HF), { device: "cpu" });
  });
  afterAll(async () => {
    await model?.dispose();
    rmSync(dir, { recursive: true, force: true });
  });

  it("a restored session continues as the saved one: the same reply, the history not evaluated again", async () => {
    for (const kvCacheType of ["auto", "int8"] as const) {
      const a = kvCacheType === "auto" ? model : await Llama2.load(sharedPath(TINY_HF), { device: "cpu", kvCacheType });
      const b = await Llama2.load(sharedPath(TINY_HF), { device: "cpu", kvCacheType });
      try {
        const s = a.createSession({ systemPrompt: "Be brief.", contextShift: false });
        await talk(s, ["Hello there", "And then?"]);
        const file = path.join(dir, `two-turns-${kvCacheType}.l2s`);
        const saved = await s.save(file);
        expect(saved.cachedTokens).toBe(s.cachedTokens);
        expect(saved.cachedTokens).toBeGreaterThan(30);
        const next = await s.send("Third", g).result;
        const r = await b.restoreSession(file);
        expect(r.messages).toEqual(s.messages.slice(0, 4));
        expect(r.systemPrompt).toBe("Be brief.");
        expect(r.cachedTokens).toBe(saved.cachedTokens);
        const again = await r.send("Third", g).result;
        expect(again.tokenIds).toEqual(next.tokenIds);
        expect(again.stats.cachedPromptTokens).toBe(next.stats.cachedPromptTokens);
        expect(again.stats.promptTokens).toBe(next.stats.promptTokens);
        // Restoring twice gives two independent sessions.
        const r2 = await b.restoreSession(file);
        expect((await r2.send("Third", g).result).tokenIds).toEqual(next.tokenIds);
        r.dispose();
        r2.dispose();
        s.dispose();
      } finally {
        if (a !== model) await a.dispose();
        await b.dispose();
      }
    }
  });

  it("a session that shifted its context, or holds no KV (parked, or never started), restores its dialog", async () => {
    const small = await Llama2.load(sharedPath(TINY_HF), { device: "cpu", contextLength: 96 });
    try {
      const s = small.createSession({ systemPrompt: "S" });
      await talk(s, ["one two three four five six", "seven eight nine ten eleven", "twelve thirteen fourteen fifteen", "sixteen seventeen", "eighteen nineteen twenty", "twenty-one twenty-two"]);
      expect(s.droppedMessages).toBeGreaterThan(0);
      const file = path.join(dir, "shifted.l2s");
      await s.save(file);
      const next = await s.send("more", g).result;
      const r = await small.restoreSession(file);
      expect(r.droppedMessages).toBe(s.droppedMessages);
      expect((await r.send("more", g).result).tokenIds).toEqual(next.tokenIds);
      r.dispose();
      s.dispose();
    } finally {
      await small.dispose();
    }
    // Resumed from messages only (nothing cached): saved without KV; the restored one prompts the dialog.
    const history = [
      { role: "user" as const, content: "Hi" },
      { role: "assistant" as const, content: "Hello!" },
    ];
    const fresh = model.createSession({ messages: history });
    const file = path.join(dir, "nokv.l2s");
    expect((await fresh.save(file)).cachedTokens).toBe(0);
    const r = await model.restoreSession(file);
    const want = await fresh.send("Who are you?", g).result;
    const got = await r.send("Who are you?", g).result;
    expect(got.tokenIds).toEqual(want.tokenIds);
    expect(got.stats.promptTokens).toBe(want.stats.promptTokens);
    r.dispose();
    fresh.dispose();
  });

  it("the model's own chat template is kept", async () => {
    const hf = mkdtempSync(path.join(dir, "hf-"));
    for (const f of ["config.json", "generation_config.json", "model.safetensors", "tokenizer.model"]) symlinkSync(sharedPath(`${TINY_HF}/${f}`), path.join(hf, f));
    writeFileSync(path.join(hf, "chat_template.jinja"), "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}");
    const m = await Llama2.load(hf, { device: "cpu" });
    try {
      const s = m.createSession();
      await talk(s, ["Hello"]);
      const file = path.join(dir, "jinja.l2s");
      await s.save(file);
      const next = await s.send("Again", g).result;
      const r = await m.restoreSession(file);
      expect((await r.send("Again", g).result).tokenIds).toEqual(next.tokenIds);
      r.dispose();
      s.dispose();
      const head = JSON.parse(readFileSync(file).subarray(16, 16 + readFileSync(file).readUInt32LE(12)).toString("utf8"));
      expect(head.session.template).toBe("model");
    } finally {
      await m.dispose();
    }
  });

  it("refused by another model or other load options, naming what differs", async () => {
    const s = model.createSession();
    await talk(s, ["Hello"]);
    const file = path.join(dir, "refuse.l2s");
    const { cachedTokens } = await s.save(file);
    s.dispose();
    const cases: [string, Parameters<typeof Llama2.load>[1], RegExp][] = [
      [sharedPath("models/tiny-llama-f16.gguf"), { device: "cpu" }, /format "hf" \(now "gguf"\)/],
      [sharedPath(TINY_HF), { device: "cpu", dtype: "int8" }, /dtype "f16" \(now "int8"\)/],
      [sharedPath(TINY_HF), { device: "cpu", kvCacheType: "int8" }, /kvCacheType "f32" \(now "int8"\)/],
      [sharedPath(TINY_HF), { device: "cpu", ropeScaling: { type: "linear", factor: 2 } }, /config differs/],
    ];
    for (const [p, opts, why] of cases) {
      const m = await Llama2.load(p, opts);
      try {
        const err = await m.restoreSession(file).catch((e) => e);
        expect(err).toMatchObject({ code: "ERR_SESSION_STATE" });
        expect(err.message).toMatch(why);
      } finally {
        await m.dispose();
      }
    }
    // Same shape and config, other weights: the sampled weight bytes differ.
    const other = path.join(dir, "other.gguf");
    const made = await runCli(["make-model", "--preset", "tiny", "--out", other, "--seed", "1", "-q"]);
    expect(made.code).toBe(0);
    const a = await Llama2.load(other, { device: "cpu" });
    const file2 = path.join(dir, "seed1.l2s");
    try {
      const s1 = a.createSession();
      await talk(s1, ["Hello"]);
      await s1.save(file2);
      s1.dispose();
    } finally {
      await a.dispose();
    }
    const made2 = await runCli(["make-model", "--preset", "tiny", "--out", other, "--seed", "2", "-q", "--force"]);
    expect(made2.code).toBe(0);
    const b = await Llama2.load(other, { device: "cpu" });
    try {
      await expect(b.restoreSession(file2)).rejects.toThrow(/different weights/);
    } finally {
      await b.dispose();
    }
    // A smaller context than the saved tokens.
    const tight = await Llama2.load(sharedPath(TINY_HF), { device: "cpu", contextLength: cachedTokens - 1 });
    try {
      await expect(tight.restoreSession(file)).rejects.toMatchObject({ code: "ERR_SESSION_STATE", message: expect.stringMatching(/do not fit this model's context of/) });
    } finally {
      await tight.dispose();
    }
  });

  it("broken or foreign files get typed errors, and the model stays usable", async () => {
    const s = model.createSession();
    await talk(s, ["Hello"]);
    const file = path.join(dir, "good.l2s");
    await s.save(file);
    s.dispose();
    const good = readFileSync(file);
    const variant = (name: string, bytes: Buffer) => {
      const p = path.join(dir, name);
      writeFileSync(p, bytes);
      return p;
    };
    const header = JSON.parse(good.subarray(16, 16 + good.readUInt32LE(12)).toString("utf8"));
    const withHeader = (h: unknown) => {
      const json = Buffer.from(JSON.stringify(h));
      const head = Buffer.alloc(Math.ceil((16 + json.length) / 4096) * 4096);
      good.copy(head, 0, 0, 12);
      head.writeUInt32LE(json.length, 12);
      json.copy(head, 16);
      return Buffer.concat([head, good.subarray(Math.ceil((16 + good.readUInt32LE(12)) / 4096) * 4096)]);
    };
    const expectCode = async (p: string, code: string, re?: RegExp) => {
      const err = await model.restoreSession(p).catch((e) => e);
      expect(err).toMatchObject({ code });
      if (re) expect(err.message).toMatch(re);
    };
    await expectCode(path.join(dir, "missing.l2s"), "ERR_FILE_NOT_FOUND");
    await expectCode(variant("text.l2s", Buffer.from("hello world, not a session")), "ERR_SESSION_STATE", /not a saved llama2-native session/);
    await expectCode(variant("short.l2s", good.subarray(0, good.length - 100)), "ERR_SESSION_STATE", /truncated or corrupt/);
    const v2 = Buffer.from(good);
    v2.writeUInt32LE(2, 8);
    await expectCode(variant("v2.l2s", v2), "ERR_SESSION_STATE", /version 2 is not supported/);
    const huge = Buffer.from(good);
    huge.writeUInt32LE(0x7fffffff, 12);
    await expectCode(variant("huge.l2s", huge), "ERR_SESSION_STATE", /does not fit the file/);
    const json = Buffer.from(good);
    json.write("}", 16);
    await expectCode(variant("json.l2s", json), "ERR_SESSION_STATE", /not valid JSON/);
    await expectCode(variant("ids.l2s", withHeader({ ...header, tokens: header.tokens.map((t: number, i: number) => (i === 3 ? 99999 : t)) })), "ERR_SESSION_STATE", /past the vocabulary/);
    await expectCode(variant("dropped.l2s", withHeader({ ...header, session: { ...header.session, dropped: 3 } })), "ERR_SESSION_STATE", /dropped/);
    await expectCode(variant("roles.l2s", withHeader({ ...header, session: { ...header.session, messages: [{ role: "assistant", content: "x" }, { role: "user", content: "y" }] } })), "ERR_INVALID_ARGUMENT");
    await expectCode(variant("template.l2s", withHeader({ ...header, session: { ...header.session, template: "nope" } })), "ERR_INVALID_ARGUMENT");
    // Every byte of the header flipped in turn: a typed error or a session, never a crash.
    let typed = 0;
    const n = 16 + good.readUInt32LE(12);
    for (let i = 0; i < n; i += Math.max(1, Math.floor(n / 200))) {
      const b = Buffer.from(good);
      b[i] = b[i]! ^ 0x5a;
      const p = variant("flip.l2s", b);
      const r = await model.restoreSession(p).catch((e) => e);
      if (r instanceof Error) {
        expect((r as { code?: string }).code).toMatch(/^ERR_(SESSION_STATE|INVALID_ARGUMENT|FILE_READ)$/);
        typed++;
      } else r.dispose();
    }
    expect(typed).toBeGreaterThan(0);
    expect((await model.generate("Still fine", { ...g, maxTokens: 2 }).result).tokenIds).toHaveLength(2);
  });

  it("save: refused while a reply runs and after dispose; a bad path is ERR_FILE_WRITE", async () => {
    const s = model.createSession();
    const running = s.send("Hello", { ...g, maxTokens: 20 });
    await expect(s.save(path.join(dir, "busy.l2s"))).rejects.toMatchObject({ code: "ERR_INVALID_ARGUMENT", field: "session" });
    await running.result;
    await expect(s.save(path.join(dir, "no-such-dir", "x.l2s"))).rejects.toMatchObject({ code: "ERR_FILE_WRITE" });
    s.dispose();
    await expect(s.save(path.join(dir, "gone.l2s"))).rejects.toMatchObject({ code: "ERR_DISPOSED" });
    await expect(model.restoreSession("")).rejects.toMatchObject({ code: "ERR_INVALID_ARGUMENT", field: "file" });
    await expect(model.restoreSession("x", { nope: 1 } as never)).rejects.toMatchObject({ code: "ERR_INVALID_ARGUMENT", field: "options.nope" });
  });

  it("the native restore protocol: no step, fork or read before every block is written; truncating abandons it", async () => {
    const native = model._native();
    const bb = native.info().kvBlockBytes;
    const seq = native.createSequence();
    try {
      native.beginRestore(seq, 40); // 3 blocks
      const step = () => native.forward([{ seq, tokens: Int32Array.of(5), output: -1 }]);
      await expect(step()).rejects.toMatchObject({ code: "ERR_INVALID_ARGUMENT", message: expect.stringMatching(/being restored/) });
      expect(() => native.forkSequence(seq)).toThrow(/being restored/);
      await expect(native.readSequenceBlocks(seq, 0, 1, new Uint8Array(bb))).rejects.toThrow(/being restored/);
      expect(() => native.beginRestore(seq, 16)).toThrow(/not empty/);
      await native.writeSequenceBlocks(seq, 0, 2, new Uint8Array(2 * bb));
      expect(() => native.finishRestore(seq)).toThrow(/block 2 was not written/);
      await expect(native.writeSequenceBlocks(seq, 2, 2, new Uint8Array(2 * bb))).rejects.toThrow(/out of range/);
      await expect(native.writeSequenceBlocks(seq, 2, 1, new Uint8Array(bb - 1))).rejects.toThrow(/too small/);
      native.truncateSequence(seq, 0); // abandoned: the blocks go back
      expect(() => native.finishRestore(seq)).toThrow(/not being restored/);
      expect(native.sequenceLength(seq)).toBe(0);
      const free = native.kvState().freeBlocks;
      native.beginRestore(seq, 20);
      await native.writeSequenceBlocks(seq, 0, 2, new Uint8Array(2 * bb));
      native.finishRestore(seq);
      expect(native.sequenceLength(seq)).toBe(20);
      expect(native.kvState().freeBlocks).toBe(free - 2);
      const other = native.createSequence();
      expect(() => native.beginRestore(other, 1 << 20)).toThrow(/does not fit the context/);
      native.freeSequence(other);
    } finally {
      native.freeSequence(seq);
    }
  });

  it("restoring makes KV room by parking idle sessions", async () => {
    const m = await Llama2.load(sharedPath(TINY_HF), { device: "cpu", contextLength: 128, maxSequences: 1, prefixCache: false });
    try {
      const s = m.createSession({ contextShift: false });
      await talk(s, ["one two three four five six seven", "eight nine ten", "eleven twelve thirteen"]);
      expect(s.cachedTokens).toBeGreaterThan(48); // 4 of the 8 blocks: the restore cannot fit beside it
      const file = path.join(dir, "room.l2s");
      await s.save(file);
      const next = await s.send("again", g).result;
      // s holds most of the single sequence's blocks; restoring parks it.
      const r = await m.restoreSession(file);
      expect(s.cachedTokens).toBe(0);
      expect((await r.send("again", g).result).tokenIds).toEqual(next.tokenIds);
      r.dispose();
      s.dispose();
    } finally {
      await m.dispose();
    }
  });
});
