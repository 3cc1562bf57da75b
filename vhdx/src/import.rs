//! Converting any guest image (a raw file, a VHDX file or a differencing
//! chain) into a new fixed or dynamic VHDX file: the file is created empty
//! with [`create`], opened for writing, and the source's content is copied
//! in 4 MiB pieces. Pieces that read as zeros are not written, so they stay
//! unallocated in a dynamic file (and keep the zeros a new fixed file
//! already reads): a VHDX source's `Zero` runs are skipped without being
//! read, everything else is read and tested for zeros.

use crate::create::{create, CreateParams};
use crate::disk::Disk;
use crate::error::{Error, Result};
use crate::image::{OpenOptions, Run, VhdxFile};
use crate::raw::GuestImage;
use crate::storage::Storage;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Bytes copied per step.
pub const PIECE: u64 = 4 << 20;

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportStats {
    /// Guest bytes written into the new file.
    pub data_bytes: u64,
    /// Guest bytes skipped because they read as zeros (left unallocated in
    /// a dynamic file).
    pub zero_bytes: u64,
}

/// Writes a new VHDX file into `dst` (empty storage, usually a new file, named `dst_name` in
/// errors) holding the content of `src` (named `src_name` in errors).
/// `params` gives the type, block and sector sizes and identity; its
/// `virtual_size` is replaced by the source's size, which must be a non-zero
/// multiple of the logical sector size, and it must not name a parent.
/// `progress` gets the guest bytes done so far. The new file is closed
/// cleanly (flushed, empty log) before this returns.
pub fn to_vhdx(
    src: &dyn GuestImage,
    src_name: &str,
    dst: Box<dyn Storage>,
    dst_name: &str,
    params: &CreateParams,
    progress: &mut dyn FnMut(u64),
) -> Result<ImportStats> {
    let size = src.size();
    let lss = params.logical_sector_size as u64;
    if params.parent.is_some() {
        return Err(Error::unsupported(
            dst_name,
            "an imported disk cannot be a differencing disk",
        ));
    }
    if size == 0 || !size.is_multiple_of(lss) {
        return Err(Error::unsupported(
            src_name,
            format!(
                "its size of {size} bytes is not a non-zero multiple of the {lss}-byte logical \
                 sector size, so it cannot be a VHDX disk (pad it, e.g. `truncate -s %{lss} FILE`)"
            ),
        ));
    }
    let mut p = params.clone();
    p.virtual_size = size;
    create(&*dst, dst_name, &p, &BTreeMap::new())?;
    let file = VhdxFile::open(dst, dst_name, OpenOptions::writable())?;
    let mut disk = Disk::from_files(vec![(PathBuf::from(dst_name), file)], false)?;

    // Below a piece, the unit of allocation: pieces and blocks are powers
    // of two, so these sub-pieces never straddle a block.
    let sub = (p.block_size as u64).min(PIECE) as usize;
    let mut stats = ImportStats::default();
    let mut buf = vec![0u8; PIECE.min(size) as usize];
    let mut pos = 0u64;
    while pos < size {
        let n = PIECE.min(size - pos);
        let mut all_zero_runs = true;
        src.for_each_run(pos, n, &mut |r| {
            if !matches!(r, Run::Zero { .. }) {
                all_zero_runs = false;
            }
            Ok(())
        })?;
        if all_zero_runs {
            stats.zero_bytes += n;
        } else {
            let b = &mut buf[..n as usize];
            src.read_at(b, pos)?;
            // Write each stretch of non-zero sub-pieces in one call.
            let mut start: Option<usize> = None;
            for (i, part) in b.chunks(sub).enumerate() {
                let at = i * sub;
                if is_zero(part) {
                    stats.zero_bytes += part.len() as u64;
                    if let Some(s) = start.take() {
                        disk.write_at(&b[s..at], pos + s as u64)?;
                        stats.data_bytes += (at - s) as u64;
                    }
                } else if start.is_none() {
                    start = Some(at);
                }
            }
            if let Some(s) = start {
                disk.write_at(&b[s..], pos + s as u64)?;
                stats.data_bytes += (b.len() - s) as u64;
            }
        }
        pos += n;
        progress(pos);
    }
    disk.close()?;
    Ok(stats)
}

/// True when every byte of `b` is zero (vectorizes: no early exit inside a
/// 4 KiB stretch).
pub fn is_zero(b: &[u8]) -> bool {
    b.chunks(4096)
        .all(|c| c.iter().fold(0u8, |acc, &x| acc | x) == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ChainOptions;
    use std::fs::File;

    #[test]
    fn zero_pieces_stay_unallocated() {
        let t = tempfile::tempdir().unwrap();
        let raw = t.path().join("src.raw");
        let size = 24u64 << 20;
        let mut content = vec![0u8; size as usize];
        content[100..700].fill(7); // block 0
        content[(9 << 20) + 3..(9 << 20) + 5].fill(9); // block 9
        content[(24 << 20) - 1] = 1; // the last block
        std::fs::write(&raw, &content).unwrap();
        let src = crate::RawImage::open(&raw).unwrap();
        let out = t.path().join("out.vhdx");
        let f = File::create_new(&out).unwrap();
        let mut p = CreateParams::dynamic(0);
        p.block_size = 1 << 20;
        let mut last = 0;
        let stats = to_vhdx(&src, "src.raw", Box::new(f), "out.vhdx", &p, &mut |d| {
            last = d
        })
        .unwrap();
        assert_eq!(last, size);
        assert_eq!(stats.data_bytes, 3 << 20);
        assert_eq!(stats.zero_bytes, 21 << 20);
        let d = Disk::open(&out, &ChainOptions::default()).unwrap();
        assert_eq!(d.virtual_size(), size);
        assert_eq!(d.leaf().bat_stats().fully_present, 3);
        let mut back = vec![0u8; size as usize];
        d.read_at(&mut back, 0).unwrap();
        assert!(back == content);
    }

    #[test]
    fn sizes_must_be_whole_sectors() {
        let t = tempfile::tempdir().unwrap();
        let raw = t.path().join("odd.raw");
        std::fs::write(&raw, vec![1u8; 1000]).unwrap();
        let src = crate::RawImage::open(&raw).unwrap();
        let f = File::create_new(t.path().join("o.vhdx")).unwrap();
        let e = to_vhdx(
            &src,
            "odd.raw",
            Box::new(f),
            "o.vhdx",
            &CreateParams::dynamic(0),
            &mut |_| {},
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("odd.raw") && e.contains("512-byte"), "{e}");
    }

    #[test]
    fn is_zero_finds_any_byte() {
        let mut b = vec![0u8; 10000];
        assert!(is_zero(&b));
        b[9999] = 1;
        assert!(!is_zero(&b));
        assert!(is_zero(&[]));
    }
}
