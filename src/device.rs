//! `decrypt --only ENTRY --to-device TARGET`: writes one file entry (a disk image) back onto a
//! block device or an existing file at least as large, in place.
//!
//! Segment by segment: each segment is authenticated before it is written, and the record's
//! plaintext digest is checked at the end (docs/FORMAT.md §4.3). A failure midway (a tampered
//! segment, exit 3) leaves TARGET with some segments of the image written and the rest as
//! they were: the device holds no consistent image until the same command succeeds. Stage
//! into a file first (`decrypt --only`) when that matters more than the extra copy.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use crate::error::{Error, IoContext, Result};
use crate::keys::Kms;
use crate::manifest::EntryKind;
use crate::object::{open_record, ObjectError, RecordCtx};
use crate::progress::Progress;
use crate::vault::unlock;

pub struct DeviceOptions {
    pub vault: PathBuf,
    /// The vault path of the file entry to write (as `envseal ls` prints it).
    pub entry: String,
    pub target: PathBuf,
    pub jobs: usize,
}

#[derive(Clone, Debug, Default)]
pub struct DeviceReport {
    pub bytes: u64,
    /// The target's size (the image fills its start).
    pub target_size: u64,
    pub seconds: f64,
}

/// Opens TARGET for writing in place: a block device exclusively (Linux refuses `O_EXCL` on
/// a mounted or otherwise claimed device), or an existing regular file; never created,
/// truncated or followed through a link.
fn open_target(p: &Path) -> Result<(File, u64)> {
    let usage = |why: String| Error::Usage(format!("--to-device {}: {why}", p.display()));
    let md = std::fs::symlink_metadata(p).map_err(|e| usage(e.to_string()))?;
    let ft = md.file_type();
    let flags = if ft.is_block_device() {
        libc::O_EXCL
    } else if ft.is_file() {
        0
    } else {
        return Err(usage("not a block device or a regular file".into()));
    };
    let f = OpenOptions::new()
        .write(true)
        .custom_flags(flags | libc::O_NOFOLLOW)
        .open(p)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::EBUSY) {
                usage("the device is mounted or in use; unmount it first".into())
            } else {
                Error::io(p, e)
            }
        })?;
    let size = crate::walk::byte_len(&f, &md).at(p)?;
    Ok((f, size))
}

pub fn restore_to_device(
    opts: &DeviceOptions,
    kms: &Kms,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<DeviceReport> {
    let started = Instant::now();
    let mut unlocked = unlock(&opts.vault, kms)?;
    // The whole manifest is authenticated before anything is written.
    let mut found = None;
    while let Some(e) = unlocked.reader.next_entry()? {
        if e.path.clear() == Some(opts.entry.as_bytes()) {
            found = Some(e);
        }
    }
    unlocked.authenticate()?;
    let e = found.ok_or_else(|| {
        Error::Usage(format!(
            "--only {}: no such entry in {} (envseal ls lists them)",
            opts.entry,
            opts.vault.display()
        ))
    })?;
    let EntryKind::File(f) = &e.kind else {
        return Err(Error::Usage(format!(
            "--only {}: not a file; --to-device writes one file (a disk image)",
            opts.entry
        )));
    };
    let (out, target_size) = open_target(&opts.target)?;
    if target_size < f.file_len() {
        return Err(Error::Usage(format!(
            "--to-device {}: {} bytes, smaller than {} ({} bytes)",
            opts.target.display(),
            target_size,
            opts.entry,
            f.file_len()
        )));
    }
    let r = &unlocked.reader;
    let ctx = RecordCtx::new(&opts.vault, &r.header, &r.batches, &r.objects, opts.jobs);
    progress.start(1, f.size);
    let key = &unlocked.keys[f.batch as usize];
    // The target holds older bytes: the image's holes and zero extents are zeroed on it
    // (before the data, so a failure midway leaves the same state as without gaps).
    if let Some(sp) = &f.sparse {
        crate::sparse::zero_gaps(&out, sp).at(&opts.target)?;
    }
    match open_record(&ctx, f, key, Some(&out), progress, cancel) {
        Ok(()) => {}
        Err(ObjectError::Cancelled) => return Err(Error::Interrupted),
        Err(ObjectError::Integrity(why) | ObjectError::Missing(why)) => {
            return Err(Error::integrity(
                &opts.entry,
                format!(
                    "{why}; {} now holds part of the image: run the same command again once the vault is whole",
                    opts.target.display()
                ),
            ))
        }
        Err(ObjectError::Io(err)) => return Err(err),
    }
    out.sync_all().at(&opts.target)?;
    progress.file_done();
    progress.finish();
    Ok(DeviceReport {
        bytes: f.file_len(),
        target_size,
        seconds: started.elapsed().as_secs_f64(),
    })
}
