// GBNF grammars: the parser's errors, the recognizer against regular expressions on random strings
// (acceptance and live prefixes), UTF-8 at the byte level, the token-level mask against allows() with
// the real vocabulary, and generation on tiny-llama that always yields grammatical text.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { feedGrammar, grammarCanEnd, grammarMustEnd, initialGrammarState, parseGrammar, type Grammar } from "../lib/grammar/gbnf.js";
import { utf8 } from "../lib/grammar/json-recognizer.js";
import { createConstraint } from "../lib/grammar/response-format.js";
import { Llama2 } from "../lib/llama2.js";
import { Tokenizer } from "../lib/tokenizer.js";
import { Rng } from "../lib/rng.js";
import { describeShared, sharedPath } from "./helpers/shared.js";

const accepts = (g: Grammar, s: string) => {
  const st = feedGrammar(g, initialGrammarState(g), utf8(s));
  return st !== null && grammarCanEnd(st);
};
const alive = (g: Grammar, s: string) => feedGrammar(g, initialGrammarState(g), utf8(s)) !== null;

// The JSON grammar of llama.cpp's grammars/json.gbnf (its syntax: comments, groups, classes, escapes).
const JSON_GBNF = String.raw`
root   ::= object
value  ::= object | array | string | number | ("true" | "false" | "null") ws

object ::=
  "{" ws (
            string ":" ws value
    ("," ws string ":" ws value)*
  )? "}" ws

array  ::=
  "[" ws (
            value
    ("," ws value)*
  )? "]" ws

string ::=
  "\"" (
    [^"\\\x7F\x00-\x1F] |
    "\\" (["\\bfnrt] | "u" [0-9a-fA-F]{4}) # escapes
  )* "\"" ws

number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]+)? ([eE] [-+]? [0-9] [1-9]{0,15})? ws

# Optional space: by convention, applied in this grammar after literal chars when allowed
ws ::= | " " | "\n" [ \t]{0,20}
`;

describe("GBNF parser", () => {
  it("parses llama.cpp's JSON grammar and recognizes JSON with it", () => {
    const g = parseGrammar(JSON_GBNF);
    for (const ok of ['{"a": [1, 2.5, -3e+7, "x\\n\\u00e9"], "b": {"c": null}}', "{}", '{"é": true}']) expect(accepts(g, ok), ok).toBe(true);
    for (const bad of ["{", '{"a" 1}', "[1]", '{"a": 01}', '{"a": "\u0001"}']) expect(accepts(g, bad), bad).toBe(false);
    expect(alive(g, '{"a": [1, ')).toBe(true);
    expect(alive(g, '{"a": ]')).toBe(false);
  });

  it("refuses bad grammars with the field, the reason, and the line and column", () => {
    const bad: [string, RegExp][] = [
      ['answer ::= "yes"', /no "root" rule/],
      ["root ::= item", /rule "item" is used but never defined \(line 1, column 10\)/],
      ['root ::= expr\nexpr ::= expr "+" term | term\nterm ::= [0-9]', /left recursion: rule "expr"/],
      ['root ::= a\na ::= b? "x" | c\nb ::= "y"\nc ::= b? a', /left recursion/],
      ['root ::= "abc', /unterminated string literal/],
      ["root ::= [a-z", /unterminated character class/],
      ['root ::= "\\q"', /unknown escape \\q/],
      ['root ::= "\\x4"', /\\x needs 2 hex digits/],
      ['root ::= "a"{3,1}', /maximum is below the minimum/],
      ['root ::= "a"{5000}', /limited to 1000/],
      ['root ::= "a"\nroot ::= "b"', /defined twice \(line 2, column 1\)/],
      ['root ::= ( "a"\nb ::= "c" )', /a new rule "b" starts before the previous one ended/],
      ['root ::= "a" )', /unexpected "\)"/],
      ["root ::= [z-a]", /range ends below its start/],
      ["root ::= " + '"a"{1000} '.repeat(101), /more than 100000 elements/],
    ];
    for (const [src, re] of bad) {
      try {
        parseGrammar(src, "responseFormat.grammar");
        expect.unreachable(src);
      } catch (err) {
        expect(err, src).toMatchObject({ code: "ERR_INVALID_ARGUMENT", field: "responseFormat.grammar" });
        expect((err as Error).message, src).toMatch(re);
      }
    }
    expect(() => parseGrammar("root ::= " + "(".repeat(30000) + '"a"' + ")".repeat(30000))).toThrow(/parentheses nested deeper than 256/);
    expect(() => parseGrammar(42)).toThrow(expect.objectContaining({ field: "grammar" }));
    expect(() => parseGrammar("root ::= " + "x".repeat(70000))).toThrow(/at most 65536/);
  });

  it("follows regular grammars exactly: acceptance and live prefixes against a RegExp on random strings", () => {
    const cases: [string, RegExp, string][] = [
      ['root ::= ("a" | "bc")* "d"?', /^(a|bc)*d?$/, "abcd"],
      ['root ::= [a-c]+ "-" [0-9]{2,3}', /^[a-c]+-[0-9]{2,3}$/, "abc-0123"],
      ['root ::= x{2} | "c"\nx ::= "a" | "b"', /^([ab]{2}|c)$/, "abc"],
      ['root ::= [^a]? ("b" "c"?)+', /^[^a]?(bc?)+$/, "abc"],
      ['root ::= "" | "a" root "b"', /^$/, "ab"], // a^n b^n: checked separately below; the regexp is only for n = 0
      ['root ::= . "x"', /^[\s\S]x$/, "axé"],
    ];
    const rng = new Rng(7);
    for (const [src, re, alphabet] of cases) {
      const g = parseGrammar(src);
      const chars = Array.from(alphabet);
      for (let n = 0; n < 3000; n++) {
        const len = Math.floor(rng.next() * 7);
        let s = "";
        for (let k = 0; k < len; k++) s += chars[Math.floor(rng.next() * chars.length)];
        if (src.includes("root \"b\"")) {
          const k = s.length / 2;
          const want = s.length % 2 === 0 && s === "a".repeat(k) + "b".repeat(k);
          expect(accepts(g, s), `${src} on ${JSON.stringify(s)}`).toBe(want);
          continue;
        }
        expect(accepts(g, s), `${src} on ${JSON.stringify(s)}`).toBe(re.test(s));
        if (re.test(s)) for (let k = 0; k <= s.length; k++) expect(alive(g, s.slice(0, k)), `${src}: prefix of ${s}`).toBe(true);
      }
    }
  });

  it("works at the byte level: UTF-8 characters split across steps, classes above ASCII, done and complete", () => {
    const g = parseGrammar('root ::= [α-ω]+ "!" | "é" [^"\\\\]');
    expect(accepts(g, "αβγ!")).toBe(true);
    expect(accepts(g, "a!")).toBe(false);
    expect(accepts(g, "é🙂")).toBe(true);
    expect(accepts(g, 'é"')).toBe(false);
    const st0 = initialGrammarState(g);
    // "α" is CE B1, "é" is C3 A9: the first byte of each is alive, C4 (Ą..) is in no class.
    expect(feedGrammar(g, st0, Uint8Array.of(0xce))).not.toBeNull();
    expect(feedGrammar(g, st0, Uint8Array.of(0xc3))).not.toBeNull();
    expect(feedGrammar(g, st0, Uint8Array.of(0xc4))).toBeNull();
    expect(feedGrammar(g, st0, Uint8Array.of(0xce, 0x41))).toBeNull(); // not a continuation byte
    // Overlong forms of ASCII and surrogates are not characters (the vocabulary has byte tokens for them).
    const o = parseGrammar('root ::= "o" | [\uE000-\uFFFF]');
    expect(feedGrammar(o, initialGrammarState(o), Uint8Array.of(0xc1))).toBeNull();
    expect(feedGrammar(o, initialGrammarState(o), Uint8Array.of(0xe0, 0x81))).toBeNull();
    expect(feedGrammar(o, initialGrammarState(o), Uint8Array.of(0xe0, 0x81, 0xaf))).toBeNull();
    expect(feedGrammar(o, initialGrammarState(o), Uint8Array.of(0xf0, 0x80, 0x81, 0xaf))).toBeNull();
    const any = parseGrammar("root ::= .");
    expect(feedGrammar(any, initialGrammarState(any), Uint8Array.of(0xed, 0xa0))).toBeNull(); // U+D800..
    expect(accepts(any, "\u{E000}")).toBe(true);
    expect(accepts(o, "\u{E001}")).toBe(true);
    expect(accepts(o, "\u{D7FF}")).toBe(false);
    const half = feedGrammar(g, st0, Uint8Array.of(0xce))!;
    expect(grammarCanEnd(half)).toBe(false);
    const done = feedGrammar(g, st0, utf8("α!"))!;
    expect(grammarCanEnd(done) && grammarMustEnd(done)).toBe(true);
    const more = parseGrammar('root ::= "a"+');
    const a = feedGrammar(more, initialGrammarState(more), utf8("aa"))!;
    expect(grammarCanEnd(a)).toBe(true);
    expect(grammarMustEnd(a)).toBe(false);
  });

  it("mutated grammars parse or fail with ERR_INVALID_ARGUMENT, and what parses runs on random bytes without other errors", () => {
    const seeds = [JSON_GBNF, 'root ::= ("a" | [b-d]+ x)* "." \nx ::= "e"{1,3} | (y)?\ny ::= [^\n] "\x41"'];
    const alphabet = ['"', "(", ")", "[", "]", "^", "-", "|", "*", "+", "?", "{", "}", ",", "\\", "\n", " ", "::=", "root", "x", "a", "0", "9", "#", "é"];
    const rng = new Rng(11);
    const pick = <T,>(xs: readonly T[]) => xs[Math.floor(rng.next() * xs.length)]!;
    let parsed = 0;
    for (let n = 0; n < 1500; n++) {
      let src = pick(seeds);
      for (let m = 1 + Math.floor(rng.next() * 3); m > 0; m--) {
        const at = Math.floor(rng.next() * (src.length + 1));
        const op = rng.next();
        src = op < 0.4 ? src.slice(0, at) + pick(alphabet) + src.slice(at) : op < 0.7 ? src.slice(0, at) + src.slice(at + 1) : src.slice(0, at) + pick(alphabet) + src.slice(at + 1);
      }
      let g: Grammar;
      try {
        g = parseGrammar(src);
      } catch (err) {
        expect(err, src).toMatchObject({ code: "ERR_INVALID_ARGUMENT", field: "grammar" });
        continue;
      }
      parsed++;
      try {
        let st = initialGrammarState(g);
        for (let k = 0; k < 40; k++) {
          const b = Math.floor(rng.next() * 128);
          const next = feedGrammar(g, st, Uint8Array.of(b));
          if (next) st = next;
        }
      } catch (err) {
        expect(err, src).toMatchObject({ code: "ERR_INVALID_ARGUMENT" });
      }
    }
    expect(parsed).toBeGreaterThan(100);
  });

  it("right recursion (a long repetition) does not grow the stacks", () => {
    const g = parseGrammar('root ::= ("ab" | "c")* "."');
    let st = initialGrammarState(g);
    for (let k = 0; k < 5000; k++) st = feedGrammar(g, st, utf8(k % 3 ? "ab" : "c"))!;
    expect(st.stacks.length).toBeLessThan(4);
    let depth = 0;
    for (let f = st.stacks.find((s) => s !== null) ?? null; f; f = f.next) depth++;
    expect(depth).toBeLessThan(4);
    expect(accepts(g, "abcab.")).toBe(true);
  });
});

describeShared("GBNF constrained generation", ["models/tiny-llama-f16.gguf", "models/tokenizer.model"], () => {
  let tiny: Llama2;
  let tok: Tokenizer;
  beforeAll(async () => {
    tiny = await Llama2.load(sharedPath("models/tiny-llama-f16.gguf"), { device: "cpu" });
    tok = await Tokenizer.fromFile(sharedPath("models/tokenizer.model"));
  });
  afterAll(async () => {
    await tiny?.dispose();
  });

  it("the token mask equals allows() for every token, along a grammatical text", () => {
    const grammar = JSON_GBNF.replace("root   ::= object", 'root   ::= " "? object'); // SentencePiece's "▁{"
    const c = createConstraint({ type: "grammar", grammar }, tok)!;
    const text = '{"name": "Zoë", "tags": ["a", 12]}';
    const ids = tok.encode(text);
    expect(new TextDecoder().decode(Uint8Array.from(ids.flatMap((t) => [...tok.tokenBytes()[t]!])))).toBe(" " + text);
    const mask = new Uint8Array(tok.vocabSize);
    for (const [k, id] of ids.entries()) {
      if (k % 3 === 0) {
        c.fillMask(mask);
        let allowed = 0;
        for (let t = 0; t < tok.vocabSize; t++) {
          if (mask[t] !== (c.allows(t) ? 1 : 0)) expect.unreachable(`token ${t} at position ${k}`);
          allowed += mask[t]!;
        }
        expect(allowed).toBeGreaterThan(0);
        expect(mask[id]).toBe(1);
      }
      c.accept(id);
    }
    expect(c.complete).toBe(true);
  });

  it("generates only what the grammar accepts, stops where nothing may follow, and refuses bad grammars up front", async () => {
    const yesNo = 'root ::= ("yes" | "no") "."';
    for (const seed of [1, 2, 3, 4]) {
      const r = await tiny.generate("Answer:", { responseFormat: { type: "grammar", grammar: yesNo }, seed, temperature: 1, maxTokens: 20 }).result;
      expect(["yes.", "no."]).toContain(r.text.trim());
      expect(r.stats.finishReason).toBe("stop");
    }
    const list = 'root ::= "[" num ("," " "? num){0,3} "]"\nnum ::= "-"? [1-9] [0-9]{0,2}';
    for (const seed of [5, 6, 7]) {
      const r = await tiny.generate("Numbers:", { responseFormat: { type: "grammar", grammar: list }, seed, temperature: 1.5, topK: 0, maxTokens: 40 }).result;
      expect(r.text.trim()).toMatch(/^\[-?[1-9][0-9]{0,2}(, ?-?[1-9][0-9]{0,2}){0,3}\]$/);
    }
    // Greedy, top-k and chat paths too.
    const chat = await tiny.chat([{ role: "user", content: "Yes or no?" }], { responseFormat: { type: "grammar", grammar: yesNo }, temperature: 0 }).result;
    expect(["yes.", "no."]).toContain(chat.text.trim());
    // A grammar that reaches a dead end (a class that matches nothing) is reported as such, not as a ban.
    const dead = tiny.generate("x", { responseFormat: { type: "grammar", grammar: 'root ::= "a" [^\\x00-\\U0010FFFF]' }, temperature: 0 }).result;
    await expect(dead).rejects.toMatchObject({ code: "ERR_INVALID_ARGUMENT", field: "responseFormat", message: expect.stringMatching(/allows no token here/) });
    await expect(async () => tiny.generate("x", { responseFormat: { type: "grammar", grammar: "root ::= root" } })).rejects.toMatchObject({ field: "responseFormat.grammar" });
    await expect(async () => tiny.generate("x", { responseFormat: { type: "grammar" } as never })).rejects.toMatchObject({ field: "responseFormat.grammar" });
    await expect(async () => tiny.generate("x", { responseFormat: { type: "grammar", grammar: "root ::= \"a\"", schema: {} } as never })).rejects.toMatchObject({ field: "responseFormat.schema" });
  });
});
