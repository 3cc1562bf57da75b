//! Region table (MS-VHDX 2.2.3): 64 KiB, CRC-32C over all of it.

use super::{crc32c_with_zeroed_field, guid_at, le_u32, le_u64, put_guid, Malformed, KIB64};
use uuid::Uuid;

pub const SIGNATURE: &[u8; 4] = b"regi";
pub const SIZE: usize = KIB64 as usize;
pub const MAX_ENTRIES: u32 = 2047;

/// One region table entry (2.2.3.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionEntry {
    pub guid: Uuid,
    pub file_offset: u64,
    pub length: u32,
    pub required: bool,
}

/// A decoded region table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionTable {
    pub entries: Vec<RegionEntry>,
}

impl RegionTable {
    pub fn parse(b: &[u8]) -> Result<Self, Malformed> {
        if b.len() < SIZE {
            return Err(Malformed::new(0, "region table is truncated"));
        }
        let b = &b[..SIZE];
        if &b[..4] != SIGNATURE {
            return Err(Malformed::new(0, "signature is not \"regi\""));
        }
        let stored = le_u32(b, 4);
        let computed = crc32c_with_zeroed_field(b, 4);
        if stored != computed {
            return Err(Malformed::new(
                4,
                format!("checksum {stored:#010x} does not match computed {computed:#010x}"),
            ));
        }
        let count = le_u32(b, 8);
        if count > MAX_ENTRIES {
            return Err(Malformed::new(
                8,
                format!("entry count {count} exceeds {MAX_ENTRIES}"),
            ));
        }
        let entries = (0..count as usize)
            .map(|i| {
                let at = 16 + i * 32;
                RegionEntry {
                    guid: guid_at(b, at),
                    file_offset: le_u64(b, at + 16),
                    length: le_u32(b, at + 24),
                    required: le_u32(b, at + 28) & 1 != 0,
                }
            })
            .collect();
        Ok(RegionTable { entries })
    }

    pub fn find(&self, guid: &Uuid) -> Option<&RegionEntry> {
        self.entries.iter().find(|e| &e.guid == guid)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; SIZE];
        b[..4].copy_from_slice(SIGNATURE);
        b[8..12].copy_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for (i, e) in self.entries.iter().enumerate() {
            let at = 16 + i * 32;
            put_guid(&mut b, at, &e.guid);
            b[at + 16..at + 24].copy_from_slice(&e.file_offset.to_le_bytes());
            b[at + 24..at + 28].copy_from_slice(&e.length.to_le_bytes());
            b[at + 28..at + 32].copy_from_slice(&(e.required as u32).to_le_bytes());
        }
        let crc = crc32c::crc32c(&b);
        b[4..8].copy_from_slice(&crc.to_le_bytes());
        b
    }
}
