//! `envseal mount`: the real binary mounts vaults with FUSE (as root, /dev/fuse and
//! fusermount3; skipped with a message elsewhere, a failure under CI) and the tests read
//! them through the kernel like any program would.

use std::fs::{self, File};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common;
use crate::common::tree::{encrypt_ok, fixture_copy, gen_file, snapshot};

const MIB: u64 = 1 << 20;

/// Whether FUSE mounts can run here; under CI they must.
fn can_mount() -> bool {
    let root = rustix::process::geteuid().is_root();
    let fuse = Path::new("/dev/fuse").exists();
    let helper = Command::new("fusermount3")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if root && fuse && helper {
        return true;
    }
    let why = format!("root {root}, /dev/fuse {fuse}, fusermount3 {helper}");
    assert!(
        std::env::var_os("CI").is_none(),
        "mount tests need root, /dev/fuse and fusermount3 (Debian: fuse3) under CI: {why}"
    );
    eprintln!("skipping the mount test: {why}");
    false
}

fn is_mounted(dir: &Path) -> bool {
    let dir = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let table = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let want = dir.to_string_lossy().replace(' ', "\\040");
    table
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

/// A running `envseal mount`, its stderr in a file; unmounted when dropped.
struct Mounted {
    child: Option<Child>,
    dir: PathBuf,
    log: PathBuf,
}

impl Mounted {
    fn start(home: &Path, vault: &str, dir: &Path, env: &[(String, String)]) -> Mounted {
        fs::create_dir_all(dir).unwrap();
        let log = dir.with_extension("log");
        let mut c = common::envseal(home);
        c.envs(env.iter().map(|(k, v)| (k, v)));
        let child = c
            .args(["mount", vault])
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut m = Mounted {
            child: Some(child),
            dir: dir.to_path_buf(),
            log,
        };
        let start = Instant::now();
        while !is_mounted(dir) {
            if let Some(st) = m.child().try_wait().unwrap() {
                panic!("envseal mount exited with {st}: {}", m.stderr());
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "no mount after 60 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        m
    }

    fn child(&mut self) -> &mut Child {
        self.child.as_mut().unwrap()
    }

    fn stderr(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the process to end by itself; its exit code.
    fn wait(&mut self) -> i32 {
        let mut child = self.child.take().unwrap();
        let start = Instant::now();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st.code().unwrap_or(-1);
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "still running after 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn peak_rss_kib(&mut self) -> u64 {
        let pid = self.child().id();
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg(&self.dir)
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
        if is_mounted(&self.dir) {
            let _ = Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(&self.dir)
                .status();
        }
    }
}

fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

#[test]
fn the_edge_case_tree_mounts_as_it_was_read_only() {
    if !can_mount() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = fixture_copy(&t.path().join("src"));
    // Hard links, an extended attribute, an owner that is not ours, a sparse file.
    fs::write(src.join("linked-a"), b"one inode, two names").unwrap();
    fs::hard_link(src.join("linked-a"), src.join("deep/linked-b")).unwrap();
    xattr::set(src.join("run.sh"), "user.note", b"kept").unwrap();
    rustix::fs::chown(
        src.join("one-byte.txt"),
        Some(rustix::fs::Uid::from_raw(1234)),
        Some(rustix::fs::Gid::from_raw(4321)),
    )
    .unwrap();
    let sparse = File::create(src.join("sparse.img")).unwrap();
    sparse.write_all_at(&[7u8; 5000], 3 * MIB).unwrap();
    sparse.set_len(9 * MIB).unwrap();
    drop(sparse);
    let vault = t.path().join("v");
    encrypt_ok(&home, &src, &vault, &[]);

    let mnt = t.path().join("mnt");
    let m = Mounted::start(&home, vault.to_str().unwrap(), &mnt, &[]);
    let seen = mnt.join("tree");
    assert_eq!(snapshot(&src), snapshot(&seen), "the mounted tree differs");
    let (a, b) = (
        fs::metadata(seen.join("linked-a")).unwrap(),
        fs::metadata(seen.join("deep/linked-b")).unwrap(),
    );
    assert_eq!(
        (a.ino(), a.nlink()),
        (b.ino(), 2),
        "hard links share one inode"
    );
    let one = fs::metadata(seen.join("one-byte.txt")).unwrap();
    assert_eq!((one.uid(), one.gid()), (1234, 4321), "owners as recorded");
    assert_eq!(
        xattr::get(seen.join("run.sh"), "user.note")
            .unwrap()
            .as_deref(),
        Some(&b"kept"[..])
    );
    let names: Vec<_> = xattr::list(seen.join("run.sh")).unwrap().collect();
    assert!(names.iter().any(|n| n == "user.note"), "{names:?}");
    assert_eq!(
        xattr::get(seen.join("empty.txt"), "user.note").unwrap(),
        None
    );
    assert!(fs::read_dir(seen.join("empty-dir"))
        .unwrap()
        .next()
        .is_none());

    // Writes of every kind are refused.
    let refused = [
        File::create(seen.join("new")).err(),
        fs::OpenOptions::new()
            .append(true)
            .open(seen.join("run.sh"))
            .err(),
        fs::create_dir(seen.join("d")).err(),
        fs::remove_file(seen.join("run.sh")).err(),
        xattr::set(seen.join("run.sh"), "user.x", b"y").err(),
    ];
    for (k, e) in refused.iter().enumerate() {
        let e = e
            .as_ref()
            .unwrap_or_else(|| panic!("write {k} was allowed"));
        assert_eq!(errno(e), libc::EROFS, "write {k}: {e}");
    }
    drop(m);
}

#[test]
fn a_large_file_reads_deep_within_bounded_memory() {
    if !can_mount() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    gen_file(&src.join("big.img"), 256 * MIB, 9);
    let vault = t.path().join("v");
    encrypt_ok(&home, &src, &vault, &[]);
    let mnt = t.path().join("mnt");
    let mut m = Mounted::start(&home, vault.to_str().unwrap(), &mnt, &[]);

    let want = File::open(src.join("big.img")).unwrap();
    let got = File::open(mnt.join("src/big.img")).unwrap();
    // Readers that size their buffers by it ask 1 MiB at a time (one FUSE request).
    assert_eq!(got.metadata().unwrap().blksize(), 1 << 20);
    // Random reads of odd sizes across segment boundaries, deep in the file.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let off = x % (256 * MIB);
        let len = ((x >> 40) % (3 * MIB)).min(256 * MIB - off) as usize;
        let (mut a, mut b) = (vec![0u8; len], vec![0u8; len]);
        want.read_exact_at(&mut a, off).unwrap();
        got.read_exact_at(&mut b, off).unwrap();
        assert!(a == b, "{len} bytes at {off} differ");
    }
    let end = 256 * MIB;
    let mut buf = [0u8; 10];
    assert_eq!(
        got.read_at(&mut buf, end - 4).unwrap(),
        4,
        "a read at the end is short"
    );
    assert_eq!(got.read_at(&mut buf, end).unwrap(), 0);
    // The whole file, in order.
    assert_eq!(
        common::tree::hash_file(&src.join("big.img")),
        common::tree::hash_file(&mnt.join("src/big.img"))
    );
    let peak = m.peak_rss_kib();
    assert!(
        peak < 256 * 1024,
        "peak RSS {peak} KiB after reading 256 MiB"
    );
    // A shared mapping reads the same bytes: mmap keeps working on a large file, however the
    // mount opens it (direct I/O or not).
    let len = (256 * MIB) as usize;
    // SAFETY: a fresh read-only shared mapping of an open file, never written; unmapped below
    // before `got` is closed, and only read within its length.
    let map = unsafe {
        use std::os::fd::AsRawFd;
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            got.as_raw_fd(),
            0,
        )
    };
    assert_ne!(map, libc::MAP_FAILED, "{}", std::io::Error::last_os_error());
    let at = (200 * MIB + 12_345) as usize;
    // SAFETY: `at + 65536` is within the mapping of `len` bytes.
    let mapped = unsafe { std::slice::from_raw_parts(map.cast::<u8>().add(at), 65_536) }.to_vec();
    // SAFETY: the mapping made above, no reference into it left.
    unsafe { libc::munmap(map, len) };
    let mut a = vec![0u8; 65_536];
    want.read_exact_at(&mut a, at as u64).unwrap();
    assert!(mapped == a, "the mapping differs at {at}");
}

#[test]
fn a_tampered_object_is_eio_for_its_file_and_the_rest_reads() {
    if !can_mount() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    gen_file(&src.join("bad.bin"), 3 * MIB, 1);
    gen_file(&src.join("good.bin"), 3 * MIB, 2);
    fs::write(src.join("small.txt"), b"small and packed").unwrap();
    let vault = t.path().join("v");
    encrypt_ok(&home, &src, &vault, &[]);
    let objects = common::tree::objects_by_path(&vault);
    let (obj, off) = &objects["src/bad.bin"];
    // A byte of the second segment's ciphertext.
    common::tree::flip_byte(&vault.join(obj), off + MIB + 4096);

    let mnt = t.path().join("mnt");
    let m = Mounted::start(&home, vault.to_str().unwrap(), &mnt, &[]);
    let bad = File::open(mnt.join("src/bad.bin")).unwrap();
    let mut head = vec![0u8; 4096];
    bad.read_exact_at(&mut head, 0).unwrap();
    let mut want = vec![0u8; 4096];
    File::open(src.join("bad.bin"))
        .unwrap()
        .read_exact_at(&mut want, 0)
        .unwrap();
    assert_eq!(head, want, "the untouched first segment still reads");
    let e = fs::read(mnt.join("src/bad.bin")).unwrap_err();
    assert_eq!(errno(&e), libc::EIO, "{e}");
    assert_eq!(
        fs::read(mnt.join("src/good.bin")).unwrap(),
        fs::read(src.join("good.bin")).unwrap()
    );
    assert_eq!(
        fs::read(mnt.join("src/small.txt")).unwrap(),
        b"small and packed"
    );
    let log = m.stderr();
    assert!(
        log.contains("src/bad.bin") && log.contains("fails authentication"),
        "{log}"
    );
}

#[test]
fn sigterm_and_fusermount_end_it_with_exit_0() {
    if !can_mount() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("a"), b"a").unwrap();
    let vault = t.path().join("v");
    encrypt_ok(&home, &src, &vault, &[]);
    let mnt = t.path().join("mnt");

    let mut m = Mounted::start(&home, vault.to_str().unwrap(), &mnt, &[]);
    let pid = rustix::process::Pid::from_raw(m.child().id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    assert_eq!(m.wait(), 0, "{}", m.stderr());
    assert!(!is_mounted(&mnt), "SIGTERM left the mount");

    let mut m = Mounted::start(&home, vault.to_str().unwrap(), &mnt, &[]);
    assert_eq!(fs::read(mnt.join("src/a")).unwrap(), b"a");
    let st = Command::new("fusermount3")
        .arg("-u")
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(m.wait(), 0, "{}", m.stderr());
    assert!(!is_mounted(&mnt));
}

#[test]
fn a_file_deep_in_an_s3_vault_costs_a_few_segments() {
    if !can_mount() {
        return;
    }
    let Some(server) = common::s3::SeaweedFs::start() else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    gen_file(&src.join("disk.img"), 64 * MIB, 3);
    // A hole of 64 MiB after the data: it reads as zeros and costs no fetch.
    File::options()
        .write(true)
        .open(src.join("disk.img"))
        .unwrap()
        .set_len(128 * MIB)
        .unwrap();
    let vault = format!("s3://{}/mount/v", common::s3::BUCKET);
    let env: Vec<(String, String)> = server.vars().into_iter().collect();
    let o = common::run(
        common::envseal(&home)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .args(["encrypt", "-q", "-o", &vault])
            .arg(&src),
    );
    assert!(o.status.success(), "{}", common::stderr(&o));
    let mnt = t.path().join("mnt");
    let _m = Mounted::start(&home, &vault, &mnt, &env);
    let before = server.traffic().1;
    let got = File::open(mnt.join("src/disk.img")).unwrap();
    let off = 48 * MIB + 12345;
    let (mut a, mut b) = (vec![0u8; 8192], vec![0u8; 8192]);
    got.read_exact_at(&mut a, off).unwrap();
    File::open(src.join("disk.img"))
        .unwrap()
        .read_exact_at(&mut b, off)
        .unwrap();
    assert!(a == b, "the bytes at {off} differ");
    let sent = server.traffic().1 - before;
    // The record's header and the segment (1 MiB) holding the range, each in one of the
    // store's read blocks (small ranges are fetched in blocks of READ_BLOCK); kernel
    // read-ahead may ask for the next segment. Never the 48 MiB before it.
    let block = envseal::store::s3::READ_BLOCK;
    assert!(
        sent > 0 && sent <= 3 * block,
        "{sent} bytes fetched for an 8 KiB read"
    );
    let before = server.traffic().1;
    let mut hole = vec![1u8; 8192];
    got.read_exact_at(&mut hole, 100 * MIB).unwrap();
    assert!(hole.iter().all(|&b| b == 0), "the hole reads as zeros");
    assert_eq!(
        server.traffic().1 - before,
        0,
        "a read in the hole fetched bytes"
    );
}

#[test]
fn a_changed_manifest_is_refused_before_anything_is_mounted() {
    if !can_mount() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("a"), b"a").unwrap();
    common::tree::chmod(&src.join("a"), 0o644);
    let vault = t.path().join("v");
    encrypt_ok(&home, &src, &vault, &[]);
    let m = vault.join("manifest.jsonl");
    let text = fs::read_to_string(&m).unwrap();
    let changed = text.replace("\"mode\":420,", "\"mode\":511,");
    assert_ne!(changed, text);
    fs::write(&m, changed).unwrap();
    let mnt = t.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    // Run under `timeout`: a mount that accepted the manifest would serve until killed.
    let o = common::run(
        Command::new("timeout")
            .arg("60")
            .arg(env!("CARGO_BIN_EXE_envseal"))
            .env("ENVSEAL_HOME", &home)
            .arg("mount")
            .arg(&vault)
            .arg(&mnt),
    );
    assert_eq!(common::tree::code(&o), 3, "{}", common::stderr(&o));
    assert!(!is_mounted(&mnt));
}

#[test]
fn concealed_names_are_revealed_in_the_mount() {
    if !can_mount() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = fixture_copy(&t.path().join("src"));
    let vault = t.path().join("v");
    encrypt_ok(&home, &src, &vault, &["--conceal-names"]);
    let manifest = fs::read_to_string(vault.join("manifest.jsonl")).unwrap();
    assert!(
        !manifest.contains("three-segs.bin"),
        "the names are not concealed"
    );
    let mnt = t.path().join("mnt");
    let _m = Mounted::start(&home, vault.to_str().unwrap(), &mnt, &[]);
    assert_eq!(snapshot(&src), snapshot(&mnt.join("tree")));
}

/// A vault made with `--compress`: the mount reads compressed records (each segment where
/// its record's table says, decoded after its tag is checked) without a flag; a text file of
/// several segments reads whole and from its middle.
#[test]
fn a_compressed_vault_mounts_without_a_flag() {
    if !can_mount() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = fixture_copy(&t.path().join("src"));
    let mut log = String::new();
    for i in 0..60_000 {
        log += &format!(
            "2026-12-07T10:{:02}:{:02}Z host{} GET /api/v1/item/{i} 200\n",
            i / 60 % 60,
            i % 60,
            i % 7
        );
    }
    fs::write(src.join("access.log"), &log).unwrap();
    let vault = t.path().join("v");
    encrypt_ok(
        &home,
        &src,
        &vault,
        &["--compress", "zstd", "--segment-size", "64KiB"],
    );
    let manifest = fs::read_to_string(vault.join("manifest.jsonl")).unwrap();
    assert!(manifest.contains("\"rlen\""), "nothing was compressed");
    let mnt = t.path().join("mnt");
    let _m = Mounted::start(&home, vault.to_str().unwrap(), &mnt, &[]);
    assert_eq!(snapshot(&src), snapshot(&mnt.join("tree")));
    let f = File::open(mnt.join("tree/access.log")).unwrap();
    let mut mid = vec![0u8; 5000];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut mid, log.len() as u64 / 2).unwrap();
    let at = log.len() / 2;
    assert_eq!(mid, log.as_bytes()[at..at + 5000]);
}

/// A compressed record's slots are fetched several at a time (one range read): a flipped
/// byte in one of them is EIO for a read that needs it, while the file's segments before
/// and after it, and the other files, still read.
#[test]
fn a_tampered_compressed_segment_is_eio_and_its_neighbours_read() {
    if !can_mount() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    let mut log = String::new();
    for i in 0..60_000 {
        log += &format!("2026-12-07T10:00:00Z host{} GET /item/{i} 200\n", i % 7);
    }
    fs::write(src.join("bad.log"), &log).unwrap();
    fs::write(src.join("good.log"), &log).unwrap();
    let vault = t.path().join("v");
    encrypt_ok(
        &home,
        &src,
        &vault,
        &["--compress", "zstd", "--segment-size", "64KiB"],
    );
    let rlen = common::tree::manifest_records(&vault)
        .iter()
        .find(|r| r["type"] == "entry" && r["path"] == "src/bad.log")
        .and_then(|r| r["rlen"].as_u64())
        .expect("bad.log is compressed");
    let (obj, off) = &common::tree::objects_by_path(&vault)["src/bad.log"];
    // A byte in the middle of the record: in a slot well after the first, before the last.
    common::tree::flip_byte(&vault.join(obj), off + rlen / 2);

    let mnt = t.path().join("mnt");
    let m = Mounted::start(&home, vault.to_str().unwrap(), &mnt, &[]);
    let bad = File::open(mnt.join("src/bad.log")).unwrap();
    let mut head = vec![0u8; 4096];
    bad.read_exact_at(&mut head, 0).unwrap();
    assert_eq!(head, log.as_bytes()[..4096], "the first segment reads");
    let mut tail = vec![0u8; 4096];
    let at = log.len() - 4096;
    bad.read_exact_at(&mut tail, at as u64).unwrap();
    assert_eq!(tail, log.as_bytes()[at..], "the last segment reads");
    let e = fs::read(mnt.join("src/bad.log")).unwrap_err();
    assert_eq!(errno(&e), libc::EIO, "{e}");
    assert_eq!(fs::read(mnt.join("src/good.log")).unwrap(), log.as_bytes());
    let stderr = m.stderr();
    assert!(
        stderr.contains("src/bad.log") && stderr.contains("fails authentication"),
        "{stderr}"
    );
}

/// A compressed file of 8 MiB and more is a record of its own (docs/FORMAT.md §4.5) whose
/// slots the mount reads a window at a time (one range read, opened on all cores): read whole
/// and at random places it is the source's bytes.
#[test]
fn a_large_compressed_file_reads_whole_and_at_random() {
    if !can_mount() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    let mut log = String::new();
    let mut i = 0u64;
    while log.len() < 20 << 20 {
        log += &format!(
            "2026-12-07T10:{:02}:{:02}Z host{} GET /api/v1/item/{i} 200 {}\n",
            i / 60 % 60,
            i % 60,
            i % 7,
            i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 44
        );
        i += 1;
    }
    fs::write(src.join("big.log"), &log).unwrap();
    let vault = t.path().join("v");
    encrypt_ok(&home, &src, &vault, &["--compress", "zstd"]);
    let rlen = common::tree::manifest_records(&vault)
        .iter()
        .find(|r| r["type"] == "entry" && r["path"] == "src/big.log")
        .and_then(|r| r["rlen"].as_u64())
        .expect("big.log is a compressed record");
    assert!(
        rlen < log.len() as u64 / 2,
        "{rlen} bytes for {}",
        log.len()
    );
    let mnt = t.path().join("mnt");
    let _m = Mounted::start(&home, vault.to_str().unwrap(), &mnt, &[]);
    let got = File::open(mnt.join("src/big.log")).unwrap();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..32 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let off = (x % log.len() as u64) as usize;
        let len = ((x >> 40) as usize % (3 << 20)).min(log.len() - off);
        let mut b = vec![0u8; len];
        got.read_exact_at(&mut b, off as u64).unwrap();
        assert!(
            b == log.as_bytes()[off..off + len],
            "{len} bytes at {off} differ"
        );
    }
    assert!(fs::read(mnt.join("src/big.log")).unwrap() == log.as_bytes());
}
