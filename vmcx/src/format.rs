//! On-disk structures of the HyperVStorage container, format 4.0 (0x0400).
//! Section numbers refer to `shared/research/vmcx-vmrs.md` §2; every
//! checksum is CRC-32 (zlib, reflected 0xEDB88320) over the structure with
//! its checksum field zeroed. All integers little-endian, all packed.

/// §2.2 File header signature.
pub const HEADER_SIGNATURE: u32 = 0x0128_2014;
/// §2.2 Bytes of the file header that are used (and checksummed).
pub const HEADER_LEN: usize = 0x2E;
/// §2.1 The two header copies.
pub const HEADER_OFFSETS: [u64; 2] = [0, 0x1000];
/// §2.1 The root object table is always here.
pub const ROOT_OBJECT_TABLE: u64 = 0x2000;
/// §2.2 The only format version read and written.
pub const FORMAT_VERSION: u32 = 0x0400;
/// §2.3 Object table signature.
pub const OBJECT_TABLE_SIGNATURE: u32 = 0x0111_0001;
pub const OBJECT_TABLE_HEADER_LEN: usize = 8;
pub const OBJECT_ENTRY_LEN: usize = 18;
/// §2.4 Key table signature (u16).
pub const KEY_TABLE_SIGNATURE: u16 = 0x0002;
pub const KEY_TABLE_HEADER_LEN: usize = 10;
/// §2.5 Fixed part of a key table entry.
pub const KEY_ENTRY_HEADER_LEN: usize = 21;
/// §2.8 Replay log.
pub const LOG_SIGNATURE: u32 = 0x0111_0003;
pub const LOG_HEADER_LEN: usize = 0x22;
pub const LOG_ENTRY_LEN: usize = 0x1C;
/// §2.6 Values of this many bytes or more live in file objects.
pub const FILE_OBJECT_THRESHOLD: usize = 2048;
/// §2.5 A Free entry must be longer than a bare entry header.
pub const MIN_FREE_ENTRY: usize = KEY_ENTRY_HEADER_LEN + 1;

/// §2.5 Entry flag: the value is a `FileObjectData` pointer.
pub const FLAG_FILE_OBJECT: u8 = 0x01;
/// §2.3 Object table entry flag set on every used entry in real files.
pub const OBJECT_FLAG_REQUIRED: u8 = 0x01;

/// CRC-32 of `bytes` with the 4-byte field at `field` treated as zero.
pub fn crc_without(bytes: &[u8], field: usize) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&bytes[..field]);
    h.update(&[0; 4]);
    h.update(&bytes[field + 4..]);
    h.finalize()
}

pub(crate) fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
pub(crate) fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}
pub(crate) fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

/// §2.2 `FileHeader` (46 bytes at 0x0000 and 0x1000).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileHeader {
    pub sequence: u16,
    pub format_version: u32,
    pub data_version: u32,
    pub flags: u32,
    pub alignment: u32,
    pub log_offset: u64,
    pub log_size: u64,
    pub log_header_size: u32,
}

impl FileHeader {
    /// Decodes a header copy; `None` when the signature or checksum is wrong.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Option<FileHeader> {
        if u32_at(b, 0) != HEADER_SIGNATURE || u32_at(b, 4) != crc_without(b, 4) {
            return None;
        }
        Some(FileHeader {
            sequence: u16_at(b, 8),
            format_version: u32_at(b, 0x0A),
            data_version: u32_at(b, 0x0E),
            flags: u32_at(b, 0x12),
            alignment: u32_at(b, 0x16),
            log_offset: u64_at(b, 0x1A),
            log_size: u64_at(b, 0x22),
            log_header_size: u32_at(b, 0x2A),
        })
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&HEADER_SIGNATURE.to_le_bytes());
        b[8..10].copy_from_slice(&self.sequence.to_le_bytes());
        b[0x0A..0x0E].copy_from_slice(&self.format_version.to_le_bytes());
        b[0x0E..0x12].copy_from_slice(&self.data_version.to_le_bytes());
        b[0x12..0x16].copy_from_slice(&self.flags.to_le_bytes());
        b[0x16..0x1A].copy_from_slice(&self.alignment.to_le_bytes());
        b[0x1A..0x22].copy_from_slice(&self.log_offset.to_le_bytes());
        b[0x22..0x2A].copy_from_slice(&self.log_size.to_le_bytes());
        b[0x2A..0x2E].copy_from_slice(&self.log_header_size.to_le_bytes());
        let crc = crc_without(&b, 4);
        b[4..8].copy_from_slice(&crc.to_le_bytes());
        b
    }
}

/// §2.3 Object types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectType {
    Empty,
    ObjectTable,
    KeyTable,
    FileObject,
    Free,
    Other(u8),
}

impl ObjectType {
    pub fn from_u8(v: u8) -> ObjectType {
        match v {
            0 => ObjectType::Empty,
            1 => ObjectType::ObjectTable,
            2 => ObjectType::KeyTable,
            3 => ObjectType::FileObject,
            4 => ObjectType::Free,
            o => ObjectType::Other(o),
        }
    }
    pub fn to_u8(self) -> u8 {
        match self {
            ObjectType::Empty => 0,
            ObjectType::ObjectTable => 1,
            ObjectType::KeyTable => 2,
            ObjectType::FileObject => 3,
            ObjectType::Free => 4,
            ObjectType::Other(o) => o,
        }
    }
}

/// §2.3 `ObjectTableEntry` (18 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectEntry {
    pub kind: ObjectType,
    pub offset: u64,
    pub size: u32,
    pub flags: u8,
}

impl ObjectEntry {
    pub const EMPTY: ObjectEntry = ObjectEntry {
        kind: ObjectType::Empty,
        offset: 0,
        size: 0,
        flags: 0,
    };

    /// Decodes an entry and says whether its checksum holds.
    pub fn decode(b: &[u8]) -> (ObjectEntry, bool) {
        let e = ObjectEntry {
            kind: ObjectType::from_u8(b[0]),
            offset: u64_at(b, 5),
            size: u32_at(b, 13),
            flags: b[17],
        };
        (e, u32_at(b, 1) == crc_without(&b[..OBJECT_ENTRY_LEN], 1))
    }

    pub fn encode(&self) -> [u8; OBJECT_ENTRY_LEN] {
        let mut b = [0u8; OBJECT_ENTRY_LEN];
        b[0] = self.kind.to_u8();
        b[5..13].copy_from_slice(&self.offset.to_le_bytes());
        b[13..17].copy_from_slice(&self.size.to_le_bytes());
        b[17] = self.flags;
        let crc = crc_without(&b, 1);
        b[1..5].copy_from_slice(&crc.to_le_bytes());
        b
    }
}

/// §2.4 `KeyTableHeader` (10 bytes; its checksum covers only itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyTableHeader {
    pub index: u16,
    pub sequence: u16,
}

impl KeyTableHeader {
    pub fn decode(b: &[u8]) -> Option<(KeyTableHeader, bool)> {
        if u16_at(b, 0) != KEY_TABLE_SIGNATURE {
            return None;
        }
        let h = KeyTableHeader {
            index: u16_at(b, 2),
            sequence: u16_at(b, 4),
        };
        Some((
            h,
            u32_at(b, 6) == crc_without(&b[..KEY_TABLE_HEADER_LEN], 6),
        ))
    }

    pub fn encode(&self) -> [u8; KEY_TABLE_HEADER_LEN] {
        let mut b = [0u8; KEY_TABLE_HEADER_LEN];
        b[0..2].copy_from_slice(&KEY_TABLE_SIGNATURE.to_le_bytes());
        b[2..4].copy_from_slice(&self.index.to_le_bytes());
        b[4..6].copy_from_slice(&self.sequence.to_le_bytes());
        let crc = crc_without(&b, 6);
        b[6..10].copy_from_slice(&crc.to_le_bytes());
        b
    }
}

/// §2.6 Key value types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyType {
    Free = 1,
    Int = 3,
    UInt = 4,
    Double = 5,
    String = 6,
    Array = 7,
    Bool = 8,
    Node = 9,
}

impl KeyType {
    pub fn from_u8(v: u8) -> Option<KeyType> {
        Some(match v {
            1 => KeyType::Free,
            3 => KeyType::Int,
            4 => KeyType::UInt,
            5 => KeyType::Double,
            6 => KeyType::String,
            7 => KeyType::Array,
            8 => KeyType::Bool,
            9 => KeyType::Node,
            _ => return None,
        })
    }
    /// The name used in JSON and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            KeyType::Free => "free",
            KeyType::Int => "int",
            KeyType::UInt => "uint",
            KeyType::Double => "double",
            KeyType::String => "string",
            KeyType::Array => "array",
            KeyType::Bool => "bool",
            KeyType::Node => "node",
        }
    }
    pub fn from_name(s: &str) -> Option<KeyType> {
        Some(match s {
            "int" => KeyType::Int,
            "uint" => KeyType::UInt,
            "double" => KeyType::Double,
            "string" => KeyType::String,
            "array" => KeyType::Array,
            "bool" => KeyType::Bool,
            "node" => KeyType::Node,
            _ => return None,
        })
    }
}

/// §2.5 `KeyTableEntryHeader` (21 bytes) without the checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyEntryHeader {
    pub kind: u8,
    pub flags: u8,
    pub size: u32,
    pub parent_table: u16,
    pub parent_offset: u32,
    pub checksum: u32,
    pub insertion: u32,
    pub name_len: u8,
}

impl KeyEntryHeader {
    pub fn decode(b: &[u8]) -> KeyEntryHeader {
        KeyEntryHeader {
            kind: b[0],
            flags: b[1],
            size: u32_at(b, 2),
            parent_table: u16_at(b, 6),
            parent_offset: u32_at(b, 8),
            checksum: u32_at(b, 0x0C),
            insertion: u32_at(b, 0x10),
            name_len: b[0x14],
        }
    }

    /// The 21 header bytes with the checksum field as stored in `checksum`.
    pub fn encode(&self) -> [u8; KEY_ENTRY_HEADER_LEN] {
        let mut b = [0u8; KEY_ENTRY_HEADER_LEN];
        b[0] = self.kind;
        b[1] = self.flags;
        b[2..6].copy_from_slice(&self.size.to_le_bytes());
        b[6..8].copy_from_slice(&self.parent_table.to_le_bytes());
        b[8..12].copy_from_slice(&self.parent_offset.to_le_bytes());
        b[0x0C..0x10].copy_from_slice(&self.checksum.to_le_bytes());
        b[0x10..0x14].copy_from_slice(&self.insertion.to_le_bytes());
        b[0x14] = self.name_len;
        b
    }
}

/// §2.8 `ReplayLogHeader` (34 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogHeader {
    pub entry_count: u32,
    pub reserved: u8,
    pub max_entries: u32,
    pub change_tracking_enabled: u8,
    pub change_tracking_offset: u64,
    pub change_tracking_size: u32,
    pub change_tracking_used: u32,
}

impl LogHeader {
    pub fn new(max_entries: u32) -> LogHeader {
        LogHeader {
            entry_count: 0,
            reserved: 0,
            max_entries,
            change_tracking_enabled: 0,
            change_tracking_offset: 0,
            change_tracking_size: 0,
            change_tracking_used: 0,
        }
    }

    /// `None` for a wrong signature; otherwise the header and whether its
    /// checksum holds.
    pub fn decode(b: &[u8]) -> Option<(LogHeader, bool)> {
        if u32_at(b, 0) != LOG_SIGNATURE {
            return None;
        }
        let h = LogHeader {
            entry_count: u32_at(b, 8),
            reserved: b[0x0C],
            max_entries: u32_at(b, 0x0D),
            change_tracking_enabled: b[0x11],
            change_tracking_offset: u64_at(b, 0x12),
            change_tracking_size: u32_at(b, 0x1A),
            change_tracking_used: u32_at(b, 0x1E),
        };
        Some((h, u32_at(b, 4) == crc_without(&b[..LOG_HEADER_LEN], 4)))
    }

    pub fn encode(&self) -> [u8; LOG_HEADER_LEN] {
        let mut b = [0u8; LOG_HEADER_LEN];
        b[0..4].copy_from_slice(&LOG_SIGNATURE.to_le_bytes());
        b[8..12].copy_from_slice(&self.entry_count.to_le_bytes());
        b[0x0C] = self.reserved;
        b[0x0D..0x11].copy_from_slice(&self.max_entries.to_le_bytes());
        b[0x11] = self.change_tracking_enabled;
        b[0x12..0x1A].copy_from_slice(&self.change_tracking_offset.to_le_bytes());
        b[0x1A..0x1E].copy_from_slice(&self.change_tracking_size.to_le_bytes());
        b[0x1E..0x22].copy_from_slice(&self.change_tracking_used.to_le_bytes());
        let crc = crc_without(&b, 4);
        b[4..8].copy_from_slice(&crc.to_le_bytes());
        b
    }
}

/// §2.8 Replay-log entry (28 bytes, field order as verified on real files).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogEntry {
    pub dest_offset: u64,
    pub dest_size: u32,
    pub offset_in_log: u64,
    pub data_checksum: u32,
}

impl LogEntry {
    pub fn decode(b: &[u8]) -> (LogEntry, bool) {
        let e = LogEntry {
            dest_offset: u64_at(b, 0),
            dest_size: u32_at(b, 8),
            offset_in_log: u64_at(b, 0x0C),
            data_checksum: u32_at(b, 0x18),
        };
        (e, u32_at(b, 0x14) == crc_without(&b[..LOG_ENTRY_LEN], 0x14))
    }

    pub fn encode(&self) -> [u8; LOG_ENTRY_LEN] {
        let mut b = [0u8; LOG_ENTRY_LEN];
        b[0..8].copy_from_slice(&self.dest_offset.to_le_bytes());
        b[8..12].copy_from_slice(&self.dest_size.to_le_bytes());
        b[0x0C..0x14].copy_from_slice(&self.offset_in_log.to_le_bytes());
        b[0x18..0x1C].copy_from_slice(&self.data_checksum.to_le_bytes());
        let crc = crc_without(&b, 0x14);
        b[0x14..0x18].copy_from_slice(&crc.to_le_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_object_entry_checksum_matches_real_files() {
        // §2.3: an all-zero Empty slot carries CRC 0x671BCF4D in Hyper-V files.
        let b = ObjectEntry::EMPTY.encode();
        assert_eq!(u32_at(&b, 1), 0x671B_CF4D);
    }

    #[test]
    fn structures_round_trip() {
        let h = FileHeader {
            sequence: 7,
            format_version: FORMAT_VERSION,
            data_version: 0,
            flags: 0,
            alignment: 4096,
            log_offset: 0x8000,
            log_size: 0x4000,
            log_header_size: 0x1000,
        };
        assert_eq!(FileHeader::decode(&h.encode()), Some(h));
        let e = LogEntry {
            dest_offset: 0x3000,
            dest_size: 0x752,
            offset_in_log: 0x1000,
            data_checksum: 0xdead_beef,
        };
        assert_eq!(LogEntry::decode(&e.encode()), (e, true));
        let l = LogHeader::new(145);
        assert_eq!(LogHeader::decode(&l.encode()), Some((l, true)));
    }
}
