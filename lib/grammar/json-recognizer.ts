// A byte-level recognizer for JSON text that follows a compiled schema (json-schema.ts), used to
// constrain sampling: for each candidate token it answers "can the output still become valid JSON if
// these bytes come next?". It is a pushdown automaton whose stack is an immutable linked list of
// frames, so a state can be extended by many candidate tokens without copying; `anyOf` makes it
// nondeterministic, so a state is a list of stacks (one per live alternative).
//
// The language is JSON (RFC 8259) with bounds that keep a model from looping forever in a place where
// the schema gives it no way out (as llama.cpp's JSON grammar does): whitespace between two tokens of
// JSON is nothing, one space or tab, or one newline followed by at most MAX_INDENT spaces and tabs
// (pretty-printed JSON fits); at most MAX_DIGITS digits in a number's integer or fraction part (3 in its
// exponent); and no whitespace after the top-level value (the document ends with its last byte). Strings must be valid
// UTF-8 (lead/continuation ranges as in RFC 3629), with JSON's escapes.

/** The schema, compiled. Nodes may form cycles (recursive `$ref`). */
export type SchemaNode =
  | { kind: "any" }
  | {
      kind: "object";
      /** Properties in the order they must appear; keys as their JSON text minus the opening quote. */
      props: { name: string; key: Uint8Array; node: SchemaNode; required: boolean }[];
      /** Values of keys not in `props` (free-form objects); null: only `props`. */
      extra: SchemaNode | null;
    }
  | { kind: "array"; items: SchemaNode; min: number; max: number }
  | { kind: "string"; min: number; max: number }
  | { kind: "number"; integer: boolean }
  /** One of these exact JSON texts (enum, const, true/false/null). */
  | { kind: "literal"; texts: Uint8Array[] }
  | { kind: "anyOf"; options: SchemaNode[] };

export const MAX_INDENT = 32;
export const MAX_DIGITS = 24;
const MAX_EXP_DIGITS = 3;

/** A stack of frames; null is the empty stack: the document is complete. */
export type Stack = Frame | null;
/** A recognizer state: every stack still alive (empty array: dead). */
export type State = readonly Stack[];

const enum T {
  Value,
  Literal,
  String,
  Number,
  Object,
  Array,
}

// Frames. `k` is the continuation: the stack to resume once this frame's construct is complete.
type Frame = ValueF | LiteralF | StringF | NumberF | ObjectF | ArrayF;
/**
 * Whitespace so far in the current gap (`ws` in the frames below): 0 none, 1 one space or tab (no
 * more), 2 + n a newline and n spaces or tabs.
 */
function nextWs(ws: number, b: number): number {
  if (b === 0x0a) return ws === 0 ? 2 : -1;
  if (b === 0x0d) return -1;
  if (ws === 0) return 1;
  return ws >= 2 && ws - 2 < MAX_INDENT ? ws + 1 : -1;
}

/** Expecting (whitespace then) a value of `node`. */
interface ValueF { t: T.Value; k: Stack; node: SchemaNode; ws: number }
/** Inside an exact text: `bytes[i]` comes next. */
interface LiteralF { t: T.Literal; k: Stack; bytes: Uint8Array; i: number }
/**
 * Inside a string, after the opening quote. len: characters so far; esc: 1 after a backslash, 2..5 =
 * hex digits of a \u escape still expected plus one; cont: UTF-8 continuation bytes still expected,
 * the next one in [lo, hi].
 */
interface StringF { t: T.String; k: Stack; min: number; max: number; len: number; esc: number; cont: number; lo: number; hi: number }
/**
 * Inside a number. ph: 0 after '-', 1 after a leading 0, 2 integer digits, 3 after '.', 4 fraction
 * digits, 5 after e/E, 6 after the exponent's sign, 7 exponent digits. nd: digits in the current part.
 */
interface NumberF { t: T.Number; k: Stack; integer: boolean; ph: number; nd: number }
/**
 * Inside an object. ph: 0 after '{', 1 after ',', 2 after a key (':' next), 3 after a value.
 * idx: the index in props of the last key (-1: none yet, or a free key).
 */
interface ObjectF { t: T.Object; k: Stack; node: Extract<SchemaNode, { kind: "object" }>; ph: number; idx: number; ws: number; free: boolean }
/** Inside an array. ph: 0 after '[', 1 after a value, 2 after ','. n: values so far. */
interface ArrayF { t: T.Array; k: Stack; node: Extract<SchemaNode, { kind: "array" }>; ph: number; n: number; ws: number }

const isWs = (b: number): boolean => b === 0x20 || b === 0x0a || b === 0x09 || b === 0x0d;
const isDigit = (b: number): boolean => b >= 0x30 && b <= 0x39;
const isHex = (b: number): boolean => isDigit(b) || (b >= 0x41 && b <= 0x46) || (b >= 0x61 && b <= 0x66);

const TRUE = utf8("true");
const FALSE = utf8("false");
const NULL = utf8("null");
const ANY: SchemaNode = { kind: "any" };
const ANY_OBJECT: SchemaNode = { kind: "object", props: [], extra: ANY };
const ANY_ARRAY: SchemaNode = { kind: "array", items: ANY, min: 0, max: Infinity };
const ANY_STRING: SchemaNode = { kind: "string", min: 0, max: Infinity };
const ANY_NUMBER: SchemaNode = { kind: "number", integer: false };
const ANY_LITERAL: SchemaNode = { kind: "literal", texts: [TRUE, FALSE, NULL] };

export function utf8(s: string): Uint8Array {
  return new TextEncoder().encode(s);
}

/** The state before any byte: a document holding one value of `root`. */
export function initialState(root: SchemaNode): State {
  return [{ t: T.Value, k: null, node: root, ws: 0 }];
}

/** Feeds one byte (0..255) to every stack of `state`; appends the surviving stacks to `out`. */
export function stepState(state: State, b: number, out: Stack[]): void {
  for (const s of state) if (s !== null) step(s, b, out);
}

/** Feeds `bytes` in order; returns the state after them (empty: rejected). */
export function feed(state: State, bytes: Uint8Array): State {
  let cur: State = state;
  for (let i = 0; i < bytes.length && cur.length > 0; i++) {
    const next: Stack[] = [];
    stepState(cur, bytes[i]!, next);
    cur = next;
  }
  return cur;
}

/** Whether the document may end here (a complete value, nothing open). */
export function canEnd(state: State): boolean {
  for (const s of state) if (endsHere(s)) return true;
  return false;
}

/** Whether the document must end here: complete, and no byte can extend it. */
export function mustEnd(state: State): boolean {
  return state.length > 0 && state.every((s) => s === null);
}

function endsHere(s: Stack): boolean {
  // A number ends with the first byte that is not part of it, so one at the top level is complete
  // as soon as it could stop.
  while (s !== null && s.t === T.Number && numberComplete(s)) s = s.k;
  return s === null;
}

function numberComplete(f: NumberF): boolean {
  return f.ph === 1 || f.ph === 2 || f.ph === 4 || f.ph === 7;
}

/** The transition function. */
function step(f: Frame, b: number, out: Stack[]): void {
  switch (f.t) {
    case T.Value:
      return stepValue(f, b, out);
    case T.Literal:
      if (f.bytes[f.i] === b) out.push(f.i + 1 === f.bytes.length ? f.k : { t: T.Literal, k: f.k, bytes: f.bytes, i: f.i + 1 });
      return;
    case T.String:
      return stepString(f, b, out);
    case T.Number:
      return stepNumber(f, b, out);
    case T.Object:
      return stepObject(f, b, out);
    case T.Array:
      return stepArray(f, b, out);
  }
}

function stepValue(f: ValueF, b: number, out: Stack[]): void {
  if (isWs(b)) {
    const ws = nextWs(f.ws, b);
    if (ws >= 0) out.push({ t: T.Value, k: f.k, node: f.node, ws });
    return;
  }
  startValue(f.node, f.k, b, out);
}

/** The first byte `b` (not whitespace) of a value of `node`, continuing with `k`. */
function startValue(node: SchemaNode, k: Stack, b: number, out: Stack[]): void {
  switch (node.kind) {
    case "any":
      if (b === 0x7b) return startValue(ANY_OBJECT, k, b, out);
      if (b === 0x5b) return startValue(ANY_ARRAY, k, b, out);
      if (b === 0x22) return startValue(ANY_STRING, k, b, out);
      if (b === 0x2d || isDigit(b)) return startValue(ANY_NUMBER, k, b, out);
      return startValue(ANY_LITERAL, k, b, out);
    case "object":
      if (b === 0x7b) out.push({ t: T.Object, k, node, ph: 0, idx: -1, ws: 0, free: false });
      return;
    case "array":
      if (b === 0x5b) out.push({ t: T.Array, k, node, ph: 0, n: 0, ws: 0 });
      return;
    case "string":
      if (b === 0x22) out.push({ t: T.String, k, min: node.min, max: node.max, len: 0, esc: 0, cont: 0, lo: 0, hi: 0 });
      return;
    case "number":
      if (b === 0x2d) out.push({ t: T.Number, k, integer: node.integer, ph: 0, nd: 0 });
      else if (b === 0x30) out.push({ t: T.Number, k, integer: node.integer, ph: 1, nd: 1 });
      else if (isDigit(b)) out.push({ t: T.Number, k, integer: node.integer, ph: 2, nd: 1 });
      return;
    case "literal":
      for (const text of node.texts) {
        if (text[0] === b) out.push(text.length === 1 ? k : { t: T.Literal, k, bytes: text, i: 1 });
      }
      return;
    case "anyOf":
      for (const o of node.options) startValue(o, k, b, out);
      return;
  }
}

function stepString(f: StringF, b: number, out: Stack[]): void {
  const more = (len: number, esc: number, cont: number, lo: number, hi: number): void => {
    out.push({ t: T.String, k: f.k, min: f.min, max: f.max, len, esc, cont, lo, hi });
  };
  if (f.cont > 0) {
    if (b >= f.lo && b <= f.hi) more(f.cont === 1 ? f.len + 1 : f.len, 0, f.cont - 1, 0x80, 0xbf);
    return;
  }
  if (f.esc === 1) {
    // " \ / b f n r t, or u and four hex digits
    if (b === 0x22 || b === 0x5c || b === 0x2f || b === 0x62 || b === 0x66 || b === 0x6e || b === 0x72 || b === 0x74) more(f.len + 1, 0, 0, 0, 0);
    else if (b === 0x75) more(f.len, 5, 0, 0, 0);
    return;
  }
  if (f.esc > 1) {
    if (isHex(b)) more(f.esc === 2 ? f.len + 1 : f.len, f.esc === 2 ? 0 : f.esc - 1, 0, 0, 0);
    return;
  }
  if (b === 0x22) {
    if (f.len >= f.min) out.push(f.k);
    return;
  }
  if (b < 0x20 || f.len >= f.max) return; // control characters must be escaped; or the string is full
  if (b === 0x5c) return more(f.len, 1, 0, 0, 0);
  if (b < 0x80) return more(f.len + 1, 0, 0, 0, 0);
  // A UTF-8 lead byte: how many continuation bytes follow, and the range of the first one (which
  // excludes overlong forms, surrogates and code points above U+10FFFF).
  if (b >= 0xc2 && b <= 0xdf) more(f.len, 0, 1, 0x80, 0xbf);
  else if (b === 0xe0) more(f.len, 0, 2, 0xa0, 0xbf);
  else if (b === 0xed) more(f.len, 0, 2, 0x80, 0x9f);
  else if (b >= 0xe1 && b <= 0xef) more(f.len, 0, 2, 0x80, 0xbf);
  else if (b === 0xf0) more(f.len, 0, 3, 0x90, 0xbf);
  else if (b >= 0xf1 && b <= 0xf3) more(f.len, 0, 3, 0x80, 0xbf);
  else if (b === 0xf4) more(f.len, 0, 3, 0x80, 0x8f);
}

function stepNumber(f: NumberF, b: number, out: Stack[]): void {
  const go = (ph: number, nd: number): void => {
    out.push({ t: T.Number, k: f.k, integer: f.integer, ph, nd });
  };
  const d = isDigit(b);
  switch (f.ph) {
    case 0: // after '-'
      if (b === 0x30) return go(1, 1);
      if (d) return go(2, 1);
      return;
    case 1: // "0" or "-0"
    case 2: // integer digits
      if (d) {
        if (f.ph === 2 && f.nd < MAX_DIGITS) go(2, f.nd + 1);
        return; // no leading zeros
      }
      if (!f.integer && b === 0x2e) return go(3, 0);
      if (!f.integer && (b === 0x65 || b === 0x45)) return go(5, 0);
      return end(f, b, out);
    case 3: // after '.'
      if (d) go(4, 1);
      return;
    case 4: // fraction digits
      if (d) {
        if (f.nd < MAX_DIGITS) go(4, f.nd + 1);
        return;
      }
      if (b === 0x65 || b === 0x45) return go(5, 0);
      return end(f, b, out);
    case 5: // after e/E
      if (b === 0x2b || b === 0x2d) return go(6, 0);
      if (d) go(7, 1);
      return;
    case 6: // after the exponent's sign
      if (d) go(7, 1);
      return;
    case 7: // exponent digits
      if (d) {
        if (f.nd < MAX_EXP_DIGITS) go(7, f.nd + 1);
        return;
      }
      return end(f, b, out);
  }
}

/** A complete number met a byte that is not part of it: the byte belongs to what follows. */
function end(f: NumberF, b: number, out: Stack[]): void {
  if (f.k !== null) step(f.k, b, out);
}

function stepObject(f: ObjectF, b: number, out: Stack[]): void {
  const node = f.node;
  const props = node.props;
  if (isWs(b)) {
    const ws = nextWs(f.ws, b);
    if (ws >= 0) out.push({ ...f, ws });
    return;
  }
  const at = (ph: number, idx: number, free: boolean): ObjectF => ({ t: T.Object, k: f.k, node, ph, idx, ws: 0, free });
  switch (f.ph) {
    case 0: // after '{'
    case 1: // after ','
      if (b === 0x7d) {
        if (f.ph === 0 && !requiredAfter(props, -1)) out.push(f.k);
        return;
      }
      if (b !== 0x22) return;
      // The next key: any later property, up to and including the first required one (properties
      // come in schema order, none required may be skipped), or any other key when the object is free.
      for (let j = f.idx + 1; j < props.length; j++) {
        out.push({ t: T.Literal, k: at(2, j, false), bytes: props[j]!.key, i: 0 });
        if (props[j]!.required) break;
      }
      if (node.extra) out.push({ t: T.String, k: at(2, f.idx, true), min: 0, max: Infinity, len: 0, esc: 0, cont: 0, lo: 0, hi: 0 });
      return;
    case 2: // after a key
      if (b === 0x3a) {
        const value = f.free ? node.extra! : props[f.idx]!.node;
        out.push({ t: T.Value, k: at(3, f.idx, false), node: value, ws: 0 });
      }
      return;
    case 3: // after a value
      if (b === 0x2c) {
        if (node.extra || f.idx + 1 < props.length) out.push(at(1, f.idx, false));
      } else if (b === 0x7d) {
        if (!requiredAfter(props, f.idx)) out.push(f.k);
      }
      return;
  }
}

function requiredAfter(props: Extract<SchemaNode, { kind: "object" }>["props"], idx: number): boolean {
  for (let j = idx + 1; j < props.length; j++) if (props[j]!.required) return true;
  return false;
}

function stepArray(f: ArrayF, b: number, out: Stack[]): void {
  const node = f.node;
  if (isWs(b)) {
    const ws = nextWs(f.ws, b);
    if (ws >= 0) out.push({ ...f, ws });
    return;
  }
  switch (f.ph) {
    case 0: // after '['
    case 2: // after ','
      if (b === 0x5d) {
        if (f.ph === 0 && node.min === 0) out.push(f.k);
        return;
      }
      if (f.ph === 0 && node.max === 0) return;
      startValue(node.items, { t: T.Array, k: f.k, node, ph: 1, n: f.n + 1, ws: 0 }, b, out);
      return;
    case 1: // after a value
      if (b === 0x2c) {
        if (f.n < node.max) out.push({ t: T.Array, k: f.k, node, ph: 2, n: f.n, ws: 0 });
      } else if (b === 0x5d) {
        if (f.n >= node.min) out.push(f.k);
      }
      return;
  }
}

/**
 * How many more characters the string being generated may take, when the state is exactly one stack
 * inside a string between characters (no escape or UTF-8 sequence open); -1 otherwise. In that case any
 * "plain" token (see plainChars) of at most that many characters is allowed, whatever its bytes.
 */
export function plainStringRoom(state: State): number {
  if (state.length !== 1) return -1;
  const f = state[0]!;
  if (f === null || f.t !== T.String || f.esc !== 0 || f.cont !== 0) return -1;
  return f.max - f.len;
}

/**
 * The characters of `bytes` when they can sit anywhere inside a JSON string without ending it or
 * opening an escape: printable ASCII other than '"' and '\', and complete well-formed UTF-8
 * characters. -1 for anything else.
 */
export function plainChars(bytes: Uint8Array): number {
  let chars = 0;
  for (let i = 0; i < bytes.length; chars++) {
    const b = bytes[i]!;
    if (b < 0x80) {
      if (b < 0x20 || b === 0x22 || b === 0x5c) return -1;
      i++;
      continue;
    }
    let n: number;
    let lo = 0x80;
    let hi = 0xbf;
    if (b >= 0xc2 && b <= 0xdf) n = 1;
    else if (b === 0xe0) [n, lo] = [2, 0xa0];
    else if (b === 0xed) [n, hi] = [2, 0x9f];
    else if (b >= 0xe1 && b <= 0xef) n = 2;
    else if (b === 0xf0) [n, lo] = [3, 0x90];
    else if (b >= 0xf1 && b <= 0xf3) n = 3;
    else if (b === 0xf4) [n, hi] = [3, 0x8f];
    else return -1;
    if (i + n >= bytes.length) return -1; // the character is cut by the token's end
    for (let j = 1; j <= n; j++) {
      const c = bytes[i + j]!;
      if (c < (j === 1 ? lo : 0x80) || c > (j === 1 ? hi : 0xbf)) return -1;
    }
    i += n + 1;
  }
  return chars;
}
