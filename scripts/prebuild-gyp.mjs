#!/usr/bin/env node
// A stand-in for node-gyp that prebuildify calls (`--node-gyp scripts/prebuild-gyp.mjs`), so the
// prebuilt binaries come from the same build definition as `npm install` (CMakeLists.txt through
// cmake-js) instead of binding.gyp. prebuildify runs it in its staging folder as
//   prebuild-gyp.mjs rebuild --target=X --devdir=D --arch=x64 --release|--debug
// and expects the addon in <cwd>/build/Release. --target/--devdir are ignored: the addon uses
// Node-API 8 (cmake-js takes the bundled Node-API headers, so nothing is downloaded).
//
// Environment (set by scripts/prebuild.mjs):
//   LLAMA2_PREBUILD_ROOT     the package root (where CMakeLists.txt is); default: this script's parent
//   LLAMA2_CUDA              ON | OFF (the variant being built)
//   LLAMA2_CUDA_ARCHS        CMAKE_CUDA_ARCHITECTURES override, e.g. "80-real;86-real;89-real;90"
//   LLAMA2_BUILD_JOBS        parallel compile jobs
//   LLAMA2_PREBUILD_CLEAN=1  reconfigure from scratch (cmake-js rebuild) instead of an incremental build
//   LLAMA2_PREBUILD_STATIC_CXX=1  link libstdc++/libgcc statically. Off by default: with GCC 12 on
//                            glibc 2.36 that pulls arc4random/_dl_find_object (glibc >= 2.36), while
//                            the dynamic link needs glibc 2.33 + GLIBCXX_3.4.30 (Ubuntu 22.04, Debian 12).
//                            For older distributions, build the prebuilds on an older distribution.
import { spawnSync } from "node:child_process";
import { createRequire } from "node:module";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const argv = process.argv.slice(2);
const log = (m) => process.stderr.write(`prebuild-gyp: ${m}\n`);
const root = path.resolve(process.env.LLAMA2_PREBUILD_ROOT ?? path.join(path.dirname(fileURLToPath(import.meta.url)), ".."));
const command = argv.find((a) => !a.startsWith("-"));
if (command !== "rebuild" && command !== "build") {
  log(`unsupported command '${command ?? ""}' (prebuildify only asks for 'rebuild')`);
  process.exit(2);
}
const debug = argv.includes("--debug");
const arch = argv.find((a) => a.startsWith("--arch="))?.slice(7);
if (arch && arch !== os.arch()) {
  log(`cross-compiling to ${arch} is not supported (this machine is ${os.arch()})`);
  process.exit(2);
}
const cuda = (process.env.LLAMA2_CUDA ?? "OFF").toUpperCase();
const jobs = process.env.LLAMA2_BUILD_JOBS ?? String(Math.max(1, os.availableParallelism?.() ?? os.cpus().length));
const out = path.resolve(process.cwd(), "build"); // prebuildify reads <cwd>/build/Release

const require = createRequire(import.meta.url);
const cmakeJs = path.join(path.dirname(require.resolve("cmake-js/package.json", { paths: [root] })), "bin", "cmake-js");
// `configure` every time (cheap when nothing changed), so changed -D options always take effect;
// then `build` (incremental), or `rebuild` (from scratch) with LLAMA2_PREBUILD_CLEAN=1.
const common = ["--log-level", "warn", "-d", root, "--out", out, "-p", jobs, `--CDLLAMA2_CUDA=${cuda}`];
if (debug) common.push("--debug");
// (scripts/prebuild.mjs gives the static variant its own build folder: cmake-js cannot unset a cached -D.)
if (process.env.LLAMA2_PREBUILD_STATIC_CXX === "1") common.push("--CDCMAKE_SHARED_LINKER_FLAGS=-static-libstdc++ -static-libgcc");
if (cuda !== "OFF" && process.env.LLAMA2_CUDA_ARCHS) common.push(`--CDCMAKE_CUDA_ARCHITECTURES=${process.env.LLAMA2_CUDA_ARCHS}`);
const steps = process.env.LLAMA2_PREBUILD_CLEAN === "1" ? ["rebuild"] : ["configure", "build"];
for (const step of steps) {
  log(`cmake-js ${step} ${common.join(" ")}`);
  // cmake-js reads binary.napi_versions from the package.json of its working directory: run it in the root.
  const r = spawnSync(process.execPath, [cmakeJs, step, ...common], { cwd: root, stdio: "inherit" });
  if (r.status !== 0) process.exit(r.status ?? 1);
}
