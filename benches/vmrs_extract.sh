#!/usr/bin/env bash
# hvkit vmrs extract-memory of a 1 GiB saved state (raw RamBlocks) next to a
# plain copy of the same 1 GiB (`cp --reflink=never`, the copy bound), on
# the scratch filesystem, in one run; source warm in the page cache, every
# run started with nothing dirty.
# Usage: benches/vmrs_extract.sh [RUNS]   (BENCH_DIR overrides the scratch folder)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-5}
DIR=${BENCH_DIR:-/tmp/hvkit-bench}
mkdir -p "$DIR"
cargo build --release -q -p hvkit
HVKIT=$PWD/target/release/hvkit
MEM=$DIR/mem-1G.bin
STATE=$DIR/state-1G.vmrs
if [ ! -f "$STATE" ]; then
    head -c $((1 << 30)) /dev/urandom > "$MEM"
    "$HVKIT" vmrs create -o "$STATE" --memory "$MEM"
fi
[ -f "$MEM" ] || head -c $((1 << 30)) /dev/urandom > "$MEM"
# settle (nothing dirty, the disk idle), t, median.
. benches/lib.sh
declare -A res cpu
for i in $(seq "$RUNS"); do
    tools="raw elf cp"
    [ $((i % 2)) -eq 0 ] && tools="cp elf raw"
    for tool in $tools; do
        out="$DIR/out-$tool"
        rm -f "$out"
        settle
        cat "$STATE" "$MEM" > /dev/null
        case $tool in
            raw) s=$(t "$HVKIT" vmrs extract-memory -q "$STATE" -o "$out") ;;
            elf) s=$(t "$HVKIT" vmrs extract-memory -q --format elf "$STATE" -o "$out") ;;
            cp) s=$(t cp --reflink=never "$MEM" "$out") ;;
        esac
        res[$tool]+="${s% *} "
        cpu[$tool]+="${s#* } "
    done
    cmp "$DIR/out-raw" "$MEM" && [ "$i" = 1 ] && echo "raw output identical to the memory file"
    rm -f "$DIR"/out-*
done
printf '%-22s %8s %8s %8s   %s\n' what wall_s GiB/s cpu_s "wall seconds of each run"
for tool in raw elf cp; do
    m=$(echo "${res[$tool]}" | tr ' ' '\n' | grep . | median)
    c=$(echo "${cpu[$tool]}" | tr ' ' '\n' | grep . | median)
    name=$tool
    [ "$tool" = raw ] && name="hvkit extract raw"
    [ "$tool" = elf ] && name="hvkit extract elf"
    [ "$tool" = cp ] && name="cp --reflink=never"
    printf '%-22s %8.3f %8.2f %8.2f   %s\n' "$name" "$m" "$(awk -v m="$m" 'BEGIN {print 1 / m}')" "$c" "${res[$tool]}"
done
