//! Keys and the per-segment AEAD, with no I/O.
//!
//! Every key is derived with BLAKE3 `derive_key` from the batch data key and fixed, per-purpose
//! context strings ([`crate::format::kdf`]); variable inputs (ids, salt, sizes) are key material.
//! Plaintext key types are zeroized on drop and have no `Debug` or `Clone`.

pub mod aead;

use std::sync::LazyLock;

use crate::crypto::aead::Aes256Gcm;
use blake3::hazmat::{self, ChainingValue, HasherExt, Mode};
use zeroize::Zeroizing;

use crate::error::{KmsError, KmsErrorKind};
use crate::format::{self, kdf, ObjectHeader, DIGEST_LEN, ID_LEN, NONCE_LEN, TAG_LEN};

/// Pre-hashed derive_key contexts (hashing the context string once, not per file).
struct Contexts {
    segment_key: hazmat::ContextKey,
    nonce_prefix: hazmat::ContextKey,
    file_commitment: hazmat::ContextKey,
    plaintext_mac: hazmat::ContextKey,
}

static CONTEXTS: LazyLock<Contexts> = LazyLock::new(|| Contexts {
    segment_key: hazmat::hash_derive_key_context(kdf::SEGMENT_KEY),
    nonce_prefix: hazmat::hash_derive_key_context(kdf::NONCE_PREFIX),
    file_commitment: hazmat::hash_derive_key_context(kdf::FILE_COMMITMENT),
    plaintext_mac: hazmat::hash_derive_key_context(kdf::PLAINTEXT_MAC),
});

fn derive(context: &hazmat::ContextKey, parts: &[&[u8]]) -> Zeroizing<[u8; 32]> {
    let mut h = blake3::Hasher::new_from_context_key(context);
    for p in parts {
        h.update(p);
    }
    Zeroizing::new(*h.finalize().as_bytes())
}

/// A batch's data key with the ids it is bound to.
pub struct BatchKey {
    key: DataKey,
    vault_id: [u8; ID_LEN],
    batch_id: [u8; ID_LEN],
}

impl BatchKey {
    pub fn new(key: DataKey, vault_id: [u8; ID_LEN], batch_id: [u8; ID_LEN]) -> Self {
        BatchKey {
            key,
            vault_id,
            batch_id,
        }
    }

    pub fn batch_id(&self) -> &[u8; ID_LEN] {
        &self.batch_id
    }

    pub fn vault_id(&self) -> &[u8; ID_LEN] {
        &self.vault_id
    }

    /// The data key itself, to wrap it under another CMK (KMS `Encrypt`, `rewrap`).
    pub fn data_key(&self) -> &DataKey {
        &self.key
    }

    fn derive_batch(&self, context: &str) -> Zeroizing<[u8; 32]> {
        let mut km = Zeroizing::new([0u8; 64]);
        km[..32].copy_from_slice(self.key.expose());
        km[32..48].copy_from_slice(&self.vault_id);
        km[48..].copy_from_slice(&self.batch_id);
        Zeroizing::new(blake3::derive_key(context, &km[..]))
    }

    /// The batch key commitment stored in key files and the manifest (not secret).
    pub fn commitment(&self) -> [u8; DIGEST_LEN] {
        *self.derive_batch(kdf::BATCH_COMMITMENT)
    }

    /// Whether `c` commits to this key (constant time).
    pub fn matches_commitment(&self, c: &[u8; DIGEST_LEN]) -> bool {
        blake3::Hash::from(self.commitment()) == blake3::Hash::from(*c)
    }

    pub fn manifest_mac_key(&self) -> Zeroizing<[u8; 32]> {
        self.derive_batch(kdf::MANIFEST_MAC)
    }

    pub fn journal_mac_key(&self) -> Zeroizing<[u8; 32]> {
        self.derive_batch(kdf::JOURNAL_MAC)
    }

    /// The key that encrypts concealed names.
    pub fn name_key(&self) -> NameKey {
        let k = self.derive_batch(kdf::NAME_KEY);
        NameKey(Aes256Gcm::new(&k))
    }

    /// Derives one file's keys from its header's bound fields.
    pub fn file_keys(&self, header: &ObjectHeader) -> FileKeys {
        let bound = header.bound_fields();
        let km: [&[u8]; 2] = [self.key.expose(), &bound];
        let seg = derive(&CONTEXTS.segment_key, &km);
        let prefix = derive(&CONTEXTS.nonce_prefix, &km);
        let commitment = derive(&CONTEXTS.file_commitment, &km);
        let mac_key = derive(&CONTEXTS.plaintext_mac, &km);
        let mut nonce_prefix = [0u8; format::NONCE_PREFIX_LEN];
        nonce_prefix.copy_from_slice(&prefix[..format::NONCE_PREFIX_LEN]);
        FileKeys {
            aead: Aes256Gcm::new(&seg),
            nonce_prefix,
            commitment: *commitment,
            mac_key,
        }
    }
}

/// Segment authentication failed (wrong key, tampered, truncated or reordered data).
#[derive(Debug, PartialEq, Eq)]
pub struct OpenError;

/// One file's keys.
pub struct FileKeys {
    aead: Aes256Gcm,
    nonce_prefix: [u8; format::NONCE_PREFIX_LEN],
    commitment: [u8; DIGEST_LEN],
    mac_key: Zeroizing<[u8; 32]>,
}

impl FileKeys {
    /// The file key commitment for the object header.
    pub fn commitment(&self) -> [u8; DIGEST_LEN] {
        self.commitment
    }

    /// Checks a header's commitment in constant time, before any segment is opened.
    pub fn check_commitment(&self, c: &[u8; DIGEST_LEN]) -> bool {
        blake3::Hash::from(self.commitment) == blake3::Hash::from(*c)
    }

    /// Key of the keyed BLAKE3 plaintext digest.
    pub fn mac_key(&self) -> &[u8; 32] {
        &self.mac_key
    }

    fn nonce(&self, index: u64, last: bool) -> [u8; NONCE_LEN] {
        let mut n = [0u8; NONCE_LEN];
        n[..7].copy_from_slice(&self.nonce_prefix);
        // Callers guarantee index < 2^32 (format::MAX_SEGMENTS is checked at parse and plan).
        n[7..11].copy_from_slice(&(index as u32).to_be_bytes());
        n[11] = u8::from(last);
        n
    }

    /// The table's nonce (docs/FORMAT.md §4.5): the segment counter `n` and a last byte no
    /// segment's nonce has.
    fn table_nonce(&self, n: u64) -> [u8; NONCE_LEN] {
        let mut nonce = self.nonce(n, false);
        nonce[11] = crate::format::compress::TABLE_NONCE_FLAG;
        nonce
    }

    /// Seals a compressed record's table of `n` segments in place (as [`Self::seal_segment`]).
    pub fn seal_table(&self, n: u64, buf: &mut [u8]) {
        let (pt, tag_out) = buf.split_at_mut(buf.len() - TAG_LEN);
        // As for segments: a table is at most 16 GiB (2^32 entries), inside GCM's limit.
        let tag = self
            .aead
            .seal_in_place(&self.table_nonce(n), &[], pt)
            .unwrap_or_else(|_| unreachable!());
        tag_out.copy_from_slice(&tag);
    }

    /// Opens a compressed record's sealed table in place; returns the stored lengths' bytes.
    pub fn open_table<'a>(&self, n: u64, buf: &'a mut [u8]) -> Result<&'a mut [u8], OpenError> {
        self.aead
            .open_in_place(&self.table_nonce(n), &[], buf)
            .map_err(|_| OpenError)
    }

    /// Seals one segment in place: `buf` holds the plaintext followed by `TAG_LEN` bytes of
    /// room; afterwards it holds ciphertext ‖ tag, exactly as stored.
    pub fn seal_segment(&self, index: u64, last: bool, buf: &mut [u8]) {
        let (pt, tag_out) = buf.split_at_mut(buf.len() - TAG_LEN);
        // Sealing fails only for inputs over GCM's 64 GiB limit; segments are <= 64 MiB.
        let tag = self
            .aead
            .seal_in_place(&self.nonce(index, last), &[], pt)
            .unwrap_or_else(|_| unreachable!());
        tag_out.copy_from_slice(&tag);
    }

    /// Opens one stored segment (ciphertext ‖ tag) in place; returns the plaintext part.
    pub fn open_segment<'a>(
        &self,
        index: u64,
        last: bool,
        buf: &'a mut [u8],
    ) -> Result<&'a mut [u8], OpenError> {
        self.aead
            .open_in_place(&self.nonce(index, last), &[], buf)
            .map_err(|_| OpenError)
    }
}

/// Encrypts concealed names (paths, link targets) under a key derived from the batch key.
pub struct NameKey(Aes256Gcm);

impl NameKey {
    /// `nonce ‖ ciphertext ‖ tag` with a random nonce. One name key serves a whole vault
    /// (about 2–3 seals per entry, docs/FORMAT.md §8), so the 2^32 random-nonce limit of
    /// SP 800-38D bounds concealed vaults to about 2^30 entries.
    pub fn seal(&self, name: &[u8], aad: &[u8]) -> std::io::Result<Vec<u8>> {
        self.seal_with_nonce(name, aad, format::random()?)
    }

    /// [`NameKey::seal`] with a given nonce: for known-answer vectors only (a nonce must
    /// never repeat under one name key).
    pub fn seal_with_nonce(
        &self,
        name: &[u8],
        aad: &[u8],
        nonce: [u8; NONCE_LEN],
    ) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(NONCE_LEN + name.len() + TAG_LEN);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(name);
        let tag = self
            .0
            .seal_in_place(&nonce, aad, &mut out[NONCE_LEN..])
            .map_err(|_| std::io::Error::other("name too long to seal"))?;
        out.extend_from_slice(&tag);
        Ok(out)
    }

    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, OpenError> {
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(OpenError);
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&sealed[..NONCE_LEN]);
        let mut buf = sealed[NONCE_LEN..].to_vec();
        let len = self
            .0
            .open_in_place(&nonce, aad, &mut buf)
            .map_err(|_| OpenError)?
            .len();
        buf.truncate(len);
        Ok(buf)
    }
}

/// Chaining value of one plaintext segment, as a BLAKE3 keyed-hash subtree at its offset.
/// Segment sizes are powers of two >= 4 KiB, so every full segment is a complete subtree.
pub fn segment_cv(mac_key: &[u8; 32], segment_size: u32, index: u64, data: &[u8]) -> ChainingValue {
    let mut h = blake3::Hasher::new_keyed(mac_key);
    h.set_input_offset(index * u64::from(segment_size));
    h.update(data);
    h.finalize_non_root()
}

/// A segment's contribution to the plaintext MAC: the root hash when the plaintext is a single
/// segment (BLAKE3 finalizes a lone subtree as the root), a chaining value otherwise.
pub enum SegMac {
    Root(blake3::Hash),
    Cv(ChainingValue),
}

/// Computes segment `index`'s MAC contribution (`count` = number of segments of the file).
pub fn segment_mac(
    mac_key: &[u8; 32],
    segment_size: u32,
    index: u64,
    count: u64,
    data: &[u8],
) -> SegMac {
    if count == 1 {
        SegMac::Root(blake3::keyed_hash(mac_key, data))
    } else {
        SegMac::Cv(segment_cv(mac_key, segment_size, index, data))
    }
}

/// Builds a keyed BLAKE3 digest of a whole plaintext from its segments' chaining values,
/// given in order. Equal to `blake3::keyed_hash(key, plaintext)`, but each segment can be
/// hashed on its own core. Memory is O(log n): BLAKE3's lazy-merging chaining value stack.
pub struct TreeMac {
    /// A copy of the file's plaintext-MAC key: secret, so zeroized on drop.
    key: Zeroizing<[u8; 32]>,
    stack: Vec<ChainingValue>,
    count: u64,
    single: Option<blake3::Hash>,
}

impl TreeMac {
    pub fn new(key: &[u8; 32]) -> Self {
        TreeMac {
            key: Zeroizing::new(*key),
            stack: Vec::new(),
            count: 0,
            single: None,
        }
    }

    /// Adds the next segment's chaining value.
    pub fn push(&mut self, cv: ChainingValue) {
        // Merge the subtrees completed by the segments so far; never the newest, which might
        // be the last one and then needs the root flag.
        let keep = self.count.count_ones() as usize;
        while self.stack.len() > keep {
            let (Some(right), Some(left)) = (self.stack.pop(), self.stack.pop()) else {
                break;
            };
            self.stack.push(hazmat::merge_subtrees_non_root(
                &left,
                &right,
                Mode::KeyedHash(&self.key),
            ));
        }
        self.stack.push(cv);
        self.count += 1;
    }

    /// Adds the next segment's contribution.
    pub fn add(&mut self, m: SegMac) {
        match m {
            SegMac::Root(h) => self.set_single(h),
            SegMac::Cv(cv) => self.push(cv),
        }
    }

    /// For a one-segment plaintext: its root hash (`keyed_hash` of the segment).
    pub fn set_single(&mut self, root: blake3::Hash) {
        self.single = Some(root);
        self.count = 1;
    }

    /// The digest; `None` if nothing was pushed.
    pub fn finalize(mut self) -> Option<blake3::Hash> {
        if let Some(h) = self.single {
            return Some(h);
        }
        let mut right = self.stack.pop()?;
        while let Some(left) = self.stack.pop() {
            if self.stack.is_empty() {
                return Some(hazmat::merge_subtrees_root(
                    &left,
                    &right,
                    Mode::KeyedHash(&self.key),
                ));
            }
            right = hazmat::merge_subtrees_non_root(&left, &right, Mode::KeyedHash(&self.key));
        }
        None // one chaining value is not a root: callers use set_single for one segment
    }
}

/// The ciphertext digest of one record (docs/FORMAT.md §4.4): BLAKE3 over the BLAKE3 of each
/// piece, piece 0 being the header and segment 0, piece `i` segment `i` (ciphertext ‖ tag).
/// Pieces are hashed wherever they are sealed, in any order and on any core; only the 32-byte
/// leaves are combined here, in order. The combination is plain BLAKE3 over the leaves, whose
/// state at any multiple of 32 leaves is a short stack of chaining values: what a segment
/// checkpoint needs to resume the digest without rereading the object.
pub struct CtDigest {
    outer: blake3::Hasher,
}

impl Default for CtDigest {
    fn default() -> Self {
        Self::new()
    }
}

impl CtDigest {
    pub fn new() -> Self {
        CtDigest {
            outer: blake3::Hasher::new(),
        }
    }

    /// Adds the next piece's leaf.
    pub fn push(&mut self, leaf: &[u8; DIGEST_LEN]) {
        self.outer.update(leaf);
    }

    pub fn finalize(&self) -> [u8; DIGEST_LEN] {
        *self.outer.finalize().as_bytes()
    }
}

/// The leaf of one piece: BLAKE3 of `head ‖ slot` (`head` is the header for piece 0, else empty).
pub fn ct_leaf(head: &[u8], slot: &[u8]) -> [u8; DIGEST_LEN] {
    let mut h = blake3::Hasher::new();
    h.update(head);
    h.update(slot);
    *h.finalize().as_bytes()
}

/// The ciphertext digest of a whole record in memory.
pub fn record_ct(record: &[u8], segment_size: u32) -> [u8; DIGEST_LEN] {
    let head = format::HEADER_LEN.min(record.len());
    let slot = segment_size as usize + TAG_LEN;
    let mut d = CtDigest::new();
    let body = &record[head..];
    if body.is_empty() {
        d.push(&ct_leaf(&record[..head], &[]));
    }
    for (i, s) in body.chunks(slot).enumerate() {
        let h = if i == 0 { &record[..head] } else { &[][..] };
        d.push(&ct_leaf(h, s));
    }
    d.finalize()
}

/// Length of every batch data key, in bytes (AES-256).
pub const DATA_KEY_LEN: usize = 32;

/// A plaintext data key. No `Debug`, no `Clone`: it is zeroized on drop and never printed.
pub struct DataKey(Zeroizing<[u8; DATA_KEY_LEN]>);

impl DataKey {
    /// Wraps raw key bytes; the caller's copy should itself be zeroizing.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KmsError> {
        let arr: [u8; DATA_KEY_LEN] = bytes.try_into().map_err(|_| {
            KmsError::new(
                KmsErrorKind::InvalidResponse,
                format!(
                    "data key has {} bytes, expected {DATA_KEY_LEN}",
                    bytes.len()
                ),
            )
        })?;
        Ok(DataKey(Zeroizing::new(arr)))
    }

    /// The key bytes, for key derivation only.
    pub fn expose(&self) -> &[u8; DATA_KEY_LEN] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{segment_count, segment_plain_len};

    fn batch() -> BatchKey {
        BatchKey::new(DataKey::from_bytes(&[7u8; 32]).unwrap(), [1; 16], [2; 16])
    }

    fn header(len: u64) -> ObjectHeader {
        ObjectHeader {
            version: format::FORMAT_VERSION,
            alg: format::ALG_AES256GCM_BLAKE3,
            segment_size: 4096,
            plain_len: len,
            vault_id: [1; 16],
            batch_id: [2; 16],
            file_id: [3; 16],
            salt: [4; 32],
            commitment: [0; 32],
        }
    }

    #[test]
    fn tree_mac_equals_keyed_hash() {
        let key = [9u8; 32];
        let seg = 4096u32;
        for len in [
            1u64,
            100,
            4095,
            4096,
            4097,
            8192,
            8193,
            3 * 4096,
            5 * 4096 + 7,
            8 * 4096,
            9 * 4096 + 1,
            17 * 4096,
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let n = segment_count(len, seg);
            let mut t = TreeMac::new(&key);
            if n == 1 {
                t.set_single(blake3::keyed_hash(&key, &data));
            } else {
                for i in 0..n {
                    let start = (i * u64::from(seg)) as usize;
                    let l = segment_plain_len(len, seg, i);
                    t.push(segment_cv(&key, seg, i, &data[start..start + l]));
                }
            }
            assert_eq!(
                t.finalize().unwrap(),
                blake3::keyed_hash(&key, &data),
                "len {len}"
            );
        }
    }

    #[test]
    fn segment_round_trip_and_binding() {
        let b = batch();
        let fk = b.file_keys(&header(10));
        let mut buf = b"0123456789".to_vec();
        buf.extend_from_slice(&[0u8; TAG_LEN]);
        fk.seal_segment(0, true, &mut buf);
        let sealed = buf.clone();
        assert_eq!(fk.open_segment(0, true, &mut buf).unwrap(), b"0123456789");
        // Wrong index, wrong last flag, other file, other length: all fail.
        for (idx, last, h) in [
            (1, true, header(10)),
            (0, false, header(10)),
            (0, true, header(11)),
        ] {
            let mut b2 = sealed.clone();
            assert!(b.file_keys(&h).open_segment(idx, last, &mut b2).is_err());
        }
        let mut other = header(10);
        other.file_id = [5; 16];
        let mut b2 = sealed.clone();
        assert!(b.file_keys(&other).open_segment(0, true, &mut b2).is_err());
        assert!(fk.check_commitment(&fk.commitment()));
        assert!(!b.file_keys(&other).check_commitment(&fk.commitment()));
    }

    #[test]
    fn names_round_trip() {
        let nk = batch().name_key();
        let s = nk.seal(b"secret/plan.txt", b"path").unwrap();
        assert_eq!(nk.open(&s, b"path").unwrap(), b"secret/plan.txt");
        assert!(nk.open(&s, b"target").is_err());
    }
}
