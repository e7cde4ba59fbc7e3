#!/usr/bin/env node
// The CUDA backend on the host SIMT emulator against the CPU backend, at a model shape of your choice:
// a 6-token prefill and 2 decode steps, the logits of each compared (relative L2 error). Slow (minutes:
// every GPU thread is emulated), so it is not in the test suite; it checks the kernels' shape handling
// at widths the GPU runs have not met (13B: dim 5120, 40 heads; 70B: dim 8192, 64 heads over 8 KV heads,
// FFN 28672) before a GPU does. Build the emulated addon first (the test suite's cuda-emu test does):
//   CUDA_INC=/usr/local/cuda/include npx cmake-js compile -O build-emu --CDLLAMA2_CUDA=EMU
//   node dist/cli/main.js make-model --preset llama2-70b-shape-2-layers --layers 1 --vocab 512 --out /tmp/70b-1l.gguf
//   node scripts/emu-shape-check.mjs /tmp/70b-1l.gguf [--dtype f16|int8]
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const [file, flag, dtype = "auto"] = process.argv.slice(2);
if (!file || (flag !== undefined && flag !== "--dtype")) {
  console.error("usage: emu-shape-check.mjs MODEL.gguf [--dtype f16|int8]");
  process.exit(2);
}
process.env.LLAMA2_ADDON = path.join(root, "build-emu/Release/llama2_native.node");
const { Llama2 } = await import("../dist/index.js");
const { trace } = await import("../dist/self-check.js");
const opts = { contextLength: 64, maxSequences: 1, dtype };
const cpu = await Llama2.load(file, { ...opts, device: "cpu" });
const gpu = await Llama2.load(file, { ...opts, device: "cuda" });
const c = cpu.info.config;
console.log(`${gpu.info.deviceName}; dim ${c.dim}, ${c.nHeads} heads / ${c.nKvHeads} KV, FFN ${c.ffnDim}, ${gpu.info.dtype}`);
const prompt = [1, 5, 9, 200, 33, 7];
const feed = [11, 42];
const t0 = performance.now();
const a = await trace(cpu, prompt, feed);
const t1 = performance.now();
const b = await trace(gpu, prompt, feed);
console.log(`CPU ${(t1 - t0).toFixed(0)} ms, emulated CUDA ${(performance.now() - t1).toFixed(0)} ms`);
let worst = 0;
for (let i = 0; i < a.length; i++) {
  let num = 0;
  let den = 0;
  let bad = 0;
  for (let j = 0; j < a[i].length; j++) {
    if (!Number.isFinite(b[i][j])) bad++;
    num += (a[i][j] - b[i][j]) ** 2;
    den += a[i][j] ** 2;
  }
  const err = bad > 0 ? Infinity : Math.sqrt(num / den);
  worst = Math.max(worst, err);
  console.log(`${i === 0 ? "prefill" : `decode ${i}`}: relative error ${err.toExponential(2)}${bad ? `, ${bad} non-finite` : ""}`);
}
await cpu.dispose();
await gpu.dispose();
process.exit(worst < 2e-2 ? 0 : 1);
