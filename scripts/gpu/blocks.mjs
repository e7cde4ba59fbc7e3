// A GGUF of 4-6 bit blocks on a device: a Q4_K_M-like model at the 7B width (Q4_K; Q6_K classifier and
// every other attn_v / ffn_down, as llama.cpp's Q4_K_M mix), its blocks taken from the ggml-made rows of
// test/fixtures/ggml-blocks.json. Loads it with dtype auto (int8; the CUDA backend decodes the blocks row
// by row as it uploads) on --device and on the CPU, compares the last logits of a prompt (relErr, bound
// 2e-2), and times each load. Exit 1 when the bound fails, 2 on bad arguments.
//   node scripts/gpu/blocks.mjs [--device cuda] [--layers 2] [--dim 4096 --ffn 11008 --heads 32] [--out blocks.json]
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { writeGguf, gguf } from "../../dist/formats/gguf-writer.js";
import { Llama2 } from "../../dist/index.js";
import { opt } from "./args.mjs";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const device = opt("--device", "cuda");
const [layers, dim, ffn, heads] = ["--layers", "--dim", "--ffn", "--heads"].map((k, i) => Number(opt(k, [2, 4096, 11008, 32][i])));
const vocab = 32000;
if (![layers, dim, ffn, heads].every((v) => Number.isInteger(v) && v > 0) || dim % 256 || ffn % 256 || dim % heads) {
  console.error("blocks.mjs: --layers, --dim, --ffn, --heads must be positive integers, dim and ffn multiples of 256");
  process.exit(2);
}
const fx = JSON.parse(readFileSync(path.join(root, "test/fixtures/ggml-blocks.json"), "utf8"));

function producer(type, rows, cols, seed) {
  const t = fx.types[type];
  const src = Buffer.from(t.bytes, "base64");
  const nb = cols / t.blockElements;
  const perRow = fx.cols / t.blockElements;
  return function* () {
    for (let r0 = 0; r0 < rows; r0 += 64) {
      const n = Math.min(64, rows - r0);
      const out = Buffer.alloc(n * nb * t.blockBytes);
      for (let r = 0; r < n; r++)
        for (let k = 0; k < nb; k++) {
          const h = (Math.imul(r0 + r, 2654435761) ^ Math.imul(k + 1, 40503) ^ Math.imul(seed + 7, 97)) >>> 0;
          const fb = (h % t.gaussianRows) * perRow + ((h >>> 8) % perRow);
          src.copy(out, (r * nb + k) * t.blockBytes, fb * t.blockBytes, (fb + 1) * t.blockBytes);
        }
      yield out;
    }
  };
}

const file = path.join(os.tmpdir(), `llama2-blocks-${process.pid}.gguf`);
const tensors = [];
let seed = 0;
const mat = (name, type, rows, cols) => tensors.push({ name, type, dims: [cols, rows], data: producer(type, rows, cols, seed++) });
const ones = () => [new Uint8Array(new Float32Array(dim).fill(1).buffer)];
mat("token_embd.weight", "Q4_K", vocab, dim);
for (let l = 0; l < layers; l++) {
  for (const [n, rows, cols, six] of [["attn_q", dim, dim], ["attn_k", dim, dim], ["attn_v", dim, dim, 1], ["attn_output", dim, dim], ["ffn_gate", ffn, dim], ["ffn_down", dim, ffn, 1], ["ffn_up", ffn, dim]])
    mat(`blk.${l}.${n}.weight`, six && l % 2 === 0 ? "Q6_K" : "Q4_K", rows, cols);
  for (const n of ["attn_norm", "ffn_norm"]) tensors.push({ name: `blk.${l}.${n}.weight`, type: "F32", dims: [dim], data: ones });
}
tensors.push({ name: "output_norm.weight", type: "F32", dims: [dim], data: ones });
mat("output.weight", "Q6_K", vocab, dim);
const metadata = [
  ["general.architecture", gguf.str("llama")],
  ["general.name", gguf.str("Q4_K_M-like blocks from test/fixtures/ggml-blocks.json")],
  ["llama.context_length", gguf.u32(4096)],
  ["llama.embedding_length", gguf.u32(dim)],
  ["llama.block_count", gguf.u32(layers)],
  ["llama.feed_forward_length", gguf.u32(ffn)],
  ["llama.attention.head_count", gguf.u32(heads)],
  ["llama.attention.head_count_kv", gguf.u32(heads)],
  ["llama.attention.layer_norm_rms_epsilon", gguf.f32(1e-5)],
];

const prompt = [1, 450, 4996, 17354, 1701, 29916, 432, 17204];
async function run(dev) {
  const t0 = performance.now();
  const m = await Llama2.load(file, { device: dev, maxSequences: 1, contextLength: 64 });
  const loadMs = performance.now() - t0;
  try {
    const nm = m._native();
    const seq = nm.createSequence();
    const [logits] = await nm.forward([{ seq, tokens: Int32Array.from(prompt), output: -1 }]);
    nm.freeSequence(seq);
    return { logits, loadMs, dtype: m.info.dtype, deviceName: m.info.deviceName };
  } finally {
    await m.dispose();
  }
}

try {
  const t0 = performance.now();
  const bytes = await writeGguf(file, { metadata, tensors });
  console.log(`blocks: ${layers} layers at dim ${dim}: ${(bytes / 2 ** 30).toFixed(2)} GiB written in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  const a = await run(device);
  const b = await run("cpu");
  let d = 0, mx = 0;
  for (let i = 0; i < b.logits.length; i++) (d = Math.max(d, Math.abs(a.logits[i] - b.logits[i]))), (mx = Math.max(mx, Math.abs(b.logits[i])));
  const relErr = d / mx;
  const result = { layers, dim, ffn, fileBytes: bytes, device: a.deviceName, dtype: a.dtype, loadMs: a.loadMs, cpuLoadMs: b.loadMs, relErr, bound: 2e-2 };
  console.log(`blocks: ${device} (${a.deviceName}, ${a.dtype}) load ${a.loadMs.toFixed(0)} ms, cpu load ${b.loadMs.toFixed(0)} ms, logits relErr ${relErr.toExponential(2)} (bound 2e-2)`);
  if (opt("--out")) writeFileSync(opt("--out"), JSON.stringify(result, null, 2) + "\n");
  process.exitCode = a.dtype === "int8" && b.dtype === "int8" && relErr < 2e-2 ? 0 : 1;
} finally {
  rmSync(file, { force: true });
}
