//! Decrypt resumes: after Ctrl-C or kill -9 the same command finishes with exit 0, keeping
//! the files already restored; it stops promptly on SIGINT; a user's file that looks like a
//! temporary file survives. Plus the process limits: `-j` is capped, core dumps are off.

use crate::common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::tree::{assert_same_tree, code, files_under, gen_file, ok};
use common::{envseal, stderr};

struct Fx {
    t: tempfile::TempDir,
    home: PathBuf,
    src: PathBuf,
    vault: PathBuf,
}

fn fixture() -> Fx {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = t.path().join("src");
    for i in 0..600u64 {
        gen_file(&src.join(format!("d{}/f{i:04}", i % 5)), 20_000 + i, i);
    }
    for i in 0..3u64 {
        gen_file(&src.join(format!("big{i}.img")), 24 << 20, 50 + i);
    }
    let vault = t.path().join("vault");
    ok(envseal(&home)
        .args(["encrypt", "-q", "--segment-size", "64KiB", "-o"])
        .arg(&vault)
        .arg(&src));
    Fx {
        t,
        home,
        src,
        vault,
    }
}

impl Fx {
    fn decrypt(&self, dest: &Path) -> Command {
        let mut c = envseal(&self.home);
        c.args(["decrypt", "-q", "-j", "1", "-o"])
            .arg(dest)
            .arg(&self.vault);
        c
    }
}

/// Waits until DEST holds at least `n` files, then returns; panics if the child ends first.
fn wait_for_files(child: &mut Child, dest: &Path, n: usize) {
    let started = Instant::now();
    while files_under(dest).len() < n {
        if let Some(st) = child.try_wait().unwrap() {
            panic!("decrypt ended ({st}) before it could be interrupted");
        }
        assert!(started.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn decrypt_after_kill_9_and_ctrl_c_finishes_with_exit_0() {
    let fx = fixture();
    let dest = fx.t.path().join("out");
    // A user's file named like an old-style temporary file: it must survive.
    let mine = dest.join("src/d0/.envseal-0123456789abcdef.tmp");
    fs::create_dir_all(mine.parent().unwrap()).unwrap();
    fs::write(&mine, b"mine").unwrap();

    // kill -9 in the middle.
    let mut child = fx
        .decrypt(&dest)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_files(&mut child, &dest, 150);
    child.kill().unwrap();
    child.wait().unwrap();
    let before = files_under(&dest).len();

    // SIGINT in the middle of the rerun: it stops within half a second, exit 130.
    let mut child = fx
        .decrypt(&dest)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_files(&mut child, &dest, before + 100);
    let sent = Instant::now();
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let o = child.wait_with_output().unwrap();
    let took = sent.elapsed();
    assert_eq!(code(&o), 130, "{}", stderr(&o));
    assert!(took < Duration::from_millis(500), "SIGINT took {took:?}");

    // The same command again finishes, exit 0, keeping what was restored.
    let o = fx.decrypt(&dest).output().unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(
        fs::read(&mine).unwrap(),
        b"mine",
        "the user's file was touched"
    );
    // Without it (and the directory's mtime, which its removal changed), DEST is the source.
    fs::remove_file(&mine).unwrap();
    let d0 = fs::metadata(fx.src.join("d0")).unwrap();
    let t = filetime::FileTime::from_last_modification_time(&d0);
    filetime::set_file_mtime(dest.join("src/d0"), t).unwrap();
    assert_same_tree(&fx.src, &dest.join("src"));
    // And once more: everything is in place already.
    let o = fx.decrypt(&dest).output().unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_same_tree(&fx.src, &dest.join("src"));
}

/// A file in DEST with the entry's size, mode and mtime but other bytes is not taken for a
/// restored one: it is reported (exit 1), not kept silently.
#[test]
fn a_lookalike_file_is_not_taken_for_restored() {
    let fx = fixture();
    let dest = fx.t.path().join("out");
    ok(&mut fx.decrypt(&dest));
    let victim = dest.join("src/d1/f0001");
    let md = fs::metadata(&victim).unwrap();
    let mut bytes = fs::read(&victim).unwrap();
    bytes[100] ^= 1;
    fs::write(&victim, &bytes).unwrap();
    let mtime = filetime::FileTime::from_last_modification_time(&md);
    filetime::set_file_mtime(&victim, mtime).unwrap();
    let o = fx.decrypt(&dest).output().unwrap();
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("f0001"), "{}", stderr(&o));
}

/// `-j` far over the cap is lowered with a notice, and the run finishes.
#[test]
fn jobs_over_the_cap_are_lowered_with_a_notice() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = t.path().join("src");
    gen_file(&src.join("a"), 1000, 1);
    let o = ok(envseal(&home)
        .args(["encrypt", "-j", "100000", "-o"])
        .arg(t.path().join("v"))
        .arg(&src));
    assert!(
        stderr(&o).contains("-j 100000 lowered to"),
        "{}",
        stderr(&o)
    );
}

/// A running encrypt cannot dump core: its core limit is 0 and SIGABRT leaves no core.
#[test]
fn a_running_encrypt_cannot_dump_core() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = t.path().join("src");
    for i in 0..4u64 {
        gen_file(&src.join(format!("f{i}")), 32 << 20, i);
    }
    let mut child = envseal(&home)
        .args(["encrypt", "-q", "-j", "1", "-o"])
        .arg(t.path().join("v"))
        .arg(&src)
        .current_dir(t.path())
        .spawn()
        .unwrap();
    // Once it holds a data key (its key file is written).
    let vault = t.path().join("v");
    let started = Instant::now();
    while !fs::read_dir(&vault).is_ok_and(|d| {
        d.flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("keys-"))
    }) {
        assert!(child.try_wait().unwrap().is_none(), "ended too soon");
        assert!(started.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(1));
    }
    let limits = fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    let fields: Vec<&str> = core.split_whitespace().collect();
    assert_eq!(&fields[4..6], ["0", "0"], "{core}");
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGABRT) }, 0);
    let st = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(st.signal(), Some(libc::SIGABRT));
    assert!(!st.core_dumped(), "a core was dumped");
}

/// Directory modes and times are set last, after their contents, on handles: an unprivileged
/// restore of 0311 and 000 directories succeeds, keeps their mtimes, and a rerun (the
/// directories already at their final modes) succeeds too. Needs root to switch to `nobody`
/// (skipped with a notice otherwise).
#[test]
fn unprivileged_restore_of_0311_and_000_directories() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || Command::new("setpriv").arg("--version").output().is_err()
    {
        eprintln!("NOTICE: not root or no setpriv; skipping the unprivileged restore test");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    let home = root.join("home");
    let src = root.join("src");
    gen_file(&src.join("a/b/f"), 10, 1);
    gen_file(&src.join("z/g"), 10, 2);
    for (d, mode) in [("a", 0o311), ("z", 0o000)] {
        let p = src.join(d);
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        common::tree::set_mtime(&p, 978_307_200, 5);
    }
    // A vault of the tree with those modes, readable by nobody, with the binary beside it.
    let vault = root.join("vault2");
    ok(envseal(&home)
        .args(["encrypt", "-q", "-o"])
        .arg(&vault)
        .arg(&src));
    let bin = root.join("envseal");
    fs::copy(env!("CARGO_BIN_EXE_envseal"), &bin).unwrap();
    let st = Command::new("chown")
        .args(["-R", "nobody:"])
        .arg(root)
        .status()
        .unwrap();
    assert!(st.success());
    fs::set_permissions(root, fs::Permissions::from_mode(0o755)).unwrap();
    let dest = root.join("out");
    for round in 0..2 {
        let o = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "env"])
            .arg(format!("ENVSEAL_HOME={}", home.display()))
            .arg(&bin)
            .args(["decrypt", "-q", "-o"])
            .arg(&dest)
            .arg(&vault)
            .output()
            .unwrap();
        assert_eq!(code(&o), 0, "round {round}: {}", stderr(&o));
        for (d, mode) in [("a", 0o311), ("z", 0o000)] {
            let md = fs::symlink_metadata(dest.join("src").join(d)).unwrap();
            assert_eq!(md.mode() & 0o7777, mode, "{d}");
            assert_eq!((md.mtime(), md.mtime_nsec()), (978_307_200, 5), "{d}");
        }
    }
    // Root reads them back: the files inside were restored.
    assert_eq!(
        fs::read(dest.join("src/a/b/f")).unwrap(),
        fs::read(src.join("a/b/f")).unwrap()
    );
    assert_eq!(
        fs::read(dest.join("src/z/g")).unwrap(),
        fs::read(src.join("z/g")).unwrap()
    );
}

/// A small tree with hard links (across directories and within one), a symlink, and modes
/// and mtimes on its directories.
fn linked_tree(root: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let src = root.join("src");
    for i in 0..6u64 {
        gen_file(&src.join(format!("a/f{i}")), 3000 + i * 4099, i);
    }
    gen_file(&src.join("a/h"), 70_000, 40);
    fs::create_dir_all(src.join("b/c")).unwrap();
    fs::hard_link(src.join("a/h"), src.join("b/c/h-link")).unwrap();
    fs::hard_link(src.join("a/h"), src.join("a/h-twin")).unwrap();
    gen_file(&src.join("b/g"), 5000, 41);
    fs::hard_link(src.join("b/g"), src.join("g-link")).unwrap();
    std::os::unix::fs::symlink("../a/f1", src.join("b/l")).unwrap();
    for (d, mode) in [("b/c", 0o750), ("b", 0o755), ("a", 0o700)] {
        fs::set_permissions(src.join(d), fs::Permissions::from_mode(mode)).unwrap();
        common::tree::set_mtime(&src.join(d), 1_200_000_000 + mode as i64, 9);
    }
    src
}

/// The restored hard links are links again (one inode per linked group).
fn assert_linked(out: &Path) {
    use std::os::unix::fs::MetadataExt;
    let ino = |p: &str| fs::symlink_metadata(out.join(p)).unwrap().ino();
    assert_eq!(ino("a/h"), ino("b/c/h-link"), "a/h and b/c/h-link");
    assert_eq!(ino("a/h"), ino("a/h-twin"), "a/h and a/h-twin");
    assert_eq!(ino("b/g"), ino("g-link"), "b/g and g-link");
}

/// A decrypt that stopped between a file and its hard links: the same command links them to
/// the file already restored, exits 0, and the tree is whole; on a complete restore it
/// exits 0 too (every link already in place).
#[test]
fn hard_links_finish_on_rerun() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = linked_tree(t.path());
    let vault = t.path().join("vault");
    ok(envseal(&home)
        .args(["encrypt", "-q", "-o"])
        .arg(&vault)
        .arg(&src));
    let dest = t.path().join("out");
    let decrypt = || {
        let mut c = envseal(&home);
        c.args(["decrypt", "-q", "-o"]).arg(&dest).arg(&vault);
        c
    };
    ok(&mut decrypt());
    // Complete: the same command finds everything in place.
    ok(&mut decrypt());
    assert_same_tree(&src, &dest.join("src"));
    assert_linked(&dest.join("src"));
    // Stopped before the links were made.
    for l in ["b/c/h-link", "a/h-twin", "g-link"] {
        fs::remove_file(dest.join("src").join(l)).unwrap();
    }
    let o = decrypt().output().unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_same_tree(&src, &dest.join("src"));
    assert_linked(&dest.join("src"));
    // A name in a link's place that is another file is still refused (not taken for it).
    let l = dest.join("src/g-link");
    fs::remove_file(&l).unwrap();
    fs::copy(dest.join("src/b/g"), &l).unwrap();
    let o = decrypt().output().unwrap();
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("g-link"), "{}", stderr(&o));
}

/// SIGKILL injected (strace) at the Nth call of each system call a restore makes (creating,
/// linking, naming, setting modes, owners, times and attributes, syncing), on any thread: the
/// same command then exits 0 and the tree is identical, hard links included.
#[test]
fn kill_injected_at_each_restore_syscall_every_rerun_finishes() {
    if Command::new("strace").arg("-V").output().is_err() {
        eprintln!("NOTICE: strace is not installed; skipping the fault-injection test");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = linked_tree(t.path());
    let vault = t.path().join("vault");
    ok(envseal(&home)
        .args(["encrypt", "-q", "-o"])
        .arg(&vault)
        .arg(&src));
    // strace counts calls per thread: with `-j 1` the files are restored on one worker
    // (8 files: 8 each of linkat, fchmod, fchown, utimensat; ~22 openat2), the directories,
    // links and symlink on the main thread, after them. Into an empty DEST:
    let fresh: &[(&str, &[u32])] = &[
        ("mkdir", &[1, 2]),
        ("mkdirat", &[1, 2, 3, 4]),
        ("openat", &[2, 5, 8, 11, 14, 17, 20]),
        ("openat2", &[1, 4, 7, 10, 13, 16, 19, 22]),
        ("newfstatat", &[1, 3, 5, 7, 9, 11, 14]),
        ("pwrite64", &[1, 4, 8]),
        ("fchown", &[1, 4, 8]),
        ("fchmod", &[1, 3, 5, 8]),
        ("utimensat", &[1, 3, 5, 8]),
        ("linkat", &[1, 2, 3, 4, 5, 6, 7, 8]),
        ("symlinkat", &[1]),
        ("fchownat", &[1]),
        ("syncfs", &[1]),
    ];
    // Into a DEST whose files are restored but whose hard links and symlink are not (a
    // decrypt stopped between them): the worker then makes no linkat, so these reach the
    // main thread's links, symlink, and directory modes and times.
    let links: &[(&str, &[u32])] = &[
        ("linkat", &[1, 2, 3]),
        ("symlinkat", &[1]),
        ("fchownat", &[1]),
        ("utimensat", &[1, 2, 3, 4, 5]),
        ("fchmod", &[1, 2, 3, 4]),
        ("fchown", &[1, 3]),
    ];
    let decrypt = |dest: &Path| {
        let o = envseal(&home)
            .args(["decrypt", "-q", "-o"])
            .arg(dest)
            .arg(&vault)
            .output()
            .unwrap();
        assert_eq!(code(&o), 0, "{}", stderr(&o));
    };
    let mut injected = 0;
    for (phase, plan) in [("fresh", fresh), ("links", links)] {
        for (sc, ns) in plan {
            for n in *ns {
                let dest = t.path().join(format!("out-{phase}-{sc}-{n}"));
                if phase == "links" {
                    decrypt(&dest);
                    for l in ["src/b/c/h-link", "src/a/h-twin", "src/g-link", "src/b/l"] {
                        fs::remove_file(dest.join(l)).unwrap();
                    }
                }
                let o = Command::new("strace")
                    .args(["-f", "-qq", "-o", "/dev/null", "-e"])
                    .arg(format!("inject={sc}:signal=KILL:when={n}"))
                    .arg(env!("CARGO_BIN_EXE_envseal"))
                    .args(["decrypt", "-q", "-j", "1", "-o"])
                    .arg(&dest)
                    .arg(&vault)
                    .env("ENVSEAL_HOME", &home)
                    .env_remove("ENVSEAL_KMS")
                    .env_remove("ENVSEAL_PASSPHRASE")
                    .output()
                    .unwrap();
                let killed = !o.status.success();
                injected += usize::from(killed);
                let case = format!("{phase}: SIGKILL at {sc} #{n} (killed: {killed})");
                let o = envseal(&home)
                    .args(["decrypt", "-q", "-o"])
                    .arg(&dest)
                    .arg(&vault)
                    .output()
                    .unwrap();
                assert_eq!(code(&o), 0, "{case}: rerun: {}", stderr(&o));
                assert_same_tree(&src, &dest.join("src"));
                assert_linked(&dest.join("src"));
                fs::remove_dir_all(&dest).unwrap();
            }
        }
    }
    eprintln!("{injected} injected kills");
    assert!(injected >= 65, "only {injected} injections killed a run");
}

/// Ctrl-C says once that the run was interrupted and how to resume; files merely
/// interrupted are not reported as failed.
#[test]
fn ctrl_c_reports_no_file_as_failed() {
    let fx = fixture();
    let dest = fx.t.path().join("out");
    let mut child = envseal(&fx.home)
        .args(["decrypt", "-j", "2", "-o"])
        .arg(&dest)
        .arg(&fx.vault)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_files(&mut child, &dest, 200);
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let o = child.wait_with_output().unwrap();
    let e = stderr(&o);
    assert_eq!(code(&o), 130, "{e}");
    assert!(e.contains("run the same command again"), "{e}");
    assert!(!e.to_lowercase().contains("failed"), "{e}");
    ok(&mut fx.decrypt(&dest));
    assert_same_tree(&fx.src, &dest.join("src"));
}
