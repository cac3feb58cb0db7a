//! Enumerates sources into vault entries. No crypto, no writes.
//!
//! Each source becomes a top-level entry under its base name. Directories are walked without
//! following symlinks, in name order (so runs are deterministic); symlinks are recorded as
//! links; a block device given as a source is read whole, as an image. FIFOs and device nodes
//! inside a tree are recorded as such (as `tar` does); sockets are skipped and reported. Owners
//! are recorded by id and, where this machine names them, by name.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use rustix::fs::{FileType, Stat};

use crate::error::{Error, Result};
use crate::format;
use crate::format::manifest::{check_path, tree_cmp};
use crate::fs::byte_len;
use crate::fs::walk::{Place, Step, Walk};
use crate::fs::Dir;

/// What a source entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceKind {
    /// A regular file (or a block device read as an image when `device`).
    File {
        size: u64,
        device: bool,
    },
    Dir,
    Symlink {
        target: Vec<u8>,
    },
    Fifo,
    CharDev(u64),
    BlockDev(u64),
}

/// One entry found by the walk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceEntry {
    /// The path inside the vault (`base/rel/...`, raw bytes, '/'-separated).
    pub path: Vec<u8>,
    /// Where to read it (below its source's directory handle: [`Place::open`]).
    pub source: Place,
    pub kind: SourceKind,
    pub mode: u32,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub dev: u64,
    pub ino: u64,
    /// Status change time: a rewrite that puts the mtime back still moves it.
    pub ctime: i64,
    pub ctime_nsec: u32,
    pub uid: u32,
    pub gid: u32,
    /// Hard links to the inode (a regular file with more than one may recur in the tree).
    pub nlink: u64,
    /// Extended attributes (names and values), when asked for...
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// ...or, for a regular file of one link, to be read from the descriptor its reader
    /// opens ([`crate::fs::source::Source::xattrs`]).
    pub xattrs_at_open: bool,
}

/// A path the walk could not take, with why.
#[derive(Debug)]
pub struct Skipped {
    pub path: PathBuf,
    pub why: String,
    /// `true` for errors (unreadable), `false` for deliberate skips (special files).
    pub error: bool,
}

/// One thing the walk found: an entry, or a path it could not take.
#[derive(Debug)]
pub enum Found {
    Entry(SourceEntry),
    Skipped(Skipped),
}

/// One `--exclude`/`--only` glob. `*`, `?` and `[...]` stop at `/` (as in gitignore and
/// `tar --wildcards`); `**` crosses directories; `{a,b}` picks alternatives.
pub fn glob(pattern: &str) -> std::result::Result<Glob, globset::Error> {
    GlobBuilder::new(pattern).literal_separator(true).build()
}

/// What a walk takes: every path but those `--exclude` globs match, within a range of the
/// path space (a shard's, docs/FORMAT.md §6.6; the whole space otherwise).
#[derive(Clone, Debug)]
pub struct Select {
    globs: GlobSet,
    range: PathRange,
}

/// A contiguous range of vault paths in tree order (docs/FORMAT.md §6.2): from `from`
/// (inclusive; the start when `None`) up to `until` (exclusive; the end when `None`). The
/// directories on the way to `from` belong to it too, so that what it holds is a tree.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PathRange {
    pub from: Option<Vec<u8>>,
    pub until: Option<Vec<u8>>,
}

/// Where a path lies against a [`PathRange`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InRange {
    /// Before it (and so is everything below it).
    Before,
    Within,
    /// At its end or after (and so is everything after it in tree order).
    After,
}

impl PathRange {
    pub fn place(&self, path: &[u8]) -> InRange {
        use std::cmp::Ordering::Less;
        if let Some(u) = &self.until {
            if tree_cmp(path, u) != Less {
                return InRange::After;
            }
        }
        if let Some(f) = &self.from {
            let on_the_way = f.len() > path.len() && f.starts_with(path) && f[path.len()] == b'/';
            if tree_cmp(path, f) == Less && !on_the_way {
                return InRange::Before;
            }
        }
        InRange::Within
    }
}

impl Select {
    /// Only the paths of `range`.
    pub fn within(self, range: PathRange) -> Select {
        Select { range, ..self }
    }

    /// Whether the walk leaves out `path` (a vault path) and, for a directory, all below it.
    /// `base` is the source's top-level name, `rel` the path below it. The vault path is
    /// spelled only for a shard's walk: a whole walk pays nothing per entry for ranges.
    fn leaves_out(&self, base: &[u8], rel: &[u8], name: &[u8]) -> bool {
        if self.globs.is_match(Path::new(OsStr::from_bytes(rel)))
            || self.globs.is_match(Path::new(OsStr::from_bytes(name)))
        {
            return true;
        }
        if self.range == PathRange::default() {
            return false;
        }
        let mut path = Vec::with_capacity(base.len() + 1 + rel.len());
        path.extend_from_slice(base);
        path.push(b'/');
        path.extend_from_slice(rel);
        self.range.place(&path) != InRange::Within
    }
}

/// Compiles `--exclude` globs; a bad glob is a usage error naming it.
pub fn excludes(globs: &[String]) -> Result<Select> {
    let mut b = GlobSetBuilder::new();
    for g in globs {
        b.add(glob(g).map_err(|e| Error::Usage(format!("--exclude {g:?}: {e}")))?);
    }
    let globs = b
        .build()
        .map_err(|e| Error::Usage(format!("--exclude: {e}")))?;
    Ok(Select {
        globs,
        range: PathRange::default(),
    })
}

/// Size of a block device: ask the device (seek to its end), not `stat`, which says 0.
fn device_size(path: &Path) -> std::io::Result<u64> {
    let f = fs::File::open(path)?;
    byte_len(&f, &f.metadata()?)
}

fn entry(
    path: Vec<u8>,
    source: Place,
    st: &Stat,
    kind: SourceKind,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
) -> SourceEntry {
    SourceEntry {
        xattrs,
        xattrs_at_open: false,
        path,
        source,
        kind,
        mode: st.st_mode & 0o7777,
        mtime: st.st_mtime,
        mtime_nsec: (st.st_mtime_nsec as i64).clamp(0, 999_999_999) as u32,
        dev: st.st_dev,
        ino: st.st_ino,
        ctime: st.st_ctime,
        ctime_nsec: (st.st_ctime_nsec as i64).clamp(0, 999_999_999) as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        // Narrower than u64 on some targets.
        #[allow(clippy::unnecessary_cast)]
        nlink: st.st_nlink as u64,
    }
}

/// A named source's extended attributes, never following a link at its end. Attributes that
/// vanish between listing and reading are left out; a filesystem without them has none.
fn read_xattrs(p: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let names = match xattr::list(p) {
        Ok(n) => n,
        Err(e) => {
            if e.raw_os_error() != Some(libc::ENOTSUP) {
                log::warn!("{}: extended attributes not read: {e}", p.display());
            }
            return Vec::new();
        }
    };
    let mut out: Vec<(Vec<u8>, Vec<u8>)> = names
        .filter_map(|n| {
            let v = xattr::get(p, &n).ok()??;
            Some((n.as_bytes().to_vec(), v))
        })
        .collect();
    out.sort();
    out.dedup_by(|a, b| a.0 == b.0);
    out
}

/// Classifies an entry from its (not followed) status: `target` is a symlink's, `size` tells
/// a block device's size when it is to be read as an image (`None`: below the top, a device
/// node). `Ok(None)` is a socket.
fn classify(
    st: &Stat,
    target: Option<Vec<u8>>,
    size: Option<&dyn Fn() -> std::io::Result<u64>>,
) -> std::result::Result<Option<SourceKind>, String> {
    Ok(Some(match FileType::from_raw_mode(st.st_mode) {
        FileType::Symlink => SourceKind::Symlink {
            target: target.ok_or("a symlink whose target was not read")?,
        },
        FileType::Directory => SourceKind::Dir,
        FileType::RegularFile => SourceKind::File {
            size: st.st_size as u64,
            device: false,
        },
        FileType::BlockDevice => match size {
            Some(size) => SourceKind::File {
                size: size().map_err(|e| e.to_string())?,
                device: true,
            },
            None => SourceKind::BlockDev(st.st_rdev),
        },
        FileType::CharacterDevice => SourceKind::CharDev(st.st_rdev),
        FileType::Fifo => SourceKind::Fifo,
        _ => return Ok(None),
    }))
}

/// A source named by the user: its status (not following a link at its end) and kind.
fn top_kind(src: &Path) -> Result<(Stat, SourceKind)> {
    let usage = |why: String| Error::Usage(format!("source {}: {why}", src.display()));
    let st = rustix::fs::lstat(src).map_err(|e| usage(std::io::Error::from(e).to_string()))?;
    let target = if FileType::from_raw_mode(st.st_mode) == FileType::Symlink {
        let t = fs::read_link(src).map_err(|e| usage(e.to_string()))?;
        Some(t.into_os_string().into_vec())
    } else {
        None
    };
    match classify(&st, target, Some(&|| device_size(src))) {
        Ok(Some(k)) => Ok((st, k)),
        Ok(None) => Err(usage(
            "a socket; envseal stores files, directories, links, FIFOs and devices".into(),
        )),
        Err(why) => Err(usage(why)),
    }
}

/// Checks the sources and orders them by the base name each is stored under (the tree order
/// of the top level). Source-level problems (missing source, duplicate base names) are errors.
pub fn order_sources(sources: &[PathBuf]) -> Result<Vec<(Vec<u8>, PathBuf)>> {
    let mut tops: Vec<(Vec<u8>, PathBuf)> = Vec::new();
    for src in sources {
        top_kind(src)?;
        let base = base_name(src)?;
        if tops.iter().any(|(b, _)| *b == base) {
            return Err(Error::Usage(format!(
                "two sources share the base name {:?}; each source becomes a top-level entry, so base names must differ",
                String::from_utf8_lossy(&base)
            )));
        }
        tops.push((base, src.clone()));
    }
    tops.sort();
    Ok(tops)
}

/// Walks all sources in tree order (docs/FORMAT.md §6.2: each directory's entries sorted by
/// name, depth first), handing each entry or skipped path to `on` as it is found; `on`
/// returns `false` to stop. Problems below a source are reported as [`Found::Skipped`].
///
/// A source directory is walked by handles ([`crate::fs::walk`]): nothing below it is reached
/// through a symlink, whatever changes while the walk goes on.
pub fn walk_each(
    sources: &[PathBuf],
    select: &Select,
    xattrs: bool,
    mut on: impl FnMut(Found) -> bool,
) -> Result<()> {
    for (base, src) in order_sources(sources)? {
        match select.range.place(&base) {
            InRange::Before => continue,
            InRange::After => return Ok(()),
            InRange::Within => {}
        }
        let src = &src;
        let (st, kind) = top_kind(src)?;
        if kind != SourceKind::Dir {
            let x = if xattrs { read_xattrs(src) } else { Vec::new() };
            let e = entry(base.clone(), Place::top(src), &st, kind, x);
            if !on(Found::Entry(e)) {
                return Ok(());
            }
            continue;
        }
        let root = Arc::new(open_top(src, &st)?);
        let top: Arc<Path> = Arc::from(src.as_path());
        let x = if xattrs { read_xattrs(src) } else { Vec::new() };
        if !on(Found::Entry(entry(
            base.clone(),
            Place::top(src),
            &st,
            kind,
            x,
        ))) {
            return Ok(());
        }
        let skip = |rel: &[u8], name: &[u8]| select.leaves_out(&base, rel, name);
        // The vault's depth limit counts the source's own directory.
        let walk = Walk::new(&root, xattrs, format::MAX_DEPTH, &skip)
            .map_err(|e| Error::Usage(format!("source {}: {e}", src.display())))?;
        for step in walk {
            let found = match step {
                Step::Node(n) => {
                    let mut vpath = base.clone();
                    vpath.push(b'/');
                    vpath.extend_from_slice(&n.rel);
                    let place = Place::listed(&root, n.parent, &top, n.rel);
                    match classify(&n.stat, n.target, None) {
                        Ok(Some(kind)) => match check_path(&vpath) {
                            Ok(()) => {
                                let mut e = entry(vpath, place, &n.stat, kind, n.xattrs);
                                e.xattrs_at_open = n.xattrs_at_open;
                                Found::Entry(e)
                            }
                            Err(why) => skipped(&place, why, true),
                        },
                        Ok(None) => skipped(
                            &place,
                            "socket skipped (a socket cannot be stored)".into(),
                            false,
                        ),
                        Err(why) => skipped(&place, why, true),
                    }
                }
                Step::Problem { rel, why, error } => Found::Skipped(Skipped {
                    path: Place::below(&root, &top, rel).path(),
                    why,
                    error,
                }),
            };
            if !on(found) {
                return Ok(());
            }
        }
    }
    Ok(())
}

fn skipped(place: &Place, why: String, error: bool) -> Found {
    Found::Skipped(Skipped {
        path: place.path(),
        why,
        error,
    })
}

/// Opens a source directory the user named (links on the way are theirs; a link at its end
/// is stored as a link, never opened) and checks it is the directory `st` described.
fn open_top(src: &Path, st: &Stat) -> Result<Dir> {
    use rustix::fs::{Mode, OFlags};
    let usage = |why: String| Error::Usage(format!("source {}: {why}", src.display()));
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(rustix::fs::CWD, src, flags, Mode::empty())
        .map_err(|e| usage(std::io::Error::from(e).to_string()))?;
    let now = rustix::fs::fstat(&fd).map_err(|e| usage(std::io::Error::from(e).to_string()))?;
    if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) {
        return Err(usage(
            "replaced while being opened; run the same command again".into(),
        ));
    }
    Ok(Dir::from_fd(fd))
}

/// The base name a source is stored under. `.` and `dir/..` are resolved to the directory's
/// own name; `/` has none.
fn base_name(src: &Path) -> Result<Vec<u8>> {
    let owned;
    let name = match src.file_name() {
        Some(n) if n != OsStr::new("..") => n,
        _ => {
            owned = fs::canonicalize(src)
                .map_err(|e| Error::Usage(format!("source {}: {e}", src.display())))?;
            owned.file_name().ok_or_else(|| {
                Error::Usage(format!(
                    "source {}: has no base name to store it under; name a directory below it",
                    src.display()
                ))
            })?
        }
    };
    Ok(name.as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walked(sources: &[PathBuf], exclude: &[&str]) -> Vec<String> {
        walked_within(sources, exclude, PathRange::default())
    }

    fn walked_within(sources: &[PathBuf], exclude: &[&str], range: PathRange) -> Vec<String> {
        let ex: Vec<String> = exclude.iter().map(|s| s.to_string()).collect();
        let ex = excludes(&ex).unwrap().within(range);
        let mut out = Vec::new();
        walk_each(sources, &ex, false, |f| {
            out.push(match f {
                Found::Entry(e) => String::from_utf8(e.path).unwrap(),
                Found::Skipped(s) => format!("skipped {}", s.path.display()),
            });
            true
        })
        .unwrap();
        out
    }

    /// A shard's range: consecutive ranges cut the walk into parts that hold each path
    /// once, each with the directories on the way to its first path (docs/FORMAT.md §6.6),
    /// whole sources before or after a range left out, excludes still applied.
    #[test]
    fn ranges_cut_the_walk_into_parts() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        for d in ["a/x/deep", "a/y", "b"] {
            fs::create_dir_all(t.path().join(d)).unwrap();
        }
        for f in [
            "a/x/deep/1",
            "a/x/2",
            "a/y/3",
            "a/y/4",
            "a/z",
            "a/skip",
            "b/5",
        ] {
            fs::write(t.path().join(f), f).unwrap();
        }
        let sources = [b.clone(), a.clone()];
        let all = walked(&sources, &["skip"]);
        let cut = |from: Option<&str>, until: Option<&str>| {
            let range = PathRange {
                from: from.map(|p| p.as_bytes().to_vec()),
                until: until.map(|p| p.as_bytes().to_vec()),
            };
            walked_within(&sources, &["skip"], range)
        };
        let bounds = [
            None,
            Some("a/x/deep/1"),
            Some("a/y/4"),
            Some("b"),
            Some("b/5"),
            None,
        ];
        let parts: Vec<Vec<String>> = bounds.windows(2).map(|w| cut(w[0], w[1])).collect();
        assert_eq!(parts[0], ["a", "a/x", "a/x/2", "a/x/deep"]);
        assert_eq!(
            parts[1],
            ["a", "a/x", "a/x/deep", "a/x/deep/1", "a/y", "a/y/3"]
        );
        assert_eq!(parts[2], ["a", "a/y", "a/y/4", "a/z"]);
        assert_eq!(parts[3], ["b"]);
        assert_eq!(parts[4], ["b", "b/5"]);
        // Joined, dropping the directories a part repeats, they are the whole walk.
        let mut joined: Vec<String> = Vec::new();
        for p in parts {
            for e in p {
                if !joined.contains(&e) {
                    joined.push(e);
                }
            }
        }
        assert_eq!(joined, all);
    }

    /// Tree order over several sources (by base name, then each directory's entries by
    /// name bytes, depth first); `--exclude` by path below the source or by name, an excluded
    /// directory with all below it; sockets reported as skipped; a symlink is an entry.
    #[test]
    fn order_and_excludes() {
        let t = tempfile::tempdir().unwrap();
        let (one, two) = (t.path().join("one"), t.path().join("b-two"));
        for d in ["one/sub", "one/sub/skip", "one/Up", "b-two"] {
            fs::create_dir_all(t.path().join(d)).unwrap();
        }
        for f in [
            "one/z",
            "one/sub/a.tmp",
            "one/sub/b",
            "one/sub/skip/c",
            "one/Up/x",
            "b-two/f",
        ] {
            fs::write(t.path().join(f), b"x").unwrap();
        }
        std::os::unix::fs::symlink("sub", one.join("link")).unwrap();
        let _sock = std::os::unix::net::UnixListener::bind(one.join("sock")).unwrap();
        let got = walked(&[one.clone(), two.clone()], &["*.tmp", "sub/skip"]);
        let sock = format!("skipped {}", one.join("sock").display());
        assert_eq!(
            got,
            [
                "b-two",
                "b-two/f",
                "one",
                "one/Up",
                "one/Up/x",
                "one/link",
                &sock,
                "one/sub",
                "one/sub/b",
                "one/z"
            ]
        );
        // The whole tree without excludes: the excluded parts come back.
        let all = walked(&[one], &[]);
        assert!(all.contains(&"one/sub/skip/c".to_string()), "{all:?}");
        assert!(all.contains(&"one/sub/a.tmp".to_string()), "{all:?}");
    }

    /// A walked entry is read from a handle of its walk, never through a path: its directory
    /// moved away and replaced by a link after the walk, it is still the inode the walk saw
    /// (read by the handle of the directory it was listed in), never the link's target; the
    /// file itself replaced by a link is a change.
    #[test]
    fn entries_open_below_the_source_handle() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("s");
        fs::create_dir_all(src.join("d")).unwrap();
        fs::write(src.join("d/f"), b"inside").unwrap();
        let outside = t.path().join("o");
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("f"), b"outside").unwrap();
        let mut entries = Vec::new();
        walk_each(
            std::slice::from_ref(&src),
            &excludes(&[]).unwrap(),
            false,
            |f| {
                if let Found::Entry(e) = f {
                    entries.push(e);
                }
                true
            },
        )
        .unwrap();
        let f = entries.iter().find(|e| e.path == b"s/d/f").unwrap();
        assert!(f.source.open(f.dev, f.ino, false, false).is_ok());
        fs::rename(src.join("d"), src.join("d.away")).unwrap();
        std::os::unix::fs::symlink(&outside, src.join("d")).unwrap();
        let mut read = String::new();
        let mut file = f.source.open(f.dev, f.ino, false, false).unwrap();
        std::io::Read::read_to_string(&mut file, &mut read).unwrap();
        assert_eq!(read, "inside");
        fs::remove_file(src.join("d.away/f")).unwrap();
        std::os::unix::fs::symlink(outside.join("f"), src.join("d.away/f")).unwrap();
        let e = f.source.open(f.dev, f.ino, false, false).unwrap_err();
        assert!(crate::fs::is_changed(&e), "{e}");
        assert!(e.to_string().contains("changed while being read"), "{e}");
    }
}
