//! What a merge will touch: the layers from the merged child down to the
//! target, and every other disk that names one of them as its parent.
//!
//! Children point at parents, never the other way, so the other users of a
//! layer are found by opening, once, every `.vhdx`/`.avhdx` file in the
//! folders of the chain's files (and any extra folders given): a file is a
//! child of a layer when the first existing candidate of its parent locator
//! (the order the reader tries them) is that layer's file.

use crate::error::{Error, Result};
use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use uuid::Uuid;
use vhdx::{ChainOptions, Disk, OpenOptions, Run, VhdxFile};

/// Which way a merge moves data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The child's data goes into the ancestor; the merged files go.
    Down,
    /// The parent's data that the child lacks goes into the child, which
    /// is re-pointed at the grandparent; the parent goes.
    Up,
}

/// The direction asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DirectionChoice {
    /// Up when it is allowed and moves fewer bytes, else down.
    #[default]
    Auto,
    Down,
    Up,
}

/// What to plan.
#[derive(Debug, Clone, Default)]
pub struct PlanOptions {
    /// The ancestor to merge into (default: the child's parent).
    pub into: Option<PathBuf>,
    /// How to open the child's chain.
    pub chain: ChainOptions,
    /// More folders to look for other users of the layers in.
    pub scan: Vec<PathBuf>,
    pub direction: DirectionChoice,
}

/// The extra facts of an upward merge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpPlan {
    /// The parent's parent, which the child will name.
    pub grandparent: PathBuf,
    pub grandparent_guid: Uuid,
    pub grandparent_size: u64,
    /// Guest bytes of the parent that move into the child.
    pub bytes: u64,
}

/// A merge worked out against the files as they are now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergePlan {
    pub direction: Direction,
    /// Set for an upward merge with work to do.
    pub up: Option<UpPlan>,
    /// Down: the merged layers and then the target, child first:
    /// `layers[0]` is the child named on the command line, the last one the
    /// ancestor that receives the data. Up: the child and its parent; only
    /// the child when a cut-off upward merge just needs finishing.
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
    /// Merged layers whose removal a crash cut off: down, disks that name
    /// the target only through `parent_linkage2` (its current
    /// DataWriteGuid); up, the absorbed parent, which the child names
    /// under [`ABSORBED_KEY`] while no disk uses it. They are removed
    /// first, before anything changes under them.
    pub leftovers: Vec<PathBuf>,
}

/// The locator key under which a cut-off upward merge names the parent it
/// absorbed. Its own key, not `parent_linkage2`: a downward merge puts the
/// parent's next DataWriteGuid in `parent_linkage2` before the parent takes
/// it, and the two states must not be confused (a re-run of a downward
/// merge cut off there once only dropped the marker). Readers ignore it.
pub const ABSORBED_KEY: &str = "hvkit_absorbed_parent";

/// (device, inode) of a file.
pub(crate) fn file_id(p: &Path) -> Result<(u64, u64)> {
    let m = std::fs::metadata(p).map_err(|e| Error::io(p, e))?;
    Ok((m.dev(), m.ino()))
}

/// A `.vhdx`/`.avhdx` file found in a scanned folder.
#[derive(Debug, Clone)]
pub struct Found {
    pub path: PathBuf,
    /// (device, inode), the file's identity.
    pub id: (u64, u64),
    pub data_write_guid: Uuid,
    /// Identity of the first existing candidate of its parent locator (the
    /// file the reader would open as its parent), if it names one.
    pub parent: Option<(u64, u64)>,
    /// Its `parent_linkage`.
    pub linkage: Option<Uuid>,
    /// Its `parent_linkage2`.
    pub linkage2: Option<Uuid>,
}

/// Every `.vhdx`/`.avhdx` file in `dirs`, each once (by identity), opened
/// once. Files that do not open as VHDX are passed over: they cannot be
/// anybody's child or parent.
pub fn scan(dirs: &[PathBuf]) -> Result<Vec<Found>> {
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
            if !seen.insert(id) {
                continue;
            }
            let Ok(f) = VhdxFile::open_path(&path, OpenOptions::read_only()) else {
                continue;
            };
            let loc = f.parent_locator();
            let parent = loc.and_then(|loc| {
                vhdx::parent::candidates(&path, loc)
                    .into_iter()
                    .find(|(_, p)| p.is_file())
                    .and_then(|(_, p)| file_id(&p).ok())
            });
            out.push(Found {
                id,
                data_write_guid: f.header().data_write_guid,
                parent,
                linkage: loc.and_then(|l| guid_key(l, "parent_linkage")),
                linkage2: loc.and_then(|l| guid_key(l, "parent_linkage2")),
                path,
            });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// The disks of `found` whose parent is the file `parent` (by identity).
pub fn children_of(parent: (u64, u64), found: &[Found]) -> impl Iterator<Item = &Found> {
    found
        .iter()
        .filter(move |f| f.parent == Some(parent) && f.id != parent)
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

/// Works out the merge of `child` as `opts` asks.
pub fn plan(child: &Path, opts: &PlanOptions) -> Result<MergePlan> {
    let into = opts.into.as_deref();
    let extra_dirs = &opts.scan[..];
    let disk = Disk::open(child, &opts.chain)?;
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
    for d in extra_dirs {
        let d = std::fs::canonicalize(d).map_err(|e| Error::io(d, e))?;
        if !dirs.contains(&d) {
            dirs.push(d);
        }
    }
    // One look at the folders serves every question below.
    let found = scan(&dirs)?;
    if opts.direction != DirectionChoice::Down {
        if let Some(p) = finish_up_plan(&disk, &found) {
            return Ok(p);
        }
    }
    let ids: Vec<(u64, u64)> = layers[..=k]
        .iter()
        .map(|l| file_id(&l.path))
        .collect::<Result<_>>()?;
    let mut children = Vec::new();
    for i in 0..k {
        children.push(
            children_of(ids[i], &found)
                .filter(|c| i == 0 || c.id != ids[i - 1])
                .map(|c| c.path.clone())
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
    for c in children_of(ids[k], &found) {
        if c.id == ids[k - 1] {
            continue;
        }
        if c.linkage == Some(target_guid) {
            if !resuming {
                others.push(c.path.display().to_string());
            }
        } else if c.linkage2 == Some(target_guid) && children_of(c.id, &found).next().is_none() {
            leftovers.push(c.path.clone());
        }
    }
    let down_refusal = (!others.is_empty()).then(|| {
        Error::refused(
            child,
            format!(
                "{} is also the parent of {}; merging into it would change what they show",
                target.path.display(),
                others.join(", ")
            ),
        )
    });
    let layer_bytes: Vec<u64> = layers[..k]
        .iter()
        .map(|l| own_bytes(&l.file))
        .collect::<Result<_>>()?;
    let down = MergePlan {
        direction: Direction::Down,
        up: None,
        layers: layers[..=k].iter().map(|l| l.path.clone()).collect(),
        children,
        layer_bytes,
        target_parent_size: layers.get(k + 1).map_or(0, |l| l.file.virtual_size()),
        leftovers,
    };
    let down = match down_refusal {
        None => Ok(down),
        Some(e) => Err(e),
    };
    if opts.direction == DirectionChoice::Down {
        return down;
    }
    let up = match up_refusal(&disk, into.is_some(), &ids, &found) {
        None => up_plan(&disk)?,
        Some(why) if opts.direction == DirectionChoice::Up => {
            return Err(Error::refused(child, format!("cannot merge up: {why}")))
        }
        Some(_) => return down,
    };
    if let Ok(d) = &down {
        if opts.direction == DirectionChoice::Auto && up.bytes >= d.layer_bytes[0] {
            return down;
        }
    }
    // The child keeps its own children: they see no change.
    Ok(MergePlan {
        direction: Direction::Up,
        layer_bytes: vec![up.bytes],
        layers: layers[..=1].iter().map(|l| l.path.clone()).collect(),
        children: vec![Vec::new()],
        target_parent_size: 0,
        leftovers: Vec::new(),
        up: Some(up),
    })
}

/// Why `disk`'s leaf cannot take its parent's data (None: it can).
/// `into`: a target was named, so the data must end up in it (an auto
/// merge then goes down, even into the immediate parent: a re-run of a
/// cut-off two-layer merge finds the child one layer above the target and
/// must not move the target's data out of it).
fn up_refusal(disk: &Disk, into: bool, ids: &[(u64, u64)], found: &[Found]) -> Option<String> {
    let layers = disk.layers();
    if into {
        return Some("an upward merge takes one layer and no --into".into());
    }
    if layers.len() < 3 {
        return Some(if layers[1].file.has_parent() {
            "the grandparent was not opened".into()
        } else {
            format!(
                "the parent {} is the base of the chain",
                layers[1].path.display()
            )
        });
    }
    let others: Vec<String> = children_of(ids[1], found)
        .filter(|c| c.id != ids[0])
        .map(|c| c.path.display().to_string())
        .collect();
    (!others.is_empty()).then(|| {
        format!(
            "the parent {} is also used by {}",
            layers[1].path.display(),
            others.join(", ")
        )
    })
}

/// The bytes an upward merge moves: the parent's own runs inside the
/// child's "ask the parent" ranges.
fn up_plan(disk: &Disk) -> Result<UpPlan> {
    let layers = disk.layers();
    let (c, p, gp) = (&layers[0].file, &layers[1].file, &layers[2]);
    let mut holes = Vec::new();
    let mut at = 0u64;
    c.for_each_run(0, c.virtual_size(), &mut |r| {
        if matches!(r, Run::Parent { .. }) && at < p.virtual_size() {
            holes.push((at, r.len().min(p.virtual_size() - at)));
        }
        at += r.len();
        Ok(())
    })?;
    let mut bytes = 0u64;
    for (off, len) in holes {
        p.for_each_run(off, len, &mut |r| {
            if !matches!(r, Run::Parent { .. }) {
                bytes += r.len();
            }
            Ok(())
        })?;
    }
    Ok(UpPlan {
        grandparent: gp.path.clone(),
        grandparent_guid: gp.file.header().data_write_guid,
        grandparent_size: gp.file.virtual_size(),
        bytes,
    })
}

/// A cut-off upward merge: the child names its new parent, and under
/// [`ABSORBED_KEY`] the parent it absorbed. Returns the plan that finishes
/// it (remove the absorbed parent if nothing uses it, then drop the
/// marker), or None when `child` shows no such marker.
fn finish_up_plan(disk: &Disk, found: &[Found]) -> Option<MergePlan> {
    let c = &disk.layers()[0];
    let loc = c.file.parent_locator()?;
    let absorbed = guid_key(loc, ABSORBED_KEY)?;
    let parent_guid = disk
        .layers()
        .get(1)
        .map(|l| l.file.header().data_write_guid);
    if parent_guid == Some(absorbed) || guid_key(loc, "parent_linkage") != parent_guid {
        return None;
    }
    let leftovers = found
        .iter()
        .filter(|f| f.data_write_guid == absorbed && children_of(f.id, found).next().is_none())
        .map(|f| f.path.clone())
        .collect();
    Some(MergePlan {
        direction: Direction::Up,
        up: None,
        layers: vec![c.path.clone()],
        children: Vec::new(),
        layer_bytes: Vec::new(),
        target_parent_size: 0,
        leftovers,
    })
}
