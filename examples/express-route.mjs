// The engine as a chatbot backend behind a route of your own Express app.
//
//   npm install express          (in your project; the package's checkout has it as a devDependency)
//   node examples/express-route.mjs [--model PATH] [--port 8787] [--max-tokens 256]
//   curl -s localhost:8787/chat -d '{"messages":[{"role":"user","content":"Hi!"}]}'
//   curl -N localhost:8787/chat -H 'accept: text/event-stream' -d '{"messages":[{"role":"user","content":"Hi!"}]}'
//   node examples/express-route.mjs --self-test      # starts, calls its own route both ways, exits
//
// One model is loaded once and shared by every request: concurrent requests are batched together by
// the engine's scheduler, so never load a model per request. The route is plain (req, res) code, so
// the same body works in Fastify (`request.body`, and `reply.raw` for the event stream).
// For a complete OpenAI-compatible server (auth, limits, metrics, /v1/chat/completions), use the
// package's built-in server (`llama2 run`) instead; this file shows the pattern for an app of your own.
import express from "express";
import { Llama2, isLlama2Error } from "llama2-native";
import { loadOptions, parseFlags, resolveModel } from "./_shared.mjs";

const flags = parseFlags({ model: "", tokenizer: "", port: 8787, host: "127.0.0.1", "max-tokens": 256, device: "auto", "self-test": false });

const ROLES = new Set(["system", "user", "assistant"]);

function validMessages(body) {
  const messages = body?.messages;
  if (!Array.isArray(messages) || messages.length === 0) return null;
  for (const m of messages) if (!ROLES.has(m?.role) || typeof m?.content !== "string") return null;
  return messages.map((m) => ({ role: m.role, content: m.content }));
}

/** HTTP status for an engine error: the request's fault (400), a busy server (503), or ours (500). */
function statusOf(err) {
  if (!isLlama2Error(err)) return 500;
  if (["ERR_INVALID_ARGUMENT", "ERR_CONTEXT_OVERFLOW", "ERR_TOKENIZER"].includes(err.code)) return 400;
  if (err.code === "ERR_KV_CACHE_FULL") return 503;
  return 500;
}

/** POST /chat: {messages, max_tokens?} -> {reply, usage}, or Server-Sent Events with `accept: text/event-stream`. */
export function chatRoute(llama, defaults) {
  return async (req, res) => {
    const messages = validMessages(req.body);
    if (!messages) return res.status(400).json({ error: "messages: expected [{role: system|user|assistant, content: string}, ...]" });
    const asked = req.body.max_tokens;
    const maxTokens = Number.isInteger(asked) && asked > 0 ? Math.min(asked, defaults.maxTokens) : defaults.maxTokens;

    // Stop generating when the client goes away (a closed tab must not keep the GPU busy).
    const abort = new AbortController();
    res.on("close", () => abort.abort());

    let stream;
    try {
      stream = llama.chat(messages, { maxTokens, signal: abort.signal });
    } catch (err) {
      return res.status(statusOf(err)).json({ error: err.message, code: err.code }); // e.g. invalid options
    }
    try {
      if (!(req.headers.accept ?? "").includes("text/event-stream")) {
        const { text, stats } = await stream.result;
        return res.json({
          reply: text,
          finish_reason: stats.finishReason,
          usage: { prompt_tokens: stats.promptTokens, completion_tokens: stats.completionTokens },
        });
      }
      res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache", connection: "keep-alive" });
      for await (const chunk of stream) {
        if (chunk.text) res.write(`data: ${JSON.stringify({ text: chunk.text })}\n\n`);
        if (chunk.stats) res.write(`event: done\ndata: ${JSON.stringify({ finish_reason: chunk.stats.finishReason, completion_tokens: chunk.stats.completionTokens })}\n\n`);
      }
      res.end();
    } catch (err) {
      if (abort.signal.aborted) return; // the client left: nothing to answer
      if (!res.headersSent) return res.status(statusOf(err)).json({ error: err.message, code: err.code }); // e.g. too long for the context
      res.end(`event: error\ndata: ${JSON.stringify({ error: err.message, code: err.code })}\n\n`);
    }
  };
}

const llama = await Llama2.load(await resolveModel(flags.model), loadOptions(flags));
const app = express();
// Any content type is read as JSON (curl -d sends form-encoded); 64 KiB is plenty for a chat turn.
app.post("/chat", express.json({ type: () => true, limit: "64kb" }), chatRoute(llama, { maxTokens: flags["max-tokens"] }));
app.get("/health", (req, res) => res.json({ model: llama.info.path, device: llama.info.deviceName, pending: llama.pending }));
app.use((req, res) => res.status(404).json({ error: "POST /chat" }));
// Body-parser errors (bad JSON: 400, too large: 413) as JSON, never a stack trace.
app.use((err, req, res, _next) => res.status(err.status ?? 500).json({ error: err.status ? err.message : "internal error" }));

const server = await new Promise((resolve, reject) => {
  const s = app.listen(flags["self-test"] ? 0 : flags.port, flags.host, (err) => (err ? reject(err) : resolve(s)));
});
const url = `http://${flags.host}:${server.address().port}`;
console.log(`listening on ${url} (POST /chat) with ${llama.info.path} on ${llama.info.deviceName}`);

async function shutdown() {
  server.close();
  server.closeAllConnections?.();
  await llama.dispose();
}
process.once("SIGINT", shutdown);
process.once("SIGTERM", shutdown);

if (flags["self-test"]) {
  const body = JSON.stringify({ messages: [{ role: "user", content: "Say hello." }], max_tokens: Math.min(8, flags["max-tokens"]) });
  const plain = await (await fetch(`${url}/chat`, { method: "POST", body })).json();
  console.log(`JSON reply: ${JSON.stringify(plain)}`);
  const sse = await (await fetch(`${url}/chat`, { method: "POST", body, headers: { accept: "text/event-stream" } })).text();
  const events = sse.split("\n\n").filter(Boolean);
  console.log(`SSE reply: ${events.length} events, last: ${events.at(-1)?.replace(/\n/g, " | ")}`);
  await shutdown();
}
