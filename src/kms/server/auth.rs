//! Request authentication for `kms serve`: signature v1 (HMAC-SHA1 query signature) and v3
//! (`ACS3-HMAC-SHA256` header), the 15-minute timestamp window and nonce-replay refusal
//! (docs/KMS-WIRE.md §2–§4).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use super::credentials::Credentials;
use super::reply::ApiError;
use crate::kms::aliyun::sign::{
    parse_v3_authorization, sha256_hex, v1_string_to_sign, v1_verify, v3_verify, V3Request,
    V3_ALGORITHM,
};
use crate::kms::aliyun::{parse_timestamp, API_VERSION};

/// How far a request's timestamp may be from the server's clock.
pub const TIME_WINDOW: Duration = Duration::from_secs(15 * 60);

/// A request as received: decoded query and form-body parameters, headers with lower-case
/// names, the raw body.
pub struct Incoming {
    pub method: String,
    pub query: Vec<(String, String)>,
    pub form: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Incoming {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first value of a query or form parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .chain(self.form.iter())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn all_params(&self) -> Vec<(String, String)> {
        self.query.iter().chain(self.form.iter()).cloned().collect()
    }
}

/// Which signature scheme a request used (for the access log).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    V1,
    V3,
}

/// The verified action of a request.
#[derive(Debug)]
pub struct Authenticated {
    pub action: String,
    pub scheme: Scheme,
}

/// Verifies signatures against one credential pair and remembers nonces.
pub struct Authenticator {
    credentials: Credentials,
    /// `AccessKeyId \n nonce` -> when it may be forgotten.
    nonces: Mutex<NonceCache>,
}

struct NonceCache {
    seen: HashMap<String, Instant>,
    last_prune: Instant,
}

impl Authenticator {
    pub fn new(credentials: Credentials) -> Self {
        Authenticator {
            credentials,
            nonces: Mutex::new(NonceCache {
                seen: HashMap::new(),
                last_prune: Instant::now(),
            }),
        }
    }

    pub fn access_key_id(&self) -> &str {
        &self.credentials.access_key_id
    }

    /// Checks the signature (v3 when an `ACS3-HMAC-SHA256` Authorization header is present,
    /// else v1), then the timestamp, the nonce and the API version. Nonces are only recorded
    /// for correctly signed requests, so nobody can burn another client's nonces.
    pub fn authenticate(
        &self,
        req: &Incoming,
        now: OffsetDateTime,
    ) -> Result<Authenticated, ApiError> {
        match req.header("authorization") {
            Some(auth) if auth.trim_start().starts_with(V3_ALGORITHM) => self.v3(req, auth, now),
            Some(_) if req.param("Signature").is_none() => Err(ApiError::incomplete_signature(
                "Only ACS3-HMAC-SHA256 Authorization headers and HMAC-SHA1 query signatures are supported.",
            )),
            _ => self.v1(req, now),
        }
    }

    fn v1(&self, req: &Incoming, now: OffsetDateTime) -> Result<Authenticated, ApiError> {
        let need = |name: &str| req.param(name).ok_or_else(|| ApiError::missing(name));
        let signature = need("Signature")?;
        let key_id = need("AccessKeyId")?;
        if need("SignatureMethod")? != "HMAC-SHA1" {
            return Err(ApiError::incomplete_signature(
                "SignatureMethod must be HMAC-SHA1.",
            ));
        }
        if need("SignatureVersion")? != "1.0" {
            return Err(ApiError::incomplete_signature(
                "SignatureVersion must be 1.0.",
            ));
        }
        self.check_key_id(key_id)?;
        let string_to_sign = v1_string_to_sign(&req.method, &req.all_params());
        if !v1_verify(&self.credentials.secret, &string_to_sign, signature) {
            return Err(ApiError::signature_mismatch(&string_to_sign));
        }
        self.check_fresh(key_id, need("Timestamp")?, need("SignatureNonce")?, now)?;
        check_version(need("Version")?)?;
        Ok(Authenticated {
            action: need("Action")?.to_string(),
            scheme: Scheme::V1,
        })
    }

    fn v3(
        &self,
        req: &Incoming,
        authorization: &str,
        now: OffsetDateTime,
    ) -> Result<Authenticated, ApiError> {
        let auth = parse_v3_authorization(authorization).ok_or_else(|| {
            ApiError::incomplete_signature("The Authorization header is malformed.")
        })?;
        self.check_key_id(&auth.access_key_id)?;
        // The spec requires host and every x-acs-* header to be signed; otherwise a proxy
        // could change the action or the date of a signed request.
        let unsigned = req
            .headers
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| *k == "host" || k.starts_with("x-acs-"))
            .find(|k| !auth.signed_headers.iter().any(|s| s == k));
        if let Some(h) = unsigned {
            return Err(ApiError::incomplete_signature(&format!(
                "Header {h} must be signed."
            )));
        }
        if req.header("host").is_none() {
            return Err(ApiError::incomplete_signature(
                "Header host must be signed.",
            ));
        }
        let need = |name: &str| req.header(name).ok_or_else(|| ApiError::missing(name));
        let hashed_payload = need("x-acs-content-sha256")?;
        if !hashed_payload.eq_ignore_ascii_case(&sha256_hex(&req.body)) {
            return Err(ApiError::incomplete_signature(
                "x-acs-content-sha256 does not match the request body.",
            ));
        }
        let canonical = V3Request {
            method: &req.method,
            query: &req.query,
            headers: &req.headers,
            signed_headers: &auth.signed_headers,
            hashed_payload,
        };
        let string_to_sign = canonical.string_to_sign();
        if !v3_verify(&self.credentials.secret, &string_to_sign, &auth.signature) {
            return Err(ApiError::signature_mismatch(&string_to_sign));
        }
        self.check_fresh(
            &auth.access_key_id,
            need("x-acs-date")?,
            need("x-acs-signature-nonce")?,
            now,
        )?;
        check_version(need("x-acs-version")?)?;
        Ok(Authenticated {
            action: need("x-acs-action")?.to_string(),
            scheme: Scheme::V3,
        })
    }

    fn check_key_id(&self, key_id: &str) -> Result<(), ApiError> {
        if key_id == self.credentials.access_key_id {
            Ok(())
        } else {
            Err(ApiError::new(
                404,
                "InvalidAccessKeyId.NotFound",
                "Specified access key is not found.",
            ))
        }
    }

    /// The timestamp must be within [`TIME_WINDOW`] of `now`, and the nonce new. A nonce is
    /// remembered for as long as its request could still pass the time check.
    fn check_fresh(
        &self,
        key_id: &str,
        timestamp: &str,
        nonce: &str,
        now: OffsetDateTime,
    ) -> Result<(), ApiError> {
        let t = parse_timestamp(timestamp).ok_or_else(|| {
            ApiError::new(
                400,
                "InvalidTimeStamp.Format",
                "Specified time stamp or date value is not well formatted.",
            )
        })?;
        let skew = (now - t).unsigned_abs();
        if skew > TIME_WINDOW {
            return Err(ApiError::new(
                400,
                "InvalidTimeStamp.Expired",
                "Specified time stamp or date value is expired.",
            ));
        }
        if nonce.is_empty() {
            return Err(ApiError::missing("SignatureNonce"));
        }
        let mut cache = self
            .nonces
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let instant = Instant::now();
        if instant.duration_since(cache.last_prune) > Duration::from_secs(60) {
            cache.seen.retain(|_, forget_at| *forget_at > instant);
            cache.last_prune = instant;
        }
        let entry = format!("{key_id}\n{nonce}");
        if cache
            .seen
            .get(&entry)
            .is_some_and(|forget_at| *forget_at > instant)
        {
            return Err(ApiError::new(
                400,
                "SignatureNonceUsed",
                "Specified signature nonce was used already.",
            ));
        }
        // Passes the time check until `t + window`, at most `2 * window` from now; plus a minute.
        cache
            .seen
            .insert(entry, instant + 2 * TIME_WINDOW + Duration::from_secs(60));
        Ok(())
    }
}

fn check_version(v: &str) -> Result<(), ApiError> {
    if v == API_VERSION {
        Ok(())
    } else {
        Err(ApiError::new(
            400,
            "InvalidVersion",
            "Specified parameter Version is not valid.",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kms::aliyun::sign::{v1_signature, v3_signature};
    use crate::kms::aliyun::{format_timestamp, new_uuid};
    use zeroize::Zeroizing;

    fn auth() -> Authenticator {
        Authenticator::new(Credentials {
            access_key_id: "testid".into(),
            secret: Zeroizing::new("testsecret".into()),
        })
    }

    fn v1_request(ts: &str, nonce: &str, secret: &str) -> Incoming {
        let mut query: Vec<(String, String)> = [
            ("Action", "DescribeKey"),
            ("Version", API_VERSION),
            ("Format", "JSON"),
            ("AccessKeyId", "testid"),
            ("SignatureMethod", "HMAC-SHA1"),
            ("SignatureVersion", "1.0"),
            ("SignatureNonce", nonce),
            ("Timestamp", ts),
            ("KeyId", "alias/a b+c"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let sig = v1_signature(secret, &v1_string_to_sign("POST", &query));
        query.push(("Signature".into(), sig));
        Incoming {
            method: "POST".into(),
            query,
            form: vec![],
            headers: vec![],
            body: vec![],
        }
    }

    #[test]
    fn v1_checks_signature_time_and_nonce() {
        let a = auth();
        let now = OffsetDateTime::now_utc();
        let ts = format_timestamp(now);
        let req = v1_request(&ts, &new_uuid(), "testsecret");
        let ok = a.authenticate(&req, now).unwrap();
        assert_eq!(ok.action, "DescribeKey");
        assert_eq!(ok.scheme, Scheme::V1);
        let replay = a.authenticate(&req, now).unwrap_err();
        assert_eq!(replay.code, "SignatureNonceUsed");

        let bad = a
            .authenticate(&v1_request(&ts, &new_uuid(), "other"), now)
            .unwrap_err();
        assert_eq!(
            (bad.status, bad.code.as_str()),
            (400, "SignatureDoesNotMatch")
        );
        assert!(bad.message.contains("is:POST&%2F&AccessKeyId%3Dtestid"));

        let old = format_timestamp(now - time::Duration::minutes(16));
        let stale = a
            .authenticate(&v1_request(&old, &new_uuid(), "testsecret"), now)
            .unwrap_err();
        assert_eq!(stale.code, "InvalidTimeStamp.Expired");
        let near = format_timestamp(now - time::Duration::minutes(14));
        assert!(a
            .authenticate(&v1_request(&near, &new_uuid(), "testsecret"), now)
            .is_ok());

        let mut tampered = v1_request(&ts, &new_uuid(), "testsecret");
        tampered.query[8].1 = "alias/other".into();
        assert_eq!(
            a.authenticate(&tampered, now).unwrap_err().code,
            "SignatureDoesNotMatch"
        );
        let mut unknown = v1_request(&ts, &new_uuid(), "testsecret");
        unknown.query[3].1 = "someone".into();
        let e = a.authenticate(&unknown, now).unwrap_err();
        assert_eq!(
            (e.status, e.code.as_str()),
            (404, "InvalidAccessKeyId.NotFound")
        );
    }

    fn v3_request(now: OffsetDateTime, sign: &[&str], body: &[u8]) -> Incoming {
        let query = vec![("KeyId".to_string(), "alias/x y".to_string())];
        let headers: Vec<(String, String)> = [
            ("host", "127.0.0.1:1".to_string()),
            ("x-acs-action", "DescribeKey".into()),
            ("x-acs-version", API_VERSION.into()),
            ("x-acs-date", format_timestamp(now)),
            ("x-acs-signature-nonce", new_uuid()),
            ("x-acs-content-sha256", sha256_hex(body)),
            ("user-agent", "test".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let signed: Vec<String> = sign.iter().map(|s| s.to_string()).collect();
        let sts = V3Request {
            method: "POST",
            query: &query,
            headers: &headers,
            signed_headers: &signed,
            hashed_payload: &sha256_hex(body),
        }
        .string_to_sign();
        let mut headers = headers;
        headers.push((
            "authorization".into(),
            format!(
                "ACS3-HMAC-SHA256 Credential=testid,SignedHeaders={},Signature={}",
                signed.join(";"),
                v3_signature("testsecret", &sts)
            ),
        ));
        Incoming {
            method: "POST".into(),
            query,
            form: vec![],
            headers,
            body: body.to_vec(),
        }
    }

    const ALL: &[&str] = &[
        "host",
        "user-agent",
        "x-acs-action",
        "x-acs-content-sha256",
        "x-acs-date",
        "x-acs-signature-nonce",
        "x-acs-version",
    ];

    #[test]
    fn v3_checks_signed_headers_and_payload() {
        let a = auth();
        let now = OffsetDateTime::now_utc();
        let ok = a.authenticate(&v3_request(now, ALL, b""), now).unwrap();
        assert_eq!((ok.action.as_str(), ok.scheme), ("DescribeKey", Scheme::V3));

        let req = v3_request(now, ALL, b"");
        a.authenticate(&req, now).unwrap();
        assert_eq!(
            a.authenticate(&req, now).unwrap_err().code,
            "SignatureNonceUsed"
        );

        let partial = &ALL[..ALL.len() - 1];
        let e = a
            .authenticate(&v3_request(now, partial, b""), now)
            .unwrap_err();
        assert_eq!(e.code, "IncompleteSignature");

        let mut body_changed = v3_request(now, ALL, b"A=1");
        body_changed.body = b"A=2".to_vec();
        assert_eq!(
            a.authenticate(&body_changed, now).unwrap_err().code,
            "IncompleteSignature"
        );

        let mut action_changed = v3_request(now, ALL, b"");
        action_changed.headers[1].1 = "DisableKey".into();
        let e = a.authenticate(&action_changed, now).unwrap_err();
        assert_eq!(e.code, "SignatureDoesNotMatch");
        assert!(e.message.contains("is:ACS3-HMAC-SHA256\n"));

        let later = now + time::Duration::minutes(20);
        assert_eq!(
            a.authenticate(&v3_request(now, ALL, b""), later)
                .unwrap_err()
                .code,
            "InvalidTimeStamp.Expired"
        );
    }
}
