// OpenAI's /v1/embeddings: each input's pooled final hidden states (Llama2.embed), as floats or as
// base64 of their little-endian float32 bytes (what OpenAI's SDKs ask for by default).
import { InvalidArgumentError, Llama2Error } from "../errors.js";
import type { EmbedResult } from "../llama2.js";
import { HttpError, sendJson, type GenerationContext, type GenerationOutcome } from "./openai.js";
import { ContextLengthError, parseEmbeddingRequest } from "./validate.js";

export async function embeddings(ctx: GenerationContext, body: unknown): Promise<GenerationOutcome> {
  const { backend } = ctx;
  const embed = backend.embed?.bind(backend);
  if (!embed) throw new HttpError(400, "embeddings are not supported by this backend", undefined, "embeddings_not_supported");
  const req = parseEmbeddingRequest(body, backend.info.config.vocabSize, backend.info.config.dim);
  // All inputs at once (the engine batches them); one failing (or the client going away) stops the others.
  const stop = new AbortController();
  const signal = AbortSignal.any([ctx.signal, stop.signal]);
  const opts = { signal, ...(req.pooling && { pooling: req.pooling }), ...(req.normalize !== undefined && { normalize: req.normalize }) };
  let results: EmbedResult[];
  try {
    results = await Promise.all(
      req.inputs.map(async (input, i) => {
        try {
          return await embed(input, opts);
        } catch (err) {
          stop.abort();
          throw inputError(err, req.batch ? `input[${i}]` : "input");
        }
      }),
    );
  } catch (err) {
    const cut = ctx.cutReason();
    if (cut) throw new HttpError(503, `request cut: ${cut.message}`, "server_error", cut.code);
    if (ctx.signal.aborted) throw new HttpError(499, "the client went away", undefined, "client_disconnected");
    throw err;
  }
  const promptTokens = results.reduce((a, r) => a + r.tokenCount, 0);
  sendJson(ctx.res, 200, {
    object: "list",
    data: results.map((r, index) => ({ object: "embedding", index, embedding: req.encodingFormat === "base64" ? base64(r.embedding) : Array.from(r.embedding) })),
    model: ctx.modelId,
    usage: { prompt_tokens: promptTokens, total_tokens: promptTokens },
  });
  return { stream: false, promptTokens, completionTokens: 0, status: 200 };
}

/** An input's failure named after that input (input[3]), so that a client of a batch knows which. */
function inputError(err: unknown, field: string): unknown {
  if (err instanceof InvalidArgumentError) {
    // The library names its argument "input" (and an id of it "input[k]").
    return err.field.startsWith("input") ? new InvalidArgumentError(field + err.field.slice(5), err.message.slice(err.field.length + 2)) : err;
  }
  if (err instanceof Llama2Error && err.code === "ERR_CONTEXT_OVERFLOW") return new ContextLengthError(field, `${err.message} (embed it in shorter pieces)`);
  return err;
}

/** Base64 of the vector's float32 values, little-endian whatever this machine's byte order. */
function base64(v: Float32Array): string {
  const b = Buffer.allocUnsafe(v.length * 4);
  v.forEach((x, i) => b.writeFloatLE(x, i * 4));
  return b.toString("base64");
}
