//! File type identifier (MS-VHDX 2.2.1): `vhdxfile` and a UTF-16 creator.

use super::{utf16le_encode, utf16le_until_nul, Malformed};

pub const SIGNATURE: &[u8; 8] = b"vhdxfile";
/// Bytes covered by the identifier: signature + 512-byte creator.
pub const SIZE: usize = 8 + 512;

/// The file type identifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileIdentifier {
    /// Diagnostic creator string (at most 256 UTF-16 units).
    pub creator: String,
}

impl FileIdentifier {
    pub fn parse(b: &[u8]) -> Result<Self, Malformed> {
        if b.len() < SIZE {
            return Err(Malformed::new(0, "file identifier is truncated"));
        }
        if &b[..8] != SIGNATURE {
            return Err(Malformed::new(
                0,
                "signature is not \"vhdxfile\": not a VHDX file",
            ));
        }
        Ok(FileIdentifier {
            creator: utf16le_until_nul(&b[8..SIZE]),
        })
    }

    /// Serializes into `SIZE` bytes (creator cut to 255 UTF-16 units).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; SIZE];
        b[..8].copy_from_slice(SIGNATURE);
        let mut c = utf16le_encode(&self.creator);
        c.truncate(510);
        b[8..8 + c.len()].copy_from_slice(&c);
        b
    }
}
