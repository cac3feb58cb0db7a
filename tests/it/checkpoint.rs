//! Segment checkpoints: a large file interrupted past a checkpoint is taken up there, not
//! read again from the start (bytes read counted); a file changed since is sealed again
//! from the start; either way the vault is whole.

use std::fs;
use std::path::{Path, PathBuf};

use envseal::store::local::LocalStore;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::common::{local_kms, StopAfter};
use envseal::error::Error;
use envseal::pipeline::decrypt::{decrypt, DecryptOptions};
use envseal::pipeline::encrypt::{encrypt, EncryptOptions};
use envseal::pipeline::write::CHECKPOINT_BYTES;
use envseal::progress::{NoProgress, Progress};

fn write_big(p: &Path, len: usize, seed: u8) {
    let data: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(13) ^ seed ^ (i >> 20) as u8)
        .collect();
    fs::write(p, data).unwrap();
}

/// Makes `p` (of `len` bytes) a disk image with gaps: 8 MiB of zeros written at 40 MiB, and
/// 64 MiB more of which only the last 4 KiB is data (a hole before it).
fn add_gaps(p: &Path, len: u64) {
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new().write(true).open(p).unwrap();
    f.write_all_at(&vec![0u8; 8 << 20], 40 << 20).unwrap();
    f.set_len(len + (64 << 20)).unwrap();
    f.write_all_at(&[7u8; 4096], len + (64 << 20) - 4096)
        .unwrap();
}

fn run(change_before_resume: bool, sparse: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("data");
    fs::create_dir_all(&src).unwrap();
    let size = (2 * CHECKPOINT_BYTES + (24 << 20)) as usize;
    let big = src.join("big.img");
    write_big(&big, size, 1);
    if sparse {
        add_gaps(&big, size as u64);
    }
    let (kms, url) = local_kms(tmp.path());
    let vault = tmp.path().join("vault");
    let opts = EncryptOptions {
        segment_size: 1 << 20,
        jobs: 1,
        ..EncryptOptions::new(vec![src.clone()], vault.clone(), url)
    };
    let stop = StopAfter::new(CHECKPOINT_BYTES + (32 << 20));
    let e = encrypt(&opts, &kms, &stop, &stop.cancel).unwrap_err();
    assert!(matches!(e, Error::Interrupted), "{e}");
    let journal = fs::read_to_string(vault.join("journal.jsonl")).unwrap();
    assert!(
        journal.contains(r#""type":"ckpt""#),
        "no checkpoint recorded"
    );
    // What the vault holds now: at most the file and one checkpoint interval of windows.
    let held: u64 = walk_sizes(&vault.join("objects"));
    assert!(
        held <= size as u64 + CHECKPOINT_BYTES + (16 << 20),
        "{held}"
    );
    if change_before_resume {
        write_big(&big, size, 2);
    }
    let r = encrypt(&opts, &kms, &NoProgress, &AtomicBool::new(false)).unwrap();
    assert!(r.failed.is_empty(), "{:?}", r.failed);
    if change_before_resume {
        assert_eq!(r.bytes_read, size as u64, "a changed file is read whole");
    } else {
        assert!(
            r.bytes_read <= (size as u64) - CHECKPOINT_BYTES,
            "read {} of {size} bytes again",
            r.bytes_read
        );
    }
    let dest = tmp.path().join("out");
    let o = DecryptOptions {
        jobs: 1,
        ..DecryptOptions::new(vault.clone(), dest.clone())
    };
    let d = decrypt(&o, &kms, &NoProgress, &AtomicBool::new(false)).unwrap();
    assert!(d.failed.is_empty(), "{:?}", d.failed);
    assert!(fs::read(dest.join("data/big.img")).unwrap() == fs::read(&big).unwrap());
    if sparse && !change_before_resume {
        // Taken up at the checkpoint with the same gaps: recorded, and restored as zeros.
        let m = fs::read_to_string(vault.join("manifest.jsonl")).unwrap();
        assert!(m.contains(r#""zeros":[[41943040,8388608]]"#), "{m}");
        assert!(m.contains(r#""holes":[["#), "{m}");
    }
    let v = envseal::pipeline::verify::verify(
        &LocalStore::new(&vault),
        &envseal::pipeline::verify::VerifyOptions {
            deep: true,
            jobs: 1,
            sample: Default::default(),
        },
        Some(&kms),
        &NoProgress,
        &AtomicBool::new(false),
    )
    .unwrap();
    assert!(v.problems.is_empty(), "{:?}", v.problems);
}

fn walk_sizes(dir: &Path) -> u64 {
    let mut n = 0;
    for e in fs::read_dir(dir).unwrap().flatten() {
        let md = e.metadata().unwrap();
        n += if md.is_dir() {
            walk_sizes(&e.path())
        } else {
            md.len()
        };
    }
    n
}

#[test]
fn a_large_file_resumes_at_its_checkpoint_without_rereading_the_prefix() {
    run(false, false);
}

/// The same for a disk image with a hole and a zero extent: the resumed run finds the same
/// gaps, so the stored bytes it continues are the ones checkpointed.
#[test]
fn a_sparse_image_resumes_at_its_checkpoint() {
    run(false, true);
}

#[test]
fn a_large_file_changed_since_its_checkpoint_is_sealed_again_whole() {
    run(true, false);
}

/// The checkpoint interval of the kill test below (`ENVSEAL_TEST_CHECKPOINT_BYTES`, read by
/// the library for tests only): 8 MiB, one window of 1 MiB segments, stands for 64 MiB.
const TEST_CKPT: u64 = 8 << 20;

/// Not a test by itself: run as a child (`CKPT_KILL_VAULT` set), it encrypts `CKPT_KILL_SRC`
/// and kills itself (SIGKILL: nothing is committed on the way out) once `CKPT_KILL_AFTER`
/// bytes were sealed.
#[test]
fn checkpoint_kill_child() {
    let (Some(vault), Some(src), Some(after)) = (
        std::env::var_os("CKPT_KILL_VAULT"),
        std::env::var_os("CKPT_KILL_SRC"),
        std::env::var("CKPT_KILL_AFTER").ok(),
    ) else {
        return;
    };
    struct KillAfter(AtomicU64, u64);
    impl Progress for KillAfter {
        fn bytes(&self, n: u64) {
            if self.0.fetch_add(n, Ordering::SeqCst) + n >= self.1 {
                // SAFETY: kill and getpid have no preconditions; SIGKILL ends the process.
                unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
            }
        }
    }
    let (kms, url) = local_kms(Path::new(&vault).parent().unwrap());
    let opts = EncryptOptions {
        segment_size: 1 << 20,
        jobs: 1,
        ..EncryptOptions::new(vec![src.into()], PathBuf::from(vault), url)
    };
    let stop = KillAfter(AtomicU64::new(0), after.parse().unwrap());
    let _ = encrypt(&opts, &kms, &stop, &AtomicBool::new(false));
    panic!("not killed");
}

/// The test harness's name of test `f` of this module (`checkpoint::f` in the one test
/// binary; the crate's own name is not part of it).
fn test_name(f: &str) -> String {
    match module_path!().split_once("::") {
        Some((_, module)) => format!("{module}::{f}"),
        None => f.to_string(),
    }
}

/// kill -9 deep into one large file (past 4 checkpoint intervals, which stand for 256 MiB):
/// checkpoints are committed by bytes too, not only every 500 ms, so the rerun reads again
/// at most 4 intervals and a window of what was sealed, however fast the engine went.
#[test]
fn a_kill_deep_into_a_large_file_costs_at_most_four_checkpoint_intervals() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("data");
    fs::create_dir_all(&src).unwrap();
    let size = 16 * TEST_CKPT;
    let big = src.join("big.img");
    write_big(&big, size as usize, 3);
    let vault = tmp.path().join("vault");
    let after = 12 * TEST_CKPT;
    let st = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", &test_name("checkpoint_kill_child")])
        .args(["--nocapture", "--test-threads=1"])
        .env("CKPT_KILL_VAULT", &vault)
        .env("CKPT_KILL_SRC", &src)
        .env("CKPT_KILL_AFTER", after.to_string())
        .env("ENVSEAL_TEST_CHECKPOINT_BYTES", TEST_CKPT.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(st.signal(), Some(libc::SIGKILL), "{st:?}");
    let journal = fs::read_to_string(vault.join("journal.jsonl")).unwrap();
    assert!(
        journal.contains(r#""type":"ckpt""#),
        "no checkpoint committed"
    );

    let (kms, url) = local_kms(tmp.path());
    let opts = EncryptOptions {
        segment_size: 1 << 20,
        jobs: 1,
        ..EncryptOptions::new(vec![src.clone()], vault.clone(), url)
    };
    let r = encrypt(&opts, &kms, &NoProgress, &AtomicBool::new(false)).unwrap();
    assert!(r.failed.is_empty(), "{:?}", r.failed);
    let lost = r.bytes_read - (size - after);
    assert!(
        r.bytes_read <= size - after + 4 * TEST_CKPT + (8 << 20),
        "read {} of {size} bytes again: {lost} bytes sealed before the kill were lost",
        r.bytes_read
    );
    let dest = tmp.path().join("out");
    let o = DecryptOptions {
        jobs: 1,
        ..DecryptOptions::new(vault.clone(), dest.clone())
    };
    let d = decrypt(&o, &kms, &NoProgress, &AtomicBool::new(false)).unwrap();
    assert!(d.failed.is_empty(), "{:?}", d.failed);
    assert!(fs::read(dest.join("data/big.img")).unwrap() == fs::read(&big).unwrap());
}
