//! The vault format's constants and byte layouts, in one place. `docs/FORMAT.md` is the
//! normative text; every number here appears there.

pub mod compress;
pub mod header;
pub mod manifest;
pub mod sparse;
pub mod wrap;

pub use header::ObjectHeader;

/// Format version written in object headers, key files, journals and manifests.
pub const FORMAT_VERSION: u16 = 2;

/// Algorithm suite 1: AES-256-GCM segments, BLAKE3 key derivation, digests and MACs.
pub const ALG_AES256GCM_BLAKE3: u16 = 1;

/// Algorithm suite 2: suite 1 with each segment stored raw or Zstandard-compressed, and a
/// sealed table of stored segment lengths at the record's end (docs/FORMAT.md §4.5).
pub const ALG_AES256GCM_ZSTD_BLAKE3: u16 = 2;

/// First bytes of every object.
pub const OBJECT_MAGIC: [u8; 8] = *b"envseal\0";

/// Object header length in bytes (see [`header`]).
pub const HEADER_LEN: usize = 136;

/// AES-GCM tag length.
pub const TAG_LEN: usize = 16;
/// AES-GCM nonce length (12 bytes; never longer, see docs/FORMAT.md §4.2).
pub const NONCE_LEN: usize = 12;
/// Length of the derived per-file nonce prefix; the nonce is prefix ‖ BE32(index) ‖ last-flag.
pub const NONCE_PREFIX_LEN: usize = 7;
/// Random per-file salt.
pub const SALT_LEN: usize = 32;
/// Vault, batch and file ids.
pub const ID_LEN: usize = 16;
/// Key commitments, keys, digests and MACs.
pub const DIGEST_LEN: usize = 32;

/// Segment sizes are powers of two in this range (so that plaintext MACs can be computed per
/// segment in parallel as BLAKE3 subtrees).
pub const MIN_SEGMENT_SIZE: u32 = 4 * 1024;
pub const MAX_SEGMENT_SIZE: u32 = 64 * 1024 * 1024;
pub const DEFAULT_SEGMENT_SIZE: u32 = 1024 * 1024;

/// At most 2^32 segments per file (the nonce's counter is 32 bits).
pub const MAX_SEGMENTS: u64 = 1 << 32;

/// A batch (one data key) holds at most this many files ...
pub const BATCH_MAX_FILES: u64 = 1 << 20;
/// ... and at most this many plaintext bytes (a larger single file gets a batch of its own).
pub const BATCH_MAX_BYTES: u64 = 1 << 44;

/// Files smaller than this are sealed into shared packs by default (docs/PERFORMANCE.md);
/// larger ones get an object of their own. An encoder's choice: readers accept any layout.
pub const DEFAULT_PACK_THRESHOLD: u64 = 1 << 20;
/// A pack is closed once it holds at least this many bytes (an encoder's choice too).
pub const PACK_TARGET: u64 = 32 << 20;

/// Zero extents are found in aligned blocks of this size (an encoder's choice; readers
/// accept any extents, docs/FORMAT.md §6.4).
pub const ZERO_BLOCK: u64 = 1 << 20;
/// Holes and zero extents per file, at most (a file with more keeps its largest; the rest
/// are stored as data).
pub const MAX_GAPS: usize = 16384;

/// Limits for parsing untrusted manifests, key files and journals.
pub const MAX_MANIFEST_LINE: usize = 1 << 20;
/// A key file holds one batch record (at most a manifest line), pretty-printed.
pub const MAX_KEY_FILE: u64 = 2 << 20;
pub const MAX_ENTRIES: u64 = 1 << 32;
pub const MAX_WRAPPED_KEYS: usize = 64;
pub const MAX_PATH_BYTES: usize = 4096;
pub const MAX_BATCHES: usize = 1 << 16;
/// Parts of one sharded run: each has a batch at least, and a merged vault at most
/// `MAX_BATCHES` (§6.1).
pub const MAX_SHARDS: usize = 1 << 12;
/// Objects (packs and single-file objects) per vault.
pub const MAX_OBJECTS: u64 = 1 << 32;
/// Directory depth of a vault path (bounds the tree-order check's stack).
pub const MAX_DEPTH: usize = 1024;

/// BLAKE3 `derive_key` contexts, one per purpose (docs/FORMAT.md §3). Variable inputs go in the
/// key material, never here.
pub mod kdf {
    pub const SEGMENT_KEY: &str = "envseal 2026-12-01 v2 file segment key";
    pub const NONCE_PREFIX: &str = "envseal 2026-12-01 v2 file nonce prefix";
    pub const FILE_COMMITMENT: &str = "envseal 2026-12-01 v2 file key commitment";
    pub const PLAINTEXT_MAC: &str = "envseal 2026-12-01 v2 file plaintext mac";
    pub const BATCH_COMMITMENT: &str = "envseal 2026-12-01 v2 batch key commitment";
    pub const MANIFEST_MAC: &str = "envseal 2026-12-01 v2 manifest mac";
    pub const NAME_KEY: &str = "envseal 2026-12-01 v2 name encryption key";
    pub const JOURNAL_MAC: &str = "envseal 2026-12-01 v2 journal mac";
}

/// Fixed inputs of the manifest MAC (docs/FORMAT.md §6.3).
pub const MANIFEST_END_LABEL: &[u8] = b"envseal manifest v2 end";

/// Vault directory layout.
pub mod layout {
    pub const MANIFEST: &str = "manifest.jsonl";
    pub const JOURNAL: &str = "journal.jsonl";
    /// A rewrap's new manifest, read back and authenticated before it replaces the old.
    pub const MANIFEST_STAGED: &str = "manifest.new";
    pub const OBJECTS_DIR: &str = "objects";
    /// Names of objects begin with this (`objects/<xx>/<id>`).
    pub const OBJECTS_PREFIX: &str = "objects/";
    pub const KEYS_PREFIX: &str = "keys-";
    pub const KEYS_SUFFIX: &str = ".json";
}

/// Number of segments of a plaintext of `size` bytes: at least one (an empty file has one
/// empty segment), so every length has exactly one segmentation.
pub fn segment_count(size: u64, segment_size: u32) -> u64 {
    if size == 0 {
        1
    } else {
        size.div_ceil(u64::from(segment_size))
    }
}

/// Length of a record (an object header and its segments) for a plaintext of `size` bytes.
pub fn object_len(size: u64, segment_size: u32) -> u64 {
    HEADER_LEN as u64 + size + segment_count(size, segment_size) * TAG_LEN as u64
}

/// Plaintext length of segment `index` (of `count`).
pub fn segment_plain_len(size: u64, segment_size: u32, index: u64) -> usize {
    let start = index * u64::from(segment_size);
    (size.saturating_sub(start)).min(u64::from(segment_size)) as usize
}

/// Offset of segment `index` in its record.
pub fn segment_offset(segment_size: u32, index: u64) -> u64 {
    HEADER_LEN as u64 + index * (u64::from(segment_size) + TAG_LEN as u64)
}

/// Whether `s` is an acceptable segment size.
pub fn valid_segment_size(s: u64) -> bool {
    s.is_power_of_two() && (MIN_SEGMENT_SIZE as u64..=MAX_SEGMENT_SIZE as u64).contains(&s)
}

/// Lower-case hex of an id or digest.
pub fn to_hex(b: &[u8]) -> String {
    hex::encode(b)
}

/// Parses fixed-length lower-case hex.
pub fn from_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    if s.len() != 2 * N || s.bytes().any(|c| c.is_ascii_uppercase()) {
        return None;
    }
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

/// A fresh random array (ids, salts). The OS RNG failing is not recoverable.
pub fn random<const N: usize>() -> std::io::Result<[u8; N]> {
    let mut out = [0u8; N];
    getrandom::getrandom(&mut out).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segmentation_is_unique() {
        let s = 4096;
        assert_eq!(segment_count(0, s), 1);
        assert_eq!(segment_count(1, s), 1);
        assert_eq!(segment_count(4095, s), 1);
        assert_eq!(segment_count(4096, s), 1);
        assert_eq!(segment_count(4097, s), 2);
        assert_eq!(segment_plain_len(4097, s, 1), 1);
        assert_eq!(segment_plain_len(8192, s, 1), 4096);
        assert_eq!(segment_plain_len(0, s, 0), 0);
        assert_eq!(object_len(0, s), HEADER_LEN as u64 + 16);
        assert_eq!(object_len(4097, s), HEADER_LEN as u64 + 4097 + 32);
        assert!(valid_segment_size(1 << 20));
        assert!(!valid_segment_size(3 << 20));
        assert!(!valid_segment_size(1024));
    }

    #[test]
    fn hex_round_trip() {
        let id = [0xabu8; 16];
        assert_eq!(from_hex::<16>(&to_hex(&id)), Some(id));
        assert_eq!(from_hex::<16>("AB"), None);
        assert_eq!(from_hex::<2>("ABCD"), None);
    }
}
