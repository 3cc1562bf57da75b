//! Encoding key table entries (§2.5, §2.6), shared by the writer and the
//! editor.

use crate::error::{Error, Result};
use crate::format::*;
use crate::tree::{Key, Value};

/// Slack Hyper-V leaves after the meaningful bytes of most entries (§2.5).
pub const SLACK: usize = 12;

/// A key's value as stored: inline bytes, or bytes for a file object.
#[derive(Debug, Clone, PartialEq)]
pub enum Stored {
    Inline(Vec<u8>),
    /// The kind and the bytes to put in a file object (the entry then holds
    /// a 12-byte `FileObjectData`).
    Large(KeyType, Vec<u8>),
}

/// How `value` is stored (`Value::Blob` must be resolved first).
pub fn stored(value: &Value, next_insertion: u32, change_tracking: u64) -> Result<Stored> {
    let with_len = |b: &[u8]| {
        let mut v = Vec::with_capacity(4 + b.len());
        v.extend_from_slice(&(b.len() as u32).to_le_bytes());
        v.extend_from_slice(b);
        v
    };
    Ok(match value {
        Value::Int(i) => Stored::Inline(i.to_le_bytes().to_vec()),
        Value::UInt(u) => Stored::Inline(u.to_le_bytes().to_vec()),
        Value::Double(d) => Stored::Inline(d.to_bits().to_le_bytes().to_vec()),
        Value::Bool(b) => Stored::Inline(u32::from(*b).to_le_bytes().to_vec()),
        Value::Node => {
            let mut v = change_tracking.to_le_bytes().to_vec();
            v.extend_from_slice(&next_insertion.to_le_bytes());
            Stored::Inline(v)
        }
        Value::String(s) => {
            // Real files store the UTF-16 bytes without a terminating NUL;
            // readers drop one trailing NUL if present, so a string that
            // itself ends in NUL gets one more to survive that.
            let mut b: Vec<u8> = s.encode_utf16().flat_map(u16::to_le_bytes).collect();
            if s.ends_with('\0') {
                b.extend_from_slice(&[0, 0]);
            }
            big_or_inline(KeyType::String, b, with_len)?
        }
        Value::Array(b) => big_or_inline(KeyType::Array, b.clone(), with_len)?,
        Value::Blob(_) => {
            return Err(Error::Invalid(
                "a file-object value must be read before it is written".into(),
            ))
        }
    })
}

fn big_or_inline(kind: KeyType, b: Vec<u8>, with_len: impl Fn(&[u8]) -> Vec<u8>) -> Result<Stored> {
    if u32::try_from(b.len()).is_err() {
        return Err(Error::Invalid(format!(
            "a value of {} bytes is too large (4 GiB at most)",
            b.len()
        )));
    }
    Ok(if b.len() >= FILE_OBJECT_THRESHOLD {
        Stored::Large(kind, b)
    } else {
        Stored::Inline(with_len(&b))
    })
}

/// Name bytes with the NUL, checked.
pub fn name_bytes(name: &str) -> Result<Vec<u8>> {
    let mut n = name.as_bytes().to_vec();
    n.push(0);
    if n.len() > 255 {
        return Err(Error::Invalid(format!(
            "key name {name:?} is longer than 254 bytes"
        )));
    }
    if name.is_empty() || name.contains('/') || name.contains('\0') {
        return Err(Error::Invalid(format!(
            "key name {name:?} is empty or holds '/' or NUL"
        )));
    }
    Ok(n)
}

/// Meaningful length of an entry (what its checksum covers).
pub fn meaningful_len(name: &[u8], value_len: usize) -> usize {
    KEY_ENTRY_HEADER_LEN + name.len() + value_len
}

/// One entry of `size` bytes (meaningful part plus zero slack).
#[allow(clippy::too_many_arguments)]
pub fn encode(
    key: &Key,
    name: &[u8],
    value: &[u8],
    file_object: bool,
    size: usize,
    parent: (u16, u32),
) -> Vec<u8> {
    let m = meaningful_len(name, value.len());
    debug_assert!(size >= m);
    let mut e = vec![0u8; size];
    let h = KeyEntryHeader {
        kind: key.value.key_type() as u8,
        flags: key.flags | if file_object { FLAG_FILE_OBJECT } else { 0 },
        size: size as u32,
        parent_table: parent.0,
        parent_offset: parent.1,
        checksum: 0,
        insertion: key.insertion,
        name_len: name.len() as u8,
    };
    e[..KEY_ENTRY_HEADER_LEN].copy_from_slice(&h.encode());
    e[KEY_ENTRY_HEADER_LEN..KEY_ENTRY_HEADER_LEN + name.len()].copy_from_slice(name);
    e[KEY_ENTRY_HEADER_LEN + name.len()..m].copy_from_slice(value);
    let crc = crc_without(&e[..m], 0x0C);
    e[0x0C..0x10].copy_from_slice(&crc.to_le_bytes());
    e
}

/// A Free entry of `size` bytes (≥ 22) as Hyper-V writes them: type 1,
/// checksum 0, body filled with 0xFD.
pub fn encode_free(size: usize) -> Vec<u8> {
    debug_assert!(size >= MIN_FREE_ENTRY);
    let mut e = vec![0xFDu8; size];
    e[..KEY_ENTRY_HEADER_LEN].fill(0);
    e[0] = KeyType::Free as u8;
    e[2..6].copy_from_slice(&(size as u32).to_le_bytes());
    e
}

/// A `FileObjectData` value: u32 size, u64 offset.
pub fn file_object_value(len: u32, offset: u64) -> Vec<u8> {
    let mut v = len.to_le_bytes().to_vec();
    v.extend_from_slice(&offset.to_le_bytes());
    v
}
