//! Getting batch keys from the KMS: generate (encrypt) and unwrap (decrypt, verify, resume).
//!
//! Every unwrapped key is checked against the batch's key commitment before use, so a
//! wrapping that yields another key (a swapped key file, a hostile KMS) is refused before any
//! plaintext is produced (FORMAT-RULES 7).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::crypto::BatchKey;
use crate::error::{Error, Result};
use crate::format::{self, ID_LEN};
use crate::kms::{self, EncryptionContext, KeyProvider, KmsOptions};
use crate::manifest::Batch;

/// Builds providers by URL once per run, and talks to them.
pub struct Kms {
    opts: KmsOptions,
    override_url: Option<String>,
    providers: Mutex<HashMap<String, Arc<dyn KeyProvider>>>,
}

impl Kms {
    /// `override_url` replaces the provider URL recorded with wrapped keys (moved endpoints).
    pub fn new(opts: KmsOptions, override_url: Option<String>) -> Self {
        Kms {
            opts,
            override_url,
            providers: Mutex::new(HashMap::new()),
        }
    }

    /// Registers a ready provider under a URL (tests and embedders).
    pub fn with_provider(self, url: &str, p: Arc<dyn KeyProvider>) -> Self {
        if let Ok(mut m) = self.providers.lock() {
            m.insert(url.to_string(), p);
        }
        self
    }

    /// The provider for `url` (or the override), built on first use.
    pub fn provider(&self, url: &str) -> Result<Arc<dyn KeyProvider>> {
        self.provider_inner(url, true)
    }

    /// `create`: whether a missing local key store may be created (only to make new keys).
    fn provider_inner(&self, url: &str, create: bool) -> Result<Arc<dyn KeyProvider>> {
        let url = self.override_url.as_deref().unwrap_or(url);
        let mut m = self
            .providers
            .lock()
            .map_err(|_| Error::Runtime("KMS provider cache poisoned".into()))?;
        if let Some(p) = m.get(url) {
            return Ok(Arc::clone(p));
        }
        // The URL of a wrapped key comes from the vault, unauthenticated: never create a key
        // store (directories, a new master key) where it points. It could not hold the key.
        if let (false, kms::ProviderUrl::Local(dir)) = (create, kms::ProviderUrl::parse(url)?) {
            if !kms::local::store_exists(dir.as_deref())? {
                return Err(kms::KmsError::new(
                    kms::KmsErrorKind::NotFound,
                    format!("no local key store at {url}"),
                )
                .into());
            }
        }
        let p: Arc<dyn KeyProvider> = Arc::from(kms::from_url(url, &self.opts)?);
        m.insert(url.to_string(), Arc::clone(&p));
        Ok(p)
    }

    /// One `GenerateDataKey` for a new batch.
    pub fn generate(
        &self,
        url: &str,
        key: &str,
        vault_id: &[u8; ID_LEN],
        batch_id: [u8; ID_LEN],
    ) -> Result<(Batch, BatchKey)> {
        let p = self.provider(url)?;
        let ctx =
            EncryptionContext::for_batch(&format::to_hex(vault_id), &format::to_hex(&batch_id));
        let g = p.generate_data_key(key, &ctx)?;
        let bk = BatchKey::new(g.plaintext, *vault_id, batch_id);
        let batch = Batch {
            batch_id,
            key_commitment: bk.commitment(),
            wrapped: vec![g.wrapped],
        };
        Ok((batch, bk))
    }

    /// Unwraps a batch's key: tries its wrappings in order, checks the commitment.
    pub fn unwrap(&self, vault_id: &[u8; ID_LEN], batch: &Batch) -> Result<BatchKey> {
        // The context sent with Decrypt is this batch's, not whatever the record says (it is
        // unauthenticated): otherwise a wrapping copied from another vault or batch, with its
        // own context, would be unwrapped by the KMS (FORMAT-RULES 11).
        let ctx = EncryptionContext::for_batch(&format::to_hex(vault_id), &batch.id_hex());
        if let Some(w) = batch.wrapped.iter().find(|w| w.context != ctx) {
            return Err(Error::integrity(
                format!("batch {}", batch.id_hex()),
                format!(
                    "the key wrapped by {} is bound to another vault or batch",
                    w.key_id
                ),
            ));
        }
        let mut errors = Vec::new();
        for w in &batch.wrapped {
            let key = match self
                .provider_inner(&w.kms, false)
                .and_then(|p| Ok(p.decrypt(w)?))
            {
                Ok(k) => k,
                Err(e) => {
                    errors.push(format!("{} ({}): {e}", w.key_id, w.kms));
                    continue;
                }
            };
            let bk = BatchKey::new(key, *vault_id, batch.batch_id);
            if !bk.matches_commitment(&batch.key_commitment) {
                return Err(Error::integrity(
                    format!("batch {}", batch.id_hex()),
                    format!(
                        "the key unwrapped by {} does not match the batch's key commitment",
                        w.key_id
                    ),
                ));
            }
            return Ok(bk);
        }
        Err(Error::Runtime(format!(
            "cannot unwrap the data key of batch {}: {}",
            batch.id_hex(),
            errors.join("; ")
        )))
    }
}
