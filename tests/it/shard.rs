//! One tree over many hosts, the plan and shard half (docs/SCALE-OUT.md): `envseal plan` cuts
//! a tree into balanced parts by its metadata alone, `encrypt --plan P --shard I` encrypts
//! one part as an ordinary resumable run, each part verifies on its own, and together the
//! parts hold the tree once.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::tree::{audit_count, code, fixture_copy, gen_file, ok, snapshot};
use crate::common::{self, envseal, stderr};

const HUGE: u64 = 256 << 20;

/// The fixture tree, 40 small files in `bulk/`, and one file far larger than a share.
fn source(dir: &Path) -> PathBuf {
    let src = fixture_copy(&dir.join("src"));
    for i in 0..40u64 {
        gen_file(&src.join(format!("bulk/f{i:02}")), (64 << 10) + i * 1024, i);
    }
    gen_file(&src.join("huge.img"), HUGE, 99);
    src
}

fn read_plan(p: &Path) -> Value {
    serde_json::from_slice(&fs::read(p).unwrap()).unwrap()
}

/// A shard's `field` (`from`/`until`) as text (a name that is not UTF-8, given as
/// `field_b64`, lossily, as `ls` shows it); `None` at the start or the end.
fn bound(s: &Value, field: &str) -> Option<String> {
    use base64::Engine;
    if let Some(b) = s[format!("{field}_b64")].as_str() {
        let bytes = base64::engine::general_purpose::STANDARD.decode(b).unwrap();
        return Some(String::from_utf8_lossy(&bytes).into_owned());
    }
    s[field].as_str().map(str::to_string)
}

/// Every path a vault lists (`ls --json`).
fn listed(home: &Path, vault: &Path) -> Vec<String> {
    let o = ok(envseal(home).args(["ls", "--json"]).arg(vault));
    common::stdout(&o)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["path"].as_str().unwrap().to_string()
        })
        .collect()
}

/// Batch records of a finished vault's manifest.
fn batches(vault: &Path) -> usize {
    crate::common::tree::manifest_records(vault)
        .iter()
        .filter(|r| r["type"] == "batch")
        .count()
}

fn shard_cmd(home: &Path, plan: &Path, i: usize, part: &Path) -> Command {
    let mut c = envseal(home);
    c.args(["encrypt", "-q", "--batch-max-files", "8", "--plan"])
        .arg(plan)
        .args(["--shard", &i.to_string(), "-o"])
        .arg(part);
    c
}

/// Waits until the part's journal holds a committed segment checkpoint, then kills the
/// run with SIGKILL; true if it was still running then.
fn kill_past_first_checkpoint(child: &mut Child, part: &Path) -> bool {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(120) {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        let journal = fs::read_to_string(part.join("journal.jsonl")).unwrap_or_default();
        if journal.contains(r#""type":"ckpt""#) {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let running = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    running
}

/// The plan of a tree into 4 parts, the 4 parts encrypted as 4 concurrent processes (the
/// one of the huge file killed with SIGKILL past its first checkpoint, then run again
/// alone): each part verifies deeply on its own, the parts' paths together are the tree's
/// (the directories on the way to a part's first path repeated), and the KMS generated one
/// data key per batch of all parts, the killed part's taken up again, not generated anew.
/// Merged, they restore the tree.
///
/// Balance, as asserted: weighing an entry `bytes/total_bytes + 1/total_entries`, the huge
/// file (weighing more than a quarter) is alone in its part, and every other part weighs
/// within half to twice an equal share of the rest.
#[test]
fn four_concurrent_parts_make_the_tree_once() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = source(t.path());
    // The CMK exists before the parts start, as it would on a cluster.
    let o = ok(envseal(&home).args(["kms", "create-key"]));
    let key: Value = serde_json::from_slice(&o.stdout).unwrap();
    let key_id = key["KeyMetadata"]["KeyId"].as_str().unwrap();
    ok(envseal(&home).args(["kms", "create-alias", "alias/shards", key_id]));

    let plan = t.path().join("plan.json");
    let o = ok(envseal(&home)
        .args(["plan", "--shards", "4", "--key", "alias/shards", "-o"])
        .arg(&plan)
        .arg(&src));
    let summary = stderr(&o);
    assert!(summary.contains("planned 4 shards"), "{summary}");
    let p = read_plan(&plan);
    let shards = p["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 4);
    assert_eq!(p["keys"][0], "local#alias/shards");
    assert_eq!(p["sources"][0]["path"], src.to_str().unwrap());

    // The ranges follow each other, and the counts add up to the totals.
    assert_eq!(bound(&shards[0], "from"), None);
    assert_eq!(bound(&shards[3], "until"), None);
    for w in shards.windows(2) {
        assert_eq!(bound(&w[0], "until"), bound(&w[1], "from"), "{p:#}");
    }
    let sum = |f: &str| shards.iter().map(|s| s[f].as_u64().unwrap()).sum::<u64>();
    for f in ["entries", "files", "bytes"] {
        assert_eq!(sum(f), p["totals"][f].as_u64().unwrap(), "{f}: {p:#}");
    }
    // The tree: the fixture's entries and empty-dir, bulk/ and its 40 files, huge.img.
    let tree_paths = snapshot(&src);
    assert_eq!(
        p["totals"]["entries"].as_u64().unwrap(),
        tree_paths.len() as u64
    );

    // Balance.
    let (te, tb) = (
        p["totals"]["entries"].as_f64().unwrap(),
        p["totals"]["bytes"].as_f64().unwrap(),
    );
    let weight =
        |s: &Value| s["entries"].as_f64().unwrap() / te + s["bytes"].as_f64().unwrap() / tb;
    let huge: Vec<&Value> = shards
        .iter()
        .filter(|s| s["bytes"].as_u64().unwrap() >= HUGE)
        .collect();
    assert_eq!(huge.len(), 1, "{p:#}");
    assert_eq!(huge[0]["files"], 1, "the huge file shares its part: {p:#}");
    assert_eq!(bound(huge[0], "from").as_deref(), Some("tree/huge.img"));
    let share = (2.0 - weight(huge[0])) / 3.0;
    for s in shards
        .iter()
        .filter(|s| s["bytes"].as_u64().unwrap() < HUGE)
    {
        let w = weight(s);
        assert!(
            w >= share / 2.0 && w <= share * 2.0,
            "shard {} weighs {w:.3}, an equal share is {share:.3}: {p:#}",
            s["index"]
        );
    }
    let huge_index = huge[0]["index"].as_u64().unwrap() as usize;

    // Four concurrent runs; the huge part's with checkpoints every MiB, killed past one.
    let parts: Vec<PathBuf> = (0..4).map(|i| t.path().join(format!("part{i}"))).collect();
    let mut children: Vec<Child> = (0..4)
        .map(|i| {
            let mut c = shard_cmd(&home, &plan, i, &parts[i]);
            if i == huge_index {
                c.env("ENVSEAL_TEST_CHECKPOINT_BYTES", (1u64 << 20).to_string())
                    .args(["-j", "1"]);
            }
            c.stderr(Stdio::piped()).spawn().unwrap()
        })
        .collect();
    let killed = kill_past_first_checkpoint(&mut children[huge_index], &parts[huge_index]);
    assert!(killed, "the huge part finished before it could be killed");
    assert!(!parts[huge_index].join("manifest.jsonl").exists());
    for (i, c) in children.into_iter().enumerate() {
        if i != huge_index {
            let o = c.wait_with_output().unwrap();
            assert_eq!(code(&o), 0, "shard {i}: {}", stderr(&o));
        }
    }
    // The same command finishes the killed part alone.
    let o = shard_cmd(&home, &plan, huge_index, &parts[huge_index])
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "rerun of shard {huge_index}: {}", stderr(&o));

    let mut total_batches = 0;
    let mut union: Vec<String> = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        let o = envseal(&home)
            .args(["verify", "-q", "--deep"])
            .arg(part)
            .output()
            .unwrap();
        assert_eq!(code(&o), 0, "verify --deep of part {i}: {}", stderr(&o));
        let recs = crate::common::tree::manifest_records(part);
        assert_eq!(recs[0]["vault_id"], p["vault_id"], "part {i}");
        assert_eq!(
            recs[0]["shard"],
            serde_json::json!({"index": i, "count": 4})
        );
        total_batches += batches(part);
        let paths = listed(&home, part);
        assert_eq!(
            paths.len() as u64 - shards[i]["entries"].as_u64().unwrap(),
            // The directories on the way to its first path, which the part before holds.
            bound(&shards[i], "from").map_or(0, |f| f.matches('/').count() as u64),
            "part {i}: {paths:?}"
        );
        for path in paths {
            if union.contains(&path) {
                assert!(
                    bound(&shards[i], "from").is_some_and(|f| f.starts_with(&format!("{path}/"))),
                    "part {i} repeats {path}, which is not on the way to its first path"
                );
            } else {
                union.push(path);
            }
        }
    }
    let want: BTreeSet<String> = tree_paths
        .keys()
        .map(|k| {
            let rel = String::from_utf8_lossy(k);
            if rel.is_empty() {
                "tree".to_string()
            } else {
                format!("tree/{rel}")
            }
        })
        .collect();
    let got: BTreeSet<String> = union.iter().cloned().collect();
    assert_eq!(got.len(), union.len());
    assert_eq!(got, want);
    // One GenerateDataKey per batch of all parts (the killed part's batch unwrapped again).
    assert!(total_batches >= 8, "{total_batches} batches");
    assert_eq!(audit_count(&home, "GenerateDataKey"), total_batches);

    // Merged, the parts restore the tree as it was.
    let vault = t.path().join("merged");
    ok(envseal(&home)
        .args(["merge", "-q", "-o"])
        .arg(&vault)
        .args(&parts));
    ok(envseal(&home).args(["verify", "-q", "--deep"]).arg(&vault));
    let out = t.path().join("out");
    crate::common::tree::decrypt_ok(&home, &vault, &out, &[]);
    crate::common::tree::assert_same_tree(&src, &out.join("tree"));
}

/// A run with --plan takes its sources, keys and options from the plan: each of them
/// given too is refused (exit 2, naming it, nothing created), as are a shard out of range,
/// a plan file that is missing or does not parse, and plans that encrypt would refuse.
/// ENVSEAL_KMS in the environment is not a flag: it is ignored.
#[test]
fn what_the_plan_fixes_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = t.path().join("src");
    for i in 0..6 {
        common::tree::write(&src.join(format!("d/{i}")), &[b'x'; 100]);
    }
    let plan = t.path().join("plan.json");
    ok(envseal(&home)
        .args(["plan", "-q", "--shards", "2", "-o"])
        .arg(&plan)
        .arg(&src));
    let before = fs::read(&plan).unwrap();
    let part = t.path().join("part");
    let src_arg = src.to_str().unwrap();
    let since = t.path().join("earlier");
    let cases: [(&[&str], &str); 8] = [
        (&[src_arg], "SRC arguments"),
        (&["--key", "alias/other"], "--key"),
        (&["--kms", "local"], "--kms"),
        (&["--exclude", "*.tmp"], "--exclude"),
        (&["--segment-size", "64KiB"], "--segment-size"),
        (&["--conceal-names"], "--conceal-names"),
        (&["--since", since.to_str().unwrap()], "--since"),
        (&["--compress", "zstd"], "--compress"),
    ];
    for (extra, flag) in cases {
        let o = envseal(&home)
            .args(["encrypt", "--plan"])
            .arg(&plan)
            .args(["--shard", "0", "-o"])
            .arg(&part)
            .args(extra)
            .output()
            .unwrap();
        let e = stderr(&o);
        assert_eq!(code(&o), 2, "{flag}: {e}");
        assert!(
            e.contains(&format!(
                "{flag} cannot be given with --plan: the plan fixes it"
            )),
            "{flag}: {e}"
        );
        assert!(!part.exists(), "{flag}: a vault was created");
    }
    let run = |plan: &Path, shard: &str| {
        envseal(&home)
            .args(["encrypt", "-q", "--plan"])
            .arg(plan)
            .args(["--shard", shard, "-o"])
            .arg(&part)
            .output()
            .unwrap()
    };
    let o = run(&plan, "2");
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("--shard 2: the plan"), "{}", stderr(&o));
    let bad = t.path().join("bad.json");
    fs::write(&bad, br#"{"envseal_plan":1,"vault_id":"00"}"#).unwrap();
    let o = run(&bad, "0");
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("--plan {}: not a plan file", bad.display())),
        "{}",
        stderr(&o)
    );
    let o = run(&t.path().join("missing.json"), "0");
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("missing.json: does not exist"),
        "{}",
        stderr(&o)
    );
    assert!(!part.exists());
    // ENVSEAL_KMS set (as on a cluster's nodes) is not a --kms flag.
    let o = envseal(&home)
        .env("ENVSEAL_KMS", "local")
        .args(["encrypt", "-q", "--plan"])
        .arg(&plan)
        .args(["--shard", "1", "-o"])
        .arg(&part)
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));

    // plan refuses what encrypt would, and keeps an existing plan unless --force.
    let plan_args = |extra: &[&str], srcs: &[&Path]| {
        let mut c = envseal(&home);
        c.args(["plan", "-q", "-o"])
            .arg(&plan)
            .args(extra)
            .args(srcs);
        c.output().unwrap()
    };
    let other = t.path().join("other/src");
    fs::create_dir_all(&other).unwrap();
    for (extra, srcs, what) in [
        (&["--shards", "2"][..], &[src.as_path()][..], "exists"),
        (
            &["--shards", "0", "--force"],
            &[src.as_path()],
            "--shards 0",
        ),
        (
            &["--shards", "4097", "--force"],
            &[src.as_path()],
            "--shards 4097",
        ),
        (
            &["--shards", "2", "--force"],
            &[src.as_path(), other.as_path()],
            "base name",
        ),
        (
            &["--shards", "2", "--force"],
            &[t.path().join("nope").as_path()],
            "does not exist",
        ),
        (
            &["--shards", "2", "--force", "--exclude", "["],
            &[src.as_path()],
            "--exclude",
        ),
        (
            &["--shards", "2", "--force", "--segment-size", "1000"],
            &[src.as_path()],
            "--segment-size",
        ),
    ] {
        let o = plan_args(extra, srcs);
        assert_eq!(code(&o), 2, "{what}: {}", stderr(&o));
        assert!(stderr(&o).contains(what), "{what}: {}", stderr(&o));
        assert_eq!(fs::read(&plan).unwrap(), before, "{what}: the plan changed");
    }
    let o = plan_args(&["--shards", "3", "--force"], &[src.as_path()]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(read_plan(&plan)["shards"].as_array().unwrap().len(), 3);
}

/// A part of a plan made again at the same path (the same cuts, another vault id) is
/// refused, unfinished or finished: it would not merge with the new plan's other parts.
#[test]
fn a_part_of_another_plan_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = t.path().join("src");
    gen_file(&src.join("big"), 128 << 20, 7);
    let plan = t.path().join("plan.json");
    ok(envseal(&home)
        .args(["plan", "-q", "--shards", "1", "-o"])
        .arg(&plan)
        .arg(&src));
    let part = t.path().join("part");
    let mut child = shard_cmd(&home, &plan, 0, &part)
        .env("ENVSEAL_TEST_CHECKPOINT_BYTES", (1u64 << 20).to_string())
        .args(["-j", "1"])
        .spawn()
        .unwrap();
    assert!(kill_past_first_checkpoint(&mut child, &part));
    let first = fs::read(&plan).unwrap();
    let mut other = read_plan(&plan);
    other["vault_id"] = Value::from("00".repeat(16));
    fs::write(&plan, serde_json::to_vec(&other).unwrap()).unwrap();
    let o = shard_cmd(&home, &plan, 0, &part).output().unwrap();
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("a part of another plan"),
        "{}",
        stderr(&o)
    );
    // With its own plan it finishes; then the other plan is refused again.
    fs::write(&plan, &first).unwrap();
    ok(&mut shard_cmd(&home, &plan, 0, &part));
    fs::write(&plan, serde_json::to_vec(&other).unwrap()).unwrap();
    let o = shard_cmd(&home, &plan, 0, &part).output().unwrap();
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("a part of another plan"),
        "{}",
        stderr(&o)
    );
}

/// Memory: plan of 200,000 empty files in a tmpfs (1,000 directories of `PER_DIR` files),
/// measured for the plan process alone (`peak_rss_kib`), within the million-file bound
/// scaled to them: 512 MiB per 1,000,000 files, about 537 bytes a file (so 102 MiB here).
/// The million-file case itself is `benches/plan-million.sh`.
#[test]
fn plan_of_many_files_in_bounded_memory() {
    const DIRS: usize = 1000;
    const PER_DIR: usize = 200;
    let t = tempfile::tempdir().unwrap();
    let Some(fs_) = common::Tmpfs::mount(&t.path().join("tmpfs"), "64m,nr_inodes=400000") else {
        eprintln!("skipping: cannot mount a tmpfs here");
        return;
    };
    let src = fs_.0.join("many");
    for d in 0..DIRS {
        let dir = src.join(format!("d{d:04}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..PER_DIR {
            fs::File::create(dir.join(format!("f{f:04}"))).unwrap();
        }
    }
    let plan = t.path().join("plan.json");
    let home = t.path().join("home");
    let mut plan_cmd = envseal(&home);
    plan_cmd
        .args(["plan", "-q", "--shards", "64", "-o"])
        .arg(&plan)
        .arg(&src);
    let Some(max_rss_kib) = peak_rss_kib(plan_cmd) else {
        eprintln!("skipping: neither /usr/bin/time nor python3 to measure a child's peak RSS");
        return;
    };
    let p = read_plan(&plan);
    let files = (DIRS * PER_DIR) as u64;
    assert_eq!(p["totals"]["files"].as_u64().unwrap(), files);
    for s in p["shards"].as_array().unwrap() {
        let n = s["entries"].as_u64().unwrap();
        let share = (files + DIRS as u64 + 1) / 64;
        assert!(n.abs_diff(share) <= 2, "{s}");
    }
    eprintln!("plan of {files} files: peak RSS {max_rss_kib} KiB");
    let bound_kib = 512 * 1024 * files / 1_000_000;
    assert!(
        max_rss_kib < bound_kib,
        "peak RSS {max_rss_kib} KiB, over {bound_kib} KiB"
    );
}

/// Runs `cmd`, which must succeed, and returns its peak RSS in KiB, measured by a small
/// launcher (GNU time, else python3's wait4): the kernel carries a process's high-water mark
/// over `exec`, so a child forked from this large test process directly would count it too.
fn peak_rss_kib(cmd: Command) -> Option<u64> {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("rss");
    let mut launcher = if Path::new("/usr/bin/time").exists() {
        let mut l = Command::new("/usr/bin/time");
        l.args(["-f", "%M", "-o"]).arg(&out);
        l
    } else if Command::new("python3").arg("-V").output().is_ok() {
        let mut l = Command::new("python3");
        l.args([
            "-c",
            "import os,sys; pid=os.spawnv(os.P_NOWAIT,sys.argv[2],sys.argv[2:]); \
             _,st,ru=os.wait4(pid,0); open(sys.argv[1],'w').write(str(ru.ru_maxrss)); \
             sys.exit(os.waitstatus_to_exitcode(st))",
        ])
        .arg(&out);
        l
    } else {
        return None;
    };
    launcher.arg(cmd.get_program()).args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => launcher.env(k, v),
            None => launcher.env_remove(k),
        };
    }
    let o = launcher.output().unwrap();
    assert!(o.status.success(), "{launcher:?}: {}", stderr(&o));
    let text = fs::read_to_string(&out).unwrap();
    Some(text.trim().lines().last().unwrap().trim().parse().unwrap())
}

/// `plan --compress`: the plan records the level, every part compresses (packed files and
/// a file of its own alike, docs/FORMAT.md §4.5), and the merged vault restores exactly.
#[test]
fn a_compressed_plan_compresses_every_part() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = t.path().join("src");
    let line = b"2026-12-07T12:00:00Z INFO request served status=200 bytes=512\n";
    let text: Vec<u8> = line.iter().copied().cycle().take(10 << 20).collect();
    common::tree::write(&src.join("big.log"), &text);
    for i in 0..12 {
        common::tree::write(
            &src.join(format!("logs/{i:02}.log")),
            &text[..(200 << 10) + i],
        );
    }
    let plan = t.path().join("plan.json");
    ok(envseal(&home)
        .args(["plan", "-q", "--shards", "3", "--compress", "zstd:5", "-o"])
        .arg(&plan)
        .arg(&src));
    assert_eq!(read_plan(&plan)["compress"], 5);
    let parts: Vec<PathBuf> = (0..3).map(|i| t.path().join(format!("part{i}"))).collect();
    for (i, part) in parts.iter().enumerate() {
        ok(&mut shard_cmd(&home, &plan, i, part));
    }
    let vault = t.path().join("merged");
    ok(envseal(&home)
        .args(["merge", "-q", "-o"])
        .arg(&vault)
        .args(&parts));
    let files: Vec<_> = crate::common::tree::manifest_records(&vault)
        .into_iter()
        .filter(|r| r["type"] == "entry" && r["kind"] == "file")
        .collect();
    assert_eq!(files.len(), 13);
    assert!(
        files.iter().all(|r| r["rlen"].as_u64().is_some()),
        "{files:?}"
    );
    let stored = crate::common::tree::objects_bytes(&vault);
    assert!(
        stored < 1 << 20,
        "{stored} bytes stored for 12.4 MiB of logs"
    );
    ok(envseal(&home).args(["verify", "--deep", "-q"]).arg(&vault));
    let out = t.path().join("out");
    ok(envseal(&home)
        .args(["decrypt", "-q", "-o"])
        .arg(&out)
        .arg(&vault));
    crate::common::tree::assert_same_tree(&src, &out.join("src"));
}
