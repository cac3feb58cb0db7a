//! `decrypt`: vault -> destination directory, whole or in part (`--only`).
//!
//! Never writes outside DEST: vault paths are validated (relative, no `..`), every directory
//! is created by us or checked to be a real directory (not a symlink) before anything is
//! written below it, and symlinks from the vault are created last. Each file is decrypted
//! into a temporary name beside its target and renamed only after every check passed; the
//! temporary files a killed decrypt left are removed by the next decrypt into the same place.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use globset::GlobSetBuilder;
use rayon::prelude::*;

use crate::crypto::NameKey;
use crate::encrypt::Failure;
use crate::error::{Error, IoContext, Result};
use crate::keys::Kms;
use crate::manifest::{parent, Entry, EntryKind, Xattrs};
use crate::object::{open_record, ObjectError, RecordCtx};
use crate::progress::Progress;
use crate::vault::unlock;

#[derive(Clone, Debug)]
pub struct DecryptOptions {
    pub vault: PathBuf,
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
    pub fn new(vault: PathBuf, dest: PathBuf) -> Self {
        DecryptOptions {
            vault,
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
            _ if !crate::owner::can_chown() => None,
            Owners::Numeric => Some(crate::owner::local_ids(o, true)),
            Owners::Auto => Some(crate::owner::local_ids(o, false)),
        }
    }

    /// The mode to set once ownership is settled: setuid and setgid only on an entry that
    /// got its recorded owner (or whose recorded owner is the running user).
    fn mode(self, e: &Entry, chowned: bool) -> u32 {
        // SAFETY: geteuid and getegid have no preconditions.
        let me = unsafe { (libc::geteuid(), libc::getegid()) };
        let ours = e.owner.as_ref().is_some_and(|o| (o.uid, o.gid) == me);
        if chowned || ours || e.owner.is_none() {
            e.mode
        } else {
            e.mode & !0o6000
        }
    }
}

/// `lchown` (never follows a link).
fn lchown(p: &Path, (uid, gid): (u32, u32)) -> std::io::Result<()> {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid))
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
                crate::walk::glob(trimmed)
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

/// Sets a path's access and modification times to the entry's mtime by name
/// (`utimensat`): opening it would fail for a directory (EISDIR) or one whose mode was
/// already set to 0311 or 000; owning it is enough.
fn set_mtime(path: &Path, e: &Entry, symlink: bool) -> std::io::Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let t = libc::timespec {
        tv_sec: e.mtime as libc::time_t,
        tv_nsec: e.mtime_nsec as libc::c_long,
    };
    let flags = if symlink {
        libc::AT_SYMLINK_NOFOLLOW
    } else {
        0
    };
    // SAFETY: a valid NUL-terminated path and two timespecs, for the duration of the call.
    if unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), [t, t].as_ptr(), flags) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

pub fn decrypt(
    opts: &DecryptOptions,
    kms: &Kms,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<DecryptReport> {
    let started = Instant::now();
    let mut unlocked = unlock(&opts.vault, kms)?;
    // The entries are checked as they are read (tree order: every parent is a directory
    // listed before its children, no path twice); nothing is written before the whole
    // manifest is authenticated.
    let mut entries = Vec::new();
    while let Some(e) = unlocked.reader.next_entry()? {
        entries.push(e);
    }
    unlocked.authenticate()?;
    if unlocked.reader.header.conceal_names {
        crate::manifest::check_tree(&mut entries)?;
    }
    let keys = &unlocked.keys;
    // Extended attributes are sealed under batch 0's name key (docs/FORMAT.md §6.1).
    let xkey = keys.first().filter(|_| opts.xattrs).map(|k| k.name_key());
    let r = &unlocked.reader;
    let (jobs, lowered) = crate::limits::clamp_jobs(opts.jobs);
    if let Some(n) = lowered {
        progress.notice(&n);
    }
    let ctx = RecordCtx::new(&opts.vault, &r.header, &r.batches, &r.objects, jobs);
    let chosen = select(&entries, &opts.only)?;
    fs::create_dir_all(&opts.dest).at(&opts.dest)?;
    let dest = &opts.dest;
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

    // Directories first, parents before children (sorted order), each checked to be real.
    for &i in &chosen {
        let e = &entries[i];
        if !matches!(e.kind, EntryKind::Dir) {
            continue;
        }
        // Below a refused directory (a planted symlink), `create_dir` would follow the link:
        // refuse the whole subtree, so that no directory is created or chmod-ed through it.
        if under(&bad_dirs, rel(e)) {
            bad_dirs.insert(rel(e));
            continue;
        }
        let p = join(dest, rel(e));
        match fs::create_dir(&p) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
                let is_real_dir = fs::symlink_metadata(&p)
                    .map(|m| m.is_dir())
                    .unwrap_or(false);
                if !is_real_dir {
                    bad_dirs.insert(rel(e));
                    fail(&mut report, e, format!("{} exists and is not a directory (a symlink or file); refusing to write through it", p.display()), false);
                    continue;
                }
                // Restored before (an interrupted decrypt) with its final mode, say 0311 or
                // 000: writable again until its mode is set last, after its contents.
                if let Ok(md) = fs::symlink_metadata(&p) {
                    let mode = md.permissions().mode() & 0o7777;
                    if mode & 0o700 != 0o700 {
                        let _ = fs::set_permissions(&p, fs::Permissions::from_mode(mode | 0o700));
                    }
                }
            }
            Err(err) => {
                bad_dirs.insert(rel(e));
                fail(&mut report, e, format!("{}: {err}", p.display()), false);
                continue;
            }
        }
        report.dirs += 1;
    }
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
        remove_stale_tmp(&join(dest, d), &tag);
    }
    progress.start(files.len() as u64, total);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(jobs)
        .build()
        .map_err(|e| Error::Runtime(format!("thread pool: {e}")))?;
    let shared = Shared {
        opts,
        ctx: &ctx,
        keys,
        xkey: xkey.as_ref(),
        tag: &tag,
        progress,
        cancel,
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
                let Ok(d) = File::open(dest) else { return };
                while done_rx.recv_timeout(SYNC_EVERY)
                    == Err(crossbeam_channel::RecvTimeoutError::Timeout)
                {
                    // A failure here is seen again by the final syncfs, which is checked.
                    let _ = crate::durable::syncfs(&d);
                }
            });
            let r = restore();
            drop(done_tx);
            r
        })
    } else {
        restore()
    };
    let mut restored: HashSet<&[u8]> = HashSet::new();
    for (k, r) in results {
        let e = files[k];
        match r {
            Ok(Restored::Written(bytes)) => {
                report.files += 1;
                report.bytes += bytes;
                if e.linked {
                    restored.insert(rel(e));
                }
            }
            Ok(Restored::Present(bytes)) => {
                report.files += 1;
                report.bytes += bytes;
                report.already_restored += 1;
            }
            Err(ObjectError::Cancelled) => return Err(Error::Interrupted),
            Err(ObjectError::Integrity(why) | ObjectError::Missing(why)) => {
                progress.notice(&format!("FAILED {}: {why}", e.path.display()));
                fail(&mut report, e, why, true)
            }
            Err(ObjectError::Io(err)) if err.is_no_space() => {
                let why = "no space left on device; free some space, then run the same command again (files already restored are kept)";
                progress.notice(&format!("failed {}: {why}", e.path.display()));
                fail(&mut report, e, why.to_string(), false)
            }
            Err(ObjectError::Io(err)) => {
                progress.notice(&format!("failed {}: {err}", e.path.display()));
                fail(&mut report, e, err.to_string(), false)
            }
        }
    }

    // Hard links, FIFOs and device nodes; then symlinks, so that nothing is ever created
    // through a restored link.
    for &i in &chosen {
        let e = &entries[i];
        if under_bad(rel(e)) {
            continue;
        }
        let p = join(dest, rel(e));
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
                make_room(&p, opts.overwrite).and_then(|()| {
                    fs::hard_link(join(dest, from), &p)
                        .map_err(|err| format!("{}: {err}", p.display()))
                })
            }
            EntryKind::Fifo | EntryKind::CharDev(_) | EntryKind::BlockDev(_) => {
                make_room(&p, opts.overwrite).and_then(|()| {
                    make_node(&p, &e.kind)
                        .and_then(|()| settle(&p, e, opts.owners, xkey.as_ref()))
                        .map_err(|err| node_error(&p, &e.kind, err))
                })
            }
            _ => continue,
        };
        match (made, &e.kind) {
            (Ok(()), EntryKind::HardLink(_)) => report.hardlinks += 1,
            (Ok(()), _) => report.specials += 1,
            (Err(why), _) => fail(&mut report, e, why, false),
        }
    }

    // Symlinks after files, so no file is ever written through a restored link.
    for &i in &chosen {
        let e = &entries[i];
        let EntryKind::Symlink(target) = &e.kind else {
            continue;
        };
        if under_bad(rel(e)) {
            continue;
        }
        let p = join(dest, rel(e));
        if let Ok(md) = fs::symlink_metadata(&p) {
            let t = OsStr::from_bytes(target.clear().unwrap_or_default());
            if md.is_symlink() && fs::read_link(&p).is_ok_and(|l| l.as_os_str() == t) {
                // Restored by an interrupted decrypt: the same link.
                if set_mtime(&p, e, true).is_ok() {
                    report.symlinks += 1;
                    report.already_restored += 1;
                    continue;
                }
            }
            if let Some(why) = in_the_way(&p, &md, opts.overwrite) {
                fail(&mut report, e, why, false);
                continue;
            }
            if let Err(err) = fs::remove_file(&p) {
                fail(&mut report, e, format!("{}: {err}", p.display()), false);
                continue;
            }
        }
        let t = OsStr::from_bytes(target.clear().unwrap_or_default());
        let owned = |p: &Path| match opts.owners.ids(e) {
            Some(ids) => lchown(p, ids),
            None => Ok(()),
        };
        let made = std::os::unix::fs::symlink(t, &p)
            .and_then(|_| owned(&p))
            .and_then(|_| set_mtime(&p, e, true));
        match made {
            Ok(()) => report.symlinks += 1,
            Err(err) => fail(&mut report, e, format!("{}: {err}", p.display()), false),
        }
    }

    // Directory modes and times last, deepest first (writing inside a directory changes them).
    for &i in chosen.iter().rev() {
        let e = &entries[i];
        if !matches!(e.kind, EntryKind::Dir) || bad_dirs.contains(&rel(e)) {
            continue;
        }
        let p = join(dest, rel(e));
        if let Err(err) = settle(&p, e, opts.owners, xkey.as_ref()) {
            fail(&mut report, e, format!("{}: {err}", p.display()), false);
        }
    }
    // Durable once, not once per file: one syncfs of the destination's filesystem.
    if opts.sync {
        crate::durable::sync_path(dest)?;
        report.synced = true;
    }
    report.vault_bytes_read = ctx.read.load(std::sync::atomic::Ordering::Relaxed);
    progress.finish();
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Owner, then mode (a chown clears setuid bits), then times, of a created node or directory
/// (never through a link: directories were checked to be real, nodes were just made).
fn settle(p: &Path, e: &Entry, owners: Owners, xkey: Option<&NameKey>) -> std::io::Result<()> {
    let chowned = match owners.ids(e) {
        Some(ids) => lchown(p, ids).map(|()| true)?,
        None => false,
    };
    fs::set_permissions(p, fs::Permissions::from_mode(owners.mode(e, chowned)))?;
    set_xattrs(e, xkey, |n, v| xattr::set(p, n, v))?;
    set_mtime(p, e, false)
}

/// Sets an entry's extended attributes (after owner and mode: a chown drops file
/// capabilities, and an ACL sets mode bits); `xkey` is `None` with `--no-xattrs`.
fn set_xattrs(
    e: &Entry,
    xkey: Option<&NameKey>,
    set: impl Fn(&OsStr, &[u8]) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let Some(nk) = xkey else { return Ok(()) };
    if e.xattrs == Xattrs::None {
        return Ok(());
    }
    let list = e
        .xattrs
        .open(nk)
        .map_err(|err| std::io::Error::other(err.to_string()))?;
    // `trusted.*` and `security.*` (file capabilities, SELinux labels) are root's to set: an
    // unprivileged restore leaves them out, as it leaves ownership, rather than fail.
    let privileged = crate::owner::can_chown();
    for (n, v) in &list {
        if !privileged && (n.starts_with(b"trusted.") || n.starts_with(b"security.")) {
            continue;
        }
        set(OsStr::from_bytes(n), v).map_err(|err| {
            std::io::Error::new(
                err.kind(),
                format!(
                    "extended attribute {}: {err} (restore without them with --no-xattrs)",
                    String::from_utf8_lossy(n)
                ),
            )
        })?;
    }
    Ok(())
}

/// Clears the way for a new name at `p`: nothing there, or (with `--overwrite`) a non-directory
/// removed first.
fn make_room(p: &Path, overwrite: bool) -> std::result::Result<(), String> {
    let Ok(md) = fs::symlink_metadata(p) else {
        return Ok(());
    };
    if let Some(why) = in_the_way(p, &md, overwrite) {
        return Err(why);
    }
    fs::remove_file(p).map_err(|err| format!("{}: {err}", p.display()))
}

/// Why an existing `p` stops a restore there: a directory never goes (`--overwrite` replaces
/// files, links and nodes only), anything else without `--overwrite`.
fn in_the_way(p: &Path, md: &fs::Metadata, overwrite: bool) -> Option<String> {
    if md.is_dir() {
        return Some(format!(
            "{} is a directory in the way; move it away and run the same command again",
            p.display()
        ));
    }
    (!overwrite).then(|| format!("{} exists (use --overwrite to replace it)", p.display()))
}

/// Creates a FIFO or device node (mode 0600 until [`settle`] sets the recorded one).
fn make_node(p: &Path, kind: &EntryKind) -> std::io::Result<()> {
    let (fmt, rdev) = match kind {
        EntryKind::CharDev(d) => (libc::S_IFCHR, *d),
        EntryKind::BlockDev(d) => (libc::S_IFBLK, *d),
        _ => (libc::S_IFIFO, 0),
    };
    let c = std::ffi::CString::new(p.as_os_str().as_bytes())?;
    // SAFETY: a valid NUL-terminated path; mknod creates a new node and never follows a link.
    match unsafe { libc::mknod(c.as_ptr(), fmt | 0o600, rdev as libc::dev_t) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

fn node_error(p: &Path, kind: &EntryKind, err: std::io::Error) -> String {
    if err.raw_os_error() == Some(libc::EPERM) && !matches!(kind, EntryKind::Fifo) {
        return format!(
            "{}: creating a device node needs root (run decrypt as root, or leave it out with --only)",
            p.display()
        );
    }
    format!("{}: {err}", p.display())
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
fn is_tmp_name(name: &OsStr, tag: &str) -> bool {
    let hexdigits = |h: &[u8]| h.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    name.as_bytes()
        .strip_prefix(TMP_PREFIX.as_bytes())
        .and_then(|r| r.strip_suffix(TMP_SUFFIX.as_bytes()))
        .and_then(|r| r.strip_prefix(tag.as_bytes()))
        .and_then(|r| r.strip_prefix(b"-"))
        .is_some_and(|h| h.len() == 16 && hexdigits(h))
}

/// Removes the temporary files a killed decrypt of this vault left in `dir` (plaintext,
/// perhaps partial or unauthenticated): regular files whose names are exactly of our
/// pattern with this vault's tag, nothing else. A decrypt running into the same directory at
/// the same time would lose its file (and report that file failed); restoring one place
/// twice at once is not supported anyway.
fn remove_stale_tmp(dir: &Path, tag: &str) {
    let Ok(entries) = fs::read_dir(dir) else {
        return; // Nothing to clean; writing there will report the error.
    };
    for d in entries.flatten() {
        if is_tmp_name(&d.file_name(), tag) && d.file_type().is_ok_and(|t| t.is_file()) {
            match fs::remove_file(d.path()) {
                Ok(()) => log::info!(
                    "removed {}, left by an interrupted decrypt",
                    d.path().display()
                ),
                Err(e) => log::warn!("{}: {e}", d.path().display()),
            }
        }
    }
}

/// What restoring one file did.
enum Restored {
    Written(u64),
    /// Already in place from an interrupted decrypt (docs/RESUME.md): left as it is.
    Present(u64),
}

/// Whether `target` is this entry's file as a decrypt restores it: a regular file (not a
/// link) with the entry's size, mode and mtime (to the nanosecond), whose content has the
/// entry's keyed plaintext digest.
fn already_restored(
    ctx: &RecordCtx,
    f: &crate::manifest::FileEntry,
    key: &crate::crypto::BatchKey,
    e: &Entry,
    target: &Path,
    cancel: &AtomicBool,
) -> std::result::Result<bool, ObjectError> {
    use std::os::unix::fs::MetadataExt;
    let Ok(md) = fs::symlink_metadata(target) else {
        return Ok(false);
    };
    if !md.is_file()
        || md.len() != f.file_len()
        || md.mode() & 0o7777 != e.mode
        || (md.mtime(), md.mtime_nsec()) != (e.mtime, i64::from(e.mtime_nsec))
    {
        return Ok(false);
    }
    let Ok(file) = crate::vault::open_regular(target) else {
        return Ok(false);
    };
    crate::object::plaintext_matches(ctx, f, key, &file, cancel)
}

/// How often a durable decrypt starts writing back what it restored (see `decrypt`).
const SYNC_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// What the restores of a run's files share.
#[derive(Clone, Copy)]
struct Shared<'a> {
    opts: &'a DecryptOptions,
    ctx: &'a RecordCtx<'a>,
    keys: &'a [crate::crypto::BatchKey],
    /// Batch 0's name key, which seals extended attributes; `None` with `--no-xattrs`.
    xkey: Option<&'a NameKey>,
    /// This vault's temporary-name tag.
    tag: &'a str,
    progress: &'a dyn Progress,
    cancel: &'a AtomicBool,
}

/// Decrypts one file into a temporary name and renames it into place.
fn restore_file(s: &Shared, e: &Entry) -> std::result::Result<Restored, ObjectError> {
    let Shared {
        opts,
        ctx,
        keys,
        xkey,
        tag,
        progress,
        cancel,
    } = *s;
    let io = |p: &Path, err: std::io::Error| ObjectError::Io(Error::io(p, err));
    let f = e
        .file()
        .ok_or_else(|| ObjectError::Integrity("not a file".into()))?;
    let target = join(&opts.dest, rel(e));
    if let Ok(md) = fs::symlink_metadata(&target) {
        let key = &keys[f.batch as usize];
        if already_restored(ctx, f, key, e, &target, cancel)? {
            progress.bytes(f.size);
            return Ok(Restored::Present(f.size));
        }
        if md.is_dir() {
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
    let dir = target.parent().unwrap_or(&opts.dest);
    // An unnamed file in the target's directory (O_TMPFILE): plaintext is never visible under
    // any name before it is authenticated, and a killed decrypt leaves nothing behind. Where
    // the filesystem has no O_TMPFILE, a named temporary file instead.
    let (out, tmp) = match OpenOptions::new()
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE)
        .open(dir)
    {
        Ok(f) => (f, None),
        Err(err)
            if matches!(
                err.raw_os_error(),
                Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)
            ) =>
        {
            let suffix: [u8; 8] = crate::format::random().map_err(|err| io(dir, err))?;
            let tmp = dir.join(tmp_name(tag, &suffix));
            let f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(|err| io(&tmp, err))?;
            (f, Some(tmp))
        }
        Err(err) => return Err(io(dir, err)),
    };
    let result = (|| {
        // Every stored byte is written, so a file without gaps reaches its length without a
        // truncate; one with gaps gets its length (holes) and zero extents first (§6.4).
        if let Some(sp) = &f.sparse {
            crate::sparse::lay_out(&out, sp).map_err(|err| io(&target, err))?;
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
            Some((uid, gid)) => {
                std::os::unix::fs::fchown(&out, Some(uid), Some(gid))
                    .map_err(|err| io(&target, err))?;
                true
            }
            None => false,
        };
        out.set_permissions(fs::Permissions::from_mode(opts.owners.mode(e, chowned)))
            .map_err(|err| io(&target, err))?;
        set_xattrs(e, xkey, |n, v| xattr::FileExt::set_xattr(&out, n, v))
            .map_err(|err| io(&target, err))?;
        let t = filetime::FileTime::from_unix_time(e.mtime, e.mtime_nsec);
        filetime::set_file_handle_times(&out, Some(t), Some(t)).map_err(|err| io(&target, err))?;
        check_time_kept(&out, e, &target)?;
        match &tmp {
            Some(tmp) => fs::rename(tmp, &target).map_err(|err| io(&target, err)),
            None => link_into_place(&out, dir, &target, opts.overwrite, tag)
                .map_err(|err| io(&target, err)),
        }
    })();
    if let (Err(_), Some(tmp)) = (&result, &tmp) {
        // The temporary file holds unauthenticated or partial plaintext: never leave it.
        let _ = fs::remove_file(tmp);
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

/// Gives an unnamed (O_TMPFILE) file its name. `linkat` never replaces an existing name
/// (nor follows a symlink there); with `--overwrite` the file is linked under a temporary
/// name and renamed over the target.
fn link_into_place(
    out: &File,
    dir: &Path,
    target: &Path,
    overwrite: bool,
    tag: &str,
) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::io::AsRawFd;
    let from = CString::new(format!("/proc/self/fd/{}", out.as_raw_fd()))?;
    let link = |to: &Path| -> std::io::Result<()> {
        let to = CString::new(to.as_os_str().as_bytes())?;
        // SAFETY: both paths are valid NUL-terminated strings for the duration of the call.
        let r = unsafe {
            libc::linkat(
                libc::AT_FDCWD,
                from.as_ptr(),
                libc::AT_FDCWD,
                to.as_ptr(),
                libc::AT_SYMLINK_FOLLOW,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    match link(target) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && overwrite => {
            let suffix: [u8; 8] = crate::format::random()?;
            let tmp = dir.join(tmp_name(tag, &suffix));
            link(&tmp)?;
            fs::rename(&tmp, target).inspect_err(|_| {
                let _ = fs::remove_file(&tmp);
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(std::io::Error::new(
            e.kind(),
            "exists (use --overwrite to replace it)",
        )),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Name;

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
            assert!(is_tmp_name(OsStr::new(&tmp_name(&tag, &r)), &tag));
            // Another vault's, and a user's file of the old pattern, are not ours.
            assert!(!is_tmp_name(
                OsStr::new(&tmp_name(&tmp_tag(&[1; 16]), &r)),
                &tag
            ));
            let old = format!(".envseal-{}.tmp", hex::encode(r));
            assert!(!is_tmp_name(OsStr::new(&old), &tag));
        }
        assert!(!is_tmp_name(OsStr::new(".envseal-00.tmp"), &tag));
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
