//! Test support (the `testing` feature; not part of the library's API):
//! [`FailingFs`], a filesystem that fails at a chosen operation as a
//! crash would, and [`TestVm`], a running VM that answers as a test says.

use crate::fs::FolderFs;
use crate::live::{LiveVm, Quiesce};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vhdx::{OpenOptions, Storage, VhdxFile};

#[derive(Debug, Default)]
struct State {
    ops: u64,
    fail_at: Option<u64>,
    failed: bool,
    lose_unflushed: bool,
    log: Vec<String>,
}

/// Counts every write, flush, set_len, create, rename, unlink and folder
/// sync of the files it opens; with a failure point, that operation and
/// every one after it fail (the process is as good as dead), and with
/// `lose_unflushed` the writes not yet flushed are lost as a power cut
/// would lose them.
#[derive(Debug, Clone, Default)]
pub struct FailingFs {
    state: Arc<Mutex<State>>,
}

fn crashed() -> io::Error {
    io::Error::other("injected crash")
}

impl FailingFs {
    /// Counts, never fails.
    pub fn counting() -> FailingFs {
        FailingFs::default()
    }
    /// Fails at operation `n` (1-based) and after it.
    pub fn failing_at(n: u64, lose_unflushed: bool) -> FailingFs {
        FailingFs {
            state: Arc::new(Mutex::new(State {
                fail_at: Some(n),
                lose_unflushed,
                ..State::default()
            })),
        }
    }
    pub fn ops(&self) -> u64 {
        self.state.lock().expect("lock").ops
    }
    pub fn failed(&self) -> bool {
        self.state.lock().expect("lock").failed
    }
    /// What each operation was, in order.
    pub fn log(&self) -> Vec<String> {
        self.state.lock().expect("lock").log.clone()
    }
    fn tick(&self, what: impl FnOnce() -> String) -> io::Result<()> {
        let mut s = self.state.lock().expect("lock");
        if s.failed {
            return Err(crashed());
        }
        s.ops += 1;
        let n = s.ops;
        s.log.push(what());
        if s.fail_at == Some(n) {
            s.failed = true;
            return Err(crashed());
        }
        Ok(())
    }
    fn lose(&self) -> bool {
        self.state.lock().expect("lock").lose_unflushed
    }
}

/// A file whose writes go through [`FailingFs::tick`]; unflushed writes
/// are held in memory when they may be lost.
struct FailingStorage {
    fs: FailingFs,
    file: File,
    name: String,
    pending: Mutex<Vec<(u64, Vec<u8>)>>,
}

impl FailingStorage {
    fn apply_pending(&self) -> io::Result<()> {
        let mut p = self.pending.lock().expect("lock");
        for (off, b) in p.drain(..) {
            self.file.write_all_at(&b, off)?;
        }
        Ok(())
    }
}

impl Storage for FailingStorage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let len = self.len()?;
        if offset + buf.len() as u64 > len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end",
            ));
        }
        let flen = self.file.metadata()?.len();
        let from_file = (flen.saturating_sub(offset)).min(buf.len() as u64) as usize;
        self.file.read_exact_at(&mut buf[..from_file], offset)?;
        buf[from_file..].fill(0);
        for (off, b) in self.pending.lock().expect("lock").iter() {
            let (s, e) = (*off, off + b.len() as u64);
            let (rs, re) = (offset, offset + buf.len() as u64);
            if s < re && rs < e {
                let a = s.max(rs);
                let z = e.min(re);
                buf[(a - rs) as usize..(z - rs) as usize]
                    .copy_from_slice(&b[(a - s) as usize..(z - s) as usize]);
            }
        }
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.fs
            .tick(|| format!("write {} @{offset:#x}+{:#x}", self.name, buf.len()))?;
        if self.fs.lose() {
            self.pending
                .lock()
                .expect("lock")
                .push((offset, buf.to_vec()));
            Ok(())
        } else {
            self.file.write_all_at(buf, offset)
        }
    }
    fn flush(&self) -> io::Result<()> {
        self.fs.tick(|| format!("flush {}", self.name))?;
        self.apply_pending()?;
        self.file.sync_data()
    }
    fn len(&self) -> io::Result<u64> {
        let mut l = self.file.metadata()?.len();
        for (off, b) in self.pending.lock().expect("lock").iter() {
            l = l.max(off + b.len() as u64);
        }
        Ok(l)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.fs.tick(|| format!("set_len {} {len:#x}", self.name))?;
        self.apply_pending()?;
        self.file.set_len(len)
    }
}

impl FailingFs {
    fn wrap(&self, file: File, path: &Path) -> FailingStorage {
        FailingStorage {
            fs: self.clone(),
            file,
            name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            pending: Mutex::new(Vec::new()),
        }
    }
}

impl FolderFs for FailingFs {
    fn open_vhdx(&self, path: &Path, writable: bool) -> vhdx::Result<VhdxFile> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(|source| vhdx::Error::Open {
                path: path.display().to_string(),
                source,
            })?;
        let o = if writable {
            OpenOptions::writable()
        } else {
            OpenOptions::read_only()
        };
        VhdxFile::open(Box::new(self.wrap(f, path)), &path.display().to_string(), o)
    }
    fn create(&self, path: &Path) -> io::Result<Box<dyn Storage>> {
        self.tick(|| format!("create {}", path.display()))?;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        Ok(Box::new(self.wrap(f, path)))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.tick(|| format!("rename {} -> {}", from.display(), to.display()))?;
        std::fs::rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.tick(|| format!("unlink {}", path.display()))?;
        std::fs::remove_file(path)
    }
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        self.tick(|| format!("mkdir {}", path.display()))?;
        std::fs::create_dir(path)
    }
    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        self.tick(|| format!("rmdir {}", path.display()))?;
        std::fs::remove_dir(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.tick(|| format!("syncdir {}", path.display()))?;
        File::open(path)?.sync_all()
    }
}

/// How [`TestVm`] answers a quiesce request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Acknowledge,
    Refuse,
    /// Waits out the timeout.
    Silent,
    /// The request itself fails.
    Fail,
}

/// A running VM for the orchestration's tests: a guest with a write-back
/// cache (flushed to its disks when it acknowledges a quiesce), memory
/// saved as a real `.vmrs`, and a step that can be made to fail.
pub struct TestVm {
    /// The disk files it writes (its current leaves).
    pub disks: Vec<PathBuf>,
    pub answer: Answer,
    /// Fail this step: `quiesce`, `thaw`, `pause`, `resume`,
    /// `flush_disks`, `save_state`, `switch_disks` (the first call).
    pub fail: Option<&'static str>,
    /// The steps called, in order.
    pub calls: Vec<String>,
    /// Writes the guest holds in its cache: (disk, offset, bytes).
    pub cache: Vec<(usize, u64, Vec<u8>)>,
    /// Guest memory saved by a standard checkpoint.
    pub memory: Vec<u8>,
    pub paused: bool,
    pub frozen: bool,
}

impl TestVm {
    pub fn new(disks: Vec<PathBuf>) -> TestVm {
        TestVm {
            disks,
            answer: Answer::Acknowledge,
            fail: None,
            calls: Vec::new(),
            cache: Vec::new(),
            memory: (0..8192u32).map(|i| (i * 7) as u8).collect(),
            paused: false,
            frozen: false,
        }
    }

    fn step(&mut self, name: &'static str) -> Result<(), String> {
        self.calls.push(name.to_string());
        if self.fail == Some(name) {
            self.fail = None;
            return Err(format!("{name} failed (injected)"));
        }
        Ok(())
    }

    /// Writes the cached guest writes to the current disks.
    pub fn write_back(&mut self) -> Result<(), String> {
        for (d, off, data) in self.cache.drain(..) {
            let mut disk =
                vhdx::Disk::open_writable(&self.disks[d], &vhdx::ChainOptions::default())
                    .map_err(|e| e.to_string())?;
            disk.write_at(&data, off).map_err(|e| e.to_string())?;
            disk.close().map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

impl LiveVm for TestVm {
    fn quiesce(&mut self, _timeout: Duration) -> Result<Quiesce, String> {
        self.step("quiesce")?;
        match self.answer {
            Answer::Acknowledge => {
                self.write_back()?;
                self.frozen = true;
                Ok(Quiesce::Acknowledged)
            }
            Answer::Refuse => Ok(Quiesce::Refused("no VSS writer".into())),
            Answer::Silent => Ok(Quiesce::TimedOut),
            Answer::Fail => Err("the integration channel is closed".into()),
        }
    }
    fn thaw(&mut self) -> Result<(), String> {
        self.step("thaw")?;
        self.frozen = false;
        Ok(())
    }
    fn pause(&mut self) -> Result<(), String> {
        self.step("pause")?;
        self.paused = true;
        Ok(())
    }
    fn resume(&mut self) -> Result<(), String> {
        self.step("resume")?;
        self.paused = false;
        Ok(())
    }
    fn flush_disks(&mut self) -> Result<(), String> {
        self.step("flush_disks")
    }
    fn save_state(&mut self, path: &Path) -> Result<(), String> {
        self.step("save_state")?;
        let spec = vmrs::writer::SavedStateSpec {
            memory: vec![vmrs::writer::MemoryPiece::bytes(0, self.memory.clone())],
            ..vmrs::writer::SavedStateSpec::default()
        };
        vmrs::writer::create(path, &spec).map_err(|e| e.to_string())?;
        Ok(())
    }
    fn switch_disks(&mut self, leaves: &[&Path]) -> Result<(), String> {
        self.step("switch_disks")?;
        self.disks = leaves.iter().map(|p| p.to_path_buf()).collect();
        Ok(())
    }
}
