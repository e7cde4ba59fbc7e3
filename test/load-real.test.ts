// A load test of the real stack: the chatbot job (lib/runner) serving the REAL engine (Llama2 with
// the built-in demo model on the CPU, 64 sequences) over loopback. 64 concurrent streaming clients
// of the OpenAI chat endpoint, one warm-up round and two measured rounds: no errors, every stream
// finishes, the engine batched them, and the server process's memory stays flat between rounds.
import { mkdtempSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { PassThrough } from "node:stream";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Llama2 } from "../lib/llama2.js";
import { cancelJob } from "../lib/runner/cancel.js";
import type { Job } from "../lib/runner/job.js";
import { runJob, type RunResult } from "../lib/runner/run.js";
import { parseRunSpec } from "../lib/runner/spec.js";
import { ensureDemoModel } from "../lib/synth/demo.js";
import { postJson, readSse, streamedText, waitFor } from "./helpers/fake-backend.js";
import { timeoutScale } from "./helpers/shared.js";

const CLIENTS = 64;
const MAX_TOKENS = 8;
const HEAP_GROWTH_LIMIT = 8 * 1024 * 1024;
const RSS_GROWTH_LIMIT = 48 * 1024 * 1024;
const DEMO_DIR = path.join(os.tmpdir(), "llama2-native-test-home", "models");
const SYSTEM = "You are a friendly assistant for a busy online shop. Answer briefly and politely, and never make up prices.";

setFlagsFromString("--expose-gc");
const gc = runInNewContext("gc") as () => void;

let llama: Llama2;
let job: Job;
let done: Promise<RunResult>;
let url: string;
const root = mkdtempSync(path.join(os.tmpdir(), "llama2-load-real-"));

beforeAll(async () => {
  const spec = parseRunSpec({ model: "demo", device: "cpu", context: 256, port: 0 });
  done = runJob(spec, {
    stderr: new PassThrough().resume(),
    jobsDir: root,
    onJob: (j) => (job = j),
    controlPollMs: 50,
    // The default loader, with room for 64 sequences and a handle on the engine's figures.
    loadBackend: async (s, _onProgress, signal) => {
      llama = await Llama2.load(await ensureDemoModel({ dir: DEMO_DIR }), { device: "cpu", contextLength: s.contextLength, maxSequences: CLIENTS, signal });
      return llama;
    },
  });
  done.catch(() => {});
  await waitFor(() => job?.record.url !== undefined || job?.state === "failed", 60_000, "the demo model to load");
  expect(job.record.error).toBeUndefined();
  url = job.record.url!;
}, 90_000 * timeoutScale);

afterAll(async () => {
  if (job && job.state === "running") await cancelJob(root, job.id, { waitMs: 10_000 });
  await done?.catch(() => {});
});

interface ClientResult {
  error?: string;
  completionTokens: number;
  ttftMs: number;
  ms: number;
}

async function client(i: number, round: number): Promise<ClientResult> {
  const t0 = performance.now();
  try {
    const res = await postJson(`${url}v1/chat/completions`, {
      messages: [
        { role: "system", content: SYSTEM },
        { role: "user", content: `Customer ${i} (round ${round}): do you ship to Norway?` },
      ],
      stream: true,
      stream_options: { include_usage: true },
      max_tokens: MAX_TOKENS,
      temperature: 0.8,
      seed: 1000 * round + i,
    });
    const sse = await readSse(res);
    const finish = sse.events.find((e) => e.choices?.[0]?.finish_reason)?.choices[0].finish_reason;
    const usage = sse.events.find((e) => e.usage)?.usage;
    const errorEvent = sse.events.find((e) => e.error);
    const ms = performance.now() - t0;
    const r = { completionTokens: usage?.completion_tokens ?? -1, ttftMs: sse.events[0]?.timings?.ttft_ms ?? 0, ms };
    if (sse.status !== 200 || !sse.done || errorEvent || !["stop", "length"].includes(finish) || !usage) {
      return { ...r, error: `status ${sse.status}, done ${sse.done}, finish ${finish}, error ${JSON.stringify(errorEvent)}, text '${streamedText(sse.events).slice(0, 40)}'` };
    }
    if (usage.completion_tokens < 1 || usage.completion_tokens > MAX_TOKENS) return { ...r, error: `completion_tokens ${usage.completion_tokens}` };
    return r;
  } catch (err) {
    return { error: String(err), completionTokens: 0, ttftMs: 0, ms: performance.now() - t0 };
  }
}

describe("load on the real engine (demo model, CPU)", () => {
  it(`${CLIENTS} concurrent streaming chat clients: no errors, batched, memory flat across rounds`, async () => {
    const heap: number[] = [];
    const rss: number[] = [];
    const lines: string[] = [];
    for (let round = 0; round < 3; round++) {
      const before = llama.stats();
      const t0 = performance.now();
      const results = await Promise.all(Array.from({ length: CLIENTS }, (_, i) => client(i, round)));
      const wall = performance.now() - t0;
      const errors = results.filter((r) => r.error).map((r) => r.error);
      expect(errors).toEqual([]);
      const after = llama.stats();
      const tokens = results.reduce((n, r) => n + r.completionTokens, 0);
      const ms = results.map((r) => r.ms).sort((a, b) => a - b);
      lines.push(
        `round ${round}: ${CLIENTS} streams in ${wall.toFixed(0)} ms, ${tokens} tokens (${((tokens / wall) * 1000).toFixed(0)} tok/s aggregate), ` +
          `p50 ${ms[CLIENTS >> 1]!.toFixed(0)} ms, max ${ms.at(-1)!.toFixed(0)} ms, ${after.scheduler.steps - before.scheduler.steps} steps, ` +
          `prefix-cache hits ${after.prefixCache!.hits - before.prefixCache!.hits}`,
      );
      await waitFor(() => llama.pending === 0, 5000, "the engine to go idle");
      gc();
      heap.push(process.memoryUsage().heapUsed);
      rss.push(process.memoryUsage().rss);
    }
    const st = llama.stats();
    lines.push(`max batch ${st.scheduler.maxBatch}; heap (MiB) ${heap.map((h) => (h / 2 ** 20).toFixed(1)).join(", ")}; rss (MiB) ${rss.map((h) => (h / 2 ** 20).toFixed(0)).join(", ")}`);
    console.log(`load-real:\n  ${lines.join("\n  ")}`);
    // The engine really batched the clients (64 sequences fit: 64 x 256 tokens of KV).
    expect(st.scheduler.maxBatch).toBeGreaterThanOrEqual(CLIENTS / 2);
    // Every request was answered with 200, and the /metrics endpoint saw them all.
    const metrics = await (await fetch(`${url}metrics`)).text();
    const m = /llama2_http_requests_total\{endpoint="\/v1\/chat\/completions",status="200"\} (\d+)/.exec(metrics);
    expect(Number(m?.[1])).toBe(3 * CLIENTS);
    expect(metrics).toMatch(/llama2_queue_depth 0/);
    // Round 0 warms up (JIT, KV blocks touched for the first time, the prefix cache fills); after it
    // the server's memory stays flat.
    expect(heap[2]! - heap[1]!).toBeLessThan(HEAP_GROWTH_LIMIT);
    expect(rss[2]! - rss[1]!).toBeLessThan(RSS_GROWTH_LIMIT);
    // Cached prefixes hold KV blocks only until someone needs them.
    llama.clearPrefixCache();
    expect(llama.stats().kv.freeBlocks).toBe(llama.stats().kv.totalBlocks);
  }, 90_000 * timeoutScale);
});
