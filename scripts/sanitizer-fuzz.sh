#!/usr/bin/env bash
# Runs the loader fuzz test (test/fuzz-loaders.test.ts) against a CPU addon built with AddressSanitizer
# and UndefinedBehaviorSanitizer, aborting on the first finding (out-of-bounds reads, float->int casts out
# of range, signed overflow, misaligned loads). x86 survives much undefined behaviour silently; this
# build does not, and the fuzz harness reports the abort as a failing case with the sanitizer's message.
#
#   scripts/sanitizer-fuzz.sh [vitest args...]      e.g. LLAMA2_FUZZ_SEED=7 LLAMA2_FUZZ_SCALE=3 scripts/sanitizer-fuzz.sh
#
# The addon goes to build-sanitize/ (g++ with libasan/libubsan; a few minutes on two cores).
set -euo pipefail
cd "$(dirname "$0")/.."
out=build-sanitize
mkdir -p "$out/obj"
flags=(-DBUILDING_NODE_EXTENSION -DNAPI_CPP_EXCEPTIONS -DNAPI_VERSION=8 -DNODE_ADDON_API_DISABLE_DEPRECATED
  -O1 -g -fPIC -std=gnu++17 -fno-omit-frame-pointer
  -fsanitize=address,undefined,float-cast-overflow -fno-sanitize-recover=undefined,float-cast-overflow -fno-sanitize=vptr
  -Inode_modules/node-api-headers/include -Inode_modules/node-addon-api -I.)
mapfile -t srcs < <(node -e 'const s = require("./native/sources.json"); for (const f of [...s.core, ...s.cpu_only]) console.log(f)')
objs=()
for s in "${srcs[@]}"; do
  o="$out/obj/$(echo "$s" | tr / _).o"
  objs+=("$o")
  if [[ ! -f "$o" || "$s" -nt "$o" || -n "$(find native -name '*.h' -newer "$o" -print -quit)" ]]; then
    echo "compiling $s"
    g++ "${flags[@]}" -c "$s" -o "$o"
  fi
done
g++ -shared -fsanitize=address,undefined -o "$out/llama2_native.node" "${objs[@]}" -lpthread

export LLAMA2_ADDON="$PWD/$out/llama2_native.node"
export LLAMA2_FUZZ_PRELOAD="$(g++ -print-file-name=libasan.so) $(g++ -print-file-name=libubsan.so)"
export ASAN_OPTIONS=detect_leaks=0
exec npx vitest run test/fuzz-loaders.test.ts "$@"
