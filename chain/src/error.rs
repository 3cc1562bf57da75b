//! Errors of the chain crate.

use std::path::PathBuf;

/// What can go wrong opening or merging a chain.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An error of the vhdx crate (it names the file and offset).
    #[error(transparent)]
    Vhdx(#[from] vhdx::Error),
    /// An I/O error outside a VHDX structure (listing a folder, removing a file).
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The merge cannot be done as asked.
    #[error("{path}: cannot merge: {reason}")]
    Refused { path: PathBuf, reason: String },
}

/// Result alias of the chain crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn refused(path: &std::path::Path, reason: impl Into<String>) -> Self {
        Error::Refused {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
