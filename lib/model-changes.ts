// The load options that change the model (LoadOptions.ropeScaling, LoadOptions.lora; also convertModel's):
// their checks and ranges in one place for the library and the CLI's flags (--rope-scaling, --lora-scale).
// The addon checks the same ranges again (native/addon), as it does every argument it receives.
import { InvalidArgumentError, showValue } from "./errors.js";
import type { LoraOptions, RopeScalingOptions } from "./types.js";

export const LORA_SCALE_LIMIT = 1000;
export const ROPE_FACTOR_LIMIT = 1024;
export const ROPE_ORIGINAL_CONTEXT_LIMIT = 1 << 22;

/** Why `scale` is not an adapter scale, or null when it is one. */
export function loraScaleProblem(scale: unknown): string | null {
  return typeof scale === "number" && Math.abs(scale) <= LORA_SCALE_LIMIT ? null : `expected a number in [-${LORA_SCALE_LIMIT}, ${LORA_SCALE_LIMIT}], got ${showValue(scale)}`;
}

/** Why `factor` is not a factor of `type` (YaRN: >= 1, linear: > 0; both at most 1024), or null. */
export function ropeFactorProblem(type: RopeScalingOptions["type"], factor: unknown): string | null {
  const ok = typeof factor === "number" && factor <= ROPE_FACTOR_LIMIT && (type === "yarn" ? factor >= 1 : factor > 0);
  return ok ? null : `expected a number in ${type === "yarn" ? "[1" : "(0"}, ${ROPE_FACTOR_LIMIT}], got ${showValue(factor)}`;
}

/** Why `n` is not an original context length (a whole number of tokens in [1, 2^22]), or null. */
export function ropeOriginalContextProblem(n: unknown): string | null {
  return typeof n === "number" && Number.isInteger(n) && n >= 1 && n <= ROPE_ORIGINAL_CONTEXT_LIMIT ? null : `expected an integer in [1, ${ROPE_ORIGINAL_CONTEXT_LIMIT}], got ${showValue(n)}`;
}

/** LoadOptions.ropeScaling checked (ERR_INVALID_ARGUMENT naming the field); undefined when not given. */
export function checkRopeScaling(v: unknown): RopeScalingOptions | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== "object" || v === null) throw new InvalidArgumentError("ropeScaling", "expected { type, factor?, originalContextLength? }");
  checkKeys(v, new Set(["type", "factor", "originalContextLength"]), "ropeScaling");
  const r = v as RopeScalingOptions;
  if (!["none", "linear", "yarn"].includes(r.type)) throw new InvalidArgumentError("ropeScaling.type", `expected none, linear or yarn, got ${showValue(r.type)}`);
  const factorProblem = r.factor === undefined ? null : ropeFactorProblem(r.type, r.factor);
  if (factorProblem) throw new InvalidArgumentError("ropeScaling.factor", factorProblem);
  const origProblem = r.originalContextLength === undefined ? null : ropeOriginalContextProblem(r.originalContextLength);
  if (origProblem) throw new InvalidArgumentError("ropeScaling.originalContextLength", origProblem);
  return { type: r.type, ...(r.factor !== undefined && { factor: r.factor }), ...(r.originalContextLength !== undefined && { originalContextLength: r.originalContextLength }) };
}

/** LoadOptions.lora checked and normalized to a list ({ path, scale? } each). */
export function checkLora(v: unknown): LoraOptions[] {
  if (v === undefined) return [];
  const list = Array.isArray(v) ? v : [v];
  if (list.length > 64) throw new InvalidArgumentError("lora", `at most 64 adapters, got ${list.length}`);
  return list.map((a: unknown, i) => {
    const field = Array.isArray(v) ? `lora[${i}]` : "lora";
    if (typeof a === "string") a = { path: a };
    if (typeof a !== "object" || a === null) throw new InvalidArgumentError(field, "expected an adapter path or { path, scale }");
    checkKeys(a, new Set(["path", "scale"]), field);
    const { path: p, scale } = a as LoraOptions;
    if (typeof p !== "string" || p === "") throw new InvalidArgumentError(`${field}.path`, "expected an adapter (PEFT directory or .gguf)");
    const scaleProblem = scale === undefined ? null : loraScaleProblem(scale);
    if (scaleProblem) throw new InvalidArgumentError(`${field}.scale`, scaleProblem);
    return { path: p, ...(scale !== undefined && { scale }) };
  });
}

function checkKeys(opts: object, allowed: Set<string>, what: string): void {
  for (const k of Object.keys(opts)) if (!allowed.has(k)) throw new InvalidArgumentError(`${what}.${k}`, "unknown option");
}
