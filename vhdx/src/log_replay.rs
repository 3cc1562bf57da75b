//! Log replay (MS-VHDX 2.3.2, 2.3.3): find the active sequence of log entries
//! and turn it into the writes it stands for.

use crate::error::{Error, Result};
use crate::format::log::{
    rebuild_data_sector, Descriptor, EntryHeader, DESCRIPTOR_SIZE, HEADER_SIZE, SECTOR,
};
use crate::format::{crc32c_with_zeroed_field, REGION1_OFFSET};
use crate::storage::Storage;
use std::collections::HashMap;
use uuid::Uuid;

/// Descriptors must not target the headers (2.3: headers are never logged).
const LOGGABLE_OFFSET: u64 = REGION1_OFFSET;
/// Sanity bound on file offsets named by the log: 256 TiB.
const MAX_FILE_OFFSET: u64 = 1 << 48;

/// One write the log stands for.
#[derive(Debug, Clone)]
pub enum ReplayOp {
    /// A 4 KiB page.
    Data { file_offset: u64, bytes: Box<[u8]> },
    /// A range to zero.
    Zero { file_offset: u64, length: u64 },
}

/// A log entry of the active sequence.
#[derive(Debug, Clone)]
pub struct EntrySummary {
    /// Offset of the entry inside the log.
    pub log_position: u64,
    pub sequence_number: u64,
    pub descriptor_count: u32,
    pub length: u32,
}

/// Everything a replay has to do.
#[derive(Debug, Clone)]
pub struct ReplayPlan {
    pub entries: Vec<EntrySummary>,
    pub ops: Vec<ReplayOp>,
    pub flushed_file_offset: u64,
    pub last_file_offset: u64,
}

struct ParsedEntry {
    header: EntryHeader,
    ops: Vec<ReplayOp>,
}

struct LogReader<'a> {
    storage: &'a dyn Storage,
    path: &'a str,
    log_offset: u64,
    log_length: u64,
    log_guid: Uuid,
    cache: HashMap<u64, Option<std::rc::Rc<ParsedEntry>>>,
}

impl LogReader<'_> {
    /// Reads `len` bytes of the ring starting at `pos`, wrapping at its end.
    fn read_ring(&self, pos: u64, len: u64) -> Result<Vec<u8>> {
        let mut out = vec![0u8; len as usize];
        let mut done = 0u64;
        while done < len {
            let p = (pos + done) % self.log_length;
            let n = (len - done).min(self.log_length - p);
            let off = self.log_offset + p;
            self.storage
                .read_at(&mut out[done as usize..(done + n) as usize], off)
                .map_err(|e| Error::io(self.path, off, e))?;
            done += n;
        }
        Ok(out)
    }

    fn entry_at(&mut self, pos: u64) -> Result<Option<std::rc::Rc<ParsedEntry>>> {
        if let Some(e) = self.cache.get(&pos) {
            return Ok(e.clone());
        }
        let e = self.parse_entry(pos)?.map(std::rc::Rc::new);
        self.cache.insert(pos, e.clone());
        Ok(e)
    }

    /// Returns the entry at `pos` if it is valid by every rule of 2.3.1.
    fn parse_entry(&self, pos: u64) -> Result<Option<ParsedEntry>> {
        let first = self.read_ring(pos, SECTOR)?;
        let Ok(header) = EntryHeader::parse(&first) else {
            return Ok(None);
        };
        let len = header.entry_length as u64;
        if header.log_guid != self.log_guid
            || len > self.log_length
            || header.tail as u64 >= self.log_length
            || header.last_file_offset > MAX_FILE_OFFSET
            || header.flushed_file_offset > MAX_FILE_OFFSET
        {
            return Ok(None);
        }
        let area = EntryHeader::descriptor_area(header.descriptor_count);
        if area > len {
            return Ok(None);
        }
        let bytes = self.read_ring(pos, len)?;
        if crc32c_with_zeroed_field(&bytes, 4) != header.checksum {
            return Ok(None);
        }
        let mut ops = Vec::with_capacity(header.descriptor_count as usize);
        let mut data_sector = area;
        for i in 0..header.descriptor_count as usize {
            let at = HEADER_SIZE + i * DESCRIPTOR_SIZE;
            let Ok(d) = Descriptor::parse(&bytes[at..at + DESCRIPTOR_SIZE]) else {
                return Ok(None);
            };
            if d.sequence_number() != header.sequence_number {
                return Ok(None);
            }
            match d {
                Descriptor::Zero {
                    length,
                    file_offset,
                    ..
                } => {
                    let Some(end) = file_offset.checked_add(length) else {
                        return Ok(None);
                    };
                    if !self.target_ok(file_offset, end) {
                        return Ok(None);
                    }
                    ops.push(ReplayOp::Zero {
                        file_offset,
                        length,
                    });
                }
                Descriptor::Data {
                    trailing_bytes,
                    leading_bytes,
                    file_offset,
                    ..
                } => {
                    if data_sector + SECTOR > len
                        || file_offset
                            .checked_add(SECTOR)
                            .is_none_or(|end| !self.target_ok(file_offset, end))
                    {
                        return Ok(None);
                    }
                    let sector = &bytes[data_sector as usize..(data_sector + SECTOR) as usize];
                    let mut page = vec![0u8; SECTOR as usize].into_boxed_slice();
                    if rebuild_data_sector(
                        sector,
                        &leading_bytes,
                        &trailing_bytes,
                        header.sequence_number,
                        &mut page,
                    )
                    .is_err()
                    {
                        return Ok(None);
                    }
                    data_sector += SECTOR;
                    ops.push(ReplayOp::Data {
                        file_offset,
                        bytes: page,
                    });
                }
            }
        }
        if data_sector != len {
            return Ok(None);
        }
        Ok(Some(ParsedEntry { header, ops }))
    }

    fn target_ok(&self, start: u64, end: u64) -> bool {
        let log_end = self.log_offset + self.log_length;
        start >= LOGGABLE_OFFSET
            && end <= MAX_FILE_OFFSET
            && (end <= self.log_offset || start >= log_end)
    }
}

/// Finds the active sequence of a log (2.3.3) and returns what replaying it
/// must do. `file_len` is checked against the head's FlushedFileOffset.
pub fn plan(
    storage: &dyn Storage,
    path: &str,
    log_offset: u64,
    log_length: u64,
    log_guid: Uuid,
    file_len: u64,
) -> Result<ReplayPlan> {
    let mut r = LogReader {
        storage,
        path,
        log_offset,
        log_length,
        log_guid,
        cache: HashMap::new(),
    };
    // (positions, head entry) of the best sequence so far.
    let mut candidate: Option<(Vec<u64>, std::rc::Rc<ParsedEntry>)> = None;
    let mut tail = 0u64;
    let mut old_tail = 0u64;
    loop {
        let mut positions: Vec<u64> = Vec::new();
        let mut head: Option<std::rc::Rc<ParsedEntry>> = None;
        let mut pos = tail;
        let mut span = 0u64;
        while let Some(e) = r.entry_at(pos)? {
            if let Some(h) = &head {
                if e.header.sequence_number != h.header.sequence_number.wrapping_add(1) {
                    break;
                }
            }
            span += e.header.entry_length as u64;
            if span > log_length {
                break;
            }
            positions.push(pos);
            pos = (pos + e.header.entry_length as u64) % log_length;
            head = Some(e);
        }
        let valid = head.as_ref().and_then(|h| {
            positions
                .iter()
                .position(|&p| p == h.header.tail as u64)
                .map(|i| (positions[i..].to_vec(), h.clone()))
        });
        match valid {
            Some((seq, h)) => {
                if candidate
                    .as_ref()
                    .is_none_or(|(_, c)| h.header.sequence_number > c.header.sequence_number)
                {
                    candidate = Some((seq, h));
                }
                tail = pos;
            }
            None => tail = (tail + SECTOR) % log_length,
        }
        if tail <= old_tail {
            break;
        }
        old_tail = tail;
    }
    let Some((positions, head)) = candidate else {
        return Err(Error::corrupt(
            path,
            "log",
            log_offset,
            format!(
                "the header names log {log_guid} but no valid sequence of its entries was found"
            ),
        ));
    };
    if file_len < head.header.flushed_file_offset {
        return Err(Error::corrupt(
            path,
            "log",
            log_offset,
            format!(
                "the log says the file was flushed at {:#x} bytes but it is {:#x} bytes: the file is truncated",
                head.header.flushed_file_offset, file_len
            ),
        ));
    }
    let mut entries = Vec::new();
    let mut ops = Vec::new();
    for p in positions {
        let e = r.entry_at(p)?.expect("entry of the candidate sequence");
        entries.push(EntrySummary {
            log_position: p,
            sequence_number: e.header.sequence_number,
            descriptor_count: e.header.descriptor_count,
            length: e.header.entry_length,
        });
        ops.extend(e.ops.iter().cloned());
    }
    Ok(ReplayPlan {
        entries,
        ops,
        flushed_file_offset: head.header.flushed_file_offset,
        last_file_offset: head.header.last_file_offset,
    })
}
