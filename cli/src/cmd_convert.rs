//! `hvkit convert`: flatten a VHDX or chain into a raw image.

use crate::image_arg::ChainArgs;
use crate::progress::bytes_bar;
use crate::{CliError, CliResult};
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A raw image, sparse where the source reads zero
    Raw,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Source VHDX/AVHDX (a differencing disk is read through its chain)
    src: PathBuf,
    /// Destination file (overwritten)
    dst: PathBuf,
    /// Output format
    #[arg(short = 'O', long = "output-format", value_enum)]
    format: Format,
    /// No progress bar
    #[arg(short, long)]
    quiet: bool,
    /// Flush the output to stable storage before exiting
    #[arg(long)]
    sync: bool,
    /// Print a JSON summary
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    chain: ChainArgs,
}

pub fn run(a: Args) -> CliResult {
    let disk = a.chain.open(&a.src)?;
    let Format::Raw = a.format;
    let out = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&a.dst)
        .map_err(|e| CliError::new(format!("{}: {e}", a.dst.display()), 1))?;
    let bar = bytes_bar(disk.virtual_size(), a.quiet || a.json);
    let start = Instant::now();
    let stats = vhdx::export::to_raw(
        &disk,
        &out,
        &a.dst.display().to_string(),
        a.sync,
        &mut |done| bar.set_position(done),
    )?;
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    if a.json {
        let v = json!({
            "source": a.src.display().to_string(),
            "destination": a.dst.display().to_string(),
            "virtual_size": disk.virtual_size(),
            "data_bytes": stats.data_bytes,
            "zero_bytes": stats.zero_bytes,
            "copy_file_range_bytes": stats.copy_file_range_bytes,
            "seconds": secs,
        });
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
    } else if !a.quiet {
        eprintln!(
            "{} -> {}: {} bytes of data copied, {} bytes left sparse, {:.2} s ({:.0} MiB/s)",
            a.src.display(),
            a.dst.display(),
            stats.data_bytes,
            stats.zero_bytes,
            secs,
            disk.virtual_size() as f64 / secs.max(1e-9) / (1 << 20) as f64
        );
    }
    Ok(ExitCode::SUCCESS)
}
