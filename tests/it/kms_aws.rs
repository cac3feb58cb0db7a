//! The `aws:` provider against moto (a local AWS KMS emulator from `.ci/pyenv`), and against
//! small test-side servers that fail on purpose (throttling, 5xx, dropped connections).

use crate::common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::servers::Moto;
use envseal::kms::aws::AwsClient;
use envseal::kms::retry::RetryPolicy;
use envseal::kms::{
    EncryptionContext, KeyProvider, KmsError, KmsErrorKind, KmsOptions, WrappedKey,
};

const REGION: &str = "us-east-1";
const ACCESS_KEY_ID: &str = "AKIDENVSEALTEST";
const SECRET: &str = "moto-secret-DO-NOT-PRINT";
const TOKEN: &str = "moto-session-token-DO-NOT-PRINT";

fn fast_retry(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(5),
    }
}

fn client_with(endpoint: &str, retry: RetryPolicy) -> AwsClient {
    client_with_timeout(endpoint, retry, Duration::from_secs(10))
}

fn client_with_timeout(endpoint: &str, retry: RetryPolicy, timeout: Duration) -> AwsClient {
    let opts = KmsOptions {
        retry,
        timeout,
        ..KmsOptions::default()
    };
    AwsClient::from_vars(endpoint, Some(REGION), &opts, |name| match name {
        "AWS_ACCESS_KEY_ID" => Some(ACCESS_KEY_ID.into()),
        "AWS_SECRET_ACCESS_KEY" => Some(SECRET.into()),
        "AWS_SESSION_TOKEN" => Some(TOKEN.into()),
        _ => None,
    })
    .expect("client")
}

fn client(endpoint: &str) -> AwsClient {
    client_with(endpoint, fast_retry(3))
}

/// Every error's text is checked: credentials never appear in it.
fn err<T>(r: Result<T, KmsError>) -> KmsError {
    let e = match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    };
    let shown = format!("{e} {e:?}");
    assert!(
        !shown.contains(SECRET) && !shown.contains(TOKEN),
        "secret in error: {shown}"
    );
    e
}

fn context() -> EncryptionContext {
    EncryptionContext::for_batch("vault-1", "batch-1")
}

/// A fresh CMK with an alias; returns (ARN, alias).
fn key_with_alias(c: &AwsClient, alias: &str) -> (String, String) {
    let arn = c.create_key("envseal test key").expect("CreateKey");
    c.create_alias(alias, &arn).expect("CreateAlias");
    (arn, alias.to_string())
}

#[test]
fn generate_by_alias_then_decrypt_encrypt_and_reencrypt() {
    let Some(moto) = Moto::start() else { return };
    let c = client(&moto.endpoint());
    let (arn, alias) = key_with_alias(&c, "alias/envseal/test");
    assert!(
        arn.starts_with("arn:aws:kms:us-east-1:") && arn.contains(":key/"),
        "{arn}"
    );

    let generated = c.generate_data_key(&alias, &context()).unwrap();
    let wrapped = &generated.wrapped;
    assert_eq!(
        wrapped.key_id, arn,
        "the key ARN, not the alias, is recorded"
    );
    assert_eq!(
        wrapped.kms,
        format!("aws:{}?region=us-east-1", moto.endpoint())
    );
    assert_eq!(wrapped.context, context());
    assert_ne!(generated.plaintext.expose(), &[0u8; 32]);

    let again = c.decrypt(wrapped).unwrap();
    assert_eq!(again.expose(), generated.plaintext.expose());
    // A blob copied through a text file may come back with a trailing newline.
    let copied = WrappedKey {
        blob: format!("{}\n", wrapped.blob),
        ..wrapped.clone()
    };
    assert_eq!(
        c.decrypt(&copied).unwrap().expose(),
        generated.plaintext.expose()
    );

    // Two data keys are different keys.
    let other = c.generate_data_key(&alias, &context()).unwrap();
    assert_ne!(other.plaintext.expose(), generated.plaintext.expose());
    assert_ne!(other.wrapped.blob, wrapped.blob);

    // Encrypt wraps an existing data key under a second CMK (rewrap --add).
    let (arn2, alias2) = key_with_alias(&c, "alias/envseal/second");
    let rewrapped = c
        .encrypt(&alias2, &generated.plaintext, &context())
        .unwrap();
    assert_eq!(rewrapped.key_id, arn2);
    assert_eq!(
        c.decrypt(&rewrapped).unwrap().expose(),
        generated.plaintext.expose()
    );

    // ReEncrypt moves the blob to the second CMK inside the KMS.
    let moved = c.re_encrypt(wrapped, &alias2).unwrap();
    assert_eq!(moved.key_id, arn2);
    assert_eq!(moved.context, context());
    assert_eq!(
        c.decrypt(&moved).unwrap().expose(),
        generated.plaintext.expose()
    );

    // A fresh client (a later run) decrypts from the recorded URL and blob alone.
    let later = envseal::kms::ProviderUrl::parse(&wrapped.kms).unwrap();
    assert_eq!(
        later,
        envseal::kms::ProviderUrl::Aws {
            endpoint: moto.endpoint(),
            region: Some(REGION.into())
        }
    );
    let c2 = client(&moto.endpoint());
    assert_eq!(
        c2.decrypt(wrapped).unwrap().expose(),
        generated.plaintext.expose()
    );
}

#[test]
fn wrong_context_unknown_key_and_tampered_blob_fail_typed() {
    let Some(moto) = Moto::start() else { return };
    let c = client(&moto.endpoint());
    let (arn, alias) = key_with_alias(&c, "alias/envseal/errors");
    let generated = c.generate_data_key(&alias, &context()).unwrap();

    // Wrong encryption context.
    let wrong = WrappedKey {
        context: EncryptionContext::for_batch("vault-1", "batch-2"),
        ..generated.wrapped.clone()
    };
    let e = err(c.decrypt(&wrong));
    assert_eq!(e.kind, KmsErrorKind::InvalidCiphertext, "{e}");
    assert_eq!(e.code.as_deref(), Some("InvalidCiphertextException"));
    assert_eq!(e.status, Some(400));
    assert_eq!(e.endpoint.as_deref(), Some(moto.endpoint().as_str()));
    // No context at all is wrong too.
    let none = WrappedKey {
        context: EncryptionContext::default(),
        ..generated.wrapped.clone()
    };
    assert_eq!(err(c.decrypt(&none)).kind, KmsErrorKind::InvalidCiphertext);

    // Tampered blob: change the last base64 characters.
    let blob = &generated.wrapped.blob;
    let tampered = WrappedKey {
        blob: format!("{}xyz=", &blob[..blob.len() - 4]),
        ..generated.wrapped.clone()
    };
    assert_ne!(&tampered.blob, blob);
    let e = err(c.decrypt(&tampered));
    assert_eq!(e.kind, KmsErrorKind::InvalidCiphertext, "{e}");

    // Unknown keys, by alias and by id.
    for missing in [
        "alias/envseal/missing",
        "11111111-2222-3333-4444-555555555555",
    ] {
        let e = err(c.generate_data_key(missing, &context()));
        assert_eq!(e.kind, KmsErrorKind::NotFound, "{e}");
        assert_eq!(e.code.as_deref(), Some("NotFoundException"));
        assert!(e.to_string().contains(missing), "{e}");
        assert!(e.to_string().contains(&moto.endpoint()), "{e}");
    }

    // The alias exists already.
    let e = err(c.create_alias(&alias, &arn));
    assert_eq!(e.kind, KmsErrorKind::InvalidArgument, "{e}");
    assert_eq!(e.code.as_deref(), Some("AlreadyExistsException"));
}

#[test]
fn missing_credentials_and_region_are_clear_errors() {
    let opts = KmsOptions::default();
    let e = err(AwsClient::from_vars(
        "http://127.0.0.1:1",
        Some(REGION),
        &opts,
        |_| None,
    ));
    assert_eq!(e.kind, KmsErrorKind::Auth);
    assert!(e.to_string().contains("AWS_ACCESS_KEY_ID"), "{e}");

    let e = err(AwsClient::from_vars(
        "http://127.0.0.1:1",
        None,
        &opts,
        |name| match name {
            "AWS_ACCESS_KEY_ID" => Some(ACCESS_KEY_ID.into()),
            "AWS_SECRET_ACCESS_KEY" => Some(SECRET.into()),
            _ => None,
        },
    ));
    assert_eq!(e.kind, KmsErrorKind::InvalidArgument);
    assert!(e.to_string().contains("region"), "{e}");
}

/// A listener that accepts connections and drops them at once, counting them.
fn dropping_listener() -> (u16, Arc<Mutex<u32>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(Mutex::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            *seen.lock().unwrap() += 1;
            drop(conn);
        }
    });
    (port, count)
}

#[test]
fn unreachable_endpoint_is_a_transport_error_after_bounded_retries() {
    // Nothing listens: connection refused.
    let endpoint = format!("http://127.0.0.1:{}", common::free_port());
    let c = client_with(&endpoint, fast_retry(3));
    let started = Instant::now();
    let e = err(c.generate_data_key("alias/x", &context()));
    assert_eq!(e.kind, KmsErrorKind::Transport, "{e}");
    assert!(e.to_string().contains(&endpoint), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(e.to_string().contains("gave up after 3 attempts"), "{e}");

    // Something listens but hangs up: every attempt reaches it, no more.
    let (port, count) = dropping_listener();
    let endpoint = format!("http://127.0.0.1:{port}");
    let c = client_with(&endpoint, fast_retry(4));
    let e = err(c.generate_data_key("alias/x", &context()));
    assert_eq!(e.kind, KmsErrorKind::Transport, "{e}");
    assert!(e.to_string().contains(&endpoint), "{e}");
    assert_eq!(*count.lock().unwrap(), 4, "one connection per attempt");

    // Something listens and never answers: each attempt times out.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    std::thread::spawn(move || {
        let held: Vec<TcpStream> = listener.incoming().flatten().collect();
        drop(held);
    });
    let c = client_with_timeout(&endpoint, fast_retry(2), Duration::from_millis(300));
    let started = Instant::now();
    let e = err(c.decrypt(&WrappedKey {
        kms: c.url(),
        key_id: "k".into(),
        blob: "AAAA".into(),
        context: context(),
    }));
    assert_eq!(e.kind, KmsErrorKind::Transport, "{e}");
    assert!(e.to_string().contains("gave up after 2 attempts"), "{e}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(600) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

/// One HTTP request as the proxy saw it.
struct Seen {
    head: String,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// A proxy in front of moto that records every request (unlike `common::servers::FaultProxy`,
/// which only counts): the first requests get canned failures (status, body), the rest are
/// forwarded. Every request is recorded.
struct RecordingProxy {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl RecordingProxy {
    fn start(upstream: u16, faults: Vec<(u16, String)>) -> RecordingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let faults = Arc::new(faults);
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let log = log.clone();
                let faults = faults.clone();
                std::thread::spawn(move || serve_one(conn, upstream, &log, &faults));
            }
        });
        RecordingProxy { port, seen }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// Reads one request from `conn`, answers a fault or forwards it, then closes.
fn serve_one(conn: TcpStream, upstream: u16, log: &Mutex<Vec<Seen>>, faults: &[(u16, String)]) {
    let mut reader = BufReader::new(conn);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let mut seen = Seen {
        head,
        body: Vec::new(),
    };
    let len: usize = seen
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    seen.body.resize(len, 0);
    if reader.read_exact(&mut seen.body).is_err() {
        return;
    }
    // Forwarded with `Connection: close`, so each connection carries exactly one request.
    let (request_line, rest) = seen.head.split_once("\r\n").unwrap();
    let forward = [
        format!("{request_line}\r\nConnection: close\r\n{rest}").into_bytes(),
        seen.body.clone(),
    ]
    .concat();
    let index = {
        let mut log = log.lock().unwrap();
        log.push(seen);
        log.len() - 1
    };
    let mut conn = reader.into_inner();
    if let Some((status, text)) = faults.get(index) {
        let reply = format!(
            "HTTP/1.1 {status} Fault\r\nContent-Type: application/x-amz-json-1.1\r\n\
             x-amzn-RequestId: fault-{index}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
            text.len()
        );
        let _ = conn.write_all(reply.as_bytes());
        return;
    }
    let mut up = TcpStream::connect(("127.0.0.1", upstream)).unwrap();
    up.write_all(&forward).unwrap();
    let mut answer = Vec::new();
    let _ = up.read_to_end(&mut answer);
    let _ = conn.write_all(&answer);
}

/// The signature botocore's own `SigV4Auth` computes for a request as it arrived, over the
/// headers the request says it signed: an independent check of `sigv4.rs`.
fn botocore_signature(pyenv: &std::path::Path, seen: &Seen) -> String {
    const SCRIPT: &str = r#"
import json, sys
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
r = json.load(sys.stdin)
req = AWSRequest(method="POST", url="http://" + r["headers"]["host"] + "/",
                 data=r["body"].encode(), headers=r["headers"])
req.context["timestamp"] = r["headers"]["x-amz-date"]
auth = SigV4Auth(Credentials(r["id"], r["secret"], r["headers"].get("x-amz-security-token")),
                 "kms", "us-east-1")
print(auth.signature(auth.string_to_sign(req, auth.canonical_request(req)), req))
"#;
    let auth = seen.header("authorization").unwrap();
    let signed = auth
        .split("SignedHeaders=")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap();
    let headers: serde_json::Map<String, serde_json::Value> = signed
        .split(';')
        .map(|h| (h.to_string(), seen.header(h).unwrap().into()))
        .collect();
    let input = serde_json::json!({
        "id": ACCESS_KEY_ID,
        "secret": SECRET,
        "headers": headers,
        "body": String::from_utf8(seen.body.clone()).unwrap(),
    });
    let mut child = Command::new(pyenv.join("bin/python"))
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "botocore script failed");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn throttling_and_server_errors_are_retried_and_every_attempt_is_signed() {
    let Some(moto) = Moto::start() else { return };
    let (_, alias) = key_with_alias(&client(&moto.endpoint()), "alias/envseal/retry");
    const THROTTLE: &str = r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#;

    // Three throttles, then success: four attempts are enough.
    let proxy = RecordingProxy::start(moto.port, vec![(400, THROTTLE.to_string()); 3]);
    let c = client_with(&proxy.endpoint(), fast_retry(4));
    let generated = c.generate_data_key(&alias, &context()).unwrap();
    {
        let seen = proxy.seen.lock().unwrap();
        assert_eq!(seen.len(), 4, "three throttled attempts and one forwarded");
        for s in seen.iter() {
            assert!(s.head.starts_with("POST / HTTP/1.1\r\n"), "{}", s.head);
            assert_eq!(
                s.header("x-amz-target"),
                Some("TrentService.GenerateDataKey")
            );
            assert_eq!(s.header("content-type"), Some("application/x-amz-json-1.1"));
            assert_eq!(s.header("x-amz-security-token"), Some(TOKEN));
            let auth = s.header("authorization").unwrap();
            assert!(
                auth.starts_with(&format!(
                    "AWS4-HMAC-SHA256 Credential={ACCESS_KEY_ID}/"
                )) && auth.contains("/us-east-1/kms/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-security-token;x-amz-target, Signature="),
                "{auth}"
            );
            assert!(!s.head.contains(SECRET));
            assert_eq!(
                auth.rsplit("Signature=").next(),
                Some(
                    botocore_signature(&common::pyenv().expect("moto runs, so the venv exists"), s)
                        .as_str()
                ),
                "botocore computes the same SigV4 signature for the request on the wire"
            );
            let body: serde_json::Value = serde_json::from_slice(&s.body).unwrap();
            assert_eq!(body["KeyId"], alias.as_str());
            assert_eq!(body["NumberOfBytes"], 32);
            assert_eq!(body["EncryptionContext"]["envseal:batch"], "batch-1");
        }
    }
    assert_eq!(
        client(&moto.endpoint())
            .decrypt(&generated.wrapped)
            .unwrap()
            .expose(),
        generated.plaintext.expose()
    );

    // Out of attempts: the last throttle surfaces with its code and request id.
    let proxy = RecordingProxy::start(moto.port, vec![(400, THROTTLE.to_string()); 3]);
    let c = client_with(&proxy.endpoint(), fast_retry(3));
    let e = err(c.generate_data_key(&alias, &context()));
    assert_eq!(e.kind, KmsErrorKind::Throttled);
    assert_eq!(e.code.as_deref(), Some("ThrottlingException"));
    assert_eq!(e.request_id.as_deref(), Some("fault-2"));
    assert!(e.to_string().contains("Rate exceeded"), "{e}");
    assert_eq!(proxy.seen.lock().unwrap().len(), 3);

    // 5xx (JSON or not) and KMS internal errors are retried.
    let proxy = RecordingProxy::start(
        moto.port,
        vec![
            (
                500,
                r#"{"__type":"KMSInternalException","message":"oops"}"#.into(),
            ),
            (503, "<html>Service Unavailable</html>".into()),
            (
                400,
                r#"{"__type":"DependencyTimeoutException","message":"slow"}"#.into(),
            ),
        ],
    );
    let c = client_with(&proxy.endpoint(), fast_retry(4));
    let key = c.decrypt(&generated.wrapped).unwrap();
    assert_eq!(key.expose(), generated.plaintext.expose());
    assert_eq!(proxy.seen.lock().unwrap().len(), 4);

    // Permanent errors are not retried, and keep their kind. (moto itself lets a disabled key
    // work, so the real service's answers are replayed here.)
    for (code, kind) in [
        ("AccessDeniedException", KmsErrorKind::Auth),
        ("UnrecognizedClientException", KmsErrorKind::Auth),
        ("DisabledException", KmsErrorKind::Disabled),
        ("KMSInvalidStateException", KmsErrorKind::Disabled),
        ("IncorrectKeyException", KmsErrorKind::InvalidCiphertext),
    ] {
        let body = format!(r#"{{"__type":"{code}","message":"refused"}}"#);
        let proxy = RecordingProxy::start(moto.port, vec![(400, body)]);
        let c = client_with(&proxy.endpoint(), fast_retry(4));
        let e = err(c.decrypt(&generated.wrapped));
        assert_eq!(e.kind, kind, "{e}");
        assert_eq!(e.code.as_deref(), Some(code));
        assert_eq!(e.request_id.as_deref(), Some("fault-0"));
        assert_eq!(proxy.seen.lock().unwrap().len(), 1, "{code} is not retried");
    }
}

/// The binary with the test's AWS credentials and no AWS settings from the caller.
fn envseal_aws(home: &std::path::Path) -> Command {
    let mut c = common::envseal(home);
    c.env("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env("AWS_SESSION_TOKEN", TOKEN)
        .env_remove("AWS_REGION")
        .env_remove("AWS_DEFAULT_REGION");
    c
}

/// Runs the binary; checks the exit code and that no credential reached its output.
fn run_cli(cmd: &mut Command, code: i32) -> String {
    let out = common::run(cmd);
    let text = format!("{}{}", common::stdout(&out), common::stderr(&out));
    assert!(
        !text.contains(SECRET) && !text.contains(TOKEN),
        "a secret was printed: {text}"
    );
    assert_eq!(out.status.code(), Some(code), "{text}");
    text
}

#[test]
fn cli_region_from_env_is_recorded_and_credentials_are_required() {
    let Some(moto) = Moto::start() else { return };
    let (_, alias) = key_with_alias(&client(&moto.endpoint()), "alias/envseal/cli");
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = t.path().join("src");
    common::tree::gen_file(&src.join("a.bin"), 70_000, 1);
    common::tree::gen_file(&src.join("sub/b.bin"), 10, 2);
    let vault = t.path().join("vault");

    // The URL has no ?region=: it comes from AWS_DEFAULT_REGION, with a session token set.
    run_cli(
        envseal_aws(&home)
            .env("AWS_DEFAULT_REGION", REGION)
            .args(["encrypt", "-q", "--key", &alias, "--kms"])
            .arg(format!("aws:{}", moto.endpoint()))
            .arg("-o")
            .arg(&vault)
            .arg(&src),
        0,
    );
    // The manifest recorded the region, so no region (and no --kms) is needed later.
    run_cli(
        envseal_aws(&home)
            .args(["verify", "--deep", "-q"])
            .arg(&vault),
        0,
    );
    let dest = t.path().join("dest");
    run_cli(
        envseal_aws(&home)
            .args(["decrypt", "-q", "-o"])
            .arg(&dest)
            .arg(&vault),
        0,
    );
    common::tree::assert_same_tree(&src, &dest.join("src"));

    // Without credentials the error names what is missing.
    let text = run_cli(
        envseal_aws(&home)
            .env_remove("AWS_ACCESS_KEY_ID")
            .args(["verify", "--deep", "-q"])
            .arg(&vault),
        1,
    );
    assert!(text.contains("AWS_ACCESS_KEY_ID is not set"), "{text}");
}
