//! Reading inputs: memory maps where they pay, plain positional reads otherwise.
//!
//! The only `unsafe` in envseal lives here. A memory map of a file that another process
//! truncates raises SIGBUS on access to the vanished pages; a tool that encrypts live trees must
//! not die of that (PRODUCT §4). So maps are registered in a fixed table, and a SIGBUS handler
//! that finds the faulting address inside a registered map replaces the page with zeros and
//! counts the event; readers compare the count before and after, and treat a change (or a
//! changed size or mtime) as "the file changed while being read". Faults anywhere else get the
//! default action, so real bugs still crash loudly.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Once;

use memmap2::Mmap;

use crate::sparse::{Runs, Sparse};
use crate::walk::SourceEntry;

/// Files smaller than this are read, not mapped: a map costs more than it saves.
pub const MMAP_MIN: u64 = 256 * 1024;

const SLOTS: usize = 512;
static MAP_START: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
static MAP_LEN: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
static SIGBUS_COUNT: AtomicU64 = AtomicU64::new(0);
/// The page size, read once when the handler is installed (sysconf is not async-signal-safe).
static PAGE_SIZE: AtomicUsize = AtomicUsize::new(4096);
static INSTALL: Once = Once::new();

extern "C" fn on_sigbus(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for SA_SIGINFO handlers.
    let addr = unsafe { (*info).si_addr() } as usize;
    for i in 0..SLOTS {
        let start = MAP_START[i].load(Ordering::Acquire);
        let len = MAP_LEN[i].load(Ordering::Acquire);
        if start != 0 && start != usize::MAX && addr.wrapping_sub(start) < len {
            let page = PAGE_SIZE.load(Ordering::Relaxed);
            let base = addr & !(page - 1);
            // SAFETY: mmap is a system call; the page lies inside a mapping we own
            // (registered, not yet unmapped), so replacing it with zeros only affects our own
            // read of a file that is changing anyway, which the reader then discards.
            let r = unsafe {
                libc::mmap(
                    base as *mut libc::c_void,
                    page,
                    libc::PROT_READ,
                    libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if r != libc::MAP_FAILED {
                SIGBUS_COUNT.fetch_add(1, Ordering::AcqRel);
                return;
            }
            // The page could not be replaced: returning would fault again, forever. Fall
            // through to the default action (the process dies, as without the guard).
            break;
        }
    }
    // Not ours: restore the default action and return; the fault repeats and kills us.
    // SAFETY: signal() with SIG_DFL is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGBUS, libc::SIG_DFL);
    }
}

fn install_handler() {
    INSTALL.call_once(|| {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if let Ok(page) = usize::try_from(page) {
            if page.is_power_of_two() {
                PAGE_SIZE.store(page, Ordering::Relaxed);
            }
        }
        // SAFETY: a zeroed sigaction with our handler and SA_SIGINFO is a valid argument.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_sigbus as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO | libc::SA_NODEFER;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut());
        }
    });
}

/// A registered memory map; unregistered before it is unmapped.
struct GuardedMap {
    map: Mmap,
    slot: usize,
}

impl GuardedMap {
    /// Maps `file` if a slot is free.
    ///
    /// # Safety
    /// The map may change under us if another process writes the file; callers read through
    /// [`Source::read_at`] only, which copies and then checks for changes.
    unsafe fn new(file: &File) -> Option<GuardedMap> {
        install_handler();
        // SAFETY: see the function's contract; truncation is handled by the SIGBUS guard.
        let map = unsafe { Mmap::map(file) }.ok()?;
        let start = map.as_ptr() as usize;
        for slot in 0..SLOTS {
            if MAP_START[slot]
                .compare_exchange(0, usize::MAX, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                MAP_LEN[slot].store(map.len(), Ordering::Release);
                MAP_START[slot].store(start, Ordering::Release);
                let _ = map.advise(memmap2::Advice::Sequential);
                return Some(GuardedMap { map, slot });
            }
        }
        None
    }
}

impl Drop for GuardedMap {
    fn drop(&mut self) {
        MAP_START[self.slot].store(0, Ordering::Release);
        MAP_LEN[self.slot].store(0, Ordering::Release);
    }
}

/// An open input.
pub struct Source {
    file: File,
    path: PathBuf,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    map: Option<GuardedMap>,
    sigbus_at_open: u64,
    /// Holes and zero extents found at open: neither read nor sealed (docs/FORMAT.md §6.4).
    sparse: Option<(Box<Sparse>, Runs)>,
}

/// The error a reader reports when its input changed under it (a typed payload, so that
/// callers retry by kind: [`is_changed`]).
pub fn changed_error(path: &Path) -> io::Error {
    io::Error::other(Changed(path.to_path_buf()))
}

/// The payload of [`changed_error`].
#[derive(Debug)]
pub struct Changed(pub PathBuf);

impl std::fmt::Display for Changed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} changed while being read", self.0.display())
    }
}

impl std::error::Error for Changed {}

/// Whether an error says the source changed while being read.
pub fn is_changed(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|r| r.is::<Changed>())
}

impl Source {
    /// Opens a walked entry. Regular files are opened without following symlinks and must
    /// still be the file the walk saw (same device and inode).
    pub fn open(entry: &SourceEntry, device: bool, use_mmap: bool) -> io::Result<Source> {
        let mut opts = std::fs::OpenOptions::new();
        opts.read(true);
        if !device {
            opts.custom_flags(libc::O_NOFOLLOW | libc::O_NOCTTY);
        }
        let file = opts.open(&entry.source)?;
        let md = file.metadata()?;
        if md.dev() != entry.dev || md.ino() != entry.ino {
            return Err(changed_error(&entry.source));
        }
        let (size, allocated) = if device {
            use std::io::{Seek, SeekFrom};
            ((&file).seek(SeekFrom::End(0))?, None)
        } else {
            if !md.is_file() {
                return Err(io::Error::other("no longer a regular file"));
            }
            (md.len(), Some(md.blocks().saturating_mul(512)))
        };
        let sparse = crate::sparse::scan(&file, size, allocated)?.map(|s| {
            let runs = Runs::new(&s);
            (Box::new(s), runs)
        });
        let map = if use_mmap
            && !device
            && sparse.is_none()
            && size >= MMAP_MIN
            && size <= usize::MAX as u64
        {
            // SAFETY: reads go through read_at, which detects concurrent changes.
            unsafe { GuardedMap::new(&file) }
        } else {
            None
        };
        Ok(Source {
            file,
            path: entry.source.clone(),
            size,
            mtime: (md.mtime(), md.mtime_nsec()),
            ctime: (md.ctime(), md.ctime_nsec()),
            map,
            sigbus_at_open: SIGBUS_COUNT.load(Ordering::Acquire),
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

    pub fn is_mapped(&self) -> bool {
        self.map.is_some()
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
        if let Some(m) = &self.map {
            let start = offset as usize;
            let end = start
                .checked_add(buf.len())
                .filter(|&e| e <= m.map.len())
                .ok_or_else(|| changed_error(&self.path))?;
            buf.copy_from_slice(&m.map[start..end]);
            return Ok(());
        }
        self.file.read_exact_at(buf, offset).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                changed_error(&self.path)
            } else {
                e
            }
        })
    }

    /// Whether the input is still as it was at open (size, mtime, no SIGBUS on our maps).
    /// Call after the last read; a `false` means the digests cannot be trusted.
    pub fn unchanged(&self, device: bool) -> io::Result<bool> {
        if SIGBUS_COUNT.load(Ordering::Acquire) != self.sigbus_at_open && self.map.is_some() {
            return Ok(false);
        }
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
    use crate::walk::SourceKind;
    use std::os::unix::fs::MetadataExt;

    fn entry(path: &Path) -> SourceEntry {
        let md = std::fs::metadata(path).unwrap();
        SourceEntry {
            path: b"f".to_vec(),
            source: path.to_path_buf(),
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
        }
    }

    /// A mapped file truncated under us must not kill the process (SIGBUS), and the change
    /// must be reported.
    #[test]
    fn truncated_mapped_file_is_detected_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, vec![7u8; 1 << 20]).unwrap();
        let src = Source::open(&entry(&p), false, true).unwrap();
        assert!(src.is_mapped());
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(0)
            .unwrap();
        let mut buf = vec![0u8; 1 << 20];
        // The pages are gone: the guard turns the fault into zeros and counts it.
        src.read_at(0, &mut buf).unwrap();
        assert!(!src.unchanged(false).unwrap());
    }

    #[test]
    fn short_read_is_an_error_not_a_short_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, vec![1u8; 1000]).unwrap();
        let src = Source::open(&entry(&p), false, false).unwrap();
        assert!(!src.is_mapped());
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
}
