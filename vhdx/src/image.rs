//! One VHDX or AVHDX file: open (headers, log replay, region table, metadata,
//! BAT), validation, and block-level reads that report runs.

use crate::bat::{BatStats, Geometry};
use crate::error::{Error, Result};
use crate::format::bat_entry::{self, PayloadState};
use crate::format::file_id::{self, FileIdentifier};
use crate::format::header::{self, Header};
use crate::format::locator::ParentLocator;
use crate::format::metadata::{self as md, FileParameters, MetadataEntry};
use crate::format::region::{self, RegionEntry, RegionTable};
use crate::format::{
    guids, HEADER1_OFFSET, HEADER2_OFFSET, HEADER_SECTION_SIZE, MAX_VIRTUAL_SIZE, MIB,
};
use crate::format::{REGION1_OFFSET, REGION2_OFFSET, SECTOR_BITMAP_BLOCK_SIZE};
use crate::log_replay::{self, ReplayOp, ReplayPlan};
use crate::overlay::Overlay;
use crate::sector_bitmap;
use crate::storage::Storage;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use uuid::Uuid;

/// How to open a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenOptions {
    /// Open for writing. A pending log is replayed to disk.
    pub write: bool,
    /// On a read-only open, replay a pending log in memory (the default);
    /// when false a pending log is an error.
    pub replay_in_memory: bool,
    /// Collect structural problems instead of failing on the first
    /// (for `check`); reads of damaged areas may then fail.
    pub lenient: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            write: false,
            replay_in_memory: true,
            lenient: false,
        }
    }
}

impl OpenOptions {
    pub fn read_only() -> Self {
        Self::default()
    }
    pub fn writable() -> Self {
        OpenOptions {
            write: true,
            ..Self::default()
        }
    }
}

/// How bad a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Tolerated (a damaged redundant copy, a stale field).
    Warning,
    /// The file is corrupt.
    Error,
}

/// A structural problem found while opening.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub severity: Severity,
    /// Which structure.
    pub what: &'static str,
    /// File offset of the problem.
    pub offset: u64,
    pub message: String,
}

/// State of the log when the file was opened.
#[derive(Debug, Clone)]
pub enum LogStatus {
    /// LogGuid was zero: nothing to replay.
    Clean,
    /// The log was replayed into memory; the file is unchanged.
    ReplayedInMemory(ReplayPlan),
    /// The log was replayed into the file.
    ReplayedOnDisk(ReplayPlan),
}

impl LogStatus {
    pub fn needs_replay(&self) -> bool {
        matches!(self, LogStatus::ReplayedInMemory(_))
    }
}

/// The metadata items of a file (MS-VHDX 2.6.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    pub file_parameters: FileParameters,
    pub virtual_size: u64,
    pub virtual_disk_id: Uuid,
    pub logical_sector_size: u32,
    pub physical_sector_size: u32,
    pub parent_locator: Option<ParentLocator>,
    /// The metadata table as stored.
    pub entries: Vec<MetadataEntry>,
}

/// A run of guest-visible bytes, as reported by the range API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Run {
    /// `len` bytes stored at `offset` in layer `file` of the chain (0 = the
    /// file itself, or the leaf of a chain).
    Data { file: usize, offset: u64, len: u64 },
    /// `len` bytes that read as zeros.
    Zero { len: u64 },
    /// `len` bytes to be read from the parent.
    Parent { len: u64 },
}

impl Run {
    pub fn len(&self) -> u64 {
        match *self {
            Run::Data { len, .. } | Run::Zero { len } | Run::Parent { len } => len,
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Merges `next` into `self` when it continues it.
    fn absorb(&mut self, next: &Run) -> bool {
        match (self, next) {
            (
                Run::Data { file, offset, len },
                Run::Data {
                    file: f2,
                    offset: o2,
                    len: l2,
                },
            ) if *file == *f2 && *offset + *len == *o2 => {
                *len += l2;
                true
            }
            (Run::Zero { len }, Run::Zero { len: l2 })
            | (Run::Parent { len }, Run::Parent { len: l2 }) => {
                *len += l2;
                true
            }
            _ => false,
        }
    }
}

/// Calls `f` with maximal runs: adjacent pieces that continue each other are
/// merged before `f` sees them.
pub(crate) struct RunCoalescer<'a> {
    pending: Option<Run>,
    f: &'a mut dyn FnMut(Run) -> Result<()>,
}

impl<'a> RunCoalescer<'a> {
    pub(crate) fn new(f: &'a mut dyn FnMut(Run) -> Result<()>) -> Self {
        RunCoalescer { pending: None, f }
    }
    pub(crate) fn push(&mut self, run: Run) -> Result<()> {
        if run.is_empty() {
            return Ok(());
        }
        if let Some(p) = &mut self.pending {
            if p.absorb(&run) {
                return Ok(());
            }
            let done = std::mem::replace(p, run);
            return (self.f)(done);
        }
        self.pending = Some(run);
        Ok(())
    }
    pub(crate) fn finish(mut self) -> Result<()> {
        match self.pending.take() {
            Some(p) => (self.f)(p),
            None => Ok(()),
        }
    }
}

/// An open VHDX file.
pub struct VhdxFile {
    pub(crate) path: String,
    pub(crate) storage: Box<dyn Storage>,
    overlay: Overlay,
    /// Length of the file as this open sees it (after any replay).
    pub(crate) file_len: u64,
    pub(crate) writable: bool,
    creator: String,
    pub(crate) header: Header,
    header_slot: usize,
    pub(crate) region_table: RegionTable,
    pub(crate) bat_region: RegionEntry,
    pub(crate) metadata_region: RegionEntry,
    pub(crate) metadata: Metadata,
    pub(crate) geometry: Geometry,
    pub(crate) bat: Vec<u64>,
    log: LogStatus,
    problems: Vec<Problem>,
    pub(crate) bitmap_cache: Mutex<Option<(u64, Arc<[u8]>)>>,
    /// Changes not yet committed through the log (writable opens).
    pub(crate) pending: crate::write::Pending,
    /// Writes or size changes made since the last flush.
    unflushed: AtomicBool,
}

impl std::fmt::Debug for VhdxFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhdxFile")
            .field("path", &self.path)
            .field("virtual_size", &self.metadata.virtual_size)
            .field("block_size", &self.geometry.block_size)
            .field("has_parent", &self.geometry.has_parent)
            .finish_non_exhaustive()
    }
}

/// Collects problems; in strict mode the first error aborts.
struct Findings {
    lenient: bool,
    path: String,
    list: Vec<Problem>,
}

impl Findings {
    fn add(
        &mut self,
        severity: Severity,
        what: &'static str,
        offset: u64,
        message: impl Into<String>,
    ) -> Result<()> {
        let message = message.into();
        if severity == Severity::Error && !self.lenient {
            return Err(Error::corrupt(&self.path, what, offset, message));
        }
        self.list.push(Problem {
            severity,
            what,
            offset,
            message,
        });
        Ok(())
    }
}

impl VhdxFile {
    /// Opens the file at `path`.
    pub fn open_path(path: impl AsRef<std::path::Path>, opts: OpenOptions) -> Result<Self> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(opts.write)
            .open(path)
            .map_err(|e| Error::open(&name, e))?;
        Self::open(Box::new(file), &name, opts)
    }

    /// Opens a file held by `storage`; `path` names it in errors.
    pub fn open(storage: Box<dyn Storage>, path: &str, opts: OpenOptions) -> Result<Self> {
        let mut findings = Findings {
            lenient: opts.lenient,
            path: path.to_string(),
            list: Vec::new(),
        };
        let disk_len = storage.len().map_err(|e| Error::io(path, 0, e))?;
        if disk_len < REGION2_OFFSET + region::SIZE as u64 {
            return Err(Error::corrupt(
                path,
                "file",
                0,
                format!(
                    "the file is {disk_len} bytes, too short for the 1 MiB VHDX header section"
                ),
            ));
        }
        let mut ident = vec![0u8; file_id::SIZE];
        read_exact(&*storage, path, &mut ident, 0)?;
        let creator = FileIdentifier::parse(&ident)
            .map_err(|m| Error::corrupt(path, "file identifier", m.offset, m.reason))?
            .creator;

        let (header, header_slot) = choose_header(&*storage, path, &mut findings)?;

        let mut file = VhdxFile {
            path: path.to_string(),
            storage,
            overlay: Overlay::default(),
            file_len: disk_len,
            writable: opts.write,
            creator,
            header,
            header_slot,
            region_table: RegionTable { entries: vec![] },
            bat_region: placeholder_region(),
            metadata_region: placeholder_region(),
            metadata: Metadata {
                file_parameters: FileParameters {
                    block_size: MIB as u32,
                    leave_block_allocated: false,
                    has_parent: false,
                },
                virtual_size: 0,
                virtual_disk_id: Uuid::nil(),
                logical_sector_size: 512,
                physical_sector_size: 512,
                parent_locator: None,
                entries: vec![],
            },
            geometry: Geometry::new(0, MIB, 512, false),
            bat: vec![],
            log: LogStatus::Clean,
            problems: vec![],
            bitmap_cache: Mutex::new(None),
            pending: Default::default(),
            unflushed: AtomicBool::new(false),
        };
        file.open_log(opts)?;
        file.load_region_table(&mut findings)?;
        file.load_metadata(&mut findings)?;
        file.load_bat(&mut findings)?;
        file.problems = findings.list;
        Ok(file)
    }

    fn open_log(&mut self, opts: OpenOptions) -> Result<()> {
        let h = &self.header;
        if h.log_guid.is_nil() {
            return Ok(());
        }
        if h.log_version != 0 {
            return Err(Error::unsupported(
                &self.path,
                format!("log version {} (only 0 is defined)", h.log_version),
            ));
        }
        let log_end = h.log_offset.saturating_add(h.log_length as u64);
        if log_end > self.file_len {
            return Err(Error::corrupt(
                &self.path,
                "header",
                self.header_offset() + 68,
                format!(
                    "log region {:#x}..{:#x} lies past the end of the file ({:#x})",
                    h.log_offset, log_end, self.file_len
                ),
            ));
        }
        if !opts.write && !opts.replay_in_memory {
            return Err(Error::LogNeedsReplay {
                path: self.path.clone(),
                log_guid: h.log_guid,
            });
        }
        let plan = log_replay::plan(
            &*self.storage,
            &self.path,
            h.log_offset,
            h.log_length as u64,
            h.log_guid,
            self.file_len,
        )?;
        if opts.write {
            self.replay_to_disk(&plan)?;
            self.log = LogStatus::ReplayedOnDisk(plan);
        } else {
            for op in &plan.ops {
                match op {
                    ReplayOp::Data { file_offset, bytes } => {
                        self.overlay.put_page(*file_offset, bytes.clone())
                    }
                    ReplayOp::Zero {
                        file_offset,
                        length,
                    } => self.overlay.put_zero(*file_offset, file_offset + length),
                }
            }
            self.file_len = self
                .file_len
                .max(plan.last_file_offset)
                .max(self.overlay.end());
            self.log = LogStatus::ReplayedInMemory(plan);
        }
        Ok(())
    }

    /// Replays into the file (2.3.3): a header update with a new
    /// FileWriteGuid, the writes, a flush, the file extended to
    /// LastFileOffset, a flush, then LogGuid cleared in both header slots.
    fn replay_to_disk(&mut self, plan: &ReplayPlan) -> Result<()> {
        self.update_header(|h| h.file_write_guid = Uuid::new_v4())?;
        let zeros = vec![0u8; MIB as usize];
        for op in &plan.ops {
            match op {
                ReplayOp::Data { file_offset, bytes } => self.write_raw(bytes, *file_offset)?,
                ReplayOp::Zero {
                    file_offset,
                    length,
                } => {
                    let mut done = 0;
                    while done < *length {
                        let n = (*length - done).min(zeros.len() as u64);
                        self.write_raw(&zeros[..n as usize], file_offset + done)?;
                        done += n;
                    }
                }
            }
        }
        self.flush_raw()?;
        let len = self
            .storage
            .len()
            .map_err(|e| Error::io(&self.path, 0, e))?;
        if len < plan.last_file_offset {
            self.storage
                .set_len(plan.last_file_offset)
                .map_err(|e| Error::io(&self.path, plan.last_file_offset, e))?;
            self.flush_raw()?;
        }
        self.file_len = self
            .storage
            .len()
            .map_err(|e| Error::io(&self.path, 0, e))?;
        self.update_header(|h| h.log_guid = Uuid::nil())?;
        self.update_header(|_| {})?;
        Ok(())
    }

    /// Writes the next header (sequence + 1, `change` applied) into the slot
    /// that is not current, then flushes (2.2.2.1).
    pub(crate) fn update_header(&mut self, change: impl FnOnce(&mut Header)) -> Result<()> {
        if !self.writable {
            return Err(Error::ReadOnly {
                path: self.path.clone(),
            });
        }
        // Whatever was written before this header (the current slot, the
        // pages a cleared log no longer covers) is durable before it.
        self.flush_if_unflushed()?;
        let mut h = self.header.clone();
        h.sequence_number = h.sequence_number.wrapping_add(1);
        change(&mut h);
        let slot = 1 - self.header_slot;
        let offset = [HEADER1_OFFSET, HEADER2_OFFSET][slot];
        self.write_raw(&h.to_bytes(), offset)?;
        self.flush_raw()?;
        self.header = h;
        self.header_slot = slot;
        Ok(())
    }

    pub(crate) fn write_raw(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.mark_unflushed();
        self.storage
            .write_at(buf, offset)
            .map_err(|e| Error::io(&self.path, offset, e))
    }

    /// Notes that the file changed (or is about to change, through the
    /// file itself) since the last flush.
    pub(crate) fn mark_unflushed(&self) {
        self.unflushed.store(true, Ordering::Relaxed);
    }

    pub(crate) fn flush_raw(&self) -> Result<()> {
        self.storage
            .flush()
            .map_err(|e| Error::io(&self.path, 0, e))?;
        self.unflushed.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// Flushes when anything was written since the last flush.
    pub(crate) fn flush_if_unflushed(&self) -> Result<()> {
        if self.unflushed.load(Ordering::Relaxed) {
            self.flush_raw()?;
        }
        Ok(())
    }

    fn header_offset(&self) -> u64 {
        [HEADER1_OFFSET, HEADER2_OFFSET][self.header_slot]
    }

    fn load_region_table(&mut self, findings: &mut Findings) -> Result<()> {
        let mut buf = vec![0u8; region::SIZE];
        let mut table = None;
        for (i, off) in [REGION1_OFFSET, REGION2_OFFSET].into_iter().enumerate() {
            self.read_file_at(&mut buf, off)?;
            match RegionTable::parse(&buf) {
                Ok(t) => {
                    table = Some(t);
                    break;
                }
                Err(m) => {
                    let sev = if i == 0 {
                        Severity::Warning
                    } else {
                        Severity::Error
                    };
                    let msg = if i == 0 {
                        format!("{}; using the second copy", m.reason)
                    } else {
                        format!("{}; both region table copies are unusable", m.reason)
                    };
                    if sev == Severity::Error && !findings.lenient {
                        return Err(Error::corrupt(
                            &self.path,
                            "region table",
                            off + m.offset,
                            msg,
                        ));
                    }
                    findings.add(sev, "region table", off + m.offset, msg)?;
                }
            }
        }
        let Some(table) = table else {
            return Err(Error::corrupt(
                &self.path,
                "region table",
                REGION1_OFFSET,
                "no valid region table",
            ));
        };
        let base = REGION1_OFFSET + 16;
        let mut placed: Vec<(u64, u64, String)> = vec![(
            self.header.log_offset,
            // LogOffset is only checked against the file when LogGuid is set.
            self.header
                .log_offset
                .saturating_add(self.header.log_length as u64),
            "the log".into(),
        )];
        for (i, e) in table.entries.iter().enumerate() {
            let at = base + i as u64 * 32;
            let name = match e.guid {
                guids::BAT_REGION => "BAT region".to_string(),
                guids::METADATA_REGION => "metadata region".to_string(),
                g if e.required => {
                    return Err(Error::unsupported(
                        &self.path,
                        format!("required region {g} at {:#x} is unknown", e.file_offset),
                    ))
                }
                g => format!("region {g}"),
            };
            if table.entries[..i].iter().any(|o| o.guid == e.guid) {
                findings.add(
                    Severity::Error,
                    "region table",
                    at,
                    format!("{name} is listed twice"),
                )?;
                continue;
            }
            let end = e.file_offset.saturating_add(e.length as u64);
            if e.file_offset % MIB != 0
                || e.file_offset < HEADER_SECTION_SIZE
                || !(e.length as u64).is_multiple_of(MIB)
                || e.length == 0
            {
                findings.add(
                    Severity::Error,
                    "region table",
                    at,
                    format!(
                        "{name} {:#x}+{:#x} is not a non-empty 1 MiB-aligned range past the header section",
                        e.file_offset, e.length
                    ),
                )?;
            } else if end > self.file_len {
                findings.add(
                    Severity::Error,
                    "region table",
                    at,
                    format!(
                        "{name} {:#x}..{end:#x} lies past the end of the file ({:#x})",
                        e.file_offset, self.file_len
                    ),
                )?;
            }
            if let Some((s, t, other)) = placed
                .iter()
                .find(|(s, t, _)| e.file_offset < *t && *s < end)
            {
                findings.add(
                    Severity::Error,
                    "region table",
                    at,
                    format!(
                        "{name} {:#x}..{end:#x} overlaps {other} {s:#x}..{t:#x}",
                        e.file_offset
                    ),
                )?;
            }
            placed.push((e.file_offset, end, name));
        }
        let find = |g: &Uuid, what: &str| {
            table.find(g).cloned().ok_or_else(|| {
                Error::corrupt(
                    &self.path,
                    "region table",
                    REGION1_OFFSET,
                    format!("no {what} region"),
                )
            })
        };
        self.bat_region = find(&guids::BAT_REGION, "BAT")?;
        self.metadata_region = find(&guids::METADATA_REGION, "metadata")?;
        for r in [&self.bat_region, &self.metadata_region] {
            if r.file_offset.saturating_add(r.length as u64) > self.file_len {
                return Err(Error::corrupt(
                    &self.path,
                    "region table",
                    REGION1_OFFSET,
                    format!(
                        "region {:#x}+{:#x} lies past the end of the file",
                        r.file_offset, r.length
                    ),
                ));
            }
        }
        self.region_table = table;
        Ok(())
    }

    fn load_metadata(&mut self, findings: &mut Findings) -> Result<()> {
        let region = self.metadata_region.clone();
        let what = "metadata";
        if (region.length as usize) < md::TABLE_SIZE {
            return Err(Error::corrupt(
                &self.path,
                what,
                region.file_offset,
                "metadata region is smaller than its table",
            ));
        }
        let mut table = vec![0u8; md::TABLE_SIZE];
        self.read_file_at(&mut table, region.file_offset)?;
        let entries = md::parse_table(&table).map_err(|m| {
            Error::corrupt(&self.path, what, region.file_offset + m.offset, m.reason)
        })?;
        let mut items: Vec<(u64, u64, usize)> = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            let at = region.file_offset + 32 + i as u64 * 32;
            if entries[..i]
                .iter()
                .any(|o| o.item_id == e.item_id && o.is_user == e.is_user)
            {
                findings.add(
                    Severity::Error,
                    what,
                    at,
                    format!("item {} is listed twice", e.item_id),
                )?;
            }
            let known = !e.is_user && guids::metadata_item_name(&e.item_id).is_some();
            if e.is_required && !known {
                return Err(Error::unsupported(
                    &self.path,
                    format!(
                        "required metadata item {} (entry at {at:#x}) is unknown",
                        e.item_id
                    ),
                ));
            }
            if e.length == 0 {
                continue;
            }
            let end = e.offset as u64 + e.length as u64;
            if (e.offset as u64) < md::TABLE_SIZE as u64
                || end > region.length as u64
                || e.length > md::MAX_ITEM_LENGTH
            {
                findings.add(
                    Severity::Error,
                    what,
                    at,
                    format!(
                        "item {} at {:#x}+{:#x} lies outside the item area of the {:#x}-byte region",
                        e.item_id, e.offset, e.length, region.length
                    ),
                )?;
                continue;
            }
            if let Some(&(_, _, j)) = items
                .iter()
                .find(|(s, t, _)| (e.offset as u64) < *t && *s < end)
            {
                findings.add(
                    Severity::Error,
                    what,
                    at,
                    format!("item {} overlaps item {}", e.item_id, entries[j].item_id),
                )?;
            }
            items.push((e.offset as u64, end, i));
        }
        let read_item = |this: &Self, id: &Uuid| -> Result<Option<(Vec<u8>, u64)>> {
            let Some(i) = entries.iter().position(|e| !e.is_user && &e.item_id == id) else {
                return Ok(None);
            };
            let e = &entries[i];
            let off = region.file_offset + e.offset as u64;
            if e.length == 0
                || e.offset as u64 + e.length as u64 > region.length as u64
                || e.length > md::MAX_ITEM_LENGTH
            {
                // Unusable item: blame its table entry (its offset may lie anywhere).
                return Ok(Some((vec![], region.file_offset + 32 + i as u64 * 32)));
            }
            let mut b = vec![0u8; e.length as usize];
            this.read_file_at(&mut b, off)?;
            Ok(Some((b, off)))
        };
        let path = self.path.clone();
        let missing = |name: &str| {
            Error::corrupt(
                &path,
                what,
                region.file_offset,
                format!("required item {name} is missing"),
            )
        };
        let bad = |off: u64, m: crate::format::Malformed| {
            Error::corrupt(&path, what, off + m.offset, m.reason)
        };

        let (b, off) =
            read_item(self, &guids::FILE_PARAMETERS)?.ok_or_else(|| missing("file parameters"))?;
        let file_parameters = FileParameters::parse(&b).map_err(|m| bad(off, m))?;
        let (b, off) = read_item(self, &guids::VIRTUAL_DISK_SIZE)?
            .ok_or_else(|| missing("virtual disk size"))?;
        let virtual_size = md::parse_u64_item(&b, "virtual disk size").map_err(|m| bad(off, m))?;
        let (b, off) = read_item(self, &guids::LOGICAL_SECTOR_SIZE)?
            .ok_or_else(|| missing("logical sector size"))?;
        let logical_sector_size =
            md::parse_sector_size(&b, "logical sector size").map_err(|m| bad(off, m))?;
        let (b, off) = read_item(self, &guids::PHYSICAL_SECTOR_SIZE)?
            .ok_or_else(|| missing("physical sector size"))?;
        let physical_sector_size =
            md::parse_sector_size(&b, "physical sector size").map_err(|m| bad(off, m))?;
        let (b, off) =
            read_item(self, &guids::VIRTUAL_DISK_ID)?.ok_or_else(|| missing("virtual disk id"))?;
        let virtual_disk_id =
            md::parse_guid_item(&b, "virtual disk id").map_err(|m| bad(off, m))?;
        if virtual_size == 0
            || virtual_size % logical_sector_size as u64 != 0
            || virtual_size > MAX_VIRTUAL_SIZE
        {
            return Err(Error::corrupt(
                &path,
                what,
                off,
                format!(
                    "virtual disk size {virtual_size:#x} is not a non-zero multiple of the {logical_sector_size}-byte sector up to 64 TiB"
                ),
            ));
        }
        let parent_locator = if file_parameters.has_parent {
            let (b, off) = read_item(self, &guids::PARENT_LOCATOR)?.ok_or_else(|| {
                missing("parent locator (the file parameters say the disk has a parent)")
            })?;
            let loc = ParentLocator::parse(&b).map_err(|m| bad(off, m))?;
            if loc.locator_type != guids::LOCATOR_TYPE_VHDX {
                return Err(Error::unsupported(
                    &path,
                    format!("parent locator type {}", loc.locator_type),
                ));
            }
            if loc.get("parent_linkage").is_none() {
                findings.add(
                    Severity::Error,
                    what,
                    off,
                    "parent locator has no parent_linkage",
                )?;
            }
            Some(loc)
        } else {
            None
        };
        self.geometry = Geometry::new(
            virtual_size,
            file_parameters.block_size as u64,
            logical_sector_size as u64,
            file_parameters.has_parent,
        );
        self.metadata = Metadata {
            file_parameters,
            virtual_size,
            virtual_disk_id,
            logical_sector_size,
            physical_sector_size,
            parent_locator,
            entries,
        };
        Ok(())
    }

    fn load_bat(&mut self, findings: &mut Findings) -> Result<()> {
        let g = self.geometry;
        let n = g.bat_entries();
        let region = self.bat_region.clone();
        if n * 8 > region.length as u64 {
            return Err(Error::corrupt(
                &self.path,
                "BAT",
                region.file_offset,
                format!(
                    "the BAT region ({:#x} bytes) cannot hold the {n} entries the disk needs",
                    region.length
                ),
            ));
        }
        // The region lies inside the file (checked above), so this is bounded
        // by the file size. After an in-memory replay that size may be the
        // log's LastFileOffset: past the stored bytes only logged pages exist.
        if let LogStatus::ReplayedInMemory(plan) = &self.log {
            let pages = plan
                .ops
                .iter()
                .filter(|op| matches!(op, ReplayOp::Data { .. }))
                .count() as u64;
            let stored = self
                .storage
                .len()
                .map_err(|e| Error::io(&self.path, 0, e))?
                .saturating_add(pages * crate::format::log::SECTOR);
            if region.file_offset.saturating_add(n * 8) > stored {
                return Err(Error::corrupt(
                    &self.path,
                    "BAT",
                    region.file_offset,
                    format!(
                        "the {n}-entry BAT at {:#x} lies past the {stored:#x} bytes stored in the file and its log",
                        region.file_offset
                    ),
                ));
            }
        }
        let mut raw = vec![0u8; (n * 8) as usize];
        self.read_file_at(&mut raw, region.file_offset)?;
        self.bat = raw
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8")))
            .collect();
        self.validate_bat(findings)
    }

    /// Checks states, offsets past EOF and overlaps of every BAT entry.
    fn validate_bat(&self, findings: &mut Findings) -> Result<()> {
        let g = self.geometry;
        let entry_at = |i: usize| self.bat_region.file_offset + i as u64 * 8;
        let mut used: Vec<(u64, u64, String)> =
            vec![(0, HEADER_SECTION_SIZE, "the header section".into())];
        used.push((
            self.header.log_offset,
            self.header
                .log_offset
                .saturating_add(self.header.log_length as u64),
            "the log".into(),
        ));
        for r in &self.region_table.entries {
            used.push((
                r.file_offset,
                r.file_offset.saturating_add(r.length as u64),
                format!("region {}", r.guid),
            ));
        }
        let mut need_bitmap = vec![false; g.chunks as usize];
        for b in 0..g.payload_blocks {
            let i = g.payload_entry(b);
            let e = self.bat[i];
            let Some(state) = PayloadState::from_bits(bat_entry::state_bits(e)) else {
                findings.add(
                    Severity::Error,
                    "BAT",
                    entry_at(i),
                    format!("block {b} has reserved state 4"),
                )?;
                continue;
            };
            if state == PayloadState::PartiallyPresent {
                if !g.has_parent {
                    findings.add(
                        Severity::Error,
                        "BAT",
                        entry_at(i),
                        format!("block {b} is PARTIALLY_PRESENT in a disk without a parent"),
                    )?;
                    continue;
                }
                need_bitmap[(b / g.chunk_ratio) as usize] = true;
            }
            if state.has_data() {
                let off = bat_entry::file_offset(e);
                let len = g.block_len(b).next_multiple_of(g.logical_sector_size);
                self.check_block_placement(
                    findings,
                    entry_at(i),
                    &format!("block {b}"),
                    off,
                    len,
                    &mut used,
                )?;
            }
        }
        if g.has_parent {
            for c in 0..g.chunks {
                let i = g.bitmap_entry(c);
                let e = self.bat[i];
                match bat_entry::state_bits(e) {
                    bat_entry::SB_BLOCK_PRESENT => {
                        let off = bat_entry::file_offset(e);
                        self.check_block_placement(
                            findings,
                            entry_at(i),
                            &format!("sector bitmap of chunk {c}"),
                            off,
                            SECTOR_BITMAP_BLOCK_SIZE,
                            &mut used,
                        )?;
                    }
                    bat_entry::SB_BLOCK_NOT_PRESENT if need_bitmap[c as usize] => {
                        findings.add(
                            Severity::Error,
                            "BAT",
                            entry_at(i),
                            format!(
                                "chunk {c} has PARTIALLY_PRESENT blocks but no sector bitmap block"
                            ),
                        )?;
                    }
                    bat_entry::SB_BLOCK_NOT_PRESENT => {}
                    s => findings.add(
                        Severity::Error,
                        "BAT",
                        entry_at(i),
                        format!("sector bitmap entry of chunk {c} has invalid state {s}"),
                    )?,
                }
            }
        }
        used.sort_by_key(|u| (u.0, u.1));
        for w in used.windows(2) {
            if w[1].0 < w[0].1 {
                findings.add(
                    Severity::Error,
                    "BAT",
                    w[1].0,
                    format!(
                        "{} at {:#x}..{:#x} overlaps {} at {:#x}..{:#x}",
                        w[1].2, w[1].0, w[1].1, w[0].2, w[0].0, w[0].1
                    ),
                )?;
            }
        }
        Ok(())
    }

    fn check_block_placement(
        &self,
        findings: &mut Findings,
        entry: u64,
        name: &str,
        off: u64,
        len: u64,
        used: &mut Vec<(u64, u64, String)>,
    ) -> Result<()> {
        if off < HEADER_SECTION_SIZE {
            return findings.add(
                Severity::Error,
                "BAT",
                entry,
                format!("{name} points at {off:#x}, inside the header section"),
            );
        }
        if off.saturating_add(len) > self.file_len {
            return findings.add(
                Severity::Error,
                "BAT",
                entry,
                format!(
                    "{name} at {off:#x}..{:#x} lies past the end of the file ({:#x}); the file is probably truncated",
                    off.saturating_add(len),
                    self.file_len
                ),
            );
        }
        used.push((off, off + len, name.to_string()));
        Ok(())
    }

    /// Reads file bytes as this open sees them: the file, extended with
    /// zeros to the replayed length, with the replayed log on top.
    pub fn read_file_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.file_len)
            .ok_or_else(|| {
                Error::corrupt(
                    &self.path,
                    "file",
                    offset,
                    format!(
                        "read of {} bytes past the end of the file ({:#x})",
                        buf.len(),
                        self.file_len
                    ),
                )
            })?;
        if self.overlay.is_empty() && self.pending.pages.is_empty() {
            return self
                .storage
                .read_at(buf, offset)
                .map_err(|e| Error::io(&self.path, offset, e));
        }
        let disk_len = self
            .storage
            .len()
            .map_err(|e| Error::io(&self.path, 0, e))?;
        let on_disk = end.min(disk_len).saturating_sub(offset) as usize;
        if on_disk > 0 {
            self.storage
                .read_at(&mut buf[..on_disk], offset)
                .map_err(|e| Error::io(&self.path, offset, e))?;
        }
        buf[on_disk..].fill(0);
        self.overlay.patch(buf, offset);
        self.pending.patch(buf, offset);
        Ok(())
    }

    /// The sector bitmap bits of `block` (a PARTIALLY_PRESENT block).
    pub(crate) fn block_bitmap(&self, block: u64) -> Result<Arc<[u8]>> {
        let mut cache = self.bitmap_cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((b, bits)) = cache.as_ref() {
            if *b == block {
                return Ok(bits.clone());
            }
        }
        let g = self.geometry;
        let chunk = block / g.chunk_ratio;
        let i = g.bitmap_entry(chunk);
        let e = self.bat[i];
        if bat_entry::state_bits(e) != bat_entry::SB_BLOCK_PRESENT {
            return Err(Error::corrupt(
                &self.path,
                "BAT",
                self.bat_region.file_offset + i as u64 * 8,
                format!(
                    "block {block} is PARTIALLY_PRESENT but chunk {chunk} has no sector bitmap"
                ),
            ));
        }
        let mut bits = vec![0u8; (g.sectors_per_block() / 8) as usize];
        self.read_file_at(
            &mut bits,
            bat_entry::file_offset(e) + g.bitmap_byte_offset(block),
        )?;
        let bits: Arc<[u8]> = bits.into();
        *cache = Some((block, bits.clone()));
        Ok(bits)
    }

    /// Reports the runs of guest bytes `offset..offset+len` of this file
    /// alone, in order, coalesced: stored data, zeros, or "ask the parent".
    pub fn for_each_run(
        &self,
        offset: u64,
        len: u64,
        f: &mut dyn FnMut(Run) -> Result<()>,
    ) -> Result<()> {
        let g = self.geometry;
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= g.virtual_size)
            .ok_or(Error::OutOfRange {
                offset,
                len,
                size: g.virtual_size,
            })?;
        let mut out = RunCoalescer::new(f);
        let mut pos = offset;
        while pos < end {
            let block = pos / g.block_size;
            let in_block = pos % g.block_size;
            let n = (g.block_size - in_block).min(end - pos);
            let e = self.bat[g.payload_entry(block)];
            let state = PayloadState::from_bits(bat_entry::state_bits(e));
            // Other states ignore the offset; a lenient open keeps bad ones.
            if state.is_some_and(|s| s.has_data())
                && bat_entry::file_offset(e)
                    .checked_add(g.block_size)
                    .is_none()
            {
                return Err(Error::corrupt(
                    &self.path,
                    "BAT",
                    self.bat_region.file_offset + g.payload_entry(block) as u64 * 8,
                    format!("block {block} points past the largest file offset"),
                ));
            }
            let data_at = bat_entry::file_offset(e).wrapping_add(in_block);
            match state {
                Some(PayloadState::FullyPresent) => out.push(Run::Data {
                    file: 0,
                    offset: data_at,
                    len: n,
                })?,
                Some(PayloadState::PartiallyPresent) if g.has_parent => {
                    let bits = self.block_bitmap(block)?;
                    let lss = g.logical_sector_size;
                    let (mut p, stop) = (in_block, in_block + n);
                    while p < stop {
                        let s = p / lss;
                        let (present, count) = sector_bitmap::run_at(&bits, s, stop.div_ceil(lss));
                        let run_end = ((s + count) * lss).min(stop);
                        let l = run_end - p;
                        out.push(if present {
                            Run::Data {
                                file: 0,
                                offset: bat_entry::file_offset(e) + p,
                                len: l,
                            }
                        } else {
                            Run::Parent { len: l }
                        })?;
                        p = run_end;
                    }
                }
                Some(PayloadState::NotPresent) if g.has_parent => {
                    out.push(Run::Parent { len: n })?
                }
                Some(
                    PayloadState::NotPresent
                    | PayloadState::Undefined
                    | PayloadState::Zero
                    | PayloadState::Unmapped
                    | PayloadState::UnmappedV095,
                ) => out.push(Run::Zero { len: n })?,
                Some(PayloadState::PartiallyPresent) | None => {
                    return Err(Error::corrupt(
                        &self.path,
                        "BAT",
                        self.bat_region.file_offset + g.payload_entry(block) as u64 * 8,
                        format!(
                            "block {block} has invalid state {}",
                            bat_entry::state_bits(e)
                        ),
                    ))
                }
            }
            pos += n;
        }
        out.finish()
    }

    /// Reads guest bytes of this file alone; parent ranges read as zeros.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let mut pos = 0usize;
        self.for_each_run(offset, buf.len() as u64, &mut |run| {
            let dst = &mut buf[pos..pos + run.len() as usize];
            match run {
                Run::Data { offset, .. } => self.read_file_at(dst, offset)?,
                Run::Zero { .. } | Run::Parent { .. } => dst.fill(0),
            }
            pos += dst.len();
            Ok(())
        })
    }

    /// The file under this open when its bytes can be copied directly (no
    /// in-memory log replay on top), for `copy_file_range` and the like.
    pub fn direct_file(&self) -> Option<&std::fs::File> {
        if self.overlay.is_empty() && self.pending.pages.is_empty() {
            self.storage.as_file()
        } else {
            None
        }
    }
    pub fn path(&self) -> &str {
        &self.path
    }
    pub fn storage(&self) -> &dyn Storage {
        &*self.storage
    }
    pub fn creator(&self) -> &str {
        &self.creator
    }
    /// The current header.
    pub fn header(&self) -> &Header {
        &self.header
    }
    /// 0 or 1: which header copy is current.
    pub fn header_slot(&self) -> usize {
        self.header_slot
    }
    pub fn region_table(&self) -> &RegionTable {
        &self.region_table
    }
    pub fn bat_region(&self) -> &RegionEntry {
        &self.bat_region
    }
    pub fn metadata_region(&self) -> &RegionEntry {
        &self.metadata_region
    }
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }
    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }
    pub fn virtual_size(&self) -> u64 {
        self.metadata.virtual_size
    }
    pub fn block_size(&self) -> u64 {
        self.geometry.block_size
    }
    pub fn logical_sector_size(&self) -> u32 {
        self.metadata.logical_sector_size
    }
    pub fn has_parent(&self) -> bool {
        self.geometry.has_parent
    }
    pub fn parent_locator(&self) -> Option<&ParentLocator> {
        self.metadata.parent_locator.as_ref()
    }
    /// Raw BAT entries.
    pub fn bat(&self) -> &[u64] {
        &self.bat
    }
    pub fn bat_stats(&self) -> BatStats {
        BatStats::compute(&self.geometry, &self.bat)
    }
    pub fn log_status(&self) -> &LogStatus {
        &self.log
    }
    /// Problems found while opening (warnings, and errors on a lenient open).
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }
    /// Length of the file as this open sees it.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }
    /// "fixed", "dynamic" or "differencing".
    pub fn disk_type(&self) -> &'static str {
        if self.geometry.has_parent {
            "differencing"
        } else if self.metadata.file_parameters.leave_block_allocated {
            "fixed"
        } else {
            "dynamic"
        }
    }
}

fn placeholder_region() -> RegionEntry {
    RegionEntry {
        guid: Uuid::nil(),
        file_offset: 0,
        length: 0,
        required: false,
    }
}

fn read_exact(storage: &dyn Storage, path: &str, buf: &mut [u8], offset: u64) -> Result<()> {
    storage
        .read_at(buf, offset)
        .map_err(|e| Error::io(path, offset, e))
}

/// Picks the current header (2.2.2): the valid one, or the valid one with the
/// greater sequence number; two byte-identical copies (Disk2VHD) are accepted.
fn choose_header(
    storage: &dyn Storage,
    path: &str,
    findings: &mut Findings,
) -> Result<(Header, usize)> {
    let mut raw = [vec![0u8; header::SIZE], vec![0u8; header::SIZE]];
    let offsets = [HEADER1_OFFSET, HEADER2_OFFSET];
    for (b, &off) in raw.iter_mut().zip(&offsets) {
        read_exact(storage, path, b, off)?;
    }
    let parsed = [Header::parse(&raw[0]), Header::parse(&raw[1])];
    match (&parsed[0], &parsed[1]) {
        (Ok(a), Ok(b)) => {
            if a.sequence_number == b.sequence_number && raw[0] != raw[1] {
                return Err(Error::corrupt(
                    path,
                    "header",
                    HEADER1_OFFSET + 8,
                    format!(
                        "both headers have sequence number {} but differ, so neither is current",
                        a.sequence_number
                    ),
                ));
            }
            Ok(if b.sequence_number > a.sequence_number {
                (b.clone(), 1)
            } else {
                (a.clone(), 0)
            })
        }
        (Ok(a), Err(m)) => {
            findings.add(
                Severity::Warning,
                "header",
                HEADER2_OFFSET + m.offset,
                format!("second header: {}", m.reason),
            )?;
            Ok((a.clone(), 0))
        }
        (Err(m), Ok(b)) => {
            findings.add(
                Severity::Warning,
                "header",
                HEADER1_OFFSET + m.offset,
                format!("first header: {}", m.reason),
            )?;
            Ok((b.clone(), 1))
        }
        (Err(m1), Err(m2)) => Err(Error::corrupt(
            path,
            "header",
            HEADER1_OFFSET + m1.offset,
            format!(
                "no valid header: first: {}; second (at {:#x}): {}",
                m1.reason,
                HEADER2_OFFSET + m2.offset,
                m2.reason
            ),
        )),
    }
}
