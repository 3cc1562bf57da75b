//! Metadata region (MS-VHDX 2.6): a 64 KiB table of items, then the items.

use super::{guid_at, le_u16, le_u32, le_u64, put_guid, Malformed, KIB64, MIB};
use uuid::Uuid;

pub const SIGNATURE: &[u8; 8] = b"metadata";
pub const TABLE_SIZE: usize = KIB64 as usize;
pub const MAX_ENTRIES: u16 = 2047;
/// Largest item (2.6.1.2).
pub const MAX_ITEM_LENGTH: u32 = MIB as u32;

/// One metadata table entry (2.6.1.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataEntry {
    pub item_id: Uuid,
    /// Offset of the item from the start of the metadata region.
    pub offset: u32,
    pub length: u32,
    pub is_user: bool,
    pub is_virtual_disk: bool,
    pub is_required: bool,
}

impl MetadataEntry {
    fn flags(&self) -> u32 {
        self.is_user as u32 | (self.is_virtual_disk as u32) << 1 | (self.is_required as u32) << 2
    }
}

/// Decodes the metadata table header and entries (2.6.1.1, 2.6.1.2).
pub fn parse_table(b: &[u8]) -> Result<Vec<MetadataEntry>, Malformed> {
    if b.len() < TABLE_SIZE {
        return Err(Malformed::new(0, "metadata table is truncated"));
    }
    if &b[..8] != SIGNATURE {
        return Err(Malformed::new(0, "signature is not \"metadata\""));
    }
    let count = le_u16(b, 10);
    if count > MAX_ENTRIES {
        return Err(Malformed::new(
            10,
            format!("entry count {count} exceeds {MAX_ENTRIES}"),
        ));
    }
    Ok((0..count as usize)
        .map(|i| {
            let at = 32 + i * 32;
            let flags = le_u32(b, at + 24);
            MetadataEntry {
                item_id: guid_at(b, at),
                offset: le_u32(b, at + 16),
                length: le_u32(b, at + 20),
                is_user: flags & 1 != 0,
                is_virtual_disk: flags & 2 != 0,
                is_required: flags & 4 != 0,
            }
        })
        .collect())
}

/// Serializes a metadata table (64 KiB).
pub fn table_to_bytes(entries: &[MetadataEntry]) -> Vec<u8> {
    let mut b = vec![0u8; TABLE_SIZE];
    b[..8].copy_from_slice(SIGNATURE);
    b[10..12].copy_from_slice(&(entries.len() as u16).to_le_bytes());
    for (i, e) in entries.iter().enumerate() {
        let at = 32 + i * 32;
        put_guid(&mut b, at, &e.item_id);
        b[at + 16..at + 20].copy_from_slice(&e.offset.to_le_bytes());
        b[at + 20..at + 24].copy_from_slice(&e.length.to_le_bytes());
        b[at + 24..at + 28].copy_from_slice(&e.flags().to_le_bytes());
    }
    b
}

/// File parameters item (2.6.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileParameters {
    pub block_size: u32,
    pub leave_block_allocated: bool,
    pub has_parent: bool,
}

impl FileParameters {
    pub fn parse(b: &[u8]) -> Result<Self, Malformed> {
        if b.len() < 8 {
            return Err(Malformed::new(
                0,
                "file parameters item is shorter than 8 bytes",
            ));
        }
        let block_size = le_u32(b, 0);
        if !(MIB as u32..=256 * MIB as u32).contains(&block_size) || !block_size.is_power_of_two() {
            return Err(Malformed::new(
                0,
                format!("block size {block_size:#x} is not a power of two from 1 MiB to 256 MiB"),
            ));
        }
        let flags = le_u32(b, 4);
        Ok(FileParameters {
            block_size,
            leave_block_allocated: flags & 1 != 0,
            has_parent: flags & 2 != 0,
        })
    }

    pub fn to_bytes(&self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&self.block_size.to_le_bytes());
        let flags = self.leave_block_allocated as u32 | (self.has_parent as u32) << 1;
        b[4..].copy_from_slice(&flags.to_le_bytes());
        b
    }
}

pub fn parse_u64_item(b: &[u8], name: &str) -> Result<u64, Malformed> {
    if b.len() < 8 {
        return Err(Malformed::new(
            0,
            format!("{name} item is shorter than 8 bytes"),
        ));
    }
    Ok(le_u64(b, 0))
}

pub fn parse_sector_size(b: &[u8], name: &str) -> Result<u32, Malformed> {
    if b.len() < 4 {
        return Err(Malformed::new(
            0,
            format!("{name} item is shorter than 4 bytes"),
        ));
    }
    match le_u32(b, 0) {
        v @ (512 | 4096) => Ok(v),
        v => Err(Malformed::new(
            0,
            format!("{name} {v} is neither 512 nor 4096"),
        )),
    }
}

pub fn parse_guid_item(b: &[u8], name: &str) -> Result<Uuid, Malformed> {
    if b.len() < 16 {
        return Err(Malformed::new(
            0,
            format!("{name} item is shorter than 16 bytes"),
        ));
    }
    Ok(guid_at(b, 0))
}
