// The evaluation handler: runs each line of a JSON-lines dataset ({"prompt": ...} or {"messages": [...]},
// optional "id" and OpenAI-style sampling fields) through the model, appending one result per line to a
// JSONL file, then writes a summary (counts, throughput, latency and TTFT percentiles). Bad lines are
// reported with their line number and counted; they never stop the run.
import { createReadStream, existsSync, statSync, writeFileSync } from "node:fs";
import path from "node:path";
import { createInterface } from "node:readline";
import { fromNative, InvalidArgumentError, Llama2Error } from "../../errors.js";
import type { ChatMessage, GenerateOptions, GenerationStats } from "../../types.js";
import { countChatTokens } from "../../server/backend.js";
import { asObject, parseMessages, parsePrompt, parseSampling, resolveMaxTokens } from "../../server/validate.js";
import { percentiles } from "../percentiles.js";
import { appendLine, writeJsonAtomic } from "../store.js";
import type { Handler, HandlerContext } from "./index.js";

interface Item {
  line: number;
  id?: string | number;
  messages?: ChatMessage[];
  prompt?: string;
  opts: GenerateOptions;
}

interface Done {
  ok: boolean;
  latencyMs?: number;
  ttftMs?: number;
  tokensPerSecond?: number;
  promptTokens: number;
  completionTokens: number;
}

const MAX_PROBLEMS = 100;

export function outputPaths(spec: { out?: string }, jobDir: string): { results: string; summary: string } {
  if (!spec.out) return { results: path.join(jobDir, "results.jsonl"), summary: path.join(jobDir, "summary.json") };
  return { results: spec.out, summary: spec.out.replace(/\.jsonl?$/i, "") + ".summary.json" };
}

const handler: Handler = {
  name: "evaluation",
  summary: "runs a JSON-lines dataset through the model; writes results and a summary",
  validate(spec) {
    if (!spec.dataset) throw new InvalidArgumentError("--dataset", "the evaluation handler needs --dataset FILE.jsonl");
    if (!existsSync(spec.dataset) || !statSync(spec.dataset).isFile())
      throw new Llama2Error("ERR_FILE_NOT_FOUND", `--dataset: no such file ${spec.dataset}`);
    if (spec.out) validateOut(spec.out, spec.dataset);
  },
  run: evaluate,
};
export default handler;

// The results file is truncated before the dataset is read: --out must never resolve to the dataset.
function validateOut(out: string, dataset: string): void {
  if (!existsSync(path.dirname(out))) throw new InvalidArgumentError("--out", `directory ${path.dirname(out)} does not exist`);
  const { results, summary } = outputPaths({ out }, "");
  for (const f of [results, summary])
    if (existsSync(f) && statSync(f).isDirectory()) throw new InvalidArgumentError("--out", `${f} is a directory; give a file name`);
  if (sameFile(results, dataset)) throw new InvalidArgumentError("--out", `${out} is the dataset file (it would be overwritten)`);
  if (sameFile(summary, dataset)) throw new InvalidArgumentError("--out", `its summary file ${summary} is the dataset file (it would be overwritten)`);
}

/** Same path, or the same file through a link (same device and inode). */
function sameFile(a: string, b: string): boolean {
  if (path.resolve(a) === path.resolve(b)) return true;
  try {
    const x = statSync(a);
    const y = statSync(b);
    return x.dev === y.dev && x.ino === y.ino;
  } catch {
    return false; // one does not exist yet
  }
}

async function evaluate(ctx: HandlerContext): Promise<void> {
  const { job, spec, backend, progress } = ctx;
  const dataset = spec.dataset!;
  const out = outputPaths(spec, job.dir);
  writeFileSync(out.results, "");
  job.update({ outputs: out });
  const total = await countLines(dataset);
  job.log("info", `evaluating ${total} line(s) of ${dataset} with concurrency ${spec.concurrency} -> ${out.results}`);

  const done: Done[] = [];
  const problems: { line: number; id?: string | number; error: string }[] = [];
  let badLines = 0;
  let cut = 0;
  let seen = 0;
  const t0 = performance.now();
  const vocab = backend.info.config.vocabSize;

  // On stop: take no new lines, and cut what is running once the grace period is over.
  const cutCtl = new AbortController();
  let graceTimer: NodeJS.Timeout | undefined;
  const onStop = (): void => {
    graceTimer = setTimeout(() => cutCtl.abort(), spec.graceMs);
  };
  job.stopSignal.addEventListener("abort", onStop, { once: true });

  const problem = (line: number, error: string, id?: string | number): void => {
    if (problems.length < MAX_PROBLEMS) problems.push({ line, ...(id !== undefined && { id }), error });
    job.log("warn", `line ${line}: ${error}`);
  };
  const tick = (): void => {
    const errs = badLines + done.filter((d) => !d.ok).length;
    progress.update("evaluating", seen, total, `${seen}/${total}${errs ? `, ${errs} error(s)` : ""}`);
  };

  function parseItem(line: number, text: string): Item {
    let raw: unknown;
    try {
      raw = JSON.parse(text);
    } catch (err) {
      throw new InvalidArgumentError("line", `invalid JSON: ${(err as Error).message}`);
    }
    const o = asObject(raw, "line");
    if (o.id !== undefined && typeof o.id !== "string" && typeof o.id !== "number")
      throw new InvalidArgumentError("id", "expected a string or a number");
    const hasMessages = o.messages !== undefined;
    if (hasMessages === (o.prompt !== undefined)) throw new InvalidArgumentError("line", "needs exactly one of 'prompt' or 'messages'");
    const s = parseSampling(o, vocab);
    if (o.n !== undefined && o.n !== null && o.n !== 1) throw new InvalidArgumentError("n", "an evaluation line has one completion (n=1)");
    const messages = hasMessages ? parseMessages(o.messages) : undefined;
    const prompt = hasMessages ? undefined : parsePrompt(o.prompt);
    const promptTokens = messages ? countChatTokens(backend, messages) : backend.tokenize(prompt!, { bos: true }).length;
    const { maxTokens: defMax, ...defaults } = spec.sampling;
    const maxField = s.maxTokensField ?? "--max-tokens"; // the line's own field, or the run's default
    const maxTokens = resolveMaxTokens(s.maxTokens ?? defMax, promptTokens, backend.info.contextLength, hasMessages ? "messages" : "prompt", maxField, s.options.contextShift);
    const opts: GenerateOptions = { ...defaults, ...s.options, maxTokens, ...(s.stop && { stop: s.stop }) };
    return { line, ...(o.id !== undefined && { id: o.id as string | number }), ...(messages ? { messages } : { prompt: prompt! }), opts };
  }

  async function runItem(item: Item): Promise<void> {
    const started = performance.now();
    const signal = cutCtl.signal;
    const base = { line: item.line, ...(item.id !== undefined && { id: item.id }) };
    let text = "";
    let stats: GenerationStats | undefined;
    let firstMs: number | undefined;
    try {
      const stream = item.messages ? backend.chat(item.messages, { ...item.opts, signal }) : backend.generate(item.prompt!, { ...item.opts, signal });
      for await (const c of stream) {
        if (c.tokenIds.length) firstMs ??= performance.now() - started;
        text += c.text;
        if (c.stats) stats = c.stats;
      }
      if (signal.aborted || stats?.finishReason === "abort") throw new Llama2Error("ERR_ABORTED", `cut: the job was ${job.stopKind ?? "stopped"}`);
      const latencyMs = performance.now() - started;
      const ttftMs = stats?.timeToFirstTokenMs ?? firstMs;
      const rec: Done = {
        ok: true,
        latencyMs,
        ...(ttftMs !== undefined && { ttftMs }),
        ...(stats && { tokensPerSecond: stats.tokensPerSecond }),
        promptTokens: stats?.promptTokens ?? 0,
        completionTokens: stats?.completionTokens ?? 0,
      };
      done.push(rec);
      appendLine(out.results, JSON.stringify({
        ...base,
        output: text,
        finish_reason: stats?.finishReason ?? "stop",
        prompt_tokens: rec.promptTokens,
        completion_tokens: rec.completionTokens,
        ttft_ms: round(ttftMs),
        total_ms: round(latencyMs),
        tokens_per_second: round(stats?.tokensPerSecond),
      }));
      job.recordRequest({ promptTokens: rec.promptTokens, completionTokens: rec.completionTokens, ...(stats && { tokensPerSecond: stats.tokensPerSecond }) });
    } catch (err) {
      const e = fromNative(err);
      if (e.code === "ERR_ABORTED" || signal.aborted) cut++;
      else done.push({ ok: false, promptTokens: 0, completionTokens: 0 });
      appendLine(out.results, JSON.stringify({ ...base, error: e.message, code: e.code, ...(text && { partial_output: text }) }));
      if (e.code !== "ERR_ABORTED") {
        problem(item.line, e.message, item.id);
        job.recordRequest({ promptTokens: 0, completionTokens: 0, error: true });
      }
    } finally {
      seen++;
      tick();
    }
  }

  const slots = new Slots(spec.concurrency);
  const running = new Set<Promise<void>>();
  const rl = createInterface({ input: createReadStream(dataset, "utf8"), crlfDelay: Infinity });
  let lineNo = 0;
  try {
    for await (const text of rl) {
      lineNo++;
      if (job.stopSignal.aborted) break;
      if (text.trim() === "") continue;
      let item: Item;
      try {
        item = parseItem(lineNo, text);
      } catch (err) {
        badLines++;
        seen++;
        const msg = err instanceof Error ? err.message : String(err);
        appendLine(out.results, JSON.stringify({ line: lineNo, error: msg, code: "ERR_INVALID_ARGUMENT" }));
        problem(lineNo, msg);
        tick();
        continue;
      }
      await slots.acquire();
      if (job.stopSignal.aborted) {
        slots.release();
        break;
      }
      const p: Promise<void> = runItem(item).finally(() => {
        running.delete(p);
        slots.release();
      });
      running.add(p);
    }
  } finally {
    rl.close();
    await Promise.all(running);
    clearTimeout(graceTimer);
    job.stopSignal.removeEventListener("abort", onStop);
    progress.end();
  }

  const wallMs = performance.now() - t0;
  const ok = done.filter((d) => d.ok);
  const completionTokens = ok.reduce((a, d) => a + d.completionTokens, 0);
  const summary = {
    dataset,
    results: out.results,
    complete: !job.stopSignal.aborted,
    ...(job.stopKind && { stoppedBy: job.stopKind }),
    lines: seen,
    ok: ok.length,
    errors: done.length - ok.length,
    badLines,
    cut,
    problems,
    wallMs: round(wallMs),
    tokens: { prompt: ok.reduce((a, d) => a + d.promptTokens, 0), completion: completionTokens },
    throughput: {
      requestsPerSecond: round(ok.length / (wallMs / 1000)),
      completionTokensPerSecond: round(completionTokens / (wallMs / 1000)),
    },
    latencyMs: percentiles(ok.map((d) => d.latencyMs!)),
    ttftMs: percentiles(ok.flatMap((d) => (d.ttftMs !== undefined ? [d.ttftMs] : []))),
    tokensPerSecond: percentiles(ok.flatMap((d) => (d.tokensPerSecond ? [d.tokensPerSecond] : []))),
  };
  writeJsonAtomic(out.summary, summary);
  job.log("info", `evaluation ${summary.complete ? "done" : "stopped"}: ${ok.length} ok, ${summary.errors} error(s), ${badLines} bad line(s), ${cut} cut; summary in ${out.summary}`);
}

/** A counting semaphore: at most n items in flight. */
class Slots {
  private waiters: (() => void)[] = [];
  constructor(private free: number) {}
  acquire(): Promise<void> {
    if (this.free > 0) {
      this.free--;
      return Promise.resolve();
    }
    return new Promise((r) => this.waiters.push(r));
  }
  release(): void {
    const next = this.waiters.shift();
    if (next) next();
    else this.free++;
  }
}

async function countLines(file: string): Promise<number> {
  let n = 0;
  const rl = createInterface({ input: createReadStream(file, "utf8"), crlfDelay: Infinity });
  for await (const line of rl) if (line.trim() !== "") n++;
  return n;
}

function round(v: number | undefined): number | null {
  return v === undefined || !Number.isFinite(v) ? null : Math.round(v * 100) / 100;
}
