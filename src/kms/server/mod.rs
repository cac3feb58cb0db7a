//! `envseal kms serve`: an HTTP(S) server for the Alibaba Cloud KMS RPC API 2016-01-20
//! (docs/KMS-WIRE.md), so the official SDKs and envseal's own `aliyun:` provider can use a local
//! [`KeyStore`] unchanged.
//!
//! One request: read (body ≤ 1 MiB) → decode query and form parameters → authenticate
//! ([`auth`]: v1 or v3 signature, time window, nonce) → run the action on tokio's blocking
//! pool ([`actions`]) → JSON reply with a `RequestId`, errors as the gateway writes them
//! ([`reply`]). Each request yields one [`AccessRecord`] for the caller to log.

pub mod actions;
pub mod auth;
pub mod credentials;
pub mod limits;
pub mod reply;

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;

use self::auth::{Authenticator, Incoming};
use self::credentials::Credentials;
use self::reply::ApiError;
use super::aliyun::new_uuid;
use super::keystore::KeyStore;
use super::{KmsError, KmsErrorKind};

/// Largest request body accepted (parameters normally travel in the query).
const MAX_BODY: usize = 1 << 20;
/// Time allowed for a TLS handshake or for a request's headers to arrive.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for a request's body to arrive (a slow body must not hold a connection).
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for requests in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What the server tells its caller about each request. Holds no secrets, plaintexts or blobs.
#[derive(Debug, Clone)]
pub struct AccessRecord {
    pub peer: SocketAddr,
    /// The action (from the request; unverified when authentication failed).
    pub action: String,
    pub key_id: Option<String>,
    pub status: u16,
    pub code: Option<String>,
    pub request_id: String,
    pub elapsed: Duration,
    /// Why a 500 happened (store error), for the operator only.
    pub detail: Option<String>,
}

impl fmt::Display for AccessRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} action={} key={} status={} code={} request_id={} ms={}",
            self.peer,
            self.action,
            self.key_id.as_deref().unwrap_or("-"),
            self.status,
            self.code.as_deref().unwrap_or("-"),
            self.request_id,
            self.elapsed.as_millis()
        )?;
        if let Some(d) = &self.detail {
            write!(f, " error={d:?}")?;
        }
        Ok(())
    }
}

/// Receives one [`AccessRecord`] per request (the binary prints them on stderr).
pub type AccessLog = Arc<dyn Fn(&AccessRecord) + Send + Sync>;

struct State {
    store: Arc<KeyStore>,
    auth: Authenticator,
    access_log: AccessLog,
    conns: Arc<limits::Conns>,
}

/// The server: a key store, the accepted credentials, optional TLS.
pub struct Server {
    state: Arc<State>,
    tls: Option<TlsAcceptor>,
}

impl Server {
    pub fn new(
        store: KeyStore,
        credentials: Credentials,
        tls: Option<Arc<rustls::ServerConfig>>,
        access_log: AccessLog,
    ) -> Self {
        Server {
            state: Arc::new(State {
                store: Arc::new(store),
                auth: Authenticator::new(credentials),
                access_log,
                conns: Arc::new(limits::Conns::new(limits::max_connections())),
            }),
            tls: tls.map(TlsAcceptor::from),
        }
    }

    /// Serves connections from `listener` until `shutdown` completes, then stops accepting,
    /// lets requests in flight finish (up to 10 s) and returns.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut conns = tokio::task::JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and similar: back off, keep serving.
                        log::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Some(slot) = self.state.conns.admit(peer.ip()) else {
                log::info!(
                    "{peer}: refused, {} connections open",
                    limits::MAX_CONNECTIONS
                );
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let state = self.state.clone();
            let tls = self.tls.clone();
            let stop = stop_rx.clone();
            conns.spawn(async move {
                let close = slot.close.clone();
                tokio::select! {
                    _ = serve(tls, stream, peer, state, stop, slot) => {}
                    // Made room for another connection: dropping the future closes it.
                    _ = close.notified() => log::debug!("{peer}: closed to make room"),
                }
            });
            // Reap finished connections so the set does not grow without bound.
            while conns.try_join_next().is_some() {}
        }
        drop(listener);
        let _ = stop_tx.send(true);
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
            while conns.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            conns.abort_all();
        }
        Ok(())
    }
}

/// One connection: the TLS handshake (bounded), then HTTP.
async fn serve(
    tls: Option<TlsAcceptor>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    state: Arc<State>,
    stop: tokio::sync::watch::Receiver<bool>,
    slot: limits::Slot,
) {
    let authed = slot.authed.clone();
    match tls {
        Some(acceptor) => {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(s)) => serve_connection(TokioIo::new(s), peer, state, stop, authed).await,
                Ok(Err(e)) => log::info!("{peer}: TLS handshake failed: {e}"),
                Err(_) => log::info!("{peer}: TLS handshake timed out"),
            }
        }
        None => serve_connection(TokioIo::new(stream), peer, state, stop, authed).await,
    }
    drop(slot);
}

async fn serve_connection<I>(
    io: TokioIo<I>,
    peer: SocketAddr,
    state: Arc<State>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    authed: Arc<std::sync::atomic::AtomicBool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let (state, authed) = (state.clone(), authed.clone());
        async move { Ok::<_, Infallible>(handle(state, peer, req, &authed).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT)
        .serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                log::debug!("{peer}: connection error: {e}");
            }
        }
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

async fn handle(
    state: Arc<State>,
    peer: SocketAddr,
    req: Request<hyper::body::Incoming>,
    authed: &std::sync::atomic::AtomicBool,
) -> Response<Full<Bytes>> {
    let start = Instant::now();
    let request_id = new_uuid().to_ascii_uppercase();
    let host = req
        .headers()
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost")
        .to_string();
    let (incoming, result) = match read_request(req).await {
        Ok(incoming) => {
            let result = process(&state, &incoming, &request_id, authed).await;
            (Some(incoming), result)
        }
        Err(e) => (None, Err(e)),
    };
    let log_param = |name: &str| {
        incoming
            .as_ref()
            .and_then(|r| r.param(name).or_else(|| r.header(name)))
            .map(loggable)
    };
    let (response, record) = match result {
        Ok(mut ok) => {
            let key_id = ok.key_id.take().or_else(|| log_param("KeyId"));
            // Moved, not copied: the only copy of a plaintext reply is the one hyper sends.
            let body = std::mem::take(&mut *ok.body);
            (
                json_response(200, &request_id, Bytes::from(body)),
                (200, None, key_id, None),
            )
        }
        Err(e) => {
            let body = serde_json::json!({
                "RequestId": request_id,
                "HostId": host,
                "Code": e.code,
                "Message": e.message,
                "Recommend": format!("https://api.aliyun.com/troubleshoot?q={}&product=Kms", e.code),
            });
            let bytes = serde_json::to_vec(&body).unwrap_or_default();
            (
                json_response(e.status, &request_id, Bytes::from(bytes)),
                (e.status, Some(e.code), log_param("KeyId"), e.detail),
            )
        }
    };
    let (status, code, key_id, detail) = record;
    (state.access_log)(&AccessRecord {
        peer,
        action: log_param("Action")
            .or_else(|| log_param("x-acs-action"))
            .unwrap_or_else(|| "-".into()),
        key_id,
        status,
        code,
        request_id,
        elapsed: start.elapsed(),
        detail,
    });
    response
}

/// Authenticates and runs the action on the blocking pool (the key store does file I/O and
/// takes locks).
async fn process(
    state: &Arc<State>,
    incoming: &Incoming,
    request_id: &str,
    conn_authed: &std::sync::atomic::AtomicBool,
) -> Result<actions::Success, ApiError> {
    let authed = state
        .auth
        .authenticate(incoming, time::OffsetDateTime::now_utc())?;
    conn_authed.store(true, std::sync::atomic::Ordering::Relaxed);
    let store = state.store.clone();
    let request_id = request_id.to_string();
    // The request is small; a copy keeps the closure 'static.
    let req = Incoming {
        method: incoming.method.clone(),
        query: incoming.query.clone(),
        form: incoming.form.clone(),
        headers: Vec::new(),
        body: Vec::new(),
    };
    tokio::task::spawn_blocking(move || {
        actions::dispatch(&store, &authed.action, &req, &request_id)
    })
    .await
    .map_err(|e| ApiError {
        detail: Some(format!("action task failed: {e}")),
        ..ApiError::internal()
    })?
}

/// Reads method, parameters (query, and the body when it is a form), headers and body.
async fn read_request(req: Request<hyper::body::Incoming>) -> Result<Incoming, ApiError> {
    let (parts, body) = req.into_parts();
    if parts.method != Method::GET && parts.method != Method::POST {
        return Err(ApiError::new(
            405,
            "UnsupportedHTTPMethod",
            "Specified HTTP method is not supported; use GET or POST.",
        ));
    }
    if parts.uri.path() != "/" {
        return Err(ApiError::new(
            404,
            "InvalidAction.NotFound",
            "Specified api is not found, please check your url and method.",
        ));
    }
    let collected = tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_BODY).collect())
        .await
        .map_err(|_| {
            ApiError::new(
                408,
                "RequestTimeout",
                "The request body did not arrive in time.",
            )
        })?;
    let body = collected
        .map_err(|_| {
            ApiError::new(
                400,
                "InvalidParameter",
                "The request body is too large or unreadable.",
            )
        })?
        .to_bytes()
        .to_vec();
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    // Form rules (`+` is a space) before any re-encoding (docs/KMS-WIRE.md §1).
    let decode = |s: &[u8]| -> Vec<(String, String)> {
        url::form_urlencoded::parse(s).into_owned().collect()
    };
    let query = decode(parts.uri.query().unwrap_or("").as_bytes());
    let is_form = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim()
                .to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        });
    let form = if is_form { decode(&body) } else { Vec::new() };
    Ok(Incoming {
        method: parts.method.as_str().to_string(),
        query,
        form,
        headers,
        body,
    })
}

fn json_response(status: u16, request_id: &str, body: Bytes) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json;charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert("x-acs-request-id", v);
    }
    resp
}

/// A request-supplied value made safe for one log line (no control characters, bounded).
fn loggable(s: &str) -> String {
    s.chars()
        .take(128)
        .map(|c| if c.is_control() || c == ' ' { '_' } else { c })
        .collect()
}

/// Loads a PEM certificate chain and private key for TLS (HTTP/1.1).
pub fn load_tls(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, KmsError> {
    let bad = |what: &Path, why: String| {
        KmsError::new(
            KmsErrorKind::InvalidArgument,
            format!("{}: {why}", what.display()),
        )
    };
    let read = |p: &Path| std::fs::read(p).map_err(|e| bad(p, e.to_string()));
    let cert_pem = read(cert)?;
    let key_pem = zeroize::Zeroizing::new(read(key)?);
    let certs = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(cert, format!("not a PEM certificate chain: {e}")))?;
    if certs.is_empty() {
        return Err(bad(cert, "no certificate found".into()));
    }
    let private_key = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|e| bad(key, format!("not a PEM private key: {e}")))?
        .ok_or_else(|| bad(key, "no private key found".into()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, private_key)
        .map_err(|e| bad(cert, format!("certificate and key do not fit: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
