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

# settle (every run starts with nothing dirty and the disk idle), t, median.
. benches/lib.sh

# Modes: the output on the source's filesystem with the source in the page
# cache (warm-disk) or not (cold-disk), and the output on tmpfs with a warm
# source (warm-tmpfs: no disk writeback, so the tools' own cost shows).
SHM=${BENCH_SHM:-/dev/shm/hvkit-bench}
mkdir -p "$SHM"
declare -A res cpu sums
modes=${MODES:-warm-disk cold-disk warm-tmpfs}
for mode in $modes; do
    out_dir=$DIR
    [ "$mode" = warm-tmpfs ] && out_dir=$SHM
    for i in $(seq "$RUNS"); do
        # Alternate which tool goes first; every run starts with nothing dirty.
        # hvkit writes with O_DIRECT by default; hvkit-buffered is its
        # page-cache path (--buffered, copy_file_range with read-ahead).
        tools="hvkit qemu"
        [ "$mode" = cold-disk ] && tools="hvkit qemu hvkit-buffered"
        [ "$mode" = warm-disk ] && tools="hvkit qemu hvkit-sync qemu-writeback hvkit-buffered"
        [ $((i % 2)) -eq 0 ] && tools=$(echo "$tools" | awk '{for (i = NF; i > 0; i--) printf "%s ", $i}')
        for tool in $tools; do
            out="$out_dir/out-$tool.raw"
            rm -f "$out"
            settle
            if [ "$mode" = cold-disk ]; then drop_caches; else cat "$SRC" > /dev/null; fi
            case $tool in
                hvkit) s=$(t "$HVKIT" convert -q "$SRC" "$out" -O raw) ;;
                hvkit-sync) s=$(t "$HVKIT" convert -q --sync "$SRC" "$out" -O raw) ;;
                hvkit-buffered) s=$(t "$HVKIT" convert -q --buffered "$SRC" "$out" -O raw) ;;
                qemu) s=$(t qemu-img convert -f vhdx -O raw "$SRC" "$out") ;;
                qemu-writeback) s=$(t qemu-img convert -t writeback -f vhdx -O raw "$SRC" "$out") ;;
            esac
            res[$mode-$tool]+="${s% *} "
            cpu[$mode-$tool]+="${s#* } "
            # Each output is checked in the first round and deleted right
            # away, so every run follows the same thing (a 4 GiB output
            # written and deleted): a run after the deletion of the newest
            # file measured up to 2x slower than one after an older file's,
            # whichever tool it was.
            [ "$i" = 1 ] && sums[$mode-$tool]=$(sha256sum < "$out" | cut -c1-64)
            rm -f "$out"
        done
    done
    for tool in qemu hvkit-sync qemu-writeback hvkit-buffered; do
        [ -n "${sums[$mode-$tool]:-}" ] || continue
        [ "${sums[$mode-$tool]}" = "${sums[$mode-hvkit]}" ] || { echo "$mode: $tool output differs from hvkit's" >&2; exit 1; }
    done
    echo "$mode: outputs identical (sha256 ${sums[$mode-hvkit]})"
done
printf '%-11s %-15s %8s %8s %8s   %s\n' mode tool wall_s GiB/s cpu_s "wall seconds of each run"
for mode in $modes; do
    for tool in hvkit qemu hvkit-sync qemu-writeback hvkit-buffered; do
        [ -n "${res[$mode-$tool]:-}" ] || continue
        m=$(echo "${res[$mode-$tool]}" | tr ' ' '\n' | grep . | median)
        c=$(echo "${cpu[$mode-$tool]}" | tr ' ' '\n' | grep . | median)
        printf '%-11s %-15s %8.3f %8.2f %8.2f   %s\n' "$mode" "$tool" "$m" "$(awk -v m="$m" 'BEGIN {print 4 / m}')" "$c" "${res[$mode-$tool]}"
    done
done
rmdir "$SHM" 2>/dev/null || true
