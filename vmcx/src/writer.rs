//! Writing a new HyperVStorage file from a tree, laid out as Hyper-V does
//! (§2.1–2.6): two headers with different sequences (copy 0 newer), the
//! root object table at 0x2000 with every unused slot a checksummed Empty
//! entry and the last slot kept for the chain link, a clean replay log,
//! 4 KiB key tables tiled with entries (12 bytes of slack each, as Hyper-V
//! leaves) and a Free entry for the rest, values of 2 KiB or more in file
//! objects, and chained object tables when one table cannot list every
//! object.

use crate::error::{Error, Result};
use crate::format::*;
use crate::key_entry::{self, Stored, SLACK};
use crate::tree::{Blob, KeyId, Tree, Value};
use std::fs::File;
use std::path::Path;
use vhdx::Storage;

/// Alignment of every object written (§2.2 DataAlignmentInBytes).
pub const ALIGN: u64 = 4096;
/// Entries of one object table: ⌊(4096 − 8) / 18⌋ = 227, as in real files.
pub const OBJECT_TABLE_CAPACITY: u32 =
    ((ALIGN as usize - OBJECT_TABLE_HEADER_LEN) / OBJECT_ENTRY_LEN) as u32;

/// What [`write`] laid out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layout {
    pub key_tables: usize,
    pub file_objects: usize,
    pub object_tables: usize,
    pub file_len: u64,
}

struct Placed {
    key: KeyId,
    name: Vec<u8>,
    value: Vec<u8>,
    large: Option<Large>,
    size: usize,
    table: u16,
    offset: u32,
}

/// Lays out `tree` and writes it to `storage` (which should be empty);
/// `resolve` reads file-object values of a tree that came from a file.
pub fn write(
    storage: &dyn Storage,
    name: &str,
    tree: &Tree,
    resolve: &dyn Fn(KeyId) -> Result<Value>,
) -> Result<Layout> {
    write_streaming(storage, name, tree, resolve, None)
}

/// Supplies the bytes of `Value::Blob` values while a file is written,
/// so large values (saved memory) never sit in memory whole.
pub trait BlobSource {
    /// Calls `out` with the `blob.len` bytes of key `id`, in order, in
    /// pieces of any size.
    fn stream(
        &self,
        id: KeyId,
        blob: &Blob,
        out: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<()>;
}

/// A file-object value to write: in memory, or streamed from a source.
enum Large {
    Bytes(Vec<u8>),
    Stream(Blob),
}

impl Large {
    fn len(&self) -> usize {
        match self {
            Large::Bytes(b) => b.len(),
            Large::Stream(b) => b.len as usize,
        }
    }
}

/// [`write`], with `Value::Blob` values of 2 KiB or more taken from
/// `source` (when given) as the file is written instead of through
/// `resolve`. The file objects are written in tree order, back to back and
/// 4 KiB aligned.
pub fn write_streaming(
    storage: &dyn Storage,
    name: &str,
    tree: &Tree,
    resolve: &dyn Fn(KeyId) -> Result<Value>,
    source: Option<&dyn BlobSource>,
) -> Result<Layout> {
    let order = tree.walk();
    let mut placed: Vec<Placed> = Vec::with_capacity(order.len());
    let mut slot_of = vec![usize::MAX; tree.len()];
    for &id in &order {
        let k = tree.key(id);
        let streamed = match (&k.value, source) {
            (Value::Blob(b), Some(_)) if b.len as usize >= FILE_OBJECT_THRESHOLD => Some(*b),
            _ => None,
        };
        let value = match &k.value {
            _ if streamed.is_some() => Value::Node, // placeholder, not encoded
            Value::Blob(_) => resolve(id)?,
            v => v.clone(),
        };
        let next = tree
            .children(id)
            .iter()
            .map(|&c| tree.key(c).insertion.saturating_add(1))
            .max()
            .unwrap_or(0)
            .max(k.next_insertion);
        let nb = key_entry::name_bytes(&k.name)
            .map_err(|e| Error::Layout(format!("{}: {e}", tree.path(id))))?;
        let (value, large) = match streamed {
            Some(b) => (vec![0u8; 12], Some(Large::Stream(b))),
            None => match key_entry::stored(&value, next, k.change_tracking)? {
                Stored::Inline(v) => (v, None),
                Stored::Large(_, b) => (vec![0u8; 12], Some(Large::Bytes(b))),
            },
        };
        let size = key_entry::meaningful_len(&nb, value.len()) + SLACK;
        slot_of[id] = placed.len();
        placed.push(Placed {
            key: id,
            name: nb,
            value,
            large,
            size,
            table: 0,
            offset: 0,
        });
    }
    // Tile 4 KiB key tables: an entry whose leftover would be too small for
    // a Free entry takes the leftover as slack.
    let cap = ALIGN as usize;
    let mut tables: Vec<Vec<usize>> = Vec::new();
    let mut used = cap; // forces a first table
    let close = |tables: &mut Vec<Vec<usize>>, placed: &mut Vec<Placed>, used: usize| {
        let rem = cap - used;
        if rem > 0 && rem < MIN_FREE_ENTRY {
            if let Some(&last) = tables.last().and_then(|t| t.last()) {
                placed[last].size += rem;
            }
        }
    };
    for i in 0..placed.len() {
        if used + placed[i].size > cap {
            if !tables.is_empty() {
                close(&mut tables, &mut placed, used);
            }
            if tables.len() >= u16::MAX as usize {
                return Err(Error::Layout("more than 65535 key tables".into()));
            }
            tables.push(Vec::new());
            used = KEY_TABLE_HEADER_LEN;
        }
        placed[i].table = (tables.len() - 1) as u16;
        placed[i].offset = used as u32;
        used += placed[i].size;
        tables.last_mut().expect("a table").push(i);
    }
    if !tables.is_empty() {
        close(&mut tables, &mut placed, used);
    }
    // Regions: headers, root object table, log, key tables, file objects,
    // further object tables.
    let log_offset = ROOT_OBJECT_TABLE + ALIGN;
    let log_data_pages = (tables.len() as u64 + 2).max(4);
    let log_size = ALIGN + log_data_pages * ALIGN;
    let tables_at = log_offset + log_size;
    let mut at = tables_at + tables.len() as u64 * ALIGN;
    let mut objects: Vec<ObjectEntry> = (0..tables.len())
        .map(|i| ObjectEntry {
            kind: ObjectType::KeyTable,
            offset: tables_at + i as u64 * ALIGN,
            size: ALIGN as u32,
            flags: OBJECT_FLAG_REQUIRED,
        })
        .collect();
    let mut blobs: Vec<(u64, usize)> = Vec::new(); // (offset, placed index)
    for (i, p) in placed.iter_mut().enumerate() {
        if let Some(b) = &p.large {
            if u32::try_from(b.len()).is_err() {
                return Err(Error::Layout("file object over 4 GiB".into()));
            }
            let aligned = (b.len() as u64).div_ceil(ALIGN) * ALIGN;
            let size = u32::try_from(aligned)
                .map_err(|_| Error::Layout("file object over 4 GiB".into()))?;
            p.value = key_entry::file_object_value(b.len() as u32, at);
            objects.push(ObjectEntry {
                kind: ObjectType::FileObject,
                offset: at,
                size,
                flags: OBJECT_FLAG_REQUIRED,
            });
            blobs.push((at, i));
            at += aligned;
        }
    }
    let per_table = OBJECT_TABLE_CAPACITY as usize - 1;
    let n_tables = objects.len().div_ceil(per_table).max(1);
    let mut ot_offsets = vec![ROOT_OBJECT_TABLE];
    for _ in 1..n_tables {
        ot_offsets.push(at);
        at += ALIGN;
    }
    let file_len = at;

    let w = |buf: &[u8], off: u64| {
        storage
            .write_at(buf, off)
            .map_err(|e| Error::io(name, off, e))
    };
    storage.set_len(0).map_err(|e| Error::io(name, 0, e))?;
    // Headers: copy 0 newer, as in every real file.
    for (i, seq) in [(0usize, 2u16), (1, 1)] {
        let h = FileHeader {
            sequence: seq,
            format_version: FORMAT_VERSION,
            data_version: 0,
            flags: 0,
            alignment: ALIGN as u32,
            log_offset,
            log_size,
            log_header_size: ALIGN as u32,
        };
        let mut page = vec![0u8; ALIGN as usize];
        page[..HEADER_LEN].copy_from_slice(&h.encode());
        w(&page, HEADER_OFFSETS[i])?;
    }
    // Object tables.
    for (t, &off) in ot_offsets.iter().enumerate() {
        let mut page = vec![0u8; ALIGN as usize];
        page[0..4].copy_from_slice(&OBJECT_TABLE_SIGNATURE.to_le_bytes());
        page[4..8].copy_from_slice(&OBJECT_TABLE_CAPACITY.to_le_bytes());
        for slot in 0..OBJECT_TABLE_CAPACITY as usize {
            let e = if slot + 1 == OBJECT_TABLE_CAPACITY as usize {
                match ot_offsets.get(t + 1) {
                    Some(&next) => ObjectEntry {
                        kind: ObjectType::ObjectTable,
                        offset: next,
                        size: ALIGN as u32,
                        flags: OBJECT_FLAG_REQUIRED,
                    },
                    None => ObjectEntry::EMPTY,
                }
            } else {
                objects
                    .get(t * per_table + slot)
                    .copied()
                    .unwrap_or(ObjectEntry::EMPTY)
            };
            let o = OBJECT_TABLE_HEADER_LEN + slot * OBJECT_ENTRY_LEN;
            page[o..o + OBJECT_ENTRY_LEN].copy_from_slice(&e.encode());
        }
        w(&page, off)?;
    }
    // A clean replay log.
    let mut page = vec![0u8; ALIGN as usize];
    let max_entries = ((ALIGN as usize - LOG_HEADER_LEN) / LOG_ENTRY_LEN) as u32;
    page[..LOG_HEADER_LEN].copy_from_slice(&LogHeader::new(max_entries).encode());
    w(&page, log_offset)?;
    // Key tables.
    for (t, members) in tables.iter().enumerate() {
        let mut page = vec![0u8; cap];
        let h = KeyTableHeader {
            index: t as u16 + 1,
            sequence: 1,
        };
        page[..KEY_TABLE_HEADER_LEN].copy_from_slice(&h.encode());
        let mut end = KEY_TABLE_HEADER_LEN;
        for &i in members {
            let p = &placed[i];
            let k = tree.key(p.key);
            let parent = match k.parent {
                Some(Tree::ROOT) | None => (0, 0),
                Some(pid) => {
                    let pp = &placed[slot_of[pid]];
                    (pp.table + 1, pp.offset)
                }
            };
            let e = key_entry::encode(k, &p.name, &p.value, p.large.is_some(), p.size, parent);
            page[p.offset as usize..p.offset as usize + p.size].copy_from_slice(&e);
            end = p.offset as usize + p.size;
        }
        if cap - end >= MIN_FREE_ENTRY {
            page[end..].copy_from_slice(&key_entry::encode_free(cap - end));
        }
        w(&page, tables_at + t as u64 * ALIGN)?;
    }
    // File objects, padded to the alignment.
    for &(off, i) in &blobs {
        let b = placed[i].large.as_ref().expect("large");
        match b {
            Large::Bytes(b) => w(b, off)?,
            Large::Stream(blob) => {
                let mut at = 0u64;
                let src = source.expect("streamed values come with a source");
                src.stream(placed[i].key, blob, &mut |piece| {
                    if at + piece.len() as u64 > u64::from(blob.len) {
                        return Err(Error::Invalid(format!(
                            "{}: the source gave more than {} bytes",
                            tree.path(placed[i].key),
                            blob.len
                        )));
                    }
                    w(piece, off + at)?;
                    at += piece.len() as u64;
                    Ok(())
                })?;
                if at != u64::from(blob.len) {
                    return Err(Error::Invalid(format!(
                        "{}: the source gave {at} of {} bytes",
                        tree.path(placed[i].key),
                        blob.len
                    )));
                }
            }
        }
        let pad = (b.len() as u64).div_ceil(ALIGN) * ALIGN - b.len() as u64;
        if pad > 0 {
            w(&vec![0u8; pad as usize], off + b.len() as u64)?;
        }
    }
    storage
        .set_len(file_len)
        .map_err(|e| Error::io(name, file_len, e))?;
    storage.flush().map_err(|e| Error::io(name, 0, e))?;
    Ok(Layout {
        key_tables: tables.len(),
        file_objects: blobs.len(),
        object_tables: n_tables,
        file_len,
    })
}

/// Writes `tree` as a new file at `path`: into a temporary file beside
/// it, flushed, then renamed over `path`, so `path` is never half written.
pub fn create(
    path: &Path,
    tree: &Tree,
    resolve: &dyn Fn(KeyId) -> Result<Value>,
) -> Result<Layout> {
    replace_file(path, |f, name| write(f, name, tree, resolve))
}

/// Runs `write` on a new temporary file beside `path` (with `path`'s name
/// for messages); when it succeeds the file is renamed over `path` and the
/// folder synced, when it fails the temporary file is removed. `write` must
/// flush what it writes. Also used by the vmrs crate's writer.
pub fn replace_file<T, E: From<Error>>(
    path: &Path,
    write: impl FnOnce(&File, &str) -> Result<T, E>,
) -> Result<T, E> {
    let name = path.display().to_string();
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .ok_or_else(|| Error::Invalid(format!("{name}: not a file path")))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let f = File::create(&tmp).map_err(|e| Error::io(&tmp.display().to_string(), 0, e))?;
    let r = write(&f, &name);
    drop(f);
    match r {
        Ok(v) => {
            std::fs::rename(&tmp, path).map_err(|e| Error::io(&name, 0, e))?;
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
            Ok(v)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}
