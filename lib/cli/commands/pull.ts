// `llama2 pull`: downloads a model from the Hugging Face Hub (an alias, hf:owner/repo[/file.gguf] or a
// huggingface.co URL) into ~/.llama2/models/hf and prints its local path. `--model` takes the same
// references in every command and pulls on first use; this command only downloads.
import type { Command } from "../command.js";
import { InvalidArgumentError } from "../../errors.js";
import { MODEL_ALIASES, parseHubRef } from "../../hub/refs.js";
import { localPathOf } from "../../hub/pull.js";
import { pullWithProgress } from "../model-options.js";

const command: Command = {
  name: "pull",
  summary: "download a model from the Hugging Face Hub (resumable, checksummed)",
  usage: [
    "Usage: llama2 pull MODEL [--revision REV] [--force] [--json]",
    "",
    "MODEL: hf:owner/repo/file.gguf, hf:owner/repo (a Hugging Face model folder: safetensors), a",
    "huggingface.co/.../resolve/... URL, or one of:",
    ...Object.entries(MODEL_ALIASES).map(([k, v]) => `  ${k.padEnd(20)} ${v.description}`),
    "",
    "Files go to $LLAMA2_HOME/models/hf (default ~/.llama2). Gated repos (meta-llama): accept the license on",
    "huggingface.co, then set HF_TOKEN. HF_ENDPOINT selects a mirror; HF_HUB_OFFLINE=1 forbids downloads.",
    "An interrupted download resumes when the same command runs again.",
  ].join("\n"),
  flags: {
    revision: { type: "string", description: "branch, tag or commit (default main)" },
    force: { type: "boolean", description: "download again even when a local copy exists" },
    "dry-run": { type: "boolean", description: "print where the model would go, download nothing" },
    json: { type: "boolean", description: "print {\"path\": ...} only" },
    quiet: { type: "boolean", alias: "q", description: "no progress on stderr" },
  },
  async run(flags, positionals, io) {
    if (positionals.length !== 1) throw new InvalidArgumentError("MODEL", positionals.length ? "give one model" : "required (see llama2 pull --help)");
    const model = positionals[0]!;
    const revision = flags.revision as string | undefined;
    const ref = parseHubRef(model, "MODEL", revision);
    if (flags.dryRun) {
      io.stdout.write(flags.json ? JSON.stringify({ path: localPathOf(ref) }) + "\n" : localPathOf(ref) + "\n");
      return 0;
    }
    const abort = new AbortController();
    const onSigint = () => abort.abort(new Error("interrupted"));
    process.once("SIGINT", onSigint);
    try {
      const local = await pullWithProgress(model, flags.quiet ? undefined : io, { ...(revision && { revision }), force: flags.force === true, signal: abort.signal });
      io.stdout.write(flags.json ? JSON.stringify({ path: local }) + "\n" : local + "\n");
      return 0;
    } finally {
      process.off("SIGINT", onSigint);
    }
  },
};

export default command;
