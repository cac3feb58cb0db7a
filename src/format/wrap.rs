//! The wrapped data key as key files and `wrap` records hold it (docs/FORMAT.md §5), and the
//! encryption context that binds it to one vault and batch.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

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
