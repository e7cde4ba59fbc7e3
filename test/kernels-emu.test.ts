// The CUDA kernels' logic on the CPU: kernels/*.cu and their harness (kernels/tests) compiled as C++ for the
// host SIMT emulator (kernels/emu: fibers per thread, warp collectives, ldmatrix / mma.sync / cp.async as
// the PTX ISA defines them, guard pages around device buffers, poisoned shared memory). Every kernel check
// of `kernel_tests --quick` runs against its CPU reference, as an sm_80 in two thread orders and as an sm_90
// (with the wgmma GEMMs) with cp.async landing late and early; the emulator's self-test shows it reports
// planted bugs (a missing barrier, a read before cp.async lands, an out-of-bounds read, a full-mask shuffle
// with exited lanes, a misaligned vector load, shared memory changed under an in-flight wgmma, a thread
// exiting with one in flight). Timing is not modelled: speed needs a GPU.
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { cudaHeadersDir } from "./helpers/cuda-headers.js";
import { projectRoot } from "./helpers/shared.js";

const root = projectRoot;
const headers = cudaHeadersDir;
const harness = join(root, "build/kernel_tests_emu");
const selftest = join(root, "build/emu_selftest");

function runHarness(env: Record<string, string>): { status: number | null; out: string } {
  const r = spawnSync(harness, ["--quick"], { cwd: root, encoding: "utf8", env: { ...process.env, ...env }, timeout: 600_000 });
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
}

function summary(out: string): { checks: number; failed: number } {
  const m = /(\d+) checks, (\d+) failed/.exec(out);
  return m ? { checks: Number(m[1]), failed: Number(m[2]) } : { checks: 0, failed: -1 };
}

describe.skipIf(!headers)(`CUDA kernels on the host SIMT emulator${headers ? "" : " (skipped: the CUDA headers, cuda_fp16.h, were not found)"}`, () => {
  it("builds the emulated harness and self-test with g++ (no nvcc, no GPU)", () => {
    execFileSync("bash", ["scripts/build-kernel-tests-emu.sh"], { cwd: root, stdio: "pipe", env: { ...process.env, CUDA_INC: headers } });
    expect(existsSync(harness)).toBe(true);
    expect(existsSync(selftest)).toBe(true);
  }, 600_000);

  // sm_80 in both thread orders; sm_90 (the sm_90a wgmma GEMMs join the mma.sync ones), once with cp.async copies
  // landing at the wait (reads before it show) and once at issue (refills of a stage still being read show).
  const runs: [string, Record<string, string>][] = [
    ["sm_80, threads in forward order", { L2EMU_ORDER: "forward" }],
    ["sm_80, threads in reverse order", { L2EMU_ORDER: "reverse" }],
    ["sm_90 with the wgmma GEMMs", { L2EMU_CC: "90", L2EMU_ORDER: "forward" }],
    ["sm_90, cp.async landing at issue, threads shuffled", { L2EMU_CC: "90", L2EMU_ORDER: "shuffle", L2EMU_CP_ASYNC: "early" }],
  ];
  for (const [name, env] of runs) {
    it(`every quick kernel check passes (${name})`, () => {
      const { status, out } = runHarness(env);
      const s = summary(out);
      if (s.failed !== 0) console.error(out.split("\n").filter((l) => /FAIL|l2emu/.test(l)).join("\n"));
      // Each family is there: GEMM, GEMV (incl. the tensor-core decode kernel), prefill attention, int8 KV.
      for (const fam of ["gemm", "gemv", "attention_prefill", "kv_int8"]) expect(out).toContain(`=== ${fam} ===`);
      expect(out).toContain("gemv_mma f16 T8");
      // Both decode attention variants: the 128-position split kernel and the streaming one (LLAMA2_ATTN_STREAM).
      expect(out).toMatch(/decode f16 .*\[stream\] rel_l2/);
      expect(out).toMatch(/decode q8 .*\[stream\] rel_l2/);
      if (env.L2EMU_CC === "90") {
        // Every wgmma configuration, and the 64-row ones with split-K forced (2-4 splits, f16 and int8 weights).
        expect(out).toContain("(sm_90 model)");
        for (const cfg of ["f16 wgmma 128x128x64", "f16 wgmma 128x256x64", "f16 wgmma 64x128x64", "w8 wgmma 128x128x64", "w8 wgmma 64x128x64"])
          expect(out).toContain(`cfg ${cfg}`);
        expect(out).toMatch(/cfg f16 wgmma 64x128x64 .* split-K 4 rel_l2/);
        expect(out).toMatch(/cfg w8 wgmma 64x128x64 .* split-K 3 rel_l2/);
        // The wave rule's split counts at the 7B shapes, M = 64, 132 SMs (qkv o gate_up down logits).
        expect(out).toMatch(/\[ ok \] f16 wgmma 64-row split-K by waves.* 4 4 3 4 1/);
      } else {
        expect(out).not.toMatch(/\[ ok \] cfg \S+ wgmma/);
        expect(out).toContain("(skip f16 wgmma 64x128x64 s6: sm_90a only)");
      }
      expect(s.checks).toBeGreaterThan(250);
      expect(s.failed).toBe(0);
      expect(status).toBe(0);
    }, 600_000);
  }

  describe("the emulator reports planted bugs", () => {
    const cases: [string, string][] = [
      ["race", "a shared value read without the barrier after its write (seen in reverse order)"],
      ["early", "a cp.async destination read before its wait"],
      ["exited", "a full-mask shuffle after half the warp exited"],
      ["misaligned", "a misaligned 16-byte load"],
      ["mma", "ldmatrix + mma.sync compute A . B^T (the positive control)"],
      ["wgmma", "one wgmma m64n128k16 from 128-byte-swizzled shared tiles computes A . B^T (the positive control)"],
      ["wgmma-late", "a wgmma reads shared memory at its wait: A overwritten before the wait changes the product"],
      ["wgmma-exit", "a thread exiting with a wgmma in flight is reported"],
    ];
    for (const [c, what] of cases)
      it(what, () => {
        const r = spawnSync(selftest, [c], { encoding: "utf8" });
        expect(r.status, `${r.stdout}${r.stderr}`).toBe(0);
      });
    it("an out-of-bounds read stops the run, naming the allocation, block and thread", () => {
      const r = spawnSync(selftest, ["oob"], { encoding: "utf8" });
      expect(r.status).toBe(3);
      expect(r.stderr).toMatch(/invalid memory access .* past the end of allocation .* \(4096 bytes, offset 4352\), in block \(0,0,0\) thread \(0,0,0\)/);
    });
  });
});
