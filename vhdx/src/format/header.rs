//! Header (MS-VHDX 2.2.2): 4 KiB, CRC-32C over all of it with the checksum zeroed.

use super::{crc32c_with_zeroed_field, guid_at, le_u16, le_u32, le_u64, put_guid, Malformed, MIB};
use uuid::Uuid;

pub const SIGNATURE: &[u8; 4] = b"head";
pub const SIZE: usize = 4096;

/// One copy of the VHDX header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub sequence_number: u64,
    pub file_write_guid: Uuid,
    pub data_write_guid: Uuid,
    pub log_guid: Uuid,
    pub log_version: u16,
    pub version: u16,
    pub log_length: u32,
    pub log_offset: u64,
}

impl Header {
    /// Decodes and validates one header copy (signature, checksum, version,
    /// log placement).
    pub fn parse(b: &[u8]) -> Result<Self, Malformed> {
        if b.len() < SIZE {
            return Err(Malformed::new(0, "header is truncated"));
        }
        let b = &b[..SIZE];
        if &b[..4] != SIGNATURE {
            return Err(Malformed::new(0, "signature is not \"head\""));
        }
        let stored = le_u32(b, 4);
        let computed = crc32c_with_zeroed_field(b, 4);
        if stored != computed {
            return Err(Malformed::new(
                4,
                format!("checksum {stored:#010x} does not match computed {computed:#010x}"),
            ));
        }
        let h = Header {
            sequence_number: le_u64(b, 8),
            file_write_guid: guid_at(b, 16),
            data_write_guid: guid_at(b, 32),
            log_guid: guid_at(b, 48),
            log_version: le_u16(b, 64),
            version: le_u16(b, 66),
            log_length: le_u32(b, 68),
            log_offset: le_u64(b, 72),
        };
        if h.version != 1 {
            return Err(Malformed::new(
                66,
                format!("version {} is not 1", h.version),
            ));
        }
        if !(h.log_length as u64).is_multiple_of(MIB) || h.log_length == 0 {
            return Err(Malformed::new(
                68,
                format!(
                    "log length {:#x} is not a non-zero multiple of 1 MiB",
                    h.log_length
                ),
            ));
        }
        if !h.log_offset.is_multiple_of(MIB) || h.log_offset < MIB {
            return Err(Malformed::new(
                72,
                format!(
                    "log offset {:#x} is not a multiple of 1 MiB at or past 1 MiB",
                    h.log_offset
                ),
            ));
        }
        Ok(h)
    }

    /// Serializes with a fresh checksum.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; SIZE];
        b[..4].copy_from_slice(SIGNATURE);
        b[8..16].copy_from_slice(&self.sequence_number.to_le_bytes());
        put_guid(&mut b, 16, &self.file_write_guid);
        put_guid(&mut b, 32, &self.data_write_guid);
        put_guid(&mut b, 48, &self.log_guid);
        b[64..66].copy_from_slice(&self.log_version.to_le_bytes());
        b[66..68].copy_from_slice(&self.version.to_le_bytes());
        b[68..72].copy_from_slice(&self.log_length.to_le_bytes());
        b[72..80].copy_from_slice(&self.log_offset.to_le_bytes());
        let crc = crc32c::crc32c(&b);
        b[4..8].copy_from_slice(&crc.to_le_bytes());
        b
    }
}
