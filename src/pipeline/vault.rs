//! Opening a finished vault: its manifest (with the hint a reader needs when there is
//! none) and, with its keys, the common first step of `decrypt`, `verify --deep` and `ls` of
//! concealed names.

use crate::crypto::BatchKey;
use crate::error::{Error, Result};
use crate::format::manifest::{
    key_file_bytes, Batch, Entry, Header, ManifestReader, ManifestWriter,
};
use crate::format::{layout, ID_LEN};
use crate::kms::keys::Kms;
use crate::store::{NewFile, Store};

/// Why a store without a manifest is not a vault.
pub const NOT_A_VAULT: &str = "not an envseal vault (no manifest.jsonl)";

/// A new manifest of `store` under `name` (`manifest.jsonl`; a rewrap's staged one), not
/// visible under its name before [`publish_manifest`].
pub fn manifest_writer(
    store: &dyn Store,
    name: &str,
    h: &Header,
) -> Result<ManifestWriter<Box<dyn NewFile>>> {
    ManifestWriter::new(store.create_file(name)?, store.describe(name), h)
}

/// Ends a manifest (its end record, one MAC per batch: `keys[i]` is batch i's key) and
/// makes it durable under its name; `replace` = over one that is there (a rewrap's staged
/// one), else one already there is an error (a finished vault is never overwritten).
pub fn publish_manifest(
    m: ManifestWriter<Box<dyn NewFile>>,
    keys: &[&BatchKey],
    replace: bool,
    store: &dyn Store,
) -> Result<()> {
    if !m.finish(keys)?.commit(replace)? {
        return Err(Error::Runtime(format!(
            "{}: another run finished this vault first; nothing was overwritten",
            store.url()
        )));
    }
    Ok(())
}

/// Reads the manifest `name` of `store` (no hints: [`open_manifest`] gives them).
pub fn read_manifest(store: &dyn Store, name: &str) -> Result<ManifestReader> {
    manifest_if_present(store, name)?.ok_or_else(|| Error::format(store.url(), NOT_A_VAULT))
}

fn manifest_if_present(store: &dyn Store, name: &str) -> Result<Option<ManifestReader>> {
    store
        .reader(name)?
        .map(|r| ManifestReader::from_reader(r, store.describe(name)))
        .transpose()
}

/// Writes a batch's key file atomically, replacing an older one (a rewrap's).
pub fn write_key_file(store: &dyn Store, vault_id: &[u8; ID_LEN], batch: &Batch) -> Result<()> {
    store.replace(&batch.keys_file(), &key_file_bytes(vault_id, batch)?)
}

/// Opens the vault's manifest; without one, says why: an unfinished run (and the command
/// that finishes it), no vault at all, or a lost manifest.
pub fn open_manifest(store: &dyn Store) -> Result<ManifestReader> {
    if let Some(m) = manifest_if_present(store, layout::MANIFEST)? {
        return Ok(m);
    }
    let hint = if store.len(layout::JOURNAL).ok().flatten().is_some() {
        crate::pipeline::journal::resume_hint(store)
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

/// [`unlock`], then every entry read and the whole manifest authenticated (concealed names
/// revealed and checked in tree order): for readers that show or write nothing before the
/// manifest is known good (`decrypt`, `mount`). Holds every entry.
pub fn unlock_whole(store: &dyn Store, kms: &Kms) -> Result<(Unlocked, Vec<Entry>)> {
    let mut unlocked = unlock(store, kms)?;
    // The entries are checked as they are read (tree order: every parent is a directory
    // listed before its children, no path twice).
    let mut entries = Vec::new();
    while let Some(e) = unlocked.reader.next_entry()? {
        entries.push(e);
    }
    unlocked.authenticate()?;
    if unlocked.reader.header.conceal_names {
        crate::format::manifest::check_tree(&mut entries)?;
    }
    Ok((unlocked, entries))
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
