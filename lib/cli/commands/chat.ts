// `llama2 chat`: an interactive conversation in the terminal. One chat session keeps its KV cache
// across turns; replies stream to stdout. /reset forgets the conversation, /exit quits; Ctrl-C stops
// the reply being generated, and a Ctrl-C with no reply running (or a second one) exits.
// With stdin not a TTY (a pipe, a file) every line is a user message, answered in turn: the replies,
// one per message and each ending with a newline, are all that goes to stdout.
import { closeSync, openSync, readSync, writeFileSync } from "node:fs";
import { SESSION_STATE_MAGIC } from "../../session-state.js";
import readline from "node:readline";
import type { Command } from "../command.js";
import { InvalidArgumentError, Llama2Error, fromNative } from "../../errors.js";
import type { ChatMessage, GenerationStream } from "../../types.js";
import type { ChatSession } from "../../session.js";
import { readFlagFile } from "../read-input.js";
import { parseChatTemplateFlag } from "../load-flags.js";
import {
  DRAFT_FLAGS, LOAD_FLAGS, SAMPLING_FLAGS, checkDraftFlags, generateOptionsFromFlags, loadDraftFromFlags, loadModelFromFlags, loadOptionsFromFlags,
} from "../model-options.js";

const command: Command = {
  name: "chat",
  summary: "chat with a model in the terminal (a session that keeps its KV cache)",
  usage: [
    "Usage: llama2 chat --model PATH [--system TEXT] [--template NAME] [sampling flags] [--device D] [--dtype D] [--context N]",
    "       [--lookup N | --draft-model PATH [--draft-tokens N]]",
    "",
    "Type a message and press Enter. /reset forgets the conversation, /save FILE writes it (JSON) for",
    "--resume FILE to continue later, /save-state FILE writes it with its KV cache (--resume FILE then",
    "continues without evaluating the history again; same model and flags), /exit quits. Ctrl-C stops the",
    "current reply; Ctrl-C again (or with no reply running) exits. Without a TTY, each input line is a",
    "message and each reply is printed on stdout followed by a newline.",
  ].join("\n"),
  flags: {
    ...LOAD_FLAGS,
    system: { type: "string", alias: "s", description: "system prompt (default: the resumed conversation's)" },
    resume: { type: "string", description: "continue a conversation saved with /save (JSON: { system?, messages }) or /save-state" },
    template: { type: "string", description: "this session's chat template: model (the model's own), llama2 or plain (default: --chat-template's)" },
    ...SAMPLING_FLAGS,
    ...DRAFT_FLAGS,
    stats: { type: "boolean", description: "print each reply's token counts and speed on stderr" },
  },
  async run(flags, positionals, io) {
    if (positionals.length) throw new InvalidArgumentError(positionals[0]!, "unexpected argument (options start with --)");
    if (typeof flags.model !== "string") throw new InvalidArgumentError("--model", "required (a model directory, .gguf or .bin, or demo)");
    loadOptionsFromFlags(flags);
    const opts = generateOptionsFromFlags(flags);
    checkDraftFlags(flags);
    parseChatTemplateFlag(flags.template, "--template");

    const stateFile = flags.resume !== undefined && isSessionStateFile(flags.resume as string) ? (flags.resume as string) : undefined;
    if (stateFile && (flags.system !== undefined || flags.template !== undefined)) {
      throw new InvalidArgumentError(flags.system !== undefined ? "--system" : "--template", `${stateFile} is a saved session: its system prompt and template are kept`);
    }
    const saved = flags.resume !== undefined && !stateFile ? readConversation(flags.resume as string) : undefined;
    const model = await loadModelFromFlags(flags, io);
    try {
      opts.draft = await loadDraftFromFlags(flags, io, model);
    } catch (err) {
      await model.dispose();
      throw err;
    }
    if (!opts.draft) delete opts.draft;
    // Before readline starts reading: lines it reads while nothing iterates them would be lost.
    let restored: ChatSession | undefined;
    if (stateFile) {
      try {
        if (!model.tokenizer) throw new Llama2Error("ERR_TOKENIZER", `${model.info.path} has no tokenizer: chat needs one (pass --tokenizer)`);
        restored = await model.restoreSession(stateFile);
      } catch (err) {
        void opts.draft?.model.dispose();
        await model.dispose();
        throw err;
      }
    }
    const stdin = io.stdin as NodeJS.ReadableStream & { isTTY?: boolean };
    const tty = stdin.isTTY === true;
    const rl = readline.createInterface({ input: stdin, output: tty ? io.stdout : undefined, terminal: tty });
    let current: GenerationStream | null = null;
    let aborting = false;
    let interrupted = false;
    const onSigint = () => {
      if (current && !aborting) {
        aborting = true;
        current.abort();
        return;
      }
      interrupted = true;
      rl.close();
      current?.abort();
    };
    rl.on("SIGINT", onSigint); // a TTY: readline turns Ctrl-C into this event
    process.on("SIGINT", onSigint); // otherwise (kill -INT, a pipe)
    const session = (() => {
      try {
        if (restored) return restored;
        if (!model.tokenizer) throw new Llama2Error("ERR_TOKENIZER", `${model.info.path} has no tokenizer: chat needs one (pass --tokenizer)`);
        const systemPrompt = (flags.system as string | undefined) ?? saved?.system;
        try {
          return model.createSession({ systemPrompt, ...(flags.template !== undefined && { template: flags.template as string }), ...(saved && { messages: saved.messages }) });
        } catch (err) {
          const e = err as InvalidArgumentError;
          if (saved && e.field?.startsWith("options.messages")) throw new InvalidArgumentError("--resume", `${flags.resume}: ${e.field.slice(8)}: ${e.message.replace(/^[^:]*: /, "")}`);
          throw err;
        }
      } catch (err) {
        rl.close();
        process.off("SIGINT", onSigint);
        void opts.draft?.model.dispose();
        void model.dispose();
        throw err;
      }
    })();
    try {
      if (tty && !flags.quiet) io.stderr.write("/reset forgets the conversation, /save FILE keeps it (/save-state FILE with its KV cache), /exit quits, Ctrl-C stops a reply.\n");
      if (saved && !flags.quiet) io.stderr.write(`(resumed ${saved.messages.length / 2} exchanges from ${flags.resume})\n`);
      if (stateFile && !flags.quiet) io.stderr.write(`(resumed ${session.messages.length / 2} exchanges and ${session.cachedTokens} cached tokens from ${stateFile})\n`);
      rl.setPrompt("> ");
      if (tty) rl.prompt();
      for await (const line of rl) {
        const text = line.trim();
        if (text === "/exit" || text === "/quit") break;
        if (text === "/reset") {
          session.reset();
          if (!flags.quiet) io.stderr.write("(conversation reset)\n");
        } else if (text === "/save" || text.startsWith("/save ")) {
          const file = text.slice(5).trim();
          if (!file) io.stderr.write("usage: /save FILE\n");
          else {
            try {
              const system = session.systemPrompt;
              writeFileSync(file, JSON.stringify({ ...(system !== undefined && { system }), messages: session.messages }, null, 2) + "\n");
              if (!flags.quiet) io.stderr.write(`(saved ${session.messages.length / 2} exchanges to ${file}; continue with --resume ${file})\n`);
            } catch (err) {
              io.stderr.write(`error [ERR_FILE_WRITE]: /save: cannot write ${file}: ${(err as Error).message}\n`);
            }
          }
        } else if (text === "/save-state" || text.startsWith("/save-state ")) {
          const file = text.slice(11).trim();
          if (!file) io.stderr.write("usage: /save-state FILE\n");
          else {
            try {
              const r = await session.save(file);
              if (!flags.quiet) io.stderr.write(`(saved ${session.messages.length / 2} exchanges and ${r.cachedTokens} cached tokens, ${r.bytes} bytes, to ${file}; continue with --resume ${file})\n`);
            } catch (err) {
              const e = err instanceof Llama2Error ? err : fromNative(err);
              io.stderr.write(`error [${e.code}]: /save-state: ${e.message}\n`);
            }
          }
        } else if (text.startsWith("/")) {
          io.stderr.write(`unknown command ${text.split(/\s/)[0]} (/reset, /save FILE, /save-state FILE, /exit)\n`);
        } else if (text !== "") {
          aborting = false;
          try {
            const dropped = session.droppedMessages;
            current = session.send(text, opts);
            let last = "";
            for await (const chunk of current) {
              if (chunk.text) {
                io.stdout.write(chunk.text);
                last = chunk.text;
              }
            }
            const { stats } = await current.result;
            if (!last.endsWith("\n") || stats.finishReason === "abort") io.stdout.write("\n");
            if (stats.finishReason === "abort" && !flags.quiet) io.stderr.write("(reply stopped)\n");
            if (session.droppedMessages > dropped && !flags.quiet) {
              io.stderr.write(`(the context is full: the ${session.droppedMessages} oldest messages no longer reach the model)\n`);
            }
            if (flags.stats) {
              io.stderr.write(
                `[llama2] ${stats.promptTokens} prompt tokens (${stats.cachedPromptTokens} cached), ${stats.completionTokens} generated, ` +
                  `${stats.tokensPerSecond.toFixed(1)} tok/s, finish: ${stats.finishReason}` +
                  `${stats.draftTokens !== undefined ? `, drafts ${stats.acceptedDraftTokens}/${stats.draftTokens} accepted` : ""}\n`,
              );
            }
          } catch (err) {
            // A failed turn is reported and the conversation goes on (e.g. a full context: /reset).
            const e = fromNative(err);
            io.stdout.write("\n");
            io.stderr.write(`error [${e.code}]: ${e.message}\n`);
            if (e.code === "ERR_CONTEXT_OVERFLOW" || e.code === "ERR_KV_CACHE_FULL") io.stderr.write("hint: /reset starts a new conversation\n");
            if (e.code === "ERR_DISPOSED") break;
          } finally {
            current = null;
          }
        }
        if (interrupted) break;
        if (tty) rl.prompt();
      }
    } finally {
      process.off("SIGINT", onSigint);
      rl.close();
      session.dispose();
      await opts.draft?.model.dispose();
      await model.dispose();
    }
    return interrupted ? 130 : 0;
  },
};

export default command;

/** Whether `file` starts as a saved session (ChatSession.save) does. */
function isSessionStateFile(file: string): boolean {
  try {
    const fd = openSync(file, "r");
    try {
      const head = Buffer.alloc(8);
      return readSync(fd, head, 0, 8, 0) === 8 && head.toString("latin1") === SESSION_STATE_MAGIC;
    } finally {
      closeSync(fd);
    }
  } catch {
    return false; // readConversation reports the file's problem
  }
}

/** A conversation saved by /save: { system?, messages: user/assistant pairs } (the pairs are checked by createSession). */
function readConversation(file: string): { system?: string; messages: ChatMessage[] } {
  const text = readFlagFile("--resume", file);
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (err) {
    throw new InvalidArgumentError("--resume", `${file} is not valid JSON: ${(err as Error).message}`);
  }
  const o = v as { system?: unknown; messages?: unknown } | null;
  if (!o || typeof o !== "object" || !Array.isArray(o.messages)) throw new InvalidArgumentError("--resume", `${file}: expected { "system"?: string, "messages": [...] }`);
  if (o.system !== undefined && typeof o.system !== "string") throw new InvalidArgumentError("--resume", `${file}: "system" must be a string`);
  return { ...(o.system !== undefined && { system: o.system as string }), messages: o.messages as ChatMessage[] };
}
