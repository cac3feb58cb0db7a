//! PLACEHOLDER: the Alibaba Cloud KMS client (replaced by the aliyun work).

use super::*;

pub struct AliyunClient;

impl AliyunClient {
    pub fn from_env(
        _endpoint: &str,
        _region: Option<&str>,
        _opts: &KmsOptions,
    ) -> Result<Self, KmsError> {
        Err(KmsError::new(
            KmsErrorKind::Unsupported,
            "local provider not built yet",
        ))
    }
}

impl KeyProvider for AliyunClient {
    fn url(&self) -> String {
        "aliyun:".into()
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

impl KmsAdmin for AliyunClient {
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
