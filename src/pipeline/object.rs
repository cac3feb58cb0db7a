//! Opening one record (a file's header and segments, inside a pack or an object of its own):
//! the shared path of `decrypt` and `verify --deep`.
//!
//! Checks, in this order, before any plaintext leaves: the object's length, header syntax,
//! header fields against the manifest entry, key commitment (constant time); then every
//! segment's tag, and at the end the ciphertext digest and the keyed plaintext digest.
//! Only the record's byte range is read. Plaintext goes only to the caller's temporary file.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rayon::prelude::*;

use crate::crypto::{ct_leaf, record_ct, segment_mac, BatchKey, CtDigest, SegMac, TreeMac};
use crate::error::Error;
use crate::format::manifest::{Batch, FileEntry, Header, ObjectRef};
use crate::format::{self, ObjectHeader, HEADER_LEN, TAG_LEN};
use crate::progress::Progress;
use crate::store::{ReadAt, Store};

/// Why an object could not be opened.
#[derive(Debug)]
pub enum ObjectError {
    /// Damaged or tampered (exit 3).
    Integrity(String),
    /// The object file is not in the vault (an integrity failure too, exit 3, but reported
    /// apart: a lost file is not a damaged one).
    Missing(String),
    /// I/O on the vault or the output.
    Io(Error),
    Cancelled,
}

/// Bytes of a window read and opened at once where one buffer is in use (`verify --deep`).
const WINDOW_BYTES: usize = 32 << 20;

/// Segments processed together: enough to keep every core busy, bounded in memory (~32 MiB).
pub fn window_segments(count: u64, segment_size: u32, jobs: usize) -> usize {
    segments_within(count, segment_size, jobs, WINDOW_BYTES)
}

/// Segments of at most `bytes` (but at least two per job, and at most `count`).
fn segments_within(count: u64, segment_size: u32, jobs: usize, bytes: usize) -> usize {
    let slot = segment_size as usize + TAG_LEN;
    (bytes / slot)
        .max(2 * jobs)
        .max(1)
        .min(usize::try_from(count).unwrap_or(usize::MAX))
}

/// The windows of an object body in order: the one loop of `encrypt` and `open_object`,
/// which differ only in what they do with each window and each segment.
pub struct Windows {
    size: u64,
    seg: u32,
    n: u64,
    window: u64,
    first: u64,
}

/// Segments `first..first + count` of an object, laid out in a buffer one slot (segment and
/// tag) after another, as in the object.
pub struct Window {
    pub first: u64,
    pub count: usize,
    /// Plaintext bytes in the window.
    pub plain: u64,
    /// Bytes of the buffer the window fills: its plaintext and one tag per segment.
    pub used: usize,
    slot: usize,
}

impl Windows {
    pub fn new(size: u64, seg: u32, jobs: usize) -> Windows {
        Windows::within(size, seg, jobs, WINDOW_BYTES)
    }

    /// Windows of at most `bytes` each (see [`segments_within`]).
    fn within(size: u64, seg: u32, jobs: usize, bytes: usize) -> Windows {
        let n = format::segment_count(size, seg);
        Windows {
            size,
            seg,
            n,
            window: segments_within(n, seg, jobs, bytes) as u64,
            first: 0,
        }
    }

    /// How many windows remain.
    pub fn remaining(&self) -> u64 {
        (self.n - self.first.min(self.n)).div_ceil(self.window)
    }

    /// A buffer for the largest window: a small file gets a small buffer.
    pub fn buffer(&self) -> Vec<u8> {
        let body = format::object_len(self.size, self.seg) - HEADER_LEN as u64;
        let slot = self.seg as usize + TAG_LEN;
        vec![0u8; body.min(self.window * slot as u64) as usize]
    }
}

impl Iterator for Windows {
    type Item = Window;

    fn next(&mut self) -> Option<Window> {
        if self.first >= self.n {
            return None;
        }
        let first = self.first;
        let count = (self.n - first).min(self.window) as usize;
        let plain: u64 = (first..first + count as u64)
            .map(|i| format::segment_plain_len(self.size, self.seg, i) as u64)
            .sum();
        self.first += count as u64;
        Some(Window {
            first,
            count,
            plain,
            used: plain as usize + count * TAG_LEN,
            slot: self.seg as usize + TAG_LEN,
        })
    }
}

impl Window {
    /// Runs `f(segment index, slot)` on each segment slot of `buf[..used]` (in parallel when
    /// there are several), adds their MACs to `mac` in segment order and returns their
    /// other results in order.
    pub fn each_segment<T: Send, E: Send>(
        &self,
        buf: &mut [u8],
        mac: &mut TreeMac,
        f: impl Fn(u64, &mut [u8]) -> Result<(T, SegMac), E> + Sync,
    ) -> Result<Vec<T>, E> {
        let buf = &mut buf[..self.used];
        let results: Vec<Result<(T, SegMac), E>> = if self.count == 1 {
            vec![f(self.first, buf)]
        } else {
            buf.par_chunks_mut(self.slot)
                .enumerate()
                .map(|(k, c)| f(self.first + k as u64, c))
                .collect()
        };
        let mut out = Vec::with_capacity(results.len());
        for r in results {
            let (t, m) = r?;
            mac.add(m);
            out.push(t);
        }
        Ok(out)
    }
}

/// Seals a whole plaintext into a record in memory, one segment after another: the
/// reference implementation the parallel pipeline must agree with, and the generator of the
/// known-answer vectors. Sets `header.commitment`. Returns (record, ct, pt).
pub fn seal_object(
    key: &BatchKey,
    header: &mut ObjectHeader,
    plaintext: &[u8],
) -> (Vec<u8>, [u8; 32], blake3::Hash) {
    let fk = key.file_keys(header);
    header.commitment = fk.commitment();
    let seg = header.segment_size;
    let n = format::segment_count(header.plain_len, seg);
    let mut out = header.encode().to_vec();
    let mut mac = TreeMac::new(fk.mac_key());
    for i in 0..n {
        let start = (i * u64::from(seg)) as usize;
        let len = format::segment_plain_len(header.plain_len, seg, i);
        let pt = &plaintext[start..start + len];
        mac.add(segment_mac(fk.mac_key(), seg, i, n, pt));
        let mut buf = pt.to_vec();
        buf.extend_from_slice(&[0u8; TAG_LEN]);
        fk.seal_segment(i, i == n - 1, &mut buf);
        out.extend_from_slice(&buf);
    }
    let ct = record_ct(&out, seg);
    // TreeMac::finalize is Some whenever at least one segment was added (n >= 1 always).
    let pt_mac = mac
        .finalize()
        .unwrap_or_else(|| blake3::keyed_hash(fk.mac_key(), b""));
    (out, ct, pt_mac)
}

/// [`seal_object`] for a compressed record (suite 2, docs/FORMAT.md §4.5): sets the header's
/// suite and commitment; each segment stored as a Zstandard frame at `level` where that is
/// shorter, else raw; the sealed table last. Returns (record, ct = BLAKE3 of the record, pt).
pub fn seal_object_compressed(
    key: &BatchKey,
    header: &mut ObjectHeader,
    plaintext: &[u8],
    level: i32,
) -> (Vec<u8>, [u8; 32], blake3::Hash) {
    header.alg = format::ALG_AES256GCM_ZSTD_BLAKE3;
    let fk = key.file_keys(header);
    header.commitment = fk.commitment();
    let seg = header.segment_size;
    let n = format::segment_count(header.plain_len, seg);
    let mut out = header.encode().to_vec();
    let mut mac = TreeMac::new(fk.mac_key());
    let mut stored = Vec::new();
    for i in 0..n {
        let start = (i * u64::from(seg)) as usize;
        let len = format::segment_plain_len(header.plain_len, seg, i);
        let pt = &plaintext[start..start + len];
        mac.add(segment_mac(fk.mac_key(), seg, i, n, pt));
        let mut buf = format::compress::compress_segment(pt, level).unwrap_or_else(|| pt.to_vec());
        stored.push(buf.len() as u32);
        buf.extend_from_slice(&[0u8; TAG_LEN]);
        fk.seal_segment(i, i == n - 1, &mut buf);
        out.extend_from_slice(&buf);
    }
    let mut table = format::compress::Table::encode(&stored);
    table.extend_from_slice(&[0u8; TAG_LEN]);
    fk.seal_table(n, &mut table);
    out.extend_from_slice(&table);
    let ct = *blake3::hash(&out).as_bytes();
    let pt_mac = mac
        .finalize()
        .unwrap_or_else(|| blake3::keyed_hash(fk.mac_key(), b""));
    (out, ct, pt_mac)
}

/// What a record is read against: the vault's header, batches and objects, and the object
/// files opened so far (a pack is opened once, not once per file in it).
pub struct RecordCtx<'a> {
    pub store: &'a dyn Store,
    pub header: &'a Header,
    pub batches: &'a [Batch],
    pub objects: &'a [ObjectRef],
    pub jobs: usize,
    files: Vec<std::sync::OnceLock<Arc<dyn ReadAt>>>,
    /// Bytes of objects read so far (records only: `--only` reads no more than it needs).
    pub read: std::sync::atomic::AtomicU64,
}

impl<'a> RecordCtx<'a> {
    pub fn new(
        store: &'a dyn Store,
        header: &'a Header,
        batches: &'a [Batch],
        objects: &'a [ObjectRef],
        jobs: usize,
    ) -> RecordCtx<'a> {
        RecordCtx {
            store,
            header,
            batches,
            objects,
            jobs,
            files: objects.iter().map(|_| std::sync::OnceLock::new()).collect(),
            read: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Object `i`, opened and its length checked on first use.
    pub fn object(&self, i: u64) -> Result<&dyn ReadAt, ObjectError> {
        let cell = &self.files[i as usize];
        if let Some(f) = cell.get() {
            return Ok(f.as_ref());
        }
        let f = open_object_file(self.store, &self.objects[i as usize])?;
        Ok(cell.get_or_init(|| f).as_ref())
    }
}

/// Opens an object and checks its length against the manifest.
pub fn open_object_file(store: &dyn Store, o: &ObjectRef) -> Result<Arc<dyn ReadAt>, ObjectError> {
    let name = o.name();
    let obj = match store.open(&name) {
        Ok(Some(obj)) => obj,
        Ok(None) => return Err(ObjectError::Missing(format!("object {name} is missing"))),
        Err(Error::Integrity { why, .. }) => {
            return Err(ObjectError::Integrity(format!("object {name}: {why}")))
        }
        Err(e) => return Err(ObjectError::Io(e)),
    };
    if obj.len() != o.len {
        return Err(ObjectError::Integrity(format!(
            "object {name} is {} bytes, expected {} (truncated or extended)",
            obj.len(),
            o.len
        )));
    }
    Ok(obj)
}

/// Authenticates (and with `out`, decrypts) one file's record. Plaintext segment `i` is
/// written to `out` at offset `i * segment_size` of the stored bytes, that is around the
/// file's gaps; the caller lays the gaps out (`sparse::lay_out`, `sparse::zero_gaps`).
///
/// Segments are opened in parallel, window by window. A record of several windows restored
/// to a file runs as three stages, as encrypt does: a reader thread fills the next window
/// while the current one is opened on all cores and a writer thread writes the one before
/// (concurrent writes to one file only contend for its inode lock). The stages pass
/// [`PIPELINE_BUFFERS`] buffers around and block on channels when they wait, never spin
/// (docs/PERFORMANCE.md "Decrypt").
pub fn open_record(
    ctx: &RecordCtx,
    f: &FileEntry,
    key: &BatchKey,
    out: Option<&File>,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<(), ObjectError> {
    if f.rlen.is_some() {
        return open_compressed(ctx, f, key, out, progress, cancel);
    }
    let seg = ctx.header.segment_size;
    // A restore keeps PIPELINE_BUFFERS windows in flight: smaller ones, the same memory.
    let pipelined = out.is_some() && f.size >= PIPELINE_MIN_BYTES;
    let windows = match pipelined {
        true => Windows::within(f.size, seg, ctx.jobs, PIPELINE_WINDOW_BYTES),
        false => Windows::new(f.size, seg, ctx.jobs),
    };
    // A restore relies on the tags and `pt`: once every tag verifies under the committed keys
    // of a header the authenticated entry names (its salt), `ct` adds nothing, and costs a
    // hash pass. `verify --deep` (no output) checks it too (§4.3).
    let check = out.is_none();
    let sink = out.map(|out| Sink::new(out, f, seg));
    let keys = record_keys(ctx, f, key)?;
    let sink = match sink {
        Some(sink) if pipelined => sink,
        sink => {
            // One window, or nothing to write: read, open and hand over in this thread.
            let spare = std::cell::Cell::new(Some(windows.buffer()));
            let mut windows = windows;
            let next = || {
                let w = windows.next()?;
                let mut buf = spare.take().unwrap_or_else(|| vec![0; w.used]);
                Some(read_window(ctx, f, &w, &mut buf).map(|()| (w, buf)))
            };
            return open_windows(ctx, f, &keys, check, cancel, next, |w, buf| {
                if let Some(sink) = &sink {
                    sink.write(&w, &buf)?;
                }
                progress.bytes(w.plain);
                spare.set(Some(buf));
                Ok(())
            });
        }
    };
    let stopped = || ObjectError::Io(Error::Runtime("the writer stopped".into()));
    let (free_tx, free_rx) = crossbeam_channel::bounded::<Vec<u8>>(PIPELINE_BUFFERS);
    for _ in 0..PIPELINE_BUFFERS {
        let _ = free_tx.send(windows.buffer());
    }
    let (filled_tx, filled_rx) = crossbeam_channel::bounded(1);
    let (full_tx, full_rx) = crossbeam_channel::bounded::<(Window, Vec<u8>)>(1);
    std::thread::scope(|s| {
        s.spawn(move || {
            for w in windows {
                // A free buffer, or none when the other stages stopped.
                let Ok(mut buf) = free_rx.recv() else { return };
                let r = if cancel.load(Ordering::Relaxed) {
                    Err(ObjectError::Cancelled)
                } else {
                    read_window(ctx, f, &w, &mut buf).map(|()| (w, buf))
                };
                let last = r.is_err();
                if filled_tx.send(r).is_err() || last {
                    return;
                }
            }
        });
        let writer = s.spawn(move || -> Result<(), ObjectError> {
            for (w, buf) in full_rx {
                sink.write(&w, &buf)?;
                progress.bytes(w.plain);
                // The reader may have finished: then nobody needs the buffer back.
                let _ = free_tx.send(buf);
            }
            Ok(())
        });
        let next = move || filled_rx.recv().ok();
        let opened = open_windows(ctx, f, &keys, check, cancel, next, |w, buf| {
            full_tx.send((w, buf)).map_err(|_| stopped())
        });
        drop(full_tx);
        let written = writer.join().unwrap_or_else(|_| {
            Err(ObjectError::Io(Error::Runtime(
                "the writer panicked".into(),
            )))
        });
        // The writer's own error (a full disk) explains the opener's "writer stopped".
        match (opened, written) {
            (Ok(()), w) => w,
            (Err(_), Err(w)) => Err(w),
            (Err(o), Ok(())) => Err(o),
        }
    })
}

/// Window buffers in flight in a pipelined restore: one being read, one being opened, one
/// being written.
const PIPELINE_BUFFERS: usize = 3;

/// A pipelined restore's window: its three buffers hold about what `verify --deep`'s one
/// does (docs/PERFORMANCE.md "Decrypt").
const PIPELINE_WINDOW_BYTES: usize = 12 << 20;

/// Files from this size on restore as three stages. A smaller one is read, opened and written
/// in one thread: files restored side by side already overlap each other's stages, and two
/// more threads per mid-sized file cost a tree of them about a tenth (paired runs,
/// docs/PERFORMANCE.md "Decrypt").
const PIPELINE_MIN_BYTES: u64 = 64 << 20;

/// Reads window `w` of `f`'s record (its segments and tags, after the header) into `buf`.
fn read_window(
    ctx: &RecordCtx,
    f: &FileEntry,
    w: &Window,
    buf: &mut Vec<u8>,
) -> Result<(), ObjectError> {
    let seg = ctx.header.segment_size;
    if buf.len() < w.used {
        buf.resize(w.used, 0);
    }
    ctx.object(f.obj)?
        .read_exact_at(
            &mut buf[..w.used],
            f.off + format::segment_offset(seg, w.first),
        )
        .map_err(|e| {
            let name = ctx.objects[f.obj as usize].name();
            ObjectError::Io(Error::io(ctx.store.describe(&name), e))
        })?;
    ctx.read.fetch_add(w.used as u64, Ordering::Relaxed);
    Ok(())
}

/// Where a record's plaintext goes: the output file, at the stored bytes' offsets.
struct Sink<'a> {
    out: &'a File,
    size: u64,
    seg: u32,
    runs: Option<crate::format::sparse::Runs>,
}

impl<'a> Sink<'a> {
    /// Entry `f`'s plaintext into `out`: its stored bytes go to their offsets in the file,
    /// around its gaps (§6.4).
    fn new(out: &'a File, f: &FileEntry, seg: u32) -> Sink<'a> {
        Sink {
            out,
            size: f.size,
            seg,
            runs: f.sparse.as_deref().map(crate::format::sparse::Runs::new),
        }
    }

    /// Writes an opened window's plaintext (each slot's first bytes; the tags are skipped).
    fn write(&self, w: &Window, buf: &[u8]) -> Result<(), ObjectError> {
        let mut pos = 0usize;
        let plain: Vec<Range<usize>> = (w.first..w.first + w.count as u64)
            .map(|i| {
                let len = format::segment_plain_len(self.size, self.seg, i);
                pos += len + TAG_LEN;
                pos - len - TAG_LEN..pos - TAG_LEN
            })
            .collect();
        self.write_segments(w.first, buf, &plain)
    }

    /// Writes segments `first..` whose plaintext lies in `buf` at `plain`'s ranges.
    fn write_segments(
        &self,
        first: u64,
        buf: &[u8],
        plain: &[Range<usize>],
    ) -> Result<(), ObjectError> {
        let seg = u64::from(self.seg);
        for (i, r) in (first..).zip(plain) {
            let pt = &buf[r.clone()];
            let write = |off: u64, r: Range<usize>| {
                self.out
                    .write_all_at(&pt[r], off)
                    .map_err(|e| ObjectError::Io(Error::io("output file", e)))
            };
            match &self.runs {
                None => write(i * seg, 0..pt.len())?,
                Some(runs) => runs.each(i * seg, pt.len(), write)?,
            }
        }
        Ok(())
    }
}

/// Opens a record's windows as `next` yields them read (in order), checking every tag and at
/// the end the plaintext digest (and, with `check_ct`, the ciphertext digest); `done(window,
/// buffer)` receives each window opened (plaintext in place of each slot's ciphertext).
fn open_windows(
    ctx: &RecordCtx,
    f: &FileEntry,
    (hb, fk): &([u8; HEADER_LEN], crate::crypto::FileKeys),
    check_ct: bool,
    cancel: &AtomicBool,
    mut next: impl FnMut() -> Option<Result<(Window, Vec<u8>), ObjectError>>,
    mut done: impl FnMut(Window, Vec<u8>) -> Result<(), ObjectError>,
) -> Result<(), ObjectError> {
    let integ = |why: String| ObjectError::Integrity(why);
    let name = ctx.objects[f.obj as usize].name();
    let seg = ctx.header.segment_size;
    let n = format::segment_count(f.size, seg);
    let mut ct = CtDigest::new();
    let mut mac = TreeMac::new(fk.mac_key());
    let mut seen = 0u64;
    while let Some(r) = next() {
        let (w, mut buf) = r?;
        if cancel.load(Ordering::Relaxed) {
            return Err(ObjectError::Cancelled);
        }
        let leaves = w.each_segment(&mut buf, &mut mac, |i, chunk| {
            // Checked per segment, not per window: a window is up to 32 MiB per file.
            if cancel.load(Ordering::Relaxed) {
                return Err(ObjectError::Cancelled);
            }
            let leaf = check_ct.then(|| ct_leaf(if i == 0 { &hb[..] } else { &[] }, chunk));
            let pt = fk.open_segment(i, i == n - 1, chunk).map_err(|_| {
                integ(format!(
                    "{name}@{}: segment {i} fails authentication",
                    f.off
                ))
            })?;
            Ok((leaf, segment_mac(fk.mac_key(), seg, i, n, pt)))
        })?;
        leaves.iter().flatten().for_each(|l| ct.push(l));
        seen += w.count as u64;
        done(w, buf)?;
    }
    if seen != n {
        // The reader stopped without saying why: never a verdict on the record.
        return Err(ObjectError::Io(Error::Runtime(format!(
            "{name}@{}: the reader stopped after {seen} of {n} segments",
            f.off
        ))));
    }
    if check_ct && ct.finalize() != f.ct {
        return Err(integ(format!(
            "{name}@{}: ciphertext digest mismatch",
            f.off
        )));
    }
    let pt_mac = mac
        .finalize()
        .ok_or_else(|| integ("empty record".to_string()))?;
    if pt_mac != blake3::Hash::from(f.pt) {
        return Err(integ(format!(
            "{name}@{}: plaintext digest mismatch",
            f.off
        )));
    }
    Ok(())
}

/// Reads and opens segments `first..first + count` of `f`'s record with one range read:
/// random reads (`mount`). Every segment's tag is checked before its plaintext is returned;
/// the record's digests cover the whole record and are not checked here. `fk` comes from
/// [`record_keys`], `table` from [`record_table`].
///
/// No buffer is allocated or zeroed here when the caller's are large enough (they are grown
/// when short): the slots are read into `raw`; a record stored raw is opened in place there
/// (`decoded` untouched), a compressed one is decoded into `decoded`. Returns the range of
/// each segment's plaintext, in order, in that buffer.
#[allow(clippy::too_many_arguments)]
pub fn open_segments(
    ctx: &RecordCtx,
    f: &FileEntry,
    fk: &crate::crypto::FileKeys,
    table: Option<&format::compress::Table>,
    first: u64,
    count: usize,
    raw: &mut Vec<u8>,
    decoded: &mut Vec<u8>,
) -> Result<Vec<Range<usize>>, ObjectError> {
    let n = format::segment_count(f.size, ctx.header.segment_size);
    let count = count.min(n.saturating_sub(first) as usize);
    let slots = read_slots(ctx, f, table, first, count, raw)?;
    open_slots(ctx, f, fk, table.is_some(), first, raw, &slots, decoded)
}

/// Grows `buf` to at least `len` bytes (exactly: a buffer kept for reuse should not carry
/// spare capacity). Only the added bytes are zeroed, once.
fn grow(buf: &mut Vec<u8>, len: usize) {
    if buf.len() < len {
        buf.reserve_exact(len - buf.len());
        buf.resize(len, 0);
    }
}

/// The slots (stored form and tag) of segments `first..first + count` of `f`'s record, read
/// with one range read into `raw`: they lie back to back in the record, stored raw (§4.2) or
/// where a compressed record's `table` says (§4.5). `raw` is grown when short and never
/// zeroed (the read overwrites every byte used). Returns each slot's range in `raw`.
fn read_slots(
    ctx: &RecordCtx,
    f: &FileEntry,
    table: Option<&format::compress::Table>,
    first: u64,
    count: usize,
    raw: &mut Vec<u8>,
) -> Result<Vec<Range<usize>>, ObjectError> {
    let seg = ctx.header.segment_size;
    let at = match table {
        Some(t) => t.slot_offset(first),
        None => format::segment_offset(seg, first),
    };
    let mut slots = Vec::with_capacity(count);
    let mut used = 0usize;
    for i in first..first + count as u64 {
        let stored = match table {
            Some(t) => t.stored[i as usize] as usize,
            None => format::segment_plain_len(f.size, seg, i),
        };
        let len = stored + TAG_LEN;
        slots.push(used..used + len);
        used += len;
    }
    grow(raw, used);
    let name = ctx.objects[f.obj as usize].name();
    ctx.object(f.obj)?
        .read_exact_at(&mut raw[..used], f.off + at)
        .map_err(|e| ObjectError::Io(Error::io(ctx.store.describe(&name), e)))?;
    ctx.read.fetch_add(used as u64, Ordering::Relaxed);
    Ok(slots)
}
/// Opens the slots [`read_slots`] read (segment `first + k` in `raw[slots[k]]`), in parallel
/// when there are several, each tag checked before its plaintext is used. A record stored
/// raw is opened in place (`decoded` untouched); a compressed record's segments are decoded
/// (§4.5) into `decoded`, grown when short and never zeroed, back to back. Returns each
/// segment's plaintext range in that buffer.
#[allow(clippy::too_many_arguments)]
fn open_slots(
    ctx: &RecordCtx,
    f: &FileEntry,
    fk: &crate::crypto::FileKeys,
    compressed: bool,
    first: u64,
    raw: &mut [u8],
    slots: &[Range<usize>],
    decoded: &mut Vec<u8>,
) -> Result<Vec<Range<usize>>, ObjectError> {
    let seg = ctx.header.segment_size;
    let n = format::segment_count(f.size, seg);
    let name = ctx.objects[f.obj as usize].name();
    let integ = |why: String| ObjectError::Integrity(format!("{name}@{}: {why}", f.off));
    // Where each plaintext ends up: in its slot, or one after another in `decoded`.
    let mut plain = Vec::with_capacity(slots.len());
    let mut at = 0usize;
    for (k, s) in slots.iter().enumerate() {
        let len = format::segment_plain_len(f.size, seg, first + k as u64);
        match compressed {
            true => plain.push(at..at + len),
            false => plain.push(s.start..s.start + len),
        }
        at += len;
    }
    if compressed {
        grow(decoded, at);
    }
    // Each slot with the part of `decoded` it decodes into (disjoint, so opened in parallel).
    let mut jobs = Vec::with_capacity(slots.len());
    let (mut rest, mut out) = (&mut raw[..], &mut decoded[..]);
    for (k, s) in slots.iter().enumerate() {
        let (slot, tail) = std::mem::take(&mut rest).split_at_mut(s.len());
        rest = tail;
        let dst = match compressed {
            true => {
                let (d, tail) = std::mem::take(&mut out).split_at_mut(plain[k].len());
                out = tail;
                Some(d)
            }
            false => None,
        };
        jobs.push((first + k as u64, slot, dst));
    }
    let open = |(i, slot, dst): (u64, &mut [u8], Option<&mut [u8]>)| {
        let opened = fk
            .open_segment(i, i == n - 1, slot)
            .map_err(|_| integ(format!("segment {i} fails authentication")))?;
        match dst {
            Some(d) => format::compress::decode_segment(opened, d.len(), d)
                .map_err(|why| integ(format!("segment {i}: {why}"))),
            None => Ok(()),
        }
    };
    if jobs.len() > 1 {
        jobs.into_par_iter().try_for_each(open)?;
    } else {
        jobs.into_iter().try_for_each(open)?;
    }
    Ok(plain)
}

/// Reads a record's header and derives its file keys, after checking that the header is
/// this entry's (vault, batch, salt, length, segment size) and the key commitment.
pub fn record_keys(
    ctx: &RecordCtx,
    f: &FileEntry,
    key: &BatchKey,
) -> Result<([u8; HEADER_LEN], crate::crypto::FileKeys), ObjectError> {
    let integ = |why: String| ObjectError::Integrity(why);
    let o = &ctx.objects[f.obj as usize];
    let name = o.name();
    let obj = ctx.object(f.obj)?;
    let path = ctx.store.describe(&name);
    let seg = ctx.header.segment_size;
    let mut hb = [0u8; HEADER_LEN];
    obj.read_exact_at(&mut hb, f.off)
        .map_err(|e| ObjectError::Io(Error::io(&path, e)))?;
    ctx.read.fetch_add(HEADER_LEN as u64, Ordering::Relaxed);
    let header = ObjectHeader::decode(&hb).map_err(|e| integ(format!("{name}@{}: {e}", f.off)))?;
    let batch = &ctx.batches[f.batch as usize];
    if header.vault_id != ctx.header.vault_id
        || header.batch_id != batch.batch_id
        || header.salt != f.salt
        || header.plain_len != f.size
        || header.segment_size != seg
    {
        return Err(integ(format!(
            "{name}@{}: the record does not belong to this entry (swapped or replaced)",
            f.off
        )));
    }
    // The entry says whether the record is compressed; the header's suite, key material,
    // says so too (§4.5).
    let compressed = header.alg == format::ALG_AES256GCM_ZSTD_BLAKE3;
    if compressed != f.rlen.is_some() {
        return Err(integ(format!(
            "{name}@{}: the record's algorithm suite {} does not match its entry",
            f.off, header.alg
        )));
    }
    let fk = key.file_keys(&header);
    if !fk.check_commitment(&header.commitment) {
        return Err(integ(format!("{name}@{}: key commitment mismatch", f.off)));
    }
    Ok((hb, fk))
}

/// A compressed record's segment table (§4.5), read from the end of the record and opened
/// with the file's keys: where each segment's slot lies. `None` for a record that is not
/// compressed. `sealed`, if given, receives the table's bytes as stored (the ciphertext
/// digest covers them).
pub fn record_table(
    ctx: &RecordCtx,
    f: &FileEntry,
    fk: &crate::crypto::FileKeys,
    sealed: Option<&mut Vec<u8>>,
) -> Result<Option<format::compress::Table>, ObjectError> {
    let Some(rlen) = f.rlen else {
        return Ok(None);
    };
    let seg = ctx.header.segment_size;
    let n = format::segment_count(f.size, seg);
    let name = ctx.objects[f.obj as usize].name();
    let integ = |why: String| ObjectError::Integrity(format!("{name}@{}: {why}", f.off));
    // rlen >= header + table: checked with the entry (§6.1).
    let tl = format::compress::table_len(n);
    let mut buf = vec![0u8; tl as usize];
    ctx.object(f.obj)?
        .read_exact_at(&mut buf, f.off + rlen - tl)
        .map_err(|e| ObjectError::Io(Error::io(ctx.store.describe(&name), e)))?;
    ctx.read.fetch_add(tl, Ordering::Relaxed);
    if let Some(s) = sealed {
        s.clone_from(&buf);
    }
    let opened = fk
        .open_table(n, &mut buf)
        .map_err(|_| integ("the segment table fails authentication".into()))?;
    format::compress::Table::parse(opened, f.size, seg, rlen)
        .map(Some)
        .map_err(integ)
}

/// Random access to one file's record, compressed (§4.5) or not: its header checked against
/// the entry and its keys committed, and for a compressed record its table opened and
/// checked, so that any segment is read and opened alone (a read deep in a large file costs
/// the table and that segment, not the segments before it).
pub struct RecordReader<'a> {
    ctx: &'a RecordCtx<'a>,
    f: &'a FileEntry,
    head: [u8; HEADER_LEN],
    keys: crate::crypto::FileKeys,
    table: Option<format::compress::Table>,
    /// The sealed table as read (for the ciphertext digest).
    sealed_table: Vec<u8>,
    n: u64,
}

impl<'a> RecordReader<'a> {
    /// Reads and checks the record's header (and table) for entry `f`.
    pub fn new(
        ctx: &'a RecordCtx<'a>,
        f: &'a FileEntry,
        key: &BatchKey,
    ) -> Result<RecordReader<'a>, ObjectError> {
        let seg = ctx.header.segment_size;
        let (head, keys) = record_keys(ctx, f, key)?;
        let n = format::segment_count(f.size, seg);
        let mut r = RecordReader {
            ctx,
            f,
            head,
            keys,
            table: None,
            sealed_table: Vec::new(),
            n,
        };
        r.table = record_table(ctx, f, &r.keys, Some(&mut r.sealed_table))?;
        Ok(r)
    }

    fn integ(&self, why: String) -> ObjectError {
        let name = self.ctx.objects[self.f.obj as usize].name();
        ObjectError::Integrity(format!("{name}@{}: {why}", self.f.off))
    }

    /// Segments in the record.
    pub fn segments(&self) -> u64 {
        self.n
    }

    /// Reads and opens segment `i` into `out` (resized to the segment's plaintext length);
    /// returns its ciphertext digest leaf (§4.4; unused for a compressed record).
    pub fn segment(&self, i: u64, out: &mut Vec<u8>) -> Result<[u8; 32], ObjectError> {
        let table = self.table.as_ref();
        let mut raw = Vec::new();
        let slots = read_slots(self.ctx, self.f, table, i, 1, &mut raw)?;
        let slot = &raw[slots[0].clone()];
        let leaf = ct_leaf(if i == 0 { &self.head[..] } else { &[] }, slot);
        let plain = open_slots(
            self.ctx,
            self.f,
            &self.keys,
            table.is_some(),
            i,
            &mut raw,
            &slots,
            out,
        )?;
        if table.is_none() {
            out.clear();
            out.extend_from_slice(&raw[plain[0].clone()]);
        }
        out.truncate(plain[0].len());
        Ok(leaf)
    }

    /// Reads and opens segments `first..first + count` (their plaintext, back to back).
    pub fn segments_range(&self, first: u64, count: u64) -> Result<Vec<u8>, ObjectError> {
        let mut all = Vec::new();
        let mut one = Vec::new();
        for i in first..(first + count).min(self.n) {
            self.segment(i, &mut one)?;
            all.extend_from_slice(&one);
        }
        Ok(all)
    }
}

/// [`open_record`] for a compressed record (§4.5): the table first, then runs of slots read
/// with one range read each and opened and decoded on all cores ([`read_slots`],
/// [`open_slots`]), written in order; the ciphertext digest (with `verify --deep`) is BLAKE3
/// of the record's bytes, the plaintext digest as for any record.
fn open_compressed(
    ctx: &RecordCtx,
    f: &FileEntry,
    key: &BatchKey,
    out: Option<&File>,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<(), ObjectError> {
    let seg = ctx.header.segment_size;
    let r = RecordReader::new(ctx, f, key)?;
    let table = r.table.as_ref();
    let sink = out.map(|out| Sink::new(out, f, seg));
    let check_ct = out.is_none();
    let mut ct = blake3::Hasher::new();
    if check_ct {
        ct.update(&r.head);
    }
    let mut mac = TreeMac::new(r.keys.mac_key());
    // About a pipeline window of plaintext per run, a segment at least.
    let per = (PIPELINE_WINDOW_BYTES as u64 / u64::from(seg)).max(1);
    let (mut raw, mut decoded) = (Vec::new(), Vec::new());
    let mut first = 0;
    while first < r.n {
        if cancel.load(Ordering::Relaxed) {
            return Err(ObjectError::Cancelled);
        }
        let count = per.min(r.n - first) as usize;
        let slots = read_slots(ctx, f, table, first, count, &mut raw)?;
        if check_ct {
            ct.update(&raw[..slots.last().map_or(0, |s| s.end)]);
        }
        let plain = open_slots(
            ctx,
            f,
            &r.keys,
            table.is_some(),
            first,
            &mut raw,
            &slots,
            &mut decoded,
        )?;
        // A record stored raw throughout has no table: its plaintext stays in its slots.
        let buf = match table {
            Some(_) => &decoded[..],
            None => &raw[..],
        };
        let macs: Vec<SegMac> = plain
            .par_iter()
            .enumerate()
            .map(|(k, p)| {
                segment_mac(
                    r.keys.mac_key(),
                    seg,
                    first + k as u64,
                    r.n,
                    &buf[p.clone()],
                )
            })
            .collect();
        macs.into_iter().for_each(|m| mac.add(m));
        if let Some(sink) = &sink {
            sink.write_segments(first, buf, &plain)?;
        }
        progress.bytes(plain.iter().map(|p| p.len() as u64).sum());
        first += count as u64;
    }
    if check_ct {
        ct.update(&r.sealed_table);
        if ct.finalize() != blake3::Hash::from(f.ct) {
            return Err(r.integ("ciphertext digest mismatch".into()));
        }
    }
    let pt_mac = mac
        .finalize()
        .ok_or_else(|| r.integ("empty record".into()))?;
    if pt_mac != blake3::Hash::from(f.pt) {
        return Err(r.integ("plaintext digest mismatch".into()));
    }
    Ok(())
}

/// Whether `existing` (a file already in DEST) holds exactly the entry's plaintext: its
/// length, zeros in the entry's gaps, and the keyed digest (`pt`, under the key of this file's
/// record) of the rest. Reads the record's header only, and the file.
pub fn plaintext_matches(
    ctx: &RecordCtx,
    f: &FileEntry,
    key: &BatchKey,
    existing: &File,
    cancel: &AtomicBool,
) -> Result<bool, ObjectError> {
    let (_, fk) = record_keys(ctx, f, key)?;
    let held = crate::fs::sparse::keyed_digest(
        existing,
        f.file_len(),
        f.sparse.as_deref(),
        fk.mac_key(),
        cancel,
    );
    match held {
        // blake3::Hash compares in constant time.
        Ok((crate::fs::sparse::Held::Digest(d), _)) => Ok(d == blake3::Hash::from(f.pt)),
        Ok(_) => Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Err(ObjectError::Cancelled),
        Err(e) => Err(ObjectError::Io(Error::io("existing file", e))),
    }
}

/// The ciphertext digest of a record read from `obj` (keyless verify).
pub fn hash_record(
    obj: &dyn ReadAt,
    off: u64,
    size: u64,
    seg: u32,
    rlen: Option<u64>,
    buf: &mut Vec<u8>,
) -> std::io::Result<[u8; 32]> {
    if let Some(rlen) = rlen {
        // A compressed record's digest is BLAKE3 of its bytes (§4.5).
        let mut h = blake3::Hasher::new();
        buf.resize(buf.len().max(1 << 20), 0);
        let mut at = 0u64;
        while at < rlen {
            let k = (rlen - at).min(buf.len() as u64) as usize;
            obj.read_exact_at(&mut buf[..k], off + at)?;
            h.update(&buf[..k]);
            at += k as u64;
        }
        return Ok(*h.finalize().as_bytes());
    }
    let windows = Windows::new(size, seg, 1);
    let want = windows.buffer().len();
    if buf.len() < want {
        buf.resize(want, 0);
    }
    let mut hb = [0u8; HEADER_LEN];
    obj.read_exact_at(&mut hb, off)?;
    let mut ct = CtDigest::new();
    let slot = seg as usize + TAG_LEN;
    for w in windows {
        obj.read_exact_at(
            &mut buf[..w.used],
            off + format::segment_offset(seg, w.first),
        )?;
        let leaf = |(k, c): (usize, &[u8])| {
            let head: &[u8] = if w.first + k as u64 == 0 { &hb } else { &[] };
            ct_leaf(head, c)
        };
        let slots = &buf[..w.used];
        let leaves: Vec<[u8; 32]> = if w.used >= 2 << 20 {
            slots.par_chunks(slot).enumerate().map(leaf).collect()
        } else {
            slots.chunks(slot).enumerate().map(leaf).collect()
        };
        leaves.iter().for_each(|l| ct.push(l));
    }
    Ok(ct.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The windows tile the object body exactly: every segment once, in order, each window's
    /// bytes its plaintext plus one tag per segment, and the buffer holds the largest.
    #[test]
    fn windows_tile_the_body() {
        let seg = 4096u32;
        for size in [0u64, 1, 4096, 4097, 40 << 20, (40 << 20) + 5] {
            let windows = Windows::new(size, seg, 2);
            let buf = windows.buffer().len();
            let (mut next, mut plain, mut used) = (0u64, 0u64, 0u64);
            for w in windows {
                assert_eq!(w.first, next, "size {size}");
                assert_eq!(w.used, w.plain as usize + w.count * TAG_LEN);
                assert!(w.used <= buf, "size {size}: window larger than the buffer");
                next += w.count as u64;
                plain += w.plain;
                used += w.used as u64;
            }
            assert_eq!(next, format::segment_count(size, seg));
            assert_eq!(plain, size);
            assert_eq!(used, format::object_len(size, seg) - HEADER_LEN as u64);
        }
    }
}
