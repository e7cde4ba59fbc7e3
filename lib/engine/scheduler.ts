// Continuous batching over the native engine. Every caller awaits `eval(seq, tokens, output)`; each
// step gathers all pending work into ONE native forward: the next token of every decoding sequence
// plus chunks of pending prompts (so a long prompt never stalls the others), within a token budget.
// Callers resubmit in the microtasks after a step resolves, so they land in the next step.
import { Llama2Error, fromNative } from "../errors.js";
import type { Candidates, NativeModel, NativeStepOutput, NativeStepRequest } from "../native.js";

// Errors the native engine raises while checking a step's requests, before it changes or runs anything
// (native/engine/engine.cc Engine::forward).
const CHECKED_BEFORE_RUN = new Set(["ERR_UNKNOWN_SEQUENCE", "ERR_INVALID_ARGUMENT", "ERR_CONTEXT_OVERFLOW", "ERR_KV_CACHE_FULL"]);

export interface SchedulerOptions {
  /** Most tokens in one step (decode tokens + prompt chunks). */
  maxStepTokens: number;
  /** Most tokens of one prompt in one step. */
  prefillChunk: number;
  /** Most sequences in one step (the backend's limit); the rest wait for the next step, in order. */
  maxStepSequences?: number;
  /** Most rows of logits in one step (the backend's limit; a scoring job's chunk takes one per token). */
  maxStepOutputs?: number;
}

interface Job {
  signal?: AbortSignal;
  seq: number;
  tokens: Int32Array;
  offset: number;
  output: number;
  /** The output for every token (output -2, or `every`): one row per token, gathered over the chunks. */
  every: boolean;
  /** With `every`: the outputs of the chunks evaluated so far. */
  rows?: NativeStepOutput[];
  resolve: (out: NativeStepOutput) => void;
  reject: (err: unknown) => void;
}

export interface SchedulerStats {
  steps: number;
  tokens: number;
  /** Time inside native forward calls, ms. */
  forwardMs: number;
  /** Largest number of sequences in one step. */
  maxBatch: number;
}

export class Scheduler {
  private queue: Job[] = [];
  private running = false;
  private closed = false;
  readonly stats: SchedulerStats = { steps: 0, tokens: 0, forwardMs: 0, maxBatch: 0 };

  constructor(private readonly model: NativeModel, private readonly opts: SchedulerOptions) {}

  /** Sequences with work queued or in the running step. */
  get depth(): number {
    return this.queue.length;
  }

  /**
   * Appends `tokens` to `seq`; resolves with the output for the last token once evaluated. Output -2 (the
   * logits of every token, [tokens][vocab]) or `every` (output -1, -3 or k for every token: [tokens][vocab],
   * hidden states [tokens][dim] or candidates [tokens][k]) gather the rows over the steps the chunks ran in.
   */
  eval(seq: number, tokens: ArrayLike<number>, output: number, signal?: AbortSignal, every = false): Promise<NativeStepOutput> {
    if (this.closed) return Promise.reject(new Llama2Error("ERR_DISPOSED", "the model has been disposed"));
    if (tokens.length === 0) return Promise.reject(new Llama2Error("ERR_INTERNAL", "eval needs at least one token"));
    if (this.queue.some((j) => j.seq === seq)) {
      return Promise.reject(new Llama2Error("ERR_INTERNAL", `sequence ${seq} already has work queued`));
    }
    return new Promise((resolve, reject) => {
      const all = output === -2 || (every && output !== 0);
      this.queue.push({ seq, tokens: Int32Array.from(tokens), offset: 0, output: output === -2 ? -1 : output, every: all, resolve, reject, signal });
      if (!this.running) {
        this.running = true;
        setImmediate(() => void this.loop());
      }
    });
  }

  /** Rejects queued work and refuses new work; the running step (if any) finishes first. */
  close(): void {
    this.closed = true;
    for (const j of this.queue.splice(0)) j.reject(new Llama2Error("ERR_DISPOSED", "the model has been disposed"));
  }

  private async loop(): Promise<void> {
    try {
      while (this.queue.length > 0 && !this.closed) {
        const picked = this.pick();
        if (picked.length === 0) continue;
        try {
          await this.step(picked);
        } catch (err) {
          const e = fromNative(err);
          if (picked.length > 1 && CHECKED_BEFORE_RUN.has(e.code)) {
            // The engine refused the step before running anything (e.g. one request names a sequence that
            // was freed meanwhile): run each request alone, so only the offending ones fail.
            for (const one of picked) await this.step([one]).catch((err1: unknown) => this.drop(one.job, fromNative(err1)));
          } else {
            for (const { job } of picked) this.drop(job, e);
          }
        }
        // Let resolved callers sample and resubmit before the next step is assembled.
        await new Promise<void>((r) => setImmediate(r));
      }
    } finally {
      this.running = false;
    }
  }

  /** One native forward for `picked`; resolves the jobs whose tokens are all evaluated. Throws what forward throws. */
  private async step(picked: { job: Job; n: number }[]): Promise<void> {
    const reqs: NativeStepRequest[] = picked.map(({ job, n }) => ({
      seq: job.seq,
      tokens: job.tokens.subarray(job.offset, job.offset + n),
      output: job.every || job.offset + n === job.tokens.length ? job.output : 0,
      ...(job.every && { every: true }),
    }));
    const t0 = performance.now();
    const outs = await this.model.forward(reqs);
    this.stats.forwardMs += performance.now() - t0;
    this.stats.steps++;
    this.stats.maxBatch = Math.max(this.stats.maxBatch, picked.length);
    picked.forEach(({ job, n }, i) => {
      job.offset += n;
      this.stats.tokens += n;
      if (job.every) (job.rows ??= []).push(outs[i] ?? null);
      if (job.offset === job.tokens.length) {
        this.queue.splice(this.queue.indexOf(job), 1);
        job.resolve(job.every ? concatRows(job.rows!) : (outs[i] ?? null));
      }
    });
  }

  private drop(job: Job, err: unknown): void {
    const i = this.queue.indexOf(job);
    if (i >= 0) this.queue.splice(i, 1);
    job.reject(err);
  }

  // Decode-like jobs (one token left) first, then prompt chunks in arrival order within the budget.
  // Aborted jobs leave the queue here, between steps (a prompt is abandoned between its chunks).
  private pick(): { job: Job; n: number }[] {
    for (const job of [...this.queue]) {
      if (job.signal?.aborted) this.drop(job, new Llama2Error("ERR_ABORTED", "aborted"));
    }
    let budget = this.opts.maxStepTokens;
    const maxSeqs = this.opts.maxStepSequences ?? Infinity;
    let rows = this.opts.maxStepOutputs ?? Infinity; // rows of logits left in this step
    const out: { job: Job; n: number }[] = [];
    for (const job of this.queue) {
      if (out.length >= maxSeqs || rows < 1) break;
      if (job.tokens.length - job.offset === 1) {
        out.push({ job, n: 1 });
        budget--;
        if (job.output !== 0) rows--;
      }
    }
    for (const job of this.queue) {
      const left = job.tokens.length - job.offset;
      if (left === 1) continue;
      if ((budget <= 0 && out.length > 0) || out.length >= maxSeqs) break;
      let n = Math.min(left, this.opts.prefillChunk, Math.max(budget, 1));
      if (job.every) n = Math.min(n, rows); // every token of such a chunk is an output row
      else if (job.output !== 0 && n === left && rows < 1) n = left - 1; // its last token waits for a step with room
      if (n < 1) continue;
      out.push({ job, n });
      budget -= n;
      if (job.every) rows -= n;
      else if (job.output !== 0 && n === left) rows--;
    }
    return out;
  }
}

/** The chunks' rows as one output: logits [tokens][vocab], or candidates [tokens][k]. */
function concatRows(parts: NativeStepOutput[]): NativeStepOutput {
  if (parts.length === 1) return parts[0]!;
  if (parts[0] instanceof Float32Array) return concat(parts as Float32Array[], Float32Array);
  const c = parts as Candidates[];
  return { ids: concat(c.map((p) => p.ids), Int32Array), logits: concat(c.map((p) => p.logits), Float32Array) };
}

function concat<T extends Float32Array | Int32Array>(parts: T[], Type: new (length: number) => T): T {
  const out = new Type(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
