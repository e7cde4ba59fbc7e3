// Constrained output, unit level: the JSON recognizer against JSON.parse, the schema compiler, the
// token-level constraint against a brute-force check of every token, and the constrained sampler
// against plain sampling of the masked logits.
import { describe, expect, it } from "vitest";
import { InvalidArgumentError, Llama2Error } from "../lib/errors.js";
import { canEnd, feed, initialState, mustEnd, utf8, type SchemaNode } from "../lib/grammar/json-recognizer.js";
import { compileJsonSchema } from "../lib/grammar/json-schema.js";
import { compileResponseFormat, createConstraint } from "../lib/grammar/response-format.js";
import type { TokenFilter } from "../lib/grammar/token-constraint.js";
import { Rng } from "../lib/rng.js";
import { Sampler } from "../lib/sampler.js";
import { Tokenizer } from "../lib/tokenizer.js";
import type { SamplingOptions } from "../lib/types.js";

const ANY_OBJECT = compileResponseFormat({ type: "json_object" })!.root;
const ANY = compileJsonSchema(true, "s");

function verdict(root: SchemaNode, text: string): "reject" | "prefix" | "complete" | "done" {
  const st = feed(initialState(root), utf8(text));
  return st.length === 0 ? "reject" : mustEnd(st) ? "done" : canEnd(st) ? "complete" : "prefix";
}

/** A random JSON value (deterministic per rng). */
function randomValue(rng: Rng, depth: number): unknown {
  const r = rng.next();
  if (depth > 3 || r < 0.3) {
    const kind = Math.floor(rng.next() * 6);
    if (kind === 0) return null;
    if (kind === 1) return rng.next() < 0.5;
    if (kind === 2) return Math.floor((rng.next() - 0.5) * 1e6);
    if (kind === 3) return (rng.next() - 0.5) * 10 ** Math.floor(rng.next() * 40 - 20);
    const chars = ['a', 'é', '"', "\\", "\n", "日", "😀", " ", "\u0001", "/", "z"];
    return Array.from({ length: Math.floor(rng.next() * 6) }, () => chars[Math.floor(rng.next() * chars.length)]).join("");
  }
  if (r < 0.65) return Array.from({ length: Math.floor(rng.next() * 4) }, () => randomValue(rng, depth + 1));
  const o: Record<string, unknown> = {};
  for (let i = Math.floor(rng.next() * 4); i > 0; i--) o[String(randomValue(rng, 9))] = randomValue(rng, depth + 1);
  return o;
}

describe("JSON recognizer", () => {
  it("accepts JSON and rejects what is not, with its bounds", () => {
    expect(verdict(ANY_OBJECT, "{}")).toBe("done");
    expect(verdict(ANY_OBJECT, ' {"a": [1, 2.5e3, -0, true, null, "x\\u00e9y\\n"], "b": {"c": {}}}')).toBe("done");
    expect(verdict(ANY_OBJECT, '{\n  "a": 1\n}')).toBe("done");
    expect(verdict(ANY_OBJECT, '{"a":')).toBe("prefix");
    expect(verdict(ANY_OBJECT, "[1]")).toBe("reject"); // json_object: an object at the top
    expect(verdict(ANY_OBJECT, '{"a":01}')).toBe("reject");
    expect(verdict(ANY_OBJECT, '{"a":1,}')).toBe("reject");
    expect(verdict(ANY_OBJECT, '{"a":"\n"}')).toBe("reject"); // raw control character in a string
    expect(verdict(ANY_OBJECT, '{"a":"\\x"}')).toBe("reject");
    expect(verdict(ANY_OBJECT, '{"é":"日本😀"}')).toBe("done");
    expect(verdict(ANY_OBJECT, "{} ")).toBe("reject"); // nothing after the document
    expect(verdict(ANY_OBJECT, "{  }")).toBe("reject"); // one space, or a newline and indentation
    expect(verdict(ANY_OBJECT, "{\n\n}")).toBe("reject");
    expect(verdict(ANY_OBJECT, `{\n${" ".repeat(32)}}`)).toBe("done");
    expect(verdict(ANY_OBJECT, `{\n${" ".repeat(33)}}`)).toBe("reject");
    expect(verdict(ANY_OBJECT, `{"a":${"9".repeat(24)}}`)).toBe("done");
    expect(verdict(ANY_OBJECT, `{"a":${"9".repeat(25)}}`)).toBe("reject");
    expect(verdict(ANY, "12")).toBe("complete"); // a top-level number may go on
    expect(verdict(ANY, "12.")).toBe("prefix");
    // Invalid UTF-8 inside strings: an overlong form, a surrogate, a lone continuation byte.
    for (const bad of [[0x22, 0xc0, 0x80], [0x22, 0xed, 0xa0, 0x80], [0x22, 0x80]]) {
      expect(feed(initialState(ANY), Uint8Array.from(bad))).toHaveLength(0);
    }
  });

  it("agrees with JSON.parse on random documents and their mutations", () => {
    const rng = new Rng(7);
    let accepted = 0;
    for (let i = 0; i < 400; i++) {
      const v = { k: randomValue(rng, 0) };
      const text = JSON.stringify(v, null, i % 2 === 0 ? undefined : 2);
      expect(verdict(ANY_OBJECT, text), text).toBe("done");
      // Mutations: whatever the recognizer calls a complete document must parse as JSON.
      const bytes = utf8(text);
      for (let m = 0; m < 20; m++) {
        const copy = bytes.slice();
        const at = Math.floor(rng.next() * copy.length);
        const pick = '{}[]",:0123456789-.eE tfnul\\ \n';
        copy[at] = pick.charCodeAt(Math.floor(rng.next() * pick.length));
        const st = feed(initialState(ANY_OBJECT), copy);
        if (st.length > 0 && canEnd(st)) {
          accepted++;
          expect(() => JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(copy)), new TextDecoder().decode(copy)).not.toThrow();
        }
      }
    }
    expect(accepted).toBeGreaterThan(0); // some mutations stay valid (a digit for a digit), and were checked
  });
});

describe("JSON Schema subset", () => {
  const person = compileJsonSchema(
    {
      type: "object",
      properties: {
        name: { type: "string", minLength: 1, maxLength: 5 },
        age: { type: "integer" },
        tags: { type: "array", items: { enum: ["a", "b"] }, maxItems: 2 },
        email: { type: ["string", "null"], format: "email", description: "annotations are fine" },
      },
      required: ["name", "age"],
      additionalProperties: false,
    },
    "s",
  );

  it("enforces types, required properties in order, lengths, enums and item counts", () => {
    expect(verdict(person, '{"name":"bob","age":3}')).toBe("done");
    expect(verdict(person, '{"name":"bob","age":3,"tags":["a","b"],"email":null}')).toBe("done");
    expect(verdict(person, '{"name":"bob","age":3,"email":"x@y"}')).toBe("done"); // optional tags skipped
    expect(verdict(person, '{"age":3,"name":"bob"}')).toBe("reject"); // schema order
    expect(verdict(person, '{"name":"bob"}')).toBe("reject"); // age is required
    expect(verdict(person, '{"name":"","age":3}')).toBe("reject"); // minLength
    expect(verdict(person, '{"name":"bobbyb","age":3}')).toBe("reject"); // maxLength
    expect(verdict(person, '{"name":"日本日本日","age":3}')).toBe("done"); // characters, not bytes
    expect(verdict(person, '{"name":"bob","age":3.5}')).toBe("reject");
    expect(verdict(person, '{"name":"bob","age":3,"tags":["a","b","a"]}')).toBe("reject");
    expect(verdict(person, '{"name":"bob","age":3,"tags":["c"]}')).toBe("reject");
    expect(verdict(person, '{"name":"bob","age":3,"other":1}')).toBe("reject");
  });

  it("follows $ref (recursive too), anyOf, const and nullable", () => {
    const tree = compileJsonSchema(
      {
        $defs: { node: { type: "object", properties: { v: { type: "integer" }, kids: { type: "array", items: { $ref: "#/$defs/node" } } }, required: ["v"] } },
        $ref: "#/$defs/node",
      },
      "s",
    );
    expect(verdict(tree, '{"v":1,"kids":[{"v":2},{"v":3,"kids":[]}]}')).toBe("done");
    expect(verdict(tree, '{"v":1,"kids":[{"kids":[]}]}')).toBe("reject");
    const u = compileJsonSchema({ anyOf: [{ type: "object", properties: { a: { const: 1 } }, required: ["a"] }, { type: "object", properties: { b: { type: "boolean", nullable: true } }, required: ["b"] }] }, "s");
    expect(verdict(u, '{"a":1}')).toBe("done");
    expect(verdict(u, '{"b":null}')).toBe("done");
    expect(verdict(u, '{"a":2}')).toBe("reject");
  });

  it("refuses what it cannot enforce, naming the keyword's path", () => {
    const field = (schema: unknown): string => {
      try {
        compileJsonSchema(schema, "responseFormat.schema");
      } catch (e) {
        expect(e).toBeInstanceOf(InvalidArgumentError);
        return (e as InvalidArgumentError).field;
      }
      throw new Error("accepted");
    };
    expect(field({ type: "object", properties: { id: { type: "string", pattern: "^a" } } })).toBe("responseFormat.schema.properties.id.pattern");
    expect(field({ type: "integer", minimum: 0 })).toBe("responseFormat.schema.minimum");
    expect(field({ type: "strin" })).toBe("responseFormat.schema.type");
    expect(field({ $ref: "https://example.com/s.json" })).toBe("responseFormat.schema.$ref");
    expect(field({ type: "object", properties: { a: { type: "string" } }, required: ["b"] })).toBe("responseFormat.schema.required[0]");
    expect(field({ type: "string", minLength: 3, maxLength: 2 })).toBe("responseFormat.schema.minLength");
    expect(field(false)).toBe("responseFormat.schema");
    expect(field("object")).toBe("responseFormat.schema");
    // No finite document: a required property that is the object itself.
    expect(field({ type: "object", properties: { self: { $ref: "#" } }, required: ["self"] })).toBe("responseFormat.schema");
    // Deep nesting is refused, not a stack overflow.
    let deep: unknown = { type: "string" };
    for (let i = 0; i < 200; i++) deep = { type: "array", items: deep };
    expect(field(deep)).toMatch(/^responseFormat\.schema(\.items)+$/);
  });

  it("validates the responseFormat option itself", () => {
    expect(compileResponseFormat(undefined)).toBeNull();
    expect(compileResponseFormat({ type: "text" })).toBeNull();
    for (const [bad, f] of [["json", "responseFormat"], [{ type: "yaml" }, "responseFormat.type"], [{ type: "json_schema" }, "responseFormat.schema"], [{ type: "json_object", extra: 1 }, "responseFormat.extra"]] as const) {
      expect(() => compileResponseFormat(bad)).toThrow(expect.objectContaining({ code: "ERR_INVALID_ARGUMENT", field: f }));
    }
  });
});

describe("token-level constraint (the Llama 2 vocabulary)", () => {
  it("fillMask allows exactly the tokens that allows() accepts, and accept() advances", async () => {
    const tok = await Tokenizer.demo();
    const schema = { type: "object", properties: { name: { type: "string" }, n: { type: "number" }, ok: { type: "boolean" } }, required: ["name", "n", "ok"] };
    const text = '{"name": "Bob é", "n": -12.5, "ok": true}';
    const ids = tok.encode(text);
    const c = createConstraint({ type: "json_schema", schema }, tok)!;
    const mask = new Uint8Array(tok.vocabSize);
    const checkAt = [0, 1, 2, 4, ids.length - 2, ids.length - 1];
    ids.forEach((id, i) => {
      if (checkAt.includes(i)) {
        c.fillMask(mask);
        let differ = 0;
        let allowed = 0;
        for (let t = 0; t < tok.vocabSize; t++) {
          if ((mask[t] === 1) !== c.allows(t)) differ++;
          allowed += mask[t]!;
        }
        expect(differ, `position ${i}`).toBe(0);
        expect(allowed).toBeGreaterThan(0);
        expect(mask[tok.eosId]).toBe(0); // the document is not complete yet
      }
      expect(c.allows(id), `token ${i} ${tok.piece(id)}`).toBe(true);
      c.accept(id);
    });
    expect(c.done).toBe(true);
    expect(c.complete).toBe(true);
    expect(() => c.accept(tok.encode("x")[0]!)).toThrow(Llama2Error);
    // Inside strings (free keys and values, a maxLength that is nearly used up), where fillMask takes
    // the plain-content tokens wholesale: still exactly what allows() says, at every position.
    for (const [format, doc] of [
      [{ type: "json_object" }, '{"ké y": "日本 \\\\ \\\"x\\\" 😀 abc", "b": ["zz"]}'],
      [{ type: "json_schema", schema: { type: "object", properties: { s: { type: "string", maxLength: 4 } } } }, '{"s": "aé日"}'],
    ] as const) {
      const e = createConstraint(format as never, tok)!;
      for (const id of tok.encode(doc)) {
        e.fillMask(mask);
        for (let t = 0; t < tok.vocabSize; t++) if ((mask[t] === 1) !== e.allows(t)) throw new Error(`${doc}: token ${t} ${tok.piece(t)}: mask ${mask[t]}`);
        expect(e.allows(id)).toBe(true);
        e.accept(id);
      }
      expect(e.done).toBe(true);
    }
    // A string's inside allows most of the vocabulary; the quote-free tokens all pass.
    const d = createConstraint({ type: "json_object" }, tok)!;
    for (const id of tok.encode('{"a')) d.accept(id);
    d.fillMask(mask);
    expect(mask.reduce((a, b) => a + b, 0)).toBeGreaterThan(30000);
  });
});

describe("constrained sampling", () => {
  const V = 1000;
  /** A filter allowing a fixed set, counting its calls. */
  function setFilter(allowed: Set<number>): TokenFilter & { calls: number; masks: number } {
    return {
      calls: 0,
      masks: 0,
      allows(id) {
        this.calls++;
        return allowed.has(id);
      },
      fillMask(mask) {
        this.masks++;
        mask.fill(0);
        for (const id of allowed) mask[id] = 1;
      },
    };
  }

  it("equals plain sampling of the logits with every other token at -Infinity", () => {
    const rng = new Rng(3);
    const optionSets: SamplingOptions[] = [
      { temperature: 0 },
      { temperature: 0.8 },
      { temperature: 1.2, topK: 5, topP: 0.9 },
      { temperature: 0.7, topK: 0, topP: 0.95, minP: 0 },
      { temperature: 1, topK: 0, topP: 1, minP: 0.01 },
      { temperature: 0.9, repetitionPenalty: 1.3, presencePenalty: 0.5, logitBias: { 3: -Infinity, 5: 2.5 } },
    ];
    let lazy = 0;
    let masked = 0;
    for (const opts of optionSets) {
      for (const density of [0.9, 0.3, 0.01]) {
        for (let trial = 0; trial < 15; trial++) {
          const logits = Float32Array.from({ length: V }, () => (rng.next() - 0.5) * 12);
          logits[7] = logits[8]!; // a tie
          const allowed = new Set<number>();
          for (let t = 0; t < V; t++) if (rng.next() < density) allowed.add(t);
          allowed.add(Math.floor(rng.next() * V));
          const history = [1, 2, 3, 5, 9, 9];
          const seed = trial * 31 + 1;
          const filter = setFilter(allowed);
          const got = new Sampler({ ...opts, seed }, V, { constrained: true }).sample(logits, history, filter);
          const masked2 = logits.map((v, t) => (allowed.has(t) ? v : -Infinity));
          const want = new Sampler({ ...opts, seed }, V).sample(masked2, history);
          expect(got, `${JSON.stringify(opts)} density ${density} trial ${trial}`).toBe(want);
          expect(allowed.has(got)).toBe(true);
          if (filter.masks > 0) masked++;
          else lazy++;
        }
      }
    }
    expect(lazy).toBeGreaterThan(50); // both paths were exercised
    expect(masked).toBeGreaterThan(50);
  });

  it("asks for full logits, and explains when logitBias bans every allowed token", () => {
    const s = new Sampler({ temperature: 0, logitBias: { 4: -Infinity } }, 10, { constrained: true });
    expect(s.needs.fullLogits).toBe(true);
    const logits = Float32Array.from({ length: 10 }, (_, i) => i);
    expect(s.sample(logits, [], setFilter(new Set([2, 4])))).toBe(2);
    expect(() => s.sample(logits, [], setFilter(new Set([4])))).toThrow(expect.objectContaining({ code: "ERR_INVALID_ARGUMENT", field: "responseFormat" }));
    expect(() => s.sample(logits.fill(NaN), [], setFilter(new Set([2])))).toThrow(expect.objectContaining({ code: "ERR_MODEL_CORRUPT" }));
    // A filter on a sampler not made for one is a bug of the caller.
    expect(() => new Sampler({}, 10).sample(Float32Array.from({ length: 10 }), [], setFilter(new Set([1])))).toThrow(expect.objectContaining({ code: "ERR_INTERNAL" }));
  });
});
