//! A guest-visible disk: one VHDX file or a differencing chain, readable
//! through `std::io::{Read, Seek}` and through a range API of runs.

use crate::error::{Error, Result};
use crate::image::{OpenOptions, Run, RunCoalescer, VhdxFile};
use crate::parent;
use crate::write::DiscardMode;
use std::collections::HashSet;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Deepest chain accepted.
pub const MAX_CHAIN_DEPTH: usize = 256;

/// How to open a chain.
#[derive(Debug, Clone, Default)]
pub struct ChainOptions {
    /// Explicit parents: the first is the leaf's parent, the next that
    /// file's parent, and so on; the locator is used past the list.
    pub parents: Vec<PathBuf>,
    /// Accept a parent whose DataWriteGuid does not match the child's
    /// parent_linkage.
    pub force: bool,
    /// Options for each file (the leaf may be writable; parents are always
    /// opened read-only).
    pub open: OpenOptions,
}

/// One file of a chain.
#[derive(Debug)]
pub struct Layer {
    pub path: PathBuf,
    pub file: VhdxFile,
}

/// A VHDX file and its parents, read as the guest sees it.
#[derive(Debug)]
pub struct Disk {
    layers: Vec<Layer>,
    pos: u64,
}

impl Disk {
    /// Opens `path` and, for a differencing disk, its chain of parents.
    pub fn open(path: impl AsRef<Path>, opts: &ChainOptions) -> Result<Disk> {
        let leaf = path.as_ref().to_path_buf();
        let mut layers: Vec<Layer> = Vec::new();
        let mut seen: HashSet<(u64, u64)> = HashSet::new();
        let mut next = Some(leaf.clone());
        while let Some(p) = next.take() {
            let depth = layers.len();
            let id = file_id(&p)?;
            if !seen.insert(id) {
                return Err(Error::ChainCycle {
                    path: leaf.display().to_string(),
                    again: p.display().to_string(),
                });
            }
            let mut o = opts.open;
            if depth > 0 {
                o.write = false;
            }
            let file = VhdxFile::open_path(&p, o)?;
            if let Some(child) = layers.last() {
                check_parent(&child.file, &file, opts.force)?;
            }
            if file.has_parent() {
                if depth + 1 >= MAX_CHAIN_DEPTH {
                    return Err(Error::ChainTooDeep {
                        path: leaf.display().to_string(),
                        max: MAX_CHAIN_DEPTH,
                    });
                }
                next = Some(match opts.parents.get(depth) {
                    Some(explicit) => explicit.clone(),
                    None => find_parent(&p, &file, opts.force)?,
                });
            }
            layers.push(Layer { path: p, file });
        }
        Ok(Disk { layers, pos: 0 })
    }

    /// Builds a chain from files already open, leaf first, checking each
    /// parent link.
    pub fn from_files(files: Vec<(PathBuf, VhdxFile)>, force: bool) -> Result<Disk> {
        if files.is_empty() {
            return Err(Error::unsupported(
                "(none)",
                "a disk needs at least one file",
            ));
        }
        if files.len() > MAX_CHAIN_DEPTH {
            return Err(Error::ChainTooDeep {
                path: files[0].0.display().to_string(),
                max: MAX_CHAIN_DEPTH,
            });
        }
        for w in files.windows(2) {
            if !w[0].1.has_parent() {
                return Err(Error::unsupported(
                    w[0].1.path(),
                    "a file without a parent cannot have one in a chain",
                ));
            }
            check_parent(&w[0].1, &w[1].1, force)?;
        }
        Ok(Disk {
            layers: files
                .into_iter()
                .map(|(path, file)| Layer { path, file })
                .collect(),
            pos: 0,
        })
    }

    /// The files of the chain, leaf first.
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }
    /// The leaf.
    pub fn leaf(&self) -> &VhdxFile {
        &self.layers[0].file
    }
    pub fn virtual_size(&self) -> u64 {
        self.leaf().virtual_size()
    }
    /// True when the base of the chain still names a parent that was not
    /// opened (reads of its ranges return zeros).
    pub fn is_incomplete(&self) -> bool {
        self.layers.last().is_some_and(|l| l.file.has_parent())
    }

    /// Reads guest bytes at `offset`; the range must lie inside the disk.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        read_layers(&self.layers, buf, offset)
    }

    /// Reports the runs of `offset..offset+len` resolved through the chain:
    /// `Data { file }` names the layer holding the bytes; `Parent` appears
    /// only for a chain whose base's parent was not opened.
    pub fn for_each_run(
        &self,
        offset: u64,
        len: u64,
        f: &mut dyn FnMut(Run) -> Result<()>,
    ) -> Result<()> {
        let mut out = RunCoalescer::new(f);
        runs_layers(&self.layers, 0, offset, len, &mut |r| out.push(r))?;
        out.finish()
    }
}

impl Disk {
    /// Opens `path` for writing (its parents stay read-only).
    pub fn open_writable(path: impl AsRef<Path>, opts: &ChainOptions) -> Result<Disk> {
        let mut o = opts.clone();
        o.open.write = true;
        Disk::open(path, &o)
    }

    fn leaf_mut(&mut self) -> &mut VhdxFile {
        &mut self.layers[0].file
    }

    /// Writes guest bytes at `offset` into the leaf. Partial sectors are
    /// completed with the bytes the disk shows there now.
    pub fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        let size = self.virtual_size();
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= size)
            .ok_or(Error::OutOfRange {
                offset,
                len: buf.len() as u64,
                size,
            })?;
        if buf.is_empty() {
            return Ok(());
        }
        let lss = self.leaf().logical_sector_size() as u64;
        let head = offset / lss * lss;
        let tail = end.next_multiple_of(lss);
        if head == offset && tail == end {
            return self.leaf_mut().write_sectors(buf, offset);
        }
        // Edge sectors: read, patch, write (one sector each, or one in all).
        let mut done = 0usize;
        let mut pos = offset;
        while pos < end {
            let sector = pos / lss * lss;
            if pos == sector && end - pos >= lss {
                let n = ((end - pos) / lss * lss) as usize;
                self.leaf_mut().write_sectors(&buf[done..done + n], pos)?;
                done += n;
                pos += n as u64;
                continue;
            }
            let mut s = vec![0u8; lss as usize];
            self.read_at(&mut s, sector)?;
            let at = (pos - sector) as usize;
            let n = (lss as usize - at).min((end - pos) as usize);
            s[at..at + n].copy_from_slice(&buf[done..done + n]);
            self.leaf_mut().write_sectors(&s, sector)?;
            done += n;
            pos += n as u64;
        }
        Ok(())
    }

    /// Discards `offset..offset+len` (whole logical sectors) of the leaf.
    pub fn discard(&mut self, offset: u64, len: u64, mode: DiscardMode) -> Result<()> {
        self.leaf_mut().discard(offset, len, mode)
    }

    /// Makes every write so far durable (commits the leaf's metadata).
    pub fn flush(&mut self) -> Result<()> {
        self.leaf_mut().commit()
    }

    /// Commits and closes the leaf cleanly (empty log, LogGuid cleared).
    pub fn close(mut self) -> Result<()> {
        self.leaf_mut().close()
    }

    /// Changes the virtual size of the leaf. Shrinking needs `allow_shrink`
    /// and fails when anything but zeros lies past the new end.
    pub fn resize(&mut self, new_size: u64, allow_shrink: bool) -> Result<()> {
        let old = self.virtual_size();
        let path = self.leaf().path().to_string();
        self.leaf().validate_virtual_size(new_size)?;
        if new_size < old {
            if !allow_shrink {
                return Err(Error::unsupported(
                    &path,
                    format!("shrinking from {old} to {new_size} bytes needs --allow-shrink"),
                ));
            }
            if let Some(at) = self.first_nonzero(new_size, old - new_size)? {
                return Err(Error::unsupported(
                    &path,
                    format!(
                        "cannot shrink to {new_size} bytes: guest offset {at:#x} past the new end holds data"
                    ),
                ));
            }
        }
        let parent_size = self.layers.get(1).map_or(0, |l| l.file.virtual_size());
        self.leaf_mut().set_virtual_size(new_size, parent_size)
    }

    /// The first guest offset in the range that does not read zero.
    pub fn first_nonzero(&self, offset: u64, len: u64) -> Result<Option<u64>> {
        let mut found = None;
        let mut pos = offset;
        let mut buf = Vec::new();
        self.for_each_run(offset, len, &mut |run| {
            if found.is_none() {
                if let Run::Data { file, offset, len } = run {
                    let f = &self.layers[file].file;
                    let mut done = 0;
                    while done < len && found.is_none() {
                        let k = (len - done).min(1 << 20) as usize;
                        buf.resize(k, 0);
                        f.read_file_at(&mut buf, offset + done)?;
                        if let Some(i) = buf.iter().position(|&b| b != 0) {
                            found = Some(pos + done + i as u64);
                        }
                        done += k as u64;
                    }
                }
            }
            pos += run.len();
            Ok(())
        })?;
        Ok(found)
    }
}

impl Write for Disk {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = write_span(self.pos, self.virtual_size(), buf.len())?;
        self.write_at(&buf[..n], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Disk::flush(self).map_err(io::Error::other)
    }
}

fn read_layers(layers: &[Layer], buf: &mut [u8], offset: u64) -> Result<()> {
    let Some((top, rest)) = layers.split_first() else {
        buf.fill(0);
        return Ok(());
    };
    let mut pos = 0usize;
    top.file.for_each_run(offset, buf.len() as u64, &mut |run| {
        let dst = &mut buf[pos..pos + run.len() as usize];
        let at = offset + pos as u64;
        match run {
            Run::Data { offset, .. } => top.file.read_file_at(dst, offset)?,
            Run::Zero { .. } => dst.fill(0),
            Run::Parent { .. } => {
                // A child may be larger than its parent: past the parent's end reads zeros.
                let psize = rest.first().map_or(0, |l| l.file.virtual_size());
                let inside = psize.saturating_sub(at).min(dst.len() as u64) as usize;
                if inside > 0 {
                    read_layers(rest, &mut dst[..inside], at)?;
                }
                dst[inside..].fill(0);
            }
        }
        pos += dst.len();
        Ok(())
    })
}

fn runs_layers(
    layers: &[Layer],
    index: usize,
    offset: u64,
    len: u64,
    f: &mut dyn FnMut(Run) -> Result<()>,
) -> Result<()> {
    let Some((top, rest)) = layers.split_first() else {
        return f(Run::Parent { len });
    };
    let mut pos = offset;
    top.file.for_each_run(offset, len, &mut |run| {
        let n = run.len();
        match run {
            Run::Data { offset, len, .. } => f(Run::Data {
                file: index,
                offset,
                len,
            })?,
            Run::Zero { len } => f(Run::Zero { len })?,
            Run::Parent { .. } if rest.is_empty() => f(Run::Parent { len: n })?,
            Run::Parent { .. } => {
                let psize = rest[0].file.virtual_size();
                let inside = psize.saturating_sub(pos).min(n);
                if inside > 0 {
                    runs_layers(rest, index + 1, pos, inside, f)?;
                }
                if n > inside {
                    f(Run::Zero { len: n - inside })?;
                }
            }
        }
        pos += n;
        Ok(())
    })
}

fn file_id(p: &Path) -> Result<(u64, u64)> {
    let m = std::fs::metadata(p).map_err(|e| Error::open(&p.display().to_string(), e))?;
    Ok((m.dev(), m.ino()))
}

/// Checks that `parent` may back `child`: identity (DataWriteGuid against
/// parent_linkage/parent_linkage2) and logical sector size.
pub fn check_parent(child: &VhdxFile, parent: &VhdxFile, force: bool) -> Result<()> {
    if child.logical_sector_size() != parent.logical_sector_size() {
        return Err(Error::ParentIncompatible {
            child: child.path().to_string(),
            parent: parent.path().to_string(),
            reason: format!(
                "logical sector size {} differs from the child's {}",
                parent.logical_sector_size(),
                child.logical_sector_size()
            ),
        });
    }
    let Some(loc) = child.parent_locator() else {
        return Ok(());
    };
    let ids = parent::linkages(loc);
    let actual = parent.header().data_write_guid;
    if !force && !ids.contains(&actual) {
        return Err(Error::ParentMismatch {
            child: child.path().to_string(),
            parent: parent.path().to_string(),
            expected: loc.get("parent_linkage").unwrap_or("(none)").to_string(),
            actual,
        });
    }
    Ok(())
}

/// Tries the locator's candidates; the first existing file whose identity
/// matches wins. With only mismatching files, the first mismatch is the error.
fn find_parent(child_path: &Path, child: &VhdxFile, force: bool) -> Result<PathBuf> {
    let loc = child
        .parent_locator()
        .expect("differencing file has a locator");
    let mut tried = Vec::new();
    let mut mismatch = None;
    for (key, p) in parent::candidates(child_path, loc) {
        tried.push(format!("{key} -> {}", p.display()));
        if !p.is_file() {
            continue;
        }
        if force {
            return Ok(p);
        }
        match VhdxFile::open_path(&p, OpenOptions::read_only()) {
            Ok(f) => match check_parent(child, &f, false) {
                Ok(()) => return Ok(p),
                Err(e) => {
                    mismatch.get_or_insert(e);
                }
            },
            Err(e) => {
                mismatch.get_or_insert(e);
            }
        }
    }
    Err(mismatch.unwrap_or_else(|| Error::ParentNotFound {
        path: child_path.display().to_string(),
        tried: if tried.is_empty() {
            "the locator has no path".to_string()
        } else {
            tried.join(", ")
        },
    }))
}

/// How many of `len` bytes a `Read` at `pos` of a `size`-byte disk returns.
pub fn read_span(pos: u64, size: u64, len: usize) -> usize {
    size.saturating_sub(pos).min(len as u64) as usize
}

/// How many of `len` bytes a `Write` at `pos` of a `size`-byte disk takes;
/// none fit past the end, which is an error.
pub fn write_span(pos: u64, size: u64, len: usize) -> io::Result<usize> {
    let n = read_span(pos, size, len);
    if n == 0 && len > 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("write at {pos:#x} past the end of the {size}-byte disk"),
        ));
    }
    Ok(n)
}

/// The position a `Seek` to `to` reaches from `current` on a disk of `size`
/// bytes (past the end is allowed, as for files); shared by the crate's
/// `Seek` impls and the chain crate's.
pub fn seek_position(current: u64, size: u64, to: SeekFrom) -> io::Result<u64> {
    match to {
        SeekFrom::Start(p) => Some(p),
        SeekFrom::End(d) => size.checked_add_signed(d),
        SeekFrom::Current(d) => current.checked_add_signed(d),
    }
    .ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "seek to a negative or overflowing position",
        )
    })
}

impl Read for Disk {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = read_span(self.pos, self.virtual_size(), buf.len());
        if n == 0 {
            return Ok(0);
        }
        self.read_at(&mut buf[..n], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Disk {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.pos = seek_position(self.pos, self.virtual_size(), pos)?;
        Ok(self.pos)
    }
}
