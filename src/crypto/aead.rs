//! AES-256-GCM, from one of two backends chosen at build time. Every AES-256-GCM of envseal goes
//! through here: vault segments and concealed names, and the local key store's key material and
//! blobs.
//!
//! `ring` is the default: measured fastest here (docs/PERFORMANCE.md, "AEAD"). The pure-Rust
//! RustCrypto `aes-gcm` crate is built instead with `--features rustcrypto`, for platforms
//! where `ring`'s assembly is unavailable or unwanted. Both produce byte-identical output: the
//! vectors test (`tests/vectors.rs`) runs under each in CI, and `tests/aead_oracle.rs` checks
//! this wrapper against an independent implementation and NIST's test cases.

use zeroize::Zeroizing;

use crate::format::{NONCE_LEN, TAG_LEN};

/// Authentication failed (wrong key, nonce or associated data, or tampered input).
#[derive(Debug, PartialEq, Eq)]
pub struct Unauthentic;

/// Sealing refused: the input is over GCM's 2^36 − 32 byte limit.
#[derive(Debug, PartialEq, Eq)]
pub struct TooLong;

/// The name of the backend compiled in, for `envseal bench` and `--version` reports.
pub const BACKEND: &str = if cfg!(feature = "rustcrypto") {
    "aes-gcm (RustCrypto)"
} else {
    "ring"
};

/// An AES-256-GCM key, ready to seal and open in place.
pub struct Aes256Gcm(imp::Key);

impl Aes256Gcm {
    pub fn new(key: &Zeroizing<[u8; 32]>) -> Self {
        Aes256Gcm(imp::Key::new(key))
    }

    /// Encrypts `buf` in place and returns the tag.
    pub fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<[u8; TAG_LEN], TooLong> {
        self.0.seal(nonce, aad, buf)
    }

    /// Opens `ciphertext ‖ tag` in place; returns the plaintext part of `buf`.
    pub fn open_in_place<'a>(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &'a mut [u8],
    ) -> Result<&'a mut [u8], Unauthentic> {
        if buf.len() < TAG_LEN {
            return Err(Unauthentic);
        }
        let (ct, tag) = buf.split_at_mut(buf.len() - TAG_LEN);
        let tag: [u8; TAG_LEN] = (&*tag).try_into().map_err(|_| Unauthentic)?;
        self.0.open(nonce, aad, ct, &tag)?;
        Ok(ct)
    }
}

#[cfg(not(feature = "rustcrypto"))]
mod imp {
    use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_256_GCM};
    use zeroize::Zeroizing;

    use super::{TooLong, Unauthentic, NONCE_LEN, TAG_LEN};

    pub struct Key(LessSafeKey);

    impl Key {
        pub fn new(key: &Zeroizing<[u8; 32]>) -> Self {
            // AES_256_GCM takes any 32-byte key; this cannot fail.
            let k = UnboundKey::new(&AES_256_GCM, &key[..]).unwrap_or_else(|_| unreachable!());
            Key(LessSafeKey::new(k))
        }

        pub fn seal(
            &self,
            nonce: &[u8; NONCE_LEN],
            aad: &[u8],
            buf: &mut [u8],
        ) -> Result<[u8; TAG_LEN], TooLong> {
            let tag = self
                .0
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(*nonce),
                    Aad::from(aad),
                    buf,
                )
                .map_err(|_| TooLong)?;
            let mut out = [0u8; TAG_LEN];
            out.copy_from_slice(tag.as_ref());
            Ok(out)
        }

        pub fn open(
            &self,
            nonce: &[u8; NONCE_LEN],
            aad: &[u8],
            ct: &mut [u8],
            tag: &[u8; TAG_LEN],
        ) -> Result<(), Unauthentic> {
            self.0
                .open_in_place_separate_tag(
                    Nonce::assume_unique_for_key(*nonce),
                    Aad::from(aad),
                    Tag::from(*tag),
                    ct,
                    0..,
                )
                .map(|_| ())
                .map_err(|_| Unauthentic)
        }
    }
}

#[cfg(feature = "rustcrypto")]
mod imp {
    use aes_gcm::aead::{AeadInPlace, KeyInit};
    use aes_gcm::{Aes256Gcm, Nonce, Tag};
    use zeroize::Zeroizing;

    use super::{TooLong, Unauthentic, NONCE_LEN, TAG_LEN};

    pub struct Key(Aes256Gcm);

    impl Key {
        pub fn new(key: &Zeroizing<[u8; 32]>) -> Self {
            Key(Aes256Gcm::new(key[..].into()))
        }

        pub fn seal(
            &self,
            nonce: &[u8; NONCE_LEN],
            aad: &[u8],
            buf: &mut [u8],
        ) -> Result<[u8; TAG_LEN], TooLong> {
            let tag = self
                .0
                .encrypt_in_place_detached(Nonce::from_slice(nonce), aad, buf)
                .map_err(|_| TooLong)?;
            let mut out = [0u8; TAG_LEN];
            out.copy_from_slice(&tag);
            Ok(out)
        }

        pub fn open(
            &self,
            nonce: &[u8; NONCE_LEN],
            aad: &[u8],
            ct: &mut [u8],
            tag: &[u8; TAG_LEN],
        ) -> Result<(), Unauthentic> {
            self.0
                .decrypt_in_place_detached(Nonce::from_slice(nonce), aad, ct, Tag::from_slice(tag))
                .map_err(|_| Unauthentic)
        }
    }
}
