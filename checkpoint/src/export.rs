//! Exporting a checkpoint (`Export-VMSnapshot`): a standalone VM folder in
//! Hyper-V's export layout (`Virtual Machines/`, `Virtual Hard Disks/`,
//! `Snapshots/`) whose configuration is the checkpoint's and whose disks
//! hold exactly its content: flattened into one VHDX per disk (as
//! Hyper-V's "export one checkpoint" merges its differencing disks into a
//! new disk), or with `keep_chain` every file of each chain copied and
//! re-pointed at its copied parent. A checkpoint with memory exports as a
//! saved VM. The exported VM gets a new id unless `keep_id`, so it can be
//! imported beside the original.
//!
//! The source folder is only read (under the VM's lock). The export is built under
//! `.NAME.hvkit-partial` beside the destination and renamed into place at
//! the end; a re-run after a crash starts over.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::files;
use crate::folder::VmFolder;
use crate::fs::{
    absolute_new, check_new_dir, copy_file, ensure_dir, partial_dir, publish_dir, remove_tree,
    FolderFs,
};
use crate::keys;
use crate::layout::{self, DISK_DIR, SNAPSHOT_DIR, VM_DIR};
use crate::new_vm::flatten;
use std::path::{Path, PathBuf};
use vhdx::create::ParentLink;
use vhdx::{ChainOptions, Disk};

/// How to export.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExportOptions {
    /// Copy each disk's chain instead of flattening it.
    pub keep_chain: bool,
    /// Keep the VM's id (default: a new one).
    pub keep_id: bool,
}

/// What was exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exported {
    pub folder: PathBuf,
    pub vm_id: String,
    pub config: PathBuf,
    /// The exported disk files (for a kept chain, every file, leaf first
    /// per disk).
    pub disks: Vec<PathBuf>,
    pub bytes_written: u64,
}

/// Exports the checkpoint `what` of the VM at `path` to the new folder
/// `out` (which must not exist, or be empty). `progress(done, total)`
/// counts guest bytes.
pub fn export(
    fs: &dyn FolderFs,
    path: &Path,
    what: &str,
    out: &Path,
    opts: &ExportOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Exported> {
    // The lock keeps other operations out while the files are read.
    let (_session, f) = crate::session::Session::begin(path)?;
    let c = f.find(what)?.clone();
    check_new_dir(out)?;
    let dest = absolute_new(out)?;
    if dest.starts_with(&f.folder) {
        return Err(Error::refused(
            out,
            format!(
                "is inside the VM folder {}; export elsewhere",
                f.folder.display()
            ),
        ));
    }
    let partial = partial_dir(&dest);
    remove_tree(fs, &partial)?;
    let r = build(fs, &f, &c.id, &dest, &partial, opts, progress);
    let mut ex = match r {
        Ok(ex) => ex,
        Err(e) => {
            let _ = remove_tree(fs, &partial);
            return Err(e);
        }
    };
    publish_dir(fs, &partial, &dest)?;
    ex.folder = dest;
    Ok(ex)
}

fn build(
    fs: &dyn FolderFs,
    f: &VmFolder,
    id: &str,
    dest: &Path,
    partial: &Path,
    opts: &ExportOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Exported> {
    let c = f.checkpoint(id).expect("found");
    ensure_dir(fs, partial)?;
    for d in [VM_DIR, SNAPSHOT_DIR, DISK_DIR] {
        ensure_dir(fs, &partial.join(d))?;
    }
    let vm_id = if opts.keep_id {
        f.vm.id.clone()
    } else {
        layout::new_id()
    };
    let total: u64 = c.disks.iter().map(|d| d.virtual_size).sum();
    let mut done_before = 0u64;
    let mut bytes_written = 0u64;
    let mut taken: Vec<String> = Vec::new();
    let mut unique = |name: String| {
        let (stem, ext) = match name.rsplit_once('.') {
            Some((s, e)) => (s.to_string(), format!(".{e}")),
            None => (name.clone(), String::new()),
        };
        let mut cand = name.clone();
        let mut k = 2;
        while taken.iter().any(|t| t.eq_ignore_ascii_case(&cand)) {
            cand = format!("{stem} ({k}){ext}");
            k += 1;
        }
        taken.push(cand.clone());
        cand
    };
    let mut cfg = f.checkpoint_configs[id].clone();
    let mut out_disks = Vec::new();
    for d in &c.disks {
        if opts.keep_chain {
            // Copy every layer, then re-point each copy at its copied parent.
            let names: Vec<String> = d
                .chain
                .iter()
                .map(|p| unique(layout::file_name_of(&p.display().to_string()).to_string()))
                .collect();
            let copies: Vec<PathBuf> = names
                .iter()
                .map(|n| partial.join(DISK_DIR).join(n))
                .collect();
            for (src, dst) in d.chain.iter().zip(&copies) {
                copy_file(fs, src, dst, &mut |n| {
                    progress(done_before + n.min(d.virtual_size), total)
                })?;
                bytes_written += std::fs::metadata(dst).map(|m| m.len()).unwrap_or(0);
            }
            for i in 0..copies.len().saturating_sub(1) {
                let parent = &copies[i + 1];
                let guid = vhdx::VhdxFile::open_path(parent, vhdx::OpenOptions::read_only())?
                    .header()
                    .data_write_guid;
                // The locator names the parent where the folder will be.
                let final_child = dest.join(DISK_DIR).join(&names[i]);
                let final_parent = dest.join(DISK_DIR).join(&names[i + 1]);
                let link = ParentLink::for_parent(&final_child, &final_parent, guid);
                let mut child = fs.open_vhdx(&copies[i], true)?;
                child.set_parent_locator(&link.locator())?;
                child.close()?;
            }
            out_disks.extend(names.iter().map(|n| dest.join(DISK_DIR).join(n)));
            cfg.set_drive_path(&d.slot, &dest.join(DISK_DIR).join(&names[0]));
        } else {
            let root = d.chain.last().unwrap_or(&d.path);
            let stem = root
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "disk".into());
            let name = unique(format!("{stem}.vhdx"));
            let at = partial.join(DISK_DIR).join(&name);
            let disk = Disk::open(&d.path, &ChainOptions::default())?;
            let s = flatten(fs, &disk, &d.path, &at, &mut |n| {
                progress(done_before + n, total)
            })?;
            bytes_written += s.data_bytes;
            out_disks.push(dest.join(DISK_DIR).join(&name));
            cfg.set_drive_path(&d.slot, &dest.join(DISK_DIR).join(&name));
        }
        done_before += d.virtual_size;
        progress(done_before, total);
    }
    // The checkpoint's configuration as a VM of its own.
    cfg.tree.remove(keys::CHECKPOINT);
    for k in [keys::CURRENT, keys::PENDING, keys::KEPT_LAYERS] {
        cfg.remove(k);
    }
    files::set_current(&mut cfg, None);
    cfg.set_string(keys::GLOBAL_ID, &vm_id);
    if cfg.tree.get(keys::LOGICAL_ID).is_some() {
        cfg.set_string(keys::LOGICAL_ID, &vm_id);
    }
    if let Some(vmcx::Value::String(n)) = f.config.tree.get(keys::NAME) {
        cfg.set_string(keys::NAME, n);
    }
    for k in [keys::DATA_ROOT, keys::SNAPSHOT_DATA_ROOT] {
        if cfg.tree.get(k).is_some() {
            cfg.set_string(k, &dest.display().to_string());
        }
    }
    let cfg_path = layout::config_path(partial, &vm_id);
    let cfg = Config {
        path: cfg_path.clone(),
        tree: cfg.tree,
    };
    cfg.write(fs, &cfg_path)?;
    let rt = layout::runtime_path(&cfg_path);
    if c.has_memory {
        copy_file(fs, &c.runtime_path, &rt, &mut |_| {})?;
    } else {
        files::off_runtime(fs, &rt, files::version_of(&cfg))?;
    }
    Ok(Exported {
        folder: dest.to_path_buf(),
        vm_id: vm_id.clone(),
        config: layout::config_path(dest, &vm_id),
        disks: out_disks,
        bytes_written,
    })
}
