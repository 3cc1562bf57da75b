//! One writer per VM: operations hold an exclusive `flock` on the folder
//! that holds the VM's configuration, so two processes never interleave
//! their steps on one VM. The lock goes with the process, also when it is
//! killed.

use crate::error::{Error, Result};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

/// How long an operation waits for another one's lock.
pub const WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Held while it lives.
#[derive(Debug)]
pub struct FolderLock {
    _dir: File,
}

impl FolderLock {
    /// Takes the lock on `dir`, waiting up to [`WAIT`] for it, else fails
    /// with [`Error::Locked`]. (The wait also covers the instant in which
    /// a process that just released it still shares the descriptor with a
    /// child it is starting, between fork and exec.)
    pub fn take(dir: &Path) -> Result<FolderLock> {
        let f = File::open(dir).map_err(|e| Error::io(dir, e))?;
        let start = std::time::Instant::now();
        loop {
            // SAFETY: flock on a descriptor we own.
            let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if r == 0 {
                return Ok(FolderLock { _dir: f });
            }
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EWOULDBLOCK) if start.elapsed() < WAIT => {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Some(libc::EWOULDBLOCK) => {
                    return Err(Error::Locked {
                        path: dir.to_path_buf(),
                    })
                }
                _ => return Err(Error::io(dir, e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_refuses_after_the_wait_and_is_free_once_dropped() {
        let t = tempfile::tempdir().unwrap();
        let held = FolderLock::take(t.path()).unwrap();
        let start = std::time::Instant::now();
        assert!(matches!(
            FolderLock::take(t.path()),
            Err(Error::Locked { .. })
        ));
        assert!(start.elapsed() >= WAIT);
        drop(held);
        FolderLock::take(t.path()).unwrap();
    }
}
