//! Every kind of tree through `s3://` on a real SeaweedFS, with the real binary: the edge-case
//! tree (with `ls`, `verify`, `--only`, `--since`, `rewrap` and a byte flipped in a stored
//! object), 20,000 tiny files, a sparse image, hard links and a concealed vault. Each test
//! starts its own server and counts what crossed the wire with the server's own counters.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Output;

use envseal::store::s3::S3Store;
use envseal::store::Store;
use serde_json::Value;

use crate::common;
use common::s3::{SeaweedFs, BUCKET};
use common::tree::{assert_same_tree, data_map, du_kib, fixture_copy, gen_file, snapshot, write};

const MIB: u64 = 1 << 20;

/// One server, a scratch directory and a home for envseal's key store.
struct Case {
    server: SeaweedFs,
    t: tempfile::TempDir,
    home: PathBuf,
}

impl Case {
    /// `None` (the test skipped, with a message) when there is no `weed` outside CI.
    fn start() -> Option<Case> {
        let server = SeaweedFs::start()?;
        let t = tempfile::tempdir().unwrap();
        let home = t.path().join("home");
        Some(Case { server, t, home })
    }

    fn dir(&self) -> &Path {
        self.t.path()
    }

    fn url(prefix: &str) -> String {
        format!("s3://{BUCKET}/{prefix}")
    }

    /// The vault at `prefix`, straight through the S3 API (what the server holds).
    fn store(&self, prefix: &str) -> S3Store {
        self.server.store(prefix)
    }

    /// The binary with the server's variables, whatever it exits with.
    fn envseal(&self, args: &[&str]) -> Output {
        let mut c = common::envseal(&self.home);
        for (k, v) in self.server.vars() {
            c.env(k, v);
        }
        c.env_remove("AWS_ENDPOINT_URL")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_DEFAULT_REGION");
        common::run(c.args(args))
    }

    /// The binary, which must succeed.
    fn ok(&self, args: &[&str]) -> Output {
        let o = self.envseal(args);
        assert!(
            o.status.success(),
            "{args:?} exited {:?}: {}",
            o.status.code(),
            common::stderr(&o)
        );
        o
    }

    /// Bytes the server received so far.
    fn received(&self) -> u64 {
        self.server.traffic().0
    }

    /// Bytes the server sent so far.
    fn sent(&self) -> u64 {
        self.server.traffic().1
    }

    /// Requests the server answered so far, by HTTP method (its Prometheus counters).
    fn requests(&self, method: &str) -> u64 {
        let text = reqwest::blocking::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(format!(
                "http://127.0.0.1:{}/metrics",
                self.server.metrics_port
            ))
            .send()
            .and_then(|r| r.text())
            .expect("metrics");
        text.lines()
            .filter(|l| l.starts_with("SeaweedFS_s3_request_total{"))
            .filter(|l| l.contains(&format!("bucket=\"{BUCKET}\"")))
            .filter(|l| l.contains(&format!("type=\"{method}\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temporary path")
}

/// The manifest's records, read from the server.
fn manifest(store: &S3Store) -> Vec<Value> {
    let m = store
        .get("manifest.jsonl", 1 << 30)
        .unwrap()
        .expect("a manifest on the server");
    String::from_utf8(m)
        .expect("a UTF-8 manifest")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The name of the object that holds a (clear, UTF-8) path's record, and the record's offset.
fn object_of(store: &S3Store, path: &str) -> (String, u64) {
    let recs = manifest(store);
    let objects: Vec<String> = recs
        .iter()
        .filter(|r| r["type"] == "object")
        .map(|r| {
            let id = r["id"].as_str().unwrap();
            format!("objects/{}/{id}", &id[..2])
        })
        .collect();
    let e = recs
        .iter()
        .find(|r| r["type"] == "entry" && r["path"] == path)
        .unwrap_or_else(|| panic!("no entry {path} in the manifest"));
    (
        objects[e["obj"].as_u64().unwrap() as usize].clone(),
        e["off"].as_u64().unwrap(),
    )
}

/// The tree's UTF-8 paths (relative to its root, the root itself left out).
fn utf8_paths(root: &Path) -> Vec<String> {
    snapshot(root)
        .into_keys()
        .filter(|k| !k.is_empty())
        .filter_map(|k| String::from_utf8(k).ok())
        .collect()
}

/// The edge-case tree, with a file large enough for an object of its own (a multipart
/// upload): `ls`, `verify`, `verify --deep` and a restore identical in contents, modes,
/// times, links and empty directories; `--only` fetching little; an incremental run after a
/// change; `rewrap` to another CMK; and a byte flipped in the large file's object on the
/// server, after which decrypt exits 3, leaves that file absent and restores the rest.
#[test]
fn the_edge_case_tree_round_trips_through_s3() {
    let Some(c) = Case::start() else {
        return;
    };
    let src = fixture_copy(&c.dir().join("src"));
    gen_file(&src.join("big.bin"), 12 * MIB, 7);
    let v1 = Case::url("edge/v1");
    let received = c.received();
    c.ok(&["encrypt", "-q", "-o", &v1, s(&src)]);
    assert!(c.received() - received > 12 * MIB, "the tree did not go up");

    // `ls` names every path (the non-UTF-8 one aside, shown escaped).
    let listed = common::stdout(&c.ok(&["ls", &v1]));
    for p in utf8_paths(&src) {
        assert!(
            listed.contains(&format!("tree/{p}")),
            "ls lacks {p}: {listed}"
        );
    }
    c.ok(&["verify", "-q", &v1]);
    c.ok(&["verify", "-q", "--deep", &v1]);
    let out = c.dir().join("out1");
    c.ok(&["decrypt", "-q", &v1, "-o", s(&out)]);
    assert_same_tree(&src, &out.join("tree"));

    // --only of one small file fetches its pack's block and the manifest, not the large
    // object.
    let out = c.dir().join("out-only");
    let sent = c.sent();
    c.ok(&[
        "decrypt",
        "-q",
        &v1,
        "-o",
        s(&out),
        "--only",
        "tree/seg-plus-1.bin",
    ]);
    let down = c.sent() - sent;
    assert!(
        down < 3 * MIB,
        "--only of a 4 KiB file fetched {down} bytes"
    );
    assert_eq!(
        fs::read(out.join("tree/seg-plus-1.bin")).unwrap(),
        fs::read(src.join("seg-plus-1.bin")).unwrap()
    );
    assert!(!out.join("tree/big.bin").exists());
    assert!(!out.join("tree/one-byte.txt").exists());

    // An incremental run after a change: the large file is copied on the server, only the
    // changed and new files go up; the new vault restores the tree as it is now.
    write(&src.join("one-byte.txt"), b"changed, and longer");
    write(&src.join("deep/new.txt"), b"a new file");
    let v2 = Case::url("edge/v2");
    let received = c.received();
    c.ok(&["encrypt", "-q", "-o", &v2, "--since", &v1, s(&src)]);
    let up = c.received() - received;
    assert!(up < 2 * MIB, "--since sent {up} bytes");
    c.ok(&["verify", "-q", "--deep", &v2]);
    let out = c.dir().join("out2");
    c.ok(&["decrypt", "-q", &v2, "-o", s(&out)]);
    assert_same_tree(&src, &out.join("tree"));

    // Rewrap to a new CMK; the vault still verifies deeply under it.
    let o = c.ok(&["kms", "create-key"]);
    let v: Value = serde_json::from_str(&common::stdout(&o)).unwrap();
    let key = v["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
    c.ok(&["rewrap", "-q", "--key", &key, &v2]);
    let keys = common::stdout(&c.ok(&["ls", "--keys", &v2]));
    assert!(keys.contains(&key), "{keys}");
    c.ok(&["verify", "-q", "--deep", &v2]);

    // A byte flipped in the large file's object, through the S3 API.
    let store = c.store("edge/v2");
    let (obj, off) = object_of(&store, "tree/big.bin");
    assert_eq!(off, 0, "big.bin has an object of its own");
    let mut data = store.get(&obj, 64 * MIB).unwrap().unwrap();
    let at = data.len() / 2;
    data[at] ^= 0x01;
    store.replace(&obj, &data).unwrap();
    let o = c.envseal(&["verify", "--deep", &v2]);
    assert_eq!(o.status.code(), Some(3), "{}", common::stderr(&o));
    let out = c.dir().join("out3");
    let o = c.envseal(&["decrypt", "-q", &v2, "-o", s(&out)]);
    let err = common::stderr(&o);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(err.contains("tree/big.bin"), "{err}");
    let back = out.join("tree");
    assert!(
        fs::symlink_metadata(back.join("big.bin")).is_err(),
        "the damaged file was written"
    );
    assert!(common::tree::temp_files(&out).is_empty());
    // Everything else as the source: contents, modes, times, links.
    let mut want = snapshot(&src);
    want.remove(b"big.bin".as_slice());
    let got = snapshot(&back);
    for (k, n) in &want {
        if k.is_empty() {
            continue; // the root's time: its contents differ by the absent file
        }
        assert_eq!(
            got.get(k),
            Some(n),
            "{} not restored as it was",
            String::from_utf8_lossy(k)
        );
    }
    assert_eq!(got.len(), want.len(), "extra paths restored");
}

/// 20,000 files of a few bytes in a few directories: packed into a handful of objects (not
/// one per file, nor one request each), restored identically, verified deeply.
#[test]
fn twenty_thousand_tiny_files_go_up_in_packs() {
    let Some(c) = Case::start() else {
        return;
    };
    let src = c.dir().join("many");
    for d in 0..8 {
        let dir = src.join(format!("d{d}"));
        fs::create_dir_all(&dir).unwrap();
        for i in 0..2500 {
            fs::write(dir.join(format!("f{i}")), format!("{d}/{i}")).unwrap();
        }
    }
    let v = Case::url("many/v");
    let (received, puts) = (c.received(), c.requests("PUT"));
    c.ok(&["encrypt", "-q", "-o", &v, s(&src)]);
    let up = c.received() - received;
    let puts = c.requests("PUT") - puts;
    let store = c.store("many/v");
    let objects = store.list("objects/").unwrap();
    let packed: u64 = objects.iter().map(|l| l.len).sum();
    let manifest = store.len("manifest.jsonl").unwrap().unwrap_or(0);
    eprintln!(
        "20,000 tiny files: {} objects of {packed} bytes, a manifest of {manifest} bytes, \
         {puts} PUT requests, {up} bytes received in all",
        objects.len()
    );
    assert!(
        !objects.is_empty() && objects.len() <= 10,
        "{} objects for 20,000 files: not packed",
        objects.len()
    );
    // A packed file costs its record (header, tag, bytes): under 256 bytes here. What goes
    // up besides is the manifest and the journal (each file's entry once in each, the
    // journal replaced by its receipt at the end): a couple of KiB a file in all, in a
    // handful of requests.
    assert!(packed < 20_000 * 256, "{packed} bytes of packs");
    assert!(
        up < 20_000 * 2048,
        "{up} bytes received for 20,000 tiny files"
    );
    assert!(
        puts >= objects.len() as u64 && puts < 200,
        "{puts} PUT requests for 20,000 tiny files"
    );
    c.ok(&["verify", "-q", "--deep", &v]);
    let out = c.dir().join("out");
    let sent = c.sent();
    c.ok(&["decrypt", "-q", &v, "-o", s(&out)]);
    let down = c.sent() - sent;
    assert!(down < 20_000 * 1024, "{down} bytes fetched to restore");
    assert_same_tree(&src, &out.join("many"));
}

/// Bytes of a deterministic pseudo-random stream (never a whole 4 KiB block of zeros).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8 | 1
        })
        .collect()
}

/// The bytes of `p` in its data ranges.
fn data_bytes(p: &Path) -> Vec<u8> {
    let f = File::open(p).unwrap();
    let mut out = Vec::new();
    for (a, b) in data_map(p) {
        let mut buf = vec![0u8; (b - a) as usize];
        f.read_exact_at(&mut buf, a).unwrap();
        out.extend(buf);
    }
    out
}

/// A 1 GiB image holding 4.5 MiB of data in a few extents: only the data crosses the wire
/// either way, and the restore has the same hole map, `du` and bytes.
#[test]
fn a_sparse_image_sends_its_data_only() {
    let Some(c) = Case::start() else {
        return;
    };
    let img = c.dir().join("disk.img");
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&img)
        .unwrap();
    f.set_len(1 << 30).unwrap();
    let extents: [(u64, usize); 5] = [
        (0, 1 << 20),
        (100 << 20, 512 << 10),
        ((300 << 20) + 3 * 4096, 1 << 20),
        (700 << 20, 1 << 20),
        ((1 << 30) - (1 << 20), 1 << 20),
    ];
    for (i, &(off, n)) in extents.iter().enumerate() {
        f.write_all_at(&noise(n, i as u64 + 1), off).unwrap();
    }
    f.sync_all().unwrap();
    drop(f);
    if fs::metadata(&img).unwrap().blocks() * 512 >= 64 << 20 {
        eprintln!("skipped: {} keeps no holes", c.dir().display());
        return;
    }
    let v = Case::url("sparse/v");
    let received = c.received();
    c.ok(&["encrypt", "-q", "-o", &v, s(&img)]);
    let up = c.received() - received;
    assert!(up < 16 * MIB, "{up} bytes sent for 4.5 MiB of data");
    c.ok(&["verify", "-q", "--deep", &v]);
    let out = c.dir().join("out");
    let sent = c.sent();
    c.ok(&["decrypt", "-q", &v, "-o", s(&out)]);
    let down = c.sent() - sent;
    assert!(down < 16 * MIB, "{down} bytes fetched for 4.5 MiB of data");
    let back = out.join("disk.img");
    assert_eq!(fs::metadata(&back).unwrap().len(), 1 << 30);
    assert_eq!(data_map(&back), data_map(&img));
    assert_eq!(du_kib(&back), du_kib(&img));
    assert!(data_bytes(&back) == data_bytes(&img), "data differs");
}

/// Three names of one 6 MiB file across directories (and a pair of a small one): stored
/// once, shown by `ls`, restored as links of one inode.
#[test]
fn hard_links_are_stored_once_and_restored_as_links() {
    let Some(c) = Case::start() else {
        return;
    };
    let src = c.dir().join("links");
    gen_file(&src.join("a/big"), 6 * MIB, 3);
    fs::create_dir_all(src.join("b/c")).unwrap();
    fs::hard_link(src.join("a/big"), src.join("b/big-link")).unwrap();
    fs::hard_link(src.join("a/big"), src.join("b/c/big-link2")).unwrap();
    write(&src.join("small"), b"small");
    fs::hard_link(src.join("small"), src.join("a/small-link")).unwrap();
    let v = Case::url("links/v");
    let received = c.received();
    c.ok(&["encrypt", "-q", "-o", &v, s(&src)]);
    let up = c.received() - received;
    assert!(
        up < 8 * MIB,
        "{up} bytes sent: the linked file stored more than once"
    );
    c.ok(&["verify", "-q", "--deep", &v]);
    // `ls`: one name of each group is the file, the others are links to it (which one is
    // first is the walk's business).
    let listed = common::stdout(&c.ok(&["ls", &v]));
    let links: Vec<(String, String)> = listed
        .lines()
        .filter(|l| l.starts_with("hardlink"))
        .map(|l| {
            let (left, target) = l.rsplit_once(" -> ").expect("a link's target");
            let path = left.rsplit_once("  ").expect("a path").1;
            (path.to_string(), target.to_string())
        })
        .collect();
    let big = ["links/a/big", "links/b/big-link", "links/b/c/big-link2"];
    let small = ["links/small", "links/a/small-link"];
    for group in [&big[..], &small[..]] {
        let of: Vec<_> = links
            .iter()
            .filter(|(p, _)| group.contains(&p.as_str()))
            .collect();
        assert_eq!(of.len(), group.len() - 1, "{listed}");
        for (p, t) in of {
            assert!(
                group.contains(&t.as_str()) && t != p,
                "{p} -> {t}: {listed}"
            );
        }
    }
    assert_eq!(links.len(), 3, "{listed}");
    let out = c.dir().join("out");
    c.ok(&["decrypt", "-q", &v, "-o", s(&out)]);
    let back = out.join("links");
    assert_same_tree(&src, &back);
    let ino = |p: &str| {
        let md = fs::metadata(back.join(p)).unwrap();
        (md.dev(), md.ino(), md.nlink())
    };
    let big = ino("a/big");
    assert_eq!(big.2, 3, "a/big has {} names", big.2);
    assert_eq!(ino("b/big-link"), big);
    assert_eq!(ino("b/c/big-link2"), big);
    let small = ino("small");
    assert_eq!(small.2, 2);
    assert_eq!(ino("a/small-link"), small);
}

/// `--conceal-names`: no name of the tree in any object's name or bytes on the server (every
/// object listed and read); `ls` with the key shows them; the restore is identical.
#[test]
fn a_concealed_vault_keeps_names_off_the_server() {
    let Some(c) = Case::start() else {
        return;
    };
    let src = fixture_copy(&c.dir().join("src"));
    write(&src.join("deep/quarterly-report.txt"), b"numbers");
    let v = Case::url("concealed/v");
    c.ok(&["encrypt", "-q", "--conceal-names", "-o", &v, s(&src)]);

    // Every name of the tree (components of 4 bytes or more, and symlink targets).
    let mut names: BTreeMap<Vec<u8>, ()> = BTreeMap::new();
    for (k, n) in snapshot(&src) {
        for part in k.split(|&b| b == b'/') {
            if part.len() >= 4 {
                names.insert(part.to_vec(), ());
            }
        }
        if let common::tree::Kind::Symlink(t) = n.kind {
            names.insert(t.as_os_str().as_bytes().to_vec(), ());
        }
    }
    names.insert(b"tree/".to_vec(), ());
    names.insert(b"\"tree\"".to_vec(), ());
    names.insert(src.as_os_str().as_bytes().to_vec(), ());
    assert!(names.len() > 15, "{names:?}");
    let store = c.store("concealed/v");
    let all = store.list("").unwrap();
    assert!(all.iter().any(|l| l.name == "manifest.jsonl"), "{all:?}");
    let mut read = 0;
    for l in &all {
        let bytes = store.get(&l.name, 256 * MIB).unwrap().unwrap();
        read += bytes.len();
        for n in names.keys() {
            let show = String::from_utf8_lossy(n);
            assert!(
                !l.name
                    .as_bytes()
                    .windows(n.len())
                    .any(|w| w == n.as_slice()),
                "{show:?} in the object name {}",
                l.name
            );
            assert!(
                !bytes.windows(n.len()).any(|w| w == n.as_slice()),
                "{show:?} in the bytes of {}",
                l.name
            );
        }
    }
    assert!(read > 12 * 1024, "read {read} bytes of the vault");

    c.ok(&["verify", "-q", &v]);
    c.ok(&["verify", "-q", "--deep", &v]);
    let listed = common::stdout(&c.ok(&["ls", &v]));
    for p in utf8_paths(&src) {
        assert!(
            listed.contains(&format!("tree/{p}")),
            "ls lacks {p}: {listed}"
        );
    }
    let out = c.dir().join("out");
    c.ok(&["decrypt", "-q", &v, "-o", s(&out)]);
    assert_same_tree(&src, &out.join("tree"));
}
