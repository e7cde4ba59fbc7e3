// Cancelling a job from another process: write control.json (the job polls it, stops cleanly and
// unloads the model), then wait for job.json to reach a terminal state. A job whose process is gone
// (crash, kill -9, reboot, recycled pid) is marked cancelled here instead: nobody else would.
import { setTimeout as sleep } from "node:timers/promises";
import path from "node:path";
import {
  appendLine, CONTROL_FILE, findJob, isJobProcessAlive, isTerminal, JOB_FILE, LOG_JSONL, LOG_TXT, readJob, writeJsonAtomic,
  type JobRecord,
} from "./store.js";

export type CancelOutcome = "cancelled" | "finished" | "stale" | "timeout";

export interface CancelResult {
  outcome: CancelOutcome;
  job: JobRecord;
  dir: string;
}

export async function cancelJob(
  root: string,
  ref: string,
  opts: { waitMs?: number; pollMs?: number; by?: string } = {},
): Promise<CancelResult> {
  const { dir, job } = findJob(root, ref);
  if (isTerminal(job.state)) return { outcome: "finished", job, dir };
  const by = opts.by ?? `llama2 cancel (pid ${process.pid})`;
  if (!isJobProcessAlive(job)) return { outcome: "stale", job: markStale(dir, job, by), dir };
  writeJsonAtomic(path.join(dir, CONTROL_FILE), { action: "cancel", at: new Date().toISOString(), by });
  const deadline = Date.now() + (opts.waitMs ?? 30_000);
  for (;;) {
    const now = readJob(dir);
    if (isTerminal(now.state)) return { outcome: now.state === "cancelled" ? "cancelled" : "finished", job: now, dir };
    if (!isJobProcessAlive(now)) return { outcome: "stale", job: markStale(dir, now, by), dir };
    if (Date.now() >= deadline) return { outcome: "timeout", job: now, dir };
    await sleep(opts.pollMs ?? 100);
  }
}

function markStale(dir: string, job: JobRecord, by: string): JobRecord {
  const at = new Date().toISOString();
  const reason = `process ${job.pid} is no longer running (stale); marked cancelled by ${by}`;
  const rec: JobRecord = {
    ...job,
    state: "cancelled",
    reason,
    updatedAt: at,
    endedAt: at,
    history: [...job.history, { state: "cancelled", at, reason }],
  };
  writeJsonAtomic(path.join(dir, JOB_FILE), rec);
  appendLine(path.join(dir, LOG_TXT), `${at} WARN  state ${job.state} -> cancelled (${reason})`);
  appendLine(path.join(dir, LOG_JSONL), JSON.stringify({ t: at, level: "warn", msg: `state ${job.state} -> cancelled (${reason})` }));
  return rec;
}
