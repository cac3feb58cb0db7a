//! The library's error type.
//!
//! Policy: errors carry their context (path, object, KMS code) as data. Per-file failures during
//! a run are collected into the run's report and the run goes on; only failures that make the
//! whole run meaningless (KMS, vault I/O, bad arguments) are returned as `Err`. Integrity errors
//! are kept apart from runtime errors because they map to their own exit code (3).

use std::io;
use std::path::{Path, PathBuf};

use crate::kms::KmsError;

/// Result alias for the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, classified for exit codes (see [`Error::exit_code`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command line or its arguments are wrong (exit 2).
    #[error("{0}")]
    Usage(String),

    /// I/O failed on a named path (exit 1).
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The KMS refused or could not be reached (exit 1). Not a `#[source]`: the message already
    /// holds the KmsError, and `{:#}` would print it twice.
    #[error("KMS: {0}")]
    Kms(KmsError),

    /// No wrapping of a batch's data key could be unwrapped (exit 1). `last` is the KMS's
    /// answer to the last wrapping tried, with its key id and provider URL, so the CLI can
    /// advise by its kind (a disabled key, a missing one).
    #[error("cannot unwrap the data key of batch {batch}: {detail}")]
    Unwrap {
        batch: String,
        detail: String,
        last: Option<Box<(String, String, KmsError)>>,
    },

    /// The vault is damaged or has been tampered with (exit 3).
    #[error("integrity: {what}: {why}")]
    Integrity { what: String, why: String },

    /// The vault is of a format this build does not read, or is not a vault (exit 1).
    #[error("{what}: {why}")]
    Format { what: String, why: String },

    /// The vault's (or DEST's) filesystem is full; the run is resumable (exit 1). `then`
    /// says what to run once space is freed.
    #[error("{}: no space left on device; free some space, then {then}", path.display())]
    NoSpace { path: PathBuf, then: String },

    /// Another run is writing this vault (it holds the vault's lock, docs/LIFECYCLE.md
    /// "One writer at a time"); nothing was read or changed (exit 1: wait, then run again).
    #[error("another envseal run{} is using {}; wait for it to finish (or stop it), then run this command again", pid.map(|p| format!(" (pid {p})")).unwrap_or_default(), path.display())]
    Locked { path: PathBuf, pid: Option<u32> },

    /// A storage service refused a request or could not be reached (exit 1). `kind` is
    /// what callers decide by (retries, hints); `url` names the vault or object.
    #[error("{url}: {detail}")]
    Store {
        url: String,
        kind: StoreErrorKind,
        detail: String,
    },

    /// A run was stopped (Ctrl-C); the vault is resumable (exit 130).
    #[error("interrupted; run the same command again to resume")]
    Interrupted,

    /// Something failed that the user must act on (exit 1).
    #[error("{0}")]
    Runtime(String),
}

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl AsRef<Path>, source: io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    /// Whether this is an I/O error of a full filesystem or an exceeded quota.
    pub fn is_no_space(&self) -> bool {
        match self {
            Error::NoSpace { .. } => true,
            Error::Io { source, .. } => {
                matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
            }
            _ => false,
        }
    }

    pub fn integrity(what: impl Into<String>, why: impl Into<String>) -> Self {
        Error::Integrity {
            what: what.into(),
            why: why.into(),
        }
    }

    pub fn format(what: impl Into<String>, why: impl Into<String>) -> Self {
        Error::Format {
            what: what.into(),
            why: why.into(),
        }
    }

    /// The process exit code this error maps to (README.md, "Exit codes").
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) => 2,
            Error::Integrity { .. } => 3,
            Error::Interrupted => 130,
            _ => 1,
        }
    }
}

/// Why a storage service request failed, for decisions (never the message text).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// The credentials were refused (a wrong secret, an unknown key id, no permission).
    Denied,
    /// The bucket does not exist.
    NoBucket,
    /// The service could not be reached (DNS, connection refused, TLS, timeouts) after
    /// the retries.
    Unreachable,
    /// A temporary failure that outlasted the retries (5xx, `SlowDown`, resets).
    Transient,
    /// The service answered something this client cannot use (a malformed reply).
    Protocol,
    /// Any other refusal of the service (with its code in the detail).
    Refused,
}

impl StoreErrorKind {
    /// Whether a request failing this way is worth sending again.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            StoreErrorKind::Unreachable | StoreErrorKind::Transient
        )
    }
}

impl From<KmsError> for Error {
    fn from(e: KmsError) -> Self {
        Error::Kms(e)
    }
}

/// An error and its causes in one line, each cause once: HTTP clients put the useful part
/// (refused, DNS, TLS, timeout) in the source chain, their own text alone says only "error
/// sending request".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// Adds a path to `io::Result`s.
pub trait IoContext<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
