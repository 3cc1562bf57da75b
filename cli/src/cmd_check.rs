//! `hvkit check`: validate every structure of a file.

use crate::cmd_info::problem_json;
use crate::{CliError, CliResult};
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;
use vhdx::check::check_path;
use vhdx::Severity;

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Exit status: 0 clean, 2 corruption found, 3 the log needs replay (use --repair), 1 any other error."
)]
pub struct Args {
    /// The VHDX or AVHDX file
    file: PathBuf,
    /// Replay a pending log into the file first
    #[arg(long)]
    repair: bool,
    /// Print JSON instead of text
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> CliResult {
    let r = check_path(&a.file, a.repair).map_err(|e| CliError::new(e.to_string(), 1))?;
    let code: u8 = if r.is_corrupt() {
        2
    } else if r.log_needs_replay {
        3
    } else {
        0
    };
    let status = match code {
        0 => "clean",
        2 => "corrupt",
        _ => "log_needs_replay",
    };
    if a.json {
        let v = json!({
            "path": r.path,
            "status": status,
            "repaired": r.repaired,
            "log_needs_replay": r.log_needs_replay,
            "log_active_entries": r.log_entries,
            "problems": r.problems.iter().map(problem_json).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
    } else {
        for p in &r.problems {
            let sev = match p.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
            };
            println!("{sev}: {} at offset {:#x}: {}", p.what, p.offset, p.message);
        }
        if r.repaired {
            println!(
                "{}: log replayed into the file ({} entries)",
                r.path, r.log_entries
            );
        }
        match code {
            0 => println!("{}: no errors found", r.path),
            2 => println!(
                "{}: {} error(s) found",
                r.path,
                r.problems
                    .iter()
                    .filter(|p| p.severity == Severity::Error)
                    .count()
            ),
            _ => println!(
                "{}: the log holds {} entries that must be replayed; run `hvkit check --repair {}`",
                r.path,
                r.log_entries,
                a.file.display()
            ),
        }
    }
    Ok(ExitCode::from(code))
}
