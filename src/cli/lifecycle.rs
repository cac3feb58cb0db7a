//! Handlers of the vault-lifecycle commands: `rewrap`, `ls --keys`, `verify --source`, `import-legacy`.

use envseal::store::Location;

use envseal::kms::keyspec::KeySpec;
use envseal::pipeline::rewrap::{rewrap, RewrapOptions};
use serde_json::json;

use super::args::{ImportLegacyArgs, RewrapArgs};
use super::kms_cmd::reading_kms;
use super::output::{sanitize, summary};

pub fn rewrap_cmd(a: RewrapArgs) -> anyhow::Result<i32> {
    let default_kms = a.kms.clone().unwrap_or_else(|| "local".to_string());
    let key = a
        .key
        .as_deref()
        .map(|k| KeySpec::parse(k, &default_kms))
        .transpose()?;
    let mut trusted: Vec<String> = a.kms.iter().cloned().collect();
    if let Some(k) = &key {
        trusted.push(k.kms.clone());
    }
    let kms = reading_kms(None)?.trusting(trusted);
    let opts = RewrapOptions {
        vault: a.vault,
        key,
        add: a.add,
        remove: a.remove,
    };
    let r = rewrap(&opts, &kms)?;
    let mut line = format!(
        "rewrapped {} batch key(s) of {} in {:.2} s ({} by ReEncrypt, {} wrapping(s) removed, {} key file(s) written); opens with {}",
        r.batches,
        opts.vault,
        r.seconds,
        r.re_encrypted,
        r.removed,
        r.key_files_written,
        r.wrapped_by.join(", ")
    );
    for k in &r.nothing_to_remove {
        line += &format!("; --remove {k}: nothing left to remove (no batch is wrapped by it)");
    }
    summary(
        a.out.quiet,
        a.out.json,
        line,
        json!({
            "command": "rewrap", "vault": opts.vault, "batches": r.batches,
            "re_encrypted": r.re_encrypted, "removed": r.removed,
            "key_files_written": r.key_files_written, "wrapped_by": r.wrapped_by,
            "nothing_to_remove": r.nothing_to_remove,
            "seconds": r.seconds,
        }),
    );
    Ok(0)
}

/// The CMKs that wrap a vault's data keys, as JSON (`verify --json`'s `keys`); `null` when
/// the manifest cannot be read (verify reports why).
pub fn wrappers_json(vault: &Location, kms_flag: Option<&str>) -> serde_json::Value {
    let m = envseal::store::open(vault).and_then(|s| {
        envseal::pipeline::vault::read_manifest(&*s, envseal::format::layout::MANIFEST)
    });
    match m {
        Ok(m) => serde_json::Value::Array(
            wrapper_values(&m.batches, kms_flag)
                .into_iter()
                .map(|(v, _)| v)
                .collect(),
        ),
        Err(_) => serde_json::Value::Null,
    }
}

/// Each CMK wrapping the batches, as JSON with its `aliases`, and the wrapper itself.
fn wrapper_values(
    batches: &[envseal::format::manifest::Batch],
    kms_flag: Option<&str>,
) -> Vec<(serde_json::Value, envseal::kms::keyspec::Wrapper)> {
    let mut aliases = Aliases::default();
    envseal::kms::keyspec::wrappers(batches)
        .into_iter()
        .map(|w| {
            let names = aliases.of(&w.kms, &w.key_id, kms_flag);
            let mut v = serde_json::to_value(&w).unwrap_or(serde_json::Value::Null);
            if let serde_json::Value::Object(o) = &mut v {
                o.insert("aliases".into(), json!(names));
            }
            (v, w)
        })
        .collect()
}

/// `ls --keys`: one line (or JSON object) per CMK wrapping the vault's data keys.
pub fn ls_keys(vault: &Location, as_json: bool, kms_flag: Option<&str>) -> anyhow::Result<i32> {
    let m = envseal::pipeline::vault::open_manifest(&*envseal::store::open(vault)?)?;
    let total = m.batches.len();
    for (v, w) in wrapper_values(&m.batches, kms_flag) {
        let names: Vec<&str> = v["aliases"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str())
            .collect();
        if as_json {
            println!("{v}");
        } else {
            println!(
                "{}#{}{}  {}/{} batches{}",
                sanitize(&w.kms),
                sanitize(&w.key_id),
                if names.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", sanitize(&names.join(", ")))
                },
                w.batches,
                total,
                if w.opens_alone {
                    "  opens the vault alone"
                } else {
                    ""
                }
            );
        }
    }
    Ok(0)
}

/// The aliases pointing at the keys a vault names, by KMS, each KMS asked once. Local key
/// stores are read where they exist (never created, never unsealed: aliases are not secret);
/// a remote KMS only when `ls --kms` names it, since a vault's own URLs are not to be trusted
/// with credentials. Whatever cannot be asked shows ids alone.
#[derive(Default)]
struct Aliases {
    by_kms: std::collections::HashMap<String, Vec<envseal::kms::AliasEntry>>,
}

impl Aliases {
    fn of(&mut self, vault_kms: &str, key_id: &str, kms_flag: Option<&str>) -> Vec<String> {
        let url = kms_flag.unwrap_or(vault_kms).to_string();
        let list = self
            .by_kms
            .entry(url.clone())
            .or_insert_with(|| list_aliases(&url, kms_flag.is_some()).unwrap_or_default());
        list.iter()
            .filter(|a| a.key_id == key_id || key_id.ends_with(&format!("/{}", a.key_id)))
            .map(|a| a.alias_name.clone())
            .collect()
    }
}

fn list_aliases(url: &str, asked: bool) -> Option<Vec<envseal::kms::AliasEntry>> {
    use envseal::kms::{KmsOptions, ProviderUrl};
    let opts = KmsOptions {
        // Never prompt for a passphrase, never wait long: this is decoration.
        passphrase_prompt: None,
        timeout: std::time::Duration::from_secs(5),
        ..KmsOptions::default()
    };
    match ProviderUrl::parse(url).ok()? {
        ProviderUrl::Local(dir) => {
            // Opening an absent store would create one.
            if !envseal::kms::local::store_exists(dir.as_deref()).ok()? {
                return None;
            }
        }
        ProviderUrl::Aliyun { .. } if asked => {}
        _ => return None,
    }
    match envseal::kms::admin_from_url(url, &opts).and_then(|a| a.list_aliases()) {
        Ok(l) => Some(l),
        Err(e) => {
            log::info!("aliases of {url} not listed: {e}");
            None
        }
    }
}

/// `verify --source`: the vault against the live tree, without decrypting.
pub fn verify_source_cmd(
    a: super::args::VerifyArgs,
    cancel: &std::sync::atomic::AtomicBool,
) -> anyhow::Result<i32> {
    use envseal::pipeline::verify_source::{verify_source, DiffKind, SourceOptions};
    let opts = SourceOptions {
        sources: a.source.clone(),
        excludes: a.exclude.clone(),
        jobs: super::values::Jobs::or_cores(a.jobs),
    };
    let kms = reading_kms(a.kms.clone())?;
    let r = verify_source(&*envseal::store::open(&a.vault)?, &opts, &kms, cancel)?;
    for d in &r.diffs {
        eprintln!(
            "envseal: {}: {}: {}",
            d.kind.as_str(),
            sanitize(&d.path),
            sanitize(&d.detail)
        );
    }
    let count = |k: DiffKind| r.diffs.iter().filter(|d| d.kind == k).count();
    let kinds = [
        DiffKind::Changed,
        DiffKind::Bitrot,
        DiffKind::Metadata,
        DiffKind::Missing,
        DiffKind::Extra,
        DiffKind::Unreadable,
        DiffKind::Damaged,
    ];
    let line = format!(
        "compared {} entries of {} with the source ({} bytes hashed, nothing decrypted) in {:.2} s: {}",
        r.entries,
        a.vault,
        r.bytes_hashed,
        r.seconds,
        if r.diffs.is_empty() {
            "they match".to_string()
        } else {
            kinds
                .iter()
                .filter(|k| count(**k) > 0)
                .map(|k| format!("{} {}", count(*k), k.as_str()))
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    let mut by_kind = serde_json::Map::new();
    for k in kinds {
        by_kind.insert(k.as_str().into(), json!(count(k)));
    }
    summary(
        a.out.quiet,
        a.out.json,
        line,
        json!({
            "command": "verify", "source": a.source, "ok": r.diffs.is_empty(),
            "entries": r.entries, "bytes_hashed": r.bytes_hashed, "seconds": r.seconds,
            "counts": by_kind,
            "differences": r.diffs.iter().map(|d| json!({
                "kind": d.kind.as_str(), "path": d.path, "detail": d.detail
            })).collect::<Vec<_>>(),
        }),
    );
    Ok(if count(DiffKind::Damaged) > 0 {
        3
    } else if r.diffs.is_empty() {
        0
    } else {
        1
    })
}

pub fn import_legacy_cmd(
    a: ImportLegacyArgs,
    cancel: &std::sync::atomic::AtomicBool,
) -> anyhow::Result<i32> {
    use envseal::pipeline::legacy::{import, ImportOptions, ImportTo};
    let kms_url = a.kms.clone().unwrap_or_else(|| "local".to_string());
    let to = match (&a.output, &a.to) {
        (Some(vault), None) => {
            // No --key: the library seals under the CMK that wrapped the files.
            let keys = a
                .key
                .iter()
                .map(|k| KeySpec::parse(k, &kms_url))
                .collect::<Result<Vec<_>, _>>()?;
            ImportTo::Vault {
                vault: vault.clone(),
                keys,
            }
        }
        (None, Some(dest)) => ImportTo::Dir(dest.clone()),
        _ => {
            return Err(
                envseal::Error::Usage("give either -o <VAULT> or --to <DEST>".into()).into(),
            )
        }
    };
    let opts = ImportOptions {
        files: a.files,
        kms_url: kms_url.clone(),
        to,
    };
    let kms = envseal::kms::keys::Kms::new(super::kms_cmd::kms_options()?, None);
    let r = import(&opts, &kms, cancel)?;
    super::output::print_all_failures(&r.bad);
    let target = match (&a.output, &a.to) {
        (Some(v), _) => format!("the vault {v}"),
        (_, Some(d)) => d.display().to_string(),
        _ => String::new(),
    };
    let line = format!(
        "imported {} file(s), {} bytes, into {}{}; {} bad file(s) skipped",
        r.imported,
        r.bytes,
        target,
        if r.imported == 0 && a.output.is_some() {
            " (not created: nothing to import)"
        } else {
            ""
        },
        r.bad.len()
    );
    summary(
        a.out.quiet,
        a.out.json,
        line,
        json!({
            "command": "import-legacy", "imported": r.imported, "bytes": r.bytes,
            "vault": a.output, "to": a.to,
            "bad": super::output::failures_json(&r.bad),
            "batches": r.batches,
        }),
    );
    Ok(if r.bad.is_empty() { 0 } else { 1 })
}
