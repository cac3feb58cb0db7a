//! Compressed records (docs/FORMAT.md §4.5): the layout of a suite-2 record, its table of
//! stored segment lengths, and the bounded decoding of one stored segment. No I/O, no keys.
//!
//! A suite-2 record is `header ‖ slot_0 ‖ … ‖ slot_{n−1} ‖ table`. Slot `i` is the sealed
//! *stored form* of segment `i` (`c_i` bytes, then the tag): the segment's plaintext itself
//! when `c_i` equals its length, else a Zstandard stream that decodes to exactly that
//! plaintext. The table, sealed under its own nonce, lists every `c_i` as BE32, so that a
//! reader finds slot `i` without reading the slots before it.

use super::{segment_count, segment_plain_len, HEADER_LEN, TAG_LEN};

/// Bytes of one table entry (a stored length, BE32).
pub const TABLE_ENTRY_LEN: u64 = 4;

/// The nonce's last byte for the table (segments use 0 and 1, §4.2): the table's nonce is
/// `nonce_prefix ‖ BE32(n) ‖ 0x02`, never a segment's.
pub const TABLE_NONCE_FLAG: u8 = 2;

/// The Zstandard level `--compress zstd` uses when none is given (docs/PERFORMANCE.md
/// "Compression"). An encoder's choice: readers decode any level.
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

/// With `--compress`, files below this size are packed (and so compressed): a pack's file is
/// sealed whole in one buffer, which bounds it; larger files are sealed window by window as
/// suite-1 records. An encoder's choice (docs/PERFORMANCE.md "Compression").
pub const COMPRESS_PACK_THRESHOLD: u64 = 8 << 20;

/// Levels `--compress zstd:LEVEL` accepts (those of the reference library).
pub const ZSTD_LEVELS: std::ops::RangeInclusive<i32> = 1..=19;

/// Length of the sealed table of a record of `n` segments.
pub fn table_len(n: u64) -> u64 {
    n * TABLE_ENTRY_LEN + TAG_LEN as u64
}

/// The least and the greatest length of a suite-2 record of `size` stored bytes: every
/// segment stored in 0 bytes, or every one raw.
pub fn record_len_range(size: u64, seg: u32) -> (u64, u64) {
    let n = segment_count(size, seg);
    let fixed = HEADER_LEN as u64 + n * TAG_LEN as u64 + table_len(n);
    (fixed, fixed + size)
}

/// The stored lengths of a record's segments, checked against the record's length.
pub struct Table {
    /// `c_i` for every segment.
    pub stored: Vec<u32>,
    /// Offset of slot `i` in the record, for every segment and one more (the table's).
    offsets: Vec<u64>,
}

impl Table {
    /// Parses an opened table (`4·n` bytes) of a record of `size` stored bytes whose length is
    /// `rlen`, refusing (§4.5) a stored length above its segment's plaintext length and a
    /// table whose slots do not add up to the record's length.
    pub fn parse(opened: &[u8], size: u64, seg: u32, rlen: u64) -> Result<Table, String> {
        let n = segment_count(size, seg);
        if opened.len() as u64 != n * TABLE_ENTRY_LEN {
            return Err("the segment table has the wrong length".into());
        }
        let mut stored = Vec::with_capacity(opened.len() / 4);
        let mut offsets = Vec::with_capacity(opened.len() / 4 + 1);
        let mut at = HEADER_LEN as u64;
        for (i, c) in opened.chunks_exact(4).enumerate() {
            let c = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
            if c as usize > segment_plain_len(size, seg, i as u64) {
                return Err(format!(
                    "the segment table gives segment {i} more bytes than it holds"
                ));
            }
            offsets.push(at);
            at += u64::from(c) + TAG_LEN as u64;
            stored.push(c);
        }
        offsets.push(at);
        let total = at + table_len(n);
        if total != rlen {
            return Err(format!(
                "the segment table adds up to {total} bytes, the record is {rlen}"
            ));
        }
        Ok(Table { stored, offsets })
    }

    /// Encodes the stored lengths, as sealed (before the tag).
    pub fn encode(stored: &[u32]) -> Vec<u8> {
        stored.iter().flat_map(|c| c.to_be_bytes()).collect()
    }

    /// Offset of slot `i` in its record (`i` up to `n`: slot `n` is the table).
    pub fn slot_offset(&self, i: u64) -> u64 {
        self.offsets[i as usize]
    }
}

/// The stored form of one segment: a Zstandard frame at `level` when it is shorter than the
/// plaintext, else `None` (the segment is stored raw).
pub fn compress_segment(plain: &[u8], level: i32) -> Option<Vec<u8>> {
    if plain.is_empty() {
        return None;
    }
    // An output one byte short of the plaintext: a frame that does not fit saves nothing.
    let mut out = vec![0u8; plain.len() - 1];
    let n = zstd::bulk::compress_to_buffer(plain, &mut out[..], level).ok()?;
    out.truncate(n);
    Some(out)
}

/// Decodes the opened stored form of a segment of `plain_len` bytes into `out[..plain_len]`
/// (§4.5): raw when it is `plain_len` bytes; otherwise a Zstandard stream, whose output is
/// bounded by `plain_len` (a decompression bomb stops there) and MUST be exactly that long.
pub fn decode_segment(stored: &[u8], plain_len: usize, out: &mut [u8]) -> Result<(), String> {
    if stored.len() == plain_len {
        out[..plain_len].copy_from_slice(stored);
        return Ok(());
    }
    if stored.len() > plain_len {
        return Err("a stored segment is longer than its plaintext".into());
    }
    let mut d = zstd::bulk::Decompressor::new().map_err(|e| e.to_string())?;
    let got = d
        .decompress_to_buffer(stored, &mut out[..plain_len])
        .map_err(|e| format!("a compressed segment does not decode ({e})"))?;
    if got != plain_len {
        return Err(format!(
            "a compressed segment decodes to {got} bytes, not its {plain_len}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compresses_only_when_it_saves() {
        let text = b"2026-12-07T09:00:00Z INFO request served path=/a status=200\n".repeat(200);
        let c = compress_segment(&text, DEFAULT_ZSTD_LEVEL).unwrap();
        assert!(c.len() < text.len() / 10);
        let mut out = vec![0u8; text.len()];
        decode_segment(&c, text.len(), &mut out).unwrap();
        assert_eq!(out, text);
        let mut random = vec![0u8; 4096];
        getrandom::getrandom(&mut random).unwrap();
        assert!(compress_segment(&random, DEFAULT_ZSTD_LEVEL).is_none());
        assert!(compress_segment(b"", DEFAULT_ZSTD_LEVEL).is_none());
    }

    #[test]
    fn decoding_is_bounded_and_exact() {
        let text = vec![b'a'; 8192];
        let c = compress_segment(&text, 1).unwrap();
        let mut out = vec![0u8; 8192];
        // A bomb: a frame that decodes to more than the segment holds stops at the bound.
        assert!(decode_segment(&c, 4096, &mut out).is_err());
        // Short output is refused too.
        let short = compress_segment(&text[..4000], 1).unwrap();
        assert!(decode_segment(&short, 4096, &mut out).is_err());
        // Garbage is refused, and so is a stored form longer than the plaintext.
        assert!(decode_segment(&[1, 2, 3], 4096, &mut out).is_err());
        assert!(decode_segment(&[0; 5], 4, &mut out).is_err());
    }

    #[test]
    fn the_table_must_add_up() {
        let seg = 4096;
        let size = 4096 + 100;
        let (lo, hi) = record_len_range(size, seg);
        let rlen = |c0: u64, c1: u64| HEADER_LEN as u64 + c0 + c1 + 32 + table_len(2);
        let t = Table::parse(&Table::encode(&[10, 100]), size, seg, rlen(10, 100)).unwrap();
        assert_eq!(t.slot_offset(1), HEADER_LEN as u64 + 10 + 16);
        assert_eq!(rlen(0, 0), lo);
        assert_eq!(rlen(4096, 100), hi);
        assert!(Table::parse(&Table::encode(&[10, 100]), size, seg, rlen(10, 99)).is_err());
        assert!(Table::parse(&Table::encode(&[10, 101]), size, seg, rlen(10, 101)).is_err());
        assert!(Table::parse(&Table::encode(&[10]), size, seg, rlen(10, 0)).is_err());
    }
}
