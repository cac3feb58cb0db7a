//! PLACEHOLDER: the embedded local provider (replaced by the key-store work).
use std::path::Path;

use super::*;

pub struct LocalProvider;

impl LocalProvider {
    pub fn open(_dir: Option<&Path>, _opts: &KmsOptions) -> Result<Self, KmsError> {
        Err(KmsError::new(
            KmsErrorKind::Unsupported,
            "local provider not built yet",
        ))
    }
}

impl KeyProvider for LocalProvider {
    fn url(&self) -> String {
        "local".into()
    }
    fn generate_data_key(&self, _: &str, _: &EncryptionContext) -> Result<GeneratedKey, KmsError> {
        Err(KmsError::new(KmsErrorKind::Unsupported, "placeholder"))
    }
    fn decrypt(&self, _: &WrappedKey) -> Result<DataKey, KmsError> {
        Err(KmsError::new(KmsErrorKind::Unsupported, "placeholder"))
    }
    fn encrypt(&self, _: &str, _: &DataKey, _: &EncryptionContext) -> Result<WrappedKey, KmsError> {
        Err(KmsError::new(KmsErrorKind::Unsupported, "placeholder"))
    }
}

impl KmsAdmin for LocalProvider {
    fn create_key(&self, _: &str) -> Result<KeyMetadata, KmsError> {
        Err(KmsError::new(KmsErrorKind::Unsupported, "placeholder"))
    }
    fn create_alias(&self, _: &str, _: &str) -> Result<(), KmsError> {
        Err(KmsError::new(KmsErrorKind::Unsupported, "placeholder"))
    }
    fn describe_key(&self, _: &str) -> Result<KeyMetadata, KmsError> {
        Err(KmsError::new(KmsErrorKind::Unsupported, "placeholder"))
    }
    fn list_keys(&self) -> Result<Vec<KeyMetadata>, KmsError> {
        Err(KmsError::new(KmsErrorKind::Unsupported, "placeholder"))
    }
    fn list_aliases(&self) -> Result<Vec<AliasEntry>, KmsError> {
        Err(KmsError::new(KmsErrorKind::Unsupported, "placeholder"))
    }
    fn enable_key(&self, _: &str) -> Result<(), KmsError> {
        Err(KmsError::new(KmsErrorKind::Unsupported, "placeholder"))
    }
    fn disable_key(&self, _: &str) -> Result<(), KmsError> {
        Err(KmsError::new(KmsErrorKind::Unsupported, "placeholder"))
    }
    fn schedule_key_deletion(&self, _: &str, _: u32) -> Result<(), KmsError> {
        Err(KmsError::new(KmsErrorKind::Unsupported, "placeholder"))
    }
}
