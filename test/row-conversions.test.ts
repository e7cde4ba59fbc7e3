// Load-time row conversions against their scalar rules. The host Q8_0 quantizer (native/common/q8.h: int8 weights at load, the CPU's int8 KV cache) rounds with an
// add-and-truncate instead of std::lround so that it vectorizes; test/native/q8-round.cc checks it equals
// lround for every float the quantizer can see and that whole groups quantize to llama.cpp's bytes.
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { expect, it } from "vitest";
import { projectRoot } from "./helpers/shared.js";

it("q8_round equals std::lround for every |v| <= 128, q8_quantize_group the lround rule, q8_quantize_row (AVX2) the scalar rule", () => {
  const dir = mkdtempSync(join(tmpdir(), "l2-q8-"));
  try {
    const exe = join(dir, "q8-round");
    execFileSync("g++", ["-O2", "-std=c++17", `-I${projectRoot}`, join(projectRoot, "test/native/q8-round.cc"), join(projectRoot, "native/common/q8_row.cc"), "-o", exe], { stdio: "pipe" });
    const out = execFileSync(exe, { encoding: "utf8", timeout: 120_000 });
    expect(out.trim()).toBe("q8 ok");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}, 180_000);

it("fp16 rows (F16C where the CPU has it) convert every fp16 and fp32 value to the scalar rules' bits", () => {
  const dir = mkdtempSync(join(tmpdir(), "l2-half-"));
  try {
    const exe = join(dir, "half-row");
    execFileSync("g++", ["-O2", "-std=c++17", `-I${projectRoot}`, join(projectRoot, "test/native/half-row.cc"), join(projectRoot, "native/common/half_row.cc"), "-o", exe], { stdio: "pipe" });
    const out = execFileSync(exe, { encoding: "utf8", timeout: 120_000 });
    expect(out.trim()).toMatch(/^half ok/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}, 180_000);
