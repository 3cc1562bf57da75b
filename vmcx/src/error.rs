//! Typed errors of the vmcx crate; each names the file and, where it
//! applies, the byte offset.

use std::io;

/// Errors returned by the vmcx crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system I/O error.
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
    /// A structure is malformed or fails its checksum.
    #[error("{path}: corrupt {what} at offset {offset:#x}: {reason}")]
    Corrupt {
        path: String,
        what: &'static str,
        offset: u64,
        reason: String,
    },
    /// A valid file using something this crate does not handle.
    #[error("{path}: unsupported: {reason}")]
    Unsupported { path: String, reason: String },
    /// The replay log holds a transaction and the open was read-only and
    /// asked not to apply it in memory.
    #[error("{path}: the replay log holds {entries} pending record(s); open writable (`--repair`) to apply them")]
    LogNeedsReplay { path: String, entries: u32 },
    /// No key at this path.
    #[error("{path}: no key {key}")]
    NoSuchKey { path: String, key: String },
    /// A path that matches more than one key where one was needed.
    #[error("{path}: {key} matches {count} keys with the same name; pick one with NAME[INDEX] (0-based)")]
    Ambiguous {
        path: String,
        key: String,
        count: usize,
    },
    /// A value that cannot be used as asked (wrong type, bad text).
    #[error("{0}")]
    Invalid(String),
    /// A write on a store opened read-only.
    #[error("{path}: opened read-only")]
    ReadOnly { path: String },
    /// A tree that cannot be laid out (too many tables, name too long, ...).
    #[error("cannot write tree: {0}")]
    Layout(String),
}

/// Result alias of the vmcx crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: &str, offset: u64, source: io::Error) -> Self {
        Error::Io {
            path: path.to_string(),
            offset,
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
}
