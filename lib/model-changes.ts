// The ranges of the load options that change the model (LoadOptions.ropeScaling, LoadOptions.lora), in one
// place for the library's checks and the CLI's flags (--rope-scaling, --lora-scale). The addon checks the
// same ranges again (native/addon), as it does every argument it receives.
import { showValue } from "./sampler.js";
import type { RopeScalingOptions } from "./types.js";

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
