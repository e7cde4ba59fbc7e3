// Job handlers: what a job does with its loaded model. Adding one = one file + one line here.
import { InvalidArgumentError } from "../../errors.js";
import type { ChatBackend } from "../../server/backend.js";
import type { Job } from "../job.js";
import type { ProgressLine } from "../progress.js";
import type { JobSpec } from "../spec.js";

export interface HandlerContext {
  job: Job;
  spec: JobSpec;
  backend: ChatBackend;
  stderr: NodeJS.WritableStream;
  /** The terminal progress line (shared with log echo, so the two do not garble each other). */
  progress: ProgressLine;
}

export interface Handler {
  name: string;
  summary: string;
  /** Checks the spec before the model is loaded, so a bad flag fails in a second rather than after a long load. */
  validate?(spec: JobSpec): void | Promise<void>;
  /**
   * Runs until its work is done or `job.stopSignal` aborts; then in-flight work gets `spec.graceMs`
   * before it is cut. Must not dispose the backend (the runner does).
   */
  run(ctx: HandlerContext): Promise<void>;
}

export const HANDLERS: Record<string, () => Promise<{ default: Handler }>> = {
  chatbot: () => import("./chatbot.js"),
  evaluation: () => import("./evaluation.js"),
};

export async function loadHandler(name: string): Promise<Handler> {
  const load = Object.hasOwn(HANDLERS, name) ? HANDLERS[name] : undefined;
  if (!load) throw new InvalidArgumentError("--handler", `unknown handler '${name}' (available: ${Object.keys(HANDLERS).join(", ")})`);
  return (await load()).default;
}
