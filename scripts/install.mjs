#!/usr/bin/env node
// `npm install` hook: use a prebuilt addon when one loads on this machine, otherwise build from
// source with cmake-js (the CUDA backend when nvcc is found, CPU-only otherwise), falling back to
// node-gyp (CPU-only) when cmake is missing. Flags: --force (always build from source).
// Environment: LLAMA2_CUDA=ON|OFF|AUTO, LLAMA2_BUILD_JOBS=N.
import { spawnSync } from "node:child_process";
import { existsSync, readdirSync } from "node:fs";
import { createRequire } from "node:module";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const require = createRequire(import.meta.url);
const force = process.argv.includes("--force");
const log = (m) => process.stderr.write(`llama2-native: ${m}\n`);

function tryLoad() {
  try {
    const addon = require("node-gyp-build")(root);
    return addon.buildInfo();
  } catch (err) {
    return { error: err };
  }
}

function which(cmd) {
  return spawnSync("sh", ["-c", `command -v ${cmd}`], { encoding: "utf8" }).status === 0;
}

function run(cmd, args, env) {
  log(`$ ${cmd} ${args.join(" ")}`);
  const r = spawnSync(cmd, args, { cwd: root, stdio: "inherit", env: { ...process.env, ...env } });
  return r.status === 0;
}

const prebuildDir = path.join(root, "prebuilds", `${process.platform}-${process.arch}`);
if (!force && existsSync(prebuildDir) && readdirSync(prebuildDir).some((f) => f.endsWith(".node"))) {
  const info = tryLoad();
  if (!info.error) {
    log(`using the prebuilt addon (CUDA ${info.cudaBuilt ? "built" : "not built"}${info.cudaBuilt ? `, ${info.cudaAvailable ? "GPU available" : info.cudaUnavailableReason}` : ""})`);
    process.exit(0);
  }
  log(`the prebuilt addon does not load here (${info.error.message}); building from source`);
}

const jobs = process.env.LLAMA2_BUILD_JOBS ?? String(Math.max(1, os.availableParallelism?.() ?? os.cpus().length));
const cudaMode = (process.env.LLAMA2_CUDA ?? "AUTO").toUpperCase();
let built = false;
if (which("cmake")) {
  if (cudaMode !== "OFF" && !which("nvcc") && existsSync("/usr/local/cuda/bin/nvcc")) {
    process.env.PATH = `/usr/local/cuda/bin:${process.env.PATH}`; // CMake finds nvcc on PATH
  }
  log(which("nvcc") && cudaMode !== "OFF" ? "nvcc found: building with the CUDA backend (this takes a few minutes)" : "building the CPU backend (no nvcc)");
  const cmakeJs = path.join(path.dirname(require.resolve("cmake-js/package.json")), "bin", "cmake-js");
  // `rebuild` reconfigures, so a changed toolchain (nvcc appearing) or LLAMA2_CUDA takes effect.
  built = run(process.execPath, [cmakeJs, force ? "rebuild" : "compile", "--log-level", "warn", "-p", jobs, `--CDLLAMA2_CUDA=${cudaMode}`]);
  if (!built) log("cmake-js build failed");
}
if (!built) {
  log("falling back to node-gyp (CPU-only)");
  const npmNodeGyp = process.env.npm_config_node_gyp;
  built = npmNodeGyp ? run(process.execPath, [npmNodeGyp, "rebuild"]) : run("npx", ["--yes", "node-gyp", "rebuild"]);
}
if (!built) {
  log("could not build the native addon; see the output above (needs g++ and cmake, or node-gyp's python3 + make)");
  process.exit(1);
}
const info = tryLoad();
if (info.error) {
  log(`the addon was built but does not load: ${info.error.message}`);
  process.exit(1);
}
log(`addon ready: CUDA ${info.cudaBuilt ? `built (${info.cudaArchitectures})` : "not built"}; ` +
    `${info.cudaAvailable ? "a GPU is available" : `CPU only here (${info.cudaUnavailableReason})`}; CPU SIMD ${info.cpuSimd}`);
