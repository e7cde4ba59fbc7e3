// OpenAI's official Node client (`openai`, a dev dependency) against our server: what users of the
// SDK (and of tools built on it) see. Chat and text completions, streamed and not, embeddings, models, errors as
// the SDK's typed errors, cancellation, and the API key. The fake backend keeps it fast; test/server.test.ts
// checks the wire format field by field.
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startServer, type RunningServer } from "../lib/server/http.js";
import { echoReply, fakeEmbedding, FakeBackend, waitFor } from "./helpers/fake-backend.js";

let backend: FakeBackend;
let server: RunningServer;
let keyed: RunningServer;
let client: OpenAI;

beforeAll(async () => {
  backend = new FakeBackend({ delayMs: 1, slowDelayMs: 20, contextLength: 128 });
  server = await startServer({ backend, port: 0 });
  keyed = await startServer({ backend, port: 0, apiKey: "sk-test-123" });
  client = new OpenAI({ baseURL: `${server.url.replace(/\/$/, "")}/v1`, apiKey: "unused", maxRetries: 0 });
});
afterAll(async () => {
  await server.shutdown({ graceMs: 100 });
  await keyed.shutdown({ graceMs: 100 });
});

const messages: OpenAI.Chat.ChatCompletionMessageParam[] = [
  { role: "system", content: "be nice" },
  { role: "user", content: "hello there model" },
];

describe("the openai client", () => {
  it("chat.completions.create: the reply, finish reason and usage", async () => {
    const r = await client.chat.completions.create({ model: "llama2", messages, temperature: 0, max_tokens: 50 });
    expect(r.object).toBe("chat.completion");
    expect(r.choices[0].message).toMatchObject({ role: "assistant", content: echoReply("hello there model").join(" ") });
    expect(r.choices[0].finish_reason).toBe("stop");
    expect(r.usage!.prompt_tokens).toBe(backend.chatPromptTokens(messages as any));
    expect(r.usage!.total_tokens).toBe(r.usage!.prompt_tokens + r.usage!.completion_tokens);
  });

  it("chat.completions.create with stream: deltas that add up to the reply, then usage", async () => {
    const stream = await client.chat.completions.create({ model: "llama2", messages, stream: true, stream_options: { include_usage: true } });
    let text = "";
    let finish: string | null = null;
    let usage: OpenAI.CompletionUsage | undefined;
    for await (const chunk of stream) {
      if (chunk.usage) usage = chunk.usage;
      for (const c of chunk.choices) {
        text += c.delta.content ?? "";
        finish = c.finish_reason ?? finish;
      }
    }
    expect(text).toBe(echoReply("hello there model").join(" "));
    expect(finish).toBe("stop");
    expect(usage!.completion_tokens).toBe(echoReply("hello there model").length);
  });

  it("the stream helper (runner API) assembles the final message", async () => {
    const runner = client.chat.completions.stream({ model: "llama2", messages, max_tokens: 2 });
    const done = await runner.finalChatCompletion();
    expect(done.choices[0].message.content).toBe(echoReply("hello there model").slice(0, 2).join(" "));
    expect(done.choices[0].finish_reason).toBe("length");
  });

  it("completions.create, streamed and not", async () => {
    const r = await client.completions.create({ model: "llama2", prompt: "once upon a time", max_tokens: 3 });
    expect(r.choices[0].text).toBe(echoReply("once upon a time").slice(0, 3).join(" "));
    expect(r.choices[0].finish_reason).toBe("length");
    let text = "";
    for await (const c of await client.completions.create({ model: "llama2", prompt: "once upon a time", stream: true })) text += c.choices[0]?.text ?? "";
    expect(text).toBe(echoReply("once upon a time").join(" "));
  });

  it("embeddings.create: the fake's vectors, in order, through the SDK's default base64 and with float", async () => {
    const input = ["the first text", "a second one", "third"];
    const expected = input.map((t) => Array.from(fakeEmbedding(backend.tokenize(t), backend.info.config.dim)));
    const tokens = input.reduce((a, t) => a + backend.tokenize(t).length, 0);
    // Without encoding_format the SDK asks for base64 and decodes it itself.
    const r = await client.embeddings.create({ model: "llama2", input });
    expect(r.object).toBe("list");
    expect(r.model).toBe("fake-7b");
    expect(r.data.map((d) => d.index)).toEqual([0, 1, 2]);
    expect(r.data.map((d) => d.embedding)).toEqual(expected);
    expect(r.usage).toEqual({ prompt_tokens: tokens, total_tokens: tokens });
    const f = await client.embeddings.create({ model: "llama2", input, encoding_format: "float" });
    expect(f.data.map((d) => d.embedding)).toEqual(expected);
    const ids = await client.embeddings.create({ model: "llama2", input: [[1, 5, 6], [7]], dimensions: backend.info.config.dim });
    expect(ids.data.map((d) => d.embedding)).toEqual([[1, 5, 6], [7]].map((t) => Array.from(fakeEmbedding(t, backend.info.config.dim))));
  });

  it("embeddings.create errors: BadRequestError naming the input or the field", async () => {
    const long = Array.from({ length: 130 }, (_, i) => `w${i}`).join(" ");
    const ctx = await client.embeddings.create({ model: "llama2", input: ["short", long] }).catch((e) => e);
    expect(ctx).toBeInstanceOf(OpenAI.BadRequestError);
    expect(ctx).toMatchObject({ status: 400, code: "context_length_exceeded", param: "input[1]" });
    const dims = await client.embeddings.create({ model: "llama2", input: "a", dimensions: 256 }).catch((e) => e);
    expect(dims).toBeInstanceOf(OpenAI.BadRequestError);
    expect(dims.param).toBe("dimensions");
  });

  it("models.list", async () => {
    const ids: string[] = [];
    for await (const m of client.models.list()) ids.push(m.id);
    expect(ids).toEqual(["fake-7b"]);
  });

  it("models.retrieve, and NotFoundError for another model", async () => {
    expect(await client.models.retrieve("fake-7b")).toMatchObject({ id: "fake-7b", object: "model", owned_by: "llama2-native" });
    const err = await client.models.retrieve("gpt-4o").catch((e) => e);
    expect(err).toBeInstanceOf(OpenAI.NotFoundError);
    expect(err.code).toBe("model_not_found");
  });

  it("features the server cannot honour are a BadRequestError, not silently dropped", async () => {
    const err = await client.chat.completions.create({ model: "llama2", messages, top_logprobs: 2 }).catch((e) => e);
    expect(err).toBeInstanceOf(OpenAI.BadRequestError);
    expect(err.param).toBe("top_logprobs"); // without logprobs: true
    const fns = await client.chat.completions.create({ model: "llama2", messages, functions: [{ name: "f", parameters: {} }] }).catch((e) => e);
    expect(fns.param).toBe("functions"); // the deprecated API; tools replace it
  });

  it("a bad request becomes the SDK's BadRequestError naming the field", async () => {
    const err = await client.chat.completions.create({ model: "llama2", messages, temperature: 5 }).catch((e) => e);
    expect(err).toBeInstanceOf(OpenAI.BadRequestError);
    expect(err.status).toBe(400);
    expect(err.param).toBe("temperature");
    expect(err.message).toContain("temperature");
    const ctx = await client.chat.completions.create({ model: "llama2", messages, max_tokens: 500 }).catch((e) => e);
    expect(ctx).toBeInstanceOf(OpenAI.BadRequestError);
    expect(ctx.code).toBe("context_length_exceeded");
  });

  it("aborting a stream with an AbortSignal stops the generation on the server", async () => {
    const ac = new AbortController();
    const stream = await client.chat.completions.create(
      { model: "llama2", messages: [{ role: "user", content: "slow reply please" }], stream: true },
      { signal: ac.signal },
    );
    let chunks = 0;
    // The SDK ends the iteration (this version without an error) once its signal aborts.
    await (async () => {
      for await (const _ of stream) if (++chunks === 3) ac.abort();
    })().catch(() => {});
    expect(chunks).toBeLessThan(10);
    const call = backend.calls.at(-1)!;
    expect(call.input).toContain("slow reply please");
    await waitFor(() => call.aborted, 5000, "the server to abort the generation");
    expect(call.tokens).toBeLessThan(20);
  });

  it("the API key: AuthenticationError without it, answers with it", async () => {
    const base = `${keyed.url.replace(/\/$/, "")}/v1`;
    const wrong = new OpenAI({ baseURL: base, apiKey: "sk-wrong", maxRetries: 0 });
    await expect(wrong.chat.completions.create({ model: "llama2", messages })).rejects.toBeInstanceOf(OpenAI.AuthenticationError);
    const right = new OpenAI({ baseURL: base, apiKey: "sk-test-123", maxRetries: 0 });
    const r = await right.chat.completions.create({ model: "llama2", messages });
    expect(r.choices[0].message.content).toBe(echoReply("hello there model").join(" "));
  });
});
