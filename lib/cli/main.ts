#!/usr/bin/env node
// The `llama2` command: parses argv, dispatches to a subcommand module, prints typed errors.
// Subcommands call library modules and nothing more.
import { parseArgs, formatHelp } from "./args.js";
import type { Command, CommandIO } from "./command.js";
import { Llama2Error, fromNative } from "../errors.js";

// name -> lazy import, so `llama2 tokenize` does not load the HTTP server.
const COMMANDS: Record<string, () => Promise<{ default: Command }>> = {
  generate: () => import("./commands/generate.js"),
  chat: () => import("./commands/chat.js"),
  tokenize: () => import("./commands/tokenize.js"),
  inspect: () => import("./commands/inspect.js"),
  bench: () => import("./commands/bench.js"),
  "make-model": () => import("./commands/make-model.js"),
  convert: () => import("./commands/convert.js"),
  compare: () => import("./commands/compare.js"),
  run: () => import("./commands/run.js"),
  jobs: () => import("./commands/jobs.js"),
  logs: () => import("./commands/logs.js"),
  cancel: () => import("./commands/cancel.js"),
  micro: () => import("./commands/micro.js"),
  doctor: () => import("./commands/doctor.js"),
  pull: () => import("./commands/pull.js"),
  perplexity: () => import("./commands/perplexity.js"),
  embed: () => import("./commands/embed.js"),
};

export async function main(argv: string[], io: CommandIO): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === "--help" || name === "-h" || name === "help") {
    const lines = ["Usage: llama2 <command> [options]", "", "Commands:"];
    for (const [n, load] of Object.entries(COMMANDS)) {
      const cmd = (await load()).default;
      lines.push(`  ${n.padEnd(12)} ${cmd.summary}`);
    }
    lines.push("", "Run `llama2 <command> --help` for a command's options.");
    io.stdout.write(lines.join("\n") + "\n");
    return name ? 0 : 1;
  }
  if (name === "--version") {
    const { createRequire } = await import("node:module");
    io.stdout.write(createRequire(import.meta.url)("../../package.json").version + "\n");
    return 0;
  }
  const load = COMMANDS[name];
  if (!load) {
    io.stderr.write(`error [ERR_INVALID_ARGUMENT]: unknown command '${name}' (see llama2 --help)\n`);
    return 2;
  }
  const cmd = (await load()).default;
  if (rest.includes("--help") || rest.includes("-h")) {
    io.stdout.write(formatHelp(cmd.usage, cmd.flags) + "\n");
    return 0;
  }
  try {
    const { flags, positionals } = parseArgs(rest, cmd.flags);
    return await cmd.run(flags, positionals, io);
  } catch (err) {
    const e = err instanceof Llama2Error ? err : fromNative(err);
    io.stderr.write(`error [${e.code}]: ${e.message}\n`);
    if (e.suggestion) io.stderr.write(`hint: ${e.suggestion}\n`);
    if (e.code === "ERR_INTERNAL" && err instanceof Error && err.stack) io.stderr.write(err.stack + "\n");
    return e.code === "ERR_INVALID_ARGUMENT" ? 2 : 1;
  }
}

// Run when executed directly or through the npm bin symlink (argv[1] is then the link).
const entry = process.argv[1];
const { realpathSync } = await import("node:fs");
const { fileURLToPath } = await import("node:url");
if (entry && realpathSync(entry) === fileURLToPath(import.meta.url)) {
  const code = await main(process.argv.slice(2), { stdout: process.stdout, stderr: process.stderr, stdin: process.stdin });
  process.exitCode = code;
}
