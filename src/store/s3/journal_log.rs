//! The journal on object storage, which has no append: a log `NAME` is the object `NAME`
//! (when a whole file was put there, e.g. by [`Store::replace`](crate::store::Store)) followed
//! by segment objects `NAME.d/<offset>`, one per append, named by the byte offset they start
//! at (16 hex digits, so that names sort by offset). Each append is one PUT: atomic, durable
//! on 200. docs/STORAGE.md, "The journal".

use std::io::{Cursor, Read};
use std::sync::Arc;

use bytes::Bytes;

use super::Inner;
use crate::error::{Error, Result};
use crate::store::Log;

/// A log's segments: (offset, length), by offset.
type Segments = Vec<(u64, u64)>;

/// The most a log's whole-file start (a receipt) is read into memory.
const MAX_BASE: u64 = 64 << 20;

/// The segment of `log` starting at `offset`.
fn segment(log: &str, offset: u64) -> String {
    format!("{log}.d/{offset:016x}")
}

/// The log a segment name belongs to (for listings).
pub fn log_of_segment(name: &str) -> Option<&str> {
    let (log, seg) = name.rsplit_once(".d/")?;
    (seg.len() == 16 && seg.bytes().all(|b| b.is_ascii_hexdigit())).then_some(log)
}

/// The segments of `log`: (offset, length), by offset.
fn segments(inner: &Inner, log: &str) -> Result<Segments> {
    let prefix = inner.cfg().key(&format!("{log}.d/"));
    let mut out: Segments = inner
        .list_keys(&prefix)?
        .into_iter()
        .filter_map(|(k, len)| {
            let hex = k.strip_prefix(&prefix)?;
            (hex.len() == 16)
                .then(|| u64::from_str_radix(hex, 16).ok())
                .flatten()
                .map(|o| (o, len))
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Removes every segment of `log`, the last first (a cut short removal leaves a shorter
/// log, never one with a hole).
pub fn remove_segments(inner: &Inner, log: &str) -> Result<()> {
    if log.contains('/') {
        // Logs live at the vault's top (the journal); objects never have segments.
        return Ok(());
    }
    for (o, _) in segments(inner, log)?.into_iter().rev() {
        inner.delete(&segment(log, o))?;
    }
    Ok(())
}

/// The log `name` as one file (its whole-file start, then its segments), for the readers
/// of the file API (`len`, `get`, `reader`): `None` when it has no live segments, and the
/// name is an ordinary object (or nothing). Nothing is changed (stale segments are only
/// removed by [`open`], a writer).
pub fn read_whole(inner: &Inner, name: &str, max: u64) -> Result<Option<Vec<u8>>> {
    let Some((base, segs)) = live(inner, name)? else {
        return Ok(None);
    };
    let total = base + segs.iter().map(|(_, l)| l).sum::<u64>();
    if total > max {
        return Err(Error::integrity(
            inner.describe(name),
            format!("longer than {max} bytes"),
        ));
    }
    let mut body = Vec::with_capacity(total as usize);
    if base > 0 {
        body = inner
            .get_bytes(name, base)?
            .ok_or_else(|| Error::integrity(inner.describe(name), "vanished while read"))?;
    }
    read_segments(inner, name, &segs, &mut body)?;
    Ok(Some(body))
}

/// Checks that `segs` follow the first `base` bytes of log `name` and each other, without
/// a gap or an overlap.
fn check_contiguous(inner: &Inner, name: &str, base: u64, segs: &Segments) -> Result<()> {
    let mut at = base;
    for (o, l) in segs {
        if *o != at {
            return Err(Error::integrity(
                inner.describe(&segment(name, *o)),
                format!("a journal segment at byte {o} where byte {at} was expected"),
            ));
        }
        at += l;
    }
    Ok(())
}

/// Appends the bytes of the segments `segs` of log `name` to `body`, each of the length
/// listed.
fn read_segments(inner: &Inner, name: &str, segs: &Segments, body: &mut Vec<u8>) -> Result<()> {
    for (o, l) in segs {
        let seg = segment(name, *o);
        let bytes = inner
            .get_bytes(&seg, *l)?
            .ok_or_else(|| Error::integrity(inner.describe(&seg), "vanished while read"))?;
        if bytes.len() as u64 != *l {
            return Err(Error::integrity(
                inner.describe(&seg),
                "its length changed while read",
            ));
        }
        body.extend_from_slice(&bytes);
    }
    Ok(())
}

/// The length of the log `name` read as one file; `None` as for [`read_whole`].
pub fn whole_len(inner: &Inner, name: &str) -> Result<Option<u64>> {
    Ok(live(inner, name)?.map(|(base, segs)| base + segs.iter().map(|(_, l)| l).sum::<u64>()))
}

/// The whole-file start's length and the live segments of a log that has some, checked
/// to follow each other; `None` when there are none (or only stale ones).
fn live(inner: &Inner, name: &str) -> Result<Option<(u64, Segments)>> {
    if name.contains('/') {
        return Ok(None);
    }
    let segs = segments(inner, name)?;
    if segs.is_empty() {
        return Ok(None);
    }
    let base = inner.head(name)?.map(|(l, _)| l);
    if base.is_some() && segs[0].0 == 0 {
        return Ok(None);
    }
    let base = base.unwrap_or(0);
    check_contiguous(inner, name, base, &segs)?;
    Ok(Some((base, segs)))
}

pub struct S3Log {
    inner: Arc<Inner>,
    name: String,
    /// Length of the object `name` itself (0 when there is none).
    base: u64,
    segs: Segments,
}

impl S3Log {
    fn end(&self) -> u64 {
        self.segs.last().map_or(self.base, |(o, l)| o + l)
    }
}

pub fn create(inner: &Arc<Inner>, name: &str, first: &[u8]) -> Result<Option<Box<dyn Log>>> {
    if inner.head(name)?.is_some() {
        return Ok(None);
    }
    if !inner.put(&segment(name, 0), Bytes::copy_from_slice(first), true)? {
        return Ok(None);
    }
    Ok(Some(Box::new(S3Log {
        inner: Arc::clone(inner),
        name: name.to_string(),
        base: 0,
        segs: vec![(0, first.len() as u64)],
    })))
}

pub fn open(inner: &Arc<Inner>, name: &str) -> Result<Option<crate::store::OpenedLog>> {
    let mut segs = segments(inner, name)?;
    let base = inner.get_bytes(name, MAX_BASE)?;
    if base.is_some() && segs.first().is_some_and(|(o, _)| *o == 0) {
        // A log replaced by a whole file whose old segments a crash left: the file is
        // the newer (replace writes it first), the segments go.
        remove_segments(inner, name)?;
        segs.clear();
    }
    if base.is_none() && segs.is_empty() {
        return Ok(None);
    }
    let mut body = base.unwrap_or_default();
    let base_len = body.len() as u64;
    check_contiguous(inner, name, base_len, &segs)?;
    read_segments(inner, name, &segs, &mut body)?;
    let log = S3Log {
        inner: Arc::clone(inner),
        name: name.to_string(),
        base: base_len,
        segs,
    };
    Ok(Some((Box::new(log), body)))
}

impl Log for S3Log {
    fn append(&mut self, bytes: &[u8]) -> Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let at = self.end();
        self.inner.put(
            &segment(&self.name, at),
            Bytes::copy_from_slice(bytes),
            false,
        )?;
        self.segs.push((at, bytes.len() as u64));
        Ok(())
    }

    fn position(&self) -> u64 {
        self.end()
    }

    fn truncate(&mut self, len: u64) -> Result<()> {
        // Segments wholly past `len` go, the last first; one that straddles it is
        // rewritten shorter (a PUT replaces it atomically).
        while let Some(&(o, l)) = self.segs.last() {
            // The first segment of a log without a base stays (empty): it is what makes the
            // log exist.
            if o >= len && !(o == 0 && self.base == 0) {
                self.inner.delete(&segment(&self.name, o))?;
                self.segs.pop();
                continue;
            }
            if o + l > len {
                let keep = self.read_range(o, len)?;
                self.inner
                    .put(&segment(&self.name, o), Bytes::from(keep), false)?;
                if let Some(last) = self.segs.last_mut() {
                    last.1 = len - o;
                }
            }
            break;
        }
        if self.segs.is_empty() && len < self.base {
            let keep = self.read_range(0, len)?;
            self.inner.put(&self.name, Bytes::from(keep), false)?;
            self.base = len;
        }
        Ok(())
    }

    fn read_from(&self, from: u64) -> Result<Box<dyn Read + Send + '_>> {
        let end = self.end();
        Ok(Box::new(Cursor::new(self.read_range(from.min(end), end)?)))
    }
}

impl S3Log {
    /// The log's bytes `[from, to)`.
    fn read_range(&self, from: u64, to: u64) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut pieces = Vec::new();
        if self.base > 0 {
            pieces.push((self.name.clone(), 0, self.base));
        }
        for (o, l) in &self.segs {
            pieces.push((segment(&self.name, *o), *o, *l));
        }
        for (obj, o, l) in pieces {
            let (s, e) = (from.max(o), to.min(o + l));
            if s >= e {
                continue;
            }
            let a = self
                .inner
                .get(&obj, Some((s - o, e - o)))?
                .ok_or_else(|| Error::integrity(self.inner.describe(&obj), "vanished"))?;
            let mut r = a.response;
            let at = out.len();
            out.resize(at + (e - s) as usize, 0);
            r.read_exact(&mut out[at..]).map_err(|e| {
                Error::integrity(self.inner.describe(&obj), format!("short read: {e}"))
            })?;
        }
        Ok(out)
    }
}
