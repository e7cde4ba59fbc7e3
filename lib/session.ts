// A chat session: the conversation's tokens stay in one native sequence's KV cache, so each turn
// prefills only the new user turn (plus what closes the previous reply), never the history. When the
// KV cache runs out and nothing running will free blocks, an idle session is "parked": its sequence
// goes to the prefix cache (evictable, least recently used first) and its next turn prompts the whole
// conversation again, starting from whatever of it is still cached.
//
// Context shift: when a turn plus room for its reply would not fit the context, the oldest exchanges
// (user + assistant pairs; the system prompt stays) leave the model's window and the remaining dialog is
// prompted again through the template's encodeDialog. The KV of the common prefix (the start of the
// first turn, with the system prompt) is kept; the rest is prefilled once, and the drop goes an eighth of
// the context past the need so that the next turns append again instead of re-prompting each time.
import type { ChatTemplate } from "./chat-template.js";
import { InvalidArgumentError, Llama2Error, showValue } from "./errors.js";
import type { GenerationPlan, Llama2 } from "./llama2.js";
import type { NativeModel } from "./native.js";
import type { ChatMessage, GenerateOptions, GenerationStream } from "./types.js";
import { blocksPerChunk, writeSessionState, type OpenedState, type SessionStateHeader } from "./session-state.js";

export class ChatSession {
  /** The conversation so far (system prompt excluded). */
  readonly messages: ChatMessage[] = [];
  private seq: number | null = null;
  /** Tokens that belong to the conversation but are not in the cache yet (end of the last reply). */
  private pending: number[] = [];
  /** The token ids in the cache (what the prefix cache may keep when the session resets or ends). */
  private tokens: number[] = [];
  /** The cache holds only a prefix of the window's dialog (after a shift that did not complete). */
  private stale = false;
  /** Messages at the start of `messages` that no longer fit the context. */
  private dropped = 0;
  private busy = false;
  private disposed = false;
  /** The running turn's stream (dispose() mid-turn aborts it). */
  private turn: GenerationStream | null = null;
  /** When the last turn started (which idle session to park first). @internal */
  _lastUsed = 0;

  constructor(
    private readonly llama: Llama2,
    private readonly template: ChatTemplate,
    readonly systemPrompt?: string,
    private readonly contextShift = true,
    resume?: readonly ChatMessage[],
  ) {
    if (systemPrompt !== undefined && typeof systemPrompt !== "string") throw new InvalidArgumentError("systemPrompt", "expected a string");
    if (typeof contextShift !== "boolean") throw new InvalidArgumentError("contextShift", "expected a boolean");
    if (resume !== undefined) {
      this.messages.push(...checkHistory(resume, "options.messages"));
      this.stale = this.messages.length > 0; // nothing of it is cached: the first turn prompts it all
    }
  }

  /**
   * How many of the earliest `messages` have left the model's context (context shift): the model no
   * longer sees them. Always even (whole exchanges); 0 until the conversation outgrows the context.
   */
  get droppedMessages(): number {
    return this.dropped;
  }

  /** Tokens of the conversation held in the KV cache. */
  get cachedTokens(): number {
    return this.seq === null || this.disposed || !this.llama._alive ? 0 : this.llama._native().sequenceLength(this.seq);
  }

  /** Sends a user message; the reply streams back and joins `messages` when it ends. */
  send(content: string, opts: GenerateOptions = {}): GenerationStream {
    if (this.disposed) throw new Llama2Error("ERR_DISPOSED", "the session has been disposed");
    if (typeof content !== "string") throw new InvalidArgumentError("content", "expected a string");
    if (this.busy) throw new InvalidArgumentError("session", "already generating a reply; wait for it or abort it");
    this.llama._checkOptions(opts);
    const tok = this.llama.tokenizer;
    if (!tok) throw new Llama2Error("ERR_TOKENIZER", "chat sessions need a model with a tokenizer");
    const user: ChatMessage = { role: "user", content };
    const system: ChatMessage[] = this.systemPrompt !== undefined ? [{ role: "system", content: this.systemPrompt }] : [];
    const dialog = (from: number) => [...system, ...this.messages.slice(from), user];
    const appended = this.stale ? null : this.template.encodeUserTurn(dialog(this.dropped), tok);
    const native = this.llama._native();
    // The whole window's dialog, when it must be prompted again (a shift now, one that did not complete,
    // or a template that cannot append a turn).
    let reprompt = appended ? null : this.template.encodeDialog(dialog(this.dropped), tok);
    let turn = appended ?? [];
    if (this.contextShift) {
      const ctx = this.llama.info.contextLength;
      // The reply's room: its maxTokens (at most half the context, so that a large one does not wipe the
      // history every turn), or a quarter of the context.
      const room = Math.min(opts.maxTokens ?? Math.floor(ctx / 4), Math.floor(ctx / 2));
      const size = reprompt ? reprompt.length : this.tokens.length + this.pending.length + turn.length;
      if (size + room > ctx && this.dropped < this.messages.length) {
        const target = ctx - room - Math.floor(ctx / 8);
        // The fewest exchanges to drop (k of them) so that the window fits `target`, or all of them: a
        // binary search, since the dialog shrinks as exchanges leave (log2(n) encodings, not n).
        const encoded = new Map<number, number[]>();
        const encode = (k: number): number[] => {
          let ids = encoded.get(k);
          if (!ids) encoded.set(k, (ids = this.template.encodeDialog(dialog(this.dropped + 2 * k), tok)));
          return ids;
        };
        let lo = 1;
        let hi = Math.ceil((this.messages.length - this.dropped) / 2);
        while (lo < hi) {
          const mid = (lo + hi) >> 1;
          if (encode(mid).length <= target) hi = mid;
          else lo = mid + 1;
        }
        const from = this.dropped + 2 * lo;
        const ids = encode(lo);
        // Applied only when the new turn then fits at all (otherwise the turn fails as it would have, and
        // the conversation is untouched).
        if (ids.length < ctx) {
          this.dropped = from;
          reprompt = ids;
        }
      }
    }
    if (reprompt) {
      // Keep the KV of what the cache and the new prompt share (the cache is known to hold this.tokens).
      let keep = 0;
      if (this.seq !== null) {
        if (this.tokens.length === native.sequenceLength(this.seq)) {
          const limit = Math.min(this.tokens.length, reprompt.length - 1);
          while (keep < limit && this.tokens[keep] === reprompt[keep]) keep++;
        }
        native.truncateSequence(this.seq, keep);
      }
      this.tokens = reprompt.slice(0, keep);
      this.pending = [];
      this.stale = true;
      turn = reprompt.slice(keep);
    }
    // Parked (or never started): the conversation so far is not in a sequence of ours: prompt all of it.
    // (park() below may switch a turn still waiting for KV room to that too.)
    let parked = this.seq === null && this.tokens.length > 0;
    if (this.seq === null) this.seq = native.createSequence();
    let cached = native.sequenceLength(this.seq);
    let base = parked ? [] : this.tokens; // the cached tokens the prompt continues
    const fresh = [...this.pending, ...turn]; // what this turn adds (the penalties' history, parked or not)
    let prompt = [...(parked ? this.tokens : []), ...fresh];
    const known = parked || this.tokens.length === cached;
    this.busy = true;
    this._lastUsed = performance.now();
    // An empty session may start from a cached prefix (the system prompt, or a dialog another
    // request or session already evaluated): admission then swaps in a fork of it (onSequence).
    const plan: GenerationPlan = {
      seq: this.seq,
      prompt,
      cached,
      history: fresh,
      stripLeadingSpace: true,
      ownsSequence: false,
      ...(known && { context: base.slice() }),
      reuse: cached === 0 && this.llama._prefixCacheEnabled,
      templateStops: this.template.stopStrings,
      ...(this.template.stopTokenIds && { templateStopIds: this.template.stopTokenIds }),
      // Waiting for KV room (its sequence in no step): hand the conversation's KV to the prefix cache and
      // prompt all of it instead, as a parked session's next turn does. cached + prompt stays the same.
      park: () => {
        if (parked || this.disposed || !known || plan.seq !== this.seq || cached === 0 || cached !== this.tokens.length) return false;
        if (native.sequenceLength(plan.seq) !== cached) return false;
        const empty = native.createSequence();
        this.llama._cacheSequence(plan.seq, this.tokens, true);
        this.seq = plan.seq = empty;
        parked = true;
        prompt = plan.prompt = [...this.tokens, ...plan.prompt];
        base = [];
        cached = plan.cached = 0;
        plan.context = [];
        plan.reuse = this.llama._prefixCacheEnabled;
        return true;
      },
      onSequence: (seq) => {
        if (!this.disposed) {
          this.seq = seq;
          return;
        }
        try {
          native.freeSequence(seq); // disposed while waiting: the turn fails like any other
        } catch {
          /* model disposed */
        }
      },
      onEnd: ({ generated, evaluated, text, error, shifted }) => {
        this.busy = false;
        this.turn = null;
        if (this.disposed) {
          // dispose() came mid-turn: the sequence is freed now that no step uses it.
          this.freeSequence();
          return;
        }
        const seq = plan.seq;
        if (error !== undefined || evaluated < plan.prompt.length) {
          // The turn never fully reached the cache: forget it (a parked session stays parked).
          if (parked) {
            this.freeSequence();
            return;
          }
          try {
            native.truncateSequence(seq, cached);
          } catch {
            /* model disposed */
          }
          return;
        }
        if (!this.llama._alive) return; // the model was disposed as the turn ended
        if (shifted) {
          // The reply went past the context: the sequence holds a cut of the dialog, so the next turn
          // prompts the window again (keeping what it shares with that cut).
          this.tokens = shifted;
          this.pending = [];
          this.stale = true;
          this.messages.push(user, { role: "assistant", content: text });
          return;
        }
        const inCache = native.sequenceLength(seq) - cached - prompt.length;
        if (known) this.tokens = [...base, ...prompt, ...generated.slice(0, inCache)];
        this.stale = false;
        this.pending = [...generated.slice(inCache), ...this.template.assistantEnd(generated, tok)];
        this.messages.push(user, { role: "assistant", content: text });
      },
    };
    const stream = this.llama._run(plan, opts);
    this.turn = stream;
    return stream;
  }

  /**
   * @internal Hands an idle session's sequence to the prefix cache (or frees it) to make KV room; its
   * next turn re-prompts the conversation. False when the session is busy, empty or not parkable.
   */
  _park(): boolean {
    if (this.busy || this.disposed || !this.llama._alive || !this.holdsTokens(this.llama._native())) return false;
    this.llama._cacheSequence(this.seq!, this.tokens, true);
    this.seq = null;
    return true;
  }

  /**
   * Writes the conversation and its KV cache to `file` (replaced if it exists; written as a temporary
   * and renamed), for `Llama2.restoreSession` to resume without evaluating the history again. Waits for
   * nothing: throws while a reply is being generated. A parked session saves its messages only (the
   * restored one prompts them again).
   */
  async save(file: string): Promise<{ bytes: number; cachedTokens: number }> {
    if (this.disposed) throw new Llama2Error("ERR_DISPOSED", "the session has been disposed");
    if (typeof file !== "string" || file === "") throw new InvalidArgumentError("file", "expected a path");
    if (this.busy) throw new InvalidArgumentError("session", "generating a reply; wait for it or abort it");
    const native = this.llama._native();
    const fingerprint = await this.llama._fingerprint();
    if (this.busy) throw new InvalidArgumentError("session", "generating a reply; wait for it or abort it");
    this.busy = true; // no turn may start (or park this session) while its blocks are read
    try {
      const held = this.holdsTokens(native);
      const tokens = held ? this.tokens.slice() : [];
      const seq = this.seq;
      const header: SessionStateHeader = {
        version: 1,
        model: fingerprint,
        tokens,
        session: {
          ...(this.systemPrompt !== undefined && { systemPrompt: this.systemPrompt }),
          template: this.template.name,
          contextShift: this.contextShift,
          messages: this.messages.slice(),
          dropped: this.dropped,
          pending: held ? this.pending.slice() : [],
          stale: held ? this.stale : this.messages.length > 0,
        },
      };
      const bytes = await writeSessionState(file, header, Math.ceil(tokens.length / native.kvState().blockSize), (first, count, buf) =>
        native.readSequenceBlocks(seq!, first, count, buf),
      );
      return { bytes, cachedTokens: tokens.length };
    } finally {
      this.busy = false;
    }
  }

  /** @internal Takes a saved session's state and KV (Llama2.restoreSession). */
  async _restore(state: OpenedState, file: string, signal?: AbortSignal): Promise<void> {
    const h = state.header;
    const s = h.session;
    const V = this.llama.info.config.vocabSize;
    const bad = (what: string): never => {
      throw new Llama2Error("ERR_SESSION_STATE", `${file}: ${what}`);
    };
    if (h.tokens.some((id) => id >= V) || s.pending.some((id) => id >= V)) bad(`token ids past the vocabulary of ${V}`);
    if (h.tokens.length + s.pending.length > this.llama.info.contextLength) {
      bad(`${h.tokens.length + s.pending.length} tokens do not fit this model's context of ${this.llama.info.contextLength} (load it with a larger contextLength)`);
    }
    const native = this.llama._native();
    this.dropped = s.dropped;
    this.stale = s.stale || h.tokens.length === 0;
    if (h.tokens.length === 0) return;
    const blocks = Math.ceil(h.tokens.length / native.kvState().blockSize);
    this.llama._makeKvRoom(blocks, `restoring ${file}`);
    const seq = native.createSequence();
    try {
      native.beginRestore(seq, h.tokens.length);
      const per = blocksPerChunk(h.model.kvBlockBytes);
      const buf = new Uint8Array(Math.min(per, blocks) * h.model.kvBlockBytes);
      for (let first = 0; first < blocks; first += per) {
        if (signal?.aborted) throw new Llama2Error("ERR_ABORTED", "restoring the session was aborted");
        const count = Math.min(per, blocks - first);
        const part = buf.subarray(0, count * h.model.kvBlockBytes);
        await state.read(first, count, part);
        await native.writeSequenceBlocks(seq, first, count, part);
      }
      native.finishRestore(seq);
    } catch (err) {
      try {
        native.freeSequence(seq);
      } catch {
        /* the model was disposed meanwhile: the sequence went with it */
      }
      throw err;
    }
    this.seq = seq;
    this.tokens = h.tokens.slice();
    this.pending = s.pending.slice();
  }

  /** Forgets the conversation (keeps the session usable). */
  reset(): void {
    if (this.busy) throw new InvalidArgumentError("session", "generating a reply; wait for it or abort it");
    if (this.seq !== null && !this.disposed && this.llama._alive) {
      const native = this.llama._native();
      // The prefix cache keeps the conversation (a fork): a request that repeats it starts from it.
      if (this.holdsTokens(native)) this.llama._cacheSequence(this.seq, this.tokens, false);
      native.truncateSequence(this.seq, 0);
    }
    this.messages.length = 0;
    this.pending = [];
    this.tokens = [];
    this.stale = false;
    this.dropped = 0;
  }

  /**
   * Frees the session's KV cache. With the prefix cache on, the conversation's KV moves into it
   * instead (evicted when other requests need the blocks; `Llama2.clearPrefixCache()` drops it).
   */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.llama._forgetSession(this);
    if (this.busy) {
      // A turn is running or waiting for KV room: its sequence may be in the step being computed, so it
      // is freed when the turn ends (onEnd), after this abort.
      this.turn?.abort();
      return;
    }
    if (this.seq !== null) {
      try {
        const native = this.llama._native();
        if (this.holdsTokens(native)) {
          this.llama._cacheSequence(this.seq, this.tokens, true);
          this.seq = null;
          return;
        }
      } catch {
        /* the model was disposed first */
      }
      this.freeSequence();
    }
  }

  /** Whether the sequence holds exactly `tokens` (some): what the prefix cache or a save may take from it. */
  private holdsTokens(native: NativeModel): boolean {
    return this.seq !== null && this.tokens.length > 0 && this.tokens.length === native.sequenceLength(this.seq);
  }

  private freeSequence(): void {
    if (this.seq === null) return;
    try {
      this.llama._native().freeSequence(this.seq);
    } catch {
      /* the model was disposed first */
    }
    this.seq = null;
  }
}

/** A resumable conversation: user / assistant pairs (copied), checked message by message. */
function checkHistory(messages: unknown, field: string): ChatMessage[] {
  if (!Array.isArray(messages)) throw new InvalidArgumentError(field, "expected an array of { role, content } messages");
  const out = messages.map((m: unknown, i): ChatMessage => {
    const msg = m as Partial<ChatMessage> | null;
    if (!msg || typeof msg !== "object") throw new InvalidArgumentError(`${field}[${i}]`, "expected an object { role, content }");
    const want = i % 2 === 0 ? "user" : "assistant";
    if (msg.role !== want) {
      const why = msg.role === "system" ? "the system prompt goes in systemPrompt" : "user and assistant messages alternate, starting with user";
      throw new InvalidArgumentError(`${field}[${i}].role`, `expected "${want}", got ${showValue(msg.role)} (${why})`);
    }
    if (typeof msg.content !== "string") throw new InvalidArgumentError(`${field}[${i}].content`, "expected a string");
    return { role: want, content: msg.content };
  });
  if (out.length % 2 !== 0) throw new InvalidArgumentError(field, "must end with an assistant reply (the next user message is what send() takes)");
  return out;
}
