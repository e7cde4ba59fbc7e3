// Loads the native addon (prebuilt or built by `npm install`) and types its surface.
// Everything above this file talks to the engine only through these types.
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { Llama2Error } from "./errors.js";
import type { ModelConfig } from "./types.js";

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
}

export interface NativeModelSourceInfo {
  format: "hf" | "gguf" | "llama2c";
  path: string;
  name: string;
  config: ModelConfig;
  fileBytes: number;
  /** Storage type of the first layer's wq, e.g. "F16", "Q8_0". */
  fileDtype: string;
  tokenizer?: NativeTokenizerData;
  tokenizerPath?: string;
  tensors?: { name: string; fileName: string; dtype: string; shape: number[]; bytes: number }[];
}

export interface NativeModelInfo extends NativeModelSourceInfo {
  device: "cpu" | "cuda";
  deviceName: string;
  dtype: "f32" | "f16" | "bf16" | "int8";
  weightBytes: number;
  kvCacheBytes: number;
  deviceMemoryUsed: number;
  deviceMemoryTotal: number;
  contextLength: number;
  maxSequences: number;
  kvBlockSize: number;
  kvBlocks: number;
}

/** Per sequence in a step: tokens to append; output 0 = none, -1 = full logits, k > 0 = top-k candidates. */
export interface NativeStepRequest {
  seq: number;
  tokens: Int32Array;
  output: number;
}
export interface Candidates {
  ids: Int32Array;
  logits: Float32Array;
}
export type NativeStepOutput = Float32Array | Candidates | null;

export interface NativeModel {
  /** The loaded model; `withTokenizer` adds a GGUF's vocabulary (large: ask once, at load). */
  info(withTokenizer?: boolean): NativeModelInfo;
  createSequence(): number;
  freeSequence(seq: number): void;
  forkSequence(seq: number): number;
  truncateSequence(seq: number, length: number): void;
  sequenceLength(seq: number): number;
  kvState(): { freeBlocks: number; totalBlocks: number; blockSize: number };
  forward(requests: NativeStepRequest[]): Promise<NativeStepOutput[]>;
  dispose(): void;
}

export interface NativeLoadOptions {
  device?: string;
  deviceIndex?: number;
  dtype?: string;
  contextLength?: number;
  maxSequences?: number;
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
  kvBlockSize: number;
}

export interface NativeAddon {
  readModelInfo(path: string, withTensors?: boolean): NativeModelSourceInfo;
  loadModel(path: string, opts: NativeLoadOptions, onProgress?: (p: NativeProgress) => void, cancel?: Int32Array): Promise<NativeModel>;
  cudaDevices(): CudaDevice[];
  buildInfo(): BuildInfo;
  /** Drops a file's pages from the page cache (cold-load timing); false when the kernel refused. */
  dropPageCache(path: string): boolean;
  /** Device-to-device copy bandwidth, GB/s counting read + write; 0 without CUDA. */
  cudaCopyBandwidth(deviceIndex: number, bytes?: number): number;
}

export const packageRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");

let addon: NativeAddon | undefined;
let addonPath: string | undefined;

/** The addon, loaded once. Throws ERR_ADDON_LOAD with a hint when it is missing or broken. */
export function native(): NativeAddon {
  if (addon) return addon;
  const require = createRequire(import.meta.url);
  try {
    const load = require("node-gyp-build") as ((dir: string) => NativeAddon) & { resolve?: (dir: string) => string };
    addonPath = load.resolve?.(packageRoot);
    addon = load(packageRoot);
  } catch (err) {
    throw new Llama2Error("ERR_ADDON_LOAD", `the llama2-native addon could not be loaded: ${(err as Error).message}`, {
      cause: err,
      suggestion: "run `npm run build:native` in the package directory (needs cmake or python3+make, and g++)",
    });
  }
  return addon;
}

/** Path of the loaded addon binary (prebuilt or built from source). */
export function nativeAddonPath(): string | undefined {
  native();
  return addonPath;
}
