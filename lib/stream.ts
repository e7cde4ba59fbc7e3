// The plumbing behind GenerationStream: the generation loop (`run`) pushes chunks; the consumer pulls
// them with for-await (buffered when it is slower) and/or awaits `result`. Cancellation from abort(),
// the caller's AbortSignal, or leaving the for-await loop early all abort the signal `run` watches.
import { InvalidArgumentError, Llama2Error, fromNative } from "./errors.js";
import type { GenerationChunk, GenerationResult, GenerationStream } from "./types.js";

/**
 * The generation loop. It calls `emit` for each chunk (the last one should carry `stats`; if it does not,
 * the stream appends `{ text: "", tokenIds: [], stats }` from the result), watches `signal`, and
 * resolves with the result (finishReason "abort" after an abort) or rejects with the error.
 */
export type GenerationRun = (emit: (chunk: GenerationChunk) => void, signal: AbortSignal) => Promise<GenerationResult>;

// One "abort" listener per caller signal, fanning out to every stream that watches it: many concurrent
// requests sharing one AbortSignal would otherwise trip Node's MaxListenersExceededWarning (at 11).
const watchers = new WeakMap<AbortSignal, { fns: Set<() => void>; onAbort: () => void }>();
function watchAbort(signal: AbortSignal, fn: () => void): () => void {
  let w = watchers.get(signal);
  if (!w) {
    const fns = new Set<() => void>();
    const onAbort = () => {
      watchers.delete(signal);
      for (const f of fns) f();
    };
    w = { fns, onAbort };
    watchers.set(signal, w);
    signal.addEventListener("abort", onAbort, { once: true });
  }
  w.fns.add(fn);
  const mine = w;
  return () => {
    // The last watcher removes the listener (a long-lived signal would otherwise keep it, and whatever
    // it reaches, forever).
    mine.fns.delete(fn);
    if (mine.fns.size === 0 && watchers.get(signal) === mine) {
      watchers.delete(signal);
      signal.removeEventListener("abort", mine.onAbort);
    }
  };
}

interface Waiter {
  resolve: (r: IteratorResult<GenerationChunk>) => void;
  reject: (e: unknown) => void;
}

/** Starts `run` now. The stream is single-consumer: every [Symbol.asyncIterator]() is the same iterator. */
export function createGenerationStream(run: GenerationRun, externalSignal?: AbortSignal): GenerationStream {
  if (externalSignal !== undefined && !isAbortSignal(externalSignal))
    throw new InvalidArgumentError("signal", "must be an AbortSignal");
  const controller = new AbortController();
  const queue: GenerationChunk[] = [];
  const waiters: Waiter[] = [];
  let finished = false; // no more chunks will come: the final chunk was queued, or run settled
  let settled = false; // run settled
  let closed = false; // the consumer left (iterator return()): drop everything
  let failure: { error: Llama2Error } | undefined; // run's error, delivered after the queued chunks

  const abort = (reason: unknown) => {
    if (!settled && !controller.signal.aborted) controller.abort(reason);
  };
  let unwatch = () => {};
  if (externalSignal?.aborted) abort(externalSignal.reason);
  else if (externalSignal) unwatch = watchAbort(externalSignal, () => abort(externalSignal.reason));

  const pump = () => {
    while (waiters.length > 0) {
      const w = waiters[0]!;
      if (queue.length > 0) w.resolve({ value: queue.shift()!, done: false });
      else if (failure) {
        w.reject(failure.error);
        failure = undefined;
      } else if (finished || closed) w.resolve({ value: undefined, done: true });
      else return;
      waiters.shift();
    }
  };
  const emit = (chunk: GenerationChunk) => {
    if (finished || closed) return;
    queue.push(chunk);
    if (chunk.stats) finished = true;
    pump();
  };
  const done = () => {
    settled = true;
    finished = true;
    unwatch();
    pump();
  };

  let started: Promise<GenerationResult>;
  try {
    started = Promise.resolve(run(emit, controller.signal));
  } catch (err) {
    started = Promise.reject(err);
  }
  const result = started.then(
    (res) => {
      if (!finished && !closed) queue.push({ text: "", tokenIds: [], stats: res.stats });
      done();
      return res;
    },
    (err: unknown) => {
      const error = fromNative(err);
      if (!finished && !closed) failure = { error };
      done();
      throw error;
    },
  );
  // The error also reaches the iterator; a caller who never looks at `result` must not get an
  // unhandledRejection (awaiting `result` still throws).
  result.catch(() => {});

  const iterator: AsyncIterableIterator<GenerationChunk> = {
    next: () =>
      new Promise<IteratorResult<GenerationChunk>>((resolve, reject) => {
        waiters.push({ resolve, reject });
        pump();
      }),
    return: () => {
      if (!closed) {
        closed = true;
        queue.length = 0;
        failure = undefined;
        abort(new Llama2Error("ERR_ABORTED", "generation aborted: the consumer stopped iterating"));
        pump();
      }
      return Promise.resolve({ value: undefined, done: true });
    },
    [Symbol.asyncIterator]() {
      return this;
    },
  };

  return {
    result,
    abort: () => abort(new Llama2Error("ERR_ABORTED", "generation aborted")),
    [Symbol.asyncIterator]: () => iterator,
  };
}

function isAbortSignal(s: unknown): s is AbortSignal {
  const o = s as AbortSignal | null;
  return typeof o === "object" && o !== null && typeof o.aborted === "boolean" && typeof o.addEventListener === "function";
}
