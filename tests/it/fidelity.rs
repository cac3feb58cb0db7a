//! What a disk holds beyond contents: owners, hard links, FIFOs and device nodes, through the
//! real binary. Owners and device nodes need root: those tests say so and return when not.

use crate::common;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::tree::{
    code, data_map, decrypt_ok, du_kib, encrypt_ok, gen_file, hash_file, ok, set_mtime, write,
};
use common::{envseal, stderr};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn mknod(p: &Path, kind: libc::mode_t, rdev: libc::dev_t) {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    let r = unsafe { libc::mknod(c.as_ptr(), kind | 0o644, rdev) };
    assert_eq!(
        r,
        0,
        "mknod {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

/// Everything `stat` says that a restore must keep, per path; hard links as the first path
/// (in sorted order) of their inode within the tree.
fn stat_tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), String> = BTreeMap::new();
    let mut paths = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = fs::symlink_metadata(&p).unwrap();
        if md.is_dir() {
            for d in fs::read_dir(&p).unwrap() {
                stack.push(d.unwrap().path());
            }
        }
        paths.push(p);
    }
    paths.sort();
    for p in paths {
        let md = fs::symlink_metadata(&p).unwrap();
        let rel = p.strip_prefix(root).unwrap().display().to_string();
        let ft = md.file_type();
        let content = if ft.is_file() {
            // Contents, the hole map and the blocks in use (`du`).
            format!(
                "{} map {:?} blocks {}",
                hash_file(&p),
                data_map(&p),
                md.blocks()
            )
        } else if ft.is_symlink() {
            fs::read_link(&p).unwrap().display().to_string()
        } else {
            String::new()
        };
        let group = if ft.is_file() && md.nlink() > 1 {
            inodes
                .entry((md.dev(), md.ino()))
                .or_insert_with(|| rel.clone())
                .clone()
        } else {
            String::new()
        };
        let mode = if ft.is_symlink() { 0 } else { md.mode() };
        // Every extended attribute (user.*, ACLs, capabilities), as `getfattr -d -m -`.
        let mut xattrs: Vec<(String, Vec<u8>)> = if ft.is_symlink() {
            Vec::new()
        } else {
            xattr::list(&p)
                .map(|names| {
                    names
                        .map(|n| {
                            let v = xattr::get(&p, &n).ok().flatten().unwrap_or_default();
                            (n.to_string_lossy().into_owned(), v)
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        xattrs.sort();
        let mtime = if ft.is_dir() && rel.is_empty() {
            0 // the restore root's own time is not part of the vault
        } else {
            md.mtime()
        };
        out.insert(
            rel,
            format!(
                "mode {mode:o} uid {} gid {} nlink {} rdev {:x} size {} mtime {mtime} links-with {group:?} xattrs {xattrs:?} {content}",
                md.uid(),
                md.gid(),
                if ft.is_dir() { 0 } else { md.nlink() },
                md.rdev(),
                if ft.is_dir() { 0 } else { md.len() },
            ),
        );
    }
    out
}

fn assert_same(src: &Path, restored: &Path) {
    let (a, b) = (stat_tree(src), stat_tree(restored));
    for (k, v) in &a {
        assert_eq!(Some(v), b.get(k), "{k}");
    }
    assert_eq!(a.len(), b.len(), "extra paths in the restore: {b:?}");
}

/// A tree with a hard-linked trio, a FIFO, and (as root) other owners, a setuid file of
/// another user and device nodes.
fn tree(parent: &Path) -> std::path::PathBuf {
    let src = parent.join("disk");
    fs::create_dir_all(src.join("etc/sub")).unwrap();
    write(&src.join("etc/passwd"), b"root:x:0:0\n");
    gen_file(&src.join("etc/big"), 3 << 20, 9);
    fs::hard_link(src.join("etc/big"), src.join("big-link")).unwrap();
    fs::hard_link(src.join("etc/big"), src.join("etc/sub/big-link2")).unwrap();
    write(&src.join("small"), b"tiny");
    // A sparse file: data, a hole, data, a hole to its end.
    let f = fs::File::create(src.join("sparse.img")).unwrap();
    f.set_len(64 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[7u8; 5000], 8192).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[9u8; 4096], 40 << 20).unwrap();
    drop(f);
    fs::hard_link(src.join("small"), src.join("small-link")).unwrap();
    let fifo = CString::new(src.join("etc/fifo").as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o640) }, 0);
    if is_root() {
        mknod(&src.join("etc/null"), libc::S_IFCHR, libc::makedev(1, 3));
        mknod(&src.join("etc/loop9"), libc::S_IFBLK, libc::makedev(7, 9));
        std::os::unix::fs::chown(src.join("etc/passwd"), Some(1234), Some(5678)).unwrap();
        std::os::unix::fs::lchown(src.join("etc/sub"), Some(4321), Some(8765)).unwrap();
        write(&src.join("setuid"), b"#!/bin/sh\n");
        std::os::unix::fs::chown(src.join("setuid"), Some(1234), Some(5678)).unwrap();
        fs::set_permissions(src.join("setuid"), fs::Permissions::from_mode(0o4755)).unwrap();
        // Extended attributes, an ACL and a capability where this system has them (the
        // comparison covers whatever was set; the other tests say when each is skipped).
        let _ = xattr::set(src.join("etc/passwd"), "user.origin", b"kept");
        let _ = Command::new("setfacl")
            .args(["-m", "u:1234:rw"])
            .arg(src.join("small"))
            .status();
        let _ = Command::new("setcap")
            .arg("cap_net_raw+ep")
            .arg(src.join("etc/big"))
            .status();
    }
    std::os::unix::fs::symlink("passwd", src.join("etc/link")).unwrap();
    for p in ["etc/passwd", "small", "etc/big", "etc/sub"] {
        set_mtime(&src.join(p), 1_600_000_000, 5);
    }
    src
}

#[test]
fn owners_links_fifos_and_devices_round_trip() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = tree(t.path());
    let vault = t.path().join("vault");
    let out = encrypt_ok(&home, &src, &vault, &["--json"]);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["hardlinks"], 3, "{j}");
    assert_eq!(j["files"], if is_root() { 5 } else { 4 }, "{j}");
    assert_eq!(j["specials"], if is_root() { 3 } else { 1 }, "{j}");
    // Stored once: the vault holds one copy of the 3 MiB file, not three, and none of the
    // sparse file's 64 MiB of holes.
    let kib = du_kib(&vault);
    assert!(kib < 4 * 1024, "vault of {kib} KiB");
    ok(envseal(&home).args(["verify", "--deep", "-q"]).arg(&vault));
    let ls = ok(envseal(&home).args(["ls"]).arg(&vault));
    let ls = String::from_utf8_lossy(&ls.stdout);
    assert!(ls.contains("hardlink") && ls.contains("fifo"), "{ls}");

    let dest = t.path().join("out");
    let out = decrypt_ok(&home, &vault, &dest, &["--json"]);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["hardlinks"], 3, "{j}");
    if is_root() {
        // As root: owners, setuid, device numbers and link counts, all as the source.
        assert_same(&src, &dest.join("disk"));
    } else {
        eprintln!("not root: owners and device nodes are not checked");
        let md = fs::metadata(dest.join("disk/big-link")).unwrap();
        assert_eq!(md.nlink(), 3);
    }
}

#[test]
fn no_owner_and_numeric_owner_as_root() {
    if !is_root() {
        eprintln!("not root: skipped (ownership can only be given away by root)");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = tree(t.path());
    let vault = t.path().join("vault");
    encrypt_ok(&home, &src, &vault, &[]);

    let dest = t.path().join("mine");
    decrypt_ok(&home, &vault, &dest, &["--no-owner"]);
    let md = fs::metadata(dest.join("disk/etc/passwd")).unwrap();
    assert_eq!((md.uid(), md.gid()), (0, 0));
    // Not given its owner: no setuid bit on a file of someone else's.
    let md = fs::metadata(dest.join("disk/setuid")).unwrap();
    assert_eq!(md.mode() & 0o7777, 0o755);

    // Names win over ids unless --numeric-owner: a vault recording user "root" as uid 1234
    // is restored to this machine's root. The recorded name comes from the source machine;
    // here uid 1234 has no name, so both ways give 1234.
    let dest = t.path().join("numeric");
    decrypt_ok(&home, &vault, &dest, &["--numeric-owner"]);
    let md = fs::metadata(dest.join("disk/etc/passwd")).unwrap();
    assert_eq!((md.uid(), md.gid()), (1234, 5678));
    let md = fs::metadata(dest.join("disk/setuid")).unwrap();
    assert_eq!(md.mode() & 0o7777, 0o4755);
}

#[test]
fn unprivileged_restore_keeps_contents_modes_times_and_drops_setuid() {
    if !is_root() || Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("needs root and setpriv to run decrypt as another user: skipped");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    fs::set_permissions(t.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let home = t.path().join("home");
    let src = tree(t.path());
    // Without the device nodes (only root can make them).
    fs::remove_file(src.join("etc/null")).unwrap();
    fs::remove_file(src.join("etc/loop9")).unwrap();
    let vault = t.path().join("vault");
    encrypt_ok(&home, &src, &vault, &[]);
    ok(Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(&home)
        .arg(&vault));
    let dest = t.path().join("out");
    fs::create_dir(&dest).unwrap();
    std::os::unix::fs::chown(&dest, Some(65534), Some(65534)).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_envseal"))
        .args(["decrypt", "-q"])
        .arg(&vault)
        .arg("-o")
        .arg(&dest)
        .env("ENVSEAL_HOME", &home)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let r = dest.join("disk");
    for p in ["etc/passwd", "setuid", "etc/big", "big-link", "etc/fifo"] {
        let md = fs::symlink_metadata(r.join(p)).unwrap();
        assert_eq!((md.uid(), md.gid()), (65534, 65534), "{p}");
    }
    let (a, b) = (
        fs::metadata(src.join("etc/passwd")).unwrap(),
        fs::metadata(r.join("etc/passwd")).unwrap(),
    );
    assert_eq!(
        (a.mode(), a.mtime(), a.mtime_nsec()),
        (b.mode(), b.mtime(), b.mtime_nsec())
    );
    assert_eq!(
        hash_file(&src.join("etc/big")),
        hash_file(&r.join("big-link"))
    );
    assert_eq!(fs::metadata(r.join("big-link")).unwrap().nlink(), 3);
    assert_eq!(
        fs::metadata(r.join("setuid")).unwrap().mode() & 0o7777,
        0o755
    );
}

#[test]
fn only_a_hard_link_restores_its_contents() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = tree(t.path());
    let vault = t.path().join("vault");
    encrypt_ok(&home, &src, &vault, &[]);
    let dest = t.path().join("out");
    ok(envseal(&home)
        .args([
            "decrypt",
            "-q",
            "--only",
            "disk/big-link",
            "--only",
            "disk/etc/sub",
        ])
        .arg(&vault)
        .arg("-o")
        .arg(&dest));
    let r = dest.join("disk");
    assert!(!r.join("etc/big").exists());
    assert_eq!(
        hash_file(&src.join("etc/big")),
        hash_file(&r.join("big-link"))
    );
    let (a, b) = (
        fs::metadata(r.join("big-link")).unwrap(),
        fs::metadata(r.join("etc/sub/big-link2")).unwrap(),
    );
    assert_eq!(
        (a.dev(), a.ino()),
        (b.dev(), b.ino()),
        "the two links share one inode"
    );
}

#[test]
fn a_socket_is_skipped_and_reported() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = t.path().join("s");
    fs::create_dir(&src).unwrap();
    write(&src.join("a"), b"a");
    let _sock = std::os::unix::net::UnixListener::bind(src.join("sock")).unwrap();
    let vault = t.path().join("vault");
    let out = envseal(&home)
        .args(["encrypt", "-o"])
        .arg(&vault)
        .arg(&src)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stderr(&out).contains("socket skipped"), "{}", stderr(&out));
}

/// `--overwrite` replaces files, links and nodes, never a directory: the message says so
/// instead of suggesting the flag already given.
#[test]
fn a_directory_in_the_way_is_named_as_such() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = tree(t.path());
    let vault = t.path().join("vault");
    encrypt_ok(&home, &src, &vault, &[]);
    let dest = t.path().join("out");
    for p in ["disk/etc/fifo", "disk/etc/link", "disk/small"] {
        fs::create_dir_all(dest.join(p)).unwrap();
    }
    let out = envseal(&home)
        .args(["decrypt", "-q", "--overwrite"])
        .arg(&vault)
        .arg("-o")
        .arg(&dest)
        .output()
        .unwrap();
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.matches("is a directory in the way").count(), 3, "{err}");
    assert!(!err.contains("use --overwrite"), "{err}");
}

/// Extended attributes round-trip (user.*, and as root a file capability), stored sealed: the
/// manifest holds neither names nor values in the clear. `--no-xattrs` leaves them out.
#[test]
fn extended_attributes_round_trip_sealed() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = t.path().join("x");
    fs::create_dir_all(src.join("d")).unwrap();
    write(&src.join("f"), b"data");
    write(&src.join("d/small"), b"s");
    let set = |p: &Path, n: &str, v: &[u8]| match xattr::set(p, n, v) {
        Ok(()) => true,
        Err(e) => {
            eprintln!(
                "{}: {n}: {e}: extended attributes not supported here, skipped",
                p.display()
            );
            false
        }
    };
    if !set(&src.join("f"), "user.secret-name", b"secret-value-1234") {
        return;
    }
    assert!(set(&src.join("d"), "user.on-a-dir", b"dir value"));
    assert!(set(&src.join("d/small"), "user.empty", b""));
    let cap = is_root()
        && Command::new("setcap")
            .args(["cap_net_raw+ep"])
            .arg(src.join("f"))
            .status()
            .is_ok_and(|s| s.success());
    if !cap {
        eprintln!("setcap not available (or not root): file capabilities not checked");
    }
    let attrs = |p: &Path| -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<_> = xattr::list(p)
            .unwrap()
            .map(|n| {
                let val = xattr::get(p, &n).unwrap().unwrap_or_default();
                (n.to_string_lossy().into_owned(), val)
            })
            .collect();
        v.sort();
        v
    };
    let vault = t.path().join("vault");
    encrypt_ok(&home, &src, &vault, &[]);
    let manifest = fs::read_to_string(vault.join("manifest.jsonl")).unwrap();
    assert!(
        !manifest.contains("secret") && !manifest.contains("on-a-dir"),
        "{manifest}"
    );
    ok(envseal(&home).args(["verify", "--deep", "-q"]).arg(&vault));
    let dest = t.path().join("out");
    decrypt_ok(&home, &vault, &dest, &[]);
    for p in ["f", "d", "d/small"] {
        assert_eq!(attrs(&src.join(p)), attrs(&dest.join("x").join(p)), "{p}");
    }
    if cap {
        assert!(attrs(&dest.join("x/f"))
            .iter()
            .any(|(n, _)| n == "security.capability"));
    }

    let bare = t.path().join("bare");
    decrypt_ok(&home, &vault, &bare, &["--no-xattrs"]);
    assert!(attrs(&bare.join("x/f")).is_empty());
    let plain = t.path().join("plain-vault");
    encrypt_ok(&home, &src, &plain, &["--no-xattrs"]);
    let manifest = fs::read_to_string(plain.join("manifest.jsonl")).unwrap();
    assert!(!manifest.contains("\"xattrs\""), "{manifest}");
}

/// POSIX ACLs (access and default) come back as `getfacl` shows them.
#[test]
fn posix_acls_round_trip() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = t.path().join("acl");
    fs::create_dir_all(src.join("d")).unwrap();
    write(&src.join("f"), b"f");
    let setfacl = |args: &[&str], p: &Path| {
        Command::new("setfacl")
            .args(args)
            .arg(p)
            .status()
            .is_ok_and(|s| s.success())
    };
    if !setfacl(&["-m", "u:1234:rw,g:5678:r"], &src.join("f")) {
        eprintln!("setfacl not available or ACLs not supported here: skipped");
        return;
    }
    assert!(setfacl(&["-d", "-m", "u:1234:rwx"], &src.join("d")));
    let getfacl = |p: &Path| {
        let o = ok(Command::new("getfacl").args(["-n", "--omit-header"]).arg(p));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let vault = t.path().join("vault");
    encrypt_ok(&home, &src, &vault, &[]);
    let dest = t.path().join("out");
    decrypt_ok(&home, &vault, &dest, &[]);
    for p in ["f", "d"] {
        let (a, b) = (getfacl(&src.join(p)), getfacl(&dest.join("acl").join(p)));
        assert!(a.contains("1234"), "{a}");
        assert_eq!(a, b, "{p}");
    }
}
