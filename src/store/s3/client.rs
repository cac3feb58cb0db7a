//! A small S3 REST client: blocking reqwest, SigV4 over the payload's SHA-256, bounded
//! retries with full jitter, errors mapped to [`StoreErrorKind`] (docs/STORAGE.md).

use std::fmt;
use std::io::Read;
use std::time::Duration;

use bytes::Bytes;
use reqwest::blocking::{Client as Http, Response};
use reqwest::Method;

use super::config::S3Config;
use super::xml;
use crate::error::{Error, Result, StoreErrorKind};
use crate::retry::{RetryPolicy, Retryable};
use crate::sigv4;

/// Connecting should take a few seconds, never as long as a transfer may.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// One request and its body (a part is at most a few tens of MiB).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// A streamed GET (the manifest, hundreds of MiB) is read as the caller consumes it.
pub const STREAM_TIMEOUT: Duration = Duration::from_secs(6 * 3600);
/// How much of an error body is read.
const MAX_ERROR_BODY: u64 = 64 << 10;
/// XML answers (listings) are a few hundred KiB at most.
const MAX_XML: u64 = 16 << 20;

/// One request. `key` is `None` for the bucket itself.
pub struct Req<'a> {
    pub method: Method,
    pub key: Option<&'a str>,
    pub query: Vec<(&'static str, String)>,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
    /// Longer than [`REQUEST_TIMEOUT`] (a streamed read).
    pub timeout: Option<Duration>,
}

impl<'a> Req<'a> {
    pub fn new(method: Method, key: Option<&'a str>) -> Req<'a> {
        Req {
            method,
            key,
            query: Vec::new(),
            headers: Vec::new(),
            body: Bytes::new(),
            timeout: None,
        }
    }
    pub fn query(mut self, k: &'static str, v: impl Into<String>) -> Self {
        self.query.push((k, v.into()));
        self
    }
    pub fn header(mut self, k: &'static str, v: impl Into<String>) -> Self {
        self.headers.push((k, v.into()));
        self
    }
    pub fn body(mut self, b: Bytes) -> Self {
        self.body = b;
        self
    }
}

/// A failed request, before it is named for the user: decided on by kind and status.
#[derive(Debug)]
pub struct Failure {
    pub kind: StoreErrorKind,
    /// HTTP status, 0 for transport failures.
    pub status: u16,
    pub detail: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

impl Retryable for Failure {
    fn is_retryable(&self) -> bool {
        self.kind.is_retryable()
    }
}

impl Failure {
    /// The user-facing error for a request on `url`, with what to do.
    pub fn into_error(self, url: &str, cfg: &S3Config) -> Error {
        let advice = match self.kind {
            StoreErrorKind::Denied => format!(
                "the service refused the request: check {} and that the credentials' policy \
                 allows this bucket (docs/STORAGE.md, \"Permissions\")",
                cfg.credential_vars()
            ),
            StoreErrorKind::NoBucket => format!(
                "bucket {:?} does not exist at {}; create it first (envseal never creates \
                 buckets) or correct the URL",
                cfg.bucket, cfg.endpoint
            ),
            StoreErrorKind::Unreachable => format!(
                "cannot reach {}; check the network and {}",
                cfg.endpoint,
                cfg.endpoint_vars()
            ),
            StoreErrorKind::Transient => {
                "the service kept failing; run the same command again later".to_string()
            }
            StoreErrorKind::Protocol | StoreErrorKind::Refused => String::new(),
        };
        let detail = if advice.is_empty() {
            self.detail
        } else {
            format!("{} ({advice})", self.detail)
        };
        Error::Store {
            url: url.to_string(),
            kind: self.kind,
            detail,
        }
    }

    pub fn protocol(detail: impl Into<String>) -> Failure {
        Failure {
            kind: StoreErrorKind::Protocol,
            status: 0,
            detail: detail.into(),
        }
    }
}

/// A response whose status was a success (or one the caller asked to see).
pub struct Answer {
    pub status: u16,
    pub response: Response,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<String> {
        self.response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }

    /// The body, at most `max` bytes (a longer one is a protocol failure).
    pub fn bytes(self, max: u64) -> std::result::Result<Vec<u8>, Failure> {
        let mut out = Vec::new();
        self.response
            .take(max + 1)
            .read_to_end(&mut out)
            .map_err(|e| transport(&e))?;
        if out.len() as u64 > max {
            return Err(Failure::protocol(format!("answer longer than {max} bytes")));
        }
        Ok(out)
    }

    pub fn xml(self) -> std::result::Result<xml::Node, Failure> {
        let body = self.bytes(MAX_XML)?;
        xml::parse(&body).map_err(|e| Failure::protocol(format!("malformed XML answer: {e}")))
    }
}

/// The HTTP side of one store.
pub struct Client {
    pub cfg: S3Config,
    http: Http,
    pub retry: RetryPolicy,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client").field("cfg", &self.cfg).finish()
    }
}

impl Client {
    pub fn new(cfg: S3Config) -> Result<Client> {
        let mut builder = Http::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .pool_max_idle_per_host(16)
            .user_agent(concat!("envseal/", env!("CARGO_PKG_VERSION")));
        if cfg.endpoint.host_str().is_some_and(is_loopback) {
            // A local server: never routed through an HTTP(S)_PROXY from the environment.
            builder = builder.no_proxy();
        }
        for cert in &cfg.extra_roots {
            builder = builder.add_root_certificate(cert.clone());
        }
        let http = crate::limits::with_sigpipe_blocked(|| builder.build()).map_err(|e| {
            Error::Runtime(format!("{}: cannot set up the HTTP client: {e}", cfg.url()))
        })?;
        Ok(Client {
            cfg,
            http,
            retry: RetryPolicy {
                max_attempts: 6,
                base_delay: Duration::from_millis(200),
                max_delay: Duration::from_secs(5),
            },
        })
    }

    /// Sends `req` with retries; any status in `accept` (besides 2xx) is returned, not
    /// turned into a failure (404 for "absent", 412 for a lost condition).
    pub fn send(&self, req: &Req, accept: &[u16]) -> std::result::Result<Answer, Failure> {
        let what = format!("{} {}", req.method, self.cfg.object_url(req.key));
        self.retry.run(&what, || self.attempt(req, accept))
    }

    fn attempt(&self, req: &Req, accept: &[u16]) -> std::result::Result<Answer, Failure> {
        let (url, host, path) = self.cfg.request_target(req.key);
        let hash = sigv4::sha256_hex(&req.body);
        let mut headers: Vec<(&str, &str)> = vec![("Host", &host), ("x-amz-content-sha256", &hash)];
        for (k, v) in &req.headers {
            headers.push((k, v));
        }
        let query: Vec<(&str, &str)> = req.query.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let signed = sigv4::sign(
            &self.cfg.credentials,
            &self.cfg.region,
            "s3",
            time::OffsetDateTime::now_utc(),
            &sigv4::Request {
                method: req.method.as_str(),
                path: &path,
                query: &query,
                headers: &headers,
                payload: b"",
                payload_hash: Some(&hash),
            },
        )
        .map_err(|e| Failure::protocol(e.to_string()))?;
        let mut full = url;
        if !query.is_empty() {
            let mut q: Vec<String> = query
                .iter()
                .map(|(k, v)| {
                    format!(
                        "{}={}",
                        sigv4::uri_encode(k, false),
                        sigv4::uri_encode(v, false)
                    )
                })
                .collect();
            q.sort();
            full.push('?');
            full.push_str(&q.join("&"));
        }
        let mut rb = self
            .http
            .request(req.method.clone(), &full)
            .header("x-amz-content-sha256", &hash);
        for (k, v) in &req.headers {
            rb = rb.header(*k, v);
        }
        for (k, v) in &signed.headers {
            rb = rb.header(*k, v);
        }
        if let Some(t) = req.timeout {
            rb = rb.timeout(t);
        }
        if !req.body.is_empty() || matches!(req.method, Method::PUT | Method::POST) {
            rb = rb.body(req.body.clone());
        }
        let response = rb.send().map_err(|e| transport(&e))?;
        let status = response.status().as_u16();
        if (200..300).contains(&status) || accept.contains(&status) {
            return Ok(Answer { status, response });
        }
        Err(service_failure(
            status,
            response,
            req.method == Method::HEAD,
        ))
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback())
}

/// A connection, TLS, timeout or read failure, with its causes spelled out (reqwest's own
/// text alone says only "error sending request").
pub fn transport(e: &(dyn std::error::Error + 'static)) -> Failure {
    Failure {
        kind: StoreErrorKind::Unreachable,
        status: 0,
        detail: crate::error::error_chain(e),
    }
}

/// Maps an error answer to a kind by its status and the S3 error code in its body.
fn service_failure(status: u16, response: Response, head: bool) -> Failure {
    let mut body = Vec::new();
    // A HEAD answer has no body; a failed read only loses the code.
    let _ = response.take(MAX_ERROR_BODY).read_to_end(&mut body);
    let (code, message) = xml::parse(&body)
        .ok()
        .map(|n| {
            (
                n.text_of("Code").unwrap_or_default(),
                n.text_of("Message").unwrap_or_default(),
            )
        })
        .unwrap_or_default();
    classify(status, &code, &message, head)
}

/// The classification itself (unit-tested).
pub fn classify(status: u16, code: &str, message: &str, head: bool) -> Failure {
    let kind = match (status, code) {
        (_, "SlowDown" | "RequestTimeout" | "InternalError" | "ServiceUnavailable") => {
            StoreErrorKind::Transient
        }
        (500..=599, _) => StoreErrorKind::Transient,
        (_, "NoSuchBucket") => StoreErrorKind::NoBucket,
        (
            _,
            "AccessDenied"
            | "SignatureDoesNotMatch"
            | "InvalidAccessKeyId"
            | "InvalidToken"
            | "ExpiredToken"
            | "AllAccessDisabled",
        ) => StoreErrorKind::Denied,
        (401 | 403, _) => StoreErrorKind::Denied,
        // A throttling 429 or 503 without a body.
        (429, _) => StoreErrorKind::Transient,
        _ => StoreErrorKind::Refused,
    };
    let mut detail = format!("HTTP {status}");
    if !code.is_empty() {
        detail.push_str(&format!(" {code}"));
    }
    if !message.is_empty() {
        detail.push_str(&format!(
            ": {}",
            message.chars().take(300).collect::<String>()
        ));
    } else if head && status == 403 {
        detail.push_str(": access denied");
    }
    Failure {
        kind,
        status,
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified_by_status_and_code() {
        let k = |s, c| classify(s, c, "", false).kind;
        assert_eq!(k(403, "SignatureDoesNotMatch"), StoreErrorKind::Denied);
        assert_eq!(k(403, "InvalidAccessKeyId"), StoreErrorKind::Denied);
        assert_eq!(k(403, ""), StoreErrorKind::Denied);
        assert_eq!(k(404, "NoSuchBucket"), StoreErrorKind::NoBucket);
        assert_eq!(k(503, "SlowDown"), StoreErrorKind::Transient);
        assert_eq!(k(500, ""), StoreErrorKind::Transient);
        assert_eq!(k(400, "RequestTimeout"), StoreErrorKind::Transient);
        assert_eq!(k(400, "InvalidPart"), StoreErrorKind::Refused);
        assert!(!StoreErrorKind::Denied.is_retryable());
        assert!(!StoreErrorKind::NoBucket.is_retryable());
        assert!(StoreErrorKind::Transient.is_retryable());
    }
}
