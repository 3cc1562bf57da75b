//! Resolving disk chains for a whole VM: every file is opened once (a VM
//! with 4 disks and 32 checkpoints names over a hundred chains that share
//! their files), each parent found through its locator and checked
//! against the child's `parent_linkage` as `vhdx::Disk::open` does.

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

/// Files opened so far, by canonical path.
#[derive(Default)]
pub struct DiskCache {
    files: HashMap<PathBuf, (VhdxFile, Option<PathBuf>)>,
}

impl DiskCache {
    pub fn new() -> DiskCache {
        DiskCache::default()
    }

    fn load(&mut self, path: &Path) -> Result<PathBuf> {
        let canon = std::fs::canonicalize(path).map_err(|e| Error::io(path, e))?;
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
        while let Some(p) = self.parent_of(out.last().expect("non-empty"))? {
            if out.contains(&p) {
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
