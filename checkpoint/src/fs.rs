//! Every change this crate makes to files goes through [`FolderFs`]: the
//! real filesystem ([`OsFs`]), or a test wrapper that fails at a chosen
//! write, flush, rename or unlink to check that a crash there leaves the
//! folder as before or as after. Reads go straight to the files.

use crate::error::{Error, Result};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use vhdx::{OpenOptions, Storage, VhdxFile};

/// The file operations of this crate's writers.
pub trait FolderFs: Send + Sync {
    /// Opens a VHDX file (the merge's and the creator's way in).
    fn open_vhdx(&self, path: &Path, writable: bool) -> vhdx::Result<VhdxFile>;
    /// Creates a new, empty file (an error if it exists) to write.
    fn create(&self, path: &Path) -> io::Result<Box<dyn Storage>>;
    /// Renames `from` over `to` (atomic; `to` may exist).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    fn create_dir(&self, path: &Path) -> io::Result<()>;
    fn remove_dir(&self, path: &Path) -> io::Result<()>;
    /// Makes the folder's entries (creates, renames, unlinks) durable.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
}

/// The real filesystem.
#[derive(Debug, Clone, Copy, Default)]
pub struct OsFs;

impl FolderFs for OsFs {
    fn open_vhdx(&self, path: &Path, writable: bool) -> vhdx::Result<VhdxFile> {
        let o = if writable {
            OpenOptions::writable()
        } else {
            OpenOptions::read_only()
        };
        VhdxFile::open_path(path, o)
    }
    fn create(&self, path: &Path) -> io::Result<Box<dyn Storage>> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        Ok(Box::new(f))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir(path)
    }
    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }
}

/// [`FolderFs`] as the merge's [`chain::Files`].
pub struct MergeFiles<'a>(pub &'a dyn FolderFs);

impl chain::Files for MergeFiles<'_> {
    fn open(&self, path: &Path, writable: bool) -> vhdx::Result<VhdxFile> {
        self.0.open_vhdx(path, writable)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        self.0.remove_file(path)?;
        if let Some(d) = parent_dir(path) {
            self.0.sync_dir(&d)?;
        }
        Ok(())
    }
}

/// The folder holding `path` (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> Option<PathBuf> {
    match path.parent() {
        Some(d) if d.as_os_str().is_empty() => Some(PathBuf::from(".")),
        Some(d) => Some(d.to_path_buf()),
        None => None,
    }
}

/// The temporary name `path` is written under before it is renamed into
/// place: `.NAME.hvkit-tmp` beside it.
pub fn temp_path(path: &Path) -> PathBuf {
    hidden_sibling(path, "hvkit-tmp")
}

/// `.NAME.SUFFIX` beside `path`: where hvkit builds something before it
/// is renamed into place (the leading dot keeps it out of listings).
pub fn hidden_sibling(path: &Path, suffix: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{suffix}"))
}

/// Writes a new file at `path` through `write` (which must flush what it
/// writes): into [`temp_path`] first, then renamed over `path` and the
/// folder synced, so `path` is always either its old content or the
/// whole new one. A temporary file left by an earlier cut-off run is
/// replaced; on failure the temporary file is removed.
pub fn write_atomically<T>(
    fs: &dyn FolderFs,
    path: &Path,
    write: impl FnOnce(&dyn Storage, &str) -> Result<T>,
) -> Result<T> {
    let v = write_atomically_unsynced(fs, path, write)?;
    if let Some(d) = parent_dir(path) {
        fs.sync_dir(&d).map_err(|e| Error::io(&d, e))?;
    }
    Ok(v)
}

/// [`write_atomically`] without the folder sync: the new file is whole
/// under its name, but the rename is durable only once the caller syncs
/// the folder ([`sync_dirs`]), which it must do before anything that
/// depends on the file (a commit naming it) is written.
pub fn write_atomically_unsynced<T>(
    fs: &dyn FolderFs,
    path: &Path,
    write: impl FnOnce(&dyn Storage, &str) -> Result<T>,
) -> Result<T> {
    let tmp = temp_path(path);
    remove_if_exists(fs, &tmp)?;
    let storage = fs.create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let r = write(&*storage, &path.display().to_string()).and_then(|v| {
        storage.flush().map_err(|e| Error::io(&tmp, e))?;
        Ok(v)
    });
    drop(storage);
    match r {
        Ok(v) => {
            fs.rename(&tmp, path).map_err(|e| Error::io(path, e))?;
            Ok(v)
        }
        Err(e) => {
            let _ = fs.remove_file(&tmp);
            Err(e)
        }
    }
}

/// Removes `path` when it exists (and syncs its folder); a missing file
/// is not an error, so a re-run after a crash can repeat it.
pub fn remove_if_exists(fs: &dyn FolderFs, path: &Path) -> Result<bool> {
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(false);
    }
    fs.remove_file(path).map_err(|e| Error::io(path, e))?;
    if let Some(d) = parent_dir(path) {
        fs.sync_dir(&d).map_err(|e| Error::io(&d, e))?;
    }
    Ok(true)
}

/// Syncs the folders holding `paths`, each once.
pub fn sync_dirs(fs: &dyn FolderFs, paths: &[&Path]) -> Result<()> {
    let mut dirs: Vec<PathBuf> = paths.iter().filter_map(|p| parent_dir(p)).collect();
    dirs.sort();
    dirs.dedup();
    for d in dirs {
        fs.sync_dir(&d).map_err(|e| Error::io(&d, e))?;
    }
    Ok(())
}

/// Creates `dir` when it does not exist (and syncs its parent).
pub fn ensure_dir(fs: &dyn FolderFs, dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs.create_dir(dir).map_err(|e| Error::io(dir, e))?;
    if let Some(d) = parent_dir(dir) {
        fs.sync_dir(&d).map_err(|e| Error::io(&d, e))?;
    }
    Ok(())
}

/// Copies the file `src` into a new file at `dst` (atomically, as
/// [`write_atomically`]), with `copy_file_range` when the storage is a
/// plain file and through a buffer otherwise. `progress` gets bytes done.
pub fn copy_file(
    fs: &dyn FolderFs,
    src: &Path,
    dst: &Path,
    progress: &mut dyn FnMut(u64),
) -> Result<u64> {
    let from = File::open(src).map_err(|e| Error::io(src, e))?;
    let len = from.metadata().map_err(|e| Error::io(src, e))?.len();
    write_atomically(fs, dst, |out, _| {
        let mut done = 0u64;
        if let Some(f) = out.as_file() {
            while done < len {
                let n = copy_range(&from, f, done, len - done).map_err(|e| Error::io(dst, e))?;
                if n == 0 {
                    break;
                }
                done += n;
                progress(done);
            }
        }
        let mut buf = vec![0u8; (4 << 20).min(len.max(1)) as usize];
        while done < len {
            let n = buf.len().min((len - done) as usize);
            std::os::unix::fs::FileExt::read_exact_at(&from, &mut buf[..n], done)
                .map_err(|e| Error::io(src, e))?;
            out.write_at(&buf[..n], done)
                .map_err(|e| Error::io(dst, e))?;
            done += n as u64;
            progress(done);
        }
        if out.len().map_err(|e| Error::io(dst, e))? != len {
            out.set_len(len).map_err(|e| Error::io(dst, e))?;
        }
        Ok(len)
    })
}

/// One `copy_file_range` call at the same offset in both files; 0 when the
/// kernel cannot (the caller then copies through a buffer).
fn copy_range(from: &File, to: &File, off: u64, len: u64) -> io::Result<u64> {
    use std::os::fd::AsRawFd;
    let mut a = off as libc::loff_t;
    let mut b = off as libc::loff_t;
    let want = len.min(1 << 30) as usize;
    loop {
        // SAFETY: both descriptors are open for the call; the offsets are
        // locals the kernel updates.
        let r = unsafe {
            libc::copy_file_range(from.as_raw_fd(), &mut a, to.as_raw_fd(), &mut b, want, 0)
        };
        if r >= 0 {
            return Ok(r as u64);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EXDEV)
            | Some(libc::ENOSYS)
            | Some(libc::EOPNOTSUPP)
            | Some(libc::EINVAL) => return Ok(0),
            _ => return Err(e),
        }
    }
}

/// Removes `dir` and everything in it (a partial folder a cut-off run
/// left); a missing folder is not an error.
pub fn remove_tree(fs: &dyn FolderFs, dir: &Path) -> Result<()> {
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(_) => return Ok(()),
    };
    if !meta.is_dir() {
        return remove_if_exists(fs, dir).map(|_| ());
    }
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let p = e.map_err(|e| Error::io(dir, e))?.path();
        if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
            remove_tree(fs, &p)?;
        } else {
            fs.remove_file(&p).map_err(|e| Error::io(&p, e))?;
        }
    }
    fs.remove_dir(dir).map_err(|e| Error::io(dir, e))?;
    if let Some(d) = parent_dir(dir) {
        fs.sync_dir(&d).map_err(|e| Error::io(&d, e))?;
    }
    Ok(())
}

/// `dir` made absolute (its parent canonical) although it may not exist.
pub fn absolute_new(dir: &Path) -> Result<PathBuf> {
    let name = dir
        .file_name()
        .ok_or_else(|| Error::refused(dir, "a folder name is needed"))?;
    let parent = parent_dir(dir).unwrap_or_else(|| PathBuf::from("."));
    let parent = std::fs::canonicalize(&parent).map_err(|e| Error::io(&parent, e))?;
    Ok(parent.join(name))
}

/// The sibling folder a new folder is built in before it is renamed into
/// place: `.NAME.hvkit-partial`.
pub fn partial_dir(dir: &Path) -> PathBuf {
    hidden_sibling(dir, "hvkit-partial")
}

/// Puts the folder built at `partial` in place as `dest` (an empty `dest`
/// is replaced) and syncs the parent: it appears whole or not at all.
pub fn publish_dir(fs: &dyn FolderFs, partial: &Path, dest: &Path) -> Result<()> {
    if dest.is_dir() {
        fs.remove_dir(dest).map_err(|e| Error::io(dest, e))?;
    }
    fs.rename(partial, dest).map_err(|e| Error::io(dest, e))?;
    if let Some(d) = parent_dir(dest) {
        fs.sync_dir(&d).map_err(|e| Error::io(&d, e))?;
    }
    Ok(())
}

/// Refuses a destination that exists and is not an empty folder.
pub fn check_new_dir(dir: &Path) -> Result<()> {
    match std::fs::read_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(dir, e)),
        Ok(mut rd) => {
            if rd.next().is_some() {
                Err(Error::refused(
                    dir,
                    "exists and is not empty (nothing was changed)",
                ))
            } else {
                Ok(())
            }
        }
    }
}
