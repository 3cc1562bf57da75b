//! Deleting a checkpoint (`Remove-VMSnapshot`) or a checkpoint and all its
//! descendants (`-IncludeAllChildSnapshots`, "Delete Checkpoint Subtree"):
//! the checkpoints leave the tree (a deleted checkpoint's children take
//! its parent; the current state too when it derived from it), their
//! `.vmcx`/`.vmrs` go, and their frozen disks are merged or removed where
//! nothing needs them as layers of their own any more (`cleanup.rs`).
//!
//! The commit comes first: the VM configuration records the tree change
//! and the file work, so from that instant the folder reads as after,
//! and the merges (which change the deleted checkpoints' disks) may run.

use crate::cleanup::{self, CleanupStats};
use crate::error::Result;
use crate::files::{self, write_vm};
use crate::fs::FolderFs;
use crate::journal::{Cleanup, Pending};
use crate::resume;
use crate::session::Session;
use crate::tree;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// What a delete did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Deleted {
    /// The checkpoints removed from the tree.
    pub removed: Vec<String>,
    pub cleanup: CleanupStats,
    /// A cut-off run's delete, completed.
    pub resumed: bool,
}

/// Deletes the checkpoint `what` (a name or an id).
pub fn delete(
    fs: &dyn FolderFs,
    path: &Path,
    what: &str,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Deleted> {
    run(fs, path, what, false, progress)
}

/// Deletes the checkpoint `what` and every checkpoint below it.
pub fn delete_subtree(
    fs: &dyn FolderFs,
    path: &Path,
    what: &str,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Deleted> {
    run(fs, path, what, true, progress)
}

fn run(
    fs: &dyn FolderFs,
    path: &Path,
    what: &str,
    subtree: bool,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Deleted> {
    let command = if subtree { "delete_subtree" } else { "delete" };
    let (mut session, before) = Session::begin(path)?;
    // The id the user means, looked up before a cut-off run is finished
    // (that run may be this very delete, which hides it).
    let wanted = before
        .find(what)
        .map(|c| c.id.clone())
        .ok()
        .or_else(|| match &before.pending {
            Some(Pending::Cleanup(c)) if c.command == command => c
                .target
                .clone()
                .filter(|t| t.eq_ignore_ascii_case(what) || c.target_name.as_deref() == Some(what)),
            _ => None,
        });
    let (done, f) = resume::finish(fs, &mut session, before, progress)?;
    if let Some(Pending::Cleanup(c)) = done {
        if c.command == command && c.target.is_some() && c.target == wanted {
            return Ok(Deleted {
                removed: c.removed,
                cleanup: CleanupStats::default(),
                resumed: true,
            });
        }
    }
    if f.legacy {
        return Err(files::refuse_legacy(&f.config_path));
    }
    let found = f.find(what)?;
    let (target, target_name) = (found.id.clone(), found.name.clone());
    let nodes = f.nodes();
    let removed: Vec<String> = if subtree {
        tree::subtree(&nodes, &target)
    } else {
        vec![target.clone()]
    };
    let set: BTreeSet<String> = removed.iter().cloned().collect();
    let (reparent, current) = tree::remove_effect(&nodes, &set, f.current.as_deref());
    let mut candidates: Vec<PathBuf> = Vec::new();
    let mut remove_files: Vec<PathBuf> = Vec::new();
    for id in &removed {
        let c = f.checkpoint(id).expect("in the tree");
        candidates.extend(c.disks.iter().map(|d| d.path.clone()));
        remove_files.push(c.config_path.clone());
        remove_files.push(c.runtime_path.clone());
    }
    let cleanup = Cleanup {
        command: command.into(),
        target: Some(target),
        target_name: Some(target_name),
        removed: removed.clone(),
        reparent,
        candidates,
        remove_files,
        ..Cleanup::default()
    };
    let mut vm = f.config.clone();
    files::set_current(&mut vm, current.as_deref());
    write_vm(fs, &mut vm, Some(&Pending::Cleanup(cleanup)))?;
    let stats = cleanup::run(fs, &mut session, progress)?;
    Ok(Deleted {
        removed,
        cleanup: stats,
        resumed: false,
    })
}
