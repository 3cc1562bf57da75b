//! Creating a new VHDX or AVHDX file in one pass, with the layout Hyper-V
//! uses (log at 1 MiB, metadata at 2 MiB, BAT at 3 MiB, payload after) and
//! the given block contents. The file is not usable until this returns.

use crate::bat::Geometry;
use crate::error::{Error, Result};
use crate::format::bat_entry::{self, PayloadState};
use crate::format::file_id::FileIdentifier;
use crate::format::header::Header;
use crate::format::locator::ParentLocator;
use crate::format::metadata::{self as md, FileParameters, MetadataEntry};
use crate::format::region::{RegionEntry, RegionTable};
use crate::format::{
    guids, HEADER1_OFFSET, HEADER2_OFFSET, MAX_VIRTUAL_SIZE, MIB, REGION1_OFFSET, REGION2_OFFSET,
};
use crate::sector_bitmap;
use crate::storage::Storage;
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use uuid::Uuid;

const LOG_OFFSET: u64 = MIB;
const LOG_LENGTH: u32 = MIB as u32;
const METADATA_OFFSET: u64 = 2 * MIB;
const BAT_OFFSET: u64 = 3 * MIB;

/// The parent of a differencing disk, as its locator will name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentLink {
    /// The parent's DataWriteGuid (written as `parent_linkage`).
    pub data_write_guid: Uuid,
    /// Further locator keys (`relative_path`, `volume_path`, `absolute_win32_path`).
    pub paths: Vec<(String, String)>,
}

impl ParentLink {
    /// A link by relative path only.
    pub fn relative(data_write_guid: Uuid, relative_path: &str) -> Self {
        ParentLink {
            data_write_guid,
            paths: vec![("relative_path".into(), relative_path.into())],
        }
    }

    /// The link Hyper-V would write for `parent_path` as the parent of a
    /// new differencing disk at `child_path` (which need not exist yet):
    /// `parent_linkage` (from `locator`), then
    ///
    /// - `relative_path`: from the child's folder to the parent, Windows
    ///   syntax with `\` separators: `base.vhdx` in the same folder,
    ///   `..\dir\base.vhdx` otherwise;
    /// - `volume_path`: `\\?\Volume{<uuid>}\<path below the filesystem's
    ///   root, \ separated>`, where `<uuid>` is the Linux filesystem UUID of
    ///   the filesystem holding the parent (found through
    ///   `/proc/self/mountinfo` and the `/dev/disk/by-uuid` symlinks). Left
    ///   out when it cannot be found, or when the filesystem's UUID is not a
    ///   GUID (vfat and NTFS serial numbers);
    /// - `absolute_win32_path`: `\\?\` immediately followed by the parent's
    ///   absolute Linux path with `/` turned into `\`, so `/tmp/x/base.vhdx`
    ///   becomes `\\?\\tmp\x\base.vhdx`.
    ///
    /// Folders are canonicalized (symlinks resolved); the file names are
    /// kept as given. Windows cannot resolve `volume_path` or
    /// `absolute_win32_path` written here (they name no Windows volume or
    /// drive); they are written because Hyper-V writes every key, and the
    /// resolver here ([`crate::parent::candidates`]) maps them onto the
    /// child's folder by file name. `relative_path` is tried first and finds
    /// the parent as long as both files keep their relative places.
    pub fn for_parent(
        child_path: &Path,
        parent_path: &Path,
        parent_data_write_guid: Uuid,
    ) -> ParentLink {
        let child_dir = match child_path.parent() {
            Some(d) if !d.as_os_str().is_empty() => absolute(d),
            _ => absolute(Path::new(".")),
        };
        let parent = match (parent_path.parent(), parent_path.file_name()) {
            (Some(d), Some(name)) if !d.as_os_str().is_empty() => absolute(d).join(name),
            (_, Some(name)) => absolute(Path::new(".")).join(name),
            _ => absolute(parent_path),
        };
        let mut paths = vec![(
            "relative_path".to_string(),
            relative_windows_path(&child_dir, &parent),
        )];
        if let Some(v) = volume_path(&parent) {
            paths.push(("volume_path".into(), v));
        }
        paths.push(("absolute_win32_path".into(), win32_absolute_path(&parent)));
        ParentLink {
            data_write_guid: parent_data_write_guid,
            paths,
        }
    }

    pub fn locator(&self) -> ParentLocator {
        let mut entries = vec![(
            "parent_linkage".to_string(),
            format!("{{{}}}", self.data_write_guid),
        )];
        entries.extend(self.paths.iter().cloned());
        ParentLocator {
            locator_type: guids::LOCATOR_TYPE_VHDX,
            entries,
        }
    }
}

/// `p` made absolute with symlinks resolved; as absolute as possible when
/// it does not exist.
fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p)
        .or_else(|_| std::path::absolute(p))
        .unwrap_or_else(|_| p.to_path_buf())
}

/// The path from folder `from_dir` to `to` (both absolute, without `.` or
/// `..`), in Windows syntax: `base.vhdx`, `sub\base.vhdx`, `..\dir\base.vhdx`.
pub fn relative_windows_path(from_dir: &Path, to: &Path) -> String {
    let names = |p: &Path| -> Vec<String> {
        p.components()
            .filter_map(|c| match c {
                Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
                _ => None,
            })
            .collect()
    };
    let (from, to) = (names(from_dir), names(to));
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<&str> = vec![".."; from.len() - common];
    parts.extend(to[common..].iter().map(String::as_str));
    parts.join("\\")
}

/// `\\?\` followed by the absolute path `abs` with `/` turned into `\`:
/// `/tmp/x/base.vhdx` → `\\?\\tmp\x\base.vhdx`. Not a path Windows can
/// open; see [`ParentLink::for_parent`].
pub fn win32_absolute_path(abs: &Path) -> String {
    format!("\\\\?\\{}", abs.to_string_lossy().replace('/', "\\"))
}

/// `volume_path` for the absolute path `abs` on this system (see
/// [`ParentLink::for_parent`]).
fn volume_path(abs: &Path) -> Option<String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    volume_path_from(&mountinfo, Path::new("/dev/disk/by-uuid"), abs)
}

/// `volume_path` for `abs` given the text of a `mountinfo` file and a
/// folder of `by-uuid` symlinks: the mount with the longest mount point
/// holding `abs` (the later one on a tie, as it hides the earlier), its
/// filesystem's UUID (the symlink whose target is the mount's device, by
/// device number or by path), and the path below the filesystem's root
/// (the mount's root joined with the rest of `abs`).
pub fn volume_path_from(mountinfo: &str, by_uuid: &Path, abs: &Path) -> Option<String> {
    struct Mount {
        dev: (u64, u64),
        root: PathBuf,
        point: PathBuf,
        source: String,
    }
    let mut best: Option<Mount> = None;
    for line in mountinfo.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        // Six fixed fields, optional fields, "-", type, source, options.
        let Some(sep) = f.iter().skip(6).position(|&x| x == "-").map(|i| i + 6) else {
            continue;
        };
        if f.len() < sep + 3 {
            continue;
        }
        let Some((maj, min)) = f[2].split_once(':') else {
            continue;
        };
        let (Ok(maj), Ok(min)) = (maj.parse::<u64>(), min.parse::<u64>()) else {
            continue;
        };
        let point = PathBuf::from(unescape_mountinfo(f[4]));
        if !abs.starts_with(&point) {
            continue;
        }
        if best
            .as_ref()
            .is_some_and(|b| b.point.components().count() > point.components().count())
        {
            continue;
        }
        best = Some(Mount {
            dev: (maj, min),
            root: PathBuf::from(unescape_mountinfo(f[3])),
            point,
            source: unescape_mountinfo(f[sep + 2]),
        });
    }
    let m = best?;
    let source = m
        .source
        .starts_with('/')
        .then(|| std::fs::canonicalize(&m.source).ok())
        .flatten();
    let mut uuid = None;
    for entry in std::fs::read_dir(by_uuid).ok()?.flatten() {
        let name = entry.file_name();
        let Some(id) = name.to_str().and_then(|n| Uuid::parse_str(n).ok()) else {
            continue;
        };
        let target = entry.path();
        let by_dev = std::fs::metadata(&target).is_ok_and(|md| {
            use std::os::unix::fs::{FileTypeExt, MetadataExt};
            md.file_type().is_block_device() && dev_numbers(md.rdev()) == m.dev
        });
        let by_path = source.is_some() && std::fs::canonicalize(&target).ok() == source;
        if by_dev || by_path {
            uuid = Some(id);
            break;
        }
    }
    let uuid = uuid?;
    let below = m.root.join(abs.strip_prefix(&m.point).ok()?);
    let parts: Vec<String> = below
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    Some(format!("\\\\?\\Volume{{{uuid}}}\\{}", parts.join("\\")))
}

/// Major and minor numbers of a Linux `dev_t` (glibc's encoding).
fn dev_numbers(dev: u64) -> (u64, u64) {
    let major = ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff);
    let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0xff);
    (major, minor)
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\134` for `\`).
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && (b'0'..=b'3').contains(&b[i + 1])
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push(((b[i + 1] - b'0') << 6) | ((b[i + 2] - b'0') << 3) | (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parameters of a new file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateParams {
    pub virtual_size: u64,
    pub block_size: u32,
    pub logical_sector_size: u32,
    pub physical_sector_size: u32,
    /// Allocate every block (LeaveBlockAllocated).
    pub fixed: bool,
    pub parent: Option<ParentLink>,
    pub creator: String,
    pub virtual_disk_id: Uuid,
    pub data_write_guid: Uuid,
    /// A differencing disk gets an all-zero sector bitmap block for every
    /// chunk (left sparse in the file). The format allows leaving them out
    /// until a block is partially written, but libvhdi then reads the
    /// "bitmap" of such a chunk from the start of the file and shows
    /// garbage instead of the parent; with them, every reader sees an
    /// empty child as its parent.
    pub bitmaps_present: bool,
}

impl CreateParams {
    /// A dynamic disk with Hyper-V's defaults (32 MiB blocks, 512/4096 sectors).
    pub fn dynamic(virtual_size: u64) -> Self {
        CreateParams {
            virtual_size,
            block_size: 32 << 20,
            logical_sector_size: 512,
            physical_sector_size: 4096,
            fixed: false,
            parent: None,
            creator: format!("hvkit {}", env!("CARGO_PKG_VERSION")),
            virtual_disk_id: Uuid::new_v4(),
            data_write_guid: Uuid::new_v4(),
            bitmaps_present: false,
        }
    }

    /// A differencing disk with Hyper-V's defaults (2 MiB blocks).
    pub fn differencing(virtual_size: u64, parent: ParentLink) -> Self {
        CreateParams {
            block_size: 2 << 20,
            parent: Some(parent),
            ..Self::dynamic(virtual_size)
        }
    }
}

/// What one payload block holds in a new file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockContent {
    NotPresent,
    Undefined,
    Zero,
    Unmapped,
    /// The block's bytes (shorter than a block: the rest is zero).
    Full(Vec<u8>),
    /// Bytes of a differencing block and which sectors are present.
    Partial {
        data: Vec<u8>,
        present: Vec<bool>,
    },
}

/// Writes a new file into `storage` (which should be empty) holding
/// `blocks` (payload block index → content; blocks not listed are
/// NOT_PRESENT, or allocated zeros in a fixed disk).
pub fn create(
    storage: &dyn Storage,
    name: &str,
    p: &CreateParams,
    blocks: &BTreeMap<u64, BlockContent>,
) -> Result<()> {
    let bad = |m: String| Error::unsupported(name, m);
    if !(MIB as u32..=256 << 20).contains(&p.block_size) || !p.block_size.is_power_of_two() {
        return Err(bad(format!(
            "block size {} must be a power of two from 1 MiB to 256 MiB",
            p.block_size
        )));
    }
    for s in [p.logical_sector_size, p.physical_sector_size] {
        if s != 512 && s != 4096 {
            return Err(bad(format!("sector size {s} must be 512 or 4096")));
        }
    }
    let lss = p.logical_sector_size as u64;
    if p.virtual_size == 0
        || !p.virtual_size.is_multiple_of(lss)
        || p.virtual_size > MAX_VIRTUAL_SIZE
    {
        return Err(bad(format!(
            "virtual size {} must be a non-zero multiple of {lss} up to 64 TiB",
            p.virtual_size
        )));
    }
    let g = Geometry::new(p.virtual_size, p.block_size as u64, lss, p.parent.is_some());
    if let Some((&b, _)) = blocks.range(g.payload_blocks..).next() {
        return Err(bad(format!("block {b} lies past the end of the disk")));
    }
    let w = |buf: &[u8], off: u64| {
        storage
            .write_at(buf, off)
            .map_err(|e| Error::io(name, off, e))
    };

    let bat_len = (g.bat_entries() * 8).next_multiple_of(MIB).max(MIB);
    let mut next = BAT_OFFSET + bat_len;
    let mut bat = vec![0u64; g.bat_entries() as usize];
    let mut bitmaps: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let spb = g.sectors_per_block();
    for b in 0..g.payload_blocks {
        let default = if p.fixed {
            BlockContent::Full(Vec::new())
        } else {
            BlockContent::NotPresent
        };
        let content = blocks.get(&b).unwrap_or(&default);
        let (state, data) = match content {
            BlockContent::NotPresent => (PayloadState::NotPresent, None),
            BlockContent::Undefined => (PayloadState::Undefined, None),
            BlockContent::Zero => (PayloadState::Zero, None),
            BlockContent::Unmapped => (PayloadState::Unmapped, None),
            BlockContent::Full(d) => (PayloadState::FullyPresent, Some(d)),
            BlockContent::Partial { data, present } => {
                if p.parent.is_none() {
                    return Err(bad(format!("block {b}: partial blocks need a parent")));
                }
                let chunk = b / g.chunk_ratio;
                let bits = bitmaps
                    .entry(chunk)
                    .or_insert_with(|| vec![0u8; MIB as usize]);
                let first = (b % g.chunk_ratio) * spb;
                for (s, &on) in present.iter().enumerate().take(spb as usize) {
                    sector_bitmap::set_bit(bits, first + s as u64, on);
                }
                (PayloadState::PartiallyPresent, Some(data))
            }
        };
        let mut entry = bat_entry::make(state.bits(), 0);
        if let Some(d) = data {
            entry = bat_entry::make(state.bits(), next);
            let d = &d[..d.len().min(g.block_size as usize)];
            match content {
                BlockContent::Partial { present, .. } => {
                    // Only present sectors carry data; absent ones stay zero.
                    for (s, &on) in present.iter().enumerate().take(spb as usize) {
                        let (a, z) = (s * lss as usize, (s + 1) * lss as usize);
                        if on && a < d.len() {
                            w(&d[a..z.min(d.len())], next + a as u64)?;
                        }
                    }
                }
                _ if d.iter().any(|&x| x != 0) => w(d, next)?,
                _ => {}
            }
            next += g.block_size;
        }
        bat[g.payload_entry(b)] = entry;
    }
    // Sector bitmap blocks: those partial blocks need, and with
    // `bitmaps_present` an all-zero one (nothing to write) for every other
    // chunk.
    let chunks_with_bitmaps: Vec<u64> = if p.bitmaps_present && p.parent.is_some() {
        (0..g.chunks).collect()
    } else {
        bitmaps.keys().copied().collect()
    };
    for chunk in chunks_with_bitmaps {
        bat[g.bitmap_entry(chunk)] = bat_entry::make(bat_entry::SB_BLOCK_PRESENT, next);
        if let Some(bits) = bitmaps.get(&chunk).filter(|b| !crate::import::is_zero(b)) {
            w(bits, next)?;
        }
        next += MIB;
    }
    if p.fixed {
        // A fixed disk owns its space: reserve it now where the filesystem
        // can (running out of space is an error), else leave it sparse.
        storage
            .preallocate(next)
            .map_err(|e| Error::io(name, 0, e))?;
    }
    storage
        .set_len(next)
        .map_err(|e| Error::io(name, next, e))?;

    // The file was just extended with zeros: of the large structures only
    // the part up to their last non-zero byte is written (a new 8 GiB
    // differencing disk is then about 140 KiB of writes, not 1.2 MiB).
    let w_used = |buf: &[u8], off: u64| {
        // The last non-zero 4 KiB piece, then the byte (a piece at a time
        // vectorizes; most of these buffers are zeros).
        let piece = buf.chunks(4096).rposition(|c| !crate::import::is_zero(c));
        match piece {
            Some(i) => {
                let c = &buf[i * 4096..buf.len().min((i + 1) * 4096)];
                let last = i * 4096 + c.iter().rposition(|&b| b != 0).expect("non-zero");
                w(&buf[..last + 1], off)
            }
            None => Ok(()),
        }
    };
    let bat_bytes: Vec<u8> = bat.iter().flat_map(|e| e.to_le_bytes()).collect();
    w_used(&bat_bytes, BAT_OFFSET)?;
    w_used(&metadata_region(p, &g), METADATA_OFFSET)?;
    let regions = RegionTable {
        entries: vec![
            RegionEntry {
                guid: guids::BAT_REGION,
                file_offset: BAT_OFFSET,
                length: bat_len as u32,
                required: true,
            },
            RegionEntry {
                guid: guids::METADATA_REGION,
                file_offset: METADATA_OFFSET,
                length: MIB as u32,
                required: true,
            },
        ],
    }
    .to_bytes();
    w_used(&regions, REGION1_OFFSET)?;
    w_used(&regions, REGION2_OFFSET)?;
    let file_write_guid = Uuid::new_v4();
    for (seq, off) in [(1u64, HEADER1_OFFSET), (2, HEADER2_OFFSET)] {
        let h = Header {
            sequence_number: seq,
            file_write_guid,
            data_write_guid: p.data_write_guid,
            log_guid: Uuid::nil(),
            log_version: 0,
            version: 1,
            log_length: LOG_LENGTH,
            log_offset: LOG_OFFSET,
        };
        w(&h.to_bytes(), off)?;
    }
    w(
        &FileIdentifier {
            creator: p.creator.clone(),
        }
        .to_bytes(),
        0,
    )?;
    storage.flush().map_err(|e| Error::io(name, 0, e))
}

/// The metadata region as Windows lays it out: table, then items packed
/// from 64 KiB (file parameters, size, sector sizes, disk id, locator).
fn metadata_region(p: &CreateParams, g: &Geometry) -> Vec<u8> {
    let fp = FileParameters {
        block_size: p.block_size,
        leave_block_allocated: p.fixed,
        has_parent: g.has_parent,
    };
    let mut items: Vec<(uuid::Uuid, Vec<u8>, bool)> = vec![
        (guids::FILE_PARAMETERS, fp.to_bytes().to_vec(), false),
        (
            guids::VIRTUAL_DISK_SIZE,
            p.virtual_size.to_le_bytes().to_vec(),
            true,
        ),
        (
            guids::LOGICAL_SECTOR_SIZE,
            p.logical_sector_size.to_le_bytes().to_vec(),
            true,
        ),
        (
            guids::PHYSICAL_SECTOR_SIZE,
            p.physical_sector_size.to_le_bytes().to_vec(),
            true,
        ),
        (
            guids::VIRTUAL_DISK_ID,
            p.virtual_disk_id.to_bytes_le().to_vec(),
            true,
        ),
    ];
    if let Some(link) = &p.parent {
        items.push((guids::PARENT_LOCATOR, link.locator().to_bytes(), false));
    }
    let mut region = vec![0u8; MIB as usize];
    let mut entries = Vec::new();
    let mut at = md::TABLE_SIZE;
    for (id, bytes, vd) in items {
        region[at..at + bytes.len()].copy_from_slice(&bytes);
        entries.push(MetadataEntry {
            item_id: id,
            offset: at as u32,
            length: bytes.len() as u32,
            is_user: false,
            is_virtual_disk: vd,
            is_required: true,
        });
        at += bytes.len();
    }
    region[..md::TABLE_SIZE].copy_from_slice(&md::table_to_bytes(&entries));
    region
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemStorage;

    #[test]
    fn present_empty_bitmaps_read_the_parent() {
        let t = tempfile::tempdir().unwrap();
        let base = t.path().join("base.vhdx");
        let f = std::fs::File::create_new(&base).unwrap();
        let mut bp = CreateParams::dynamic(6 << 30); // two chunks at 2 MiB blocks
        bp.block_size = 2 << 20;
        let mut blocks = BTreeMap::new();
        blocks.insert(2047u64, BlockContent::Full(vec![7u8; 2 << 20]));
        create(&f, "base", &bp, &blocks).unwrap();
        let pf = crate::VhdxFile::open_path(&base, crate::OpenOptions::read_only()).unwrap();
        let child = t.path().join("child.avhdx");
        let link = ParentLink::for_parent(&child, &base, pf.header().data_write_guid);
        let mut cp = CreateParams::differencing(6 << 30, link);
        cp.bitmaps_present = true;
        let mem = MemStorage::new(Vec::new());
        create(&mem, "child", &cp, &BTreeMap::new()).unwrap();
        std::fs::write(&child, mem.to_vec()).unwrap();
        let c = crate::VhdxFile::open_path(&child, crate::OpenOptions::read_only()).unwrap();
        assert_eq!(c.bat_stats().bitmap_blocks_present, 2);
        assert_eq!(c.bat_stats().not_present, 3072);
        let d = crate::Disk::open(&child, &crate::ChainOptions::default()).unwrap();
        let mut b = vec![0u8; 4096];
        d.read_at(&mut b, (2047 << 21) + 4096).unwrap();
        assert!(b.iter().all(|&x| x == 7), "reads the parent");
        let r =
            crate::check::check(Box::new(std::fs::File::open(&child).unwrap()), "child").unwrap();
        assert!(r.problems.is_empty(), "{:?}", r.problems);
    }

    #[test]
    fn relative_paths_in_windows_syntax() {
        let r = |a: &str, b: &str| relative_windows_path(Path::new(a), Path::new(b));
        assert_eq!(r("/vm", "/vm/base.vhdx"), "base.vhdx");
        assert_eq!(r("/vm", "/vm/sub/base.vhdx"), "sub\\base.vhdx");
        assert_eq!(r("/vm/b", "/vm/a/base.vhdx"), "..\\a\\base.vhdx");
        assert_eq!(r("/vm/b/c", "/x/base.vhdx"), "..\\..\\..\\x\\base.vhdx");
        assert_eq!(r("/", "/base.vhdx"), "base.vhdx");
        assert_eq!(r("/vm/my disks", "/vm/base.vhdx"), "..\\base.vhdx");
    }

    #[test]
    fn absolute_win32_path_prefixes_the_linux_path() {
        assert_eq!(
            win32_absolute_path(Path::new("/tmp/x/base.vhdx")),
            "\\\\?\\\\tmp\\x\\base.vhdx"
        );
        assert_eq!(
            win32_absolute_path(Path::new("/base.vhdx")),
            "\\\\?\\\\base.vhdx"
        );
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo("/mnt/my\\040disk"), "/mnt/my disk");
        assert_eq!(unescape_mountinfo("a\\134b"), "a\\b");
        assert_eq!(unescape_mountinfo("a\\9xy"), "a\\9xy");
        assert_eq!(unescape_mountinfo("end\\04"), "end\\04");
    }

    #[test]
    fn dev_numbers_decode_glibc_encoding() {
        assert_eq!(dev_numbers(0x0801), (8, 1));
        assert_eq!(dev_numbers(0xfe00), (254, 0));
        // major 259, minor 300: the extended bits.
        let dev = ((259u64 & 0xfff) << 8) | (300u64 & 0xff) | ((300u64 & !0xff) << 12);
        assert_eq!(dev_numbers(dev), (259, 300));
    }

    #[test]
    fn volume_path_from_mountinfo_and_by_uuid() {
        let t = tempfile::tempdir().unwrap();
        let by_uuid = t.path().join("by-uuid");
        std::fs::create_dir(&by_uuid).unwrap();
        // Stand-ins for block devices, matched by path.
        let (root_dev, data_dev, fat_dev) = (
            t.path().join("vda1"),
            t.path().join("vdb1"),
            t.path().join("vdc1"),
        );
        for d in [&root_dev, &data_dev, &fat_dev] {
            std::fs::write(d, b"").unwrap();
        }
        let root_uuid = "0f6e0b5a-6f3e-4a3c-9d0e-6c1f7d2b4a11";
        let data_uuid = "8d1c0a3e-1b2c-4d5e-8f90-a1b2c3d4e5f6";
        std::os::unix::fs::symlink(&root_dev, by_uuid.join(root_uuid)).unwrap();
        std::os::unix::fs::symlink(&data_dev, by_uuid.join(data_uuid)).unwrap();
        std::os::unix::fs::symlink(&fat_dev, by_uuid.join("ABCD-1234")).unwrap();
        let mountinfo = format!(
            "22 27 0:21 / /proc rw,relatime - proc proc rw\n\
             27 1 252:1 / / rw,relatime shared:1 - ext4 {} rw\n\
             40 27 252:17 /vms\\040store /srv/my\\040vms rw,relatime shared:5 - xfs {} rw\n\
             41 27 252:33 / /boot/efi rw - vfat {} rw\n\
             42 27 0:50 / /tmp rw - tmpfs tmpfs rw\n",
            root_dev.display(),
            data_dev.display(),
            fat_dev.display()
        );
        let v = |p: &str| volume_path_from(&mountinfo, &by_uuid, Path::new(p));
        assert_eq!(
            v("/home/u/base.vhdx").as_deref(),
            Some(format!("\\\\?\\Volume{{{root_uuid}}}\\home\\u\\base.vhdx").as_str())
        );
        // A bind mount of a folder: the path below the filesystem's root.
        assert_eq!(
            v("/srv/my vms/a/base.vhdx").as_deref(),
            Some(format!("\\\\?\\Volume{{{data_uuid}}}\\vms store\\a\\base.vhdx").as_str())
        );
        // Not a GUID, and no device at all: no volume_path.
        assert_eq!(v("/boot/efi/base.vhdx"), None);
        assert_eq!(v("/tmp/base.vhdx"), None);
        assert_eq!(
            volume_path_from(&mountinfo, &t.path().join("missing"), Path::new("/x")),
            None
        );
    }

    #[test]
    fn for_parent_writes_hyper_v_keys_the_resolver_follows() {
        let t = tempfile::tempdir().unwrap();
        let dir = std::fs::canonicalize(t.path()).unwrap();
        std::fs::create_dir_all(dir.join("a")).unwrap();
        std::fs::create_dir_all(dir.join("b")).unwrap();
        let parent = dir.join("a").join("base.vhdx");
        std::fs::write(&parent, b"").unwrap();
        let child = dir.join("b").join("child.avhdx");
        let guid = Uuid::new_v4();
        let link = ParentLink::for_parent(&child, &parent, guid);
        let loc = link.locator();
        let keys: Vec<&str> = loc.entries.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys[0], "parent_linkage");
        assert_eq!(keys[1], "relative_path");
        assert_eq!(*keys.last().unwrap(), "absolute_win32_path");
        assert_eq!(
            loc.get("parent_linkage"),
            Some(format!("{{{guid}}}").as_str())
        );
        assert_eq!(loc.get("relative_path"), Some("..\\a\\base.vhdx"));
        let abs = format!("\\\\?\\{}", parent.to_str().unwrap().replace('/', "\\"));
        assert_eq!(loc.get("absolute_win32_path"), Some(abs.as_str()));
        if let Some(v) = loc.get("volume_path") {
            assert!(v.starts_with("\\\\?\\Volume{"), "{v}");
            assert!(v.ends_with("\\a\\base.vhdx"), "{v}");
        }
        let c = crate::parent::candidates(&child, &loc);
        assert_eq!(c[0].0, "relative_path");
        assert_eq!(
            std::fs::canonicalize(&c[0].1).unwrap(),
            std::fs::canonicalize(&parent).unwrap()
        );

        // Same folder, given relative to the working directory's view.
        let same = ParentLink::for_parent(&dir.join("a").join("c.avhdx"), &parent, guid);
        assert_eq!(same.locator().get("relative_path"), Some("base.vhdx"));

        // The locator survives encoding and decoding, and create() accepts it.
        let mut p = CreateParams::differencing(8 << 20, link.clone());
        p.block_size = 1 << 20;
        let s = MemStorage::default();
        create(&s, "child", &p, &BTreeMap::new()).unwrap();
        let f = crate::VhdxFile::open(
            Box::new(MemStorage::new(s.to_vec())),
            "child",
            crate::OpenOptions::read_only(),
        )
        .unwrap();
        assert_eq!(f.parent_locator().unwrap().entries, loc.entries);
    }

    #[test]
    fn fixed_disks_are_preallocated_on_files() {
        use std::os::unix::fs::MetadataExt;
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("fixed.vhdx");
        let f = std::fs::File::create_new(&path).unwrap();
        let mut p = CreateParams::dynamic(16 << 20);
        p.fixed = true;
        p.block_size = 1 << 20;
        create(&f, "fixed", &p, &BTreeMap::new()).unwrap();
        let md = std::fs::metadata(&path).unwrap();
        // 4 MiB of headers, log, metadata and BAT, then 16 blocks.
        assert_eq!(md.len(), (4 + 16) << 20);
        // fallocate is best effort: on filesystems that support it every
        // byte is allocated (tmpfs, ext4, xfs, btrfs all do).
        let probe = std::fs::File::create_new(t.path().join("probe")).unwrap();
        // SAFETY: a syscall on a descriptor that stays open during it.
        let supported =
            unsafe { libc::fallocate(std::os::fd::AsRawFd::as_raw_fd(&probe), 0, 0, 4096) } == 0;
        if supported {
            assert!(md.blocks() * 512 >= md.len(), "{} blocks", md.blocks());
        }
        let d = crate::Disk::open(&path, &crate::ChainOptions::default()).unwrap();
        assert_eq!(d.leaf().disk_type(), "fixed");
        let mut buf = vec![1u8; 1 << 20];
        d.read_at(&mut buf, 15 << 20).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
    }
}
