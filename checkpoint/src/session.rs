//! One operation's hold on a VM: its lock, its configuration's path, and
//! the disk files opened so far, reused each time the operation reads the
//! folder again (a VM with 4 disks and 32 checkpoints has 132 disk files;
//! what an operation changes it forgets).

use crate::disks::DiskCache;
use crate::error::Result;
use crate::folder::{find_config, OpenOptions, VmFolder};
use crate::lock::FolderLock;
use std::path::{Path, PathBuf};

pub struct Session {
    pub config: PathBuf,
    pub cache: DiskCache,
    _lock: FolderLock,
}

impl Session {
    /// Takes the VM's lock and reads the folder.
    pub fn begin(path: &Path) -> Result<(Session, VmFolder)> {
        let config = find_config(path)?;
        let lock = FolderLock::take(config.parent().unwrap_or(Path::new(".")))?;
        let mut s = Session {
            config,
            cache: DiskCache::new(),
            _lock: lock,
        };
        let f = s.open()?;
        Ok((s, f))
    }

    /// Reads the folder again.
    pub fn open(&mut self) -> Result<VmFolder> {
        VmFolder::open_cached(&self.config, OpenOptions::default(), &mut self.cache)
    }

    /// A disk file changed or went.
    pub fn forget(&mut self, p: &Path) {
        self.cache.forget(p);
    }

    /// Several disk files changed (a merge).
    pub fn forget_all(&mut self) {
        self.cache.clear();
    }
}
