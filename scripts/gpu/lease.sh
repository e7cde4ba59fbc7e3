#!/usr/bin/env bash
# Every GPU check and measurement, as named steps of one device call (15 device-minutes a session, 10 per
# call): each step time-boxed, nothing started that the deadline cannot fit. Pack .device/ here first
# (scripts/gpu/prepare.sh), then on the device, from the project root (NOTES.md, "GPU runs"):
#   source .device/setup.sh > /dev/null 2>&1; DEADLINE=540 STEPS="info small bench-f16 ..." bash scripts/gpu/lease.sh
# Steps (they run in this order, whatever the order in STEPS; default: info doctor small kernels-quick
# bench-f16 bench-int8 big serve sanitize kernels):
#   info doctor small blocks kernels-quick w4-bench | bench-f16 bench-int8 bench-q4 | gemm-check kv8-kernels gemm-bench tune micro |
#   A/B by env switch: base ab-split ab-persist ab-early ab-stream ab-wgmma ab-b1 mma fused-norm ab-dispatch mma-int8 gemm-small graph8 |
#   big (7B validation) big-wgmma serve constrained step-cost kv8 gemv-ab sanitize sanitize-attn sanitize-w4 kernels profile profile-batch
set -uo pipefail
OUT=${OUT:-/tmp/out}
R=/tmp/results; mkdir -p "$OUT" "$R" build/Release
exec > >(tee -a "$OUT/lease.log") 2>&1
t0=$(date +%s)
DEADLINE=${DEADLINE:-540}
STEPS=" ${STEPS:-info doctor small kernels-quick bench-f16 bench-int8 big serve sanitize kernels} "
BIG=/tmp/7b-f16.gguf
Q4=/tmp/7b-q4km.gguf  # bench-q4's Q4_K_M-like 7B (scripts/gpu/blocks.mjs --keep)
left() { echo $(( DEADLINE - ($(date +%s) - t0) )); }
pack() { tar czf "$OUT/results.tar.gz" -C "$R" . 2>/dev/null; }
# step NAME SECONDS: true when NAME is selected and at least SECONDS remain (then it is the step's timeout).
step() {
  [[ "$STEPS" == *" $1 "* ]] || return 1
  local l; l=$(left)
  if (( l < $2 )); then echo "=== skip $1: needs ${2}s, ${l}s left"; return 1; fi
  echo; echo "=== $1 ($(date +%T), ${l}s left)"; return 0
}
bench() { # bench NAME TIMEOUT [env...] -- args
  local name=$1 to=$2; shift 2
  local envs=(); while [[ $1 != -- ]]; do envs+=("$1"); shift; done; shift
  env "${envs[@]}" timeout "$to" node dist/cli/main.js bench --model $BIG --device cuda --preset llama2-7b --skip-cold \
    --out "$R/bench-$name.json" "$@" 2>&1 | grep -v "^\[bench\]"
  pack
}

if [ -d tmp/gpu-dist ]; then rm -rf dist && cp -r tmp/gpu-dist dist; fi
xz -dc .device/llama2_native.node.xz > build/Release/llama2_native.node
[ -f .device/kernel_tests.xz ] && xz -dc .device/kernel_tests.xz > /tmp/kernel_tests && chmod +x /tmp/kernel_tests
# The 7B file is CPU and disk work: made (when a step uses it) while the GPU runs the small checks.
maker=
if [[ "$STEPS" =~ \ (bench-f16|bench-int8|base|ab-[a-z0-9]+|mma|mma-int8|fused-norm|gemm-small|graph8|big|big-wgmma|serve|constrained|step-cost|kv8)\  ]] && [ ! -s $BIG ]; then
  ( node dist/cli/main.js make-model --preset llama2-7b --format gguf --dtype f16 --out $BIG --quiet > "$R/make-7b.log" 2>&1; echo "make-model rc=$?" >> "$R/make-7b.log" ) &
  maker=$!  # (a warm machine keeps the file of an earlier call)
fi

if step info 20; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit --format=csv
  node -e 'const a=require("node-gyp-build")(process.cwd()); console.log(JSON.stringify(a.buildInfo()), JSON.stringify(a.cudaDevices()), "copy GB/s", a.cudaCopyBandwidth(0).toFixed(0))'
fi
if step doctor 60; then  # `llama2 doctor --check`: every CUDA path against the host fp32 reference (demo model)
  LLAMA2_HOME=/tmp/l2home timeout 60 node dist/cli/main.js doctor --check > "$R/doctor-check.log" 2>&1; echo "doctor --check rc=$?"
  tail -20 "$R/doctor-check.log"; pack
fi
if step small 120; then
  timeout 120 node scripts/gpu/validate.mjs --out "$R/validate-small.json" > "$R/validate-small.log" 2>&1; echo "validate small rc=$?"
  grep -E "FAIL|PASS|ok|passed|failed" "$R/validate-small.log" | tail -40; pack
fi
if step blocks 150; then  # a Q4_K_M-like GGUF at 2 layers of the 7B width (Q4_K on the 4-bit kernels, Q6_K int8): CUDA vs the exact values, load times
  timeout 150 node scripts/gpu/blocks.mjs --device cuda --layers 2 --out "$R/blocks.json" > "$R/blocks.log" 2>&1; echo "blocks rc=$?"
  tail -3 "$R/blocks.log"; pack
fi
if step kernels-quick 90; then
  timeout 90 /tmp/kernel_tests --quick > "$R/kernel-tests-quick.log" 2>&1; echo "kernel_tests --quick rc=$?"
  grep -E "FAIL" "$R/kernel-tests-quick.log" | head -20; tail -3 "$R/kernel-tests-quick.log"; pack
fi
if step w4-bench 150; then  # the 4-bit GEMV / GEMM checks, then timed beside int8 at the 7B shapes (T = 1 .. 64)
  timeout 150 /tmp/kernel_tests --only=w4 --bench > "$R/kernel-w4.log" 2>&1; echo "kernel_tests w4 rc=$?"
  grep -E "FAIL|per layer" "$R/kernel-w4.log"; tail -2 "$R/kernel-w4.log"; pack
fi
if [ -n "$maker" ]; then echo "=== waiting for the 7B file ($(left)s left)"; wait $maker; cat "$R/make-7b.log"; fi
if step bench-f16 150; then
  bench f16 150 -- --dtype f16 --prompt 512 --gen 128 --batch 1,2,4,8,16,32,64 --reps 2
fi
if step bench-int8 120; then
  bench int8 120 -- --dtype int8 --prompt 512 --gen 128 --batch 1,2,4,8,16,32,64 --reps 2
fi
if step bench-q4 240; then  # a Q4_K_M-like 7B: dtype auto (q4+int8) against the same file requantized to int8
  [ -s $Q4 ] || { timeout 120 node scripts/gpu/blocks.mjs --layers 32 --keep $Q4 --no-check > "$R/make-q4.log" 2>&1; tail -1 "$R/make-q4.log"; }
  for dt in auto int8; do
    timeout 55 node dist/cli/main.js bench --model $Q4 --device cuda --dtype $dt --preset llama2-7b --skip-cold --prompt 512 --gen 128 \
      --batch 1,8,32 --reps 2 --out "$R/bench-q4-$dt.json" 2>&1 | grep -v "^\[bench\]"
  done
  pack
fi
if step gemm-check 100; then  # every GEMM check incl. the 7B shapes at M 16-64 (split-K chosen there)
  timeout 100 /tmp/kernel_tests --only=gemm > "$R/kernel-gemm.log" 2>&1; echo "kernel_tests gemm rc=$?"
  grep -E "FAIL" "$R/kernel-gemm.log" | head -20; tail -2 "$R/kernel-gemm.log"; pack
fi
if step kv8-kernels 120; then  # the int8 KV cache kernels: checks and fp16-vs-int8 timings
  timeout 120 /tmp/kernel_tests --only=kv_int8 --bench > "$R/kernel-kv-int8.log" 2>&1; echo "kernel_tests kv_int8 rc=$?"
  grep -E "FAIL|failed|passed|ratio" "$R/kernel-kv-int8.log" | head -30; pack
fi
if step gemm-bench 80; then  # per matrix at M = 8 / 32 / 64 / 512, with and without split-K
  timeout 80 /tmp/kernel_tests --only=gemm --bench --quick --no-check > "$R/kernel-gemm-bench.log" 2>&1; echo "gemm bench rc=$?"
  grep -E "M=(8|32|64) " "$R/kernel-gemm-bench.log" | sed -E 's/ +TFLOP.*GB\/s//' | head -48; pack
fi
if step tune 200; then  # every GEMM configuration (split-K where built in) per 7B shape at M = 8 / 32 / 64 / 512
  timeout 200 /tmp/kernel_tests --only=gemm --tune --quick --no-check > "$R/kernel-gemm-tune.log" 2>&1; echo "gemm tune rc=$?"
  grep -E "tuning table|tune:" "$R/kernel-gemm-tune.log" | head -60; pack
fi
if step micro 120; then  # the decode step's ops alone (native op benches), 7B shape, batch 1 and 8
  for b in 1 8; do
    timeout 55 node dist/cli/main.js micro --only ops --device cuda --shape llama2-7b --dtype f16,int8,q4 --context 256,2048 --batch $b \
      --time 200 --json --out "$R/micro-b$b.json" > /dev/null 2>> "$R/micro.log" || { echo "micro batch $b rc=$?"; tail -2 "$R/micro.log"; }
    node -e 'const r=require(process.argv[1]); for (const t of r.tasks) console.log(t.name.padEnd(58), t.latencyMs.p50.toFixed(4), "ms", (t.bandwidthGBs||0).toFixed(0), "GB/s")' "$R/micro-b$b.json" 2>/dev/null
  done
  pack
fi
if step base 60; then  # the default build at 128-token prompts, batches 1 / 8 / 32 / 64: the A/B steps' baseline in the same call
  bench f16-base 60 -- --dtype f16 --prompt 128 --gen 128 --batch 1,8,32,64 --reps 2
fi
if step ab-split 60; then  # GEMM split-K off (LLAMA2_GEMM_SPLITK=1)
  bench f16-splitk-off 60 LLAMA2_GEMM_SPLITK=1 -- --dtype f16 --prompt 128 --gen 128 --batch 8,32,64 --reps 2
fi
if step ab-persist 90; then  # GEMV grid-stride walk off (one block per row group, the launch before stop 15)
  bench f16-persist0 45 LLAMA2_GEMV_PERSIST=0 -- --dtype f16 --prompt 128 --gen 128 --batch 1,4 --reps 2
  bench int8-persist0 45 LLAMA2_GEMV_PERSIST=0 -- --dtype int8 --prompt 128 --gen 128 --batch 1,4 --reps 2
fi
if step ab-early 90; then  # decode attention's early-load variant forced off at batch 1, on at 32 / 64
  bench f16-early0 30 LLAMA2_ATTN_EARLY=0 -- --dtype f16 --prompt 128 --gen 128 --batch 1,2,4 --reps 2
  bench int8-early0 30 LLAMA2_ATTN_EARLY=0 -- --dtype int8 --prompt 128 --gen 128 --batch 1 --reps 2
  bench f16-early1 45 LLAMA2_ATTN_EARLY=1 -- --dtype f16 --prompt 128 --gen 128 --batch 32,64 --reps 2
fi
if step ab-stream 100; then  # the streaming decode attention (LLAMA2_ATTN_STREAM=1) at every batch, and with the int8 KV cache
  bench f16-stream 60 LLAMA2_ATTN_STREAM=1 -- --dtype f16 --prompt 128 --gen 128 --batch 1,8,32,64 --reps 2
  bench f16-kv8-stream 40 LLAMA2_ATTN_STREAM=1 -- --dtype f16 --kv-cache int8 --prompt 128 --gen 128 --batch 32,64 --reps 2
fi
if step ab-wgmma 150; then  # the 64-row wgmma tile + split-K by waves for 33..64 and 17..64 rows (LLAMA2_GEMM_WGMMA_MIN_M), with streaming attention, int8 weights
  bench f16-wgmma33 40 LLAMA2_GEMM_WGMMA_MIN_M=33 -- --dtype f16 --prompt 128 --gen 128 --batch 64 --reps 2
  bench f16-wgmma17 40 LLAMA2_GEMM_WGMMA_MIN_M=17 -- --dtype f16 --prompt 128 --gen 128 --batch 16,32 --reps 2
  bench f16-wgmma17-stream 40 LLAMA2_GEMM_WGMMA_MIN_M=17 LLAMA2_ATTN_STREAM=1 -- --dtype f16 --prompt 128 --gen 128 --batch 32,64 --reps 2
  bench int8-wgmma17 30 LLAMA2_GEMM_WGMMA_MIN_M=17 -- --dtype int8 --prompt 128 --gen 128 --batch 32,64 --reps 2
fi
if step ab-b1 130; then  # batch 1: the staged GEMV (LLAMA2_GEMV_STAGED=1) and gemv_mma at one token (LLAMA2_GEMV_MMA_T1=1), baselines in the same step
  bench int8-b1 30 -- --dtype int8 --prompt 128 --gen 128 --batch 1 --reps 2
  bench int8-staged 30 LLAMA2_GEMV_STAGED=1 -- --dtype int8 --prompt 128 --gen 128 --batch 1 --reps 2
  bench f16-b1 20 -- --dtype f16 --prompt 128 --gen 128 --batch 1 --reps 2
  bench f16-staged 20 LLAMA2_GEMV_STAGED=1 -- --dtype f16 --prompt 128 --gen 128 --batch 1 --reps 2
  bench int8-mma-t1 30 LLAMA2_GEMV_MMA_T1=1 -- --dtype int8 --prompt 128 --gen 128 --batch 1 --reps 2
fi
if step mma 110; then  # gemv_mma forced for every step of 2..32 tokens (LLAMA2_GEMV_MMA=1), fp16 too
  bench f16-mma 110 LLAMA2_GEMV_MMA=1 -- --dtype f16 --prompt 128 --gen 128 --batch 1,2,4,8,16,32 --reps 2
fi
if step fused-norm 70; then
  bench f16-fused-norm 35 LLAMA2_FUSED_NORM=1 -- --dtype f16 --prompt 128 --gen 128 --batch 1 --reps 2
  bench int8-fused-norm 35 LLAMA2_FUSED_NORM=1 -- --dtype int8 --prompt 128 --gen 128 --batch 1 --reps 2
fi
if step ab-dispatch 120; then  # the decode dispatch before stop 14 (GEMV up to 8 tokens, no gemv_mma)
  bench f16-old-dispatch 60 LLAMA2_GEMV_MMA=0 LLAMA2_GEMV_MAX_T=8 -- --dtype f16 --prompt 128 --gen 128 --batch 2,4,8,16 --reps 2
  bench int8-old-dispatch 60 LLAMA2_GEMV_MMA=0 LLAMA2_GEMV_MAX_T=8 -- --dtype int8 --prompt 128 --gen 128 --batch 2,4,8,16 --reps 2
fi
if step mma-int8 60; then
  bench int8-mma 60 LLAMA2_GEMV_MMA=1 -- --dtype int8 --prompt 128 --gen 128 --batch 1,8,32 --reps 2
fi
if step gemm-small 60; then  # small batches on the GEMM instead of the GEMV (LLAMA2_GEMV_MAX_T=1)
  bench f16-gemm-small 60 LLAMA2_GEMV_MAX_T=1 -- --dtype f16 --prompt 128 --gen 128 --batch 2,4,8 --reps 2
fi
if step graph8 60; then  # batches 16-32 without decode graphs (LLAMA2_GRAPH_MAX_T=8)
  bench f16-graph8 60 LLAMA2_GRAPH_MAX_T=8 -- --dtype f16 --prompt 128 --gen 128 --batch 16,32 --reps 2
fi
if step big 150; then
  timeout 150 node scripts/gpu/validate.mjs --skip-small --big $BIG --out "$R/validate-7b.json" > "$R/validate-7b.log" 2>&1; echo "validate 7B rc=$?"
  tail -25 "$R/validate-7b.log"; pack
fi
if step big-wgmma 150; then  # the 7B validation with every 17..64-row GEMM on the 64-row wgmma tile (LLAMA2_GEMM_WGMMA_MIN_M=17)
  LLAMA2_GEMM_WGMMA_MIN_M=17 timeout 150 node scripts/gpu/validate.mjs --skip-small --big $BIG --out "$R/validate-7b-wgmma.json" > "$R/validate-7b-wgmma.log" 2>&1; echo "validate 7B (wgmma64) rc=$?"
  tail -25 "$R/validate-7b-wgmma.log"; pack
fi
if step serve 150; then
  timeout 150 node scripts/gpu/serve-load.mjs --model $BIG --device cuda --dtype f16 --clients 64 --max-tokens 128 --rounds 2 --context 1024 \
    --out "$R/serve-7b-f16.json" > "$R/serve.log" 2>&1; echo "serve rc=$?"; tail -8 "$R/serve.log"; pack
fi
if step constrained 90; then  # host-side cost of JSON Schema / GBNF / logprobs beside a 7B decode step
  timeout 90 node scripts/gpu/constrained-bench.mjs --model $BIG --device cuda --dtype f16 --tokens 64 --reps 3 \
    --out "$R/constrained-7b-f16.json" > "$R/constrained.log" 2>&1; echo "constrained rc=$?"; cat "$R/constrained.log"; pack
fi
if step step-cost 60; then  # a step of T = 1..17 tokens against one: what verifying lookup drafts costs
  timeout 60 node scripts/gpu/step-cost.mjs --model $BIG --device cuda --dtype f16 --context 512 --tokens 1,2,3,5,9,17 --reps 5 \
    --out "$R/step-cost-7b-f16.json" > "$R/step-cost.log" 2>&1; echo "step-cost rc=$?"; cat "$R/step-cost.log"; pack
fi
if step kv8 90; then
  bench f16-kv8 90 -- --dtype f16 --kv-cache int8 --prompt 512 --gen 128 --batch 1,32,64 --reps 2
fi
if step gemv-ab 90; then
  timeout 90 /tmp/kernel_tests --only=gemv --bench > "$R/kernel-gemv.log" 2>&1; echo "kernel_tests gemv rc=$?"
  grep -E "FAIL|failed|passed" "$R/kernel-gemv.log" | head; pack
fi
if step sanitize 100; then
  node dist/cli/main.js make-model --preset tiny --dim 256 --heads 4 --kv-heads 2 --ffn 512 --layers 2 --vocab 512 --out /tmp/san.gguf --quiet --force
  timeout 50 compute-sanitizer --tool memcheck --print-limit 20 node scripts/gpu/sanitize.mjs /tmp/san.gguf > "$R/memcheck.log" 2>&1; tail -4 "$R/memcheck.log"
  timeout 50 compute-sanitizer --tool racecheck --print-limit 20 node scripts/gpu/sanitize.mjs /tmp/san.gguf > "$R/racecheck.log" 2>&1; tail -4 "$R/racecheck.log"
  pack
fi
if step sanitize-attn 100; then  # the kernel harness's decode attention cases (split, early, streaming) under both tools
  timeout 50 compute-sanitizer --tool memcheck --print-limit 20 /tmp/kernel_tests --quick --only=kv_int8 > "$R/memcheck-attn.log" 2>&1; tail -4 "$R/memcheck-attn.log"
  timeout 50 compute-sanitizer --tool racecheck --print-limit 20 /tmp/kernel_tests --quick --only=kv_int8 > "$R/racecheck-attn.log" 2>&1; tail -4 "$R/racecheck-attn.log"
  pack
fi
if step sanitize-w4 100; then  # the 4-bit GEMV / GEMM harness cases (kernel pack) under both tools
  timeout 50 compute-sanitizer --tool memcheck --print-limit 20 /tmp/kernel_tests --quick --only=w4 > "$R/memcheck-w4.log" 2>&1; tail -4 "$R/memcheck-w4.log"
  timeout 50 compute-sanitizer --tool racecheck --print-limit 20 /tmp/kernel_tests --quick --only=w4 > "$R/racecheck-w4.log" 2>&1; tail -4 "$R/racecheck-w4.log"
  pack
fi
if step kernels 120; then
  timeout 120 /tmp/kernel_tests > "$R/kernel-tests.log" 2>&1; echo "kernel_tests rc=$?"
  grep -E "FAIL" "$R/kernel-tests.log" | head -20; tail -3 "$R/kernel-tests.log"; pack
fi
# ncu per-kernel summaries on a 2-layer 7B-width model (caches flushed per kernel: slower than in a graph).
if step profile 120; then  # decode batch 1 and a 128-token prefill
  [ -f /tmp/7b2.gguf ] || node dist/cli/main.js make-model --preset llama2-7b --layers 2 --out /tmp/7b2.gguf --quiet --force
  timeout 110 ncu --clock-control none --graph-profiling node --print-summary per-kernel node scripts/gpu/profile.mjs /tmp/7b2.gguf 4 1 > "$R/ncu-b1.txt" 2>&1
  grep -E "^  [a-zA-Z_].*\(|Duration|Invocations" "$R/ncu-b1.txt" | head -80; pack
fi
if step profile-batch 100; then  # decode batch 32
  [ -f /tmp/7b2.gguf ] || node dist/cli/main.js make-model --preset llama2-7b --layers 2 --out /tmp/7b2.gguf --quiet --force
  timeout 90 ncu --clock-control none --graph-profiling node --print-summary per-kernel node scripts/gpu/profile.mjs /tmp/7b2.gguf 3 32 > "$R/ncu-b32.txt" 2>&1
  grep -E "^  [a-zA-Z_].*\(|Duration|Invocations" "$R/ncu-b32.txt" | head -60; pack
fi
pack
echo "=== done ($(date +%T), $(( $(date +%s) - t0 ))s)"
