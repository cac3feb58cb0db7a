//! Regression tests for the findings of the core review: each test failed before its fix.

use envseal::store::local::LocalStore;
use std::fs;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use envseal::error::Error;
use envseal::format::{self, layout};
use envseal::kms::keys::Kms;
use envseal::kms::local::LocalProvider;
use envseal::kms::{
    DataKey, EncryptionContext, GeneratedKey, KeyProvider, KmsError, KmsOptions, WrappedKey,
};
use envseal::pipeline::decrypt::{decrypt, DecryptOptions};
use envseal::pipeline::encrypt::{encrypt, EncryptOptions};
use envseal::progress::NoProgress;

/// A source tree, a local key store and a vault path, all in one temporary directory.
struct Fixture {
    tmp: tempfile::TempDir,
    src: PathBuf,
    vault: PathBuf,
    store: PathBuf,
}

impl Fixture {
    fn new(files: &[(&str, &[u8])]) -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("data");
        fs::create_dir_all(&src).unwrap();
        for (name, body) in files {
            fs::write(src.join(name), body).unwrap();
        }
        Fixture {
            src,
            vault: tmp.path().join("vault"),
            store: tmp.path().join("keystore"),
            tmp,
        }
    }

    fn url(&self) -> String {
        format!("local:{}", self.store.display())
    }

    fn provider(&self) -> LocalProvider {
        LocalProvider::open(Some(&self.store), &KmsOptions::default()).unwrap()
    }

    fn kms(&self) -> Kms {
        Kms::new(KmsOptions::default(), None).with_provider(&self.url(), Arc::new(self.provider()))
    }

    fn opts(&self, segment_size: u32) -> EncryptOptions {
        EncryptOptions {
            segment_size,
            jobs: 2,
            ..EncryptOptions::new(vec![self.src.clone()], self.vault.clone(), self.url())
        }
    }

    fn encrypt(&self, segment_size: u32) {
        encrypt(
            &self.opts(segment_size),
            &self.kms(),
            &NoProgress,
            &AtomicBool::new(false),
        )
        .unwrap();
    }

    fn decrypt_with(&self, kms: &Kms) -> (envseal::Result<u64>, PathBuf) {
        let dest = self.tmp.path().join("out");
        let opts = DecryptOptions {
            jobs: 2,
            ..DecryptOptions::new(self.vault.clone(), dest.clone())
        };
        let r = decrypt(&opts, kms, &NoProgress, &AtomicBool::new(false)).map(|r| {
            assert!(r.failed.is_empty(), "failed: {:?}", r.failed);
            r.files
        });
        (r, dest)
    }

    fn manifest_path(&self) -> PathBuf {
        self.vault.join(layout::MANIFEST)
    }
}

/// Delegates to a local provider, and puts the genuine manifest back in place while the
/// batch key is being unwrapped: a manifest that changes between being parsed and being
/// authenticated.
struct SwapOnDecrypt {
    inner: LocalProvider,
    manifest: PathBuf,
    genuine: Vec<u8>,
}

impl KeyProvider for SwapOnDecrypt {
    fn url(&self) -> String {
        self.inner.url()
    }

    fn generate_data_key(
        &self,
        key: &str,
        context: &EncryptionContext,
    ) -> Result<GeneratedKey, KmsError> {
        self.inner.generate_data_key(key, context)
    }

    fn decrypt(&self, wrapped: &WrappedKey) -> Result<DataKey, KmsError> {
        let tmp = self.manifest.with_extension("swap");
        fs::write(&tmp, &self.genuine).unwrap();
        fs::rename(&tmp, &self.manifest).unwrap();
        self.inner.decrypt(wrapped)
    }

    fn encrypt(
        &self,
        key: &str,
        plaintext: &DataKey,
        context: &EncryptionContext,
    ) -> Result<WrappedKey, KmsError> {
        self.inner.encrypt(key, plaintext, context)
    }
}

/// key is unwrapped must not restore anything from the tampered text.
#[test]
fn the_manifest_used_is_the_manifest_authenticated() {
    let fx = Fixture::new(&[("a.txt", b"hello")]);
    fx.encrypt(4096);
    let genuine = fs::read(fx.manifest_path()).unwrap();
    let text = String::from_utf8(genuine.clone()).unwrap();
    assert!(text.contains("\"data/a.txt\""));
    fs::write(
        fx.manifest_path(),
        text.replace("\"data/a.txt\"", "\"data/b.txt\""),
    )
    .unwrap();
    let swap = SwapOnDecrypt {
        inner: fx.provider(),
        manifest: fx.manifest_path(),
        genuine,
    };
    let kms = Kms::new(KmsOptions::default(), None).with_provider(&fx.url(), Arc::new(swap));
    let (r, dest) = fx.decrypt_with(&kms);
    assert!(
        !dest.join("data/b.txt").exists(),
        "a path from the unauthenticated manifest text was restored"
    );
    assert!(
        matches!(r, Err(Error::Integrity { .. })),
        "expected an integrity error, got {r:?}"
    );
}

/// walking a large tree) must finish when the same command is run again.
#[test]
fn a_run_killed_before_its_first_batch_resumes() {
    use base64::Engine;
    use envseal::pipeline::journal::{Journal, RunParams, RunRecord};
    let fx = Fixture::new(&[("a.txt", b"hello"), ("b.txt", b"world")]);
    let opts = fx.opts(4096);
    fs::create_dir_all(&fx.vault).unwrap();
    let abs = std::path::absolute(&fx.src).unwrap();
    let run = RunRecord {
        kind: "run".into(),
        format: format::FORMAT_VERSION,
        vault_id: "ab".repeat(16),
        created: "2026-11-28T00:00:00Z".into(),
        params: RunParams {
            sources: vec![base64::engine::general_purpose::STANDARD
                .encode(std::os::unix::ffi::OsStrExt::as_bytes(abs.as_os_str()))],
            key: opts.key.clone(),
            kms: opts.kms_url.clone(),
            segment_size: opts.segment_size,
            conceal_names: opts.conceal_names,
            excludes: opts.excludes.clone(),
            also_keys: Vec::new(),
            since: None,
            shard: None,
            compress: None,
        },
    };
    drop(Journal::create(&LocalStore::new(&fx.vault), &run).unwrap()); // the "crash"
    let r = encrypt(&opts, &fx.kms(), &NoProgress, &AtomicBool::new(false))
        .expect("the rerun of an interrupted command must finish");
    assert_eq!(r.files, 2);
    let (r, dest) = fx.decrypt_with(&fx.kms());
    assert_eq!(r.unwrap(), 2);
    assert_eq!(fs::read(dest.join("data/b.txt")).unwrap(), b"world");
}

/// not overflow (a panic in debug builds, wrapped arithmetic in release builds).
#[test]
fn hostile_sizes_in_the_manifest_do_not_overflow() {
    use envseal::pipeline::verify::{verify, ProblemKind, VerifyOptions};
    // 64 MiB segments: 2^58 bytes is the largest size with at most 2^32 segments.
    let files: Vec<(String, Vec<u8>)> = (0..65).map(|i| (format!("f{i:02}"), vec![1])).collect();
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    let fx = Fixture::new(&refs);
    fx.encrypt(64 << 20);
    let text = fs::read_to_string(fx.manifest_path()).unwrap();
    let verify_keyless = || {
        verify(
            &LocalStore::new(&fx.vault),
            &VerifyOptions {
                deep: false,
                jobs: 2,
                sample: Default::default(),
            },
            None,
            &NoProgress,
            &AtomicBool::new(false),
        )
    };

    // Each size valid on its own, their sum over u64: refused (each record would lie outside
    // its object), no panic.
    fs::write(
        fx.manifest_path(),
        text.replace("\"size\":1,", &format!("\"size\":{},", 1u64 << 58)),
    )
    .unwrap();
    let e = verify_keyless().unwrap_err();
    assert_eq!(e.exit_code(), 3, "{e}");
    let _ = ProblemKind::Corrupt;

    // A size with more than 2^32 segments is refused when the manifest is parsed.
    fs::write(
        fx.manifest_path(),
        text.replacen("\"size\":1,", &format!("\"size\":{},", u64::MAX), 1),
    )
    .unwrap();
    let e = verify_keyless().unwrap_err();
    assert_eq!(e.exit_code(), 3, "{e}");
}

/// temporary name beside it must not be longer than the limit).
#[test]
fn a_file_with_a_long_name_is_restored() {
    let name = "n".repeat(250);
    let fx = Fixture::new(&[(name.as_str(), b"long name")]);
    fx.encrypt(4096);
    let (r, dest) = fx.decrypt_with(&fx.kms());
    assert_eq!(r.unwrap(), 1);
    assert_eq!(
        fs::read(dest.join("data").join(&name)).unwrap(),
        b"long name"
    );
}

/// `verify` must notice when its wrapped key differs from the manifest's, not only its ids.
#[test]
fn a_key_file_with_another_wrapped_key_is_reported() {
    use envseal::pipeline::verify::ProblemKind;
    let fx = Fixture::new(&[("a.txt", b"hello")]);
    fx.encrypt(4096);
    let kf = key_file(&fx);
    let mut v: serde_json::Value = serde_json::from_slice(&fs::read(&kf).unwrap()).unwrap();
    v["wrapped"][0]["blob"] = serde_json::Value::String("AAAA".into());
    fs::write(&kf, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    let problems = verify_problems(&fx, false);
    assert!(
        problems.iter().any(|p| p.kind == ProblemKind::KeyFile),
        "{problems:?}"
    );
}

/// With `--conceal-names` the manifest must not list entries in the order of their clear
/// paths: with kinds, sizes and times visible, that order gives the tree's shape away (a
/// directory is followed by its contents), which docs/FORMAT.md §9 says concealing hides.
#[test]
fn concealed_entries_are_not_in_clear_path_order() {
    use base64::Engine;
    let fx = Fixture::new(&[]);
    for d in 0..4 {
        for f in 0..3 {
            let p = fx.src.join(format!("d{d}/f{f}"));
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, b"x").unwrap();
        }
    }
    let mut opts = fx.opts(4096);
    opts.conceal_names = true;
    let kms = fx.kms();
    encrypt(&opts, &kms, &NoProgress, &AtomicBool::new(false)).unwrap();
    let m = envseal::pipeline::vault::read_manifest(&LocalStore::new(&fx.vault), "manifest.jsonl")
        .unwrap();
    let nk = kms
        .unwrap(&m.header.vault_id, &m.batches[0])
        .unwrap()
        .name_key();
    let text = fs::read_to_string(fx.manifest_path()).unwrap();
    let listed: Vec<Vec<u8>> = text
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let sealed = v["enc_path"].as_str()?;
            let sealed = base64::engine::general_purpose::STANDARD
                .decode(sealed)
                .unwrap();
            Some(nk.open(&sealed, b"envseal path").unwrap())
        })
        .collect();
    assert_eq!(listed.len(), 1 + 4 + 12);
    let mut sorted = listed.clone();
    sorted.sort();
    assert_ne!(
        listed, sorted,
        "concealed entries are listed in clear-path order"
    );
    // And the vault still decrypts in full.
    let (r, dest) = fx.decrypt_with(&kms);
    assert_eq!(r.unwrap(), 12);
    assert_eq!(fs::read(dest.join("data/d3/f2")).unwrap(), b"x");
}

/// The provider URL of a wrapped key is read from the vault, before anything is authenticated:
/// unwrapping must not create a local key store wherever a (hostile) manifest points, which
/// would write outside DEST and cannot hold the key anyway.
#[test]
fn unwrapping_never_creates_a_local_key_store() {
    let fx = Fixture::new(&[("a.txt", b"hello")]);
    fx.encrypt(4096);
    let elsewhere = fx.tmp.path().join("elsewhere/store");
    let text = fs::read_to_string(fx.manifest_path()).unwrap();
    let url = fx.url();
    assert!(text.contains(&url));
    fs::write(
        fx.manifest_path(),
        text.replace(&url, &format!("local:{}", elsewhere.display())),
    )
    .unwrap();
    // A KMS with no provider registered for that URL: it is built from the URL.
    let (r, _) = fx.decrypt_with(&Kms::new(KmsOptions::default(), None));
    assert!(r.is_err());
    assert!(
        !fx.tmp.path().join("elsewhere").exists(),
        "decrypt created a key store at the manifest's URL"
    );
}

/// A run killed after its manifest was written but before its journal was removed has
/// finished: running the same command again must say so (and tidy up), not refuse the vault.
#[test]
fn a_run_killed_after_its_manifest_finishes_on_rerun() {
    use base64::Engine;
    use envseal::pipeline::journal::{Journal, RunParams, RunRecord};
    let fx = Fixture::new(&[("a.txt", b"hello")]);
    let opts = fx.opts(4096);
    fx.encrypt(4096);
    let manifest = fs::read(fx.manifest_path()).unwrap();
    let abs = std::path::absolute(&fx.src).unwrap();
    let params = RunParams {
        sources: vec![base64::engine::general_purpose::STANDARD
            .encode(std::os::unix::ffi::OsStrExt::as_bytes(abs.as_os_str()))],
        key: opts.key.clone(),
        kms: opts.kms_url.clone(),
        segment_size: opts.segment_size,
        conceal_names: opts.conceal_names,
        excludes: opts.excludes.clone(),
        also_keys: Vec::new(),
        since: None,
        shard: None,
        compress: None,
    };
    let vault_id = format::to_hex(
        &envseal::pipeline::vault::read_manifest(&LocalStore::new(&fx.vault), "manifest.jsonl")
            .unwrap()
            .header
            .vault_id,
    );
    let run = |params: RunParams| RunRecord {
        kind: "run".into(),
        format: format::FORMAT_VERSION,
        vault_id: vault_id.clone(),
        created: "2026-11-28T00:00:00Z".into(),
        params,
    };
    let journal = fx.vault.join(layout::JOURNAL);
    let receipt = fs::read(&journal).expect("a finished vault keeps its receipt");
    assert!(receipt.starts_with(br#"{"type":"finished""#));
    // The receipt does not show the source paths (a concealed vault must not).
    let name = fx.src.file_name().unwrap().to_str().unwrap();
    assert!(!String::from_utf8_lossy(&receipt).contains(name));
    fs::remove_file(&journal).unwrap();
    drop(Journal::create(&LocalStore::new(&fx.vault), &run(params.clone())).unwrap()); // the "crash"
    let r = encrypt(&opts, &fx.kms(), &NoProgress, &AtomicBool::new(false))
        .expect("the rerun of a finished command must succeed");
    assert_eq!(r.files, 1);
    assert_eq!(
        fs::read(&journal).unwrap(),
        receipt,
        "the journal becomes the receipt"
    );
    assert_eq!(fs::read(fx.manifest_path()).unwrap(), manifest);
    // Run again with the receipt in place: finished again, nothing changes.
    let r = encrypt(&opts, &fx.kms(), &NoProgress, &AtomicBool::new(false))
        .expect("the rerun of a finished command must succeed");
    assert_eq!(r.files, 1);
    assert_eq!(fs::read(fx.manifest_path()).unwrap(), manifest);
    fs::remove_file(&journal).unwrap();
    // Another command's leftover journal, or none at all: still refused.
    let mut other = params;
    other.excludes = vec!["*.tmp".into()];
    drop(Journal::create(&LocalStore::new(&fx.vault), &run(other)).unwrap());
    let e = encrypt(&opts, &fx.kms(), &NoProgress, &AtomicBool::new(false)).unwrap_err();
    assert!(matches!(e, Error::Usage(_)), "{e}");
    fs::remove_file(&journal).unwrap();
    let e = encrypt(&opts, &fx.kms(), &NoProgress, &AtomicBool::new(false)).unwrap_err();
    assert!(matches!(e, Error::Usage(_)), "{e}");
}

/// Reads a whole manifest (keyless), as every reader does.
fn read_all(vault: &std::path::Path) -> envseal::Result<Vec<envseal::format::manifest::Entry>> {
    let mut r = envseal::pipeline::vault::read_manifest(&LocalStore::new(vault), "manifest.jsonl")?;
    let mut out = Vec::new();
    while let Some(e) = r.next_entry()? {
        out.push(e);
    }
    Ok(out)
}

/// docs/FORMAT.md §6: one entry per path, in tree order; `mode` holds permission bits only;
/// link targets obey the path limits (no NUL, at most 4096 bytes). The reader accepted
/// manifests breaking each rule.
#[test]
fn the_reader_enforces_the_entry_rules() {
    let fx = Fixture::new(&[("a.txt", b"hello"), ("b.txt", b"world")]);
    std::os::unix::fs::symlink("a.txt", fx.src.join("c-link")).unwrap();
    fx.encrypt(4096);
    let text = fs::read_to_string(fx.manifest_path()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let entry_at = |p: &str| {
        lines
            .iter()
            .position(|l| l.contains(&format!("\"path\":\"{p}\"")))
            .unwrap()
    };
    let (a, b) = (entry_at("data/a.txt"), entry_at("data/b.txt"));
    let n = lines.len();
    let write = |ls: Vec<String>| {
        fs::write(fx.manifest_path(), ls.join("\n") + "\n").unwrap();
        read_all(&fx.vault)
    };
    let owned = || lines.iter().map(|l| l.to_string()).collect::<Vec<_>>();
    assert!(write(owned()).is_ok());

    // A duplicated entry (with the count fixed up).
    let mut ls = owned();
    ls.insert(a, ls[a].clone());
    ls[n] = ls[n].replace("\"entries\":4", "\"entries\":5");
    assert!(ls[n].contains("\"entries\":5"), "{}", ls[n]);
    let e = write(ls).unwrap_err();
    assert_eq!(e.exit_code(), 3, "duplicate: {e}");

    // Two entries out of order.
    let mut ls = owned();
    ls.swap(a, b);
    let e = write(ls).unwrap_err();
    assert_eq!(e.exit_code(), 3, "order: {e}");

    // File-type bits in `mode`.
    let mut ls = owned();
    let mode = format!("\"mode\":{}", 0o644);
    assert!(ls[a].contains(&mode), "{}", ls[a]);
    ls[a] = ls[a].replace(&mode, &format!("\"mode\":{}", 0o100644));
    let e = write(ls).unwrap_err();
    assert_eq!(e.exit_code(), 3, "mode: {e}");

    // A NUL in a link target, and an over-long one.
    for bad in ["a\\u0000b".to_string(), "x".repeat(4097)] {
        let mut ls = owned();
        let l = entry_at("data/c-link");
        ls[l] = ls[l].replace("\"target\":\"a.txt\"", &format!("\"target\":\"{bad}\""));
        assert_ne!(ls[l], lines[l]);
        let e = write(ls).unwrap_err();
        assert_eq!(e.exit_code(), 3, "target: {e}");
    }
}

/// Key files are untrusted input to keyless `verify`, read whole: they need a size limit
/// before allocating (docs/FORMAT.md §8). A key file padded past it is reported, not loaded.
#[test]
fn an_oversized_key_file_is_refused() {
    use envseal::pipeline::verify::ProblemKind;
    let fx = Fixture::new(&[("a.txt", b"hello")]);
    fx.encrypt(4096);
    let kf = key_file(&fx);
    let mut body = fs::read(&kf).unwrap();
    body.extend(std::iter::repeat_n(b' ', 3 << 20)); // still valid JSON
    fs::write(&kf, body).unwrap();
    let problems = verify_problems(&fx, false);
    assert!(
        problems.iter().any(|p| p.kind == ProblemKind::KeyFile),
        "{problems:?}"
    );
}

/// The vault must not lie inside a source, however the paths are spelled: through a symlink
/// to the source, or with `..` components (neither was caught by the lexical check). (A source
/// that is itself a symlink is stored as a link, not followed: no conflict there.)
#[test]
fn a_vault_inside_a_source_is_refused_through_symlinks_and_dotdot() {
    let fx = Fixture::new(&[("a.txt", b"hello")]);
    let link = fx.tmp.path().join("link");
    std::os::unix::fs::symlink(&fx.src, &link).unwrap();
    let dotdot = fx.tmp.path().join("data/../data");
    for (src, vault) in [
        (fx.src.clone(), link.join("vault")),
        (dotdot, fx.src.join("v2")),
    ] {
        let mut opts = fx.opts(4096);
        opts.sources = vec![src.clone()];
        opts.vault = vault.clone().into();
        let r = encrypt(&opts, &fx.kms(), &NoProgress, &AtomicBool::new(false));
        assert!(
            matches!(r, Err(Error::Usage(_))),
            "source {} vault {}: {r:?}",
            src.display(),
            vault.display()
        );
        assert!(!vault.exists());
    }
}

/// A journal's batch records are not authenticated, but its run record must match the command
/// line, `--kms` included: a resumed run must not take a batch key wrapped by another KMS (an
/// attacker's store), or it would encrypt the remaining files under a key someone else holds.
#[test]
fn a_resumed_run_refuses_batches_of_another_kms() {
    use base64::Engine;
    use envseal::pipeline::journal::{Journal, RunParams, RunRecord};
    let fx = Fixture::new(&[("a.txt", b"hello")]);
    let opts = fx.opts(4096);
    fs::create_dir_all(&fx.vault).unwrap();
    let abs = std::path::absolute(&fx.src).unwrap();
    let vault_id = [0xab; 16];
    let run = RunRecord {
        kind: "run".into(),
        format: format::FORMAT_VERSION,
        vault_id: format::to_hex(&vault_id),
        created: "2026-11-28T00:00:00Z".into(),
        params: RunParams {
            sources: vec![base64::engine::general_purpose::STANDARD
                .encode(std::os::unix::ffi::OsStrExt::as_bytes(abs.as_os_str()))],
            key: opts.key.clone(),
            kms: opts.kms_url.clone(),
            segment_size: opts.segment_size,
            conceal_names: opts.conceal_names,
            excludes: opts.excludes.clone(),
            also_keys: Vec::new(),
            since: None,
            shard: None,
            compress: None,
        },
    };
    let mut journal = Journal::create(&LocalStore::new(&fx.vault), &run).unwrap();
    let other = fx.tmp.path().join("other-store");
    let other_url = format!("local:{}", other.display());
    let other_kms = Kms::new(KmsOptions::default(), None).with_provider(
        &other_url,
        Arc::new(LocalProvider::open(Some(&other), &KmsOptions::default()).unwrap()),
    );
    let (b, _) = other_kms
        .generate(&other_url, envseal::kms::DEFAULT_ALIAS, &vault_id, [1; 16])
        .unwrap();
    journal.append_batch(0, &b).unwrap();
    drop(journal);
    let r = encrypt(&opts, &fx.kms(), &NoProgress, &AtomicBool::new(false));
    assert!(
        matches!(r, Err(Error::Integrity { .. })),
        "a batch of another KMS was used: {r:?}"
    );
}

/// Sweeping stray objects at the end of a run must stay inside `objects/`: a symlink planted
/// there (`objects/00 -> somewhere`) used to be followed, and every file in its target deleted.
#[test]
fn the_object_sweep_does_not_follow_symlinks() {
    use base64::Engine;
    use envseal::pipeline::journal::{Journal, RunParams, RunRecord};
    let fx = Fixture::new(&[("a.txt", b"hello")]);
    let opts = fx.opts(4096);
    fs::create_dir_all(fx.vault.join("objects")).unwrap();
    let victim = fx.tmp.path().join("victim");
    fs::create_dir_all(&victim).unwrap();
    fs::write(victim.join("precious"), b"keep me").unwrap();
    std::os::unix::fs::symlink(&victim, fx.vault.join("objects/00")).unwrap();
    let abs = std::path::absolute(&fx.src).unwrap();
    let run = RunRecord {
        kind: "run".into(),
        format: format::FORMAT_VERSION,
        vault_id: "ab".repeat(16),
        created: "2026-11-28T00:00:00Z".into(),
        params: RunParams {
            sources: vec![base64::engine::general_purpose::STANDARD
                .encode(std::os::unix::ffi::OsStrExt::as_bytes(abs.as_os_str()))],
            key: opts.key.clone(),
            kms: opts.kms_url.clone(),
            segment_size: opts.segment_size,
            conceal_names: opts.conceal_names,
            excludes: opts.excludes.clone(),
            also_keys: Vec::new(),
            since: None,
            shard: None,
            compress: None,
        },
    };
    drop(Journal::create(&LocalStore::new(&fx.vault), &run).unwrap());
    let _ = encrypt(&opts, &fx.kms(), &NoProgress, &AtomicBool::new(false));
    assert_eq!(fs::read(victim.join("precious")).unwrap(), b"keep me");

    // The same with `objects` itself a link, to a directory with subdirectories.
    fs::remove_dir_all(&fx.vault).unwrap();
    fs::create_dir_all(&fx.vault).unwrap();
    fs::create_dir_all(victim.join("sub")).unwrap();
    fs::write(victim.join("sub/precious"), b"keep me too").unwrap();
    std::os::unix::fs::symlink(&victim, fx.vault.join("objects")).unwrap();
    drop(Journal::create(&LocalStore::new(&fx.vault), &run).unwrap());
    let _ = encrypt(&opts, &fx.kms(), &NoProgress, &AtomicBool::new(false));
    assert_eq!(
        fs::read(victim.join("sub/precious")).unwrap(),
        b"keep me too"
    );
}

/// Counts `Decrypt` calls.
struct CountingProvider {
    inner: LocalProvider,
    decrypts: std::sync::atomic::AtomicUsize,
}

impl KeyProvider for CountingProvider {
    fn url(&self) -> String {
        self.inner.url()
    }

    fn generate_data_key(
        &self,
        key: &str,
        context: &EncryptionContext,
    ) -> Result<GeneratedKey, KmsError> {
        self.inner.generate_data_key(key, context)
    }

    fn decrypt(&self, wrapped: &WrappedKey) -> Result<DataKey, KmsError> {
        self.decrypts
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.decrypt(wrapped)
    }

    fn encrypt(
        &self,
        key: &str,
        plaintext: &DataKey,
        context: &EncryptionContext,
    ) -> Result<WrappedKey, KmsError> {
        self.inner.encrypt(key, plaintext, context)
    }
}

/// docs/FORMAT.md §5: the encryption context sent with `Decrypt` binds the wrapped key to this
/// vault and batch. Taking it from the (unauthenticated) record made the binding vacuous: a
/// wrapping copied from another vault or batch, with its own context, was unwrapped by the KMS
/// (and refused only later, by the commitment). It must be refused before any KMS call.
#[test]
fn a_wrapped_key_of_another_batch_is_not_sent_to_the_kms() {
    let fx = Fixture::new(&[]);
    let p = Arc::new(CountingProvider {
        inner: fx.provider(),
        decrypts: Default::default(),
    });
    let kms = Kms::new(KmsOptions::default(), None).with_provider(&fx.url(), p.clone());
    let (mut b, _) = kms
        .generate(&fx.url(), envseal::kms::DEFAULT_ALIAS, &[1; 16], [2; 16])
        .unwrap();
    assert!(kms.unwrap(&[1; 16], &b).is_ok());
    assert_eq!(p.decrypts.load(std::sync::atomic::Ordering::SeqCst), 1);
    // The same wrapping, presented as another batch's (or another vault's).
    let other_vault = b.clone();
    b.batch_id = [3; 16];
    for (vault, batch) in [([1; 16], &b), ([9; 16], &other_vault)] {
        let e = kms.unwrap(&vault, batch).err().expect("must be refused");
        assert_eq!(e.exit_code(), 3, "{e}");
    }
    assert_eq!(
        p.decrypts.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the KMS was asked to unwrap a key under a context not of this batch"
    );
}

/// The vault's (first) key file.
fn key_file(fx: &Fixture) -> std::path::PathBuf {
    fs::read_dir(&fx.vault)
        .unwrap()
        .map(|d| d.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(layout::KEYS_PREFIX)
        })
        .unwrap()
}

fn verify_problems(fx: &Fixture, deep: bool) -> Vec<envseal::pipeline::verify::Problem> {
    use envseal::pipeline::verify::{verify, VerifyOptions};
    let kms = fx.kms();
    let opts = VerifyOptions {
        deep,
        jobs: 2,
        sample: Default::default(),
    };
    verify(
        &LocalStore::new(&fx.vault),
        &opts,
        Some(&kms),
        &NoProgress,
        &AtomicBool::new(false),
    )
    .unwrap()
    .problems
}

/// The object (`objects/<xx>/<id>`) holding a file's record.
fn object_of(fx: &Fixture, name: &str) -> String {
    let m = envseal::pipeline::vault::read_manifest(&LocalStore::new(&fx.vault), "manifest.jsonl")
        .unwrap();
    let f = read_all(&fx.vault)
        .unwrap()
        .into_iter()
        .find(|e| e.path.display().ends_with(name))
        .and_then(|e| e.file().cloned())
        .unwrap();
    m.objects[f.obj as usize].name()
}

/// A missing object is told from a damaged one by a typed error, not by the wording of a
/// message: `open_record` says `Missing`, and deep verify reports `missing` vs `corrupt`.
#[test]
fn a_missing_object_is_a_typed_error() {
    use envseal::pipeline::object::{open_record, ObjectError, RecordCtx};
    use envseal::pipeline::verify::ProblemKind;
    let fx = Fixture::new(&[("gone.txt", b"gone"), ("cut.txt", b"truncated")]);
    // Not packed: each file in an object of its own.
    let mut opts = fx.opts(4096);
    opts.pack_threshold = 0;
    encrypt(&opts, &fx.kms(), &NoProgress, &AtomicBool::new(false)).unwrap();
    let gone = object_of(&fx, "gone.txt");
    let cut = object_of(&fx, "cut.txt");
    fs::remove_file(fx.vault.join(&gone)).unwrap();
    let f = fs::OpenOptions::new()
        .write(true)
        .open(fx.vault.join(&cut))
        .unwrap();
    f.set_len(10).unwrap();

    let mut u = envseal::pipeline::vault::unlock(&LocalStore::new(&fx.vault), &fx.kms()).unwrap();
    let mut files = Vec::new();
    while let Some(e) = u.reader.next_entry().unwrap() {
        files.extend(e.file().cloned());
    }
    let r = &u.reader;
    let store = LocalStore::new(&fx.vault);
    let ctx = RecordCtx::new(&store, &r.header, &r.batches, &r.objects, 1);
    let open = |o: &str| {
        let f = files
            .iter()
            .find(|f| r.objects[f.obj as usize].name() == o)
            .unwrap();
        open_record(
            &ctx,
            f,
            &u.keys[f.batch as usize],
            None,
            &NoProgress,
            &AtomicBool::new(false),
        )
    };
    assert!(matches!(open(&gone), Err(ObjectError::Missing(_))));
    assert!(matches!(open(&cut), Err(ObjectError::Integrity(_))));

    let kinds: Vec<(String, ProblemKind)> = verify_problems(&fx, true)
        .into_iter()
        .map(|p| (p.object, p.kind))
        .collect();
    assert!(
        kinds.contains(&(format!("{gone}@0"), ProblemKind::Missing)),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&(format!("{cut}@0"), ProblemKind::Corrupt)),
        "{kinds:?}"
    );
}

/// Keyless verify lists the vault without following links, and reports what the format does
/// not name: stray files in the vault root (a key file of no batch, a leftover `.tmp`), links
/// and files in `objects/` (never their targets), and an `objects/` it cannot list.
#[test]
fn verify_reports_strays_and_does_not_follow_links() {
    use envseal::pipeline::verify::ProblemKind;
    let fx = Fixture::new(&[("a.txt", b"hello")]);
    fx.encrypt(4096);
    let victim = fx.tmp.path().join("victim");
    fs::create_dir_all(&victim).unwrap();
    fs::write(victim.join("outside"), b"not the vault's").unwrap();
    let stray_keys = format!("keys-{}.json", "cd".repeat(16));
    for name in [stray_keys.as_str(), "manifest.jsonl.tmp", "notes.txt"] {
        fs::write(fx.vault.join(name), b"x").unwrap();
    }
    std::os::unix::fs::symlink(&victim, fx.vault.join("objects/zz")).unwrap();
    fs::write(fx.vault.join("objects/loose"), b"x").unwrap();

    let problems = verify_problems(&fx, false);
    let mut extras: Vec<&str> = problems
        .iter()
        .filter(|p| p.kind == ProblemKind::Extra)
        .map(|p| p.path.as_str())
        .collect();
    extras.sort();
    let mut want = vec![
        "manifest.jsonl.tmp",
        "notes.txt",
        "objects/loose",
        "objects/zz",
        stray_keys.as_str(),
    ];
    want.sort();
    assert_eq!(extras, want, "{problems:?}");
    assert_eq!(problems.len(), want.len(), "{problems:?}");

    // An objects/ that cannot be listed (here: a link) is reported, not skipped.
    let objects = fx.vault.join("objects");
    fs::rename(&objects, fx.tmp.path().join("objects-real")).unwrap();
    std::os::unix::fs::symlink(fx.tmp.path().join("objects-real"), &objects).unwrap();
    let problems = verify_problems(&fx, false);
    assert!(
        problems
            .iter()
            .any(|p| p.kind == ProblemKind::Extra && p.path == "objects"),
        "{problems:?}"
    );
}

/// A decrypt killed with -9 leaves its temporary file (plaintext, maybe partial) in DEST; the
/// next decrypt into DEST removes it before writing, and only names exactly of that pattern.
#[test]
fn decrypt_removes_stale_temporary_files_it_made() {
    let fx = Fixture::new(&[("a.txt", b"hello")]);
    fx.encrypt(4096);
    let dir = fx.tmp.path().join("out/data");
    fs::create_dir_all(&dir).unwrap();
    // Temporary names carry the vault's tag (the first 8 bytes of its id).
    let vault_id =
        envseal::pipeline::vault::read_manifest(&LocalStore::new(&fx.vault), "manifest.jsonl")
            .unwrap()
            .header
            .vault_id;
    let stale = format!(
        ".envseal-{}-0123456789abcdef.tmp",
        format::to_hex(&vault_id[..8])
    );
    let stale = stale.as_str();
    let users = [
        // A user's file of the old pattern, and one of another vault's tag.
        ".envseal-0123456789abcdef.tmp",
        ".envseal-00112233445566ff-0123456789abcdef.tmp",
        ".envseal-0123456789abcdef.tmp.bak",
        ".envseal-notes.tmp",
        ".envseal-0123456789ABCDEF.tmp",
        "envseal-0123456789abcdef.tmp",
    ];
    for name in std::iter::once(&stale).chain(&users) {
        fs::write(dir.join(name), b"x").unwrap();
    }
    let (r, _) = fx.decrypt_with(&fx.kms());
    assert_eq!(r.unwrap(), 1);
    assert!(!dir.join(stale).exists(), "the stale temporary file stayed");
    for name in users {
        assert_eq!(fs::read(dir.join(name)).unwrap(), b"x", "{name}");
    }
    assert_eq!(fs::read(dir.join("a.txt")).unwrap(), b"hello");
}
