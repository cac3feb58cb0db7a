//! DEST under attack and under stress: a directory inside DEST swapped for a symlink to an
//! outside directory (`renameat2(RENAME_EXCHANGE)` in a tight loop, as any user who owns a
//! directory under DEST can do) while decrypt runs never leads it outside DEST: nothing
//! outside is created, changed or written, whatever the exit code. Extended attributes of
//! symlinks are restored on the link itself. A full DEST stops the run with one message.

use crate::common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use common::tree::{assert_same_tree, chmod, code, gen_file, hash_file, ok, set_mtime};
use common::{envseal, stderr, Tmpfs};

/// Everything about every path below `root` (itself included) that a write, chmod, chown,
/// utimes or xattr change would alter: mode, owner, size, inode, mtime, ctime and contents.
fn outside_state(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(p) = todo.pop() {
        let md = fs::symlink_metadata(&p).unwrap();
        let mut s = format!(
            "mode {:o} owner {}:{} size {} ino {} mtime {}.{} ctime {}.{}",
            md.mode(),
            md.uid(),
            md.gid(),
            md.size(),
            md.ino(),
            md.mtime(),
            md.mtime_nsec(),
            md.ctime(),
            md.ctime_nsec()
        );
        if md.is_dir() {
            for d in fs::read_dir(&p).unwrap() {
                todo.push(d.unwrap().path());
            }
        } else if md.is_file() {
            s += &format!(" blake3 {}", hash_file(&p));
        }
        out.insert(p, s);
    }
    out
}

/// A source whose directory `pub` (mode 0777, as a user's shared directory) holds a few
/// hundred small files and two subdirectories.
fn source(root: &Path) -> PathBuf {
    let src = root.join("src");
    for i in 0..240u64 {
        let sub = ["", "sub1/", "sub2/"][(i % 3) as usize];
        gen_file(&src.join(format!("pub/{sub}f{i:04}")), 500 + i * 7, i);
    }
    for i in 0..40u64 {
        gen_file(&src.join(format!("other/g{i:03}")), 300, 1000 + i);
    }
    for d in ["pub/sub1", "pub/sub2", "pub"] {
        chmod(&src.join(d), 0o777);
        set_mtime(&src.join(d), 1_000_000_000, 7);
    }
    src
}

/// An outside directory an attacker would like written: root's, 0700, holding names the
/// vault restores too.
fn outside(root: &Path) -> PathBuf {
    let o = root.join("outside");
    fs::create_dir_all(o.join("sub1")).unwrap();
    fs::write(o.join("f0000"), b"outside's own").unwrap();
    fs::write(o.join("sub1/f0001"), b"outside's own too").unwrap();
    for d in ["sub1", ""] {
        chmod(&o.join(d), 0o700);
        set_mtime(&o.join(d), 1_500_000_000, 0);
    }
    o
}

/// Swaps `dir` and a symlink to `target` beside it, back and forth, until `stop`; counts
/// the swaps made.
fn racer(dir: PathBuf, target: PathBuf, stop: &AtomicBool, swaps: &AtomicU64) {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    let link = dir.with_file_name("lnk");
    while !stop.load(Ordering::Relaxed) && !dir.exists() {
        std::thread::yield_now();
    }
    if stop.load(Ordering::Relaxed) {
        return;
    }
    let _ = std::os::unix::fs::symlink(&target, &link);
    while !stop.load(Ordering::Relaxed) {
        if renameat_with(CWD, &dir, CWD, &link, RenameFlags::EXCHANGE).is_ok() {
            swaps.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[test]
fn a_directory_swapped_for_a_symlink_never_leads_decrypt_outside_dest() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = source(t.path());
    let vault = t.path().join("vault");
    ok(envseal(&home)
        .args(["encrypt", "-q", "-o"])
        .arg(&vault)
        .arg(&src));
    let outside = outside(t.path());
    let before = outside_state(&outside);
    let mut swapped_runs = 0;
    for run in 0..15 {
        let dest = t.path().join(format!("out{run}"));
        // The swapped directory: `pub` itself, or one below it.
        let victim = match run % 2 {
            0 => dest.join("src/pub"),
            _ => dest.join("src/pub/sub1"),
        };
        let mut cmd = envseal(&home);
        cmd.args(["decrypt", "-q", "--no-sync", "-j", "2", "-o"])
            .arg(&dest)
            .arg(&vault)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if run % 3 == 2 {
            cmd.arg("--overwrite");
        }
        let stop = AtomicBool::new(false);
        let swaps = AtomicU64::new(0);
        let status = std::thread::scope(|s| {
            s.spawn(|| racer(victim.clone(), outside.clone(), &stop, &swaps));
            let st = cmd.status().unwrap();
            stop.store(true, Ordering::Relaxed);
            st
        });
        let n = swaps.load(Ordering::Relaxed);
        swapped_runs += usize::from(n > 0);
        let after = outside_state(&outside);
        assert_eq!(
            before,
            after,
            "run {run} ({status}, {n} swaps of {}): the outside directory changed",
            victim.display()
        );
        fs::remove_dir_all(&dest).unwrap();
    }
    assert!(
        swapped_runs >= 10,
        "the racer swapped during only {swapped_runs} of 15 runs"
    );
}

/// Without a race the same tree restores whole (the directory handles change nothing).
#[test]
fn the_raced_tree_restores_whole_without_a_racer() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = source(t.path());
    let vault = t.path().join("vault");
    ok(envseal(&home)
        .args(["encrypt", "-q", "-o"])
        .arg(&vault)
        .arg(&src));
    let dest = t.path().join("out");
    ok(envseal(&home)
        .args(["decrypt", "-q", "-o"])
        .arg(&dest)
        .arg(&vault));
    assert_same_tree(&src, &dest.join("src"));
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A `trusted.*` attribute of a symlink (root's to set) is restored on the link itself, not
/// on its target; a file's `user.*` attribute beside it too.
#[test]
fn xattrs_of_a_symlink_round_trip_on_the_link_itself() {
    if !is_root() {
        eprintln!("NOTICE: not root; skipping the symlink xattr test (trusted.* needs root)");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = t.path().join("src");
    gen_file(&src.join("f"), 100, 1);
    std::os::unix::fs::symlink("f", src.join("l")).unwrap();
    // The xattr crate acts on a link itself (lsetxattr), never on its target.
    xattr::set(src.join("l"), "trusted.envseal-test", b"on the link").unwrap();
    xattr::set(src.join("f"), "user.envseal-test", b"on the file").unwrap();
    let vault = t.path().join("vault");
    ok(envseal(&home)
        .args(["encrypt", "-q", "-o"])
        .arg(&vault)
        .arg(&src));
    let dest = t.path().join("out");
    ok(envseal(&home)
        .args(["decrypt", "-q", "-o"])
        .arg(&dest)
        .arg(&vault));
    let l = dest.join("src/l");
    assert_eq!(
        xattr::get(&l, "trusted.envseal-test").unwrap().as_deref(),
        Some(&b"on the link"[..])
    );
    let f = dest.join("src/f");
    assert_eq!(xattr::get(&f, "trusted.envseal-test").unwrap(), None);
    assert_eq!(
        xattr::get(&f, "user.envseal-test").unwrap().as_deref(),
        Some(&b"on the file"[..])
    );
    assert_same_tree(&src, &dest.join("src"));
}

/// Decrypt onto a full disk stops at the first ENOSPC with one message naming what to do,
/// not a line per file; after space is freed the same command finishes.
#[test]
fn a_full_dest_stops_with_one_message() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = t.path().join("src");
    for i in 0..300u64 {
        gen_file(&src.join(format!("d{}/f{i:04}", i % 4)), 30_000, i);
    }
    let vault = t.path().join("vault");
    ok(envseal(&home)
        .args(["encrypt", "-q", "-o"])
        .arg(&vault)
        .arg(&src));
    let Some(fs) = Tmpfs::mount(&t.path().join("dest"), "2m") else {
        eprintln!("NOTICE: cannot mount a tmpfs (not root?); skipping the ENOSPC test");
        return;
    };
    let dest = fs.0.join("out");
    let cmd = || {
        let mut c = envseal(&home);
        c.args(["decrypt", "-o"]).arg(&dest).arg(&vault);
        c
    };
    let o = cmd().output().unwrap();
    let e = stderr(&o);
    assert_eq!(code(&o), 1, "{e}");
    assert_eq!(e.matches("no space left").count(), 1, "{e}");
    assert!(e.contains("free some space"), "{e}");
    assert!(e.contains("run the same command again"), "{e}");
    assert!(!e.contains("failed "), "a line per file: {e}");
    fs.resize("64m");
    ok(&mut cmd());
    assert_same_tree(&src, &dest.join("src"));
}
