//! `verify --source`: the vault against the live tree by keyed plaintext digests, nothing
//! decrypted (one KMS Decrypt per batch, counted); changed, bitrot, missing and extra paths
//! reported by path, exit 0 only when they match.

use crate::common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::tree::{audit_count, code, flip_byte, gen_file, manifest_records, ok, write};
use common::{envseal, stderr, stdout};

fn verify_source(home: &Path, src: &Path, vault: &Path) -> (i32, serde_json::Value, String) {
    let o = envseal(home)
        .args(["verify", "--json", "--source"])
        .arg(src)
        .arg(vault)
        .output()
        .unwrap();
    let v = serde_json::from_str(&stdout(&o))
        .unwrap_or_else(|e| panic!("{e}: {} / {}", stdout(&o), stderr(&o)));
    (code(&o), v, stderr(&o))
}

fn differences(v: &serde_json::Value) -> Vec<(String, String)> {
    v["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["kind"].as_str().unwrap().to_string(),
                d["path"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_clean_tree_matches_and_every_difference_is_named() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = t.path().join("data");
    for i in 0..20 {
        write(
            &src.join(format!("d{}", i % 4)).join(format!("f{i}.txt")),
            format!("file {i}\n").repeat(50).as_bytes(),
        );
    }
    gen_file(&src.join("big.bin"), (2 << 20) + 77, 3);
    fs::create_dir_all(src.join("empty")).unwrap();
    std::os::unix::fs::symlink("d0/f0.txt", src.join("link")).unwrap();
    let vault = t.path().join("vault");
    ok(envseal(&home)
        .args(["encrypt", "-q", "--batch-max-files", "8", "-o"])
        .arg(&vault)
        .arg(&src));
    let batches = manifest_records(&vault)
        .iter()
        .filter(|r| r["type"] == "batch")
        .count();

    let decrypts = audit_count(&home, "Decrypt");
    let (c, v, err) = verify_source(&home, &src, &vault);
    assert_eq!(c, 0, "{err}");
    assert_eq!(v["ok"], true);
    assert_eq!(v["differences"], serde_json::json!([]));
    assert_eq!(
        v["entries"],
        20 + 1 + 4 + 2 + 1,
        "files, big, dirs, empty, link, root"
    );
    assert_eq!(
        audit_count(&home, "Decrypt") - decrypts,
        batches,
        "one Decrypt per batch"
    );

    // One flipped byte, size and mtime put back with `touch -r`: bit rot, by path.
    let rotten = src.join("d1/f5.txt");
    let reference = t.path().join("reference");
    fs::copy(&rotten, &reference).unwrap();
    assert!(Command::new("touch")
        .arg("-r")
        .arg(&rotten)
        .arg(&reference)
        .status()
        .unwrap()
        .success());
    flip_byte(&rotten, 17);
    assert!(Command::new("touch")
        .arg("-r")
        .arg(&reference)
        .arg(&rotten)
        .status()
        .unwrap()
        .success());
    // Deep in a large file too.
    let big = src.join("big.bin");
    fs::copy(&big, &reference).unwrap();
    assert!(Command::new("touch")
        .arg("-r")
        .arg(&big)
        .arg(&reference)
        .status()
        .unwrap()
        .success());
    flip_byte(&big, (1 << 20) + 5);
    assert!(Command::new("touch")
        .arg("-r")
        .arg(&reference)
        .arg(&big)
        .status()
        .unwrap()
        .success());
    let (c, v, err) = verify_source(&home, &src, &vault);
    assert_eq!(c, 1, "{err}");
    assert_eq!(v["ok"], false);
    assert_eq!(
        differences(&v),
        vec![
            ("bitrot".into(), "data/big.bin".into()),
            ("bitrot".into(), "data/d1/f5.txt".into()),
        ]
    );
    assert!(err.contains("bitrot: data/d1/f5.txt"), "{err}");

    // A deleted file, an added one, an edited one (other size), an added directory with
    // contents (reported once), a deleted directory, a touched one (same content).
    fs::remove_file(src.join("d2/f6.txt")).unwrap();
    write(&src.join("d3/new.txt"), b"new\n");
    write(&src.join("d0/f4.txt"), b"edited\n");
    write(&src.join("added/a/b.txt"), b"x");
    fs::remove_dir(src.join("empty")).unwrap();
    common::tree::set_mtime(&src.join("d0/f8.txt"), 1_000_000, 5);
    let (c, v, err) = verify_source(&home, &src, &vault);
    assert_eq!(c, 1, "{err}");
    assert_eq!(
        differences(&v),
        vec![
            ("extra".into(), "data/added".into()),
            ("bitrot".into(), "data/big.bin".into()),
            ("changed".into(), "data/d0/f4.txt".into()),
            ("metadata".into(), "data/d0/f8.txt".into()),
            ("bitrot".into(), "data/d1/f5.txt".into()),
            ("missing".into(), "data/d2/f6.txt".into()),
            ("extra".into(), "data/d3/new.txt".into()),
            ("missing".into(), "data/empty".into()),
        ]
    );
    assert_eq!(v["counts"]["bitrot"], 2);
    assert_eq!(v["counts"]["extra"], 2);

    // The vault itself is intact (verify --source wrote nothing to it).
    let o = ok(envseal(&home).args(["verify", "--json"]).arg(&vault));
    assert!(stdout(&o).contains("\"ok\":true"), "{}", stdout(&o));
}
