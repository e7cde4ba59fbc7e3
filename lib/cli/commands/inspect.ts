// `llama2 inspect`: what a model file holds (format, config, tensors, tokenizer), read from its
// headers without loading the weights.
import type { Command } from "../command.js";
import { fimTokens } from "../../infill.js";
import { InvalidArgumentError, Llama2Error, fromNative } from "../../errors.js";
import { native, type NativeModelSourceInfo } from "../../native.js";
import { resolveTokenizer } from "../../tokenizer/for-model.js";
import { chooseChatTemplate, readModelChatTemplate } from "../../model-chat-template.js";
import { planCudaMemory } from "../../cuda-plan.js";
import { resolveModelFlag, withFlagNames } from "../model-options.js";
import type { CudaMemoryPlan } from "../../native.js";
import type { FimTokens, KvCacheType, RopeScalingInfo, WeightDtype } from "../../types.js";

export interface InspectResult {
  format: NativeModelSourceInfo["format"];
  path: string;
  name: string;
  fileBytes: number;
  fileDtype: string;
  /** Every matrix's storage type (embedding, classifier, 7 per layer): what the CUDA plan needs for mixed files. */
  matrixDtypes?: string[];
  config: NativeModelSourceInfo["config"];
  /** null when the model has no tokenizer (use token ids, or pass one). */
  tokenizer: { source: string; vocabSize: number; bosId: number; eosId: number; spacePrefix?: string; fimTokens?: FimTokens } | null;
  /** Why the tokenizer could not be read, when there is one that fails. */
  tokenizerError?: string;
  /** The chat template chat requests use by default (LoadOptions.chatTemplate "auto"), with why; null without a tokenizer. */
  chatTemplate: { name: string; note?: string } | null;
  parameters: number;
  tensors: { name: string; fileName: string; dtype: string; shape: number[]; bytes: number }[];
}

export async function inspectModel(modelPath: string): Promise<InspectResult> {
  let info: NativeModelSourceInfo;
  try {
    info = native().readModelInfo(modelPath, true);
  } catch (err) {
    throw fromNative(err);
  }
  let tokenizer: InspectResult["tokenizer"] = null;
  let tokenizerError: string | undefined;
  let chatTemplate: InspectResult["chatTemplate"] = null;
  try {
    const tok = await resolveTokenizer(info);
    if (tok) {
      const fim = fimTokens(tok);
      const spacePrefix = tok.vocabulary.spacePrefix;
      tokenizer = { source: tok.source, vocabSize: tok.vocabSize, bosId: tok.bosId, eosId: tok.eosId, ...(spacePrefix && { spacePrefix }), ...(fim && { fimTokens: fim }) };
      const chosen = chooseChatTemplate(readModelChatTemplate(info), tok);
      chatTemplate = { name: chosen.template.name, ...(chosen.note && { note: chosen.note }) };
    }
  } catch (err) {
    tokenizerError = err instanceof Llama2Error ? `${err.code}: ${err.message}` : String(err);
  }
  const tensors = (info.tensors ?? []).map((t) => ({ name: t.name, fileName: t.fileName, dtype: t.dtype, shape: t.shape, bytes: t.bytes }));
  const parameters = tensors.reduce((n, t) => n + t.shape.reduce((a, b) => a * b, 1), 0);
  return {
    format: info.format,
    path: info.path,
    name: info.name,
    fileBytes: info.fileBytes,
    fileDtype: info.fileDtype,
    ...(info.matrixDtypes && { matrixDtypes: info.matrixDtypes }),
    config: info.config,
    tokenizer,
    ...(tokenizerError !== undefined && { tokenizerError }),
    chatTemplate,
    parameters,
    tensors,
  };
}

function binaryBytes(n: number): string {
  if (n >= 2 ** 30) return `${(n / 2 ** 30).toFixed(2)} GiB`;
  if (n >= 2 ** 20) return `${(n / 2 ** 20).toFixed(2)} MiB`;
  return `${(n / 2 ** 10).toFixed(1)} KiB`;
}

function bytes(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)} GB`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)} MB`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)} kB`;
  return `${n} B`;
}

const command: Command = {
  name: "inspect",
  summary: "show a model's format, config, tensors and tokenizer (without loading it)",
  usage: "Usage: llama2 inspect --model PATH [--json] [--cuda-plan [--dtype auto|f16|int8|f32] [--kv-cache auto|int8] [--context N] [--max-sequences N]]",
  flags: {
    model: { type: "string", alias: "m", description: "model: Hugging Face directory, .gguf, llama2.c .bin, or demo" },
    json: { type: "boolean", description: "print one JSON object" },
    "cuda-plan": { type: "boolean", description: "also predict the CUDA backend's GPU memory for these load options (no GPU needed)" },
    dtype: { type: "string", description: "--cuda-plan: weight precision (auto, f16, int8, f32: the fp32 path; default auto)" },
    "kv-cache": { type: "string", description: "--cuda-plan: KV cache precision (auto = fp16, int8; default auto)" },
    context: { type: "int", description: "--cuda-plan: context length (default: the model's, at most 4096)" },
    "max-sequences": { type: "int", description: "--cuda-plan: sequences the KV cache holds at full context (default 4)" },
  },
  async run(flags, positionals, io) {
    if (positionals.length) throw new InvalidArgumentError(positionals[0]!, "unexpected argument (options start with --)");
    if (typeof flags.model !== "string" || flags.model === "") throw new InvalidArgumentError("--model", "required (a model directory, .gguf or .bin, or demo)");
    const planFlag = (["dtype", "kvCache", "context", "maxSequences"] as const).find((k) => flags[k] !== undefined);
    if (planFlag && !flags.cudaPlan) throw new InvalidArgumentError(`--${planFlag.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`, "only with --cuda-plan");
    const r = await inspectModel(await resolveModelFlag(flags.model, io));
    let plan: (CudaMemoryPlan & { options: Record<string, unknown> }) | undefined;
    if (flags.cudaPlan) {
      const opts = {
        dtype: ((flags.dtype as string | undefined) ?? "auto") as WeightDtype,
        kvCacheType: ((flags.kvCache as string | undefined) ?? "auto") as KvCacheType,
        contextLength: (flags.context as number | undefined) ?? Math.min(r.config.trainedContextLength, 4096),
        maxSequences: (flags.maxSequences as number | undefined) ?? 4,
      };
      plan = { options: opts, ...(await withFlagNames(() => planCudaMemory(r, opts), { maxSequences: "--max-sequences" })) };
    }
    if (flags.json) {
      io.stdout.write(JSON.stringify(plan ? { ...r, cudaPlan: plan } : r, null, 2) + "\n");
      return 0;
    }
    const c = r.config;
    const lines = [
      `${r.path}`,
      `  format:     ${r.format}${r.name ? ` (${r.name})` : ""}, ${bytes(r.fileBytes)}, matrices ${r.fileDtype}`,
      `  config:     dim ${c.dim}, ${c.nLayers} layers, ${c.nHeads} heads (${c.nKvHeads} KV, head dim ${c.headDim}), FFN ${c.ffnDim}, vocab ${c.vocabSize}`,
      `              context ${c.trainedContextLength}, rope theta ${c.ropeTheta} (${c.ropeLayout}${ropeScalingText(c.ropeScaling)}), rms eps ${c.rmsEps}, ${c.tiedEmbeddings ? "tied" : "untied"} output`,
      `  parameters: ${(r.parameters / 1e6).toFixed(2)} M`,
      `  tokenizer:  ${r.tokenizer ? `${r.tokenizer.vocabSize} pieces from ${r.tokenizer.source} (BOS ${r.tokenizer.bosId}, EOS ${r.tokenizer.eosId})` : r.tokenizerError ? `unreadable (${r.tokenizerError})` : "none (use token ids, or pass a tokenizer.model)"}`,
      ...(r.tokenizer?.spacePrefix ? [`              '▁' before text: ${r.tokenizer.spacePrefix} (transformers' rule for this folder)`] : []),
      ...(r.chatTemplate ? [`  chat:       template ${r.chatTemplate.name}${r.chatTemplate.note ? ` (${r.chatTemplate.note})` : ""}`] : []),
      ...(r.tokenizer?.fimTokens ? [`  infill:     fill in the middle (▁<PRE> ${r.tokenizer.fimTokens.prefix}, ▁<SUF> ${r.tokenizer.fimTokens.suffix}, ▁<MID> ${r.tokenizer.fimTokens.middle}, ▁<EOT> ${r.tokenizer.fimTokens.eot})`] : []),
      `  tensors (${r.tensors.length}):`,
    ];
    const width = Math.max(...r.tensors.map((t) => t.fileName.length), 4);
    for (const t of r.tensors) lines.push(`    ${t.fileName.padEnd(width)}  ${t.dtype.padEnd(4)}  [${t.shape.join(", ")}]`);
    if (plan) {
      const gib = (n: number) => `${binaryBytes(n)} (${bytes(n)})`;
      const o = plan.options;
      lines.push(
        `  CUDA memory plan (dtype ${o.dtype}, KV ${o.kvCacheType === "int8" ? "int8" : "fp16"}, context ${o.contextLength} x ${o.maxSequences} sequences; our allocations, not the CUDA context):`,
        `    weights    ${gib(plan.weightBytes)}`,
        `    KV cache   ${gib(plan.kvCacheBytes)} (${plan.kvBlocks} blocks)`,
        `    buffers    ${gib(plan.bufferBytes)}`,
        `    total      ${gib(plan.totalBytes)}`,
      );
    }
    io.stdout.write(lines.join("\n") + "\n");
    return 0;
  },
};

export default command;

function ropeScalingText(r: RopeScalingInfo | null | undefined): string {
  if (!r) return "";
  const yarn = r.type === "yarn" ? `, from ${r.originalContextLength}, beta ${r.betaFast}/${r.betaSlow}` : "";
  return `, ${r.type} scaling x${r.factor}${yarn}${r.attentionFactor !== 1 ? `, attention x${r.attentionFactor.toFixed(4)}` : ""}`;
}
