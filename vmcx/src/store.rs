//! Opening a HyperVStorage file (§2.10): headers, replay log (applied in
//! memory, or to disk on a writable open), the chain of object tables, the
//! key tables and the key tree. Every checksum is verified; with
//! `lenient` a failed check becomes a [`Problem`] and parsing goes on.

use crate::error::{Error, Result};
use crate::format::*;
use crate::replay_log::{self, LogState};
use crate::source::Source;
use crate::tree::{Blob, Key, KeyId, Location, Tree, Value};
use std::collections::{HashMap, HashSet};
use std::io;
use std::path::Path;
use std::sync::Arc;
use vhdx::Storage;

/// Largest key table accepted (real ones are one 4 KiB page).
pub const MAX_KEY_TABLE: u32 = 1 << 20;

/// How to open a file.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenOptions {
    /// Open for writing; a pending replay log is applied to the file.
    pub write: bool,
    /// Report failed checks as problems and go on instead of failing.
    pub lenient: bool,
    /// Fail with [`Error::LogNeedsReplay`] instead of applying a pending
    /// log in memory (read-only opens).
    pub no_replay: bool,
}

/// A check that failed in a lenient open, or a remark about the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub offset: u64,
    pub message: String,
}

/// One object of an object table (§2.3) and where its entry sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Object {
    pub entry: ObjectEntry,
    /// File offset of the object table holding the entry.
    pub table: u64,
    /// Slot of the entry in that table.
    pub slot: u32,
}

/// One object table of the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectTable {
    pub offset: u64,
    pub capacity: u32,
    /// Slots holding Empty entries (candidates for new objects; the last
    /// slot is kept for the chain link and never listed).
    pub empty_slots: Vec<u32>,
}

/// A key table in use (the highest sequence of its index).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTable {
    pub index: u16,
    pub sequence: u16,
    pub offset: u64,
    pub size: u32,
    /// Free entries: (offset in table, size).
    pub free: Vec<(u32, u32)>,
}

/// Counts of what the file holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub keys: usize,
    pub free_entries: usize,
    pub file_objects: usize,
    pub checksums_verified: usize,
}

/// An open HyperVStorage file.
pub struct Store {
    pub(crate) src: Source,
    pub(crate) header: FileHeader,
    /// Which copy (0 or 1) is active.
    pub(crate) header_slot: usize,
    pub(crate) headers: [Option<FileHeader>; 2],
    pub(crate) log: LogState,
    /// The log records applied at open (in memory or on disk).
    pub(crate) replayed: usize,
    pub(crate) objects: Vec<Object>,
    pub(crate) object_tables: Vec<ObjectTable>,
    pub(crate) key_tables: Vec<KeyTable>,
    pub(crate) tree: Tree,
    pub(crate) problems: Vec<Problem>,
    pub(crate) stats: Stats,
    pub(crate) options: OpenOptions,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("name", &self.src.name)
            .field("header", &self.header)
            .field("keys", &self.stats.keys)
            .finish()
    }
}

/// Serial-number comparison of u16 sequences: true when `a` is newer.
fn newer(a: u16, b: u16) -> bool {
    (a.wrapping_sub(b) as i16) > 0
}

impl Store {
    /// Opens a file read-only (a pending log is applied in memory).
    pub fn open(path: impl AsRef<Path>) -> Result<Store> {
        Store::open_with(path, OpenOptions::default())
    }

    /// Opens a file with options.
    pub fn open_with(path: impl AsRef<Path>, options: OpenOptions) -> Result<Store> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(options.write)
            .open(path)
            .map_err(|e| Error::open(&name, e))?;
        Store::from_storage(Arc::new(file), &name, options)
    }

    /// Opens storage that holds a file; `name` is used in errors.
    pub fn from_storage(
        storage: Arc<dyn Storage>,
        name: &str,
        options: OpenOptions,
    ) -> Result<Store> {
        let mut src = Source::new(storage, name)?;
        let mut problems = Vec::new();
        let (header, header_slot, headers) = read_headers(&src, &mut problems)?;
        let (log, records) = match replay_log::read(&src, &header) {
            Ok(r) => r,
            Err(e) if options.lenient => {
                problems.push(problem_of(&e));
                (
                    LogState {
                        offset: header.log_offset,
                        size: header.log_size,
                        header_size: header.log_header_size,
                        header: LogHeader::new(0),
                        pending: Vec::new(),
                    },
                    Vec::new(),
                )
            }
            Err(e) => return Err(e),
        };
        let replayed = records.len();
        if !records.is_empty() {
            if options.write {
                apply_to_disk(&src, &log, &records)?;
                src = Source::new(src.storage.clone(), name)?;
            } else if options.no_replay {
                return Err(Error::LogNeedsReplay {
                    path: name.to_string(),
                    entries: log.header.entry_count,
                });
            } else {
                src.set_overlay(records);
            }
        }
        let mut store = Store {
            src,
            header,
            header_slot,
            headers,
            log,
            replayed,
            objects: Vec::new(),
            object_tables: Vec::new(),
            key_tables: Vec::new(),
            tree: Tree::new(),
            problems,
            stats: Stats::default(),
            options,
        };
        store.stats.checksums_verified =
            1 + usize::from(store.log.header.max_entries > 0) + replayed * 2;
        store.read_objects()?;
        store.read_keys()?;
        Ok(store)
    }

    /// The file name used in messages.
    pub fn name(&self) -> &str {
        &self.src.name
    }

    /// The key tree.
    pub fn tree(&self) -> &Tree {
        &self.tree
    }

    /// The active file header.
    pub fn header(&self) -> &FileHeader {
        &self.header
    }

    /// Which header copy is active, and both copies (`None` = invalid).
    pub fn headers(&self) -> (usize, [Option<FileHeader>; 2]) {
        (self.header_slot, self.headers)
    }

    /// The replay log as found.
    pub fn log(&self) -> &LogState {
        &self.log
    }

    /// Log records applied when opening (in memory or, writable, on disk).
    pub fn replayed_records(&self) -> usize {
        self.replayed
    }

    pub fn objects(&self) -> &[Object] {
        &self.objects
    }

    pub fn object_tables(&self) -> &[ObjectTable] {
        &self.object_tables
    }

    pub fn key_tables(&self) -> &[KeyTable] {
        &self.key_tables
    }

    /// Checks that failed (lenient opens) and remarks.
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Reads `buf.len()` bytes at `offset` of the file as parsed (replayed
    /// records included).
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.src.read_at(buf, offset, "data")
    }

    /// The file itself when nothing is laid over it (no replayed log
    /// records), so callers may copy file-object bytes straight from it
    /// (`copy_file_range`).
    pub fn direct_file(&self) -> Option<&std::fs::File> {
        if self.src.has_overlay() {
            None
        } else {
            self.src.storage.as_file()
        }
    }

    /// The value of `id`, with a file-object value read into memory.
    pub fn value(&self, id: KeyId) -> Result<Value> {
        match &self.tree.key(id).value {
            Value::Blob(b) => {
                let bytes = self.src.read_vec(b.offset, b.len as usize, "file object")?;
                Ok(match b.kind {
                    KeyType::String => Value::String(utf16_to_string(&bytes).0),
                    _ => Value::Array(bytes),
                })
            }
            v => Ok(v.clone()),
        }
    }

    /// The tree with every file-object value read into memory, so it can
    /// be changed and written elsewhere without this store. For files whose
    /// values are small (configurations); a saved state's RamBlocks would
    /// all be read.
    pub fn resolved_tree(&self) -> Result<Tree> {
        let mut t = self.tree.clone();
        for id in t.walk() {
            if matches!(t.key(id).value, Value::Blob(_)) {
                let v = self.value(id)?;
                t.key_mut(id).value = v;
            }
        }
        Ok(t)
    }

    /// A reader over a file-object value (streams; nothing is loaded whole).
    pub fn blob_reader(&self, blob: Blob) -> BlobReader<'_> {
        BlobReader {
            store: self,
            blob,
            pos: 0,
        }
    }

    fn lenient(&mut self, e: Error) -> Result<()> {
        if self.options.lenient {
            self.problems.push(problem_of(&e));
            Ok(())
        } else {
            Err(e)
        }
    }

    /// §2.3: walks the chain of object tables from 0x2000.
    fn read_objects(&mut self) -> Result<()> {
        let name = self.src.name.clone();
        let align = u64::from(self.header.alignment);
        let mut next = Some((ROOT_OBJECT_TABLE, align));
        let mut seen = HashSet::new();
        let max_tables = self.src.len() / align + 1;
        while let Some((at, room)) = next.take() {
            if !seen.insert(at) || seen.len() as u64 > max_tables {
                return Err(Error::corrupt(
                    &name,
                    "object table",
                    at,
                    "the chain of object tables loops",
                ));
            }
            let hb = self
                .src
                .read_vec(at, OBJECT_TABLE_HEADER_LEN, "object table")?;
            if u32_at(&hb, 0) != OBJECT_TABLE_SIGNATURE {
                return Err(Error::corrupt(
                    &name,
                    "object table",
                    at,
                    format!("wrong signature {:#010x}", u32_at(&hb, 0)),
                ));
            }
            let cap = u32_at(&hb, 4);
            if u64::from(cap) * OBJECT_ENTRY_LEN as u64 + OBJECT_TABLE_HEADER_LEN as u64 > room {
                return Err(Error::corrupt(
                    &name,
                    "object table",
                    at,
                    format!("{cap} entries do not fit its {room:#x}-byte object"),
                ));
            }
            let body = self.src.read_vec(
                at + OBJECT_TABLE_HEADER_LEN as u64,
                cap as usize * OBJECT_ENTRY_LEN,
                "object table entries",
            )?;
            let mut table = ObjectTable {
                offset: at,
                capacity: cap,
                empty_slots: Vec::new(),
            };
            for slot in 0..cap {
                let off =
                    at + OBJECT_TABLE_HEADER_LEN as u64 + u64::from(slot) * OBJECT_ENTRY_LEN as u64;
                let raw = &body[slot as usize * OBJECT_ENTRY_LEN..][..OBJECT_ENTRY_LEN];
                let (e, ok) = ObjectEntry::decode(raw);
                self.stats.checksums_verified += 1;
                if !ok {
                    self.lenient(Error::corrupt(
                        &name,
                        "object table entry",
                        off,
                        "checksum mismatch",
                    ))?;
                    continue;
                }
                let last = slot + 1 == cap;
                match e.kind {
                    ObjectType::Empty => {
                        if !last {
                            table.empty_slots.push(slot);
                        }
                        continue;
                    }
                    ObjectType::ObjectTable => {
                        if next.is_some() {
                            self.lenient(Error::corrupt(
                                &name,
                                "object table entry",
                                off,
                                "a second chain link in one table",
                            ))?;
                            continue;
                        }
                        next = Some((e.offset, u64::from(e.size)));
                    }
                    _ => {}
                }
                self.objects.push(Object {
                    entry: e,
                    table: at,
                    slot,
                });
            }
            self.object_tables.push(table);
        }
        // Objects must not overlap one another, the headers, or the log.
        let mut spans: Vec<(u64, u64, &'static str)> = vec![
            (
                0,
                ROOT_OBJECT_TABLE + align,
                "file headers and root object table",
            ),
            (
                self.log.offset,
                // Unchecked when a lenient open could not use the log.
                self.log.offset.saturating_add(self.log.size),
                "replay log",
            ),
        ];
        for o in &self.objects {
            let end = o
                .entry
                .offset
                .checked_add(u64::from(o.entry.size))
                .ok_or_else(|| {
                    Error::corrupt(
                        &name,
                        "object table entry",
                        o.table,
                        "object size overflows",
                    )
                })?;
            if o.entry.size == 0 {
                return Err(Error::corrupt(
                    &name,
                    "object table entry",
                    o.table,
                    format!("object at {:#x} has size 0", o.entry.offset),
                ));
            }
            spans.push((o.entry.offset, end, kind_name(o.entry.kind)));
        }
        spans.sort();
        for w in spans.windows(2) {
            if w[1].0 < w[0].1 {
                let e = Error::corrupt(
                    &name,
                    "object table",
                    w[1].0,
                    format!(
                        "{} at {:#x}..{:#x} overlaps {} at {:#x}..{:#x}",
                        w[1].2, w[1].0, w[1].1, w[0].2, w[0].0, w[0].1
                    ),
                );
                self.lenient(e)?;
            }
        }
        Ok(())
    }

    /// §2.4–2.7: reads every key table and builds the tree.
    fn read_keys(&mut self) -> Result<()> {
        let name = self.src.name.clone();
        // Key tables by index, newest sequence wins.
        let mut by_index: HashMap<u16, (KeyTable, Vec<u8>)> = HashMap::new();
        let tables: Vec<Object> = self
            .objects
            .iter()
            .copied()
            .filter(|o| o.entry.kind == ObjectType::KeyTable)
            .collect();
        for o in tables {
            let at = o.entry.offset;
            if o.entry.size > MAX_KEY_TABLE || (o.entry.size as usize) < KEY_TABLE_HEADER_LEN {
                self.lenient(Error::corrupt(
                    &name,
                    "key table",
                    at,
                    format!("size {:#x} out of range", o.entry.size),
                ))?;
                continue;
            }
            let bytes = match self.src.read_vec(at, o.entry.size as usize, "key table") {
                Ok(b) => b,
                Err(e) => {
                    self.lenient(e)?;
                    continue;
                }
            };
            let Some((h, ok)) = KeyTableHeader::decode(&bytes) else {
                self.lenient(Error::corrupt(&name, "key table", at, "wrong signature"))?;
                continue;
            };
            self.stats.checksums_verified += 1;
            if !ok {
                self.lenient(Error::corrupt(
                    &name,
                    "key table header",
                    at,
                    "checksum mismatch",
                ))?;
            }
            if h.index == 0 {
                self.lenient(Error::corrupt(
                    &name,
                    "key table header",
                    at,
                    "table index 0 is reserved for the root",
                ))?;
                continue;
            }
            let t = KeyTable {
                index: h.index,
                sequence: h.sequence,
                offset: at,
                size: o.entry.size,
                free: Vec::new(),
            };
            match by_index.get(&h.index) {
                Some((old, _)) if !newer(h.sequence, old.sequence) => {}
                _ => {
                    by_index.insert(h.index, (t, bytes));
                }
            }
        }
        let mut indexes: Vec<u16> = by_index.keys().copied().collect();
        indexes.sort();
        // Parse entries; remember (table, offset) -> key id.
        let mut keys: Vec<Key> = vec![Tree::new().key(Tree::ROOT).clone()];
        let mut parent_ref: Vec<(u16, u32)> = vec![(0, 0)];
        let mut at_location: HashMap<(u16, u32), KeyId> = HashMap::new();
        for idx in indexes {
            let (mut table, bytes) = by_index.remove(&idx).expect("present");
            self.parse_table(
                &mut table,
                &bytes,
                &mut keys,
                &mut parent_ref,
                &mut at_location,
            )?;
            self.key_tables.push(table);
        }
        // Resolve parents.
        let n = keys.len();
        let mut ok_parent = vec![true; n];
        for id in 1..n {
            let (pt, po) = parent_ref[id];
            let loc = keys[id].location.expect("read keys have a location");
            let at = self.table_offset(loc.table) + u64::from(loc.entry_offset);
            if (pt, po) == (0, 0) {
                keys[id].parent = Some(Tree::ROOT);
                continue;
            }
            match at_location.get(&(pt, po)) {
                Some(&p) if keys[p].value == Value::Node => keys[id].parent = Some(p),
                Some(_) => {
                    ok_parent[id] = false;
                    self.lenient(Error::corrupt(
                        &name,
                        "key entry",
                        at,
                        format!(
                            "{:?}: parent (table {pt}, offset {po:#x}) is not a node",
                            keys[id].name
                        ),
                    ))?;
                }
                None => {
                    ok_parent[id] = false;
                    self.lenient(Error::corrupt(&name, "key entry", at, format!("{:?}: parent reference (table {pt}, offset {po:#x}) points at no entry", keys[id].name)))?;
                }
            }
        }
        // Keys that do not reach the root (cycles, broken parents) are dropped.
        // 0 not yet known, 1 reaches the root, 2 does not, 3 on the path
        // being followed (meeting it again means a cycle).
        let mut state = vec![0u8; n];
        state[0] = 1;
        for id in 1..n {
            let mut path = Vec::new();
            let mut k = id;
            let mut cycle = false;
            let verdict = loop {
                if state[k] == 3 {
                    cycle = true;
                    break 2;
                }
                if state[k] != 0 {
                    break state[k];
                }
                if !ok_parent[k] {
                    break 2;
                }
                state[k] = 3;
                path.push(k);
                match keys[k].parent {
                    Some(p) => k = p,
                    None => break 2,
                }
            };
            for p in path {
                state[p] = verdict;
            }
            if cycle {
                let loc = keys[id].location.expect("read keys have a location");
                let at = self.table_offset(loc.table) + u64::from(loc.entry_offset);
                self.lenient(Error::corrupt(
                    &name,
                    "key entry",
                    at,
                    format!("{:?}: its parents form a cycle", keys[id].name),
                ))?;
            }
        }
        let keep: Vec<bool> = state.iter().map(|&s| s == 1).collect();
        let mut remap = vec![usize::MAX; n];
        let mut kept = Vec::with_capacity(n);
        for (id, k) in keys.into_iter().enumerate() {
            if keep[id] {
                remap[id] = kept.len();
                kept.push(k);
            }
        }
        for k in kept.iter_mut() {
            k.parent = k.parent.map(|p| remap[p]);
        }
        self.tree = Tree::from_keys(kept);
        self.stats.keys = self.tree.len() - 1;
        // File objects must be declared in the object tables.
        let declared: Vec<(u64, u64)> = self
            .objects
            .iter()
            .filter(|o| o.entry.kind == ObjectType::FileObject)
            .map(|o| (o.entry.offset, o.entry.offset + u64::from(o.entry.size)))
            .collect();
        self.stats.file_objects = declared.len();
        for id in self.tree.walk() {
            if let Value::Blob(b) = self.tree.key(id).value {
                // An offset near u64::MAX (from the file) must not overflow.
                let end = b.offset.saturating_add(u64::from(b.len));
                if !declared.iter().any(|&(s, e)| s <= b.offset && end <= e) {
                    let e = Error::corrupt(
                        &name,
                        "file object",
                        b.offset,
                        format!(
                            "{}: {} bytes not inside any declared file object",
                            self.tree.path(id),
                            b.len
                        ),
                    );
                    self.lenient(e)?;
                }
            }
        }
        Ok(())
    }

    pub(crate) fn table_offset(&self, index: u16) -> u64 {
        self.key_tables
            .iter()
            .find(|t| t.index == index)
            .map_or(0, |t| t.offset)
    }

    fn parse_table(
        &mut self,
        table: &mut KeyTable,
        bytes: &[u8],
        keys: &mut Vec<Key>,
        parent_ref: &mut Vec<(u16, u32)>,
        at_location: &mut HashMap<(u16, u32), KeyId>,
    ) -> Result<()> {
        let name = self.src.name.clone();
        let mut off = KEY_TABLE_HEADER_LEN;
        while off + KEY_ENTRY_HEADER_LEN <= bytes.len() {
            let at = table.offset + off as u64;
            let h = KeyEntryHeader::decode(&bytes[off..]);
            if h.size == 0 {
                break;
            }
            let size = h.size as usize;
            if size < KEY_ENTRY_HEADER_LEN || off + size > bytes.len() {
                self.lenient(Error::corrupt(
                    &name,
                    "key entry",
                    at,
                    format!("size {size:#x} runs past the table"),
                ))?;
                break;
            }
            let entry = &bytes[off..off + size];
            match decode_entry(&h, entry) {
                Err(why) => {
                    self.lenient(Error::corrupt(&name, "key entry", at, why))?;
                }
                Ok(None) => {
                    self.stats.free_entries += 1;
                    table.free.push((off as u32, h.size));
                }
                Ok(Some((key_name, value, meaningful, bad_utf16))) => {
                    self.stats.checksums_verified += 1;
                    if crc_without(&entry[..meaningful], 0x0C) != h.checksum {
                        self.lenient(Error::corrupt(
                            &name,
                            "key entry",
                            at,
                            format!("{key_name:?}: checksum mismatch"),
                        ))?;
                    }
                    if bad_utf16 {
                        self.problems.push(Problem {
                            offset: at,
                            message: format!(
                                "{key_name:?}: string is not valid UTF-16; replaced bad units"
                            ),
                        });
                    }
                    let mut k = Tree::key_template(key_name, value);
                    k.flags = h.flags & !FLAG_FILE_OBJECT;
                    k.insertion = h.insertion;
                    if k.value == Value::Node {
                        let v = &entry[KEY_ENTRY_HEADER_LEN + h.name_len as usize..];
                        k.change_tracking = u64_at(v, 0);
                        k.next_insertion = u32_at(v, 8);
                    }
                    k.location = Some(Location {
                        table: table.index,
                        entry_offset: off as u32,
                        size: h.size,
                    });
                    at_location.insert((table.index, off as u32), keys.len());
                    parent_ref.push((h.parent_table, h.parent_offset));
                    keys.push(k);
                }
            }
            off += size;
        }
        Ok(())
    }
}

/// Decodes one entry: `Ok(None)` for Free, else the name, the value, the
/// meaningful length (checksummed bytes) and whether a string had bad
/// UTF-16.
fn decode_entry(
    h: &KeyEntryHeader,
    e: &[u8],
) -> Result<Option<(String, Value, usize, bool)>, String> {
    let kind = KeyType::from_u8(h.kind).ok_or_else(|| format!("unknown key type {}", h.kind))?;
    if kind == KeyType::Free {
        return Ok(None);
    }
    let nl = h.name_len as usize;
    if nl == 0 || KEY_ENTRY_HEADER_LEN + nl > e.len() {
        return Err(format!("name length {nl} does not fit the entry"));
    }
    let raw_name = &e[KEY_ENTRY_HEADER_LEN..KEY_ENTRY_HEADER_LEN + nl];
    let raw_name = raw_name.strip_suffix(&[0]).unwrap_or(raw_name);
    let key_name = String::from_utf8_lossy(raw_name).into_owned();
    let v = &e[KEY_ENTRY_HEADER_LEN + nl..];
    let need = |n: usize| {
        if v.len() < n {
            Err(format!(
                "{key_name:?}: value needs {n} bytes, entry has {}",
                v.len()
            ))
        } else {
            Ok(())
        }
    };
    let mut bad = false;
    let (value, vlen) = if h.flags & FLAG_FILE_OBJECT != 0 {
        if !matches!(kind, KeyType::String | KeyType::Array) {
            return Err(format!(
                "{key_name:?}: a {} value cannot live in a file object",
                kind.name()
            ));
        }
        need(12)?;
        (
            Value::Blob(Blob {
                kind,
                len: u32_at(v, 0),
                offset: u64_at(v, 4),
            }),
            12,
        )
    } else {
        match kind {
            KeyType::Int => {
                need(8)?;
                (Value::Int(u64_at(v, 0) as i64), 8)
            }
            KeyType::UInt => {
                need(8)?;
                (Value::UInt(u64_at(v, 0)), 8)
            }
            KeyType::Double => {
                need(8)?;
                (Value::Double(f64::from_bits(u64_at(v, 0))), 8)
            }
            KeyType::Bool => {
                need(4)?;
                (Value::Bool(u32_at(v, 0) != 0), 4)
            }
            KeyType::Node => {
                need(12)?;
                (Value::Node, 12)
            }
            KeyType::String | KeyType::Array => {
                need(4)?;
                let n = u32_at(v, 0) as usize;
                need(4usize.saturating_add(n))?;
                let data = &v[4..4 + n];
                let val = if kind == KeyType::String {
                    let (s, b) = utf16_to_string(data);
                    bad = b;
                    Value::String(s)
                } else {
                    Value::Array(data.to_vec())
                };
                (val, 4 + n)
            }
            KeyType::Free => unreachable!("handled above"),
        }
    };
    Ok(Some((
        key_name,
        value,
        KEY_ENTRY_HEADER_LEN + nl + vlen,
        bad,
    )))
}

/// Decodes UTF-16LE, dropping one trailing NUL; says whether bad units
/// were replaced.
pub(crate) fn utf16_to_string(b: &[u8]) -> (String, bool) {
    let mut units: Vec<u16> = b
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    if units.last() == Some(&0) {
        units.pop();
    }
    let mut bad = b.len() & 1 == 1;
    let s: String = char::decode_utf16(units)
        .map(|r| {
            r.unwrap_or_else(|_| {
                bad = true;
                char::REPLACEMENT_CHARACTER
            })
        })
        .collect();
    (s, bad)
}

fn kind_name(k: ObjectType) -> &'static str {
    match k {
        ObjectType::Empty => "empty object",
        ObjectType::ObjectTable => "object table",
        ObjectType::KeyTable => "key table",
        ObjectType::FileObject => "file object",
        ObjectType::Free => "free object",
        ObjectType::Other(_) => "object",
    }
}

fn problem_of(e: &Error) -> Problem {
    let offset = match e {
        Error::Corrupt { offset, .. } | Error::Io { offset, .. } => *offset,
        _ => 0,
    };
    Problem {
        offset,
        message: e.to_string(),
    }
}

/// §2.2: both copies; the valid one with the newer sequence wins.
fn read_headers(
    src: &Source,
    problems: &mut Vec<Problem>,
) -> Result<(FileHeader, usize, [Option<FileHeader>; 2])> {
    let mut hs = [None, None];
    for (i, &off) in HEADER_OFFSETS.iter().enumerate() {
        if off + HEADER_LEN as u64 <= src.len() {
            let b = src.read_vec(off, HEADER_LEN, "file header")?;
            hs[i] = FileHeader::decode(b.as_slice().try_into().expect("46 bytes"));
            if hs[i].is_none() {
                problems.push(Problem {
                    offset: off,
                    message: format!(
                        "{}: file header copy {i} at {off:#x} is invalid (signature or checksum)",
                        src.name
                    ),
                });
            }
        }
    }
    let (slot, h) = match (hs[0], hs[1]) {
        (Some(a), Some(b)) => {
            if newer(b.sequence, a.sequence) {
                (1, b)
            } else {
                (0, a)
            }
        }
        (Some(a), None) => (0, a),
        (None, Some(b)) => (1, b),
        (None, None) => return Err(Error::corrupt(
            &src.name,
            "file header",
            0,
            "neither header copy has a valid signature and checksum (not a HyperVStorage file?)",
        )),
    };
    if h.format_version != FORMAT_VERSION {
        return Err(Error::Unsupported {
            path: src.name.clone(),
            reason: format!(
                "format version {:#06x} (only 0x0400 is known)",
                h.format_version
            ),
        });
    }
    if !(4096..=65536).contains(&h.alignment) || !h.alignment.is_power_of_two() {
        return Err(Error::corrupt(
            &src.name,
            "file header",
            HEADER_OFFSETS[slot],
            format!(
                "data alignment {:#x} is not a power of two from 4 KiB to 64 KiB",
                h.alignment
            ),
        ));
    }
    Ok((h, slot, hs))
}

/// Writes the pending records to their destinations, then marks the log
/// clean (each step flushed).
pub(crate) fn apply_to_disk(
    src: &Source,
    log: &LogState,
    records: &[(u64, Vec<u8>)],
) -> Result<()> {
    let st = &src.storage;
    let name = &src.name;
    for (off, data) in records {
        st.write_at(data, *off)
            .map_err(|e| Error::io(name, *off, e))?;
    }
    st.flush().map_err(|e| Error::io(name, 0, e))?;
    let mut h = log.header;
    h.entry_count = 0;
    st.write_at(&h.encode(), log.offset)
        .map_err(|e| Error::io(name, log.offset, e))?;
    st.flush().map_err(|e| Error::io(name, log.offset, e))?;
    Ok(())
}

/// Streams a file-object value.
pub struct BlobReader<'a> {
    store: &'a Store,
    blob: Blob,
    pos: u64,
}

impl io::Read for BlobReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = u64::from(self.blob.len).saturating_sub(self.pos);
        let n = (buf.len() as u64).min(left) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.store
            .src
            .read_at(
                &mut buf[..n],
                self.blob.offset.saturating_add(self.pos),
                "file object",
            )
            .map_err(io::Error::other)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl io::Seek for BlobReader<'_> {
    fn seek(&mut self, to: io::SeekFrom) -> io::Result<u64> {
        let len = i128::from(self.blob.len);
        let p = match to {
            io::SeekFrom::Start(o) => i128::from(o),
            io::SeekFrom::End(d) => len + i128::from(d),
            io::SeekFrom::Current(d) => i128::from(self.pos) + i128::from(d),
        };
        if p < 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start",
            ));
        }
        self.pos = p as u64;
        Ok(self.pos)
    }
}
