//! Test trees: generating files fast, snapshotting a tree (content digests, modes, mtimes,
//! link targets) to compare a restore with its source, and poking at vault files.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// What one path of a tree is, as compared between a source and its restore.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    File { size: u64, blake3: String },
    Dir,
    Symlink(PathBuf),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub kind: Kind,
    /// Permission bits (incl. setuid/setgid/sticky); symlinks: 0 (Linux ignores their mode).
    pub mode: u32,
    pub mtime: i64,
    pub mtime_nsec: i64,
}

/// Every path under `root` (relative, as bytes; "" is the root itself), symlinks not followed.
pub fn snapshot(root: &Path) -> BTreeMap<Vec<u8>, Node> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, p: &Path, out: &mut BTreeMap<Vec<u8>, Node>) {
    let md = fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let rel = p
        .strip_prefix(root)
        .unwrap()
        .as_os_str()
        .as_bytes()
        .to_vec();
    let ft = md.file_type();
    let kind = if ft.is_symlink() {
        Kind::Symlink(fs::read_link(p).unwrap())
    } else if ft.is_dir() {
        let mut names: Vec<_> = fs::read_dir(p)
            .unwrap()
            .map(|d| d.unwrap().path())
            .collect();
        names.sort();
        for n in names {
            walk(root, &n, out);
        }
        Kind::Dir
    } else {
        Kind::File {
            size: md.len(),
            blake3: hash_file(p),
        }
    };
    let mode = if ft.is_symlink() {
        0
    } else {
        md.mode() & 0o7777
    };
    out.insert(
        rel,
        Node {
            kind,
            mode,
            mtime: md.mtime(),
            mtime_nsec: md.mtime_nsec(),
        },
    );
}

/// Asserts that two trees are identical: same paths, contents, modes, mtimes (to the
/// nanosecond) and link targets.
pub fn assert_same_tree(src: &Path, restored: &Path) {
    let a = snapshot(src);
    let b = snapshot(restored);
    let show = |k: &Vec<u8>| String::from_utf8_lossy(k).into_owned();
    let only_a: Vec<_> = a.keys().filter(|k| !b.contains_key(*k)).map(show).collect();
    let only_b: Vec<_> = b.keys().filter(|k| !a.contains_key(*k)).map(show).collect();
    assert!(
        only_a.is_empty() && only_b.is_empty(),
        "paths differ: missing from restore {only_a:?}, extra in restore {only_b:?}"
    );
    for (k, na) in &a {
        assert_eq!(na, &b[k], "{:?} differs", show(k));
    }
}

/// Streaming BLAKE3 of a file, hex.
pub fn hash_file(p: &Path) -> String {
    let mut f = File::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize().to_hex().to_string()
}

/// A deterministic pseudo-random 1 MiB block (xorshift) for `seed`.
fn block(seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(1 << 20);
    while v.len() < 1 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v
}

/// Writes `size` bytes of pseudo-random data: one random 1 MiB block repeated, with the block
/// index mixed into its first bytes so that no two blocks (and so no two segments) are equal.
pub fn gen_file(path: &Path, size: u64, seed: u64) {
    if let Some(d) = path.parent() {
        fs::create_dir_all(d).unwrap();
    }
    let base = block(seed);
    let mut f = File::create(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut buf = base.clone();
    let mut left = size;
    let mut i = 0u64;
    while left > 0 {
        buf[..8].copy_from_slice(&(i ^ seed.rotate_left(17)).to_le_bytes());
        buf[4096..4104].copy_from_slice(&i.to_be_bytes());
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
        i += 1;
    }
}

pub fn write(path: &Path, data: &[u8]) {
    if let Some(d) = path.parent() {
        fs::create_dir_all(d).unwrap();
    }
    fs::write(path, data).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// Sets a path's mtime (nanoseconds kept) without following a symlink.
pub fn set_mtime(path: &Path, secs: i64, nsec: u32) {
    let t = filetime::FileTime::from_unix_time(secs, nsec);
    filetime::set_symlink_file_times(path, t, t).unwrap();
}

pub fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// `cp -a`: copies a tree with links, modes and times.
pub fn copy_tree(src: &Path, dst: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(src)
        .arg(dst)
        .status()
        .unwrap();
    assert!(st.success(), "cp -a {} {}", src.display(), dst.display());
}

/// The fixture tree copied to `dst` (named `tree`), with the empty directory git cannot keep.
pub fn fixture_copy(dst_parent: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tree");
    fs::create_dir_all(dst_parent).unwrap();
    let dst = dst_parent.join("tree");
    copy_tree(&src, &dst);
    fs::create_dir(dst.join("empty-dir")).unwrap();
    set_mtime(&dst.join("empty-dir"), 1_600_000_000, 123_456_789);
    // Restore the root's mtime last: creating empty-dir changed it.
    set_mtime(&dst, 1_650_000_000, 987_654_321);
    dst
}

/// Flips one byte of a file in place.
pub fn flip_byte(path: &Path, offset: u64) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= 0x01;
    f.write_all_at(&b, offset).unwrap();
}

/// Lines of `ENVSEAL_HOME/keystore/audit.jsonl` whose op is `op` and that succeeded.
pub fn audit_count(home: &Path, op: &str) -> usize {
    let p = home.join("keystore/audit.jsonl");
    let text = fs::read_to_string(&p).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["op"] == op && v["ok"] == true)
        .count()
}

/// The manifest's records, parsed.
pub fn manifest_records(vault: &Path) -> Vec<Value> {
    fs::read_to_string(vault.join("manifest.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Clear path -> (object path relative to the vault, offset of the file's record in it) for
/// every file entry.
pub fn objects_by_path(vault: &Path) -> BTreeMap<String, (String, u64)> {
    let recs = manifest_records(vault);
    let objects: Vec<String> = recs
        .iter()
        .filter(|r| r["type"] == "object")
        .map(|r| {
            let id = r["id"].as_str().unwrap();
            format!("objects/{}/{id}", &id[..2])
        })
        .collect();
    recs.iter()
        .filter(|r| r["type"] == "entry" && r["kind"] == "file")
        // Non-UTF-8 paths are stored as `path_b64`; tests look up UTF-8 ones.
        .filter_map(|r| {
            Some((
                r["path"].as_str()?.to_string(),
                (
                    objects[r["obj"].as_u64()? as usize].clone(),
                    r["off"].as_u64()?,
                ),
            ))
        })
        .collect()
}

/// Every file under `dir` (recursively), relative paths.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir(dir) else {
        return out;
    };
    for d in rd {
        let p = d.unwrap().path();
        if fs::symlink_metadata(&p).unwrap().is_dir() {
            out.extend(
                files_under(&p)
                    .into_iter()
                    .map(|q| Path::new(p.file_name().unwrap()).join(q)),
            );
        } else {
            out.push(PathBuf::from(p.file_name().unwrap()));
        }
    }
    out.sort();
    out
}

/// Names under `dir` (recursively) that look like decrypt's temporary files.
pub fn temp_files(dir: &Path) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|p| {
            let n = p.file_name().map(OsStr::as_bytes).unwrap_or_default();
            n.ends_with(b".tmp") || n.windows(7).any(|w| w == b"envseal")
        })
        .collect()
}

/// Copies a vault directory (plain files) so each tamper case starts from a clean copy.
pub fn copy_vault(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).unwrap();
    for d in fs::read_dir(src).unwrap() {
        let d = d.unwrap();
        let to = dst.join(d.file_name());
        if d.file_type().unwrap().is_dir() {
            copy_vault(&d.path(), &to);
        } else {
            fs::copy(d.path(), to).unwrap();
        }
    }
}

/// Runs a command that must exit 0; panics with its stderr otherwise.
pub fn ok(cmd: &mut Command) -> std::process::Output {
    let o = cmd.output().expect("failed to start command");
    assert!(
        o.status.success(),
        "{cmd:?} exited {:?}: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// The exit code (panics if killed by a signal).
pub fn code(o: &std::process::Output) -> i32 {
    o.status.code().expect("killed by a signal")
}

/// The data ranges `SEEK_DATA`/`SEEK_HOLE` report: the file's hole map.
pub fn data_map(p: &Path) -> Vec<(u64, u64)> {
    let f = File::open(p).unwrap();
    let len = f.metadata().unwrap().len() as i64;
    let mut out = Vec::new();
    let mut at = 0i64;
    while at < len {
        // SAFETY: lseek on an open descriptor.
        let d = unsafe { libc::lseek(f.as_raw_fd(), at, libc::SEEK_DATA) };
        if d < 0 {
            break;
        }
        // SAFETY: as above.
        let h = unsafe { libc::lseek(f.as_raw_fd(), d, libc::SEEK_HOLE) };
        out.push((d as u64, h as u64));
        at = h;
    }
    out
}

/// `du -sk`: the KiB a path occupies on disk.
pub fn du_kib(p: &Path) -> u64 {
    let o = ok(Command::new("du").arg("-sk").arg(p));
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// `envseal encrypt -q [extra...] -o VAULT SRC`, which must succeed.
pub fn encrypt_ok(home: &Path, src: &Path, vault: &Path, extra: &[&str]) -> std::process::Output {
    ok(super::envseal(home)
        .args(["encrypt", "-q"])
        .args(extra)
        .arg("-o")
        .arg(vault)
        .arg(src))
}

/// `envseal decrypt -q [extra...] VAULT -o DEST`, which must succeed.
pub fn decrypt_ok(home: &Path, vault: &Path, dest: &Path, extra: &[&str]) -> std::process::Output {
    ok(super::envseal(home)
        .args(["decrypt", "-q"])
        .args(extra)
        .arg(vault)
        .arg("-o")
        .arg(dest))
}

/// Bytes of a local vault's objects.
pub fn objects_bytes(vault: &Path) -> u64 {
    files_under(&vault.join("objects"))
        .iter()
        .map(|f| fs::metadata(vault.join("objects").join(f)).unwrap().len())
        .sum()
}

/// `verify`, `verify --deep` and `decrypt` of a local vault all succeed (no flag: the records
/// say how they are stored), and `out` then holds `src`'s tree under its base name.
pub fn assert_round_trip(home: &Path, src: &Path, vault: &Path, out: &Path) {
    ok(super::envseal(home).args(["verify", "-q"]).arg(vault));
    ok(super::envseal(home)
        .args(["verify", "--deep", "-q"])
        .arg(vault));
    ok(super::envseal(home)
        .args(["decrypt", "-q", "-o"])
        .arg(out)
        .arg(vault));
    assert_same_tree(src, &out.join(src.file_name().unwrap()));
}
