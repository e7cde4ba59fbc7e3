// The evaluation handler on a small dataset with good lines, bad lines and a failing line.
import { linkSync, mkdtempSync, readFileSync, symlinkSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { PassThrough } from "node:stream";
import { describe, expect, it } from "vitest";
import { InvalidArgumentError, Llama2Error } from "../lib/errors.js";
import type { Job } from "../lib/runner/job.js";
import { runJob } from "../lib/runner/run.js";
import { parseRunSpec } from "../lib/runner/spec.js";
import { readJob } from "../lib/runner/store.js";
import { echoReply, FakeBackend, waitFor } from "./helpers/fake-backend.js";

const tmp = (): string => mkdtempSync(path.join(os.tmpdir(), "llama2-eval-"));

function stderrSink(): PassThrough & { text: () => string } {
  const s = new PassThrough() as PassThrough & { text: () => string };
  let buf = "";
  s.on("data", (d: Buffer) => (buf += d.toString()));
  s.text = () => buf;
  return s;
}

const DATASET = [
  JSON.stringify({ id: "a", prompt: "the quick brown fox" }),
  "",
  JSON.stringify({ id: 2, messages: [{ role: "user", content: "hello chat" }], max_tokens: 2, temperature: 0 }),
  "{not json",
  JSON.stringify({ id: "bad-temp", prompt: "x", temperature: 5 }),
  JSON.stringify({ id: "fails", prompt: "please FAIL here" }),
  JSON.stringify({ id: "both", prompt: "x", messages: [] }),
  JSON.stringify({ prompt: "last line" }),
].join("\n");

describe("evaluation handler", () => {
  it("runs good lines, reports bad ones by line number, writes results and a summary", async () => {
    const dir = tmp();
    const dataset = path.join(dir, "data.jsonl");
    writeFileSync(dataset, DATASET + "\n");
    const backend = new FakeBackend();
    const stderr = stderrSink();
    const spec = parseRunSpec({ handler: "evaluation", dataset, maxTokens: 50, seed: 7, concurrency: 2 });
    const { job, exitCode } = await runJob(spec, { loadBackend: async () => backend, stderr, jobsDir: path.join(dir, "jobs") });
    expect(exitCode).toBe(0);
    expect(job.state).toBe("succeeded");
    expect(backend.disposed).toBe(true);

    const results = readFileSync(path.join(job.dir, "results.jsonl"), "utf8").trim().split("\n").map((l) => JSON.parse(l));
    const byLine = new Map(results.map((r) => [r.line, r]));
    expect([...byLine.keys()].sort((a, b) => a - b)).toEqual([1, 3, 4, 5, 6, 7, 8]);
    expect(byLine.get(1)).toMatchObject({ id: "a", output: echoReply("the quick brown fox").join(" "), finish_reason: "stop", completion_tokens: 7 });
    expect(byLine.get(1).ttft_ms).toBeGreaterThanOrEqual(0);
    expect(byLine.get(3)).toMatchObject({ id: 2, finish_reason: "length", completion_tokens: 2 });
    expect(byLine.get(4).error).toMatch(/invalid JSON/);
    expect(byLine.get(5).error).toMatch(/temperature/);
    expect(byLine.get(6)).toMatchObject({ id: "fails", code: "ERR_CUDA" });
    expect(byLine.get(7).error).toMatch(/exactly one of 'prompt' or 'messages'/);
    expect(byLine.get(8).output).toBe(echoReply("last line").join(" "));

    // Per-line options override the run's defaults; defaults apply otherwise.
    const chatCall = backend.calls.find((c) => c.kind === "chat")!;
    expect(chatCall.opts).toMatchObject({ temperature: 0, maxTokens: 2, seed: 7 });
    expect(backend.calls.find((c) => c.input === "the quick brown fox")!.opts).toMatchObject({ maxTokens: 50, seed: 7 });

    const summary = JSON.parse(readFileSync(path.join(job.dir, "summary.json"), "utf8"));
    expect(summary).toMatchObject({ complete: true, lines: 7, ok: 3, errors: 1, badLines: 3, cut: 0 });
    expect(summary.problems.map((p: { line: number }) => p.line).sort()).toEqual([4, 5, 6, 7]);
    expect(summary.latencyMs.p50).toBeGreaterThan(0);
    expect(summary.latencyMs.p99).toBeGreaterThanOrEqual(summary.latencyMs.p50);
    expect(summary.ttftMs.p90).not.toBeNull();
    expect(summary.throughput.completionTokensPerSecond).toBeGreaterThan(0);
    expect(summary.tokens.completion).toBe(7 + 2 + echoReply("last line").length);

    expect(stderr.text()).toMatch(/evaluating \[#+\] 100% 7\/7, 4 error\(s\)/);
    expect(stderr.text()).toMatch(/warn: line 4: line: invalid JSON/);
    const rec = readJob(job.dir);
    expect(rec.outputs).toEqual({ results: path.join(job.dir, "results.jsonl"), summary: path.join(job.dir, "summary.json") });
    expect(rec.figures).toMatchObject({ requests: 4, errors: 1 });
  });

  it("--out puts results and summary elsewhere", async () => {
    const dir = tmp();
    const dataset = path.join(dir, "d.jsonl");
    writeFileSync(dataset, JSON.stringify({ prompt: "one" }) + "\n");
    const out = path.join(dir, "res.jsonl");
    const spec = parseRunSpec({ handler: "evaluation", dataset, out });
    await runJob(spec, { loadBackend: async () => new FakeBackend(), stderr: stderrSink(), jobsDir: path.join(dir, "jobs") });
    expect(readFileSync(out, "utf8").trim().split("\n")).toHaveLength(1);
    expect(JSON.parse(readFileSync(path.join(dir, "res.summary.json"), "utf8")).ok).toBe(1);
  });

  it("refuses an --out that would overwrite the dataset, or is a directory, before loading", async () => {
    const dir = tmp();
    const dataset = path.join(dir, "d.jsonl");
    const content = JSON.stringify({ prompt: "one" }) + "\n";
    writeFileSync(dataset, content);
    linkSync(dataset, path.join(dir, "hard.jsonl"));
    symlinkSync(dataset, path.join(dir, "soft.jsonl"));
    const cases: [string, RegExp][] = [
      [dataset, /dataset/], // the same path
      [path.join(dir, "sub", "..", "d.jsonl"), /dataset/], // the same path, spelt differently
      [path.join(dir, "hard.jsonl"), /dataset/], // the same inode
      [path.join(dir, "soft.jsonl"), /dataset/], // a link to it
      [dir, /is a directory/],
    ];
    for (const [out, re] of cases) {
      let loaded = false;
      const spec = parseRunSpec({ handler: "evaluation", dataset, out });
      const err = await runJob(spec, { loadBackend: async () => ((loaded = true), new FakeBackend()), stderr: stderrSink(), jobsDir: path.join(dir, "jobs") }).catch((e) => e);
      expect(err, out).toBeInstanceOf(InvalidArgumentError);
      expect(err.field).toBe("--out");
      expect(err.message).toMatch(re);
      expect(loaded).toBe(false);
    }
    // The summary file derived from --out (d.jsonl -> d.summary.json) may not be the dataset either.
    const summaryDataset = path.join(dir, "d.summary.json");
    writeFileSync(summaryDataset, content);
    const sumErr = await runJob(parseRunSpec({ handler: "evaluation", dataset: summaryDataset, out: path.join(dir, "d.jsonl") }), {
      loadBackend: async () => new FakeBackend(), stderr: stderrSink(), jobsDir: path.join(dir, "jobs"),
    }).catch((e) => e);
    expect(sumErr.field).toBe("--out");
    expect(sumErr.message).toMatch(/summary/);
    expect(readFileSync(dataset, "utf8")).toBe(content);
    expect(readFileSync(summaryDataset, "utf8")).toBe(content);
  });

  it("a missing dataset fails before the model is loaded", async () => {
    let loaded = false;
    const spec = parseRunSpec({ handler: "evaluation", dataset: "/nonexistent/data.jsonl" });
    const err = await runJob(spec, { loadBackend: async () => ((loaded = true), new FakeBackend()), stderr: stderrSink(), jobsDir: tmp() }).catch((e) => e);
    expect(err).toBeInstanceOf(Llama2Error);
    expect(err.message).toMatch(/--dataset: no such file/);
    expect(loaded).toBe(false);
    const noFlag = await runJob(parseRunSpec({ handler: "evaluation" }), { loadBackend: async () => new FakeBackend(), stderr: stderrSink(), jobsDir: tmp() }).catch((e) => e);
    expect(noFlag.field).toBe("--dataset");
  });

  it("auto-release mid-run: stops taking lines, cuts in-flight ones after the grace period, summary says incomplete", async () => {
    const dir = tmp();
    const dataset = path.join(dir, "d.jsonl");
    writeFileSync(dataset, Array.from({ length: 20 }, (_, i) => JSON.stringify({ prompt: `slow ${i}` })).join("\n"));
    const backend = new FakeBackend({ slowDelayMs: 10, slowTokens: 1000 });
    let job!: Job;
    const spec = { ...parseRunSpec({ handler: "evaluation", dataset }), autoReleaseMs: 300, graceMs: 100 };
    const done = runJob(spec, { loadBackend: async () => backend, stderr: stderrSink(), jobsDir: path.join(dir, "jobs"), onJob: (j) => (job = j) });
    const r = await done;
    expect(r.exitCode).toBe(0);
    expect(job.state).toBe("released");
    await waitFor(() => backend.calls.every((c) => c.finished), 2000, "all generations to end");
    expect(backend.calls).toHaveLength(1);
    expect(backend.calls[0]!.aborted).toBe(true);
    const summary = JSON.parse(readFileSync(path.join(job.dir, "summary.json"), "utf8"));
    expect(summary).toMatchObject({ complete: false, stoppedBy: "released", ok: 0, cut: 1 });
  });
});
