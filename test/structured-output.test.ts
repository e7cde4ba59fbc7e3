// Constrained output end to end on the demo model (random weights, the real Llama 2 vocabulary): a
// model that knows nothing of JSON still produces documents of the schema, ended by the constraint.
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Llama2 } from "../lib/llama2.js";
import { ensureDemoModel } from "../lib/synth/demo.js";

const DEMO_DIR = path.join(os.tmpdir(), "llama2-native-test-home", "models");
let llama: Llama2;

beforeAll(async () => {
  llama = await Llama2.load(await ensureDemoModel({ dir: DEMO_DIR }), { device: "cpu", contextLength: 512, maxSequences: 4 });
}, 120_000);
afterAll(() => llama?.dispose());

const schema = {
  type: "object",
  properties: {
    name: { type: "string", maxLength: 12 },
    age: { type: "integer" },
    ok: { type: "boolean" },
    color: { enum: ["red", "green", "blue"] },
    tags: { type: "array", items: { type: "string", maxLength: 6 }, maxItems: 3 },
  },
  required: ["name", "age", "ok", "color"],
};
const ask = [{ role: "user" as const, content: "Describe a person as JSON." }];

function checkPerson(v: any): void {
  expect(Object.keys(v).slice(0, 4)).toEqual(["name", "age", "ok", "color"]);
  expect(typeof v.name).toBe("string");
  expect([...v.name].length).toBeLessThanOrEqual(12);
  expect(Number.isInteger(v.age)).toBe(true);
  expect(typeof v.ok).toBe("boolean");
  expect(["red", "green", "blue"]).toContain(v.color);
  if ("tags" in v) expect(v.tags.length).toBeLessThanOrEqual(3);
}

describe("responseFormat", () => {
  it("json_schema: every seed gives a document of the schema, ended with finishReason stop", async () => {
    for (const opts of [{ temperature: 0 }, { temperature: 0.8, seed: 1 }, { temperature: 1.2, seed: 2, topK: 0, topP: 1, minP: 0 }, { temperature: 0.9, seed: 3 }]) {
      const r = await llama.chat(ask, { ...opts, maxTokens: 300, responseFormat: { type: "json_schema", schema } }).result;
      expect(r.stats.finishReason, r.text).toBe("stop");
      checkPerson(JSON.parse(r.text));
      // The free model says something else entirely.
      const free = await llama.chat(ask, { ...opts, maxTokens: 20 }).result;
      expect(() => checkPerson(JSON.parse(free.text))).toThrow();
    }
  }, 60_000);

  it("streams the same text it returns, is reproducible, and works with generate and sessions", async () => {
    const opts = { temperature: 0.8, seed: 5, maxTokens: 300, responseFormat: { type: "json_schema" as const, schema } };
    const s = llama.chat(ask, opts);
    let streamed = "";
    for await (const c of s) streamed += c.text;
    const r = await s.result;
    expect(streamed).toBe(r.text);
    expect((await llama.chat(ask, opts).result).text).toBe(r.text);
    const g = await llama.generate("Person:", opts).result;
    checkPerson(JSON.parse(g.text));
    const session = llama.createSession();
    const t1 = await session.send("A person, as JSON.", opts).result;
    checkPerson(JSON.parse(t1.text));
    const t2 = await session.send("Another one.", { ...opts, seed: 6 }).result;
    checkPerson(JSON.parse(t2.text));
    expect(t2.stats.cachedPromptTokens).toBeGreaterThan(0);
  }, 60_000);

  it("json_object: a JSON object, or finishReason length when maxTokens cuts it", async () => {
    const short = await llama.chat(ask, { temperature: 0, maxTokens: 3, responseFormat: { type: "json_object" } }).result;
    expect(short.stats.finishReason).toBe("length");
    expect(short.text.trimStart().startsWith("{")).toBe(true);
    // With a tight schema the document must end; greedy decoding is deterministic.
    const tiny = await llama.chat(ask, { temperature: 0, maxTokens: 50, responseFormat: { type: "json_object", schema: { type: "object", properties: { a: { type: "boolean" } }, required: ["a"] } } }).result;
    expect(JSON.parse(tiny.text)).toEqual({ a: expect.any(Boolean) });
  }, 60_000);

  it("bad formats are typed errors naming the field, and the model stays usable", async () => {
    expect(() => llama.chat(ask, { responseFormat: { type: "json_schema", schema: { type: "string", pattern: "x" } } })).toThrow(
      expect.objectContaining({ code: "ERR_INVALID_ARGUMENT", field: "responseFormat.schema.pattern" }),
    );
    expect(() => llama.generate("x", { responseFormat: { type: "nope" } as never })).toThrow(expect.objectContaining({ field: "responseFormat.type" }));
    // logitBias banning every token that can open the object: a clear error at the first token.
    const tok = llama.tokenizer!;
    const bans: Record<number, number> = {};
    tok.tokenBytes().forEach((b, id) => {
      if (b && new TextDecoder().decode(b).trimStart().startsWith("{")) bans[id] = -Infinity;
    });
    await expect(llama.chat(ask, { temperature: 0, logitBias: bans, responseFormat: { type: "json_object" } }).result).rejects.toMatchObject({
      code: "ERR_INVALID_ARGUMENT",
      field: "responseFormat",
    });
    const ok = await llama.chat(ask, { temperature: 0, maxTokens: 5 }).result;
    expect(ok.stats.completionTokens).toBeGreaterThan(0);
  }, 60_000);
});
