//! Summaries, JSON output, and making names safe for a terminal.

use serde_json::{json, Value};

/// Replaces control characters so a hostile file name cannot drive the terminal.
pub fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() && c != '\t' {
                '\u{fffd}'
            } else {
                c
            }
        })
        .collect()
}

/// GB/s, decimal, as storage is quoted.
pub fn rate(bytes: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        bytes as f64 / seconds / 1e9
    } else {
        0.0
    }
}

/// The version of the `--json` summaries' schema (docs/JSON.md), bumped when a field changes
/// meaning or goes away; new fields may appear without a bump.
pub const JSON_SCHEMA_VERSION: u32 = 1;

/// Prints the one-line summary on stderr (unless quiet) and the JSON summary on stdout, with
/// its `schema_version`.
pub fn summary(quiet: bool, json: bool, line: String, mut value: Value) {
    if !quiet {
        eprintln!("envseal: {}", sanitize(&line));
    }
    if json {
        if let Value::Object(m) = &mut value {
            m.insert("schema_version".into(), json!(JSON_SCHEMA_VERSION));
        }
        println!("{value}");
    }
}

pub fn failures_json(list: &[envseal::pipeline::encrypt::Failure]) -> Value {
    Value::Array(
        list.iter()
            .map(|f| json!({"path": f.path, "error": f.why}))
            .collect(),
    )
}

/// Lists failures where no progress display showed them.
pub fn print_all_failures<'a>(
    list: impl IntoIterator<Item = &'a envseal::pipeline::encrypt::Failure>,
) {
    for f in list {
        eprintln!(
            "envseal: failed: {}: {}",
            sanitize(&f.path),
            sanitize(&f.why)
        );
    }
}
