//! Applying a checkpoint (`Restore-VMSnapshot`): the VM's configuration
//! becomes the checkpoint's (its own id and name stay), each disk gets a
//! new differencing child of the checkpoint's frozen disk, and the VM's
//! runtime state becomes the checkpoint's: saved (with its memory) for a
//! standard checkpoint that has memory, off otherwise. The previous
//! current leaves are removed unless something still needs them, or kept
//! by first saving the current state as a checkpoint of its own
//! ("Take checkpoint and apply", `save_current`), in the same commit.
//! **Revert** applies the checkpoint the current state derives from.
//!
//! Order: record the pending apply; make the new leaves, the saved
//! current state's checkpoint files and the new runtime state (under a
//! temporary name); write the VM configuration as the checkpoint's with
//! the cleanup recorded (commit); rename the runtime state into place and
//! remove the old leaves (`cleanup.rs`).

use crate::cleanup;
use crate::error::{Error, Result};
use crate::files::{self, checkpoint_config, write_vm};
use crate::folder::VmFolder;
use crate::fs::{copy_file, ensure_dir, FolderFs};
use crate::journal::{Cleanup, NewCheckpoint, NewLeaf, Pending};
use crate::keys;
use crate::layout;
use crate::model::{Kind, VmState};
use crate::policy::{self, Plan, Refusal};
use crate::resume;
use crate::session::Session;
use std::path::{Path, PathBuf};
use vmcx::Value;

/// How to apply.
#[derive(Debug, Clone, Default)]
pub struct ApplyOptions {
    /// First save the current state as a new checkpoint.
    pub save_current: bool,
    /// Its name (default: Hyper-V's `<VM> - (date - time)`).
    pub save_name: Option<String>,
}

/// What an apply did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The checkpoint applied.
    pub target: String,
    /// The checkpoint the current state was saved as.
    pub saved_as: Option<String>,
    /// The VM's state now: saved (the checkpoint's memory) or off.
    pub state: VmState,
    /// A cut-off run's apply, completed.
    pub resumed: bool,
}

/// Applies the checkpoint `what` (a name or an id).
pub fn apply(fs: &dyn FolderFs, path: &Path, what: &str, opts: &ApplyOptions) -> Result<Applied> {
    run(fs, path, Some(what), opts)
}

/// Applies the checkpoint the current state derives from.
pub fn revert(fs: &dyn FolderFs, path: &Path, opts: &ApplyOptions) -> Result<Applied> {
    run(fs, path, None, opts)
}

fn run(fs: &dyn FolderFs, path: &Path, what: Option<&str>, opts: &ApplyOptions) -> Result<Applied> {
    let (mut session, before) = Session::begin(path)?;
    // The target as the user means it, before finishing anything.
    let wanted = match what {
        Some(w) => before.find(w).map(|c| c.id.clone()).ok(),
        None => before.current.clone(),
    };
    let (done, f) = resume::finish(fs, &mut session, before, &mut |_, _| {})?;
    if let Some(p) = done {
        let done_target = match &p {
            Pending::Apply {
                target,
                save_current,
                ..
            } if save_current.is_some() == opts.save_current => {
                Some((target.clone(), save_current.as_ref().map(|c| c.id.clone())))
            }
            Pending::Cleanup(c) if c.command == "apply" => c.target.clone().map(|t| (t, None)),
            _ => None,
        };
        if let Some((t, saved_as)) = done_target {
            if wanted.as_ref() == Some(&t) {
                return Ok(Applied {
                    target: t,
                    saved_as,
                    state: f.vm.state,
                    resumed: true,
                });
            }
        }
    }
    if f.legacy {
        return Err(files::refuse_legacy(&f.config_path));
    }
    let target = match what {
        Some(w) => f.find(w)?.id.clone(),
        None => f.current.clone().ok_or_else(|| {
            Error::refused(
                &f.config_path,
                "the VM has no current checkpoint to revert to (take one first)",
            )
        })?,
    };
    let c = f.checkpoint(&target).expect("found");
    let save_current = if opts.save_current {
        let t = policy::effective(f.vm.checkpoint_type);
        let kind = match policy::plan(t, f.vm.state, false) {
            Plan::Refuse(Refusal::Disabled) => {
                return Err(Error::Disabled {
                    path: f.config_path.clone(),
                })
            }
            Plan::Refuse(Refusal::ProductionImpossible(why)) => {
                return Err(Error::ProductionFailed {
                    path: f.config_path.clone(),
                    why,
                })
            }
            Plan::Offline(k) => k,
            _ => Kind::Standard,
        };
        let created = layout::now_filetime();
        Some(NewCheckpoint {
            id: layout::new_id(),
            name: opts
                .save_name
                .clone()
                .unwrap_or_else(|| layout::default_checkpoint_name(&f.vm.name, created)),
            created,
            kind,
            parent: f.current.clone(),
            live: false,
        })
    } else {
        None
    };
    let leaves = files::new_leaves(&c.disks);
    let runtime = new_runtime_path(&f);
    let pending = Pending::Apply {
        target: target.clone(),
        leaves,
        save_current,
        runtime,
    };
    let mut vm = f.config.clone();
    write_vm(fs, &mut vm, Some(&pending))?;
    let Pending::Apply {
        leaves,
        save_current,
        runtime,
        ..
    } = &pending
    else {
        unreachable!()
    };
    finish(
        fs,
        &mut session,
        &f,
        &target,
        leaves,
        save_current.as_ref(),
        runtime,
    )?;
    Ok(Applied {
        state: if c.has_memory {
            VmState::Saved
        } else {
            VmState::Off
        },
        target,
        saved_as: save_current.as_ref().map(|c| c.id.clone()),
        resumed: false,
    })
}

/// `Virtual Machines/.<VMID>.vmrs.hvkit-new`: the runtime state the VM
/// gets, until the commit's cleanup renames it into place.
fn new_runtime_path(f: &VmFolder) -> PathBuf {
    crate::fs::hidden_sibling(&f.runtime_path, "hvkit-new")
}

/// Everything after the record (repeatable: `resume.rs` calls it for a
/// cut-off apply). `f` is the folder as it was before.
pub(crate) fn finish(
    fs: &dyn FolderFs,
    session: &mut Session,
    f: &VmFolder,
    target: &str,
    leaves: &[NewLeaf],
    save_current: Option<&NewCheckpoint>,
    runtime: &Path,
) -> Result<()> {
    let c = f.checkpoint(target).ok_or_else(|| {
        Error::corrupt(
            &f.config_path,
            format!("the pending apply names checkpoint {target}, which is gone"),
        )
    })?;
    for l in leaves {
        files::new_leaf(fs, l)?;
    }
    let made: Vec<&Path> = leaves.iter().map(|l| l.leaf.as_path()).collect();
    crate::fs::sync_dirs(fs, &made)?;
    if let Some(s) = save_current {
        ensure_dir(fs, &f.snapshot_dir)?;
        let cfg_path = layout::checkpoint_config(&f.snapshot_dir, &s.id);
        let rt_path = layout::runtime_path(&cfg_path);
        if f.vm.state == VmState::Saved {
            copy_file(fs, &f.runtime_path, &rt_path, &mut |_| {})?;
        } else {
            files::off_runtime(fs, &rt_path, files::version_of(&f.config))?;
        }
        checkpoint_config(&f.config, &f.vm.id, s, &cfg_path).write(fs, &cfg_path)?;
    }
    if c.has_memory {
        copy_file(fs, &c.runtime_path, runtime, &mut |_| {})?;
    } else {
        files::off_runtime(
            fs,
            runtime,
            files::version_of(&f.checkpoint_configs[target]),
        )?;
    }
    // The VM's configuration becomes the checkpoint's, with the VM's
    // identity and name.
    let mut vm = f.checkpoint_configs[target].clone();
    vm.path = f.config_path.clone();
    vm.tree.remove(keys::CHECKPOINT);
    for key in [keys::GLOBAL_ID, keys::LOGICAL_ID] {
        if vm.tree.get(key).is_some() || key == keys::GLOBAL_ID {
            vm.set_string(key, &f.vm.id);
        }
    }
    if let Some(Value::String(n)) = f.config.tree.get(keys::NAME) {
        vm.set_string(keys::NAME, n);
    }
    // VM-level state of ours does not go back with the configuration.
    match f.config.string(keys::KEPT_LAYERS) {
        Some(k) => vm.set_string(keys::KEPT_LAYERS, &k),
        None => vm.remove(keys::KEPT_LAYERS),
    }
    for l in leaves {
        vm.set_drive_path(&l.slot, &l.leaf);
    }
    files::set_current(&mut vm, Some(target));
    let cleanup = Cleanup {
        command: "apply".into(),
        target: Some(target.to_string()),
        candidates: if save_current.is_some() {
            Vec::new()
        } else {
            f.disks.iter().map(|d| d.path.clone()).collect()
        },
        moves: vec![(runtime.to_path_buf(), f.runtime_path.clone())],
        ..Cleanup::default()
    };
    write_vm(fs, &mut vm, Some(&Pending::Cleanup(cleanup)))?;
    cleanup::run(fs, session, &mut |_, _| {})?;
    Ok(())
}
