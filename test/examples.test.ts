// Runs every example in examples/ the way a user does (`node examples/<name>.mjs`, importing the
// built package "llama2-native" from dist/) on the demo model, on the CPU, with few tokens.
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { llamaVocabulary } from "../lib/tokenizer/llama-vocab.js";
import { writeCodeLlamaLikeModel } from "./helpers/code-llama.js";
import { projectRoot } from "./helpers/shared.js";

const examplesDir = path.join(projectRoot, "examples");
const built = existsSync(path.join(projectRoot, "dist", "index.js"));
const tmp = mkdtempSync(path.join(os.tmpdir(), "llama2-examples-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function start(name: string, args: string[], input?: string): { child: ChildProcess; done: Promise<Run> } {
  const env = { ...process.env };
  // The examples load the addon as a user's program does; under scripts/sanitizer-test.sh they keep its
  // sanitized build (LLAMA2_SANITIZER) so that the native code they run is checked too.
  if (!process.env.LLAMA2_SANITIZER) delete env.LLAMA2_ADDON;
  const child = spawn(process.execPath, [path.join(examplesDir, name), ...args], { cwd: tmp, env, stdio: ["pipe", "pipe", "pipe"] });
  let stdout = "";
  let stderr = "";
  child.stdout!.on("data", (d: Buffer) => (stdout += d.toString()));
  child.stderr!.on("data", (d: Buffer) => (stderr += d.toString()));
  child.stdin!.end(input ?? "");
  const done = new Promise<Run>((resolve) => child.on("close", (code) => resolve({ code, stdout, stderr })));
  return { child, done };
}

async function run(name: string, args: string[], input?: string): Promise<Run> {
  const r = await start(name, args, input).done;
  if (r.code !== 0) console.error(`${name} exited ${r.code}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`);
  return r;
}

if (!built) console.warn("[skip] examples: dist/ is not built (npm run build:ts); the examples import the built package");

describe.skipIf(!built)(`examples/ on the demo model (CPU)${built ? "" : " [skipped: dist/ not built]"}`, () => {
  const tested = new Set<string>();
  const example = (name: string, fn: () => Promise<void>, timeout = 90_000) => {
    tested.add(name);
    it(name, fn, timeout);
  };

  example("minimal-completion.mjs", async () => {
    const r = await run("minimal-completion.mjs", ["--device", "cpu", "--max-tokens", "6", "--prompt", "The capital of France"]);
    expect(r.code).toBe(0);
    expect(r.stdout.startsWith("The capital of France")).toBe(true);
    expect(r.stdout.length).toBeGreaterThan("The capital of France".length);
    expect(r.stderr).toMatch(/\[CPU .*\] [1-6] tokens \((length|stop|stopSequence)\)/);
  });

  example("streaming-chat-cli.mjs", async () => {
    const r = await run("streaming-chat-cli.mjs", ["--device", "cpu", "--max-tokens", "5", "--seed", "3"], "Hello!\n\nTell me more.\n/reset\nAgain\n/exit\nnot read\n");
    expect(r.code).toBe(0);
    expect(r.stdout.match(/^you> /gm)?.length).toBe(3);
    expect(r.stdout.match(/^assistant> /gm)?.length).toBe(3);
    expect(r.stdout).not.toContain("not read");
    const turns = [...r.stderr.matchAll(/prompt (\d+) tokens of which (\d+) were cached/g)].map((m) => [Number(m[1]), Number(m[2])]);
    expect(turns).toHaveLength(3);
    expect(turns[0]![1]).toBe(0);
    expect(turns[1]![1]).toBeGreaterThanOrEqual(turns[0]![0]); // the session kept the first turn's cache
    // After /reset the conversation is gone; only the system-prompt prefix may come from the prefix cache.
    expect(turns[2]![1]).toBeLessThan(turns[2]![0]);
    expect(turns[2]![1]).toBeLessThan(turns[1]![1]);
    expect(r.stderr).toContain("[conversation reset]");
  });

  example("express-route.mjs", async () => {
    const { child, done } = start("express-route.mjs", ["--device", "cpu", "--port", "0", "--max-tokens", "6"]);
    let url = "";
    await new Promise<void>((resolve, reject) => {
      let seen = "";
      const timer = setTimeout(() => reject(new Error(`no 'listening on' line: ${seen}`)), 60_000);
      child.stdout!.on("data", (d: Buffer) => {
        seen += d.toString();
        const m = /listening on (http:\/\/\S+)/.exec(seen);
        if (m) {
          url = m[1]!;
          clearTimeout(timer);
          resolve();
        }
      });
      child.on("exit", () => reject(new Error(`exited early: ${seen}`)));
    });
    try {
      const body = JSON.stringify({ messages: [{ role: "user", content: "Hi" }], max_tokens: 4 });
      const plain = await fetch(`${url}/chat`, { method: "POST", body });
      expect(plain.status).toBe(200);
      const json = (await plain.json()) as { reply: string; usage: { completion_tokens: number }; finish_reason: string };
      expect(typeof json.reply).toBe("string");
      expect(json.usage.completion_tokens).toBeGreaterThan(0);
      expect(json.usage.completion_tokens).toBeLessThanOrEqual(4);

      const sse = await fetch(`${url}/chat`, { method: "POST", body, headers: { accept: "text/event-stream" } });
      expect(sse.headers.get("content-type")).toBe("text/event-stream");
      const events = (await sse.text()).split("\n\n").filter(Boolean);
      expect(events.at(-1)).toMatch(/^event: done\ndata: \{"finish_reason":/);
      expect(events.length).toBeGreaterThan(1);

      // Two at once share the one model (the engine batches them).
      const both = await Promise.all([1, 2].map(() => fetch(`${url}/chat`, { method: "POST", body }).then((r) => r.status)));
      expect(both).toEqual([200, 200]);

      expect((await fetch(`${url}/chat`, { method: "POST", body: "{not json" })).status).toBe(400);
      expect((await fetch(`${url}/chat`, { method: "POST", body: JSON.stringify({ messages: [{ role: "robot", content: "x" }] }) })).status).toBe(400);
      expect((await fetch(`${url}/chat`, { method: "POST", body: JSON.stringify({ messages: [{ role: "user", content: "x".repeat(70_000) }] }) })).status).toBe(413);
      expect((await fetch(`${url}/nope`)).status).toBe(404);
      const health = (await (await fetch(`${url}/health`)).json()) as { device: string };
      expect(health.device).toMatch(/^CPU/);
    } finally {
      child.kill("SIGTERM");
    }
    const r = await done;
    expect(r.code).toBe(0); // SIGTERM: closes the server and disposes the model, then exits
  });

  example("code-infill.mjs", async () => {
    // The demo model has no infilling pieces: a clear refusal. A model with Code Llama's layout fills the gap.
    const demo = await run("code-infill.mjs", ["--device", "cpu"]);
    expect(demo.code).toBe(1);
    expect(demo.stderr).toMatch(/not trained for infilling.*codellama-7b/);
    const model = await writeCodeLlamaLikeModel(tmp, llamaVocabulary());
    const file = path.join(tmp, "gap.py");
    writeFileSync(file, "def add(a, b):\n    <FILL_ME>\n\nprint(add(1, 2))\n");
    const r = await run("code-infill.mjs", ["--device", "cpu", "--model", model, "--file", file, "--max-tokens", "5"]);
    expect(r.code).toBe(0);
    expect(r.stdout.startsWith("def add(a, b):\n    ")).toBe(true);
    expect(r.stdout.endsWith("\n\nprint(add(1, 2))\n")).toBe(true);
    expect(r.stderr).toMatch(/\[CPU .*\] [0-5] tokens in the middle \((length|stop)\)/);
    writeFileSync(file, "no marker");
    expect((await run("code-infill.mjs", ["--device", "cpu", "--model", model, "--file", file])).code).toBe(2);
  });

  example("gpu-compare.mjs", async () => {
    const out = path.join(tmp, "compare");
    const r = await run("gpu-compare.mjs", ["--devices", "cpu", "--out-dir", out, "--prompt", "16", "--gen", "8", "--batch", "1,2", "--reps", "1"]);
    expect(r.code).toBe(0);
    expect(r.stderr).toContain("$ llama2 bench");
    expect(r.stderr).toContain("$ llama2 compare");
    const md = readFileSync(path.join(out, "COMPARE.md"), "utf8");
    expect(md).toMatch(/^\| measured \| llama2-native .*\(cpu\) \|/m);
    expect(r.stdout).toBe(md);
    expect(existsSync(path.join(out, "bench-cpu.json"))).toBe(true);
    expect(readFileSync(path.join(out, "compare.svg"), "utf8")).toMatch(/^<svg/);
  });

  it("every example has a test", () => {
    const all = readdirSync(examplesDir).filter((f) => f.endsWith(".mjs") && !f.startsWith("_"));
    expect(all.sort()).toEqual([...tested].sort());
  });
});
