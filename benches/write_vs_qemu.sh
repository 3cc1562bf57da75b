#!/usr/bin/env bash
# Write throughput of hvkit (Disk::write_at through benches/examples/write_pattern.rs)
# next to qemu-io writing the same pattern into a dynamic VHDX, in one run.
# Patterns: sequential 1 MiB writes over the whole 1 GiB disk, and COUNT random
# 4 KiB writes at 4 KiB-aligned offsets drawn from a seeded sequence. The offsets
# (and each write's fill byte) are generated once into a file both tools read.
# Targets, each created fresh (not timed) before every timed run:
#   qemu        qemu-img create -f vhdx -o subformat=dynamic,block_size=32M, written by
#               qemu-io -f vhdx -t writeback (`write -q -P FILL OFF LEN` lines, then `flush`)
#   hvkit-dyn   a dynamic VHDX, 32 MiB blocks (CreateParams::dynamic)
#   hvkit-diff  a differencing VHDX, 2 MiB blocks, over an empty 1 GiB dynamic parent
# hvkit ends with Disk::close (payload flush, journaled metadata commit, log cleared).
# After every run the hvkit dynamic file is checked identical to qemu's with
# `qemu-img compare`, and the differencing one (qemu cannot open differencing VHDX)
# with `write_pattern compare` against qemu's file.
# Printed per pattern and tool: medians of wall seconds (open to close, flush
# included), MiB/s and IOPS from that median, the tool's cpu (user + system)
# seconds, the cpu seconds the rest of the machine used during the run, and how
# many runs gave content identical to qemu's.
# Usage: benches/write_vs_qemu.sh [RUNS] [COUNT]   (BENCH_DIR overrides the scratch
# folder, BENCH_SEED the seed of the random offsets)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-5}
COUNT=${2:-16384}
SEED=${BENCH_SEED:-1}
DIR=${BENCH_DIR:-/tmp/hvkit-write-bench}
SIZE=1G
mkdir -p "$DIR"
cargo build --release -q -p hvkit-benches --example write_pattern
WP=$PWD/target/release/examples/write_pattern

# Each pattern: write length (as write_pattern takes it, and in bytes), bytes
# written, number of writes.
declare -A LEN=([seq]=1M [rand]=4K) LENB=([seq]=1048576 [rand]=4096) BYTES NWRITES
"$WP" offsets seq "$SIZE" 1M > "$DIR/seq.txt"
"$WP" offsets rand "$COUNT" 4K "$SIZE" "$SEED" > "$DIR/rand.txt"
for pat in seq rand; do
    len=${LENB[$pat]}
    awk -v len="$len" '{print "write -q -P", $2, $1, len} END {print "flush"}' "$DIR/$pat.txt" > "$DIR/$pat.qio"
    NWRITES[$pat]=$(wc -l < "$DIR/$pat.txt")
    BYTES[$pat]=$(( NWRITES[$pat] * len ))
done
echo "patterns: seq ${NWRITES[seq]} x 1 MiB, rand ${NWRITES[rand]} x 4 KiB (seed $SEED, $(cut -d' ' -f1 "$DIR/rand.txt" | sort -u | wc -l) distinct offsets), disk $SIZE"

rm -f "$DIR/parent.vhdx"
"$WP" create-dynamic "$DIR/parent.vhdx" "$SIZE"

# settle (nothing dirty, the disk idle), median; t below is this script's own.
. benches/lib.sh
# CPU seconds the whole machine has been busy (user, nice, system, irq,
# softirq, steal; not idle or iowait).
busy() { awk '/^cpu / {print ($2 + $3 + $4 + $7 + $8 + $9) / 100}' /proc/stat; }
# Runs a command with stdin from $1 and output to $2, prints "wall cpu other"
# seconds (cpu = user + system of the command, other = what the rest of the
# machine used meanwhile: other agents' builds, kernel writeback threads).
t() {
    local in=$1 log=$2 out b0 b1
    shift 2
    b0=$(busy)
    out=$( { TIMEFORMAT='%R %U %S'; time "$@" < "$in" > "$log" 2>&1; } 2>&1 )
    b1=$(busy)
    awk -v b="$b0" -v e="$b1" '{c = $2 + $3; o = e - b - c; print $1, c, (o < 0 ? 0 : o)}' <<<"$out"
}

fresh() {
    local tool=$1 f=$2
    rm -f "$f"
    case $tool in
        qemu) qemu-img create -q -f vhdx -o subformat=dynamic,block_size=32M "$f" "$SIZE" ;;
        hvkit-dyn) "$WP" create-dynamic "$f" "$SIZE" ;;
        hvkit-diff) "$WP" create-diff "$f" "$DIR/parent.vhdx" ;;
    esac
}
target() {
    case $1 in qemu) echo "$DIR/qemu.vhdx" ;; hvkit-dyn) echo "$DIR/hvkit.vhdx" ;; hvkit-diff) echo "$DIR/hvkit.avhdx" ;; esac
}

declare -A res cpu other same
tools="qemu hvkit-dyn hvkit-diff"
for pat in seq rand; do
    for i in $(seq "$RUNS"); do
        # Alternate the order; every run starts from a fresh file and nothing dirty.
        order=$tools
        [ $((i % 2)) -eq 0 ] && order=$(echo "$tools" | awk '{for (i = NF; i > 0; i--) printf "%s ", $i}')
        for tool in $order; do
            f=$(target "$tool")
            fresh "$tool" "$f"
            settle
            log=$DIR/$tool.log
            case $tool in
                qemu) s=$(t "$DIR/$pat.qio" "$log" qemu-io -f vhdx -t writeback "$f") ;;
                *) s=$(t /dev/null "$log" "$WP" write "$f" "${LEN[$pat]}" "$DIR/$pat.txt") ;;
            esac
            # qemu-io prints only its prompts unless a command fails.
            if sed 's/qemu-io> //g' "$log" | grep -q .; then
                echo "$tool failed ($pat run $i):"; cat "$log"; exit 1
            fi
            read -r w c o <<<"$s"
            res[$pat-$tool]+="$w "
            cpu[$pat-$tool]+="$c "
            other[$pat-$tool]+="$o "
        done
        if qemu-img compare -q -f vhdx -F vhdx "$DIR/hvkit.vhdx" "$DIR/qemu.vhdx"; then
            same[$pat-hvkit-dyn]=$(( ${same[$pat-hvkit-dyn]:-0} + 1 ))
        else
            echo "$pat run $i: hvkit dynamic file differs from qemu's"
        fi
        if "$WP" compare "$DIR/hvkit.avhdx" "$DIR/qemu.vhdx" > /dev/null; then
            same[$pat-hvkit-diff]=$(( ${same[$pat-hvkit-diff]:-0} + 1 ))
        else
            echo "$pat run $i: hvkit differencing file differs from qemu's"
        fi
        if [ "$i" -eq 1 ]; then
            qemu-img check -q -f vhdx "$DIR/hvkit.vhdx" && echo "$pat: qemu-img check of the hvkit dynamic file: no errors"
        fi
    done
done
rm -f "$DIR"/qemu.vhdx "$DIR"/hvkit.vhdx "$DIR"/hvkit.avhdx

printf '%-5s %-11s %8s %8s %9s %7s %7s %-12s   %s\n' pat tool wall_s MiB/s IOPS cpu_s other_s "same as qemu" "wall seconds of each run (other cpu s)"
for pat in seq rand; do
    for tool in $tools; do
        m=$(echo "${res[$pat-$tool]}" | tr ' ' '\n' | grep . | median)
        c=$(echo "${cpu[$pat-$tool]}" | tr ' ' '\n' | grep . | median)
        o=$(echo "${other[$pat-$tool]}" | tr ' ' '\n' | grep . | median)
        runs=$(paste -d' ' <(echo "${res[$pat-$tool]}" | tr ' ' '\n' | grep .) <(echo "${other[$pat-$tool]}" | tr ' ' '\n' | grep .) | awk '{printf "%s (%.1f) ", $1, $2}')
        sm=-
        [ "$tool" = qemu ] || sm="${same[$pat-$tool]:-0}/$RUNS"
        printf '%-5s %-11s %8.3f %8.1f %9.0f %7.2f %7.2f %-12s   %s\n' "$pat" "$tool" "$m" \
            "$(awk -v b="${BYTES[$pat]}" -v m="$m" 'BEGIN {print b / 1048576 / m}')" \
            "$(awk -v n="${NWRITES[$pat]}" -v m="$m" 'BEGIN {print n / m}')" \
            "$c" "$o" "$sm" "$runs"
    done
done
