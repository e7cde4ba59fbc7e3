// `llama2 run`: load a model and run a job handler (chatbot server by default).
import { InvalidArgumentError } from "../../errors.js";
import { DRAFT_FLAGS } from "../model-options.js";
import { CHAT_TEMPLATE_FLAG, LORA_FLAGS, ROPE_SCALING_FLAG } from "../load-flags.js";
import { HANDLERS } from "../../runner/handlers/index.js";
import { runJob } from "../../runner/run.js";
import { parseRunSpec } from "../../runner/spec.js";
import type { Command } from "../command.js";

const command: Command = {
  name: "run",
  summary: "run a job: chat server (OpenAI API + chat page) or dataset evaluation",
  usage: "Usage: llama2 run [--model PATH|demo] [--handler chatbot|evaluation] [options]",
  flags: {
    model: { type: "string", description: "model (HF dir, .gguf, llama2.c .bin), 'demo', or from the Hub: llama2-7b-chat, hf:owner/repo[/file.gguf]", default: "demo" },
    handler: { type: "string", description: `what the job does: ${Object.keys(HANDLERS).join(" | ")}`, default: "chatbot" },
    device: { type: "string", description: "auto | cpu | cuda | cuda:N", default: "auto" },
    dtype: { type: "string", description: "auto | f16 | int8 | q4", default: "auto" },
    "kv-cache": { type: "string", description: "KV cache precision: auto | int8 (half of fp16's memory)", default: "auto" },
    context: { type: "int", description: "context length in tokens (default: the model's, capped)" },
    "cpu-activations": { type: "string", description: "CPU backend: f32 (exact) | int8 (int8 / 4-bit matrices take int8-rounded inputs: faster)", default: "f32" },
    "rope-scaling": ROPE_SCALING_FLAG,
    ...LORA_FLAGS,
    "chat-template": CHAT_TEMPLATE_FLAG,
    "max-sequences": { type: "int", description: "full-context sequences the KV cache holds (more shorter ones fit)", default: 4 },
    "draft-model": { type: "string", description: "speculative decoding for every request: a smaller model with the same vocabulary (path or Hub reference)" },
    "draft-tokens": DRAFT_FLAGS["draft-tokens"]!,
    "auto-release": { type: "string", description: "unload the model and end the job after a duration (30s, 30m, 2h)" },
    grace: { type: "string", description: "on release/cancel, time in-flight requests may finish", default: "5s" },
    host: { type: "string", description: "address to bind (non-loopback needs --api-key)", default: "127.0.0.1" },
    port: { type: "int", description: "port (0: any free port)", default: 8080 },
    "api-key": { type: "string", description: "require 'Authorization: Bearer KEY' (or set LLAMA2_API_KEY)" },
    cors: { type: "string", description: "allow this origin (or *) to call the API from a browser" },
    name: { type: "string", description: "a name for the job" },
    "jobs-dir": { type: "string", description: "where job directories go (default $LLAMA2_HOME/jobs or ~/.llama2/jobs)" },
    dataset: { type: "string", description: "evaluation: JSON-lines dataset" },
    out: { type: "string", description: "evaluation: results file (default <job dir>/results.jsonl)" },
    concurrency: { type: "int", description: "evaluation: lines in flight at once (default 1)" },
    "max-tokens": { type: "int", description: "evaluation: default max tokens per line" },
    temperature: { type: "number", description: "evaluation: default temperature" },
    "top-p": { type: "number", description: "evaluation: default top-p" },
    seed: { type: "int", description: "evaluation: default seed" },
  },
  async run(flags, positionals, io) {
    if (positionals.length > 0) throw new InvalidArgumentError(positionals[0]!, "unexpected argument (llama2 run takes options only)");
    // The env var keeps the key out of `ps` listings.
    const apiKey = (flags.apiKey as string | undefined) ?? process.env.LLAMA2_API_KEY;
    const spec = parseRunSpec({ ...flags, ...(apiKey !== undefined && { apiKey }) });
    const { job, exitCode } = await runJob(spec, {
      stderr: io.stderr,
      ...(typeof flags.jobsDir === "string" && { jobsDir: flags.jobsDir }),
      signals: process,
    });
    const r = job.record;
    io.stderr.write(`job ${job.id} ${r.state}${r.reason ? `: ${r.reason}` : ""}${r.outputs ? `\n${Object.entries(r.outputs).map(([k, v]) => `  ${k}: ${v}`).join("\n")}` : ""}\n`);
    // The job is over; if anything (a socket, a native thread) still holds the event loop, do not hang.
    setTimeout(() => process.exit(exitCode), 3000).unref();
    return exitCode;
  },
};

export default command;
