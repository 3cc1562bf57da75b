# Helpers shared by the benchmark scripts (sourced, not run).

# The block device under a path (for its I/O counters), empty if unknown.
disk_of() {
    local src
    src=$(findmnt -no SOURCE --target "$1" 2>/dev/null | head -1)
    src=$(basename "$src" 2>/dev/null || true)
    [ -e "/sys/class/block/$src/stat" ] && echo "$src"
}

# Lets the filesystem under $DIR finish what earlier runs left: writes back
# dirty pages, then waits until the disk has done no I/O for 2 s (the ext4
# here is mounted with `discard`, and deleting a 4 GiB file keeps the disk
# busy with discards for seconds after `sync` returns; a run started then
# is measured slower). Gives up waiting after 120 s.
settle() {
    sync
    while [ "$(awk '/^(Dirty|Writeback):/ {s += $2} END {print s}' /proc/meminfo)" -gt 65536 ]; do sleep 1; done
    local dev a b waited=0
    dev=$(disk_of "${DIR:-/tmp}")
    if [ -n "$dev" ]; then
        a=$(cat "/sys/class/block/$dev/stat")
        while sleep 2; b=$(cat "/sys/class/block/$dev/stat"); [ "$a" != "$b" ] && [ $waited -lt 120 ]; do
            a=$b
            waited=$((waited + 2))
        done
    else
        sleep 3
    fi
    # Extra quiet time (seconds) for what the guest cannot see, such as the
    # host writing back a virtual disk's file.
    sleep "${SETTLE_EXTRA:-0}"
}
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }
# Prints "wall cpu" seconds of a command (cpu = user + system).
t() {
    local out
    out=$( { TIMEFORMAT='%R %U %S'; time "$@" >/dev/null; } 2>&1 )
    awk '{print $1, $2 + $3}' <<<"$out"
}
# Prints the wall seconds of a command.
secs() {
    local s e
    s=$(date +%s.%N)
    "$@" >/dev/null
    e=$(date +%s.%N)
    awk -v s="$s" -v e="$e" 'BEGIN {printf "%.3f", e - s}'
}
# Median of numbers given one per line or separated by spaces.
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
