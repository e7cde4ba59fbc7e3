#!/usr/bin/env bash
# Proves the npm package works for a user: packs llama2-native the way it is published, installs the
# tarball into an empty project whose PATH has node/npm/npx/sh and nothing else (no cmake, g++, make,
# python, nvcc: a prebuilt binary must be used, nothing compiled), then runs a smoke test there:
# import { Llama2 }, the demo model, a few generated tokens, a chat stream, `llama2 doctor`,
# `llama2 --help`, an example, and a TypeScript consumer type-checked against the published types.
#
#   bash scripts/pack-smoke.sh            (npm run pack:smoke)
#
# It never touches the checkout's build/, dist/ or prebuilds/: the package is staged in a temp dir
# (the files git knows, tracked or not ignored), TypeScript is compiled and the prebuilds are made
# there (scripts/prebuild.mjs), and `npm pack` runs there.
#
# Environment:
#   SMOKE_CPU_ONLY=1        only the CPU prebuild (default: also the CUDA one when nvcc is found; minutes)
#   SMOKE_PREBUILDS=DIR     use the prebuilds in DIR (e.g. ./prebuilds/linux-x64) instead of building them
#   SMOKE_MAX_TARBALL_MB=N  fail above this tarball size (default 10 CPU-only, 150 with CUDA)
#   SMOKE_OUT=DIR           copy the tarball and summary.json there
#   SMOKE_KEEP=1            keep the temp dir (printed) for inspection
#   SMOKE_JOBS=N            compile jobs for the prebuilds
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/llama2-pack-smoke.XXXXXX")
STAGE=$WORK/pkg
APP=$WORK/app
BIN=$WORK/bin
T0=$(date +%s)
export WORK STAGE

say() { printf '== %s\n' "$*"; }
die() { printf 'pack-smoke: FAIL: %s\n' "$*" >&2; exit 1; }
cleanup() {
  local rc=$?
  if [ "${SMOKE_KEEP:-0}" = 1 ]; then echo "pack-smoke: kept $WORK"; else rm -rf "$WORK"; fi
  if [ $rc -eq 0 ]; then
    echo "pack-smoke: OK ($(( $(date +%s) - T0 ))s)"
  else
    echo "pack-smoke: FAILED (exit $rc)${SMOKE_KEEP:+}$([ "${SMOKE_KEEP:-0}" = 1 ] || echo '; SMOKE_KEEP=1 keeps the temp dir')"
  fi
}
trap cleanup EXIT

[ -d "$ROOT/node_modules/typescript" ] && [ -d "$ROOT/node_modules/prebuildify" ] && [ -d "$ROOT/node_modules/cmake-js" ] ||
  die "run npm install in $ROOT first (the smoke test builds with its devDependencies)"

# ---------------------------------------------------------------------------------------------- stage
say "staging the package in $STAGE"
mkdir -p "$STAGE"
node - "$ROOT" "$STAGE" <<'EOF'
const { execFileSync } = require("node:child_process");
const fs = require("node:fs");
const path = require("node:path");
const [root, stage] = process.argv.slice(2);
let files;
try {
  files = execFileSync("git", ["-C", root, "ls-files", "-z", "-co", "--exclude-standard"], { encoding: "utf8", maxBuffer: 1 << 26 }).split("\0").filter(Boolean);
} catch {
  const skip = new Set(["node_modules", ".git", "build", "dist", "prebuilds", "tmp", "docs"]);
  files = [];
  const walk = (rel) => {
    for (const e of fs.readdirSync(path.join(root, rel), { withFileTypes: true })) {
      const r = path.join(rel, e.name);
      if (e.isDirectory()) { if (!skip.has(r) && !r.startsWith("build-")) walk(r); } else files.push(r);
    }
  };
  walk("");
}
let n = 0;
for (const f of files) {
  const src = path.join(root, f);
  if (!fs.existsSync(src) || fs.statSync(src).isDirectory()) continue; // deleted in the working tree
  fs.mkdirSync(path.dirname(path.join(stage, f)), { recursive: true });
  fs.copyFileSync(src, path.join(stage, f));
  fs.chmodSync(path.join(stage, f), fs.statSync(src).mode);
  n++;
}
console.log(`staged ${n} files`);
EOF
rm -rf "$STAGE/prebuilds" "$STAGE/dist" "$STAGE/build"
ln -s "$ROOT/node_modules" "$STAGE/node_modules" # build tools only; npm pack never includes node_modules

say "compiling TypeScript"
(cd "$STAGE" && node node_modules/typescript/bin/tsc -p tsconfig.json)

# ------------------------------------------------------------------------------------------ prebuilds
CUDA=0
if [ -n "${SMOKE_PREBUILDS:-}" ]; then
  say "using the prebuilds in $SMOKE_PREBUILDS"
  mkdir -p "$STAGE/prebuilds/linux-x64"
  cp "$SMOKE_PREBUILDS"/llama2-native.*.node "$SMOKE_PREBUILDS"/llama2-native.*.json "$STAGE/prebuilds/linux-x64/" 2>/dev/null || true
  ls "$STAGE"/prebuilds/linux-x64/llama2-native.cpu.*.node >/dev/null 2>&1 || die "no CPU prebuild in $SMOKE_PREBUILDS"
  ls "$STAGE"/prebuilds/linux-x64/llama2-native.cuda.*.node >/dev/null 2>&1 && CUDA=1
else
  variants=(--cpu)
  if [ "${SMOKE_CPU_ONLY:-0}" != 1 ] && { command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ]; }; then
    variants+=(--cuda)
    CUDA=1
  fi
  say "building prebuilds: ${variants[*]}"
  (cd "$STAGE" && node scripts/prebuild.mjs "${variants[@]}" ${SMOKE_JOBS:+--jobs "$SMOKE_JOBS"})
fi
ls -l "$STAGE"/prebuilds/linux-x64/

# --------------------------------------------------------------------------------------------- pack
say "npm pack"
(cd "$STAGE" && npm pack --ignore-scripts --json --pack-destination "$WORK" > "$WORK/pack.json" 2> "$WORK/pack.log") ||
  { cat "$WORK/pack.log" >&2; die "npm pack failed"; }
MAX_MB=${SMOKE_MAX_TARBALL_MB:-$([ $CUDA = 1 ] && echo 150 || echo 10)}
node - "$WORK/pack.json" "$MAX_MB" "$CUDA" <<'EOF'
const fs = require("node:fs");
const [file, maxMb, cuda] = process.argv.slice(2);
const p = JSON.parse(fs.readFileSync(file, "utf8"))[0];
const files = p.files.map((f) => f.path);
const must = [
  "package.json", "dist/index.js", "dist/index.d.ts", "dist/types.d.ts", "dist/cli/main.js", "dist/cli/commands/doctor.js",
  "scripts/install.mjs", "CMakeLists.txt", "binding.gyp", "native/sources.json", "native/addon/addon.cc",
  "kernels/kernels.h", "examples/minimal-completion.mjs",
];
const sources = JSON.parse(fs.readFileSync(process.env.STAGE + "/native/sources.json", "utf8"));
must.push(...sources.core, ...sources.cpu_only, ...sources.cuda);
const missing = must.filter((m) => !files.includes(m));
if (!files.some((f) => /^prebuilds\/linux-x64\/llama2-native\.cpu\.[a-z.]*node$/.test(f))) missing.push("prebuilds/linux-x64/llama2-native.cpu.*.node");
if (cuda === "1" && !files.some((f) => /^prebuilds\/linux-x64\/llama2-native\.cuda\.[a-z.]*node$/.test(f))) missing.push("prebuilds/linux-x64/llama2-native.cuda.*.node");
const unwanted = files.filter((f) => /^(test|bench|lib|\.ci|tmp|build|build-[^/]*|docs|node_modules|kernels\/tests)\//.test(f) || /\.(map|tsbuildinfo|o)$/.test(f) || /^(NOTES|tsconfig|vitest)/.test(f));
const mb = (n) => (n / 2 ** 20).toFixed(2);
console.log(`tarball ${p.filename}: ${mb(p.size)} MiB packed, ${mb(p.unpackedSize)} MiB unpacked, ${p.entryCount} files`);
const big = p.files.filter((f) => f.size > 256 * 1024).map((f) => `${f.path} (${mb(f.size)} MiB)`);
if (big.length) console.log(`largest: ${big.join(", ")}`);
fs.writeFileSync(process.env.WORK + "/tarball.txt", p.filename);
fs.writeFileSync(process.env.WORK + "/summary.json", JSON.stringify({ tarball: p.filename, sizeBytes: p.size, unpackedBytes: p.unpackedSize, files: p.entryCount, cuda: cuda === "1" }, null, 2));
let bad = false;
if (missing.length) { console.error(`missing from the package: ${missing.join(", ")}`); bad = true; }
if (unwanted.length) { console.error(`should not be in the package: ${unwanted.slice(0, 20).join(", ")}${unwanted.length > 20 ? ", ..." : ""}`); bad = true; }
if (p.size > Number(maxMb) * 2 ** 20) { console.error(`the tarball is ${mb(p.size)} MiB, over SMOKE_MAX_TARBALL_MB=${maxMb}`); bad = true; }
process.exit(bad ? 1 : 0);
EOF
TARBALL=$WORK/$(cat "$WORK/tarball.txt")

# ----------------------------------------------------------------------------- install, no build tools
say "installing the tarball in an empty project, PATH without build tools"
mkdir -p "$BIN" "$APP" "$WORK/home"
for t in node npm npx sh; do ln -s "$(command -v $t)" "$BIN/$t"; done # npm runs install scripts with sh
for t in cmake g++ gcc c++ cc make python3 python nvcc ninja; do
  PATH=$BIN command -v "$t" >/dev/null 2>&1 && die "$t is reachable on the restricted PATH"
done
NPM_CACHE=$(npm config get cache 2>/dev/null || echo "$HOME/.npm")
# A minimal environment: nothing inherited from an `npm run` parent (npm_config_*, node_modules/.bin on PATH).
clean_env=(env -i "HOME=$HOME" "PATH=$BIN" "TMPDIR=${TMPDIR:-/tmp}" "LANG=${LANG:-C.UTF-8}" "npm_config_cache=$NPM_CACHE"
  "npm_config_update_notifier=false" "npm_config_fund=false" "npm_config_audit=false" "LLAMA2_HOME=$WORK/home")
[ -n "${CUDA_VISIBLE_DEVICES:-}" ] && clean_env+=("CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES")
cat > "$APP/package.json" <<'EOF'
{ "name": "llama2-native-smoke", "version": "1.0.0", "private": true, "type": "module" }
EOF
t_install=$(date +%s)
(cd "$APP" && "${clean_env[@]}" npm install "$TARBALL" --prefer-offline --foreground-scripts --no-audit --no-fund > "$WORK/install.log" 2>&1) ||
  { cat "$WORK/install.log" >&2; die "npm install of the tarball failed"; }
echo "installed in $(( $(date +%s) - t_install ))s"
grep 'llama2-native:' "$WORK/install.log" || true
grep -q 'using the prebuilt addon' "$WORK/install.log" || { cat "$WORK/install.log" >&2; die "the install hook did not use the prebuilt addon"; }
PKG=$APP/node_modules/llama2-native
[ -e "$PKG/build" ] && die "the install compiled something ($PKG/build exists)"

# ------------------------------------------------------------------------------------------ smoke
say "smoke test"
cat > "$APP/smoke.mjs" <<'EOF'
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import path from "node:path";
import * as api from "llama2-native";
import { Llama2 } from "llama2-native";

const { nativeSelection, ensureDemoModel } = api;
const root = path.dirname(createRequire(import.meta.url).resolve("llama2-native/package.json"));

const sel = nativeSelection();
console.log(`binary: ${path.relative(root, sel.path)} [${sel.variant}]: ${sel.reason}`);
assert.ok(sel.variant === "cpu" || sel.variant === "cuda", `a prebuild must be used, got ${sel.variant}`);
assert.ok(sel.path.startsWith(path.join(root, "prebuilds")), sel.path);
const expect = process.env.SMOKE_EXPECT_VARIANT;
if (expect) assert.equal(sel.variant, expect);

const model = await ensureDemoModel();
const llama = await Llama2.load(model, { contextLength: 256, maxSequences: 2 });
console.log(`loaded ${path.basename(model)} on ${llama.info.deviceName}`);
const r = await llama.generate("Once upon a time", { maxTokens: 8, temperature: 0 }).result;
assert.equal(r.stats.completionTokens, r.tokenIds.length);
assert.ok(r.tokenIds.length > 0 && r.tokenIds.length <= 8);
const again = await llama.generate("Once upon a time", { maxTokens: 8, temperature: 0 }).result;
assert.deepEqual(again.tokenIds, r.tokenIds, "greedy decoding is deterministic");
let chunks = 0;
for await (const c of llama.chat([{ role: "user", content: "Hi" }], { maxTokens: 4, seed: 1 })) chunks += c.tokenIds.length;
assert.ok(chunks > 0);
await llama.dispose();
console.log(`generated ${r.tokenIds.length} tokens: ${JSON.stringify(r.text)}; chat streamed ${chunks} tokens`);
console.log("SMOKE OK");
EOF
(cd "$APP" && "${clean_env[@]}" node smoke.mjs) || die "smoke.mjs failed"
if [ $CUDA = 1 ]; then
  # The CUDA binary must load even without a GPU (static CUDA runtime; it runs on the CPU then).
  (cd "$APP" && "${clean_env[@]}" LLAMA2_ADDON=cuda SMOKE_EXPECT_VARIANT=cuda node smoke.mjs) || die "smoke.mjs with the CUDA prebuild failed"
fi

say "llama2 doctor"
(cd "$APP" && "${clean_env[@]}" node_modules/.bin/llama2 doctor) || die "llama2 doctor failed"
(cd "$APP" && "${clean_env[@]}" node_modules/.bin/llama2 doctor --json > "$WORK/doctor.json") || die "llama2 doctor --json failed"
node -e '
const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
if (!r.addon.loaded || !["cpu", "cuda"].includes(r.addon.variant)) { console.error("doctor: no prebuild loaded", r.addon); process.exit(1); }
' "$WORK/doctor.json" || die "doctor --json does not report a loaded prebuild"

say "llama2 --help"
(cd "$APP" && "${clean_env[@]}" node_modules/.bin/llama2 --help > "$WORK/help.txt") || die "llama2 --help failed"
cat "$WORK/help.txt"
grep -q "doctor" "$WORK/help.txt" || die "llama2 --help does not list doctor"

say "an example from the package"
(cd "$APP" && "${clean_env[@]}" node node_modules/llama2-native/examples/minimal-completion.mjs --max-tokens 4) || die "examples/minimal-completion.mjs failed"

say "type-checking a TypeScript consumer against the published types"
mkdir -p "$APP/ts"
node - "$PKG/dist/types.d.ts" "$APP/ts/consumer.ts" <<'EOF'
const fs = require("node:fs");
const [typesFile, out] = process.argv.slice(2);
const names = [...fs.readFileSync(typesFile, "utf8").matchAll(/^export (?:interface|type) (\w+)/gm)].map((m) => m[1]);
fs.writeFileSync(out, `// Every type of lib/types.ts must be importable from the package root.
import { Llama2, ChatSession, Tokenizer, Sampler, Llama2Error, InvalidArgumentError, isLlama2Error, getChatTemplate, registerChatTemplate, nativeAddon } from "llama2-native";
import type { ${names.join(", ")}, ChatOptions, ChatTemplate, ErrorCode, BuildInfo, CudaDevice } from "llama2-native";
export type All = [${names.join(", ")}, ChatOptions, ChatTemplate, ErrorCode, BuildInfo, CudaDevice];
export async function complete(model: string, opts: LoadOptions): Promise<string> {
  const llama: Llama2 = await Llama2.load(model, opts);
  const stream: GenerationStream = llama.generate("Hello", { maxTokens: 4 } satisfies GenerateOptions);
  for await (const chunk of stream) { const c: GenerationChunk = chunk; void c; }
  const session: ChatSession = llama.createSession({ systemPrompt: "x" });
  const messages: ChatMessage[] = [{ role: "user", content: "hi" }];
  void messages; void session; void Tokenizer; void Sampler; void getChatTemplate; void registerChatTemplate;
  const info: BuildInfo = nativeAddon().buildInfo(); void info;
  try { return (await stream.result).text; } catch (e) { if (isLlama2Error(e) || e instanceof Llama2Error || e instanceof InvalidArgumentError) throw e; throw e; }
}
`);
console.log(`consumer imports ${names.length} types from lib/types.ts`);
EOF
cat > "$APP/ts/tsconfig.json" <<EOF
{ "compilerOptions": { "module": "NodeNext", "moduleResolution": "NodeNext", "target": "ES2022", "strict": true, "noEmit": true,
    "types": ["node"], "typeRoots": ["$ROOT/node_modules/@types"], "lib": ["ES2022", "DOM"] },
  "files": ["consumer.ts"] }
EOF
(cd "$APP/ts" && "${clean_env[@]}" node "$ROOT/node_modules/typescript/bin/tsc" -p tsconfig.json) || die "the consumer does not type-check against dist/index.d.ts"

node -e '
const fs = require("fs"); const s = JSON.parse(fs.readFileSync(process.argv[1], "utf8"));
s.elapsedSeconds = Number(process.argv[2]); fs.writeFileSync(process.argv[1], JSON.stringify(s, null, 2));
console.log(JSON.stringify(s));' "$WORK/summary.json" "$(( $(date +%s) - T0 ))"
if [ -n "${SMOKE_OUT:-}" ]; then
  mkdir -p "$SMOKE_OUT" && cp "$TARBALL" "$WORK/summary.json" "$SMOKE_OUT/"
fi
