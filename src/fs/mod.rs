//! The only code that opens paths below SRC and DEST: every path is resolved from a
//! directory handle and never through a symlink, so a directory swapped for a link while a
//! run goes on (by any user who owns one below SRC or DEST) cannot lead it elsewhere
//! (README "Hostile filesystems"). The walker and the restorer both use it.
//!
//! Paths handed to [`Dir`] are relative, `/`-separated byte strings without `.`, `..` or
//! empty components (vault paths are checked by `manifest::check_path`). They are resolved
//! with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` where the kernel has it (5.6+),
//! else one component at a time with `O_NOFOLLOW`.

pub mod restore;
pub mod walk;

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{openat, openat2, statat, AtFlags, Mode, OFlags, ResolveFlags, Stat, CWD};
use rustix::io::Errno;

/// Set once `openat2` was found missing (old kernel, or a seccomp filter that refuses it).
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// An open directory: the anchor every path below it is resolved from.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
}

impl AsFd for Dir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Dir {
    /// Opens the directory a user named (a SRC or DEST itself). Links in the named path are
    /// the user's own choice and are followed; nothing below it is reached but through this
    /// handle.
    pub fn open(path: &Path) -> io::Result<Dir> {
        let fd = openat(
            CWD,
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Dir { fd })
    }

    /// Wraps a descriptor the caller knows to be an open directory.
    pub fn from_fd(fd: OwnedFd) -> Dir {
        Dir { fd }
    }

    /// A second handle on the same directory.
    pub fn try_clone(&self) -> io::Result<Dir> {
        Ok(Dir {
            fd: self.fd.try_clone()?,
        })
    }

    /// Opens `rel` below this directory with `flags` (`O_NOFOLLOW` and `O_CLOEXEC` are
    /// added), crossing no symlink on the way, the last component included: a link anywhere
    /// is `ELOOP`. An empty `rel` opens this directory again.
    pub fn open_beneath(&self, rel: &[u8], flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
        let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let rel = if rel.is_empty() { &b"."[..] } else { rel };
        check_rel(rel)?;
        if !NO_OPENAT2.load(Ordering::Relaxed) {
            let how =
                ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
            match openat2(&self.fd, OsStr::from_bytes(rel), flags, mode, how) {
                Err(Errno::NOSYS | Errno::PERM) => NO_OPENAT2.store(true, Ordering::Relaxed),
                // Retried by the kernel's own rule: a rename elsewhere on the filesystem
                // raced the lookup; nothing was followed.
                Err(Errno::AGAIN) => return self.open_beneath(rel, flags, mode),
                r => return r.map_err(io::Error::from),
            }
        }
        self.open_stepwise(rel, flags, mode)
    }

    /// [`open_beneath`](Self::open_beneath) without `openat2`: every directory on the way is
    /// opened with `O_NOFOLLOW | O_DIRECTORY` from the one before.
    fn open_stepwise(&self, rel: &[u8], flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
        let mut parts = rel.split(|&b| b == b'/').peekable();
        let mut at: Option<OwnedFd> = None;
        while let Some(part) = parts.next() {
            let base = at.as_ref().map_or(self.fd.as_fd(), |f| f.as_fd());
            if parts.peek().is_none() {
                return Ok(openat(base, OsStr::from_bytes(part), flags, mode)?);
            }
            let step = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            match openat(base, OsStr::from_bytes(part), step, Mode::empty()) {
                Ok(fd) => at = Some(fd),
                // A link on the way is ELOOP, as openat2 reports it.
                Err(Errno::NOTDIR)
                    if statat(base, OsStr::from_bytes(part), AtFlags::SYMLINK_NOFOLLOW)
                        .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFLNK) =>
                {
                    return Err(io::Error::from(Errno::LOOP))
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(io::Error::from(Errno::INVAL))
    }

    /// The directory `rel` below this one (no symlink crossed).
    pub fn dir(&self, rel: &[u8]) -> io::Result<Dir> {
        let fd = self.open_beneath(rel, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())?;
        Ok(Dir { fd })
    }

    /// The parent directory of `rel` (opened as [`dir`](Self::dir) does) and `rel`'s last
    /// component, for the `*at` calls that act on a name without following it.
    pub fn parent<'a>(&self, rel: &'a [u8]) -> io::Result<(Dir, &'a [u8])> {
        check_rel(rel)?;
        match rel.iter().rposition(|&b| b == b'/') {
            Some(i) => Ok((self.dir(&rel[..i])?, &rel[i + 1..])),
            None => Ok((self.try_clone()?, rel)),
        }
    }

    /// `lstat` of `rel` below this directory: a link at the end is described, not followed.
    pub fn stat(&self, rel: &[u8]) -> io::Result<Stat> {
        if rel.is_empty() {
            return Ok(rustix::fs::fstat(&self.fd)?);
        }
        let (dir, name) = self.parent(rel)?;
        Ok(statat(
            &dir.fd,
            OsStr::from_bytes(name),
            AtFlags::SYMLINK_NOFOLLOW,
        )?)
    }
}

/// Refuses what a relative path below a directory must not hold: a leading `/`, empty
/// components, `.` and `..` (a single `.` alone means the directory itself).
fn check_rel(rel: &[u8]) -> io::Result<()> {
    if rel == b"." {
        return Ok(());
    }
    let bad = rel.is_empty()
        || rel
            .split(|&b| b == b'/')
            .any(|c| c.is_empty() || c == b"." || c == b".." || c.contains(&0));
    if bad {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{:?} is not a plain relative path",
                String::from_utf8_lossy(rel)
            ),
        ));
    }
    Ok(())
}

/// `p` absolute, with symlinks and `..` resolved in the part of it that exists (an output
/// directory may not exist yet), so that paths spelled differently compare equal.
pub fn resolved(p: &std::path::Path) -> std::path::PathBuf {
    let Ok(p) = std::path::absolute(p) else {
        return p.to_path_buf();
    };
    let mut existing = p.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(mut real) = std::fs::canonicalize(existing) {
            for part in rest.iter().rev() {
                // `..` below a resolved directory: step up, as the kernel would.
                if *part == std::ffi::OsStr::new("..") {
                    real.pop();
                } else if *part != std::ffi::OsStr::new(".") {
                    real.push(part);
                }
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A link anywhere on the way, or at the end, is refused by both resolvers.
    #[test]
    fn never_crosses_a_symlink() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"x").unwrap();
        std::fs::create_dir(t.path().join("d")).unwrap();
        std::fs::write(t.path().join("d/f"), b"y").unwrap();
        std::os::unix::fs::symlink(outside.path(), t.path().join("l")).unwrap();
        std::os::unix::fs::symlink("f", t.path().join("d/lf")).unwrap();
        let root = Dir::open(t.path()).unwrap();
        for stepwise in [false, true] {
            let open = |rel: &[u8]| {
                if stepwise {
                    root.open_stepwise(rel, OFlags::RDONLY | OFlags::NOFOLLOW, Mode::empty())
                } else {
                    root.open_beneath(rel, OFlags::RDONLY, Mode::empty())
                }
            };
            assert!(open(b"d/f").is_ok());
            assert_eq!(
                open(b"l/secret").unwrap_err().raw_os_error(),
                Some(libc::ELOOP)
            );
            assert_eq!(open(b"d/lf").unwrap_err().raw_os_error(), Some(libc::ELOOP));
        }
        for bad in [&b"../x"[..], b"/etc", b"d//f", b"d/./f", b""] {
            assert!(root.parent(bad).is_err(), "{bad:?}");
        }
        assert!(root.stat(b"l").is_ok(), "the link itself is described");
    }
}
