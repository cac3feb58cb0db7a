//! The object header: 136 bytes at the start of every object.
//!
//! ```text
//! offset size field
//!      0    8 magic "envseal\0"
//!      8    2 format version (BE)         ┐
//!     10    2 algorithm suite (BE)        │
//!     12    4 segment size (BE)           │ the "bound fields": key material for every
//!     16    8 plaintext length (BE)       │ per-file derivation, so changing any of them
//!     24   16 vault id                    │ changes the keys
//!     40   16 batch id                    │
//!     56   16 file id                     │
//!     72   32 salt                        ┘
//!    104   32 file key commitment
//! ```

use super::*;

/// Offsets of the bound fields (key material) within the header.
pub const BOUND_RANGE: std::ops::Range<usize> = 8..104;

/// A parsed object header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectHeader {
    pub version: u16,
    pub alg: u16,
    pub segment_size: u32,
    pub plain_len: u64,
    pub vault_id: [u8; ID_LEN],
    pub batch_id: [u8; ID_LEN],
    pub file_id: [u8; ID_LEN],
    pub salt: [u8; SALT_LEN],
    pub commitment: [u8; DIGEST_LEN],
}

/// Why a header was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum HeaderError {
    TooShort,
    BadMagic,
    UnknownVersion(u16),
    UnknownAlgorithm(u16),
    BadSegmentSize(u32),
    TooManySegments,
}

impl std::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderError::TooShort => write!(f, "object shorter than its header"),
            HeaderError::BadMagic => write!(f, "not an envseal object (bad magic)"),
            HeaderError::UnknownVersion(v) => write!(f, "unknown format version {v}"),
            HeaderError::UnknownAlgorithm(a) => write!(f, "unknown algorithm suite {a}"),
            HeaderError::BadSegmentSize(s) => write!(f, "invalid segment size {s}"),
            HeaderError::TooManySegments => write!(f, "more than 2^32 segments"),
        }
    }
}

impl ObjectHeader {
    /// Serializes the header.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..8].copy_from_slice(&OBJECT_MAGIC);
        h[8..10].copy_from_slice(&self.version.to_be_bytes());
        h[10..12].copy_from_slice(&self.alg.to_be_bytes());
        h[12..16].copy_from_slice(&self.segment_size.to_be_bytes());
        h[16..24].copy_from_slice(&self.plain_len.to_be_bytes());
        h[24..40].copy_from_slice(&self.vault_id);
        h[40..56].copy_from_slice(&self.batch_id);
        h[56..72].copy_from_slice(&self.file_id);
        h[72..104].copy_from_slice(&self.salt);
        h[104..136].copy_from_slice(&self.commitment);
        h
    }

    /// The bound fields as they appear in the header (the KDF's variable input).
    pub fn bound_fields(&self) -> [u8; 96] {
        let h = self.encode();
        let mut out = [0u8; 96];
        out.copy_from_slice(&h[BOUND_RANGE]);
        out
    }

    /// Parses and validates a header (limits first: docs/FORMAT.md §8).
    pub fn decode(b: &[u8]) -> Result<Self, HeaderError> {
        if b.len() < HEADER_LEN {
            return Err(HeaderError::TooShort);
        }
        if b[0..8] != OBJECT_MAGIC {
            return Err(HeaderError::BadMagic);
        }
        let arr = |r: std::ops::Range<usize>| -> [u8; 32] {
            let mut a = [0u8; 32];
            a[..r.len()].copy_from_slice(&b[r]);
            a
        };
        let version = u16::from_be_bytes([b[8], b[9]]);
        if version != FORMAT_VERSION {
            return Err(HeaderError::UnknownVersion(version));
        }
        let alg = u16::from_be_bytes([b[10], b[11]]);
        if alg != ALG_AES256GCM_BLAKE3 && alg != super::ALG_AES256GCM_ZSTD_BLAKE3 {
            return Err(HeaderError::UnknownAlgorithm(alg));
        }
        let segment_size = u32::from_be_bytes([b[12], b[13], b[14], b[15]]);
        if !valid_segment_size(u64::from(segment_size)) {
            return Err(HeaderError::BadSegmentSize(segment_size));
        }
        let plain_len =
            u64::from_be_bytes([b[16], b[17], b[18], b[19], b[20], b[21], b[22], b[23]]);
        if segment_count(plain_len, segment_size) > MAX_SEGMENTS {
            return Err(HeaderError::TooManySegments);
        }
        let id = |r: std::ops::Range<usize>| -> [u8; ID_LEN] {
            let mut a = [0u8; ID_LEN];
            a.copy_from_slice(&b[r]);
            a
        };
        Ok(ObjectHeader {
            version,
            alg,
            segment_size,
            plain_len,
            vault_id: id(24..40),
            batch_id: id(40..56),
            file_id: id(56..72),
            salt: arr(72..104),
            commitment: arr(104..136),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ObjectHeader {
        ObjectHeader {
            version: FORMAT_VERSION,
            alg: ALG_AES256GCM_BLAKE3,
            segment_size: 1 << 20,
            plain_len: 12345,
            vault_id: [1; 16],
            batch_id: [2; 16],
            file_id: [3; 16],
            salt: [4; 32],
            commitment: [5; 32],
        }
    }

    #[test]
    fn round_trip_and_rejects() {
        let h = sample();
        let b = h.encode();
        assert_eq!(ObjectHeader::decode(&b).unwrap(), h);
        assert_eq!(&h.bound_fields()[..], &b[8..104]);
        let mut bad = b;
        bad[0] ^= 1;
        assert_eq!(ObjectHeader::decode(&bad), Err(HeaderError::BadMagic));
        let mut bad = b;
        bad[9] = 3;
        assert_eq!(
            ObjectHeader::decode(&bad),
            Err(HeaderError::UnknownVersion(3))
        );
        let mut bad = b;
        bad[11] = 9;
        assert_eq!(
            ObjectHeader::decode(&bad),
            Err(HeaderError::UnknownAlgorithm(9))
        );
        let mut bad = b;
        bad[14] = 0x11;
        assert!(matches!(
            ObjectHeader::decode(&bad),
            Err(HeaderError::BadSegmentSize(_))
        ));
        assert_eq!(ObjectHeader::decode(&b[..100]), Err(HeaderError::TooShort));
    }
}
