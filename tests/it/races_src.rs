//! Hostile sources (README "Hostile filesystems"): a user who owns a directory below SRC swaps
//! it for a symlink to a directory elsewhere while encrypt walks and reads, as a red team did
//! (renameat2 RENAME_EXCHANGE in a tight loop). Nothing outside SRC may reach a vault, and
//! every vault a run finishes must verify.

use crate::common;

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use common::tree::{code, ok};
use common::{envseal, run, stderr};

use envseal::kms::keys::Kms;
use envseal::kms::local::LocalProvider;
use envseal::kms::KmsOptions;
use envseal::pipeline::encrypt::{encrypt, EncryptOptions};
use envseal::progress::Progress;

/// Bytes no file inside SRC holds: finding them in a restore means a file outside was read.
const MARKER: &[u8] = b"OUTSIDE-SRC-MARKER-5f1c9e";

/// Exchanges two names atomically (both always exist: one is the directory, one the link).
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    let a = CString::new(a.as_os_str().as_bytes()).unwrap();
    let b = CString::new(b.as_os_str().as_bytes()).unwrap();
    // SAFETY: two valid NUL-terminated paths; renameat2 reads nothing else.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A racer swapping `a` and `b` until told to stop; returns the swaps made.
struct Racer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Racer {
    fn start(a: PathBuf, b: PathBuf) -> Racer {
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut n = 0u64;
            while !s.load(Ordering::Relaxed) {
                exchange(&a, &b).unwrap();
                n += 1;
            }
            // Leave the directory at its own name, the link at its.
            if n % 2 == 1 {
                exchange(&a, &b).unwrap();
            }
            n
        });
        Racer {
            stop,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().map_or(0, |t| t.join().unwrap())
    }
}

/// Every file below `root` (not following links), with its bytes.
fn files(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let md = fs::symlink_metadata(&p).unwrap();
            if md.is_dir() {
                stack.push(p);
            } else if md.is_file() {
                out.push((p.clone(), fs::read(&p).unwrap()));
            }
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A directory inside SRC swapped with a symlink to an outside directory, in a tight loop,
/// while encrypt runs: no entry of the outside directory is ever in a vault (by name or by
/// content), and every vault encrypt finished (exit 0 or 1) verifies `--deep` and restores.
#[test]
fn a_directory_swapped_for_a_symlink_never_leads_the_walk_outside() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let src = tmp.path().join("src");
    let outside = tmp.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    // The outside directory holds files named as those inside the raced one (their bytes
    // would give a followed link away) and names of its own.
    for i in 0..30 {
        fs::write(outside.join(format!("f{i:02}")), MARKER).unwrap();
        fs::write(outside.join(format!("outside-only-{i:02}")), MARKER).unwrap();
    }
    fs::create_dir_all(outside.join("sub")).unwrap();
    fs::write(outside.join("sub/outside-deep"), MARKER).unwrap();
    for d in 0..10 {
        let dir = src.join(format!("d{d}"));
        fs::create_dir_all(dir.join("sub")).unwrap();
        for i in 0..30 {
            fs::write(dir.join(format!("f{i:02}")), format!("inside {d}/{i}")).unwrap();
        }
        fs::write(dir.join("sub/deep"), format!("deep {d}")).unwrap();
    }
    // The raced pair, and a second one at the top of the tree.
    let pairs = [
        (src.join("d5"), src.join("d5-link")),
        (src.join("d0/sub"), src.join("d0/sub-link")),
    ];
    for (_, link) in &pairs {
        std::os::unix::fs::symlink(&outside, link).unwrap();
    }

    let mut finished = 0;
    let mut swaps = 0;
    for round in 0..15 {
        let vault = tmp.path().join(format!("vault{round}"));
        let racers: Vec<Racer> = pairs
            .iter()
            .map(|(a, b)| Racer::start(a.clone(), b.clone()))
            .collect();
        let o = run(envseal(&home)
            .args(["encrypt", "-q", "-j", "2", "-o"])
            .arg(&vault)
            .arg(&src));
        swaps += racers.into_iter().map(Racer::stop).sum::<u64>();
        let c = code(&o);
        assert!(c == 0 || c == 1, "round {round}: exit {c}: {}", stderr(&o));
        finished += 1;

        // Names: nothing of the outside directory in the manifest.
        let manifest = fs::read(vault.join("manifest.jsonl")).unwrap();
        assert!(
            !contains(&manifest, b"outside-only") && !contains(&manifest, b"outside-deep"),
            "round {round}: an outside name is in the vault"
        );
        // The vault as a whole verifies.
        let v = run(envseal(&home).args(["verify", "--deep", "-q"]).arg(&vault));
        assert_eq!(code(&v), 0, "round {round}: {}", stderr(&v));
        // Contents: no outside bytes restored.
        let dest = tmp.path().join(format!("out{round}"));
        ok(envseal(&home)
            .args(["decrypt", "-q"])
            .arg(&vault)
            .arg("-o")
            .arg(&dest));
        for (p, bytes) in files(&dest) {
            assert!(
                !contains(&bytes, MARKER),
                "round {round}: {} holds bytes from outside SRC",
                p.display()
            );
        }
        fs::remove_dir_all(&dest).unwrap();
        fs::remove_dir_all(&vault).unwrap();
    }
    assert_eq!(finished, 15);
    assert!(swaps > 100, "the racers hardly ran ({swaps} swaps)");
}

/// Swaps a file for a symlink to an outside file once the walk has found it (before it is
/// read): the file is reported as changed, never read through the link.
struct SwapOnWalk {
    file: PathBuf,
    outside: PathBuf,
    done: AtomicUsize,
}

impl Progress for SwapOnWalk {
    fn walking(&self, files: u64, _bytes: u64) {
        if files == 1 && self.done.fetch_add(1, Ordering::SeqCst) == 0 {
            let moved = self.file.with_extension("moved");
            fs::rename(&self.file, moved).unwrap();
            std::os::unix::fs::symlink(&self.outside, &self.file).unwrap();
        }
    }
}

/// A file swapped for a symlink between the walk and its read is "changed while being read"
/// (retried, then reported), not ELOOP, and nothing of the link's target is stored.
#[test]
fn a_file_swapped_for_a_symlink_is_reported_as_changed() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a"), b"inside").unwrap();
    fs::write(src.join("b"), b"inside too").unwrap();
    let outside = tmp.path().join("secret");
    fs::write(&outside, MARKER).unwrap();
    let store = tmp.path().join("keystore");
    let url = format!("local:{}", store.display());
    let provider = LocalProvider::open(Some(&store), &KmsOptions::default()).unwrap();
    let kms = Kms::new(KmsOptions::default(), None).with_provider(&url, Arc::new(provider));
    let vault = tmp.path().join("vault");
    let opts = EncryptOptions {
        jobs: 1,
        ..EncryptOptions::new(vec![src.clone()], vault.clone(), url)
    };
    let hook = SwapOnWalk {
        file: src.join("a"),
        outside,
        done: AtomicUsize::new(0),
    };
    let r = encrypt(&opts, &kms, &hook, &AtomicBool::new(false)).unwrap();
    assert_eq!(hook.done.load(Ordering::SeqCst), 1, "the swap never ran");
    assert_eq!(r.failed.len(), 1, "{:?}", r.failed);
    let f = &r.failed[0];
    assert!(f.path.ends_with("src/a"), "{f:?}");
    assert!(f.why.contains("changed while being read"), "{f:?}");
    assert!(!f.why.contains("symbolic links"), "ELOOP leaked: {f:?}");
    assert_eq!(r.files, 1, "b is stored");
}
