#!/usr/bin/env bash
# One device call: correctness (small models, a 7B-shape synthetic model), compute-sanitizer, and the
# bench, and (PHASES=micro) the native op micro-benchmarks. Run from the project root on the GPU machine after `source .device/setup.sh`, with the
# sm_90 addon in build-sm90/ (see NOTES.md, "GPU runs"). Logs and JSON go to $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" build/Release
if [ -d tmp/gpu-dist ]; then rm -rf dist && cp -r tmp/gpu-dist dist; fi
if [ -f .device/llama2_native.node.xz ]; then xz -dc .device/llama2_native.node.xz > build/Release/llama2_native.node; else cp build-sm90/Release/llama2_native.node build/Release/; fi
phase() { echo; echo "=== $* ($(date +%T))"; }
only=" ${PHASES:-info small kernels big bench sanitize} "
has() { [[ "$only" == *" $1 "* ]]; }
if has info; then
  phase info
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv
  node -e 'const a=require("node-gyp-build")(process.cwd()); console.log(a.buildInfo(), a.cudaDevices(), "copy GB/s", a.cudaCopyBandwidth(0).toFixed(0))'
  phase "llama2 doctor --check (every path vs the host fp32 reference, demo model)"
  LLAMA2_HOME=/tmp/l2home node dist/cli/main.js doctor --check 2>&1 | tee "$OUT/doctor-check.log"
fi
if has small; then
  phase "validate small models"
  node scripts/gpu/validate.mjs --out "$OUT/validate-small.json" 2>&1 | tee "$OUT/validate-small.log"
fi
if has kernels && [ -f .device/kernel_tests.xz ]; then
  xz -dc .device/kernel_tests.xz > /tmp/kernel_tests && chmod +x /tmp/kernel_tests
  phase "kernel tests"
  timeout 300 /tmp/kernel_tests ${KERNEL_ARGS:-} > "$OUT/kernel-tests.log" 2>&1; echo "kernel_tests rc=$?"; tail -25 "$OUT/kernel-tests.log"
fi
if has kv8 && [ -f .device/kernel_tests.xz ]; then
  [ -f /tmp/kernel_tests ] || { xz -dc .device/kernel_tests.xz > /tmp/kernel_tests && chmod +x /tmp/kernel_tests; }
  phase "int8 KV cache kernels: checks and fp16-vs-int8 timings"
  timeout 240 /tmp/kernel_tests --only=kv_int8 --bench > "$OUT/kernel-kv-int8.log" 2>&1; echo "kernel_tests kv_int8 rc=$?"
  grep -E "FAIL|failed|passed|ratio" "$OUT/kernel-kv-int8.log" | head -30
fi
BIG=/tmp/7b-f16.gguf
if has big || has bench || has mma || has kv8bench || has gemvab || has serve; then
  phase "make 7B synthetic"
  [ -f $BIG ] || node dist/cli/main.js make-model --preset llama2-7b --format gguf --dtype f16 --out $BIG --quiet
fi
if has profile; then
  phase "ncu profile (2-layer 7B-width, decode batch 1 and prefill 128)"
  node dist/cli/main.js make-model --preset llama2-7b --layers 2 --out /tmp/7b2.gguf --quiet --force
  timeout 200 ncu --clock-control none --graph-profiling node --print-summary per-kernel node scripts/gpu/profile.mjs /tmp/7b2.gguf 4 1 > "$OUT/ncu-summary.txt" 2>&1
  grep -E "^  [a-zA-Z_].*\(|Duration|Invocations" "$OUT/ncu-summary.txt" | head -80
fi
if has profile-batch; then
  # Where a batched decode step's time goes: 2-layer 7B-width model, 32 sequences, 3 decode steps
  # (prefill kernels appear too; the decode ones are the GEMM M=32 tiles and attn_decode).
  phase "ncu profile (2-layer 7B-width, decode batch 32)"
  [ -f /tmp/7b2.gguf ] || node dist/cli/main.js make-model --preset llama2-7b --layers 2 --out /tmp/7b2.gguf --quiet --force
  timeout 240 ncu --clock-control none --graph-profiling node --print-summary per-kernel node scripts/gpu/profile.mjs /tmp/7b2.gguf 3 32 > "$OUT/ncu-summary-b32.txt" 2>&1
  grep -E "^  [a-zA-Z_].*\(|Duration|Invocations" "$OUT/ncu-summary-b32.txt" | head -120
fi
if has tune && { [ -f /tmp/kernel_tests ] || [ -f .device/kernel_tests.xz ]; }; then
  # Every GEMM configuration at the 7B shapes for M = 8 .. 2048: the data for kTuning in kernels/gemm.cu.
  [ -f /tmp/kernel_tests ] || { xz -dc .device/kernel_tests.xz > /tmp/kernel_tests && chmod +x /tmp/kernel_tests; }
  phase "GEMM tuning (every configuration per 7B shape and M)"
  timeout 300 /tmp/kernel_tests --only=gemm --tune --no-check > "$OUT/kernel-gemm-tune.log" 2>&1; echo "kernel_tests gemm --tune rc=$?"
  grep -E -A1 "tuning table|^  bench (f16|w8 ) +\S+ M=" "$OUT/kernel-gemm-tune.log" | grep -E "tuning table|bench|tune:" | head -220
fi
if has big; then
  phase "validate 7B"
  node scripts/gpu/validate.mjs --skip-small --big $BIG --out "$OUT/validate-7b.json" 2>&1 | tee "$OUT/validate-7b.log"
fi
if has bench; then
  for dt in ${DTYPES:-f16 int8}; do
    phase "bench 7B $dt"
    node dist/cli/main.js bench --model $BIG --device cuda --dtype $dt --preset llama2-7b --prompt ${PROMPTS:-128,512} --gen ${GEN:-128} \
      --batch ${BATCHES:-1} --reps ${REPS:-2} ${BENCH_FLAGS:---skip-cold} --out "$OUT/bench-7b-$dt.json" 2>&1 | grep -v "^\[bench\]"
  done
fi
if has serve; then
  # Issue 6's load test on the GPU: 64 concurrent streaming chat clients against the chatbot job.
  phase "serving load: 64 streaming clients, 128 tokens each, 7B f16"
  timeout 300 node scripts/gpu/serve-load.mjs --model $BIG --device cuda --dtype f16 --clients 64 --max-tokens 128 --rounds 2 --context 1024 \
    --out "$OUT/serve-7b-f16.json" 2>&1 | tail -8
fi
if has kv8bench; then
  # The int8 KV cache: batched decode (bytes per step shrink with context) and memory at 4096 context.
  phase "bench 7B f16, KV int8"
  node dist/cli/main.js bench --model $BIG --device cuda --dtype f16 --kv-cache int8 --preset llama2-7b --prompt 128,512 --gen 128 \
    --batch ${BATCHES:-1} --reps 2 --skip-cold --out "$OUT/bench-7b-f16-kv8.json" 2>&1 | grep -v "^\[bench\]"
fi
if has mma; then
  # The tensor-core small-batch kernel (kernels/gemv_mma.cu, opt-in with LLAMA2_GEMV_MMA=1): its kernel
  # tests and A/B timings against the GEMV and the GEMM, end-to-end validation (batches of 3 and 12), and
  # the batched bench with it. Needs .device/kernel_tests.xz and the 7B model (PHASES="... big mma").
  if [ -f /tmp/kernel_tests ] || [ -f .device/kernel_tests.xz ]; then
    [ -f /tmp/kernel_tests ] || { xz -dc .device/kernel_tests.xz > /tmp/kernel_tests && chmod +x /tmp/kernel_tests; }
    phase "gemv kernels: checks and A/B bench"
    timeout 200 /tmp/kernel_tests --only=gemv --bench > "$OUT/kernel-gemv.log" 2>&1; echo "kernel_tests gemv rc=$?"
    grep -E "FAIL|failed|decode matrices" "$OUT/kernel-gemv.log" | head -30
  fi
  phase "validate with LLAMA2_GEMV_MMA=1"
  LLAMA2_GEMV_MMA=1 node scripts/gpu/validate.mjs --skip-small --big $BIG --out "$OUT/validate-mma.json" 2>&1 | tail -15 | tee "$OUT/validate-mma.log"
  phase "bench 7B f16 with LLAMA2_GEMV_MMA=1"
  LLAMA2_GEMV_MMA=1 node dist/cli/main.js bench --model $BIG --device cuda --dtype f16 --preset llama2-7b --prompt 128 --gen 128 \
    --batch 1,8,16,32 --reps 2 --skip-cold --out "$OUT/bench-7b-f16-mma.json" 2>&1 | grep -v "^\[bench\]"
fi
if has gemvab; then
  # Small batches end to end: the CUDA-core GEMV (default up to 8 tokens) against the tiled GEMM.
  phase "bench 7B f16, batches 2-8 on the GEMM (LLAMA2_GEMV_MAX_T=1)"
  LLAMA2_GEMV_MAX_T=1 node dist/cli/main.js bench --model $BIG --device cuda --dtype f16 --preset llama2-7b --prompt 128 --gen 128 \
    --batch 2,4,8 --reps 2 --skip-cold --out "$OUT/bench-7b-f16-gemm-small.json" 2>&1 | grep -v "^\[bench\]"
  phase "bench 7B f16 and int8, batch 1 with RMSNorm fused into the GEMV (LLAMA2_FUSED_NORM=1)"
  for dt in f16 int8; do
    LLAMA2_FUSED_NORM=1 node dist/cli/main.js bench --model $BIG --device cuda --dtype $dt --preset llama2-7b --prompt 128 --gen 128 \
      --batch 1 --reps 2 --skip-cold --out "$OUT/bench-7b-$dt-fused-norm.json" 2>&1 | grep -v "^\[bench\]"
  done
  phase "bench 7B f16, batches 16-32 without decode graphs beyond 8 (LLAMA2_GRAPH_MAX_T=8)"
  LLAMA2_GRAPH_MAX_T=8 node dist/cli/main.js bench --model $BIG --device cuda --dtype f16 --preset llama2-7b --prompt 128 --gen 128 \
    --batch 16,32 --reps 2 --skip-cold --out "$OUT/bench-7b-f16-graph8.json" 2>&1 | grep -v "^\[bench\]"
fi
if has micro; then
  phase "micro-benchmarks: native ops at the 7B shape on the GPU"
  node dist/cli/main.js micro --only ops --device cuda --shape llama2-7b --dtype f16,int8 --context 512,2048,4096 \
    --out "$OUT/micro-7b-cuda.json" 2>/dev/null
fi
if has sanitize; then
  phase "compute-sanitizer"
  node dist/cli/main.js make-model --preset tiny --dim 256 --heads 4 --kv-heads 2 --ffn 512 --layers 2 --vocab 512 --out /tmp/san.gguf --quiet --force
  timeout 150 compute-sanitizer --tool memcheck --print-limit 20 node scripts/gpu/sanitize.mjs /tmp/san.gguf 2>&1 | tail -8 | tee "$OUT/memcheck.log"
  timeout 150 compute-sanitizer --tool racecheck --print-limit 20 node scripts/gpu/sanitize.mjs /tmp/san.gguf 2>&1 | tail -8 | tee "$OUT/racecheck.log"
fi
phase done
