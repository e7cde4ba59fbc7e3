// The HTTP server against the fake backend on a real loopback socket: OpenAI shapes (JSON and SSE),
// models/health/metrics/job routes, the chat page, concurrency and abort on client disconnect.
import { execFileSync } from "node:child_process";
import http from "node:http";
import { mkdtempSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startServer, type RunningServer } from "../lib/server/http.js";
import { echoReply, FakeBackend, postJson, readSse, streamedText, waitFor } from "./helpers/fake-backend.js";

let backend: FakeBackend;
let server: RunningServer;
let base: string;

beforeAll(async () => {
  backend = new FakeBackend({ delayMs: 1, deviceMemoryBytes: 123456, slowDelayMs: 20 });
  server = await startServer({
    backend,
    port: 0,
    job: { snapshot: () => ({ id: "job-1", state: "running" }), recentLogs: (n) => ["a", "b", "c"].slice(-n) },
  });
  base = server.url.replace(/\/$/, "");
});
afterAll(() => server.shutdown({ graceMs: 100 }));

const chatBody = { model: "anything", messages: [{ role: "system", content: "be nice" }, { role: "user", content: "hello there model" }] };
const expected = echoReply("hello there model").join(" ");

describe("POST /v1/chat/completions", () => {
  it("answers in OpenAI's chat.completion shape with usage and timings", async () => {
    const res = await postJson(`${base}/v1/chat/completions`, chatBody);
    expect(res.status).toBe(200);
    const j = await res.json();
    expect(j.object).toBe("chat.completion");
    expect(j.id).toMatch(/^chatcmpl-/);
    expect(j.model).toBe("fake-7b");
    expect(j.choices).toEqual([{ index: 0, message: { role: "assistant", content: expected }, logprobs: null, finish_reason: "stop" }]);
    const promptTokens = backend.chatPromptTokens(chatBody.messages as any);
    expect(j.usage).toEqual({ prompt_tokens: promptTokens, completion_tokens: echoReply("x y z").length, total_tokens: promptTokens + echoReply("x y z").length });
    expect(j.timings.ttft_ms).toBeGreaterThanOrEqual(0);
  });

  it("passes the sampling fields to the backend", async () => {
    const res = await postJson(`${base}/v1/chat/completions`, {
      ...chatBody, temperature: 0.5, top_p: 0.9, max_tokens: 7, seed: 42, presence_penalty: 0.5, frequency_penalty: -1,
      logit_bias: { "50": -100 }, stop: "zzz", user: "u1", some_unknown_field: { ignored: true },
    });
    expect(res.status).toBe(200);
    const call = backend.calls.at(-1)!;
    expect(call.kind).toBe("chat");
    expect(call.messages).toEqual(chatBody.messages);
    const { signal, ...opts } = call.opts;
    expect(signal).toBeInstanceOf(AbortSignal);
    expect(opts).toEqual({ temperature: 0.5, topP: 0.9, maxTokens: 7, seed: 42, presencePenalty: 0.5, frequencyPenalty: -1, logitBias: { 50: -100 }, stop: ["zzz"] });
  });

  it("accepts llama.cpp's top_k and min_p (0 = off); without them the library defaults apply", async () => {
    expect((await postJson(`${base}/v1/chat/completions`, { ...chatBody, top_k: 0, min_p: 0, top_p: 1 })).status).toBe(200);
    expect(backend.calls.at(-1)!.opts).toMatchObject({ topK: 0, minP: 0, topP: 1 });
    expect((await postJson(`${base}/v1/completions`, { prompt: "a b", top_k: 5, min_p: 0.2 })).status).toBe(200);
    expect(backend.calls.at(-1)!.opts).toMatchObject({ topK: 5, minP: 0.2 });
    await postJson(`${base}/v1/completions`, { prompt: "a b" });
    const { signal: _signal, ...opts } = backend.calls.at(-1)!.opts;
    expect(Object.keys(opts)).toEqual(["maxTokens"]);
  });

  it("defaults max_tokens to the context left after the prompt", async () => {
    await postJson(`${base}/v1/chat/completions`, chatBody);
    expect(backend.calls.at(-1)!.opts.maxTokens).toBe(512 - backend.chatPromptTokens(chatBody.messages as any));
  });

  it("reports finish_reason length at max_tokens and stop at a stop sequence", async () => {
    const a = await (await postJson(`${base}/v1/chat/completions`, { ...chatBody, max_tokens: 3 })).json();
    expect(a.choices[0].finish_reason).toBe("length");
    expect(a.usage.completion_tokens).toBe(3);
    expect(a.choices[0].message.content).toBe(expected.split(" ").slice(0, 3).join(" "));
    const b = await (await postJson(`${base}/v1/chat/completions`, { ...chatBody, stop: ["there"] })).json();
    expect(b.choices[0].finish_reason).toBe("stop");
    expect(b.choices[0].message.content).toBe("Echo: hello ");
  });

  it("streams chat.completion.chunk events ending with [DONE]", async () => {
    const res = await postJson(`${base}/v1/chat/completions`, { ...chatBody, stream: true, stream_options: { include_usage: true } });
    expect(res.headers.get("content-type")).toMatch(/^text\/event-stream/);
    const sse = await readSse(res);
    expect(sse.done).toBe(true);
    expect(sse.events.every((e) => e.object === "chat.completion.chunk" && e.id === sse.events[0].id)).toBe(true);
    expect(sse.events[0].choices[0].delta).toEqual({ role: "assistant", content: "" });
    expect(streamedText(sse.events)).toBe(expected);
    const finish = sse.events.at(-2);
    expect(finish.choices[0]).toMatchObject({ delta: {}, finish_reason: "stop" });
    expect(finish.timings.tokens_per_second).toBeGreaterThan(0);
    const usage = sse.events.at(-1);
    expect(usage.choices).toEqual([]);
    expect(usage.usage.completion_tokens).toBe(echoReply("x y z").length);
    // every content chunk has a null finish_reason; with include_usage every chunk before the last has usage: null
    expect(sse.events.slice(0, -2).every((e) => e.choices[0].finish_reason === null)).toBe(true);
    expect(sse.events.slice(0, -1).every((e) => "usage" in e && e.usage === null)).toBe(true);
  });

  it("accepts content as an array of text parts and the developer role", async () => {
    const res = await postJson(`${base}/v1/chat/completions`, {
      messages: [{ role: "developer", content: "sys" }, { role: "user", content: [{ type: "text", text: "hello " }, { type: "text", text: "parts" }] }],
    });
    expect(res.status).toBe(200);
    expect(backend.calls.at(-1)!.messages).toEqual([{ role: "system", content: "sys" }, { role: "user", content: "hello parts" }]);
  });
});

describe("POST /v1/completions", () => {
  it("answers in text_completion shape", async () => {
    const res = await postJson(`${base}/v1/completions`, { prompt: "once upon a time", max_tokens: 4 });
    const j = await res.json();
    expect(res.status).toBe(200);
    expect(j.object).toBe("text_completion");
    expect(j.choices[0]).toEqual({ index: 0, text: echoReply("once upon a time").slice(0, 4).join(" "), logprobs: null, finish_reason: "length" });
    expect(j.usage.prompt_tokens).toBe(backend.tokenize("once upon a time").length);
    expect(backend.calls.at(-1)!.kind).toBe("generate");
  });

  it("streams text_completion chunks", async () => {
    const sse = await readSse(await postJson(`${base}/v1/completions`, { prompt: ["once upon a time"], stream: true }));
    expect(sse.done).toBe(true);
    expect(sse.events.every((e) => e.object === "text_completion")).toBe(true);
    expect(streamedText(sse.events)).toBe(echoReply("once upon a time").join(" "));
    expect(sse.events.at(-1).choices[0].finish_reason).toBe("stop");
  });

  it("takes token ids and batches of prompts: choice index = prompt x n + k, usage counts each prompt once", async () => {
    const before = backend.calls.length;
    const prompts = ["one two three", [5, 6, 7, 8], "four five"];
    const res = await postJson(`${base}/v1/completions`, { prompt: prompts, n: 2, max_tokens: 3, seed: 7 });
    const j = await res.json();
    expect(res.status).toBe(200);
    const calls = backend.calls.slice(before);
    expect(calls).toHaveLength(6);
    // The ids reach the backend as ids (the fake reads them as words "t<id>").
    expect(calls.map((c) => c.input)).toEqual(["one two three", "one two three", "t5 t6 t7 t8", "t5 t6 t7 t8", "four five", "four five"]);
    expect(calls.map((c) => c.opts.seed)).toEqual([7, 8, 7, 8, 7, 8]);
    expect(j.choices.map((c: any) => c.index)).toEqual([0, 1, 2, 3, 4, 5]);
    const inputs = ["one two three", "t5 t6 t7 t8", "four five"];
    j.choices.forEach((c: any, i: number) => expect(c.text).toBe(echoReply(inputs[Math.floor(i / 2)]!).slice(0, 3).join(" ")));
    expect(j.usage.prompt_tokens).toBe(inputs.reduce((a, p) => a + backend.tokenize(p).length, 0));
    expect(j.usage.completion_tokens).toBe(18);
    // Streamed: every choice's chunks carry its index, and each ends once.
    const sse = await readSse(await postJson(`${base}/v1/completions`, { prompt: [[9, 10], "six"], max_tokens: 2, stream: true }));
    expect(sse.done).toBe(true);
    for (const index of [0, 1]) {
      const mine = sse.events.filter((e) => e.choices[0]?.index === index);
      expect(mine.map((e) => e.choices[0].text).join("")).toBe(echoReply(["t9 t10", "six"][index]!).slice(0, 2).join(" "));
      expect(mine.filter((e) => e.choices[0].finish_reason !== null)).toHaveLength(1);
    }
  });
});

describe("other routes", () => {
  it("GET /v1/models lists the model with its device", async () => {
    const j = await (await fetch(`${base}/v1/models`)).json();
    expect(j.object).toBe("list");
    expect(j.data).toHaveLength(1);
    expect(j.data[0]).toMatchObject({ id: "fake-7b", object: "model", owned_by: "llama2-native", llama2: { device: "cuda", device_name: "Fake GPU", context_length: 512 } });
  });

  it("GET /v1/models/{id} retrieves the model; other ids are 404 model_not_found", async () => {
    const res = await fetch(`${base}/v1/models/fake-7b`);
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({ id: "fake-7b", object: "model", owned_by: "llama2-native", llama2: { context_length: 512 } });
    expect((await fetch(`${base}/v1/models/fake-7b`, { method: "HEAD" })).status).toBe(200);
    const other = await fetch(`${base}/v1/models/gpt-4o`);
    expect(other.status).toBe(404);
    expect((await other.json()).error).toMatchObject({ code: "model_not_found", param: "model" });
    expect((await fetch(`${base}/v1/models/fake-7b`, { method: "POST" })).status).toBe(405);
  });

  it("GET /health", async () => {
    const res = await fetch(`${base}/health`);
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ status: "ok", auth_required: false });
  });

  it("GET /job and /job/logs", async () => {
    expect(await (await fetch(`${base}/job`)).json()).toEqual({ id: "job-1", state: "running" });
    expect(await (await fetch(`${base}/job/logs?n=2`)).json()).toEqual({ lines: ["b", "c"] });
    const bad = await fetch(`${base}/job/logs?n=abc`);
    expect(bad.status).toBe(400);
    expect((await bad.json()).error.param).toBe("n");
  });

  it("GET /metrics exposes counters, histograms, queue depth and GPU memory", async () => {
    const before = server.metrics.generatedTokens.get();
    await postJson(`${base}/v1/chat/completions`, { ...chatBody, max_tokens: 2 });
    await fetch(`${base}/nope`);
    const res = await fetch(`${base}/metrics`);
    expect(res.headers.get("content-type")).toMatch(/^text\/plain; version=0.0.4/);
    const text = await res.text();
    const value = (re: RegExp): number => Number(re.exec(text)?.[1]);
    expect(value(/^llama2_generated_tokens_total (\d+)$/m)).toBe(before + 2);
    expect(value(/^llama2_http_requests_total\{endpoint="\/v1\/chat\/completions",status="200"\} (\d+)$/m)).toBeGreaterThanOrEqual(1);
    expect(value(/^llama2_http_requests_total\{endpoint="other",status="404"\} (\d+)$/m)).toBe(1);
    expect(value(/^llama2_http_requests_total\{endpoint="\/v1\/models\/\{id\}",status="404"\} (\d+)$/m)).toBe(1);
    expect(text).toMatch(/^llama2_request_duration_seconds_bucket\{endpoint="\/v1\/chat\/completions",le="\+Inf"\} \d+$/m);
    expect(text).toMatch(/^llama2_time_to_first_token_seconds_count \d+$/m);
    expect(text).toMatch(/^llama2_prompt_tokens_total \d+$/m);
    expect(value(/^llama2_queue_depth (\d+)$/m)).toBe(0);
    expect(value(/^llama2_gpu_memory_bytes (\d+)$/m)).toBe(123456);
    expect(text).toMatch(/^# TYPE llama2_request_duration_seconds histogram$/m);
  });

  it("serves the chat page from a fixed map, with a CSP, and nothing else", async () => {
    const page = await fetch(`${base}/`);
    expect(page.status).toBe(200);
    expect(page.headers.get("content-type")).toMatch(/^text\/html/);
    expect(page.headers.get("content-security-policy")).toMatch(/script-src 'self'/);
    const html = await page.text();
    expect(html).toContain('<script type="module" src="/app.js">');
    for (const p of ["/app.js", "/markdown.js", "/style.css", "/favicon.svg", "/index.html"]) expect((await fetch(`${base}${p}`)).status).toBe(200);
    // Raw paths, so fetch does not normalise them away.
    for (const p of ["/../package.json", "/%2e%2e/package.json", "/app.js/..", "/lib/server/http.ts", "//app.js"]) {
      const status = await rawGet(p);
      expect(status, p).toBe(404);
    }
  });

  it("the page scripts are valid JavaScript", async () => {
    for (const name of ["app", "markdown"]) {
      const js = await (await fetch(`${base}/${name}.js`)).text();
      const file = path.join(mkdtempSync(path.join(os.tmpdir(), "llama2-page-")), `${name}.mjs`);
      writeFileSync(file, js);
      execFileSync(process.execPath, ["--check", file]); // throws on a syntax error
    }
  });

  it("every element id the page script looks up exists in the HTML, once", async () => {
    const js = await (await fetch(`${base}/app.js`)).text();
    const html = await (await fetch(`${base}/`)).text();
    const used = [...js.matchAll(/\$\("([\w-]+)"\)/g)].map((m) => m[1]!);
    expect(used.length).toBeGreaterThan(15);
    for (const id of new Set(used)) expect(html.match(new RegExp(`id="${id}"`, "g"))?.length, id).toBe(1);
  });
});

function rawGet(p: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: "127.0.0.1", port: server.port, path: p, method: "GET" }, (res) => {
      res.resume();
      resolve(res.statusCode!);
    });
    req.on("error", reject);
    req.end();
  });
}

describe("concurrency and disconnects", () => {
  it("runs concurrent requests side by side (the server does not serialise them)", async () => {
    backend.maxActive = 0;
    const results = await Promise.all(Array.from({ length: 6 }, (_, i) => postJson(`${base}/v1/chat/completions`, { messages: [{ role: "user", content: `client ${i}` }] }).then((r) => r.json())));
    expect(results.map((r) => r.choices[0].message.content)).toEqual(Array.from({ length: 6 }, (_, i) => echoReply(`client ${i}`).join(" ")));
    expect(backend.maxActive).toBeGreaterThanOrEqual(4);
  });

  it("a client that disconnects mid-stream aborts its generation", async () => {
    const n = backend.calls.length;
    const body = JSON.stringify({ messages: [{ role: "user", content: "slow story" }], stream: true });
    await new Promise<void>((resolve, reject) => {
      const req = http.request(
        { host: "127.0.0.1", port: server.port, path: "/v1/chat/completions", method: "POST", headers: { "Content-Type": "application/json" } },
        (res) => {
          let seen = "";
          res.on("data", (d: Buffer) => {
            seen += d.toString();
            // Some tokens have arrived: hang up.
            if ((seen.match(/"content":"[^"]+"/g) ?? []).length >= 2) {
              req.destroy();
              resolve();
            }
          });
        },
      );
      req.on("error", (e) => (e.message.includes("socket hang up") ? resolve() : reject(e)));
      req.end(body);
    });
    const call = backend.calls[n]!;
    await waitFor(() => call.finished, 3000, "the generation to end");
    expect(call.aborted).toBe(true);
    expect(call.tokens).toBeLessThan(100); // the slow reply has 10000 tokens
    await waitFor(() => server.inFlight === 0, 2000, "no requests in flight");
    const metrics = await (await fetch(`${base}/metrics`)).text();
    expect(metrics).toMatch(/^llama2_http_requests_total\{endpoint="\/v1\/chat\/completions",status="499"\} 1$/m);
    expect((await fetch(`${base}/health`)).status).toBe(200);
  });

  it("also handles a backend that throws ERR_ABORTED on abort", async () => {
    const b = new FakeBackend({ abortMode: "throw", slowDelayMs: 20 });
    const s = await startServer({ backend: b, port: 0 });
    try {
      const ctl = new AbortController();
      const res = await fetch(`${s.url}v1/chat/completions`, {
        method: "POST", headers: { "Content-Type": "application/json" }, signal: ctl.signal,
        body: JSON.stringify({ messages: [{ role: "user", content: "slow" }], stream: true }),
      });
      const reader = res.body!.getReader();
      await reader.read();
      ctl.abort();
      await waitFor(() => b.calls[0]!.finished, 3000, "abort");
      expect(b.calls[0]!.aborted).toBe(true);
      await waitFor(() => s.inFlight === 0, 2000, "no requests in flight");
    } finally {
      await s.shutdown({ graceMs: 100 });
    }
  });

  it("a backend error mid-stream becomes an error event, and a 500 without streaming", async () => {
    const sse = await readSse(await postJson(`${base}/v1/chat/completions`, { messages: [{ role: "user", content: "FAIL now" }], stream: true }));
    expect(sse.done).toBe(true);
    expect(sse.events.at(-1).error).toMatchObject({ type: "server_error", message: expect.stringContaining("simulated device failure") });
    const res = await postJson(`${base}/v1/chat/completions`, { messages: [{ role: "user", content: "FAIL now" }] });
    expect(res.status).toBe(500);
    expect((await res.json()).error.message).toContain("ERR_CUDA");
    // With n choices one failure fails the request, and no choice is left generating.
    const before = backend.calls.length;
    const multi = await postJson(`${base}/v1/chat/completions`, { messages: [{ role: "user", content: "FAIL now" }], n: 3 });
    expect(multi.status).toBe(500);
    expect(backend.calls.length - before).toBe(3);
    expect(backend.calls.slice(before).every((c) => c.finished)).toBe(true);
  });
});
