// `llama2 doctor`: what this installation runs on and whether the GPU path works: Node and OS, the
// addon binary chosen (and why), CUDA compiled in (version, architectures), NVIDIA driver and
// whether it is new enough for the binary, GPUs and whether the binary has code for them, CPU SIMD,
// and a verdict with advice. Exit code 1 only when the addon does not load. With --check it also computes:
// lib/self-check.ts (CPU and GPU paths against a simple fp32 reference), exit code 1 when a check fails.
import { readdirSync, readFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import type { Command } from "../command.js";
import { InvalidArgumentError, Llama2Error } from "../../errors.js";
import { selfCheck, type CheckResult } from "../../self-check.js";
import { ensureDemoModel } from "../../synth/demo.js";
import {
  detectNvidiaDriver,
  native,
  nativeSelection,
  packageRoot,
  prebuiltAddons,
  sourceAddons,
  type BuildInfo,
  type CudaDevice,
  type NativeSelection,
  type NvidiaDriver,
} from "../../native.js";

/** Oldest Linux driver branch for each CUDA major (the CUDA runtime is linked statically; minor version compatibility). */
const MIN_DRIVER: Record<number, number> = { 11: 450, 12: 525, 13: 580 };

export interface GpuReport {
  index: number;
  name: string;
  computeCapability: string;
  memoryTotalBytes: number;
  memoryFreeBytes: number;
  smCount: number;
  /** How the binary runs on it: native SASS, PTX compiled by the driver, the host SIMT emulator of a
   * `LLAMA2_CUDA=EMU` test build (kernels/emu: no GPU, for tests, not speed), or not at all. */
  code: "sass" | "ptx-jit" | "emulated" | "unsupported";
}

export interface DoctorReport {
  package: { name: string; version: string; root: string };
  node: { version: string; napi: string; platform: string; arch: string; libc?: string; os?: string };
  addon: {
    loaded: boolean;
    path?: string;
    variant?: NativeSelection["variant"];
    reason?: string;
    failed: NativeSelection["failed"];
    error?: string;
    /** Every binary this package has for this machine. */
    available: { path: string; variant: string }[];
  };
  cuda: {
    built: boolean;
    version?: string;
    architectures?: string;
    available: boolean;
    unavailableReason?: string;
    /** Oldest driver branch this binary needs (from its CUDA version). */
    minDriver?: number;
  };
  driver: NvidiaDriver & {
    /** Newest CUDA the driver supports, from cudaDriverGetVersion (e.g. "13.0"). */
    cudaVersion?: string;
    /** Whether it is new enough for this binary; undefined when that cannot be told. */
    newEnough?: boolean;
  };
  gpus: GpuReport[];
  cpu: { model: string; cores: number; memoryBytes: number; simd?: string; defaultThreads?: number; defaultThreadsReason?: string };
  verdict: { status: "ok" | "warn" | "fail"; device: "cuda" | "cpu" | "none"; message: string; advice: string[] };
}

function cudaApiVersion(v: number): string {
  return `${Math.floor(v / 1000)}.${Math.floor((v % 1000) / 10)}`;
}

function readOsName(): string | undefined {
  try {
    return /^PRETTY_NAME="?([^"\n]*)"?/m.exec(readFileSync("/etc/os-release", "utf8"))?.[1];
  } catch {
    return undefined;
  }
}

/** The nvcc version a build from source used (cmake-js writes it into the build folder). */
function sourceCudaVersion(addonPath: string): string | undefined {
  const buildDir = path.resolve(path.dirname(addonPath), "..");
  try {
    for (const d of readdirSync(path.join(buildDir, "CMakeFiles"))) {
      try {
        const text = readFileSync(path.join(buildDir, "CMakeFiles", d, "CMakeCUDACompiler.cmake"), "utf8");
        const v = /set\(CMAKE_CUDA_COMPILER_VERSION "(\d+\.\d+)/.exec(text)?.[1];
        if (v) return v;
      } catch {
        /* not this one */
      }
    }
  } catch {
    /* no CMake build folder (node-gyp, or moved) */
  }
  return undefined;
}

/**
 * "80-real,86-real,89-real,90+90a" (what CMakeLists.txt records) -> SASS [80, 86, 89, 90], PTX [90]: "+90a"
 * notes the sm_90a-only kernels linked next to sm_90 (they add no GPU); "l2emu" (the emulator) -> emulated.
 */
export function parseArchitectures(list: string | undefined): { sass: number[]; ptx: number[]; emulated?: boolean } {
  const sass: number[] = [];
  const ptx: number[] = [];
  if ((list ?? "").trim() === "l2emu") return { sass, ptx, emulated: true };
  for (const raw of (list ?? "").split(/[,;\s+]+/).filter(Boolean)) {
    if (/^(?:sm_)?\d+a$/.test(raw)) continue; // arch-specific (sm_90a): runs only where its base's SASS does
    const m = /^(?:sm_|compute_)?(\d+)[a-z]?(?:-(real|virtual))?$/.exec(raw);
    if (!m) continue;
    const n = Number(m[1]);
    if (m[2] !== "virtual") sass.push(n);
    if (m[2] !== "real") ptx.push(n);
  }
  return { sass, ptx };
}

/** SASS for sm_XY runs on X.Z with Z >= Y; PTX for compute_N is compiled by the driver for any cc >= N. */
export function codeFor(cc: string, archs: { sass: number[]; ptx: number[]; emulated?: boolean }): GpuReport["code"] {
  if (archs.emulated) return "emulated";
  const [maj, min] = cc.split(".").map(Number) as [number, number];
  const n = maj * 10 + min;
  if (archs.sass.some((s) => Math.floor(s / 10) === maj && s % 10 <= min)) return "sass";
  if (archs.ptx.some((p) => p <= n)) return "ptx-jit";
  return "unsupported";
}

export function collectReport(): DoctorReport {
  let pkg = { name: "llama2-native", version: "?" };
  try {
    pkg = JSON.parse(readFileSync(path.join(packageRoot, "package.json"), "utf8"));
  } catch {
    /* keep the defaults */
  }
  const header = (process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined)?.header;
  const report: DoctorReport = {
    package: { name: pkg.name, version: pkg.version, root: packageRoot },
    node: {
      version: process.version,
      napi: process.versions.napi ?? "?",
      platform: process.platform,
      arch: process.arch,
      ...(header?.glibcVersionRuntime ? { libc: `glibc ${header.glibcVersionRuntime}` } : process.platform === "linux" ? { libc: "musl or unknown" } : {}),
      ...(readOsName() && { os: readOsName() }),
    },
    addon: {
      loaded: false,
      failed: [],
      available: [...prebuiltAddons(), ...sourceAddons()].map((c) => ({ path: c.path, variant: c.variant })),
    },
    cuda: { built: false, available: false },
    driver: detectNvidiaDriver(),
    gpus: [],
    cpu: { model: os.cpus()[0]?.model?.trim() ?? "unknown", cores: os.availableParallelism?.() ?? os.cpus().length, memoryBytes: os.totalmem() },
    verdict: { status: "fail", device: "none", message: "", advice: [] },
  };

  let info: BuildInfo | undefined;
  let devices: CudaDevice[] = [];
  try {
    const addon = native();
    const sel = nativeSelection();
    report.addon = { ...report.addon, loaded: true, path: sel.path, variant: sel.variant, reason: sel.reason, failed: sel.failed };
    info = addon.buildInfo();
    report.cpu.simd = info.cpuSimd;
    report.cpu.defaultThreads = info.cpuThreads;
    report.cpu.defaultThreadsReason = info.cpuThreadsReason;
    report.cuda = {
      built: info.cudaBuilt,
      available: info.cudaAvailable,
      ...(info.cudaArchitectures && { architectures: info.cudaArchitectures }),
      ...(info.cudaUnavailableReason && { unavailableReason: info.cudaUnavailableReason }),
    };
    if (info.cudaBuilt) {
      try {
        devices = addon.cudaDevices();
      } catch {
        devices = [];
      }
      const version =
        sel.manifest?.cudaVersion ?? (devices[0] ? cudaApiVersion(devices[0].runtimeVersion) : undefined) ?? (sel.variant === "source" ? sourceCudaVersion(sel.path) : undefined);
      if (version) {
        report.cuda.version = version;
        const min = MIN_DRIVER[Number(version.split(".")[0])];
        if (min) report.cuda.minDriver = min;
      }
    }
  } catch (err) {
    const e = err instanceof Llama2Error ? err : new Llama2Error("ERR_ADDON_LOAD", String((err as Error)?.message ?? err));
    report.addon.error = e.message + (e.suggestion ? `\nhint: ${e.suggestion}` : "");
  }

  if (devices[0]) report.driver.cudaVersion = cudaApiVersion(devices[0].driverVersion);
  if (report.cuda.built && report.driver.present) {
    const major = Number(report.driver.version?.split(".")[0]);
    if (devices.length > 0) report.driver.newEnough = true;
    else if (report.cuda.minDriver && Number.isFinite(major)) report.driver.newEnough = major >= report.cuda.minDriver;
    else if (/older than/.test(report.cuda.unavailableReason ?? "")) report.driver.newEnough = false;
  }
  const archs = parseArchitectures(report.cuda.architectures);
  report.gpus = devices.map((d) => ({
    index: d.index,
    name: d.name,
    computeCapability: d.computeCapability,
    memoryTotalBytes: d.memoryTotal,
    memoryFreeBytes: d.memoryFree,
    smCount: d.smCount,
    code: codeFor(d.computeCapability, archs),
  }));
  report.verdict = verdict(report);
  return report;
}

function verdict(r: DoctorReport): DoctorReport["verdict"] {
  const advice: string[] = [];
  if (!r.addon.loaded) {
    advice.push("rebuild from source: `npm rebuild llama2-native` (needs cmake + g++, and nvcc for CUDA), or reinstall the package on linux-x64 with glibc");
    return { status: "fail", device: "none", message: "the native addon does not load: nothing can run", advice };
  }
  // `npm rebuild` would keep a prebuild that loads: build:native (install.mjs --force) always compiles,
  // and the result, newer than the prebuilds, is the one chosen afterwards.
  const rebuildCuda = "for the GPU: install the CUDA toolkit (nvcc on PATH) and build from source: `LLAMA2_CUDA=ON npm explore llama2-native -- npm run build:native`";
  if (!r.cuda.built) {
    if (r.driver.present) {
      const cudaFailed = r.addon.failed.find((f) => f.variant === "cuda");
      if (cudaFailed) advice.push(`the CUDA prebuild did not load: ${cudaFailed.error}`);
      advice.push(rebuildCuda);
      return { status: "warn", device: "cpu", message: "an NVIDIA driver is present but this binary has no CUDA backend: models run on the CPU", advice };
    }
    return { status: "ok", device: "cpu", message: "CPU inference works (no NVIDIA driver on this machine)", advice };
  }
  if (!r.driver.present && r.gpus.length === 0) {
    return { status: "ok", device: "cpu", message: "CPU inference works; no NVIDIA driver, so no GPU (this binary has CUDA for when one is there)", advice };
  }
  if (r.driver.newEnough === false) {
    advice.push(`update the NVIDIA driver to ${r.cuda.minDriver ?? "a newer"} or later (this binary is CUDA ${r.cuda.version ?? "?"}), or use device: "cpu"`);
    return {
      status: "warn",
      device: "cpu",
      message: `the NVIDIA driver${r.driver.version ? ` ${r.driver.version}` : ""} is too old for this CUDA ${r.cuda.version ?? ""} binary: models run on the CPU`,
      advice,
    };
  }
  if (!r.cuda.available || r.gpus.length === 0) {
    advice.push("check `nvidia-smi`, that /dev/nvidia* is accessible (containers: --gpus all), and CUDA_VISIBLE_DEVICES");
    return { status: "warn", device: "cpu", message: `CUDA is compiled in but unavailable: ${r.cuda.unavailableReason ?? "no GPU found"}; models run on the CPU`, advice };
  }
  const usable = r.gpus.filter((g) => g.code !== "unsupported");
  for (const g of r.gpus) {
    if (g.code === "ptx-jit") advice.push(`GPU ${g.index} (${g.name}, sm_${g.computeCapability.replace(".", "")}) has no SASS in this binary: the driver compiles the PTX on first use (slower first load); rebuild from source for native code`);
    if (g.code === "emulated") advice.push(`GPU ${g.index} is the host SIMT emulator of a LLAMA2_CUDA=EMU build: it runs the CUDA code correctly but thousands of times slower than a GPU (for tests)`);
    if (g.code === "unsupported") advice.push(`GPU ${g.index} (${g.name}, compute capability ${g.computeCapability}) is older than the oldest architecture in this binary (${r.cuda.architectures}): use device: "cpu" or another GPU`);
  }
  if (usable.length === 0) return { status: "warn", device: "cpu", message: "no GPU here is supported by this binary: models run on the CPU", advice };
  const names = usable.map((g) => `${g.name} (sm_${g.computeCapability.replace(".", "")})`).join(", ");
  return { status: advice.length ? "warn" : "ok", device: "cuda", message: `GPU inference works on ${names}; device: "auto" picks GPU ${usable[0]!.index}`, advice };
}

function gib(b: number): string {
  return `${(b / 2 ** 30).toFixed(1)} GiB`;
}

export function formatReport(r: DoctorReport): string {
  const rows: [string, string][] = [];
  const rel = (p: string) => (p.startsWith(r.package.root + path.sep) ? path.relative(r.package.root, p) : p);
  rows.push(["Package", `${r.package.name} ${r.package.version} (${r.package.root})`]);
  rows.push(["Node.js", `${r.node.version} (Node-API ${r.node.napi}), ${r.node.platform}-${r.node.arch}${r.node.libc ? `, ${r.node.libc}` : ""}${r.node.os ? `, ${r.node.os}` : ""}`]);
  if (r.addon.loaded) {
    rows.push(["Binary", `${rel(r.addon.path!)} [${r.addon.variant}]`]);
    rows.push(["  why", r.addon.reason!]);
    for (const f of r.addon.failed) rows.push(["  skipped", `${rel(f.path)} [${f.variant}]: ${f.error}`]);
  } else {
    rows.push(["Binary", "NONE LOADS"]);
    rows.push(["  error", r.addon.error ?? "?"]);
  }
  if (r.addon.available.length) rows.push(["  available", r.addon.available.map((a) => `${rel(a.path)} [${a.variant}]`).join(", ")]);
  if (r.addon.loaded) {
    rows.push([
      "CUDA",
      r.cuda.built
        ? `compiled in${r.cuda.version ? `: CUDA ${r.cuda.version}` : ""}, architectures ${r.cuda.architectures ?? "?"}${r.cuda.minDriver ? ` (needs driver >= ${r.cuda.minDriver})` : ""}; ` +
          (r.cuda.available ? "available" : `unavailable: ${r.cuda.unavailableReason ?? "?"}`)
        : "not compiled in (CPU-only binary)",
    ]);
  }
  const d = r.driver;
  rows.push([
    "NVIDIA driver",
    d.present
      ? `${d.version ?? "version unknown"}${d.cudaVersion ? ` (supports CUDA ${d.cudaVersion})` : ""} via ${d.evidence}` +
        (d.newEnough === true ? "; new enough" : d.newEnough === false ? `; TOO OLD (need >= ${r.cuda.minDriver})` : "")
      : "not found (no /proc/driver/nvidia/version, no libcuda.so.1)",
  ]);
  if (r.gpus.length === 0) rows.push(["GPUs", !r.addon.loaded ? "not queried (no addon)" : r.cuda.built ? "none visible to CUDA" : "not queried (no CUDA in this binary)"]);
  for (const g of r.gpus) {
    const code = g.code === "sass" ? "native code" : g.code === "ptx-jit" ? "PTX JIT" : g.code === "emulated" ? "host emulation (tests only)" : "NOT SUPPORTED";
    rows.push([`GPU ${g.index}`, `${g.name}, compute ${g.computeCapability}, ${gib(g.memoryTotalBytes)} (${gib(g.memoryFreeBytes)} free), ${g.smCount} SMs: ${code}`]);
  }
  rows.push(["CPU", `${r.cpu.model}, ${r.cpu.cores} threads, ${gib(r.cpu.memoryBytes)} RAM${r.cpu.simd ? `, SIMD ${r.cpu.simd}` : ""}`]);
  if (r.cpu.defaultThreadsReason) rows.push(["CPU backend", `${r.cpu.defaultThreadsReason} by default; --threads / threads: N to change`]);
  if (r.cpu.simd?.includes("avx2")) {
    const dot = r.cpu.simd.includes("avxvnni") ? "AVX-VNNI" : "AVX2";
    rows.push(["CPU int8 / 4-bit", `--cpu-activations int8 (cpuActivations: "int8") decodes faster: inputs rounded to int8, ${dot} integer dots`]);
  }
  const width = Math.max(...rows.map(([k]) => k.length)) + 2;
  const lines = [`llama2 doctor`, "", ...rows.map(([k, v]) => `${k.padEnd(width)}${v.split("\n").map((l) => l.trim()).join(`\n${" ".repeat(width + 2)}`)}`), ""];
  lines.push(`Verdict: ${r.verdict.status.toUpperCase()}: ${r.verdict.message}`);
  for (const a of r.verdict.advice) lines.push(`  - ${a}`);
  return lines.join("\n") + "\n";
}

function formatChecks(checks: CheckResult[]): string {
  const lines = ["", "Checks (logits step by step against the host fp32 reference; cuda int8 / q4 / kv int8 against the CPU's):"];
  const width = Math.max(...checks.map((c) => c.name.length)) + 2;
  for (const c of checks) {
    const figures =
      c.worstRelError !== undefined
        ? `worst rel. error ${c.worstRelError.toExponential(2)}${c.bound !== undefined ? ` (bound ${c.bound.toExponential(0)})` : " (quantization)"}, argmax ${c.argmaxAgree}/${c.steps}`
        : "";
    lines.push(`  ${c.name.padEnd(width)}${c.status.toUpperCase().padEnd(6)}${[figures, c.detail].filter(Boolean).join("; ")}`);
  }
  return lines.join("\n") + "\n";
}

const command: Command = {
  name: "doctor",
  summary: "check the installation: binary chosen, CUDA, driver, GPUs, CPU; with advice (--check: compute and compare)",
  usage: "Usage: llama2 doctor [--json] [--check [--model PATH] [--device-index N]]",
  flags: {
    json: { type: "boolean", description: "print the report as JSON" },
    check: {
      type: "boolean",
      description: "also run a model (the built-in demo model unless --model) on the CPU and every GPU path and compare their logits with a simple fp32 reference",
    },
    model: { type: "string", description: "--check: the model to run (default: the built-in demo model; small models: the reference runs on the host)" },
    "device-index": { type: "int", description: "--check: which GPU", default: 0 },
  },
  async run(flags, positionals, io) {
    if (positionals.length) throw new InvalidArgumentError(positionals[0]!, "unexpected argument");
    if (!flags.check && (flags.model !== undefined || flags.deviceIndex !== 0)) throw new InvalidArgumentError(flags.model !== undefined ? "--model" : "--device-index", "only with --check");
    const deviceIndex = flags.deviceIndex as number;
    if (deviceIndex < 0 || deviceIndex > 64) throw new InvalidArgumentError("--device-index", `expected 0..64, got ${deviceIndex}`);
    const report = collectReport();
    let checks: CheckResult[] | undefined;
    if (flags.check && report.addon.loaded) {
      const modelPath = (flags.model as string | undefined) ?? (await ensureDemoModel());
      checks = await selfCheck({ modelPath, deviceIndex, log: (l) => io.stderr.write(`${l}\n`) });
    }
    io.stdout.write(flags.json ? JSON.stringify(checks ? { ...report, checks } : report, null, 2) + "\n" : formatReport(report) + (checks ? formatChecks(checks) : ""));
    return report.addon.loaded && !checks?.some((c) => c.status === "fail") ? 0 : 1;
  },
};

export default command;
