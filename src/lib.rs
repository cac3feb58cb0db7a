//! envseal: envelope encryption of whole directory trees and disk images.
//!
//! The pipeline of an `encrypt` run:
//!
//! ```text
//! walk thread (tree order) -> planner (batches, chunks of small files, windows of large
//!   files, resume) -> KMS GenerateDataKey once per batch -> rayon jobs: seal (AES-256-GCM)
//!   + BLAKE3 digests -> one vault writer: key file + journal record before any ciphertext,
//!   packs and objects, group commits (syncfs, then journal "done" records), then the
//!   manifest streamed from the journal, authenticated -> journal removed
//! ```
//!
//! `decrypt` and `verify --deep` walk the same path backwards; keyless `verify` only hashes
//! objects. The byte formats are specified in `docs/FORMAT.md`; their constants live in
//! [`format`](mod@format).

pub mod bench;
pub mod crypto;
pub mod error;
pub mod format;
pub mod fs;
pub mod kms;
pub mod limits;
pub mod mount;
pub mod pipeline;
pub mod progress;
pub mod retry;
pub mod sigv4;
pub mod store;

pub use error::{Error, Result};
