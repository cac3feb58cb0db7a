//! Walking a source tree by directory handles (README "Hostile filesystems"): every directory
//! is opened from its parent's handle with `O_NOFOLLOW | O_DIRECTORY` and must be the inode
//! its `lstat` described, entries are listed from that handle, and nothing is ever resolved by
//! a path below the source. A directory swapped for a symlink while the walk goes on is a link
//! (stored as one) or a change (reported), never followed. One handle is open per level of
//! depth.
//!
//! Files are read later, by the sealer, through a [`Place`]: by name from the handle of the
//! directory the walk listed them in (one `openat(O_NOFOLLOW)`, no path resolved), else by
//! their path below the source's root handle ([`Dir::open_beneath`]); either way checked
//! against the walk's device and inode.
//!
//! The handles a [`Place`] shares outlive the walk's own only while its files are in flight
//! (queued, sealed, waiting for the writer), and the walk hands out no more once
//! [`MAX_PARKED`] of them are open past it: files listed then are opened by path. So a walk
//! holds at most its depth in handles of its own plus [`MAX_PARKED`] plus its depth again
//! (levels that close while already shared), however many files are in flight: far under
//! `RLIMIT_NOFILE`'s usual 1024.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use rustix::fs::{fstat, openat, readlinkat, statat, AtFlags, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

use super::Dir;

/// Handles of directories the walk has left that its [`Place`]s may keep open (see the module
/// documentation): past this, files are opened by their path below the root.
pub const MAX_PARKED: usize = 256;

/// A directory handle of the walk, shared by the [`Place`]s of the files listed in it;
/// counted while open, so that the walk can bound how many stay open.
#[derive(Debug)]
pub struct Listed {
    dir: Dir,
    open: Arc<AtomicUsize>,
}

impl Listed {
    fn new(fd: OwnedFd, open: &Arc<AtomicUsize>) -> Listed {
        open.fetch_add(1, Ordering::Relaxed);
        Listed {
            dir: Dir::from_fd(fd),
            open: Arc::clone(open),
        }
    }
}

impl Drop for Listed {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Where a walked entry is read from: below a source directory's handle, or (for a source
/// that is not a directory) the path the user named.
#[derive(Clone, Debug)]
pub struct Place {
    root: Option<Arc<Dir>>,
    /// The directory the walk listed the entry in (its inode checked by the walk), when the
    /// walk shared it: the entry is opened by its name there.
    parent: Option<Arc<Listed>>,
    /// Shared by every entry of a source.
    top: Arc<Path>,
    rel: Vec<u8>,
}

impl PartialEq for Place {
    fn eq(&self, other: &Place) -> bool {
        self.top == other.top && self.rel == other.rel
    }
}

impl Eq for Place {}

impl Place {
    /// A source named by the user (its own path, links in it followed but the last).
    pub fn top(path: &Path) -> Place {
        Place {
            root: None,
            parent: None,
            top: Arc::from(path),
            rel: Vec::new(),
        }
    }

    /// `rel` below the source directory `top`, opened as `root`.
    pub fn below(root: &Arc<Dir>, top: &Arc<Path>, rel: Vec<u8>) -> Place {
        Place::listed(root, None, top, rel)
    }

    /// [`Place::below`], listed in `parent` (the handle of `rel`'s directory the walk
    /// shared, if it did).
    pub fn listed(
        root: &Arc<Dir>,
        parent: Option<Arc<Listed>>,
        top: &Arc<Path>,
        rel: Vec<u8>,
    ) -> Place {
        Place {
            root: Some(Arc::clone(root)),
            parent,
            top: Arc::clone(top),
            rel,
        }
    }

    /// The path, for messages (never opened).
    pub fn path(&self) -> PathBuf {
        if self.rel.is_empty() {
            self.top.to_path_buf()
        } else {
            self.top.join(OsStr::from_bytes(&self.rel))
        }
    }

    /// [`Place::path`] as `Path::display` shows it.
    pub fn display(&self) -> String {
        self.path().display().to_string()
    }

    /// Opens the entry for reading without crossing a symlink below the source (the last
    /// component included, but for `follow`: a block device the user named by a link) and
    /// checks that it is still the inode the walk saw. A link, a directory swapped for one on
    /// the way, or another inode is a change ([`crate::fs::changed_error`]).
    pub fn open(&self, dev: u64, ino: u64, follow: bool, nonblock: bool) -> io::Result<File> {
        let mut flags = OFlags::RDONLY | OFlags::NOCTTY | OFlags::CLOEXEC;
        if nonblock {
            flags |= OFlags::NONBLOCK;
        }
        let opened = match (&self.parent, &self.root) {
            // By name from the directory's handle: the walk opened it from its own parent's
            // with O_NOFOLLOW and checked its inode, so no path is resolved and no link
            // crossed. (Moved elsewhere since, it still only yields the inode checked below.)
            (Some(parent), _) => {
                let name = self.rel.rsplit(|&b| b == b'/').next().unwrap_or_default();
                if name.is_empty() || name == b"." || name == b".." {
                    return Err(io::Error::from(Errno::INVAL));
                }
                let flags = flags | OFlags::NOFOLLOW;
                openat(&parent.dir, OsStr::from_bytes(name), flags, Mode::empty())
                    .map_err(io::Error::from)
            }
            (None, Some(root)) => root.open_beneath(&self.rel, flags, Mode::empty()),
            (None, None) => {
                if !follow {
                    flags |= OFlags::NOFOLLOW;
                }
                openat(rustix::fs::CWD, &*self.top, flags, Mode::empty()).map_err(io::Error::from)
            }
        };
        let fd = opened.map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP | libc::ENOTDIR) => crate::fs::changed_error(&self.path()),
            _ => e,
        })?;
        let st = fstat(&fd)?;
        if st.st_dev != dev || st.st_ino != ino {
            return Err(crate::fs::changed_error(&self.path()));
        }
        Ok(File::from(fd))
    }
}

/// One entry the walk met, described from its parent's handle.
#[derive(Debug)]
pub struct Node {
    /// The path below the walked directory (`/`-separated bytes).
    pub rel: Vec<u8>,
    /// Its `lstat` (for a directory, the `fstat` of the handle the walk descends through).
    pub stat: Stat,
    /// A symlink's target.
    pub target: Option<Vec<u8>>,
    /// Its extended attributes, sorted by name, each name once (when asked for).
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// A regular file of one link whose attributes were asked for: they are read from the
    /// descriptor its reader opens ([`xattrs_fd`]), not here by a `/proc` path (the
    /// costliest step of a small file's walk, and the same inode as the bytes sealed).
    pub xattrs_at_open: bool,
    /// A regular file's directory, as the walk listed it (unless [`MAX_PARKED`] were open):
    /// for [`Place::listed`].
    pub parent: Option<Arc<Listed>>,
}

/// What the walk yields, in tree order (docs/FORMAT.md §6.2).
#[derive(Debug)]
pub enum Step {
    Node(Node),
    /// A path not walked, and why (`error`: not a deliberate skip).
    Problem {
        rel: Vec<u8>,
        why: String,
        error: bool,
    },
}

/// The text a path that changed while it was walked is reported with.
pub const CHANGED_WALKING: &str = "changed while being walked (replaced by another file or a link); not stored, run again to store it";

struct Level {
    fd: Arc<Listed>,
    rel: Vec<u8>,
    names: std::vec::IntoIter<Vec<u8>>,
}

/// A depth-first walk of a directory, each directory's entries sorted by name bytes.
pub struct Walk<'a> {
    levels: Vec<Level>,
    pending: Option<Step>,
    xattrs: bool,
    skip: &'a dyn Fn(&[u8], &[u8]) -> bool,
    max_depth: usize,
    /// The walk's directory handles open: its levels', and those its nodes still share.
    open: Arc<AtomicUsize>,
}

impl<'a> Walk<'a> {
    /// Walks below `root` (the directory itself is not yielded). `skip(rel, name)` leaves an
    /// entry out, a directory with everything below it; `xattrs` reads extended attributes;
    /// directories deeper than `max_depth` levels (the root's own level is 1) are reported,
    /// not entered.
    pub fn new(
        root: &Dir,
        xattrs: bool,
        max_depth: usize,
        skip: &'a dyn Fn(&[u8], &[u8]) -> bool,
    ) -> io::Result<Walk<'a>> {
        let fd = root.open_beneath(b"", OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())?;
        let mut w = Walk {
            levels: Vec::new(),
            pending: None,
            xattrs,
            skip,
            max_depth,
            open: Arc::new(AtomicUsize::new(0)),
        };
        if let Err(e) = w.enter(fd, Vec::new()) {
            w.pending = Some(problem(Vec::new(), e.to_string()));
        }
        Ok(w)
    }

    /// Lists `fd` and makes it the deepest level. A listing error stops the listing where it
    /// happened (the names read so far are walked).
    fn enter(&mut self, fd: OwnedFd, rel: Vec<u8>) -> io::Result<()> {
        let (names, err) = list(&fd);
        self.levels.push(Level {
            fd: Arc::new(Listed::new(fd, &self.open)),
            rel,
            names: names.into_iter(),
        });
        err.map_or(Ok(()), Err)
    }
}

/// What one entry of a listing made: the step to yield, a directory to enter after it, and a
/// problem to yield after it.
struct Met {
    step: Step,
    enter: Option<OwnedFd>,
    then: Option<Step>,
}

fn problem(rel: Vec<u8>, why: String) -> Step {
    Step::Problem {
        rel,
        why,
        error: true,
    }
}

/// Describes `name` in `parent` (whose level is `depth`, the root's being 1), opening it if
/// it is a directory.
fn meet(
    parent: BorrowedFd<'_>,
    rel: Vec<u8>,
    name: &[u8],
    depth: usize,
    max_depth: usize,
    xattrs: bool,
) -> Met {
    let done = |step| Met {
        step,
        enter: None,
        then: None,
    };
    let name_os = OsStr::from_bytes(name);
    let st = match statat(parent, name_os, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(e) => return done(problem(rel, io::Error::from(e).to_string())),
    };
    let xattrs_at = |rel: &[u8]| {
        if xattrs {
            xattrs_at(parent, name, rel)
        } else {
            Vec::new()
        }
    };
    let ft = FileType::from_raw_mode(st.st_mode);
    if ft == FileType::Symlink {
        return done(match readlinkat(parent, name_os, Vec::new()) {
            Ok(t) => Step::Node(Node {
                xattrs: xattrs_at(&rel),
                xattrs_at_open: false,
                rel,
                stat: st,
                target: Some(t.into_bytes()),
                parent: None,
            }),
            // Replaced by something else between the lstat and the readlink.
            Err(Errno::INVAL) => problem(rel, CHANGED_WALKING.into()),
            Err(e) => problem(rel, io::Error::from(e).to_string()),
        });
    }
    if ft != FileType::Directory {
        let at_open = xattrs && ft == FileType::RegularFile && st.st_nlink == 1;
        return done(Step::Node(Node {
            xattrs: if at_open { Vec::new() } else { xattrs_at(&rel) },
            xattrs_at_open: at_open,
            rel,
            stat: st,
            target: None,
            parent: None,
        }));
    }
    if depth >= max_depth {
        let why = format!(
            "nested deeper than {} directories (the most a vault holds); not stored",
            max_depth
        );
        return done(problem(rel, why));
    }
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = match openat(parent, name_os, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::LOOP | Errno::NOTDIR | Errno::NOENT) => {
            return done(problem(rel, CHANGED_WALKING.into()))
        }
        Err(e) => {
            // Unreadable (no permission): stored as a directory, its listing reported.
            return Met {
                then: Some(problem(rel.clone(), io::Error::from(e).to_string())),
                step: Step::Node(Node {
                    xattrs: xattrs_at(&rel),
                    xattrs_at_open: false,
                    rel,
                    stat: st,
                    target: None,
                    parent: None,
                }),
                enter: None,
            };
        }
    };
    let now = match fstat(&fd) {
        Ok(now) => now,
        Err(e) => return done(problem(rel, io::Error::from(e).to_string())),
    };
    if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) {
        return done(problem(rel, CHANGED_WALKING.into()));
    }
    let xattrs = if xattrs {
        xattrs_fd(fd.as_fd(), &rel)
    } else {
        Vec::new()
    };
    Met {
        step: Step::Node(Node {
            rel,
            stat: now,
            target: None,
            xattrs,
            xattrs_at_open: false,
            parent: None,
        }),
        enter: Some(fd),
        then: None,
    }
}

/// The attributes of `name` in `parent`, not following it: by the `/proc/self/fd` name of the
/// parent's handle (the one way to reach a symlink's or a device's attributes without a
/// path), else, for a regular file, by opening it.
fn xattrs_at(parent: BorrowedFd<'_>, name: &[u8], rel: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    if proc_fd() {
        let mut p = format!("/proc/self/fd/{}/", parent.as_raw_fd()).into_bytes();
        p.extend_from_slice(name);
        let p = Path::new(OsStr::from_bytes(&p));
        let list = xattr::list(p).map(|names| {
            names
                .filter_map(|n| Some((n.as_bytes().to_vec(), xattr::get(p, &n).ok()??)))
                .collect()
        });
        return finish_xattrs(list, rel);
    }
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY;
    match openat(
        parent,
        OsStr::from_bytes(name),
        flags | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) if fstat(&fd).is_ok_and(|s| FileType::from_raw_mode(s.st_mode).is_file()) => {
            xattrs_fd(fd.as_fd(), rel)
        }
        _ => {
            log::warn!(
                "{}: extended attributes not read (/proc is not mounted)",
                String::from_utf8_lossy(rel)
            );
            Vec::new()
        }
    }
}

impl Iterator for Walk<'_> {
    type Item = Step;

    fn next(&mut self) -> Option<Step> {
        if let Some(p) = self.pending.take() {
            return Some(p);
        }
        loop {
            let depth = self.levels.len();
            let level = self.levels.last_mut()?;
            let Some(name) = level.names.next() else {
                self.levels.pop();
                continue;
            };
            let mut rel = level.rel.clone();
            if !rel.is_empty() {
                rel.push(b'/');
            }
            rel.extend_from_slice(&name);
            if (self.skip)(&rel, &name) {
                continue;
            }
            let (max, xattrs) = (self.max_depth, self.xattrs);
            let mut met = meet(level.fd.dir.as_fd(), rel.clone(), &name, depth, max, xattrs);
            if let Step::Node(n) = &mut met.step {
                // Shared with a regular file (the only kind read through its place), while
                // few enough handles are open past the walk's levels.
                let parked = self.open.load(Ordering::Relaxed).saturating_sub(depth);
                if FileType::from_raw_mode(n.stat.st_mode).is_file() && parked < MAX_PARKED {
                    n.parent = Some(Arc::clone(&level.fd));
                }
            }
            if let Some(fd) = met.enter {
                if let Err(e) = self.enter(fd, rel.clone()) {
                    self.pending = Some(problem(rel, e.to_string()));
                }
            }
            if met.then.is_some() {
                self.pending = met.then;
            }
            return Some(met.step);
        }
    }
}

/// The names in a directory, sorted by their bytes, each once (a directory renamed in while
/// it is listed may show a name twice), and the error that stopped the listing early, if one
/// did.
fn list(fd: &OwnedFd) -> (Vec<Vec<u8>>, Option<io::Error>) {
    let mut names = Vec::new();
    let mut err = None;
    match rustix::fs::Dir::read_from(fd) {
        Ok(mut d) => {
            while let Some(e) = d.read() {
                match e {
                    Ok(e) => {
                        let n = e.file_name().to_bytes();
                        if n != b"." && n != b".." {
                            names.push(n.to_vec());
                        }
                    }
                    Err(e) => {
                        err = Some(io::Error::from(e));
                        break;
                    }
                }
            }
        }
        Err(e) => err = Some(io::Error::from(e)),
    }
    names.sort_unstable();
    names.dedup();
    (names, err)
}

/// Whether `/proc/self/fd` can name open directories (checked once).
fn proc_fd() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| Path::new("/proc/self/fd").is_dir())
}

/// The attributes of an open file or directory.
pub fn xattrs_fd(fd: BorrowedFd<'_>, rel: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    use rustix::fs::{fgetxattr, fgetxattr_query, flistxattr, flistxattr_query};
    let list = read_sized(|| flistxattr_query(fd), |b| flistxattr(fd, b)).map(|raw| {
        raw.split(|&b| b == 0)
            .filter(|n| !n.is_empty())
            .filter_map(|n| {
                let name = OsStr::from_bytes(n);
                let v = read_sized(|| fgetxattr_query(fd, name), |b| fgetxattr(fd, name, b));
                Some((n.to_vec(), v.ok()?))
            })
            .collect()
    });
    finish_xattrs(list, rel)
}

/// Reads a size-then-fill `*xattr` value with a buffer large enough (asked again if the value
/// grew in between). An attribute that vanished is an error the caller leaves out.
fn read_sized(
    query: impl Fn() -> rustix::io::Result<usize>,
    fill: impl Fn(&mut [u8]) -> rustix::io::Result<usize>,
) -> io::Result<Vec<u8>> {
    loop {
        let n = query()?;
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; n];
        match fill(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(Errno::RANGE) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// A listing, sorted by name with each name once (docs/FORMAT.md §6.1); a filesystem without
/// attributes has none.
fn finish_xattrs(list: io::Result<Vec<(Vec<u8>, Vec<u8>)>>, rel: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    match list {
        Ok(mut l) => {
            l.sort_by(|a, b| a.0.cmp(&b.0));
            l.dedup_by(|a, b| a.0 == b.0);
            l
        }
        Err(e) => {
            if !matches!(e.raw_os_error(), Some(libc::ENOTSUP | libc::ENOENT)) {
                log::warn!(
                    "{}: extended attributes not read: {e}",
                    String::from_utf8_lossy(rel)
                );
            }
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk_all(root: &Path, skip: &dyn Fn(&[u8], &[u8]) -> bool) -> Vec<String> {
        let d = Dir::open(root).unwrap();
        Walk::new(&d, false, 1024, skip)
            .unwrap()
            .map(|s| match s {
                Step::Node(n) => String::from_utf8(n.rel).unwrap(),
                Step::Problem { rel, why, .. } => {
                    format!("!{}: {why}", String::from_utf8(rel).unwrap())
                }
            })
            .collect()
    }

    /// Each directory's entries by name bytes, depth first; a skipped directory is not
    /// entered; a symlink to a directory is an entry, never entered.
    #[test]
    fn tree_order_and_skips() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        for d in ["b", "a", "a/x", "a-", "c", "c/deep", "c/deep/er"] {
            std::fs::create_dir(r.join(d)).unwrap();
        }
        for f in ["a/x/f", "a/B", "a-/f", "c/deep/er/f", "c/skipme", "Z"] {
            std::fs::write(r.join(f), b"x").unwrap();
        }
        std::os::unix::fs::symlink("/etc", r.join("b/etc")).unwrap();
        let skip = |rel: &[u8], name: &[u8]| rel == b"c/deep" || name == b"skipme";
        assert_eq!(
            walk_all(r, &skip),
            ["Z", "a", "a/B", "a/x", "a/x/f", "a-", "a-/f", "b", "b/etc", "c"]
        );
        let got = walk_all(r, &|_: &[u8], _: &[u8]| false);
        assert!(got.contains(&"c/deep/er/f".to_string()), "{got:?}");
        assert!(!got.iter().any(|p| p.starts_with("b/etc/")), "{got:?}");
    }

    /// Attributes of directories (read by their handle), files and symlinks (by the parent's
    /// handle), sorted by name.
    #[test]
    fn xattrs_by_handle() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir(r.join("d")).unwrap();
        std::fs::write(r.join("d/f"), b"x").unwrap();
        std::os::unix::fs::symlink("f", r.join("d/l")).unwrap();
        if xattr::set(r.join("d"), "user.b", b"2").is_err() {
            eprintln!("no user xattrs here; skipped");
            return;
        }
        xattr::set(r.join("d"), "user.a", b"1").unwrap();
        xattr::set(r.join("d/f"), "user.f", b"file").unwrap();
        // trusted.* is allowed on a symlink, for root.
        let on_link = xattr::set(r.join("d/l"), "trusted.l", b"link").is_ok();
        let d = Dir::open(r).unwrap();
        let skip = |_: &[u8], _: &[u8]| false;
        // A file of several links is read at the walk (its later names become hard-link
        // entries, never opened).
        std::fs::write(r.join("d/g"), b"y").unwrap();
        xattr::set(r.join("d/g"), "user.g", b"linked").unwrap();
        std::fs::hard_link(r.join("d/g"), r.join("d/h")).unwrap();
        let got: Vec<_> = Walk::new(&d, true, 8, &skip)
            .unwrap()
            .map(|s| match s {
                Step::Node(n) => (n.rel, n.xattrs, n.xattrs_at_open),
                Step::Problem { why, .. } => panic!("{why}"),
            })
            .collect();
        let x = |n: &str, v: &str| (n.as_bytes().to_vec(), v.as_bytes().to_vec());
        assert_eq!(
            got[0],
            (
                b"d".to_vec(),
                vec![x("user.a", "1"), x("user.b", "2")],
                false
            )
        );
        // A regular file of one link: left to the descriptor its reader opens.
        assert_eq!(got[1], (b"d/f".to_vec(), vec![], true));
        let f = std::fs::File::open(r.join("d/f")).unwrap();
        use std::os::fd::AsFd;
        assert_eq!(xattrs_fd(f.as_fd(), b"d/f"), vec![x("user.f", "file")]);
        assert_eq!(
            got[2],
            (b"d/g".to_vec(), vec![x("user.g", "linked")], false)
        );
        assert_eq!(
            got[3],
            (b"d/h".to_vec(), vec![x("user.g", "linked")], false)
        );
        if on_link {
            assert_eq!(
                got[4],
                (b"d/l".to_vec(), vec![x("trusted.l", "link")], false)
            );
        }
    }

    /// Directories past the depth limit are reported, not entered.
    #[test]
    fn depth_is_bounded() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("a/b/c")).unwrap();
        let d = Dir::open(t.path()).unwrap();
        let skip = |_: &[u8], _: &[u8]| false;
        let got: Vec<Step> = Walk::new(&d, false, 2, &skip).unwrap().collect();
        assert!(matches!(&got[0], Step::Node(n) if n.rel == b"a"));
        assert!(matches!(&got[1], Step::Problem { rel, error: true, .. } if rel == b"a/b"));
        assert_eq!(got.len(), 2);
    }

    /// A file is opened by name from the handle of the directory the walk listed it in: a
    /// link or another file put in its place after the walk is a change, never followed or
    /// read; the directory swapped for a link to elsewhere does not lead the open there.
    #[test]
    fn a_listed_place_opens_by_name_in_its_directory() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("f"), b"outside").unwrap();
        std::fs::write(outside.path().join("g"), b"outside").unwrap();
        std::fs::create_dir(t.path().join("d")).unwrap();
        for f in ["f", "g", "h"] {
            std::fs::write(t.path().join("d").join(f), b"inside").unwrap();
        }
        let root = Arc::new(Dir::open(t.path()).unwrap());
        let top: Arc<Path> = Arc::from(t.path());
        let skip = |_: &[u8], _: &[u8]| false;
        let places: Vec<(Place, Stat)> = Walk::new(&root, false, 8, &skip)
            .unwrap()
            .filter_map(|s| match s {
                Step::Node(n) if n.rel != b"d" => {
                    assert!(n.parent.is_some(), "a file shares its directory's handle");
                    let st = n.stat;
                    Some((Place::listed(&root, n.parent, &top, n.rel), st))
                }
                Step::Node(n) => {
                    assert!(n.parent.is_none(), "a directory does not");
                    None
                }
                Step::Problem { why, .. } => panic!("{why}"),
            })
            .collect();
        let [(f, fst), (g, gst), (h, hst)] = &places[..] else {
            panic!("{places:?}")
        };
        let read = |p: &Place, st: &Stat| {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut p.open(st.st_dev, st.st_ino, false, false)?, &mut s)
                .map(|_| s)
        };
        assert_eq!(read(f, fst).unwrap(), "inside");
        // d/f becomes a link to the outside file, d/g another file.
        let d = t.path().join("d");
        std::fs::remove_file(d.join("f")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("f"), d.join("f")).unwrap();
        // (Made before the old one goes, so that it cannot take its inode number.)
        std::fs::write(d.join("g.new"), b"new").unwrap();
        std::fs::rename(d.join("g.new"), d.join("g")).unwrap();
        for (p, st) in [(f, fst), (g, gst)] {
            let e = read(p, st).unwrap_err();
            assert!(crate::fs::is_changed(&e), "{}: {e}", p.display());
        }
        // The directory swapped for a link to the outside: the handle still names the walked
        // directory, whose file is the inode the walk saw.
        std::fs::rename(&d, t.path().join("d.old")).unwrap();
        std::os::unix::fs::symlink(outside.path(), &d).unwrap();
        std::fs::write(outside.path().join("h"), b"outside").unwrap();
        assert_eq!(read(h, hst).unwrap(), "inside");
    }

    /// However many files are held (in flight), the walk keeps at most [`MAX_PARKED`] handles
    /// open past its own levels (one more per level that closes while shared): files listed
    /// past that are opened by path, and still open.
    #[test]
    fn shared_handles_are_bounded() {
        let t = tempfile::tempdir().unwrap();
        let n = MAX_PARKED + 50;
        for i in 0..n {
            let d = t.path().join(format!("a/d{i:04}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("f"), b"x").unwrap();
        }
        let root = Arc::new(Dir::open(t.path()).unwrap());
        let top: Arc<Path> = Arc::from(t.path());
        let skip = |_: &[u8], _: &[u8]| false;
        let mut w = Walk::new(&root, false, 8, &skip).unwrap();
        let open = Arc::clone(&w.open);
        let mut held = Vec::new();
        for s in w.by_ref() {
            let Step::Node(n) = s else {
                panic!("a problem in the walk")
            };
            if FileType::from_raw_mode(n.stat.st_mode).is_file() {
                held.push((n.parent.is_some(), n.stat, n.rel, n.parent));
            }
            // Depth 3 (root, a, a/dNNNN): at most two levels close while shared at once.
            assert!(open.load(Ordering::Relaxed) <= MAX_PARKED + 3 + 2);
        }
        assert_eq!(held.len(), n);
        let shared = held.iter().filter(|h| h.0).count();
        assert!((MAX_PARKED..n).contains(&shared), "{shared}");
        for (_, st, rel, parent) in held {
            let p = Place::listed(&root, parent, &top, rel);
            p.open(st.st_dev, st.st_ino, false, false).unwrap();
        }
        assert_eq!(open.load(Ordering::Relaxed), 0);
    }

    /// A file replaced by a link after the walk is a change when opened, never followed.
    #[test]
    fn place_refuses_a_link_planted_after_the_walk() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"s").unwrap();
        std::fs::create_dir(t.path().join("d")).unwrap();
        std::fs::write(t.path().join("d/f"), b"f").unwrap();
        let root = Arc::new(Dir::open(t.path()).unwrap());
        let st = root.stat(b"d/f").unwrap();
        let place = Place::below(&root, &Arc::from(t.path()), b"d/f".to_vec());
        assert!(place.open(st.st_dev, st.st_ino, false, false).is_ok());
        std::fs::rename(t.path().join("d"), t.path().join("d.old")).unwrap();
        std::os::unix::fs::symlink(outside.path(), t.path().join("d")).unwrap();
        std::fs::rename(outside.path().join("secret"), outside.path().join("f")).unwrap();
        let e = place.open(st.st_dev, st.st_ino, false, false).unwrap_err();
        assert!(crate::fs::is_changed(&e), "{e}");
    }
}
