//! Commands that run out of space (a small tmpfs, as root): they fail
//! naming the file, offset and cause, leave the images reading as before,
//! and give back the space they had taken.

mod common;

use common::*;

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
        let fs = match SmallFs::mount(if up { 84 } else { 64 }) {
            Ok(fs) => fs,
            Err(why) => {
                println!("SKIP: {why}");
                return;
            }
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
    let fs = match SmallFs::mount(40) {
        Ok(fs) => fs,
        Err(why) => {
            println!("SKIP: {why}");
            return;
        }
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
