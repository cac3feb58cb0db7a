//! `decrypt`: vault -> destination directory, whole or in part (`--only`).
//!
//! Never writes outside DEST: vault paths are validated (relative, no `..`); DEST is opened
//! once and every directory, file, link and node below it is created, checked and given its
//! owner, mode, times and attributes relative to directory handles, never through a symlink
//! (`crate::fs`, README "Hostile filesystems"). Symlinks from the vault are created last.
//! Each file is decrypted into a file without a name (or a temporary name) in its directory
//! and named only after every check passed; the temporary files a killed decrypt left are
//! removed by the next decrypt into the same place, and a rerun takes up what is already in
//! place, hard links included (docs/RESUME.md).

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use globset::GlobSetBuilder;
use rayon::prelude::*;

use crate::crypto::NameKey;
use crate::error::{Error, IoContext, Result};
use crate::format::manifest::{parent, Entry, EntryKind, Xattrs};
use crate::fs::restore::{self, Ident, Node, NodeKind};
use crate::fs::Dir;
use crate::kms::keys::Kms;
use crate::pipeline::encrypt::Failure;
use crate::pipeline::object::{open_record, ObjectError, RecordCtx};
use crate::progress::Progress;

#[derive(Clone, Debug)]
pub struct DecryptOptions {
    pub vault: crate::store::Location,
    pub dest: PathBuf,
    /// Paths or globs; empty = everything.
    pub only: Vec<String>,
    pub overwrite: bool,
    pub jobs: usize,
    /// `syncfs` of DEST while restoring and once before success (the default); `false` =
    /// `--no-sync`.
    pub sync: bool,
    pub owners: Owners,
    /// Restore extended attributes (`--no-xattrs`: not).
    pub xattrs: bool,
}

impl DecryptOptions {
    /// All of `vault` into `dest` with the CLI's defaults: no overwriting, one job per core,
    /// owners as `tar -p`, a sync before success, extended attributes restored.
    pub fn new(vault: impl Into<crate::store::Location>, dest: PathBuf) -> Self {
        DecryptOptions {
            vault: vault.into(),
            dest,
            only: Vec::new(),
            overwrite: false,
            jobs: std::thread::available_parallelism().map_or(1, |n| n.get()),
            sync: true,
            owners: Owners::Auto,
            xattrs: true,
        }
    }
}

/// What to do with recorded owners (as GNU tar's `--same-owner`, `--numeric-owner`,
/// `--no-same-owner`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Owners {
    /// Restore them when running as root (by name where this machine knows it, else by id);
    /// otherwise leave ownership to the running user.
    #[default]
    Auto,
    /// As `Auto`, by recorded id only.
    Numeric,
    /// Never change ownership.
    Ignore,
}

impl Owners {
    /// The ids to give `e`, or `None` to leave the running user's.
    fn ids(self, e: &Entry) -> Option<(u32, u32)> {
        let o = e.owner.as_ref()?;
        match self {
            Owners::Ignore => None,
            _ if !crate::fs::owner::can_chown() => None,
            Owners::Numeric => Some(crate::fs::owner::local_ids(o, true)),
            Owners::Auto => Some(crate::fs::owner::local_ids(o, false)),
        }
    }

    /// The mode to set once ownership is settled: setuid and setgid only on an entry that
    /// got its recorded owner (or whose recorded owner is the running user).
    fn mode(self, e: &Entry, chowned: bool) -> u32 {
        let me = (
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
        );
        let ours = e.owner.as_ref().is_some_and(|o| (o.uid, o.gid) == me);
        if chowned || ours || e.owner.is_none() {
            e.mode
        } else {
            e.mode & !0o6000
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct DecryptReport {
    pub files: u64,
    pub bytes: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    /// FIFOs and device nodes.
    pub specials: u64,
    pub failed: Vec<Failure>,
    /// Files and symlinks found already restored (a rerun after an interrupted decrypt;
    /// the rule is in docs/RESUME.md), left as they are.
    pub already_restored: u64,
    /// How many of `failed` are integrity failures (exit 3).
    pub integrity_failures: u64,
    /// The restored files were made durable (`syncfs` of DEST) before this report.
    pub synced: bool,
    /// Bytes read from the vault's objects (only the records of the files restored).
    pub vault_bytes_read: u64,
    pub seconds: f64,
}

fn rel(e: &Entry) -> &[u8] {
    e.path.clear().unwrap_or_default()
}

/// Selects entries for `--only`: matches, everything below a matched directory, and the
/// directories above them.
fn select(entries: &[Entry], only: &[String]) -> Result<Vec<usize>> {
    if only.is_empty() {
        return Ok((0..entries.len()).collect());
    }
    let mut gs = GlobSetBuilder::new();
    let mut exact: Vec<&[u8]> = Vec::new();
    for o in only {
        let trimmed = o.trim_end_matches('/');
        if o.contains(['*', '?', '[', '{']) {
            gs.add(
                crate::fs::tree::glob(trimmed)
                    .map_err(|e| Error::Usage(format!("--only {o:?}: {e}")))?,
            );
        } else {
            exact.push(trimmed.as_bytes());
        }
    }
    let globs = gs
        .build()
        .map_err(|e| Error::Usage(format!("--only: {e}")))?;
    let matched = |p: &[u8]| exact.contains(&p) || globs.is_match(Path::new(OsStr::from_bytes(p)));
    // Matched directories; a directory sorts before everything below it.
    let mut roots: HashSet<&[u8]> = HashSet::new();
    let mut picked = vec![false; entries.len()];
    for (i, e) in entries.iter().enumerate() {
        let p = rel(e);
        if under(&roots, p) || matched(p) {
            picked[i] = true;
            if matches!(e.kind, EntryKind::Dir) {
                roots.insert(p);
            }
        }
    }
    if !picked.iter().any(|&b| b) {
        return Err(Error::Usage(format!(
            "--only {}: matches nothing in the vault (see `envseal ls`)",
            only.join(", ")
        )));
    }
    // Ancestors of every picked entry.
    let index: HashMap<&[u8], usize> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| (rel(e), i))
        .collect();
    for i in 0..entries.len() {
        if !picked[i] {
            continue;
        }
        let mut p = rel(&entries[i]);
        while let Some(up) = parent(p) {
            if let Some(&j) = index.get(up) {
                picked[j] = true;
            }
            p = up;
        }
    }
    Ok((0..entries.len()).filter(|&i| picked[i]).collect())
}

/// Whether `p` lies strictly below one of `dirs` (a lookup per ancestor, not a scan of `dirs`).
fn under(dirs: &HashSet<&[u8]>, mut p: &[u8]) -> bool {
    while let Some(up) = parent(p) {
        if dirs.contains(up) {
            return true;
        }
        p = up;
    }
    false
}

fn join(dest: &Path, p: &[u8]) -> PathBuf {
    dest.join(OsStr::from_bytes(p))
}

/// DEST as a restore reaches it: one handle, opened once, that every path is resolved from
/// without crossing a symlink (`Dir::dir`), and the identity of every directory the restore
/// made or found, checked each time one is opened again: a directory swapped for a symlink
/// is never entered, one swapped for another directory is refused.
struct Dest {
    path: PathBuf,
    root: Dir,
    dirs: HashMap<Vec<u8>, Ident>,
}

/// A directory handle that is either DEST's own or one opened below it.
enum At<'a> {
    Root(&'a Dir),
    Sub(Dir),
}

impl std::ops::Deref for At<'_> {
    type Target = Dir;
    fn deref(&self) -> &Dir {
        match self {
            At::Root(d) => d,
            At::Sub(d) => d,
        }
    }
}

impl Dest {
    /// The path of `rel` below DEST, for messages only.
    fn show(&self, rel: &[u8]) -> PathBuf {
        join(&self.path, rel)
    }

    /// The directory `rel` (DEST itself when empty).
    fn dir(&self, rel: &[u8]) -> io::Result<At<'_>> {
        if rel.is_empty() {
            return Ok(At::Root(&self.root));
        }
        let d = self.root.dir(rel).map_err(|err| match err.raw_os_error() {
            Some(libc::ELOOP) => io::Error::other(
                "a symlink is in the way (a directory replaced by a link?); not followed",
            ),
            _ => err,
        })?;
        match self.dirs.get(rel) {
            Some(&id) if d.ident()? != id => Err(io::Error::other(
                "the directory was replaced during the restore; not written into",
            )),
            _ => Ok(At::Sub(d)),
        }
    }

    /// The directory holding `rel`, and `rel`'s last component.
    fn parent<'a>(&self, rel: &'a [u8]) -> io::Result<(At<'_>, &'a [u8])> {
        match rel.iter().rposition(|&b| b == b'/') {
            Some(i) => Ok((self.dir(&rel[..i])?, &rel[i + 1..])),
            None => Ok((At::Root(&self.root), rel)),
        }
    }
}

/// What a full DEST stops a restore with: one error saying how to go on (a rerun keeps
/// every file already restored, docs/RESUME.md).
fn no_space(dest: &Path) -> Error {
    Error::NoSpace {
        path: dest.to_path_buf(),
        then:
            "run the same command again: it keeps the files already restored and restores the rest"
                .into(),
    }
}

fn is_no_space(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}

pub fn decrypt(
    opts: &DecryptOptions,
    kms: &Kms,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<DecryptReport> {
    let started = Instant::now();
    let store = crate::store::open(&opts.vault)?;
    // Nothing is written before the whole manifest is authenticated.
    let (unlocked, entries) = crate::pipeline::vault::unlock_whole(&*store, kms)?;
    let keys = &unlocked.keys;
    // Extended attributes are sealed under batch 0's name key (docs/FORMAT.md §6.1).
    let xkey = keys.first().filter(|_| opts.xattrs).map(|k| k.name_key());
    let r = &unlocked.reader;
    let (jobs, lowered) = crate::limits::clamp_jobs(opts.jobs);
    if let Some(n) = lowered {
        progress.notice(&n);
    }
    let ctx = RecordCtx::new(&*store, &r.header, &r.batches, &r.objects, jobs);
    let chosen = select(&entries, &opts.only)?;
    fs::create_dir_all(&opts.dest).map_err(|err| {
        if is_no_space(&err) {
            no_space(&opts.dest)
        } else {
            Error::io(&opts.dest, err)
        }
    })?;
    // DEST itself is the user's choice (a link there is followed); nothing below it is
    // reached but through this handle.
    let mut dest = Dest {
        path: opts.dest.clone(),
        root: Dir::open(&opts.dest).at(&opts.dest)?,
        dirs: HashMap::new(),
    };
    let mut report = DecryptReport::default();
    let mut bad_dirs: HashSet<&[u8]> = HashSet::new();
    let fail = |report: &mut DecryptReport, e: &Entry, why: String, integrity: bool| {
        report.failed.push(Failure {
            path: e.path.display(),
            why,
        });
        if integrity {
            report.integrity_failures += 1;
        }
    };

    // Directories first, parents before children (tree order), each made from its parent's
    // handle or found to be a real directory (never a symlink) before anything goes below it.
    for &i in &chosen {
        let e = &entries[i];
        if !matches!(e.kind, EntryKind::Dir) {
            continue;
        }
        // Below a refused directory, refuse the whole subtree.
        if under(&bad_dirs, rel(e)) {
            bad_dirs.insert(rel(e));
            continue;
        }
        let p = dest.show(rel(e));
        // One restored before (an interrupted decrypt) with its final mode, say 0311 or 000,
        // is writable again until its mode is set last, after its contents.
        let made = dest
            .parent(rel(e))
            .and_then(|(at, name)| at.make_dir(name)?.0.ident());
        match made {
            Ok(id) => {
                dest.dirs.insert(rel(e).to_vec(), id);
                report.dirs += 1;
            }
            Err(err) if is_no_space(&err) => return Err(no_space(&opts.dest)),
            Err(err) => {
                bad_dirs.insert(rel(e));
                let why = match err.raw_os_error() {
                    Some(libc::ELOOP | libc::ENOTDIR) => format!("{} exists and is not a directory (a symlink or file); refusing to write through it", p.display()),
                    _ => format!("{}: {err}", p.display()),
                };
                fail(&mut report, e, why, false);
            }
        }
    }
    let dest = dest;
    let under_bad = |p: &[u8]| under(&bad_dirs, p);

    // A hard link chosen without its file (`--only`) stands in for the file: the first such
    // link gets its contents, later ones are linked to it.
    let chosen_paths: HashSet<&[u8]> = chosen.iter().map(|&i| rel(&entries[i])).collect();
    let linked: HashMap<&[u8], &Entry> = entries
        .iter()
        .filter(|e| e.linked)
        .map(|e| (rel(e), e))
        .collect();
    let mut stand_ins: HashMap<&[u8], &[u8]> = HashMap::new();
    let mut extra: Vec<Entry> = Vec::new();
    for &i in &chosen {
        let e = &entries[i];
        let EntryKind::HardLink(t) = &e.kind else {
            continue;
        };
        let t = t.clear().unwrap_or_default();
        if chosen_paths.contains(t) || stand_ins.contains_key(t) || under_bad(rel(e)) {
            continue;
        }
        if let Some(f) = linked.get(t) {
            stand_ins.insert(t, rel(e));
            extra.push(Entry {
                path: e.path.clone(),
                ..(*f).clone()
            });
        }
    }

    // Files, in parallel (and each large file's segments in parallel too).
    let files: Vec<&Entry> = chosen
        .iter()
        .map(|&i| &entries[i])
        .filter(|e| e.file().is_some() && !under_bad(rel(e)))
        .chain(extra.iter())
        .collect();
    let total: u64 = files
        .iter()
        .filter_map(|e| e.file())
        .fold(0u64, |t, f| t.saturating_add(f.size));
    let targets: HashSet<&[u8]> = files
        .iter()
        .map(|e| parent(rel(e)).unwrap_or_default())
        .collect();
    let tag = tmp_tag(&r.header.vault_id);
    for d in targets {
        remove_stale_tmp(&dest, d, &tag);
    }
    progress.start(files.len() as u64, total);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(jobs)
        .build()
        .map_err(|e| Error::Runtime(format!("thread pool: {e}")))?;
    let full = AtomicBool::new(false);
    let shared = Shared {
        opts,
        dest: &dest,
        ctx: &ctx,
        keys,
        xkey: xkey.as_ref(),
        tag: &tag,
        progress,
        cancel,
        full: &full,
    };
    let restore = || -> Vec<(usize, std::result::Result<Restored, ObjectError>)> {
        pool.install(|| {
            files
                .par_iter()
                .enumerate()
                .map(|(k, e)| {
                    let r = restore_file(&shared, e);
                    progress.file_done();
                    (k, r)
                })
                .collect()
        })
    };
    let results = if opts.sync {
        // Writeback in large groups while files are restored (a syncfs every SYNC_EVERY, as
        // encrypt's group commits), so that the final syncfs waits for the last group only;
        // per-window writeback was measured slower (docs/PERFORMANCE.md).
        let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(0);
        std::thread::scope(|s| {
            s.spawn(|| {
                let Ok(d) = dest.root.as_fd().try_clone_to_owned() else {
                    return;
                };
                let d = File::from(d);
                while done_rx.recv_timeout(SYNC_EVERY)
                    == Err(crossbeam_channel::RecvTimeoutError::Timeout)
                {
                    // A failure here is seen again by the final syncfs, which is checked.
                    let _ = crate::fs::durable::syncfs(&d);
                }
            });
            let r = restore();
            drop(done_tx);
            r
        })
    } else {
        restore()
    };
    // A stopped run says so once: files merely interrupted, or not started because the disk
    // filled, are not failures (the same command restores them).
    if cancel.load(Ordering::Relaxed) {
        return Err(Error::Interrupted);
    }
    if full.load(Ordering::Relaxed) {
        return Err(no_space(&opts.dest));
    }
    let mut restored: HashSet<&[u8]> = HashSet::new();
    for (k, r) in results {
        let e = files[k];
        match r {
            Ok(Restored::Written(bytes)) => {
                report.files += 1;
                report.bytes += bytes;
            }
            Ok(Restored::Present(bytes)) => {
                report.files += 1;
                report.bytes += bytes;
                report.already_restored += 1;
            }
            Ok(Restored::Skipped) => continue,
            Err(ObjectError::Cancelled) => return Err(Error::Interrupted),
            Err(ObjectError::Integrity(why) | ObjectError::Missing(why)) => {
                progress.notice(&format!("FAILED {}: {why}", e.path.display()));
                fail(&mut report, e, why, true);
                continue;
            }
            Err(ObjectError::Io(err)) => {
                progress.notice(&format!("failed {}: {err}", e.path.display()));
                fail(&mut report, e, err.to_string(), false);
                continue;
            }
        }
        // Written now or by an interrupted run: its hard links may be made to it.
        if e.linked {
            restored.insert(rel(e));
        }
    }

    // Hard links, FIFOs and device nodes; then symlinks, so that nothing is ever created
    // through a restored link.
    for &i in &chosen {
        let e = &entries[i];
        if under_bad(rel(e)) {
            continue;
        }
        let made = match &e.kind {
            EntryKind::HardLink(t) => {
                let t = t.clear().unwrap_or_default();
                let from = if chosen_paths.contains(t) {
                    t
                } else {
                    match stand_ins.get(t) {
                        Some(&s) if s == rel(e) => continue, // restored as the file itself
                        Some(&s) => s,
                        None => t,
                    }
                };
                if !restored.contains(from) {
                    let why = format!(
                        "not linked: {} was not restored",
                        String::from_utf8_lossy(from)
                    );
                    fail(&mut report, e, why, false);
                    continue;
                }
                hard_link(&dest, from, rel(e), opts.overwrite)
            }
            EntryKind::Fifo | EntryKind::CharDev(_) | EntryKind::BlockDev(_) => {
                special(&dest, e, opts, xkey.as_ref(), progress)
            }
            _ => continue,
        };
        match made {
            Ok(present) => {
                match &e.kind {
                    EntryKind::HardLink(_) => report.hardlinks += 1,
                    _ => report.specials += 1,
                }
                report.already_restored += u64::from(present);
            }
            Err(Refused::NoSpace) => return Err(no_space(&opts.dest)),
            Err(Refused::Why(why)) => fail(&mut report, e, why, false),
        }
    }

    // Symlinks after files, so no file is ever written through a restored link.
    for &i in &chosen {
        let e = &entries[i];
        if !matches!(e.kind, EntryKind::Symlink(_)) || under_bad(rel(e)) {
            continue;
        }
        match symlink(&dest, e, opts, xkey.as_ref(), progress) {
            Ok(present) => {
                report.symlinks += 1;
                report.already_restored += u64::from(present);
            }
            Err(Refused::NoSpace) => return Err(no_space(&opts.dest)),
            Err(Refused::Why(why)) => fail(&mut report, e, why, false),
        }
    }

    // Directory modes and times last, deepest first (writing inside a directory changes
    // them), each on a handle of the directory the restore made or found.
    for &i in chosen.iter().rev() {
        let e = &entries[i];
        if !matches!(e.kind, EntryKind::Dir) || bad_dirs.contains(&rel(e)) {
            continue;
        }
        let settled = dest.dir(rel(e)).and_then(|d| {
            let chowned = match opts.owners.ids(e) {
                Some(ids) => restore::set_owner(&*d, ids).map(|()| true)?,
                None => false,
            };
            restore::set_mode(&*d, opts.owners.mode(e, chowned))?;
            set_xattrs(e, xkey.as_ref(), true, |n, v| restore::set_xattr(&*d, n, v))?;
            restore::set_times(&*d, e.mtime, e.mtime_nsec)
        });
        match settled {
            Ok(()) => {}
            Err(err) if is_no_space(&err) => return Err(no_space(&opts.dest)),
            Err(err) => {
                let why = format!("{}: {err}", dest.show(rel(e)).display());
                fail(&mut report, e, why, false);
            }
        }
    }
    // Durable once, not once per file: one syncfs of the destination's filesystem.
    if opts.sync {
        let d = dest.root.as_fd().try_clone_to_owned().at(&opts.dest)?;
        crate::fs::durable::syncfs(&File::from(d)).map_err(|err| {
            if is_no_space(&err) {
                no_space(&opts.dest)
            } else {
                Error::io(&opts.dest, err)
            }
        })?;
        report.synced = true;
    }
    report.vault_bytes_read = ctx.read.load(Ordering::Relaxed);
    progress.finish();
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Why a link or node was not made.
enum Refused {
    /// DEST is full: the run stops.
    NoSpace,
    Why(String),
}

impl Refused {
    fn io(p: &Path, err: io::Error) -> Refused {
        if is_no_space(&err) {
            Refused::NoSpace
        } else {
            Refused::Why(format!("{}: {err}", p.display()))
        }
    }
}

/// Links `to` to the restored file `from`; `true` when it already was (a rerun after a
/// decrypt that stopped between the two, docs/RESUME.md).
fn hard_link(
    dest: &Dest,
    from: &[u8],
    to: &[u8],
    overwrite: bool,
) -> std::result::Result<bool, Refused> {
    let p = dest.show(to);
    let io = |err| Refused::io(&p, err);
    let (fdir, fname) = dest.parent(from).map_err(io)?;
    let (tdir, tname) = dest.parent(to).map_err(io)?;
    let file = fdir.stat_at(fname).map_err(io)?;
    if let Ok(there) = tdir.stat_at(tname) {
        if restore::ident(&there) == restore::ident(&file) {
            return Ok(true);
        }
        make_room(&tdir, tname, &there, &p, overwrite)?;
    }
    fdir.hard_link(fname, &tdir, tname).map_err(io)?;
    Ok(false)
}

/// Restores a FIFO or device node; `true` when one of its kind was already there (made by
/// an interrupted decrypt): its owner, mode, attributes and times are set again.
fn special(
    dest: &Dest,
    e: &Entry,
    opts: &DecryptOptions,
    xkey: Option<&NameKey>,
    progress: &dyn Progress,
) -> std::result::Result<bool, Refused> {
    let p = dest.show(rel(e));
    let io = |err| Refused::io(&p, err);
    let kind = match e.kind {
        EntryKind::CharDev(d) => NodeKind::CharDev(d),
        EntryKind::BlockDev(d) => NodeKind::BlockDev(d),
        _ => NodeKind::Fifo,
    };
    let (dir, name) = dest.parent(rel(e)).map_err(io)?;
    let mut present = false;
    if let Ok(there) = dir.stat_at(name) {
        present = node_kind(&there) == Some(kind);
        if !present {
            make_room(&dir, name, &there, &p, opts.overwrite)?;
        }
    }
    if !present {
        dir.make_node(name, kind).map_err(|err| {
            if err.raw_os_error() == Some(libc::EPERM) && kind != NodeKind::Fifo {
                Refused::Why(format!(
                    "{}: creating a device node needs root (run decrypt as root, or leave it out with --only)",
                    p.display()
                ))
            } else {
                io(err)
            }
        })?;
    }
    let node = dir.node(name).map_err(io)?;
    if node_kind(node.stat()) != Some(kind) {
        return Err(Refused::Why(format!(
            "{} was replaced during the restore; not restored",
            p.display()
        )));
    }
    settle_node(&node, e, opts.owners, xkey, &p, progress).map_err(io)?;
    Ok(present)
}

/// The node kind `st` describes, if it is a FIFO or device.
#[allow(clippy::unnecessary_cast)] // st_mode and st_rdev differ in type between targets
fn node_kind(st: &rustix::fs::Stat) -> Option<NodeKind> {
    use rustix::fs::FileType;
    match FileType::from_raw_mode(st.st_mode as _) {
        FileType::Fifo => Some(NodeKind::Fifo),
        FileType::CharacterDevice => Some(NodeKind::CharDev(st.st_rdev as u64)),
        FileType::BlockDevice => Some(NodeKind::BlockDev(st.st_rdev as u64)),
        _ => None,
    }
}

/// Restores a symlink; `true` when the same link was already there (an interrupted
/// decrypt): its owner, attributes and times are set again.
fn symlink(
    dest: &Dest,
    e: &Entry,
    opts: &DecryptOptions,
    xkey: Option<&NameKey>,
    progress: &dyn Progress,
) -> std::result::Result<bool, Refused> {
    let EntryKind::Symlink(target) = &e.kind else {
        return Err(Refused::Why("not a symlink".into()));
    };
    let target = target.clear().unwrap_or_default();
    let p = dest.show(rel(e));
    let io = |err| Refused::io(&p, err);
    let (dir, name) = dest.parent(rel(e)).map_err(io)?;
    let mut present = false;
    if let Ok(there) = dir.stat_at(name) {
        present = dir.read_link(name).is_ok_and(|t| t == target);
        if !present {
            make_room(&dir, name, &there, &p, opts.overwrite)?;
        }
    }
    if !present {
        dir.symlink(target, name).map_err(io)?;
    }
    let node = dir.node(name).map_err(io)?;
    if !node.is_symlink() {
        return Err(Refused::Why(format!(
            "{} was replaced during the restore; not restored",
            p.display()
        )));
    }
    settle_node(&node, e, opts.owners, xkey, &p, progress).map_err(io)?;
    Ok(present)
}

/// Owner, then mode (a chown clears setuid bits), attributes, then times, of a symlink,
/// FIFO or device node, on its own handle.
fn settle_node(
    n: &Node,
    e: &Entry,
    owners: Owners,
    xkey: Option<&NameKey>,
    p: &Path,
    progress: &dyn Progress,
) -> io::Result<()> {
    let chowned = match owners.ids(e) {
        Some(ids) => n.set_owner(ids).map(|()| true)?,
        None => false,
    };
    if !n.is_symlink() {
        n.set_mode(owners.mode(e, chowned))?;
    }
    let skipped = set_xattrs(e, xkey, false, |name, v| n.set_xattr(name, v))?;
    for name in skipped {
        progress.notice(&format!(
            "{}: extended attribute {} not restored (Linux allows user.* attributes only on files and directories)",
            p.display(),
            String::from_utf8_lossy(&name)
        ));
    }
    n.set_times(e.mtime, e.mtime_nsec)
}

/// Sets an entry's extended attributes (after owner and mode: a chown drops file
/// capabilities, and an ACL sets mode bits); `xkey` is `None` with `--no-xattrs`. Returns
/// the `user.*` names left out on a symlink or node (`user_ok` false), which Linux refuses.
fn set_xattrs(
    e: &Entry,
    xkey: Option<&NameKey>,
    user_ok: bool,
    set: impl Fn(&OsStr, &[u8]) -> io::Result<()>,
) -> io::Result<Vec<Vec<u8>>> {
    let mut skipped = Vec::new();
    let Some(nk) = xkey else { return Ok(skipped) };
    if e.xattrs == Xattrs::None {
        return Ok(skipped);
    }
    let list = e
        .xattrs
        .open(nk)
        .map_err(|err| io::Error::other(err.to_string()))?;
    // `trusted.*` and `security.*` (file capabilities, SELinux labels) are root's to set: an
    // unprivileged restore leaves them out, as it leaves ownership, rather than fail.
    let privileged = crate::fs::owner::can_chown();
    for (n, v) in &list {
        if !privileged && (n.starts_with(b"trusted.") || n.starts_with(b"security.")) {
            continue;
        }
        if !user_ok && n.starts_with(b"user.") {
            skipped.push(n.clone());
            continue;
        }
        set(OsStr::from_bytes(n), v).map_err(|err| {
            io::Error::new(
                err.kind(),
                format!(
                    "extended attribute {}: {err} (restore without them with --no-xattrs)",
                    String::from_utf8_lossy(n)
                ),
            )
        })?;
    }
    Ok(skipped)
}

/// Clears the way for a new name `name` in `dir` where `there` describes what holds it:
/// (with `--overwrite`) a non-directory is removed; otherwise the restore stops there.
fn make_room(
    dir: &Dir,
    name: &[u8],
    there: &rustix::fs::Stat,
    p: &Path,
    overwrite: bool,
) -> std::result::Result<(), Refused> {
    if let Some(why) = in_the_way(p, there, overwrite) {
        return Err(Refused::Why(why));
    }
    dir.remove(name).map_err(|err| Refused::io(p, err))
}

/// Why an existing `p` stops a restore there: a directory never goes (`--overwrite` replaces
/// files, links and nodes only), anything else without `--overwrite`.
fn in_the_way(p: &Path, there: &rustix::fs::Stat, overwrite: bool) -> Option<String> {
    if is_dir(there) {
        return Some(format!(
            "{} is a directory in the way; move it away and run the same command again",
            p.display()
        ));
    }
    (!overwrite).then(|| format!("{} exists (use --overwrite to replace it)", p.display()))
}

#[allow(clippy::unnecessary_cast)] // st_mode differs in type between targets
fn is_dir(st: &rustix::fs::Stat) -> bool {
    rustix::fs::FileType::from_raw_mode(st.st_mode as _) == rustix::fs::FileType::Directory
}

const TMP_PREFIX: &str = ".envseal-";
const TMP_SUFFIX: &str = ".tmp";

/// The part of a temporary name that ties it to one vault: the first 8 bytes of its id.
/// A user's file named like another vault's (or an older release's) temporary file is never
/// taken for one of ours.
fn tmp_tag(vault_id: &[u8; crate::format::ID_LEN]) -> String {
    hex::encode(&vault_id[..8])
}

/// The name a file is decrypted into before its rename (where O_TMPFILE is not available):
/// `.envseal-<vault tag>-<16 random hex>.tmp`; random, not derived from the file's name (a
/// name near NAME_MAX, 255, plus a suffix would not fit).
fn tmp_name(tag: &str, random: &[u8; 8]) -> String {
    format!("{TMP_PREFIX}{tag}-{}{TMP_SUFFIX}", hex::encode(random))
}

/// Whether `name` is exactly of the form [`tmp_name`] makes for this vault.
fn is_tmp_name(name: &[u8], tag: &str) -> bool {
    let hexdigits = |h: &[u8]| h.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    name.strip_prefix(TMP_PREFIX.as_bytes())
        .and_then(|r| r.strip_suffix(TMP_SUFFIX.as_bytes()))
        .and_then(|r| r.strip_prefix(tag.as_bytes()))
        .and_then(|r| r.strip_prefix(b"-"))
        .is_some_and(|h| h.len() == 16 && hexdigits(h))
}

/// Removes the temporary files a killed decrypt of this vault left in the directory `rel`
/// (plaintext, perhaps partial or unauthenticated): regular files whose names are exactly of
/// our pattern with this vault's tag, nothing else. A decrypt running into the same directory
/// at the same time would lose its file (and report that file failed); restoring one place
/// twice at once is not supported anyway.
fn remove_stale_tmp(dest: &Dest, rel: &[u8], tag: &str) {
    let Ok(dir) = dest.dir(rel) else {
        return; // Nothing to clean; writing there will report the error.
    };
    match dir.remove_files(|n| is_tmp_name(n, tag)) {
        Ok(names) => {
            for n in names {
                let p = dest.show(rel).join(OsStr::from_bytes(&n));
                log::info!("removed {}, left by an interrupted decrypt", p.display());
            }
        }
        Err(err) => log::warn!("{}: {err}", dest.show(rel).display()),
    }
}

/// What restoring one file did.
enum Restored {
    Written(u64),
    /// Already in place from an interrupted decrypt (docs/RESUME.md): left as it is.
    Present(u64),
    /// Not started: the run is stopping (DEST is full).
    Skipped,
}

/// Whether `name` in `dir` (described by `there`) is this entry's file as a decrypt restores
/// it: a regular file (not a link) with the entry's size, mode and mtime (to the
/// nanosecond), whose content has the entry's keyed plaintext digest.
#[allow(clippy::unnecessary_cast)] // Stat's field types differ between targets
fn already_restored(
    s: &Shared,
    f: &crate::format::manifest::FileEntry,
    e: &Entry,
    dir: &Dir,
    name: &[u8],
    there: &rustix::fs::Stat,
) -> std::result::Result<bool, ObjectError> {
    if rustix::fs::FileType::from_raw_mode(there.st_mode as _) != rustix::fs::FileType::RegularFile
        || there.st_size as u64 != f.file_len()
        || there.st_mode as u32 & 0o7777 != e.mode
        || (there.st_mtime as i64, there.st_mtime_nsec as u64) != (e.mtime, u64::from(e.mtime_nsec))
    {
        return Ok(false);
    }
    let Ok(Some(file)) = dir.open_regular(name) else {
        return Ok(false);
    };
    crate::pipeline::object::plaintext_matches(s.ctx, f, &s.keys[f.batch as usize], &file, s.cancel)
}

/// How often a durable decrypt starts writing back what it restored (see `decrypt`).
const SYNC_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// What the restores of a run's files share.
#[derive(Clone, Copy)]
struct Shared<'a> {
    opts: &'a DecryptOptions,
    dest: &'a Dest,
    ctx: &'a RecordCtx<'a>,
    keys: &'a [crate::crypto::BatchKey],
    /// Batch 0's name key, which seals extended attributes; `None` with `--no-xattrs`.
    xkey: Option<&'a NameKey>,
    /// This vault's temporary-name tag.
    tag: &'a str,
    progress: &'a dyn Progress,
    cancel: &'a AtomicBool,
    /// Raised by the first file that finds DEST full: the files not yet started are skipped.
    full: &'a AtomicBool,
}

/// Restores one file, unless the run is stopping.
fn restore_file(s: &Shared, e: &Entry) -> std::result::Result<Restored, ObjectError> {
    if s.cancel.load(Ordering::Relaxed) {
        return Err(ObjectError::Cancelled);
    }
    if s.full.load(Ordering::Relaxed) {
        return Ok(Restored::Skipped);
    }
    let r = restore_one(s, e);
    if matches!(&r, Err(ObjectError::Io(err)) if err.is_no_space()) {
        s.full.store(true, Ordering::Relaxed);
    }
    r
}

/// Decrypts one file into a file without a name (or a temporary name) in its directory and
/// gives it its name only after every check passed.
fn restore_one(s: &Shared, e: &Entry) -> std::result::Result<Restored, ObjectError> {
    let Shared {
        opts,
        dest,
        ctx,
        keys,
        xkey,
        tag,
        progress,
        cancel,
        ..
    } = *s;
    let f = e
        .file()
        .ok_or_else(|| ObjectError::Integrity("not a file".into()))?;
    let target = dest.show(rel(e));
    let io = |err: io::Error| ObjectError::Io(Error::io(&target, err));
    let (dir, name) = dest.parent(rel(e)).map_err(io)?;
    if let Ok(there) = dir.stat_at(name) {
        if already_restored(s, f, e, &dir, name, &there)? {
            progress.bytes(f.size);
            return Ok(Restored::Present(f.size));
        }
        if is_dir(&there) {
            return Err(ObjectError::Io(Error::Runtime(format!(
                "{} is a directory in the way of a file; move it away and run the same command again",
                target.display()
            ))));
        }
        if !opts.overwrite {
            return Err(ObjectError::Io(Error::Runtime(format!(
                "{} exists (use --overwrite to replace it)",
                target.display()
            ))));
        }
    }
    // An unnamed file in the target's directory (O_TMPFILE): plaintext is never visible under
    // any name before it is authenticated, and a killed decrypt leaves nothing behind. Where
    // the filesystem has no O_TMPFILE, a named temporary file instead.
    let (out, tmp) = match dir.tmpfile().map_err(io)? {
        Some(out) => (out, None),
        None => {
            let suffix: [u8; 8] = crate::format::random().map_err(io)?;
            let tmp = tmp_name(tag, &suffix);
            (dir.create_new(tmp.as_bytes()).map_err(io)?, Some(tmp))
        }
    };
    let result = (|| {
        // Every stored byte is written, so a file without gaps reaches its length without a
        // truncate; one with gaps gets its length (holes) and zero extents first (§6.4).
        if let Some(sp) = &f.sparse {
            crate::fs::sparse::lay_out(&out, sp).map_err(io)?;
        }
        open_record(
            ctx,
            f,
            &keys[f.batch as usize],
            Some(&out),
            progress,
            cancel,
        )?;
        let chowned = match opts.owners.ids(e) {
            Some(ids) => {
                restore::set_owner(&out, ids).map_err(io)?;
                true
            }
            None => false,
        };
        restore::set_mode(&out, opts.owners.mode(e, chowned)).map_err(io)?;
        set_xattrs(e, xkey, true, |n, v| restore::set_xattr(&out, n, v)).map_err(io)?;
        restore::set_times(&out, e.mtime, e.mtime_nsec).map_err(io)?;
        check_time_kept(&out, e, &target)?;
        match &tmp {
            Some(tmp) => dir.rename_in(tmp.as_bytes(), name).map_err(io),
            None => link_into_place(&out, &dir, name, opts.overwrite, tag).map_err(io),
        }
    })();
    if let (Err(_), Some(tmp)) = (&result, &tmp) {
        // The temporary file holds unauthenticated or partial plaintext: never leave it.
        let _ = dir.remove(tmp.as_bytes());
    }
    result.map(|_| Restored::Written(f.size))
}

/// Refuses a file whose recorded mtime the filesystem cannot hold (the kernel clamps it
/// silently, say `i64::MAX` seconds): restoring it with another time would not be the
/// state recorded. Filesystems with coarse timestamps (FAT: 2 s) are allowed their rounding.
fn check_time_kept(out: &File, e: &Entry, target: &Path) -> std::result::Result<(), ObjectError> {
    use std::os::unix::fs::MetadataExt;
    let md = out
        .metadata()
        .map_err(|err| ObjectError::Io(Error::io(target, err)))?;
    if md.mtime().abs_diff(e.mtime) > 2 {
        return Err(ObjectError::Io(Error::Runtime(format!(
            "{}: its recorded mtime ({} s) cannot be stored on this filesystem (it keeps {} s); not restored",
            target.display(),
            e.mtime,
            md.mtime()
        ))));
    }
    Ok(())
}

/// Gives an unnamed (O_TMPFILE) file its name in `dir`. `linkat` never replaces an existing
/// name (nor follows a symlink there); with `--overwrite` the file is linked under a
/// temporary name and renamed over the target.
fn link_into_place(
    out: &File,
    dir: &Dir,
    name: &[u8],
    overwrite: bool,
    tag: &str,
) -> io::Result<()> {
    match dir.link_unnamed(out, name) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && overwrite => {
            let suffix: [u8; 8] = crate::format::random()?;
            let tmp = tmp_name(tag, &suffix);
            dir.link_unnamed(out, tmp.as_bytes())?;
            dir.rename_in(tmp.as_bytes(), name).inspect_err(|_| {
                let _ = dir.remove(tmp.as_bytes());
            })
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(io::Error::new(
            e.kind(),
            "exists (use --overwrite to replace it)",
        )),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::manifest::Name;

    fn entry(p: &str, dir: bool) -> Entry {
        Entry {
            path: Name::Clear(p.as_bytes().to_vec()),
            mode: 0o755,
            mtime: 0,
            mtime_nsec: 0,
            kind: if dir {
                EntryKind::Dir
            } else {
                EntryKind::Symlink(Name::Clear(b"t".to_vec()))
            },
            owner: None,
            linked: false,
            xattrs: Default::default(),
        }
    }

    fn picked(entries: &[Entry], only: &[&str]) -> Vec<String> {
        let only: Vec<String> = only.iter().map(|s| s.to_string()).collect();
        select(entries, &only)
            .unwrap()
            .into_iter()
            .map(|i| entries[i].path.display())
            .collect()
    }

    /// The cleanup pattern is exactly the names decrypt makes.
    #[test]
    fn tmp_names_are_recognised() {
        let tag = tmp_tag(&[0x5a; 16]);
        for r in [[0u8; 8], [0xab; 8], [0x9f; 8]] {
            assert!(is_tmp_name(tmp_name(&tag, &r).as_bytes(), &tag));
            // Another vault's, and a user's file of the old pattern, are not ours.
            assert!(!is_tmp_name(
                tmp_name(&tmp_tag(&[1; 16]), &r).as_bytes(),
                &tag
            ));
            let old = format!(".envseal-{}.tmp", hex::encode(r));
            assert!(!is_tmp_name(old.as_bytes(), &tag));
        }
        assert!(!is_tmp_name(b".envseal-00.tmp", &tag));
    }

    /// `user.*` attributes of a symlink or node (which Linux refuses there) are left out and
    /// named, never dropped silently; the others are set.
    #[test]
    fn user_xattrs_of_links_and_nodes_are_named_not_dropped() {
        let key = crate::kms::DataKey::from_bytes(&[7u8; 32]).unwrap();
        let nk = crate::crypto::BatchKey::new(key, [1; 16], [2; 16]).name_key();
        let mut e = entry("l", false);
        e.xattrs = Xattrs::Clear(vec![
            (b"trusted.a".to_vec(), b"1".to_vec()),
            (b"user.b".to_vec(), b"2".to_vec()),
        ]);
        let set = std::cell::RefCell::new(Vec::new());
        let record = |n: &OsStr, _: &[u8]| {
            set.borrow_mut().push(n.as_bytes().to_vec());
            Ok(())
        };
        let skipped = set_xattrs(&e, Some(&nk), false, record).unwrap();
        assert_eq!(skipped, [b"user.b".to_vec()]);
        let trusted: Vec<Vec<u8>> = match crate::fs::owner::can_chown() {
            true => vec![b"trusted.a".to_vec()],
            false => vec![],
        };
        assert_eq!(*set.borrow(), trusted);
        set.borrow_mut().clear();
        assert!(set_xattrs(&e, Some(&nk), true, record).unwrap().is_empty());
        assert_eq!(set.borrow().last(), Some(&b"user.b".to_vec()));
        assert!(set_xattrs(&e, None, false, record).unwrap().is_empty());
    }

    #[test]
    fn select_takes_subtrees_and_ancestors_only() {
        let mut es: Vec<Entry> = ["a", "a/b", "a/b-c", "a/b/x", "a/b/y", "a/bz", "d"]
            .iter()
            .map(|p| entry(p, !p.contains('x') && !p.contains('y') && *p != "a/b-c"))
            .collect();
        es.sort_by(|x, y| x.path.clear().cmp(&y.path.clear()));
        assert_eq!(picked(&es, &["a/b"]), ["a", "a/b", "a/b/x", "a/b/y"]);
        assert_eq!(picked(&es, &["a/b/y"]), ["a", "a/b", "a/b/y"]);
        assert_eq!(picked(&es, &["d", "a/b-c"]), ["a", "a/b-c", "d"]);
    }

    /// `--only '*/src'` in a tree with many `src` directories: checking each entry against
    /// every matched directory was quadratic (hours for a million entries); each entry's
    /// ancestors are looked up instead.
    #[test]
    fn select_scales_with_many_matched_directories() {
        let n = 100_000;
        let mut es = vec![entry("t", true)];
        for i in 0..n {
            es.push(entry(&format!("t/{i:06}"), true));
            es.push(entry(&format!("t/{i:06}/src"), true));
            es.push(entry(&format!("t/{i:06}/src/f"), false));
        }
        es.sort_by(|x, y| x.path.clear().cmp(&y.path.clear()));
        assert_eq!(picked(&es, &["t/*/src"]).len(), es.len());
    }
}
