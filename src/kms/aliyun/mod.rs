//! Alibaba Cloud KMS, RPC API 2016-01-20 (see `docs/KMS-WIRE.md`): request signing shared by the
//! client and `envseal kms serve`, and the blocking client provider.

pub mod client;
pub mod sign;

pub use client::AliyunClient;

use super::KmsErrorKind;

/// The API version every request names.
pub const API_VERSION: &str = "2016-01-20";

/// Region used when the provider URL names none.
pub const DEFAULT_REGION: &str = "cn-hangzhou";

/// `YYYY-MM-DDThh:mm:ssZ`, the format of `Timestamp`, `x-acs-date` and every date field.
pub const TIMESTAMP_FORMAT: &[time::format_description::FormatItem<'static>] =
    time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");

/// Formats a UTC time as the API writes it.
pub fn format_timestamp(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    t.format(TIMESTAMP_FORMAT)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// Parses `YYYY-MM-DDThh:mm:ssZ` (UTC).
pub fn parse_timestamp(s: &str) -> Option<time::OffsetDateTime> {
    time::PrimitiveDateTime::parse(s, TIMESTAMP_FORMAT)
        .ok()
        .map(|t| t.assume_utc())
}

/// A random (version 4) UUID, lowercase `8-4-4-4-12` hex, used for nonces and request ids.
pub fn new_uuid() -> String {
    let mut b = [0u8; 16];
    // A failing OS RNG is not recoverable; a zero nonce would only be refused as a replay.
    if getrandom::getrandom(&mut b).is_err() {
        log::warn!("the OS random generator failed; nonce is not random");
    }
    uuid::Builder::from_random_bytes(b)
        .into_uuid()
        .hyphenated()
        .to_string()
}

/// Classifies an Alibaba error `Code` (and HTTP status) for messages and retries.
pub fn kind_for_code(code: &str, status: u16) -> KmsErrorKind {
    match code {
        c if c.starts_with("Throttling") => KmsErrorKind::Throttled,
        "ServiceUnavailableTemporary" | "InternalFailure" | "InternalError" => {
            KmsErrorKind::Unavailable
        }
        "Forbidden.KeyNotFound" | "Forbidden.AliasNotFound" => KmsErrorKind::NotFound,
        "Rejected.Disabled" | "Rejected.PendingDeletion" | "Rejetced.PendingDeletion" => {
            KmsErrorKind::Disabled
        }
        "SignatureDoesNotMatch"
        | "IncompleteSignature"
        | "InvalidAccessKeyId.NotFound"
        | "InvalidAccessKeyId.Inactive"
        | "Forbidden.AccessKey"
        | "Forbidden.NoPermission"
        | "Forbidden.RAM"
        | "InvalidAccessKeySecret"
        | "InvalidTimeStamp.Expired"
        | "SignatureNonceUsed" => KmsErrorKind::Auth,
        "InvalidCiphertext" | "Forbidden.InvalidCiphertext" => KmsErrorKind::InvalidCiphertext,
        _ if status >= 500 => KmsErrorKind::Unavailable,
        _ => KmsErrorKind::InvalidArgument,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip() {
        let t = parse_timestamp("2024-01-01T00:00:00Z").unwrap();
        assert_eq!(t.unix_timestamp(), 1_704_067_200);
        assert_eq!(format_timestamp(t), "2024-01-01T00:00:00Z");
        assert!(parse_timestamp("2024-01-01 00:00:00").is_none());
        assert!(parse_timestamp("2024-01-01T00:00:00+08:00").is_none());
    }

    #[test]
    fn uuids_are_v4_and_distinct() {
        let a = new_uuid();
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"), "{a}");
        assert_eq!(a, a.to_ascii_lowercase());
        assert_eq!(a.matches('-').count(), 4);
        assert_ne!(a, new_uuid());
    }

    #[test]
    fn codes_map_to_kinds() {
        assert_eq!(
            kind_for_code("Throttling.User", 429),
            KmsErrorKind::Throttled
        );
        assert_eq!(kind_for_code("Throttling", 400), KmsErrorKind::Throttled);
        assert_eq!(
            kind_for_code("ServiceUnavailableTemporary", 503),
            KmsErrorKind::Unavailable
        );
        assert_eq!(kind_for_code("Whatever", 502), KmsErrorKind::Unavailable);
        assert_eq!(
            kind_for_code("Forbidden.KeyNotFound", 404),
            KmsErrorKind::NotFound
        );
        assert_eq!(
            kind_for_code("Rejected.Disabled", 409),
            KmsErrorKind::Disabled
        );
        assert_eq!(
            kind_for_code("SignatureDoesNotMatch", 400),
            KmsErrorKind::Auth
        );
        assert_eq!(
            kind_for_code("InvalidParameter", 400),
            KmsErrorKind::InvalidArgument
        );
    }
}
