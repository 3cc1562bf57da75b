//! Commands that run out of space (a small tmpfs, as root): they fail
//! naming the file, offset and cause, leave the images reading as before,
//! and give back the space they had taken.

mod common;

use common::*;
use std::path::Path;

/// A merge that runs out of space (a small tmpfs) fails with the file,
/// offset and cause, the chain reads as before, and the space the merge
/// had taken is given back: the filesystem is as full as before the merge.
/// Down (the child's data into the base) and up (a parent's into its
/// child, whose own content must not change).
#[test]
fn merge_on_a_full_disk_fails_cleanly_and_gives_the_space_back() {
    let side = scratch();
    let s = side.path();
    for up in [false, true] {
        let Some(fs) = SmallFs::mount_or_skip(if up { 84 } else { 64 }) else {
            return;
        };
        let d = fs.path();
        let base = d.join("base.vhdx");
        ok(hvkit(&["create", p(&base), "--size", "256M"]));
        write(&base, s, 0, &noise(11, if up { 4 } else { 8 } * MIB));
        let mut parent = base.clone();
        if up {
            let mid = d.join("mid.avhdx");
            ok(hvkit(&["create", p(&mid), "--parent", p(&base)]));
            write(&mid, s, 0, &noise(12, 20 * MIB));
            parent = mid;
        }
        let child = d.join("c.avhdx");
        ok(hvkit(&["create", p(&child), "--parent", p(&parent)]));
        write(&child, s, 100 * MIB, &noise(13, 40 * MIB));
        let want = flatten(&child, &s.join("want.raw"));
        let used = used_bytes(d);
        let o = hvkit(&["merge", p(&child), "--json"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "up {up}: {err}");
        let written = if up { &child } else { &base };
        assert!(
            err.contains(&format!("{}: I/O error at offset", written.display()))
                && err.contains("No space left on device")
                && err.contains("the chain still reads as before"),
            "up {up}: {err}"
        );
        assert!(child.exists() && parent.exists(), "up {up}");
        assert_eq!(flatten(&child, &s.join("got.raw")), want, "up {up}");
        if up {
            // The parent a merge upward reads from is untouched too.
            ok(hvkit(&["check", p(&parent)]));
        }
        ok(hvkit(&["check", p(written)]));
        let after = used_bytes(d);
        assert!(
            after <= used + MIB as u64,
            "up {up}: {after} bytes in use after the failed merge, {used} before"
        );
    }
}

/// `hvkit write` into a differencing disk on a full filesystem fails with
/// the file, offset and cause; the blocks it had allocated and not
/// committed go back (the filesystem's use is as before), and the disk
/// checks clean and reads as before or with the new bytes, never anything
/// else.
#[test]
fn write_on_a_full_disk_fails_cleanly_and_gives_the_space_back() {
    let side = scratch();
    let s = side.path();
    let Some(fs) = SmallFs::mount_or_skip(40) else {
        return;
    };
    let d = fs.path();
    let base = d.join("base.vhdx");
    ok(hvkit(&["create", p(&base), "--size", "256M"]));
    write(&base, s, 0, &noise(21, 8 * MIB));
    let child = d.join("c.avhdx");
    ok(hvkit(&["create", p(&child), "--parent", p(&base)]));
    let before = flatten(&child, &s.join("before.raw"));
    let used = used_bytes(d);
    let data = noise(22, 40 * MIB);
    let input = s.join("input.bin");
    std::fs::write(&input, &data).unwrap();
    let o = hvkit(&["write", p(&child), "--offset", "4M", "-i", p(&input)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("{}: I/O error at offset", child.display()))
            && err.contains("No space left on device"),
        "{err}"
    );
    let after = used_bytes(d);
    assert!(
        after <= used + MIB as u64,
        "{after} bytes in use after the failed write, {used} before"
    );
    ok(hvkit(&["check", p(&child)]));
    let got = flatten(&child, &s.join("got.raw"));
    for (i, (g, b)) in got.chunks(MIB).zip(before.chunks(MIB)).enumerate() {
        let new = (4..44)
            .contains(&i)
            .then(|| &data[(i - 4) * MIB..(i - 3) * MIB]);
        assert!(
            g == b || Some(g) == new,
            "MiB {i} is neither what it was nor the new data"
        );
    }
}

/// `hvkit convert` onto a full filesystem, to raw (both copy paths) and to
/// VHDX: it fails naming the output, the offset and the cause, and removes
/// the partial output it had created.
#[test]
fn convert_onto_a_full_disk_fails_and_removes_its_output() {
    let side = scratch();
    let s = side.path();
    let src = s.join("src.vhdx");
    ok(hvkit(&["create", p(&src), "--size", "64M"]));
    write(&src, s, 0, &noise(31, 48 * MIB));
    let raw_src = s.join("src.raw");
    flatten(&src, &raw_src);
    let Some(fs) = SmallFs::mount_or_skip(20) else {
        return;
    };
    let d = fs.path();
    let cases: [(&Path, &str, &[&str]); 3] = [
        (&src, "out.raw", &["-O", "raw"]),
        (&src, "out.raw", &["-O", "raw", "--buffered"]),
        (&raw_src, "out.vhdx", &["-O", "vhdx"]),
    ];
    for (from, name, how) in cases {
        let out = d.join(name);
        let mut args = vec!["convert", "-q", p(from), p(&out)];
        args.extend_from_slice(how);
        let o = hvkit(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{how:?}: {err}");
        assert!(
            err.contains(&format!("{}: I/O error at offset 0x", out.display()))
                && err.contains("No space left on device")
                && !err.contains("writing the output at offset"),
            "{how:?}: {err}"
        );
        assert!(!out.exists(), "{how:?}: the partial output was left");
    }
}
