//! Shared helpers of the vhdx integration tests: the corpus, oracles, hashing.
#![allow(dead_code)]

use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The corpus folder, or None (with the reason printed) when it is absent.
pub fn corpus_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("HVKIT_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus"));
    if dir.join("vhdx").is_dir() {
        Some(dir)
    } else {
        println!(
            "SKIP: corpus not found at {} (set HVKIT_CORPUS)",
            dir.display()
        );
        None
    }
}

/// Decompresses a corpus `.bz2` file once into the test scratch folder.
pub fn decompressed(bz2: &Path) -> PathBuf {
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("corpus");
    std::fs::create_dir_all(&out_dir).unwrap();
    let name = bz2.file_stem().unwrap();
    let out = out_dir.join(name);
    let done = out_dir.join(format!("{}.done", name.to_string_lossy()));
    if !done.exists() {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = out_dir.join(format!(
            "{}.tmp{}-{n}",
            name.to_string_lossy(),
            std::process::id()
        ));
        let mut dec = bzip2::read::BzDecoder::new(std::fs::File::open(bz2).unwrap());
        let mut f = std::fs::File::create(&tmp).unwrap();
        std::io::copy(&mut dec, &mut f).unwrap();
        std::fs::rename(&tmp, &out).unwrap();
        std::fs::write(&done, b"").unwrap();
    }
    out
}

/// A fresh copy of a decompressed corpus file that a test may modify.
pub fn scratch_copy(src: &Path, dir: &Path) -> PathBuf {
    let dst = dir.join(src.file_name().unwrap());
    std::fs::copy(src, &dst).unwrap();
    dst
}

pub fn sha256_file(p: &Path) -> String {
    let mut f = std::fs::File::open(p).unwrap();
    sha256_reader(&mut f)
}

pub fn sha256_reader(r: &mut impl Read) -> String {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 4 << 20];
    loop {
        let n = r.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex(&h.finalize())
}

pub fn sha256(b: &[u8]) -> String {
    hex(&Sha256::digest(b))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// True when oracles are required (CI): a missing one fails the test.
pub fn oracles_required() -> bool {
    std::env::var_os("HVKIT_REQUIRE_ORACLES").is_some_and(|v| v == "1")
}

/// Returns true when `tool` runs; otherwise prints a skip reason (or panics
/// when oracles are required).
pub fn have_tool(tool: &str) -> bool {
    let ok = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            !oracles_required(),
            "{tool} is required (HVKIT_REQUIRE_ORACLES=1) but does not run"
        );
        println!("SKIP: {tool} is not installed");
    }
    ok
}

/// The Python oracle: (python, oracle.py), or None with a printed reason.
pub fn python_oracle() -> Option<(PathBuf, PathBuf)> {
    let py = std::env::var_os("HVKIT_PYTHON").map(PathBuf::from);
    let script = std::env::var_os("HVKIT_ORACLE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/oracle.py"));
    match py {
        Some(py) if script.is_file() => Some((py, script)),
        _ => {
            assert!(
                !oracles_required(),
                "HVKIT_PYTHON / oracle script required (HVKIT_REQUIRE_ORACLES=1) but missing"
            );
            println!("SKIP: HVKIT_PYTHON not set (run through .ci/run for the pyvhdi/dissect cross-checks)");
            None
        }
    }
}

/// Runs `cmd`, panicking with its output when it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// SplitMix64: small, seeded, reproducible random numbers for tests.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }
    pub fn bools(&mut self, n: usize) -> Vec<bool> {
        (0..n).map(|_| !self.next().is_multiple_of(3)).collect()
    }
}
