//! `hvkit vm`: make a VM folder, show one, change its checkpoint type.

use crate::vm_view::{folder_json, print_folder, print_json, TypeArg};
use crate::{size_arg, CliResult};
use checkpoint::{DiskSpec, OpenOptions, OsFs, VmFolder, VmSpec};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: Sub,
}

#[derive(clap::Subcommand, Debug)]
enum Sub {
    /// Make a new VM folder: configuration laid out as Hyper-V's, runtime state, disks
    New(NewArgs),
    /// Show a VM folder: the VM, its disks with their chains, the checkpoint tree, the current position
    Info(InfoArgs),
    /// Change the VM's settings (its checkpoint type)
    Set(SetArgs),
}

#[derive(clap::Args, Debug)]
#[command(after_help = "\
The folder gets Hyper-V's layout: Virtual Machines/<VMID>.vmcx and .vmrs,
Snapshots/, and Virtual Hard Disks/ with the new disks. --disk attaches an
existing VHDX/AVHDX where it is; --copy-disk copies one in (a differencing
disk is flattened into one file); --disk-size makes a new dynamic VHDX.
Drives are attached in that order: --disk, --copy-disk, --disk-size.

Examples:
  hvkit vm new web --name web --disk-size 8G
  hvkit vm new lab --name lab --memory 4G --processors 2 --generation 1 \\
      --disk base.vhdx --checkpoint-type standard")]
struct NewArgs {
    /// The folder to make (must not exist, or be empty)
    dir: PathBuf,
    /// The VM's name
    #[arg(long)]
    name: String,
    /// Startup memory (K/M/G suffix; a bare number is MiB)
    #[arg(long, default_value = "1G", value_parser = memory_arg)]
    memory: i64,
    /// Virtual processors
    #[arg(long, default_value_t = 1)]
    processors: i64,
    /// Generation 1 (BIOS, IDE disks) or 2 (UEFI, SCSI disks)
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=2))]
    generation: u8,
    /// Attach an existing VHDX or AVHDX where it is (repeatable)
    #[arg(long, value_name = "PATH")]
    disk: Vec<PathBuf>,
    /// Copy an existing VHDX (or chain, flattened) into the folder (repeatable)
    #[arg(long, value_name = "PATH")]
    copy_disk: Vec<PathBuf>,
    /// A new dynamic VHDX of this size (repeatable)
    #[arg(long, value_name = "SIZE", value_parser = size_arg)]
    disk_size: Vec<u64>,
    /// The checkpoint type
    #[arg(long, value_enum, default_value_t = TypeArg::Production)]
    checkpoint_type: TypeArg,
    /// Print the new VM as `vm info --json` does
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
#[command(after_help = "\
DIR is a VM folder (holding Virtual Machines/) or its <VMID>.vmcx (or a
2012 R2 <VMID>.xml). The tree shows each checkpoint with its creation time,
kind (standard or production) and whether it holds memory, and \"Now\" below
the checkpoint the current state derives from.

--json prints one object (a stable schema, in the README): id, name,
generation, memory_mb, processors, checkpoint_type, checkpoint_type_value,
state (off or saved), version, folder, config, checkpoint_location, legacy,
disks [{slot, path, chain, virtual_size}], checkpoints [{id, name, parent,
created, kind, has_memory, disks, config}], current, pending, problems.
All paths are absolute.")]
struct InfoArgs {
    /// The VM folder or its configuration
    dir: PathBuf,
    /// Report missing or inconsistent disks as problems instead of failing
    #[arg(long)]
    lenient: bool,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
#[command(after_help = "\
Checkpoint types (Set-VM -CheckpointType): disabled refuses checkpoints;
production asks a running guest to flush first and falls back to standard
when it cannot; production-only fails instead; standard saves memory and
device state of a running VM. For a VM that is off all but disabled take
disk-only checkpoints.")]
struct SetArgs {
    /// The VM folder or its configuration
    dir: PathBuf,
    /// The new checkpoint type
    #[arg(long, value_enum)]
    checkpoint_type: TypeArg,
    /// Print the VM as `vm info --json` does
    #[arg(long)]
    json: bool,
}

/// Memory: a size with a suffix, or a bare number of MiB.
fn memory_arg(s: &str) -> Result<i64, String> {
    let mb = if s.chars().all(|c| c.is_ascii_digit()) {
        s.parse::<u64>().map_err(|e| e.to_string())?
    } else {
        let b = size_arg(s)?;
        if b % (1 << 20) != 0 {
            return Err(format!("{s} is not a whole number of MiB"));
        }
        b >> 20
    };
    i64::try_from(mb).map_err(|_| format!("{s} is too large"))
}

pub fn run(a: Args) -> CliResult {
    match a.command {
        Sub::New(a) => {
            let mut spec = VmSpec::new(&a.name);
            spec.memory_mb = a.memory;
            spec.processors = a.processors;
            spec.generation = a.generation;
            spec.checkpoint_type = a.checkpoint_type.get();
            spec.disks.extend(a.disk.into_iter().map(DiskSpec::Attach));
            spec.disks
                .extend(a.copy_disk.into_iter().map(DiskSpec::Copy));
            spec.disks
                .extend(a.disk_size.into_iter().map(|size| DiskSpec::New { size }));
            let f = VmFolder::create(&a.dir, &spec)?;
            if a.json {
                print_json(&folder_json(&f));
            } else {
                println!(
                    "{}: created VM {} ({})",
                    f.folder.display(),
                    f.vm.name,
                    f.vm.id
                );
                print_folder(&f);
            }
        }
        Sub::Info(a) => {
            let f = VmFolder::open_with(&a.dir, OpenOptions { lenient: a.lenient })?;
            if a.json {
                print_json(&folder_json(&f));
            } else {
                print_folder(&f);
            }
        }
        Sub::Set(a) => {
            checkpoint::set_checkpoint_type(&OsFs, &a.dir, a.checkpoint_type.get())?;
            let f = VmFolder::open(&a.dir)?;
            if a.json {
                print_json(&folder_json(&f));
            } else {
                println!(
                    "{}: checkpoint type {}",
                    f.vm.name,
                    crate::vm_view::type_name(a.checkpoint_type.get())
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
