//! End to end over real HTTP: `envseal encrypt / verify --deep / decrypt` against
//! `envseal kms serve` (Alibaba API) and moto (AWS KMS), with KMS calls counted by the server,
//! retries under throttling, unreachable endpoints and wrong secrets.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[cfg(feature = "server")]
use common::servers::{json_reply, FaultProxy, KmsServer};
use common::servers::{Moto, ALI_ID, ALI_SECRET, AWS_ID, AWS_SECRET};
use common::tree::{gen_file, snapshot};

fn ali(home: &Path) -> Command {
    let mut c = common::envseal(home);
    c.env("ALIBABA_CLOUD_ACCESS_KEY_ID", ALI_ID)
        .env("ALIBABA_CLOUD_ACCESS_KEY_SECRET", ALI_SECRET);
    c
}

fn aws(home: &Path) -> Command {
    let mut c = common::envseal(home);
    c.env("AWS_ACCESS_KEY_ID", AWS_ID)
        .env("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_REGION")
        .env_remove("AWS_DEFAULT_REGION");
    c
}

/// Runs, asserts the exit code, and checks that no secret leaked into the output.
fn run(cmd: &mut Command, code: i32) -> Output {
    let out = cmd.output().expect("run envseal");
    let (so, se) = (common::stdout(&out), common::stderr(&out));
    assert_eq!(out.status.code(), Some(code), "stdout: {so}\nstderr: {se}");
    for secret in [ALI_SECRET, AWS_SECRET] {
        assert!(
            !so.contains(secret) && !se.contains(secret),
            "a secret was printed: {se}{so}"
        );
    }
    out
}

fn tree(root: &Path) -> PathBuf {
    let src = root.join("data");
    for i in 0..250u64 {
        gen_file(&src.join(format!("d{}/f{i}.bin", i % 7)), 100 + i * 37, i);
    }
    gen_file(&src.join("big.bin"), 3 << 20, 999);
    src
}

/// Every file of the vault, to check no secret was written into it.
fn vault_text(vault: &Path) -> String {
    let mut s = String::new();
    for name in std::fs::read_dir(vault).unwrap().flatten() {
        if name.path().is_file() {
            s.push_str(&String::from_utf8_lossy(
                &std::fs::read(name.path()).unwrap(),
            ));
        }
    }
    s
}

#[test]
#[cfg(feature = "server")]
fn aliyun_round_trip_without_kms_flag_one_call_per_batch() {
    let server = KmsServer::start();
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let url = server.url();

    let out = run(ali(&home).args(["kms", "create-key", "--kms", &url]), 0);
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let key_id = meta["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
    run(
        ali(&home).args([
            "kms",
            "create-alias",
            "alias/Apollo/WorkKey",
            &key_id,
            "--kms",
            &url,
        ]),
        0,
    );

    let src = tree(t.path());
    let vault = t.path().join("vault");
    let out = run(
        ali(&home)
            .args([
                "encrypt",
                "--json",
                "-q",
                "--kms",
                &url,
                "--key",
                "alias/Apollo/WorkKey",
            ])
            .args(["--batch-max-files", "100", "-o"])
            .arg(&vault)
            .arg(&src),
        0,
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["batches"], 3);
    assert_eq!(
        server.count("GenerateDataKey"),
        3,
        "one GenerateDataKey per batch"
    );
    assert_eq!(server.count("Decrypt"), 0);

    // The manifest names the provider and the CMK's real id, never only the alias.
    let manifest = std::fs::read_to_string(vault.join("manifest.jsonl")).unwrap();
    let wrap: serde_json::Value = serde_json::from_str(manifest.lines().nth(2).unwrap()).unwrap();
    assert_eq!(wrap["type"], "wrap");
    assert_eq!(wrap["kms"], url.as_str());
    assert_eq!(wrap["key_id"], key_id.as_str());
    assert!(!vault_text(&vault).contains(ALI_SECRET));

    // No --kms: the manifest says where the keys live. One Decrypt per wrapped key.
    run(ali(&home).args(["verify", "--deep", "-q"]).arg(&vault), 0);
    assert_eq!(server.count("Decrypt"), 3);
    let dest = t.path().join("out");
    run(
        ali(&home)
            .args(["decrypt", "-q", "-o"])
            .arg(&dest)
            .arg(&vault),
        0,
    );
    assert_eq!(server.count("Decrypt"), 6);
    assert_eq!(snapshot(&src), snapshot(&dest.join("data")));
    assert_eq!(server.count("GenerateDataKey"), 3);

    // A moved endpoint: --kms overrides the manifest's URL.
    let moved = FaultProxy::start(server.port, 0, String::new());
    let dest2 = t.path().join("out2");
    run(
        ali(&home)
            .args([
                "decrypt",
                "-q",
                "--kms",
                &format!("aliyun:http://127.0.0.1:{}", moved.port),
                "-o",
            ])
            .arg(&dest2)
            .arg(&vault),
        0,
    );
    assert!(moved.seen.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    assert_eq!(
        server.count("Decrypt"),
        9,
        "the three unwraps went through the new endpoint"
    );
    assert_eq!(snapshot(&src), snapshot(&dest2.join("data")));
    assert!(!server.stderr().contains(ALI_SECRET));
    assert!(
        !home.join("keystore").exists(),
        "no local key store was involved"
    );
}

#[test]
#[cfg(feature = "server")]
fn aliyun_throttling_is_retried_and_shown_with_verbose() {
    let server = KmsServer::start();
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let out = run(
        ali(&home).args(["kms", "create-key", "--kms", &server.url()]),
        0,
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let key_id = meta["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();

    let body = r#"{"RequestId":"THROTTLE-1","HostId":"proxy","Code":"Throttling","Message":"Request was denied due to request throttling."}"#;
    let proxy = FaultProxy::start(server.port, 3, json_reply("400 Bad Request", body));
    let url = format!("aliyun:http://127.0.0.1:{}", proxy.port);
    let src = tree(t.path());
    let vault = t.path().join("vault");
    let out = run(
        ali(&home)
            .args(["-v", "encrypt", "-q", "--kms", &url, "--key", &key_id, "-o"])
            .arg(&vault)
            .arg(&src),
        0,
    );
    let err = common::stderr(&out);
    let retries = err
        .lines()
        .filter(|l| l.contains("Throttling") && l.contains("retry"))
        .count();
    assert_eq!(retries, 3, "each retry is visible with -v: {err}");
    assert!(err.contains("THROTTLE-1"), "the RequestId is shown: {err}");
    assert_eq!(server.count("GenerateDataKey"), 1);
    run(ali(&home).args(["verify", "--deep", "-q"]).arg(&vault), 0);
}

#[test]
fn unreachable_kms_fails_clearly_and_leaves_no_vault() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let port = common::free_port();
    let url = format!("aliyun:http://127.0.0.1:{port}");
    let src = tree(t.path());
    let vault = t.path().join("vault");
    let out = run(
        ali(&home)
            .env("ENVSEAL_KMS_ATTEMPTS", "2")
            .args(["encrypt", "-q", "--kms", &url, "--key", "alias/x", "-o"])
            .arg(&vault)
            .arg(&src),
        1,
    );
    let err = common::stderr(&out);
    assert!(
        err.contains(&format!("127.0.0.1:{port}")),
        "names the endpoint: {err}"
    );
    assert!(!vault.join("manifest.jsonl").exists());
    assert!(
        !vault.exists(),
        "a run that never got a key leaves no vault"
    );
}

#[test]
#[cfg(feature = "server")]
fn wrong_secret_reports_the_kms_code() {
    let server = KmsServer::start();
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = tree(t.path());
    let vault = t.path().join("vault");
    let out = run(
        ali(&home)
            .env("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "not-the-secret")
            .args([
                "encrypt",
                "-q",
                "--kms",
                &server.url(),
                "--key",
                "alias/x",
                "-o",
            ])
            .arg(&vault)
            .arg(&src),
        1,
    );
    let err = common::stderr(&out);
    assert!(err.contains("SignatureDoesNotMatch"), "{err}");
    assert!(!err.contains("not-the-secret"), "{err}");
    assert!(!vault.exists());
}

#[test]
fn aws_round_trip_without_kms_flag() {
    let Some(moto) = Moto::start() else { return };
    let c = moto.client();
    let arn = c.create_key("envseal e2e").unwrap();
    c.create_alias("alias/envseal/e2e", &arn).unwrap();
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = tree(t.path());
    let vault = t.path().join("vault");
    run(
        aws(&home)
            .args([
                "encrypt",
                "-q",
                "--kms",
                &moto.url(),
                "--key",
                "alias/envseal/e2e",
                "-o",
            ])
            .arg(&vault)
            .arg(&src),
        0,
    );
    let manifest = std::fs::read_to_string(vault.join("manifest.jsonl")).unwrap();
    // The first wrapping record of batch 0 (docs/FORMAT.md §6.1).
    let wrap: serde_json::Value = manifest
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["type"] == "wrap")
        .expect("a wrap record");
    assert_eq!(wrap["kms"], moto.url().as_str());
    assert!(
        wrap["key_id"].as_str().unwrap().starts_with("arn:aws:kms:"),
        "the key ARN, not the alias: {wrap}"
    );
    assert!(!vault_text(&vault).contains(AWS_SECRET));
    run(aws(&home).args(["verify", "--deep", "-q"]).arg(&vault), 0);
    let dest = t.path().join("out");
    run(
        aws(&home)
            .args(["decrypt", "-q", "-o"])
            .arg(&dest)
            .arg(&vault),
        0,
    );
    assert_eq!(snapshot(&src), snapshot(&dest.join("data")));
}

#[test]
#[cfg(feature = "server")]
fn kms_serve_seals_its_store_with_a_passphrase() {
    let open = KmsServer::start();
    assert!(
        open.stderr_with("unsealed key store")
            .contains("created an unsealed key store"),
        "{}",
        open.stderr()
    );

    let sealed = KmsServer::start_with(|c| {
        c.env("ENVSEAL_KMS_ACCESS_KEY_ID", ALI_ID)
            .env("ENVSEAL_KMS_ACCESS_KEY_SECRET", ALI_SECRET)
            .env("ENVSEAL_PASSPHRASE", "correct horse battery staple");
    });
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let out = run(
        ali(&home).args(["kms", "create-key", "--kms", &sealed.url()]),
        0,
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(meta["KeyMetadata"]["KeyState"], "Enabled");
    assert!(!sealed.stderr_with("access key id").contains("not sealed"));
    assert!(envseal::kms::keystore::KeyStore::is_sealed(&sealed.store).unwrap());
}
