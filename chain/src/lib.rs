//! Differencing chains of VHDX/AVHDX files: crash-safe block-level merges
//! of checkpoint layers into an ancestor (what deleting a Hyper-V
//! checkpoint does), on top of the `vhdx` crate.
//!
//! ```no_run
//! use std::path::Path;
//! let plan = chain::plan(Path::new("checkpoint.avhdx"), None, &vhdx::ChainOptions::default(), &[])?;
//! let stats = chain::merge(&chain::OsFiles, &plan, &chain::MergeOptions::default(), &mut |_, _| {})?;
//! println!("{} bytes copied", stats.bytes_copied);
//! # Ok::<(), chain::Error>(())
//! ```

pub mod copy;
pub mod error;
pub mod merge;
pub mod plan;

pub use error::{Error, Result};
pub use merge::{merge, Files, MergeOptions, MergeStats, OsFiles};
pub use plan::{plan, Direction, DirectionChoice, MergePlan, PlanOptions, UpPlan};
