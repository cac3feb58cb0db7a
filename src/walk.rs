//! Enumerates sources into vault entries. No crypto, no writes.
//!
//! Each source becomes a top-level entry under its base name. Directories are walked without
//! following symlinks, in name order (so runs are deterministic); symlinks are recorded as
//! links; a block device given as a source is read whole, as an image. FIFOs and device nodes
//! inside a tree are recorded as such (as `tar` does); sockets are skipped and reported. Owners
//! are recorded by id and, where this machine names them, by name.

use std::ffi::OsStr;
use std::fs::{self, Metadata};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};

use crate::error::{Error, Result};
use crate::manifest::check_path;

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
    /// Where to read it.
    pub source: PathBuf,
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
    /// Extended attributes (names and values), when asked for.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
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

/// Compiles `--exclude` globs; a bad glob is a usage error naming it.
pub fn excludes(globs: &[String]) -> Result<GlobSet> {
    let mut b = GlobSetBuilder::new();
    for g in globs {
        b.add(glob(g).map_err(|e| Error::Usage(format!("--exclude {g:?}: {e}")))?);
    }
    b.build()
        .map_err(|e| Error::Usage(format!("--exclude: {e}")))
}

/// Size of a block device: ask the device (seek to its end), not `stat`, which says 0.
fn device_size(path: &Path) -> std::io::Result<u64> {
    let f = fs::File::open(path)?;
    byte_len(&f, &f.metadata()?)
}

/// The bytes an open file holds: its length, or for a block device (whose `stat` says 0) its
/// end, as seeking finds it.
pub fn byte_len(f: &fs::File, md: &Metadata) -> std::io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    use std::os::unix::fs::FileTypeExt;
    if md.file_type().is_block_device() {
        let mut f = f;
        f.seek(SeekFrom::End(0))
    } else {
        Ok(md.len())
    }
}

fn entry(
    path: Vec<u8>,
    source: &Path,
    md: &Metadata,
    kind: SourceKind,
    xattrs: bool,
) -> SourceEntry {
    SourceEntry {
        xattrs: if xattrs {
            read_xattrs(source)
        } else {
            Vec::new()
        },
        path,
        source: source.to_path_buf(),
        kind,
        mode: md.mode() & 0o7777,
        mtime: md.mtime(),
        mtime_nsec: md.mtime_nsec().clamp(0, 999_999_999) as u32,
        dev: md.dev(),
        ino: md.ino(),
        ctime: md.ctime(),
        ctime_nsec: md.ctime_nsec().clamp(0, 999_999_999) as u32,
        uid: md.uid(),
        gid: md.gid(),
        nlink: md.nlink(),
    }
}

/// A path's extended attributes, never following a link. Attributes that vanish between
/// listing and reading are left out; a filesystem without them has none.
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
    out
}

/// Classifies one path from its (not followed) metadata. `top` allows block devices.
fn classify(
    path: &Path,
    md: &Metadata,
    top: bool,
) -> std::result::Result<Option<SourceKind>, String> {
    let ft = md.file_type();
    if ft.is_symlink() {
        let t = fs::read_link(path).map_err(|e| e.to_string())?;
        return Ok(Some(SourceKind::Symlink {
            target: t.as_os_str().as_bytes().to_vec(),
        }));
    }
    if ft.is_dir() {
        return Ok(Some(SourceKind::Dir));
    }
    if ft.is_file() {
        return Ok(Some(SourceKind::File {
            size: md.len(),
            device: false,
        }));
    }
    if ft.is_block_device() && top {
        let size = device_size(path).map_err(|e| e.to_string())?;
        return Ok(Some(SourceKind::File { size, device: true }));
    }
    if ft.is_block_device() {
        return Ok(Some(SourceKind::BlockDev(md.rdev())));
    }
    if ft.is_char_device() {
        return Ok(Some(SourceKind::CharDev(md.rdev())));
    }
    if ft.is_fifo() {
        return Ok(Some(SourceKind::Fifo));
    }
    Ok(None)
}

/// Checks the sources and orders them by the base name each is stored under (the tree order
/// of the top level). Source-level problems (missing source, duplicate base names) are errors.
pub fn order_sources(sources: &[PathBuf]) -> Result<Vec<(Vec<u8>, PathBuf)>> {
    let mut tops: Vec<(Vec<u8>, PathBuf)> = Vec::new();
    for src in sources {
        let md = fs::symlink_metadata(src)
            .map_err(|e| Error::Usage(format!("source {}: {e}", src.display())))?;
        match classify(src, &md, true) {
            Ok(Some(_)) => {}
            Ok(None) => {
                return Err(Error::Usage(format!(
                "source {}: a socket; envseal stores files, directories, links, FIFOs and devices",
                src.display()
            )))
            }
            Err(why) => return Err(Error::Usage(format!("source {}: {why}", src.display()))),
        }
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
pub fn walk_each(
    sources: &[PathBuf],
    exclude: &GlobSet,
    xattrs: bool,
    mut on: impl FnMut(Found) -> bool,
) -> Result<()> {
    for (base, src) in order_sources(sources)? {
        let src = &src;
        let md = fs::symlink_metadata(src)
            .map_err(|e| Error::Usage(format!("source {}: {e}", src.display())))?;
        let kind = match classify(src, &md, true) {
            Ok(Some(k)) => k,
            Ok(None) => {
                return Err(Error::Usage(format!(
                "source {}: a socket; envseal stores files, directories, links, FIFOs and devices",
                src.display()
            )))
            }
            Err(why) => return Err(Error::Usage(format!("source {}: {why}", src.display()))),
        };
        let is_dir = kind == SourceKind::Dir;
        if !on(Found::Entry(entry(base.clone(), src, &md, kind, xattrs))) {
            return Ok(());
        }
        if !is_dir {
            continue;
        }
        let it = walkdir::WalkDir::new(src)
            .follow_links(false)
            .min_depth(1)
            .sort_by_file_name()
            .into_iter()
            .filter_entry(|e| {
                let rel = e.path().strip_prefix(src).unwrap_or(e.path());
                !(exclude.is_match(rel) || exclude.is_match(e.file_name()))
            });
        let mut pending: Vec<Skipped> = Vec::new();
        for item in it {
            for s in pending.drain(..) {
                if !on(Found::Skipped(s)) {
                    return Ok(());
                }
            }
            let de = match item {
                Ok(de) => de,
                Err(e) => {
                    pending.push(Skipped {
                        path: e
                            .path()
                            .map(Path::to_path_buf)
                            .unwrap_or_else(|| src.clone()),
                        why: e
                            .io_error()
                            .map(|io| io.to_string())
                            .unwrap_or_else(|| e.to_string()),
                        error: true,
                    });
                    continue;
                }
            };
            let rel = de.path().strip_prefix(src).unwrap_or(de.path());
            let mut vpath = base.clone();
            for c in rel.components() {
                vpath.push(b'/');
                vpath.extend_from_slice(c.as_os_str().as_bytes());
            }
            let md = match de.metadata() {
                Ok(md) => md,
                Err(e) => {
                    pending.push(Skipped {
                        path: de.path().to_path_buf(),
                        why: e.to_string(),
                        error: true,
                    });
                    continue;
                }
            };
            match classify(de.path(), &md, false) {
                Ok(Some(kind)) => {
                    if let Err(why) = check_path(&vpath) {
                        pending.push(Skipped {
                            path: de.path().to_path_buf(),
                            why,
                            error: true,
                        });
                        continue;
                    }
                    if !on(Found::Entry(entry(vpath, de.path(), &md, kind, xattrs))) {
                        return Ok(());
                    }
                }
                Ok(None) => pending.push(Skipped {
                    path: de.path().to_path_buf(),
                    why: "socket skipped (a socket cannot be stored)".into(),
                    error: false,
                }),
                Err(why) => pending.push(Skipped {
                    path: de.path().to_path_buf(),
                    why,
                    error: true,
                }),
            }
        }
        for s in pending {
            if !on(Found::Skipped(s)) {
                return Ok(());
            }
        }
    }
    Ok(())
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
