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

/// A byte count for people: `512 B`, `1.50 KiB`, `1.10 GiB` (exact counts are in `--json`).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.2} {}", UNITS[unit])
}

pub fn failures_json(list: &[envseal::pipeline::encrypt::Failure]) -> Value {
    Value::Array(
        list.iter()
            .map(|f| json!({"path": f.path, "error": f.why}))
            .collect(),
    )
}

/// Lists the files that failed, after the run, except those the progress display already
/// showed as they failed (so `-q` lists them all: failures are never silent).
pub fn print_failures(list: &[envseal::pipeline::encrypt::Failure], bars: &super::progress::Bars) {
    print_all_failures(list.iter().filter(|f| !bars.showed(f)));
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

#[cfg(test)]
mod tests {
    use super::human_bytes;

    #[test]
    fn human_bytes_picks_the_largest_unit_below_1024() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.50 KiB");
        assert_eq!(human_bytes(1183793095), "1.10 GiB");
        assert_eq!(human_bytes(u64::MAX), "16.00 EiB");
    }
}
