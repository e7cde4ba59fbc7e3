// The device-side scripts that do not need a GPU to run: here on the CPU with the demo model, so that a
// lease does not spend device minutes finding a broken script.
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, statSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { ensureDemoModel } from "../lib/synth/demo.js";
import { ensureDist } from "./helpers/dist.js";
import { projectRoot } from "./helpers/shared.js";

describe("scripts/gpu on the CPU", () => {
  let demo: string;
  beforeAll(async () => {
    ensureDist();
    demo = await ensureDemoModel({ dir: path.join(os.tmpdir(), "llama2-native-test-home", "models") });
  }, 120_000);

  it("constrained-bench.mjs times every mode and writes its JSON", () => {
    const out = path.join(mkdtempSync(path.join(os.tmpdir(), "llama2-cbench-")), "c.json");
    const r = spawnSync(process.execPath, ["scripts/gpu/constrained-bench.mjs", "--model", demo, "--device", "cpu", "--tokens", "16", "--reps", "1", "--out", out], {
      cwd: projectRoot,
      encoding: "utf8",
      timeout: 120_000,
    });
    expect(r.status, r.stderr).toBe(0);
    const j = JSON.parse(readFileSync(out, "utf8"));
    expect(j.rows.map((x: { mode: string }) => x.mode)).toEqual([
      "free greedy", "free topK 0", "json_schema greedy", "json_schema topK 0", "gbnf json greedy", "gbnf json topK 0", "logprobs 5",
      "lookup 4 greedy", "lookup 8 greedy",
    ]);
    for (const row of j.rows) {
      expect(row.tokens, row.mode).toEqual([16]); // the grammar and the schema keep every run going
      expect(row.msPerToken, row.mode).toBeGreaterThan(0);
    }
    expect(r.stdout).toMatch(/gbnf json topK 0 +\d+\.\d+ ms\/token/);
    for (const row of j.rows.filter((x: { mode: string }) => x.mode.startsWith("lookup"))) expect(row.draftsAccepted).toHaveLength(1);
  }, 150_000);

  it("step-cost.mjs times a step of each token count and writes its JSON; bad arguments exit 2", () => {
    const out = path.join(mkdtempSync(path.join(os.tmpdir(), "llama2-stepcost-")), "s.json");
    const run = (extra: string[]) =>
      spawnSync(process.execPath, ["scripts/gpu/step-cost.mjs", "--model", demo, "--device", "cpu", "--context", "32", "--reps", "2", ...extra], {
        cwd: projectRoot,
        encoding: "utf8",
        timeout: 120_000,
      });
    const r = run(["--tokens", "1,2,5", "--out", out]);
    expect(r.status, r.stderr).toBe(0);
    const j = JSON.parse(readFileSync(out, "utf8"));
    expect(j.rows.map((x: { tokens: number }) => x.tokens)).toEqual([1, 2, 5]);
    for (const row of j.rows) expect(row.ms).toBeGreaterThan(0);
    expect(j.rows[0].vsOne).toBe(1);
    expect(r.stdout).toMatch(/T= +5: \d+\.\d+ ms/);
    expect(run(["--tokens", "0,2"]).status).toBe(2);
  }, 150_000);
});

describe("scripts/gpu/blocks.mjs on the CPU", () => {
  it("writes a Q4_K_M-like model and its exact fp32 twin, loads it on the device and the CPU, and compares their logits with the exact ones", () => {
    const out = path.join(mkdtempSync(path.join(os.tmpdir(), "llama2-blocks-")), "b.json");
    const run = (args: string[]) => spawnSync(process.execPath, ["scripts/gpu/blocks.mjs", "--device", "cpu", ...args], { cwd: projectRoot, encoding: "utf8", timeout: 120_000 });
    const r = run(["--layers", "1", "--dim", "512", "--ffn", "1536", "--heads", "8", "--out", out]);
    expect(r.status, r.stderr).toBe(0);
    const j = JSON.parse(readFileSync(out, "utf8"));
    expect(j).toMatchObject({ layers: 1, dim: 512, dtype: "q4+int8" });
    // The "device" is the CPU here: both are its load (Q4_K as Q4_1 blocks, Q6_K as int8), off the exact values
    // by the int8 requantization and the fp16 group scales.
    expect(j.relErr).toBe(j.cpuRelErr);
    expect(j.relErr).toBeGreaterThan(0);
    expect(j.relErr).toBeLessThan(2e-2);
    expect(j.loadMs).toBeGreaterThan(0);
    expect(r.stdout).toMatch(/against the exact values: cpu \d\.\d\de-\d+ \(bound 2e-2\)/);
    expect(run(["--layers", "1", "--dim", "500"]).status).toBe(2);
    // --keep leaves the quantized file (and --no-check loads nothing): what the lease's bench step runs on.
    const kept = path.join(path.dirname(out), "k.gguf");
    const k = run(["--layers", "1", "--dim", "512", "--ffn", "1536", "--heads", "8", "--keep", kept, "--no-check"]);
    expect(k.status, k.stderr).toBe(0);
    expect(statSync(kept).size).toBeGreaterThan(1_000_000);
    expect(k.stdout).not.toMatch(/relErr/);
  }, 150_000);
});

describe("scripts/gpu/lease.sh", () => {
  const src = readFileSync(path.join(projectRoot, "scripts/gpu/lease.sh"), "utf8");
  it("parses, and its header lists exactly the steps it implements", () => {
    expect(spawnSync("bash", ["-n", path.join(projectRoot, "scripts/gpu/lease.sh")]).status).toBe(0);
    const implemented = [...src.matchAll(/^if step ([a-z0-9-]+) \d+; then/gm)].map((m) => m[1]!);
    // The step list: the header lines from "#   info doctor" to the first line that is not a comment.
    const lines = src.split("\n");
    const first = lines.findIndex((l) => l.startsWith("#   info doctor"));
    const last = lines.findIndex((l, i) => i > first && !l.startsWith("#"));
    const header = lines
      .slice(first, last)
      .join(" ")
      .replace(/#|\([^)]*\)|A\/B by env switch:/g, " ")
      .split(/[\s|]+/)
      .filter((w) => w !== "");
    expect(implemented.length).toBeGreaterThan(20);
    expect(new Set(implemented).size).toBe(implemented.length);
    expect(implemented.filter((s) => !header.includes(s))).toEqual([]);
    expect(header.filter((s) => !implemented.includes(s))).toEqual([]);
  });
});
