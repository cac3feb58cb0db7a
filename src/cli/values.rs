//! Option values parsed and validated once, by clap as it reads the command line (`FromStr`):
//! the handlers get a [`SegmentSize`] or [`Jobs`] and hand the library plain numbers, which
//! nothing checks again. A refused value is a [`BadValue`], printed as envseal's other usage
//! errors are (exit 2), not in clap's words.

use std::fmt;
use std::num::NonZeroUsize;
use std::str::FromStr;

use envseal::format::{self, MAX_SEGMENT_SIZE, MIN_SEGMENT_SIZE};
use envseal::limits::{JOBS_PER_CORE, MAX_JOBS};

use super::size::parse_size;

/// A value a parser of this module refused: the message names the flag, the value and what is
/// allowed; the hint, when there is one, says what to give instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadValue {
    pub message: String,
    pub hint: Option<&'static str>,
}

impl fmt::Display for BadValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for BadValue {}

impl BadValue {
    /// The [`BadValue`] behind a clap error, when one of our parsers refused the value.
    pub fn in_clap_error(e: &clap::Error) -> Option<&BadValue> {
        std::error::Error::source(e).and_then(|s| s.downcast_ref::<BadValue>())
    }

    /// The usage error (exit 2) to report, with its hint.
    pub fn into_error(self) -> anyhow::Error {
        match self.hint {
            Some(hint) => super::messages::usage(self.message, hint),
            None => envseal::Error::Usage(self.message).into(),
        }
    }
}

/// `--segment-size`: a power of two from 4 KiB to 64 MiB (docs/FORMAT.md), given in bytes or
/// with a unit (`64KiB`, `1MiB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentSize(u32);

impl SegmentSize {
    pub fn get(self) -> u32 {
        self.0
    }
}

impl FromStr for SegmentSize {
    type Err = BadValue;

    fn from_str(s: &str) -> Result<Self, BadValue> {
        let n = parse_size(s).map_err(|e| BadValue {
            message: format!("--segment-size: {e}"),
            hint: None,
        })?;
        match u32::try_from(n) {
            Ok(n) if format::valid_segment_size(u64::from(n)) => Ok(SegmentSize(n)),
            _ => Err(BadValue {
                message: format!(
                    "--segment-size {s}: must be a power of two from {}KiB to {}MiB",
                    MIN_SEGMENT_SIZE >> 10,
                    MAX_SEGMENT_SIZE >> 20
                ),
                hint: Some(
                    "use binary units, e.g. 64KiB or 1MiB (1MB is 1000000 bytes, not a power of two)",
                ),
            }),
        }
    }
}

/// `-j/--jobs`: worker threads, at least one. A count over the cap of the run
/// (`envseal::limits::clamp_jobs`: a few per core) is not an error; the run lowers it and says
/// so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Jobs(NonZeroUsize);

impl Jobs {
    pub fn get(self) -> usize {
        self.0.get()
    }

    /// The count given, or one per core.
    pub fn or_cores(j: Option<Jobs>) -> usize {
        j.map_or_else(
            || std::thread::available_parallelism().map_or(1, NonZeroUsize::get),
            Jobs::get,
        )
    }
}

impl FromStr for Jobs {
    type Err = BadValue;

    fn from_str(s: &str) -> Result<Self, BadValue> {
        s.trim()
            .parse::<NonZeroUsize>()
            .map(Jobs)
            .map_err(|_| BadValue {
                message: format!(
                    "-j {s}: the number of worker threads must be a whole number, at least one thread (a count over {JOBS_PER_CORE} per core or over {MAX_JOBS} is lowered to that)"
                ),
                hint: None,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_sizes_are_powers_of_two_in_range() {
        for (s, want) in [
            ("4KiB", 4096),
            ("4096", 4096),
            ("64KiB", 64 << 10),
            ("1MiB", 1 << 20),
            (" 1m ", 1 << 20),
            ("64MiB", 64 << 20),
        ] {
            assert_eq!(
                s.parse::<SegmentSize>().map(SegmentSize::get),
                Ok(want),
                "{s}"
            );
        }
        for s in ["2KiB", "128MiB", "3MiB", "1MB", "4GiB", "0", "16TiB"] {
            let e = s.parse::<SegmentSize>().unwrap_err();
            assert_eq!(
                e.message,
                format!("--segment-size {s}: must be a power of two from 4KiB to 64MiB")
            );
            assert!(e.hint.unwrap().contains("1MB is 1000000 bytes"), "{s}");
        }
        let e = "1XB".parse::<SegmentSize>().unwrap_err();
        assert!(
            e.message.starts_with("--segment-size: invalid size '1XB'"),
            "{}",
            e.message
        );
        assert_eq!(e.hint, None);
    }

    #[test]
    fn jobs_are_whole_numbers_from_one() {
        assert_eq!("1".parse::<Jobs>().map(Jobs::get), Ok(1));
        assert_eq!(" 8 ".parse::<Jobs>().map(Jobs::get), Ok(8));
        // Over the cap is for the run to lower, with a notice.
        assert_eq!("100000".parse::<Jobs>().map(Jobs::get), Ok(100_000));
        for s in ["0", "-1", "", "two", "1.5", "99999999999999999999999"] {
            let e = s.parse::<Jobs>().unwrap_err();
            assert!(e.message.starts_with(&format!("-j {s}: ")), "{}", e.message);
            assert!(
                e.message.contains("a whole number, at least one thread"),
                "{}",
                e.message
            );
        }
        assert_eq!(Jobs::or_cores("3".parse().ok()), 3);
        assert!(Jobs::or_cores(None) >= 1);
    }

    #[test]
    fn clap_reports_our_refusal_as_its_source() {
        use clap::Parser;
        #[derive(Debug, Parser)]
        struct Cmd {
            #[arg(long)]
            segment_size: Option<SegmentSize>,
            #[arg(short = 'j', long)]
            jobs: Option<Jobs>,
        }
        let ok = Cmd::try_parse_from(["x", "--segment-size", "64KiB", "-j", "2"]).unwrap();
        assert_eq!(ok.segment_size.map(SegmentSize::get), Some(64 << 10));
        assert_eq!(ok.jobs.map(Jobs::get), Some(2));
        let e = Cmd::try_parse_from(["x", "-j", "0"]).unwrap_err();
        let bad = BadValue::in_clap_error(&e).expect("our error as the source");
        assert!(bad.message.starts_with("-j 0:"), "{}", bad.message);
        let e = Cmd::try_parse_from(["x", "--segment-size", "1MB"]).unwrap_err();
        let err = BadValue::in_clap_error(&e).unwrap().clone().into_error();
        let (line, hint, code) = super::super::messages::report(&err);
        assert_eq!(code, 2);
        assert!(line.contains("--segment-size 1MB: must be"), "{line}");
        assert!(hint.unwrap().contains("binary units"));
        // Other clap errors are clap's.
        let e = Cmd::try_parse_from(["x", "--nope"]).unwrap_err();
        assert!(BadValue::in_clap_error(&e).is_none());
    }
}
