// Distribution: which addon binary is chosen and why (lib/native.ts, with fake binaries), `llama2
// doctor`, the public type exports, and the packed package itself (scripts/pack-smoke.sh: npm pack,
// install in a clean directory with no build tools, smoke test). The pack test takes a minute or two
// (it compiles the CPU prebuild); SKIP_PACK_TEST=1 skips it visibly, never in CI.
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmSync, utimesSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import ts from "typescript";
import { afterAll, describe, expect, it } from "vitest";
import { codeFor, collectReport, formatReport, parseArchitectures } from "../lib/cli/commands/doctor.js";
import { Llama2Error } from "../lib/errors.js";
import { native as nativeAddon, parseNvidiaVersionFile, selectAddon, type NativeAddon, type NvidiaDriver } from "../lib/native.js";
import type { CheckResult } from "../lib/self-check.js";
import { hasShared, projectRoot, sharedPath } from "./helpers/shared.js";
import { runCli } from "./helpers/cli.js";

const platformDir = `${process.platform}-${process.arch}`;
const tmpDirs: string[] = [];
afterAll(() => {
  for (const d of tmpDirs) rmSync(d, { recursive: true, force: true });
});

/** A package root with empty stand-ins for the given binaries (the loader is faked: content does not matter). */
function fakeRoot(files: string[]): string {
  const root = mkdtempSync(path.join(os.tmpdir(), "llama2-select-"));
  tmpDirs.push(root);
  for (const f of files) {
    mkdirSync(path.dirname(path.join(root, f)), { recursive: true });
    writeFileSync(path.join(root, f), "");
  }
  return root;
}

const CUDA = `prebuilds/${platformDir}/llama2-native.cuda.glibc.node`;
const CPU = `prebuilds/${platformDir}/llama2-native.cpu.glibc.node`;
const SOURCE = "build/Release/llama2_native.node";
const DRIVER: NvidiaDriver = { present: true, version: "580.65.06", evidence: "/proc/driver/nvidia/version" };
const NO_DRIVER: NvidiaDriver = { present: false };

/** A loader that "loads" every file except those in `broken`, and records what it was asked for. */
function fakeLoader(broken: string[] = []) {
  const asked: string[] = [];
  const load = (file: string): NativeAddon => {
    asked.push(path.basename(file));
    if (broken.some((b) => file.endsWith(b))) throw new Error(`${path.basename(file)}: cannot open shared object file (fake)`);
    return { buildInfo: () => ({ cudaBuilt: file.includes(".cuda."), cudaAvailable: false, cpuSimd: "fake", kvBlockSize: 16 }) } as unknown as NativeAddon;
  };
  return { load, asked };
}

describe("addon selection (lib/native.ts)", () => {
  it("CUDA prebuild when an NVIDIA driver is present and it loads", () => {
    const root = fakeRoot([CUDA, CPU]);
    const { selection } = selectAddon({ root, driver: DRIVER, forced: "auto", load: fakeLoader().load });
    expect(selection.variant).toBe("cuda");
    expect(selection.path).toBe(path.join(root, CUDA));
    expect(selection.reason).toMatch(/NVIDIA driver is present.*580\.65\.06.*CUDA prebuild loads/);
    expect(selection.failed).toEqual([]);
  });

  it("CPU prebuild without a driver (the CUDA one is not even tried)", () => {
    const root = fakeRoot([CUDA, CPU]);
    const loader = fakeLoader();
    const { selection } = selectAddon({ root, driver: NO_DRIVER, forced: "", load: loader.load });
    expect(selection.variant).toBe("cpu");
    expect(selection.reason).toMatch(/no NVIDIA driver/);
    expect(loader.asked).toEqual(["llama2-native.cpu.glibc.node"]);
  });

  it("CPU prebuild when the CUDA one does not load, with the error kept", () => {
    const root = fakeRoot([CUDA, CPU]);
    const { selection } = selectAddon({ root, driver: DRIVER, forced: "auto", load: fakeLoader([".cuda.glibc.node"]).load });
    expect(selection.variant).toBe("cpu");
    expect(selection.reason).toMatch(/CUDA prebuild did not load \(.*cannot open shared object/);
    expect(selection.failed).toEqual([{ path: path.join(root, CUDA), variant: "cuda", error: expect.stringMatching(/cannot open/) }]);
  });

  it("CPU prebuild when there is a driver but no CUDA prebuild", () => {
    const root = fakeRoot([CPU]);
    const { selection } = selectAddon({ root, driver: DRIVER, forced: "auto", load: fakeLoader().load });
    expect(selection.variant).toBe("cpu");
    expect(selection.reason).toMatch(/no CUDA prebuild/);
  });

  it("the build from source when no prebuild loads", () => {
    const root = fakeRoot([CUDA, CPU, SOURCE]);
    const old = new Date(Date.now() - 3600_000);
    utimesSync(path.join(root, SOURCE), old, old); // older than the prebuilds: they are tried first
    const { selection } = selectAddon({ root, driver: DRIVER, forced: "auto", load: fakeLoader([".cuda.glibc.node", ".cpu.glibc.node"]).load });
    expect(selection.variant).toBe("source");
    expect(selection.path).toBe(path.join(root, SOURCE));
    expect(selection.reason).toMatch(/no prebuilt binary loaded/);
    expect(selection.failed.map((f) => f.variant)).toEqual(["cuda", "cpu"]);
  });

  it("the build from source when it is newer than the prebuilds (rebuilt on purpose)", () => {
    const root = fakeRoot([CUDA, CPU, SOURCE]);
    const old = new Date("1985-10-26T08:15:00Z"); // what npm pack stamps on every file
    utimesSync(path.join(root, CUDA), old, old);
    utimesSync(path.join(root, CPU), old, old);
    const { selection } = selectAddon({ root, driver: DRIVER, forced: "auto", load: fakeLoader().load });
    expect(selection.variant).toBe("source");
    expect(selection.reason).toMatch(/newer than the prebuilt binaries/);
  });

  it("the build from source when the package has no prebuilds (a git checkout)", () => {
    const root = fakeRoot([SOURCE]);
    const { selection } = selectAddon({ root, driver: NO_DRIVER, forced: "auto", load: fakeLoader().load });
    expect(selection.variant).toBe("source");
    expect(selection.reason).toMatch(/no prebuilt binary for .* in this package/);
  });

  it("skips prebuilds tagged for the other libc", () => {
    const other = process.platform === "linux" && !existsSync("/etc/alpine-release") ? "musl" : "glibc";
    const root = fakeRoot([`prebuilds/${platformDir}/llama2-native.cpu.${other}.node`, SOURCE]);
    const { selection } = selectAddon({ root, driver: NO_DRIVER, forced: "auto", load: fakeLoader().load });
    expect(selection.variant).toBe("source");
  });

  it("LLAMA2_ADDON forces a variant and does not fall back", () => {
    const root = fakeRoot([CUDA, CPU, SOURCE]);
    expect(selectAddon({ root, driver: DRIVER, forced: "cpu", load: fakeLoader().load }).selection).toMatchObject({ variant: "cpu", reason: "LLAMA2_ADDON=cpu" });
    expect(selectAddon({ root, driver: NO_DRIVER, forced: "cuda", load: fakeLoader().load }).selection.variant).toBe("cuda");
    expect(selectAddon({ root, driver: DRIVER, forced: "source", load: fakeLoader().load }).selection.variant).toBe("source");
    expect(() => selectAddon({ root, driver: DRIVER, forced: "cuda", load: fakeLoader([".cuda.glibc.node"]).load })).toThrow(/LLAMA2_ADDON=cuda: the binary does not load/);
    const file = path.join(root, CPU);
    expect(selectAddon({ root, driver: DRIVER, forced: file, load: fakeLoader().load }).selection).toMatchObject({ path: file, variant: "cpu" });
  });

  it("ERR_ADDON_LOAD lists every attempt and says how to fix it", () => {
    const root = fakeRoot([CUDA, CPU]);
    let err: unknown;
    try {
      selectAddon({ root, driver: DRIVER, forced: "auto", load: fakeLoader([".node"]).load });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(Llama2Error);
    const e = err as Llama2Error;
    expect(e.code).toBe("ERR_ADDON_LOAD");
    expect(e.message).toMatch(/llama2-native\.cuda\.glibc\.node \(cuda\): .*cannot open/);
    expect(e.message).toMatch(/llama2-native\.cpu\.glibc\.node \(cpu\): .*cannot open/);
    expect(e.suggestion).toMatch(/npm rebuild llama2-native/);
    const empty = fakeRoot([]);
    expect(() => selectAddon({ root: empty, driver: NO_DRIVER, forced: "auto", load: fakeLoader().load })).toThrow(/addon is missing: no prebuilt binary/);
  });

  it("reads the driver version from /proc/driver/nvidia/version", () => {
    expect(parseNvidiaVersionFile("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023\nGCC version:  gcc version 12.2.0\n")).toBe("535.104.05");
    expect(parseNvidiaVersionFile("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.65.06  Release Build  (dvs-builder@U16-I3-B03-4-3)  Sun Jul 27 06:54:38 UTC 2025\n")).toBe("580.65.06");
  });
});

describe("llama2 doctor", () => {
  it("knows which GPUs a binary has code for", () => {
    const archs = parseArchitectures("80-real,86-real,89-real,90");
    expect(archs).toEqual({ sass: [80, 86, 89, 90], ptx: [90] });
    expect(codeFor("8.0", archs)).toBe("sass");
    expect(codeFor("8.7", archs)).toBe("sass"); // sm_86 SASS runs on 8.7
    expect(codeFor("9.0", archs)).toBe("sass");
    expect(codeFor("10.0", archs)).toBe("ptx-jit");
    expect(codeFor("12.0", archs)).toBe("ptx-jit");
    expect(codeFor("7.5", archs)).toBe("unsupported");
    expect(codeFor("8.9", parseArchitectures("80-real;90-real"))).toBe("sass");
    // What the CMake build records when the sm_90a kernels are linked in.
    const withWgmma = parseArchitectures("80-real,86-real,89-real,90+90a");
    expect(withWgmma).toEqual({ sass: [80, 86, 89, 90], ptx: [90] });
    expect(codeFor("9.0", withWgmma)).toBe("sass");
    expect(codeFor("10.0", withWgmma)).toBe("ptx-jit");
    // And whatever this checkout's addon says, when it has CUDA: an H100 / H200 has native code.
    const info = nativeAddon().buildInfo();
    if (info.cudaBuilt && info.cudaArchitectures && info.cudaArchitectures !== "l2emu") expect(codeFor("9.0", parseArchitectures(info.cudaArchitectures))).toBe("sass");
    expect(codeFor("9.0", parseArchitectures("80-real"))).toBe("unsupported");
    expect(parseArchitectures("l2emu")).toEqual({ sass: [], ptx: [], emulated: true }); // LLAMA2_CUDA=EMU build
    expect(codeFor("8.0", parseArchitectures("l2emu"))).toBe("emulated");
  });

  it("reports the loaded binary, CUDA, driver, GPUs, CPU and a verdict", () => {
    const r = collectReport();
    expect(r.addon.loaded).toBe(true);
    expect(["cpu", "cuda", "source"]).toContain(r.addon.variant);
    expect(r.addon.reason).toBeTruthy();
    expect(r.node.version).toBe(process.version);
    expect(typeof r.cuda.built).toBe("boolean");
    if (r.cuda.built) expect(r.cuda.architectures).toBeTruthy();
    expect(r.cpu.simd).toBeTruthy();
    expect(r.verdict.status).not.toBe("fail");
    expect(r.verdict.device).toBe(r.gpus.some((g) => g.code !== "unsupported") && r.cuda.available ? "cuda" : "cpu");
    const text = formatReport(r);
    for (const k of ["Node.js", "Binary", "why", "NVIDIA driver", "GPU", "CPU", "Verdict:"]) expect(text).toContain(k);
  });

  it("runs as `llama2 doctor --json` and `llama2 doctor`", async () => {
    const run = async (argv: string[]) => {
      const { code, stdout } = await runCli(argv);
      return { code, text: stdout };
    };
    const json = await run(["doctor", "--json"]);
    expect(json.code).toBe(0);
    const r = JSON.parse(json.text);
    expect(r.addon.loaded).toBe(true);
    expect(r.verdict.message).toBeTruthy();
    const plain = await run(["doctor"]);
    expect(plain.code).toBe(0);
    expect(plain.text).toMatch(/^Verdict: (OK|WARN): /m);
    expect((await run(["--help"])).text).toMatch(/doctor\s+check the installation/);
    const bad = await runCli(["doctor", "--check", "--device-index", "-1"]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/ERR_INVALID_ARGUMENT\]: --device-index: expected 0\.\.64/);
  });

  it("`doctor --check` computes on every path and compares with the host fp32 reference (GPU paths skip without a GPU)", async () => {
    const saved = process.env.LLAMA2_HOME;
    process.env.LLAMA2_HOME = path.join(os.tmpdir(), "llama2-native-test-home"); // the demo model, shared with other tests
    try {
      const { code, stdout } = await runCli(["doctor", "--check", "--json"]);
      const r = JSON.parse(stdout) as { checks: CheckResult[] };
      const by = new Map(r.checks.map((c) => [c.name, c]));
      // The CPU's SIMD kernels vs the sequential reference on the same fp16 weights: rounding only (measured 9e-7).
      expect(by.get("cpu")).toMatchObject({ status: "pass", steps: 13, argmaxAgree: 13 });
      expect(by.get("cpu")!.worstRelError!).toBeLessThan(1e-5);
      // int8: the quantization's error, reported without a bound (measured 8.8e-3 on the demo model).
      expect(by.get("cpu int8")).toMatchObject({ status: "info", steps: 13 });
      expect(by.get("cpu kv int8")).toMatchObject({ status: "info", steps: 13 });
      expect(by.get("cpu int8")!.worstRelError!).toBeGreaterThan(1e-4);
      // dtype q4 (Q4_1 groups): 4-bit quantization's error, several times int8's.
      expect(by.get("cpu q4")).toMatchObject({ status: "info", steps: 13 });
      expect(by.get("cpu q4")!.worstRelError!).toBeGreaterThan(by.get("cpu int8")!.worstRelError!);
      const gpu = nativeAddon().buildInfo().cudaAvailable;
      for (const name of ["cuda f32", "cuda f16"]) expect(by.get(name)?.status).toBe(gpu ? "pass" : "skip");
      if (!gpu) for (const name of ["cuda int8", "cuda q4", "cuda kv int8"]) expect(by.get(name)?.status).toBe("skip");
      expect(code).toBe(0);
      if (hasShared("models/stories260K.bin")) {
        // A model without a tokenizer (token-id prompt), in the plain report.
        const plain = await runCli(["doctor", "--check", "--model", sharedPath("models/stories260K.bin")]);
        expect(plain.stdout).toMatch(/^ {2}cpu +PASS +worst rel\. error/m);
        expect(plain.code).toBe(0);
      }
      await expect(runCli(["doctor", "--model", "x"])).resolves.toMatchObject({ code: 2, stderr: expect.stringContaining("--model: only with --check") });
    } finally {
      if (saved === undefined) delete process.env.LLAMA2_HOME;
      else process.env.LLAMA2_HOME = saved;
    }
  }, 120_000);
});

describe("public types", () => {
  it("lib/index.ts exports every type of lib/types.ts", () => {
    const program = ts.createProgram([path.join(projectRoot, "lib/index.ts")], {
      module: ts.ModuleKind.NodeNext,
      moduleResolution: ts.ModuleResolutionKind.NodeNext,
      target: ts.ScriptTarget.ES2022,
      noEmit: true,
      skipLibCheck: true,
    });
    const checker = program.getTypeChecker();
    const exportsOf = (file: string) => {
      const sf = program.getSourceFile(path.join(projectRoot, file))!;
      return new Set(checker.getExportsOfModule(checker.getSymbolAtLocation(sf)!).map((s) => s.getName()));
    };
    const index = exportsOf("lib/index.ts");
    const missing = [...exportsOf("lib/types.ts")].filter((n) => !index.has(n));
    expect(missing).toEqual([]);
    for (const n of ["Llama2", "ChatSession", "Tokenizer", "Llama2Error", "ChatOptions", "BuildInfo", "CudaDevice"]) expect(index.has(n)).toBe(true);
  });
});

describe("API docs", () => {
  it("typedoc documents the public API with no warnings (every referenced type exported)", async () => {
    const bin = path.join(projectRoot, "node_modules", "typedoc", "bin", "typedoc");
    const { code, output } = await new Promise<{ code: number | null; output: string }>((resolve) => {
      const child = spawn(process.execPath, [bin, "--emit", "none", "--treatWarningsAsErrors"], { cwd: projectRoot, stdio: ["ignore", "pipe", "pipe"] });
      let output = "";
      child.stdout.on("data", (d: Buffer) => (output += d.toString()));
      child.stderr.on("data", (d: Buffer) => (output += d.toString()));
      child.on("close", (c) => resolve({ code: c, output }));
    });
    expect(output).not.toMatch(/warning|error/i);
    expect(code).toBe(0);
  }, 120_000);
});

// ------------------------------------------------------------------------------------ npm pack smoke

const skipPack = process.env.SKIP_PACK_TEST === "1" && process.env.CI !== "true" && process.env.LLAMA2_REQUIRE_SHARED !== "1";
if (skipPack) console.warn("[skip] npm pack smoke test: SKIP_PACK_TEST=1 (run `npm run pack:smoke` to do it by hand)");

describe.skipIf(skipPack)(`npm pack smoke test (scripts/pack-smoke.sh, CPU prebuild)${skipPack ? " [skipped: SKIP_PACK_TEST=1]" : ""}`, () => {
  it(
    "the tarball installs with no build tools on PATH, uses the prebuild, and runs",
    async () => {
      const { code, output } = await new Promise<{ code: number | null; output: string }>((resolve) => {
        const env = { ...process.env, SMOKE_CPU_ONLY: "1" };
        delete env.SMOKE_KEEP;
        delete env.SMOKE_PREBUILDS;
        delete env.LLAMA2_ADDON;
        const child = spawn("bash", [path.join(projectRoot, "scripts/pack-smoke.sh")], { cwd: projectRoot, env, stdio: ["ignore", "pipe", "pipe"] });
        let output = "";
        child.stdout.on("data", (d: Buffer) => (output += d.toString()));
        child.stderr.on("data", (d: Buffer) => (output += d.toString()));
        child.on("close", (c) => resolve({ code: c, output }));
      });
      if (code !== 0) console.error(output.slice(-8000));
      expect(code).toBe(0);
      expect(output).toContain("using the prebuilt addon");
      expect(output).toMatch(/binary: prebuilds\/linux-x64\/llama2-native\.cpu\.glibc\.node \[cpu\]/);
      expect(output).toContain("SMOKE OK");
      expect(output).toMatch(/^Verdict: OK/m);
      expect(output).toContain("pack-smoke: OK");
      const summary = JSON.parse(/^(\{"tarball".*\})$/m.exec(output)![1]!);
      expect(summary.sizeBytes).toBeLessThan(10 * 2 ** 20);
      console.log(`[pack smoke] ${summary.tarball}: ${(summary.sizeBytes / 2 ** 20).toFixed(2)} MiB, ${summary.files} files, ${summary.elapsedSeconds}s`);
    },
    360_000,
  );
});
