//! Everyday use through the real binary: a rerun that tells the truth, `--since` keeping the
//! earlier vault's key, and the messages a sysadmin meets on common mistakes.

use crate::common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

#[cfg(feature = "server")]
use common::servers::{KmsServer, ALI_ID};
use common::tree::{gen_file, write};
use common::{envseal, stderr, stdout};
use serde_json::Value;

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

struct Fx {
    t: tempfile::TempDir,
}

impl Fx {
    fn new() -> Fx {
        let t = tempfile::tempdir().unwrap();
        write(&t.path().join("s/a.txt"), b"a\n");
        write(&t.path().join("s/sub/b.txt"), b"b\n");
        write(&t.path().join("s/sub/c.txt"), b"c\n");
        Fx { t }
    }
    fn p(&self, rel: &str) -> PathBuf {
        self.t.path().join(rel)
    }
    fn home(&self) -> PathBuf {
        self.p("home")
    }
    fn run(&self, args: &[&str]) -> Output {
        envseal(&self.home()).args(args).output().unwrap()
    }
    fn s(&self, rel: &str) -> String {
        self.p(rel).display().to_string()
    }
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(o)))
}

/// The same command on a finished vault reads nothing and says whether the sources still
/// match: exit 0 "already up to date", or exit 1 with the counts and the `--since` command,
/// which then works as printed.
#[test]
fn a_rerun_on_a_finished_vault_tells_the_truth() {
    let f = Fx::new();
    let (src, vault) = (f.s("s"), f.s("backup.vault"));
    let cmd = ["encrypt", "--json", &src, "-o", &vault];
    let first = f.run(&cmd);
    assert_eq!(code(&first), 0, "{}", stderr(&first));
    let j = json(&first);
    assert_eq!(j["outcome"], "encrypted");
    assert_eq!(j["encrypted_files"], 3);
    assert!(
        stderr(&first).contains("encrypted 3 files"),
        "{}",
        stderr(&first)
    );

    // Unchanged: exit 0, nothing claimed as done now.
    let again = f.run(&cmd);
    let e = stderr(&again);
    assert_eq!(code(&again), 0, "{e}");
    assert!(
        e.contains("already up to date") && e.contains("nothing read"),
        "{e}"
    );
    assert!(!e.contains("encrypted 3"), "{e}");
    let j = json(&again);
    assert_eq!(j["outcome"], "up_to_date");
    assert_eq!(j["encrypted_files"], 0);
    assert_eq!(j["bytes_read"], 0);
    assert_eq!(j["resumed_files"], 0);
    assert_eq!(j["files"], 3, "the counts describe the vault");
    assert!(j["stale"].is_null());

    // Changed: one file rewritten, one new, one gone.
    std::thread::sleep(Duration::from_millis(20));
    write(&f.p("s/a.txt"), b"a, edited\n");
    write(&f.p("s/new.txt"), b"new\n");
    fs::remove_file(f.p("s/sub/c.txt")).unwrap();
    let before = fs::read(f.p("backup.vault/manifest.jsonl")).unwrap();
    let stale = f.run(&cmd);
    let e = stderr(&stale);
    assert_eq!(code(&stale), 1, "{e}");
    assert!(
        e.contains("1 changed, 1 appeared, 1 vanished"),
        "the counts of what differs: {e}"
    );
    assert!(e.contains("--since") && e.contains("-o "), "{e}");
    assert!(!e.contains("encrypted "), "{e}");
    assert_eq!(
        fs::read(f.p("backup.vault/manifest.jsonl")).unwrap(),
        before,
        "a finished vault is never rewritten"
    );
    let j = json(&stale);
    assert_eq!(j["outcome"], "stale");
    assert_eq!(j["stale"]["changed"], 1);
    assert_eq!(j["stale"]["appeared"], 1);
    assert_eq!(j["stale"]["vanished"], 1);

    // The command it names makes the next vault, reusing the unchanged file.
    let next = j["stale"]["next_command"].as_str().unwrap().to_string();
    assert!(next.starts_with("envseal encrypt "), "{next}");
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_envseal")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!("{next} --json"))
        .env("PATH", path)
        .env("ENVSEAL_HOME", f.home())
        .env_remove("ENVSEAL_KMS")
        .env_remove("ENVSEAL_PASSPHRASE")
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{next}: {}", stderr(&o));
    let j = json(&o);
    assert_eq!(j["reused_files"], 1, "{j}");
    assert_eq!(j["encrypted_files"], 2, "{j}");
}

/// `--since` without `--key` wraps the new batches under the earlier vault's CMK (not the
/// default one), so one key opens both; `ls --keys` names the alias beside the id.
#[test]
fn since_without_key_keeps_the_earlier_vaults_key() {
    let f = Fx::new();
    let o = f.run(&["kms", "create-key"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let id = json(&o)["KeyMetadata"]["KeyId"]
        .as_str()
        .unwrap()
        .to_string();
    let o = f.run(&["kms", "create-alias", "alias/nightly", &id]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let (src, v1, v2) = (f.s("s"), f.s("v1"), f.s("v2"));
    let o = f.run(&["encrypt", "-q", &src, "-o", &v1, "--key", "alias/nightly"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    write(&f.p("s/new.txt"), b"new\n");
    let o = f.run(&["encrypt", "-q", "--json", &src, "-o", &v2, "--since", &v1]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(json(&o)["encrypted_files"], 1, "a new batch was made");

    let o = f.run(&["ls", "--keys", "--json", &v2]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let keys: Vec<Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(keys.len(), 1, "one CMK wraps every batch: {keys:?}");
    assert_eq!(keys[0]["key_id"], id.as_str());
    assert_eq!(keys[0]["opens_alone"], true);
    assert_eq!(keys[0]["aliases"], serde_json::json!(["alias/nightly"]));
    let o = f.run(&["ls", "--keys", &v2]);
    assert!(
        stdout(&o).contains(&format!("{id} (alias/nightly)")),
        "{}",
        stdout(&o)
    );
    // No default key was created on the way.
    let o = f.run(&["kms", "list"]);
    assert!(
        !stdout(&o).contains("alias/envseal/default"),
        "{}",
        stdout(&o)
    );
}

/// A vault made with another key store: the hint names ENVSEAL_HOME and --kms local:DIR, not
/// `kms create-key`.
#[test]
fn a_vault_of_another_key_store_says_where_to_look() {
    let f = Fx::new();
    let v = f.s("v");
    let o = f.run(&["encrypt", "-q", &f.s("s"), "-o", &v]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    // Another home with a key store of its own.
    let other = f.p("other");
    let o = envseal(&other)
        .args(["kms", "create-key"])
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = envseal(&other)
        .args(["decrypt", "-q", &v, "-o", &f.s("out")])
        .output()
        .unwrap();
    let e = stderr(&o);
    assert_eq!(code(&o), 1, "{e}");
    assert!(e.contains("hint: "), "{e}");
    assert!(
        e.contains("ENVSEAL_HOME") && e.contains("--kms local:"),
        "{e}"
    );
    assert!(!e.contains("create-key"), "{e}");
    // As the hint says: the right home opens it.
    let o = envseal(&f.home())
        .args(["decrypt", "-q", &v, "-o", &f.s("out")])
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

/// A wrong Alibaba AccessKey secret: said plainly, the server's string-to-sign only with -v.
#[test]
#[cfg(feature = "server")]
fn a_wrong_aliyun_secret_is_named() {
    let server = KmsServer::start();
    let f = Fx::new();
    let run = |verbose: bool| {
        let mut c = envseal(&f.home());
        if verbose {
            c.arg("-v");
        }
        c.args(["kms", "create-key", "--kms", &server.url()])
            .env("ALIBABA_CLOUD_ACCESS_KEY_ID", ALI_ID)
            .env("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "not-the-secret")
            .output()
            .unwrap()
    };
    let o = run(false);
    let e = stderr(&o);
    assert_eq!(code(&o), 1, "{e}");
    assert!(e.contains("wrong AccessKey secret"), "{e}");
    assert!(!e.contains("string to sign"), "no dump without -v: {e}");
    assert!(e.len() < 600, "a short message: {e}");
    let e = stderr(&run(true));
    assert!(e.contains("string to sign"), "-v keeps the dump: {e}");
    assert!(!e.contains("not-the-secret"), "{e}");
}

#[test]
fn a_plain_directory_given_as_a_vault_says_what_to_do() {
    let f = Fx::new();
    let o = f.run(&["decrypt", &f.s("s"), "-o", &f.s("out")]);
    let e = stderr(&o);
    assert_eq!(code(&o), 1, "{e}");
    assert!(e.contains("not an envseal vault"), "{e}");
    assert!(e.contains("hint: ") && e.contains("envseal encrypt"), "{e}");
    assert!(!f.p("out").exists());
}

#[test]
fn a_vault_given_as_a_source_is_refused_without_force() {
    let f = Fx::new();
    let v = f.s("v");
    let o = f.run(&["encrypt", "-q", &f.s("s"), "-o", &v]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = f.run(&["encrypt", "-q", &v, "-o", &f.s("w")]);
    let e = stderr(&o);
    assert_eq!(code(&o), 2, "{e}");
    assert!(
        e.contains("is an envseal vault") && e.contains("--force"),
        "{e}"
    );
    assert!(!f.p("w").exists());
    let o = f.run(&["encrypt", "-q", "--force", &v, "-o", &f.s("w")]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

#[test]
fn decrypt_into_the_vault_is_refused() {
    let f = Fx::new();
    let v = f.s("v");
    let o = f.run(&["encrypt", "-q", &f.s("s"), "-o", &v]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    for dest in ["v/out", "v/objects/../restored", "v"] {
        let o = f.run(&["decrypt", "-q", &v, "-o", &f.s(dest)]);
        let e = stderr(&o);
        assert_eq!(code(&o), 2, "{dest}: {e}");
        assert!(e.contains("inside the vault"), "{e}");
    }
    assert!(!f.p("v/out").exists() && !f.p("v/restored").exists());
    let o = f.run(&["verify", &v]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

#[test]
fn key_on_decrypt_points_to_expect_key() {
    let f = Fx::new();
    let v = f.s("v");
    let o = f.run(&["encrypt", "-q", &f.s("s"), "-o", &v]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = f.run(&["decrypt", &v, "-o", &f.s("out"), "--key", "alias/x"]);
    let e = stderr(&o);
    assert_eq!(code(&o), 2, "{e}");
    assert!(e.contains("--expect-key"), "{e}");
    assert!(!e.contains("'-- --key'"), "{e}");
}

#[test]
fn only_with_a_leading_slash_matches_the_vault_path() {
    let f = Fx::new();
    let v = f.s("v");
    let o = f.run(&["encrypt", "-q", &f.s("s"), "-o", &v]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = f.run(&[
        "decrypt",
        "-q",
        &v,
        "-o",
        &f.s("out"),
        "--only",
        "/s/sub/b.txt",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(fs::read(f.p("out/s/sub/b.txt")).unwrap(), b"b\n");
    assert!(!f.p("out/s/a.txt").exists());
}

/// Ctrl-C: files in flight are interrupted, not failed; no "failed" line for them.
#[test]
fn ctrl_c_prints_no_failed_lines() {
    let f = Fx::new();
    for i in 0..12 {
        gen_file(&f.p(&format!("big/f{i:02}")), 3 << 20, i);
    }
    let child = envseal(&f.home())
        .args(["encrypt", "-j", "2", "--progress-interval", "0.1"])
        .arg(f.p("big"))
        .arg("-o")
        .arg(f.p("v"))
        // One file done every 300 ms: the run is still going when the signal comes.
        .env("ENVSEAL_TEST_SLOW_FILE_MS", "300")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the work has started (the journal exists), then Ctrl-C.
    let journal = f.p("v/journal.jsonl");
    for _ in 0..200 {
        if journal.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    std::thread::sleep(Duration::from_millis(400));
    // SAFETY: kill(2) on the pid of a child this test spawned and has not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let o = child.wait_with_output().unwrap();
    let e = stderr(&o);
    assert_eq!(code(&o), 130, "{e}");
    assert!(e.contains("stopping"), "{e}");
    assert!(
        !e.lines().any(|l| l.starts_with("envseal: failed")),
        "interrupted files are not failures: {e}"
    );
    // And the same command finishes it.
    let o = f.run(&["encrypt", "-q", &f.s("big"), "-o", &f.s("v")]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

#[test]
fn bench_does_not_ask_to_back_up_its_scratch_store() {
    let f = Fx::new();
    let o = f.run(&["bench", "--size", "8MiB", "-j", "2", "--json"]);
    let e = stderr(&o);
    assert_eq!(code(&o), 0, "{e}");
    assert!(
        !e.contains("back this directory up") && !e.contains("back up"),
        "{e}"
    );
    assert!(!e.contains("unsealed key store"), "{e}");
}
