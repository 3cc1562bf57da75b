//! What a merge will touch: the layers from the merged child down to the
//! target, and every other disk that names one of them as its parent.
//!
//! Children point at parents, never the other way, so the other users of a
//! layer are found by looking at every `.vhdx`/`.avhdx` file in the folders
//! of the chain's files (and any extra folders given): a file is a child of
//! a layer when the first existing candidate of its parent locator (the
//! order the reader tries them) is that layer's file.

use crate::error::{Error, Result};
use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use uuid::Uuid;
use vhdx::{ChainOptions, Disk, OpenOptions, Run, VhdxFile};

/// A merge worked out against the files as they are now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergePlan {
    /// The merged layers and then the target, child first: `layers[0]` is
    /// the child named on the command line, the last one the ancestor that
    /// receives the data.
    pub layers: Vec<PathBuf>,
    /// For each layer but the target: the disks other than the layer above
    /// it in `layers` that name it as their parent (branches of the
    /// checkpoint tree). They are re-pointed at the target.
    pub children: Vec<Vec<PathBuf>>,
    /// Guest bytes each merged layer holds (data and zero states), the
    /// progress total.
    pub layer_bytes: Vec<u64>,
    /// Virtual size of the target's parent (0 when it has none): a target
    /// that grows must read zeros, not its parent, in the new range.
    pub target_parent_size: u64,
    /// Merged layers whose removal a crash cut off: they name the target
    /// only through `parent_linkage2` (its current DataWriteGuid) and no
    /// disk uses them. They are removed first, before the target changes
    /// again under them.
    pub leftovers: Vec<PathBuf>,
}

/// (device, inode) of a file.
pub(crate) fn file_id(p: &Path) -> Result<(u64, u64)> {
    let m = std::fs::metadata(p).map_err(|e| Error::io(p, e))?;
    Ok((m.dev(), m.ino()))
}

/// A disk found in a scanned folder that names a parent.
#[derive(Debug, Clone)]
pub struct FoundChild {
    pub path: PathBuf,
    /// Its `parent_linkage`.
    pub linkage: Option<Uuid>,
    /// Its `parent_linkage2`.
    pub linkage2: Option<Uuid>,
}

/// The `.vhdx`/`.avhdx` files in `dirs` whose parent locator resolves to
/// the file `parent` (first existing candidate). Files that do not open as
/// VHDX are passed over: they cannot be anybody's child.
pub fn children_of(parent: &Path, dirs: &[PathBuf]) -> Result<Vec<FoundChild>> {
    let want = file_id(parent)?;
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for dir in dirs {
        let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
        for entry in rd {
            let entry = entry.map_err(|e| Error::io(dir, e))?;
            let path = entry.path();
            let is_vhdx = path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| e.eq_ignore_ascii_case("vhdx") || e.eq_ignore_ascii_case("avhdx"));
            if !is_vhdx || !path.is_file() {
                continue;
            }
            let Ok(id) = file_id(&path) else { continue };
            if id == want || !seen.insert(id) {
                continue;
            }
            let Ok(f) = VhdxFile::open_path(&path, OpenOptions::read_only()) else {
                continue;
            };
            let Some(loc) = f.parent_locator() else {
                continue;
            };
            let first = vhdx::parent::candidates(&path, loc)
                .into_iter()
                .find(|(_, p)| p.is_file());
            if first.is_some_and(|(_, p)| file_id(&p).ok() == Some(want)) {
                out.push(FoundChild {
                    path,
                    linkage: guid_key(loc, "parent_linkage"),
                    linkage2: guid_key(loc, "parent_linkage2"),
                });
            }
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

pub(crate) fn guid_key(loc: &vhdx::format::locator::ParentLocator, key: &str) -> Option<Uuid> {
    loc.get(key).and_then(|v| Uuid::parse_str(v.trim()).ok())
}

/// Guest bytes of `f` alone that are not "ask the parent": what merging it
/// moves or zeroes.
pub fn own_bytes(f: &VhdxFile) -> Result<u64> {
    let mut n = 0;
    f.for_each_run(0, f.virtual_size(), &mut |r| {
        if !matches!(r, Run::Parent { .. }) {
            n += r.len();
        }
        Ok(())
    })?;
    Ok(n)
}

/// Works out the merge of `child` into `into` (default: its parent), with
/// `scan` as extra folders to look for other children in.
pub fn plan(
    child: &Path,
    into: Option<&Path>,
    opts: &ChainOptions,
    scan: &[PathBuf],
) -> Result<MergePlan> {
    let disk = Disk::open(child, opts)?;
    let layers = disk.layers();
    if layers.len() < 2 {
        return Err(Error::refused(
            child,
            if disk.is_incomplete() {
                "its parent was not opened"
            } else {
                "it is not a differencing disk, so there is nothing to merge it into"
            },
        ));
    }
    let k = match into {
        None => 1,
        Some(a) => {
            let want = file_id(a)?;
            let mut found = None;
            for (i, l) in layers.iter().enumerate().skip(1) {
                if file_id(&l.path)? == want {
                    found = Some(i);
                    break;
                }
            }
            found.ok_or_else(|| {
                Error::refused(
                    child,
                    format!("{} is not one of its ancestors", a.display()),
                )
            })?
        }
    };
    let mut dirs: Vec<PathBuf> = Vec::new();
    for l in &layers[..=k] {
        let d = match l.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let d = std::fs::canonicalize(&d).unwrap_or(d);
        if !dirs.contains(&d) {
            dirs.push(d);
        }
    }
    for d in scan {
        let d = std::fs::canonicalize(d).map_err(|e| Error::io(d, e))?;
        if !dirs.contains(&d) {
            dirs.push(d);
        }
    }
    let ids: Vec<(u64, u64)> = layers[..=k]
        .iter()
        .map(|l| file_id(&l.path))
        .collect::<Result<_>>()?;
    let mut children = Vec::new();
    for i in 0..k {
        let found = children_of(&layers[i].path, &dirs)?;
        children.push(
            found
                .into_iter()
                .filter(|c| i == 0 || file_id(&c.path).ok() != Some(ids[i - 1]))
                .map(|c| c.path)
                .collect(),
        );
    }
    // The target may have no other users: its content changes. Its users
    // are the disks whose parent_linkage is its DataWriteGuid. During a
    // merge that was cut off, the layer above it accepts the target's new
    // DataWriteGuid through parent_linkage2, and disks with that
    // parent_linkage are this merge's own re-pointed ones. (A merged layer
    // whose removal was cut off, or one kept with --keep, names the target
    // only through parent_linkage2 and still reads correctly over it.)
    let target = &layers[k];
    let target_guid = target.file.header().data_write_guid;
    let resuming = layers[k - 1]
        .file
        .parent_locator()
        .and_then(|l| guid_key(l, "parent_linkage2"))
        == Some(target_guid);
    let mut others = Vec::new();
    let mut leftovers = Vec::new();
    for c in children_of(&target.path, &dirs)? {
        if file_id(&c.path).ok() == Some(ids[k - 1]) {
            continue;
        }
        if c.linkage == Some(target_guid) {
            if !resuming {
                others.push(c.path.display().to_string());
            }
        } else if c.linkage2 == Some(target_guid) && children_of(&c.path, &dirs)?.is_empty() {
            leftovers.push(c.path);
        }
    }
    if !others.is_empty() {
        return Err(Error::refused(
            child,
            format!(
                "{} is also the parent of {}; merging into it would change what they show",
                target.path.display(),
                others.join(", ")
            ),
        ));
    }
    let layer_bytes = layers[..k]
        .iter()
        .map(|l| own_bytes(&l.file))
        .collect::<Result<_>>()?;
    Ok(MergePlan {
        layers: layers[..=k].iter().map(|l| l.path.clone()).collect(),
        children,
        layer_bytes,
        target_parent_size: layers.get(k + 1).map_or(0, |l| l.file.virtual_size()),
        leftovers,
    })
}
