// OpenAI tool calling for a model without a tool-call format of its own (Llama 2 chat), done the way
// llama.cpp's server does for such models: the tools are described in the system prompt, and the
// reply is constrained (response format) to one JSON object, either {"tool_calls": [...]} whose items
// follow the tools' parameter schemas, or {"response": "..."} (tool_choice "auto" only). The reply is
// then turned back into OpenAI's message shape. Earlier tool calls and tool results in the messages
// become assistant and user turns in the same JSON/text form.
import { randomBytes } from "node:crypto";
import { InvalidArgumentError } from "../errors.js";
import { compileJsonSchema } from "../grammar/json-schema.js";
import type { ChatMessage, JsonSchema, ResponseFormat } from "../types.js";

export interface ToolSpec {
  name: string;
  description?: string;
  parameters: JsonSchema;
}

/** Tools the reply may call; absent when the request has none or tool_choice is "none". */
export interface ToolRequest {
  tools: ToolSpec[];
  /** "auto": a call or a text reply; "required": at least one call; a name: a call of that tool. */
  choice: "auto" | "required" | { name: string };
  parallel: boolean;
}

export interface ToolCall {
  id: string;
  type: "function";
  function: { name: string; arguments: string };
}

type Body = Record<string, unknown>;
const NAME = /^[A-Za-z0-9_-]{1,64}$/;
const MAX_TOOLS = 128;
/** Calls in one reply when parallel calls are allowed. */
const MAX_PARALLEL = 8;

const isObject = (v: unknown): v is Body => typeof v === "object" && v !== null && !Array.isArray(v);

export function parseTools(o: Body): ToolRequest | undefined {
  const raw = o.tools;
  if (raw === undefined || raw === null) {
    if (o.tool_choice !== undefined && o.tool_choice !== null && o.tool_choice !== "none")
      throw new InvalidArgumentError("tool_choice", "needs tools");
    return undefined;
  }
  if (!Array.isArray(raw) || raw.length === 0 || raw.length > MAX_TOOLS) throw new InvalidArgumentError("tools", `expected an array of 1 to ${MAX_TOOLS} tools`);
  const tools = raw.map((t, i): ToolSpec => {
    const f = `tools[${i}]`;
    if (!isObject(t) || t.type !== "function" || !isObject(t.function)) throw new InvalidArgumentError(f, 'expected {"type":"function","function":{"name",...}}');
    const fn = t.function;
    if (typeof fn.name !== "string" || !NAME.test(fn.name)) throw new InvalidArgumentError(`${f}.function.name`, "expected 1 to 64 letters, digits, _ or -");
    if (fn.description !== undefined && typeof fn.description !== "string") throw new InvalidArgumentError(`${f}.function.description`, "expected a string");
    const parameters = (fn.parameters ?? { type: "object", properties: {} }) as JsonSchema;
    compileJsonSchema(parameters, `${f}.function.parameters`);
    return { name: fn.name, ...(typeof fn.description === "string" && { description: fn.description }), parameters };
  });
  const names = new Set<string>();
  tools.forEach((t, i) => {
    if (names.has(t.name)) throw new InvalidArgumentError(`tools[${i}].function.name`, `"${t.name}" is defined twice`);
    names.add(t.name);
  });
  const c = o.tool_choice ?? "auto";
  let choice: ToolRequest["choice"];
  if (c === "none") return undefined;
  if (c === "auto" || c === "required") choice = c;
  else if (isObject(c) && c.type === "function" && isObject(c.function) && typeof c.function.name === "string") {
    if (!names.has(c.function.name)) throw new InvalidArgumentError("tool_choice.function.name", `"${c.function.name.slice(0, 64)}" is not one of the tools`);
    choice = { name: c.function.name };
  } else throw new InvalidArgumentError("tool_choice", 'expected "none", "auto", "required" or {"type":"function","function":{"name"}}');
  const p = o.parallel_tool_calls;
  if (p !== undefined && p !== null && typeof p !== "boolean") throw new InvalidArgumentError("parallel_tool_calls", "expected true or false");
  return { tools, choice, parallel: p !== false };
}

/** The response format that makes the reply a tool call (or, with "auto", a text response). */
export function toolsFormat(t: ToolRequest): ResponseFormat {
  const chosen = typeof t.choice === "object" ? t.tools.filter((x) => x.name === (t.choice as { name: string }).name) : t.tools;
  const call = (x: ToolSpec) => ({ type: "object", properties: { name: { const: x.name }, arguments: x.parameters }, required: ["name", "arguments"] });
  const calls = { type: "object", properties: { tool_calls: { type: "array", items: { anyOf: chosen.map(call) }, minItems: 1, maxItems: t.parallel ? MAX_PARALLEL : 1 } }, required: ["tool_calls"] };
  const text = { type: "object", properties: { response: { type: "string" } }, required: ["response"] };
  return { type: "json_schema", schema: t.choice === "auto" ? { anyOf: [calls, text] } : calls };
}

/** The system prompt's addition describing the tools and the reply format. */
export function toolsPrompt(t: ToolRequest): string {
  const list = t.tools.map((x) => JSON.stringify({ name: x.name, ...(x.description && { description: x.description }), parameters: x.parameters })).join("\n");
  const how =
    t.choice === "auto"
      ? 'Reply with one JSON object: {"tool_calls": [{"name": TOOL, "arguments": {...}}]} to call tools, or {"response": "your answer"} to answer directly.'
      : `Reply with one JSON object {"tool_calls": [{"name": ${typeof t.choice === "object" ? JSON.stringify(t.choice.name) : "TOOL"}, "arguments": {...}}]}.`;
  return `You can call these tools:\n${list}\n${how} Results of tool calls come back in the user's turn.`;
}

/** The model's reply (JSON of the format above) in OpenAI's message shape; null when it is not such JSON. */
export function parseToolReply(text: string): { content: string | null; toolCalls: ToolCall[] } | null {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    return null; // cut by max_tokens
  }
  if (!isObject(v)) return null;
  if (typeof v.response === "string") return { content: v.response, toolCalls: [] };
  if (!Array.isArray(v.tool_calls)) return null;
  const toolCalls = v.tool_calls.filter(isObject).map((c) => ({
    id: `call_${randomBytes(12).toString("hex")}`,
    type: "function" as const,
    function: { name: String(c.name), arguments: JSON.stringify(c.arguments ?? {}) },
  }));
  return { content: null, toolCalls };
}

/**
 * OpenAI messages with tool calls and tool results -> the alternating dialog the chat template takes:
 * an assistant's tool calls become its turn in the reply format, tool results a user turn (merged with
 * adjacent user content), and the tools' description joins the system prompt.
 */
export function dialogWithTools(raw: readonly Body[], messages: ChatMessage[], tools: ToolRequest | undefined): ChatMessage[] {
  const out: ChatMessage[] = [];
  const fromTool = new Set<ChatMessage>();
  // Tool results merge with the user content next to them (other orders stay the template's to refuse).
  const add = (role: ChatMessage["role"], content: string, tool = false): void => {
    const last = out[out.length - 1];
    if (last && role === "user" && last.role === "user" && (tool || fromTool.has(last))) {
      last.content += `\n\n${content}`;
      if (tool) fromTool.add(last);
    } else {
      const m = { role, content };
      out.push(m);
      if (tool) fromTool.add(m);
    }
  };
  messages.forEach((m, i) => {
    const r = raw[i]!;
    if (r.role === "tool") {
      const id = typeof r.tool_call_id === "string" ? r.tool_call_id : "";
      add("user", `Result of tool call ${id}: ${m.content}`, true);
    } else if (m.role === "assistant" && Array.isArray(r.tool_calls) && r.tool_calls.length > 0) {
      const calls = r.tool_calls.map((c: unknown, j: number) => {
        const f = `messages[${i}].tool_calls[${j}]`;
        if (!isObject(c) || !isObject(c.function) || typeof c.function.name !== "string" || typeof c.function.arguments !== "string")
          throw new InvalidArgumentError(f, 'expected {"id","type":"function","function":{"name","arguments"}}');
        let args: unknown;
        try {
          args = JSON.parse(c.function.arguments);
        } catch {
          throw new InvalidArgumentError(`${f}.function.arguments`, "is not valid JSON");
        }
        return { name: c.function.name, arguments: args };
      });
      add("assistant", JSON.stringify({ tool_calls: calls }));
    } else if (tools && m.role === "assistant") {
      // Earlier plain answers in the reply format, so the model sees the format it must follow.
      add("assistant", JSON.stringify({ response: m.content }));
    } else add(m.role, m.content);
  });
  if (tools) {
    const prompt = toolsPrompt(tools);
    if (out[0]?.role === "system") out[0].content = `${out[0].content}\n\n${prompt}`;
    else out.unshift({ role: "system", content: prompt });
  }
  return out;
}
