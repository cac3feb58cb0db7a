//! envseal: envelope encryption of whole directory trees and disk images.
//!
//! The pipeline of an `encrypt` run:
//!
//! ```text
//! walk (sources -> entries) -> plan (entries + journal -> batches, objects)
//!   -> KMS GenerateDataKey once per batch -> key file + journal (before any ciphertext)
//!   -> rayon: per file, per segment: seal (AES-256-GCM) + BLAKE3 digests, written at offsets
//!   -> journal "done" records (after sync) -> manifest (authenticated) -> journal removed
//! ```
//!
//! `decrypt` and `verify --deep` walk the same path backwards; keyless `verify` only hashes
//! objects. The byte formats are specified in `docs/FORMAT.md`; their constants live in
//! [`format`](mod@format).

pub mod bench;
pub mod crypto;
pub mod decrypt;
pub mod encrypt;
pub mod error;
pub mod format;
pub mod journal;
pub mod keys;
pub mod kms;
pub mod manifest;
pub mod object;
pub mod progress;
pub mod source;
pub mod vault;
pub mod verify;
pub mod walk;

pub use error::{Error, Result};
