//! `rewrap`: put a vault's batch keys under another master key (CMK) without reading or
//! writing a single object.
//!
//! Wrappings sit outside the manifest's MAC (docs/FORMAT.md §5, §6.3), so rewrapping replaces
//! the `wrap` lines and the key files and nothing else. Per batch: the key is moved under the
//! new CMK (`ReEncrypt` when the new CMK lives in a KMS that already holds a wrapping of it,
//! else one `Decrypt` and one `Encrypt`), and the new wrapping is unwrapped once more and
//! checked against the batch's key commitment before anything is written: a wrapping that
//! has not been seen to open the batch never replaces one that has. The work is a few KMS
//! calls per batch and one pass over the manifest, whatever the size of the data.
//!
//! Crash safety: the new manifest is written under a temporary name, synced, read back and
//! authenticated with every batch key, then renamed over the old one (the commit point);
//! the key files follow, each replaced atomically. A kill before the rename leaves the old
//! wrappings, after it the new ones; a kill among the key files leaves some key files behind
//! the manifest (keyless `verify` reports them) until `rewrap` runs again, which rewrites
//! every key file from the manifest. The vault's lock ([`crate::vault::VaultLock`]) keeps
//! a second writer out, so no other run shares `manifest.new` or the key files.

use std::io::{BufReader, BufWriter, Write};
use std::time::Instant;

use crate::crypto::BatchKey;
use crate::error::{Error, IoContext, Result};
use crate::format::layout;
use crate::keys::Kms;
use crate::keyspec::{self, KeySpec};
use crate::kms::{KmsErrorKind, WrappedKey};
use crate::manifest::{self, Batch, KeyFile, Lines, ManifestReader};
use crate::store::Store;

/// What to change.
#[derive(Clone, Debug, Default)]
pub struct RewrapOptions {
    pub vault: crate::store::Location,
    /// The CMK to wrap every batch key under.
    pub key: Option<KeySpec>,
    /// Keep the existing wrappings beside the new one (otherwise it replaces them all).
    pub add: bool,
    /// CMKs whose wrappings are dropped (`id` or `KMS#id`, as `ls`/`verify --json` show them).
    pub remove: Vec<String>,
}

/// What was done.
#[derive(Clone, Debug, Default)]
pub struct RewrapReport {
    pub batches: u64,
    /// Wrappings made by `ReEncrypt` (the rest of the new ones by `Decrypt` + `Encrypt`).
    pub re_encrypted: u64,
    /// Wrappings dropped.
    pub removed: u64,
    /// Key files rewritten (those already matching the manifest are left alone).
    pub key_files_written: u64,
    /// The `--remove` CMKs that wrapped no batch: nothing was left to remove (a repeated
    /// command, or one that never wrapped the vault; `wrapped_by` says what does).
    pub nothing_to_remove: Vec<String>,
    /// The CMKs that open the vault now (`KMS#id`, each batch wrapped by all of them or by
    /// the ones listed for it).
    pub wrapped_by: Vec<String>,
    pub seconds: f64,
}

/// Rewraps a finished vault's batch keys (see the module documentation).
pub fn rewrap(opts: &RewrapOptions, kms: &Kms) -> Result<RewrapReport> {
    let started = Instant::now();
    let store = crate::store::open(&opts.vault)?;
    let vault: &dyn Store = &*store;
    if opts.key.is_none() && opts.remove.is_empty() {
        return Err(Error::Usage(
            "rewrap: nothing to do; give --key <CMK> (with --add to keep the old wrappings) or --remove <CMK>".into(),
        ));
    }
    if opts.add && opts.key.is_none() {
        return Err(Error::Usage("rewrap --add needs --key <CMK>".into()));
    }
    // One writer at a time: two rewraps must not interleave their manifests and key files.
    let _lock = vault.lock(false)?;
    // A finished vault may keep its journal as a receipt (docs/FORMAT.md §7); any other
    // journal is an unfinished run.
    if !matches!(
        crate::journal::head(vault)?,
        None | Some(crate::journal::Head::Finished(_))
    ) {
        return Err(Error::Usage(format!(
            "{} holds an unfinished encrypt run; finish it (run the encrypt command again) before rewrapping",
            vault.url()
        )));
    }
    let removes: Vec<(KeySpec, bool)> = opts
        .remove
        .iter()
        .map(|r| Ok((KeySpec::parse(r, "local")?, r.contains('#'))))
        .collect::<Result<_>>()?;

    let reader = crate::vault::open_manifest(vault)?;
    let vault_id = reader.header.vault_id;
    let old: Vec<Batch> = reader.batches.clone();
    drop(reader);
    // Temporary files of a killed rewrap (this run holds the lock: no other run's).
    crate::leftovers::sweep_root(vault, &old)?;

    let mut report = RewrapReport {
        batches: old.len() as u64,
        ..Default::default()
    };
    let new_url = match &opts.key {
        Some(k) => Some(kms.provider(&k.kms)?.url()),
        None => None,
    };
    let mut matched_remove = vec![false; removes.len()];
    let mut batches = Vec::with_capacity(old.len());
    let mut keys: Vec<BatchKey> = Vec::with_capacity(old.len());
    for b in &old {
        kms.check_contexts(&vault_id, b)?;
        let mut kept: Vec<WrappedKey> = Vec::new();
        for w in &b.wrapped {
            let mut drop_it = false;
            for (i, (r, explicit)) in removes.iter().enumerate() {
                if r.names(w, *explicit) {
                    matched_remove[i] = true;
                    drop_it = true;
                }
            }
            if drop_it {
                report.removed += 1;
            } else if opts.add || !opts.remove.is_empty() || opts.key.is_none() {
                kept.push(w.clone());
            }
        }
        let (wrapped, bk) = match (&opts.key, &new_url) {
            (Some(spec), Some(url)) => {
                let (w, bk, re) = new_wrapping(kms, &vault_id, b, spec, url)?;
                report.re_encrypted += u64::from(re);
                // The same CMK again (a repeated command) replaces its wrapping.
                kept.retain(|k| !(k.kms == w.kms && k.key_id == w.key_id));
                kept.push(w);
                (kept, bk)
            }
            _ => {
                if kept.is_empty() {
                    return Err(Error::Usage(format!(
                        "rewrap --remove would leave batch {} with no wrapping; add another with --key first (the last wrapping is never removed)",
                        b.id_hex()
                    )));
                }
                // What stays must be seen to open the batch before the rest goes.
                let check = Batch {
                    wrapped: kept.clone(),
                    ..b.clone()
                };
                let bk = kms.unwrap(&vault_id, &check)?;
                (kept, bk)
            }
        };
        if wrapped.len() > crate::format::MAX_WRAPPED_KEYS {
            return Err(Error::Usage(format!(
                "batch {} would have more than {} wrappings",
                b.id_hex(),
                crate::format::MAX_WRAPPED_KEYS
            )));
        }
        batches.push(Batch {
            wrapped,
            ..b.clone()
        });
        keys.push(bk);
    }
    // A `--remove` CMK that wraps no batch: a previous run removed it (this command repeated,
    // or killed after its commit point; the key files are rewritten below), or it never
    // wrapped the vault. Either way nothing is left to remove: the report says so.
    report.nothing_to_remove = opts
        .remove
        .iter()
        .zip(&matched_remove)
        .filter(|(_, m)| !**m)
        .map(|(r, _)| r.clone())
        .collect();

    if batches != old {
        replace_manifest(vault, &batches, &keys)?;
    }
    for b in &batches {
        let kf = KeyFile::new(&vault_id, b);
        if read_key_file(vault, b).as_ref() != Some(&kf) {
            manifest::write_key_file(vault, &vault_id, b)?;
            report.key_files_written += 1;
        }
    }
    report.wrapped_by = batches
        .iter()
        .flat_map(|b| b.wrapped.iter().map(keyspec::describe))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// A batch key wrapped under `spec`, checked: `ReEncrypt` from a wrapping in the same KMS if
/// it has one (the key never leaves the KMS), else `Decrypt` + `Encrypt`; then one `Decrypt`
/// of the new wrapping, checked against the batch's commitment. Returns whether `ReEncrypt`
/// made it.
fn new_wrapping(
    kms: &Kms,
    vault_id: &[u8; 16],
    b: &Batch,
    spec: &KeySpec,
    url: &str,
) -> Result<(WrappedKey, BatchKey, bool)> {
    let mut made = None;
    if let Some(src) = b.wrapped.iter().find(|w| w.kms == url) {
        match kms.provider(url)?.re_encrypt(src, &spec.key) {
            Ok(w) => made = Some((w, true)),
            // Unsupported, or the source CMK no longer decrypts: the other wrappings may.
            Err(e) if e.kind == KmsErrorKind::Unsupported => {}
            Err(e) => log::info!(
                "ReEncrypt of batch {} from {} failed ({e}); trying Decrypt + Encrypt",
                b.id_hex(),
                src.key_id
            ),
        }
    }
    let (w, re) = match made {
        Some(m) => m,
        None => {
            let bk = kms.unwrap(vault_id, b)?;
            (kms.wrap(spec, &bk)?, false)
        }
    };
    let bk = kms.unwrap_one(vault_id, b, &w)?;
    Ok((w, bk, re))
}

fn read_key_file(vault: &dyn Store, b: &Batch) -> Option<KeyFile> {
    let d = vault
        .get(&b.keys_file(), crate::format::MAX_KEY_FILE)
        .ok()??;
    serde_json::from_slice(&d).ok()
}

/// Writes the manifest with the new wrap lines under a staged name, every other line
/// copied byte for byte; reads it back and authenticates it with every batch key; then
/// puts it in place of the old one.
fn replace_manifest(vault: &dyn Store, batches: &[Batch], keys: &[BatchKey]) -> Result<()> {
    let what = vault.describe(layout::MANIFEST);
    let staged = layout::MANIFEST_STAGED;
    let src = vault
        .reader(layout::MANIFEST)?
        .ok_or_else(|| Error::format(&what, "the manifest vanished"))?;
    let mut lines = Lines::new(BufReader::with_capacity(1 << 20, src), &what);
    vault.remove(staged)?;
    let mut out = BufWriter::with_capacity(1 << 20, vault.create_file(staged)?);
    let shown = vault.describe(staged);
    let mut batch_index = 0usize;
    while let Some(line) = lines.next_line()? {
        if manifest::is_wrap_line(&line) {
            continue;
        }
        out.write_all(&line).at(&shown)?;
        out.write_all(b"\n").at(&shown)?;
        if manifest::is_batch_line(&line) {
            let b = batches
                .get(batch_index)
                .ok_or_else(|| Error::integrity(&what, "more batches than first read"))?;
            for w in &b.wrapped {
                out.write_all(&manifest::wrap_line(batch_index as u32, w)?)
                    .at(&shown)?;
                out.write_all(b"\n").at(&shown)?;
            }
            batch_index += 1;
        }
    }
    let file = out
        .into_inner()
        .map_err(|e| Error::io(&shown, e.into_error()))?;
    file.commit(true)?;

    // Read back: the same batches with the new wrappings, and a body every key authenticates
    // (which also proves the body was copied unchanged).
    let check = (|| -> Result<()> {
        let mut r = ManifestReader::open_named(vault, staged)?;
        if r.batches != batches {
            return Err(Error::Runtime(format!(
                "{shown}: the rewritten manifest does not hold the intended wrappings"
            )));
        }
        while r.next_entry()?.is_some() {}
        for (i, k) in keys.iter().enumerate() {
            r.authenticate(i, k)?;
        }
        Ok(())
    })();
    if let Err(e) = check {
        let _ = vault.remove(staged);
        return Err(e);
    }
    vault.rename_over(staged, layout::MANIFEST)
}
