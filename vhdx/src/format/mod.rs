//! On-disk structures of MS-VHDX (v1.00 / revision 8.0), one module per
//! structure, each with its spec section. Parsers take raw bytes and return
//! `Malformed` with an offset relative to the start of the bytes given;
//! callers add the file offset and the file name.

pub mod bat_entry;
pub mod file_id;
pub mod guids;
pub mod header;
pub mod locator;
pub mod log;
pub mod metadata;
pub mod region;

/// 1 MiB: the alignment of every object outside the header section.
pub const MIB: u64 = 1 << 20;
/// 64 KiB.
pub const KIB64: u64 = 64 << 10;
/// Offset of the first header copy (2.1).
pub const HEADER1_OFFSET: u64 = 64 << 10;
/// Offset of the second header copy (2.1).
pub const HEADER2_OFFSET: u64 = 128 << 10;
/// Offset of the first region table copy (2.1).
pub const REGION1_OFFSET: u64 = 192 << 10;
/// Offset of the second region table copy (2.1).
pub const REGION2_OFFSET: u64 = 256 << 10;
/// Size of the header section (2.1).
pub const HEADER_SECTION_SIZE: u64 = MIB;
/// Largest virtual disk size (2.6.2.2): 64 TiB.
pub const MAX_VIRTUAL_SIZE: u64 = 64 << 40;
/// Sector bitmap blocks are always 1 MiB (2.5.2).
pub const SECTOR_BITMAP_BLOCK_SIZE: u64 = MIB;
/// Sectors described by one sector bitmap block: 2^23.
pub const SECTORS_PER_BITMAP_BLOCK: u64 = 1 << 23;

/// A structure could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    /// Offset of the offending field relative to the bytes parsed.
    pub offset: u64,
    /// What is wrong.
    pub reason: String,
}

impl Malformed {
    pub fn new(offset: u64, reason: impl Into<String>) -> Self {
        Malformed {
            offset,
            reason: reason.into(),
        }
    }
}

pub(crate) fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

pub(crate) fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

pub(crate) fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// GUIDs are stored in Microsoft mixed-endian order (first three fields LE).
pub(crate) fn guid_at(b: &[u8], at: usize) -> uuid::Uuid {
    uuid::Uuid::from_bytes_le(b[at..at + 16].try_into().expect("16 bytes"))
}

pub(crate) fn put_guid(b: &mut [u8], at: usize, g: &uuid::Uuid) {
    b[at..at + 16].copy_from_slice(&g.to_bytes_le());
}

/// CRC-32C of `bytes` with the 4-byte checksum field at `field` taken as zero.
pub(crate) fn crc32c_with_zeroed_field(bytes: &[u8], field: usize) -> u32 {
    let crc = crc32c::crc32c(&bytes[..field]);
    let crc = crc32c::crc32c_append(crc, &[0u8; 4]);
    crc32c::crc32c_append(crc, &bytes[field + 4..])
}

/// Decodes UTF-16LE bytes, stopping at the first NUL.
pub(crate) fn utf16le_until_nul(b: &[u8]) -> String {
    let units: Vec<u16> = b
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16_lossy(&units)
}

pub(crate) fn utf16le_encode(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(|u| u.to_le_bytes()).collect()
}
