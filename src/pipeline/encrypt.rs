//! `encrypt`: sources -> vault, resumable, as one overlapped pipeline:
//!
//! ```text
//! walker thread --(bounded channel)--> planner (this thread) --(rayon jobs)--> writer thread
//!   tree order        batches, chunks of small files,      seal + digests     packs, objects,
//!                     windows of large files, resume        on all cores       journal, manifest
//! ```
//!
//! The planner numbers units of work in walk order; the jobs seal them on all cores; the
//! writer ([`crate::pipeline::write`]) writes them back in that order. Memory is bounded by the buffer
//! pool (a job holds one buffer until the writer wrote it) and the walk channel: no stage
//! holds the tree, the work list or the manifest.

use std::collections::HashMap;

use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use crossbeam_channel::Sender;

use crate::crypto::{BatchKey, TreeMac};
use crate::error::{Error, IoContext, Result};
use crate::format::manifest::{check_path, Batch, Entry, EntryKind, Header, Name, TreeOrder};
use crate::format::{self, layout, ID_LEN};
use crate::fs::source::Source;
use crate::fs::tree::{self, Found, SourceEntry, SourceKind};
use crate::kms::keys::Kms;
use crate::kms::keyspec::KeySpec;
use crate::pipeline::journal::{Journal, Record, RunParams, RunRecord, ShardParams, SourceId};
use crate::pipeline::seal::{self, BufPool, ChunkItem, LargeFile, SealCtx};
use crate::pipeline::write::{entry_of, LargeStart, Msg, Writer};
use crate::progress::Progress;
use crate::store::{Location, Store};

pub use crate::pipeline::write::Failure;

/// What to encrypt and how.
#[derive(Clone, Debug)]
pub struct EncryptOptions {
    pub sources: Vec<PathBuf>,
    pub vault: Location,
    /// CMK id, ARN or alias; `None` = the default alias.
    pub key: Option<String>,
    /// Provider URL for new batches.
    pub kms_url: String,
    /// Further CMKs (each with its provider) every batch key is also wrapped under, by one
    /// `Encrypt` each: any one of them opens the vault alone.
    pub also_keys: Vec<KeySpec>,
    /// An incremental run: unchanged files are taken from this earlier vault without being
    /// read or sealed again (see [`crate::pipeline::since`]).
    pub since: Option<Location>,
    pub segment_size: u32,
    pub excludes: Vec<String>,
    pub conceal_names: bool,
    /// Demand an unfinished run to resume (running the same command again resumes anyway).
    pub resume: bool,
    pub jobs: usize,
    pub batch_max_files: u64,
    pub batch_max_bytes: u64,
    /// Files smaller than this are packed together.
    pub pack_threshold: u64,
    /// Sync written data before journaling it and before success (the default). `false`
    /// (`--no-sync`) leaves writeback to the kernel: still safe against a crash of envseal,
    /// not against a crash of the operating system (docs/FORMAT.md §7).
    pub sync: bool,
    /// Store extended attributes (`--no-xattrs`: not).
    pub xattrs: bool,
    /// One part of a plan's run (docs/FORMAT.md §6.6), `None` for a whole run.
    pub shard: Option<ShardRun>,
    /// `--compress zstd:LEVEL`: files below the pack threshold are sealed as compressed
    /// records (docs/FORMAT.md §4.5) at this Zstandard level.
    pub compress: Option<i32>,
}

/// What a part of a sharded run takes from its plan: the plan's vault id (shared by every
/// part, so that records and encryption contexts name the merged vault), which part it is,
/// and its range of paths. `plan` is the plan file, as the resume hint names it.
#[derive(Clone, Debug)]
pub struct ShardRun {
    pub plan: PathBuf,
    pub vault_id: [u8; ID_LEN],
    pub mark: crate::format::manifest::ShardMark,
    pub range: tree::PathRange,
}

impl EncryptOptions {
    /// `sources` into `vault` with the CLI's defaults: the default key of `kms_url`, default
    /// segment size, batch limits and pack threshold, one job per core, syncs and extended
    /// attributes on. Set fields with struct update syntax.
    pub fn new(
        sources: Vec<PathBuf>,
        vault: impl Into<Location>,
        kms_url: impl Into<String>,
    ) -> Self {
        EncryptOptions {
            sources,
            vault: vault.into(),
            key: None,
            kms_url: kms_url.into(),
            also_keys: Vec::new(),
            since: None,
            segment_size: format::DEFAULT_SEGMENT_SIZE,
            excludes: Vec::new(),
            conceal_names: false,
            resume: false,
            jobs: std::thread::available_parallelism().map_or(1, |n| n.get()),
            batch_max_files: format::BATCH_MAX_FILES,
            batch_max_bytes: format::BATCH_MAX_BYTES,
            pack_threshold: format::DEFAULT_PACK_THRESHOLD,
            sync: true,
            xattrs: true,
            shard: None,
            compress: None,
        }
    }
}

/// The outcome of a run.
#[derive(Clone, Debug, Default)]
pub struct EncryptReport {
    pub files: u64,
    pub bytes: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Further names of files stored once (hard links).
    pub hardlinks: u64,
    /// FIFOs and device nodes.
    pub specials: u64,
    /// Files taken over from the journal of an interrupted run.
    pub resumed_files: u64,
    pub batches: u64,
    /// `GenerateDataKey` calls made by this run.
    pub generated_keys: u64,
    /// Files (and their bytes) taken unchanged from the `--since` vault.
    pub reused_files: u64,
    pub reused_bytes: u64,
    /// Source bytes this run read and sealed (files and segments taken over from an
    /// interrupted run are not read again).
    pub bytes_read: u64,
    /// Holes and zero extents of the files this run sealed: neither read nor stored
    /// (docs/FORMAT.md §6.4).
    pub gap_bytes: u64,
    pub skipped: Vec<Failure>,
    pub failed: Vec<Failure>,
    pub seconds: f64,
    /// `Some` when the vault was already finished by an earlier run of the same command: this
    /// run encrypted nothing, only compared the sources' metadata with the vault's entries
    /// (the counts above describe the vault, not work done now).
    pub finished_before: Option<Staleness>,
}

/// How the live sources differ from a finished vault, by metadata only (the rule of
/// `--since`, [`crate::pipeline::since`]: a file is unchanged when its type, size, mtime, device, inode
/// and ctime match its entry; other entries by type, mode, owner and link target).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Staleness {
    /// Entries whose metadata no longer matches.
    pub changed: u64,
    /// Paths in the sources the vault does not hold.
    pub appeared: u64,
    /// Entries of the vault gone from the sources.
    pub vanished: u64,
}

impl Staleness {
    /// The sources still match the vault.
    pub fn up_to_date(&self) -> bool {
        *self == Staleness::default()
    }
}

/// Entries a chunk job takes at most, and plaintext bytes (its buffer bounds its records).
const CHUNK_ENTRIES: usize = 4096;

/// A file an interrupted run committed, as its journal holds it.
struct Done {
    src: SourceId,
    line: Vec<u8>,
    /// Bytes stored (the record's plaintext) ...
    size: u64,
    /// ... and the file's length, compared with the source's (they differ by its gaps).
    len: u64,
    mtime: (i64, u32),
    obj: u64,
    batch: u32,
    /// From the `--since` vault (not from this run's journal).
    from_since: bool,
}

/// Runs an encryption. `cancel` stops it between files and windows (the vault stays
/// resumable). A full disk is reported as [`Error::NoSpace`] with the command that resumes.
pub fn encrypt(
    opts: &EncryptOptions,
    kms: &Kms,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<EncryptReport> {
    encrypt_run(opts, kms, progress, cancel).map_err(|e| {
        if !e.is_no_space() {
            return e;
        }
        let path = match &e {
            Error::Io { path, .. } | Error::NoSpace { path, .. } => path.clone(),
            _ => PathBuf::from(opts.vault.to_string()),
        };
        let head =
            crate::store::open(&opts.vault).and_then(|s| crate::pipeline::journal::head(&*s));
        let then = match head {
            Ok(Some(crate::pipeline::journal::Head::Run(r))) => format!(
                "run `{}` again: it resumes where this run stopped",
                crate::pipeline::journal::resume_command(&opts.vault.to_string(), &r.params)
            ),
            _ => "run the same command again".into(),
        };
        Error::NoSpace { path, then }
    })
}

fn encrypt_run(
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
        also_keys: opts
            .also_keys
            .iter()
            .map(|k| format!("{}#{}", k.kms, k.key))
            .collect(),
        since: opts
            .since
            .as_ref()
            .map(|l| l.absolute().map(|a| B64.encode(a.to_string().as_bytes())))
            .transpose()?,
        shard: opts
            .shard
            .as_ref()
            .map(|s| -> Result<ShardParams> {
                Ok(ShardParams {
                    plan: B64.encode(
                        std::path::absolute(&s.plan)
                            .at(&s.plan)?
                            .as_os_str()
                            .as_bytes(),
                    ),
                    index: s.mark.index,
                    count: s.mark.count,
                    from: s.range.from.as_ref().map(|p| B64.encode(p)),
                    until: s.range.until.as_ref().map(|p| B64.encode(p)),
                })
            })
            .transpose()?,
        compress: opts.compress,
    };
    if opts.shard.is_some() && opts.since.is_some() {
        return Err(Error::Usage(
            "--since cannot be combined with --plan: a part of a sharded run is a new vault".into(),
        ));
    }
    let mut exclude = tree::excludes(&opts.excludes)?;
    if let Some(s) = &opts.shard {
        exclude = exclude.within(s.range.clone());
    }
    check_vault_outside(opts, &sources)?;
    tree::order_sources(&sources)?;

    // The vault: new, or an unfinished run of the same command.
    let store = crate::store::open(&opts.vault)?;
    let vault: &dyn Store = &*store;
    let vault_existed = vault.root_exists()?;
    // One writer at a time, from before anything of the vault is read (docs/LIFECYCLE.md).
    let _lock = vault.lock(true)?;
    let _created = Created {
        vault,
        armed: !vault_existed,
    };
    if let Some(mut report) = finished_run(vault, &params, opts, kms, &sources, &exclude, progress)?
    {
        progress.finish();
        report.seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    }
    let earlier = match &opts.since {
        Some(p) => {
            if p.same_place(&opts.vault) {
                return Err(Error::Usage(format!(
                    "--since {p}: that is the vault being written; name the earlier vault"
                )));
            }
            let e = crate::pipeline::since::Earlier::load(crate::store::open(p)?, kms)?;
            if e.segment_size != opts.segment_size {
                return Err(Error::Usage(format!(
                    "--since {}: its segment size is {}, this run's {}; use --segment-size {}",
                    p, e.segment_size, opts.segment_size, e.segment_size
                )));
            }
            Some(e)
        }
        None => None,
    };
    let (mut journal, run, loaded) = open_vault(
        vault,
        &params,
        opts.resume,
        earlier
            .as_ref()
            .map(|e| e.vault_id)
            .or(opts.shard.as_ref().map(|s| s.vault_id)),
    )?;
    let mut unstarted = Unstarted {
        vault,
        vault_existed,
        armed: loaded.as_ref().is_none_or(|l| l.batches.is_empty()),
    };
    let vault_id: [u8; ID_LEN] = format::from_hex(&run.vault_id)
        .ok_or_else(|| Error::format(vault.url(), "bad vault id in journal"))?;
    // A plan made again at the same path (the same cuts, another vault id) would otherwise
    // resume a part that no part of the new plan merges with.
    if let Some(s) = opts.shard.as_ref().filter(|s| s.vault_id != vault_id) {
        return Err(another_plan(vault, &run.vault_id, s));
    }
    let header = Header {
        vault_id,
        created: run.created.clone(),
        generator: format!("envseal {}", env!("CARGO_PKG_VERSION")),
        segment_size: opts.segment_size,
        conceal_names: opts.conceal_names,
        shard: opts.shard.as_ref().map(|s| s.mark),
    };

    // An interrupted run: unwrap its batch keys again (one Decrypt each, commitments checked)
    // and take what it committed.
    let mut batches: Vec<Batch> = Vec::new();
    let mut keys: Vec<Arc<BatchKey>> = Vec::new();
    let mut objects: Vec<[u8; ID_LEN]> = Vec::new();
    let mut done: HashMap<Vec<u8>, Done> = HashMap::new();
    // The last segment checkpoint of each large file in flight, by (device, inode).
    let mut ckpts: HashMap<(u64, u64), crate::pipeline::journal::Ckpt> = HashMap::new();
    let mut load: (u64, u64) = (0, 0);
    if let Some(loaded) = &loaded {
        // Batch records are not authenticated, but the run record matched this command line:
        // a batch must be wrapped by this run's KMS, or the rest of the run would be encrypted
        // under a key held elsewhere (say, an attacker's store named in an edited journal).
        let mut run_kms = Vec::new();
        if !loaded.batches.is_empty() {
            run_kms.push(kms.provider(&opts.kms_url)?.url());
            for k in &opts.also_keys {
                run_kms.push(kms.provider(&k.kms)?.url());
            }
            // An incremental run's journal starts with the earlier vault's batches.
            for b in earlier.iter().flat_map(|e| &e.batches) {
                run_kms.extend(b.wrapped.iter().map(|w| w.kms.clone()));
            }
        }
        for (i, b) in loaded.batches.iter().enumerate() {
            if let Some(w) = b.wrapped.iter().find(|w| !run_kms.contains(&w.kms)) {
                return Err(Error::integrity(
                    format!("journal batch {i}"),
                    format!(
                        "wrapped by {}, not by this run's KMS {}",
                        w.kms,
                        run_kms.join(", ")
                    ),
                ));
            }
            keys.push(Arc::new(kms.unwrap(&vault_id, b)?));
            batches.push(b.clone());
        }
        if let Some(k) = keys.first() {
            journal.set_mac_key(k.journal_mac_key());
            let name_key = opts.conceal_names.then(|| k.name_key());
            let recs = journal.authenticated(loaded)?;
            for r in recs {
                match r {
                    Record::Object { obj, id } => {
                        if obj != objects.len() as u64 {
                            return Err(Error::integrity("journal", "objects out of order"));
                        }
                        objects.push(id);
                    }
                    Record::Gen => {}
                    Record::Ckpt(c) => {
                        if c.obj >= objects.len() as u64 || c.batch as usize >= batches.len() {
                            return Err(Error::integrity(
                                "journal",
                                "checkpoint names an unknown object or batch",
                            ));
                        }
                        let mut c = *c;
                        let prev = ckpts.remove(&(c.src.dev, c.src.ino));
                        if let Some(l) = c.lens.as_mut().filter(|l| l.from > 0) {
                            // A compressed record's lengths continue those of the file's
                            // previous checkpoint of the same object; else they are not whole
                            // (the file is then sealed again from its start).
                            match prev.filter(|p| p.obj == c.obj).and_then(|p| p.lens) {
                                Some(mut all)
                                    if all.from == 0 && all.lens.len() as u64 == l.from =>
                                {
                                    all.lens.append(&mut l.lens);
                                    *l = all;
                                }
                                _ => c.lens = None,
                            }
                        }
                        ckpts.insert((c.src.dev, c.src.ino), c);
                    }
                    Record::Done { src, rec } => {
                        let Some(src) = src else { continue };
                        let mut e = Entry::from_line(&rec, &header)
                            .map_err(|why| Error::integrity("journal", why))?;
                        if let Some(nk) = &name_key {
                            e.reveal(nk)?;
                        }
                        if let (Some(p), EntryKind::File(f)) = (e.path.clear(), &e.kind) {
                            if f.obj >= objects.len() as u64 || f.batch as usize >= batches.len() {
                                return Err(Error::integrity(
                                    "journal",
                                    "entry names an unknown object or batch",
                                ));
                            }
                            done.insert(
                                p.to_vec(),
                                Done {
                                    src,
                                    line: rec.clone(),
                                    size: f.size,
                                    len: f.file_len(),
                                    mtime: (e.mtime, e.mtime_nsec),
                                    obj: f.obj,
                                    batch: f.batch,
                                    from_since: false,
                                },
                            );
                        }
                    }
                }
            }
        }
    }

    if loaded.is_some() {
        // Objects taken over from a --since vault stay: its unchanged files name them.
        let inherited: std::collections::HashSet<[u8; ID_LEN]> = earlier
            .iter()
            .flat_map(|e| e.objects.iter().map(|o| o.id))
            .collect();
        let kept: Vec<u64> = ckpts
            .values()
            .map(|c| c.obj)
            .chain((0..objects.len() as u64).filter(|&i| inherited.contains(&objects[i as usize])))
            .collect();
        tidy_resumed(vault, &vault_id, &batches, &objects, &done, &kept)?;
    }

    // New files fill the interrupted run's last batch up to the limits, counting what it
    // holds already (an upper bound: some of those files may have changed since).
    if let Some(last) = keys.len().checked_sub(1) {
        for d in done.values().filter(|d| d.batch as usize == last) {
            load.0 += 1;
            load.1 = load.1.saturating_add(d.size);
        }
    }
    // An incremental run: the earlier vault's batches and objects are this vault's first
    // ones (a new run puts them there; a resumed one finds them in its journal), its
    // unchanged files candidates for reuse beside what the journal committed; new files go
    // to a new batch.
    if let Some(e) = &earlier {
        let inherited = match &loaded {
            None => {
                e.inherit(vault, &mut journal)?;
                unstarted.armed = false;
                batches = e.batches.clone();
                keys = e.keys.clone();
                objects = e.objects.iter().map(|o| o.id).collect();
                true
            }
            Some(_) => {
                batches.len() >= e.batches.len()
                    && objects.len() >= e.objects.len()
                    && batches.iter().zip(&e.batches).all(|(a, b)| a == b)
                    && objects.iter().zip(&e.objects).all(|(a, o)| *a == o.id)
            }
        };
        if inherited {
            let name_key = opts.conceal_names.then(|| keys[0].name_key());
            for (p, (entry, src)) in &e.files {
                let Some(f) = entry.file() else { continue };
                if done.contains_key(p) {
                    continue;
                }
                done.insert(
                    p.clone(),
                    Done {
                        src: *src,
                        line: entry.to_line_src(name_key.as_ref(), Some(src))?,
                        size: f.size,
                        len: f.file_len(),
                        mtime: (entry.mtime, entry.mtime_nsec),
                        obj: f.obj,
                        batch: f.batch,
                        from_since: true,
                    },
                );
            }
            if keys.len() == e.batches.len() {
                load = (u64::MAX, u64::MAX);
            }
        }
    }
    let (jobs, lowered) = crate::limits::clamp_jobs(opts.jobs);
    if let Some(n) = lowered {
        progress.notice(&n);
    }
    let (window, buf_size) = seal::window_geometry(opts.segment_size, opts.pack_threshold);
    // Enough buffers for every core to seal while the writer writes and a few units wait to
    // be written in order; fewer for huge segments (peak memory, docs/PERFORMANCE.md).
    let count = (2 * jobs + 4).min(((256usize << 20) / buf_size).max(jobs + 1));
    let pool_bufs = BufPool::new(count, buf_size);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(jobs)
        .build()
        .map_err(|e| Error::Runtime(format!("thread pool: {e}")))?;
    let stop = AtomicBool::new(false);
    let ctx = SealCtx {
        vault_id,
        segment_size: opts.segment_size,
        compress: opts.compress,
    };
    let resumed_batches = batches.len();
    let object_ids = objects.clone();
    let mut writer = Writer::new(
        Arc::clone(&store),
        header,
        journal,
        batches,
        keys.clone(),
        objects,
        &pool_bufs,
        progress,
        &stop,
    );
    writer.sync = opts.sync;
    if resumed_batches > 0 {
        writer.start_generation()?;
    }
    let mut report = EncryptReport::default();
    let mut planner = Planner {
        opts,
        store: vault,
        kms,
        key: &key,
        vault_id,
        keys,
        load,
        generated: 0,
        reused: (0, 0),
        ctx: &ctx,
        window,
        buf_size,
        done,
        links: HashMap::new(),
        ckpts,
        objects: object_ids,
        resumed_read: 0,
        unit: 0,
        chunk: Vec::new(),
        chunk_bytes: 0,
        stop: &stop,
        cancel,
        progress,
        pool: &pool_bufs,
        skipped: Vec::new(),
        failed: Vec::new(),
        order: TreeOrder::default(),
    };

    let (wtx, wrx) = crossbeam_channel::bounded::<Msg>(4 * jobs + 16);
    let (etx, erx) = crossbeam_channel::bounded::<Found>(4096);
    let xattrs = opts.xattrs;
    // The walk that feeds the planner goes at the pace of the work (its channel is bounded):
    // a display that shows totals gets them from a metadata-only walk of its own.
    let ahead = progress.wants_totals();
    // Set when the work is over: the counting walk has nothing left to tell.
    let over = AtomicBool::new(false);
    let outcome = std::thread::scope(|scope| {
        if ahead {
            scope.spawn(|| {
                let mut totals = Totals::default();
                let halted = || {
                    [&stop, cancel, &over]
                        .iter()
                        .any(|f| f.load(Ordering::Relaxed))
                };
                let r = tree::walk_each(&sources, &exclude, false, |f| {
                    totals.add(&f, progress);
                    !halted()
                });
                if r.is_ok() && !halted() {
                    progress.start(totals.files, totals.bytes);
                }
            });
        }
        let walker = scope.spawn(|| {
            let mut totals = Totals::default();
            let r = tree::walk_each(&sources, &exclude, xattrs, |f| {
                if !ahead {
                    totals.add(&f, progress);
                }
                etx.send(f).is_ok()
            });
            drop(etx);
            if r.is_err() {
                // An incomplete walk must not end in a manifest that looks complete.
                stop.store(true, Ordering::Relaxed);
            }
            if !ahead {
                progress.start(totals.files, totals.bytes);
            }
            r
        });
        let writer_thread = scope.spawn(|| writer.run(wrx, cancel));
        let planned = pool.in_place_scope(|s| planner.plan(s, &erx, &wtx));
        if planned.is_err() {
            stop.store(true, Ordering::Relaxed);
        }
        drop(erx);
        drop(wtx);
        let walked = walker
            .join()
            .unwrap_or_else(|_| Err(Error::Runtime("the walker panicked".into())));
        let written = writer_thread
            .join()
            .unwrap_or_else(|_| Err(Error::Runtime("the writer panicked".into())));
        over.store(true, Ordering::Relaxed);
        (planned, walked, written)
    });
    let (planned, walked, written) = outcome;
    if planner.generated > 0 || resumed_batches > 0 {
        unstarted.armed = false;
    }
    planned?;
    walked?;
    let written = written?;
    progress.finish();
    report.files = written.files;
    report.bytes = written.bytes;
    report.dirs = written.dirs;
    report.symlinks = written.symlinks;
    report.hardlinks = written.hardlinks;
    report.specials = written.specials;
    report.resumed_files = written.resumed_files;
    report.failed = planner.failed;
    report.failed.extend(written.failed);
    report.skipped = planner.skipped;
    report.generated_keys = planner.generated;
    (report.reused_files, report.reused_bytes) = planner.reused;
    report.bytes_read = written.read_bytes;
    report.gap_bytes = written.gap_bytes;
    if planner.resumed_read > 0 {
        log::info!(
            "read back {} bytes of checkpointed objects",
            planner.resumed_read
        );
    }
    report.batches = planner.keys.len() as u64;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// The progress totals of a walk: files and bytes, each inode once (later names of a
/// multiply-linked file become hard-link entries, as the planner decides, and are not read).
#[derive(Default)]
struct Totals {
    files: u64,
    bytes: u64,
    linked: std::collections::HashSet<(u64, u64)>,
}

impl Totals {
    fn add(&mut self, f: &Found, progress: &dyn Progress) {
        let Found::Entry(e) = f else { return };
        if let SourceKind::File { size, device } = e.kind {
            if e.nlink < 2 || device || self.linked.insert((e.dev, e.ino)) {
                self.files += 1;
                self.bytes = self.bytes.saturating_add(size);
            }
        }
        progress.walking(self.files, self.bytes);
    }
}

/// Turns the walk into units of work, in order.
struct Planner<'a> {
    opts: &'a EncryptOptions,
    store: &'a dyn Store,
    kms: &'a Kms,
    key: &'a str,
    vault_id: [u8; ID_LEN],
    keys: Vec<Arc<BatchKey>>,
    /// Files and bytes in the current (last) batch.
    load: (u64, u64),
    generated: u64,
    /// Files and bytes reused from the `--since` vault.
    reused: (u64, u64),
    ctx: &'a SealCtx,
    window: u64,
    buf_size: usize,
    done: HashMap<Vec<u8>, Done>,
    /// The first path of each multiply-linked file (by device and inode): later paths of the
    /// same inode become hard-link entries naming it.
    links: HashMap<(u64, u64), Vec<u8>>,
    ckpts: HashMap<(u64, u64), crate::pipeline::journal::Ckpt>,
    /// Object ids an interrupted run listed (checkpointed objects are among them).
    objects: Vec<[u8; ID_LEN]>,
    /// Object bytes read back to take up checkpointed files.
    resumed_read: u64,
    unit: u64,
    chunk: Vec<ChunkItem>,
    chunk_bytes: usize,
    stop: &'a AtomicBool,
    cancel: &'a AtomicBool,
    progress: &'a dyn Progress,
    pool: &'a BufPool,
    skipped: Vec<Failure>,
    failed: Vec<Failure>,
    /// The walk's entries so far, as the reader checks their order.
    order: TreeOrder,
}

impl<'a> Planner<'a> {
    fn halted(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || self.cancel.load(Ordering::Relaxed)
    }

    fn plan<'s>(
        &mut self,
        s: &rayon::Scope<'s>,
        walk: &crossbeam_channel::Receiver<Found>,
        tx: &Sender<Msg>,
    ) -> Result<()>
    where
        'a: 's,
    {
        for f in walk.iter() {
            if self.halted() {
                break;
            }
            match f {
                Found::Skipped(sk) => {
                    let f = Failure {
                        path: sk.path.display().to_string(),
                        why: sk.why.clone(),
                    };
                    self.progress
                        .notice(&format!("skipped {}: {}", f.path, f.why));
                    if sk.error {
                        self.failed.push(f);
                    } else {
                        self.skipped.push(f);
                    }
                }
                Found::Entry(e) => self.entry(s, e, tx)?,
            }
        }
        if self.keys.is_empty() && !self.halted() {
            // Every vault has a batch: its key authenticates the manifest.
            self.new_batch(tx)?;
        }
        self.flush(s, tx)
    }

    fn entry<'s>(&mut self, s: &rayon::Scope<'s>, e: SourceEntry, tx: &Sender<Msg>) -> Result<()>
    where
        'a: 's,
    {
        // The reader's tree rules (docs/FORMAT.md §6.2: tree order, every parent a directory
        // listed before, no path twice), by the reader's own code, before anything of the
        // entry is committed: a walk gone wrong costs this entry, never the vault.
        if let Err(why) = admit(&mut self.order, &e) {
            let f = Failure {
                path: e.source.display(),
                why: format!("not stored, the vault's reader would refuse it: {why}"),
            };
            self.progress
                .notice(&format!("failed {}: {}", f.path, f.why));
            self.failed.push(f);
            return Ok(());
        }
        let (size, device) = match e.kind {
            SourceKind::File { size, device } => (size, device),
            SourceKind::Dir => {
                let entry = entry_of(&e, EntryKind::Dir);
                return self.push(s, ChunkItem::Entry(entry), 0, tx);
            }
            SourceKind::Symlink { ref target } => {
                let entry = entry_of(&e, EntryKind::Symlink(Name::Clear(target.clone())));
                return self.push(s, ChunkItem::Entry(entry), 0, tx);
            }
            SourceKind::Fifo | SourceKind::CharDev(_) | SourceKind::BlockDev(_) => {
                let kind = match e.kind {
                    SourceKind::CharDev(d) => EntryKind::CharDev(d),
                    SourceKind::BlockDev(d) => EntryKind::BlockDev(d),
                    _ => EntryKind::Fifo,
                };
                return self.push(s, ChunkItem::Entry(entry_of(&e, kind)), 0, tx);
            }
        };
        if e.nlink > 1 && !device {
            match self.links.entry((e.dev, e.ino)) {
                std::collections::hash_map::Entry::Occupied(first) => {
                    let kind = EntryKind::HardLink(Name::Clear(first.get().clone()));
                    return self.push(s, ChunkItem::Entry(entry_of(&e, kind)), 0, tx);
                }
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(e.path.clone());
                }
            }
        }
        if let Some(d) = self.done.remove(&e.path) {
            let unchanged = d.src.dev == e.dev
                && d.src.ino == e.ino
                && (d.src.ctime, d.src.ctime_nsec) == (e.ctime, e.ctime_nsec)
                && d.len == size
                && d.mtime == (e.mtime, e.mtime_nsec);
            if unchanged {
                self.progress.bytes(size);
                if d.from_since {
                    self.reused.0 += 1;
                    self.reused.1 += size;
                }
                let item = ChunkItem::Reused(seal::Reused {
                    line: d.line,
                    src: d.src,
                    size: d.size,
                    obj: d.obj,
                    linkable: (e.nlink > 1).then(|| e.path.clone()),
                });
                return self.push(s, item, 0, tx);
            }
        }
        if let Some(c) = self.ckpts.remove(&(e.dev, e.ino)) {
            if !device && size >= self.opts.pack_threshold {
                if let Some(start) = self.resume_at(&e, &c) {
                    self.flush(s, tx)?;
                    return self.dispatch_large(s, start, tx);
                }
                self.progress.notice(&format!(
                    "{}: changed since its checkpoint; sealing it again from the start",
                    e.source.display()
                ));
            }
        }
        if format::segment_count(size, self.opts.segment_size) > format::MAX_SEGMENTS {
            self.failed.push(Failure {
                path: e.source.display(),
                why: format!(
                    "too large for segment size {} (over 2^32 segments)",
                    self.opts.segment_size
                ),
            });
            return Ok(());
        }
        let batch = self.batch_for(size, tx)?;
        let key = Arc::clone(&self.keys[batch as usize]);
        if size < self.opts.pack_threshold && !device {
            let len = crate::pipeline::seal::small_record_room(
                size,
                self.opts.segment_size,
                self.opts.compress.is_some(),
            ) as usize;
            let item = ChunkItem::Small {
                entry: e,
                batch,
                key,
            };
            return self.push(s, item, len, tx);
        }
        self.flush(s, tx)?;
        self.large(s, e, device, batch, key, tx)
    }

    /// Adds an item to the open chunk, first dispatching the chunk if the item would not fit.
    fn push<'s>(
        &mut self,
        s: &rayon::Scope<'s>,
        item: ChunkItem,
        len: usize,
        tx: &Sender<Msg>,
    ) -> Result<()>
    where
        'a: 's,
    {
        if self.chunk_bytes + len > self.buf_size || self.chunk.len() >= CHUNK_ENTRIES {
            self.flush(s, tx)?;
        }
        self.chunk.push(item);
        self.chunk_bytes += len;
        Ok(())
    }

    fn next_unit(&mut self) -> u64 {
        self.unit += 1;
        self.unit - 1
    }

    /// Dispatches the open chunk as one job.
    fn flush<'s>(&mut self, s: &rayon::Scope<'s>, tx: &Sender<Msg>) -> Result<()>
    where
        'a: 's,
    {
        if self.chunk.is_empty() {
            return Ok(());
        }
        let items = std::mem::take(&mut self.chunk);
        self.chunk_bytes = 0;
        let Some(mut buf) = self.pool.take(self.stop) else {
            return Ok(());
        };
        let unit = self.next_unit();
        let tx = tx.clone();
        let (ctx, cancel, progress) = (self.ctx, self.cancel, self.progress);
        s.spawn(move |_| {
            let (items, used) = seal::seal_chunk(ctx, items, &mut buf, cancel, progress);
            let _ = tx.send(Msg::Chunk {
                unit,
                buf,
                used,
                items,
            });
        });
        Ok(())
    }

    /// Dispatches a large file: its start to the writer, then one job per window.
    fn large<'s>(
        &mut self,
        s: &rayon::Scope<'s>,
        e: SourceEntry,
        device: bool,
        batch: u32,
        key: Arc<BatchKey>,
        tx: &Sender<Msg>,
    ) -> Result<()>
    where
        'a: 's,
    {
        let unit = self.next_unit();
        let path = e.source.display();
        let src = match Source::open(&e, device) {
            Ok(src) => src,
            Err(err) => {
                let _ = tx.send(Msg::Failed {
                    unit,
                    path,
                    why: err.to_string(),
                });
                return Ok(());
            }
        };
        let mut e = e;
        if e.xattrs_at_open {
            e.xattrs = src.xattrs(&e.path);
        }
        let size = src.size();
        let (h, fk) = seal::new_file(self.ctx, &key, size).at(self.opts.vault.to_string())?;
        let mac = TreeMac::new(fk.mac_key());
        let file = Arc::new(LargeFile {
            src,
            keys: fk,
            header: h.encode(),
            size,
            window: self.window,
            compress: self.opts.compress,
        });
        let start = LargeStart {
            entry: e,
            file,
            batch,
            salt: h.salt,
            mac,
            ct: crate::crypto::CtDigest::new(),
            device,
            resume: None,
            stream: None,
        };
        self.send_large(s, unit, start, tx)
    }

    /// Dispatches a large file taken up at its checkpoint.
    fn dispatch_large<'s>(
        &mut self,
        s: &rayon::Scope<'s>,
        start: LargeStart,
        tx: &Sender<Msg>,
    ) -> Result<()>
    where
        'a: 's,
    {
        let unit = self.next_unit();
        self.send_large(s, unit, start, tx)
    }

    /// Sends a large file's start to the writer, then one job per window still to seal.
    fn send_large<'s>(
        &mut self,
        s: &rayon::Scope<'s>,
        unit: u64,
        start: LargeStart,
        tx: &Sender<Msg>,
    ) -> Result<()>
    where
        'a: 's,
    {
        let file = Arc::clone(&start.file);
        let windows = file.windows(self.opts.segment_size);
        let first = start.resume.map_or(0, |(_, w)| w);
        if tx
            .send(Msg::Large {
                unit,
                file: Box::new(start),
            })
            .is_err()
        {
            return Ok(());
        }
        for w in first..windows {
            let Some(mut buf) = self.pool.take(self.stop) else {
                break;
            };
            let (tx, file, seg, cancel) = (
                tx.clone(),
                Arc::clone(&file),
                self.opts.segment_size,
                self.cancel,
            );
            s.spawn(move |_| {
                let result = if cancel.load(Ordering::Relaxed) {
                    Err(seal::FileError::Cancelled)
                } else {
                    file.seal_window(seg, w, &mut buf)
                };
                let _ = tx.send(Msg::Window {
                    unit,
                    window: w,
                    buf,
                    result,
                });
            });
        }
        Ok(())
    }

    /// A large file's state at its segment checkpoint, if the source is provably the one
    /// checkpointed (device, inode, size, mtime, ctime) and the object's prefix opens under
    /// its keys; `None` otherwise (the file is sealed again with a fresh salt).
    fn resume_at(
        &mut self,
        e: &SourceEntry,
        c: &crate::pipeline::journal::Ckpt,
    ) -> Option<LargeStart> {
        let same = |s: &Source| {
            s.size() == c.size
                && s.mtime() == (c.mtime, c.mtime_nsec)
                && s.ctime() == (c.src.ctime, c.src.ctime_nsec)
        };
        let key = Arc::clone(self.keys.get(c.batch as usize)?);
        let id = self.objects.get(c.obj as usize)?;
        let src = Source::open(e, false).ok()?;
        if !same(&src) || c.segs % self.window != 0 {
            return None;
        }
        if self.opts.compress.is_some() {
            if let Some(p) = &c.prefix {
                // A local vault: the object's prefix is read back at the offsets the
                // checkpoints' stored lengths give, hashed (it must be the checkpoint's) and
                // opened to rebuild the digests; the file goes on after it. Lengths that are
                // not whole (a journal not written by envseal) start the file over.
                let l = c.lens.as_ref().filter(|l| l.from == 0)?;
                let obj = self
                    .store
                    .open(&crate::format::manifest::object_name(id))
                    .ok()??;
                let (r, ct) = seal::resume_compressed(self.ctx, &key, &*obj, c.size, p, &l.lens)?;
                self.resumed_read += r.read;
                self.progress
                    .bytes(c.segs * u64::from(self.opts.segment_size));
                let mut start = self.resumed_start(e, src, r, c, c.segs / self.window);
                start.stream = Some(crate::pipeline::write::StreamState {
                    ct,
                    pos: p.rpos,
                    stored: l.lens.clone(),
                });
                return Some(start);
            }
            // Object storage takes only the header checkpoint of a compressed record: it is
            // sealed again from its start under that header, and the parts already uploaded
            // come out the same (docs/FORMAT.md §7).
            let r = seal::resume_from_source(self.ctx, &key, c.head.as_ref()?, &src, c.size, 0)?;
            return Some(self.resumed_start(e, src, r, c, 0));
        }
        // The object read back where it can be (a local vault); else the source's prefix
        // sealed again under the checkpoint's header (object storage).
        let r = match (
            self.store.open(&crate::format::manifest::object_name(id)),
            &c.head,
        ) {
            (Ok(Some(obj)), _) => seal::resume_large(self.ctx, &key, &*obj, c.size, c.segs)?,
            (_, Some(head)) => {
                seal::resume_from_source(self.ctx, &key, head, &src, c.size, c.segs)?
            }
            _ => return None,
        };
        self.resumed_read += r.read;
        // Skip the prefix in the progress totals: it is done.
        self.progress
            .bytes(c.segs * u64::from(self.opts.segment_size));
        Some(self.resumed_start(e, src, r, c, c.segs / self.window))
    }

    /// The start of a large file taken up at checkpoint `c`, its first `next` windows done.
    fn resumed_start(
        &self,
        e: &SourceEntry,
        src: Source,
        r: seal::Resumed,
        c: &crate::pipeline::journal::Ckpt,
        next: u64,
    ) -> LargeStart {
        let file = Arc::new(LargeFile {
            src,
            keys: r.keys,
            header: r.header,
            size: c.size,
            window: self.window,
            compress: self.opts.compress,
        });
        let mut entry = e.clone();
        if entry.xattrs_at_open {
            entry.xattrs = file.src.xattrs(&entry.path);
        }
        LargeStart {
            entry,
            file,
            batch: c.batch,
            salt: r.salt,
            mac: r.mac,
            ct: r.ct,
            device: false,
            resume: Some((c.obj, next)),
            stream: None,
        }
    }

    /// The batch of the next file, opening a new one (one GenerateDataKey) past the limits.
    fn batch_for(&mut self, size: u64, tx: &Sender<Msg>) -> Result<u32> {
        let max_files = self.opts.batch_max_files.clamp(1, format::BATCH_MAX_FILES);
        let max_bytes = self.opts.batch_max_bytes.clamp(1, format::BATCH_MAX_BYTES);
        let (n, b) = self.load;
        // A file larger than the byte limit goes alone into an empty batch.
        let fits = n < max_files && (n == 0 || b.saturating_add(size) <= max_bytes);
        if self.keys.is_empty() || !fits {
            self.new_batch(tx)?;
        }
        self.load.0 += 1;
        self.load.1 = self.load.1.saturating_add(size);
        Ok(self.keys.len() as u32 - 1)
    }

    /// One GenerateDataKey; the writer puts the key file and the journal record on disk
    /// before any ciphertext of the batch (the channel keeps the order).
    fn new_batch(&mut self, tx: &Sender<Msg>) -> Result<()> {
        if self.keys.len() >= format::MAX_BATCHES {
            return Err(Error::Usage(format!(
                "this run needs more than {} batches (data keys), the most a vault holds; raise the batch limits or split the sources",
                format::MAX_BATCHES
            )));
        }
        let batch_id: [u8; ID_LEN] = format::random().at(self.opts.vault.to_string())?;
        let mut specs = vec![KeySpec {
            kms: self.opts.kms_url.clone(),
            key: self.key.to_string(),
        }];
        specs.extend(self.opts.also_keys.iter().cloned());
        let (b, k) = self.kms.generate_all(&specs, &self.vault_id, batch_id)?;
        let k = Arc::new(k);
        self.keys.push(Arc::clone(&k));
        self.generated += 1;
        self.load = (0, 0);
        tx.send(Msg::Batch { batch: b, key: k })
            .map_err(|_| Error::Runtime("the vault writer stopped".into()))
    }
}

/// Refuses a vault inside one of the sources (it would encrypt itself).
fn check_vault_outside(opts: &EncryptOptions, sources: &[PathBuf]) -> Result<()> {
    let Some(vault) = opts.vault.local_dir() else {
        return Ok(());
    };
    let vault_real = crate::fs::resolved(vault);
    for s in sources {
        // A source that is a symlink is stored as a link, not followed: resolve its parent.
        let s_real = match (s.parent(), s.file_name()) {
            (Some(parent), Some(name)) => crate::fs::resolved(parent).join(name),
            _ => crate::fs::resolved(s),
        };
        if vault.starts_with(s)
            || std::path::absolute(vault).is_ok_and(|v| v.starts_with(s))
            || vault_real.starts_with(&s_real)
        {
            return Err(Error::Usage(format!(
                "the vault {} is inside the source {}; choose a vault outside the sources",
                vault.display(),
                s.display()
            )));
        }
    }
    Ok(())
}

/// The reader's rules for a walked entry in walk order: its path ([`check_path`]) and its
/// place in the tree ([`TreeOrder`]).
fn admit(order: &mut TreeOrder, e: &SourceEntry) -> std::result::Result<(), String> {
    check_path(&e.path)?;
    order.push(&e.path, matches!(e.kind, SourceKind::Dir))
}

/// Creates the vault and its journal, or opens the journal of an unfinished run of the same
/// command. Refuses finished vaults and foreign non-empty directories.
fn open_vault(
    vault: &dyn Store,
    params: &RunParams,
    must_resume: bool,
    vault_id: Option<[u8; ID_LEN]>,
) -> Result<(Journal, RunRecord, Option<crate::pipeline::journal::Loaded>)> {
    let shown = vault.url();
    if vault.len(layout::MANIFEST)?.is_some() {
        return Err(Error::Usage(format!(
            "{shown} is a finished vault; refusing to overwrite it (choose another -o, or delete it first)"
        )));
    }
    // One listing (on object storage a vault's is paged) answers both questions below.
    let listed = vault.list("")?;
    let unstarted = crate::pipeline::leftovers::only_unstarted(vault, &listed);
    if vault.len(layout::JOURNAL)?.is_some() && !unstarted {
        let (journal, loaded) = Journal::open(vault)?;
        if loaded.run.params != *params {
            return Err(Error::Usage(format!(
                "{shown} holds an unfinished run with other arguments, started by: {}; run that command again to finish it, or choose another -o",
                crate::pipeline::journal::resume_command(&shown, &loaded.run.params)
            )));
        }
        let run = loaded.run.clone();
        return Ok((journal, run, Some(loaded)));
    }
    if must_resume {
        return Err(Error::Usage(format!(
            "--resume: {shown} has no unfinished run to resume"
        )));
    }
    if !listed.is_empty() {
        if !unstarted {
            return Err(Error::Usage(format!(
                "{shown} exists and is not empty; choose another -o (a new directory or prefix) for the vault"
            )));
        }
        // A run killed before its first batch record: it wrote no ciphertext.
        crate::pipeline::leftovers::clear_unstarted(vault)?;
    }
    vault.create_root()?;
    let run = RunRecord {
        kind: "run".into(),
        format: format::FORMAT_VERSION,
        vault_id: match vault_id {
            Some(id) => format::to_hex(&id),
            None => format::to_hex(&format::random::<ID_LEN>().at(&shown)?),
        },
        created: now_rfc3339(),
        params: params.clone(),
    };
    let journal = Journal::create(vault, &run)?;
    Ok((journal, run, None))
}

/// A part of the same shard of a plan made again (another vault id) at the same path: it
/// would not merge with the new plan's other parts.
fn another_plan(vault: &dyn Store, vault_id: &str, s: &ShardRun) -> Error {
    Error::Usage(format!(
        "{} holds a part of another plan (vault id {vault_id}; the plan {} says {}); encrypt this part into another -o, or delete it first",
        vault.url(),
        s.plan.display(),
        format::to_hex(&s.vault_id)
    ))
}

/// A run of the same command that wrote its manifest is finished, whatever moment it was
/// killed at afterwards: its journal is either still whole (its run record names these
/// arguments) or already the receipt (a keyed MAC of them, checked with batch 0's key).
/// Tidies what the kill left (objects and key files no manifest record names, the journal
/// not yet turned into the receipt) and reports what the manifest holds. `None`: not this
/// command's finished vault.
///
/// Then compares the sources with the vault by metadata (nothing is read): the report's
/// `finished_before` says whether they still match.
fn finished_run(
    vault: &dyn Store,
    params: &RunParams,
    opts: &EncryptOptions,
    kms: &Kms,
    sources: &[PathBuf],
    exclude: &tree::Select,
    progress: &dyn Progress,
) -> Result<Option<EncryptReport>> {
    use crate::pipeline::journal::Head;
    if vault.len(layout::MANIFEST)?.is_none() {
        return Ok(None);
    }
    let head = match crate::pipeline::journal::head(vault)? {
        None | Some(Head::Unreadable) => return Ok(None),
        Some(h) => h,
    };
    let mut m = crate::pipeline::vault::read_manifest(vault, layout::MANIFEST)?;
    let vault_id = format::to_hex(&m.header.vault_id);
    let same_id = match &head {
        Head::Run(r) => r.vault_id == vault_id && r.params == *params,
        Head::Finished(r) => r.vault_id == vault_id,
        Head::Unreadable => false,
    };
    let Some(b0) = m.batches.first().cloned() else {
        return Ok(None);
    };
    if !same_id {
        return Ok(None);
    }
    if let Some(s) = opts
        .shard
        .as_ref()
        .filter(|s| s.vault_id != m.header.vault_id)
    {
        return Err(another_plan(vault, &vault_id, s));
    }
    let key = match (kms.unwrap(&m.header.vault_id, &b0), &head) {
        (Ok(k), _) => k,
        // A receipt cannot be matched without the key: treat the vault as another's.
        (Err(_), Head::Finished(_)) => return Ok(None),
        (Err(e), _) => return Err(e),
    };
    let mac = crate::pipeline::journal::params_mac(&key.journal_mac_key(), params)?;
    if let Head::Finished(r) = &head {
        let want = format::from_hex::<32>(&r.params_mac).map(blake3::Hash::from);
        let got = format::from_hex::<32>(&mac).map(blake3::Hash::from);
        if want.is_none() || want != got {
            return Ok(None);
        }
    }
    let mut r = EncryptReport {
        batches: m.batches.len() as u64,
        ..Default::default()
    };
    let name_key = m.header.conceal_names.then(|| key.name_key());
    let mut recorded: HashMap<Vec<u8>, Recorded> = HashMap::new();
    while let Some(mut e) = m.next_entry()? {
        if let Some(nk) = &name_key {
            e.reveal(nk)?;
        }
        let src = m.last_src();
        if let Some(p) = e.path.clear() {
            recorded.insert(p.to_vec(), Recorded::of(&e, src));
        }
        match &e.kind {
            EntryKind::File(f) => {
                r.files += 1;
                r.bytes = r.bytes.saturating_add(f.size);
            }
            EntryKind::Dir => r.dirs += 1,
            EntryKind::Symlink(_) => r.symlinks += 1,
            EntryKind::HardLink(_) => r.hardlinks += 1,
            EntryKind::Fifo | EntryKind::CharDev(_) | EntryKind::BlockDev(_) => r.specials += 1,
        }
    }
    m.authenticate(0, &key)?;
    let listed: Vec<[u8; ID_LEN]> = m.objects.iter().map(|o| o.id).collect();
    crate::pipeline::write::sweep_objects(vault, &listed)?;
    crate::pipeline::leftovers::sweep_root(vault, &m.batches)?;
    if let Head::Run(_) = head {
        crate::pipeline::journal::write_receipt(vault, &vault_id, &mac)?;
    }
    r.resumed_files = r.files;
    r.finished_before = Some(compare_sources(sources, exclude, recorded, progress)?);
    Ok(Some(r))
}

/// What a finished vault recorded of an entry, as far as a metadata walk can compare it.
enum Recorded {
    /// A regular file (or image) with the source identity of its entry, if recorded.
    File {
        src: Option<SourceId>,
        len: u64,
        mtime: (i64, u32),
    },
    /// Another name of a file: its own metadata is that file's.
    HardLink,
    /// Anything else: its type (with a link's target or a device number) and its mode and
    /// owner, which no ctime guards.
    Other {
        kind: EntryKind,
        mode: u32,
        owner: Option<(u32, u32)>,
    },
}

impl Recorded {
    fn of(e: &Entry, src: Option<SourceId>) -> Recorded {
        match &e.kind {
            EntryKind::File(f) => Recorded::File {
                src,
                len: f.file_len(),
                mtime: (e.mtime, e.mtime_nsec),
            },
            EntryKind::HardLink(_) => Recorded::HardLink,
            kind => Recorded::Other {
                kind: kind.clone(),
                mode: e.mode,
                owner: e.owner.as_ref().map(|o| (o.uid, o.gid)),
            },
        }
    }

    /// Whether the walked entry `e` still matches this record.
    fn matches(&self, e: &SourceEntry) -> bool {
        match (self, &e.kind) {
            (Recorded::File { src, len, mtime }, SourceKind::File { size, .. }) => {
                src.is_some_and(|s| {
                    s.dev == e.dev
                        && s.ino == e.ino
                        && (s.ctime, s.ctime_nsec) == (e.ctime, e.ctime_nsec)
                }) && *len == *size
                    && *mtime == (e.mtime, e.mtime_nsec)
            }
            (Recorded::HardLink, SourceKind::File { .. }) => e.nlink > 1,
            (Recorded::Other { kind, mode, owner }, k) => {
                let same_kind = match (kind, k) {
                    (EntryKind::Dir, SourceKind::Dir) | (EntryKind::Fifo, SourceKind::Fifo) => true,
                    (EntryKind::Symlink(t), SourceKind::Symlink { target }) => {
                        t.clear() == Some(target.as_slice())
                    }
                    (EntryKind::CharDev(a), SourceKind::CharDev(b))
                    | (EntryKind::BlockDev(a), SourceKind::BlockDev(b)) => a == b,
                    _ => false,
                };
                // Symlinks' modes mean nothing on Linux; owners are compared where recorded.
                same_kind
                    && (matches!(kind, EntryKind::Symlink(_)) || *mode == e.mode)
                    && owner.is_none_or(|o| o == (e.uid, e.gid))
            }
            _ => false,
        }
    }
}

/// Walks the sources (metadata only, no file is opened for reading) against a finished
/// vault's entries.
fn compare_sources(
    sources: &[PathBuf],
    exclude: &tree::Select,
    mut recorded: HashMap<Vec<u8>, Recorded>,
    progress: &dyn Progress,
) -> Result<Staleness> {
    let mut s = Staleness::default();
    let mut totals = Totals::default();
    tree::walk_each(sources, exclude, false, |f| {
        totals.add(&f, progress);
        if let Found::Entry(e) = f {
            match recorded.remove(&e.path) {
                None => s.appeared += 1,
                Some(r) if !r.matches(&e) => s.changed += 1,
                Some(_) => {}
            }
        }
        true
    })?;
    s.vanished = recorded.len() as u64;
    Ok(s)
}

/// A resumed run first tidies what the killed one left: key files of batches it never
/// journaled, temporary files, objects no committed entry names (partial objects of files in
/// flight, which would otherwise pile up over repeated kills); and puts back the key file of
/// a journaled batch if it is missing (the journal holds the same wrappings).
fn tidy_resumed(
    vault: &dyn Store,
    vault_id: &[u8; ID_LEN],
    batches: &[Batch],
    objects: &[[u8; ID_LEN]],
    done: &HashMap<Vec<u8>, Done>,
    checkpointed: &[u64],
) -> Result<()> {
    crate::pipeline::leftovers::sweep_root(vault, batches)?;
    for b in batches {
        if vault.len(&b.keys_file())?.is_none() {
            crate::pipeline::vault::write_key_file(vault, vault_id, b)?;
        }
    }
    let mut used: Vec<[u8; ID_LEN]> = done
        .values()
        .map(|d| d.obj)
        .chain(checkpointed.iter().copied())
        .filter_map(|o| objects.get(o as usize).copied())
        .collect();
    used.sort_unstable();
    used.dedup();
    crate::pipeline::write::sweep_objects(vault, &used)
}

/// The vault directory this run created to lock it: removed again (if still empty) when the
/// run fails before it wrote anything, as if it had never been made.
struct Created<'a> {
    vault: &'a dyn Store,
    armed: bool,
}

impl Drop for Created<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.vault.remove_empty(true);
        }
    }
}

/// Until its first batch record is in the journal, a run has written no key and no
/// ciphertext, so there is nothing to resume. If it stops there (a refused CMK, a wrong
/// passphrase, a usage error found while walking), this removes what it created, so that the
/// same `-o` can be used again with other arguments. Best effort: `remove_dir` only removes
/// empty directories.
struct Unstarted<'a> {
    vault: &'a dyn Store,
    vault_existed: bool,
    armed: bool,
}

impl Drop for Unstarted<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // Key files first and the journal last: a kill in between leaves a journal, whose
        // rerun sweeps the rest.
        let _ = crate::pipeline::leftovers::sweep_root(self.vault, &[]);
        let _ = self.vault.remove(layout::JOURNAL);
        self.vault.remove_empty(!self.vault_existed);
    }
}

/// UTC now as `YYYY-MM-DDThh:mm:ssZ`.
pub fn now_rfc3339() -> String {
    let f = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    time::OffsetDateTime::now_utc()
        .format(&f)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the planner admits is what the reader accepts: tree order, parents before
    /// children, no path twice, no unsafe path.
    #[test]
    fn admits_what_the_reader_accepts() {
        let t = tempfile::tempdir().unwrap();
        let mut top = None;
        let none = tree::excludes(&[]).unwrap();
        tree::walk_each(&[t.path().to_path_buf()], &none, false, |f| {
            if let Found::Entry(x) = f {
                top = Some(x);
            }
            false
        })
        .unwrap();
        let top = top.unwrap();
        let mut order = TreeOrder::default();
        let mut admit_one = |path: &str, dir: bool| {
            let e = SourceEntry {
                path: path.as_bytes().to_vec(),
                kind: if dir {
                    SourceKind::Dir
                } else {
                    SourceKind::Fifo
                },
                ..top.clone()
            };
            admit(&mut order, &e)
        };
        assert!(admit_one("s", true).is_ok());
        assert!(admit_one("s/a", true).is_ok());
        assert!(admit_one("s/a/x", false).is_ok());
        assert!(admit_one("s/b", false).is_ok());
        assert!(admit_one("s/b", false).is_err(), "twice");
        assert!(admit_one("s/a/y", false).is_err(), "out of order");
        assert!(admit_one("s/c/../d", false).is_err(), "unsafe path");
        assert!(admit_one("t/x", false).is_err(), "no parent");
    }
}
