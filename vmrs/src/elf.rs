//! Guest-physical memory as an ELF64 core file: one `PT_LOAD` per
//! populated range (physical and virtual address = guest-physical
//! address), data page-aligned in the file. Readable by `readelf -l` and by
//! ELF-core memory layers such as volatility3's.

/// ELF64 header and program header sizes.
pub const EHDR: usize = 64;
pub const PHDR: usize = 56;
const PT_LOAD: u32 = 1;
const ET_CORE: u16 = 4;
const EM_X86_64: u16 = 62;
const PF_R: u32 = 4;
const PF_W: u32 = 2;
const PF_X: u32 = 1;
pub const ALIGN: u64 = 4096;

/// The file layout for `ranges` (gpa, len): the header bytes and the file
/// offset of each range's data.
pub fn layout(ranges: &[(u64, u64)]) -> (Vec<u8>, Vec<u64>) {
    let head = (EHDR + PHDR * ranges.len()) as u64;
    let mut at = head.div_ceil(ALIGN) * ALIGN;
    let mut offsets = Vec::with_capacity(ranges.len());
    for &(_, len) in ranges {
        offsets.push(at);
        at += len.div_ceil(ALIGN) * ALIGN;
    }
    let mut h = vec![0u8; head as usize];
    h[0..4].copy_from_slice(b"\x7fELF");
    h[4] = 2; // 64-bit
    h[5] = 1; // little-endian
    h[6] = 1; // version
    h[16..18].copy_from_slice(&ET_CORE.to_le_bytes());
    h[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
    h[20..24].copy_from_slice(&1u32.to_le_bytes());
    h[32..40].copy_from_slice(&(EHDR as u64).to_le_bytes()); // e_phoff
    h[52..54].copy_from_slice(&(EHDR as u16).to_le_bytes());
    h[54..56].copy_from_slice(&(PHDR as u16).to_le_bytes());
    h[56..58].copy_from_slice(&(ranges.len().min(0xFFFF) as u16).to_le_bytes());
    for (i, (&(gpa, len), &off)) in ranges.iter().zip(&offsets).enumerate() {
        let p = &mut h[EHDR + i * PHDR..EHDR + (i + 1) * PHDR];
        p[0..4].copy_from_slice(&PT_LOAD.to_le_bytes());
        p[4..8].copy_from_slice(&(PF_R | PF_W | PF_X).to_le_bytes());
        p[8..16].copy_from_slice(&off.to_le_bytes());
        p[16..24].copy_from_slice(&gpa.to_le_bytes()); // p_vaddr
        p[24..32].copy_from_slice(&gpa.to_le_bytes()); // p_paddr
        p[32..40].copy_from_slice(&len.to_le_bytes()); // p_filesz
        p[40..48].copy_from_slice(&len.to_le_bytes()); // p_memsz
        p[48..56].copy_from_slice(&ALIGN.to_le_bytes());
    }
    (h, offsets)
}

/// Parses the `PT_LOAD` headers of an ELF64 core we wrote (tests):
/// (paddr, file offset, size).
pub fn loads(b: &[u8]) -> Option<Vec<(u64, u64, u64)>> {
    if b.get(0..4)? != b"\x7fELF" || b[4] != 2 {
        return None;
    }
    let phoff = u64::from_le_bytes(b.get(32..40)?.try_into().ok()?) as usize;
    let n = u16::from_le_bytes(b.get(56..58)?.try_into().ok()?) as usize;
    let mut v = Vec::new();
    for i in 0..n {
        let p = b.get(phoff + i * PHDR..phoff + (i + 1) * PHDR)?;
        if u32::from_le_bytes(p[0..4].try_into().ok()?) == PT_LOAD {
            let f = |o: usize| u64::from_le_bytes(p[o..o + 8].try_into().expect("8"));
            v.push((f(24), f(8), f(32)));
        }
    }
    Some(v)
}
