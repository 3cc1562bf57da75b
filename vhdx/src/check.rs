//! `check`: every structural problem of a file, with its offset.

use crate::error::{Error, Result};
use crate::image::{LogStatus, OpenOptions, Problem, Severity, VhdxFile};
use crate::storage::Storage;

/// What `check` found.
#[derive(Debug, Clone)]
pub struct CheckReport {
    pub path: String,
    pub problems: Vec<Problem>,
    /// The header names a log that has not been replayed.
    pub log_needs_replay: bool,
    /// Entries in the active log sequence (0 when clean).
    pub log_entries: usize,
    /// The log was replayed into the file by this check (`--repair`).
    pub repaired: bool,
}

impl CheckReport {
    /// True when any problem is an error.
    pub fn is_corrupt(&self) -> bool {
        self.problems.iter().any(|p| p.severity == Severity::Error)
    }
}

/// Checks the file held by `storage`. I/O errors and unsupported features
/// are errors; corruption is reported in the result.
pub fn check(storage: Box<dyn Storage>, path: &str) -> Result<CheckReport> {
    let opts = OpenOptions {
        lenient: true,
        ..OpenOptions::read_only()
    };
    report(VhdxFile::open(storage, path, opts), path)
}

/// Checks the file at `path`; with `repair`, a pending log is first replayed
/// into the file.
pub fn check_path(path: &std::path::Path, repair: bool) -> Result<CheckReport> {
    let name = path.display().to_string();
    if repair {
        let opts = OpenOptions {
            lenient: true,
            ..OpenOptions::writable()
        };
        let opened = VhdxFile::open_path(path, opts);
        let repaired = matches!(
            opened.as_ref().map(|f| f.log_status()),
            Ok(LogStatus::ReplayedOnDisk(_))
        );
        drop(opened);
        let mut r = check_path(path, false)?;
        r.repaired = repaired;
        return Ok(r);
    }
    let file = std::fs::File::open(path).map_err(|e| Error::open(&name, e))?;
    check(Box::new(file), &name)
}

fn report(opened: Result<VhdxFile>, path: &str) -> Result<CheckReport> {
    match opened {
        Ok(f) => {
            let (needs, entries) = match f.log_status() {
                LogStatus::Clean => (false, 0),
                LogStatus::ReplayedInMemory(p) => (true, p.entries.len()),
                LogStatus::ReplayedOnDisk(p) => (false, p.entries.len()),
            };
            Ok(CheckReport {
                path: path.to_string(),
                problems: f.problems().to_vec(),
                log_needs_replay: needs,
                log_entries: entries,
                repaired: false,
            })
        }
        Err(Error::Corrupt {
            what,
            offset,
            reason,
            ..
        }) => Ok(CheckReport {
            path: path.to_string(),
            problems: vec![Problem {
                severity: Severity::Error,
                what,
                offset,
                message: reason,
            }],
            log_needs_replay: false,
            log_entries: 0,
            repaired: false,
        }),
        Err(e) => Err(e),
    }
}
