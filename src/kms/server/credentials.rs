//! The one access key pair `kms serve` accepts: from the environment, or a pair generated on
//! first start in `<store>/credentials` (mode 0600).

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::kms::{KmsError, KmsErrorKind};

pub const ENV_ACCESS_KEY_ID: &str = "ENVSEAL_KMS_ACCESS_KEY_ID";
pub const ENV_ACCESS_KEY_SECRET: &str = "ENVSEAL_KMS_ACCESS_KEY_SECRET";
/// File name of the generated pair inside the store directory.
pub const CREDENTIALS_FILE: &str = "credentials";

/// An access key pair. No `Debug`: the secret is never printed.
pub struct Credentials {
    pub access_key_id: String,
    pub secret: Zeroizing<String>,
}

/// Where the credentials came from (for the startup notice).
#[derive(Debug, PartialEq, Eq)]
pub enum Source {
    Environment,
    File { path: PathBuf, created: bool },
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CredentialsFile {
    access_key_id: String,
    access_key_secret: String,
}

impl Credentials {
    /// `ENVSEAL_KMS_ACCESS_KEY_ID`/`_SECRET` when both are set, else the pair in
    /// `<store>/credentials`, created on first use.
    pub fn load_or_create(store: &Path) -> Result<(Credentials, Source), KmsError> {
        let id = std::env::var(ENV_ACCESS_KEY_ID)
            .ok()
            .filter(|v| !v.is_empty());
        let secret = std::env::var(ENV_ACCESS_KEY_SECRET)
            .ok()
            .filter(|v| !v.is_empty());
        match (id, secret) {
            (Some(access_key_id), Some(secret)) => {
                return Ok((
                    Credentials {
                        access_key_id,
                        secret: Zeroizing::new(secret),
                    },
                    Source::Environment,
                ))
            }
            (None, None) => {}
            _ => {
                return Err(KmsError::new(
                    KmsErrorKind::Auth,
                    format!("set both {ENV_ACCESS_KEY_ID} and {ENV_ACCESS_KEY_SECRET}, or neither"),
                ))
            }
        }
        let path = store.join(CREDENTIALS_FILE);
        let io = |what: &str, e: std::io::Error| {
            KmsError::new(KmsErrorKind::Io, format!("{what} {}: {e}", path.display()))
        };
        match fs::read(&path) {
            Ok(bytes) => {
                let bytes = Zeroizing::new(bytes);
                let f: CredentialsFile = serde_json::from_slice(&bytes).map_err(|e| {
                    KmsError::new(
                        KmsErrorKind::Io,
                        format!("{} is not a credentials file: {e}", path.display()),
                    )
                })?;
                let secret = Zeroizing::new(f.access_key_secret);
                Ok((
                    Credentials {
                        access_key_id: f.access_key_id,
                        secret,
                    },
                    Source::File {
                        path,
                        created: false,
                    },
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let creds = Credentials::generate()?;
                let text = Zeroizing::new(
                    serde_json::to_string_pretty(&CredentialsFile {
                        access_key_id: creds.access_key_id.clone(),
                        access_key_secret: creds.secret.to_string(),
                    })
                    .map_err(|e| KmsError::new(KmsErrorKind::Io, e.to_string()))?,
                );
                fs::create_dir_all(store).map_err(|e| io("cannot create", e))?;
                // create_new: two servers starting at once must not overwrite each other's pair.
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(|e| io("cannot create", e))?;
                f.write_all(text.as_bytes())
                    .and_then(|_| f.sync_all())
                    .map_err(|e| io("cannot write", e))?;
                Ok((
                    creds,
                    Source::File {
                        path,
                        created: true,
                    },
                ))
            }
            Err(e) => Err(io("cannot read", e)),
        }
    }

    /// A fresh pair: `LTAI` + 20 alphanumerics (the shape of Alibaba ids), 30-char secret.
    pub fn generate() -> Result<Credentials, KmsError> {
        Ok(Credentials {
            access_key_id: format!("LTAI{}", random_alnum(20)?.as_str()),
            secret: random_alnum(30)?,
        })
    }
}

fn random_alnum(n: usize) -> Result<Zeroizing<String>, KmsError> {
    const ALPHABET: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = Zeroizing::new(String::with_capacity(n));
    let mut buf = Zeroizing::new([0u8; 64]);
    while out.len() < n {
        getrandom::getrandom(&mut buf[..]).map_err(|e| {
            KmsError::new(
                KmsErrorKind::Io,
                format!("the OS random generator failed: {e}"),
            )
        })?;
        // Rejection sampling keeps the distribution uniform.
        for &b in buf.iter().filter(|&&b| b < 248) {
            if out.len() == n {
                break;
            }
            out.push(char::from(ALPHABET[(b % 62) as usize]));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn generated_pair_is_stored_0600_and_reused() {
        // The environment pair wins when set; this test only runs the file path if unset.
        if std::env::var_os(ENV_ACCESS_KEY_ID).is_some() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (a, src) = Credentials::load_or_create(dir.path()).unwrap();
        let path = dir.path().join(CREDENTIALS_FILE);
        assert_eq!(
            src,
            Source::File {
                path: path.clone(),
                created: true
            }
        );
        assert!(a.access_key_id.starts_with("LTAI") && a.access_key_id.len() == 24);
        assert_eq!(a.secret.len(), 30);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (b, src) = Credentials::load_or_create(dir.path()).unwrap();
        assert!(matches!(src, Source::File { created: false, .. }));
        assert_eq!(a.access_key_id, b.access_key_id);
        assert_eq!(*a.secret, *b.secret);
        assert_ne!(
            Credentials::generate().unwrap().access_key_id,
            a.access_key_id
        );
    }
}
