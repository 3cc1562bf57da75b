//! Parent locator (MS-VHDX 2.6.2.6): a typed list of UTF-16LE key/value pairs.

use super::{guid_at, le_u16, le_u32, put_guid, utf16le_encode, Malformed};
use uuid::Uuid;

/// Most key/value pairs accepted (the count field is 16 bits; openvmm caps at 256).
pub const MAX_ENTRIES: u16 = 256;

/// A decoded parent locator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentLocator {
    pub locator_type: Uuid,
    /// Key/value pairs in file order.
    pub entries: Vec<(String, String)>,
}

impl ParentLocator {
    pub fn parse(b: &[u8]) -> Result<Self, Malformed> {
        if b.len() < 20 {
            return Err(Malformed::new(
                0,
                "parent locator is shorter than its 20-byte header",
            ));
        }
        let locator_type = guid_at(b, 0);
        let count = le_u16(b, 18);
        if count > MAX_ENTRIES {
            return Err(Malformed::new(
                18,
                format!("key/value count {count} exceeds {MAX_ENTRIES}"),
            ));
        }
        let table_end = 20 + count as usize * 12;
        if table_end > b.len() {
            return Err(Malformed::new(
                18,
                format!("{count} key/value entries do not fit in the item"),
            ));
        }
        let mut entries = Vec::with_capacity(count as usize);
        for i in 0..count as usize {
            let at = 20 + i * 12;
            let key = string_at(b, le_u32(b, at), le_u16(b, at + 8), at as u64)?;
            let value = string_at(b, le_u32(b, at + 4), le_u16(b, at + 10), at as u64 + 4)?;
            if key.is_empty() {
                return Err(Malformed::new(at as u64, "empty key"));
            }
            if entries.iter().any(|(k, _)| k == &key) {
                return Err(Malformed::new(at as u64, format!("duplicate key {key:?}")));
            }
            entries.push((key, value));
        }
        Ok(ParentLocator {
            locator_type,
            entries,
        })
    }

    /// The value of `key` (keys are case-sensitive).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut head = vec![0u8; 20 + self.entries.len() * 12];
        put_guid(&mut head, 0, &self.locator_type);
        head[18..20].copy_from_slice(&(self.entries.len() as u16).to_le_bytes());
        let mut strings = Vec::new();
        for (i, (k, v)) in self.entries.iter().enumerate() {
            let at = 20 + i * 12;
            let (k, v) = (utf16le_encode(k), utf16le_encode(v));
            let key_off = head.len() + strings.len();
            strings.extend_from_slice(&k);
            let value_off = head.len() + strings.len();
            strings.extend_from_slice(&v);
            head[at..at + 4].copy_from_slice(&(key_off as u32).to_le_bytes());
            head[at + 4..at + 8].copy_from_slice(&(value_off as u32).to_le_bytes());
            head[at + 8..at + 10].copy_from_slice(&(k.len() as u16).to_le_bytes());
            head[at + 10..at + 12].copy_from_slice(&(v.len() as u16).to_le_bytes());
        }
        head.extend_from_slice(&strings);
        head
    }
}

fn string_at(b: &[u8], off: u32, len: u16, field: u64) -> Result<String, Malformed> {
    let (off, len) = (off as usize, len as usize);
    if len % 2 != 0 {
        return Err(Malformed::new(field, format!("string length {len} is odd")));
    }
    let s = b.get(off..off.saturating_add(len)).ok_or_else(|| {
        Malformed::new(
            field,
            format!("string at {off:#x}+{len} lies outside the item"),
        )
    })?;
    let units: Vec<u16> = s
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16(&units).map_err(|_| Malformed::new(field, "string is not valid UTF-16"))
}
