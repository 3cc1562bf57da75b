//! Read VHDX and AVHDX (differencing) disk images exactly as a guest sees
//! them: both headers, both region tables, metadata, the BAT with its
//! interleaved sector bitmaps, parent locators, and log replay (in memory for
//! read-only opens, to disk for writable ones).
//!
//! ```no_run
//! use std::io::Read;
//! let mut disk = vhdx::Disk::open("child.avhdx", &vhdx::ChainOptions::default())?;
//! let mut first_sector = [0u8; 512];
//! disk.read_exact(&mut first_sector)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod bat;
pub mod check;
pub mod counting_alloc;
pub mod crash_storage;
pub mod create;
pub mod direct_copy;
pub mod disk;
pub mod error;
pub mod export;
pub mod format;
pub mod image;
pub mod import;
pub mod journal;
pub mod log_replay;
pub mod overlay;
pub mod parent;
pub mod raw;
pub mod read_ahead;
pub mod relink;
pub mod sector_bitmap;
pub mod size;
pub mod storage;
pub mod tail;
pub mod test_corpus;
pub mod write;

pub use disk::{ChainOptions, Disk, Layer, MAX_CHAIN_DEPTH};
pub use error::{Error, Result};
pub use image::{LogStatus, OpenOptions, Problem, Run, Severity, VhdxFile};
pub use raw::{GuestImage, RawImage};
pub use storage::{MemStorage, Storage};
