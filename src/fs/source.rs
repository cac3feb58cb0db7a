//! Reading inputs: positional reads (`pread`) into the caller's buffers, around a file's holes
//! and zero extents, with the checks that tell a file that changed while it was read.
//!
//! Inputs are not memory-mapped: whole-file maps (format v1) cost a 4 GiB image 4.1 GiB of
//! RSS and most of its system time in page faults, where windowed reads stay bounded
//! (docs/PERFORMANCE.md, "I/O choice").

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::fs::changed_error;
use crate::fs::sparse::{Runs, Sparse};
use crate::fs::tree::SourceEntry;

/// An open input.
pub struct Source {
    file: File,
    path: PathBuf,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    /// Holes and zero extents found at open: neither read nor sealed (docs/FORMAT.md §6.4).
    sparse: Option<(Box<Sparse>, Runs)>,
}

/// How old a file's last change must be before it is read. A write moves ctime when it
/// starts, then copies its bytes: a read during that copy is torn, and the ctime check after
/// reading cannot see it (no later change moved ctime). A file changed less than this ago is
/// read once the change is this old, so a torn read needs a writer stalled mid-write for
/// longer (docs/RESUME.md, "Files that change while read").
const SETTLE: std::time::Duration = std::time::Duration::from_millis(50);

/// Waits until `md`'s change is [`SETTLE`] old; a file changed again meanwhile is
/// [`changed_error`] (retried by the caller).
fn settle(file: &std::fs::File, md: &std::fs::Metadata, path: &Path) -> io::Result<()> {
    let changed = std::time::UNIX_EPOCH
        + std::time::Duration::new(
            u64::try_from(md.ctime()).unwrap_or(0),
            u32::try_from(md.ctime_nsec()).unwrap_or(0),
        );
    let age = std::time::SystemTime::now()
        .duration_since(changed)
        .unwrap_or(std::time::Duration::ZERO);
    if age >= SETTLE {
        return Ok(());
    }
    // At most SETTLE, even when the clock stepped back.
    std::thread::sleep(SETTLE - age);
    let now = file.metadata()?;
    if (now.ctime(), now.ctime_nsec(), now.len()) != (md.ctime(), md.ctime_nsec(), md.len()) {
        return Err(changed_error(path));
    }
    Ok(())
}

impl Source {
    /// The extended attributes of the open file, for an entry whose walk left them to be
    /// read here ([`SourceEntry::xattrs_at_open`]); `rel` names it in a warning.
    pub fn xattrs(&self, rel: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        use std::os::fd::AsFd;
        crate::fs::walk::xattrs_fd(self.file.as_fd(), rel)
    }

    /// Opens a walked entry from a directory handle of its walk, crossing no symlink, and
    /// checks it is still the file the walk saw (same device and inode): a file replaced, or
    /// a directory on its way swapped for a link, is a [`Changed`] error
    /// ([`crate::fs::walk::Place::open`]).
    pub fn open(entry: &SourceEntry, device: bool) -> io::Result<Source> {
        let file = entry.source.open(entry.dev, entry.ino, device, false)?;
        let md = file.metadata()?;
        if !device {
            settle(&file, &md, &entry.source.path())?;
        }
        let (size, allocated) = if device {
            (crate::fs::byte_len(&file, &md)?, None)
        } else {
            if !md.is_file() {
                return Err(changed_error(&entry.source.path()));
            }
            (md.len(), Some(md.blocks().saturating_mul(512)))
        };
        let sparse = crate::fs::sparse::scan(&file, size, allocated)?.map(|s| {
            let runs = Runs::new(&s);
            (Box::new(s), runs)
        });
        Ok(Source {
            file,
            path: entry.source.path(),
            size,
            mtime: (md.mtime(), md.mtime_nsec()),
            ctime: (md.ctime(), md.ctime_nsec()),
            sparse,
        })
    }

    /// The bytes to seal: the size at open time less holes and zero extents (the record's
    /// plaintext length).
    pub fn size(&self) -> u64 {
        self.sparse.as_ref().map_or(self.size, |(s, _)| s.stored())
    }

    /// The file's holes and zero extents, if it has any.
    pub fn sparse(&self) -> Option<&Sparse> {
        self.sparse.as_ref().map(|(s, _)| &**s)
    }

    /// The modification time at open: what the entry records, since the bytes sealed are
    /// those of the file from its open on (checked by [`Source::unchanged`]: an in-place
    /// rewrite with its mtime put back, as `touch -r`, `cp -p` and rsync do, still moves
    /// ctime).
    pub fn mtime(&self) -> (i64, u32) {
        (self.mtime.0, self.mtime.1.clamp(0, 999_999_999) as u32)
    }

    /// The status change time at open (seconds, nanoseconds).
    pub fn ctime(&self) -> (i64, u32) {
        (self.ctime.0, self.ctime.1.clamp(0, 999_999_999) as u32)
    }

    /// Fills `buf` from `offset` of the bytes to seal (the file's own offsets, less its
    /// gaps). A short file is an error (it shrank), never a short read.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        match &self.sparse {
            None => self.read_file_at(offset, buf),
            Some((_, runs)) => {
                let len = buf.len();
                runs.each(offset, len, |at, r| self.read_file_at(at, &mut buf[r]))
            }
        }
    }

    fn read_file_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                changed_error(&self.path)
            } else {
                e
            }
        })
    }

    /// Whether the input is still as it was at open (size, mtime, ctime). Call after the last
    /// read; a `false` means the digests cannot be trusted.
    pub fn unchanged(&self, device: bool) -> io::Result<bool> {
        if device {
            return Ok(true);
        }
        let md = self.file.metadata()?;
        // The ctime too: a rewrite in place that puts the mtime back (`touch -r`, `cp -p`,
        // rsync) still moves it.
        Ok(md.len() == self.size
            && (md.mtime(), md.mtime_nsec()) == self.mtime
            && (md.ctime(), md.ctime_nsec()) == self.ctime)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::tree::SourceKind;
    use std::os::unix::fs::MetadataExt;

    fn entry(path: &Path) -> SourceEntry {
        let md = std::fs::metadata(path).unwrap();
        SourceEntry {
            path: b"f".to_vec(),
            source: crate::fs::walk::Place::top(path),
            kind: SourceKind::File {
                size: md.len(),
                device: false,
            },
            mode: 0o644,
            mtime: md.mtime(),
            mtime_nsec: md.mtime_nsec() as u32,
            dev: md.dev(),
            ino: md.ino(),
            ctime: md.ctime(),
            ctime_nsec: md.ctime_nsec() as u32,
            uid: md.uid(),
            gid: md.gid(),
            nlink: md.nlink(),
            xattrs: Vec::new(),
            xattrs_at_open: false,
        }
    }

    #[test]
    fn short_read_is_an_error_not_a_short_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, vec![1u8; 1000]).unwrap();
        let src = Source::open(&entry(&p), false).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(10)
            .unwrap();
        let mut buf = vec![0u8; 1000];
        let e = src.read_at(0, &mut buf).unwrap_err();
        assert!(e.to_string().contains("changed while being read"), "{e}");
    }

    /// A file replaced by a symlink after the walk (ELOOP at open) is a change, reported as
    /// one, never an I/O error and never read through the link.
    #[test]
    fn a_file_swapped_for_a_link_is_changed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"inside").unwrap();
        std::fs::write(dir.path().join("outside"), b"outside").unwrap();
        let e = entry(&p);
        std::fs::remove_file(&p).unwrap();
        std::os::unix::fs::symlink("outside", &p).unwrap();
        let err = Source::open(&e, false).err().unwrap();
        assert!(crate::fs::is_changed(&err), "{err}");
        assert!(
            err.to_string().contains("changed while being read"),
            "{err}"
        );
    }
}
