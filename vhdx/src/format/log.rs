//! Log entries (MS-VHDX 2.3.1): a 64-byte header, 32-byte descriptors and
//! 4 KiB data sectors, in a ring of 4 KiB sectors.

use super::{guid_at, le_u32, le_u64, put_guid, Malformed};
use uuid::Uuid;

pub const ENTRY_SIGNATURE: &[u8; 4] = b"loge";
pub const ZERO_SIGNATURE: &[u8; 4] = b"zero";
pub const DESC_SIGNATURE: &[u8; 4] = b"desc";
pub const DATA_SIGNATURE: &[u8; 4] = b"data";
pub const SECTOR: u64 = 4096;
pub const HEADER_SIZE: usize = 64;
pub const DESCRIPTOR_SIZE: usize = 32;

/// Log entry header (2.3.1.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryHeader {
    pub checksum: u32,
    pub entry_length: u32,
    pub tail: u32,
    pub sequence_number: u64,
    pub descriptor_count: u32,
    pub log_guid: Uuid,
    pub flushed_file_offset: u64,
    pub last_file_offset: u64,
}

impl EntryHeader {
    pub fn parse(b: &[u8]) -> Result<Self, Malformed> {
        if b.len() < HEADER_SIZE {
            return Err(Malformed::new(0, "log entry header is truncated"));
        }
        if &b[..4] != ENTRY_SIGNATURE {
            return Err(Malformed::new(0, "signature is not \"loge\""));
        }
        let h = EntryHeader {
            checksum: le_u32(b, 4),
            entry_length: le_u32(b, 8),
            tail: le_u32(b, 12),
            sequence_number: le_u64(b, 16),
            descriptor_count: le_u32(b, 24),
            log_guid: guid_at(b, 32),
            flushed_file_offset: le_u64(b, 48),
            last_file_offset: le_u64(b, 56),
        };
        if h.entry_length == 0 || !(h.entry_length as u64).is_multiple_of(SECTOR) {
            return Err(Malformed::new(
                8,
                "entry length is not a non-zero multiple of 4 KiB",
            ));
        }
        if !(h.tail as u64).is_multiple_of(SECTOR) {
            return Err(Malformed::new(12, "tail is not a multiple of 4 KiB"));
        }
        if h.sequence_number == 0 {
            return Err(Malformed::new(16, "sequence number is zero"));
        }
        Ok(h)
    }

    /// Bytes taken by the header and descriptors, rounded to 4 KiB.
    pub fn descriptor_area(descriptor_count: u32) -> u64 {
        (HEADER_SIZE as u64 + DESCRIPTOR_SIZE as u64 * descriptor_count as u64).div_ceil(SECTOR)
            * SECTOR
    }

    pub fn write_to(&self, b: &mut [u8]) {
        b[..4].copy_from_slice(ENTRY_SIGNATURE);
        b[4..8].copy_from_slice(&self.checksum.to_le_bytes());
        b[8..12].copy_from_slice(&self.entry_length.to_le_bytes());
        b[12..16].copy_from_slice(&self.tail.to_le_bytes());
        b[16..24].copy_from_slice(&self.sequence_number.to_le_bytes());
        b[24..28].copy_from_slice(&self.descriptor_count.to_le_bytes());
        b[28..32].fill(0);
        put_guid(b, 32, &self.log_guid);
        b[48..56].copy_from_slice(&self.flushed_file_offset.to_le_bytes());
        b[56..64].copy_from_slice(&self.last_file_offset.to_le_bytes());
    }
}

/// A zero or data descriptor (2.3.1.2, 2.3.1.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Descriptor {
    Zero {
        length: u64,
        file_offset: u64,
        sequence_number: u64,
    },
    Data {
        trailing_bytes: [u8; 4],
        leading_bytes: [u8; 8],
        file_offset: u64,
        sequence_number: u64,
    },
}

impl Descriptor {
    pub fn parse(b: &[u8]) -> Result<Self, Malformed> {
        if b.len() < DESCRIPTOR_SIZE {
            return Err(Malformed::new(0, "descriptor is truncated"));
        }
        let file_offset = le_u64(b, 16);
        let sequence_number = le_u64(b, 24);
        if !file_offset.is_multiple_of(SECTOR) {
            return Err(Malformed::new(
                16,
                "descriptor file offset is not a multiple of 4 KiB",
            ));
        }
        match &b[..4] {
            s if s == ZERO_SIGNATURE => {
                let length = le_u64(b, 8);
                if length == 0 || !length.is_multiple_of(SECTOR) {
                    return Err(Malformed::new(
                        8,
                        "zero length is not a non-zero multiple of 4 KiB",
                    ));
                }
                Ok(Descriptor::Zero {
                    length,
                    file_offset,
                    sequence_number,
                })
            }
            s if s == DESC_SIGNATURE => Ok(Descriptor::Data {
                trailing_bytes: b[4..8].try_into().expect("4"),
                leading_bytes: b[8..16].try_into().expect("8"),
                file_offset,
                sequence_number,
            }),
            _ => Err(Malformed::new(
                0,
                "descriptor signature is neither \"zero\" nor \"desc\"",
            )),
        }
    }

    pub fn sequence_number(&self) -> u64 {
        match self {
            Descriptor::Zero {
                sequence_number, ..
            }
            | Descriptor::Data {
                sequence_number, ..
            } => *sequence_number,
        }
    }

    pub fn write_to(&self, b: &mut [u8]) {
        match self {
            Descriptor::Zero {
                length,
                file_offset,
                sequence_number,
            } => {
                b[..4].copy_from_slice(ZERO_SIGNATURE);
                b[4..8].fill(0);
                b[8..16].copy_from_slice(&length.to_le_bytes());
                b[16..24].copy_from_slice(&file_offset.to_le_bytes());
                b[24..32].copy_from_slice(&sequence_number.to_le_bytes());
            }
            Descriptor::Data {
                trailing_bytes,
                leading_bytes,
                file_offset,
                sequence_number,
            } => {
                b[..4].copy_from_slice(DESC_SIGNATURE);
                b[4..8].copy_from_slice(trailing_bytes);
                b[8..16].copy_from_slice(leading_bytes);
                b[16..24].copy_from_slice(&file_offset.to_le_bytes());
                b[24..32].copy_from_slice(&sequence_number.to_le_bytes());
            }
        }
    }
}

/// Checks a data sector (2.3.1.4) and rebuilds the 4 KiB it stands for:
/// leading 8 bytes from the descriptor, bytes 8..4092 from the sector,
/// trailing 4 bytes from the descriptor.
pub fn rebuild_data_sector(
    sector: &[u8],
    leading: &[u8; 8],
    trailing: &[u8; 4],
    sequence_number: u64,
    out: &mut [u8],
) -> Result<(), Malformed> {
    if &sector[..4] != DATA_SIGNATURE {
        return Err(Malformed::new(0, "data sector signature is not \"data\""));
    }
    let high = le_u32(sector, 4) as u64;
    let low = le_u32(sector, 4092) as u64;
    if (high << 32 | low) != sequence_number {
        return Err(Malformed::new(
            4,
            "data sector sequence number does not match its entry",
        ));
    }
    out[..8].copy_from_slice(leading);
    out[8..4092].copy_from_slice(&sector[8..4092]);
    out[4092..4096].copy_from_slice(trailing);
    Ok(())
}

/// Builds a data sector for a 4 KiB update (inverse of `rebuild_data_sector`).
pub fn make_data_sector(update: &[u8], sequence_number: u64) -> ([u8; 8], [u8; 4], Vec<u8>) {
    let mut s = vec![0u8; SECTOR as usize];
    s[..4].copy_from_slice(DATA_SIGNATURE);
    s[4..8].copy_from_slice(&((sequence_number >> 32) as u32).to_le_bytes());
    s[8..4092].copy_from_slice(&update[8..4092]);
    s[4092..].copy_from_slice(&(sequence_number as u32).to_le_bytes());
    (
        update[..8].try_into().expect("8"),
        update[4092..4096].try_into().expect("4"),
        s,
    )
}

/// One update carried by a log entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogUpdate<'a> {
    /// A 4 KiB page to write at a 4 KiB-aligned offset.
    Data { file_offset: u64, page: &'a [u8] },
    /// A 4 KiB-aligned range to zero.
    Zero { file_offset: u64, length: u64 },
}

/// Fields of an entry that are not derived from its updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryFields {
    pub sequence_number: u64,
    pub tail: u32,
    pub log_guid: Uuid,
    pub flushed_file_offset: u64,
    pub last_file_offset: u64,
}

/// Encodes a complete entry (2.3.1): header, descriptors, data sectors and
/// the checksum over all of them.
pub fn encode_entry(f: &EntryFields, updates: &[LogUpdate<'_>]) -> Vec<u8> {
    let area = EntryHeader::descriptor_area(updates.len() as u32) as usize;
    let data = updates
        .iter()
        .filter(|u| matches!(u, LogUpdate::Data { .. }))
        .count();
    let len = area + SECTOR as usize * data;
    let mut b = vec![0u8; len];
    EntryHeader {
        checksum: 0,
        entry_length: len as u32,
        tail: f.tail,
        sequence_number: f.sequence_number,
        descriptor_count: updates.len() as u32,
        log_guid: f.log_guid,
        flushed_file_offset: f.flushed_file_offset,
        last_file_offset: f.last_file_offset,
    }
    .write_to(&mut b[..HEADER_SIZE]);
    let seq = f.sequence_number;
    let mut sector = area;
    for (i, u) in updates.iter().enumerate() {
        let d = match *u {
            LogUpdate::Data { file_offset, page } => {
                let (leading_bytes, trailing_bytes, s) = make_data_sector(page, seq);
                b[sector..sector + SECTOR as usize].copy_from_slice(&s);
                sector += SECTOR as usize;
                Descriptor::Data {
                    trailing_bytes,
                    leading_bytes,
                    file_offset,
                    sequence_number: seq,
                }
            }
            LogUpdate::Zero {
                file_offset,
                length,
            } => Descriptor::Zero {
                length,
                file_offset,
                sequence_number: seq,
            },
        };
        let at = HEADER_SIZE + DESCRIPTOR_SIZE * i;
        d.write_to(&mut b[at..at + DESCRIPTOR_SIZE]);
    }
    let crc = crc32c::crc32c(&b);
    b[4..8].copy_from_slice(&crc.to_le_bytes());
    b
}
