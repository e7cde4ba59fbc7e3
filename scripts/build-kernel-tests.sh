#!/usr/bin/env bash
# Builds the standalone CUDA kernel test / benchmark harness: build/kernel_tests.
#   scripts/build-kernel-tests.sh            # SASS for sm_80, sm_86, sm_89, sm_90 + compute_90 PTX
#   ARCHS="90" scripts/build-kernel-tests.sh # faster iteration: only the listed SASS targets (+ PTX of the last)
#   JOBS=16 VERBOSE=1 ...                    # parallel nvcc processes; VERBOSE=1 prints ptxas -v
#   KERNELS="gemm attention_prefill" ...     # only these kernels/*.cu (default: every kernels/*.cu present)
# Compiles every kernels/*.cu (files other people add are picked up automatically) and kernels/tests/*.cu,
# one object per file, in parallel, then links with the static CUDA runtime. kernels/*_sm90a.cu (Hopper-only
# wgmma code, e.g. gemm_sm90a.cu) are compiled for sm_90a alone, and only when 90 is among ARCHS; the rest of
# the code reaches them through weak symbols, so leaving them out leaves a working mma.sync-only build.
# Run: build/kernel_tests [--quick] [--bench] [--tune] [--only=gemm,attention_prefill]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
NVCC="${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}"
ARCHS="${ARCHS:-80 86 89 90}"
JOBS="${JOBS:-$(nproc 2>/dev/null || echo 2)}"
OUT="build/kernel_tests"

GENCODE=()
last=""
for a in $ARCHS; do
  GENCODE+=("-gencode" "arch=compute_${a},code=sm_${a}")
  last="$a"
done
GENCODE+=("-gencode" "arch=compute_${last},code=compute_${last}")  # PTX for newer GPUs

# --use_fast_math as the addon compiles kernels/ (CMakeLists.txt): the tests check what ships.
FLAGS=(-O3 -std=c++17 -lineinfo --use_fast_math -Ikernels -Xptxas -warn-spills --expt-relaxed-constexpr -Xcompiler -pthread)
if [[ "${VERBOSE:-0}" == "1" ]]; then FLAGS+=(-Xptxas -v); fi
# Objects per architecture list and compiler flags (a flag change rebuilds everything).
OBJ="build/kernel_tests_obj/$(echo "$ARCHS" | tr ' ' '_')_$(echo "${FLAGS[*]}" | md5sum | cut -c1-8)"
mkdir -p "$OBJ"

SRCS=()
if [[ -n "${KERNELS:-}" ]]; then
  for k in $KERNELS; do SRCS+=("kernels/${k}.cu"); done
else
  for f in kernels/*.cu; do [[ -e "$f" ]] && SRCS+=("$f"); done
fi
for f in kernels/tests/*.cu; do [[ -e "$f" ]] && SRCS+=("$f"); done

echo "nvcc: $("$NVCC" --version | tail -1)"
echo "archs: $ARCHS (+ compute_${last} PTX), jobs: $JOBS"
OBJS=()
pids=()
fail=0
for src in "${SRCS[@]}"; do
  GC=("${GENCODE[@]}")
  if [[ "$src" == *_sm90a.cu ]]; then  # Hopper-only (wgmma) translation units: sm_90a SASS only, when 90 is built
    [[ " $ARCHS " == *" 90 "* ]] || continue
    GC=("-gencode" "arch=compute_90a,code=sm_90a")
  fi
  obj="$OBJ/$(echo "$src" | tr '/' '_' | sed 's/\.cu$/.o/')"
  OBJS+=("$obj")
  # Rebuild when the source or any header it may include is newer than the object.
  if [[ -f "$obj" && "$obj" -nt "$src" ]] && ! find kernels -name '*.h' -newer "$obj" -o -name '*.cuh' -newer "$obj" | grep -q .; then
    continue
  fi
  echo "  nvcc $src"
  ( "$NVCC" "${FLAGS[@]}" "${GC[@]}" -c "$src" -o "$obj.tmp" > "$obj.log" 2>&1 && mv "$obj.tmp" "$obj" ) &
  pids+=("$!:$src:$obj")
  while (( $(jobs -rp | wc -l) >= JOBS )); do sleep 0.2; done
done
for entry in "${pids[@]}"; do
  pid="${entry%%:*}"; rest="${entry#*:}"; src="${rest%%:*}"; obj="${rest#*:}"
  if ! wait "$pid"; then
    echo "FAILED: $src"; fail=1
  fi
  if [[ -s "$obj.log" ]]; then
    if [[ "${VERBOSE:-0}" == "1" ]] || grep -qiE "error|warning|spill" "$obj.log"; then cat "$obj.log"; fi
  fi
done
(( fail == 0 )) || exit 1
"$NVCC" "${GENCODE[@]}" -cudart static -Xcompiler -pthread -o "$OUT" "${OBJS[@]}"
echo "built $OUT"
