//! Known-answer vectors for the vault format (fixtures/vectors/).
//!
//! The vectors are a complete small vault made with fixed keys, ids and salts by the reference
//! sealer (`object::seal_object`) and `Manifest::write`. The tests (1) decrypt and deep-verify
//! the checked-in vault through the real library paths and compare with the recorded
//! plaintexts, and (2) regenerate everything and require byte equality, so any change to the
//! format fails here until the vectors are regenerated on purpose:
//!
//!     ENVSEAL_REGEN_VECTORS=1 cargo test --test vectors
//!
//! (and a format change that old vaults cannot follow must also bump FORMAT_VERSION).

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use envseal::crypto::BatchKey;
use envseal::decrypt::{decrypt, DecryptOptions};
use envseal::format::{self, ObjectHeader};
use envseal::keys::Kms;
use envseal::kms::{
    DataKey, EncryptionContext, GeneratedKey, KeyProvider, KmsError, KmsErrorKind, KmsOptions,
    WrappedKey,
};
use envseal::manifest::{self, Batch, Entry, EntryKind, FileEntry, Manifest, Name};
use envseal::progress::NoProgress;
use envseal::verify::{verify, VerifyOptions};

const KMS: &str = "vector";
const SEG: u32 = 4096;

fn batch_key_bytes() -> [u8; 32] {
    std::array::from_fn(|i| i as u8)
}
const VAULT_ID: [u8; 16] = [0xa0; 16];
const BATCH_ID: [u8; 16] = [0xb0; 16];

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

fn batch_key() -> BatchKey {
    BatchKey::new(
        DataKey::from_bytes(&batch_key_bytes()).unwrap(),
        VAULT_ID,
        BATCH_ID,
    )
}

/// (name, plaintext length)
fn cases() -> Vec<(&'static str, usize)> {
    vec![
        ("empty", 0),
        ("one-byte", 1),
        ("seg-minus-1", SEG as usize - 1),
        ("seg-exact", SEG as usize),
        ("seg-plus-1", SEG as usize + 1),
        ("three-segs-plus-17", 3 * SEG as usize + 17),
    ]
}

fn plaintext(k: usize, len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 7 + k * 13) % 256) as u8).collect()
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/vectors")
}

/// Builds the vector vault into `out` (objects, key file, manifest) and the plaintexts into
/// `plain`.
fn generate(out: &Path, plain: &Path) {
    let key = batch_key();
    let batch = Batch {
        batch_id: BATCH_ID,
        key_commitment: key.commitment(),
        wrapped: vec![WrappedKey {
            kms: KMS.into(),
            key_id: "vector-cmk".into(),
            blob: hex::encode(batch_key_bytes()),
            context: EncryptionContext::for_batch(
                &format::to_hex(&VAULT_ID),
                &format::to_hex(&BATCH_ID),
            ),
        }],
    };
    let mut entries = vec![Entry {
        path: Name::Clear(b"vectors".to_vec()),
        mode: 0o755,
        mtime: 1_700_000_000,
        mtime_nsec: 0,
        kind: EntryKind::Dir,
    }];
    std::fs::create_dir_all(plain).unwrap();
    for (k, (name, len)) in cases().into_iter().enumerate() {
        let pt = plaintext(k, len);
        let mut header = ObjectHeader {
            version: format::FORMAT_VERSION,
            alg: format::ALG_AES256GCM_BLAKE3,
            segment_size: SEG,
            plain_len: len as u64,
            vault_id: VAULT_ID,
            batch_id: BATCH_ID,
            file_id: [k as u8 + 1; 16],
            salt: [k as u8 + 0x40; 32],
            commitment: [0; 32],
        };
        let (obj, ct, mac) = envseal::object::seal_object(&key, &mut header, &pt);
        let f = FileEntry {
            size: len as u64,
            batch: 0,
            file_id: header.file_id,
            salt: header.salt,
            ct_blake3: *ct.as_bytes(),
            pt_mac: *mac.as_bytes(),
        };
        let obj_path = out.join(f.object());
        std::fs::create_dir_all(obj_path.parent().unwrap()).unwrap();
        std::fs::write(&obj_path, &obj).unwrap();
        std::fs::write(plain.join(name), &pt).unwrap();
        entries.push(Entry {
            path: Name::Clear(format!("vectors/{name}").into_bytes()),
            mode: 0o644,
            mtime: 1_700_000_000 + k as i64,
            mtime_nsec: 123_456_789,
            kind: EntryKind::File(f),
        });
    }
    entries.sort_by(|a, b| a.path.clear().cmp(&b.path.clear()));
    let m = Manifest {
        vault_id: VAULT_ID,
        created: "2026-11-28T00:00:00Z".into(),
        generator: "envseal vectors".into(),
        segment_size: SEG,
        conceal_names: false,
        batches: vec![batch.clone()],
        entries,
    };
    manifest::write_key_file(out, &VAULT_ID, &batch).unwrap();
    m.write(out, &[&key]).unwrap();
}

/// Every file below `dir`, relative, sorted.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = walkdir_files(dir);
    v.sort();
    v
}

fn walkdir_files(root: &Path) -> Vec<PathBuf> {
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
    out
}

#[test]
fn vectors_are_current() {
    let tmp = tempfile::tempdir().unwrap();
    let fresh = tmp.path().to_path_buf();
    std::fs::create_dir_all(fresh.join("vault")).unwrap();
    generate(&fresh.join("vault"), &fresh.join("plain"));
    let checked_in = dir();
    if std::env::var_os("ENVSEAL_REGEN_VECTORS").is_some() {
        for d in ["vault", "plain"] {
            let _ = std::fs::remove_dir_all(checked_in.join(d));
        }
        std::fs::create_dir_all(checked_in.join("vault")).unwrap();
        generate(&checked_in.join("vault"), &checked_in.join("plain"));
        return;
    }
    let keep = |v: Vec<PathBuf>| -> Vec<PathBuf> {
        v.into_iter()
            .filter(|p| p.starts_with("vault") || p.starts_with("plain"))
            .collect()
    };
    let a = keep(files(&fresh));
    let b = keep(files(&checked_in));
    assert_eq!(a, b, "the vector vault's file list changed: regenerate with ENVSEAL_REGEN_VECTORS=1 cargo test --test vectors");
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

#[test]
fn checked_in_vectors_decrypt_to_recorded_plaintexts() {
    let vault = dir().join("vault");
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("out");
    let opts = DecryptOptions {
        vault: vault.clone(),
        dest: dest.clone(),
        only: vec![],
        overwrite: false,
        jobs: 2,
    };
    let r = decrypt(&opts, &kms(), &NoProgress, &AtomicBool::new(false)).unwrap();
    assert!(r.failed.is_empty(), "{:?}", r.failed);
    assert_eq!(r.files as usize, cases().len());
    for (name, len) in cases() {
        let got = std::fs::read(dest.join("vectors").join(name)).unwrap();
        let want = std::fs::read(dir().join("plain").join(name)).unwrap();
        assert_eq!(got.len(), len, "{name}");
        assert!(
            got == want,
            "{name}: plaintext differs from the recorded one"
        );
    }
    let v = verify(
        &vault,
        &VerifyOptions {
            deep: true,
            jobs: 2,
        },
        Some(&kms()),
        &NoProgress,
        &AtomicBool::new(false),
    )
    .unwrap();
    assert!(v.problems.is_empty(), "{:?}", v.problems);
    assert_eq!(v.files as usize, cases().len());
}
