//! The restorer's operations on [`Dir`]: directories, files, links and nodes are created by
//! name below a directory handle, and their owners, modes, times and extended attributes are
//! set on handles, so that nothing a restore does can be led outside DEST by a directory
//! swapped for a symlink while it runs (README "Hostile filesystems").
//!
//! A `name` handed to these calls is a single path component (no `/`). Non-directories that
//! cannot be opened for writing (symlinks, FIFOs, device nodes) are reached through an
//! `O_PATH` handle ([`Node`]) and `/proc/self/fd/N`: the kernel resolves that magic link to
//! the handle's own inode and stops there, even when the inode is a symlink.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{
    chmod, chownat, fchmod, fchown, fsetxattr, fstat, futimens, linkat, mkdirat, mknodat, openat,
    readlinkat, renameat, setxattr, statat, symlinkat, unlinkat, utimensat, AtFlags, FileType, Gid,
    Mode, OFlags, Stat, Timespec, Timestamps, Uid, XattrFlags, CWD,
};
use rustix::io::Errno;

use super::Dir;

/// What identifies an inode: its device and inode numbers.
pub type Ident = (u64, u64);

/// The identity `st` describes.
#[allow(clippy::unnecessary_cast)] // the field types differ between targets
pub fn ident(st: &Stat) -> Ident {
    (st.st_dev as u64, st.st_ino as u64)
}

/// A recorded owner as the kernel takes it: -1 (`u32::MAX`) means "leave it" there, as
/// `chown(2)` does.
fn ids(uid: u32, gid: u32) -> (Option<Uid>, Option<Gid>) {
    (
        (uid != u32::MAX).then(|| Uid::from_raw(uid)),
        (gid != u32::MAX).then(|| Gid::from_raw(gid)),
    )
}

/// The kinds of node [`Dir::make_node`] creates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeKind {
    Fifo,
    CharDev(u64),
    BlockDev(u64),
}

/// Refuses a name that is not one plain component.
fn check_name(name: &[u8]) -> io::Result<&OsStr> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{:?} is not a single file name",
                String::from_utf8_lossy(name)
            ),
        ));
    }
    Ok(OsStr::from_bytes(name))
}

/// The path by which the kernel reaches an open descriptor's own inode.
fn proc_path(fd: BorrowedFd<'_>) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

fn timestamps(sec: i64, nsec: u32) -> Timestamps {
    let t = Timespec {
        tv_sec: sec,
        tv_nsec: nsec.into(),
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

impl Dir {
    /// This directory's identity.
    pub fn ident(&self) -> io::Result<Ident> {
        Ok(ident(&fstat(&self.fd)?))
    }

    /// `lstat` of `name` in this directory (a link is described, not followed).
    pub fn stat_at(&self, name: &[u8]) -> io::Result<Stat> {
        Ok(statat(
            &self.fd,
            check_name(name)?,
            AtFlags::SYMLINK_NOFOLLOW,
        )?)
    }

    /// The directory `name` in this one, made (mode 0700: nobody else enters it before its
    /// recorded mode is set, last) when absent; `true` when made. One found there (restored
    /// by an interrupted run, say with mode 0311 or 000) is opened to its owner (`u+rwx`)
    /// again. Whatever else is there (a symlink, a file) is refused: `ELOOP` or `ENOTDIR`.
    pub fn make_dir(&self, name: &[u8]) -> io::Result<(Dir, bool)> {
        let made = match mkdirat(&self.fd, check_name(name)?, Mode::from_raw_mode(0o700)) {
            Ok(()) => true,
            Err(Errno::EXIST) => false,
            Err(e) => return Err(e.into()),
        };
        if !made {
            // An `O_PATH` handle needs no permission on the directory itself; it opens a
            // link itself, which `O_DIRECTORY` refuses as ENOTDIR: say ELOOP for a link.
            let flags = OFlags::PATH | OFlags::DIRECTORY;
            let p = match self.open_beneath(name, flags, Mode::empty()) {
                Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
                    let st = self.stat_at(name)?;
                    return Err(match FileType::from_raw_mode(st.st_mode) {
                        FileType::Symlink => Errno::LOOP.into(),
                        _ => e,
                    });
                }
                r => r?,
            };
            let mode = fstat(&p)?.st_mode & 0o7777;
            if mode & 0o700 != 0o700 {
                chmod(proc_path(p.as_fd()), Mode::from_raw_mode(mode | 0o700))?;
            }
            let d = self.dir(name)?;
            if d.ident()? != ident(&fstat(&p)?) {
                return Err(io::Error::other("replaced while being opened"));
            }
            return Ok((d, false));
        }
        Ok((self.dir(name)?, true))
    }

    /// Opens `name` for reading if it is a regular file (checked before opening, so that no
    /// FIFO or device is ever opened, and after: the same inode); `None` otherwise.
    pub fn open_regular(&self, name: &[u8]) -> io::Result<Option<File>> {
        let st = self.stat_at(name)?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Ok(None);
        }
        let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY;
        let f = File::from(self.open_beneath(name, flags, Mode::empty())?);
        let now = fstat(&f)?;
        Ok((ident(&now) == ident(&st)).then_some(f))
    }

    /// A new file without a name in this directory (`O_TMPFILE`, mode 0600): its contents are
    /// never visible under any name before [`link_unnamed`](Self::link_unnamed). `None` where
    /// the filesystem has no `O_TMPFILE`.
    pub fn tmpfile(&self) -> io::Result<Option<File>> {
        let flags = OFlags::TMPFILE | OFlags::WRONLY | OFlags::CLOEXEC;
        match openat(&self.fd, ".", flags, Mode::from_raw_mode(0o600)) {
            Ok(fd) => Ok(Some(File::from(fd))),
            Err(Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// A new regular file `name` in this directory (mode 0600), never an existing one nor
    /// through a link.
    pub fn create_new(&self, name: &[u8]) -> io::Result<File> {
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW;
        let fd = openat(
            &self.fd,
            check_name(name)?,
            flags | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )?;
        Ok(File::from(fd))
    }

    /// Gives a file made by [`tmpfile`](Self::tmpfile) the name `name` here. `linkat` never
    /// replaces an existing name (`EEXIST`) and never follows a link there.
    pub fn link_unnamed(&self, f: &File, name: &[u8]) -> io::Result<()> {
        let name = check_name(name)?;
        match linkat(
            CWD,
            proc_path(f.as_fd()),
            &self.fd,
            name,
            AtFlags::SYMLINK_FOLLOW,
        ) {
            // No /proc: the descriptor itself (needs CAP_DAC_READ_SEARCH).
            Err(Errno::NOENT) => Ok(linkat(f, "", &self.fd, name, AtFlags::EMPTY_PATH)?),
            r => Ok(r?),
        }
    }

    /// Renames `from` to `to`, both in this directory (replacing a non-directory `to`).
    pub fn rename_in(&self, from: &[u8], to: &[u8]) -> io::Result<()> {
        Ok(renameat(
            &self.fd,
            check_name(from)?,
            &self.fd,
            check_name(to)?,
        )?)
    }

    /// Removes the non-directory `name` (a link is removed, never followed).
    pub fn remove(&self, name: &[u8]) -> io::Result<()> {
        Ok(unlinkat(&self.fd, check_name(name)?, AtFlags::empty())?)
    }

    /// Links the non-directory `name` here as `to` in `to_dir` (a symlink at `name` is
    /// linked itself, never followed).
    pub fn hard_link(&self, name: &[u8], to_dir: &Dir, to: &[u8]) -> io::Result<()> {
        Ok(linkat(
            &self.fd,
            check_name(name)?,
            &to_dir.fd,
            check_name(to)?,
            AtFlags::empty(),
        )?)
    }

    /// Makes the symlink `name` -> `target` here.
    pub fn symlink(&self, target: &[u8], name: &[u8]) -> io::Result<()> {
        Ok(symlinkat(
            OsStr::from_bytes(target),
            &self.fd,
            check_name(name)?,
        )?)
    }

    /// The target of the symlink `name` here.
    pub fn read_link(&self, name: &[u8]) -> io::Result<Vec<u8>> {
        Ok(readlinkat(&self.fd, check_name(name)?, Vec::new())?.into_bytes())
    }

    /// Makes a FIFO or device node `name` here, mode 0600 until its recorded mode is set.
    pub fn make_node(&self, name: &[u8], kind: NodeKind) -> io::Result<()> {
        let (ft, dev) = match kind {
            NodeKind::Fifo => (FileType::Fifo, 0),
            NodeKind::CharDev(d) => (FileType::CharacterDevice, d),
            NodeKind::BlockDev(d) => (FileType::BlockDevice, d),
        };
        Ok(mknodat(
            &self.fd,
            check_name(name)?,
            ft,
            Mode::from_raw_mode(0o600),
            dev,
        )?)
    }

    /// An `O_PATH` handle on the non-directory `name` here (a symlink is the link itself),
    /// for setting its metadata without opening it (a FIFO's open would block, a device's
    /// would reach the device).
    pub fn node(&self, name: &[u8]) -> io::Result<Node> {
        let fd = openat(
            &self.fd,
            check_name(name)?,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let st = fstat(&fd)?;
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            return Err(Errno::ISDIR.into());
        }
        Ok(Node { fd, st })
    }

    /// Removes the regular files in this directory whose names `stale` accepts (and nothing
    /// else: a link or directory of such a name stays); returns their names.
    pub fn remove_files(&self, stale: impl Fn(&[u8]) -> bool) -> io::Result<Vec<Vec<u8>>> {
        let list = self.open_beneath(b".", OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())?;
        let mut removed = Vec::new();
        for d in rustix::fs::Dir::read_from(&list)? {
            let d = d?;
            let name = d.file_name().to_bytes();
            if !stale(name) {
                continue;
            }
            let regular = match d.file_type() {
                FileType::RegularFile => true,
                FileType::Unknown => self
                    .stat_at(name)
                    .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::RegularFile),
                _ => false,
            };
            if regular {
                self.remove(name)?;
                removed.push(name.to_vec());
            }
        }
        Ok(removed)
    }
}

/// Sets the owner of an open file or directory.
pub fn set_owner(fd: impl AsFd, (uid, gid): (u32, u32)) -> io::Result<()> {
    let (uid, gid) = ids(uid, gid);
    Ok(fchown(fd, uid, gid)?)
}

/// Sets the mode (permission bits with setuid, setgid, sticky) of an open file or directory.
pub fn set_mode(fd: impl AsFd, mode: u32) -> io::Result<()> {
    Ok(fchmod(fd, Mode::from_raw_mode(mode & 0o7777))?)
}

/// Sets access and modification times of an open file or directory.
pub fn set_times(fd: impl AsFd, sec: i64, nsec: u32) -> io::Result<()> {
    Ok(futimens(fd, &timestamps(sec, nsec))?)
}

/// Sets an extended attribute of an open file or directory.
pub fn set_xattr(fd: impl AsFd, name: &OsStr, value: &[u8]) -> io::Result<()> {
    Ok(fsetxattr(fd, name, value, XattrFlags::empty())?)
}

/// An `O_PATH` handle on a symlink, FIFO or device node ([`Dir::node`]).
#[derive(Debug)]
pub struct Node {
    fd: OwnedFd,
    st: Stat,
}

impl Node {
    /// What the handle was opened on.
    pub fn stat(&self) -> &Stat {
        &self.st
    }

    pub fn is_symlink(&self) -> bool {
        FileType::from_raw_mode(self.st.st_mode) == FileType::Symlink
    }

    pub fn set_owner(&self, (uid, gid): (u32, u32)) -> io::Result<()> {
        let (uid, gid) = ids(uid, gid);
        Ok(chownat(
            &self.fd,
            "",
            uid,
            gid,
            AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
        )?)
    }

    /// Sets the mode of a FIFO or device node (a symlink has none: `EOPNOTSUPP`).
    pub fn set_mode(&self, mode: u32) -> io::Result<()> {
        if self.is_symlink() {
            return Err(Errno::OPNOTSUPP.into());
        }
        Ok(chmod(
            proc_path(self.fd.as_fd()),
            Mode::from_raw_mode(mode & 0o7777),
        )?)
    }

    pub fn set_times(&self, sec: i64, nsec: u32) -> io::Result<()> {
        Ok(utimensat(
            CWD,
            proc_path(self.fd.as_fd()),
            &timestamps(sec, nsec),
            AtFlags::empty(),
        )?)
    }

    /// Sets an extended attribute of the node itself (of a symlink, not its target:
    /// `lsetxattr` semantics). Linux refuses `user.*` on symlinks and device nodes (`EPERM`).
    pub fn set_xattr(&self, name: &OsStr, value: &[u8]) -> io::Result<()> {
        Ok(setxattr(
            proc_path(self.fd.as_fd()),
            name,
            value,
            XattrFlags::empty(),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// Metadata set through a symlink's handle lands on the link, never on its target.
    #[test]
    fn node_handles_act_on_the_link_itself() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("t");
        std::fs::write(&target, b"x").unwrap();
        let before = std::fs::metadata(&target).unwrap();
        let root = Dir::open(t.path()).unwrap();
        root.symlink(target.as_os_str().as_bytes(), b"l").unwrap();
        let n = root.node(b"l").unwrap();
        assert!(n.is_symlink());
        n.set_times(1_000_000, 5).unwrap();
        assert!(n.set_mode(0o600).is_err());
        let md = std::fs::symlink_metadata(t.path().join("l")).unwrap();
        assert_eq!((md.mtime(), md.mtime_nsec()), (1_000_000, 5));
        let after = std::fs::metadata(&target).unwrap();
        assert_eq!(after.mtime(), before.mtime());
        assert_eq!(after.mode(), before.mode());
        assert_eq!(root.read_link(b"l").unwrap(), target.as_os_str().as_bytes());
    }

    /// A directory name held by a symlink or a file is refused, not followed.
    #[test]
    fn make_dir_refuses_what_is_not_a_directory() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), t.path().join("l")).unwrap();
        std::fs::write(t.path().join("f"), b"").unwrap();
        let root = Dir::open(t.path()).unwrap();
        assert_eq!(
            root.make_dir(b"l").unwrap_err().raw_os_error(),
            Some(libc::ELOOP)
        );
        assert_eq!(
            root.make_dir(b"f").unwrap_err().raw_os_error(),
            Some(libc::ENOTDIR)
        );
        let (d, made) = root.make_dir(b"d").unwrap();
        assert!(made);
        assert!(!root.make_dir(b"d").unwrap().1);
        assert_eq!(d.ident().unwrap(), ident(&root.stat_at(b"d").unwrap()));
        for bad in [&b"a/b"[..], b"..", b".", b""] {
            assert!(root.make_dir(bad).is_err());
        }
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    /// An unnamed file gets its name once, never over an existing one.
    #[test]
    fn unnamed_files_are_linked_without_replacing() {
        use std::io::Write;
        let t = tempfile::tempdir().unwrap();
        let root = Dir::open(t.path()).unwrap();
        let mut f = root
            .tmpfile()
            .unwrap()
            .expect("O_TMPFILE on the test filesystem");
        f.write_all(b"abc").unwrap();
        root.link_unnamed(&f, b"a").unwrap();
        let err = root.link_unnamed(&f, b"a").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(t.path().join("a")).unwrap(), b"abc");
        assert!(root.open_regular(b"a").unwrap().is_some());
        // The named fallback: a new name only, renamed over the target.
        assert!(root.create_new(b"a").is_err());
        root.create_new(b"t").unwrap().write_all(b"def").unwrap();
        root.rename_in(b"t", b"a").unwrap();
        assert_eq!(std::fs::read(t.path().join("a")).unwrap(), b"def");
        root.make_node(b"p", NodeKind::Fifo).unwrap();
        assert!(root.open_regular(b"p").unwrap().is_none());
        assert_eq!(
            root.remove_files(|n| n == b"a" || n == b"p").unwrap(),
            [b"a".to_vec()]
        );
    }
}
