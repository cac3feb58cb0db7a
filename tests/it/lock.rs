//! The vault lock (docs/LIFECYCLE.md, "One writer at a time"): every writer of a vault
//! (encrypt, its resume, `--since`'s new vault, rewrap, import-legacy -o) is refused at once,
//! by name, while another run holds the vault; a killed holder (kill -9) releases it; two
//! rewraps or two encrypts started together never damage the vault or report a lost manifest.

use crate::common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::tree::{code, manifest_records, ok, write};
use common::{envseal, stderr, stdout};
use envseal::error::Error;
use envseal::store::local::DirLock as VaultLock;

fn create_key(home: &Path) -> String {
    let o = ok(envseal(home).args(["kms", "create-key"]));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    v["KeyMetadata"]["KeyId"].as_str().unwrap().to_string()
}

fn small_tree(dir: &Path, n: usize) -> PathBuf {
    let src = dir.join("src");
    for i in 0..n {
        write(
            &src.join(format!("d{}", i % 3)).join(format!("f{i}.txt")),
            format!("file {i}\n").as_bytes(),
        );
    }
    src
}

/// Asserts a run was refused because the vault is locked, naming it (and the holder's pid).
fn assert_locked(o: &std::process::Output, vault: &Path, pid: u32) {
    let e = stderr(o);
    assert_eq!(code(o), 1, "{e}");
    assert!(
        e.contains(&format!(
            "another envseal run (pid {pid}) is using {}",
            vault.display()
        )),
        "{e}"
    );
    assert!(e.contains("wait for it to finish"), "{e}");
}

/// Not a test by itself: run as a child (`LOCK_HOLDER_VAULT` set), it takes the vault's
/// lock, says so on stdout, and holds it until killed.
#[test]
fn lock_holder_child() {
    let Some(vault) = std::env::var_os("LOCK_HOLDER_VAULT") else {
        return;
    };
    let _lock = VaultLock::acquire(Path::new(&vault), false).unwrap();
    println!("LOCKED");
    std::thread::sleep(std::time::Duration::from_secs(120));
}

/// The test harness's name of test `f` of this module (`lock::f` in the one test binary;
/// the crate's own name is not part of it).
fn test_name(f: &str) -> String {
    match module_path!().split_once("::") {
        Some((_, module)) => format!("{module}::{f}"),
        None => f.to_string(),
    }
}

/// A child process holding `vault`'s lock, once it says it does.
fn holder(vault: &Path) -> Child {
    let mut c = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", &test_name("lock_holder_child")])
        .args(["--nocapture", "--test-threads=1"])
        .env("LOCK_HOLDER_VAULT", vault)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = c.stdout.take().unwrap();
    let locked = BufReader::new(out)
        .lines()
        .map_while(Result::ok)
        .any(|l| l.trim_end().ends_with("LOCKED"));
    assert!(locked, "the holder did not take the lock");
    c
}

#[test]
fn every_writer_is_refused_by_name_while_another_run_holds_the_vault() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let (a, b) = (create_key(&home), create_key(&home));
    let src = small_tree(t.path(), 6);
    let vault = t.path().join("vault");
    let encrypt = |vault: &Path| {
        let mut c = envseal(&home);
        c.args(["encrypt", "-q", "--key", &a, "-o"])
            .arg(vault)
            .arg(&src);
        c
    };
    ok(&mut encrypt(&vault));
    let manifest = std::fs::read(vault.join("manifest.jsonl")).unwrap();

    let mut child = holder(&vault);
    let pid = child.id();
    // rewrap, the finished encrypt run again, an encrypt --since into it: all refused,
    // nothing changed.
    let o = envseal(&home)
        .args(["rewrap", "-q", "--key", &b])
        .arg(&vault)
        .output()
        .unwrap();
    assert_locked(&o, &vault, pid);
    assert_locked(&encrypt(&vault).output().unwrap(), &vault, pid);
    assert_eq!(
        std::fs::read(vault.join("manifest.jsonl")).unwrap(),
        manifest
    );

    // A new vault directory held by another run (its encrypt just started): refused too.
    let fresh = t.path().join("fresh");
    std::fs::create_dir(&fresh).unwrap();
    let mut child2 = holder(&fresh);
    let o = envseal(&home)
        .args(["encrypt", "-q", "--key", &a, "--since"])
        .arg(&vault)
        .arg("-o")
        .arg(&fresh)
        .arg(&src)
        .output()
        .unwrap();
    assert_locked(&o, &fresh, child2.id());
    assert!(std::fs::read_dir(&fresh).unwrap().next().is_none());

    // kill -9 of the holders releases their locks (the kernel drops them with the process).
    child.kill().unwrap();
    child.wait().unwrap();
    child2.kill().unwrap();
    child2.wait().unwrap();
    ok(envseal(&home)
        .args(["rewrap", "-q", "--key", &b])
        .arg(&vault));
    ok(envseal(&home)
        .args(["encrypt", "-q", "--key", &a, "--since"])
        .arg(&vault)
        .arg("-o")
        .arg(&fresh)
        .arg(&src));
    ok(envseal(&home).args(["verify", "-q", "--deep"]).arg(&fresh));
}

#[test]
fn the_lock_is_held_in_process_too_and_names_the_holder() {
    let t = tempfile::tempdir().unwrap();
    let v = t.path().join("v");
    let held = VaultLock::acquire(&v, true).unwrap();
    match VaultLock::acquire(&v, true) {
        Err(e @ Error::Locked { .. }) => {
            assert_eq!(e.exit_code(), 1);
            let msg = e.to_string();
            assert!(
                msg.contains(&format!("(pid {})", std::process::id())),
                "{msg}"
            );
        }
        other => panic!("{other:?}"),
    }
    drop(held);
    VaultLock::acquire(&v, false).unwrap();
}

/// Two rewraps started together, many times over: each either finishes or is refused by
/// name; never a false "lost its manifest", and the vault always verifies (manifest and
/// key files agree).
#[test]
fn two_rewraps_at_once_never_damage_the_vault() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let (a, b, c) = (create_key(&home), create_key(&home), create_key(&home));
    let src = small_tree(t.path(), 12);
    let vault = t.path().join("vault");
    ok(envseal(&home)
        .args(["encrypt", "-q", "--batch-max-files", "2", "--key", &a, "-o"])
        .arg(&vault)
        .arg(&src));
    let mut refused = 0;
    for trial in 0..12 {
        let spawn = |k: &str| {
            envseal(&home)
                .args(["rewrap", "-q", "--key", k])
                .arg(&vault)
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (x, y) = if trial % 2 == 0 { (&b, &c) } else { (&c, &b) };
        let (p, q) = (spawn(x), spawn(y));
        for o in [p.wait_with_output().unwrap(), q.wait_with_output().unwrap()] {
            let e = stderr(&o);
            match code(&o) {
                0 => {}
                1 if e.contains("another envseal run") => refused += 1,
                _ => panic!("trial {trial}: {e}"),
            }
            assert!(!e.contains("lost its manifest"), "trial {trial}: {e}");
        }
        let o = ok(envseal(&home)
            .args(["verify", "--deep", "--json"])
            .arg(&vault));
        assert!(
            stdout(&o).contains("\"ok\":true"),
            "trial {trial}: {}",
            stdout(&o)
        );
        // One CMK wraps every batch, in the manifest and in every key file.
        let wraps: Vec<String> = manifest_records(&vault)
            .iter()
            .filter(|r| r["type"] == "wrap")
            .map(|r| r["key_id"].as_str().unwrap().to_string())
            .collect();
        assert!(wraps.windows(2).all(|w| w[0] == w[1]), "{wraps:?}");
    }
    eprintln!("{refused} of 24 rewraps were refused by the lock");
}

/// Two identical encrypts racing to create one vault: one makes it; the other is refused
/// by name or (if it came after) finds the finished run; never "No such file".
#[test]
fn two_encrypts_racing_to_create_one_vault() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let a = create_key(&home);
    let src = small_tree(t.path(), 30);
    for trial in 0..6 {
        let vault = t.path().join(format!("v{trial}"));
        let spawn = || {
            envseal(&home)
                .args(["encrypt", "-q", "--key", &a, "-o"])
                .arg(&vault)
                .arg(&src)
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (p, q) = (spawn(), spawn());
        let outs = [p.wait_with_output().unwrap(), q.wait_with_output().unwrap()];
        let mut finished = 0;
        for o in &outs {
            let e = stderr(o);
            match code(o) {
                0 => finished += 1,
                1 if e.contains("another envseal run") => {}
                _ => panic!("trial {trial}: {e}"),
            }
            assert!(!e.contains("No such file"), "trial {trial}: {e}");
        }
        assert!(finished >= 1, "trial {trial}");
        ok(envseal(&home).args(["verify", "-q", "--deep"]).arg(&vault));
    }
}
