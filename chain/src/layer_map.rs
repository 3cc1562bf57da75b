//! Reads through a chain at the same cost at any depth.
//!
//! [`ChainDisk`] wraps a [`vhdx::Disk`] and resolves once, at open, which
//! layer holds every byte range of the guest: one [`Disk::for_each_run`] over
//! the whole disk gives a sorted list of [`Extent`]s (already resolved through
//! every layer and coalesced). A read binary-searches that list and reads
//! each piece straight from the file of the layer that holds it, so it does
//! not walk the chain. Writes, discards and resizes go to the leaf through
//! the inner `Disk`; the whole leaf blocks they touched are then resolved
//! again and spliced into the list.

use crate::error::{Error, Result};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use vhdx::write::DiscardMode;
use vhdx::{ChainOptions, Disk, Run};

/// Where the bytes of an [`Extent`] come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Stored at `offset` in the file of layer `layer` (0 is the leaf; the
    /// index into [`Disk::layers`]).
    Data { layer: usize, offset: u64 },
    /// Reads as zeros.
    Zero,
    /// Belongs to the parent of the chain's base, which was not opened
    /// (reads as zeros, as [`Disk`] reads it).
    Parent,
}

/// A guest byte range `start..start + len` and where its bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub start: u64,
    pub len: u64,
    pub source: Source,
}

impl Extent {
    /// One past the last guest byte.
    pub fn end(&self) -> u64 {
        self.start + self.len
    }

    /// Whether `next` (which starts where `self` ends) continues `self`.
    fn continues_into(&self, next: &Extent) -> bool {
        match (self.source, next.source) {
            (
                Source::Data { layer, offset },
                Source::Data {
                    layer: l2,
                    offset: o2,
                },
            ) => layer == l2 && offset + self.len == o2,
            (Source::Zero, Source::Zero) | (Source::Parent, Source::Parent) => true,
            _ => false,
        }
    }

    /// The part of `self` in `from..to` (which must lie inside it).
    fn slice(&self, from: u64, to: u64) -> Extent {
        let source = match self.source {
            Source::Data { layer, offset } => Source::Data {
                layer,
                offset: offset + (from - self.start),
            },
            s => s,
        };
        Extent {
            start: from,
            len: to - from,
            source,
        }
    }
}

/// Appends `e` to `list`, merging it into the last extent when it continues it.
fn push_extent(list: &mut Vec<Extent>, e: Extent) {
    if e.len == 0 {
        return;
    }
    if let Some(last) = list.last_mut() {
        if last.continues_into(&e) {
            last.len += e.len;
            return;
        }
    }
    list.push(e);
}

/// The extents of `offset..offset + len`, resolved through the chain.
fn resolve(disk: &Disk, offset: u64, len: u64) -> Result<Vec<Extent>> {
    let mut out = Vec::new();
    let mut pos = offset;
    disk.for_each_run(offset, len, &mut |run| {
        let n = run.len();
        let source = match run {
            Run::Data { file, offset, .. } => Source::Data {
                layer: file,
                offset,
            },
            Run::Zero { .. } => Source::Zero,
            Run::Parent { .. } => Source::Parent,
        };
        push_extent(
            &mut out,
            Extent {
                start: pos,
                len: n,
                source,
            },
        );
        pos += n;
        Ok(())
    })?;
    Ok(out)
}

/// A chain presented as one disk whose reads do not get slower with depth.
///
/// Reads use the layer map; writes go to the leaf. The map is a cache of
/// what the inner [`Disk`] resolves: if it cannot be brought up to date
/// after a change (an error resolving the runs), it is dropped and reads go
/// through the inner `Disk` (correct, but layer by layer) until the next
/// change rebuilds it; [`ChainDisk::is_mapped`] tells which.
#[derive(Debug)]
pub struct ChainDisk {
    disk: Disk,
    /// Sorted, contiguous from 0 to the virtual size, no empty extent, and
    /// no extent that continues the one before it.
    extents: Vec<Extent>,
    mapped: bool,
    pos: u64,
}

impl ChainDisk {
    /// Opens `path` and its parents (found through the locator, or given in
    /// `opts.parents`) read-only, as [`Disk::open`] does, and maps the chain.
    pub fn open(path: impl AsRef<Path>, opts: &ChainOptions) -> Result<ChainDisk> {
        ChainDisk::from_disk(Disk::open(path, opts)?)
    }

    /// Opens `path` for writing (its parents stay read-only) and maps the chain.
    pub fn open_writable(path: impl AsRef<Path>, opts: &ChainOptions) -> Result<ChainDisk> {
        ChainDisk::from_disk(Disk::open_writable(path, opts)?)
    }

    /// Maps a chain already open.
    pub fn from_disk(disk: Disk) -> Result<ChainDisk> {
        let extents = resolve(&disk, 0, disk.virtual_size())?;
        Ok(ChainDisk {
            disk,
            extents,
            mapped: true,
            pos: 0,
        })
    }

    /// The chain underneath (its layers, leaf first, and their files).
    pub fn disk(&self) -> &Disk {
        &self.disk
    }

    /// Gives the chain back, without the map.
    pub fn into_disk(self) -> Disk {
        self.disk
    }

    pub fn virtual_size(&self) -> u64 {
        self.disk.virtual_size()
    }

    /// The layer map: sorted extents covering the whole disk (empty when
    /// [`ChainDisk::is_mapped`] is false).
    pub fn extents(&self) -> &[Extent] {
        &self.extents
    }

    /// False when the map could not be updated after a change and reads go
    /// through the inner [`Disk`].
    pub fn is_mapped(&self) -> bool {
        self.mapped
    }

    /// Reads guest bytes at `offset`; the range must lie inside the disk.
    /// Allocation-free: one binary search, then one file read per extent.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let size = self.virtual_size();
        let len = buf.len() as u64;
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= size)
            .ok_or(vhdx::Error::OutOfRange { offset, len, size })?;
        if !self.mapped {
            return Ok(self.disk.read_at(buf, offset)?);
        }
        let layers = self.disk.layers();
        let mut i = self.extents.partition_point(|e| e.end() <= offset);
        let mut pos = offset;
        let mut done = 0usize;
        while pos < end {
            let e = &self.extents[i];
            let n = (e.end().min(end) - pos) as usize;
            let dst = &mut buf[done..done + n];
            match e.source {
                Source::Data { layer, offset } => layers[layer]
                    .file
                    .read_file_at(dst, offset + (pos - e.start))?,
                Source::Zero | Source::Parent => dst.fill(0),
            }
            pos += n as u64;
            done += n;
            i += 1;
        }
        Ok(())
    }

    /// Writes guest bytes at `offset` into the leaf (any alignment; partial
    /// sectors are completed with what the disk shows there now).
    pub fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        let r = self.disk.write_at(buf, offset);
        self.changed(offset, buf.len() as u64);
        Ok(r?)
    }

    /// Discards `offset..offset + len` (whole logical sectors) of the leaf.
    pub fn discard(&mut self, offset: u64, len: u64, mode: DiscardMode) -> Result<()> {
        let r = self.disk.discard(offset, len, mode);
        self.changed(offset, len);
        Ok(r?)
    }

    /// Changes the virtual size of the leaf (see [`Disk::resize`]).
    pub fn resize(&mut self, new_size: u64, allow_shrink: bool) -> Result<()> {
        let old = self.virtual_size();
        let r = self.disk.resize(new_size, allow_shrink);
        let now = self.virtual_size();
        if r.is_err() {
            // Whatever part of the change was made: map the whole disk again.
            self.mapped = false;
            self.changed(0, 0);
        } else if now != old {
            let keep = old.min(now);
            if self.mapped {
                self.extents
                    .truncate(self.extents.partition_point(|e| e.start < keep));
                if let Some(last) = self.extents.last_mut() {
                    last.len = last.len.min(keep - last.start);
                }
            }
            self.changed(keep, now - keep);
        }
        Ok(r?)
    }

    /// Makes every write so far durable (commits the leaf's metadata).
    pub fn flush(&mut self) -> Result<()> {
        Ok(self.disk.flush()?)
    }

    /// Commits and closes the leaf cleanly.
    pub fn close(self) -> Result<()> {
        Ok(self.disk.close()?)
    }

    /// Brings the map up to date after a change of `offset..offset + len`
    /// (or drops it, see the type's documentation); an unmapped disk is
    /// mapped whole again.
    fn changed(&mut self, offset: u64, len: u64) {
        let r = if self.mapped {
            self.remap(offset, len)
        } else {
            resolve(&self.disk, 0, self.virtual_size()).map(|e| self.extents = e)
        };
        self.mapped = r.is_ok();
        if !self.mapped {
            self.extents = Vec::new();
        }
    }

    /// Resolves the whole leaf blocks around `offset..offset + len` again
    /// and splices them into the map, merging them with their neighbours.
    /// The map must already cover everything before the range.
    fn remap(&mut self, offset: u64, len: u64) -> Result<()> {
        let size = self.virtual_size();
        let bs = self.disk.leaf().block_size();
        let lo = (offset / bs * bs).min(size);
        let hi = offset
            .saturating_add(len)
            .min(size)
            .next_multiple_of(bs)
            .min(size);
        if lo >= hi {
            return Ok(());
        }
        let fresh = resolve(&self.disk, lo, hi - lo)?;
        // The extents overlapping lo..hi and one neighbour on each side.
        let first = self
            .extents
            .partition_point(|e| e.end() <= lo)
            .saturating_sub(1);
        let last = (self.extents.partition_point(|e| e.start < hi) + 1).min(self.extents.len());
        let old = &self.extents[first..last];
        let mut new = Vec::with_capacity(fresh.len() + 4);
        for e in old.iter().filter(|e| e.start < lo) {
            push_extent(&mut new, e.slice(e.start, e.end().min(lo)));
        }
        for e in fresh {
            push_extent(&mut new, e);
        }
        for e in old.iter().filter(|e| e.end() > hi) {
            push_extent(&mut new, e.slice(e.start.max(hi), e.end()));
        }
        self.extents.splice(first..last, new);
        Ok(())
    }
}

fn io_error(e: Error) -> io::Error {
    match e {
        Error::Vhdx(e) => e.into(),
        Error::Io { source, .. } => source,
        other => io::Error::other(other),
    }
}

impl Read for ChainDisk {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = vhdx::disk::read_span(self.pos, self.virtual_size(), buf.len());
        if n == 0 {
            return Ok(0);
        }
        self.read_at(&mut buf[..n], self.pos).map_err(io_error)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for ChainDisk {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.pos = vhdx::disk::seek_position(self.pos, self.virtual_size(), pos)?;
        Ok(self.pos)
    }
}

impl Write for ChainDisk {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = vhdx::disk::write_span(self.pos, self.virtual_size(), buf.len())?;
        self.write_at(&buf[..n], self.pos).map_err(io_error)?;
        self.pos += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        ChainDisk::flush(self).map_err(io_error)
    }
}
