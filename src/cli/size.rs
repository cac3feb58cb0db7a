//! Byte sizes on the command line: `4096`, `64KiB`, `1MiB`, `256MiB`, `4GiB`.

/// Binary units (the `i` is optional: `64K`, `64KB` and `64KiB` are all 65536 bytes, as in
/// `dd` and `cryptsetup`; nobody sizes segments in powers of ten).
const UNITS: [(&str, u32); 5] = [("", 0), ("k", 10), ("m", 20), ("g", 30), ("t", 40)];

/// Parses a byte size: a whole number, then optionally a unit (`B`, `K`/`KB`/`KiB`, `M`..,
/// `G`.., `T`..; case does not matter, a space may come between).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(format!(
            "invalid size '{s}': expected a number of bytes, e.g. 4096, 64KiB, 256MiB or 4GiB"
        ));
    }
    let (num, unit) = t.split_at(digits);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size '{s}': too large"))?;
    let unit = unit.trim_start().to_ascii_lowercase();
    let prefix = unit
        .strip_suffix("ib")
        .or_else(|| unit.strip_suffix('b'))
        .unwrap_or(&unit);
    // "ib" alone (as in "64ib") is not a unit.
    if unit == "ib" {
        return Err(unknown_unit(s, &unit));
    }
    let shift = UNITS
        .iter()
        .find(|(p, _)| *p == prefix)
        .map(|(_, shift)| *shift)
        .ok_or_else(|| unknown_unit(s, &unit))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("invalid size '{s}': too large"))
}

fn unknown_unit(s: &str, unit: &str) -> String {
    format!("invalid size '{s}': unknown unit '{unit}' (use B, KiB, MiB, GiB or TiB)")
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn parses_bytes_and_binary_units() {
        for (s, want) in [
            ("0", 0),
            ("4096", 4096),
            ("4096B", 4096),
            ("64KiB", 64 << 10),
            ("64K", 64 << 10),
            ("64kb", 64 << 10),
            ("1MiB", 1 << 20),
            ("256MiB", 256 << 20),
            ("256 MiB", 256 << 20),
            (" 256m ", 256 << 20),
            ("4GiB", 4 << 30),
            ("4G", 4 << 30),
            ("2TiB", 2 << 40),
        ] {
            assert_eq!(parse_size(s), Ok(want), "{s}");
        }
    }

    #[test]
    fn rejects_garbage_with_a_useful_message() {
        for s in [
            "", "MiB", "-1", "1.5GiB", "12XB", "64ib", "64 KiB x", "0x10", "1e6",
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
