// Model shapes of the synthetic models: Llama 2's real sizes, a 70B-wide two-layer slice (GQA at
// full width in little disk space), and small ones for tests and the built-in demo.
import { InvalidArgumentError } from "../errors.js";

export interface ModelShape {
  dim: number;
  layers: number;
  heads: number;
  kvHeads: number;
  ffn: number;
  vocab: number;
  context: number;
  ropeTheta: number;
  normEps: number;
}

const LLAMA2 = { vocab: 32000, context: 4096, ropeTheta: 10000, normEps: 1e-5 };

export const PRESETS = {
  "llama2-7b": { ...LLAMA2, dim: 4096, layers: 32, heads: 32, kvHeads: 32, ffn: 11008 },
  "llama2-13b": { ...LLAMA2, dim: 5120, layers: 40, heads: 40, kvHeads: 40, ffn: 13824 },
  "llama2-70b-shape-2-layers": { ...LLAMA2, dim: 8192, layers: 2, heads: 64, kvHeads: 8, ffn: 28672 },
  tiny: { ...LLAMA2, dim: 64, layers: 2, heads: 8, kvHeads: 4, ffn: 172, context: 512 },
  demo: { ...LLAMA2, dim: 256, layers: 4, heads: 8, kvHeads: 4, ffn: 688, context: 2048 },
} satisfies Record<string, ModelShape>;
export type PresetName = keyof typeof PRESETS;

const INT_FIELDS = ["dim", "layers", "heads", "kvHeads", "ffn", "vocab", "context"] as const;
// Bounds that catch typos (a 40960-wide model) without limiting real shapes.
const MAX: Record<(typeof INT_FIELDS)[number], number> = {
  dim: 65536,
  layers: 1024,
  heads: 1024,
  kvHeads: 1024,
  ffn: 262144,
  vocab: 1 << 20,
  context: 1 << 20,
};

/** The preset's shape with `overrides` applied, validated. */
export function resolveShape(preset: string, overrides: Partial<ModelShape> = {}): ModelShape {
  if (!Object.hasOwn(PRESETS, preset)) {
    throw new InvalidArgumentError("preset", `unknown preset '${preset}' (one of ${Object.keys(PRESETS).join(", ")})`);
  }
  const shape: ModelShape = { ...PRESETS[preset as PresetName] };
  for (const [k, v] of Object.entries(overrides)) {
    if (v === undefined) continue;
    if (!(k in shape)) throw new InvalidArgumentError(k, "not a model shape field");
    (shape as unknown as Record<string, unknown>)[k] = v;
  }
  for (const f of INT_FIELDS) {
    const v = shape[f];
    if (!Number.isSafeInteger(v) || v < 1 || v > MAX[f]) throw new InvalidArgumentError(f, `expected an integer in [1, ${MAX[f]}], got ${v}`);
  }
  if (!(Number.isFinite(shape.ropeTheta) && shape.ropeTheta > 0)) throw new InvalidArgumentError("ropeTheta", `expected a positive number, got ${shape.ropeTheta}`);
  if (!(Number.isFinite(shape.normEps) && shape.normEps > 0 && shape.normEps < 1)) throw new InvalidArgumentError("normEps", `expected a number in (0, 1), got ${shape.normEps}`);
  if (shape.dim % shape.heads !== 0) throw new InvalidArgumentError("heads", `dim ${shape.dim} is not divisible by ${shape.heads} heads`);
  if ((shape.dim / shape.heads) % 2 !== 0) throw new InvalidArgumentError("heads", `head size ${shape.dim / shape.heads} must be even (RoPE rotates pairs)`);
  if (shape.heads % shape.kvHeads !== 0) throw new InvalidArgumentError("kvHeads", `${shape.heads} heads are not a multiple of ${shape.kvHeads} KV heads`);
  return shape;
}

/** Parameter count (untied embedding and output). */
export function paramCount(s: ModelShape): number {
  const hd = s.dim / s.heads;
  const layer = 2 * s.dim + s.dim * s.heads * hd * 2 + 2 * s.dim * s.kvHeads * hd + 3 * s.dim * s.ffn;
  return 2 * s.vocab * s.dim + s.dim + s.layers * layer;
}
