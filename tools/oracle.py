#!/usr/bin/env python3
"""Independent VHDX reader ("oracle") for hvkit's tests.

Usage:
    oracle.py --lib pyvhdi|dissect [--parent PARENT]... IMAGE [--dump OUT] [--chunk N]
    oracle.py --lib pyvhdi|dissect [--parent PARENT]... IMAGE --info

`--parent` is repeatable and gives the parent chain explicitly, nearest first:
`--parent PARENT --parent GRANDPARENT ...`.  Each file must be a VHDX; a parent
that is itself differencing takes the next `--parent`.  If more `--parent`
options are given than the chain uses, that is an error.

Libraries:
  pyvhdi   libyal's libvhdi (PyPI `libvhdi-python`).  Parents are attached with
           `child.set_parent(parent_file)` where `parent_file` is an already
           opened `pyvhdi.file`; the chain is built top-down from the oldest
           ancestor.  libvhdi does NOT find parents itself, so a differencing
           IMAGE without `--parent` is an error here.
  dissect  fox-it's dissect.hypervisor (`dissect.hypervisor.disk.vhdx.VHDX`).
           VHDX(path) has no parent argument; its constructor calls the module
           function `open_parent(child_dir, locator_entries)`, which opens
           `child_dir / relative_path` (backslashes -> '/') and, if that does
           not exist, `"/" + absolute_win32_path` (backslashes -> '/').  With
           `--parent` this script replaces that module function for the
           duration of the open so that the given files are used instead.
           Without `--parent` dissect's own path resolution is used.

Output (one JSON line on stdout):
  default: {"lib": ..., "size": virtual_size, "sha256": hex}
           `--dump OUT` also writes the full guest-visible content to OUT
           (removed again if reading fails half-way).
  --info:  metadata as reported by the library; common keys: size, block_size,
           logical_sector_size, physical_sector_size, disk_type
           ("fixed"/"dynamic"/"differencing"), has_parent, data_write_guid,
           virtual_disk_id, parent_identifier (the parent_linkage GUID,
           lower case without braces), parent_filename, parent_locator, chain
           (the same for each opened parent).  Keys the library does not
           report are null.  A differencing IMAGE may be described without
           its parents.
  error:   {"error": "..."} and exit status 2 (also for usage errors).

Known library behaviour (verified with libvhdi-python 20260901 and
dissect.hypervisor 3.21; neither replays the VHDX log):
  * libvhdi checks the child's parent_linkage against the parent's
    DataWriteGuid (set_parent fails with "mismatch in identifier"); it parses
    parent_linkage only if the GUID is lower case in braces; an upper-case
    GUID is silently read as all zeros, so set_parent then always fails.
  * libvhdi, differencing child: for every block not FULLY_PRESENT (also
    ZERO, UNMAPPED, UNDEFINED, NOT_PRESENT) it follows the sector bitmap:
    bit 0 -> parent, bit 1 -> child (zeros if the block has no offset).  So
    ZERO/UNMAPPED/UNDEFINED blocks read the parent's data, not zeros, and in a
    chunk whose sector-bitmap BAT entry is NOT_PRESENT it reads the "bitmap"
    from file offset 0 + (block % chunk_ratio) * bitmap_size, i.e. from the
    file identifier / headers / region tables.
  * libvhdi's "identifier" is the DataWriteGuid, not the Virtual Disk ID.
  * dissect does not check parent_linkage at all.
  * dissect reads ZERO/UNMAPPED/UNDEFINED as zeros, NOT_PRESENT from the
    parent, PARTIALLY_PRESENT via the bitmap (as the spec says); two of its
    read bugs are worked around in DissectDisk.read.
"""

import argparse
import hashlib
import json
import os
import sys
import uuid

MIB = 1 << 20


class OracleError(Exception):
    pass


class JsonArgumentParser(argparse.ArgumentParser):
    def error(self, message):
        fail("usage: " + message)


def emit(obj):
    sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
    sys.stdout.flush()


def fail(message):
    emit({"error": message})
    sys.exit(2)


def check_vhdx(path):
    """Both libraries give poor errors (or, libvhdi, also accept VHD v1): check first."""
    if not os.path.isfile(path):
        raise OracleError("no such file: %s" % path)
    with open(path, "rb") as f:
        if f.read(8) != b"vhdxfile":
            raise OracleError("not a VHDX file (no 'vhdxfile' signature at offset 0): %s" % path)


def norm_guid(value):
    """Normalise a GUID string ('{ABC-...}' or 'abc-...') to lower case, no braces."""
    if value is None:
        return None
    try:
        return str(uuid.UUID(value.strip().strip("{}")))
    except (ValueError, AttributeError):
        return value


# --------------------------------------------------------------------------
# pyvhdi
# --------------------------------------------------------------------------

class PyvhdiDisk:
    DISK_TYPES = {2: "fixed", 3: "dynamic", 4: "differencing"}

    def __init__(self, image, parents, need_all_parents=True):
        import pyvhdi

        self._mod = pyvhdi
        self._files = []
        paths = [image] + list(parents)
        for path in paths:
            check_vhdx(path)
            f = pyvhdi.file()
            f.open(path)
            self._files.append(f)
        # Count how many files of the given chain are actually used.
        used = 1
        for f in self._files:
            if not self._is_differencing(f):
                break
            used += 1
        if used > len(self._files) and need_all_parents:
            raise OracleError(
                "differencing image needs a parent: %s (libvhdi does not resolve "
                "parents itself; pass --parent)" % paths[len(self._files) - 1])
        if used < len(self._files):
            raise OracleError(
                "%d --parent given but the chain only has %d parent(s) (%s is not differencing)"
                % (len(parents), used - 1, paths[used - 1]))
        # Attach from the oldest ancestor down, so that each parent already has
        # its own parent when it is handed to its child.
        for i in range(min(used, len(self._files)) - 2, -1, -1):
            try:
                self._files[i].set_parent(self._files[i + 1])
            except Exception as e:
                pid = self._files[i].get_parent_identifier()
                hint = ""
                if pid is not None and norm_guid(pid) == str(uuid.UUID(int=0)):
                    hint = (" (libvhdi read the parent_linkage of %s as all zeros: it only"
                            " parses a lower-case '{guid}')" % paths[i])
                raise OracleError("%s: %s%s" % (type(e).__name__, e, hint))
        self.f = self._files[0]
        self.size = self.f.get_media_size()

    @classmethod
    def _is_differencing(cls, f):
        return f.get_disk_type() == 4

    def read(self, offset, length):
        data = self.f.read_buffer_at_offset(length, offset)
        return data if data is not None else b""

    def info(self):
        chain = []
        for f in self._files:
            dt = f.get_disk_type()
            chain.append({
                "size": f.get_media_size(),
                "logical_sector_size": f.get_bytes_per_sector(),
                "disk_type": self.DISK_TYPES.get(dt, dt),
                # libvhdi's "identifier" of a VHDX is the header's DataWriteGuid
                # (what a child's parent_linkage refers to), not the Virtual Disk ID.
                "data_write_guid": norm_guid(f.get_identifier()),
                "virtual_disk_id": None,
                "parent_identifier": norm_guid(f.get_parent_identifier()),
                "parent_filename": f.get_parent_filename(),
                "format_version": f.get_format_version(),
            })
        top = dict(chain[0])
        top.update({
            "lib": "pyvhdi",
            "lib_version": self._mod.get_version(),
            # libvhdi's Python binding reports neither of these:
            "block_size": None,
            "physical_sector_size": None,
            "has_parent": top["disk_type"] == "differencing",
            "parent_locator": None,
            "chain": chain[1:],
        })
        return top

    def close(self):
        for f in self._files:
            try:
                f.close()
            except Exception:
                pass


# --------------------------------------------------------------------------
# dissect.hypervisor
# --------------------------------------------------------------------------

class DissectDisk:
    def __init__(self, image, parents, info=False):
        from pathlib import Path

        from dissect.hypervisor.disk import vhdx as vhdx_mod

        self._mod = vhdx_mod
        for path in [image] + list(parents):
            check_vhdx(path)

        self._opened = []
        self.parent_error = None
        if parents:
            queue = list(parents)
            original = vhdx_mod.open_parent

            def explicit_open_parent(_child_dir, _locator):
                if not queue:
                    raise OracleError(
                        "differencing image needs another parent than the %d given with --parent"
                        % len(parents))
                p = queue.pop(0)
                v = vhdx_mod.VHDX(Path(p))
                self._opened.append(v)
                return v

            vhdx_mod.open_parent = explicit_open_parent
            try:
                self.v = vhdx_mod.VHDX(Path(image))
            finally:
                vhdx_mod.open_parent = original
            if queue:
                raise OracleError(
                    "%d --parent given but the chain only has %d parent(s)"
                    % (len(parents), len(parents) - len(queue)))
        else:
            try:
                self.v = vhdx_mod.VHDX(Path(image))
            except Exception as e:
                if not info:
                    raise
                # --info on a differencing image whose parent dissect cannot
                # find: describe the child alone.
                self.parent_error = "%s: %s" % (type(e).__name__, e)
                original = vhdx_mod.open_parent
                vhdx_mod.open_parent = lambda _d, _l: None
                try:
                    self.v = vhdx_mod.VHDX(Path(image))
                finally:
                    vhdx_mod.open_parent = original
        self.size = self.v.size

    def read(self, offset, length):
        # Work around two bugs of dissect.hypervisor 3.21 (both verified):
        #  * VHDX.read_sectors() uses the BAT entry of the first block for a
        #    whole run of up to one block's worth of sectors, so a run that
        #    starts inside a block and crosses into the next returns wrong data;
        #  * _iter_partial_runs() mis-walks a PARTIALLY_PRESENT sector bitmap
        #    when the run does not start on a bitmap byte boundary (sector
        #    number not a multiple of 8).
        # The AlignedStream read() path only aligns to 8 KiB, which is not
        # enough for 4 KiB sectors, so call read_sectors() directly with runs
        # that start on an 8-sector boundary and never cross a block boundary.
        v = self.v
        ss = v.sector_size
        spb = v.block_size // ss
        first = (offset // ss) // 8 * 8
        last = min(-(-(offset + length) // ss), -(-v.size // ss))  # exclusive
        parts = []
        sector = first
        while sector < last:
            n = min(last, (sector // spb + 1) * spb) - sector
            data = v.read_sectors(sector, n)
            parts.append(data)
            if len(data) != n * ss:
                break
            sector += n
        buf = b"".join(parts)
        skip = offset - first * ss
        return buf[skip:skip + length]

    @staticmethod
    def _describe(v):
        from dissect.hypervisor.disk.c_vhdx import PHYSICAL_SECTOR_SIZE_GUID

        fp_lba = None
        try:
            from dissect.hypervisor.disk.c_vhdx import FILE_PARAMETERS_GUID

            fp_lba = bool(v.metadata.get(FILE_PARAMETERS_GUID).leave_block_allocated)
        except Exception:
            pass
        if v.has_parent:
            disk_type = "differencing"
        elif fp_lba:
            disk_type = "fixed"
        else:
            disk_type = "dynamic"
        locator = dict(v.parent_locator.entries) if v.parent_locator is not None else None
        hdr = v.header
        return {
            "size": v.size,
            "block_size": v.block_size,
            "logical_sector_size": v.sector_size,
            "physical_sector_size": v.metadata.get(PHYSICAL_SECTOR_SIZE_GUID, required=False),
            "chunk_ratio": v._chunk_ratio,
            "leave_block_allocated": fp_lba,
            "has_parent": bool(v.has_parent),
            # dissect has no fixed/dynamic notion; derived from LeaveBlockAllocated/HasParent
            "disk_type": disk_type,
            "virtual_disk_id": str(v.id),
            "parent_identifier": norm_guid(locator.get("parent_linkage")) if locator else None,
            # same choice as libvhdi's parent filename, for comparability:
            # absolute_win32_path, else volume_path, else relative_path
            "parent_filename": _libvhdi_parent_filename(locator),
            "parent_locator": locator,
            "header_sequence_number": hdr.sequence_number,
            "log_guid": str(uuid.UUID(bytes_le=bytes(hdr.log_guid))),
            "data_write_guid": str(uuid.UUID(bytes_le=bytes(hdr.data_write_guid))),
            "file_write_guid": str(uuid.UUID(bytes_le=bytes(hdr.file_write_guid))),
        }

    def info(self):
        top = self._describe(self.v)
        chain = []
        p = self.v.parent
        while p is not None:
            chain.append(self._describe(p))
            p = p.parent
        top.update({"lib": "dissect", "lib_version": _dist_version("dissect.hypervisor"),
                    "chain": chain,
                    "parent_error": getattr(self, "parent_error", None)})
        return top

    def close(self):
        for v in [self.v] + self._opened:
            try:
                v.fh.close()
            except Exception:
                pass


def _libvhdi_parent_filename(locator):
    if not locator:
        return None
    for key in ("absolute_win32_path", "volume_path", "relative_path"):
        if key in locator:
            return locator[key]
    return None


def _dist_version(name):
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return None


# --------------------------------------------------------------------------

def main(argv):
    ap = JsonArgumentParser(description="VHDX oracle (independent reader) for hvkit tests")
    ap.add_argument("--lib", required=True, choices=["pyvhdi", "dissect"])
    ap.add_argument("--parent", action="append", default=[], metavar="PARENT",
                    help="parent image; repeat for grandparent etc. (nearest first)")
    ap.add_argument("image", metavar="IMAGE")
    ap.add_argument("--dump", metavar="OUT", help="also write the guest-visible content to OUT")
    ap.add_argument("--chunk", type=int, default=4 * MIB, metavar="N",
                    help="read size in bytes (default 4 MiB)")
    ap.add_argument("--info", action="store_true", help="print metadata instead of hashing")
    args = ap.parse_args(argv)
    if args.chunk <= 0:
        fail("--chunk must be positive")
    if args.info and args.dump:
        fail("--info and --dump are mutually exclusive")

    disk = None
    out = None
    try:
        if args.lib == "pyvhdi":
            # --info may describe a differencing image whose parent is not given
            disk = PyvhdiDisk(args.image, args.parent, need_all_parents=not args.info)
        else:
            disk = DissectDisk(args.image, args.parent, info=args.info)
        if args.info:
            emit(disk.info())
            return 0
        size = disk.size
        if not isinstance(size, int) or size < 0:
            raise OracleError("library reported invalid virtual size %r" % (size,))
        h = hashlib.sha256()
        if args.dump:
            out = open(args.dump, "wb")
        off = 0
        while off < size:
            n = min(args.chunk, size - off)
            data = disk.read(off, n)
            if len(data) != n:
                raise OracleError("short read at offset %d: wanted %d bytes, got %d"
                                  % (off, n, len(data)))
            h.update(data)
            if out is not None:
                out.write(data)
            off += n
        if out is not None:
            out.close()
            out = None
        emit({"lib": args.lib, "size": size, "sha256": h.hexdigest()})
        return 0
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001 - the oracle must always answer in JSON
        msg = str(e) or repr(e)
        fail("%s: %s" % (type(e).__name__, msg))
    finally:
        if out is not None:  # failed half-way: do not leave a truncated dump behind
            out.close()
            try:
                os.unlink(args.dump)
            except OSError:
                pass
        if disk is not None:
            disk.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
