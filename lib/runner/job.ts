// A job: its state machine, its files (via store.ts) and its stop control (cancel / auto-release).
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { Llama2Error } from "../errors.js";
import { redactSpec, type JobSpec } from "./spec.js";
import {
  appendLine, CONTROL_FILE, isTerminal, JOB_FILE, LOG_JSONL, LOG_TXT, processStartTime, writeJsonAtomic,
  type JobFigures, type JobRecord, type JobResources, type JobState,
} from "./store.js";

const TRANSITIONS: Record<JobState, readonly JobState[]> = {
  created: ["preparing", "failed", "cancelled"],
  preparing: ["running", "failed", "cancelled"],
  running: ["succeeded", "failed", "cancelled", "released"],
  succeeded: [],
  failed: [],
  cancelled: [],
  released: [],
};

export function canTransition(from: JobState, to: JobState): boolean {
  return TRANSITIONS[from].includes(to);
}

export type StopKind = "cancelled" | "released";
export type LogLevel = "info" | "warn" | "error";
export interface LogEntry {
  t: string;
  level: LogLevel;
  msg: string;
  [field: string]: unknown;
}

const RECENT_LOGS = 500;

function newId(): string {
  const iso = new Date().toISOString(); // 2025-01-31T12:34:56.789Z -> 20250131-123456
  return `${iso.slice(0, 10).replace(/-/g, "")}-${iso.slice(11, 19).replace(/:/g, "")}-${randomBytes(3).toString("hex")}`;
}

export class Job {
  readonly id: string;
  readonly dir: string;
  private rec: JobRecord;
  private readonly recent: LogEntry[] = [];
  private readonly stopCtl = new AbortController();
  private controlTimer: NodeJS.Timeout | undefined;
  private reqs = { n: 0, tpsSum: 0 };
  stopKind: StopKind | undefined;
  /** Mirror of log lines for the terminal (stderr), set by the runner. */
  echo: ((entry: LogEntry) => void) | undefined;

  private constructor(dir: string, rec: JobRecord) {
    this.dir = dir;
    this.id = rec.id;
    this.rec = rec;
  }

  static create(root: string, spec: JobSpec): Job {
    mkdirSync(root, { recursive: true });
    for (let attempt = 0; ; attempt++) {
      const id = newId();
      const dir = path.join(root, id);
      try {
        mkdirSync(dir); // not recursive: fails if the id is taken
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === "EEXIST" && attempt < 5) continue;
        throw new Llama2Error("ERR_FILE_READ", `cannot create job directory ${dir}: ${(err as Error).message}`, { cause: err });
      }
      const now = new Date().toISOString();
      const pidStart = processStartTime(process.pid);
      const job = new Job(dir, {
        id,
        ...(spec.name !== undefined && { name: spec.name }),
        handler: spec.handler,
        spec: redactSpec(spec),
        state: "created",
        pid: process.pid,
        ...(pidStart !== undefined && { pidStart }),
        hostname: os.hostname(),
        createdAt: now,
        updatedAt: now,
        history: [{ state: "created", at: now }],
        resources: {},
        figures: { requests: 0, errors: 0, promptTokens: 0, completionTokens: 0, tokensPerSecond: 0 },
      });
      job.save();
      job.log("info", `job ${id} created (handler ${spec.handler}, model ${spec.model})`);
      return job;
    }
  }

  get record(): Readonly<JobRecord> {
    return this.rec;
  }

  get state(): JobState {
    return this.rec.state;
  }

  /** Aborted when the job is asked to stop (cancel, signal, auto-release); reason is the StopKind. */
  get stopSignal(): AbortSignal {
    return this.stopCtl.signal;
  }

  get stopReason(): string | undefined {
    return this.rec.reason;
  }

  transition(to: JobState, reason?: string): void {
    const from = this.rec.state;
    if (!canTransition(from, to)) throw new Llama2Error("ERR_INTERNAL", `illegal job state transition ${from} -> ${to}`);
    const at = new Date().toISOString();
    this.rec.state = to;
    this.rec.history.push({ state: to, at, ...(reason !== undefined && { reason }) });
    if (to === "running") this.rec.startedAt = at;
    if (isTerminal(to)) {
      this.rec.endedAt = at;
      this.stopControlWatch();
    }
    if (to === "failed" && reason) this.rec.error = reason;
    if (isTerminal(to) && reason) this.rec.reason ??= reason;
    this.save();
    this.log(to === "failed" ? "error" : "info", `state ${from} -> ${to}${reason ? ` (${reason})` : ""}`);
  }

  update(patch: { url?: string; resources?: JobResources; outputs?: Record<string, string> }): void {
    if (patch.url !== undefined) this.rec.url = patch.url;
    if (patch.resources) this.rec.resources = { ...this.rec.resources, ...patch.resources };
    if (patch.outputs) this.rec.outputs = { ...this.rec.outputs, ...patch.outputs };
    this.save();
  }

  /** Adds one finished request to the figures. */
  recordRequest(r: { promptTokens: number; completionTokens: number; tokensPerSecond?: number; error?: boolean }): void {
    const f: JobFigures = this.rec.figures;
    f.requests++;
    if (r.error) f.errors++;
    f.promptTokens += r.promptTokens;
    f.completionTokens += r.completionTokens;
    if (r.tokensPerSecond !== undefined && Number.isFinite(r.tokensPerSecond) && r.tokensPerSecond > 0) {
      this.reqs.n++;
      this.reqs.tpsSum += r.tokensPerSecond;
      f.tokensPerSecond = +(this.reqs.tpsSum / this.reqs.n).toFixed(2);
    }
    this.save();
  }

  log(level: LogLevel, msg: string, fields?: Record<string, unknown>): void {
    const entry: LogEntry = { t: new Date().toISOString(), level, msg, ...fields };
    this.recent.push(entry);
    if (this.recent.length > RECENT_LOGS) this.recent.shift();
    // Appended synchronously, line by line, so a crash loses nothing already logged.
    appendLine(path.join(this.dir, LOG_TXT), `${entry.t} ${level.toUpperCase().padEnd(5)} ${msg}`);
    appendLine(path.join(this.dir, LOG_JSONL), JSON.stringify(entry));
    this.echo?.(entry);
  }

  recentLogs(n = 100): LogEntry[] {
    return this.recent.slice(-n);
  }

  /** Asks the job to stop; the first request wins. Returns false if a stop was already requested. */
  requestStop(kind: StopKind, reason: string): boolean {
    if (this.stopKind || isTerminal(this.rec.state)) return false;
    this.stopKind = kind;
    this.rec.reason = reason;
    this.log("info", `stop requested: ${kind} (${reason})`);
    this.stopCtl.abort(kind);
    return true;
  }

  /** Polls control.json (written by `llama2 cancel` from another process). */
  watchControlFile(intervalMs = 250): void {
    const file = path.join(this.dir, CONTROL_FILE);
    this.controlTimer = setInterval(() => {
      if (!existsSync(file)) return;
      let by = "llama2 cancel";
      try {
        const c = JSON.parse(readFileSync(file, "utf8")) as { by?: unknown };
        if (typeof c.by === "string") by = c.by;
      } catch {
        // half-written or garbage: still a cancel request
      }
      this.stopControlWatch();
      this.requestStop("cancelled", `cancelled by ${by}`);
    }, intervalMs);
    this.controlTimer.unref();
  }

  stopControlWatch(): void {
    if (this.controlTimer) clearInterval(this.controlTimer);
    this.controlTimer = undefined;
  }

  private save(): void {
    this.rec.updatedAt = new Date().toISOString();
    writeJsonAtomic(path.join(this.dir, JOB_FILE), this.rec);
  }
}
