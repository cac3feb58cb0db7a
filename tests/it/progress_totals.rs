//! Encrypt's progress totals through the library's `Progress` trait: a display that shows
//! totals gets them from a walk of their own, early, even when the walk that feeds the work
//! is held back by it (its channel is bounded); each inode is counted once.

use crate::common;

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envseal::kms::keys::Kms;
use envseal::kms::local::LocalProvider;
use envseal::kms::KmsOptions;
use envseal::pipeline::encrypt::{encrypt, EncryptOptions};
use envseal::progress::Progress;

use common::tree::gen_file;

/// Records when `start` came (after how many finished files) and with which totals; each
/// finished file takes `slow`, as a slow disk would, so the work lags behind the walk.
struct Recorder {
    slow: Duration,
    done: AtomicU64,
    started: Mutex<Option<(u64, u64, u64)>>,
}

impl Progress for Recorder {
    fn wants_totals(&self) -> bool {
        true
    }
    fn start(&self, files: u64, bytes: u64) {
        let done = self.done.load(Ordering::SeqCst);
        *self.started.lock().unwrap() = Some((done, files, bytes));
    }
    fn file_done(&self) {
        std::thread::sleep(self.slow);
        self.done.fetch_add(1, Ordering::SeqCst);
    }
}

fn run(
    src: &Path,
    dir: &Path,
    slow: Duration,
) -> (Recorder, envseal::pipeline::encrypt::EncryptReport) {
    let store = dir.join("keystore");
    let url = format!("local:{}", store.display());
    let provider = LocalProvider::open(Some(&store), &KmsOptions::default()).unwrap();
    let kms = Kms::new(KmsOptions::default(), None).with_provider(&url, Arc::new(provider));
    let opts = EncryptOptions {
        jobs: 1,
        // Every file is sealed alone (a window each): the buffer pool holds back the planner.
        pack_threshold: 0,
        sync: false,
        ..EncryptOptions::new(vec![src.to_path_buf()], dir.join("vault"), url)
    };
    let rec = Recorder {
        slow,
        done: AtomicU64::new(0),
        started: Mutex::new(None),
    };
    let r = encrypt(&opts, &kms, &rec, &AtomicBool::new(false)).unwrap();
    (rec, r)
}

/// 48 files first in walk order, then 4200 empty directories: the work walk cannot end
/// before the planner has taken every file (4096 entries fill its channel), so totals from it
/// would come near the end (after 42 of 48 files, as measured before the counting walk).
/// The counting walk gives them before a quarter is done.
#[test]
fn totals_come_early_when_the_work_lags_the_walk() {
    // Thousands of directories: on tmpfs where there is one (removing them elsewhere can
    // take longer than the test).
    let shm = Path::new("/dev/shm");
    let t = if shm.is_dir() {
        tempfile::tempdir_in(shm).or_else(|_| tempfile::tempdir())
    } else {
        tempfile::tempdir()
    }
    .unwrap();
    let src = t.path().join("src");
    for i in 0..48u64 {
        gen_file(&src.join(format!("a{i:03}")), 64 << 10, i);
    }
    for i in 0..4200 {
        fs::create_dir(src.join(format!("z{i:05}"))).unwrap();
    }
    let (rec, r) = run(&src, t.path(), Duration::from_millis(40));
    assert_eq!(r.files, 48);
    let (done_at_start, files, bytes) = rec.started.lock().unwrap().expect("no start");
    assert_eq!((files, bytes), (48, 48 * (64 << 10)));
    assert!(
        done_at_start < 12,
        "the totals came after {done_at_start} of 48 files were done"
    );
}

/// Hard links are one file of the vault, read once: the totals count the inode once.
#[test]
fn totals_count_each_inode_once() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    gen_file(&src.join("one"), 100_000, 1);
    gen_file(&src.join("two"), 5_000, 2);
    fs::hard_link(src.join("one"), src.join("one-again")).unwrap();
    fs::hard_link(src.join("one"), src.join("sub-one")).unwrap();
    let (rec, r) = run(&src, t.path(), Duration::ZERO);
    assert_eq!((r.files, r.hardlinks), (2, 2));
    let (_, files, bytes) = rec.started.lock().unwrap().expect("no start");
    assert_eq!((files, bytes), (2, 105_000));
    assert_eq!(rec.done.load(Ordering::SeqCst), 2, "as many done as found");
}
