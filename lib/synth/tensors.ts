// The tensors of a Llama 2 model, named for both formats, and the producers that stream their
// synthetic values row by row.
//
// Scale of the random weights, chosen so that activations stay O(1) over any number of layers and
// tokens: after RMSNorm a vector has RMS 1, and a matrix with std 0.5/sqrt(fan_in) maps it to RMS
// ~0.5, so each attention/FFN block adds a residual update well below the residual stream itself
// (embeddings have std 1) and the stream grows only slowly with depth; nothing approaches fp16's
// 65504. The output matrix uses 1/sqrt(dim) so that logits have std ~1 (a soft but not flat
// distribution). Norm weights are 1 plus small noise (std 0.02) so that a swapped or misread norm
// shows up in a comparison, which an all-ones vector would hide.
import type { ModelShape } from "./presets.js";
import { fillRow16, fillRow32, hashName, normalTable, rowState, type ValueTable } from "./random.js";
import { quantizeQ8_0 } from "./half.js";
import type { TensorProducer } from "../formats/stream-write.js";

export interface SynthTensor {
  /** Hugging Face name, also the key of the tensor's random streams. */
  hf: string;
  gguf: string;
  /** Row-major (PyTorch) shape: [rows, cols] or [n]. */
  shape: number[];
  mean: number;
  std: number;
  /** The GGUF file holds this tensor's rows permuted for llama.cpp's RoPE with this many heads. */
  permuteHeads?: number;
}

export function llamaTensors(s: ModelShape): SynthTensor[] {
  const hd = s.dim / s.heads;
  const w = (fanIn: number) => ({ mean: 0, std: 0.5 / Math.sqrt(fanIn) });
  const norm = { mean: 1, std: 0.02 };
  const out: SynthTensor[] = [{ hf: "model.embed_tokens.weight", gguf: "token_embd.weight", shape: [s.vocab, s.dim], mean: 0, std: 1 }];
  for (let i = 0; i < s.layers; i++) {
    const hf = `model.layers.${i}.`;
    const g = `blk.${i}.`;
    out.push(
      { hf: `${hf}input_layernorm.weight`, gguf: `${g}attn_norm.weight`, shape: [s.dim], ...norm },
      { hf: `${hf}self_attn.q_proj.weight`, gguf: `${g}attn_q.weight`, shape: [s.heads * hd, s.dim], ...w(s.dim), permuteHeads: s.heads },
      { hf: `${hf}self_attn.k_proj.weight`, gguf: `${g}attn_k.weight`, shape: [s.kvHeads * hd, s.dim], ...w(s.dim), permuteHeads: s.kvHeads },
      { hf: `${hf}self_attn.v_proj.weight`, gguf: `${g}attn_v.weight`, shape: [s.kvHeads * hd, s.dim], ...w(s.dim) },
      { hf: `${hf}self_attn.o_proj.weight`, gguf: `${g}attn_output.weight`, shape: [s.dim, s.heads * hd], ...w(s.heads * hd) },
      { hf: `${hf}post_attention_layernorm.weight`, gguf: `${g}ffn_norm.weight`, shape: [s.dim], ...norm },
      { hf: `${hf}mlp.gate_proj.weight`, gguf: `${g}ffn_gate.weight`, shape: [s.ffn, s.dim], ...w(s.dim) },
      { hf: `${hf}mlp.up_proj.weight`, gguf: `${g}ffn_up.weight`, shape: [s.ffn, s.dim], ...w(s.dim) },
      { hf: `${hf}mlp.down_proj.weight`, gguf: `${g}ffn_down.weight`, shape: [s.dim, s.ffn], ...w(s.ffn) },
    );
  }
  out.push(
    { hf: "model.norm.weight", gguf: "output_norm.weight", shape: [s.dim], ...norm },
    { hf: "lm_head.weight", gguf: "output.weight", shape: [s.vocab, s.dim], mean: 0, std: 1 / Math.sqrt(s.dim) },
  );
  return out;
}

/**
 * The HF row that llama.cpp's convert_hf_to_gguf.py puts at GGUF row `row` of Q (nHead = heads) or
 * K (nHead = KV heads): weights.reshape(nHead, 2, hd/2, ...).swapaxes(1, 2), i.e. each head's two
 * rotary halves interleaved.
 */
export function permutedSourceRow(row: number, rows: number, nHead: number): number {
  const hd = rows / nHead;
  const h = Math.floor(row / hd);
  const r = row % hd;
  return h * hd + (r % 2) * (hd / 2) + Math.floor(r / 2);
}

export type Encoding = "F32" | "F16" | "BF16" | "Q8_0";
const ROW_BYTES: Record<Encoding, (cols: number) => number> = {
  F32: (c) => 4 * c,
  F16: (c) => 2 * c,
  BF16: (c) => 2 * c,
  Q8_0: (c) => (c / 32) * 34,
};

/** Two chunk buffers used in turn by all producers of one file (see TensorProducer's contract). */
export class ChunkPool {
  private bufs: Uint8Array[] = [];
  private turn = 0;
  constructor(readonly chunkBytes = 16 << 20) {}
  next(minBytes: number): Uint8Array {
    const i = this.turn++ & 1;
    if (!this.bufs[i] || this.bufs[i]!.length < minBytes) this.bufs[i] = new Uint8Array(Math.max(this.chunkBytes, minBytes));
    return this.bufs[i]!;
  }
}

/** Streams `t` in `enc`, rows in GGUF order when `gguf` (Q/K permuted), else in HF order. */
export function tensorProducer(t: SynthTensor, seed: number, enc: Encoding, gguf: boolean, pool: ChunkPool): TensorProducer {
  const rows = t.shape.length === 2 ? t.shape[0]! : 1;
  const cols = t.shape.at(-1)!;
  const rowBytes = ROW_BYTES[enc](cols);
  const job: RowJob = { seed, key: hashName(t.hf), rows, cols, perm: gguf && t.permuteHeads ? t.permuteHeads : 0, enc, rowBytes };
  return function* () {
    const table = normalTable(t.mean, t.std);
    const perChunk = Math.max(1, Math.floor(pool.chunkBytes / rowBytes));
    for (let r0 = 0; r0 < rows; r0 += perChunk) {
      const n = Math.min(perChunk, rows - r0);
      const buf = pool.next(n * rowBytes);
      fillRows(job, table, r0, n, buf);
      yield buf.subarray(0, n * rowBytes);
    }
  };
}

interface RowJob {
  seed: number;
  key: number;
  rows: number;
  cols: number;
  perm: number;
  enc: Encoding;
  rowBytes: number;
}

const state = new Uint32Array(4);
let scratch = new Float32Array(0);

// Kept out of the generator above: V8 optimizes this hot loop far better in a plain function.
function fillRows(j: RowJob, table: ValueTable, r0: number, n: number, buf: Uint8Array): void {
  const u16 = new Uint16Array(buf.buffer, buf.byteOffset, (n * j.rowBytes) >>> 1);
  const f32 = j.enc === "F32" ? new Float32Array(buf.buffer, buf.byteOffset, n * j.cols) : undefined;
  if (j.enc === "Q8_0" && scratch.length < j.cols) scratch = new Float32Array(j.cols);
  for (let i = 0; i < n; i++) {
    const row = r0 + i;
    rowState(j.seed, j.key, j.perm ? permutedSourceRow(row, j.rows, j.perm) : row, state);
    if (j.enc === "F16") fillRow16(u16, i * j.cols, j.cols, table.f16, state);
    else if (j.enc === "BF16") fillRow16(u16, i * j.cols, j.cols, table.bf16, state);
    else if (j.enc === "F32") fillRow32(f32!, i * j.cols, j.cols, table.f32, state);
    else {
      fillRow32(scratch, 0, j.cols, table.f32, state);
      quantizeQ8_0(scratch, j.cols, buf, i * j.rowBytes);
    }
  }
}
