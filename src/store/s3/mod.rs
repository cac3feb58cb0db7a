//! A vault in S3-compatible object storage (`s3://BUCKET/PREFIX`, `oss://BUCKET/PREFIX`).
//!
//! How each guarantee of [`Store`] is kept without rename, append or fsync is in
//! docs/STORAGE.md: small files are single PUTs (`If-None-Match: *` where they must not
//! overwrite), large objects multipart uploads of whole pieces sent by a small pool of
//! threads, the journal numbered segment objects, the writers' lock a leased object.

mod client;
pub mod config;
mod journal_log;
mod lock;
mod upload;
mod xml;

use std::collections::{BTreeMap, HashSet};
use std::io::{self, Read};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use reqwest::Method;

use self::client::{Client, Failure, Req};
pub use self::config::{Flavor, S3Config, S3Url};
use self::upload::{BufferedWriter, Geometry, MultipartWriter, Pool, StreamFile};
pub use self::upload::{MAX_IN_FLIGHT, PART_TARGET};
use super::{Listed, LockGuard, Log, Name, NewFile, ObjectWriter, ReadAt, Shape, Store, Traits};
use crate::error::{Error, Result, StoreErrorKind};
use crate::retry::RetryPolicy;

/// The largest object one CopyObject copies (S3's limit); larger ones are copied by
/// parts (UploadPartCopy).
const MAX_COPY: u64 = 5 << 30;
/// The most of a log `reader` joins in memory.
const MAX_LOG_READ: u64 = 1 << 30;
/// The scratch objects of the conditional-PUT probe.
const PROBE_PREFIX: &str = ".envseal-probe-";
/// The smallest part of a copy by parts.
const COPY_PART: u64 = 512 << 20;

/// The store: cheap to share, all state in [`Inner`].
pub struct S3Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store")
            .field("client", &self.inner.client)
            .finish()
    }
}

/// What the store, its writers and the pool's jobs share.
pub(crate) struct Inner {
    client: Client,
    pool: Arc<Pool>,
    /// Whether the server honours `If-None-Match: *` on PUT (probed once).
    conditional: OnceLock<bool>,
    /// How long the lock's lease lasts, and how often it is renewed.
    lease: (Duration, Duration),
    /// Blocks of objects read in small pieces (records of packed files), shared by the
    /// store's readers.
    blocks: std::sync::Mutex<BlockCache>,
}

/// Reads smaller than a block are served from whole blocks of [`READ_BLOCK`] bytes, fetched
/// once: a pack's files are read one after another, and one request per block instead of
/// two per file (header, then record) is what keeps a tree's restore at the network's
/// speed. Larger reads (windows of large files) go straight to the server.
pub const READ_BLOCK: u64 = 2 << 20;
/// Blocks kept (most recently used), across the store: 64 MiB.
const CACHED_BLOCKS: usize = 32;

/// A block's key: the object's name and the block's index in it.
type BlockKey = (String, u64);

/// Recently read blocks, most recent last.
#[derive(Default)]
struct BlockCache {
    blocks: std::collections::VecDeque<(BlockKey, Arc<Vec<u8>>)>,
}

impl BlockCache {
    fn get(&mut self, key: &BlockKey) -> Option<Arc<Vec<u8>>> {
        let i = self.blocks.iter().position(|(k, _)| k == key)?;
        let hit = self.blocks.remove(i)?;
        let data = Arc::clone(&hit.1);
        self.blocks.push_back(hit);
        Some(data)
    }

    fn put(&mut self, key: BlockKey, data: Arc<Vec<u8>>) {
        if self.blocks.len() >= CACHED_BLOCKS {
            self.blocks.pop_front();
        }
        self.blocks.push_back((key, data));
    }
}

impl S3Store {
    /// The store at `url`, configured from the environment (nothing is sent yet).
    pub fn open(url: &S3Url) -> Result<S3Store> {
        S3Store::with_config(S3Config::from_env(url)?)
    }

    pub fn with_config(cfg: S3Config) -> Result<S3Store> {
        Ok(S3Store {
            inner: Arc::new(Inner {
                client: Client::new(cfg)?,
                pool: Arc::new(Pool::new()),
                conditional: OnceLock::new(),
                lease: (lock::LEASE, lock::RENEW_EVERY),
                blocks: std::sync::Mutex::new(BlockCache::default()),
            }),
        })
    }

    /// Replaces the retry policy (tests bound how long an unreachable endpoint takes).
    pub fn with_retry(mut self, retry: RetryPolicy) -> S3Store {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.client.retry = retry;
        }
        self
    }

    /// Shortens the lock's lease and its renewal period (tests of the renewal).
    #[doc(hidden)]
    pub fn with_lease(mut self, lease: Duration, renew_every: Duration) -> S3Store {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.lease = (lease, renew_every);
        }
        self
    }

    /// Behaves as on a server that ignores `If-None-Match` (a HEAD before each PUT that
    /// must not overwrite): for the tests of that fallback.
    #[doc(hidden)]
    pub fn assume_no_conditional_puts(self) -> S3Store {
        let _ = self.inner.conditional.set(false);
        self
    }

    /// Whether the server refuses a conditional PUT over an existing object (probed once
    /// with a scratch object; see docs/STORAGE.md, "Never overwriting").
    pub fn honours_conditional_put(&self) -> Result<bool> {
        self.inner.conditional_puts()
    }
}

/// A copy of an error for a second reader (an upload's failure goes to its writer and to
/// the barrier).
pub(crate) fn clone_error(e: &Error) -> Error {
    match e {
        Error::Store { url, kind, detail } => Error::Store {
            url: url.clone(),
            kind: *kind,
            detail: detail.clone(),
        },
        other => Error::Runtime(other.to_string()),
    }
}

/// A 404 that means "no such object" (not "no such bucket").
fn is_absent(f: &Failure) -> bool {
    f.status == 404 && f.kind != StoreErrorKind::NoBucket
}

impl Inner {
    fn cfg(&self) -> &S3Config {
        &self.client.cfg
    }

    pub fn describe(&self, name: &str) -> String {
        self.cfg().object_url(Some(&self.cfg().key(name)))
    }

    fn fail(&self, name: Option<&str>, f: Failure) -> Error {
        let url = match name {
            Some(n) => self.describe(n),
            None => self.cfg().url(),
        };
        f.into_error(&url, self.cfg())
    }

    /// HEAD of `name`: its length and ETag, `None` when absent.
    fn head(&self, name: &str) -> Result<Option<(u64, String)>> {
        let key = self.cfg().key(name);
        match self.client.send(&Req::new(Method::HEAD, Some(&key)), &[]) {
            Ok(a) => {
                let len = a
                    .header("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                Ok(Some((len, a.header("etag").unwrap_or_default())))
            }
            Err(f) if is_absent(&f) => Ok(None),
            Err(f) => Err(self.fail(Some(name), f)),
        }
    }

    /// PUT of a whole object. With `if_absent`, `Ok(false)` when `name` exists (a
    /// conditional PUT, or a HEAD first where the server ignores the condition).
    fn put(&self, name: &str, body: Bytes, if_absent: bool) -> Result<bool> {
        let key = self.cfg().key(name);
        let mut req = Req::new(Method::PUT, Some(&key)).body(body);
        if if_absent {
            if !self.conditional_puts()? && self.head(name)?.is_some() {
                return Ok(false);
            }
            req = req.header("If-None-Match", "*");
        }
        match self.client.send(&req, &[412]) {
            Ok(a) if a.status == 412 => Ok(false),
            Ok(_) => Ok(true),
            Err(f) => Err(self.fail(Some(name), f)),
        }
    }

    /// Probes once whether `If-None-Match: *` is honoured: a scratch object put twice
    /// under the condition, then removed. The first PUT also proves the bucket writable.
    fn conditional_puts(&self) -> Result<bool> {
        if let Some(v) = self.conditional.get() {
            return Ok(*v);
        }
        let mut r = [0u8; 8];
        getrandom::getrandom(&mut r).map_err(|e| Error::Runtime(format!("random: {e}")))?;
        let name = format!("{PROBE_PREFIX}{}", hex::encode(r));
        let key = self.cfg().key(&name);
        let req = Req::new(Method::PUT, Some(&key))
            .header("If-None-Match", "*")
            .body(Bytes::from_static(b"probe"));
        let first = self.client.send(&req, &[412, 501]);
        let second = match first {
            Ok(a) if a.status == 501 => None,
            Ok(_) => Some(self.client.send(&req, &[412, 501])),
            Err(f) => return Err(self.fail(Some(&name), f)),
        };
        let _ = self.client.send(&Req::new(Method::DELETE, Some(&key)), &[]);
        let honoured = match second {
            Some(Ok(a)) => a.status == 412,
            Some(Err(f)) => return Err(self.fail(Some(&name), f)),
            None => false,
        };
        if !honoured {
            log::warn!(
                "{}: the server ignores If-None-Match on PUT; new files are checked with a HEAD \
                 first (docs/STORAGE.md, \"Never overwriting\")",
                self.cfg().url()
            );
        }
        Ok(*self.conditional.get_or_init(|| honoured))
    }

    fn delete(&self, name: &str) -> Result<()> {
        let key = self.cfg().key(name);
        match self.client.send(&Req::new(Method::DELETE, Some(&key)), &[]) {
            Ok(_) => Ok(()),
            Err(f) if is_absent(&f) => Ok(()),
            Err(f) => Err(self.fail(Some(name), f)),
        }
    }

    /// A GET of `name` (or of its bytes `range`), `None` when absent.
    fn get(&self, name: &str, range: Option<(u64, u64)>) -> Result<Option<client::Answer>> {
        let key = self.cfg().key(name);
        let mut req = Req::new(Method::GET, Some(&key));
        if let Some((s, e)) = range {
            req = req.header("Range", format!("bytes={s}-{}", e - 1));
        }
        match self.client.send(&req, &[]) {
            Ok(a) => Ok(Some(a)),
            Err(f) if is_absent(&f) => Ok(None),
            Err(f) => Err(self.fail(Some(name), f)),
        }
    }

    /// The whole of `name` up to `max` bytes.
    fn get_bytes(&self, name: &str, max: u64) -> Result<Option<Vec<u8>>> {
        let Some(a) = self.get(name, None)? else {
            return Ok(None);
        };
        if a.header("content-length")
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|l| l > max)
        {
            return Err(Error::integrity(
                self.describe(name),
                format!("longer than {max} bytes"),
            ));
        }
        match a.bytes(max) {
            Ok(b) => Ok(Some(b)),
            Err(f) if f.kind == StoreErrorKind::Protocol => Err(Error::integrity(
                self.describe(name),
                format!("longer than {max} bytes"),
            )),
            Err(f) => Err(self.fail(Some(name), f)),
        }
    }

    /// Every key under the full-key prefix `prefix` with its size (ListObjectsV2, every page).
    fn list_keys(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut req = Req::new(Method::GET, None)
                .query("list-type", "2")
                .query("prefix", prefix);
            if let Some(t) = &token {
                req = req.query("continuation-token", t.clone());
            }
            let doc = self
                .client
                .send(&req, &[])
                .and_then(|a| a.xml())
                .map_err(|f| self.fail(None, f))?;
            for c in doc.all("Contents") {
                let key = c.text_of("Key").unwrap_or_default();
                let size = c.text_of("Size").and_then(|s| s.parse().ok()).unwrap_or(0);
                out.push((key, size));
            }
            match (
                doc.text_of("IsTruncated").as_deref(),
                doc.text_of("NextContinuationToken"),
            ) {
                (Some("true"), Some(t)) if !t.is_empty() => token = Some(t),
                (Some("true"), _) => {
                    return Err(self.fail(
                        None,
                        Failure::protocol("a truncated listing without a continuation token"),
                    ))
                }
                _ => return Ok(out),
            }
        }
    }

    /// Starts a multipart upload of `key`; its upload id.
    fn create_upload(&self, name: &str, key: &str) -> Result<String> {
        let req = Req::new(Method::POST, Some(key)).query("uploads", "");
        let doc = self
            .client
            .send(&req, &[])
            .and_then(|a| a.xml())
            .map_err(|f| self.fail(Some(name), f))?;
        match doc.text_of("UploadId") {
            Some(id) if !id.is_empty() => Ok(id),
            _ => Err(self.fail(
                Some(name),
                Failure::protocol("CreateMultipartUpload answered no UploadId"),
            )),
        }
    }

    /// Uploads part `n`; its ETag. The body's SHA-256 is signed, so the server checks it.
    fn upload_part(&self, key: &str, upload_id: &str, n: u32, body: Bytes) -> Result<String> {
        let req = Req::new(Method::PUT, Some(key))
            .query("partNumber", n.to_string())
            .query("uploadId", upload_id)
            .body(body);
        let url = self.cfg().object_url(Some(key));
        let a = self
            .client
            .send(&req, &[])
            .map_err(|f| f.into_error(&url, self.cfg()))?;
        a.header("etag").ok_or_else(|| {
            Failure::protocol(format!("UploadPart {n} answered no ETag"))
                .into_error(&url, self.cfg())
        })
    }

    /// Completes an upload from its parts. With `if_absent`, `Ok(false)` (nothing
    /// published) when `name` exists: checked first, and `If-None-Match: *` sent with the
    /// completion for servers that honour it.
    fn complete(
        &self,
        name: &str,
        key: &str,
        upload_id: &str,
        parts: &BTreeMap<u32, String>,
        if_absent: bool,
    ) -> Result<bool> {
        if if_absent && self.head(name)?.is_some() {
            return Ok(false);
        }
        let mut body = String::from("<CompleteMultipartUpload>");
        for (n, etag) in parts {
            body.push_str(&format!(
                "<Part><PartNumber>{n}</PartNumber><ETag>{}</ETag></Part>",
                xml::escape(etag)
            ));
        }
        body.push_str("</CompleteMultipartUpload>");
        let mut req = Req::new(Method::POST, Some(key))
            .query("uploadId", upload_id)
            .header("Content-Type", "application/xml")
            .body(Bytes::from(body));
        if if_absent {
            req = req.header("If-None-Match", "*");
        }
        let a = self
            .client
            .send(&req, &[412])
            .map_err(|f| self.fail(Some(name), f))?;
        if a.status == 412 {
            return Ok(false);
        }
        // A 200 may still carry an error (S3 reports late failures in the body).
        let doc = a.xml().map_err(|f| self.fail(Some(name), f))?;
        if doc.name == "Error" {
            let f = client::classify(
                500,
                &doc.text_of("Code").unwrap_or_default(),
                &doc.text_of("Message").unwrap_or_default(),
                false,
            );
            return Err(self.fail(Some(name), f));
        }
        Ok(true)
    }

    /// Aborts an upload whose parts are of no use; a failure only leaves them for the
    /// bucket's lifecycle rule (docs/STORAGE.md).
    fn abort_quietly(&self, key: &str, upload_id: &str) {
        let req = Req::new(Method::DELETE, Some(key)).query("uploadId", upload_id);
        if let Err(f) = self.client.send(&req, &[]) {
            log::warn!(
                "{}: cannot abort upload {upload_id}: {f}",
                self.cfg().object_url(Some(key))
            );
        }
    }

    /// The unfinished uploads of exactly `key`: (upload id, initiated), oldest first.
    fn uploads_of(&self, name: &str, key: &str) -> Result<Vec<(String, String)>> {
        let mut out: Vec<(String, String)> = self
            .uploads_under(name, key)?
            .into_iter()
            .filter(|(k, _, _)| k == key)
            .map(|(_, id, at)| (id, at))
            .collect();
        out.sort_by(|a, b| a.1.cmp(&b.1));
        Ok(out)
    }

    /// The multipart uploads in progress under the key prefix `prefix` (`name` for
    /// messages): (key, upload id, initiated).
    fn uploads_under(&self, name: &str, prefix: &str) -> Result<Vec<(String, String, String)>> {
        let mut out = Vec::new();
        let mut markers: Option<(String, String)> = None;
        loop {
            let mut req = Req::new(Method::GET, None)
                .query("uploads", "")
                .query("prefix", prefix);
            if let Some((k, u)) = &markers {
                req = req
                    .query("key-marker", k.clone())
                    .query("upload-id-marker", u.clone());
            }
            let doc = self
                .client
                .send(&req, &[])
                .and_then(|a| a.xml())
                .map_err(|f| self.fail(Some(name), f))?;
            for u in doc.all("Upload") {
                out.push((
                    u.text_of("Key").unwrap_or_default(),
                    u.text_of("UploadId").unwrap_or_default(),
                    u.text_of("Initiated").unwrap_or_default(),
                ));
            }
            match (
                doc.text_of("IsTruncated").as_deref(),
                doc.text_of("NextKeyMarker"),
                doc.text_of("NextUploadIdMarker"),
            ) {
                (Some("true"), Some(k), Some(u)) if !k.is_empty() => markers = Some((k, u)),
                _ => break,
            }
        }
        Ok(out)
    }

    /// The parts an upload holds: number -> (size, ETag). `None` when the upload is gone.
    fn parts_of(
        &self,
        name: &str,
        key: &str,
        upload_id: &str,
    ) -> Result<Option<BTreeMap<u32, (u64, String)>>> {
        let mut out = BTreeMap::new();
        let mut marker: Option<String> = None;
        loop {
            let mut req = Req::new(Method::GET, Some(key)).query("uploadId", upload_id);
            if let Some(m) = &marker {
                req = req.query("part-number-marker", m.clone());
            }
            let doc = match self.client.send(&req, &[]).and_then(|a| a.xml()) {
                Ok(d) => d,
                Err(f) if is_absent(&f) => return Ok(None),
                Err(f) => return Err(self.fail(Some(name), f)),
            };
            for p in doc.all("Part") {
                let n = p.text_of("PartNumber").and_then(|s| s.parse().ok());
                let size = p.text_of("Size").and_then(|s| s.parse().ok());
                if let (Some(n), Some(size)) = (n, size) {
                    out.insert(n, (size, p.text_of("ETag").unwrap_or_default()));
                }
            }
            match (
                doc.text_of("IsTruncated").as_deref(),
                doc.text_of("NextPartNumberMarker"),
            ) {
                (Some("true"), Some(m)) if !m.is_empty() => marker = Some(m),
                _ => return Ok(Some(out)),
            }
        }
    }

    /// Copies `src_key` of `src_bucket` (`len` bytes) to `name` on the server: one
    /// CopyObject, or a multipart upload of UploadPartCopy ranges when it is larger than
    /// one copy may be. Failures keep their kind (`Denied` for a source the credentials
    /// may not read).
    fn server_copy(&self, src_bucket: &str, src_key: &str, name: &str, len: u64) -> Result<()> {
        let source = format!(
            "/{src_bucket}/{}",
            crate::sigv4::uri_encode(src_key, true).trim_start_matches('/')
        );
        let key = self.cfg().key(name);
        let check = |doc: xml::Node| -> Result<xml::Node> {
            if doc.name == "Error" {
                return Err(self.fail(
                    Some(name),
                    client::classify(
                        500,
                        &doc.text_of("Code").unwrap_or_default(),
                        &doc.text_of("Message").unwrap_or_default(),
                        false,
                    ),
                ));
            }
            Ok(doc)
        };
        if len <= MAX_COPY {
            let req = Req::new(Method::PUT, Some(&key)).header("x-amz-copy-source", source);
            let doc = self
                .client
                .send(&req, &[])
                .and_then(|a| a.xml())
                .map_err(|f| self.fail(Some(name), f))?;
            return check(doc).map(|_| ());
        }
        let part = COPY_PART.max(len.div_ceil(10_000));
        let upload_id = self.create_upload(name, &key)?;
        let mut parts = BTreeMap::new();
        let mut at = 0;
        let mut n = 1u32;
        let copied = (|| -> Result<()> {
            while at < len {
                let end = (at + part).min(len);
                let req = Req::new(Method::PUT, Some(&key))
                    .query("partNumber", n.to_string())
                    .query("uploadId", upload_id.clone())
                    .header("x-amz-copy-source", source.clone())
                    .header("x-amz-copy-source-range", format!("bytes={at}-{}", end - 1));
                let doc = self
                    .client
                    .send(&req, &[])
                    .and_then(|a| a.xml())
                    .map_err(|f| self.fail(Some(name), f))?;
                let etag = check(doc)?.text_of("ETag").unwrap_or_default();
                parts.insert(n, etag);
                at = end;
                n += 1;
            }
            self.complete(name, &key, &upload_id, &parts, false)
                .map(|_| ())
        })();
        if copied.is_err() {
            self.abort_quietly(&key, &upload_id);
        }
        copied
    }

    /// Whether the bucket exists (HEAD bucket); refusals are errors.
    fn bucket_exists(&self) -> Result<bool> {
        match self.client.send(&Req::new(Method::HEAD, None), &[]) {
            Ok(_) => Ok(true),
            Err(f) if f.status == 404 => Ok(false),
            Err(f) => Err(self.fail(None, f)),
        }
    }

    fn no_bucket(&self) -> Error {
        client::classify(404, "NoSuchBucket", "the bucket does not exist", false)
            .into_error(&self.cfg().url(), self.cfg())
    }
}

impl Store for S3Store {
    fn url(&self) -> String {
        self.inner.cfg().url()
    }

    fn describe(&self, name: Name) -> String {
        self.inner.describe(name)
    }

    fn traits(&self) -> Traits {
        Traits {
            durable_partial: false,
        }
    }

    fn create_root(&self) -> Result<()> {
        if !self.inner.bucket_exists()? {
            return Err(self.inner.no_bucket());
        }
        // The probe's PUT proves the bucket writable with these credentials.
        self.inner.conditional_puts().map(|_| ())
    }

    /// The root is the bucket (a prefix exists as soon as a name is put under it).
    fn root_exists(&self) -> Result<bool> {
        self.inner.bucket_exists()
    }

    // A log (the journal) reads as the one file it is on a local disk: `len`, `get` and
    // `reader` of a name at the vault's top see its segments joined.

    fn len(&self, name: Name) -> Result<Option<u64>> {
        if let Some(len) = journal_log::whole_len(&self.inner, name)? {
            return Ok(Some(len));
        }
        Ok(self.inner.head(name)?.map(|(len, _)| len))
    }

    fn get(&self, name: Name, max: u64) -> Result<Option<Vec<u8>>> {
        if let Some(body) = journal_log::read_whole(&self.inner, name, max)? {
            return Ok(Some(body));
        }
        self.inner.get_bytes(name, max)
    }

    fn reader(&self, name: Name) -> Result<Option<Box<dyn Read + Send>>> {
        if let Some(body) = journal_log::read_whole(&self.inner, name, MAX_LOG_READ)? {
            return Ok(Some(Box::new(io::Cursor::new(body))));
        }
        let key = self.inner.cfg().key(name);
        let mut req = Req::new(Method::GET, Some(&key));
        req.timeout = Some(client::STREAM_TIMEOUT);
        match self.inner.client.send(&req, &[]) {
            Ok(a) => Ok(Some(Box::new(a.response))),
            Err(f) if is_absent(&f) => Ok(None),
            Err(f) => Err(self.inner.fail(Some(name), f)),
        }
    }

    fn open(&self, name: Name) -> Result<Option<Arc<dyn ReadAt>>> {
        let Some((len, _)) = self.inner.head(name)? else {
            return Ok(None);
        };
        Ok(Some(Arc::new(RangeReader {
            inner: Arc::clone(&self.inner),
            name: name.to_string(),
            len,
        })))
    }

    fn list(&self, prefix: &str) -> Result<Vec<Listed>> {
        let base = &self.inner.cfg().prefix;
        let keys = self.inner.list_keys(&format!("{base}{prefix}"))?;
        // Journal segments (`<log>.d/<offset>`) are listed as their log. The store's own
        // objects (the lock, a probe) are not vault names: a local vault has no such files
        // either, and an encrypt into a fresh prefix must find it empty.
        let mut names: BTreeMap<String, u64> = BTreeMap::new();
        for (key, size) in keys {
            let Some(name) = key.strip_prefix(base.as_str()) else {
                continue;
            };
            if name == lock::LOCK_NAME || name.starts_with(PROBE_PREFIX) {
                continue;
            }
            let name = journal_log::log_of_segment(name).unwrap_or(name);
            *names.entry(name.to_string()).or_default() += size;
        }
        Ok(names
            .into_iter()
            .map(|(name, len)| Listed {
                name,
                len,
                file: true,
            })
            .collect())
    }

    fn put_new(&self, name: Name, data: &[u8]) -> Result<bool> {
        self.inner.put(name, Bytes::copy_from_slice(data), true)
    }

    fn replace(&self, name: Name, data: &[u8]) -> Result<()> {
        self.inner.put(name, Bytes::copy_from_slice(data), false)?;
        // A log of that name (the journal replaced by its receipt) goes.
        journal_log::remove_segments(&self.inner, name)
    }

    fn create_file(&self, name: Name) -> Result<Box<dyn NewFile>> {
        Ok(Box::new(StreamFile::new(Arc::clone(&self.inner), name)))
    }

    fn remove(&self, name: Name) -> Result<()> {
        self.inner.delete(name)?;
        journal_log::remove_segments(&self.inner, name)
    }

    fn sweep_uploads(&self, prefix: &str, keep: &HashSet<String>) -> Result<()> {
        let cfg = self.inner.cfg();
        let base = cfg.key("");
        for (key, id, _) in self.inner.uploads_under(prefix, &cfg.key(prefix))? {
            let name = key.strip_prefix(&base).unwrap_or(&key);
            if !keep.contains(name) {
                self.inner.abort_quietly(&key, &id);
            }
        }
        Ok(())
    }

    fn rename_over(&self, from: Name, to: Name) -> Result<()> {
        let Some((len, _)) = self.inner.head(from)? else {
            return Err(Error::Runtime(format!(
                "{}: missing, cannot be put in place of {to}",
                self.describe(from)
            )));
        };
        // No rename on object storage: a copy on the server (atomic for readers of `to`:
        // the old object or the new one), then `from` goes.
        let cfg = self.inner.cfg();
        self.inner
            .server_copy(&cfg.bucket, &cfg.key(from), to, len)?;
        self.inner.delete(from)
    }

    fn create_object(&self, name: Name, shape: Shape) -> Result<Box<dyn ObjectWriter>> {
        let geo = match Geometry::of(shape) {
            Some(g) if !g.single_put() => g,
            _ => {
                return Ok(Box::new(BufferedWriter {
                    inner: Arc::clone(&self.inner),
                    name: name.to_string(),
                    data: Vec::with_capacity(shape.len.unwrap_or(0) as usize),
                    len: shape.len,
                }))
            }
        };
        let key = self.inner.cfg().key(name);
        let upload_id = self.inner.create_upload(name, &key)?;
        Ok(Box::new(
            MultipartWriter::new(
                Arc::clone(&self.inner),
                name,
                key,
                upload_id,
                geo,
                BTreeMap::new(),
            )
            .open_length(shape.len.is_none()),
        ))
    }

    fn resume_object(
        &self,
        name: Name,
        shape: Shape,
        kept: u64,
    ) -> Result<Option<Box<dyn ObjectWriter>>> {
        let Some(geo) = Geometry::of(shape).filter(|g| !g.single_put()) else {
            // One PUT at finish: nothing of it survives an interruption.
            return Ok(None);
        };
        let key = self.inner.cfg().key(name);
        let mut uploads = self.inner.uploads_of(name, &key)?;
        // The newest upload is the one an interrupted run was writing; older ones are
        // leftovers of earlier attempts.
        let newest = uploads.pop();
        for (id, _) in &uploads {
            self.inner.abort_quietly(&key, id);
        }
        let Some((upload_id, _)) = newest else {
            return Ok(None);
        };
        let Some(listed) = self.inner.parts_of(name, &key, &upload_id)? else {
            return Ok(None);
        };
        // Keep the whole parts that cover [0, kept), each of the size the geometry gives.
        let mut keep = BTreeMap::new();
        let mut covered = 0;
        for n in 1..=geo.parts {
            if covered >= kept {
                break;
            }
            let (s, e) = geo.range(n);
            match listed.get(&n) {
                Some((size, etag)) if *size == e - s => {
                    keep.insert(n, etag.clone());
                    covered = e;
                }
                _ => break,
            }
        }
        if covered != kept {
            // Not what an earlier barrier made durable (or not on a part boundary).
            self.inner.abort_quietly(&key, &upload_id);
            return Ok(None);
        }
        // Parts past the checkpoint that the interrupted run sent: the caller writes them
        // again (it has no digests of them), and an identical part is not sent twice.
        let sent: BTreeMap<u32, (u64, String)> = listed
            .into_iter()
            .filter(|(n, _)| !keep.contains_key(n))
            .collect();
        Ok(Some(Box::new(
            MultipartWriter::new(Arc::clone(&self.inner), name, key, upload_id, geo, keep)
                .with_sent(sent)
                .open_length(shape.len.is_none()),
        )))
    }

    fn barrier(&self) -> Result<()> {
        // Single PUTs, log appends and completions are durable when they return; parts
        // are when the pool has them acknowledged.
        self.inner.pool.wait_idle()
    }

    fn link_from(&self, from: &dyn Store, name: Name) -> Result<bool> {
        let Some(Ok(src)) = S3Url::parse(&from.url()) else {
            return Ok(false);
        };
        if src.flavor != self.inner.cfg().flavor {
            return Ok(false);
        }
        // Both stores read the same environment, so the same endpoint and credentials.
        let Some(len) = from.len(name)? else {
            // Absent: the caller's copy reports it.
            return Ok(false);
        };
        match self
            .inner
            .server_copy(&src.bucket, &format!("{}{name}", src.prefix), name, len)
        {
            Ok(()) => Ok(true),
            // Another account's bucket the credentials cannot read: the caller copies.
            Err(Error::Store {
                kind: StoreErrorKind::Denied,
                ..
            }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn create_log(&self, name: Name, first: &[u8]) -> Result<Option<Box<dyn Log>>> {
        journal_log::create(&self.inner, name, first)
    }

    fn open_log(&self, name: Name) -> Result<Option<(Box<dyn Log>, Vec<u8>)>> {
        journal_log::open(&self.inner, name)
    }

    fn lock(&self, create: bool) -> Result<Box<dyn LockGuard>> {
        if create {
            self.create_root()?;
        } else if !self.inner.bucket_exists()? {
            return Err(self.inner.no_bucket());
        }
        Ok(Box::new(lock::S3Lock::acquire(&self.inner)?))
    }
}

/// Ranged GETs of one object: a read of a block or more is one `Range:` request; smaller
/// ones are served from cached blocks ([`READ_BLOCK`]).
struct RangeReader {
    inner: Arc<Inner>,
    name: String,
    len: u64,
}

impl ReadAt for RangeReader {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let end = offset + buf.len() as u64;
        if end > self.len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{}: read past the end", self.inner.describe(&self.name)),
            ));
        }
        if (buf.len() as u64) < READ_BLOCK {
            return self.read_blocks(buf, offset);
        }
        self.read_range(buf, offset)
    }
}

impl RangeReader {
    /// `buf` from the cached blocks that cover it, fetching the missing ones.
    fn read_blocks(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let idx = at / READ_BLOCK;
            let key = (self.name.clone(), idx);
            let cached = crate::store::s3::upload::lock(&self.inner.blocks).get(&key);
            let block = match cached {
                Some(b) => b,
                None => {
                    let start = idx * READ_BLOCK;
                    let mut b = vec![0u8; (READ_BLOCK.min(self.len - start)) as usize];
                    self.read_range(&mut b, start)?;
                    let b = Arc::new(b);
                    crate::store::s3::upload::lock(&self.inner.blocks).put(key, Arc::clone(&b));
                    b
                }
            };
            let from = (at - idx * READ_BLOCK) as usize;
            let n = (block.len() - from).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&block[from..from + n]);
            done += n;
        }
        Ok(())
    }

    /// One ranged GET of `buf.len()` bytes at `offset` (within the object).
    fn read_range(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset + buf.len() as u64;
        let Some(a) = self
            .inner
            .get(&self.name, Some((offset, end)))
            .map_err(io::Error::other)?
        else {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{}: the object is gone", self.inner.describe(&self.name)),
            ));
        };
        if a.status != 206 && !(offset == 0 && end == self.len) {
            return Err(io::Error::other(format!(
                "{}: the server ignored the Range header (HTTP {})",
                self.inner.describe(&self.name),
                a.status
            )));
        }
        let mut r = a.response;
        r.read_exact(buf)
    }
}
