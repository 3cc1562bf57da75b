//! `hvkit write`: guest bytes from a file or stdin into an image.

use crate::image_arg::ChainArgs;
use crate::{size_arg, CliError, CliResult};
use serde_json::json;
use std::io::{ErrorKind, Read};
use std::path::PathBuf;
use std::process::ExitCode;
use vhdx::Disk;

#[derive(clap::Args, Debug)]
#[command(after_help = "\
The input is streamed in pieces of 4 MiB, never read whole. Any offset and
length work: partial sectors are completed with what the disk shows there now
(for a differencing disk, read through its parents). The file is closed
cleanly (empty log) at the end. Input that runs past the end of the virtual
disk is an error; what fit before that point has been written.

Examples:
  hvkit write disk.vhdx --offset 1M -i boot.img
  printf 'hello' | hvkit write child.avhdx --offset 0x1003")]
pub struct Args {
    /// The VHDX or AVHDX file to change
    file: PathBuf,
    /// Guest offset to write at (K/M/G/T suffixes accepted)
    #[arg(long, value_parser = size_arg)]
    offset: u64,
    /// Read the bytes from this file instead of stdin
    #[arg(short, long, value_name = "IN")]
    input: Option<PathBuf>,
    /// Print a JSON summary
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    chain: ChainArgs,
}

const CHUNK: u64 = 4 << 20;

/// Fills `buf` from `r` until it is full or the input ends; returns the count.
fn fill(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

pub fn run(a: Args) -> CliResult {
    let name = a.file.display().to_string();
    let in_name = a
        .input
        .as_ref()
        .map_or("stdin".to_string(), |p| p.display().to_string());
    let in_err = |e: std::io::Error| CliError::new(format!("{in_name}: {e}"), 1);
    let (mut input, known_len): (Box<dyn Read>, Option<u64>) = match &a.input {
        Some(p) => {
            let f = std::fs::File::open(p).map_err(in_err)?;
            let md = f.metadata().map_err(in_err)?;
            let len = md.file_type().is_file().then_some(md.len());
            (Box::new(f), len)
        }
        None => (Box::new(std::io::stdin().lock()), None),
    };
    let mut disk = Disk::open_writable(&a.file, &a.chain.options())?;
    let len_before = disk.leaf().file_len();
    let size = disk.virtual_size();
    if a.offset > size {
        return Err(CliError::new(
            format!(
                "{name}: offset {:#x} lies past the end of the virtual disk ({size} bytes)",
                a.offset
            ),
            1,
        ));
    }
    if let Some(len) = known_len {
        if a.offset.checked_add(len).is_none_or(|e| e > size) {
            return Err(CliError::new(
                format!(
                    "{name}: {len} bytes of {in_name} at offset {:#x} run past the end of the virtual disk ({size} bytes); nothing was written",
                    a.offset
                ),
                1,
            ));
        }
    }
    let mut buf = vec![0u8; CHUNK as usize];
    let mut pos = a.offset;
    let result = (|| -> Result<(), CliError> {
        loop {
            // The first piece ends on a 4 MiB boundary so later pieces start
            // sector- and block-aligned.
            let want = (CHUNK - pos % CHUNK) as usize;
            let n = fill(&mut *input, &mut buf[..want]).map_err(in_err)?;
            if n == 0 {
                return Ok(());
            }
            if pos + n as u64 > size {
                // Write what fits, then report the overflow.
                let fit = (size - pos) as usize;
                disk.write_at(&buf[..fit], pos)?;
                pos += fit as u64;
                return Err(CliError::new(
                    format!(
                        "{name}: {in_name} runs past the end of the virtual disk ({size} bytes); the {} bytes from offset {:#x} to the end were written, the rest was not",
                        pos - a.offset,
                        a.offset
                    ),
                    1,
                ));
            }
            disk.write_at(&buf[..n], pos)?;
            pos += n as u64;
        }
    })();
    let written = pos - a.offset;
    let closed = disk.close();
    if result.is_err() || closed.is_err() {
        // Blocks this write allocated and never committed (a full disk)
        // go back to the filesystem; best effort, the first error is the
        // one reported.
        if let Ok(mut f) = vhdx::VhdxFile::open_path(&a.file, vhdx::OpenOptions::writable()) {
            let _ = f.release_tail(len_before);
        }
    }
    result?;
    closed?;
    if a.json {
        println!(
            "{}",
            json!({
                "file": name,
                "offset": a.offset,
                "bytes_written": written,
                "virtual_size": size,
            })
        );
    } else {
        println!(
            "{name}: wrote {written} bytes at offset {} ({:#x})",
            a.offset, a.offset
        );
    }
    Ok(ExitCode::SUCCESS)
}
