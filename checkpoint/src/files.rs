//! The files operations write, each atomically (into a temporary name,
//! flushed, renamed into place): new differencing disks, runtime states,
//! checkpoint configurations, the VM's configuration.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::fs::{write_atomically, write_atomically_unsynced, FolderFs};
use crate::journal::{NewCheckpoint, NewLeaf, Pending};
use crate::keys;
use std::collections::BTreeMap;
use std::path::Path;
use vhdx::create::{CreateParams, ParentLink};
use vhdx::{OpenOptions, VhdxFile};
use vmcx::{Tree, Value};

/// A new leaf over each of `disks`: `<base name>_<GUID>.avhdx` (named
/// after the chain's base, upper-case GUID) beside the disk.
pub fn new_leaves(disks: &[crate::model::Disk]) -> Vec<NewLeaf> {
    disks
        .iter()
        .map(|d| {
            let root = d.chain.last().unwrap_or(&d.path);
            let dir = d.path.parent().unwrap_or(Path::new("/"));
            NewLeaf {
                slot: d.slot.clone(),
                parent: d.path.clone(),
                leaf: dir.join(crate::layout::avhdx_name(root, uuid::Uuid::new_v4())),
            }
        })
        .collect()
}

/// Makes `leaf` a new, empty differencing disk over `parent` (Hyper-V's
/// defaults: 2 MiB blocks, the parent's size, sector sizes and virtual
/// disk id). A complete leaf left by a cut-off run (one whose locator
/// names this parent's current DataWriteGuid) is kept as it is. The
/// caller syncs the leaf's folder ([`crate::fs::sync_dirs`]) before it
/// commits a configuration naming it.
pub fn new_leaf(fs: &dyn FolderFs, l: &NewLeaf) -> Result<()> {
    let pf = VhdxFile::open_path(&l.parent, OpenOptions::read_only())?;
    let guid = pf.header().data_write_guid;
    if l.leaf.is_file() {
        if let Ok(f) = VhdxFile::open_path(&l.leaf, OpenOptions::read_only()) {
            let ok = f
                .parent_locator()
                .map(vhdx::parent::linkages)
                .is_some_and(|ids| ids.contains(&guid));
            if ok && f.virtual_size() == pf.virtual_size() {
                return Ok(());
            }
        }
        crate::fs::remove_if_exists(fs, &l.leaf)?;
    }
    let md = pf.metadata();
    let mut p = CreateParams::differencing(
        pf.virtual_size(),
        ParentLink::for_parent(&l.leaf, &l.parent, guid),
    );
    p.logical_sector_size = md.logical_sector_size;
    p.physical_sector_size = md.physical_sector_size;
    p.virtual_disk_id = md.virtual_disk_id;
    p.bitmaps_present = true;
    drop(pf);
    write_atomically_unsynced(fs, &l.leaf, |storage, name| {
        vhdx::create::create(storage, name, &p, &BTreeMap::new())?;
        Ok(())
    })
}

/// The runtime state of a VM that is off (as the corpus `.vmrs` of a VM
/// that is off): only the configuration version.
pub fn off_runtime(fs: &dyn FolderFs, path: &Path, version: i64) -> Result<()> {
    let mut t = Tree::new();
    t.set(keys::RUNTIME_VERSION, Value::Int(version));
    write_atomically(fs, path, |storage, name| {
        vmcx::writer::write(storage, name, &t, &|_| {
            Err(vmcx::Error::Invalid("no file objects".into()))
        })?;
        Ok(())
    })
}

/// The configuration version the runtime files carry.
pub fn version_of(config: &Config) -> i64 {
    config
        .int(keys::VERSION)
        .unwrap_or(vmrs::writer::DEFAULT_VM_VERSION)
}

/// A checkpoint's configuration: the VM's configuration as it is now
/// (without the VM-only keys of ours) and the checkpoint's keys.
pub fn checkpoint_config(vm: &Config, vm_id: &str, c: &NewCheckpoint, path: &Path) -> Config {
    let mut cfg = Config {
        path: path.to_path_buf(),
        tree: vm.tree.clone(),
    };
    cfg.remove(keys::PENDING);
    cfg.remove(keys::CURRENT);
    cfg.remove(keys::KEPT_LAYERS);
    cfg.set(keys::HVKIT_VERSION, Value::Int(keys::OUR_VERSION));
    cfg.set_string(keys::CP_ID, &c.id);
    cfg.set_string(keys::CP_VM_ID, vm_id);
    cfg.set_string(keys::CP_NAME, &c.name);
    cfg.set_string(keys::CP_PARENT, c.parent.as_deref().unwrap_or(""));
    cfg.set(
        keys::CP_CREATED,
        Value::Int(i64::try_from(c.created).unwrap_or(i64::MAX)),
    );
    cfg.set_string(keys::CP_KIND, c.kind.name());
    cfg
}

/// Writes the VM's configuration with `pending` recorded (or cleared).
pub fn write_vm(fs: &dyn FolderFs, config: &mut Config, pending: Option<&Pending>) -> Result<()> {
    config.set(keys::HVKIT_VERSION, Value::Int(keys::OUR_VERSION));
    match pending {
        Some(p) => config.set_string(keys::PENDING, &p.to_json()),
        None => config.remove(keys::PENDING),
    }
    let path = config.path.clone();
    config.write(fs, &path)
}

/// Sets or clears the current checkpoint key.
pub fn set_current(config: &mut Config, current: Option<&str>) {
    match current {
        Some(c) => config.set_string(keys::CURRENT, c),
        None => config.set_string(keys::CURRENT, ""),
    }
}

/// A refused operation on a 2012 R2 folder.
pub fn refuse_legacy(path: &Path) -> Error {
    Error::refused(
        path,
        "this is a 2012 R2 VM (XML configuration): hvkit reads it but does not change it",
    )
}
