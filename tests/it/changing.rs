//! Sources that change while they are encrypted: whatever the vault records is a state the
//! file really had, never a mix of two.

use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use envseal::decrypt::{decrypt, DecryptOptions};
use envseal::encrypt::{encrypt, EncryptOptions};
use envseal::keys::Kms;
use envseal::kms::local::LocalProvider;
use envseal::kms::KmsOptions;
use envseal::progress::{NoProgress, Progress};

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Sets a file's mtime back to (secs, nsec), as `touch -r` does.
fn set_mtime(p: &Path, secs: i64, nsec: i64) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let t = [
        libc::timespec {
            tv_sec: secs,
            tv_nsec: nsec,
        },
        libc::timespec {
            tv_sec: secs,
            tv_nsec: nsec,
        },
    ];
    // SAFETY: a valid C path and two timespecs.
    assert_eq!(
        unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), t.as_ptr(), 0) },
        0
    );
}

/// Rewrites a file in place (same size, other bytes) and puts its mtime back, the first
/// time `times` progress events have passed: while the file is being read.
struct RewriteDuringRead {
    path: PathBuf,
    new: Vec<u8>,
    events: AtomicUsize,
    at: usize,
    rewritten: AtomicBool,
}

impl Progress for RewriteDuringRead {
    fn bytes(&self, _: u64) {
        if self.events.fetch_add(1, Ordering::SeqCst) + 1 != self.at {
            return;
        }
        let md = fs::metadata(&self.path).unwrap();
        let f = fs::OpenOptions::new().write(true).open(&self.path).unwrap();
        f.write_all_at(&self.new, 0).unwrap();
        drop(f);
        set_mtime(&self.path, md.mtime(), md.mtime_nsec());
        self.rewritten.store(true, Ordering::SeqCst);
    }
}

/// The in-place rewrite with its mtime put back (`touch -r`, `cp -p`, rsync) during the
/// read of a large file is detected (ctime moves) and the file read again: the vault holds
/// the new version whole, never a mix. (Files that keep changing are reported: the small
/// files' test below.)
#[test]
fn an_in_place_rewrite_with_restored_mtime_is_never_stored_mixed() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("data");
    fs::create_dir_all(&src).unwrap();
    let big = src.join("big.img");
    let old = pattern(32 << 20, 1);
    let new = pattern(32 << 20, 2);
    fs::write(&big, &old).unwrap();
    fs::write(src.join("small.txt"), b"small").unwrap();
    let store = tmp.path().join("keystore");
    let url = format!("local:{}", store.display());
    let provider = LocalProvider::open(Some(&store), &KmsOptions::default()).unwrap();
    let kms = Kms::new(KmsOptions::default(), None).with_provider(&url, Arc::new(provider));
    let vault = tmp.path().join("vault");
    let opts = EncryptOptions {
        segment_size: 1 << 16,
        jobs: 1,
        ..EncryptOptions::new(vec![src.clone()], vault.clone(), url)
    };
    let hook = RewriteDuringRead {
        path: big.clone(),
        new: new.clone(),
        events: AtomicUsize::new(0),
        // The small file's bytes come first (its own event), then the big file's windows.
        at: 2,
        rewritten: AtomicBool::new(false),
    };
    let r = encrypt(&opts, &kms, &hook, &AtomicBool::new(false)).unwrap();
    assert!(
        hook.rewritten.load(Ordering::SeqCst),
        "the rewrite never ran"
    );
    // Detected (ctime moved) and read again, whole: the new version is stored.
    assert!(r.failed.is_empty(), "{:?}", r.failed);
    assert!(
        r.bytes_read > new.len() as u64 + 5,
        "the changed file was not read again: {} bytes read",
        r.bytes_read
    );
    let restore = |dest: &Path| {
        let o = DecryptOptions {
            jobs: 1,
            ..DecryptOptions::new(vault.clone(), dest.to_path_buf())
        };
        decrypt(&o, &kms, &NoProgress, &AtomicBool::new(false)).unwrap();
        fs::read(dest.join("data/big.img")).ok()
    };
    let got = restore(&tmp.path().join("out1")).expect("big.img stored");
    assert!(
        got == new,
        "not the version read whole (old: {})",
        got == old
    );
    // The finished vault cannot be resumed; a new vault of the now quiet source holds the
    // new version whole.
    let mut again = opts.clone();
    again.vault = tmp.path().join("vault2").into();
    let r = encrypt(&again, &kms, &NoProgress, &AtomicBool::new(false)).unwrap();
    assert!(r.failed.is_empty(), "{:?}", r.failed);
    let o = DecryptOptions {
        jobs: 1,
        ..DecryptOptions::new(again.vault.clone(), tmp.path().join("out2"))
    };
    decrypt(&o, &kms, &NoProgress, &AtomicBool::new(false)).unwrap();
    assert!(fs::read(tmp.path().join("out2/data/big.img")).unwrap() == new);
}

/// A small file rewritten (mtime put back) between the walk and its read is stored as the
/// state that was read, with the mtime of that state: never new bytes under a stale ctime
/// that a resume would take for unchanged.
#[test]
fn small_files_record_the_state_they_were_read_in() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("data");
    fs::create_dir_all(&src).unwrap();
    for i in 0..200u8 {
        fs::write(src.join(format!("f{i:03}")), pattern(5000, i)).unwrap();
    }
    let store = tmp.path().join("keystore");
    let url = format!("local:{}", store.display());
    let provider = LocalProvider::open(Some(&store), &KmsOptions::default()).unwrap();
    let kms = Kms::new(KmsOptions::default(), None).with_provider(&url, Arc::new(provider));
    let vault = tmp.path().join("vault");
    let opts = EncryptOptions {
        segment_size: 4096,
        jobs: 2,
        ..EncryptOptions::new(vec![src.clone()], vault.clone(), url)
    };
    // A writer that keeps rewriting files in place and putting their mtime back.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (src, stop) = (src.clone(), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut round = 0u8;
            while !stop.load(Ordering::SeqCst) {
                round = round.wrapping_add(1);
                for i in (0..200u8).step_by(7) {
                    let p = src.join(format!("f{i:03}"));
                    let md = fs::metadata(&p).unwrap();
                    let f = fs::OpenOptions::new().write(true).open(&p).unwrap();
                    f.write_all_at(&pattern(5000, i.wrapping_add(round)), 0)
                        .unwrap();
                    drop(f);
                    set_mtime(&p, md.mtime(), md.mtime_nsec());
                }
            }
        })
    };
    let r = encrypt(&opts, &kms, &NoProgress, &AtomicBool::new(false));
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    let r = r.unwrap();
    let dest = tmp.path().join("out");
    let o = DecryptOptions {
        jobs: 1,
        ..DecryptOptions::new(vault.clone(), dest.clone())
    };
    decrypt(&o, &kms, &NoProgress, &AtomicBool::new(false)).unwrap();
    // Every stored file is one whole version the writer wrote (a pattern of one seed).
    let failed: Vec<&str> = r.failed.iter().map(|f| f.path.as_str()).collect();
    for i in 0..200u8 {
        let name = format!("f{i:03}");
        let Ok(got) = fs::read(dest.join("data").join(&name)) else {
            assert!(
                failed.iter().any(|f| f.ends_with(&name)),
                "{name} neither stored nor reported"
            );
            continue;
        };
        let seed = got[0];
        assert_eq!(got, pattern(5000, seed), "{name} stored mixed");
    }
}
