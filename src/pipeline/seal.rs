//! Sealing on worker threads: plaintext in, records out. No vault I/O, no ordering: the
//! single writer ([`crate::pipeline::write`]) puts the results in place.
//!
//! Two kinds of job: a *chunk* (consecutive entries of the walk: small files sealed into
//! records back to back in one buffer, directories and links passed through) and a *window*
//! of a large file (a run of its segments). Every job owns one buffer of the [`BufPool`] until
//! the writer has written it: the pool is the pipeline's memory bound and its backpressure.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::crypto::{ct_leaf, segment_mac, BatchKey, CtDigest, FileKeys, SegMac, TreeMac};
use crate::format::manifest::Entry;
use crate::format::{self, ObjectHeader, HEADER_LEN, ID_LEN, SALT_LEN, TAG_LEN};
use crate::fs::source::Source;
use crate::fs::tree::{SourceEntry, SourceKind};
use crate::pipeline::journal::SourceId;

/// Buffers recycled between the jobs and the writer (no page faults for fresh allocations
/// on every window: a fresh 8 MiB buffer costs more to fault in than to fill).
pub struct BufPool {
    tx: Sender<Vec<u8>>,
    rx: Receiver<Vec<u8>>,
}

impl BufPool {
    pub fn new(count: usize, size: usize) -> BufPool {
        let (tx, rx) = crossbeam_channel::bounded(count);
        for _ in 0..count {
            let _ = tx.send(vec![0u8; size]);
        }
        BufPool { tx, rx }
    }

    /// Waits for a free buffer; `None` once `stop` is set.
    pub fn take(&self, stop: &AtomicBool) -> Option<Vec<u8>> {
        loop {
            if stop.load(Ordering::Relaxed) {
                return None;
            }
            if let Ok(b) = self.rx.recv_timeout(Duration::from_millis(50)) {
                return Some(b);
            }
        }
    }

    pub fn give(&self, b: Vec<u8>) {
        let _ = self.tx.send(b);
    }
}

/// What the run's jobs share.
pub struct SealCtx {
    pub vault_id: [u8; ID_LEN],
    pub segment_size: u32,
    /// `--compress zstd:LEVEL`: small files are sealed as compressed records (suite 2,
    /// docs/FORMAT.md §4.5) at this level.
    pub compress: Option<i32>,
}

/// Why one file could not be sealed: its source is unreadable or kept changing (the file is
/// reported and skipped), or the run is stopping.
#[derive(Debug)]
pub enum FileError {
    Source(String),
    /// The source changed while it was read (retried, then reported).
    Changed(String),
    Cancelled,
}

/// A source's identity as read.
pub fn source_id(e: &SourceEntry, src: &Source) -> SourceId {
    let (ctime, ctime_nsec) = src.ctime();
    SourceId {
        dev: e.dev,
        ino: e.ino,
        ctime,
        ctime_nsec,
    }
}

/// One file's fresh header and keys: a new file id and salt every time a file is sealed, so
/// no key and nonce ever meet two plaintexts (docs/FORMAT.md §7). The header names the
/// suite: 2 (compressed, §4.5) when `ctx` compresses, else 1.
pub fn new_file(
    ctx: &SealCtx,
    key: &BatchKey,
    size: u64,
) -> std::io::Result<(ObjectHeader, FileKeys)> {
    let alg = suite(ctx.compress);
    let mut header = ObjectHeader {
        version: format::FORMAT_VERSION,
        alg,
        segment_size: ctx.segment_size,
        plain_len: size,
        vault_id: ctx.vault_id,
        batch_id: *key.batch_id(),
        file_id: format::random()?,
        salt: format::random()?,
        commitment: [0; 32],
    };
    let fk = key.file_keys(&header);
    header.commitment = fk.commitment();
    Ok((header, fk))
}

/// The algorithm suite of the records sealed at a compression level (or none).
pub fn suite(compress: Option<i32>) -> u16 {
    match compress {
        Some(_) => format::ALG_AES256GCM_ZSTD_BLAKE3,
        None => format::ALG_AES256GCM_BLAKE3,
    }
}

/// Seals segments `first..first + count` of `src` into `out` (one slot after another, as
/// they lie in the record), reading each byte once. Returns each piece's ct leaf and each
/// segment's plaintext MAC contribution. `head` is the record header, hashed into piece 0.
#[allow(clippy::too_many_arguments)]
pub fn seal_segments(
    src: &Source,
    fk: &FileKeys,
    head: &[u8],
    size: u64,
    seg: u32,
    first: u64,
    count: u64,
    out: &mut [u8],
) -> Result<(Vec<[u8; 32]>, Vec<SegMac>), FileError> {
    let n = format::segment_count(size, seg);
    let mut leaves = Vec::with_capacity(count as usize);
    let mut macs = Vec::with_capacity(count as usize);
    let mut pos = 0usize;
    for i in first..first + count {
        let len = format::segment_plain_len(size, seg, i);
        let slot = &mut out[pos..pos + len + TAG_LEN];
        read_segment(src, seg, i, &mut slot[..len])?;
        // The plaintext MAC is taken from the bytes just read, before sealing in place.
        macs.push(segment_mac(fk.mac_key(), seg, i, n, &slot[..len]));
        fk.seal_segment(i, i == n - 1, slot);
        leaves.push(ct_leaf(if i == 0 { head } else { &[] }, slot));
        pos += len + TAG_LEN;
    }
    Ok((leaves, macs))
}

/// Reads segment `i` of the source into `buf`: a source that changed under the read is
/// [`FileError::Changed`] (retried), any other failure [`FileError::Source`].
fn read_segment(src: &Source, seg: u32, i: u64, buf: &mut [u8]) -> Result<(), FileError> {
    src.read_at(i * u64::from(seg), buf).map_err(|e| {
        if crate::fs::is_changed(&e) {
            FileError::Changed(e.to_string())
        } else {
            FileError::Source(e.to_string())
        }
    })
}

/// Seals all segments of `src` as a compressed record's body (docs/FORMAT.md §4.5) into
/// `out`: each segment's stored form (a Zstandard frame at `level` when shorter, else the
/// plaintext), sealed, then the sealed table of stored lengths. Returns the bytes used and
/// the segments' MACs (the ciphertext digest of such a record is BLAKE3 of its bytes).
pub fn seal_compressed(
    src: &Source,
    fk: &FileKeys,
    size: u64,
    seg: u32,
    level: i32,
    out: &mut [u8],
) -> Result<(usize, Vec<SegMac>), FileError> {
    let n = format::segment_count(size, seg);
    let (mut pos, stored, macs) = seal_compressed_segments(src, fk, size, seg, level, 0, n, out)?;
    let table = format::compress::Table::encode(&stored);
    let slot = &mut out[pos..pos + table.len() + TAG_LEN];
    slot[..table.len()].copy_from_slice(&table);
    fk.seal_table(n, slot);
    pos += table.len() + TAG_LEN;
    Ok((pos, macs))
}

/// Seals segments `first..first + count` of a compressed record (§4.5) into `out`, slot
/// after slot: each segment's stored form (a Zstandard frame at `level` when shorter, else
/// the plaintext), sealed. Returns the bytes used, each segment's stored length and MAC.
#[allow(clippy::too_many_arguments)]
pub fn seal_compressed_segments(
    src: &Source,
    fk: &FileKeys,
    size: u64,
    seg: u32,
    level: i32,
    first: u64,
    count: u64,
    out: &mut [u8],
) -> Result<(usize, Vec<u32>, Vec<SegMac>), FileError> {
    let n = format::segment_count(size, seg);
    let mut macs = Vec::with_capacity(count as usize);
    let mut stored = Vec::with_capacity(count as usize);
    let mut plain = vec![0u8; format::segment_plain_len(size, seg, first)];
    let mut pos = 0usize;
    for i in first..first + count {
        let len = format::segment_plain_len(size, seg, i);
        read_segment(src, seg, i, &mut plain[..len])?;
        macs.push(segment_mac(fk.mac_key(), seg, i, n, &plain[..len]));
        let frame = format::compress::compress_segment(&plain[..len], level);
        let body: &[u8] = frame.as_deref().unwrap_or(&plain[..len]);
        let slot = &mut out[pos..pos + body.len() + TAG_LEN];
        slot[..body.len()].copy_from_slice(body);
        fk.seal_segment(i, i == n - 1, slot);
        // A stored form is never longer than its segment (at most S <= 64 MiB).
        stored.push(body.len() as u32);
        pos += body.len() + TAG_LEN;
    }
    Ok((pos, stored, macs))
}

/// The room a small file's record may take: its suite-1 length, and with compression the
/// table (a segment is never stored longer than it is).
pub fn small_record_room(size: u64, seg: u32, compress: bool) -> u64 {
    let table = match compress {
        true => format::compress::table_len(format::segment_count(size, seg)),
        false => 0,
    };
    format::object_len(size, seg) + table
}

/// A file an interrupted run committed, taken over: its entry line verbatim, the source it
/// was read from, its size and its object.
pub struct Reused {
    pub line: Vec<u8>,
    pub src: SourceId,
    pub size: u64,
    pub obj: u64,
    /// The path, when the file has other hard links (a later hard-link entry may name it).
    pub linkable: Option<Vec<u8>>,
}

/// An entry of a chunk, in walk order.
pub enum ChunkItem {
    /// A directory, symlink, hard link, FIFO or device: nothing to seal.
    Entry(Entry),
    /// A file whose record an interrupted run already committed.
    Reused(Reused),
    /// A small file to seal into this chunk's buffer.
    Small {
        entry: SourceEntry,
        batch: u32,
        key: Arc<BatchKey>,
    },
}

/// A sealed small file: its record lies at `rec_off` in the chunk's buffer.
pub struct SealedFile {
    pub entry: SourceEntry,
    pub src: SourceId,
    pub size: u64,
    pub batch: u32,
    pub rec_off: usize,
    pub salt: [u8; SALT_LEN],
    pub ct: [u8; 32],
    pub pt: [u8; 32],
    pub sparse: Option<Box<crate::format::sparse::Sparse>>,
    /// The record's length, when it is compressed (docs/FORMAT.md §4.5).
    pub rlen: Option<u64>,
}

/// What a chunk job made of each item.
pub enum ChunkOut {
    Entry(Entry),
    Reused(Reused),
    Sealed(Box<SealedFile>),
    Failed { path: String, why: String },
}

/// Attempts per file before a file that keeps changing is reported.
const ATTEMPTS: usize = 3;

/// Seals a chunk into `buf`; returns the outcomes in order and the bytes of `buf` used.
pub fn seal_chunk(
    ctx: &SealCtx,
    items: Vec<ChunkItem>,
    buf: &mut [u8],
    cancel: &AtomicBool,
    progress: &dyn crate::progress::Progress,
) -> (Vec<ChunkOut>, usize) {
    let mut out = Vec::with_capacity(items.len());
    let mut used = 0usize;
    for item in items {
        match item {
            ChunkItem::Entry(e) => out.push(ChunkOut::Entry(e)),
            ChunkItem::Reused(r) => out.push(ChunkOut::Reused(r)),
            ChunkItem::Small {
                mut entry,
                batch,
                key,
            } => {
                if cancel.load(Ordering::Relaxed) {
                    break;
                }
                match seal_small(ctx, &entry, &key, &mut buf[used..]) {
                    Ok(r) => {
                        // Gaps count as done: they are the file's bytes too.
                        progress.bytes(r.sparse.as_ref().map_or(r.size, |s| s.file_len()));
                        (entry.mtime, entry.mtime_nsec) = r.mtime;
                        if let Some(x) = r.xattrs {
                            entry.xattrs = x;
                        }
                        out.push(ChunkOut::Sealed(Box::new(SealedFile {
                            entry,
                            src: r.src,
                            size: r.size,
                            batch,
                            rec_off: used,
                            salt: r.salt,
                            ct: r.ct,
                            pt: r.pt,
                            sparse: r.sparse,
                            rlen: r.rlen,
                        })));
                        used += r.len;
                    }
                    Err(why) => out.push(ChunkOut::Failed {
                        path: entry.source.display().to_string(),
                        why,
                    }),
                }
            }
        }
    }
    (out, used)
}

/// A small file's record, sealed at the start of a chunk buffer's free room.
struct SmallRecord {
    /// Bytes of the room it fills.
    len: usize,
    src: SourceId,
    salt: [u8; SALT_LEN],
    ct: [u8; 32],
    pt: [u8; 32],
    /// Plaintext bytes stored, and the file's gaps.
    size: u64,
    sparse: Option<Box<crate::format::sparse::Sparse>>,
    /// The record's length, when it is compressed.
    rlen: Option<u64>,
    /// The file's mtime as read.
    mtime: (i64, u32),
    /// Its extended attributes, read from the open file when the walk left them to it.
    xattrs: Option<Vec<(Vec<u8>, Vec<u8>)>>,
}

/// Seals one small file's record at the start of `room`, retrying a file that changes while
/// being read.
fn seal_small(
    ctx: &SealCtx,
    entry: &SourceEntry,
    key: &BatchKey,
    room: &mut [u8],
) -> Result<SmallRecord, String> {
    let device = matches!(entry.kind, SourceKind::File { device: true, .. });
    let mut last_why = String::new();
    for _ in 0..ATTEMPTS {
        let src = match Source::open(entry, device) {
            Ok(src) => src,
            // Replaced (by a link, say) since the walk: retried, then reported as changed.
            Err(e) if crate::fs::is_changed(&e) => {
                last_why = e.to_string();
                continue;
            }
            Err(e) => return Err(e.to_string()),
        };
        let size = src.size();
        let room_len = small_record_room(size, ctx.segment_size, ctx.compress.is_some()) as usize;
        if room_len > room.len() {
            return Err("grew while being read; run the same command again".into());
        }
        let (header, fk) = new_file(ctx, key, size).map_err(|e| e.to_string())?;
        let hb = header.encode();
        room[..HEADER_LEN].copy_from_slice(&hb);
        let n = format::segment_count(size, ctx.segment_size);
        let body = &mut room[HEADER_LEN..room_len];
        let r = match ctx.compress {
            Some(level) => seal_compressed(&src, &fk, size, ctx.segment_size, level, body)
                .map(|(used, m)| (used, Vec::new(), m)),
            None => seal_segments(&src, &fk, &hb, size, ctx.segment_size, 0, n, body)
                .map(|(l, m)| (room_len - HEADER_LEN, l, m)),
        };
        match r {
            Ok((used, leaves, macs)) => match src.unchanged(device) {
                Ok(true) => {
                    let len = HEADER_LEN + used;
                    let ct = match ctx.compress {
                        // A compressed record's digest is BLAKE3 of its bytes (§4.5).
                        Some(_) => *blake3::hash(&room[..len]).as_bytes(),
                        None => {
                            let mut ct = CtDigest::new();
                            leaves.iter().for_each(|l| ct.push(l));
                            ct.finalize()
                        }
                    };
                    let mut mac = TreeMac::new(fk.mac_key());
                    macs.into_iter().for_each(|m| mac.add(m));
                    let pt = mac.finalize().ok_or("empty MAC tree")?;
                    return Ok(SmallRecord {
                        len,
                        rlen: ctx.compress.map(|_| len as u64),
                        src: source_id(entry, &src),
                        salt: header.salt,
                        ct,
                        pt: *pt.as_bytes(),
                        size,
                        sparse: src.sparse().map(|s| Box::new(s.clone())),
                        mtime: src.mtime(),
                        xattrs: entry.xattrs_at_open.then(|| src.xattrs(&entry.path)),
                    });
                }
                Ok(false) => last_why = "changed while being read".into(),
                Err(e) => return Err(e.to_string()),
            },
            Err(FileError::Changed(why)) => last_why = why,
            Err(FileError::Source(why)) => return Err(why),
            Err(FileError::Cancelled) => return Err("interrupted".into()),
        }
    }
    Err(format!("{last_why}; gave up after {ATTEMPTS} attempts"))
}

/// A sealed window of a large file.
pub struct SealedWindow {
    /// Bytes of the buffer used.
    pub used: usize,
    /// Each piece's ct leaf (§4.4; none for a compressed record, whose `ct` the writer
    /// hashes as the record's bytes go out, §4.5).
    pub leaves: Vec<[u8; 32]>,
    /// Each segment's part of the plaintext MAC.
    pub macs: Vec<SegMac>,
    /// Each segment's stored length (a compressed record's table, §4.5; none for suite 1).
    pub stored: Vec<u32>,
}

/// A large file being sealed window by window.
pub struct LargeFile {
    pub src: Source,
    pub keys: FileKeys,
    pub header: [u8; HEADER_LEN],
    pub size: u64,
    /// Segments per window.
    pub window: u64,
    /// Sealed as a compressed record (suite 2, §4.5) at this Zstandard level.
    pub compress: Option<i32>,
}

impl LargeFile {
    pub fn windows(&self, seg: u32) -> u64 {
        format::segment_count(self.size, seg).div_ceil(self.window)
    }

    /// Seals window `w` into `buf`; returns the bytes used, the leaves and the MACs.
    pub fn seal_window(&self, seg: u32, w: u64, buf: &mut [u8]) -> Result<SealedWindow, FileError> {
        let n = format::segment_count(self.size, seg);
        let first = w * self.window;
        let count = self.window.min(n - first);
        if let Some(level) = self.compress {
            let (used, stored, macs) = seal_compressed_segments(
                &self.src, &self.keys, self.size, seg, level, first, count, buf,
            )?;
            return Ok(SealedWindow {
                used,
                leaves: Vec::new(),
                macs,
                stored,
            });
        }
        let used = (first..first + count)
            .map(|i| format::segment_plain_len(self.size, seg, i) + TAG_LEN)
            .sum::<usize>();
        let (leaves, macs) = seal_segments(
            &self.src,
            &self.keys,
            &self.header,
            self.size,
            seg,
            first,
            count,
            &mut buf[..used],
        )?;
        Ok(SealedWindow {
            used,
            leaves,
            macs,
            stored: Vec::new(),
        })
    }
}

/// Segments per window and the pool's buffer size for a segment size: windows of about
/// 8 MiB (enough to amortise a job, small enough that a few per core stay in cache-friendly
/// bounds), never less than one segment.
pub fn window_geometry(seg: u32, pack_threshold: u64) -> (u64, usize) {
    let slot = u64::from(seg) + TAG_LEN as u64;
    let window = ((8u64 << 20) / slot).max(1);
    // Room for a small file's record, compressed or not.
    let small = small_record_room(pack_threshold.saturating_sub(1), seg, true);
    (window, (window * slot).max(small) as usize)
}

/// A large file taken up at a segment checkpoint: its keys (from the header already in its
/// object) and the digests of the prefix sealed before, rebuilt from the object (read back
/// and opened: the source is not read again).
pub struct Resumed {
    pub keys: FileKeys,
    pub header: [u8; HEADER_LEN],
    pub salt: [u8; SALT_LEN],
    pub ct: CtDigest,
    pub mac: TreeMac,
    /// Bytes of the object read back.
    pub read: u64,
}

/// The header of a checkpointed record and its file keys, if it is this file's (vault,
/// batch, length, segment size) and the key commitment holds.
fn checkpointed_keys(
    ctx: &SealCtx,
    key: &BatchKey,
    hb: &[u8; HEADER_LEN],
    size: u64,
) -> Option<(ObjectHeader, FileKeys)> {
    let h = ObjectHeader::decode(hb).ok()?;
    if h.vault_id != ctx.vault_id
        || h.alg != suite(ctx.compress)
        || &h.batch_id != key.batch_id()
        || h.plain_len != size
        || h.segment_size != ctx.segment_size
    {
        return None;
    }
    let keys = key.file_keys(&h);
    keys.check_commitment(&h.commitment).then_some((h, keys))
}

/// Rebuilds a checkpointed file's state without its object, which object storage keeps
/// unreadable until its upload is finished: the first `segs` segments of the source are
/// sealed again under the keys of the checkpoint's header `hb` (sealing is deterministic:
/// the same bytes, leaves and MACs as the parts already stored), read once and written
/// nowhere. `segs` 0 (the header checkpoint an object-storage run journals first) rebuilds
/// nothing but the keys: the file is sealed from its start under that header, so that the
/// parts the interrupted run uploaded are recognised. `None` when anything differs or
/// fails: the file starts over.
pub fn resume_from_source(
    ctx: &SealCtx,
    key: &BatchKey,
    hb: &[u8; HEADER_LEN],
    src: &Source,
    size: u64,
    segs: u64,
) -> Option<Resumed> {
    let seg = ctx.segment_size;
    if segs >= format::segment_count(size, seg) {
        return None;
    }
    let (h, keys) = checkpointed_keys(ctx, key, hb, size)?;
    let mut ct = CtDigest::new();
    let mut mac = TreeMac::new(keys.mac_key());
    let (window, _) = window_geometry(seg, 0);
    let slot = seg as usize + TAG_LEN;
    let mut buf = vec![0u8; window as usize * slot];
    let mut first = 0;
    while first < segs {
        let count = window.min(segs - first);
        let (leaves, macs) =
            seal_segments(src, &keys, hb, size, seg, first, count, &mut buf).ok()?;
        leaves.iter().for_each(|l| ct.push(l));
        macs.into_iter().for_each(|m| mac.add(m));
        first += count;
    }
    Some(Resumed {
        keys,
        header: *hb,
        salt: h.salt,
        ct,
        mac,
        read: segs * u64::from(seg),
    })
}

/// Rebuilds a checkpointed file's state from the first `segs` segments of `obj` (its record
/// at offset 0), after checking the header is this file's (vault, batch, length, segment
/// size, key commitment). `None` when anything differs or fails: the file starts over.
pub fn resume_large(
    ctx: &SealCtx,
    key: &BatchKey,
    obj: &dyn crate::store::ReadAt,
    size: u64,
    segs: u64,
) -> Option<Resumed> {
    let seg = ctx.segment_size;
    let n = format::segment_count(size, seg);
    if segs == 0 || segs >= n {
        return None;
    }
    let mut hb = [0u8; HEADER_LEN];
    obj.read_exact_at(&mut hb, 0).ok()?;
    let (h, keys) = checkpointed_keys(ctx, key, &hb, size)?;
    let mut ct = CtDigest::new();
    let mut mac = TreeMac::new(keys.mac_key());
    let slot = seg as usize + TAG_LEN;
    let mut buf = vec![0u8; slot];
    let mut read = 0u64;
    for i in 0..segs {
        // Every segment before a checkpoint is a full one (segs < n).
        obj.read_exact_at(&mut buf, format::segment_offset(seg, i))
            .ok()?;
        read += slot as u64;
        ct.push(&ct_leaf(if i == 0 { &hb[..] } else { &[] }, &buf));
        let pt = keys.open_segment(i, false, &mut buf).ok()?;
        mac.add(segment_mac(keys.mac_key(), seg, i, n, pt));
    }
    Some(Resumed {
        keys,
        header: hb,
        salt: h.salt,
        ct,
        mac,
        read,
    })
}

/// Rebuilds a compressed record's state at its checkpoint `p` from `obj` (its record at
/// offset 0, a local vault's): the header checked as for any checkpoint, then the first
/// `p.segs` slots, at the offsets their stored lengths `lens` give, read, hashed (the
/// record's `ct` so far, which must be the checkpoint's) and opened (each tag, the
/// decoded length) to rebuild the plaintext MAC. `None` when anything differs or fails:
/// the file is then sealed anew.
pub fn resume_compressed(
    ctx: &SealCtx,
    key: &BatchKey,
    obj: &dyn crate::store::ReadAt,
    size: u64,
    p: &crate::pipeline::journal::Prefix,
    lens: &[u32],
) -> Option<(Resumed, blake3::Hasher)> {
    let seg = ctx.segment_size;
    let n = format::segment_count(size, seg);
    if lens.len() as u64 != p.segs || p.segs >= n {
        return None;
    }
    let mut hb = [0u8; HEADER_LEN];
    obj.read_exact_at(&mut hb, 0).ok()?;
    let (h, keys) = checkpointed_keys(ctx, key, &hb, size)?;
    let mut ct = blake3::Hasher::new();
    ct.update(&hb);
    let mut mac = TreeMac::new(keys.mac_key());
    let mut slot = Vec::new();
    let mut plain = vec![0u8; seg as usize];
    let mut at = HEADER_LEN as u64;
    for (i, &c) in lens.iter().enumerate() {
        let i = i as u64;
        // Every segment before a checkpoint is a full one (segs < n).
        let len = format::segment_plain_len(size, seg, i);
        if c as usize > len {
            return None;
        }
        slot.resize(c as usize + TAG_LEN, 0);
        obj.read_exact_at(&mut slot, at).ok()?;
        ct.update(&slot);
        at += slot.len() as u64;
        let opened = keys.open_segment(i, false, &mut slot).ok()?;
        format::compress::decode_segment(opened, len, &mut plain[..len]).ok()?;
        mac.add(segment_mac(keys.mac_key(), seg, i, n, &plain[..len]));
    }
    if at != p.rpos || ct.finalize() != blake3::Hash::from(p.hash) {
        return None;
    }
    let r = Resumed {
        keys,
        header: hb,
        salt: h.salt,
        ct: CtDigest::new(),
        mac,
        read: at,
    };
    Some((r, ct))
}
