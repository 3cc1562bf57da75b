//! Taking a checkpoint (`Checkpoint-VM`): every attached disk's current
//! leaf is frozen and becomes the checkpoint's disk, a new differencing
//! child named as Hyper-V names them becomes the VM's disk, and
//! `Snapshots/<ID>.vmcx` keeps the configuration as it was, with
//! `Snapshots/<ID>.vmrs` its runtime state (memory only for a standard
//! checkpoint of a VM that runs or is saved).
//!
//! Order (each step atomic; the commit is the VM configuration's write):
//! 1. the VM configuration records the pending create (`journal.rs`);
//! 2. the new leaves are made beside the old ones;
//! 3. the checkpoint's `.vmrs`, then its `.vmcx`, are written;
//! 4. the VM configuration names the new leaves and the checkpoint as
//!    current, and the record goes (commit).
//!
//! Before 4 the folder reads as before (the checkpoint is hidden); a
//! re-run of a VM that is off rolls forward, a running VM's cut-off
//! checkpoint is rolled back (its memory is gone with the process).
//!
//! A running VM ([`LiveVm`]), in the order Hyper-V uses: production asks
//! the guest to quiesce (timeout), then flushes, switches the disks and
//! thaws; standard (or a production that falls back) pauses, flushes,
//! switches the disks, saves memory and device state, commits and
//! resumes. A failure at any step undoes the earlier ones.

use crate::error::{Error, Result};
use crate::files::{self, checkpoint_config, write_vm};
use crate::folder::VmFolder;
use crate::fs::{copy_file, ensure_dir, remove_if_exists, sync_dirs, temp_path, FolderFs};
use crate::journal::{NewCheckpoint, NewLeaf, Pending};
use crate::layout;
use crate::live::{LiveVm, Quiesce, DEFAULT_QUIESCE_TIMEOUT};
use crate::model::{Kind, VmState};
use crate::policy::{self, Plan, Refusal};
use crate::resume;
use crate::session::Session;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What to take.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// The checkpoint's name (default: Hyper-V's `<VM> - (date - time)`).
    pub name: Option<String>,
    /// How long a production checkpoint waits for the guest.
    pub quiesce_timeout: Duration,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            name: None,
            quiesce_timeout: DEFAULT_QUIESCE_TIMEOUT,
        }
    }
}

/// What was taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    pub id: String,
    pub name: String,
    pub kind: Kind,
    pub has_memory: bool,
    /// A production checkpoint that fell back to standard: why.
    pub fell_back: Option<String>,
    /// The checkpoint was one a cut-off run had started; this run
    /// completed it.
    pub resumed: bool,
}

/// Where the new checkpoint's runtime state comes from.
enum Runtime<'a> {
    /// A VM that is off: no memory.
    Off,
    /// A saved VM: its saved state.
    CopySaved,
    /// A running VM saves it.
    Live(&'a mut dyn LiveVm),
}

/// Takes a checkpoint of the VM in `path` (a folder or its `.vmcx`).
/// `live`: the VM runs and takes part (standard and production
/// checkpoints as its type asks); without it the VM is off or saved.
pub fn create(
    fs: &dyn FolderFs,
    path: &Path,
    opts: &CreateOptions,
    live: Option<&mut dyn LiveVm>,
) -> Result<Created> {
    let (mut session, f) = Session::begin(path)?;
    let (done, f) = resume::finish(fs, &mut session, f, &mut |_, _| {})?;
    if let Some(Pending::Create { checkpoint, .. }) = done {
        let same = opts.name.as_ref().is_none_or(|n| n == &checkpoint.name);
        if same && !checkpoint.live {
            if let Some(c) = f.checkpoint(&checkpoint.id) {
                return Ok(Created {
                    id: c.id.clone(),
                    name: c.name.clone(),
                    kind: c.kind,
                    has_memory: c.has_memory,
                    fell_back: None,
                    resumed: true,
                });
            }
        }
    }
    if f.legacy {
        return Err(files::refuse_legacy(&f.config_path));
    }
    let t = policy::effective(f.vm.checkpoint_type);
    let plan = policy::plan(t, f.vm.state, live.is_some());
    let refuse = |r: Refusal| match r {
        Refusal::Disabled => Error::Disabled {
            path: f.config_path.clone(),
        },
        Refusal::ProductionImpossible(why) => Error::ProductionFailed {
            path: f.config_path.clone(),
            why,
        },
    };
    let created = layout::now_filetime();
    let name = opts
        .name
        .clone()
        .unwrap_or_else(|| layout::default_checkpoint_name(&f.vm.name, created));
    let mut cp = NewCheckpoint {
        id: layout::new_id(),
        name,
        created,
        kind: Kind::Standard,
        parent: f.current.clone(),
        live: live.is_some(),
    };
    let leaves = files::new_leaves(&f.disks);
    match (plan, live) {
        (Plan::Refuse(r), _) => Err(refuse(r)),
        (Plan::Offline(kind), _) => {
            cp.kind = kind;
            take(fs, &f, &cp, &leaves, Runtime::Off)?;
            Ok(outcome(&cp, false, None))
        }
        (Plan::CopySavedState, _) => {
            cp.kind = Kind::Standard;
            take(fs, &f, &cp, &leaves, Runtime::CopySaved)?;
            Ok(outcome(&cp, true, None))
        }
        (Plan::Quiesce { fall_back }, Some(vm)) => {
            let why = match vm.quiesce(opts.quiesce_timeout) {
                Ok(Quiesce::Acknowledged) => {
                    cp.kind = Kind::Production;
                    let r = take_quiesced(fs, &f, &cp, &leaves, vm);
                    let thawed = vm.thaw();
                    r?;
                    thawed.map_err(|why| Error::Live {
                        step: "thaw",
                        why: format!("{why} (checkpoint {} was taken and is complete)", cp.id),
                    })?;
                    return Ok(outcome(&cp, false, None));
                }
                Ok(Quiesce::Refused(why)) => format!("the guest refused to quiesce: {why}"),
                Ok(Quiesce::TimedOut) => format!(
                    "the guest did not acknowledge the quiesce request within {:?}",
                    opts.quiesce_timeout
                ),
                Err(why) => format!("the quiesce request failed: {why}"),
            };
            // A guest that answers late must not stay frozen.
            let _ = vm.thaw();
            match policy::after_failed_quiesce(fall_back, why.clone()) {
                Plan::Refuse(r) => Err(refuse(r)),
                _ => {
                    cp.kind = Kind::Standard;
                    take_running(fs, &f, &cp, &leaves, vm)?;
                    Ok(outcome(&cp, true, Some(why)))
                }
            }
        }
        (Plan::SaveRunning, Some(vm)) => {
            cp.kind = Kind::Standard;
            take_running(fs, &f, &cp, &leaves, vm)?;
            Ok(outcome(&cp, true, None))
        }
        (Plan::Quiesce { .. } | Plan::SaveRunning, None) => {
            unreachable!("planned for a running VM")
        }
    }
}

fn outcome(cp: &NewCheckpoint, has_memory: bool, fell_back: Option<String>) -> Created {
    Created {
        id: cp.id.clone(),
        name: cp.name.clone(),
        kind: cp.kind,
        has_memory,
        fell_back,
        resumed: false,
    }
}

/// Step 1: the VM configuration records the pending create.
fn record(fs: &dyn FolderFs, f: &VmFolder, cp: &NewCheckpoint, leaves: &[NewLeaf]) -> Result<()> {
    let mut vm = f.config.clone();
    write_vm(
        fs,
        &mut vm,
        Some(&Pending::Create {
            checkpoint: cp.clone(),
            leaves: leaves.to_vec(),
        }),
    )
}

/// The checkpoint's configuration file.
fn cp_paths(f: &VmFolder, id: &str) -> (PathBuf, PathBuf) {
    let c = layout::checkpoint_config(&f.snapshot_dir, id);
    let r = layout::runtime_path(&c);
    (c, r)
}

/// A VM that is off or saved: record, make, commit.
fn take(
    fs: &dyn FolderFs,
    f: &VmFolder,
    cp: &NewCheckpoint,
    leaves: &[NewLeaf],
    runtime: Runtime,
) -> Result<()> {
    record(fs, f, cp, leaves)?;
    let r = (|| {
        make(fs, f, cp, leaves, runtime)?;
        commit(fs, f, cp, leaves)
    })();
    if let Err(e) = r {
        // Not a crash: undo, so the folder is as before. (If this fails
        // too, the record stays and a re-run rolls forward.)
        let _ = roll_back(fs, f, cp, leaves);
        return Err(e);
    }
    Ok(())
}

/// Steps 2 and 3 (repeatable).
fn make(
    fs: &dyn FolderFs,
    f: &VmFolder,
    cp: &NewCheckpoint,
    leaves: &[NewLeaf],
    runtime: Runtime,
) -> Result<()> {
    ensure_dir(fs, &f.snapshot_dir)?;
    let (cfg_path, rt_path) = cp_paths(f, &cp.id);
    let mut runtime = runtime;
    if let Runtime::Live(vm) = &mut runtime {
        // Paused or quiesced: after this flush the leaves no longer change.
        vm.flush_disks().map_err(|why| Error::Live {
            step: "flush its disks",
            why,
        })?;
    }
    for l in leaves {
        files::new_leaf(fs, l)?;
    }
    match runtime {
        Runtime::Off => files::off_runtime(fs, &rt_path, files::version_of(&f.config))?,
        Runtime::CopySaved => {
            copy_file(fs, &f.runtime_path, &rt_path, &mut |_| {})?;
        }
        Runtime::Live(vm) => {
            let to: Vec<&Path> = leaves.iter().map(|l| l.leaf.as_path()).collect();
            vm.switch_disks(&to).map_err(|why| Error::Live {
                step: "switch to the new disks",
                why,
            })?;
            if cp.kind == Kind::Standard {
                let tmp = temp_path(&rt_path);
                remove_if_exists(fs, &tmp)?;
                vm.save_state(&tmp).map_err(|why| Error::Live {
                    step: "save its memory and device state",
                    why,
                })?;
                fs.rename(&tmp, &rt_path)
                    .map_err(|e| Error::io(&rt_path, e))?;
                fs.sync_dir(&f.snapshot_dir)
                    .map_err(|e| Error::io(&f.snapshot_dir, e))?;
            } else {
                files::off_runtime(fs, &rt_path, files::version_of(&f.config))?;
            }
        }
    }
    let cfg = checkpoint_config(&f.config, &f.vm.id, cp, &cfg_path);
    cfg.write_unsynced(fs, &cfg_path)?;
    // One sync per folder makes every rename above durable before the
    // commit names the new files.
    let mut made: Vec<&Path> = leaves.iter().map(|l| l.leaf.as_path()).collect();
    made.push(&cfg_path);
    sync_dirs(fs, &made)
}

/// Step 4: the VM names the new leaves and the checkpoint.
fn commit(fs: &dyn FolderFs, f: &VmFolder, cp: &NewCheckpoint, leaves: &[NewLeaf]) -> Result<()> {
    let mut vm = f.config.clone();
    for l in leaves {
        vm.set_drive_path(&l.slot, &l.leaf);
    }
    files::set_current(&mut vm, Some(&cp.id));
    write_vm(fs, &mut vm, None)
}

/// Undoes a create that did not commit: removes what it made and the
/// record. `f` is the folder as it was before.
pub(crate) fn roll_back(
    fs: &dyn FolderFs,
    f: &VmFolder,
    cp: &NewCheckpoint,
    leaves: &[NewLeaf],
) -> Result<()> {
    let (cfg_path, rt_path) = cp_paths(f, &cp.id);
    for p in [
        &cfg_path,
        &rt_path,
        &temp_path(&cfg_path),
        &temp_path(&rt_path),
    ] {
        remove_if_exists(fs, p)?;
    }
    for l in leaves {
        remove_if_exists(fs, &l.leaf)?;
        remove_if_exists(fs, &temp_path(&l.leaf))?;
    }
    let mut vm = f.config.clone();
    vm.remove(crate::keys::PENDING);
    let path = vm.path.clone();
    vm.write(fs, &path)
}

/// Completes a cut-off create (`resume.rs`): forward for a VM that was off
/// or saved, back for a running VM's.
pub(crate) fn resume(
    fs: &dyn FolderFs,
    f: &VmFolder,
    cp: &NewCheckpoint,
    leaves: &[NewLeaf],
) -> Result<()> {
    if cp.live {
        return roll_back(fs, f, cp, leaves);
    }
    let runtime = if f.vm.state == VmState::Saved {
        Runtime::CopySaved
    } else {
        Runtime::Off
    };
    make(fs, f, cp, leaves, runtime)?;
    commit(fs, f, cp, leaves)
}

/// Production: the guest has flushed and holds its writes (the caller
/// thaws it).
fn take_quiesced(
    fs: &dyn FolderFs,
    f: &VmFolder,
    cp: &NewCheckpoint,
    leaves: &[NewLeaf],
    vm: &mut dyn LiveVm,
) -> Result<()> {
    take_live(fs, f, cp, leaves, vm, &mut |_| Ok(()))
}

/// Standard: pause, save, commit, resume. A VM that does not resume is
/// still paused, so nothing was written to the new leaves: the checkpoint
/// is undone.
fn take_running(
    fs: &dyn FolderFs,
    f: &VmFolder,
    cp: &NewCheckpoint,
    leaves: &[NewLeaf],
    vm: &mut dyn LiveVm,
) -> Result<()> {
    vm.pause()
        .map_err(|why| Error::Live { step: "pause", why })?;
    let r = take_live(fs, f, cp, leaves, vm, &mut |vm| {
        vm.resume().map_err(|why| Error::Live {
            step: "resume",
            why,
        })
    });
    if r.is_err() {
        // Running again on its old disks (a failed resume is reported
        // with the first error).
        let _ = vm.resume();
    }
    r
}

/// Records, makes, commits and runs `after_commit`; any failure undoes
/// the checkpoint and puts the VM back on its old disks.
fn take_live(
    fs: &dyn FolderFs,
    f: &VmFolder,
    cp: &NewCheckpoint,
    leaves: &[NewLeaf],
    vm: &mut dyn LiveVm,
    after_commit: &mut dyn FnMut(&mut dyn LiveVm) -> Result<()>,
) -> Result<()> {
    record(fs, f, cp, leaves)?;
    let r = (|| {
        make(fs, f, cp, leaves, Runtime::Live(&mut *vm))?;
        commit(fs, f, cp, leaves)?;
        after_commit(&mut *vm)
    })();
    if let Err(e) = r {
        // Back onto the old leaves (harmless when the switch never
        // happened), then remove what was made.
        let old: Vec<&Path> = f.disks.iter().map(|d| d.path.as_path()).collect();
        if let Err(why) = vm.switch_disks(&old) {
            // The VM may be writing into the new leaves: keep them (the
            // record stays; a later run rolls the checkpoint back once the
            // VM is gone).
            return Err(Error::Live {
                step: "switch back to its disks after a failed checkpoint",
                why: format!("{why} (after: {e}); the new disks were kept"),
            });
        }
        let _ = roll_back(fs, f, cp, leaves);
        return Err(e);
    }
    Ok(())
}
