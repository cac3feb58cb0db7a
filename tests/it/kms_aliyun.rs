//! The Alibaba KMS wire end to end: `envseal kms serve` as a real process on 127.0.0.1, driven
//! by the library's `AliyunClient`, by raw signed requests, and by the `envseal kms` CLI.

use crate::common;

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use envseal::kms::aliyun::sign::{pct, v1_signature, v1_string_to_sign};
use envseal::kms::aliyun::{format_timestamp, new_uuid, AliyunClient};
use envseal::kms::retry::RetryPolicy;
use envseal::kms::{
    EncryptionContext, KeyProvider, KmsAdmin, KmsErrorKind, KmsOptions, WrappedKey,
};
use zeroize::Zeroizing;

use common::servers::{
    json_reply, FaultProxy, KmsServer as Server, ALI_ID as AK_ID, ALI_SECRET as AK_SECRET,
};

fn fast_opts(attempts: u32) -> KmsOptions {
    KmsOptions {
        retry: RetryPolicy {
            max_attempts: attempts,
            base_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(20),
        },
        timeout: Duration::from_secs(10),
        ..KmsOptions::default()
    }
}

fn client(endpoint: &str, secret: &str) -> AliyunClient {
    AliyunClient::new(
        endpoint,
        None,
        AK_ID,
        Zeroizing::new(secret.to_string()),
        &fast_opts(3),
    )
    .unwrap()
}

/// Captures `log` records of this test process, so retries can be counted.
struct Capture(Mutex<Vec<String>>);

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, r: &log::Record) {
        self.0
            .lock()
            .unwrap()
            .push(format!("{} {}", r.level(), r.args()));
    }
    fn flush(&self) {}
}

fn log_lines() -> &'static Capture {
    static CAPTURE: OnceLock<&'static Capture> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let c: &'static Capture = Box::leak(Box::new(Capture(Mutex::new(Vec::new()))));
        log::set_logger(c).unwrap();
        log::set_max_level(log::LevelFilter::Debug);
        c
    })
}

fn warnings_about(needle: &str) -> Vec<String> {
    log_lines()
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.starts_with("WARN") && l.contains(needle))
        .cloned()
        .collect()
}

#[test]
fn data_keys_round_trip_and_contexts_bind() {
    let server = Server::start();
    let c = client(&server.endpoint(), AK_SECRET);
    let key = c.create_key("apollo work key").unwrap();
    assert_eq!(key.key_state, "Enabled");
    c.create_alias("alias/Apollo/WorkKey", &key.key_id).unwrap();

    let ctx = EncryptionContext::for_batch("vault-1", "batch-1");
    let g = c.generate_data_key("alias/Apollo/WorkKey", &ctx).unwrap();
    // The resolved id is recorded, never the alias.
    assert_eq!(g.wrapped.key_id, key.key_id);
    assert_eq!(g.wrapped.kms, server.url());
    let back = c.decrypt(&g.wrapped).unwrap();
    assert_eq!(back.expose(), g.plaintext.expose());

    let wrong = WrappedKey {
        context: EncryptionContext::for_batch("vault-1", "batch-2"),
        ..g.wrapped.clone()
    };
    let e = c
        .decrypt(&wrong)
        .err()
        .expect("decrypt with a wrong context");
    assert_eq!(e.kind, KmsErrorKind::InvalidCiphertext, "{e}");
    assert_eq!(e.status, Some(400));
    assert!(e.request_id.is_some());

    // Encrypt wraps an existing key the same way; ReEncrypt moves it to another key.
    let other = c.create_key("second").unwrap();
    let w2 = c.encrypt(&other.key_id, &g.plaintext, &ctx).unwrap();
    assert_eq!(w2.key_id, other.key_id);
    assert_eq!(c.decrypt(&w2).unwrap().expose(), g.plaintext.expose());
    let ctx3 = EncryptionContext::for_batch("vault-3", "b");
    let w3 = c.re_encrypt(&g.wrapped, &other.key_id, &ctx3).unwrap();
    assert_eq!(w3.key_id, other.key_id);
    assert_eq!(c.decrypt(&w3).unwrap().expose(), g.plaintext.expose());

    // Admin: describe, list with aliases, disable, enable, schedule deletion.
    assert_eq!(
        c.describe_key("alias/Apollo/WorkKey").unwrap().key_id,
        key.key_id
    );
    let keys = c.list_keys().unwrap();
    assert_eq!(keys.len(), 2);
    let aliases = c.list_aliases().unwrap();
    assert_eq!(aliases.len(), 1);
    assert_eq!(aliases[0].alias_name, "alias/Apollo/WorkKey");
    assert_eq!(aliases[0].key_id, key.key_id);

    c.disable_key(&key.key_id).unwrap();
    let e = c
        .decrypt(&g.wrapped)
        .err()
        .expect("decrypt under a disabled key");
    assert_eq!(e.kind, KmsErrorKind::Disabled);
    assert_eq!(e.code.as_deref(), Some("Rejected.Disabled"));
    assert_eq!(e.status, Some(409));
    c.enable_key(&key.key_id).unwrap();
    c.decrypt(&g.wrapped).unwrap();

    let e = c
        .describe_key("11111111-2222-3333-4444-555555555555")
        .unwrap_err();
    assert_eq!(
        (e.kind, e.code.as_deref(), e.status),
        (
            KmsErrorKind::NotFound,
            Some("Forbidden.KeyNotFound"),
            Some(404)
        )
    );
    c.schedule_key_deletion(&other.key_id, 7).unwrap();
    assert_eq!(
        c.describe_key(&other.key_id).unwrap().key_state,
        "PendingDeletion"
    );
    let e = c.schedule_key_deletion(&key.key_id, 3).unwrap_err();
    assert_eq!(e.kind, KmsErrorKind::InvalidArgument);

    // The access log names actions and statuses, never keys or blobs.
    let log = server.stderr_with("action=ScheduleKeyDeletion");
    assert!(log.contains("action=GenerateDataKey"), "{log}");
    assert!(log.contains("status=409 code=Rejected.Disabled"), "{log}");
    assert!(!log.contains(&g.wrapped.blob), "{log}");
    assert!(!log.contains(AK_SECRET));
}

#[test]
fn listing_pages_through_many_entries() {
    let server = Server::start();
    let c = client(&server.endpoint(), AK_SECRET);
    let mut ids = Vec::new();
    for i in 0..12 {
        let k = c.create_key(&format!("k{i}")).unwrap();
        c.create_alias(&format!("alias/k{i}"), &k.key_id).unwrap();
        ids.push(k.key_id);
    }
    let mut listed: Vec<String> = c
        .list_keys()
        .unwrap()
        .into_iter()
        .map(|k| k.key_id)
        .collect();
    listed.sort();
    ids.sort();
    assert_eq!(listed, ids);
    assert_eq!(c.list_aliases().unwrap().len(), 12);

    // The server's own paging (ListKeys with PageSize 5, page 3 has 2 keys).
    let (status, body) = signed_v1(
        &server,
        &[
            ("Action", "ListKeys"),
            ("PageSize", "5"),
            ("PageNumber", "3"),
        ],
        &format_timestamp(time::OffsetDateTime::now_utc()),
        &new_uuid(),
    );
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["TotalCount"], 12);
    assert_eq!(v["PageSize"], 5);
    assert_eq!(v["Keys"]["Key"].as_array().unwrap().len(), 2);
}

#[test]
fn wrong_secret_is_a_signature_mismatch() {
    log_lines();
    let server = Server::start();
    let c = client(&server.endpoint(), "not-the-secret");
    let e = c.create_key("x").unwrap_err();
    assert_eq!(e.kind, KmsErrorKind::Auth);
    assert_eq!(e.code.as_deref(), Some("SignatureDoesNotMatch"));
    assert_eq!(e.status, Some(400));
    // Said plainly; the server's string-to-sign is logged (shown with -v), not in the error.
    assert!(e.message.contains("wrong AccessKey secret"), "{e}");
    assert!(!e.message.contains("string to sign"), "{e}");
    assert!(log_lines()
        .0
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.starts_with("INFO") && l.contains("server string to sign is:POST&%2F&")));
    assert!(e.to_string().contains("SignatureDoesNotMatch"));
    // Not retried: an auth failure is permanent.
    assert!(warnings_about(&server.endpoint()).is_empty());
}

#[test]
fn unreachable_endpoint_fails_after_bounded_retries() {
    log_lines();
    let port = common::free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let c = AliyunClient::new(
        &endpoint,
        None,
        AK_ID,
        Zeroizing::new(AK_SECRET.into()),
        &fast_opts(3),
    )
    .unwrap();
    let e = c
        .generate_data_key("alias/x", &EncryptionContext::default())
        .err()
        .expect("no server there");
    assert_eq!(e.kind, KmsErrorKind::Transport, "{e}");
    assert_eq!(e.endpoint.as_deref(), Some(endpoint.as_str()));
    assert!(e.to_string().contains(&endpoint), "{e}");
    let retries = warnings_about(&format!("GenerateDataKey at {endpoint}"));
    assert_eq!(retries.len(), 2, "{retries:?}");
    assert!(retries[1].contains("retry 2/2"), "{retries:?}");
}

/// Sends one v1-signed POST with the test credentials; returns status and body.
fn signed_v1(
    server: &Server,
    params: &[(&str, &str)],
    timestamp: &str,
    nonce: &str,
) -> (u16, String) {
    let mut all: Vec<(String, String)> = vec![
        ("Version".into(), "2016-01-20".into()),
        ("Format".into(), "JSON".into()),
        ("AccessKeyId".into(), AK_ID.into()),
        ("SignatureMethod".into(), "HMAC-SHA1".into()),
        ("SignatureVersion".into(), "1.0".into()),
        ("SignatureNonce".into(), nonce.into()),
        ("Timestamp".into(), timestamp.into()),
    ];
    all.extend(params.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let sig = v1_signature(AK_SECRET, &v1_string_to_sign("POST", &all));
    all.push(("Signature".into(), sig));
    let query: Vec<String> = all
        .iter()
        .map(|(k, v)| format!("{}={}", pct(k), pct(v)))
        .collect();
    let resp = reqwest::blocking::Client::new()
        .post(format!("{}/?{}", server.endpoint(), query.join("&")))
        .send()
        .unwrap();
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    assert_eq!(ct.as_deref(), Some("application/json;charset=utf-8"));
    (status, resp.text().unwrap())
}

#[test]
fn replayed_and_stale_requests_are_refused() {
    let server = Server::start();
    let now = format_timestamp(time::OffsetDateTime::now_utc());
    let nonce = new_uuid();
    let (s1, b1) = signed_v1(&server, &[("Action", "ListKeys")], &now, &nonce);
    assert_eq!(s1, 200, "{b1}");
    let (s2, b2) = signed_v1(&server, &[("Action", "ListKeys")], &now, &nonce);
    assert_eq!(s2, 400);
    let v: serde_json::Value = serde_json::from_str(&b2).unwrap();
    assert_eq!(v["Code"], "SignatureNonceUsed");
    assert!(v["RequestId"].as_str().is_some_and(|s| s.len() == 36));
    assert!(v["HostId"].is_string() && v["Recommend"].is_string());

    let stale = format_timestamp(time::OffsetDateTime::now_utc() - time::Duration::minutes(20));
    let (s3, b3) = signed_v1(&server, &[("Action", "ListKeys")], &stale, &new_uuid());
    assert_eq!(s3, 400);
    assert!(b3.contains("InvalidTimeStamp.Expired"), "{b3}");

    let (s4, b4) = signed_v1(&server, &[("Action", "NoSuchAction")], &now, &new_uuid());
    assert_eq!(s4, 404);
    assert!(b4.contains("InvalidAction.NotFound"), "{b4}");

    let (s5, b5) = signed_v1(
        &server,
        &[("Action", "CreateAlias"), ("KeyId", "k")],
        &now,
        &new_uuid(),
    );
    assert_eq!(s5, 400);
    assert!(
        b5.contains("MissingParameter") && b5.contains("AliasName"),
        "{b5}"
    );
}

/// A proxy answering `400 Throttling` to the first `n` connections and passing the rest
/// through to `target`.
fn throttling_proxy(target: u16, n: usize) -> (u16, Arc<AtomicUsize>) {
    let body = r#"{"RequestId":"T-1","HostId":"proxy","Code":"Throttling","Message":"Request was denied due to request throttling."}"#;
    let p = FaultProxy::start(target, n, json_reply("400 Bad Request", body));
    (p.port, p.seen)
}

#[test]
fn throttling_is_retried_until_it_passes() {
    log_lines();
    let server = Server::start();
    let (proxy_port, seen) = throttling_proxy(server.port, 2);
    let endpoint = format!("http://127.0.0.1:{proxy_port}");
    let c = AliyunClient::new(
        &endpoint,
        None,
        AK_ID,
        Zeroizing::new(AK_SECRET.into()),
        &fast_opts(4),
    )
    .unwrap();
    let key = c.create_key("through the proxy").unwrap();
    assert_eq!(key.key_state, "Enabled");
    assert!(seen.load(Ordering::SeqCst) >= 3);
    let retries = warnings_about(&format!("CreateKey at {endpoint}"));
    assert_eq!(retries.len(), 2, "{retries:?}");
    assert!(retries[0].contains("Throttling"), "{retries:?}");

    // With fewer attempts than throttled replies, the Throttling error surfaces typed.
    let (proxy_port, _) = throttling_proxy(server.port, 5);
    let endpoint = format!("http://127.0.0.1:{proxy_port}");
    let c = AliyunClient::new(
        &endpoint,
        None,
        AK_ID,
        Zeroizing::new(AK_SECRET.into()),
        &fast_opts(2),
    )
    .unwrap();
    let e = c.create_key("x").unwrap_err();
    assert_eq!(e.kind, KmsErrorKind::Throttled);
    assert_eq!(e.code.as_deref(), Some("Throttling"));
    assert_eq!(e.request_id.as_deref(), Some("T-1"));
}

#[test]
fn generated_credentials_are_stored_privately() {
    use std::os::unix::fs::PermissionsExt;
    let server = Server::start_with(|_| {});
    let path = server.store.join("credentials");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let creds: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let id = creds["AccessKeyId"].as_str().unwrap();
    let secret = creds["AccessKeySecret"].as_str().unwrap();
    let log = server.stderr_with(&path.display().to_string());
    assert!(
        log.contains(id) && log.contains(&path.display().to_string()),
        "{log}"
    );
    assert!(!log.contains(secret));
    let c = AliyunClient::new(
        &server.endpoint(),
        None,
        id,
        Zeroizing::new(secret.into()),
        &fast_opts(1),
    )
    .unwrap();
    c.create_key("with generated credentials").unwrap();
}

#[test]
fn plain_http_on_a_public_address_is_refused() {
    let home = tempfile::tempdir().unwrap();
    let out = common::run(common::envseal(home.path()).args([
        "kms",
        "serve",
        "--listen",
        "0.0.0.0:0",
        "--store",
        home.path().join("kms").to_str().unwrap(),
    ]));
    assert_eq!(out.status.code(), Some(2), "{}", common::stderr(&out));
    assert!(common::stderr(&out).contains("--insecure"));
    assert!(common::stdout(&out).is_empty());
}

#[test]
fn sigterm_stops_the_server_cleanly() {
    let mut server = Server::start();
    let c = client(&server.endpoint(), AK_SECRET);
    c.create_key("x").unwrap();
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    let rc = unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            assert!(status.success(), "{status:?}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "server did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(server.stderr_with("stopped").contains("stopped"));
}

#[test]
fn many_concurrent_clients() {
    let server = Server::start();
    let c = Arc::new(client(&server.endpoint(), AK_SECRET));
    let key = c.create_key("shared").unwrap();
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let c = c.clone();
            let key = key.key_id.clone();
            std::thread::spawn(move || {
                for j in 0..5 {
                    let ctx = EncryptionContext::for_batch(&format!("v{i}"), &format!("b{j}"));
                    let g = c.generate_data_key(&key, &ctx).unwrap();
                    assert_eq!(
                        c.decrypt(&g.wrapped).unwrap().expose(),
                        g.plaintext.expose()
                    );
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

/// Both official Python SDKs (old v1, new v3 and new v2) run the documented flow against a
/// fresh server each (`tests/sdk/alibaba_sdk_flow.py`; skipped outside CI without the venv).
#[test]
fn official_sdks_run_the_documented_flow() {
    let Some(pyenv) = common::pyenv() else { return };
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/alibaba_sdk_flow.py");
    let runs: Vec<_> = ["old", "v3", "v2"]
        .into_iter()
        .map(|flavor| {
            let (pyenv, script) = (pyenv.clone(), script.clone());
            std::thread::spawn(move || {
                let server = Server::start();
                let out = Command::new(pyenv.join("bin/python"))
                    .arg(&script)
                    .args(["--endpoint", &format!("127.0.0.1:{}", server.port)])
                    .args(["--flavor", flavor])
                    .env("ALIBABA_CLOUD_ACCESS_KEY_ID", AK_ID)
                    .env("ALIBABA_CLOUD_ACCESS_KEY_SECRET", AK_SECRET)
                    .output()
                    .expect("cannot run python");
                (flavor, out, server.stderr())
            })
        })
        .collect();
    for run in runs {
        let (flavor, out, server_log) = run.join().unwrap();
        let stdout = common::stdout(&out);
        assert!(
            out.status.success() && stdout.contains(&format!("== {flavor}: all checks passed")),
            "{flavor} SDK flow failed:\n{stdout}\n{}\nserver:\n{server_log}",
            common::stderr(&out)
        );
        // The flow's plaintexts never reach the server's log.
        assert!(!server_log.contains("BEGIN KEY"), "{server_log}");
    }
}

/// `envseal kms ...` with `--kms aliyun:http://127.0.0.1:PORT` manages keys on the server.
#[test]
fn kms_cli_manages_keys_over_the_wire() {
    let server = Server::start();
    let home = tempfile::tempdir().unwrap();
    let cli = |args: &[&str]| {
        let mut c = common::envseal(home.path());
        c.args(["kms"])
            .args(args)
            .args(["--kms", &server.url()])
            .env("ALIBABA_CLOUD_ACCESS_KEY_ID", AK_ID)
            .env("ALIBABA_CLOUD_ACCESS_KEY_SECRET", AK_SECRET);
        common::run(&mut c)
    };
    let out = cli(&["create-key", "--description", "cli key"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let created: serde_json::Value = serde_json::from_str(&common::stdout(&out)).unwrap();
    let key_id = created["KeyMetadata"]["KeyId"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(created["KeyMetadata"]["Description"], "cli key");

    let out = cli(&["create-alias", "alias/cli/work", &key_id]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let out = cli(&["disable-key", &key_id]);
    assert!(out.status.success(), "{}", common::stderr(&out));

    let out = cli(&["list"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let listed: serde_json::Value = serde_json::from_str(&common::stdout(&out)).unwrap();
    assert_eq!(listed["Keys"][0]["KeyId"], key_id.as_str());
    assert_eq!(listed["Keys"][0]["KeyState"], "Disabled");
    assert_eq!(listed["Aliases"][0]["AliasName"], "alias/cli/work");
    assert_eq!(listed["Aliases"][0]["KeyId"], key_id.as_str());

    // The server saw these calls; the local default store was never created.
    let log = server.stderr_with("action=ListAliases");
    assert!(
        log.contains("action=CreateAlias") && log.contains("action=DisableKey"),
        "{log}"
    );
    assert!(!home.path().join("keystore").exists());

    // Missing credentials: a clear error naming the variable, before any request.
    let mut c = common::envseal(home.path());
    c.args(["kms", "list", "--kms", &server.url()])
        .env_remove("ALIBABA_CLOUD_ACCESS_KEY_ID")
        .env_remove("ALIBABA_CLOUD_ACCESS_KEY_SECRET");
    let out = common::run(&mut c);
    assert!(!out.status.success());
    assert!(
        common::stderr(&out).contains("ALIBABA_CLOUD_ACCESS_KEY_ID"),
        "{}",
        common::stderr(&out)
    );

    // A wrong secret reports the KMS code.
    let mut c = common::envseal(home.path());
    c.args(["kms", "list", "--kms", &server.url()])
        .env("ALIBABA_CLOUD_ACCESS_KEY_ID", AK_ID)
        .env("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "wrong");
    let out = common::run(&mut c);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        common::stderr(&out).contains("SignatureDoesNotMatch"),
        "{}",
        common::stderr(&out)
    );
    assert!(!common::stderr(&out).contains(AK_SECRET));
}

/// With a certificate the server speaks TLS only; a client trusting the certificate gets
/// through, plain HTTP does not. (tests/fixtures/tls: a self-signed P-256 certificate for
/// 127.0.0.1, made with `openssl req -x509 -addext subjectAltName=IP:127.0.0.1 ...
/// basicConstraints=critical,CA:FALSE`, valid for 100 years; test use only.)
#[test]
fn tls_serves_https_only() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls");
    let server = Server::start_with(|c| {
        c.env("ENVSEAL_KMS_ACCESS_KEY_ID", AK_ID)
            .env("ENVSEAL_KMS_ACCESS_KEY_SECRET", AK_SECRET)
            .arg("--tls-cert")
            .arg(fixtures.join("cert.pem"))
            .arg("--tls-key")
            .arg(fixtures.join("key.pem"));
    });
    let cert =
        reqwest::Certificate::from_pem(&std::fs::read(fixtures.join("cert.pem")).unwrap()).unwrap();
    let https = reqwest::blocking::Client::builder()
        .add_root_certificate(cert)
        .build()
        .unwrap();
    let mut all: Vec<(String, String)> = [
        ("Action", "ListKeys"),
        ("Version", "2016-01-20"),
        ("AccessKeyId", AK_ID),
        ("SignatureMethod", "HMAC-SHA1"),
        ("SignatureVersion", "1.0"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    all.push(("SignatureNonce".into(), new_uuid()));
    all.push((
        "Timestamp".into(),
        format_timestamp(time::OffsetDateTime::now_utc()),
    ));
    let sig = v1_signature(AK_SECRET, &v1_string_to_sign("GET", &all));
    all.push(("Signature".into(), sig));
    let query: Vec<String> = all
        .iter()
        .map(|(k, v)| format!("{}={}", pct(k), pct(v)))
        .collect();
    let resp = https
        .get(format!(
            "https://127.0.0.1:{}/?{}",
            server.port,
            query.join("&")
        ))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.text().unwrap().contains("\"TotalCount\":0"));

    // Plain HTTP to the TLS port gets no KMS answer.
    let plain = reqwest::blocking::Client::new()
        .get(format!("http://127.0.0.1:{}/", server.port))
        .timeout(Duration::from_secs(5))
        .send();
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
}

/// Parameters may also travel in a form body (`+` for spaces); the v1 signature covers both.
#[test]
fn form_body_parameters_are_signed_and_merged() {
    let server = Server::start();
    let params: Vec<(String, String)> = [
        ("Version", "2016-01-20"),
        ("AccessKeyId", AK_ID),
        ("SignatureMethod", "HMAC-SHA1"),
        ("SignatureVersion", "1.0"),
        ("SignatureNonce", &new_uuid()),
        (
            "Timestamp",
            &format_timestamp(time::OffsetDateTime::now_utc()),
        ),
        ("Action", "CreateKey"),
        ("Description", "from a form body: a+b c*~"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let sig = v1_signature(AK_SECRET, &v1_string_to_sign("POST", &params));
    let (in_query, in_body) = params.split_at(6);
    let mut query: Vec<String> = in_query
        .iter()
        .map(|(k, v)| format!("{}={}", pct(k), pct(v)))
        .collect();
    query.push(format!("Signature={}", pct(&sig)));
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(in_body.iter())
        .finish();
    assert!(body.contains('+'), "{body}");
    let send = |body: String| {
        reqwest::blocking::Client::new()
            .post(format!("{}/?{}", server.endpoint(), query.join("&")))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .unwrap()
    };
    let resp = send(body.clone());
    assert_eq!(resp.status().as_u16(), 200);
    let v: serde_json::Value = resp.json().unwrap();
    assert_eq!(v["KeyMetadata"]["Description"], "from a form body: a+b c*~");

    // A changed body parameter breaks the signature.
    let resp = send(body.replace("CreateKey", "ListKeys"));
    assert_eq!(resp.status().as_u16(), 400);
    assert!(resp.text().unwrap().contains("SignatureDoesNotMatch"));
}

#[test]
fn cli_verbose_shows_throttling_retries() {
    let server = Server::start();
    let (proxy_port, _) = throttling_proxy(server.port, 2);
    let home = tempfile::tempdir().unwrap();
    let mut c = common::envseal(home.path());
    c.args(["-v", "kms", "create-key", "--kms"])
        .arg(format!("aliyun:http://127.0.0.1:{proxy_port}"))
        .env("ALIBABA_CLOUD_ACCESS_KEY_ID", AK_ID)
        .env("ALIBABA_CLOUD_ACCESS_KEY_SECRET", AK_SECRET);
    let out = common::run(&mut c);
    let err = common::stderr(&out);
    assert!(out.status.success(), "{err}");
    assert_eq!(err.matches("Throttling").count(), 2, "{err}");
    assert!(
        err.contains("retry 1/") && err.contains("retry 2/"),
        "{err}"
    );
    let created: serde_json::Value = serde_json::from_str(&common::stdout(&out)).unwrap();
    assert_eq!(created["KeyMetadata"]["KeyState"], "Enabled");
}
