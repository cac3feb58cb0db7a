//! What a killed run can leave in a vault besides its journal, and how a rerun tidies it:
//! temporary files of atomic writes, key files of batches the journal never recorded (a kill
//! between writing a key file and journaling it), objects no committed entry names, and what
//! an `import-legacy -o` killed before its manifest leaves.
//! Every removal here is of a name the vault format owns; nothing is followed through a link.

use std::collections::HashSet;

use crate::error::Result;
use crate::format::manifest::Batch;
use crate::format::{layout, ID_LEN};
use crate::store::{Listed, Store};

/// A root name that only an unfinished write leaves: the store's scratch name of the
/// journal, the manifest or a key file (never of a name the format does not own), and the
/// manifest a killed `rewrap` staged.
fn is_temp(store: &dyn Store, name: &str) -> bool {
    let scratch_of = |real: &str| store.scratch_name(real).as_deref() == Some(name);
    let key_file = || {
        let id = name
            .strip_prefix(layout::KEYS_PREFIX)
            .and_then(|r| r.split('.').next())
            .unwrap_or_default();
        let real = format!("{}{id}{}", layout::KEYS_PREFIX, layout::KEYS_SUFFIX);
        key_file_id(&real).is_some() && scratch_of(&real)
    };
    name == layout::MANIFEST_STAGED
        || [layout::JOURNAL, layout::MANIFEST, layout::MANIFEST_STAGED]
            .into_iter()
            .any(scratch_of)
        || key_file()
}

/// The batch id of a key file's name, if it is one.
fn key_file_id(name: &str) -> Option<&str> {
    let id = name
        .strip_prefix(layout::KEYS_PREFIX)?
        .strip_suffix(layout::KEYS_SUFFIX)?;
    (id.len() == 2 * ID_LEN && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

/// The names at the vault's root (not in `objects/`).
fn root_names(store: &dyn Store) -> Result<Vec<Listed>> {
    Ok(store
        .list("")?
        .into_iter()
        .filter(|l| !l.name.contains('/'))
        .collect())
}

/// Removes, from the vault root, temporary files and key files of batches not in `batches`.
pub fn sweep_root(store: &dyn Store, batches: &[Batch]) -> Result<()> {
    let keep: HashSet<String> = batches.iter().map(|b| b.id_hex()).collect();
    for l in root_names(store)? {
        let stray =
            is_temp(store, &l.name) || key_file_id(&l.name).is_some_and(|id| !keep.contains(id));
        if stray && l.file {
            store.remove(&l.name)?;
        }
    }
    Ok(())
}

/// Whether a vault holds only what a run that never journaled a batch can leave:
/// temporary files, key files (of no journaled batch: there is no journal), no objects, and
/// an empty journal (left by versions that created it in place). Such a run wrote no
/// ciphertext, so a new run may start there after [`clear_unstarted`]. `listed` is the
/// vault's whole listing.
pub fn only_unstarted(store: &dyn Store, listed: &[Listed]) -> bool {
    listed.iter().all(|l| {
        if l.name.contains('/') {
            false
        } else if l.name == layout::JOURNAL {
            l.file && l.len == 0
        } else {
            l.file && (is_temp(store, &l.name) || key_file_id(&l.name).is_some())
        }
    })
}

/// Removes what [`only_unstarted`] accepted (key files first, the journal last).
pub fn clear_unstarted(store: &dyn Store) -> Result<()> {
    sweep_root(store, &[])?;
    store.remove(layout::JOURNAL)
}

/// Whether a vault holds only what an `import-legacy -o` killed before its manifest
/// leaves: at least one key file, temporary files, and object files in their fan-out
/// directories; no journal (an `encrypt` run has one from its start) and no manifest. No
/// manifest will ever name those objects, so the import may start over after
/// [`clear_unfinished_import`].
pub fn unfinished_import(store: &dyn Store) -> Result<bool> {
    let mut keys = 0;
    for l in store.list("")? {
        let ok = if let Some(obj) = l.name.strip_prefix(layout::OBJECTS_PREFIX) {
            l.file && is_object_name(obj)
        } else if l.file && key_file_id(&l.name).is_some() {
            keys += 1;
            true
        } else {
            l.file
                && is_temp(store, &l.name)
                && store.scratch_name(layout::JOURNAL).as_deref() != Some(&l.name)
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(keys > 0)
}

/// Whether `name` (below `objects/`) is `ab/ab…`: 32 lowercase hex digits in the fan-out
/// directory of their first two.
fn is_object_name(name: &str) -> bool {
    let hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    };
    match name.split_once('/') {
        Some((fan, n)) => {
            fan.len() == 2 && hex(fan) && n.len() == 2 * ID_LEN && hex(n) && n.starts_with(fan)
        }
        None => false,
    }
}

/// Removes what [`unfinished_import`] accepted: the objects, then the key files.
pub fn clear_unfinished_import(store: &dyn Store) -> Result<()> {
    for l in store.list(layout::OBJECTS_PREFIX)? {
        store.remove(&l.name)?;
    }
    sweep_root(store, &[])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::local::LocalStore;

    /// A rerun removes the scratch files of the format's own names and stray key files, and
    /// nothing else a user may have put there.
    #[test]
    fn the_sweep_removes_only_what_the_format_owns() {
        let t = tempfile::tempdir().unwrap();
        let store = LocalStore::new(t.path());
        let id = "ab".repeat(ID_LEN);
        let stray = [
            "journal.tmp".to_string(),
            "manifest.tmp".to_string(),
            layout::MANIFEST_STAGED.to_string(),
            format!("{}{id}.tmp", layout::KEYS_PREFIX),
            format!("{}{id}{}", layout::KEYS_PREFIX, layout::KEYS_SUFFIX),
        ];
        let kept = ["notes.tmp", "keys-notes.tmp", "README"];
        for n in stray.iter().map(String::as_str).chain(kept) {
            std::fs::write(t.path().join(n), b"x").unwrap();
        }
        sweep_root(&store, &[]).unwrap();
        let mut left: Vec<String> = root_names(&store)
            .unwrap()
            .into_iter()
            .map(|l| l.name)
            .collect();
        left.sort();
        assert_eq!(left, ["README", "keys-notes.tmp", "notes.tmp"]);
    }
}
