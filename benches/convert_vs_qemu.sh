#!/usr/bin/env bash
# hvkit convert -O raw next to qemu-img convert -O raw of the same fully
# allocated 4 GiB dynamic VHDX (made by qemu-img from random data), in one run.
# Usage: benches/convert_vs_qemu.sh [RUNS]   (BENCH_DIR overrides the scratch folder)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-5}
DIR=${BENCH_DIR:-/tmp/hvkit-bench}
mkdir -p "$DIR"
cargo build --release -q -p hvkit
HVKIT=$PWD/target/release/hvkit
SRC=$DIR/full-4G.vhdx
if [ ! -f "$SRC" ]; then
    echo "making $SRC (4 GiB of random data, converted by qemu-img)"
    head -c $((4 << 30)) /dev/urandom > "$DIR/random.raw"
    qemu-img convert -f raw -O vhdx -o subformat=dynamic "$DIR/random.raw" "$SRC"
    rm -f "$DIR/random.raw"
fi
"$HVKIT" info --json "$SRC" | python3 -c 'import json,sys; b=json.load(sys.stdin)["bat"]; print("source:", b["fully_present"], "of", b["payload_blocks"], "blocks FULLY_PRESENT")'

drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }
t() { local s e; s=$(date +%s.%N); "$@" >/dev/null; e=$(date +%s.%N); awk -v e="$e" -v s="$s" 'BEGIN {print e - s}'; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

declare -A res
for mode in warm cold; do
    for i in $(seq "$RUNS"); do
        for tool in hvkit qemu hvkit-sync qemu-writeback; do
            rm -f "$DIR/out-$tool.raw"
            if [ "$mode" = cold ]; then drop_caches; else cat "$SRC" > /dev/null; fi
            case $tool in
                hvkit) s=$(t "$HVKIT" convert -q "$SRC" "$DIR/out-$tool.raw" -O raw) ;;
                hvkit-sync) s=$(t "$HVKIT" convert -q --sync "$SRC" "$DIR/out-$tool.raw" -O raw) ;;
                qemu) s=$(t qemu-img convert -f vhdx -O raw "$SRC" "$DIR/out-$tool.raw") ;;
                qemu-writeback) s=$(t qemu-img convert -t writeback -f vhdx -O raw "$SRC" "$DIR/out-$tool.raw") ;;
            esac
            res[$mode-$tool]+="$s "
        done
    done
done
cmp "$DIR/out-hvkit.raw" "$DIR/out-qemu.raw" && echo "outputs identical"
printf '%-6s %-16s %8s %10s   %s\n' cache tool median_s GiB/s runs
for mode in warm cold; do
    for tool in hvkit qemu hvkit-sync qemu-writeback; do
        m=$(echo "${res[$mode-$tool]}" | tr ' ' '\n' | grep . | median)
        printf '%-6s %-16s %8.3f %10.2f   %s\n' "$mode" "$tool" "$m" "$(awk -v m="$m" 'BEGIN {print 4 / m}')" "${res[$mode-$tool]}"
    done
done
rm -f "$DIR"/out-*.raw
