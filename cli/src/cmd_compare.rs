//! `hvkit compare`: compare the guest-visible content of two images.

use crate::image_arg::{open_any, ChainArgs};
use crate::progress::bytes_bar;
use crate::{CliError, CliResult};
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;
use vhdx::{GuestImage, Run};

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Each image is opened as VHDX when it starts with the VHDX signature, otherwise as raw.\n\
Exit status: 0 identical, 1 different (the first differing offset is printed), 2 error."
)]
pub struct Args {
    /// First image (VHDX, AVHDX chain, or raw)
    a: PathBuf,
    /// Second image
    b: PathBuf,
    /// Treat both images as raw files
    #[arg(long)]
    raw: bool,
    /// No progress bar
    #[arg(short, long)]
    quiet: bool,
    /// Print a JSON result
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    chain: ChainArgs,
}

const CHUNK: u64 = 4 << 20;

/// True when `img` reads zeros over the whole range according to its runs.
fn all_zero_runs(img: &dyn GuestImage, off: u64, len: u64) -> Result<bool, vhdx::Error> {
    let mut zero = true;
    img.for_each_run(off, len, &mut |r| {
        if !matches!(r, Run::Zero { .. }) {
            zero = false;
        }
        Ok(())
    })?;
    Ok(zero)
}

pub fn run(a: Args) -> CliResult {
    let err2 = |e: vhdx::Error| CliError::new(e.to_string(), 2);
    let open =
        |p: &PathBuf| open_any(p, a.raw, &a.chain).map_err(|e| CliError::new(e.to_string(), 2));
    let (x, y) = (open(&a.a)?, open(&a.b)?);
    let common = x.size().min(y.size());
    let bar = bytes_bar(common, a.quiet || a.json);
    let mut first_diff: Option<u64> = None;
    let (mut bx, mut by) = (vec![0u8; CHUNK as usize], vec![0u8; CHUNK as usize]);
    let mut pos = 0u64;
    while pos < common {
        let n = CHUNK.min(common - pos);
        if !(all_zero_runs(&*x, pos, n).map_err(err2)?
            && all_zero_runs(&*y, pos, n).map_err(err2)?)
        {
            let (cx, cy) = (&mut bx[..n as usize], &mut by[..n as usize]);
            x.read_at(cx, pos).map_err(err2)?;
            y.read_at(cy, pos).map_err(err2)?;
            if cx != cy {
                let i = cx
                    .iter()
                    .zip(cy.iter())
                    .position(|(p, q)| p != q)
                    .expect("differs");
                first_diff = Some(pos + i as u64);
                break;
            }
        }
        pos += n;
        bar.set_position(pos);
    }
    bar.finish_and_clear();
    let size_differs = x.size() != y.size();
    if first_diff.is_none() && size_differs {
        first_diff = Some(common);
    }
    if a.json {
        println!(
            "{}",
            json!({
                "identical": first_diff.is_none(),
                "first_difference": first_diff,
                "size_a": x.size(),
                "size_b": y.size(),
            })
        );
    } else {
        match first_diff {
            None => println!("Images are identical."),
            Some(off) if size_differs && off == common => println!(
                "Images differ in size ({} vs {} bytes); content is identical up to {off:#x}",
                x.size(),
                y.size()
            ),
            Some(off) => println!("Content mismatch at offset {off} ({off:#x})!"),
        }
    }
    Ok(ExitCode::from(if first_diff.is_none() { 0 } else { 1 }))
}
