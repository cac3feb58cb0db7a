//! `envseal plan`: validated arguments into a plan file, and a summary of its parts.

use std::sync::atomic::AtomicBool;

use envseal::format;
use envseal::kms::keyspec::KeySpec;
use envseal::pipeline::plan::{plan, PlanOptions};
use serde_json::json;

use super::args::PlanArgs;
use super::kms_cmd::parse_url;
use super::messages::usage;
use super::output::{sanitize, summary};
use super::run::{bars, sources_exist};
use super::size::human_bytes;

/// Parts listed one per line in the summary; a larger plan is summed up by its extremes.
const LISTED_PARTS: usize = 64;

pub fn plan_cmd(a: PlanArgs, cancel: &'static AtomicBool) -> anyhow::Result<i32> {
    let default_kms = a.kms.kms.clone().unwrap_or_else(|| "local".to_string());
    parse_url(&default_kms)?;
    let mut keys = a
        .key
        .iter()
        .map(|k| KeySpec::parse(k, &default_kms))
        .collect::<Result<Vec<_>, _>>()?;
    if keys.is_empty() {
        keys.push(KeySpec {
            kms: default_kms.clone(),
            key: envseal::kms::DEFAULT_ALIAS.to_string(),
        });
    }
    sources_exist(&a.sources)?;
    // Before the walk, which may take long on a large tree.
    if !a.force && std::fs::symlink_metadata(&a.output).is_ok() {
        return Err(usage(
            format!("-o {}: exists", a.output.display()),
            "a plan is shared by the parts of one run, so it is not replaced: choose another name, or add --force to replace it",
        ));
    }
    let opts = PlanOptions {
        sources: a.sources,
        shards: a.shards,
        keys,
        kms_url: default_kms,
        excludes: a.exclude,
        segment_size: a
            .segment_size
            .map_or(format::DEFAULT_SEGMENT_SIZE, |s| s.get()),
        conceal_names: a.conceal_names,
        compress: a
            .compress
            .as_deref()
            .map(super::run::compress_arg)
            .transpose()?,
    };
    let bars = bars("plan", &a.out)?.cancelled_by(cancel);
    let p = plan(&opts, &bars, cancel)?;
    drop(bars);
    p.write(&a.output, a.force)?;

    let empty = p.shards.iter().filter(|s| s.entries == 0).count();
    let shown = a.output.display().to_string();
    if !a.out.quiet {
        let (lo, hi) = p
            .shards
            .iter()
            .map(|s| s.bytes)
            .fold((u64::MAX, 0), |(lo, hi), b| (lo.min(b), hi.max(b)));
        if p.shards.len() <= LISTED_PARTS {
            for s in &p.shards {
                let from = s
                    .from
                    .clone()
                    .or(s.from_b64.as_ref().map(|b| format!("(base64) {b}")))
                    .unwrap_or_else(|| "(start)".into());
                eprintln!(
                    "envseal: shard {}: {} entries, {} files, {}, from {}",
                    s.index,
                    s.entries,
                    s.files,
                    human_bytes(s.bytes),
                    sanitize(&from)
                );
            }
        } else {
            eprintln!(
                "envseal: shards hold {} to {} each (the plan file lists them all)",
                human_bytes(lo),
                human_bytes(hi)
            );
        }
        if empty > 0 {
            eprintln!(
                "envseal: {empty} of the {} shards are empty (the sources hold fewer entries than shards): each of their parts is still encrypted (a vault with no entries of its own)",
                p.shards.len()
            );
        }
    }
    summary(
        a.out.quiet,
        a.out.json,
        format!(
            "planned {} shards of {} entries, {} files, {} into {}; encrypt each with: envseal encrypt --plan {} --shard I -o PART",
            p.shards.len(),
            p.totals.entries,
            p.totals.files,
            human_bytes(p.totals.bytes),
            shown,
            shown
        ),
        json!({
            "command": "plan",
            "plan": shown,
            "vault_id": p.vault_id,
            "shards": p.shards.len(),
            "empty_shards": empty,
            "entries": p.totals.entries,
            "files": p.totals.files,
            "bytes": p.totals.bytes,
        }),
    );
    Ok(0)
}
