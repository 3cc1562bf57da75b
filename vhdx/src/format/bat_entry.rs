//! BAT entries (MS-VHDX 2.5): state in bits 0-2, file offset in MiB in bits 20-63.

/// Payload block states (2.5.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PayloadState {
    NotPresent,
    Undefined,
    Zero,
    Unmapped,
    /// State 5: UNMAPPED in the v0.95 draft; read as zeros.
    UnmappedV095,
    FullyPresent,
    PartiallyPresent,
}

impl PayloadState {
    pub fn from_bits(bits: u64) -> Option<Self> {
        Some(match bits & 7 {
            0 => PayloadState::NotPresent,
            1 => PayloadState::Undefined,
            2 => PayloadState::Zero,
            3 => PayloadState::Unmapped,
            5 => PayloadState::UnmappedV095,
            6 => PayloadState::FullyPresent,
            7 => PayloadState::PartiallyPresent,
            _ => return None,
        })
    }

    pub fn bits(self) -> u64 {
        match self {
            PayloadState::NotPresent => 0,
            PayloadState::Undefined => 1,
            PayloadState::Zero => 2,
            PayloadState::Unmapped => 3,
            PayloadState::UnmappedV095 => 5,
            PayloadState::FullyPresent => 6,
            PayloadState::PartiallyPresent => 7,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            PayloadState::NotPresent => "not_present",
            PayloadState::Undefined => "undefined",
            PayloadState::Zero => "zero",
            PayloadState::Unmapped => "unmapped",
            PayloadState::UnmappedV095 => "unmapped_v095",
            PayloadState::FullyPresent => "fully_present",
            PayloadState::PartiallyPresent => "partially_present",
        }
    }

    /// True for states whose FileOffsetMB points at data.
    pub fn has_data(self) -> bool {
        matches!(
            self,
            PayloadState::FullyPresent | PayloadState::PartiallyPresent
        )
    }
}

/// Sector bitmap block present (2.5.1.2).
pub const SB_BLOCK_PRESENT: u64 = 6;
/// Sector bitmap block not present (2.5.1.2).
pub const SB_BLOCK_NOT_PRESENT: u64 = 0;

const OFFSET_MASK: u64 = !((1 << 20) - 1);

/// Raw state bits of an entry.
pub fn state_bits(entry: u64) -> u64 {
    entry & 7
}

/// File offset in bytes of an entry.
pub fn file_offset(entry: u64) -> u64 {
    entry & OFFSET_MASK
}

/// Reserved bits 3-19.
pub fn reserved_bits(entry: u64) -> u64 {
    entry & 0xF_FFF8
}

/// Builds an entry from a state and a 1 MiB-aligned file offset.
pub fn make(state_bits: u64, file_offset: u64) -> u64 {
    debug_assert_eq!(file_offset & !OFFSET_MASK, 0);
    (file_offset & OFFSET_MASK) | (state_bits & 7)
}
