//! The core's use of the KMS (local key store): refused keys write nothing, and exactly one
//! `GenerateDataKey` per batch, one `Decrypt` per batch on the way back (counted in the key
//! store's audit log).

use crate::common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::tree::{audit_count, code, manifest_records, ok, write};
use common::{envseal, stderr, stdout};

fn create_key(home: &Path, passphrase: Option<&str>) -> String {
    let mut c = envseal(home);
    if let Some(p) = passphrase {
        c.env("ENVSEAL_PASSPHRASE", p);
    }
    let o = ok(c.args(["kms", "create-key"]));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    v["KeyMetadata"]["KeyId"].as_str().unwrap().to_string()
}

/// A tree of `n` small files.
fn tree(dir: &Path, n: usize) -> PathBuf {
    let src = dir.join(format!("files-{n}"));
    for i in 0..n {
        write(
            &src.join(format!("d{}", i % 7)).join(format!("f{i}.txt")),
            format!("file number {i}\n").as_bytes(),
        );
    }
    src
}

fn encrypt(home: &Path, src: &Path, vault: &Path, extra: &[&str]) -> Output {
    envseal(home)
        .args(["encrypt", "-q", "-o"])
        .arg(vault)
        .args(extra)
        .arg(src)
        .output()
        .unwrap()
}

/// A refused encryption exits 1, names the key, and leaves no vault behind.
fn assert_refused(o: &Output, vault: &Path, names: &str, case: &str) {
    let err = stderr(o);
    assert_eq!(code(o), 1, "{case}: {err}");
    assert!(
        err.contains(names),
        "{case}: error does not name {names}: {err}"
    );
    assert!(
        !vault.join("manifest.jsonl").exists(),
        "{case}: a manifest was written"
    );
    // Observed behaviour (and the contract we keep): no vault directory at all.
    assert!(
        !vault.exists(),
        "{case}: {} left behind: {:?}",
        vault.display(),
        common::tree::files_under(vault)
    );
}

#[test]
fn disabled_key_refuses_encrypt_and_writes_nothing() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = tree(t.path(), 3);
    let key = create_key(&home, None);
    ok(envseal(&home).args(["kms", "disable-key", &key]));
    let vault = t.path().join("vault");
    let o = encrypt(&home, &src, &vault, &["--key", &key]);
    assert_refused(&o, &vault, &key, "disabled key");
    assert!(stderr(&o).contains("Disabled"), "{}", stderr(&o));
    // The same -o is usable at once with a working key (nothing half-made blocks it).
    let good = create_key(&home, None);
    ok(envseal(&home)
        .args(["encrypt", "-q", "--key", &good, "-o"])
        .arg(&vault)
        .arg(&src));
}

#[test]
fn unknown_key_refuses_encrypt_and_writes_nothing() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = tree(t.path(), 3);
    create_key(&home, None);
    let uuid = "6f1f5a8e-1111-4222-8333-944444444444";
    for (i, key) in ["alias/nope", uuid].iter().enumerate() {
        let vault = t.path().join(format!("vault-{i}"));
        let o = encrypt(&home, &src, &vault, &["--key", key]);
        assert_refused(&o, &vault, key, key);
    }
    // An existing empty directory given as -o is left as it was (empty).
    let empty = t.path().join("empty");
    fs::create_dir(&empty).unwrap();
    let o = encrypt(&home, &src, &empty, &["--key", "alias/nope"]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert_eq!(fs::read_dir(&empty).unwrap().count(), 0);
}

#[test]
fn wrong_passphrase_refuses_encrypt_and_writes_nothing() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = tree(t.path(), 3);
    let key = create_key(&home, Some("a"));
    let vault = t.path().join("vault");
    for extra in [vec![], vec!["--key", key.as_str()]] {
        let o = envseal(&home)
            .env("ENVSEAL_PASSPHRASE", "b")
            .args(["encrypt", "-q", "-o"])
            .arg(&vault)
            .args(&extra)
            .arg(&src)
            .output()
            .unwrap();
        assert_refused(&o, &vault, "passphrase", "wrong passphrase");
    }
    // And the right one works.
    ok(envseal(&home)
        .env("ENVSEAL_PASSPHRASE", "a")
        .args(["encrypt", "-q", "--key", &key, "-o"])
        .arg(&vault)
        .arg(&src));
    // Decrypting with the wrong passphrase: exit 1, no output.
    let out = t.path().join("out");
    let o = envseal(&home)
        .env("ENVSEAL_PASSPHRASE", "b")
        .arg("decrypt")
        .arg(&vault)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("passphrase"), "{}", stderr(&o));
    assert!(!out.exists(), "decrypt created {}", out.display());
}

#[test]
fn disabled_key_refuses_decrypt_and_writes_nothing() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = tree(t.path(), 5);
    let key = create_key(&home, None);
    let vault = t.path().join("vault");
    ok(envseal(&home)
        .args(["encrypt", "-q", "--key", &key, "-o"])
        .arg(&vault)
        .arg(&src));
    ok(envseal(&home).args(["kms", "disable-key", &key]));
    let out = t.path().join("out");
    let o = envseal(&home)
        .arg("decrypt")
        .arg(&vault)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(code(&o), 1, "{err}");
    assert!(err.contains(&key) && err.contains("Disabled"), "{err}");
    assert!(!out.exists(), "decrypt created {}", out.display());
    // verify --deep needs the key too; keyless verify does not.
    let d = envseal(&home)
        .args(["verify", "--deep"])
        .arg(&vault)
        .output()
        .unwrap();
    assert_eq!(code(&d), 1, "{}", stderr(&d));
    ok(envseal(&home).arg("verify").arg(&vault));
    // Enabled again, it decrypts.
    ok(envseal(&home).args(["kms", "enable-key", &key]));
    ok(envseal(&home)
        .args(["decrypt", "-q", "-o"])
        .arg(&out)
        .arg(&vault));
}

#[test]
fn one_generate_data_key_per_batch_whatever_the_file_count() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    create_key(&home, None);
    let one = t.path().join("one.txt");
    write(&one, b"one");
    let mut before = audit_count(&home, "GenerateDataKey");
    for (src, what) in [(one, "1 file"), (tree(t.path(), 500), "500 files")] {
        let vault = t.path().join(format!("vault-{}", before));
        ok(envseal(&home)
            .args(["encrypt", "-q", "-o"])
            .arg(&vault)
            .arg(&src));
        let after = audit_count(&home, "GenerateDataKey");
        assert_eq!(after - before, 1, "{what}: GenerateDataKey calls");
        before = after;
    }
}

#[test]
fn batches_past_the_file_limit_get_their_own_key() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    create_key(&home, None);
    let src = tree(t.path(), 250);
    let vault = t.path().join("vault");
    let g0 = audit_count(&home, "GenerateDataKey");
    let o = ok(envseal(&home)
        .args(["encrypt", "-q", "--json", "--batch-max-files", "100", "-o"])
        .arg(&vault)
        .arg(&src));
    assert_eq!(audit_count(&home, "GenerateDataKey") - g0, 3);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["batches"], 3);
    assert_eq!(v["generated_keys"], 3);
    let recs = manifest_records(&vault);
    let batches: Vec<_> = recs.iter().filter(|r| r["type"] == "batch").collect();
    assert_eq!(batches.len(), 3, "batch records in the manifest");
    // Every batch holds at most 100 files, and all 250 are there.
    let mut per_batch = std::collections::HashMap::new();
    for r in recs.iter().filter(|r| r["kind"] == "file") {
        *per_batch.entry(r["batch"].as_u64().unwrap()).or_insert(0) += 1;
    }
    assert_eq!(per_batch.len(), 3);
    assert!(per_batch.values().all(|&n| n <= 100), "{per_batch:?}");
    assert_eq!(per_batch.values().sum::<i32>(), 250);
    // Three key files, one per batch.
    let key_files = fs::read_dir(&vault)
        .unwrap()
        .filter(|d| {
            let n = d.as_ref().unwrap().file_name();
            let n = n.to_string_lossy();
            n.starts_with("keys-") && n.ends_with(".json")
        })
        .count();
    assert_eq!(key_files, 3);

    let d0 = audit_count(&home, "Decrypt");
    let out = t.path().join("out");
    ok(envseal(&home)
        .args(["decrypt", "-q", "-o"])
        .arg(&out)
        .arg(&vault));
    assert_eq!(
        audit_count(&home, "Decrypt") - d0,
        3,
        "Decrypt calls for 3 batches"
    );
    common::tree::assert_same_tree(&src, &out.join("files-250"));
}
