//! Writing a saved state in Hyper-V's schema (research note §4.2): the
//! `/savedstate` keys with one `RamMemoryBlock%d` descriptor per memory
//! piece and raw 1 MiB `RamBlock%d` values numbered across all pieces (each
//! piece starts a fresh block; a short last block is zero-padded, since a
//! shorter value would be read as compressed), the partition state with
//! the VP registers, and `/savedstate/hvkit/...` for hypervisor-specific
//! blobs (the KVM harness keeps complete vCPU and device state there).
//!
//! The RamBlocks are the file's last file objects but one group: back to
//! back, 4 KiB aligned, in GPA order of the pieces, so a restore can mmap
//! the guest memory straight from the file.

use crate::error::{Error, Result};
use crate::memory_block::{MemoryBlock, SAVED_STATE_VERSION};
use crate::partition_state::{self, VpRegisters};
use crate::ram_block::{BLOCK_LEN, PAGE, PAGES_PER_BLOCK};
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use vmcx::writer::{BlobSource, Layout};
use vmcx::{Blob, KeyId, KeyType, Storage, Tree, Value};

/// VM configuration version written by default (10.0, as Microsoft's dump
/// writer uses).
pub const DEFAULT_VM_VERSION: i64 = 0x0A00;

/// Where a piece's bytes come from.
pub enum PieceData {
    Bytes(Vec<u8>),
    /// `len` bytes from offset 0 of a file.
    File(File),
}

/// A piece of guest-physical memory.
pub struct MemoryPiece {
    /// Page-aligned guest-physical address.
    pub gpa: u64,
    /// Length in bytes (the last page is zero-filled when not whole).
    pub len: u64,
    pub data: PieceData,
}

impl MemoryPiece {
    pub fn bytes(gpa: u64, data: Vec<u8>) -> MemoryPiece {
        MemoryPiece {
            gpa,
            len: data.len() as u64,
            data: PieceData::Bytes(data),
        }
    }

    fn read(&self, off: u64, buf: &mut [u8]) -> Result<()> {
        // Past `len` (padding) reads zeros.
        let n = (self.len.saturating_sub(off)).min(buf.len() as u64) as usize;
        match &self.data {
            PieceData::Bytes(b) => buf[..n].copy_from_slice(&b[off as usize..off as usize + n]),
            PieceData::File(f) => f.read_exact_at(&mut buf[..n], off)?,
        }
        buf[n..].fill(0);
        Ok(())
    }
}

/// What to write.
pub struct SavedStateSpec {
    pub vm_version: i64,
    /// `/savedstate/type` (Normal, Snapshot, ...); omitted when `None`.
    pub kind: Option<String>,
    pub memory: Vec<MemoryPiece>,
    pub vps: Vec<VpRegisters>,
    /// Named blobs under `/savedstate/hvkit`.
    pub extra: Vec<(String, Vec<u8>)>,
}

impl Default for SavedStateSpec {
    fn default() -> Self {
        SavedStateSpec {
            vm_version: DEFAULT_VM_VERSION,
            kind: Some("Snapshot".into()),
            memory: Vec::new(),
            vps: vec![VpRegisters::default()],
            extra: Vec::new(),
        }
    }
}

/// RamBlock key -> (piece, byte offset in the piece).
type BlockMap = HashMap<KeyId, (usize, u64)>;

struct Blocks<'a> {
    map: BlockMap,
    pieces: &'a [MemoryPiece],
}

impl BlobSource for Blocks<'_> {
    fn stream(
        &self,
        id: KeyId,
        blob: &Blob,
        out: &mut dyn FnMut(&[u8]) -> vmcx::Result<()>,
    ) -> vmcx::Result<()> {
        let &(p, off) = self
            .map
            .get(&id)
            .ok_or_else(|| vmcx::Error::Invalid("unknown RamBlock".into()))?;
        let mut buf = vec![0u8; blob.len as usize];
        self.pieces[p].read(off, &mut buf).map_err(|e| {
            vmcx::Error::Invalid(format!(
                "reading memory at GPA {:#x}: {e}",
                self.pieces[p].gpa + off
            ))
        })?;
        out(&buf)
    }
}

/// Builds the key tree (RamBlocks as streamed file objects) and the map of
/// which piece each RamBlock comes from.
fn tree(spec: &SavedStateSpec) -> Result<(Tree, BlockMap)> {
    let mut order: Vec<usize> = (0..spec.memory.len()).collect();
    order.sort_by_key(|&i| spec.memory[i].gpa);
    for w in order.windows(2) {
        let (a, b) = (&spec.memory[w[0]], &spec.memory[w[1]]);
        if a.gpa + a.len.div_ceil(PAGE as u64) * PAGE as u64 > b.gpa {
            return Err(Error::Invalid(format!(
                "memory pieces at {:#x} and {:#x} overlap",
                a.gpa, b.gpa
            )));
        }
    }
    for m in &spec.memory {
        if m.gpa % PAGE as u64 != 0 {
            return Err(Error::Invalid(format!(
                "memory piece at {:#x} is not 4 KiB aligned",
                m.gpa
            )));
        }
        if m.len == 0 {
            return Err(Error::Invalid(format!(
                "memory piece at {:#x} is empty",
                m.gpa
            )));
        }
        if m.gpa.checked_add(m.len).is_none() {
            return Err(Error::Invalid(format!(
                "memory piece at {:#x} overflows",
                m.gpa
            )));
        }
    }
    let mut t = Tree::new();
    let cfg = t.add(Tree::ROOT, "configuration", Value::Node);
    let props = t.add(cfg, "properties", Value::Node);
    t.add(props, "version", Value::Int(spec.vm_version));
    let ss = t.add(Tree::ROOT, "savedstate", Value::Node);
    t.add(ss, "VmVersion", Value::Int(spec.vm_version));
    if let Some(k) = &spec.kind {
        t.add(ss, "type", Value::String(k.clone()));
    }
    let vm = t.add(ss, "savedVM", Value::Node);
    t.add(
        vm,
        "partition_state",
        Value::Array(partition_state::build(&spec.vps)),
    );
    let mut block = 0u64;
    let mut plan = Vec::new();
    for (i, &p) in order.iter().enumerate() {
        let m = &spec.memory[p];
        let pages = m.len.div_ceil(PAGE as u64);
        let d = MemoryBlock {
            version: SAVED_STATE_VERSION,
            flags: 0,
            page_count: pages,
            first_page: block * PAGES_PER_BLOCK as u64,
            gpa_page: m.gpa / PAGE as u64,
            virtual_node: 0,
            ksr_block_id: 0,
        };
        t.add(
            ss,
            &format!("RamMemoryBlock{i}"),
            Value::Array(d.encode().to_vec()),
        );
        let blocks = pages.div_ceil(PAGES_PER_BLOCK as u64);
        plan.push((p, block, blocks));
        block += blocks;
    }
    let mut map = HashMap::new();
    for (p, first, n) in plan {
        for k in 0..n {
            let id = t.add(
                ss,
                &format!("RamBlock{}", first + k),
                Value::Blob(Blob {
                    kind: KeyType::Array,
                    offset: 0,
                    len: BLOCK_LEN as u32,
                }),
            );
            map.insert(id, (p, k * BLOCK_LEN as u64));
        }
    }
    if !spec.extra.is_empty() {
        let h = t.add(ss, "hvkit", Value::Node);
        for (name, b) in &spec.extra {
            t.add(h, name, Value::Array(b.clone()));
        }
    }
    Ok((t, map))
}

/// Writes a saved state into `storage`.
pub fn write(storage: &dyn Storage, name: &str, spec: &SavedStateSpec) -> Result<Layout> {
    let (t, map) = tree(spec)?;
    let src = Blocks {
        map,
        pieces: &spec.memory,
    };
    Ok(vmcx::writer::write_streaming(
        storage,
        name,
        &t,
        &|_| Err(vmcx::Error::Invalid("unexpected value".into())),
        Some(&src),
    )?)
}

/// Writes a saved state to `path` (a temporary file beside it, renamed
/// over it when complete).
pub fn create(path: &Path, spec: &SavedStateSpec) -> Result<Layout> {
    vmcx::writer::replace_file(path, |f, name| write(f, name, spec))
}
