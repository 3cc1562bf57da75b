//! A new VM folder (`New-VM`): `Virtual Machines/<VMID>.vmcx` laid out as
//! Hyper-V's (`template.rs`), a small `<VMID>.vmrs` (a VM that is off), an
//! empty `Snapshots/`, and its disks: new dynamic VHDX files in
//! `Virtual Hard Disks/`, existing ones attached where they are, or copied
//! in (a differencing disk copied in is flattened into one file).
//!
//! The folder is built under `.NAME.hvkit-partial` beside the destination
//! and renamed into place at the end: it appears whole or not at all.

use crate::error::{Error, Result};
use crate::files;
use crate::folder::VmFolder;
use crate::fs::{
    absolute_new, check_new_dir, copy_file, ensure_dir, partial_dir, publish_dir, remove_tree,
    write_atomically, FolderFs, OsFs,
};
use crate::layout::{self, DISK_DIR, SNAPSHOT_DIR, VM_DIR};
use crate::template::{self, Template};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use vhdx::create::CreateParams;
use vhdx::{ChainOptions, Disk};
use vmcx::CheckpointType;

/// A disk of the new VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskSpec {
    /// A new, empty dynamic VHDX of this many bytes.
    New { size: u64 },
    /// An existing VHDX or AVHDX, used where it is.
    Attach(PathBuf),
    /// An existing VHDX (or chain) copied into `Virtual Hard Disks/`.
    Copy(PathBuf),
}

/// What the new VM is.
#[derive(Debug, Clone)]
pub struct VmSpec {
    pub name: String,
    pub memory_mb: i64,
    pub processors: i64,
    pub generation: u8,
    pub checkpoint_type: CheckpointType,
    pub disks: Vec<DiskSpec>,
}

impl VmSpec {
    /// Hyper-V's defaults: 1 GiB, one processor, generation 2, production
    /// checkpoints, no disks.
    pub fn new(name: &str) -> VmSpec {
        VmSpec {
            name: name.to_string(),
            memory_mb: 1024,
            processors: 1,
            generation: 2,
            checkpoint_type: CheckpointType::Production,
            disks: Vec::new(),
        }
    }
}

impl VmFolder {
    /// Makes a new VM folder at `path` (which must not exist, or be an
    /// empty folder).
    pub fn create(path: impl AsRef<Path>, spec: &VmSpec) -> Result<VmFolder> {
        create_with(&OsFs, path.as_ref(), spec)
    }
}

/// [`VmFolder::create`] through `fs`.
pub fn create_with(fs: &dyn FolderFs, path: &Path, spec: &VmSpec) -> Result<VmFolder> {
    let bad = |why: String| Error::refused(path, why);
    if spec.name.is_empty()
        || spec.name.chars().count() > 100
        || spec.name.contains(['\0', '/', '\\'])
    {
        return Err(bad(format!(
            "{:?}: a VM name has 1 to 100 characters and no NUL, / or \\",
            spec.name
        )));
    }
    if !(1..=12 * 1024 * 1024).contains(&spec.memory_mb) {
        return Err(bad(format!(
            "{} MiB of memory is out of range (1 MiB to 12 TiB)",
            spec.memory_mb
        )));
    }
    if !(1..=2048).contains(&spec.processors) {
        return Err(bad(format!(
            "{} processors is out of range (1 to 2048)",
            spec.processors
        )));
    }
    if spec.generation != 1 && spec.generation != 2 {
        return Err(bad(format!("generation {} (1 or 2)", spec.generation)));
    }
    let max = if spec.generation == 2 { 64 } else { 4 + 64 };
    if spec.disks.len() > max {
        return Err(bad(format!("{} disks (at most {max})", spec.disks.len())));
    }
    check_new_dir(path)?;
    let dest = absolute_new(path)?;
    let partial = partial_dir(&dest);
    remove_tree(fs, &partial)?;
    let r = build(fs, &dest, &partial, spec);
    if let Err(e) = r {
        let _ = remove_tree(fs, &partial);
        return Err(e);
    }
    publish_dir(fs, &partial, &dest)?;
    VmFolder::open(&dest)
}

fn build(fs: &dyn FolderFs, dest: &Path, partial: &Path, spec: &VmSpec) -> Result<()> {
    ensure_dir(fs, partial)?;
    for d in [VM_DIR, SNAPSHOT_DIR, DISK_DIR] {
        ensure_dir(fs, &partial.join(d))?;
    }
    let id = layout::new_id();
    // Disks: the paths they will have once the folder is in place.
    let mut final_paths = Vec::new();
    let mut used: Vec<String> = Vec::new();
    for (n, d) in spec.disks.iter().enumerate() {
        let mut name = |stem: &str| {
            let mut cand = format!("{stem}.vhdx");
            let mut k = 2;
            while used.contains(&cand) {
                cand = format!("{stem} {k}.vhdx");
                k += 1;
            }
            used.push(cand.clone());
            cand
        };
        match d {
            DiskSpec::Attach(p) => {
                Disk::open(p, &ChainOptions::default())?;
                final_paths.push(std::fs::canonicalize(p).map_err(|e| Error::io(p, e))?);
            }
            DiskSpec::New { size } => {
                let stem = if n == 0 {
                    spec.name.clone()
                } else {
                    format!("{}-disk{}", spec.name, n + 1)
                };
                let file = name(&stem);
                let at = partial.join(DISK_DIR).join(&file);
                let p = CreateParams::dynamic(*size);
                write_atomically(fs, &at, |storage, nm| {
                    vhdx::create::create(storage, nm, &p, &BTreeMap::new())?;
                    Ok(())
                })?;
                final_paths.push(dest.join(DISK_DIR).join(file));
            }
            DiskSpec::Copy(src) => {
                let disk = Disk::open(src, &ChainOptions::default())?;
                let stem = src
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "disk".into());
                let file = name(&stem);
                let at = partial.join(DISK_DIR).join(&file);
                if disk.layers().len() == 1 {
                    copy_file(fs, src, &at, &mut |_| {})?;
                } else {
                    flatten(fs, &disk, src, &at, &mut |_| {})?;
                }
                final_paths.push(dest.join(DISK_DIR).join(file));
            }
        }
    }
    let created = layout::now_filetime();
    let tree = template::vm_tree(&Template {
        id: &id,
        name: &spec.name,
        generation: spec.generation,
        memory_mb: spec.memory_mb,
        processors: spec.processors,
        checkpoint_type: spec.checkpoint_type,
        created,
        disks: &final_paths,
    });
    let cfg_path = layout::config_path(partial, &id);
    let config = crate::config::Config {
        path: cfg_path.clone(),
        tree,
    };
    config.write(fs, &cfg_path)?;
    files::off_runtime(fs, &layout::runtime_path(&cfg_path), template::VERSION)?;
    Ok(())
}

/// Writes the content of `disk` (a chain) as one new dynamic VHDX at
/// `at`, with the base's block and sector sizes and the disk's id.
pub fn flatten(
    fs: &dyn FolderFs,
    disk: &Disk,
    src: &Path,
    at: &Path,
    progress: &mut dyn FnMut(u64),
) -> Result<vhdx::import::ImportStats> {
    let base = disk.layers().last().expect("a layer");
    let md = base.file.metadata();
    let mut p = CreateParams::dynamic(disk.virtual_size());
    p.block_size = md.file_parameters.block_size;
    p.logical_sector_size = md.logical_sector_size;
    p.physical_sector_size = md.physical_sector_size;
    p.virtual_disk_id = disk.leaf().metadata().virtual_disk_id;
    crate::fs::remove_if_exists(fs, &crate::fs::temp_path(at))?;
    let tmp = crate::fs::temp_path(at);
    let storage = fs.create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let r = vhdx::import::to_vhdx(
        disk,
        &src.display().to_string(),
        storage,
        &at.display().to_string(),
        &p,
        progress,
    );
    match r {
        Ok(stats) => {
            fs.rename(&tmp, at).map_err(|e| Error::io(at, e))?;
            if let Some(d) = crate::fs::parent_dir(at) {
                fs.sync_dir(&d).map_err(|e| Error::io(&d, e))?;
            }
            Ok(stats)
        }
        Err(e) => {
            let _ = fs.remove_file(&tmp);
            Err(e.into())
        }
    }
}
