// The chatbot job with the real engine: the default loader (demo model -> Llama2.load on the CPU),
// the OpenAI endpoints, seeds, abort on disconnect and cancel, end to end. The demo model (~40 MB) is
// generated once into a fixed temp folder and reused by later runs.
import http from "node:http";
import { mkdtempSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { PassThrough } from "node:stream";
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Llama2 } from "../lib/llama2.js";
import { cancelJob } from "../lib/runner/cancel.js";
import type { Job } from "../lib/runner/job.js";
import { runJob, type RunResult } from "../lib/runner/run.js";
import { parseRunSpec } from "../lib/runner/spec.js";
import { readJob } from "../lib/runner/store.js";
import { ensureDemoModel } from "../lib/synth/demo.js";
import { postJson, readSse, streamedText, waitFor } from "./helpers/fake-backend.js";

const savedHome = process.env.LLAMA2_HOME;
let job: Job;
let done: Promise<RunResult>;
let url: string;
const root = mkdtempSync(path.join(os.tmpdir(), "llama2-real-jobs-"));

beforeAll(async () => {
  process.env.LLAMA2_HOME = path.join(os.tmpdir(), "llama2-native-test-home");
  const spec = parseRunSpec({ model: "demo", device: "cpu", context: 256, port: 0 });
  done = runJob(spec, { stderr: new PassThrough().resume(), jobsDir: root, onJob: (j) => (job = j), controlPollMs: 20 });
  done.catch(() => {});
  await waitFor(() => job?.record.url !== undefined || job?.state === "failed", 60_000, "the demo model to load");
  expect(job.record.error).toBeUndefined();
  url = job.record.url!;
}, 90_000);

afterAll(async () => {
  if (job && job.state === "running") await cancelJob(root, job.id, { waitMs: 10_000 });
  await done?.catch(() => {});
  if (savedHome === undefined) delete process.env.LLAMA2_HOME;
  else process.env.LLAMA2_HOME = savedHome;
});

const messages = [{ role: "user", content: "Hello there!" }];

describe("chatbot job on the real engine (demo model, CPU)", () => {
  it("reports the model and its device", async () => {
    const m = (await (await fetch(`${url}v1/models`)).json()).data[0];
    expect(m).toMatchObject({ id: "demo", llama2: { device: "cpu", context_length: 256, format: "gguf", chat_template: "llama2" } });
    expect(readJob(job.dir).resources).toMatchObject({ device: "cpu", contextLength: 256 });
  });

  it("lookup (prompt lookup decoding) on a greedy request: the same text as without it", async () => {
    const prompt = "one two three four five one two three four five one two three";
    const body = { prompt, max_tokens: 24, temperature: 0 };
    const plain = await (await postJson(`${url}v1/completions`, body)).json();
    const fast = await (await postJson(`${url}v1/completions`, { ...body, lookup: 8 })).json();
    expect(fast.choices[0].text).toBe(plain.choices[0].text);
    expect(fast.usage).toEqual(plain.usage);
    const chat = { messages, max_tokens: 12, temperature: 0 };
    const a = await (await postJson(`${url}v1/chat/completions`, chat)).json();
    const b = await (await postJson(`${url}v1/chat/completions`, { ...chat, lookup: 4 })).json();
    expect(b.choices[0].message.content).toBe(a.choices[0].message.content);
  });

  it("a job with --draft-model drafts for every request: the same greedy text, drafts accepted", async () => {
    let drafted: Job | undefined;
    const spec = parseRunSpec({ model: "demo", draftModel: "demo", draftTokens: 4, device: "cpu", context: 256, port: 0 });
    expect(spec).toMatchObject({ draftModel: "demo", draftTokens: 4 });
    const run = runJob(spec, { stderr: new PassThrough().resume(), jobsDir: root, onJob: (j) => (drafted = j), controlPollMs: 20 });
    run.catch(() => {});
    try {
      await waitFor(() => drafted?.record.url !== undefined || drafted?.state === "failed", 60_000, "the drafted job to load");
      expect(drafted!.record.error).toBeUndefined();
      const body = { prompt: "Once upon a time", max_tokens: 24, temperature: 0 };
      const plain = await (await postJson(`${url}v1/completions`, body)).json();
      const fast = await (await postJson(`${drafted!.record.url}v1/completions`, body)).json();
      expect(fast.choices[0].text).toBe(plain.choices[0].text);
      // The draft model is the model itself here: every draft comes true.
      expect(fast.timings.draft_n_accepted).toBeGreaterThan(0);
      expect(fast.timings.draft_n_accepted).toBe(fast.timings.draft_n);
      expect(plain.timings.draft_n).toBeUndefined();
      const chat = { messages, max_tokens: 12, temperature: 0 };
      const a = await (await postJson(`${url}v1/chat/completions`, chat)).json();
      const b = await (await postJson(`${drafted!.record.url}v1/chat/completions`, chat)).json();
      expect(b.choices[0].message.content).toBe(a.choices[0].message.content);
      // Embeddings go to the target model (the drafted backend forwards embed()).
      const emb = { input: ["Once upon a time", "a cat"] };
      const e0 = await (await postJson(`${url}v1/embeddings`, emb)).json();
      const e1 = await (await postJson(`${drafted!.record.url}v1/embeddings`, emb)).json();
      expect(e1.data).toEqual(e0.data);
    } finally {
      if (drafted && drafted.state === "running") await cancelJob(root, drafted.id, { waitMs: 10_000 });
      await run.catch(() => {});
    }
    expect(() => parseRunSpec({ draftTokens: 4 })).toThrow(expect.objectContaining({ field: "--draft-tokens" }));
    expect(() => parseRunSpec({ draftModel: "demo", draftTokens: 40 })).toThrow(expect.objectContaining({ field: "--draft-tokens" }));
  }, 120_000);

  it("context_shift: a reply past the 256-token context; without it such a max_tokens is refused", async () => {
    const body = { prompt: "Once upon a time", max_tokens: 300, temperature: 0 };
    const refused = await postJson(`${url}v1/completions`, body);
    expect(refused.status).toBe(400);
    expect((await refused.json()).error.code).toBe("context_length_exceeded");
    const r = await (await postJson(`${url}v1/completions`, { ...body, context_shift: true })).json();
    expect(r.usage.completion_tokens).toBe(300);
    expect(r.choices[0].finish_reason).toBe("length");
  });

  it("completes with usage, and the same seed gives the same text", async () => {
    const body = { messages, max_tokens: 8, seed: 1234, temperature: 0.9 };
    const a = await (await postJson(`${url}v1/chat/completions`, body)).json();
    const b = await (await postJson(`${url}v1/chat/completions`, body)).json();
    expect(a.usage.completion_tokens).toBeGreaterThan(0);
    expect(a.usage.completion_tokens).toBeLessThanOrEqual(8);
    expect(a.usage.prompt_tokens).toBeGreaterThan(5);
    expect(a.choices[0].message.content.length).toBeGreaterThan(0);
    expect(b.choices[0].message.content).toBe(a.choices[0].message.content);
    const c = await (await postJson(`${url}v1/chat/completions`, { ...body, seed: 99 })).json();
    expect(c.choices[0].message.content).not.toBe(a.choices[0].message.content);
  });

  it("streams the same text it would return whole", async () => {
    const body = { messages, max_tokens: 10, seed: 7 };
    const whole = await (await postJson(`${url}v1/chat/completions`, body)).json();
    const sse = await readSse(await postJson(`${url}v1/chat/completions`, { ...body, stream: true }));
    expect(sse.done).toBe(true);
    expect(streamedText(sse.events)).toBe(whole.choices[0].message.content);
    const text = await (await postJson(`${url}v1/completions`, { prompt: "Once upon a time", max_tokens: 5, seed: 3 })).json();
    expect(text.usage.completion_tokens).toBeLessThanOrEqual(5);
  });

  it("OpenAI's client gets the same text streamed and whole, and the usage", async () => {
    const client = new OpenAI({ baseURL: `${url}v1`, apiKey: "unused", maxRetries: 0 });
    const body = { model: "demo", messages: messages as OpenAI.Chat.ChatCompletionMessageParam[], max_tokens: 6, seed: 11 };
    const whole = await client.chat.completions.create(body);
    expect(whole.usage!.completion_tokens).toBeGreaterThan(0);
    expect(whole.usage!.completion_tokens).toBeLessThanOrEqual(6);
    let text = "";
    for await (const c of await client.chat.completions.create({ ...body, stream: true })) text += c.choices[0]?.delta.content ?? "";
    expect(text).toBe(whole.choices[0].message.content);
  });

  it("response_format json_schema: OpenAI's client gets a document of the schema, streamed and whole", async () => {
    const client = new OpenAI({ baseURL: `${url}v1`, apiKey: "unused", maxRetries: 0 });
    const schema = { type: "object", properties: { city: { type: "string", maxLength: 10 }, rain: { type: "boolean" } }, required: ["city", "rain"], additionalProperties: false };
    const body = {
      model: "demo",
      messages: messages as OpenAI.Chat.ChatCompletionMessageParam[],
      max_tokens: 120,
      seed: 4,
      response_format: { type: "json_schema" as const, json_schema: { name: "weather", schema, strict: true } },
    };
    const whole = await client.chat.completions.create(body);
    expect(whole.choices[0]!.finish_reason).toBe("stop");
    const v = JSON.parse(whole.choices[0]!.message.content!);
    expect(Object.keys(v)).toEqual(["city", "rain"]);
    expect(typeof v.city).toBe("string");
    expect(typeof v.rain).toBe("boolean");
    let text = "";
    for await (const c of await client.chat.completions.create({ ...body, stream: true })) text += c.choices[0]?.delta.content ?? "";
    expect(text).toBe(whole.choices[0]!.message.content);
    // JSON mode on the completions endpoint.
    const r = await (await postJson(`${url}v1/completions`, { prompt: "{", max_tokens: 40, temperature: 0, response_format: { type: "json_object", schema: { type: "object", properties: { n: { type: "integer" } }, required: ["n"] } } })).json();
    expect(Number.isInteger(JSON.parse(r.choices[0].text).n)).toBe(true);
  });

  it("grammar (llama.cpp's GBNF field) on both endpoints: the reply is what the grammar accepts", async () => {
    const grammar = 'root ::= "The answer is " ("yes" | "no") "."';
    for (const seed of [1, 2]) {
      const chat = await (await postJson(`${url}v1/chat/completions`, { messages, max_tokens: 30, seed, grammar })).json();
      expect(chat.choices[0].message.content).toMatch(/^The answer is (yes|no)\.$/);
      expect(chat.choices[0].finish_reason).toBe("stop");
    }
    const text = await (await postJson(`${url}v1/completions`, { prompt: "Q:", max_tokens: 30, temperature: 0, grammar: 'root ::= [0-9]{3} "-" [0-9]{4}' })).json();
    expect(text.choices[0].text).toMatch(/^[0-9]{3}-[0-9]{4}$/);
    // An empty grammar means none (llama.cpp's default).
    const free = await postJson(`${url}v1/completions`, { prompt: "Q:", max_tokens: 3, grammar: "" });
    expect(free.status).toBe(200);
  });

  it("logprobs: chat (whole and streamed, OpenAI's client) and the legacy completions shape", async () => {
    const client = new OpenAI({ baseURL: `${url}v1`, apiKey: "unused", maxRetries: 0 });
    const body = { model: "demo", messages: messages as OpenAI.Chat.ChatCompletionMessageParam[], max_tokens: 6, seed: 8, logprobs: true, top_logprobs: 2 };
    const whole = await client.chat.completions.create(body);
    const content = whole.choices[0]!.logprobs!.content!;
    expect(content).toHaveLength(whole.usage!.completion_tokens);
    for (const t of content) {
      expect(t.logprob).toBeLessThanOrEqual(0);
      expect(t.top_logprobs).toHaveLength(2);
      expect(Buffer.from(t.bytes!).toString("utf8")).toBe(t.token);
    }
    const streamed: unknown[] = [];
    for await (const c of await client.chat.completions.create({ ...body, stream: true })) streamed.push(...(c.choices[0]?.logprobs?.content ?? []));
    expect(streamed).toEqual(content);
    const plain = await client.chat.completions.create({ ...body, logprobs: false, top_logprobs: undefined });
    expect(plain.choices[0]!.logprobs).toBeNull();
    expect(plain.choices[0]!.message.content).toBe(whole.choices[0]!.message.content);
    const r = await (await postJson(`${url}v1/completions`, { prompt: "Once upon a time", max_tokens: 5, temperature: 0, logprobs: 1 })).json();
    const lp = r.choices[0].logprobs;
    expect(lp.tokens).toHaveLength(r.usage.completion_tokens);
    expect(lp.token_logprobs).toHaveLength(lp.tokens.length);
    expect(lp.top_logprobs.every((o: object) => Object.keys(o).length === 1)).toBe(true);
    expect(lp.text_offset[0]).toBe(0);
    expect(lp.text_offset[1]).toBe(lp.tokens[0].length);
  });

  it("echo: the prompt's tokens with their logprobs (lm-evaluation-harness's loglikelihood request), batched, streamed", async () => {
    const ref = await Llama2.load(await ensureDemoModel({ dir: path.join(os.tmpdir(), "llama2-native-test-home", "models") }), { device: "cpu", contextLength: 256 });
    try {
      const a = ref.tokenize("Once upon a time, a cat", { bos: true });
      const b = ref.tokenize("The sun was hot and the", { bos: true });
      // lm-eval's local-completions payload: token ids in a batch, one generated token, its best alternative.
      const r = await (await postJson(`${url}v1/completions`, { prompt: [a, b], echo: true, max_tokens: 1, logprobs: 1, temperature: 0, seed: 1234 })).json();
      expect(r.choices.map((c: { index: number }) => c.index)).toEqual([0, 1]);
      expect(r.usage.prompt_tokens).toBe(a.length + b.length);
      for (const [i, ids] of [a, b].entries()) {
        const lp = r.choices[i].logprobs;
        const s = await ref.score(ids, { topLogprobs: 1 });
        expect(lp.tokens).toHaveLength(ids.length + 1);
        expect(lp.token_logprobs[0]).toBeNull();
        expect(lp.top_logprobs[0]).toBeNull();
        s.logprobs.forEach((l, k) => expect(lp.token_logprobs[k + 1]).toBeCloseTo(l, 9));
        s.tokens!.forEach((t, k) => expect(lp.top_logprobs[k + 1]).toEqual({ [t.top[0]!.token]: expect.closeTo(t.top[0]!.logprob, 9) }));
        // The generated token is greedy, so its logprob is its position's best (lm-eval's is_greedy).
        expect(lp.token_logprobs.at(-1)).toBe(Math.max(...(Object.values(lp.top_logprobs.at(-1)) as number[])));
        // The text is the prompt then the completion, and text_offset indexes it.
        const prompt = ref.detokenize(ids);
        const alone = await ref.generate(ids, { temperature: 0, maxTokens: 1 }).result;
        expect(r.choices[i].text).toBe(prompt + alone.text);
        expect(lp.text_offset.at(-1)).toBe(prompt.length);
        expect(lp.text_offset.every((o: number, k: number) => k === 0 || o >= lp.text_offset[k - 1])).toBe(true);
      }
      // max_tokens 0: the echo alone. A text prompt echoes as sent.
      const text = "Once upon a time, a cat";
      const z = await (await postJson(`${url}v1/completions`, { prompt: text, echo: true, max_tokens: 0, logprobs: 0 })).json();
      expect(z.choices[0]).toMatchObject({ text, finish_reason: "length" });
      expect(z.choices[0].logprobs.tokens).toHaveLength(a.length);
      expect(z.choices[0].logprobs.top_logprobs.slice(1).every((o: object) => Object.keys(o).length === 0)).toBe(true);
      expect(z.usage).toMatchObject({ prompt_tokens: a.length, completion_tokens: 0 });
      // Echo without logprobs, whole and streamed: the same text, the prompt first.
      const body = { prompt: text, echo: true, max_tokens: 5, temperature: 0 };
      const whole = await (await postJson(`${url}v1/completions`, body)).json();
      expect(whole.choices[0].text.startsWith(text)).toBe(true);
      expect(whole.choices[0].logprobs).toBeNull();
      const sse = await readSse(await postJson(`${url}v1/completions`, { ...body, stream: true }));
      expect(sse.events[0].choices[0].text).toBe(text);
      expect(streamedText(sse.events)).toBe(whole.choices[0].text);
      const sseLp = await readSse(await postJson(`${url}v1/completions`, { ...body, stream: true, logprobs: 1 }));
      const echoed = sseLp.events[0].choices[0].logprobs;
      expect(echoed.tokens).toHaveLength(a.length);
      expect(echoed.token_logprobs.slice(1)).toEqual(z.choices[0].logprobs.token_logprobs.slice(1));
    } finally {
      await ref.dispose();
    }
  });

  it("/tokenize and /detokenize (llama.cpp's routes) use the model's tokenizer", async () => {
    const ref = await Llama2.load(await ensureDemoModel({ dir: path.join(os.tmpdir(), "llama2-native-test-home", "models") }), { device: "cpu", contextLength: 256 });
    try {
      const text = "Hello wörld 🦙";
      const t = await (await postJson(`${url}tokenize`, { content: text })).json();
      expect(t.tokens).toEqual(ref.tokenize(text, { bos: false }));
      const withBos = await (await postJson(`${url}tokenize`, { content: text, add_special: true })).json();
      expect(withBos.tokens).toEqual(ref.tokenize(text, { bos: true }));
      // Pieces: text where a token is whole UTF-8, its bytes where it is not (the llama is byte tokens).
      const p = await (await postJson(`${url}tokenize`, { content: text, with_pieces: true })).json();
      expect(p.tokens.map((x: { id: number }) => x.id)).toEqual(t.tokens);
      const bytes = p.tokens.flatMap((x: { piece: string | number[] }) => (typeof x.piece === "string" ? [...Buffer.from(x.piece)] : x.piece));
      expect(Buffer.from(bytes).toString("utf8")).toBe(` ${text}`); // SentencePiece's leading space
      expect(p.tokens.some((x: { piece: unknown }) => Array.isArray(x.piece))).toBe(true);
      const d = await (await postJson(`${url}detokenize`, { tokens: withBos.tokens })).json();
      expect(d.content).toBe(text);
      // parse_special (default true, as llama.cpp): "</s>" in the text is EOS, or text when false.
      const special = "a</s>b";
      expect((await (await postJson(`${url}tokenize`, { content: special })).json()).tokens).toEqual(ref.tokenize(special, { special: true }));
      expect((await (await postJson(`${url}tokenize`, { content: special })).json()).tokens).toContain(ref.info.eosId);
      expect((await (await postJson(`${url}tokenize`, { content: special, parse_special: false })).json()).tokens).toEqual(ref.tokenize(special));
      // Bad requests name their field.
      const bad = async (route: string, body: unknown, param: string) => {
        const r = await postJson(`${url}${route}`, body);
        expect(r.status).toBe(400);
        expect((await r.json()).error.param).toBe(param);
      };
      await bad("tokenize", { text: "x" }, "content");
      await bad("tokenize", { content: "x", add_special: "yes" }, "add_special");
      await bad("tokenize", { content: "x", parse_special: 1 }, "parse_special");
      await bad("detokenize", { tokens: "1,2" }, "tokens");
      await bad("detokenize", { tokens: [1, 32000] }, "tokens[1]");
      expect((await fetch(`${url}tokenize`)).status).toBe(405);
    } finally {
      await ref.dispose();
    }
  });

  it("n choices: batched generations of one prompt, each as it would be alone, whole and streamed", async () => {
    const body = { messages, max_tokens: 8, seed: 21, temperature: 0.9, n: 3 };
    const r = await (await postJson(`${url}v1/chat/completions`, body)).json();
    expect(r.choices.map((c: { index: number }) => c.index)).toEqual([0, 1, 2]);
    const texts = r.choices.map((c: { message: { content: string } }) => c.message.content);
    for (let i = 0; i < 3; i++) {
      // Choice i is the single completion with seed + i.
      const one = await (await postJson(`${url}v1/chat/completions`, { ...body, n: 1, seed: 21 + i })).json();
      expect(texts[i]).toBe(one.choices[0].message.content);
    }
    expect(new Set(texts).size).toBeGreaterThan(1);
    const perChoice = await Promise.all(
      [0, 1, 2].map(async (i) => (await (await postJson(`${url}v1/chat/completions`, { ...body, n: 1, seed: 21 + i })).json()).usage.completion_tokens as number),
    );
    expect(r.usage.completion_tokens).toBe(perChoice.reduce((a, b) => a + b, 0));
    const sse = await readSse(await postJson(`${url}v1/chat/completions`, { ...body, stream: true }));
    expect(sse.done).toBe(true);
    const byIndex = ["", "", ""];
    const finishes: (string | null)[] = [null, null, null];
    for (const e of sse.events as { choices: { index: number; delta: { content?: string }; finish_reason: string | null }[] }[]) {
      for (const c of e.choices ?? []) {
        byIndex[c.index] += c.delta.content ?? "";
        if (c.finish_reason) finishes[c.index] = c.finish_reason;
      }
    }
    expect(byIndex).toEqual(texts);
    expect(finishes.every((f) => f !== null)).toBe(true);
    const t = await (await postJson(`${url}v1/completions`, { prompt: "Once upon a time", max_tokens: 4, n: 2, seed: 5 })).json();
    expect(t.choices).toHaveLength(2);
  });

  it("tools: calls that follow the tools' schemas (OpenAI's client), text with auto, tool results in the history", async () => {
    const client = new OpenAI({ baseURL: `${url}v1`, apiKey: "unused", maxRetries: 0 });
    const tools: OpenAI.Chat.ChatCompletionTool[] = [
      { type: "function", function: { name: "get_weather", description: "Weather in a city", parameters: { type: "object", properties: { city: { type: "string", maxLength: 12 }, unit: { enum: ["C", "F"] } }, required: ["city", "unit"] } } },
      { type: "function", function: { name: "get_time", parameters: { type: "object", properties: { zone: { type: "string", maxLength: 8 } }, required: ["zone"] } } },
    ];
    const ask = [{ role: "user" as const, content: "What is the weather in Paris?" }];
    const r = await client.chat.completions.create({ model: "demo", messages: ask, tools, tool_choice: "required", parallel_tool_calls: false, max_tokens: 90, seed: 1 });
    const choice = r.choices[0]!;
    expect(choice.finish_reason).toBe("tool_calls");
    expect(choice.message.content).toBeNull();
    const calls = choice.message.tool_calls!;
    expect(calls.length).toBeGreaterThan(0);
    for (const c of calls) {
      expect(c.type).toBe("function");
      expect(c.id).toMatch(/^call_/);
      const args = JSON.parse((c as { function: { arguments: string } }).function.arguments);
      const name = (c as { function: { name: string } }).function.name;
      if (name === "get_weather") expect(["C", "F"]).toContain(args.unit);
      else expect(name).toBe("get_time");
    }
    // A named tool; and streamed, the same call arrives as one tool_calls delta.
    const named = { model: "demo", messages: ask, tools, tool_choice: { type: "function" as const, function: { name: "get_time" } }, max_tokens: 60, seed: 2, parallel_tool_calls: false };
    const one = await client.chat.completions.create(named);
    const call = one.choices[0]!.message.tool_calls!;
    expect(call).toHaveLength(1);
    expect((call[0] as { function: { name: string } }).function.name).toBe("get_time");
    let streamedArgs = "";
    for await (const c of await client.chat.completions.create({ ...named, stream: true })) {
      for (const t of c.choices[0]?.delta.tool_calls ?? []) streamedArgs += t.function?.arguments ?? "";
    }
    expect(streamedArgs).toBe((call[0] as { function: { arguments: string } }).function.arguments);
    // The tool's result goes back in; auto may answer in text or call again, always in a valid shape.
    const follow = await client.chat.completions.create({
      model: "demo",
      messages: [...ask, one.choices[0]!.message, { role: "tool", tool_call_id: call[0]!.id, content: "12:00" }],
      tools,
      seed: 3,
    });
    const m = follow.choices[0]!;
    expect(follow.usage!.prompt_tokens).toBeGreaterThan(r.usage!.prompt_tokens); // the call and its result are in the prompt
    if (m.finish_reason === "tool_calls") expect(m.message.tool_calls!.length).toBeGreaterThan(0);
    else expect(typeof m.message.content).toBe("string"); // an answer, or the raw text when the context cut it
  });

  it("/v1/embeddings: Llama2.embed()'s vectors, bit for bit (base64), batched, and through OpenAI's client", async () => {
    const ref = await Llama2.load(await ensureDemoModel({ dir: path.join(os.tmpdir(), "llama2-native-test-home", "models") }), { device: "cpu", contextLength: 256 });
    try {
      const input = ["Once upon a time, a cat sat on the mat.", "The sun was hot"];
      const alone = await Promise.all(input.map((t) => ref.embed(t)));
      const r = await (await postJson(`${url}v1/embeddings`, { model: "demo", input, encoding_format: "base64" })).json();
      expect(r).toMatchObject({ object: "list", model: "demo" });
      const tokens = alone.reduce((a, e) => a + e.tokenCount, 0);
      expect(r.usage).toEqual({ prompt_tokens: tokens, total_tokens: tokens });
      r.data.forEach((d: { index: number; embedding: string }, i: number) => {
        expect(d.index).toBe(i);
        const b = Buffer.from(d.embedding, "base64");
        expect(new Float32Array(b.buffer, b.byteOffset, b.length / 4)).toEqual(alone[i]!.embedding);
      });
      // Floats, the extensions, token ids, and the SDK (its default base64 path).
      const last = await ref.embed(input[1]!, { pooling: "last", normalize: false });
      const f = await (await postJson(`${url}v1/embeddings`, { input: input[1], pooling: "last", normalize: false })).json();
      expect(f.data[0].embedding).toEqual(Array.from(last.embedding));
      const ids = ref.tokenize(input[0]!, { bos: true });
      const t = await (await postJson(`${url}v1/embeddings`, { input: [ids] })).json();
      expect(t.data[0].embedding).toEqual(Array.from(alone[0]!.embedding));
      const client = new OpenAI({ baseURL: `${url}v1`, apiKey: "unused", maxRetries: 0 });
      const sdk = await client.embeddings.create({ model: "demo", input, dimensions: ref.info.config.dim });
      sdk.data.forEach((d, i) => expect(d.embedding).toEqual(Array.from(alone[i]!.embedding)));
      // Longer than the context: a 400 naming the input.
      const long = Array.from({ length: 300 }, () => "cat").join(" ");
      const over = await postJson(`${url}v1/embeddings`, { input: ["a", long] });
      expect(over.status).toBe(400);
      expect((await over.json()).error).toMatchObject({ param: "input[1]", code: "context_length_exceeded" });
    } finally {
      await ref.dispose();
    }
  });

  it("refuses max_tokens beyond the real context", async () => {
    const res = await postJson(`${url}v1/chat/completions`, { messages, max_tokens: 256 });
    expect(res.status).toBe(400);
    expect((await res.json()).error).toMatchObject({ param: "max_tokens", code: "context_length_exceeded" });
  });

  it("a client that disconnects stops its generation", async () => {
    await new Promise<void>((resolve, reject) => {
      const req = http.request(`${url}v1/completions`, { method: "POST", headers: { "Content-Type": "application/json" } }, (res) => {
        res.once("data", () => {
          req.destroy();
          resolve();
        });
      });
      req.on("error", (e) => (e.message.includes("socket hang up") ? resolve() : reject(e)));
      req.end(JSON.stringify({ prompt: "Once", max_tokens: 250, stream: true }));
    });
    await waitFor(() => job.recentLogs(50).some((e) => / 499 stream /.test(e.msg)), 5000, "the 499 log line");
    const line = job.recentLogs(50).find((e) => / 499 stream /.test(e.msg))!.msg;
    expect(Number(/completion=(\d+)/.exec(line)![1])).toBeLessThan(250);
  });

  it("is cancelled from another process: the model is unloaded", async () => {
    const r = await cancelJob(root, job.id, { waitMs: 10_000 });
    expect(r.outcome).toBe("cancelled");
    expect((await done).exitCode).toBe(130);
    expect(job.recentLogs(5).map((e) => e.msg)).toContain("model unloaded");
  });
});
