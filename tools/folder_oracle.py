#!/usr/bin/env python3
"""Independent reader of a whole VM folder ("oracle") for hvkit's checkpoint tests.

Usage: folder_oracle.py < REQUEST.json

REQUEST:
  {"configs": [PATH, ...],                     .vmcx/.vmrs files to open
   "disks":   [{"chain": [LEAF, PARENT, ...]}]  disk chains, leaf first}

For every config, fox-it's dissect.hypervisor (HyperVFile) reads every key
(duplicate siblings included, as tools/vmcx_oracle.py does) and the answer
gives the number of keys and the values of the keys hvkit's checkpoint tree
is made of (the /configuration/hvkit node, the VM's id and name, and every
drive pathname).  For every disk chain, libyal's libvhdi (pyvhdi, with the
parents attached by set_parent as given, so it checks each parent_linkage)
and dissect.hypervisor (which finds the parents itself through the
relative_path of each locator) each read the whole guest content, and the
answer gives both SHA-256 values.

Answer (one JSON object on stdout):
  {"configs": {PATH: {"keys": N, "values": {KEYPATH: VALUE}, "drives": [PATHNAME, ...]}},
   "disks": {LEAF: {"pyvhdi": SHA256, "dissect": SHA256, "size": N}}}
  {"error": "..."} and exit status 2 on any failure.
"""
import hashlib
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import oracle  # noqa: E402  (the VHDX oracles: PyvhdiDisk, DissectDisk)
import vmcx_oracle  # noqa: E402  (every key of a HyperVStorage file)

WANTED_PREFIXES = ("/configuration/hvkit/",)
WANTED = (
    "/configuration/properties/global_id",
    "/configuration/properties/name",
    "/configuration/settings/global/logical_id",
    "/configuration/global_settings/snapshots/user_type",
)
CHUNK = 4 << 20


def describe_config(path):
    rows = vmcx_oracle.rows(path)
    values = {}
    drives = []
    for kp, _ty, v in rows:
        if kp.startswith(WANTED_PREFIXES) or kp in WANTED:
            if v is not None:
                values[kp] = v
        if kp.endswith("/pathname") and "/controller" in kp and v:
            drives.append(v)
    return {"keys": len(rows), "values": values, "drives": sorted(drives)}


def digest(disk):
    h = hashlib.sha256()
    off = 0
    while off < disk.size:
        n = min(CHUNK, disk.size - off)
        b = disk.read(off, n)
        if len(b) != n:
            raise oracle.OracleError("short read at %d: %d of %d bytes" % (off, len(b), n))
        h.update(b)
        off += n
    return h.hexdigest()


def main():
    try:
        req = json.load(sys.stdin)
        out = {"configs": {}, "disks": {}}
        for p in req.get("configs", []):
            out["configs"][p] = describe_config(p)
        for d in req.get("disks", []):
            chain = d["chain"]
            py = oracle.PyvhdiDisk(chain[0], chain[1:])
            try:
                py_sha = digest(py)
                size = py.size
            finally:
                py.close()
            ds = oracle.DissectDisk(chain[0], [])
            try:
                ds_sha = digest(ds)
            finally:
                ds.close()
            out["disks"][chain[0]] = {"pyvhdi": py_sha, "dissect": ds_sha, "size": size}
        print(json.dumps(out))
        return 0
    except Exception as ex:  # noqa: BLE001 - report any failure as JSON
        print(json.dumps({"error": "%s: %s" % (type(ex).__name__, ex)}))
        return 2


if __name__ == "__main__":
    sys.exit(main())
