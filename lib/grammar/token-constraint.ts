// Constrained generation at the token level: which tokens may come next so that the output can still
// become what a recognizer accepts (a JSON document of the schema, or a GBNF grammar's language). The
// sampler asks about its best candidates one by one (`allows`, cheap: a token's few bytes through the
// recognizer) and only when too few of them pass does it ask for the whole vocabulary at once
// (`fillMask`: one walk of a trie of the tokens' bytes, where a prefix the recognizer rejects prunes every
// token under it).
import { Llama2Error } from "../errors.js";
import { grammarCanEnd, grammarMustEnd, initialGrammarState, stackKey, stepGrammar, type Grammar, type GState } from "./gbnf.js";
import { canEnd, feed, initialState, mustEnd, plainChars, plainStringRoom, stepState, type SchemaNode, type Stack, type State } from "./json-recognizer.js";

/** What the sampler needs from a constraint. */
export interface TokenFilter {
  /** Whether token `id` may come next. */
  allows(id: number): boolean;
  /** Sets mask[id] to 1 for every token that may come next, 0 for the others (mask.length = vocabulary). */
  fillMask(mask: Uint8Array): void;
}

/** A generation's constraint: a TokenFilter that follows the tokens sampled. */
export interface Constraint extends TokenFilter {
  /** Advances past a token the filter allowed. */
  accept(id: number): void;
  /** The output is complete and nothing may follow: generation is over. */
  readonly done: boolean;
  /** The output is complete (EOS may come), though it might still be extended. */
  readonly complete: boolean;
}

/** One byte through a recognizer: the next state, or null when the byte is refused. */
type Step<S> = (state: S, byte: number) => S | null;

const jsonStep: Step<State> = (st, b) => {
  const next: Stack[] = [];
  stepState(st, b, next);
  return next.length > 0 ? next : null;
};

/** The tokens' bytes in a trie, built once per vocabulary. */
class Trie {
  readonly vocabSize: number;
  /** Each token's bytes in decoded text; null for tokens that never appear in constrained output. */
  readonly bytes: readonly (Uint8Array | null)[];
  // Node n's children are childNode[childStart[n] .. childStart[n + 1]), on bytes childByte[...];
  // the tokens whose bytes end at node n are tokens[tokStart[n] .. tokStart[n + 1]).
  private readonly childStart: Int32Array;
  private readonly childByte: Uint8Array;
  private readonly childNode: Int32Array;
  private readonly tokStart: Int32Array;
  private readonly tokens: Int32Array;

  constructor(bytes: readonly (Uint8Array | null)[]) {
    this.vocabSize = bytes.length;
    this.bytes = bytes;
    const kids: Map<number, number>[] = [new Map()];
    const ends: number[][] = [[]];
    bytes.forEach((b, id) => {
      if (!b || b.length === 0) return;
      let n = 0;
      for (const x of b) {
        let c = kids[n]!.get(x);
        if (c === undefined) {
          c = kids.length;
          kids.push(new Map());
          ends.push([]);
          kids[n]!.set(x, c);
        }
        n = c;
      }
      ends[n]!.push(id);
    });
    const N = kids.length;
    this.childStart = new Int32Array(N + 1);
    this.tokStart = new Int32Array(N + 1);
    for (let n = 0; n < N; n++) {
      this.childStart[n + 1] = this.childStart[n]! + kids[n]!.size;
      this.tokStart[n + 1] = this.tokStart[n]! + ends[n]!.length;
    }
    this.childByte = new Uint8Array(this.childStart[N]!);
    this.childNode = new Int32Array(this.childStart[N]!);
    this.tokens = new Int32Array(this.tokStart[N]!);
    for (let n = 0; n < N; n++) {
      let j = this.childStart[n]!;
      for (const [x, c] of kids[n]!) {
        this.childByte[j] = x;
        this.childNode[j++] = c;
      }
      this.tokens.set(ends[n]!, this.tokStart[n]!);
    }
  }

  /** Marks in `mask` every token whose bytes, fed to `state`, leave it alive. */
  walk<S>(state: S, step: Step<S>, mask: Uint8Array): void {
    const nodes: number[] = [0];
    const states: S[] = [state];
    while (nodes.length > 0) {
      const n = nodes.pop()!;
      const st = states.pop()!;
      for (let j = this.childStart[n]!; j < this.childStart[n + 1]!; j++) {
        const next = step(st, this.childByte[j]!);
        if (next === null) continue;
        const c = this.childNode[j]!;
        for (let t = this.tokStart[c]!; t < this.tokStart[c + 1]!; t++) mask[this.tokens[t]!] = 1;
        if (this.childStart[c + 1]! > this.childStart[c]!) {
          nodes.push(c);
          states.push(next);
        }
      }
    }
  }
}

/**
 * The vocabulary for constrained sampling: the tokens that are plain string content (most of the
 * vocabulary: their bytes fit anywhere inside a JSON string) apart, with their character counts, and a
 * trie of the others. Inside a string the mask is then the plain tokens that fit, plus one walk of the
 * small trie, instead of a walk through nearly every token (~5 ms at vocabulary 32000).
 */
export class VocabTrie {
  readonly vocabSize: number;
  readonly bytes: readonly (Uint8Array | null)[];
  private readonly all: Trie;
  private readonly special: Trie;
  /** Plain tokens (ids) and their characters. */
  private readonly plain: Int32Array;
  private readonly plainLen: Int32Array;

  constructor(bytes: readonly (Uint8Array | null)[]) {
    this.vocabSize = bytes.length;
    this.bytes = bytes;
    this.all = new Trie(bytes);
    const plain: number[] = [];
    const plainLen: number[] = [];
    const special = bytes.map((b, id) => {
      const n = b && b.length > 0 ? plainChars(b) : -1;
      if (n < 0) return b;
      plain.push(id);
      plainLen.push(n);
      return null;
    });
    this.special = new Trie(special);
    this.plain = Int32Array.from(plain);
    this.plainLen = Int32Array.from(plainLen);
  }

  /** Marks in `mask` every token whose bytes, fed to `state`, leave it alive. */
  walk(state: State, mask: Uint8Array): void {
    const room = plainStringRoom(state);
    if (room < 0) return this.all.walk(state, jsonStep, mask);
    for (let j = 0; j < this.plain.length; j++) if (this.plainLen[j]! <= room) mask[this.plain[j]!] = 1;
    this.special.walk(state, jsonStep, mask);
  }

  /** The same walk for any byte-level recognizer (no plain-token shortcut). */
  walkWith<S>(state: S, step: Step<S>, mask: Uint8Array): void {
    this.all.walk(state, step, mask);
  }
}

/**
 * A byte-level recognizer (the JSON / JSON Schema one, or a GBNF grammar's) as a constraint needs it:
 * states, bytes through them, where the output may or must end, and the vocabulary walk that suits it.
 */
export interface Recognizer<S> {
  /** Names it in the error for a token handed to accept() that it does not allow. */
  readonly what: string;
  readonly initial: S;
  /** The state after `bytes`, or null when they are refused. */
  feed(state: S, bytes: Uint8Array): S | null;
  canEnd(state: S): boolean;
  mustEnd(state: S): boolean;
  /** Marks in `mask` every token whose bytes, fed to `state`, leave it alive. */
  walk(state: S, mask: Uint8Array): void;
}

/** A generation's constraint: a recognizer's state after the tokens accepted so far. */
export class RecognizerConstraint<S> implements Constraint {
  private state: S;
  /** States after each token checked since the last accept (accept reuses them). */
  private readonly memo = new Map<number, S | null>();

  constructor(
    private readonly recognizer: Recognizer<S>,
    private readonly trie: VocabTrie,
    /** The end-of-sequence token: allowed exactly where the output may end. */
    private readonly eosId: number,
  ) {
    this.state = recognizer.initial;
  }

  allows(id: number): boolean {
    if (id === this.eosId) return this.recognizer.canEnd(this.state);
    return this.after(id) !== null;
  }

  fillMask(mask: Uint8Array): void {
    mask.fill(0);
    this.recognizer.walk(this.state, mask);
    if (this.eosId >= 0 && this.eosId < mask.length) mask[this.eosId] = this.recognizer.canEnd(this.state) ? 1 : 0;
  }

  accept(id: number): void {
    if (id === this.eosId) return;
    const next = this.after(id);
    if (next === null) throw new Llama2Error("ERR_INTERNAL", `${this.recognizer.what} was handed token ${id}, which it does not allow`);
    this.state = next;
    this.memo.clear();
  }

  /** The output so far is complete and no token can extend it: generation is over. */
  get done(): boolean {
    return this.recognizer.mustEnd(this.state);
  }

  /** The output so far is complete (it may still be extended, e.g. a top-level number). */
  get complete(): boolean {
    return this.recognizer.canEnd(this.state);
  }

  private after(id: number): S | null {
    let s = this.memo.get(id);
    if (s === undefined) {
      const b = this.trie.bytes[id];
      s = b && b.length > 0 ? this.recognizer.feed(this.state, b) : null;
      this.memo.set(id, s);
    }
    return s;
  }
}

/** JSON (optionally of a schema): the vocabulary walk takes the plain-string-token shortcut. */
export function jsonRecognizer(root: SchemaNode, trie: VocabTrie): Recognizer<State> {
  return {
    what: "the JSON constraint",
    initial: initialState(root),
    feed: (st, bytes) => {
      const next = feed(st, bytes);
      return next.length > 0 ? next : null;
    },
    canEnd,
    mustEnd,
    walk: (st, mask) => trie.walk(st, mask),
  };
}

/**
 * A GBNF grammar. States are interned (one object per distinct set of stacks) and each state's
 * transitions memoized, so the vocabulary walk mostly looks transitions up: inside a JSON string every
 * ordinary character leads back to the same state.
 */
export function grammarRecognizer(grammar: Grammar, trie: VocabTrie): Recognizer<GState> {
  const interned = new Map<string, GState>();
  const transitions = new Map<GState, (GState | null | undefined)[]>();
  const canonical = (st: GState): GState => {
    const key = `${st.need},${st.cp},${st.min}|${st.stacks.map(stackKey).sort().join(";")}`;
    const have = interned.get(key);
    if (have !== undefined) return have;
    if (interned.size >= 65536) {
      // Bounded memory: start over (the live state stays valid; it is re-interned on first use).
      interned.clear();
      transitions.clear();
    }
    interned.set(key, st);
    return st;
  };
  const step: Step<GState> = (st, b) => {
    let row = transitions.get(st);
    if (row === undefined) {
      row = new Array<GState | null | undefined>(256);
      transitions.set(st, row);
    }
    let next = row[b];
    if (next === undefined) {
      const n = stepGrammar(grammar, st, b);
      next = row[b] = n === null ? null : canonical(n);
    }
    return next;
  };
  return {
    what: "the grammar constraint",
    initial: canonical(initialGrammarState(grammar)),
    feed: (st, bytes) => {
      let s: GState | null = st;
      for (let k = 0; k < bytes.length && s !== null; k++) s = step(s, bytes[k]!);
      return s;
    },
    canEnd: grammarCanEnd,
    mustEnd: grammarMustEnd,
    walk: (st, mask) => trie.walkWith(st, step, mask),
  };
}
