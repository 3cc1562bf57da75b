//! Writing log entries (MS-VHDX 2.3): every update of the BAT, the sector
//! bitmaps, the metadata region or the region table is first written as a
//! log entry and flushed, then applied in place and flushed.
//!
//! Each entry is applied before the next one is written, so every entry is
//! its own tail (a sequence of one entry), and an entry is never placed over
//! the entry before it: after a crash the newest complete entry is the head
//! of the active sequence, and replaying it again is harmless because it
//! holds the newest content of the pages it names.

use crate::format::log::{encode_entry, EntryFields, LogUpdate, SECTOR};
use uuid::Uuid;

/// Largest entry relative to the log: with entries at most a quarter of
/// the ring, one that does not fit after the previous entry fits at the
/// start of the ring without touching it.
const MAX_ENTRY_FRACTION: u64 = 4;

/// Where the next entry goes and what it carries.
#[derive(Debug, Clone)]
pub struct Journal {
    pub log_guid: Uuid,
    log_length: u64,
    next_sequence: u64,
    /// Position and length of the last entry written.
    previous: Option<(u64, u64)>,
}

impl Journal {
    /// A journal for a new write session: a fresh LogGuid (so entries of
    /// earlier sessions are invalid) and sequence numbers from 1.
    pub fn new(log_length: u64) -> Self {
        Journal {
            log_guid: Uuid::new_v4(),
            log_length,
            next_sequence: 1,
            previous: None,
        }
    }

    /// Most 4 KiB data pages one entry may carry.
    pub fn max_pages(&self) -> usize {
        // One descriptor sector holds 126 descriptors; keep under the size limit.
        let budget = self.log_length / MAX_ENTRY_FRACTION;
        ((budget / SECTOR).saturating_sub(2) as usize).clamp(1, 126)
    }

    /// Encodes the next entry for `pages` (4 KiB-aligned file offset and
    /// 4 KiB content each). Returns the position inside the log and the bytes.
    pub fn next_entry(
        &mut self,
        pages: &[(u64, &[u8])],
        flushed_file_offset: u64,
        last_file_offset: u64,
    ) -> (u64, Vec<u8>) {
        let updates: Vec<LogUpdate<'_>> = pages
            .iter()
            .map(|&(file_offset, page)| LogUpdate::Data { file_offset, page })
            .collect();
        let len = crate::format::log::EntryHeader::descriptor_area(updates.len() as u32)
            + SECTOR * pages.len() as u64;
        let pos = match self.previous {
            Some((p, l)) if p + l + len <= self.log_length => p + l,
            _ => 0,
        };
        let bytes = encode_entry(
            &EntryFields {
                sequence_number: self.next_sequence,
                tail: pos as u32,
                log_guid: self.log_guid,
                flushed_file_offset,
                last_file_offset,
            },
            &updates,
        );
        debug_assert_eq!(bytes.len() as u64, len);
        self.next_sequence += 1;
        self.previous = Some((pos, len));
        (pos, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_never_overlap_the_previous_one() {
        let mut j = Journal::new(1 << 20);
        let page = vec![7u8; 4096];
        let mut prev: Option<(u64, u64)> = None;
        for n in [1usize, 5, 60, 3, 62, 62, 62, 1, 62, 62, 62, 62, 62, 10, 62] {
            let n = n.min(j.max_pages());
            let pages: Vec<(u64, &[u8])> = (0..n).map(|i| (i as u64 * 4096, &page[..])).collect();
            let (pos, bytes) = j.next_entry(&pages, 0, 0);
            let len = bytes.len() as u64;
            assert!(pos + len <= 1 << 20);
            if let Some((p, l)) = prev {
                assert!(
                    pos >= p + l || pos + len <= p,
                    "{pos}+{len} overlaps {p}+{l}"
                );
            }
            prev = Some((pos, len));
        }
    }
}
