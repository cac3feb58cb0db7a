//! Opening a finished vault with its keys: the common first step of `decrypt`,
//! `verify --deep` and `ls` of concealed names; opening vault files safely; listing its
//! object files; and the writers' lock ([`VaultLock`]).

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use crate::crypto::BatchKey;
use crate::error::{Error, IoContext, Result};
use crate::format::layout;
use crate::keys::Kms;
use crate::manifest::ManifestReader;

/// Opens a vault file for reading, refusing anything but a regular file before reading a
/// byte: a FIFO planted in a vault must not hang the reader, nor a device feed it forever.
pub fn open_regular(path: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                Error::integrity(path.display().to_string(), "a symlink, not a regular file")
            } else {
                Error::io(path, e)
            }
        })?;
    check_regular(&f, path)?;
    Ok(f)
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

/// A vault opened with its keys: the manifest reader positioned at its first entry (with
/// concealed names revealed from there on) and every batch key unwrapped. Nothing it yields
/// is authenticated until [`Unlocked::authenticate`] succeeds after the last entry.
pub struct Unlocked {
    pub reader: ManifestReader,
    /// `keys[i]` is the key of batch `i`.
    pub keys: Vec<BatchKey>,
}

/// Opens the manifest and unwraps every batch key (one KMS `Decrypt` each, checked against
/// the batch's commitment and encryption context).
pub fn unlock(vault: &Path, kms: &Kms) -> Result<Unlocked> {
    let mut reader = ManifestReader::open(vault)?;
    let mut keys = Vec::with_capacity(reader.batches.len());
    for b in &reader.batches {
        keys.push(kms.unwrap(&reader.header.vault_id, b)?);
    }
    // Batch 0's name key reveals concealed names and, in every vault, opens each entry's
    // extended attributes as it is read, so that every reader refuses a bad list alike.
    if let Some(k) = keys.first() {
        reader.set_name_key(k.name_key());
    }
    Ok(Unlocked { reader, keys })
}

impl Unlocked {
    /// Checks the manifest's MAC with every batch key; call after the last entry was read.
    pub fn authenticate(&self) -> Result<()> {
        for (i, k) in self.keys.iter().enumerate() {
            self.reader.authenticate(i, k)?;
        }
        Ok(())
    }
}

/// What `objects/` holds, as vault-relative paths, read without following links (a link
/// planted there must not make the encrypt sweep delete, or verify list, files elsewhere):
/// every entry of each fan-out directory, and every entry of `objects/` that is not a real
/// directory. No `objects/` is an empty list; an `objects/` that is a link is an error.
pub fn object_files(vault: &Path) -> Result<Vec<PathBuf>> {
    let objects = vault.join(layout::OBJECTS_DIR);
    match fs::symlink_metadata(&objects) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(&objects, e)),
        Ok(md) if !md.is_dir() => {
            return Err(Error::Runtime(format!(
                "{} is not a directory (a symlink?)",
                objects.display()
            )))
        }
        Ok(_) => {}
    }
    let mut out = Vec::new();
    for sub in fs::read_dir(&objects).at(&objects)? {
        let sub = sub.at(&objects)?;
        let rel = Path::new(layout::OBJECTS_DIR).join(sub.file_name());
        if !sub.file_type().at(sub.path())?.is_dir() {
            out.push(rel);
            continue;
        }
        let dir = sub.path();
        for obj in fs::read_dir(&dir).at(&dir)? {
            out.push(rel.join(obj.at(&dir)?.file_name()));
        }
    }
    Ok(out)
}

/// A writer's exclusive hold on a vault, taken by every run that writes one (`encrypt`,
/// its resume and `--since`'s new vault, `rewrap`, `import-legacy -o`) before it reads
/// anything of the vault, and held until the guard drops (docs/LIFECYCLE.md, "One writer
/// at a time"). A second writer is refused at once with [`Error::Locked`]; readers take no
/// lock (every change a writer makes is an atomic rename).
///
/// On a local vault it is `flock(2)` on the vault directory's own descriptor: no lock file
/// to leave behind, and the kernel releases it when the process dies, kill -9 included. A
/// vault held elsewhere (an object store) would hold its lease here instead.
#[derive(Debug)]
pub struct VaultLock {
    _held: Held,
}

#[derive(Debug)]
enum Held {
    /// The locked directory's descriptor (closing it releases the lock).
    Dir { _fd: std::os::fd::OwnedFd },
    /// A filesystem without `flock` (some network filesystems): nothing held.
    Unsupported,
}

impl VaultLock {
    /// Locks the vault directory `vault`; with `create`, creates it first if it is absent
    /// (a new vault). Never waits: a vault another run holds is [`Error::Locked`].
    pub fn acquire(vault: &Path, create: bool) -> Result<VaultLock> {
        use rustix::fs::{flock, fstat, open, stat, FlockOperation, Mode, OFlags};
        use rustix::io::Errno;
        // A directory removed or replaced between our open and our lock (a failed run
        // tidying up the vault it had created) is not the vault any more: open again.
        for _ in 0..8 {
            if create {
                if fs::metadata(vault).is_ok_and(|m| !m.is_dir()) {
                    return Err(Error::Usage(format!(
                        "{} exists and is not a directory; choose a new directory for the vault",
                        vault.display()
                    )));
                }
                fs::create_dir_all(vault).at(vault)?;
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
                    return Ok(VaultLock {
                        _held: Held::Unsupported,
                    });
                }
                Err(e) => return Err(Error::io(vault, e.into())),
            }
            let held = fstat(&fd).map_err(|e| Error::io(vault, e.into()))?;
            match stat(vault) {
                Ok(now) if now.st_dev == held.st_dev && now.st_ino == held.st_ino => {
                    return Ok(VaultLock {
                        _held: Held::Dir { _fd: fd },
                    })
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
        let first = VaultLock::acquire(&v, true).unwrap();
        assert!(v.is_dir());
        // Another open file description of the same directory: refused, naming this process.
        match VaultLock::acquire(&v, false) {
            Err(Error::Locked { path, pid }) => {
                assert_eq!(path, v);
                assert_eq!(pid, Some(std::process::id()));
            }
            other => panic!("{other:?}"),
        }
        drop(first);
        let again = VaultLock::acquire(&v, false).unwrap();
        drop(again);
        let file = d.path().join("file");
        fs::write(&file, b"x").unwrap();
        assert!(matches!(
            VaultLock::acquire(&file, true),
            Err(Error::Usage(_))
        ));
        assert!(matches!(
            VaultLock::acquire(&d.path().join("absent"), false),
            Err(Error::Format { .. })
        ));
    }
}
