//! The vault writer: the one owner of every output of an `encrypt` run (objects and packs,
//! key files, journal, manifest, syncs), on its own thread.
//!
//! Jobs finish in any order; the writer puts their results back in walk order (units are
//! numbered by the planner), so that packs grow in walk order and the journal's entries are in
//! tree order: committed records always form a prefix of each pack, and the last generation
//! of the journal is the manifest's entry list, streamed into it at the end. Large files'
//! windows are written as they come, at their offsets, into objects of their own.
//!
//! Durability (what makes a crash at any moment resumable): key file and journal `batch`
//! record before any ciphertext of the batch; data written without per-file fsync; a group
//! commit every [`COMMIT_EVERY`] (or [`COMMIT_LINES`] entries): `syncfs` of the vault, then
//! the `object` and `done` lines and an `fdatasync` of the journal; at the end the manifest,
//! then the journal removed. The `syncfs` runs on a thread of its own (`store::syncer::Syncer`),
//! one at a time, while the writer goes on writing: the lines of a group wait for the sync that began
//! after their data was written, so the disk writes back one group while the next is sealed.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::crypto::{BatchKey, CtDigest, NameKey, SegMac, TreeMac};
use crate::error::{Error, IoContext, Result};
use crate::format::manifest::{self, Batch, Entry, EntryKind, FileEntry, Header, Name, ObjectRef};
use crate::format::{self, ID_LEN, SALT_LEN};
use crate::fs::tree::{SourceEntry, SourceKind};
use crate::pipeline::journal::{Ckpt, Journal, Lens, Prefix, SourceId};
use crate::pipeline::seal::{BufPool, ChunkOut, FileError, LargeFile, SealedWindow};
use crate::progress::Progress;
use crate::store::syncer::Syncer;
use crate::store::{ObjectWriter, Shape, Store};

/// Longest a finished file waits for its commit.
pub const COMMIT_EVERY: Duration = Duration::from_millis(500);
/// Most entries one commit waits for.
pub const COMMIT_LINES: usize = 8192;
/// Most entries queued while a commit's sync is in flight (a few MiB of journal lines).
const QUEUED_MAX: usize = 2 * COMMIT_LINES;
/// Why a large file is reported when it kept changing while read.
const CHANGED: &str = "changed while being read; run the same command again";
/// Times a large file that changed while read is read again before it is reported.
pub const RESEAL_ATTEMPTS: usize = 2;
/// A large file's segment checkpoint is recorded at least every this many bytes sealed in
/// order...
pub const CHECKPOINT_BYTES: u64 = 64 << 20;
/// ...and every this long. Checkpoints are committed with the next group commit, after
/// their data is synced; that commit is due once the checkpoints queued advance their files
/// by 2 × [`checkpoint_bytes`], and the writer waits for a sync in flight rather than let
/// more than 3 × of them wait for commit: a kill -9 loses at most 4 × 64 MiB = 256 MiB of
/// sealing, or about 1 s, per large file in flight (docs/RESUME.md).
pub const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// [`CHECKPOINT_BYTES`], or for tests only (to kill a run past several checkpoints
/// without hundreds of MiB of data) the value of `ENVSEAL_TEST_CHECKPOINT_BYTES`.
pub fn checkpoint_bytes() -> u64 {
    static BYTES: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *BYTES.get_or_init(|| {
        std::env::var("ENVSEAL_TEST_CHECKPOINT_BYTES")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&b| b > 0)
            .unwrap_or(CHECKPOINT_BYTES)
    })
}

/// What the planner and the jobs send the writer.
pub enum Msg {
    /// A new batch: its key file and journal record go to disk before anything else of it.
    Batch { batch: Batch, key: Arc<BatchKey> },
    /// A chunk's results: records back to back in `buf[..used]`, outcomes in walk order.
    Chunk {
        unit: u64,
        buf: Vec<u8>,
        used: usize,
        items: Vec<ChunkOut>,
    },
    /// A large file's object begins; its windows follow.
    Large { unit: u64, file: Box<LargeStart> },
    /// One window of a large file, sealed (or not).
    Window {
        unit: u64,
        window: u64,
        buf: Vec<u8>,
        result: std::result::Result<SealedWindow, FileError>,
    },
    /// A unit that produced nothing but a failure (a large file that could not be opened).
    Failed {
        unit: u64,
        path: String,
        why: String,
    },
}

/// A large file as the writer needs it.
pub struct LargeStart {
    pub entry: SourceEntry,
    pub file: Arc<LargeFile>,
    pub batch: u32,
    pub salt: [u8; SALT_LEN],
    pub mac: TreeMac,
    /// The ciphertext digest so far (of the checkpointed prefix, when resumed).
    pub ct: CtDigest,
    pub device: bool,
    /// Taken up at a checkpoint: the object already holding the prefix, and the first
    /// window still to write.
    pub resume: Option<(u64, u64)>,
    /// A compressed record taken up at a checkpoint from its object read back: the record
    /// so far, continued from there.
    pub stream: Option<StreamState>,
}

/// A compressed record's state after its checkpointed prefix, rebuilt from the object:
/// the hash of its bytes so far, their length, and the segments' stored lengths.
pub struct StreamState {
    pub ct: blake3::Hasher,
    pub pos: u64,
    pub stored: Vec<u32>,
}

/// A compressed record (docs/FORMAT.md §4.5) written in order: its windows arrive in any
/// order and go out each at the end of the one before; the writer hashes the record as it
/// goes (its `ct`) and keeps the stored lengths for the table that ends it.
struct Stream {
    /// The record's length so far: where the next window goes.
    pos: u64,
    stored: Vec<u32>,
    ct: blake3::Hasher,
    /// Sealed windows waiting for the ones before them: buffer, bytes used, stored lengths.
    held: BTreeMap<u64, (Vec<u8>, usize, Vec<u32>)>,
    /// Window ends since the last checkpoint (windows done, and the record's bytes up to
    /// there): a checkpoint is taken at the last one the store has made durable.
    marks: std::collections::VecDeque<(u64, Prefix)>,
    /// Segments the journal's checkpoints of this record have given the lengths of.
    ckpt_segs: u64,
}

impl Stream {
    /// A record from its start (its header written).
    fn new(header: &[u8]) -> Stream {
        let mut ct = blake3::Hasher::new();
        ct.update(header);
        Stream::resumed(StreamState {
            ct,
            pos: header.len() as u64,
            stored: Vec::new(),
        })
    }

    /// Goes on after a prefix kept in the object.
    fn resumed(s: StreamState) -> Stream {
        Stream {
            pos: s.pos,
            ckpt_segs: s.stored.len() as u64,
            stored: s.stored,
            ct: s.ct,
            held: BTreeMap::new(),
            marks: Default::default(),
        }
    }

    /// Appends sealed slots (or the table) to the record.
    fn put(&mut self, out: &mut dyn ObjectWriter, bytes: &[u8]) -> Result<()> {
        out.write_at(self.pos, bytes)?;
        self.ct.update(bytes);
        self.pos += bytes.len() as u64;
        Ok(())
    }

    /// The record so far, after `segs` segments.
    fn prefix(&self, segs: u64) -> Prefix {
        Prefix {
            segs,
            rpos: self.pos,
            hash: *self.ct.finalize().as_bytes(),
        }
    }

    /// Ends the record with its sealed table; returns its length and ciphertext digest.
    fn finish(
        mut self,
        out: &mut dyn ObjectWriter,
        keys: &crate::crypto::FileKeys,
    ) -> Result<(u64, [u8; 32])> {
        let n = self.stored.len() as u64;
        let mut table = format::compress::Table::encode(&self.stored);
        table.extend_from_slice(&[0u8; format::TAG_LEN]);
        keys.seal_table(n, &mut table);
        self.put(out, &table)?;
        Ok((self.pos, *self.ct.finalize().as_bytes()))
    }
}

/// A file that could not be encrypted (the run goes on without it).
#[derive(Clone, Debug)]
pub struct Failure {
    pub path: String,
    pub why: String,
}

/// What the writer wrote.
#[derive(Debug, Default)]
pub struct Written {
    pub files: u64,
    pub bytes: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    pub specials: u64,
    pub resumed_files: u64,
    pub failed: Vec<Failure>,
    /// Source bytes sealed by this run (not those taken over from an interrupted one).
    pub read_bytes: u64,
    /// Holes and zero extents of the files this run sealed: neither read nor stored.
    pub gap_bytes: u64,
}

struct LargeState {
    start: Box<LargeStart>,
    obj: u64,
    out: Box<dyn ObjectWriter>,
    windows: u64,
    next: u64,
    waiting: BTreeMap<u64, (Vec<[u8; 32]>, Vec<SegMac>)>,
    ct: CtDigest,
    /// A compressed record's writing in order.
    stream: Option<Stream>,
    failed: Option<String>,
    /// Windows in order at the last checkpoint, and when it was taken.
    ckpt: (u64, Instant),
    /// Stopped by a cancel (not a source error).
    interrupted: bool,
    /// The source changed while a window was read.
    changed: bool,
}

enum Unit {
    Chunk {
        buf: Vec<u8>,
        used: usize,
        items: Vec<ChunkOut>,
    },
    Large(Box<LargeState>),
    Failed(Failure),
}

struct Pack {
    out: Box<dyn ObjectWriter>,
    obj: u64,
    len: u64,
}

/// The writer's state; [`Writer::run`] consumes it.
pub struct Writer<'a> {
    pub store: Arc<dyn Store>,
    pub header: Header,
    pub journal: Journal,
    pub batches: Vec<Batch>,
    pub keys: Vec<Arc<BatchKey>>,
    /// Object ids by index (those an interrupted run listed, then this run's).
    pub objects: Vec<[u8; ID_LEN]>,
    /// Where this run's entries begin in the journal.
    pub gen_start: u64,
    pub pool: &'a BufPool,
    pub progress: &'a dyn Progress,
    pub stop: &'a AtomicBool,
    name_key: Option<NameKey>,
    referenced: Vec<bool>,
    pack: Option<Pack>,
    next_unit: u64,
    units: BTreeMap<u64, Unit>,
    queue: Vec<u8>,
    queued: usize,
    oldest: Option<Instant>,
    /// Bytes of large files the checkpoints in `queue` advance past the committed ones...
    ckpt_queued: u64,
    /// ...and those in `pending`.
    ckpt_pending: u64,
    written: Written,
    /// Lines whose data an in-flight sync is making durable; journaled when it returns.
    pending: Vec<u8>,
    syncer: Option<Syncer>,
    /// Sync data before journaling it (see `EncryptOptions::sync`).
    pub sync: bool,
    /// Paths of stored files with other hard links: what a hard-link entry may name (a link
    /// whose file failed would name nothing, and is reported instead).
    linkable: HashSet<Vec<u8>>,
    /// Seals extended attributes (batch 0's name key, made on first use).
    xattr_key: Option<NameKey>,
}

impl<'a> Writer<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<dyn Store>,
        header: Header,
        journal: Journal,
        batches: Vec<Batch>,
        keys: Vec<Arc<BatchKey>>,
        objects: Vec<[u8; ID_LEN]>,
        pool: &'a BufPool,
        progress: &'a dyn Progress,
        stop: &'a AtomicBool,
    ) -> Writer<'a> {
        let name_key = match (header.conceal_names, keys.first()) {
            (true, Some(k)) => Some(k.name_key()),
            _ => None,
        };
        let gen_start = journal.position();
        Writer {
            store,
            header,
            journal,
            referenced: vec![false; objects.len()],
            batches,
            keys,
            objects,
            gen_start,
            pool,
            progress,
            stop,
            name_key,
            pack: None,
            next_unit: 0,
            units: BTreeMap::new(),
            queue: Vec::new(),
            queued: 0,
            oldest: None,
            ckpt_queued: 0,
            ckpt_pending: 0,
            written: Written::default(),
            pending: Vec::new(),
            syncer: None,
            sync: true,
            linkable: HashSet::new(),
            xattr_key: None,
        }
    }

    /// Marks the start of this run's entries in the journal (a resumed run's new generation).
    pub fn start_generation(&mut self) -> Result<()> {
        let l = self.journal.gen_line()?;
        self.journal.write_synced(&l)?;
        self.gen_start = self.journal.position();
        Ok(())
    }

    /// Handles messages until every sender is gone, then writes the manifest. On an error the
    /// `stop` flag is raised so that the planner and the jobs wind down.
    pub fn run(mut self, rx: Receiver<Msg>, cancel: &AtomicBool) -> Result<Written> {
        let r = self.serve(&rx);
        if r.is_err() {
            self.stop.store(true, Ordering::Relaxed);
            // Drain, so that no job blocks on a full channel; buffers go back to the pool.
            for m in rx.iter() {
                match m {
                    Msg::Chunk { buf, .. } | Msg::Window { buf, .. } => self.pool.give(buf),
                    _ => {}
                }
            }
            return r.map(|_| Written::default());
        }
        if cancel.load(Ordering::Relaxed) || self.stop.load(Ordering::Relaxed) {
            self.commit()?;
            return Err(Error::Interrupted);
        }
        if !self.units.is_empty() {
            return Err(Error::Runtime(
                "the planner stopped with work unfinished".into(),
            ));
        }
        self.finish()
    }

    fn serve(&mut self, rx: &Receiver<Msg>) -> Result<()> {
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(m) => self.handle(m)?,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
            self.emit_ready()?;
            self.settle(false)?;
            let cb = checkpoint_bytes();
            let due = self.oldest.is_some_and(|t| t.elapsed() >= COMMIT_EVERY)
                || self.queued >= COMMIT_LINES
                || self.ckpt_queued >= 2 * cb;
            let busy = self.syncer.as_ref().is_some_and(Syncer::in_flight);
            // A slow disk must not let the queued lines grow without bound: past
            // QUEUED_MAX entries the writer waits for the sync in flight, as a writer that
            // synced itself would; likewise past 3 checkpoint intervals not yet committed
            // (what a kill would cost, see CHECKPOINT_EVERY).
            let behind =
                self.queued >= QUEUED_MAX || self.ckpt_queued + self.ckpt_pending >= 3 * cb;
            if due && (!busy || behind) {
                self.start_commit()?;
            }
        }
    }

    fn handle(&mut self, m: Msg) -> Result<()> {
        match m {
            Msg::Batch { batch, key } => {
                // The journal's lines stay in the order they were made.
                self.settle(true)?;
                crate::pipeline::vault::write_key_file(
                    &*self.store,
                    &self.header.vault_id,
                    &batch,
                )?;
                let index = self.batches.len() as u32;
                self.journal.append_batch(index, &batch)?;
                if self.keys.is_empty() {
                    self.journal.set_mac_key(key.journal_mac_key());
                    if self.header.conceal_names {
                        self.name_key = Some(key.name_key());
                    }
                }
                self.batches.push(batch);
                self.keys.push(key);
            }
            Msg::Chunk {
                unit,
                buf,
                used,
                items,
            } => {
                self.units.insert(unit, Unit::Chunk { buf, used, items });
            }
            Msg::Failed { unit, path, why } => {
                self.units.insert(unit, Unit::Failed(Failure { path, why }));
            }
            Msg::Large { unit, file } => {
                let state = self.open_large(file)?;
                self.units.insert(unit, Unit::Large(Box::new(state)));
            }
            Msg::Window {
                unit,
                window,
                buf,
                result,
            } => {
                self.window(unit, window, buf, result)?;
            }
        }
        Ok(())
    }

    /// A new object, listed in the journal (its data is durable before any entry names it).
    fn new_object(&mut self, shape: Shape) -> Result<(u64, Box<dyn ObjectWriter>)> {
        let id: [u8; ID_LEN] = format::random().at(self.store.url())?;
        let out = self
            .store
            .create_object(&manifest::object_name(&id), shape)?;
        let obj = self.objects.len() as u64;
        if obj >= format::MAX_OBJECTS {
            return Err(Error::Runtime("more objects than a vault holds".into()));
        }
        self.objects.push(id);
        self.referenced.push(false);
        let line = self.journal.object_line(obj, &id)?;
        self.queue.extend(line);
        Ok((obj, out))
    }

    /// How a large file's object is written: its header, then windows (a compressed
    /// record's in order, its length known at the end).
    fn large_shape(&self, file: &LargeFile) -> Shape {
        let seg = self.header.segment_size;
        let piece = file.window * (u64::from(seg) + format::TAG_LEN as u64);
        let head = format::HEADER_LEN as u64;
        match file.compress {
            None => Shape {
                len: Some(format::object_len(file.size, seg)),
                head,
                piece,
                bound: None,
            },
            Some(_) => Shape {
                len: None,
                head,
                piece,
                bound: Some(format::compress::record_len_range(file.size, seg).1),
            },
        }
    }

    fn open_large(&mut self, mut start: Box<LargeStart>) -> Result<LargeState> {
        let shape = self.large_shape(&start.file);
        let resumed = match start.resume {
            Some((obj, next)) => {
                let id = self
                    .objects
                    .get(obj as usize)
                    .ok_or_else(|| Error::Runtime("a checkpoint of an unknown object".into()))?;
                // A header checkpoint (0 segments) keeps nothing, not even the header; a
                // compressed record read back keeps its prefix (its slots have no fixed
                // offsets).
                let kept = match (&start.stream, next) {
                    (Some(s), _) => s.pos,
                    (None, 0) => 0,
                    (None, n) => {
                        format::segment_offset(self.header.segment_size, n * start.file.window)
                    }
                };
                let name = manifest::object_name(id);
                Some((obj, next, self.store.resume_object(&name, shape, kept)?))
            }
            None => None,
        };
        // A checkpoint whose object lost its prefix (an upload the service dropped): the
        // file is read again from the start, as one that changed (`reseal_large`).
        // Its windows before the checkpoint never come: they are counted as done.
        let lost = matches!(resumed, Some((_, _, None)));
        let (obj, out, next) = match resumed {
            Some((obj, next, Some(mut out))) => {
                if next == 0 {
                    // A header checkpoint: the header's part is not kept.
                    out.write_at(0, &start.file.header)?;
                }
                (obj, out, next)
            }
            other => {
                let fresh = other.is_none();
                let (obj, mut out) = self.new_object(shape)?;
                out.write_at(0, &start.file.header)?;
                if fresh && !start.device && !self.store.traits().durable_partial {
                    self.header_ckpt(&start, obj)?;
                }
                (obj, out, other.map_or(0, |(_, next, _)| next))
            }
        };
        let windows = start.file.windows(self.header.segment_size);
        let ct = std::mem::take(&mut start.ct);
        let resumed_stream = start.stream.take();
        let stream = start.file.compress.map(|_| match (lost, resumed_stream) {
            (false, Some(s)) => Stream::resumed(s),
            _ => Stream::new(&start.file.header),
        });
        Ok(LargeState {
            start,
            obj,
            out,
            windows,
            next,
            waiting: BTreeMap::new(),
            ct,
            stream,
            failed: lost.then(|| CHANGED.to_string()),
            ckpt: (next, Instant::now()),
            interrupted: false,
            changed: lost,
        })
    }

    /// On a store that keeps no partial object (object storage), a large file's header is
    /// journaled as a checkpoint of 0 segments, committed at once: the parts uploaded before
    /// its first real checkpoint cannot be read back, and without the header (its salt) a
    /// rerun could not seal the same bytes to recognise them, so it would send them again
    /// (docs/STORAGE.md, "Resuming an object").
    fn header_ckpt(&mut self, start: &LargeStart, obj: u64) -> Result<()> {
        let (mtime, mtime_nsec) = start.file.src.mtime();
        let c = Ckpt {
            src: crate::pipeline::seal::source_id(&start.entry, &start.file.src),
            size: start.file.size,
            mtime,
            mtime_nsec,
            batch: start.batch,
            obj,
            segs: 0,
            head: Some(start.file.header),
            prefix: None,
            lens: None,
        };
        let line = self.journal.ckpt_line(&c)?;
        self.queue.extend(line);
        // Due now: the commit's barrier waits for no part of this object.
        let now = Instant::now();
        self.oldest = Some(now.checked_sub(COMMIT_EVERY).unwrap_or(now));
        Ok(())
    }

    fn window(
        &mut self,
        unit: u64,
        window: u64,
        mut buf: Vec<u8>,
        result: std::result::Result<SealedWindow, FileError>,
    ) -> Result<()> {
        let seg = self.header.segment_size;
        let partial = self.store.traits().durable_partial;
        let Some(Unit::Large(st)) = self.units.get_mut(&unit) else {
            self.pool.give(buf);
            return Err(Error::Runtime("a window of an unknown file".into()));
        };
        match result {
            Ok(w) => {
                if st.failed.is_none() {
                    let first = window * st.start.file.window;
                    match &mut st.stream {
                        // Written in order, when the windows before it are.
                        Some(sm) => {
                            sm.held
                                .insert(window, (std::mem::take(&mut buf), w.used, w.stored));
                        }
                        None => {
                            let at = format::segment_offset(seg, first);
                            st.out.write_at(at, &buf[..w.used])?;
                        }
                    }
                    let plain = (first..first + w.macs.len() as u64)
                        .map(|i| format::segment_plain_len(st.start.file.size, seg, i) as u64)
                        .sum();
                    self.progress.bytes(plain);
                    self.written.read_bytes += plain;
                }
                st.waiting.insert(window, (w.leaves, w.macs));
            }
            Err(FileError::Changed(why)) => {
                st.changed = true;
                st.failed.get_or_insert(why);
                st.waiting.insert(window, (Vec::new(), Vec::new()));
            }
            Err(FileError::Source(why)) => {
                st.failed.get_or_insert(why);
                st.waiting.insert(window, (Vec::new(), Vec::new()));
            }
            Err(FileError::Cancelled) => {
                st.interrupted = true;
                st.failed.get_or_insert("interrupted".into());
                st.waiting.insert(window, (Vec::new(), Vec::new()));
            }
        }
        if !buf.is_empty() {
            self.pool.give(buf);
        }
        let window = st.start.file.window;
        let n = format::segment_count(st.start.file.size, seg);
        while let Some((leaves, macs)) = st.waiting.remove(&st.next) {
            leaves.iter().for_each(|l| st.ct.push(l));
            macs.into_iter().for_each(|m| st.start.mac.add(m));
            st.next += 1;
            let Some(sm) = st.stream.as_mut() else {
                continue;
            };
            if let Some((buf, used, stored)) = sm.held.remove(&(st.next - 1)) {
                let r = match st.failed {
                    None => sm.put(&mut *st.out, &buf[..used]),
                    Some(_) => Ok(()),
                };
                self.pool.give(buf);
                r?;
                sm.stored.extend(stored);
            }
            // Object storage takes no checkpoint of a compressed record but its header's.
            if partial {
                let segs = (st.next * window).min(n);
                sm.marks.push_back((st.next, sm.prefix(segs)));
            }
        }
        // A checkpoint: the windows written in order so far that the next barrier makes
        // durable (the commit that records it runs that barrier). Not for devices (no
        // ctime to prove them unchanged).
        let slot = u64::from(seg) + format::TAG_LEN as u64;
        let durable = st.out.durable_len();
        let (upto, prefix) = match &mut st.stream {
            None => (
                st.next
                    .min(durable.saturating_sub(format::HEADER_LEN as u64) / slot / window),
                None,
            ),
            // Object storage keeps nothing of a compressed record's upload for a rerun but
            // the parts it recognises by their bytes: only its header checkpoint counts.
            Some(_) if !partial => (0, None),
            Some(sm) => {
                while sm.marks.get(1).is_some_and(|(_, p)| p.rpos <= durable) {
                    sm.marks.pop_front();
                }
                match sm.marks.front() {
                    Some(&(w, p)) if p.rpos <= durable => (w, Some(p)),
                    _ => (0, None),
                }
            }
        };
        let bytes = upto.saturating_sub(st.ckpt.0) * window * u64::from(seg);
        let due = bytes >= checkpoint_bytes() || st.ckpt.1.elapsed() >= CHECKPOINT_EVERY;
        let ckpt = (st.failed.is_none()
            && !st.start.device
            && upto > st.ckpt.0
            && upto < st.windows
            && due)
            .then(|| {
                st.ckpt = (upto, Instant::now());
                let lens = match (&mut st.stream, prefix) {
                    (Some(sm), Some(p)) => {
                        let from = sm.ckpt_segs;
                        sm.ckpt_segs = p.segs;
                        Some(Lens {
                            from,
                            lens: sm.stored[from as usize..p.segs as usize].to_vec(),
                        })
                    }
                    _ => None,
                };
                let (mtime, mtime_nsec) = st.start.file.src.mtime();
                Ckpt {
                    src: crate::pipeline::seal::source_id(&st.start.entry, &st.start.file.src),
                    size: st.start.file.size,
                    mtime,
                    mtime_nsec,
                    batch: st.start.batch,
                    obj: st.obj,
                    segs: upto * window,
                    head: Some(st.start.file.header),
                    prefix,
                    lens,
                }
            });
        if let Some(c) = ckpt {
            let line = self.journal.ckpt_line(&c)?;
            self.ckpt_queued += bytes;
            self.queue.extend(line);
            self.oldest.get_or_insert_with(Instant::now);
        }
        Ok(())
    }

    /// Emits, in unit order, every unit that is complete.
    fn emit_ready(&mut self) -> Result<()> {
        loop {
            let ready = match self.units.get(&self.next_unit) {
                Some(Unit::Large(st)) => st.next == st.windows,
                Some(_) => true,
                None => false,
            };
            if !ready {
                return Ok(());
            }
            let Some(u) = self.units.remove(&self.next_unit) else {
                return Ok(());
            };
            self.next_unit += 1;
            match u {
                Unit::Chunk { buf, used, items } => {
                    let r = self.emit_chunk(&buf[..used], items);
                    self.pool.give(buf);
                    r?;
                }
                Unit::Large(st) => self.emit_large(*st)?,
                Unit::Failed(f) => self.fail(f),
            }
        }
    }

    fn fail(&mut self, f: Failure) {
        self.progress
            .notice(&format!("failed {}: {}", f.path, f.why));
        self.progress.file_done();
        self.written.failed.push(f);
    }

    /// Queues the line of an entry this run built; `false` when the reader would refuse it
    /// (then reported, not stored).
    fn queue_entry(&mut self, e: &Entry, src: Option<&SourceId>) -> Result<bool> {
        let xattr_key = match (&e.xattrs, self.keys.first()) {
            (crate::format::manifest::Xattrs::Clear(l), Some(k)) if !l.is_empty() => {
                Some(&*self.xattr_key.get_or_insert_with(|| k.name_key()))
            }
            _ => None,
        };
        let known = (self.batches.len(), self.objects.len());
        let journal = &self.journal;
        let keys = (self.name_key.as_ref(), xattr_key);
        match built_line(e, src, &self.header, known, keys, |l| {
            journal.done_line(src, l)
        })? {
            Ok(l) => self.queue_journaled(l),
            Err(why) => self.refuse(e.path.display(), &why),
        }
    }

    /// Queues a line taken over from an interrupted run, once the reader's own checks pass on
    /// it (it is parsed: it was not built here); `false` when they do not.
    fn queue_taken_over(&mut self, src: &SourceId, line: &[u8]) -> Result<bool> {
        let l = self.journal.done_line(Some(src), line)?;
        let nk = match self.keys.first() {
            Some(k) => Some(&*self.xattr_key.get_or_insert_with(|| k.name_key())),
            None => None,
        };
        let known = (self.batches.len(), self.objects.len());
        match readable_line(line, &self.header, known, nk).and_then(|()| fits(&l)) {
            Ok(()) => self.queue_journaled(l),
            Err(why) => self.refuse("an entry of the interrupted run".into(), &why),
        }
    }

    fn queue_journaled(&mut self, l: Vec<u8>) -> Result<bool> {
        self.queue.extend(l);
        self.queued += 1;
        self.oldest.get_or_insert_with(Instant::now);
        Ok(true)
    }

    /// Reports an entry not stored because the vault's reader would refuse it.
    fn refuse(&mut self, path: String, why: &str) -> Result<bool> {
        self.fail(Failure {
            path,
            why: format!("not stored, the vault's reader would refuse it: {why}"),
        });
        Ok(false)
    }

    fn emit_chunk(&mut self, records: &[u8], items: Vec<ChunkOut>) -> Result<()> {
        // The chunk's records go into the current pack in one write, at its end.
        let mut base = (0u64, 0u64);
        if !records.is_empty() {
            let full = self
                .pack
                .as_ref()
                .is_none_or(|p| p.len > 0 && p.len + records.len() as u64 > format::PACK_TARGET);
            if full {
                self.close_pack()?;
                let shape = Shape {
                    len: None,
                    head: 0,
                    piece: format::PACK_TARGET,
                    bound: None,
                };
                let (obj, out) = self.new_object(shape)?;
                self.pack = Some(Pack { out, obj, len: 0 });
            }
            let p = self
                .pack
                .as_mut()
                .ok_or_else(|| Error::Runtime("no pack".into()))?;
            p.out.write_at(p.len, records)?;
            base = (p.obj, p.len);
            p.len += records.len() as u64;
        }
        for it in items {
            match it {
                ChunkOut::Entry(e) => {
                    if let EntryKind::HardLink(t) = &e.kind {
                        if !t.clear().is_some_and(|t| self.linkable.contains(t)) {
                            self.fail(Failure {
                                path: e.path.display(),
                                why: format!(
                                    "a hard link of {}, which could not be stored",
                                    t.display()
                                ),
                            });
                            continue;
                        }
                    }
                    if !self.queue_entry(&e, None)? {
                        continue;
                    }
                    match &e.kind {
                        EntryKind::Dir => self.written.dirs += 1,
                        EntryKind::Symlink(_) => self.written.symlinks += 1,
                        EntryKind::HardLink(_) => self.written.hardlinks += 1,
                        _ => self.written.specials += 1,
                    }
                }
                ChunkOut::Reused(crate::pipeline::seal::Reused {
                    line,
                    src,
                    size,
                    obj,
                    linkable,
                }) => {
                    if !self.queue_taken_over(&src, &line)? {
                        continue;
                    }
                    if let Some(p) = linkable {
                        self.linkable.insert(p);
                    }
                    if let Some(r) = self.referenced.get_mut(obj as usize) {
                        *r = true;
                    }
                    self.written.files += 1;
                    self.written.bytes += size;
                    self.written.resumed_files += 1;
                    self.progress.file_done();
                }
                ChunkOut::Sealed(s) => {
                    let f = FileEntry {
                        size: s.size,
                        batch: s.batch,
                        obj: base.0,
                        off: base.1 + s.rec_off as u64,
                        salt: s.salt,
                        ct: s.ct,
                        pt: s.pt,
                        sparse: s.sparse,
                        rlen: s.rlen,
                    };
                    let gaps = f.file_len() - f.size;
                    let e = entry_of(&s.entry, EntryKind::File(f));
                    if !self.queue_entry(&e, Some(&s.src))? {
                        continue;
                    }
                    self.referenced[base.0 as usize] = true;
                    self.written.files += 1;
                    self.written.bytes += s.size;
                    self.written.read_bytes += s.size;
                    self.written.gap_bytes += gaps;
                    if e.linked {
                        self.linkable.insert(s.entry.path.clone());
                    }
                    self.progress.file_done();
                }
                ChunkOut::Failed { path, why } => self.fail(Failure { path, why }),
            }
        }
        Ok(())
    }

    fn emit_large(&mut self, st: LargeState) -> Result<()> {
        let LargeState {
            start,
            obj,
            mut out,
            ct,
            stream,
            failed,
            interrupted,
            changed,
            ..
        } = st;
        let LargeStart {
            mut entry,
            file,
            batch,
            salt,
            mac,
            device,
            ..
        } = *start;
        let failed = match failed {
            Some(why) => Some(why),
            None => match file.src.unchanged(device) {
                Ok(true) => None,
                Ok(false) => Some(CHANGED.into()),
                Err(e) => Some(e.to_string()),
            },
        };
        let sealed = match failed {
            None => {
                let pt = mac
                    .finalize()
                    .ok_or_else(|| Error::Runtime("empty MAC tree".into()))?;
                let (ct, rlen) = match stream {
                    Some(sm) => {
                        let (rlen, ct) = sm.finish(&mut *out, &file.keys)?;
                        (ct, Some(rlen))
                    }
                    None => (ct.finalize(), None),
                };
                let f = FileEntry {
                    size: file.size,
                    batch,
                    obj,
                    off: 0,
                    salt,
                    ct,
                    pt: *pt.as_bytes(),
                    sparse: file.src.sparse().map(|s| Box::new(s.clone())),
                    rlen,
                };
                out.finish()?;
                // Gaps count as done: they are the file's bytes too.
                self.progress.bytes(f.file_len() - f.size);
                let src = crate::pipeline::seal::source_id(&entry, &file.src);
                Ok((f, src, file.src.mtime()))
            }
            Some(why) => {
                // An interrupted file keeps its object: its checkpoint may take it up on
                // resume (the resume sweeps it otherwise). Best effort: an object no entry
                // names is removed when the run finishes anyway.
                if interrupted {
                    drop(out);
                } else {
                    let _ = out.abort();
                }
                if (why == CHANGED || changed) && !interrupted {
                    // Read again from the start, here, keeping the entries' order.
                    self.reseal_large(&entry, batch, device, file.compress)?
                } else {
                    Err(why)
                }
            }
        };
        let (f, src, mtime) = match sealed {
            Ok(s) => s,
            Err(why) => {
                self.fail(Failure {
                    path: entry.source.display(),
                    why,
                });
                return Ok(());
            }
        };
        let (obj, size, gaps) = (f.obj, f.size, f.file_len() - f.size);
        if !device {
            (entry.mtime, entry.mtime_nsec) = mtime;
        }
        let e = entry_of(&entry, EntryKind::File(f));
        if !self.queue_entry(&e, Some(&src))? {
            return Ok(());
        }
        self.referenced[obj as usize] = true;
        self.written.files += 1;
        self.written.bytes += size;
        self.written.gap_bytes += gaps;
        if e.linked {
            self.linkable.insert(entry.path.clone());
        }
        self.progress.file_done();
        Ok(())
    }

    /// Seals a large file that changed while it was read again, from the start, with a fresh
    /// file id and salt, window by window on this thread (rare: the pipeline waits, and the
    /// entries keep their order). Gives up after [`RESEAL_ATTEMPTS`]; the file is then
    /// reported.
    #[allow(clippy::type_complexity)]
    fn reseal_large(
        &mut self,
        entry: &SourceEntry,
        batch: u32,
        device: bool,
        compress: Option<i32>,
    ) -> Result<std::result::Result<(FileEntry, SourceId, (i64, u32)), String>> {
        let seg = self.header.segment_size;
        let key = Arc::clone(
            self.keys
                .get(batch as usize)
                .ok_or_else(|| Error::Runtime("a file of an unknown batch".into()))?,
        );
        let ctx = crate::pipeline::seal::SealCtx {
            vault_id: self.header.vault_id,
            segment_size: seg,
            compress,
        };
        let (window, _) = crate::pipeline::seal::window_geometry(seg, 0);
        for _ in 0..RESEAL_ATTEMPTS {
            if self.stop.load(Ordering::Relaxed) {
                return Ok(Err("interrupted".into()));
            }
            let src = match crate::fs::source::Source::open(entry, device) {
                Ok(s) => s,
                Err(e) => return Ok(Err(e.to_string())),
            };
            let size = src.size();
            let (h, keys) =
                crate::pipeline::seal::new_file(&ctx, &key, size).at(self.store.url())?;
            let file = LargeFile {
                src,
                header: h.encode(),
                keys,
                size,
                window,
                compress,
            };
            let (obj, mut out) = self.new_object(self.large_shape(&file))?;
            out.write_at(0, &file.header)?;
            let mut stream = compress.map(|_| Stream::new(&file.header));
            let mut ct = CtDigest::new();
            let mut mac = TreeMac::new(file.keys.mac_key());
            let slot = u64::from(seg) + format::TAG_LEN as u64;
            let mut buf = vec![0u8; (window * slot) as usize];
            let mut outcome = Ok(());
            for w in 0..file.windows(seg) {
                match file.seal_window(seg, w, &mut buf) {
                    Ok(sw) => {
                        match &mut stream {
                            Some(sm) => {
                                sm.put(&mut *out, &buf[..sw.used])?;
                                sm.stored.extend(sw.stored);
                            }
                            None => {
                                let at = format::segment_offset(seg, w * window);
                                out.write_at(at, &buf[..sw.used])?;
                            }
                        }
                        let first = w * window;
                        self.written.read_bytes += (first..first + sw.macs.len() as u64)
                            .map(|i| format::segment_plain_len(size, seg, i) as u64)
                            .sum::<u64>();
                        sw.leaves.iter().for_each(|l| ct.push(l));
                        sw.macs.into_iter().for_each(|m| mac.add(m));
                    }
                    Err(FileError::Changed(_)) => {
                        outcome = Err(CHANGED.to_string());
                        break;
                    }
                    Err(FileError::Source(why)) => {
                        outcome = Err(why);
                        break;
                    }
                    Err(FileError::Cancelled) => {
                        outcome = Err("interrupted".into());
                        break;
                    }
                }
            }
            if outcome.is_ok() && !file.src.unchanged(device).unwrap_or(false) {
                outcome = Err(CHANGED.to_string());
            }
            match outcome {
                Ok(()) => {
                    let (ct, rlen) = match stream {
                        Some(sm) => {
                            let (rlen, ct) = sm.finish(&mut *out, &file.keys)?;
                            (ct, Some(rlen))
                        }
                        None => (ct.finalize(), None),
                    };
                    out.finish()?;
                    let pt = mac
                        .finalize()
                        .ok_or_else(|| Error::Runtime("empty MAC tree".into()))?;
                    let f = FileEntry {
                        size,
                        batch,
                        obj,
                        off: 0,
                        salt: h.salt,
                        ct,
                        pt: *pt.as_bytes(),
                        sparse: file.src.sparse().map(|s| Box::new(s.clone())),
                        rlen,
                    };
                    let src = crate::pipeline::seal::source_id(entry, &file.src);
                    return Ok(Ok((f, src, file.src.mtime())));
                }
                Err(why) => {
                    let _ = out.abort();
                    if why != CHANGED {
                        return Ok(Err(why));
                    }
                }
            }
        }
        Ok(Err(format!(
            "{CHANGED}; gave up after {} attempts",
            RESEAL_ATTEMPTS + 1
        )))
    }

    /// Starts a group commit: the queued lines wait for a `syncfs` begun now, after their
    /// data was written (one `syncfs` per group, not one fsync per file: a million small
    /// files must not mean a million fsyncs). Without syncs they are journaled at once.
    fn start_commit(&mut self) -> Result<()> {
        self.settle(true)?;
        if self.queue.is_empty() {
            return Ok(());
        }
        // A store that keeps no partial object (object storage) has the pack uploaded
        // before its lines may count on it; the next chunk starts a new pack.
        if !self.store.traits().durable_partial {
            self.close_pack()?;
        }
        let q = std::mem::take(&mut self.queue);
        self.queued = 0;
        self.oldest = None;
        let ckpt = std::mem::take(&mut self.ckpt_queued);
        if !self.sync {
            return self.journal.write_synced(&q);
        }
        self.ckpt_pending = ckpt;
        if self.syncer.is_none() {
            let s = Syncer::start(Arc::clone(&self.store)).at(self.store.url())?;
            self.syncer = Some(s);
        }
        self.pending = q;
        match &mut self.syncer {
            Some(s) => s.request(),
            None => Ok(()),
        }
    }

    /// Finishes the current pack, if any: its bytes become an object under its name.
    fn close_pack(&mut self) -> Result<()> {
        match self.pack.take() {
            Some(p) => p.out.finish(),
            None => Ok(()),
        }
    }

    /// Journals the pending lines once their sync has returned (with `wait`, waits for it).
    fn settle(&mut self, wait: bool) -> Result<()> {
        let Some(s) = &mut self.syncer else {
            return Ok(());
        };
        match s.result(wait) {
            None => Ok(()),
            Some(Err(e)) => Err(e),
            Some(Ok(())) => {
                let q = std::mem::take(&mut self.pending);
                self.ckpt_pending = 0;
                self.journal.write_synced(&q)
            }
        }
    }

    /// Makes everything written durable and journaled, before returning.
    fn commit(&mut self) -> Result<()> {
        self.start_commit()?;
        self.settle(true)
    }

    /// The manifest: header, batches, the objects some entry names (renumbered if others
    /// drop out: objects of files that failed, or that changed since an interrupted run),
    /// then this run's entries streamed from the journal; then the sweep of the rest.
    fn finish(mut self) -> Result<Written> {
        self.close_pack()?;
        self.commit()?;
        let store = Arc::clone(&self.store);
        let mut m = crate::pipeline::vault::manifest_writer(
            &*store,
            format::layout::MANIFEST,
            &self.header,
        )?;
        for b in &self.batches {
            m.batch(b)?;
        }
        let mut remap: Vec<u64> = Vec::with_capacity(self.objects.len());
        let mut kept: Vec<[u8; ID_LEN]> = Vec::new();
        for (i, id) in self.objects.iter().enumerate() {
            remap.push(kept.len() as u64);
            if self.referenced[i] {
                let name = manifest::object_name(id);
                let len = store.len(&name)?.ok_or_else(|| {
                    Error::Runtime(format!("{}: vanished while written", store.describe(&name)))
                })?;
                m.object(&ObjectRef { id: *id, len })?;
                kept.push(*id);
            }
        }
        let renumber = kept.len() != self.objects.len();
        let concealed = self.header.conceal_names;
        // Concealed entries are listed in the order of their sealed names, unrelated to the
        // tree's shape (§6.2): gathered and sorted here, the one place a run holds them all.
        let mut sealed: Vec<Vec<u8>> = Vec::new();
        self.journal.entries_from(self.gen_start, |rec| {
            let line = if !renumber || !rec.windows(6).any(|w| w == b"\"obj\":") {
                rec.to_vec()
            } else {
                let mut line: manifest::EntryLine = serde_json::from_slice(rec)
                    .map_err(|e| Error::integrity("journal", e.to_string()))?;
                if let Some(o) = line.obj.as_mut() {
                    *o = *remap.get(*o as usize).ok_or_else(|| {
                        Error::integrity("journal", "entry names an unknown object")
                    })?;
                }
                serde_json::to_vec(&line).map_err(|e| Error::Runtime(e.to_string()))?
            };
            if concealed {
                sealed.push(line);
                Ok(())
            } else {
                m.entry_line(&line)
            }
        })?;
        sealed.sort_unstable();
        for l in &sealed {
            m.entry_line(l)?;
        }
        let keys: Vec<&BatchKey> = self.keys.iter().map(|k| k.as_ref()).collect();
        crate::pipeline::vault::publish_manifest(m, &keys, false, &*store)?;
        sweep_objects(&*store, &kept)?;
        crate::pipeline::leftovers::sweep_root(&*store, &self.batches)?;
        self.journal.finish(&*store)?;
        Ok(self.written)
    }
}

/// The journal line of an entry this run built, or why a reader would refuse it (docs/FORMAT.md
/// §6, §8). The reader's rules are applied to the entry itself, by the reader's own code
/// ([`Entry::check`], its attributes still clear, before they are sealed), with the batch and
/// object it names (`known`: how many there are); the length to the line as `journal` makes it.
/// The line is not parsed again. `keys`: the name key that seals names (exactly in a vault that
/// conceals them) and batch 0's name key that seals attributes. A run never commits a line that
/// would make its vault unreadable (the tree rules are checked by the planner, in walk order).
fn built_line(
    e: &Entry,
    src: Option<&SourceId>,
    header: &Header,
    known: (usize, usize),
    keys: (Option<&NameKey>, Option<&NameKey>),
    journal: impl FnOnce(&[u8]) -> Result<Vec<u8>>,
) -> Result<std::result::Result<Vec<u8>, String>> {
    if let Err(why) = e.check(header, src).and_then(|()| names_known(e, known)) {
        return Ok(Err(why));
    }
    let (names, xattrs) = keys;
    if header.conceal_names != names.is_some() {
        return Ok(Err(
            "names sealed in a clear vault, or clear in a concealed one".into(),
        ));
    }
    let sealed;
    let e = match (&e.xattrs, xattrs) {
        (crate::format::manifest::Xattrs::Clear(l), Some(k)) if !l.is_empty() => {
            sealed = Entry {
                xattrs: e.xattrs.sealed(k)?,
                ..e.clone()
            };
            &sealed
        }
        _ => e,
    };
    let line = e.to_line_src(names, src)?;
    let journaled = journal(&line)?;
    Ok(fits(&journaled).map(|()| journaled))
}

/// The checks a reader makes on an entry line this run did not build (one taken over from an
/// interrupted run): its fields and values ([`Entry::from_line`]), its sealed extended
/// attributes (opened with `nk`, batch 0's name key, when given) and the batch and object it
/// names.
fn readable_line(
    line: &[u8],
    header: &Header,
    known: (usize, usize),
    nk: Option<&NameKey>,
) -> std::result::Result<(), String> {
    let e = Entry::from_line(line, header)?;
    if let (crate::format::manifest::Xattrs::Sealed(_), Some(nk)) = (&e.xattrs, nk) {
        e.xattrs.open(nk).map_err(|e| e.to_string())?;
    }
    names_known(&e, known)
}

/// A file's batch and object are among the `known` (batches, objects).
fn names_known(e: &Entry, known: (usize, usize)) -> std::result::Result<(), String> {
    match e.file() {
        Some(f) if f.batch as usize >= known.0 || f.obj as usize >= known.1 => {
            Err("it names an unknown batch or object".into())
        }
        _ => Ok(()),
    }
}

/// The 1 MiB line limit (docs/FORMAT.md §6.1), on the line as journaled: longer than the
/// manifest's, so a line that fits here fits there.
fn fits(journaled: &[u8]) -> std::result::Result<(), String> {
    let body = journaled.strip_suffix(b"\n").unwrap_or(journaled);
    if body.len() > format::MAX_MANIFEST_LINE {
        return Err(format!(
            "its record is longer than {} bytes (extended attributes too large?)",
            format::MAX_MANIFEST_LINE
        ));
    }
    Ok(())
}

/// The vault entry of a walked source entry.
pub fn entry_of(e: &SourceEntry, kind: EntryKind) -> Entry {
    // A file is `linked` when other names of its inode may follow (a block device read as an
    // image is never one).
    let linked = e.nlink > 1 && matches!(e.kind, SourceKind::File { device: false, .. });
    Entry {
        path: Name::Clear(e.path.clone()),
        mode: e.mode,
        mtime: e.mtime,
        mtime_nsec: e.mtime_nsec,
        linked: linked && matches!(kind, EntryKind::File(_)),
        owner: Some(crate::fs::owner::owner_of(e.uid, e.gid)),
        xattrs: crate::format::manifest::Xattrs::Clear(e.xattrs.clone()),
        kind,
    }
}

/// Removes whatever `objects/` holds that the manifest does not list (objects of files an
/// interrupted run never committed; a planted link is removed, never followed).
pub(crate) fn sweep_objects(store: &dyn Store, listed: &[[u8; ID_LEN]]) -> Result<()> {
    let keep: HashSet<String> = listed.iter().map(manifest::object_name).collect();
    for l in store.list(format::layout::OBJECTS_PREFIX)? {
        if !keep.contains(&l.name) {
            store.remove(&l.name)?;
        }
    }
    store.sweep_uploads(format::layout::OBJECTS_PREFIX, &keep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::manifest::{Name, Xattrs};
    use crate::kms::DataKey;

    /// Lines the reader would refuse are caught before they are committed, both for an entry
    /// this run built (checked as a value, never parsed) and for a line taken over from an
    /// interrupted run (parsed): over-long ones (too many extended attributes), ones naming an
    /// unknown object, bad attribute lists, and bad fields.
    #[test]
    fn lines_a_reader_refuses_are_caught() {
        let header = Header {
            vault_id: [1; 16],
            created: String::new(),
            generator: String::new(),
            segment_size: 4096,
            conceal_names: false,
            shard: None,
        };
        let key = BatchKey::new(DataKey::from_bytes(&[7u8; 32]).unwrap(), [1; 16], [2; 16]);
        let nk = key.name_key();
        let entry = |xattrs: Vec<(Vec<u8>, Vec<u8>)>, kind: EntryKind| Entry {
            path: Name::Clear(b"top/d".to_vec()),
            mode: 0o755,
            mtime: 1,
            mtime_nsec: 2,
            kind,
            owner: None,
            linked: false,
            xattrs: Xattrs::Clear(xattrs),
        };
        // The journal line: longer than the entry's line, as the journal's is.
        let journal = |line: &[u8]| {
            let mut journaled = line.to_vec();
            journaled.extend_from_slice(&[b' '; 200]);
            Ok(journaled)
        };
        let check = |e: &Entry| {
            let built = built_line(e, None, &header, (1, 1), (None, Some(&nk)), journal)
                .unwrap()
                .map(|_| ());
            // The same entry as a line an interrupted run left: its attributes sealed.
            let sealed = Entry {
                xattrs: e.xattrs.sealed(&nk).unwrap(),
                ..e.clone()
            };
            let line = sealed.to_line(None).unwrap();
            let taken = readable_line(&line, &header, (1, 1), Some(&nk))
                .and_then(|()| fits(&journal(&line).unwrap()));
            assert_eq!(built.is_ok(), taken.is_ok(), "{built:?} / {taken:?}");
            built
        };
        let small = vec![(b"user.a".to_vec(), vec![1u8; 100])];
        assert_eq!(check(&entry(small, EntryKind::Dir)), Ok(()));
        let big: Vec<(Vec<u8>, Vec<u8>)> = (0..20u8)
            .map(|i| (format!("user.{i:02}").into_bytes(), vec![i; 60_000]))
            .collect();
        let e = check(&entry(big, EntryKind::Dir)).unwrap_err();
        assert!(e.contains("longer than"), "{e}");
        let unsorted = vec![(b"user.b".to_vec(), vec![]), (b"user.a".to_vec(), vec![])];
        let e = check(&entry(unsorted, EntryKind::Dir)).unwrap_err();
        assert!(e.contains("extended attributes"), "{e}");
        let file = |obj| {
            EntryKind::File(crate::format::manifest::FileEntry {
                size: 5,
                batch: 0,
                obj,
                off: 0,
                salt: [0; 32],
                ct: [0; 32],
                pt: [0; 32],
                sparse: None,
                rlen: None,
            })
        };
        assert_eq!(check(&entry(Vec::new(), file(0))), Ok(()));
        let e = check(&entry(Vec::new(), file(1))).unwrap_err();
        assert!(e.contains("unknown batch or object"), "{e}");
        let mut bad = entry(Vec::new(), EntryKind::Dir);
        bad.path = Name::Clear(b"top/../etc".to_vec());
        assert!(check(&bad).is_err());
        bad.path = Name::Clear(b"top/d".to_vec());
        bad.mode = 0o40755;
        assert!(check(&bad).is_err());
        // Names must be sealed exactly in a vault that conceals them.
        let concealed = Header {
            conceal_names: true,
            ..header.clone()
        };
        let dir = entry(Vec::new(), EntryKind::Dir);
        let r = built_line(&dir, None, &concealed, (1, 1), (None, None), journal).unwrap();
        assert!(r.is_err(), "{r:?}");
        let r = built_line(&dir, None, &concealed, (1, 1), (Some(&nk), None), journal).unwrap();
        assert!(r.is_ok(), "{r:?}");
    }
}
