// The chatbot handler: serves the chat page and the OpenAI-compatible API until the job is stopped,
// then lets in-flight requests finish within the grace period and cuts the rest with the reason.
import { once } from "node:events";
import { assertBindAllowed } from "../../server/auth.js";
import { assertPortFree, startServer } from "../../server/http.js";
import type { Handler } from "./index.js";

const handler: Handler = {
  name: "chatbot",
  summary: "chat page + OpenAI-compatible HTTP API",
  async validate(spec) {
    assertBindAllowed(spec.host, spec.apiKey);
    await assertPortFree(spec.host, spec.port);
  },
  async run({ job, spec, backend, stderr }) {
    if (job.stopSignal.aborted) return;
    const server = await startServer({
      backend,
      host: spec.host,
      port: spec.port,
      ...(spec.apiKey !== undefined && { apiKey: spec.apiKey }),
      ...(spec.cors !== undefined && { cors: spec.cors }),
      ...(spec.model === "demo" && { modelId: "demo" }),
      job: { snapshot: () => job.record, recentLogs: (n) => job.recentLogs(n) },
      log: (level, msg) => job.log(level, msg),
      onGeneration: (o) =>
        job.recordRequest({
          promptTokens: o.promptTokens,
          completionTokens: o.completionTokens,
          ...(o.tokensPerSecond !== undefined && { tokensPerSecond: o.tokensPerSecond }),
          error: o.status >= 400 && o.status !== 499,
        }),
    });
    job.update({ url: server.url });
    job.log("info", `serving on ${server.url}`);
    stderr.write(`\nChat page: ${server.url}${spec.apiKey ? "  (API key required)" : ""}\nAPI:       ${server.url}v1/chat/completions\n\n`);
    if (!job.stopSignal.aborted) await once(job.stopSignal, "abort");
    const kind = job.stopKind ?? "cancelled";
    const reason = `the job was ${kind}${job.stopReason ? ` (${job.stopReason})` : ""}`;
    if (server.inFlight > 0) job.log("info", `waiting up to ${spec.graceMs}ms for ${server.inFlight} in-flight request(s)`);
    await server.shutdown({ graceMs: spec.graceMs, reason, code: kind === "released" ? "job_released" : "job_cancelled" });
    job.log("info", "server closed");
  },
};

export default handler;
