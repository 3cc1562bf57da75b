//! `hvkit convert`: flatten a VHDX or chain into a raw image, or turn a raw
//! image, a VHDX file or a chain into a new fixed or dynamic VHDX file.

use crate::cmd_create::{block_size_u32, sector_arg};
use crate::image_arg::{is_vhdx, ChainArgs};
use crate::progress::bytes_bar;
use crate::{size_arg, CliError, CliResult};
use serde_json::json;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;
use vhdx::create::CreateParams;
use vhdx::{Disk, GuestImage, RawImage};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A raw image, sparse where the source reads zero
    Raw,
    /// A dynamic (or with --fixed, fixed) VHDX file; zero ranges stay unallocated
    Vhdx,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceFormat {
    /// A raw image
    Raw,
    /// A VHDX/AVHDX file (a differencing disk is read through its chain)
    Vhdx,
}

#[derive(clap::Args, Debug)]
#[command(after_help = "\
The source is VHDX when it starts with the VHDX signature, otherwise raw
(override with -f). -O raw needs a VHDX source. -O vhdx takes any source; a
raw source must be a whole number of logical sectors long. The new VHDX gets
the source VHDX's sector sizes (raw: 512 logical, 4096 physical) and 32 MiB
blocks unless told otherwise; it is flushed and closed cleanly.

Examples:
  hvkit convert checkpoint.avhdx flat.raw -O raw
  hvkit convert disk.raw disk.vhdx -O vhdx
  hvkit convert checkpoint.avhdx merged.vhdx -O vhdx --fixed")]
pub struct Args {
    /// Source: VHDX/AVHDX (read through its chain) or, for -O vhdx, a raw image
    src: PathBuf,
    /// Destination file (overwritten; it must not be the source or one of its parents)
    dst: PathBuf,
    /// Output format
    #[arg(short = 'O', long = "output-format", value_enum)]
    format: Format,
    /// Source format [default: detected from the VHDX signature]
    #[arg(short = 'f', long = "source-format", value_enum)]
    source_format: Option<SourceFormat>,
    /// -O vhdx: make a fixed disk (every block allocated)
    #[arg(long)]
    fixed: bool,
    /// -O vhdx: block size, a power of two from 1M to 256M [default: 32M]
    #[arg(long, value_parser = size_arg)]
    block_size: Option<u64>,
    /// -O vhdx: logical sector size, 512 or 4096 [default: the source's, 512 for raw]
    #[arg(long, value_parser = sector_arg)]
    logical_sector: Option<u32>,
    /// -O vhdx: physical sector size, 512 or 4096 [default: the source's, 4096 for raw]
    #[arg(long, value_parser = sector_arg)]
    physical_sector: Option<u32>,
    /// No progress bar
    #[arg(short, long)]
    quiet: bool,
    /// Flush the output to stable storage before exiting (a VHDX output always is)
    #[arg(long)]
    sync: bool,
    /// -O raw: write through the page cache (copy_file_range) instead of
    /// around it (O_DIRECT, the default where the output's filesystem allows it)
    #[arg(long)]
    buffered: bool,
    /// Print a JSON summary
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    chain: ChainArgs,
}

/// (device, inode) of a file, when it exists.
fn file_id(p: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

/// Refuses a destination that is the source or one of its layers.
fn check_not_source(dst: &Path, sources: &[&Path]) -> Result<(), CliError> {
    let Some(d) = file_id(dst) else {
        return Ok(());
    };
    if let Some(s) = sources.iter().find(|s| file_id(s) == Some(d)) {
        return Err(CliError::new(
            format!(
                "{}: is the same file as the source {}; refusing to overwrite it",
                dst.display(),
                s.display()
            ),
            1,
        ));
    }
    Ok(())
}

pub fn run(a: Args) -> CliResult {
    let src_is_vhdx = match a.source_format {
        Some(SourceFormat::Vhdx) => true,
        Some(SourceFormat::Raw) => false,
        None => is_vhdx(&a.src)?,
    };
    if a.format == Format::Raw {
        let given = [
            (a.fixed, "--fixed"),
            (a.block_size.is_some(), "--block-size"),
            (a.logical_sector.is_some(), "--logical-sector"),
            (a.physical_sector.is_some(), "--physical-sector"),
        ];
        if let Some((_, flag)) = given.iter().find(|(on, _)| *on) {
            return Err(CliError::new(format!("{flag} applies to -O vhdx only"), 1));
        }
        if !src_is_vhdx {
            return Err(CliError::new(
                format!(
                    "{}: is not a VHDX file (no vhdxfile signature); -O raw needs a VHDX source",
                    a.src.display()
                ),
                1,
            ));
        }
        return to_raw(&a);
    }
    to_vhdx(&a, src_is_vhdx)
}

fn to_raw(a: &Args) -> CliResult {
    let disk = a.chain.open(&a.src)?;
    let layers: Vec<&Path> = disk.layers().iter().map(|l| l.path.as_path()).collect();
    check_not_source(&a.dst, &layers)?;
    // An output this command creates is removed again if the conversion
    // fails (an existing file or device is left as the failure left it).
    let created = !a.dst.exists();
    let out = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&a.dst)
        .map_err(|e| CliError::new(format!("{}: {e}", a.dst.display()), 1))?;
    let bar = bytes_bar(disk.virtual_size(), a.quiet || a.json);
    let start = Instant::now();
    let opts = vhdx::export::ExportOptions {
        sync: a.sync,
        direct: !a.buffered,
    };
    let stats = vhdx::export::to_raw_with(
        &disk,
        &out,
        &a.dst.display().to_string(),
        opts,
        &mut |done| bar.set_position(done),
    )
    .inspect_err(|_| {
        bar.finish_and_clear();
        if created {
            let _ = std::fs::remove_file(&a.dst);
        }
    })?;
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    if a.json {
        let v = json!({
            "source": a.src.display().to_string(),
            "destination": a.dst.display().to_string(),
            "format": "raw",
            "virtual_size": disk.virtual_size(),
            "data_bytes": stats.data_bytes,
            "zero_bytes": stats.zero_bytes,
            "kernel_copy_bytes": stats.kernel_copy_bytes,
            "direct_bytes": stats.direct_bytes,
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

fn to_vhdx(a: &Args, src_is_vhdx: bool) -> CliResult {
    let src_name = a.src.display().to_string();
    let dst_name = a.dst.display().to_string();
    let mut params = CreateParams::dynamic(0);
    params.fixed = a.fixed;
    let src: Box<dyn GuestImage> = if src_is_vhdx {
        let disk: Disk = a.chain.open(&a.src)?;
        let layers: Vec<&Path> = disk.layers().iter().map(|l| l.path.as_path()).collect();
        check_not_source(&a.dst, &layers)?;
        let md = disk.leaf().metadata();
        params.logical_sector_size = md.logical_sector_size;
        params.physical_sector_size = md.physical_sector_size;
        Box::new(disk)
    } else {
        check_not_source(&a.dst, &[a.src.as_path()])?;
        Box::new(RawImage::open(&a.src)?)
    };
    if let Some(l) = a.logical_sector {
        params.logical_sector_size = l;
        params.physical_sector_size = params.physical_sector_size.max(l);
    }
    if let Some(p) = a.physical_sector {
        params.physical_sector_size = p;
    }
    if params.physical_sector_size < params.logical_sector_size {
        return Err(CliError::new(
            format!(
                "{dst_name}: the physical sector size ({}) cannot be smaller than the logical sector size ({})",
                params.physical_sector_size, params.logical_sector_size
            ),
            1,
        ));
    }
    if let Some(b) = a.block_size {
        params.block_size = block_size_u32(&a.dst, b)?;
    }
    let size = src.size();
    let lss = params.logical_sector_size as u64;
    if size == 0 || !size.is_multiple_of(lss) {
        return Err(CliError::new(
            format!(
                "{src_name}: its size of {size} bytes is not a non-zero multiple of the {lss}-byte logical sector size, so it cannot become a VHDX disk (pad it first, e.g. `truncate -s %{lss} {src_name}`)"
            ),
            1,
        ));
    }
    let out = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&a.dst)
        .map_err(|e| CliError::new(format!("{dst_name}: {e}"), 1))?;
    let bar = bytes_bar(size, a.quiet || a.json);
    let start = Instant::now();
    let result = vhdx::import::to_vhdx(
        &*src,
        &src_name,
        Box::new(out),
        &dst_name,
        &params,
        &mut |done| bar.set_position(done),
    );
    bar.finish_and_clear();
    let stats = match result {
        Ok(s) => s,
        Err(e) => {
            // A half-written VHDX would look valid and hold the wrong content.
            let _ = std::fs::remove_file(&a.dst);
            return Err(CliError::from(e));
        }
    };
    let secs = start.elapsed().as_secs_f64();
    let kind = if a.fixed { "fixed" } else { "dynamic" };
    if a.json {
        let v = json!({
            "source": src_name,
            "source_format": if src_is_vhdx { "vhdx" } else { "raw" },
            "destination": dst_name,
            "format": "vhdx",
            "type": kind,
            "virtual_size": size,
            "block_size": params.block_size,
            "logical_sector_size": params.logical_sector_size,
            "physical_sector_size": params.physical_sector_size,
            "data_bytes": stats.data_bytes,
            "zero_bytes": stats.zero_bytes,
            "seconds": secs,
        });
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
    } else if !a.quiet {
        let zeros = if a.fixed {
            "bytes of zeros skipped"
        } else {
            "bytes of zeros left unallocated"
        };
        eprintln!(
            "{src_name} -> {dst_name} ({kind} VHDX): {} bytes of data written, {} {zeros}, {:.2} s ({:.0} MiB/s)",
            stats.data_bytes,
            stats.zero_bytes,
            secs,
            size as f64 / secs.max(1e-9) / (1 << 20) as f64
        );
    }
    Ok(ExitCode::SUCCESS)
}
