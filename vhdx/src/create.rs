//! Creating a new VHDX or AVHDX file in one pass, with the layout Hyper-V
//! uses (log at 1 MiB, metadata at 2 MiB, BAT at 3 MiB, payload after) and
//! the given block contents. The file is not usable until this returns.

use crate::bat::Geometry;
use crate::error::{Error, Result};
use crate::format::bat_entry::{self, PayloadState};
use crate::format::file_id::FileIdentifier;
use crate::format::header::Header;
use crate::format::locator::ParentLocator;
use crate::format::metadata::{self as md, FileParameters, MetadataEntry};
use crate::format::region::{RegionEntry, RegionTable};
use crate::format::{
    guids, HEADER1_OFFSET, HEADER2_OFFSET, MAX_VIRTUAL_SIZE, MIB, REGION1_OFFSET, REGION2_OFFSET,
};
use crate::sector_bitmap;
use crate::storage::Storage;
use std::collections::BTreeMap;
use uuid::Uuid;

const LOG_OFFSET: u64 = MIB;
const LOG_LENGTH: u32 = MIB as u32;
const METADATA_OFFSET: u64 = 2 * MIB;
const BAT_OFFSET: u64 = 3 * MIB;

/// The parent of a differencing disk, as its locator will name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentLink {
    /// The parent's DataWriteGuid (written as `parent_linkage`).
    pub data_write_guid: Uuid,
    /// Further locator keys (`relative_path`, `volume_path`, `absolute_win32_path`).
    pub paths: Vec<(String, String)>,
}

impl ParentLink {
    /// A link by relative path only.
    pub fn relative(data_write_guid: Uuid, relative_path: &str) -> Self {
        ParentLink {
            data_write_guid,
            paths: vec![("relative_path".into(), relative_path.into())],
        }
    }

    pub fn locator(&self) -> ParentLocator {
        let mut entries = vec![(
            "parent_linkage".to_string(),
            format!("{{{}}}", self.data_write_guid),
        )];
        entries.extend(self.paths.iter().cloned());
        ParentLocator {
            locator_type: guids::LOCATOR_TYPE_VHDX,
            entries,
        }
    }
}

/// Parameters of a new file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateParams {
    pub virtual_size: u64,
    pub block_size: u32,
    pub logical_sector_size: u32,
    pub physical_sector_size: u32,
    /// Allocate every block (LeaveBlockAllocated).
    pub fixed: bool,
    pub parent: Option<ParentLink>,
    pub creator: String,
    pub virtual_disk_id: Uuid,
    pub data_write_guid: Uuid,
}

impl CreateParams {
    /// A dynamic disk with Hyper-V's defaults (32 MiB blocks, 512/4096 sectors).
    pub fn dynamic(virtual_size: u64) -> Self {
        CreateParams {
            virtual_size,
            block_size: 32 << 20,
            logical_sector_size: 512,
            physical_sector_size: 4096,
            fixed: false,
            parent: None,
            creator: format!("hvkit {}", env!("CARGO_PKG_VERSION")),
            virtual_disk_id: Uuid::new_v4(),
            data_write_guid: Uuid::new_v4(),
        }
    }

    /// A differencing disk with Hyper-V's defaults (2 MiB blocks).
    pub fn differencing(virtual_size: u64, parent: ParentLink) -> Self {
        CreateParams {
            block_size: 2 << 20,
            parent: Some(parent),
            ..Self::dynamic(virtual_size)
        }
    }
}

/// What one payload block holds in a new file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockContent {
    NotPresent,
    Undefined,
    Zero,
    Unmapped,
    /// The block's bytes (shorter than a block: the rest is zero).
    Full(Vec<u8>),
    /// Bytes of a differencing block and which sectors are present.
    Partial {
        data: Vec<u8>,
        present: Vec<bool>,
    },
}

/// Writes a new file into `storage` (which should be empty) holding
/// `blocks` (payload block index → content; blocks not listed are
/// NOT_PRESENT, or allocated zeros in a fixed disk).
pub fn create(
    storage: &dyn Storage,
    name: &str,
    p: &CreateParams,
    blocks: &BTreeMap<u64, BlockContent>,
) -> Result<()> {
    let bad = |m: String| Error::unsupported(name, m);
    if !(MIB as u32..=256 << 20).contains(&p.block_size) || !p.block_size.is_power_of_two() {
        return Err(bad(format!(
            "block size {} must be a power of two from 1 MiB to 256 MiB",
            p.block_size
        )));
    }
    for s in [p.logical_sector_size, p.physical_sector_size] {
        if s != 512 && s != 4096 {
            return Err(bad(format!("sector size {s} must be 512 or 4096")));
        }
    }
    let lss = p.logical_sector_size as u64;
    if p.virtual_size == 0
        || !p.virtual_size.is_multiple_of(lss)
        || p.virtual_size > MAX_VIRTUAL_SIZE
    {
        return Err(bad(format!(
            "virtual size {} must be a non-zero multiple of {lss} up to 64 TiB",
            p.virtual_size
        )));
    }
    let g = Geometry::new(p.virtual_size, p.block_size as u64, lss, p.parent.is_some());
    if let Some((&b, _)) = blocks.range(g.payload_blocks..).next() {
        return Err(bad(format!("block {b} lies past the end of the disk")));
    }
    let w = |buf: &[u8], off: u64| {
        storage
            .write_at(buf, off)
            .map_err(|e| Error::io(name, off, e))
    };

    let bat_len = (g.bat_entries() * 8).next_multiple_of(MIB).max(MIB);
    let mut next = BAT_OFFSET + bat_len;
    let mut bat = vec![0u64; g.bat_entries() as usize];
    let mut bitmaps: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let spb = g.sectors_per_block();
    for b in 0..g.payload_blocks {
        let default = if p.fixed {
            BlockContent::Full(Vec::new())
        } else {
            BlockContent::NotPresent
        };
        let content = blocks.get(&b).unwrap_or(&default);
        let (state, data) = match content {
            BlockContent::NotPresent => (PayloadState::NotPresent, None),
            BlockContent::Undefined => (PayloadState::Undefined, None),
            BlockContent::Zero => (PayloadState::Zero, None),
            BlockContent::Unmapped => (PayloadState::Unmapped, None),
            BlockContent::Full(d) => (PayloadState::FullyPresent, Some(d)),
            BlockContent::Partial { data, present } => {
                if p.parent.is_none() {
                    return Err(bad(format!("block {b}: partial blocks need a parent")));
                }
                let chunk = b / g.chunk_ratio;
                let bits = bitmaps
                    .entry(chunk)
                    .or_insert_with(|| vec![0u8; MIB as usize]);
                let first = (b % g.chunk_ratio) * spb;
                for (s, &on) in present.iter().enumerate().take(spb as usize) {
                    sector_bitmap::set_bit(bits, first + s as u64, on);
                }
                (PayloadState::PartiallyPresent, Some(data))
            }
        };
        let mut entry = bat_entry::make(state.bits(), 0);
        if let Some(d) = data {
            entry = bat_entry::make(state.bits(), next);
            let d = &d[..d.len().min(g.block_size as usize)];
            match content {
                BlockContent::Partial { present, .. } => {
                    // Only present sectors carry data; absent ones stay zero.
                    for (s, &on) in present.iter().enumerate().take(spb as usize) {
                        let (a, z) = (s * lss as usize, (s + 1) * lss as usize);
                        if on && a < d.len() {
                            w(&d[a..z.min(d.len())], next + a as u64)?;
                        }
                    }
                }
                _ if d.iter().any(|&x| x != 0) => w(d, next)?,
                _ => {}
            }
            next += g.block_size;
        }
        bat[g.payload_entry(b)] = entry;
    }
    for (chunk, bits) in &bitmaps {
        bat[g.bitmap_entry(*chunk)] = bat_entry::make(bat_entry::SB_BLOCK_PRESENT, next);
        w(bits, next)?;
        next += MIB;
    }
    storage
        .set_len(next)
        .map_err(|e| Error::io(name, next, e))?;

    let bat_bytes: Vec<u8> = bat.iter().flat_map(|e| e.to_le_bytes()).collect();
    w(&bat_bytes, BAT_OFFSET)?;
    w(&metadata_region(p, &g), METADATA_OFFSET)?;
    let regions = RegionTable {
        entries: vec![
            RegionEntry {
                guid: guids::BAT_REGION,
                file_offset: BAT_OFFSET,
                length: bat_len as u32,
                required: true,
            },
            RegionEntry {
                guid: guids::METADATA_REGION,
                file_offset: METADATA_OFFSET,
                length: MIB as u32,
                required: true,
            },
        ],
    }
    .to_bytes();
    w(&regions, REGION1_OFFSET)?;
    w(&regions, REGION2_OFFSET)?;
    let file_write_guid = Uuid::new_v4();
    for (seq, off) in [(1u64, HEADER1_OFFSET), (2, HEADER2_OFFSET)] {
        let h = Header {
            sequence_number: seq,
            file_write_guid,
            data_write_guid: p.data_write_guid,
            log_guid: Uuid::nil(),
            log_version: 0,
            version: 1,
            log_length: LOG_LENGTH,
            log_offset: LOG_OFFSET,
        };
        w(&h.to_bytes(), off)?;
    }
    w(
        &FileIdentifier {
            creator: p.creator.clone(),
        }
        .to_bytes(),
        0,
    )?;
    storage.flush().map_err(|e| Error::io(name, 0, e))
}

/// The metadata region as Windows lays it out: table, then items packed
/// from 64 KiB (file parameters, size, sector sizes, disk id, locator).
fn metadata_region(p: &CreateParams, g: &Geometry) -> Vec<u8> {
    let fp = FileParameters {
        block_size: p.block_size,
        leave_block_allocated: p.fixed,
        has_parent: g.has_parent,
    };
    let mut items: Vec<(uuid::Uuid, Vec<u8>, bool)> = vec![
        (guids::FILE_PARAMETERS, fp.to_bytes().to_vec(), false),
        (
            guids::VIRTUAL_DISK_SIZE,
            p.virtual_size.to_le_bytes().to_vec(),
            true,
        ),
        (
            guids::LOGICAL_SECTOR_SIZE,
            p.logical_sector_size.to_le_bytes().to_vec(),
            true,
        ),
        (
            guids::PHYSICAL_SECTOR_SIZE,
            p.physical_sector_size.to_le_bytes().to_vec(),
            true,
        ),
        (
            guids::VIRTUAL_DISK_ID,
            p.virtual_disk_id.to_bytes_le().to_vec(),
            true,
        ),
    ];
    if let Some(link) = &p.parent {
        items.push((guids::PARENT_LOCATOR, link.locator().to_bytes(), false));
    }
    let mut region = vec![0u8; MIB as usize];
    let mut entries = Vec::new();
    let mut at = md::TABLE_SIZE;
    for (id, bytes, vd) in items {
        region[at..at + bytes.len()].copy_from_slice(&bytes);
        entries.push(MetadataEntry {
            item_id: id,
            offset: at as u32,
            length: bytes.len() as u32,
            is_user: false,
            is_virtual_disk: vd,
            is_required: true,
        });
        at += bytes.len();
    }
    region[..md::TABLE_SIZE].copy_from_slice(&md::table_to_bytes(&entries));
    region
}
