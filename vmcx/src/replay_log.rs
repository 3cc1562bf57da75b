//! The replay log (§2.8): a journal of pending writes. When its header
//! counts records, the first `entry_count` records (entry and data CRCs
//! valid) are a committed transaction not yet applied; applying them in
//! order gives the file's current state. Records past the count are stale
//! leftovers and are never looked at.

use crate::error::{Error, Result};
use crate::format::*;
use crate::source::Source;

/// A record to apply: destination offset and bytes.
pub type Record = (u64, Vec<u8>);

/// What the log says about the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogState {
    pub offset: u64,
    pub size: u64,
    pub header_size: u32,
    pub header: LogHeader,
    /// The pending records (empty when clean).
    pub pending: Vec<LogEntry>,
}

/// Reads and validates the log the file header points at. `Ok(Err(..))`
/// carries a problem found in a log that cannot be used (the caller
/// decides whether that is fatal).
pub fn read(src: &Source, h: &FileHeader) -> Result<(LogState, Vec<Record>)> {
    let name = &src.name;
    let bad = |off: u64, why: String| Error::corrupt(name, "replay log", off, why);
    if (h.log_header_size as usize) < LOG_HEADER_LEN || u64::from(h.log_header_size) > h.log_size {
        return Err(bad(
            h.log_offset,
            format!(
                "header size {:#x} does not fit a log of {:#x} bytes",
                h.log_header_size, h.log_size
            ),
        ));
    }
    if h.log_offset < ROOT_OBJECT_TABLE + u64::from(h.alignment) {
        return Err(bad(
            h.log_offset,
            "the log overlaps the file headers or the root object table".into(),
        ));
    }
    h.log_offset
        .checked_add(h.log_size)
        .ok_or_else(|| bad(h.log_offset, "log size overflows".into()))?;
    let hb = src.read_vec(h.log_offset, LOG_HEADER_LEN, "replay log header")?;
    let (header, ok) =
        LogHeader::decode(&hb).ok_or_else(|| bad(h.log_offset, "wrong signature".into()))?;
    if !ok {
        return Err(bad(h.log_offset, "header checksum mismatch".into()));
    }
    let mut state = LogState {
        offset: h.log_offset,
        size: h.log_size,
        header_size: h.log_header_size,
        header,
        pending: Vec::new(),
    };
    if header.entry_count == 0 {
        return Ok((state, Vec::new()));
    }
    let fits = (h.log_header_size as usize - LOG_HEADER_LEN) / LOG_ENTRY_LEN;
    if header.entry_count > header.max_entries || header.entry_count as usize > fits {
        return Err(bad(
            h.log_offset,
            format!(
                "{} pending records, but room for {} (maximum {})",
                header.entry_count, fits, header.max_entries
            ),
        ));
    }
    let n = header.entry_count as usize;
    let eb = src.read_vec(
        h.log_offset + LOG_HEADER_LEN as u64,
        n * LOG_ENTRY_LEN,
        "replay log entries",
    )?;
    let log_end = h.log_offset + h.log_size;
    // A transaction's data lies back to back in the data area, so all of
    // it fits in the part of that area the file holds; records sharing
    // their data could otherwise make memory grow with the square of the
    // file size.
    let room = src
        .len()
        .min(log_end)
        .saturating_sub(h.log_offset + u64::from(h.log_header_size));
    let mut total = 0u64;
    let mut records = Vec::with_capacity(n);
    for i in 0..n {
        let at = h.log_offset + (LOG_HEADER_LEN + i * LOG_ENTRY_LEN) as u64;
        let (e, ok) = LogEntry::decode(&eb[i * LOG_ENTRY_LEN..]);
        if !ok {
            return Err(bad(at, format!("record {i}: entry checksum mismatch")));
        }
        let data_start = e.offset_in_log;
        if data_start < u64::from(h.log_header_size)
            || data_start.saturating_add(u64::from(e.dest_size)) > h.log_size
        {
            return Err(bad(
                at,
                format!(
                    "record {i}: data at log+{data_start:#x} ({:#x} bytes) lies outside the log data area",
                    e.dest_size
                ),
            ));
        }
        total += u64::from(e.dest_size);
        if total > room {
            return Err(bad(
                at,
                format!(
                    "record {i}: the records carry {total:#x} bytes, more than the {room:#x} bytes of log data area in the file"
                ),
            ));
        }
        let dest_end = e
            .dest_offset
            .checked_add(u64::from(e.dest_size))
            .ok_or_else(|| {
                bad(
                    at,
                    format!(
                        "record {i}: destination {:#x} + {:#x} bytes overflows",
                        e.dest_offset, e.dest_size
                    ),
                )
            })?;
        if e.dest_offset < ROOT_OBJECT_TABLE && e.dest_size > 0 {
            return Err(bad(at, format!("record {i}: writes over the file headers")));
        }
        if e.dest_offset < log_end && dest_end > h.log_offset {
            return Err(bad(at, format!("record {i}: writes into the log itself")));
        }
        let data = src.read_vec(
            h.log_offset + data_start,
            e.dest_size as usize,
            "replay log data",
        )?;
        if crc32fast::hash(&data) != e.data_checksum {
            return Err(bad(
                h.log_offset + data_start,
                format!("record {i}: data checksum mismatch"),
            ));
        }
        state.pending.push(e);
        records.push((e.dest_offset, data));
    }
    Ok((state, records))
}
