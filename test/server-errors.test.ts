// Bad input and security: every kind of invalid request gets a 4xx in OpenAI's error shape naming the
// field; limits (413), auth (401), bind refusal, Host check, CORS. The server must survive all of it.
import http from "node:http";
import net from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { InvalidArgumentError } from "../lib/errors.js";
import { startServer, type RunningServer } from "../lib/server/http.js";
import { FakeBackend, postJson } from "./helpers/fake-backend.js";

let server: RunningServer;
let base: string;
const backend = new FakeBackend({ contextLength: 64 });

beforeAll(async () => {
  server = await startServer({ backend, port: 0, bodyLimit: 64 * 1024 });
  base = server.url.replace(/\/$/, "");
});
afterAll(() => server.shutdown({ graceMs: 100 }));

const user = [{ role: "user", content: "hi" }];

async function expectError(res: Response, status: number, param: string | null, code?: string): Promise<any> {
  const j = await res.json();
  expect(res.status).toBe(status);
  expect(Object.keys(j.error).sort()).toEqual(["code", "message", "param", "type"]);
  expect(typeof j.error.message).toBe("string");
  expect(j.error.param).toBe(param);
  if (code) expect(j.error.code).toBe(code);
  return j.error;
}

describe("400 for each kind of bad input", () => {
  const cases: [string, string, unknown, string][] = [
    ["chat", "body is an array", [1, 2], "body"],
    ["chat", "missing messages", { model: "x" }, "messages"],
    ["chat", "messages not an array", { messages: "hi" }, "messages"],
    ["chat", "empty messages", { messages: [] }, "messages"],
    ["chat", "message not an object", { messages: ["hi"] }, "messages[0]"],
    ["chat", "bad role", { messages: [{ role: "robot", content: "x" }] }, "messages[0].role"],
    ["chat", "missing role", { messages: [{ content: "x" }] }, "messages[0].role"],
    ["chat", "content wrong type", { messages: [{ role: "user", content: 42 }] }, "messages[0].content"],
    ["chat", "image content part", { messages: [{ role: "user", content: [{ type: "image_url", image_url: "x" }] }] }, "messages[0].content[0]"],
    ["chat", "no user message", { messages: [{ role: "system", content: "x" }] }, "messages"],
    ["chat", "temperature wrong type", { messages: user, temperature: "hot" }, "temperature"],
    ["chat", "temperature above 2", { messages: user, temperature: 2.5 }, "temperature"],
    ["chat", "temperature negative", { messages: user, temperature: -0.1 }, "temperature"],
    ["chat", "top_p 0", { messages: user, top_p: 0 }, "top_p"],
    ["chat", "top_p above 1", { messages: user, top_p: 1.01 }, "top_p"],
    ["chat", "max_tokens 0", { messages: user, max_tokens: 0 }, "max_tokens"],
    ["chat", "max_tokens fractional", { messages: user, max_tokens: 1.5 }, "max_tokens"],
    ["chat", "max_tokens string", { messages: user, max_tokens: "10" }, "max_tokens"],
    ["chat", "stop not a string", { messages: user, stop: 5 }, "stop"],
    ["chat", "stop item empty", { messages: user, stop: ["a", ""] }, "stop[1]"],
    ["chat", "too many stops", { messages: user, stop: Array.from({ length: 17 }, (_, i) => `s${i}`) }, "stop"],
    ["chat", "stream not boolean", { messages: user, stream: "yes" }, "stream"],
    ["chat", "stream_options not object", { messages: user, stream: true, stream_options: 1 }, "stream_options"],
    ["chat", "seed negative", { messages: user, seed: -1 }, "seed"],
    ["chat", "presence_penalty out of range", { messages: user, presence_penalty: 3 }, "presence_penalty"],
    ["chat", "frequency_penalty wrong type", { messages: user, frequency_penalty: null, presence_penalty: [] }, "presence_penalty"],
    ["chat", "logit_bias not an object", { messages: user, logit_bias: [1] }, "logit_bias"],
    ["chat", "logit_bias bad token id", { messages: user, logit_bias: { abc: 1 } }, "logit_bias.abc"],
    ["chat", "logit_bias token beyond vocab", { messages: user, logit_bias: { "99999": 1 } }, "logit_bias.99999"],
    ["chat", "logit_bias value out of range", { messages: user, logit_bias: { "5": 101 } }, "logit_bias.5"],
    ["chat", "n beyond 16", { messages: user, n: 17 }, "n"],
    ["chat", "user not a string", { messages: user, user: 7 }, "user"],
    ["chat", "model not a string", { messages: user, model: 7 }, "model"],
    ["completions", "missing prompt", { max_tokens: 3 }, "prompt"],
    ["completions", "prompt an object", { prompt: { text: "a" } }, "prompt"],
    ["completions", "prompt an empty array", { prompt: [] }, "prompt"],
    ["completions", "token id beyond the vocabulary", { prompt: [1, 2, 32000] }, "prompt[2]"],
    ["completions", "token id fractional", { prompt: [1, 2.5] }, "prompt[1]"],
    ["completions", "token array mixing a string", { prompt: [1, "a"] }, "prompt[1]"],
    ["completions", "batch item a number in strings", { prompt: ["a", 5] }, "prompt[1]"],
    ["completions", "batch item an empty token array", { prompt: [[1, 2], []] }, "prompt[1]"],
    ["completions", "batch item with a bad id", { prompt: [[1, 2], [3, -1]] }, "prompt[1][1]"],
    ["completions", "batch over 64 prompts", { prompt: Array.from({ length: 65 }, () => "a") }, "prompt"],
    ["completions", "prompts x n over 64 choices", { prompt: Array.from({ length: 9 }, () => "a"), n: 8 }, "n"],
    ["completions", "n not an integer", { prompt: "a", n: 1.5 }, "n"],
    ["completions", "echo not a boolean", { prompt: "a", echo: "yes" }, "echo"],
    ["completions", "max_tokens 0 without echo", { prompt: "a", max_tokens: 0 }, "max_tokens"],
    ["completions", "max_tokens negative with echo", { prompt: "a", max_tokens: -1, echo: true }, "max_tokens"],
    ["completions", "logprobs beyond 5", { prompt: "a", logprobs: 6 }, "logprobs"],
    ["completions", "suffix on a model not trained for infilling", { prompt: "a", suffix: "zzz" }, "suffix"],
    ["completions", "suffix not a string", { prompt: "a", suffix: ["zzz"] }, "suffix"],
    ["chat", "logprobs not a boolean", { messages: user, logprobs: 1 }, "logprobs"],
    ["chat", "top_logprobs without logprobs", { messages: user, top_logprobs: 3 }, "top_logprobs"],
    ["chat", "top_logprobs beyond 20", { messages: user, logprobs: true, top_logprobs: 21 }, "top_logprobs"],
    ["chat", "tools bad name", { messages: user, tools: [{ type: "function", function: { name: "a b" } }] }, "tools[0].function.name"],
    ["chat", "tools bad parameters", { messages: user, tools: [{ type: "function", function: { name: "f", parameters: { type: "object", properties: { q: { type: "string", pattern: "x" } } } } }] }, "tools[0].function.parameters.properties.q.pattern"],
    ["chat", "tool_choice names no tool", { messages: user, tools: [{ type: "function", function: { name: "f" } }], tool_choice: { type: "function", function: { name: "g" } } }, "tool_choice.function.name"],
    ["chat", "tool call arguments not JSON", { messages: [...user, { role: "assistant", content: null, tool_calls: [{ id: "1", type: "function", function: { name: "f", arguments: "{" } }] }, { role: "tool", tool_call_id: "1", content: "x" }] }, "messages[1].tool_calls[0].function.arguments"],
    ["chat", "functions", { messages: user, functions: [{ name: "f" }] }, "functions"],
    ["chat", "tool_choice without tools", { messages: user, tool_choice: "auto" }, "tool_choice"],
    ["chat", "response_format unknown type", { messages: user, response_format: { type: "xml" } }, "response_format.type"],
    ["chat", "response_format json_schema without schema", { messages: user, response_format: { type: "json_schema", json_schema: { name: "x" } } }, "response_format.json_schema.schema"],
    [
      "chat",
      "response_format schema keyword not supported",
      { messages: user, response_format: { type: "json_schema", json_schema: { name: "x", schema: { type: "object", properties: { id: { type: "string", pattern: "^a" } } } } } },
      "response_format.json_schema.schema.properties.id.pattern",
    ],
    ["completions", "response_format schema with a bad type", { prompt: "a", response_format: { type: "json_object", schema: { type: "strin" } } }, "response_format.schema.type"],
    ["chat", "response_format not an object", { messages: user, response_format: "text" }, "response_format"],
    ["chat", "grammar not a string", { messages: user, grammar: 5 }, "grammar"],
    ["completions", "grammar without root", { prompt: "a", grammar: 'answer ::= "x"' }, "grammar"],
    ["completions", "grammar left-recursive", { prompt: "a", grammar: 'root ::= root "x" | "y"' }, "grammar"],
    ["chat", "grammar with response_format", { messages: user, grammar: 'root ::= "x"', response_format: { type: "json_object" } }, "grammar"],
    ["chat", "grammar with tools", { messages: user, grammar: 'root ::= "x"', tools: [{ type: "function", function: { name: "f" } }] }, "grammar"],
    ["chat", "top_k negative", { messages: user, top_k: -1 }, "top_k"],
    ["chat", "top_k fractional", { messages: user, top_k: 1.5 }, "top_k"],
    ["completions", "min_p 1", { prompt: "a", min_p: 1 }, "min_p"],
    ["completions", "lookup beyond 32", { prompt: "a", lookup: 33 }, "lookup"],
    ["chat", "context_shift not a boolean", { messages: user, context_shift: "yes" }, "context_shift"],
    ["chat", "lookup fractional", { messages: user, lookup: 1.5 }, "lookup"],
    ["completions", "min_p wrong type", { prompt: "a", min_p: "0.1" }, "min_p"],
    ["chat", "max_completion_tokens string", { messages: user, max_completion_tokens: "10" }, "max_completion_tokens"],
    ["chat", "max_completion_tokens bad with max_tokens set", { messages: user, max_tokens: 2, max_completion_tokens: "x" }, "max_completion_tokens"],
  ];
  it.each(cases)("%s: %s", async (endpoint, _what, body, param) => {
    const url = `${base}/v1/${endpoint === "chat" ? "chat/completions" : "completions"}`;
    const err = await expectError(await postJson(url, body), 400, param);
    expect(err.type).toBe("invalid_request_error");
    expect(err.message).toContain(param);
  });

  it("max_tokens beyond the context left by the prompt", async () => {
    const err = await expectError(await postJson(`${base}/v1/chat/completions`, { messages: user, max_tokens: 60 }), 400, "max_tokens", "context_length_exceeded");
    expect(err.message).toMatch(/context of 64 tokens/);
    // The largest allowed value works.
    const room = 64 - backend.chatPromptTokens(user as any);
    expect((await postJson(`${base}/v1/chat/completions`, { messages: user, max_tokens: room })).status).toBe(200);
  });

  it("a prompt that fills the context", async () => {
    const prompt = Array.from({ length: 70 }, (_, i) => `w${i}`).join(" ");
    await expectError(await postJson(`${base}/v1/completions`, { prompt }), 400, "prompt", "context_length_exceeded");
    // One prompt of a batch: the request fails before anything runs, naming that prompt.
    await expectError(await postJson(`${base}/v1/completions`, { prompt: ["a b", prompt] }), 400, "prompt[1]", "context_length_exceeded");
    await expectError(await postJson(`${base}/v1/completions`, { prompt: [[3], [1, 2]], max_tokens: 63 }), 400, "max_tokens", "context_length_exceeded");
  });

  it("echo needs the model's tokenizer (the fake has none)", async () => {
    const err = await expectError(await postJson(`${base}/v1/completions`, { prompt: "a", echo: true, max_tokens: 2 }), 400, "echo", "invalid_value");
    expect(err.message).toMatch(/tokenizer/);
  });

  it("max_completion_tokens beyond the context is reported under its own name", async () => {
    const err = await expectError(await postJson(`${base}/v1/chat/completions`, { messages: user, max_completion_tokens: 60 }), 400, "max_completion_tokens", "context_length_exceeded");
    expect(err.message).toMatch(/^max_completion_tokens: 60 \+/);
  });

  it("a deeply nested value in a typed field is a 400 naming the field, not a stack overflow", async () => {
    const deep = "[".repeat(20_000) + "]".repeat(20_000);
    await expectError(await postJson(`${base}/v1/completions`, `{"prompt":"a","temperature":${deep}}`), 400, "temperature", "invalid_value");
    await expectError(await postJson(`${base}/v1/chat/completions`, `{"messages":[{"role":${deep},"content":"x"}]}`), 400, "messages[0].role");
    await expectError(await postJson(`${base}/v1/chat/completions`, `{"messages":[{"role":"user","content":"x"}],"stream":${deep}}`), 400, "stream");
  });

  it("invalid JSON", async () => {
    const err = await expectError(await postJson(`${base}/v1/chat/completions`, '{"messages": [}'), 400, null, "invalid_json");
    expect(err.message).toMatch(/invalid JSON/);
  });

  it("empty body", async () => {
    await expectError(await postJson(`${base}/v1/chat/completions`, ""), 400, null, "invalid_json");
  });

  it("unknown fields are ignored, and so are the unsupported features' off values", async () => {
    expect((await postJson(`${base}/v1/chat/completions`, { messages: user, max_tokens: 2, foo: 1, metadata: {} })).status).toBe(200);
    const off = { logprobs: false, top_logprobs: null, tools: null, tool_choice: null, response_format: { type: "text" } };
    expect((await postJson(`${base}/v1/chat/completions`, { messages: user, max_tokens: 2, ...off })).status).toBe(200);
    expect((await postJson(`${base}/v1/completions`, { prompt: "a", max_tokens: 2, suffix: "", logprobs: null })).status).toBe(200);
  });

  it("no generation was started by any rejected request", () => {
    expect(backend.calls.every((c) => c.opts.maxTokens! >= 1)).toBe(true);
    expect(backend.calls).toHaveLength(4);
  });
});

describe("other 4xx", () => {
  it("413 for a body over the limit (declared or streamed)", async () => {
    const big = JSON.stringify({ messages: [{ role: "user", content: "x".repeat(100 * 1024) }] });
    await expectError(await postJson(`${base}/v1/chat/completions`, big), 413, null, "body_too_large");
    // Chunked upload without Content-Length: the limit is enforced while reading.
    const status = await new Promise<number>((resolve, reject) => {
      const req = http.request({ host: "127.0.0.1", port: server.port, path: "/v1/chat/completions", method: "POST", headers: { "Content-Type": "application/json" } }, (res) => {
        res.resume();
        resolve(res.statusCode!);
      });
      req.on("error", reject);
      req.write(big.slice(0, 40 * 1024));
      req.end(big.slice(40 * 1024));
    });
    expect(status).toBe(413);
    expect((await fetch(`${base}/health`)).status).toBe(200);
  });

  it("415 for a body that is not declared as JSON", async () => {
    const res = await fetch(`${base}/v1/chat/completions`, { method: "POST", headers: { "Content-Type": "text/plain" }, body: JSON.stringify({ messages: user }) });
    await expectError(res, 415, null, "unsupported_media_type");
  });

  it("404 for unknown routes and 405 with Allow for wrong methods", async () => {
    await expectError(await fetch(`${base}/v2/whatever`), 404, null, "not_found");
    const res = await fetch(`${base}/v1/chat/completions`);
    expect(res.headers.get("allow")).toBe("POST");
    await expectError(res, 405, null, "method_not_allowed");
    expect((await fetch(`${base}/v1/models`, { method: "POST", headers: { "Content-Type": "application/json" }, body: "{}" })).status).toBe(405);
  });

  it("403 for a foreign Host header when there is no API key (DNS rebinding)", async () => {
    const status = await new Promise<number>((resolve, reject) => {
      http.get({ host: "127.0.0.1", port: server.port, path: "/v1/models", headers: { Host: "attacker.example:80" } }, (res) => {
        res.resume();
        resolve(res.statusCode!);
      }).on("error", reject);
    });
    expect(status).toBe(403);
    expect((await fetch(`http://localhost:${server.port}/health`)).status).toBe(200);
  });

  it("431 for headers over the limit", async () => {
    const head = await new Promise<string>((resolve, reject) => {
      const s = net.connect(server.port, "127.0.0.1", () => s.write(`GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ${"a".repeat(20 * 1024)}\r\n\r\n`));
      let buf = "";
      s.on("data", (d) => (buf += d.toString()));
      s.on("close", () => resolve(buf));
      s.on("error", reject);
    });
    expect(head).toMatch(/^HTTP\/1\.1 431 /);
  });

  it("garbage on the socket does not take the server down", async () => {
    await new Promise<void>((resolve) => {
      const s = net.connect(server.port, "127.0.0.1", () => s.end("\x00\x01 NOT HTTP\r\n\r\n"));
      s.on("data", () => {});
      s.on("close", () => resolve());
      s.on("error", () => resolve());
    });
    expect((await fetch(`${base}/health`)).status).toBe(200);
  });
});

describe("API key", () => {
  let keyed: RunningServer;
  let kbase: string;
  beforeAll(async () => {
    keyed = await startServer({ backend: new FakeBackend(), port: 0, apiKey: "s3cret-key-123" });
    kbase = keyed.url.replace(/\/$/, "");
  });
  afterAll(() => keyed.shutdown({ graceMs: 100 }));

  it("401 without or with a wrong key on /v1, /job, /metrics, /tokenize and /detokenize", async () => {
    for (const p of ["/v1/models", "/v1/models/fake-7b", "/metrics", "/job", "/job/logs"]) {
      await expectError(await fetch(`${kbase}${p}`), 401, null, "invalid_api_key");
      await expectError(await fetch(`${kbase}${p}`, { headers: { Authorization: "Bearer s3cret-key-124" } }), 401, null, "invalid_api_key");
    }
    await expectError(await fetch(`${kbase}/v1/models`, { headers: { Authorization: "Bearer s3cret-key-123x" } }), 401, null);
    await expectError(await fetch(`${kbase}/v1/models`, { headers: { Authorization: "s3cret-key-123" } }), 401, null);
    await expectError(await postJson(`${kbase}/v1/chat/completions`, { messages: user }), 401, null);
    await expectError(await postJson(`${kbase}/tokenize`, { content: "hi" }), 401, null, "invalid_api_key");
    await expectError(await postJson(`${kbase}/detokenize`, { tokens: [1] }), 401, null, "invalid_api_key");
  });

  it("accepts the right key", async () => {
    const auth = { Authorization: "Bearer s3cret-key-123" };
    expect((await fetch(`${kbase}/v1/models`, { headers: auth })).status).toBe(200);
    expect((await fetch(`${kbase}/v1/models/fake-7b`, { headers: auth })).status).toBe(200);
    expect((await fetch(`${kbase}/metrics`, { headers: auth })).status).toBe(200);
    expect((await postJson(`${kbase}/v1/chat/completions`, { messages: user }, auth)).status).toBe(200);
    // The fake backend tokenizes by words and has no decoder: /detokenize says so.
    expect(await (await postJson(`${kbase}/tokenize`, { content: "a b" }, auth)).json()).toEqual({ tokens: backend.tokenize("a b", { bos: false }) });
    const nt = await postJson(`${kbase}/detokenize`, { tokens: [1] }, auth);
    expect(nt.status).toBe(400);
    expect((await nt.json()).error.code).toBe("no_tokenizer");
  });

  it("still serves the page and /health without a key, and says a key is needed", async () => {
    expect((await fetch(`${kbase}/`)).status).toBe(200);
    expect(await (await fetch(`${kbase}/health`)).json()).toEqual({ status: "ok", auth_required: true });
  });
});

describe("binding and CORS", () => {
  it("refuses a non-loopback address without an API key", async () => {
    const err = await startServer({ backend, host: "0.0.0.0", port: 0 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InvalidArgumentError);
    expect((err as InvalidArgumentError).field).toBe("--host");
    expect((err as Error).message).toMatch(/--api-key/);
  });

  it("binds a non-loopback address with a key", async () => {
    const s = await startServer({ backend, host: "0.0.0.0", port: 0, apiKey: "0123456789" });
    expect(s.url).toMatch(/^http:\/\/0\.0\.0\.0:\d+\/$/);
    expect((await fetch(`http://127.0.0.1:${s.port}/health`)).status).toBe(200);
    await s.shutdown({ graceMs: 10 });
  });

  it("reports a busy port as a --port error", async () => {
    const err = await startServer({ backend, port: server.port }).catch((e: unknown) => e);
    expect((err as InvalidArgumentError).field).toBe("--port");
  });

  it("no CORS headers unless --cors; with it, the origin and preflight", async () => {
    const res = await fetch(`${base}/v1/models`, { headers: { Origin: "https://evil.example" } });
    expect(res.headers.get("access-control-allow-origin")).toBeNull();
    expect((await fetch(`${base}/v1/models`, { method: "OPTIONS" })).status).toBe(405);
    const c = await startServer({ backend, port: 0, cors: "https://app.example" });
    try {
      const pre = await fetch(`${c.url}v1/chat/completions`, { method: "OPTIONS", headers: { Origin: "https://app.example", "Access-Control-Request-Method": "POST" } });
      expect(pre.status).toBe(204);
      expect(pre.headers.get("access-control-allow-origin")).toBe("https://app.example");
      expect(pre.headers.get("access-control-allow-headers")).toMatch(/Authorization/);
      // The OpenAI JS SDK sends X-Stainless-* headers: the preflight must allow what is asked for.
      const asked = "authorization,content-type,x-stainless-os,x-stainless-retry-count";
      const sdk = await fetch(`${c.url}v1/chat/completions`, {
        method: "OPTIONS",
        headers: { Origin: "https://app.example", "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": asked },
      });
      expect(sdk.status).toBe(204);
      expect(sdk.headers.get("access-control-allow-headers")).toBe(asked);
      expect(sdk.headers.get("vary")).toMatch(/Access-Control-Request-Headers/);
      // Anything that is not a list of header names is not echoed.
      for (const bad of ["x-a;evil", "x-a, <script>", "x-a,".repeat(300) + "x-b"]) {
        const r = await fetch(`${c.url}v1/chat/completions`, {
          method: "OPTIONS",
          headers: { Origin: "https://app.example", "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": bad },
        });
        expect(r.headers.get("access-control-allow-headers"), bad.slice(0, 20)).toBe("Authorization, Content-Type");
      }
      expect((await fetch(`${c.url}v1/models`)).headers.get("access-control-allow-origin")).toBe("https://app.example");
    } finally {
      await c.shutdown({ graceMs: 10 });
    }
  });
});
