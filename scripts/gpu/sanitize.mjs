#!/usr/bin/env node
// A short CUDA run for compute-sanitizer (memcheck / racecheck): prefill (GEMM + attention) and a
// few decode steps (graph replay, top-k) on a small model: node scripts/gpu/sanitize.mjs MODEL
import { Llama2 } from "../../dist/index.js";
const m = await Llama2.load(process.argv[2], { device: "cuda", contextLength: 256, maxSequences: 3 });
const prompts = [40, 17, 1].map((n) => Array.from({ length: n }, (_, i) => 5 + ((i * 131) % 500)));
const rs = await Promise.all(prompts.map((p, i) => m.generate(p, { temperature: i ? 0.8 : 0, seed: 1, stopOnEos: false, maxTokens: 6 }).result));
console.log("sanitize run done", rs.map((r) => r.tokenIds.length));
await m.dispose();
