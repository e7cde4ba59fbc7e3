// `llama2 cancel <id>`: ask a running job to stop (it unloads the model and records `cancelled`).
import { InvalidArgumentError } from "../../errors.js";
import { cancelJob } from "../../runner/cancel.js";
import { parseDuration } from "../../runner/duration.js";
import { jobsRoot } from "../../runner/store.js";
import type { Command } from "../command.js";

const command: Command = {
  name: "cancel",
  summary: "stop a running job cleanly",
  usage: "Usage: llama2 cancel <id|prefix|name> [--wait 30s]",
  flags: {
    wait: { type: "string", description: "how long to wait for the job to stop", default: "30s" },
    "jobs-dir": { type: "string", description: "jobs directory (default $LLAMA2_HOME/jobs or ~/.llama2/jobs)" },
  },
  async run(flags, positionals, io) {
    if (positionals.length !== 1) throw new InvalidArgumentError("id", "expected one job id (see llama2 jobs)");
    const waitMs = parseDuration("--wait", flags.wait as string);
    const r = await cancelJob(jobsRoot(flags.jobsDir as string | undefined), positionals[0]!, { waitMs });
    const id = r.job.id;
    switch (r.outcome) {
      case "cancelled":
        io.stdout.write(`job ${id} cancelled\n`);
        return 0;
      case "finished":
        io.stdout.write(`job ${id} had already ended (${r.job.state}); nothing to cancel\n`);
        return 0;
      case "stale":
        io.stdout.write(`job ${id}: its process (pid ${r.job.pid}) is gone; marked cancelled\n`);
        return 0;
      case "timeout":
        io.stderr.write(`job ${id} was asked to stop but is still ${r.job.state} after ${flags.wait}; check llama2 logs ${id}\n`);
        return 1;
    }
  },
};

export default command;
