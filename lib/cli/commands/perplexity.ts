// `llama2 perplexity`: how well a model predicts a text, the way llama.cpp's llama-perplexity measures it,
// so that precisions (f16, int8 weights, the int8 KV cache) and backends can be compared on the same
// file. The text's tokens are cut into windows of --context tokens; each window starts with BOS (in
// place of its first token) and only its second half is scored, so every scored token sees at least
// half a window of context. PPL = exp(mean negative log-likelihood over the scored tokens).
import type { Command } from "../command.js";
import { InvalidArgumentError, Llama2Error } from "../../errors.js";
import { LOAD_FLAGS, loadModelFromFlags, loadOptionsFromFlags } from "../model-options.js";
import { readFlagFile } from "../read-input.js";

const command: Command = {
  name: "perplexity",
  summary: "perplexity of a model on a text file (llama.cpp's method: windows of --context, second halves scored)",
  usage: [
    "Usage: llama2 perplexity --model PATH (--file TEXT.txt | --text TEXT) [--context 512] [--chunks N] [--parallel N]",
    "       [--device D] [--dtype D] [--kv-cache int8] [--json]",
    "",
    "Windows of --context tokens (default 512, as llama.cpp), each starting with BOS; the second half of each",
    "window is scored. Prints the running perplexity per window, then the final figure (with --json, one",
    "object). Compare precisions on the same file and --context: the figures are comparable with each other.",
  ].join("\n"),
  flags: {
    ...LOAD_FLAGS,
    file: { type: "string", alias: "f", description: "text file to score" },
    text: { type: "string", description: "text to score (instead of --file)" },
    chunks: { type: "int", description: "score at most this many windows" },
    parallel: { type: "int", description: "windows scored at once (batched; default 4)" },
    json: { type: "boolean", description: "print one JSON object {perplexity, tokens, windows, ...}" },
  },
  async run(flags, positionals, io) {
    if (positionals.length) throw new InvalidArgumentError(positionals[0]!, "unexpected argument (options start with --)");
    if (typeof flags.model !== "string") throw new InvalidArgumentError("--model", "required (a model directory, .gguf or .bin, or demo)");
    const hasFile = typeof flags.file === "string";
    if (hasFile === (typeof flags.text === "string")) throw new InvalidArgumentError("--file", "give exactly one of --file TEXT.txt or --text TEXT");
    const n = (flags.context as number | undefined) ?? 512;
    if (n < 16) throw new InvalidArgumentError("--context", `a window needs at least 16 tokens, got ${n}`);
    const chunks = flags.chunks as number | undefined;
    if (chunks !== undefined && chunks < 1) throw new InvalidArgumentError("--chunks", `expected at least 1, got ${chunks}`);
    const parallel = (flags.parallel as number | undefined) ?? 4;
    if (parallel < 1 || parallel > 64) throw new InvalidArgumentError("--parallel", `expected 1..64, got ${parallel}`);
    const text = hasFile ? readFlagFile("--file", flags.file as string) : (flags.text as string);
    loadOptionsFromFlags(flags); // every flag checked before the (possibly slow) load
    const model = await loadModelFromFlags({ ...flags, context: n }, io);
    try {
      const tok = model.tokenizer;
      if (!tok) throw new Llama2Error("ERR_TOKENIZER", `${model.info.path} has no tokenizer: perplexity needs one (pass --tokenizer)`);
      const ids = tok.encode(text);
      let windows = Math.floor(ids.length / n);
      if (windows === 0) {
        throw new InvalidArgumentError(hasFile ? "--file" : "--text", `the text is ${ids.length} tokens; one window of --context ${n} needs at least ${n} (use a smaller --context)`);
      }
      if (chunks !== undefined) windows = Math.min(windows, chunks);
      const first = Math.floor(n / 2);
      const t0 = performance.now();
      const results: { nll: number; count: number }[] = new Array(windows);
      let done = 0;
      let nll = 0;
      let count = 0;
      // Windows are scored `parallel` at a time (the scheduler batches them) and reported in order.
      let next = 0;
      const worker = async () => {
        for (let w = next++; w < windows; w = next++) {
          const win = ids.slice(w * n, (w + 1) * n);
          win[0] = tok.bosId;
          const s = await model.score(win);
          // logprobs[j] is log P(win[j + 1] | win[0..j]): the second half predicts tokens first + 1 .. n - 1.
          const part = s.logprobs.slice(first);
          results[w] = { nll: -part.reduce((a, b) => a + b, 0), count: part.length };
          while (done < windows && results[done]) {
            nll += results[done]!.nll;
            count += results[done]!.count;
            done++;
            if (!flags.json && !flags.quiet) io.stderr.write(`[${done}]${Math.exp(nll / count).toFixed(4)}${done % 8 === 0 || done === windows ? "\n" : ","}`);
          }
        }
      };
      await Promise.all(Array.from({ length: Math.min(parallel, windows) }, worker));
      const seconds = (performance.now() - t0) / 1000;
      const ppl = Math.exp(nll / count);
      const out = {
        perplexity: ppl,
        windows,
        context: n,
        scoredTokens: count,
        textTokens: ids.length,
        seconds,
        tokensPerSecond: (windows * n) / seconds,
        model: model.info.path,
        device: model.info.deviceName,
        dtype: model.info.dtype,
        kvCacheType: model.info.kvCacheType,
      };
      if (flags.json) io.stdout.write(JSON.stringify(out) + "\n");
      else io.stdout.write(`perplexity ${ppl.toFixed(4)} over ${count} tokens (${windows} windows of ${n}; ${out.tokensPerSecond.toFixed(1)} tok/s)\n`);
      return 0;
    } finally {
      await model.dispose();
    }
  },
};

export default command;
