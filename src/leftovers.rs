//! What a killed run can leave in a vault besides its journal, and how a rerun tidies it:
//! temporary files of atomic writes, key files of batches the journal never recorded (a kill
//! between writing a key file and journaling it), objects no committed entry names, and what
//! an `import-legacy -o` killed before its manifest leaves.
//! Every removal here is of a name the vault format owns; nothing is followed through a link.

use std::collections::HashSet;
use std::fs;
use std::path::Path;

use crate::error::{Error, IoContext, Result};
use crate::format::{layout, ID_LEN};
use crate::manifest::Batch;

/// Temporary names of the vault root's atomic writes (`<name>.tmp`, then renamed).
fn is_temp(name: &str) -> bool {
    name == crate::journal::TMP
        || name == "manifest.tmp"
        || (name.starts_with(layout::KEYS_PREFIX) && name.ends_with(".tmp"))
}

/// The batch id of a key file's name, if it is one.
fn key_file_id(name: &str) -> Option<&str> {
    let id = name
        .strip_prefix(layout::KEYS_PREFIX)?
        .strip_suffix(layout::KEYS_SUFFIX)?;
    (id.len() == 2 * ID_LEN && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

/// Removes, from the vault root, temporary files and key files of batches not in `batches`.
pub fn sweep_root(vault: &Path, batches: &[Batch]) -> Result<()> {
    let keep: HashSet<String> = batches.iter().map(|b| b.id_hex()).collect();
    for d in fs::read_dir(vault).at(vault)? {
        let d = d.at(vault)?;
        let name = d.file_name();
        let Some(name) = name.to_str() else { continue };
        let stray = is_temp(name) || key_file_id(name).is_some_and(|id| !keep.contains(id));
        if stray && !d.file_type().at(d.path())?.is_dir() {
            let p = d.path();
            fs::remove_file(&p).at(&p)?;
        }
    }
    Ok(())
}

/// Whether a directory holds only what a run that never journaled a batch can leave:
/// temporary files, key files (of no journaled batch: there is no journal), an empty
/// `objects/`, and an empty journal (left by versions that created it in place). Such a run
/// wrote no ciphertext, so a new run may start there after [`clear_unstarted`].
pub fn only_unstarted(vault: &Path) -> Result<bool> {
    for d in fs::read_dir(vault).at(vault)? {
        let d = d.at(vault)?;
        let name = d.file_name();
        let Some(name) = name.to_str() else {
            return Ok(false);
        };
        let ft = d.file_type().at(d.path())?;
        let ok = if name == layout::OBJECTS_DIR {
            ft.is_dir() && fs::read_dir(d.path()).at(d.path())?.next().is_none()
        } else if name == layout::JOURNAL {
            ft.is_file() && d.metadata().at(d.path())?.len() == 0
        } else {
            ft.is_file() && (is_temp(name) || key_file_id(name).is_some())
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Removes what [`only_unstarted`] accepted (key files first, the journal last).
pub fn clear_unstarted(vault: &Path) -> Result<()> {
    sweep_root(vault, &[])?;
    let j = vault.join(layout::JOURNAL);
    match fs::remove_file(&j) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io(&j, e)),
        _ => {}
    }
    let o = vault.join(layout::OBJECTS_DIR);
    match fs::remove_dir(&o) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(&o, e)),
        _ => Ok(()),
    }
}

/// Whether a directory holds only what an `import-legacy -o` killed before its manifest
/// leaves: at least one key file, temporary files, and `objects/` with object files in
/// their fan-out directories; no journal (an `encrypt` run has one from its start) and no
/// manifest. No manifest will ever name those objects, so the import may start over after
/// [`clear_unfinished_import`].
pub fn unfinished_import(vault: &Path) -> Result<bool> {
    let mut keys = 0;
    for d in fs::read_dir(vault).at(vault)? {
        let d = d.at(vault)?;
        let name = d.file_name();
        let Some(name) = name.to_str() else {
            return Ok(false);
        };
        let ft = d.file_type().at(d.path())?;
        if name == layout::OBJECTS_DIR && ft.is_dir() {
            if !only_object_files(&d.path())? {
                return Ok(false);
            }
        } else if ft.is_file() && key_file_id(name).is_some() {
            keys += 1;
        } else if !(ft.is_file() && is_temp(name) && name != crate::journal::TMP) {
            return Ok(false);
        }
    }
    Ok(keys > 0)
}

/// Whether `objects` holds only fan-out directories of object files (`ab/ab…`, 32 hex
/// digits), none of them a link.
fn only_object_files(objects: &Path) -> Result<bool> {
    let hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    };
    for sub in fs::read_dir(objects).at(objects)? {
        let sub = sub.at(objects)?;
        let name = sub.file_name();
        let Some(fan) = name.to_str() else {
            return Ok(false);
        };
        if fan.len() != 2 || !hex(fan) || !sub.file_type().at(sub.path())?.is_dir() {
            return Ok(false);
        }
        let dir = sub.path();
        for obj in fs::read_dir(&dir).at(&dir)? {
            let obj = obj.at(&dir)?;
            let name = obj.file_name();
            let ok = name
                .to_str()
                .is_some_and(|n| n.len() == 2 * ID_LEN && hex(n) && n.starts_with(fan))
                && obj.file_type().at(obj.path())?.is_file();
            if !ok {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// Removes what [`unfinished_import`] accepted: the objects, then the key files.
pub fn clear_unfinished_import(vault: &Path) -> Result<()> {
    let objects = vault.join(layout::OBJECTS_DIR);
    if objects.is_dir() {
        for sub in fs::read_dir(&objects).at(&objects)? {
            let dir = sub.at(&objects)?.path();
            for obj in fs::read_dir(&dir).at(&dir)? {
                let p = obj.at(&dir)?.path();
                fs::remove_file(&p).at(&p)?;
            }
            fs::remove_dir(&dir).at(&dir)?;
        }
        fs::remove_dir(&objects).at(&objects)?;
    }
    sweep_root(vault, &[])
}
