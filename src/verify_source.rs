//! `verify --source`: does the vault still hold what the live tree holds, and has the tree
//! rotted? Nothing is decrypted: each source file's keyed plaintext digest (`pt`,
//! docs/FORMAT.md §4.4) is recomputed from the source under the file's `pt_mac_key` (derived
//! from the batch key and the record's header, whose commitment is checked first) and
//! compared with the manifest's. The batch keys cost one KMS `Decrypt` each; the manifest is
//! authenticated before anything is reported.
//!
//! Differences, by path:
//! - `changed`: the content differs and so do the size or the mtime (an edit), or the kind
//!   or link target changed;
//! - `bitrot`: the content differs but size and mtime are the same (silent corruption, or a
//!   writer that put the mtime back);
//! - `metadata`: same content, other mode or mtime;
//! - `missing`: in the vault, not in the tree; `extra`: in the tree, not in the vault (a
//!   missing or extra directory is reported once, not with its contents);
//! - `unreadable`: the source could not be read; `damaged`: the vault's record header does
//!   not match its entry (run `verify` for the vault itself).

use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use rayon::prelude::*;

use crate::crypto::BatchKey;
use crate::error::{Error, Result};
use crate::format::{ObjectHeader, HEADER_LEN};
use crate::keys::Kms;
use crate::manifest::{self, Entry, EntryKind, FileEntry};
use crate::object::RecordCtx;
use crate::sparse::Held;
use crate::vault;
use crate::walk::{self, Found, SourceEntry, SourceKind};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum DiffKind {
    Changed,
    Bitrot,
    Metadata,
    Missing,
    Extra,
    Unreadable,
    Damaged,
}

impl DiffKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DiffKind::Changed => "changed",
            DiffKind::Bitrot => "bitrot",
            DiffKind::Metadata => "metadata",
            DiffKind::Missing => "missing",
            DiffKind::Extra => "extra",
            DiffKind::Unreadable => "unreadable",
            DiffKind::Damaged => "damaged",
        }
    }
}

/// One difference, by vault path (`base/rel/...`, as `ls` shows it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diff {
    pub path: String,
    pub kind: DiffKind,
    pub detail: String,
}

#[derive(Clone, Debug)]
pub struct SourceOptions {
    /// The trees to compare, as they were given to `encrypt` (each matched to the vault's
    /// top-level entry of its base name).
    pub sources: Vec<PathBuf>,
    /// Paths the encrypt run excluded (same globs as `encrypt --exclude`).
    pub excludes: Vec<String>,
    pub jobs: usize,
}

#[derive(Clone, Debug, Default)]
pub struct SourceReport {
    /// Entries compared (files, directories, links) and file bytes hashed.
    pub entries: u64,
    pub bytes_hashed: u64,
    /// Sorted by path.
    pub diffs: Vec<Diff>,
    pub seconds: f64,
}

/// A source file whose size matches its entry: its digest decides.
struct HashJob {
    path: String,
    file: FileEntry,
    /// Where the file is read, and the inode the walk saw there (device, inode).
    source: crate::fs::walk::Place,
    inode: (u64, u64),
    same_mtime: bool,
    same_mode: bool,
}

/// Compares a vault with the live trees it was made from (see the module documentation).
pub fn verify_source(
    store: &dyn crate::store::Store,
    opts: &SourceOptions,
    kms: &Kms,
    cancel: &AtomicBool,
) -> Result<SourceReport> {
    let started = Instant::now();
    let sources: Vec<PathBuf> = opts
        .sources
        .iter()
        .map(|s| std::path::absolute(s).map_err(|e| Error::io(s, e)))
        .collect::<Result<_>>()?;
    let tops: Vec<Vec<u8>> = walk::order_sources(&sources)?
        .into_iter()
        .map(|(base, _)| base)
        .collect();
    let exclude = walk::excludes(&opts.excludes)?;

    // The vault's entries under the compared tops, authenticated.
    let mut u = vault::unlock(store, kms)?;
    let mut entries: Vec<Entry> = Vec::new();
    while let Some(e) = u.reader.next_entry()? {
        entries.push(e);
    }
    u.authenticate()?;
    if u.reader.header.conceal_names {
        manifest::check_tree(&mut entries)?;
    }
    let top_of = |p: &[u8]| -> Vec<u8> { p.split(|&b| b == b'/').next().unwrap_or(p).to_vec() };
    let mut in_vault: HashMap<Vec<u8>, Entry> = entries
        .into_iter()
        .filter_map(|e| {
            let p = e.path.clear()?.to_vec();
            tops.contains(&top_of(&p)).then_some((p, e))
        })
        .collect();

    let mut diffs = Vec::new();
    let mut jobs = Vec::new();
    let mut compared = 0u64;
    let mut extra_dir: Option<Vec<u8>> = None;
    let show = |p: &[u8]| String::from_utf8_lossy(p).into_owned();
    walk::walk_each(&sources, &exclude, false, |found| {
        if cancel.load(Ordering::Relaxed) {
            return false;
        }
        let s = match found {
            Found::Entry(s) => s,
            Found::Skipped(sk) => {
                // Special files are never stored; unreadable paths are a difference.
                if sk.error {
                    diffs.push(Diff {
                        path: sk.path.display().to_string(),
                        kind: DiffKind::Unreadable,
                        detail: sk.why,
                    });
                }
                return true;
            }
        };
        if let Some(d) = &extra_dir {
            if s.path.starts_with(d) && s.path.get(d.len()) == Some(&b'/') {
                return true;
            }
        }
        let Some(e) = in_vault.remove(&s.path) else {
            if s.kind == SourceKind::Dir {
                extra_dir = Some(s.path.clone());
            }
            diffs.push(Diff {
                path: show(&s.path),
                kind: DiffKind::Extra,
                detail: "in the tree, not in the vault".into(),
            });
            return true;
        };
        compared += 1;
        if let Some(d) = compare(&e, &s, &mut jobs) {
            diffs.push(d);
        }
        true
    })?;
    if cancel.load(Ordering::Relaxed) {
        return Err(Error::Interrupted);
    }

    // What the tree no longer has, a missing directory once.
    let mut missing: Vec<(Vec<u8>, bool)> =
        in_vault.into_iter().map(|(p, e)| (p, e.is_dir())).collect();
    missing.sort_by(|a, b| manifest::tree_cmp(&a.0, &b.0));
    let mut gone: Option<Vec<u8>> = None;
    for (p, is_dir) in missing {
        if gone
            .as_ref()
            .is_some_and(|d| p.starts_with(d) && p.get(d.len()) == Some(&b'/'))
        {
            continue;
        }
        if is_dir {
            gone = Some(p.clone());
        }
        diffs.push(Diff {
            path: show(&p),
            kind: DiffKind::Missing,
            detail: "in the vault, not in the tree".into(),
        });
    }

    // The digests, on all cores: one header read per file, then the source read once.
    let header = u.reader.header.clone();
    let ctx = RecordCtx::new(
        store,
        &header,
        &u.reader.batches,
        &u.reader.objects,
        opts.jobs,
    );
    let hashed = AtomicU64::new(0);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.jobs.max(1))
        .build()
        .map_err(|e| Error::Runtime(format!("thread pool: {e}")))?;
    let found: Vec<Diff> = pool.install(|| {
        jobs.par_iter()
            .filter_map(|j| {
                if cancel.load(Ordering::Relaxed) {
                    return None;
                }
                check_digest(&ctx, &u.keys, j, &hashed)
            })
            .collect()
    });
    if cancel.load(Ordering::Relaxed) {
        return Err(Error::Interrupted);
    }
    diffs.extend(found);
    diffs.sort_by(|a, b| (a.path.as_str(), a.kind).cmp(&(b.path.as_str(), b.kind)));
    Ok(SourceReport {
        entries: compared,
        bytes_hashed: hashed.into_inner(),
        diffs,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Compares an entry with its source by metadata; files of the same size become hash jobs.
fn compare(e: &Entry, s: &SourceEntry, jobs: &mut Vec<HashJob>) -> Option<Diff> {
    let path = String::from_utf8_lossy(&s.path).into_owned();
    let diff = |kind, detail: String| {
        Some(Diff {
            path: path.clone(),
            kind,
            detail,
        })
    };
    let same_mode = e.mode == s.mode;
    let same_mtime = (e.mtime, e.mtime_nsec) == (s.mtime, s.mtime_nsec);
    match (&e.kind, &s.kind) {
        (EntryKind::Dir, SourceKind::Dir) => {
            // A directory's mtime moves whenever its contents do: only its mode counts.
            if !same_mode {
                return diff(
                    DiffKind::Metadata,
                    format!("mode {:o}, was {:o}", s.mode, e.mode),
                );
            }
            None
        }
        (EntryKind::Symlink(t), SourceKind::Symlink { target }) => {
            if t.clear() != Some(target.as_slice()) {
                return diff(DiffKind::Changed, "the link points elsewhere".into());
            }
            None
        }
        (EntryKind::File(f), SourceKind::File { size, .. }) => {
            if f.file_len() != *size {
                return diff(
                    DiffKind::Changed,
                    format!("{size} bytes, was {}", f.file_len()),
                );
            }
            jobs.push(HashJob {
                path: path.clone(),
                file: f.clone(),
                source: s.source.clone(),
                inode: (s.dev, s.ino),
                same_mtime,
                same_mode,
            });
            None
        }
        // Another name of a file: its contents are compared at the file it names.
        (EntryKind::HardLink(_), SourceKind::File { .. }) => None,
        (EntryKind::Fifo, SourceKind::Fifo) => None,
        (EntryKind::CharDev(a), SourceKind::CharDev(b))
        | (EntryKind::BlockDev(a), SourceKind::BlockDev(b)) => (a != b).then(|| Diff {
            path: path.clone(),
            kind: DiffKind::Changed,
            detail: format!("device {b:x}, was {a:x}"),
        }),
        (was, now) => diff(
            DiffKind::Changed,
            format!("now a {}, was a {}", kind_name(now), entry_kind_name(was)),
        ),
    }
}

fn kind_name(k: &SourceKind) -> &'static str {
    match k {
        SourceKind::File { .. } => "file",
        SourceKind::Dir => "directory",
        SourceKind::Symlink { .. } => "symlink",
        SourceKind::Fifo => "FIFO",
        SourceKind::CharDev(_) => "character device",
        SourceKind::BlockDev(_) => "block device",
    }
}

fn entry_kind_name(k: &EntryKind) -> &'static str {
    match k {
        EntryKind::File(_) => "file",
        EntryKind::Dir => "directory",
        EntryKind::Symlink(_) => "symlink",
        EntryKind::HardLink(_) => "hard link",
        EntryKind::Fifo => "FIFO",
        EntryKind::CharDev(_) => "character device",
        EntryKind::BlockDev(_) => "block device",
    }
}

/// One file: its record's header (checked against the entry and its commitment), the
/// `pt_mac_key` it yields, the source's keyed digest compared with the entry's `pt`.
fn check_digest(
    ctx: &RecordCtx,
    keys: &[BatchKey],
    j: &HashJob,
    hashed: &AtomicU64,
) -> Option<Diff> {
    let diff = |kind, detail: String| {
        Some(Diff {
            path: j.path.clone(),
            kind,
            detail,
        })
    };
    let f = &j.file;
    let obj = match ctx.object(f.obj) {
        Ok(o) => o,
        Err(e) => return diff(DiffKind::Damaged, format!("{e:?}")),
    };
    let mut hb = [0u8; HEADER_LEN];
    if let Err(e) = obj.read_exact_at(&mut hb, f.off) {
        return diff(DiffKind::Damaged, format!("record header: {e}"));
    }
    let h = match ObjectHeader::decode(&hb) {
        Ok(h) => h,
        Err(e) => return diff(DiffKind::Damaged, format!("record header: {e}")),
    };
    let batch = &ctx.batches[f.batch as usize];
    let key = &keys[f.batch as usize];
    let fk = key.file_keys(&h);
    if h.vault_id != ctx.header.vault_id
        || h.batch_id != batch.batch_id
        || h.salt != f.salt
        || h.plain_len != f.size
        || h.segment_size != ctx.header.segment_size
        || !fk.check_commitment(&h.commitment)
    {
        return diff(
            DiffKind::Damaged,
            "the record's header does not match its entry".into(),
        );
    }
    let digest = match keyed_digest(&j.source, j.inode, f, fk.mac_key()) {
        Ok((held, n)) => {
            hashed.fetch_add(n, Ordering::Relaxed);
            match held {
                Held::Digest(d) => d,
                Held::Length(n) => {
                    return diff(
                        DiffKind::Changed,
                        format!("{n} bytes, was {}", f.file_len()),
                    )
                }
                Held::GapNotZero(at) => {
                    return diff(
                        DiffKind::Changed,
                        format!("data at byte {at}, where the vault has a hole or zeros"),
                    )
                }
            }
        }
        Err(e) => return diff(DiffKind::Unreadable, e.to_string()),
    };
    if digest != blake3::Hash::from(f.pt) {
        return if j.same_mtime {
            diff(
                DiffKind::Bitrot,
                "the content differs though size and mtime are unchanged".into(),
            )
        } else {
            diff(DiffKind::Changed, "the content differs".into())
        };
    }
    if !(j.same_mtime && j.same_mode) {
        return diff(
            DiffKind::Metadata,
            "same content, other mode or mtime".into(),
        );
    }
    None
}

/// The keyed digest of a file's stored bytes (read below its source's handle, no symlink
/// crossed, the inode the walk saw: [`crate::fs::walk::Place::open`]), and the bytes read.
fn keyed_digest(
    at: &crate::fs::walk::Place,
    (dev, ino): (u64, u64),
    f: &FileEntry,
    key: &[u8; 32],
) -> std::io::Result<(Held, u64)> {
    let file: File = at.open(dev, ino, false, true)?;
    let never = std::sync::atomic::AtomicBool::new(false);
    crate::sparse::keyed_digest(&file, f.file_len(), f.sparse.as_deref(), key, &never)
}
