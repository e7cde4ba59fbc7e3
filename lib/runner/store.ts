// Where jobs live on disk and how their files are read/written. One directory per job:
//   job.json   the record, rewritten atomically (write temp + rename) on every change
//   log.txt    human log, appended line by line;  log.jsonl  the same as JSON lines
//   control.json  written by `llama2 cancel`; the job process polls for it
import { appendFileSync, existsSync, readdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { InvalidArgumentError, Llama2Error } from "../errors.js";
import type { JobSpec } from "./spec.js";

export type JobState = "created" | "preparing" | "running" | "succeeded" | "failed" | "cancelled" | "released";
export const TERMINAL_STATES: readonly JobState[] = ["succeeded", "failed", "cancelled", "released"];

export interface JobFigures {
  requests: number;
  errors: number;
  promptTokens: number;
  completionTokens: number;
  /** Mean decode speed of finished requests, tokens/s. */
  tokensPerSecond: number;
}

export interface JobResources {
  device?: string;
  deviceName?: string;
  dtype?: string;
  kvCacheType?: string;
  contextLength?: number;
  weightBytes?: number;
  kvCacheBytes?: number;
  deviceMemoryBytes?: number;
}

export interface JobRecord {
  id: string;
  name?: string;
  handler: string;
  spec: Omit<JobSpec, "apiKey"> & { apiKey?: "***" };
  state: JobState;
  pid: number;
  /** Kernel start time of `pid` (Linux /proc), so a recycled pid is not mistaken for the job. */
  pidStart?: string;
  hostname: string;
  createdAt: string;
  updatedAt: string;
  startedAt?: string;
  endedAt?: string;
  history: { state: JobState; at: string; reason?: string }[];
  reason?: string;
  error?: string;
  url?: string;
  resources: JobResources;
  figures: JobFigures;
  outputs?: Record<string, string>;
}

export const JOB_FILE = "job.json";
export const CONTROL_FILE = "control.json";
export const LOG_TXT = "log.txt";
export const LOG_JSONL = "log.jsonl";

/** `--jobs-dir`, else $LLAMA2_HOME/jobs, else ~/.llama2/jobs. */
export function jobsRoot(override?: string): string {
  if (override) return path.resolve(override);
  const home = process.env.LLAMA2_HOME;
  return home ? path.resolve(home, "jobs") : path.join(os.homedir(), ".llama2", "jobs");
}

export function writeJsonAtomic(file: string, value: unknown): void {
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, JSON.stringify(value, null, 2) + "\n");
  renameSync(tmp, file);
}

export function appendLine(file: string, line: string): void {
  appendFileSync(file, line + "\n");
}

export function readJob(dir: string): JobRecord {
  const file = path.join(dir, JOB_FILE);
  try {
    return JSON.parse(readFileSync(file, "utf8")) as JobRecord;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code === "ENOENT" ? "ERR_FILE_NOT_FOUND" : "ERR_FILE_READ";
    throw new Llama2Error(code, `cannot read ${file}: ${(err as Error).message}`, { cause: err });
  }
}

/** All jobs under root, oldest first. Unreadable dirs are skipped. */
export function listJobs(root: string): { dir: string; job: JobRecord }[] {
  if (!existsSync(root)) return [];
  const out: { dir: string; job: JobRecord }[] = [];
  for (const name of readdirSync(root)) {
    const dir = path.join(root, name);
    if (!existsSync(path.join(dir, JOB_FILE))) continue;
    try {
      out.push({ dir, job: readJob(dir) });
    } catch {
      // a job being created or a foreign directory: not ours to report
    }
  }
  return out.sort((a, b) => a.job.createdAt.localeCompare(b.job.createdAt) || a.job.id.localeCompare(b.job.id));
}

/** Finds a job by exact id, unique id prefix, or name (the newest with that name). */
export function findJob(root: string, ref: string): { dir: string; job: JobRecord } {
  if (!/^[A-Za-z0-9._-]{1,100}$/.test(ref)) throw new InvalidArgumentError("id", `not a job id: '${ref}'`);
  const all = listJobs(root);
  const exact = all.find((j) => j.job.id === ref);
  if (exact) return exact;
  const prefixed = all.filter((j) => j.job.id.startsWith(ref));
  if (prefixed.length === 1) return prefixed[0]!;
  if (prefixed.length > 1)
    throw new InvalidArgumentError("id", `'${ref}' matches ${prefixed.length} jobs: ${prefixed.map((j) => j.job.id).join(", ")}`);
  const named = all.filter((j) => j.job.name === ref);
  if (named.length > 0) return named[named.length - 1]!;
  throw new InvalidArgumentError("id", `no job '${ref}' in ${root} (see llama2 jobs)`);
}

/** Start time of a process from /proc (field 22), or undefined where /proc is unavailable. */
export function processStartTime(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19];
  } catch {
    return undefined;
  }
}

/** Whether the job's process is still the one that wrote job.json (handles stale and recycled pids). */
export function isJobProcessAlive(job: Pick<JobRecord, "pid" | "pidStart" | "hostname">): boolean {
  if (job.hostname !== os.hostname()) return true; // cannot tell from here: assume it is
  try {
    process.kill(job.pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "EPERM") return false;
  }
  if (job.pidStart === undefined) return true;
  const now = processStartTime(job.pid);
  return now === undefined || now === job.pidStart;
}

export function isTerminal(state: JobState): boolean {
  return TERMINAL_STATES.includes(state);
}
