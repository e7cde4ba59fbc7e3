#!/usr/bin/env node
// Makes the prebuilt addons that ship in the npm package, with prebuildify driving cmake-js (through
// scripts/prebuild-gyp.mjs), so there is one build definition (CMakeLists.txt + native/sources.json):
//
//   prebuilds/<platform>-<arch>/llama2-native.cpu.glibc.node    CPU backend only
//   prebuilds/<platform>-<arch>/llama2-native.cuda.glibc.node   CUDA backend (SASS sm_80/86/89/90 + PTX,
//                                                               static CUDA runtime) + the CPU backend
//
// each with a manifest beside it (<name>.json: size, sha256, CUDA version and architectures, newest
// glibc/libstdc++ symbols needed, linked libraries). lib/native.ts picks one at run time; see its header.
//
// Usage: node scripts/prebuild.mjs [--cpu] [--cuda] [--clean] [--jobs N] [--cuda-archs LIST] [--out DIR]
//   no variant flag: the CPU prebuild, plus the CUDA one when nvcc is found
//   --cuda          the CUDA prebuild (fails without nvcc); --cpu: the CPU one
//   --clean         configure from scratch (use for release builds)
//   --cuda-archs    CMAKE_CUDA_ARCHITECTURES (default: CMakeLists.txt's "80-real;86-real;89-real;90")
//   --out DIR       where prebuilds/ goes (default: the package root)
// Builds happen in build-prebuild/<variant>/ (never in build/, which `npm install` owns).
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const require = createRequire(import.meta.url);
const log = (m) => process.stderr.write(`prebuild: ${m}\n`);

function usage(code) {
  process.stderr.write(readFileSync(fileURLToPath(import.meta.url), "utf8").split("\n").filter((l) => l.startsWith("//")).slice(10, 17).map((l) => l.slice(3)).join("\n") + "\n");
  process.exit(code);
}

const argv = process.argv.slice(2);
const opts = { cpu: false, cuda: false, clean: false, jobs: process.env.LLAMA2_BUILD_JOBS, archs: process.env.LLAMA2_CUDA_ARCHS, out: root };
for (let i = 0; i < argv.length; i++) {
  const a = argv[i];
  const value = () => {
    const v = a.includes("=") ? a.slice(a.indexOf("=") + 1) : argv[++i];
    if (v === undefined) {
      log(`${a} needs a value`);
      usage(2);
    }
    return v;
  };
  if (a === "--cpu") opts.cpu = true;
  else if (a === "--cuda") opts.cuda = true;
  else if (a === "--clean") opts.clean = true;
  else if (a.startsWith("--jobs")) opts.jobs = value();
  else if (a.startsWith("--cuda-archs")) opts.archs = value();
  else if (a.startsWith("--out")) opts.out = path.resolve(value());
  else if (a === "--help" || a === "-h") usage(0);
  else {
    log(`unknown argument ${a}`);
    usage(2);
  }
}

function sh(cmd, args, o = {}) {
  const r = spawnSync(cmd, args, { encoding: "utf8", ...o });
  return r.status === 0 ? r.stdout : undefined;
}
function findNvcc() {
  if (sh("sh", ["-c", "command -v nvcc"])) return "nvcc";
  for (const p of ["/usr/local/cuda/bin/nvcc", "/opt/cuda/bin/nvcc"]) if (existsSync(p)) return p;
  return undefined;
}

const nvcc = findNvcc();
if (!opts.cpu && !opts.cuda) {
  opts.cpu = true;
  opts.cuda = nvcc !== undefined;
  if (!opts.cuda) log("nvcc not found: building the CPU prebuild only (pass --cuda to require the CUDA one)");
}
if (opts.cuda && !nvcc) {
  log("--cuda: nvcc was not found (put the CUDA toolkit's bin/ on PATH)");
  process.exit(1);
}
if (process.platform !== "linux") log(`warning: prebuilds are made and tested for linux only (this is ${process.platform})`);

const platformDir = path.join(opts.out, "prebuilds", `${process.platform}-${process.arch}`);
const libc = existsSync("/etc/alpine-release") ? "musl" : "glibc";
const wrapper = path.join(root, "scripts", "prebuild-gyp.mjs");
chmodSync(wrapper, 0o755); // prebuildify executes it directly
const prebuildify = require("prebuildify");

function build(variant) {
  const staticCxx = process.env.LLAMA2_PREBUILD_STATIC_CXX === "1"; // see prebuild-gyp.mjs
  const stage = path.join(root, "build-prebuild", `${variant}${staticCxx ? "-static-cxx" : ""}`);
  mkdirSync(stage, { recursive: true });
  const env = {
    LLAMA2_PREBUILD_ROOT: root,
    LLAMA2_CUDA: variant === "cuda" ? "ON" : "OFF",
    LLAMA2_PREBUILD_CLEAN: opts.clean ? "1" : "0",
    ...(opts.jobs && { LLAMA2_BUILD_JOBS: String(opts.jobs) }),
    ...(opts.archs && { LLAMA2_CUDA_ARCHS: opts.archs }),
  };
  if (variant === "cuda" && nvcc !== "nvcc") env.PATH = `${path.dirname(nvcc)}:${process.env.PATH}`;
  Object.assign(process.env, env); // prebuildify passes process.env to the wrapper
  log(`building the ${variant} prebuild in ${path.relative(root, stage)}/ ...`);
  const t0 = Date.now();
  return new Promise((resolve, reject) => {
    prebuildify(
      {
        cwd: stage,
        out: opts.out,
        napi: true,
        targets: [`node@${process.versions.node}`],
        name: `llama2-native.${variant}`,
        tagLibc: true,
        strip: true,
        nodeGyp: wrapper,
      },
      (err) => {
        if (err) return reject(err);
        const file = path.join(platformDir, `llama2-native.${variant}.${libc}.node`);
        if (!existsSync(file)) return reject(new Error(`prebuildify did not produce ${file}`));
        log(`built ${path.relative(root, file)} in ${((Date.now() - t0) / 1000).toFixed(0)}s`);
        resolve(file);
      },
    );
  });
}

function maxVersion(list) {
  const key = (v) => v.split(".").map((n) => n.padStart(5, "0")).join(".");
  return list.sort((a, b) => (key(a) < key(b) ? -1 : 1)).pop();
}

function inspect(file, variant) {
  const bytes = statSync(file).size;
  const sha256 = createHash("sha256").update(readFileSync(file)).digest("hex");
  // Load it in a fresh process: the binary must load and be the variant its name says.
  const probe = spawnSync(process.execPath, ["-e", `process.stdout.write(JSON.stringify(require(${JSON.stringify(file)}).buildInfo()))`], { encoding: "utf8" });
  if (probe.status !== 0) throw new Error(`${file} does not load: ${probe.stderr.trim()}`);
  const info = JSON.parse(probe.stdout);
  if (info.cudaBuilt !== (variant === "cuda")) throw new Error(`${file}: cudaBuilt is ${info.cudaBuilt}, expected the ${variant} variant`);
  const dyn = sh("readelf", ["-d", "-W", file]) ?? "";
  const needed = [...dyn.matchAll(/\(NEEDED\)\s+Shared library: \[([^\]]+)\]/g)].map((m) => m[1]);
  if (needed.some((n) => /libcudart|libcublas/.test(n))) throw new Error(`${file} links ${needed.join(", ")}: the CUDA runtime must be static`);
  const syms = sh("readelf", ["-V", "-W", file]) ?? "";
  const glibc = maxVersion([...new Set([...syms.matchAll(/GLIBC_(\d+(?:\.\d+)+)/g)].map((m) => m[1]))]);
  const glibcxx = maxVersion([...new Set([...syms.matchAll(/GLIBCXX_(\d+(?:\.\d+)+)/g)].map((m) => m[1]))]);
  let cudaVersion;
  if (variant === "cuda") cudaVersion = /release (\d+\.\d+)/.exec(sh(nvcc, ["--version"]) ?? "")?.[1];
  const major = Number(cudaVersion?.split(".")[0]);
  const minDriver = variant === "cuda" ? ({ 13: "580", 12: "525", 11: "450" })[major] : undefined;
  const gitCommit = sh("git", ["-C", root, "rev-parse", "HEAD"])?.trim();
  const manifest = {
    file: path.basename(file),
    variant,
    bytes,
    sha256,
    builtAt: new Date().toISOString(),
    node: process.version,
    napiVersion: 8,
    ...(cudaVersion && { cudaVersion }),
    ...(info.cudaArchitectures && { cudaArchitectures: info.cudaArchitectures }),
    ...(minDriver && { minDriver }),
    ...(glibc && { glibc }),
    ...(glibcxx && { glibcxx }),
    needed,
    ...(gitCommit && { gitCommit }),
  };
  writeFileSync(file.replace(/\.node$/, ".json"), JSON.stringify(manifest, null, 2) + "\n");
  return manifest;
}

const variants = [...(opts.cpu ? ["cpu"] : []), ...(opts.cuda ? ["cuda"] : [])];
try {
  for (const v of variants) {
    const file = await build(v);
    const m = inspect(file, v);
    log(
      `${m.file}: ${(m.bytes / 2 ** 20).toFixed(1)} MiB, loads, ` +
        (v === "cuda" ? `CUDA ${m.cudaVersion ?? "?"} for ${m.cudaArchitectures} (driver >= ${m.minDriver ?? "?"}), ` : "") +
        `needs glibc ${m.glibc ?? "?"} / libstdc++ ${m.glibcxx ?? "?"}; links ${m.needed.join(" ")}`,
    );
  }
} catch (err) {
  log(`failed: ${err.message ?? err}`);
  process.exit(1);
}
