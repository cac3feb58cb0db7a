//! Opening a finished vault with its keys: the common first step of `decrypt`,
//! `verify --deep` and `ls` of concealed names; opening vault files safely; and listing its
//! object files.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use crate::crypto::BatchKey;
use crate::error::{Error, IoContext, Result};
use crate::format::layout;
use crate::keys::Kms;
use crate::manifest::ManifestReader;

/// Opens a vault file for reading, refusing anything but a regular file before reading a
/// byte: a FIFO planted in a vault must not hang the reader, nor a device feed it forever.
pub fn open_regular(path: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                Error::integrity(path.display().to_string(), "a symlink, not a regular file")
            } else {
                Error::io(path, e)
            }
        })?;
    check_regular(&f, path)?;
    Ok(f)
}

/// Refuses an open file that is not a regular file (exit 3: a vault holds none).
pub fn check_regular(f: &File, path: &Path) -> Result<()> {
    let md = f.metadata().at(path)?;
    if !md.is_file() {
        return Err(Error::integrity(
            path.display().to_string(),
            "not a regular file (a FIFO, device or directory in place of a vault file)",
        ));
    }
    Ok(())
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
pub fn unlock(vault: &Path, kms: &Kms) -> Result<Unlocked> {
    let mut reader = ManifestReader::open(vault)?;
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
