#!/usr/bin/env bash
# hvkit merge next to qemu-img commit of the same data volume, and next to
# the copy bound (cp --reflink=never of the same bytes, then fsync), all in
# one run; then hvkit merge on a loop-mounted XFS with reflink (as root with
# mkfs.xfs). Prints medians and the ratios.
#
# Disks (benches/src/merge_case.rs): a 4 GiB dynamic parent with 2 GiB of
# data, and a child (2 MiB blocks) per layout: full (2 GiB of full blocks),
# half-partial (every block half written: 2048 partial blocks, 2 GiB),
# sparse (every 16th block: 256 MiB). The qcow2 pair has the same parent
# data and the same child ranges (written by qemu-io, 64 KiB clusters).
# Both tools flush their output: hvkit merge fsyncs at each commit; qemu-img
# commit runs with -t writeback and is followed by `sync FILE`, as is hvkit
# (free after its own fsync). qemu-img commit gets -d (do not empty the
# child afterwards), the like of hvkit merge --keep (the child stays, as a
# child of the merged parent): that pair is the comparison. hvkit merge
# without --keep also removes the child file, timed as `hvkit_rm` (on an
# ext4 mounted with `discard`, unlinking 2 GiB costs seconds by itself).
#
# Usage: benches/compare.sh [RUNS] [LAYOUTS...]   (BENCH_DIR: scratch folder)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
shift || true
LAYOUTS=${*:-full half-partial sparse}
DIR=${BENCH_DIR:-/tmp/hvkit-merge-bench}
mkdir -p "$DIR"
cargo build --release -q -p hvkit
cargo build --release -q -p hvkit-benches --example merge_case
HVKIT=$PWD/target/release/hvkit
CASE=$PWD/target/release/examples/merge_case

# settle (nothing dirty, the disk idle), drop_caches, secs, median.
. benches/lib.sh
copy() { cp --reflink=never "$1" "$2"; }

P=$DIR/pristine
mkdir -p "$P"
if [ ! -f "$P/base.vhdx" ]; then
    echo "building the parent (4 GiB, 2 GiB of data)"
    "$CASE" parent "$P"
    qemu-img convert -f vhdx -O qcow2 "$P/base.vhdx" "$P/base.qcow2"
fi

declare -A res
for layout in $LAYOUTS; do
    L=$DIR/pristine-$layout
    mkdir -p "$L"
    if [ ! -f "$L/data.raw" ]; then
        echo "building the $layout child"
        copy "$P/base.vhdx" "$L/base.vhdx"
        "$CASE" child "$L" "$layout"
        copy "$P/base.qcow2" "$L/base.qcow2"
        qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 "$L/child.qcow2" 4G
        args=()
        # qemu-io takes at most 2 GiB - 1 per write: 256 MiB pieces.
        while read -r off len; do
            while [ "$len" -gt 0 ]; do
                n=$(( len < 268435456 ? len : 268435456 ))
                args+=(-c "write -P 0xa5 $off $n")
                off=$((off + n)); len=$((len - n))
            done
        done < <("$CASE" ranges "$layout")
        qemu-io -f qcow2 "${args[@]}" "$L/child.qcow2" >/dev/null
        head -c "$("$CASE" bytes "$layout")" /dev/urandom > "$L/data.raw"
    fi
    bytes=$("$CASE" bytes "$layout")
    W=$DIR/work
    for i in $(seq "$RUNS"); do
        tools="hvkit qemu copy hvkit_rm"
        [ $((i % 2)) -eq 0 ] && tools="hvkit_rm copy qemu hvkit"
        for tool in $tools; do
            rm -rf "$W"; mkdir -p "$W"
            case $tool in
                hvkit|hvkit_rm) copy "$L/base.vhdx" "$W/base.vhdx"; copy "$L/child.avhdx" "$W/child.avhdx" ;;
                qemu) copy "$L/base.qcow2" "$W/base.qcow2"; copy "$L/child.qcow2" "$W/child.qcow2" ;;
            esac
            settle
            drop_caches
            case $tool in
                hvkit) s=$(secs bash -c "'$HVKIT' merge -q --keep '$W/child.avhdx' && sync '$W/base.vhdx'") ;;
                hvkit_rm) s=$(secs bash -c "'$HVKIT' merge -q '$W/child.avhdx' && sync '$W/base.vhdx'") ;;
                qemu) s=$(secs bash -c "qemu-img commit -q -d -t writeback '$W/child.qcow2' && sync '$W/base.qcow2'") ;;
                copy) s=$(secs bash -c "cp --reflink=never '$L/data.raw' '$W/out.raw' && sync '$W/out.raw'") ;;
            esac
            res[$layout-$tool]+="$s "
            if [ "$tool" = hvkit ] && [ "$i" = 1 ]; then
                "$HVKIT" compare "$W/base.vhdx" "$L/child.avhdx" | sed "s/^/$layout: merged base vs the chain before: /"
            fi
        done
    done
    rm -rf "$W"
    res[$layout-bytes]=$bytes
done

if [ "$RUNS" -eq 0 ]; then
    echo "data built in $DIR (RUNS=0: nothing timed)"
    exit 0
fi

printf '\n%-13s %9s %9s %9s %9s %9s %11s %12s\n' layout hvkit_s hvkit_rm_s qemu_s copy_s GiB/s qemu/hvkit hvkit/copy
for layout in $LAYOUTS; do
    h=$(echo "${res[$layout-hvkit]}" | median)
    r=$(echo "${res[$layout-hvkit_rm]}" | median)
    q=$(echo "${res[$layout-qemu]}" | median)
    c=$(echo "${res[$layout-copy]}" | median)
    awk -v l="$layout" -v h="$h" -v r="$r" -v q="$q" -v c="$c" -v b="${res[$layout-bytes]}" \
        'BEGIN {printf "%-13s %9.3f %9.3f %9.3f %9.3f %9.2f %10.2fx %11.0f%%\n", l, h, r, q, c, b / h / 2^30, q / h, 100 * c / h}'
    echo "  runs: hvkit ${res[$layout-hvkit]}| hvkit_rm ${res[$layout-hvkit_rm]}| qemu ${res[$layout-qemu]}| copy ${res[$layout-copy]}"
done

# Reflink: the full layout on a loop-mounted XFS (reflink=1).
if [ "$(id -u)" -eq 0 ] && command -v mkfs.xfs >/dev/null; then
    X=$DIR/xfs
    mkdir -p "$X"
    mountpoint -q "$X" || {
        rm -f "$DIR/xfs.img"
        truncate -s 24G "$DIR/xfs.img"
        mkfs.xfs -q -m reflink=1 "$DIR/xfs.img"
        mount -o loop "$DIR/xfs.img" "$X"
    }
    trap 'umount "$X" 2>/dev/null || true; rm -f "$DIR/xfs.img"' EXIT
    L=$DIR/pristine-full
    mkdir -p "$X/p"
    copy "$L/base.vhdx" "$X/p/base.vhdx"
    copy "$L/child.avhdx" "$X/p/child.avhdx"
    ms=""
    for i in $(seq "$RUNS"); do
        rm -rf "$X/w"; mkdir -p "$X/w"
        cp --reflink=always "$X/p/base.vhdx" "$X/p/child.avhdx" "$X/w/"
        settle
        drop_caches
        out=$("$HVKIT" merge -q --json "$X/w/child.avhdx")
        ms+="$(python3 -c 'import json,sys; v=json.load(sys.stdin); print(round(v["seconds"]*1000, 1), v["bytes_reflinked"], v["bytes_copied"])' <<<"$out") ; "
    done
    "$HVKIT" compare "$X/w/base.vhdx" "$L/child.avhdx" | sed 's/^/xfs: merged base vs the chain before: /'
    echo "xfs reflink merge of the full layout (2 GiB), per run: ms reflinked_bytes copied_bytes: $ms"
fi
