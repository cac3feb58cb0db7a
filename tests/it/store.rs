//! The store conformance suite: one set of checks written over `&dyn Store`, run against a
//! local directory and against S3 on a real SeaweedFS; then the S3 store's errors.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use envseal::error::StoreErrorKind;
use envseal::store::local::LocalStore;
use envseal::store::{Shape, Store};
use envseal::Error;

use crate::common::s3::{SeaweedFs, BUCKET};

const MIB: u64 = 1 << 20;

/// Deterministic bytes (a different stream per seed).
fn bytes(len: u64, seed: u8) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ u64::from(seed);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The pieces of `shape` as (offset, len).
fn pieces(shape: Shape) -> Vec<(u64, u64)> {
    let len = shape.len.unwrap();
    let mut out = Vec::new();
    if shape.head > 0 {
        out.push((0, shape.head));
    }
    let mut at = shape.head;
    while at < len {
        let n = shape.piece.min(len - at);
        out.push((at, n));
        at += n;
    }
    out
}

fn read_all(s: &dyn Store, name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    s.reader(name)
        .unwrap()
        .unwrap_or_else(|| panic!("{name} absent"))
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// Bytes a server received and sent so far (S3: its counters); `None` for local.
type Traffic<'a> = Option<&'a dyn Fn() -> (u64, u64)>;

/// Every check of the suite. `other` is a second vault of the same kind (for link_from).
fn conformance(s: &dyn Store, other: &dyn Store, traffic: Traffic) {
    s.create_root().unwrap();
    assert!(s.root_exists().unwrap());

    // ---- small files ----
    assert!(s.put_new("keys-a.json", b"first").unwrap());
    assert!(
        !s.put_new("keys-a.json", b"second").unwrap(),
        "put_new overwrote"
    );
    assert_eq!(s.get("keys-a.json", 100).unwrap().unwrap(), b"first");
    s.replace("keys-a.json", b"replaced").unwrap();
    assert_eq!(s.get("keys-a.json", 100).unwrap().unwrap(), b"replaced");
    assert_eq!(s.len("keys-a.json").unwrap(), Some(8));
    assert_eq!(s.len("absent").unwrap(), None);
    assert!(s.get("absent", 10).unwrap().is_none());
    assert!(s.reader("absent").unwrap().is_none());
    assert!(s.open("absent").unwrap().is_none());
    match s.get("keys-a.json", 4) {
        Err(Error::Integrity { what, .. }) => assert!(what.contains("keys-a.json"), "{what}"),
        other => panic!("get past max: {other:?}"),
    }
    assert!(s.describe("keys-a.json").contains("keys-a.json"));

    // ---- objects in pieces, out of order ----
    let big = Shape {
        len: Some(20 * MIB + 12345),
        head: 100,
        piece: MIB,
        bound: None,
    };
    let data = bytes(big.len.unwrap(), 1);
    let mut w = s.create_object("objects/ab/big", big).unwrap();
    let mut ps = pieces(big);
    ps.reverse();
    ps.swap(3, 10);
    for (o, n) in &ps {
        w.write_at(*o, &data[*o as usize..(*o + *n) as usize])
            .unwrap();
    }
    w.finish().unwrap();
    s.barrier().unwrap();
    assert_eq!(s.len("objects/ab/big").unwrap(), big.len);
    assert_eq!(read_all(s, "objects/ab/big"), data);

    // A small object, and one of open length written in order.
    let small = Shape {
        len: Some(3000),
        head: 10,
        piece: 1000,
        bound: None,
    };
    let sdata = bytes(3000, 2);
    let mut w = s.create_object("objects/cd/small", small).unwrap();
    for (o, n) in pieces(small).into_iter().rev() {
        w.write_at(o, &sdata[o as usize..(o + n) as usize]).unwrap();
    }
    w.finish().unwrap();
    let open = Shape {
        len: None,
        head: 0,
        piece: 4096,
        bound: None,
    };
    let pack = bytes(10_000, 3);
    let mut w = s.create_object("objects/ef/pack", open).unwrap();
    for c in pack.chunks(4096).scan(0u64, |at, c| {
        let o = *at;
        *at += c.len() as u64;
        Some((o, c))
    }) {
        w.write_at(c.0, c.1).unwrap();
    }
    w.finish().unwrap();
    s.barrier().unwrap();
    assert_eq!(s.get("objects/cd/small", 1 << 20).unwrap().unwrap(), sdata);
    assert_eq!(s.get("objects/ef/pack", 1 << 20).unwrap().unwrap(), pack);

    // ---- a ranged read: one range (a block), not the object ----
    let r = s.open("objects/ab/big").unwrap().unwrap();
    assert_eq!(r.len(), big.len.unwrap());
    let before = traffic.map(|t| t());
    let mut buf = vec![0u8; 1000];
    r.read_exact_at(&mut buf, 15 * MIB + 7).unwrap();
    assert_eq!(
        buf,
        data[(15 * MIB + 7) as usize..(15 * MIB + 1007) as usize]
    );
    if let (Some(t), Some((_, sent0))) = (traffic, before) {
        // A small read is served from one block (fetched once, then cached), never the
        // whole object.
        let block = envseal::store::s3::READ_BLOCK;
        let sent = t().1 - sent0;
        assert!(
            sent <= block + (64 << 10),
            "a 1000-byte read sent {sent} bytes"
        );
        let mut again = vec![0u8; 1000];
        r.read_exact_at(&mut again, 15 * MIB + 2007).unwrap();
        assert_eq!(
            again,
            data[(15 * MIB + 2007) as usize..(15 * MIB + 3007) as usize]
        );
        assert_eq!(t().1 - sent0, sent, "a read in a cached block sent more");
    }
    let mut past = vec![0u8; 10];
    let e = r
        .read_exact_at(&mut past, big.len.unwrap() - 5)
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);

    // ---- list ----
    let mut l = s.list("objects/").unwrap();
    l.sort_by(|a, b| a.name.cmp(&b.name));
    let got: Vec<(String, u64)> = l.into_iter().map(|x| (x.name, x.len)).collect();
    assert_eq!(
        got,
        [
            ("objects/ab/big".to_string(), big.len.unwrap()),
            ("objects/cd/small".to_string(), 3000),
            ("objects/ef/pack".to_string(), 10_000),
        ]
    );
    let all = s.list("").unwrap();
    assert!(all.iter().any(|x| x.name == "keys-a.json" && x.len == 8));

    // ---- open length within a bound (a large compressed record): written in order in
    // writes that span parts, ended where the writes end; taken up after an interruption
    // with nothing kept, the parts already uploaded are recognised, not sent again ----
    let bounded = Shape {
        len: None,
        head: 136,
        piece: 8 * MIB,
        bound: Some(40 * MIB),
    };
    let odata = bytes(21 * MIB + 777, 6);
    let write_all = |w: &mut Box<dyn envseal::store::ObjectWriter>, upto: usize| {
        let mut at = 0;
        while at < upto {
            let k = (1_234_567).min(upto - at);
            w.write_at(at as u64, &odata[at..at + k]).unwrap();
            at += k;
        }
    };
    let mut w = s.create_object("objects/56/open", bounded).unwrap();
    write_all(&mut w, 18 * MIB as usize);
    s.barrier().unwrap();
    drop(w);
    let received0 = traffic.map(|t| t().0);
    let mut w = s
        .resume_object("objects/56/open", bounded, 0)
        .unwrap()
        .expect("the interrupted object is taken up");
    write_all(&mut w, odata.len());
    w.finish().unwrap();
    s.barrier().unwrap();
    if let (Some(t), Some(r0)) = (traffic, received0) {
        // Two whole parts (16 MiB + the head) were uploaded before: only the rest goes.
        let received = t().0 - r0;
        assert!(
            received < odata.len() as u64 - 16 * MIB + MIB,
            "{received} bytes received for the rest of a {}-byte object",
            odata.len()
        );
    }
    assert_eq!(s.len("objects/56/open").unwrap(), Some(odata.len() as u64));
    assert_eq!(read_all(s, "objects/56/open"), odata);

    // ---- resume: a writer dropped without finish, its durable parts kept ----
    let shape = Shape {
        len: Some(24 * MIB),
        head: 0,
        piece: MIB,
        bound: None,
    };
    let rdata = bytes(24 * MIB, 4);
    let mut w = s.create_object("objects/12/resumed", shape).unwrap();
    for i in 0..16u64 {
        let o = i * MIB;
        w.write_at(o, &rdata[o as usize..(o + MIB) as usize])
            .unwrap();
    }
    // Three pieces of the third part, which a store of whole parts cannot keep.
    for i in 16..19u64 {
        let o = i * MIB;
        w.write_at(o, &rdata[o as usize..(o + MIB) as usize])
            .unwrap();
    }
    let kept = w.durable_len();
    assert!(kept >= 16 * MIB, "durable_len {kept} after 16 whole pieces");
    s.barrier().unwrap();
    drop(w);
    let received0 = traffic.map(|t| t().0);
    let mut w = s
        .resume_object("objects/12/resumed", shape, kept)
        .unwrap()
        .expect("the interrupted object is taken up");
    for i in (kept / MIB)..24 {
        let o = i * MIB;
        w.write_at(o, &rdata[o as usize..(o + MIB) as usize])
            .unwrap();
    }
    w.finish().unwrap();
    s.barrier().unwrap();
    if let (Some(t), Some(r0)) = (traffic, received0) {
        let received = t().0 - r0;
        let rest = 24 * MIB - kept;
        assert!(
            received >= rest && received < rest + MIB,
            "resuming at {kept} of {} received {received} bytes: kept parts sent again?",
            24 * MIB
        );
    }
    assert_eq!(read_all(s, "objects/12/resumed"), rdata);
    assert!(s
        .resume_object("objects/12/never", shape, 8 * MIB)
        .unwrap()
        .is_none());

    // ---- a streamed file, created only if absent unless replacing ----
    let m1 = bytes(20 * MIB + 3, 5);
    let mut f = s.create_file("manifest.jsonl").unwrap();
    for c in m1.chunks(100_000) {
        f.write_all(c).unwrap();
    }
    assert!(
        s.len("manifest.jsonl").unwrap().is_none(),
        "visible before commit"
    );
    assert!(f.commit(false).unwrap());
    let mut f = s.create_file("manifest.jsonl").unwrap();
    f.write_all(b"another run's manifest").unwrap();
    assert!(
        !f.commit(false).unwrap(),
        "a finished manifest was overwritten"
    );
    let mut f = s.create_file("manifest.jsonl").unwrap();
    f.write_all(&bytes(9 * MIB, 6)).unwrap();
    assert!(
        !f.commit(false).unwrap(),
        "a finished manifest was overwritten (multipart)"
    );
    assert_eq!(read_all(s, "manifest.jsonl"), m1);
    let mut f = s.create_file("manifest.jsonl").unwrap();
    f.write_all(b"rewritten").unwrap();
    assert!(f.commit(true).unwrap());
    assert_eq!(read_all(s, "manifest.jsonl"), b"rewritten");

    // ---- the log ----
    let mut log = s.create_log("journal.jsonl", b"start\n").unwrap().unwrap();
    assert!(s.create_log("journal.jsonl", b"again\n").unwrap().is_none());
    log.append(b"one\n").unwrap();
    log.append(b"two\n").unwrap();
    assert_eq!(log.position(), 14);
    drop(log);
    let (mut log, body) = s.open_log("journal.jsonl").unwrap().unwrap();
    assert_eq!(body, b"start\none\ntwo\n");
    assert_eq!(log.position(), 14);
    log.append(b"torn").unwrap();
    log.truncate(12).unwrap();
    assert_eq!(log.position(), 12);
    let mut rest = Vec::new();
    log.read_from(6).unwrap().read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"one\ntw");
    log.truncate(10).unwrap();
    log.append(b"three\n").unwrap();
    drop(log);
    let (log, body) = s.open_log("journal.jsonl").unwrap().unwrap();
    assert_eq!(body, b"start\none\nthree\n");
    let mut rest = Vec::new();
    log.read_from(10).unwrap().read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"three\n");
    drop(log);
    // Read as a file, the log is what was appended.
    assert_eq!(read_all(s, "journal.jsonl"), b"start\none\nthree\n");
    assert_eq!(
        s.get("journal.jsonl", 100).unwrap().unwrap(),
        b"start\none\nthree\n"
    );
    assert_eq!(s.len("journal.jsonl").unwrap(), Some(16));
    let listed: Vec<_> = s
        .list("")
        .unwrap()
        .into_iter()
        .filter(|x| x.name.starts_with("journal"))
        .collect();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        (listed[0].name.as_str(), listed[0].len),
        ("journal.jsonl", 16)
    );
    // The journal replaced by its receipt.
    s.replace("journal.jsonl", b"receipt\n").unwrap();
    assert_eq!(s.get("journal.jsonl", 100).unwrap().unwrap(), b"receipt\n");
    let (_, body) = s.open_log("journal.jsonl").unwrap().unwrap();
    assert_eq!(body, b"receipt\n");
    assert!(s.create_log("journal.jsonl", b"x").unwrap().is_none());
    s.remove("journal.jsonl").unwrap();
    assert!(s.open_log("journal.jsonl").unwrap().is_none());
    assert!(s.create_log("journal.jsonl", b"new\n").unwrap().is_some());
    s.remove("journal.jsonl").unwrap();
    s.remove("journal.jsonl").unwrap(); // absent is fine

    // ---- the writers' lock ----
    let held = s.lock(false).unwrap();
    // The lock is no name of the vault (an encrypt into a fresh vault must find it empty).
    let names: Vec<String> = s.list("").unwrap().into_iter().map(|l| l.name).collect();
    assert!(!names.iter().any(|n| n.contains("lock")), "{names:?}");
    match s.lock(false) {
        Err(e @ Error::Locked { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(&s.url()), "{msg}");
        }
        other => panic!("a second lock: {:?}", other.map(|_| ())),
    }
    drop(held);
    drop(s.lock(false).unwrap());

    // ---- link_from: without reading the bytes through this process ----
    other.create_root().unwrap();
    assert!(other.put_new("objects/ff/src", &sdata).unwrap());
    let received0 = traffic.map(|t| t().0);
    assert!(s.link_from(other, "objects/ff/src").unwrap());
    if let (Some(t), Some(r0)) = (traffic, received0) {
        assert!(t().0 - r0 < 1000, "link_from sent the bytes");
    }
    assert_eq!(s.get("objects/ff/src", 1 << 20).unwrap().unwrap(), sdata);

    // ---- rename_over: the staged file in place of the old, the staged name gone ----
    assert!(s.put_new("manifest.staged", b"staged").unwrap());
    s.rename_over("manifest.staged", "manifest.jsonl").unwrap();
    assert_eq!(s.get("manifest.jsonl", 100).unwrap().unwrap(), b"staged");
    assert_eq!(s.len("manifest.staged").unwrap(), None);

    // ---- abort: nothing left of an object that will not be finished ----
    let mut w = s.create_object("objects/56/aborted", big).unwrap();
    for (o, n) in pieces(big).into_iter().take(12) {
        w.write_at(o, &data[o as usize..(o + n) as usize]).unwrap();
    }
    w.abort().unwrap();
    s.barrier().unwrap();
    assert_eq!(s.len("objects/56/aborted").unwrap(), None);
    assert!(s
        .resume_object("objects/56/aborted", big, 0)
        .unwrap()
        .is_none());

    s.remove("objects/ab/big").unwrap();
    assert_eq!(s.len("objects/ab/big").unwrap(), None);
}

#[test]
fn local_directory_conforms() {
    let d = tempfile::tempdir().unwrap();
    let s = LocalStore::new(&d.path().join("vault"));
    let other = LocalStore::new(&d.path().join("other"));
    conformance(&s, &other, None);
}

#[test]
fn s3_on_seaweedfs_conforms() {
    let Some(server) = SeaweedFs::start() else {
        return;
    };
    let s = server.store("backups/host1");
    let other = server.store("backups/host0");
    assert_eq!(s.url(), format!("s3://{BUCKET}/backups/host1"));
    abandoned_uploads_are_swept(&s);
    // Whether the server honours If-None-Match decides only how put_new is made safe.
    let honoured = s.honours_conditional_put().unwrap();
    eprintln!("SeaweedFS honours If-None-Match on PUT: {honoured}");
    let traffic = || server.traffic();
    conformance(&s, &other, Some(&traffic));

    // A lock whose holder died (its lease expired) is taken over; a live one is refused
    // by name, without a pid when the holder is on another host.
    let lease = |expires: u64| {
        format!(r#"{{"host":"elsewhere","pid":4242,"token":"t","expires":{expires}}}"#)
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    s.replace("lock.json", lease(now - 10).as_bytes()).unwrap();
    let held = s.lock(false).expect("an expired lease is taken over");
    drop(held);
    assert_eq!(
        s.len("lock.json").unwrap(),
        None,
        "the lock is removed on drop"
    );
    s.replace("lock.json", lease(now + 3600).as_bytes())
        .unwrap();
    match s.lock(false) {
        Err(Error::Locked { path, pid }) => {
            assert_eq!(path.to_str(), Some(s.url().as_str()));
            assert_eq!(pid, None);
        }
        other => panic!("a live lease: {:?}", other.map(|_| ())),
    }
    s.remove("lock.json").unwrap();
    // A live lease of a process of this host that is gone (killed): taken over at once.
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let pid = gone.id();
    gone.wait().unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    s.replace(
        "lock.json",
        format!(
            r#"{{"host":"{}","pid":{pid},"token":"t","expires":{}}}"#,
            host.trim(),
            now + 3600
        )
        .as_bytes(),
    )
    .unwrap();
    drop(s.lock(false).expect("a dead holder's lock is taken over"));

    // A held lease is renewed: still refused after it would have expired.
    let short = server
        .store("backups/host1")
        .with_lease(Duration::from_secs(2), Duration::from_millis(500));
    let held = short.lock(false).unwrap();
    std::thread::sleep(Duration::from_millis(3500));
    assert!(
        matches!(s.lock(false), Err(Error::Locked { .. })),
        "the lease lapsed while held"
    );
    drop(held);
    drop(s.lock(false).unwrap());

    // A writer whose parts do not cover what the caller kept starts over.
    let shape = Shape {
        len: Some(24 * MIB),
        head: 0,
        piece: MIB,
        bound: None,
    };
    let mut w = s.create_object("objects/34/partial", shape).unwrap();
    let d = bytes(8 * MIB, 7);
    for i in 0..8u64 {
        let o = (i * MIB) as usize;
        w.write_at(i * MIB, &d[o..o + MIB as usize]).unwrap();
    }
    s.barrier().unwrap();
    drop(w);
    assert!(s
        .resume_object("objects/34/partial", shape, 16 * MIB)
        .unwrap()
        .is_none());

    // On a server that ignores If-None-Match, nothing is overwritten either (a HEAD first).
    let f = server.store("fallback").assume_no_conditional_puts();
    assert!(!f.honours_conditional_put().unwrap());
    assert!(f.put_new("keys-b.json", b"one").unwrap());
    assert!(!f.put_new("keys-b.json", b"two").unwrap());
    assert_eq!(f.get("keys-b.json", 10).unwrap().unwrap(), b"one");
    let mut m = f.create_file("manifest.jsonl").unwrap();
    m.write_all(b"m1").unwrap();
    assert!(m.commit(false).unwrap());
    let mut m = f.create_file("manifest.jsonl").unwrap();
    m.write_all(&bytes(9 * MIB, 8)).unwrap();
    assert!(!m.commit(false).unwrap());
    assert_eq!(f.get("manifest.jsonl", 10).unwrap().unwrap(), b"m1");
    assert!(f.create_log("journal.jsonl", b"a\n").unwrap().is_some());
    assert!(f.create_log("journal.jsonl", b"b\n").unwrap().is_none());
    let held = f.lock(false).unwrap();
    assert!(matches!(f.lock(false), Err(Error::Locked { .. })));
    drop(held);
}

#[test]
fn s3_errors_name_the_url_and_what_to_do() {
    let Some(server) = SeaweedFs::start() else {
        return;
    };
    let url = format!("s3://{BUCKET}/v");

    let mut vars = server.vars();
    vars.insert("AWS_SECRET_ACCESS_KEY".into(), "wrong-secret".into());
    let s = SeaweedFs::store_with(&url, &vars).unwrap();
    match s.create_root() {
        Err(Error::Store {
            kind,
            url: u,
            detail,
        }) => {
            assert_eq!(kind, StoreErrorKind::Denied, "{detail}");
            assert!(u.contains(&url), "{u}");
            assert!(detail.contains("AWS_SECRET_ACCESS_KEY"), "{detail}");
        }
        other => panic!("wrong secret: {other:?}"),
    }
    assert!(matches!(
        s.put_new("x", b"x"),
        Err(Error::Store {
            kind: StoreErrorKind::Denied,
            ..
        })
    ));

    let s = SeaweedFs::store_with("s3://no-such-bucket/v", &server.vars()).unwrap();
    match s.create_root() {
        Err(e @ Error::Store { .. }) => {
            let msg = e.to_string();
            assert!(
                matches!(
                    &e,
                    Error::Store {
                        kind: StoreErrorKind::NoBucket,
                        ..
                    }
                ),
                "{msg}"
            );
            assert!(
                msg.contains("s3://no-such-bucket/v") && msg.contains("create it"),
                "{msg}"
            );
        }
        other => panic!("missing bucket: {other:?}"),
    }
    assert!(matches!(
        s.lock(true),
        Err(Error::Store {
            kind: StoreErrorKind::NoBucket,
            ..
        })
    ));
    // No bucket, no vault.
    assert!(!s.root_exists().unwrap());

    // Nothing listens there: refused at once, retried a bounded number of times.
    let mut vars = server.vars();
    let dead = crate::common::free_port();
    vars.insert(
        "AWS_ENDPOINT_URL_S3".into(),
        format!("http://127.0.0.1:{dead}"),
    );
    let s = SeaweedFs::store_with(&url, &vars).unwrap();
    let t = Instant::now();
    match s.put_new("x", b"x") {
        Err(e @ Error::Store { .. }) => {
            let msg = e.to_string();
            assert!(
                matches!(
                    &e,
                    Error::Store {
                        kind: StoreErrorKind::Unreachable,
                        ..
                    }
                ),
                "{msg}"
            );
            assert!(
                msg.contains(&url) && msg.contains(&format!("127.0.0.1:{dead}")),
                "{msg}"
            );
        }
        other => panic!("unreachable: {other:?}"),
    }
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "retries took {:?}",
        t.elapsed()
    );
}

/// The command line through `s3://` (the vault argument parses to the S3 store): encrypt a
/// small tree, verify it (deeply), decrypt it, compare.
#[test]
fn s3_cli_round_trip() {
    let Some((server, t, home, src)) = cli_fixture() else {
        return;
    };
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("small"), b"hello").unwrap();
    std::fs::write(src.join("d/big"), bytes(20 * MIB + 5, 9)).unwrap();
    for i in 0..50 {
        std::fs::write(src.join(format!("d/tiny{i}")), format!("tiny {i}")).unwrap();
    }
    let vault = format!("s3://{BUCKET}/cli/v1");
    let with_env = |c: &mut std::process::Command| {
        for (k, v) in server.vars() {
            c.env(k, v);
        }
        c.env_remove("AWS_ENDPOINT_URL")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_DEFAULT_REGION");
    };
    let run = |args: &[&str]| {
        let mut c = crate::common::envseal(&home);
        with_env(&mut c);
        c.args(args);
        let o = crate::common::run(&mut c);
        assert!(
            o.status.success(),
            "{args:?}: {}\n{}",
            crate::common::stderr(&o),
            crate::common::stdout(&o)
        );
        o
    };
    let (received0, _) = server.traffic();
    run(&["encrypt", "-q", "-o", &vault, src.to_str().unwrap()]);
    // Into the bucket, not into a local directory named `s3:`.
    assert!(server.traffic().0 - received0 > 20 * MIB);
    assert!(!std::path::Path::new("s3:").exists());
    let names: Vec<String> = server
        .store("cli/v1")
        .list("")
        .unwrap()
        .into_iter()
        .map(|l| l.name)
        .collect();
    assert!(names.iter().any(|n| n == "manifest.jsonl"), "{names:?}");
    run(&["verify", &vault]);
    run(&["verify", "--deep", &vault]);
    let out = t.path().join("out");
    run(&["decrypt", "-q", &vault, "-o", out.to_str().unwrap()]);
    let back = out.join("src");
    assert_eq!(std::fs::read(back.join("small")).unwrap(), b"hello");
    assert_eq!(
        std::fs::read(back.join("d/big")).unwrap(),
        bytes(20 * MIB + 5, 9)
    );
    assert_eq!(std::fs::read(back.join("d/tiny7")).unwrap(), b"tiny 7");

    // A byte flipped in a stored object: verify --deep fails with the integrity code.
    let store = server.store("cli/v1");
    let small = store
        .list("objects/")
        .unwrap()
        .into_iter()
        .filter(|l| l.len < MIB)
        .min_by_key(|l| l.len)
        .expect("a pack");
    let mut data = store.get(&small.name, MIB).unwrap().unwrap();
    let at = data.len() / 2;
    data[at] ^= 1;
    store.replace(&small.name, &data).unwrap();
    let mut c = crate::common::envseal(&home);
    with_env(&mut c);
    let o = crate::common::run(c.args(["verify", "--deep", &vault]));
    assert_eq!(o.status.code(), Some(3), "{}", crate::common::stderr(&o));
}

/// kill -9 in the middle of an upload (past its first checkpoint), then the same command:
/// it finishes (the dead run's lock taken over at once), sends no part twice (bytes counted
/// by the server), and the vault restores identically.
#[test]
fn s3_cli_finishes_after_kill() {
    let Some((server, t, home, src)) = cli_fixture() else {
        return;
    };
    std::fs::create_dir_all(&src).unwrap();
    let size = 160 * MIB;
    std::fs::write(src.join("image"), bytes(size, 10)).unwrap();
    let vault = format!("s3://{BUCKET}/cli/resume");
    let cmd = || {
        let mut c = crate::common::envseal(&home);
        for (k, v) in server.vars() {
            c.env(k, v);
        }
        c.args(["encrypt", "-q", "-o", &vault, src.to_str().unwrap()]);
        c
    };
    let (r0, _) = server.traffic();
    let mut child = cmd().spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while server.traffic().0 - r0 < 120 * MIB {
        assert!(Instant::now() < deadline, "the upload did not start");
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before the kill"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let (r1, _) = server.traffic();
    let o = crate::common::run(&mut cmd());
    assert!(o.status.success(), "{}", crate::common::stderr(&o));
    let total = server.traffic().0 - r0;
    let first = r1 - r0;
    eprintln!("first run sent {first} bytes, both {total}, for a {size}-byte file");
    // Nothing sent twice: the parts before the checkpoint are kept, and those the killed
    // run sent after it are recognised by their ETags when sealed again. What remains over
    // the object (its tags and header) is the manifest, key file and journal.
    assert!(first < total, "the first run was not cut short");
    assert!(
        total < size + size / 100 + MIB,
        "{total} bytes sent for a {size}-byte file: parts were sent again"
    );
    let mut c = crate::common::envseal(&home);
    for (k, v) in server.vars() {
        c.env(k, v);
    }
    let out = t.path().join("out");
    let o = crate::common::run(c.args(["decrypt", "-q", &vault, "-o", out.to_str().unwrap()]));
    assert!(o.status.success(), "{}", crate::common::stderr(&o));
    assert!(std::fs::read(out.join("src/image")).unwrap() == bytes(size, 10));
}

/// An upload a killed run left (unfinished, so it lists as nothing) is aborted by the sweep
/// unless its name is kept (a checkpointed object a resume takes up).
fn abandoned_uploads_are_swept(s: &dyn Store) {
    let shape = Shape {
        len: Some(20 * MIB),
        head: 0,
        piece: 8 * MIB,
        bound: None,
    };
    let data = bytes(8 * MIB, 9);
    let names = [
        "objects/ab/ab000000000000000000000000000001",
        "objects/ab/ab000000000000000000000000000002",
    ];
    for n in names {
        let mut w = s.create_object(n, shape).unwrap();
        w.write_at(0, &data).unwrap();
        s.barrier().unwrap();
        drop(w); // killed: neither finished nor aborted
    }
    assert!(
        s.list("objects/").unwrap().is_empty(),
        "unfinished uploads list as nothing"
    );
    let keep: std::collections::HashSet<String> = [names[1].to_string()].into();
    s.sweep_uploads("objects/", &keep).unwrap();
    assert!(
        s.resume_object(names[0], shape, 8 * MIB).unwrap().is_none(),
        "the abandoned upload was aborted"
    );
    let kept = s.resume_object(names[1], shape, 8 * MIB).unwrap();
    assert!(kept.is_some(), "the kept upload is still there");
    kept.unwrap().abort().unwrap();
}

/// The rest of a vault's life through `s3://` on SeaweedFS: `ls`, an incremental
/// `--since` run that sends only what changed, `decrypt --only` that fetches only the file
/// asked for, `verify --source`, and a `rewrap` that moves every data key to another CMK
/// (the manifest replaced on the server) after which the vault still verifies deeply.
#[test]
fn s3_cli_lifecycle() {
    let Some((server, t, home, src)) = cli_fixture() else {
        return;
    };
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("small"), b"hello").unwrap();
    std::fs::write(src.join("d/big"), bytes(24 * MIB, 3)).unwrap();
    let run = |args: &[&str]| {
        let mut c = crate::common::envseal(&home);
        for (k, v) in server.vars() {
            c.env(k, v);
        }
        let o = crate::common::run(c.args(args));
        assert!(
            o.status.success(),
            "{args:?}: {}",
            crate::common::stderr(&o)
        );
        o
    };
    let sent = || server.traffic().0;
    let got = || server.traffic().1;
    let v1 = format!("s3://{BUCKET}/life/v1");
    let v2 = format!("s3://{BUCKET}/life/v2");
    let s = src.to_str().unwrap();
    run(&["encrypt", "-q", "-o", &v1, s]);

    let listed = crate::common::stdout(&run(&["ls", &v1]));
    assert!(
        listed.contains("src/d/big") && listed.contains("src/small"),
        "{listed}"
    );

    // Incremental: the big file is unchanged (its object copied on the server), the small
    // one changed; far less than the big file goes up.
    std::fs::write(src.join("small"), b"hello again").unwrap();
    let before = sent();
    run(&["encrypt", "-q", "-o", &v2, "--since", &v1, s]);
    let up = sent() - before;
    assert!(up < 4 * MIB, "--since sent {up} bytes");
    run(&["verify", "--deep", &v2]);
    run(&["verify", "--source", s, &v2]);

    // --only reads the small file's record, not the big object.
    let out = t.path().join("out");
    let before = got();
    run(&[
        "decrypt",
        "-q",
        &v2,
        "-o",
        out.to_str().unwrap(),
        "--only",
        "src/small",
    ]);
    let down = got() - before;
    assert!(down < 4 * MIB, "--only fetched {down} bytes");
    assert_eq!(
        std::fs::read(out.join("src/small")).unwrap(),
        b"hello again"
    );
    assert!(!out.join("src/d/big").exists());

    // Rewrap to a new CMK: a few KMS calls and the manifest replaced; no object moved.
    let o = run(&["kms", "create-key"]);
    let v: serde_json::Value = serde_json::from_str(&crate::common::stdout(&o)).unwrap();
    let key = v["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
    let before = sent();
    run(&["rewrap", "-q", "--key", &key, &v2]);
    assert!(sent() - before < MIB, "rewrap sent object data");
    let keys = crate::common::stdout(&run(&["ls", "--keys", &v2]));
    assert!(keys.contains(&key), "{keys}");
    run(&["verify", "--deep", &v2]);
    let out2 = t.path().join("out2");
    run(&["decrypt", "-q", &v2, "-o", out2.to_str().unwrap()]);
    assert_eq!(
        std::fs::read(out2.join("src/d/big")).unwrap(),
        bytes(24 * MIB, 3)
    );
}

/// What a user meets on the command line when the storage service says no: a wrong
/// secret, a missing bucket, an unreachable endpoint (each exit 1, naming the URL and what
/// to do), and a prefix that holds another vault (exit 2, nothing overwritten). None of
/// them leaves anything that claims to be a finished vault.
#[test]
fn s3_cli_errors_name_the_url_and_what_to_do() {
    let Some((server, t, home, src)) = cli_fixture() else {
        return;
    };
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a"), b"a").unwrap();
    let s = src.to_str().unwrap();
    let envseal = |vars: &[(&str, &str)], args: &[&str]| {
        let mut c = crate::common::envseal(&home);
        for (k, v) in server.vars() {
            c.env(k, v);
        }
        for (k, v) in vars {
            c.env(k, v);
        }
        crate::common::run(c.args(args))
    };
    let fails = |o: &std::process::Output, code: i32, needles: &[&str]| {
        let e = crate::common::stderr(o);
        assert_eq!(o.status.code(), Some(code), "{e}");
        for n in needles {
            assert!(e.contains(n), "{n:?} not in: {e}");
        }
    };
    let v = format!("s3://{BUCKET}/errors/v");
    let o = envseal(
        &[("AWS_SECRET_ACCESS_KEY", "wrong")],
        &["encrypt", "-q", "-o", &v, s],
    );
    fails(&o, 1, &[&v, "AWS_SECRET_ACCESS_KEY"]);
    let o = envseal(&[], &["encrypt", "-q", "-o", "s3://no-such-bucket/v", s]);
    fails(&o, 1, &["s3://no-such-bucket/v", "create it"]);
    let started = Instant::now();
    let o = envseal(
        &[("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")],
        &["encrypt", "-q", "-o", &v, s],
    );
    fails(&o, 1, &[&v, "http://127.0.0.1:9", "AWS_ENDPOINT_URL_S3"]);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "retries unbounded"
    );
    // None of the refusals wrote a manifest.
    assert!(server
        .store("errors/v")
        .list("")
        .unwrap()
        .iter()
        .all(|l| l.name != "manifest.jsonl"));

    // A prefix that holds a finished vault: another encrypt there is refused, unchanged.
    let ok = envseal(&[], &["encrypt", "-q", "-o", &v, s]);
    assert!(ok.status.success(), "{}", crate::common::stderr(&ok));
    let other = t.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let o = envseal(&[], &["encrypt", "-q", "-o", &v, other.to_str().unwrap()]);
    fails(&o, 2, &[&v]);
    let o = envseal(&[], &["verify", "--deep", &v]);
    assert!(o.status.success(), "{}", crate::common::stderr(&o));
}

/// A SeaweedFS server, a scratch directory, a home for envseal's key store and a source
/// directory path (not created) for the command-line tests.
fn cli_fixture() -> Option<(
    SeaweedFs,
    tempfile::TempDir,
    std::path::PathBuf,
    std::path::PathBuf,
)> {
    let server = SeaweedFs::start()?;
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = t.path().join("src");
    Some((server, t, home, src))
}
