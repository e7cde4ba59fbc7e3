// A GGUF of 4-6 bit blocks on a device: a Q4_K_M-like model at the 7B width (Q4_K; Q6_K classifier and
// every other attn_v / ffn_down, as llama.cpp's Q4_K_M mix), its blocks taken from the ggml-made rows of
// test/fixtures/ggml-blocks.json. Loads it with dtype auto on --device (CUDA: the Q4_K matrices run as they
// are on the 4-bit kernels, "q4+int8"; the Q6_K ones are decoded into int8 on upload) and on the CPU (the same
// mix: Q4_K as Q4_1 blocks, Q6_K as int8),
// and the same values as fp32 on the CPU (the exact reference, written beside it); compares the last logits
// of a prompt (relErr: the device within 2e-2 of the exact ones) and times each load. With --keep FILE the
// quantized file is left there (and the CPU checks are skipped with --no-check: a 32-layer file for
// `llama2 bench`). Exit 1 when the bound fails, 2 on bad arguments.
//   node scripts/gpu/blocks.mjs [--device cuda] [--layers 2] [--dim 4096 --ffn 11008 --heads 32] [--out blocks.json]
//   node scripts/gpu/blocks.mjs --layers 32 --keep /tmp/7b-q4km.gguf --no-check
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { writeGguf } from "../../dist/formats/gguf-writer.js";
import { Llama2 } from "../../dist/index.js";
import { relErr, trace } from "../../dist/self-check.js";
import { llamaGgufMetadata } from "../../dist/synth/model.js";
import { resolveShape } from "../../dist/synth/presets.js";
import { llamaTensors } from "../../dist/synth/tensors.js";
import { opt } from "./args.mjs";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const device = opt("--device", "cuda");
const [layers, dim, ffn, heads] = ["--layers", "--dim", "--ffn", "--heads"].map((k, i) => Number(opt(k, [2, 4096, 11008, 32][i])));
let shape;
try {
  shape = resolveShape("llama2-7b", { layers, dim, ffn, heads, kvHeads: heads });
  if (dim % 256 || ffn % 256) throw new Error("dim and ffn must be multiples of 256 (the K-quant block)");
} catch (err) {
  console.error(`blocks.mjs: ${err.message}`);
  process.exit(2);
}
const fx = JSON.parse(readFileSync(path.join(root, "test/fixtures/ggml-blocks.json"), "utf8"));

// Rows of fixture blocks (f32: ggml's decoded values of the same blocks instead).
function producer(type, rows, cols, seed, f32 = false) {
  const t = fx.types[type];
  const src = Buffer.from(t.bytes, "base64");
  const val = Buffer.from(t.values, "base64");
  const E = t.blockElements;
  const unit = f32 ? E * 4 : t.blockBytes;
  const nb = cols / E;
  const perRow = fx.cols / E;
  return function* () {
    for (let r0 = 0; r0 < rows; r0 += 64) {
      const n = Math.min(64, rows - r0);
      const out = Buffer.alloc(n * nb * unit);
      for (let r = 0; r < n; r++)
        for (let k = 0; k < nb; k++) {
          const h = (Math.imul(r0 + r, 2654435761) ^ Math.imul(k + 1, 40503) ^ Math.imul(seed + 7, 97)) >>> 0;
          const fb = (h % t.gaussianRows) * perRow + ((h >>> 8) % perRow);
          (f32 ? val : src).copy(out, (r * nb + k) * unit, fb * unit, (fb + 1) * unit);
        }
      yield out;
    }
  };
}

const keep = opt("--keep");
const check = !process.argv.includes("--no-check");
const file = keep ?? path.join(os.tmpdir(), `llama2-blocks-${process.pid}.gguf`);
const refFile = path.join(os.tmpdir(), `llama2-blocks-${process.pid}-f32.gguf`);
const metadata = llamaGgufMetadata(shape, "Q4_K_M-like blocks from test/fixtures/ggml-blocks.json");
const tensorsOf = (f32) =>
  llamaTensors(shape).map((t, i) => {
    if (t.shape.length === 1) return { name: t.gguf, type: "F32", dims: t.shape, data: () => [new Uint8Array(new Float32Array(t.shape[0]).fill(1).buffer)] };
    // llama.cpp's Q4_K_M mix: Q6_K for the classifier and for every other layer's attn_v and ffn_down.
    const layer = Number(/^blk\.(\d+)\./.exec(t.gguf)?.[1] ?? -1);
    const type = t.gguf === "output.weight" || (layer % 2 === 0 && /attn_v|ffn_down/.test(t.gguf)) ? "Q6_K" : "Q4_K";
    const [rows, cols] = t.shape;
    return { name: t.gguf, type: f32 ? "F32" : type, dims: [cols, rows], data: producer(type, rows, cols, i, f32) };
  });

const prompt = [1, 450, 4996, 17354, 1701, 29916, 432, 17204];
async function run(dev, f = file, dtype = "auto") {
  const t0 = performance.now();
  const m = await Llama2.load(f, { device: dev, dtype, maxSequences: 1, contextLength: 64 });
  const loadMs = performance.now() - t0;
  try {
    const [logits] = await trace(m, prompt, []);
    return { logits, loadMs, dtype: m.info.dtype, deviceName: m.info.deviceName };
  } finally {
    await m.dispose();
  }
}

try {
  const t0 = performance.now();
  const bytes = await writeGguf(file, { metadata, tensors: tensorsOf(false) });
  console.log(`blocks: ${layers} layers at dim ${dim}: ${(bytes / 2 ** 30).toFixed(2)} GiB written in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  if (check) {
    await writeGguf(refFile, { metadata, tensors: tensorsOf(true) });
    const a = await run(device);
    const b = await run("cpu");
    const exact = await run("cpu", refFile, "f32");
    const rel = relErr(a.logits, exact.logits), cpuRel = relErr(b.logits, exact.logits);
    const result = { layers, dim, ffn, fileBytes: bytes, device: a.deviceName, dtype: a.dtype, loadMs: a.loadMs, cpuLoadMs: b.loadMs, relErr: rel, cpuRelErr: cpuRel, bound: 2e-2 };
    console.log(
      `blocks: ${device} (${a.deviceName}, ${a.dtype}) load ${a.loadMs.toFixed(0)} ms, cpu (${b.dtype}) load ${b.loadMs.toFixed(0)} ms; ` +
        `logits relErr against the exact values: ${device} ${rel.toExponential(2)} (bound 2e-2), cpu ${cpuRel.toExponential(2)}`,
    );
    if (opt("--out")) writeFileSync(opt("--out"), JSON.stringify(result, null, 2) + "\n");
    process.exitCode = a.dtype === "q4+int8" && b.dtype === "q4+int8" && rel < 2e-2 ? 0 : 1;
  }
} finally {
  if (!keep) rmSync(file, { force: true });
  rmSync(refFile, { force: true });
}
