//! Handlers for `encrypt`, `decrypt`, `verify` and `ls`: turn validated arguments into
//! library calls, and reports into summaries and exit codes.

use std::sync::atomic::AtomicBool;

use envseal::decrypt::{decrypt, DecryptOptions};
use envseal::encrypt::{encrypt, EncryptOptions};
use envseal::format;
use envseal::keys::Kms;
use envseal::manifest::{EntryKind, ManifestReader};
use envseal::verify::{verify, VerifyOptions};
use envseal::Error;
use serde_json::json;

use super::args::{DecryptArgs, EncryptArgs, LsArgs, VerifyArgs};
use super::kms_cmd::kms_options;
use super::output::{failures_json, print_failures, rate, sanitize, summary};
use super::progress::Bars;

/// A KMS handle for reading vaults: `--kms` overrides the vault's URLs; `ENVSEAL_KMS` and the
/// comma-separated `ENVSEAL_KMS_TRUST` name remote endpoints the user trusts.
fn reading_kms(override_url: Option<String>) -> anyhow::Result<Kms> {
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

fn jobs(j: Option<usize>) -> anyhow::Result<usize> {
    match j {
        Some(0) => Err(Error::Usage("-j must be at least 1".into()).into()),
        Some(n) => Ok(n),
        None => Ok(std::thread::available_parallelism().map_or(1, |n| n.get())),
    }
}

/// A size flag's value (`1MiB`, `64KiB`, `4GiB`, bytes); errors are usage errors naming it.
fn size_arg(flag: &str, s: &str) -> anyhow::Result<u64> {
    super::size::parse_size(s).map_err(|e| Error::Usage(format!("{flag}: {e}")).into())
}

pub fn encrypt_cmd(a: EncryptArgs, cancel: &AtomicBool) -> anyhow::Result<i32> {
    let seg = size_arg("--segment-size", &a.segment_size)?;
    if !format::valid_segment_size(seg) {
        return Err(Error::Usage(format!(
            "--segment-size {}: must be a power of two from 4KiB to 64MiB",
            a.segment_size
        ))
        .into());
    }
    let kms_url = a.kms.kms.clone().unwrap_or_else(|| "local".to_string());
    let opts = EncryptOptions {
        sources: a.sources,
        vault: a.output,
        key: a.key,
        kms_url: kms_url.clone(),
        segment_size: seg as u32,
        excludes: a.exclude,
        conceal_names: a.conceal_names,
        resume: a.resume,
        jobs: jobs(a.jobs)?,
        batch_max_files: a.batch_max_files.unwrap_or(format::BATCH_MAX_FILES).max(1),
        batch_max_bytes: match &a.batch_max_bytes {
            Some(s) => size_arg("--batch-max-bytes", s)?.max(1),
            None => format::BATCH_MAX_BYTES,
        },
        pack_threshold: match &a.pack_threshold {
            Some(s) => size_arg("--pack-threshold", s)?,
            None => format::DEFAULT_PACK_THRESHOLD,
        },
    };
    let kms = Kms::new(kms_options()?, None);
    let bars = Bars::new("encrypt", a.out.quiet);
    let r = encrypt(&opts, &kms, &bars, cancel)?;
    let line = format!(
        "encrypted {} files, {} dirs, {} symlinks, {} bytes in {:.2} s ({:.2} GB/s) into {}; {} batch(es){}; {} skipped, {} failed",
        r.files,
        r.dirs,
        r.symlinks,
        r.bytes,
        r.seconds,
        rate(r.bytes, r.seconds),
        opts.vault.display(),
        r.batches,
        if r.resumed_files > 0 { format!(", {} files resumed from the journal", r.resumed_files) } else { String::new() },
        r.skipped.len(),
        r.failed.len()
    );
    print_failures(&r.failed);
    summary(
        a.out.quiet,
        a.out.json,
        line,
        json!({
            "command": "encrypt",
            "vault": opts.vault,
            "files": r.files, "dirs": r.dirs, "symlinks": r.symlinks, "bytes": r.bytes,
            "seconds": r.seconds, "gb_per_s": rate(r.bytes, r.seconds),
            "batches": r.batches, "generated_keys": r.generated_keys,
            "resumed_files": r.resumed_files,
            "skipped": failures_json(&r.skipped), "failed": failures_json(&r.failed),
        }),
    );
    Ok(if r.failed.is_empty() { 0 } else { 1 })
}

pub fn decrypt_cmd(a: DecryptArgs, cancel: &AtomicBool) -> anyhow::Result<i32> {
    let opts = DecryptOptions {
        vault: a.vault,
        dest: a.output,
        only: a.only,
        overwrite: a.overwrite,
        jobs: jobs(a.jobs)?,
    };
    let kms = reading_kms(a.kms)?.expecting(a.expect_key);
    let bars = Bars::new("decrypt", a.out.quiet);
    let r = decrypt(&opts, &kms, &bars, cancel)?;
    print_failures(&r.failed);
    let line = format!(
        "decrypted {} files, {} dirs, {} symlinks, {} bytes in {:.2} s ({:.2} GB/s) into {} (synced to disk); {} failed{}",
        r.files,
        r.dirs,
        r.symlinks,
        r.bytes,
        r.seconds,
        rate(r.bytes, r.seconds),
        opts.dest.display(),
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
            "seconds": r.seconds, "gb_per_s": rate(r.bytes, r.seconds),
            "failed": failures_json(&r.failed), "integrity_failures": r.integrity_failures,
            "synced": r.synced, "vault_bytes_read": r.vault_bytes_read,
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

pub fn verify_cmd(a: VerifyArgs, cancel: &AtomicBool) -> anyhow::Result<i32> {
    let opts = VerifyOptions {
        deep: a.deep,
        jobs: jobs(a.jobs)?,
    };
    let kms = reading_kms(a.kms)?.expecting(a.expect_key);
    let bars = Bars::new("verify", a.out.quiet);
    let r = verify(&a.vault, &opts, Some(&kms), &bars, cancel)?;
    for p in &r.problems {
        eprintln!(
            "envseal: {}: {} ({}): {}",
            p.kind.as_str(),
            sanitize(&p.path),
            p.object,
            sanitize(&p.detail)
        );
    }
    let line = format!(
        "verified{} {} objects, {} bytes of plaintext in {:.2} s: {}",
        if r.deep { " (deep)" } else { "" },
        r.files,
        r.bytes,
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
            "problems": r.problems.iter().map(|p| json!({
                "kind": p.kind.as_str(), "path": p.path, "object": p.object, "detail": p.detail
            })).collect::<Vec<_>>(),
        }),
    );
    Ok(if r.problems.is_empty() { 0 } else { 3 })
}

pub fn ls_cmd(a: LsArgs) -> anyhow::Result<i32> {
    // A stream: a million entries are listed without holding them. Concealed names need the
    // key; then the manifest is also authenticated, and a failure after the listing is an
    // error (exit 3) like any other.
    let concealed = ManifestReader::open(&a.vault)?.header.conceal_names;
    let mut unlocked = None;
    let mut reader = if concealed {
        let u = envseal::vault::unlock(&a.vault, &reading_kms(a.kms)?)?;
        let envseal::vault::Unlocked { reader, keys } = u;
        unlocked = Some(keys);
        reader
    } else {
        ManifestReader::open(&a.vault)?
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
        envseal::manifest::check_tree(&mut sorted)?;
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
            EntryKind::File(f) => ("file", f.size, None),
            EntryKind::Dir => ("dir", 0, None),
            EntryKind::Symlink(t) => ("symlink", 0, Some(t.display())),
        };
        let r = if a.json {
            let object = e.file().map(|f| {
                let o = &reader.objects[f.obj as usize];
                json!({"name": o.name(), "offset": f.off, "length": f.record_len(reader.header.segment_size)})
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
