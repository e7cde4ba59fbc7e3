// The comparison report: measured rows, peer rows, roofline predictions, the SVG chart, and typed
// errors for files that are not bench results. Fixture numbers are invented (labelled in the files).
import { describe, it, expect, beforeAll, afterAll } from "vitest";
import { runCli } from "./helpers/cli.js";
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { compareResults, parseBenchFile, buildRows } from "../lib/bench/compare.js";
import { fromLlamaBench } from "../lib/bench/peers.js";
import { GPUS, findGpu } from "../lib/bench/gpus.js";
import { niceStep, escapeXml } from "../lib/bench/svg-chart.js";
import type { BenchResult } from "../lib/bench/result.js";
import { Llama2Error } from "../lib/errors.js";

const fixture = (name: string) => path.join(import.meta.dirname, "fixtures", "bench", name);
const load = (name: string) => parseBenchFile(readFileSync(fixture(name), "utf8"), name);

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), "llama2-compare-"));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Markdown table rows as arrays of cells, keyed by nothing: tests look them up. */
function table(md: string): string[][] {
  return md
    .split("\n")
    .filter((l) => l.startsWith("| "))
    .map((l) => l.slice(2, -2).split(" | "));
}

describe("compare", () => {
  it("puts a CPU run and a GPU run in one table, with predictions for the GPUs not measured", () => {
    const results = [...load("cpu-example.json"), ...load("gpu-example.json")];
    const { markdown } = compareResults(results);
    const [head, , ...rows] = table(markdown);
    expect(head).toEqual([
      "Kind", "Engine", "Device", "Model", "dtype", "Decode tok/s (batch 1)", "Decode tok/s (batch 8)",
      "Prefill tok/s (128 tokens)", "TTFT ms (128 tokens)", "Prefill tok/s (512 tokens)", "TTFT ms (512 tokens)", "Roofline (batch 1)", "Load s",
    ]);
    const measured = rows.filter((r) => r[0] === "measured");
    expect(measured.map((r) => r[2])).toEqual(["CPU: Example 8-core CPU", "NVIDIA H100 80GB HBM3"]);
    const gpu = measured[1]!;
    expect(gpu.slice(3)).toEqual(["llama2-7b-f16.gguf", "f16", "180", "1300", "—", "—", "10240", "50.0", "84%", "2.50"]);
    // predictions: every datasheet GPU except the measured H100 SXM
    const predicted = rows.filter((r) => r[0] === "**predicted**");
    expect(predicted.map((r) => r[2]!.replace(/ \(.*/, "")).sort()).toEqual(GPUS.filter((g) => g.name !== "H100 SXM").map((g) => g.name).sort());
    // efficiency measured on the H100: 2448 GB/s achieved / 3350 datasheet; 13.6 GB per token
    const eff = 2448 / 3350;
    const a100 = predicted.find((r) => r[2]!.startsWith("A100 80GB SXM"))!;
    expect(a100[5]).toBe(`≈${((2039e9 * eff) / 13.6e9).toFixed(0)}`);
    expect(a100[6]).toBe("—"); // only batch 1 is predicted
    expect(a100[11]).toBe("73% of datasheet (applied)");
    expect(markdown).toMatch(/estimates, not measurements/);
    expect(markdown).toMatch(/Efficiency measured: 2448 GB\/s achieved on NVIDIA H100 80GB HBM3 = 73% of its 3350 GB\/s/);
    expect(markdown).toMatch(/÷ 13\.60 GB per token \(bytes read per decode step in llama2-native's run on NVIDIA H100/);
    expect(markdown).toMatch(/weights \+ one sequence's KV cache at the run's context \(15\.6 GB\)/);
  });

  it("predicts each dtype from the efficiency measured in that dtype", () => {
    const [gpu] = load("gpu-example.json");
    const int8: BenchResult = structuredClone(gpu!);
    int8.model.dtype = "int8";
    int8.model.weightBytes = 7.2e9;
    int8.decode[0]!.bytesPerStep = 7.3e9;
    int8.decode[0]!.achievedGBs = 1675; // 50% of the 3350 GB/s datasheet
    const { rows, notes } = buildRows([gpu!, int8]);
    const a100 = (dtype: string) => rows.find((r) => r.kind === "predicted" && r.dtype === dtype && r.device.startsWith("A100 80GB SXM"))!;
    expect(a100("f16").decode.get(1)).toBeCloseTo((2039e9 * (2448 / 3350)) / 13.6e9, 6);
    expect(a100("int8").decode.get(1)).toBeCloseTo((2039e9 * 0.5) / 7.3e9, 6);
    expect(notes.some((n) => n.startsWith("Predicted int8 rows") && n.includes("1675 GB/s"))).toBe(true);
  });

  it("assumes 0.8 efficiency when no GPU run was measured, and marks models that do not fit", () => {
    const [cpu] = load("cpu-example.json");
    const big: BenchResult = structuredClone(cpu!);
    big.model.path = "/m/llama2-70b-f16.gguf";
    big.model.weightBytes = 138e9;
    big.memory.kvCacheBytes = 1e9;
    big.decode[0]!.bytesPerStep = 139e9;
    const { rows, notes } = buildRows([big]);
    const pred = rows.filter((r) => r.kind === "predicted");
    expect(pred).toHaveLength(GPUS.length);
    const h200 = pred.find((r) => r.device.startsWith("H200"))!;
    expect(h200.decode.get(1)).toBeCloseTo((4800e9 * 0.8) / 139e9, 6);
    for (const r of pred.filter((r) => r !== h200)) {
      expect(r.note).toMatch(/^does not fit \(needs 139\.0 GB, has \d+\.\d GB\)$/);
      expect(r.decode.size).toBe(0);
    }
    expect(notes.join(" ")).toMatch(/0\.8 assumed \(no GPU run of llama2-native was measured\)/);
    const { markdown, svg } = compareResults([big]);
    expect(markdown).toMatch(/\| \*\*predicted\*\* \| llama2-native \(roofline estimate\) \| L4 .* \| does not fit/);
    expect(svg).toMatch(/does not fit/);
  });

  it("renders a self-contained SVG with measured and predicted bars told apart", () => {
    const results = [...load("cpu-example.json"), ...load("gpu-example.json"), ...load("llama-bench-example.json")];
    const { svg } = compareResults(results);
    expect(svg.startsWith("<svg xmlns=\"http://www.w3.org/2000/svg\"")).toBe(true);
    expect(svg.trim().endsWith("</svg>")).toBe(true);
    expect(svg).not.toMatch(/<script|href=|@import|url\((?!#hatch\))/); // nothing external
    const solid = svg.match(/<rect x="[\d.]+" y="[\d.]+" width="[\d.]+" height="16" fill="#2563eb">/g) ?? [];
    const peer = svg.match(/<rect [^>]*height="16" fill="#059669">/g) ?? [];
    const hatched = svg.match(/<rect [^>]*height="16" fill="url\(#hatch\)" [^>]*stroke-dasharray/g) ?? [];
    expect(solid).toHaveLength(2); // our CPU and GPU runs
    expect(peer).toHaveLength(1); // llama.cpp
    expect(hatched).toHaveLength(GPUS.length - 1);
    expect(svg).toMatch(/measured \(llama2-native\)/);
    expect(svg).toMatch(/predicted \(roofline estimate, not measured\)/);
    expect(svg).toMatch(/decode tokens\/s \(batch 1; higher is better\)/);
    // every opened text element is closed
    expect((svg.match(/<text /g) ?? []).length).toBe((svg.match(/<\/text>/g) ?? []).length);
  });

  it("puts llama.cpp and node-llama-cpp runs of the same model file in the same table", () => {
    const results = [...load("gpu-example.json"), ...load("llama-bench-example.json"), ...load("node-llama-cpp-example.json")];
    const rows = table(compareResults(results).markdown).slice(2).filter((r) => r[0] === "measured");
    expect(rows.map((r) => r[1])).toEqual(["llama2-native 0.0.0-example (cuda)", "llama.cpp b1 (0000000) (cuda)", "node-llama-cpp 0.0.0-example (cuda)"]);
    expect(new Set(rows.map((r) => r[3]))).toEqual(new Set(["llama2-7b-f16.gguf"]));
    const lc = rows[1]!;
    expect(lc[5]).toBe("160"); // tg128 median of samples_ts
    expect(lc[7]).toBe("10240"); // pp512
    expect(lc[8]).toBe("—"); // llama-bench reports no TTFT
    const nl = rows[2]!;
    expect([nl[5], nl[7], nl[8]]).toEqual(["150", "9000", "57.0"]);
  });

  it("converts llama-bench tests per model and device", () => {
    const tests = JSON.parse(readFileSync(fixture("llama-bench-example.json"), "utf8"));
    const cpuTests = tests.map((t: any) => ({ ...t, backends: "CPU", gpu_info: "", model_filename: "/m/other.gguf" }));
    const out = fromLlamaBench([...tests, ...cpuTests], "lb.json");
    expect(out).toHaveLength(2);
    expect(out.map((r) => r.engine.backend)).toEqual(["cuda", "cpu"]);
    expect(out[0]!.model.dtype).toBe("f16");
    expect(out[0]!.decode[0]!.tokensPerSecond.median).toBe(160);
    expect(out[0]!.decode[0]!.msPerStep.median).toBeCloseTo(6.25, 9);
    expect(out[1]!.machine.gpu).toBeUndefined();
  });

  it("rejects files that are not bench results with a typed error naming the file", () => {
    const bad: Array<[string, RegExp]> = [
      ["not json", /not JSON/],
      ['{"hello": 1}', /not a bench result: schema is undefined/],
      ["[]", /empty array/],
      ['{"schema": "llama2-native-bench/1", "engine": {"name": "x", "backend": "cuda"}}', /'machine.cpu' is missing/],
      ['[{"model_filename": "m.gguf", "avg_ts": 1}]', /test 0 lacks/],
      ['{"engine": "node-llama-cpp", "model": "m.gguf", "gpu": null, "promptTokens": 0}', /'promptTokens' must be a positive number/],
    ];
    for (const [text, msg] of bad) {
      let err: unknown;
      try {
        parseBenchFile(text, "some/file.json");
      } catch (e) {
        err = e;
      }
      expect(err, text).toBeInstanceOf(Llama2Error);
      expect((err as Llama2Error).code).toBe("ERR_FORMAT_UNSUPPORTED");
      expect((err as Error).message).toMatch(/^some\/file\.json/);
      expect((err as Error).message).toMatch(msg);
    }
  });

  it("knows the datasheet GPUs by their driver names", () => {
    expect(findGpu("NVIDIA H100 80GB HBM3")?.name).toBe("H100 SXM");
    expect(findGpu("NVIDIA H100 PCIe")).toBeUndefined();
    expect(findGpu("NVIDIA H200")?.name).toBe("H200");
    expect(findGpu("NVIDIA A100-SXM4-80GB")?.name).toBe("A100 80GB SXM");
    expect(findGpu("NVIDIA A100-PCIE-40GB")?.name).toBe("A100 40GB PCIe");
    expect(findGpu("NVIDIA A10G")?.name).toBe("A10");
    expect(findGpu("NVIDIA L4")?.name).toBe("L4");
    expect(findGpu("NVIDIA L40S")).toBeUndefined();
    expect(findGpu("NVIDIA GeForce RTX 4090")?.name).toBe("RTX 4090");
    expect(niceStep(180)).toBe(50);
    expect(niceStep(0.9)).toBe(0.2);
    expect(escapeXml(`<a & "b">`)).toBe("&lt;a &amp; &quot;b&quot;&gt;");
  });
});

describe("llama2 compare", () => {
  const run = (args: string[]) => runCli(["compare", ...args]);

  it("writes the markdown and the SVG", async () => {
    const md = path.join(dir, "r.md");
    const svg = path.join(dir, "r.svg");
    const r = await run([fixture("cpu-example.json"), fixture("gpu-example.json"), "--out-md", md, "--out-svg", svg]);
    expect(r.code).toBe(0);
    expect(readFileSync(md, "utf8")).toMatch(/\*\*predicted\*\*/);
    expect(readFileSync(svg, "utf8")).toMatch(/^<svg/);
    const printed = await run([fixture("gpu-example.json")]);
    expect(printed.stdout).toMatch(/^# Llama 2 inference/);
  });

  it("fails with the file's name for missing or foreign files", async () => {
    const foreign = path.join(dir, "package.json");
    writeFileSync(foreign, '{"name": "x"}');
    const a = await run([foreign]);
    expect(a.code).toBe(1);
    expect(a.stderr).toContain(`error [ERR_FORMAT_UNSUPPORTED]: ${foreign}: not a bench result`);
    const b = await run([path.join(dir, "missing.json")]);
    expect(b.code).toBe(1);
    expect(b.stderr).toMatch(/ERR_FILE_NOT_FOUND.*missing\.json/);
    const c = await run([]);
    expect(c.code).toBe(2);
    expect(existsSync(path.join(dir, "r2.md"))).toBe(false);
  });
});
