// `llama2 doctor --check`: does this installation compute correctly on this machine's CPU and GPU?
// The oracle is the fp32 path's operations run on the host (native/engine/cpu/f32_emulated.cc: simple
// sequential fp32, independent of the SIMD CPU kernels and of the tuned CUDA kernels). One model (the
// built-in demo model unless given) is driven through the same tokens on every candidate: the CPU
// backend, and on a usable GPU the fp16 and int8 fast paths and the fp32 path. Each candidate's logits at
// every step are compared with its reference; int8 weights and the int8 KV cache on the GPU with the CPU's
// (the same quantization), so the bound measures the kernels, not the quantization. The reference runs on
// the host one output at a time: meant for small models (the demo model takes a second).
import { Llama2 } from "./llama2.js";
import { native } from "./native.js";
import type { LoadOptions } from "./types.js";

export interface CheckResult {
  name: string;
  /** info: a figure without a bound (int8 vs the fp32 reference: the quantization's error, model-dependent). */
  status: "pass" | "fail" | "skip" | "info";
  /** Largest max|a - b| / max|b| over the steps. */
  worstRelError?: number;
  bound?: number;
  /** Steps whose argmax equals the reference's. */
  argmaxAgree?: number;
  steps?: number;
  detail?: string;
}

export interface SelfCheckOptions {
  modelPath: string;
  deviceIndex?: number;
  /** Greedy steps after the prompt (default 12). */
  steps?: number;
  log?: (line: string) => void;
}

const PROMPT = "llama2-native checks its arithmetic: the quick brown fox jumps over the lazy dog.";

/** max|a - b| / max|b| (Infinity when `a` holds a non-finite value). Also used by scripts/gpu/validate.mjs. */
export function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let d = 0;
  let m = 0;
  for (let i = 0; i < b.length; i++) {
    if (!Number.isFinite(a[i]!)) return Infinity;
    d = Math.max(d, Math.abs(a[i]! - b[i]!));
    m = Math.max(m, Math.abs(b[i]!));
  }
  return m > 0 ? d / m : d;
}

export function argmax(a: ArrayLike<number>): number {
  let k = 0;
  for (let i = 1; i < a.length; i++) if (a[i]! > a[k]!) k = i;
  return k;
}

/** Logits after the prompt and after each fed token, in one sequence. */
export async function trace(model: Llama2, prompt: number[], feed: number[]): Promise<Float32Array[]> {
  const nm = model._native();
  const seq = nm.createSequence();
  try {
    const out: Float32Array[] = [];
    for (const tokens of [prompt, ...feed.map((t) => [t])]) {
      const [o] = await nm.forward([{ seq, tokens: Int32Array.from(tokens), output: -1 }]);
      out.push(o as Float32Array);
    }
    return out;
  } finally {
    nm.freeSequence(seq);
  }
}

/**
 * The host reference: the fp32 path emulated on the host (LLAMA2_CUDA_F32_EMULATE, read while loading;
 * restored after).
 */
export async function loadHostReference(path: string, opts: LoadOptions = {}): Promise<Llama2> {
  const before = process.env.LLAMA2_CUDA_F32_EMULATE;
  process.env.LLAMA2_CUDA_F32_EMULATE = "1";
  try {
    return await Llama2.load(path, { maxSequences: 1, ...opts, device: "cuda", dtype: "f32" });
  } finally {
    if (before === undefined) delete process.env.LLAMA2_CUDA_F32_EMULATE;
    else process.env.LLAMA2_CUDA_F32_EMULATE = before;
  }
}

export async function selfCheck(o: SelfCheckOptions): Promise<CheckResult[]> {
  const log = o.log ?? (() => {});
  const steps = o.steps ?? 12;
  const results: CheckResult[] = [];
  const ref = await loadHostReference(o.modelPath);
  let prompt: number[];
  let feed: number[];
  let want: Float32Array[];
  try {
    prompt = ref.info.hasTokenizer ? ref.tokenize(PROMPT, { bos: true }) : Array.from({ length: 24 }, (_, i) => 1 + ((i * 37) % (ref.info.config.vocabSize - 1)));
    // The reference's own greedy tokens drive every candidate (teacher forcing), so all compare step by step.
    feed = [];
    const nm = ref._native();
    const seq = nm.createSequence();
    try {
      let [lg] = await nm.forward([{ seq, tokens: Int32Array.from(prompt), output: -1 }]);
      for (let i = 0; i < steps; i++) {
        feed.push(argmax(lg as Float32Array));
        [lg] = await nm.forward([{ seq, tokens: Int32Array.from([feed.at(-1)!]), output: -1 }]);
      }
    } finally {
      nm.freeSequence(seq);
    }
    want = await trace(ref, prompt, feed);
  } finally {
    await ref.dispose();
  }

  // bound undefined: report the figures as "info".
  const compare = async (name: string, opts: LoadOptions, bound: number | undefined, against?: Float32Array[]): Promise<Float32Array[] | undefined> => {
    log(`checking ${name}`);
    let model: Llama2 | undefined;
    try {
      model = await Llama2.load(o.modelPath, { ...opts, deviceIndex: o.deviceIndex ?? 0, maxSequences: 1 });
      const got = await trace(model, prompt, feed);
      const base = against ?? want;
      let worst = 0;
      let agree = 0;
      got.forEach((g, i) => {
        worst = Math.max(worst, relErr(g, base[i]!));
        if (argmax(g) === argmax(base[i]!)) agree++;
      });
      const status = bound === undefined ? "info" : worst <= bound ? "pass" : "fail";
      results.push({ name, status, worstRelError: worst, ...(bound !== undefined && { bound }), argmaxAgree: agree, steps: got.length, detail: model.info.deviceName });
      return got;
    } catch (err) {
      results.push({ name, status: "fail", detail: `${(err as Error & { code?: string }).code ?? "Error"}: ${(err as Error).message}` });
      return undefined;
    } finally {
      await model?.dispose();
    }
  };

  // CPU: fp32 arithmetic on the file's weights, vectorized sums in another order than the reference.
  await compare("cpu", { device: "cpu" }, 1e-4);
  // int8 on the CPU: its distance from fp32 is the quantization's (reported); it is the reference of CUDA int8.
  const cpuInt8 = await compare("cpu int8", { device: "cpu", dtype: "int8" }, undefined);
  // 4-bit (dtype "q4": Q4_1 groups) likewise.
  const cpuQ4 = await compare("cpu q4", { device: "cpu", dtype: "q4" }, undefined);
  // The int8 KV cache likewise: the CPU's is the reference of the GPU's.
  const cpuKv8 = await compare("cpu kv int8", { device: "cpu", kvCacheType: "int8" }, undefined);
  const build = native().buildInfo();
  if (!build.cudaAvailable) {
    const why = build.cudaUnavailableReason ?? "no usable GPU";
    for (const name of ["cuda f32", "cuda f16", "cuda int8", "cuda q4", "cuda kv int8"]) results.push({ name, status: "skip", detail: why });
    return results;
  }
  // The fp32 path repeats the reference's operations: expected bit-identical, allowed 1e-6.
  await compare("cuda f32", { device: "cuda", dtype: "f32" }, 1e-6);
  await compare("cuda f16", { device: "cuda", dtype: "f16" }, 2e-2);
  if (cpuInt8) await compare("cuda int8", { device: "cuda", dtype: "int8" }, 2e-2, cpuInt8);
  else results.push({ name: "cuda int8", status: "skip", detail: "the CPU int8 reference failed" });
  if (cpuQ4) await compare("cuda q4", { device: "cuda", dtype: "q4" }, 2e-2, cpuQ4);
  else results.push({ name: "cuda q4", status: "skip", detail: "the CPU q4 reference failed" });
  if (cpuKv8) await compare("cuda kv int8", { device: "cuda", dtype: "f16", kvCacheType: "int8" }, 2e-2, cpuKv8);
  else results.push({ name: "cuda kv int8", status: "skip", detail: "the CPU kv int8 reference failed" });
  return results;
}
