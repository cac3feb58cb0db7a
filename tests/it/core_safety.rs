//! Runs that survive and restores that stay safe: resume after kill -9 with the same batch key,
//! finished vaults never overwritten, `--only`, `--conceal-names`, `--overwrite`, symlinks
//! planted in DEST, `--json` and `-q`.

use crate::common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use common::tree::{
    assert_same_tree, audit_count, code, files_under, fixture_copy, gen_file, ok, snapshot, write,
};
use common::{envseal, stderr, stdout};
use serde_json::Value;

/// A vault of the fixture tree (4 KiB segments), with the default key already created.
struct Fixture {
    dir: tempfile::TempDir,
    home: PathBuf,
    src: PathBuf,
    vault: PathBuf,
}

impl Fixture {
    fn new(extra: &[&str]) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let src = fixture_copy(&dir.path().join("src"));
        let vault = dir.path().join("vault");
        ok(envseal(&home)
            .args(["encrypt", "-q", "--segment-size", "4KiB", "-o"])
            .arg(&vault)
            .args(extra)
            .arg(&src));
        Fixture {
            dir,
            home,
            src,
            vault,
        }
    }

    fn decrypt(&self, out: &Path, extra: &[&str]) -> Output {
        envseal(&self.home)
            .arg("decrypt")
            .arg(&self.vault)
            .arg("-o")
            .arg(out)
            .args(extra)
            .output()
            .unwrap()
    }
}

/// Relative paths present under `root`, as strings.
fn paths(root: &Path) -> BTreeSet<String> {
    snapshot(root)
        .into_keys()
        .filter(|k| !k.is_empty())
        .map(|k| String::from_utf8_lossy(&k).into_owned())
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Waits until the running encrypt's journal contains `needle`; panics if the run ends first
/// (the tree is then too small to interrupt it).
fn wait_for_journal(child: &mut Child, journal: &Path, needle: &str) {
    let started = Instant::now();
    while !fs::read_to_string(journal).is_ok_and(|j| j.contains(needle)) {
        if let Some(st) = child.try_wait().unwrap() {
            panic!("encrypt finished ({st}) before it could be interrupted: make the tree larger");
        }
        assert!(started.elapsed() < Duration::from_secs(60), "no progress");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// While a `--conceal-names` run is unfinished, its journal must not hold the names either.
#[test]
fn concealed_names_stay_out_of_an_unfinished_journal() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = t.path().join("secret-project");
    // Large enough that the run is still going well after its first commit (500 ms), when
    // the journal first shows a finished file: a faster build must not finish before the kill.
    for i in 0..300u64 {
        gen_file(&src.join(format!("payroll-{i:03}.bin")), 2 << 20, i);
    }
    let vault = t.path().join("vault");
    let mut child = envseal(&home)
        .args(["encrypt", "-q", "--conceal-names", "-j", "1", "-o"])
        .arg(&vault)
        .arg(&src)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let journal = vault.join("journal.jsonl");
    wait_for_journal(&mut child, &journal, "\"type\":\"done\"");
    child.kill().unwrap();
    child.wait().unwrap();
    let text = fs::read_to_string(&journal).unwrap();
    assert!(
        !text.contains("payroll"),
        "file names in clear in the journal"
    );
    assert!(
        !text.contains("secret-project/"),
        "paths in clear in the journal"
    );
    // Resuming reveals the sealed journal names again: finished files are reused.
    let out = envseal(&home)
        .args([
            "encrypt",
            "-q",
            "--json",
            "--conceal-names",
            "-j",
            "1",
            "-o",
        ])
        .arg(&vault)
        .arg(&src)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(summary["resumed_files"].as_u64().unwrap() >= 1, "{summary}");
    assert_eq!(summary["files"], 300);
    let dest = t.path().join("out");
    let out = envseal(&home)
        .args(["decrypt", "-q", "-o"])
        .arg(&dest)
        .arg(&vault)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for i in 0..100u64 {
        let name = format!("payroll-{i:03}.bin");
        assert_eq!(
            fs::read(dest.join("secret-project").join(&name)).unwrap(),
            fs::read(src.join(&name)).unwrap(),
            "{name}"
        );
    }
}

#[test]
fn resume_after_kill_reuses_the_batch_key_and_round_trips() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = t.path().join("many");
    for i in 0..200u64 {
        gen_file(&src.join(format!("f{i:03}.bin")), 2 << 20, i);
    }
    let vault = t.path().join("vault");
    let args = |v: &Path| {
        let mut c = envseal(&home);
        c.args(["encrypt", "-q", "--json", "-j", "1", "-o"])
            .arg(v)
            .arg(&src);
        c
    };
    // Kill -9 as soon as the journal records a finished file (so there is something to
    // resume), and before the run is over.
    let mut child = args(&vault)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let journal = vault.join("journal.jsonl");
    wait_for_journal(&mut child, &journal, "\"type\":\"done\"");
    child.kill().unwrap();
    child.wait().unwrap();
    // Complete `done` lines only (a line torn by the kill is cut off on resume).
    let done: Vec<String> = fs::read_to_string(&journal)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["type"] == "done")
        .filter_map(|v| Some(v["rec"]["path"].as_str()?.to_string()))
        .filter(|p| p != "many")
        .collect();
    let done_at_kill = done.len();
    eprintln!("killed with {done_at_kill} of 200 files recorded done");
    // One file already done changes (same size, new content and mtime) before the resume: it
    // must be encrypted again, not taken from the journal (the round trip below checks).
    let changed = done[0].strip_prefix("many/").unwrap();
    gen_file(&src.join(changed), 2 << 20, 4242);
    common::tree::set_mtime(&src.join(changed), 1_999_999_999, 7);
    assert!(
        !vault.join("manifest.jsonl").exists(),
        "killed run wrote a manifest"
    );
    assert!(journal.exists(), "killed run left no journal");
    assert_eq!(audit_count(&home, "GenerateDataKey"), 1);

    // A different command on the same vault is refused and changes nothing.
    let o = envseal(&home)
        .args(["encrypt", "-q", "--segment-size", "64KiB", "-o"])
        .arg(&vault)
        .arg(&src)
        .output()
        .unwrap();
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("other arguments"), "{}", stderr(&o));
    assert!(journal.exists() && !vault.join("manifest.jsonl").exists());

    // The same command finishes it with the same batch key, unwrapped (Decrypt), not new.
    let decrypts = audit_count(&home, "Decrypt");
    let o = ok(&mut args(&vault));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["generated_keys"], 0, "{v}");
    assert_eq!(v["files"], 200, "{v}");
    // Every unchanged file recorded done before the kill is taken over, not encrypted again.
    assert!(
        v["resumed_files"].as_u64().unwrap() >= done_at_kill as u64 - 1,
        "{v}"
    );
    assert!(v["resumed_files"].as_u64().unwrap() < 200, "{v}");
    assert_eq!(
        audit_count(&home, "GenerateDataKey"),
        1,
        "a second data key"
    );
    assert_eq!(audit_count(&home, "Decrypt"), decrypts + 1);
    assert!(
        fs::read_to_string(&journal)
            .unwrap()
            .starts_with(r#"{"type":"finished""#),
        "the journal of a finished run is its receipt"
    );
    ok(envseal(&home).arg("verify").arg(&vault));
    let out = t.path().join("out");
    ok(envseal(&home)
        .args(["decrypt", "-q", "-o"])
        .arg(&out)
        .arg(&vault));
    assert_same_tree(&src, &out.join("many"));
    // No object the manifest does not name (the killed run's partial objects were swept).
    let objects = files_under(&vault.join("objects")).len();
    assert_eq!(objects, 200);
}

/// Ctrl-C (SIGINT) stops a run with exit 130 and a resumable vault; running again finishes it.
#[test]
fn ctrl_c_leaves_a_resumable_vault() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = t.path().join("some");
    for i in 0..100u64 {
        gen_file(&src.join(format!("f{i:03}.bin")), 2 << 20, i + 1000);
    }
    let vault = t.path().join("vault");
    let cmd = || {
        let mut c = envseal(&home);
        c.args(["encrypt", "-q", "-j", "1", "-o"])
            .arg(&vault)
            .arg(&src);
        c
    };
    let mut child = cmd().stderr(Stdio::piped()).spawn().unwrap();
    let journal = vault.join("journal.jsonl");
    wait_for_journal(&mut child, &journal, "\"type\":\"batch\"");
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    assert!(journal.exists() && !vault.join("manifest.jsonl").exists());
    ok(&mut cmd());
    assert_eq!(audit_count(&home, "GenerateDataKey"), 1);
    let out = t.path().join("out");
    ok(envseal(&home)
        .args(["decrypt", "-q", "-o"])
        .arg(&out)
        .arg(&vault));
    assert_same_tree(&src, &out.join("some"));
}

#[test]
fn a_finished_vault_is_never_overwritten() {
    let f = Fixture::new(&[]);
    let before = fs::read(f.vault.join("manifest.jsonl")).unwrap();
    let objects = files_under(&f.vault);
    // The same command again: the vault is its own, finished (exit 0, nothing changes),
    // whatever moment a kill stopped it at after its manifest (docs/RESUME.md).
    for extra in [&[][..], &["--resume"][..]] {
        let o = envseal(&f.home)
            .args(["encrypt", "-q", "--segment-size", "4KiB", "-o"])
            .arg(&f.vault)
            .args(extra)
            .arg(&f.src)
            .output()
            .unwrap();
        assert_eq!(code(&o), 0, "{}", stderr(&o));
    }
    // Another command: refused.
    for extra in [&[][..], &["--resume"][..]] {
        let o = envseal(&f.home)
            .args(["encrypt", "-q", "--segment-size", "64KiB", "-o"])
            .arg(&f.vault)
            .args(extra)
            .arg(&f.src)
            .output()
            .unwrap();
        assert_eq!(code(&o), 2, "{}", stderr(&o));
        assert!(stderr(&o).contains("finished vault"), "{}", stderr(&o));
    }
    assert_eq!(fs::read(f.vault.join("manifest.jsonl")).unwrap(), before);
    assert_eq!(files_under(&f.vault), objects);
    // A non-empty directory that is not a vault is refused too.
    let other = f.dir.path().join("other");
    write(&other.join("precious.txt"), b"mine");
    let o = envseal(&f.home)
        .args(["encrypt", "-q", "-o"])
        .arg(&other)
        .arg(&f.src)
        .output()
        .unwrap();
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert_eq!(files_under(&other), vec![PathBuf::from("precious.txt")]);
}

/// Usage errors found after the vault was opened (while walking) leave no vault behind.
#[test]
fn usage_errors_write_no_vault() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    write(&t.path().join("a/x/f.txt"), b"one");
    write(&t.path().join("b/x"), b"two");
    let cases: Vec<(&str, Vec<PathBuf>)> = vec![
        (
            "two sources with one base name",
            vec![t.path().join("a/x"), t.path().join("b/x")],
        ),
        ("a missing source", vec![t.path().join("missing")]),
    ];
    for (case, sources) in cases {
        let vault = t.path().join("vault");
        let o = envseal(&home)
            .args(["encrypt", "-q", "-o"])
            .arg(&vault)
            .args(&sources)
            .output()
            .unwrap();
        assert_eq!(code(&o), 2, "{case}: {}", stderr(&o));
        assert!(!vault.exists(), "{case}: {} left behind", vault.display());
    }
}

#[test]
fn only_restores_a_path_a_directory_or_a_glob() {
    let f = Fixture::new(&[]);
    let cases: &[(&[&str], &[&str])] = &[
        (&["tree/seg-exact.bin"], &["tree", "tree/seg-exact.bin"]),
        (
            &["tree/deep/a/b/c"],
            &[
                "tree",
                "tree/deep",
                "tree/deep/a",
                "tree/deep/a/b",
                "tree/deep/a/b/c",
                "tree/deep/a/b/c/d",
                "tree/deep/a/b/c/d/e",
                "tree/deep/a/b/c/d/e/f",
                "tree/deep/a/b/c/d/e/f/g",
            ],
        ),
        (
            &["tree/seg-*.bin"],
            &[
                "tree",
                "tree/seg-exact.bin",
                "tree/seg-minus-1.bin",
                "tree/seg-plus-1.bin",
            ],
        ),
        (
            &["tree/one-byte.txt", "tree/empty-dir"],
            &["tree", "tree/one-byte.txt", "tree/empty-dir"],
        ),
    ];
    for (i, (only, expect)) in cases.iter().enumerate() {
        let out = f.dir.path().join(format!("out-{i}"));
        let mut extra = Vec::new();
        for o in only.iter() {
            extra.extend(["--only", o]);
        }
        let o = f.decrypt(&out, &extra);
        assert_eq!(code(&o), 0, "{only:?}: {}", stderr(&o));
        let mut want = set(expect);
        // The deep directory's leaf holds whatever the fixture put there.
        if only[0] == "tree/deep/a/b/c" {
            let leaf = f.src.join("deep/a/b/c/d/e/f/g");
            for p in paths(&leaf) {
                want.insert(format!("tree/deep/a/b/c/d/e/f/g/{p}"));
            }
        }
        assert_eq!(paths(&out), want, "--only {only:?}");
        for p in &want {
            let Some(rel) = p.strip_prefix("tree/") else {
                continue;
            };
            if f.src.join(rel).is_file() {
                assert_eq!(
                    fs::read(out.join(p)).unwrap(),
                    fs::read(f.src.join(rel)).unwrap()
                );
            }
        }
    }
    let o = f.decrypt(&f.dir.path().join("out-none"), &["--only", "tree/nope"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
}

#[test]
fn concealed_names_stay_out_of_the_manifest_and_round_trip() {
    let f = Fixture::new(&["--conceal-names"]);
    let manifest = fs::read(f.vault.join("manifest.jsonl")).unwrap();
    let text = String::from_utf8_lossy(&manifest);
    for name in [
        "seg-exact",
        "run.sh",
        "deep",
        "empty-dir",
        "does-not-exist",
        "one-byte",
        "with space",
        "tree/",
        "\"tree\"",
    ] {
        assert!(!text.contains(name), "{name:?} in clear in the manifest");
    }
    // Names are not in the key file nor in object names either.
    for p in files_under(&f.vault) {
        let s = p.to_string_lossy();
        assert!(!s.contains("seg-") && !s.contains("run"), "{s}");
    }
    ok(envseal(&f.home).arg("verify").arg(&f.vault));
    let out = f.dir.path().join("out");
    let o = f.decrypt(&out, &["-q"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_same_tree(&f.src, &out.join("tree"));
    // `ls` reveals them (it needs the key).
    let o = ok(envseal(&f.home).arg("ls").arg(&f.vault));
    let listing = stdout(&o);
    for name in [
        "tree/seg-exact.bin",
        "tree/run.sh",
        "tree/empty-dir",
        "does-not-exist",
    ] {
        assert!(listing.contains(name), "ls does not show {name}: {listing}");
    }
    let o = ok(envseal(&f.home).args(["ls", "--json"]).arg(&f.vault));
    let listed: Vec<String> = stdout(&o)
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["path"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(listed.contains(&"tree/deep/a/b".to_string()), "{listed:?}");
    // --only works on concealed names too.
    let out2 = f.dir.path().join("out2");
    ok(envseal(&f.home)
        .arg("decrypt")
        .arg(&f.vault)
        .args(["-q", "--only", "tree/run.sh", "-o"])
        .arg(&out2));
    assert_eq!(paths(&out2), set(&["tree", "tree/run.sh"]));
}

#[test]
fn existing_files_are_kept_unless_overwrite() {
    let f = Fixture::new(&[]);
    let out = f.dir.path().join("out");
    assert_eq!(code(&f.decrypt(&out, &["-q"])), 0);
    let victim = out.join("tree/seg-plus-1.bin");
    fs::write(&victim, b"local edits").unwrap();
    let o = f.decrypt(&out, &[]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("--overwrite"), "{}", stderr(&o));
    assert_eq!(fs::read(&victim).unwrap(), b"local edits");
    let o = f.decrypt(&out, &["--overwrite", "-q"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_same_tree(&f.src, &out.join("tree"));
    assert!(common::tree::temp_files(&out).is_empty());
}

#[test]
fn a_symlink_planted_in_dest_is_never_written_through() {
    let f = Fixture::new(&[]);
    let out = f.dir.path().join("out");
    let elsewhere = f.dir.path().join("elsewhere");
    fs::create_dir_all(&elsewhere).unwrap();
    fs::create_dir_all(out.join("tree")).unwrap();
    // The vault has directories tree/deep and tree/with space: plant links in their place.
    std::os::unix::fs::symlink(&elsewhere, out.join("tree/deep")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, out.join("tree/with space")).unwrap();
    let o = f.decrypt(&out, &[]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("deep"), "{}", stderr(&o));
    // Nothing at all (not even an empty directory) created through the links.
    assert_eq!(
        paths(&elsewhere),
        BTreeSet::new(),
        "written through a planted symlink"
    );
    assert!(fs::symlink_metadata(out.join("tree/deep"))
        .unwrap()
        .file_type()
        .is_symlink());
    // A link planted where the vault has a file is replaced (with --overwrite), never
    // followed: the file it points to keeps its content.
    let target = elsewhere.join("keep.txt");
    fs::write(&target, b"not yours").unwrap();
    let out3 = f.dir.path().join("out3");
    fs::create_dir_all(out3.join("tree")).unwrap();
    std::os::unix::fs::symlink(&target, out3.join("tree/run.sh")).unwrap();
    let o = f.decrypt(&out3, &[]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert_eq!(fs::read(&target).unwrap(), b"not yours");
    let o = f.decrypt(&out3, &["--overwrite", "-q"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(fs::read(&target).unwrap(), b"not yours");
    assert_same_tree(&f.src, &out3.join("tree"));
    fs::remove_file(&target).unwrap();
    // And the top-level directory itself as a link.
    let out2 = f.dir.path().join("out2");
    fs::create_dir_all(&out2).unwrap();
    std::os::unix::fs::symlink(&elsewhere, out2.join("tree")).unwrap();
    let o = f.decrypt(&out2, &[]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert_eq!(
        paths(&elsewhere),
        BTreeSet::new(),
        "written through a planted symlink"
    );
}

#[test]
fn json_summaries_parse_and_quiet_is_quiet() {
    let f = Fixture::new(&[]);
    let v2 = f.dir.path().join("vault2");
    let o = ok(envseal(&f.home)
        .args(["encrypt", "--json", "-o"])
        .arg(&v2)
        .arg(&f.src));
    let e: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(e["command"], "encrypt");
    assert_eq!(e["files"], 11);
    assert_eq!(e["dirs"], 11);
    assert_eq!(e["symlinks"], 3);
    assert_eq!(e["batches"], 1);
    assert_eq!(e["bytes"], 24652);
    for k in ["seconds", "gb_per_s"] {
        assert!(e[k].is_number(), "{k}: {e}");
    }
    for k in ["skipped", "failed"] {
        assert_eq!(e[k], Value::Array(vec![]), "{k}: {e}");
    }

    let out = f.dir.path().join("out");
    let o = ok(envseal(&f.home)
        .args(["decrypt", "--json", "-o"])
        .arg(&out)
        .arg(&v2));
    let d: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(d["command"], "decrypt");
    assert_eq!(d["files"], 11);
    assert_eq!(d["bytes"], 24652);
    assert_eq!(d["integrity_failures"], 0);
    assert_eq!(d["failed"], Value::Array(vec![]));

    for deep in [false, true] {
        let mut c = envseal(&f.home);
        c.args(["verify", "--json"]);
        if deep {
            c.arg("--deep");
        }
        let o = ok(c.arg(&v2));
        let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
        assert_eq!(v["command"], "verify");
        assert_eq!(v["deep"], deep);
        assert_eq!(v["ok"], true);
        assert_eq!(v["files"], 11);
        assert_eq!(v["problems"], Value::Array(vec![]));
    }
    // A failing verify's JSON names the problem.
    let (obj, off) = common::tree::objects_by_path(&v2)["tree/three-segs.bin"].clone();
    common::tree::flip_byte(&v2.join(&obj), off + 5000);
    let o = envseal(&f.home)
        .args(["verify", "--json"])
        .arg(&v2)
        .output()
        .unwrap();
    assert_eq!(code(&o), 3);
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["problems"][0]["path"], "tree/three-segs.bin");
    assert_eq!(v["problems"][0]["object"], format!("{obj}@{off}"));
    assert_eq!(v["problems"][0]["kind"], "corrupt");

    // -q: not a byte on stderr (nor stdout) for successful runs.
    let v3 = f.dir.path().join("vault3");
    let out3 = f.dir.path().join("out3");
    let runs: Vec<Output> = vec![
        ok(envseal(&f.home)
            .args(["encrypt", "-q", "-o"])
            .arg(&v3)
            .arg(&f.src)),
        ok(envseal(&f.home).args(["verify", "-q"]).arg(&v3)),
        ok(envseal(&f.home).args(["verify", "-q", "--deep"]).arg(&v3)),
        ok(envseal(&f.home)
            .args(["decrypt", "-q", "-o"])
            .arg(&out3)
            .arg(&v3)),
    ];
    for o in runs {
        assert_eq!(stderr(&o), "");
        assert_eq!(stdout(&o), "");
    }
}
