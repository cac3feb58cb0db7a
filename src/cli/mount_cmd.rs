//! `envseal mount`: checks the arguments, then serves the vault in the foreground until it
//! is unmounted (docs/MOUNT.md).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use envseal::mount::{mount, MountOptions};
use envseal::progress::Progress;

use super::args::MountArgs;
use super::kms_cmd::{reading_kms, unwrap_advice};
use super::messages::{check_vault, usage};
use super::output::sanitize;
use super::values::Jobs;

/// Notices of a mount (a file whose record fails authentication): one line each on stderr,
/// as they happen; a mount has no bars.
struct Lines;

impl Progress for Lines {
    fn notice(&self, msg: &str) {
        eprintln!("envseal: {}", sanitize(msg));
    }
}

pub fn run(a: MountArgs, cancel: &'static AtomicBool) -> anyhow::Result<i32> {
    check_vault(&a.vault)?;
    match std::fs::metadata(&a.dir) {
        Ok(md) if md.is_dir() => {}
        Ok(_) => {
            return Err(usage(
                format!("{}: not a directory", a.dir.display()),
                "give an existing directory to mount the vault on",
            ))
        }
        Err(e) => {
            return Err(usage(
                format!("{}: {e}", a.dir.display()),
                format!("create it first: mkdir -p {}", a.dir.display()),
            ))
        }
    }
    if a.cache_mib == 0 || a.cache_mib > 1 << 20 {
        return Err(usage(
            format!("--cache-mib {}: expected 1 to 1048576", a.cache_mib),
            "the default, 64, suits most reads",
        ));
    }
    if a.vault
        .local_dir()
        .is_some_and(|v| envseal::fs::resolved(&a.dir).starts_with(envseal::fs::resolved(v)))
    {
        return Err(usage(
            format!("{}: inside the vault {}", a.dir.display(), a.vault),
            "mount it on a directory outside the vault",
        ));
    }
    let opts = MountOptions {
        vault: a.vault,
        dir: a.dir,
        jobs: Jobs::or_cores(a.jobs),
        cache_bytes: a.cache_mib << 20,
    };
    let kms = reading_kms(a.kms)?.expecting(a.expect_key);
    let shown = opts.dir.display().to_string();
    mount(&opts, &kms, Arc::new(Lines), cancel, || {
        eprintln!(
            "envseal: {} mounted read-only on {}; stop with fusermount3 -u {} or Ctrl-C",
            sanitize(&opts.vault.to_string()),
            sanitize(&shown),
            sanitize(&shown)
        );
    })
    .map_err(unwrap_advice)?;
    Ok(0)
}
