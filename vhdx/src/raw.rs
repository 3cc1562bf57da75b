//! Any guest image (a VHDX chain or a raw file) behind one read interface.

use crate::disk::Disk;
use crate::error::{Error, Result};
use crate::image::Run;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Guest-visible content with a size.
pub trait GuestImage {
    fn size(&self) -> u64;
    /// Reads `buf.len()` bytes at `offset` (inside the image).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;
    /// Reports runs of `offset..offset+len`.
    fn for_each_run(
        &self,
        offset: u64,
        len: u64,
        f: &mut dyn FnMut(Run) -> Result<()>,
    ) -> Result<()>;
}

impl GuestImage for Disk {
    fn size(&self) -> u64 {
        self.virtual_size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        Disk::read_at(self, buf, offset)
    }
    fn for_each_run(
        &self,
        offset: u64,
        len: u64,
        f: &mut dyn FnMut(Run) -> Result<()>,
    ) -> Result<()> {
        Disk::for_each_run(self, offset, len, f)
    }
}

/// A raw image file.
#[derive(Debug)]
pub struct RawImage {
    path: String,
    file: File,
    size: u64,
}

impl RawImage {
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let name = path.as_ref().display().to_string();
        let file = File::open(path.as_ref()).map_err(|e| Error::open(&name, e))?;
        let size = file.metadata().map_err(|e| Error::io(&name, 0, e))?.len();
        Ok(RawImage {
            path: name,
            file,
            size,
        })
    }
    pub fn file(&self) -> &File {
        &self.file
    }
}

impl GuestImage for RawImage {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| Error::io(&self.path, offset, e))
    }
    fn for_each_run(
        &self,
        offset: u64,
        len: u64,
        f: &mut dyn FnMut(Run) -> Result<()>,
    ) -> Result<()> {
        if offset.checked_add(len).is_none_or(|e| e > self.size) {
            return Err(Error::OutOfRange {
                offset,
                len,
                size: self.size,
            });
        }
        f(Run::Data {
            file: 0,
            offset,
            len,
        })
    }
}
