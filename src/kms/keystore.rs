//! The key store engine shared by the local provider and `kms serve`.
//!
//! A key store is a directory holding customer master keys (CMKs) with Alibaba KMS semantics:
//! key states, aliases, ARNs, `GenerateDataKey`/`Encrypt`/`Decrypt` with an encryption context.
//!
//! # Layout
//!
//! ```text
//! <dir>/                      0700
//!   store.json                {"format":1} or, when sealed,
//!                             {"format":1,"seal":{"kdf":"argon2id","m_cost","t_cost","p_cost",
//!                               "salt":b64,"check":b64}}
//!   keys/                     0700
//!     <key_id>.json           {"key_id","description","created","state","delete_at"?,
//!                               "primary_version","versions":[{"id","created","material"}]}
//!   aliases.json              {"alias/name": "<key_id>", ...}
//!   versions.json             {"<key_version_id>": "<key_id>", ...}  (lets Decrypt find a key)
//!   audit.jsonl               one {"time","op","key_id","ok"[,"error"]} line per operation
//!   .lock                     flock(2): shared for reads, exclusive for read-modify-write
//! ```
//!
//! Every file is 0600 and written atomically (temp file, fsync, rename, fsync of the directory).
//! Times are Unix seconds on disk and `YYYY-MM-DDThh:mm:ssZ` in [`KeyMetadata`].
//!
//! Key material is 32 random bytes per key version. In an unsealed store `material` is its
//! base64. In a sealed store it is base64 of `nonce(12) ‖ AES-256-GCM(material) ‖ tag(16)` under
//! the KEK, AAD = `"envseal-kms-material-v1" ‖ key_id ‖ version_id`; the KEK is Argon2id of the
//! passphrase with the parameters and salt in `store.json`, and `check` (an AEAD seal of nothing,
//! AAD `"envseal-kms-check-v1"`) tells a wrong passphrase from a corrupt key file.
//!
//! # Ciphertext blob
//!
//! ```text
//! key_version_id (36 ASCII bytes, UUID) ‖ nonce (12 random bytes) ‖ AES-256-GCM ciphertext ‖ tag (16)
//! AAD = "envseal-kms-blob-v1" ‖ key_version_id ‖ canonical JSON of the encryption context
//! ```
//!
//! The blob names its key version, so `Decrypt` needs no key id (as in Alibaba KMS). On the wire
//! it is standard base64; this module deals in raw bytes.
//!
//! Every method reads the files it needs under the lock, so two `KeyStore`s (or processes) on one
//! directory see each other's changes at once. Keys whose deletion date has passed behave as
//! absent and are removed by the next administrative operation.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rustix::fs::FlockOperation;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use super::{AliasEntry, EncryptionContext, KeyMetadata, KmsError, KmsErrorKind};
use crate::crypto::aead::Aes256Gcm;

/// Largest plaintext `Encrypt` accepts (Alibaba: 6 KiB).
pub const MAX_PLAINTEXT_LEN: usize = 6144;
/// Largest `NumberOfBytes` for `GenerateDataKey` (Alibaba: 1..=1024).
pub const MAX_DATA_KEY_BYTES: usize = 1024;
/// ARN region and account of a store until [`KeyStore::set_arn_scope`] says otherwise.
pub const DEFAULT_REGION: &str = "local";
pub const DEFAULT_ACCOUNT: &str = "envseal";
/// `ScheduleKeyDeletion` window bounds, in days (Alibaba: 7..=366).
pub const PENDING_DAYS: std::ops::RangeInclusive<u32> = 7..=366;

const FORMAT_VERSION: u32 = 1;
const UUID_LEN: usize = 36;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const MATERIAL_LEN: usize = 32;
const BLOB_LABEL: &[u8] = b"envseal-kms-blob-v1";
const MATERIAL_LABEL: &[u8] = b"envseal-kms-material-v1";
const CHECK_LABEL: &[u8] = b"envseal-kms-check-v1";

// Argon2id cost for new sealed stores: RFC 9106's second recommended option (64 MiB, t=3, p=4).
const ARGON2_M_KIB: u32 = 64 * 1024;
const ARGON2_T: u32 = 3;
const ARGON2_P: u32 = 4;
const SALT_LEN: usize = 16;
// Bounds for parameters read back from store.json, so a tampered file cannot make `open`
// allocate gigabytes or spin for hours.
const ARGON2_MAX_M_KIB: u32 = 2 * 1024 * 1024;
const ARGON2_MAX_T: u32 = 64;
const ARGON2_MAX_P: u32 = 64;

const KEY_SPEC: &str = "Aliyun_AES_256";
const KEY_USAGE: &str = "ENCRYPT/DECRYPT";
const ORIGIN: &str = "Aliyun_KMS";
const PROTECTION_LEVEL: &str = "SOFTWARE";
const AUTOMATIC_ROTATION: &str = "Disabled";

/// Result of encrypting under a CMK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sealed {
    pub key_id: String,
    pub key_version_id: String,
    pub blob: Vec<u8>,
}

/// Result of decrypting a blob. `plaintext` is zeroizing.
pub struct Opened {
    pub key_id: String,
    pub key_version_id: String,
    pub plaintext: Zeroizing<Vec<u8>>,
}

/// An open key store directory. `Send + Sync`; cheap per call (reads only the files it needs).
pub struct KeyStore {
    dir: PathBuf,
    /// Key-encryption key of a sealed store (derived once, at open).
    kek: Option<Zeroizing<[u8; 32]>>,
    region: String,
    account: String,
}

#[derive(Serialize, Deserialize)]
struct StoreFile {
    format: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    seal: Option<SealParams>,
}

#[derive(Serialize, Deserialize)]
struct SealParams {
    kdf: String,
    m_cost: u32,
    t_cost: u32,
    p_cost: u32,
    salt: String,
    check: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum KeyState {
    Enabled,
    Disabled,
    PendingDeletion,
}

impl KeyState {
    fn as_str(self) -> &'static str {
        match self {
            KeyState::Enabled => "Enabled",
            KeyState::Disabled => "Disabled",
            KeyState::PendingDeletion => "PendingDeletion",
        }
    }
}

#[derive(Serialize, Deserialize)]
struct KeyRecord {
    key_id: String,
    description: String,
    created: i64,
    state: KeyState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    delete_at: Option<i64>,
    primary_version: String,
    versions: Vec<VersionRecord>,
}

#[derive(Serialize, Deserialize)]
struct VersionRecord {
    id: String,
    created: i64,
    /// Base64 of the material, sealed under the KEK in a sealed store (see the module doc).
    material: String,
}

impl Drop for VersionRecord {
    fn drop(&mut self) {
        self.material.zeroize();
    }
}

impl KeyRecord {
    fn expired(&self, now: i64) -> bool {
        self.state == KeyState::PendingDeletion && self.delete_at.is_some_and(|t| t <= now)
    }
}

/// Held while a store operation runs; closing the file releases the `flock`.
struct Lock {
    _file: File,
}

impl KeyStore {
    /// Opens (creating if absent, dirs 0700, files 0600) the store in `dir`. `passphrase`:
    /// when the store is new and a passphrase is given, key material is sealed at rest under
    /// an Argon2id-derived key; when the store is sealed, the passphrase is required
    /// (KmsErrorKind::Passphrase if missing or wrong, with a message that says to set
    /// ENVSEAL_PASSPHRASE). An empty passphrase counts as none.
    pub fn open(dir: &Path, passphrase: Option<&str>) -> Result<KeyStore, KmsError> {
        Self::open_with(dir, passphrase, true)
    }

    /// [`KeyStore::open`]; `announce`: warn when an unsealed store is created (where it is
    /// and that it must be backed up). `false` for throwaway stores, such as `bench`'s.
    pub fn open_with(
        dir: &Path,
        passphrase: Option<&str>,
        announce: bool,
    ) -> Result<KeyStore, KmsError> {
        let passphrase = passphrase.filter(|p| !p.is_empty());
        let mut store = KeyStore {
            dir: dir.to_path_buf(),
            kek: None,
            region: DEFAULT_REGION.to_string(),
            account: DEFAULT_ACCOUNT.to_string(),
        };
        store
            .open_inner(passphrase, announce)
            .map_err(|e| store.tag(e))?;
        Ok(store)
    }

    fn open_inner(&mut self, passphrase: Option<&str>, announce: bool) -> Result<(), KmsError> {
        let keys = self.dir.join("keys");
        let existed = self.dir.exists();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&keys)
            .map_err(|e| io_error(&keys, e))?;
        let lock = self.lock(true)?;
        let path = self.dir.join("store.json");
        let file: StoreFile = match self.read_json(&path)? {
            Some(f) => f,
            None => {
                // We do not chmod a directory we did not make (it may be shared on purpose),
                // but say so when others can read it.
                if existed {
                    let mode = fs::metadata(&self.dir)
                        .map_err(|e| io_error(&self.dir, e))?
                        .permissions()
                        .mode();
                    if mode & 0o077 != 0 {
                        log::warn!(
                            "the key store directory {} is accessible to other users (mode {:o}); consider chmod 700",
                            self.dir.display(),
                            mode & 0o777
                        );
                    }
                }
                let seal = match passphrase {
                    Some(p) => {
                        let salt = random_bytes(SALT_LEN)?;
                        let kek = derive_kek(p, &salt, ARGON2_M_KIB, ARGON2_T, ARGON2_P)?;
                        let check = aead_seal(&kek, CHECK_LABEL, &[])?;
                        self.kek = Some(kek);
                        Some(SealParams {
                            kdf: "argon2id".into(),
                            m_cost: ARGON2_M_KIB,
                            t_cost: ARGON2_T,
                            p_cost: ARGON2_P,
                            salt: B64.encode(&salt),
                            check: B64.encode(check),
                        })
                    }
                    None => None,
                };
                let file = StoreFile {
                    format: FORMAT_VERSION,
                    seal,
                };
                self.write_json(&path, &file)?;
                // A warning, so it is seen without -v: the user must know where the keys
                // to every future vault live, and that they lie unencrypted.
                if file.seal.is_some() {
                    log::info!("created a sealed key store in {}", self.dir.display());
                } else if !announce {
                    log::debug!("created a scratch key store in {}", self.dir.display());
                } else {
                    log::warn!(
                        "created an unsealed key store in {} (master keys unencrypted, files 0600); to seal a new store set ENVSEAL_PASSPHRASE before its first use; back this directory up: losing it loses every vault sealed with its keys",
                        self.dir.display()
                    );
                }
                return Ok(());
            }
        };
        // The slow key derivation below need not hold up other processes.
        drop(lock);
        if file.format != FORMAT_VERSION {
            return Err(KmsError::new(
                KmsErrorKind::Io,
                format!(
                    "{}: key store format {} is not supported by this envseal (expected {FORMAT_VERSION})",
                    path.display(),
                    file.format
                ),
            ));
        }
        match (&file.seal, passphrase) {
            (None, Some(_)) => {
                log::warn!(
                    "the key store in {} is not sealed; the passphrase is not used",
                    self.dir.display()
                );
            }
            (None, None) => {}
            (Some(_), None) => {
                return Err(KmsError::new(
                    KmsErrorKind::Passphrase,
                    format!(
                        "the key store in {} is sealed with a passphrase; set ENVSEAL_PASSPHRASE (or run in a terminal to be asked for it)",
                        self.dir.display()
                    ),
                ))
            }
            (Some(seal), Some(p)) => self.kek = Some(unlock(seal, p, &path)?),
        }
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the store in `dir` is sealed with a passphrase, without opening it (false when
    /// there is no store yet).
    pub fn is_sealed(dir: &Path) -> Result<bool, KmsError> {
        let path = dir.join("store.json");
        match fs::read(&path) {
            Ok(bytes) => {
                let f: StoreFile = serde_json::from_slice(&bytes)
                    .map_err(|e| corrupt(&path, e).with_endpoint(dir.display().to_string()))?;
                Ok(f.seal.is_some())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_error(&path, e).with_endpoint(dir.display().to_string())),
        }
    }

    /// Sets the region and account used to build ARNs `acs:kms:<region>:<account>:key/<id>`
    /// (and `Creator`). Defaults: `local`, `envseal`.
    pub fn set_arn_scope(&mut self, region: &str, account: &str) {
        self.region = region.to_string();
        self.account = account.to_string();
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    pub fn account(&self) -> &str {
        &self.account
    }

    /// The ARN of a key id (`acs:kms:<region>:<account>:key/<id>`).
    pub fn key_arn(&self, key_id: &str) -> String {
        format!("acs:kms:{}:{}:key/{key_id}", self.region, self.account)
    }

    /// The ARN of an alias (`acs:kms:<region>:<account>:alias/<name>`).
    pub fn alias_arn(&self, alias: &str) -> String {
        format!("acs:kms:{}:{}:{alias}", self.region, self.account)
    }

    /// Whether key material is sealed under a passphrase in this store.
    pub fn sealed(&self) -> bool {
        self.kek.is_some()
    }

    /// Creates an enabled `Aliyun_AES_256` key with one key version.
    pub fn create_key(&self, description: &str) -> Result<KeyMetadata, KmsError> {
        self.audited("CreateKey", "", || {
            let _lock = self.lock(true)?;
            self.purge_expired()?;
            let rec = self.create_key_locked(description)?;
            Ok((self.metadata(&rec), rec.key_id.clone()))
        })
    }

    /// Points a new alias (`alias/...`, not `alias/acs/...`) at a key.
    pub fn create_alias(&self, alias: &str, key: &str) -> Result<(), KmsError> {
        self.audited("CreateAlias", key, || {
            validate_alias(alias)?;
            let _lock = self.lock(true)?;
            self.purge_expired()?;
            let rec = self.find(key)?;
            let mut aliases = self.load_aliases()?;
            if aliases.contains_key(alias) {
                return Err(KmsError::new(
                    KmsErrorKind::InvalidArgument,
                    format!("AliasName Already Exists: {alias}"),
                )
                .with_code("AliasAlreadyExists"));
            }
            aliases.insert(alias.to_string(), rec.key_id.clone());
            self.save_aliases(&aliases)?;
            Ok(((), rec.key_id.clone()))
        })
    }

    /// Returns the key `alias` points to, first creating a key and the alias if the alias does
    /// not exist (in one locked step, so concurrent callers agree). The flag says whether it
    /// created them.
    pub fn ensure_alias_key(
        &self,
        alias: &str,
        description: &str,
    ) -> Result<(String, bool), KmsError> {
        validate_alias(alias).map_err(|e| self.tag(e))?;
        // The common case, the alias exists, needs only a shared lock.
        let exists = self.read_op(|| Ok(self.load_aliases()?.contains_key(alias)))?;
        if exists {
            return self.resolve(alias).map(|id| (id, false));
        }
        let created = self.audited("CreateKey", alias, || {
            let _lock = self.lock(true)?;
            self.purge_expired()?;
            let mut aliases = self.load_aliases()?;
            if let Some(id) = aliases.get(alias) {
                // Someone else created it between our two locks.
                return Ok((None, id.clone()));
            }
            let rec = self.create_key_locked(description)?;
            aliases.insert(alias.to_string(), rec.key_id.clone());
            self.save_aliases(&aliases)?;
            Ok((Some(rec.key_id.clone()), rec.key_id.clone()))
        })?;
        match created {
            Some(id) => Ok((id, true)),
            None => self.resolve(alias).map(|id| (id, false)),
        }
    }

    /// Resolves a key id, an alias name (`alias/...`) or an ARN (key or alias) to a key id.
    /// The region and account of an ARN are not compared with this store's: a store may be
    /// served under another scope than it was created with.
    pub fn resolve(&self, key: &str) -> Result<String, KmsError> {
        self.read_op(|| Ok(self.find(key)?.key_id.clone()))
    }

    pub fn describe_key(&self, key: &str) -> Result<KeyMetadata, KmsError> {
        self.read_op(|| Ok(self.metadata(&self.find(key)?)))
    }

    /// All keys (except those whose deletion date has passed), oldest first.
    pub fn list_keys(&self) -> Result<Vec<KeyMetadata>, KmsError> {
        self.tagged(|| {
            let _lock = self.lock(true)?;
            self.purge_expired()?;
            let mut recs = self.all_keys()?;
            recs.sort_by(|a, b| (a.created, &a.key_id).cmp(&(b.created, &b.key_id)));
            Ok(recs.iter().map(|r| self.metadata(r)).collect())
        })
    }

    /// All aliases, sorted by name.
    pub fn list_aliases(&self) -> Result<Vec<AliasEntry>, KmsError> {
        self.tagged(|| {
            let _lock = self.lock(true)?;
            self.purge_expired()?;
            Ok(self
                .load_aliases()?
                .into_iter()
                .map(|(alias, key_id)| AliasEntry {
                    alias_arn: self.alias_arn(&alias),
                    alias_name: alias,
                    key_id,
                })
                .collect())
        })
    }

    pub fn enable_key(&self, key: &str) -> Result<(), KmsError> {
        self.set_state("EnableKey", key, KeyState::Enabled, None)
    }

    pub fn disable_key(&self, key: &str) -> Result<(), KmsError> {
        self.set_state("DisableKey", key, KeyState::Disabled, None)
    }

    /// Marks a key `PendingDeletion`; after `pending_days` (7..=366) it is deleted for good.
    pub fn schedule_key_deletion(&self, key: &str, pending_days: u32) -> Result<(), KmsError> {
        if !PENDING_DAYS.contains(&pending_days) {
            return Err(self.tag(invalid_parameter(
                "PendingWindowInDays",
                &format!(
                    "{pending_days} is outside {}..={}",
                    PENDING_DAYS.start(),
                    PENDING_DAYS.end()
                ),
            )));
        }
        let at = now() + i64::from(pending_days) * 86_400;
        self.set_state(
            "ScheduleKeyDeletion",
            key,
            KeyState::PendingDeletion,
            Some(at),
        )
    }

    /// Encrypts arbitrary bytes (≤ 6 KiB) under the key's primary version, bound to `context`.
    pub fn encrypt(
        &self,
        key: &str,
        plaintext: &[u8],
        context: &EncryptionContext,
    ) -> Result<Sealed, KmsError> {
        self.audited("Encrypt", key, || {
            if plaintext.len() > MAX_PLAINTEXT_LEN {
                return Err(invalid_parameter(
                    "Plaintext",
                    &format!("{} bytes is more than {MAX_PLAINTEXT_LEN}", plaintext.len()),
                ));
            }
            let sealed = self.encrypt_inner(key, plaintext, context)?;
            let id = sealed.key_id.clone();
            Ok((sealed, id))
        })
    }

    /// Decrypts a blob made by `encrypt` (the blob names its key version); the context must be
    /// equal to the one used when encrypting.
    pub fn decrypt(&self, blob: &[u8], context: &EncryptionContext) -> Result<Opened, KmsError> {
        self.audited("Decrypt", "", || {
            if blob.len() < UUID_LEN + NONCE_LEN + TAG_LEN {
                return Err(invalid_ciphertext());
            }
            let version_id =
                std::str::from_utf8(&blob[..UUID_LEN]).map_err(|_| invalid_ciphertext())?;
            if !is_uuid(version_id) {
                return Err(invalid_ciphertext());
            }
            let _lock = self.lock(false)?;
            let key_id = self
                .load_versions()?
                .remove(version_id)
                .ok_or_else(|| key_not_found(version_id))?;
            let rec = self.load_key(&key_id)?;
            usable(&rec)?;
            let material = self.material(&rec, version_id)?;
            let aad = blob_aad(version_id, context);
            let plaintext =
                aead_open(&material, &aad, &blob[UUID_LEN..]).ok_or_else(invalid_ciphertext)?;
            let opened = Opened {
                key_id: key_id.clone(),
                key_version_id: version_id.to_string(),
                plaintext,
            };
            Ok((opened, key_id))
        })
    }

    /// `GenerateDataKey` semantics of Alibaba KMS: `n` random bytes; the blob wraps the BASE64
    /// TEXT of those bytes (so `Decrypt` returns that same base64 text as `Plaintext`). Returns
    /// the raw bytes (zeroizing) and the Sealed blob.
    pub fn generate_data_key(
        &self,
        key: &str,
        n: usize,
        context: &EncryptionContext,
    ) -> Result<(Zeroizing<Vec<u8>>, Sealed), KmsError> {
        self.audited("GenerateDataKey", key, || {
            if n == 0 || n > MAX_DATA_KEY_BYTES {
                return Err(invalid_parameter(
                    "NumberOfBytes",
                    &format!("{n} is outside 1..={MAX_DATA_KEY_BYTES}"),
                ));
            }
            let raw = random_bytes(n)?;
            let text = Zeroizing::new(B64.encode(&raw[..]));
            let sealed = self.encrypt_inner(key, text.as_bytes(), context)?;
            let id = sealed.key_id.clone();
            Ok(((raw, sealed), id))
        })
    }

    // ---- internals ----

    fn encrypt_inner(
        &self,
        key: &str,
        plaintext: &[u8],
        context: &EncryptionContext,
    ) -> Result<Sealed, KmsError> {
        let _lock = self.lock(false)?;
        let rec = self.find(key)?;
        usable(&rec)?;
        let version_id = rec.primary_version.clone();
        let material = self.material(&rec, &version_id)?;
        let aad = blob_aad(&version_id, context);
        let mut blob = version_id.clone().into_bytes();
        blob.extend_from_slice(&aead_seal(&material, &aad, plaintext)?);
        Ok(Sealed {
            key_id: rec.key_id.clone(),
            key_version_id: version_id,
            blob,
        })
    }

    fn set_state(
        &self,
        op: &str,
        key: &str,
        state: KeyState,
        delete_at: Option<i64>,
    ) -> Result<(), KmsError> {
        self.audited(op, key, || {
            let _lock = self.lock(true)?;
            self.purge_expired()?;
            let mut rec = self.find(key)?;
            // Alibaba: no state change leaves PendingDeletion (there is no cancel here).
            if rec.state == KeyState::PendingDeletion {
                return Err(KmsError::new(
                    KmsErrorKind::InvalidArgument,
                    format!(
                        "Keystate modified failed: key {} is PendingDeletion",
                        rec.key_id
                    ),
                )
                .with_code("Rejected.StateModifiedFailed"));
            }
            if rec.state != state || delete_at.is_some() {
                rec.state = state;
                rec.delete_at = delete_at;
                self.save_key(&rec)?;
            }
            Ok(((), rec.key_id.clone()))
        })
    }

    fn create_key_locked(&self, description: &str) -> Result<KeyRecord, KmsError> {
        let key_id = new_uuid()?;
        let version_id = new_uuid()?;
        let created = now();
        let rec = KeyRecord {
            description: description.to_string(),
            created,
            state: KeyState::Enabled,
            delete_at: None,
            primary_version: version_id.clone(),
            versions: vec![VersionRecord {
                material: self.new_material(&key_id, &version_id)?,
                id: version_id.clone(),
                created,
            }],
            key_id,
        };
        // Index first: a crash between the two writes leaves a harmless dangling entry,
        // never a key whose blobs cannot be found.
        let mut versions = self.load_versions()?;
        versions.insert(version_id, rec.key_id.clone());
        self.save_versions(&versions)?;
        self.save_key(&rec)?;
        Ok(rec)
    }

    /// Resolves `key` (id, alias, ARN) and loads the key; call with the lock held.
    fn find(&self, key: &str) -> Result<KeyRecord, KmsError> {
        let target = match key.strip_prefix("acs:kms:") {
            Some(rest) => {
                // <region>:<account>:<resource>
                let mut parts = rest.splitn(3, ':');
                let resource = match (parts.next(), parts.next(), parts.next()) {
                    (Some(_), Some(_), Some(r)) => r,
                    _ => {
                        return Err(invalid_parameter(
                            "KeyId",
                            &format!("{key:?} is not a KMS ARN"),
                        ))
                    }
                };
                if let Some(id) = resource.strip_prefix("key/") {
                    id.to_string()
                } else if resource.starts_with("alias/") {
                    self.alias_target(resource)?
                } else {
                    return Err(invalid_parameter(
                        "KeyId",
                        &format!("{key:?} names neither a key nor an alias"),
                    ));
                }
            }
            None if key.starts_with("alias/") => self.alias_target(key)?,
            None => key.to_string(),
        };
        self.load_key(&target)
    }

    fn alias_target(&self, alias: &str) -> Result<String, KmsError> {
        self.load_aliases()?.remove(alias).ok_or_else(|| {
            KmsError::new(
                KmsErrorKind::NotFound,
                format!("The specified Alias is not found: {alias}"),
            )
            .with_code("Forbidden.AliasNotFound")
        })
    }

    /// Loads a key by id; keys past their deletion date are not found.
    fn load_key(&self, key_id: &str) -> Result<KeyRecord, KmsError> {
        match self.read_key(key_id)? {
            Some(rec) if !rec.expired(now()) => Ok(rec),
            _ => Err(key_not_found(key_id)),
        }
    }

    fn read_key(&self, key_id: &str) -> Result<Option<KeyRecord>, KmsError> {
        // The id becomes a file name: only UUIDs may reach the file system.
        if !is_uuid(key_id) {
            return Ok(None);
        }
        let path = self.key_path(key_id);
        let rec: Option<KeyRecord> = self.read_json(&path)?;
        if let Some(r) = &rec {
            if r.key_id != key_id {
                return Err(corrupt(
                    &path,
                    "the key id inside differs from the file name",
                ));
            }
        }
        Ok(rec)
    }

    fn all_keys(&self) -> Result<Vec<KeyRecord>, KmsError> {
        let dir = self.dir.join("keys");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| io_error(&dir, e))? {
            let entry = entry.map_err(|e| io_error(&dir, e))?;
            let name = entry.file_name();
            // Skips temp files and anything else that is not `<uuid>.json`.
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            if let Some(rec) = self.read_key(id)? {
                out.push(rec);
            }
        }
        Ok(out)
    }

    /// Deletes keys whose deletion date has passed, with their aliases and versions; call with
    /// the exclusive lock held.
    fn purge_expired(&self) -> Result<(), KmsError> {
        let now = now();
        let expired: Vec<KeyRecord> = self
            .all_keys()?
            .into_iter()
            .filter(|r| r.expired(now))
            .collect();
        if expired.is_empty() {
            return Ok(());
        }
        let mut aliases = self.load_aliases()?;
        let mut versions = self.load_versions()?;
        for rec in &expired {
            aliases.retain(|_, id| *id != rec.key_id);
            versions.retain(|_, id| *id != rec.key_id);
        }
        self.save_aliases(&aliases)?;
        self.save_versions(&versions)?;
        for rec in &expired {
            let path = self.key_path(&rec.key_id);
            fs::remove_file(&path).map_err(|e| io_error(&path, e))?;
            log::info!("deleted key {} (its deletion date has passed)", rec.key_id);
        }
        Ok(())
    }

    fn metadata(&self, rec: &KeyRecord) -> KeyMetadata {
        let rotated = rec
            .versions
            .iter()
            .find(|v| v.id == rec.primary_version)
            .map_or(rec.created, |v| v.created);
        KeyMetadata {
            key_id: rec.key_id.clone(),
            arn: self.key_arn(&rec.key_id),
            creation_date: format_time(rec.created),
            creator: self.account.clone(),
            description: rec.description.clone(),
            key_spec: KEY_SPEC.into(),
            key_usage: KEY_USAGE.into(),
            key_state: rec.state.as_str().into(),
            origin: ORIGIN.into(),
            protection_level: PROTECTION_LEVEL.into(),
            primary_key_version: rec.primary_version.clone(),
            last_rotation_date: format_time(rotated),
            automatic_rotation: AUTOMATIC_ROTATION.into(),
            delete_date: rec.delete_at.map(format_time).unwrap_or_default(),
            material_expire_time: String::new(),
        }
    }

    /// New key material as stored in a version record.
    fn new_material(&self, key_id: &str, version_id: &str) -> Result<String, KmsError> {
        let material = random_bytes(MATERIAL_LEN)?;
        Ok(match &self.kek {
            Some(kek) => B64.encode(aead_seal(
                kek,
                &material_aad(key_id, version_id),
                &material,
            )?),
            None => B64.encode(&material[..]),
        })
    }

    fn material(&self, rec: &KeyRecord, version_id: &str) -> Result<Zeroizing<[u8; 32]>, KmsError> {
        let path = self.key_path(&rec.key_id);
        let version = rec
            .versions
            .iter()
            .find(|v| v.id == version_id)
            .ok_or_else(|| key_not_found(version_id))?;
        let decoded = Zeroizing::new(
            B64.decode(&version.material)
                .map_err(|_| corrupt(&path, "key material is not base64"))?,
        );
        let raw = match &self.kek {
            Some(kek) => aead_open(kek, &material_aad(&rec.key_id, version_id), &decoded)
                .ok_or_else(|| {
                    corrupt(
                        &path,
                        "key material does not open under this store's passphrase",
                    )
                })?,
            None => decoded,
        };
        let arr: [u8; 32] = raw[..]
            .try_into()
            .map_err(|_| corrupt(&path, "key material is not 32 bytes"))?;
        Ok(Zeroizing::new(arr))
    }

    fn key_path(&self, key_id: &str) -> PathBuf {
        self.dir.join("keys").join(format!("{key_id}.json"))
    }

    fn save_key(&self, rec: &KeyRecord) -> Result<(), KmsError> {
        self.write_json(&self.key_path(&rec.key_id), rec)
    }

    fn load_aliases(&self) -> Result<BTreeMap<String, String>, KmsError> {
        Ok(self
            .read_json(&self.dir.join("aliases.json"))?
            .unwrap_or_default())
    }

    fn save_aliases(&self, aliases: &BTreeMap<String, String>) -> Result<(), KmsError> {
        self.write_json(&self.dir.join("aliases.json"), aliases)
    }

    fn load_versions(&self) -> Result<BTreeMap<String, String>, KmsError> {
        Ok(self
            .read_json(&self.dir.join("versions.json"))?
            .unwrap_or_default())
    }

    fn save_versions(&self, versions: &BTreeMap<String, String>) -> Result<(), KmsError> {
        self.write_json(&self.dir.join("versions.json"), versions)
    }

    /// Reads a JSON file; `None` when it does not exist.
    fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &Path,
    ) -> Result<Option<T>, KmsError> {
        let bytes = match fs::read(path) {
            Ok(b) => Zeroizing::new(b),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error(path, e)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| corrupt(path, e))
    }

    /// Writes a JSON file atomically: temp file (0600), fsync, rename, fsync of the directory.
    fn write_json<T: Serialize>(&self, path: &Path, value: &T) -> Result<(), KmsError> {
        let bytes =
            Zeroizing::new(serde_json::to_vec_pretty(value).map_err(|e| {
                KmsError::new(KmsErrorKind::Io, format!("{}: {e}", path.display()))
            })?);
        write_atomic(path, &bytes).map_err(|e| io_error(path, e))
    }

    fn lock(&self, exclusive: bool) -> Result<Lock, KmsError> {
        let path = self.dir.join(".lock");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io_error(&path, e))?;
        let op = if exclusive {
            FlockOperation::LockExclusive
        } else {
            FlockOperation::LockShared
        };
        // Each call opens its own descriptor, so threads of one process exclude each other too.
        loop {
            match rustix::fs::flock(&file, op) {
                Ok(()) => return Ok(Lock { _file: file }),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(io_error(&path, e.into())),
            }
        }
    }

    /// Runs a data-plane or state-changing operation and appends its audit line. `key_hint`
    /// names the key in the audit line when the operation fails before resolving it.
    fn audited<T>(
        &self,
        op: &str,
        key_hint: &str,
        f: impl FnOnce() -> Result<(T, String), KmsError>,
    ) -> Result<T, KmsError> {
        let result = f();
        let audit = match &result {
            Ok((_, key_id)) => self.audit(op, key_id, None),
            Err(e) => self.audit(op, key_hint, Some(e.code.as_deref().unwrap_or("Error"))),
        };
        match (result, audit) {
            (Ok((value, _)), Ok(())) => Ok(value),
            (Ok(_), Err(e)) => Err(self.tag(e)),
            (Err(e), audit) => {
                if let Err(a) = audit {
                    log::warn!("{a}");
                }
                Err(self.tag(e))
            }
        }
    }

    fn read_op<T>(&self, f: impl FnOnce() -> Result<T, KmsError>) -> Result<T, KmsError> {
        self.tagged(|| {
            let _lock = self.lock(false)?;
            f()
        })
    }

    fn tagged<T>(&self, f: impl FnOnce() -> Result<T, KmsError>) -> Result<T, KmsError> {
        f().map_err(|e| self.tag(e))
    }

    /// Adds the store directory as the error's endpoint.
    fn tag(&self, e: KmsError) -> KmsError {
        if e.endpoint.is_some() {
            e
        } else {
            e.with_endpoint(self.dir.display().to_string())
        }
    }

    fn audit(&self, op: &str, key_id: &str, error: Option<&str>) -> Result<(), KmsError> {
        #[derive(Serialize)]
        struct Line<'a> {
            time: String,
            op: &'a str,
            key_id: &'a str,
            ok: bool,
            #[serde(skip_serializing_if = "Option::is_none")]
            error: Option<&'a str>,
        }
        let line = Line {
            time: format_time(now()),
            op,
            key_id,
            ok: error.is_none(),
            error,
        };
        let mut text = serde_json::to_string(&line)
            .map_err(|e| KmsError::new(KmsErrorKind::Io, format!("audit line: {e}")))?;
        text.push('\n');
        let path = self.dir.join("audit.jsonl");
        // One write(2) with O_APPEND: concurrent writers never interleave within a line.
        OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(|e| io_error(&path, e))
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut suffix = [0u8; 8];
    getrandom::getrandom(&mut suffix).map_err(|e| io::Error::other(e.to_string()))?;
    let tmp = dir.join(format!(".{name}.tmp-{}", hex::encode(suffix)));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        // Best effort: the temp file may not exist; the original error is what matters.
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn unlock(
    seal: &SealParams,
    passphrase: &str,
    path: &Path,
) -> Result<Zeroizing<[u8; 32]>, KmsError> {
    if seal.kdf != "argon2id"
        || seal.m_cost > ARGON2_MAX_M_KIB
        || seal.t_cost > ARGON2_MAX_T
        || seal.p_cost > ARGON2_MAX_P
    {
        return Err(corrupt(
            path,
            "unsupported or out-of-range key derivation parameters",
        ));
    }
    let salt = B64
        .decode(&seal.salt)
        .map_err(|_| corrupt(path, "salt is not base64"))?;
    let check = B64
        .decode(&seal.check)
        .map_err(|_| corrupt(path, "check value is not base64"))?;
    let kek = derive_kek(passphrase, &salt, seal.m_cost, seal.t_cost, seal.p_cost)?;
    if aead_open(&kek, CHECK_LABEL, &check).is_none() {
        return Err(KmsError::new(
            KmsErrorKind::Passphrase,
            format!(
                "wrong passphrase for the key store in {}; set ENVSEAL_PASSPHRASE to the passphrase the store was created with",
                path.parent().unwrap_or(path).display()
            ),
        ));
    }
    Ok(kek)
}

fn derive_kek(
    passphrase: &str,
    salt: &[u8],
    m: u32,
    t: u32,
    p: u32,
) -> Result<Zeroizing<[u8; 32]>, KmsError> {
    let bad = |e: argon2::Error| {
        KmsError::new(
            KmsErrorKind::Io,
            format!("key store passphrase derivation failed: {e}"),
        )
    };
    let params = argon2::Params::new(m, t, p, Some(32)).map_err(bad)?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut kek = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(passphrase.as_bytes(), salt, &mut kek[..])
        .map_err(bad)?;
    Ok(kek)
}

/// `nonce ‖ ciphertext ‖ tag` under `key` with a random nonce (AES-256-GCM of src/crypto/aead.rs, the
/// one backend the build chose).
fn aead_seal(key: &[u8; 32], aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, KmsError> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::getrandom(&mut nonce).map_err(no_random)?;
    let cipher = Aes256Gcm::new(&Zeroizing::new(*key));
    let mut body = Zeroizing::new(plaintext.to_vec());
    let tag = cipher
        .seal_in_place(&nonce, aad, &mut body[..])
        .map_err(|_| KmsError::new(KmsErrorKind::Io, "AES-GCM seal failed"))?;
    Ok([&nonce[..], &body[..], &tag[..]].concat())
}

/// Opens `nonce ‖ ciphertext ‖ tag`; `None` when it does not authenticate.
fn aead_open(key: &[u8; 32], aad: &[u8], sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return None;
    }
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
    let cipher = Aes256Gcm::new(&Zeroizing::new(*key));
    let mut buf = Zeroizing::new(body.to_vec());
    let len = cipher.open_in_place(&nonce, aad, &mut buf[..]).ok()?.len();
    buf.truncate(len);
    Some(buf)
}

fn blob_aad(version_id: &str, context: &EncryptionContext) -> Vec<u8> {
    [
        BLOB_LABEL,
        version_id.as_bytes(),
        context.to_json().as_bytes(),
    ]
    .concat()
}

fn material_aad(key_id: &str, version_id: &str) -> Vec<u8> {
    [MATERIAL_LABEL, key_id.as_bytes(), version_id.as_bytes()].concat()
}

fn random_bytes(n: usize) -> Result<Zeroizing<Vec<u8>>, KmsError> {
    let mut buf = Zeroizing::new(vec![0u8; n]);
    getrandom::getrandom(&mut buf[..]).map_err(no_random)?;
    Ok(buf)
}

fn no_random(e: getrandom::Error) -> KmsError {
    KmsError::new(
        KmsErrorKind::Io,
        format!("the operating system's random source failed: {e}"),
    )
}

/// A random (version 4) UUID, lowercase `8-4-4-4-12` hex.
fn new_uuid() -> Result<String, KmsError> {
    let mut b = [0u8; 16];
    getrandom::getrandom(&mut b).map_err(no_random)?;
    Ok(uuid::Builder::from_random_bytes(b)
        .into_uuid()
        .hyphenated()
        .to_string())
}

/// Lowercase `8-4-4-4-12` hex, the only key and version id shape this store makes (ids name
/// files, so nothing else may pass: no other UUID spelling, no path).
fn is_uuid(s: &str) -> bool {
    s.len() == UUID_LEN && uuid::Uuid::try_parse(s).is_ok_and(|u| u.hyphenated().to_string() == s)
}

/// Alibaba's alias rules: `alias/` then 1..=255 of `[A-Za-z0-9_/-]`, not `alias/acs/...`.
pub fn validate_alias(alias: &str) -> Result<(), KmsError> {
    let bad = |why: &str| invalid_parameter("AliasName", &format!("{alias:?} {why}"));
    let Some(name) = alias.strip_prefix("alias/") else {
        return Err(bad("must start with alias/"));
    };
    if name.is_empty() || name.len() > 255 {
        return Err(bad("must have 1 to 255 characters after alias/"));
    }
    if !name
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'/' | b'-'))
    {
        return Err(bad("may only contain letters, digits, '_', '/' and '-'"));
    }
    if name.starts_with('/') || name.ends_with('/') || name.contains("//") {
        return Err(bad("has an empty path segment"));
    }
    if name == "acs" || name.starts_with("acs/") {
        return Err(bad(
            "is reserved (alias/acs/ belongs to Alibaba Cloud services)",
        ));
    }
    Ok(())
}

fn usable(rec: &KeyRecord) -> Result<(), KmsError> {
    match rec.state {
        KeyState::Enabled => Ok(()),
        KeyState::Disabled => Err(KmsError::new(
            KmsErrorKind::Disabled,
            format!(
                "The request was rejected because the key state is Disabled: {}",
                rec.key_id
            ),
        )
        .with_code("Rejected.Disabled")),
        KeyState::PendingDeletion => Err(KmsError::new(
            KmsErrorKind::Disabled,
            format!(
                "The request was rejected because the key state is PendingDeletion: {}",
                rec.key_id
            ),
        )
        .with_code("Rejected.PendingDeletion")),
    }
}

fn key_not_found(key: &str) -> KmsError {
    KmsError::new(
        KmsErrorKind::NotFound,
        format!("The specified Key is not found: {key}"),
    )
    .with_code("Forbidden.KeyNotFound")
}

fn invalid_parameter(name: &str, why: &str) -> KmsError {
    KmsError::new(
        KmsErrorKind::InvalidArgument,
        format!("The specified parameter \"{name}\" is not valid: {why}"),
    )
    .with_code("InvalidParameter")
}

/// The error for a `CiphertextBlob` that is not base64, not ours, tampered with, or bound to another
/// context (Alibaba documents no code for it; `InvalidParameter` is what clients see).
pub fn invalid_ciphertext() -> KmsError {
    // Deliberately coarse: no hint whether the context, the key or the bytes were wrong.
    KmsError::new(
        KmsErrorKind::InvalidCiphertext,
        "The specified parameter \"CiphertextBlob\" is not valid.",
    )
    .with_code("InvalidParameter")
}

/// Decodes a `CiphertextBlob` as sent on the wire: standard base64, ASCII whitespace ignored
/// (the documented Alibaba sample sends it with a trailing newline).
pub fn decode_blob(text: &str) -> Result<Vec<u8>, KmsError> {
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    B64.decode(compact).map_err(|_| invalid_ciphertext())
}

/// Encodes a blob for the wire (standard base64).
pub fn encode_blob(blob: &[u8]) -> String {
    B64.encode(blob)
}

fn io_error(path: &Path, e: io::Error) -> KmsError {
    KmsError::new(KmsErrorKind::Io, format!("{}: {e}", path.display()))
}

fn corrupt(path: &Path, why: impl std::fmt::Display) -> KmsError {
    KmsError::new(
        KmsErrorKind::Io,
        format!("{}: damaged key store file: {why}", path.display()),
    )
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// `YYYY-MM-DDThh:mm:ssZ`, as Alibaba KMS prints times.
fn format_time(unix: i64) -> String {
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(fmt).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(v: &str) -> EncryptionContext {
        EncryptionContext::for_batch(v, "b1")
    }

    fn store() -> (tempfile::TempDir, KeyStore) {
        let t = tempfile::tempdir().unwrap();
        let s = KeyStore::open(&t.path().join("ks"), None).unwrap();
        (t, s)
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn metadata_looks_like_alibaba() {
        let (_t, s) = store();
        let m = s.create_key("first").unwrap();
        assert!(is_uuid(&m.key_id), "{}", m.key_id);
        assert_eq!(&m.key_id[14..15], "4", "UUID v4");
        assert_eq!(m.arn, format!("acs:kms:local:envseal:key/{}", m.key_id));
        assert_eq!(m.key_spec, "Aliyun_AES_256");
        assert_eq!(m.key_usage, "ENCRYPT/DECRYPT");
        assert_eq!(m.key_state, "Enabled");
        assert_eq!(m.origin, "Aliyun_KMS");
        assert_eq!(m.protection_level, "SOFTWARE");
        assert_eq!(m.automatic_rotation, "Disabled");
        assert_eq!(m.creator, "envseal");
        assert_eq!(m.description, "first");
        assert_eq!(m.delete_date, "");
        assert!(is_uuid(&m.primary_key_version));
        let d = &m.creation_date;
        assert_eq!(d.len(), 20, "{d}");
        assert!(d.ends_with('Z') && &d[10..11] == "T", "{d}");
        let mut s = s;
        s.set_arn_scope("cn-hangzhou", "1540");
        let m2 = s.describe_key(&m.key_id).unwrap();
        assert_eq!(m2.arn, format!("acs:kms:cn-hangzhou:1540:key/{}", m.key_id));
        assert_eq!(m2.creator, "1540");
    }

    #[test]
    fn round_trip_and_context_binding() {
        let (_t, s) = store();
        let id = s.create_key("").unwrap().key_id;
        let sealed = s.encrypt(&id, b"hello pem", &ctx("v1")).unwrap();
        assert_eq!(sealed.key_id, id);
        assert_eq!(&sealed.blob[..36], sealed.key_version_id.as_bytes());
        assert_eq!(sealed.blob.len(), 36 + 12 + 9 + 16);
        let opened = s.decrypt(&sealed.blob, &ctx("v1")).unwrap();
        assert_eq!(&opened.plaintext[..], b"hello pem");
        assert_eq!(opened.key_id, id);
        assert_eq!(opened.key_version_id, sealed.key_version_id);

        let e = s.decrypt(&sealed.blob, &ctx("v2")).err().unwrap();
        assert_eq!(e.kind, KmsErrorKind::InvalidCiphertext);
        assert_eq!(e.code.as_deref(), Some("InvalidParameter"));
        let e = s
            .decrypt(&sealed.blob, &EncryptionContext::default())
            .err()
            .unwrap();
        assert_eq!(e.kind, KmsErrorKind::InvalidCiphertext);

        // Empty context works too and stays bound to "empty".
        let sealed = s.encrypt(&id, b"x", &EncryptionContext::default()).unwrap();
        assert!(s
            .decrypt(&sealed.blob, &EncryptionContext::default())
            .is_ok());
        assert!(s.decrypt(&sealed.blob, &ctx("v1")).is_err());
    }

    #[test]
    fn tampered_and_garbage_blobs_are_rejected() {
        let (_t, s) = store();
        let id = s.create_key("").unwrap().key_id;
        let blob = s.encrypt(&id, b"secret", &ctx("v")).unwrap().blob;
        for i in [40, 50, blob.len() - 1] {
            let mut bad = blob.clone();
            bad[i] ^= 1;
            let e = s.decrypt(&bad, &ctx("v")).err().unwrap();
            assert_eq!(e.kind, KmsErrorKind::InvalidCiphertext, "byte {i}");
        }
        assert_eq!(
            s.decrypt(&blob[..blob.len() - 1], &ctx("v"))
                .err()
                .unwrap()
                .kind,
            KmsErrorKind::InvalidCiphertext
        );
        assert_eq!(
            s.decrypt(b"short", &ctx("v")).err().unwrap().kind,
            KmsErrorKind::InvalidCiphertext
        );
        // A well-formed but unknown key version: the key is not found.
        let mut other = blob.clone();
        other[..36].copy_from_slice(new_uuid().unwrap().as_bytes());
        assert_eq!(
            s.decrypt(&other, &ctx("v")).err().unwrap().code.as_deref(),
            Some("Forbidden.KeyNotFound")
        );
        // A blob from another store's key does not open here.
        let (_t2, s2) = store();
        let id2 = s2.create_key("").unwrap().key_id;
        let foreign = s2.encrypt(&id2, b"secret", &ctx("v")).unwrap().blob;
        assert!(s.decrypt(&foreign, &ctx("v")).is_err());
    }

    #[test]
    fn generate_data_key_wraps_base64_text() {
        let (_t, s) = store();
        let id = s.create_key("").unwrap().key_id;
        let (raw, sealed) = s.generate_data_key(&id, 32, &ctx("v")).unwrap();
        assert_eq!(raw.len(), 32);
        let opened = s.decrypt(&sealed.blob, &ctx("v")).unwrap();
        assert_eq!(&opened.plaintext[..], B64.encode(&raw[..]).as_bytes());
        let (raw2, _) = s.generate_data_key(&id, 32, &ctx("v")).unwrap();
        assert_ne!(&raw[..], &raw2[..]);
        for n in [0, 1025] {
            let e = s.generate_data_key(&id, n, &ctx("v")).err().unwrap();
            assert_eq!(e.code.as_deref(), Some("InvalidParameter"), "{n}");
        }
        assert_eq!(
            s.generate_data_key(&id, 1024, &ctx("v")).unwrap().0.len(),
            1024
        );
    }

    #[test]
    fn plaintext_limit() {
        let (_t, s) = store();
        let id = s.create_key("").unwrap().key_id;
        assert!(s.encrypt(&id, &[7; MAX_PLAINTEXT_LEN], &ctx("v")).is_ok());
        let e = s
            .encrypt(&id, &[7; MAX_PLAINTEXT_LEN + 1], &ctx("v"))
            .err()
            .unwrap();
        assert_eq!(e.kind, KmsErrorKind::InvalidArgument);
        assert_eq!(e.code.as_deref(), Some("InvalidParameter"));
    }

    #[test]
    fn key_states() {
        let (_t, s) = store();
        let id = s.create_key("").unwrap().key_id;
        let blob = s.encrypt(&id, b"x", &ctx("v")).unwrap().blob;

        s.disable_key(&id).unwrap();
        assert_eq!(s.describe_key(&id).unwrap().key_state, "Disabled");
        for e in [
            s.encrypt(&id, b"x", &ctx("v")).err().unwrap(),
            s.decrypt(&blob, &ctx("v")).err().unwrap(),
            s.generate_data_key(&id, 32, &ctx("v")).err().unwrap(),
        ] {
            assert_eq!(e.kind, KmsErrorKind::Disabled);
            assert_eq!(e.code.as_deref(), Some("Rejected.Disabled"));
        }
        s.disable_key(&id).unwrap(); // idempotent
        s.enable_key(&id).unwrap();
        assert_eq!(&s.decrypt(&blob, &ctx("v")).unwrap().plaintext[..], b"x");

        for days in [6, 367] {
            let e = s.schedule_key_deletion(&id, days).err().unwrap();
            assert_eq!(e.code.as_deref(), Some("InvalidParameter"), "{days}");
        }
        s.schedule_key_deletion(&id, 7).unwrap();
        let m = s.describe_key(&id).unwrap();
        assert_eq!(m.key_state, "PendingDeletion");
        assert_eq!(m.delete_date, format_time(now() + 7 * 86_400));
        let e = s.decrypt(&blob, &ctx("v")).err().unwrap();
        assert_eq!(e.kind, KmsErrorKind::Disabled);
        assert_eq!(e.code.as_deref(), Some("Rejected.PendingDeletion"));
        for e in [
            s.enable_key(&id).err().unwrap(),
            s.disable_key(&id).err().unwrap(),
            s.schedule_key_deletion(&id, 30).err().unwrap(),
        ] {
            assert_eq!(e.kind, KmsErrorKind::InvalidArgument);
            assert_eq!(e.code.as_deref(), Some("Rejected.StateModifiedFailed"));
        }
    }

    #[test]
    fn expired_keys_are_deleted_with_their_aliases() {
        let (_t, s) = store();
        let id = s.create_key("").unwrap().key_id;
        s.create_alias("alias/gone", &id).unwrap();
        let blob = s.encrypt(&id, b"x", &ctx("v")).unwrap().blob;
        s.schedule_key_deletion(&id, 7).unwrap();
        // Move the deletion date into the past, as if the window had elapsed.
        let path = s.key_path(&id);
        let mut rec: KeyRecord = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        rec.delete_at = Some(now() - 1);
        s.write_json(&path, &rec).unwrap();

        assert_eq!(
            s.describe_key(&id).err().unwrap().kind,
            KmsErrorKind::NotFound
        );
        assert_eq!(
            s.decrypt(&blob, &ctx("v")).err().unwrap().kind,
            KmsErrorKind::NotFound
        );
        assert!(s.list_keys().unwrap().is_empty());
        assert!(s.list_aliases().unwrap().is_empty());
        assert!(!path.exists());
        // The alias name is free again.
        let id2 = s.create_key("").unwrap().key_id;
        s.create_alias("alias/gone", &id2).unwrap();
    }

    #[test]
    fn aliases_resolve_by_id_alias_and_arn() {
        let (_t, s) = store();
        let id = s.create_key("").unwrap().key_id;
        s.create_alias("alias/Apollo/WorkKey", &id).unwrap();
        let arn = s.describe_key(&id).unwrap().arn;
        for k in [
            id.clone(),
            "alias/Apollo/WorkKey".to_string(),
            arn.clone(),
            "acs:kms:cn-hangzhou:1540:alias/Apollo/WorkKey".to_string(),
        ] {
            assert_eq!(s.resolve(&k).unwrap(), id, "{k}");
        }
        // An alias can be made from an ARN or another alias too.
        s.create_alias("alias/second", &arn).unwrap();
        s.create_alias("alias/third", "alias/second").unwrap();
        let sealed = s.encrypt("alias/third", b"x", &ctx("v")).unwrap();
        assert_eq!(sealed.key_id, id);

        let aliases = s.list_aliases().unwrap();
        assert_eq!(aliases.len(), 3);
        assert_eq!(aliases[0].alias_name, "alias/Apollo/WorkKey");
        assert_eq!(
            aliases[0].alias_arn,
            "acs:kms:local:envseal:alias/Apollo/WorkKey"
        );
        assert!(aliases.iter().all(|a| a.key_id == id));

        let e = s.create_alias("alias/second", &id).err().unwrap();
        assert_eq!(e.code.as_deref(), Some("AliasAlreadyExists"));
        assert_eq!(e.kind, KmsErrorKind::InvalidArgument);
        for bad in [
            "second",
            "alias/",
            "alias/acs/x",
            "alias/a b",
            "alias//x",
            "alias/x/",
        ] {
            let e = s.create_alias(bad, &id).err().unwrap();
            assert_eq!(e.code.as_deref(), Some("InvalidParameter"), "{bad}");
        }
        let e = s.resolve("alias/nope").err().unwrap();
        assert_eq!(e.code.as_deref(), Some("Forbidden.AliasNotFound"));
        assert!(e.message.contains("alias/nope"));
        for missing in [
            new_uuid().unwrap(),
            "../../etc/passwd".to_string(),
            String::new(),
        ] {
            let e = s.resolve(&missing).err().unwrap();
            assert_eq!(e.kind, KmsErrorKind::NotFound, "{missing}");
            assert_eq!(e.code.as_deref(), Some("Forbidden.KeyNotFound"));
        }
        let e = s.create_alias("alias/x", "nokey").err().unwrap();
        assert_eq!(e.code.as_deref(), Some("Forbidden.KeyNotFound"));
        assert_eq!(
            s.resolve("acs:kms:x").err().unwrap().code.as_deref(),
            Some("InvalidParameter")
        );
    }

    #[test]
    fn ensure_alias_key_creates_once() {
        let (_t, s) = store();
        let (id, created) = s.ensure_alias_key("alias/envseal/default", "d").unwrap();
        assert!(created);
        let (id2, created2) = s.ensure_alias_key("alias/envseal/default", "d").unwrap();
        assert!(!created2);
        assert_eq!(id, id2);
        assert_eq!(s.list_keys().unwrap().len(), 1);
    }

    #[test]
    fn sealed_store_needs_the_right_passphrase() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("ks");
        assert!(!KeyStore::is_sealed(&dir).unwrap());
        let s = KeyStore::open(&dir, Some("correct horse")).unwrap();
        assert!(s.sealed());
        assert!(KeyStore::is_sealed(&dir).unwrap());
        let id = s.create_key("").unwrap().key_id;
        let blob = s.encrypt(&id, b"x", &ctx("v")).unwrap().blob;
        // The material on disk is not the plain 32 bytes.
        let rec: KeyRecord = serde_json::from_slice(&fs::read(s.key_path(&id)).unwrap()).unwrap();
        assert_eq!(
            B64.decode(&rec.versions[0].material).unwrap().len(),
            NONCE_LEN + 32 + TAG_LEN
        );

        let again = KeyStore::open(&dir, Some("correct horse")).unwrap();
        assert_eq!(
            &again.decrypt(&blob, &ctx("v")).unwrap().plaintext[..],
            b"x"
        );

        let e = KeyStore::open(&dir, Some("wrong")).err().unwrap();
        assert_eq!(e.kind, KmsErrorKind::Passphrase);
        assert!(e.message.contains("ENVSEAL_PASSPHRASE"), "{}", e.message);
        for missing in [None, Some("")] {
            let e = KeyStore::open(&dir, missing).err().unwrap();
            assert_eq!(e.kind, KmsErrorKind::Passphrase);
            assert!(e.message.contains("ENVSEAL_PASSPHRASE"), "{}", e.message);
        }
    }

    #[test]
    fn unsealed_store_ignores_a_later_passphrase() {
        let (t, s) = store();
        let id = s.create_key("").unwrap().key_id;
        let blob = s.encrypt(&id, b"x", &ctx("v")).unwrap().blob;
        let again = KeyStore::open(&t.path().join("ks"), Some("late")).unwrap();
        assert!(!again.sealed());
        assert!(again.decrypt(&blob, &ctx("v")).is_ok());
    }

    #[test]
    fn files_are_private() {
        let (t, s) = store();
        let id = s.create_key("").unwrap().key_id;
        s.create_alias("alias/a", &id).unwrap();
        s.encrypt(&id, b"x", &ctx("v")).unwrap();
        let dir = t.path().join("ks");
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("keys")), 0o700);
        for f in [
            "store.json",
            "aliases.json",
            "versions.json",
            "audit.jsonl",
            ".lock",
        ] {
            assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
        }
        assert_eq!(mode(&s.key_path(&id)), 0o600);
        // Only the key file and no leftover temp files.
        let names: Vec<_> = fs::read_dir(dir.join("keys"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(format!("{id}.json"))]);
    }

    #[test]
    fn audit_log_records_operations_without_secrets() {
        let (t, s) = store();
        let id = s.create_key("").unwrap().key_id;
        let (raw, sealed) = s.generate_data_key(&id, 32, &ctx("v")).unwrap();
        s.decrypt(&sealed.blob, &ctx("v")).unwrap();
        let _ = s.decrypt(&sealed.blob, &ctx("other"));
        let text = fs::read_to_string(t.path().join("ks/audit.jsonl")).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let ops: Vec<_> = lines.iter().map(|l| l["op"].as_str().unwrap()).collect();
        assert_eq!(ops, ["CreateKey", "GenerateDataKey", "Decrypt", "Decrypt"]);
        assert!(lines[..3]
            .iter()
            .all(|l| l["ok"] == true && l["key_id"] == id.as_str()));
        assert_eq!(lines[3]["ok"], false);
        assert_eq!(lines[3]["error"], "InvalidParameter");
        assert!(!text.contains(&B64.encode(&raw[..])));
    }

    #[test]
    fn two_stores_on_one_dir_see_each_other() {
        let (t, a) = store();
        let b = KeyStore::open(&t.path().join("ks"), None).unwrap();
        let id = a.create_key("").unwrap().key_id;
        b.create_alias("alias/shared", &id).unwrap();
        assert_eq!(a.resolve("alias/shared").unwrap(), id);
        b.disable_key(&id).unwrap();
        assert_eq!(a.describe_key(&id).unwrap().key_state, "Disabled");
        a.enable_key(&id).unwrap();
        let blob = b.encrypt("alias/shared", b"x", &ctx("v")).unwrap().blob;
        assert_eq!(&a.decrypt(&blob, &ctx("v")).unwrap().plaintext[..], b"x");
    }

    #[test]
    fn concurrent_writers_lose_nothing() {
        let (t, a) = store();
        let dir = t.path().join("ks");
        std::thread::scope(|scope| {
            for i in 0..4 {
                let dir = dir.clone();
                scope.spawn(move || {
                    let s = KeyStore::open(&dir, None).unwrap();
                    for j in 0..5 {
                        let id = s.create_key("").unwrap().key_id;
                        s.create_alias(&format!("alias/t{i}/k{j}"), &id).unwrap();
                    }
                });
            }
        });
        assert_eq!(a.list_keys().unwrap().len(), 20);
        assert_eq!(a.list_aliases().unwrap().len(), 20);
    }

    #[test]
    fn store_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<KeyStore>();
    }

    /// Pins the documented blob layout by opening and making blobs with RustCrypto's `aes-gcm`
    /// directly (not through src/crypto/aead.rs), from the key material as it lies in an unsealed key
    /// file.
    #[test]
    fn blob_layout_matches_the_documentation() {
        use aes_gcm::aead::{Aead, KeyInit, Payload};
        let (_t, s) = store();
        let id = s.create_key("").unwrap().key_id;
        let file: serde_json::Value =
            serde_json::from_slice(&fs::read(s.key_path(&id)).unwrap()).unwrap();
        let version = file["primary_version"].as_str().unwrap().to_string();
        let material = B64
            .decode(file["versions"][0]["material"].as_str().unwrap())
            .unwrap();
        let key = aes_gcm::Aes256Gcm::new_from_slice(&material).unwrap();
        let c = ctx("v");
        let aad = [
            b"envseal-kms-blob-v1".as_slice(),
            version.as_bytes(),
            br#"{"envseal:batch":"b1","envseal:vault":"v"}"#,
        ]
        .concat();

        // Store -> by hand.
        let blob = s.encrypt(&id, b"pinned", &c).unwrap().blob;
        assert_eq!(&blob[..36], version.as_bytes());
        let plain = key
            .decrypt(
                aes_gcm::Nonce::from_slice(&blob[36..48]),
                Payload {
                    msg: &blob[48..],
                    aad: &aad,
                },
            )
            .unwrap();
        assert_eq!(plain, b"pinned");

        // By hand -> store.
        let nonce = [9u8; 12];
        let body = key
            .encrypt(
                aes_gcm::Nonce::from_slice(&nonce),
                Payload {
                    msg: b"made by hand",
                    aad: &aad,
                },
            )
            .unwrap();
        let blob = [version.as_bytes(), &nonce, &body].concat();
        assert_eq!(
            &s.decrypt(&blob, &c).unwrap().plaintext[..],
            b"made by hand"
        );
    }

    #[test]
    fn blob_text_tolerates_whitespace() {
        let text = encode_blob(b"some blob bytes");
        assert_eq!(
            decode_blob(&format!("{text}\n")).unwrap(),
            b"some blob bytes"
        );
        assert_eq!(
            decode_blob(&format!(" {}\r\n{} ", &text[..4], &text[4..])).unwrap(),
            b"some blob bytes"
        );
        let e = decode_blob("not base64!").err().unwrap();
        assert_eq!(e.kind, KmsErrorKind::InvalidCiphertext);
    }

    #[test]
    fn uuid_shape() {
        assert!(is_uuid("d6bee1cb-1234-4abc-8def-0123456789ab"));
        assert!(!is_uuid("D6BEE1CB-1234-4ABC-8DEF-0123456789AB"));
        assert!(!is_uuid("d6bee1cb-1234-4abc-8def-0123456789a/"));
        assert!(!is_uuid("../../../../../../../../etc/passwd.."));
        assert!(!is_uuid("d6bee1cb12344abc8def0123456789ab"));
        assert!(!is_uuid("{d6bee1cb-1234-4abc-8def-0123456789ab}"));
        assert!(!is_uuid("d6bee1cb-1234-4abc-8def+0123456789ab"));
        let made = new_uuid().unwrap();
        assert!(is_uuid(&made), "{made}");
        assert_eq!(&made[14..15], "4", "{made}");
        assert_ne!(made, new_uuid().unwrap());
    }
}
