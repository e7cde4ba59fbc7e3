// Where a writer of large files may write (make-model's GGUF file or HF directory, convert's GGUF file): its
// folder must exist, and something already there is replaced only with `force`, and only by its own kind.
import { existsSync, readdirSync, statSync } from "node:fs";
import path from "node:path";
import { InvalidArgumentError } from "../errors.js";

/** Throws InvalidArgumentError("out", ...) when `out` may not be written: "file" (a GGUF) or "model-dir" (an HF directory). */
export function checkOutputTarget(out: string, kind: "file" | "model-dir", force: boolean): void {
  if (!existsSync(out)) {
    if (!existsSync(path.dirname(out))) throw new InvalidArgumentError("out", `directory ${path.dirname(out)} does not exist`);
    return;
  }
  if (!force) throw new InvalidArgumentError("out", `${out} already exists (use --force / force: true to replace it)`);
  const st = statSync(out);
  if (kind === "file" && !st.isFile()) throw new InvalidArgumentError("out", `${out} exists and is not a file; refusing to replace it`);
  if (kind === "model-dir") {
    const entries = st.isDirectory() ? readdirSync(out) : null;
    const isModelDir = entries && (entries.length === 0 || entries.includes("config.json"));
    if (!isModelDir) throw new InvalidArgumentError("out", `${out} exists and is not a model directory (no config.json); refusing to replace it`);
  }
}
