#!/usr/bin/env bash
# Runs the loader fuzz test (test/fuzz-loaders.test.ts) against a CPU addon built with AddressSanitizer
# and UndefinedBehaviorSanitizer, aborting on the first finding (out-of-bounds reads, float->int casts out
# of range, signed overflow, misaligned loads). x86 survives much undefined behaviour silently; this
# build does not, and the fuzz harness reports the abort as a failing case with the sanitizer's message.
#
#   scripts/sanitizer-fuzz.sh [vitest args...]      e.g. LLAMA2_FUZZ_SEED=7 LLAMA2_FUZZ_SCALE=3 scripts/sanitizer-fuzz.sh
#
# The addon goes to build-sanitize/ (g++ with libasan/libubsan; a few minutes on two cores). To run the
# other test files against it, see scripts/sanitizer-test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
# The build is scripts/sanitizer-test.sh's (one set of flags for every sanitizer run).
scripts/sanitizer-test.sh --build-only
out=build-sanitize
lib="$out/llama2_native.node"

export LLAMA2_ADDON="$PWD/$lib"
export LLAMA2_FUZZ_PRELOAD="$(g++ -print-file-name=libasan.so) $(g++ -print-file-name=libubsan.so)"
export ASAN_OPTIONS=detect_leaks=0
exec npx vitest run test/fuzz-loaders.test.ts "$@"
