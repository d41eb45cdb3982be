//! The error every request handler returns: a message meant for the user who typed the
//! `docker` command, and a kind that decides the HTTP status.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request itself is wrong: bad JSON, a bad option, an address outside a pool.
    Invalid,
    /// An id the caller must know about is not known to rustvlan.
    NotFound,
    /// The request clashes with existing state: address taken, parent in use.
    Conflict,
    /// A pool has no free address or subnet left.
    Exhausted,
    /// The kernel refused a link operation.
    Kernel,
    /// The state store could not be read or written.
    Store,
}

#[derive(Debug, Clone, PartialEq, Eq)]
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

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, message)
    }

    pub fn exhausted(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Exhausted, message)
    }

    pub fn kernel(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Kernel, message)
    }

    /// A store failure, with the whole cause chain in the message.
    pub fn store(err: &anyhow::Error) -> Self {
        Self::new(ErrorKind::Store, format!("state store: {err:#}"))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

pub type Result<T, E = Error> = std::result::Result<T, E>;
