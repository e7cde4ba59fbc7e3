// `llama2 jobs`: list jobs (table, or --json).
import { InvalidArgumentError } from "../../errors.js";
import { formatDuration } from "../../runner/duration.js";
import { isJobProcessAlive, isTerminal, jobsRoot, listJobs, type JobRecord } from "../../runner/store.js";
import type { Command } from "../command.js";

/** The state to show: a non-terminal job whose process is gone is "lost". */
export function shownState(job: JobRecord): string {
  return !isTerminal(job.state) && !isJobProcessAlive(job) ? `lost (${job.state})` : job.state;
}

export function jobsTable(jobs: JobRecord[], now = Date.now()): string {
  const rows = jobs.map((j) => {
    const end = j.endedAt ? Date.parse(j.endedAt) : now;
    return [
      j.id,
      j.name ?? "",
      j.handler,
      shownState(j),
      j.spec.model === "demo" ? "demo" : (j.spec.model.split("/").pop() ?? j.spec.model),
      j.createdAt.replace("T", " ").slice(0, 19),
      formatDuration(end - Date.parse(j.createdAt)),
      String(j.figures.requests),
      j.figures.tokensPerSecond ? j.figures.tokensPerSecond.toFixed(1) : "",
      j.state === "running" ? (j.url ?? "") : "",
    ];
  });
  const head = ["ID", "NAME", "HANDLER", "STATE", "MODEL", "CREATED", "DURATION", "REQS", "TOK/S", "URL"];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  return [head, ...rows].map((r) => r.map((c, i) => c.padEnd(widths[i]!)).join("  ").trimEnd()).join("\n") + "\n";
}

const command: Command = {
  name: "jobs",
  summary: "list jobs",
  usage: "Usage: llama2 jobs [--json] [--limit N]",
  flags: {
    json: { type: "boolean", description: "print job records as JSON" },
    limit: { type: "int", description: "show only the newest N jobs" },
    "jobs-dir": { type: "string", description: "jobs directory (default $LLAMA2_HOME/jobs or ~/.llama2/jobs)" },
  },
  async run(flags, _positionals, io) {
    const root = jobsRoot(flags.jobsDir as string | undefined);
    let jobs = listJobs(root).map((j) => j.job);
    const limit = flags.limit as number | undefined;
    if (limit !== undefined && limit < 1) throw new InvalidArgumentError("--limit", `must be at least 1, got ${limit}`);
    if (limit !== undefined) jobs = jobs.slice(-limit);
    if (flags.json) io.stdout.write(JSON.stringify(jobs.map((j) => ({ ...j, shownState: shownState(j) })), null, 2) + "\n");
    else if (jobs.length === 0) io.stdout.write(`no jobs in ${root}\n`);
    else io.stdout.write(jobsTable(jobs));
    return 0;
  },
};

export default command;
