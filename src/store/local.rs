//! A vault in a local directory.
//!
//! Every guarantee rests on the filesystem: small files and the manifest are written under
//! a temporary name, synced, then renamed (or hard-linked, where an existing name must not
//! be replaced) into place and the directory synced; objects are written with `pwrite` and
//! made durable by one `syncfs` per group commit (the barrier); the journal is appended
//! and `fdatasync`ed; the writers' lock is `flock` on the vault directory. Vault files are
//! never opened through a symlink, and anything but a regular file in their place is an
//! integrity error (a FIFO must not hang a reader, nor a device feed it forever).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{
    Listed, LockGuard, Log, Name, NewFile, ObjectWriter, OpenedLog, ReadAt, Shape, Store, Traits,
};
use crate::error::{Error, IoContext, Result};

/// A vault directory.
#[derive(Clone, Debug)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    pub fn new(root: &Path) -> LocalStore {
        LocalStore {
            root: root.to_path_buf(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The path of `name` (names are `/`-separated and never absolute or `..`).
    pub fn path(&self, name: Name) -> PathBuf {
        self.root.join(name)
    }

    /// The directory `path` goes in, created if absent: every directory between the root
    /// and it must be a real directory (objects are never written through a symlink
    /// planted as `objects/` or as a fan-out directory).
    fn parent_dir(&self, path: &Path) -> Result<()> {
        let Some(dir) = path.parent() else {
            return Ok(());
        };
        let Ok(rel) = dir.strip_prefix(&self.root) else {
            return Ok(());
        };
        let mut at = self.root.clone();
        for c in rel.components() {
            at.push(c);
            match fs::symlink_metadata(&at) {
                Ok(m) if m.is_dir() => continue,
                Ok(_) => {
                    return Err(Error::Runtime(format!(
                    "{} is not a directory (a symlink?); refusing to write vault files through it",
                    at.display()
                )))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => match fs::create_dir(&at) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(Error::io(&at, e)),
                },
                Err(e) => return Err(Error::io(&at, e)),
            }
            // Created, or raced in by another: it must be a real directory now.
            if !fs::symlink_metadata(&at).is_ok_and(|m| m.is_dir()) {
                return Err(Error::Runtime(format!(
                    "{} is not a directory (a symlink?); refusing to write vault files through it",
                    at.display()
                )));
            }
        }
        Ok(())
    }
}

/// Opens a vault file for reading, refusing anything but a regular file before reading a
/// byte. `Ok(None)` when absent.
pub fn open_regular(path: &Path) -> Result<Option<File>> {
    open_existing(path, OpenOptions::new().read(true))
}

/// Opens an existing vault file with `how`, never through a symlink and without blocking
/// (a FIFO in its place must not hang the run), refusing anything but a regular file.
/// `Ok(None)` when absent.
fn open_existing(path: &Path, how: &mut OpenOptions) -> Result<Option<File>> {
    let f = how
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_NOCTTY)
        .open(path);
    let f = match f {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(Error::integrity(
                path.display().to_string(),
                "a symlink, not a regular file",
            ))
        }
        Err(e) => return Err(Error::io(path, e)),
    };
    check_regular(&f, path)?;
    Ok(Some(f))
}

/// Refuses an open file that is not a regular file (exit 3: a vault holds none).
pub fn check_regular(f: &File, path: &Path) -> Result<()> {
    let md = f.metadata().at(path)?;
    if !md.is_file() {
        return Err(Error::integrity(
            path.display().to_string(),
            "not a regular file (a FIFO, device or directory in place of a vault file)",
        ));
    }
    Ok(())
}

/// Creates `path` anew: what is there (a stale file, or a planted symlink: the link, not its
/// target) is removed first, and the new file is never opened through a link.
pub fn create_fresh(path: &Path) -> Result<File> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(Error::io(path, e)),
        _ => {}
    }
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .at(path)
}

/// Makes a directory's entries (new names, renames) durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

/// The temporary name a file is written under before it is put in place (`<stem>.tmp`;
/// docs/FORMAT.md §2 lists them, and a rerun removes those a kill left).
pub fn tmp_path(path: &Path) -> PathBuf {
    path.with_extension("tmp")
}

/// Writes `data` under the temporary name of `path`, synced; returns that name.
fn write_tmp(path: &Path, data: &[u8]) -> Result<PathBuf> {
    let tmp = tmp_path(path);
    let mut f = create_fresh(&tmp)?;
    f.write_all(data).at(&tmp)?;
    f.sync_all().at(&tmp)?;
    Ok(tmp)
}

/// Puts the synced temporary file `tmp` in place as `path`: renamed over it when
/// `replace`, else linked (a link never replaces a name another run put there first;
/// `Ok(false)`). The directory is synced either way.
fn publish(tmp: &Path, path: &Path, replace: bool) -> Result<bool> {
    let dir = path.parent().unwrap_or(Path::new("."));
    if replace {
        fs::rename(tmp, path).at(path)?;
    } else {
        match fs::hard_link(tmp, path) {
            Ok(()) => remove_if_present(tmp)?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                remove_if_present(tmp)?;
                return Ok(false);
            }
            // Filesystems without hard links: a rename that never replaces.
            Err(_) => {
                rustix::fs::renameat_with(
                    rustix::fs::CWD,
                    tmp,
                    rustix::fs::CWD,
                    path,
                    rustix::fs::RenameFlags::NOREPLACE,
                )
                .map_err(|e| Error::io(path, e.into()))?;
            }
        }
    }
    sync_dir(dir)?;
    Ok(true)
}

fn remove_if_present(p: &Path) -> Result<()> {
    match fs::remove_file(p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::io(p, e)),
        _ => Ok(()),
    }
}

impl Store for LocalStore {
    fn url(&self) -> String {
        self.root.display().to_string()
    }

    fn describe(&self, name: Name) -> String {
        self.path(name).display().to_string()
    }

    fn traits(&self) -> Traits {
        Traits {
            durable_partial: true,
        }
    }

    fn create_root(&self) -> Result<()> {
        if fs::metadata(&self.root).is_ok_and(|m| !m.is_dir()) {
            return Err(Error::Usage(format!(
                "{} exists and is not a directory; choose a new directory for the vault",
                self.root.display()
            )));
        }
        fs::create_dir_all(&self.root).at(&self.root)
    }

    fn root_exists(&self) -> Result<bool> {
        match fs::metadata(&self.root) {
            Ok(m) => Ok(m.is_dir()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io(&self.root, e)),
        }
    }

    fn remove_empty(&self, root: bool) {
        // Empty fan-out directories, `objects/`, then the root: `remove_dir` removes only
        // empty directories, so nothing of a vault is lost.
        let objects = self.root.join(crate::format::layout::OBJECTS_DIR);
        if let Ok(rd) = fs::read_dir(&objects) {
            for e in rd.flatten() {
                let _ = fs::remove_dir(e.path());
            }
        }
        let _ = fs::remove_dir(&objects);
        if root {
            let _ = fs::remove_dir(&self.root);
        }
    }

    fn len(&self, name: Name) -> Result<Option<u64>> {
        let p = self.path(name);
        match fs::symlink_metadata(&p) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(&p, e)),
            Ok(m) if m.is_file() => Ok(Some(m.len())),
            Ok(_) => Err(Error::integrity(
                p.display().to_string(),
                "not a regular file (a symlink, FIFO, device or directory in place of a vault file)",
            )),
        }
    }

    fn get(&self, name: Name, max: u64) -> Result<Option<Vec<u8>>> {
        let p = self.path(name);
        let Some(f) = open_regular(&p)? else {
            return Ok(None);
        };
        let mut out = Vec::new();
        f.take(max + 1).read_to_end(&mut out).at(&p)?;
        if out.len() as u64 > max {
            return Err(Error::integrity(
                p.display().to_string(),
                format!("longer than {max} bytes"),
            ));
        }
        Ok(Some(out))
    }

    fn reader(&self, name: Name) -> Result<Option<Box<dyn Read + Send>>> {
        let p = self.path(name);
        Ok(open_regular(&p)?.map(|f| Box::new(f) as Box<dyn Read + Send>))
    }

    fn open(&self, name: Name) -> Result<Option<Arc<dyn ReadAt>>> {
        let p = self.path(name);
        let Some(file) = open_regular(&p)? else {
            return Ok(None);
        };
        let len = file.metadata().at(&p)?.len();
        Ok(Some(Arc::new(LocalFile { file, len })))
    }

    fn list(&self, prefix: &str) -> Result<Vec<Listed>> {
        let mut out = Vec::new();
        let start = self.root.join(prefix.trim_end_matches('/'));
        let base = prefix.trim_end_matches('/');
        list_dir(&start, base, &mut out, 0)?;
        Ok(out)
    }

    fn put_new(&self, name: Name, data: &[u8]) -> Result<bool> {
        let p = self.path(name);
        self.parent_dir(&p)?;
        let tmp = write_tmp(&p, data)?;
        publish(&tmp, &p, false)
    }

    fn replace(&self, name: Name, data: &[u8]) -> Result<()> {
        let p = self.path(name);
        self.parent_dir(&p)?;
        let tmp = write_tmp(&p, data)?;
        publish(&tmp, &p, true).map(|_| ())
    }

    fn create_file(&self, name: Name) -> Result<Box<dyn NewFile>> {
        let path = self.path(name);
        self.parent_dir(&path)?;
        let tmp = tmp_path(&path);
        let file = create_fresh(&tmp)?;
        Ok(Box::new(LocalNewFile {
            out: BufWriter::with_capacity(1 << 20, file),
            tmp,
            path,
        }))
    }

    fn remove(&self, name: Name) -> Result<()> {
        remove_if_present(&self.path(name))
    }

    fn rename_over(&self, from: Name, to: Name) -> Result<()> {
        let to = self.path(to);
        fs::rename(self.path(from), &to).at(&to)?;
        sync_dir(to.parent().unwrap_or(&self.root))
    }

    fn create_object(&self, name: Name, _shape: Shape) -> Result<Box<dyn ObjectWriter>> {
        let path = self.path(name);
        self.parent_dir(&path)?;
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .at(&path)?;
        Ok(Box::new(LocalObject::new(file, path, 0, false)))
    }

    fn resume_object(
        &self,
        name: Name,
        _shape: Shape,
        kept: u64,
    ) -> Result<Option<Box<dyn ObjectWriter>>> {
        let path = self.path(name);
        let Some(file) = open_existing(&path, OpenOptions::new().write(true))? else {
            return Ok(None);
        };
        if file.metadata().at(&path)?.len() < kept {
            return Ok(None);
        }
        Ok(Some(Box::new(LocalObject::new(file, path, kept, true))))
    }

    fn barrier(&self) -> Result<()> {
        crate::fs::durable::sync_path(&self.root)
    }

    fn link_from(&self, from: &dyn Store, name: Name) -> Result<bool> {
        let Some(dir) = from.local_dir() else {
            return Ok(false);
        };
        let src = dir.join(name);
        let dst = self.path(name);
        self.parent_dir(&dst)?;
        match fs::hard_link(&src, &dst) {
            Ok(()) => Ok(true),
            // Another filesystem, or one without links: the caller copies.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EXDEV | libc::EPERM)) => Ok(false),
            Err(e) => Err(Error::io(&dst, e)),
        }
    }

    fn create_log(&self, name: Name, first: &[u8]) -> Result<Option<Box<dyn Log>>> {
        let path = self.path(name);
        let tmp = write_tmp(&path, first)?;
        // Opened before it is published: once linked, the name is this file.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .at(&tmp)?;
        if !publish(&tmp, &path, false)? {
            return Ok(None);
        }
        Ok(Some(Box::new(LocalLog {
            file,
            path,
            len: first.len() as u64,
        })))
    }

    fn open_log(&self, name: Name) -> Result<Option<OpenedLog>> {
        let path = self.path(name);
        let Some(file) = open_existing(&path, OpenOptions::new().read(true).write(true))? else {
            return Ok(None);
        };
        let mut body = Vec::new();
        (&file).read_to_end(&mut body).at(&path)?;
        let len = body.len() as u64;
        Ok(Some((Box::new(LocalLog { file, path, len }), body)))
    }

    fn lock(&self, create: bool) -> Result<Box<dyn LockGuard>> {
        Ok(Box::new(DirLock::acquire(&self.root, create)?))
    }

    fn scratch_name(&self, name: Name) -> Option<String> {
        tmp_path(Path::new(name)).to_str().map(str::to_string)
    }

    fn local_dir(&self) -> Option<PathBuf> {
        Some(self.root.clone())
    }
}

/// Lists `dir` (vault-relative `rel`) into `out`: files with their lengths, other things
/// (links, FIFOs) with length 0, directories descended into (never through a link). A
/// vault is two levels deep (`objects/<xx>/<id>`); deeper is listed as it is.
fn list_dir(dir: &Path, rel: &str, out: &mut Vec<Listed>, depth: usize) -> Result<()> {
    let rd = match fs::read_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
            return Err(Error::Runtime(format!(
                "{} is not a directory (a symlink?)",
                dir.display()
            )))
        }
        r => r.at(dir)?,
    };
    if depth == 0 && !fs::symlink_metadata(dir).at(dir)?.is_dir() {
        return Err(Error::Runtime(format!(
            "{} is not a directory (a symlink?)",
            dir.display()
        )));
    }
    for e in rd {
        let e = e.at(dir)?;
        let Some(n) = e.file_name().to_str().map(str::to_owned) else {
            // Not a name this program writes: listed by its lossy form, so a sweep or
            // verify still sees that something is there.
            let n = e.file_name().to_string_lossy().into_owned();
            out.push(Listed {
                name: join(rel, &n),
                len: 0,
                file: false,
            });
            continue;
        };
        let name = join(rel, &n);
        let ft = e.file_type().at(e.path())?;
        if ft.is_dir() && depth < 4 {
            list_dir(&e.path(), &name, out, depth + 1)?;
        } else {
            let file = ft.is_file();
            let len = if file {
                e.metadata().at(e.path())?.len()
            } else {
                0
            };
            out.push(Listed { name, len, file });
        }
    }
    Ok(())
}

fn join(rel: &str, name: &str) -> String {
    if rel.is_empty() {
        name.to_string()
    } else {
        format!("{rel}/{name}")
    }
}

struct LocalFile {
    file: File,
    len: u64,
}

impl ReadAt for LocalFile {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
}

/// An object file written with `pwrite`; durable at the next `syncfs`.
struct LocalObject {
    file: File,
    path: PathBuf,
    /// End of the bytes written in order from offset 0...
    prefix: u64,
    /// ...and pieces written beyond it (offset -> end).
    beyond: BTreeMap<u64, u64>,
    /// The end of the bytes written (and kept)...
    end: u64,
    /// ...and whether the file is an interrupted run's, which may hold more past it.
    resumed: bool,
}

impl LocalObject {
    fn new(file: File, path: PathBuf, prefix: u64, resumed: bool) -> LocalObject {
        LocalObject {
            file,
            path,
            prefix,
            beyond: BTreeMap::new(),
            end: prefix,
            resumed,
        }
    }
}

impl ObjectWriter for LocalObject {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.file.write_all_at(data, offset).at(&self.path)?;
        let end = offset + data.len() as u64;
        self.end = self.end.max(end);
        if offset <= self.prefix {
            self.prefix = self.prefix.max(end);
            while let Some((&o, &e)) = self.beyond.first_key_value() {
                if o > self.prefix {
                    break;
                }
                self.prefix = self.prefix.max(e);
                self.beyond.pop_first();
            }
        } else {
            self.beyond.insert(offset, end);
        }
        Ok(())
    }

    fn durable_len(&self) -> u64 {
        self.prefix
    }

    fn finish(self: Box<Self>) -> Result<()> {
        // A resumed object of open length may hold bytes of the interrupted run past the
        // end of what was written again.
        if self.resumed && self.file.metadata().at(&self.path)?.len() > self.end {
            self.file.set_len(self.end).at(&self.path)?;
        }
        Ok(())
    }

    fn abort(self: Box<Self>) -> Result<()> {
        drop(self.file);
        remove_if_present(&self.path)
    }
}

struct LocalNewFile {
    out: BufWriter<File>,
    tmp: PathBuf,
    path: PathBuf,
}

impl Write for LocalNewFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

impl NewFile for LocalNewFile {
    fn commit(self: Box<Self>, replace: bool) -> Result<bool> {
        let LocalNewFile { out, tmp, path } = *self;
        let file = out
            .into_inner()
            .map_err(|e| Error::io(&tmp, e.into_error()))?;
        file.sync_all().at(&tmp)?;
        drop(file);
        publish(&tmp, &path, replace)
    }
}

/// The journal: appended, `fdatasync`ed per append.
struct LocalLog {
    file: File,
    path: PathBuf,
    len: u64,
}

impl Log for LocalLog {
    fn append(&mut self, bytes: &[u8]) -> Result<()> {
        self.file.write_all_at(bytes, self.len).at(&self.path)?;
        self.file.sync_data().at(&self.path)?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    fn position(&self) -> u64 {
        self.len
    }

    fn truncate(&mut self, len: u64) -> Result<()> {
        self.file.set_len(len).at(&self.path)?;
        self.file.sync_data().at(&self.path)?;
        self.len = len;
        Ok(())
    }

    fn read_from(&self, from: u64) -> Result<Box<dyn Read + Send + '_>> {
        let mut f = self.file.try_clone().at(&self.path)?;
        f.seek(SeekFrom::Start(from)).at(&self.path)?;
        Ok(Box::new(f.take(self.len.saturating_sub(from))))
    }
}

/// The writers' lock on a local vault: `flock(2)` on the vault directory's own descriptor:
/// no lock file to leave behind, and the kernel releases it when the process dies, kill -9
/// included.
#[derive(Debug)]
pub struct DirLock {
    /// The locked directory's descriptor (closing it releases the lock); `None` on a
    /// filesystem without `flock` (some network filesystems): nothing held.
    _fd: Option<std::os::fd::OwnedFd>,
}

impl LockGuard for DirLock {}

impl DirLock {
    /// Locks the vault directory `vault`; with `create`, creates it first if it is absent
    /// (a new vault). Never waits: a vault another run holds is [`Error::Locked`].
    pub fn acquire(vault: &Path, create: bool) -> Result<DirLock> {
        use rustix::fs::{flock, fstat, open, stat, FlockOperation, Mode, OFlags};
        use rustix::io::Errno;
        let store = LocalStore::new(vault);
        // A directory removed or replaced between our open and our lock (a failed run
        // tidying up the vault it had created) is not the vault any more: open again.
        for _ in 0..8 {
            if create {
                store.create_root()?;
            }
            let fd = match open(
                vault,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            ) {
                Ok(fd) => fd,
                Err(Errno::NOENT) if create => continue,
                Err(Errno::NOENT) => {
                    return Err(Error::format(
                        vault.display().to_string(),
                        "no such directory",
                    ))
                }
                Err(e) => return Err(Error::io(vault, e.into())),
            };
            match flock(&fd, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {}
                Err(Errno::WOULDBLOCK) => {
                    let st = fstat(&fd).map_err(|e| Error::io(vault, e.into()))?;
                    return Err(Error::Locked {
                        path: vault.to_path_buf(),
                        pid: lock_holder(st.st_dev, st.st_ino),
                    });
                }
                Err(Errno::NOLCK | Errno::OPNOTSUPP | Errno::NOSYS) => {
                    log::warn!(
                        "{}: the filesystem does not support flock; running without the vault lock",
                        vault.display()
                    );
                    return Ok(DirLock { _fd: None });
                }
                Err(e) => return Err(Error::io(vault, e.into())),
            }
            let held = fstat(&fd).map_err(|e| Error::io(vault, e.into()))?;
            match stat(vault) {
                Ok(now) if now.st_dev == held.st_dev && now.st_ino == held.st_ino => {
                    return Ok(DirLock { _fd: Some(fd) })
                }
                Ok(_) | Err(Errno::NOENT) => continue,
                Err(e) => return Err(Error::io(vault, e.into())),
            }
        }
        Err(Error::Runtime(format!(
            "{}: the directory kept being replaced while it was being locked; is another program removing it?",
            vault.display()
        )))
    }
}

/// The process holding a `flock` on the file `(dev, ino)`, from `/proc/locks` (best effort:
/// `None` when it cannot be told, say in another PID namespace).
fn lock_holder(dev: u64, ino: u64) -> Option<u32> {
    let text = fs::read_to_string("/proc/locks").ok()?;
    let want = (
        u64::from(rustix::fs::major(dev)),
        u64::from(rustix::fs::minor(dev)),
        ino,
    );
    // "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF" (device numbers in hex).
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.get(1) != Some(&"FLOCK") {
            return None;
        }
        let mut id = f.get(5)?.split(':');
        let maj = u64::from_str_radix(id.next()?, 16).ok()?;
        let min = u64::from_str_radix(id.next()?, 16).ok()?;
        let i: u64 = id.next()?.parse().ok()?;
        ((maj, min, i) == want).then(|| f.get(4)?.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_writer_is_refused_until_the_first_lets_go() {
        let d = tempfile::tempdir().unwrap();
        let v = d.path().join("vault");
        let first = DirLock::acquire(&v, true).unwrap();
        assert!(v.is_dir());
        // Another open file description of the same directory: refused, naming this process.
        match DirLock::acquire(&v, false) {
            Err(Error::Locked { path, pid }) => {
                assert_eq!(path, v);
                assert_eq!(pid, Some(std::process::id()));
            }
            other => panic!("{other:?}"),
        }
        drop(first);
        let again = DirLock::acquire(&v, false).unwrap();
        drop(again);
        let file = d.path().join("file");
        fs::write(&file, b"x").unwrap();
        assert!(matches!(
            DirLock::acquire(&file, true),
            Err(Error::Usage(_))
        ));
        assert!(matches!(
            DirLock::acquire(&d.path().join("absent"), false),
            Err(Error::Format { .. })
        ));
    }

    /// The temporary name of a file put in place is predictable: a symlink planted there
    /// (by anyone who can write the vault directory) must not be followed, which would
    /// overwrite its target.
    #[test]
    fn puts_do_not_follow_a_planted_symlink() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        let v = d.path().join("v");
        fs::create_dir(&v).unwrap();
        std::os::unix::fs::symlink(&victim, v.join("keys-x.tmp")).unwrap();
        let s = LocalStore::new(&v);
        s.replace("keys-x.json", b"new").unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert_eq!(fs::read(v.join("keys-x.json")).unwrap(), b"new");
        std::os::unix::fs::symlink(&victim, v.join("manifest.tmp")).unwrap();
        let mut f = s.create_file("manifest.jsonl").unwrap();
        f.write_all(b"m").unwrap();
        assert!(f.commit(false).unwrap());
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
    }
}
