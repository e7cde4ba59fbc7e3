#!/usr/bin/env node
// Decode steps to profile with ncu: one 128-token prompt, then N greedy tokens at batch B.
//   ncu --graph-profiling node --print-summary per-kernel node scripts/gpu/profile.mjs MODEL [N] [B]
import { Llama2 } from "../../dist/index.js";
const [file, n = "8", b = "1"] = process.argv.slice(2);
const m = await Llama2.load(file, { device: "cuda", contextLength: 512, maxSequences: Number(b) });
const prompt = Array.from({ length: 128 }, (_, i) => 100 + i);
await Promise.all(Array.from({ length: Number(b) }, () => m.generate(prompt, { temperature: 0, stopOnEos: false, maxTokens: Number(n) }).result));
await m.dispose();
