// Runs one job end to end: create -> preparing (load the model) -> running (the handler) -> a terminal
// state, always unloading the model. Stop requests (control file, SIGINT/SIGTERM, auto-release) all go
// through job.requestStop, so each path winds down the same way.
import { existsSync } from "node:fs";
import os from "node:os";
import { fromNative, Llama2Error } from "../errors.js";
import type { ChatBackend } from "../server/backend.js";
import { formatDuration } from "./duration.js";
import { loadHandler } from "./handlers/index.js";
import { Job, type LogEntry } from "./job.js";
import { loadModel, type LoadBackend, type LoadEvent } from "./load-model.js";
import { formatBytes, ProgressLine } from "./progress.js";
import type { JobSpec } from "./spec.js";
import { jobsRoot } from "./store.js";

export interface RunDeps {
  /** How the model is loaded (tests inject a fake). */
  loadBackend?: LoadBackend;
  stderr: NodeJS.WritableStream;
  jobsDir?: string;
  /** Where SIGINT/SIGTERM come from: the CLI passes `process`; tests pass an EventEmitter. */
  signals?: Pick<NodeJS.EventEmitter, "on" | "off">;
  /** Called once the job exists (tests use it to watch or stop the job). */
  onJob?: (job: Job) => void;
  controlPollMs?: number;
}

export interface RunResult {
  job: Job;
  /** 0 succeeded or released, 130 cancelled, 1 failed. */
  exitCode: number;
}

export async function runJob(spec: JobSpec, deps: RunDeps): Promise<RunResult> {
  const { stderr } = deps;
  const handler = await loadHandler(spec.handler);
  if (spec.model !== "demo" && !spec.model.startsWith("hf:") && !existsSync(spec.model))
    throw new Llama2Error("ERR_FILE_NOT_FOUND", `--model: no such file or directory: ${spec.model}`);
  await handler.validate?.(spec);
  const job = Job.create(jobsRoot(deps.jobsDir), spec);
  const progress = new ProgressLine(stderr);
  job.echo = (e: LogEntry) => {
    progress.end();
    stderr.write(`[${e.t.slice(11, 19)}] ${e.level === "info" ? "" : `${e.level}: `}${e.msg}\n`);
  };
  stderr.write(`job ${job.id}: ${job.dir}\n`);
  job.watchControlFile(deps.controlPollMs);
  deps.onJob?.(job);

  let signals = 0;
  const onSignal = (sig: NodeJS.Signals): void => {
    // A second signal means "now": the first one is already winding down.
    if (++signals > 1) {
      stderr.write(`\n${sig} again: exiting without waiting\n`);
      process.exit(130);
    }
    job.requestStop("cancelled", `received ${sig}`);
  };
  deps.signals?.on("SIGINT", onSignal);
  deps.signals?.on("SIGTERM", onSignal);
  let releaseTimer: NodeJS.Timeout | undefined;
  let backend: ChatBackend | undefined;
  let failure: Llama2Error | undefined;
  try {
    job.transition("preparing", `loading ${spec.model}`);
    const t0 = performance.now();
    try {
      backend = await (deps.loadBackend ?? loadModel)(spec, (e) => showLoad(progress, e), job.stopSignal);
    } finally {
      progress.end();
    }
    if (!job.stopKind) {
      const info = backend.info;
      job.log("info", `model loaded in ${formatDuration(performance.now() - t0)}: ${info.path} (${info.format}, weights ${formatBytes(info.weightBytes)}, KV cache ${info.device === "cpu" ? "allocated as it fills" : formatBytes(info.kvCacheBytes)})`);
      job.update({
        resources: {
          device: info.device,
          deviceName: info.deviceName,
          dtype: info.dtype,
          kvCacheType: info.kvCacheType,
          contextLength: info.contextLength,
          weightBytes: info.weightBytes,
          kvCacheBytes: info.kvCacheBytes,
          ...optional("deviceMemoryBytes", backend.deviceMemoryBytes()),
        },
      });
      job.transition("running", `${info.deviceName}, ${info.dtype}, KV ${info.kvCacheType}, context ${info.contextLength}`);
      if (spec.autoReleaseMs !== undefined) {
        const ms = spec.autoReleaseMs;
        releaseTimer = setTimeout(() => job.requestStop("released", `auto-release after ${formatDuration(ms)}`), ms);
      }
      await handler.run({ job, spec, backend, stderr, progress });
    }
  } catch (err) {
    // An abort caused by the stop request is the stop itself, not a failure.
    if (!job.stopKind) failure = fromNative(err);
  } finally {
    clearTimeout(releaseTimer);
    job.stopControlWatch();
    deps.signals?.off("SIGINT", onSignal);
    deps.signals?.off("SIGTERM", onSignal);
    if (backend) {
      try {
        await backend.dispose();
        job.log("info", "model unloaded");
      } catch (err) {
        job.log("error", `unloading the model failed: ${fromNative(err).message}`);
      }
    }
  }
  if (failure) {
    job.transition("failed", `${failure.code}: ${failure.message}`);
    if (failure.suggestion) job.log("info", `hint: ${failure.suggestion}`);
    return { job, exitCode: 1 };
  }
  if (job.stopKind) {
    job.transition(job.stopKind, job.stopReason);
    return { job, exitCode: job.stopKind === "released" ? 0 : 130 };
  }
  job.transition("succeeded");
  return { job, exitCode: 0 };
}

function optional<K extends string, V>(key: K, v: V | undefined): { [P in K]?: V } {
  return (v === undefined ? {} : { [key]: v }) as { [P in K]?: V };
}

function showLoad(progress: ProgressLine, e: LoadEvent): void {
  if (e.phase === "demo") {
    progress.update("preparing demo model", e.bytes, e.totalBytes, `${formatBytes(e.bytes)} / ${formatBytes(e.totalBytes)}`);
  } else if (e.phase === "download") {
    progress.update(`downloading ${e.file}`, e.bytes, e.totalBytes ?? 0, `${formatBytes(e.bytes)}${e.totalBytes ? ` / ${formatBytes(e.totalBytes)}` : ""}`);
  } else if (e.phase === "upload") {
    progress.update("uploading tensors   ", e.tensors, e.totalTensors, `${e.tensors}/${e.totalTensors} tensors`);
  } else if (e.phase === "decode") {
    progress.update("decoding blocks     ", e.bytes, e.totalBytes, `${formatBytes(e.bytes)} / ${formatBytes(e.totalBytes)}`);
  } else if (e.phase !== "ready") {
    progress.update("reading weights     ", e.bytes, e.totalBytes, `${formatBytes(e.bytes)} / ${formatBytes(e.totalBytes)}`);
  }
}

/** The URL a user should open for a server bound to host:port. */
export function browsableUrl(host: string, port: number): string {
  const shown = host === "0.0.0.0" || host === "::" ? os.hostname() : host;
  return `http://${shown.includes(":") ? `[${shown}]` : shown}:${port}/`;
}
