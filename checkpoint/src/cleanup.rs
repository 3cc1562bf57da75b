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
use crate::fs::{parent_dir, remove_if_exists, FolderFs, MergeFiles};
use crate::journal::{Cleanup, MergeRecord, Pending};
use crate::keys;
use crate::layout;
use std::collections::{BTreeMap, BTreeSet};
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

enum Action {
    Remove(PathBuf),
    Merge(MergeRecord),
}

/// Runs the pending cleanup of the VM whose configuration is `config`;
/// nothing when there is none. `progress(done, total)` gets merge bytes.
pub fn run(
    fs: &dyn FolderFs,
    config: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<CleanupStats> {
    let mut stats = CleanupStats::default();
    let f = VmFolder::open(config)?;
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
        do_merge(fs, m, progress, &mut stats)?;
    }
    // One action at a time, each against the folder as it is then.
    let limit = 4 * (c.candidates.len() + kept_layers(&f).len()) + 8;
    for _ in 0..limit {
        let f = VmFolder::open(config)?;
        let Some(Pending::Cleanup(mut c)) = f.pending.clone() else {
            return Ok(stats);
        };
        match next_action(&f, &c)? {
            None => break,
            Some(Action::Remove(p)) => {
                remove_if_exists(fs, &p)?;
                stats.disks_removed.push(p);
            }
            Some(Action::Merge(m)) => {
                c.merges.push(m.clone());
                if m.direction == "down" {
                    c.replaced.push((m.child.clone(), m.parent.clone()));
                }
                let mut vm = f.config.clone();
                write_vm(fs, &mut vm, Some(&Pending::Cleanup(c)))?;
                do_merge(fs, &m, progress, &mut stats)?;
            }
        }
    }
    finish(fs, config, &mut stats)?;
    Ok(stats)
}

/// The layers kept by earlier deletes.
fn kept_layers(f: &VmFolder) -> Vec<PathBuf> {
    f.config
        .string(keys::KEPT_LAYERS)
        .and_then(|s| serde_json::from_str::<Vec<PathBuf>>(&s).ok())
        .unwrap_or_default()
}

/// What to do next, or nothing.
fn next_action(f: &VmFolder, c: &Cleanup) -> Result<Option<Action>> {
    let refs: BTreeSet<PathBuf> = f.referenced().into_iter().collect();
    let needed: BTreeSet<PathBuf> = f.all_disk_files().into_iter().collect();
    // Parent -> children among the needed files.
    let mut kids: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
    for d in f
        .disks
        .iter()
        .chain(f.checkpoints.iter().flat_map(|c| c.disks.iter()))
    {
        for w in d.chain.windows(2) {
            kids.entry(w[1].clone()).or_default().insert(w[0].clone());
        }
    }
    let mut cache = DiskCache::new();
    let mut cands: Vec<(usize, PathBuf)> = Vec::new();
    for p in c.candidates.iter().chain(kept_layers(f).iter()) {
        let Ok(canon) = std::fs::canonicalize(p) else {
            continue; // already gone
        };
        if cands.iter().any(|(_, q)| q == &canon) {
            continue;
        }
        let depth = cache.chain(&canon)?.len();
        cands.push((depth, canon));
    }
    // Deepest first: a child goes before its parent.
    cands.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for (depth, p) in cands {
        if !needed.contains(&p) {
            if depth > 1 && !has_other_child(&p)? {
                return Ok(Some(Action::Remove(p)));
            }
            continue;
        }
        if refs.contains(&p) {
            continue;
        }
        let Some(children) = kids.get(&p) else {
            continue;
        };
        if children.len() != 1 {
            continue;
        }
        let child = children.iter().next().expect("one").clone();
        let plan = chain::plan(
            &child,
            &chain::PlanOptions {
                scan: scan_dirs(&[&child, &p]),
                ..chain::PlanOptions::default()
            },
        );
        match plan {
            Ok(plan) => {
                return Ok(Some(Action::Merge(MergeRecord {
                    child,
                    parent: p,
                    direction: match plan.direction {
                        chain::Direction::Down => "down".into(),
                        chain::Direction::Up => "up".into(),
                    },
                })))
            }
            // Another disk outside the tree uses it: it stays.
            Err(chain::Error::Refused { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(None)
}

fn scan_dirs(paths: &[&Path]) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = paths.iter().filter_map(|p| parent_dir(p)).collect();
    v.sort();
    v.dedup();
    v
}

/// True when some disk in `p`'s folder names `p` as its parent.
fn has_other_child(p: &Path) -> Result<bool> {
    let found = chain::plan::scan(&scan_dirs(&[p]))?;
    let id = {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(p).map_err(|e| Error::io(p, e))?;
        (m.dev(), m.ino())
    };
    let any = chain::plan::children_of(id, &found).next().is_some();
    Ok(any)
}

/// Carries out (or finishes) one recorded merge; nothing when it is done.
fn do_merge(
    fs: &dyn FolderFs,
    m: &MergeRecord,
    progress: &mut dyn FnMut(u64, u64),
    stats: &mut CleanupStats,
) -> Result<()> {
    let up = m.direction == "up";
    let done = if up {
        !m.parent.exists() && !has_absorbed_marker(&m.child)?
    } else {
        !m.child.exists()
    };
    if done {
        return Ok(());
    }
    let plan = chain::plan(
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
    )?;
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
    Ok(())
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
/// layers remembered, the record cleared.
fn finish(fs: &dyn FolderFs, config: &Path, stats: &mut CleanupStats) -> Result<()> {
    let f = VmFolder::open(config)?;
    let Some(Pending::Cleanup(c)) = f.pending.clone() else {
        return Ok(());
    };
    let stale = |cfg_path: &Path, d: &crate::model::Disk| {
        layout::resolve_disk(&d.pathname, &f.folder, cfg_path)
            .and_then(|p| std::fs::canonicalize(p).ok())
            .as_ref()
            != Some(&d.path)
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
        .chain(kept_layers(&f).iter())
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
