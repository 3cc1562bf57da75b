//! Changing a VHDX file (MS-VHDX 2.2.2, 2.3, 2.5): sector writes, discards
//! and size changes of one file, with every metadata change journaled.
//!
//! Payload data is written in place (new blocks at the end of the file,
//! 1 MiB aligned). BAT, sector-bitmap and metadata changes are kept in
//! memory until [`VhdxFile::commit`] (called by `flush`, on close, and when
//! too many pages are pending): it flushes the payload, then for each batch
//! of pages writes a log entry, flushes, writes the pages in place and
//! flushes again. A crash therefore leaves each block either as it was at
//! the last commit or as the next commit made it.

use crate::error::{Error, Result};
use crate::format::bat_entry::{self, PayloadState};
use crate::format::header::Header;
use crate::format::log::SECTOR;
use crate::format::region::RegionTable;
use crate::format::{guids, MAX_VIRTUAL_SIZE, MIB, REGION1_OFFSET, REGION2_OFFSET};
use crate::image::VhdxFile;
use crate::journal::Journal;
use crate::sector_bitmap;
use std::collections::{BTreeMap, BTreeSet};
use uuid::Uuid;

/// Pages pending before a commit is forced (bounds memory and log use).
const MAX_PENDING_PAGES: usize = 256;
const PAGE: u64 = SECTOR;

/// How a discard leaves the range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiscardMode {
    /// Whole blocks become ZERO: they read zeros, never the parent.
    Zero,
    /// Whole blocks become UNMAPPED (read as zeros here, not the parent).
    Unmap,
    /// Whole blocks become NOT_PRESENT, partial ranges lose their sector
    /// bitmap bits: a differencing disk shows its parent again there.
    Transparent,
}

/// Uncommitted changes of a writable open.
#[derive(Debug, Default)]
pub struct Pending {
    /// Pages (4 KiB-aligned file offset → content) of sector bitmaps,
    /// metadata and region tables, newer than the file.
    pub(crate) pages: BTreeMap<u64, Box<[u8]>>,
    /// BAT pages (index of the 4 KiB page in the BAT region) whose entries
    /// changed in memory.
    bat_pages: BTreeSet<u64>,
    /// The FileWriteGuid was renewed by this open.
    file_guid_renewed: bool,
    /// The DataWriteGuid was renewed by this open.
    data_guid_renewed: bool,
    /// Set once the first entry of this open is written.
    journal: Option<Journal>,
}

impl Pending {
    /// Patches `buf` (file bytes at `offset`) with pending pages.
    pub(crate) fn patch(&self, buf: &mut [u8], offset: u64) {
        let end = offset + buf.len() as u64;
        let first = offset / PAGE * PAGE;
        for (&at, page) in self.pages.range(first..end) {
            let s = at.max(offset);
            let e = (at + PAGE).min(end);
            if s < e {
                buf[(s - offset) as usize..(e - offset) as usize]
                    .copy_from_slice(&page[(s - at) as usize..(e - at) as usize]);
            }
        }
    }

    fn count(&self) -> usize {
        self.pages.len() + self.bat_pages.len()
    }
}

impl VhdxFile {
    fn require_writable(&self) -> Result<()> {
        if self.writable {
            Ok(())
        } else {
            Err(Error::ReadOnly {
                path: self.path.clone(),
            })
        }
    }

    /// Before the first change of this open: a new FileWriteGuid, and for a
    /// change the guest can see, a new DataWriteGuid (2.2.2.1). A change the
    /// guest can see may reach the file right after this returns (a write
    /// into an allocated block), so that header is written and flushed now.
    /// For a metadata-only change the new FileWriteGuid goes into the header
    /// that the first commit writes anyway (to name its log), before any
    /// structure of the file is touched: one header write and flush fewer.
    pub(crate) fn begin_change(&mut self, user_visible: bool) -> Result<()> {
        self.require_writable()?;
        if user_visible {
            if !self.pending.data_guid_renewed {
                self.update_header_of_change(|h| h.data_write_guid = Uuid::new_v4())?;
                self.pending.data_guid_renewed = true;
            }
            // The caller changes the payload next (`map_write`'s caller
            // through the file itself); metadata waits for the commit.
            self.mark_unflushed();
        }
        Ok(())
    }

    /// Appends `len` bytes (rounded up to 1 MiB) at the 1 MiB-aligned end of
    /// the file; they read as zeros. Returns their offset.
    fn allocate(&mut self, len: u64) -> Result<u64> {
        let at = self.file_len.next_multiple_of(MIB);
        let end = at
            .checked_add(len.next_multiple_of(MIB))
            .filter(|&e| e <= 1 << 52)
            .ok_or_else(|| Error::unsupported(&self.path, "the file would exceed 4 PiB"))?;
        self.mark_unflushed();
        self.storage
            .set_len(end)
            .map_err(|e| Error::io(&self.path, at, e))?;
        self.file_len = end;
        Ok(at)
    }

    fn set_bat(&mut self, index: usize, entry: u64) {
        if self.bat[index] != entry {
            self.bat[index] = entry;
            self.pending.bat_pages.insert(index as u64 * 8 / PAGE);
        }
    }

    fn payload_state(&self, block: u64) -> Result<(PayloadState, u64)> {
        let i = self.geometry.payload_entry(block);
        let e = self.bat[i];
        PayloadState::from_bits(bat_entry::state_bits(e))
            .map(|s| (s, bat_entry::file_offset(e)))
            .ok_or_else(|| {
                Error::corrupt(
                    &self.path,
                    "BAT",
                    self.bat_region.file_offset + i as u64 * 8,
                    format!("block {block} has reserved state 4"),
                )
            })
    }

    fn set_payload(&mut self, block: u64, state: PayloadState, offset: u64) {
        let i = self.geometry.payload_entry(block);
        self.set_bat(i, bat_entry::make(state.bits(), offset));
    }

    /// A pending copy of the file page at `at` (4 KiB aligned), read from
    /// the file on first use.
    fn page_mut(&mut self, at: u64) -> Result<&mut [u8]> {
        if !self.pending.pages.contains_key(&at) {
            let mut b = vec![0u8; PAGE as usize];
            self.read_file_at(&mut b, at)?;
            self.pending.pages.insert(at, b.into());
        }
        Ok(self.pending.pages.get_mut(&at).expect("inserted"))
    }

    /// File offset of the sector bitmap block of `chunk`, allocated (zeroed)
    /// when the chunk has none yet.
    fn bitmap_block(&mut self, chunk: u64) -> Result<u64> {
        let i = self.geometry.bitmap_entry(chunk);
        let e = self.bat[i];
        if bat_entry::state_bits(e) == bat_entry::SB_BLOCK_PRESENT {
            return Ok(bat_entry::file_offset(e));
        }
        let at = self.allocate(MIB)?;
        self.set_bat(i, bat_entry::make(bat_entry::SB_BLOCK_PRESENT, at));
        Ok(at)
    }

    /// Sets (or clears) the bitmap bits of sectors `first..end` of `block`
    /// (sector numbers inside the block).
    fn set_bits(&mut self, block: u64, first: u64, end: u64, value: bool) -> Result<()> {
        if first >= end {
            return Ok(());
        }
        let g = self.geometry;
        let base = self.bitmap_block(block / g.chunk_ratio)?;
        let bit0 = (block % g.chunk_ratio) * g.sectors_per_block();
        let (mut s, e) = (bit0 + first, bit0 + end);
        while s < e {
            let page_at = base + s / 8 / PAGE * PAGE;
            let page_first_bit = (s / 8 / PAGE) * PAGE * 8;
            let stop = e.min(page_first_bit + PAGE * 8);
            let page = self.page_mut(page_at)?;
            sector_bitmap::set_range(page, s - page_first_bit, stop - page_first_bit, value);
            s = stop;
        }
        *self.bitmap_cache.lock().unwrap_or_else(|e| e.into_inner()) = None;
        Ok(())
    }

    /// True when every sector of `block` has its bitmap bit set.
    fn all_bits_set(&self, block: u64) -> Result<bool> {
        let bits = self.block_bitmap(block)?;
        let sectors = self.geometry.block_len(block) / self.geometry.logical_sector_size;
        Ok(sector_bitmap::run_at(&bits, 0, sectors) == (true, sectors))
    }

    fn check_sector_range(&self, offset: u64, len: u64) -> Result<()> {
        let lss = self.geometry.logical_sector_size;
        let size = self.geometry.virtual_size;
        if offset.checked_add(len).is_none_or(|e| e > size) {
            return Err(Error::OutOfRange { offset, len, size });
        }
        if !offset.is_multiple_of(lss) || !len.is_multiple_of(lss) {
            return Err(Error::unsupported(
                &self.path,
                format!("range {offset:#x}+{len:#x} is not aligned to the {lss}-byte sector"),
            ));
        }
        Ok(())
    }

    /// Writes whole logical sectors at `offset` (both aligned to the logical
    /// sector size). New blocks of a dynamic disk read zeros where not
    /// written; in a differencing disk they show the parent there.
    pub fn write_sectors(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        self.check_sector_range(offset, buf.len() as u64)?;
        if buf.is_empty() {
            return Ok(());
        }
        self.begin_change(true)?;
        let bs = self.geometry.block_size;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let n = ((bs - pos % bs) as usize).min(buf.len() - done);
            let at = self.map_block_write(pos, n as u64)?;
            self.write_raw(&buf[done..done + n], at)?;
            done += n;
        }
        self.commit_if_full()
    }

    /// Maps whole logical sectors `offset..offset+len`, which lie inside one
    /// block, for a write whose bytes the caller puts at the returned file
    /// offset itself (with `copy_file_range`, a reflink, or a plain write to
    /// [`VhdxFile::storage`]) before the next [`VhdxFile::commit`]. The BAT and
    /// sector bitmaps change (in memory, until the commit) exactly as
    /// [`VhdxFile::write_sectors`] would change them; the range's sectors
    /// read as whatever the file holds there until the caller writes them.
    /// Unlike the other changes, a mapping never commits by itself (a
    /// commit must not make the BAT point at bytes not yet written): the
    /// caller commits after its copies, watching
    /// [`VhdxFile::pending_page_count`]. A caller whose copies fail must
    /// end the open with [`VhdxFile::abandon`]: dropping it commits.
    pub fn map_write(&mut self, offset: u64, len: u64) -> Result<u64> {
        self.check_sector_range(offset, len)?;
        let bs = self.geometry.block_size;
        if len == 0 || offset % bs + len > bs {
            return Err(Error::unsupported(
                &self.path,
                format!("range {offset:#x}+{len:#x} is empty or crosses a block boundary"),
            ));
        }
        self.begin_change(true)?;
        self.map_block_write(offset, len)
    }

    /// The state changes of a write of `len` bytes at `pos` (sector aligned,
    /// inside one block); returns the file offset of `pos`.
    fn map_block_write(&mut self, pos: u64, len: u64) -> Result<u64> {
        let g = self.geometry;
        let lss = g.logical_sector_size;
        let block = pos / g.block_size;
        let in_block = pos % g.block_size;
        let (state, at) = self.payload_state(block)?;
        let (s0, s1) = (in_block / lss, (in_block + len) / lss);
        Ok(match state {
            PayloadState::FullyPresent => at + in_block,
            PayloadState::PartiallyPresent if g.has_parent => {
                self.set_bits(block, s0, s1, true)?;
                if self.all_bits_set(block)? {
                    self.set_payload(block, PayloadState::FullyPresent, at);
                }
                at + in_block
            }
            _ => {
                let at = self.allocate(g.block_size)?;
                let whole = len == g.block_len(block);
                if g.has_parent && state == PayloadState::NotPresent && !whole {
                    // Unwritten sectors keep showing the parent.
                    let spb = g.sectors_per_block();
                    self.set_bits(block, 0, spb, false)?;
                    self.set_bits(block, s0, s1, true)?;
                    self.set_payload(block, PayloadState::PartiallyPresent, at);
                } else {
                    // The rest of the new block is zero, as the block read before.
                    self.set_payload(block, PayloadState::FullyPresent, at);
                }
                at + in_block
            }
        })
    }

    /// Makes `guid` this file's DataWriteGuid for the rest of the open and
    /// stops the first data change from renewing it (2.2.2.1). A merge uses
    /// it: the guid it pins is one the merged child already accepts through
    /// `parent_linkage2`, so the child keeps opening while its parent
    /// changes under it in ways the child cannot see. Writes the header only
    /// when the guid differs.
    pub fn pin_data_write_guid(&mut self, guid: Uuid) -> Result<()> {
        self.require_writable()?;
        if self.header.data_write_guid != guid || !self.pending.file_guid_renewed {
            self.update_header_of_change(|h| h.data_write_guid = guid)?;
        }
        self.pending.data_guid_renewed = true;
        Ok(())
    }

    /// Writes the next header with `change` applied and, on the first
    /// header this open writes, a new FileWriteGuid (2.2.2.1).
    fn update_header_of_change(&mut self, change: impl FnOnce(&mut Header)) -> Result<()> {
        let renew_file = !self.pending.file_guid_renewed;
        self.update_header(|h| {
            if renew_file {
                h.file_write_guid = Uuid::new_v4();
            }
            change(h);
        })?;
        self.pending.file_guid_renewed = true;
        Ok(())
    }

    /// Discards whole logical sectors `offset..offset+len` (see [`DiscardMode`]).
    /// A fixed disk keeps its blocks allocated and has the range zeroed.
    pub fn discard(&mut self, offset: u64, len: u64, mode: DiscardMode) -> Result<()> {
        self.check_sector_range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        self.begin_change(true)?;
        let g = self.geometry;
        let lss = g.logical_sector_size;
        let fixed = self.metadata.file_parameters.leave_block_allocated && !g.has_parent;
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let block = pos / g.block_size;
            let in_block = pos % g.block_size;
            let n = (g.block_size - in_block).min(end - pos);
            let whole = n == g.block_len(block);
            let (state, at) = self.payload_state(block)?;
            let reads_zero = matches!(
                state,
                PayloadState::Zero | PayloadState::Unmapped | PayloadState::Undefined
            ) || (state == PayloadState::NotPresent && !g.has_parent);
            let (s0, s1) = (in_block / lss, (in_block + n) / lss);
            if fixed {
                if state.has_data() {
                    self.write_zeros(at + in_block, n)?;
                }
            } else if whole {
                let new = match mode {
                    DiscardMode::Zero => PayloadState::Zero,
                    DiscardMode::Unmap => PayloadState::Unmapped,
                    DiscardMode::Transparent => PayloadState::NotPresent,
                };
                self.set_payload(block, new, 0);
                // Leave no stale bits behind a NOT_PRESENT block (readers
                // such as libvhdi consult the bitmap for it).
                if g.has_parent
                    && new == PayloadState::NotPresent
                    && bat_entry::state_bits(self.bat[g.bitmap_entry(block / g.chunk_ratio)])
                        == bat_entry::SB_BLOCK_PRESENT
                {
                    self.set_bits(block, 0, g.sectors_per_block(), false)?;
                }
            } else if mode != DiscardMode::Transparent || !g.has_parent {
                if !reads_zero {
                    self.write_zeros_guest(pos, n)?;
                }
            } else {
                match state {
                    PayloadState::NotPresent => {}
                    PayloadState::PartiallyPresent => {
                        self.set_bits(block, s0, s1, false)?;
                        let bits = self.block_bitmap(block)?;
                        let sectors = g.block_len(block) / lss;
                        if sector_bitmap::run_at(&bits, 0, sectors) == (false, sectors) {
                            self.set_payload(block, PayloadState::NotPresent, 0);
                        }
                    }
                    PayloadState::FullyPresent => {
                        self.set_bits(block, 0, g.sectors_per_block(), true)?;
                        self.set_bits(block, s0, s1, false)?;
                        self.set_payload(block, PayloadState::PartiallyPresent, at);
                    }
                    _ => {
                        // Reads zeros now; keep zeros around the range.
                        let at = self.allocate(g.block_size)?;
                        self.set_bits(block, 0, g.sectors_per_block(), true)?;
                        self.set_bits(block, s0, s1, false)?;
                        self.set_payload(block, PayloadState::PartiallyPresent, at);
                    }
                }
            }
            pos += n;
        }
        self.commit_if_full()
    }

    /// Writes zeros at file offset `at`.
    fn write_zeros(&mut self, at: u64, len: u64) -> Result<()> {
        let zeros = vec![0u8; len.min(MIB) as usize];
        let mut done = 0;
        while done < len {
            let k = (len - done).min(MIB);
            self.write_raw(&zeros[..k as usize], at + done)?;
            done += k;
        }
        Ok(())
    }

    /// Writes guest zeros (sector aligned) through the normal write path.
    fn write_zeros_guest(&mut self, offset: u64, len: u64) -> Result<()> {
        let zeros = vec![0u8; len.min(MIB) as usize];
        let mut done = 0;
        while done < len {
            let k = (len - done).min(MIB);
            self.write_sectors(&zeros[..k as usize], offset + done)?;
            done += k;
        }
        Ok(())
    }

    /// Refuses a virtual size this file cannot take: zero, not a multiple
    /// of the logical sector size, or over 64 TiB.
    pub(crate) fn validate_virtual_size(&self, new_size: u64) -> Result<()> {
        let lss = self.geometry.logical_sector_size;
        if new_size == 0 || !new_size.is_multiple_of(lss) || new_size > MAX_VIRTUAL_SIZE {
            return Err(Error::unsupported(
                &self.path,
                format!("size {new_size} must be a non-zero multiple of {lss} up to 64 TiB"),
            ));
        }
        Ok(())
    }

    /// Changes the virtual size. Growing keeps the content and the new range
    /// reads zeros (for a differencing disk, `parent_size` says how much of
    /// it the parent would otherwise show). Shrinking drops the BAT entries
    /// past the new end; the caller checks that nothing visible is lost.
    pub fn set_virtual_size(&mut self, new_size: u64, parent_size: u64) -> Result<()> {
        self.require_writable()?;
        self.validate_virtual_size(new_size)?;
        let old = self.geometry;
        let lss = old.logical_sector_size;
        if new_size == old.virtual_size {
            return Ok(());
        }
        self.begin_change(true)?;
        let new = crate::bat::Geometry::new(new_size, old.block_size, lss, old.has_parent);
        let entries = new.bat_entries() as usize;
        if entries as u64 * 8 > self.bat_region.length as u64 {
            self.relocate_bat(entries as u64 * 8)?;
        }
        if entries > self.bat.len() {
            self.bat.resize(entries, 0);
        }
        for i in entries..self.bat.len() {
            self.set_bat(i, 0);
        }
        self.bat.truncate(entries);
        // Bytes past the old end inside the old last block must read zero.
        let grow_tail = if new_size > old.virtual_size {
            let tail_end = old
                .virtual_size
                .next_multiple_of(old.block_size)
                .min(new_size);
            Some(old.virtual_size..tail_end)
        } else {
            None
        };
        self.geometry = new;
        self.metadata.virtual_size = new_size;
        self.put_metadata_item(&guids::VIRTUAL_DISK_SIZE, &new_size.to_le_bytes())?;
        if let Some(tail) = grow_tail {
            let fixed = self.metadata.file_parameters.leave_block_allocated && !new.has_parent;
            if fixed {
                for b in old.payload_blocks..new.payload_blocks {
                    let at = self.allocate(new.block_size)?;
                    self.set_payload(b, PayloadState::FullyPresent, at);
                }
            }
            let block = tail.start / new.block_size;
            if !tail.is_empty() && self.payload_state(block)?.0.has_data() {
                self.discard(tail.start, tail.end - tail.start, DiscardMode::Zero)?;
            }
            // A differencing disk would show its parent in the new range.
            let shown = parent_size.min(new_size);
            if new.has_parent && shown > old.virtual_size {
                self.discard(
                    old.virtual_size,
                    shown - old.virtual_size,
                    DiscardMode::Zero,
                )?;
            }
        }
        self.commit_if_full()
    }

    /// Moves the BAT to a new region at the end of the file big enough for
    /// `bytes` and points both region tables at it (through the log).
    fn relocate_bat(&mut self, bytes: u64) -> Result<()> {
        let len = bytes.next_multiple_of(MIB);
        if len > u32::MAX as u64 {
            return Err(Error::unsupported(&self.path, "the BAT would exceed 4 GiB"));
        }
        // Uncommitted BAT pages are written with the rest below.
        self.commit()?;
        let at = self.allocate(len)?;
        let raw: Vec<u8> = self.bat.iter().flat_map(|e| e.to_le_bytes()).collect();
        self.write_raw(&raw, at)?;
        let mut table = self.region_table.clone();
        for e in &mut table.entries {
            if e.guid == guids::BAT_REGION {
                e.file_offset = at;
                e.length = len as u32;
            }
        }
        let bytes = table.to_bytes();
        for base in [REGION1_OFFSET, REGION2_OFFSET] {
            for (k, chunk) in bytes.chunks(PAGE as usize).enumerate() {
                self.page_mut(base + k as u64 * PAGE)?
                    .copy_from_slice(chunk);
            }
        }
        // The old region's pages are no longer the BAT.
        self.pending.bat_pages.clear();
        self.region_table = RegionTable {
            entries: table.entries,
        };
        self.bat_region = self
            .region_table
            .find(&guids::BAT_REGION)
            .cloned()
            .expect("BAT entry kept");
        self.commit()
    }

    /// Replaces the value of an existing metadata item (same length).
    pub(crate) fn put_metadata_item(&mut self, id: &Uuid, value: &[u8]) -> Result<()> {
        let e = self
            .metadata
            .entries
            .iter()
            .find(|e| !e.is_user && &e.item_id == id)
            .cloned()
            .ok_or_else(|| Error::unsupported(&self.path, format!("no metadata item {id}")))?;
        if e.length as usize != value.len() {
            return Err(Error::unsupported(
                &self.path,
                format!(
                    "metadata item {id} is {} bytes, not {}",
                    e.length,
                    value.len()
                ),
            ));
        }
        self.stage_bytes(self.metadata_region.file_offset + e.offset as u64, value)
    }

    /// Stages `bytes` at file offset `at` as pending pages (committed
    /// through the log).
    pub(crate) fn stage_bytes(&mut self, mut at: u64, bytes: &[u8]) -> Result<()> {
        let mut rest = bytes;
        while !rest.is_empty() {
            let page_at = at / PAGE * PAGE;
            let k = ((page_at + PAGE - at) as usize).min(rest.len());
            let page = self.page_mut(page_at)?;
            page[(at - page_at) as usize..(at - page_at) as usize + k].copy_from_slice(&rest[..k]);
            rest = &rest[k..];
            at += k as u64;
        }
        Ok(())
    }

    fn commit_if_full(&mut self) -> Result<()> {
        if self.pending.count() >= MAX_PENDING_PAGES {
            self.commit()?;
        }
        Ok(())
    }

    /// Metadata pages waiting for a commit.
    pub fn pending_page_count(&self) -> usize {
        self.pending.count()
    }

    /// True when changes wait for a commit.
    pub fn has_pending_changes(&self) -> bool {
        self.pending.count() > 0
    }

    /// Makes every change so far durable: payload first, then the pending
    /// metadata pages through the log (2.3): flush the payload, write the
    /// entry, flush, name the log in the header (first entry of an open;
    /// written and flushed by itself: a header naming a log without a valid
    /// entry does not open), then write the pages in place. Those in-place
    /// writes are not flushed here: the log entry already makes them
    /// durable (a reopen replays it), and whatever comes next flushes them
    /// first (the next entry, whose Tail drops this one, or the header
    /// that [`VhdxFile::close`] clears the log with).
    pub fn commit(&mut self) -> Result<()> {
        self.require_writable()?;
        self.flush_if_unflushed()?;
        if self.pending.count() == 0 {
            return Ok(());
        }
        self.begin_change(false)?;
        let mut pages: BTreeMap<u64, Box<[u8]>> = std::mem::take(&mut self.pending.pages);
        for p in std::mem::take(&mut self.pending.bat_pages) {
            let at = self.bat_region.file_offset + p * PAGE;
            let mut b = vec![0u8; PAGE as usize];
            self.read_file_at(&mut b, at)?;
            let first = (p * PAGE / 8) as usize;
            // Entries past the table (after a shrink) are cleared.
            for k in 0..(PAGE / 8) as usize {
                let e = self.bat.get(first + k).copied().unwrap_or(0);
                b[k * 8..k * 8 + 8].copy_from_slice(&e.to_le_bytes());
            }
            pages.insert(at, b.into());
        }
        let log_length = self.header.log_length as u64;
        let mut journal = self
            .pending
            .journal
            .take()
            .unwrap_or_else(|| Journal::new(log_length));
        let list: Vec<(u64, &[u8])> = pages.iter().map(|(&a, b)| (a, &b[..])).collect();
        let result = (|| {
            for batch in list.chunks(journal.max_pages()) {
                // The previous batch in place before an entry that drops it.
                self.flush_if_unflushed()?;
                let flushed = self.file_len / MIB * MIB;
                let last = self.file_len.next_multiple_of(MIB);
                let (pos, entry) = journal.next_entry(batch, flushed, last);
                self.write_raw(&entry, self.header.log_offset + pos)?;
                self.flush_raw()?;
                // The first header of a metadata-only open also carries its
                // new FileWriteGuid.
                if self.header.log_guid != journal.log_guid || !self.pending.file_guid_renewed {
                    let g = journal.log_guid;
                    self.update_header_of_change(|h| h.log_guid = g)?;
                }
                for &(at, page) in batch {
                    self.write_raw(page, at)?;
                }
            }
            Ok(())
        })();
        self.pending.journal = Some(journal);
        if result.is_err() {
            // Keep the pages so reads stay consistent; a later commit retries.
            self.pending.pages = pages;
        }
        result
    }

    /// Commits, flushes, then marks the log empty (LogGuid cleared in the
    /// header; the older slot may still name the log, but a reader takes
    /// the newer one, and the next header update of any open overwrites
    /// it). A file closed this way opens without replay.
    pub fn close(&mut self) -> Result<()> {
        if !self.writable {
            return Ok(());
        }
        self.commit()?;
        if !self.header.log_guid.is_nil() {
            self.update_header(|h| h.log_guid = Uuid::nil())?;
        }
        self.pending.journal = None;
        Ok(())
    }
}

impl VhdxFile {
    /// Ends this open without committing what is pending, as a crash at
    /// this point would: the file keeps its last committed state (a reopen
    /// replays the log of earlier commits where it is still named). For a
    /// caller whose operation failed half-way, when what is pending must
    /// not become the file's state: mappings of [`VhdxFile::map_write`]
    /// whose bytes were never written. (Dropping a writable open commits.)
    pub fn abandon(mut self) {
        self.pending = Pending::default();
        self.writable = false;
    }
}

impl Drop for VhdxFile {
    fn drop(&mut self) {
        if self.writable && (self.has_pending_changes() || !self.header.log_guid.is_nil()) {
            let _ = self.close();
        }
    }
}
