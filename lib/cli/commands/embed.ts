// `llama2 embed`: texts -> embeddings (Llama2.embed: the final hidden states pooled), one JSON line per text,
// or with --similarity the texts' pairwise cosine similarities. Texts come from --text (repeatable) or a file
// / stdin, one per line; all are embedded together (the engine batches them).
import type { Command, CommandIO } from "../command.js";
import { InvalidArgumentError, Llama2Error } from "../../errors.js";
import { LOAD_FLAGS, loadModelFromFlags, loadOptionsFromFlags } from "../model-options.js";
import { readFlagFile, readStdin } from "../read-input.js";

async function readLines(file: string, io: CommandIO): Promise<string[]> {
  const text = file === "-" ? await readStdin(io) : readFlagFile("--file", file);
  return text.split(/\r?\n/).filter((l) => l.trim() !== "");
}

const command: Command = {
  name: "embed",
  summary: "embeddings of texts (final hidden states, mean-pooled, unit length) as JSON lines, or their similarities",
  usage: [
    "Usage: llama2 embed --model PATH (--text TEXT [--text TEXT ...] | --file LINES.txt) [--pooling mean|last]",
    "       [--no-normalize] [--similarity] [--device D] [--dtype D]",
    "",
    "One JSON line per text: {index, tokens, embedding}. --file takes one text per line ('-' reads stdin).",
    "--similarity prints the cosine similarity of every pair instead (a matrix, texts in order).",
  ].join("\n"),
  flags: {
    ...LOAD_FLAGS,
    text: { type: "string", repeatable: true, description: "a text to embed (repeat for several)" },
    file: { type: "string", alias: "f", description: "a file of texts, one per line ('-' = stdin)" },
    pooling: { type: "string", description: "mean (default: the tokens but BOS) or last (the last token's state)" },
    normalize: { type: "boolean", description: "scale to unit length (default; --no-normalize keeps the raw mean)", default: true },
    similarity: { type: "boolean", description: "print the pairwise cosine similarities instead of the vectors" },
  },
  async run(flags, positionals, io) {
    if (positionals.length) throw new InvalidArgumentError(positionals[0]!, "unexpected argument (options start with --)");
    if (typeof flags.model !== "string") throw new InvalidArgumentError("--model", "required (a model directory, .gguf or .bin, or demo)");
    const given = flags.text as string[] | undefined;
    const hasFile = typeof flags.file === "string";
    if ((given !== undefined) === hasFile) throw new InvalidArgumentError("--text", "give --text TEXT (one or more) or --file LINES.txt, not both");
    const pooling = (flags.pooling as string | undefined) ?? "mean";
    if (pooling !== "mean" && pooling !== "last") throw new InvalidArgumentError("--pooling", `expected mean or last, got ${pooling}`);
    const texts = hasFile ? await readLines(flags.file as string, io) : given!;
    if (texts.length === 0) throw new InvalidArgumentError(hasFile ? "--file" : "--text", "no text to embed");
    loadOptionsFromFlags(flags); // every flag checked before the (possibly slow) load
    const model = await loadModelFromFlags(flags, io);
    try {
      const opts = { pooling, normalize: flags.normalize !== false } as const;
      const results = await Promise.all(
        texts.map((t, i) =>
          model.embed(t, opts).catch((err: unknown) => {
            if (err instanceof Llama2Error) err.message = `text ${i + 1}: ${err.message}`;
            throw err;
          }),
        ),
      );
      if (!flags.similarity) {
        for (const [index, r] of results.entries()) io.stdout.write(JSON.stringify({ index, tokens: r.tokenCount, embedding: Array.from(r.embedding) }) + "\n");
        return 0;
      }
      const unit = results.map((r) => {
        const n = Math.sqrt(r.embedding.reduce((s, x) => s + x * x, 0));
        return r.embedding.map((x) => (n > 0 ? x / n : 0));
      });
      const cos = (a: Float32Array, b: Float32Array) => a.reduce((s, x, i) => s + x * b[i]!, 0);
      const rows = unit.map((a, i) => unit.map((b) => cos(a, b).toFixed(4).padStart(8)).join("") + `  ${JSON.stringify(texts[i]!.slice(0, 60))}`);
      io.stdout.write(rows.join("\n") + "\n");
      return 0;
    } finally {
      await model.dispose();
    }
  },
};

export default command;
