// Synthetic PEFT LoRA adapters for a Hugging Face model directory: adapter_config.json and
// adapter_model.safetensors as PEFT's save_pretrained writes them, with deterministic random A and B,
// and the same deltas for the float64 reference (reference-llama.ts).
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { gguf, writeGguf } from "../../lib/formats/gguf-writer.js";
import { f16ToF32, f32ToF16 } from "../../lib/synth/half.js";
import { encodeSafetensors } from "./corrupt.js";
import type { LoraDelta } from "./reference-llama.js";

const HF_MODULE: Record<LoraDelta["module"], string> = {
  wq: "self_attn.q_proj", wk: "self_attn.k_proj", wv: "self_attn.v_proj", wo: "self_attn.o_proj",
  w1: "mlp.gate_proj", w2: "mlp.down_proj", w3: "mlp.up_proj",
};

export interface AdapterOptions {
  rank?: number;
  alpha?: number;
  modules?: LoraDelta["module"][];
  seed?: number;
  /** Amplitude of A's and B's uniform values. */
  amp?: number;
  rslora?: boolean;
  /** Extra adapter_config.json fields, or tensors (name -> [shape, values]) added to the file. */
  config?: Record<string, unknown>;
  extraTensors?: Record<string, [number[], number[]]>;
  /** Drop these tensors (by their file name) from the file. */
  drop?: string[];
  /** Written as F16 instead of F32. */
  f16?: boolean;
}

/** Writes an adapter for the model in `modelDir` into `dir`; returns the deltas at scale 1. */
export function writeAdapter(modelDir: string, dir: string, o: AdapterOptions = {}): LoraDelta[] {
  const cfg = JSON.parse(readFileSync(path.join(modelDir, "config.json"), "utf8"));
  const D = cfg.hidden_size, hd = cfg.head_dim ?? D / cfg.num_attention_heads, F = cfg.intermediate_size;
  const Q = cfg.num_attention_heads * hd, KV = (cfg.num_key_value_heads ?? cfg.num_attention_heads) * hd;
  const shapes: Record<LoraDelta["module"], [number, number]> = { wq: [Q, D], wk: [KV, D], wv: [KV, D], wo: [D, Q], w1: [F, D], w3: [F, D], w2: [D, F] };
  const r = o.rank ?? 4, alpha = o.alpha ?? 8, amp = o.amp ?? 0.15;
  const scale = o.rslora ? alpha / Math.sqrt(r) : alpha / r;
  let s = o.seed ?? 7;
  const rand = () => {
    s = (s * 1103515245 + 12345) % 2 ** 31;
    return (s / 2 ** 31 - 0.5) * 2 * amp;
  };
  const deltas: LoraDelta[] = [];
  const tensors: Array<[string, number[], Float64Array]> = [];
  for (let l = 0; l < cfg.num_hidden_layers; l++) {
    for (const m of o.modules ?? (["wq", "wk", "wv", "wo", "w1", "w2", "w3"] as const)) {
      const [rows, cols] = shapes[m];
      const A = Float64Array.from({ length: r * cols }, rand);
      const B = Float64Array.from({ length: rows * r }, rand);
      const name = `base_model.model.model.layers.${l}.${HF_MODULE[m]}`;
      tensors.push([`${name}.lora_A.weight`, [r, cols], A], [`${name}.lora_B.weight`, [rows, r], B]);
      deltas.push({ layer: l, module: m, rows, rank: r, A, B, scale });
    }
  }
  for (const [name, [shape, values]] of Object.entries(o.extraTensors ?? {})) tensors.push([name, shape, Float64Array.from(values)]);
  const header: Record<string, unknown> = { __metadata__: { format: "pt" } };
  const parts: Buffer[] = [];
  let at = 0;
  for (const [name, shape, v] of tensors) {
    if (o.drop?.includes(name)) continue;
    const b = Buffer.alloc(v.length * (o.f16 ? 2 : 4));
    v.forEach((x, i) => (o.f16 ? b.writeUInt16LE(f32ToF16(x), 2 * i) : b.writeFloatLE(x, 4 * i)));
    header[name] = { dtype: o.f16 ? "F16" : "F32", shape, data_offsets: [at, at + b.length] };
    parts.push(b);
    at += b.length;
  }
  mkdirSync(dir, { recursive: true });
  writeFileSync(path.join(dir, "adapter_model.safetensors"), encodeSafetensors({ header, data: Buffer.concat(parts) }));
  const config = {
    peft_type: "LORA", task_type: "CAUSAL_LM", r, lora_alpha: alpha, lora_dropout: 0.05, bias: "none", fan_in_fan_out: false,
    target_modules: [...new Set((o.modules ?? ["wq", "wk", "wv", "wo", "w1", "w2", "w3"]).map((m) => HF_MODULE[m].split(".")[1]))],
    use_rslora: o.rslora ?? false, use_dora: false, rank_pattern: {}, alpha_pattern: {}, ...o.config,
  };
  writeFileSync(path.join(dir, "adapter_config.json"), JSON.stringify(config, null, 2));
  // With f16 storage the reference merges the stored (rounded) values.
  if (o.f16) for (const d of deltas) for (const arr of [d.A, d.B]) arr.forEach((x, i) => (arr[i] = roundF16(x)));
  return deltas;
}

const roundF16 = (x: number) => f16ToF32(f32ToF16(x));

const GGUF_MATRIX: Record<LoraDelta["module"], string> = {
  wq: "attn_q", wk: "attn_k", wv: "attn_v", wo: "attn_output", w1: "ffn_gate", w2: "ffn_down", w3: "ffn_up",
};

/**
 * The same deltas as a llama.cpp adapter file (convert_lora_to_gguf.py's layout): general.type "adapter",
 * adapter.lora.alpha, blk.N.<matrix>.weight.lora_a ([in, r] in ggml order) and .lora_b ([r, out]), the q/k
 * lora_b rows permuted as llama.cpp's converter permutes the base's (HF row h*hd + p*hd/2 + i goes to
 * h*hd + 2i + p). `alpha` 0 writes no scaling (llama.cpp then merges B A as is).
 */
export async function writeGgufAdapter(file: string, deltas: readonly LoraDelta[], alpha: number, headDim: number): Promise<void> {
  const f32 = (v: Float64Array) => () => [new Uint8Array(Float32Array.from(v).buffer)];
  const tensors = deltas.flatMap((d) => {
    const cols = d.A.length / d.rank;
    let B = d.B;
    if (d.module === "wq" || d.module === "wk") {
      B = new Float64Array(d.B.length);
      const half = headDim / 2;
      for (let row = 0; row < d.rows; row++) {
        const h = Math.floor(row / headDim), j = row % headDim;
        const ggufRow = h * headDim + (j % half) * 2 + Math.floor(j / half); // HF row h*hd + p*half + i -> h*hd + 2i + p
        B.set(d.B.subarray(row * d.rank, (row + 1) * d.rank), ggufRow * d.rank);
      }
    }
    const name = `blk.${d.layer}.${GGUF_MATRIX[d.module]}.weight`;
    return [
      { name: `${name}.lora_a`, type: "F32" as const, dims: [cols, d.rank], data: f32(d.A) },
      { name: `${name}.lora_b`, type: "F32" as const, dims: [d.rank, d.rows], data: f32(B) },
    ];
  });
  await writeGguf(file, {
    metadata: [
      ["general.architecture", gguf.str("llama")], ["general.type", gguf.str("adapter")], ["adapter.type", gguf.str("lora")],
      ["adapter.lora.alpha", gguf.f32(alpha)],
    ],
    tensors,
  });
}
