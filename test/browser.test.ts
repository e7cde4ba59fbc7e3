// The chat page in a real browser: Debian's Chromium driven by playwright-core against the server with
// the fake backend. Skips visibly without /usr/bin/chromium (or playwright-core) unless
// LLAMA2_REQUIRE_BROWSER=1 (CI), where that is a failure. Install with scripts/setup-browser.sh.
import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startServer, type RunningServer } from "../lib/server/http.js";
import { projectRoot } from "./helpers/shared.js";
import { echoReply, FakeBackend, waitFor } from "./helpers/fake-backend.js";

const CHROMIUM = process.env.LLAMA2_CHROMIUM ?? "/usr/bin/chromium";
const ARGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
];

type Playwright = typeof import("playwright-core");
let pw: Playwright | undefined;
let pwError = "";
try {
  pw = await import("playwright-core");
} catch (err) {
  pwError = (err as Error).message;
}
const missing = !existsSync(CHROMIUM)
  ? `${CHROMIUM} not found (run scripts/setup-browser.sh as root)`
  : !pw
    ? `playwright-core is not installed (npm install): ${pwError.split("\n")[0]}`
    : undefined;

function describeBrowser(name: string, fn: () => void): void {
  if (!missing) return describe(name, fn);
  if (process.env.LLAMA2_REQUIRE_BROWSER === "1") {
    describe(name, () => it(`requires a browser (${missing})`, () => { throw new Error(`browser required in CI: ${missing}`); }));
    return;
  }
  console.warn(`[skip] ${name}: ${missing}`);
  describe.skip(`${name} [skipped: ${missing}]`, fn);
}

async function launch(userDir: string) {
  return pw!.chromium.launchPersistentContext(userDir, { executablePath: CHROMIUM, headless: true, args: ARGS, viewport: { width: 1100, height: 760 } });
}

describeBrowser("chat page in Chromium", () => {
  let server: RunningServer;
  let backend: FakeBackend;
  let userDir: string;
  let ctx: Awaited<ReturnType<typeof launch>>;
  const pageErrors: string[] = [];

  beforeAll(async () => {
    backend = new FakeBackend({ delayMs: 60, slowDelayMs: 60 });
    server = await startServer({ backend, port: 0 });
    userDir = mkdtempSync(path.join(os.tmpdir(), "llama2-chromium-"));
    ctx = await launch(userDir);
  });
  afterAll(async () => {
    await ctx?.close();
    await server?.shutdown({ graceMs: 100 });
    if (userDir) rmSync(userDir, { recursive: true, force: true });
  });

  it("chats with streaming, stops a slow reply, starts a new chat", async () => {
    const page = ctx.pages()[0] ?? (await ctx.newPage());
    page.on("pageerror", (e) => pageErrors.push(e.message)); // uncaught exceptions in the page script
    await page.goto(server.url);
    await page.waitForFunction(() => document.getElementById("model-name")?.textContent === "fake-7b");
    expect(await page.locator("#model-device").textContent()).toBe("CPU (fake) · f16");

    // 1. A reply streams in: partial text is visible while the reply is still streaming.
    await page.fill("#input", "hello browser world");
    await page.press("#input", "Enter");
    await page.waitForSelector(".msg.assistant.streaming .bubble:not(:empty)");
    const partial = await page.locator(".msg.assistant .bubble").last().textContent();
    expect(await page.locator("#stop").isVisible()).toBe(true);
    await page.waitForSelector(".msg.assistant:not(.streaming)");
    const full = echoReply("hello browser world").join(" ");
    expect(await page.locator(".msg.assistant .bubble").last().textContent()).toBe(full);
    expect(full.startsWith(partial!) && partial!.length < full.length).toBe(true);
    expect(await page.locator(".msg.assistant .meta").last().textContent()).toMatch(/tok\/s · TTFT \d+ ms · \d+ tokens/);
    const first = backend.calls.at(-1)!;
    expect(first.messages).toEqual([{ role: "system", content: "You are a helpful assistant." }, { role: "user", content: "hello browser world" }]);
    expect(first.opts).toMatchObject({ temperature: 0.7, topP: 0.95, maxTokens: 256 });

    // 2. Multi-turn: the history goes with the next question.
    await page.fill("#input", "and again");
    await page.click("#send");
    await page.waitForFunction(() => document.querySelectorAll(".msg.assistant:not(.streaming)").length === 2);
    expect(backend.calls.at(-1)!.messages!.map((m) => m.role)).toEqual(["system", "user", "assistant", "user"]);

    // 3. Stop during a slow stream aborts the request (the backend sees the abort).
    await page.fill("#input", "tell me a slow story");
    await page.press("#input", "Enter");
    await page.waitForSelector(".msg.assistant.streaming .bubble:not(:empty)");
    const slow = backend.calls.at(-1)!;
    await page.click("#stop");
    await page.waitForFunction(() => document.querySelectorAll(".msg.assistant:not(.streaming)").length === 3);
    expect(await page.locator(".msg.assistant .meta").last().textContent()).toContain("stopped");
    await waitFor(() => slow.finished, 3000, "the slow generation to end");
    expect(slow.aborted).toBe(true);
    expect(await page.locator("#send").isVisible()).toBe(true);

    mkdirSync(path.join(projectRoot, "test-artifacts"), { recursive: true });
    await page.screenshot({ path: path.join(projectRoot, "test-artifacts", "chat-page.png"), fullPage: true });

    // 4. New chat clears the conversation and the history sent to the model.
    await page.click("#new-chat");
    expect(await page.locator(".msg").count()).toBe(0);
    expect(await page.locator("#empty").isVisible()).toBe(true);
    await page.fill("#input", "fresh start");
    await page.press("#input", "Enter");
    await page.waitForSelector(".msg.assistant:not(.streaming)");
    expect(backend.calls.at(-1)!.messages!.map((m) => m.role)).toEqual(["system", "user"]);

    // 5. Narrow screen: settings move behind the Settings button.
    await page.setViewportSize({ width: 390, height: 800 });
    expect(await page.locator("#settings").isVisible()).toBe(false);
    await page.click("#toggle-settings");
    await page.waitForFunction(() => document.getElementById("settings")!.classList.contains("open"));
    await page.locator("#system").waitFor({ state: "visible" });
    await page.screenshot({ path: path.join(projectRoot, "test-artifacts", "chat-page-narrow.png") });
    expect(pageErrors).toEqual([]);
  });

  it("a failed or stopped reply takes the user turn back out of the history and returns its text", async () => {
    const slowBackend = new FakeBackend({ delayMs: 20, slowDelayMs: 5000 });
    const s = await startServer({ backend: slowBackend, port: 0 });
    try {
      const page = await ctx.newPage();
      page.on("pageerror", (e) => pageErrors.push(e.message));
      await page.goto(s.url);
      await page.waitForFunction(() => document.getElementById("model-name")?.textContent === "fake-7b");
      const replies = (n: number) => page.waitForFunction((n) => document.querySelectorAll(".msg.assistant:not(.streaming)").length === n, n);

      // 1. A prompt beyond the context: the server refuses it (400); the text goes back to the input.
      const long = Array.from({ length: 600 }, (_, i) => "w" + i).join(" ");
      await page.fill("#input", long);
      await page.press("#input", "Enter");
      await replies(1);
      expect(await page.locator(".msg.assistant .meta").last().textContent()).toMatch(/context/);
      expect(await page.inputValue("#input")).toBe(long);
      expect(slowBackend.calls).toHaveLength(0);

      // 2. Stopped before the first token: nothing came back, so the turn is rolled back too.
      await page.fill("#input", "a slow one");
      await page.press("#input", "Enter");
      await waitFor(() => slowBackend.calls.length === 1, 3000, "the slow request");
      await page.click("#stop");
      await replies(2);
      expect(await page.inputValue("#input")).toBe("a slow one");

      // 3. The next message is sent as the only user turn (user/assistant alternation is kept).
      await page.fill("#input", "hi there");
      await page.press("#input", "Enter");
      await replies(3);
      expect(await page.locator(".msg.assistant .bubble").last().textContent()).toBe(echoReply("hi there").join(" "));
      expect(slowBackend.calls.at(-1)!.messages).toEqual([{ role: "system", content: "You are a helpful assistant." }, { role: "user", content: "hi there" }]);
      await page.close();
    } finally {
      await s.shutdown({ graceMs: 100 });
    }
    expect(pageErrors).toEqual([]);
  });

  it("a conversation that outgrows the context goes on: the oldest exchanges leave it, shown faded", async () => {
    // The fake counts a word as a token and 4 per message: the system prompt is 10 with BOS, each
    // 5-word question 9 and each echo reply 12, so with 16 tokens of reply room a context of 80 holds
    // three exchanges and the fourth question drops the first exchange.
    const small = new FakeBackend({ delayMs: 2, contextLength: 80 });
    const s = await startServer({ backend: small, port: 0 });
    try {
      const page = await ctx.newPage();
      page.on("pageerror", (e) => pageErrors.push(e.message));
      await page.goto(s.url);
      await page.waitForFunction(() => document.getElementById("model-name")?.textContent === "fake-7b");
      await page.fill("#max-tokens", "16");
      await page.locator("#max-tokens").dispatchEvent("change");
      const questions = ["one two three four five", "six seven eight nine ten", "a b c d e", "f g h i j", "k l m n o"];
      for (const [i, q] of questions.entries()) {
        await page.fill("#input", q);
        await page.press("#input", "Enter");
        await page.waitForFunction((n) => document.querySelectorAll(".msg.assistant:not(.streaming)").length === n, i + 1);
        expect(await page.locator(".msg.assistant .bubble").last().textContent()).toBe(echoReply(q).join(" "));
        expect(await page.locator(".msg.error").count()).toBe(0);
      }
      // Every request the backend ran fitted, and the last one carried the system prompt and the newest exchanges.
      for (const c of small.calls) expect(small.chatPromptTokens(c.messages!) + 16).toBeLessThanOrEqual(80);
      const last = small.calls.at(-1)!.messages!;
      expect(last[0]).toEqual({ role: "system", content: "You are a helpful assistant." });
      expect(last.at(-1)).toEqual({ role: "user", content: "k l m n o" });
      const dropped = 2 * questions.length - 1 - (last.length - 1); // history messages the last request left out
      expect(dropped).toBeGreaterThanOrEqual(2);
      expect(await page.locator(".msg.dropped").count()).toBe(dropped);
      expect(await page.locator(".msg").first().getAttribute("class")).toContain("dropped");
      expect(await page.locator(".msg.assistant .meta").last().textContent()).toMatch(/oldest messages left the context/);
      // New chat: nothing is dropped any more.
      await page.click("#new-chat");
      await page.fill("#input", "fresh");
      await page.press("#input", "Enter");
      await page.waitForSelector(".msg.assistant:not(.streaming)");
      expect(small.calls.at(-1)!.messages!.map((m) => m.role)).toEqual(["system", "user"]);
      expect(await page.locator(".msg.dropped").count()).toBe(0);
      await page.close();
    } finally {
      await s.shutdown({ graceMs: 100 });
    }
    expect(pageErrors).toEqual([]);
  });

  it("renders a reply's Markdown as inert DOM: code blocks with a copy button, lists, emphasis, http links only", async () => {
    const reply = [
      "## Steps",
      "Run this:",
      "```js",
      'const a = 1 < 2 && "<b>x</b>";',
      "```",
      "- **bold** item",
      "- *it* and `code` and <img src=x onerror=alert(1)>",
      "  continued",
      "",
      "3. three",
      "4. four",
      "",
      "> quoted",
      "",
      "[site](https://example.com/a) and [bad](javascript:alert(1)) <script>window.pwned = 1</script>",
    ].join("\n");
    const md = new FakeBackend({ delayMs: 3, replyText: reply });
    const s = await startServer({ backend: md, port: 0 });
    try {
      const page = await ctx.newPage();
      page.on("pageerror", (e) => pageErrors.push(e.message));
      await page.goto(s.url);
      await page.waitForFunction(() => document.getElementById("model-name")?.textContent === "fake-7b");
      await page.fill("#input", "show me markdown");
      await page.press("#input", "Enter");
      // Mid-stream (an open fence, half a list) renders without errors too.
      await page.waitForSelector(".msg.assistant.streaming pre.code");
      await page.waitForSelector(".msg.assistant:not(.streaming)");
      const bubble = page.locator(".msg.assistant .bubble").last();
      expect(await bubble.locator("h4").textContent()).toBe("Steps");
      expect(await bubble.locator("pre.code code").textContent()).toBe('const a = 1 < 2 && "<b>x</b>";');
      expect(await bubble.locator("pre.code .code-head span").textContent()).toBe("js");
      expect(await bubble.locator("ul > li").count()).toBe(2);
      expect(await bubble.locator("ul > li strong").textContent()).toBe("bold");
      expect(await bubble.locator("ul > li em").textContent()).toBe("it");
      expect(await bubble.locator("ul > li code").textContent()).toBe("code");
      expect(await bubble.locator("ul > li").nth(1).textContent()).toBe("it and code and <img src=x onerror=alert(1)>continued");
      expect(await bubble.locator("ol").getAttribute("start")).toBe("3");
      expect(await bubble.locator("ol > li").allTextContents()).toEqual(["three", "four"]);
      expect(await bubble.locator("blockquote").textContent()).toBe("quoted");
      // Only the http(s) link is a link; markup in the text stays text.
      expect(await bubble.locator("a").count()).toBe(1);
      expect(await bubble.locator("a").getAttribute("href")).toBe("https://example.com/a");
      expect(await bubble.locator("a").getAttribute("rel")).toContain("noopener");
      expect(await bubble.locator("img, script, b").count()).toBe(0);
      expect(await bubble.textContent()).toContain("[bad](javascript:alert(1)) <script>window.pwned = 1</script>");
      expect(await page.evaluate(() => (window as unknown as { pwned?: number }).pwned)).toBeUndefined();
      // The history keeps the raw Markdown: the next request sends it back as written.
      await page.fill("#input", "thanks");
      await page.press("#input", "Enter");
      await page.waitForFunction(() => document.querySelectorAll(".msg.assistant:not(.streaming)").length === 2);
      expect(md.calls.at(-1)!.messages![2]).toEqual({ role: "assistant", content: reply });
      // The user's own message is plain text, not Markdown.
      await page.fill("#input", "**not bold**");
      await page.press("#input", "Enter");
      await page.waitForFunction(() => document.querySelectorAll(".msg.assistant:not(.streaming)").length === 3);
      expect(await page.locator(".msg.user .bubble").last().textContent()).toBe("**not bold**");
      // The copy button copies the code (the clipboard, or a selection where there is none).
      await page.locator("pre.code .copy").first().click();
      await page.waitForFunction(() => /Copied|Selected/.test(document.querySelector("pre.code .copy")!.textContent!));
      await page.screenshot({ path: path.join(projectRoot, "test-artifacts", "chat-page-markdown.png"), fullPage: true });
      await page.close();
    } finally {
      await s.shutdown({ graceMs: 100 });
    }
    expect(pageErrors).toEqual([]);
  });

  it("asks for the API key when the server needs one and keeps it in localStorage", async () => {
    const keyed = await startServer({ backend, port: 0, apiKey: "browser-key-123" });
    try {
      const page = await ctx.newPage();
      await page.goto(keyed.url);
      await page.waitForFunction(() => document.getElementById("model-name")?.textContent === "API key needed");
      expect(await page.locator("#auth").isVisible()).toBe(true);
      await page.fill("#api-key", "browser-key-123");
      await page.locator("#api-key").dispatchEvent("change");
      await page.waitForFunction(() => document.getElementById("model-name")?.textContent === "fake-7b");
      expect(await page.evaluate(() => localStorage.getItem("llama2.apiKey"))).toBe('"browser-key-123"');
      await page.fill("#input", "with a key");
      await page.press("#input", "Enter");
      await page.waitForSelector(".msg.assistant:not(.streaming)");
      expect(await page.locator(".msg.assistant .bubble").last().textContent()).toBe(echoReply("with a key").join(" "));
      await page.close();
    } finally {
      await keyed.shutdown({ graceMs: 100 });
    }
  });
});
