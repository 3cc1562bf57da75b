//! Typed errors of the checkpoint crate. Every variant names the file (or
//! folder) it is about.

use std::path::{Path, PathBuf};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Vhdx(#[from] vhdx::Error),
    #[error(transparent)]
    Chain(#[from] chain::Error),
    #[error(transparent)]
    Vmcx(#[from] vmcx::Error),
    #[error(transparent)]
    Vmrs(#[from] vmrs::Error),
    /// The path is not a VM folder or configuration hvkit can open.
    #[error("{}: not a VM folder: {why}", path.display())]
    NotAVmFolder { path: PathBuf, why: String },
    /// A configuration whose content makes no sense (a hostile or damaged
    /// folder): a bad value, a cycle, two checkpoints with one id, a
    /// parent that is not there, a disk that is missing or not in the
    /// chain it should be in.
    #[error("{}: {why}", path.display())]
    Corrupt { path: PathBuf, why: String },
    /// No checkpoint has that name or id.
    #[error("{}: no checkpoint is named or has the id {what:?}", folder.display())]
    NoSuchCheckpoint { folder: PathBuf, what: String },
    /// Several checkpoints have that name.
    #[error("{}: {} checkpoints are named {name:?} ({}); give the id instead", folder.display(), ids.len(), ids.join(", "))]
    AmbiguousName {
        folder: PathBuf,
        name: String,
        ids: Vec<String>,
    },
    /// The VM's checkpoint type is Disabled.
    #[error("{}: checkpoints are disabled for this VM (checkpoint type Disabled; `hvkit vm set DIR --checkpoint-type production` enables them); nothing was changed", path.display())]
    Disabled { path: PathBuf },
    /// A ProductionOnly checkpoint could not be made consistent.
    #[error("{}: the production checkpoint failed ({why}) and the checkpoint type ProductionOnly does not fall back to a standard checkpoint; nothing was changed", path.display())]
    ProductionFailed { path: PathBuf, why: String },
    /// The operation is not possible on this folder or in this state.
    #[error("{}: {why}", path.display())]
    Refused { path: PathBuf, why: String },
    /// Another process holds the VM's lock.
    #[error("{}: another hvkit process is working on this VM (its lock is held)", path.display())]
    Locked { path: PathBuf },
    /// A running VM's step failed.
    #[error("the running VM failed to {step}: {why}")]
    Live { step: &'static str, why: String },
}

impl Error {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }
    pub fn corrupt(path: impl AsRef<Path>, why: impl Into<String>) -> Error {
        Error::Corrupt {
            path: path.as_ref().to_path_buf(),
            why: why.into(),
        }
    }
    pub fn refused(path: impl AsRef<Path>, why: impl Into<String>) -> Error {
        Error::Refused {
            path: path.as_ref().to_path_buf(),
            why: why.into(),
        }
    }
    /// True when the error says a file's content is damaged or hostile.
    pub fn is_corruption(&self) -> bool {
        match self {
            Error::Corrupt { .. } => true,
            Error::Vhdx(e) => e.is_corruption(),
            Error::Chain(chain::Error::Vhdx(e)) => e.is_corruption(),
            Error::Vmcx(vmcx::Error::Corrupt { .. }) => true,
            _ => false,
        }
    }
}
