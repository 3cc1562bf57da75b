//! `hvkit`: inspect, check, read, write, create, resize, convert and
//! compare Hyper-V disk images.

mod cmd_check;
mod cmd_checkpoint;
mod cmd_compare;
mod cmd_convert;
mod cmd_create;
mod cmd_demo;
mod cmd_discard;
mod cmd_info;
mod cmd_merge;
mod cmd_read;
mod cmd_resize;
mod cmd_vm;
mod cmd_vmcx;
mod cmd_vmrs;
mod cmd_write;
mod image_arg;
mod progress;
mod vm_view;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "hvkit", version, about = "Hyper-V VM folders, checkpoints, disk images (VHDX/AVHDX) and configuration and state files (VMCX/VMRS) on any OS", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show what a VHDX/AVHDX file is: type, sizes, GUIDs, log state, BAT, parent chain
    Info(cmd_info::Args),
    /// Validate every structure; exit 0 clean, 2 corrupt, 3 log needs replay, 1 other error
    Check(cmd_check::Args),
    /// Write guest bytes of an image (through its chain) to stdout or a file
    Read(cmd_read::Args),
    /// Create a new fixed, dynamic or differencing VHDX file
    Create(cmd_create::Args),
    /// Write bytes from a file or stdin into an image at a guest offset
    Write(cmd_write::Args),
    /// Discard a range of an image (zero, unmap, or show the parent again)
    Discard(cmd_discard::Args),
    /// Change the virtual size of an image (grow, or shrink with --allow-shrink)
    Resize(cmd_resize::Args),
    /// Merge a differencing disk (or several layers) into an ancestor, as deleting a checkpoint does
    Merge(cmd_merge::Args),
    /// Flatten a VHDX or chain into a raw image, or make a VHDX from a raw image or chain
    Convert(cmd_convert::Args),
    /// Compare the guest-visible content of two images; exit 0 same, 1 different, 2 error
    Compare(cmd_compare::Args),
    /// Read, edit and write Hyper-V configuration and runtime-state files (.vmcx, .vmrs)
    Vmcx(cmd_vmcx::Args),
    /// Guest memory and vCPU registers of saved states and standard checkpoints (.vmrs)
    Vmrs(cmd_vmrs::Args),
    /// Make a VM folder, show one (its disks and checkpoint tree), change its checkpoint type
    Vm(cmd_vm::Args),
    /// Take, list, apply, revert, rename, export and delete checkpoints of a VM folder
    Checkpoint(cmd_checkpoint::Args),
    /// The checkpoint story on a VM that is off, verified byte for byte
    Demo(cmd_demo::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info(a) => cmd_info::run(a),
        Command::Check(a) => cmd_check::run(a),
        Command::Read(a) => cmd_read::run(a),
        Command::Create(a) => cmd_create::run(a),
        Command::Write(a) => cmd_write::run(a),
        Command::Discard(a) => cmd_discard::run(a),
        Command::Resize(a) => cmd_resize::run(a),
        Command::Merge(a) => cmd_merge::run(a),
        Command::Convert(a) => cmd_convert::run(a),
        Command::Compare(a) => cmd_compare::run(a),
        Command::Vmcx(a) => cmd_vmcx::run(a),
        Command::Vmrs(a) => cmd_vmrs::run(a),
        Command::Vm(a) => cmd_vm::run(a),
        Command::Checkpoint(a) => cmd_checkpoint::run(a),
        Command::Demo(a) => cmd_demo::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hvkit: error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// A failure of a command, with the exit code it maps to.
#[derive(Debug)]
pub struct CliError {
    message: String,
    code: u8,
}

impl CliError {
    pub fn new(message: impl Into<String>, code: u8) -> Self {
        CliError {
            message: message.into(),
            code,
        }
    }
    /// The same error with a second line of advice.
    pub fn with_note(self, note: &str) -> Self {
        CliError {
            message: format!("{}\n({note})", self.message),
            code: self.code,
        }
    }
    fn exit_code(&self) -> u8 {
        self.code
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<vhdx::Error> for CliError {
    fn from(e: vhdx::Error) -> Self {
        let code = if e.is_corruption() { 2 } else { 1 };
        CliError::new(e.to_string(), code)
    }
}

impl From<chain::Error> for CliError {
    fn from(e: chain::Error) -> Self {
        match e {
            chain::Error::Vhdx(v) => v.into(),
            other => CliError::new(other.to_string(), 1),
        }
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        CliError::new(e.to_string(), 1)
    }
}

pub type CliResult = Result<ExitCode, CliError>;

/// Parses a size argument with K/M/G/T suffixes.
pub fn size_arg(s: &str) -> Result<u64, String> {
    vhdx::size::parse_size(s)
}
