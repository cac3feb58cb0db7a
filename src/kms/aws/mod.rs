//! The `aws:` key provider: AWS KMS over its JSON 1.1 protocol, signed with SigV4.
//!
//! Every operation is `POST /` with `Content-Type: application/x-amz-json-1.1`,
//! `X-Amz-Target: TrentService.<Operation>` and a JSON body; errors come back as
//! `{"__type": "...Exception", "message": "..."}` (see `docs/KMS-WIRE.md` §10). The same client
//! talks to the real service and to a local emulator such as moto.
//!
//! Bodies that carry key material (Encrypt requests, GenerateDataKey and Decrypt responses) are
//! kept in zeroizing buffers; the HTTP stack's own internal copies are out of our reach.

use std::io::{Cursor, Read};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{
    DataKey, EncryptionContext, GeneratedKey, KeyProvider, KmsError, KmsErrorKind, KmsOptions,
    WrappedKey, DATA_KEY_LEN,
};
use crate::retry::RetryPolicy;
use crate::sigv4::{self, Credentials};

const CONTENT_TYPE: &str = "application/x-amz-json-1.1";
const SERVICE: &str = "kms";
/// Connecting should never take as long as a whole request may.
const MAX_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How much of a non-JSON error body goes into an error message.
const MAX_BODY_IN_ERROR: usize = 200;
/// KMS answers are a few KiB; anything far larger is not a KMS answer.
const MAX_RESPONSE: u64 = 1 << 20;

/// A blocking AWS KMS client for one endpoint and region.
pub struct AwsClient {
    endpoint: String,
    url: reqwest::Url,
    /// The `Host` header exactly as the HTTP client sends it (port only when not the default).
    host: String,
    region: String,
    credentials: Credentials,
    http: reqwest::blocking::Client,
    retry: RetryPolicy,
}

impl AwsClient {
    /// A client with credentials from `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and optional
    /// `AWS_SESSION_TOKEN`; the region from `region` (the URL's `?region=`), else `AWS_REGION`,
    /// else `AWS_DEFAULT_REGION`.
    pub fn from_env(
        endpoint: &str,
        region: Option<&str>,
        opts: &KmsOptions,
    ) -> Result<Self, KmsError> {
        Self::from_vars(endpoint, region, opts, |name| std::env::var(name).ok())
    }

    /// [`AwsClient::from_env`] with the variables read through `var` (tests use a map, since
    /// the process environment is shared between test threads).
    pub fn from_vars(
        endpoint: &str,
        region: Option<&str>,
        opts: &KmsOptions,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, KmsError> {
        let var = |name: &str| var(name).filter(|v| !v.is_empty());
        let region = region
            .map(str::to_string)
            .or_else(|| var("AWS_REGION"))
            .or_else(|| var("AWS_DEFAULT_REGION"))
            .ok_or_else(|| {
                KmsError::new(
                    KmsErrorKind::InvalidArgument,
                    "no AWS region: add ?region=<region> to the aws: URL or set AWS_REGION \
                     (or AWS_DEFAULT_REGION)",
                )
                .with_endpoint(endpoint)
            })?;
        let (id, secret) = match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
            (Some(id), Some(secret)) => (id, Zeroizing::new(secret)),
            (id, _) => {
                let missing = if id.is_none() {
                    "AWS_ACCESS_KEY_ID"
                } else {
                    "AWS_SECRET_ACCESS_KEY"
                };
                return Err(KmsError::new(
                    KmsErrorKind::Auth,
                    format!(
                        "no AWS credentials: {missing} is not set (set AWS_ACCESS_KEY_ID and \
                         AWS_SECRET_ACCESS_KEY, and AWS_SESSION_TOKEN for temporary credentials)"
                    ),
                )
                .with_endpoint(endpoint));
            }
        };
        if !region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(KmsError::new(
                KmsErrorKind::InvalidArgument,
                format!("invalid AWS region {region:?}"),
            )
            .with_endpoint(endpoint));
        }
        let token = var("AWS_SESSION_TOKEN").map(Zeroizing::new);
        Self::new(endpoint, &region, Credentials::new(id, secret, token), opts)
    }

    /// A client with explicit credentials.
    pub fn new(
        endpoint: &str,
        region: &str,
        credentials: Credentials,
        opts: &KmsOptions,
    ) -> Result<Self, KmsError> {
        let endpoint = endpoint.trim_end_matches('/').to_string();
        if endpoint.contains('@') {
            // Not echoed: user info in a URL is usually a password.
            return Err(KmsError::new(
                KmsErrorKind::InvalidArgument,
                "invalid AWS KMS endpoint: credentials in the URL are not accepted; use \
                 AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
            ));
        }
        let bad = |why: String| {
            KmsError::new(KmsErrorKind::InvalidArgument, why).with_endpoint(endpoint.clone())
        };
        let url = reqwest::Url::parse(&format!("{endpoint}/"))
            .map_err(|e| bad(format!("invalid AWS KMS endpoint: {e}")))?;
        if !matches!(url.scheme(), "http" | "https")
            || url.path() != "/"
            || url.query().is_some()
            || url.fragment().is_some()
        {
            return Err(bad(
                "invalid AWS KMS endpoint: expected http(s)://host[:port] with no path or query"
                    .into(),
            ));
        }
        let host = match (url.host_str(), url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            (None, _) => return Err(bad("invalid AWS KMS endpoint: no host".into())),
        };
        let mut builder = reqwest::blocking::Client::builder();
        if is_loopback(&url) {
            // A local emulator: never route it through an HTTP(S)_PROXY from the environment.
            builder = builder.no_proxy();
        }
        let builder = builder
            .timeout(opts.timeout)
            .connect_timeout(opts.timeout.min(MAX_CONNECT_TIMEOUT))
            .user_agent(concat!("envseal/", env!("CARGO_PKG_VERSION")));
        let http = crate::limits::with_sigpipe_blocked(|| builder.build()).map_err(|e| {
            KmsError::new(KmsErrorKind::Transport, format!("HTTP client: {e}"))
                .with_endpoint(endpoint.clone())
        })?;
        Ok(AwsClient {
            endpoint,
            url,
            host,
            region: region.to_string(),
            credentials,
            http,
            retry: opts.retry.clone(),
        })
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    /// `ReEncrypt`: moves a wrapped key under `dest_key` inside the KMS, without the data key
    /// ever leaving it. The new blob keeps the same encryption context.
    pub fn re_encrypt(&self, wrapped: &WrappedKey, dest_key: &str) -> Result<WrappedKey, KmsError> {
        let ctx = context_arg(&wrapped.context);
        let req = ReEncryptRequest {
            ciphertext_blob: wrapped.blob.trim(),
            source_key_id: non_empty(&wrapped.key_id),
            source_encryption_context: ctx,
            destination_key_id: dest_key,
            destination_encryption_context: ctx,
        };
        let what = format!("ReEncrypt from {} to {dest_key}", wrapped.key_id);
        let resp: CiphertextResponse = self.call("ReEncrypt", &what, &req)?;
        self.wrapped(resp, &wrapped.context)
    }

    /// `CreateKey` (symmetric, encrypt/decrypt); returns the key ARN. For tests and setup
    /// scripts: envseal's CLI does not manage AWS keys.
    pub fn create_key(&self, description: &str) -> Result<String, KmsError> {
        let req = serde_json::json!({
            "Description": description,
            "KeyUsage": "ENCRYPT_DECRYPT",
            "KeySpec": "SYMMETRIC_DEFAULT",
        });
        let resp: CreateKeyResponse = self.call("CreateKey", "CreateKey", &req)?;
        let meta = resp.key_metadata;
        meta.arn
            .or(meta.key_id)
            .ok_or_else(|| self.invalid_response("CreateKey", "no KeyMetadata.Arn or KeyId"))
    }

    /// `CreateAlias`: points `alias` (`alias/...`) at `target` (a key id or ARN).
    pub fn create_alias(&self, alias: &str, target: &str) -> Result<(), KmsError> {
        let req = serde_json::json!({ "AliasName": alias, "TargetKeyId": target });
        let what = format!("CreateAlias {alias} -> {target}");
        let _: serde::de::IgnoredAny = self.call("CreateAlias", &what, &req)?;
        Ok(())
    }

    /// One operation with retries; each attempt is signed afresh (new `X-Amz-Date`). `what`
    /// names the operation and key in log lines and error messages.
    fn call<Req: Serialize, Resp: serde::de::DeserializeOwned>(
        &self,
        op: &str,
        what: &str,
        req: &Req,
    ) -> Result<Resp, KmsError> {
        let body =
            Zeroizing::new(serde_json::to_vec(req).map_err(|e| {
                KmsError::new(KmsErrorKind::InvalidArgument, format!("{what}: {e}"))
            })?);
        let log_what = format!("AWS KMS {what} at {}", self.endpoint);
        let mut attempts = 0;
        let resp = self
            .retry
            .run(&log_what, || {
                attempts += 1;
                self.attempt(op, what, &body)
            })
            .map_err(|mut e| {
                if attempts > 1 {
                    e.message = format!("{} (gave up after {attempts} attempts)", e.message);
                }
                e
            })?;
        serde_json::from_slice(&resp).map_err(|e| {
            // serde's text may quote values, and a value here may be key material.
            let detail = e.to_string();
            let detail = if detail.starts_with("missing field") {
                detail
            } else {
                format!("line {}, column {}", e.line(), e.column())
            };
            self.invalid_response(what, &format!("unexpected response ({detail})"))
        })
    }

    fn attempt(
        &self,
        op: &str,
        what: &str,
        body: &Zeroizing<Vec<u8>>,
    ) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        let target = format!("TrentService.{op}");
        let headers = [
            ("Content-Type", CONTENT_TYPE),
            ("Host", self.host.as_str()),
            ("X-Amz-Target", target.as_str()),
        ];
        let signed = sigv4::sign(
            &self.credentials,
            &self.region,
            SERVICE,
            time::OffsetDateTime::now_utc(),
            &sigv4::Request {
                method: "POST",
                path: "/",
                query: &[],
                headers: &headers,
                payload: body,
                payload_hash: None,
            },
        )
        .map_err(|e| KmsError::new(KmsErrorKind::InvalidArgument, e.to_string()))?;
        let mut request = self
            .http
            .post(self.url.clone())
            .header("Content-Type", CONTENT_TYPE)
            .header("X-Amz-Target", &target)
            // A reader over a zeroizing copy, so the body reqwest owns is wiped too.
            .body(reqwest::blocking::Body::sized(
                Cursor::new(body.clone()),
                body.len() as u64,
            ));
        for (name, value) in &signed.headers {
            request = request.header(*name, value);
        }

        let mut response = request.send().map_err(|e| self.transport_error(what, &e))?;
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let request_id = header("x-amzn-RequestId");
        let error_type = header("x-amzn-ErrorType");
        let mut buf = Zeroizing::new(Vec::new());
        (&mut response)
            .take(MAX_RESPONSE + 1)
            .read_to_end(&mut buf)
            .map_err(|e| self.transport_error(what, &e))?;
        if buf.len() as u64 > MAX_RESPONSE {
            return Err(self
                .invalid_response(what, "response larger than 1 MiB")
                .with_status(status));
        }
        log::debug!("AWS KMS {op} at {}: HTTP {status}", self.endpoint);
        if (200..300).contains(&status) {
            return Ok(buf);
        }
        Err(self.api_error(what, status, request_id, error_type, &buf))
    }

    /// A connection, TLS, timeout or read failure, with its causes spelled out (reqwest's own
    /// message alone says only "error sending request").
    fn transport_error(&self, what: &str, e: &(dyn std::error::Error + 'static)) -> KmsError {
        let text = crate::error::error_chain(e);
        KmsError::new(
            KmsErrorKind::Transport,
            format!("{what}: cannot reach AWS KMS: {text}"),
        )
        .with_endpoint(self.endpoint.clone())
    }

    fn invalid_response(&self, what: &str, why: &str) -> KmsError {
        KmsError::new(KmsErrorKind::InvalidResponse, format!("{what}: {why}"))
            .with_endpoint(self.endpoint.clone())
    }

    /// Turns a non-2xx answer into a typed error: code from `__type` (or the
    /// `x-amzn-ErrorType` header), message from `message`.
    fn api_error(
        &self,
        what: &str,
        status: u16,
        request_id: Option<String>,
        error_type: Option<String>,
        body: &[u8],
    ) -> KmsError {
        let parsed: Option<ErrorBody> = serde_json::from_slice(body).ok();
        let (code, message) = match parsed {
            Some(b) => (b.kind.or(error_type), b.message),
            None => (error_type, None),
        };
        // `__type` may be namespaced (`com.amazonaws.kms#NotFoundException`); the header form
        // may carry a suffix after ':'.
        let code = code.map(|c| {
            let c = c.rsplit('#').next().unwrap_or(&c);
            c.split(':').next().unwrap_or(c).to_string()
        });
        let message = message.unwrap_or_else(|| {
            let text = String::from_utf8_lossy(body);
            let text: String = text.chars().take(MAX_BODY_IN_ERROR).collect();
            if text.trim().is_empty() {
                "no error details in the response".to_string()
            } else {
                format!("unexpected response body: {}", text.trim())
            }
        });
        let mut err = KmsError::new(
            error_kind(code.as_deref(), status),
            format!("{what}: {message}"),
        )
        .with_endpoint(self.endpoint.clone())
        .with_status(status);
        if let Some(code) = code {
            err = err.with_code(code);
        }
        if let Some(id) = request_id {
            err = err.with_request_id(id);
        }
        err
    }

    fn wrapped(
        &self,
        resp: CiphertextResponse,
        context: &EncryptionContext,
    ) -> Result<WrappedKey, KmsError> {
        Ok(WrappedKey {
            kms: self.url(),
            key_id: resp.key_id,
            blob: resp.ciphertext_blob,
            context: context.clone(),
        })
    }

    fn data_key(&self, what: &str, plaintext: &Zeroizing<String>) -> Result<DataKey, KmsError> {
        let bytes = Zeroizing::new(
            B64.decode(plaintext.as_bytes())
                .map_err(|_| self.invalid_response(what, "Plaintext is not base64"))?,
        );
        DataKey::from_bytes(&bytes).map_err(|e| e.with_endpoint(self.endpoint.clone()))
    }
}

impl KeyProvider for AwsClient {
    fn url(&self) -> String {
        format!("aws:{}?region={}", self.endpoint, self.region)
    }

    fn generate_data_key(
        &self,
        key: &str,
        context: &EncryptionContext,
    ) -> Result<GeneratedKey, KmsError> {
        let req = GenerateDataKeyRequest {
            key_id: key,
            number_of_bytes: DATA_KEY_LEN,
            encryption_context: context_arg(context),
        };
        let what = format!("GenerateDataKey under {key}");
        let resp: DataKeyResponse = self.call("GenerateDataKey", &what, &req)?;
        let plaintext = Zeroizing::new(resp.plaintext);
        let blob = resp
            .ciphertext_blob
            .ok_or_else(|| self.invalid_response(&what, "no CiphertextBlob in the response"))?;
        Ok(GeneratedKey {
            plaintext: self.data_key(&what, &plaintext)?,
            wrapped: self.wrapped(
                CiphertextResponse {
                    key_id: resp.key_id,
                    ciphertext_blob: blob,
                },
                context,
            )?,
        })
    }

    fn decrypt(&self, wrapped: &WrappedKey) -> Result<DataKey, KmsError> {
        self.decrypt_naming_key(wrapped).map(|(k, _)| k)
    }

    fn decrypt_naming_key(
        &self,
        wrapped: &WrappedKey,
    ) -> Result<(DataKey, Option<String>), KmsError> {
        let req = DecryptRequest {
            // Blobs copied through text files may pick up a trailing newline.
            ciphertext_blob: wrapped.blob.trim(),
            key_id: non_empty(&wrapped.key_id),
            encryption_context: context_arg(&wrapped.context),
        };
        let what = format!("Decrypt under {}", wrapped.key_id);
        let resp: DataKeyResponse = self.call("Decrypt", &what, &req)?;
        let plaintext = Zeroizing::new(resp.plaintext);
        let key = self.data_key(&what, &plaintext)?;
        Ok((key, Some(resp.key_id).filter(|k| !k.is_empty())))
    }

    fn encrypt(
        &self,
        key: &str,
        plaintext: &DataKey,
        context: &EncryptionContext,
    ) -> Result<WrappedKey, KmsError> {
        let encoded = Zeroizing::new(B64.encode(plaintext.expose()));
        let req = EncryptRequest {
            key_id: key,
            plaintext: &encoded,
            encryption_context: context_arg(context),
        };
        let what = format!("Encrypt under {key}");
        let resp: CiphertextResponse = self.call("Encrypt", &what, &req)?;
        self.wrapped(resp, context)
    }

    fn re_encrypt(&self, wrapped: &WrappedKey, key: &str) -> Result<WrappedKey, KmsError> {
        AwsClient::re_encrypt(self, wrapped, key)
    }
}

/// The [`KmsErrorKind`] for an AWS error code, falling back on the HTTP status.
fn error_kind(code: Option<&str>, status: u16) -> KmsErrorKind {
    use KmsErrorKind::*;
    match code.unwrap_or("") {
        "NotFoundException" => NotFound,
        "DisabledException" | "KMSInvalidStateException" | "KeyUnavailableException" => Disabled,
        "InvalidCiphertextException" | "IncorrectKeyException" => InvalidCiphertext,
        "AccessDeniedException"
        | "UnrecognizedClientException"
        | "InvalidSignatureException"
        | "IncompleteSignature"
        | "MissingAuthenticationToken"
        | "InvalidClientTokenId"
        | "ExpiredTokenException"
        | "SignatureDoesNotMatch" => Auth,
        "ThrottlingException" => Throttled,
        "KMSInternalException" | "DependencyTimeoutException" => Unavailable,
        "ValidationException"
        | "InvalidArnException"
        | "InvalidAliasNameException"
        | "AlreadyExistsException"
        | "InvalidKeyUsageException"
        | "InvalidGrantTokenException"
        | "LimitExceededException"
        | "SerializationException" => InvalidArgument,
        _ if status >= 500 => Unavailable,
        _ if status == 401 || status == 403 => Auth,
        _ if status == 404 => NotFound,
        "" => InvalidResponse,
        _ => InvalidArgument,
    }
}

fn is_loopback(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// AWS takes the context as a JSON object; an empty one is left out.
fn context_arg(context: &EncryptionContext) -> Option<&EncryptionContext> {
    (!context.is_empty()).then_some(context)
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct GenerateDataKeyRequest<'a> {
    key_id: &'a str,
    number_of_bytes: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    encryption_context: Option<&'a EncryptionContext>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DecryptRequest<'a> {
    ciphertext_blob: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    encryption_context: Option<&'a EncryptionContext>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct EncryptRequest<'a> {
    key_id: &'a str,
    plaintext: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    encryption_context: Option<&'a EncryptionContext>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ReEncryptRequest<'a> {
    ciphertext_blob: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    source_key_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source_encryption_context: Option<&'a EncryptionContext>,
    destination_key_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    destination_encryption_context: Option<&'a EncryptionContext>,
}

/// GenerateDataKey and Decrypt answers. `Plaintext` is moved into a `Zeroizing` at once.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DataKeyResponse {
    key_id: String,
    plaintext: String,
    ciphertext_blob: Option<String>,
}

/// Encrypt and ReEncrypt answers.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CiphertextResponse {
    key_id: String,
    ciphertext_blob: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CreateKeyResponse {
    key_metadata: CreateKeyMetadata,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CreateKeyMetadata {
    arn: Option<String>,
    key_id: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(rename = "__type")]
    kind: Option<String>,
    #[serde(alias = "Message")]
    message: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    const CREDS: [(&str, &str); 2] = [
        ("AWS_ACCESS_KEY_ID", "AKIDTEST"),
        ("AWS_SECRET_ACCESS_KEY", "very-secret-value"),
    ];

    #[test]
    fn region_comes_from_url_then_aws_region_then_default_region() {
        let opts = KmsOptions::default();
        let ep = "http://127.0.0.1:9";
        let all = [
            CREDS[0],
            CREDS[1],
            ("AWS_REGION", "eu-west-1"),
            ("AWS_DEFAULT_REGION", "ap-south-1"),
        ];
        let c = AwsClient::from_vars(ep, Some("us-east-2"), &opts, vars(&all)).unwrap();
        assert_eq!(c.url(), "aws:http://127.0.0.1:9?region=us-east-2");
        let c = AwsClient::from_vars(ep, None, &opts, vars(&all)).unwrap();
        assert_eq!(c.region(), "eu-west-1");
        let c = AwsClient::from_vars(ep, None, &opts, vars(&[CREDS[0], CREDS[1], all[3]])).unwrap();
        assert_eq!(c.region(), "ap-south-1");
        let e = AwsClient::from_vars(ep, None, &opts, vars(&CREDS))
            .err()
            .unwrap();
        assert_eq!(e.kind, KmsErrorKind::InvalidArgument);
        assert!(e.to_string().contains("AWS_REGION"), "{e}");
    }

    #[test]
    fn missing_credentials_are_named() {
        let opts = KmsOptions::default();
        let ep = "http://127.0.0.1:9";
        let e = AwsClient::from_vars(ep, Some("us-east-1"), &opts, vars(&[CREDS[1]]))
            .err()
            .unwrap();
        assert_eq!(e.kind, KmsErrorKind::Auth);
        assert!(
            e.to_string().contains("AWS_ACCESS_KEY_ID is not set"),
            "{e}"
        );
        assert!(!e.to_string().contains("very-secret-value"));
        let e = AwsClient::from_vars(ep, Some("us-east-1"), &opts, vars(&[CREDS[0]]))
            .err()
            .unwrap();
        assert!(
            e.to_string().contains("AWS_SECRET_ACCESS_KEY is not set"),
            "{e}"
        );
    }

    #[test]
    fn host_header_matches_the_wire() {
        let opts = KmsOptions::default();
        let c = AwsClient::from_vars(
            "https://kms.us-east-1.amazonaws.com/",
            None,
            &opts,
            vars(&[CREDS[0], CREDS[1], ("AWS_REGION", "us-east-1")]),
        )
        .unwrap();
        assert_eq!(c.host, "kms.us-east-1.amazonaws.com");
        assert_eq!(
            c.url(),
            "aws:https://kms.us-east-1.amazonaws.com?region=us-east-1"
        );
        let c = AwsClient::from_vars(
            "http://127.0.0.1:4566",
            Some("us-east-1"),
            &opts,
            vars(&CREDS),
        )
        .unwrap();
        assert_eq!(c.host, "127.0.0.1:4566");
        let e = AwsClient::from_vars(
            "http://user:pw@127.0.0.1:1",
            Some("us-east-1"),
            &opts,
            vars(&CREDS),
        )
        .err()
        .unwrap();
        assert_eq!(e.kind, KmsErrorKind::InvalidArgument);
        assert!(!e.to_string().contains("pw"), "{e}");
        let e = AwsClient::from_vars("http://127.0.0.1:1", Some("us east/1"), &opts, vars(&CREDS))
            .err()
            .unwrap();
        assert_eq!(e.kind, KmsErrorKind::InvalidArgument);
        for bad in [
            "http://127.0.0.1:1/path",
            "http://127.0.0.1:1?x=1",
            "ftp://x",
        ] {
            let e = AwsClient::from_vars(bad, Some("us-east-1"), &opts, vars(&CREDS))
                .err()
                .unwrap();
            assert_eq!(e.kind, KmsErrorKind::InvalidArgument, "{bad}");
        }
    }

    #[test]
    fn error_codes_map_to_kinds() {
        use KmsErrorKind::*;
        for (code, status, kind) in [
            (Some("NotFoundException"), 400, NotFound),
            (Some("DisabledException"), 400, Disabled),
            (Some("KMSInvalidStateException"), 400, Disabled),
            (Some("InvalidCiphertextException"), 400, InvalidCiphertext),
            (Some("IncorrectKeyException"), 400, InvalidCiphertext),
            (Some("AccessDeniedException"), 400, Auth),
            (Some("UnrecognizedClientException"), 400, Auth),
            (Some("InvalidSignatureException"), 400, Auth),
            (Some("ThrottlingException"), 400, Throttled),
            (Some("KMSInternalException"), 500, Unavailable),
            (Some("DependencyTimeoutException"), 503, Unavailable),
            (Some("AlreadyExistsException"), 400, InvalidArgument),
            (None, 502, Unavailable),
            (None, 400, InvalidResponse),
            (Some("SomethingNew"), 400, InvalidArgument),
        ] {
            assert_eq!(error_kind(code, status), kind, "{code:?} {status}");
        }
    }

    #[test]
    fn error_bodies_are_parsed() {
        let opts = KmsOptions::default();
        let c = AwsClient::from_vars("http://127.0.0.1:9", Some("us-east-1"), &opts, vars(&CREDS))
            .unwrap();
        let e = c.api_error(
            "Decrypt under k",
            400,
            Some("req-1".into()),
            None,
            br#"{"__type":"com.amazonaws.kms#NotFoundException","message":"Key 'k' does not exist"}"#,
        );
        assert_eq!(e.kind, KmsErrorKind::NotFound);
        assert_eq!(e.code.as_deref(), Some("NotFoundException"));
        assert_eq!(e.request_id.as_deref(), Some("req-1"));
        assert_eq!(e.status, Some(400));
        assert_eq!(e.endpoint.as_deref(), Some("http://127.0.0.1:9"));
        assert_eq!(e.message, "Decrypt under k: Key 'k' does not exist");

        let e = c.api_error(
            "Decrypt under k",
            400,
            None,
            Some("ThrottlingException:http://internal.amazon.com/".into()),
            b"<html>busy</html>",
        );
        assert_eq!(e.kind, KmsErrorKind::Throttled);
        assert_eq!(e.code.as_deref(), Some("ThrottlingException"));
        assert!(e.message.contains("<html>busy</html>"), "{}", e.message);
    }
}
