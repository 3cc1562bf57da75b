//! Reading a copy's source ahead of it on a helper thread, so that the disk
//! reads while the copier copies.
//!
//! The helper pulls each queued range into the page cache with `sendfile` to
//! `/dev/null` (the kernel references the cached pages and drops them: no
//! copy), waiting for the disk itself, and stays at most a set number of
//! bytes ahead of what the copier reports done. Measured on this project's
//! machine (benches/README.md): a single-threaded `copy_file_range` from a
//! cold source waits for the disk a third of the time, and
//! `POSIX_FADV_WILLNEED` hints, the obvious alternative, made it slower
//! still (the kernel's forced read-ahead fills the cache with 4 KiB pages
//! where its ordinary read-ahead uses large folios, and every later copy
//! pays for the small pages).
//!
//! That holds for long ranges; ranges shorter than [`SHORT`] (runs of
//! partially present blocks, small blocks) are asked for with
//! `POSIX_FADV_WILLNEED` instead, which keeps many reads in flight where
//! `sendfile` would wait for each.
//!
//! Only a hint: any failure stops the helper, never the copy.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{Scope, ScopedJoinHandle};

/// Bytes per `sendfile` call.
const STEP: u64 = 8 << 20;
/// Ranges shorter than this are asked for with `POSIX_FADV_WILLNEED`
/// instead: the kernel's read-ahead does not carry over from one short
/// range to the next (they are not contiguous), so a `sendfile` of each
/// waits for one or two small requests at a time (2 GiB of 1 MiB ranges
/// with 1 MiB gaps read in 6.1-6.9 s that way here, 1.44-1.48 s with every
/// range asked for at once: benches/README.md).
const SHORT: u64 = 4 << 20;

/// One range to read ahead: `len` bytes at `offset` of `file`.
#[derive(Debug, Clone, Copy)]
pub struct Range<'f> {
    pub file: &'f File,
    pub offset: u64,
    pub len: u64,
}

/// How far the copier has got, shared with the helper.
#[derive(Default)]
struct Progress {
    /// Bytes of queued ranges the copier has finished with.
    done: u64,
    /// Set when the copier stops (done or failed).
    stop: bool,
}

/// A running read-ahead helper. Queue ranges in the order the copier will
/// copy them, report each finished range with [`ReadAhead::done`], and
/// [`ReadAhead::finish`] (or drop) when the copy ends.
pub struct ReadAhead<'scope, 'f> {
    queue: Option<Sender<Range<'f>>>,
    shared: Arc<(Mutex<Progress>, Condvar)>,
    helper: Option<ScopedJoinHandle<'scope, ()>>,
}

impl<'scope, 'f: 'scope> ReadAhead<'scope, 'f> {
    /// Starts the helper in `scope`; it reads at most `ahead` bytes beyond
    /// the copier's progress. Without `/dev/null` it does nothing.
    pub fn start<'env>(scope: &'scope Scope<'scope, 'env>, ahead: u64) -> Self {
        let (tx, rx) = channel::<Range<'f>>();
        let shared = Arc::new((Mutex::new(Progress::default()), Condvar::new()));
        let sink = File::options().write(true).open("/dev/null").ok();
        let helper = sink.map(|sink| {
            let shared = Arc::clone(&shared);
            scope.spawn(move || run(rx, &sink, &shared, ahead))
        });
        ReadAhead {
            queue: Some(tx),
            shared,
            helper,
        }
    }

    /// Queues a range (after every range queued before it).
    pub fn queue(&self, range: Range<'f>) {
        if range.len > 0 {
            if let Some(q) = &self.queue {
                // A helper that stopped early has dropped its receiver:
                // nothing more to do then.
                let _ = q.send(range);
            }
        }
    }

    /// Reports that the copier has finished `len` more bytes of the queued
    /// ranges.
    pub fn done(&self, len: u64) {
        let (lock, cv) = &*self.shared;
        if let Ok(mut p) = lock.lock() {
            p.done += len;
            cv.notify_one();
        }
    }

    /// Stops the helper and waits for it.
    pub fn finish(mut self) {
        self.stop();
    }
}

impl ReadAhead<'_, '_> {
    fn stop(&mut self) {
        self.queue = None;
        let (lock, cv) = &*self.shared;
        if let Ok(mut p) = lock.lock() {
            p.stop = true;
            cv.notify_one();
        }
        if let Some(h) = self.helper.take() {
            let _ = h.join();
        }
    }
}

impl Drop for ReadAhead<'_, '_> {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The helper: reads each queued range into the page cache once the
/// copier is less than `ahead` bytes behind its start.
fn run(rx: Receiver<Range<'_>>, sink: &File, shared: &(Mutex<Progress>, Condvar), ahead: u64) {
    let (lock, cv) = shared;
    let mut queued = 0u64; // bytes of ranges before the current one
    while let Ok(r) = rx.recv() {
        let mut at = 0;
        while at < r.len {
            {
                let Ok(mut p) = lock.lock() else { return };
                while !p.stop && queued + at >= p.done.saturating_add(ahead) {
                    p = match cv.wait(p) {
                        Ok(p) => p,
                        Err(_) => return,
                    };
                }
                if p.stop {
                    return;
                }
            }
            if r.len < SHORT {
                // Submitted without waiting: many short reads in flight.
                ask_for(r.file, r.offset, r.len);
                break;
            }
            let step = (r.len - at).min(STEP);
            match pull_into_cache(r.file, r.offset + at, step, sink) {
                Some(n) if n > 0 => at += n,
                _ => break, // end of file or an error: skip the rest
            }
        }
        queued += r.len;
    }
}

/// Asks the kernel to read `len` bytes at `offset` of `file` into the page
/// cache (`POSIX_FADV_WILLNEED`), without waiting for the disk.
fn ask_for(file: &File, offset: u64, len: u64) {
    let (Ok(off), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return;
    };
    // SAFETY: plain syscall on a descriptor borrowed for the call.
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), off, len, libc::POSIX_FADV_WILLNEED);
    }
}

/// `sendfile`s up to `len` bytes at `offset` of `file` to `sink`
/// (`/dev/null`), which reads them into the page cache. Returns the bytes
/// read, `None` on an error.
fn pull_into_cache(file: &File, offset: u64, len: u64, sink: &File) -> Option<u64> {
    let mut off = libc::off_t::try_from(offset).ok()?;
    // SAFETY: both descriptors are open files borrowed for the call and the
    // offset pointer points at a local that outlives it.
    let n = unsafe { libc::sendfile(sink.as_raw_fd(), file.as_raw_fd(), &mut off, len as usize) };
    u64::try_from(n).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;
    use std::time::{Duration, Instant};

    const K256: u64 = 256 << 10;
    const GAP: u64 = 32 << 20;

    /// Whether every page of `len` bytes at `off` of `f` is in the page
    /// cache (`mincore` over a mapping of the file).
    fn resident(f: &File, off: u64, len: u64) -> bool {
        let page = 4096usize;
        // SAFETY: a private read-only mapping of an open file, unmapped
        // before returning; `vec` has one byte per page of the mapping.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_READ,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                off as libc::off_t,
            );
            assert!(p != libc::MAP_FAILED, "mmap failed");
            let mut vec = vec![0u8; (len as usize).div_ceil(page)];
            let r = libc::mincore(p, len as usize, vec.as_mut_ptr());
            libc::munmap(p, len as usize);
            assert_eq!(r, 0, "mincore failed");
            vec.iter().all(|b| b & 1 == 1)
        }
    }

    fn wait_resident(f: &File, off: u64, len: u64) -> bool {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if resident(f, off, len) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    /// Three `len`-byte ranges 32 MiB apart (further than the kernel's own
    /// read-ahead reaches), the rest a hole, read ahead `len` bytes at most.
    fn reads_ahead_no_further_than_allowed(len: u64) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("src");
        let f = File::create(&path).unwrap();
        for i in 0..3 {
            f.write_all_at(&vec![7u8; len as usize], i * GAP).unwrap();
        }
        f.sync_all().unwrap();
        drop(f);
        let f = File::open(&path).unwrap();
        // SAFETY: plain syscall on an open descriptor.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        if (0..3).any(|i| resident(&f, i * GAP, len)) {
            println!("SKIP read-ahead check: this filesystem keeps the file cached");
            return;
        }
        std::thread::scope(|s| {
            let ra = ReadAhead::start(s, len);
            for i in 0..3 {
                ra.queue(Range {
                    file: &f,
                    offset: i * GAP,
                    len,
                });
            }
            assert!(wait_resident(&f, 0, len), "first range never read ahead");
            std::thread::sleep(Duration::from_millis(200));
            assert!(!resident(&f, GAP, len), "read further ahead than allowed");
            ra.done(len);
            assert!(wait_resident(&f, GAP, len), "second range never read ahead");
            std::thread::sleep(Duration::from_millis(200));
            assert!(
                !resident(&f, 2 * GAP, len),
                "read further ahead than allowed"
            );
            ra.done(len);
            assert!(
                wait_resident(&f, 2 * GAP, len),
                "third range never read ahead"
            );
            // Past the end of the file: skipped, and finish() still returns.
            ra.queue(Range {
                file: &f,
                offset: 10 * GAP,
                len: K256,
            });
            ra.done(len);
            ra.finish();
        });
    }

    /// Short ranges go through `POSIX_FADV_WILLNEED`.
    #[test]
    fn reads_short_ranges_ahead_no_further_than_allowed() {
        reads_ahead_no_further_than_allowed(K256);
    }

    /// Long ranges go through `sendfile`.
    #[test]
    fn reads_long_ranges_ahead_no_further_than_allowed() {
        reads_ahead_no_further_than_allowed(SHORT + (2 << 20));
    }

    #[test]
    fn finish_returns_while_the_helper_waits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("src");
        std::fs::write(&path, vec![1u8; 1 << 20]).unwrap();
        let f = File::open(&path).unwrap();
        let t = Instant::now();
        std::thread::scope(|s| {
            let ra = ReadAhead::start(s, 1);
            for i in 0..4 {
                ra.queue(Range {
                    file: &f,
                    offset: i << 18,
                    len: 1 << 18,
                });
            }
            // Dropped without finish(): the helper, waiting for progress
            // that never comes, must still end.
            drop(ra);
        });
        assert!(t.elapsed() < Duration::from_secs(5));
    }
}
