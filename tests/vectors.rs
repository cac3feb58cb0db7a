//! Known-answer vectors for the vault format (fixtures/vectors/).
//!
//! Two small vaults made with fixed keys, ids, salts and nonces by the reference sealer
//! (`object::seal_object`) and the streaming `ManifestWriter`: `vault/` (two batches, a pack of
//! five files and an object of its own) and `concealed/` (names sealed). The tests (1) decrypt
//! and deep-verify the checked-in vaults through the real library paths and compare with the
//! recorded plaintexts, (2) regenerate everything and require byte equality, so any change to
//! the format fails here until the vectors are regenerated on purpose:
//!
//!     ENVSEAL_REGEN_VECTORS=1 cargo test --test vectors
//!
//! (and a format change that old vaults cannot follow must also bump FORMAT_VERSION), and
//! (3) apply each tamper case of `fixtures/vectors/tamper.json` to a copy of `vault/` and check
//! that the stage it names fails, with the exit codes it names.

use envseal::store::local::LocalStore;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use base64::Engine;
use envseal::crypto::BatchKey;
use envseal::format::manifest::{
    self, Batch, Entry, EntryKind, EntryLine, FileEntry, Header, Name, ObjectRef,
};
use envseal::format::{self, ObjectHeader};
use envseal::kms::keys::Kms;
use envseal::kms::{
    DataKey, EncryptionContext, GeneratedKey, KeyProvider, KmsError, KmsErrorKind, KmsOptions,
    WrappedKey,
};
use envseal::pipeline::decrypt::{decrypt, DecryptOptions};
use envseal::pipeline::verify::{verify, VerifyOptions};
use envseal::progress::NoProgress;
use serde_json::Value;

const KMS: &str = "vector";
const SEG: u32 = 4096;
const VAULT_ID: [u8; 16] = [0xa0; 16];
const BATCH_IDS: [[u8; 16]; 2] = [[0xb0; 16], [0xb1; 16]];
const PACK_ID: [u8; 16] = [0xc0; 16];
const SINGLE_ID: [u8; 16] = [0xc1; 16];
/// The Zstandard level of `compressed/` (docs/FORMAT.md §4.5).
const COMPRESSED_LEVEL: i32 = 3;

fn batch_key_bytes(b: usize) -> [u8; 32] {
    std::array::from_fn(|i| (i + 32 * b) as u8)
}

/// A provider that "unwraps" the vector blob (the hex of the key); test-only, never shipped.
struct VectorKms;

impl KeyProvider for VectorKms {
    fn url(&self) -> String {
        KMS.into()
    }
    fn generate_data_key(&self, _: &str, _: &EncryptionContext) -> Result<GeneratedKey, KmsError> {
        Err(KmsError::new(
            KmsErrorKind::Unsupported,
            "vectors only unwrap",
        ))
    }
    fn decrypt(&self, w: &WrappedKey) -> Result<DataKey, KmsError> {
        let raw = hex::decode(&w.blob)
            .map_err(|_| KmsError::new(KmsErrorKind::InvalidCiphertext, "bad"))?;
        DataKey::from_bytes(&raw)
    }
    fn encrypt(&self, _: &str, _: &DataKey, _: &EncryptionContext) -> Result<WrappedKey, KmsError> {
        Err(KmsError::new(
            KmsErrorKind::Unsupported,
            "vectors only unwrap",
        ))
    }
}

fn batch_key(b: usize) -> BatchKey {
    BatchKey::new(
        DataKey::from_bytes(&batch_key_bytes(b)).unwrap(),
        VAULT_ID,
        BATCH_IDS[b],
    )
}

fn batch(b: usize) -> Batch {
    Batch {
        batch_id: BATCH_IDS[b],
        key_commitment: batch_key(b).commitment(),
        wrapped: vec![WrappedKey {
            kms: KMS.into(),
            key_id: format!("vector-cmk-{b}"),
            blob: hex::encode(batch_key_bytes(b)),
            context: EncryptionContext::for_batch(
                &format::to_hex(&VAULT_ID),
                &format::to_hex(&BATCH_IDS[b]),
            ),
        }],
    }
}

/// (name, plaintext length), in tree order; the last one gets an object of its own.
fn cases() -> Vec<(&'static str, usize)> {
    vec![
        ("empty", 0),
        ("one-byte", 1),
        ("seg-exact", SEG as usize),
        ("seg-minus-1", SEG as usize - 1),
        ("seg-plus-1", SEG as usize + 1),
        ("sparse", SEG as usize + 100),
        ("three-segs-plus-17", 3 * SEG as usize + 17),
    ]
}

/// The gaps of a case with holes and zero extents (§6.4): `sparse` stores `SEG + 100` bytes
/// of a file of `3 × SEG + 100`, with a hole over its first segment's worth and a zero extent
/// over its third.
fn gaps(name: &str) -> Option<envseal::fs::sparse::Sparse> {
    use envseal::fs::sparse::{Gap, Sparse};
    let seg = u64::from(SEG);
    (name == "sparse").then(|| {
        Sparse::new(
            3 * seg + 100,
            vec![
                Gap {
                    off: 0,
                    len: seg,
                    zero: false,
                },
                Gap {
                    off: 2 * seg,
                    len: seg,
                    zero: true,
                },
            ],
        )
        .unwrap()
        .unwrap()
    })
}

/// A case's whole file: its stored bytes at their offsets, zeros in its gaps.
fn whole_file(name: &str, stored: &[u8]) -> Vec<u8> {
    let Some(sp) = gaps(name) else {
        return stored.to_vec();
    };
    let mut out = Vec::with_capacity(sp.file_len() as usize);
    let mut next = stored.iter();
    let mut at = 0u64;
    for g in sp.gaps() {
        out.extend(next.by_ref().take((g.off - at) as usize));
        out.extend(std::iter::repeat_n(0u8, g.len as usize));
        at = g.off + g.len;
    }
    out.extend(next);
    out
}

fn plaintext(k: usize, len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 7 + k * 13) % 256) as u8).collect()
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/vectors")
}

fn object_path(out: &Path, id: &[u8; 16]) -> PathBuf {
    out.join(manifest::object_name(id))
}

/// Seals the cases: case k goes to batch k % 2; all but the last into one pack (in order),
/// the last into an object of its own. Returns the file entries and writes the objects.
fn seal_cases(out: &Path, plain: Option<&Path>, compressed: bool) -> Vec<(String, FileEntry)> {
    let mut pack = Vec::new();
    let mut files = Vec::new();
    let n = cases().len();
    for (k, (name, len)) in cases().into_iter().enumerate() {
        let b = k % 2;
        let pt = plaintext(k, len);
        let mut header = ObjectHeader {
            version: format::FORMAT_VERSION,
            alg: format::ALG_AES256GCM_BLAKE3,
            segment_size: SEG,
            plain_len: len as u64,
            vault_id: VAULT_ID,
            batch_id: BATCH_IDS[b],
            file_id: [k as u8 + 1; 16],
            salt: [k as u8 + 0x40; 32],
            commitment: [0; 32],
        };
        let (rec, ct, mac) = match compressed {
            true => envseal::pipeline::object::seal_object_compressed(
                &batch_key(b),
                &mut header,
                &pt,
                COMPRESSED_LEVEL,
            ),
            false => envseal::pipeline::object::seal_object(&batch_key(b), &mut header, &pt),
        };
        let rlen = compressed.then_some(rec.len() as u64);
        let (obj, off) = if k + 1 < n {
            pack.extend_from_slice(&rec);
            (0, (pack.len() - rec.len()) as u64)
        } else {
            let p = object_path(out, &SINGLE_ID);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, &rec).unwrap();
            (1, 0)
        };
        files.push((
            name.to_string(),
            FileEntry {
                size: len as u64,
                batch: b as u32,
                obj,
                off,
                salt: header.salt,
                ct,
                pt: *mac.as_bytes(),
                sparse: gaps(name).map(Box::new),
                rlen,
            },
        ));
        if let Some(plain) = plain {
            std::fs::create_dir_all(plain).unwrap();
            std::fs::write(plain.join(name), whole_file(name, &pt)).unwrap();
        }
    }
    let p = object_path(out, &PACK_ID);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, &pack).unwrap();
    files
}

/// Builds a vector vault into `out` (objects, key files, manifest) and, for the clear one,
/// the plaintexts into `plain`.
fn generate(out: &Path, plain: Option<&Path>, concealed: bool, compressed: bool) {
    std::fs::create_dir_all(out).unwrap();
    let files = seal_cases(out, plain, compressed);
    let header = Header {
        vault_id: VAULT_ID,
        created: "2026-12-01T00:00:00Z".into(),
        generator: "envseal vectors".into(),
        segment_size: SEG,
        conceal_names: concealed,
        shard: None,
    };
    let store = LocalStore::new(out);
    let mut m =
        envseal::pipeline::vault::manifest_writer(&store, "manifest.jsonl", &header).unwrap();
    for b in 0..2 {
        envseal::pipeline::vault::write_key_file(&store, &VAULT_ID, &batch(b)).unwrap();
        m.batch(&batch(b)).unwrap();
    }
    for id in [PACK_ID, SINGLE_ID] {
        let len = std::fs::metadata(object_path(out, &id)).unwrap().len();
        m.object(&ObjectRef { id, len }).unwrap();
    }
    let mut entries = vec![Entry {
        path: Name::Clear(b"vectors".to_vec()),
        mode: 0o755,
        mtime: 1_700_000_000,
        mtime_nsec: 0,
        kind: EntryKind::Dir,
        owner: None,
        linked: false,
        xattrs: Default::default(),
    }];
    for (k, (name, f)) in files.into_iter().enumerate() {
        entries.push(Entry {
            path: Name::Clear(format!("vectors/{name}").into_bytes()),
            mode: 0o644,
            mtime: 1_700_000_000 + k as i64,
            mtime_nsec: 123_456_789,
            kind: EntryKind::File(f),
            owner: None,
            linked: false,
            xattrs: Default::default(),
        });
    }
    entries.push(Entry {
        path: Name::Clear(b"vectors/z-link".to_vec()),
        mode: 0o777,
        mtime: 1_700_000_100,
        mtime_nsec: 0,
        kind: EntryKind::Symlink(Name::Clear(b"one-byte".to_vec())),
        owner: None,
        linked: false,
        xattrs: Default::default(),
    });
    let nk = batch_key(0).name_key();
    let mut lines = Vec::new();
    for (k, e) in entries.iter().enumerate() {
        let line = e.to_line(None).unwrap();
        let line = if concealed {
            // Names sealed with fixed nonces (entry k: 12 × k for the path, 12 × (0x80 + k)
            // for a link target), so that the vector is reproducible.
            let mut l: EntryLine = serde_json::from_slice(&line).unwrap();
            let b64 = base64::engine::general_purpose::STANDARD;
            let path = l.path.take().unwrap();
            l.enc_path = Some(
                b64.encode(
                    nk.seal_with_nonce(path.as_bytes(), b"envseal path", [k as u8; 12])
                        .unwrap(),
                ),
            );
            if let Some(t) = l.target.take() {
                l.enc_target = Some(
                    b64.encode(
                        nk.seal_with_nonce(
                            t.as_bytes(),
                            b"envseal link target",
                            [0x80 + k as u8; 12],
                        )
                        .unwrap(),
                    ),
                );
            }
            serde_json::to_vec(&l).unwrap()
        } else {
            line
        };
        lines.push(line);
    }
    // Concealed entries are listed in the order of their lines (of their sealed names).
    if concealed {
        lines.sort();
    }
    for l in &lines {
        m.entry_line(l).unwrap();
    }
    envseal::pipeline::vault::publish_manifest(m, &[&batch_key(0), &batch_key(1)], false, &store)
        .unwrap();
}

/// Every file below `dir`, relative, sorted.
fn files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

// ---- multi/: three batches, several wrappings each (docs/FORMAT.md §5, §6.1, §11) ----------

const M_VAULT_ID: [u8; 16] = [0xa1; 16];
const M_BATCH_IDS: [[u8; 16]; 3] = [[0xd0; 16], [0xd1; 16], [0xd2; 16]];
const M_PACK_ID: [u8; 16] = [0xe0; 16];
const M_SINGLE_ID: [u8; 16] = [0xe1; 16];
/// The attributes of `c-batch2-xattrs`, sealed with the nonce 12 × 0x33.
const M_XATTRS: &[(&[u8], &[u8])] = &[(b"user.a", b"1"), (b"user.b", b"")];

fn m_key_bytes(b: usize) -> [u8; 32] {
    std::array::from_fn(|i| (0x80 + 32 * b + i) as u8)
}

fn m_key(b: usize) -> BatchKey {
    BatchKey::new(
        DataKey::from_bytes(&m_key_bytes(b)).unwrap(),
        M_VAULT_ID,
        M_BATCH_IDS[b],
    )
}

/// Batch b's wrappings, in order: batch 0 first by a CMK the (vector) KMS refuses, so a reader
/// must go on to the next wrapping; batches 1 and 2 by two and three CMKs.
fn m_batch(b: usize) -> Batch {
    let ctx = EncryptionContext::for_batch(
        &format::to_hex(&M_VAULT_ID),
        &format::to_hex(&M_BATCH_IDS[b]),
    );
    let wrap = |cmk: &str, blob: String| WrappedKey {
        kms: KMS.into(),
        key_id: format!("vector-cmk-{cmk}"),
        blob,
        context: ctx.clone(),
    };
    let key = hex::encode(m_key_bytes(b));
    let wrapped = match b {
        0 => vec![wrap("revoked", "revoked".into()), wrap("a", key)],
        1 => vec![wrap("b", key.clone()), wrap("a", key)],
        _ => vec![
            wrap("a", key.clone()),
            wrap("c", key.clone()),
            wrap("b", key),
        ],
    };
    Batch {
        batch_id: M_BATCH_IDS[b],
        key_commitment: m_key(b).commitment(),
        wrapped,
    }
}

/// (name, batch, plaintext length), in tree order; all but `d-linked` in the pack.
const M_FILES: [(&str, usize, usize); 4] = [
    ("a-batch0", 0, 100),
    ("b-batch1", 1, 5000),
    ("c-batch2-xattrs", 2, 3),
    ("d-linked", 1, 4097),
];

fn m_plaintext(k: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((11 * i + 29 * k + 3) % 256) as u8)
        .collect()
}

/// The attribute list of §6.1 as bytes: `BE32(len) ‖ name ‖ BE32(len) ‖ value` each.
fn xattr_list(attrs: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (n, v) in attrs {
        out.extend_from_slice(&(n.len() as u32).to_be_bytes());
        out.extend_from_slice(n);
        out.extend_from_slice(&(v.len() as u32).to_be_bytes());
        out.extend_from_slice(v);
    }
    out
}

/// Builds `multi/` into `out` (and its plaintexts into `plain`), with `xattrs` as the list of
/// `c-batch2-xattrs` (tests seal bad lists too, under the real keys and MACs).
fn generate_multi(out: &Path, plain: Option<&Path>, xattrs: &[(&[u8], &[u8])]) {
    std::fs::create_dir_all(out).unwrap();
    let mut pack = Vec::new();
    let mut files = Vec::new();
    for (k, (name, b, len)) in M_FILES.into_iter().enumerate() {
        let pt = m_plaintext(k, len);
        let mut header = ObjectHeader {
            version: format::FORMAT_VERSION,
            alg: format::ALG_AES256GCM_BLAKE3,
            segment_size: SEG,
            plain_len: len as u64,
            vault_id: M_VAULT_ID,
            batch_id: M_BATCH_IDS[b],
            file_id: [0x10 + k as u8; 16],
            salt: [0x50 + k as u8; 32],
            commitment: [0; 32],
        };
        let (rec, ct, mac) = envseal::pipeline::object::seal_object(&m_key(b), &mut header, &pt);
        let (obj, off) = if name == "d-linked" {
            let p = object_path(out, &M_SINGLE_ID);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, &rec).unwrap();
            (1, 0)
        } else {
            pack.extend_from_slice(&rec);
            (0, (pack.len() - rec.len()) as u64)
        };
        files.push(FileEntry {
            size: len as u64,
            batch: b as u32,
            obj,
            off,
            salt: header.salt,
            ct,
            pt: *mac.as_bytes(),
            sparse: None,
            rlen: None,
        });
        if let Some(plain) = plain {
            std::fs::create_dir_all(plain).unwrap();
            std::fs::write(plain.join(name), &pt).unwrap();
        }
    }
    let p = object_path(out, &M_PACK_ID);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, &pack).unwrap();

    let header = Header {
        vault_id: M_VAULT_ID,
        created: "2026-12-01T00:00:00Z".into(),
        generator: "envseal vectors".into(),
        segment_size: SEG,
        conceal_names: false,
        shard: None,
    };
    let store = LocalStore::new(out);
    let mut m =
        envseal::pipeline::vault::manifest_writer(&store, "manifest.jsonl", &header).unwrap();
    for b in 0..3 {
        envseal::pipeline::vault::write_key_file(&store, &M_VAULT_ID, &m_batch(b)).unwrap();
        m.batch(&m_batch(b)).unwrap();
    }
    for id in [M_PACK_ID, M_SINGLE_ID] {
        let len = std::fs::metadata(object_path(out, &id)).unwrap().len();
        m.object(&ObjectRef { id, len }).unwrap();
    }
    let entry = |path: &str, mtime: i64, nsec: u32, kind: EntryKind| Entry {
        path: Name::Clear(path.as_bytes().to_vec()),
        mode: if matches!(kind, EntryKind::Dir) {
            0o755
        } else {
            0o640
        },
        mtime,
        mtime_nsec: nsec,
        kind,
        owner: None,
        linked: false,
        xattrs: Default::default(),
    };
    let mut entries = vec![entry("multi", 1_700_000_000, 0, EntryKind::Dir)];
    for (k, f) in files.into_iter().enumerate() {
        let name = M_FILES[k].0;
        // a-batch0 has a time before 1970: 1969-12-31T23:59:59.25Z (§1.1).
        let (mtime, nsec) = if k == 0 {
            (-1, 250_000_000)
        } else {
            (1_700_000_000 + k as i64, 500)
        };
        let mut e = entry(&format!("multi/{name}"), mtime, nsec, EntryKind::File(f));
        e.linked = name == "d-linked";
        if name == "c-batch2-xattrs" {
            // Batch 0's name key seals the attributes of a file of batch 2 (§6.1).
            let sealed = m_key(0)
                .name_key()
                .seal_with_nonce(&xattr_list(xattrs), b"envseal xattrs", [0x33; 12])
                .unwrap();
            e.xattrs = envseal::format::manifest::Xattrs::Sealed(sealed);
        }
        entries.push(e);
    }
    let d = entries.last().unwrap().clone();
    entries.push(Entry {
        path: Name::Clear(b"multi/e-hardlink".to_vec()),
        kind: EntryKind::HardLink(Name::Clear(b"multi/d-linked".to_vec())),
        linked: false,
        ..d
    });
    for e in &entries {
        m.entry_line(&e.to_line(None).unwrap()).unwrap();
    }
    envseal::pipeline::vault::publish_manifest(
        m,
        &[&m_key(0), &m_key(1), &m_key(2)],
        false,
        &store,
    )
    .unwrap();
}

fn generate_all(root: &Path) {
    generate(&root.join("vault"), Some(&root.join("plain")), false, false);
    generate(&root.join("concealed"), None, true, false);
    generate(&root.join("compressed"), None, false, true);
    generate_multi(
        &root.join("multi"),
        Some(&root.join("multi-plain")),
        M_XATTRS,
    );
}

/// The directories `vectors_are_current` regenerates and compares.
const GENERATED: [&str; 6] = [
    "vault",
    "plain",
    "concealed",
    "compressed",
    "multi",
    "multi-plain",
];

#[test]
fn vectors_are_current() {
    let tmp = tempfile::tempdir().unwrap();
    let fresh = tmp.path().to_path_buf();
    generate_all(&fresh);
    let checked_in = dir();
    if std::env::var_os("ENVSEAL_REGEN_VECTORS").is_some() {
        for d in GENERATED {
            let _ = std::fs::remove_dir_all(checked_in.join(d));
        }
        generate_all(&checked_in);
        return;
    }
    let keep = |v: Vec<PathBuf>| -> Vec<PathBuf> {
        v.into_iter()
            .filter(|p| GENERATED.iter().any(|d| p.starts_with(d)))
            .collect()
    };
    let a = keep(files(&fresh));
    let b = keep(files(&checked_in));
    assert_eq!(a, b, "the vector vaults' file lists changed: regenerate with ENVSEAL_REGEN_VECTORS=1 cargo test --test vectors");
    for f in a {
        assert!(
            std::fs::read(fresh.join(&f)).unwrap() == std::fs::read(checked_in.join(&f)).unwrap(),
            "{} differs from the checked-in vector: the format changed; regenerate with ENVSEAL_REGEN_VECTORS=1 cargo test --test vectors (and bump FORMAT_VERSION if old vaults can no longer be read)",
            f.display()
        );
    }
}

fn kms() -> Kms {
    Kms::new(KmsOptions::default(), None).with_provider(KMS, Arc::new(VectorKms))
}

/// Exit codes of keyless verify, deep verify and decrypt on `vault`, through the library,
/// and the files decrypt restored (in `vectors/`).
fn outcomes(vault: &Path) -> (i32, i32, i32, Vec<String>) {
    outcomes_in(vault, "vectors")
}

/// [`outcomes`], listing what decrypt restored in the top directory `top`.
fn outcomes_in(vault: &Path, top: &str) -> (i32, i32, i32, Vec<String>) {
    let v = |deep| match verify(
        &LocalStore::new(vault),
        &VerifyOptions {
            deep,
            jobs: 2,
            sample: Default::default(),
        },
        Some(&kms()),
        &NoProgress,
        &AtomicBool::new(false),
    ) {
        Ok(r) if r.problems.is_empty() => 0,
        Ok(_) => 3,
        Err(e) => e.exit_code(),
    };
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("out");
    let opts = DecryptOptions {
        jobs: 2,
        ..DecryptOptions::new(vault.to_path_buf(), dest.clone())
    };
    let d = match decrypt(&opts, &kms(), &NoProgress, &AtomicBool::new(false)) {
        Ok(r) if r.integrity_failures > 0 => 3,
        Ok(r) if !r.failed.is_empty() => 1,
        Ok(_) => 0,
        Err(e) => e.exit_code(),
    };
    let restored = std::fs::read_dir(dest.join(top))
        .map(|rd| {
            let mut v: Vec<String> = rd
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        })
        .unwrap_or_default();
    (v(false), v(true), d, restored)
}

#[test]
fn checked_in_vectors_decrypt_to_recorded_plaintexts() {
    for name in ["vault", "concealed", "compressed"] {
        let vault = dir().join(name);
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("out");
        let opts = DecryptOptions {
            jobs: 2,
            ..DecryptOptions::new(vault.clone(), dest.clone())
        };
        let r = decrypt(&opts, &kms(), &NoProgress, &AtomicBool::new(false)).unwrap();
        assert!(r.failed.is_empty(), "{name}: {:?}", r.failed);
        assert_eq!(r.files as usize, cases().len(), "{name}");
        assert_eq!(r.symlinks, 1, "{name}");
        for (case, len) in cases() {
            let got = std::fs::read(dest.join("vectors").join(case)).unwrap();
            let want = std::fs::read(dir().join("plain").join(case)).unwrap();
            let len = gaps(case).map_or(len as u64, |s| s.file_len());
            assert_eq!(got.len() as u64, len, "{name}/{case}");
            assert!(
                got == want,
                "{name}/{case}: plaintext differs from the recorded one"
            );
        }
        assert_eq!(
            std::fs::read_link(dest.join("vectors/z-link")).unwrap(),
            Path::new("one-byte")
        );
        assert_eq!(outcomes(&vault).0, 0, "{name}: keyless verify");
        assert_eq!(outcomes(&vault).1, 0, "{name}: deep verify");
    }
    // The concealed vector keeps no name in clear.
    let m = std::fs::read_to_string(dir().join("concealed/manifest.jsonl")).unwrap();
    assert!(!m.contains("one-byte") && !m.contains("vectors/"), "{m}");
}

/// Applies one edit of tamper.json to a vault copy.
fn apply(vault: &Path, edit: &Value) {
    let file = vault.join(edit["file"].as_str().unwrap());
    if let Some(off) = edit["flip"].as_u64() {
        let mut b = std::fs::read(&file).unwrap();
        b[off as usize] ^= 0x01;
        std::fs::write(&file, b).unwrap();
    } else if let Some(n) = edit["truncate"].as_u64() {
        let len = std::fs::metadata(&file).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
        f.set_len(len - n).unwrap();
    } else if let Some(r) = edit["replace"].as_array() {
        let text = std::fs::read_to_string(&file).unwrap();
        let (old, new) = (r[0].as_str().unwrap(), r[1].as_str().unwrap());
        assert_eq!(
            text.matches(old).count(),
            1,
            "{old} must occur once in {}",
            file.display()
        );
        std::fs::write(&file, text.replace(old, new)).unwrap();
    } else if let Some(needle) = edit["drop_line"].as_str() {
        let text = std::fs::read_to_string(&file).unwrap();
        let kept: Vec<&str> = text.lines().filter(|l| !l.contains(needle)).collect();
        assert_eq!(kept.len() + 1, text.lines().count(), "{needle}");
        std::fs::write(&file, kept.join("\n") + "\n").unwrap();
    } else if let Some(data) = edit["create"].as_str() {
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, data).unwrap();
    } else if let Some(r) = edit["swap"].as_array() {
        // Swap two substrings (each occurring once) of a text file.
        let text = std::fs::read_to_string(&file).unwrap();
        let (a, b) = (r[0].as_str().unwrap(), r[1].as_str().unwrap());
        let t = text.replace(a, "\u{0}").replace(b, a).replace('\u{0}', b);
        assert_ne!(t, text);
        std::fs::write(&file, t).unwrap();
    } else {
        panic!("unknown edit {edit}");
    }
}

fn copy_dir(src: &Path, dst: &Path) {
    for f in files(src) {
        let to = dst.join(&f);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(src.join(&f), to).unwrap();
    }
}

/// Each case of tamper.json names the stage that must fail: its expected exit codes for keyless
/// verify, deep verify and decrypt, and what decrypt may still restore.
#[test]
fn tamper_vectors_fail_at_their_stage() {
    let cases: Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("tamper.json")).unwrap()).unwrap();
    let cases = cases.as_array().unwrap();
    assert!(cases.len() >= 8);
    for c in cases {
        let name = c["name"].as_str().unwrap();
        // Cases name their vault: `vault/` unless they say `multi`.
        let (from, top) = match c["vault"].as_str() {
            None => ("vault", "vectors"),
            Some("multi") => ("multi", "multi"),
            Some("compressed") => ("compressed", "vectors"),
            Some(other) => panic!("{name}: unknown vault {other}"),
        };
        let tmp = tempfile::tempdir().unwrap();
        let vault = tmp.path().join("vault");
        copy_dir(&dir().join(from), &vault);
        for e in c["edits"].as_array().unwrap() {
            apply(&vault, e);
        }
        let (keyless, deep, dec, restored) = outcomes_in(&vault, top);
        let want = &c["expect"];
        assert_eq!(
            keyless as i64,
            want["verify"].as_i64().unwrap(),
            "{name}: keyless verify"
        );
        assert_eq!(
            deep as i64,
            want["verify_deep"].as_i64().unwrap(),
            "{name}: deep verify"
        );
        assert_eq!(
            dec as i64,
            want["decrypt"].as_i64().unwrap(),
            "{name}: decrypt"
        );
        let want_restored: Vec<String> = want["restored"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        assert_eq!(restored, want_restored, "{name}: restored files");
    }
}

/// `multi/`: every batch unwrapped (batch 0 only by its second wrapping, §5), every MAC
/// checked, and the restore as recorded: contents, a time before 1970, the attributes of a
/// file of batch 2 sealed under batch 0's name key, and a hard link sharing its file's inode.
#[test]
fn multi_batch_vector_decrypts_to_recorded_plaintexts() {
    use std::os::unix::fs::MetadataExt;
    let vault = dir().join("multi");
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("out");
    let opts = DecryptOptions {
        jobs: 2,
        ..DecryptOptions::new(vault.clone(), dest.clone())
    };
    let r = decrypt(&opts, &kms(), &NoProgress, &AtomicBool::new(false)).unwrap();
    assert!(r.failed.is_empty(), "{:?}", r.failed);
    assert_eq!((r.files, r.hardlinks), (M_FILES.len() as u64, 1));
    for (name, _, _) in M_FILES {
        let got = std::fs::read(dest.join("multi").join(name)).unwrap();
        let want = std::fs::read(dir().join("multi-plain").join(name)).unwrap();
        assert!(
            got == want,
            "{name}: plaintext differs from the recorded one"
        );
    }
    let md = std::fs::metadata(dest.join("multi/a-batch0")).unwrap();
    assert_eq!((md.mtime(), md.mtime_nsec()), (-1, 250_000_000));
    let c = dest.join("multi/c-batch2-xattrs");
    for (n, v) in M_XATTRS {
        let n = std::str::from_utf8(n).unwrap();
        assert_eq!(xattr::get(&c, n).unwrap().as_deref(), Some(*v), "{n}");
    }
    let (d, e) = (
        std::fs::metadata(dest.join("multi/d-linked")).unwrap(),
        std::fs::metadata(dest.join("multi/e-hardlink")).unwrap(),
    );
    assert_eq!((d.ino(), d.nlink()), (e.ino(), 2));
    assert_eq!(
        outcomes_in(&vault, "multi"),
        (
            0,
            0,
            0,
            vec![
                "a-batch0".to_string(),
                "b-batch1".into(),
                "c-batch2-xattrs".into(),
                "d-linked".into(),
                "e-hardlink".into(),
            ]
        )
    );
}

/// Item 8 of the hostile-vault review: an attribute list with names out of order or twice,
/// sealed and MAC'd with the vault's own keys (a key holder's vault, valid in every other
/// way), is refused by every reader that holds the key: `verify --deep` and `decrypt` exit 3
/// and nothing is restored. Keyless verify cannot open the list. `--no-xattrs` does not
/// change the verdict: the manifest is refused, not just the attributes.
#[test]
fn unsorted_or_repeated_xattr_names_are_refused_by_every_reader() {
    for (what, list) in [
        (
            "unsorted",
            &[(&b"user.b"[..], &b"1"[..]), (b"user.a", b"2")][..],
        ),
        (
            "repeated",
            &[(&b"user.a"[..], &b"1"[..]), (b"user.a", b"2")][..],
        ),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let vault = tmp.path().join("v");
        generate_multi(&vault, None, list);
        assert_eq!(outcomes_in(&vault, "multi"), (0, 3, 3, vec![]), "{what}");
        let dest = tmp.path().join("out");
        let opts = DecryptOptions {
            xattrs: false,
            ..DecryptOptions::new(vault.clone(), dest.clone())
        };
        let err = decrypt(&opts, &kms(), &NoProgress, &AtomicBool::new(false)).unwrap_err();
        assert_eq!(err.exit_code(), 3, "{what}: {err}");
        assert!(!dest.join("multi").exists(), "{what}");
    }
    // The same vault with the sorted list restores (the test changes nothing else).
    let tmp = tempfile::tempdir().unwrap();
    generate_multi(&tmp.path().join("v"), None, M_XATTRS);
    assert_eq!(outcomes_in(&tmp.path().join("v"), "multi").2, 0);
}

/// docs/FORMAT.md §11's recipe for a test vault of several batches and wrappings does what it
/// says: five files, `--batch-max-files 2` and two `--key`s make three batches wrapped twice,
/// `rewrap --add` a third time, and the vault verifies deep; `--batch-max-bytes` cuts batches
/// by size.
#[test]
fn the_several_batch_recipe_of_format_md_works() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..5u8 {
        std::fs::write(src.join(format!("f{i}")), vec![i; 3000]).unwrap();
    }
    // The real binary with a private key store (this file stands apart from the shared
    // integration-test helpers).
    let ok = |args: &[&str]| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_envseal"))
            .env("ENVSEAL_HOME", &home)
            .env_remove("ENVSEAL_KMS")
            .env_remove("ENVSEAL_PASSPHRASE")
            .env_remove("RUST_LOG")
            .args(args)
            .output()
            .unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        assert!(o.status.success(), "{args:?}: {}", text(&o.stderr));
        text(&o.stdout)
    };
    for a in ["alias/a", "alias/b", "alias/c"] {
        let meta: Value = serde_json::from_str(&ok(&["kms", "create-key"])).unwrap();
        let id = meta["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
        ok(&["kms", "create-alias", a, &id]);
    }
    let (src, v, v2) = (
        src.to_str().unwrap(),
        tmp.path().join("v"),
        tmp.path().join("v2"),
    );
    let (v, v2) = (v.to_str().unwrap(), v2.to_str().unwrap());
    ok(&[
        "encrypt",
        "-q",
        src,
        "-o",
        v,
        "--batch-max-files",
        "2",
        "--key",
        "alias/a",
        "--key",
        "alias/b",
    ]);
    ok(&["rewrap", "-q", v, "--add", "--key", "alias/c"]);
    ok(&["verify", "-q", "--deep", v]);
    let count = |vault: &str, kind: &str| {
        std::fs::read_to_string(Path::new(vault).join("manifest.jsonl"))
            .unwrap()
            .lines()
            .filter(|l| l.starts_with(&format!(r#"{{"type":"{kind}""#)))
            .count()
    };
    assert_eq!((count(v, "batch"), count(v, "wrap")), (3, 9));
    ok(&["encrypt", "-q", src, "-o", v2, "--batch-max-bytes", "4KiB"]);
    assert_eq!(count(v2, "batch"), 5);
}

/// The independent-decoder property for compressed records (docs/FORMAT.md §3, §4.2, §4.5):
/// the single-object record of `compressed/` decoded with nothing but the spec, BLAKE3,
/// RustCrypto's AES-GCM and a Zstandard decoder: keys derived, table found from the entry's
/// `rlen` and opened, each slot located by the table, opened and decoded.
#[test]
fn compressed_vector_decodes_by_the_spec_alone() {
    use aes_gcm::aead::{Aead, KeyInit};
    use aes_gcm::{Aes256Gcm, Nonce};
    let m = std::fs::read_to_string(dir().join("compressed/manifest.jsonl")).unwrap();
    let entry: Value = m
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|r| r["path"] == "vectors/three-segs-plus-17")
        .unwrap();
    let rlen = entry["rlen"].as_u64().unwrap() as usize;
    let rec = std::fs::read(dir().join("compressed/objects/c1/c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1"))
        .unwrap();
    assert_eq!(rec.len(), rlen);
    assert_eq!(u16::from_be_bytes([rec[10], rec[11]]), 2, "suite 2");
    let l = u64::from_be_bytes(rec[16..24].try_into().unwrap()) as usize;
    let s = u32::from_be_bytes(rec[12..16].try_into().unwrap()) as usize;
    let n = l.div_ceil(s).max(1);
    let mut km = batch_key_bytes(0).to_vec();
    km.extend_from_slice(&rec[8..104]);
    let key = blake3::derive_key("envseal 2026-12-01 v2 file segment key", &km);
    let prefix = blake3::derive_key("envseal 2026-12-01 v2 file nonce prefix", &km);
    let aead = Aes256Gcm::new_from_slice(&key).unwrap();
    let nonce = |i: usize, last: u8| {
        let mut b = [0u8; 12];
        b[..7].copy_from_slice(&prefix[..7]);
        b[7..11].copy_from_slice(&(i as u32).to_be_bytes());
        b[11] = last;
        b
    };
    let tl = 4 * n + 16;
    let table = aead
        .decrypt(Nonce::from_slice(&nonce(n, 2)), &rec[rlen - tl..])
        .unwrap();
    let mut at = 136;
    let mut plain = Vec::new();
    let mut compressed = 0;
    for i in 0..n {
        let c = u32::from_be_bytes(table[4 * i..4 * i + 4].try_into().unwrap()) as usize;
        let li = (l - i * s).min(s);
        let stored = aead
            .decrypt(
                Nonce::from_slice(&nonce(i, u8::from(i == n - 1))),
                &rec[at..at + c + 16],
            )
            .unwrap();
        if c == li {
            plain.extend_from_slice(&stored);
        } else {
            compressed += 1;
            let d = zstd::bulk::decompress(&stored, li).unwrap();
            assert_eq!(d.len(), li);
            plain.extend_from_slice(&d);
        }
        at += c + 16;
    }
    assert_eq!(at + tl, rlen, "the table adds up");
    assert!(
        compressed >= 1 && compressed < n,
        "both raw and compressed slots"
    );
    assert_eq!(plain, plaintext(6, l));
    assert_eq!(
        format::to_hex(blake3::hash(&rec).as_bytes()),
        entry["ct"].as_str().unwrap()
    );
}

/// Random access to a compressed record (docs/FORMAT.md §4.5) through the library's reader:
/// segment 2 of `three-segs-plus-17` is opened alone, reading the header, the table and that
/// one slot, never the slots before it.
#[test]
fn a_compressed_segment_is_read_without_the_ones_before_it() {
    use envseal::pipeline::object::{RecordCtx, RecordReader};
    let vault = dir().join("compressed");
    let m = std::fs::read_to_string(vault.join("manifest.jsonl")).unwrap();
    let header = Header {
        vault_id: VAULT_ID,
        created: "2026-12-01T00:00:00Z".into(),
        generator: "envseal vectors".into(),
        segment_size: SEG,
        conceal_names: false,
        shard: None,
    };
    let line = m
        .lines()
        .find(|l| l.contains("\"vectors/three-segs-plus-17\""))
        .unwrap();
    let Entry {
        kind: EntryKind::File(f),
        ..
    } = Entry::from_line(line.as_bytes(), &header).unwrap()
    else {
        panic!("not a file entry")
    };
    let objects: Vec<ObjectRef> = [PACK_ID, SINGLE_ID]
        .iter()
        .map(|&id| ObjectRef {
            id,
            len: std::fs::metadata(object_path(&vault, &id)).unwrap().len(),
        })
        .collect();
    let store = LocalStore::new(&vault);
    let batches = [batch(0), batch(1)];
    let ctx = RecordCtx::new(&store, &header, &batches, &objects, 1);
    let r = RecordReader::new(&ctx, &f, &batch_key(f.batch as usize)).unwrap();
    assert_eq!(r.segments(), 4);
    let before = ctx.read.load(std::sync::atomic::Ordering::Relaxed);
    let mut out = Vec::new();
    r.segment(2, &mut out).unwrap();
    let slot = ctx.read.load(std::sync::atomic::Ordering::Relaxed) - before;
    let want = plaintext(6, 3 * SEG as usize + 17);
    assert_eq!(out, want[2 * SEG as usize..3 * SEG as usize]);
    // Header and table first (136 + 4·4 + 16 bytes), then one compressed slot.
    assert_eq!(before, 136 + 32);
    assert!(
        slot < u64::from(SEG) / 4,
        "one compressed slot read: {slot} bytes"
    );
    assert_eq!(r.segments_range(0, 4).unwrap(), want);
}
