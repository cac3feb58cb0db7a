//! Key providers: where batch data keys are generated and unwrapped.
//!
//! Envelope encryption as the cloud KMS guides describe it: a customer master key (CMK) never
//! leaves the KMS; `GenerateDataKey` returns a fresh data key in the clear and wrapped under the
//! CMK; the wrapped blob is stored beside the data and sent back to `Decrypt` later.
//!
//! One small trait covers every provider (embedded `local`, Alibaba `aliyun`, `aws`). Providers
//! are chosen by URL in exactly one place, [`from_url`]. Admin operations (create keys, aliases,
//! enable/disable) live in the separate [`KmsAdmin`] trait, because AWS users manage keys with
//! their own tools.

pub mod aliyun;
pub mod aws;
pub mod keys;
pub mod keyspec;
pub mod keystore;
pub mod local;
#[cfg(feature = "server")]
pub mod server;

/// The retry policy moved to [`crate::retry`] (shared with the object store); its old path
/// still works.
pub use crate::retry;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// Length of every batch data key, in bytes (AES-256).
pub const DATA_KEY_LEN: usize = 32;

/// Default CMK alias used by the local provider when `--key` is not given.
pub const DEFAULT_ALIAS: &str = "alias/envseal/default";

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

/// The encryption context sent with `GenerateDataKey` and again with `Decrypt`; it binds a
/// wrapped key to one vault and batch. Sorted, so its JSON text is canonical.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptionContext(pub BTreeMap<String, String>);

impl EncryptionContext {
    /// The context envseal uses for a batch key.
    pub fn for_batch(vault_id: &str, batch_id: &str) -> Self {
        let mut m = BTreeMap::new();
        m.insert("envseal:vault".to_string(), vault_id.to_string());
        m.insert("envseal:batch".to_string(), batch_id.to_string());
        EncryptionContext(m)
    }

    /// Canonical JSON object text (`{"k":"v",...}`, keys sorted), as Alibaba expects it.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.0).unwrap_or_else(|_| "{}".to_string())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A data key wrapped by a KMS, as recorded in key files and the manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedKey {
    /// The provider URL this key was wrapped with (`local`, `local:/dir`,
    /// `aliyun:https://kms.cn-hangzhou.aliyuncs.com`, `aws:https://...`). Never holds secrets.
    pub kms: String,
    /// The CMK's real id or ARN as the KMS reported it (never only an alias: aliases move).
    pub key_id: String,
    /// The opaque `CiphertextBlob`, exactly as the KMS returned it (base64 text).
    pub blob: String,
    /// The encryption context the blob is bound to.
    #[serde(default, skip_serializing_if = "EncryptionContext::is_empty")]
    pub context: EncryptionContext,
}

/// What `GenerateDataKey` returns: the key in the clear (zeroizing) and wrapped.
pub struct GeneratedKey {
    pub plaintext: DataKey,
    pub wrapped: WrappedKey,
}

/// The one trait every key provider implements. Calls are blocking; implementations are
/// `Send + Sync` so one provider can serve a whole run.
pub trait KeyProvider: Send + Sync {
    /// The provider URL recorded in [`WrappedKey::kms`] (no credentials in it).
    fn url(&self) -> String;

    /// `GenerateDataKey`: a fresh 32-byte data key under `key` (a CMK id, ARN or alias).
    fn generate_data_key(
        &self,
        key: &str,
        context: &EncryptionContext,
    ) -> Result<GeneratedKey, KmsError>;

    /// `Decrypt`: unwrap a blob this provider (or a compatible one) produced.
    fn decrypt(&self, wrapped: &WrappedKey) -> Result<DataKey, KmsError>;

    /// `Decrypt`, with the id of the CMK that wrapped the blob when the KMS's answer names it
    /// (`KeyId`): `import-legacy` seals under that CMK when no `--key` is given.
    fn decrypt_naming_key(
        &self,
        wrapped: &WrappedKey,
    ) -> Result<(DataKey, Option<String>), KmsError> {
        Ok((self.decrypt(wrapped)?, None))
    }

    /// `Encrypt`: wrap an existing data key under `key` (`rewrap`, extra `--key`s).
    fn encrypt(
        &self,
        key: &str,
        plaintext: &DataKey,
        context: &EncryptionContext,
    ) -> Result<WrappedKey, KmsError>;

    /// `ReEncrypt`: moves a blob this provider made under `key`, keeping its context, without
    /// the data key leaving the KMS (`rewrap` within one KMS). Providers without it say
    /// `Unsupported` and callers fall back to `Decrypt` + `Encrypt`.
    fn re_encrypt(&self, wrapped: &WrappedKey, key: &str) -> Result<WrappedKey, KmsError> {
        let _ = (wrapped, key);
        Err(KmsError::new(
            KmsErrorKind::Unsupported,
            "this provider has no ReEncrypt",
        ))
    }
}

/// Key metadata as Alibaba's `KeyMetadata` object (PascalCase JSON). Printed by `envseal kms`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct KeyMetadata {
    pub key_id: String,
    pub arn: String,
    pub creation_date: String,
    pub creator: String,
    pub description: String,
    pub key_spec: String,
    pub key_usage: String,
    pub key_state: String,
    pub origin: String,
    pub protection_level: String,
    pub primary_key_version: String,
    pub last_rotation_date: String,
    pub automatic_rotation: String,
    pub delete_date: String,
    pub material_expire_time: String,
}

/// An alias entry as Alibaba's `ListAliases` returns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AliasEntry {
    pub alias_name: String,
    pub alias_arn: String,
    pub key_id: String,
}

/// Key management, for providers where envseal may manage keys (`local`, `aliyun`).
pub trait KmsAdmin: Send + Sync {
    fn create_key(&self, description: &str) -> Result<KeyMetadata, KmsError>;
    fn create_alias(&self, alias: &str, key_id: &str) -> Result<(), KmsError>;
    fn describe_key(&self, key: &str) -> Result<KeyMetadata, KmsError>;
    fn list_keys(&self) -> Result<Vec<KeyMetadata>, KmsError>;
    fn list_aliases(&self) -> Result<Vec<AliasEntry>, KmsError>;
    fn enable_key(&self, key_id: &str) -> Result<(), KmsError>;
    fn disable_key(&self, key_id: &str) -> Result<(), KmsError>;
    fn schedule_key_deletion(&self, key_id: &str, pending_days: u32) -> Result<(), KmsError>;
}

/// Broad classes of KMS failure; the CLI's messages and retry policy depend on them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KmsErrorKind {
    /// The CMK or alias does not exist.
    NotFound,
    /// The CMK is disabled or pending deletion.
    Disabled,
    /// Credentials missing, unknown or wrong (signature mismatch), or no permission.
    Auth,
    /// The blob is corrupt, was made by another key, or the encryption context differs.
    InvalidCiphertext,
    /// A bad argument (malformed key id or alias, alias exists, ...).
    InvalidArgument,
    /// Throttled; retryable.
    Throttled,
    /// 5xx or temporary unavailability; retryable.
    Unavailable,
    /// Could not reach the endpoint (connect, DNS, TLS, timeout); retryable.
    Transport,
    /// The KMS answered something we cannot parse.
    InvalidResponse,
    /// The local key store is sealed and the passphrase is missing or wrong.
    Passphrase,
    /// Local I/O on the key store.
    Io,
    /// The operation is not supported by this provider.
    Unsupported,
}

impl KmsErrorKind {
    /// Whether a call failing this way may succeed if repeated.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            KmsErrorKind::Throttled | KmsErrorKind::Unavailable | KmsErrorKind::Transport
        )
    }
}

impl crate::retry::Retryable for KmsError {
    fn is_retryable(&self) -> bool {
        self.kind.is_retryable()
    }
}

/// What a KMS error's code says beyond its [`KmsErrorKind`], where the advice to the user
/// differs. Alibaba and AWS name the same condition differently; this is the one place that
/// knows both spellings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KmsCode {
    KeyNotFound,
    AliasNotFound,
    KeyDisabled,
    PendingDeletion,
    /// The key's state cannot change (it is pending deletion).
    StateChangeRefused,
    AliasExists,
    Other,
}

/// A KMS failure with what the KMS said about it. Never contains key material or secrets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KmsError {
    pub kind: KmsErrorKind,
    /// The KMS's error `Code` (`Forbidden.KeyNotFound`, `NotFoundException`, ...), if any.
    pub code: Option<String>,
    pub message: String,
    pub request_id: Option<String>,
    /// The endpoint (or key store directory) that failed.
    pub endpoint: Option<String>,
    /// HTTP status, when there was one.
    pub status: Option<u16>,
}

impl KmsError {
    pub fn new(kind: KmsErrorKind, message: impl Into<String>) -> Self {
        KmsError {
            kind,
            code: None,
            message: message.into(),
            request_id: None,
            endpoint: None,
            status: None,
        }
    }

    /// The condition this error's code names (see [`KmsCode`]).
    pub fn code_kind(&self) -> KmsCode {
        match self.code.as_deref() {
            Some("Forbidden.KeyNotFound") => KmsCode::KeyNotFound,
            Some("Forbidden.AliasNotFound") => KmsCode::AliasNotFound,
            Some("Rejected.Disabled" | "DisabledException") => KmsCode::KeyDisabled,
            // One Alibaba doc table misspells it; accept both.
            Some("Rejected.PendingDeletion" | "Rejetced.PendingDeletion") => {
                KmsCode::PendingDeletion
            }
            Some("Rejected.StateModifiedFailed") => KmsCode::StateChangeRefused,
            Some("AliasAlreadyExists" | "AlreadyExistsException") => KmsCode::AliasExists,
            _ => match self.kind {
                KmsErrorKind::NotFound => KmsCode::KeyNotFound,
                KmsErrorKind::Disabled => KmsCode::KeyDisabled,
                _ => KmsCode::Other,
            },
        }
    }

    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }

    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into());
        self
    }

    pub fn with_request_id(mut self, id: impl Into<String>) -> Self {
        self.request_id = Some(id.into());
        self
    }

    pub fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }
}

impl fmt::Display for KmsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(code) = &self.code {
            write!(f, "{code}: ")?;
        }
        write!(f, "{}", self.message)?;
        if let Some(status) = self.status {
            write!(f, " (HTTP {status})")?;
        }
        if let Some(id) = &self.request_id {
            write!(f, " [RequestId {id}]")?;
        }
        if let Some(ep) = &self.endpoint {
            write!(f, " at {ep}")?;
        }
        Ok(())
    }
}

impl std::error::Error for KmsError {}

/// Options that apply to every provider built by [`from_url`].
#[derive(Clone, Debug)]
pub struct KmsOptions {
    pub retry: crate::retry::RetryPolicy,
    /// Per-request timeout for HTTP providers.
    pub timeout: std::time::Duration,
    /// Asks the user for the passphrase of a sealed local key store when ENVSEAL_PASSPHRASE is
    /// not set (the CLI injects a terminal prompt; the library never touches the terminal).
    pub passphrase_prompt: Option<fn() -> Option<Zeroizing<String>>>,
    /// A local key store created now is thrown away after use (`bench`): creating it is not
    /// announced with the advice to back it up.
    pub scratch_store: bool,
}

impl Default for KmsOptions {
    fn default() -> Self {
        KmsOptions {
            retry: crate::retry::RetryPolicy::default(),
            timeout: std::time::Duration::from_secs(30),
            passphrase_prompt: None,
            scratch_store: false,
        }
    }
}

/// A parsed provider URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProviderUrl {
    /// `local` (default store) or `local:<DIR>`.
    Local(Option<std::path::PathBuf>),
    /// `aliyun:<http(s)://host[:port]>[?region=...]`
    Aliyun {
        endpoint: String,
        region: Option<String>,
    },
    /// `aws:<http(s)://host[:port]>[?region=...]`
    Aws {
        endpoint: String,
        region: Option<String>,
    },
}

impl ProviderUrl {
    /// Parses `local`, `local:<DIR>`, `aliyun:<URL>`, `aws:<URL>`.
    pub fn parse(s: &str) -> Result<Self, KmsError> {
        let bad = |why: &str| {
            KmsError::new(
                KmsErrorKind::InvalidArgument,
                format!("invalid KMS URL {s:?}: {why} (expected local, local:<DIR>, aliyun:<http(s)://host[:port]>[?region=R] or aws:<http(s)://host[:port]>[?region=R])"),
            )
        };
        if s == "local" {
            return Ok(ProviderUrl::Local(None));
        }
        if let Some(dir) = s.strip_prefix("local:") {
            if dir.is_empty() {
                return Err(bad("empty directory"));
            }
            return Ok(ProviderUrl::Local(Some(dir.into())));
        }
        let (scheme, rest) = s.split_once(':').unwrap_or((s, ""));
        let example = match scheme {
            "aliyun" => "aliyun:https://kms.cn-hangzhou.aliyuncs.com",
            "aws" => "aws:https://kms.us-east-1.amazonaws.com",
            other => {
                return Err(KmsError::new(
                    KmsErrorKind::InvalidArgument,
                    format!("unknown KMS provider {other:?} in {s:?}: the known providers are local, local:<DIR>, aliyun:<http(s)://host[:port]>[?region=R] and aws:<http(s)://host[:port]>[?region=R]"),
                ))
            }
        };
        if !(rest.starts_with("http://") || rest.starts_with("https://")) {
            // The HTTP providers have no default endpoint: the region is part of it.
            return Err(KmsError::new(
                KmsErrorKind::InvalidArgument,
                format!("{s:?}: {scheme}: needs the endpoint URL of the region, e.g. {example}"),
            ));
        }
        let (endpoint, query) = match rest.split_once('?') {
            Some((e, q)) => (e, Some(q)),
            None => (rest, None),
        };
        let mut region = None;
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("region", r)) if !r.is_empty() => region = Some(r.to_string()),
                _ => return Err(bad(&format!("unknown parameter {pair:?}"))),
            }
        }
        let endpoint = endpoint.trim_end_matches('/').to_string();
        if scheme == "aws" {
            Ok(ProviderUrl::Aws { endpoint, region })
        } else {
            Ok(ProviderUrl::Aliyun { endpoint, region })
        }
    }
}

/// Builds the provider a URL names. The one place providers are chosen.
pub fn from_url(url: &str, opts: &KmsOptions) -> Result<Box<dyn KeyProvider>, KmsError> {
    Ok(match ProviderUrl::parse(url)? {
        ProviderUrl::Local(dir) => Box::new(local::LocalProvider::open(dir.as_deref(), opts)?),
        ProviderUrl::Aliyun { endpoint, region } => Box::new(aliyun::AliyunClient::from_env(
            &endpoint,
            region.as_deref(),
            opts,
        )?),
        ProviderUrl::Aws { endpoint, region } => Box::new(aws::AwsClient::from_env(
            &endpoint,
            region.as_deref(),
            opts,
        )?),
    })
}

/// Builds a key-management handle for a URL (`local` and `aliyun` only).
pub fn admin_from_url(url: &str, opts: &KmsOptions) -> Result<Box<dyn KmsAdmin>, KmsError> {
    Ok(match ProviderUrl::parse(url)? {
        ProviderUrl::Local(dir) => Box::new(local::LocalProvider::open(dir.as_deref(), opts)?),
        ProviderUrl::Aliyun { endpoint, region } => Box::new(aliyun::AliyunClient::from_env(
            &endpoint,
            region.as_deref(),
            opts,
        )?),
        ProviderUrl::Aws { .. } => {
            return Err(KmsError::new(
                KmsErrorKind::Unsupported,
                "envseal does not manage AWS KMS keys: create and manage them with the AWS CLI (aws kms create-key, aws kms create-alias) or the console, then pass --key alias/... --kms aws:<endpoint> to encrypt",
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_provider_urls() {
        assert_eq!(
            ProviderUrl::parse("local").unwrap(),
            ProviderUrl::Local(None)
        );
        assert_eq!(
            ProviderUrl::parse("local:/tmp/k").unwrap(),
            ProviderUrl::Local(Some("/tmp/k".into()))
        );
        assert_eq!(
            ProviderUrl::parse("aliyun:http://127.0.0.1:8080/?region=cn-hangzhou").unwrap(),
            ProviderUrl::Aliyun {
                endpoint: "http://127.0.0.1:8080".into(),
                region: Some("cn-hangzhou".into())
            }
        );
        assert_eq!(
            ProviderUrl::parse("aws:https://kms.us-east-1.amazonaws.com").unwrap(),
            ProviderUrl::Aws {
                endpoint: "https://kms.us-east-1.amazonaws.com".into(),
                region: None
            }
        );
        let e = ProviderUrl::parse("gcp:x").unwrap_err();
        assert!(e.message.contains("unknown KMS provider \"gcp\""), "{e}");
        assert!(e.message.contains("aws:<http(s)"), "{e}");
        let e = ProviderUrl::parse("aws:").unwrap_err();
        assert!(
            e.message
                .contains("e.g. aws:https://kms.us-east-1.amazonaws.com"),
            "{e}"
        );
        for bad in [
            "",
            "aliyun:",
            "aws:ftp://x",
            "gcp:https://x",
            "local:",
            "aws:http://x?foo=1",
        ] {
            assert!(ProviderUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn codes_of_both_providers_name_one_condition() {
        let e = |kind, code: &str| KmsError::new(kind, "x").with_code(code);
        use KmsErrorKind::*;
        assert_eq!(
            e(Disabled, "Rejected.Disabled").code_kind(),
            KmsCode::KeyDisabled
        );
        assert_eq!(
            e(Disabled, "DisabledException").code_kind(),
            KmsCode::KeyDisabled
        );
        assert_eq!(
            e(Disabled, "Rejected.PendingDeletion").code_kind(),
            KmsCode::PendingDeletion
        );
        assert_eq!(
            e(NotFound, "Forbidden.AliasNotFound").code_kind(),
            KmsCode::AliasNotFound
        );
        assert_eq!(
            e(NotFound, "NotFoundException").code_kind(),
            KmsCode::KeyNotFound
        );
        assert_eq!(
            e(InvalidArgument, "AlreadyExistsException").code_kind(),
            KmsCode::AliasExists
        );
        assert_eq!(KmsError::new(Auth, "x").code_kind(), KmsCode::Other);
    }

    #[test]
    fn context_json_is_canonical() {
        let c = EncryptionContext::for_batch("v1", "b2");
        assert_eq!(
            c.to_json(),
            r#"{"envseal:batch":"b2","envseal:vault":"v1"}"#
        );
    }
}
