//! `hvkit merge`: merge a differencing disk, or every layer from it up to an
//! ancestor, into that ancestor.

use crate::cmd_info::human;
use crate::image_arg::ChainArgs;
use crate::progress::bytes_bar;
use crate::CliResult;
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirectionArg {
    Auto,
    Down,
    Up,
}

#[derive(clap::Args, Debug)]
#[command(after_help = "\
Merging CHILD into its parent is what deleting its Hyper-V checkpoint does:
the parent takes CHILD's data (whole runs, reflinked where the filesystem
shares blocks, else copy_file_range; sector bitmaps merged when the parent is
itself differencing; ZERO and UNMAPPED blocks become zero state without
writing zeros), every disk that used CHILD as its parent is re-pointed at the
parent, and CHILD is removed (--keep keeps it). With --into, every layer from
CHILD up to ANCESTOR is merged, the one next to ANCESTOR first.

--direction up instead copies the parent's blocks that CHILD lacks into CHILD
and re-points CHILD at the grandparent (the parent is removed); it moves fewer
bytes when CHILD holds more data than its parent. It needs a grandparent and a
parent that no other disk uses. The default, auto, picks up when it is allowed
and cheaper, down otherwise.

The target may not be the parent of any other disk (its content changes);
other disks are looked for in the folders of the chain's files and in every
--scan folder.

A merge that is interrupted (crash, kill, power loss) leaves every disk
reading what it read before; run the same command again to complete it.

Examples:
  hvkit merge checkpoint2.avhdx
  hvkit merge checkpoint3.avhdx --into base.vhdx --json")]
pub struct Args {
    /// The differencing disk to merge
    child: PathBuf,
    /// The ancestor to merge into [default: CHILD's parent]
    #[arg(long, value_name = "ANCESTOR")]
    into: Option<PathBuf>,
    /// down: CHILD's data into the ancestor; up: the parent's data into CHILD, which is
    /// re-pointed at the grandparent (one layer, the parent used by nothing else);
    /// auto: up when allowed and it moves fewer bytes (down whenever --into names the target)
    #[arg(long, value_enum, default_value_t = DirectionArg::Auto)]
    direction: DirectionArg,
    /// Keep the merged files (down: they still read correctly over the target; up: the parent is left unused)
    #[arg(long)]
    keep: bool,
    /// Never use reflinks (always copy the bytes)
    #[arg(long)]
    no_reflink: bool,
    /// Copy around the page cache (O_DIRECT reads and writes where the
    /// filesystem allows them) instead of with copy_file_range
    #[arg(long)]
    direct: bool,
    /// Another folder to look for disks that use a merged layer or the target as their parent (repeatable)
    #[arg(long, value_name = "DIR")]
    scan: Vec<PathBuf>,
    /// No progress bar
    #[arg(short, long)]
    quiet: bool,
    /// Print a JSON summary
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    chain: ChainArgs,
}

pub fn run(a: Args) -> CliResult {
    let plan = chain::plan(
        &a.child,
        &chain::PlanOptions {
            into: a.into.clone(),
            chain: a.chain.options(),
            scan: a.scan.clone(),
            direction: match a.direction {
                DirectionArg::Auto => chain::DirectionChoice::Auto,
                DirectionArg::Down => chain::DirectionChoice::Down,
                DirectionArg::Up => chain::DirectionChoice::Up,
            },
        },
    )?;
    let total: u64 = plan.layer_bytes.iter().sum();
    let bar = bytes_bar(total, a.quiet || a.json);
    let opts = chain::MergeOptions {
        keep: a.keep,
        reflink: !a.no_reflink,
        direct: a.direct,
        ..chain::MergeOptions::default()
    };
    let stats = chain::merge(&chain::OsFiles, &plan, &opts, &mut |done, _| {
        bar.set_position(done)
    })
    .map_err(|e| {
        bar.finish_and_clear();
        // A refusal changed nothing; any other failure left the chain
        // reading as before (the merge is crash-safe) and may be retried.
        let refused = matches!(e, chain::Error::Refused { .. });
        let e = crate::CliError::from(e);
        if refused {
            e
        } else {
            e.with_note(
                "the chain still reads as before the merge; once the cause is fixed, the same command completes it",
            )
        }
    })?;
    bar.finish_and_clear();
    let up = plan.direction == chain::Direction::Up;
    // The file that holds the result.
    let target = if up {
        &plan.layers[0]
    } else {
        plan.layers.last().expect("a plan has a target")
    };
    let merged: &[PathBuf] = if up {
        &plan.layers[1..]
    } else {
        &plan.layers[..plan.layers.len() - 1]
    };
    let secs = stats.elapsed.as_secs_f64();
    let moved = stats.bytes_copied + stats.bytes_reflinked;
    let rate = if secs > 0.0 { moved as f64 / secs } else { 0.0 };
    let paths =
        |v: &[PathBuf]| -> Vec<String> { v.iter().map(|p| p.display().to_string()).collect() };
    if a.json {
        let v = json!({
            "direction": if up { "up" } else { "down" },
            "target": target.display().to_string(),
            "layers_merged": paths(merged),
            "bytes_copied": stats.bytes_copied,
            "bytes_reflinked": stats.bytes_reflinked,
            "bytes_direct": stats.bytes_direct,
            "bytes_zeroed": stats.bytes_zeroed,
            "blocks_zeroed": stats.blocks_zeroed,
            "children_repointed": paths(&stats.children_repointed),
            "files_removed": paths(&stats.files_removed),
            "seconds": secs,
            "bytes_per_second": rate,
        });
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
    } else {
        if up {
            println!(
                "merged {} up into {} ({} layer(s))",
                paths(merged).join(", "),
                target.display(),
                stats.layers_merged
            );
        } else {
            println!(
                "merged {} layer(s) into {}",
                stats.layers_merged,
                target.display()
            );
        }
        println!("  copied:     {}", human(stats.bytes_copied));
        println!("  reflinked:  {}", human(stats.bytes_reflinked));
        println!(
            "  zeroed:     {} ({} whole blocks)",
            human(stats.bytes_zeroed),
            stats.blocks_zeroed
        );
        println!(
            "  time:       {secs:.3} s ({:.1} MiB/s)",
            rate / (1 << 20) as f64
        );
        for c in &stats.children_repointed {
            println!("  re-pointed: {}", c.display());
        }
        for f in &stats.files_removed {
            println!("  removed:    {}", f.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
