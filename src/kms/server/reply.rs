//! Error replies of the Alibaba gateway (docs/KMS-WIRE.md §6): HTTP status, `Code`, `Message`.

use crate::kms::{KmsError, KmsErrorKind};

/// An error reply. Messages never hold secrets, plaintexts or blobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: String,
    pub message: String,
    /// What really failed, for the server's log only (never sent to the client).
    pub detail: Option<String>,
}

impl ApiError {
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code: code.to_string(),
            message: message.into(),
            detail: None,
        }
    }

    pub fn missing(name: &str) -> Self {
        Self::new(
            400,
            "MissingParameter",
            format!("The parameter \"{name}\" is needed but not provided."),
        )
    }

    pub fn invalid(name: &str) -> Self {
        Self::new(
            400,
            "InvalidParameter",
            format!("The specified parameter \"{name}\" is not valid."),
        )
    }

    /// The old SDK splits this message at `:` and compares part 1 with its own string to
    /// sign (§7.1), so the tail must stay `...is:<StringToSign>`.
    pub fn signature_mismatch(string_to_sign: &str) -> Self {
        Self::new(
            400,
            "SignatureDoesNotMatch",
            format!("Specified signature is not matched with our calculation. server string to sign is:{string_to_sign}"),
        )
    }

    pub fn incomplete_signature(why: &str) -> Self {
        Self::new(
            400,
            "IncompleteSignature",
            format!("The request signature does not conform to Aliyun standards. {why}"),
        )
    }

    pub fn internal() -> Self {
        Self::new(
            500,
            "InternalFailure",
            "The request processing has failed due to some unknown error.",
        )
    }

    /// Maps a key store error to the documented reply; unknown failures become a 500 whose
    /// message says nothing about the store (the server logs the details).
    pub fn from_kms(e: &KmsError) -> Self {
        let status_for = |code: &str| match code {
            "Forbidden.KeyNotFound" | "Forbidden.AliasNotFound" => Some(404),
            c if c.starts_with("Rejected.") => Some(409),
            "InvalidParameter" | "AliasAlreadyExists" | "MissingParameter" => Some(400),
            _ => None,
        };
        if let Some(code) = &e.code {
            if let Some(status) = status_for(code) {
                return Self::new(status, code, e.message.clone());
            }
        }
        match e.kind {
            KmsErrorKind::NotFound => Self::new(
                404,
                "Forbidden.KeyNotFound",
                "The specified Key is not found.",
            ),
            KmsErrorKind::Disabled => Self::new(
                409,
                "Rejected.Disabled",
                "The request was rejected because the key state is Disabled.",
            ),
            KmsErrorKind::InvalidCiphertext => Self::invalid("CiphertextBlob"),
            KmsErrorKind::InvalidArgument => Self::new(400, "InvalidParameter", e.message.clone()),
            _ => ApiError {
                detail: Some(e.to_string()),
                ..Self::internal()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_store_errors_map_to_documented_statuses() {
        let e = KmsError::new(KmsErrorKind::NotFound, "The specified Key is not found.")
            .with_code("Forbidden.KeyNotFound");
        assert_eq!(ApiError::from_kms(&e).status, 404);
        let e = KmsError::new(KmsErrorKind::Disabled, "x").with_code("Rejected.PendingDeletion");
        let r = ApiError::from_kms(&e);
        assert_eq!(
            (r.status, r.code.as_str()),
            (409, "Rejected.PendingDeletion")
        );
        let e = KmsError::new(KmsErrorKind::InvalidArgument, "Keystate modified failed.")
            .with_code("Rejected.StateModifiedFailed");
        assert_eq!(ApiError::from_kms(&e).status, 409);
        let e = KmsError::new(KmsErrorKind::InvalidCiphertext, "bad");
        let r = ApiError::from_kms(&e);
        assert_eq!((r.status, r.code.as_str()), (400, "InvalidParameter"));
        let e = KmsError::new(KmsErrorKind::Io, "disk /secret/path failed");
        let r = ApiError::from_kms(&e);
        assert_eq!(r.status, 500);
        assert!(!r.message.contains("/secret/path"));
    }

    #[test]
    fn signature_message_keeps_the_sdk_split_form() {
        let r = ApiError::signature_mismatch("POST&%2F&A%3Db");
        assert_eq!(r.message.split(':').nth(1), Some("POST&%2F&A%3Db"));
    }
}
