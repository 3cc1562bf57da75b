//! Copying between plain files around the page cache (`O_DIRECT`): the
//! caller's thread reads each piece (from the page cache when it is already
//! there, `preadv2(RWF_NOWAIT)`, else with `O_DIRECT`), and a writer thread
//! writes it with `O_DIRECT`, so the disk reads and writes at the same time
//! in large requests. On this project's virtual disk, buffered I/O moved
//! 200–450 MB/s and `O_DIRECT` 0.9–1.9 GB/s (benches/README.md); the data
//! must reach the disk either way before a merge or a `--sync` convert ends.
//!
//! Unaligned edges (a 512-byte-sector run that does not start or end on a
//! 4 KiB boundary) and anything `O_DIRECT` refuses go through the plain
//! descriptors instead, so the copy never fails for want of alignment.

use std::alloc::{alloc, dealloc, Layout};
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::{Scope, ScopedJoinHandle};

/// Alignment of `O_DIRECT` offsets, lengths and buffers (the largest
/// logical block size in common use).
pub const ALIGN: u64 = 4096;
/// Bytes per request.
pub const CHUNK: u64 = 8 << 20;
/// Buffers in flight between the reader and the writer.
const BUFFERS: usize = 4;

/// A heap buffer aligned to [`ALIGN`].
struct AlignedBuf {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the buffer is plain memory owned by this value alone.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    fn new(len: usize) -> Self {
        let layout = Layout::from_size_align(len, ALIGN as usize).expect("valid layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc(layout) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        // Zeroed once so that every byte is initialised.
        // SAFETY: `ptr` points to `len` writable bytes.
        unsafe { std::ptr::write_bytes(ptr, 0, len) };
        AlignedBuf { ptr, len }
    }
    fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` holds `len` initialised bytes owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, borrowed mutably through &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(self.len, ALIGN as usize).expect("valid layout");
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr, layout) };
    }
}

/// `f` opened again (a new open file description) with `O_DIRECT`, or
/// None where the filesystem or the system does not allow it.
pub fn reopen_direct(f: &File, write: bool) -> Option<File> {
    let path = format!("/proc/self/fd/{}", f.as_raw_fd());
    OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .ok()
}

/// A piece read, waiting to be written: `len` bytes at `start` of `buf`
/// go to `dst` (`start` ≡ the source offset mod [`ALIGN`]).
struct Job {
    buf: AlignedBuf,
    start: usize,
    len: usize,
    dst: u64,
}

/// The first write error: output offset, kind and message.
type Failure = Arc<Mutex<Option<(u64, std::io::ErrorKind, String)>>>;

/// The writer's failure as the payload of the `io::Error` that `drain` and
/// `finish` return: where in the output it happened, and the OS error's
/// text. [`failure_offset`] finds it again.
#[derive(Debug)]
pub struct OutputWriteFailed {
    pub offset: u64,
    pub message: String,
}

impl std::fmt::Display for OutputWriteFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for OutputWriteFailed {}

/// The output offset of a writer failure (None for other errors).
pub fn failure_offset(e: &std::io::Error) -> Option<u64> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<OutputWriteFailed>())
        .map(|f| f.offset)
}

/// A copy pipeline into one output file; see the module comment.
pub struct DirectCopy<'scope> {
    jobs: Option<SyncSender<Job>>,
    free: Receiver<AlignedBuf>,
    pool: Vec<AlignedBuf>,
    made: usize,
    failure: Failure,
    writer: Option<ScopedJoinHandle<'scope, ()>>,
    /// Sources opened with `O_DIRECT`, by descriptor (None: refused).
    sources: Vec<(i32, Option<File>)>,
    /// Bytes read from the disk with `O_DIRECT` / from the page cache.
    pub direct_read_bytes: u64,
    pub cached_read_bytes: u64,
}

impl<'scope> DirectCopy<'scope> {
    /// Starts the writer for `out`, or returns None when `out` cannot be
    /// opened with `O_DIRECT` (tmpfs on older kernels, some FUSE mounts).
    pub fn start<'env>(scope: &'scope Scope<'scope, 'env>, out: &'env File) -> Option<Self> {
        let direct = reopen_direct(out, true)?;
        let (jobs, rx) = sync_channel::<Job>(BUFFERS);
        let (give_back, free) = channel();
        let failure: Failure = Arc::default();
        let f = failure.clone();
        let writer = scope.spawn(move || write_jobs(rx, give_back, out, direct, f));
        Some(DirectCopy {
            jobs: Some(jobs),
            free,
            pool: Vec::new(),
            made: 0,
            failure,
            writer: Some(writer),
            sources: Vec::new(),
            direct_read_bytes: 0,
            cached_read_bytes: 0,
        })
    }

    /// Copies `len` bytes at `src_off` of `src` to `dst_off` of the output.
    /// Returns once the bytes are read; their writes may still be in flight
    /// ([`DirectCopy::drain`] waits for them). `done` hears of each piece.
    /// Sources are told apart by descriptor (each gets one `O_DIRECT`
    /// reopening), so every `src` must stay open while `self` lives.
    pub fn copy(
        &mut self,
        src: &File,
        src_off: u64,
        dst_off: u64,
        len: u64,
        done: &mut dyn FnMut(u64),
    ) -> std::io::Result<()> {
        let mut at = 0u64;
        while at < len {
            self.check()?;
            let s = src_off + at;
            let lead = (s % ALIGN) as usize;
            let n = (len - at).min(CHUNK) as usize;
            let mut buf = self.buffer()?;
            self.read(src, s, buf.as_mut_slice(), lead, n)?;
            self.send(Job {
                buf,
                start: lead,
                len: n,
                dst: dst_off + at,
            })?;
            at += n as u64;
            done(n as u64);
        }
        Ok(())
    }

    /// Writes `data` at `dst_off` of the output, in order with the copies
    /// given before it (the bytes are copied into the pipeline's buffers).
    pub fn write(&mut self, data: &[u8], dst_off: u64) -> std::io::Result<()> {
        for (i, part) in data.chunks(CHUNK as usize).enumerate() {
            self.check()?;
            let dst = dst_off + i as u64 * CHUNK;
            let lead = (dst % ALIGN) as usize;
            let mut buf = self.buffer()?;
            buf.as_mut_slice()[lead..lead + part.len()].copy_from_slice(part);
            self.send(Job {
                buf,
                start: lead,
                len: part.len(),
                dst,
            })?;
        }
        Ok(())
    }

    fn send(&self, job: Job) -> std::io::Result<()> {
        self.jobs
            .as_ref()
            .expect("jobs open until finish")
            .send(job)
            .map_err(|_| std::io::Error::other("the writer thread ended"))
    }

    /// Waits until every piece given so far is written; returns the first
    /// write error.
    pub fn drain(&mut self) -> std::io::Result<()> {
        while self.pool.len() < self.made {
            match self.free.recv() {
                Ok(b) => self.pool.push(b),
                Err(_) => break,
            }
        }
        self.check()
    }

    /// Writes what is left, stops the writer, returns the first error.
    pub fn finish(mut self) -> std::io::Result<()> {
        self.jobs = None;
        if let Some(w) = self.writer.take() {
            w.join()
                .map_err(|_| std::io::Error::other("the writer thread panicked"))?;
        }
        self.check()
    }

    fn check(&self) -> std::io::Result<()> {
        match &*self.failure.lock().expect("not poisoned") {
            None => Ok(()),
            Some((off, kind, msg)) => Err(std::io::Error::new(
                *kind,
                OutputWriteFailed {
                    offset: *off,
                    message: msg.clone(),
                },
            )),
        }
    }

    /// A free buffer: a pooled or returned one, a new one while fewer than
    /// [`BUFFERS`] exist, else waits for the writer to return one.
    fn buffer(&mut self) -> std::io::Result<AlignedBuf> {
        if let Some(b) = self.pool.pop() {
            return Ok(b);
        }
        if let Ok(b) = self.free.try_recv() {
            return Ok(b);
        }
        if self.made < BUFFERS {
            self.made += 1;
            return Ok(AlignedBuf::new((CHUNK + 2 * ALIGN) as usize));
        }
        self.free
            .recv()
            .map_err(|_| std::io::Error::other("the writer thread ended"))
    }

    /// Fills `buf[lead..lead + n]` with `n` bytes of `src` at `off`, where
    /// `lead` = `off` mod ALIGN (so `buf` starts at the aligned offset
    /// `off - lead`, and has room for the aligned tail): from the page cache
    /// when it holds the whole range, else with `O_DIRECT`, plain reads
    /// where that is refused.
    fn read(
        &mut self,
        src: &File,
        off: u64,
        buf: &mut [u8],
        lead: usize,
        n: usize,
    ) -> std::io::Result<()> {
        if all_cached(src, off, n as u64) {
            self.cached_read_bytes += n as u64;
            return src.read_exact_at(&mut buf[lead..lead + n], off);
        }
        let base = off - lead as u64;
        let end = off + n as u64;
        if let Some(d) = self.source(src) {
            // [base, end) widened to an ALIGN boundary at the end.
            let room = (end.next_multiple_of(ALIGN) - base) as usize;
            let want = lead + n;
            let mut p = 0usize;
            let mut refused = false;
            while p < want {
                match d.read_at(&mut buf[p..room], base + p as u64) {
                    Ok(0) => break,
                    Ok(k) => p += k,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        refused = true;
                        break;
                    }
                }
            }
            if p >= want {
                self.direct_read_bytes += n as u64;
                return Ok(());
            }
            if refused {
                self.forget_direct(src);
            }
        }
        src.read_exact_at(&mut buf[lead..lead + n], off)
    }

    fn source(&mut self, src: &File) -> Option<&File> {
        let fd = src.as_raw_fd();
        let i = match self.sources.iter().position(|(f, _)| *f == fd) {
            Some(i) => i,
            None => {
                self.sources.push((fd, reopen_direct(src, false)));
                self.sources.len() - 1
            }
        };
        self.sources[i].1.as_ref()
    }

    fn forget_direct(&mut self, src: &File) {
        let fd = src.as_raw_fd();
        if let Some(s) = self.sources.iter_mut().find(|(f, _)| *f == fd) {
            s.1 = None;
        }
    }
}

impl Drop for DirectCopy<'_> {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

/// Whether the page cache holds every page of `[off, off + len)` of `f`
/// (`cachestat`, Linux 6.5; false where it is missing). Unlike a
/// `RWF_NOWAIT` read, asking starts no read-ahead, which would read the
/// range a second time next to the direct read.
pub fn all_cached(f: &File, off: u64, len: u64) -> bool {
    #[repr(C)]
    struct Range {
        off: u64,
        len: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct Stat {
        nr_cache: u64,
        nr_dirty: u64,
        nr_writeback: u64,
        nr_evicted: u64,
        nr_recently_evicted: u64,
    }
    /// The same number on every Linux architecture.
    const SYS_CACHESTAT: libc::c_long = 451;
    // SAFETY: sysconf has no preconditions.
    let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        p if p > 0 => p as u64,
        _ => 4096,
    };
    let first = off / page;
    let pages = (off + len).div_ceil(page) - first;
    let range = Range {
        off: first * page,
        len: pages * page,
    };
    let mut st = Stat::default();
    // SAFETY: cachestat reads `range` and writes `st`, both live across
    // the call; an unknown syscall returns ENOSYS.
    let r = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            f.as_raw_fd(),
            &range as *const Range,
            &mut st as *mut Stat,
            0u32,
        )
    };
    r == 0 && st.nr_cache >= pages
}

/// The writer thread: each job's aligned middle with `O_DIRECT`, its edges
/// (and everything, once `O_DIRECT` has been refused) through `out`.
fn write_jobs(
    jobs: Receiver<Job>,
    give_back: Sender<AlignedBuf>,
    out: &File,
    direct: File,
    failure: Failure,
) {
    let mut direct = Some(direct);
    let mut failed = false;
    for job in jobs {
        if !failed {
            if let Err((off, e)) = write_job(&job, out, &mut direct) {
                *failure.lock().expect("not poisoned") = Some((off, e.kind(), e.to_string()));
                failed = true;
            }
        }
        if give_back.send(job.buf).is_err() {
            break;
        }
    }
}

fn write_job(
    job: &Job,
    out: &File,
    direct: &mut Option<File>,
) -> Result<(), (u64, std::io::Error)> {
    let data = &job.buf.as_slice()[job.start..job.start + job.len];
    let (dst, end) = (job.dst, job.dst + job.len as u64);
    let a = dst.next_multiple_of(ALIGN);
    let b = end - end % ALIGN;
    // The middle can go direct when it exists and sits at an aligned place
    // in memory (source and output offsets agree mod ALIGN).
    let aligned = a < b && (job.start as u64 + (a - dst)).is_multiple_of(ALIGN);
    if let (true, Some(d)) = (aligned, direct.as_ref()) {
        let mid = &data[(a - dst) as usize..(b - dst) as usize];
        match d.write_all_at(mid, a) {
            Ok(()) => {
                plain(out, &data[..(a - dst) as usize], dst)?;
                return plain(out, &data[(b - dst) as usize..], b);
            }
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => *direct = None,
            Err(e) => return Err((a, e)),
        }
    }
    plain(out, data, dst)
}

fn plain(out: &File, data: &[u8], at: u64) -> Result<(), (u64, std::io::Error)> {
    if data.is_empty() {
        return Ok(());
    }
    out.write_all_at(data, at).map_err(|e| (at, e))
}
