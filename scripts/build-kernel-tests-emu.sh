#!/usr/bin/env bash
# Builds the kernel test harness for the host SIMT emulator (kernels/emu): build/kernel_tests_emu, which runs
# the CUDA kernels' logic on the CPU (no GPU, no driver; nvcc is not used, only the CUDA headers).
#   scripts/build-kernel-tests-emu.sh && build/kernel_tests_emu --quick [--only=gemv,kv_int8]
#   L2EMU_ORDER=reverse|shuffle build/kernel_tests_emu ...   # another thread order inside barrier intervals
#   L2EMU_CC=86|90 ...                                        # model an sm_86 (A10) or sm_90 (H100) instead of an sm_80
# The Hopper-only file (kernels/*_sm90a.cu: wgmma) is built in; only an L2EMU_CC=90 run selects its kernels.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
CXX="${CXX:-g++}"
CUDA_INC="${CUDA_INC:-}"
if [[ -z "$CUDA_INC" ]]; then
  for d in "${CUDA_HOME:-}/include" /usr/local/cuda/include /usr/include; do
    if [[ -f "$d/cuda_fp16.h" ]]; then CUDA_INC="$d"; break; fi
  done
fi
[[ -n "$CUDA_INC" ]] || { echo "build-kernel-tests-emu: the CUDA headers (cuda_fp16.h) were not found; set CUDA_INC" >&2; exit 2; }
JOBS="${JOBS:-$(nproc 2>/dev/null || echo 2)}"
OUT="build/kernel_tests_emu"
# -fno-strict-aliasing: the kernels read registers through other types (uint4 as half2), which nvcc allows.
FLAGS=(-std=c++17 -O2 -fno-strict-aliasing -g -pthread -DL2_SIMT_EMU -I"$CUDA_INC" -Ikernels -include kernels/emu/simt.h -Wno-unused-result)
OBJ="build/kernel_tests_emu_obj/$(echo "${FLAGS[*]}" | md5sum | cut -c1-8)"
mkdir -p "$OBJ"

SRCS=()
for f in kernels/*.cu kernels/tests/*.cu; do SRCS+=("$f"); done
OBJS=()
fail=0
compile() {  # src obj lang
  if "$CXX" "${FLAGS[@]}" -x "$3" -c "$1" -o "$2.tmp" > "$2.log" 2>&1; then mv "$2.tmp" "$2"; else echo "FAILED: $1"; cat "$2.log"; return 1; fi
}
for src in "${SRCS[@]}" kernels/emu/simt.cc kernels/emu/cuda_rt.cc; do
  obj="$OBJ/$(echo "$src" | tr '/' '_').o"
  OBJS+=("$obj")
  if [[ -f "$obj" && "$obj" -nt "$src" ]] && ! find kernels -name '*.h' -newer "$obj" -o -name '*.cuh' -newer "$obj" | grep -q .; then continue; fi
  echo "  g++ $src"
  compile "$src" "$obj" c++ &
  while (( $(jobs -rp | wc -l) >= JOBS )); do sleep 0.2; done
done
for p in $(jobs -rp); do wait "$p" || fail=1; done
# Objects whose compile failed are missing.
for o in "${OBJS[@]}"; do [[ -f "$o" ]] || fail=1; done
(( fail == 0 )) || exit 1
"$CXX" -c kernels/emu/switch_x86_64.S -o "$OBJ/switch.o"
"$CXX" -pthread -o "$OUT" "${OBJS[@]}" "$OBJ/switch.o"
echo "built $OUT"
# The emulator's own self-test (planted bugs it must report): build/emu_selftest CASE.
"$CXX" "${FLAGS[@]}" -x c++ kernels/emu/selftest.cu -x none "$OBJ/kernels_emu_simt.cc.o" "$OBJ/kernels_emu_cuda_rt.cc.o" "$OBJ/switch.o" -o build/emu_selftest
echo "built build/emu_selftest"
