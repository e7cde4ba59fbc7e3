// `llama2 convert`: a model in any format the engine loads, written as one GGUF file (lib/convert.ts).
import type { Command } from "../command.js";
import { convertModel, type ConvertDtype } from "../../convert.js";
import { InvalidArgumentError } from "../../errors.js";
import { LORA_FLAGS, ROPE_SCALING_FLAG, parseLoraFlags, parseRopeScalingFlag } from "../load-flags.js";
import { resolveModelFlag } from "../model-options.js";
import { writeProgressPrinter } from "../write-progress.js";

const command: Command = {
  name: "convert",
  summary: "write a model (HF directory, GGUF, llama2.c) as one GGUF file: f16 / q8_0 / q4_1 / as stored, LoRA merged",
  usage: [
    "Usage: llama2 convert <model|hub-ref|demo> --out FILE.gguf [--dtype auto|f16|bf16|f32|q8_0|q4_1] [--lora PATH [--lora-scale S]] [options]",
    "",
    "Writes llama.cpp's layout (convert_hf_to_gguf.py's names, metadata and Q/K row order), so llama.cpp runs",
    "the file too. --dtype auto keeps each matrix as stored (K-quants included); q8_0 and q4_1 quantize by",
    "llama.cpp's reference rules (q4_1: what --dtype q4 does at load; a Q4_K_M from llama-quantize is better).",
    "With --lora the adapter is merged into the weights: the file then loads without it. A Hub reference",
    "(hf:owner/repo, or an alias such as llama2-7b-chat) is downloaded first, as --model does.",
  ].join("\n"),
  flags: {
    out: { type: "string", alias: "o", description: "the GGUF file to write" },
    dtype: { type: "string", description: "matrix type: auto (as stored), f16, bf16, f32, q8_0 or q4_1", default: "auto" },
    ...LORA_FLAGS,
    "rope-scaling": ROPE_SCALING_FLAG,
    tokenizer: { type: "string", description: "tokenizer.model (or a Llama tokenizer.json) to embed when the model has none of its own" },
    name: { type: "string", description: "general.name (default: the model's name)" },
    threads: { type: "int", description: "CPU threads converting rows (default: the physical cores)" },
    force: { type: "boolean", description: "replace an existing output file" },
    quiet: { type: "boolean", alias: "q", description: "no progress on stderr" },
  },
  async run(flags, positionals, io) {
    if (positionals.length !== 1) throw new InvalidArgumentError("<model>", positionals.length ? `one model, got ${positionals.length} arguments` : "required");
    if (typeof flags.out !== "string") throw new InvalidArgumentError("--out", "required (the .gguf file to write)");
    const lora = parseLoraFlags(flags);
    const source = await resolveModelFlag(positionals[0]!, flags.quiet ? undefined : io);
    const progress = flags.quiet ? undefined : writeProgressPrinter(io.stderr);
    const r = await convertModel(source, flags.out, {
      dtype: flags.dtype as ConvertDtype,
      ...(lora && { lora }),
      ...(typeof flags.ropeScaling === "string" && { ropeScaling: parseRopeScalingFlag(flags.ropeScaling) }),
      ...(typeof flags.tokenizer === "string" && { tokenizerPath: flags.tokenizer }),
      ...(typeof flags.name === "string" && { name: flags.name }),
      ...(flags.threads !== undefined && { threads: flags.threads as number }),
      force: flags.force === true,
      onProgress: progress,
    }).catch((err: unknown) => {
      // The library names its options; on the command line they are flags.
      if (err instanceof InvalidArgumentError) {
        const flag = { out: "--out", dtype: "--dtype", tokenizerPath: "--tokenizer", threads: "--threads", name: "--name" }[err.field];
        if (flag) throw new InvalidArgumentError(flag, err.message.slice(err.field.length + 2));
      }
      throw err;
    });
    if (progress) io.stderr.write("\n");
    const c = r.config;
    const types = Object.entries(r.types).map(([t, n]) => `${n} ${t}`).join(", ");
    io.stdout.write(
      [
        `wrote ${r.path} (${(r.bytes / 1e9).toFixed(2)} GB in ${r.seconds.toFixed(1)} s): ${types}`,
        `  shape: dim ${c.dim}, ${c.nLayers} layers, ${c.nHeads} heads, ${c.nKvHeads} KV heads, FFN ${c.ffnDim}, vocab ${c.vocabSize}, context ${c.trainedContextLength}`,
        ...(c.ropeScaling ? [`  rope scaling: ${c.ropeScaling.type} x${c.ropeScaling.factor}`] : []),
        ...r.lora.map((l) => `  merged LoRA ${l.path}: rank ${l.rank}, scale ${l.scale.toFixed(4)}, ${l.matrices} matrices (${l.modules.join(", ")})`),
        r.tokenizer ? `  tokenizer: ${r.tokenizer}` : "  tokenizer: none (the model has none; pass --tokenizer to embed one, or load with tokenizerPath)",
        ...(r.tokenizerNote ? [`  note: ${r.tokenizerNote}`] : []),
      ].join("\n") + "\n",
    );
    return 0;
  },
};

export default command;
