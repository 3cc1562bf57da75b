//! One writer per VM: operations hold an exclusive `flock` on the folder
//! that holds the VM's configuration, so two processes never interleave
//! their steps on one VM. The lock goes with the process, also when it is
//! killed.

use crate::error::{Error, Result};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

/// Held while it lives.
#[derive(Debug)]
pub struct FolderLock {
    _dir: File,
}

impl FolderLock {
    /// Takes the lock on `dir`, or fails at once with [`Error::Locked`].
    pub fn take(dir: &Path) -> Result<FolderLock> {
        let f = File::open(dir).map_err(|e| Error::io(dir, e))?;
        // SAFETY: flock on a descriptor we own.
        let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(Error::Locked {
                    path: dir.to_path_buf(),
                });
            }
            return Err(Error::io(dir, e));
        }
        Ok(FolderLock { _dir: f })
    }
}
