#!/usr/bin/env bash
# Builds a CPU addon with AddressSanitizer + UndefinedBehaviorSanitizer (build-sanitize/, g++ -O1 -g;
# a few minutes on two cores, incremental afterwards) and runs vitest files against it, with libasan and
# libubsan preloaded into node itself (and so into every node the tests spawn: the CLI and examples tests).
# The first finding aborts the process with the sanitizer's report on stderr.
#
#   scripts/sanitizer-test.sh [--build-only] [vitest files/args...]
#   scripts/sanitizer-test.sh test/engine.test.ts test/batching.test.ts
#   scripts/sanitizer-test.sh                      # the default list: every test file that loads the addon
#
# Under the sanitizer the engine is several times slower: LLAMA2_SANITIZER=1 is set for the run, and
# LLAMA2_TEST_TIMEOUT_SCALE (default 5) raises the time limits: vitest's --testTimeout/--hookTimeout, and
# the few tests with a limit of their own read it (test/helpers/shared.ts). The normal suite is untouched.
# test/fuzz-loaders.test.ts has its own runner (scripts/sanitizer-fuzz.sh, which builds with this script).
set -euo pipefail
cd "$(dirname "$0")/.."
build_only=0
if [[ "${1:-}" == "--build-only" ]]; then build_only=1; shift; fi

out=build-sanitize
mkdir -p "$out/obj"
flags=(-DBUILDING_NODE_EXTENSION -DNAPI_CPP_EXCEPTIONS -DNAPI_VERSION=8 -DNODE_ADDON_API_DISABLE_DEPRECATED
  -O1 -g -fPIC -std=gnu++17 -fno-omit-frame-pointer
  -fsanitize=address,undefined,float-cast-overflow -fno-sanitize-recover=undefined,float-cast-overflow -fno-sanitize=vptr
  -Inode_modules/node-api-headers/include -Inode_modules/node-addon-api -I.)
mapfile -t srcs < <(node -e 'const s = require("./native/sources.json"); for (const f of [...s.core, ...s.cpu_only]) console.log(f)')
objs=()
jobs_max=$(nproc 2>/dev/null || echo 2)
for s in "${srcs[@]}"; do
  o="$out/obj/$(echo "$s" | tr / _).o"
  objs+=("$o")
  if [[ ! -f "$o" || "$s" -nt "$o" || -n "$(find native -name '*.h' -newer "$o" -print -quit)" ]]; then
    echo "compiling $s"
    g++ "${flags[@]}" -c "$s" -o "$o.tmp" && mv "$o.tmp" "$o" &
    while (( $(jobs -rp | wc -l) >= jobs_max )); do wait -n || true; done
  fi
done
wait
for o in "${objs[@]}"; do [[ -f "$o" ]] || { echo "compile failed: $o" >&2; exit 1; }; done
lib="$out/llama2_native.node"
if [[ ! -f "$lib" || -n "$(find "${objs[@]}" -newer "$lib" -print -quit)" ]]; then
  g++ -shared -fsanitize=address,undefined -o "$lib" "${objs[@]}" -lpthread
fi
(( build_only )) && exit 0

export LLAMA2_ADDON="$PWD/$lib"
export LLAMA2_SANITIZER=1
# detect_leaks=0: node and V8 keep allocations to exit. allocator_may_return_null=1: an impossible
# allocation throws std::bad_alloc (ERR_OUT_OF_MEMORY) as in a normal build instead of an ASan abort. The
# sanitizer runtimes must be first in the link order, hence LD_PRELOAD (node itself is not instrumented).
export LD_PRELOAD="$(g++ -print-file-name=libasan.so) $(g++ -print-file-name=libubsan.so)"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0:allocator_may_return_null=1:abort_on_error=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
export LLAMA2_TEST_TIMEOUT_SCALE="${LLAMA2_TEST_TIMEOUT_SCALE:-5}"
scale=$LLAMA2_TEST_TIMEOUT_SCALE
files=("$@")
if (( ${#files[@]} == 0 )); then
  files=(test/engine.test.ts test/batching.test.ts test/serving.test.ts test/prefix-cache.test.ts test/api.test.ts
    test/formats.test.ts test/load.test.ts test/load-real.test.ts test/stream.test.ts test/stop.test.ts
    test/server-real.test.ts test/runner.test.ts test/cli.test.ts test/bad-input.test.ts test/synth.test.ts
    test/micro.test.ts test/examples.test.ts test/f32-path.test.ts test/lora.test.ts test/rope-scaling.test.ts
    test/convert.test.ts test/session-state.test.ts test/chat-template-jinja.test.ts test/hf-tokenizer-json.test.ts
    test/infill.test.ts)
fi
exec npx vitest run --testTimeout=$((60000 * scale)) --hookTimeout=$((120000 * scale)) "${files[@]}"
