// Load-time row conversions against their scalar rules (fp16, Q8_0, Q4_1). The host Q8_0 quantizer (native/common/q8.h: int8 weights at load, the CPU's int8 KV cache) rounds with an
// add-and-truncate instead of std::lround so that it vectorizes; test/native/q8-round.cc checks it equals
// lround for every float the quantizer can see and that whole groups quantize to llama.cpp's bytes.
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { expect, it } from "vitest";
import { projectRoot } from "./helpers/shared.js";

// Compiles test/native/NAME.cc with the project sources it tests and returns what it prints.
function runNative(name: string, sources: string[]): string {
  const dir = mkdtempSync(join(tmpdir(), `l2-${name}-`));
  try {
    const exe = join(dir, name);
    execFileSync("g++", ["-O2", "-std=c++17", `-I${projectRoot}`, join(projectRoot, `test/native/${name}.cc`), ...sources.map((f) => join(projectRoot, f)), "-o", exe], { stdio: "pipe" });
    return execFileSync(exe, { encoding: "utf8", timeout: 120_000 }).trim();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

it("q8_round equals std::lround for every |v| <= 128, q8_quantize_group the lround rule, q8_quantize_row (AVX2) the scalar rule", () => {
  expect(runNative("q8-round", ["native/common/q8_row.cc"])).toBe("q8 ok");
}, 180_000);

it("fp16 rows (F16C where the CPU has it) convert every fp16 and fp32 value to the scalar rules' bits", () => {
  expect(runNative("half-row", ["native/common/half_row.cc"])).toMatch(/^half ok/);
}, 180_000);

it("Q4_1 rows (dtype q4, convert --dtype q4_1; AVX2 where the CPU has it) quantize to the scalar rule's bytes, edge cases included", () => {
  expect(runNative("q4-1-row", ["native/model/ggml_blocks.cc"])).toMatch(/^q4_1 ok/);
}, 180_000);
