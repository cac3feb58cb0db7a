//! The AES-256-GCM wrapper (src/crypto/aead.rs) against NIST's GCM test cases and an independent
//! implementation, whichever backend this build compiled in. CI also runs this file and
//! `tests/vectors.rs` with `--features rustcrypto`, so both backends are held to the same bytes.

use aes_gcm::aead::{AeadInPlace, KeyInit};
use envseal::crypto::aead::{Aes256Gcm, Unauthentic};
use zeroize::Zeroizing;

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

fn key(bytes: &[u8]) -> Zeroizing<[u8; 32]> {
    Zeroizing::new(bytes.try_into().unwrap())
}

/// (key, nonce, aad, plaintext, ciphertext, tag): AES-256 cases 13–16 of McGrew and Viega's
/// GCM specification, as reproduced in NIST's GCM validation material.
const NIST: &[(&str, &str, &str, &str, &str, &str)] = &[
    (
        "0000000000000000000000000000000000000000000000000000000000000000",
        "000000000000000000000000",
        "",
        "",
        "",
        "530f8afbc74536b9a963b4f1c4cb738b",
    ),
    (
        "0000000000000000000000000000000000000000000000000000000000000000",
        "000000000000000000000000",
        "",
        "00000000000000000000000000000000",
        "cea7403d4d606b6e074ec5d3baf39d18",
        "d0d1c8a799996bf0265b98b5d48ab919",
    ),
    (
        "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
        "cafebabefacedbaddecaf888",
        "",
        "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255",
        "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad",
        "b094dac5d93471bdec1a502270e3cc6c",
    ),
    (
        "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
        "cafebabefacedbaddecaf888",
        "feedfacedeadbeeffeedfacedeadbeefabaddad2",
        "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
        "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
        "76fc6ece0f4e1768cddf8853bb2d551b",
    ),
];

#[test]
fn nist_known_answers_seal_and_open() {
    for (i, (k, n, a, p, c, t)) in NIST.iter().enumerate() {
        let cipher = Aes256Gcm::new(&key(&unhex(k)));
        let nonce: [u8; 12] = unhex(n).try_into().unwrap();
        let mut buf = unhex(p);
        let tag = cipher.seal_in_place(&nonce, &unhex(a), &mut buf).unwrap();
        assert_eq!(hex::encode(&buf), *c, "case {i} ciphertext");
        assert_eq!(hex::encode(tag), *t, "case {i} tag");
        buf.extend_from_slice(&tag);
        let opened = cipher.open_in_place(&nonce, &unhex(a), &mut buf).unwrap();
        assert_eq!(hex::encode(opened), *p, "case {i} plaintext");
    }
}

/// A deterministic byte stream (splitmix64), so a failure reproduces.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = self.next() as u8;
        }
    }
}

#[test]
fn agrees_with_independent_implementations_on_random_inputs() {
    let mut rng = Rng(7);
    // Lengths around block and segment-like boundaries, and a spread of others.
    let mut lens: Vec<usize> = vec![0, 1, 15, 16, 17, 63, 64, 65, 255, 256, 4095, 4096, 4097];
    lens.extend((0..40).map(|_| (rng.next() % 70_000) as usize));
    lens.push(1 << 20);
    for len in lens {
        let mut k = [0u8; 32];
        rng.fill(&mut k);
        let mut nonce = [0u8; 12];
        rng.fill(&mut nonce);
        let mut aad = vec![0u8; (rng.next() % 40) as usize];
        rng.fill(&mut aad);
        let mut pt = vec![0u8; len];
        rng.fill(&mut pt);

        let mut ours = pt.clone();
        let tag = Aes256Gcm::new(&key(&k))
            .seal_in_place(&nonce, &aad, &mut ours)
            .unwrap();

        let mut rc = pt.clone();
        let rc_tag = aes_gcm::Aes256Gcm::new((&k).into())
            .encrypt_in_place_detached((&nonce).into(), &aad, &mut rc)
            .unwrap();
        assert_eq!(ours, rc, "ciphertext vs aes-gcm, len {len}");
        assert_eq!(&tag[..], &rc_tag[..], "tag vs aes-gcm, len {len}");

        let ring_key = ring::aead::LessSafeKey::new(
            ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &k).unwrap(),
        );
        let mut rg = pt.clone();
        let rg_tag = ring_key
            .seal_in_place_separate_tag(
                ring::aead::Nonce::assume_unique_for_key(nonce),
                ring::aead::Aad::from(&aad),
                &mut rg,
            )
            .unwrap();
        assert_eq!(ours, rg, "ciphertext vs ring, len {len}");
        assert_eq!(&tag[..], rg_tag.as_ref(), "tag vs ring, len {len}");

        // Opening: the round trip, then any flipped bit, wrong nonce or wrong aad refused.
        let cipher = Aes256Gcm::new(&key(&k));
        let mut sealed = ours.clone();
        sealed.extend_from_slice(&tag);
        assert_eq!(
            cipher
                .open_in_place(&nonce, &aad, &mut sealed.clone())
                .unwrap(),
            &pt[..]
        );
        let bit = (rng.next() as usize) % (sealed.len() * 8);
        let mut flipped = sealed.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        assert_eq!(
            cipher.open_in_place(&nonce, &aad, &mut flipped),
            Err(Unauthentic)
        );
        let mut other = nonce;
        other[11] ^= 1;
        assert_eq!(
            cipher.open_in_place(&other, &aad, &mut sealed.clone()),
            Err(Unauthentic)
        );
        let mut bad_aad = aad.clone();
        bad_aad.push(0);
        assert_eq!(
            cipher.open_in_place(&nonce, &bad_aad, &mut sealed.clone()),
            Err(Unauthentic)
        );
    }
}

#[test]
fn short_input_is_refused_not_panicking() {
    let cipher = Aes256Gcm::new(&key(&[1; 32]));
    for len in 0..16 {
        assert_eq!(
            cipher.open_in_place(&[0; 12], &[], &mut vec![0u8; len]),
            Err(Unauthentic)
        );
    }
}
