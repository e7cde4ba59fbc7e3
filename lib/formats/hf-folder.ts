// The small files of a Hugging Face model folder that the TypeScript side reads (tokenizer_config.json,
// added_tokens.json, chat_template.jinja; the native loader reads config.json and the weights): where the
// folder is, and one way to read its JSON.
import { existsSync, readFileSync, statSync } from "node:fs";
import path from "node:path";
import { Llama2Error } from "../errors.js";

/** The folder of an HF model path: the path itself, or the folder of a file in it (config.json). */
export function hfFolder(modelPath: string): string {
  try {
    return statSync(modelPath).isDirectory() ? modelPath : path.dirname(modelPath);
  } catch {
    return path.dirname(modelPath);
  }
}

/** A file's text; ERR_FILE_READ naming it when it cannot be read. */
export function readHfText(file: string): string {
  try {
    return readFileSync(file, "utf8");
  } catch (err) {
    throw new Llama2Error("ERR_FILE_READ", `cannot read ${file}: ${(err as Error).message}`, { cause: err });
  }
}

/** A folder's JSON file, parsed; undefined when absent. Malformed JSON is ERR_MODEL_CONFIG naming the file. */
export function readHfJson(file: string): unknown {
  if (!existsSync(file)) return undefined;
  const text = readHfText(file);
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new Llama2Error("ERR_MODEL_CONFIG", `${file}: not valid JSON (${(err as Error).message})`, { cause: err });
  }
}
