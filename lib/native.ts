// Loads the native addon (a CUDA or CPU prebuild, or one built by `npm install`) and types its surface.
// Everything above this file talks to the engine only through these types.
import { existsSync, readdirSync, readFileSync, realpathSync, statSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { Llama2Error } from "./errors.js";
import type { Candidates } from "./sampler.js";
import type { LoraInfo, ModelConfig, ModelInfo } from "./types.js";

export interface NativeTokenizerData {
  model: string;
  tokens: string[];
  scores: Float32Array;
  types: Int32Array;
  bosId: number;
  eosId: number;
  unkId: number;
  padId: number;
  addBos: boolean;
  /** tokenizer.ggml.add_space_prefix (default true; absent from binaries built before it was read). */
  addSpacePrefix?: boolean;
  /** tokenizer.chat_template (Jinja), when the file has one. */
  chatTemplate?: string;
}

export interface NativeModelSourceInfo {
  format: "hf" | "gguf" | "llama2c";
  path: string;
  name: string;
  config: ModelConfig;
  fileBytes: number;
  /** Storage type of the first layer's wq, e.g. "F16", "Q8_0". */
  fileDtype: string;
  /** Every matrix's storage type: the embedding, the classifier, then per layer wq wk wv wo w1 w2 w3. */
  matrixDtypes?: string[];
  tokenizer?: NativeTokenizerData;
  tokenizerPath?: string;
  tensors?: { name: string; fileName: string; dtype: string; shape: number[]; bytes: number }[];
}

export interface NativeModelInfo extends NativeModelSourceInfo {
  device: "cpu" | "cuda";
  deviceName: string;
  dtype: ModelInfo["dtype"];
  kvCacheType: "f32" | "f16" | "int8";
  weightBytes: number;
  kvCacheBytes: number;
  deviceMemoryUsed: number;
  deviceMemoryTotal: number;
  contextLength: number;
  maxSequences: number;
  /** Most sequences one forward step may hold (the scheduler batches at most this many). */
  maxStepSequences: number;
  kvBlockSize: number;
  kvBlocks: number;
  /** Bytes of one KV block in host memory (readSequenceBlocks), all layers, the cache's storage type. */
  kvBlockBytes: number;
  lora: LoraInfo[];
}

/**
 * Per sequence in a step: tokens to append; output 0 = none, -1 = full logits of the last token, -2 = full
 * logits of every token ([tokens][vocab], at most the step's output rows), -3 = the last token's final hidden
 * state (after the last RMSNorm: [dim]), k > 0 = top-k candidates.
 */
export interface NativeStepRequest {
  seq: number;
  tokens: Int32Array;
  output: number;
  /** output -1, -3 or k for every token instead of the last ([tokens][vocab], [tokens][dim] or [tokens][k], rows in order). */
  every?: boolean;
}
/** Device-selected top candidates (the same type as the sampler's). */
export type { Candidates } from "./sampler.js";
export type NativeStepOutput = Float32Array | Candidates | null;

export interface NativeModel {
  /** The loaded model; `withTokenizer` adds a GGUF's vocabulary (large: ask once, at load). */
  info(withTokenizer?: boolean): NativeModelInfo;
  createSequence(): number;
  freeSequence(seq: number): void;
  forkSequence(seq: number): number;
  truncateSequence(seq: number, length: number): void;
  sequenceLength(seq: number): number;
  /**
   * Saved sessions: an empty sequence gets the blocks of `length` positions (beginRestore), filled by
   * writeSequenceBlocks; finishRestore makes them its cache once every block was written.
   */
  beginRestore(seq: number, length: number): void;
  finishRestore(seq: number): void;
  /** `count` KV blocks of a sequence from block `first` to / from `buf` (kvBlockBytes each, the backend's layout). */
  readSequenceBlocks(seq: number, first: number, count: number, buf: Uint8Array): Promise<void>;
  writeSequenceBlocks(seq: number, first: number, count: number, buf: Uint8Array): Promise<void>;
  kvState(): { freeBlocks: number; totalBlocks: number; blockSize: number };
  forward(requests: NativeStepRequest[]): Promise<NativeStepOutput[]>;
  dispose(): void;
}

export interface NativeLoadOptions {
  device?: string;
  deviceIndex?: number;
  dtype?: string;
  kvCacheType?: string;
  contextLength?: number;
  maxSequences?: number;
  threads?: number;
  cpuActivations?: string;
  ropeScaling?: { type: string; factor?: number; originalContextLength?: number };
  lora?: { path: string; scale?: number }[];
}

/** A model opened to be written as GGUF (native/model/export.h; lib/convert.ts). */
export interface NativeExport {
  info: NativeModelSourceInfo;
  lora: LoraInfo[];
  /** In file order, under GGUF names; `type` a ggml type name ("F16", "Q8_0", "Q4_K" ...). */
  tensors: { name: string; type: string; rows: number; cols: number; rowBytes: number }[];
  /** Rows [row0, row0 + rows) of tensor `index` in its type and GGUF row order into `buffer`. */
  read(index: number, row0: number, rows: number, buffer: Uint8Array): Promise<void>;
  close(): void;
}

export interface NativeExportOptions {
  dtype?: string;
  lora?: { path: string; scale?: number }[];
  ropeScaling?: { type: string; factor?: number; originalContextLength?: number };
  threads?: number;
}

export interface NativeProgress {
  phase: string;
  bytes: number;
  totalBytes: number;
  tensors: number;
  totalTensors: number;
}

export interface CudaDevice {
  index: number;
  name: string;
  computeCapability: string;
  memoryTotal: number;
  memoryFree: number;
  smCount: number;
  driverVersion: number;
  runtimeVersion: number;
}

export interface BuildInfo {
  cudaBuilt: boolean;
  cudaArchitectures?: string;
  cudaAvailable: boolean;
  cudaUnavailableReason?: string;
  cpuSimd: string;
  /** The CPU backend's default thread count: physical cores in the affinity mask, capped by a cgroup quota. */
  cpuThreads: number;
  /** How cpuThreads was found (CPUs usable, physical cores, quota). */
  cpuThreadsReason: string;
  kvBlockSize: number;
}

/** One native op at a real shape, for micro-benchmarks (native/engine/op_bench.h). */
export interface OpBenchSpec {
  op: "matvec" | "attention";
  device: "cpu" | "cuda";
  /** matvec weights: f32 (cpu), f16, int8 or q4 (a GGUF's 4-bit groups as the backends run them); attention runs on the backend's own cache type. */
  dtype?: "f32" | "f16" | "int8" | "q4";
  /** matvec: out[batch][rows] = in[batch][cols] . W[rows][cols]^T */
  rows?: number;
  cols?: number;
  /** attention: `batch` sequences each decoding one token over `context` cached positions. */
  context?: number;
  heads?: number;
  kvHeads?: number;
  headDim?: number;
  batch?: number;
  threads?: number;
  deviceIndex?: number;
  /** cpu matvec: "f32" | "int8" (LoadOptions.cpuActivations). */
  cpuActivations?: string;
}
export interface NativeOpBench {
  description: string;
  /** Bytes one run must move (weights or KV cache, plus activations). */
  bytes: number;
  flops: number;
  /** Runs the op `iters` times back to back (synchronously); the seconds they took (GPU: CUDA events). */
  run(iters?: number): number;
  /** The last run's result where the op has one (the CPU matvec's [batch][rows]); empty otherwise. */
  output(): Float32Array;
  dispose(): void;
}

export interface NativeAddon {
  readModelInfo(path: string, withTensors?: boolean): NativeModelSourceInfo;
  loadModel(path: string, opts: NativeLoadOptions, onProgress?: (p: NativeProgress) => void, cancel?: Int32Array): Promise<NativeModel>;
  openExport(path: string, opts: NativeExportOptions): Promise<NativeExport>;
  cudaDevices(): CudaDevice[];
  buildInfo(): BuildInfo;
  /** Drops a file's pages from the page cache (cold-load timing); false when the kernel refused. */
  dropPageCache(path: string): boolean;
  /** Device-to-device copy bandwidth, GB/s counting read + write; 0 without CUDA. */
  cudaCopyBandwidth(deviceIndex: number, bytes?: number): number;
  /** Allocates one op with seeded random data; ERR_INVALID_ARGUMENT naming the field on a bad spec. */
  createOpBench(spec: OpBenchSpec): NativeOpBench;
  /** The CUDA backend's device buffers for a model shape, computed without a GPU (engine/cuda_plan.h). */
  cudaMemoryPlan(
    config: Pick<ModelConfig, "dim" | "nLayers" | "nHeads" | "nKvHeads" | "headDim" | "ffnDim" | "vocabSize" | "tiedEmbeddings">,
    opts: {
      int8Weights: boolean;
      q4Weights?: boolean;
      f32Weights?: boolean;
      kvCacheType: "auto" | "int8";
      contextLength: number;
      maxSequences: number;
      /** With the file's matrix types (NativeModelSourceInfo.matrixDtypes), `dtype` and the backend's own rule pick each format. */
      matrixDtypes?: string[];
      dtype?: "auto" | "f16" | "int8" | "q4";
    },
  ): CudaMemoryPlan;
}

/** Bytes of GPU memory the CUDA backend allocates for a model (see `planCudaMemory`). */
export interface CudaMemoryPlan {
  weightBytes: number;
  kvCacheBytes: number;
  /** Activations, logits, workspaces, step inputs: `buffers` itemizes them. */
  bufferBytes: number;
  totalBytes: number;
  kvBlocks: number;
  buffers: Record<string, number>;
}

export const packageRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");

// ---------------------------------------------------------------------------------------------
// Which binary: prebuilds/<platform>-<arch>/llama2-native.{cuda,cpu}[.glibc].node (made by
// scripts/prebuild.mjs) or build/Release (built from source by scripts/install.mjs). node-gyp-build's
// tags cannot say "CUDA or CPU", so the choice is made here:
//   1. LLAMA2_ADDON=cuda|cpu|source|/path/to/addon.node forces one (no fallback when it fails);
//   2. a build from source newer than every prebuild (`npm run build:native` after installing) wins;
//   3. the CUDA prebuild when an NVIDIA driver is present and it loads;
//   4. the CPU prebuild;
//   5. the build from source (build/Release, then build/Debug), then anything node-gyp-build finds;
//   6. otherwise ERR_ADDON_LOAD listing every attempt, with the fix.

export type AddonVariant = "cuda" | "cpu" | "source";

/** An NVIDIA kernel driver seen on this machine (found without loading CUDA). */
export interface NvidiaDriver {
  present: boolean;
  /** Kernel module version, e.g. "580.65.06", when it could be read. */
  version?: string;
  /** What showed it: "/proc/driver/nvidia/version" or the path of libcuda.so.1. */
  evidence?: string;
}

/** How a prebuilt binary was made (prebuilds/<platform>-<arch>/<name>.json, written by scripts/prebuild.mjs). */
export interface PrebuildManifest {
  file: string;
  variant: "cuda" | "cpu";
  bytes: number;
  sha256: string;
  builtAt: string;
  /** Node.js that built it; the binary uses Node-API `napiVersion` and loads in any Node >= 20. */
  node: string;
  napiVersion: number;
  /** nvcc release, e.g. "13.0" (CUDA variant). */
  cudaVersion?: string;
  /** CMAKE_CUDA_ARCHITECTURES, e.g. "80-real,86-real,89-real,90". */
  cudaArchitectures?: string;
  /** Oldest NVIDIA driver that runs this CUDA build, e.g. "580". */
  minDriver?: string;
  /** Newest glibc / libstdc++ symbol versions the binary needs, e.g. "2.34" / "3.4.30". */
  glibc?: string;
  glibcxx?: string;
  /** Shared libraries it links (the CUDA runtime is static: no libcudart here). */
  needed?: string[];
  gitCommit?: string;
}

export interface AddonCandidate {
  path: string;
  variant: AddonVariant;
}

/** The binary `native()` loaded, and why. */
export interface NativeSelection {
  path: string;
  variant: AddonVariant;
  /** One sentence: why this binary (e.g. "an NVIDIA driver is present (...) and the CUDA prebuild loads"). */
  reason: string;
  /** Binaries tried first that did not load, with their errors. */
  failed: { path: string; variant: AddonVariant; error: string }[];
  driver: NvidiaDriver;
  /** Build facts of a prebuilt binary (absent for builds from source). */
  manifest?: PrebuildManifest;
}

const PREBUILD_RE = /^llama2-native\.(cuda|cpu)((?:\.[a-z0-9_]+)*)\.node$/;

function isMusl(): boolean {
  return process.platform === "linux" && existsSync("/etc/alpine-release");
}

function safeReaddir(dir: string): string[] {
  try {
    return readdirSync(dir).sort();
  } catch {
    return [];
  }
}

function mtime(p: string): number {
  try {
    return statSync(p).mtimeMs;
  } catch {
    return 0;
  }
}

/** Prebuilt binaries for this platform, CUDA first. */
export function prebuiltAddons(root = packageRoot): AddonCandidate[] {
  const dir = path.join(root, "prebuilds", `${process.platform}-${process.arch}`);
  const libc = isMusl() ? "musl" : "glibc";
  const out: AddonCandidate[] = [];
  for (const f of safeReaddir(dir)) {
    const m = PREBUILD_RE.exec(f);
    if (!m) continue;
    const tags = m[2]!.split(".").filter(Boolean);
    if (tags.some((t) => (t === "glibc" || t === "musl") && t !== libc)) continue;
    out.push({ path: path.join(dir, f), variant: m[1] as "cuda" | "cpu" });
  }
  return out.sort((a, b) => (a.variant === b.variant ? 0 : a.variant === "cuda" ? -1 : 1));
}

/** Addons built from source in the package (build/Release, then build/Debug). */
export function sourceAddons(root = packageRoot): AddonCandidate[] {
  const out: AddonCandidate[] = [];
  for (const sub of ["build/Release", "build/Debug"]) {
    const dir = path.join(root, sub);
    for (const f of safeReaddir(dir)) if (f.endsWith(".node")) out.push({ path: path.join(dir, f), variant: "source" });
  }
  return out;
}

/** The prebuild's manifest (same name, .json), when there is one. */
export function prebuildManifest(addonFile: string): PrebuildManifest | undefined {
  try {
    return JSON.parse(readFileSync(addonFile.replace(/\.node$/, ".json"), "utf8")) as PrebuildManifest;
  } catch {
    return undefined;
  }
}

function libraryDirs(): string[] {
  const dirs = (process.env.LD_LIBRARY_PATH ?? "").split(":").filter(Boolean);
  dirs.push("/usr/lib/wsl/lib", "/usr/local/nvidia/lib64", "/usr/local/nvidia/lib");
  for (const conf of safeReaddir("/etc/ld.so.conf.d")) {
    if (!conf.endsWith(".conf")) continue;
    try {
      for (const line of readFileSync(path.join("/etc/ld.so.conf.d", conf), "utf8").split("\n")) {
        const d = line.trim();
        if (d.startsWith("/")) dirs.push(d);
      }
    } catch {
      /* unreadable: skip */
    }
  }
  dirs.push("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/lib64", "/lib64", "/usr/lib", "/lib");
  return [...new Set(dirs)];
}

/** Parses the driver version out of /proc/driver/nvidia/version's first line. */
export function parseNvidiaVersionFile(text: string): string | undefined {
  const line = text.split("\n").find((l) => l.startsWith("NVRM")) ?? text;
  return /Kernel Module(?:\s+for\s+\S+)?\s+(\d+\.\d+(?:\.\d+)?)/.exec(line)?.[1] ?? /\s(\d{3,}\.\d+(?:\.\d+)?)\s/.exec(line)?.[1];
}

/**
 * Whether an NVIDIA driver is installed, found without loading CUDA: /proc/driver/nvidia/version
 * (Linux), else a libcuda.so.1 in the loader's directories (WSL2 and containers have no /proc entry).
 */
export function detectNvidiaDriver(): NvidiaDriver {
  if (process.platform !== "linux") return { present: false };
  try {
    const text = readFileSync("/proc/driver/nvidia/version", "utf8");
    return { present: true, version: parseNvidiaVersionFile(text), evidence: "/proc/driver/nvidia/version" };
  } catch {
    /* not there: look for the user-space driver */
  }
  for (const dir of libraryDirs()) {
    const lib = path.join(dir, "libcuda.so.1");
    if (!existsSync(lib)) continue;
    let version: string | undefined;
    try {
      version = /libcuda\.so\.(\d+\.\d+(?:\.\d+)?)$/.exec(realpathSync(lib))?.[1];
    } catch {
      /* dangling link */
    }
    return { present: true, version, evidence: lib };
  }
  return { present: false };
}

let addon: NativeAddon | undefined;
let selection: NativeSelection | undefined;

function loadFile(file: string): NativeAddon {
  const a = createRequire(import.meta.url)(file) as NativeAddon;
  if (typeof a?.buildInfo !== "function" || typeof a?.loadModel !== "function") throw new Error("not a llama2-native addon");
  a.buildInfo(); // a broken binary fails here rather than at the first model load
  return a;
}

function driverText(d: NvidiaDriver): string {
  return `${d.evidence}${d.version ? `, driver ${d.version}` : ""}`;
}

/** @internal What `selectAddon` may be given instead of looking at this machine (tests). */
export interface SelectAddonInputs {
  root?: string;
  driver?: NvidiaDriver;
  /** LLAMA2_ADDON. */
  forced?: string;
  load?: (file: string) => NativeAddon;
}

/** @internal The selection rules (see above) without caching; `native()` uses it once. */
export function selectAddon(inputs: SelectAddonInputs = {}): { addon: NativeAddon; selection: NativeSelection } {
  const root = inputs.root ?? packageRoot;
  const load = inputs.load ?? loadFile;
  const driver = inputs.driver ?? detectNvidiaDriver();
  const relative = (p: string) => {
    const r = path.relative(root, p);
    return r.startsWith("..") ? p : r;
  };
  const failed: NativeSelection["failed"] = [];
  const attempt = (c: AddonCandidate, reason: string) => {
    try {
      const a = load(c.path);
      const manifest = c.variant === "source" ? undefined : prebuildManifest(c.path);
      return { addon: a, selection: { path: c.path, variant: c.variant, reason, failed, driver, ...(manifest && { manifest }) } };
    } catch (err) {
      failed.push({ path: c.path, variant: c.variant, error: ((err as Error).message ?? String(err)).split("\n")[0]! });
      return undefined;
    }
  };
  const platform = `${process.platform}-${process.arch}`;
  const prebuilds = prebuiltAddons(root);
  const sources = sourceAddons(root);
  const failure = (what: string) => {
    const tried = failed.length ? failed.map((f) => `\n  ${relative(f.path)} (${f.variant}): ${f.error}`).join("") : "";
    return new Llama2Error("ERR_ADDON_LOAD", `${what}${tried ? `; tried:${tried}` : ""}`, {
      suggestion:
        "rebuild the addon from source: `npm rebuild llama2-native` in your project (or `npm run build:native` in the package); " +
        "it needs cmake and g++ (plus nvcc for the CUDA backend; LLAMA2_CUDA=OFF for CPU only), or python3 + make for the CPU-only node-gyp fallback. " +
        "`llama2 doctor` shows what was found",
    });
  };

  const forced = (inputs.forced ?? process.env.LLAMA2_ADDON ?? "").trim();
  if (forced && forced !== "auto") {
    let list: AddonCandidate[];
    if (forced === "cuda" || forced === "cpu") list = prebuilds.filter((c) => c.variant === forced);
    else if (forced === "source") list = sources;
    else list = [{ path: path.resolve(forced), variant: forced.includes(`${path.sep}prebuilds${path.sep}`) ? (/\.cuda\./.test(forced) ? "cuda" : "cpu") : "source" }];
    if (list.length === 0) throw failure(`LLAMA2_ADDON=${forced}, but there is no such binary for ${platform} in ${root}`);
    for (const c of list) {
      const r = attempt(c, `LLAMA2_ADDON=${forced}`);
      if (r) return r;
    }
    throw failure(`LLAMA2_ADDON=${forced}: the binary does not load`);
  }

  // A build from source newer than every prebuild: the user rebuilt on purpose.
  const newestPrebuild = Math.max(0, ...prebuilds.map((c) => mtime(c.path)));
  if (prebuilds.length && sources.length && mtime(sources[0]!.path) > newestPrebuild) {
    const r = attempt(sources[0]!, `${relative(sources[0]!.path)} (built from source) is newer than the prebuilt binaries`);
    if (r) return r;
  }
  const cuda = prebuilds.filter((c) => c.variant === "cuda");
  const cpu = prebuilds.filter((c) => c.variant === "cpu");
  if (driver.present) {
    for (const c of cuda) {
      const r = attempt(c, `an NVIDIA driver is present (${driverText(driver)}) and the CUDA prebuild loads`);
      if (r) return r;
    }
  }
  for (const c of cpu) {
    const why = !driver.present
      ? "no NVIDIA driver was found (no /proc/driver/nvidia/version, no libcuda.so.1): the CPU prebuild"
      : cuda.length
        ? `the CUDA prebuild did not load (${failed.find((f) => f.variant === "cuda")?.error}): the CPU prebuild`
        : `an NVIDIA driver is present (${driverText(driver)}) but there is no CUDA prebuild for ${platform}: the CPU prebuild`;
    const r = attempt(c, why);
    if (r) return r;
  }
  const tried = new Set(failed.map((f) => f.path));
  for (const c of sources) {
    if (tried.has(c.path)) continue;
    const r = attempt(c, prebuilds.length ? `no prebuilt binary loaded: the addon built from source (${relative(c.path)})` : `no prebuilt binary for ${platform} in this package: the addon built from source (${relative(c.path)})`);
    if (r) return r;
  }
  // Anything else node-gyp-build finds (e.g. LLAMA2_NATIVE_PREBUILD=<dir>, or a prebuild with a generic name).
  try {
    const ngb = createRequire(import.meta.url)("node-gyp-build") as { resolve(dir: string): string };
    const file = ngb.resolve(root);
    if (!tried.has(file) && !failed.some((f) => f.path === file)) {
      const isPrebuild = file.includes(`${path.sep}prebuilds${path.sep}`);
      const a = attempt({ path: file, variant: "source" }, `found by node-gyp-build (${relative(file)})`);
      if (a) {
        if (isPrebuild) a.selection.variant = a.addon.buildInfo().cudaBuilt ? "cuda" : "cpu";
        return a;
      }
    }
  } catch {
    /* node-gyp-build found nothing either */
  }
  throw failure(
    prebuilds.length || sources.length
      ? `the llama2-native addon could not be loaded on ${platform}`
      : `the llama2-native addon is missing: no prebuilt binary for ${platform} and no build from source (build/Release)`,
  );
}

/** The addon, loaded once. Throws ERR_ADDON_LOAD with a hint when it is missing or broken. */
export function native(): NativeAddon {
  if (addon) return addon;
  const r = selectAddon();
  addon = r.addon;
  selection = r.selection;
  return addon;
}

/** Which binary was loaded (loading it if needed), its variant and why it was chosen. */
export function nativeSelection(): NativeSelection {
  native();
  return selection!;
}

/** Path of the loaded addon binary (prebuilt or built from source). */
export function nativeAddonPath(): string | undefined {
  native();
  return selection?.path;
}
