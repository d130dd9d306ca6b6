//! Error kinds that map to the documented exit codes.
//!
//! Most functions return [`anyhow::Result`]; where the *kind* of failure matters to the
//! user (wrong passphrase, corrupted data, locked repository…) an [`Error`] is put in the
//! chain so that the binary can pick the right exit code (see README.md, "Exit codes").

use std::fmt;

/// What went wrong, in the categories the exit codes distinguish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Anything without a more specific kind (exit 1).
    Other,
    /// Bad arguments or configuration (exit 2).
    Usage,
    /// The repository or a snapshot uses a feature this coffer does not know: a newer
    /// coffer wrote it (exit 2, like other things this coffer cannot do; not damage).
    NeedsNewer,
    /// Data in the repository failed verification (exit 3).
    Integrity,
    /// No key slot opens with the given passphrase (exit 4).
    WrongPassword,
    /// Another process holds a conflicting lock (exit 5).
    Locked,
    /// There is no repository at the location (exit 6).
    NotFound,
    /// The storage refused our credentials or could not be reached (exit 7).
    Storage,
    /// A source (a file tree, a stream, a command) failed; no snapshot was written (exit 8).
    Source,
    /// The key in use is write-only and the command reads data back (exit 9).
    WriteOnly,
}

impl ErrorKind {
    /// The process exit code for this kind of failure.
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorKind::Other => 1,
            ErrorKind::Usage | ErrorKind::NeedsNewer => 2,
            ErrorKind::Integrity => 3,
            ErrorKind::WrongPassword => 4,
            ErrorKind::Locked => 5,
            ErrorKind::NotFound => 6,
            ErrorKind::Storage => 7,
            ErrorKind::Source => 8,
            ErrorKind::WriteOnly => 9,
        }
    }
}

/// An error with a kind and a message meant for the user.
#[derive(Debug, Clone)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
        }
    }
    pub fn integrity(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Integrity, message)
    }
    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Usage, message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// The kind of the first [`Error`] found in an error chain, or [`ErrorKind::Other`].
pub fn kind_of(err: &anyhow::Error) -> ErrorKind {
    err.chain()
        .find_map(|e| e.downcast_ref::<Error>().map(|e| e.kind))
        .unwrap_or(ErrorKind::Other)
}

/// Shorthand for `Err(Error::new(kind, msg).into())`.
#[macro_export]
macro_rules! bail_kind {
    ($kind:expr, $($arg:tt)*) => {
        return Err(anyhow::Error::new($crate::error::Error::new($kind, format!($($arg)*))))
    };
}
