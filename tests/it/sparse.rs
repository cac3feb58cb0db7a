//! Sparse files and disk images (docs/FORMAT.md §6.4): holes and zero extents are neither read,
//! sealed nor stored, and come back as the same hole map, through the real binary.

use crate::common;

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use common::tree::{code, data_map, decrypt_ok, du_kib, encrypt_ok, manifest_records, ok};
use common::{envseal, stderr, stdout};

/// Bytes of a deterministic pseudo-random stream (never a whole 4 KiB block of zeros).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8 | 1
        })
        .collect()
}

fn sparse_file(p: &Path, len: u64, data: &[(u64, usize)]) {
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(p)
        .unwrap();
    f.set_len(len).unwrap();
    for (i, &(off, n)) in data.iter().enumerate() {
        f.write_all_at(&noise(n, i as u64 + 1), off).unwrap();
    }
    f.sync_all().unwrap();
}

/// Whether this filesystem keeps holes (tmpfs and ext4 do; some do not).
fn holes_supported(dir: &Path) -> bool {
    let p = dir.join("probe");
    sparse_file(&p, 8 << 20, &[(0, 4096)]);
    let supported = fs::metadata(&p).unwrap().blocks() * 512 < 8 << 20;
    fs::remove_file(&p).unwrap();
    supported
}

/// The bytes of `p` in its data ranges (with the map, the whole content).
fn data_bytes(p: &Path) -> Vec<u8> {
    let f = File::open(p).unwrap();
    let mut out = Vec::new();
    for (a, b) in data_map(p) {
        let mut buf = vec![0u8; (b - a) as usize];
        f.read_exact_at(&mut buf, a).unwrap();
        out.extend(buf);
    }
    out
}

/// The case: a 4 GiB image holding 16 MiB of data makes a vault under 32 MiB and
/// restores with the same `SEEK_DATA` map, the same `du` and the same bytes.
#[test]
fn a_sparse_4gib_image_stores_its_data_only() {
    let t = tempfile::tempdir().unwrap();
    if !holes_supported(t.path()) {
        eprintln!("skipped: {} keeps no holes", t.path().display());
        return;
    }
    let home = t.path().join("home");
    let img = t.path().join("disk.img");
    // 16 MiB in 16 runs, some not aligned to a MiB, one at the very end.
    let mut data: Vec<(u64, usize)> = (0..15u64)
        .map(|i| (i * (256 << 20) + (i % 3) * 4096 * 7, 1 << 20))
        .collect();
    data.push(((4u64 << 30) - (1 << 20), 1 << 20));
    sparse_file(&img, 4 << 30, &data);
    let vault = t.path().join("vault");
    let o = encrypt_ok(&home, &img, &vault, &["--json"]);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["files"], 1, "{j}");
    assert_eq!(j["bytes"], 16u64 << 20, "{j}");
    assert_eq!(j["gap_bytes"], (4u64 << 30) - (16 << 20), "{j}");
    let kib = du_kib(&vault);
    assert!(kib < 32 * 1024, "vault of {kib} KiB");
    ok(envseal(&home).args(["verify", "-q"]).arg(&vault));
    ok(envseal(&home).args(["verify", "--deep", "-q"]).arg(&vault));

    // The manifest records the holes (authenticated: they are part of the body).
    let rec = manifest_records(&vault)
        .into_iter()
        .find(|r| r["type"] == "entry" && r["kind"] == "file")
        .unwrap();
    assert_eq!(rec["size"], 4u64 << 30);
    // Data at the start and at the end: 16 runs of data, 15 holes between them.
    assert_eq!(rec["holes"].as_array().unwrap().len(), 15, "{rec}");

    let dest = t.path().join("out");
    decrypt_ok(&home, &vault, &dest, &[]);
    let back = dest.join("disk.img");
    assert_eq!(fs::metadata(&back).unwrap().len(), 4 << 30);
    assert_eq!(data_map(&back), data_map(&img));
    assert_eq!(du_kib(&back), du_kib(&img));
    assert!(data_bytes(&back) == data_bytes(&img), "data differs");

    // Listing shows the file's length; the JSON says what is stored.
    let ls = ok(envseal(&home).args(["ls", "--json"]).arg(&vault));
    let ls: serde_json::Value = serde_json::from_str(stdout(&ls).trim()).unwrap();
    assert_eq!(ls["size"], 4u64 << 30);
    assert_eq!(ls["object"]["stored"], 16u64 << 20);

    // verify --source reads the data, and sees a byte written into a hole.
    ok(envseal(&home)
        .args(["verify", "-q", "--source"])
        .arg(&img)
        .arg(&vault));
    let f = OpenOptions::new().write(true).open(&img).unwrap();
    f.write_all_at(b"x", (3 << 30) + (128 << 20)).unwrap();
    drop(f);
    let o = envseal(&home)
        .args(["verify", "--source"])
        .arg(&img)
        .arg(&vault)
        .output()
        .unwrap();
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(
        stdout(&o).contains("hole or zeros") || stderr(&o).contains("hole or zeros"),
        "{} / {}",
        stdout(&o),
        stderr(&o)
    );
}

/// Allocated runs of zeros (as in a disk image) are recorded as zero extents: not stored,
/// restored allocated (`fallocate`) with the same `du`, never written.
#[test]
fn zero_blocks_become_zero_extents() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    let img = src.join("zeros.img");
    let mut bytes = noise(3 << 20, 5);
    bytes[(1 << 20) - 10..].fill(0); // zeros from just before 1 MiB to 3 MiB
    bytes.extend(vec![0u8; 4 << 20]);
    bytes.extend(noise(100_000, 6));
    fs::write(&img, &bytes).unwrap();
    // A small file of zeros stays a small file: zero extents are whole aligned MiBs.
    fs::write(src.join("small-zeros"), vec![0u8; 5000]).unwrap();
    let vault = t.path().join("vault");
    encrypt_ok(&home, &src, &vault, &[]);
    let rec = manifest_records(&vault)
        .into_iter()
        .find(|r| r["kind"] == "file" && r["size"] == bytes.len() as u64)
        .unwrap();
    assert_eq!(
        rec["zeros"],
        serde_json::json!([[1u64 << 20, 6u64 << 20]]),
        "{rec}"
    );
    assert!(rec.get("holes").is_none(), "{rec}");
    let kib = du_kib(&vault);
    assert!(kib < 2 * 1024, "vault of {kib} KiB");

    let dest = t.path().join("out");
    decrypt_ok(&home, &vault, &dest, &[]);
    assert!(fs::read(dest.join("src/zeros.img")).unwrap() == bytes);
    assert_eq!(du_kib(&dest.join("src/zeros.img")), du_kib(&img));
    assert_eq!(
        fs::read(dest.join("src/small-zeros")).unwrap(),
        vec![0u8; 5000]
    );

    // Decrypting again over it finds it already restored (resume), gaps included.
    let o = ok(envseal(&home)
        .args(["decrypt", "--json", "-q", "-o"])
        .arg(&dest)
        .arg(&vault));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["already_restored"], 2, "{j}");
}

/// Onto a device (here a file full of 0xFF), holes and zero extents are zeroed: the target
/// reads as the image.
#[test]
fn to_device_zeroes_the_gaps() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let img = t.path().join("img");
    sparse_file(&img, 6 << 20, &[(4096, 8192), (5 << 20, 4096)]);
    let f = OpenOptions::new().write(true).open(&img).unwrap();
    f.write_all_at(&vec![0u8; 2 << 20], 2 << 20).unwrap(); // allocated zeros
    drop(f);
    let vault = t.path().join("vault");
    encrypt_ok(&home, &img, &vault, &[]);
    let target = t.path().join("disk");
    fs::write(&target, vec![0xFFu8; 7 << 20]).unwrap();
    ok(envseal(&home)
        .args(["decrypt", "-q", "--only", "img", "--to-device"])
        .arg(&target)
        .arg(&vault));
    let got = fs::read(&target).unwrap();
    assert!(got[..6 << 20] == fs::read(&img).unwrap()[..], "image bytes");
    assert!(
        got[6 << 20..].iter().all(|&b| b == 0xFF),
        "the rest untouched"
    );
}

/// A resumed decrypt, `--only` and keyless verify all read a sparse file's record like any
/// other; a tampered manifest hole is caught by the MAC.
#[test]
fn a_changed_hole_map_fails_authentication() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let img = t.path().join("img");
    sparse_file(&img, 8 << 20, &[(0, 4096), (6 << 20, 4096)]);
    if fs::metadata(&img).unwrap().blocks() * 512 >= 8 << 20 {
        eprintln!("skipped: no holes on this filesystem");
        return;
    }
    let vault = t.path().join("vault");
    encrypt_ok(&home, &img, &vault, &[]);
    let m = vault.join("manifest.jsonl");
    let text = fs::read_to_string(&m).unwrap();
    assert!(text.contains("\"holes\":[[4096,6287360]"), "{text}");
    // The same stored bytes placed elsewhere: a valid layout, but not the authenticated one.
    let moved = text
        .replace("[4096,6287360]", "[4096,6283264]")
        .replace("[6295552,2093056]", "[6291456,2097152]");
    assert_ne!(moved, text);
    fs::write(&m, moved).unwrap();
    let o = envseal(&home)
        .args(["decrypt", "-q", "-o"])
        .arg(t.path().join("out"))
        .arg(&vault)
        .output()
        .unwrap();
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(!t.path().join("out/img").exists());
}

/// An unchanged sparse file is taken from the earlier vault by `encrypt --since` (its length,
/// not its stored bytes, is what the source is compared with), and restores whole.
#[test]
fn an_incremental_run_reuses_an_unchanged_sparse_file() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    sparse_file(&src.join("img"), 16 << 20, &[(0, 4096), (9 << 20, 4096)]);
    fs::write(src.join("note"), b"v1").unwrap();
    let v1 = t.path().join("v1");
    encrypt_ok(&home, &src, &v1, &[]);
    fs::write(src.join("note"), b"v2, longer").unwrap();
    let v2 = t.path().join("v2");
    let o = ok(envseal(&home)
        .args(["encrypt", "-q", "--json", "--since"])
        .arg(&v1)
        .arg("-o")
        .arg(&v2)
        .arg(&src));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["reused_files"], 1, "{j}");
    assert_eq!(j["encrypted_files"], 1, "{j}");
    let dest = t.path().join("out");
    decrypt_ok(&home, &v2, &dest, &[]);
    assert!(fs::read(dest.join("src/img")).unwrap() == fs::read(src.join("img")).unwrap());
    assert_eq!(data_map(&dest.join("src/img")), data_map(&src.join("img")));
}
