//! The bytes of a file as the parser sees them: the storage with the
//! replay log's pending records laid over it (a read-only open never
//! writes the evidence file).

use crate::error::{Error, Result};
use std::sync::Arc;
use vhdx::Storage;

/// Storage plus an in-memory overlay of replayed records.
pub struct Source {
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) name: String,
    /// Replayed records in log order: (destination offset, bytes).
    overlay: Vec<(u64, Vec<u8>)>,
    storage_len: u64,
    len: u64,
    /// Bytes actually held: the storage's plus the overlay's. Records may
    /// extend the file past a gap (read as zeros), but no structure can be
    /// larger than this.
    held: u64,
}

impl Source {
    pub fn new(storage: Arc<dyn Storage>, name: &str) -> Result<Source> {
        let storage_len = storage.len().map_err(|e| Error::io(name, 0, e))?;
        Ok(Source {
            storage,
            name: name.to_string(),
            overlay: Vec::new(),
            storage_len,
            len: storage_len,
            held: storage_len,
        })
    }

    /// Length including what the overlay extends.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn set_overlay(&mut self, records: Vec<(u64, Vec<u8>)>) {
        self.len = records
            .iter()
            .map(|(o, d)| o.saturating_add(d.len() as u64))
            .fold(self.storage_len, u64::max);
        self.held = records.iter().fold(self.storage_len, |n, (_, d)| {
            n.saturating_add(d.len() as u64)
        });
        self.overlay = records;
    }

    pub fn has_overlay(&self) -> bool {
        !self.overlay.is_empty()
    }

    /// Fills `buf` from `offset`; `what` names the structure for the error
    /// when the range lies past the end of the file.
    pub fn read_at(&self, buf: &mut [u8], offset: u64, what: &'static str) -> Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.len)
            .ok_or_else(|| self.past_end(offset, buf.len() as u64, what))?;
        let in_storage = end.min(self.storage_len).saturating_sub(offset) as usize;
        if in_storage > 0 {
            self.storage
                .read_at(&mut buf[..in_storage], offset)
                .map_err(|e| Error::io(&self.name, offset, e))?;
        }
        buf[in_storage..].fill(0);
        for (o, d) in &self.overlay {
            let (s, e) = (offset.max(*o), end.min(o + d.len() as u64));
            if s < e {
                buf[(s - offset) as usize..(e - offset) as usize]
                    .copy_from_slice(&d[(s - o) as usize..(e - o) as usize]);
            }
        }
        Ok(())
    }

    fn past_end(&self, offset: u64, len: u64, what: &'static str) -> Error {
        Error::corrupt(
            &self.name,
            what,
            offset,
            format!(
                "{len} bytes there lie past the end of the file ({} bytes)",
                self.len
            ),
        )
    }

    /// `len` bytes at `offset` in a new buffer.
    pub fn read_vec(&self, offset: u64, len: usize, what: &'static str) -> Result<Vec<u8>> {
        // Checked before allocating: sizes come from the file.
        if offset.saturating_add(len as u64) > self.len {
            return Err(self.past_end(offset, len as u64, what));
        }
        if len as u64 > self.held {
            return Err(Error::corrupt(
                &self.name,
                what,
                offset,
                format!(
                    "{len} bytes are more than the file and its replayed records hold ({} bytes)",
                    self.held
                ),
            ));
        }
        let mut v = vec![0u8; len];
        self.read_at(&mut v, offset, what)?;
        Ok(v)
    }
}
