//! Reading a saved state (research note §4.2): the `/savedstate` keys of a
//! `.vmrs` (or the pre-5.0 paths without `/savedstate`), the memory map from
//! the `RamMemoryBlock%d` descriptors, guest-physical reads through the
//! RamBlocks (raw, or compressed and decoded on demand with a one-block
//! cache), and the registers from the partition state.

use crate::error::{Error, Result};
use crate::memory_block::MemoryBlock;
use crate::partition_state::PartitionState;
use crate::ram_block::{self, BLOCK_LEN, PAGE, PAGES_PER_BLOCK};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use vmcx::{KeyId, OpenOptions, Store, Value};

/// Largest partition-state blob read (real ones are a few KiB per VP).
const MAX_PARTITION_STATE: u32 = 64 << 20;

/// Which key paths the file uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    /// `/savedstate/RamMemoryBlock%d`, `/savedstate/RamBlock%d`,
    /// `/savedstate/savedVM/partition_state` (VM version 6.0 and later).
    Current,
    /// `/RamMemoryBlock/%d`, `/RamBlock%d` or `/RamBlock/%d`,
    /// `/savedVM/partition_state` (version 5.0 and earlier; how the old
    /// `Name/%d/` form maps onto nodes is inferred, no sample exists).
    Old,
}

/// One populated guest-physical range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryRange {
    /// Guest-physical address of the first byte.
    pub gpa: u64,
    /// Length in bytes (a whole number of pages).
    pub len: u64,
    /// The descriptor as stored.
    pub block: MemoryBlock,
}

/// Where one RamBlock's bytes are.
#[derive(Debug, Clone, Copy)]
enum BlockRef {
    /// 1 MiB raw at this file offset (a file object).
    Raw(u64),
    /// A key holding an inline raw block or a compressed stream.
    Key(KeyId),
}

/// An open saved state.
pub struct SavedState {
    store: Store,
    schema: Schema,
    vm_version: Option<i64>,
    kind: Option<String>,
    ranges: Vec<MemoryRange>,
    blocks: BTreeMap<u64, BlockRef>,
    partition: Option<PartitionState>,
    partition_error: Option<String>,
    cache: Mutex<Option<(u64, Arc<Vec<u8>>)>>,
    codec: ram_block::PageCodec,
}

impl std::fmt::Debug for SavedState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SavedState")
            .field("file", &self.store.name())
            .field("ranges", &self.ranges.len())
            .finish()
    }
}

fn number_suffix(name: &str, prefix: &str) -> Option<u64> {
    let rest = name.strip_prefix(prefix)?;
    if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    rest.parse().ok()
}

impl SavedState {
    /// Opens a `.vmrs` read-only.
    pub fn open(path: impl AsRef<Path>) -> Result<SavedState> {
        let path = path.as_ref();
        match Store::open_with(path, OpenOptions::default()) {
            Ok(s) => SavedState::from_store(s),
            Err(e) => Err(encrypted_or(path, e)),
        }
    }

    /// Reads the saved-state keys of an open container.
    pub fn from_store(store: Store) -> Result<SavedState> {
        let t = store.tree();
        let name = store.name().to_string();
        let (schema, base) = match t.find_all("/savedstate").first() {
            Some(&b) => (Schema::Current, Some(b)),
            None => (Schema::Old, None),
        };
        let int_at = |p: &str| match t.get(p) {
            Some(Value::Int(i)) => Some(*i),
            Some(Value::UInt(u)) => i64::try_from(*u).ok(),
            _ => None,
        };
        let vm_version =
            int_at("/savedstate/VmVersion").or_else(|| int_at("/configuration/properties/version"));
        let kind = match t.get("/savedstate/type") {
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        };
        // Descriptors and blocks by number.
        let mut descs: BTreeMap<u64, KeyId> = BTreeMap::new();
        let mut blocks: BTreeMap<u64, BlockRef> = BTreeMap::new();
        let parent = base.unwrap_or(vmcx::Tree::ROOT);
        for &c in t.children(parent) {
            let k = t.key(c);
            if let Some(n) = number_suffix(&k.name, "RamMemoryBlock") {
                descs.entry(n).or_insert(c);
            } else if let Some(n) = number_suffix(&k.name, "RamBlock") {
                blocks.entry(n).or_insert(block_ref(&k.value, c));
            } else if schema == Schema::Old && (k.name == "RamMemoryBlock" || k.name == "RamBlock")
            {
                for &g in t.children(c) {
                    let Some(n) = number_suffix(&t.key(g).name, "") else {
                        continue;
                    };
                    // `Name/%d/` as a node whose value sits in its first leaf.
                    let leaf = if t.key(g).value == Value::Node {
                        t.children(g).first().copied()
                    } else {
                        Some(g)
                    };
                    let Some(leaf) = leaf else { continue };
                    if k.name == "RamMemoryBlock" {
                        descs.entry(n).or_insert(leaf);
                    } else {
                        blocks
                            .entry(n)
                            .or_insert(block_ref(&t.key(leaf).value, leaf));
                    }
                }
            }
        }
        let mut ranges = Vec::new();
        // Enumerate 0, 1, 2, ... until one is missing (as Hyper-V does).
        for n in 0.. {
            let Some(&id) = descs.get(&n) else { break };
            let bytes = match store.value(id)? {
                Value::Array(b) => b,
                _ => return Err(corrupt(&name, t.path(id), "not a byte array".into())),
            };
            let block = MemoryBlock::decode(&bytes)
                .ok_or_else(|| corrupt(&name, t.path(id), format!("{} bytes instead of 48 (only the 48-byte layout of VM version 5.0 and later is known)", bytes.len())))?;
            let len = block
                .page_count
                .checked_mul(PAGE as u64)
                .and_then(|l| {
                    block
                        .gpa_page
                        .checked_mul(PAGE as u64)
                        .and_then(|g| g.checked_add(l))
                        .map(|_| l)
                })
                .ok_or_else(|| {
                    corrupt(
                        &name,
                        t.path(id),
                        "range overflows the 64-bit address space".into(),
                    )
                })?;
            if block.first_page.checked_add(block.page_count).is_none() {
                return Err(corrupt(&name, t.path(id), "page index overflows".into()));
            }
            ranges.push(MemoryRange {
                gpa: block.gpa_page * PAGE as u64,
                len,
                block,
            });
        }
        let mut sorted = ranges.clone();
        sorted.sort_by_key(|r| r.gpa);
        for w in sorted.windows(2) {
            if w[1].gpa < w[0].gpa + w[0].len {
                return Err(corrupt(
                    &name,
                    "RamMemoryBlock".into(),
                    format!("ranges at {:#x} and {:#x} overlap", w[0].gpa, w[1].gpa),
                ));
            }
        }
        let ps_path = match schema {
            Schema::Current => "/savedstate/savedVM/partition_state",
            Schema::Old => "/savedVM/partition_state",
        };
        let (partition, partition_error) = match t.find_all(ps_path).first() {
            None => (None, None),
            Some(&id) => {
                let too_big =
                    matches!(t.key(id).value, Value::Blob(b) if b.len > MAX_PARTITION_STATE);
                if too_big {
                    (
                        None,
                        Some(format!("larger than {MAX_PARTITION_STATE} bytes")),
                    )
                } else {
                    match store.value(id)? {
                        Value::Array(b) => match PartitionState::parse(&b) {
                            Ok(p) => (Some(p), None),
                            Err(e) => (None, Some(e.to_string())),
                        },
                        _ => (None, Some("not a byte array".into())),
                    }
                }
            }
        };
        Ok(SavedState {
            store,
            schema,
            vm_version,
            kind,
            ranges,
            blocks,
            partition,
            partition_error,
            cache: Mutex::new(None),
            codec: ram_block::PageCodec::default(),
        })
    }

    /// Chooses how compressed pages are decoded (XPRESS unless set).
    pub fn set_page_codec(&mut self, codec: ram_block::PageCodec) {
        self.codec = codec;
        *self.cache.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    pub fn store(&self) -> &Store {
        &self.store
    }
    pub fn schema(&self) -> Schema {
        self.schema
    }
    /// `/savedstate/VmVersion` (or the configuration version).
    pub fn vm_version(&self) -> Option<i64> {
        self.vm_version
    }
    /// `/savedstate/type`: Normal, Snapshot, Fast, ...
    pub fn kind(&self) -> Option<&str> {
        self.kind.as_deref()
    }
    /// The populated guest-physical ranges, in descriptor order.
    pub fn ranges(&self) -> &[MemoryRange] {
        &self.ranges
    }
    /// True when the file holds guest memory (`RamMemoryBlock0` exists).
    /// Production checkpoints and powered-off VMs hold none.
    pub fn has_memory(&self) -> bool {
        !self.ranges.is_empty()
    }
    /// Total bytes of guest memory.
    pub fn memory_size(&self) -> u64 {
        self.ranges.iter().map(|r| r.len).sum()
    }
    /// Number of RamBlock keys.
    pub fn block_count(&self) -> usize {
        self.blocks.len()
    }
    pub fn partition_state(&self) -> Option<&PartitionState> {
        self.partition.as_ref()
    }
    /// Why the partition state could not be decoded, if it could not.
    pub fn partition_state_error(&self) -> Option<&str> {
        self.partition_error.as_deref()
    }

    /// Where guest page `p` of the RamBlock stream lives: (block, byte in it).
    fn locate(&self, gpa: u64) -> Option<(&MemoryRange, u64)> {
        let r = self
            .ranges
            .iter()
            .find(|r| gpa >= r.gpa && gpa < r.gpa + r.len)?;
        Some((r, r.block.first_page + (gpa - r.gpa) / PAGE as u64))
    }

    /// Reads guest-physical memory; addresses in no range (holes, MMIO
    /// gaps) and pages whose RamBlock is absent read as zeros.
    pub fn read_gpa(&self, mut gpa: u64, mut buf: &mut [u8]) -> Result<()> {
        if u128::from(gpa) + buf.len() as u128 > 1 << 64 {
            return Err(Error::Invalid(format!(
                "a read of {} bytes at {gpa:#x} goes past the 64-bit address space",
                buf.len()
            )));
        }
        while !buf.is_empty() {
            let Some((r, page)) = self.locate(gpa) else {
                // Up to the next range (or the end of the buffer).
                let next = self.ranges.iter().map(|r| r.gpa).filter(|&g| g > gpa).min();
                let n = next.map_or(buf.len() as u64, |g| (g - gpa).min(buf.len() as u64)) as usize;
                buf[..n].fill(0);
                // Wraps only when the read ends exactly at 2^64 (nothing is left).
                gpa = gpa.wrapping_add(n as u64);
                buf = &mut buf[n..];
                continue;
            };
            let in_page = gpa % PAGE as u64;
            let block = page / PAGES_PER_BLOCK as u64;
            let in_block = (page % PAGES_PER_BLOCK as u64) * PAGE as u64 + in_page;
            // As far as this block and this range go.
            let n = (BLOCK_LEN as u64 - in_block)
                .min(r.gpa + r.len - gpa)
                .min(buf.len() as u64) as usize;
            self.read_block(block, in_block, &mut buf[..n])?;
            gpa = gpa.wrapping_add(n as u64);
            buf = &mut buf[n..];
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at `off` of RamBlock `n`.
    fn read_block(&self, n: u64, off: u64, buf: &mut [u8]) -> Result<()> {
        match self.blocks.get(&n) {
            None => buf.fill(0),
            // A file-object offset near u64::MAX (lenient opens) must not
            // overflow; the read past the end then fails.
            Some(BlockRef::Raw(at)) => self.store.read_at(buf, at.saturating_add(off))?,
            Some(&BlockRef::Key(id)) => {
                let data = self.decoded(n, id)?;
                buf.copy_from_slice(&data[off as usize..off as usize + buf.len()]);
            }
        }
        Ok(())
    }

    /// The 1 MiB content of a block kept in a key (inline or compressed).
    fn decoded(&self, n: u64, id: KeyId) -> Result<Arc<Vec<u8>>> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((m, d)) = cache.as_ref() {
            if *m == n {
                return Ok(d.clone());
            }
        }
        let t = self.store.tree();
        if let Value::Blob(b) = t.key(id).value {
            // A token stream of uncompressible pages is a little over 1 MiB.
            if b.len as usize > 2 * BLOCK_LEN {
                return Err(corrupt(
                    self.store.name(),
                    t.path(id),
                    format!("{} bytes, too large for a RamBlock", b.len),
                ));
            }
        }
        let raw = match self.store.value(id)? {
            Value::Array(b) => b,
            _ => {
                return Err(corrupt(
                    self.store.name(),
                    t.path(id),
                    "not a byte array".into(),
                ))
            }
        };
        let data = if raw.len() == BLOCK_LEN {
            raw
        } else {
            let mut out = Vec::new();
            ram_block::decode_with(self.codec, &raw, &mut out)
                .map_err(|e| corrupt(self.store.name(), t.path(id), e.to_string()))?;
            out
        };
        let d = Arc::new(data);
        *cache = Some((n, d.clone()));
        Ok(d)
    }

    /// For a raw RamBlock stored as a file object: its file offset.
    pub fn raw_block_offset(&self, n: u64) -> Option<u64> {
        match self.blocks.get(&n) {
            Some(BlockRef::Raw(at)) => Some(*at),
            _ => None,
        }
    }
}

fn block_ref(v: &Value, id: KeyId) -> BlockRef {
    match v {
        Value::Blob(b) if b.len as usize == BLOCK_LEN && b.kind == vmcx::KeyType::Array => {
            BlockRef::Raw(b.offset)
        }
        _ => BlockRef::Key(id),
    }
}

fn corrupt(path: &str, key: String, reason: String) -> Error {
    Error::Corrupt {
        path: path.to_string(),
        key,
        reason,
    }
}

/// A container error on a file whose header is valid but whose object
/// table is unreadable and whose bytes look random: an encrypted state.
fn encrypted_or(path: &Path, e: vmcx::Error) -> Error {
    use std::os::unix::fs::FileExt;
    let mut bytes = vec![0u8; 0x3000];
    let read = std::fs::File::open(path).and_then(|f| f.read_exact_at(&mut bytes, 0));
    if read.is_err() {
        return e.into();
    }
    let header_ok = {
        let h: [u8; vmcx::format::HEADER_LEN] =
            bytes[..vmcx::format::HEADER_LEN].try_into().expect("46");
        let h2: [u8; vmcx::format::HEADER_LEN] = bytes[0x1000..0x1000 + vmcx::format::HEADER_LEN]
            .try_into()
            .expect("46");
        vmcx::format::FileHeader::decode(&h).is_some()
            || vmcx::format::FileHeader::decode(&h2).is_some()
    };
    if header_ok && entropy(&bytes[0x2000..0x3000]) > 7.0 {
        return Error::Encrypted {
            path: path.display().to_string(),
            detail: e.to_string(),
        };
    }
    e.into()
}

/// Shannon entropy in bits per byte.
pub(crate) fn entropy(b: &[u8]) -> f64 {
    let mut n = [0u32; 256];
    for &x in b {
        n[x as usize] += 1;
    }
    let len = b.len() as f64;
    n.iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / len;
            -p * p.log2()
        })
        .sum()
}
