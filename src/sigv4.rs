//! AWS Signature Version 4 for request headers (`Authorization: AWS4-HMAC-SHA256 ...`), shared
//! by the AWS KMS client (`kms::aws`) and the S3-compatible store (`store::s3`).
//!
//! Written here rather than pulled in as `aws-sigv4`, which brings the smithy runtime crates
//! with it: the algorithm is four small steps over ring's SHA-256 and HMAC, and the published
//! AWS test-suite vectors below pin every step.
//!
//! Steps (AWS General Reference, "Create a signed AWS API request"):
//! 1. canonical request: method, URI, sorted query, sorted lower-case headers, signed header
//!    names, hex SHA-256 of the payload;
//! 2. string to sign: algorithm, timestamp, credential scope, hex SHA-256 of step 1;
//! 3. signing key: HMAC chain `"AWS4" + secret` -> date -> region -> service -> `aws4_request`;
//! 4. signature: hex HMAC of step 2 under step 3, sent in the `Authorization` header.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use time::macros::format_description;
use time::OffsetDateTime;
use zeroize::Zeroizing;

const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// An access key pair and optional session token. The secret and token are zeroized on drop
/// and `Debug` does not show them.
pub struct Credentials {
    access_key_id: String,
    secret_access_key: Zeroizing<String>,
    session_token: Option<Zeroizing<String>>,
}

impl Credentials {
    pub fn new(
        access_key_id: impl Into<String>,
        secret_access_key: Zeroizing<String>,
        session_token: Option<Zeroizing<String>>,
    ) -> Self {
        Credentials {
            access_key_id: access_key_id.into(),
            secret_access_key,
            session_token,
        }
    }

    pub fn access_key_id(&self) -> &str {
        &self.access_key_id
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// The parts of an HTTP request that SigV4 covers. `path` and `query` are raw (not yet
/// percent-encoded); headers are as they go on the wire, `Host` included.
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a [(&'a str, &'a str)],
    pub headers: &'a [(&'a str, &'a str)],
    pub payload: &'a [u8],
    /// The payload's hash as the canonical request names it, when it is not the hex SHA-256
    /// of `payload` computed here: S3 sends it in `x-amz-content-sha256` (computed once by
    /// the caller, or `UNSIGNED-PAYLOAD`).
    pub payload_hash: Option<&'a str>,
}

/// A date SigV4 cannot spell (outside years 0000-9999).
#[derive(Debug)]
pub struct DateError(pub String);

impl fmt::Display for DateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigV4 date: {}", self.0)
    }
}

/// The result of signing: headers to add to the request, in order.
#[derive(Debug)]
pub struct Signed {
    /// `X-Amz-Date`, `X-Amz-Security-Token` (with a session token) and `Authorization`.
    pub headers: Vec<(&'static str, String)>,
}

/// `YYYYMMDDThhmmssZ` and `YYYYMMDD` for a UTC instant.
pub fn amz_dates(when: OffsetDateTime) -> Result<(String, String), DateError> {
    let fmt = format_description!("[year][month][day]T[hour][minute][second]Z");
    let stamp = when
        .to_offset(time::UtcOffset::UTC)
        .format(&fmt)
        .map_err(|e| DateError(e.to_string()))?;
    let date = stamp[..8].to_string();
    Ok((stamp, date))
}

/// Signs `req` for `region`/`service` at `when`. The `x-amz-date` header and, with a session
/// token, `x-amz-security-token` are added to the signed headers (the caller must not pass
/// them) and returned for the caller to send.
pub fn sign(
    creds: &Credentials,
    region: &str,
    service: &str,
    when: OffsetDateTime,
    req: &Request<'_>,
) -> Result<Signed, DateError> {
    let (amz_date, date) = amz_dates(when)?;
    let mut headers: Vec<(&str, &str)> = req.headers.to_vec();
    headers.push(("x-amz-date", &amz_date));
    if let Some(token) = &creds.session_token {
        headers.push(("x-amz-security-token", token.as_str()));
    }
    let canonical = canonical_request(&Request {
        headers: &headers,
        ..*req
    });
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let to_sign = string_to_sign(&amz_date, &scope, &canonical.text);
    let key = signing_key(&creds.secret_access_key, &date, region, service);
    let signature = hex::encode(hmac_sha256(key.as_ref(), to_sign.as_bytes()));
    let authorization = format!(
        "{ALGORITHM} Credential={}/{scope}, SignedHeaders={}, Signature={signature}",
        creds.access_key_id, canonical.signed_headers
    );

    let mut out = vec![("X-Amz-Date", amz_date.clone())];
    if let Some(token) = &creds.session_token {
        out.push(("X-Amz-Security-Token", token.to_string()));
    }
    out.push(("Authorization", authorization));
    Ok(Signed { headers: out })
}

/// Step 1's output: the canonical request text and the `SignedHeaders` list.
#[derive(Debug, PartialEq, Eq)]
pub struct CanonicalRequest {
    pub text: String,
    pub signed_headers: String,
}

/// Step 1. Every header in `req.headers` is signed.
pub fn canonical_request(req: &Request<'_>) -> CanonicalRequest {
    let mut query: Vec<(String, String)> = req
        .query
        .iter()
        .map(|(k, v)| (uri_encode(k, false), uri_encode(v, false)))
        .collect();
    query.sort();
    let query = query
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");

    // Lower-case names, sorted; repeated names join their values with ',' in request order.
    let mut names: Vec<String> = req
        .headers
        .iter()
        .map(|(n, _)| n.to_ascii_lowercase())
        .collect();
    names.sort();
    names.dedup();
    let mut canonical_headers = String::new();
    for name in &names {
        let values: Vec<String> = req
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| normalize_value(v))
            .collect();
        canonical_headers.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    let signed_headers = names.join(";");

    let path = if req.path.is_empty() { "/" } else { req.path };
    let text = format!(
        "{}\n{}\n{query}\n{canonical_headers}\n{signed_headers}\n{}",
        req.method,
        uri_encode(path, true),
        req.payload_hash
            .map_or_else(|| sha256_hex(req.payload), str::to_string)
    );
    CanonicalRequest {
        text,
        signed_headers,
    }
}

/// Step 2.
pub fn string_to_sign(amz_date: &str, scope: &str, canonical_request: &str) -> String {
    format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    )
}

/// Step 3: the per-day, per-region, per-service signing key.
pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> Zeroizing<[u8; 32]> {
    let k_secret = Zeroizing::new(format!("AWS4{secret}"));
    let k_date = hmac_sha256(k_secret.as_bytes(), date.as_bytes());
    let k_region = hmac_sha256(k_date.as_ref(), region.as_bytes());
    let k_service = hmac_sha256(k_region.as_ref(), service.as_bytes());
    hmac_sha256(k_service.as_ref(), b"aws4_request")
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Zeroizing<[u8; 32]> {
    // HMAC takes a key of any length: `new_from_slice` cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts keys of every length"),
    };
    mac.update(data);
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(&mac.finalize().into_bytes());
    out
}

/// Hex SHA-256 of `data`, as `x-amz-content-sha256` and the canonical request carry it.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Trims a header value and collapses runs of spaces to one, as the canonical form requires.
fn normalize_value(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// RFC 3986 encoding as SigV4 defines it: everything but `A-Za-z0-9-_.~` is `%XX` (upper-case
/// hex), byte by byte of the UTF-8; `/` is kept in paths.
pub fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    //! Expected values are copied from AWS's published SigV4 test suite
    //! (docs.aws.amazon.com/general/latest/gr/signature-v4-test-suite.html, the 2015-08-30
    //! edition: `AKIDEXAMPLE`, region `us-east-1`, service `service`) and from the IAM
    //! `ListUsers` example in the AWS General Reference's signing walk-through.

    use super::*;
    use time::macros::datetime;

    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const WHEN: OffsetDateTime = datetime!(2015-08-30 12:36:00 UTC);
    const HOST: (&str, &str) = ("Host", "example.amazonaws.com");

    fn creds(token: Option<&str>) -> Credentials {
        Credentials::new(
            "AKIDEXAMPLE",
            Zeroizing::new(SECRET.to_string()),
            token.map(|t| Zeroizing::new(t.to_string())),
        )
    }

    fn authorization(
        token: Option<&str>,
        service: &str,
        method: &str,
        query: &[(&str, &str)],
        headers: &[(&str, &str)],
        payload: &[u8],
    ) -> Signed {
        let req = Request {
            method,
            path: "/",
            query,
            headers,
            payload,
            payload_hash: None,
        };
        sign(&creds(token), "us-east-1", service, WHEN, &req).unwrap()
    }

    fn header<'a>(s: &'a Signed, name: &str) -> &'a str {
        s.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {name} header"))
    }

    fn suite_authz(signed_headers: &str, signature: &str) -> String {
        format!(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders={signed_headers}, Signature={signature}"
        )
    }

    #[test]
    fn get_vanilla_every_step() {
        let req = Request {
            method: "GET",
            path: "/",
            query: &[],
            headers: &[HOST, ("X-Amz-Date", "20150830T123600Z")],
            payload: b"",
            payload_hash: None,
        };
        let canonical = canonical_request(&req);
        assert_eq!(
            canonical.text,
            "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n\
             e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let sts = string_to_sign(
            "20150830T123600Z",
            "20150830/us-east-1/service/aws4_request",
            &canonical.text,
        );
        assert_eq!(
            sts,
            "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n\
             bb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63"
        );

        let signed = authorization(None, "service", "GET", &[], &[HOST], b"");
        assert_eq!(header(&signed, "X-Amz-Date"), "20150830T123600Z");
        assert_eq!(
            header(&signed, "Authorization"),
            suite_authz(
                "host;x-amz-date",
                "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
            )
        );
        assert!(!signed
            .headers
            .iter()
            .any(|(n, _)| *n == "X-Amz-Security-Token"));
    }

    #[test]
    fn post_vanilla() {
        let signed = authorization(None, "service", "POST", &[], &[HOST], b"");
        assert_eq!(
            header(&signed, "Authorization"),
            suite_authz(
                "host;x-amz-date",
                "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"
            )
        );
    }

    #[test]
    fn query_is_sorted_by_name_then_value() {
        // get-vanilla-query-order-key-case
        let signed = authorization(
            None,
            "service",
            "GET",
            &[("Param2", "value2"), ("Param1", "value1")],
            &[HOST],
            b"",
        );
        assert_eq!(
            header(&signed, "Authorization"),
            suite_authz(
                "host;x-amz-date",
                "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"
            )
        );
        // get-vanilla-query-order-value
        let signed = authorization(
            None,
            "service",
            "GET",
            &[("Param1", "value2"), ("Param1", "value1")],
            &[HOST],
            b"",
        );
        assert_eq!(
            header(&signed, "Authorization"),
            suite_authz(
                "host;x-amz-date",
                "5772eed61e12b33fae39ee5e7012498b51d56abc0abb7c60486157bd471c4694"
            )
        );
        // post-vanilla-query
        let signed = authorization(
            None,
            "service",
            "POST",
            &[("Param1", "value1")],
            &[HOST],
            b"",
        );
        assert_eq!(
            header(&signed, "Authorization"),
            suite_authz(
                "host;x-amz-date",
                "28038455d6de14eafc1f9222cf5aa6f1a96197d7deb8263271d420d138af7f11"
            )
        );
    }

    #[test]
    fn query_is_percent_encoded() {
        // get-vanilla-utf8-query
        let signed = authorization(None, "service", "GET", &[("\u{1234}", "bar")], &[HOST], b"");
        assert_eq!(
            header(&signed, "Authorization"),
            suite_authz(
                "host;x-amz-date",
                "2cdec8eed098649ff3a119c94853b13c643bcf08f8b0a1d91e12c9027818dd04"
            )
        );
        // get-vanilla-query-unreserved: nothing to encode
        let unreserved = "-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        let signed = authorization(
            None,
            "service",
            "GET",
            &[(unreserved, unreserved)],
            &[HOST],
            b"",
        );
        assert_eq!(
            header(&signed, "Authorization"),
            suite_authz(
                "host;x-amz-date",
                "9c3e54bfcdf0b19771a7f523ee5669cdf59bc7cc0884027167c21bb143a40197"
            )
        );
    }

    #[test]
    fn path_is_percent_encoded() {
        for (path, signature) in [
            (
                "/-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
                "07ef7494c76fa4850883e2b006601f940f8a34d404d0cfa977f52a65bbf5f24f",
            ),
            (
                "/\u{1234}",
                "8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85",
            ),
        ] {
            let req = Request {
                method: "GET",
                path,
                query: &[],
                headers: &[HOST],
                payload: b"",
                payload_hash: None,
            };
            let signed = sign(&creds(None), "us-east-1", "service", WHEN, &req).unwrap();
            assert_eq!(
                header(&signed, "Authorization"),
                suite_authz("host;x-amz-date", signature),
                "{path}"
            );
        }
    }

    #[test]
    fn headers_are_lowercased_sorted_trimmed_and_joined() {
        // post-header-key-sort and post-header-value-case
        let signed = authorization(
            None,
            "service",
            "POST",
            &[],
            &[HOST, ("My-Header1", "value1")],
            b"",
        );
        assert_eq!(
            header(&signed, "Authorization"),
            suite_authz(
                "host;my-header1;x-amz-date",
                "c5410059b04c1ee005303aed430f6e6645f61f4dc9e1461ec8f8916fdf18852c"
            )
        );
        let signed = authorization(
            None,
            "service",
            "POST",
            &[],
            &[HOST, ("My-Header1", "VALUE1")],
            b"",
        );
        assert_eq!(
            header(&signed, "Authorization"),
            suite_authz(
                "host;my-header1;x-amz-date",
                "cdbc9802e29d2942e5e10b5bccfdd67c5f22c7c4e8ae67b53629efa58b974b7d"
            )
        );
        // get-header-value-trim
        let signed = authorization(
            None,
            "service",
            "GET",
            &[],
            &[
                HOST,
                ("My-Header1", " value1"),
                ("My-Header2", "\"a   b   c\""),
            ],
            b"",
        );
        assert_eq!(
            header(&signed, "Authorization"),
            suite_authz(
                "host;my-header1;my-header2;x-amz-date",
                "acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736"
            )
        );
        // get-header-key-duplicate: repeated names keep request order
        let signed = authorization(
            None,
            "service",
            "GET",
            &[],
            &[
                HOST,
                ("My-Header1", "value2"),
                ("My-Header1", "value2"),
                ("My-Header1", "value1"),
            ],
            b"",
        );
        assert_eq!(
            header(&signed, "Authorization"),
            suite_authz(
                "host;my-header1;x-amz-date",
                "c9d5ea9f3f72853aea855b47ea873832890dbdd183b4468f858259531a5138ea"
            )
        );
    }

    #[test]
    fn post_x_www_form_urlencoded_signs_the_body() {
        let signed = authorization(
            None,
            "service",
            "POST",
            &[],
            &[("Content-Type", "application/x-www-form-urlencoded"), HOST],
            b"Param1=value1",
        );
        assert_eq!(
            header(&signed, "Authorization"),
            suite_authz(
                "content-type;host;x-amz-date",
                "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a"
            )
        );
    }

    #[test]
    fn session_token_is_signed_and_sent() {
        // post-sts-header-before
        let token = "AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBu\
                     FqwAeMicRXmxfpSPfIeoIYRqTflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBm\
                     Upp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAki\
                     Y9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYv\
                     KTr4rvx3iSIlTJabIQwj2ICCR/oLxBA==";
        let signed = authorization(Some(token), "service", "POST", &[], &[HOST], b"");
        assert_eq!(header(&signed, "X-Amz-Security-Token"), token);
        assert_eq!(
            header(&signed, "Authorization"),
            suite_authz(
                "host;x-amz-date;x-amz-security-token",
                "85d96828115b5dc0cfc3bd16ad9e210dd772bbebba041836c64533a82be05ead"
            )
        );
    }

    #[test]
    fn iam_list_users_example_from_the_docs() {
        let key = signing_key(SECRET, "20150830", "us-east-1", "iam");
        assert_eq!(
            hex::encode(key.as_ref()),
            "c4afb1cc5771d871763a393e44b703571b55cc28424d1a5e86da6ed3c154a4b9"
        );
        let req = Request {
            method: "GET",
            path: "/",
            query: &[("Action", "ListUsers"), ("Version", "2010-05-08")],
            headers: &[
                (
                    "Content-Type",
                    "application/x-www-form-urlencoded; charset=utf-8",
                ),
                ("Host", "iam.amazonaws.com"),
                ("X-Amz-Date", "20150830T123600Z"),
            ],
            payload: b"",
            payload_hash: None,
        };
        assert_eq!(
            sha256_hex(canonical_request(&req).text.as_bytes()),
            "f536975d06c0309214f805bb90ccff089219ecd68b2577efef23edd43b7e1a59"
        );
        let signed = sign(
            &creds(None),
            "us-east-1",
            "iam",
            WHEN,
            &Request {
                headers: &req.headers[..2],
                ..req
            },
        )
        .unwrap();
        assert_eq!(
            header(&signed, "Authorization"),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date, \
             Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
        );
    }

    /// The S3 example of "Signature Calculations for the Authorization Header" (Amazon S3 API
    /// reference): a ranged GET with `x-amz-content-sha256`, signed for service `s3`.
    #[test]
    fn s3_get_object_example_from_the_docs() {
        let creds = Credentials::new(
            "AKIAIOSFODNN7EXAMPLE",
            Zeroizing::new("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".to_string()),
            None,
        );
        let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let req = Request {
            method: "GET",
            path: "/test.txt",
            query: &[],
            headers: &[
                ("Host", "examplebucket.s3.amazonaws.com"),
                ("Range", "bytes=0-9"),
                ("x-amz-content-sha256", empty),
            ],
            payload: b"",
            payload_hash: Some(empty),
        };
        let signed = sign(
            &creds,
            "us-east-1",
            "s3",
            datetime!(2013-05-24 00:00:00 UTC),
            &req,
        )
        .unwrap();
        assert_eq!(
            header(&signed, "Authorization"),
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    #[test]
    fn debug_hides_secrets() {
        let text = format!("{:?}", creds(Some("tok-secret")));
        assert!(
            !text.contains(SECRET) && !text.contains("tok-secret"),
            "{text}"
        );
        assert!(text.contains("AKIDEXAMPLE"));
    }
}
