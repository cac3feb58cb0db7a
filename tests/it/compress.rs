//! `encrypt --compress zstd[:LEVEL]` (docs/FORMAT.md §4.5): text shrinks, random data does not
//! grow by more than the table, round trips are exact (gaps, one segment, empty files), and
//! decrypt and verify need no flag; a flipped byte in a compressed segment or in the table is
//! caught.

use crate::common;

use std::fs;
use std::path::Path;

use common::tree::{
    assert_round_trip, assert_same_tree, code, files_under, manifest_records, objects_by_path, ok,
};
use common::{envseal, run};

/// Deterministic log lines of a web service: timestamps, levels, paths, ids, latencies.
fn log_text(seed: u64, bytes: usize) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let levels = ["INFO", "INFO", "INFO", "DEBUG", "WARN", "ERROR"];
    let paths = [
        "/api/v1/users",
        "/api/v1/orders",
        "/static/app.js",
        "/healthz",
        "/api/v1/search",
    ];
    let mut out = Vec::with_capacity(bytes + 200);
    let mut t = 1_796_000_000u64 + seed * 86_400;
    while out.len() < bytes {
        t += next() % 3;
        let r = next();
        let line = format!(
            "2026-12-{:02}T{:02}:{:02}:{:02}.{:03}Z {} [worker-{}] {} {} status={} bytes={} \
             latency_ms={} request_id={:016x} user={}\n",
            1 + (t / 86_400) % 28,
            (t / 3600) % 24,
            (t / 60) % 60,
            t % 60,
            r % 1000,
            levels[(r >> 10) as usize % levels.len()],
            (r >> 14) % 16,
            ["GET", "POST", "PUT"][(r >> 20) as usize % 3],
            paths[(r >> 22) as usize % paths.len()],
            [200, 200, 200, 201, 304, 404, 500][(r >> 25) as usize % 7],
            (r >> 28) % 65536,
            (r >> 44) % 900,
            next(),
            (r >> 50) % 5000,
        );
        out.extend_from_slice(line.as_bytes());
    }
    out.truncate(bytes);
    out
}

/// Bytes of every file of the vault.
fn vault_bytes(vault: &Path) -> u64 {
    files_under(vault)
        .iter()
        .map(|f| fs::metadata(vault.join(f)).unwrap().len())
        .sum()
}

fn encrypt(home: &Path, src: &Path, vault: &Path, extra: &[&str]) {
    ok(envseal(home)
        .args(["encrypt", "-q"])
        .args(extra)
        .arg("-o")
        .arg(vault)
        .arg(src));
}

#[test]
fn text_logs_shrink_to_a_third_and_round_trip() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = t.path().join("logs");
    // About 20 MiB of logs in rotated files.
    let mut total = 0u64;
    for i in 0..40u64 {
        let body = log_text(i, 500 * 1024 + i as usize * 97);
        total += body.len() as u64;
        common::tree::write(&src.join(format!("svc{}/app.log.{i}", i % 4)), &body);
    }
    // And a larger current log: still below the pack threshold `--compress` sets (8 MiB).
    let body = log_text(99, 5 << 20);
    total += body.len() as u64;
    common::tree::write(&src.join("svc0/app.log"), &body);
    let vault = t.path().join("vault");
    encrypt(&home, &src, &vault, &["--compress", "zstd"]);
    let size = vault_bytes(&vault);
    assert!(
        (size as f64) <= 0.35 * total as f64,
        "vault {size} bytes for {total} bytes of logs"
    );
    // Every file entry is a compressed record.
    let recs = manifest_records(&vault);
    let files: Vec<_> = recs
        .iter()
        .filter(|r| r["type"] == "entry" && r["kind"] == "file")
        .collect();
    assert_eq!(files.len(), 41);
    assert!(files.iter().all(|r| r["rlen"].as_u64().is_some()));
    assert_round_trip(&home, &src, &vault, &t.path().join("out"));
}

#[test]
fn random_data_grows_by_less_than_half_a_percent() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = t.path().join("random");
    for i in 0..60u64 {
        common::tree::gen_file(&src.join(format!("r{i:02}")), 100_000 + i * 7919, i);
    }
    // Small segments: the most segments, the most table entries.
    let plain = t.path().join("plain");
    let packed = t.path().join("packed");
    encrypt(&home, &src, &plain, &["--segment-size", "64KiB"]);
    encrypt(
        &home,
        &src,
        &packed,
        &["--segment-size", "64KiB", "--compress", "zstd:19"],
    );
    let (a, b) = (
        common::tree::objects_bytes(&plain),
        common::tree::objects_bytes(&packed),
    );
    assert!(b > a, "random data does not compress: {b} vs {a}");
    assert!(
        (b as f64) <= 1.005 * a as f64,
        "compressed {b} bytes vs {a} uncompressed"
    );
    assert_round_trip(&home, &src, &packed, &t.path().join("out"));
}

#[test]
fn edge_files_round_trip() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = t.path().join("edge");
    common::tree::write(&src.join("empty"), b"");
    common::tree::write(&src.join("one-segment"), &log_text(1, 4096));
    common::tree::write(&src.join("one-byte-more"), &log_text(2, 4097));
    common::tree::write(&src.join("zeros"), &vec![0u8; 300_000]);
    // Text and random segments mixed in one record: some stored raw, some compressed.
    let mut mixed = log_text(3, 64 * 1024);
    let mut r = vec![0u8; 64 * 1024];
    getrandom::getrandom(&mut r).unwrap();
    mixed.extend_from_slice(&r);
    mixed.extend_from_slice(&log_text(4, 10_000));
    common::tree::write(&src.join("mixed"), &mixed);
    // A sparse file: data, a hole, data.
    let sparse = src.join("sparse");
    {
        use std::os::unix::fs::FileExt;
        let f = fs::File::create(&sparse).unwrap();
        f.set_len(900 * 1024).unwrap();
        f.write_all_at(&log_text(5, 8192), 0).unwrap();
        f.write_all_at(&log_text(6, 8192), 800 * 1024).unwrap();
    }
    let vault = t.path().join("vault");
    encrypt(
        &home,
        &src,
        &vault,
        &["--segment-size", "4KiB", "--compress", "zstd:1"],
    );
    assert_round_trip(&home, &src, &vault, &t.path().join("out"));
}

#[test]
fn a_flipped_byte_in_a_segment_or_the_table_is_caught() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = t.path().join("src");
    common::tree::write(&src.join("a.log"), &log_text(7, 200_000));
    common::tree::write(&src.join("b.log"), &log_text(8, 200_000));
    let vault = t.path().join("vault");
    encrypt(
        &home,
        &src,
        &vault,
        &["--segment-size", "16KiB", "--compress", "zstd"],
    );
    let rlen = manifest_records(&vault)
        .iter()
        .find(|r| r["path"] == "src/a.log")
        .and_then(|r| r["rlen"].as_u64())
        .unwrap();
    let (obj, off) = objects_by_path(&vault)["src/a.log"].clone();
    // Offsets in the record: inside the first slot; inside the table (the last 4·n + 16
    // bytes: 13 segments of 16 KiB).
    let table = 13 * 4 + 16;
    for (what, at) in [("segment", 136 + 5), ("table", rlen - table + 3)] {
        let copy = t.path().join(format!("vault-{what}"));
        common::tree::copy_tree(&vault, &copy);
        common::tree::flip_byte(&copy.join(&obj), off + at);
        // Keyless verify sees the ciphertext digest change.
        let o = run(envseal(&home).args(["verify", "-q"]).arg(&copy));
        assert_eq!(code(&o), 3, "{what}: {}", common::stderr(&o));
        let o = run(envseal(&home).args(["verify", "--deep", "-q"]).arg(&copy));
        assert_eq!(code(&o), 3, "{what}: {}", common::stderr(&o));
        let out = t.path().join(format!("out-{what}"));
        let o = run(envseal(&home)
            .args(["decrypt", "-q", "-o"])
            .arg(&out)
            .arg(&copy));
        assert_eq!(code(&o), 3, "{what}: {}", common::stderr(&o));
        assert!(
            !out.join("src/a.log").exists(),
            "{what}: a tampered file appeared"
        );
        // The other file of the pack is restored.
        assert_eq!(
            fs::read(out.join("src/b.log")).unwrap(),
            fs::read(src.join("b.log")).unwrap()
        );
    }
}

#[test]
fn a_bad_compress_value_is_a_usage_error() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    common::tree::write(&t.path().join("src/f"), b"x");
    for bad in ["lz4", "zstd:0", "zstd:20", "zstd:", "zstd:+3", "zstd:3:1"] {
        let o = run(envseal(&home)
            .args(["encrypt", "-q", "--compress", bad, "-o"])
            .arg(t.path().join("vault"))
            .arg(t.path().join("src")));
        assert_eq!(code(&o), 2, "{bad}: {}", common::stderr(&o));
        assert!(common::stderr(&o).contains("--compress"), "{bad}");
    }
}

/// `--compress` into an `s3://` vault: compressed packs and a large object of its own,
/// verified deeply and restored through the S3 store, no flag on the readers.
#[test]
fn compress_round_trips_on_s3() {
    use common::s3::{SeaweedFs, BUCKET};
    let Some(server) = SeaweedFs::start() else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = t.path().join("src");
    for i in 0..8u64 {
        common::tree::write(
            &src.join(format!("logs/app.log.{i}")),
            &log_text(i, 300_000),
        );
    }
    common::tree::write(&src.join("empty"), b"");
    // Above the 8 MiB `--compress` packs below: an object of its own (random: stored raw),
    // streamed as a multipart upload of open length.
    common::tree::gen_file(&src.join("big.bin"), 10 << 20, 5);
    let vault = format!("s3://{BUCKET}/compress/v1");
    let cmd = |args: &[&str]| {
        let mut c = envseal(&home);
        for (k, v) in server.vars() {
            c.env(k, v);
        }
        c.env_remove("AWS_ENDPOINT_URL")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_DEFAULT_REGION");
        c.args(args);
        c
    };
    let (received0, _) = server.traffic();
    ok(&mut cmd(&[
        "encrypt",
        "-q",
        "--compress",
        "zstd",
        "-o",
        &vault,
        src.to_str().unwrap(),
    ]));
    // The logs went up compressed: well under their 2.4 MB (the 10 MiB object goes as is).
    let sent = server.traffic().0 - received0;
    assert!(sent < (10 << 20) + 1_500_000, "{sent} bytes sent");
    ok(&mut cmd(&["verify", "-q", &vault]));
    ok(&mut cmd(&["verify", "--deep", "-q", &vault]));
    let out = t.path().join("out");
    ok(&mut cmd(&[
        "decrypt",
        "-q",
        &vault,
        "-o",
        out.to_str().unwrap(),
    ]));
    assert_same_tree(&src, &out.join("src"));
}

/// A compressed run killed (-9) after it committed some files finishes when run again: the
/// committed compressed records are kept, the rest sealed, and the vault verifies and
/// restores exactly.
#[test]
fn a_killed_compressed_run_resumes() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = t.path().join("logs");
    for i in 0..48u64 {
        common::tree::write(&src.join(format!("app.log.{i:02}")), &log_text(i, 400_000));
    }
    let vault = t.path().join("vault");
    // Level 19 and one job: slow enough to be killed half-way.
    let args = ["encrypt", "-q", "-j", "1", "--compress", "zstd:19", "-o"];
    let mut child = envseal(&home)
        .args(args)
        .arg(&vault)
        .arg(&src)
        .spawn()
        .unwrap();
    let journal = vault.join("journal.jsonl");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let done_lines = || {
        fs::read_to_string(&journal)
            .map(|j| j.matches("\"type\":\"done\"").count())
            .unwrap_or(0)
    };
    while done_lines() < 5 {
        assert!(
            std::time::Instant::now() < deadline,
            "no file committed in time"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before the kill"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !vault.join("manifest.jsonl").exists(),
        "killed before the end"
    );
    let committed = done_lines();
    assert!(
        committed < 49,
        "{committed} entries committed before the kill"
    );
    ok(envseal(&home).args(args).arg(&vault).arg(&src));
    let files = manifest_records(&vault)
        .into_iter()
        .filter(|r| r["type"] == "entry" && r["kind"] == "file")
        .filter(|r| r["rlen"].as_u64().is_some())
        .count();
    assert_eq!(files, 48);
    assert_round_trip(&home, &src, &vault, &t.path().join("out"));
}

/// `len` bytes from splitmix64 (seeded): random, or, `hex`, as lowercase hex digits (text
/// that compresses to about half).
fn noise(len: usize, seed: u64, hex: bool) -> Vec<u8> {
    let mut x = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        match hex {
            false => out.extend_from_slice(&z.to_le_bytes()),
            true => out.extend(
                z.to_le_bytes()
                    .iter()
                    .map(|b| b"0123456789abcdef"[(b & 15) as usize]),
            ),
        }
    }
    out.truncate(len);
    out
}

/// Files of 8 MiB and more are compressed too, each as one record of its own written in
/// order (docs/FORMAT.md §4.5): logs shrink, random data grows by the table alone, both
/// round trip, and a flipped byte deep in the big compressed record is caught.
#[test]
fn large_files_are_compressed_records_of_their_own() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = t.path().join("big");
    let logs = log_text(7, 40 << 20);
    common::tree::write(&src.join("app.log"), &logs);
    common::tree::write(&src.join("random.bin"), &noise(24 << 20, 3, false));
    // Not a whole number of segments, with a short last one.
    common::tree::write(&src.join("odd.txt"), &log_text(8, (9 << 20) + 12_345));
    // A disk image: a hole, 10 MiB of logs, a run of zeros, logs, a hole at the end. Its
    // gaps are taken out before the stored bytes are cut into segments and compressed.
    {
        use std::os::unix::fs::FileExt;
        let img = fs::File::create(src.join("disk.img")).unwrap();
        img.write_all_at(&log_text(9, 10 << 20), 16 << 20).unwrap();
        img.write_all_at(&vec![0u8; 4 << 20], 26 << 20).unwrap();
        img.write_all_at(&log_text(10, 3 << 20), 30 << 20).unwrap();
        img.set_len(64 << 20).unwrap();
    }
    let vault = t.path().join("vault");
    encrypt(&home, &src, &vault, &["--compress", "zstd"]);
    let recs = manifest_records(&vault);
    let rlen = |path: &str| {
        recs.iter()
            .find(|r| r["type"] == "entry" && r["path"] == path)
            .and_then(|r| r["rlen"].as_u64())
            .unwrap_or_else(|| panic!("{path}: no compressed record"))
    };
    let by_path = objects_by_path(&vault);
    for (path, len) in [
        ("big/app.log", 40u64 << 20),
        ("big/random.bin", 24 << 20),
        ("big/odd.txt", (9 << 20) + 12_345),
    ] {
        // One object per large file, holding exactly its record.
        let (obj, off) = &by_path[path];
        assert_eq!(*off, 0, "{path}");
        assert_eq!(
            fs::metadata(vault.join(obj)).unwrap().len(),
            rlen(path),
            "{path}"
        );
        let suite1 = envseal::format::object_len(len, envseal::format::DEFAULT_SEGMENT_SIZE);
        let r = rlen(path) as f64;
        match path {
            "big/random.bin" => assert!(r <= 1.005 * suite1 as f64, "{path}: {r} vs {suite1}"),
            _ => assert!(
                r <= 0.35 * len as f64,
                "{path}: {r} for {len} bytes of logs"
            ),
        }
    }
    let img = recs.iter().find(|r| r["path"] == "big/disk.img").unwrap();
    assert!(img["rlen"].as_u64().unwrap() < 4 << 20, "{img}");
    assert!(
        img.get("holes").is_some() && img.get("zeros").is_some(),
        "{img}"
    );
    assert_round_trip(&home, &src, &vault, &t.path().join("out"));
    // A byte flipped in the middle of the log's record: deep verify exits 3.
    let (obj, _) = &by_path["big/app.log"];
    let p = vault.join(obj);
    let mut bytes = fs::read(&p).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x20;
    fs::write(&p, &bytes).unwrap();
    let o = run(envseal(&home).args(["verify", "--deep", "-q"]).arg(&vault));
    assert_eq!(code(&o), 3, "{}", common::stderr(&o));
}

/// A large compressed file interrupted past a checkpoint (docs/FORMAT.md §7): taken up
/// there, its stored prefix (the same object) read back at the offsets the checkpoints'
/// lengths give, hashed and opened, and only the rest read from the source; a prefix
/// damaged since gives a new record, read whole. Either way, the vault verifies deeply and
/// restores exactly.
#[test]
fn a_large_compressed_file_resumes_at_its_checkpoint() {
    use envseal::pipeline::encrypt::{encrypt as encrypt_lib, EncryptOptions};
    use envseal::progress::NoProgress;
    use std::sync::atomic::AtomicBool;

    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("data");
    // Past two checkpoints (every 64 MiB sealed, or 500 ms).
    let size = (2 * envseal::pipeline::write::CHECKPOINT_BYTES + (24 << 20)) as usize;
    let body = noise(size, 11, true);
    common::tree::write(&src.join("big.txt"), &body);
    let (kms, url) = common::local_kms(t.path());
    let objects = |vault: &Path| files_under(&vault.join("objects"));

    for case in ["same", "damaged"] {
        let vault = t.path().join(case.replace(' ', "-"));
        let opts = |level| EncryptOptions {
            jobs: 1,
            compress: Some(level),
            pack_threshold: envseal::format::compress::COMPRESS_PACK_THRESHOLD,
            ..EncryptOptions::new(vec![src.clone()], vault.clone(), url.clone())
        };
        let stop = common::StopAfter::new(envseal::pipeline::write::CHECKPOINT_BYTES + (40 << 20));
        let e = encrypt_lib(&opts(3), &kms, &stop, &stop.cancel).unwrap_err();
        assert!(
            matches!(e, envseal::error::Error::Interrupted),
            "{case}: {e}"
        );
        let journal = fs::read_to_string(vault.join("journal.jsonl")).unwrap();
        assert!(
            journal.contains(r#""rpos":"#),
            "{case}: no compressed checkpoint"
        );
        let before = objects(&vault);
        assert_eq!(before.len(), 1, "{case}: {before:?}");
        if case == "damaged" {
            let p = vault.join("objects").join(&before[0]);
            let mut b = fs::read(&p).unwrap();
            b[1000] ^= 1;
            fs::write(&p, &b).unwrap();
        }
        let r = encrypt_lib(&opts(3), &kms, &NoProgress, &AtomicBool::new(false)).unwrap();
        assert!(r.failed.is_empty(), "{case}: {:?}", r.failed);
        // Taken up where it stopped: its prefix is read back from the object (its lengths
        // from the checkpoints), not from the source; a damaged one is read whole again.
        let ckpt = envseal::pipeline::write::CHECKPOINT_BYTES;
        match case {
            // At a checkpoint near 64 MiB (a whole number of windows below it).
            "same" => assert!(
                r.bytes_read <= size as u64 - ckpt / 2,
                "{case}: read {} of {size} source bytes again",
                r.bytes_read
            ),
            _ => assert_eq!(r.bytes_read, size as u64, "{case}"),
        }
        let after = objects(&vault);
        assert_eq!(after.len(), 1, "{case}: {after:?}");
        assert_eq!(
            after == before,
            case == "same",
            "{case}: {before:?} -> {after:?}"
        );
        let home = t.path().join("home");
        let cli = |args: &[&str]| {
            let mut c = envseal(&home);
            c.env("ENVSEAL_KMS", &url).args(args).arg(&vault);
            ok(&mut c)
        };
        cli(&["verify", "--deep", "-q"]);
        let out = t.path().join(format!("out-{}", case.replace(' ', "-")));
        cli(&["decrypt", "-q", "-o", out.to_str().unwrap()]);
        assert!(
            fs::read(out.join("data/big.txt")).unwrap() == body,
            "{case}"
        );
    }
}

/// A large compressed file's run killed (-9) at several moments, each rerun killed again
/// later, then left to finish: whatever the kill left in the object past its checkpoint
/// (half-written windows) is written over or cut off, and the vault verifies deeply and
/// restores exactly.
#[test]
fn large_compressed_runs_killed_at_random_moments_finish() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = t.path().join("data");
    let body = noise(96 << 20, 21, true);
    common::tree::write(&src.join("big.txt"), &body);
    let vault = t.path().join("vault");
    let cmd = || {
        let mut c = envseal(&home);
        // Checkpoints every 4 MiB sealed, so that kills fall between many of them.
        c.env("ENVSEAL_TEST_CHECKPOINT_BYTES", (4u64 << 20).to_string())
            .args(["encrypt", "-q", "-j", "1", "--compress", "zstd:6", "-o"])
            .arg(&vault)
            .arg(&src);
        c
    };
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    eprintln!("kill moments from seed {seed}");
    let mut x = seed | 1;
    let mut checkpoints = 0;
    for k in 0..4 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut child = cmd().spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(150 + x % 600));
        if child.try_wait().unwrap().is_some() {
            eprintln!("run {k} finished before its kill");
            break;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        checkpoints += fs::read_to_string(vault.join("journal.jsonl"))
            .map(|j| j.matches(r#""rpos":"#).count())
            .unwrap_or(0);
    }
    ok(&mut cmd());
    eprintln!("{checkpoints} compressed checkpoints seen across the kills");
    ok(envseal(&home).args(["verify", "--deep", "-q"]).arg(&vault));
    let out = t.path().join("out");
    ok(envseal(&home)
        .args(["decrypt", "-q", "-o"])
        .arg(&out)
        .arg(&vault));
    assert!(fs::read(out.join("data/big.txt")).unwrap() == body);
    let objects = files_under(&vault.join("objects"));
    assert_eq!(objects.len(), 1, "{objects:?}");
}
