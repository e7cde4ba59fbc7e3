// Helpers shared by the examples (not an example itself): tiny flag parsing, and the model to run
// on: `--model PATH` (a Hugging Face directory, .gguf or llama2.c .bin) or, by default, the built-in
// demo model (random weights with the real Llama 2 vocabulary, generated on first use in
// $LLAMA2_HOME/models, ~40 MB: its text is gibberish, but every code path is real).
import path from "node:path";
import { createRequire } from "node:module";
import * as llama2 from "llama2-native";

/**
 * Parses `--name value` / `--name=value` / `--flag` against `defaults` (which also gives each flag's
 * type: number, boolean or string). Unknown flags are an error, so typos do not pass silently.
 */
export function parseFlags(defaults, argv = process.argv.slice(2)) {
  const out = { ...defaults };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (!arg.startsWith("--")) throw new Error(`unexpected argument '${arg}' (flags: ${Object.keys(defaults).map((k) => `--${k}`).join(" ")})`);
    const eq = arg.indexOf("=");
    const name = arg.slice(2, eq >= 0 ? eq : undefined);
    if (!(name in defaults)) throw new Error(`unknown flag --${name} (flags: ${Object.keys(defaults).map((k) => `--${k}`).join(" ")})`);
    const type = typeof defaults[name];
    if (type === "boolean" && eq < 0) {
      out[name] = true;
      continue;
    }
    const raw = eq >= 0 ? arg.slice(eq + 1) : argv[++i];
    if (raw === undefined) throw new Error(`--${name} needs a value`);
    if (type === "number") {
      out[name] = Number(raw);
      if (!Number.isFinite(out[name])) throw new Error(`--${name}: expected a number, got '${raw}'`);
    } else if (type === "boolean") out[name] = raw === "true";
    else out[name] = raw;
  }
  return out;
}

/** The model path: `model` when given, else the demo model (generated on first use). */
export async function resolveModel(model) {
  if (model) return path.resolve(model);
  let announced = false;
  return llama2.ensureDemoModel({
    onProgress: () => {
      if (!announced) process.stderr.write("generating the demo model (first run only)...\n");
      announced = true;
    },
  });
}

/** Llama2.load options from the common flags (`--tokenizer` for a llama2.c `.bin`, which has none inside). */
export function loadOptions(flags) {
  return { device: flags.device, ...(flags.tokenizer && { tokenizerPath: path.resolve(flags.tokenizer) }) };
}

/** Path of the `llama2` CLI of the installed package (for examples that drive the CLI). */
export function llama2Cli() {
  const require = createRequire(import.meta.url);
  const pkgFile = require.resolve("llama2-native/package.json");
  const pkg = require(pkgFile);
  return path.join(path.dirname(pkgFile), typeof pkg.bin === "string" ? pkg.bin : pkg.bin.llama2);
}
