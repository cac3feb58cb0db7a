//! Hostile vaults, crafted and re-MACed with the vault's own (test) key, so that only the
//! checks under test can stop them: FIFOs in place of vault files, a manifest that is a
//! device or a huge sparse file, extreme mtimes, a symlink with a child. Each gives a clear
//! error with exit 1 or 3, in bounded time and memory, without a panic, and leaves no
//! plaintext of the bad entry in DEST. Also `--expect-key`.

use crate::common;
use envseal::store::local::LocalStore;

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::tree::{copy_vault, gen_file, ok};
use common::{envseal, stderr};
use envseal::keys::Kms;
use envseal::kms::local::LocalProvider;
use envseal::kms::KmsOptions;
use envseal::manifest::ManifestWriter;

struct Fx {
    t: tempfile::TempDir,
    home: PathBuf,
    vault: PathBuf,
}

fn fixture() -> Fx {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = t.path().join("src");
    fs::create_dir_all(src.join("a")).unwrap();
    gen_file(&src.join("a/small"), 100, 1);
    gen_file(&src.join("big"), 2 << 20, 2);
    let vault = t.path().join("vault");
    ok(envseal(&home)
        .args(["encrypt", "-q", "-o"])
        .arg(&vault)
        .arg(&src));
    Fx { t, home, vault }
}

impl Fx {
    fn copy(&self, name: &str) -> PathBuf {
        let v = self.t.path().join(name);
        copy_vault(&self.vault, &v);
        v
    }

    /// Runs envseal with a 2 GiB address-space limit and a 20 s deadline.
    fn run(&self, args: &[&str], vault: &Path, dest: Option<&Path>) -> Output {
        let mut c = envseal(&self.home);
        c.args(args).arg(vault);
        if let Some(d) = dest {
            c.arg("-o").arg(d);
        }
        // SAFETY: setrlimit in the child between fork and exec (async-signal-safe).
        unsafe {
            c.pre_exec(|| {
                let lim = libc::rlimit {
                    rlim_cur: 2 << 30,
                    rlim_max: 2 << 30,
                };
                libc::setrlimit(libc::RLIMIT_AS, &lim);
                Ok(())
            });
        }
        let mut child = c
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if started.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                panic!("envseal {args:?} hung on {}", vault.display());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        child.wait_with_output().unwrap()
    }

    /// `verify`, `verify --deep` and `decrypt` all refuse `vault` with exit 1 or 3, naming
    /// `needle`; decrypt leaves no regular file in DEST except `allowed`.
    fn assert_refused(&self, vault: &Path, needle: &str, allowed: &[&str]) {
        let dest = vault.with_extension("out");
        for (args, d) in [
            (&["verify"][..], None),
            (&["verify", "--deep"][..], None),
            (&["decrypt"][..], Some(dest.as_path())),
        ] {
            let o = self.run(args, vault, d);
            let code = o.status.code();
            let e = stderr(&o);
            assert!(
                matches!(code, Some(1 | 3)),
                "{args:?} on {}: exit {code:?}: {e}",
                vault.display()
            );
            assert!(!e.contains("panicked"), "{args:?}: {e}");
            let all = format!("{e}{}", common::stdout(&o));
            assert!(
                all.contains(needle),
                "{args:?}: wanted {needle:?} in: {all}"
            );
        }
        let left: Vec<String> = common::tree::files_under(&dest)
            .into_iter()
            .map(|p| p.display().to_string())
            .filter(|p| !allowed.contains(&p.as_str()))
            .collect();
        assert!(left.is_empty(), "left in DEST: {left:?}");
    }

    fn kms(&self) -> Kms {
        let store = self.home.join("keystore");
        let p = LocalProvider::open(Some(&store), &KmsOptions::default()).unwrap();
        Kms::new(KmsOptions::default(), None).with_provider("local", Arc::new(p))
    }

    /// Rewrites `vault`'s manifest with its entry lines passed through `edit`, and MACs it
    /// again with the vault's own batch keys: a vault only a key holder could make.
    fn remac(&self, vault: &Path, edit: impl Fn(Vec<String>) -> Vec<String>) {
        let kms = self.kms();
        let u = envseal::vault::unlock(&LocalStore::new(vault), &kms).unwrap();
        let text = fs::read_to_string(vault.join("manifest.jsonl")).unwrap();
        let entries: Vec<String> = text
            .lines()
            .filter(|l| l.starts_with(r#"{"type":"entry""#))
            .map(String::from)
            .collect();
        let mut m = ManifestWriter::create(&LocalStore::new(vault), &u.reader.header).unwrap();
        for b in &u.reader.batches {
            m.batch(b).unwrap();
        }
        for o in &u.reader.objects {
            m.object(o).unwrap();
        }
        for l in edit(entries) {
            m.entry_line(l.as_bytes()).unwrap();
        }
        let keys: Vec<&envseal::crypto::BatchKey> = u.keys.iter().collect();
        m.finish(&keys, true).unwrap();
    }
}

/// `line` with the number of member `field` replaced by `value`.
fn set_field(line: &str, field: &str, value: &str) -> String {
    let key = format!("\"{field}\":");
    let at = line.find(&key).unwrap() + key.len();
    let end = at + line[at..].find([',', '}']).unwrap();
    format!("{}{value}{}", &line[..at], &line[end..])
}

fn replace_file_with_fifo(p: &Path) {
    fs::remove_file(p).unwrap();
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid C path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
}

#[test]
fn fifos_in_place_of_vault_files_do_not_hang_readers() {
    let fx = fixture();
    let v = fx.copy("fifo-manifest");
    replace_file_with_fifo(&v.join("manifest.jsonl"));
    fx.assert_refused(&v, "not a regular file", &[]);

    let v = fx.copy("fifo-object");
    let obj = common::tree::files_under(&v.join("objects"))
        .into_iter()
        .map(|p| v.join("objects").join(p))
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();
    replace_file_with_fifo(&obj);
    // The other files are restored; the big one, whose object is a FIFO, is not.
    fx.assert_refused(&v, "not a regular file", &["src/a/small"]);

    // A FIFO key file: keyless verify reports it; the others do not read key files.
    let v = fx.copy("fifo-key");
    let key = fs::read_dir(&v)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("keys-"))
        .unwrap()
        .path();
    replace_file_with_fifo(&key);
    let o = fx.run(&["verify"], &v, None);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
}

#[test]
fn a_manifest_that_is_a_device_or_a_huge_sparse_file_is_refused_in_bounded_memory() {
    let fx = fixture();
    let v = fx.copy("dev-zero");
    fs::remove_file(v.join("manifest.jsonl")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", v.join("manifest.jsonl")).unwrap();
    fx.assert_refused(&v, "manifest.jsonl", &[]);

    let v = fx.copy("sparse");
    let m = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(v.join("manifest.jsonl"))
        .unwrap();
    m.set_len(4 << 30).unwrap();
    drop(m);
    fx.assert_refused(&v, "longer than the limit", &[]);
}

/// Extreme times in an authenticated manifest: `nsec` = 10^9 is refused by every reader
/// alike; `mtime` = i64::MAX fails that file alone (the time cannot be set), no panic, and
/// its plaintext is not left in DEST.
#[test]
fn extreme_mtimes_give_a_clear_error() {
    let fx = fixture();
    let v = fx.copy("nsec");
    fx.remac(&v, |lines| {
        lines
            .into_iter()
            .map(|l| {
                if l.contains(r#""path":"src/big""#) {
                    set_field(&l, "nsec", "1000000000")
                } else {
                    l
                }
            })
            .collect()
    });
    fx.assert_refused(&v, "nsec out of range", &[]);

    let v = fx.copy("mtime");
    fx.remac(&v, |lines| {
        lines
            .into_iter()
            .map(|l| {
                if l.contains(r#""path":"src/big""#) {
                    let l = set_field(&l, "mtime", &i64::MAX.to_string());
                    set_field(&l, "nsec", "999999999")
                } else {
                    l
                }
            })
            .collect()
    });
    let o = fx.run(&["verify", "--deep"], &v, None);
    assert!(matches!(o.status.code(), Some(0 | 1 | 3)), "{}", stderr(&o));
    let dest = v.with_extension("out");
    let o = fx.run(&["decrypt"], &v, Some(&dest));
    assert!(
        matches!(o.status.code(), Some(1 | 3)),
        "exit {:?}: {}",
        o.status.code(),
        stderr(&o)
    );
    assert!(stderr(&o).contains("src/big"), "{}", stderr(&o));
    assert!(
        !dest.join("src/big").exists(),
        "the file with a bad time was left"
    );
}

/// A symlink `src/a` and a file `src/a/evil` (no directory entry for `src/a`): every
/// reader refuses it the same way (one tree validation).
#[test]
fn a_symlink_with_a_child_is_refused_by_every_reader() {
    let fx = fixture();
    let v = fx.copy("link-child");
    fx.remac(&v, |lines| {
        let mut out = Vec::new();
        for l in lines {
            if l.contains(r#""path":"src/a""#) {
                out.push(
                    r#"{"type":"entry","path":"src/a","kind":"symlink","mode":0,"mtime":1,"nsec":0,"target":"/tmp"}"#
                        .to_string(),
                );
            } else if l.contains(r#""path":"src/a/small""#) {
                out.push(l.replace("src/a/small", "src/a/evil"));
            } else {
                out.push(l);
            }
        }
        out
    });
    fx.assert_refused(&v, "src/a/evil", &[]);
}

/// `--expect-key`: a restore pipeline names the CMK(s) it trusts; a vault wrapped by any
/// other is refused before any KMS call.
#[test]
fn expect_key_refuses_a_vault_of_another_cmk() {
    let fx = fixture();
    let keys = fs::read_to_string(
        fs::read_dir(&fx.vault)
            .unwrap()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with("keys-"))
            .unwrap()
            .path(),
    )
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&keys).unwrap();
    let cmk = v["wrapped"][0]["key_id"].as_str().unwrap().to_string();
    let dest = fx.t.path().join("out-ok");
    let o = fx.run(
        &[
            "decrypt",
            "-q",
            "--expect-key",
            "other",
            "--expect-key",
            &cmk,
        ],
        &fx.vault,
        Some(&dest),
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let dest = fx.t.path().join("out-refused");
    let o = fx.run(
        &["decrypt", "--expect-key", "some-other-cmk"],
        &fx.vault,
        Some(&dest),
    );
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("--expect-key"), "{}", stderr(&o));
    assert!(common::tree::files_under(&dest).is_empty());
    let o = fx.run(
        &["verify", "--deep", "--expect-key", "some-other-cmk"],
        &fx.vault,
        None,
    );
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
}
