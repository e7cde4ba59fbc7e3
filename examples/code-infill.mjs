// Fill in the middle of a source file with Code Llama: the file marks the gap with <FILL_ME> (the marker
// transformers' CodeLlamaTokenizer uses); the model writes what goes there from the code before and after.
//
//   node examples/code-infill.mjs --model codellama-7b.Q8_0.gguf [--file src.py] [--max-tokens N] [--device auto|cpu|cuda]
//
// `llama2 pull codellama-7b` downloads the model. Without --file a small Python function is completed.
// Models not trained for infilling (the demo model, Llama 2 chat) are refused: `info.fimTokens` says which are.
import { readFileSync } from "node:fs";
import { Llama2, isLlama2Error } from "llama2-native";
import { loadOptions, parseFlags, resolveModel } from "./_shared.mjs";

const flags = parseFlags({ model: "", tokenizer: "", file: "", "max-tokens": 64, device: "auto", "suffix-first": false });
const MARK = "<FILL_ME>";
const source = flags.file
  ? readFileSync(flags.file, "utf8")
  : 'def remove_non_ascii(s: str) -> str:\n    """ <FILL_ME>\n    return result\n';
const at = source.indexOf(MARK);
if (at < 0 || source.indexOf(MARK, at + 1) >= 0) {
  console.error(`the file must hold exactly one ${MARK}`);
  process.exit(2);
}
const prefix = source.slice(0, at);
const suffix = source.slice(at + MARK.length);

const llama = await Llama2.load(await resolveModel(flags.model), loadOptions(flags));
try {
  if (!llama.info.fimTokens) {
    console.error(`${llama.info.path} was not trained for infilling (no ▁<PRE> ▁<SUF> ▁<MID> pieces): use Code Llama 7B or 13B (llama2 pull codellama-7b)`);
    process.exitCode = 1;
  } else {
    // Greedy: code completion wants the likeliest text. The middle ends at the model's end-of-middle piece.
    const { text, stats } = await llama.infill(prefix, suffix, { maxTokens: flags["max-tokens"], temperature: 0, suffixFirst: flags["suffix-first"] }).result;
    process.stdout.write(prefix + text + suffix);
    console.error(`[${llama.info.deviceName}] ${stats.completionTokens} tokens in the middle (${stats.finishReason}), ${stats.tokensPerSecond.toFixed(1)} tokens/s`);
  }
} catch (err) {
  if (!isLlama2Error(err)) throw err;
  console.error(`error [${err.code}]: ${err.message}`);
  process.exitCode = 1;
} finally {
  await llama.dispose();
}
