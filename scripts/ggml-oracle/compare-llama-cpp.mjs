// Our logits against llama.cpp's on the same GGUF files: the last position of a teacher-forced prompt,
// ours with dtype f32 (the blocks' exact values) and auto (int8), llama.cpp's from llama-logits (its CPU
// backend, which quantizes activations for its block matmuls, so it is not exact itself: on a Q8_0 file,
// where both run the same weights, the two differ by ~6e-3 of the largest logit). See README.md here.
//   LLAMA_CPP_BIN=/path/to/llama.cpp/build/bin node scripts/ggml-oracle/compare-llama-cpp.mjs LOGITS_EXE a.gguf b.gguf ...
import { execFileSync } from "node:child_process";
import { Llama2 } from "../../dist/index.js";
import { relErr, trace } from "../../dist/self-check.js";

const [exe, ...files] = process.argv.slice(2);
if (!exe || !files.length) throw new Error("usage: compare-llama-cpp.mjs LOGITS_EXE model.gguf ...");
const ids = [1, 450, 4996, 17354, 1701, 29916, 432, 17204, 975, 278, 17366, 11203, 29889, 13, 1576];
const top = (a, k) => Array.from(a, (v, i) => [i, v]).sort((x, y) => y[1] - x[1]).slice(0, k).map((p) => p[0]);

async function ours(file, dtype) {
  const m = await Llama2.load(file, { device: "cpu", dtype, threads: 2 });
  try {
    const [logits] = await trace(m, ids, []);
    return { logits, info: m.info };
  } finally {
    await m.dispose();
  }
}

const env = { ...process.env, ...(process.env.LLAMA_CPP_BIN && { LD_LIBRARY_PATH: process.env.LLAMA_CPP_BIN }) };
for (const f of files) {
  const buf = execFileSync(exe, [f, ids.join(",")], { env, maxBuffer: 1 << 26 });
  const ref = new Float32Array(buf.buffer, buf.byteOffset, buf.byteLength / 4);
  const row = [f.split("/").pop()];
  for (const dtype of ["f32", "auto"]) {
    const { logits, info } = await ours(f, dtype);
    const [t, r] = [top(logits, 5), top(ref, 5)];
    row.push(`${dtype} (${info.dtype}): ${relErr(logits, ref).toExponential(2)}, top-1 ${t[0] === r[0] ? "same" : "differs"}, top-5 shared ${t.filter((x) => r.includes(x)).length}`);
  }
  console.log(row.join(" | "));
}
