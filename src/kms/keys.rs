//! Getting batch keys from the KMS: generate (encrypt) and unwrap (decrypt, verify, resume).
//!
//! Every unwrapped key is checked against the batch's key commitment before use, so a
//! wrapping that yields another key (a swapped key file, a hostile KMS) is refused before any
//! plaintext is produced (docs/FORMAT.md §5).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::crypto::BatchKey;
use crate::error::{Error, Result};
use crate::format::manifest::Batch;
use crate::format::{self, ID_LEN};
use crate::kms::keyspec::KeySpec;
use crate::kms::{self, EncryptionContext, KeyProvider, KmsOptions, WrappedKey};

/// Builds providers by URL once per run, and talks to them.
pub struct Kms {
    opts: KmsOptions,
    override_url: Option<String>,
    trusted: Vec<String>,
    /// CMKs a wrapping must name to be unwrapped (empty: any).
    expected: Vec<String>,
    providers: Mutex<HashMap<String, Arc<dyn KeyProvider>>>,
}

impl Kms {
    /// `override_url` replaces the provider URL recorded with wrapped keys (moved endpoints).
    pub fn new(opts: KmsOptions, override_url: Option<String>) -> Self {
        Kms {
            opts,
            override_url,
            trusted: Vec::new(),
            expected: Vec::new(),
            providers: Mutex::new(HashMap::new()),
        }
    }

    /// Restricts unwrapping to wrappings by these CMKs (`--expect-key`, for restore
    /// pipelines): a vault names its own KMS and CMK, even a `local:<dir>` store it brings
    /// along, so only the caller can say which keys it trusts. A CMK matches by its id or
    /// ARN as recorded, or as the last part of a recorded ARN (`…:key/<id>`).
    pub fn expecting(mut self, cmks: impl IntoIterator<Item = String>) -> Self {
        self.expected.extend(cmks);
        self
    }

    fn expected_key(&self, key_id: &str) -> bool {
        self.expected.iter().any(|e| {
            key_id == e
                || key_id
                    .rsplit_once(":key/")
                    .is_some_and(|(_, id)| id == e.as_str())
        })
    }

    /// Remote KMS URLs the user trusts beyond loopback and the official endpoints (the CLI
    /// passes `ENVSEAL_KMS` and `ENVSEAL_KMS_TRUST`).
    pub fn trusting(mut self, urls: impl IntoIterator<Item = String>) -> Self {
        self.trusted.extend(urls);
        self
    }

    /// A vault names the KMS that holds its keys, but the vault is unauthenticated until a key
    /// is unwrapped: sending signed requests (with the user's credentials) wherever it points
    /// would let a crafted vault harvest requests replayable against the real KMS. So remote
    /// URLs from a vault are used only when explicitly trusted, on loopback, or an official
    /// KMS endpoint over https.
    fn check_trusted(&self, url: &str) -> Result<()> {
        let endpoint = match kms::ProviderUrl::parse(url)? {
            kms::ProviderUrl::Local(_) => return Ok(()),
            kms::ProviderUrl::Aliyun { endpoint, .. } | kms::ProviderUrl::Aws { endpoint, .. } => {
                endpoint
            }
        };
        if self.trusted.iter().any(|t| t == url) || trusted_endpoint(&endpoint) {
            return Ok(());
        }
        Err(Error::Usage(format!(
            "the vault names the KMS {url}, which is not trusted (not loopback, not an official KMS endpoint over https); if you trust it, pass --kms {url} or add it to ENVSEAL_KMS_TRUST"
        )))
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
        if !create && self.override_url.is_none() {
            self.check_trusted(url)?;
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

    /// One `GenerateDataKey` under the first key, then one `Encrypt` of the same data key
    /// under each of the others: a batch any one of them opens alone.
    pub fn generate_all(
        &self,
        keys: &[KeySpec],
        vault_id: &[u8; ID_LEN],
        batch_id: [u8; ID_LEN],
    ) -> Result<(Batch, BatchKey)> {
        let (first, rest) = keys
            .split_first()
            .ok_or_else(|| Error::Usage("no --key to generate the data key under".into()))?;
        let (mut batch, bk) = self.generate(&first.kms, &first.key, vault_id, batch_id)?;
        for k in rest {
            batch.wrapped.push(self.wrap(k, &bk)?);
        }
        Ok((batch, bk))
    }

    /// `Encrypt` of a batch key under another CMK, bound to the same vault and batch.
    pub fn wrap(&self, spec: &KeySpec, bk: &BatchKey) -> Result<WrappedKey> {
        let ctx = EncryptionContext::for_batch(
            &format::to_hex(bk.vault_id()),
            &format::to_hex(bk.batch_id()),
        );
        Ok(self
            .provider(&spec.kms)?
            .encrypt(&spec.key, bk.data_key(), &ctx)?)
    }

    /// Refuses wrappings whose recorded context is not this batch's, before any KMS call.
    pub fn check_contexts(&self, vault_id: &[u8; ID_LEN], batch: &Batch) -> Result<()> {
        // The context sent with Decrypt is this batch's, not whatever the record says (it is
        // unauthenticated): otherwise a wrapping copied from another vault or batch, with its
        // own context, would be unwrapped by the KMS (docs/FORMAT.md §5).
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
        Ok(())
    }

    /// Unwraps one wrapping of a batch (one `Decrypt`) and checks it against the batch's
    /// commitment; the wrapping's context must already have been checked.
    pub fn unwrap_one(
        &self,
        vault_id: &[u8; ID_LEN],
        batch: &Batch,
        w: &WrappedKey,
    ) -> Result<BatchKey> {
        let key = self.provider_inner(&w.kms, false)?.decrypt(w)?;
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
        Ok(bk)
    }

    /// Unwraps a batch's key: tries its wrappings in order, checks the commitment.
    pub fn unwrap(&self, vault_id: &[u8; ID_LEN], batch: &Batch) -> Result<BatchKey> {
        self.check_contexts(vault_id, batch)?;
        if !self.expected.is_empty() && !batch.wrapped.iter().any(|w| self.expected_key(&w.key_id))
        {
            let names: Vec<&str> = batch.wrapped.iter().map(|w| w.key_id.as_str()).collect();
            return Err(Error::integrity(
                format!("batch {}", batch.id_hex()),
                format!(
                    "wrapped by {}, none of the keys given with --expect-key ({}); refusing to unwrap",
                    names.join(", "),
                    self.expected.join(", ")
                ),
            ));
        }
        let mut errors = Vec::new();
        let mut last = None;
        for w in &batch.wrapped {
            if !self.expected.is_empty() && !self.expected_key(&w.key_id) {
                continue;
            }
            match self.unwrap_one(vault_id, batch, w) {
                Ok(bk) => return Ok(bk),
                Err(e @ Error::Integrity { .. }) => return Err(e),
                Err(e) => {
                    // Name the KMS actually asked: `--kms` overrides the vault's URL.
                    let url = self.override_url.as_deref().unwrap_or(&w.kms);
                    errors.push(format!("{} ({url}): {e}", w.key_id));
                    if let Error::Kms(k) = e {
                        last = Some(Box::new((w.key_id.clone(), url.to_string(), k)));
                    }
                }
            }
        }
        Err(Error::Unwrap {
            batch: batch.id_hex(),
            detail: errors.join("; "),
            last,
        })
    }
}

/// Loopback, or https to an Alibaba Cloud or AWS KMS host.
fn trusted_endpoint(endpoint: &str) -> bool {
    let Ok(u) = url::Url::parse(endpoint) else {
        return false;
    };
    match u.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => {
            let d = d.to_ascii_lowercase();
            d == "localhost"
                || (u.scheme() == "https"
                    && (d.starts_with("kms") || d.contains(".kms."))
                    && [".aliyuncs.com", ".amazonaws.com", ".amazonaws.com.cn"]
                        .iter()
                        .any(|s| d.ends_with(s)))
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_and_official_endpoints_are_trusted_by_default() {
        for ok in [
            "http://127.0.0.1:8080",
            "http://localhost:1",
            "http://[::1]:9",
            "https://kms.cn-hangzhou.aliyuncs.com",
            "https://kms-vpc.cn-hangzhou.aliyuncs.com",
            "https://kms.us-east-1.amazonaws.com",
            "https://kst-abc.cryptoservice.kms.aliyuncs.com",
        ] {
            assert!(trusted_endpoint(ok), "{ok}");
        }
        for bad in [
            "http://kms.cn-hangzhou.aliyuncs.com",
            "https://kms.cn-hangzhou.aliyuncs.com.evil.example",
            "https://evil.example",
            "http://10.0.0.1:80",
            "https://aliyuncs.com.example",
        ] {
            assert!(!trusted_endpoint(bad), "{bad}");
        }
        let k =
            Kms::new(KmsOptions::default(), None).trusting(["aliyun:http://10.1.2.3:80".into()]);
        assert!(k.check_trusted("aliyun:http://10.1.2.3:80").is_ok());
        assert!(k.check_trusted("aliyun:http://10.1.2.4:80").is_err());
        assert!(k.check_trusted("local").is_ok());
    }
}
