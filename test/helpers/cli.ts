// Runs the `llama2` CLI in-process (lib/cli/main.ts) with captured stdout / stderr and an empty stdin.
import { PassThrough } from "node:stream";
import { main } from "../../lib/cli/main.js";

export async function runCli(argv: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = new PassThrough();
  const err = new PassThrough();
  let stdout = "";
  let stderr = "";
  out.on("data", (d: Buffer) => (stdout += d.toString()));
  err.on("data", (d: Buffer) => (stderr += d.toString()));
  const code = await main(argv, { stdout: out, stderr: err, stdin: new PassThrough() });
  return { code, stdout, stderr };
}
