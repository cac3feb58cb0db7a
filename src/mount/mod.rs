//! `envseal mount`: a read-only FUSE view of a vault (docs/MOUNT.md).
//!
//! The manifest is read, its names revealed and the whole of it authenticated before the
//! mount appears; the tree (names, modes, owners, times, links, attributes) is then served
//! from memory. A read opens only the segments it touches, each authenticated by its tag
//! before a byte is returned (docs/FORMAT.md §4); holes and zero extents read as zeros
//! without a fetch (§6.4). Opened segments are kept in a small LRU cache, so memory does not
//! grow with the files read. A record that fails authentication is `EIO` for that read and
//! a notice; every other file stays readable.
//!
//! FUSE through `fuser` without libfuse: it mounts with the `fusermount3` helper (package
//! `fuse3`) and speaks the kernel protocol itself, so no C headers or library are needed
//! to build envseal.

mod cache;
mod tree;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fuser::{
    Errno, FileHandle, Filesystem, FopenFlags, INodeNo, LockOwner, MountOption, OpenFlags,
    ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyXattr, Request,
};

use crate::crypto::{BatchKey, FileKeys};
use crate::error::{Error, Result};
use crate::format::manifest::FileEntry;
use crate::format::TAG_LEN;
use crate::kms::keys::Kms;
use crate::pipeline::object::{open_segments, record_keys, record_table, ObjectError, RecordCtx};
use crate::pipeline::vault::unlock_whole;
use crate::progress::Progress;
use crate::store::{Location, Store};

use cache::{Block, BufPool, SegmentCache};
use tree::{Content, Tree};

/// What to mount where.
#[derive(Clone, Debug)]
pub struct MountOptions {
    pub vault: Location,
    pub dir: PathBuf,
    /// Threads serving requests (and opening the segments of one read in parallel).
    pub jobs: usize,
    /// Bytes of opened segments kept (at least one segment is always kept).
    pub cache_bytes: usize,
}

/// Default size of the cache of opened segments.
pub const DEFAULT_CACHE_BYTES: usize = 64 << 20;

/// Segments opened together after a sequential read: one range request (an S3 round trip)
/// brings this much, opened on several cores.
const READ_AHEAD_BYTES: u64 = 8 << 20;

/// Threads serving requests at most (`-j` above it only widens the segment opening).
const MAX_SERVING_THREADS: usize = 8;

/// Files from this size on are read with direct I/O (when the kernel keeps mmap working on
/// them): the kernel copies each reply straight into the reader's buffer instead of filling
/// its page cache first, which took a `cat` of a large file about a fifth of its time
/// (docs/PERFORMANCE.md "Mount"). Smaller files, read again and again while a tree is
/// browsed, stay in the page cache.
const DIRECT_IO_MIN_BYTES: u64 = 8 << 20;

/// Read-ahead fetches running in the background at most (each holds a window).
const MAX_AHEAD: usize = 2;

/// Fetch buffers kept for reuse besides those in the cache (each up to a read-ahead window):
/// a sequential reader needs one as the cache drops its oldest block; a few more serve
/// files read side by side.
const POOL_BUFFERS: usize = 4;

/// The tree never changes while mounted: the kernel may keep names and attributes.
const TTL: Duration = Duration::from_secs(3600);

/// Mounts the vault at `opts.dir` and serves it until it is unmounted (`fusermount3 -u`,
/// `umount`) or `cancel` is set (then it unmounts itself). `ready` is called once the mount
/// is in place. Notices (a record failing authentication) go to `progress`.
pub fn mount(
    opts: &MountOptions,
    kms: &Kms,
    progress: Arc<dyn Progress + Send>,
    cancel: &AtomicBool,
    ready: impl FnOnce(),
) -> Result<()> {
    let store = crate::store::open(&opts.vault)?;
    // Nothing is shown before the whole manifest is authenticated.
    let (mut unlocked, entries) = unlock_whole(&*store, kms)?;
    let keys = std::mem::take(&mut unlocked.keys);
    let nk = keys.first().map(BatchKey::name_key);
    let tree = Tree::build(entries, nk.as_ref())?;
    let r = unlocked.reader;
    // The file system outlives this frame (`fuser` wants it 'static): the manifest's header,
    // batches and object list are left allocated for the rest of the process, once per
    // mount; they hold no secret (the keys are owned by the file system and dropped).
    let store: &'static Arc<dyn Store> = Box::leak(Box::new(store));
    let store: &'static dyn Store = store.as_ref();
    let header = Box::leak(Box::new(r.header.clone()));
    let batches = Box::leak(r.batches.clone().into_boxed_slice());
    let objects = Box::leak(r.objects.clone().into_boxed_slice());
    let jobs = opts.jobs.max(1);
    let ctx = RecordCtx::new(store, header, batches, objects, jobs);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(jobs)
        .thread_name(|i| format!("envseal-mount-{i}"))
        .build()
        .map_err(|e| Error::Runtime(format!("cannot start {jobs} threads: {e}")))?;
    let fs = VaultFs {
        fetcher: Arc::new(Fetcher {
            pool,
            ctx,
            cache: SegmentCache::new(opts.cache_bytes),
            bufs: BufPool::new(POOL_BUFFERS),
            ahead: AtomicUsize::new(0),
        }),
        keys,
        tree: Arc::new(tree),
        handles: Mutex::new(HashMap::new()),
        next_fh: AtomicU64::new(1),
        progress,
        url: store.url(),
        direct_io: false,
    };
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::NoSuid,
        MountOption::NoDev,
        MountOption::NoAtime,
        // The kernel checks modes and owners as recorded (the vault's owners, not ours).
        MountOption::DefaultPermissions,
        MountOption::FSName(format!("envseal:{}", opts.vault)),
        MountOption::Subtype("envseal".into()),
    ];
    // Each serving thread may hold a read-ahead window in flight (READ_AHEAD_BYTES, opened
    // on the rayon pool): a few threads bound that memory, and the kernel's requests are
    // small enough that more would only wait for the same cores.
    config.n_threads = Some(jobs.min(MAX_SERVING_THREADS));
    let session =
        fuser::spawn_mount(fs, &opts.dir, &config).map_err(|e| Error::io(&opts.dir, e))?;
    ready();
    loop {
        if session.guard.is_finished() {
            // Unmounted from outside: the session ended by itself.
            return session.join().map_err(|e| Error::io(&opts.dir, e));
        }
        if cancel.load(Ordering::Relaxed) {
            return session
                .umount_and_join()
                .map_err(|e| Error::io(&opts.dir, e));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An open file: its record's keys (the header read and checked once) and where the last
/// read ended (a sequential reader gets read-ahead).
struct Handle {
    ino: u64,
    keys: FileKeys,
    /// A compressed record's segment table (docs/FORMAT.md §4.5), read once at open.
    table: Option<crate::format::compress::Table>,
    next: AtomicU64,
    /// The segment from which a background read-ahead last started (`u64::MAX`: none).
    ahead: AtomicU64,
    /// Held while segments of this file are fetched.
    fetching: Mutex<()>,
}

/// What fetching segments needs, shared with the background read-ahead.
struct Fetcher {
    /// Opens the segments of one fetch in parallel (`-j` threads); runs read-ahead.
    pool: rayon::ThreadPool,
    ctx: RecordCtx<'static>,
    cache: SegmentCache,
    /// Buffers of blocks the cache dropped, for the next fetches.
    bufs: Arc<BufPool>,
    /// Read-ahead fetches in flight in the background (at most [`MAX_AHEAD`]).
    ahead: AtomicUsize,
}

struct VaultFs {
    fetcher: Arc<Fetcher>,
    keys: Vec<BatchKey>,
    tree: Arc<Tree>,
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    next_fh: AtomicU64,
    progress: Arc<dyn Progress + Send>,
    url: String,
    /// Whether large files are opened with direct I/O (set at `init`).
    direct_io: bool,
}

/// The file entry of inode `ino`, if it is a regular file.
fn file_of(tree: &Tree, ino: u64) -> Option<&FileEntry> {
    match &tree.node(ino)?.content {
        Content::File(f) => Some(f),
        _ => None,
    }
}

impl VaultFs {
    fn file(&self, ino: u64) -> Option<&FileEntry> {
        file_of(&self.tree, ino)
    }

    /// A failed read or open: one line naming the file and why; the errno for the caller.
    fn failed(&self, ino: u64, e: ObjectError) -> Errno {
        let path = self.tree.path(ino);
        let why = match e {
            ObjectError::Integrity(w) => format!("{w} (tampered or damaged)"),
            ObjectError::Missing(w) => w,
            ObjectError::Io(e) => e.to_string(),
            ObjectError::Cancelled => "cancelled".into(),
        };
        self.progress
            .notice(&format!("{}: {path}: {why}; read refused (EIO)", self.url));
        Errno::EIO
    }

    /// Adds stored bytes `at..at + len` of the record to `out`; `ahead` is the stored offset
    /// up to which segments may be fetched with the first one missing. Returns the segment
    /// after the last block used.
    fn read_stored(
        &self,
        h: &Handle,
        f: &FileEntry,
        at: u64,
        len: usize,
        ahead: u64,
        out: &mut Gather,
    ) -> Result<u64, ObjectError> {
        let seg = u64::from(self.fetcher.ctx.header.segment_size);
        let n = crate::format::segment_count(f.size, self.fetcher.ctx.header.segment_size);
        let mut done = 0usize;
        let mut fetched = 0;
        while done < len {
            let pos = at + done as u64;
            let i = pos / seg;
            let last = (ahead.max(pos + (len - done) as u64).saturating_sub(1) / seg)
                .min(n - 1)
                .max(i);
            let b = self.fetcher.block(h, f, i, last)?;
            let skip = (pos - i * seg) as usize;
            let take = b
                .segment(i)
                .map_or(0, |s| s.len().saturating_sub(skip).min(len - done));
            if take == 0 {
                // The layout gives every stored byte a segment: never a short answer.
                return Err(ObjectError::Io(Error::Runtime(format!(
                    "segment {i} ends before stored byte {pos}"
                ))));
            }
            fetched = b.end();
            out.segment(b, i, skip..skip + take);
            done += take;
        }
        Ok(fetched)
    }

    fn read_file(&self, h: &Arc<Handle>, offset: u64, size: u32) -> Result<Gather, ObjectError> {
        let Some(f) = self.file(h.ino) else {
            return Ok(Gather::new(0));
        };
        let len = f.file_len();
        let end = offset.saturating_add(u64::from(size)).min(len);
        if offset >= end {
            return Ok(Gather::new(0));
        }
        let mut out = Gather::new((end - offset) as usize);
        // A reader going on where it stopped gets the next segments in the same fetch.
        let sequential = h.next.swap(end, Ordering::Relaxed) == offset;
        let ahead = |stored_end: u64| match sequential {
            true => stored_end + READ_AHEAD_BYTES,
            false => stored_end,
        };
        let next = match &f.sparse {
            None => {
                let n = (end - offset) as usize;
                self.read_stored(h, f, offset, n, ahead(end), &mut out)?
            }
            Some(sp) => {
                // Only the stored runs are fetched; the gaps read as zeros.
                let (mut at, mut next) = (offset, 0);
                for run in sp.runs() {
                    let (a, b) = (run.file.max(offset), (run.file + run.len).min(end));
                    if a >= b {
                        continue;
                    }
                    out.zeros((a - at) as usize);
                    let stored = run.stored + (a - run.file);
                    let stop = ahead(stored + (b - a));
                    next = self.read_stored(h, f, stored, (b - a) as usize, stop, &mut out)?;
                    at = b;
                }
                out.zeros((end - at) as usize);
                next
            }
        };
        if sequential {
            self.read_ahead(h, f, next);
        }
        Ok(out)
    }

    /// Starts fetching the window from segment `next` in the background, unless it is kept
    /// or on its way: a sequential reader then finds it opened when it gets there, the next
    /// window decrypted while the kernel copies this one out (decrypt overlaps its stages
    /// alike). A failure is left to the read that needs the segment (it fetches again and
    /// reports it).
    fn read_ahead(&self, h: &Arc<Handle>, f: &FileEntry, next: u64) {
        let fx = &self.fetcher;
        let seg = fx.ctx.header.segment_size;
        let n = crate::format::segment_count(f.size, seg);
        if next == 0 || next >= n || fx.cache.contains(h.ino, next) {
            return;
        }
        if h.ahead.swap(next, Ordering::Relaxed) == next {
            return;
        }
        if fx.ahead.fetch_add(1, Ordering::AcqRel) >= MAX_AHEAD {
            fx.ahead.fetch_sub(1, Ordering::AcqRel);
            h.ahead.store(u64::MAX, Ordering::Relaxed);
            return;
        }
        let count = (READ_AHEAD_BYTES / u64::from(seg)).clamp(1, n - next) as usize;
        let (fx, tree, h) = (fx.clone(), self.tree.clone(), h.clone());
        self.fetcher.pool.spawn(move || {
            // Never wait for the file's fetch lock on the pool (the fetch that holds it may
            // need this thread): whoever holds it fetches these segments or will ask again.
            if let (Some(f), Ok(_one)) = (file_of(&tree, h.ino), h.fetching.try_lock()) {
                if !fx.cache.contains(h.ino, next) {
                    let _ = fx.fetch(&h, f, next, count);
                }
            }
            fx.ahead.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

impl Fetcher {
    /// The block holding segment `i` of `h`'s record, from the cache or fetched with the
    /// segments after it up to `last` (one range read, opened on the pool).
    fn block(
        &self,
        h: &Handle,
        f: &FileEntry,
        i: u64,
        last: u64,
    ) -> Result<Arc<Block>, ObjectError> {
        if let Some(b) = self.cache.get(h.ino, i) {
            return Ok(b);
        }
        // The kernel's read-ahead sends a file's next reads on other threads at once: one of
        // them fetches, the others find its segments in the cache after it.
        let _one = h.fetching.lock();
        if let Some(b) = self.cache.get(h.ino, i) {
            return Ok(b);
        }
        let count = (last - i + 1) as usize;
        match self.fetch(h, f, i, count) {
            // A damaged segment read ahead fails the whole fetch: the segment asked for is
            // fetched alone, so that it reads if it is sound (docs/MOUNT.md).
            Err(ObjectError::Integrity(_)) if count > 1 => self.fetch(h, f, i, 1),
            r => r,
        }
    }

    /// Fetches segments `i..i + count` into a block, cached.
    fn fetch(
        &self,
        h: &Handle,
        f: &FileEntry,
        i: u64,
        count: usize,
    ) -> Result<Arc<Block>, ObjectError> {
        let seg = self.ctx.header.segment_size as usize;
        // Buffers large enough for the fetch: no slot is longer than a whole segment and its
        // tag (a compressed one is shorter), no plaintext longer than a segment.
        let mut raw = self.bufs.take(count * (seg + TAG_LEN));
        let mut decoded = match h.table {
            Some(_) => self.bufs.take(count * seg),
            None => Vec::new(),
        };
        let ranges = self.pool.install(|| {
            open_segments(
                &self.ctx,
                f,
                &h.keys,
                h.table.as_ref(),
                i,
                count,
                &mut raw,
                &mut decoded,
            )
        })?;
        // A compressed record's plaintext was decoded out of the slots: those go back.
        let buf = match h.table {
            Some(_) => {
                self.bufs.give(raw);
                decoded
            }
            None => raw,
        };
        Ok(self
            .cache
            .put(h.ino, Block::new(i, buf, ranges, self.bufs.clone())))
    }
}

/// A read's reply as it is put together. Most reads lie in one segment: they reply straight
/// from the cached block. Only a read across segments (or gaps) is copied, once, into a
/// buffer of its own.
struct Gather {
    want: usize,
    one: Option<(Arc<Block>, u64, std::ops::Range<usize>)>,
    many: Vec<u8>,
}

impl Gather {
    fn new(want: usize) -> Gather {
        Gather {
            want,
            one: None,
            many: Vec::new(),
        }
    }

    /// Bytes `r` of segment `i` of `b` come next.
    fn segment(&mut self, b: Arc<Block>, i: u64, r: std::ops::Range<usize>) {
        if self.one.is_none() && self.many.is_empty() {
            self.one = Some((b, i, r));
            return;
        }
        self.spill();
        if let Some(s) = b.segment(i) {
            self.many.extend_from_slice(&s[r]);
        }
    }

    /// `n` zeros come next (a gap).
    fn zeros(&mut self, n: usize) {
        if n > 0 {
            self.spill();
            self.many.resize(self.many.len() + n, 0);
        }
    }

    /// From here on the reply is copied into `many`.
    fn spill(&mut self) {
        if self.many.capacity() == 0 {
            self.many.reserve_exact(self.want);
        }
        if let Some((b, i, r)) = self.one.take() {
            if let Some(s) = b.segment(i) {
                self.many.extend_from_slice(&s[r]);
            }
        }
    }

    fn reply(self, reply: ReplyData) {
        match &self.one {
            Some((b, i, r)) => reply.data(b.segment(*i).map_or(&[], |s| &s[r.clone()])),
            None => reply.data(&self.many),
        }
    }
}

impl Filesystem for VaultFs {
    fn init(&mut self, _req: &Request, config: &mut fuser::KernelConfig) -> std::io::Result<()> {
        // Direct I/O only where mmap still works on such files (Linux 6.6 on).
        self.direct_io = config
            .add_capabilities(fuser::InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP)
            .is_ok();
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.tree.lookup(parent.0, name.as_bytes()) {
            Some(ino) => match self.tree.attr(ino) {
                Some(a) => reply.entry(&TTL, &a, fuser::Generation(0)),
                None => reply.error(Errno::ENOENT),
            },
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.tree.attr(ino.0) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.tree.node(ino.0).map(|n| &n.content) {
            Some(Content::Symlink(t)) => reply.data(t),
            Some(_) => reply.error(Errno::EINVAL),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        let Some(f) = self.file(ino.0) else {
            return reply.error(Errno::EINVAL);
        };
        let Some(key) = self.keys.get(f.batch as usize) else {
            return reply.error(Errno::EIO);
        };
        let opened = record_keys(&self.fetcher.ctx, f, key).and_then(|(_, keys)| {
            let table = record_table(&self.fetcher.ctx, f, &keys, None)?;
            Ok((keys, table))
        });
        match opened {
            Ok((keys, table)) => {
                let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
                let h = Handle {
                    ino: ino.0,
                    keys,
                    table,
                    next: AtomicU64::new(0),
                    ahead: AtomicU64::new(u64::MAX),
                    fetching: Mutex::new(()),
                };
                if let Ok(mut map) = self.handles.lock() {
                    map.insert(fh, Arc::new(h));
                }
                // The contents never change while mounted: the page cache may keep them,
                // but a large file is streamed past it (DIRECT_IO_MIN_BYTES).
                let flags = match self.direct_io && f.file_len() >= DIRECT_IO_MIN_BYTES {
                    true => FopenFlags::FOPEN_DIRECT_IO,
                    false => FopenFlags::FOPEN_KEEP_CACHE,
                };
                reply.opened(FileHandle(fh), flags);
            }
            Err(e) => reply.error(self.failed(ino.0, e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let h = self.handles.lock().ok().and_then(|m| m.get(&fh.0).cloned());
        let Some(h) = h.filter(|h| h.ino == ino.0) else {
            return reply.error(Errno::EBADF);
        };
        match self.read_file(&h, offset, size) {
            Ok(data) => data.reply(reply),
            Err(e) => reply.error(self.failed(ino.0, e)),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if let Ok(mut map) = self.handles.lock() {
            map.remove(&fh.0);
        }
        reply.ok();
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some(node) = self.tree.node(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let Content::Dir(children) = &node.content else {
            return reply.error(Errno::ENOTDIR);
        };
        let dots = [(ino.0, b".".as_slice()), (node.parent, b"..".as_slice())];
        let all = dots
            .into_iter()
            .chain(children.iter().map(|(n, i)| (*i, n.as_slice())));
        for (k, (child, name)) in all.enumerate().skip(offset as usize) {
            let kind = self.tree.kind(child);
            if reply.add(
                INodeNo(child),
                (k + 1) as u64,
                kind,
                OsStr::from_bytes(name),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let blocks = self.tree.bytes.div_ceil(4096);
        reply.statfs(blocks, 0, 0, self.tree.len() as u64, 0, 4096, 255, 4096);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let Some(node) = self.tree.node(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let Some((_, v)) = node.xattrs.iter().find(|(n, _)| n == name.as_bytes()) else {
            return reply.error(Errno::ENODATA);
        };
        xattr_reply(v, size, reply);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let Some(node) = self.tree.node(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let mut list = Vec::new();
        for (n, _) in &node.xattrs {
            list.extend_from_slice(n);
            list.push(0);
        }
        xattr_reply(&list, size, reply);
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // Permissions are the kernel's (`default_permissions`); only existence is ours.
        match self.tree.node(ino.0) {
            Some(_) => reply.ok(),
            None => reply.error(Errno::ENOENT),
        }
    }
}

/// getxattr/listxattr's protocol: size 0 asks for the length; a smaller buffer is `ERANGE`.
fn xattr_reply(v: &[u8], size: u32, reply: ReplyXattr) {
    if size == 0 {
        reply.size(v.len() as u32);
    } else if v.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(v);
    }
}
