//! `envseal kms create-key|create-alias|list|describe|disable-key|enable-key|schedule-key-deletion`.
//!
//! Output is JSON on stdout shaped like the Alibaba API (`{"KeyMetadata": {...}}`, and
//! `{"Keys": [...], "Aliases": [...]}` for `list`); the state changes print nothing.

use std::io::IsTerminal;

use envseal::kms::{
    self, keystore, AliasEntry, KeyMetadata, KmsCode, KmsError, KmsErrorKind, KmsOptions,
    ProviderUrl,
};
use serde::Serialize;
use zeroize::Zeroizing;

use envseal::kms::keys::Kms;
use envseal::Error;

use super::args::{AdminKmsArgs, KmsCommand};
use super::messages::advise;

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
    // The progress bar would redraw over the prompt: it is frozen until the answer.
    match super::progress::suspended(|| {
        rpassword::prompt_password("envseal: key store passphrase: ")
    }) {
        Ok(p) => Some(Zeroizing::new(p)),
        Err(e) => {
            log::warn!("could not read the passphrase from the terminal: {e}");
            None
        }
    }
}

/// The URL of `--kms`, `ENVSEAL_KMS` (clap reads both), else `local`.
pub fn kms_url(args: &AdminKmsArgs) -> String {
    args.kms.clone().unwrap_or_else(|| "local".to_string())
}

/// Checks a `--kms` URL before any work: a wrong one is a usage error (exit 2) that names it.
pub fn parse_url(url: &str) -> anyhow::Result<ProviderUrl> {
    ProviderUrl::parse(url)
        .map_err(|e| envseal::Error::Usage(format!("--kms: {}", e.message)).into())
}

pub fn run(cmd: KmsCommand) -> anyhow::Result<i32> {
    let opts = kms_options()?;
    #[cfg(feature = "server")]
    let cmd = match cmd {
        KmsCommand::Serve(args) => return super::serve_cmd::run(args),
        cmd => cmd,
    };
    let url = match &cmd {
        KmsCommand::CreateKey { kms, .. }
        | KmsCommand::CreateAlias { kms, .. }
        | KmsCommand::List { kms }
        | KmsCommand::Describe { kms, .. }
        | KmsCommand::DisableKey { kms, .. }
        | KmsCommand::EnableKey { kms, .. }
        | KmsCommand::ScheduleKeyDeletion { kms, .. } => kms_url(kms),
        #[cfg(feature = "server")]
        KmsCommand::Serve(_) => String::new(),
    };
    if let (ProviderUrl::Aws { .. }, Some(instead)) = (parse_url(&url)?, aws_instead(&cmd)) {
        return Err(envseal::Error::Usage(format!(
            "envseal does not manage AWS KMS keys; use the AWS CLI: {instead}; then encrypt with --key alias/... --kms {url}"
        ))
        .into());
    }
    let at = Where { url: &url };
    match cmd {
        KmsCommand::CreateKey { description, .. } => {
            let meta = admin(&url, &opts)?
                .create_key(&description)
                .map_err(|e| explain(e, "", at))?;
            print_json(&MetadataOut {
                key_metadata: &meta,
            })?;
        }
        KmsCommand::CreateAlias { alias, key_id, .. } => {
            // Checked here too, so a typo is a usage error before any store or network access.
            keystore::validate_alias(&alias).map_err(|e| explain(e, &alias, at))?;
            admin(&url, &opts)?
                .create_alias(&alias, &key_id)
                .map_err(|e| explain(e, &key_id, at))?;
        }
        KmsCommand::List { .. } => {
            let admin = admin(&url, &opts)?;
            let keys = admin.list_keys().map_err(|e| explain(e, "", at))?;
            let aliases = admin.list_aliases().map_err(|e| explain(e, "", at))?;
            print_json(&ListOut {
                keys: &keys,
                aliases: &aliases,
            })?;
        }
        KmsCommand::Describe { key, .. } => {
            let meta = admin(&url, &opts)?
                .describe_key(&key)
                .map_err(|e| explain(e, &key, at))?;
            print_json(&MetadataOut {
                key_metadata: &meta,
            })?;
        }
        KmsCommand::DisableKey { key_id, .. } => {
            admin(&url, &opts)?
                .disable_key(&key_id)
                .map_err(|e| explain(e, &key_id, at))?;
        }
        KmsCommand::EnableKey { key_id, .. } => {
            admin(&url, &opts)?
                .enable_key(&key_id)
                .map_err(|e| explain(e, &key_id, at))?;
        }
        KmsCommand::ScheduleKeyDeletion {
            key_id,
            pending_days,
            ..
        } => {
            admin(&url, &opts)?
                .schedule_key_deletion(&key_id, pending_days)
                .map_err(|e| explain(e, &key_id, at))?;
        }
        #[cfg(feature = "server")]
        KmsCommand::Serve(_) => {}
    }
    Ok(0)
}

/// The AWS CLI command that does what a `kms` subcommand does, for AWS users.
fn aws_instead(cmd: &KmsCommand) -> Option<String> {
    Some(match cmd {
        KmsCommand::CreateKey { .. } => {
            "aws kms create-key --description TEXT, then aws kms create-alias --alias-name alias/NAME --target-key-id KEY_ID".into()
        }
        KmsCommand::CreateAlias { alias, key_id, .. } => {
            format!("aws kms create-alias --alias-name {alias} --target-key-id {key_id}")
        }
        KmsCommand::List { .. } => "aws kms list-keys and aws kms list-aliases".into(),
        KmsCommand::Describe { key, .. } => format!("aws kms describe-key --key-id {key}"),
        KmsCommand::DisableKey { key_id, .. } => format!("aws kms disable-key --key-id {key_id}"),
        KmsCommand::EnableKey { key_id, .. } => format!("aws kms enable-key --key-id {key_id}"),
        KmsCommand::ScheduleKeyDeletion {
            key_id,
            pending_days,
            ..
        } => format!(
            "aws kms schedule-key-deletion --key-id {key_id} --pending-window-in-days {pending_days}"
        ),
        #[cfg(feature = "server")]
        KmsCommand::Serve(_) => return None,
    })
}

fn admin(url: &str, opts: &KmsOptions) -> anyhow::Result<Box<dyn kms::KmsAdmin>> {
    parse_url(url)?;
    kms::admin_from_url(url, opts).map_err(|e| explain(e, "", Where { url }))
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

/// Where a KMS call went, for advice that names the right `--kms`.
#[derive(Clone, Copy)]
pub struct Where<'a> {
    /// The provider URL as the user gave it (`local` when none).
    pub url: &'a str,
}

impl Where<'_> {
    /// ` --kms URL`, or nothing for the default local store.
    fn flag(&self) -> String {
        if self.url == "local" || self.url.is_empty() {
            String::new()
        } else {
            format!(" --kms {}", self.url)
        }
    }

    fn is_aws(&self) -> bool {
        matches!(ProviderUrl::parse(self.url), Ok(ProviderUrl::Aws { .. }))
    }
}

/// What to do about a KMS failure concerning `subject` (the key or alias the user gave).
pub fn advice(e: &KmsError, subject: &str, at: Where) -> Option<String> {
    let k = at.flag();
    let aws = at.is_aws();
    Some(match (e.kind, e.code_kind()) {
        (_, KmsCode::AliasNotFound | KmsCode::KeyNotFound) if aws => format!(
            "no key or alias {subject:?} in this AWS KMS region: \"aws kms list-aliases\" lists them; create one with \"aws kms create-key\" and \"aws kms create-alias\", or pass another --key"
        ),
        (_, KmsCode::AliasNotFound) if subject == kms::DEFAULT_ALIAS => format!(
            "no --key was given and this KMS has no {subject}: pass --key <key id or alias> (\"envseal kms list{k}\" lists them), or create the alias: \"envseal kms create-alias {subject} <KEY_ID>{k}\""
        ),
        (_, KmsCode::AliasNotFound | KmsCode::KeyNotFound) => format!(
            "no key or alias {subject:?} in this KMS: \"envseal kms list{k}\" lists them; \"envseal kms create-key{k}\" and \"envseal kms create-alias\" make one"
        ),
        (_, KmsCode::PendingDeletion) => format!(
            "key {subject:?} is scheduled for deletion and can no longer be used; encrypt with another --key"
        ),
        (_, KmsCode::StateChangeRefused) => format!(
            "key {subject:?} is scheduled for deletion; its state can no longer change"
        ),
        (_, KmsCode::KeyDisabled) if aws => format!(
            "key {subject:?} is disabled: \"aws kms enable-key --key-id <KEY_ID>\" enables it"
        ),
        (_, KmsCode::KeyDisabled) => {
            let id = if subject.is_empty() { "<KEY_ID>" } else { subject };
            format!(
                "key {subject:?} is disabled: \"envseal kms enable-key {id}{k}\" enables it (\"envseal kms list{k}\" shows its key id)"
            )
        }
        (_, KmsCode::AliasExists) => format!(
            "that alias already exists (\"envseal kms list{k}\" shows where it points); choose another name"
        ),
        (KmsErrorKind::Auth, _) if aws => "check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN) and that the IAM policy allows kms:GenerateDataKey and kms:Decrypt on the key".into(),
        (KmsErrorKind::Auth, _) => "check ALIBABA_CLOUD_ACCESS_KEY_ID and ALIBABA_CLOUD_ACCESS_KEY_SECRET, and that the RAM policy allows kms:GenerateDataKey and kms:Decrypt on the key".into(),
        (KmsErrorKind::Transport | KmsErrorKind::Unavailable | KmsErrorKind::Throttled, _) => format!(
            "check the endpoint in --kms {} and the network (ENVSEAL_KMS_TIMEOUT and ENVSEAL_KMS_ATTEMPTS set the timeout and retries)", at.url
        ),
        (KmsErrorKind::Io, _) => "check that the key store directory exists and that you may read and write it (it is $ENVSEAL_HOME/keystore, else ~/.local/share/envseal/keystore), or pass --kms local:<DIR>".into(),
        _ => return None,
    })
}

/// Turns a KMS failure into the CLI's error: bad arguments are usage errors (exit 2); for the
/// rest, a line naming `subject` (the key or alias the user gave) and what to do (exit 1).
pub fn explain(e: KmsError, subject: &str, at: Where) -> anyhow::Error {
    let usage = e.kind == KmsErrorKind::InvalidArgument
        && matches!(
            e.code.as_deref(),
            None | Some("InvalidParameter") | Some("MissingParameter")
        );
    if usage {
        return envseal::Error::Usage(e.to_string()).into();
    }
    let hint = advice(&e, subject, at);
    let err = anyhow::Error::new(envseal::Error::Kms(e));
    match hint {
        Some(h) => super::messages::advise(err, h),
        None => err,
    }
}

/// A KMS handle for reading vaults: `--kms` overrides the vault's URLs; `ENVSEAL_KMS` and the
/// comma-separated `ENVSEAL_KMS_TRUST` name remote endpoints the user trusts.
pub fn reading_kms(override_url: Option<String>) -> anyhow::Result<Kms> {
    if let Some(url) = &override_url {
        parse_url(url)?;
    }
    let trusted = std::env::var("ENVSEAL_KMS").into_iter().chain(
        std::env::var("ENVSEAL_KMS_TRUST")
            .unwrap_or_default()
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>(),
    );
    Ok(Kms::new(kms_options()?, override_url).trusting(trusted))
}

/// A batch key that cannot be unwrapped gets advice by the KMS's answer (a disabled key, a
/// missing one), naming the key and KMS the vault records.
pub fn unwrap_advice(e: Error) -> anyhow::Error {
    if let Error::Unwrap { last: Some(l), .. } = &e {
        let (key_id, url, k) = &**l;
        // The vault names a key this KMS does not hold: it was made against another key
        // store (or account), not a key to create now.
        if k.code_kind() == envseal::kms::KmsCode::KeyNotFound {
            let hint = missing_key_advice(key_id, url);
            return advise(e, hint);
        }
        if let Some(h) = advice(k, key_id, Where { url }) {
            return advise(e, h);
        }
    }
    e.into()
}

/// Where to look for the key a vault names but the KMS it was asked does not hold.
fn missing_key_advice(key_id: &str, url: &str) -> String {
    match envseal::kms::ProviderUrl::parse(url) {
        Ok(envseal::kms::ProviderUrl::Local(_)) | Err(_) => {
            let store = envseal::kms::local::default_dir()
                .map(|d| d.display().to_string())
                .unwrap_or_else(|_| "$ENVSEAL_HOME/keystore".into());
            let asked = if url == "local" || url.is_empty() {
                format!("the default local key store ({store})")
            } else {
                format!("the key store {url}")
            };
            format!(
                "the vault's keys are wrapped under key {key_id} of a local key store, and {asked} does not hold it: the vault was made with another key store. Use that one: set ENVSEAL_HOME to the envseal home that made the vault (its key store is ENVSEAL_HOME/keystore), or pass --kms local:<DIR> naming the key store directory (\"envseal ls --keys VAULT\" shows what the vault names)"
            )
        }
        Ok(_) => format!(
            "the vault's keys are wrapped under key {key_id}, which the KMS at {url} does not hold (another account or region?): pass --kms <URL> naming the KMS that holds it, with that account's credentials (\"envseal ls --keys VAULT\" shows what the vault names)"
        ),
    }
}
