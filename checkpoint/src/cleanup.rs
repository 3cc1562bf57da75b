//! The file work after a commit (`journal.rs`'s cleanup phase): runtime
//! states renamed into place, re-parented checkpoints' configurations
//! rewritten, disks that are no longer needed removed, and disks no longer
//! needed as layers of their own merged (`chain::merge`, the cheaper
//! direction, reflinked where the filesystem can), configurations
//! re-pointed at the files that hold their content now, the deleted
//! checkpoints' files removed, and the record cleared. Every step can be
//! repeated, so a re-run after a crash at any point completes it.
//!
//! Which disks: the *candidates* (frozen disks of deleted checkpoints, the
//! old current leaves of an apply, and the layers kept by earlier deletes).
//! A candidate that no chain of a checkpoint or of the current state uses
//! is removed (a base disk, one without a parent, never is: it is the
//! user's own file, as Hyper-V leaves it; nor is a disk another file
//! outside this VM's tree uses as its parent). A candidate that is used
//! but that nothing names directly is merged with its child when it has
//! exactly one; with several it stays, a layer they share, and is
//! remembered as a kept layer.

use crate::disks::DiskCache;
use crate::error::{Error, Result};
use crate::files::write_vm;
use crate::folder::VmFolder;
use crate::fs::{parent_dir, remove_if_exists, sync_dirs, FolderFs, MergeFiles};
use crate::journal::{Cleanup, MergeRecord, Pending};
use crate::keys;
use crate::layout;
use crate::session::Session;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

/// What a cleanup did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CleanupStats {
    /// (child, parent, direction) of each merge.
    pub merges: Vec<(PathBuf, PathBuf, String)>,
    pub bytes_copied: u64,
    pub bytes_reflinked: u64,
    /// Disk files removed (merged away or no longer needed).
    pub disks_removed: Vec<PathBuf>,
    /// Configuration and state files removed.
    pub files_removed: Vec<PathBuf>,
}

/// Runs the pending cleanup of the VM `session` holds; nothing when there
/// is none. `progress(done, total)` gets merge bytes.
pub(crate) fn run(
    fs: &dyn FolderFs,
    session: &mut Session,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<CleanupStats> {
    let mut stats = CleanupStats::default();
    let f = session.open()?;
    let Some(Pending::Cleanup(c)) = f.pending.clone() else {
        return Ok(stats);
    };
    for (from, to) in &c.moves {
        if from.exists() {
            fs.rename(from, to).map_err(|e| Error::io(to, e))?;
            if let Some(d) = parent_dir(to) {
                fs.sync_dir(&d).map_err(|e| Error::io(&d, e))?;
            }
        }
    }
    for (child, parent) in &c.reparent {
        if let Some(cfg) = f.checkpoint_configs.get(child) {
            let now = cfg.string(keys::CP_PARENT).filter(|p| !p.is_empty());
            if &now != parent {
                let mut cfg = cfg.clone();
                cfg.set_string(keys::CP_PARENT, parent.as_deref().unwrap_or(""));
                let path = cfg.path.clone();
                cfg.write(fs, &path)?;
            }
        }
    }
    for m in &c.merges {
        if do_merge(fs, m, None, progress, &mut stats)? {
            session.forget_all();
        }
    }
    // Rounds of actions, each against the folder as it is then: every
    // disk no longer needed is removed, and one merge per disk tree.
    let limit = 4 * (c.candidates.len() + kept_layers(&f).len()) + 8;
    let mut f = session.open()?;
    for _ in 0..limit {
        let Some(Pending::Cleanup(mut c)) = f.pending.clone() else {
            return Ok(stats);
        };
        let round = next_round(&f, &c, &mut session.cache)?;
        if round.removals.is_empty() && round.merges.is_empty() {
            break;
        }
        for p in &round.removals {
            fs.remove_file(p).map_err(|e| Error::io(p, e))?;
            session.forget(p);
            stats.disks_removed.push(p.clone());
        }
        let gone: Vec<&Path> = round.removals.iter().map(PathBuf::as_path).collect();
        sync_dirs(fs, &gone)?;
        if round.merges.is_empty() {
            if round.merge_waits {
                // A merge the removals made possible (the merge plan sees
                // the removed files as other users until they are gone).
                f = session.open()?;
                continue;
            }
            break;
        }
        {
            for (m, _) in &round.merges {
                c.merges.push(m.clone());
                if m.direction == "down" {
                    c.replaced.push((m.child.clone(), m.parent.clone()));
                }
            }
            let mut vm = f.config.clone();
            write_vm(fs, &mut vm, Some(&Pending::Cleanup(c)))?;
            for (m, plan) in round.merges {
                // What the merge changes: both files, and the disks it
                // re-points (the child's children).
                let mut touched = vec![m.child.clone(), m.parent.clone()];
                touched.extend(plan.children.iter().flatten().cloned());
                do_merge(fs, &m, Some(plan), progress, &mut stats)?;
                for t in &touched {
                    session.forget(t);
                }
            }
        }
        f = session.open()?;
    }
    finish(fs, &f, &mut stats)?;
    Ok(stats)
}

/// The layers kept by earlier deletes.
fn kept_layers(f: &VmFolder) -> Vec<PathBuf> {
    f.config
        .string(keys::KEPT_LAYERS)
        .and_then(|s| serde_json::from_str::<Vec<PathBuf>>(&s).ok())
        .unwrap_or_default()
}

/// What one round does.
#[derive(Default)]
struct Round {
    /// Disks nothing needs, a child before its parent.
    removals: Vec<PathBuf>,
    /// Merges with their plans, at most one per disk tree.
    merges: Vec<(MergeRecord, chain::MergePlan)>,
    /// A merge is due but waits for this round's removals.
    merge_waits: bool,
}

fn next_round(f: &VmFolder, c: &Cleanup, cache: &mut DiskCache) -> Result<Round> {
    let refs: HashSet<PathBuf> = f.referenced().into_iter().collect();
    let needed: HashSet<PathBuf> = f.all_disk_files().into_iter().collect();
    // Parent -> children among the needed files.
    let mut kids: HashMap<&Path, BTreeSet<&Path>> = HashMap::new();
    for d in f.every_disk() {
        for w in d.chain.windows(2) {
            kids.entry(&w[1]).or_default().insert(&w[0]);
        }
    }
    // Candidates with their chains, deepest first (a child before its parent).
    let mut cands: Vec<Vec<PathBuf>> = Vec::new();
    for p in c.candidates.iter().chain(kept_layers(f).iter()) {
        let Ok(canon) = std::fs::canonicalize(p) else {
            continue; // already gone
        };
        if cands.iter().any(|ch| ch[0] == canon) {
            continue;
        }
        cands.push(cache.chain(&canon)?);
    }
    cands.sort_by(|a, b| b.len().cmp(&a.len()).then(a[0].cmp(&b[0])));
    let mut round = Round::default();
    // Removals: unneeded differencing candidates whose every child (in
    // their folder) goes in this round too.
    let unneeded: BTreeSet<PathBuf> = cands
        .iter()
        .filter(|ch| !needed.contains(&ch[0]) && ch.len() > 1)
        .map(|ch| ch[0].clone())
        .collect();
    let mut known_parent: BTreeMap<PathBuf, PathBuf> = BTreeMap::new();
    for ch in &cands {
        for w in ch.windows(2) {
            known_parent.insert(w[0].clone(), w[1].clone());
        }
    }
    for ch in &cands {
        let p = &ch[0];
        if unneeded.contains(p) && !has_other_child(p, &unneeded, &needed, &known_parent)? {
            round.removals.push(p.clone());
        }
    }
    // Merges: a candidate that is needed, named by nothing, with one child.
    let mut trees: BTreeSet<PathBuf> = BTreeSet::new();
    for ch in &cands {
        let p = &ch[0];
        if !needed.contains(p) || refs.contains(p) {
            continue;
        }
        let root = ch.last().expect("a chain").clone();
        if trees.contains(&root) {
            continue; // one merge per disk tree and round
        }
        let Some(children) = kids.get(p.as_path()) else {
            continue;
        };
        if children.len() != 1 {
            continue;
        }
        let child = children.iter().next().expect("one").to_path_buf();
        if !round.removals.is_empty() {
            // The merge's own scan would still see the files this round
            // removes as other users of the layer: plan it next round.
            round.merge_waits = true;
            continue;
        }
        let plan = chain::plan(
            &child,
            &chain::PlanOptions {
                scan: scan_dirs(&[&child, p]),
                ..chain::PlanOptions::default()
            },
        );
        match plan {
            Ok(plan) => {
                trees.insert(root);
                let direction = match plan.direction {
                    chain::Direction::Down => "down",
                    chain::Direction::Up => "up",
                };
                round.merges.push((
                    MergeRecord {
                        child,
                        parent: p.clone(),
                        direction: direction.into(),
                    },
                    plan,
                ));
            }
            // Another disk outside the tree uses it: it stays.
            Err(chain::Error::Refused { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(round)
}

fn scan_dirs(paths: &[&Path]) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = paths.iter().filter_map(|p| parent_dir(p)).collect();
    v.sort();
    v.dedup();
    v
}

/// True when a disk in `p`'s folder that is not removed in this round
/// names `p` as its parent. The VM's own files' parents are known; only
/// other files are opened.
fn has_other_child(
    p: &Path,
    removed: &BTreeSet<PathBuf>,
    needed: &HashSet<PathBuf>,
    known_parent: &BTreeMap<PathBuf, PathBuf>,
) -> Result<bool> {
    let Some(dir) = parent_dir(p) else {
        return Ok(false);
    };
    for e in std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
        let q = e.map_err(|e| Error::io(&dir, e))?.path();
        let is_disk = q
            .extension()
            .map(|x| x.to_string_lossy().to_ascii_lowercase())
            .is_some_and(|x| x == "vhdx" || x == "avhdx");
        if !is_disk || q == p || removed.contains(&q) || needed.contains(&q) {
            // The VM's needed files build on needed parents only.
            continue;
        }
        if let Some(parent) = known_parent.get(&q) {
            if parent == p {
                return Ok(true);
            }
            continue;
        }
        // A file of nobody's tree here: does it build on p?
        let Ok(f) = vhdx::VhdxFile::open_path(&q, vhdx::OpenOptions::read_only()) else {
            continue;
        };
        let Some(loc) = f.parent_locator() else {
            continue;
        };
        let first = vhdx::parent::candidates(&q, loc)
            .into_iter()
            .map(|(_, c)| c)
            .find(|c| c.is_file());
        if first.and_then(|c| std::fs::canonicalize(c).ok()).as_deref() == Some(p) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Carries out (or finishes) one recorded merge, with `plan` when it was
/// just made; false when it was done already.
fn do_merge(
    fs: &dyn FolderFs,
    m: &MergeRecord,
    plan: Option<chain::MergePlan>,
    progress: &mut dyn FnMut(u64, u64),
    stats: &mut CleanupStats,
) -> Result<bool> {
    let up = m.direction == "up";
    let done = if up {
        !m.parent.exists() && !has_absorbed_marker(&m.child)?
    } else {
        !m.child.exists()
    };
    if done {
        return Ok(false);
    }
    let plan = match plan {
        Some(p) => p,
        None => chain::plan(
            &m.child,
            &chain::PlanOptions {
                into: (!up).then(|| m.parent.clone()),
                direction: if up {
                    chain::DirectionChoice::Up
                } else {
                    chain::DirectionChoice::Down
                },
                scan: scan_dirs(&[&m.child, &m.parent]),
                ..chain::PlanOptions::default()
            },
        )?,
    };
    let s = chain::merge(
        &MergeFiles(fs),
        &plan,
        &chain::MergeOptions::default(),
        progress,
    )?;
    stats
        .merges
        .push((m.child.clone(), m.parent.clone(), m.direction.clone()));
    stats.bytes_copied += s.bytes_copied;
    stats.bytes_reflinked += s.bytes_reflinked;
    stats.disks_removed.extend(s.files_removed);
    Ok(true)
}

fn has_absorbed_marker(child: &Path) -> Result<bool> {
    if !child.exists() {
        return Ok(false);
    }
    let f = vhdx::VhdxFile::open_path(child, vhdx::OpenOptions::read_only())?;
    Ok(f.parent_locator()
        .is_some_and(|l| l.get(chain::ABSORBED_KEY).is_some()))
}

/// Configurations re-pointed, deleted checkpoints' files removed, kept
/// layers remembered, the record cleared. `f` is the folder after the
/// last round.
fn finish(fs: &dyn FolderFs, f: &VmFolder, stats: &mut CleanupStats) -> Result<()> {
    let Some(Pending::Cleanup(c)) = f.pending.clone() else {
        return Ok(());
    };
    let stale = |cfg_path: &Path, d: &crate::model::Disk| match layout::resolve_disk(
        &d.pathname,
        &f.folder,
        cfg_path,
    ) {
        Some(p) if p == d.path => false,
        Some(p) => std::fs::canonicalize(p).ok().as_ref() != Some(&d.path),
        None => true,
    };
    for cp in &f.checkpoints {
        let changed: Vec<&crate::model::Disk> = cp
            .disks
            .iter()
            .filter(|d| stale(&cp.config_path, d))
            .collect();
        if changed.is_empty() {
            continue;
        }
        let mut cfg = f.checkpoint_configs[&cp.id].clone();
        for d in changed {
            cfg.set_drive_path(&d.slot, &d.path);
        }
        let path = cfg.path.clone();
        cfg.write(fs, &path)?;
    }
    for p in &c.remove_files {
        if remove_if_exists(fs, p)? {
            stats.files_removed.push(p.clone());
        }
    }
    let refs: BTreeSet<PathBuf> = f.referenced().into_iter().collect();
    let needed: BTreeSet<PathBuf> = f.all_disk_files().into_iter().collect();
    let mut kept: Vec<PathBuf> = c
        .candidates
        .iter()
        .chain(kept_layers(f).iter())
        .filter_map(|p| std::fs::canonicalize(p).ok())
        .filter(|p| needed.contains(p) && !refs.contains(p))
        .collect();
    kept.sort();
    kept.dedup();
    let mut vm = f.config.clone();
    for d in &f.disks {
        if stale(&f.config_path, d) {
            vm.set_drive_path(&d.slot, &d.path);
        }
    }
    if kept.is_empty() {
        vm.remove(keys::KEPT_LAYERS);
    } else {
        vm.set_string(
            keys::KEPT_LAYERS,
            &serde_json::to_string(&kept).expect("paths serialize"),
        );
    }
    write_vm(fs, &mut vm, None)
}
