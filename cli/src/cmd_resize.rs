//! `hvkit resize`: change the virtual size of an image.

use crate::cmd_info::human;
use crate::image_arg::ChainArgs;
use crate::{size_arg, CliResult};
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;
use vhdx::Disk;

#[derive(clap::Args, Debug)]
#[command(after_help = "\
Growing keeps the content and the new range reads zeros (also where a
differencing disk's parent is larger); a fixed disk gets its new blocks
allocated. Shrinking needs --allow-shrink and is refused when anything but
zeros (as the guest sees it, through the parents) lies past the new end. The
size must be a multiple of the logical sector size. Partitions and file
systems inside the disk are not changed.

Examples:
  hvkit resize disk.vhdx --size 40G
  hvkit resize disk.vhdx --size 10G --allow-shrink")]
pub struct Args {
    /// The VHDX or AVHDX file to change
    file: PathBuf,
    /// New virtual size (K/M/G/T suffixes accepted)
    #[arg(long, value_parser = size_arg)]
    size: u64,
    /// Allow the disk to become smaller (only when the part cut off reads zeros)
    #[arg(long)]
    allow_shrink: bool,
    /// Print a JSON summary
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    chain: ChainArgs,
}

pub fn run(a: Args) -> CliResult {
    let name = a.file.display().to_string();
    let mut disk = Disk::open_writable(&a.file, &a.chain.options())?;
    let old = disk.virtual_size();
    let kind = disk.leaf().disk_type();
    disk.resize(a.size, a.allow_shrink)?;
    disk.close()?;
    if a.json {
        println!(
            "{}",
            json!({
                "file": name,
                "type": kind,
                "old_size": old,
                "new_size": a.size,
            })
        );
    } else if old == a.size {
        println!("{name}: already {}; nothing changed", human(old));
    } else {
        println!("{name}: resized from {} to {}", human(old), human(a.size));
    }
    Ok(ExitCode::SUCCESS)
}
