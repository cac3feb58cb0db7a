//! Opening a finished vault with its keys: the common first step of `decrypt`,
//! `verify --deep` and `ls` of concealed names; and listing its object files.

use std::fs;
use std::path::{Path, PathBuf};

use crate::crypto::BatchKey;
use crate::error::{Error, IoContext, Result};
use crate::format::layout;
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

/// What `objects/` holds, as vault-relative paths, read without following links (a link
/// planted there must not make the encrypt sweep delete, or verify list, files elsewhere):
/// every entry of each fan-out directory, and every entry of `objects/` that is not a real
/// directory. No `objects/` is an empty list; an `objects/` that is a link is an error.
pub fn object_files(vault: &Path) -> Result<Vec<PathBuf>> {
    let objects = vault.join(layout::OBJECTS_DIR);
    match fs::symlink_metadata(&objects) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(&objects, e)),
        Ok(md) if !md.is_dir() => {
            return Err(Error::Runtime(format!(
                "{} is not a directory (a symlink?)",
                objects.display()
            )))
        }
        Ok(_) => {}
    }
    let mut out = Vec::new();
    for sub in fs::read_dir(&objects).at(&objects)? {
        let sub = sub.at(&objects)?;
        let rel = Path::new(layout::OBJECTS_DIR).join(sub.file_name());
        if !sub.file_type().at(sub.path())?.is_dir() {
            out.push(rel);
            continue;
        }
        let dir = sub.path();
        for obj in fs::read_dir(&dir).at(&dir)? {
            out.push(rel.join(obj.at(&dir)?.file_name()));
        }
    }
    Ok(out)
}
