//! A full disk (a small tmpfs, mounted here when running as root; skipped with a notice
//! otherwise): encrypt stops with a clean message naming the command that resumes; after
//! space is freed, the same command finishes and the vault is whole. Decrypt likewise.

use crate::common;

use common::tree::{assert_round_trip, assert_same_tree, code, gen_file, ok};
use common::{envseal, stderr, Tmpfs};

#[test]
fn a_full_disk_stops_cleanly_and_the_same_command_finishes() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = t.path().join("src");
    for i in 0..30u64 {
        gen_file(&src.join(format!("f{i:02}")), 300_000, i);
    }
    gen_file(&src.join("big.img"), 3 << 20, 99);
    // Fill levels: the disk fills in the key file / first objects, mid-run, near the end.
    for (level, size) in ["1m", "4m", "11m"].iter().enumerate() {
        let Some(fs) = Tmpfs::mount(&t.path().join(format!("mnt{level}")), size) else {
            eprintln!("NOTICE: cannot mount a tmpfs (not root?); skipping the ENOSPC test");
            return;
        };
        let vault = fs.0.join("vault");
        let cmd = || {
            let mut c = envseal(&home);
            c.args(["encrypt", "-q", "-j", "1", "-o"])
                .arg(&vault)
                .arg(&src);
            c
        };
        let o = cmd().output().unwrap();
        assert_eq!(code(&o), 1, "level {size}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(
            e.contains("no space left on device; free some space"),
            "{e}"
        );
        assert!(
            !e.contains("os error 28): No space"),
            "doubled message: {e}"
        );
        if vault.join("journal.jsonl").exists() {
            assert!(
                e.contains("envseal encrypt") && e.contains("resumes"),
                "{e}"
            );
        }
        fs.resize("64m");
        ok(&mut cmd());
        assert_round_trip(&home, &src, &vault, &t.path().join(format!("out{level}")));
    }

    // Decrypt into a full disk: failures say what to do; the same command then finishes.
    let vault = t.path().join("vault");
    ok(envseal(&home)
        .args(["encrypt", "-q", "-o"])
        .arg(&vault)
        .arg(&src));
    let Some(fs) = Tmpfs::mount(&t.path().join("dest"), "5m") else {
        return;
    };
    let dest = fs.0.join("out");
    let cmd = || {
        let mut c = envseal(&home);
        c.args(["decrypt", "-q", "-o"]).arg(&dest).arg(&vault);
        c
    };
    let o = cmd().output().unwrap();
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("free some space"), "{}", stderr(&o));
    fs.resize("64m");
    ok(&mut cmd());
    assert_same_tree(&src, &dest.join("src"));
}

/// `encrypt --since` onto another filesystem copies the earlier vault's objects; a full
/// disk midway leaves no partial copy in the way: after space is freed the same command
/// finishes (it used to exit 2, "exists and is not empty"), and the vault is whole.
#[test]
fn a_full_disk_while_copying_the_earlier_objects_does_not_stop_the_rerun() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = t.path().join("src");
    for i in 0..12u64 {
        gen_file(&src.join(format!("f{i:02}")), 300_000, i);
    }
    gen_file(&src.join("big.img"), 3 << 20, 99);
    let earlier = t.path().join("earlier");
    ok(envseal(&home)
        .args(["encrypt", "-q", "-o"])
        .arg(&earlier)
        .arg(&src));
    gen_file(&src.join("new.bin"), 100_000, 7);
    // The earlier objects hold about 6.6 MB: the disk fills within the big one's copy.
    let Some(fs) = Tmpfs::mount(&t.path().join("mnt"), "5m") else {
        eprintln!("NOTICE: cannot mount a tmpfs (not root?); skipping the ENOSPC test");
        return;
    };
    let vault = fs.0.join("vault");
    let cmd = || {
        let mut c = envseal(&home);
        c.args(["encrypt", "-q", "--json", "--since"])
            .arg(&earlier)
            .arg("-o")
            .arg(&vault)
            .arg(&src);
        c
    };
    let o = cmd().output().unwrap();
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("no space left on device; free some space"),
        "{}",
        stderr(&o)
    );
    fs.resize("64m");
    let o = ok(&mut cmd());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["reused_files"], 13, "{v}");
    ok(envseal(&home).args(["verify", "-q", "--deep"]).arg(&vault));
    let out = t.path().join("out");
    ok(envseal(&home)
        .args(["decrypt", "-q", "-o"])
        .arg(&out)
        .arg(&vault));
    assert_same_tree(&src, &out.join("src"));
}

/// The disk fills while a large compressed record is being written (docs/FORMAT.md §4.5):
/// the run stops with the same clean message, and once space is freed the same command
/// finishes the vault, whole.
#[test]
fn a_full_disk_in_a_compressed_record_stops_cleanly_and_the_same_command_finishes() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = t.path().join("src");
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut hex = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b"0123456789abcdef"[(x & 15) as usize]
            })
            .collect()
    };
    for i in 0..10 {
        common::tree::write(&src.join(format!("small{i}.txt")), &hex(200_000));
    }
    // About 11 MiB stored: the disks below fill inside it.
    common::tree::write(&src.join("big.txt"), &hex(20 << 20));
    for (level, size) in ["3m", "8m"].iter().enumerate() {
        let Some(fs) = Tmpfs::mount(&t.path().join(format!("mnt{level}")), size) else {
            eprintln!("NOTICE: cannot mount a tmpfs (not root?); skipping the ENOSPC test");
            return;
        };
        let vault = fs.0.join("vault");
        let cmd = || {
            let mut c = envseal(&home);
            c.args(["encrypt", "-q", "-j", "2", "--compress", "zstd", "-o"])
                .arg(&vault)
                .arg(&src);
            c
        };
        let o = cmd().output().unwrap();
        assert_eq!(code(&o), 1, "level {size}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("no space left on device; free some space"),
            "{}",
            stderr(&o)
        );
        fs.resize("64m");
        ok(&mut cmd());
        assert_round_trip(&home, &src, &vault, &t.path().join(format!("out{level}")));
    }
}
