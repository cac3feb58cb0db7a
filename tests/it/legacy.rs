//! `import-legacy`: files written by a Python port of the Alibaba KMS guide's envelope sample
//! (pycryptodome AES-EAX, the data key from `envseal kms serve` through the official
//! aliyun-python-sdk-kms, `tests/sdk/kms_guide_envelope.py`) import byte-identical, into a
//! vault of one batch or a directory; damaged files are named and skipped (exit 1).

use crate::common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use common::servers::{KmsServer, ALI_ID, ALI_SECRET};
use common::tree::{code, gen_file, manifest_records, ok, write};
use common::{envseal, stderr, stdout};

fn cmd(home: &Path) -> Command {
    let mut c = envseal(home);
    c.env("ALIBABA_CLOUD_ACCESS_KEY_ID", ALI_ID)
        .env("ALIBABA_CLOUD_ACCESS_KEY_SECRET", ALI_SECRET)
        .env("ENVSEAL_KMS_ATTEMPTS", "1");
    c
}

fn key_id(o: &std::process::Output) -> String {
    let v: serde_json::Value = serde_json::from_str(&stdout(o)).unwrap();
    v["KeyMetadata"]["KeyId"].as_str().unwrap().to_string()
}

/// Rewrites line `line` (0-based) of a guide file through `f` on its decoded bytes.
fn edit_line(path: &Path, line: usize, f: impl FnOnce(&mut Vec<u8>)) {
    let b64 = base64::engine::general_purpose::STANDARD;
    let text = fs::read_to_string(path).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let mut bytes = b64.decode(&lines[line]).unwrap();
    f(&mut bytes);
    lines[line] = b64.encode(bytes);
    fs::write(path, lines.join("\n") + "\n").unwrap();
}

#[test]
fn guide_files_import_byte_identical_and_bad_ones_are_named() {
    let Some(pyenv) = common::pyenv() else { return };
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let server = KmsServer::start();
    let url = server.url();
    let guide_key = key_id(&ok(cmd(&home).args(["kms", "create-key", "--kms", &url])));
    ok(cmd(&home).args([
        "kms",
        "create-alias",
        "alias/Apollo/WorkKey",
        &guide_key,
        "--kms",
        &url,
    ]));
    let vault_key = key_id(&ok(cmd(&home).args(["kms", "create-key"])));

    // The plaintexts, and the guide's sample run on them.
    let plain = t.path().join("plain");
    write(
        &plain.join("notes.txt"),
        b"envelope encryption, the guide's way\n",
    );
    write(&plain.join("empty.txt"), b"");
    gen_file(&plain.join("sales.bin"), 300 * 1024 + 5, 11);
    gen_file(&plain.join("damaged.bin"), 4096, 12);
    let cipher = t.path().join("cipher");
    fs::create_dir_all(&cipher).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/kms_guide_envelope.py");
    let names = ["notes.txt", "empty.txt", "sales.bin", "damaged.bin"];
    let o = Command::new(pyenv.join("bin/python"))
        .arg(&script)
        .args(["--endpoint", &format!("127.0.0.1:{}", server.port)])
        .args(["--key", "alias/Apollo/WorkKey", "-o"])
        .arg(&cipher)
        .args(names.iter().map(|n| plain.join(n)))
        .env("ALIBABA_CLOUD_ACCESS_KEY_ID", ALI_ID)
        .env("ALIBABA_CLOUD_ACCESS_KEY_SECRET", ALI_SECRET)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert_eq!(server.count("GenerateDataKey"), names.len());

    // One flipped ciphertext byte; a file of three lines; a bad base64 nonce.
    edit_line(&cipher.join("damaged.bin.cipher"), 2, |b| b[100] ^= 1);
    let short = cipher.join("short.cipher");
    let text = fs::read_to_string(cipher.join("notes.txt.cipher")).unwrap();
    fs::write(
        &short,
        text.lines().take(3).collect::<Vec<_>>().join("\n") + "\n",
    )
    .unwrap();
    let garbled = cipher.join("garbled.cipher");
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines[1] = "not base64!".into();
    fs::write(&garbled, lines.join("\n") + "\n").unwrap();
    let mut inputs: Vec<PathBuf> = fs::read_dir(&cipher)
        .unwrap()
        .map(|d| d.unwrap().path())
        .collect();
    inputs.sort();

    let vault = t.path().join("vault");
    let o = cmd(&home)
        .args([
            "import-legacy",
            "--json",
            "--kms",
            &url,
            "--key",
            &format!("local#{vault_key}"),
        ])
        .args(&inputs)
        .arg("-o")
        .arg(&vault)
        .output()
        .unwrap();
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let err = stderr(&o);
    for (bad, why) in [
        ("damaged.bin.cipher", "EAX tag"),
        ("short.cipher", "3 line(s)"),
        ("garbled.cipher", "line 2"),
    ] {
        assert!(
            err.lines().any(|l| l.contains(bad) && l.contains(why)),
            "{bad} not named with {why:?}: {err}"
        );
    }
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["imported"], 3);
    assert_eq!(v["batches"], 1);
    let recs = manifest_records(&vault);
    assert_eq!(recs.iter().filter(|r| r["type"] == "batch").count(), 1);
    let paths: Vec<&str> = recs
        .iter()
        .filter(|r| r["type"] == "entry")
        .map(|r| r["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["empty.txt", "notes.txt", "sales.bin"]);

    // Decrypted with the vault's own (local) key, the server stopped: byte-identical.
    drop(server);
    let out = t.path().join("out");
    ok(envseal(&home)
        .args(["decrypt", "-q", "-o"])
        .arg(&out)
        .arg(&vault));
    for n in ["notes.txt", "empty.txt", "sales.bin"] {
        assert_eq!(
            fs::read(out.join(n)).unwrap(),
            fs::read(plain.join(n)).unwrap(),
            "{n}"
        );
    }
    assert!(!out.join("damaged.bin").exists());
    // The vault is an ordinary one: keyless and deep verification pass.
    for deep in [false, true] {
        let mut c = envseal(&home);
        c.args(["verify", "--json"]);
        if deep {
            c.arg("--deep");
        }
        let o = ok(c.arg(&vault));
        assert!(stdout(&o).contains("\"ok\":true"), "{}", stdout(&o));
    }
}

/// `--to DEST` writes the plaintext files; a damaged one is refused by name and not written.
#[test]
fn guide_files_import_to_a_directory() {
    let Some(pyenv) = common::pyenv() else { return };
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let server = KmsServer::start();
    let url = server.url();
    let k = key_id(&ok(cmd(&home).args(["kms", "create-key", "--kms", &url])));
    let plain = t.path().join("plain");
    gen_file(&plain.join("a.bin"), 70_000, 1);
    gen_file(&plain.join("b.bin"), 1234, 2);
    let cipher = t.path().join("cipher");
    fs::create_dir_all(&cipher).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/kms_guide_envelope.py");
    let o = Command::new(pyenv.join("bin/python"))
        .arg(&script)
        .args([
            "--endpoint",
            &format!("127.0.0.1:{}", server.port),
            "--key",
            &k,
            "-o",
        ])
        .arg(&cipher)
        .arg(plain.join("a.bin"))
        .arg(plain.join("b.bin"))
        .env("ALIBABA_CLOUD_ACCESS_KEY_ID", ALI_ID)
        .env("ALIBABA_CLOUD_ACCESS_KEY_SECRET", ALI_SECRET)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    edit_line(&cipher.join("b.bin.cipher"), 3, |tag| tag[0] ^= 0x80);
    let dest = t.path().join("dest");
    let o = cmd(&home)
        .args(["import-legacy", "--kms", &url, "--to"])
        .arg(&dest)
        .arg(cipher.join("a.bin.cipher"))
        .arg(cipher.join("b.bin.cipher"))
        .output()
        .unwrap();
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("b.bin.cipher"), "{}", stderr(&o));
    assert_eq!(
        fs::read(dest.join("a.bin")).unwrap(),
        fs::read(plain.join("a.bin")).unwrap()
    );
    assert!(!dest.join("b.bin").exists());
}

/// A guide file made here (as the guide's sample does it) with a data key the key store in
/// `store` generates under `cmk`: CiphertextBlob, EAX nonce, ciphertext, tag.
fn guide_file_from_store(store: &Path, cmk: &str, plain: &[u8], out: &Path) {
    use eax::aead::generic_array::GenericArray;
    use eax::aead::{AeadInPlace, KeyInit};
    use envseal::kms::{EncryptionContext, KeyProvider, KmsOptions};
    let p = envseal::kms::local::LocalProvider::open(Some(store), &KmsOptions::default()).unwrap();
    let k = p
        .generate_data_key(cmk, &EncryptionContext::default())
        .unwrap();
    let cipher = eax::Eax::<aes::Aes256>::new(GenericArray::from_slice(k.plaintext.expose()));
    let nonce = [5u8; 16];
    let mut buf = plain.to_vec();
    let tag = cipher
        .encrypt_in_place_detached(GenericArray::from_slice(&nonce), b"", &mut buf)
        .unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    let text = format!(
        "{}\n{}\n{}\n{}\n",
        k.wrapped.blob,
        b64.encode(nonce),
        b64.encode(&buf),
        b64.encode(tag)
    );
    fs::write(out, text).unwrap();
}

/// The same with the local key store of `home` (the CLI's `--kms local`).
fn local_guide_file(home: &Path, cmk: &str, plain: &[u8], out: &Path) {
    guide_file_from_store(&home.join("keystore"), cmk, plain, out);
}

/// The same through the Alibaba-compatible server: its `Decrypt` answer names the CMK
/// (`KeyId`), which the vault is then sealed under, at that server.
#[test]
fn without_key_the_vault_is_sealed_under_the_cmk_an_aliyun_decrypt_names() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let server = KmsServer::start();
    let url = server.url();
    let k = key_id(&ok(cmd(&home).args(["kms", "create-key", "--kms", &url])));
    let a = t.path().join("a.txt.cipher");
    guide_file_from_store(&server.store, &k, b"alpha\n", &a);
    let vault = t.path().join("vault");
    ok(cmd(&home)
        .args(["import-legacy", "-q", "--kms", &url, "-o"])
        .arg(&vault)
        .arg(&a));
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
    assert_eq!(wraps.len(), 1, "{wraps:?}");
    assert_eq!(wraps[0].1, k);
    assert!(wraps[0].0.starts_with("aliyun:"), "{wraps:?}");
    let out = t.path().join("out");
    ok(cmd(&home)
        .args(["decrypt", "-q", "--kms", &url, "-o"])
        .arg(&out)
        .arg(&vault));
    assert_eq!(fs::read(out.join("a.txt")).unwrap(), b"alpha\n");
}

fn local_cmk(home: &Path) -> String {
    key_id(&ok(envseal(home).args(["kms", "create-key"])))
}

/// Without `--key` the vault is sealed under the CMK that wrapped the guide files (the
/// KMS's Decrypt names it), not under a default alias the legacy KMS may not have; files
/// under several CMKs need `--key`.
#[test]
fn without_key_the_vault_is_sealed_under_the_guide_files_cmk() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let (k1, k2) = (local_cmk(&home), local_cmk(&home));
    let a = t.path().join("a.txt.cipher");
    let b = t.path().join("b.txt.cipher");
    local_guide_file(&home, &k1, b"alpha\n", &a);
    local_guide_file(&home, &k1, b"beta\n", &b);
    let vault = t.path().join("vault");
    ok(envseal(&home)
        .args(["import-legacy", "-q", "-o"])
        .arg(&vault)
        .arg(&a)
        .arg(&b));
    let wraps: Vec<String> = manifest_records(&vault)
        .iter()
        .filter(|r| r["type"] == "wrap")
        .map(|r| r["key_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(wraps, vec![k1.clone()]);
    let out = t.path().join("out");
    ok(envseal(&home)
        .args(["decrypt", "-q", "-o"])
        .arg(&out)
        .arg(&vault));
    assert_eq!(fs::read(out.join("b.txt")).unwrap(), b"beta\n");

    let c = t.path().join("c.txt.cipher");
    local_guide_file(&home, &k2, b"gamma\n", &c);
    let o = envseal(&home)
        .args(["import-legacy", "-q", "-o"])
        .arg(t.path().join("mixed"))
        .arg(&a)
        .arg(&c)
        .output()
        .unwrap();
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("2 different CMKs"), "{}", stderr(&o));
    assert!(stderr(&o).contains("--key"), "{}", stderr(&o));
    ok(envseal(&home)
        .args(["import-legacy", "-q", "--key", &k2, "-o"])
        .arg(t.path().join("mixed"))
        .arg(&a)
        .arg(&c));
}

/// An import killed before its manifest (key file and object written, a partial
/// `manifest.tmp`) is finished by the same command; another writer holding the vault is
/// named; a directory holding anything else is still refused.
#[test]
fn a_killed_import_is_finished_by_the_same_command() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let k = local_cmk(&home);
    let a = t.path().join("a.txt.cipher");
    local_guide_file(&home, &k, b"alpha\n", &a);
    let vault = t.path().join("vault");
    let import = |vault: &Path| {
        let mut c = envseal(&home);
        c.args(["import-legacy", "-q", "-o"]).arg(vault).arg(&a);
        c
    };
    ok(&mut import(&vault));
    // What a kill before the manifest's rename leaves.
    let manifest = fs::read(vault.join("manifest.jsonl")).unwrap();
    fs::remove_file(vault.join("manifest.jsonl")).unwrap();
    fs::write(vault.join("manifest.tmp"), &manifest[..manifest.len() / 2]).unwrap();
    ok(&mut import(&vault));
    ok(envseal(&home).args(["verify", "-q", "--deep"]).arg(&vault));
    let objects = common::tree::files_under(&vault.join("objects"));
    assert_eq!(objects.len(), 1, "the old object is gone: {objects:?}");
    let keys = fs::read_dir(&vault)
        .unwrap()
        .filter(|d| {
            let n = d.as_ref().unwrap().file_name();
            n.to_string_lossy().starts_with("keys-")
        })
        .count();
    assert_eq!(keys, 1);

    // Held by another writer: refused by name.
    let other = t.path().join("other");
    let lock = envseal::store::local::DirLock::acquire(&other, true).unwrap();
    let o = import(&other).output().unwrap();
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!(
            "another envseal run (pid {}) is using",
            std::process::id()
        )),
        "{}",
        stderr(&o)
    );
    drop(lock);

    // Anything else in the directory: refused as before, nothing removed.
    fs::remove_file(vault.join("manifest.jsonl")).unwrap();
    fs::write(vault.join("notes.txt"), b"mine\n").unwrap();
    let o = import(&vault).output().unwrap();
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("exists and is not empty"),
        "{}",
        stderr(&o)
    );
    assert_eq!(common::tree::files_under(&vault.join("objects")).len(), 1);
}
