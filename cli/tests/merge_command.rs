//! `hvkit merge` end to end: output and JSON, refusals and their exit codes,
//! and `kill -9` at many points of a merge: every time, the chain opens and
//! reads exactly what it read before, and running the same merge again
//! completes it. (A merge on a full disk: `full_disk.rs`.)

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

mod common;

use common::*;

/// base (64 MiB) <- c1 <- c2, each with data.
fn chain(dir: &Path, size_mib: usize, data_mib: usize) -> (PathBuf, PathBuf, PathBuf) {
    let base = dir.join("base.vhdx");
    let c1 = dir.join("c1.avhdx");
    let c2 = dir.join("c2.avhdx");
    ok(hvkit(&[
        "create",
        p(&base),
        "--size",
        &format!("{size_mib}M"),
    ]));
    write(&base, dir, 0, &noise(1, 8 * MIB));
    ok(hvkit(&["create", p(&c1), "--parent", p(&base)]));
    write(&c1, dir, 3 * MIB + 512, &noise(2, data_mib * MIB));
    ok(hvkit(&[
        "discard",
        p(&c1),
        "--offset",
        "2M",
        "--length",
        "1M",
    ]));
    ok(hvkit(&["create", p(&c2), "--parent", p(&c1)]));
    write(&c2, dir, 5 * MIB - 4096, &noise(3, 2 * MIB));
    (base, c1, c2)
}

#[test]
fn merge_has_help() {
    let out = ok(hvkit(&["merge", "--help"]));
    for needle in [
        "--into",
        "--keep",
        "--json",
        "--scan",
        "--no-reflink",
        "run the same command again",
    ] {
        assert!(out.contains(needle), "{needle} missing from: {out}");
    }
}

#[test]
fn merge_a_middle_layer_then_the_leaf_with_json() {
    let dir = scratch();
    let d = dir.path();
    let (base, c1, c2) = chain(d, 64, 6);
    let want = flatten(&c2, &d.join("want.raw"));
    let out = ok(hvkit(&["merge", p(&c1)]));
    assert!(out.contains("merged 1 layer(s) into"), "{out}");
    assert!(
        out.contains("re-pointed:") && out.contains("c2.avhdx"),
        "{out}"
    );
    assert!(!c1.exists());
    assert_eq!(flatten(&c2, &d.join("got.raw")), want);
    ok(hvkit(&["check", p(&c2)]));

    let v: Value = serde_json::from_str(&ok(hvkit(&["merge", p(&c2), "--json"]))).unwrap();
    assert_eq!(v["layers_merged"].as_array().unwrap().len(), 1);
    assert_eq!(
        v["bytes_copied"].as_u64().unwrap() + v["bytes_reflinked"].as_u64().unwrap(),
        2 * MIB as u64
    );
    assert_eq!(v["files_removed"][0].as_str(), Some(p(&c2)));
    assert_eq!(flatten(&base, &d.join("got.raw")), want);
    ok(hvkit(&["check", p(&base)]));
}

#[test]
fn merge_refusals_exit_1_and_change_nothing() {
    let dir = scratch();
    let d = dir.path();
    let (base, c1, _c2) = chain(d, 16, 2);
    let other = d.join("other.avhdx");
    ok(hvkit(&["create", p(&other), "--parent", p(&base)]));
    let before = std::fs::read(&base).unwrap();
    let o = hvkit(&["merge", p(&c1)]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("other.avhdx") && err.contains("also the parent"),
        "{err}"
    );
    let o = hvkit(&["merge", p(&base)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a differencing disk"));
    let o = hvkit(&["merge", p(&d.join("missing.avhdx"))]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("missing.avhdx: cannot open: No such file"),
        "{err}"
    );
    assert_eq!(std::fs::read(&base).unwrap(), before);
    assert!(c1.exists());
}

#[test]
fn kill_9_at_any_point_keeps_the_content_and_a_rerun_completes() {
    let dir = scratch();
    let d = dir.path();
    // Big enough that a merge takes a while: 160 MiB of data in c1.
    let (base, c1, c2) = chain(d, 256, 160);
    let want = flatten(&c2, &d.join("want.raw"));
    let pristine = d.join("pristine");
    std::fs::create_dir(&pristine).unwrap();
    for f in [&base, &c1, &c2] {
        std::fs::copy(f, pristine.join(f.file_name().unwrap())).unwrap();
    }
    let mut killed = 0;
    let delays = [0u64, 2, 5, 10, 20, 35, 50, 80, 120, 200, 300, 500];
    // Every delay twice: copying with copy_file_range, and with O_DIRECT
    // reads and writes on a writer thread (`--direct`).
    for (delay_ms, direct) in delays.iter().flat_map(|&d| [(d, false), (d, true)]) {
        for f in [&base, &c1, &c2] {
            std::fs::copy(pristine.join(f.file_name().unwrap()), f).unwrap();
        }
        let mut args = vec!["merge", "-q", p(&c2), "--into", p(&base)];
        if direct {
            args.push("--direct");
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_hvkit"))
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        // SIGKILL: no destructor, no flush.
        let _ = child.kill();
        let status = child.wait().unwrap();
        if status.success() {
            // Finished before the kill: the base holds everything.
            assert_eq!(flatten(&base, &d.join("got.raw")), want);
            continue;
        }
        killed += 1;
        // The chain still reads what it read before, from whichever of the
        // merged layers remain.
        let leaf = if c2.exists() { &c2 } else { &base };
        assert_eq!(
            flatten(leaf, &d.join("got.raw")),
            want,
            "killed after {delay_ms} ms (direct: {direct})"
        );
        let mut rerun = String::new();
        // `hvkit info` of whichever merged layers are still there.
        let info_of = |f: &Path| {
            if f.exists() {
                ok(hvkit(&["info", p(f)]))
            } else {
                "(removed)".to_string()
            }
        };
        let info_before = format!("c1: {}\nc2: {}", info_of(&c1), info_of(&c2));
        if c2.exists() {
            let mut a = args.clone();
            a.push("--json");
            rerun = ok(hvkit(&a));
        } else if c1.exists() {
            // Only a leftover merged layer remains; the base is complete.
            assert_eq!(flatten(&base, &d.join("got.raw")), want);
            continue;
        }
        assert!(
            !c1.exists() && !c2.exists(),
            "killed after {delay_ms} ms (direct: {direct}); before the rerun: {info_before}\nrerun: {rerun}"
        );
        assert_eq!(
            flatten(&base, &d.join("got.raw")),
            want,
            "rerun after {delay_ms} ms (direct: {direct})"
        );
        ok(hvkit(&["check", p(&base)]));
    }
    println!("merges killed mid-way: {killed}");
    assert!(
        killed >= 6,
        "only {killed} merges were still running when killed"
    );
}
