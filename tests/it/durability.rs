//! What reaches the disk before success: by default encrypt syncs its data before journaling
//! it and decrypt syncs DEST once; `--no-sync` leaves both to the kernel. Counted with strace
//! (the test says so and passes vacuously where strace is not installed).

use crate::common;

use std::path::Path;
use std::process::Command;

use common::tree::{assert_same_tree, fixture_copy, gen_file};
use common::{envseal, stderr, stdout};

/// Runs the binary under `strace -f`, returning (exit code, stdout, sync calls seen).
fn traced(home: &Path, trace: &Path, args: &[&str]) -> Option<(i32, String, usize)> {
    if Command::new("strace").arg("-V").output().is_err() {
        eprintln!("strace is not installed: the sync counts are not checked");
        return None;
    }
    let mut c = Command::new("strace");
    c.args(["-f", "-qq", "-e", "trace=syncfs,fdatasync,fsync", "-o"])
        .arg(trace)
        .arg(env!("CARGO_BIN_EXE_envseal"))
        .args(args)
        .env("ENVSEAL_HOME", home)
        .env_remove("ENVSEAL_KMS")
        .env_remove("ENVSEAL_PASSPHRASE");
    let out = c.output().unwrap();
    let log = std::fs::read_to_string(trace).unwrap();
    let data_syncs = log.lines().filter(|l| l.contains("syncfs(")).count();
    assert!(out.status.code().is_some(), "{}", stderr(&out));
    Some((out.status.code().unwrap(), stdout(&out), data_syncs))
}

#[test]
fn default_runs_sync_and_no_sync_runs_do_not() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = fixture_copy(&t.path().join("src"));
    // One file over the pack threshold, so both the pack and the large-object paths run.
    gen_file(&src.join("large.bin"), 3 << 20, 5);
    // The key store exists first, so its own fsyncs are not counted against a run.
    let out = envseal(&home).args(["kms", "list"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let src_s = src.to_str().unwrap();

    for (no_sync, name) in [(false, "synced"), (true, "unsynced")] {
        let vault = t.path().join(format!("vault-{name}"));
        let dest = t.path().join(format!("out-{name}"));
        let (v, d) = (vault.to_str().unwrap(), dest.to_str().unwrap());
        let flag: &[&str] = if no_sync { &["--no-sync"] } else { &[] };

        let mut args = vec!["encrypt", "-q", "--json", src_s, "-o", v];
        args.extend(flag);
        let Some((code, out, syncs)) = traced(&home, &t.path().join("enc.trace"), &args) else {
            return;
        };
        assert_eq!(code, 0, "{out}");
        let json: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(json["synced"], !no_sync, "{json}");
        if no_sync {
            assert_eq!(syncs, 0, "encrypt --no-sync issued data syncs");
        } else {
            // At least the commit before the last journal lines (the manifest and journal
            // are fsynced on their own, not counted here).
            assert!(syncs >= 1, "encrypt synced its data {syncs} times");
        }

        let mut args = vec!["decrypt", "-q", "--json", v, "-o", d];
        args.extend(flag);
        let (code, out, syncs) = traced(&home, &t.path().join("dec.trace"), &args).unwrap();
        assert_eq!(code, 0, "{out}");
        let json: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(json["synced"], !no_sync, "{json}");
        if no_sync {
            assert_eq!(syncs, 0, "decrypt --no-sync issued data syncs");
        } else {
            assert!(syncs >= 1, "decrypt synced {syncs} times");
        }
        assert_same_tree(&src, &dest.join(src.file_name().unwrap()));
        let out = envseal(&home)
            .args(["verify", "--deep", "-q", v])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    }
}
