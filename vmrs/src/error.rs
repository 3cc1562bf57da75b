//! Typed errors of the vmrs crate.

/// Errors returned by the vmrs crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The container could not be read.
    #[error(transparent)]
    Container(#[from] vmcx::Error),
    /// The container header is valid but what follows is not readable:
    /// the state was saved with `EncryptStateAndVmMigrationTraffic`.
    #[error("{path}: the saved state is encrypted (valid HyperVStorage header, unreadable payload: {detail}); it can only be read on the host that holds its key")]
    Encrypted { path: String, detail: String },
    /// A saved-state structure is malformed.
    #[error("{path}: {key}: {reason}")]
    Corrupt {
        path: String,
        key: String,
        reason: String,
    },
    /// A guest-physical read outside every range the caller allowed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// Bad input to the writer.
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
