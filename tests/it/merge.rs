//! `envseal merge`: parts of a sharded run (made here through the library, as
//! `encrypt --plan --shard` makes them) joined into one vault that verifies and restores
//! like a single run's; refusals before anything is written; a killed merge finishes when run
//! again; parts on the object store merged by server-side copies; memory bounded.

use crate::common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use envseal::format::manifest::ShardMark;
use envseal::fs::tree::PathRange;
use envseal::kms::keys::Kms;
use envseal::kms::local::LocalProvider;
use envseal::kms::KmsOptions;
use envseal::pipeline::encrypt::{encrypt, EncryptOptions, ShardRun};
use envseal::progress::NoProgress;
use envseal::store::Location;

use common::tree::{assert_same_tree, audit_count, code, gen_file, manifest_records, write};
use common::{envseal, stderr, stdout};

/// A key store under `home` (where the CLI looks, so that audit counts see both).
fn kms(home: &Path) -> (Kms, String) {
    let store = home.join("keystore");
    let url = format!("local:{}", store.display());
    let p = LocalProvider::open(Some(&store), &KmsOptions::default()).unwrap();
    (
        Kms::new(KmsOptions::default(), None).with_provider(&url, Arc::new(p)),
        url,
    )
}

/// Encrypts `src` as the parts of one plan cut at `bounds` (N − 1 boundary paths), part `i`
/// into `out/part-i`; `vault_id` is the plan's.
fn make_parts(
    home: &Path,
    src: &Path,
    out: &Path,
    bounds: &[&str],
    vault_id: [u8; 16],
    conceal: bool,
) -> Vec<PathBuf> {
    let (kms, url) = kms(home);
    let mut cuts: Vec<Option<Vec<u8>>> = vec![None];
    cuts.extend(bounds.iter().map(|b| Some(b.as_bytes().to_vec())));
    cuts.push(None);
    let count = cuts.len() as u32 - 1;
    (0..count)
        .map(|i| make_part(&kms, &url, src, out, &cuts, i, count, vault_id, conceal))
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn make_part(
    kms: &Kms,
    url: &str,
    src: &Path,
    out: &Path,
    cuts: &[Option<Vec<u8>>],
    i: u32,
    count: u32,
    vault_id: [u8; 16],
    conceal: bool,
) -> PathBuf {
    let vault = out.join(format!("part-{i}"));
    let opts = EncryptOptions {
        jobs: 2,
        sync: false,
        conceal_names: conceal,
        shard: Some(ShardRun {
            plan: out.join("plan.json"),
            vault_id,
            mark: ShardMark { index: i, count },
            range: PathRange {
                from: cuts[i as usize].clone(),
                until: cuts[i as usize + 1].clone(),
            },
        }),
        ..EncryptOptions::new(vec![src.to_path_buf()], vault.clone(), url)
    };
    encrypt(&opts, kms, &NoProgress, &AtomicBool::new(false)).unwrap();
    vault
}

fn plan_id(n: u8) -> [u8; 16] {
    let mut id = [0x5a; 16];
    id[0] = n;
    id
}

/// Nested directories, empty ones, symlinks, an extended attribute, and a hard-link group
/// (`a/h1`, `c/h2`, `c/h3`) that the bounds below split across parts 1 and 3.
fn tree(root: &Path) -> PathBuf {
    let src = root.join("data");
    for d in ["a/deep/er", "a/empty", "b/sub", "c", "d/empty"] {
        fs::create_dir_all(src.join(d)).unwrap();
    }
    for (i, f) in [
        "a/1",
        "a/2",
        "a/deep/x",
        "a/deep/er/y",
        "b/f",
        "b/sub/g",
        "c/z",
    ]
    .iter()
    .enumerate()
    {
        gen_file(&src.join(f), 1000 + 7000 * i as u64, i as u64);
    }
    gen_file(&src.join("b/big"), 3 << 20, 99);
    write(&src.join("a/h1"), b"one inode, three names");
    fs::hard_link(src.join("a/h1"), src.join("c/h2")).unwrap();
    fs::hard_link(src.join("a/h1"), src.join("c/h3")).unwrap();
    std::os::unix::fs::symlink("../a/1", src.join("b/link")).unwrap();
    std::os::unix::fs::symlink("/nowhere", src.join("c/dangling")).unwrap();
    xattr::set(src.join("b/f"), "user.envseal-merge", b"kept across parts").unwrap();
    xattr::set(src.join("c/z"), "user.envseal-merge", b"part three").unwrap();
    src
}

/// Three cuts: part 0 `data … data/a/deep/er/y`-ish, part 1 from `data/a/deep/x`, part 2 from
/// `data/b`, part 3 from `data/c`.
const BOUNDS: [&str; 3] = ["data/a/deep/x", "data/b", "data/c"];

fn merge_json(home: &Path, parts: &[PathBuf], vault: &Path, extra: &[&str]) -> serde_json::Value {
    let o = common::tree::ok(
        envseal(home)
            .args(["merge", "-q", "--json"])
            .args(parts)
            .args(extra)
            .arg("-o")
            .arg(vault),
    );
    serde_json::from_str(&stdout(&o)).unwrap()
}

/// verify, verify --deep, decrypt: the merged vault is the source tree, hard links one inode
/// again, attributes kept.
fn check_restores(home: &Path, src: &Path, vault: &Path, dest: &Path) {
    common::tree::ok(envseal(home).args(["verify", "-q"]).arg(vault));
    common::tree::ok(envseal(home).args(["verify", "-q", "--deep"]).arg(vault));
    common::tree::decrypt_ok(home, vault, dest, &[]);
    let back = dest.join("data");
    assert_same_tree(src, &back);
    let ino = |p: &str| fs::metadata(back.join(p)).unwrap().ino();
    assert_eq!(
        ino("a/h1"),
        ino("c/h2"),
        "a split hard-link group is one inode again"
    );
    assert_eq!(ino("a/h1"), ino("c/h3"));
    assert_eq!(fs::metadata(back.join("a/h1")).unwrap().nlink(), 3);
    assert_eq!(
        xattr::get(back.join("c/z"), "user.envseal-merge")
            .unwrap()
            .as_deref(),
        Some(&b"part three"[..])
    );
    assert_eq!(
        xattr::get(back.join("b/f"), "user.envseal-merge")
            .unwrap()
            .as_deref(),
        Some(&b"kept across parts"[..])
    );
}

fn merged_parts_restore(conceal: bool) {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = tree(t.path());
    let parts = make_parts(&home, &src, t.path(), &BOUNDS, plan_id(1), conceal);
    // Each part is a vault of its own, marked as a part.
    for p in &parts {
        common::tree::ok(envseal(&home).args(["verify", "-q"]).arg(p));
    }
    let batches: usize = parts
        .iter()
        .map(|p| {
            let recs = manifest_records(p);
            assert!(recs[0]["shard"].is_object());
            recs.iter().filter(|r| r["type"] == "batch").count()
        })
        .sum();
    let objects_in_parts: u64 = parts
        .iter()
        .flat_map(|p| manifest_records(p))
        .filter(|r| r["type"] == "object")
        .map(|r| r["len"].as_u64().unwrap())
        .sum();
    let vault = t.path().join("merged");
    let decrypts = audit_count(&home, "Decrypt");
    // Given in another order than the shards': merge orders them.
    let mut given = parts.clone();
    given.reverse();
    let r = merge_json(&home, &given, &vault, &[]);
    assert_eq!(r["parts"], 4);
    assert_eq!(r["batches"].as_u64().unwrap() as usize, batches);
    // One Decrypt per batch of every part.
    assert_eq!(audit_count(&home, "Decrypt") - decrypts, batches);
    assert_eq!(r["unwrapped_batches"].as_u64().unwrap() as usize, batches);
    assert_eq!(r["joined_links"], 1, "{r}");
    assert!(r["repeated_dirs"].as_u64().unwrap() >= 4, "{r}");
    // Same filesystem: every object hard-linked, no byte copied; c/h2's record is not
    // carried over (it is a link to a/h1 now), nor anything else.
    assert_eq!(r["bytes_copied"], 0);
    assert_eq!(r["objects_linked"], r["objects"]);
    assert!(r["bytes_linked"].as_u64().unwrap() <= objects_in_parts);
    let recs = manifest_records(&vault);
    assert!(
        recs[0].get("shard").is_none(),
        "the merged vault is no part"
    );
    assert_eq!(recs[0]["conceal_names"], conceal);
    check_restores(&home, &src, &vault, &t.path().join("restored"));
    // The merged vault is finished: a second merge into it is refused.
    let o = common::run(
        envseal(&home)
            .args(["merge", "-q"])
            .args(&parts)
            .arg("-o")
            .arg(&vault),
    );
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("finished vault"), "{}", stderr(&o));
}

#[test]
fn merged_parts_restore_the_tree() {
    merged_parts_restore(false);
}

#[test]
fn merged_concealed_parts_restore_the_tree() {
    merged_parts_restore(true);
}

/// Refused before anything is written (exit 2, nothing at VAULT): parts of two plans, a
/// missing shard, a shard twice, two parts that overlap, a vault that is no part.
#[test]
fn merge_refuses_what_does_not_join() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = t.path().join("data");
    for i in 0..6 {
        gen_file(&src.join(format!("d{}/f{i}", i % 3)), 2000, i);
    }
    let one = make_parts(
        &home,
        &src,
        &t.path().join("one"),
        &["data/d1"],
        plan_id(1),
        false,
    );
    let two = make_parts(
        &home,
        &src,
        &t.path().join("two"),
        &["data/d1"],
        plan_id(2),
        false,
    );
    // Two parts of one plan that both hold the whole tree.
    let (k, url) = kms(&home);
    let cuts = [None, None, None];
    let over = t.path().join("over");
    let overlapping: Vec<PathBuf> = (0..2)
        .map(|i| make_part(&k, &url, &src, &over, &cuts, i, 2, plan_id(3), false))
        .collect();
    let whole = t.path().join("whole");
    common::tree::encrypt_ok(&home, &src, &whole, &[]);

    let vault = t.path().join("merged");
    let refused = |parts: &[&PathBuf], says: &str| {
        let o = common::run(
            envseal(&home)
                .args(["merge", "-q"])
                .args(parts)
                .arg("-o")
                .arg(&vault),
        );
        assert_eq!(code(&o), 2, "{says}: {}", stderr(&o));
        assert!(stderr(&o).contains(says), "{says}: {}", stderr(&o));
        assert!(!vault.exists(), "{says}: something was created");
    };
    refused(&[&one[0], &two[1]], "not parts of one run: another plan");
    refused(&[&one[0]], "missing shard 1 of 2");
    refused(&[&one[1]], "missing shard 0 of 2");
    refused(&[&one[0], &one[1], &one[1]], "shard 1 given twice");
    refused(&[&overlapping[0], &overlapping[1]], "overlap");
    refused(&[&whole], "not a part of a sharded run");
    // A directory that holds something else is not a new vault.
    fs::create_dir_all(&vault).unwrap();
    write(&vault.join("notes.txt"), b"mine");
    let o = common::run(
        envseal(&home)
            .args(["merge", "-q"])
            .args(&one)
            .arg("-o")
            .arg(&vault),
    );
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("not empty"), "{}", stderr(&o));
    assert_eq!(fs::read_dir(&vault).unwrap().count(), 1);
    // An empty directory is fine.
    fs::remove_file(vault.join("notes.txt")).unwrap();
    let r = merge_json(&home, &one, &vault, &[]);
    assert_eq!(r["entries"].as_u64().unwrap(), 10);
    common::tree::ok(envseal(&home).args(["verify", "-q", "--deep"]).arg(&vault));
}

/// A part whose manifest was changed fails its authentication (exit 3) before anything is
/// written; a part whose records were copied into another is refused (exit 2).
#[test]
fn a_tampered_or_copied_part_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = t.path().join("data");
    for i in 0..6 {
        gen_file(&src.join(format!("d{}/f{i}", i % 3)), 2000, i);
    }
    let parts = make_parts(
        &home,
        &src,
        t.path(),
        &["data/d1", "data/d2"],
        plan_id(4),
        false,
    );
    let vault = t.path().join("merged");
    let merge = |parts: &[&Path]| {
        common::run(
            envseal(&home)
                .args(["merge", "-q"])
                .args(parts)
                .arg("-o")
                .arg(&vault),
        )
    };
    // An entry's mtime changed: valid JSON, a MAC that no longer matches.
    let tampered = t.path().join("tampered");
    common::tree::copy_vault(&parts[2], &tampered);
    let m = tampered.join("manifest.jsonl");
    let text = fs::read_to_string(&m).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("\"kind\":\"file\""))
        .unwrap();
    let changed = line.replacen("\"mtime\":", "\"mtime\":1", 1);
    fs::write(&m, text.replacen(line, &changed, 1)).unwrap();
    let o = merge(&[&parts[0], &parts[1], &tampered]);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("authentication failed"),
        "{}",
        stderr(&o)
    );
    assert!(!vault.exists());
    // Shard 1's records given as shard 2 (its mark edited; refused before any key is used).
    let copied = t.path().join("copied");
    common::tree::copy_vault(&parts[1], &copied);
    let m = copied.join("manifest.jsonl");
    let text = fs::read_to_string(&m).unwrap();
    fs::write(&m, text.replacen("\"index\":1,", "\"index\":2,", 1)).unwrap();
    let o = merge(&[&parts[0], &parts[1], &copied]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("share the batch or object"),
        "{}",
        stderr(&o)
    );
    assert!(!vault.exists());
}

/// Parts on another filesystem (tmpfs) are copied through the process; a merge killed after
/// some objects is run again and finishes, keeping the objects already in place.
#[test]
fn killed_merge_finishes_when_run_again() {
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        eprintln!("no /dev/shm: skipped");
        return;
    }
    let on_shm = tempfile::tempdir_in(shm).unwrap();
    let t = tempfile::tempdir().unwrap();
    if fs::metadata(on_shm.path()).unwrap().dev() == fs::metadata(t.path()).unwrap().dev() {
        eprintln!("/dev/shm is the temporary directory's filesystem: skipped");
        return;
    }
    let home = t.path().join("home");
    let src = t.path().join("data");
    for i in 0..8u64 {
        gen_file(&src.join(format!("d{}/big{i}", i % 4)), 24 << 20, i);
    }
    let parts = make_parts(
        &home,
        &src,
        on_shm.path(),
        &["data/d1", "data/d2", "data/d3"],
        plan_id(7),
        false,
    );
    let vault = t.path().join("merged");
    let mut child = envseal(&home)
        .args(["merge", "-q"])
        .args(&parts)
        .arg("-o")
        .arg(&vault)
        .spawn()
        .unwrap();
    // Killed once two objects are whole (a third may be cut short under its name).
    let whole = |v: &Path| {
        common::tree::files_under(&v.join("objects"))
            .iter()
            .filter(|p| fs::metadata(v.join("objects").join(p)).unwrap().len() > 24 << 20)
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while whole(&vault) < 2 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before the kill"
        );
        assert!(Instant::now() < deadline, "no object copied");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!vault.join("manifest.jsonl").exists());
    // A reader sees no vault yet.
    let o = common::run(envseal(&home).args(["verify", "-q"]).arg(&vault));
    assert_ne!(code(&o), 0);
    let r = merge_json(&home, &parts, &vault, &[]);
    assert!(r["objects_in_place"].as_u64().unwrap() >= 2, "{r}");
    assert_eq!(
        r["objects_in_place"].as_u64().unwrap() + r["objects_copied"].as_u64().unwrap(),
        8
    );
    common::tree::ok(envseal(&home).args(["verify", "-q", "--deep"]).arg(&vault));
    let dest = t.path().join("restored");
    common::tree::decrypt_ok(&home, &vault, &dest, &[]);
    assert_same_tree(&src, &dest.join("data"));
}

/// Parts in the bucket merged into a vault in the same bucket: the objects are copied by the
/// server (the bytes it receives are the manifest and key files, not the objects).
#[test]
fn parts_on_the_object_store_merge_by_server_side_copies() {
    let Some(server) = common::s3::SeaweedFs::start() else {
        eprintln!("no SeaweedFS: skipped");
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = t.path().join("data");
    for i in 0..4u64 {
        gen_file(&src.join(format!("d{i}/big")), 6 << 20, i);
        gen_file(&src.join(format!("d{i}/small")), 3000, i + 10);
    }
    let local = make_parts(
        &home,
        &src,
        t.path(),
        &["data/d1", "data/d2", "data/d3"],
        plan_id(9),
        false,
    );
    // The parts uploaded as they are (what `encrypt --plan --shard -o s3://…` leaves).
    let mut urls = Vec::new();
    let mut object_bytes = 0u64;
    for (i, p) in local.iter().enumerate() {
        let from = envseal::store::open(&Location::Local(p.clone())).unwrap();
        let to = server.store(&format!("parts/{i}"));
        for l in from.list("").unwrap() {
            if l.name.starts_with("objects/") {
                object_bytes += l.len;
            }
            envseal::store::copy(&*from, &to, &l.name).unwrap();
        }
        urls.push(format!("s3://{}/parts/{i}", common::s3::BUCKET));
    }
    let vault = format!("s3://{}/merged", common::s3::BUCKET);
    let cli = |args: &[&str]| -> Command {
        let mut c = envseal(&home);
        c.envs(server.vars())
            .env_remove("AWS_ENDPOINT_URL")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_DEFAULT_REGION")
            .args(args);
        c
    };
    let (received0, _) = server.traffic();
    let mut args = vec!["merge", "-q", "--json"];
    args.extend(urls.iter().map(String::as_str));
    args.extend(["-o", &vault]);
    let o = common::tree::ok(&mut cli(&args));
    let received = server.traffic().0 - received0;
    let r: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    eprintln!("merge: the server received {received} bytes for {object_bytes} bytes of objects");
    assert_eq!(r["bytes_copied"], 0, "{r}");
    assert_eq!(r["bytes_linked"].as_u64().unwrap(), object_bytes);
    assert!(
        received < object_bytes / 20,
        "{received} bytes sent for {object_bytes} bytes of objects"
    );
    common::tree::ok(&mut cli(&["verify", "-q", "--deep", &vault]));
    let dest = t.path().join("restored");
    common::tree::ok(&mut cli(&[
        "decrypt",
        "-q",
        &vault,
        "-o",
        dest.to_str().unwrap(),
    ]));
    assert_same_tree(&src, &dest.join("data"));
}

/// Peak RSS (KiB) of `envseal merge ARGS`, measured by GNU time, whose child it is: a child
/// of this test process would inherit its high-water mark (kept across exec), not its own.
fn peak_rss_kib(home: &Path, args: &[&std::ffi::OsStr]) -> Option<u64> {
    let time = Path::new("/usr/bin/time");
    if !time.exists() {
        assert!(
            std::env::var_os("CI").is_none_or(|v| v.is_empty()),
            "CI is set but there is no /usr/bin/time (.ci/run installs it)"
        );
        return None;
    }
    let out = tempfile::NamedTempFile::new().unwrap();
    let mut c = Command::new(time);
    c.args(["-f", "%M", "-o"])
        .arg(out.path())
        .arg(env!("CARGO_BIN_EXE_envseal"))
        .args(args)
        .env("ENVSEAL_HOME", home)
        .env_remove("ENVSEAL_KMS")
        .env_remove("RUST_BACKTRACE");
    common::tree::ok(&mut c);
    Some(
        fs::read_to_string(out.path())
            .unwrap()
            .trim()
            .parse()
            .unwrap(),
    )
}

/// A tree of `per_part` tiny files per part, 4 parts, merged; returns (entries, peak KiB).
fn merge_tiny_files(per_part: usize) -> Option<(u64, u64)> {
    let shm = Path::new("/dev/shm");
    let t = if shm.is_dir() {
        tempfile::tempdir_in(shm).or_else(|_| tempfile::tempdir())
    } else {
        tempfile::tempdir()
    }
    .unwrap();
    let home = t.path().join("home");
    let src = t.path().join("data");
    for d in 0..4 {
        let dir = src.join(format!("d{d}"));
        fs::create_dir_all(&dir).unwrap();
        for i in 0..per_part {
            fs::write(dir.join(format!("{i:07}")), i.to_le_bytes()).unwrap();
        }
    }
    let parts = make_parts(
        &home,
        &src,
        t.path(),
        &["data/d1", "data/d2", "data/d3"],
        plan_id(11),
        false,
    );
    let vault = t.path().join("merged");
    let mut args: Vec<&std::ffi::OsStr> = vec!["merge".as_ref(), "-q".as_ref()];
    args.extend(parts.iter().map(|p| p.as_os_str()));
    args.extend(["-o".as_ref(), vault.as_os_str()]);
    let kib = peak_rss_kib(&home, &args)?;
    let entries = manifest_records(&vault)
        .iter()
        .filter(|r| r["type"] == "entry")
        .count() as u64;
    Some((entries, kib))
}

/// A clear vault's merge streams its entries: from 6,000 to 48,000 entries its peak memory
/// grows by less than 64 bytes per entry (a merge holding its entries would take several
/// hundred), and stays under 64 MiB. benches/merge-memory.sh runs 4 × 250,000 files.
#[test]
fn merge_memory_is_bounded() {
    let Some((small_n, small)) = merge_tiny_files(1500) else {
        eprintln!("no /usr/bin/time: skipped");
        return;
    };
    let (big_n, big) = merge_tiny_files(12000).unwrap();
    let per_entry = (big.saturating_sub(small) * 1024) / (big_n - small_n);
    eprintln!(
        "merge peak RSS: {small} KiB for {small_n} entries, {big} KiB for {big_n} entries ({per_entry} bytes per entry)"
    );
    assert!(per_entry < 64, "{per_entry} bytes per entry");
    assert!(big < 64 << 10, "{big} KiB");
}

/// The scale case (benches/merge-memory.sh): 4 parts of `MERGE_FILES` (default 250,000) tiny
/// files each, merged; prints the merge's peak RSS. Ignored: it takes minutes.
#[test]
#[ignore]
fn merge_memory_at_scale() {
    let per_part = std::env::var("MERGE_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(250_000);
    let Some((entries, kib)) = merge_tiny_files(per_part) else {
        panic!("GNU time (/usr/bin/time) is needed to measure the peak RSS");
    };
    println!(
        "\nmerge of 4 parts x {per_part} files ({entries} entries): peak RSS {:.1} MiB",
        kib as f64 / 1024.0
    );
}
