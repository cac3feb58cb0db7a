//! Writing objects: part geometry, the upload pool, multipart writers, buffered single
//! PUTs, and the streamed manifest (docs/STORAGE.md, "Objects").

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};

use super::{clone_error, Inner};
use crate::error::{Error, Result};
use crate::store::{NewFile, ObjectWriter, Shape};

/// The part size aimed at: whole pieces, at least this much (S3's smallest part but the
/// last is 5 MiB).
pub const PART_TARGET: u64 = 8 << 20;
/// S3's largest part number.
pub const MAX_PARTS: u64 = 10_000;
/// Objects up to this length are one PUT at `finish` (a multipart upload costs three
/// requests more and cannot be smaller than a part).
pub const SINGLE_PUT_MAX: u64 = 8 << 20;
/// A writer's bytes handed to the pool and not yet acknowledged; with the part being filled
/// a writer holds at most about this plus one part.
pub const MAX_IN_FLIGHT: u64 = 48 << 20;
/// Upload threads per store.
pub const POOL_THREADS: usize = 4;

/// How an object of a [`Shape`] is cut into the parts of a multipart upload: runs of
/// whole pieces, the first with the head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub len: u64,
    pub head: u64,
    /// Bytes of pieces in every part but the last (and the first, which adds `head`).
    pub stride: u64,
    pub parts: u32,
}

impl Geometry {
    /// `None` for an object of open length and no bound (written in order, one PUT); an
    /// object of open length within a bound is cut as if it were that long.
    pub fn of(shape: Shape) -> Option<Geometry> {
        let len = shape.len.or(shape.bound)?;
        let head = shape.head.min(len);
        let piece = if shape.piece == 0 {
            len.max(1)
        } else {
            shape.piece
        };
        let pieces = (len - head).div_ceil(piece);
        let per_part = PART_TARGET
            .div_ceil(piece)
            .max(pieces.div_ceil(MAX_PARTS))
            .max(1);
        let stride = per_part.saturating_mul(piece);
        let parts = (len - head).div_ceil(stride).max(1);
        Some(Geometry {
            len,
            head,
            stride,
            parts: parts as u32,
        })
    }

    /// `[start, end)` of part `n` (1-based).
    pub fn range(&self, n: u32) -> (u64, u64) {
        let start = if n <= 1 {
            0
        } else {
            self.head + u64::from(n - 1) * self.stride
        };
        let end = (self.head + u64::from(n) * self.stride).min(self.len);
        (start, end)
    }

    /// The part holding byte `offset`.
    pub fn part_of(&self, offset: u64) -> u32 {
        if offset < self.head + self.stride {
            1
        } else {
            (((offset - self.head) / self.stride) + 1).min(u64::from(self.parts)) as u32
        }
    }

    /// Whether this object goes as one PUT rather than a multipart upload.
    pub fn single_put(&self) -> bool {
        self.len <= SINGLE_PUT_MAX
    }
}

type Job = Box<dyn FnOnce(&Pool, u64) + Send>;

/// A few threads that upload parts for every writer of a store, and the uploads not yet
/// acknowledged, numbered in the order they were handed over (a barrier waits for those
/// handed over before it began, not for the ones a busy writer keeps adding).
pub struct Pool {
    tx: Mutex<Option<Sender<(u64, Job)>>>,
    rx: Receiver<(u64, Job)>,
    started: Mutex<usize>,
    state: Mutex<PoolState>,
    idle: Condvar,
}

#[derive(Default)]
struct PoolState {
    /// Tickets of the uploads handed over and not yet acknowledged.
    pending: std::collections::BTreeSet<u64>,
    /// The next upload's ticket.
    next: u64,
    /// The first failure since the last barrier.
    error: Option<Error>,
}

impl Pool {
    pub fn new() -> Pool {
        let (tx, rx) = crossbeam_channel::unbounded();
        Pool {
            tx: Mutex::new(Some(tx)),
            rx,
            started: Mutex::new(0),
            state: Mutex::new(PoolState::default()),
            idle: Condvar::new(),
        }
    }

    fn submit(self: &Arc<Self>, job: Job) -> Result<()> {
        {
            let mut n = lock(&self.started);
            while *n < POOL_THREADS {
                let rx = self.rx.clone();
                // The threads hold the pool weakly: dropping the store ends them.
                let pool = Arc::downgrade(self);
                std::thread::Builder::new()
                    .name("envseal-s3-upload".into())
                    .spawn(move || {
                        for (ticket, job) in rx {
                            match pool.upgrade() {
                                Some(p) => job(&p, ticket),
                                None => return,
                            }
                        }
                    })
                    .map_err(|e| Error::Runtime(format!("cannot start an upload thread: {e}")))?;
                *n += 1;
            }
        }
        let ticket = {
            let mut st = lock(&self.state);
            let t = st.next;
            st.next += 1;
            st.pending.insert(t);
            t
        };
        let sent = lock(&self.tx).as_ref().map(|tx| tx.send((ticket, job)));
        match sent {
            Some(Ok(())) => Ok(()),
            _ => {
                self.done(ticket, None);
                Err(Error::Runtime("the upload threads have stopped".into()))
            }
        }
    }

    fn done(&self, ticket: u64, error: Option<&Error>) {
        let mut st = lock(&self.state);
        st.pending.remove(&ticket);
        if let (Some(e), None) = (error, &st.error) {
            st.error = Some(clone_error(e));
        }
        self.idle.notify_all();
    }

    /// Waits for every upload handed over so far (not for those handed over meanwhile);
    /// the first failure since the last barrier, if any.
    pub fn wait_idle(&self) -> Result<()> {
        let mut st = lock(&self.state);
        let upto = st.next;
        while st.pending.first().is_some_and(|&t| t < upto) {
            st = self.idle.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        match st.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Closing the channel ends the threads once the queue is empty.
        lock(&self.tx).take();
    }
}

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The parts of one multipart upload, shared with the pool's jobs.
#[derive(Default)]
struct Parts {
    /// Uploaded parts: number -> ETag.
    done: BTreeMap<u32, String>,
    /// Handed to the pool: number -> bytes.
    in_flight: BTreeMap<u32, u64>,
    in_flight_bytes: u64,
    error: Option<Error>,
}

struct Upload {
    inner: Arc<Inner>,
    key: String,
    upload_id: String,
    parts: Mutex<Parts>,
    changed: Condvar,
}

impl Upload {
    /// Hands part `n` to the pool once the writer's bytes in flight allow it.
    fn submit(self: &Arc<Self>, n: u32, data: Vec<u8>) -> Result<()> {
        let len = data.len() as u64;
        {
            let mut p = lock(&self.parts);
            while p.in_flight_bytes > 0 && p.in_flight_bytes + len > MAX_IN_FLIGHT {
                p = self.changed.wait(p).unwrap_or_else(|e| e.into_inner());
            }
            if let Some(e) = &p.error {
                return Err(clone_error(e));
            }
            p.in_flight.insert(n, len);
            p.in_flight_bytes += len;
        }
        let up = Arc::clone(self);
        let body = Bytes::from(data);
        self.inner.pool.submit(Box::new(move |pool, ticket| {
            let r = up.inner.upload_part(&up.key, &up.upload_id, n, body);
            {
                let mut p = lock(&up.parts);
                p.in_flight.remove(&n);
                p.in_flight_bytes -= len;
                match &r {
                    Ok(etag) => {
                        p.done.insert(n, etag.clone());
                    }
                    Err(e) => {
                        if p.error.is_none() {
                            p.error = Some(clone_error(e));
                        }
                    }
                }
                up.changed.notify_all();
            }
            pool.done(ticket, r.as_ref().err());
        }))
    }

    /// Waits for this upload's parts in flight; its first failure, if any.
    fn wait(&self) -> Result<BTreeMap<u32, String>> {
        let mut p = lock(&self.parts);
        while !p.in_flight.is_empty() {
            p = self.changed.wait(p).unwrap_or_else(|e| e.into_inner());
        }
        match &p.error {
            Some(e) => Err(clone_error(e)),
            None => Ok(p.done.clone()),
        }
    }
}

/// A part being filled.
struct Filling {
    data: Vec<u8>,
    filled: u64,
    /// Offsets written, so that a piece written twice is counted once.
    pieces: HashSet<u64>,
}

/// An object written as a multipart upload of whole pieces, parts uploaded in parallel.
pub struct MultipartWriter {
    geo: Geometry,
    up: Arc<Upload>,
    filling: HashMap<u32, Filling>,
    /// Parts handed over (or kept from an earlier run)...
    submitted: Vec<bool>,
    /// ...and how many from part 1 on all are: what `durable_len` reports, kept as parts
    /// are handed over (it is asked once per window written).
    prefix: u32,
    /// Parts an interrupted run uploaded past its checkpoint (number -> size, ETag): a
    /// part written again with the same bytes (sealing is deterministic) is not sent.
    sent: BTreeMap<u32, (u64, String)>,
    name: String,
    /// Of open length (written in order within the geometry's bound): ends where the
    /// writes end, its last part short.
    open: bool,
    /// The end of the bytes written.
    end: u64,
}

impl MultipartWriter {
    /// A writer over an upload; `kept` maps the parts an earlier run uploaded (number ->
    /// ETag), which are never sent again.
    pub fn new(
        inner: Arc<Inner>,
        name: &str,
        key: String,
        upload_id: String,
        geo: Geometry,
        kept: BTreeMap<u32, String>,
    ) -> MultipartWriter {
        let mut submitted = vec![false; geo.parts as usize + 1];
        for n in kept.keys() {
            if let Some(s) = submitted.get_mut(*n as usize) {
                *s = true;
            }
        }
        let mut w = MultipartWriter {
            geo,
            up: Arc::new(Upload {
                inner,
                key,
                upload_id,
                parts: Mutex::new(Parts {
                    done: kept,
                    ..Parts::default()
                }),
                changed: Condvar::new(),
            }),
            filling: HashMap::new(),
            submitted,
            prefix: 0,
            sent: BTreeMap::new(),
            name: name.to_string(),
            open: false,
            end: 0,
        };
        w.advance();
        w
    }

    /// Moves `prefix` past the parts handed over since.
    fn advance(&mut self) {
        while self.prefix < self.geo.parts && self.submitted[self.prefix as usize + 1] {
            self.prefix += 1;
        }
    }

    /// An object of open length: written in order, in writes that may span parts, and
    /// ended by `finish` wherever the writes end.
    pub fn open_length(mut self, open: bool) -> MultipartWriter {
        self.open = open;
        self
    }

    /// With the parts an interrupted run uploaded past what is kept.
    pub fn with_sent(mut self, sent: BTreeMap<u32, (u64, String)>) -> MultipartWriter {
        self.sent = sent;
        self
    }

    /// Whether part `n` with bytes `data` is already on the server: the same size, and
    /// an ETag that is the MD5 of these bytes.
    fn already_sent(&mut self, n: u32, data: &[u8]) -> Option<String> {
        use md5::{Digest, Md5};
        let (size, etag) = self.sent.remove(&n)?;
        let md5 = hex::encode(Md5::digest(data));
        (size == data.len() as u64 && etag.trim_matches('"').eq_ignore_ascii_case(&md5))
            .then_some(etag)
    }

    fn url(&self) -> String {
        self.up.inner.describe(&self.name)
    }

    /// Hands part `n`, complete as `data`, to the pool (or records it as sent already).
    fn submit(&mut self, n: u32, data: Vec<u8>) -> Result<()> {
        self.submitted[n as usize] = true;
        self.advance();
        match self.already_sent(n, &data) {
            Some(etag) => {
                lock(&self.up.parts).done.insert(n, etag);
                Ok(())
            }
            None => self.up.submit(n, data),
        }
    }

    /// Writes bytes that lie within one part.
    fn write_part(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let end = offset + data.len() as u64;
        let n = self.geo.part_of(offset);
        let (start, pend) = self.geo.range(n);
        if end > pend || end > self.geo.len {
            return Err(Error::Runtime(format!(
                "{}: a write of [{offset}, {end}) crosses a part boundary at {pend} of a {}-byte object (a piece outside the object's shape)",
                self.url(),
                self.geo.len
            )));
        }
        if self.submitted[n as usize] {
            // A part kept from an interrupted run (or already sent): its bytes are there.
            return Ok(());
        }
        let f = self.filling.entry(n).or_insert_with(|| Filling {
            data: vec![0; (pend - start) as usize],
            filled: 0,
            pieces: HashSet::new(),
        });
        let at = (offset - start) as usize;
        f.data[at..at + data.len()].copy_from_slice(data);
        if f.pieces.insert(offset) {
            f.filled += data.len() as u64;
        }
        if f.filled >= pend - start {
            if let Some(f) = self.filling.remove(&n) {
                self.submit(n, f.data)?;
            }
        }
        Ok(())
    }
}

impl ObjectWriter for MultipartWriter {
    fn write_at(&mut self, mut offset: u64, mut data: &[u8]) -> Result<()> {
        self.end = self.end.max(offset + data.len() as u64);
        if !self.open {
            return self.write_part(offset, data);
        }
        if offset + data.len() as u64 > self.geo.len {
            return Err(Error::Runtime(format!(
                "{}: a write ends at {}, past the object's bound of {} bytes",
                self.url(),
                offset + data.len() as u64,
                self.geo.len
            )));
        }
        // Written in order: a write may span parts.
        while !data.is_empty() {
            let pend = self.geo.range(self.geo.part_of(offset)).1;
            let take = ((pend - offset) as usize).min(data.len());
            self.write_part(offset, &data[..take])?;
            offset += take as u64;
            data = &data[take..];
        }
        Ok(())
    }

    fn durable_len(&self) -> u64 {
        match self.prefix {
            0 => 0,
            n => self.geo.range(n).1,
        }
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        let mut last = self.geo.parts;
        if self.open {
            // The part holding the last byte ends the object, short.
            last = self.geo.part_of(self.end.max(1) - 1);
            let (s, e) = self.geo.range(last);
            if let Some(f) = self.filling.remove(&last) {
                let len = self.end.min(e) - s;
                if f.filled != len {
                    return Err(Error::Runtime(format!(
                        "{}: finished with bytes of [{s}, {}) not written",
                        self.url(),
                        self.end
                    )));
                }
                let mut data = f.data;
                data.truncate(len as usize);
                self.submit(last, data)?;
            }
        }
        if self.prefix < last {
            let n = self.prefix + 1;
            let (s, e) = self.geo.range(n);
            return Err(Error::Runtime(format!(
                "{}: finished with bytes [{s}, {e}) not written",
                self.url()
            )));
        }
        let mut parts = self.up.wait()?;
        parts.retain(|&n, _| n <= last);
        self.up
            .inner
            .complete(&self.name, &self.up.key, &self.up.upload_id, &parts, false)
            .map(|_| ())
    }

    fn abort(self: Box<Self>) -> Result<()> {
        // Parts still in flight would otherwise land after the abort.
        let _ = self.up.wait();
        let req = super::client::Req::new(reqwest::Method::DELETE, Some(&self.up.key))
            .query("uploadId", self.up.upload_id.clone());
        match self.up.inner.client.send(&req, &[404]) {
            Ok(_) => Ok(()),
            Err(f) => Err(self.up.inner.fail(Some(&self.name), f)),
        }
    }
}

/// A small object (or a pack of open length), kept in memory and sent as one PUT.
pub struct BufferedWriter {
    pub inner: Arc<Inner>,
    pub name: String,
    pub data: Vec<u8>,
    /// The object's length when known; `None`: written in order.
    pub len: Option<u64>,
}

impl ObjectWriter for BufferedWriter {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let end = offset as usize + data.len();
        match self.len {
            None if offset as usize != self.data.len() => {
                return Err(Error::Runtime(format!(
                    "{}: an object of open length is written in order (write at {offset}, {} bytes written)",
                    self.inner.describe(&self.name),
                    self.data.len()
                )))
            }
            Some(len) if end as u64 > len => {
                return Err(Error::Runtime(format!(
                    "{}: a write ends at {end}, past the object's {len} bytes",
                    self.inner.describe(&self.name)
                )))
            }
            _ => {}
        }
        if self.data.len() < end {
            self.data.resize(end, 0);
        }
        self.data[offset as usize..end].copy_from_slice(data);
        Ok(())
    }

    fn durable_len(&self) -> u64 {
        0
    }

    fn finish(self: Box<Self>) -> Result<()> {
        if let Some(len) = self.len {
            if self.data.len() as u64 != len {
                return Err(Error::Runtime(format!(
                    "{}: finished with {} of {len} bytes written",
                    self.inner.describe(&self.name),
                    self.data.len()
                )));
            }
        }
        self.inner
            .put(&self.name, Bytes::from(self.data), false)
            .map(|_| ())
    }

    fn abort(self: Box<Self>) -> Result<()> {
        // Nothing was sent.
        Ok(())
    }
}

/// The manifest: streamed in parts of [`PART_TARGET`], one PUT when it stays small.
pub struct StreamFile {
    inner: Arc<Inner>,
    name: String,
    buf: Vec<u8>,
    up: Option<Arc<Upload>>,
    next: u32,
    committed: bool,
}

impl StreamFile {
    pub fn new(inner: Arc<Inner>, name: &str) -> StreamFile {
        StreamFile {
            inner,
            name: name.to_string(),
            buf: Vec::new(),
            up: None,
            next: 1,
            committed: false,
        }
    }

    fn send_part(&mut self) -> Result<()> {
        let up = match &self.up {
            Some(u) => Arc::clone(u),
            None => {
                let key = self.inner.cfg().key(&self.name);
                let upload_id = self.inner.create_upload(&self.name, &key)?;
                let u = Arc::new(Upload {
                    inner: Arc::clone(&self.inner),
                    key,
                    upload_id,
                    parts: Mutex::new(Parts::default()),
                    changed: Condvar::new(),
                });
                self.up = Some(Arc::clone(&u));
                u
            }
        };
        let data = std::mem::take(&mut self.buf);
        up.submit(self.next, data)?;
        self.next += 1;
        Ok(())
    }
}

impl io::Write for StreamFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = (PART_TARGET as usize).saturating_sub(self.buf.len());
        let n = buf.len().min(room);
        self.buf.extend_from_slice(&buf[..n]);
        if self.buf.len() as u64 >= PART_TARGET {
            self.send_part().map_err(io::Error::other)?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl NewFile for StreamFile {
    fn commit(mut self: Box<Self>, replace: bool) -> Result<bool> {
        self.committed = true;
        let Some(up) = self.up.clone() else {
            let data = Bytes::from(std::mem::take(&mut self.buf));
            return self.inner.put(&self.name, data, !replace);
        };
        if !self.buf.is_empty() {
            self.send_part()?;
        }
        let parts = match up.wait() {
            Ok(p) => p,
            Err(e) => {
                self.inner.abort_quietly(&up.key, &up.upload_id);
                return Err(e);
            }
        };
        let done = self
            .inner
            .complete(&self.name, &up.key, &up.upload_id, &parts, !replace);
        if !matches!(done, Ok(true)) {
            self.inner.abort_quietly(&up.key, &up.upload_id);
        }
        done
    }
}

impl Drop for StreamFile {
    fn drop(&mut self) {
        // Not committed: the parts are of no use to anyone.
        if let (false, Some(up)) = (self.committed, &self.up) {
            let _ = up.wait();
            self.inner.abort_quietly(&up.key, &up.upload_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// S3's smallest part but the last.
    const MIN_PART: u64 = 5 << 20;

    fn shape(len: u64, head: u64, piece: u64) -> Shape {
        Shape {
            len: Some(len),
            head,
            piece,
            bound: None,
        }
    }

    /// Every part but the last is at least 5 MiB, made of whole pieces, at most 10,000 of
    /// them, and they tile the object.
    #[test]
    fn parts_are_runs_of_whole_pieces() {
        let cases = [
            (1 << 30, 64, 1 << 20),
            ((1 << 30) + 12345, 100, 1 << 20),
            (100 << 20, 0, 3 << 20),
            (9 << 20, 7, 64 << 10),
            (200 << 30, 4096, 1 << 20), // 200 GiB of 1 MiB pieces: parts grow
            (20 << 20, 0, 40 << 20),    // one piece longer than the object
            (50 << 20, 10, 0),          // no pieces: the whole object
        ];
        for (len, head, piece) in cases {
            let g = Geometry::of(shape(len, head, piece)).unwrap();
            assert!(u64::from(g.parts) <= MAX_PARTS, "{g:?}");
            let mut at = 0;
            for n in 1..=g.parts {
                let (s, e) = g.range(n);
                assert_eq!(s, at, "{g:?} part {n}");
                assert!(e > s, "{g:?} part {n}");
                if n < g.parts {
                    assert!(e - s >= MIN_PART, "{g:?} part {n}");
                    if piece > 0 {
                        assert_eq!((e - head) % piece, 0, "{g:?} part {n} ends mid-piece");
                    }
                }
                assert_eq!(g.part_of(s), n);
                assert_eq!(g.part_of(e - 1), n);
                at = e;
            }
            assert_eq!(at, len, "{g:?}");
        }
        let g = Geometry::of(shape(1 << 30, 64, 1 << 20)).unwrap();
        assert_eq!(g.stride, 8 << 20);
        assert_eq!(g.range(1), (0, 64 + (8 << 20)));
        assert_eq!(g.parts, 128);
        assert!(Geometry::of(Shape {
            len: None,
            head: 0,
            piece: 1,
            bound: None,
        })
        .is_none());
    }
}
