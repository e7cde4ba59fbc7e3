// Model-changing load flags shared by `llama2 run` and the commands that load a model:
// `--rope-scaling TYPE[:FACTOR[:ORIGINAL]]` (none | linear:4 | yarn:16:4096) -> LoadOptions.ropeScaling, and
// `--lora PATH [--lora-scale S]` -> LoadOptions.lora. Ranges are the library's (lib/model-changes.ts).
// Also `--chat-template NAME` -> LoadOptions.chatTemplate.
import type { FlagSpecs } from "./args.js";
import { getChatTemplate } from "../chat-template.js";
import { InvalidArgumentError } from "../errors.js";
import { loraScaleProblem, ropeFactorProblem, ropeOriginalContextProblem } from "../model-changes.js";
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
  const scaleProblem = scale === undefined ? null : loraScaleProblem(scale);
  if (scaleProblem) throw new InvalidArgumentError("--lora-scale", scaleProblem);
  return [{ path: p, ...(typeof scale === "number" && { scale }) }];
}

export const CHAT_TEMPLATE_FLAG = {
  type: "string",
  description: "the chat template chats use: auto (the model's own if it carries one, else llama2), model, llama2 or plain",
} as const;

/** A chat template flag's value: auto, model or a registered template's name, checked before a model loads. */
export function parseChatTemplateFlag(value: unknown, flag: string): string | undefined {
  if (value === undefined) return undefined;
  if (value === "auto" || value === "model") return value;
  try {
    getChatTemplate(value as string);
  } catch (err) {
    throw new InvalidArgumentError(flag, (err as Error).message.replace(/^template: /, "") + ', or auto, or model (the model\'s own)');
  }
  return value as string;
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
  const factor = factorRaw.trim() === "" ? NaN : Number(factorRaw);
  const factorProblem = ropeFactorProblem(type, factor);
  if (factorProblem) throw bad(`the factor: ${factorProblem.replace(/, got .*$/, "")}`);
  if (origRaw === undefined) return { type, factor };
  const orig = /^\d+$/.test(origRaw) ? Number(origRaw) : NaN;
  const origProblem = ropeOriginalContextProblem(orig);
  if (origProblem) throw bad(`the original context: ${origProblem.replace(/, got .*$/, "")}`);
  return { type, factor, originalContextLength: orig };
}
