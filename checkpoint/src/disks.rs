//! Resolving disk chains for a whole VM: every file is opened once (a VM
//! with 4 disks and 32 checkpoints names over a hundred chains that share
//! their files), each parent found through its locator and checked
//! against the child's `parent_linkage` as `vhdx::Disk::open` does.

use crate::config::Config;
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use uuid::Uuid;
use vhdx::{OpenOptions, VhdxFile, MAX_CHAIN_DEPTH};

/// What the VM model keeps of one disk file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileFacts {
    /// Canonical absolute path.
    pub path: PathBuf,
    pub virtual_size: u64,
    pub data_write_guid: Uuid,
    /// The parent's canonical path, for a differencing disk.
    pub parent: Option<PathBuf>,
}

/// Files opened so far, by canonical path, and configurations and
/// runtime states read so far.
#[derive(Default)]
pub struct DiskCache {
    files: HashMap<PathBuf, (VhdxFile, Option<PathBuf>)>,
    /// path -> (CRC-32 and length of the bytes, what they parse to): a
    /// cached configuration is used only when the file's bytes are the
    /// same (reading and hashing them costs a fraction of parsing).
    configs: HashMap<PathBuf, (u32, usize, Config)>,
    /// path -> (identity of the file, whether it holds saved memory).
    /// Runtime states are written once and renamed into place, never
    /// changed where they are.
    runtimes: HashMap<PathBuf, (FileStamp, bool)>,
    /// Folder -> the same with its symlinks resolved.
    dirs: HashMap<PathBuf, PathBuf>,
}

/// What tells one file from another at a path: device, inode, length and
/// both times to the nanosecond.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp(u64, u64, u64, i64, i64, i64, i64);

fn stamp(p: &Path) -> std::io::Result<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p)?;
    Ok(FileStamp(
        m.dev(),
        m.ino(),
        m.len(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
    ))
}

impl DiskCache {
    pub fn new() -> DiskCache {
        DiskCache::default()
    }

    /// `path` with its folder's symlinks resolved (each folder resolved
    /// once) and, when it is a symlink itself, its own.
    fn canonical(&mut self, path: &Path) -> Result<PathBuf> {
        let lstat = std::fs::symlink_metadata(path).map_err(|e| Error::io(path, e))?;
        match (path.parent(), path.file_name()) {
            (Some(dir), Some(name))
                if !lstat.file_type().is_symlink() && !dir.as_os_str().is_empty() =>
            {
                if let Some(c) = self.dirs.get(dir) {
                    return Ok(c.join(name));
                }
                let c = std::fs::canonicalize(dir).map_err(|e| Error::io(dir, e))?;
                self.dirs.insert(dir.to_path_buf(), c.clone());
                Ok(c.join(name))
            }
            _ => std::fs::canonicalize(path).map_err(|e| Error::io(path, e)),
        }
    }

    fn load(&mut self, path: &Path) -> Result<PathBuf> {
        if self.files.contains_key(path) {
            return Ok(path.to_path_buf()); // already canonical
        }
        let canon = self.canonical(path)?;
        if !self.files.contains_key(&canon) {
            let f = VhdxFile::open_path(&canon, OpenOptions::read_only())?;
            self.files.insert(canon.clone(), (f, None));
        }
        Ok(canon)
    }

    /// The parent of the (loaded) file `canon`, found and checked once.
    fn parent_of(&mut self, canon: &Path) -> Result<Option<PathBuf>> {
        let (file, known) = &self.files[canon];
        if let Some(p) = known {
            return Ok(Some(p.clone()));
        }
        if !file.has_parent() {
            return Ok(None);
        }
        let loc = file
            .parent_locator()
            .cloned()
            .ok_or_else(|| Error::corrupt(canon, "a differencing disk without a parent locator"))?;
        let mut tried = Vec::new();
        let mut mismatch = None;
        for (key, cand) in vhdx::parent::candidates(canon, &loc) {
            tried.push(format!("{key} -> {}", cand.display()));
            if !cand.is_file() {
                continue;
            }
            let pc = match self.load(&cand) {
                Ok(p) => p,
                Err(e) => {
                    mismatch.get_or_insert(e);
                    continue;
                }
            };
            match vhdx::disk::check_parent(&self.files[canon].0, &self.files[&pc].0, false) {
                Ok(()) => {
                    self.files.get_mut(canon).expect("loaded").1 = Some(pc.clone());
                    return Ok(Some(pc));
                }
                Err(e) => {
                    mismatch.get_or_insert(Error::Vhdx(e));
                }
            }
        }
        Err(mismatch.unwrap_or_else(|| {
            Error::Vhdx(vhdx::Error::ParentNotFound {
                path: canon.display().to_string(),
                tried: if tried.is_empty() {
                    "the locator has no path".into()
                } else {
                    tried.join(", ")
                },
            })
        }))
    }

    /// The chain of `leaf`, leaf first, as canonical paths.
    pub fn chain(&mut self, leaf: &Path) -> Result<Vec<PathBuf>> {
        let mut out = vec![self.load(leaf)?];
        let mut seen: std::collections::HashSet<PathBuf> = out.iter().cloned().collect();
        while let Some(p) = self.parent_of(out.last().expect("non-empty"))? {
            if !seen.insert(p.clone()) {
                return Err(Error::Vhdx(vhdx::Error::ChainCycle {
                    path: out[0].display().to_string(),
                    again: p.display().to_string(),
                }));
            }
            if out.len() >= MAX_CHAIN_DEPTH {
                return Err(Error::Vhdx(vhdx::Error::ChainTooDeep {
                    path: out[0].display().to_string(),
                    max: MAX_CHAIN_DEPTH,
                }));
            }
            out.push(p);
        }
        Ok(out)
    }

    /// The configuration at `path`, parsed again only when its bytes changed.
    pub fn config(&mut self, path: &Path) -> Result<Config> {
        let bytes = crate::config::read_bytes(path)?;
        let crc = crc32fast::hash(&bytes);
        if let Some((c, n, cfg)) = self.configs.get(path) {
            if *c == crc && *n == bytes.len() {
                return Ok(cfg.clone());
            }
        }
        let cfg = Config::parse(path, &bytes)?;
        self.configs
            .insert(path.to_path_buf(), (crc, bytes.len(), cfg.clone()));
        Ok(cfg)
    }

    /// Whether the runtime state at `path` holds saved memory (a missing
    /// file holds none).
    pub fn has_memory(&mut self, path: &Path) -> Result<bool> {
        let Ok(st) = stamp(path) else {
            return Ok(false);
        };
        if let Some((s, m)) = self.runtimes.get(path) {
            if *s == st {
                return Ok(*m);
            }
        }
        let m = crate::folder::runtime_state(path)? == crate::model::VmState::Saved;
        self.runtimes.insert(path.to_path_buf(), (st, m));
        Ok(m)
    }

    /// Drops what is known of `path` (a file that changed or went).
    pub fn forget(&mut self, path: &Path) {
        let canon = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        self.files.remove(&canon);
        self.files.remove(path);
        // A child's known parent may be the forgotten file.
        for (_, parent) in self.files.values_mut() {
            if parent.as_deref() == Some(canon.as_path()) {
                *parent = None;
            }
        }
    }

    /// Drops everything (after a merge, which changes several files).
    pub fn clear(&mut self) {
        self.files.clear();
    }

    /// Facts of a file loaded by [`DiskCache::chain`].
    pub fn facts(&self, canon: &Path) -> Option<FileFacts> {
        self.files.get(canon).map(|(f, parent)| FileFacts {
            path: canon.to_path_buf(),
            virtual_size: f.virtual_size(),
            data_write_guid: f.header().data_write_guid,
            parent: parent.clone(),
        })
    }
}
