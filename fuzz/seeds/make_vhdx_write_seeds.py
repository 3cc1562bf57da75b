#!/usr/bin/env python3
"""Writes the seed inputs of the vhdx_write fuzz target into vhdx_write/
(the input format is documented at the top of fuzz_targets/vhdx_write.rs).
Run from anywhere: python3 fuzz/seeds/make_vhdx_write_seeds.py"""
import os

# Units, anchors, discard modes, resize modes.
BYTE, SECTOR, K4, BLOCK = range(4)
START, END, CHUNK, BLOCKSTART = range(4)
ZERO, UNMAP, TRANSPARENT = range(3)
SMALL, HUGE, RELATIVE, PARENT_SIZE = range(4)


def setup(diff=False, block2m=False, lss4k=False, mib=1, psize=0, layout=0, extra=0):
    b = diff | block2m << 1 | lss4k << 2 | (mib - 1) << 3 | psize << 5 | layout << 7
    return bytes([b, extra])


def pos(kind, unit, anchor, a, l, flag=0):
    return bytes([kind | unit << 3 | anchor << 5 | flag << 7]) + (a & 0xFFFFFF).to_bytes(3, "little") + l.to_bytes(2, "little")


def write(unit, anchor, a, l, fill, const=False, io=False):
    return pos(1 if io else 0, unit, anchor, a, l, const) + bytes([fill])


def discard(unit, anchor, a, l, mode, misaligned=False):
    return pos(2, unit, anchor, a, l, misaligned) + bytes([mode])


def resize(mode, a, deny_shrink=False):
    return bytes([3 | mode << 3 | deny_shrink << 7]) + (a & 0xFFFFFF).to_bytes(3, "little")


def read(unit, anchor, a, l):
    return pos(7, unit, anchor, a, l)


FLUSH, REOPEN, CRASH = bytes([4]), bytes([5]), bytes([6])

SEEDS = {
    # Dynamic, 1 MiB blocks, 512-byte sectors: aligned and unaligned writes,
    # partial and whole-block discards, flush, reopen.
    "dynamic-basic": setup(mib=2, extra=3)
    + write(SECTOR, START, 7, 9, 0x11)
    + write(BYTE, START, 1000, 3000, 0x22)
    + write(BYTE, BLOCKSTART, (1 << 8) | 0xF0, 40, 0x33, io=True)
    + discard(SECTOR, START, 8, 3, ZERO)
    + FLUSH
    + write(BLOCK, START, 1, 1, 0x44)
    + discard(BLOCK, START, 1, 1, UNMAP)
    + REOPEN
    + read(BYTE, START, 500, 9000),
    # Differencing over a dynamic parent: partial blocks, transparent
    # discards (partial and whole), a crash copy, grow past the parent and
    # shrink back.
    "diff-basic": setup(diff=True, mib=3, psize=1)
    + write(SECTOR, START, 5, 7, 0x55)
    + write(BYTE, START, 2 * 1048576 - 100, 300, 0x66)
    + discard(SECTOR, START, 6, 2, TRANSPARENT)
    + discard(BLOCK, START, 0, 1, TRANSPARENT)
    + CRASH
    + write(BLOCK, START, 1, 1, 0x77)
    + discard(SECTOR, START, 2048 + 10, 4, TRANSPARENT)
    + resize(SMALL, 16383)
    + write(BYTE, END, 700, 700, 0x88)
    + resize(PARENT_SIZE, 0)
    + resize(RELATIVE, -8)
    + read(BYTE, START, 0, 65535),
    # 4 KiB sectors, 2 MiB blocks, over a differencing parent over a smaller
    # grandparent; zero and unmap discards in a differencing disk.
    "diff-4k-chain": setup(diff=True, block2m=True, lss4k=True, mib=4, psize=2, layout=1)
    + write(BYTE, START, 4095, 2, 0x99)
    + discard(K4, START, 16, 300, ZERO)
    + discard(K4, START, 256, 300, UNMAP)
    + write(BLOCK, START, 0, 1, 0xAA, const=True)
    + discard(K4, START, 1, 1, TRANSPARENT)
    + FLUSH
    + discard(BLOCK, START, 0, 2, TRANSPARENT)
    + REOPEN
    + read(K4, START, 0, 2000),
    # Dynamic disk grown to 200 GiB (the BAT moves), written at the end and
    # around the 4 GiB chunk boundary, then shrunk back.
    "dynamic-huge": setup(mib=1)
    + resize(HUGE, 199)
    + write(BYTE, END, 5000, 5000, 0xBB)
    + write(BYTE, CHUNK, -3000, 6000, 0xCC)
    + CRASH
    + discard(BLOCK, END, 3, 3, ZERO)
    + discard(SECTOR, CHUNK, 0, 65535, UNMAP)
    + REOPEN
    + resize(SMALL, 4095)
    + read(BYTE, START, 0, 65535),
    # Differencing disk grown to 9 GiB: writes across the 4 and 8 GiB chunk
    # boundaries need the second and third chunks' sector bitmaps.
    "diff-chunks": setup(diff=True, mib=2, psize=3)
    + resize(HUGE, 8)
    + write(SECTOR, CHUNK, -3, 7, 0xDD)
    + write(K4, START, (4 << 30) // 4096 - 1, 2, 0xEE)
    + resize(RELATIVE, 0x7FFFFF)
    + discard(SECTOR, CHUNK, -1, 2, TRANSPARENT)
    + FLUSH
    + write(BYTE, END, 1, 1, 0xEF)
    + REOPEN,
    # Refusals: a misaligned discard, a shrink without permission and a
    # shrink over data.
    "refusals": setup(diff=True, mib=2, psize=0)
    + discard(SECTOR, START, 3, 3, ZERO, misaligned=True)
    + write(BYTE, END, 10, 5, 0x01)
    + resize(SMALL, 100, deny_shrink=True)
    + resize(SMALL, 100)
    + discard(SECTOR, END, 1, 1, ZERO)
    + resize(SMALL, 100)
    + resize(SMALL, 5000, deny_shrink=True),
}

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vhdx_write")
os.makedirs(out, exist_ok=True)
for name, data in SEEDS.items():
    with open(os.path.join(out, name + ".bin"), "wb") as f:
        f.write(data)
