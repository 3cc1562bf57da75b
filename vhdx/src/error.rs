//! Typed errors of the vhdx crate. Every error names the file and, where it
//! applies, the byte offset in that file.

use std::io;
use uuid::Uuid;

/// Errors returned by the vhdx crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system I/O error while reading or writing `path`.
    #[error("{path}: I/O error at offset {offset:#x}: {source}")]
    Io {
        path: String,
        offset: u64,
        #[source]
        source: io::Error,
    },
    /// `path` could not be opened (missing, no permission, a directory).
    #[error("{path}: cannot open: {source}")]
    Open {
        path: String,
        #[source]
        source: io::Error,
    },
    /// A structure in the file is malformed.
    #[error("{path}: corrupt {what} at offset {offset:#x}: {reason}")]
    Corrupt {
        path: String,
        what: &'static str,
        offset: u64,
        reason: String,
    },
    /// The file is valid but uses a feature this crate cannot handle.
    #[error("{path}: unsupported: {reason}")]
    Unsupported { path: String, reason: String },
    /// The log must be replayed and the open was asked not to do it.
    #[error("{path}: the log (LogGuid {log_guid}) must be replayed before the file can be used; run `hvkit check --repair`")]
    LogNeedsReplay { path: String, log_guid: Uuid },
    /// A differencing disk's parent could not be found.
    #[error("{path}: parent disk not found (tried: {tried}); pass it with --parent PATH")]
    ParentNotFound { path: String, tried: String },
    /// The parent found does not carry the identity the child was made from.
    #[error("{child}: expects a parent with DataWriteGuid {expected}, but {parent} has DataWriteGuid {actual} (the parent was modified or is the wrong file; --force reads anyway)")]
    ParentMismatch {
        child: String,
        parent: String,
        expected: String,
        actual: Uuid,
    },
    /// A parent whose geometry cannot back the child.
    #[error("{child}: parent {parent} is incompatible: {reason}")]
    ParentIncompatible {
        child: String,
        parent: String,
        reason: String,
    },
    /// The chain of parents loops.
    #[error("{path}: differencing chain has a cycle ({again} appears twice)")]
    ChainCycle { path: String, again: String },
    /// The chain of parents is deeper than allowed.
    #[error("{path}: differencing chain is deeper than {max} layers")]
    ChainTooDeep { path: String, max: usize },
    /// A guest range outside the virtual disk.
    #[error("range {offset:#x}+{len:#x} lies outside the virtual disk of {size:#x} bytes")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    /// A write was attempted on a read-only open.
    #[error("{path}: opened read-only")]
    ReadOnly { path: String },
}

/// Result alias of the vhdx crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error at `offset` of `path` (or, for a failure of the
    /// `O_DIRECT` writer, at the offset where the write failed).
    pub fn io(path: &str, offset: u64, source: io::Error) -> Self {
        Error::Io {
            path: path.to_string(),
            offset: crate::direct_copy::failure_offset(&source).unwrap_or(offset),
            source,
        }
    }

    pub(crate) fn open(path: &str, source: io::Error) -> Self {
        Error::Open {
            path: path.to_string(),
            source,
        }
    }

    pub(crate) fn corrupt(
        path: &str,
        what: &'static str,
        offset: u64,
        reason: impl Into<String>,
    ) -> Self {
        Error::Corrupt {
            path: path.to_string(),
            what,
            offset,
            reason: reason.into(),
        }
    }

    pub(crate) fn unsupported(path: &str, reason: impl Into<String>) -> Self {
        Error::Unsupported {
            path: path.to_string(),
            reason: reason.into(),
        }
    }

    /// True when the error means the file's structures are damaged (as opposed
    /// to I/O failures, unsupported features or chain problems).
    pub fn is_corruption(&self) -> bool {
        matches!(self, Error::Corrupt { .. })
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        match e {
            Error::Io { source, .. } | Error::Open { source, .. } => source,
            Error::OutOfRange { .. } => io::Error::new(io::ErrorKind::InvalidInput, e),
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        }
    }
}
