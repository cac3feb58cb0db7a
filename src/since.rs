//! `encrypt --since <EARLIER_VAULT>`: an incremental run that pays only for what changed.
//!
//! A file is unchanged when its type, size, mtime, device, inode and ctime equal what the
//! earlier vault's entry recorded (the entry's `src`, docs/FORMAT.md §6.1) — the rule restic
//! uses. Its record is not read, decrypted or sealed again: the new vault takes over the
//! earlier vault's identity (vault id), its batches (ids, commitments, wrappings) and its
//! objects (hard-linked into the new vault, or copied where a link is impossible), and the
//! entry points at the same record. Changed and new files are sealed under a new batch; files
//! gone from the tree are simply not listed, and objects no entry names are dropped when the
//! run finishes. The new vault is complete by itself: it reads nothing of the earlier one.

use std::collections::HashMap;
use std::sync::Arc;

use crate::crypto::BatchKey;
use crate::error::{Error, Result};
use crate::format::ID_LEN;
use crate::journal::{Journal, SourceId};
use crate::keys::Kms;
use crate::manifest::{self, Batch, Entry, ObjectRef};
use crate::store::Store;
use crate::vault;

/// What an incremental run takes from the earlier vault.
pub struct Earlier {
    pub store: Arc<dyn Store>,
    pub vault_id: [u8; ID_LEN],
    pub segment_size: u32,
    pub batches: Vec<Batch>,
    pub keys: Vec<Arc<BatchKey>>,
    pub objects: Vec<ObjectRef>,
    /// Files with their recorded source identity, by clear path.
    pub files: HashMap<Vec<u8>, (Entry, SourceId)>,
}

impl Earlier {
    /// Opens the earlier vault with its keys (one `Decrypt` per batch) and reads and
    /// authenticates its manifest.
    pub fn load(store: Arc<dyn Store>, kms: &Kms) -> Result<Earlier> {
        let mut u = vault::unlock(&*store, kms)?;
        let mut files = HashMap::new();
        while let Some(e) = u.reader.next_entry()? {
            let (Some(src), Some(p)) = (u.reader.last_src(), e.path.clear()) else {
                continue;
            };
            if e.file().is_some() {
                files.insert(p.to_vec(), (e, src));
            }
        }
        u.authenticate()?;
        Ok(Earlier {
            store,
            vault_id: u.reader.header.vault_id,
            segment_size: u.reader.header.segment_size,
            batches: u.reader.batches.clone(),
            keys: u.keys.into_iter().map(Arc::new).collect(),
            objects: u.reader.objects.clone(),
            files,
        })
    }

    /// Puts the earlier batches and objects into a new run's vault and journal, as batches
    /// `0..B` and objects `0..O` (the indices the earlier entries use): key files, journal
    /// batch records, objects linked (or copied), synced, then listed in the journal.
    pub fn inherit(&self, vault: &dyn Store, journal: &mut Journal) -> Result<()> {
        for (i, (b, k)) in self.batches.iter().zip(&self.keys).enumerate() {
            manifest::write_key_file(vault, &self.vault_id, b)?;
            journal.append_batch(i as u32, b)?;
            if i == 0 {
                journal.set_mac_key(k.journal_mac_key());
            }
        }
        // What a failure (a full disk while copying) must not leave behind: no journal
        // names these objects yet, and the run's own tidying (an unstarted run removes its
        // key files and journal, then an empty `objects/`) must find the vault as it was,
        // so that the same command starts over once space is freed.
        let mut made: Vec<String> = Vec::new();
        let linked = (|| -> Result<Vec<u8>> {
            let mut lines = Vec::new();
            for (i, o) in self.objects.iter().enumerate() {
                self.link_object(vault, o)?;
                made.push(o.name());
                lines.extend(journal.object_line(i as u64, &o.id)?);
            }
            // The objects (copies) and their names are durable before the journal names them.
            vault.barrier()?;
            Ok(lines)
        })();
        match linked {
            Ok(lines) => journal.write_synced(&lines),
            Err(e) => {
                for n in made.iter().rev() {
                    let _ = vault.remove(n);
                }
                vault.remove_empty(false);
                Err(e)
            }
        }
    }
}

impl Earlier {
    /// Puts an earlier object into the new vault: hard-linked (objects are never modified
    /// once written) or copied by the storage service where it can, else copied through
    /// this process; a copy cut short never holds the object's name. Its length is checked
    /// first.
    fn link_object(&self, to: &dyn Store, o: &ObjectRef) -> Result<()> {
        crate::object::open_object_file(&*self.store, o).map_err(|e| {
            Error::Runtime(format!(
                "the earlier vault {}: {e:?}; run `envseal verify` on it",
                self.store.url()
            ))
        })?;
        crate::store::copy(&*self.store, to, &o.name())
    }
}
