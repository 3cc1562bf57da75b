//! `hvkit read`: guest bytes of an image to stdout or a file.

use crate::image_arg::ChainArgs;
use crate::{size_arg, CliError, CliResult};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The VHDX or AVHDX file
    file: PathBuf,
    /// Guest offset to start at (K/M/G/T suffixes accepted)
    #[arg(long, value_parser = size_arg)]
    offset: u64,
    /// Bytes to read (K/M/G/T suffixes accepted)
    #[arg(long, value_parser = size_arg)]
    length: u64,
    /// Write to this file instead of stdout
    #[arg(short, long, value_name = "OUT")]
    output: Option<PathBuf>,
    #[command(flatten)]
    chain: ChainArgs,
}

pub fn run(a: Args) -> CliResult {
    let disk = a.chain.open(&a.file)?;
    let size = disk.virtual_size();
    if a.offset.checked_add(a.length).is_none_or(|e| e > size) {
        return Err(CliError::new(
            format!(
                "{}: range {:#x}+{:#x} lies outside the virtual disk ({size:#x} bytes)",
                a.file.display(),
                a.offset,
                a.length
            ),
            1,
        ));
    }
    let mut out: Box<dyn Write> = match &a.output {
        Some(p) => Box::new(
            std::fs::File::create(p)
                .map_err(|e| CliError::new(format!("{}: {e}", p.display()), 1))?,
        ),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut buf = vec![0u8; (4 << 20).min(a.length.max(1) as usize)];
    let mut done = 0u64;
    while done < a.length {
        let n = (a.length - done).min(buf.len() as u64) as usize;
        disk.read_at(&mut buf[..n], a.offset + done)?;
        out.write_all(&buf[..n])?;
        done += n as u64;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
