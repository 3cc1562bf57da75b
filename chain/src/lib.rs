//! Differencing chains of VHDX/AVHDX files, on top of the `vhdx` crate:
//! [`ChainDisk`], a chain read (and written at its leaf) through a map of
//! which layer holds each run, so reads cost the same at any depth; and
//! crash-safe block-level merges of checkpoint layers into an ancestor
//! (what deleting a Hyper-V checkpoint does), down or up.
//!
//! ```no_run
//! use std::path::Path;
//! let plan = chain::plan(Path::new("checkpoint.avhdx"), &chain::PlanOptions::default())?;
//! let stats = chain::merge(&chain::OsFiles, &plan, &chain::MergeOptions::default(), &mut |_, _| {})?;
//! println!("{} bytes copied", stats.bytes_copied);
//! # Ok::<(), chain::Error>(())
//! ```

pub mod copy;
pub mod error;
pub mod layer_map;
pub mod merge;
pub mod plan;

pub use error::{Error, Result};
pub use layer_map::ChainDisk;
pub use merge::{merge, Files, MergeOptions, MergeStats, OsFiles};
pub use plan::{plan, Direction, DirectionChoice, MergePlan, PlanOptions, UpPlan, ABSORBED_KEY};
