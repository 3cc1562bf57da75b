//! `hvkit create`: a new, empty fixed, dynamic or differencing VHDX file.

use crate::cmd_info::human;
use crate::{size_arg, CliError, CliResult};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use vhdx::create::{create, CreateParams, ParentLink};
use vhdx::{OpenOptions, VhdxFile};

#[derive(clap::Args, Debug)]
#[command(after_help = "\
Defaults are Hyper-V's: 32 MiB blocks for dynamic and fixed disks, 2 MiB for
differencing disks; 512-byte logical and 4096-byte physical sectors. A
differencing disk takes its parent's sector sizes and virtual disk id, and its
virtual size unless a larger --size is given. Its parent locator holds
parent_linkage, relative_path, volume_path (when the filesystem UUID is known)
and absolute_win32_path. FILE must not exist.

Examples:
  hvkit create disk.vhdx --size 20G
  hvkit create fixed.vhdx --size 1G --fixed
  hvkit create native4k.vhdx --size 8G --logical-sector 4096
  hvkit create checkpoint.avhdx --parent disk.vhdx")]
pub struct Args {
    /// The new file (.vhdx, or .avhdx for a differencing disk)
    file: PathBuf,
    /// Virtual size (K/M/G/T suffixes); a differencing disk defaults to its parent's
    #[arg(long, value_parser = size_arg, required_unless_present = "parent")]
    size: Option<u64>,
    /// Allocate every block now (a fixed disk); the space is reserved with fallocate where the filesystem supports it
    #[arg(long, conflicts_with = "parent")]
    fixed: bool,
    /// Block size, a power of two from 1M to 256M [default: 32M, or 2M with --parent]
    #[arg(long, value_parser = size_arg)]
    block_size: Option<u64>,
    /// Logical sector size, 512 or 4096 [default: 512; a differencing disk takes its parent's]
    #[arg(long, value_parser = sector_arg, conflicts_with = "parent")]
    logical_sector: Option<u32>,
    /// Physical sector size, 512 or 4096 [default: 4096; a differencing disk takes its parent's]
    #[arg(long, value_parser = sector_arg, conflicts_with = "parent")]
    physical_sector: Option<u32>,
    /// Make a differencing disk over this parent VHDX/AVHDX
    #[arg(long, value_name = "PARENT")]
    parent: Option<PathBuf>,
    /// Print a JSON summary
    #[arg(long)]
    json: bool,
}

/// Parses a sector size: 512 or 4096 (4K accepted).
pub fn sector_arg(s: &str) -> Result<u32, String> {
    match size_arg(s)? {
        512 => Ok(512),
        4096 => Ok(4096),
        n => Err(format!("sector size {n} must be 512 or 4096")),
    }
}

/// A block size argument as the u32 the format stores.
pub fn block_size_u32(file: &Path, n: u64) -> Result<u32, CliError> {
    u32::try_from(n).map_err(|_| {
        CliError::new(
            format!(
                "{}: block size {n} must be a power of two from 1 MiB to 256 MiB",
                file.display()
            ),
            1,
        )
    })
}

pub fn run(a: Args) -> CliResult {
    let name = a.file.display().to_string();
    let mut parent_info = None;
    let params = match &a.parent {
        Some(parent) => {
            let pf = VhdxFile::open_path(parent, OpenOptions::read_only())?;
            let md = pf.metadata();
            let size = match a.size {
                None => pf.virtual_size(),
                Some(s) if s < pf.virtual_size() => {
                    return Err(CliError::new(
                        format!(
                            "{name}: --size {s} is smaller than the virtual size of the parent {} ({} bytes); a differencing disk is at least as large as its parent",
                            parent.display(),
                            pf.virtual_size()
                        ),
                        1,
                    ))
                }
                Some(s) => s,
            };
            let link = ParentLink::for_parent(&a.file, parent, pf.header().data_write_guid);
            let mut p = CreateParams::differencing(size, link);
            p.logical_sector_size = md.logical_sector_size;
            p.physical_sector_size = md.physical_sector_size;
            p.virtual_disk_id = md.virtual_disk_id;
            parent_info = Some((parent.clone(), pf.disk_type()));
            p
        }
        None => {
            let mut p = CreateParams::dynamic(a.size.expect("clap requires --size"));
            p.fixed = a.fixed;
            p.logical_sector_size = a.logical_sector.unwrap_or(512);
            p.physical_sector_size = a.physical_sector.unwrap_or(4096);
            if p.physical_sector_size < p.logical_sector_size {
                return Err(CliError::new(
                    format!(
                        "{name}: the physical sector size ({}) cannot be smaller than the logical sector size ({})",
                        p.physical_sector_size, p.logical_sector_size
                    ),
                    1,
                ));
            }
            p
        }
    };
    let mut params = params;
    if let Some(b) = a.block_size {
        params.block_size = block_size_u32(&a.file, b)?;
    }

    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&a.file)
        .map_err(|e| {
            let why = if e.kind() == std::io::ErrorKind::AlreadyExists {
                "already exists (hvkit create never overwrites a file)".to_string()
            } else {
                e.to_string()
            };
            CliError::new(format!("{name}: {why}"), 1)
        })?;
    if let Err(e) = create(&file, &name, &params, &BTreeMap::new()) {
        drop(file);
        let _ = std::fs::remove_file(&a.file);
        return Err(e.into());
    }
    drop(file);

    let kind = if params.parent.is_some() {
        "differencing"
    } else if params.fixed {
        "fixed"
    } else {
        "dynamic"
    };
    let file_size = std::fs::metadata(&a.file)
        .map_err(|e| CliError::new(format!("{name}: {e}"), 1))?
        .len();
    let locator: Option<Vec<_>> = params.parent.as_ref().map(|l| {
        l.locator()
            .entries
            .iter()
            .map(|(k, v)| json!({"key": k, "value": v}))
            .collect()
    });
    if a.json {
        let v = json!({
            "path": name,
            "type": kind,
            "virtual_size": params.virtual_size,
            "block_size": params.block_size,
            "logical_sector_size": params.logical_sector_size,
            "physical_sector_size": params.physical_sector_size,
            "virtual_disk_id": params.virtual_disk_id.to_string(),
            "data_write_guid": params.data_write_guid.to_string(),
            "file_size": file_size,
            "parent": parent_info.as_ref().map(|(p, _)| p.display().to_string()),
            "parent_locator": locator,
        });
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
    } else {
        println!(
            "{name}: created a {kind} disk of {}, {} MiB blocks, {}-byte logical and {}-byte physical sectors",
            human(params.virtual_size),
            params.block_size >> 20,
            params.logical_sector_size,
            params.physical_sector_size
        );
        if let (Some((p, t)), Some(l)) = (&parent_info, &params.parent) {
            println!("parent: {} ({t})", p.display());
            for (k, v) in &l.locator().entries {
                println!("  {:<22}{v}", format!("{k}:"));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
