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

pub mod aead;
pub mod bench;
pub mod crypto;
pub mod decrypt;
pub mod device;
pub mod durable;
pub mod encrypt;
pub mod error;
pub mod format;
pub mod fs;
pub mod journal;
pub mod keys;
pub mod keyspec;
pub mod kms;
pub mod leftovers;
pub mod legacy;
pub mod limits;
pub mod manifest;
pub mod object;
pub mod owner;
pub mod progress;
pub mod retry;
pub mod rewrap;
pub mod seal;
pub mod sigv4;
pub mod since;
pub mod source;
pub mod sparse;
pub mod store;
pub mod vault;
pub mod verify;
pub mod verify_source;
pub mod walk;
pub mod write;

pub use error::{Error, Result};
