//! Request signatures of the Alibaba Cloud RPC API (docs/KMS-WIRE.md §3 and §4).
//!
//! Signature v1 (HMAC-SHA1 over the sorted, percent-encoded parameters) is what envseal's client
//! sends and what the old SDK sends; signature v3 (`ACS3-HMAC-SHA256` over a canonical request)
//! is the new SDK's default. The server verifies both, so both directions live here: the
//! functions build the exact strings to sign, and `verify_*` compare in constant time
//! (`Mac::verify_slice`).

use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

type HmacSha1 = Hmac<Sha1>;
type HmacSha256 = Hmac<Sha256>;

/// The v3 algorithm name, first token of `Authorization` and first line of its string to sign.
pub const V3_ALGORITHM: &str = "ACS3-HMAC-SHA256";

/// Percent-encodes UTF-8 bytes, leaving only RFC 3986 unreserved characters (`A-Z a-z 0-9 - _
/// . ~`) as they are, with upper-case hex. The one encoding both signatures use.
pub fn pct(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(char::from(HEX_UPPER[(b >> 4) as usize]));
            out.push(char::from(HEX_UPPER[(b & 15) as usize]));
        }
    }
    out
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// The v1 canonicalized query string: every pair but `Signature`, each side `pct()`-encoded,
/// sorted by encoded name (then value, so repeated names are deterministic), joined with `&`.
pub fn v1_canonical_query(params: &[(String, String)]) -> String {
    let mut pairs: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| k != "Signature")
        .map(|(k, v)| (pct(k), pct(v)))
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// `METHOD&%2F&pct(CQS)`.
pub fn v1_string_to_sign(method: &str, params: &[(String, String)]) -> String {
    format!(
        "{}&{}&{}",
        method.to_ascii_uppercase(),
        pct("/"),
        pct(&v1_canonical_query(params))
    )
}

fn v1_mac(secret: &str, string_to_sign: &str) -> HmacSha1 {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <HmacSha1 as Mac>::new_from_slice(format!("{secret}&").as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(string_to_sign.as_bytes());
    mac
}

/// `base64(HMAC-SHA1(secret + "&", string_to_sign))`.
pub fn v1_signature(secret: &str, string_to_sign: &str) -> String {
    B64.encode(v1_mac(secret, string_to_sign).finalize().into_bytes())
}

/// Whether `signature` (decoded base64 text) is the v1 signature of `string_to_sign`.
pub fn v1_verify(secret: &str, string_to_sign: &str, signature: &str) -> bool {
    match B64.decode(signature.trim()) {
        Ok(sig) => v1_mac(secret, string_to_sign).verify_slice(&sig).is_ok(),
        Err(_) => false,
    }
}

/// Lower-case hex SHA-256, the `x-acs-content-sha256` of a body.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The inputs of a v3 canonical request. `headers` are (name, value) pairs as received;
/// names are compared case-insensitively.
pub struct V3Request<'a> {
    pub method: &'a str,
    /// Query parameters only (decoded); form-body parameters are covered by the payload hash.
    pub query: &'a [(String, String)],
    pub headers: &'a [(String, String)],
    /// Lower-case header names, in the client's `SignedHeaders` order (they get sorted here).
    pub signed_headers: &'a [String],
    /// The `x-acs-content-sha256` value.
    pub hashed_payload: &'a str,
}

impl V3Request<'_> {
    /// `Method \n / \n CanonicalQueryString \n CanonicalHeaders \n SignedHeaders \n HashedPayload`.
    pub fn canonical_request(&self) -> String {
        let mut q: Vec<(String, String)> =
            self.query.iter().map(|(k, v)| (pct(k), pct(v))).collect();
        q.sort();
        let query = q
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");

        let mut names: Vec<String> = self
            .signed_headers
            .iter()
            .map(|h| h.trim().to_ascii_lowercase())
            .collect();
        names.sort();
        names.dedup();
        let mut canon_headers = String::new();
        for name in &names {
            let values: Vec<&str> = self
                .headers
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim())
                .collect();
            canon_headers.push_str(name);
            canon_headers.push(':');
            canon_headers.push_str(&values.join(","));
            canon_headers.push('\n');
        }
        format!(
            "{}\n/\n{}\n{}\n{}\n{}",
            self.method.to_ascii_uppercase(),
            query,
            canon_headers,
            names.join(";"),
            self.hashed_payload
        )
    }

    /// `ACS3-HMAC-SHA256 \n hex(SHA256(CanonicalRequest))`.
    pub fn string_to_sign(&self) -> String {
        v3_string_to_sign(&self.canonical_request())
    }
}

/// `ACS3-HMAC-SHA256 \n hex(SHA256(canonical_request))`.
pub fn v3_string_to_sign(canonical_request: &str) -> String {
    format!(
        "{V3_ALGORITHM}\n{}",
        sha256_hex(canonical_request.as_bytes())
    )
}

fn v3_mac(secret: &str, string_to_sign: &str) -> HmacSha256 {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(string_to_sign.as_bytes());
    mac
}

/// `hex(HMAC-SHA256(secret, string_to_sign))` (no `&` suffix on the key, unlike v1).
pub fn v3_signature(secret: &str, string_to_sign: &str) -> String {
    hex::encode(v3_mac(secret, string_to_sign).finalize().into_bytes())
}

/// Whether `signature` (lower-case hex) is the v3 signature of `string_to_sign`.
pub fn v3_verify(secret: &str, string_to_sign: &str, signature: &str) -> bool {
    match hex::decode(signature.trim()) {
        Ok(sig) => v3_mac(secret, string_to_sign).verify_slice(&sig).is_ok(),
        Err(_) => false,
    }
}

/// The parts of an `Authorization: ACS3-HMAC-SHA256 Credential=..,SignedHeaders=..,Signature=..`
/// header.
#[derive(Debug, PartialEq, Eq)]
pub struct V3Authorization {
    pub access_key_id: String,
    pub signed_headers: Vec<String>,
    pub signature: String,
}

/// Parses a v3 `Authorization` header; `None` when it is malformed or not v3.
pub fn parse_v3_authorization(value: &str) -> Option<V3Authorization> {
    let rest = value.trim().strip_prefix(V3_ALGORITHM)?;
    if !rest.starts_with(' ') {
        return None;
    }
    let (mut cred, mut signed, mut sig) = (None, None, None);
    for part in rest.split(',') {
        let (k, v) = part.trim().split_once('=')?;
        match k.trim() {
            "Credential" => cred = Some(v.trim().to_string()),
            "SignedHeaders" => {
                signed = Some(
                    v.split(';')
                        .map(|h| h.trim().to_ascii_lowercase())
                        .filter(|h| !h.is_empty())
                        .collect::<Vec<_>>(),
                )
            }
            "Signature" => sig = Some(v.trim().to_string()),
            _ => return None,
        }
    }
    let (access_key_id, signed_headers, signature) = (cred?, signed?, sig?);
    if access_key_id.is_empty() || signed_headers.is_empty() || signature.is_empty() {
        return None;
    }
    Some(V3Authorization {
        access_key_id,
        signed_headers,
        signature,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn pct_follows_the_unreserved_rule() {
        assert_eq!(pct("AZaz09-_.~"), "AZaz09-_.~");
        assert_eq!(pct(" "), "%20");
        assert_eq!(pct("*"), "%2A");
        assert_eq!(pct("/"), "%2F");
        assert_eq!(pct(":"), "%3A");
        assert_eq!(pct("="), "%3D");
        assert_eq!(pct("&"), "%26");
        assert_eq!(pct("+"), "%2B");
        assert_eq!(pct("%"), "%25");
        assert_eq!(pct("\n"), "%0A");
        assert_eq!(pct("中"), "%E4%B8%AD");
        assert_eq!(pct("%2F"), "%252F");
    }

    /// docs/KMS-WIRE.md §3, the docs' CreateKey example (GET).
    #[test]
    fn v1_vector_create_key_get() {
        let p = params(&[
            ("Action", "CreateKey"),
            ("SignatureVersion", "1.0"),
            ("Format", "json"),
            ("Version", "2016-01-20"),
            ("AccessKeyId", "testid"),
            ("SignatureMethod", "HMAC-SHA1"),
            ("Timestamp", "2016-03-28T03:13:08Z"),
        ]);
        let sts = v1_string_to_sign("GET", &p);
        assert_eq!(
            sts,
            "GET&%2F&AccessKeyId%3Dtestid%26Action%3DCreateKey%26Format%3Djson%26SignatureMethod%3DHMAC-SHA1%26SignatureVersion%3D1.0%26Timestamp%3D2016-03-28T03%253A13%253A08Z%26Version%3D2016-01-20"
        );
        assert_eq!(
            v1_signature("testsecret", &sts),
            "41wk2SSX1GJh7fwnc5eqOfiJPFg="
        );
        assert!(v1_verify(
            "testsecret",
            &sts,
            "41wk2SSX1GJh7fwnc5eqOfiJPFg="
        ));
        // The docs' mis-printed value (HMAC of a string with literal `&`) must not verify.
        assert!(!v1_verify(
            "testsecret",
            &sts,
            "s/OdVWMTmNGagvWlljdAJ7Itsew="
        ));
        assert!(!v1_verify("wrong", &sts, "41wk2SSX1GJh7fwnc5eqOfiJPFg="));
        assert!(!v1_verify("testsecret", &sts, "not base64!"));
    }

    /// docs/KMS-WIRE.md §3, old-SDK style POST (checked against the SDK's own string to sign).
    #[test]
    fn v1_vector_old_sdk_post() {
        let p = params(&[
            ("KeyId", "alias/Apollo/WorkKey"),
            ("NumberOfBytes", "32"),
            ("EncryptionContext", r#"{"a":"b c*~"}"#),
            ("Version", "2016-01-20"),
            ("Action", "GenerateDataKey"),
            ("Format", "JSON"),
            ("RegionId", "cn-hangzhou"),
            ("Timestamp", "2024-01-01T00:00:00Z"),
            ("SignatureMethod", "HMAC-SHA1"),
            ("SignatureType", ""),
            ("SignatureVersion", "1.0"),
            ("SignatureNonce", "3156853299f313e23d1673dc12e1703d"),
            ("AccessKeyId", "testid"),
            ("Signature", "ignored"),
        ]);
        let sts = v1_string_to_sign("POST", &p);
        assert_eq!(
            sts,
            "POST&%2F&AccessKeyId%3Dtestid%26Action%3DGenerateDataKey%26EncryptionContext%3D%257B%2522a%2522%253A%2522b%2520c%252A~%2522%257D%26Format%3DJSON%26KeyId%3Dalias%252FApollo%252FWorkKey%26NumberOfBytes%3D32%26RegionId%3Dcn-hangzhou%26SignatureMethod%3DHMAC-SHA1%26SignatureNonce%3D3156853299f313e23d1673dc12e1703d%26SignatureType%3D%26SignatureVersion%3D1.0%26Timestamp%3D2024-01-01T00%253A00%253A00Z%26Version%3D2016-01-20"
        );
        assert_eq!(
            v1_signature("testsecret", &sts),
            "Ug7TipZWehbBAG0SdSNyQ6gWadw="
        );
        assert!(v1_verify(
            "testsecret",
            &sts,
            "Ug7TipZWehbBAG0SdSNyQ6gWadw="
        ));
        // The method is signed.
        assert_ne!(
            v1_signature("testsecret", &v1_string_to_sign("GET", &p)),
            "Ug7TipZWehbBAG0SdSNyQ6gWadw="
        );
    }

    /// docs/KMS-WIRE.md §4, computed with the new SDK's `Utils.get_authorization`.
    #[test]
    fn v3_vector_new_sdk() {
        let query = params(&[
            ("KeyId", "alias/Apollo/WorkKey"),
            ("NumberOfBytes", "32"),
            ("EncryptionContext", r#"{"a":"b c*~"}"#),
        ]);
        let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(sha256_hex(b""), empty);
        let headers = params(&[
            ("Host", "kms.cn-hangzhou.aliyuncs.com"),
            ("x-acs-action", "GenerateDataKey"),
            ("x-acs-version", "2016-01-20"),
            ("x-acs-date", "2024-01-01T00:00:00Z"),
            ("x-acs-signature-nonce", "3156853299f313e23d1673dc12e1703d"),
            ("x-acs-content-sha256", empty),
            ("user-agent", "not signed"),
        ]);
        let auth = parse_v3_authorization(
            "ACS3-HMAC-SHA256 Credential=testid,SignedHeaders=host;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version,Signature=c9139de5a216e72b6b00c69ac364c5dba3464f50faeda1d6b1822824ea07e1cb",
        )
        .unwrap();
        assert_eq!(auth.access_key_id, "testid");
        let req = V3Request {
            method: "POST",
            query: &query,
            headers: &headers,
            signed_headers: &auth.signed_headers,
            hashed_payload: empty,
        };
        let canonical = req.canonical_request();
        assert_eq!(
            canonical,
            "POST\n/\nEncryptionContext=%7B%22a%22%3A%22b%20c%2A~%22%7D&KeyId=alias%2FApollo%2FWorkKey&NumberOfBytes=32\nhost:kms.cn-hangzhou.aliyuncs.com\nx-acs-action:GenerateDataKey\nx-acs-content-sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\nx-acs-date:2024-01-01T00:00:00Z\nx-acs-signature-nonce:3156853299f313e23d1673dc12e1703d\nx-acs-version:2016-01-20\n\nhost;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sha256_hex(canonical.as_bytes()),
            "8ac27a5b76c9735bf383649b090fe1705ba716151d23484a26766a8efd18a8bb"
        );
        let sts = req.string_to_sign();
        assert_eq!(
            sts,
            "ACS3-HMAC-SHA256\n8ac27a5b76c9735bf383649b090fe1705ba716151d23484a26766a8efd18a8bb"
        );
        assert_eq!(v3_signature("testsecret", &sts), auth.signature);
        assert!(v3_verify("testsecret", &sts, &auth.signature));
        assert!(!v3_verify("testsecretx", &sts, &auth.signature));
        assert!(!v3_verify("testsecret", &sts, "zz"));
    }

    #[test]
    fn v3_authorization_parsing_rejects_malformed_headers() {
        for bad in [
            "",
            "ACS3-HMAC-SHA256",
            "ACS3-HMAC-SHA256 Credential=a,SignedHeaders=host",
            "ACS3-HMAC-SHA256 Credential=,SignedHeaders=host,Signature=ab",
            "ACS3-HMAC-SHA256 Credential=a,SignedHeaders=host,Signature=ab,Extra=1",
            "ACS3-HMAC-SHA256Credential=a,SignedHeaders=host,Signature=ab",
            "AWS4-HMAC-SHA256 Credential=a,SignedHeaders=host,Signature=ab",
        ] {
            assert_eq!(parse_v3_authorization(bad), None, "{bad}");
        }
    }
}
