// `llama2 logs <id> [-f]`: print a job's log, optionally following it until the job ends.
import { InvalidArgumentError } from "../../errors.js";
import { printLogs } from "../../runner/logs.js";
import { findJob, jobsRoot } from "../../runner/store.js";
import type { Command } from "../command.js";

const command: Command = {
  name: "logs",
  summary: "print (or follow with -f) a job's log",
  usage: "Usage: llama2 logs <id|prefix|name> [-f] [--json] [--tail N]",
  flags: {
    follow: { type: "boolean", alias: "f", description: "keep printing new lines until the job ends" },
    json: { type: "boolean", description: "print the JSON-lines log" },
    tail: { type: "int", description: "start with the last N lines" },
    "jobs-dir": { type: "string", description: "jobs directory (default $LLAMA2_HOME/jobs or ~/.llama2/jobs)" },
  },
  async run(flags, positionals, io) {
    if (positionals.length !== 1) throw new InvalidArgumentError("id", "expected one job id (see llama2 jobs)");
    const tail = flags.tail as number | undefined;
    if (tail !== undefined && tail < 0) throw new InvalidArgumentError("--tail", "must be >= 0");
    const { dir } = findJob(jobsRoot(flags.jobsDir as string | undefined), positionals[0]!);
    await printLogs(dir, io.stdout, { follow: flags.follow === true, json: flags.json === true, ...(tail !== undefined && { tail }) });
    return 0;
  },
};

export default command;
