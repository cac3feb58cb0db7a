//! Opening a finished vault: its manifest (with the hint a reader needs when there is
//! none) and, with its keys, the common first step of `decrypt`, `verify --deep` and `ls` of
//! concealed names.

use crate::crypto::BatchKey;
use crate::error::{Error, Result};
use crate::format::layout;
use crate::keys::Kms;
use crate::manifest::{ManifestReader, NOT_A_VAULT};
use crate::store::Store;

/// Opens the vault's manifest; without one, says why: an unfinished run (and the command
/// that finishes it), no vault at all, or a lost manifest.
pub fn open_manifest(store: &dyn Store) -> Result<ManifestReader> {
    if let Some(r) = store.reader(layout::MANIFEST)? {
        return ManifestReader::from_reader(r, store.describe(layout::MANIFEST));
    }
    let hint = if store.len(layout::JOURNAL).ok().flatten().is_some() {
        crate::journal::resume_hint(store)
    } else if !store.root_exists()? {
        "no such directory".into()
    } else {
        NOT_A_VAULT.into()
    };
    Err(Error::format(store.url(), hint))
}

/// A vault opened with its keys: the manifest reader positioned at its first entry (with
/// concealed names revealed from there on) and every batch key unwrapped. Nothing it yields
/// is authenticated until [`Unlocked::authenticate`] succeeds after the last entry.
pub struct Unlocked {
    pub reader: ManifestReader,
    /// `keys[i]` is the key of batch `i`.
    pub keys: Vec<BatchKey>,
}

/// Opens the manifest and unwraps every batch key (one KMS `Decrypt` each, checked against
/// the batch's commitment and encryption context).
pub fn unlock(store: &dyn Store, kms: &Kms) -> Result<Unlocked> {
    let mut reader = open_manifest(store)?;
    let mut keys = Vec::with_capacity(reader.batches.len());
    for b in &reader.batches {
        keys.push(kms.unwrap(&reader.header.vault_id, b)?);
    }
    // Batch 0's name key reveals concealed names and, in every vault, opens each entry's
    // extended attributes as it is read, so that every reader refuses a bad list alike.
    if let Some(k) = keys.first() {
        reader.set_name_key(k.name_key());
    }
    Ok(Unlocked { reader, keys })
}

impl Unlocked {
    /// Checks the manifest's MAC with every batch key; call after the last entry was read.
    pub fn authenticate(&self) -> Result<()> {
        for (i, k) in self.keys.iter().enumerate() {
            self.reader.authenticate(i, k)?;
        }
        Ok(())
    }
}
