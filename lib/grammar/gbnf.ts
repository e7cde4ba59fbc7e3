// GBNF grammars (llama.cpp's format) for constrained generation: the parser, and a recognizer that
// follows every way the output so far can continue (a set of stacks, as llama.cpp's llama-grammar
// does), fed one byte at a time so the token trie can walk it.
//
//   root ::= answer "."          rules: name ::= alternatives; "root" is where output starts
//   answer ::= "yes" | "no"      literals with \n \t \r \\ \" \xHH \uHHHH \UHHHHHHHH escapes
//   digit ::= [0-9] | [^a-z\n]   character classes (code points), negated with ^; `.` any character
//   list ::= (item ("," item)*)? ( ) groups; * + ? {m} {m,} {m,n} repetition; # comments
//
// A rule's body may continue on the next line after `::=`, after `|` and inside parentheses. Left
// recursion (a rule that can reach itself before consuming a character) is refused, as llama.cpp does.
import { InvalidArgumentError } from "../errors.js";

/** A character class: sorted inclusive code-point ranges, possibly negated. */
interface CharElem {
  t: 0;
  ranges: number[]; // lo0, hi0, lo1, hi1, ...
  neg: boolean;
}
interface RefElem {
  t: 1;
  rule: number;
}
type Elem = CharElem | RefElem;

/** A compiled grammar: rule i's alternatives, each a sequence of elements. */
export interface Grammar {
  readonly names: readonly string[];
  readonly rules: readonly (readonly (readonly Elem[])[])[];
  readonly root: number;
}

/** Limits that keep a grammar (and the work per token) bounded. */
export const MAX_GRAMMAR_CHARS = 65536;
const MAX_ELEMENTS = 100_000;
const MAX_REPEAT = 1000;
/** Parentheses nested deeper than this are refused (the parser recurses on them). */
const MAX_NESTING = 256;
/** Stacks alive at once: beyond this the grammar is too ambiguous to follow (an error, not a hang). */
export const MAX_STACKS = 16384;

const NAME = /[A-Za-z0-9_-]/;

class Parser {
  private i = 0;
  private readonly names: string[] = [];
  private readonly ids = new Map<string, number>();
  private readonly defined: (Elem[][] | undefined)[] = [];
  private readonly firstUse = new Map<number, number>();
  private elements = 0;
  private nesting = 0;

  constructor(
    private readonly src: string,
    private readonly field: string,
  ) {}

  parse(): Grammar {
    this.space(true);
    while (this.i < this.src.length) {
      const at = this.i;
      const name = this.name();
      if (!name) this.fail(`expected a rule name`, at);
      this.space(false);
      if (!this.src.startsWith("::=", this.i)) this.fail(`expected "::=" after rule name ${JSON.stringify(name)}`);
      this.i += 3;
      this.space(true);
      const id = this.rule(name);
      if (this.defined[id] !== undefined) this.fail(`rule ${JSON.stringify(name)} is defined twice`, at);
      this.defined[id] = this.alternatives(false);
      if (this.i < this.src.length && this.src[this.i] !== "\n" && this.src[this.i] !== "\r") this.fail(`unexpected ${JSON.stringify(this.src[this.i])}`);
      this.space(true);
    }
    const root = this.ids.get("root");
    if (root === undefined || this.defined[root] === undefined) this.fail('the grammar has no "root" rule', 0);
    for (const [id, at] of this.firstUse) if (this.defined[id] === undefined) this.fail(`rule ${JSON.stringify(this.names[id])} is used but never defined`, at);
    const g: Grammar = { names: this.names, rules: this.defined as Elem[][][], root: root! };
    checkLeftRecursion(g, this.field);
    return g;
  }

  private fail(msg: string, at = this.i): never {
    const line = this.src.slice(0, at).split("\n").length;
    const col = at - this.src.lastIndexOf("\n", at - 1);
    throw new InvalidArgumentError(this.field, `${msg} (line ${line}, column ${col})`);
  }

  /** Skips blanks and comments; newlines too when `newlines`. */
  private space(newlines: boolean): void {
    for (;;) {
      const c = this.src[this.i];
      if (c === " " || c === "\t" || ((c === "\n" || c === "\r") && newlines)) this.i++;
      else if (c === "#") {
        while (this.i < this.src.length && this.src[this.i] !== "\n") this.i++;
      } else return;
    }
  }

  private name(): string {
    const s = this.i;
    while (this.i < this.src.length && NAME.test(this.src[this.i]!)) this.i++;
    return this.src.slice(s, this.i);
  }

  private rule(name: string): number {
    let id = this.ids.get(name);
    if (id === undefined) {
      id = this.names.length;
      this.names.push(name);
      this.ids.set(name, id);
      this.defined.push(undefined);
    }
    return id;
  }

  /** A new anonymous rule (groups, repetitions). */
  private anon(alts: Elem[][]): number {
    const id = this.names.length;
    this.names.push(`~${id}`);
    this.defined.push(alts);
    return id;
  }

  private count(n: number): void {
    this.elements += n;
    if (this.elements > MAX_ELEMENTS) this.fail(`the grammar expands to more than ${MAX_ELEMENTS} elements`);
  }

  private alternatives(nested: boolean): Elem[][] {
    const alts = [this.sequence(nested)];
    while (this.src[this.i] === "|") {
      this.i++;
      this.space(true);
      alts.push(this.sequence(nested));
    }
    return alts;
  }

  private sequence(nested: boolean): Elem[] {
    const seq: Elem[] = [];
    for (;;) {
      const c = this.src[this.i];
      if (c === undefined || c === "|" || c === ")" || c === "\n" || c === "\r") return seq;
      const at = this.i;
      let item: Elem[];
      if (c === '"') item = this.literal();
      else if (c === "[") item = [this.charClass()];
      else if (c === ".") {
        this.i++;
        item = [{ t: 0, ranges: [0, 0x10ffff], neg: false }];
      } else if (c === "(") {
        if (++this.nesting > MAX_NESTING) this.fail(`parentheses nested deeper than ${MAX_NESTING}`);
        this.i++;
        this.space(true);
        const alts = this.alternatives(true);
        this.nesting--;
        if (this.src[this.i] !== ")") this.fail('expected ")"');
        this.i++;
        item = [{ t: 1, rule: this.anon(alts) }];
      } else if (NAME.test(c)) {
        const name = this.name();
        if (this.src.startsWith("::=", this.i) || /^[ \t]+::=/.test(this.src.slice(this.i))) this.fail(`a new rule ${JSON.stringify(name)} starts before the previous one ended (missing "|" or parentheses?)`, at);
        const id = this.rule(name);
        if (!this.firstUse.has(id)) this.firstUse.set(id, at);
        item = [{ t: 1, rule: id }];
      } else this.fail(`unexpected ${JSON.stringify(c)}`);
      this.count(item.length);
      this.space(nested);
      seq.push(...this.repeat(item));
      this.space(nested);
    }
  }

  /** Postfix operators on `item` (a sequence), rewritten into plain rules. */
  private repeat(item: Elem[]): Elem[] {
    const c = this.src[this.i];
    let min: number;
    let max: number; // -1: unbounded
    if (c === "*") [min, max] = [0, -1];
    else if (c === "+") [min, max] = [1, -1];
    else if (c === "?") [min, max] = [0, 1];
    else if (c === "{") {
      const m = /^\{\s*(\d+)\s*(?:(,)\s*(\d*)\s*)?\}/.exec(this.src.slice(this.i));
      if (!m) this.fail("expected {m}, {m,} or {m,n}");
      min = Number(m[1]);
      max = m[2] === undefined ? min : m[3] === "" ? -1 : Number(m[3]);
      if (min > MAX_REPEAT || max > MAX_REPEAT) this.fail(`repetition counts are limited to ${MAX_REPEAT}`);
      if (max !== -1 && max < min) this.fail(`{${min},${max}}: the maximum is below the minimum`);
      this.i += m[0].length - 1;
    } else return item;
    this.i++;
    const out: Elem[] = [];
    for (let k = 0; k < min; k++) out.push(...item);
    if (max === -1) {
      // star ::= item star | (empty): the reference is the alternative's last element, so following it
      // does not grow the stack (see expand()).
      const star = this.anon([]);
      (this.defined[star] as Elem[][]).push([...item, { t: 1, rule: star }], []);
      out.push({ t: 1, rule: star });
    } else if (max > min) {
      // Nested optionals: opt_k ::= item opt_{k-1} | (empty).
      let rest: Elem[] = [];
      for (let k = 0; k < max - min; k++) rest = [{ t: 1, rule: this.anon([[...item, ...rest], []]) }];
      out.push(...rest);
    }
    this.count(out.length + (max === -1 ? item.length : (max - min) * item.length));
    return out;
  }

  private literal(): Elem[] {
    this.i++; // "
    const out: Elem[] = [];
    for (;;) {
      const c = this.src[this.i];
      if (c === undefined || c === "\n") this.fail("unterminated string literal");
      if (c === '"') break;
      const cp = this.charOrEscape();
      out.push({ t: 0, ranges: [cp, cp], neg: false });
    }
    this.i++;
    return out;
  }

  private charClass(): CharElem {
    this.i++; // [
    const neg = this.src[this.i] === "^";
    if (neg) this.i++;
    const ranges: number[] = [];
    while (this.src[this.i] !== "]") {
      if (this.i >= this.src.length) this.fail('unterminated character class (missing "]")');
      const lo = this.charOrEscape();
      let hi = lo;
      if (this.src[this.i] === "-" && this.src[this.i + 1] !== "]" && this.src[this.i + 1] !== undefined) {
        this.i++;
        hi = this.charOrEscape();
        if (hi < lo) this.fail(`the range ends below its start`);
      }
      ranges.push(lo, hi);
    }
    this.i++;
    return { t: 0, ranges: normalize(ranges), neg };
  }

  /** One character of a literal or class, escapes decoded; returns its code point. */
  private charOrEscape(): number {
    const c = this.src.codePointAt(this.i)!;
    if (c !== 0x5c) {
      this.i += c > 0xffff ? 2 : 1;
      return c;
    }
    const e = this.src[this.i + 1];
    this.i += 2;
    const simple: Record<string, number> = { n: 10, t: 9, r: 13, "\\": 0x5c, '"': 0x22, "[": 0x5b, "]": 0x5d, "-": 0x2d, "^": 0x5e, "/": 0x2f, "0": 0 };
    if (e !== undefined && e in simple) return simple[e]!;
    const width = e === "x" ? 2 : e === "u" ? 4 : e === "U" ? 8 : 0;
    if (width) {
      const hex = this.src.slice(this.i, this.i + width);
      if (!new RegExp(`^[0-9a-fA-F]{${width}}$`).test(hex)) this.fail(`\\${e} needs ${width} hex digits`, this.i - 2);
      this.i += width;
      const cp = parseInt(hex, 16);
      if (cp > 0x10ffff) this.fail(`\\${e}${hex} is beyond U+10FFFF`, this.i - width - 2);
      return cp;
    }
    this.fail(`unknown escape \\${e ?? ""}`, this.i - 2);
  }
}

/** Sorts and merges ranges. */
function normalize(r: number[]): number[] {
  const pairs: [number, number][] = [];
  for (let k = 0; k < r.length; k += 2) pairs.push([r[k]!, r[k + 1]!]);
  pairs.sort((a, b) => a[0] - b[0]);
  const out: number[] = [];
  for (const [lo, hi] of pairs) {
    if (out.length > 0 && lo <= out[out.length - 1]! + 1) out[out.length - 1] = Math.max(out[out.length - 1]!, hi);
    else out.push(lo, hi);
  }
  return out;
}

/** Refuses a rule that can reach itself without consuming a character (expansion would not end). */
function checkLeftRecursion(g: Grammar, field: string): void {
  const n = g.rules.length;
  // Nullable rules, to a fixed point.
  const nullable = new Array<boolean>(n).fill(false);
  for (let changed = true; changed; ) {
    changed = false;
    for (let r = 0; r < n; r++) {
      if (nullable[r]) continue;
      if (g.rules[r]!.some((alt) => alt.every((e) => e.t === 1 && nullable[e.rule]))) nullable[r] = changed = true;
    }
  }
  // left[r]: the rules r can start with.
  const left = g.rules.map((alts) => {
    const s = new Set<number>();
    for (const alt of alts) {
      for (const e of alt) {
        if (e.t === 0) break;
        s.add(e.rule);
        if (!nullable[e.rule]) break;
      }
    }
    return s;
  });
  const state = new Uint8Array(n); // 0 new, 1 on the path, 2 done
  const path: number[] = [];
  const visit = (r: number): void => {
    state[r] = 1;
    path.push(r);
    for (const x of left[r]!) {
      if (state[x] === 1) {
        const cycle = path.slice(path.indexOf(x)).map((k) => g.names[k]).filter((s) => !s!.startsWith("~"));
        throw new InvalidArgumentError(field, `left recursion: rule ${JSON.stringify(cycle[0] ?? g.names[x])} can reach itself before consuming a character${cycle.length > 1 ? ` (via ${cycle.slice(1).join(", ")})` : ""}`);
      }
      if (state[x] === 0) visit(x);
    }
    path.pop();
    state[r] = 2;
  };
  for (let r = 0; r < n; r++) if (state[r] === 0) visit(r);
}

/** Parses and compiles GBNF text; InvalidArgumentError (naming `field`, line and column) when it is not valid. */
export function parseGrammar(text: unknown, field = "grammar"): Grammar {
  if (typeof text !== "string") throw new InvalidArgumentError(field, "expected a string of GBNF rules");
  if (text.length > MAX_GRAMMAR_CHARS) throw new InvalidArgumentError(field, `is ${text.length} characters; at most ${MAX_GRAMMAR_CHARS}`);
  return new Parser(text, field).parse();
}

// ---------------------------------------------------------------------------------------------------
// The recognizer. A stack is a linked list of positions (rule, alternative, element index); its top
// always points at a character element. The empty stack (null) means the output may end here.

export interface Frame {
  readonly rule: number;
  readonly alt: number;
  readonly pos: number;
  readonly next: Frame | null;
}
export type GStack = Frame | null;

/**
 * The recognizer's state: the live stacks and a partial UTF-8 character (bytes still expected, value so
 * far, and the least code point its length may encode: overlong forms are refused, as are surrogates).
 */
export interface GState {
  readonly stacks: readonly GStack[];
  readonly need: number;
  readonly cp: number;
  readonly min: number;
}

function elemAt(g: Grammar, f: Frame): Elem | undefined {
  return g.rules[f.rule]![f.alt]![f.pos];
}

/** Pushes onto `out` every stack that continues at (rule, alt, pos) and then with `k`. */
function expand(g: Grammar, rule: number, alt: number, pos: number, k: GStack, out: GStack[], depth: number): void {
  if (depth > 10_000) throw new InvalidArgumentError("grammar", "expansion too deep");
  const seq = g.rules[rule]![alt]!;
  if (pos >= seq.length) {
    // End of this alternative: continue with the caller's continuation.
    if (k === null) out.push(null);
    else expand(g, k.rule, k.alt, k.pos, k.next, out, depth + 1);
    return;
  }
  const e = seq[pos]!;
  if (e.t === 0) {
    out.push({ rule, alt, pos, next: k });
    return;
  }
  // A reference: its alternatives, then what follows it (nothing new to remember when it is last).
  const cont = pos + 1 < seq.length ? { rule, alt, pos: pos + 1, next: k } : k;
  const alts = g.rules[e.rule]!;
  for (let a = 0; a < alts.length; a++) expand(g, e.rule, a, 0, cont, out, depth + 1);
}

/** A stack's identity (rule.alt.pos of each frame, top first). */
export function stackKey(s: GStack): string {
  let k = "";
  for (let f = s; f !== null; f = f.next) k += `${f.rule}.${f.alt}.${f.pos},`;
  return k;
}

function dedupe(stacks: GStack[]): GStack[] {
  if (stacks.length < 2) return stacks;
  const seen = new Set<string>();
  const out: GStack[] = [];
  for (const s of stacks) {
    const k = stackKey(s);
    if (!seen.has(k)) {
      seen.add(k);
      out.push(s);
    }
  }
  if (out.length > MAX_STACKS) throw new InvalidArgumentError("grammar", `the grammar is too ambiguous: more than ${MAX_STACKS} ways to continue at once`);
  return out;
}

function matches(e: CharElem, cp: number): boolean {
  const r = e.ranges;
  let inside = false;
  for (let k = 0; k < r.length; k += 2) {
    if (cp >= r[k]! && cp <= r[k + 1]!) {
      inside = true;
      break;
    }
  }
  return inside !== e.neg;
}

/** Whether some code point in [lo, hi] matches. */
function matchesSome(e: CharElem, lo: number, hi: number): boolean {
  const r = e.ranges;
  if (!e.neg) {
    for (let k = 0; k < r.length; k += 2) if (r[k]! <= hi && r[k + 1]! >= lo) return true;
    return false;
  }
  // Negated: some value of [lo, hi] lies outside every range.
  let x = lo;
  for (let k = 0; k < r.length && x <= hi; k += 2) {
    if (r[k + 1]! < x) continue;
    if (r[k]! > x) return true;
    x = r[k + 1]! + 1;
  }
  return x <= hi;
}

export function initialGrammarState(g: Grammar): GState {
  const out: GStack[] = [];
  for (let a = 0; a < g.rules[g.root]!.length; a++) expand(g, g.root, a, 0, null, out, 0);
  return { stacks: dedupe(out), need: 0, cp: 0, min: 0 };
}

function advance(g: Grammar, stacks: readonly GStack[], cp: number): GStack[] {
  const out: GStack[] = [];
  for (const s of stacks) {
    if (s === null) continue;
    const e = elemAt(g, s) as CharElem;
    if (matches(e, cp)) expand(g, s.rule, s.alt, s.pos + 1, s.next, out, 0);
  }
  return dedupe(out);
}

const MIN_CP = [0, 0x80, 0x800, 0x10000];

/** The state after one more byte of output, or null when no stack can take it. */
export function stepGrammar(g: Grammar, st: GState, b: number): GState | null {
  if (st.need === 0) {
    if (b < 0x80) {
      const stacks = advance(g, st.stacks, b);
      return stacks.length > 0 ? { stacks, need: 0, cp: 0, min: 0 } : null;
    }
    const need = b >= 0xf0 && b <= 0xf4 ? 3 : b >= 0xe0 && b < 0xf0 ? 2 : b >= 0xc2 && b < 0xe0 ? 1 : -1;
    if (need < 0) return null;
    const cp = b & (0x3f >> need);
    const min = MIN_CP[need]!;
    return anyMatch(g, st.stacks, cp, need, min) ? { stacks: st.stacks, need, cp, min } : null;
  }
  if ((b & 0xc0) !== 0x80) return null;
  const cp = (st.cp << 6) | (b & 0x3f);
  const need = st.need - 1;
  if (need > 0) return anyMatch(g, st.stacks, cp, need, st.min) ? { stacks: st.stacks, need, cp, min: st.min } : null;
  if (cp < st.min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return null;
  const stacks = advance(g, st.stacks, cp);
  return stacks.length > 0 ? { stacks, need: 0, cp: 0, min: 0 } : null;
}

/**
 * Whether a character starting with these bits (`need` continuation bytes to come) can still be a valid
 * one (at least `min`, at most U+10FFFF, not only surrogates) that some stack matches.
 */
function anyMatch(g: Grammar, stacks: readonly GStack[], prefix: number, need: number, min: number): boolean {
  const lo = Math.max(prefix << (6 * need), min);
  const hi = Math.min((prefix << (6 * need)) | ((1 << (6 * need)) - 1), 0x10ffff);
  if (lo > hi || (lo >= 0xd800 && hi <= 0xdfff)) return false;
  for (const s of stacks) if (s !== null && matchesSome(elemAt(g, s) as CharElem, lo, hi)) return true;
  return false;
}

export function feedGrammar(g: Grammar, st: GState, bytes: Uint8Array): GState | null {
  let s: GState | null = st;
  for (let k = 0; k < bytes.length && s !== null; k++) s = stepGrammar(g, s, bytes[k]!);
  return s;
}

/** The output may end here. */
export function grammarCanEnd(st: GState): boolean {
  return st.need === 0 && st.stacks.includes(null);
}

/** The output must end here: nothing can follow. */
export function grammarMustEnd(st: GState): boolean {
  return st.need === 0 && st.stacks.every((s) => s === null);
}
