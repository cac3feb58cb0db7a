//! The embedded local provider: a [`KeyStore`] directory on this machine (`local`, `local:<DIR>`).
//!
//! Data keys are made exactly as Alibaba KMS makes them (the blob wraps the base64 text of the
//! key), so a vault sealed against `local:<DIR>` can later be served by `envseal kms serve` from
//! the same directory and unwrapped through the `aliyun:` provider, and back.

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use zeroize::Zeroizing;

use super::keystore::{self, KeyStore};
use super::*;

/// Description given to the key created for [`DEFAULT_ALIAS`] on first use.
const DEFAULT_KEY_DESCRIPTION: &str = "envseal default key";

pub struct LocalProvider {
    store: KeyStore,
    url: String,
}

/// Whether a key store exists at `dir` (the default store for `None`), without creating one
/// as [`LocalProvider::open`] does: unwrapping a vault's key must not create a store wherever
/// the vault's provider URL points.
pub fn store_exists(dir: Option<&Path>) -> Result<bool, KmsError> {
    let dir = match dir {
        Some(d) => std::path::absolute(d)
            .map_err(|e| KmsError::new(KmsErrorKind::Io, format!("{}: {e}", d.display())))?,
        None => default_dir()?,
    };
    let path = dir.join("store.json");
    path.try_exists()
        .map_err(|e| KmsError::new(KmsErrorKind::Io, format!("{}: {e}", path.display())))
}

/// The default key store directory: `$ENVSEAL_HOME/keystore`, else
/// `$XDG_DATA_HOME/envseal/keystore`, else `$HOME/.local/share/envseal/keystore`.
pub fn default_dir() -> Result<PathBuf, KmsError> {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(home) = var("ENVSEAL_HOME") {
        return Ok(home.join("keystore"));
    }
    // The XDG spec says relative values are to be ignored.
    if let Some(data) = var("XDG_DATA_HOME").filter(|p| p.is_absolute()) {
        return Ok(data.join("envseal/keystore"));
    }
    if let Some(home) = var("HOME") {
        return Ok(home.join(".local/share/envseal/keystore"));
    }
    Err(KmsError::new(
        KmsErrorKind::InvalidArgument,
        "no place for the local key store: set ENVSEAL_HOME (or HOME), or pass --kms local:<DIR>",
    ))
}

impl LocalProvider {
    /// Opens the key store in `dir` (default: [`default_dir`]), creating it if absent. The
    /// passphrase comes from `ENVSEAL_PASSPHRASE`, else (only for a sealed store) from
    /// `opts.passphrase_prompt`. A new store is sealed when `ENVSEAL_PASSPHRASE` is set.
    pub fn open(dir: Option<&Path>, opts: &KmsOptions) -> Result<Self, KmsError> {
        let (path, url) = match dir {
            Some(d) => {
                // The URL is recorded in manifests: make it independent of the working directory.
                let abs = std::path::absolute(d).map_err(|e| {
                    KmsError::new(KmsErrorKind::Io, format!("{}: {e}", d.display()))
                })?;
                let url = format!("local:{}", abs.display());
                (abs, url)
            }
            None => (default_dir()?, "local".to_string()),
        };
        let passphrase = match env_passphrase()? {
            Some(p) => Some(p),
            None if KeyStore::is_sealed(&path)? => opts.passphrase_prompt.and_then(|ask| ask()),
            None => None,
        };
        let store = KeyStore::open_with(
            &path,
            passphrase.as_ref().map(|p| p.as_str()),
            !opts.scratch_store,
        )?;
        Ok(LocalProvider { store, url })
    }

    /// The key store behind this provider.
    pub fn store(&self) -> &KeyStore {
        &self.store
    }

    /// Resolves `key`, creating the default key and its alias on first use of [`DEFAULT_ALIAS`].
    fn key_for_new_data_key(&self, key: &str) -> Result<String, KmsError> {
        if key != DEFAULT_ALIAS {
            return Ok(key.to_string());
        }
        let (id, created) = self
            .store
            .ensure_alias_key(DEFAULT_ALIAS, DEFAULT_KEY_DESCRIPTION)?;
        if created {
            log::warn!(
                "created the default key {id} ({DEFAULT_ALIAS}) in {}; back up this directory, the data sealed with it cannot be decrypted without it",
                self.store.dir().display()
            );
        }
        Ok(id)
    }

    fn wrapped(&self, sealed: keystore::Sealed, context: &EncryptionContext) -> WrappedKey {
        WrappedKey {
            kms: self.url.clone(),
            key_id: sealed.key_id,
            blob: keystore::encode_blob(&sealed.blob),
            context: context.clone(),
        }
    }
}

/// `ENVSEAL_PASSPHRASE`, if set and not empty.
fn env_passphrase() -> Result<Option<Zeroizing<String>>, KmsError> {
    match std::env::var_os("ENVSEAL_PASSPHRASE") {
        None => Ok(None),
        Some(v) if v.is_empty() => Ok(None),
        Some(v) => v
            .into_string()
            .map(|s| Some(Zeroizing::new(s)))
            .map_err(|_| {
                KmsError::new(
                    KmsErrorKind::Passphrase,
                    "ENVSEAL_PASSPHRASE is not valid UTF-8",
                )
            }),
    }
}

impl KeyProvider for LocalProvider {
    fn url(&self) -> String {
        self.url.clone()
    }

    fn generate_data_key(
        &self,
        key: &str,
        context: &EncryptionContext,
    ) -> Result<GeneratedKey, KmsError> {
        let key_id = self.key_for_new_data_key(key)?;
        let (raw, sealed) = self
            .store
            .generate_data_key(&key_id, DATA_KEY_LEN, context)?;
        Ok(GeneratedKey {
            plaintext: DataKey::from_bytes(&raw)?,
            wrapped: self.wrapped(sealed, context),
        })
    }

    fn decrypt(&self, wrapped: &WrappedKey) -> Result<DataKey, KmsError> {
        self.decrypt_naming_key(wrapped).map(|(k, _)| k)
    }

    fn decrypt_naming_key(
        &self,
        wrapped: &WrappedKey,
    ) -> Result<(DataKey, Option<String>), KmsError> {
        let tag = |e: KmsError| e.with_endpoint(self.store.dir().display().to_string());
        let blob = keystore::decode_blob(&wrapped.blob).map_err(tag)?;
        let opened = self.store.decrypt(&blob, &wrapped.context)?;
        // The blob authenticated, so a wrong shape means it wraps something other than a data
        // key (e.g. made by `Encrypt` of other data): not usable here.
        let not_a_key = || {
            tag(KmsError::new(
                KmsErrorKind::InvalidCiphertext,
                format!(
                    "the blob under key {} does not hold a {DATA_KEY_LEN}-byte data key",
                    opened.key_id
                ),
            ))
        };
        let raw = Zeroizing::new(B64.decode(&opened.plaintext[..]).map_err(|_| not_a_key())?);
        if raw.len() != DATA_KEY_LEN {
            return Err(not_a_key());
        }
        Ok((DataKey::from_bytes(&raw)?, Some(opened.key_id)))
    }

    fn encrypt(
        &self,
        key: &str,
        plaintext: &DataKey,
        context: &EncryptionContext,
    ) -> Result<WrappedKey, KmsError> {
        // Base64 text, like GenerateDataKey's blobs, so both decrypt the same way.
        let text = Zeroizing::new(B64.encode(plaintext.expose()));
        let sealed = self.store.encrypt(key, text.as_bytes(), context)?;
        Ok(self.wrapped(sealed, context))
    }
}

impl KmsAdmin for LocalProvider {
    fn create_key(&self, description: &str) -> Result<KeyMetadata, KmsError> {
        self.store.create_key(description)
    }
    fn create_alias(&self, alias: &str, key_id: &str) -> Result<(), KmsError> {
        self.store.create_alias(alias, key_id)
    }
    fn describe_key(&self, key: &str) -> Result<KeyMetadata, KmsError> {
        self.store.describe_key(key)
    }
    fn list_keys(&self) -> Result<Vec<KeyMetadata>, KmsError> {
        self.store.list_keys()
    }
    fn list_aliases(&self) -> Result<Vec<AliasEntry>, KmsError> {
        self.store.list_aliases()
    }
    fn enable_key(&self, key_id: &str) -> Result<(), KmsError> {
        self.store.enable_key(key_id)
    }
    fn disable_key(&self, key_id: &str) -> Result<(), KmsError> {
        self.store.disable_key(key_id)
    }
    fn schedule_key_deletion(&self, key_id: &str, pending_days: u32) -> Result<(), KmsError> {
        self.store.schedule_key_deletion(key_id, pending_days)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Fresh stores in temp dirs: with ENVSEAL_PASSPHRASE set they are sealed under it and
    // behave the same, so the environment does not change these tests' outcome.
    fn provider(dir: &Path) -> LocalProvider {
        LocalProvider::open(Some(dir), &KmsOptions::default()).unwrap()
    }

    #[test]
    fn default_alias_is_created_on_first_use() {
        let t = tempfile::tempdir().unwrap();
        let p = provider(&t.path().join("ks"));
        assert!(p.url().starts_with("local:/"), "{}", p.url());
        let ctx = EncryptionContext::for_batch("v", "b");
        let g = p.generate_data_key(DEFAULT_ALIAS, &ctx).unwrap();
        let id = p.store().resolve(DEFAULT_ALIAS).unwrap();
        assert_eq!(g.wrapped.key_id, id);
        assert_eq!(g.wrapped.kms, p.url());
        assert_eq!(g.wrapped.context, ctx);
        let g2 = p.generate_data_key(DEFAULT_ALIAS, &ctx).unwrap();
        assert_eq!(g2.wrapped.key_id, id, "the default key is created once");
        assert_eq!(p.list_keys().unwrap().len(), 1);
        assert_ne!(g.plaintext.expose(), g2.plaintext.expose());

        let back = p.decrypt(&g.wrapped).unwrap();
        assert_eq!(back.expose(), g.plaintext.expose());
    }

    #[test]
    fn other_aliases_are_not_created() {
        let t = tempfile::tempdir().unwrap();
        let p = provider(&t.path().join("ks"));
        let e = p
            .generate_data_key("alias/other", &EncryptionContext::default())
            .err()
            .unwrap();
        assert_eq!(e.kind, KmsErrorKind::NotFound);
        assert!(p.list_keys().unwrap().is_empty());
    }

    #[test]
    fn rewrap_blobs_decrypt_like_generated_ones() {
        let t = tempfile::tempdir().unwrap();
        let p = provider(&t.path().join("ks"));
        let a = p.create_key("a").unwrap().key_id;
        let b = p.create_key("b").unwrap().key_id;
        p.create_alias("alias/b", &b).unwrap();
        let ctx = EncryptionContext::for_batch("v", "b");
        let g = p.generate_data_key(&a, &ctx).unwrap();
        let w = p.encrypt("alias/b", &g.plaintext, &ctx).unwrap();
        assert_eq!(w.key_id, b, "the resolved id, never the alias");
        assert_eq!(p.decrypt(&w).unwrap().expose(), g.plaintext.expose());

        // The context travels in the WrappedKey and is checked.
        let mut wrong = w.clone();
        wrong.context = EncryptionContext::for_batch("v", "other");
        assert_eq!(
            p.decrypt(&wrong).err().unwrap().kind,
            KmsErrorKind::InvalidCiphertext
        );
        // A blob with a trailing newline (as in the Alibaba sample) still decrypts.
        let mut nl = w.clone();
        nl.blob.push('\n');
        assert!(p.decrypt(&nl).is_ok());
        let mut garbage = w.clone();
        garbage.blob = "%%%".into();
        assert_eq!(
            p.decrypt(&garbage).err().unwrap().kind,
            KmsErrorKind::InvalidCiphertext
        );
    }

    #[test]
    fn blobs_that_do_not_hold_a_data_key_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let p = provider(&t.path().join("ks"));
        let id = p.create_key("").unwrap().key_id;
        let ctx = EncryptionContext::default();
        // Encrypt of arbitrary (non-key) data through the store, then Decrypt as a data key.
        let sealed = p.store().encrypt(&id, b"not a key", &ctx).unwrap();
        let w = p.wrapped(sealed, &ctx);
        let e = p.decrypt(&w).err().unwrap();
        assert_eq!(e.kind, KmsErrorKind::InvalidCiphertext);
        assert!(!e.message.contains("not a key"));
        // And a 16-byte data key from the store is refused as well.
        let (_, sealed) = p.store().generate_data_key(&id, 16, &ctx).unwrap();
        let e = p.decrypt(&p.wrapped(sealed, &ctx)).err().unwrap();
        assert_eq!(e.kind, KmsErrorKind::InvalidCiphertext);
    }

    #[test]
    fn disabled_key_cannot_unwrap() {
        let t = tempfile::tempdir().unwrap();
        let p = provider(&t.path().join("ks"));
        let id = p.create_key("").unwrap().key_id;
        let g = p
            .generate_data_key(&id, &EncryptionContext::default())
            .unwrap();
        p.disable_key(&id).unwrap();
        let e = p.decrypt(&g.wrapped).err().unwrap();
        assert_eq!(e.kind, KmsErrorKind::Disabled);
        assert_eq!(e.code.as_deref(), Some("Rejected.Disabled"));
    }
}
