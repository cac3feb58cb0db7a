//! `verify --sample`: a vault checked a slice at a time. On a vault in SeaweedFS the server
//! counts the bytes each run fetched: slices 1/5 ... 5/5 together read every object once,
//! a flipped byte is caught by exactly the one slice that holds its object, and a share of
//! 10% reads about a tenth.

use crate::common;
use crate::common::s3::{SeaweedFs, BUCKET};
use envseal::store::Store;

const MIB: u64 = 1 << 20;

#[test]
fn slices_read_every_object_once_and_a_share_reads_its_share() {
    let Some(server) = SeaweedFs::start() else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let src = t.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    // 40 objects of 1.5 MiB (files of a MiB or more are objects of their own) and a pack.
    for i in 0..40 {
        common::tree::gen_file(&src.join(format!("f{i:02}")), 3 * MIB / 2, i);
    }
    for i in 0..100 {
        std::fs::write(src.join(format!("small{i}")), format!("small {i}")).unwrap();
    }
    let vault = format!("s3://{BUCKET}/sample/v");
    let envseal = |args: &[&str]| {
        let mut c = common::envseal(&home);
        for (k, v) in server.vars() {
            c.env(k, v);
        }
        common::run(c.args(args))
    };
    let o = envseal(&["encrypt", "-q", "-o", &vault, src.to_str().unwrap()]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let store = server.store("sample/v");
    let objects: Vec<_> = store.list("objects/").unwrap();
    let total: u64 = objects.iter().map(|l| l.len).sum();
    let manifest = store.len("manifest.jsonl").unwrap().unwrap();

    // Each slice, its bytes fetched (less the manifest, read whole by each run).
    let mut fetched = 0u64;
    let mut sampled = 0u64;
    for k in 1..=5 {
        let before = server.traffic().1;
        let o = envseal(&[
            "verify",
            "--deep",
            "--json",
            "--sample",
            &format!("{k}/5"),
            &vault,
        ]);
        assert!(o.status.success(), "{}", common::stderr(&o));
        let got = server.traffic().1 - before;
        let v: serde_json::Value = serde_json::from_str(&common::stdout(&o)).unwrap();
        sampled += v["sampled_bytes"].as_u64().unwrap();
        assert_eq!(v["object_bytes"].as_u64().unwrap(), total);
        fetched += got.saturating_sub(manifest);
    }
    assert_eq!(sampled, total, "the slices split the objects");
    eprintln!("5 slices fetched {fetched} bytes of {total} in objects");
    assert!(
        fetched >= total && fetched <= total + total / 20,
        "the 5 slices fetched {fetched} bytes for {total} bytes of objects"
    );

    // A share: 10% of the bytes, give or take one object.
    let before = server.traffic().1;
    let o = envseal(&["verify", "--deep", "--sample", "10%", &vault]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert!(common::stderr(&o).contains("a sample") || common::stdout(&o).contains("a sample"));
    let got = server.traffic().1 - before - manifest;
    assert!(
        got >= total / 10 && got <= total / 10 + 2 * MIB,
        "--sample 10% fetched {got} of {total}"
    );

    // A flipped byte: caught by one slice only.
    let victim = &objects[objects.len() / 2];
    let mut data = store.get(&victim.name, 4 * MIB).unwrap().unwrap();
    data[300] ^= 1;
    store.replace(&victim.name, &data).unwrap();
    let caught: Vec<u32> = (1..=5)
        .filter(|k| {
            let o = envseal(&["verify", "--deep", "--sample", &format!("{k}/5"), &vault]);
            match o.status.code() {
                Some(0) => false,
                Some(3) => true,
                c => panic!("exit {c:?}: {}", common::stderr(&o)),
            }
        })
        .collect();
    assert_eq!(caught.len(), 1, "caught by slices {caught:?}");
}
