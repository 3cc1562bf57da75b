//! BAT geometry (MS-VHDX 2.5): how payload blocks and sector bitmap blocks
//! interleave in the table, and the per-state statistics of a table.

use crate::format::bat_entry::{self, PayloadState};
use crate::format::SECTORS_PER_BITMAP_BLOCK;

/// Sizes that fix the BAT layout of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub virtual_size: u64,
    pub block_size: u64,
    pub logical_sector_size: u64,
    pub has_parent: bool,
    /// Payload blocks per chunk: 2^23 × logical sector size / block size.
    pub chunk_ratio: u64,
    /// Number of payload blocks: ceil(virtual size / block size).
    pub payload_blocks: u64,
    /// Number of chunks (sector bitmap blocks): ceil(payload blocks / chunk ratio).
    pub chunks: u64,
}

impl Geometry {
    /// `block_size` must be a power of two from 1 to 256 MiB and
    /// `logical_sector_size` 512 or 4096 (the metadata parser checks both).
    pub fn new(
        virtual_size: u64,
        block_size: u64,
        logical_sector_size: u64,
        has_parent: bool,
    ) -> Self {
        let chunk_ratio = SECTORS_PER_BITMAP_BLOCK * logical_sector_size / block_size;
        let payload_blocks = virtual_size.div_ceil(block_size);
        Geometry {
            virtual_size,
            block_size,
            logical_sector_size,
            has_parent,
            chunk_ratio,
            payload_blocks,
            chunks: payload_blocks.div_ceil(chunk_ratio),
        }
    }

    /// Total BAT entries (2.5): `PB + floor((PB-1)/CR)` for non-differencing
    /// files, `ceil(PB/CR) × (CR+1)` for differencing ones.
    pub fn bat_entries(&self) -> u64 {
        if self.payload_blocks == 0 {
            return 0;
        }
        if self.has_parent {
            self.chunks * (self.chunk_ratio + 1)
        } else {
            self.payload_blocks + (self.payload_blocks - 1) / self.chunk_ratio
        }
    }

    /// BAT index of payload block `block`.
    pub fn payload_entry(&self, block: u64) -> usize {
        (block + block / self.chunk_ratio) as usize
    }

    /// BAT index of the sector bitmap block of chunk `chunk`.
    pub fn bitmap_entry(&self, chunk: u64) -> usize {
        ((chunk + 1) * self.chunk_ratio + chunk) as usize
    }

    /// True when BAT index `i` is a sector bitmap entry.
    pub fn is_bitmap_entry(&self, i: usize) -> bool {
        (i as u64 + 1).is_multiple_of(self.chunk_ratio + 1)
    }

    pub fn sectors_per_block(&self) -> u64 {
        self.block_size / self.logical_sector_size
    }

    /// Byte offset, inside its chunk's 1 MiB sector bitmap block, of the bits of `block`.
    pub fn bitmap_byte_offset(&self, block: u64) -> u64 {
        (block % self.chunk_ratio) * self.sectors_per_block() / 8
    }

    /// Bytes of the virtual disk covered by `block` (the last may be short).
    pub fn block_len(&self, block: u64) -> u64 {
        self.block_size
            .min(self.virtual_size - block * self.block_size)
    }
}

/// Counts of payload states and allocation of a BAT.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatStats {
    pub not_present: u64,
    pub undefined: u64,
    pub zero: u64,
    pub unmapped: u64,
    pub fully_present: u64,
    pub partially_present: u64,
    /// Payload entries whose state is reserved (4).
    pub invalid: u64,
    pub bitmap_blocks_present: u64,
    /// Bytes of the file taken by payload and sector bitmap blocks.
    pub bytes_allocated: u64,
}

impl BatStats {
    pub fn compute(geometry: &Geometry, bat: &[u64]) -> Self {
        let mut s = BatStats::default();
        for b in 0..geometry.payload_blocks {
            let e = bat[geometry.payload_entry(b)];
            match PayloadState::from_bits(bat_entry::state_bits(e)) {
                Some(PayloadState::NotPresent) => s.not_present += 1,
                Some(PayloadState::Undefined) => s.undefined += 1,
                Some(PayloadState::Zero) => s.zero += 1,
                Some(PayloadState::Unmapped | PayloadState::UnmappedV095) => s.unmapped += 1,
                Some(PayloadState::FullyPresent) => s.fully_present += 1,
                Some(PayloadState::PartiallyPresent) => s.partially_present += 1,
                None => s.invalid += 1,
            }
        }
        s.bytes_allocated = (s.fully_present + s.partially_present) * geometry.block_size;
        if geometry.has_parent {
            for c in 0..geometry.chunks {
                if bat_entry::state_bits(bat[geometry.bitmap_entry(c)])
                    == bat_entry::SB_BLOCK_PRESENT
                {
                    s.bitmap_blocks_present += 1;
                }
            }
            s.bytes_allocated += s.bitmap_blocks_present * crate::format::SECTOR_BITMAP_BLOCK_SIZE;
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    const MIB: u64 = 1 << 20;

    #[test]
    fn chunk_ratios_match_the_spec_examples() {
        for (bs, lss, cr) in [
            (MIB, 512, 4096),
            (2 * MIB, 512, 2048),
            (32 * MIB, 512, 128),
            (256 * MIB, 512, 16),
            (MIB, 4096, 32768),
            (32 * MIB, 4096, 1024),
        ] {
            assert_eq!(Geometry::new(bs, bs, lss, false).chunk_ratio, cr);
        }
    }

    #[test]
    fn entry_counts_match_real_files() {
        // Hyper-V 2012 sample: 1 GiB, 32 MiB blocks: 32 entries.
        assert_eq!(
            Geometry::new(1 << 30, 32 * MIB, 512, false).bat_entries(),
            32
        );
        // QEMU dirty-log sample: 10 GiB, 1 MiB blocks: 10,242 entries.
        assert_eq!(
            Geometry::new(10 << 30, MIB, 512, false).bat_entries(),
            10242
        );
        // QEMU 200 GiB image: 6400 payload + 49 bitmap entries.
        assert_eq!(
            Geometry::new(200 << 30, 32 * MIB, 512, false).bat_entries(),
            6449
        );
        // Differencing: one whole chunk group per chunk.
        let g = Geometry::new(1 << 30, 2 * MIB, 512, true);
        assert_eq!(g.bat_entries(), 2049);
        assert_eq!(g.bitmap_entry(0), 2048);
    }

    #[test]
    fn payload_and_bitmap_entries_interleave() {
        let g = Geometry::new(200 << 30, 32 * MIB, 512, false);
        assert_eq!(g.payload_entry(127), 127);
        assert_eq!(g.payload_entry(128), 129);
        assert_eq!(g.bitmap_entry(0), 128);
        assert!(g.is_bitmap_entry(128));
        assert!(!g.is_bitmap_entry(129));
        assert_eq!(g.bitmap_byte_offset(1), 8192);
    }
}
