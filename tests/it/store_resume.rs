//! Resume on S3 under fire (docs/RESUME.md, "On object storage"; docs/STORAGE.md,
//! "Resuming an object"), on a real SeaweedFS: a 1 GiB upload killed at random moments and
//! its server crashed and restarted mid-run, counting every byte the server received; and
//! a checkpointed upload that vanished behind the vault's back.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use envseal::format::{object_len, DEFAULT_SEGMENT_SIZE};
use envseal::store::s3::{MAX_IN_FLIGHT, PART_TARGET};
use envseal::store::Store;

use crate::common;
use crate::common::s3::{SeaweedFs, BUCKET};
use crate::common::tree;

const MIB: u64 = 1 << 20;

/// What a vault holds besides its one object, with room to spare: the key file, the
/// manifest, the journal's segment objects (one small PUT per group commit, every 500 ms
/// at most) and the lock object, over every run.
const SMALL_FILES: u64 = MIB;

/// splitmix64: a small seeded generator, so that a failing run's moments can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// `ENVSEAL_TEST_SEED`, else the clock; printed either way.
fn seed() -> u64 {
    let seed = match std::env::var("ENVSEAL_TEST_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("ENVSEAL_TEST_SEED={s:?}: not an unsigned number")),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    };
    eprintln!("store_resume: seed {seed} (ENVSEAL_TEST_SEED={seed} replays these moments)");
    seed
}

/// `envseal encrypt -q -o VAULT SRC` with a server's `vars` (the same across its restarts).
fn encrypt_cmd(vars: &HashMap<String, String>, home: &Path, vault: &str, src: &Path) -> Command {
    let mut c = common::envseal(home);
    for (k, v) in vars {
        c.env(k, v);
    }
    c.env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_DEFAULT_REGION")
        .args(["encrypt", "-q", "-o", vault])
        .arg(src);
    c
}

/// Polls (every 10 ms) until the server's received bytes reach `target`: `None` then, or
/// the run's exit status if it exits first; panics if nothing gets there in 120 s.
fn wait_for_received(
    server: &SeaweedFs,
    child: &mut Child,
    target: u64,
) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while server.traffic().0 < target {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st);
        }
        assert!(
            Instant::now() < deadline,
            "the server received {} of {target} bytes in 120 s",
            server.traffic().0
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// How a run that lived through the server's crash ended: on its retries (exit 0), or
/// exit 1 with a message naming the vault's URL.
fn check_crashed_run(st: std::process::ExitStatus, err: &Path, vault: &str) {
    let msg = std::fs::read_to_string(err).unwrap_or_default();
    eprintln!("the run through the server's crash: {st}");
    match st.code() {
        Some(0) => {}
        Some(1) => assert!(msg.contains(vault), "exit 1 without the URL: {msg}"),
        _ => panic!("the run through the server's crash: {st}: {msg}"),
    }
}

/// The segments of the journal's last checkpoint, if any (a journal being written is
/// read as it stands; `None` also when it cannot be read).
fn last_ckpt(store: &dyn Store) -> Option<u64> {
    let j = store.get("journal.jsonl", 64 * MIB).ok()??;
    let j = String::from_utf8_lossy(&j).into_owned();
    let line = j.lines().rev().find(|l| l.contains(r#""type":"ckpt""#))?;
    let segs = line.split(r#""segs":"#).nth(1)?;
    segs.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// `verify --deep`, then `decrypt`, then the restored image compared with the source.
fn verify_and_restore(server: &SeaweedFs, home: &Path, vault: &str, src: &Path, out: &Path) {
    let envseal = |args: &[&str]| {
        let mut c = common::envseal(home);
        for (k, v) in server.vars() {
            c.env(k, v);
        }
        let o = common::run(c.args(args));
        assert!(o.status.success(), "{args:?}: {}", common::stderr(&o));
    };
    envseal(&["verify", "--deep", vault]);
    envseal(&["decrypt", "-q", vault, "-o", out.to_str().unwrap()]);
    assert_eq!(
        tree::hash_file(&out.join("src/image")),
        tree::hash_file(&src.join("image")),
        "the restored image differs from the source"
    );
}

/// A 1 GiB image to `s3://`: envseal killed (-9) at three random moments, and once the
/// server killed (-9) mid-run and started again a few seconds later while envseal runs
/// (which rides through on its retries or exits 1 naming the vault). The moments are
/// random fractions (5% to 90%, seeded) of the image's bytes the server has received.
/// Then the same command finishes, the vault verifies deeply and restores identically,
/// and the server received the object once, plus what may have been in flight at each
/// kill: finished parts are never sent again.
#[test]
fn s3_kills_and_a_server_crash_resend_no_finished_part() {
    let Some(mut server) = SeaweedFs::start() else {
        return;
    };
    let mut rng = Rng(seed());
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = t.path().join("src");
    let size = 1u64 << 30;
    tree::gen_file(&src.join("image"), size, 0x5e_ed);
    let vault = format!("s3://{BUCKET}/resume/image");

    // Four moments at least 5% apart (each run gets somewhere); one of them, at random,
    // is the server's crash.
    let moments = loop {
        let mut f: Vec<f64> = (0..4).map(|_| 0.05 + 0.85 * rng.unit()).collect();
        f.sort_by(f64::total_cmp);
        if f.windows(2).all(|w| w[1] - w[0] >= 0.05) {
            break f;
        }
    };
    let crash = (rng.next() % 4) as usize;
    let down_for = Duration::from_millis(2000 + rng.next() % 2000);
    eprintln!("moments {moments:.3?}, server crash at #{crash}, down for {down_for:?}");

    let vars = server.vars();
    let r0 = server.traffic().0;
    let mut runs = 0;
    let mut spawn = || {
        let err = t.path().join(format!("run{runs}.err"));
        runs += 1;
        let child = encrypt_cmd(&vars, &home, &vault, &src)
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap();
        (child, err)
    };
    // The run going, and whether it has lived through the server's crash (only such a
    // run may end on its own: the next moment then goes to a new run).
    let mut running: Option<(Child, std::path::PathBuf, bool)> = None;
    let mut kills = 0u64;
    'moments: for (i, f) in moments.iter().enumerate() {
        let target = r0 + (f * size as f64) as u64;
        loop {
            let (child, err, crashed) = running.get_or_insert_with(|| {
                let (c, e) = spawn();
                (c, e, false)
            });
            match wait_for_received(&server, child, target) {
                None => break,
                Some(st) => {
                    assert!(
                        *crashed,
                        "moment {i}: the run exited ({st}) before it: {}",
                        std::fs::read_to_string(&*err).unwrap_or_default()
                    );
                    check_crashed_run(st, err, &vault);
                    running = None;
                    if st.success() {
                        eprintln!("the run rode through the crash and finished: moments from #{i} on are not reached");
                        break 'moments;
                    }
                }
            }
        }
        let Some((child, _, crashed)) = running.as_mut() else {
            unreachable!()
        };
        if i == crash {
            server.kill_hard();
            std::thread::sleep(down_for);
            server.restart();
            *crashed = true;
        } else {
            child.kill().unwrap();
            child.wait().unwrap();
            running = None;
        }
        kills += 1;
        eprintln!(
            "moment {i} ({}): the server has received {} bytes; the journal's last checkpoint: {:?} segments",
            if i == crash {
                "server crashed"
            } else {
                "envseal killed"
            },
            server.traffic().0 - r0,
            last_ckpt(&server.store("resume/image"))
        );
    }
    if let Some((mut child, err, _)) = running.take() {
        check_crashed_run(child.wait().unwrap(), &err, &vault);
    }
    let o = common::run(&mut encrypt_cmd(&server.vars(), &home, &vault, &src));
    assert!(o.status.success(), "{}", common::stderr(&o));
    let total = server.traffic().0 - r0;

    // The bound. One large file is one multipart writer; a part goes to the upload pool
    // once its last piece is sealed, and the writer waits while it has MAX_IN_FLIGHT bytes
    // handed over and unacknowledged (src/store/s3/upload.rs, `Upload::submit`). A kill
    // (of envseal or of the server) can waste only those: parts acknowledged before it
    // are either kept by the checkpoint that resumes the upload or listed by `ListParts`
    // and recognised by size and ETag when the resumed run seals them again (sealing is
    // deterministic), so they are not sent again; a part cut short, or retried after the
    // server came back, is sent again in full. The part being filled is not sent yet.
    // One more window for requests retried after a timeout on a loaded machine (the server
    // may have stored a part whose answer came too late): bounded the same way.
    let object = object_len(size, DEFAULT_SEGMENT_SIZE);
    let bound = object + SMALL_FILES + (kills + 1) * MAX_IN_FLIGHT;
    eprintln!(
        "the server received {total} bytes for a {object}-byte object over {} runs (bound {bound}: {} MiB in flight per kill)",
        kills + 1,
        MAX_IN_FLIGHT / MIB
    );
    // The counters die with the crashed server: what it received between their last reading
    // and the kill is not counted (a moment on an idle machine, more on a loaded one).
    assert!(
        total + MAX_IN_FLIGHT >= object,
        "{total} bytes counted for a {object}-byte object: traffic lost across the restart"
    );
    assert!(
        total <= bound,
        "{total} bytes received for a {object}-byte object after {kills} kills: finished parts were sent again"
    );
    verify_and_restore(&server, &home, &vault, &src, &t.path().join("out"));
}

/// A run killed past a checkpoint whose multipart upload is then aborted behind its back
/// (as a bucket's lifecycle rule or another tool would): the same command finds the
/// checkpointed upload gone, seals that file again from its source, and finishes; the
/// vault verifies deeply and restores identically.
#[test]
fn s3_lost_checkpointed_upload_is_sealed_again() {
    let Some(server) = SeaweedFs::start() else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = t.path().join("src");
    let size = 256 * MIB;
    tree::gen_file(&src.join("image"), size, 0x10_57);
    let vault = format!("s3://{BUCKET}/resume/lost");
    let store = server.store("resume/lost");

    // Killed once the journal holds a checkpoint past the header (its commit returned:
    // the parts it counts on are on the server).
    let mut child = encrypt_cmd(&server.vars(), &home, &vault, &src)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            panic!("the run exited ({st}) before it journaled a checkpoint");
        }
        assert!(Instant::now() < deadline, "no checkpoint in 120 s");
        if last_ckpt(&store).is_some_and(|segs| segs > 0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();

    // Every unfinished upload of the vault aborted: the checkpoint names an upload that
    // no longer exists.
    store.sweep_uploads("objects/", &HashSet::new()).unwrap();

    let r1 = server.traffic().0;
    let o = common::run(&mut encrypt_cmd(&server.vars(), &home, &vault, &src));
    assert!(o.status.success(), "{}", common::stderr(&o));
    let sent = server.traffic().0 - r1;
    // Had the upload been taken up, only the rest would have gone up.
    assert!(
        sent >= object_len(size, DEFAULT_SEGMENT_SIZE),
        "the rerun sent {sent} bytes for a {size}-byte file: the lost upload was not sealed again"
    );
    verify_and_restore(&server, &home, &vault, &src, &t.path().join("out"));
}

/// A run killed after some parts of a large file are uploaded but before its first
/// segment checkpoint: the header checkpoint (0 segments) written first lets the same
/// command seal the file again under that header, so the parts already uploaded are
/// recognised (size and ETag) and not sent again.
#[test]
fn s3_kill_before_the_first_segment_checkpoint_resends_no_part() {
    let Some(server) = SeaweedFs::start() else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = t.path().join("src");
    let size = 256 * MIB;
    tree::gen_file(&src.join("image"), size, 0x0ea7);
    let object = object_len(size, DEFAULT_SEGMENT_SIZE);
    // The moment (parts uploaded, no segment checkpoint yet) lasts about half a second;
    // a try that misses it (a segment checkpoint came first) goes again in a new vault.
    for attempt in 0..4 {
        let prefix = format!("resume/early{attempt}");
        let vault = format!("s3://{BUCKET}/{prefix}");
        let store = server.store(&prefix);
        let r0 = server.traffic().0;
        let mut child = encrypt_cmd(&server.vars(), &home, &vault, &src)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        while server.traffic().0 - r0 < 3 * PART_TARGET {
            assert!(
                child.try_wait().unwrap().is_none(),
                "finished before the kill"
            );
            assert!(Instant::now() < deadline, "no upload in 120 s");
            std::thread::sleep(Duration::from_millis(5));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let before = server.traffic().0 - r0;
        let ckpt = last_ckpt(&store);
        if ckpt.is_some_and(|segs| segs > 0) {
            eprintln!("attempt {attempt}: killed at checkpoint {ckpt:?}, past the moment");
            continue;
        }
        let r1 = server.traffic().0;
        let o = common::run(&mut encrypt_cmd(&server.vars(), &home, &vault, &src));
        assert!(o.status.success(), "{}", common::stderr(&o));
        let rerun = server.traffic().0 - r1;
        eprintln!(
            "killed at checkpoint {ckpt:?} after {before} bytes; the rerun sent {rerun} of {object}"
        );
        // Sealed again under a fresh header, every part would go up again.
        assert!(
            rerun + PART_TARGET <= object,
            "the rerun sent {rerun} bytes of a {object}-byte object: the uploaded parts were sent again"
        );
        assert!(
            before + rerun <= object + SMALL_FILES + MAX_IN_FLIGHT,
            "{} bytes in all for a {object}-byte object after one kill",
            before + rerun
        );
        verify_and_restore(&server, &home, &vault, &src, &t.path().join("out"));
        return;
    }
    panic!("four tries missed the moment before the first segment checkpoint");
}

/// A large compressed file (docs/FORMAT.md §4.5) to `s3://`, killed (-9) mid-upload: its
/// upload of open length has only its header checkpoint, so the same command seals it again
/// from its start under that header, and the parts already uploaded come out the same and
/// are recognised (size and ETag), not sent again.
#[test]
fn s3_compressed_upload_killed_resends_no_finished_part() {
    let Some(server) = SeaweedFs::start() else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = t.path().join("src");
    // Hex digits of random bytes: text that zstd halves, so the object is about 140 MiB.
    let size = 256 * MIB as usize;
    let mut rng = Rng(0xc0_ffee);
    let mut text = Vec::with_capacity(size);
    while text.len() < size {
        let z = rng.next();
        text.extend(
            z.to_le_bytes()
                .iter()
                .map(|b| b"0123456789abcdef"[(b & 15) as usize]),
        );
    }
    tree::write(&src.join("image"), &text);
    drop(text);
    let prefix = "resume/compressed";
    let vault = format!("s3://{BUCKET}/{prefix}");
    let store = server.store(prefix);
    let cmd = || {
        let mut c = encrypt_cmd(&server.vars(), &home, &vault, &src);
        c.args(["--compress", "zstd:1"]);
        c
    };
    let r0 = server.traffic().0;
    let mut child = cmd().spawn().unwrap();
    let target = r0 + 64 * MIB;
    assert!(
        wait_for_received(&server, &mut child, target).is_none(),
        "finished before the kill"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let before = server.traffic().0 - r0;
    assert_eq!(
        last_ckpt(&store),
        Some(0),
        "a compressed upload journals its header checkpoint alone"
    );
    let r1 = server.traffic().0;
    let o = common::run(&mut cmd());
    assert!(o.status.success(), "{}", common::stderr(&o));
    let rerun = server.traffic().0 - r1;
    let object = store
        .list("objects/")
        .unwrap()
        .into_iter()
        .map(|o| o.len)
        .max()
        .unwrap();
    eprintln!("killed after {before} bytes; the rerun sent {rerun} for a {object}-byte object");
    assert!(
        object < size as u64 * 6 / 10,
        "{object} bytes stored for {size}"
    );
    // Sealed again under a fresh header, every part would go up again.
    assert!(
        rerun + 4 * PART_TARGET <= object,
        "the rerun sent {rerun} bytes of a {object}-byte object: the uploaded parts were sent again"
    );
    assert!(
        before + rerun <= object + SMALL_FILES + MAX_IN_FLIGHT,
        "{} bytes in all for a {object}-byte object after one kill",
        before + rerun
    );
    verify_and_restore(&server, &home, &vault, &src, &t.path().join("out"));
}
