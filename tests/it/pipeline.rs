//! The parallel encrypt pipeline must produce exactly the records the sequential reference
//! sealer produces for the same header (same ids and salt), whatever the thread count, the
//! window boundaries, the pack threshold (files at and around it) and batch boundaries (a
//! pack holding records of several batches).

use envseal::store::local::LocalStore;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use envseal::encrypt::{encrypt, EncryptOptions};
use envseal::format::{self, ObjectHeader, HEADER_LEN};
use envseal::keys::Kms;
use envseal::kms::local::LocalProvider;
use envseal::kms::KmsOptions;
use envseal::manifest::ManifestReader;
use envseal::progress::NoProgress;

fn run(jobs: usize, pack_threshold: u64, batch_max_files: u64) {
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
        8191,
        8192,
        8193,
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
        segment_size: seg,
        jobs,
        batch_max_files,
        pack_threshold,
        ..EncryptOptions::new(vec![src.clone()], vault.clone(), url)
    };
    let r = encrypt(&opts, &kms, &NoProgress, &AtomicBool::new(false)).unwrap();
    assert_eq!(r.files as usize, sizes.len());
    assert_eq!(
        r.batches,
        sizes.len().div_ceil(batch_max_files as usize) as u64
    );
    let mut m = ManifestReader::open(&LocalStore::new(&vault)).unwrap();
    let keys: Vec<_> = m
        .batches
        .iter()
        .map(|b| kms.unwrap(&m.header.vault_id, b).unwrap())
        .collect();
    let mut packed = 0;
    let mut batches_in = std::collections::HashMap::<u64, std::collections::HashSet<u32>>::new();
    while let Some(e) = m.next_entry().unwrap() {
        let Some(f) = e.file() else { continue };
        let o = &m.objects[f.obj as usize];
        let whole = std::fs::read(vault.join(o.name())).unwrap();
        let len = f.record_len(seg) as usize;
        let rec = &whole[f.off as usize..f.off as usize + len];
        let mut header = ObjectHeader::decode(&rec[..HEADER_LEN]).unwrap();
        let name = String::from_utf8(e.path.clear().unwrap().to_vec()).unwrap();
        let plain = std::fs::read(tmp.path().join(&name)).unwrap();
        assert_eq!(
            (plain.len() as u64) < pack_threshold,
            whole.len() > len,
            "{name}: packed exactly when below the threshold (here, with several small files)"
        );
        if whole.len() > len {
            packed += 1;
            batches_in.entry(f.obj).or_default().insert(f.batch);
        }
        let key = &keys[f.batch as usize];
        let (reference, ct, mac) = envseal::object::seal_object(key, &mut header, &plain);
        assert!(
            rec == reference,
            "{name}: pipeline and reference records differ"
        );
        assert_eq!(ct, f.ct, "{name}: ct digest");
        assert_eq!(mac.as_bytes(), &f.pt, "{name}: plaintext MAC");
    }
    let want_packed = sizes
        .iter()
        .filter(|&&n| (n as u64) < pack_threshold)
        .count();
    assert_eq!(packed, if want_packed > 1 { want_packed } else { 0 });
    if batch_max_files < sizes.len() as u64 && want_packed > batch_max_files as usize {
        assert!(
            batches_in.values().any(|b| b.len() > 1),
            "a pack holds records of several batches"
        );
    }
}

#[test]
fn pipeline_matches_reference_one_thread() {
    run(1, format::DEFAULT_PACK_THRESHOLD, format::BATCH_MAX_FILES);
}

#[test]
fn pipeline_matches_reference_many_threads_at_the_pack_threshold_across_batches() {
    run(4, 8192, 3);
}

#[test]
fn pipeline_matches_reference_without_packs() {
    run(2, 0, format::BATCH_MAX_FILES);
}
