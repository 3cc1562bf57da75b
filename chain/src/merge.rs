//! Merging differencing layers into an ancestor (what Hyper-V does when a
//! checkpoint is deleted), crash-safe at every step.
//!
//! Layers are merged one at a time, the one next to the target first, so
//! that every disk above keeps reading what it read before at every
//! instant: merging layer L down into its parent P changes P only where L
//! hides it. One step (L into P):
//!
//! 1. pick P's new DataWriteGuid N and write it into L's locator as
//!    `parent_linkage2` (L's own content does not change, so its
//!    DataWriteGuid and its children's links stay valid);
//! 2. open P, set its DataWriteGuid to N (one header update), copy L's
//!    present data into P (whole runs, reflinked or `copy_file_range`d;
//!    sector bitmaps merged when P is itself differencing), turn L's
//!    ZERO/UNMAPPED blocks into P's zero state, then commit P through its
//!    log and close it;
//! 3. re-point every child of L at P (`parent_linkage` N), each through
//!    its own log;
//! 4. remove L (unless kept: a kept L still reads correctly over P).
//!
//! A crash anywhere leaves L opening over P (it accepts P's old and new
//! DataWriteGuid) and every disk reading as before; running the same merge
//! again finds L's `parent_linkage2` equal to P's DataWriteGuid, keeps N,
//! and completes the step (copying again is harmless).

use crate::copy::Copier;
use crate::error::{Error, Result};
use crate::plan::{guid_key, Direction, MergePlan, UpPlan, ABSORBED_KEY};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use uuid::Uuid;
use vhdx::create::ParentLink;
use vhdx::direct_copy::DirectCopy;
use vhdx::format::locator::ParentLocator;
use vhdx::read_ahead::{Range, ReadAhead};
use vhdx::write::DiscardMode;
use vhdx::{OpenOptions, Run, VhdxFile};

/// How the merge opens and removes files (the real filesystem, or test
/// wrappers that inject crashes).
pub trait Files {
    fn open(&self, path: &Path, writable: bool) -> vhdx::Result<VhdxFile>;
    fn remove(&self, path: &Path) -> std::io::Result<()>;
}

/// The files on disk.
pub struct OsFiles;

impl Files for OsFiles {
    fn open(&self, path: &Path, writable: bool) -> vhdx::Result<VhdxFile> {
        let o = if writable {
            OpenOptions::writable()
        } else {
            OpenOptions::read_only()
        };
        VhdxFile::open_path(path, o)
    }
    fn remove(&self, path: &Path) -> std::io::Result<()> {
        std::fs::remove_file(path)
    }
}

/// Options of a merge.
#[derive(Debug, Clone)]
pub struct MergeOptions {
    /// Keep the merged files instead of removing them.
    pub keep: bool,
    /// Try reflinks (`FICLONERANGE`) before copying.
    pub reflink: bool,
    /// Commit the target's metadata after this many guest bytes (bounds the
    /// work a crash throws away and the memory of pending pages).
    pub commit_every: u64,
    /// Read and write payload around the page cache (`O_DIRECT`) where the
    /// files allow it, instead of `copy_file_range` (reflinks come first
    /// either way). Off by default: on this project's disk it measured no
    /// faster for merges (benches/README.md), unlike for `convert`.
    pub direct: bool,
}

impl Default for MergeOptions {
    fn default() -> Self {
        MergeOptions {
            keep: false,
            reflink: true,
            commit_every: 16 << 30,
            direct: false,
        }
    }
}

/// What a merge did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MergeStats {
    /// Layers merged into the target.
    pub layers_merged: usize,
    /// Guest bytes copied (`copy_file_range` or read and write).
    pub bytes_copied: u64,
    /// Guest bytes shared by reflink.
    pub bytes_reflinked: u64,
    /// Of `bytes_copied`, those read and written around the page cache
    /// (`O_DIRECT`).
    pub bytes_direct: u64,
    /// Guest bytes turned into the target's zero state.
    pub bytes_zeroed: u64,
    /// Whole blocks of the target set to ZERO without writing.
    pub blocks_zeroed: u64,
    /// Disks re-pointed at the target.
    pub children_repointed: Vec<PathBuf>,
    /// Files removed.
    pub files_removed: Vec<PathBuf>,
    pub elapsed: Duration,
}

/// Carries out `plan`. `progress(done, total)` gets guest bytes handled.
/// A merge that fails (a full disk, an I/O error) gives back the space it
/// had allocated in the file it was writing and not yet committed, so the
/// filesystem is left no fuller than the committed state needs.
pub fn merge(
    files: &dyn Files,
    plan: &MergePlan,
    opts: &MergeOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<MergeStats> {
    let result = run_merge(files, plan, opts, progress);
    if matches!(result, Err(ref e) if !matches!(e, Error::Refused { .. })) {
        let written = match plan.direction {
            Direction::Up => &plan.layers[0],
            Direction::Down => &plan.layers[plan.layers.len() - 1],
        };
        // Best effort: the merge's own error is what the caller hears.
        if let Ok(mut f) = files.open(written, true) {
            let _ = f.release_tail(0);
        }
    }
    result
}

fn run_merge(
    files: &dyn Files,
    plan: &MergePlan,
    opts: &MergeOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<MergeStats> {
    let start = Instant::now();
    let k = plan.layers.len() - 1;
    let target = &plan.layers[k];
    let total: u64 = plan.layer_bytes.iter().sum();
    let mut done_before = 0u64;
    let mut stats = MergeStats::default();
    let mut copier = Copier::new(opts.reflink);
    for l in &plan.leftovers {
        files.remove(l).map_err(|e| Error::io(l, e))?;
        stats.files_removed.push(l.clone());
    }
    if plan.direction == Direction::Up {
        if let Some(up) = &plan.up {
            let mut p = |d: u64| progress(d, total);
            merge_up(files, plan, up, opts, &mut copier, &mut stats, &mut p)?;
        } else {
            // Finishing a cut-off upward merge: only the marker is left.
            clear_absorbed_marker(files, &plan.layers[0])?;
        }
        progress(total, total);
        stats.bytes_copied = copier.counts.copied;
        stats.bytes_direct = copier.counts.direct;
        stats.bytes_reflinked = copier.counts.reflinked;
        stats.elapsed = start.elapsed();
        return Ok(stats);
    }
    for i in (0..k).rev() {
        let mut repoint: Vec<PathBuf> = plan.children[i].clone();
        if i > 0 {
            repoint.insert(0, plan.layers[i - 1].clone());
        }
        let mut step_progress = |d: u64| progress(done_before + d, total);
        merge_step(
            files,
            &plan.layers[i],
            target,
            &repoint,
            plan.target_parent_size,
            opts,
            &mut copier,
            &mut stats,
            &mut step_progress,
        )?;
        done_before += plan.layer_bytes[i];
        progress(done_before, total);
    }
    stats.bytes_copied = copier.counts.copied;
    stats.bytes_direct = copier.counts.direct;
    stats.bytes_reflinked = copier.counts.reflinked;
    stats.elapsed = start.elapsed();
    Ok(stats)
}

fn braced(g: Uuid) -> String {
    format!("{{{g}}}")
}

/// `loc` with `key` set to `value` (added at the end when missing).
fn with_entry(loc: &ParentLocator, key: &str, value: String) -> ParentLocator {
    let mut l = loc.clone();
    match l.entries.iter_mut().find(|(k, _)| k == key) {
        Some(e) => e.1 = value,
        None => l.entries.push((key.to_string(), value)),
    }
    l
}

/// One step: `child` (whose parent is `parent`) into `parent`.
#[allow(clippy::too_many_arguments)]
fn merge_step(
    files: &dyn Files,
    child_path: &Path,
    parent_path: &Path,
    repoint: &[PathBuf],
    parent_parent_size: u64,
    opts: &MergeOptions,
    copier: &mut Copier,
    stats: &mut MergeStats,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    // 1. The child accepts the parent's next DataWriteGuid.
    let old_guid = files.open(parent_path, false)?.header().data_write_guid;
    let mut child = files.open(child_path, true)?;
    let loc = child
        .parent_locator()
        .cloned()
        .ok_or_else(|| Error::refused(child_path, "it has no parent locator"))?;
    let (l1, l2) = (
        guid_key(&loc, "parent_linkage"),
        guid_key(&loc, "parent_linkage2"),
    );
    let new_guid = if l2 == Some(old_guid) && l1.is_some() {
        // A merge of this child was cut off after the parent took its new
        // guid: go on with it.
        old_guid
    } else if l1 == Some(old_guid) {
        let n = Uuid::new_v4();
        child.set_parent_locator(&with_entry(&loc, "parent_linkage2", braced(n)))?;
        n
    } else {
        return Err(vhdx::Error::ParentMismatch {
            child: child_path.display().to_string(),
            parent: parent_path.display().to_string(),
            expected: loc.get("parent_linkage").unwrap_or("(none)").to_string(),
            actual: old_guid,
        }
        .into());
    };
    child.close()?;
    drop(child);
    let child = files.open(child_path, false)?;

    // 2. Copy into the parent under its new identity.
    let mut parent = files.open(parent_path, true)?;
    let filled = fill_parent(
        (child_path, &child),
        &mut parent,
        new_guid,
        parent_parent_size,
        opts,
        copier,
        stats,
        progress,
    );
    close_or_abandon(parent, filled)?;
    stats.layers_merged += 1;

    // 3. Children of the merged layer now hang off the parent.
    for g in repoint {
        let mut f = files.open(g, true)?;
        let link = ParentLink::for_parent(g, parent_path, new_guid);
        f.set_parent_locator(&link.locator())?;
        f.close()?;
        stats.children_repointed.push(g.clone());
    }

    // 4. The merged layer is no longer needed. A kept one becomes a plain
    // child of the parent (it reads the same over it), so that later
    // merges into the parent see it as a user.
    drop(child);
    if opts.keep {
        let mut c = files.open(child_path, true)?;
        let loc = c.parent_locator().cloned().expect("checked above");
        let mut loc = with_entry(&loc, "parent_linkage", braced(new_guid));
        loc.entries.retain(|(k, _)| k != "parent_linkage2");
        c.set_parent_locator(&loc)?;
        c.close()?;
    } else {
        files
            .remove(child_path)
            .map_err(|e| Error::io(child_path, e))?;
        stats.files_removed.push(child_path.to_path_buf());
    }
    Ok(())
}

/// Guest bytes whose runs are looked up at a time.
const WINDOW: u64 = 256 << 20;
/// How far ahead of the copy the source is read into the page cache.
const READ_AHEAD: u64 = 128 << 20;

/// A copy waiting to be issued, grown while the next piece continues it in
/// both files.
#[derive(Clone, Copy)]
struct PendingCopy {
    src: u64,
    dst: u64,
    len: u64,
}

/// Copies `src`'s own data over the guest `ranges` into `dst` at the same
/// guest offsets, and gives `dst` zero state where `src` reads zeros; "ask
/// the parent" ranges are skipped. Commits `dst` at the end (and every
/// `commit_every` bytes), always after the copies its new mappings wait for.
fn copy_runs(
    src: &VhdxFile,
    ranges: &[(u64, u64)],
    dst: &mut VhdxFile,
    opts: &MergeOptions,
    copier: &mut Copier,
    stats: &mut MergeStats,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    let dbs = dst.block_size();
    let mut done = 0u64;
    let mut since_commit = 0u64;
    let mut pending: Option<PendingCopy> = None;
    // Runs are collected per window so the closure does not hold `dst`,
    // one window ahead so that the source is read ahead without a gap.
    let mut windows = ranges.iter().flat_map(|&(start, len)| {
        (0..len.div_ceil(WINDOW)).map(move |i| {
            let pos = start + i * WINDOW;
            (pos, WINDOW.min(start + len - pos))
        })
    });
    let window_runs = |(pos, len): (u64, u64)| -> Result<Vec<(u64, Run)>> {
        let mut runs = Vec::new();
        let mut at = pos;
        src.for_each_run(pos, len, &mut |r| {
            runs.push((at, r));
            at += r.len();
            Ok(())
        })?;
        Ok(runs)
    };
    // The writer of the direct copy holds its own descriptor of `dst`,
    // which stays borrowed mutably for its mappings.
    let dst_dup = if opts.direct {
        dst.storage().as_file().and_then(|f| f.try_clone().ok())
    } else {
        None
    };
    std::thread::scope(|scope| {
        let mut direct = dst_dup.as_ref().and_then(|f| DirectCopy::start(scope, f));
        let ahead = ReadAhead::start(scope, READ_AHEAD);
        // Direct reads are large and overlap with the writes by themselves.
        let read_ahead = direct.is_none();
        let queue = |runs: &[(u64, Run)]| {
            if let (Some(file), true) = (src.direct_file(), read_ahead) {
                for (_, r) in runs {
                    if let Run::Data { offset, len, .. } = *r {
                        ahead.queue(Range { file, offset, len });
                    }
                }
            }
        };
        // The read-ahead follows each piece, not each (possibly GiB-long)
        // copy.
        let mut copy = |c: PendingCopy, dst: &mut VhdxFile, direct: &mut Option<DirectCopy>| {
            copier.copy(src, c.src, dst, c.dst, c.len, direct.as_mut(), &mut |n| {
                ahead.done(n)
            })
        };
        // Before the target's metadata changes (a commit or a discard),
        // every copy given to the direct writer has landed.
        let drain = |dst: &VhdxFile, direct: &mut Option<DirectCopy>| -> Result<()> {
            match direct {
                Some(d) => d.drain().map_err(|e| crate::copy::vhdx_io(dst, 0, e)),
                None => Ok(()),
            }
        };
        let mut next = windows.next().map(window_runs).transpose()?;
        if let Some(runs) = &next {
            queue(runs);
        }
        while let Some(runs) = next.take() {
            next = windows.next().map(window_runs).transpose()?;
            if let Some(r) = &next {
                queue(r);
            }
            for &(guest, run) in &runs {
                match run {
                    Run::Data { offset, len, .. } => {
                        let mut p = 0u64;
                        while p < len {
                            let g = guest + p;
                            let n = (dbs - g % dbs).min(len - p);
                            let to = dst.map_write(g, n)?;
                            let from = offset + p;
                            pending = match pending {
                                Some(c) if c.src + c.len == from && c.dst + c.len == to => {
                                    Some(PendingCopy {
                                        len: c.len + n,
                                        ..c
                                    })
                                }
                                other => {
                                    if let Some(c) = other {
                                        copy(c, dst, &mut direct)?;
                                    }
                                    Some(PendingCopy {
                                        src: from,
                                        dst: to,
                                        len: n,
                                    })
                                }
                            };
                            p += n;
                        }
                        done += len;
                        since_commit += len;
                    }
                    Run::Zero { len } => {
                        // A discard may commit: the mapped copies go first.
                        if let Some(c) = pending.take() {
                            copy(c, dst, &mut direct)?;
                        }
                        drain(dst, &mut direct)?;
                        zero_range(dst, guest, len, stats)?;
                        done += len;
                        since_commit += len;
                    }
                    Run::Parent { .. } => {}
                }
                if since_commit >= opts.commit_every {
                    if let Some(c) = pending.take() {
                        copy(c, dst, &mut direct)?;
                    }
                    drain(dst, &mut direct)?;
                    dst.commit()?;
                    since_commit = 0;
                }
            }
            progress(done);
        }
        if let Some(c) = pending.take() {
            copy(c, dst, &mut direct)?;
        }
        if let Some(d) = direct {
            d.finish().map_err(|e| crate::copy::vhdx_io(dst, 0, e))?;
        }
        Ok::<(), Error>(())
    })?;
    dst.commit()?;
    Ok(())
}

/// Gives `dst` zero state over a guest range: whole blocks become ZERO
/// without writing, the rest is zeroed.
fn zero_range(dst: &mut VhdxFile, guest: u64, len: u64, stats: &mut MergeStats) -> Result<()> {
    let bs = dst.block_size();
    let first_whole = guest.div_ceil(bs);
    let end_whole = (guest + len) / bs;
    dst.discard(guest, len, DiscardMode::Zero)?;
    stats.bytes_zeroed += len;
    stats.blocks_zeroed += end_whole.saturating_sub(first_whole);
    Ok(())
}

/// Ends the writable open `f` after `result`, the work done through it:
/// closed (committed) when that succeeded, abandoned when it failed, so
/// that block mappings whose bytes may not have been copied are never
/// committed (dropping a writable open would commit them).
fn close_or_abandon(mut f: VhdxFile, result: Result<()>) -> Result<()> {
    match result.and_then(|()| Ok(f.close()?)) {
        Ok(()) => Ok(()),
        Err(e) => {
            f.abandon();
            Err(e)
        }
    }
}

/// Step 2 of [`merge_step`]: the parent takes the child's identity, size
/// and data (committed when the caller closes it).
#[allow(clippy::too_many_arguments)]
fn fill_parent(
    (child_path, child): (&Path, &VhdxFile),
    parent: &mut VhdxFile,
    new_guid: Uuid,
    parent_parent_size: u64,
    opts: &MergeOptions,
    copier: &mut Copier,
    stats: &mut MergeStats,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    if parent.logical_sector_size() != child.logical_sector_size() {
        return Err(Error::refused(
            child_path,
            "its logical sector size differs from the parent's",
        ));
    }
    // Space an earlier, cut-off attempt allocated and never committed goes
    // back first: new blocks would otherwise land after it.
    parent.release_tail(0)?;
    parent.pin_data_write_guid(new_guid)?;
    // The merged disk is the child's: its size (past which the child read
    // zeros whatever the parent held) and its identity.
    if child.virtual_size() != parent.virtual_size() {
        parent.set_virtual_size(child.virtual_size(), parent_parent_size)?;
    }
    parent.set_virtual_disk_id(child.metadata().virtual_disk_id)?;
    copy_runs(
        child,
        &[(0, child.virtual_size())],
        parent,
        opts,
        copier,
        stats,
        progress,
    )
}

/// The upward step: the parent's data that the child lacks goes into the
/// child; the child is re-pointed at the grandparent, naming the absorbed
/// parent under [`ABSORBED_KEY`] (it reads the same over either) until the
/// parent is removed; then that marker is dropped. The child's
/// DataWriteGuid stays: what it shows never changes, so its own children
/// stay valid. A crash before the re-point leaves the child over the
/// parent, reading as before; after it, the child over the grandparent,
/// reading the same, and a re-run removes the parent and the marker.
fn merge_up(
    files: &dyn Files,
    plan: &MergePlan,
    up: &UpPlan,
    opts: &MergeOptions,
    copier: &mut Copier,
    stats: &mut MergeStats,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    let (child_path, parent_path) = (&plan.layers[0], &plan.layers[1]);
    let parent = files.open(parent_path, false)?;
    let mut child = files.open(child_path, true)?;
    // The child's content must not change: a failure commits nothing.
    let absorbed = absorb_parent(
        (child_path, &mut child),
        &parent,
        up,
        opts,
        copier,
        stats,
        progress,
    );
    close_or_abandon(child, absorbed)?;
    drop(parent);
    stats.layers_merged += 1;
    stats.children_repointed.push(child_path.clone());
    if !opts.keep {
        files
            .remove(parent_path)
            .map_err(|e| Error::io(parent_path, e))?;
        stats.files_removed.push(parent_path.clone());
    }
    clear_absorbed_marker(files, child_path)
}

/// The body of [`merge_up`]: the parent's runs into the child's holes,
/// then the child re-pointed at the grandparent (committed when the caller
/// closes it).
fn absorb_parent(
    (child_path, child): (&Path, &mut VhdxFile),
    parent: &VhdxFile,
    up: &UpPlan,
    opts: &MergeOptions,
    copier: &mut Copier,
    stats: &mut MergeStats,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    let parent_guid = parent.header().data_write_guid;
    let psize = parent.virtual_size();
    child.release_tail(0)?;
    let guid = child.header().data_write_guid;
    child.pin_data_write_guid(guid)?;
    // The child's holes: inside the parent they get the parent's runs;
    // past the parent's end the child read zeros, which the grandparent
    // would not give.
    let mut holes = Vec::new();
    let mut past_end = Vec::new();
    let mut at = 0u64;
    child.for_each_run(0, child.virtual_size(), &mut |r| {
        if matches!(r, Run::Parent { .. }) {
            let inside = psize.saturating_sub(at).min(r.len());
            if inside > 0 {
                holes.push((at, inside));
            }
            if inside < r.len() && at + inside < up.grandparent_size {
                past_end.push((at + inside, r.len() - inside));
            }
        }
        at += r.len();
        Ok(())
    })?;
    copy_runs(parent, &holes, child, opts, copier, stats, progress)?;
    for (off, len) in past_end {
        zero_range(child, off, len, stats)?;
    }
    child.commit()?;
    // Re-point at the grandparent; the absorbed parent stays acceptable.
    let link = ParentLink::for_parent(child_path, &up.grandparent, up.grandparent_guid);
    let mut loc = link.locator();
    loc.entries
        .insert(1, (ABSORBED_KEY.to_string(), braced(parent_guid)));
    child.set_parent_locator(&loc)?;
    Ok(())
}

/// Drops the absorbed-parent marker from the locator of `path`.
fn clear_absorbed_marker(files: &dyn Files, path: &Path) -> Result<()> {
    let mut f = files.open(path, true)?;
    let Some(mut loc) = f.parent_locator().cloned() else {
        return Ok(());
    };
    if loc.get(ABSORBED_KEY).is_some() {
        loc.entries.retain(|(k, _)| k != ABSORBED_KEY);
        f.set_parent_locator(&loc)?;
    }
    f.close()?;
    Ok(())
}
