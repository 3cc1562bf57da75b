#!/usr/bin/env python3
"""Reads guest-physical memory from an ELF core with volatility3's ELF layer
(`volatility3.framework.layers.elf.Elf64Layer`), for hvkit's tests.

Usage: vol_elf_read.py ELF GPA LEN [GPA LEN ...]

Prints one JSON line: {"max_address": N, "reads": [sha256 hex of the LEN
bytes at each GPA, ...]}; {"error": "..."} and exit status 2 on failure.
Verified with volatility3 2.28.2.
"""
import hashlib
import json
import pathlib
import sys


def main():
    args = sys.argv[1:]
    if len(args) < 3 or len(args) % 2 != 1:
        print(json.dumps({"error": "usage: vol_elf_read.py ELF GPA LEN [GPA LEN ...]"}))
        return 2
    try:
        from volatility3.framework import contexts
        from volatility3.framework.layers import elf, physical

        ctx = contexts.Context()
        ctx.config["FileLayer.location"] = pathlib.Path(args[0]).resolve().as_uri()
        ctx.add_layer(physical.FileLayer(ctx, "FileLayer", "FileLayer"))
        ctx.config["ElfLayer.base_layer"] = "FileLayer"
        layer = elf.Elf64Layer(ctx, "ElfLayer", "ElfLayer")
        reads = []
        for i in range(1, len(args), 2):
            gpa, n = int(args[i], 0), int(args[i + 1], 0)
            reads.append(hashlib.sha256(layer.read(gpa, n)).hexdigest())
        print(json.dumps({"max_address": layer.maximum_address, "reads": reads}))
        return 0
    except Exception as ex:  # noqa: BLE001 - report any failure as JSON
        print(json.dumps({"error": f"{type(ex).__name__}: {ex}"}))
        return 2


if __name__ == "__main__":
    sys.exit(main())
