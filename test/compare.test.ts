// The comparison report: measured rows, peer rows, roofline predictions, the SVG chart, and typed
// errors for files that are not bench results. Fixture numbers are invented (labelled in the files).
import { describe, it, expect, beforeAll, afterAll } from "vitest";
import { runCli } from "./helpers/cli.js";
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync, existsSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { compareResults, parseBenchFile, buildRows } from "../lib/bench/compare.js";
import { fromLlamaBench } from "../lib/bench/peers.js";
import { GPUS, findGpu } from "../lib/bench/gpus.js";
import { niceStep, escapeXml, wrapText } from "../lib/bench/svg-chart.js";
import type { BenchResult } from "../lib/bench/result.js";
import { Llama2Error } from "../lib/errors.js";

const fixture = (name: string) => path.join(import.meta.dirname, "fixtures", "bench", name);
const load = (name: string) => parseBenchFile(readFileSync(fixture(name), "utf8"), name);

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), "llama2-compare-"));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** The GPU fixture as JSON text after `edit`: hand-edited result files. */
function edited(edit: (r: any) => void): string {
  const r = JSON.parse(readFileSync(fixture("gpu-example.json"), "utf8"));
  edit(r);
  return JSON.stringify(r);
}

/** The CPU fixture as a BenchResult of another model, dtype and bytes per token. */
function cpuRun(file: string, dtype: string, bytesPerStep: number): BenchResult {
  const r: BenchResult = structuredClone(load("cpu-example.json")[0]!);
  r.model.path = `/m/${file}`;
  r.model.dtype = dtype;
  r.model.weightBytes = bytesPerStep;
  r.decode[0]!.bytesPerStep = bytesPerStep;
  return r;
}

/** A minimal well-formedness check: tags nest and close, attributes are quoted. */
function wellFormed(xml: string): boolean {
  const stack: string[] = [];
  for (const m of xml.matchAll(/<(\/?)([A-Za-z][\w:-]*)((?:\s+[\w:-]+="[^"<]*")*)\s*(\/?)>|<|>/g)) {
    if (m[0] === "<" || m[0] === ">") return false; // a bare < or > outside a tag
    if (m[4]) continue;
    if (!m[1]) stack.push(m[2]!);
    else if (stack.pop() !== m[2]) return false;
  }
  return stack.length === 0;
}

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

  it("labels an A/B run with the engine switches it recorded", () => {
    const base = load("gpu-example.json")[0]!;
    const ab: BenchResult = structuredClone(base);
    ab.engine.switches = { LLAMA2_GEMM_WGMMA_MIN_M: "33" };
    const rows = table(compareResults([base, ab]).markdown).slice(2).filter((r) => r[0] === "measured");
    expect(rows.map((r) => r[1])).toEqual(["llama2-native 0.0.0-example (cuda)", "llama2-native 0.0.0-example (cuda) [LLAMA2_GEMM_WGMMA_MIN_M=33]"]);
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
      ['{"schema": "llama2-native-bench/1", "engine": {"name": "x", "version": "1", "backend": "cuda"}}', /'machine.cpu' is missing/],
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

describe("compare: hand-edited files, GPU names, prediction limits, chart and markdown layout", () => {
  it("rejects hand-edited results with ERR_FORMAT_UNSUPPORTED naming the file and the field", () => {
    const cases: Array<[string, (r: any) => void]> = [
      ["model.config", (r) => delete r.model.config],
      ["model.config", (r) => (r.model.config = "dim=4096")],
      ["machine.gpu.name", (r) => (r.machine.gpu = {})],
      ["machine.gpu.name", (r) => (r.machine.gpu.name = 123)],
      ["engine.version", (r) => (r.engine.version = null)],
      ["model.weightBytes", (r) => delete r.model.weightBytes],
      ["decode[0].tokensPerSecond", (r) => (r.decode[0].tokensPerSecond = null)],
      ["decode[1].tokensPerSecond", (r) => (r.decode[1].tokensPerSecond.median = null)],
      ["decode[0].tokensPerSecond", (r) => (r.decode[0].tokensPerSecond.median = -5)],
      ["decode[0].bytesPerStep", (r) => (r.decode[0].bytesPerStep = -1)],
      ["prefill[0].ttftMs", (r) => (r.prefill[0].ttftMs.median = "50")],
      ["load.warmMs", (r) => (r.load.warmMs = null)],
    ];
    for (const [field, edit] of cases) {
      let err: unknown;
      try {
        compareResults(parseBenchFile(edited(edit), "edited.json"));
      } catch (e) {
        err = e;
      }
      expect(err, field).toBeInstanceOf(Llama2Error);
      expect((err as Llama2Error).code, field).toBe("ERR_FORMAT_UNSUPPORTED");
      expect((err as Error).message).toBe(`edited.json: invalid bench result: '${field}' is missing or malformed`);
    }
    // a CPU run has no GPU: absent or null are both fine
    expect(() => parseBenchFile(edited((r) => (r.machine.gpu = null)), "cpu.json")).not.toThrow();
  });

  it("tells the A100 80GB PCIe from the 40GB one, and GH200 from H200", () => {
    expect(findGpu("NVIDIA A100 80GB PCIe")?.name).toBe("A100 80GB PCIe");
    expect(findGpu("NVIDIA A100 80GB PCIe")?.bandwidthGBs).toBe(1935);
    expect(findGpu("NVIDIA A100-PCIE-40GB")?.name).toBe("A100 40GB PCIe");
    expect(findGpu("NVIDIA A100-SXM4-80GB")?.name).toBe("A100 80GB SXM");
    expect(findGpu("NVIDIA GH200 480GB")).toBeUndefined();
    expect(findGpu("NVIDIA H200 NVL")?.name).toBe("H200");
    expect(findGpu("NVIDIA H100 80GB HBM3")?.name).toBe("H100 SXM");
    // every entry is found by its own name: no earlier, broader pattern shadows it
    for (const g of GPUS) expect(findGpu(`NVIDIA ${g.name}`)?.name, g.name).toBe(g.name);
  });

  it("does not apply an efficiency above 100% of the datasheet, and says the entry or the run looks wrong", () => {
    // 2448 GB/s achieved is 127% of the A100 80GB PCIe's 1935 GB/s: impossible, so the run is not used
    const [run] = parseBenchFile(edited((r) => (r.machine.gpu.name = "NVIDIA A100 80GB PCIe")), "a100.json");
    const { rows, notes } = buildRows([run!]);
    const pred = rows.filter((r) => r.kind === "predicted");
    expect(pred.map((r) => r.device)).not.toContainEqual(expect.stringMatching(/^A100 80GB PCIe/)); // measured
    expect(pred.map((r) => r.device)).toContainEqual(expect.stringMatching(/^A100 40GB PCIe/));
    for (const r of pred) expect(r.roofline).toBe(0.8);
    const h200 = pred.find((r) => r.device.startsWith("H200"))!;
    expect(h200.decode.get(1)).toBeCloseTo((4800e9 * 0.8) / 13.6e9, 6);
    expect(notes[0]).toMatch(/0\.8 assumed \(no measured GPU run of llama2-native was usable\)/);
    expect(notes[0]).toMatch(/above 100% \(the GPU entry or the measurement looks wrong\): 2448 GB\/s achieved on NVIDIA A100 80GB PCIe = 127% of its 1935 GB\/s/);
  });

  it("predicts only f16 and int8, only for models reading at least 0.1 GB per token, and prints small sizes in MB", () => {
    const runs = [
      cpuRun("m-bf16.gguf", "bf16", 13.6e9),
      cpuRun("m-f32.bin", "f32", 27e9),
      cpuRun("tiny.gguf", "f16", 39.2e6),
      cpuRun("small.gguf", "int8", 0.5e9),
    ];
    const { rows, notes } = buildRows(runs);
    const predictedModels = new Set(rows.filter((r) => r.kind === "predicted").map((r) => r.model));
    expect(predictedModels).toEqual(new Set(["small.gguf"]));
    expect(notes).toContain("No GPU predictions for m-bf16.gguf in bf16: the CUDA backend runs only f16 and int8 fast (f32 is its reference path, bf16 is CPU-only).");
    expect(notes.find((n) => n.includes("m-f32.bin"))).toMatch(/^No GPU predictions for m-f32\.bin in f32/);
    expect(notes.find((n) => n.includes("tiny.gguf"))).toMatch(/^No GPU predictions for tiny\.gguf in f16: a decode step reads only 39\.2 MB, so kernel launches/);
    const small = notes.find((n) => n.startsWith("Predicted int8 rows for small.gguf"))!;
    expect(small).toMatch(/÷ 500\.00 MB per token/);
    expect(small).toMatch(/at the run's context \(\d+\.\d MB\)/);
    expect(compareResults(runs).markdown).not.toMatch(/ 0\.0+ GB/);
  });

  it("keeps the chart's title inside the chart: a short title, the models in a wrapped subtitle", () => {
    const runs = Array.from({ length: 8 }, (_, i) => cpuRun(`a-rather-long-model-file-name-${i}.gguf`, "int8", 7e9));
    const { svg } = compareResults(runs);
    expect(wellFormed(svg)).toBe(true);
    const width = Number(/<svg [^>]*width="([\d.]+)"/.exec(svg)![1]);
    const centred = [...svg.matchAll(/<text x="([\d.]+)" y="([\d.]+)" text-anchor="middle"( font-size="15")?[^>]*>([^<]*)<\/text>/g)];
    const [title, ...rest] = centred;
    expect(title![4]).toBe("Decode speed at batch 1");
    for (const m of centred) {
      const half = (m[4]!.length * (m[3] ? 9 : 6.6)) / 2;
      expect(Number(m[1]) - half, m[4]).toBeGreaterThanOrEqual(0);
      expect(Number(m[1]) + half, m[4]).toBeLessThanOrEqual(width);
    }
    // the subtitle lines (above the plot) name every model once
    const subtitle = rest.filter((m) => Number(m[2]) < 100).map((m) => m[4]).join(" ");
    for (const r of runs) expect(subtitle).toContain(`${r.model.path.slice(3)} (int8)`);
    // the plot starts below the header
    const gridTop = Number(/<line x1="[\d.]+" y1="([\d.]+)" [^>]*stroke="#e5e7eb"/.exec(svg)![1]);
    expect(gridTop).toBeGreaterThan(Math.max(...rest.filter((m) => Number(m[2]) < 100).map((m) => Number(m[2]))));
    expect(wrapText("ab cd ef", 5)).toEqual(["ab cd", "ef"]);
    expect(wrapText("abcdefgh", 3)).toEqual(["abc", "def", "gh"]);
  });

  it("keeps a model name with a newline or a | on its table row", () => {
    const [run] = parseBenchFile(edited((r) => (r.model.path = "/m/weird|na\r\nme.gguf")), "weird.json");
    const { markdown } = compareResults([run!]);
    const lines = markdown.split("\n");
    const tableLines = lines.filter((l) => l.startsWith("|"));
    const columns = (l: string) => l.split(/(?<!\\)\|/).length;
    expect(new Set(tableLines.map(columns)).size).toBe(1);
    expect(lines.filter((l) => l.includes("me.gguf")).every((l) => l.startsWith("|") || !l.startsWith("me.gguf"))).toBe(true);
    expect(tableLines.filter((l) => l.includes(" weird\\|na me.gguf ")).length).toBe(tableLines.length - 2);
    expect(markdown).not.toMatch(/\r/);
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

  it("runs `npm run bench:compare` over the committed bench/results/*.json, skipping `llama2 micro` results with a note", async () => {
    const script = JSON.parse(readFileSync(path.join(import.meta.dirname, "..", "package.json"), "utf8")).scripts["bench:compare"] as string;
    expect(script).toMatch(/compare bench\/results\/\*\.json /);
    const results = path.join(import.meta.dirname, "..", "bench", "results");
    const files = readdirSync(results).filter((f) => f.endsWith(".json") && !f.startsWith(".")).sort().map((f) => path.join(results, f));
    const micro = files.filter((f) => JSON.parse(readFileSync(f, "utf8")).schema === "llama2-native-micro/1");
    expect(micro.length).toBeGreaterThan(0); // the case this test is about
    const md = path.join(dir, "committed.md");
    const svg = path.join(dir, "committed.svg");
    const r = await run([...files, "--out-md", md, "--out-svg", svg]);
    expect(r.stderr).not.toMatch(/error/);
    expect(r.code).toBe(0);
    const notes = r.stderr.split("\n").filter((l) => l.startsWith("[compare]"));
    expect(notes).toEqual(micro.map((f) => `[compare] ${f}: skipped, a \`llama2 micro\` result (schema "llama2-native-micro/1"), not a bench result`));
    expect(r.stderr).toContain(`compared ${files.length - micro.length} runs from ${files.length - micro.length} files`);
    const text = readFileSync(md, "utf8");
    expect(text).toMatch(/\| measured \| llama2-native [^|]+ \(cuda\) \| NVIDIA H200 \|/);
    expect(text).toMatch(/\| \*\*predicted\*\* \|/);
    // item 6 on the real files: no roofline for the tiny demo / stories260K runs, no "0.00 GB"
    const predicted = table(text).filter((c) => c[0] === "**predicted**");
    expect(predicted.filter((c) => /demo|stories260K/.test(c[3]!))).toEqual([]);
    expect(text).not.toMatch(/ 0\.0+ GB/);
    expect(wellFormed(readFileSync(svg, "utf8"))).toBe(true);
  });

  it("fails when every file given was skipped, and parseBenchFile alone still rejects a micro result", async () => {
    const micro = path.join(dir, "micro.json");
    writeFileSync(micro, JSON.stringify({ schema: "llama2-native-micro/1", tasks: [] }));
    const r = await run([micro]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`[compare] ${micro}: skipped, a \`llama2 micro\` result`);
    expect(r.stderr).toContain(`error [ERR_FORMAT_UNSUPPORTED]: ${micro}: no bench result to compare (1 file(s) skipped)`);
    expect(() => parseBenchFile(readFileSync(micro, "utf8"), "micro.json")).toThrow(/micro\.json: not a bench result: schema is "llama2-native-micro\/1"/);
  });

  it("fails with a typed error, not ERR_INTERNAL, on a hand-edited file", async () => {
    const f = path.join(dir, "noconfig.json");
    writeFileSync(f, edited((r) => delete r.model.config));
    const r = await run([f]);
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(`error [ERR_FORMAT_UNSUPPORTED]: ${f}: invalid bench result: 'model.config' is missing or malformed\n`);
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
