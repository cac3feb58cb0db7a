//! Handlers for `encrypt`, `decrypt`, `verify` and `ls`: turn validated arguments into
//! library calls, and reports into summaries and exit codes.

use std::sync::atomic::AtomicBool;

use envseal::format;
use envseal::format::manifest::EntryKind;
use envseal::kms::keys::Kms;
use envseal::pipeline::decrypt::{decrypt, DecryptOptions, Owners};
use envseal::pipeline::encrypt::{encrypt, EncryptOptions};
use envseal::pipeline::verify::{verify, Sample, VerifyOptions};
use envseal::Error;
use serde_json::json;

use super::args::{DecryptArgs, EncryptArgs, LsArgs, OutputArgs, VerifyArgs};
use super::kms_cmd::{explain, kms_options, parse_url, reading_kms, unwrap_advice, Where};
use super::messages::{advise, check_output_dir, check_vault, usage};
use super::output::{failures_json, rate, sanitize, summary};
use super::progress::Bars;
use super::size::human_bytes;
use super::values::Jobs;

/// The progress display `out` asks for.
pub(crate) fn bars(verb: &'static str, out: &OutputArgs) -> anyhow::Result<Bars> {
    let s = out.progress_interval.trim();
    let secs: f64 = s
        .strip_suffix('s')
        .unwrap_or(s)
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite() && (0.1..=86400.0).contains(v))
        .ok_or_else(|| {
            Error::Usage(format!(
                "--progress-interval {s}: expected seconds from 0.1 to 86400, e.g. 5 or 0.5"
            ))
        })?;
    Ok(Bars::new(
        verb,
        out.quiet,
        std::time::Duration::from_secs_f64(secs),
    ))
}

/// A size flag's value (`1MiB`, `64KiB`, `4GiB`, bytes); errors are usage errors naming it.
fn size_arg(flag: &str, s: &str) -> anyhow::Result<u64> {
    super::size::parse_size(s).map_err(|e| Error::Usage(format!("{flag}: {e}")).into())
}

/// `--compress zstd[:LEVEL]`: the Zstandard level (docs/FORMAT.md §4.5).
pub(super) fn compress_arg(s: &str) -> anyhow::Result<i32> {
    use envseal::format::compress::{DEFAULT_ZSTD_LEVEL, ZSTD_LEVELS};
    let bad = || {
        Error::Usage(format!(
            "--compress {s:?}: expected zstd or zstd:LEVEL with LEVEL {}-{}",
            ZSTD_LEVELS.start(),
            ZSTD_LEVELS.end()
        ))
    };
    match s.split_once(':') {
        None if s == "zstd" => Ok(DEFAULT_ZSTD_LEVEL),
        Some(("zstd", l)) if !l.is_empty() && l.bytes().all(|c| c.is_ascii_digit()) => {
            match l.parse::<i32>() {
                Ok(l) if ZSTD_LEVELS.contains(&l) => Ok(l),
                _ => Err(bad().into()),
            }
        }
        _ => Err(bad().into()),
    }
}

/// ", N hard links, M FIFOs and devices" when there are any.
fn others(hardlinks: u64, specials: u64) -> String {
    let mut s = String::new();
    if hardlinks > 0 {
        s += &format!(", {hardlinks} hard links");
    }
    if specials > 0 {
        s += &format!(", {specials} FIFOs and devices");
    }
    s
}

pub fn encrypt_cmd(a: EncryptArgs, cancel: &'static AtomicBool) -> anyhow::Result<i32> {
    let (opts, key_asked, kms_url, out) = match &a.plan {
        Some(_) => shard_options(a)?,
        None => plain_options(a)?,
    };
    encrypt_with(opts, key_asked, kms_url, out, cancel)
}

/// Refuses a missing SRC as a usage error naming it.
pub(super) fn sources_exist(sources: &[std::path::PathBuf]) -> anyhow::Result<()> {
    for src in sources {
        if let Err(e) = std::fs::symlink_metadata(src) {
            if e.kind() == std::io::ErrorKind::NotFound {
                return Err(usage(
                    format!("{}: does not exist", src.display()),
                    "check the path of each SRC (a file, directory, disk image or block device)",
                ));
            }
        }
    }
    Ok(())
}

/// What a run asks for: its options, the key and KMS its first key's errors are explained
/// against, and how it reports.
type Asked = (EncryptOptions, String, String, OutputArgs);

/// `encrypt --plan PLAN --shard I`: part I of the plan's run, the plan's sources, keys and
/// options; a flag the plan fixes is refused rather than silently ignored.
fn shard_options(a: EncryptArgs) -> anyhow::Result<Asked> {
    let (Some(plan_path), Some(index)) = (&a.plan, a.shard) else {
        return Err(Error::Usage("--plan needs --shard".into()).into());
    };
    let fixed = [
        (!a.sources.is_empty(), "SRC arguments"),
        (!a.key.is_empty(), "--key"),
        (a.kms_flag, "--kms"),
        (!a.exclude.is_empty(), "--exclude"),
        (a.segment_size.is_some(), "--segment-size"),
        (a.conceal_names, "--conceal-names"),
        (a.since.is_some(), "--since"),
        (a.compress.is_some(), "--compress"),
    ];
    if let Some((_, flag)) = fixed.iter().find(|(given, _)| *given) {
        return Err(usage(
            format!("{flag} cannot be given with --plan: the plan fixes it"),
            format!(
                "run `envseal encrypt --plan {} --shard {index} -o PART` alone; to change the sources, keys or options make a new plan (envseal plan)",
                plan_path.display()
            ),
        ));
    }
    if let Some(dir) = a.output.local_dir() {
        check_output_dir("-o", dir)?;
    }
    let plan = envseal::pipeline::plan::Plan::load(plan_path)?;
    let mut opts = plan.encrypt_options(plan_path, index, a.output)?;
    sources_exist(&opts.sources)?;
    check_not_vaults(&opts.sources, a.force)?;
    opts.resume = a.resume;
    opts.jobs = Jobs::or_cores(a.jobs);
    opts.batch_max_files = a.batch_max_files.unwrap_or(format::BATCH_MAX_FILES).max(1);
    if let Some(s) = &a.batch_max_bytes {
        opts.batch_max_bytes = size_arg("--batch-max-bytes", s)?.max(1);
    }
    if let Some(s) = &a.pack_threshold {
        opts.pack_threshold = size_arg("--pack-threshold", s)?;
    }
    opts.sync = !a.no_sync;
    opts.xattrs = !a.no_xattrs;
    let key_asked = opts
        .key
        .clone()
        .unwrap_or_else(|| envseal::kms::DEFAULT_ALIAS.to_string());
    let kms_url = opts.kms_url.clone();
    Ok((opts, key_asked, kms_url, a.out))
}

/// `encrypt SRC... -o VAULT`: options from the flags.
fn plain_options(a: EncryptArgs) -> anyhow::Result<Asked> {
    let seg = match (a.segment_size, &a.since) {
        (Some(s), _) => s.get(),
        // An incremental run keeps the earlier vault's segment size (its records are reused;
        // the manifest reader has checked it).
        (None, Some(earlier)) => {
            envseal::pipeline::vault::open_manifest(&*envseal::store::open(earlier)?)?
                .header
                .segment_size
        }
        (None, None) => format::DEFAULT_SEGMENT_SIZE,
    };
    let default_kms = a.kms.kms.clone().unwrap_or_else(|| "local".to_string());
    parse_url(&default_kms)?;
    if let Some(dir) = a.output.local_dir() {
        check_output_dir("-o", dir)?;
    }
    sources_exist(&a.sources)?;
    check_not_vaults(&a.sources, a.force)?;
    let mut keys = a
        .key
        .iter()
        .map(|k| envseal::kms::keyspec::KeySpec::parse(k, &default_kms))
        .collect::<Result<Vec<_>, _>>()?;
    if let (true, Some(earlier)) = (keys.is_empty(), &a.since) {
        keys = inherited_keys(earlier, a.kms.kms.as_deref())?;
    }
    let mut keys = keys.into_iter();
    let first = keys.next();
    // What the first key's errors are explained against.
    let (key_asked, kms_url) = first.as_ref().map_or_else(
        || (envseal::kms::DEFAULT_ALIAS.to_string(), default_kms.clone()),
        |k| (k.key.clone(), k.kms.clone()),
    );
    let opts = EncryptOptions {
        sources: a.sources,
        vault: a.output,
        kms_url: kms_url.clone(),
        key: first.map(|k| k.key),
        also_keys: keys.collect(),
        since: a.since,
        segment_size: seg,
        excludes: a.exclude,
        conceal_names: a.conceal_names,
        resume: a.resume,
        jobs: Jobs::or_cores(a.jobs),
        batch_max_files: a.batch_max_files.unwrap_or(format::BATCH_MAX_FILES).max(1),
        batch_max_bytes: match &a.batch_max_bytes {
            Some(s) => size_arg("--batch-max-bytes", s)?.max(1),
            None => format::BATCH_MAX_BYTES,
        },
        pack_threshold: match &a.pack_threshold {
            Some(s) => size_arg("--pack-threshold", s)?,
            // Compressed records are sealed whole (docs/PERFORMANCE.md "Compression").
            None if a.compress.is_some() => format::compress::COMPRESS_PACK_THRESHOLD,
            None => format::DEFAULT_PACK_THRESHOLD,
        },
        sync: !a.no_sync,
        xattrs: !a.no_xattrs,
        shard: None,
        compress: match &a.compress {
            Some(s) => Some(compress_arg(s)?),
            None => None,
        },
    };
    Ok((opts, key_asked, kms_url, a.out))
}

fn encrypt_with(
    opts: EncryptOptions,
    key_asked: String,
    kms_url: String,
    out: OutputArgs,
    cancel: &'static AtomicBool,
) -> anyhow::Result<i32> {
    let kms = Kms::new(kms_options()?, None);
    let bars = bars("encrypt", &out)?.cancelled_by(cancel);
    let r = encrypt(&opts, &kms, &bars, cancel).map_err(|e| match e {
        Error::Kms(k) => explain(k, &key_asked, Where { url: &kms_url }),
        e => unwrap_advice(e),
    })?;
    if let Some(st) = &r.finished_before {
        return Ok(finished_before(&opts, &out, &r, st));
    }
    // What this run did, then what the vault holds: files resumed from an interrupted run or
    // reused from the --since vault were not encrypted now.
    let resumed = r.resumed_files - r.reused_files;
    let sealed_now = r.files - r.resumed_files;
    let line = format!(
        "encrypted {} files, {}{} in {:.2} s ({:.2} GB/s) into {}{}{}{}; it holds {} files, {} dirs, {} symlinks{}, {} in {} batch(es); {} skipped, {} failed",
        sealed_now,
        human_bytes(r.bytes_read),
        if r.gap_bytes > 0 {
            format!(" (and {} of holes and zeros, not stored)", human_bytes(r.gap_bytes))
        } else {
            String::new()
        },
        r.seconds,
        rate(r.bytes_read, r.seconds),
        opts.vault,
        match &opts.shard {
            Some(s) => format!(" (part {} of {})", s.mark.index, s.mark.count),
            None => String::new(),
        },
        if opts.sync { "" } else { " (not synced: --no-sync)" },
        if opts.since.is_some() { format!(", {} unchanged files ({}) reused from the earlier vault", r.reused_files, human_bytes(r.reused_bytes)) } else { String::new() }
            + &if resumed > 0 { format!(", {resumed} files taken from the interrupted run") } else { String::new() },
        r.files,
        r.dirs,
        r.symlinks,
        others(r.hardlinks, r.specials),
        human_bytes(r.bytes),
        r.batches,
        r.skipped.len(),
        r.failed.len()
    );
    bars.print_failures(&r.failed);
    summary(
        out.quiet,
        out.json,
        line,
        json!({
            "command": "encrypt",
            "outcome": "encrypted", "stale": null, "bytes_read": r.bytes_read,
            "vault": opts.vault,
            "files": r.files, "dirs": r.dirs, "symlinks": r.symlinks, "bytes": r.bytes,
            "hardlinks": r.hardlinks, "specials": r.specials,
            "seconds": r.seconds, "gb_per_s": rate(r.bytes, r.seconds),
            "batches": r.batches, "generated_keys": r.generated_keys,
            "resumed_files": r.resumed_files - r.reused_files, "synced": opts.sync,
            "reused_files": r.reused_files, "reused_bytes": r.reused_bytes,
            "encrypted_files": r.files - r.resumed_files, "gap_bytes": r.gap_bytes,
            "since": opts.since,
            "skipped": failures_json(&r.skipped), "failed": failures_json(&r.failed),
        }),
    );
    Ok(if r.failed.is_empty() { 0 } else { 1 })
}

/// A finished vault run again by the same command: nothing was encrypted; say whether the
/// sources still match it (exit 0) or changed since (exit 1, with the command that makes a new
/// vault from the old one: a finished vault is never rewritten).
fn finished_before(
    opts: &EncryptOptions,
    out: &OutputArgs,
    r: &envseal::pipeline::encrypt::EncryptReport,
    st: &envseal::pipeline::encrypt::Staleness,
) -> i32 {
    let holds = format!(
        "{} files, {} dirs, {} symlinks{}, {}",
        r.files,
        r.dirs,
        r.symlinks,
        others(r.hardlinks, r.specials),
        human_bytes(r.bytes)
    );
    let vault = &opts.vault;
    let mut next = None;
    let line = if st.up_to_date() {
        format!("{vault} is already up to date with its sources ({holds}): nothing read, nothing written")
    } else {
        let line = format!(
            "{vault} was finished by an earlier run and the sources changed since: {} changed, {} appeared, {} vanished (compared by size, mtime, inode and ctime; nothing read, nothing written)",
            st.changed, st.appeared, st.vanished
        );
        // A part has no incremental run (--since is refused with --plan): a new plan is the
        // way to encrypt the changed tree.
        next = opts.shard.is_none().then(|| incremental_command(opts));
        line
    };
    if !out.quiet {
        eprintln!("envseal: {}", sanitize(&line));
        if let Some(cmd) = &next {
            eprintln!(
                "envseal: hint: a finished vault is never rewritten; make a new one that reuses this one's unchanged files: {}",
                sanitize(cmd)
            );
        }
    }
    if out.json {
        let v = json!({
            "command": "encrypt",
            "outcome": if st.up_to_date() { "up_to_date" } else { "stale" },
            "stale": if st.up_to_date() { serde_json::Value::Null } else {
                json!({"changed": st.changed, "appeared": st.appeared, "vanished": st.vanished, "next_command": next})
            },
            "vault": opts.vault,
            "files": r.files, "dirs": r.dirs, "symlinks": r.symlinks, "bytes": r.bytes,
            "hardlinks": r.hardlinks, "specials": r.specials,
            "seconds": r.seconds, "gb_per_s": 0.0, "bytes_read": 0,
            "batches": r.batches, "generated_keys": 0, "resumed_files": 0, "synced": opts.sync,
            "reused_files": 0, "reused_bytes": 0, "encrypted_files": 0, "gap_bytes": 0,
            "since": opts.since, "skipped": [], "failed": [],
        });
        summary(true, true, String::new(), v);
    }
    if st.up_to_date() {
        0
    } else {
        1
    }
}

/// Quotes a word for a POSIX shell when it needs it.
fn shell_word(s: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+,:=@%".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// `envseal encrypt SRC... -o NEW --since OLD` with this run's options: the way to back up a
/// changed tree next to a finished vault.
fn incremental_command(opts: &EncryptOptions) -> String {
    let old = opts.vault.to_string();
    let trimmed = old.trim_end_matches('/');
    let new = match trimmed.strip_suffix(".vault") {
        Some(stem) => format!("{stem}.new.vault"),
        None => format!("{trimmed}.new"),
    };
    let mut c = String::from("envseal encrypt");
    for s in &opts.sources {
        c += &format!(" {}", shell_word(&s.to_string_lossy()));
    }
    c += &format!(" -o {} --since {}", shell_word(&new), shell_word(&old));
    for e in &opts.excludes {
        c += &format!(" --exclude {}", shell_word(e));
    }
    if opts.conceal_names {
        c += " --conceal-names";
    }
    c
}

/// With `--since` and no `--key`: the CMKs that wrap the earlier vault's data keys, so the new
/// vault opens with the same key(s) as the earlier one (its batches are carried over). Those
/// that open the whole earlier vault come first; `--kms` (if given) replaces the first one's
/// KMS (a key store that moved).
fn inherited_keys(
    earlier: &envseal::store::Location,
    kms_flag: Option<&str>,
) -> anyhow::Result<Vec<envseal::kms::keyspec::KeySpec>> {
    let m = envseal::store::open(earlier)
        .and_then(|s| envseal::pipeline::vault::read_manifest(&*s, envseal::format::layout::MANIFEST))
        .map_err(|e| {
            advise(
                e,
                format!(
                    "--since takes the vault an earlier \"envseal encrypt\" made; {earlier} is not one"
                ),
            )
        })?;
    let mut ws = envseal::kms::keyspec::wrappers(&m.batches);
    ws.sort_by_key(|w| !w.opens_alone);
    let mut keys: Vec<envseal::kms::keyspec::KeySpec> = ws
        .into_iter()
        .map(|w| envseal::kms::keyspec::KeySpec {
            kms: w.kms,
            key: w.key_id,
        })
        .collect();
    // Only a URL of the same provider replaces it: a default ENVSEAL_KMS of another kind
    // must not receive this key's id.
    let kind = |u: &str| {
        envseal::kms::ProviderUrl::parse(u)
            .ok()
            .map(|p| std::mem::discriminant(&p))
    };
    if let (Some(first), Some(url)) = (keys.first_mut(), kms_flag) {
        if kind(url) == kind(&first.kms) {
            first.kms = url.to_string();
        } else {
            log::warn!(
                "--kms {url} is not used: without --key the new batches are wrapped as {}'s are, under {}#{}; pass --key to choose another CMK",
                earlier,
                first.kms,
                first.key
            );
        }
    }
    if let Some(k) = keys.first() {
        log::info!(
            "no --key: the new batches are wrapped as {}'s are, first under {}#{}",
            earlier,
            k.kms,
            k.key
        );
    }
    Ok(keys)
}

/// A source that is itself a vault would be encrypted again as plain files (its ciphertext
/// sealed twice): refused unless `--force`, since it is nearly always a swapped argument.
fn check_not_vaults(sources: &[std::path::PathBuf], force: bool) -> anyhow::Result<()> {
    if force {
        return Ok(());
    }
    for src in sources {
        let is_vault = [format::layout::MANIFEST, format::layout::JOURNAL]
            .iter()
            .any(|f| std::fs::symlink_metadata(src.join(f)).is_ok_and(|m| m.is_file()));
        if is_vault {
            return Err(usage(
                format!(
                    "{}: this source is an envseal vault (it has {} or {})",
                    src.display(),
                    format::layout::MANIFEST,
                    format::layout::JOURNAL
                ),
                "the vault goes after -o and the sources come first (envseal encrypt SRC -o VAULT); to store a vault inside another anyway, add --force",
            ));
        }
    }
    Ok(())
}

pub fn decrypt_cmd(mut a: DecryptArgs, cancel: &AtomicBool) -> anyhow::Result<i32> {
    if !a.key.is_empty() {
        return Err(usage(
            "decrypt takes no --key: the vault names the keys that wrap its data keys",
            "to accept only a given master key use --expect-key <CMK> (repeatable); to reach its KMS elsewhere use --kms <URL>",
        ));
    }
    check_vault(&a.vault)?;
    // Paths in a vault are relative to its top (`/etc` was stored as `etc`): a leading '/'
    // is what the user typed from the source's side, not an absolute path in the vault.
    for o in &mut a.only {
        let trimmed = o.trim_start_matches('/');
        if trimmed.len() != o.len() && !trimmed.is_empty() {
            log::info!("--only {o}: paths in a vault are relative to its top; matching {trimmed}");
            *o = trimmed.to_string();
        }
    }
    let Some(output) = a.output else {
        return to_device_cmd(a, cancel);
    };
    check_output_dir("-o", &output)?;
    let inside = a
        .vault
        .local_dir()
        .is_some_and(|v| envseal::fs::resolved(&output).starts_with(envseal::fs::resolved(v)));
    if inside {
        return Err(usage(
            format!(
                "-o {}: inside the vault {}; restored files there would become part of it (verify would report them)",
                output.display(),
                a.vault
            ),
            "choose a destination outside the vault",
        ));
    }
    let opts = DecryptOptions {
        vault: a.vault,
        dest: output,
        only: a.only,
        overwrite: a.overwrite,
        jobs: Jobs::or_cores(a.jobs),
        sync: !a.no_sync,
        owners: match (a.numeric_owner, a.no_owner) {
            (_, true) => Owners::Ignore,
            (true, _) => Owners::Numeric,
            _ => Owners::Auto,
        },
        xattrs: !a.no_xattrs,
    };
    let kms = reading_kms(a.kms)?.expecting(a.expect_key);
    let bars = bars("decrypt", &a.out)?;
    let r = decrypt(&opts, &kms, &bars, cancel).map_err(unwrap_advice)?;
    bars.print_failures(&r.failed);
    let line = format!(
        "decrypted {} files, {} dirs, {} symlinks{}, {} in {:.2} s ({:.2} GB/s) into {} ({}); {} failed{}",
        r.files,
        r.dirs,
        r.symlinks,
        others(r.hardlinks, r.specials),
        human_bytes(r.bytes),
        r.seconds,
        rate(r.bytes, r.seconds),
        opts.dest.display(),
        if r.synced { "synced to disk" } else { "not synced: --no-sync" },
        r.failed.len(),
        if r.integrity_failures > 0 { format!(" ({} integrity failures)", r.integrity_failures) } else { String::new() }
    );
    summary(
        a.out.quiet,
        a.out.json,
        line,
        json!({
            "command": "decrypt",
            "dest": opts.dest,
            "files": r.files, "dirs": r.dirs, "symlinks": r.symlinks, "bytes": r.bytes,
            "hardlinks": r.hardlinks, "specials": r.specials,
            "seconds": r.seconds, "gb_per_s": rate(r.bytes, r.seconds),
            "failed": failures_json(&r.failed), "integrity_failures": r.integrity_failures,
            "synced": r.synced, "vault_bytes_read": r.vault_bytes_read,
            "already_restored": r.already_restored,
        }),
    );
    Ok(if r.integrity_failures > 0 {
        3
    } else if !r.failed.is_empty() {
        1
    } else {
        0
    })
}

/// `decrypt --only ENTRY --to-device TARGET` (src/pipeline/device.rs).
fn to_device_cmd(a: DecryptArgs, cancel: &AtomicBool) -> anyhow::Result<i32> {
    let (Some(target), [entry]) = (a.to_device, a.only.as_slice()) else {
        return Err(usage(
            "--to-device needs exactly one --only naming the image to write",
            "e.g. envseal decrypt disk.vault --only sdb.img --to-device /dev/sdb",
        ));
    };
    let opts = envseal::pipeline::device::DeviceOptions {
        vault: a.vault,
        entry: entry.clone(),
        target,
        jobs: Jobs::or_cores(a.jobs),
    };
    let kms = reading_kms(a.kms)?.expecting(a.expect_key);
    let bars = bars("decrypt", &a.out)?;
    let r = envseal::pipeline::device::restore_to_device(&opts, &kms, &bars, cancel)
        .map_err(unwrap_advice)?;
    let line = format!(
        "wrote {} ({}) onto {} in {:.2} s (synced)",
        entry,
        human_bytes(r.bytes),
        opts.target.display(),
        r.seconds
    );
    summary(
        a.out.quiet,
        a.out.json,
        line,
        json!({
            "command": "decrypt", "entry": entry, "to_device": opts.target,
            "bytes": r.bytes, "target_size": r.target_size, "seconds": r.seconds,
        }),
    );
    Ok(0)
}

pub fn verify_cmd(a: VerifyArgs, cancel: &AtomicBool) -> anyhow::Result<i32> {
    if !a.source.is_empty() {
        return super::lifecycle::verify_source_cmd(a, cancel);
    }
    check_vault(&a.vault)?;
    let opts = VerifyOptions {
        deep: a.deep,
        jobs: Jobs::or_cores(a.jobs),
        sample: a.sample.unwrap_or_default(),
    };
    let kms = reading_kms(a.kms.clone())?.expecting(a.expect_key);
    let bars = bars("verify", &a.out)?;
    let store = envseal::store::open(&a.vault)?;
    let r = verify(&*store, &opts, Some(&kms), &bars, cancel).map_err(unwrap_advice)?;
    for p in &r.problems {
        eprintln!(
            "envseal: {}: {} ({}): {}",
            p.kind.as_str(),
            sanitize(&p.path),
            p.object,
            sanitize(&p.detail)
        );
    }
    let share = if opts.sample == Sample::All {
        String::new()
    } else {
        let pct = if r.object_bytes == 0 {
            100.0
        } else {
            100.0 * r.sampled_bytes as f64 / r.object_bytes as f64
        };
        format!(
            " (a sample: {} of {} object bytes read, {pct:.1}%; the manifest read whole)",
            human_bytes(r.sampled_bytes),
            human_bytes(r.object_bytes)
        )
    };
    let line = format!(
        "verified{} {} objects, {} of plaintext in {:.2} s{share}: {}",
        if r.deep { " (deep)" } else { "" },
        r.files,
        human_bytes(r.bytes),
        r.seconds,
        if r.problems.is_empty() {
            "OK".to_string()
        } else {
            format!("{} problems", r.problems.len())
        }
    );
    summary(
        a.out.quiet,
        a.out.json,
        line,
        json!({
            "command": "verify", "deep": r.deep, "ok": r.problems.is_empty(),
            "files": r.files, "bytes": r.bytes, "seconds": r.seconds,
            "object_bytes": r.object_bytes, "sampled_bytes": r.sampled_bytes,
            "keys": super::lifecycle::wrappers_json(&a.vault, a.kms.as_deref()),
            "problems": r.problems.iter().map(|p| json!({
                "kind": p.kind.as_str(), "path": p.path, "object": p.object, "detail": p.detail
            })).collect::<Vec<_>>(),
        }),
    );
    Ok(if r.problems.is_empty() { 0 } else { 3 })
}

pub fn ls_cmd(a: LsArgs) -> anyhow::Result<i32> {
    if a.keys {
        return super::lifecycle::ls_keys(&a.vault, a.json, a.kms.as_deref());
    }
    // A stream: a million entries are listed without holding them. Concealed names need the
    // key; then the manifest is also authenticated, and a failure after the listing is an
    // error (exit 3) like any other.
    check_vault(&a.vault)?;
    let store = envseal::store::open(&a.vault)?;
    let manifest = envseal::pipeline::vault::open_manifest(&*store)?;
    let concealed = manifest.header.conceal_names;
    let mut unlocked = None;
    let mut reader = if concealed {
        let u = envseal::pipeline::vault::unlock(&*store, &reading_kms(a.kms)?)
            .map_err(unwrap_advice)?;
        let envseal::pipeline::vault::Unlocked { reader, keys } = u;
        unlocked = Some(keys);
        reader
    } else {
        manifest
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    use std::io::Write;
    // Concealed entries are stored in an order unrelated to the tree: revealed, they are
    // sorted (and their tree checked) before listing.
    let mut sorted = Vec::new();
    if concealed {
        while let Some(e) = reader.next_entry()? {
            sorted.push(e);
        }
        envseal::format::manifest::check_tree(&mut sorted)?;
        sorted.reverse();
    }
    loop {
        let next = if concealed {
            sorted.pop()
        } else {
            reader.next_entry()?
        };
        let Some(e) = next else { break };
        let path = e.path.display();
        let (kind, size, target) = match &e.kind {
            EntryKind::File(f) => ("file", f.file_len(), None),
            EntryKind::Dir => ("dir", 0, None),
            EntryKind::Symlink(t) => ("symlink", 0, Some(t.display())),
            EntryKind::HardLink(t) => ("hardlink", 0, Some(t.display())),
            EntryKind::Fifo => ("fifo", 0, None),
            EntryKind::CharDev(_) => ("chardev", 0, None),
            EntryKind::BlockDev(_) => ("blockdev", 0, None),
        };
        let r = if a.json {
            let object = e.file().map(|f| {
                let o = &reader.objects[f.obj as usize];
                json!({"name": o.name(), "offset": f.off, "length": f.record_len(reader.header.segment_size),
                       "stored": f.size})
            });
            writeln!(
                out,
                "{}",
                json!({"path": path, "kind": kind, "size": size, "mode": format!("{:o}", e.mode),
                       "mtime": e.mtime, "target": target, "object": object})
            )
        } else {
            let t = time::OffsetDateTime::from_unix_timestamp(e.mtime)
                .ok()
                .and_then(|t| {
                    t.format(time::macros::format_description!(
                        "[year]-[month]-[day] [hour]:[minute]"
                    ))
                    .ok()
                })
                .unwrap_or_default();
            let tail = target
                .map(|t| format!(" -> {}", sanitize(&t)))
                .unwrap_or_default();
            writeln!(
                out,
                "{:<7} {:>6o} {:>14} {}  {}{}",
                kind,
                e.mode,
                size,
                t,
                sanitize(&path),
                tail
            )
        };
        if let Err(err) = r {
            if err.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(0);
            }
            return Err(err.into());
        }
    }
    out.flush().ok();
    if let Some(keys) = &unlocked {
        for (i, k) in keys.iter().enumerate() {
            reader.authenticate(i, k)?;
        }
    }
    Ok(0)
}
