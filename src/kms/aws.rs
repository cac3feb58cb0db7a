//! PLACEHOLDER: the AWS KMS client (replaced by the aws work).

use super::*;

pub struct AwsClient;

impl AwsClient {
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

impl KeyProvider for AwsClient {
    fn url(&self) -> String {
        "aws:".into()
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
