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

// Value types the format, the crypto and the errors share with the providers live below
// them (docs/ARCHITECTURE.md); their paths here still work.
pub use crate::crypto::{DataKey, DATA_KEY_LEN};
pub use crate::error::{KmsCode, KmsError, KmsErrorKind};
pub use crate::format::wrap::{EncryptionContext, WrappedKey};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// Default CMK alias used by the local provider when `--key` is not given.
pub const DEFAULT_ALIAS: &str = "alias/envseal/default";

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
