#!/usr/bin/env bash
# Registers and spills per kernel of one kernels/*.cu file, as ptxas reports them for one architecture,
# with the addon's flags; with --against REV, the same file at git revision REV too, and only the kernels
# whose figures differ. Occupancy follows registers (at 128 threads: <= 96 -> 5 CTAs per SM, <= 128 -> 4),
# so run this after touching a hot kernel: in stop 17 a refactor that only moved a __shared__ variable
# into an inlined helper took the 7B decode attention from 95 to 130 registers on sm_90 (and only there).
#   scripts/kernel-regs.sh kernels/attention_decode.cu [--arch 90] [--filter attn_decode] [--against HEAD]
# Takes minutes per architecture on 2 cores (every template instance is compiled).
set -euo pipefail
cd "$(dirname "$0")/.."
file=$1; shift
arch=90 filter= against=
while (($#)); do
  case $1 in
    --arch) arch=$2; shift 2 ;;
    --filter) filter=$2; shift 2 ;;
    --against) against=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
regs() {  # regs SOURCE OUT: "kernel registers spill-bytes" per line
  nvcc -std=c++17 -O3 -lineinfo -arch="sm_$arch" -Ikernels -Inative -Xptxas -v -c "$1" -o "$tmp/o.o" 2> "$tmp/ptxas.log" ||
    { cat "$tmp/ptxas.log" >&2; exit 1; }
  python3 - "$tmp/ptxas.log" "$filter" > "$2" <<'EOF'
import re, sys
fn, spill, rows = None, {}, {}
for line in open(sys.argv[1]):
    m = re.search(r"(?:Compiling entry function|Function properties for) '?([\w$]+)", line)
    if m: fn = m.group(1)
    m = re.search(r"(\d+) bytes spill stores", line)
    if m and fn: spill[fn] = int(m.group(1))
    m = re.search(r"Used (\d+) registers", line)
    if m and fn and sys.argv[2] in fn: rows[fn] = m.group(1)
# The anonymous namespace's mangled name holds a hash of the file's path: rename it, so revisions compare.
anon = lambda fn: re.sub(r"\d+_GLOBAL__N__[0-9a-f]+_\d+_\w+?_cu_[0-9a-f]{8}", "4anon", fn)
for fn in sorted(rows): print(anon(fn), rows[fn], spill.get(fn, 0))
EOF
}
regs "$file" "$tmp/new.txt"
if [[ -z $against ]]; then
  column -t "$tmp/new.txt" | (c++filt 2>/dev/null || cat)
  exit 0
fi
mkdir -p "$tmp/old/$(dirname "$file")"
git show "$against:$file" > "$tmp/old/$file"
regs "$tmp/old/$file" "$tmp/old.txt"
echo "kernel  $against(regs,spill)  now(regs,spill)"
join -a1 -a2 -e- -o 0,1.2,1.3,2.2,2.3 <(sort "$tmp/old.txt") <(sort "$tmp/new.txt") |
  awk '$2 != $4 || $3 != $5 { print $1, $2 "," $3, $4 "," $5 }' | (c++filt 2>/dev/null || cat)
