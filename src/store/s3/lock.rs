//! The writers' lock on object storage: the object `lock.json` (host, pid, a random token,
//! an expiry), created with `If-None-Match: *`, its lease renewed by a thread while held
//! (`If-Match` its ETag), removed when the guard drops. A lease that expired (its holder
//! died) is taken over, conditional on the ETag that was read. docs/STORAGE.md, "One
//! writer at a time". A lease whose holder is a process of this host that no longer exists
//! (killed) is taken over at once.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use reqwest::Method;
use serde::{Deserialize, Serialize};

use super::client::Req;
use super::upload::lock as guard;
use super::Inner;
use crate::error::{Error, Result};
use crate::store::LockGuard;

/// The lock object's name in the vault.
pub const LOCK_NAME: &str = "lock.json";
/// How long a lease lasts without renewal: a killed holder blocks others this long.
pub const LEASE: Duration = Duration::from_secs(120);
/// How often the holder renews it.
pub const RENEW_EVERY: Duration = Duration::from_secs(30);

#[derive(Serialize, Deserialize)]
struct Lease {
    host: String,
    pid: u32,
    token: String,
    /// Unix seconds.
    expires: u64,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

pub struct S3Lock {
    inner: Arc<Inner>,
    token: String,
    stop: Arc<(Mutex<bool>, Condvar)>,
    renewer: Option<JoinHandle<()>>,
}

impl LockGuard for S3Lock {}

impl S3Lock {
    pub fn acquire(inner: &Arc<Inner>) -> Result<S3Lock> {
        let mut r = [0u8; 16];
        getrandom::getrandom(&mut r).map_err(|e| Error::Runtime(format!("random: {e}")))?;
        let token = hex::encode(r);
        let body = lease_body(&token, inner.lease.0)?;
        let key = inner.cfg().key(LOCK_NAME);
        let url = inner.describe(LOCK_NAME);
        let mut etag = None;
        for _ in 0..3 {
            // Created only when absent.
            let created = if inner.conditional_puts()? {
                let req = Req::new(Method::PUT, Some(&key))
                    .header("If-None-Match", "*")
                    .body(body.clone());
                match inner.client.send(&req, &[412]) {
                    Ok(a) if a.status == 412 => None,
                    Ok(a) => Some(a.header("etag").unwrap_or_default()),
                    Err(f) => return Err(f.into_error(&url, inner.cfg())),
                }
            } else if inner.head(LOCK_NAME)?.is_none() {
                // The server ignores conditions: a HEAD, then a PUT (the window between
                // them is documented).
                let req = Req::new(Method::PUT, Some(&key)).body(body.clone());
                let a = inner
                    .client
                    .send(&req, &[])
                    .map_err(|f| f.into_error(&url, inner.cfg()))?;
                Some(a.header("etag").unwrap_or_default())
            } else {
                None
            };
            if let Some(t) = created {
                etag = Some(t);
                break;
            }
            // Held: by a live holder (refused), or an expired lease (taken over).
            let Some(a) = inner.get(LOCK_NAME, None)? else {
                continue; // released meanwhile
            };
            let held_tag = a.header("etag").unwrap_or_default();
            let text = a
                .bytes(64 << 10)
                .map_err(|f| f.into_error(&url, inner.cfg()))?;
            let lease: Option<Lease> = serde_json::from_slice(&text).ok();
            if let Some(l) = &lease {
                // A holder on this host whose process is gone (killed) holds nothing: the
                // same command run again need not wait for its lease to lapse.
                let dead = l.host == hostname()
                    && !std::path::Path::new("/proc")
                        .join(l.pid.to_string())
                        .exists();
                if l.expires > now() && !dead {
                    return Err(Error::Locked {
                        path: inner.cfg().url().into(),
                        pid: (l.host == hostname()).then_some(l.pid),
                    });
                }
            }
            // Expired (or unreadable, which no envseal writes): take it over if it is
            // still the one read.
            let req = Req::new(Method::PUT, Some(&key))
                .header("If-Match", held_tag)
                .body(body.clone());
            match inner.client.send(&req, &[412]) {
                Ok(a) if a.status == 412 => continue,
                Ok(a) => {
                    log::warn!("{url}: took over the lock of a run that is gone (its lease lapsed or its process died)");
                    etag = Some(a.header("etag").unwrap_or_default());
                    break;
                }
                Err(f) => return Err(f.into_error(&url, inner.cfg())),
            }
        }
        let Some(etag) = etag else {
            return Err(Error::Locked {
                path: inner.cfg().url().into(),
                pid: None,
            });
        };
        let etag = Arc::new(Mutex::new(etag));
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let renewer = {
            let (inner, etag, stop, token) = (
                Arc::clone(inner),
                Arc::clone(&etag),
                Arc::clone(&stop),
                token.clone(),
            );
            std::thread::Builder::new()
                .name("envseal-s3-lease".into())
                .spawn(move || renew(&inner, &etag, &stop, &token))
                .map_err(|e| Error::Runtime(format!("cannot start the lease thread: {e}")))?
        };
        Ok(S3Lock {
            inner: Arc::clone(inner),
            token,
            stop,
            renewer: Some(renewer),
        })
    }
}

fn lease_body(token: &str, lease: Duration) -> Result<Bytes> {
    let lease = Lease {
        host: hostname(),
        pid: std::process::id(),
        token: token.to_string(),
        expires: now() + lease.as_secs(),
    };
    serde_json::to_vec(&lease)
        .map(Bytes::from)
        .map_err(|e| Error::Runtime(format!("lock: {e}")))
}

/// Renews the lease every `inner.lease.1` until told to stop.
fn renew(inner: &Inner, etag: &Mutex<String>, stop: &(Mutex<bool>, Condvar), token: &str) {
    let key = inner.cfg().key(LOCK_NAME);
    loop {
        {
            let (m, cv) = stop;
            let stopped = guard(m);
            let (stopped, _) = cv
                .wait_timeout_while(stopped, inner.lease.1, |s| !*s)
                .unwrap_or_else(|p| p.into_inner());
            if *stopped {
                return;
            }
        }
        let Ok(body) = lease_body(token, inner.lease.0) else {
            continue;
        };
        let tag = guard(etag).clone();
        let req = Req::new(Method::PUT, Some(&key))
            .header("If-Match", tag)
            .body(body);
        match inner.client.send(&req, &[412]) {
            Ok(a) if a.status == 412 => {
                log::warn!(
                    "{}: the lock was taken by another run (its lease lapsed?)",
                    inner.describe(LOCK_NAME)
                );
                return;
            }
            Ok(a) => *guard(etag) = a.header("etag").unwrap_or_default(),
            Err(f) => log::warn!("{}: cannot renew the lock: {f}", inner.describe(LOCK_NAME)),
        }
    }
}

impl Drop for S3Lock {
    fn drop(&mut self) {
        {
            let (m, cv) = &*self.stop;
            *guard(m) = true;
            cv.notify_all();
        }
        if let Some(t) = self.renewer.take() {
            let _ = t.join();
        }
        // Removed only while it is still ours.
        let ours = self
            .inner
            .get(LOCK_NAME, None)
            .ok()
            .flatten()
            .and_then(|a| a.bytes(64 << 10).ok())
            .and_then(|b| serde_json::from_slice::<Lease>(&b).ok())
            .is_some_and(|l| l.token == self.token);
        if ours {
            let key = self.inner.cfg().key(LOCK_NAME);
            let req = Req::new(Method::DELETE, Some(&key));
            if let Err(f) = self.inner.client.send(&req, &[]) {
                log::warn!(
                    "{}: cannot remove the lock: {f}",
                    self.inner.describe(LOCK_NAME)
                );
            }
        }
    }
}
