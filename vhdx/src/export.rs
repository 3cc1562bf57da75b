//! Flattening a disk (a file or a chain) into a raw image: only stored data
//! is copied, zero runs stay holes, and data moves with `copy_file_range`
//! (in-kernel, reflink where the filesystem can) when the source bytes are a
//! plain file.

use crate::disk::Disk;
use crate::error::{Error, Result};
use crate::image::Run;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

/// What a conversion did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportStats {
    /// Guest bytes written from stored data.
    pub data_bytes: u64,
    /// Guest bytes left as holes (zeros).
    pub zero_bytes: u64,
    /// Of `data_bytes`, how many moved with `copy_file_range`.
    pub copy_file_range_bytes: u64,
}

const WINDOW: u64 = 256 << 20;
const BUF: usize = 4 << 20;

/// Writes the guest content of `disk` into `out` (made `virtual_size` bytes
/// long and sparse where the disk reads zero); with `sync` it is flushed to
/// stable storage before returning. `progress` gets the guest bytes done so far.
pub fn to_raw(
    disk: &Disk,
    out: &File,
    out_name: &str,
    sync: bool,
    progress: &mut dyn FnMut(u64),
) -> Result<ExportStats> {
    let size = disk.virtual_size();
    out.set_len(0).map_err(|e| Error::io(out_name, 0, e))?;
    out.set_len(size)
        .map_err(|e| Error::io(out_name, size, e))?;
    let mut stats = ExportStats::default();
    let mut buf: Vec<u8> = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let len = WINDOW.min(size - pos);
        let mut at = pos;
        disk.for_each_run(pos, len, &mut |run| {
            let n = run.len();
            match run {
                Run::Data { file, offset, len } => {
                    let src = &disk.layers()[file].file;
                    let mut copied = 0;
                    if let Some(f) = src.direct_file() {
                        copied = copy_range(f, offset, out, at, len)
                            .map_err(|e| Error::io(out_name, at, e))?;
                        stats.copy_file_range_bytes += copied;
                    }
                    if copied < len {
                        if buf.is_empty() {
                            buf = vec![0u8; BUF];
                        }
                        let mut done = copied;
                        while done < len {
                            let k = (len - done).min(BUF as u64) as usize;
                            src.read_file_at(&mut buf[..k], offset + done)?;
                            out.write_all_at(&buf[..k], at + done)
                                .map_err(|e| Error::io(out_name, at + done, e))?;
                            done += k as u64;
                        }
                    }
                    stats.data_bytes += len;
                }
                Run::Zero { len } | Run::Parent { len } => stats.zero_bytes += len,
            }
            at += n;
            Ok(())
        })?;
        pos += len;
        progress(pos);
    }
    if sync {
        out.sync_all().map_err(|e| Error::io(out_name, 0, e))?;
    }
    Ok(stats)
}

/// Copies with `copy_file_range` until done, the source ends, or the kernel
/// cannot (returns the bytes copied; the caller copies the rest itself).
fn copy_range(
    src: &File,
    mut off_in: u64,
    dst: &File,
    mut off_out: u64,
    len: u64,
) -> std::io::Result<u64> {
    let mut done = 0u64;
    while done < len {
        let want = (len - done).min(1 << 30) as usize;
        let mut i = off_in as libc::loff_t;
        let mut o = off_out as libc::loff_t;
        // SAFETY: both descriptors are open files owned by the caller and the
        // offset pointers point at locals that live across the call.
        let r = unsafe {
            libc::copy_file_range(src.as_raw_fd(), &mut i, dst.as_raw_fd(), &mut o, want, 0)
        };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(
                    libc::EXDEV | libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP | libc::EBADF,
                ) => Ok(done),
                _ => Err(e),
            };
        }
        if r == 0 {
            break;
        }
        done += r as u64;
        off_in += r as u64;
        off_out += r as u64;
    }
    Ok(done)
}
