// Small GGUF models made of GGUF's 4-6 bit blocks, for the tests of their decoding at load
// (ggml-blocks.test.ts, cuda-emu.test.ts). The blocks come from test/fixtures/ggml-blocks.json: rows
// quantized and decoded by ggml itself (scripts/ggml-oracle/make-fixture.mjs), so each model has an
// fp32 twin holding ggml's values of its blocks.
import { readFileSync } from "node:fs";
import path from "node:path";
import { writeGguf, type GgufTensor } from "../../lib/formats/gguf-writer.js";
import { llamaGgufMetadata } from "../../lib/synth/model.js";
import { resolveShape } from "../../lib/synth/presets.js";
import { llamaTensors } from "../../lib/synth/tensors.js";
import type { Scratch } from "./corrupt.js";
import { projectRoot } from "./shared.js";

interface FixtureType {
  ggmlType: number;
  blockElements: number;
  blockBytes: number;
  rows: number;
  gaussianRows: number;
  bytes: string;
  values: string;
}
export const fx: { cols: number; types: Record<string, FixtureType> } = JSON.parse(readFileSync(path.join(projectRoot, "test/fixtures/ggml-blocks.json"), "utf8"));
export const LOAD_ONLY = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"] as const;
export type BlockType = (typeof LOAD_ONLY)[number] | "Q8_0";
/** Offsets of each block's fp16 scale fields: flipping their signs negates the whole block exactly. */
const SCALES: Record<BlockType, number[]> = {
  Q4_0: [0], Q4_1: [0, 2], Q5_0: [0], Q5_1: [0, 2], Q8_0: [0], Q2_K: [80, 82], Q3_K: [108], Q4_K: [0, 2], Q5_K: [0, 2], Q6_K: [208],
};

// A 2-layer GQA model (dim 256, FFN 512, 4 heads, 2 KV heads, vocab 256) whose matrices are blocks from
// the fixture's ggml-quantized Gaussian rows, each picked by a hash of (tensor, row, block) and negated
// (its scale signs flipped) by another bit of it.
const SHAPE = { dim: 256, ffn: 512, layers: 2, heads: 4, kvHeads: 2, vocab: 256 };  // tensors and metadata: lib/synth

function mix(a: number, b: number, c: number): number {
  let h = Math.imul(a + 0x9e3779b9, 0x85ebca6b) ^ Math.imul(b + 0x7f4a7c15, 0xc2b2ae35) ^ Math.imul(c + 0x165667b1, 0x27d4eb2f);
  h ^= h >>> 15;
  h = Math.imul(h, 0x2c1b3c6d);
  return (h ^ (h >>> 13)) >>> 0;
}

/** Rows x cols of `type` blocks, and ggml's values of those blocks. */
function matrix(type: BlockType, tensor: number, rows: number, cols: number): { blocks: Buffer; values: Float32Array } {
  const t = fx.types[type]!;
  const E = t.blockElements;
  const src = Buffer.from(t.bytes, "base64");
  const val = new Float32Array(new Uint8Array(Buffer.from(t.values, "base64")).buffer);
  const perRow = fx.cols / E;
  const blocks = Buffer.alloc((rows * cols * t.blockBytes) / E);
  const values = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    for (let k = 0; k < cols / E; k++) {
      const h = mix(tensor, r, k);
      const fb = (h % t.gaussianRows) * perRow + ((h >>> 8) % perRow); // the fixture block
      const at = (r * (cols / E) + k) * t.blockBytes;
      src.copy(blocks, at, fb * t.blockBytes, (fb + 1) * t.blockBytes);
      const negate = (h >>> 20) & 1;
      if (negate) for (const off of SCALES[type]) blocks.writeUInt16LE(blocks.readUInt16LE(at + off) ^ 0x8000, at + off);
      for (let i = 0; i < E; i++) values[r * cols + k * E + i] = negate ? -val[fb * E + i]! : val[fb * E + i]!;
    }
  }
  return { blocks, values };
}

/** The block type of each matrix: its GGUF name and layer (-1 for the embeddings and classifier). */
export type TypeOf = (name: string, layer: number) => BlockType;

/** A Q4_K_M-like mix: Q6_K classifier, attn_v and the first layer's ffn_down, Q8_0 attn_k, Q4_K elsewhere. */
export const mixedTypes: TypeOf = (name, layer) =>
  name === "output.weight" || name.includes("attn_v") || (layer === 0 && name.includes("ffn_down")) ? "Q6_K" : name.includes("attn_k") ? "Q8_0" : "Q4_K";

/** Writes the model with `typeOf`'s block types, and the same values as F32 (`ref`), into `scratch`. */
export async function writeBlockModels(scratch: Scratch, typeOf: TypeOf, tag: string, ffn = SHAPE.ffn): Promise<{ quant: string; ref: string }> {
  const shape = resolveShape("tiny", { ...SHAPE, ffn, context: 256 });
  const metadata = llamaGgufMetadata(shape, `blocks-${tag}`);
  const quant: GgufTensor[] = [];
  const ref: GgufTensor[] = [];
  llamaTensors(shape).forEach((t, i) => {
    const name = t.gguf;
    if (t.shape.length === 1) {  // norms: F32 in both files
      const w = Float32Array.from({ length: t.shape[0]! }, (_, j) => 0.5 + (mix(1000 + i, j, 7) % 1000) / 1000);
      const norm: GgufTensor = { name, type: "F32", dims: t.shape, data: () => [new Uint8Array(w.buffer)] };
      quant.push(norm);
      ref.push(norm);
      return;
    }
    const [rows, cols] = t.shape as [number, number];
    const type = typeOf(name, Number(/^blk\.(\d+)\./.exec(name)?.[1] ?? -1));
    const m = matrix(type, i, rows, cols);
    quant.push({ name, type, dims: [cols, rows], data: () => [m.blocks] });
    ref.push({ name, type: "F32", dims: [cols, rows], data: () => [new Uint8Array(m.values.buffer)] });
  });
  const q = scratch.path(`${tag}.gguf`);
  const r = scratch.path(`${tag}-f32.gguf`);
  await writeGguf(q, { metadata, tensors: quant });
  await writeGguf(r, { metadata, tensors: ref });
  return { quant: q, ref: r };
}
