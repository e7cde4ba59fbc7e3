// Reading what a flag names: a file (its errors typed and prefixed with the flag) or standard input.
import { readFileSync } from "node:fs";
import type { CommandIO } from "./command.js";
import { Llama2Error } from "../errors.js";

/** The UTF-8 text of `file`; ERR_FILE_NOT_FOUND / ERR_FILE_READ as "`flag`: cannot read FILE: why". */
export function readFlagFile(flag: string, file: string): string {
  try {
    return readFileSync(file, "utf8");
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code === "ENOENT" ? "ERR_FILE_NOT_FOUND" : "ERR_FILE_READ";
    throw new Llama2Error(code, `${flag}: cannot read ${file}: ${(err as Error).message}`);
  }
}

/** All of standard input as UTF-8 text. */
export async function readStdin(io: CommandIO): Promise<string> {
  const parts: Buffer[] = [];
  for await (const c of io.stdin) parts.push(typeof c === "string" ? Buffer.from(c) : (c as Buffer));
  return Buffer.concat(parts).toString("utf8");
}
