// Chat templates: how a dialog becomes token ids. `llama2` (the default) is exactly Meta's reference
// `chat_completion` (llama/generation.py); more can be registered.
//
// A template serves two callers:
//  - one-shot chat: encodeDialog(messages) -> the whole prompt;
//  - chat sessions that keep their KV cache across turns: the cache already holds the earlier turns,
//    where each assistant reply is the model's own generated ids. The session appends, per turn,
//    encodeUserTurn(dialog) -> generate -> assistantEnd(generated).
import { InvalidArgumentError, showValue } from "./errors.js";
import type { ChatMessage } from "./types.js";

/** The tokenizer operations a template needs (Tokenizer implements them). */
export interface TemplateTokenizer {
  readonly bosId: number;
  readonly eosId: number;
  encode(text: string, options?: { bos?: boolean; eos?: boolean; special?: boolean; start?: boolean }): number[];
  piece(id: number): string;
  /** Text cut at the special pieces written in it: strings for text, ids for special pieces. */
  splitSpecial(text: string): (string | number)[];
}

export interface ChatTemplate {
  readonly name: string;
  /** Strings that end an assistant reply besides EOS (the session stops generation there). */
  readonly stopStrings?: readonly string[];
  /** Tokens that end an assistant reply besides EOS (a template's own end-of-turn piece, e.g. "<|im_end|>"). */
  readonly stopTokenIds?: readonly number[];
  /** The whole dialog (ending with a user message) as the prompt for the next assistant reply. */
  encodeDialog(messages: readonly ChatMessage[], tok: TemplateTokenizer): number[];
  /**
   * Only the last user message's turn, to append to a session holding the earlier turns (each reply
   * closed by assistantEnd). null: the template cannot append a turn (the session prompts the whole
   * dialog again through encodeDialog, keeping the KV of what the two share).
   */
  encodeUserTurn(messages: readonly ChatMessage[], tok: TemplateTokenizer): number[] | null;
  /** What to append after a generated reply, before the next user turn. */
  assistantEnd(generatedIds: readonly number[], tok: TemplateTokenizer): number[];
}

/** A validated dialog: optional system prompt, then user/assistant pairs, then the last user message. */
interface Dialog {
  system?: string;
  /** Alternating user, assistant, ..., user (odd length). */
  turns: string[];
}

const ROLES = new Set(["system", "user", "assistant"]);

/** Checks the reference's rules: [system], user, assistant, user, ..., ending with user. */
export function parseDialog(messages: readonly ChatMessage[]): Dialog {
  if (!Array.isArray(messages)) throw new InvalidArgumentError("messages", "must be an array of { role, content }");
  if (messages.length === 0) throw new InvalidArgumentError("messages", "must not be empty");
  messages.forEach((m: unknown, i) => {
    const msg = m as Partial<ChatMessage> | null;
    if (!msg || typeof msg !== "object") throw new InvalidArgumentError(`messages[${i}]`, "must be an object { role, content }");
    if (typeof msg.role !== "string" || !ROLES.has(msg.role)) {
      throw new InvalidArgumentError(`messages[${i}].role`, `must be "system", "user" or "assistant", got ${showValue(msg.role)}`);
    }
    if (typeof msg.content !== "string") throw new InvalidArgumentError(`messages[${i}].content`, "must be a string");
  });
  const offset = messages[0]!.role === "system" ? 1 : 0;
  const turns = messages.slice(offset);
  turns.forEach((m, k) => {
    const want = k % 2 === 0 ? "user" : "assistant";
    if (m.role !== want) {
      const why = m.role === "system" ? "only the first message may be a system message" : `roles must alternate user/assistant starting with user`;
      throw new InvalidArgumentError(`messages[${k + offset}].role`, `expected "${want}", got "${m.role}" (${why})`);
    }
  });
  if (turns.length % 2 === 0) {
    const i = messages.length - 1;
    throw new InvalidArgumentError(turns.length === 0 ? `messages[${i}]` : `messages[${i}].role`, "the dialog must end with a user message");
  }
  return { system: offset ? messages[0]!.content : undefined, turns: turns.map((m) => m.content) };
}

// Python's str.strip(): str.isspace() characters, which differ from JS trim() (no U+FEFF; adds
// U+001C..U+001F and U+0085).
const PY_WS = "\\t\\n\\v\\f\\r\\x1c-\\x20\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";
const PY_STRIP = new RegExp(`^[${PY_WS}]+|[${PY_WS}]+$`, "g");
export const pyStrip = (s: string): string => s.replace(PY_STRIP, "");

const B_INST = "[INST]";
const E_INST = "[/INST]";
const B_SYS = "<<SYS>>\n";
const E_SYS = "\n<</SYS>>\n\n";

/** The reference folds the system prompt into the first user message. */
function llamaUserContents(d: Dialog): string[] {
  const turns = [...d.turns];
  if (d.system !== undefined) turns[0] = B_SYS + d.system + E_SYS + turns[0];
  return turns;
}

/**
 * Meta's Llama 2 chat format:
 *   per (user, assistant) pair: BOS "[INST] {user.strip()} [/INST] {assistant.strip()} " EOS
 *   then:                       BOS "[INST] {last_user.strip()} [/INST]"
 * Session turns vs encodeDialog: encodeUserTurn + the generated reply + assistantEnd equals the
 * reference pair tokens except for the reference's trailing " " before EOS. That space tokenizes
 * to its own piece "▁" (id 29871), because SentencePiece pieces never end in "▁" after a non-space
 * (a stripped non-empty reply ends in a non-space); for an empty reply the reference has "▁▁"
 * (259) instead. A session does not add it: the model stops with EOS right after its reply, so the
 * cache holds reply + EOS, which is also what the model was trained to produce. Also, the model's
 * own reply ids may differ from SentencePiece's encoding of the reply text.
 */
export const llama2Template: ChatTemplate = {
  name: "llama2",
  encodeDialog(messages, tok) {
    const turns = llamaUserContents(parseDialog(messages));
    const ids: number[] = [];
    for (let k = 0; k + 1 < turns.length; k += 2) {
      ids.push(...tok.encode(`${B_INST} ${pyStrip(turns[k]!)} ${E_INST} ${pyStrip(turns[k + 1]!)} `, { bos: true, eos: true }));
    }
    ids.push(...tok.encode(`${B_INST} ${pyStrip(turns[turns.length - 1]!)} ${E_INST}`, { bos: true }));
    return ids;
  },
  encodeUserTurn(messages, tok) {
    const turns = llamaUserContents(parseDialog(messages));
    return tok.encode(`${B_INST} ${pyStrip(turns[turns.length - 1]!)} ${E_INST}`, { bos: true });
  },
  assistantEnd(generatedIds, tok) {
    return generatedIds.length > 0 && generatedIds[generatedIds.length - 1] === tok.eosId ? [] : [tok.eosId];
  },
};

/** Encodes text that continues a sequence: without the "▁" SentencePiece prefixes to every encode. */
function encodeContinuation(text: string, tok: TemplateTokenizer): number[] {
  const ids = tok.encode(text);
  return ids.length > 0 && tok.piece(ids[0]!) === "\u2581" ? ids.slice(1) : ids;
}

/**
 * A plain transcript for models without a chat format:
 *   "{system}\n\nUser: {u1}\nAssistant: {a1}\nUser: {u2}\nAssistant:"  (BOS once, at the start)
 * The reply ends where the model starts the next "\nUser:". Later session turns begin with "\n".
 */
export const plainTemplate: ChatTemplate = {
  name: "plain",
  stopStrings: ["\nUser:"],
  encodeDialog(messages, tok) {
    const d = parseDialog(messages);
    let text = d.system !== undefined ? `${d.system}\n\n` : "";
    d.turns.forEach((t, k) => (text += k % 2 === 0 ? `${k ? "\n" : ""}User: ${t}\nAssistant:` : ` ${t}`));
    return tok.encode(text, { bos: true });
  },
  encodeUserTurn(messages, tok) {
    const d = parseDialog(messages);
    const last = d.turns[d.turns.length - 1]!;
    if (d.turns.length > 1) return encodeContinuation(`\nUser: ${last}\nAssistant:`, tok);
    return tok.encode(`${d.system !== undefined ? `${d.system}\n\n` : ""}User: ${last}\nAssistant:`, { bos: true });
  },
  assistantEnd() {
    return [];
  },
};

const registry = new Map<string, ChatTemplate>([
  [llama2Template.name, llama2Template],
  [plainTemplate.name, plainTemplate],
]);

export const DEFAULT_CHAT_TEMPLATE = llama2Template.name;

/** Adds (or replaces) a template under its name. */
export function registerChatTemplate(template: ChatTemplate): void {
  const t = template as Partial<ChatTemplate> | null;
  if (!t || typeof t !== "object" || typeof t.name !== "string" || t.name === "") {
    throw new InvalidArgumentError("template.name", "must be a non-empty string");
  }
  for (const fn of ["encodeDialog", "encodeUserTurn", "assistantEnd"] as const) {
    if (typeof t[fn] !== "function") throw new InvalidArgumentError(`template.${fn}`, "must be a function");
  }
  if (t.stopStrings !== undefined && !(Array.isArray(t.stopStrings) && t.stopStrings.every((s) => typeof s === "string" && s !== ""))) {
    throw new InvalidArgumentError("template.stopStrings", "must be an array of non-empty strings");
  }
  if (t.stopTokenIds !== undefined && !(Array.isArray(t.stopTokenIds) && t.stopTokenIds.every((s) => Number.isInteger(s) && s >= 0))) {
    throw new InvalidArgumentError("template.stopTokenIds", "must be an array of token ids");
  }
  registry.set(template.name, template);
}

export function getChatTemplate(name: string = DEFAULT_CHAT_TEMPLATE): ChatTemplate {
  const t = typeof name === "string" ? registry.get(name) : undefined;
  if (!t) throw new InvalidArgumentError("template", `unknown chat template ${showValue(name)} (known: ${[...registry.keys()].join(", ")})`);
  return t;
}

export function listChatTemplates(): string[] {
  return [...registry.keys()];
}
