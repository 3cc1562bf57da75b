//! `MemoryBlockSaveStruct` (48 bytes; research note §4.2, `/tmp` note §2):
//! one guest-physical range of saved memory and where its pages start in
//! the concatenated RamBlock page stream.

/// Saved-state version of the struct written (the current one).
pub const SAVED_STATE_VERSION: u32 = 3;
pub const LEN: usize = 48;
/// Flag bits: hot-added, SGX, VTL2 memory, specific purpose.
pub const FLAG_HOT_ADDED: u32 = 1;
pub const KNOWN_FLAGS: u32 = 0xF;

/// One `RamMemoryBlock%d` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemoryBlock {
    pub version: u32,
    pub flags: u32,
    /// Pages (4 KiB) in the range.
    pub page_count: u64,
    /// Index of its first page in the RamBlock stream (RamBlock n holds
    /// pages n·256 .. n·256+255).
    pub first_page: u64,
    /// Guest-physical page number of its first page.
    pub gpa_page: u64,
    pub virtual_node: u32,
    pub ksr_block_id: u64,
}

impl MemoryBlock {
    /// Decodes the 48-byte value; `None` when it is not 48 bytes.
    pub fn decode(b: &[u8]) -> Option<MemoryBlock> {
        if b.len() != LEN {
            return None;
        }
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4"));
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8"));
        Some(MemoryBlock {
            version: u32_at(0),
            flags: u32_at(4),
            page_count: u64_at(8),
            first_page: u64_at(16),
            gpa_page: u64_at(24),
            virtual_node: u32_at(32),
            ksr_block_id: u64_at(40),
        })
    }

    pub fn encode(&self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[0..4].copy_from_slice(&self.version.to_le_bytes());
        b[4..8].copy_from_slice(&self.flags.to_le_bytes());
        b[8..16].copy_from_slice(&self.page_count.to_le_bytes());
        b[16..24].copy_from_slice(&self.first_page.to_le_bytes());
        b[24..32].copy_from_slice(&self.gpa_page.to_le_bytes());
        b[32..36].copy_from_slice(&self.virtual_node.to_le_bytes());
        b[40..48].copy_from_slice(&self.ksr_block_id.to_le_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let m = MemoryBlock {
            version: 3,
            flags: 0,
            page_count: 0xF8000,
            first_page: 0,
            gpa_page: 0,
            virtual_node: 0,
            ksr_block_id: 0,
        };
        assert_eq!(MemoryBlock::decode(&m.encode()), Some(m));
        assert_eq!(MemoryBlock::decode(&[0u8; 40]), None);
    }
}
