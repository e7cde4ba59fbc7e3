// A chat on the terminal: one session (its KV cache is kept between turns, so each turn only
// prefills the new message), replies streamed as they are generated. Reads one user message per
// stdin line, so it works interactively and piped:
//
//   node examples/streaming-chat-cli.mjs [--model PATH] [--system TEXT] [--max-tokens N]
//   printf 'Hello!\nTell me a story.\n' | node examples/streaming-chat-cli.mjs --max-tokens 16
//
// Commands: /reset (forget the conversation), /exit. Ctrl+C during a reply stops that reply.
import readline from "node:readline";
import { Llama2 } from "llama2-native";
import { loadOptions, parseFlags, resolveModel } from "./_shared.mjs";

const flags = parseFlags({
  model: "",
  tokenizer: "",
  system: "You are a helpful, concise assistant.",
  "max-tokens": 256,
  device: "auto",
  temperature: 0.7,
  seed: -1,
});

const llama = await Llama2.load(await resolveModel(flags.model), loadOptions(flags));
const session = llama.createSession({ systemPrompt: flags.system });
const interactive = process.stdin.isTTY === true;
const rl = readline.createInterface({ input: process.stdin, terminal: interactive });

let current = null; // the reply being generated, so Ctrl+C can stop it
process.on("SIGINT", () => {
  if (current) current.abort();
  else process.exit(130);
});

console.error(`chatting with ${llama.info.path} on ${llama.info.deviceName} (/reset, /exit)`);
if (interactive) process.stdout.write("you> ");
for await (const line of rl) {
  const message = line.trim();
  if (message === "/exit") break;
  if (message === "/reset") {
    session.reset();
    console.error("[conversation reset]");
  } else if (message !== "") {
    if (!interactive) process.stdout.write(`you> ${message}\n`);
    process.stdout.write("assistant> ");
    current = session.send(message, {
      maxTokens: flags["max-tokens"],
      temperature: flags.temperature,
      ...(flags.seed >= 0 && { seed: flags.seed }),
    });
    try {
      for await (const chunk of current) process.stdout.write(chunk.text);
      const { stats } = await current.result;
      process.stdout.write("\n");
      console.error(
        `[${stats.completionTokens} tokens, ${stats.tokensPerSecond.toFixed(1)} tokens/s, ${stats.finishReason}; ` +
          `prompt ${stats.promptTokens} tokens of which ${stats.cachedPromptTokens} were cached]`,
      );
    } catch (err) {
      process.stdout.write("\n");
      console.error(`error [${err.code ?? "?"}]: ${err.message}`);
      if (err.code === "ERR_CONTEXT_OVERFLOW" || err.code === "ERR_KV_CACHE_FULL") {
        session.reset();
        console.error("[the conversation no longer fits the context: reset]");
      }
    }
    current = null;
  }
  if (interactive) process.stdout.write("you> ");
}
rl.close();
session.dispose();
await llama.dispose();
