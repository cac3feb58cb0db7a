//! Holes and zero extents (docs/FORMAT.md §6.4): what of a file is neither read, sealed nor
//! stored, how it is found when encrypting and recreated when restoring.
//!
//! A file's *stored bytes* are its bytes outside its gaps, back to back: they are the record's
//! plaintext (its length `L` in the header). A *hole* is a range the source filesystem reports
//! as unallocated (`SEEK_DATA`/`SEEK_HOLE`); a *zero extent* is an allocated range of zeros
//! (found in aligned [`ZERO_BLOCK`]s, as in disk images). Restore recreates holes by
//! truncating the file to its length and allocates zero extents with `fallocate`: neither
//! writes a byte of zeros.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use rustix::fs::{FallocateFlags, SeekFrom};
use rustix::io::Errno;

use crate::format::sparse::Run;
pub use crate::format::sparse::{Gap, Runs, Sparse};
use crate::format::{MAX_GAPS, ZERO_BLOCK};

/// Finds `file`'s gaps: holes where its allocated bytes (`allocated`, from `st_blocks`) fall
/// short of its length, and all-zero aligned [`ZERO_BLOCK`]s within its data. `None` when it
/// has neither (the common case costs no system call for files under `ZERO_BLOCK`).
pub fn scan(file: &File, len: u64, allocated: Option<u64>) -> io::Result<Option<Sparse>> {
    let data = match allocated {
        Some(a) if a < len => data_ranges(file, len)?,
        _ => vec![(0, len)],
    };
    let mut gaps = Vec::new();
    let mut at = 0u64;
    // Allocated on the first probe: most files are too small to have a block to probe.
    let mut probe = Vec::new();
    for &(off, n) in &data {
        if off > at {
            gaps.push(Gap {
                off: at,
                len: off - at,
                zero: false,
            });
        }
        let end = off + n;
        let mut b = off.next_multiple_of(ZERO_BLOCK);
        while b + ZERO_BLOCK <= end {
            if is_zero_block(file, b, &mut probe)? {
                match gaps.last_mut() {
                    Some(g) if g.zero && g.end() == b => g.len += ZERO_BLOCK,
                    _ => gaps.push(Gap {
                        off: b,
                        len: ZERO_BLOCK,
                        zero: true,
                    }),
                }
            }
            b += ZERO_BLOCK;
        }
        at = end;
    }
    if len > at {
        gaps.push(Gap {
            off: at,
            len: len - at,
            zero: false,
        });
    }
    if gaps.len() > MAX_GAPS {
        // Keep the largest; the rest are stored as data (they read as zeros all the same).
        gaps.sort_by_key(|g| std::cmp::Reverse(g.len));
        gaps.truncate(MAX_GAPS);
        gaps.sort_by_key(|g| g.off);
        // Dropping a zero extent between two holes leaves them adjacent: one spelling.
        gaps.dedup_by(|next, prev| {
            let joined = prev.zero == next.zero && prev.end() == next.off;
            if joined {
                prev.len += next.len;
            }
            joined
        });
    }
    Sparse::new(len, gaps).map_err(io::Error::other)
}

/// The data ranges `SEEK_DATA`/`SEEK_HOLE` report, clipped to `len`; the whole file where the
/// filesystem does not say.
fn data_ranges(file: &File, len: u64) -> io::Result<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    let mut at = 0u64;
    while at < len {
        let d = match seek(file, SeekFrom::Data(at)) {
            Ok(Some(d)) => d,
            // No data from `at` on: the rest is a hole.
            Ok(None) => return Ok(out),
            // No SEEK_DATA here: all data.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP)) => {
                return Ok(vec![(0, len)])
            }
            Err(e) => return Err(e),
        };
        if d >= len {
            break;
        }
        let h = seek(file, SeekFrom::Hole(d))
            .ok()
            .flatten()
            .map_or(len, |h| h.min(len));
        if h <= d {
            break;
        }
        out.push((d, h - d));
        at = h;
    }
    Ok(out)
}

/// `lseek` with `SEEK_DATA` or `SEEK_HOLE`: the offset found, `None` past the last data
/// (`ENXIO`). The file position it moves is unused (envseal reads and writes positionally).
fn seek(file: &File, to: SeekFrom) -> io::Result<Option<u64>> {
    match rustix::fs::seek(file, to) {
        Ok(at) => Ok(Some(at)),
        Err(Errno::NXIO) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Whether the block at `off` holds only zeros; reads a little first, so that data (the
/// common case) costs one small read per block.
fn is_zero_block(file: &File, off: u64, buf: &mut Vec<u8>) -> io::Result<bool> {
    if buf.is_empty() {
        buf.resize(64 << 10, 0);
    }
    let mut at = 0u64;
    let mut want = 4096usize;
    while at < ZERO_BLOCK {
        let n = want.min(buf.len()).min((ZERO_BLOCK - at) as usize);
        file.read_exact_at(&mut buf[..n], off + at)?;
        if !all_zero(&buf[..n]) {
            return Ok(false);
        }
        at += n as u64;
        want = buf.len();
    }
    Ok(true)
}

/// Whether `b` holds only zeros (in 4 KiB steps, each a vectorised OR).
pub fn all_zero(b: &[u8]) -> bool {
    b.chunks(4096)
        .all(|c| c.iter().fold(0u8, |acc, &x| acc | x) == 0)
}

/// Gives a fresh (empty) restored file its length and its zero extents, leaving the holes
/// unallocated; the stored bytes are written afterwards. Zero extents are allocated with
/// `fallocate`; where the filesystem cannot, they are left as holes (they read the same).
pub fn lay_out(out: &File, s: &Sparse) -> io::Result<()> {
    out.set_len(s.file_len())?;
    for g in s.gaps().iter().filter(|g| g.zero) {
        match rustix::fs::fallocate(out, FallocateFlags::empty(), g.off, g.len) {
            Ok(()) | Err(Errno::OPNOTSUPP) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Makes every gap read as zeros on a target that holds older bytes (a device, or an image
/// written in place): `FALLOC_FL_ZERO_RANGE` where the target supports it, else zeros written.
pub fn zero_gaps(out: &File, s: &Sparse) -> io::Result<()> {
    let zeros = vec![0u8; 1 << 20];
    for g in s.gaps() {
        // KEEP_SIZE never changes the length.
        let zero_range = FallocateFlags::ZERO_RANGE | FallocateFlags::KEEP_SIZE;
        if rustix::fs::fallocate(out, zero_range, g.off, g.len).is_ok() {
            continue;
        }
        let mut at = g.off;
        while at < g.end() {
            let n = (g.end() - at).min(zeros.len() as u64) as usize;
            out.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
    }
    Ok(())
}

/// What a file on disk holds, measured against an entry's layout.
#[derive(Debug, PartialEq, Eq)]
pub enum Held {
    /// The keyed BLAKE3 of its stored bytes (its gaps all read as zeros).
    Digest(blake3::Hash),
    /// Another length than the entry's.
    Length(u64),
    /// A byte other than zero where the entry has a hole or zero extent, at this offset.
    GapNotZero(u64),
}

/// The keyed digest (`pt`, docs/FORMAT.md §4.4) of `file`'s bytes outside `sparse`'s gaps,
/// after checking its length is `len` and its gaps read as zeros (only the parts of them the
/// filesystem reports as data are read). Returns it and the bytes read.
pub fn keyed_digest(
    file: &File,
    len: u64,
    sparse: Option<&Sparse>,
    key: &[u8; 32],
    cancel: &std::sync::atomic::AtomicBool,
) -> io::Result<(Held, u64)> {
    use std::os::unix::fs::FileTypeExt;
    use std::sync::atomic::Ordering;
    let md = file.metadata()?;
    if !md.is_file() && !md.file_type().is_block_device() {
        return Err(io::Error::other("not a regular file or block device"));
    }
    let actual = crate::fs::byte_len(file, &md)?;
    if actual != len {
        return Ok((Held::Length(actual), 0));
    }
    let whole = [Run {
        stored: 0,
        file: 0,
        len,
    }];
    let owned;
    let runs: &[Run] = match sparse {
        Some(s) => {
            owned = s.runs();
            &owned
        }
        None => &whole,
    };
    let cancelled = || io::Error::new(io::ErrorKind::Interrupted, "interrupted");
    let shrank = |e: io::Error| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            None
        } else {
            Some(e)
        }
    };
    let mut h = blake3::Hasher::new_keyed(key);
    let mut buf = vec![0u8; 1 << 20];
    let mut read = 0u64;
    for r in runs {
        let mut at = 0u64;
        while at < r.len {
            if cancel.load(Ordering::Relaxed) {
                return Err(cancelled());
            }
            let n = (r.len - at).min(buf.len() as u64) as usize;
            if let Err(e) = file.read_exact_at(&mut buf[..n], r.file + at) {
                return match shrank(e) {
                    None => Ok((Held::Length(r.file + at), read)),
                    Some(e) => Err(e),
                };
            }
            h.update(&buf[..n]);
            at += n as u64;
            read += n as u64;
        }
    }
    for g in sparse.map(|s| s.gaps()).unwrap_or_default() {
        let mut at = g.off;
        while at < g.end() {
            if cancel.load(Ordering::Relaxed) {
                return Err(cancelled());
            }
            // Only what the filesystem holds as data can be other than zero.
            let d = match seek(file, SeekFrom::Data(at)) {
                Ok(Some(d)) => d,
                Ok(None) => break,
                Err(_) => at,
            };
            if d >= g.end() {
                break;
            }
            let n = (g.end() - d).min(buf.len() as u64) as usize;
            if let Err(e) = file.read_exact_at(&mut buf[..n], d) {
                return match shrank(e) {
                    None => Ok((Held::Length(d), read)),
                    Some(e) => Err(e),
                };
            }
            read += n as u64;
            if let Some(i) = buf[..n].iter().position(|&b| b != 0) {
                return Ok((Held::GapNotZero(d + i as u64), read));
            }
            at = d + n as u64;
        }
    }
    Ok((Held::Digest(h.finalize()), read))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gap(off: u64, len: u64, zero: bool) -> Gap {
        Gap { off, len, zero }
    }

    #[test]
    fn layouts_are_validated() {
        assert!(Sparse::new(10, vec![]).unwrap().is_none());
        let s = Sparse::new(100, vec![gap(50, 10, true), gap(0, 10, false)])
            .unwrap()
            .unwrap();
        assert_eq!(s.stored(), 80);
        assert_eq!(s.gaps()[0].off, 0, "sorted");
        // Overlap, past the end, empty, adjacent of a kind.
        assert!(Sparse::new(100, vec![gap(0, 10, false), gap(5, 10, true)]).is_err());
        assert!(Sparse::new(100, vec![gap(95, 10, false)]).is_err());
        assert!(Sparse::new(100, vec![gap(5, 0, false)]).is_err());
        assert!(Sparse::new(100, vec![gap(0, 10, true), gap(10, 10, true)]).is_err());
        // Adjacent of different kinds is fine.
        assert!(Sparse::new(100, vec![gap(0, 10, true), gap(10, 10, false)]).is_ok());
        assert!(Sparse::new(u64::MAX, vec![gap(u64::MAX - 1, 5, false)]).is_err());
        assert!(Sparse::from_fields(10, Some(&[]), None).is_err());
    }

    #[test]
    fn runs_translate_stored_offsets() {
        // len 100: hole 10..20, zeros 50..60 → runs 0..10, 20..50, 60..100.
        let s = Sparse::new(100, vec![gap(10, 10, false), gap(50, 10, true)])
            .unwrap()
            .unwrap();
        let runs = Runs::new(&s);
        let mut pieces = Vec::new();
        runs.each::<()>(5, 40, |f, r| {
            pieces.push((f, r));
            Ok(())
        })
        .unwrap();
        assert_eq!(pieces, vec![(5, 0..5), (20, 5..35), (60, 35..40)]);
        let total: usize = s.runs().iter().map(|r| r.len as usize).sum();
        assert_eq!(total as u64, s.stored());
    }

    #[test]
    fn scan_finds_holes_and_zero_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(true)
            .open(&p)
            .unwrap();
        // 8 MiB: data at 0..1 MiB, written zeros at 1..3 MiB, a hole at 3..7 MiB, data after.
        f.set_len(8 << 20).unwrap();
        f.write_all_at(&vec![1u8; 1 << 20], 0).unwrap();
        f.write_all_at(&vec![0u8; 2 << 20], 1 << 20).unwrap();
        f.write_all_at(&vec![2u8; 1 << 20], 7 << 20).unwrap();
        f.sync_all().unwrap();
        use std::os::unix::fs::MetadataExt;
        let md = f.metadata().unwrap();
        let s = scan(&f, md.len(), Some(md.blocks() * 512))
            .unwrap()
            .unwrap();
        assert!(s.gaps().contains(&gap(1 << 20, 2 << 20, true)), "{s:?}");
        // Where the filesystem reports holes, 3..7 MiB is one; else it is found as zeros.
        assert_eq!(s.stored(), 2 << 20, "{s:?}");
    }
}
