// `llama2 compare`: a markdown table and an SVG chart from bench result files (ours, llama-bench
// JSON, node-llama-cpp timings), with roofline predictions for GPUs not measured.
import { readFile, writeFile } from "node:fs/promises";
import type { Command } from "../command.js";
import { InvalidArgumentError, Llama2Error } from "../../errors.js";
import { compareResults, parseBenchFile } from "../../bench/compare.js";

const command: Command = {
  name: "compare",
  summary: "compare bench results (and llama.cpp / node-llama-cpp runs) in a table and a chart",
  usage: "Usage: llama2 compare FILE... [--out-md FILE] [--out-svg FILE]\n\nFILE: `llama2 bench --out` results, `llama-bench -o json` output, or node-llama-cpp timings (bench/peers/README.md).",
  flags: {
    "out-md": { type: "string", description: "write the markdown table here (default: stdout)" },
    "out-svg": { type: "string", description: "write the SVG chart here" },
    title: { type: "string", description: "report title" },
    efficiency: { type: "number", description: "bandwidth efficiency assumed for predictions when no GPU run was measured", default: 0.8 },
  },
  async run(flags, files, io) {
    if (files.length === 0) throw new InvalidArgumentError("FILE", "give at least one bench result file");
    const eff = flags.efficiency as number;
    if (!(eff > 0 && eff <= 1)) throw new InvalidArgumentError("--efficiency", `must be in (0, 1], got ${eff}`);
    const results = [];
    let skipped = 0;
    // bench/results/ also holds `llama2 micro` results, and the documented command globs it whole
    const onSkip = (why: string) => {
      skipped++;
      io.stderr.write(`[compare] ${why}\n`);
    };
    for (const f of files) {
      let text: string;
      try {
        text = await readFile(f, "utf8");
      } catch (err) {
        throw new Llama2Error("ERR_FILE_NOT_FOUND", `${f}: ${(err as Error).message}`, { cause: err });
      }
      results.push(...parseBenchFile(text, f, onSkip));
    }
    if (results.length === 0) throw new Llama2Error("ERR_FORMAT_UNSUPPORTED", `${files.join(", ")}: no bench result to compare (${skipped} file(s) skipped)`);
    const { markdown, svg } = compareResults(results, { title: flags.title as string | undefined, defaultEfficiency: eff });
    if (typeof flags.outMd === "string") await save(flags.outMd, markdown, "--out-md");
    else io.stdout.write(markdown);
    if (typeof flags.outSvg === "string") await save(flags.outSvg, svg, "--out-svg");
    if (flags.outMd || flags.outSvg) io.stderr.write(`compared ${results.length} runs from ${files.length - skipped} files\n`);
    return 0;
  },
};

async function save(file: string, text: string, flag: string): Promise<void> {
  try {
    await writeFile(file, text);
  } catch (err) {
    throw new InvalidArgumentError(flag, `cannot write ${file}: ${(err as Error).message}`);
  }
}

export default command;
