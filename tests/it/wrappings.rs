//! Several wrappings of each batch key, across providers: `encrypt --key A --key URL#B`
//! (GenerateDataKey under the first, Encrypt under the others) and `rewrap --add`; a vault
//! then opens with any one CMK alone, and `ls --keys` / `verify --json` say which.

use crate::common;

use std::path::Path;
use std::process::Command;

use common::servers::{KmsServer, ALI_ID, ALI_SECRET};
use common::tree::{assert_same_tree, audit_count, code, manifest_records, ok, write};
use common::{envseal, stderr, stdout};

/// envseal with the test server's credentials, one KMS attempt (a stopped server fails fast).
fn cmd(home: &Path) -> Command {
    let mut c = envseal(home);
    c.env("ALIBABA_CLOUD_ACCESS_KEY_ID", ALI_ID)
        .env("ALIBABA_CLOUD_ACCESS_KEY_SECRET", ALI_SECRET)
        .env("ENVSEAL_KMS_ATTEMPTS", "1")
        .env("ENVSEAL_KMS_TIMEOUT", "5");
    c
}

fn key_id(o: &std::process::Output) -> String {
    let v: serde_json::Value = serde_json::from_str(&stdout(o)).unwrap();
    v["KeyMetadata"]["KeyId"].as_str().unwrap().to_string()
}

fn tree(dir: &Path) -> std::path::PathBuf {
    let src = dir.join("src");
    for i in 0..6 {
        write(
            &src.join(format!("f{i}.txt")),
            format!("file {i}\n").repeat(i + 1).as_bytes(),
        );
    }
    src
}

/// Decrypts into a fresh directory; the output.
fn decrypt(home: &Path, vault: &Path, dest: &Path) -> std::process::Output {
    cmd(home)
        .args(["decrypt", "-q", "-o"])
        .arg(dest)
        .arg(vault)
        .output()
        .unwrap()
}

#[test]
fn a_vault_wrapped_for_local_and_aliyun_opens_with_either_alone() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let mut server = KmsServer::start();
    let url = server.url();
    let local = key_id(&ok(cmd(&home).args(["kms", "create-key"])));
    let remote = key_id(&ok(cmd(&home).args(["kms", "create-key", "--kms", &url])));
    ok(cmd(&home).args([
        "kms",
        "create-alias",
        "alias/Apollo/WorkKey",
        &remote,
        "--kms",
        &url,
    ]));
    let src = tree(t.path());
    let vault = t.path().join("vault");
    let remote_spec = format!("{url}#alias/Apollo/WorkKey");
    ok(cmd(&home)
        .args(["encrypt", "-q", "--batch-max-files", "4", "--key", &local])
        .args(["--key", &remote_spec, "-o"])
        .arg(&vault)
        .arg(&src));
    let batches = manifest_records(&vault)
        .iter()
        .filter(|r| r["type"] == "batch")
        .count();
    assert!(batches >= 2);
    // One GenerateDataKey per batch under the first key, one Encrypt per batch at the second.
    assert_eq!(audit_count(&home, "GenerateDataKey"), batches);
    assert_eq!(server.count("Encrypt"), batches);
    assert_eq!(server.count("GenerateDataKey"), 0);
    let wraps: Vec<(String, String)> = manifest_records(&vault)
        .iter()
        .filter(|r| r["type"] == "wrap")
        .map(|r| {
            (
                r["kms"].as_str().unwrap().to_string(),
                r["key_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(wraps.len(), 2 * batches, "{wraps:?}");
    assert!(
        wraps.contains(&(url.clone(), remote.clone())),
        "the real id, not the alias"
    );

    // ls --keys and verify --json name both, each opening the vault alone.
    let o = ok(cmd(&home).args(["ls", "--keys", "--json"]).arg(&vault));
    let listed: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(listed.len(), 2, "{listed:?}");
    for (l, (kms, id)) in listed
        .iter()
        .zip([("local", &local), (url.as_str(), &remote)])
    {
        assert_eq!(l["kms"], kms);
        assert_eq!(l["key_id"], id.as_str());
        assert_eq!(l["batches"], batches);
        assert_eq!(l["opens_alone"], true);
    }
    let o = ok(cmd(&home).args(["verify", "--json"]).arg(&vault));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["keys"], serde_json::Value::Array(listed.clone()));

    // The local CMK disabled: the aliyun one alone opens it.
    ok(cmd(&home).args(["kms", "disable-key", &local]));
    let o = decrypt(&home, &vault, &t.path().join("out1"));
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_same_tree(&src, &t.path().join("out1/src"));
    // The local one back, the server stopped: the local one alone opens it.
    ok(cmd(&home).args(["kms", "enable-key", &local]));
    let _ = server.child.kill();
    let _ = server.child.wait();
    let o = decrypt(&home, &vault, &t.path().join("out2"));
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_same_tree(&src, &t.path().join("out2/src"));
    // Neither: refused, naming both.
    ok(cmd(&home).args(["kms", "disable-key", &local]));
    let o = decrypt(&home, &vault, &t.path().join("out3"));
    assert_ne!(code(&o), 0);
    assert!(
        stderr(&o).contains(&local) && stderr(&o).contains(&remote),
        "{}",
        stderr(&o)
    );
}

/// `rewrap --add` across providers: a vault sealed for a local CMK gains an aliyun wrapping
/// on `envseal kms serve`; each then opens it alone; `--remove` of the last is refused.
#[test]
fn rewrap_add_across_providers() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let mut server = KmsServer::start();
    let url = server.url();
    let local = key_id(&ok(cmd(&home).args(["kms", "create-key"])));
    let remote = key_id(&ok(cmd(&home).args(["kms", "create-key", "--kms", &url])));
    let src = tree(t.path());
    let vault = t.path().join("vault");
    ok(cmd(&home)
        .args([
            "encrypt",
            "-q",
            "--batch-max-files",
            "3",
            "--key",
            &local,
            "-o",
        ])
        .arg(&vault)
        .arg(&src));
    ok(cmd(&home)
        .args(["rewrap", "-q", "--add", "--kms", &url, "--key", &remote])
        .arg(&vault));
    let o = ok(cmd(&home).args(["ls", "--keys"]).arg(&vault));
    let text = stdout(&o);
    assert_eq!(text.matches("opens the vault alone").count(), 2, "{text}");

    // Drop the local wrapping: the aliyun one is all that is left, and it opens the vault
    // even with the local CMK disabled; removing it too is refused.
    ok(cmd(&home)
        .args(["rewrap", "-q", "--remove", &local])
        .arg(&vault));
    ok(cmd(&home).args(["kms", "disable-key", &local]));
    let o = decrypt(&home, &vault, &t.path().join("out1"));
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_same_tree(&src, &t.path().join("out1/src"));
    let o = cmd(&home)
        .args(["rewrap", "--remove", &remote])
        .arg(&vault)
        .output()
        .unwrap();
    assert_eq!(code(&o), 2, "{}", stderr(&o));

    // Back to local only (ReEncrypt is not possible across KMSs: Decrypt + Encrypt), then
    // the server stopped: local alone opens it.
    ok(cmd(&home).args(["kms", "enable-key", &local]));
    ok(cmd(&home)
        .args(["rewrap", "-q", "--key", &local])
        .arg(&vault));
    let _ = server.child.kill();
    let _ = server.child.wait();
    let o = decrypt(&home, &vault, &t.path().join("out2"));
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_same_tree(&src, &t.path().join("out2/src"));
}

/// Within one KMS, rewrap uses ReEncrypt (the data key never leaves the server).
#[test]
fn rewrap_within_one_kms_uses_reencrypt() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let server = KmsServer::start();
    let url = server.url();
    let a = key_id(&ok(cmd(&home).args(["kms", "create-key", "--kms", &url])));
    let b = key_id(&ok(cmd(&home).args(["kms", "create-key", "--kms", &url])));
    let src = tree(t.path());
    let vault = t.path().join("vault");
    ok(cmd(&home)
        .args([
            "encrypt",
            "-q",
            "--batch-max-files",
            "2",
            "--kms",
            &url,
            "--key",
            &a,
            "-o",
        ])
        .arg(&vault)
        .arg(&src));
    let batches = manifest_records(&vault)
        .iter()
        .filter(|r| r["type"] == "batch")
        .count();
    let decrypts = server.count("Decrypt");
    let o = ok(cmd(&home)
        .args(["rewrap", "--json", "--kms", &url, "--key", &b])
        .arg(&vault));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["re_encrypted"], batches, "{v}");
    // The server's key store logs a ReEncrypt as its Decrypt + Encrypt; the client's check
    // of each new wrapping is one more Decrypt.
    assert_eq!(server.count("Encrypt"), batches);
    assert_eq!(server.count("Decrypt") - decrypts, 2 * batches);
    ok(cmd(&home).args(["kms", "disable-key", &a, "--kms", &url]));
    let o = ok(cmd(&home).args(["verify", "--deep", "--json"]).arg(&vault));
    assert!(stdout(&o).contains("\"ok\":true"), "{}", stdout(&o));
}
