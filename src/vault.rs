//! Opening a finished vault with its keys: the common first step of `decrypt`,
//! `verify --deep` and `ls` of concealed names.

use std::path::Path;

use crate::crypto::BatchKey;
use crate::error::Result;
use crate::keys::Kms;
use crate::manifest::Manifest;

/// A vault whose manifest is authenticated and whose batch keys are unwrapped.
pub struct Unlocked {
    pub manifest: Manifest,
    /// `keys[i]` is the key of `manifest.batches[i]`.
    pub keys: Vec<BatchKey>,
}

/// Reads the manifest, unwraps every batch key (one KMS `Decrypt` each), authenticates the
/// manifest with each of them, and reveals concealed names. The file is read once: the bytes
/// parsed are the bytes authenticated, even if the file changes meanwhile.
pub fn unlock(vault: &Path, kms: &Kms) -> Result<Unlocked> {
    let data = Manifest::read_bytes(vault)?;
    let mut manifest = Manifest::parse(&data[..], vault)?;
    let mut keys = Vec::with_capacity(manifest.batches.len());
    for b in &manifest.batches {
        let k = kms.unwrap(&manifest.vault_id, b)?;
        Manifest::authenticate_bytes(&data, vault, b, &k)?;
        keys.push(k);
    }
    if let Some(k) = keys.first() {
        manifest.reveal_names(k)?;
    }
    Ok(Unlocked { manifest, keys })
}
