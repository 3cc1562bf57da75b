//! Moving payload bytes from one VHDX file into another: a reflink
//! (`FICLONERANGE`) where both files share a filesystem that can share
//! blocks, else `copy_file_range` (the copy stays in the kernel), else plain
//! reads and writes through the files' storage (in-memory files, a file
//! with a log replayed in memory, test wrappers).

use crate::error::Result;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use vhdx::direct_copy::DirectCopy;
use vhdx::VhdxFile;

/// Filesystem block size a reflink must be aligned to (the largest in use
/// on Linux filesystems that reflink: XFS and btrfs use 4 KiB).
const REFLINK_ALIGN: u64 = 4096;
/// Bytes per `copy_file_range` step; writeback of each starts right away.
const WRITEBACK_PIECE: u64 = 64 << 20;
/// Bytes per plain read/write step.
const BOUNCE: usize = 4 << 20;

/// How bytes were moved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CopyCounts {
    /// Bytes copied (by `copy_file_range` or read and write).
    pub copied: u64,
    /// Bytes shared by reflink, without copying.
    pub reflinked: u64,
    /// Of `copied`, the bytes that went around the page cache (`O_DIRECT`).
    pub direct: u64,
}

/// Copies payload bytes; remembers whether reflinks work between the pair.
pub struct Copier {
    reflink: bool,
    bounce: Vec<u8>,
    pub counts: CopyCounts,
}

impl Copier {
    /// `reflink`: try `FICLONERANGE` first (it falls back by itself).
    pub fn new(reflink: bool) -> Self {
        Copier {
            reflink,
            bounce: Vec::new(),
            counts: CopyCounts::default(),
        }
    }

    /// Copies `len` bytes at file offset `src_off` of `src` to file offset
    /// `dst_off` of `dst` (a range `dst` has mapped with
    /// [`VhdxFile::map_write`]). `done` hears of the bytes as they are
    /// copied, piece by piece. With `direct` (a writer into `dst`), bytes
    /// that cannot be reflinked go through it and may still be in flight
    /// on return (its `drain` waits for them).
    #[allow(clippy::too_many_arguments)]
    pub fn copy(
        &mut self,
        src: &VhdxFile,
        src_off: u64,
        dst: &VhdxFile,
        dst_off: u64,
        len: u64,
        direct: Option<&mut DirectCopy<'_>>,
        done: &mut dyn FnMut(u64),
    ) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        if let (Some(s), Some(d)) = (src.direct_file(), dst.storage().as_file()) {
            let aligned = (src_off | dst_off | len).is_multiple_of(REFLINK_ALIGN);
            if self.reflink && aligned {
                match clone_range(s, src_off, d, dst_off, len) {
                    Ok(()) => {
                        self.counts.reflinked += len;
                        done(len);
                        return Ok(());
                    }
                    Err(_) => self.reflink = false,
                }
            }
            if let Some(pipe) = direct {
                pipe.copy(s, src_off, dst_off, len, done)
                    .map_err(|e| vhdx_io(dst, dst_off, e))?;
                self.counts.copied += len;
                self.counts.direct += len;
                return Ok(());
            }
            let copied = kernel_copy(s, src_off, d, dst_off, len, done)
                .map_err(|e| vhdx_io(dst, dst_off, e))?;
            self.counts.copied += copied;
            return Ok(());
        }
        self.bounce_copy(src, src_off, dst, dst_off, len, done)
    }

    /// Copies through a buffer with the files' own read and write paths.
    fn bounce_copy(
        &mut self,
        src: &VhdxFile,
        src_off: u64,
        dst: &VhdxFile,
        dst_off: u64,
        len: u64,
        on_done: &mut dyn FnMut(u64),
    ) -> Result<()> {
        if self.bounce.is_empty() {
            self.bounce = vec![0u8; BOUNCE];
        }
        let mut done = 0u64;
        while done < len {
            let n = ((len - done) as usize).min(BOUNCE);
            src.read_file_at(&mut self.bounce[..n], src_off + done)?;
            dst.storage()
                .write_at(&self.bounce[..n], dst_off + done)
                .map_err(|e| vhdx_io(dst, dst_off + done, e))?;
            done += n as u64;
            on_done(n as u64);
        }
        self.counts.copied += len;
        Ok(())
    }
}

pub(crate) fn vhdx_io(f: &VhdxFile, offset: u64, source: std::io::Error) -> crate::error::Error {
    vhdx::Error::io(f.path(), offset, source).into()
}

/// Copies `len` bytes between plain files in pieces of
/// [`WRITEBACK_PIECE`], each written back as soon as it is copied, so the
/// flush that ends a merge finds little left to write. (Two threads copying
/// pieces in turn were tried: no faster on this machine's disk.) A piece the
/// kernel cannot copy is read and written here. Returns `len`.
fn kernel_copy(
    s: &File,
    src_off: u64,
    d: &File,
    dst_off: u64,
    len: u64,
    done: &mut dyn FnMut(u64),
) -> std::io::Result<u64> {
    let mut buf: Vec<u8> = Vec::new();
    let mut at = 0u64;
    while at < len {
        let want = (len - at).min(WRITEBACK_PIECE);
        let (so, dof) = (src_off + at, dst_off + at);
        let mut n = vhdx::export::copy_range(s, so, d, dof, want)?;
        while n < want {
            if buf.is_empty() {
                buf = vec![0u8; BOUNCE];
            }
            let k = ((want - n) as usize).min(BOUNCE);
            s.read_exact_at(&mut buf[..k], so + n)?;
            d.write_all_at(&buf[..k], dof + n)?;
            n += k as u64;
        }
        vhdx::export::start_writeback(d, dof, want);
        done(want);
        at += want;
    }
    Ok(len)
}

/// `FICLONERANGE`: `dst[dst_off..+len]` shares `src[src_off..+len]`'s blocks.
fn clone_range(
    src: &File,
    src_off: u64,
    dst: &File,
    dst_off: u64,
    len: u64,
) -> std::io::Result<()> {
    let arg = libc::file_clone_range {
        src_fd: src.as_raw_fd() as i64,
        src_offset: src_off,
        src_length: len,
        dest_offset: dst_off,
    };
    // SAFETY: the ioctl reads `arg`, which lives across the call; both
    // descriptors are open files we hold.
    let r = unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONERANGE, &arg) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
