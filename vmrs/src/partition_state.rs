//! The hypervisor partition state (`/savedstate/savedVM/partition_state`):
//! a 24-byte descriptor {descriptor size, header size, total size}, chunks
//! from `header_size + 16`, each a 16-byte header {u32 id, u32 data length
//! (header not included), 8 bytes padding} and its data, packed without
//! alignment. Layouts from Microsoft's openvmm `hvdef` (save_restore.rs),
//! summarised in the research note §4.4. Only x64 register chunks are
//! decoded; every chunk is listed.

pub const PROLOG: u32 = 0x0000_0000;
pub const EPILOG: u32 = 0xF000_0000;
pub const OS_ID: u32 = 0x2000_1000;
pub const PARTITION_VTL: u32 = 0x2000_8000;
pub const VP_INDICES: u32 = 0x3000_0000;
pub const VP: u32 = 0x3000_1000;
pub const GP_REGISTERS: u32 = 0x3000_5000;
pub const FP_REGISTERS: u32 = 0x3000_6000;
pub const CONTROL_REGISTERS: u32 = 0x3000_7000;
pub const DEBUG_REGISTERS: u32 = 0x3000_8000;
pub const SEGMENT_REGISTERS: u32 = 0x3000_9000;
pub const TABLE_REGISTERS: u32 = 0x3000_A000;
pub const XSAVE_CONTROL: u32 = 0x3000_D000;
pub const VP_VTL: u32 = 0x3001_A000;

const DESCRIPTOR_LEN: usize = 24;
const CHUNK_HEADER: usize = 16;
/// PROLOG tag (bytes `75 64 54 50`) and vendor values.
const PROLOG_TAG: u32 = 0x5054_6475;
pub const VENDOR_AMD: u32 = 0;
pub const VENDOR_INTEL: u32 = 1;
/// Largest number of chunks walked (a VP has a dozen).
const MAX_CHUNKS: usize = 1 << 16;

/// Why a partition state does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("partition state: {0} bytes is shorter than its 24-byte descriptor")]
    Short(usize),
    #[error("partition state: chunk data would start at {0}, past the end")]
    BadHeaderSize(u64),
    #[error("partition state: chunk {id:#010x} at byte {at} needs {need} bytes, {have} remain")]
    Truncated {
        at: usize,
        id: u32,
        need: u64,
        have: usize,
    },
    #[error("partition state: chunk {id:#010x} at byte {at} is {len} bytes, {want} expected")]
    BadChunk {
        at: usize,
        id: u32,
        len: usize,
        want: usize,
    },
    #[error("partition state: more than {MAX_CHUNKS} chunks")]
    TooManyChunks,
}

/// An x64 segment register (`HvX64SegmentRegister`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Segment {
    pub base: u64,
    pub limit: u32,
    pub selector: u16,
    pub attributes: u16,
}

/// An x64 descriptor-table register (`HvX64TableRegister`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Table {
    pub limit: u16,
    pub base: u64,
}

/// The registers of one virtual processor (VTL 0).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VpRegisters {
    pub index: u32,
    /// rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi, r8..r15, rip, rflags.
    pub gp: [u64; 18],
    /// cr0, cr2, cr3, cr4, cr8, efer.
    pub control: [u64; 6],
    /// es, cs, ss, ds, fs, gs, ldtr, tr.
    pub segments: [Segment; 8],
    pub cpl: u8,
    pub idtr: Table,
    pub gdtr: Table,
    pub xcr0: u64,
    /// Which register chunks were present.
    pub has_gp: bool,
    pub has_control: bool,
    pub has_segments: bool,
    pub has_tables: bool,
}

pub const GP_NAMES: [&str; 18] = [
    "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13",
    "r14", "r15", "rip", "rflags",
];
pub const CONTROL_NAMES: [&str; 6] = ["cr0", "cr2", "cr3", "cr4", "cr8", "efer"];
pub const SEGMENT_NAMES: [&str; 8] = ["es", "cs", "ss", "ds", "fs", "gs", "ldtr", "tr"];

/// A parsed partition state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PartitionState {
    pub vendor: Option<u32>,
    pub os_id: Option<u64>,
    /// (id, offset in the blob, data length) of every chunk, in order.
    pub chunks: Vec<(u32, usize, usize)>,
    pub vps: Vec<VpRegisters>,
}

fn u64s(d: &[u8], n: usize) -> Vec<u64> {
    (0..n)
        .map(|i| u64::from_le_bytes(d[i * 8..i * 8 + 8].try_into().expect("8")))
        .collect()
}

fn segment(d: &[u8]) -> Segment {
    Segment {
        base: u64::from_le_bytes(d[0..8].try_into().expect("8")),
        limit: u32::from_le_bytes(d[8..12].try_into().expect("4")),
        selector: u16::from_le_bytes([d[12], d[13]]),
        attributes: u16::from_le_bytes([d[14], d[15]]),
    }
}

fn table(d: &[u8]) -> Table {
    Table {
        limit: u16::from_le_bytes([d[6], d[7]]),
        base: u64::from_le_bytes(d[8..16].try_into().expect("8")),
    }
}

impl PartitionState {
    /// Parses a blob; registers of VTL 0 of each VP are decoded.
    pub fn parse(b: &[u8]) -> Result<PartitionState, StateError> {
        if b.len() < DESCRIPTOR_LEN {
            return Err(StateError::Short(b.len()));
        }
        let header_size = u64::from_le_bytes(b[8..16].try_into().expect("8"));
        let total = u64::from_le_bytes(b[16..24].try_into().expect("8"));
        let end = (total.min(b.len() as u64)) as usize;
        let start = header_size
            .checked_add(16)
            .filter(|&s| s <= b.len() as u64)
            .ok_or(StateError::BadHeaderSize(header_size.saturating_add(16)))?
            as usize;
        let mut st = PartitionState::default();
        let mut off = start;
        let mut vtl = 0u8;
        let mut cur: Option<usize> = None;
        while off + CHUNK_HEADER <= end {
            if st.chunks.len() >= MAX_CHUNKS {
                return Err(StateError::TooManyChunks);
            }
            let id = u32::from_le_bytes(b[off..off + 4].try_into().expect("4"));
            let len = u32::from_le_bytes(b[off + 4..off + 8].try_into().expect("4")) as usize;
            let data_at = off + CHUNK_HEADER;
            if (len as u64) > (end - data_at) as u64 {
                return Err(StateError::Truncated {
                    at: off,
                    id,
                    need: len as u64,
                    have: end - data_at,
                });
            }
            let d = &b[data_at..data_at + len];
            st.chunks.push((id, off, len));
            let need = |want: usize| {
                if len < want {
                    Err(StateError::BadChunk {
                        at: off,
                        id,
                        len,
                        want,
                    })
                } else {
                    Ok(())
                }
            };
            match id {
                EPILOG => break,
                PROLOG => {
                    need(12)?;
                    if u32::from_le_bytes(d[0..4].try_into().expect("4")) == PROLOG_TAG {
                        st.vendor = Some(u32::from_le_bytes(d[8..12].try_into().expect("4")));
                    }
                }
                OS_ID => {
                    need(8)?;
                    st.os_id = Some(u64s(d, 1)[0]);
                }
                VP => {
                    need(4)?;
                    let index = u32::from_le_bytes(d[0..4].try_into().expect("4"));
                    st.vps.push(VpRegisters {
                        index,
                        ..VpRegisters::default()
                    });
                    cur = Some(st.vps.len() - 1);
                    vtl = 0;
                }
                VP_VTL => {
                    need(1)?;
                    vtl = d[0];
                }
                GP_REGISTERS | CONTROL_REGISTERS | SEGMENT_REGISTERS | TABLE_REGISTERS
                | XSAVE_CONTROL => {
                    let (Some(i), 0) = (cur, vtl) else {
                        off = data_at + len;
                        continue;
                    };
                    let vp = &mut st.vps[i];
                    match id {
                        GP_REGISTERS => {
                            need(144)?;
                            vp.gp.copy_from_slice(&u64s(d, 18));
                            vp.has_gp = true;
                        }
                        CONTROL_REGISTERS => {
                            need(48)?;
                            vp.control.copy_from_slice(&u64s(d, 6));
                            vp.has_control = true;
                        }
                        SEGMENT_REGISTERS => {
                            need(129)?;
                            for (k, s) in vp.segments.iter_mut().enumerate() {
                                *s = segment(&d[k * 16..k * 16 + 16]);
                            }
                            vp.cpl = d[128];
                            vp.has_segments = true;
                        }
                        TABLE_REGISTERS => {
                            need(32)?;
                            vp.idtr = table(&d[0..16]);
                            vp.gdtr = table(&d[16..32]);
                            vp.has_tables = true;
                        }
                        _ => {
                            need(8)?;
                            vp.xcr0 = u64s(d, 1)[0];
                        }
                    }
                }
                _ => {}
            }
            off = data_at + len;
        }
        Ok(st)
    }
}

fn chunk(out: &mut Vec<u8>, id: u32, data: &[u8]) {
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0u8; 8]);
    out.extend_from_slice(data);
}

fn le64(v: &[u64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Builds a blob in the order Microsoft's dump writer emits (which its
/// saved-state DLL accepts): prolog, OS id, partition VTL 0, VP indices,
/// then per VP its marker, VTL 0 marker, GP, control, segment, table,
/// debug, FP and XSAVE-control chunks, and the epilog.
pub fn build(vps: &[VpRegisters]) -> Vec<u8> {
    let mut out = vec![0u8; DESCRIPTOR_LEN + 16];
    let mut prolog = vec![0u8; 4064];
    prolog[0..4].copy_from_slice(&PROLOG_TAG.to_le_bytes());
    prolog[8..12].copy_from_slice(&VENDOR_INTEL.to_le_bytes());
    chunk(&mut out, PROLOG, &prolog);
    chunk(&mut out, OS_ID, &[0u8; 16]);
    chunk(&mut out, PARTITION_VTL, &[0u8; 16]);
    let max = vps.iter().map(|v| v.index).max().unwrap_or(0) as usize;
    let bitmap_len = (max / 8 + 1).max(8).div_ceil(4) * 4;
    let mut idx = vec![0u8; 4 + bitmap_len];
    idx[0..4].copy_from_slice(&vps.first().map_or(0, |v| v.index).to_le_bytes());
    for v in vps {
        idx[4 + v.index as usize / 8] |= 1 << (v.index % 8);
    }
    chunk(&mut out, VP_INDICES, &idx);
    for v in vps {
        let mut m = [0u8; 16];
        m[0..4].copy_from_slice(&v.index.to_le_bytes());
        chunk(&mut out, VP, &m);
        chunk(&mut out, VP_VTL, &[0u8; 16]);
        chunk(&mut out, GP_REGISTERS, &le64(&v.gp));
        chunk(&mut out, CONTROL_REGISTERS, &le64(&v.control));
        let mut seg = Vec::with_capacity(144);
        for s in &v.segments {
            seg.extend_from_slice(&s.base.to_le_bytes());
            seg.extend_from_slice(&s.limit.to_le_bytes());
            seg.extend_from_slice(&s.selector.to_le_bytes());
            seg.extend_from_slice(&s.attributes.to_le_bytes());
        }
        seg.push(v.cpl);
        seg.resize(144, 0);
        chunk(&mut out, SEGMENT_REGISTERS, &seg);
        let mut tab = vec![0u8; 32];
        for (k, t) in [v.idtr, v.gdtr].iter().enumerate() {
            tab[k * 16 + 6..k * 16 + 8].copy_from_slice(&t.limit.to_le_bytes());
            tab[k * 16 + 8..k * 16 + 16].copy_from_slice(&t.base.to_le_bytes());
        }
        chunk(&mut out, TABLE_REGISTERS, &tab);
        chunk(&mut out, DEBUG_REGISTERS, &[0u8; 48]);
        // FP: x87 control word 0x37F and MXCSR 0x1F80, their reset values.
        let mut fp = vec![0u8; 416];
        fp[0x180..0x182].copy_from_slice(&0x037Fu16.to_le_bytes());
        fp[0x198..0x19C].copy_from_slice(&0x1F80u32.to_le_bytes());
        chunk(&mut out, FP_REGISTERS, &fp);
        let mut x = vec![0u8; 64];
        x[0..8].copy_from_slice(&v.xcr0.max(1).to_le_bytes());
        chunk(&mut out, XSAVE_CONTROL, &x);
    }
    chunk(&mut out, EPILOG, &[]);
    let total = out.len() as u64;
    out[0..8].copy_from_slice(&(DESCRIPTOR_LEN as u64).to_le_bytes());
    out[8..16].copy_from_slice(&(DESCRIPTOR_LEN as u64).to_le_bytes());
    out[16..24].copy_from_slice(&total.to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_parse_round_trip() {
        let mut v = VpRegisters {
            index: 0,
            ..Default::default()
        };
        v.gp[16] = 0xFFFF_F800_1234_5678; // rip
        v.control = [0x8005_0033, 0, 0x1AD000, 0x370678, 0, 0xD01];
        v.segments[1] = Segment {
            base: 0,
            limit: 0xFFFF_FFFF,
            selector: 0x10,
            attributes: 0x209B,
        };
        v.idtr = Table {
            limit: 0xFFF,
            base: 0xFFFF_F800_0000_0000,
        };
        v.gdtr = Table {
            limit: 0x6F,
            base: 0xFFFF_F800_0000_1000,
        };
        v.xcr0 = 1;
        let mut w = v.clone();
        w.index = 3;
        w.gp[0] = 42;
        let blob = build(&[v.clone(), w.clone()]);
        let st = PartitionState::parse(&blob).unwrap();
        assert_eq!(st.vendor, Some(VENDOR_INTEL));
        assert_eq!(st.vps.len(), 2);
        for (got, want) in st.vps.iter().zip([v, w]) {
            assert_eq!(got.index, want.index);
            assert_eq!(got.gp, want.gp);
            assert_eq!(got.control, want.control);
            assert_eq!(got.segments, want.segments);
            assert_eq!(
                (got.idtr, got.gdtr, got.xcr0),
                (want.idtr, want.gdtr, want.xcr0)
            );
            assert!(got.has_gp && got.has_control && got.has_segments && got.has_tables);
        }
        // The first chunk sits at header_size + 16 = 40; CR3 at VP0's
        // control chunk + 0x20.
        assert_eq!(st.chunks[0], (PROLOG, 40, 4064));
        let cr = st.chunks.iter().find(|c| c.0 == CONTROL_REGISTERS).unwrap();
        assert_eq!(
            u64::from_le_bytes(blob[cr.1 + 0x20..cr.1 + 0x28].try_into().unwrap()),
            0x1AD000
        );
    }

    #[test]
    fn hostile_blobs() {
        assert_eq!(PartitionState::parse(&[0; 10]), Err(StateError::Short(10)));
        let mut b = build(&[VpRegisters::default()]);
        b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            PartitionState::parse(&b),
            Err(StateError::BadHeaderSize(_))
        ));
        let mut b = build(&[VpRegisters::default()]);
        b[44..48].copy_from_slice(&u32::MAX.to_le_bytes()); // prolog length
        assert!(matches!(
            PartitionState::parse(&b),
            Err(StateError::Truncated { .. })
        ));
        let b = build(&[VpRegisters::default()]);
        for cut in (0..b.len()).step_by(7) {
            let _ = PartitionState::parse(&b[..cut]);
        }
    }
}
