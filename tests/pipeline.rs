//! The parallel encrypt pipeline must produce exactly the objects the sequential reference
//! sealer produces for the same header (same ids and salt), whatever the thread count, mmap
//! or read path, and window boundaries.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use envseal::encrypt::{encrypt, EncryptOptions};
use envseal::format::{self, ObjectHeader, HEADER_LEN};
use envseal::keys::Kms;
use envseal::kms::local::LocalProvider;
use envseal::kms::KmsOptions;
use envseal::manifest::Manifest;
use envseal::progress::NoProgress;

fn run(jobs: usize, use_mmap: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let seg = 4096u32;
    // Sizes around segment and window boundaries; the largest spans several windows.
    let sizes = [
        0usize,
        1,
        4095,
        4096,
        4097,
        3 * 4096,
        300 * 4096 + 5,
        9000 * 4096 + 1,
    ];
    for (k, n) in sizes.iter().enumerate() {
        let data: Vec<u8> = (0..*n).map(|i| ((i * 31 + k * 17) % 253) as u8).collect();
        std::fs::write(src.join(format!("f{k}")), data).unwrap();
    }
    let store = tmp.path().join("keystore");
    let url = format!("local:{}", store.display());
    let provider = LocalProvider::open(Some(&store), &KmsOptions::default()).unwrap();
    let kms = Kms::new(KmsOptions::default(), None).with_provider(&url, Arc::new(provider));
    let vault = tmp.path().join("vault");
    let opts = EncryptOptions {
        sources: vec![src.clone()],
        vault: vault.clone(),
        key: None,
        kms_url: url,
        segment_size: seg,
        excludes: vec![],
        conceal_names: false,
        resume: false,
        use_mmap,
        jobs,
        batch_max_files: format::BATCH_MAX_FILES,
        batch_max_bytes: format::BATCH_MAX_BYTES,
    };
    let r = encrypt(&opts, &kms, &NoProgress, &AtomicBool::new(false)).unwrap();
    assert_eq!(r.files as usize, sizes.len());
    let m = Manifest::read(&vault).unwrap();
    let key = kms.unwrap(&m.vault_id, &m.batches[0]).unwrap();
    for e in &m.entries {
        let Some(f) = e.file() else { continue };
        let obj = std::fs::read(vault.join(f.object())).unwrap();
        let mut header = ObjectHeader::decode(&obj[..HEADER_LEN]).unwrap();
        let name = String::from_utf8(e.path.clear().unwrap().to_vec()).unwrap();
        let plain = std::fs::read(tmp.path().join(&name)).unwrap();
        let (reference, ct, mac) = envseal::object::seal_object(&key, &mut header, &plain);
        assert!(
            obj == reference,
            "{name}: pipeline and reference objects differ"
        );
        assert_eq!(ct.as_bytes(), &f.ct_blake3, "{name}: ct digest");
        assert_eq!(mac.as_bytes(), &f.pt_mac, "{name}: plaintext MAC");
    }
}

#[test]
fn pipeline_matches_reference_one_thread_reads() {
    run(1, false);
}

#[test]
fn pipeline_matches_reference_many_threads_mmap() {
    run(4, true);
}
