// Tool calling's pieces: parsing tools, the reply format, the reply back in OpenAI's shape, and the
// dialog with earlier calls and results.
import { describe, expect, it } from "vitest";
import { canEnd, feed, initialState, utf8 } from "../lib/grammar/json-recognizer.js";
import { compileResponseFormat } from "../lib/grammar/response-format.js";
import { dialogWithTools, parseToolReply, parseTools, toolsFormat } from "../lib/server/tools.js";

const weather = { type: "function", function: { name: "get_weather", parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] } } };
const time = { type: "function", function: { name: "get_time" } };

function accepts(format: ReturnType<typeof toolsFormat>, text: string): boolean {
  const st = feed(initialState(compileResponseFormat(format)!.root), utf8(text));
  return st.length > 0 && canEnd(st);
}

describe("tools", () => {
  it("the reply format: calls of the chosen tools with their arguments' schema, or a response with auto", () => {
    const auto = toolsFormat(parseTools({ tools: [weather, time] })!);
    expect(accepts(auto, '{"tool_calls":[{"name":"get_weather","arguments":{"city":"Paris"}},{"name":"get_time","arguments":{}}]}')).toBe(true);
    expect(accepts(auto, '{"response":"hello"}')).toBe(true);
    expect(accepts(auto, '{"tool_calls":[{"name":"get_weather","arguments":{}}]}')).toBe(false); // city is required
    expect(accepts(auto, '{"tool_calls":[{"name":"nope","arguments":{}}]}')).toBe(false);
    expect(accepts(auto, '{"tool_calls":[]}')).toBe(false);
    const required = toolsFormat(parseTools({ tools: [weather, time], tool_choice: "required", parallel_tool_calls: false })!);
    expect(accepts(required, '{"response":"hello"}')).toBe(false);
    expect(accepts(required, '{"tool_calls":[{"name":"get_time","arguments":{}},{"name":"get_time","arguments":{}}]}')).toBe(false); // one call
    const named = toolsFormat(parseTools({ tools: [weather, time], tool_choice: { type: "function", function: { name: "get_time" } } })!);
    expect(accepts(named, '{"tool_calls":[{"name":"get_time","arguments":{}}]}')).toBe(true);
    expect(accepts(named, '{"tool_calls":[{"name":"get_weather","arguments":{"city":"x"}}]}')).toBe(false);
    expect(parseTools({ tools: [weather], tool_choice: "none" })).toBeUndefined();
    expect(() => parseTools({ tools: [weather, weather] })).toThrow(expect.objectContaining({ field: "tools[1].function.name" }));
  });

  it("turns replies into OpenAI's message fields", () => {
    const r = parseToolReply(' {"tool_calls":[{"name":"get_weather","arguments":{"city":"Paris"}}]}')!;
    expect(r.content).toBeNull();
    expect(r.toolCalls).toHaveLength(1);
    expect(r.toolCalls[0]).toMatchObject({ type: "function", function: { name: "get_weather", arguments: '{"city":"Paris"}' } });
    expect(r.toolCalls[0]!.id).toMatch(/^call_[0-9a-f]{24}$/);
    expect(parseToolReply('{"response":"hi"}')).toEqual({ content: "hi", toolCalls: [] });
    expect(parseToolReply('{"tool_calls":[{"name":"get_w')).toBeNull(); // cut by max_tokens
  });

  it("puts earlier calls and results into the alternating dialog, with the tools in the system prompt", () => {
    const raw = [
      { role: "system", content: "Be brief." },
      { role: "user", content: "Weather?" },
      { role: "assistant", content: null, tool_calls: [{ id: "c1", type: "function", function: { name: "get_weather", arguments: '{"city":"Paris"}' } }] },
      { role: "tool", tool_call_id: "c1", content: "sunny" },
      { role: "tool", tool_call_id: "c2", content: "12:00" },
    ];
    const parsed = [
      { role: "system" as const, content: "Be brief." },
      { role: "user" as const, content: "Weather?" },
      { role: "assistant" as const, content: "" },
      { role: "user" as const, content: "sunny" },
      { role: "user" as const, content: "12:00" },
    ];
    const d = dialogWithTools(raw, parsed, parseTools({ tools: [weather] }));
    expect(d.map((m) => m.role)).toEqual(["system", "user", "assistant", "user"]);
    expect(d[0]!.content).toMatch(/^Be brief\.\n\nYou can call these tools:\n\{"name":"get_weather"/);
    expect(JSON.parse(d[2]!.content)).toEqual({ tool_calls: [{ name: "get_weather", arguments: { city: "Paris" } }] });
    expect(d[3]!.content).toBe("Result of tool call c1: sunny\n\nResult of tool call c2: 12:00");
    // Two user messages that are not tool results stay two (the template refuses that order).
    const plain = dialogWithTools([{ role: "user" }, { role: "user" }], [{ role: "user", content: "a" }, { role: "user", content: "b" }], undefined);
    expect(plain).toHaveLength(2);
  });
});
