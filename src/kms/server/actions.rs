//! The KMS actions of `kms serve` (docs/KMS-WIRE.md §5) on a [`KeyStore`]. Blocking: the server
//! runs them on tokio's blocking pool.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::Serialize;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use super::auth::Incoming;
use super::reply::ApiError;
use crate::kms::keystore::{self, KeyStore};
use crate::kms::{EncryptionContext, KmsError};

/// A success reply: the JSON body (zeroized after sending, it may hold a plaintext) and the
/// key id to log.
pub struct Success {
    pub body: Zeroizing<Vec<u8>>,
    pub key_id: Option<String>,
}

/// Runs one authenticated action.
pub fn dispatch(
    store: &KeyStore,
    action: &str,
    req: &Incoming,
    request_id: &str,
) -> Result<Success, ApiError> {
    let kms = |e: KmsError| ApiError::from_kms(&e);
    let reply = |mut v: Value, key_id: Option<String>| {
        if let Value::Object(m) = &mut v {
            m.insert("RequestId".into(), Value::String(request_id.into()));
        }
        to_body(&v, key_id)
    };
    match action {
        "CreateKey" => {
            check_create_key_options(req)?;
            let meta = store
                .create_key(req.param("Description").unwrap_or(""))
                .map_err(kms)?;
            let id = meta.key_id.clone();
            reply(json!({ "KeyMetadata": meta }), Some(id))
        }
        "CreateAlias" => {
            let (alias, key) = (required(req, "AliasName")?, required(req, "KeyId")?);
            store.create_alias(alias, key).map_err(kms)?;
            reply(json!({}), Some(key.to_string()))
        }
        "DescribeKey" => {
            let meta = store.describe_key(required(req, "KeyId")?).map_err(kms)?;
            let id = meta.key_id.clone();
            let mut v = serde_json::to_value(&meta).map_err(|_| ApiError::internal())?;
            if let Value::Object(m) = &mut v {
                // Deletion protection is not implemented; report it off, as new keys have it.
                m.insert("DeletionProtection".into(), "Disabled".into());
                m.insert("DeletionProtectionDescription".into(), "".into());
            }
            reply(json!({ "KeyMetadata": v }), Some(id))
        }
        "ListKeys" => {
            let (page, size) = paging(req)?;
            let keys = store.list_keys().map_err(kms)?;
            let total = keys.len();
            let items: Vec<Value> = page_of(keys, page, size)
                .map(|k| json!({ "KeyId": k.key_id, "KeyArn": k.arn }))
                .collect();
            reply(
                json!({ "Keys": { "Key": items }, "TotalCount": total, "PageNumber": page, "PageSize": size }),
                None,
            )
        }
        "ListAliases" => {
            let (page, size) = paging(req)?;
            let aliases = store.list_aliases().map_err(kms)?;
            let total = aliases.len();
            let items: Vec<_> = page_of(aliases, page, size).collect();
            reply(
                json!({ "Aliases": { "Alias": items }, "TotalCount": total, "PageNumber": page, "PageSize": size }),
                None,
            )
        }
        "GenerateDataKey" | "GenerateDataKeyWithoutPlaintext" => {
            let key = required(req, "KeyId")?;
            let n = data_key_len(req)?;
            let ctx = context(req, "EncryptionContext")?;
            let (raw, sealed) = store.generate_data_key(key, n, &ctx).map_err(kms)?;
            let plaintext =
                (action == "GenerateDataKey").then(|| Zeroizing::new(B64.encode(&raw[..])));
            to_body(
                &DataKeyReply {
                    key_id: &sealed.key_id,
                    key_version_id: &sealed.key_version_id,
                    plaintext: plaintext.as_deref().map(String::as_str),
                    ciphertext_blob: &keystore::encode_blob(&sealed.blob),
                    request_id,
                },
                Some(sealed.key_id.clone()),
            )
        }
        "Encrypt" => {
            let key = required(req, "KeyId")?;
            let plaintext = required(req, "Plaintext")?;
            if plaintext.len() > keystore::MAX_PLAINTEXT_LEN {
                return Err(ApiError::invalid("Plaintext"));
            }
            let ctx = context(req, "EncryptionContext")?;
            let sealed = store
                .encrypt(key, plaintext.as_bytes(), &ctx)
                .map_err(kms)?;
            reply(
                json!({ "KeyId": sealed.key_id, "KeyVersionId": sealed.key_version_id, "CiphertextBlob": keystore::encode_blob(&sealed.blob) }),
                Some(sealed.key_id.clone()),
            )
        }
        "Decrypt" => {
            let blob = blob(req, "CiphertextBlob")?;
            let ctx = context(req, "EncryptionContext")?;
            let opened = store.decrypt(&blob, &ctx).map_err(kms)?;
            // Encrypt only takes text and data keys are base64 text, so this is UTF-8.
            let text = std::str::from_utf8(&opened.plaintext).map_err(|_| ApiError::internal())?;
            to_body(
                &DecryptReply {
                    key_id: &opened.key_id,
                    key_version_id: &opened.key_version_id,
                    plaintext: text,
                    request_id,
                },
                Some(opened.key_id.clone()),
            )
        }
        "ReEncrypt" => {
            let blob = blob(req, "CiphertextBlob")?;
            let dest = required(req, "DestinationKeyId")?;
            let src_ctx = context(req, "SourceEncryptionContext")?;
            let dest_ctx = context(req, "DestinationEncryptionContext")?;
            let opened = store.decrypt(&blob, &src_ctx).map_err(kms)?;
            let sealed = store
                .encrypt(dest, &opened.plaintext, &dest_ctx)
                .map_err(kms)?;
            reply(
                json!({
                    "KeyId": sealed.key_id, "KeyVersionId": sealed.key_version_id,
                    "CiphertextBlob": keystore::encode_blob(&sealed.blob),
                    "SourceKeyId": opened.key_id, "SourceKeyVersionId": opened.key_version_id,
                }),
                Some(sealed.key_id.clone()),
            )
        }
        "EnableKey" | "DisableKey" => {
            let key = required(req, "KeyId")?;
            if action == "EnableKey" {
                store.enable_key(key).map_err(kms)?;
            } else {
                store.disable_key(key).map_err(kms)?;
            }
            reply(json!({}), Some(key.to_string()))
        }
        "ScheduleKeyDeletion" => {
            let key = required(req, "KeyId")?;
            let days: u32 = required(req, "PendingWindowInDays")?
                .trim()
                .parse()
                .map_err(|_| ApiError::invalid("PendingWindowInDays"))?;
            store.schedule_key_deletion(key, days).map_err(kms)?;
            reply(json!({}), Some(key.to_string()))
        }
        _ => Err(ApiError::new(
            404,
            "InvalidAction.NotFound",
            "Specified api is not found, please check your url and method.",
        )),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DataKeyReply<'a> {
    key_id: &'a str,
    key_version_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    plaintext: Option<&'a str>,
    ciphertext_blob: &'a str,
    request_id: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DecryptReply<'a> {
    key_id: &'a str,
    key_version_id: &'a str,
    plaintext: &'a str,
    request_id: &'a str,
}

fn to_body(v: &impl Serialize, key_id: Option<String>) -> Result<Success, ApiError> {
    let body = serde_json::to_vec(v).map_err(|_| ApiError::internal())?;
    Ok(Success {
        body: Zeroizing::new(body),
        key_id,
    })
}

/// A parameter that must be present and non-empty.
fn required<'a>(req: &'a Incoming, name: &str) -> Result<&'a str, ApiError> {
    req.param(name)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ApiError::missing(name))
}

/// An `EncryptionContext`-style parameter: a JSON object of strings; absent or empty = none.
fn context(req: &Incoming, name: &str) -> Result<EncryptionContext, ApiError> {
    match req.param(name).map(str::trim) {
        None | Some("") => Ok(EncryptionContext::default()),
        Some(text) => serde_json::from_str(text).map_err(|_| ApiError::invalid(name)),
    }
}

/// A base64 blob, decoded as the key store reads the wire form (whitespace ignored).
fn blob(req: &Incoming, name: &str) -> Result<Vec<u8>, ApiError> {
    keystore::decode_blob(required(req, name)?).map_err(|_| ApiError::invalid(name))
}

/// `NumberOfBytes` (1..=1024) wins over `KeySpec` (`AES_256` or `AES_128`); 32 by default.
fn data_key_len(req: &Incoming) -> Result<usize, ApiError> {
    if let Some(n) = req.param("NumberOfBytes").filter(|v| !v.is_empty()) {
        return match n.trim().parse::<usize>() {
            Ok(n) if (1..=1024).contains(&n) => Ok(n),
            _ => Err(ApiError::invalid("NumberOfBytes")),
        };
    }
    match req.param("KeySpec").unwrap_or("") {
        "" | "AES_256" => Ok(32),
        "AES_128" => Ok(16),
        _ => Err(ApiError::invalid("KeySpec")),
    }
}

/// Only symmetric AES-256 software keys exist here; refuse what would silently differ.
fn check_create_key_options(req: &Incoming) -> Result<(), ApiError> {
    let allowed: &[(&str, &[&str])] = &[
        ("KeySpec", &["", "Aliyun_AES_256"]),
        ("KeyUsage", &["", "ENCRYPT/DECRYPT"]),
        ("Origin", &["", "Aliyun_KMS"]),
        ("ProtectionLevel", &["", "SOFTWARE"]),
        ("EnableAutomaticRotation", &["", "false"]),
    ];
    for (name, values) in allowed {
        let v = req.param(name).unwrap_or("");
        let ok = if *name == "EnableAutomaticRotation" {
            values.iter().any(|a| a.eq_ignore_ascii_case(v))
        } else {
            values.contains(&v)
        };
        if !ok {
            return Err(ApiError::new(
                400,
                "InvalidParameter",
                format!("The specified parameter \"{name}\" is not valid: this server supports symmetric Aliyun_AES_256 software keys without automatic rotation."),
            ));
        }
    }
    Ok(())
}

/// `PageNumber` (≥ 1, default 1) and `PageSize` (1..=100, default 10).
fn paging(req: &Incoming) -> Result<(usize, usize), ApiError> {
    let get = |name: &str, default: usize, max: usize| match req.param(name) {
        None | Some("") => Ok(default),
        Some(v) => match v.trim().parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::invalid(name)),
        },
    };
    Ok((get("PageNumber", 1, usize::MAX)?, get("PageSize", 10, 100)?))
}

fn page_of<T>(items: Vec<T>, page: usize, size: usize) -> impl Iterator<Item = T> {
    items
        .into_iter()
        .skip((page - 1).saturating_mul(size))
        .take(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(params: &[(&str, &str)]) -> Incoming {
        Incoming {
            method: "POST".into(),
            query: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            form: vec![],
            headers: vec![],
            body: vec![],
        }
    }

    #[test]
    fn parameter_parsing() {
        assert_eq!(data_key_len(&req(&[])).unwrap(), 32);
        assert_eq!(data_key_len(&req(&[("KeySpec", "AES_128")])).unwrap(), 16);
        assert_eq!(
            data_key_len(&req(&[("KeySpec", "AES_128"), ("NumberOfBytes", "64")])).unwrap(),
            64
        );
        for bad in ["0", "1025", "x", "-1"] {
            assert_eq!(
                data_key_len(&req(&[("NumberOfBytes", bad)]))
                    .unwrap_err()
                    .code,
                "InvalidParameter"
            );
        }
        let c = context(
            &req(&[("EncryptionContext", r#"{"b":"2","a":"1"}"#)]),
            "EncryptionContext",
        )
        .unwrap();
        assert_eq!(c.to_json(), r#"{"a":"1","b":"2"}"#);
        assert!(context(&req(&[]), "EncryptionContext").unwrap().is_empty());
        assert!(context(&req(&[("EncryptionContext", "[1]")]), "EncryptionContext").is_err());
        assert!(context(
            &req(&[("EncryptionContext", r#"{"a":1}"#)]),
            "EncryptionContext"
        )
        .is_err());
        assert_eq!(
            blob(
                &req(&[("CiphertextBlob", "aGVs\nbG8=\n")]),
                "CiphertextBlob"
            )
            .unwrap(),
            b"hello"
        );
        assert!(blob(&req(&[("CiphertextBlob", "**")]), "CiphertextBlob").is_err());
        assert_eq!(
            required(&req(&[("KeyId", "")]), "KeyId").unwrap_err().code,
            "MissingParameter"
        );
        assert_eq!(paging(&req(&[])).unwrap(), (1, 10));
        assert!(paging(&req(&[("PageSize", "101")])).is_err());
        assert!(paging(&req(&[("PageNumber", "0")])).is_err());
        let v: Vec<u32> = page_of((1..=25).collect(), 3, 10).collect();
        assert_eq!(v, vec![21, 22, 23, 24, 25]);
        assert!(check_create_key_options(&req(&[("EnableAutomaticRotation", "False")])).is_ok());
        assert!(check_create_key_options(&req(&[("KeySpec", "RSA_2048")])).is_err());
    }
}
