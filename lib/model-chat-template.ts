// Which chat template a loaded model uses by default. A model may carry its own (Jinja) template: a
// GGUF's `tokenizer.chat_template`, an HF directory's chat_template.jinja or tokenizer_config.json
// `chat_template`. Llama 2 chat's own template gives exactly the reference format, for which the built-in
// `llama2` template (Meta's chat_completion, checked against its ids) is used; any other (TinyLlama's
// Zephyr format, Vicuna's, ...) is used as written.
import { existsSync } from "node:fs";
import path from "node:path";
import { DEFAULT_CHAT_TEMPLATE, getChatTemplate, llama2Template, type ChatTemplate, type TemplateTokenizer } from "./chat-template.js";
import { jinjaChatTemplate } from "./chat-template-jinja.js";
import { InvalidArgumentError, Llama2Error, fromNative } from "./errors.js";
import { hfFolder, readHfJson, readHfText } from "./formats/hf-folder.js";
import { native, type NativeModelSourceInfo } from "./native.js";
import { isModelPath } from "./tokenizer/for-model.js";
import type { ChatMessage } from "./types.js";

/** The name under which a model's own template is asked for. */
export const MODEL_TEMPLATE = "model";

export interface ModelTemplateSource {
  source: string;
  /** Where it was read, for messages: e.g. "model.gguf: tokenizer.chat_template". */
  from: string;
}

/** A model's own chat template, if it has one. A malformed tokenizer_config.json is ERR_MODEL_CONFIG. */
export function readModelChatTemplate(info: NativeModelSourceInfo): ModelTemplateSource | undefined {
  const t = info.tokenizer?.chatTemplate;
  if (t) return { source: t, from: `${info.path}: tokenizer.chat_template` };
  if (info.format !== "hf") return undefined;
  const dir = hfFolder(info.path);
  const jinjaFile = path.join(dir, "chat_template.jinja"); // where transformers >= 4.43 saves it
  if (existsSync(jinjaFile)) return { source: readHfText(jinjaFile), from: jinjaFile };
  const configFile = path.join(dir, "tokenizer_config.json");
  const config = readHfJson(configFile);
  const ct = config && typeof config === "object" ? (config as { chat_template?: unknown }).chat_template : undefined;
  if (ct === undefined || ct === null) return undefined;
  if (typeof ct === "string") return ct.trim() ? { source: ct, from: `${configFile}: chat_template` } : undefined;
  // Several named templates: [{ name, template }], of which "default" is the chat one.
  if (Array.isArray(ct)) {
    const named = ct.find((e) => e && typeof e === "object" && (e as { name?: unknown }).name === "default") as { template?: unknown } | undefined;
    if (named && typeof named.template === "string") return { source: named.template, from: `${configFile}: chat_template "default"` };
    return undefined;
  }
  throw new Llama2Error("ERR_MODEL_CONFIG", `${configFile}: chat_template must be a string or a list of { name, template }`);
}

/** Dialogs on which a model's template must give the reference Llama 2 ids to be taken as Llama 2's. */
const PROBES: ChatMessage[][] = [
  [{ role: "user", content: "Hello, how are you?" }],
  [
    { role: "system", content: "You are a helpful assistant." },
    { role: "user", content: " What is 2+2? " },
  ],
  [
    { role: "user", content: "Name a colour." },
    { role: "assistant", content: " Blue. " },
    { role: "user", content: "Another one?\n" },
  ],
  [
    { role: "system", content: "Answer briefly." },
    { role: "user", content: "One" },
    { role: "assistant", content: "Two" },
    { role: "user", content: "Three" },
  ],
];

export interface ChosenTemplate {
  /** The template chat requests use when they name none. */
  template: ChatTemplate;
  /** The model's own template (as "model"), when it has one that works. */
  modelTemplate?: ChatTemplate;
  /** Why this one, when the model carries a template. */
  note?: string;
}

/**
 * The default chat template for a model. `requested`: "auto" (the model's own template, or llama2 when it
 * has none, or its template is Llama 2's format, or it does not work), "model" (its own, required), or a
 * registered name.
 */
export function chooseChatTemplate(found: ModelTemplateSource | undefined, tok: TemplateTokenizer, requested = "auto"): ChosenTemplate {
  if (typeof requested !== "string" || requested === "") throw new InvalidArgumentError("chatTemplate", 'expected "auto", "model" or a template name');
  let modelTemplate: ChatTemplate | undefined;
  let failure: Error | undefined;
  if (found) {
    try {
      modelTemplate = jinjaChatTemplate(found.source, tok, MODEL_TEMPLATE);
    } catch (err) {
      failure = err as Error;
    }
  }
  if (requested === MODEL_TEMPLATE) {
    if (failure) throw failure;
    if (!modelTemplate) throw new InvalidArgumentError("chatTemplate", "the model carries no chat template (use auto or a template name)");
    return { template: modelTemplate, modelTemplate, note: `from ${found!.from}` };
  }
  if (requested !== "auto") return { template: getChatTemplate(requested), ...(modelTemplate && { modelTemplate }) };
  if (!found) return { template: getChatTemplate(DEFAULT_CHAT_TEMPLATE) };
  if (!modelTemplate) {
    return { template: getChatTemplate(DEFAULT_CHAT_TEMPLATE), note: `${found.from} does not work, using llama2: ${failure!.message}` };
  }
  if (sameAsLlama2(modelTemplate, tok)) {
    return { template: llama2Template, modelTemplate, note: `${found.from} gives Llama 2's reference format: the built-in llama2 template is used` };
  }
  return { template: modelTemplate, modelTemplate, note: `from ${found.from}` };
}

function sameAsLlama2(t: ChatTemplate, tok: TemplateTokenizer): boolean {
  try {
    return PROBES.every((d) => {
      const a = t.encodeDialog(d, tok);
      const b = llama2Template.encodeDialog(d, tok);
      return a.length === b.length && a.every((x, i) => x === b[i]);
    });
  } catch {
    return false; // refuses a dialog Llama 2's format takes (a system message, ...)
  }
}

/**
 * The chat template Llama2.load would choose for `modelPath` (a model, or a bare tokenizer.model, which
 * carries none), read without loading weights: `llama2 tokenize --chat`.
 */
export function chatTemplateForPath(modelPath: string, tok: TemplateTokenizer, requested = "auto"): ChatTemplate {
  let found: ModelTemplateSource | undefined;
  if (isModelPath(modelPath)) {
    let info: NativeModelSourceInfo;
    try {
      info = native().readModelInfo(modelPath, false);
    } catch (err) {
      throw fromNative(err);
    }
    found = readModelChatTemplate(info);
  }
  return chooseChatTemplate(found, tok, requested).template;
}
