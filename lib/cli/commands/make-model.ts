// `llama2 make-model`: writes a synthetic Llama 2 model (random weights) of a preset shape.
import type { Command } from "../command.js";
import { InvalidArgumentError } from "../../errors.js";
import { makeSyntheticModel, type SynthDtype, type SynthFormat } from "../../synth/model.js";
import { PRESETS } from "../../synth/presets.js";
import { writeProgressPrinter } from "../write-progress.js";

const GB = 1e9;

const command: Command = {
  name: "make-model",
  summary: "write a synthetic Llama 2 model (random weights) as GGUF or a Hugging Face directory",
  usage: [
    "Usage: llama2 make-model --preset NAME --out PATH [--format gguf|hf] [--dtype f16|bf16|f32|q8_0] [options]",
    "",
    `Presets: ${Object.keys(PRESETS).join(", ")}.`,
    "The same --seed gives the same weights in every format and dtype (Q8_0 up to its rounding).",
  ].join("\n"),
  flags: {
    preset: { type: "string", description: "model shape" },
    format: { type: "string", description: "gguf (one file) or hf (a directory: config.json, safetensors, tokenizer.model)", default: "gguf" },
    dtype: { type: "string", description: "f16, bf16, f32, or q8_0 (GGUF only)", default: "f16" },
    out: { type: "string", alias: "o", description: "output file (gguf) or directory (hf)" },
    seed: { type: "int", description: "random seed", default: 0 },
    tokenizer: { type: "string", description: "tokenizer.model to embed (default: the built-in Llama 2 vocabulary when vocab is 32000)" },
    layers: { type: "int", description: "override: number of layers" },
    dim: { type: "int", description: "override: hidden size" },
    heads: { type: "int", description: "override: attention heads" },
    "kv-heads": { type: "int", description: "override: key/value heads" },
    ffn: { type: "int", description: "override: feed-forward size" },
    vocab: { type: "int", description: "override: vocabulary size (other than 32000: no tokenizer unless --tokenizer)" },
    context: { type: "int", description: "override: trained context length" },
    "shard-mb": { type: "number", description: "hf: largest safetensors shard, MB", default: 5000 },
    force: { type: "boolean", description: "replace an existing output" },
    quiet: { type: "boolean", alias: "q", description: "no progress on stderr" },
  },
  async run(flags, positionals, io) {
    if (positionals.length) throw new InvalidArgumentError(positionals[0]!, "unexpected argument (options start with --)");
    if (typeof flags.preset !== "string") throw new InvalidArgumentError("--preset", `required (one of ${Object.keys(PRESETS).join(", ")})`);
    if (typeof flags.out !== "string") throw new InvalidArgumentError("--out", "required");
    const shardMb = flags.shardMb as number;
    if (!(shardMb > 0)) throw new InvalidArgumentError("--shard-mb", `must be positive, got ${shardMb}`);
    const progress = flags.quiet ? undefined : writeProgressPrinter(io.stderr);
    const m = await makeSyntheticModel({
      preset: flags.preset,
      format: flags.format as SynthFormat,
      dtype: flags.dtype as SynthDtype,
      out: flags.out,
      seed: flags.seed as number,
      tokenizer: flags.tokenizer as string | undefined,
      overrides: {
        layers: flags.layers as number | undefined,
        dim: flags.dim as number | undefined,
        heads: flags.heads as number | undefined,
        kvHeads: flags.kvHeads as number | undefined,
        ffn: flags.ffn as number | undefined,
        vocab: flags.vocab as number | undefined,
        context: flags.context as number | undefined,
      },
      maxShardBytes: shardMb * 1e6,
      force: flags.force === true,
      onProgress: progress,
    }).catch((err: unknown) => {
      // The library names its options (kvHeads, out); on the command line they are flags (--kv-heads, --out).
      if (err instanceof InvalidArgumentError && /^[a-z][A-Za-z]*$/.test(err.field)) {
        const flag = `--${err.field.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;
        throw new InvalidArgumentError(flag, err.message.slice(err.field.length + 2));
      }
      throw err;
    });
    if (progress) io.stderr.write("\n");
    const s = m.shape;
    io.stdout.write(
      [
        `wrote ${m.path} (${m.format}, ${m.dtype}, ${(m.bytes / GB).toFixed(2)} GB in ${m.seconds.toFixed(1)} s)`,
        `  shape: dim ${s.dim}, ${s.layers} layers, ${s.heads} heads, ${s.kvHeads} KV heads, FFN ${s.ffn}, vocab ${s.vocab}, context ${s.context}; ${m.params >= 1e9 ? `${(m.params / 1e9).toFixed(2)}B` : `${(m.params / 1e6).toFixed(2)}M`} params`,
        m.tokenizer
          ? `  tokenizer: ${m.tokenizer === "builtin" ? "the built-in Llama 2 vocabulary" : m.tokenizer}`
          : `  tokenizer: none (vocab ${s.vocab} is not Llama 2's 32000 and no --tokenizer was given): use token ids`,
        ...(m.format === "hf" ? m.files.map((f) => `  ${f}`) : []),
      ].join("\n") + "\n",
    );
    return 0;
  },
};

export default command;
