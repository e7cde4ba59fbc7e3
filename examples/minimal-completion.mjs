// The smallest useful program: load a model, complete a prompt, print the text and the speed.
//
//   node examples/minimal-completion.mjs [--model PATH] [--prompt TEXT] [--max-tokens N] [--device auto|cpu|cuda]
//
// Without --model it runs on the built-in demo model (random weights: the text is gibberish).
import { Llama2 } from "llama2-native";
import { loadOptions, parseFlags, resolveModel } from "./_shared.mjs";

const flags = parseFlags({ model: "", tokenizer: "", prompt: "Once upon a time", "max-tokens": 32, device: "auto", temperature: 0.8, seed: 42 });

const llama = await Llama2.load(await resolveModel(flags.model), loadOptions(flags));
try {
  // generate() returns a stream; `result` resolves with the whole text when generation ends.
  const { text, stats } = await llama.generate(flags.prompt, {
    maxTokens: flags["max-tokens"],
    temperature: flags.temperature,
    seed: flags.seed,
  }).result;
  console.log(flags.prompt + text);
  console.error(
    `[${llama.info.deviceName}] ${stats.completionTokens} tokens (${stats.finishReason}), ` +
      `first token after ${stats.timeToFirstTokenMs.toFixed(0)} ms, ${stats.tokensPerSecond.toFixed(1)} tokens/s`,
  );
} finally {
  await llama.dispose();
}
