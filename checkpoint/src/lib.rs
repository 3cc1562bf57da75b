//! A Hyper-V VM folder and its checkpoint tree, on any OS: open a folder
//! (the 2016+ layout of `.vmcx`/`.vmrs` files, and the 2012 R2 XML
//! configurations read-only), make a new VM, and take, apply, revert,
//! rename, export and delete checkpoints as Hyper-V's `Checkpoint-VM`,
//! `Restore-VMSnapshot`, `Rename-VMSnapshot`, `Export-VMSnapshot` and
//! `Remove-VMSnapshot [-IncludeAllChildSnapshots]` do, with the files laid
//! out and named as Hyper-V lays them out.
//!
//! Crash-safe: every operation records what it is about to do in the VM's
//! configuration before it does it (`journal.rs`), so a process killed at
//! any instant leaves a folder that [`VmFolder::open`] reads as before or
//! as after, and running the same operation again completes it.
//!
//! A running VM takes part through [`LiveVm`] (quiesce and thaw, pause and
//! resume, flush, save its state, switch disks); the checkpoint types'
//! policy is in `policy.rs`.
//!
//! ```no_run
//! use checkpoint::{create, CreateOptions, OsFs, VmFolder};
//! let c = create(&OsFs, "vm".as_ref(), &CreateOptions::default(), None)?;
//! let f = VmFolder::open("vm")?;
//! println!("{} checkpoints, current {:?}, new {}", f.checkpoints.len(), f.current, c.id);
//! # Ok::<(), checkpoint::Error>(())
//! ```

pub mod apply;
pub mod cleanup;
pub mod config;
pub mod create;
pub mod delete;
pub mod disks;
pub mod error;
pub mod export;
pub mod files;
pub mod folder;
pub mod fs;
pub mod journal;
pub mod keys;
pub mod layout;
pub mod live;
pub mod lock;
pub mod model;
pub mod new_vm;
pub mod policy;
pub mod rename;
pub mod resume;
pub mod session;
pub mod template;
pub mod tree;
pub mod xml;

#[cfg(feature = "testing")]
pub mod testing;

pub use apply::{apply, revert, Applied, ApplyOptions};
pub use cleanup::CleanupStats;
pub use config::Slot;
pub use create::{create, CreateOptions, Created};
pub use delete::{delete, delete_subtree, Deleted};
pub use error::{Error, Result};
pub use export::{export, ExportOptions, Exported};
pub use folder::{OpenOptions, VmFolder};
pub use fs::{FolderFs, OsFs};
pub use journal::Pending;
pub use live::{LiveVm, Quiesce};
pub use model::{Checkpoint, Disk, Kind, Vm, VmState};
pub use new_vm::{create_with as create_vm_with, DiskSpec, VmSpec};
pub use rename::rename;
pub use vmcx::CheckpointType;

/// Sets the VM's checkpoint type (`Set-VM -CheckpointType`): one key of
/// its configuration, written atomically.
pub fn set_checkpoint_type(
    fs: &dyn FolderFs,
    path: &std::path::Path,
    t: CheckpointType,
) -> Result<()> {
    let (mut session, f) = session::Session::begin(path)?;
    let (_, f) = resume::finish(fs, &mut session, f, &mut |_, _| {})?;
    if f.legacy {
        return Err(files::refuse_legacy(&f.config_path));
    }
    let mut c = f.config.clone();
    c.set(keys::CHECKPOINT_TYPE, vmcx::Value::Int(t.value()));
    let p = c.path.clone();
    c.write(fs, &p)
}
