//! `envseal bench` through the real binary: small sizes, so it runs in a second or two.

use crate::common;

use common::{envseal, run, stderr, stdout};
use serde_json::Value;

#[test]
fn bench_json_reports_positive_figures_and_sane_ratios() {
    let home = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let out = run(envseal(home.path())
        .env("TMPDIR", scratch.path())
        .args(["bench", "--size", "8MiB", "-j", "2", "--json"]));
    assert!(out.status.success(), "bench failed: {}", stderr(&out));
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["size"], 8 << 20);
    assert_eq!(v["jobs"], 2);
    let figures = v["figures"].as_object().unwrap();
    for name in [
        "seal_single",
        "seal_parallel",
        "open_single",
        "open_parallel",
        "blake3_single",
        "blake3_parallel",
        "memcpy",
        "page_cache_write",
        "durable_write",
        "tree_write",
        "encrypt_tree",
    ] {
        let f = figures[name].as_f64().unwrap_or(-1.0);
        assert!(f > 0.0 && f.is_finite(), "{name} = {f}");
    }
    let f = |k: &str| figures[k].as_f64().unwrap();
    let limit = f("seal_parallel")
        .min(f("blake3_parallel"))
        .min(f("page_cache_write"));
    assert_eq!(v["limit"].as_f64().unwrap(), limit);
    for ratio in ["ratio", "tree_ratio"] {
        let r = v[ratio].as_f64().unwrap();
        assert!(r > 0.0 && r < 10.0, "{ratio} = {r}");
    }
    // The scratch files are gone, and nothing was put in the user's key store.
    assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0);
    assert!(!home.path().join("keystore").exists());
}

#[test]
fn bench_table_has_a_row_per_figure_and_the_ratio() {
    let home = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let out = run(envseal(home.path())
        .env("TMPDIR", scratch.path())
        .args(["bench", "--size", "1MiB", "-j", "1"]));
    assert!(out.status.success(), "bench failed: {}", stderr(&out));
    let text = stdout(&out);
    for row in [
        "aes-256-gcm seal",
        "blake3 keyed",
        "page cache write",
        "encrypt (tree)",
    ] {
        assert!(text.contains(row), "no {row} row in:\n{text}");
    }
    assert!(text.contains("encrypt reaches"), "{text}");
    assert!(text.contains("/s"), "{text}");
}

#[test]
fn bench_rejects_bad_sizes_and_jobs() {
    let home = tempfile::tempdir().unwrap();
    for (args, want) in [
        (&["bench", "--size", "8XB"][..], "unknown unit"),
        (&["bench", "--size", "4KiB"][..], "at least 1MiB"),
        (&["bench", "-j", "0"][..], "at least one thread"),
    ] {
        let out = run(envseal(home.path()).args(args));
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(want), "{args:?}: {}", stderr(&out));
    }
}
