// An independent Llama forward pass in float64 over a Hugging Face directory (config.json + one
// model.safetensors), written from transformers' LlamaForCausalLM and its rope initialisers, for tests
// that need an oracle the native engine does not share: it is checked against transformers' own logits
// (fixtures/tiny-llama-hf-reference.json) before it judges anything. Small models only (no batching, no
// cache reuse: every call runs its tokens from position 0).
import { readFileSync } from "node:fs";
import path from "node:path";
import { bf16ToF32, f16ToF32, f32ToF16 } from "../../lib/synth/half.js";
import { readSafetensors } from "./corrupt.js";

export interface ReferenceRope {
  type: "default" | "linear" | "yarn";
  factor?: number;
  original_max_position_embeddings?: number;
  beta_fast?: number;
  beta_slow?: number;
  attention_factor?: number;
}

/** One adapted matrix: A [rank, in], B [rows, rank] (row-major), merged with `scale`. */
export interface LoraDelta {
  layer: number;
  module: "wq" | "wk" | "wv" | "wo" | "w1" | "w2" | "w3";
  rows: number;
  rank: number;
  A: Float64Array;
  B: Float64Array;
  scale: number;
}

interface Layer {
  wq: Float64Array; wk: Float64Array; wv: Float64Array; wo: Float64Array;
  w1: Float64Array; w2: Float64Array; w3: Float64Array; an: Float64Array; fn: Float64Array;
}

export class ReferenceLlama {
  readonly dim: number;
  readonly nLayers: number;
  readonly nHeads: number;
  readonly nKv: number;
  readonly headDim: number;
  readonly ffn: number;
  readonly vocab: number;
  readonly eps: number;
  readonly theta: number;
  readonly maxPos: number;
  private readonly emb: Float64Array;
  private readonly out: Float64Array;
  private readonly norm: Float64Array;
  private readonly layers: Layer[] = [];

  constructor(dir: string) {
    const cfg = JSON.parse(readFileSync(path.join(dir, "config.json"), "utf8"));
    this.dim = cfg.hidden_size;
    this.nLayers = cfg.num_hidden_layers;
    this.nHeads = cfg.num_attention_heads;
    this.nKv = cfg.num_key_value_heads ?? this.nHeads;
    this.headDim = cfg.head_dim ?? this.dim / this.nHeads;
    this.ffn = cfg.intermediate_size;
    this.vocab = cfg.vocab_size;
    this.eps = cfg.rms_norm_eps;
    this.theta = cfg.rope_parameters?.rope_theta ?? cfg.rope_theta ?? 10000;
    this.maxPos = cfg.max_position_embeddings;
    const st = readSafetensors(path.join(dir, "model.safetensors"));
    const get = (name: string): Float64Array => {
      const h = st.header[name];
      if (!h) throw new Error(`no tensor ${name}`);
      const [a, b] = h.data_offsets as [number, number];
      const raw = st.data.subarray(a, b);
      const n = h.shape.reduce((x: number, y: number) => x * y, 1);
      const v = new Float64Array(n);
      for (let i = 0; i < n; i++) {
        v[i] = h.dtype === "F32" ? raw.readFloatLE(4 * i) : h.dtype === "F16" ? f16ToF32(raw.readUInt16LE(2 * i)) : bf16ToF32(raw.readUInt16LE(2 * i));
      }
      return v;
    };
    this.emb = get("model.embed_tokens.weight");
    this.out = cfg.tie_word_embeddings ? this.emb : get("lm_head.weight");
    this.norm = get("model.norm.weight");
    for (let l = 0; l < this.nLayers; l++) {
      const p = `model.layers.${l}.`;
      this.layers.push({
        wq: get(p + "self_attn.q_proj.weight"), wk: get(p + "self_attn.k_proj.weight"), wv: get(p + "self_attn.v_proj.weight"),
        wo: get(p + "self_attn.o_proj.weight"), w1: get(p + "mlp.gate_proj.weight"), w2: get(p + "mlp.down_proj.weight"),
        w3: get(p + "mlp.up_proj.weight"), an: get(p + "input_layernorm.weight"), fn: get(p + "post_attention_layernorm.weight"),
      });
    }
  }

  /**
   * This model with LoRA deltas merged (W + scale B A per adapted matrix, rows in Hugging Face's order), each
   * merged matrix rounded to fp16 when `f16` (what a merge into fp16 storage keeps).
   */
  withLora(deltas: readonly LoraDelta[], f16 = false): ReferenceLlama {
    const m: ReferenceLlama = Object.create(ReferenceLlama.prototype);
    Object.assign(m, this);
    const layers = this.layers.map((l) => ({ ...l }));
    for (const d of deltas) {
      const w = layers[d.layer]![d.module].slice();
      const cols = w.length / d.rows;
      for (let o = 0; o < d.rows; o++) {
        for (let k = 0; k < d.rank; k++) {
          const s = d.scale * d.B[o * d.rank + k]!;
          for (let x = 0; x < cols; x++) w[o * cols + x]! += s * d.A[k * cols + x]!;
        }
      }
      if (f16) for (let i = 0; i < w.length; i++) w[i] = f16ToF32(f32ToF16(w[i]!));
      layers[d.layer]![d.module] = w;
    }
    (m as unknown as { layers: Layer[] }).layers = layers;
    return m;
  }

  /** transformers' inverse frequencies and attention scaling for a rope configuration. */
  ropeFrequencies(rope: ReferenceRope = { type: "default" }): { inv: Float64Array; scale: number } {
    const d = this.headDim;
    const inv = new Float64Array(d / 2);
    for (let i = 0; i < d / 2; i++) inv[i] = 1 / Math.pow(this.theta, (2 * i) / d);
    if (rope.type === "default") return { inv, scale: 1 };
    const factor = rope.factor!;
    if (rope.type === "linear") return { inv: inv.map((f) => f / factor), scale: 1 };
    // _compute_yarn_parameters (truncate: true)
    const orig = rope.original_max_position_embeddings ?? this.maxPos;
    const betaFast = rope.beta_fast ?? 32;
    const betaSlow = rope.beta_slow ?? 1;
    const corrDim = (rot: number) => (d * Math.log(orig / (rot * 2 * Math.PI))) / (2 * Math.log(this.theta));
    const low = Math.max(Math.floor(corrDim(betaFast)), 0);
    let high = Math.min(Math.ceil(corrDim(betaSlow)), d - 1);
    if (low === high) high += 0.001;
    const out = new Float64Array(d / 2);
    for (let i = 0; i < d / 2; i++) {
      const ramp = Math.min(Math.max((i - low) / (high - low), 0), 1);
      const extrapolationFactor = 1 - ramp;
      out[i] = (inv[i]! / factor) * (1 - extrapolationFactor) + inv[i]! * extrapolationFactor;
    }
    const scale = rope.attention_factor ?? (factor <= 1 ? 1 : 0.1 * Math.log(factor) + 1);
    return { inv: out, scale };
  }

  /** Logits at the last of `ids` (positions 0..n-1). */
  lastLogits(ids: readonly number[], rope?: ReferenceRope): Float64Array {
    const { dim: D, headDim: hd, nHeads, nKv } = this;
    const { inv, scale } = this.ropeFrequencies(rope);
    const half = hd / 2;
    const keys: Float64Array[][] = this.layers.map(() => []);
    const vals: Float64Array[][] = this.layers.map(() => []);
    let x = new Float64Array(D);
    ids.forEach((tok, pos) => {
      x = this.emb.slice(tok * D, (tok + 1) * D);
      const rot = (v: Float64Array, heads: number) => {
        for (let h = 0; h < heads; h++) {
          for (let i = 0; i < half; i++) {
            const a = pos * inv[i]!;
            const c = Math.cos(a) * scale, s = Math.sin(a) * scale;
            const x1 = v[h * hd + i]!, x2 = v[h * hd + i + half]!;
            v[h * hd + i] = x1 * c - x2 * s;
            v[h * hd + i + half] = x2 * c + x1 * s;
          }
        }
      };
      this.layers.forEach((L, l) => {
        const h = rmsnorm(x, L.an, this.eps);
        const q = matvec(L.wq, h, nHeads * hd);
        const k = matvec(L.wk, h, nKv * hd);
        const v = matvec(L.wv, h, nKv * hd);
        rot(q, nHeads);
        rot(k, nKv);
        keys[l]!.push(k);
        vals[l]!.push(v);
        const att = new Float64Array(nHeads * hd);
        for (let hh = 0; hh < nHeads; hh++) {
          const g = Math.floor(hh / (nHeads / nKv));
          const sc = keys[l]!.map((kk) => {
            let s = 0;
            for (let i = 0; i < hd; i++) s += q[hh * hd + i]! * kk[g * hd + i]!;
            return s / Math.sqrt(hd);
          });
          const m = Math.max(...sc);
          const e = sc.map((s) => Math.exp(s - m));
          const z = e.reduce((a, b) => a + b, 0);
          e.forEach((w, t) => {
            for (let i = 0; i < hd; i++) att[hh * hd + i]! += (w / z) * vals[l]![t]![g * hd + i]!;
          });
        }
        const o = matvec(L.wo, att, D);
        for (let i = 0; i < D; i++) x[i]! += o[i]!;
        const h2 = rmsnorm(x, L.fn, this.eps);
        const gate = matvec(L.w1, h2, this.ffn);
        const up = matvec(L.w3, h2, this.ffn);
        for (let i = 0; i < this.ffn; i++) gate[i] = (gate[i]! / (1 + Math.exp(-gate[i]!))) * up[i]!;
        const down = matvec(L.w2, gate, D);
        for (let i = 0; i < D; i++) x[i]! += down[i]!;
      });
    });
    return matvec(this.out, rmsnorm(x, this.norm, this.eps), this.vocab);
  }
}

function rmsnorm(x: Float64Array, w: Float64Array, eps: number): Float64Array {
  let ss = 0;
  for (const v of x) ss += v * v;
  const r = 1 / Math.sqrt(ss / x.length + eps);
  return x.map((v, i) => v * r * w[i]!);
}

/** w: [rows, x.length] row-major (PyTorch's [out, in]). */
function matvec(w: Float64Array, x: Float64Array, rows: number): Float64Array {
  const n = x.length;
  const y = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    let s = 0;
    const o = r * n;
    for (let i = 0; i < n; i++) s += w[o + i]! * x[i]!;
    y[r] = s;
  }
  return y;
}
