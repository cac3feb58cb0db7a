//! Packs: small files share objects, each keeping its own record. A tree of tiny files makes a
//! handful of objects and under 1 KiB of disk per file; `decrypt --only` reads only the
//! records it restores; files at and around the threshold round-trip through the CLI.

use crate::common;

use std::fs;
use std::os::unix::fs::MetadataExt;

use common::tree::{assert_same_tree, files_under, gen_file, objects_by_path, ok, write};
use common::{envseal, stdout};
use serde_json::Value;

#[test]
fn tiny_files_share_a_few_objects_and_little_disk() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = t.path().join("tiny");
    let n = 3000u64;
    for i in 0..n {
        let body: Vec<u8> = (0..(i % 64)).map(|b| (b * 7 + i) as u8).collect();
        write(&src.join(format!("d{:02}/f{i:05}", i % 30)), &body);
    }
    let vault = t.path().join("vault");
    ok(envseal(&home)
        .args(["encrypt", "-q", "-o"])
        .arg(&vault)
        .arg(&src));
    let objects = files_under(&vault.join("objects"));
    assert_eq!(
        objects.len(),
        1,
        "3,000 tiny files in one pack: {objects:?}"
    );
    // Disk use of the whole vault (blocks allocated, as du counts), per file.
    let mut blocks = 0u64;
    for f in files_under(&vault) {
        blocks += fs::symlink_metadata(vault.join(f)).unwrap().blocks();
    }
    let per_file = blocks * 512 / n;
    assert!(per_file <= 1024, "{per_file} bytes of disk per file");
    ok(envseal(&home).args(["verify", "-q"]).arg(&vault));
    let out = t.path().join("out");
    ok(envseal(&home)
        .args(["decrypt", "-q", "-o"])
        .arg(&out)
        .arg(&vault));
    assert_same_tree(&src, &out.join("tiny"));
}

#[test]
fn only_reads_the_records_it_restores() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = t.path().join("src");
    for i in 0..200u64 {
        gen_file(&src.join(format!("f{i:03}")), 10_000 + i, i);
    }
    let vault = t.path().join("vault");
    ok(envseal(&home)
        .args(["encrypt", "-q", "-o"])
        .arg(&vault)
        .arg(&src));
    let (obj, _) = objects_by_path(&vault)["src/f123"].clone();
    let pack = fs::metadata(vault.join(obj)).unwrap().len();
    let out = t.path().join("out");
    let o = ok(envseal(&home)
        .args(["decrypt", "-q", "--json", "--only", "src/f123", "-o"])
        .arg(&out)
        .arg(&vault));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["files"], 1);
    assert_eq!(v["synced"], true);
    // One record: header, 10,123 bytes, one tag (1 MiB segments).
    let record = 136 + 10_123 + 16;
    assert_eq!(v["vault_bytes_read"], record, "{v}");
    assert!(pack > 100 * record, "the pack holds the other files too");
    assert_eq!(
        fs::read(out.join("src/f123")).unwrap(),
        fs::read(src.join("f123")).unwrap()
    );
}

#[test]
fn files_around_the_pack_threshold_round_trip() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = t.path().join("src");
    let th = 64 * 1024u64;
    for (i, size) in [0, 1, th - 1, th, th + 1, 3 * th, 5]
        .into_iter()
        .enumerate()
    {
        gen_file(&src.join(format!("f{i}")), size, i as u64);
    }
    let vault = t.path().join("vault");
    ok(envseal(&home)
        .args(["encrypt", "-q", "--segment-size", "16KiB"])
        .args(["--pack-threshold", "64KiB", "-o"])
        .arg(&vault)
        .arg(&src));
    let objs = objects_by_path(&vault);
    let pack = &objs["src/f0"].0;
    for (f, packed) in [
        ("f0", true),
        ("f1", true),
        ("f2", true),
        ("f3", false),
        ("f4", false),
        ("f5", false),
        ("f6", true),
    ] {
        assert_eq!(&objs[&format!("src/{f}")].0 == pack, packed, "{f}");
    }
    ok(envseal(&home).args(["verify", "-q", "--deep"]).arg(&vault));
    let out = t.path().join("out");
    ok(envseal(&home)
        .args(["decrypt", "-q", "-o"])
        .arg(&out)
        .arg(&vault));
    assert_same_tree(&src, &out.join("src"));
}
