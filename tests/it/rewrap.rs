//! `envseal rewrap`: batch keys move to another CMK with a few KMS calls per batch (counted in
//! the key store's audit log), no object is read or written, the old CMK can then be disabled,
//! and a kill -9 at any moment leaves a vault that opens.

use crate::common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::tree::{
    assert_same_tree, audit_count, code, files_under, gen_file, hash_file, manifest_records, ok,
    write,
};
use common::{envseal, stderr, stdout};

fn create_key(home: &Path) -> String {
    let o = ok(envseal(home).args(["kms", "create-key"]));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    v["KeyMetadata"]["KeyId"].as_str().unwrap().to_string()
}

/// Every object file: content digest and mtime (ns).
fn objects_state(vault: &Path) -> BTreeMap<PathBuf, (String, i64, i64)> {
    let dir = vault.join("objects");
    files_under(&dir)
        .into_iter()
        .map(|p| {
            let full = dir.join(&p);
            let md = fs::metadata(&full).unwrap();
            (p, (hash_file(&full), md.mtime(), md.mtime_nsec()))
        })
        .collect()
}

/// The CMK ids of the manifest's wrap records, and of the key files'.
fn wrapping_keys(vault: &Path) -> (Vec<String>, Vec<String>) {
    let m = manifest_records(vault)
        .iter()
        .filter(|r| r["type"] == "wrap")
        .map(|r| r["key_id"].as_str().unwrap().to_string())
        .collect();
    let mut k = Vec::new();
    for d in fs::read_dir(vault).unwrap() {
        let p = d.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("keys-") && name.ends_with(".json") {
            let v: serde_json::Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
            for w in v["wrapped"].as_array().unwrap() {
                k.push(w["key_id"].as_str().unwrap().to_string());
            }
        }
    }
    (m, k)
}

fn small_tree(dir: &Path, n: usize) -> PathBuf {
    let src = dir.join("src");
    for i in 0..n {
        write(
            &src.join(format!("d{}", i % 3)).join(format!("f{i}.txt")),
            format!("file {i}\n").as_bytes(),
        );
    }
    src
}

#[test]
fn rewrap_to_another_cmk_then_the_old_one_disabled() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let (a, b) = (create_key(&home), create_key(&home));
    let src = small_tree(t.path(), 9);
    gen_file(&src.join("big.bin"), 3 << 20, 7);
    let vault = t.path().join("vault");
    ok(envseal(&home)
        .args(["encrypt", "-q", "--batch-max-files", "4", "--key", &a, "-o"])
        .arg(&vault)
        .arg(&src));
    let before = objects_state(&vault);
    assert!(before.len() >= 2, "{before:?}");
    let batches = manifest_records(&vault)
        .iter()
        .filter(|r| r["type"] == "batch")
        .count();
    assert!(batches >= 3, "{batches} batches");

    let o = ok(envseal(&home)
        .args(["rewrap", "--json", "--key", &b])
        .arg(&vault));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["batches"], batches);
    assert_eq!(v["wrapped_by"], serde_json::json!([format!("local#{b}")]));
    let (m, k) = wrapping_keys(&vault);
    assert_eq!(m, vec![b.clone(); batches]);
    assert_eq!(k, vec![b.clone(); batches]);
    assert_eq!(objects_state(&vault), before, "no object may change");

    ok(envseal(&home).args(["kms", "disable-key", &a]));
    let o = ok(envseal(&home)
        .args(["verify", "--deep", "--json"])
        .arg(&vault));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    let dest = t.path().join("out");
    ok(envseal(&home)
        .args(["decrypt", "-q", "-o"])
        .arg(&dest)
        .arg(&vault));
    assert_same_tree(&src, &dest.join("src"));
    assert_eq!(objects_state(&vault), before);

    // The last wrapping is never removed; the vault is left as it was.
    let manifest = fs::read(vault.join("manifest.jsonl")).unwrap();
    let o = envseal(&home)
        .args(["rewrap", "--remove", &b])
        .arg(&vault)
        .output()
        .unwrap();
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("last wrapping"), "{}", stderr(&o));
    assert_eq!(fs::read(vault.join("manifest.jsonl")).unwrap(), manifest);

    // --add keeps B and adds A (enabled again); --remove B then leaves A alone.
    ok(envseal(&home).args(["kms", "enable-key", &a]));
    ok(envseal(&home)
        .args(["rewrap", "-q", "--add", "--key", &a])
        .arg(&vault));
    let (m, _) = wrapping_keys(&vault);
    assert_eq!(m.iter().filter(|x| **x == a).count(), batches);
    assert_eq!(m.iter().filter(|x| **x == b).count(), batches);
    ok(envseal(&home)
        .args(["rewrap", "-q", "--remove", &b])
        .arg(&vault));
    assert_eq!(
        wrapping_keys(&vault),
        (vec![a.clone(); batches], vec![a; batches])
    );
    // The same --remove again (a repeated command, or one killed at its very end) finds
    // nothing left to remove: exit 0, saying so, the vault unchanged.
    let manifest = fs::read(vault.join("manifest.jsonl")).unwrap();
    let o = ok(envseal(&home)
        .args(["rewrap", "--json", "--remove", &b])
        .arg(&vault));
    assert!(
        stderr(&o).contains(&format!("--remove {b}: nothing left to remove")),
        "{}",
        stderr(&o)
    );
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["nothing_to_remove"], serde_json::json!([b]));
    assert_eq!(v["removed"], 0);
    assert_eq!(fs::read(vault.join("manifest.jsonl")).unwrap(), manifest);
    let o = ok(envseal(&home).args(["verify", "--json"]).arg(&vault));
    assert!(stdout(&o).contains("\"ok\":true"), "{}", stdout(&o));
    assert_eq!(objects_state(&vault), before);
}

/// The same number of KMS calls for 1 MiB and 1 GiB of data, and no object read: the
/// rewrap runs with `objects/` moved out of the vault.
#[test]
fn rewrap_cost_does_not_depend_on_the_data() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let (a, b) = (create_key(&home), create_key(&home));
    let mut calls = Vec::new();
    for (name, size) in [("small", 256u64 << 10), ("large", 256 << 20)] {
        let src = t.path().join(name);
        for i in 0..4 {
            // Sparse sources: cheap to make, still 4 x 256 MiB of data to encrypt.
            fs::create_dir_all(&src).unwrap();
            let f = fs::File::create(src.join(format!("f{i}"))).unwrap();
            f.set_len(size).unwrap();
        }
        let vault = t.path().join(format!("{name}.vault"));
        ok(envseal(&home)
            .args(["encrypt", "-q", "--batch-max-files", "2", "--key", &a, "-o"])
            .arg(&vault)
            .arg(&src));
        let ops = ["Decrypt", "Encrypt", "GenerateDataKey"];
        let before: Vec<usize> = ops.iter().map(|op| audit_count(&home, op)).collect();
        let away = t.path().join(format!("{name}.objects"));
        fs::rename(vault.join("objects"), &away).unwrap();
        ok(envseal(&home)
            .args(["rewrap", "-q", "--key", &b])
            .arg(&vault));
        fs::rename(&away, vault.join("objects")).unwrap();
        let used: Vec<usize> = ops
            .iter()
            .zip(&before)
            .map(|(op, n)| audit_count(&home, op) - n)
            .collect();
        // Two batches: per batch one Decrypt of the old wrapping, one Encrypt under B, one
        // Decrypt of the new wrapping (checked against the commitment); nothing generated.
        assert_eq!(used, vec![4, 2, 0], "{name}");
        calls.push(used);
        let o = ok(envseal(&home)
            .args(["verify", "--deep", "--json"])
            .arg(&vault));
        assert!(stdout(&o).contains("\"ok\":true"), "{}", stdout(&o));
    }
    assert_eq!(calls[0], calls[1]);
}

/// kill -9 at spread-out moments of a rewrap: every time the vault decrypts, with the old
/// wrappings or the new ones (never a mix in the manifest), and running the rewrap again
/// leaves a vault that passes `verify --deep` without a single problem.
#[test]
fn kill_during_rewrap_leaves_a_vault_that_opens() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let (a, b) = (create_key(&home), create_key(&home));
    let src = small_tree(t.path(), 24);
    let pristine = t.path().join("pristine");
    ok(envseal(&home)
        .args(["encrypt", "-q", "--batch-max-files", "1", "--key", &a, "-o"])
        .arg(&pristine)
        .arg(&src));
    let batches = 24 + 1; // one file per batch (directories need none beyond the first)
    let n = manifest_records(&pristine)
        .iter()
        .filter(|r| r["type"] == "batch")
        .count();
    assert!(n >= 24, "{n} batches, expected about {batches}");

    // An uninterrupted run, timed.
    let vault = t.path().join("timed");
    common::tree::copy_vault(&pristine, &vault);
    let started = Instant::now();
    ok(envseal(&home)
        .args(["rewrap", "-q", "--key", &b])
        .arg(&vault));
    let full = started.elapsed();

    let mut seen = BTreeMap::new();
    // Denser early on: the KMS calls come first, the manifest rename, then the key files.
    for (i, frac) in [0.0, 0.05, 0.1, 0.2, 0.3, 0.45, 0.6, 0.8]
        .into_iter()
        .enumerate()
    {
        let vault = t.path().join(format!("v{i}"));
        common::tree::copy_vault(&pristine, &vault);
        let mut child = envseal(&home)
            .args(["rewrap", "-q", "--key", &b])
            .arg(&vault)
            .spawn()
            .unwrap();
        std::thread::sleep(full.mul_f64(frac) + Duration::from_millis(2));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();

        let (m, _) = wrapping_keys(&vault);
        let state = if m.iter().all(|k| *k == a) {
            "old"
        } else if m.iter().all(|k| *k == b) {
            "new"
        } else {
            panic!("kill {i}: the manifest mixes wrappings: {m:?}")
        };
        *seen.entry(state).or_insert(0) += 1;
        let dest = t.path().join(format!("out{i}"));
        ok(envseal(&home)
            .args(["decrypt", "-q", "-o"])
            .arg(&dest)
            .arg(&vault));
        assert_same_tree(&src, &dest.join("src"));
        // Running it again completes it: then no problem at all, even keyless.
        ok(envseal(&home)
            .args(["rewrap", "-q", "--key", &b])
            .arg(&vault));
        for deep in [true, false] {
            let mut c = envseal(&home);
            c.args(["verify", "--json"]);
            if deep {
                c.arg("--deep");
            }
            let o = ok(c.arg(&vault));
            assert!(
                stdout(&o).contains("\"ok\":true"),
                "kill {i}: {}",
                stdout(&o)
            );
        }
    }
    eprintln!("states after kill -9 (full run {full:?}): {seen:?}");
}

/// A vault with concealed names rewraps the same way (its sealed lines are copied as they
/// are) and still reveals and restores its tree under the new CMK alone.
#[test]
fn rewrap_a_concealed_vault() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let (a, b) = (create_key(&home), create_key(&home));
    let src = small_tree(t.path(), 7);
    let vault = t.path().join("vault");
    ok(envseal(&home)
        .args([
            "encrypt",
            "-q",
            "--conceal-names",
            "--batch-max-files",
            "3",
            "--key",
            &a,
            "-o",
        ])
        .arg(&vault)
        .arg(&src));
    ok(envseal(&home)
        .args(["rewrap", "-q", "--key", &b])
        .arg(&vault));
    ok(envseal(&home).args(["kms", "disable-key", &a]));
    let o = ok(envseal(&home).arg("ls").arg(&vault));
    assert!(stdout(&o).contains("src/d1/f4.txt"), "{}", stdout(&o));
    let dest = t.path().join("out");
    ok(envseal(&home)
        .args(["decrypt", "-q", "-o"])
        .arg(&dest)
        .arg(&vault));
    assert_same_tree(&src, &dest.join("src"));
}

/// A rewrap stopped after its commit point (the manifest renamed, a key file not yet
/// rewritten): `verify --deep` fails saying to run the same rewrap again, which completes it.
#[test]
fn verify_after_an_interrupted_rewrap_says_to_run_it_again() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let (a, b) = (create_key(&home), create_key(&home));
    let src = small_tree(t.path(), 6);
    let vault = t.path().join("vault");
    ok(envseal(&home)
        .args(["encrypt", "-q", "--batch-max-files", "2", "--key", &a, "-o"])
        .arg(&vault)
        .arg(&src));
    let key_files: Vec<PathBuf> = fs::read_dir(&vault)
        .unwrap()
        .map(|d| d.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("keys-")
        })
        .collect();
    let old = fs::read(&key_files[0]).unwrap();
    ok(envseal(&home)
        .args(["rewrap", "-q", "--key", &b])
        .arg(&vault));
    // What a kill among the key files leaves: one still under the old wrapping.
    fs::write(&key_files[0], &old).unwrap();
    for deep in [true, false] {
        let mut c = envseal(&home);
        c.arg("verify");
        if deep {
            c.arg("--deep");
        }
        let o = c.arg(&vault).output().unwrap();
        assert_ne!(code(&o), 0, "{}", stderr(&o));
        let all = stdout(&o) + &stderr(&o);
        assert!(all.contains("run the same rewrap again"), "{all}");
    }
    ok(envseal(&home)
        .args(["rewrap", "-q", "--key", &b])
        .arg(&vault));
    ok(envseal(&home).args(["verify", "-q", "--deep"]).arg(&vault));
}
