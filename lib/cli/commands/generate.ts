// `llama2 generate`: one completion of a text prompt (or of token ids). The text streams to stdout;
// --json prints exactly one JSON object instead. Load/speed info goes to stderr. Ctrl-C stops the
// generation (what was generated is still printed).
import type { Command } from "../command.js";
import { InvalidArgumentError } from "../../errors.js";
import {
  DRAFT_FLAGS, LOAD_FLAGS, SAMPLING_FLAGS, checkDraftFlags, generateOptionsFromFlags, loadDraftFromFlags, loadModelFromFlags, loadOptionsFromFlags, withFlagNames,
} from "../model-options.js";
import type { GenerateOptions, GenerationResult } from "../../types.js";

function parseIds(raw: string[]): number[] {
  const ids = raw.map((s) => (/^\d+$/.test(s) ? Number(s) : NaN));
  const bad = raw.findIndex((_, i) => !Number.isSafeInteger(ids[i]));
  if (bad >= 0) throw new InvalidArgumentError("--prompt-ids", `expected a comma list of token ids, got '${raw[bad]}'`);
  if (ids.length === 0) throw new InvalidArgumentError("--prompt-ids", "is empty");
  return ids;
}

const command: Command = {
  name: "generate",
  summary: "complete a prompt (text or token ids), streaming the text",
  usage: [
    "Usage: llama2 generate --model PATH (--prompt TEXT | --prompt-ids 1,2,3) [--max-tokens N] [--temperature T]",
    "       [--top-k K] [--top-p P] [--min-p P] [--repetition-penalty R] [--seed S] [--stop STR]... [--no-stop]",
    "       [--lookup N | --draft-model PATH [--draft-tokens N]] [--context-shift] [--suffix TEXT [--suffix-first]]",
    "       [--device auto|cpu|cuda] [--dtype D] [--context N] [--threads N] [--tokenizer PATH] [--json]",
    "",
    "The text streams to stdout; with --json, one object {\"ids\", \"text\", \"stats\"} is printed at the end.",
    "--suffix fills in the middle between --prompt and it (models trained for it: Code Llama 7B / 13B).",
  ].join("\n"),
  flags: {
    ...LOAD_FLAGS,
    prompt: { type: "string", alias: "p", description: "prompt text (BOS is prepended unless --no-bos)" },
    "prompt-ids": { type: "list", description: "prompt as token ids, e.g. 1,450,4996 (no tokenizer needed)" },
    bos: { type: "boolean", description: "prepend BOS to a text prompt (--no-bos: do not)", default: true },
    suffix: { type: "string", description: "fill in the middle: the text after the gap, --prompt being the text before it (Code Llama)" },
    "suffix-first": { type: "boolean", description: "with --suffix: Code Llama's suffix-prefix-middle prompt order" },
    ...SAMPLING_FLAGS,
    ...DRAFT_FLAGS,
    "context-shift": { type: "boolean", description: "generate past the context: the oldest half of the reply (after the prompt) leaves it when it is full" },
    json: { type: "boolean", description: "print one JSON object {ids, text, stats} instead of streaming" },
  },
  async run(flags, positionals, io) {
    if (positionals.length) throw new InvalidArgumentError(positionals[0]!, "unexpected argument (options start with --)");
    if (typeof flags.model !== "string") throw new InvalidArgumentError("--model", "required (a model directory, .gguf or .bin, or demo)");
    const hasText = typeof flags.prompt === "string";
    const hasIds = flags.promptIds !== undefined;
    if (hasText === hasIds) throw new InvalidArgumentError("--prompt", "give exactly one of --prompt TEXT or --prompt-ids 1,2,3");
    const ids = hasIds ? parseIds(flags.promptIds as string[]) : undefined;
    const suffix = typeof flags.suffix === "string" ? flags.suffix : undefined;
    if (suffix !== undefined && !hasText) throw new InvalidArgumentError("--suffix", "needs --prompt TEXT (the text before the gap)");
    if (flags.suffixFirst === true && suffix === undefined) throw new InvalidArgumentError("--suffix-first", "only with --suffix");
    if (suffix !== undefined && flags.bos === false) throw new InvalidArgumentError("--no-bos", "not with --suffix (the infilling prompt starts with BOS)");
    // Everything is checked before the (possibly slow) load.
    loadOptionsFromFlags(flags);
    const opts = generateOptionsFromFlags(flags);
    checkDraftFlags(flags);
    if (flags.contextShift === true) opts.contextShift = true;

    const abort = new AbortController();
    const onSigint = () => abort.abort();
    process.once("SIGINT", onSigint);
    const model = await loadModelFromFlags(flags, io, abort.signal);
    let draft: GenerateOptions["draft"];
    try {
      draft = await loadDraftFromFlags(flags, io, model, abort.signal);
      if (draft) opts.draft = draft;
      const stream = await withFlagNames(
        () =>
          suffix !== undefined
            ? model.infill(flags.prompt as string, suffix, { ...opts, suffixFirst: flags.suffixFirst === true, signal: abort.signal })
            : model.generate(ids ?? (flags.prompt as string), { ...opts, addBos: flags.bos !== false, signal: abort.signal }),
        { prompt: hasIds ? "--prompt-ids" : "--prompt", suffix: "--suffix", suffixFirst: "--suffix-first" },
      );
      const tokenizer = model.tokenizer;
      let result: GenerationResult;
      if (flags.json) {
        result = await stream.result;
      } else {
        let last = "";
        for await (const chunk of stream) {
          // Without a tokenizer there is no text: the ids stream instead.
          const out = tokenizer ? chunk.text : chunk.tokenIds.map((t) => `${t} `).join("");
          if (out) {
            io.stdout.write(out);
            last = out;
          }
        }
        result = await stream.result;
        if (!last.endsWith("\n")) io.stdout.write("\n");
      }
      if (flags.json) io.stdout.write(JSON.stringify({ ids: result.tokenIds, text: result.text, stats: result.stats }) + "\n");
      if (!flags.quiet) {
        const s = result.stats;
        io.stderr.write(
          `[llama2] ${s.promptTokens} prompt tokens (${s.promptTokensPerSecond.toFixed(1)} tok/s), ${s.completionTokens} generated ` +
            `(${s.tokensPerSecond.toFixed(1)} tok/s), first token ${s.timeToFirstTokenMs.toFixed(0)} ms, finish: ${s.finishReason}` +
            `${s.draftTokens !== undefined ? `, ${draft ? "draft model" : "lookup"} drafts ${s.acceptedDraftTokens}/${s.draftTokens} accepted` : ""}\n`,
        );
      }
      return 0;
    } finally {
      process.off("SIGINT", onSigint);
      await draft?.model.dispose();
      await model.dispose();
    }
  },
};

export default command;
