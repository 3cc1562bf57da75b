//! `hvkit discard`: discard (trim) a range of an image.

use crate::image_arg::ChainArgs;
use crate::{size_arg, CliError, CliResult};
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;
use vhdx::write::DiscardMode;
use vhdx::Disk;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Whole blocks become ZERO (read zeros, never the parent); partial ranges are zeroed
    Zero,
    /// Whole blocks become UNMAPPED (read zeros here); partial ranges are zeroed
    Unmap,
    /// Whole blocks become NOT_PRESENT and partial ranges lose their sector bitmap bits: a differencing disk shows its parent there again (a dynamic disk reads zeros)
    Transparent,
}

impl Mode {
    fn library(self) -> DiscardMode {
        match self {
            Mode::Zero => DiscardMode::Zero,
            Mode::Unmap => DiscardMode::Unmap,
            Mode::Transparent => DiscardMode::Transparent,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Mode::Zero => "zero",
            Mode::Unmap => "unmap",
            Mode::Transparent => "transparent",
        }
    }
}

#[derive(clap::Args, Debug)]
#[command(after_help = "\
The range must cover whole logical sectors (512 or 4096 bytes, as the file
says). A fixed disk keeps its blocks allocated and has the range zeroed in
every mode. Space freed in the file is not returned (the file does not shrink).

Examples:
  hvkit discard disk.vhdx --offset 1G --length 256M
  hvkit discard checkpoint.avhdx --offset 0 --length 2M --mode transparent")]
pub struct Args {
    /// The VHDX or AVHDX file to change
    file: PathBuf,
    /// Guest offset of the range (K/M/G/T suffixes accepted)
    #[arg(long, value_parser = size_arg)]
    offset: u64,
    /// Bytes to discard (K/M/G/T suffixes accepted)
    #[arg(long, value_parser = size_arg)]
    length: u64,
    /// What the range reads afterwards
    #[arg(long, value_enum, default_value_t = Mode::Zero)]
    mode: Mode,
    /// Print a JSON summary
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    chain: ChainArgs,
}

pub fn run(a: Args) -> CliResult {
    let name = a.file.display().to_string();
    let mut disk = Disk::open_writable(&a.file, &a.chain.options())?;
    let size = disk.virtual_size();
    let lss = disk.leaf().logical_sector_size() as u64;
    for (what, v) in [("--offset", a.offset), ("--length", a.length)] {
        if !v.is_multiple_of(lss) {
            return Err(CliError::new(
                format!(
                    "{name}: {what} {v} ({v:#x}) is not a multiple of the {lss}-byte logical sector size"
                ),
                1,
            ));
        }
    }
    if a.offset.checked_add(a.length).is_none_or(|e| e > size) {
        return Err(CliError::new(
            format!(
                "{name}: range {:#x}+{:#x} lies outside the virtual disk ({size} bytes)",
                a.offset, a.length
            ),
            1,
        ));
    }
    disk.discard(a.offset, a.length, a.mode.library())?;
    disk.close()?;
    if a.json {
        println!(
            "{}",
            json!({
                "file": name,
                "offset": a.offset,
                "length": a.length,
                "mode": a.mode.name(),
            })
        );
    } else {
        println!(
            "{name}: discarded {} bytes at offset {} ({:#x}), mode {}",
            a.length,
            a.offset,
            a.offset,
            a.mode.name()
        );
    }
    Ok(ExitCode::SUCCESS)
}
