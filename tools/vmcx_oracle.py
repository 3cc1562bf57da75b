#!/usr/bin/env python3
"""Independent HyperVStorage (.vmcx/.vmrs) reader ("oracle") for hvkit's tests.

Usage: vmcx_oracle.py FILE

Opens FILE with fox-it's dissect.hypervisor (`dissect.hypervisor.descriptor.
hyperv.HyperVFile`) and prints one JSON line:
  {"keys": [[path, type, value], ...]}   every key, duplicates included,
                                          sorted by path then value
  {"error": "..."}                       and exit status 2 on failure

dissect's own `as_dict()` keeps only one of several siblings with the same
name, so this walks every entry of every active key table instead and
builds each path by following `entry.parent`.  Types are lower-case names
(int, uint, double, string, array, bool, node); array values are hex;
node values are null.  dissect does not verify checksums, does not replay
the log and does not follow the object-table chain link specially (it
treats every allocated ObjectTable entry as another table).
"""
import json
import sys


def rows(path):
    """Every key of the HyperVStorage file at `path`: [path, type, value] rows, sorted."""
    from dissect.hypervisor.descriptor.hyperv import HyperVFile
    from dissect.hypervisor.descriptor.c_hyperv import KeyDataType

    with open(path, "rb") as fh:
        f = HyperVFile(fh)
        out = []
        for tables in f.key_tables.values():
            for e in tables[0].entries:
                if e.type == KeyDataType.Free:
                    continue
                parts = []
                p = e
                while p is not None:
                    parts.append(p.key)
                    p = p.parent
                kp = "/" + "/".join(reversed(parts))
                ty = e.type.name.lower()
                if e.type == KeyDataType.Node:
                    v = None
                else:
                    v = e.value
                    if isinstance(v, (bytes, memoryview)):
                        v = bytes(v).hex()
                out.append([kp, ty, v])
    out.sort(key=lambda r: (r[0], json.dumps(r[2])))
    return out


def main():
    if len(sys.argv) != 2:
        print(json.dumps({"error": "usage: vmcx_oracle.py FILE"}))
        return 2
    try:
        print(json.dumps({"keys": rows(sys.argv[1])}))
        return 0
    except Exception as ex:  # noqa: BLE001 - report any failure as JSON
        print(json.dumps({"error": f"{type(ex).__name__}: {ex}"}))
        return 2


if __name__ == "__main__":
    sys.exit(main())
