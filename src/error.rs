//! The error every request handler returns: a message meant for the user who typed the
//! `docker` command, a kind that decides the HTTP status, and the error that caused it,
//! for the log.

use std::fmt;
use std::sync::Arc;

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
    /// A service rustvlan depends on (etcd) did not answer.
    Unavailable,
}

impl ErrorKind {
    /// As the `outcome` label of the request metrics names it.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Invalid => "invalid",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Exhausted => "exhausted",
            ErrorKind::Kernel => "kernel",
            ErrorKind::Store => "store",
            ErrorKind::Unavailable => "unavailable",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
    /// What went wrong underneath (a kernel or store error), for the log's cause chain.
    pub cause: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

/// Errors are equal when users see the same: kind and message.
impl PartialEq for Error {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && self.message == other.message
    }
}

impl Eq for Error {}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            cause: None,
        }
    }

    /// Keeps `cause` for the log; the message users see stays as it is.
    pub fn caused_by(mut self, cause: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.cause = Some(Arc::new(cause));
        self
    }

    /// The message and every cause under it, for the log: `a: b; caused by: c`.
    pub fn chain(&self) -> String {
        let mut out = self.message.clone();
        let mut cause: Option<&(dyn std::error::Error + 'static)> = self.cause.as_deref().map(|c| c as _);
        while let Some(c) = cause {
            let text = c.to_string();
            if !self.message.contains(&text) {
                out.push_str("; caused by: ");
                out.push_str(&text);
            }
            cause = c.source();
        }
        out
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

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
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

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause.as_deref().map(|c| c as _)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::{Errno, KernelError};

    #[test]
    fn the_log_chain_names_the_cause_the_message_leaves_out() {
        let refusal = KernelError::refused("creating macvlan link rv1", Errno::EBUSY);
        let e = Error::conflict("parent eth0 is busy").caused_by(refusal.clone());
        assert_eq!(e.message, "parent eth0 is busy");
        assert_eq!(
            e.chain(),
            "parent eth0 is busy; caused by: creating macvlan link rv1: Device or resource busy (os error 16)"
        );
        let e = Error::from(refusal);
        assert_eq!(e.chain(), e.message, "a cause already in the message is not repeated");
        assert_eq!(e.kind, ErrorKind::Kernel);
    }
}
