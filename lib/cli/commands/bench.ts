// `llama2 bench`: the throughput bench (see lib/bench/bench.ts); progress on stderr, a summary on
// stdout, the full result JSON in --out (input of `llama2 compare`).
import { closeSync, existsSync, openSync, statSync, unlinkSync, writeFileSync } from "node:fs";
import { positiveInts } from "../args.js";
import type { Command } from "../command.js";
import { loadOptionsFromFlags, resolveModelFlag, withFlagNames } from "../model-options.js";
import { isHubRef } from "../../hub/refs.js";
import { InvalidArgumentError, Llama2Error } from "../../errors.js";
import { runBench, summarize } from "../../bench/bench.js";
import type { Device, KvCacheType, WeightDtype } from "../../types.js";

/** Fails now, naming `flag`, if `file` cannot be written (a bench may run for minutes before writing it). */
export function checkWritable(file: string, flag: string): void {
  const existed = existsSync(file);
  if (existed && statSync(file).isDirectory()) throw new InvalidArgumentError(flag, `${file} is a directory`);
  try {
    closeSync(openSync(file, "a"));
    if (!existed) unlinkSync(file);
  } catch (err) {
    throw new InvalidArgumentError(flag, `cannot write ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
}

const command: Command = {
  name: "bench",
  summary: "measure load time, prefill, decode (per batch size), memory and overhead; write a result JSON",
  usage: "Usage: llama2 bench --model PATH [--device cuda|cpu|auto] [--dtype f16|int8|q4|auto] [--kv-cache auto|int8] [--prompt 128,512,2048] [--gen 256] [--batch 1,4,16] [--out FILE]",
  flags: {
    model: { type: "string", alias: "m", description: "model (HF directory, .gguf, llama2.c .bin, or demo)" },
    device: { type: "string", description: "cpu, cuda or auto", default: "auto" },
    dtype: { type: "string", description: "weight precision on the device", default: "auto" },
    "kv-cache": { type: "string", description: "KV cache precision: auto or int8", default: "auto" },
    prompt: { type: "list", description: "prompt lengths for prefill / time to first token", default: ["128", "512"] },
    gen: { type: "int", description: "tokens generated per decode run", default: 128 },
    batch: { type: "list", description: "decode batch sizes (concurrent sequences)", default: ["1"] },
    "decode-prompt": { type: "int", description: "prompt length of the decode runs", default: 128 },
    reps: { type: "int", description: "repetitions of each figure (after one warm-up)", default: 3 },
    context: { type: "int", description: "context length to load with (default: what the runs need)" },
    threads: { type: "int", description: "CPU threads" },
    "cpu-activations": { type: "string", description: "CPU: f32 (exact) or int8 (int8-rounded inputs for int8 / 4-bit matrices)", default: "f32" },
    preset: { type: "string", description: "synthetic preset name to record (e.g. llama2-7b)" },
    "skip-cold": { type: "boolean", description: "do not measure a cold-page-cache load" },
    out: { type: "string", alias: "o", description: "write the result JSON here" },
    json: { type: "boolean", description: "print the result JSON on stdout instead of a summary" },
  },
  async run(flags, positionals, io) {
    if (positionals.length) throw new InvalidArgumentError(positionals[0]!, "unexpected argument");
    if (typeof flags.model !== "string") throw new InvalidArgumentError("--model", "required");
    if (flags.model !== "demo" && !isHubRef(flags.model) && !existsSync(flags.model)) throw new Llama2Error("ERR_FILE_NOT_FOUND", `--model: no such file or directory: ${flags.model}`);
    const loadOpts = loadOptionsFromFlags(flags); // --device, --dtype, --kv-cache, --context, --threads, --cpu-activations checked before any load
    const device = flags.device as string;
    const kvCache = flags.kvCache as string;
    const gen = flags.gen as number;
    const reps = flags.reps as number;
    if (gen < 2 || gen > 65536) throw new InvalidArgumentError("--gen", `expected 2..65536, got ${gen}`);
    if (reps < 1 || reps > 100) throw new InvalidArgumentError("--reps", `expected 1..100, got ${reps}`);
    const decodePrompt = flags.decodePrompt as number;
    if (decodePrompt < 1 || decodePrompt > 1 << 20) throw new InvalidArgumentError("--decode-prompt", `expected 1..${1 << 20}, got ${decodePrompt}`);
    const prompts = positiveInts("--prompt", flags.prompt, 1 << 20);
    // Every run must fit the context, or sequences stop early and the figures would count tokens never made.
    const context = flags.context as number | undefined;
    const needs = Math.max(...prompts, decodePrompt + gen);
    if (context !== undefined && context < needs)
      throw new InvalidArgumentError("--context", `${context} is too small for these runs: they need ${needs} tokens (the longest --prompt, or --decode-prompt + --gen)`);
    if (typeof flags.out === "string") checkWritable(flags.out, "--out");
    const model = await resolveModelFlag(flags.model, io);
    const result = await withFlagNames(() => runBench({
      model,
      device: device as Device,
      dtype: flags.dtype as WeightDtype,
      kvCacheType: kvCache as KvCacheType,
      prompts,
      gen,
      batches: positiveInts("--batch", flags.batch, 4096),
      decodePrompt,
      reps,
      contextLength: flags.context as number | undefined,
      threads: flags.threads as number | undefined,
      ...(loadOpts.cpuActivations && { cpuActivations: loadOpts.cpuActivations }),
      skipCold: flags.skipCold === true,
      preset: flags.preset as string | undefined,
      log: (m) => io.stderr.write(`[bench] ${m}\n`),
    }));
    if (typeof flags.out === "string") {
      writeFileSync(flags.out, JSON.stringify(result, null, 2) + "\n");
      io.stderr.write(`[bench] wrote ${flags.out}\n`);
    }
    io.stdout.write(flags.json ? JSON.stringify(result, null, 2) + "\n" : summarize(result) + "\n");
    return 0;
  },
};

export default command;
