//! The end of what a VHDX file references (2.1 header section, 2.2 log,
//! 2.5 BAT and metadata regions, payload and sector bitmap blocks), and
//! giving back the space past it: a write that allocates blocks and fails
//! before its commit (a full disk) leaves the file longer than anything it
//! names, and on a full filesystem that space is what the user needs back.

use crate::error::{Error, Result};
use crate::format::bat_entry::{self, PayloadState};
use crate::format::{HEADER_SECTION_SIZE, MIB, SECTOR_BITMAP_BLOCK_SIZE};
use crate::image::VhdxFile;

impl VhdxFile {
    /// The 1 MiB-aligned end of the furthest structure this open's state
    /// references: the header section, the log, every region of the region
    /// table, and every payload block (a whole block, as allocated) and
    /// sector bitmap block the BAT points at.
    pub fn used_end(&self) -> u64 {
        let h = self.header();
        let mut end = HEADER_SECTION_SIZE.max(h.log_offset.saturating_add(h.log_length as u64));
        for r in &self.region_table().entries {
            end = end.max(r.file_offset.saturating_add(r.length as u64));
        }
        let g = *self.geometry();
        let bat = self.bat();
        for b in 0..g.payload_blocks {
            let e = bat.get(g.payload_entry(b)).copied().unwrap_or(0);
            let has_data =
                PayloadState::from_bits(bat_entry::state_bits(e)).is_some_and(|s| s.has_data());
            if has_data {
                end = end.max(bat_entry::file_offset(e).saturating_add(g.block_size));
            }
        }
        if g.has_parent {
            for c in 0..g.chunks {
                let e = bat.get(g.bitmap_entry(c)).copied().unwrap_or(0);
                if bat_entry::state_bits(e) == bat_entry::SB_BLOCK_PRESENT {
                    end =
                        end.max(bat_entry::file_offset(e).saturating_add(SECTOR_BITMAP_BLOCK_SIZE));
                }
            }
        }
        end.next_multiple_of(MIB)
    }

    /// Closes the file (commits, clears the log) and shortens it to
    /// [`VhdxFile::used_end`], never below `floor` (so that space the file
    /// held before, referenced or not, stays). Returns the bytes given back.
    /// Safe at any point of a crash: nothing past the new end is referenced
    /// by the committed state, and no log is left to replay.
    pub fn release_tail(&mut self, floor: u64) -> Result<u64> {
        self.close()?;
        let keep = self.used_end().max(floor);
        let len = self.file_len();
        if len <= keep {
            return Ok(0);
        }
        let s = self.storage();
        s.set_len(keep)
            .and_then(|()| s.flush())
            .map_err(|e| Error::io(&self.path, keep, e))?;
        self.file_len = keep;
        Ok(len - keep)
    }
}

#[cfg(test)]
mod tests {
    use crate::create::{create, CreateParams};
    use crate::format::MIB;
    use crate::image::{OpenOptions, VhdxFile};
    use crate::storage::{MemStorage, Storage};
    use std::sync::Arc;

    fn open(mem: &Arc<MemStorage>, o: OpenOptions) -> VhdxFile {
        VhdxFile::open(Box::new(mem.clone()), "t.vhdx", o).unwrap()
    }

    /// Space past everything committed (an allocation whose commit never
    /// came) is given back, down to the floor; the content stays.
    #[test]
    fn gives_back_what_no_commit_references() {
        let mem = Arc::new(MemStorage::default());
        let p = CreateParams::dynamic(256 * MIB);
        create(&*mem, "t.vhdx", &p, &Default::default()).unwrap();
        let mut f = open(&mem, OpenOptions::writable());
        assert_eq!(f.file_len(), f.used_end());
        f.write_sectors(&[7u8; 4096], 0).unwrap();
        f.write_sectors(&[8u8; 512], 200 * MIB).unwrap();
        f.close().unwrap();
        let end = f.used_end();
        assert_eq!(f.file_len(), end);
        assert_eq!(f.release_tail(0).unwrap(), 0);
        drop(f);
        // Three blocks' worth appended and never referenced.
        mem.set_len(end + 96 * MIB).unwrap();
        let mut f = open(&mem, OpenOptions::writable());
        assert_eq!(f.release_tail(end + 32 * MIB).unwrap(), 64 * MIB);
        assert_eq!(mem.len().unwrap(), end + 32 * MIB);
        assert_eq!(f.release_tail(0).unwrap(), 32 * MIB);
        assert_eq!(mem.len().unwrap(), end);
        drop(f);
        let f = open(&mem, OpenOptions::read_only());
        let mut b = vec![0u8; 4096];
        f.read_at(&mut b, 0).unwrap();
        assert!(b.iter().all(|&x| x == 7));
        f.read_at(&mut b[..512], 200 * MIB).unwrap();
        assert!(b[..512].iter().all(|&x| x == 8));
        let r = crate::check::check(Box::new(mem.clone()), "t.vhdx").unwrap();
        assert!(!r.is_corrupt(), "{:?}", r.problems);
    }
}
