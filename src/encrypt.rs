//! `encrypt`: sources -> vault, resumable.
//!
//! Order of durability (what makes a crash at any moment resumable, FORMAT-RULES 12):
//! journal `run` record -> per batch: `GenerateDataKey`, key file, journal `batch` record ->
//! objects written (no per-file fsync) -> group commit: `syncfs` of the vault, then journal
//! `done` records -> manifest written atomically -> journal removed. Objects not named by a
//! `done` record are swept on the next run; their files are redone with a fresh salt.

use std::collections::HashMap;
use std::fs::{self, File};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rayon::prelude::*;

use crate::crypto::{segment_mac, BatchKey, NameKey, TreeMac};
use crate::error::{Error, IoContext, Result};
use crate::format::{self, layout, ObjectHeader, ID_LEN, TAG_LEN};
use crate::journal::{DoneRecord, Journal, RunParams, RunRecord};
use crate::keys::Kms;
use crate::manifest::{self, Batch, Entry, EntryKind, FileEntry, Manifest, Name};
use crate::object::{hash_window, Windows};
use crate::progress::Progress;
use crate::source::Source;
use crate::walk::{self, SourceEntry, SourceKind};

/// What to encrypt and how.
#[derive(Clone, Debug)]
pub struct EncryptOptions {
    pub sources: Vec<PathBuf>,
    pub vault: PathBuf,
    /// CMK id, ARN or alias; `None` = the default alias.
    pub key: Option<String>,
    /// Provider URL for new batches.
    pub kms_url: String,
    pub segment_size: u32,
    pub excludes: Vec<String>,
    pub conceal_names: bool,
    /// Demand an unfinished run to resume (running the same command again resumes anyway).
    pub resume: bool,
    pub use_mmap: bool,
    pub jobs: usize,
    pub batch_max_files: u64,
    pub batch_max_bytes: u64,
}

/// A file that could not be encrypted (the run goes on without it).
#[derive(Clone, Debug)]
pub struct Failure {
    pub path: String,
    pub why: String,
}

/// The outcome of a run.
#[derive(Clone, Debug, Default)]
pub struct EncryptReport {
    pub files: u64,
    pub bytes: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Files taken over from the journal of an interrupted run.
    pub resumed_files: u64,
    pub batches: u64,
    /// `GenerateDataKey` calls made by this run.
    pub generated_keys: u64,
    pub skipped: Vec<Failure>,
    pub failed: Vec<Failure>,
    pub seconds: f64,
}

/// Why one file's encryption stopped.
enum FileError {
    /// The source could not be read, or changed: the file is reported and skipped.
    Source(String),
    /// The vault could not be written: the run stops (resumable).
    Vault(Error),
    Cancelled,
}

struct Work<'a> {
    entry: &'a SourceEntry,
    batch: usize,
}

struct Done {
    path: Vec<u8>,
    file: FileEntry,
    dev: u64,
    ino: u64,
    entry_meta: (u32, i64, u32),
}

/// Runs an encryption. `cancel` stops it between segments (the vault stays resumable).
pub fn encrypt(
    opts: &EncryptOptions,
    kms: &Kms,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<EncryptReport> {
    let started = Instant::now();
    if !format::valid_segment_size(u64::from(opts.segment_size)) {
        return Err(Error::Usage(format!(
            "--segment-size {}: must be a power of two from 4KiB to 64MiB",
            opts.segment_size
        )));
    }
    let key = opts
        .key
        .clone()
        .unwrap_or_else(|| crate::kms::DEFAULT_ALIAS.to_string());
    let sources: Vec<PathBuf> = opts
        .sources
        .iter()
        .map(|s| std::path::absolute(s).at(s))
        .collect::<Result<_>>()?;
    let params = RunParams {
        sources: sources
            .iter()
            .map(|s| B64.encode(s.as_os_str().as_bytes()))
            .collect(),
        key: opts.key.clone(),
        kms: opts.kms_url.clone(),
        segment_size: opts.segment_size,
        conceal_names: opts.conceal_names,
        excludes: opts.excludes.clone(),
    };
    let exclude = walk::excludes(&opts.excludes)?;
    let vault_real = resolved(&opts.vault);
    for s in &sources {
        // A source that is a symlink is stored as a link, not followed: resolve its parent.
        let s_real = match (s.parent(), s.file_name()) {
            (Some(parent), Some(name)) => resolved(parent).join(name),
            _ => resolved(s),
        };
        if opts.vault.starts_with(s)
            || std::path::absolute(&opts.vault).is_ok_and(|v| v.starts_with(s))
            || vault_real.starts_with(&s_real)
        {
            return Err(Error::Usage(format!(
                "the vault {} is inside the source {}; choose a vault outside the sources",
                opts.vault.display(),
                s.display()
            )));
        }
    }

    // The vault directory: new, or an unfinished run of the same command.
    let vault = &opts.vault;
    let vault_existed = vault.exists();
    if let Some(mut report) = finished_run(vault, &params)? {
        report.seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    }
    let (mut journal, run, old_batches, done_recs) = open_vault(vault, &params, opts.resume)?;
    let mut unstarted = Unstarted {
        vault,
        vault_existed,
        armed: old_batches.is_empty(),
    };
    let vault_id: [u8; ID_LEN] = format::from_hex(&run.vault_id)
        .ok_or_else(|| Error::format(vault.display().to_string(), "bad vault id in journal"))?;
    let objects = vault.join(layout::OBJECTS_DIR);
    fs::create_dir_all(&objects).at(&objects)?;
    if !is_real_dir(&objects) {
        return Err(Error::Runtime(format!(
            "{} is not a directory (a symlink?); refusing to write or sweep objects through it",
            objects.display()
        )));
    }

    // Walk.
    let walked = walk::walk(&sources, &exclude, |files, bytes| {
        progress.walking(files, bytes)
    })?;
    let mut report = EncryptReport::default();
    for s in &walked.skipped {
        let f = Failure {
            path: s.path.display().to_string(),
            why: s.why.clone(),
        };
        progress.notice(&format!("skipped {}: {}", f.path, f.why));
        if s.error {
            report.failed.push(f);
        } else {
            report.skipped.push(f);
        }
    }

    // Batches of the interrupted run: unwrap again (one Decrypt each) and check commitments.
    // Batch records are not authenticated, but the run record matched this command line: a
    // batch must be wrapped by this run's KMS, or the rest of the run would be encrypted under
    // a key held elsewhere (say, an attacker's store named in an edited journal).
    let mut batches: Vec<Batch> = Vec::new();
    let mut keys: Vec<BatchKey> = Vec::new();
    let run_kms = if old_batches.is_empty() {
        String::new()
    } else {
        kms.provider(&opts.kms_url)?.url()
    };
    for (i, rec) in old_batches.iter().enumerate() {
        let what = format!("journal batch {i}");
        let b = Batch::from_record(rec, &what)?;
        if let Some(w) = b.wrapped.iter().find(|w| w.kms != run_kms) {
            return Err(Error::integrity(
                what,
                format!("wrapped by {}, not by this run's KMS {run_kms}", w.kms),
            ));
        }
        keys.push(kms.unwrap(&vault_id, &b)?);
        batches.push(b);
    }
    if let Some(k) = keys.first() {
        journal.set_mac_key(k.journal_mac_key());
    }
    let done: Vec<DoneRecord> = match done_recs {
        Some(l) => journal.authenticated_done(&l)?,
        None => Vec::new(),
    };

    // Plan: reuse done files whose source is unchanged, assign the rest to batches.
    // Concealed runs keep names sealed in the journal too, under the first batch's name key
    // (done records exist only when that batch does).
    let mut name_key = match (opts.conceal_names, keys.first()) {
        (true, Some(k)) => Some(k.name_key()),
        _ => None,
    };
    let mut done_by_path: HashMap<Vec<u8>, (FileEntry, &DoneRecord)> = HashMap::new();
    for d in &done {
        let mut e = Entry::from_record(&d.entry, &batches, "journal")?;
        if let Some(nk) = &name_key {
            e.reveal(nk)?;
        }
        if let (Some(p), EntryKind::File(f)) = (e.path.clear(), e.kind) {
            done_by_path.insert(p.to_vec(), (f, d));
        }
    }
    let mut reused: HashMap<Vec<u8>, FileEntry> = HashMap::new();
    let mut load: Vec<(u64, u64)> = vec![(0, 0); batches.len()];
    let mut work: Vec<Work> = Vec::new();
    for e in &walked.entries {
        let SourceKind::File { size, .. } = e.kind else {
            continue;
        };
        if let Some((f, d)) = done_by_path.remove(&e.path) {
            let unchanged = d.dev == e.dev
                && d.ino == e.ino
                && f.size == size
                && d.entry.mtime == e.mtime
                && d.entry.mtime_nsec == e.mtime_nsec;
            if unchanged {
                load[f.batch].0 += 1;
                load[f.batch].1 += size;
                reused.insert(e.path.clone(), f);
                continue;
            }
        }
        work.push(Work { entry: e, batch: 0 });
    }
    report.resumed_files = reused.len() as u64;

    // Assign work to batches in order, opening new ones past the limits (at least one batch,
    // so every vault has a key for its manifest MAC).
    let old_batches = load.len();
    let assigned = assign_batches(
        work.iter().map(|w| file_size(w.entry)),
        &mut load,
        opts.batch_max_files,
        opts.batch_max_bytes,
    )?;
    for (w, b) in work.iter_mut().zip(assigned) {
        w.batch = b;
    }
    let new_batches = load.len() - old_batches;

    // One GenerateDataKey per new batch; key file and journal record before any ciphertext.
    for _ in 0..new_batches {
        let batch_id: [u8; ID_LEN] = format::random().at(vault)?;
        let (b, k) = kms.generate(&opts.kms_url, &key, &vault_id, batch_id)?;
        manifest::write_key_file(vault, &vault_id, &b)?;
        journal.append_batch(&b.to_record())?;
        unstarted.armed = false;
        if keys.is_empty() {
            journal.set_mac_key(k.journal_mac_key());
        }
        batches.push(b);
        keys.push(k);
        report.generated_keys += 1;
    }
    if opts.conceal_names && name_key.is_none() {
        name_key = keys.first().map(BatchKey::name_key);
    }
    report.batches = batches.len() as u64;

    // Encrypt in parallel; this thread group-commits finished files to the journal.
    let total_bytes: u64 = work.iter().map(|w| file_size(w.entry)).sum();
    progress.start(work.len() as u64, total_bytes);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.jobs.max(1))
        .build()
        .map_err(|e| Error::Runtime(format!("thread pool: {e}")))?;
    let stop = AtomicBool::new(false);
    let (tx, rx) = crossbeam_channel::bounded::<(usize, std::result::Result<Done, FileError>)>(
        4 * opts.jobs.max(1),
    );
    let ctx = FileCtx {
        vault,
        vault_id,
        segment_size: opts.segment_size,
        use_mmap: opts.use_mmap,
        jobs: opts.jobs.max(1),
        progress,
        cancel,
        stop: &stop,
    };
    let mut finished: Vec<Done> = Vec::new();
    let mut fatal: Option<Error> = None;
    std::thread::scope(|scope| {
        let work = &work;
        let keys = &keys;
        let ctx = &ctx;
        scope.spawn(move || {
            pool.install(|| {
                work.par_iter().enumerate().for_each_with(tx, |tx, (i, w)| {
                    if ctx.cancel.load(Ordering::Relaxed) || ctx.stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let r = encrypt_file(ctx, w.entry, &keys[w.batch], w.batch);
                    let _ = tx.send((i, r));
                })
            })
        });
        let mut pending: Vec<Done> = Vec::new();
        let mut oldest: Option<Instant> = None;
        loop {
            let msg = rx.recv_timeout(Duration::from_millis(100));
            match msg {
                Ok((_, Ok(d))) => {
                    progress.file_done();
                    pending.push(d);
                    oldest.get_or_insert_with(Instant::now);
                }
                Ok((i, Err(FileError::Source(why)))) => {
                    progress.file_done();
                    let path = work[i].entry.source.display().to_string();
                    progress.notice(&format!("failed {path}: {why}"));
                    report.failed.push(Failure { path, why });
                }
                Ok((_, Err(FileError::Vault(e)))) => {
                    stop.store(true, Ordering::Relaxed);
                    fatal.get_or_insert(e);
                }
                Ok((_, Err(FileError::Cancelled))) => {}
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
            }
            let due = oldest.is_some_and(|t| t.elapsed() > Duration::from_millis(500))
                || pending.len() >= 1024;
            if due && fatal.is_none() {
                if let Err(e) = commit(vault, &mut journal, &pending, &batches, name_key.as_ref()) {
                    stop.store(true, Ordering::Relaxed);
                    fatal = Some(e);
                } else {
                    finished.append(&mut pending);
                    oldest = None;
                }
            }
        }
        if fatal.is_none() {
            match commit(vault, &mut journal, &pending, &batches, name_key.as_ref()) {
                Ok(()) => finished.append(&mut pending),
                Err(e) => fatal = Some(e),
            }
        }
    });
    if let Some(e) = fatal {
        return Err(e);
    }
    if cancel.load(Ordering::Relaxed) {
        return Err(Error::Interrupted);
    }

    // The manifest: every walked entry, minus files that failed.
    for d in finished {
        reused.insert(d.path, d.file);
    }
    let mut entries = Vec::with_capacity(walked.entries.len());
    for e in &walked.entries {
        let kind = match &e.kind {
            SourceKind::Dir => {
                report.dirs += 1;
                EntryKind::Dir
            }
            SourceKind::Symlink { target } => {
                report.symlinks += 1;
                EntryKind::Symlink(Name::Clear(target.clone()))
            }
            SourceKind::File { .. } => match reused.remove(&e.path) {
                Some(f) => {
                    report.files += 1;
                    report.bytes += f.size;
                    EntryKind::File(f)
                }
                None => continue,
            },
        };
        entries.push(Entry {
            path: Name::Clear(e.path.clone()),
            mode: e.mode,
            mtime: e.mtime,
            mtime_nsec: e.mtime_nsec,
            kind,
        });
    }
    sweep_objects(vault, &entries)?;
    let m = Manifest {
        vault_id,
        created: run.created.clone(),
        generator: format!("envseal {}", env!("CARGO_PKG_VERSION")),
        segment_size: opts.segment_size,
        conceal_names: opts.conceal_names,
        batches,
        entries,
    };
    let key_refs: Vec<&BatchKey> = keys.iter().collect();
    m.write(vault, &key_refs)?;
    journal.remove(vault)?;
    progress.finish();
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// `p` with symlinks and `..` resolved in the part of it that exists (the vault may not exist
/// yet), so that paths spelled differently compare equal.
fn resolved(p: &Path) -> PathBuf {
    let Ok(p) = std::path::absolute(p) else {
        return p.to_path_buf();
    };
    let mut existing = p.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(mut real) = fs::canonicalize(existing) {
            real.extend(rest.iter().rev());
            return real;
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name);
                existing = parent;
            }
            _ => return p,
        }
    }
}

/// A directory, not a symlink to one.
fn is_real_dir(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok_and(|m| m.is_dir())
}

fn file_size(e: &SourceEntry) -> u64 {
    match e.kind {
        SourceKind::File { size, .. } => size,
        _ => 0,
    }
}

/// Assigns files (given by size, in order) to batches: first to the batches in `load`
/// (files, bytes per batch), then to new ones appended to it, each opened when the last is full.
/// The limits are clamped to the format's (docs/FORMAT.md §8); there is always at least one
/// batch, and never more than a manifest may hold. Returns each file's batch index.
fn assign_batches(
    sizes: impl Iterator<Item = u64>,
    load: &mut Vec<(u64, u64)>,
    max_files: u64,
    max_bytes: u64,
) -> Result<Vec<usize>> {
    let max_files = max_files.clamp(1, format::BATCH_MAX_FILES);
    let max_bytes = max_bytes.clamp(1, format::BATCH_MAX_BYTES);
    let mut out = Vec::new();
    let mut cur = 0usize;
    for size in sizes {
        loop {
            if cur >= load.len() {
                if load.len() >= format::MAX_BATCHES {
                    return Err(Error::Usage(format!(
                        "this run needs more than {} batches (data keys), the most a vault holds; raise the batch limits or split the sources",
                        format::MAX_BATCHES
                    )));
                }
                load.push((0, 0));
            }
            let (n, b) = load[cur];
            // A file larger than the byte limit goes alone into an empty batch.
            if n < max_files && (n == 0 || b.saturating_add(size) <= max_bytes) {
                load[cur] = (n + 1, b.saturating_add(size));
                out.push(cur);
                break;
            }
            cur += 1;
        }
    }
    if load.is_empty() {
        load.push((0, 0));
    }
    Ok(out)
}

type OpenedVault = (
    Journal,
    RunRecord,
    Vec<manifest::BatchRecord>,
    Option<crate::journal::Loaded>,
);

/// Creates the vault and its journal, or opens the journal of an unfinished run of the same
/// command. Refuses finished vaults and foreign non-empty directories.
fn open_vault(vault: &Path, params: &RunParams, must_resume: bool) -> Result<OpenedVault> {
    let shown = vault.display();
    if vault.join(layout::MANIFEST).exists() {
        return Err(Error::Usage(format!(
            "{shown} is a finished vault; refusing to overwrite it (choose another -o, or delete it first)"
        )));
    }
    if vault.join(layout::JOURNAL).exists() {
        let (journal, loaded) = Journal::open(vault)?;
        if loaded.run.params != *params {
            return Err(Error::Usage(format!(
                "{shown} holds an unfinished run with other arguments; run that command again to finish it, or choose another -o"
            )));
        }
        let run = loaded.run.clone();
        let batches = loaded.batches.clone();
        return Ok((journal, run, batches, Some(loaded)));
    }
    if must_resume {
        return Err(Error::Usage(format!(
            "--resume: {shown} has no unfinished run to resume"
        )));
    }
    match fs::read_dir(vault) {
        Ok(mut d) => {
            if d.next().is_some() {
                return Err(Error::Usage(format!(
                    "{shown} exists and is not empty; choose a new directory for the vault"
                )));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(vault).at(vault)?;
        }
        Err(e) => return Err(Error::io(vault, e)),
    }
    let run = RunRecord {
        format: format::FORMAT_VERSION,
        vault_id: format::to_hex(&format::random::<ID_LEN>().at(vault)?),
        created: now_rfc3339(),
        params: params.clone(),
    };
    let journal = Journal::create(vault, &run)?;
    Ok((journal, run, Vec::new(), None))
}

/// A run of the same command that wrote its manifest and stopped before removing its journal
/// is finished: removes the journal and reports what the manifest holds.
fn finished_run(vault: &Path, params: &RunParams) -> Result<Option<EncryptReport>> {
    if !vault.join(layout::MANIFEST).exists() || !vault.join(layout::JOURNAL).exists() {
        return Ok(None);
    }
    let (journal, loaded) = Journal::open(vault)?;
    if loaded.run.params != *params {
        return Ok(None);
    }
    let m = Manifest::read(vault)?;
    if loaded.run.vault_id != format::to_hex(&m.vault_id) {
        return Ok(None);
    }
    journal.remove(vault)?;
    let mut r = EncryptReport {
        batches: m.batches.len() as u64,
        ..Default::default()
    };
    for e in &m.entries {
        match &e.kind {
            EntryKind::File(f) => {
                r.files += 1;
                r.bytes = r.bytes.saturating_add(f.size);
            }
            EntryKind::Dir => r.dirs += 1,
            EntryKind::Symlink(_) => r.symlinks += 1,
        }
    }
    r.resumed_files = r.files;
    Ok(Some(r))
}

/// Until its first batch record is in the journal, a run has written no key and no
/// ciphertext, so there is nothing to resume. If it stops there (a refused CMK, a wrong
/// passphrase, a usage error found while walking), this removes what it created, so that the
/// same `-o` can be used again with other arguments. Best effort: `remove_dir` only removes
/// empty directories.
struct Unstarted<'a> {
    vault: &'a Path,
    vault_existed: bool,
    armed: bool,
}

impl Drop for Unstarted<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let _ = fs::remove_file(self.vault.join(layout::JOURNAL));
        let _ = fs::remove_dir(self.vault.join(layout::OBJECTS_DIR));
        if !self.vault_existed {
            let _ = fs::remove_dir(self.vault);
        }
    }
}

/// UTC now as `YYYY-MM-DDThh:mm:ssZ`.
pub fn now_rfc3339() -> String {
    let f = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    time::OffsetDateTime::now_utc()
        .format(&f)
        .unwrap_or_default()
}

/// Makes finished objects durable, then records them (one `syncfs` per group, not one fsync
/// per file: a million small files must not mean a million fsyncs).
fn commit(
    vault: &Path,
    journal: &mut Journal,
    done: &[Done],
    batches: &[Batch],
    name_key: Option<&NameKey>,
) -> Result<()> {
    if done.is_empty() {
        return Ok(());
    }
    let dir = File::open(vault).at(vault)?;
    // SAFETY: syncfs on a valid open descriptor.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
        return Err(Error::io(vault, std::io::Error::last_os_error()));
    }
    let recs: Vec<DoneRecord> = done
        .iter()
        .map(|d| {
            let e = Entry {
                path: Name::Clear(d.path.clone()),
                mode: d.entry_meta.0,
                mtime: d.entry_meta.1,
                mtime_nsec: d.entry_meta.2,
                kind: EntryKind::File(d.file.clone()),
            };
            Ok(DoneRecord {
                entry: e.to_record(batches, name_key)?,
                dev: d.dev,
                ino: d.ino,
            })
        })
        .collect::<Result<_>>()?;
    journal.append_done(&recs)
}

/// Removes objects that no entry names (left by an interrupted run), and anything else in
/// `objects/` (a planted link is removed, never followed).
fn sweep_objects(vault: &Path, entries: &[Entry]) -> Result<()> {
    let keep: std::collections::HashSet<String> = entries
        .iter()
        .filter_map(|e| e.file().map(|f| f.object()))
        .collect();
    for rel in crate::vault::object_files(vault)? {
        if !rel.to_str().is_some_and(|r| keep.contains(r)) {
            let p = vault.join(&rel);
            fs::remove_file(&p).at(&p)?;
        }
    }
    Ok(())
}

struct FileCtx<'a> {
    vault: &'a Path,
    vault_id: [u8; ID_LEN],
    segment_size: u32,
    use_mmap: bool,
    jobs: usize,
    progress: &'a dyn Progress,
    cancel: &'a AtomicBool,
    stop: &'a AtomicBool,
}

/// Attempts per file before a file that keeps changing is reported.
const ATTEMPTS: usize = 3;

fn encrypt_file(
    ctx: &FileCtx,
    entry: &SourceEntry,
    key: &BatchKey,
    batch: usize,
) -> std::result::Result<Done, FileError> {
    let device = matches!(entry.kind, SourceKind::File { device: true, .. });
    let mut last_why = String::new();
    for _ in 0..ATTEMPTS {
        let src = Source::open(entry, device, ctx.use_mmap)
            .map_err(|e| FileError::Source(e.to_string()))?;
        match encrypt_once(ctx, entry, &src, key, batch) {
            Ok(d) => match src.unchanged(device) {
                Ok(true) => return Ok(d),
                Ok(false) => last_why = "changed while being read".into(),
                Err(e) => return Err(FileError::Source(e.to_string())),
            },
            Err(FileError::Source(why)) if why.contains("changed while being read") => {
                last_why = why
            }
            Err(e) => return Err(e),
        }
    }
    Err(FileError::Source(format!(
        "{last_why}; gave up after {ATTEMPTS} attempts"
    )))
}

fn encrypt_once(
    ctx: &FileCtx,
    entry: &SourceEntry,
    src: &Source,
    key: &BatchKey,
    batch: usize,
) -> std::result::Result<Done, FileError> {
    let vault_err = |p: &Path, e: std::io::Error| FileError::Vault(Error::io(p, e));
    let size = src.size();
    let seg = ctx.segment_size;
    let n = format::segment_count(size, seg);
    if n > format::MAX_SEGMENTS {
        return Err(FileError::Source(format!(
            "too large for segment size {seg} (over 2^32 segments)"
        )));
    }
    // A fresh file id and salt per attempt: never the same key and nonce on other plaintext.
    let file_id: [u8; ID_LEN] = format::random().map_err(|e| vault_err(ctx.vault, e))?;
    let salt = format::random().map_err(|e| vault_err(ctx.vault, e))?;
    let mut header = ObjectHeader {
        version: format::FORMAT_VERSION,
        alg: format::ALG_AES256GCM_BLAKE3,
        segment_size: seg,
        plain_len: size,
        vault_id: ctx.vault_id,
        batch_id: *key.batch_id(),
        file_id,
        salt,
        commitment: [0; 32],
    };
    let fk = key.file_keys(&header);
    header.commitment = fk.commitment();
    let hb = header.encode();

    let rel = manifest::object_name(&file_id);
    let obj_path = ctx.vault.join(&rel);
    if let Some(dir) = obj_path.parent() {
        fs::create_dir_all(dir).map_err(|e| vault_err(dir, e))?;
        // Objects stay inside the vault: not written through a symlink planted in objects/.
        if !is_real_dir(dir) {
            return Err(FileError::Vault(Error::Runtime(format!(
                "{} is not a directory (a symlink?); refusing to write objects through it",
                dir.display()
            ))));
        }
    }
    let obj = File::create(&obj_path).map_err(|e| vault_err(&obj_path, e))?;
    let result = (|| {
        obj.write_all_at(&hb, 0)
            .map_err(|e| vault_err(&obj_path, e))?;
        let mut ct_hash = blake3::Hasher::new();
        ct_hash.update(&hb);
        let mut mac = TreeMac::new(fk.mac_key());
        let windows = Windows::new(size, seg, ctx.jobs);
        let mut buf = windows.buffer();
        for w in windows {
            if ctx.cancel.load(Ordering::Relaxed) || ctx.stop.load(Ordering::Relaxed) {
                return Err(FileError::Cancelled);
            }
            w.each_segment(&mut buf, &mut mac, |i, chunk| {
                let len = format::segment_plain_len(size, seg, i);
                src.read_at(i * u64::from(seg), &mut chunk[..len])
                    .map_err(|e| FileError::Source(e.to_string()))?;
                // The plaintext MAC is taken from the buffer just read, before sealing in
                // place: each byte is read from the source once.
                let m = segment_mac(fk.mac_key(), seg, i, n, &chunk[..len]);
                fk.seal_segment(i, i == n - 1, &mut chunk[..len + TAG_LEN]);
                Ok(m)
            })?;
            let bytes = &buf[..w.used];
            hash_window(&mut ct_hash, bytes);
            obj.write_all_at(bytes, format::segment_offset(seg, w.first))
                .map_err(|e| vault_err(&obj_path, e))?;
            ctx.progress.bytes(w.plain);
        }
        Ok((ct_hash.finalize(), mac))
    })();
    let (ct, mac) = match result {
        Ok(v) => v,
        Err(e) => {
            // Best effort: a leftover object is swept by the next run anyway.
            let _ = fs::remove_file(&obj_path);
            return Err(e);
        }
    };
    let pt_mac = mac
        .finalize()
        .ok_or_else(|| FileError::Vault(Error::Runtime("empty MAC tree".into())))?;
    Ok(Done {
        path: entry.path.clone(),
        file: FileEntry {
            size,
            batch,
            file_id,
            salt,
            ct_blake3: *ct.as_bytes(),
            pt_mac: *pt_mac.as_bytes(),
        },
        dev: entry.dev,
        ino: entry.ino,
        entry_meta: (entry.mode, entry.mtime, entry.mtime_nsec),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_fill_in_order_and_open_past_the_limits() {
        let mut load = vec![(1, 10)]; // one batch from the journal, holding one file
        let got = assign_batches([5, 5, 100, 0, 1].into_iter(), &mut load, 2, 20).unwrap();
        // 2 files per batch, 20 bytes; the 100-byte file goes alone into a new batch, and
        // batches are never reopened once left.
        assert_eq!(got, vec![0, 1, 2, 3, 3]);
        assert_eq!(load, vec![(2, 15), (1, 5), (1, 100), (2, 1)]);
        let mut load = Vec::new();
        assert!(assign_batches(std::iter::empty(), &mut load, 1, 1)
            .unwrap()
            .is_empty());
        assert_eq!(load.len(), 1, "every vault has a batch");
    }

    /// A zero limit used to loop forever, opening batches; the limits are clamped to 1..=format.
    #[test]
    fn zero_limits_do_not_loop() {
        let mut load = Vec::new();
        let got = assign_batches([1, 2].into_iter(), &mut load, 0, 0).unwrap();
        assert_eq!(got, vec![0, 1]);
    }

    /// A run must never write a manifest its readers refuse (more than MAX_BATCHES batches).
    #[test]
    fn no_more_batches_than_a_manifest_holds() {
        let mut load = Vec::new();
        let n = format::MAX_BATCHES as u64;
        assert!(assign_batches((0..n).map(|_| 1), &mut load, 1, u64::MAX).is_ok());
        let mut load = Vec::new();
        let e = assign_batches((0..=n).map(|_| 1), &mut load, 1, u64::MAX).unwrap_err();
        assert!(matches!(e, Error::Usage(_)), "{e}");
    }
}
