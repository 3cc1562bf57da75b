//! Flattening a disk (a file or a chain) into a raw image: only stored data
//! is copied, zero runs stay holes. Data from plain files moves either
//! around the page cache ([`crate::direct_copy`]: `O_DIRECT` reads and
//! writes in 8 MiB requests, the default of `hvkit convert`), or with
//! `copy_file_range` (in-kernel, reflink where the filesystem can) in 8 MiB
//! pieces, the source read into the page cache ahead of the copy by a
//! helper thread ([`crate::read_ahead`]). One copier: a second one measured
//! no faster on disk and twice the CPU (benches/README.md).

use crate::direct_copy::DirectCopy;
use crate::disk::Disk;
use crate::error::{Error, Result};
use crate::image::Run;
use crate::read_ahead::{Range, ReadAhead};
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
    /// Of `data_bytes`, how many the kernel copied (`copy_file_range`, or
    /// `sendfile` between filesystems) rather than a read and a write here.
    pub kernel_copy_bytes: u64,
    /// Of `data_bytes`, how many went to the output around the page cache
    /// (`O_DIRECT`, [`crate::direct_copy`]).
    pub direct_bytes: u64,
}

/// How [`to_raw_with`] writes.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExportOptions {
    /// Flush the output to stable storage before returning.
    pub sync: bool,
    /// Read and write around the page cache (`O_DIRECT`) where the files
    /// allow it; otherwise, and where they do not, `copy_file_range`.
    pub direct: bool,
}

const WINDOW: u64 = 256 << 20;
const BUF: usize = 4 << 20;
/// Largest piece copied at once.
const PIECE: u64 = 8 << 20;
/// How far ahead of the copy the source is asked to be read in.
const READ_AHEAD: u64 = 128 << 20;

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
    let opts = ExportOptions {
        sync,
        direct: false,
    };
    to_raw_with(disk, out, out_name, opts, progress)
}

/// [`to_raw`] with the choice of page-cache or direct I/O. With `direct`,
/// every piece whose source is a plain file is read (from the page cache
/// when it is there, else from the disk) and written with `O_DIRECT` on a
/// writer thread, in [`crate::direct_copy::CHUNK`] requests, instead of
/// `copy_file_range` with read-ahead.
pub fn to_raw_with(
    disk: &Disk,
    out: &File,
    out_name: &str,
    opts: ExportOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<ExportStats> {
    let sync = opts.sync;
    let size = disk.virtual_size();
    out.set_len(0).map_err(|e| Error::io(out_name, 0, e))?;
    out.set_len(size)
        .map_err(|e| Error::io(out_name, size, e))?;
    let mut stats = ExportStats::default();
    std::thread::scope(|scope| {
        let mut direct = if opts.direct {
            DirectCopy::start(scope, out)
        } else {
            None
        };
        let ahead = ReadAhead::start(scope, READ_AHEAD);
        // The pieces of the next window are queued for read-ahead before
        // the current window is copied, so the helper never runs dry (not
        // needed when reading directly: the reads are large and overlap
        // with the writes by themselves).
        let mut current = window_pieces(disk, 0, &mut stats)?;
        if direct.is_none() {
            queue(disk, &ahead, &current);
        }
        let mut pos = 0u64;
        while pos < size {
            let end = pos.saturating_add(WINDOW).min(size);
            // Empty past the end of the disk.
            let next = window_pieces(disk, end, &mut stats)?;
            match &mut direct {
                Some(d) => stats.direct_bytes += copy_pieces_direct(disk, &current, d, out_name)?,
                None => {
                    queue(disk, &ahead, &next);
                    stats.kernel_copy_bytes +=
                        copy_pieces(disk, &current, out, out_name, sync, &ahead)?;
                }
            }
            current = next;
            pos = end;
            progress(pos);
        }
        if let Some(d) = direct {
            d.finish().map_err(|e| Error::io(out_name, 0, e))?;
        }
        ahead.finish();
        Ok::<(), Error>(())
    })?;
    if sync {
        out.sync_all().map_err(|e| Error::io(out_name, 0, e))?;
    }
    Ok(stats)
}

/// The data pieces of the window of guest bytes starting at `pos` (runs cut
/// into [`PIECE`]s), counting its data and zero bytes into `stats`.
fn window_pieces(disk: &Disk, pos: u64, stats: &mut ExportStats) -> Result<Vec<Piece>> {
    let size = disk.virtual_size();
    let mut pieces = Vec::new();
    if pos >= size {
        return Ok(pieces);
    }
    let len = WINDOW.min(size - pos);
    let mut at = pos;
    disk.for_each_run(pos, len, &mut |run| {
        let n = run.len();
        match run {
            Run::Data { file, offset, len } => {
                // Cut long runs so read-ahead and writeback keep pace.
                let mut done = 0;
                while done < len {
                    let k = (len - done).min(PIECE);
                    pieces.push(Piece {
                        layer: file,
                        src: offset + done,
                        dst: at + done,
                        len: k,
                    });
                    done += k;
                }
                stats.data_bytes += len;
            }
            Run::Zero { len } | Run::Parent { len } => stats.zero_bytes += len,
        }
        at += n;
        Ok(())
    })?;
    Ok(pieces)
}

/// Queues the pieces whose source is a plain file for read-ahead.
fn queue<'f>(disk: &'f Disk, ahead: &ReadAhead<'_, 'f>, pieces: &[Piece]) {
    for p in pieces {
        if let Some(file) = disk.layers()[p.layer].file.direct_file() {
            ahead.queue(Range {
                file,
                offset: p.src,
                len: p.len,
            });
        }
    }
}

/// A stretch of stored data to copy: `len` bytes at `src` in chain layer
/// `layer` go to `dst` in the output.
#[derive(Debug, Clone, Copy)]
struct Piece {
    layer: usize,
    src: u64,
    dst: u64,
    len: u64,
}

/// Copies the pieces in order, reporting each to the read-ahead helper
/// (with `sync`, each piece's writeback starts as soon as it is copied, so
/// the final flush overlaps with the copy). Returns the bytes moved by
/// `copy_file_range`.
fn copy_pieces(
    disk: &Disk,
    pieces: &[Piece],
    out: &File,
    out_name: &str,
    sync: bool,
    ahead: &ReadAhead<'_, '_>,
) -> Result<u64> {
    let mut by_kernel = 0;
    let mut buf: Vec<u8> = Vec::new();
    for p in pieces {
        let layer = &disk.layers()[p.layer].file;
        let direct = layer.direct_file();
        let mut copied = 0;
        if let Some(f) = direct {
            copied = copy_range(f, p.src, out, p.dst, p.len)
                .map_err(|e| Error::io(out_name, p.dst, e))?;
            by_kernel += copied;
        }
        if copied < p.len && buf.is_empty() {
            buf = vec![0u8; BUF];
        }
        while copied < p.len {
            let k = (p.len - copied).min(BUF as u64) as usize;
            layer.read_file_at(&mut buf[..k], p.src + copied)?;
            out.write_all_at(&buf[..k], p.dst + copied)
                .map_err(|e| Error::io(out_name, p.dst + copied, e))?;
            copied += k as u64;
        }
        if sync {
            start_writeback(out, p.dst, p.len);
        }
        // Only plain-file pieces were queued for read-ahead.
        if direct.is_some() {
            ahead.done(p.len);
        }
    }
    Ok(by_kernel)
}

/// Copies the pieces through the direct pipeline; pieces whose source is
/// not a plain file (a log replayed in memory) are read here and handed to
/// its writer as bytes. Returns the bytes read from plain files.
fn copy_pieces_direct(
    disk: &Disk,
    pieces: &[Piece],
    d: &mut DirectCopy<'_>,
    out_name: &str,
) -> Result<u64> {
    let mut moved = 0;
    let mut buf: Vec<u8> = Vec::new();
    for p in pieces {
        let layer = &disk.layers()[p.layer].file;
        if let Some(f) = layer.direct_file() {
            d.copy(f, p.src, p.dst, p.len, &mut |_| {})
                .map_err(|e| Error::io(out_name, p.dst, e))?;
            moved += p.len;
            continue;
        }
        if buf.is_empty() {
            buf = vec![0u8; BUF];
        }
        let mut done = 0;
        while done < p.len {
            let k = (p.len - done).min(BUF as u64) as usize;
            layer.read_file_at(&mut buf[..k], p.src + done)?;
            d.write(&buf[..k], p.dst + done)
                .map_err(|e| Error::io(out_name, p.dst + done, e))?;
            done += k as u64;
        }
    }
    Ok(moved)
}

/// Copies in the kernel until done, the source ends, or the kernel cannot
/// (returns the bytes copied; the caller copies the rest itself):
/// `copy_file_range`, and between filesystems, which it refuses
/// (`EXDEV`), `sendfile`, still one in-kernel page-cache copy instead of a
/// read and a write through a buffer. Also used by the chain crate's merge.
pub fn copy_range(
    src: &File,
    off_in: u64,
    dst: &File,
    off_out: u64,
    len: u64,
) -> std::io::Result<u64> {
    let done = copy_file_range_all(src, off_in, dst, off_out, len)?;
    if done == len {
        return Ok(done);
    }
    Ok(done + send_range(src, off_in + done, dst, off_out + done, len - done)?)
}

/// `copy_file_range` from `src` at `off_in` to `dst` at `off_out`.
fn copy_file_range_all(
    src: &File,
    off_in: u64,
    dst: &File,
    off_out: u64,
    len: u64,
) -> std::io::Result<u64> {
    let cannot = [
        libc::EXDEV,
        libc::EINVAL,
        libc::ENOSYS,
        libc::EOPNOTSUPP,
        libc::EBADF,
    ];
    repeat_in_kernel(len, &cannot, |done, want| {
        let mut i = (off_in + done) as libc::loff_t;
        let mut o = (off_out + done) as libc::loff_t;
        // SAFETY: both descriptors are open files owned by the caller and the
        // offset pointers point at locals that live across the call.
        unsafe { libc::copy_file_range(src.as_raw_fd(), &mut i, dst.as_raw_fd(), &mut o, want, 0) }
    })
}

/// `sendfile` from `src` at `off_in` to `dst` at `off_out` (sendfile writes
/// at the output's file position, which is moved there first; the files
/// are otherwise used with positioned I/O only). Returns the bytes copied,
/// short where the kernel cannot.
fn send_range(src: &File, off_in: u64, dst: &File, off_out: u64, len: u64) -> std::io::Result<u64> {
    let (Ok(pos_in), Ok(pos_out)) = (
        libc::off_t::try_from(off_in),
        libc::off_t::try_from(off_out),
    ) else {
        return Ok(0);
    };
    // SAFETY: plain syscall on a descriptor the caller holds.
    if unsafe { libc::lseek(dst.as_raw_fd(), pos_out, libc::SEEK_SET) } != pos_out {
        return Ok(0);
    }
    let cannot = [libc::EINVAL, libc::ENOSYS, libc::EOPNOTSUPP, libc::EBADF];
    repeat_in_kernel(len, &cannot, |done, want| {
        let mut off = pos_in + done as libc::off_t;
        // SAFETY: both descriptors are open files owned by the caller; `off`
        // is a local that lives across the call.
        unsafe { libc::sendfile(dst.as_raw_fd(), src.as_raw_fd(), &mut off, want) }
    })
}

/// Calls `copy(done, want)` (an in-kernel copy of `want` bytes, at most
/// 1 GiB, starting `done` bytes in; the syscall's return value) until `len`
/// bytes are copied or it copies nothing. An error in `cannot` ends it with
/// the bytes copied so far (the caller copies the rest another way).
fn repeat_in_kernel(
    len: u64,
    cannot: &[i32],
    mut copy: impl FnMut(u64, usize) -> isize,
) -> std::io::Result<u64> {
    let mut done = 0u64;
    while done < len {
        let want = (len - done).min(1 << 30) as usize;
        let r = copy(done, want);
        if r < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(code) if cannot.contains(&code) => Ok(done),
                _ => Err(e),
            };
        }
        if r == 0 {
            break;
        }
        done += r as u64;
    }
    Ok(done)
}

/// Starts writing `len` bytes at `off` of `f` back to the disk without
/// waiting (`sync_file_range(SYNC_FILE_RANGE_WRITE)`), so a flush that must
/// follow overlaps with the work before it. Only a hint: errors are ignored
/// (the flush reports them). Also used by the chain crate's merge.
pub fn start_writeback(f: &File, off: u64, len: u64) {
    if len == 0 {
        return;
    }
    // SAFETY: plain syscall on a descriptor the caller holds; no memory is
    // passed.
    unsafe {
        libc::sync_file_range(
            f.as_raw_fd(),
            off as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::path::Path;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4096) as u8).collect()
    }

    #[test]
    fn copy_range_copies_within_a_filesystem() {
        let dir = std::env::temp_dir().join(format!("hvkit-cr-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let data = pattern(3 << 20);
        let src = dir.join("src");
        std::fs::write(&src, &data).unwrap();
        let s = File::open(&src).unwrap();
        let d = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.join("dst"))
            .unwrap();
        assert_eq!(copy_range(&s, 4096, &d, 8192, 2 << 20).unwrap(), 2 << 20);
        let out = std::fs::read(dir.join("dst")).unwrap();
        assert_eq!(&out[8192..], &data[4096..4096 + (2 << 20)]);
        assert!(out[..8192].iter().all(|&b| b == 0));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Between filesystems `copy_file_range` refuses (`EXDEV`): `sendfile`
    /// takes over, at the asked offsets, and the output's other bytes stay.
    #[test]
    fn copy_range_copies_between_filesystems() {
        let shm = Path::new("/dev/shm");
        let tmp = std::env::temp_dir();
        let dev = |p: &Path| std::fs::metadata(p).map(|m| std::os::unix::fs::MetadataExt::dev(&m));
        match (dev(shm), dev(&tmp)) {
            (Ok(a), Ok(b)) if a != b => {}
            _ => {
                println!(
                    "SKIP: /dev/shm and {} are not two filesystems here",
                    tmp.display()
                );
                return;
            }
        }
        let pid = std::process::id();
        let src = tmp.join(format!("hvkit-cr-src-{pid}"));
        let dst = shm.join(format!("hvkit-cr-dst-{pid}"));
        let data = pattern(5 << 20);
        std::fs::write(&src, &data).unwrap();
        let mut d = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&dst)
            .unwrap();
        d.write_all(&[0xEE; 1 << 20]).unwrap();
        let s = File::open(&src).unwrap();
        let len = (3 << 20) + 512;
        assert_eq!(copy_range(&s, 512, &d, 4 << 20, len).unwrap(), len);
        // Positioned writes after it are not affected by the moved position.
        d.write_all_at(&[0x11; 16], 16).unwrap();
        let out = std::fs::read(&dst).unwrap();
        assert_eq!(out.len() as u64, (4 << 20) + len);
        assert_eq!(&out[4 << 20..], &data[512..512 + len as usize]);
        assert!(out[..16].iter().all(|&b| b == 0xEE));
        assert!(out[16..32].iter().all(|&b| b == 0x11));
        assert!(out[32..1 << 20].iter().all(|&b| b == 0xEE));
        assert!(out[1 << 20..4 << 20].iter().all(|&b| b == 0));
        std::fs::remove_file(&src).unwrap();
        std::fs::remove_file(&dst).unwrap();
    }
}
