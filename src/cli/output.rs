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

/// Prints the one-line summary on stderr (unless quiet) and the JSON summary on stdout.
pub fn summary(quiet: bool, json: bool, line: String, value: Value) {
    if !quiet {
        eprintln!("envseal: {}", sanitize(&line));
    }
    if json {
        println!("{value}");
    }
}

pub fn failures_json(list: &[envseal::encrypt::Failure]) -> Value {
    Value::Array(
        list.iter()
            .map(|f| json!({"path": f.path, "error": f.why}))
            .collect(),
    )
}

/// Lists the files that failed, after the run (also with `-q`: failures are never silent).
pub fn print_failures(list: &[envseal::encrypt::Failure]) {
    for f in list {
        eprintln!(
            "envseal: failed: {}: {}",
            sanitize(&f.path),
            sanitize(&f.why)
        );
    }
}
