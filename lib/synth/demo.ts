// The built-in demo model: a small Llama 2 (preset `demo`, random weights, the real Llama 2
// vocabulary) generated on first use, so the chatbot runs on a fresh machine with no download.
// Its text is gibberish; it exists to exercise the whole stack.
import { existsSync } from "node:fs";
import { mkdir } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { randomBytes } from "node:crypto";
import { Llama2Error } from "../errors.js";
import { makeSyntheticModel } from "./model.js";

export const DEMO_MODEL_NAME = "llama2-native demo (random weights)";
/** Bump the file name when the generator's output changes, so old caches are not reused. */
export const DEMO_MODEL_FILE = "demo-v1.gguf";
const DEMO_SEED = 20230718; // Llama 2's release date

/** `${LLAMA2_HOME ?? ~/.llama2}/models`. */
export function defaultModelsDir(): string {
  return path.join(process.env.LLAMA2_HOME || path.join(os.homedir(), ".llama2"), "models");
}

const pending = new Map<string, Promise<string>>();

/**
 * Returns the path of the demo model, generating it (~40 MB, a second or two) when absent. Safe with
 * concurrent callers: each process builds a private temporary file and renames it into place
 * atomically (the content is identical), and callers in one process share one build.
 */
export async function ensureDemoModel(opts: { dir?: string; onProgress?: (bytesWritten: number, totalBytes: number) => void } = {}): Promise<string> {
  const dir = path.resolve(opts.dir ?? defaultModelsDir());
  const file = path.join(dir, DEMO_MODEL_FILE);
  if (existsSync(file)) return file;
  let p = pending.get(file);
  if (!p) {
    p = build(dir, file, opts.onProgress).finally(() => pending.delete(file));
    pending.set(file, p);
  }
  return p;
}

async function build(dir: string, file: string, onProgress?: (bytesWritten: number, totalBytes: number) => void): Promise<string> {
  try {
    await mkdir(dir, { recursive: true });
  } catch (err) {
    throw new Llama2Error("ERR_FILE_READ", `cannot create ${dir} for the demo model (set LLAMA2_HOME to a writable folder): ${(err as Error).message}`, { cause: err });
  }
  await makeSyntheticModel({
    preset: "demo",
    format: "gguf",
    dtype: "f16",
    seed: DEMO_SEED,
    out: file,
    force: true, // another process may have finished first: replacing it with identical bytes is harmless
    name: DEMO_MODEL_NAME,
    tmpPath: `${file}.${process.pid}.${randomBytes(4).toString("hex")}.tmp`,
    onProgress,
  });
  return file;
}
