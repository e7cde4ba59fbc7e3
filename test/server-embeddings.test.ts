// POST /v1/embeddings against the fake backend: OpenAI's wire format (float and base64), batches of
// texts and token ids in order, usage, every kind of bad request naming its field, context overflow
// naming the input, the API key, a backend without embed(), metrics and abort on client disconnect.
import http from "node:http";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startServer, type RunningServer } from "../lib/server/http.js";
import { fakeEmbedding, FakeBackend, postJson, waitFor } from "./helpers/fake-backend.js";

let backend: FakeBackend;
let server: RunningServer;
let url: string;
const recorded: { endpoint: string; promptTokens: number; status: number }[] = [];

beforeAll(async () => {
  backend = new FakeBackend({ delayMs: 1, slowDelayMs: 10, contextLength: 64 });
  server = await startServer({ backend, port: 0, onGeneration: (o) => recorded.push(o) });
  url = `${server.url}v1/embeddings`;
});
afterAll(() => server.shutdown({ graceMs: 100 }));

const DIM = 64;
/** The fake's vector of a text (tokenized with BOS, as Llama2.embed() does). */
const vectorOf = (input: string | number[], opts = {}): number[] =>
  Array.from(fakeEmbedding(typeof input === "string" ? backend.tokenize(input) : input, DIM, opts));
const tokensOf = (input: string | number[]): number => (typeof input === "string" ? backend.tokenize(input).length : input.length);

function decodeBase64(s: string): number[] {
  const b = Buffer.from(s, "base64");
  expect(b.length % 4).toBe(0);
  return Array.from({ length: b.length / 4 }, (_, i) => b.readFloatLE(i * 4));
}

async function expectError(res: Response, status: number, param: string | null, code?: string): Promise<any> {
  const j = await res.json();
  expect(res.status).toBe(status);
  expect(Object.keys(j.error).sort()).toEqual(["code", "message", "param", "type"]);
  expect(j.error.param).toBe(param);
  if (code) expect(j.error.code).toBe(code);
  return j.error;
}

describe("POST /v1/embeddings", () => {
  it("answers in OpenAI's shape: a list of embeddings of the model's dim, the model id, usage", async () => {
    const res = await postJson(url, { model: "text-embedding-3-small", input: "the quick brown fox" });
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toMatch(/^application\/json/);
    const j = await res.json();
    expect(Object.keys(j).sort()).toEqual(["data", "model", "object", "usage"]);
    expect(j.object).toBe("list");
    expect(j.model).toBe("fake-7b");
    expect(j.data).toEqual([{ object: "embedding", index: 0, embedding: vectorOf("the quick brown fox") }]);
    expect(j.data[0].embedding).toHaveLength(DIM);
    const n = tokensOf("the quick brown fox");
    expect(j.usage).toEqual({ prompt_tokens: n, total_tokens: n });
    // The default options reach the backend: the library's pooling and normalization.
    const { signal, ...opts } = backend.embedCalls.at(-1)!.opts;
    expect(signal).toBeInstanceOf(AbortSignal);
    expect(opts).toEqual({});
  });

  it("encoding_format base64: the little-endian float32 bytes of the same vector", async () => {
    const input = ["hello there", "general kenobi"];
    const floats = await (await postJson(url, { input, encoding_format: "float" })).json();
    const b64 = await (await postJson(url, { input, encoding_format: "base64" })).json();
    expect(b64.object).toBe("list");
    expect(b64.usage).toEqual(floats.usage);
    b64.data.forEach((d: any, i: number) => {
      expect(d).toMatchObject({ object: "embedding", index: i });
      expect(typeof d.embedding).toBe("string");
      const decoded = decodeBase64(d.embedding);
      expect(decoded).toEqual(floats.data[i].embedding); // float32 values survive JSON exactly
      expect(decoded).toEqual(vectorOf(input[i]!));
    });
    // null is the default (float).
    expect(Array.isArray((await (await postJson(url, { input: "a", encoding_format: null })).json()).data[0].embedding)).toBe(true);
  });

  it("a batch of texts and token arrays: run together, answered in input order, usage summed", async () => {
    const input: (string | number[])[] = ["slow first one", [5, 6, 7], "third text here", [1, 9], "b"];
    backend.maxActive = 0;
    const before = backend.embedCalls.length;
    const j = await (await postJson(url, { input })).json();
    expect(j.data.map((d: any) => d.index)).toEqual([0, 1, 2, 3, 4]);
    input.forEach((x, i) => expect(j.data[i].embedding, `input[${i}]`).toEqual(vectorOf(x)));
    const total = input.reduce((a: number, x) => a + tokensOf(x), 0);
    expect(j.usage).toEqual({ prompt_tokens: total, total_tokens: total });
    // The slow first input finished last, yet comes first; all ran at once (the engine batches them).
    expect(backend.embedCalls.slice(before).map((c) => c.input)).toEqual(input);
    expect(backend.maxActive).toBe(input.length);
  });

  it("an array of token ids is one input, taken as it is", async () => {
    const j = await (await postJson(url, { input: [1, 5, 6, 7] })).json();
    expect(j.data).toHaveLength(1);
    expect(j.data[0].embedding).toEqual(vectorOf([1, 5, 6, 7]));
    expect(backend.embedCalls.at(-1)!.input).toEqual([1, 5, 6, 7]);
    expect(j.usage.prompt_tokens).toBe(4);
  });

  it("dimensions equal to the model's, user and model are accepted; unknown fields are ignored", async () => {
    const res = await postJson(url, { input: "a b", dimensions: DIM, user: "u1", model: "anything", foo: { bar: 1 } });
    expect(res.status).toBe(200);
    expect((await res.json()).data[0].embedding).toEqual(vectorOf("a b"));
  });

  it("the pooling and normalize extensions reach embed()", async () => {
    const j = await (await postJson(url, { input: "one two three", pooling: "last", normalize: false })).json();
    const { signal: _signal, ...opts } = backend.embedCalls.at(-1)!.opts;
    expect(opts).toEqual({ pooling: "last", normalize: false });
    expect(j.data[0].embedding).toEqual(vectorOf("one two three", { pooling: "last", normalize: false }));
    const mean = await (await postJson(url, { input: "one two three", pooling: "mean", normalize: true })).json();
    expect(mean.data[0].embedding).toEqual(vectorOf("one two three"));
  });

  it("counts in metrics and in the job's figures like the other model requests", async () => {
    const before = server.metrics.promptTokens.get();
    const n = recorded.length;
    await postJson(url, { input: ["a b c", "d"] });
    const text = await (await fetch(`${server.url}metrics`)).text();
    expect(text).toMatch(/^llama2_http_requests_total\{endpoint="\/v1\/embeddings",status="200"\} \d+$/m);
    expect(text).toMatch(/^llama2_request_duration_seconds_bucket\{endpoint="\/v1\/embeddings",le="\+Inf"\} \d+$/m);
    const tokens = tokensOf("a b c") + tokensOf("d");
    expect(server.metrics.promptTokens.get()).toBe(before + tokens);
    expect(recorded.slice(n)).toEqual([expect.objectContaining({ endpoint: "/v1/embeddings", promptTokens: tokens, completionTokens: 0, status: 200 })]);
    // A refused one is a request too (an error in job.json).
    await postJson(url, { input: "" });
    expect(recorded.at(-1)).toMatchObject({ endpoint: "/v1/embeddings", status: 400 });
  });
});

describe("bad requests: 400 naming the field, nothing embedded", () => {
  const cases: [string, unknown, string][] = [
    ["body is an array", ["a"], "body"],
    ["body is a string", "\"a\"", "body"],
    ["missing input", { model: "x" }, "input"],
    ["input null", { input: null }, "input"],
    ["input a number", { input: 5 }, "input"],
    ["input an object", { input: { text: "a" } }, "input"],
    ["input a boolean", { input: true }, "input"],
    ["an empty string", { input: "" }, "input"],
    ["an empty array", { input: [] }, "input"],
    ["an empty string in a batch", { input: ["a", ""] }, "input[1]"],
    ["an empty token array in a batch", { input: [[1, 2], []] }, "input[1]"],
    ["a number among strings", { input: ["a", 5] }, "input[1]"],
    ["null in a batch", { input: ["a", null] }, "input[1]"],
    ["an object in a batch", { input: ["a", { t: 1 }] }, "input[1]"],
    ["a nested array in a token batch", { input: [[1, [2]]] }, "input[0][1]"],
    ["a string in a token array", { input: [1, "a"] }, "input[1]"],
    ["a fractional id", { input: [1, 2.5] }, "input[1]"],
    ["a negative id", { input: [1, -1] }, "input[1]"],
    ["an id beyond the vocabulary", { input: [1, 32000] }, "input[1]"],
    ["a bad id in a batch", { input: [[1, 2], [3, 1e9]] }, "input[1][1]"],
    ["over 2048 inputs", { input: Array.from({ length: 2049 }, () => "a") }, "input"],
    ["over 2048 token arrays", { input: Array.from({ length: 2049 }, () => [1]) }, "input"],
    ["encoding_format unknown", { input: "a", encoding_format: "binary" }, "encoding_format"],
    ["encoding_format not a string", { input: "a", encoding_format: 1 }, "encoding_format"],
    ["dimensions other than the model's", { input: "a", dimensions: 32 }, "dimensions"],
    ["dimensions a string", { input: "a", dimensions: "64" }, "dimensions"],
    ["dimensions fractional", { input: "a", dimensions: 63.5 }, "dimensions"],
    ["dimensions 0", { input: "a", dimensions: 0 }, "dimensions"],
    ["pooling unknown", { input: "a", pooling: "max" }, "pooling"],
    ["pooling not a string", { input: "a", pooling: 1 }, "pooling"],
    ["normalize not a boolean", { input: "a", normalize: "yes" }, "normalize"],
    ["user not a string", { input: "a", user: 7 }, "user"],
    ["model not a string", { input: "a", model: 7 }, "model"],
  ];
  it.each(cases)("%s", async (_what, body, param) => {
    const before = backend.embedCalls.length;
    const err = await expectError(await postJson(url, body), 400, param);
    expect(err.type).toBe("invalid_request_error");
    expect(err.message).toContain(param);
    expect(backend.embedCalls.length).toBe(before);
  });

  it("dimensions: the message says the model's own", async () => {
    const err = await expectError(await postJson(url, { input: "a", dimensions: 32 }), 400, "dimensions");
    expect(err.message).toMatch(/64 dimensions/);
  });

  it("an input longer than the context: context_length_exceeded naming that input", async () => {
    const long = Array.from({ length: 70 }, (_, i) => `w${i}`).join(" ");
    const err = await expectError(await postJson(url, { input: ["a b", "c", "d", long] }), 400, "input[3]", "context_length_exceeded");
    expect(err.message).toMatch(/^input\[3\]: .*71 tokens.*context length is 64/);
    await expectError(await postJson(url, { input: long }), 400, "input", "context_length_exceeded");
    await expectError(await postJson(url, { input: Array.from({ length: 65 }, () => 5) }), 400, "input", "context_length_exceeded");
    await expectError(await postJson(url, { input: [[5], Array.from({ length: 65 }, () => 5)] }), 400, "input[1]", "context_length_exceeded");
    // The context's length itself is fine.
    expect((await postJson(url, { input: Array.from({ length: 64 }, () => 5) })).status).toBe(200);
  });

  it("one input failing stops the others of its request", async () => {
    const long = Array.from({ length: 70 }, (_, i) => `w${i}`).join(" ");
    const before = backend.embedCalls.length;
    await expectError(await postJson(url, { input: ["slow one", long] }), 400, "input[1]", "context_length_exceeded");
    const slow = backend.embedCalls[before]!;
    await waitFor(() => slow.finished, 2000, "the slow input to stop");
    expect(slow.aborted).toBe(true);
  });

  it("a backend failure is a 500", async () => {
    const err = await expectError(await postJson(url, { input: ["a", "FAIL here"] }), 500, null, "internal_error");
    expect(err.message).toContain("ERR_CUDA");
  });

  it("405 for other methods, 415 for a body that is not JSON", async () => {
    const res = await fetch(url);
    expect(res.headers.get("allow")).toBe("POST");
    await expectError(res, 405, null, "method_not_allowed");
    await expectError(await fetch(url, { method: "POST", headers: { "Content-Type": "text/plain" }, body: "{}" }), 415, null);
  });
});

describe("embeddings and the server", () => {
  it("the API key protects it", async () => {
    const keyed = await startServer({ backend, port: 0, apiKey: "s3cret-key-123" });
    try {
      const kurl = `${keyed.url}v1/embeddings`;
      await expectError(await postJson(kurl, { input: "a" }), 401, null, "invalid_api_key");
      await expectError(await postJson(kurl, { input: "a" }, { Authorization: "Bearer wrong" }), 401, null, "invalid_api_key");
      const ok = await postJson(kurl, { input: "a" }, { Authorization: "Bearer s3cret-key-123" });
      expect(ok.status).toBe(200);
      expect((await ok.json()).data[0].embedding).toEqual(vectorOf("a"));
    } finally {
      await keyed.shutdown({ graceMs: 100 });
    }
  });

  it("a backend without embed(): 400, not supported", async () => {
    const b = new FakeBackend({ embed: false });
    expect(b.embed).toBeUndefined();
    const s = await startServer({ backend: b, port: 0 });
    try {
      const err = await expectError(await postJson(`${s.url}v1/embeddings`, { input: "a" }), 400, null, "embeddings_not_supported");
      expect(err.message).toMatch(/embeddings are not supported by this backend/);
      // The other routes are unaffected.
      expect((await postJson(`${s.url}v1/completions`, { prompt: "a", max_tokens: 1 })).status).toBe(200);
    } finally {
      await s.shutdown({ graceMs: 100 });
    }
  });

  it("a client that disconnects aborts its embeddings", async () => {
    const before = backend.embedCalls.length;
    await new Promise<void>((resolve, reject) => {
      const req = http.request(url, { method: "POST", headers: { "Content-Type": "application/json" } }, () => reject(new Error("answered")));
      req.on("error", (e) => (e.message.includes("socket hang up") ? resolve() : reject(e)));
      req.end(JSON.stringify({ input: ["slow a", "slow b"] }));
      // Both inputs are running: hang up.
      waitFor(() => backend.embedCalls.length >= before + 2, 2000, "the inputs to start").then(() => req.destroy(), reject);
    });
    const calls = backend.embedCalls.slice(before);
    await waitFor(() => calls.every((c) => c.finished), 2000, "the inputs to stop");
    expect(calls.every((c) => c.aborted)).toBe(true);
    await waitFor(() => server.inFlight === 0, 2000, "no requests in flight");
    const metrics = await (await fetch(`${server.url}metrics`)).text();
    expect(metrics).toMatch(/^llama2_http_requests_total\{endpoint="\/v1\/embeddings",status="499"\} 1$/m);
  });

  it("a shutdown cuts a running request with 503", async () => {
    const b = new FakeBackend({ slowDelayMs: 50 });
    const s = await startServer({ backend: b, port: 0 });
    const pending = postJson(`${s.url}v1/embeddings`, { input: "slow" });
    await waitFor(() => b.embedCalls.length === 1, 2000, "the request to start");
    await s.shutdown({ graceMs: 10, reason: "job released", code: "job_released" });
    const err = await expectError(await pending, 503, null, "job_released");
    expect(err.message).toMatch(/job released/);
    expect(b.embedCalls[0]!.aborted).toBe(true);
  });
});
