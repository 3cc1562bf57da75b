//! Helpers shared by the CLI's integration tests: running `hvkit`, scratch
//! folders, data, and a small tmpfs for running out of space.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

pub const MIB: usize = 1 << 20;

pub fn hvkit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hvkit"))
        .args(args)
        .output()
        .expect("run hvkit")
}

#[track_caller]
pub fn ok(o: Output) -> String {
    assert_eq!(
        o.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

pub fn scratch() -> tempfile::TempDir {
    tempfile::tempdir_in("/dev/shm").unwrap_or_else(|_| tempfile::tempdir().unwrap())
}

pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Writes `data` at `offset` through `hvkit write`.
pub fn write(img: &Path, dir: &Path, offset: usize, data: &[u8]) {
    let input = dir.join("input.bin");
    std::fs::write(&input, data).unwrap();
    ok(hvkit(&[
        "write",
        p(img),
        "--offset",
        &offset.to_string(),
        "-i",
        p(&input),
    ]));
}

pub fn flatten(img: &Path, out: &Path) -> Vec<u8> {
    let _ = std::fs::remove_file(out);
    ok(hvkit(&["convert", "-q", p(img), p(out), "-O", "raw"]));
    std::fs::read(out).unwrap()
}

/// Bytes the filesystem under `dir` has in use (`df`).
pub fn used_bytes(dir: &Path) -> u64 {
    let o = Command::new("df")
        .args(["--output=used", "-B1", p(dir)])
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&o.stdout);
    s.lines().nth(1).unwrap().trim().parse().unwrap()
}

/// A tmpfs of `mib` MiB mounted on a new folder (None, with the reason, when
/// this is not root or mounting fails); unmounted on drop.
pub struct SmallFs(tempfile::TempDir);

impl SmallFs {
    pub fn mount(mib: u64) -> Result<SmallFs, String> {
        if !Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
        {
            return Err("not root (mounting a small tmpfs needs it)".into());
        }
        let d = tempfile::tempdir().unwrap();
        let o = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m"),
                "tmpfs",
                p(d.path()),
            ])
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !o.status.success() {
            return Err(format!("mount: {}", String::from_utf8_lossy(&o.stderr)));
        }
        Ok(SmallFs(d))
    }
    /// [`SmallFs::mount`], or None after printing why the caller skips.
    pub fn mount_or_skip(mib: u64) -> Option<SmallFs> {
        SmallFs::mount(mib)
            .inspect_err(|why| println!("SKIP: {why}"))
            .ok()
    }
    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}
