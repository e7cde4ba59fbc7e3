import { describe, expect, it } from "vitest";
import { InvalidArgumentError } from "../lib/errors.js";
import { StopMatcher } from "../lib/stop.js";

/** Feeds the deltas; returns the emitted text (with the flush when no stop), and whether it stopped. */
function run(stops: string[], deltas: string[]) {
  const m = new StopMatcher(stops);
  const emitted: string[] = [];
  let stopped = false;
  for (const d of deltas) {
    const r = m.push(d);
    emitted.push(r.text);
    if (r.stopped) {
      stopped = true;
      break;
    }
  }
  if (!stopped) emitted.push(m.flush());
  return { text: emitted.join(""), emitted, stopped, matched: m.matched };
}

describe("StopMatcher", () => {
  it("passes text through without stop strings", () => {
    expect(run([], ["a", "b"])).toMatchObject({ text: "ab", emitted: ["a", "b", ""], stopped: false });
    expect(new StopMatcher(undefined).push("x")).toEqual({ text: "x", stopped: false });
  });

  it("matches a stop string split over three pushes and never emits it", () => {
    const r = run(["</s>"], ["Hello <", "/", "s> more"]);
    expect(r).toMatchObject({ text: "Hello ", stopped: true, matched: "</s>" });
    expect(r.emitted).toEqual(["Hello ", "", ""]);
  });

  it("holds back only what could start a stop string", () => {
    const m = new StopMatcher(["STOP"]);
    expect(m.push("abcS")).toEqual({ text: "abc", stopped: false });
    expect(m.push("T")).toEqual({ text: "", stopped: false });
    expect(m.push("x")).toEqual({ text: "STx", stopped: false }); // false start: released
    expect(m.push("ST")).toEqual({ text: "", stopped: false });
    expect(m.flush()).toBe("ST");
    expect(m.flush()).toBe("");
  });

  it("handles overlapping prefixes", () => {
    expect(run(["abab"], ["ab", "ab", "ab"])).toMatchObject({ text: "", stopped: true });
    expect(run(["abab"], ["xab", "a", "bab"])).toMatchObject({ text: "x", stopped: true });
    expect(run(["abab"], ["aab", "ab"])).toMatchObject({ text: "a", emitted: ["a", ""] });
    expect(run(["abab"], ["aba", "ab"])).toMatchObject({ text: "abaab", stopped: false });
    expect(run(["aab"], ["a", "a", "a", "b"])).toMatchObject({ text: "a", stopped: true });
    expect(run(["abac"], ["ab", "abac"])).toMatchObject({ text: "ab", stopped: true });
    expect(run(["abab"], ["ababa", "c"])).toMatchObject({ text: "", stopped: true });
  });

  it("does not stop on an incomplete stop string and flushes it", () => {
    expect(run(["abab"], ["aba", "c"])).toMatchObject({ text: "abac", emitted: ["", "abac", ""], stopped: false });
    expect(run(["abcd"], ["xab", "c"])).toMatchObject({ text: "xabc", stopped: false });
  });

  it("stops at the earliest of several stop strings", () => {
    expect(run(["world", "lo w"], ["hello world"])).toMatchObject({ text: "hel", stopped: true, matched: "lo w" });
    expect(run(["\n\n", "User:"], ["Sure.\nUs", "er: hi"])).toMatchObject({ text: "Sure.\n", stopped: true, matched: "User:" });
    // The longer held prefix of one stop string must not hide the completion of another.
    expect(run(["abcdef", "cd"], ["abc", "d"])).toMatchObject({ text: "ab", stopped: true, matched: "cd" });
  });

  it("works with non-ASCII text and surrogate pairs", () => {
    expect(run(["😀!"], ["héllo 😀", "😀", "!"])).toMatchObject({ text: "héllo 😀", stopped: true });
    const m = new StopMatcher(["日本語"]);
    expect(m.push("これは日本")).toEqual({ text: "これは", stopped: false });
    expect(m.push("人")).toEqual({ text: "日本人", stopped: false });
  });

  it("emits nothing more after a stop", () => {
    const m = new StopMatcher(["x"]);
    expect(m.push("abxcd")).toEqual({ text: "ab", stopped: true });
    expect(m.stopped).toBe(true);
    expect(m.push("more")).toEqual({ text: "", stopped: true });
    expect(m.flush()).toBe("");
  });

  it("validates the stop option", () => {
    const bad: [unknown, RegExp][] = [
      ["stop", /must be an array/],
      [[""], /stop\[0\] must not be empty/],
      [["a", 5], /stop\[1\] must be a string \(got number\)/],
      [[null], /got null/],
      [new Array(17).fill("x"), /at most 16 stop strings \(got 17\)/],
      [["y".repeat(257)], /257 characters long/],
      [["a\uD800"], /lone UTF-16 surrogate/],
    ];
    for (const [stops, msg] of bad) {
      let err: unknown;
      try {
        new StopMatcher(stops as string[]);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(InvalidArgumentError);
      expect((err as InvalidArgumentError).field).toBe("stop");
      expect((err as Error).message).toMatch(msg);
    }
    expect(() => new StopMatcher(new Array(16).fill("y".repeat(256)))).not.toThrow();
  });
});
