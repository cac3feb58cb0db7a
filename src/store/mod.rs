//! The store: the only code that touches a vault's bytes (docs/ARCHITECTURE.md, "The store").
//!
//! Everything above this module holds a [`Store`] handle, never a vault path. Its operations
//! are what a vault needs, not what a filesystem offers: small files put atomically (never
//! overwriting a finished one unless asked), objects created and written in windows at known
//! offsets, byte ranges read, names listed and removed, an append-only log (the journal), a
//! durability barrier, and the writers' lock. A vault is a flat namespace of `/`-separated,
//! ASCII names relative to its root (`manifest.jsonl`, `keys-<batch>.json`,
//! `objects/<xx>/<id>`; docs/FORMAT.md §2).
//!
//! Implementations: [`local`] (a directory: `O_TMPFILE`, group `syncfs`, `flock`, hard links)
//! and `s3` (S3-compatible object storage: single PUTs, multipart uploads, conditional PUTs).
//! [`open`] is the one place a location maps to an implementation.

pub mod local;
pub mod s3;
pub mod syncer;

use std::fmt;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Arc;

use crate::error::Result;

/// Where a vault lives, parsed once from the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A local directory.
    Local(PathBuf),
    /// A bucket and prefix of S3-compatible object storage (`s3://`, `oss://`).
    S3(s3::S3Url),
}

impl Location {
    /// Parses a `VAULT` argument: `s3://BUCKET/PREFIX`, `oss://BUCKET/PREFIX`, or a path.
    pub fn parse(arg: &std::ffi::OsStr) -> Result<Location> {
        if let Some(url) = arg.to_str().and_then(s3::S3Url::parse) {
            return url.map(Location::S3);
        }
        Ok(Location::Local(PathBuf::from(arg)))
    }

    /// The same location with a local path made absolute (what a journal records, so that
    /// a resume from another working directory names the same place).
    pub fn absolute(&self) -> Result<Location> {
        match self {
            Location::Local(p) => std::path::absolute(p)
                .map(Location::Local)
                .map_err(|e| crate::Error::io(p, e)),
            Location::S3(u) => Ok(Location::S3(u.clone())),
        }
    }

    /// Whether two locations name the same vault (local paths compared with symlinks and
    /// `..` resolved).
    pub fn same_place(&self, other: &Location) -> bool {
        match (self, other) {
            (Location::Local(a), Location::Local(b)) => {
                crate::fs::resolved(a) == crate::fs::resolved(b)
            }
            (Location::S3(a), Location::S3(b)) => a == b,
            _ => false,
        }
    }

    /// The local directory, if this is one (what `--since` hard links and tests need).
    pub fn local_dir(&self) -> Option<&std::path::Path> {
        match self {
            Location::Local(p) => Some(p),
            Location::S3(_) => None,
        }
    }
}

impl Default for Location {
    fn default() -> Self {
        Location::Local(PathBuf::new())
    }
}

impl From<PathBuf> for Location {
    fn from(p: PathBuf) -> Self {
        Location::Local(p)
    }
}

impl From<&std::path::Path> for Location {
    fn from(p: &std::path::Path) -> Self {
        Location::Local(p.to_path_buf())
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Local(p) => write!(f, "{}", p.display()),
            Location::S3(u) => write!(f, "{u}"),
        }
    }
}

/// Opens the store a location names. Nothing is created: a writer calls
/// [`Store::create_root`].
pub fn open(loc: &Location) -> Result<Arc<dyn Store>> {
    match loc {
        Location::Local(p) => Ok(Arc::new(local::LocalStore::new(p))),
        Location::S3(u) => Ok(Arc::new(s3::S3Store::open(u)?)),
    }
}

/// A vault-relative name (`objects/ab/abcd…`), as every operation takes it.
pub type Name<'a> = &'a str;

/// One listed name and its length in bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub name: String,
    pub len: u64,
    /// A regular file (an object); `false` for a link, FIFO, device or directory in a
    /// local vault, which a vault never holds.
    pub file: bool,
}

/// How a store spends durability, which the writer adapts to.
#[derive(Clone, Copy, Debug)]
pub struct Traits {
    /// Bytes written into an object that is not finished survive a [`Store::barrier`]
    /// (a local file does; an S3 object exists only once its upload completes, and a
    /// multipart upload keeps only whole parts). When `false` the writer finishes the
    /// current pack before each commit; a large object's checkpoints count only on
    /// [`ObjectWriter::durable_len`] either way.
    pub durable_partial: bool,
}

/// A vault's storage. Every method names its target in its errors (the vault's path or
/// URL and the name), so that callers add nothing. Methods are safe to call from several
/// threads; writes to one name come from one thread.
pub trait Store: Send + Sync {
    /// The vault's path or URL, as messages name it.
    fn url(&self) -> String;

    /// `name` as messages show it: the path of the file, or the URL of the object.
    fn describe(&self, name: Name) -> String;

    fn traits(&self) -> Traits;

    /// Makes the vault's root ready for writing (a directory with mode 0700; on object
    /// storage, a check that the bucket exists and can be written).
    fn create_root(&self) -> Result<()>;

    /// Whether the vault's root exists at all (a directory; a bucket).
    fn root_exists(&self) -> Result<bool>;

    /// Removes empty directories a failed run created (`objects/` and its fan-outs; the
    /// root too with `root`), so that the same `-o` may be used again as if the run had
    /// never been. Best effort; nothing to do on object storage.
    fn remove_empty(&self, _root: bool) {}

    // ---- reading ----

    /// Length of `name`, `None` when absent. Anything but a regular file (a link, FIFO,
    /// device, directory) is an integrity error: a vault holds none.
    fn len(&self, name: Name) -> Result<Option<u64>>;

    /// The whole of a small file, `None` when absent; longer than `max` is an integrity
    /// error (nothing unbounded is read into memory).
    fn get(&self, name: Name, max: u64) -> Result<Option<Vec<u8>>>;

    /// A sequential reader of `name` (the manifest, the journal), `None` when absent.
    fn reader(&self, name: Name) -> Result<Option<Box<dyn Read + Send>>>;

    /// A random-access reader of `name` (objects), `None` when absent.
    fn open(&self, name: Name) -> Result<Option<Arc<dyn ReadAt>>>;

    /// Every name under `prefix` (a directory-like prefix ending in `/`, or `""` for all),
    /// with lengths; order unspecified. What is not a regular file is listed too (not
    /// [`Listed::file`], length 0) so that a sweep or verify can report it.
    fn list(&self, prefix: &str) -> Result<Vec<Listed>>;

    // ---- writing ----

    /// Puts a small file atomically if `name` is absent; `Ok(false)` (nothing written)
    /// when it is present.
    fn put_new(&self, name: Name, data: &[u8]) -> Result<bool>;

    /// Puts a small file atomically, replacing what is there (readers see the old or the
    /// new bytes, never a mix), durable on return.
    fn replace(&self, name: Name, data: &[u8]) -> Result<()>;

    /// A large file written as a stream and published atomically by
    /// [`NewFile::commit`] (the manifest); nothing is visible under `name` before.
    fn create_file(&self, name: Name) -> Result<Box<dyn NewFile>>;

    /// Removes `name`; absent is fine.
    fn remove(&self, name: Name) -> Result<()>;

    /// The name an unfinished atomic write of `name` may leave behind (a local vault's
    /// `<stem>.tmp`, when a kill came before it was put in place), for a rerun to remove.
    /// S3 has none: its unfinished writes are uploads, not names.
    fn scratch_name(&self, _name: Name) -> Option<String> {
        None
    }

    /// Abandons the unfinished objects under `prefix` whose names are not in `keep` (the
    /// multipart uploads a killed run left, which list as nothing but cost storage); a
    /// local vault has none (its partial objects are files, listed and removed as such).
    fn sweep_uploads(
        &self,
        _prefix: &str,
        _keep: &std::collections::HashSet<String>,
    ) -> Result<()> {
        Ok(())
    }

    /// Puts `from` in place of `to`, atomically (readers of `to` see the old or the new
    /// bytes), durable on return; `from` is gone after (a rename; object storage copies
    /// on the server, then removes `from`).
    fn rename_over(&self, from: Name, to: Name) -> Result<()>;

    /// Creates object `name` (absent before) of exactly `shape.len` bytes, written by
    /// [`ObjectWriter::write_at`] in the pieces `shape` describes.
    fn create_object(&self, name: Name, shape: Shape) -> Result<Box<dyn ObjectWriter>>;

    /// Takes up an object an interrupted run created with the same `shape` (never one
    /// whose length is open without a bound): its first `kept` bytes, durable at an earlier
    /// barrier, are kept and the caller writes the rest again (an object of open length
    /// then ends where the new writes end). `None` when they are not there (the
    /// caller starts the object over).
    fn resume_object(
        &self,
        name: Name,
        shape: Shape,
        kept: u64,
    ) -> Result<Option<Box<dyn ObjectWriter>>>;

    /// Makes every byte written so far durable (every piece of every object, every log
    /// append), before the caller records that it was.
    fn barrier(&self) -> Result<()>;

    /// Copies (or links) `name` from `from`, a store of the same kind, without reading it
    /// through this process where the store can (a hard link; a server-side copy).
    /// `Ok(false)` when it cannot: the caller copies the bytes itself.
    fn link_from(&self, from: &dyn Store, name: Name) -> Result<bool>;

    // ---- the journal ----

    /// Creates the append-only log `name` holding `first` (its first line), if it is
    /// absent: `Ok(None)` when it is present (another run's).
    fn create_log(&self, name: Name, first: &[u8]) -> Result<Option<Box<dyn Log>>>;

    /// Opens the log `name` to append to, with its contents; `None` when absent.
    fn open_log(&self, name: Name) -> Result<Option<OpenedLog>>;

    // ---- one writer at a time ----

    /// Takes the writers' lock (docs/LIFECYCLE.md "One writer at a time"), held until the
    /// guard drops; another holder is [`crate::Error::Locked`]. With `create`, the root is
    /// created first when absent (a new vault); without, an absent root is an error.
    fn lock(&self, create: bool) -> Result<Box<dyn LockGuard>>;

    /// The local directory, where there is one (for diagnostics and `--since` links).
    fn local_dir(&self) -> Option<PathBuf> {
        None
    }
}

/// The pieces an object is written in: `[0, head)` first (a header; may be 0), then pieces
/// of `piece` bytes from `head` on, the last one shorter. Pieces arrive in any order; object
/// storage uploads whole pieces (or runs of them) as the parts of a multipart upload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// The object's length; `None` when it is written in order and its length is known
    /// only at [`ObjectWriter::finish`] (a pack: records appended until it is full).
    pub len: Option<u64>,
    pub head: u64,
    pub piece: u64,
    /// For an object of open length, the most it can hold, when known (a compressed
    /// record: at most its plaintext and the tags). Object storage then streams it as a
    /// multipart upload cut at fixed offsets, as if it were this long, and ends it at its
    /// real length; without a bound the object is kept whole until `finish` (a pack).
    pub bound: Option<u64>,
}

/// Random access to one stored file.
pub trait ReadAt: Send + Sync {
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Fills `buf` from `offset`; a short file is an `UnexpectedEof` error.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

/// An object being written.
pub trait ObjectWriter: Send {
    /// Writes one piece of the object's [`Shape`] (`data` is the whole piece).
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()>;
    /// How many bytes from offset 0 the next [`Store::barrier`] makes durable: a resumed
    /// run keeps them (a checkpoint never claims more). Local files: every piece written
    /// in order so far; object storage: the parts whose uploads completed or are in flight.
    fn durable_len(&self) -> u64;
    /// Every piece was written: makes the object whole under its name (the upload is
    /// completed). Durable after the next barrier.
    fn finish(self: Box<Self>) -> Result<()>;
    /// The object will not be finished: removes what was written (the upload is aborted).
    fn abort(self: Box<Self>) -> Result<()>;
}

/// A file written as a stream and published by [`NewFile::commit`].
pub trait NewFile: io::Write + Send {
    /// Publishes the file under its name, durable on return: replacing what is there when
    /// `replace`, else failing with `Ok(false)` if the name is taken.
    fn commit(self: Box<Self>, replace: bool) -> Result<bool>;
}

/// A log opened to append to, with what it holds.
pub type OpenedLog = (Box<dyn Log>, Vec<u8>);

/// An append-only log (the journal).
pub trait Log: Send {
    /// Appends `bytes`, durable on return.
    fn append(&mut self, bytes: &[u8]) -> Result<()>;
    /// Bytes in the log.
    fn position(&self) -> u64;
    /// Cuts the log back to `len` bytes (a torn tail left by a crash).
    fn truncate(&mut self, len: u64) -> Result<()>;
    /// A reader of the log from byte `from`.
    fn read_from(&self, from: u64) -> Result<Box<dyn Read + Send + '_>>;
}

/// A held writers' lock; dropping it releases the lock.
pub trait LockGuard: Send {}

/// Copies `name` from `from` to `to`: linked or copied by the service where the stores can
/// ([`Store::link_from`]), else read and written through this process in pieces of
/// [`COPY_PIECE`] bytes. A copy cut short is aborted (nothing left under `name`).
pub fn copy(from: &dyn Store, to: &dyn Store, name: Name) -> Result<()> {
    if to.link_from(from, name)? {
        return Ok(());
    }
    let src = from
        .open(name)?
        .ok_or_else(|| crate::Error::Runtime(format!("{}: missing", from.describe(name))))?;
    let len = src.len();
    let shape = Shape {
        len: Some(len),
        head: 0,
        piece: COPY_PIECE,
        bound: None,
    };
    let mut out = to.create_object(name, shape)?;
    let mut buf = vec![0u8; COPY_PIECE.min(len) as usize];
    let mut off = 0;
    while off < len {
        let n = COPY_PIECE.min(len - off) as usize;
        let r = src
            .read_exact_at(&mut buf[..n], off)
            .map_err(|e| crate::Error::io(from.describe(name), e))
            .and_then(|()| out.write_at(off, &buf[..n]));
        if let Err(e) = r {
            let _ = out.abort();
            return Err(e);
        }
        off += n as u64;
    }
    out.finish()
}

/// The pieces [`copy`] reads and writes.
pub const COPY_PIECE: u64 = 8 << 20;

impl serde::Serialize for Location {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}
