// llama.cpp server's /tokenize and /detokenize, so that clients (evaluation harnesses, prompt budgeting)
// can count and build token ids with the model's own tokenizer.
import { InvalidArgumentError } from "../errors.js";
import type { ChatBackend } from "./backend.js";
import { HttpError } from "./openai.js";
import { asObject, boolField } from "./validate.js";

/** Most ids one /detokenize request may send. */
const MAX_IDS = 1 << 20;

function needTokenizer(backend: ChatBackend): NonNullable<ChatBackend["tokenizer"]> {
  if (!backend.tokenizer) throw new HttpError(400, "this model has no tokenizer", undefined, "no_tokenizer");
  return backend.tokenizer;
}

/**
 * {"content": text, "add_special": bool (BOS), "parse_special": bool, "with_pieces": bool} -> {"tokens": ids},
 * or with pieces
 * {"tokens": [{"id", "piece"}]} where a piece that is not whole UTF-8 is its byte values, as llama.cpp.
 */
export function tokenizeRequest(backend: ChatBackend, body: unknown): object {
  const o = asObject(body, "body");
  if (typeof o.content !== "string") throw new InvalidArgumentError("content", "expected a string");
  // parse_special: "<s>", "</s>" and added pieces written in the text are their ids (llama.cpp's default).
  const ids = backend.tokenize(o.content, { bos: boolField(o, "add_special") ?? false, special: boolField(o, "parse_special") ?? true });
  if (!boolField(o, "with_pieces")) return { tokens: ids };
  const bytes = needTokenizer(backend).tokenBytes();
  const utf8 = new TextDecoder("utf-8", { fatal: true });
  return {
    tokens: ids.map((id) => {
      const b = bytes[id] ?? new Uint8Array(0);
      try {
        return { id, piece: utf8.decode(b) };
      } catch {
        return { id, piece: Array.from(b) };
      }
    }),
  };
}

/** {"tokens": ids} -> {"content": text}, decoded as SentencePiece does (control tokens print nothing). */
export function detokenizeRequest(backend: ChatBackend, body: unknown): object {
  const o = asObject(body, "body");
  const ids = o.tokens;
  if (!Array.isArray(ids)) throw new InvalidArgumentError("tokens", "expected an array of token ids");
  if (ids.length > MAX_IDS) throw new InvalidArgumentError("tokens", `at most ${MAX_IDS} ids`);
  const V = backend.info.config.vocabSize;
  ids.forEach((id, i) => {
    if (typeof id !== "number" || !Number.isInteger(id) || id < 0 || id >= V) throw new InvalidArgumentError(`tokens[${i}]`, `expected a token id in [0, ${V})`);
  });
  const decoder = needTokenizer(backend).createStreamDecoder({ stripLeadingSpace: true });
  let content = "";
  for (const id of ids as number[]) content += decoder.push(id);
  return { content: content + decoder.flush() };
}
