// The job runner: state machine, job files, chatbot jobs with the fake backend (progress, URL, cancel
// from another "process", signals, auto-release with an in-flight request), stale pids and the CLI
// commands jobs / logs / cancel.
import { spawnSync } from "node:child_process";
import { EventEmitter } from "node:events";
import { existsSync, mkdtempSync, readdirSync, readFileSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { PassThrough } from "node:stream";
import { describe, expect, it } from "vitest";
import cancelCommand from "../lib/cli/commands/cancel.js";
import jobsCommand from "../lib/cli/commands/jobs.js";
import logsCommand from "../lib/cli/commands/logs.js";
import { InvalidArgumentError, Llama2Error } from "../lib/errors.js";
import { cancelJob } from "../lib/runner/cancel.js";
import { formatDuration, parseDuration } from "../lib/runner/duration.js";
import { canTransition, Job } from "../lib/runner/job.js";
import type { LoadBackend } from "../lib/runner/load-model.js";
import { runJob } from "../lib/runner/run.js";
import { parseRunSpec, type JobSpec } from "../lib/runner/spec.js";
import { findJob, readJob, writeJsonAtomic, type JobRecord, type JobState } from "../lib/runner/store.js";
import { FakeBackend, postJson, readSse, streamedText, waitFor } from "./helpers/fake-backend.js";

const tmpRoot = (): string => mkdtempSync(path.join(os.tmpdir(), "llama2-jobs-"));

function sink(): PassThrough & { text(): string } {
  const s = new PassThrough() as PassThrough & { text(): string };
  let buf = "";
  s.on("data", (d: Buffer) => (buf += d.toString()));
  s.text = () => buf;
  return s;
}

const io = () => ({ stdout: sink(), stderr: sink(), stdin: new PassThrough() });

function spec(over: Partial<JobSpec> = {}): JobSpec {
  return { ...parseRunSpec({ model: "demo", port: 0 }), ...over };
}

/** A loader that hands out the fake and reports some progress, like Llama2.load would. */
function fakeLoader(backend: FakeBackend, calls: { n: number } = { n: 0 }): LoadBackend {
  return async (_spec, onProgress) => {
    calls.n++;
    for (let i = 1; i <= 4; i++) onProgress({ phase: "weights", bytes: i * 1024 * 1024, totalBytes: 4 * 1024 * 1024, tensors: 0, totalTensors: 8 });
    onProgress({ phase: "upload", bytes: 0, totalBytes: 0, tensors: 8, totalTensors: 8 });
    return backend;
  };
}

/** Starts a chatbot job in the background; resolves once it is running. */
async function startChatbot(root: string, backend: FakeBackend, over: Partial<JobSpec> = {}, signals?: EventEmitter) {
  const stderr = sink();
  let job!: Job;
  const done = runJob(spec(over), { loadBackend: fakeLoader(backend), stderr, jobsDir: root, onJob: (j) => (job = j), controlPollMs: 20, ...(signals && { signals }) });
  done.catch(() => {});
  await waitFor(() => job?.record.url !== undefined || job?.state === "failed", 5000, "the job to serve");
  return { job, done, stderr, url: job.record.url! };
}

describe("durations and run flags", () => {
  it("parses durations and rejects bad ones naming the flag", () => {
    expect(parseDuration("--auto-release", "30s")).toBe(30_000);
    expect(parseDuration("--auto-release", "30m")).toBe(1_800_000);
    expect(parseDuration("--auto-release", "2h")).toBe(7_200_000);
    expect(parseDuration("--auto-release", "1.5s")).toBe(1500);
    for (const bad of ["30", "30x", "-5s", "0s", "", "1h30m", "25d"])
      expect(() => parseDuration("--auto-release", bad), bad).toThrow(/--auto-release/);
    expect(formatDuration(90_000)).toBe("1m30s");
    expect(formatDuration(7_200_000)).toBe("2h");
  });

  it("validates run flags", () => {
    const s = parseRunSpec({ model: "m.gguf", device: "cuda:1", "autoRelease": "30m", apiKey: "abcdefgh", cors: "https://x.example" });
    expect(s).toMatchObject({ device: "cuda", deviceIndex: 1, autoReleaseMs: 1_800_000, model: path.resolve("m.gguf"), host: "127.0.0.1", port: 8080, graceMs: 5000, kvCacheType: "auto" });
    expect(parseRunSpec({ kvCache: "int8", maxSequences: 32 })).toMatchObject({ kvCacheType: "int8", maxSequences: 32 });
    const cases: [Record<string, unknown>, string][] = [
      [{ device: "gpu" }, "--device"],
      [{ dtype: "f8" }, "--dtype"],
      [{ kvCache: "f16" }, "--kv-cache"],
      [{ maxSequences: 0 }, "--max-sequences"],
      [{ port: 70000 }, "--port"],
      [{ autoRelease: "soon" }, "--auto-release"],
      [{ name: "../etc" }, "--name"],
      [{ apiKey: "short" }, "--api-key"],
      [{ cors: "https://x.example/" }, "--cors"],
      [{ temperature: 3 }, "--temperature"],
      [{ topP: 0 }, "--top-p"],
      [{ context: 3.5 }, "--context"],
      [{ concurrency: 0 }, "--concurrency"],
      // Evaluation-only flags are refused with the chatbot handler instead of being ignored.
      [{ dataset: "d.jsonl" }, "--dataset"],
      [{ handler: "chatbot", out: "r.jsonl" }, "--out"],
      [{ concurrency: 4 }, "--concurrency"],
      [{ maxTokens: 3 }, "--max-tokens"],
      [{ temperature: 0 }, "--temperature"],
      [{ topP: 0.5 }, "--top-p"],
      [{ seed: 1 }, "--seed"],
    ];
    for (const [flags, field] of cases) {
      const err = (() => { try { parseRunSpec(flags); } catch (e) { return e; } })();
      expect(err, field).toBeInstanceOf(InvalidArgumentError);
      expect((err as InvalidArgumentError).field).toBe(field);
    }
    expect(() => parseRunSpec({ maxTokens: 3 })).toThrow(/only for --handler evaluation/);
    expect(parseRunSpec({ handler: "evaluation", dataset: "d.jsonl", concurrency: 4, temperature: 0 })).toMatchObject({ concurrency: 4, sampling: { temperature: 0 } });
  });
});

describe("job state machine and files", () => {
  it("allows only the documented transitions", () => {
    const all: JobState[] = ["created", "preparing", "running", "succeeded", "failed", "cancelled", "released"];
    const allowed = all.flatMap((a) => all.filter((b) => canTransition(a, b)).map((b) => `${a}->${b}`));
    expect(allowed.sort()).toEqual([
      "created->cancelled", "created->failed", "created->preparing",
      "preparing->cancelled", "preparing->failed", "preparing->running",
      "running->cancelled", "running->failed", "running->released", "running->succeeded",
    ].sort());
  });

  it("writes job.json atomically on every change and appends both logs", () => {
    const root = tmpRoot();
    const job = Job.create(root, spec({ name: "unit", apiKey: "supersecretkey" }));
    expect(path.dirname(job.dir)).toBe(root);
    expect(job.id).toMatch(/^\d{8}-\d{6}-[0-9a-f]{6}$/);
    let rec = readJob(job.dir);
    expect(rec).toMatchObject({ id: job.id, name: "unit", state: "created", pid: process.pid, handler: "chatbot" });
    expect(rec.spec.apiKey).toBe("***"); // never the key itself
    expect(readFileSync(path.join(job.dir, "job.json"), "utf8")).not.toContain("supersecretkey");

    job.transition("preparing");
    expect(() => job.transition("succeeded")).toThrow(/illegal job state transition preparing -> succeeded/);
    job.transition("running");
    job.update({ resources: { device: "cuda", deviceMemoryBytes: 42 } });
    job.recordRequest({ promptTokens: 10, completionTokens: 20, tokensPerSecond: 30 });
    job.recordRequest({ promptTokens: 1, completionTokens: 2, tokensPerSecond: 10, error: true });
    rec = readJob(job.dir);
    expect(rec.state).toBe("running");
    expect(rec.startedAt).toBeDefined();
    expect(rec.resources).toEqual({ device: "cuda", deviceMemoryBytes: 42 });
    expect(rec.figures).toEqual({ requests: 2, errors: 1, promptTokens: 11, completionTokens: 22, tokensPerSecond: 20 });
    job.transition("succeeded");
    expect(() => job.transition("running")).toThrow(Llama2Error);
    rec = readJob(job.dir);
    expect(rec.history.map((h) => h.state)).toEqual(["created", "preparing", "running", "succeeded"]);
    expect(rec.endedAt).toBeDefined();
    expect(readdirSync(job.dir).sort()).toEqual(["job.json", "log.jsonl", "log.txt"]); // no temp files left

    const txt = readFileSync(path.join(job.dir, "log.txt"), "utf8").trim().split("\n");
    const jsonl = readFileSync(path.join(job.dir, "log.jsonl"), "utf8").trim().split("\n").map((l) => JSON.parse(l));
    expect(txt.length).toBe(jsonl.length);
    expect(txt.at(-1)).toMatch(/^\S+Z INFO  state running -> succeeded$/);
    expect(jsonl.at(-1)).toMatchObject({ level: "info", msg: "state running -> succeeded" });
    expect(job.recentLogs(2).map((e) => e.msg)).toEqual(jsonl.slice(-2).map((e) => e.msg));
  });

  it("finds jobs by id, prefix or name; rejects bad ids", () => {
    const root = tmpRoot();
    const a = Job.create(root, spec({ name: "alpha" }));
    expect(findJob(root, a.id).job.id).toBe(a.id);
    expect(findJob(root, a.id.slice(0, 18)).job.id).toBe(a.id);
    expect(findJob(root, "alpha").job.id).toBe(a.id);
    expect(() => findJob(root, "../../etc")).toThrow(InvalidArgumentError);
    expect(() => findJob(root, "nope")).toThrow(/no job 'nope'/);
  });
});

describe("chatbot jobs", () => {
  it("loads with progress on stderr, serves, records figures, and is cancelled from another process", async () => {
    const root = tmpRoot();
    const backend = new FakeBackend();
    const { job, done, stderr, url } = await startChatbot(root, backend, { name: "chat1" });
    expect(job.state).toBe("running");
    expect(stderr.text()).toMatch(/reading weights .*100%/);
    expect(stderr.text()).toMatch(/uploading tensors .*8\/8 tensors/);
    expect(stderr.text()).toContain(`Chat page: ${url}`);
    const rec = readJob(job.dir);
    expect(rec.url).toBe(url);
    expect(rec.resources).toMatchObject({ device: "cpu", deviceName: "CPU (fake)", dtype: "f16", contextLength: 512 });

    const res = await postJson(`${url}v1/chat/completions`, { messages: [{ role: "user", content: "hi" }] });
    expect(res.status).toBe(200);
    await waitFor(() => readJob(job.dir).figures.requests === 1, 2000, "figures");
    expect(readJob(job.dir).figures.completionTokens).toBeGreaterThan(0);
    expect(await (await fetch(`${url}job`)).json()).toMatchObject({ id: job.id, state: "running" });
    const logs = await (await fetch(`${url}job/logs?n=5`)).json();
    expect(logs.lines.at(-1).msg).toMatch(/POST \/v1\/chat\/completions 200/);
    // Requests refused before generating count too (as errors).
    expect((await postJson(`${url}v1/chat/completions`, { messages: [] })).status).toBe(400);
    expect((await postJson(`${url}v1/completions`, { prompt: "a", max_tokens: 99999 })).status).toBe(400);
    await waitFor(() => readJob(job.dir).figures.requests === 3, 2000, "figures of refused requests");
    expect(readJob(job.dir).figures.errors).toBe(2);

    // "Another process": only the job directory is shared.
    const out = io();
    expect(await cancelCommand.run({ wait: "5s", jobsDir: root }, [job.id], out)).toBe(0);
    expect(out.stdout.text()).toBe(`job ${job.id} cancelled\n`);
    const result = await done;
    expect(result.exitCode).toBe(130);
    expect(backend.disposed).toBe(true);
    const final = readJob(job.dir);
    expect(final.state).toBe("cancelled");
    expect(final.reason).toMatch(/cancelled by llama2 cancel/);
    expect(readFileSync(path.join(job.dir, "log.txt"), "utf8")).toMatch(/model unloaded[\s\S]*state running -> cancelled/);
    await expect(fetch(`${url}health`)).rejects.toThrow(); // server closed
  });

  it("SIGTERM cancels cleanly", async () => {
    const root = tmpRoot();
    const backend = new FakeBackend();
    const signals = new EventEmitter();
    const { job, done } = await startChatbot(root, backend, {}, signals);
    signals.emit("SIGTERM", "SIGTERM");
    expect((await done).exitCode).toBe(130);
    expect(readJob(job.dir)).toMatchObject({ state: "cancelled", reason: "received SIGTERM" });
    expect(backend.disposed).toBe(true);
    expect(signals.listenerCount("SIGTERM")).toBe(0);
  });

  it("auto-release: cuts the in-flight stream with a clear reason, unloads, ends released with exit 0", async () => {
    const root = tmpRoot();
    const backend = new FakeBackend({ slowDelayMs: 20 });
    const t0 = Date.now();
    const { job, done, url } = await startChatbot(root, backend, { autoReleaseMs: 1000, graceMs: 200 });
    const sse = await readSse(await postJson(`${url}v1/chat/completions`, { messages: [{ role: "user", content: "slow please" }], stream: true }));
    const elapsed = Date.now() - t0;
    expect(elapsed).toBeGreaterThan(1100);
    expect(elapsed).toBeLessThan(4000);
    expect(streamedText(sse.events).length).toBeGreaterThan(0);
    const finish = sse.events.findLast((e) => e.choices?.[0]?.finish_reason);
    expect(finish.choices[0].finish_reason).toBe("length");
    const error = sse.events.at(-1).error;
    expect(error.code).toBe("job_released");
    expect(error.message).toMatch(/the job was released \(auto-release after 1s\)/);
    expect(sse.done).toBe(true);
    const result = await done;
    expect(result.exitCode).toBe(0);
    expect(backend.calls[0]!.aborted).toBe(true);
    expect(backend.disposed).toBe(true);
    const rec = readJob(job.dir);
    expect(rec.state).toBe("released");
    expect(rec.reason).toBe("auto-release after 1s");
    expect(rec.history.map((h) => h.state)).toEqual(["created", "preparing", "running", "released"]);
  });

  it("auto-release lets a request that ends within the grace period finish normally", async () => {
    const root = tmpRoot();
    const backend = new FakeBackend({ slowDelayMs: 20, slowTokens: 40 }); // ~0.8s
    const { done, url } = await startChatbot(root, backend, { autoReleaseMs: 300, graceMs: 2000 });
    const sse = await readSse(await postJson(`${url}v1/chat/completions`, { messages: [{ role: "user", content: "slow" }], stream: true }));
    expect(sse.events.some((e) => e.error)).toBe(false);
    expect(sse.events.findLast((e) => e.choices?.[0]?.finish_reason).choices[0].finish_reason).toBe("stop");
    expect(streamedText(sse.events).split(" ")).toHaveLength(40);
    expect((await done).job.state).toBe("released");
  });

  it("refuses a non-loopback bind without a key before loading anything", async () => {
    const calls = { n: 0 };
    const err = await runJob(spec({ host: "0.0.0.0" }), { loadBackend: fakeLoader(new FakeBackend(), calls), stderr: sink(), jobsDir: tmpRoot() }).catch((e) => e);
    expect(err).toBeInstanceOf(InvalidArgumentError);
    expect(err.field).toBe("--host");
    expect(calls.n).toBe(0);
  });

  it("a port already in use fails before loading anything", async () => {
    const busy = net.createServer();
    await new Promise<void>((r) => busy.listen(0, "127.0.0.1", () => r()));
    try {
      const calls = { n: 0 };
      const root = tmpRoot();
      const port = (busy.address() as net.AddressInfo).port;
      const err = await runJob(spec({ port }), { loadBackend: fakeLoader(new FakeBackend(), calls), stderr: sink(), jobsDir: root }).catch((e) => e);
      expect(err).toBeInstanceOf(InvalidArgumentError);
      expect(err.field).toBe("--port");
      expect(err.message).toMatch(/already in use/);
      expect(calls.n).toBe(0);
      expect(readdirSync(root)).toEqual([]);
    } finally {
      busy.close();
    }
  });

  it("a missing model path fails before a job is created", async () => {
    const root = tmpRoot();
    const err = await runJob(spec({ model: "/nonexistent/model.gguf" }), { stderr: sink(), jobsDir: root }).catch((e) => e);
    expect(err).toMatchObject({ code: "ERR_FILE_NOT_FOUND", message: expect.stringContaining("--model") });
    expect(readdirSync(root)).toEqual([]);
  });

  it("a failed load ends the job failed with the error", async () => {
    const root = tmpRoot();
    const r = await runJob(spec(), {
      loadBackend: async () => { throw new Llama2Error("ERR_OUT_OF_MEMORY", "cudaMalloc failed"); },
      stderr: sink(),
      jobsDir: root,
    });
    expect(r.exitCode).toBe(1);
    expect(readJob(r.job.dir)).toMatchObject({ state: "failed", error: "ERR_OUT_OF_MEMORY: cudaMalloc failed" });
  });

  it("a cancel during loading stops the load and records cancelled", async () => {
    const root = tmpRoot();
    const backend = new FakeBackend();
    let job!: Job;
    const done = runJob(spec(), {
      loadBackend: (_s, _p, signal) => new Promise((resolve, reject) => {
        signal.addEventListener("abort", () => reject(new Llama2Error("ERR_ABORTED", "load aborted")));
        setTimeout(() => resolve(backend), 10_000).unref();
      }),
      stderr: sink(), jobsDir: root, onJob: (j) => (job = j), controlPollMs: 20,
    });
    await waitFor(() => job?.state === "preparing", 2000, "preparing");
    expect((await cancelJob(root, job.id, { waitMs: 3000 })).outcome).toBe("cancelled");
    expect((await done).exitCode).toBe(130);
    expect(readJob(job.dir).history.map((h) => h.state)).toEqual(["created", "preparing", "cancelled"]);
  });
});

describe("cancel edge cases and CLI commands", () => {
  function fakeRecord(root: string, over: Partial<JobRecord>): string {
    const job = Job.create(root, spec());
    writeJsonAtomic(path.join(job.dir, "job.json"), { ...job.record, ...over });
    return job.dir;
  }

  it("marks a job whose process is gone as cancelled (stale pid)", async () => {
    const root = tmpRoot();
    const dead = spawnSync(process.execPath, ["-e", ""]).pid!;
    const dir = fakeRecord(root, { state: "running", pid: dead });
    const r = await cancelJob(root, path.basename(dir), { waitMs: 1000 });
    expect(r.outcome).toBe("stale");
    expect(readJob(dir).state).toBe("cancelled");
    expect(readFileSync(path.join(dir, "log.txt"), "utf8")).toMatch(/no longer running \(stale\)/);
  });

  it("treats a recycled pid (same pid, other start time) as stale", async () => {
    const root = tmpRoot();
    const dir = fakeRecord(root, { state: "running", pid: process.pid, pidStart: "1" });
    expect((await cancelJob(root, path.basename(dir), { waitMs: 1000 })).outcome).toBe("stale");
  });

  it("a job that already ended: nothing to cancel", async () => {
    const root = tmpRoot();
    const dir = fakeRecord(root, { state: "succeeded" });
    const out = io();
    expect(await cancelCommand.run({ wait: "1s", jobsDir: root }, [path.basename(dir)], out)).toBe(0);
    expect(out.stdout.text()).toMatch(/already ended \(succeeded\)/);
    expect(readJob(dir).state).toBe("succeeded");
  });

  it("a live job that does not stop in time: exit 1 and a hint", async () => {
    const root = tmpRoot();
    const job = Job.create(root, spec()); // alive (our pid) but nobody polls its control file
    const out = io();
    expect(await cancelCommand.run({ wait: "200ms", jobsDir: root }, [job.id], out)).toBe(1);
    expect(out.stderr.text()).toMatch(/still created after 200ms/);
    expect(existsSync(path.join(job.dir, "control.json"))).toBe(true);
  });

  it("llama2 jobs lists jobs as a table and as JSON, showing lost jobs", async () => {
    const root = tmpRoot();
    const a = Job.create(root, spec({ name: "first" }));
    const dead = spawnSync(process.execPath, ["-e", ""]).pid!;
    fakeRecord(root, { state: "running", pid: dead });
    const out = io();
    expect(await jobsCommand.run({ jobsDir: root }, [], out)).toBe(0);
    const lines = out.stdout.text().trim().split("\n");
    expect(lines[0]).toMatch(/^ID\s+NAME\s+HANDLER\s+STATE\s+MODEL/);
    expect(lines).toHaveLength(3);
    expect(lines[1]).toContain(a.id);
    expect(lines[1]).toMatch(/first\s+chatbot\s+created\s+demo/);
    expect(lines[2]).toMatch(/lost \(running\)/);
    const jout = io();
    await jobsCommand.run({ jobsDir: root, json: true }, [], jout);
    const parsed = JSON.parse(jout.stdout.text());
    expect(parsed.map((j: any) => j.shownState)).toEqual(["created", "lost (running)"]);
    const empty = io();
    await jobsCommand.run({ jobsDir: tmpRoot() }, [], empty);
    expect(empty.stdout.text()).toMatch(/^no jobs in /);
    const one = io();
    await jobsCommand.run({ jobsDir: root, limit: 1 }, [], one);
    expect(one.stdout.text().trim().split("\n")).toHaveLength(2);
    for (const limit of [0, -1]) {
      const err = await jobsCommand.run({ jobsDir: root, limit }, [], io()).catch((e) => e);
      expect(err, String(limit)).toBeInstanceOf(InvalidArgumentError);
      expect(err.field).toBe("--limit");
    }
  });

  it("llama2 logs prints, tails, and follows until the job ends", async () => {
    const root = tmpRoot();
    const job = Job.create(root, spec());
    job.log("info", "one");
    job.log("warn", "two");
    const out = io();
    expect(await logsCommand.run({ jobsDir: root }, [job.id], out)).toBe(0);
    expect(out.stdout.text()).toMatch(/INFO  one\n.*WARN  two\n$/);
    const tail = io();
    await logsCommand.run({ jobsDir: root, tail: 1, json: true }, [job.id], tail);
    expect(JSON.parse(tail.stdout.text())).toMatchObject({ level: "warn", msg: "two" });

    const follow = io();
    const following = logsCommand.run({ jobsDir: root, follow: true }, [job.id], follow);
    await new Promise((r) => setTimeout(r, 300));
    job.log("info", "three");
    job.transition("preparing");
    job.transition("cancelled", "test over");
    expect(await following).toBe(0); // returned on its own: the job ended
    expect(follow.stdout.text()).toMatch(/one[\s\S]*two[\s\S]*three[\s\S]*state preparing -> cancelled \(test over\)\n$/);

    await expect(logsCommand.run({ jobsDir: root }, [], io())).rejects.toThrow(InvalidArgumentError);
  });
});
