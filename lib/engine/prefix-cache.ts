// The prefix cache: native sequences that hold the KV cache of token prefixes (a shared system
// prompt, a whole previous dialog), kept so that a request whose prompt starts with the same tokens
// forks one (the fork shares the KV blocks; the engine copies a shared partial last block on write)
// and prefills only the rest. Entries come from `Llama2.cachePrefix`, from requests once their
// prompt is prefilled (a fork up to the prompt's last full block) and when they complete (the
// request's own sequence: prompt + reply), and from sessions that are reset or disposed.
//
// Bounded by entry count (least recently used out first). Entries hold KV blocks that admission
// control in llama2.ts does not see as free: when a request does not fit it evicts entries here,
// least recently used first, before it waits or fails. Blocks shared with live sequences stay
// allocated until those end; evicting an entry only drops the cache's reference.
//
// Exactness: a token's K/V depend only on the tokens before it, and the engine computes each row
// independently of what else is in the batch, so a forked prefix holds exactly the values a fresh
// prefill would have written (bit for bit on the CPU backend).
import type { NativeModel } from "../native.js";

export interface PrefixCacheOptions {
  /** Most cached prefixes (default 32). */
  maxEntries?: number;
  /** KV block size of the engine (tokens). */
  blockSize: number;
  /** Shortest match worth forking (default: one block). */
  minTokens?: number;
}

export interface PrefixCacheStats {
  entries: number;
  /** Tokens held by all entries (shared tokens counted once per entry). */
  tokens: number;
  /** Requests that started from a cached prefix / that looked and found none. */
  hits: number;
  misses: number;
  /** Prompt tokens not prefilled thanks to hits. */
  hitTokens: number;
  inserts: number;
  evictions: number;
}

interface Entry {
  seq: number;
  tokens: Int32Array;
  lastUse: number;
}

export interface PrefixMatch {
  /** @internal */
  entry: Entry;
  /** Tokens of the prompt the entry holds (what a fork keeps). */
  length: number;
}

/** Length of the common prefix of a and b. */
export function commonPrefix(a: ArrayLike<number>, b: ArrayLike<number>, limit = Infinity): number {
  const n = Math.min(a.length, b.length, limit);
  let i = 0;
  while (i < n && a[i] === b[i]) i++;
  return i;
}

export class PrefixCache {
  readonly maxEntries: number;
  readonly blockSize: number;
  readonly minTokens: number;
  private entries: Entry[] = [];
  private clock = 0;
  private closed = false;
  private readonly counters = { hits: 0, misses: 0, hitTokens: 0, inserts: 0, evictions: 0 };

  constructor(private readonly model: NativeModel, opts: PrefixCacheOptions) {
    this.maxEntries = opts.maxEntries ?? 32;
    this.blockSize = opts.blockSize;
    this.minTokens = Math.max(1, opts.minTokens ?? opts.blockSize);
  }

  get size(): number {
    return this.entries.length;
  }

  stats(): PrefixCacheStats {
    let tokens = 0;
    for (const e of this.entries) tokens += e.tokens.length;
    return { entries: this.entries.length, tokens, ...this.counters };
  }

  /** The cached prefixes' token ids, most recently used first (for tests and diagnostics). */
  list(): number[][] {
    return [...this.entries].sort((a, b) => b.lastUse - a.lastUse).map((e) => Array.from(e.tokens));
  }

  /**
   * The entry sharing the longest prefix with `ids`, capped at `limit` tokens (a generation must
   * leave at least one prompt token to evaluate); null below `minTokens`.
   */
  match(ids: ArrayLike<number>, limit = ids.length): PrefixMatch | null {
    let best: PrefixMatch | null = null;
    for (const e of this.entries) {
      const n = commonPrefix(e.tokens, ids, limit);
      if (n < this.minTokens) continue;
      if (!best || n > best.length || (n === best.length && e.lastUse > best.entry.lastUse)) best = { entry: e, length: n };
    }
    return best;
  }

  /** Marks the match's entry as recently used. */
  touch(m: PrefixMatch): void {
    m.entry.lastUse = ++this.clock;
  }

  /** Counts a lookup that found nothing. */
  miss(): void {
    this.counters.misses++;
  }

  /** A new sequence holding exactly the match's tokens (KV blocks shared with the entry). */
  fork(m: PrefixMatch): number {
    const seq = this.model.forkSequence(m.entry.seq);
    try {
      if (m.length < m.entry.tokens.length) this.model.truncateSequence(seq, m.length);
    } catch (err) {
      this.free(seq);
      throw err;
    }
    m.entry.lastUse = ++this.clock;
    this.counters.hits++;
    this.counters.hitTokens += m.length;
    return seq;
  }

  /**
   * Takes ownership of `seq`, whose cache holds exactly `tokens`: keeps it as an entry, or frees it
   * when it is too short or an entry already covers it. Entries it covers are dropped.
   */
  insert(seq: number, tokens: ArrayLike<number>): boolean {
    if (this.closed || tokens.length < this.minTokens) {
      this.free(seq);
      return false;
    }
    for (const e of [...this.entries]) {
      const n = commonPrefix(e.tokens, tokens);
      if (n === tokens.length) {
        // Already cached (as this prefix or a longer one).
        e.lastUse = ++this.clock;
        this.free(seq);
        return false;
      }
      if (n === e.tokens.length) this.remove(e, false); // the new entry covers it
    }
    this.entries.push({ seq, tokens: Int32Array.from(tokens), lastUse: ++this.clock });
    this.counters.inserts++;
    while (this.entries.length > this.maxEntries) this.evictLRU();
    return true;
  }

  /** Caches the first `length` tokens of a live sequence (a fork: the live sequence is untouched). */
  snapshot(seq: number, tokens: ArrayLike<number>, length: number): boolean {
    if (this.closed || length < this.minTokens || length > tokens.length) return false;
    const have = this.match(tokens, length);
    if (have && have.length === length) {
      have.entry.lastUse = ++this.clock;
      return false;
    }
    let copy: number;
    try {
      copy = this.model.forkSequence(seq);
      this.model.truncateSequence(copy, length);
    } catch {
      return false; // busy or gone: the cache is best effort
    }
    return this.insert(copy, Array.prototype.slice.call(tokens, 0, length) as number[]);
  }

  /** At most how many KV blocks evicting every entry but `except` could free (shared blocks count fully). */
  blockBound(except?: PrefixMatch["entry"]): number {
    let n = 0;
    for (const e of this.entries) if (e !== except) n += Math.ceil(e.tokens.length / this.blockSize);
    return n;
  }

  /** Drops the least recently used entry other than `except`; false when there is none. */
  evictLRU(except?: PrefixMatch["entry"]): boolean {
    let lru: Entry | undefined;
    for (const e of this.entries) if (e !== except && (!lru || e.lastUse < lru.lastUse)) lru = e;
    if (!lru) return false;
    this.remove(lru, true);
    return true;
  }

  /** Drops one entry. */
  evict(entry: PrefixMatch["entry"]): boolean {
    if (!this.entries.includes(entry)) return false;
    this.remove(entry, true);
    return true;
  }

  /** Drops every entry (their KV blocks return to the pool unless live sequences share them). */
  clear(): void {
    for (const e of [...this.entries]) this.remove(e, true);
  }

  /** The model is going away: forget the entries without touching native state. */
  close(): void {
    this.closed = true;
    this.entries = [];
  }

  private remove(e: Entry, evicted: boolean): void {
    const i = this.entries.indexOf(e);
    if (i >= 0) this.entries.splice(i, 1);
    if (evicted) this.counters.evictions++;
    this.free(e.seq);
  }

  private free(seq: number): void {
    if (this.closed) return;
    try {
      this.model.freeSequence(seq);
    } catch {
      /* the model was disposed */
    }
  }
}
