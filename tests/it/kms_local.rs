//! `envseal kms ...` against the embedded local key store, through the real binary.

use crate::common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;

use common::{envseal, run, stderr, stdout};
use serde_json::Value;

fn kms(home: &Path, args: &[&str]) -> Output {
    run(envseal(home).arg("kms").args(args))
}

/// Runs a command that must succeed and parses its stdout as JSON (Null when empty).
fn ok_json(home: &Path, args: &[&str]) -> Value {
    let out = kms(home, args);
    assert!(out.status.success(), "{args:?} failed: {}", stderr(&out));
    let text = stdout(&out);
    if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: {e}: {text}"))
    }
}

fn create_key(home: &Path) -> String {
    let v = ok_json(home, &["create-key", "--description", "test key"]);
    v["KeyMetadata"]["KeyId"].as_str().unwrap().to_string()
}

fn state(home: &Path, key: &str) -> String {
    ok_json(home, &["describe", key])["KeyMetadata"]["KeyState"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn create_key_prints_key_metadata() {
    let home = tempfile::tempdir().unwrap();
    let v = ok_json(home.path(), &["create-key", "--description", "for tests"]);
    let m = &v["KeyMetadata"];
    let id = m["KeyId"].as_str().unwrap();
    assert_eq!(id.len(), 36);
    assert_eq!(m["KeyState"], "Enabled");
    assert_eq!(m["Description"], "for tests");
    assert_eq!(m["KeySpec"], "Aliyun_AES_256");
    assert_eq!(m["KeyUsage"], "ENCRYPT/DECRYPT");
    assert_eq!(m["Arn"], format!("acs:kms:local:envseal:key/{id}"));
    // The key store is the default one under ENVSEAL_HOME.
    assert!(home
        .path()
        .join(format!("keystore/keys/{id}.json"))
        .exists());
    // Describe shows the same metadata.
    assert_eq!(ok_json(home.path(), &["describe", id]), v);
}

#[test]
fn aliases_are_listed_and_resolve() {
    let home = tempfile::tempdir().unwrap();
    let a = create_key(home.path());
    let b = create_key(home.path());
    assert_eq!(
        ok_json(home.path(), &["create-alias", "alias/team/app", &b]),
        Value::Null
    );
    let list = ok_json(home.path(), &["list"]);
    let ids: Vec<&str> = list["Keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["KeyId"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&a.as_str()) && ids.contains(&b.as_str()));
    assert_eq!(
        list["Aliases"],
        serde_json::json!([{
            "AliasName": "alias/team/app",
            "AliasArn": "acs:kms:local:envseal:alias/team/app",
            "KeyId": b,
        }])
    );
    let by_alias = ok_json(home.path(), &["describe", "alias/team/app"]);
    assert_eq!(by_alias["KeyMetadata"]["KeyId"], b.as_str());

    // The same alias again: a runtime error naming it.
    let out = kms(home.path(), &["create-alias", "alias/team/app", &a]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("AliasAlreadyExists"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn disable_and_enable_change_the_state() {
    let home = tempfile::tempdir().unwrap();
    let id = create_key(home.path());
    assert_eq!(ok_json(home.path(), &["disable-key", &id]), Value::Null);
    assert_eq!(state(home.path(), &id), "Disabled");
    assert_eq!(ok_json(home.path(), &["enable-key", &id]), Value::Null);
    assert_eq!(state(home.path(), &id), "Enabled");
}

#[test]
fn schedule_key_deletion() {
    let home = tempfile::tempdir().unwrap();
    let id = create_key(home.path());
    let out = kms(
        home.path(),
        &["schedule-key-deletion", &id, "--pending-days", "3"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("PendingWindowInDays"));
    assert_eq!(state(home.path(), &id), "Enabled");

    ok_json(
        home.path(),
        &["schedule-key-deletion", &id, "--pending-days", "7"],
    );
    let m = ok_json(home.path(), &["describe", &id]);
    assert_eq!(m["KeyMetadata"]["KeyState"], "PendingDeletion");
    assert_eq!(m["KeyMetadata"]["DeleteDate"].as_str().unwrap().len(), 20);

    // No way back from PendingDeletion.
    let out = kms(home.path(), &["enable-key", &id]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("Rejected.StateModifiedFailed"), "{err}");
    assert!(err.contains(&id), "{err}");
}

#[test]
fn unknown_key_names_it() {
    let home = tempfile::tempdir().unwrap();
    for (args, name) in [
        (
            vec!["describe", "0b7a1c2e-1111-4222-8333-444455556666"],
            "0b7a1c2e-1111-4222-8333-444455556666",
        ),
        (vec!["disable-key", "alias/missing"], "alias/missing"),
        (vec!["create-alias", "alias/x", "nokey"], "nokey"),
    ] {
        let out = kms(home.path(), &args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = stderr(&out);
        assert!(err.contains(name), "{err}");
        assert!(err.contains("envseal kms list"), "{err}");
        assert!(stdout(&out).is_empty());
    }
}

#[test]
fn bad_alias_is_a_usage_error() {
    let home = tempfile::tempdir().unwrap();
    let id = create_key(home.path());
    for bad in ["myalias", "alias/acs/reserved", "alias/with space"] {
        let out = kms(home.path(), &["create-alias", bad, &id]);
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", stderr(&out));
        assert!(stderr(&out).contains(bad), "{}", stderr(&out));
    }
    assert_eq!(
        ok_json(home.path(), &["list"])["Aliases"],
        serde_json::json!([])
    );
}

#[test]
fn kms_url_selects_the_store() {
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join("elsewhere");
    let url = format!("local:{}", dir.display());
    let out = run(envseal(home.path())
        .env("ENVSEAL_KMS", &url)
        .args(["kms", "create-key"]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(dir.join("store.json").exists());
    assert!(!home.path().join("keystore").exists());
    let v = ok_json(home.path(), &["list", "--kms", &url]);
    assert_eq!(v["Keys"].as_array().unwrap().len(), 1);

    let out = kms(home.path(), &["list", "--kms", "ftp://nowhere"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn sealed_store_needs_its_passphrase() {
    let home = tempfile::tempdir().unwrap();
    let with = |pass: &str, args: &[&str]| {
        run(envseal(home.path())
            .env("ENVSEAL_PASSPHRASE", pass)
            .arg("kms")
            .args(args))
    };
    let out = with("open sesame", &["create-key"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = serde_json::from_str::<Value>(&stdout(&out)).unwrap()["KeyMetadata"]["KeyId"]
        .as_str()
        .unwrap()
        .to_string();
    let key_file = home.path().join(format!("keystore/keys/{id}.json"));
    assert!(!std::fs::read_to_string(&key_file)
        .unwrap()
        .contains("open sesame"));

    let out = with("open sesame", &["describe", &id]);
    assert!(out.status.success(), "{}", stderr(&out));

    let out = with("wrong", &["list"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("wrong passphrase"), "{err}");
    assert!(err.contains("ENVSEAL_PASSPHRASE"), "{err}");
    assert!(stdout(&out).is_empty());

    // No passphrase and no terminal: told how to give one.
    let out = kms(home.path(), &["list"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("sealed"), "{err}");
    assert!(err.contains("ENVSEAL_PASSPHRASE"), "{err}");
}

#[test]
fn store_files_are_private() {
    let home = tempfile::tempdir().unwrap();
    let id = create_key(home.path());
    ok_json(home.path(), &["create-alias", "alias/p", &id]);
    ok_json(home.path(), &["disable-key", &id]);
    let store = home.path().join("keystore");
    let mut files = 0;
    for entry in walk(&store) {
        let meta = std::fs::symlink_metadata(&entry).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        if meta.is_dir() {
            assert_eq!(mode, 0o700, "{}", entry.display());
        } else {
            assert_eq!(mode, 0o600, "{}", entry.display());
            files += 1;
        }
    }
    // store.json, versions.json, aliases.json, audit.jsonl, .lock, one key file.
    assert_eq!(files, 6);
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
