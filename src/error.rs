//! The library's error type.
//!
//! Policy: errors carry their context (path, object, KMS code) as data. Per-file failures during
//! a run are collected into the run's report and the run goes on; only failures that make the
//! whole run meaningless (KMS, vault I/O, bad arguments) are returned as `Err`. Integrity errors
//! are kept apart from runtime errors because they map to their own exit code (3).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

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

/// Broad classes of KMS failure; the CLI's messages and retry policy depend on them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KmsErrorKind {
    /// The CMK or alias does not exist.
    NotFound,
    /// The CMK is disabled or pending deletion.
    Disabled,
    /// Credentials missing, unknown or wrong (signature mismatch), or no permission.
    Auth,
    /// The blob is corrupt, was made by another key, or the encryption context differs.
    InvalidCiphertext,
    /// A bad argument (malformed key id or alias, alias exists, ...).
    InvalidArgument,
    /// Throttled; retryable.
    Throttled,
    /// 5xx or temporary unavailability; retryable.
    Unavailable,
    /// Could not reach the endpoint (connect, DNS, TLS, timeout); retryable.
    Transport,
    /// The KMS answered something we cannot parse.
    InvalidResponse,
    /// The local key store is sealed and the passphrase is missing or wrong.
    Passphrase,
    /// Local I/O on the key store.
    Io,
    /// The operation is not supported by this provider.
    Unsupported,
}

impl KmsErrorKind {
    /// Whether a call failing this way may succeed if repeated.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            KmsErrorKind::Throttled | KmsErrorKind::Unavailable | KmsErrorKind::Transport
        )
    }
}

impl crate::retry::Retryable for KmsError {
    fn is_retryable(&self) -> bool {
        self.kind.is_retryable()
    }
}

/// What a KMS error's code says beyond its [`KmsErrorKind`], where the advice to the user
/// differs. Alibaba and AWS name the same condition differently; this is the one place that
/// knows both spellings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KmsCode {
    KeyNotFound,
    AliasNotFound,
    KeyDisabled,
    PendingDeletion,
    /// The key's state cannot change (it is pending deletion).
    StateChangeRefused,
    AliasExists,
    Other,
}

/// A KMS failure with what the KMS said about it. Never contains key material or secrets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KmsError {
    pub kind: KmsErrorKind,
    /// The KMS's error `Code` (`Forbidden.KeyNotFound`, `NotFoundException`, ...), if any.
    pub code: Option<String>,
    pub message: String,
    pub request_id: Option<String>,
    /// The endpoint (or key store directory) that failed.
    pub endpoint: Option<String>,
    /// HTTP status, when there was one.
    pub status: Option<u16>,
}

impl KmsError {
    pub fn new(kind: KmsErrorKind, message: impl Into<String>) -> Self {
        KmsError {
            kind,
            code: None,
            message: message.into(),
            request_id: None,
            endpoint: None,
            status: None,
        }
    }

    /// The condition this error's code names (see [`KmsCode`]).
    pub fn code_kind(&self) -> KmsCode {
        match self.code.as_deref() {
            Some("Forbidden.KeyNotFound") => KmsCode::KeyNotFound,
            Some("Forbidden.AliasNotFound") => KmsCode::AliasNotFound,
            Some("Rejected.Disabled" | "DisabledException") => KmsCode::KeyDisabled,
            // One Alibaba doc table misspells it; accept both.
            Some("Rejected.PendingDeletion" | "Rejetced.PendingDeletion") => {
                KmsCode::PendingDeletion
            }
            Some("Rejected.StateModifiedFailed") => KmsCode::StateChangeRefused,
            Some("AliasAlreadyExists" | "AlreadyExistsException") => KmsCode::AliasExists,
            _ => match self.kind {
                KmsErrorKind::NotFound => KmsCode::KeyNotFound,
                KmsErrorKind::Disabled => KmsCode::KeyDisabled,
                _ => KmsCode::Other,
            },
        }
    }

    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }

    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into());
        self
    }

    pub fn with_request_id(mut self, id: impl Into<String>) -> Self {
        self.request_id = Some(id.into());
        self
    }

    pub fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }
}

impl fmt::Display for KmsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(code) = &self.code {
            write!(f, "{code}: ")?;
        }
        write!(f, "{}", self.message)?;
        if let Some(status) = self.status {
            write!(f, " (HTTP {status})")?;
        }
        if let Some(id) = &self.request_id {
            write!(f, " [RequestId {id}]")?;
        }
        if let Some(ep) = &self.endpoint {
            write!(f, " at {ep}")?;
        }
        Ok(())
    }
}

impl std::error::Error for KmsError {}
