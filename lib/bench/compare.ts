// The comparison report: a markdown table of bench runs (ours and other engines', matched by model
// file) plus roofline predictions for GPUs nobody measured, and an SVG chart of decode speed.
//
// Prediction: decode at batch 1 reads all weights (and the KV cache) once per token, so
//   tok/s ≈ datasheet bandwidth × efficiency / bytes per token,
// where bytes per token comes from a measured run of the model and the efficiency is the one our
// engine achieved on a measured GPU (achieved GB/s ÷ that GPU's datasheet bandwidth), else 0.8.
// Only f16 and int8 runs of models reading at least 0.1 GB per token are predicted (see buildRows).
import path from "node:path";
import { BENCH_SCHEMA, MICRO_SCHEMA, type BenchResult, type DecodeFigure } from "./result.js";
import { GPUS, findGpu, type GpuSpec } from "./gpus.js";
import { fromLlamaBench, fromNodeLlamaCpp, isLlamaBench, isNodeLlamaCpp } from "./peers.js";
import { barChartSvg, type Bar } from "./svg-chart.js";
import { Llama2Error } from "../errors.js";

export interface CompareOptions {
  title?: string;
  /** GPUs to predict for (default: lib/bench/gpus.ts). */
  gpus?: GpuSpec[];
  /** Efficiency assumed when no GPU run of ours was measured (default 0.8). */
  defaultEfficiency?: number;
}

export interface Row {
  kind: "measured" | "predicted";
  /** Our engine's run (or prediction), as opposed to another engine's. */
  ours: boolean;
  engine: string;
  device: string;
  model: string;
  dtype: string;
  /** batch -> tokens/s (median). */
  decode: Map<number, number>;
  /** prompt tokens -> prefill tokens/s and TTFT ms (medians). */
  prefill: Map<number, { tps: number; ttftMs: number }>;
  roofline: number;
  loadS: number;
  /** Predicted rows: why there is no number (e.g. does not fit). */
  note?: string;
}

const PEERS = new Set(["llama.cpp", "node-llama-cpp"]);
const GB = 1e9;
/** dtypes the CUDA backend runs fast: f32 is its reference path (not for speed), bf16 is CPU-only. */
const PREDICTED_DTYPES = new Set(["f16", "int8"]);
/** Below this many bytes per token, kernel launches and host work dominate a decode step, not bandwidth. */
const MIN_PREDICTED_BYTES = 0.1 * GB;

function fail(source: string, what: string): never {
  throw new Llama2Error("ERR_FORMAT_UNSUPPORTED", `${source}: ${what}`);
}

/** Numbers in result files may be null (JSON has no NaN). */
function num(v: unknown): number {
  return typeof v === "number" && Number.isFinite(v) ? v : NaN;
}

const isObject = (v: unknown): v is Record<string, any> => typeof v === "object" && v !== null && !Array.isArray(v);
/** A Stat the report prints: its median must be a real figure (a hand-edited null or -5 is not). */
const isStat = (v: unknown) => isObject(v) && typeof v.median === "number" && Number.isFinite(v.median) && v.median >= 0;
/** Figures read through num(): absent or null means "not measured", anything else must be a number >= 0. */
const isOptionalFigure = (v: unknown) => v === undefined || v === null || (typeof v === "number" && v >= 0);
const isCount = (v: unknown) => Number.isInteger(v) && (v as number) > 0;

/** Checks the parts of a BenchResult the report reads; throws naming the file and the field. */
export function validateBenchResult(x: unknown, source: string): BenchResult {
  const r = x as Record<string, any>;
  if (!isObject(r)) fail(source, "not a bench result (expected a JSON object)");
  if (r.schema !== BENCH_SCHEMA)
    fail(source, `not a bench result: schema is ${JSON.stringify(r.schema)}, expected "${BENCH_SCHEMA}" (llama-bench and node-llama-cpp JSON are also accepted)`);
  const need = (ok: boolean, field: string) => ok || fail(source, `invalid bench result: '${field}' is missing or malformed`);
  need(isObject(r.engine) && typeof r.engine.name === "string" && (r.engine.backend === "cpu" || r.engine.backend === "cuda"), "engine");
  need(typeof r.engine.version === "string", "engine.version");
  need(isObject(r.machine) && isObject(r.machine.cpu), "machine.cpu");
  // absent (or null) on CPU runs; when present the report labels rows and finds the datasheet entry by its name
  const gpu = r.machine.gpu;
  need(gpu === undefined || gpu === null || (isObject(gpu) && typeof gpu.name === "string" && gpu.name.trim() !== ""), "machine.gpu.name");
  need(isObject(r.model) && typeof r.model.path === "string" && typeof r.model.dtype === "string", "model");
  need(isObject(r.model.config), "model.config");
  need(typeof r.model.weightBytes === "number" && Number.isFinite(r.model.weightBytes) && r.model.weightBytes > 0, "model.weightBytes");
  need(Array.isArray(r.decode), "decode");
  r.decode.forEach((d: any, i: number) => {
    need(isObject(d) && isCount(d.batch), `decode[${i}].batch`);
    need(isStat(d.tokensPerSecond), `decode[${i}].tokensPerSecond`);
    for (const f of ["bytesPerStep", "achievedGBs", "rooflineFraction"]) need(isOptionalFigure(d[f]), `decode[${i}].${f}`);
  });
  need(Array.isArray(r.prefill), "prefill");
  r.prefill.forEach((p: any, i: number) => {
    need(isObject(p) && isCount(p.promptTokens), `prefill[${i}].promptTokens`);
    need(isStat(p.tokensPerSecond), `prefill[${i}].tokensPerSecond`);
    need(isStat(p.ttftMs), `prefill[${i}].ttftMs`);
  });
  need(isObject(r.load) && isStat(r.load.warmMs), "load.warmMs");
  need(isObject(r.memory), "memory");
  return r as BenchResult;
}

/** Files that share bench/results/ with bench results but are not compared: schema -> what they are. */
const SKIPPED_SCHEMAS = new Map<unknown, string>([[MICRO_SCHEMA, "a `llama2 micro` result"]]);

/**
 * Reads a bench result file's text: our BenchResult (or an array of them), llama-bench JSON, or node-llama-cpp timings.
 * With `onSkip`, a file of a known non-bench schema (a `llama2 micro` result) yields no runs and `onSkip` says why;
 * without it, such a file is an error like any other.
 */
export function parseBenchFile(text: string, source: string, onSkip?: (why: string) => void): BenchResult[] {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    fail(source, `not JSON (${(err as Error).message})`);
  }
  const schema = isObject(json) ? json.schema : undefined;
  const skipped = SKIPPED_SCHEMAS.get(schema);
  if (skipped && onSkip) {
    onSkip(`${source}: skipped, ${skipped} (schema ${JSON.stringify(schema)}), not a bench result`);
    return [];
  }
  if (isLlamaBench(json)) return fromLlamaBench(json, source);
  if (isNodeLlamaCpp(json)) return fromNodeLlamaCpp(json, source);
  const items = Array.isArray(json) ? json : [json];
  if (items.length === 0) fail(source, "an empty array, not a bench result");
  return items.map((x, i) => validateBenchResult(x, items.length > 1 ? `${source}[${i}]` : source));
}

const modelKey = (r: BenchResult) => path.basename(r.model.path);
const isOurs = (r: BenchResult) => !PEERS.has(r.engine.name);
const deviceOf = (r: BenchResult) =>
  r.engine.backend === "cuda" && r.machine.gpu ? r.machine.gpu.name : `CPU${r.machine.cpu.model ? `: ${r.machine.cpu.model}` : ""}`;
const batch1 = (r: BenchResult): DecodeFigure | undefined => r.decode.find((d) => d.batch === 1);

function switchesOf(r: BenchResult): string {
  const sw = r.engine.switches && typeof r.engine.switches === "object" ? Object.entries(r.engine.switches) : [];
  return sw.length > 0 ? ` [${sw.map(([k, v]) => `${k}=${String(v)}`).join(" ")}]` : "";
}

function measuredRow(r: BenchResult): Row {
  const prefill = new Map<number, { tps: number; ttftMs: number }>();
  for (const p of r.prefill) prefill.set(p.promptTokens, { tps: num(p.tokensPerSecond?.median), ttftMs: num(p.ttftMs?.median) });
  return {
    kind: "measured",
    ours: isOurs(r),
    // A/B runs differ only by their switches: the engine cell names them.
    engine: `${r.engine.name} ${r.engine.version} (${r.engine.backend})${switchesOf(r)}`,
    device: deviceOf(r),
    model: modelKey(r),
    dtype: r.model.dtype,
    decode: new Map(r.decode.map((d) => [d.batch, num(d.tokensPerSecond?.median)])),
    prefill,
    roofline: num(batch1(r)?.rooflineFraction),
    loadS: num(r.load.warmMs?.median) / 1000,
  };
}

interface Efficiency {
  value: number;
  why: string;
}

/** One GPU run's efficiency: against its datasheet entry, else against the copy bandwidth the bench measured. */
function runEfficiency(r: BenchResult): Efficiency {
  const d = batch1(r)!;
  const gpu = r.machine.gpu!.name;
  const spec = findGpu(gpu);
  if (spec) return { value: d.achievedGBs / spec.bandwidthGBs, why: `${d.achievedGBs.toFixed(0)} GB/s achieved on ${gpu} = ${pct(d.achievedGBs / spec.bandwidthGBs)} of its ${spec.bandwidthGBs} GB/s datasheet bandwidth` };
  const f = num(d.rooflineFraction);
  return { value: f, why: `${pct(f)} of the copy bandwidth measured on ${gpu} (not in the datasheet list)` };
}

/** Our engine's bandwidth efficiency on measured GPUs: same model and dtype preferred; median of runs. */
function efficiency(results: BenchResult[], model: string, dtype: string, fallback: number): Efficiency {
  const gpuRuns = results.filter(
    (r) => isOurs(r) && r.engine.backend === "cuda" && r.machine.gpu && r.model.dtype === dtype && Number.isFinite(num(batch1(r)?.achievedGBs)),
  );
  const same = gpuRuns.filter((r) => modelKey(r) === model);
  const runs = same.length ? same : gpuRuns;
  const all = runs.map(runEfficiency).filter((e) => Number.isFinite(e.value) && e.value > 0);
  // More than the bandwidth bound is not an efficiency: the GPU was taken for the wrong datasheet entry
  // or the measurement is off. Applying it would predict every other GPU above its own bound.
  const effs = all.filter((e) => e.value <= 1).sort((a, b) => a.value - b.value);
  const refused = all.filter((e) => e.value > 1).map((e) => e.why);
  const refusedNote = refused.length ? ` Not applied, above 100% (the GPU entry or the measurement looks wrong): ${refused.join("; ")}.` : "";
  if (!effs.length)
    return { value: fallback, why: `${fallback} assumed (${refused.length ? "no measured GPU run of llama2-native was usable" : "no GPU run of llama2-native was measured"}).${refusedNote}` };
  const e = effs[Math.floor((effs.length - 1) / 2)]!;
  return { value: e.value, why: `measured: ${e.why}${runs === same ? "" : " (another model's run)"}.${refusedNote}` };
}

/** fp16 KV cache of one sequence at the run's context length (the predicted GPUs run batch 1). */
function oneSequenceKvBytes(r: BenchResult): number {
  const c = r.model.config as Record<string, number>;
  const perToken = 2 * num(c.nLayers) * num(c.nKvHeads) * num(c.headDim) * 2;
  const v = perToken * num(r.model.contextLength);
  return Number.isFinite(v) ? v : num(r.memory.kvCacheBytes) || 0;
}

function pct(f: number): string {
  return `${(100 * f).toFixed(0)}%`;
}

/** Bytes in GB, or MB / kB when that would print as 0.0 GB. */
function size(bytes: number, digits: number): string {
  const [unit, scale] = bytes >= 0.95 * GB ? ["GB", GB] : bytes >= 0.95e6 ? ["MB", 1e6] : ["kB", 1e3];
  return `${(bytes / scale).toFixed(digits)} ${unit}`;
}

/** Why a model's runs in a dtype get no predicted rows, if they do not. */
function noPrediction(model: string, dtype: string, bytes: number): string | undefined {
  if (!PREDICTED_DTYPES.has(dtype))
    return `No GPU predictions for ${model} in ${dtype}: the CUDA backend runs only ${[...PREDICTED_DTYPES].join(" and ")} fast (f32 is its reference path, bf16 is CPU-only).`;
  if (bytes < MIN_PREDICTED_BYTES)
    return `No GPU predictions for ${model} in ${dtype}: a decode step reads only ${size(bytes, 1)}, so kernel launches and host work, not memory bandwidth, set its speed (a bandwidth roofline would be off by orders of magnitude).`;
  return undefined;
}

/** Rows for every measured run, then per model the predictions for GPUs our engine was not measured on; plus the notes. */
export function buildRows(results: BenchResult[], opts: CompareOptions = {}): { rows: Row[]; notes: string[] } {
  const gpus = opts.gpus ?? GPUS;
  const fallback = opts.defaultEfficiency ?? 0.8;
  const rows: Row[] = [];
  const notes: string[] = [];
  const models = [...new Set(results.map(modelKey))].sort();
  for (const model of models) {
    const runs = results.filter((r) => modelKey(r) === model);
    runs.sort((a, b) => Number(isOurs(b)) - Number(isOurs(a)) || deviceOf(a).localeCompare(deviceOf(b)));
    rows.push(...runs.map(measuredRow));
    // Predictions need our run of this model in each dtype: it says how many bytes a token reads.
    // A GPU run is preferred: its KV cache is sized like the predicted GPUs' would be.
    const dtypes = [...new Set(runs.filter(isOurs).map((r) => r.model.dtype))].sort();
    for (const dtype of dtypes) {
    const candidates = runs.filter((r) => isOurs(r) && r.model.dtype === dtype && Number.isFinite(num(batch1(r)?.bytesPerStep)));
    const base = candidates.find((r) => r.engine.backend === "cuda") ?? candidates[0];
    if (!base || gpus.length === 0) continue;
    const bytes = batch1(base)!.bytesPerStep;
    const skip = noPrediction(model, dtype, bytes);
    if (skip) {
      notes.push(skip);
      continue;
    }
    const need = num(base.model.weightBytes) + oneSequenceKvBytes(base);
    const measured = new Set(
      runs.filter((r) => isOurs(r) && r.model.dtype === dtype && r.machine.gpu && r.engine.backend === "cuda").map((r) => findGpu(r.machine.gpu!.name)),
    );
    const eff = efficiency(results, model, dtype, fallback);
    const predicted = gpus.filter((g) => !measured.has(g));
    if (!predicted.length) continue;
    for (const g of predicted) {
      const fits = !(need > g.memoryBytes);
      rows.push({
        kind: "predicted",
        ours: true,
        engine: "llama2-native (roofline estimate)",
        device: `${g.name} (${g.bandwidthGBs} GB/s, ${(g.memoryBytes / 2 ** 30).toFixed(0)} GiB)`,
        model,
        dtype: base.model.dtype,
        decode: new Map(fits ? [[1, (g.bandwidthGBs * GB * eff.value) / bytes]] : []),
        prefill: new Map(),
        roofline: eff.value,
        loadS: NaN,
        note: fits ? undefined : `does not fit (needs ${size(need, 1)}, has ${size(g.memoryBytes, 1)})`,
      });
    }
    notes.push(
      `Predicted ${dtype} rows for ${model} are estimates, not measurements: decode tok/s at batch 1 = datasheet bandwidth × ${eff.value.toFixed(2)} ÷ ${size(bytes, 2)} per token ` +
        `(bytes read per decode step in ${base.engine.name}'s run on ${deviceOf(base)}: weights + KV cache). Efficiency ${eff.why} ` +
        `Other batch sizes, prefill and TTFT are not predicted. A GPU with less memory than the weights + one sequence's KV cache at the run's context (${size(need, 1)}) is marked "does not fit".`,
    );
    }
  }
  return { rows, notes };
}

function fmt(v: number | undefined): string {
  if (v === undefined || !Number.isFinite(v)) return "—";
  return v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2);
}

/** A field on one line: a newline in a model path would end the table row (or split a note) mid-way. */
const oneLine = (s: string) => s.replace(/\r?\n|\r/g, " ");
const cell = (s: string) => oneLine(s).replace(/\|/g, "\\|");

export function compareResults(results: BenchResult[], opts: CompareOptions = {}): { markdown: string; svg: string } {
  const title = opts.title ?? "Llama 2 inference: measured runs and roofline predictions";
  const { rows, notes } = buildRows(results, opts);
  const batches = [...new Set(rows.flatMap((r) => [...r.decode.keys()]))].sort((a, b) => a - b);
  const prompts = [...new Set(rows.flatMap((r) => [...r.prefill.keys()]))].sort((a, b) => a - b);
  const head = [
    "Kind",
    "Engine",
    "Device",
    "Model",
    "dtype",
    ...batches.map((b) => `Decode tok/s (batch ${b})`),
    ...prompts.flatMap((p) => [`Prefill tok/s (${p} tokens)`, `TTFT ms (${p} tokens)`]),
    "Roofline (batch 1)",
    "Load s",
  ];
  const lines = [`# ${title}`, "", `| ${head.join(" | ")} |`, `|${head.map(() => " --- ").join("|")}|`];
  for (const r of rows) {
    const pred = r.kind === "predicted";
    const decode = batches.map((b) => {
      if (pred && b === 1 && r.note) return r.note;
      const v = r.decode.get(b);
      return v === undefined ? "—" : `${pred ? "≈" : ""}${fmt(v)}`;
    });
    const prefill = prompts.flatMap((p) => {
      const v = r.prefill.get(p);
      return [fmt(v?.tps), fmt(v?.ttftMs)];
    });
    const roof = Number.isFinite(r.roofline) ? `${pct(r.roofline)}${pred ? " of datasheet (applied)" : ""}` : "—";
    lines.push(`| ${[pred ? "**predicted**" : "measured", r.engine, r.device, r.model, r.dtype, ...decode, ...prefill, roof, fmt(r.loadS)].map(cell).join(" | ")} |`);
  }
  lines.push(
    "",
    "Decode: generated tokens per second summed over the batch's sequences (median of repetitions). Prefill: prompt tokens per second; TTFT: time to first token. " +
      "Roofline: bytes a decode step must read ÷ step time, as a fraction of the GPU's measured copy bandwidth (CPU: host memcpy). Load: warm load time. — : not measured.",
  );
  for (const n of notes) lines.push("", oneLine(n));
  const manyModels = new Set(rows.map((r) => `${r.model} ${r.dtype}`)).size > 1;
  const bars: Bar[] = rows.map((r) => ({
    label: [r.device.replace(/ \(.*GB\/s.*\)$/, "").replace(/^NVIDIA (GeForce )?/, ""), r.kind === "predicted" ? "llama2-native" : r.engine, ...(manyModels ? [`${r.model} ${r.dtype}`] : [])].join(" · "),
    value: r.note ? null : (r.decode.get(1) ?? null),
    kind: r.kind === "predicted" ? "predicted" : r.ours ? "measured" : "peer",
    note: r.note ?? "no batch-1 decode figure",
  }));
  const models = [...new Set(rows.map((r) => `${r.model} (${r.dtype})`))].join(", ");
  const svg = barChartSvg(bars, { title: "Decode speed at batch 1", subtitle: models, xLabel: "decode tokens/s (batch 1; higher is better)" });
  return { markdown: lines.join("\n") + "\n", svg };
}
