//! Transactional edits (§2.8): every change to live structures goes
//! through the replay log, so a crash leaves the old tree or the new one.
//!
//! A transaction: (1) new space (a new key table, object table or file
//! object) is written past everything the file uses, where nothing points
//! yet, and flushed; (2) the new bytes of every changed range of live
//! structures go to the log data area and their records after the log
//! header, flushed; (3) the log header is rewritten counting the records,
//! flushed — the commit point; (4) the records are applied, flushed; (5) the
//! log header is rewritten with a count of 0, flushed. An open after a
//! crash in (4) or (5) replays the records again.

use crate::error::{Error, Result};
use crate::format::*;
use crate::key_entry::{self, Stored, SLACK};
use crate::store::{OpenOptions, Store};
use crate::tree::{KeyId, Tree, Value};
use crate::writer::ALIGN;
use std::collections::BTreeMap;

/// A key table being changed: its bytes and free entries.
struct TablePage {
    index: u16,
    offset: u64,
    old: Vec<u8>,
    new: Vec<u8>,
    free: Vec<(u32, u32)>,
    fresh: bool,
}

struct Txn<'a> {
    store: &'a Store,
    pages: BTreeMap<u16, TablePage>,
    /// Object-table entry writes: (file offset, entry bytes).
    object_writes: Vec<(u64, ObjectEntry)>,
    /// Empty object-table slots still free: (table offset, slot).
    empty_slots: Vec<(u64, u32)>,
    /// Object tables added in this transaction: (offset, entries).
    new_object_tables: Vec<(u64, Vec<ObjectEntry>)>,
    /// Fresh regions (written before the commit).
    fresh: Vec<(u64, Vec<u8>)>,
    alloc_end: u64,
}

impl Store {
    /// Sets the value at `path` (creating it, and missing nodes on the
    /// way, when it does not exist) in one transaction. The store must be
    /// open for writing; afterwards it shows the new tree.
    pub fn set(&mut self, path: &str, value: Value) -> Result<()> {
        if !self.options.write {
            return Err(Error::ReadOnly {
                path: self.name().to_string(),
            });
        }
        if matches!(value, Value::Node | Value::Blob(_)) {
            return Err(Error::Invalid("only leaf values can be set".into()));
        }
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        if segs.is_empty() {
            return Err(Error::Invalid("an empty key path".into()));
        }
        // The deepest existing node on the path.
        let mut cur = Tree::ROOT;
        let mut depth = 0;
        while depth < segs.len() {
            let prefix = format!(
                "{}/{}",
                self.tree.path(cur).trim_end_matches('/'),
                segs[depth]
            );
            match self.tree.find_all(&prefix).len() {
                0 => break,
                1 => {
                    cur = self.tree.find(self.name(), &prefix)?;
                    depth += 1;
                }
                n => {
                    return Err(Error::Ambiguous {
                        path: self.name().to_string(),
                        key: prefix,
                        count: n,
                    })
                }
            }
        }
        let mut txn = Txn::new(self)?;
        if depth == segs.len() {
            if self.tree.key(cur).value == Value::Node {
                return Err(Error::Invalid(format!(
                    "{path} is a node; only leaf values can be set"
                )));
            }
            txn.replace(cur, &value)?;
        } else {
            if self.tree.key(cur).value != Value::Node {
                return Err(Error::Invalid(format!(
                    "{} is not a node",
                    self.tree.path(cur)
                )));
            }
            txn.create(cur, &segs[depth..], &value)?;
        }
        let (fresh, records) = txn.finish()?;
        self.commit(fresh, records)
    }

    /// Writes a prepared transaction as described in the module docs, then
    /// reloads the store.
    fn commit(&mut self, fresh: Vec<(u64, Vec<u8>)>, records: Vec<(u64, Vec<u8>)>) -> Result<()> {
        let st = self.src.storage.clone();
        let name = self.name().to_string();
        let io = |off: u64| {
            let name = name.clone();
            move |e| Error::io(&name, off, e)
        };
        let log = self.log.clone();
        let room = log.size.saturating_sub(u64::from(log.header_size));
        let total: u64 = records.iter().map(|(_, d)| d.len() as u64).sum();
        let max = u64::from(log.header.max_entries).min(
            ((log.header_size as usize).saturating_sub(LOG_HEADER_LEN) / LOG_ENTRY_LEN) as u64,
        );
        if log.header.max_entries == 0 {
            return Err(Error::Unsupported {
                path: self.name().to_string(),
                reason: "the replay log is unusable (damaged or without room for records); it cannot carry an edit".into(),
            });
        }
        if total > room || records.len() as u64 > max {
            return Err(Error::Unsupported {
                path: self.name().to_string(),
                reason: format!(
                    "the edit needs {} log records with {total} bytes; the replay log holds {max} records and {room} bytes",
                    records.len()
                ),
            });
        }
        if !fresh.is_empty() {
            for (off, d) in &fresh {
                st.write_at(d, *off).map_err(io(*off))?;
            }
            st.flush().map_err(io(0))?;
        }
        let mut entries = Vec::with_capacity(records.len() * LOG_ENTRY_LEN);
        let mut at = u64::from(log.header_size);
        for (dest, d) in &records {
            st.write_at(d, log.offset + at)
                .map_err(io(log.offset + at))?;
            let e = LogEntry {
                dest_offset: *dest,
                dest_size: d.len() as u32,
                offset_in_log: at,
                data_checksum: crc32fast::hash(d),
            };
            entries.extend_from_slice(&e.encode());
            at += d.len() as u64;
        }
        let eoff = log.offset + LOG_HEADER_LEN as u64;
        st.write_at(&entries, eoff).map_err(io(eoff))?;
        st.flush().map_err(io(eoff))?;
        let mut h = log.header;
        h.entry_count = records.len() as u32;
        st.write_at(&h.encode(), log.offset)
            .map_err(io(log.offset))?;
        st.flush().map_err(io(log.offset))?;
        crate::store::apply_to_disk(&self.src, &self.log, &records)?;
        let options = OpenOptions {
            write: true,
            ..self.options
        };
        *self = Store::from_storage(st, &self.src.name, options)?;
        Ok(())
    }
}

impl<'a> Txn<'a> {
    fn new(store: &'a Store) -> Result<Txn<'a>> {
        let mut end = store.src.len().max(store.log.offset + store.log.size);
        for o in store.objects() {
            end = end.max(o.entry.offset + u64::from(o.entry.size));
        }
        let empty_slots = store
            .object_tables()
            .iter()
            .flat_map(|t| t.empty_slots.iter().map(move |&s| (t.offset, s)))
            .collect();
        Ok(Txn {
            store,
            pages: BTreeMap::new(),
            object_writes: Vec::new(),
            empty_slots,
            new_object_tables: Vec::new(),
            fresh: Vec::new(),
            alloc_end: end.div_ceil(ALIGN) * ALIGN,
        })
    }

    fn alloc(&mut self, len: u64) -> u64 {
        let at = self.alloc_end;
        self.alloc_end += len.div_ceil(ALIGN) * ALIGN;
        at
    }

    fn page(&mut self, index: u16) -> Result<&mut TablePage> {
        if !self.pages.contains_key(&index) {
            let t = self
                .store
                .key_tables()
                .iter()
                .find(|t| t.index == index)
                .ok_or_else(|| Error::Invalid(format!("key table {index} is not in use")))?;
            let bytes = self
                .store
                .src
                .read_vec(t.offset, t.size as usize, "key table")?;
            self.pages.insert(
                index,
                TablePage {
                    index,
                    offset: t.offset,
                    old: bytes.clone(),
                    new: bytes,
                    free: t.free.clone(),
                    fresh: false,
                },
            );
        }
        Ok(self.pages.get_mut(&index).expect("inserted"))
    }

    /// Records a new object in an Empty slot (adding an object table to
    /// the chain when none is left).
    fn add_object(&mut self, e: ObjectEntry) -> Result<()> {
        if let Some((t, slot)) = self.empty_slots.pop() {
            if let Some(nt) = self.new_object_tables.iter_mut().find(|(o, _)| *o == t) {
                nt.1[slot as usize] = e;
            } else {
                let off = t + (OBJECT_TABLE_HEADER_LEN + slot as usize * OBJECT_ENTRY_LEN) as u64;
                self.object_writes.push((off, e));
            }
            return Ok(());
        }
        // Chain a new table from the last one's reserved last slot.
        let last = self
            .new_object_tables
            .last()
            .map(|(o, _)| *o)
            .or_else(|| self.store.object_tables().last().map(|t| t.offset))
            .ok_or_else(|| Error::Invalid("no object table".into()))?;
        let cap = crate::writer::OBJECT_TABLE_CAPACITY;
        let at = self.alloc(ALIGN);
        let link = ObjectEntry {
            kind: ObjectType::ObjectTable,
            offset: at,
            size: ALIGN as u32,
            flags: OBJECT_FLAG_REQUIRED,
        };
        if let Some(nt) = self.new_object_tables.iter_mut().find(|(o, _)| *o == last) {
            let n = nt.1.len();
            nt.1[n - 1] = link;
        } else {
            let last_cap = self
                .store
                .object_tables()
                .last()
                .map_or(cap, |t| t.capacity);
            let off = last
                + (OBJECT_TABLE_HEADER_LEN + (last_cap as usize - 1) * OBJECT_ENTRY_LEN) as u64;
            self.object_writes.push((off, link));
        }
        self.new_object_tables
            .push((at, vec![ObjectEntry::EMPTY; cap as usize]));
        for slot in (0..cap - 1).rev() {
            self.empty_slots.push((at, slot));
        }
        self.add_object(e)
    }

    /// Finds room for an entry of `need` bytes: a Free entry, else a new
    /// key table. Returns (table index, offset, size given).
    fn place(&mut self, need: usize) -> Result<(u16, u32, usize)> {
        let indexes: Vec<u16> = self
            .store
            .key_tables()
            .iter()
            .map(|t| t.index)
            .chain(self.pages.values().filter(|p| p.fresh).map(|p| p.index))
            .collect();
        for idx in indexes {
            let fits = |&(_, s): &(u32, u32)| {
                let s = s as usize;
                s == need || s >= need + MIN_FREE_ENTRY
            };
            let has = if let Some(p) = self.pages.get(&idx) {
                p.free.iter().any(fits)
            } else {
                self.store
                    .key_tables()
                    .iter()
                    .find(|t| t.index == idx)
                    .is_some_and(|t| t.free.iter().any(fits))
            };
            if !has {
                continue;
            }
            let p = self.page(idx)?;
            let i = p.free.iter().position(fits).expect("checked");
            let (off, size) = p.free.remove(i);
            let (off, size) = (off as usize, size as usize);
            let given = if size == need { size } else { need };
            if size > need {
                let rest = size - need;
                p.new[off + need..off + size].copy_from_slice(&key_entry::encode_free(rest));
                p.free.push(((off + need) as u32, rest as u32));
            }
            return Ok((idx, off as u32, given));
        }
        // A new key table.
        let index = self
            .store
            .key_tables()
            .iter()
            .map(|t| t.index)
            .chain(self.pages.keys().copied())
            .max()
            .unwrap_or(0)
            .checked_add(1)
            .ok_or_else(|| Error::Layout("no key table index left".into()))?;
        let at = self.alloc(ALIGN);
        let cap = ALIGN as usize;
        let mut page = vec![0u8; cap];
        page[KEY_TABLE_HEADER_LEN..]
            .copy_from_slice(&key_entry::encode_free(cap - KEY_TABLE_HEADER_LEN));
        self.pages.insert(
            index,
            TablePage {
                index,
                offset: at,
                old: Vec::new(),
                new: page,
                free: vec![(
                    KEY_TABLE_HEADER_LEN as u32,
                    (cap - KEY_TABLE_HEADER_LEN) as u32,
                )],
                fresh: true,
            },
        );
        self.add_object(ObjectEntry {
            kind: ObjectType::KeyTable,
            offset: at,
            size: ALIGN as u32,
            flags: OBJECT_FLAG_REQUIRED,
        })?;
        self.place(need)
    }

    /// Value bytes for an entry, with a large value written to a new file
    /// object.
    fn value_bytes(&mut self, value: &Value, next: u32, ct: u64) -> Result<(Vec<u8>, bool)> {
        Ok(match key_entry::stored(value, next, ct)? {
            Stored::Inline(v) => (v, false),
            Stored::Large(_, b) => {
                let at = self.alloc(b.len() as u64);
                let aligned = (b.len() as u64).div_ceil(ALIGN) * ALIGN;
                let v = key_entry::file_object_value(b.len() as u32, at);
                let mut d = b;
                d.resize(aligned as usize, 0);
                self.fresh.push((at, d));
                self.add_object(ObjectEntry {
                    kind: ObjectType::FileObject,
                    offset: at,
                    size: aligned as u32,
                    flags: OBJECT_FLAG_REQUIRED,
                })?;
                (v, true)
            }
        })
    }

    /// Writes an entry for `key` (with `value`) at a place with room.
    fn put(
        &mut self,
        key: &crate::tree::Key,
        value: &Value,
        parent: (u16, u32),
        next: u32,
    ) -> Result<(u16, u32)> {
        let name = key_entry::name_bytes(&key.name)?;
        let (v, big) = self.value_bytes(value, next, key.change_tracking)?;
        let need = key_entry::meaningful_len(&name, v.len()) + SLACK;
        let (idx, off, size) = self.place(need)?;
        let mut k = key.clone();
        k.value = value.clone();
        let e = key_entry::encode(&k, &name, &v, big, size, parent);
        let p = self.page(idx)?;
        p.new[off as usize..off as usize + size].copy_from_slice(&e);
        Ok((idx, off))
    }

    /// The (table, offset) a child of `id` names as its parent.
    fn parent_ref(&self, id: KeyId) -> (u16, u32) {
        if id == Tree::ROOT {
            return (0, 0);
        }
        let l = self
            .store
            .tree
            .key(id)
            .location
            .expect("read keys have a location");
        (l.table, l.entry_offset)
    }

    /// Replaces the value of an existing leaf.
    fn replace(&mut self, id: KeyId, value: &Value) -> Result<()> {
        let tree = &self.store.tree;
        let key = tree.key(id).clone();
        let loc = key.location.expect("read keys have a location");
        let parent = self.parent_ref(key.parent.expect("not the root"));
        // An old file object becomes a Free object.
        if let Value::Blob(b) = key.value {
            if let Some(o) = self
                .store
                .objects()
                .iter()
                .find(|o| o.entry.kind == ObjectType::FileObject && o.entry.offset == b.offset)
            {
                let off =
                    o.table + (OBJECT_TABLE_HEADER_LEN + o.slot as usize * OBJECT_ENTRY_LEN) as u64;
                let mut e = o.entry;
                e.kind = ObjectType::Free;
                self.object_writes.push((off, e));
            }
        }
        let name = key_entry::name_bytes(&key.name)?;
        let (v, big) = self.value_bytes(value, 0, 0)?;
        let need = key_entry::meaningful_len(&name, v.len());
        let size = loc.size as usize;
        if need <= size {
            // Fits where it is (the rest stays slack).
            let mut k = key.clone();
            k.value = value.clone();
            let e = key_entry::encode(&k, &name, &v, big, size, parent);
            let p = self.page(loc.table)?;
            p.new[loc.entry_offset as usize..loc.entry_offset as usize + size].copy_from_slice(&e);
            return Ok(());
        }
        // Moves: the old entry becomes Free, the new one goes where there is
        // room (no entry points at a leaf, so nothing else changes).
        let p = self.page(loc.table)?;
        let o = loc.entry_offset as usize;
        p.new[o..o + size].copy_from_slice(&key_entry::encode_free(size.max(MIN_FREE_ENTRY)));
        if size >= MIN_FREE_ENTRY {
            p.free.push((loc.entry_offset, loc.size));
        }
        // The value bytes were computed above (a file object, if any, is
        // already allocated); place the entry with them.
        let need = need + SLACK;
        let (idx, off, given) = self.place(need)?;
        let mut k = key;
        k.value = value.clone();
        let e = key_entry::encode(&k, &name, &v, big, given, parent);
        let p = self.page(idx)?;
        p.new[off as usize..off as usize + given].copy_from_slice(&e);
        Ok(())
    }

    /// Creates `segs` under node `parent` (nodes, then a leaf with `value`).
    fn create(&mut self, parent: KeyId, segs: &[&str], value: &Value) -> Result<()> {
        let tree = &self.store.tree;
        // The existing parent's NextInsertionSequence moves on.
        let pk = tree.key(parent).clone();
        let insertion = tree
            .children(parent)
            .iter()
            .map(|&c| tree.key(c).insertion)
            .max()
            .unwrap_or(0)
            .max(pk.next_insertion.saturating_sub(1))
            .checked_add(1)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "{}: no insertion sequence left for a new child",
                    tree.path(parent)
                ))
            })?;
        if parent != Tree::ROOT {
            let loc = pk.location.expect("located");
            let gp = self.parent_ref(pk.parent.expect("not the root"));
            let name = key_entry::name_bytes(&pk.name)?;
            let (v, _) = self.value_bytes(
                &Value::Node,
                insertion.saturating_add(1),
                pk.change_tracking,
            )?;
            let e = key_entry::encode(&pk, &name, &v, false, loc.size as usize, gp);
            let p = self.page(loc.table)?;
            p.new[loc.entry_offset as usize..][..loc.size as usize].copy_from_slice(&e);
        }
        let mut at = self.parent_ref(parent);
        let mut ins = insertion;
        for (i, seg) in segs.iter().enumerate() {
            let last = i + 1 == segs.len();
            let v = if last { value.clone() } else { Value::Node };
            let mut k = Tree::key_template(seg.to_string(), v.clone());
            k.insertion = ins;
            let next = if last { 0 } else { 2 };
            at = self.put(&k, &v, at, next)?;
            ins = 1;
        }
        Ok(())
    }

    /// The fresh regions and the log records of the transaction.
    #[allow(clippy::type_complexity)]
    fn finish(mut self) -> Result<(Vec<(u64, Vec<u8>)>, Vec<(u64, Vec<u8>)>)> {
        let mut records = Vec::new();
        let pages = std::mem::take(&mut self.pages);
        for (_, mut p) in pages {
            let seq = if p.fresh {
                1
            } else {
                u16_at(&p.old, 4).wrapping_add(1)
            };
            let h = KeyTableHeader {
                index: p.index,
                sequence: seq,
            };
            p.new[..KEY_TABLE_HEADER_LEN].copy_from_slice(&h.encode());
            if p.fresh {
                self.fresh.push((p.offset, p.new));
                continue;
            }
            // One record from the first to the last changed byte.
            let first = (0..p.new.len()).find(|&i| p.new[i] != p.old[i]);
            if let Some(first) = first {
                let last = (0..p.new.len())
                    .rev()
                    .find(|&i| p.new[i] != p.old[i])
                    .expect("some differ");
                records.push((p.offset + first as u64, p.new[first..=last].to_vec()));
            }
        }
        for (off, entries) in std::mem::take(&mut self.new_object_tables) {
            let mut page = vec![0u8; ALIGN as usize];
            page[0..4].copy_from_slice(&OBJECT_TABLE_SIGNATURE.to_le_bytes());
            page[4..8].copy_from_slice(&(entries.len() as u32).to_le_bytes());
            for (i, e) in entries.iter().enumerate() {
                let o = OBJECT_TABLE_HEADER_LEN + i * OBJECT_ENTRY_LEN;
                page[o..o + OBJECT_ENTRY_LEN].copy_from_slice(&e.encode());
            }
            self.fresh.push((off, page));
        }
        for (off, e) in &self.object_writes {
            records.push((*off, e.encode().to_vec()));
        }
        Ok((self.fresh, records))
    }
}
