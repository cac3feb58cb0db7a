//! Runs that survive: a kill -9 at any moment of an encrypt (timed, and at chosen moments:
//! the first key file, inside a large file, during the final manifest write) and a SIGKILL
//! injected at system calls of the commit path (strace) leave a vault that the same command
//! finishes, that passes `verify --deep` and that decrypts byte-identical.

use crate::common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::tree::{assert_same_tree, code, gen_file, ok};
use common::{envseal, stderr};

/// A source tree: `files` small files in a few directories and one large file of `large`
/// bytes.
fn source(root: &Path, files: u64, large: u64) -> PathBuf {
    let src = root.join("src");
    for i in 0..files {
        gen_file(
            &src.join(format!("d{}/f{i:05}", i % 7)),
            (i * 997) % 9000,
            i,
        );
    }
    gen_file(&src.join("big.img"), large, 99);
    src
}

fn encrypt_cmd(home: &Path, src: &Path, vault: &Path) -> Command {
    encrypt_cmd_with(home, src, vault, &[])
}

/// [`encrypt_cmd`] with more options.
fn encrypt_cmd_with(home: &Path, src: &Path, vault: &Path, extra: &[&str]) -> Command {
    let mut c = envseal(home);
    c.args(["encrypt", "-q", "-j", "1", "--segment-size", "64KiB"])
        .args(extra)
        .arg("-o")
        .arg(vault)
        .arg(src)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

/// The same command again finishes the vault; it passes `verify --deep` and restores the
/// source byte for byte.
fn assert_finishes(home: &Path, src: &Path, vault: &Path, out: &Path, case: &str) {
    assert_finishes_with(home, src, vault, out, case, &[])
}

/// [`assert_finishes`] of a run made with more options (the same again).
fn assert_finishes_with(
    home: &Path,
    src: &Path,
    vault: &Path,
    out: &Path,
    case: &str,
    extra: &[&str],
) {
    let o = encrypt_cmd_with(home, src, vault, extra)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{case}: rerun failed: {}", stderr(&o));
    let o = envseal(home)
        .args(["verify", "-q", "--deep"])
        .arg(vault)
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{case}: verify --deep: {}", common::stdout(&o));
    let _ = fs::remove_dir_all(out);
    let o = envseal(home)
        .args(["decrypt", "-q", "-o"])
        .arg(out)
        .arg(vault)
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{case}: decrypt: {}", stderr(&o));
    assert_same_tree(src, &out.join("src"));
}

/// Kills the child with SIGKILL; true if it was still running.
fn kill9(child: &mut Child) -> bool {
    let running = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    running
}

/// When to kill a run.
#[derive(Debug)]
enum Moment {
    After(Duration),
    /// As soon as the vault holds a key file.
    KeyFile,
    /// Once an object holds more than this many bytes (inside the large file).
    ObjectOver(u64),
    /// While `manifest.tmp` exists (the final manifest write).
    ManifestWrite,
    /// Once the journal holds this text.
    JournalHas(&'static str),
}

/// The longest object file (read while the run changes `objects/`: errors are skipped).
fn largest_object(vault: &Path) -> u64 {
    let mut max = 0;
    for sub in fs::read_dir(vault.join("objects"))
        .into_iter()
        .flatten()
        .flatten()
    {
        for o in fs::read_dir(sub.path()).into_iter().flatten().flatten() {
            max = max.max(o.metadata().map_or(0, |m| m.len()));
        }
    }
    max
}

fn has_key_file(vault: &Path) -> bool {
    fs::read_dir(vault).is_ok_and(|d| {
        d.filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().starts_with("keys-"))
    })
}

/// Waits for the moment, then kills; true if the run was still going when killed.
fn kill_at(child: &mut Child, vault: &Path, m: &Moment) -> bool {
    let started = Instant::now();
    loop {
        let now = match m {
            Moment::After(d) => started.elapsed() >= *d,
            Moment::KeyFile => has_key_file(vault),
            Moment::ObjectOver(n) => largest_object(vault) > *n,
            Moment::ManifestWrite => vault.join("manifest.tmp").exists(),
            Moment::JournalHas(t) => {
                fs::read_to_string(vault.join("journal.jsonl")).is_ok_and(|j| j.contains(t))
            }
        };
        if now || started.elapsed() > Duration::from_secs(60) {
            return kill9(child);
        }
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        match m {
            Moment::After(d) if *d < Duration::from_millis(100) => {}
            _ => std::thread::sleep(Duration::from_micros(200)),
        }
    }
}

#[test]
fn kill_9_at_many_moments_every_rerun_finishes() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = source(t.path(), 1000, 14 << 20);
    let out = t.path().join("out");
    // How long a whole run takes here (the timed moments spread over it); the first run
    // also creates the key store.
    ok(&mut encrypt_cmd(&home, &src, &t.path().join("v-first")));
    let vault = t.path().join("v-full");
    let started = Instant::now();
    ok(&mut encrypt_cmd(&home, &src, &vault));
    let full = started.elapsed();
    eprintln!("a whole run takes {full:?}");
    let mut moments: Vec<Moment> = [0u64, 2, 5, 10, 20, 35, 50, 75]
        .iter()
        .map(|ms| Moment::After(Duration::from_millis(*ms)))
        .collect();
    // Spread over the first 60% of a run (run times vary with the machine's load).
    for i in 1..=10u32 {
        moments.push(Moment::After(full * 6 * i / 100));
    }
    moments.extend([
        Moment::KeyFile,
        Moment::JournalHas("\"type\":\"done\""),
        Moment::ObjectOver(1 << 20),
        Moment::ObjectOver(4 << 20),
        Moment::ObjectOver(8 << 20),
        Moment::ObjectOver(12 << 20),
        Moment::ManifestWrite,
    ]);
    let mut killed_running = 0;
    for (i, m) in moments.iter().enumerate() {
        let vault = t.path().join(format!("v{i}"));
        let mut child = encrypt_cmd(&home, &src, &vault).spawn().unwrap();
        let running = kill_at(&mut child, &vault, m);
        killed_running += usize::from(running);
        let case = format!("kill at {m:?} (still running: {running})");
        eprintln!("{case}");
        if running && vault.exists() && !vault.join("manifest.jsonl").exists() {
            // An unfinished vault: readers say exactly which command finishes it.
            let o = envseal(&home).arg("verify").arg(&vault).output().unwrap();
            assert_eq!(code(&o), 1, "{case}: {}", stderr(&o));
            let e = stderr(&o);
            if vault.join("journal.jsonl").exists() {
                assert!(
                    e.contains("envseal encrypt") && e.contains(&vault.display().to_string()),
                    "{case}: {e}"
                );
            } else {
                // Killed before its journal existed: an empty directory, or leftovers.
                assert!(e.contains("no manifest.jsonl"), "{case}: {e}");
            }
        }
        assert_finishes(&home, &src, &vault, &out, &case);
        // A second rerun of a finished vault says so and succeeds too.
        let o = encrypt_cmd(&home, &src, &vault).output().unwrap();
        assert_eq!(code(&o), 0, "{case}: second rerun");
        fs::remove_dir_all(&vault).unwrap();
    }
    assert!(
        killed_running >= 20,
        "only {killed_running} of {} kills landed while the run was going",
        moments.len()
    );
}

/// SIGKILL injected (strace) at the Nth call of each system call of the commit path, on
/// any thread: the same command finishes every time.
#[test]
fn kill_injected_at_each_commit_syscall_every_rerun_finishes() {
    if Command::new("strace").arg("-V").output().is_err() {
        eprintln!("NOTICE: strace is not installed; skipping the fault-injection test");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = source(t.path(), 40, 3 << 20);
    // A first run creates the key store, so that the injected runs do only the encrypt's work.
    ok(&mut encrypt_cmd(&home, &src, &t.path().join("warm")));
    let syscalls = [
        "openat",
        "mkdir",
        "write",
        "pwrite64",
        "fsync",
        "fdatasync",
        "syncfs",
        "rename",
        "unlink",
        "ftruncate",
        "flock",
    ];
    let injected = inject_sweep(
        t.path(),
        (&home, &src),
        &syscalls,
        &[1, 2, 3, 5, 8, 13],
        (&["-j", "2"], &[]),
        &[],
    );
    eprintln!("{injected} injected kills");
    assert!(injected >= 30, "only {injected} injections killed a run");
}

/// The same injected kills on the commit path of a `--compress` run with a large file (a
/// compressed record written in order, its checkpoints carrying the prefix's offset and
/// hash, its object cut to length at the end): every rerun finishes.
#[test]
fn kill_injected_on_a_compressed_commit_path_every_rerun_finishes() {
    if Command::new("strace").arg("-V").output().is_err() {
        eprintln!("NOTICE: strace is not installed; skipping the fault-injection test");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    // 20 small files, and a large one of text (above the 8 MiB `--compress` packs below).
    let src = source(t.path(), 20, 0);
    // Hex digits of a xorshift stream: text that compresses to about half, so the record
    // takes several windows and checkpoints.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let text: Vec<u8> = (0..24 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b"0123456789abcdef"[(x & 15) as usize]
        })
        .collect();
    fs::write(src.join("big.img"), &text).unwrap();
    let extra = ["--compress", "zstd"];
    ok(&mut encrypt_cmd_with(
        &home,
        &src,
        &t.path().join("warm"),
        &extra,
    ));
    // Checkpoints of the large file every 1 MiB sealed.
    let injected = inject_sweep(
        t.path(),
        (&home, &src),
        &[
            "openat", "write", "pwrite64", "fsync", "syncfs", "rename", "unlink",
        ],
        &[1, 2, 3, 5, 8],
        (&["-j", "1"], &extra),
        &[("ENVSEAL_TEST_CHECKPOINT_BYTES", 1u64 << 20)],
    );
    eprintln!("{injected} injected kills");
    assert!(injected >= 20, "only {injected} injections killed a run");
}

/// Runs `encrypt` (with `options`, then `extra`, both given to the rerun too except the
/// options) under strace with SIGKILL injected at the `n`th call of each of `syscalls`, in
/// a vault of its own under `dir`; each vault a kill left is finished by the same command
/// ([`assert_finishes_with`]). Returns how many runs were killed.
fn inject_sweep(
    dir: &Path,
    (home, src): (&Path, &Path),
    syscalls: &[&str],
    ns: &[u32],
    (options, extra): (&[&str], &[&str]),
    env: &[(&str, u64)],
) -> usize {
    let out = dir.join("out");
    let mut injected = 0;
    for sc in syscalls {
        for n in ns {
            let vault = dir.join(format!("v-{sc}-{n}"));
            let o = Command::new("strace")
                .args(["-f", "-qq", "-o", "/dev/null", "-e"])
                .arg(format!("inject={sc}:signal=KILL:when={n}"))
                .arg(env!("CARGO_BIN_EXE_envseal"))
                .args(["encrypt", "-q", "--segment-size", "64KiB"])
                .args(options)
                .args(extra)
                .arg("-o")
                .arg(&vault)
                .arg(src)
                .env("ENVSEAL_HOME", home)
                .envs(env.iter().map(|(k, v)| (k, v.to_string())))
                .env_remove("ENVSEAL_KMS")
                .env_remove("ENVSEAL_PASSPHRASE")
                .output()
                .unwrap();
            let killed = !o.status.success();
            injected += usize::from(killed);
            let case = format!("SIGKILL at {sc} #{n} (killed: {killed})");
            if !vault.exists() {
                continue; // killed before the vault directory existed
            }
            assert_finishes_with(home, src, &vault, &out, &case, extra);
            fs::remove_dir_all(&vault).unwrap();
        }
    }
    injected
}
