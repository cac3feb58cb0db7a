//! `encrypt --since`: after changing 3 files, deleting 2 and adding 1 in a 1,000-file tree,
//! exactly the 4 changed or new files are encrypted (the JSON summary counts them), the
//! others are reused without being read, and the new vault restores the current tree by
//! itself (the earlier vault deleted first).

use crate::common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::tree::{assert_same_tree, audit_count, manifest_records, ok, write};
use common::{envseal, stdout};

fn encrypt_json(home: &Path, src: &Path, vault: &Path, since: Option<&Path>) -> serde_json::Value {
    let mut c = envseal(home);
    c.args(["encrypt", "-q", "--json", "-o"]).arg(vault);
    if let Some(s) = since {
        c.arg("--since").arg(s);
    }
    let o = ok(c.arg(src));
    serde_json::from_str(&stdout(&o)).unwrap()
}

#[test]
fn only_changed_and_new_files_are_encrypted_and_the_result_is_whole() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = t.path().join("tree");
    for i in 0..1000 {
        write(
            &src.join(format!("d{:02}", i % 20))
                .join(format!("f{i:04}.txt")),
            format!("file {i}\n").repeat(1 + i % 9).as_bytes(),
        );
    }
    let v1 = t.path().join("v1");
    let r1 = encrypt_json(&home, &src, &v1, None);
    assert_eq!(r1["files"], 1000);
    assert_eq!(r1["encrypted_files"], 1000);

    // 3 changed (one of the same size, its mtime moved), 2 deleted, 1 added.
    write(&src.join("d01/f0001.txt"), b"changed\n");
    write(&src.join("d02/f0002.txt"), b"changed, longer than before\n");
    let same = src.join("d03/f0003.txt");
    let mut bytes = fs::read(&same).unwrap();
    bytes[0] = b'F';
    fs::write(&same, bytes).unwrap();
    fs::remove_file(src.join("d04/f0004.txt")).unwrap();
    fs::remove_file(src.join("d05/f0005.txt")).unwrap();
    write(&src.join("d06/new.txt"), b"new file\n");

    let generated = audit_count(&home, "GenerateDataKey");
    let v2 = t.path().join("v2");
    let r2 = encrypt_json(&home, &src, &v2, Some(&v1));
    assert_eq!(r2["files"], 999, "{r2}");
    assert_eq!(r2["encrypted_files"], 4, "{r2}");
    assert_eq!(r2["reused_files"], 995, "{r2}");
    let reused_bytes: u64 = (0..1000)
        .filter(|i| ![1, 2, 3, 4, 5].contains(i))
        .map(|i| format!("file {i}\n").repeat(1 + i % 9).len() as u64)
        .sum();
    assert_eq!(r2["reused_bytes"], reused_bytes);
    assert_eq!(
        audit_count(&home, "GenerateDataKey") - generated,
        1,
        "one new batch for the new and changed files"
    );
    let batches = manifest_records(&v2)
        .iter()
        .filter(|r| r["type"] == "batch")
        .count();
    assert_eq!(batches, 2, "the earlier batch and the new one");

    // The new vault stands alone: the earlier one deleted, it verifies and restores the
    // current tree, deletions included.
    fs::remove_dir_all(&v1).unwrap();
    let o = ok(envseal(&home).args(["verify", "--deep", "--json"]).arg(&v2));
    assert!(stdout(&o).contains("\"ok\":true"), "{}", stdout(&o));
    let out = t.path().join("out");
    ok(envseal(&home)
        .args(["decrypt", "-q", "-o"])
        .arg(&out)
        .arg(&v2));
    assert_same_tree(&src, &out.join("tree"));

    // The inode counts: a file replaced by a copy with the same size and mtime (`cp -p`, then
    // a rename over it) is encrypted again; nothing else is.
    let f = src.join("d07/f0007.txt");
    let copy = src.join("d07/.copy");
    assert!(Command::new("cp")
        .arg("-p")
        .arg(&f)
        .arg(&copy)
        .status()
        .unwrap()
        .success());
    fs::rename(&copy, &f).unwrap();
    let v3 = t.path().join("v3");
    let r3 = encrypt_json(&home, &src, &v3, Some(&v2));
    assert_eq!(r3["encrypted_files"], 1, "{r3}");
    assert_eq!(r3["reused_files"], 998, "{r3}");
    let out3 = t.path().join("out3");
    ok(envseal(&home)
        .args(["decrypt", "-q", "-o"])
        .arg(&out3)
        .arg(&v3));
    assert_same_tree(&src, &out3.join("tree"));
}

/// An interrupted incremental run (Ctrl-C once its new batch exists) resumes with the same
/// command, still reusing the unchanged files it had not reached, and the result is whole.
#[test]
fn an_interrupted_incremental_run_resumes_and_still_reuses() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = t.path().join("tree");
    for i in 0..40 {
        write(
            &src.join(format!("f{i:02}")),
            format!("small {i}\n").as_bytes(),
        );
    }
    common::tree::gen_file(&src.join("old.bin"), 8 << 20, 1);
    let v1 = t.path().join("v1");
    encrypt_json(&home, &src, &v1, None);
    // New data large enough that the run is still sealing it when interrupted.
    common::tree::gen_file(&src.join("new.bin"), 192 << 20, 2);
    write(&src.join("f07"), b"changed\n");

    let v2 = t.path().join("v2");
    let mut child = envseal(&home)
        .args(["encrypt", "-q", "-j", "1", "--since"])
        .arg(&v1)
        .arg("-o")
        .arg(&v2)
        .arg(&src)
        .spawn()
        .unwrap();
    let journal = v2.join("journal.jsonl");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    // Wait for the new batch (the second batch record) before interrupting.
    while fs::read_to_string(&journal)
        .map(|j| j.matches("\"type\":\"batch\"").count() < 2)
        .unwrap_or(true)
    {
        assert!(std::time::Instant::now() < deadline, "no new batch in time");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    let interrupted = status.code() == Some(130);
    assert!(interrupted || status.success(), "{status:?}");

    if !interrupted {
        // It finished before the signal: nothing to resume (the machine was fast).
        eprintln!("the run finished before the interrupt; resume not exercised");
        let out = t.path().join("out");
        ok(envseal(&home)
            .args(["decrypt", "-q", "-o"])
            .arg(&out)
            .arg(&v2));
        assert_same_tree(&src, &out.join("tree"));
        return;
    }
    let r = encrypt_json(&home, &src, &v2, Some(&v1));
    // Finished: what is left of the journal is the one-line receipt (docs/FORMAT.md §7).
    let journal = fs::read_to_string(v2.join("journal.jsonl")).unwrap_or_default();
    assert!(journal.lines().count() <= 1, "{journal}");
    // Across both runs only new.bin and f07 are sealed: the rest is taken over, from the
    // earlier vault or from what the interrupted run committed (f07 possibly among it).
    let taken = r["reused_files"].as_u64().unwrap() + r["resumed_files"].as_u64().unwrap();
    let sealed = r["encrypted_files"].as_u64().unwrap();
    assert_eq!(taken + sealed, 42, "{r}");
    assert!(sealed <= 2, "only new.bin (and f07) sealed now: {r}");
    assert_eq!(r["files"], 42);
    let out = t.path().join("out");
    ok(envseal(&home)
        .args(["decrypt", "-q", "-o"])
        .arg(&out)
        .arg(&v2));
    assert_same_tree(&src, &out.join("tree"));
}
