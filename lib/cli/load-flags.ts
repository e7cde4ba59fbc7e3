// Model-changing load flags shared by `llama2 run` and the commands that load a model:
// `--rope-scaling TYPE[:FACTOR[:ORIGINAL]]` (none | linear:4 | yarn:16:4096) -> LoadOptions.ropeScaling, and
// `--lora PATH [--lora-scale S]` -> LoadOptions.lora. Ranges are the library's (checked again at load).
import type { FlagSpecs } from "./args.js";
import { InvalidArgumentError } from "../errors.js";
import type { LoraOptions, RopeScalingOptions } from "../types.js";

export const LORA_FLAGS: FlagSpecs = {
  lora: { type: "string", description: "a LoRA adapter (PEFT directory or llama.cpp .gguf) merged into the weights at load" },
  "lora-scale": { type: "number", description: "the adapter's strength (default 1; 0 = none)" },
};

/** `--lora PATH [--lora-scale S]` -> LoadOptions.lora, or undefined without --lora. */
export function parseLoraFlags(flags: Record<string, unknown>): LoraOptions[] | undefined {
  const p = flags.lora;
  const scale = flags.loraScale;
  if (p === undefined) {
    if (scale !== undefined) throw new InvalidArgumentError("--lora-scale", "needs --lora");
    return undefined;
  }
  if (typeof p !== "string" || p.trim() === "") throw new InvalidArgumentError("--lora", "expected an adapter (PEFT directory or .gguf)");
  if (scale !== undefined && (typeof scale !== "number" || !(Math.abs(scale) <= 1000))) throw new InvalidArgumentError("--lora-scale", `expected a number in [-1000, 1000], got ${String(scale)}`);
  return [{ path: p, ...(typeof scale === "number" && { scale }) }];
}

export const ROPE_SCALING_FLAG = {
  type: "string",
  description: "override the file's rotary scaling: none, linear:FACTOR or yarn:FACTOR[:ORIGINAL_CONTEXT] (e.g. linear:4 for 16k on Llama 2)",
} as const;

export function parseRopeScalingFlag(value: string): RopeScalingOptions {
  const [type, factorRaw, origRaw, ...rest] = value.split(":");
  const bad = (why: string) => new InvalidArgumentError("--rope-scaling", `${why} (got '${value}'; e.g. none, linear:4, yarn:16:4096)`);
  if (type !== "none" && type !== "linear" && type !== "yarn") throw bad("the type must be none, linear or yarn");
  if (rest.length > 0 || (type !== "yarn" && origRaw !== undefined)) throw bad("too many ':' parts");
  if (type === "none") {
    if (factorRaw !== undefined) throw bad("none takes no factor");
    return { type };
  }
  if (factorRaw === undefined) throw bad(`${type} needs a factor`);
  const factor = Number(factorRaw);
  if (factorRaw.trim() === "" || !Number.isFinite(factor) || factor <= 0 || factor > 1024 || (type === "yarn" && factor < 1)) {
    throw bad(`the factor must be a number in ${type === "yarn" ? "[1" : "(0"}, 1024]`);
  }
  if (origRaw === undefined) return { type, factor };
  const orig = Number(origRaw);
  if (!/^\d+$/.test(origRaw) || orig < 1 || orig > 1 << 22) throw bad("the original context must be a whole number of tokens");
  return { type, factor, originalContextLength: orig };
}
