// Printing and following a job's log (log.txt, or log.jsonl with json: true).
import { closeSync, existsSync, openSync, readSync, statSync } from "node:fs";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { isJobProcessAlive, isTerminal, LOG_JSONL, LOG_TXT, readJob } from "./store.js";

export interface LogsOptions {
  json?: boolean;
  /** Print only the last N lines first. */
  tail?: number;
  /** Keep printing new lines until the job ends (or its process is gone). */
  follow?: boolean;
  pollMs?: number;
  signal?: AbortSignal;
}

export async function printLogs(dir: string, out: NodeJS.WritableStream, opts: LogsOptions = {}): Promise<void> {
  const file = path.join(dir, opts.json ? LOG_JSONL : LOG_TXT);
  let offset = 0;
  let rest = "";
  let first = true;
  const drain = (): void => {
    if (!existsSync(file)) return;
    const size = statSync(file).size;
    if (size <= offset) return;
    const fd = openSync(file, "r");
    try {
      const buf = Buffer.alloc(size - offset);
      const n = readSync(fd, buf, 0, buf.length, offset);
      offset += n;
      // Only whole lines: a line being appended right now is printed on the next round.
      const text = rest + buf.subarray(0, n).toString("utf8");
      const cut = text.lastIndexOf("\n") + 1;
      rest = text.slice(cut);
      let lines = text.slice(0, cut);
      if (first && opts.tail !== undefined) lines = opts.tail === 0 ? "" : lines.split("\n").slice(0, -1).slice(-opts.tail).map((l) => l + "\n").join("");
      first = false;
      if (lines) out.write(lines);
    } finally {
      closeSync(fd);
    }
  };
  drain();
  first = false;
  while (opts.follow && !opts.signal?.aborted) {
    const job = readJob(dir);
    const over = isTerminal(job.state) || !isJobProcessAlive(job);
    drain();
    if (over) return;
    await sleep(opts.pollMs ?? 250, undefined, opts.signal ? { signal: opts.signal } : {}).catch(() => {});
  }
}
