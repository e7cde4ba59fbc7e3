// `llama2 tokenize`: text (or a chat dialog through the chat template) -> token ids. The tokenizer is
// a tokenizer.model, or the one that goes with a model (GGUF metadata, HF directory), read without
// loading any weights.
import type { Command, CommandIO } from "../command.js";
import type { ChatTemplate } from "../../chat-template.js";
import { chatTemplateForPath } from "../../model-chat-template.js";
import { InvalidArgumentError, Llama2Error } from "../../errors.js";
import { tokenizerForModel } from "../../tokenizer/for-model.js";
import { asFlagError, resolveModelFlag } from "../model-options.js";
import { parseChatTemplateFlag } from "../load-flags.js";
import { readFlagFile, readStdin } from "../read-input.js";
import type { ChatMessage } from "../../types.js";

async function readDialog(file: string, io: CommandIO): Promise<ChatMessage[]> {
  const text = file === "-" ? await readStdin(io) : readFlagFile("--chat", file);
  let dialog: unknown;
  try {
    dialog = JSON.parse(text);
  } catch (err) {
    throw new InvalidArgumentError("--chat", `${file} is not valid JSON (${(err as Error).message})`);
  }
  if (!Array.isArray(dialog)) throw new InvalidArgumentError("--chat", `${file} must hold a JSON array of {role, content}`);
  return dialog as ChatMessage[];
}

const command: Command = {
  name: "tokenize",
  summary: "text or a chat dialog -> token ids (from a tokenizer.model, a GGUF or a model directory)",
  usage: [
    "Usage: llama2 tokenize --model PATH (--text TEXT | --chat FILE.json) [--bos] [--json]",
    "",
    "PATH: a tokenizer.model or tokenizer.json, a Hugging Face model directory, a .gguf (its metadata), or a llama2.c .bin",
    "with a tokenizer.model beside it. --chat takes a JSON array of {role, content} ('-' reads stdin) and",
    "applies the chat template (it adds BOS/EOS itself).",
  ].join("\n"),
  flags: {
    model: { type: "string", alias: "m", description: "tokenizer.model, model directory, .gguf or .bin, or demo" },
    text: { type: "string", description: "text to encode" },
    chat: { type: "string", description: "JSON file with a dialog [{role, content}, ...] ('-' = stdin)" },
    template: { type: "string", description: "chat template: model, llama2 or plain (default: the model's, as `inspect` shows)" },
    bos: { type: "boolean", description: "prepend BOS to --text" },
    eos: { type: "boolean", description: "append EOS to --text" },
    json: { type: "boolean", description: "print {\"ids\": [...]} only" },
  },
  async run(flags, positionals, io) {
    if (positionals.length) throw new InvalidArgumentError(positionals[0]!, "unexpected argument (options start with --)");
    if (typeof flags.model !== "string" || flags.model === "") throw new InvalidArgumentError("--model", "required (a tokenizer.model, model directory or .gguf)");
    const hasText = typeof flags.text === "string";
    const hasChat = typeof flags.chat === "string";
    if (hasText === hasChat) throw new InvalidArgumentError("--text", "give exactly one of --text TEXT or --chat FILE.json");
    if (hasChat && (flags.bos !== undefined || flags.eos !== undefined)) {
      throw new InvalidArgumentError(flags.bos !== undefined ? "--bos" : "--eos", "does not apply to --chat (the template places BOS/EOS)");
    }
    if (hasChat) parseChatTemplateFlag(flags.template, "--template");
    const dialog = hasChat ? await readDialog(flags.chat as string, io) : undefined;
    const modelPath = await resolveModelFlag(flags.model, io);
    const tok = await tokenizerForModel(modelPath);
    let template: ChatTemplate | undefined;
    try {
      if (hasChat) template = chatTemplateForPath(modelPath, tok, flags.template as string | undefined);
    } catch (err) {
      throw asFlagError(err, { chatTemplate: "--template" });
    }
    let ids: number[];
    if (template) {
      try {
        ids = template.encodeDialog(dialog!, tok);
      } catch (err) {
        // Name the flag: "--chat: messages[1].role: ...".
        if (err instanceof Llama2Error && err.code === "ERR_INVALID_ARGUMENT") throw new InvalidArgumentError("--chat", err.message);
        throw err;
      }
    } else {
      ids = tok.encode(flags.text as string, { bos: flags.bos === true, eos: flags.eos === true });
    }
    if (flags.json) {
      io.stdout.write(JSON.stringify({ ids }) + "\n");
      return 0;
    }
    const lines = ids.map((id) => `${String(id).padStart(6)}  ${JSON.stringify(tok.piece(id))}`);
    lines.push(`${ids.length} tokens (${tok.source})`);
    io.stdout.write(lines.join("\n") + "\n");
    return 0;
  },
};

export default command;
