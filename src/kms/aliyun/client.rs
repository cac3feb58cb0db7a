//! The Alibaba Cloud KMS client: v1-signed POST requests with every parameter in the query
//! (docs/KMS-WIRE.md §8), bounded retries of temporary failures, typed errors.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;
use zeroize::Zeroizing;

use super::sign::{pct, v1_signature, v1_string_to_sign};
use super::{format_timestamp, kind_for_code, new_uuid, API_VERSION, DEFAULT_REGION};
use crate::kms::{
    AliasEntry, DataKey, EncryptionContext, GeneratedKey, KeyMetadata, KeyProvider, KmsAdmin,
    KmsError, KmsErrorKind, KmsOptions, WrappedKey, DATA_KEY_LEN,
};
use crate::retry::RetryPolicy;

/// Environment variables holding the client's credentials.
pub const ENV_ACCESS_KEY_ID: &str = "ALIBABA_CLOUD_ACCESS_KEY_ID";
pub const ENV_ACCESS_KEY_SECRET: &str = "ALIBABA_CLOUD_ACCESS_KEY_SECRET";

/// Page size for ListKeys / ListAliases (the API's maximum).
const PAGE_SIZE: usize = 100;

/// A client for one Alibaba KMS endpoint (the real service or `envseal kms serve`).
pub struct AliyunClient {
    /// `http(s)://host[:port]`, no trailing slash.
    endpoint: String,
    /// The region the user named, if any (kept for `url()`).
    region: Option<String>,
    access_key_id: String,
    secret: Zeroizing<String>,
    http: reqwest::blocking::Client,
    retry: RetryPolicy,
}

impl AliyunClient {
    /// A client whose credentials come from `ALIBABA_CLOUD_ACCESS_KEY_ID` and
    /// `ALIBABA_CLOUD_ACCESS_KEY_SECRET`.
    pub fn from_env(
        endpoint: &str,
        region: Option<&str>,
        opts: &KmsOptions,
    ) -> Result<Self, KmsError> {
        let missing = |name: &str| {
            KmsError::new(
                KmsErrorKind::Auth,
                format!("{name} is not set; Alibaba Cloud KMS needs {ENV_ACCESS_KEY_ID} and {ENV_ACCESS_KEY_SECRET}"),
            )
            .with_endpoint(endpoint)
        };
        let id = std::env::var(ENV_ACCESS_KEY_ID)
            .ok()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| missing(ENV_ACCESS_KEY_ID))?;
        let secret = Zeroizing::new(
            std::env::var(ENV_ACCESS_KEY_SECRET)
                .ok()
                .filter(|v| !v.is_empty())
                .ok_or_else(|| missing(ENV_ACCESS_KEY_SECRET))?,
        );
        Self::new(endpoint, region, &id, secret, opts)
    }

    /// A client with explicit credentials.
    pub fn new(
        endpoint: &str,
        region: Option<&str>,
        access_key_id: &str,
        secret: Zeroizing<String>,
        opts: &KmsOptions,
    ) -> Result<Self, KmsError> {
        let endpoint = endpoint.trim_end_matches('/').to_string();
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(KmsError::new(
                KmsErrorKind::InvalidArgument,
                "the Alibaba KMS endpoint must start with http:// or https://",
            )
            .with_endpoint(endpoint));
        }
        let builder = reqwest::blocking::Client::builder()
            .timeout(opts.timeout)
            .connect_timeout(opts.timeout.min(std::time::Duration::from_secs(10)))
            .use_rustls_tls();
        let http = crate::limits::with_sigpipe_blocked(|| builder.build()).map_err(|e| {
            KmsError::new(
                KmsErrorKind::Transport,
                format!("cannot build the HTTP client: {e}"),
            )
            .with_endpoint(&endpoint)
        })?;
        Ok(AliyunClient {
            endpoint,
            region: region.map(str::to_string),
            access_key_id: access_key_id.to_string(),
            secret,
            http,
            retry: opts.retry.clone(),
        })
    }

    /// The endpoint this client talks to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn region(&self) -> &str {
        self.region.as_deref().unwrap_or(DEFAULT_REGION)
    }

    /// Calls `action` with `params` (retrying temporary failures) and parses the JSON reply.
    pub fn call<T: DeserializeOwned>(
        &self,
        action: &str,
        params: &[(&str, &str)],
    ) -> Result<T, KmsError> {
        let body = self
            .retry
            .run(&format!("{action} at {}", self.endpoint), || {
                self.attempt(action, params)
            })?;
        serde_json::from_slice(&body).map_err(|e| {
            KmsError::new(
                KmsErrorKind::InvalidResponse,
                format!("cannot parse the {action} response: {e}"),
            )
            .with_endpoint(&self.endpoint)
        })
    }

    /// One signed request. A fresh nonce and timestamp every time, so a retry is never a replay.
    fn attempt(
        &self,
        action: &str,
        params: &[(&str, &str)],
    ) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        let timestamp = format_timestamp(time::OffsetDateTime::now_utc());
        let nonce = new_uuid();
        let mut all: Vec<(String, String)> = vec![
            ("Action".into(), action.into()),
            ("Version".into(), API_VERSION.into()),
            ("Format".into(), "JSON".into()),
            ("AccessKeyId".into(), self.access_key_id.clone()),
            ("SignatureMethod".into(), "HMAC-SHA1".into()),
            ("SignatureVersion".into(), "1.0".into()),
            ("SignatureNonce".into(), nonce),
            ("Timestamp".into(), timestamp),
            ("RegionId".into(), self.region().into()),
        ];
        all.extend(params.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let signature = v1_signature(&self.secret, &v1_string_to_sign("POST", &all));
        // The wire text uses the same encoding as the canonical text (§8); the query may hold
        // a plaintext (Encrypt), so it is zeroized and never logged.
        let mut query = Zeroizing::new(String::new());
        for (k, v) in all
            .iter()
            .chain([("Signature".to_string(), signature)].iter())
        {
            if !query.is_empty() {
                query.push('&');
            }
            query.push_str(&pct(k));
            query.push('=');
            query.push_str(&pct(v));
        }
        let url = Zeroizing::new(format!("{}/?{}", self.endpoint, query.as_str()));
        log::debug!("{action}: POST {}", self.endpoint);

        let resp = self
            .http
            .post(url.as_str())
            .header("x-acs-action", action)
            .header("x-acs-version", API_VERSION)
            .header("accept", "application/json")
            .send()
            .map_err(|e| self.transport_error(action, e))?;
        let status = resp.status().as_u16();
        // Into a Vec without a copy when possible, so the zeroized buffer is the only one.
        let body = Zeroizing::new(Vec::from(
            resp.bytes().map_err(|e| self.transport_error(action, e))?,
        ));
        if (200..300).contains(&status) {
            return Ok(body);
        }
        Err(self.api_error(action, status, &body))
    }

    fn transport_error(&self, action: &str, e: reqwest::Error) -> KmsError {
        // Without the URL: its query may hold a plaintext.
        let e = e.without_url();
        let what = if e.is_timeout() {
            "timed out"
        } else if e.is_connect() {
            "cannot connect"
        } else {
            "request failed"
        };
        KmsError::new(
            KmsErrorKind::Transport,
            format!("{action}: {what}: {}", crate::error::error_chain(&e)),
        )
        .with_endpoint(&self.endpoint)
    }

    /// Turns a non-2xx reply into a typed error from its JSON `Code`/`Message`/`RequestId`.
    fn api_error(&self, action: &str, status: u16, body: &[u8]) -> KmsError {
        let parsed: Option<Value> = serde_json::from_slice(body).ok();
        let field = |upper: &str, lower: &str| {
            parsed.as_ref().and_then(|v| {
                v.get(upper)
                    .or_else(|| v.get(lower))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
        };
        let code = field("Code", "code");
        let message = field("Message", "message");
        let request_id = field("RequestId", "requestId");
        let mut err = match &code {
            // The reply quotes the whole string-to-sign (~900 characters) in which the cause
            // hides: say it plainly, keep the quote for -v.
            Some(code) if code == "SignatureDoesNotMatch" => {
                log::info!(
                    "{action}: the KMS answered: {}",
                    message.as_deref().unwrap_or_default()
                );
                KmsError::new(
                    kind_for_code(code, status),
                    format!("{action}: wrong AccessKey secret: the KMS could not verify the request's signature (-v shows its answer)"),
                )
                .with_code(code)
            }
            Some(code) => KmsError::new(
                kind_for_code(code, status),
                format!("{action}: {}", message.unwrap_or_default()),
            )
            .with_code(code),
            None => {
                let kind = if status >= 500 {
                    KmsErrorKind::Unavailable
                } else {
                    KmsErrorKind::InvalidResponse
                };
                let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
                KmsError::new(kind, format!("{action}: unexpected reply: {text}"))
            }
        };
        if let Some(id) = request_id {
            err = err.with_request_id(id);
        }
        err.with_status(status).with_endpoint(&self.endpoint)
    }

    /// `ReEncrypt`: moves a wrapped key under `destination_key` (and a new context) without
    /// the plaintext leaving the KMS.
    pub fn re_encrypt(
        &self,
        wrapped: &WrappedKey,
        destination_key: &str,
        destination_context: &EncryptionContext,
    ) -> Result<WrappedKey, KmsError> {
        let source_ctx = wrapped.context.to_json();
        let dest_ctx = destination_context.to_json();
        let mut params = vec![
            ("CiphertextBlob", wrapped.blob.as_str()),
            ("DestinationKeyId", destination_key),
        ];
        if !wrapped.context.is_empty() {
            params.push(("SourceEncryptionContext", &source_ctx));
        }
        if !destination_context.is_empty() {
            params.push(("DestinationEncryptionContext", &dest_ctx));
        }
        let r: SealedResponse = self.call("ReEncrypt", &params).map_err(ciphertext_error)?;
        Ok(WrappedKey {
            kms: self.url(),
            key_id: r.key_id,
            blob: r.ciphertext_blob,
            context: destination_context.clone(),
        })
    }

    fn metadata(&self, action: &str, params: &[(&str, &str)]) -> Result<KeyMetadata, KmsError> {
        let r: MetadataResponse = self.call(action, params)?;
        metadata_from_json(r.key_metadata).map_err(|e| {
            KmsError::new(
                KmsErrorKind::InvalidResponse,
                format!("{action}: bad KeyMetadata: {e}"),
            )
            .with_endpoint(&self.endpoint)
        })
    }

    /// Fetches every page of a list action; `items` extracts one page's entries.
    fn all_pages<T>(
        &self,
        action: &str,
        items: impl Fn(&Value) -> Vec<T>,
    ) -> Result<Vec<T>, KmsError> {
        let mut out = Vec::new();
        let page_size = PAGE_SIZE.to_string();
        for page in 1.. {
            let page_number = page.to_string();
            let v: Value = self.call(
                action,
                &[("PageNumber", &page_number), ("PageSize", &page_size)],
            )?;
            let batch = items(&v);
            let total = v.get("TotalCount").and_then(Value::as_u64).unwrap_or(0) as usize;
            let got = batch.len();
            out.extend(batch);
            if got == 0 || out.len() >= total {
                break;
            }
        }
        Ok(out)
    }
}

/// Decrypt-side failures that are about the blob or its context. The service reports a
/// tampered blob or a wrong context as `InvalidParameter` on `CiphertextBlob` (§9).
fn ciphertext_error(e: KmsError) -> KmsError {
    if e.kind == KmsErrorKind::InvalidArgument
        && (e.message.contains("CiphertextBlob") || e.message.contains("EncryptionContext"))
    {
        KmsError {
            kind: KmsErrorKind::InvalidCiphertext,
            ..e
        }
    } else {
        e
    }
}

/// Fills fields a KMS left out with empty strings (older or newer services differ).
fn metadata_from_json(v: Value) -> Result<KeyMetadata, serde_json::Error> {
    let mut merged = serde_json::to_value(KeyMetadata::default())?;
    if let (Some(base), Value::Object(got)) = (merged.as_object_mut(), v) {
        for (k, val) in got {
            if base.contains_key(&k) && val.is_string() {
                base.insert(k, val);
            }
        }
    }
    serde_json::from_value(merged)
}

fn decode_data_key(plaintext: &str) -> Result<DataKey, KmsError> {
    let bytes = Zeroizing::new(B64.decode(plaintext.trim()).map_err(|_| {
        KmsError::new(
            KmsErrorKind::InvalidResponse,
            "the KMS returned a Plaintext that is not base64",
        )
    })?);
    DataKey::from_bytes(&bytes)
}

/// Moves a secret string straight into a zeroizing wrapper.
fn zeroizing_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Zeroizing<String>, D::Error> {
    String::deserialize(d).map(Zeroizing::new)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DataKeyResponse {
    key_id: String,
    #[serde(deserialize_with = "zeroizing_string")]
    plaintext: Zeroizing<String>,
    ciphertext_blob: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SealedResponse {
    key_id: String,
    ciphertext_blob: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PlaintextResponse {
    #[serde(deserialize_with = "zeroizing_string")]
    plaintext: Zeroizing<String>,
    /// The CMK that wrapped the blob (Decrypt names it).
    #[serde(default)]
    key_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct MetadataResponse {
    key_metadata: Value,
}

impl KeyProvider for AliyunClient {
    fn url(&self) -> String {
        match &self.region {
            Some(r) => format!("aliyun:{}?region={r}", self.endpoint),
            None => format!("aliyun:{}", self.endpoint),
        }
    }

    fn generate_data_key(
        &self,
        key: &str,
        context: &EncryptionContext,
    ) -> Result<GeneratedKey, KmsError> {
        let ctx = context.to_json();
        let n = DATA_KEY_LEN.to_string();
        let mut params = vec![("KeyId", key), ("NumberOfBytes", n.as_str())];
        if !context.is_empty() {
            params.push(("EncryptionContext", &ctx));
        }
        let r: DataKeyResponse = self.call("GenerateDataKey", &params)?;
        let plaintext =
            decode_data_key(&r.plaintext).map_err(|e| e.with_endpoint(&self.endpoint))?;
        Ok(GeneratedKey {
            plaintext,
            wrapped: WrappedKey {
                kms: self.url(),
                key_id: r.key_id,
                blob: r.ciphertext_blob,
                context: context.clone(),
            },
        })
    }

    fn decrypt(&self, wrapped: &WrappedKey) -> Result<DataKey, KmsError> {
        self.decrypt_naming_key(wrapped).map(|(k, _)| k)
    }

    fn decrypt_naming_key(
        &self,
        wrapped: &WrappedKey,
    ) -> Result<(DataKey, Option<String>), KmsError> {
        let ctx = wrapped.context.to_json();
        let mut params = vec![("CiphertextBlob", wrapped.blob.as_str())];
        if !wrapped.context.is_empty() {
            params.push(("EncryptionContext", &ctx));
        }
        let r: PlaintextResponse = self.call("Decrypt", &params).map_err(ciphertext_error)?;
        let key = decode_data_key(&r.plaintext).map_err(|e| e.with_endpoint(&self.endpoint))?;
        Ok((key, r.key_id.filter(|k| !k.is_empty())))
    }

    fn encrypt(
        &self,
        key: &str,
        plaintext: &DataKey,
        context: &EncryptionContext,
    ) -> Result<WrappedKey, KmsError> {
        // Base64 text, like GenerateDataKey's blobs, so Decrypt returns the same form.
        let text = Zeroizing::new(B64.encode(plaintext.expose()));
        let ctx = context.to_json();
        let mut params = vec![("KeyId", key), ("Plaintext", text.as_str())];
        if !context.is_empty() {
            params.push(("EncryptionContext", &ctx));
        }
        let r: SealedResponse = self.call("Encrypt", &params)?;
        Ok(WrappedKey {
            kms: self.url(),
            key_id: r.key_id,
            blob: r.ciphertext_blob,
            context: context.clone(),
        })
    }

    fn re_encrypt(&self, wrapped: &WrappedKey, key: &str) -> Result<WrappedKey, KmsError> {
        AliyunClient::re_encrypt(self, wrapped, key, &wrapped.context)
    }
}

impl KmsAdmin for AliyunClient {
    fn create_key(&self, description: &str) -> Result<KeyMetadata, KmsError> {
        self.metadata("CreateKey", &[("Description", description)])
    }

    fn create_alias(&self, alias: &str, key_id: &str) -> Result<(), KmsError> {
        self.call::<Value>("CreateAlias", &[("AliasName", alias), ("KeyId", key_id)])
            .map(drop)
    }

    fn describe_key(&self, key: &str) -> Result<KeyMetadata, KmsError> {
        self.metadata("DescribeKey", &[("KeyId", key)])
    }

    /// ListKeys gives ids only; each key is described for its full metadata.
    fn list_keys(&self) -> Result<Vec<KeyMetadata>, KmsError> {
        let ids = self.all_pages("ListKeys", |v| {
            v.pointer("/Keys/Key")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|k| k.get("KeyId").and_then(Value::as_str))
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()
        })?;
        ids.iter().map(|id| self.describe_key(id)).collect()
    }

    fn list_aliases(&self) -> Result<Vec<AliasEntry>, KmsError> {
        self.all_pages("ListAliases", |v| {
            v.pointer("/Aliases/Alias")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|e| serde_json::from_value(e.clone()).ok())
                        .collect()
                })
                .unwrap_or_default()
        })
    }

    fn enable_key(&self, key_id: &str) -> Result<(), KmsError> {
        self.call::<Value>("EnableKey", &[("KeyId", key_id)])
            .map(drop)
    }

    fn disable_key(&self, key_id: &str) -> Result<(), KmsError> {
        self.call::<Value>("DisableKey", &[("KeyId", key_id)])
            .map(drop)
    }

    fn schedule_key_deletion(&self, key_id: &str, pending_days: u32) -> Result<(), KmsError> {
        let days = pending_days.to_string();
        self.call::<Value>(
            "ScheduleKeyDeletion",
            &[("KeyId", key_id), ("PendingWindowInDays", &days)],
        )
        .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_tolerates_missing_and_extra_fields() {
        let v: Value = serde_json::json!({
            "KeyId": "k1", "KeyState": "Enabled", "DeletionProtection": "Disabled", "Extra": 1
        });
        let m = metadata_from_json(v).unwrap();
        assert_eq!(m.key_id, "k1");
        assert_eq!(m.key_state, "Enabled");
        assert_eq!(m.material_expire_time, "");
    }

    #[test]
    fn url_names_endpoint_and_region() {
        let opts = KmsOptions::default();
        let c = AliyunClient::new(
            "http://127.0.0.1:9/",
            Some("cn-shanghai"),
            "id",
            Zeroizing::new("s".into()),
            &opts,
        )
        .unwrap();
        assert_eq!(c.url(), "aliyun:http://127.0.0.1:9?region=cn-shanghai");
        let c = AliyunClient::new(
            "https://kms.x",
            None,
            "id",
            Zeroizing::new("s".into()),
            &opts,
        )
        .unwrap();
        assert_eq!(c.url(), "aliyun:https://kms.x");
        assert!(AliyunClient::new("kms.x", None, "id", Zeroizing::new("s".into()), &opts).is_err());
    }

    #[test]
    fn error_replies_are_typed() {
        let c = AliyunClient::new(
            "http://127.0.0.1:9",
            None,
            "id",
            Zeroizing::new("s".into()),
            &KmsOptions::default(),
        )
        .unwrap();
        let e = c.api_error(
            "Decrypt",
            400,
            br#"{"RequestId":"r1","Code":"InvalidParameter","Message":"The specified parameter \"CiphertextBlob\" is not valid."}"#,
        );
        assert_eq!(e.kind, KmsErrorKind::InvalidArgument);
        assert_eq!(e.code.as_deref(), Some("InvalidParameter"));
        assert_eq!(e.request_id.as_deref(), Some("r1"));
        assert_eq!(e.status, Some(400));
        assert_eq!(e.endpoint.as_deref(), Some("http://127.0.0.1:9"));
        assert_eq!(ciphertext_error(e).kind, KmsErrorKind::InvalidCiphertext);

        let e = c.api_error("Decrypt", 502, b"<html>bad gateway</html>");
        assert_eq!(e.kind, KmsErrorKind::Unavailable);
        assert!(e.code.is_none());
        let e = c.api_error("Decrypt", 400, br#"{"Code":"Throttling","Message":"x"}"#);
        assert!(e.kind.is_retryable());
    }
}
