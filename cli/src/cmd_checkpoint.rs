//! `hvkit checkpoint`: take, list, apply, revert, rename, export and delete
//! checkpoints of a VM folder, as Hyper-V's Checkpoint-VM, Get-VMSnapshot,
//! Restore-VMSnapshot, Rename-VMSnapshot, Export-VMSnapshot and
//! Remove-VMSnapshot [-IncludeAllChildSnapshots] do.

use crate::cmd_info::human;
use crate::progress::bytes_bar;
use crate::vm_view::{checkpoint_json, print_json, tree_lines};
use crate::CliResult;
use checkpoint::{ApplyOptions, CreateOptions, ExportOptions, OsFs, VmFolder};
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

#[derive(clap::Args, Debug)]
#[command(after_help = "\
CHECKPOINT is a checkpoint's name (when only one has it) or its id.
Every command that changes the folder records what it is about to do first:
if it is interrupted (a crash, kill -9, power loss) the folder reads as
before or as after, and running the same command again completes it.")]
pub struct Args {
    #[command(subcommand)]
    command: Sub,
}

#[derive(clap::Subcommand, Debug)]
enum Sub {
    /// Take a checkpoint: freeze every disk, new differencing disks become the VM's
    Create(CreateArgs),
    /// List the checkpoints (the tree; --json for a list)
    List(ListArgs),
    /// Apply a checkpoint: the VM's configuration and disks become the checkpoint's
    Apply(ApplyArgs),
    /// Apply the checkpoint the current state derives from
    Revert(RevertArgs),
    /// Rename a checkpoint
    Rename(RenameArgs),
    /// Export a checkpoint as a standalone VM folder
    Export(ExportArgs),
    /// Delete a checkpoint (its children take its parent; its disk is merged where nothing needs it as a layer)
    Delete(DeleteArgs),
    /// Delete a checkpoint and every checkpoint below it
    DeleteSubtree(DeleteArgs),
}

#[derive(clap::Args, Debug)]
#[command(after_help = "\
Each attached disk's current file is frozen (it becomes the checkpoint's
disk) and a new differencing disk <base name>_<GUID>.avhdx beside it becomes
the VM's; Snapshots/<ID>.vmcx keeps the configuration as it was and
Snapshots/<ID>.vmrs its runtime state. A VM that is off has no memory: the
checkpoint holds disks only (production for the production types, standard
for standard; disabled refuses). A saved VM's checkpoint keeps its saved
memory (production-only refuses). Checkpoints of a running VM are taken by
the hypervisor through the library's LiveVm interface.")]
struct CreateArgs {
    dir: PathBuf,
    /// The name [default: \"<VM name> - (M/D/YYYY - h:mm:ss AM)\", as Hyper-V names them]
    #[arg(long)]
    name: Option<String>,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
struct ListArgs {
    dir: PathBuf,
    /// Print a JSON list of checkpoints ({id, name, parent, created, kind, has_memory, disks, config}) and the current one
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
#[command(after_help = "\
The VM's configuration becomes the checkpoint's (the VM keeps its id and
name), each disk gets a new differencing disk on the checkpoint's frozen
disk, and the VM's runtime state becomes the checkpoint's: saved (it resumes
where the checkpoint was) when the checkpoint holds memory, off otherwise.
The current disks are removed unless --save-current first keeps the current
state as a new checkpoint (Hyper-V's \"Take Checkpoint and Apply\").")]
struct ApplyArgs {
    dir: PathBuf,
    checkpoint: String,
    #[command(flatten)]
    save: SaveArgs,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
struct RevertArgs {
    dir: PathBuf,
    #[command(flatten)]
    save: SaveArgs,
    #[arg(long)]
    json: bool,
}

/// "Take Checkpoint and Apply".
#[derive(clap::Args, Debug)]
struct SaveArgs {
    /// Save the current state as a checkpoint first
    #[arg(long)]
    save_current: bool,
    /// The saved state's checkpoint name
    #[arg(long, requires = "save_current")]
    save_name: Option<String>,
}

impl SaveArgs {
    fn options(self) -> ApplyOptions {
        ApplyOptions {
            save_current: self.save_current,
            save_name: self.save_name,
        }
    }
}

#[derive(clap::Args, Debug)]
struct RenameArgs {
    dir: PathBuf,
    checkpoint: String,
    new_name: String,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
#[command(after_help = "\
OUTDIR becomes a VM folder in Hyper-V's export layout (Virtual Machines/,
Virtual Hard Disks/, Snapshots/) whose disks hold exactly the checkpoint's
content: one dynamic VHDX per disk, or with --keep-chain every file of each
chain copied and re-pointed at its copied parent. The exported VM has a new
id (--keep-id keeps the VM's), no checkpoints, and is saved when the
checkpoint holds memory. The source folder is only read; OUTDIR appears
whole or not at all.")]
struct ExportArgs {
    dir: PathBuf,
    checkpoint: String,
    outdir: PathBuf,
    /// Copy each disk's chain instead of flattening it
    #[arg(long)]
    keep_chain: bool,
    /// Keep the VM's id
    #[arg(long)]
    keep_id: bool,
    /// No progress bar
    #[arg(short, long)]
    quiet: bool,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
#[command(after_help = "\
The checkpoint leaves the tree: its children take its parent, and so does
the current state when it derived from it. Its .vmcx/.vmrs go. Its frozen
disk goes when nothing needs it; when one disk still builds on it, the two
are merged (the cheaper direction, reflinked where the filesystem can); when
several do, it stays as the layer they share. A base disk (one without a
parent) is never removed.")]
struct DeleteArgs {
    dir: PathBuf,
    checkpoint: String,
    /// No progress bar
    #[arg(short, long)]
    quiet: bool,
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> CliResult {
    match a.command {
        Sub::Create(a) => {
            let opts = CreateOptions {
                name: a.name,
                ..CreateOptions::default()
            };
            let c = checkpoint::create(&OsFs, &a.dir, &opts, None)?;
            let f = VmFolder::open(&a.dir)?;
            let cp = f.checkpoint(&c.id).expect("taken");
            if a.json {
                print_json(&json!({
                    "checkpoint": checkpoint_json(cp),
                    "resumed": c.resumed,
                    "disks": f.disks.iter().map(|d| d.path.display().to_string()).collect::<Vec<_>>(),
                }));
            } else {
                println!(
                    "{}: took checkpoint {:?} ({}), {}{}{}",
                    f.vm.name,
                    c.name,
                    c.id,
                    c.kind.name(),
                    if c.has_memory {
                        ", with the saved memory"
                    } else {
                        ", disks only"
                    },
                    if c.resumed {
                        " (completed a cut-off run)"
                    } else {
                        ""
                    }
                );
                for (d, frozen) in f.disks.iter().zip(&cp.disks) {
                    println!(
                        "  {:<10}frozen {}, now {}",
                        d.slot.to_string(),
                        frozen
                            .path
                            .file_name()
                            .unwrap_or_default()
                            .to_string_lossy(),
                        d.path.file_name().unwrap_or_default().to_string_lossy()
                    );
                }
            }
        }
        Sub::List(a) => {
            let f = VmFolder::open(&a.dir)?;
            if a.json {
                print_json(&json!({
                    "checkpoints": f.checkpoints.iter().map(checkpoint_json).collect::<Vec<_>>(),
                    "current": f.current,
                }));
            } else if f.checkpoints.is_empty() {
                println!("{}: no checkpoints", f.vm.name);
            } else {
                for l in tree_lines(&f) {
                    println!("{l}");
                }
            }
        }
        Sub::Apply(a) => {
            let r = checkpoint::apply(&OsFs, &a.dir, &a.checkpoint, &a.save.options())?;
            applied(&a.dir, r, a.json)?
        }
        Sub::Revert(a) => {
            let r = checkpoint::revert(&OsFs, &a.dir, &a.save.options())?;
            applied(&a.dir, r, a.json)?
        }
        Sub::Rename(a) => {
            let id = checkpoint::rename(&OsFs, &a.dir, &a.checkpoint, &a.new_name)?;
            if a.json {
                print_json(&json!({"id": id, "name": a.new_name}));
            } else {
                println!("checkpoint {id} is now named {:?}", a.new_name);
            }
        }
        Sub::Export(a) => {
            let start = Instant::now();
            let bar = bytes_bar(0, a.quiet || a.json);
            let ex = checkpoint::export(
                &OsFs,
                &a.dir,
                &a.checkpoint,
                &a.outdir,
                &ExportOptions {
                    keep_chain: a.keep_chain,
                    keep_id: a.keep_id,
                },
                &mut |done, total| {
                    bar.set_length(total);
                    bar.set_position(done);
                },
            );
            bar.finish_and_clear();
            let ex = ex?;
            if a.json {
                print_json(&json!({
                    "folder": ex.folder.display().to_string(),
                    "vm_id": ex.vm_id,
                    "config": ex.config.display().to_string(),
                    "disks": ex.disks.iter().map(|d| d.display().to_string()).collect::<Vec<_>>(),
                    "bytes_written": ex.bytes_written,
                    "seconds": start.elapsed().as_secs_f64(),
                }));
            } else {
                println!(
                    "exported checkpoint {} to {} as VM {} ({} written in {:.2} s)",
                    a.checkpoint,
                    ex.folder.display(),
                    ex.vm_id,
                    human(ex.bytes_written),
                    start.elapsed().as_secs_f64()
                );
                for d in &ex.disks {
                    println!("  {}", d.display());
                }
            }
        }
        Sub::Delete(a) => deleted(a, false)?,
        Sub::DeleteSubtree(a) => deleted(a, true)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn applied(
    dir: &std::path::Path,
    a: checkpoint::Applied,
    json: bool,
) -> Result<(), crate::CliError> {
    let f = VmFolder::open(dir)?;
    if json {
        print_json(&json!({
            "applied": a.target,
            "saved_as": a.saved_as,
            "state": a.state.name(),
            "resumed": a.resumed,
            "disks": f.disks.iter().map(|d| d.path.display().to_string()).collect::<Vec<_>>(),
        }));
    } else {
        let name = f
            .checkpoint(&a.target)
            .map(|c| c.name.clone())
            .unwrap_or_default();
        println!(
            "{}: applied checkpoint {name:?} ({}); the VM is {}{}",
            f.vm.name,
            a.target,
            match a.state {
                checkpoint::VmState::Saved => "saved (it resumes where the checkpoint was)",
                checkpoint::VmState::Off => "off",
            },
            if a.resumed {
                " (completed a cut-off run)"
            } else {
                ""
            }
        );
        if let Some(s) = &a.saved_as {
            println!("  the state before was saved as checkpoint {s}");
        }
    }
    Ok(())
}

fn deleted(a: DeleteArgs, subtree: bool) -> Result<(), crate::CliError> {
    let start = Instant::now();
    let bar = bytes_bar(0, a.quiet || a.json);
    let mut progress = |done: u64, total: u64| {
        bar.set_length(total);
        bar.set_position(done);
    };
    let r = if subtree {
        checkpoint::delete_subtree(&OsFs, &a.dir, &a.checkpoint, &mut progress)
    } else {
        checkpoint::delete(&OsFs, &a.dir, &a.checkpoint, &mut progress)
    };
    bar.finish_and_clear();
    let d = r.map_err(|e| {
        let code = if e.is_corruption() { 2 } else { 1 };
        let refused = matches!(
            e,
            checkpoint::Error::NoSuchCheckpoint { .. } | checkpoint::Error::AmbiguousName { .. }
        );
        let c = crate::CliError::new(e.to_string(), code);
        if refused {
            c
        } else {
            c.with_note(
                "the folder reads as before or as after the delete; the same command completes it",
            )
        }
    })?;
    let s = &d.cleanup;
    if a.json {
        print_json(&json!({
            "removed": d.removed,
            "resumed": d.resumed,
            "merges": s.merges.iter().map(|(c, p, dir)| json!({"child": c.display().to_string(), "parent": p.display().to_string(), "direction": dir})).collect::<Vec<_>>(),
            "bytes_copied": s.bytes_copied,
            "bytes_reflinked": s.bytes_reflinked,
            "disks_removed": s.disks_removed.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            "files_removed": s.files_removed.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            "seconds": start.elapsed().as_secs_f64(),
        }));
    } else {
        println!(
            "deleted {} checkpoint{}{}: {} merge{} ({} copied, {} reflinked), {} disk file{} removed, {:.2} s",
            d.removed.len(),
            if d.removed.len() == 1 { "" } else { "s" },
            if d.resumed { " (completed a cut-off run)" } else { "" },
            s.merges.len(),
            if s.merges.len() == 1 { "" } else { "s" },
            human(s.bytes_copied),
            human(s.bytes_reflinked),
            s.disks_removed.len(),
            if s.disks_removed.len() == 1 { "" } else { "s" },
            start.elapsed().as_secs_f64()
        );
        for (c, p, dir) in &s.merges {
            let n = |x: &std::path::Path| {
                x.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned()
            };
            println!(
                "  merged {} {} {}",
                n(c),
                if dir == "down" {
                    "down into"
                } else {
                    "taking the data of"
                },
                n(p)
            );
        }
    }
    Ok(())
}
