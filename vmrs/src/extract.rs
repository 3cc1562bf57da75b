//! Guest-physical memory out of a saved state: a sparse raw image (byte at
//! file offset X = guest-physical address X; holes and MMIO gaps stay
//! holes) or an ELF64 core with one `PT_LOAD` per range. Raw RamBlocks
//! stored as file objects are copied in the kernel (`copy_file_range`)
//! straight from the `.vmrs`; compressed ones are decoded, and their zero
//! pages are left as holes.

use crate::elf;
use crate::error::Result;
use crate::ram_block::{BLOCK_LEN, PAGE, PAGES_PER_BLOCK};
use crate::saved_state::SavedState;
use std::fs::File;
use std::os::unix::fs::FileExt;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Raw,
    Elf,
}

/// What an extraction did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtractStats {
    pub ranges: usize,
    /// Guest bytes written (ranges only).
    pub bytes: u64,
    /// Of those, moved by `copy_file_range`.
    pub copied_in_kernel: u64,
    pub file_len: u64,
}

/// Writes the memory of `s` to `out` (truncated first). `progress` gets the
/// guest bytes done so far.
pub fn extract(
    s: &SavedState,
    out: &File,
    format: Format,
    progress: &mut dyn FnMut(u64),
) -> Result<ExtractStats> {
    let ranges: Vec<(u64, u64)> = s.ranges().iter().map(|r| (r.gpa, r.len)).collect();
    if format == Format::Elf {
        // The ranges back to back after the headers must fit a 64-bit file.
        let head =
            ((elf::EHDR + elf::PHDR * ranges.len()) as u64).div_ceil(elf::ALIGN) * elf::ALIGN;
        if ranges
            .iter()
            .try_fold(head, |at, r| {
                at.checked_add(r.1.div_ceil(elf::ALIGN) * elf::ALIGN)
            })
            .is_none()
        {
            let msg = format!(
                "{} bytes of guest memory in {} ranges do not fit an ELF file",
                s.memory_size(),
                ranges.len()
            );
            return Err(std::io::Error::new(std::io::ErrorKind::FileTooLarge, msg).into());
        }
    }
    let (head, offsets) = match format {
        Format::Raw => (Vec::new(), ranges.iter().map(|r| r.0).collect()),
        Format::Elf => elf::layout(&ranges),
    };
    let file_len = match format {
        Format::Raw => ranges.iter().map(|r| r.0 + r.1).max().unwrap_or(0),
        Format::Elf => offsets
            .iter()
            .zip(&ranges)
            .map(|(o, r)| o + r.1)
            .max()
            .unwrap_or(head.len() as u64),
    };
    out.set_len(0)?;
    out.set_len(file_len)?;
    out.write_all_at(&head, 0)?;
    let mut st = ExtractStats {
        ranges: ranges.len(),
        file_len,
        ..Default::default()
    };
    let direct = s.store().direct_file();
    let mut buf = vec![0u8; BLOCK_LEN];
    for (r, &dst0) in s.ranges().iter().zip(&offsets) {
        let mut done = 0u64;
        while done < r.len {
            let page = r.block.first_page + done / PAGE as u64;
            let block = page / PAGES_PER_BLOCK as u64;
            let in_block = (page % PAGES_PER_BLOCK as u64) * PAGE as u64;
            let n = (BLOCK_LEN as u64 - in_block).min(r.len - done);
            let dst = dst0 + done;
            let mut copied = 0;
            if let (Some(src), Some(at)) = (direct, s.raw_block_offset(block)) {
                copied = vhdx::export::copy_range(src, at.saturating_add(in_block), out, dst, n)?;
                st.copied_in_kernel += copied;
            }
            if copied < n {
                let rest = (n - copied) as usize;
                let b = &mut buf[..rest];
                s.read_gpa(r.gpa + done + copied, b)?;
                // Zero pages stay holes.
                for (i, p) in b.chunks(PAGE).enumerate() {
                    if p.iter().any(|&x| x != 0) {
                        out.write_all_at(p, dst + copied + (i * PAGE) as u64)?;
                    }
                }
            }
            done += n;
            st.bytes += n;
            progress(st.bytes);
        }
    }
    Ok(st)
}
