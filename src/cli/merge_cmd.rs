//! `envseal merge`: the parts of a sharded run joined into one vault (docs/FORMAT.md §6.6).

use clap::Args;
use envseal::pipeline::merge::{merge, MergeOptions};
use envseal::store::Location;
use serde_json::json;

use super::args::{OutputArgs, VaultArg};
use super::kms_cmd::{reading_kms, unwrap_advice};
use super::output::summary;
use super::size::human_bytes;

/// `envseal merge`'s arguments (the command's help is on [`super::args::Command::Merge`]).
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  envseal merge part-0.vault part-1.vault part-2.vault part-3.vault -o data.vault
  envseal merge s3://backups/parts/{0,1,2,3} -o s3://backups/data
  envseal merge parts/* -o /srv/vaults/data --expect-key alias/backup --json")]
pub struct MergeArgs {
    /// The parts: directories, s3://BUCKET/PREFIX or oss://BUCKET/PREFIX.
    #[arg(required = true, value_name = "PART", value_parser = VaultArg)]
    pub parts: Vec<Location>,
    /// The vault to create (absent or empty): a directory, s3://BUCKET/PREFIX or oss://BUCKET/PREFIX.
    #[arg(short, long, value_name = "VAULT", value_parser = VaultArg)]
    pub output: Location,
    /// Use this KMS instead of the one the parts name (for moved endpoints).
    #[arg(long, value_name = "URL")]
    pub kms: Option<String>,
    /// Unwrap only keys wrapped by this CMK (id or ARN; repeatable).
    #[arg(long, value_name = "CMK")]
    pub expect_key: Vec<String>,
    #[command(flatten)]
    pub out: OutputArgs,
}

pub fn merge_cmd(a: MergeArgs) -> anyhow::Result<i32> {
    let kms = reading_kms(a.kms)?.expecting(a.expect_key);
    let bars = super::run::bars("merge", &a.out)?;
    let opts = MergeOptions {
        parts: a.parts,
        vault: a.output,
    };
    let r = merge(&opts, &kms, &bars).map_err(unwrap_advice)?;
    let line = format!(
        "merged {} parts into {} in {:.2} s: {} batches ({} batch keys unwrapped), {} objects ({} linked or copied by the store: {}; {} copied: {}; {} already in place), {} entries ({} repeated directories dropped, {} split hard links joined)",
        r.parts,
        opts.vault,
        r.seconds,
        r.batches,
        r.unwrapped_batches,
        r.objects,
        r.objects_linked,
        human_bytes(r.bytes_linked),
        r.objects_copied,
        human_bytes(r.bytes_copied),
        r.objects_in_place,
        r.entries,
        r.repeated_dirs,
        r.joined_links,
    );
    summary(
        a.out.quiet,
        a.out.json,
        line,
        json!({
            "command": "merge", "vault": opts.vault, "parts": r.parts,
            "batches": r.batches, "objects": r.objects, "entries": r.entries,
            "repeated_dirs": r.repeated_dirs, "joined_links": r.joined_links,
            "objects_linked": r.objects_linked, "bytes_linked": r.bytes_linked,
            "objects_copied": r.objects_copied, "bytes_copied": r.bytes_copied,
            "objects_in_place": r.objects_in_place, "bytes_in_place": r.bytes_in_place,
            "unwrapped_batches": r.unwrapped_batches, "seconds": r.seconds,
        }),
    );
    Ok(0)
}
