//! `hvkit vm` and `hvkit checkpoint` end to end: the story of the seeds
//! through the binary with its text and JSON output (the documented `vm
//! info --json` schema), refusals with their exit codes, `--help`
//! everywhere, and `kill -9` of the CLI at many moments of a delete (a
//! merge), an apply and a create: every time the folder reads as before or
//! as after, and running the same command again completes it.

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

mod common;

use common::*;

fn json(out: String) -> Value {
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn info(dir: &Path) -> Value {
    json(ok(hvkit(&["vm", "info", p(dir), "--json"])))
}

fn leaf(dir: &Path, disk: usize) -> PathBuf {
    PathBuf::from(info(dir)["disks"][disk]["path"].as_str().unwrap())
}

#[test]
fn help_everywhere() {
    for args in [
        vec!["vm", "--help"],
        vec!["vm", "new", "--help"],
        vec!["vm", "info", "--help"],
        vec!["vm", "set", "--help"],
        vec!["checkpoint", "--help"],
        vec!["checkpoint", "create", "--help"],
        vec!["checkpoint", "list", "--help"],
        vec!["checkpoint", "apply", "--help"],
        vec!["checkpoint", "revert", "--help"],
        vec!["checkpoint", "rename", "--help"],
        vec!["checkpoint", "export", "--help"],
        vec!["checkpoint", "delete", "--help"],
        vec!["checkpoint", "delete-subtree", "--help"],
    ] {
        let out = ok(hvkit(&args));
        assert!(out.contains("Usage"), "{args:?}: {out}");
    }
}

#[test]
fn the_checkpoint_story_through_the_cli() {
    let t = scratch();
    let d = t.path();
    let vm = d.join("web");
    let j = json(ok(hvkit(&[
        "vm",
        "new",
        p(&vm),
        "--name",
        "web",
        "--memory",
        "2G",
        "--processors",
        "2",
        "--disk-size",
        "64M",
        "--disk-size",
        "32M",
        "--checkpoint-type",
        "standard",
        "--json",
    ])));
    // The schema.
    for k in [
        "id",
        "name",
        "checkpoint_type",
        "state",
        "disks",
        "checkpoints",
        "current",
    ] {
        assert!(j.get(k).is_some(), "no {k}: {j}");
    }
    assert_eq!(j["name"], "web");
    assert_eq!(j["memory_mb"], 2048);
    assert_eq!(j["processors"], 2);
    assert_eq!(j["checkpoint_type"], "standard");
    assert_eq!(j["state"], "off");
    assert_eq!(j["current"], Value::Null);
    assert_eq!(j["disks"].as_array().unwrap().len(), 2);
    let d0 = &j["disks"][0];
    assert!(Path::new(d0["path"].as_str().unwrap()).is_absolute());
    assert_eq!(d0["chain"][0], d0["path"]);

    write(&leaf(&vm, 0), d, 0, b"one");
    let c1 = json(ok(hvkit(&[
        "checkpoint",
        "create",
        p(&vm),
        "--name",
        "one",
        "--json",
    ])));
    assert_eq!(c1["checkpoint"]["kind"], "standard");
    assert_eq!(c1["checkpoint"]["has_memory"], false);
    assert_eq!(c1["checkpoint"]["parent"], Value::Null);
    let id1 = c1["checkpoint"]["id"].as_str().unwrap().to_string();
    write(&leaf(&vm, 0), d, 0, b"two");
    let out = ok(hvkit(&["checkpoint", "create", p(&vm), "--name", "two"]));
    assert!(
        out.contains("took checkpoint \"two\"") && out.contains("standard"),
        "{out}"
    );
    let j = info(&vm);
    assert_eq!(j["checkpoints"].as_array().unwrap().len(), 2);
    let two = j["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "two")
        .unwrap();
    assert_eq!(two["parent"], id1.as_str());
    assert_eq!(j["current"], two["id"]);
    // Each checkpoint's frozen disks are absolute and in the disk's chain.
    let chain: Vec<&str> = j["disks"][0]["chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(chain.contains(&two["disks"][0].as_str().unwrap()));
    // The tree, drawn.
    let text = ok(hvkit(&["vm", "info", p(&vm)]));
    assert!(
        text.contains("└── one") && text.contains("    └── two") && text.contains("Now"),
        "{text}"
    );

    // Branch: apply one, keeping the current state.
    write(&leaf(&vm, 0), d, 0, b"thr");
    let a = json(ok(hvkit(&[
        "checkpoint",
        "apply",
        p(&vm),
        "one",
        "--save-current",
        "--save-name",
        "kept",
        "--json",
    ])));
    assert_eq!(a["applied"], id1.as_str());
    assert_eq!(a["state"], "off");
    assert_eq!(flatten(&leaf(&vm, 0), &d.join("x.raw"))[..3], *b"one");
    let j = info(&vm);
    assert_eq!(j["current"], id1.as_str());
    assert_eq!(j["checkpoints"].as_array().unwrap().len(), 3);
    // Rename, revert, list.
    ok(hvkit(&["checkpoint", "rename", p(&vm), "kept", "third"]));
    write(&leaf(&vm, 0), d, 0, b"xyz");
    ok(hvkit(&["checkpoint", "revert", p(&vm)]));
    assert_eq!(flatten(&leaf(&vm, 0), &d.join("x.raw"))[..3], *b"one");
    let l = json(ok(hvkit(&["checkpoint", "list", p(&vm), "--json"])));
    let names: Vec<&str> = l["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["one", "two", "third"]);

    // Export "third" (flattened), and "two" keeping the chain.
    let ex = json(ok(hvkit(&[
        "checkpoint",
        "export",
        p(&vm),
        "third",
        p(&d.join("ex")),
        "--json",
    ])));
    let exd = PathBuf::from(ex["disks"][0].as_str().unwrap());
    assert_eq!(flatten(&exd, &d.join("x.raw"))[..3], *b"thr");
    let exj = info(&d.join("ex"));
    assert_ne!(exj["id"], j["id"]);
    assert_eq!(exj["checkpoints"].as_array().unwrap().len(), 0);
    let ex2 = json(ok(hvkit(&[
        "checkpoint",
        "export",
        p(&vm),
        "two",
        p(&d.join("ex2")),
        "--keep-chain",
        "--json",
    ])));
    assert!(ex2["disks"].as_array().unwrap().len() > 2);
    // Exporting onto a folder that is not empty is refused.
    let o = hvkit(&["checkpoint", "export", p(&vm), "two", p(&d.join("ex2"))]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not empty"));

    // Delete "two" (a leaf of the tree: its disk goes), then the subtree of one.
    let del = json(ok(hvkit(&[
        "checkpoint",
        "delete",
        p(&vm),
        "two",
        "--json",
    ])));
    assert_eq!(del["removed"].as_array().unwrap().len(), 1);
    let del = json(ok(hvkit(&[
        "checkpoint",
        "delete-subtree",
        p(&vm),
        "one",
        "--json",
    ])));
    assert_eq!(del["removed"].as_array().unwrap().len(), 2);
    let j = info(&vm);
    assert_eq!(j["checkpoints"].as_array().unwrap().len(), 0);
    assert_eq!(j["current"], Value::Null);
    // Everything merged back into the base disks, as Hyper-V does.
    assert!(
        j["disks"][0]["path"]
            .as_str()
            .unwrap()
            .ends_with("web.vhdx"),
        "{j}"
    );
    assert_eq!(flatten(&leaf(&vm, 0), &d.join("x.raw"))[..3], *b"one");

    // Types: disabled refuses and changes nothing.
    ok(hvkit(&[
        "vm",
        "set",
        p(&vm),
        "--checkpoint-type",
        "disabled",
    ]));
    let o = hvkit(&["checkpoint", "create", p(&vm)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("disabled"));
    assert_eq!(info(&vm)["checkpoints"].as_array().unwrap().len(), 0);
    // A missing checkpoint, an ambiguous name.
    ok(hvkit(&[
        "vm",
        "set",
        p(&vm),
        "--checkpoint-type",
        "production",
    ]));
    ok(hvkit(&["checkpoint", "create", p(&vm), "--name", "same"]));
    ok(hvkit(&["checkpoint", "create", p(&vm), "--name", "same"]));
    let o = hvkit(&["checkpoint", "apply", p(&vm), "same"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("give the id"));
    let o = hvkit(&["checkpoint", "delete", p(&vm), "nothing"]);
    assert_eq!(o.status.code(), Some(1));
    // A corrupt configuration: exit 2, naming it.
    let cfg = info(&vm)["config"].as_str().unwrap().to_string();
    std::fs::write(&cfg, b"garbage").unwrap();
    let o = hvkit(&["vm", "info", p(&vm)]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains(&cfg));
}

/// Checkpoints by name: (parent name, disk contents); the current one;
/// the current disks' contents.
type State = (
    BTreeMap<String, (Option<String>, Vec<Vec<u8>>)>,
    Option<String>,
    Vec<Vec<u8>>,
);

fn state(dir: &Path, scratch: &Path) -> State {
    let f = checkpoint::VmFolder::open(dir).unwrap_or_else(|e| panic!("{e}"));
    let name = |id: &str| f.checkpoint(id).unwrap().name.clone();
    let _ = scratch;
    let read = |p: &Path| {
        use sha2::Digest;
        let disk = vhdx::Disk::open(p, &vhdx::ChainOptions::default()).unwrap();
        let mut h = sha2::Sha256::new();
        let mut buf = vec![0u8; 4 * MIB];
        let mut off = 0u64;
        while off < disk.virtual_size() {
            let n = buf.len().min((disk.virtual_size() - off) as usize);
            disk.read_at(&mut buf[..n], off).unwrap();
            h.update(&buf[..n]);
            off += n as u64;
        }
        h.finalize().to_vec()
    };
    (
        f.checkpoints
            .iter()
            .map(|c| {
                (
                    c.name.clone(),
                    (
                        c.parent.as_deref().map(name),
                        c.disks.iter().map(|d| read(&d.path)).collect(),
                    ),
                )
            })
            .collect(),
        f.current.as_deref().map(name),
        f.disks.iter().map(|d| read(&d.path)).collect(),
    )
}

fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    assert!(Command::new("cp")
        .args(["-a", "--reflink=auto"])
        .arg(from)
        .arg(to)
        .status()
        .unwrap()
        .success());
}

#[test]
fn kill_9_at_any_moment_reads_as_before_or_after_and_a_rerun_completes() {
    let t = tempfile::tempdir().unwrap(); // on disk: merges take a while
    let d = t.path();
    let vm = d.join("vm");
    ok(hvkit(&[
        "vm",
        "new",
        p(&vm),
        "--name",
        "k",
        "--disk-size",
        "256M",
        "--disk-size",
        "64M",
    ]));
    write(&leaf(&vm, 0), d, 0, &noise(1, 4 * MIB));
    ok(hvkit(&["checkpoint", "create", p(&vm), "--name", "A"]));
    write(&leaf(&vm, 0), d, MIB, &noise(2, 96 * MIB));
    write(&leaf(&vm, 1), d, 0, &noise(3, 32 * MIB));
    ok(hvkit(&["checkpoint", "create", p(&vm), "--name", "B"]));
    write(&leaf(&vm, 0), d, 3 * MIB, &noise(4, 64 * MIB));
    let pristine = d.join("pristine");
    copy_dir(&vm, &pristine);
    let before = state(&vm, d);
    let commands: Vec<(&str, Vec<&str>)> = vec![
        (
            "delete A (merge into the base)",
            vec!["checkpoint", "delete", "-q", "VM", "A"],
        ),
        (
            "delete B (merge)",
            vec!["checkpoint", "delete", "-q", "VM", "B"],
        ),
        ("apply A", vec!["checkpoint", "apply", "VM", "A"]),
        (
            "create C",
            vec!["checkpoint", "create", "VM", "--name", "C"],
        ),
    ];
    let mut killed = 0;
    for (label, args) in &commands {
        // The state after, from an uninterrupted run.
        copy_dir(&pristine, &vm);
        let args: Vec<&str> = args
            .iter()
            .map(|a| if *a == "VM" { p(&vm) } else { a })
            .collect();
        ok(hvkit(&args));
        let after = state(&vm, d);
        assert_ne!(before, after);
        for delay_ms in [0u64, 1, 3, 6, 10, 15, 25, 40, 60, 90, 130, 200, 300, 450] {
            copy_dir(&pristine, &vm);
            let mut child = Command::new(env!("CARGO_BIN_EXE_hvkit"))
                .args(&args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(Duration::from_millis(delay_ms));
            let _ = child.kill();
            let status = child.wait().unwrap();
            let now = state(&vm, d);
            if status.success() {
                assert!(
                    now == after,
                    "{label} finished before the kill at {delay_ms} ms but reads otherwise"
                );
                continue;
            }
            killed += 1;
            assert!(
                now == before || now == after,
                "{label}: killed at {delay_ms} ms, reads neither as before nor as after"
            );
            let pending = checkpoint::VmFolder::open(&vm).unwrap().pending.is_some();
            if pending || now == before {
                let o = hvkit(&args);
                assert_eq!(
                    o.status.code(),
                    Some(0),
                    "{label}: re-run after a kill at {delay_ms} ms: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
            }
            assert!(
                state(&vm, d) == after,
                "{label}: re-run after a kill at {delay_ms} ms"
            );
            let f = checkpoint::VmFolder::open(&vm).unwrap();
            assert!(f.pending.is_none());
        }
    }
    println!("{killed} runs killed before they finished");
    assert!(
        killed >= 8,
        "only {killed} kills landed before the commands finished"
    );
}

#[test]
fn the_demo_runs_the_story_and_passes() {
    let t = scratch();
    let out = ok(hvkit(&["demo", p(t.path())]));
    assert!(out.contains("demo passed"), "{out}");
    for step in [
        "Take Checkpoint and Apply",
        "Export",
        "Delete the subtree",
        "disk chain: web.vhdx",
    ] {
        assert!(out.contains(step), "no {step:?} in {out}");
    }
    if std::env::var_os("HVKIT_REQUIRE_ORACLES").is_some_and(|v| v == "1") {
        assert!(
            out.contains("qemu-img compare with the model: Images are identical"),
            "{out}"
        );
        assert!(out.contains("dissect.hypervisor opened"), "{out}");
    }
}
