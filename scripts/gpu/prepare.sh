#!/usr/bin/env bash
# Packs what a device call needs into .device/ (and dist/ into tmp/gpu-dist), on this machine, before the
# lease: the device has no Node and no registry (NOTES.md, "GPU runs").
#   scripts/gpu/prepare.sh                 # the model steps' pack: node modules shared addon (~55 MiB)
#   PACK="node modules addon kernels" scripts/gpu/prepare.sh   # the kernel harness's pack (~48 MiB)
# (the carry limit is 64 MiB: addon + kernel harness + models do not fit in one call; a missing sm_90
# addon or a stale harness is built first; the addon's build is incremental)
#   REBUILD=1 ...                          # rebuild the sm_90 addon and harness from scratch
# Parts: node (this machine's node binary), modules (runtime packages only), shared (../shared models and
# fixtures), addon (build-sm90's sm_90 addon), kernels (the sm_90 kernel harness). setup.sh is always
# written. Then: run with carry [".device", "tmp/gpu-dist"] and
#   source .device/setup.sh > /dev/null 2>&1; DEADLINE=540 STEPS="..." bash scripts/gpu/lease.sh
# (never pipe `source`: a pipeline runs it in a subshell and node is then missing from PATH).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
SHARED="${LLAMA2_SHARED:-$ROOT/../shared}"
PACK=" ${PACK:-node modules shared addon} "
has() { [[ "$PACK" == *" $1 "* ]]; }
D=.device
mkdir -p "$D"

npx tsc -p tsconfig.json
rm -rf tmp/gpu-dist && mkdir -p tmp && cp -r dist tmp/gpu-dist

if has addon; then
  # Always built: the build is incremental (nothing to do when current), and a present but stale addon
  # would be packed otherwise. REBUILD=1 starts from an empty build-sm90.
  [[ "${REBUILD:-0}" == 1 ]] && rm -rf build-sm90
  npx cmake-js compile -O build-sm90 --CDCMAKE_CUDA_ARCHITECTURES=90 --log-level warn
  strip -o /tmp/llama2_native.node build-sm90/Release/llama2_native.node
  xz -T0 -9 -c /tmp/llama2_native.node > "$D/llama2_native.node.xz"
else
  rm -f "$D/llama2_native.node.xz"
fi
if has kernels; then
  if [[ "${REBUILD:-0}" == 1 || ! -x build/kernel_tests || -n "$(find kernels native/common -newer build/kernel_tests \( -name '*.cu*' -o -name '*.h' \) 2>/dev/null | head -1)" ]]; then
    ARCHS=90 JOBS="${JOBS:-2}" scripts/build-kernel-tests.sh
  fi
  strip -o /tmp/kernel_tests build/kernel_tests
  xz -T0 -9 -c /tmp/kernel_tests > "$D/kernel_tests.xz"
else
  rm -f "$D/kernel_tests.xz"
fi
if has node; then
  xz -T0 -9 -c "$(command -v node)" > "$D/node.xz"
fi
if has modules; then  # the packages dist/ loads at run time (package.json "dependencies" less the build tools)
  mods=$(node -e 'const p=require("./package.json"); console.log(Object.keys(p.dependencies||{}).filter(d=>!["cmake-js","node-addon-api"].includes(d)).map(d=>"node_modules/"+d).join(" "))')
  tar cJf "$D/node_modules.tar.xz" $mods
fi
if has shared; then
  [[ -d "$SHARED/models" ]] || { echo "prepare: $SHARED/models not found (set LLAMA2_SHARED)" >&2; exit 1; }
  tar cJf "$D/shared.tar.xz" -C "$SHARED" models fixtures
else
  rm -f "$D/shared.tar.xz"
fi

cat > "$D/setup.sh" <<'EOF'
# Sourced at the start of a device command: node on PATH, runtime node_modules, the shared models in /tmp/shared.
mkdir -p /tmp/bin /tmp/shared
[ -x /tmp/bin/node ] || { xz -d < .device/node.xz > /tmp/bin/node && chmod +x /tmp/bin/node; }
export PATH=/tmp/bin:/usr/local/cuda/bin:$PATH
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
[ -d node_modules ] || tar xJf .device/node_modules.tar.xz
[ -d /tmp/shared/models ] || { [ -f .device/shared.tar.xz ] && tar xJf .device/shared.tar.xz -C /tmp/shared; }
export LLAMA2_SHARED=/tmp/shared
echo "device: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader) node $(node --version)"
EOF

total=$(du -cb "$D" tmp/gpu-dist | tail -1 | cut -f1)
ls -la "$D"
echo "prepare: .device + tmp/gpu-dist = $((total / 1048576)) MiB (carry limit 64 MiB)"
if (( total > 64 * 1048576 )); then
  echo "prepare: over the carry limit: pack fewer parts per call, e.g. PACK=\"node modules shared addon\" then PACK=\"node modules kernels\"" >&2
  exit 2
fi
