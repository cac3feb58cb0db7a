//! Byte-identical round trips through the real binary: the fixture tree, a generated tree with
//! every segment-boundary size and one file of more than 300 MiB, single files, disk images and
//! a loop block device. Contents, modes, mtimes (ns), symlinks and empty directories.

use crate::common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::tree::{
    assert_same_tree, chmod, code, fixture_copy, gen_file, hash_file, ok, set_mtime, write,
};
use common::{envseal, stderr};

#[test]
fn fixture_tree_round_trips_byte_identical() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = fixture_copy(&t.path().join("src"));
    // Modes beyond 644/755: a private file, a group-only directory, a read-only file.
    chmod(&src.join("one-byte.txt"), 0o600);
    chmod(&src.join("with space"), 0o750);
    chmod(&src.join("seg-exact.bin"), 0o444);
    for p in ["one-byte.txt", "with space", "seg-exact.bin"] {
        set_mtime(&src.join(p), 1_500_000_000, 1);
    }
    // setuid and sticky bits, and a time before 1970.
    chmod(&src.join("run.sh"), 0o4755);
    chmod(&src.join("deep/a"), 0o1777);
    set_mtime(&src.join("seg-minus-1.bin"), -315_619_200, 500_000_000);
    set_mtime(&src, 1_650_000_000, 987_654_321);
    let vault = t.path().join("vault");
    ok(envseal(&home)
        .args(["encrypt", "--segment-size", "4KiB", "-q", "-o"])
        .arg(&vault)
        .arg(&src));
    let out = t.path().join("out");
    ok(envseal(&home)
        .arg("decrypt")
        .arg(&vault)
        .arg("-o")
        .arg(&out));
    assert_same_tree(&src, &out.join("tree"));
    // The fixture's special cases really are there (so the comparison above means something).
    let r = out.join("tree");
    assert!(r.join("empty-dir").is_dir());
    assert_eq!(
        fs::read_link(r.join("dangling-link")).unwrap(),
        Path::new("does-not-exist")
    );
    assert_eq!(fs::metadata(r.join("empty.txt")).unwrap().len(), 0);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(r.join("run.sh")).unwrap().permissions().mode() & 0o111,
        0o111
    );
    // Verify agrees, keyless and deep.
    ok(envseal(&home).arg("verify").arg(&vault));
    ok(envseal(&home).args(["verify", "--deep"]).arg(&vault));
}

/// Files of 0, 1, S−1, S, S+1, 3·S bytes and one of 300 MiB + 17 with the default 1 MiB
/// segment; compared by streaming BLAKE3.
#[test]
fn generated_tree_with_boundary_sizes_and_a_300_mib_file() {
    const S: u64 = 1 << 20;
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = t.path().join("gen");
    let sizes = [
        ("zero", 0),
        ("one", 1),
        ("s-minus-1", S - 1),
        ("s", S),
        ("s-plus-1", S + 1),
        ("three-s", 3 * S),
    ];
    for (i, (name, size)) in sizes.iter().enumerate() {
        let p = src.join("sizes").join(name);
        gen_file(&p, *size, i as u64 + 1);
        set_mtime(&p, 1_700_000_000 + i as i64, 100_000_000 + i as u32 * 7);
    }
    let big = src.join("big.img");
    gen_file(&big, 300 * S + 17, 99);
    chmod(&big, 0o640);
    set_mtime(&big, 1_234_567_890, 999_999_999);
    set_mtime(&src.join("sizes"), 1_111_111_111, 42);
    let vault = t.path().join("vault");
    ok(envseal(&home)
        .args(["encrypt", "-q", "-o"])
        .arg(&vault)
        .arg(&src));
    let out = t.path().join("out");
    ok(envseal(&home)
        .args(["decrypt", "-q", "-o"])
        .arg(&out)
        .arg(&vault));
    assert_same_tree(&src, &out.join("gen"));
    assert_eq!(
        fs::metadata(out.join("gen/big.img")).unwrap().len(),
        300 * S + 17
    );
}

#[test]
fn single_file_source_restores_under_its_name() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let f = t.path().join("notes.txt");
    write(&f, b"just one file\n");
    chmod(&f, 0o755);
    set_mtime(&f, 1_600_000_001, 5);
    let vault = t.path().join("vault");
    ok(envseal(&home)
        .args(["encrypt", "-q", "-o"])
        .arg(&vault)
        .arg(&f));
    let out = t.path().join("out");
    ok(envseal(&home)
        .args(["decrypt", "-q", "-o"])
        .arg(&out)
        .arg(&vault));
    let names: Vec<_> = fs::read_dir(&out)
        .unwrap()
        .map(|d| d.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("notes.txt")]);
    let mut a = common::tree::snapshot(&f);
    let mut b = common::tree::snapshot(&out.join("notes.txt"));
    assert_eq!(a.remove(&Vec::new()), b.remove(&Vec::new()));
}

/// A disk image (a regular file with holes and a partition-table-like header) round-trips.
#[test]
fn disk_image_file_round_trips() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let img = make_image(t.path(), "disk.img", 24 << 20);
    let vault = t.path().join("vault");
    ok(envseal(&home)
        .args(["encrypt", "-q", "-o"])
        .arg(&vault)
        .arg(&img));
    let out = t.path().join("out");
    ok(envseal(&home)
        .args(["decrypt", "-q", "-o"])
        .arg(&out)
        .arg(&vault));
    assert_eq!(hash_file(&out.join("disk.img")), hash_file(&img));
    assert_eq!(fs::metadata(out.join("disk.img")).unwrap().len(), 24 << 20);
}

/// A loop block device is read to its full size (stat says 0) and restores as an image file.
#[test]
fn loop_block_device_restores_as_image() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let img = make_image(t.path(), "backing.img", 8 << 20);
    let Some(dev) = LoopDevice::attach(&img) else {
        return;
    };
    let vault = t.path().join("vault");
    let o = envseal(&home)
        .args(["encrypt", "-q", "-o"])
        .arg(&vault)
        .arg(&dev.path)
        .output()
        .unwrap();
    assert_eq!(
        code(&o),
        0,
        "encrypt {}: {}",
        dev.path.display(),
        stderr(&o)
    );
    let out = t.path().join("out");
    ok(envseal(&home)
        .args(["decrypt", "-q", "-o"])
        .arg(&out)
        .arg(&vault));
    let restored = out.join(dev.path.file_name().unwrap());
    let md = fs::symlink_metadata(&restored).unwrap();
    assert!(md.is_file(), "a block device restores as a regular file");
    assert_eq!(md.len(), 8 << 20);
    assert_eq!(hash_file(&restored), hash_file(&img));
}

/// A sparse image with some data at the start, the middle and the end.
fn make_image(dir: &Path, name: &str, size: u64) -> PathBuf {
    use std::os::unix::fs::FileExt;
    let p = dir.join(name);
    let f = fs::File::create(&p).unwrap();
    f.set_len(size).unwrap();
    let mut mbr = vec![0u8; 512];
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    mbr[..10].copy_from_slice(b"\xeb\x3c\x90envseal");
    f.write_all_at(&mbr, 0).unwrap();
    let chunk: Vec<u8> = (0..300_000u32).map(|i| (i * 31 % 251) as u8).collect();
    f.write_all_at(&chunk, size / 2 - 1000).unwrap();
    f.write_all_at(&chunk[..4096], size - 4096).unwrap();
    p
}

/// A loop device over an image file, detached on drop.
struct LoopDevice {
    path: PathBuf,
}

impl LoopDevice {
    fn attach(img: &Path) -> Option<LoopDevice> {
        let o = match Command::new("losetup")
            .args(["-f", "--show"])
            .arg(img)
            .output()
        {
            Ok(o) => o,
            Err(e) => {
                eprintln!("skipping: cannot run losetup: {e}");
                return None;
            }
        };
        if !o.status.success() {
            eprintln!(
                "skipping: losetup refused (no loop devices here?): {}",
                stderr(&o)
            );
            return None;
        }
        let path = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
        Some(LoopDevice { path })
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.path).status();
    }
}
