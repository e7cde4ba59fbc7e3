// Chat templates written in Jinja, as models ship them (a GGUF's `tokenizer.chat_template`, an HF
// directory's tokenizer_config.json or chat_template.jinja), rendered by @huggingface/jinja (the Jinja
// subset transformers.js runs; writing our own would be a second, less tested one), in a time-limited
// sandbox (jinja-sandbox.ts).
//
// Rendered text -> ids the way llama.cpp and Hugging Face tokenizers read a rendered template: special
// pieces written by the template ("<s>", "</s>", added tokens) become their ids, and each stretch of text
// between them is encoded on its own with SentencePiece's leading "▁" (Tokenizer.encode `special`). Text
// that comes from a message is text: a "</s>" typed by a user does not end a turn (the template's output
// is rendered with a marker inside such pieces, so they are not read as special, and the marker removed).
//
// Sessions append turns to a KV cache (chat-template.ts): a reply's ids stay as the model generated them,
// the template's end-of-turn piece (the first special piece it writes after an assistant message, found
// by rendering a probe; one other than EOS also ends replies, as EOS does) closes it, and the next turn
// is the text the whole dialog's rendering has after that piece. Text the template puts between the
// reply and its end piece (Llama 2's " " before "</s>") is not added, as in the built-in llama2 template.
// A template whose rendering of the earlier dialog is not a prefix of the next one's (or that writes no
// end piece) makes the session prompt the dialog again.
import { parseDialog, type ChatTemplate, type TemplateTokenizer } from "./chat-template.js";
import { InvalidArgumentError, Llama2Error, showValue } from "./errors.js";
import { compileJinja, type SandboxedTemplate } from "./jinja-sandbox.js";
import type { ChatMessage } from "./types.js";

/** Private-use characters, one of which marks message text that spells a special piece. */
const MARK_FIRST = 0xe000;
const MARK_LAST = 0xf8ff;

/** A Jinja chat template as a ChatTemplate; throws ERR_CHAT_TEMPLATE when it does not parse or render. */
export function jinjaChatTemplate(source: string, tokenizer: TemplateTokenizer, name = "model"): ChatTemplate {
  if (typeof source !== "string" || source.trim() === "") throw new InvalidArgumentError("template", "expected Jinja source text");
  let compiled: SandboxedTemplate;
  try {
    compiled = compileJinja(source);
  } catch (err) {
    throw new Llama2Error("ERR_CHAT_TEMPLATE", `chat template ${showValue(name)} does not parse: ${(err as Error).message}`, { cause: err });
  }
  /** The template's output for `messages` (already escaped), as transformers renders it. */
  const renderRaw = (messages: readonly ChatMessage[], generationPrompt: boolean, tok: TemplateTokenizer): string =>
    compiled.render({
      messages: messages.map((m) => ({ role: m.role, content: m.content })),
      bos_token: tok.piece(tok.bosId),
      eos_token: tok.piece(tok.eosId),
      add_generation_prompt: generationPrompt,
    });
  const render = (messages: readonly ChatMessage[], generationPrompt: boolean, tok: TemplateTokenizer, mark: string): string => {
    const escape = (text: string): string =>
      tok
        .splitSpecial(text)
        .map((p) => {
          if (typeof p !== "number") return p;
          const piece = tok.piece(p);
          const first = String.fromCodePoint(piece.codePointAt(0)!);
          return first + mark + piece.slice(first.length);
        })
        .join("");
    try {
      return renderRaw(
        messages.map((m) => ({ role: m.role, content: escape(m.content) })),
        generationPrompt,
        tok,
      );
    } catch (err) {
      if (err instanceof Llama2Error) throw err; // past the time limit: the template's fault, not the dialog's
      // The probes at creation render ordinary dialogs, so a failure here is the template refusing this
      // one (its raise_exception: a role it does not support, ...).
      throw new InvalidArgumentError("messages", `chat template ${showValue(name)} refused the dialog: ${(err as Error).message}`, { cause: err });
    }
  };
  /**
   * Rendered text -> ids: special pieces the template wrote are ids, message text (marked) is text. `start`:
   * the text begins the prompt (a session's next turn does not), for tokenizers that put "▁" only there.
   */
  const encode = (text: string, tok: TemplateTokenizer, mark: string, start = true): number[] => {
    const ids: number[] = [];
    tok.splitSpecial(text).forEach((part, i) => {
      if (typeof part === "number") ids.push(part);
      else ids.push(...tok.encode(part.replaceAll(mark, ""), { start: start && i === 0 }));
    });
    return ids;
  };
  /** A marker character that occurs in neither the template nor the messages. */
  const markFor = (messages: readonly ChatMessage[]): string => {
    const used = source + messages.map((m) => m.content).join("");
    for (let c = MARK_FIRST; c <= MARK_LAST; c++) {
      const ch = String.fromCharCode(c);
      if (!used.includes(ch)) return ch;
    }
    throw new InvalidArgumentError("messages", "uses every private-use character U+E000-U+F8FF");
  };
  const dialogIds = (messages: readonly ChatMessage[], tok: TemplateTokenizer): number[] => {
    const mark = markFor(messages);
    const ids = encode(render(messages, true, tok, mark), tok, mark);
    // Templates that do not write BOS themselves (Zephyr's, ...) get it as llama.cpp adds it.
    if (ids[0] !== tok.bosId) ids.unshift(tok.bosId);
    return ids;
  };

  // The end-of-turn piece: the first special piece after an assistant message's text.
  const probeMark = markFor([]);
  let probe: string;
  try {
    probe = renderRaw(
      [
        { role: "user", content: "Hi" },
        { role: "assistant", content: probeMark },
      ],
      false,
      tokenizer,
    );
  } catch (err) {
    throw new Llama2Error("ERR_CHAT_TEMPLATE", `chat template ${showValue(name)} does not render a user / assistant exchange: ${(err as Error).message}`, { cause: err });
  }
  const at = probe.indexOf(probeMark);
  if (at < 0) throw new Llama2Error("ERR_CHAT_TEMPLATE", `chat template ${showValue(name)} does not write the assistant's message`);
  const endId = tokenizer.splitSpecial(probe.slice(at + probeMark.length)).find((p): p is number => typeof p === "number");
  const endPiece = endId === undefined ? undefined : tokenizer.piece(endId);

  return {
    name,
    ...(endId !== undefined && endId !== tokenizer.eosId && { stopTokenIds: [endId] }),
    encodeDialog(messages, tok) {
      parseDialog(messages);
      return dialogIds(messages, tok);
    },
    encodeUserTurn(messages, tok) {
      const d = parseDialog(messages);
      if (d.turns.length === 1) return dialogIds(messages, tok);
      if (endPiece === undefined) return null;
      const mark = markFor(messages);
      const before = render(messages.slice(0, -1), false, tok, mark);
      const full = render(messages, true, tok, mark);
      const cut = before.lastIndexOf(endPiece);
      if (cut < 0 || !full.startsWith(before)) return null;
      return encode(full.slice(cut + endPiece.length), tok, mark, false);
    },
    assistantEnd(generatedIds) {
      if (endId === undefined) return [];
      return generatedIds.length > 0 && generatedIds[generatedIds.length - 1] === endId ? [] : [endId];
    },
  };
}
