//! Shared helpers of the checkpoint crate's tests: making VMs, writing and
//! reading their disks, listing a folder's files, the oracles.
#![allow(dead_code)]

use checkpoint::{CheckpointType, DiskSpec, Kind, VmFolder, VmSpec, VmState};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A VM folder with `disks` new disks of `size` bytes.
pub fn make_vm(dir: &Path, name: &str, disks: usize, size: u64) -> VmFolder {
    let mut spec = VmSpec::new(name);
    for _ in 0..disks {
        spec.disks.push(DiskSpec::New { size });
    }
    VmFolder::create(dir, &spec).unwrap()
}

/// Writes `data` at `off` of the VM's current disk `disk`.
pub fn write_disk(leaf: &Path, off: u64, data: &[u8]) {
    let mut d = vhdx::Disk::open_writable(leaf, &vhdx::ChainOptions::default()).unwrap();
    d.write_at(data, off).unwrap();
    d.close().unwrap();
}

/// The whole guest content of a disk (through its chain).
pub fn read_all(p: &Path) -> Vec<u8> {
    let d = vhdx::Disk::open(p, &vhdx::ChainOptions::default())
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let mut b = vec![0u8; d.virtual_size() as usize];
    d.read_at(&mut b, 0).unwrap();
    b
}

pub fn sha(b: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(b);
    format!("{:x}", h.finalize())
}

/// Every file under `dir`, sorted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return v;
    };
    for e in rd {
        let p = e.unwrap().path();
        if p.is_dir() {
            v.extend(files_under(&p));
        } else {
            v.push(p);
        }
    }
    v.sort();
    v
}

/// The files a consistent folder holds: the VM's configuration and state,
/// each checkpoint's, and every file of every chain; nothing else.
pub fn expected_files(f: &VmFolder) -> Vec<PathBuf> {
    let mut v = vec![f.config_path.clone()];
    if f.runtime_path.exists() {
        v.push(f.runtime_path.clone());
    }
    for c in &f.checkpoints {
        v.push(c.config_path.clone());
        v.push(c.runtime_path.clone());
    }
    v.extend(f.all_disk_files());
    let mut v: Vec<PathBuf> = v
        .into_iter()
        .map(|p| std::fs::canonicalize(&p).unwrap_or(p))
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Asserts the folder holds exactly the files something references.
pub fn assert_no_garbage(f: &VmFolder) {
    let have: Vec<PathBuf> = files_under(&f.folder)
        .into_iter()
        .map(|p| std::fs::canonicalize(&p).unwrap())
        .collect();
    let want: Vec<PathBuf> = expected_files(f)
        .into_iter()
        .filter(|p| p.starts_with(&f.folder))
        .collect();
    assert_eq!(have, want, "files in {}", f.folder.display());
}

pub fn oracles_required() -> bool {
    std::env::var_os("HVKIT_REQUIRE_ORACLES").is_some_and(|v| v == "1")
}

/// (python, tools/folder_oracle.py), or None with a printed reason.
pub fn folder_oracle() -> Option<(PathBuf, PathBuf)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/folder_oracle.py");
    match std::env::var_os("HVKIT_PYTHON").map(PathBuf::from) {
        Some(py) if script.is_file() => Some((py, script)),
        _ => {
            assert!(
                !oracles_required(),
                "HVKIT_PYTHON required (HVKIT_REQUIRE_ORACLES=1) but not set"
            );
            println!("SKIP: HVKIT_PYTHON not set (run through .ci/run for the dissect.hypervisor and pyvhdi cross-checks)");
            None
        }
    }
}

/// Runs the folder oracle with `request` (JSON) on stdin; its JSON answer.
pub fn run_oracle(oracle: &(PathBuf, PathBuf), request: &serde_json::Value) -> serde_json::Value {
    use std::io::Write;
    let mut child = Command::new(&oracle.0)
        .arg(&oracle.1)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "oracle output not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    assert!(j.get("error").is_none(), "oracle: {j}");
    j
}

/// True when qemu-img is installed (required in CI).
pub fn qemu_img() -> bool {
    let ok = Command::new("qemu-img")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            !oracles_required(),
            "qemu-img required (HVKIT_REQUIRE_ORACLES=1)"
        );
        println!("SKIP: qemu-img not installed");
    }
    ok
}

/// A folder's state, independent of file names and ids: checkpoints by
/// name with their parent's name, kind and disk hashes; the current
/// position; the current disks' hashes; type and power state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    pub checkpoints: BTreeMap<String, (Option<String>, Kind, bool, Vec<String>)>,
    pub current: Option<String>,
    pub disks: Vec<String>,
    pub ctype: Option<CheckpointType>,
    pub state: VmState,
}

pub fn state_of(dir: &Path) -> State {
    let f = VmFolder::open(dir).unwrap_or_else(|e| panic!("open {}: {e}", dir.display()));
    let name_of = |id: &str| f.checkpoint(id).unwrap().name.clone();
    State {
        checkpoints: f
            .checkpoints
            .iter()
            .map(|c| {
                (
                    c.name.clone(),
                    (
                        c.parent.as_deref().map(name_of),
                        c.kind,
                        c.has_memory,
                        c.disks.iter().map(|d| sha(&read_all(&d.path))).collect(),
                    ),
                )
            })
            .collect(),
        current: f.current.as_deref().map(name_of),
        disks: f.disks.iter().map(|d| sha(&read_all(&d.path))).collect(),
        ctype: f.vm.checkpoint_type,
        state: f.vm.state,
    }
}

pub fn copy_dir(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg("--reflink=auto")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
}
