// What a `llama2` subcommand is. Each lives in lib/cli/commands/<name>.ts and is listed in main.ts.
import type { FlagSpecs } from "./args.js";

export interface CommandIO {
  stdout: NodeJS.WritableStream;
  stderr: NodeJS.WritableStream;
  stdin: NodeJS.ReadableStream;
}

export interface Command {
  name: string;
  summary: string;
  usage: string;
  flags: FlagSpecs;
  /** Returns the process exit code. Throws Llama2Error for user errors (printed as `error [CODE]: message`). */
  run(flags: Record<string, unknown>, positionals: string[], io: CommandIO): Promise<number>;
}
