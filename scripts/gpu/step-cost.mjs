#!/usr/bin/env node
// What one batch-1 step of T tokens costs against a step of one, after a CONTEXT-token prompt: the
// price of verifying T - 1 lookup drafts (`lookup`), every row's logits handed back (output -2) as the
// generation asks for them. With the acceptance a text gets (stats.acceptedDraftTokens), this predicts
// what prompt lookup decoding saves on that device. Medians of REPS steps, each truncated back.
//   node scripts/gpu/step-cost.mjs --model M [--device cuda] [--dtype f16] [--context 512] [--tokens 1,2,3,5,9,17] [--reps 5] [--out FILE]
// Needs dist/ and the addon only (the device machine; the test suite runs it on the CPU's demo model).
import { writeFileSync } from "node:fs";
import { Llama2 } from "../../dist/index.js";
import { opt } from "./args.mjs";

const model = opt("--model");
if (!model) {
  console.error("usage: step-cost.mjs --model PATH [--device cuda] [--dtype f16] [--context 512] [--tokens 1,2,3,5,9,17] [--reps 5] [--out FILE]");
  process.exit(2);
}
const context = Number(opt("--context", "512"));
const sizes = opt("--tokens", "1,2,3,5,9,17").split(",").map(Number);
const reps = Number(opt("--reps", "5"));
if (!(context >= 1) || !sizes.every((t) => Number.isInteger(t) && t >= 1) || !(reps >= 1)) {
  console.error("step-cost.mjs: --context, --tokens and --reps must be positive integers");
  process.exit(2);
}

const llama = await Llama2.load(model, {
  device: opt("--device", "cuda"),
  dtype: opt("--dtype", "auto"),
  contextLength: context + Math.max(...sizes),
  maxSequences: 1,
  prefixCache: false,
});
const native = llama._native();
const V = llama.info.config.vocabSize;
const ids = (n, from) => Int32Array.from({ length: n }, (_, i) => 3 + ((from + i * 7919) % (V - 3)));
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const rows = [];
try {
  const seq = native.createSequence();
  await native.forward([{ seq, tokens: ids(context, 0), output: 0 }]);
  console.log(`${llama.info.deviceName}, ${llama.info.dtype}, context ${context}, ${reps} reps`);
  for (const T of sizes) {
    const times = [];
    for (let r = 0; r <= reps; r++) {
      const t0 = performance.now();
      await native.forward([{ seq, tokens: ids(T, context + r), output: T > 1 ? -2 : -1 }]);
      const ms = performance.now() - t0;
      native.truncateSequence(seq, context);
      if (r > 0) times.push(ms); // the first is a warm-up (a new shape may build its graph)
    }
    rows.push({ tokens: T, ms: median(times) });
  }
  native.freeSequence(seq);
} finally {
  await llama.dispose();
}
const one = rows.find((r) => r.tokens === 1)?.ms ?? rows[0].ms;
for (const r of rows) {
  r.vsOne = r.ms / one;
  console.log(`T=${String(r.tokens).padStart(3)}: ${r.ms.toFixed(3)} ms (${r.vsOne.toFixed(2)}x one token)`);
}
const out = opt("--out");
if (out) writeFileSync(out, JSON.stringify({ model, device: llama.info.deviceName, dtype: llama.info.dtype, context, reps, rows }, null, 2) + "\n");
