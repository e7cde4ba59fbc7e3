// Benchmarks a model on every device here with `llama2 bench`, then turns the results into one
// markdown table (and an SVG chart) with `llama2 compare`, which also adds roofline predictions for
// GPUs you did not measure.
//
//   node examples/gpu-compare.mjs [--model PATH] [--devices cuda:0,cuda:1,cpu] [--out-dir DIR]
//                                 [--prompt 128,512] [--gen 128] [--batch 1,4] [--reps 3]
//
// Default devices: each GPU (one `llama2 bench` per GPU, selected with CUDA_VISIBLE_DEVICES), or the
// CPU when there is none (add `cpu` to --devices to bench it next to GPUs: slow for big models).
// Results: DIR/bench-<device>.json, DIR/COMPARE.md (also printed) and DIR/compare.svg.
import { spawnSync } from "node:child_process";
import { mkdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { llama2Cli, parseFlags, resolveModel } from "./_shared.mjs";

const flags = parseFlags({
  model: "",
  devices: "",
  "out-dir": "gpu-compare-results",
  prompt: "128,512",
  gen: 128,
  batch: "1,4",
  reps: 3,
  "skip-cold": true,
  title: "",
});

const cli = llama2Cli();
const model = await resolveModel(flags.model);
const outDir = path.resolve(flags["out-dir"]);
mkdirSync(outDir, { recursive: true });

function llama2(args, env = {}, quiet = false) {
  if (!quiet) console.error(`$ llama2 ${args.join(" ")}`);
  const r = spawnSync(process.execPath, [cli, ...args], { stdio: ["ignore", "pipe", "inherit"], encoding: "utf8", env: { ...process.env, ...env } });
  if (r.status !== 0) {
    console.error(`llama2 ${args[0]} failed (exit ${r.status})`);
    process.exit(1);
  }
  return r.stdout;
}

// What is here, from `llama2 doctor --json` in a child process (querying CUDA in this process would
// keep a context, and its memory, on every GPU while the benches run).
const gpus = JSON.parse(llama2(["doctor", "--json"], {}, true)).gpus;
const devices = flags.devices
  ? flags.devices.split(",").map((d) => d.trim()).filter(Boolean)
  : gpus.length
    ? gpus.map((g) => `cuda:${g.index}`)
    : ["cpu"];
for (const d of devices) {
  const m = /^cuda:(\d+)$/.exec(d);
  if (d !== "cpu" && !(m && gpus.some((g) => g.index === Number(m[1])))) {
    console.error(`unknown device '${d}': this machine has ${["cpu", ...gpus.map((g) => `cuda:${g.index} (${g.name})`)].join(", ")}`);
    process.exit(2);
  }
}

const files = [];
for (const d of devices) {
  const file = path.join(outDir, `bench-${d.replace(":", "")}.json`);
  const args = [
    "bench", "--model", model,
    "--device", d === "cpu" ? "cpu" : "cuda",
    "--prompt", flags.prompt, "--gen", String(flags.gen), "--batch", flags.batch,
    "--decode-prompt", flags.prompt.split(",")[0],
    "--reps", String(flags.reps),
    "--out", file,
  ];
  if (flags["skip-cold"]) args.push("--skip-cold"); // a cold load drops the page cache: slow for big models
  // `llama2 bench` uses the first visible GPU: show it only the one being measured. Indices are of the GPUs
  // visible to us, so an existing CUDA_VISIBLE_DEVICES list maps them to its own entries.
  const visible = process.env.CUDA_VISIBLE_DEVICES?.split(",").map((v) => v.trim()).filter(Boolean);
  const index = d.split(":")[1];
  const env = d === "cpu" ? {} : { CUDA_VISIBLE_DEVICES: visible?.[Number(index)] ?? index };
  console.error(llama2(args, env).trim());
  files.push(file);
}

const mdFile = path.join(outDir, "COMPARE.md");
const compareArgs = ["compare", ...files, "--out-md", mdFile, "--out-svg", path.join(outDir, "compare.svg")];
if (flags.title) compareArgs.push("--title", flags.title);
llama2(compareArgs);
process.stdout.write(readFileSync(mdFile, "utf8"));
console.error(`wrote ${path.relative(process.cwd(), mdFile) || mdFile} and compare.svg`);
