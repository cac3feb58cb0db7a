//! `verify`: is the vault intact?
//!
//! Without `--deep` no key is needed: every object the manifest lists must exist with its
//! recorded length, and every file's record must hash to the manifest's ciphertext digest;
//! files the manifest does not list are reported as extra; each batch's key file must agree
//! with the manifest. What keyless verify cannot know: whether the manifest itself was
//! rewritten consistently (its MAC needs the key). `--deep` unwraps the keys, authenticates
//! the manifest, opens every segment and checks every plaintext digest, and writes no
//! plaintext anywhere. Both read the manifest as a stream and check records on all cores.
//! See docs/VERIFY.md.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crate::crypto::BatchKey;
use crate::error::{Error, Result};
use crate::format::manifest::{Batch, FileEntry, KeyFile, ObjectRef};
use crate::format::{self, layout};
use crate::kms::keys::Kms;
use crate::pipeline::object::{hash_record, open_record, ObjectError, RecordCtx};
use crate::pipeline::vault;
use crate::progress::Progress;
use crate::store::Store;

/// One problem found, by vault path (or object name for extra objects).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The entry's path (or `<concealed>`), or the stray file for extra objects.
    pub path: String,
    /// The object's name in the vault.
    pub object: String,
    pub kind: ProblemKind,
    pub detail: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProblemKind {
    Missing,
    Corrupt,
    Extra,
    KeyFile,
}

impl ProblemKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemKind::Missing => "missing",
            ProblemKind::Corrupt => "corrupt",
            ProblemKind::Extra => "extra",
            ProblemKind::KeyFile => "key-file",
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct VerifyReport {
    pub deep: bool,
    /// Files whose records were checked, and their plaintext bytes.
    pub files: u64,
    pub bytes: u64,
    /// Of the objects' bytes, how many lie in the objects checked (all without a sample).
    pub object_bytes: u64,
    pub sampled_bytes: u64,
    pub problems: Vec<Problem>,
    pub seconds: f64,
}

#[derive(Clone, Debug)]
pub struct VerifyOptions {
    pub deep: bool,
    pub jobs: usize,
    /// Which objects' records to read (docs/VERIFY.md "A slice at a time").
    pub sample: Sample,
}

/// The objects a verify reads. The manifest is always read and authenticated whole, key
/// files and stray files always checked; a sample only spares reading records.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Sample {
    #[default]
    All,
    /// The objects whose id falls in slice `n` of `m` (1-based): the first 8 bytes of the
    /// id, read as a fraction of 2^64, lie in [(n-1)/m, n/m). Ids are random, so each slice
    /// holds about 1/m of the objects, and slices 1..m together hold each object once.
    Slice { n: u32, m: u32 },
    /// A random share of the objects' bytes, in percent (0 < p ≤ 100): objects in a
    /// random order until that share is reached.
    Share(f64),
}

impl Sample {
    /// Parses `n/m` (1 ≤ n ≤ m) or `P%` (0 < P ≤ 100).
    pub fn parse(s: &str) -> std::result::Result<Sample, String> {
        let t = s.trim();
        if let Some(p) = t.strip_suffix('%') {
            return match p.trim().parse::<f64>() {
                Ok(v) if v > 0.0 && v <= 100.0 => Ok(Sample::Share(v)),
                _ => Err(format!(
                    "{s}: a share must be a percentage above 0 and at most 100, e.g. 10%"
                )),
            };
        }
        let parsed = t.split_once('/').and_then(|(n, m)| {
            Some((n.trim().parse::<u32>().ok()?, m.trim().parse::<u32>().ok()?))
        });
        match parsed {
            Some((n, m)) if n >= 1 && n <= m => Ok(Sample::Slice { n, m }),
            _ => Err(format!(
                "{s}: expected n/m with 1 <= n <= m (e.g. 3/7: the third of 7 slices) or a share such as 10%"
            )),
        }
    }

    /// Which of `objects` to read. A share is drawn with the system's randomness (its
    /// failure is an error: a fixed order would check the same objects every time).
    fn choose(&self, objects: &[ObjectRef]) -> std::io::Result<Vec<bool>> {
        Ok(match *self {
            Sample::All => vec![true; objects.len()],
            Sample::Slice { n, m } => objects
                .iter()
                .map(|o| {
                    let x = u64::from_be_bytes(o.id[..8].try_into().unwrap_or_default());
                    // floor(x * m / 2^64): the slice x falls in, 0-based.
                    ((u128::from(x) * u128::from(m)) >> 64) as u32 == n - 1
                })
                .collect(),
            Sample::Share(p) => {
                let total: u64 = objects.iter().map(|o| o.len).sum();
                let want = (total as f64 * p / 100.0).ceil() as u64;
                // A random order: each object ranked by a keyed hash of its id.
                let key: [u8; 32] = format::random()?;
                let mut order: Vec<usize> = (0..objects.len()).collect();
                order.sort_by_key(|&i| *blake3::keyed_hash(&key, &objects[i].id).as_bytes());
                let mut chosen = vec![false; objects.len()];
                let mut got = 0u64;
                for i in order {
                    if got >= want {
                        break;
                    }
                    chosen[i] = true;
                    got += objects[i].len;
                }
                chosen
            }
        })
    }
}

/// Entries a verify job takes at most, and record bytes.
const JOB_ENTRIES: usize = 1024;
const JOB_BYTES: u64 = 64 << 20;

/// One file to check.
struct Item {
    path: String,
    file: FileEntry,
}

fn problem(it: &Item, objects: &[ObjectRef], kind: ProblemKind, detail: String) -> Problem {
    Problem {
        path: it.path.clone(),
        object: objects
            .get(it.file.obj as usize)
            .map(|o| format!("{}@{}", o.name(), it.file.off))
            .unwrap_or_default(),
        kind,
        detail,
    }
}

fn object_problem(e: ObjectError) -> (ProblemKind, String) {
    match e {
        ObjectError::Missing(d) => (ProblemKind::Missing, d),
        ObjectError::Integrity(d) => (ProblemKind::Corrupt, d),
        ObjectError::Io(e) => (ProblemKind::Corrupt, e.to_string()),
        ObjectError::Cancelled => (ProblemKind::Corrupt, "interrupted".to_string()),
    }
}

/// Checks a job's files: keyless, the ciphertext digest of each record; deep, everything.
fn check_items(
    ctx: &RecordCtx,
    keys: Option<&[BatchKey]>,
    items: &[Item],
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut buf = Vec::new();
    for it in items {
        if cancel.load(Ordering::Relaxed) {
            break;
        }
        let f = &it.file;
        let r = match keys {
            Some(keys) => open_record(ctx, f, &keys[f.batch as usize], None, progress, cancel)
                .err()
                .map(object_problem),
            None => {
                let r = match ctx.object(f.obj) {
                    Err(e) => Some(object_problem(e)),
                    Ok(obj) => {
                        match hash_record(
                            obj,
                            f.off,
                            f.size,
                            ctx.header.segment_size,
                            f.rlen,
                            &mut buf,
                        ) {
                            Ok(ct) if ct == f.ct => None,
                            Ok(_) => Some((
                                ProblemKind::Corrupt,
                                "ciphertext digest mismatch".to_string(),
                            )),
                            Err(e) => Some((ProblemKind::Corrupt, e.to_string())),
                        }
                    }
                };
                progress.bytes(f.size);
                r
            }
        };
        if let Some((kind, detail)) = r {
            out.push(problem(it, ctx.objects, kind, detail));
        }
        progress.file_done();
    }
    out
}

/// What the vault holds and the format does not name: objects no object record names
/// (links not followed), and anything in the vault root but the manifest, the journal,
/// `objects/` and the key files of the manifest's batches (a stray key file, a `.tmp`).
/// Objects a sample does not read (`chosen` false) are checked here from the listing: they
/// must exist with their recorded length.
fn extras(
    store: &dyn Store,
    batches: &[Batch],
    objects: &[ObjectRef],
    chosen: &[bool],
) -> Vec<Problem> {
    let extra = |path: String, detail: String| Problem {
        object: path.clone(),
        path,
        kind: ProblemKind::Extra,
        detail,
    };
    let listed = match store.list("") {
        Ok(l) => l,
        Err(e) => return vec![extra(store.url(), format!("cannot list the vault: {e}"))],
    };
    let named: HashSet<String> = objects.iter().map(|o| o.name()).collect();
    let keys: HashSet<String> = batches.iter().map(|b| b.keys_file()).collect();
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut unread: std::collections::HashMap<String, u64> = objects
        .iter()
        .zip(chosen)
        .filter(|(_, c)| !**c)
        .map(|(o, _)| (o.name(), o.len))
        .collect();
    for l in &listed {
        if let Some(want) = unread.remove(&l.name) {
            if !l.file || l.len != want {
                out.push(Problem {
                    path: l.name.clone(),
                    object: l.name.clone(),
                    kind: ProblemKind::Corrupt,
                    detail: format!(
                        "{} bytes, the manifest says {want} (not read: outside the sample)",
                        l.len
                    ),
                });
            }
        }
    }
    for (name, _) in unread {
        out.push(Problem {
            path: name.clone(),
            object: name,
            kind: ProblemKind::Missing,
            detail: "absent (not read: outside the sample)".into(),
        });
    }
    for l in listed {
        if l.name.starts_with(layout::OBJECTS_PREFIX) {
            if !(l.file && named.contains(&l.name)) {
                out.push(extra(l.name, "not an object named by the manifest".into()));
            }
            continue;
        }
        // Anything else is reported once, by its name at the root.
        let top = l.name.split('/').next().unwrap_or_default().to_string();
        let known = l.file
            && ([layout::MANIFEST, layout::JOURNAL].contains(&top.as_str()) || keys.contains(&top));
        if known || !seen.insert(top.clone()) {
            continue;
        }
        let why = if store.scratch_name(layout::MANIFEST).as_deref() == Some(&top)
            || top == layout::MANIFEST_STAGED
        {
            "not part of the vault format (left by an interrupted rewrap: run the same rewrap again)"
        } else {
            "not part of the vault format"
        };
        out.push(extra(top, why.into()));
    }
    out
}

/// Each batch's key file must exist and agree with the manifest: the same batch id and
/// commitment, and the same wrappings (it is the manifest-free copy of them, §5).
fn key_files(store: &dyn Store, vault_id: &[u8; 16], batches: &[Batch]) -> Vec<Problem> {
    let mut out = Vec::new();
    for b in batches {
        let name = b.keys_file();
        // Untrusted input: a regular file, read at most to the limit (docs/FORMAT.md §8).
        let read = store.get(&name, format::MAX_KEY_FILE).ok().flatten();
        let want = KeyFile::new(vault_id, b);
        let detail = match read.and_then(|d| serde_json::from_slice::<KeyFile>(&d).ok()) {
            Some(kf) if kf == want => continue,
            // The same batch under other wrappings: a rewrap stopped between its manifest
            // (the commit point) and this key file.
            Some(kf)
                if (&kf.vault_id, &kf.batch_id, &kf.key_commitment, kf.format)
                    == (&want.vault_id, &want.batch_id, &want.key_commitment, want.format) =>
            {
                "key file wrapped differently from the manifest: a rewrap was interrupted; run the same rewrap again"
            }
            _ => "key file missing, unreadable or not matching the manifest",
        };
        out.push(Problem {
            path: name.clone(),
            object: name,
            kind: ProblemKind::KeyFile,
            detail: detail.into(),
        });
    }
    out
}

pub fn verify(
    store: &dyn Store,
    opts: &VerifyOptions,
    kms: Option<&Kms>,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<VerifyReport> {
    let started = Instant::now();
    let (jobs, lowered) = crate::limits::clamp_jobs(opts.jobs);
    if let Some(n) = lowered {
        progress.notice(&n);
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(jobs)
        .build()
        .map_err(|e| Error::Runtime(format!("thread pool: {e}")))?;
    let mut report = VerifyReport {
        deep: opts.deep,
        ..Default::default()
    };
    let (mut reader, keys) = if opts.deep {
        let kms = kms.ok_or_else(|| Error::Usage("verify --deep needs a KMS".into()))?;
        let u = vault::unlock(store, kms)?;
        (u.reader, Some(u.keys))
    } else {
        (vault::open_manifest(store)?, None)
    };
    let header = reader.header.clone();
    let batches = reader.batches.clone();
    let objects = reader.objects.clone();
    let ctx = RecordCtx::new(store, &header, &batches, &objects, jobs);
    let total: u64 = objects.iter().map(|o| o.len).sum();
    let chosen = opts
        .sample
        .choose(&objects)
        .map_err(|e| Error::Runtime(format!("--sample: no randomness to draw a share: {e}")))?;
    let sampled: u64 = objects
        .iter()
        .zip(&chosen)
        .filter(|(_, c)| **c)
        .map(|(o, _)| o.len)
        .sum();
    progress.start(0, sampled);
    let problems: Mutex<Vec<Problem>> = Mutex::new(Vec::new());
    // At most a few jobs in flight: the manifest is read as a stream, never held.
    let (slots_tx, slots_rx) = crossbeam_channel::bounded::<()>(2 * jobs);
    let mut files = 0u64;
    let mut bytes = 0u64;
    // Concealed names, revealed: their tree rules are checked once all are known.
    let mut revealed: Vec<crate::format::manifest::Entry> = Vec::new();
    let read = pool.in_place_scope(|s| -> Result<()> {
        let mut job: Vec<Item> = Vec::new();
        let mut job_bytes = 0u64;
        let dispatch = |job: Vec<Item>| {
            let _ = slots_tx.send(());
            let (ctx, keys, problems, slots_rx) = (&ctx, keys.as_deref(), &problems, &slots_rx);
            s.spawn(move |_| {
                let found = check_items(ctx, keys, &job, progress, cancel);
                if !found.is_empty() {
                    if let Ok(mut p) = problems.lock() {
                        p.extend(found);
                    }
                }
                let _ = slots_rx.recv();
            });
        };
        while let Some(e) = reader.next_entry()? {
            if cancel.load(Ordering::Relaxed) {
                break;
            }
            if header.conceal_names && keys.is_some() {
                // Only what the tree rules read: the path, whether it is a directory, a
                // hard link's target and whether a file may be one.
                use crate::format::manifest::EntryKind;
                revealed.push(crate::format::manifest::Entry {
                    kind: match &e.kind {
                        EntryKind::Dir => EntryKind::Dir,
                        EntryKind::HardLink(t) => EntryKind::HardLink(t.clone()),
                        _ => EntryKind::Fifo,
                    },
                    owner: None,
                    ..e.clone()
                });
            }
            let Some(f) = e.file() else { continue };
            if !chosen.get(f.obj as usize).copied().unwrap_or(true) {
                continue;
            }
            files += 1;
            bytes = bytes.saturating_add(f.size);
            job_bytes += f.record_len(header.segment_size);
            job.push(Item {
                path: e.path.display(),
                file: f.clone(),
            });
            if job.len() >= JOB_ENTRIES || job_bytes >= JOB_BYTES {
                dispatch(std::mem::take(&mut job));
                job_bytes = 0;
            }
        }
        if !job.is_empty() {
            dispatch(job);
        }
        Ok(())
    });
    read?;
    if cancel.load(Ordering::Relaxed) {
        return Err(Error::Interrupted);
    }
    if let Some(keys) = &keys {
        // Every entry was read: the manifest's MAC, with every batch key.
        for (i, k) in keys.iter().enumerate() {
            reader.authenticate(i, k)?;
        }
        if header.conceal_names {
            crate::format::manifest::check_tree(&mut revealed)?;
        }
    }
    let mut problems = problems.into_inner().unwrap_or_default();
    problems.extend(extras(store, &batches, &objects, &chosen));
    problems.extend(key_files(store, &header.vault_id, &batches));
    report.files = files;
    report.bytes = bytes;
    report.object_bytes = total;
    report.sampled_bytes = sampled;
    report.problems = problems;
    progress.finish();
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Slices of m split any set of objects (each object in exactly one), about evenly;
    /// shares reach their share of the bytes and stop there; bad spellings are refused.
    #[test]
    fn samples_split_and_share() {
        let objects: Vec<ObjectRef> = (0..3000u32)
            .map(|i| ObjectRef {
                id: *blake3::hash(&i.to_be_bytes())
                    .as_bytes()
                    .first_chunk()
                    .unwrap(),
                len: 1000,
            })
            .collect();
        let m = 7;
        let slices: Vec<Vec<bool>> = (1..=m)
            .map(|n| Sample::Slice { n, m }.choose(&objects).unwrap())
            .collect();
        for i in 0..objects.len() {
            assert_eq!(slices.iter().filter(|s| s[i]).count(), 1);
        }
        for s in &slices {
            let n = s.iter().filter(|c| **c).count();
            assert!((300..560).contains(&n), "{n} of 3000 in a slice of 7");
        }
        let share = Sample::Share(10.0).choose(&objects).unwrap();
        assert_eq!(share.iter().filter(|c| **c).count(), 300);
        assert_ne!(
            share,
            Sample::Share(10.0).choose(&objects).unwrap(),
            "a random share"
        );
        assert_eq!(Sample::parse("3/7"), Ok(Sample::Slice { n: 3, m: 7 }));
        assert_eq!(Sample::parse("12.5%"), Ok(Sample::Share(12.5)));
        for bad in ["0/5", "6/5", "5", "1/0", "0%", "101%", "x%", "-1/5"] {
            assert!(Sample::parse(bad).is_err(), "{bad}");
        }
    }
}
