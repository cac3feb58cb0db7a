//! Progress reporting as a trait, so library code never touches a terminal.
//!
//! The binary implements it with indicatif bars; tests and library users take [`NoProgress`].
//! Calls come from worker threads, hence `Sync`, and must be cheap.

/// Receives progress events from a run.
pub trait Progress: Sync {
    /// Whether this display shows totals (a percentage, an ETA). Then `encrypt` counts its
    /// sources in a metadata-only walk of their own, ahead of the work, so the totals are
    /// known early (the walk that feeds the work is held back by it: its totals would come
    /// at the end). `false` (the default) spares that walk.
    fn wants_totals(&self) -> bool {
        false
    }
    /// Walking: `files` files and `bytes` found so far (each inode once).
    fn walking(&self, _files: u64, _bytes: u64) {}
    /// The work is known: this many files and bytes will be processed.
    fn start(&self, _files: u64, _bytes: u64) {}
    /// `bytes` more plaintext bytes were processed.
    fn bytes(&self, _bytes: u64) {}
    /// One more file finished (successfully or not).
    fn file_done(&self) {}
    /// A notice for the user (a skipped file, a retry); shown above the bars.
    fn notice(&self, _msg: &str) {}
    /// The run is over; bars may be cleared.
    fn finish(&self) {}
}

/// Reports nothing.
pub struct NoProgress;

impl Progress for NoProgress {}
