//! `envseal kms create-key|create-alias|list|describe|disable-key|enable-key|schedule-key-deletion`.
//!
//! Output is JSON on stdout shaped like the Alibaba API (`{"KeyMetadata": {...}}`, and
//! `{"Keys": [...], "Aliases": [...]}` for `list`); the state changes print nothing.

use std::io::IsTerminal;

use envseal::kms::{self, keystore, AliasEntry, KeyMetadata, KmsError, KmsErrorKind, KmsOptions};
use serde::Serialize;
use zeroize::Zeroizing;

use super::args::{KmsArgs, KmsCommand};

/// Provider options for the binary: a terminal passphrase prompt for sealed local key stores.
/// Provider options for the binary: the terminal passphrase prompt, and the HTTP providers'
/// retry and timeout settings from `ENVSEAL_KMS_ATTEMPTS` (total attempts per call, 1 = no
/// retry) and `ENVSEAL_KMS_TIMEOUT` (seconds per request).
pub fn kms_options() -> anyhow::Result<KmsOptions> {
    let mut o = KmsOptions {
        passphrase_prompt: Some(prompt_passphrase),
        ..KmsOptions::default()
    };
    let num = |name: &str, min: u64, max: u64| -> anyhow::Result<Option<u64>> {
        match std::env::var(name) {
            Err(_) => Ok(None),
            Ok(v) => match v.trim().parse::<u64>() {
                Ok(n) if (min..=max).contains(&n) => Ok(Some(n)),
                _ => Err(envseal::Error::Usage(format!(
                    "{name}={v:?}: expected a whole number from {min} to {max}"
                ))
                .into()),
            },
        }
    };
    if let Some(n) = num("ENVSEAL_KMS_ATTEMPTS", 1, 100)? {
        o.retry.max_attempts = n as u32;
    }
    if let Some(n) = num("ENVSEAL_KMS_TIMEOUT", 1, 3600)? {
        o.timeout = std::time::Duration::from_secs(n);
    }
    Ok(o)
}

/// Asks on the terminal, only when stdin is one (scripts get the ENVSEAL_PASSPHRASE message).
fn prompt_passphrase() -> Option<Zeroizing<String>> {
    if !std::io::stdin().is_terminal() {
        return None;
    }
    match rpassword::prompt_password("envseal: key store passphrase: ") {
        Ok(p) => Some(Zeroizing::new(p)),
        Err(e) => {
            log::warn!("could not read the passphrase from the terminal: {e}");
            None
        }
    }
}

/// The URL of `--kms`, `ENVSEAL_KMS` (clap reads both), else `local`.
pub fn kms_url(args: &KmsArgs) -> String {
    args.kms.clone().unwrap_or_else(|| "local".to_string())
}

pub fn run(cmd: KmsCommand) -> anyhow::Result<i32> {
    let opts = kms_options()?;
    match cmd {
        KmsCommand::CreateKey { description, kms } => {
            let meta = admin(&kms, &opts)?
                .create_key(&description)
                .map_err(|e| explain(e, ""))?;
            print_json(&MetadataOut {
                key_metadata: &meta,
            })?;
        }
        KmsCommand::CreateAlias { alias, key_id, kms } => {
            // Checked here too, so a typo is a usage error before any store or network access.
            keystore::validate_alias(&alias).map_err(|e| explain(e, &alias))?;
            admin(&kms, &opts)?
                .create_alias(&alias, &key_id)
                .map_err(|e| explain(e, &key_id))?;
        }
        KmsCommand::List { kms } => {
            let admin = admin(&kms, &opts)?;
            let keys = admin.list_keys().map_err(|e| explain(e, ""))?;
            let aliases = admin.list_aliases().map_err(|e| explain(e, ""))?;
            print_json(&ListOut {
                keys: &keys,
                aliases: &aliases,
            })?;
        }
        KmsCommand::Describe { key, kms } => {
            let meta = admin(&kms, &opts)?
                .describe_key(&key)
                .map_err(|e| explain(e, &key))?;
            print_json(&MetadataOut {
                key_metadata: &meta,
            })?;
        }
        KmsCommand::DisableKey { key_id, kms } => {
            admin(&kms, &opts)?
                .disable_key(&key_id)
                .map_err(|e| explain(e, &key_id))?;
        }
        KmsCommand::EnableKey { key_id, kms } => {
            admin(&kms, &opts)?
                .enable_key(&key_id)
                .map_err(|e| explain(e, &key_id))?;
        }
        KmsCommand::ScheduleKeyDeletion {
            key_id,
            pending_days,
            kms,
        } => {
            admin(&kms, &opts)?
                .schedule_key_deletion(&key_id, pending_days)
                .map_err(|e| explain(e, &key_id))?;
        }
        KmsCommand::Serve(args) => return super::serve_cmd::run(args),
    }
    Ok(0)
}

fn admin(args: &KmsArgs, opts: &KmsOptions) -> anyhow::Result<Box<dyn kms::KmsAdmin>> {
    kms::admin_from_url(&kms_url(args), opts).map_err(|e| explain(e, ""))
}

// Typed wrappers keep Alibaba's field order (KeyId first), which `json!` maps would sort away.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct MetadataOut<'a> {
    key_metadata: &'a KeyMetadata,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ListOut<'a> {
    keys: &'a [KeyMetadata],
    aliases: &'a [AliasEntry],
}

fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Turns a KMS failure into the CLI's error: bad arguments are usage errors (exit 2); for the
/// rest, a line naming `subject` (the key or alias the user gave) and what to do (exit 1).
pub fn explain(e: KmsError, subject: &str) -> anyhow::Error {
    let usage = e.kind == KmsErrorKind::InvalidArgument
        && matches!(
            e.code.as_deref(),
            None | Some("InvalidParameter") | Some("MissingParameter")
        );
    if usage {
        return envseal::Error::Usage(e.to_string()).into();
    }
    let hint = match (e.kind, e.code.as_deref()) {
        (KmsErrorKind::NotFound, _) => Some(format!(
            "no key or alias {subject:?} in this KMS (\"envseal kms list\" shows them; create one with \"envseal kms create-key\")"
        )),
        (KmsErrorKind::Disabled, Some("Rejected.PendingDeletion")) => Some(format!(
            "key {subject:?} is scheduled for deletion and can no longer be used"
        )),
        (KmsErrorKind::Disabled, _) => Some(format!(
            "key {subject:?} is disabled (\"envseal kms enable-key {subject}\" enables it)"
        )),
        (_, Some("Rejected.StateModifiedFailed")) => Some(format!(
            "key {subject:?} is scheduled for deletion; its state can no longer change"
        )),
        (_, Some("AliasAlreadyExists")) => Some(
            "that alias already exists (\"envseal kms list\" shows where it points); choose another name"
                .to_string(),
        ),
        _ => None,
    };
    let err = anyhow::Error::new(envseal::Error::Kms(e));
    match hint {
        Some(h) => err.context(h),
        None => err,
    }
}
