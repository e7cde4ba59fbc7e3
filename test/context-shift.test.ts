// Chat sessions that outgrow the context: the oldest exchanges leave the model's window (context
// shift) and the turn's reply is what a one-shot chat over the remaining dialog gives. tiny-llama runs
// with a 64-token context here, so a few turns are enough.
import { afterAll, beforeAll, expect, it, vi } from "vitest";
import { llama2Template } from "../lib/chat-template.js";
import { Llama2 } from "../lib/llama2.js";
import type { ChatMessage, GenerateOptions } from "../lib/types.js";
import { describeShared, sharedPath } from "./helpers/shared.js";

const TINY = "models/tiny-llama-f16.gguf";
const OPTS: GenerateOptions = { temperature: 0, maxTokens: 6, stopOnEos: false };
const USER = ["Hello there", "Tell me more", "Why so?", "And then what", "Really now", "One more time", "Last one"];

describeShared("chat sessions: context shift", [TINY], () => {
  let tiny: Llama2;
  beforeAll(async () => {
    tiny = await Llama2.load(sharedPath(TINY), { device: "cpu", contextLength: 64 });
  });
  afterAll(async () => {
    await tiny?.dispose();
  });

  /** The dialog the model sees after `dropped` messages left the window. */
  const window = (system: string | undefined, messages: readonly ChatMessage[], dropped: number, user: string): ChatMessage[] => [
    ...(system !== undefined ? [{ role: "system" as const, content: system }] : []),
    ...messages.slice(dropped),
    { role: "user", content: user },
  ];

  for (const system of [undefined, "You are brief."]) {
    it(`drops the oldest exchanges and replies as a one-shot chat over the rest (${system ? "with" : "without"} a system prompt)`, async () => {
      const ctx = tiny.info.contextLength;
      expect(ctx).toBe(64);
      const session = tiny.createSession({ systemPrompt: system });
      let shifts = 0;
      let afterShift = false;
      try {
        for (const text of USER) {
          const before = session.droppedMessages;
          const history = session.messages.slice();
          const cachedBefore = session.cachedTokens;
          const r = await session.send(text, OPTS).result;
          // The reply always had its room: it ran to maxTokens, never to the end of the context.
          expect(r.stats).toMatchObject({ completionTokens: 6, finishReason: "length" });
          expect(r.stats.promptTokens + 6).toBeLessThanOrEqual(ctx);
          const dropped = session.droppedMessages;
          expect(dropped % 2).toBe(0);
          expect(dropped).toBeGreaterThanOrEqual(before);
          expect(session.messages).toHaveLength(history.length + 2); // the full history stays visible
          if (dropped > before) {
            shifts++;
            // The prompt is the window's dialog as the template encodes it; only its shared start
            // (BOS, "[INST]", the system prompt) came from the cache.
            const ids = llama2Template.encodeDialog(window(system, history, dropped, text), tiny.tokenizer!);
            expect(r.stats.promptTokens).toBe(ids.length);
            expect(r.stats.cachedPromptTokens).toBeGreaterThan(0);
            expect(r.stats.cachedPromptTokens).toBeLessThan(cachedBefore);
            if (system) expect(r.stats.cachedPromptTokens).toBeGreaterThan(tiny.tokenize(system).length);
            // Exactly what a one-shot chat over the same dialog gives (the CPU is batch-invariant).
            const alone = await tiny.chat(window(system, history, dropped, text), OPTS).result;
            expect(r.tokenIds).toEqual(alone.tokenIds);
            expect(r.text).toBe(alone.text);
            afterShift = true;
          } else if (afterShift) {
            // The turn after a shift appends to the cache again (the drop left slack for it).
            expect(r.stats.cachedPromptTokens).toBe(cachedBefore);
            afterShift = false;
          }
        }
        expect(shifts).toBeGreaterThan(0);
        expect(session.messages).toHaveLength(USER.length * 2);
      } finally {
        session.dispose();
      }
    });
  }

  it("maxTokens sets the room a turn keeps for its reply; reset() brings the dropped messages back to zero", async () => {
    for (const [max, dropped] of [[6, 0], [32, 2]] as const) {
      const session = tiny.createSession();
      try {
        await session.send("Hello there", { ...OPTS, maxTokens: 12 }).result;
        expect(session.droppedMessages).toBe(0);
        // The first exchange (~23 tokens) and this turn (~10) leave room for 6 tokens of reply, not for 32:
        // then the first exchange leaves the window.
        const r = await session.send("Tell me more", { ...OPTS, maxTokens: max }).result;
        expect(session.droppedMessages).toBe(dropped);
        expect(r.stats).toMatchObject({ completionTokens: max, finishReason: "length" });
        session.reset();
        expect(session.droppedMessages).toBe(0);
        expect(session.messages).toEqual([]);
      } finally {
        session.dispose();
      }
    }
  });

  it("a shifted turn that does not complete leaves a consistent session: the next turn prompts the window again", async () => {
    const session = tiny.createSession();
    try {
      await session.send("Hello there", OPTS).result;
      await session.send("Tell me more", OPTS).result;
      const history = session.messages.slice();
      const ac = new AbortController();
      ac.abort();
      const aborted = await session.send("Why so?", { ...OPTS, maxTokens: 40, signal: ac.signal }).result;
      expect(aborted.stats.finishReason).toBe("abort");
      expect(session.droppedMessages).toBeGreaterThan(0);
      expect(session.messages).toEqual(history); // the aborted turn did not join the conversation
      const dropped = session.droppedMessages;
      const r = await session.send("Why so?", OPTS).result;
      expect(session.droppedMessages).toBe(dropped);
      const alone = await tiny.chat(window(undefined, history, dropped, "Why so?"), OPTS).result;
      expect(r.tokenIds).toEqual(alone.tokenIds);
      // And the one after appends to the cache.
      const cached = session.cachedTokens;
      const r2 = await session.send("Go on", { ...OPTS, maxTokens: 3 }).result;
      expect(r2.stats.cachedPromptTokens).toBe(cached);
    } finally {
      session.dispose();
    }
  });

  it("a session resumed from saved messages replies as a one-shot chat of that dialog, then appends", async () => {
    // A roomier context for the resumed conversation, so that nothing shifts there.
    const roomy = await Llama2.load(sharedPath(TINY), { device: "cpu", contextLength: 256 });
    const first = roomy.createSession({ systemPrompt: "You are brief." });
    let saved: ChatMessage[];
    try {
      await first.send("Hello there", OPTS).result;
      await first.send("Tell me more", OPTS).result;
      saved = JSON.parse(JSON.stringify(first.messages)) as ChatMessage[];
    } finally {
      first.dispose();
    }
    const resumed = roomy.createSession({ systemPrompt: "You are brief.", messages: saved });
    try {
      expect(resumed.messages).toEqual(saved);
      expect(resumed.cachedTokens).toBe(0);
      const r = await resumed.send("Why so?", OPTS).result;
      expect(resumed.droppedMessages).toBe(0);
      const alone = await roomy.chat(window("You are brief.", saved, 0, "Why so?"), OPTS).result;
      expect(r.tokenIds).toEqual(alone.tokenIds);
      expect(r.stats.promptTokens).toBe(llama2Template.encodeDialog(window("You are brief.", saved, 0, "Why so?"), tiny.tokenizer!).length);
      expect(resumed.messages).toHaveLength(6);
      const cached = resumed.cachedTokens;
      const r2 = await resumed.send("Go on", OPTS).result;
      expect(resumed.droppedMessages).toBe(0);
      expect(r2.stats.cachedPromptTokens).toBe(cached);
      // A maxTokens beyond the context asks for half of it at most: the history stays.
      const long = await resumed.send("A long one", { ...OPTS, maxTokens: 1000 }).result;
      expect(resumed.droppedMessages).toBe(0);
      expect(long.stats.finishReason).toBe("length");
      expect(long.stats.promptTokens).toBeLessThan(128);
    } finally {
      resumed.dispose();
      await roomy.dispose();
    }
    // A history too long for the context is shifted on the first turn like any other.
    const long = Array.from({ length: 8 }, (_, i) => ({ role: i % 2 ? "assistant" : "user", content: `message number ${i} of a long chat` }) as ChatMessage);
    const big = tiny.createSession({ messages: long });
    try {
      const r = await big.send("Hi", OPTS).result;
      expect(big.droppedMessages).toBeGreaterThan(0);
      expect(r.tokenIds).toEqual((await tiny.chat(window(undefined, long, big.droppedMessages, "Hi"), OPTS).result).tokenIds);
    } finally {
      big.dispose();
    }
    // Many short exchanges: the shift drops the fewest that make room (what a linear search finds), with
    // a logarithmic number of encodings of the dialog.
    const roomy2 = await Llama2.load(sharedPath(TINY), { device: "cpu", contextLength: 256 });
    const many = Array.from({ length: 60 }, (_, i) => ({ role: i % 2 ? "assistant" : "user", content: `m${i} ok` }) as ChatMessage);
    const chatty = roomy2.createSession({ messages: many });
    const spy = vi.spyOn(llama2Template, "encodeDialog");
    try {
      const r = await chatty.send("Hi", OPTS).result;
      const encodings = spy.mock.calls.length;
      spy.mockRestore();
      const target = 256 - 6 - 32; // context - room (the turn's maxTokens) - slack (an eighth)
      let linear = 2;
      while (linear < many.length && llama2Template.encodeDialog(window(undefined, many, linear, "Hi"), tiny.tokenizer!).length > target) linear += 2;
      expect(chatty.droppedMessages).toBe(linear);
      expect(linear).toBeGreaterThan(6); // several exchanges had to go
      expect(encodings).toBeLessThanOrEqual(8); // ~log2(30) + the turn's own, not one per dropped exchange
      expect(r.tokenIds).toEqual((await roomy2.chat(window(undefined, many, linear, "Hi"), OPTS).result).tokenIds);
    } finally {
      spy.mockRestore();
      chatty.dispose();
      await roomy2.dispose();
    }
    // Bad histories are refused, naming the message.
    const bad = (messages: unknown, field: string) =>
      expect(() => tiny.createSession({ messages } as never)).toThrow(expect.objectContaining({ code: "ERR_INVALID_ARGUMENT", field }));
    bad("hi", "options.messages");
    bad([{ role: "user", content: "a" }], "options.messages");
    bad([{ role: "assistant", content: "a" }, { role: "user", content: "b" }], "options.messages[0].role");
    bad([{ role: "system", content: "a" }, { role: "user", content: "b" }], "options.messages[0].role");
    bad([{ role: "user", content: "a" }, { role: "assistant", content: 3 }], "options.messages[1].content");
    bad([{ role: "user", content: "a" }, null], "options.messages[1]");
  });

  it("contextShift: false keeps every message: the turn that no longer fits fails, the session stays usable", async () => {
    const session = tiny.createSession({ contextShift: false });
    try {
      let failed = false;
      for (const text of USER) {
        try {
          await session.send(text, OPTS).result;
        } catch (err) {
          expect(err).toMatchObject({ code: "ERR_CONTEXT_OVERFLOW" });
          failed = true;
          break;
        }
        expect(session.droppedMessages).toBe(0);
      }
      expect(failed).toBe(true);
      session.reset();
      expect((await session.send("Hi", OPTS).result).stats.completionTokens).toBe(6);
    } finally {
      session.dispose();
    }
    expect(() => tiny.createSession({ contextShift: "yes" } as never)).toThrow(expect.objectContaining({ code: "ERR_INVALID_ARGUMENT", field: "options.contextShift" }));
  });
});

describeShared("context shift inside a one-shot reply (contextShift: true)", [TINY], () => {
  let tiny: Llama2;
  beforeAll(async () => {
    tiny = await Llama2.load(sharedPath(TINY), { device: "cpu", contextLength: 64 });
  });
  afterAll(async () => {
    await tiny?.dispose();
  });

  it("generates past the context; after a shift it continues as a fresh prompt of the kept window does", async () => {
    const prompt = tiny.tokenize("Once upon a time", { bos: true });
    const P = prompt.length;
    const r = await tiny.generate(prompt, { temperature: 0, maxTokens: 150, stopOnEos: false, contextShift: true }).result;
    expect(r.tokenIds).toHaveLength(150); // far past the 64-token context
    expect(r.stats.finishReason).toBe("length");
    // The first shift comes when the token generated[64 - P] needs a 65th position: the prompt is kept and
    // the oldest half of the reply so far leaves. The next tokens are what that window gives as a prompt.
    const g = 65 - P;
    const all = [...prompt, ...r.tokenIds.slice(0, g)];
    const drop = Math.floor((all.length - P) / 2);
    const window = [...all.slice(0, P), ...all.slice(P + drop)];
    const fresh = await tiny.generate(window, { temperature: 0, maxTokens: 8, stopOnEos: false }).result;
    expect(r.tokenIds.slice(g, g + 8)).toEqual(fresh.tokenIds);
    // Without it the reply ends with the context; before the first shift both are the same tokens.
    const plain = await tiny.generate(prompt, { temperature: 0, maxTokens: 150, stopOnEos: false }).result;
    expect(plain.tokenIds).toHaveLength(65 - P);
    expect(plain.stats.finishReason).toBe("length");
    expect(r.tokenIds.slice(0, g)).toEqual(plain.tokenIds);
    // With drafts (lookup) and a stop string the shifted reply is the same; nothing leaks.
    const drafted = await tiny.generate(prompt, { temperature: 0, maxTokens: 150, stopOnEos: false, contextShift: true, lookup: 4 }).result;
    expect(drafted.tokenIds).toEqual(r.tokenIds);
    tiny.clearPrefixCache();
    expect(tiny._native().kvState().freeBlocks).toBe(tiny._native().kvState().totalBlocks);
    expect(() => tiny.generate(prompt, { contextShift: "yes" } as never)).toThrow(expect.objectContaining({ field: "contextShift" }));
  });
});

describeShared("context shift inside a session's reply", [TINY], () => {
  let tiny: Llama2;
  beforeAll(async () => {
    tiny = await Llama2.load(sharedPath(TINY), { device: "cpu", contextLength: 64 });
  });
  afterAll(async () => {
    await tiny?.dispose();
  });

  it("a reply past the context goes on; the next turn prompts the window again, as a one-shot chat of it", async () => {
    const session = tiny.createSession();
    try {
      const first = await session.send("Hello there", { temperature: 0, maxTokens: 90, stopOnEos: false, contextShift: true }).result;
      expect(first.tokenIds).toHaveLength(90);
      expect(session.messages).toHaveLength(2);
      expect(session.messages[1]!.content).toBe(first.text);
      // The next turn: the long reply no longer fits, so the between-turn shift drops it.
      const history = session.messages.slice();
      const next = await session.send("Tell me more", OPTS).result;
      const dropped = session.droppedMessages;
      expect(dropped).toBe(2);
      const alone = await tiny.chat([...history.slice(dropped), { role: "user", content: "Tell me more" }], OPTS).result;
      expect(next.tokenIds).toEqual(alone.tokenIds);
      // Without the option the reply stops at the context.
      session.reset();
      const plain = await session.send("Hello there", { temperature: 0, maxTokens: 90, stopOnEos: false }).result;
      expect(plain.stats.finishReason).toBe("length");
      expect(plain.tokenIds.length).toBeLessThan(64);
      expect(first.tokenIds.slice(0, plain.tokenIds.length)).toEqual(plain.tokenIds);
    } finally {
      session.dispose();
    }
    tiny.clearPrefixCache();
    expect(tiny._native().kvState().freeBlocks).toBe(tiny._native().kvState().totalBlocks);
  });
});
