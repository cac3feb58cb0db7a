//! Byte sizes on the command line: `4096`, `64KiB`, `1MiB`, `256MiB`, `4GiB`, `1MB`.

/// Unit prefixes and their power of 1024 (binary) or 1000 (decimal).
const PREFIXES: [(&str, u32); 5] = [("", 0), ("k", 1), ("m", 2), ("g", 3), ("t", 4)];

/// Parses a byte size: a whole number, then optionally a unit (case does not matter, a space
/// may come between). `KiB`, `MiB`, `GiB`, `TiB` and the bare `K`, `M`, `G`, `T` (as in `dd`)
/// are powers of 1024; `KB`, `MB`, `GB`, `TB` are powers of 1000, as storage is sold: `1MB` is
/// 1000000 bytes, never silently 1 MiB.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(format!(
            "invalid size '{s}': expected a number of bytes, e.g. 4096, 64KiB, 256MiB, 4GiB or 1GB"
        ));
    }
    let (num, unit) = t.split_at(digits);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size '{s}': too large"))?;
    let unit = unit.trim_start().to_ascii_lowercase();
    let (prefix, base) = if let Some(p) = unit.strip_suffix("ib") {
        (p, 1024u64)
    } else if let Some(p) = unit.strip_suffix('b').filter(|p| !p.is_empty()) {
        (p, 1000)
    } else if unit == "b" {
        ("", 1)
    } else {
        (unit.as_str(), 1024)
    };
    let power = PREFIXES
        .iter()
        .find(|(p, _)| *p == prefix)
        .map(|(_, power)| *power)
        // "ib" alone (as in "64ib") is not a unit.
        .filter(|&power| power > 0 || base != 1024 || unit.is_empty())
        .ok_or_else(|| unknown_unit(s, &unit))?;
    base.checked_pow(power)
        .and_then(|m| n.checked_mul(m))
        .ok_or_else(|| format!("invalid size '{s}': too large"))
}

fn unknown_unit(s: &str, unit: &str) -> String {
    format!(
        "invalid size '{s}': unknown unit '{unit}' (use B, KiB, MiB, GiB, TiB for powers of 1024, or KB, MB, GB, TB for powers of 1000)"
    )
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

#[cfg(test)]
mod tests {
    use super::{human_bytes, parse_size};

    #[test]
    fn human_bytes_picks_the_largest_unit_below_1024() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.50 KiB");
        assert_eq!(human_bytes(1183793095), "1.10 GiB");
        assert_eq!(human_bytes(u64::MAX), "16.00 EiB");
    }

    #[test]
    fn parses_bytes_binary_and_decimal_units() {
        for (s, want) in [
            ("0", 0),
            ("4096", 4096),
            ("4096B", 4096),
            ("64KiB", 64 << 10),
            ("64K", 64 << 10),
            ("64kb", 64_000),
            ("64KB", 64_000),
            ("1MiB", 1 << 20),
            ("1MB", 1_000_000),
            ("256MiB", 256 << 20),
            ("256 MiB", 256 << 20),
            (" 256m ", 256 << 20),
            ("4GiB", 4 << 30),
            ("4G", 4 << 30),
            ("4GB", 4_000_000_000),
            ("2TiB", 2 << 40),
            ("2TB", 2_000_000_000_000),
        ] {
            assert_eq!(parse_size(s), Ok(want), "{s}");
        }
    }

    #[test]
    fn rejects_garbage_with_a_useful_message() {
        for s in [
            "", "MiB", "-1", "1.5GiB", "12XB", "64ib", "64 KiB x", "0x10", "1e6", "64bb",
        ] {
            let e = parse_size(s).unwrap_err();
            assert!(e.contains(&format!("'{s}'")), "{s}: {e}");
        }
        assert!(parse_size("12PiB")
            .unwrap_err()
            .contains("unknown unit 'pib'"));
    }

    #[test]
    fn rejects_overflow() {
        assert_eq!(parse_size("18446744073709551615"), Ok(u64::MAX));
        assert!(parse_size("18446744073709551616")
            .unwrap_err()
            .contains("too large"));
        assert!(parse_size("16777216TiB").unwrap_err().contains("too large"));
        assert_eq!(parse_size("16777215TiB"), Ok(16777215 << 40));
    }
}
