#!/usr/bin/env node
// Serving load on a real model (issue 6's load test on the GPU): the chatbot job (lib/runner) serving
// MODEL over loopback, CLIENTS concurrent streaming clients of the OpenAI chat endpoint, one warm-up
// round and ROUNDS measured rounds. Prints aggregate completion tokens/s, time to first token and
// stream-time percentiles, steps and the largest batch; any failed stream is an error (exit 1).
//   node scripts/gpu/serve-load.mjs --model M [--device cuda] [--dtype f16] [--clients 64] [--max-tokens 128]
//                                   [--rounds 2] [--context 1024] [--out FILE]
// Needs dist/ and the addon only (no test helpers), so it runs on the device machine.
import { mkdtempSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { PassThrough } from "node:stream";
import { Llama2 } from "../../dist/index.js";
import { cancelJob } from "../../dist/runner/cancel.js";
import { runJob } from "../../dist/runner/run.js";
import { parseRunSpec } from "../../dist/runner/spec.js";
import { opt } from "./args.mjs";

const model = opt("--model");
if (!model) {
  console.error("usage: serve-load.mjs --model PATH [--device cuda] [--dtype f16] [--clients 64] [--max-tokens 128] [--rounds 2] [--context 1024] [--out FILE]");
  process.exit(2);
}
const device = opt("--device", "cuda");
const dtype = opt("--dtype", "auto");
const clients = Number(opt("--clients", "64"));
const maxTokens = Number(opt("--max-tokens", "128"));
const rounds = Number(opt("--rounds", "2"));
const context = Number(opt("--context", "1024"));
const SYSTEM = "You are a friendly assistant for a busy online shop. Answer briefly and politely, and never make up prices.";

let llama;
let job;
const root = mkdtempSync(path.join(os.tmpdir(), "llama2-serve-load-"));
const spec = parseRunSpec({ model, device, context, port: 0 });
const done = runJob(spec, {
  stderr: new PassThrough().resume(),
  jobsDir: root,
  onJob: (j) => (job = j),
  controlPollMs: 50,
  loadBackend: async (s, _onProgress, signal) => {
    llama = await Llama2.load(model, { device, dtype, contextLength: s.contextLength, maxSequences: clients, signal });
    return llama;
  },
});
done.catch(() => {});
const t0 = Date.now();
while (!(job?.record.url || job?.state === "failed")) {
  if (Date.now() - t0 > 600_000) throw new Error("the model did not load in 10 minutes");
  await new Promise((r) => setTimeout(r, 100));
}
if (job.state === "failed") throw new Error(`the job failed: ${job.record.error}`);
const url = job.record.url;
console.log(`serving ${model} on ${llama.info.deviceName} (${llama.info.dtype}, KV ${llama.info.kvCacheType}) at ${url}`);

// One streaming client: SSE parsed by hand (data: lines), time to the first content token.
async function client(i, round) {
  const start = performance.now();
  let ttft = 0;
  let tokens = -1;
  let finish;
  try {
    const res = await fetch(`${url}v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        messages: [
          { role: "system", content: SYSTEM },
          { role: "user", content: `Customer ${i} (round ${round}): do you ship to Norway?` },
        ],
        stream: true,
        stream_options: { include_usage: true },
        max_tokens: maxTokens,
        temperature: 0.8,
        seed: 1000 * round + i,
      }),
    });
    if (res.status !== 200) return { error: `status ${res.status}: ${await res.text()}` };
    const dec = new TextDecoder();
    let buf = "";
    let sawDone = false;
    for await (const chunk of res.body) {
      buf += dec.decode(chunk, { stream: true });
      let nl;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl).trim();
        buf = buf.slice(nl + 1);
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") {
          sawDone = true;
          continue;
        }
        const ev = JSON.parse(data);
        if (ev.error) return { error: JSON.stringify(ev.error) };
        if (!ttft && ev.choices?.[0]?.delta?.content) ttft = performance.now() - start;
        finish = ev.choices?.[0]?.finish_reason ?? finish;
        if (ev.usage) tokens = ev.usage.completion_tokens;
      }
    }
    if (!sawDone || tokens < 1 || !["stop", "length"].includes(finish)) return { error: `done ${sawDone}, tokens ${tokens}, finish ${finish}` };
    return { tokens, ttft, ms: performance.now() - start };
  } catch (err) {
    return { error: String(err) };
  }
}

const pct = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] : NaN;
};
const report = { model, device: llama.info.deviceName, dtype: llama.info.dtype, clients, maxTokens, rounds: [] };
let errors = 0;
for (let round = 0; round <= rounds; round++) {
  const before = llama.stats().scheduler;
  const start = performance.now();
  const results = await Promise.all(Array.from({ length: clients }, (_, i) => client(i, round)));
  const wall = performance.now() - start;
  const after = llama.stats().scheduler;
  const failed = results.filter((r) => r.error);
  errors += failed.length;
  const ok = results.filter((r) => !r.error);
  const tokens = ok.reduce((n, r) => n + r.tokens, 0);
  const r = {
    round: round === 0 ? "warm-up" : round,
    wallMs: wall,
    completionTokens: tokens,
    tokensPerSecond: (tokens / wall) * 1000,
    ttftMs: { p50: pct(ok.map((x) => x.ttft), 50), p99: pct(ok.map((x) => x.ttft), 99) },
    streamMs: { p50: pct(ok.map((x) => x.ms), 50), max: pct(ok.map((x) => x.ms), 100) },
    steps: after.steps - before.steps,
    maxBatch: after.maxBatch,
    errors: failed.slice(0, 5).map((f) => f.error),
  };
  report.rounds.push(r);
  console.log(
    `round ${r.round}: ${clients} streams, ${tokens} tokens in ${wall.toFixed(0)} ms = ${r.tokensPerSecond.toFixed(0)} tok/s; ` +
      `TTFT p50 ${r.ttftMs.p50?.toFixed(0)} ms p99 ${r.ttftMs.p99?.toFixed(0)} ms; stream p50 ${r.streamMs.p50?.toFixed(0)} ms max ${r.streamMs.max?.toFixed(0)} ms; ` +
      `${r.steps} steps, max batch ${r.maxBatch}; ${failed.length} errors${failed.length ? `: ${r.errors.join(" | ")}` : ""}`,
  );
}
if (opt("--out")) writeFileSync(opt("--out"), JSON.stringify(report, null, 2));
await cancelJob(root, job.id, { waitMs: 10_000 });
await done.catch(() => {});
console.log(errors ? `FAIL: ${errors} streams failed` : "PASS: every stream finished");
process.exit(errors ? 1 : 0);
