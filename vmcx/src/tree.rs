//! The key tree of a HyperVStorage file (§2.7): a virtual root, nodes with
//! ordered children (by insertion sequence; sibling names need not be
//! unique) and typed leaf values.

use crate::error::{Error, Result};
use crate::format::KeyType;

/// Index of a key in its [`Tree`].
pub type KeyId = usize;

/// Where a value kept in a file object lives (§2.6 `FileObjectData`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blob {
    /// `KeyType::String` (UTF-16LE bytes, no length prefix) or `KeyType::Array`.
    pub kind: KeyType,
    /// Absolute file offset of the bytes.
    pub offset: u64,
    /// Length in bytes.
    pub len: u32,
}

/// A key's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Int(i64),
    UInt(u64),
    Double(f64),
    String(String),
    Array(Vec<u8>),
    Bool(bool),
    /// An inner node; its children are in the tree.
    Node,
    /// A String or Array stored in a file object, read on demand through
    /// [`crate::Store::blob_reader`] or [`crate::Store::value`].
    Blob(Blob),
}

impl Value {
    /// The stored type.
    pub fn key_type(&self) -> KeyType {
        match self {
            Value::Int(_) => KeyType::Int,
            Value::UInt(_) => KeyType::UInt,
            Value::Double(_) => KeyType::Double,
            Value::String(_) => KeyType::String,
            Value::Array(_) => KeyType::Array,
            Value::Bool(_) => KeyType::Bool,
            Value::Node => KeyType::Node,
            Value::Blob(b) => b.kind,
        }
    }

    /// Parses `text` as a value of type `ty` (`array` takes hex digits).
    pub fn parse(ty: KeyType, text: &str) -> Result<Value> {
        let bad = |what: &str| Error::Invalid(format!("{text:?} is not a valid {what}"));
        Ok(match ty {
            KeyType::Int => Value::Int(match text.strip_prefix("0x") {
                Some(h) => i64::from_str_radix(h, 16).map_err(|_| bad("int"))?,
                None => text.parse().map_err(|_| bad("int"))?,
            }),
            KeyType::UInt => Value::UInt(match text.strip_prefix("0x") {
                Some(h) => u64::from_str_radix(h, 16).map_err(|_| bad("uint"))?,
                None => text.parse().map_err(|_| bad("uint"))?,
            }),
            KeyType::Double => Value::Double(text.parse().map_err(|_| bad("double"))?),
            KeyType::String => Value::String(text.to_string()),
            KeyType::Bool => Value::Bool(match text {
                "true" | "True" | "1" => true,
                "false" | "False" | "0" => false,
                _ => return Err(bad("bool (true/false/1/0)")),
            }),
            KeyType::Array => Value::Array(from_hex(text).ok_or_else(|| bad("hex byte string"))?),
            KeyType::Node | KeyType::Free => {
                return Err(Error::Invalid(format!(
                    "a {} value cannot be set from text",
                    ty.name()
                )))
            }
        })
    }
}

/// Lower-case hex of `b`.
pub fn to_hex(b: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for &x in b {
        s.push(D[(x >> 4) as usize] as char);
        s.push(D[(x & 15) as usize] as char);
    }
    s
}

/// Bytes from hex digits (either case, no separators).
pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    let s = s.as_bytes();
    if s.len() & 1 == 1 {
        return None;
    }
    let d = |c: u8| (c as char).to_digit(16).map(|v| v as u8);
    s.chunks(2)
        .map(|p| Some(d(p[0])? << 4 | d(p[1])?))
        .collect()
}

/// Where a key's entry sits in the file it was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// TableIndex of the key table (1-based).
    pub table: u16,
    /// Byte offset of the entry from the start of the key table object.
    pub entry_offset: u32,
    /// The entry's SizeInBytes (with slack).
    pub size: u32,
}

/// One key.
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    pub name: String,
    pub value: Value,
    /// Entry flags other than PointsToFileObject (0x02 Subcomponent,
    /// 0x04 SequenceChangeTracking), kept as read.
    pub flags: u8,
    /// InsertionSequence: order among siblings.
    pub insertion: u32,
    /// A node's ChangeTrackingSequence.
    pub change_tracking: u64,
    /// A node's stored NextInsertionSequence (0 when it has no children).
    pub next_insertion: u32,
    /// The parent key (`None` only for the root).
    pub parent: Option<KeyId>,
    /// Where the entry was read from, for keys read from a file.
    pub location: Option<Location>,
    children: Vec<KeyId>,
}

/// A tree of keys under a virtual root.
#[derive(Debug, Clone, PartialEq)]
pub struct Tree {
    keys: Vec<Key>,
}

impl Default for Tree {
    fn default() -> Self {
        Tree::new()
    }
}

impl Tree {
    /// The virtual root.
    pub const ROOT: KeyId = 0;

    /// A tree holding only the root.
    pub fn new() -> Tree {
        Tree {
            keys: vec![Key {
                name: String::new(),
                value: Value::Node,
                flags: 0,
                insertion: 0,
                change_tracking: 0,
                next_insertion: 0,
                parent: None,
                location: None,
                children: Vec::new(),
            }],
        }
    }

    /// Number of keys, the root included.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when the tree holds only the root.
    pub fn is_empty(&self) -> bool {
        self.keys.len() == 1
    }

    pub fn key(&self, id: KeyId) -> &Key {
        &self.keys[id]
    }

    pub fn key_mut(&mut self, id: KeyId) -> &mut Key {
        &mut self.keys[id]
    }

    /// Children of `id` in insertion order.
    pub fn children(&self, id: KeyId) -> &[KeyId] {
        &self.keys[id].children
    }

    /// Appends a child of `parent` after its current children (insertion
    /// sequence one more than the largest so far) and returns it.
    pub fn add(&mut self, parent: KeyId, name: &str, value: Value) -> KeyId {
        let insertion = self.keys[parent]
            .children
            .iter()
            .map(|&c| self.keys[c].insertion)
            .max()
            .unwrap_or(0)
            .max(self.keys[parent].next_insertion.saturating_sub(1))
            .saturating_add(1);
        self.add_raw(parent, name, value, insertion)
    }

    /// Adds a child with a given insertion sequence, keeping the children
    /// sorted (stable for equal sequences).
    pub fn add_raw(&mut self, parent: KeyId, name: &str, value: Value, insertion: u32) -> KeyId {
        let id = self.keys.len();
        self.keys.push(Key {
            name: name.to_string(),
            value,
            flags: 0,
            insertion,
            change_tracking: 0,
            next_insertion: 0,
            parent: Some(parent),
            location: None,
            children: Vec::new(),
        });
        let at = {
            let keys = &self.keys;
            keys[parent]
                .children
                .partition_point(|&c| keys[c].insertion <= insertion)
        };
        self.keys[parent].children.insert(at, id);
        let p = &mut self.keys[parent];
        p.next_insertion = p.next_insertion.max(insertion.saturating_add(1));
        id
    }

    /// The child of `parent` named `name` (the first, when several are).
    pub fn child(&self, parent: KeyId, name: &str) -> Option<KeyId> {
        self.keys[parent]
            .children
            .iter()
            .copied()
            .find(|&c| self.keys[c].name == name)
    }

    /// Every key matching a slash path (`/configuration/properties/name`,
    /// the leading slash optional). A segment `NAME[I]` picks the I-th
    /// (0-based) of several siblings with that name; a bare name matches
    /// all of them.
    pub fn find_all(&self, path: &str) -> Vec<KeyId> {
        let mut cur = vec![Tree::ROOT];
        for seg in path.split('/').filter(|s| !s.is_empty()) {
            let (name, index) = split_index(seg);
            let mut next = Vec::new();
            for &k in &cur {
                let same: Vec<KeyId> = self.keys[k]
                    .children
                    .iter()
                    .copied()
                    .filter(|&c| self.keys[c].name == name)
                    .collect();
                match index {
                    Some(i) => next.extend(same.get(i).copied()),
                    None => next.extend(same),
                }
            }
            cur = next;
        }
        cur
    }

    /// The one key at `path`; an error names `file` when none or several
    /// match.
    pub fn find(&self, file: &str, path: &str) -> Result<KeyId> {
        let all = self.find_all(path);
        match all.len() {
            0 => Err(Error::NoSuchKey {
                path: file.to_string(),
                key: path.to_string(),
            }),
            1 => Ok(all[0]),
            n => Err(Error::Ambiguous {
                path: file.to_string(),
                key: path.to_string(),
                count: n,
            }),
        }
    }

    /// The value at `path` when exactly one key matches.
    pub fn get(&self, path: &str) -> Option<&Value> {
        match self.find_all(path).as_slice() {
            [one] => Some(&self.keys[*one].value),
            _ => None,
        }
    }

    /// The slash path of `id`, with `[I]` where a sibling shares its name.
    pub fn path(&self, id: KeyId) -> String {
        let mut parts = Vec::new();
        let mut k = id;
        while let Some(p) = self.keys[k].parent {
            let name = &self.keys[k].name;
            let same: Vec<KeyId> = self.keys[p]
                .children
                .iter()
                .copied()
                .filter(|&c| &self.keys[c].name == name)
                .collect();
            if same.len() > 1 {
                let i = same.iter().position(|&c| c == k).unwrap_or(0);
                parts.push(format!("{name}[{i}]"));
            } else {
                parts.push(name.clone());
            }
            k = p;
        }
        parts.reverse();
        format!("/{}", parts.join("/"))
    }

    /// Every key but the root, parents before children, siblings in order.
    pub fn walk(&self) -> Vec<KeyId> {
        let mut out = Vec::with_capacity(self.keys.len());
        let mut stack: Vec<KeyId> = self.keys[Tree::ROOT]
            .children
            .iter()
            .rev()
            .copied()
            .collect();
        while let Some(k) = stack.pop() {
            out.push(k);
            stack.extend(self.keys[k].children.iter().rev().copied());
        }
        out
    }

    /// Sets the value of the one key at `path` (a leaf, replaced in place,
    /// keeping its place among its siblings) or creates it, and the nodes
    /// on the way, as the last child of its parent. A segment that names
    /// several siblings takes the first of them. Returns the key.
    pub fn set(&mut self, path: &str, value: Value) -> KeyId {
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let mut cur = Tree::ROOT;
        for (i, seg) in segs.iter().enumerate() {
            let last = i + 1 == segs.len();
            cur = match self.child(cur, seg) {
                Some(c) => c,
                None => self.add(cur, seg, if last { value.clone() } else { Value::Node }),
            };
            if !last && self.keys[cur].value != Value::Node {
                // A leaf in the way becomes a node (its value would hide
                // the path otherwise).
                self.keys[cur].value = Value::Node;
            }
        }
        if cur != Tree::ROOT {
            self.keys[cur].value = value;
        }
        cur
    }

    /// Takes `id` and everything under it out of the tree (the keys stay
    /// allocated but no path, walk or write reaches them). The root
    /// cannot be detached.
    pub fn detach(&mut self, id: KeyId) {
        if let Some(p) = self.keys[id].parent {
            self.keys[p].children.retain(|&c| c != id);
        }
    }

    /// Detaches the one key at `path`, if there is one; true when it did.
    pub fn remove(&mut self, path: &str) -> bool {
        match self.find_all(path).as_slice() {
            [one] if *one != Tree::ROOT => {
                self.detach(*one);
                true
            }
            _ => false,
        }
    }

    /// Builds a tree from keys with their parents already resolved
    /// (`keys[0]` must be the root); children are sorted by insertion.
    pub(crate) fn from_keys(mut keys: Vec<Key>) -> Tree {
        for k in keys.iter_mut() {
            k.children.clear();
        }
        for id in 1..keys.len() {
            if let Some(p) = keys[id].parent {
                keys[p].children.push(id);
            }
        }
        for id in 0..keys.len() {
            let mut ch = std::mem::take(&mut keys[id].children);
            ch.sort_by_key(|&c| keys[c].insertion);
            keys[id].children = ch;
        }
        Tree { keys }
    }

    /// A key with nothing but a name and a value.
    pub(crate) fn key_template(name: String, value: Value) -> Key {
        Key {
            name,
            value,
            flags: 0,
            insertion: 0,
            change_tracking: 0,
            next_insertion: 0,
            parent: None,
            location: None,
            children: Vec::new(),
        }
    }
}

fn split_index(seg: &str) -> (&str, Option<usize>) {
    if let Some(open) = seg.rfind('[') {
        if let Some(inner) = seg[open + 1..].strip_suffix(']') {
            if let Ok(i) = inner.parse() {
                return (&seg[..open], Some(i));
            }
        }
    }
    (seg, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_with_duplicates() {
        let mut t = Tree::new();
        let c = t.add(Tree::ROOT, "configuration", Value::Node);
        let a = t.add(c, "metric", Value::Int(1));
        let b = t.add(c, "metric", Value::Int(2));
        let n = t.add(c, "name", Value::String("x".into()));
        assert_eq!(t.find_all("/configuration/metric"), vec![a, b]);
        assert_eq!(t.find_all("configuration/metric[1]"), vec![b]);
        assert_eq!(t.path(b), "/configuration/metric[1]");
        assert_eq!(t.path(n), "/configuration/name");
        assert!(matches!(
            t.find("f", "/configuration/metric"),
            Err(Error::Ambiguous { count: 2, .. })
        ));
        assert_eq!(
            t.get("/configuration/name"),
            Some(&Value::String("x".into()))
        );
        assert_eq!(t.walk(), vec![c, a, b, n]);
        assert_eq!(t.key(n).insertion, 3);
    }

    #[test]
    fn set_and_remove() {
        let mut t = Tree::new();
        let n = t.set("/configuration/properties/name", Value::String("a".into()));
        assert_eq!(t.path(n), "/configuration/properties/name");
        let v = t.set("/configuration/properties/version", Value::Int(1));
        // Replacing keeps the key and its place.
        assert_eq!(
            t.set("/configuration/properties/name", Value::String("b".into())),
            n
        );
        assert_eq!(
            t.get("/configuration/properties/name"),
            Some(&Value::String("b".into()))
        );
        let p = t.find_all("/configuration/properties")[0];
        assert_eq!(t.children(p), &[n, v]);
        assert!(t.remove("/configuration/properties/name"));
        assert!(!t.remove("/configuration/properties/name"));
        assert_eq!(t.get("/configuration/properties/name"), None);
        assert_eq!(t.children(p), &[v]);
        assert!(!t.walk().contains(&n));
        // A leaf in the way of a deeper path becomes a node.
        t.set("/configuration/properties/version/x", Value::Bool(true));
        assert_eq!(t.key(v).value, Value::Node);
        assert_eq!(
            t.get("/configuration/properties/version/x"),
            Some(&Value::Bool(true))
        );
    }

    #[test]
    fn parse_values() {
        assert_eq!(Value::parse(KeyType::Int, "-5").unwrap(), Value::Int(-5));
        assert_eq!(
            Value::parse(KeyType::UInt, "0x10").unwrap(),
            Value::UInt(16)
        );
        assert_eq!(
            Value::parse(KeyType::Bool, "true").unwrap(),
            Value::Bool(true)
        );
        assert_eq!(
            Value::parse(KeyType::Array, "00ff").unwrap(),
            Value::Array(vec![0, 255])
        );
        assert!(Value::parse(KeyType::Int, "x").is_err());
        assert!(Value::parse(KeyType::Array, "0").is_err());
    }
}
