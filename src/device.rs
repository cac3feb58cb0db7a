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
    pub vault: crate::store::Location,
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
/// a mounted or otherwise claimed device), or an existing regular file; never created or
/// truncated. A symlink the user names (`/dev/mapper/*`, `/dev/disk/by-id/*`, `/dev/VG/LV`:
/// the usual names of a device) is resolved first and the node it leads to is checked and
/// opened without following a link. A target that shares its bytes with a mounted
/// filesystem through a loop device is refused too ([`check_loop_users`]).
fn open_target(p: &Path) -> Result<(File, u64)> {
    let usage = |why: String| Error::Usage(format!("--to-device {}: {why}", p.display()));
    let real = std::fs::canonicalize(p).map_err(|e| usage(e.to_string()))?;
    let md = std::fs::symlink_metadata(&real).map_err(|e| usage(e.to_string()))?;
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
        .open(&real)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::EBUSY) {
                usage("the device is mounted or in use; unmount it first".into())
            } else {
                Error::io(&real, e)
            }
        })?;
    // What was opened is what was checked (the name may have moved in between).
    let opened = f.metadata().at(&real)?;
    use std::os::unix::fs::MetadataExt;
    if (opened.dev(), opened.ino(), opened.rdev()) != (md.dev(), md.ino(), md.rdev()) {
        return Err(usage(
            "changed while being opened; run the same command again".into(),
        ));
    }
    check_loop_users(&opened).map_err(usage)?;
    let size = crate::walk::byte_len(&f, &md).at(&real)?;
    Ok((f, size))
}

/// A loop device bound to a file (from `/sys/block/loopN`).
struct LoopDev {
    name: String,
    /// Its device number (`major`, `minor`).
    rdev: (u32, u32),
    /// Its backing file's (device, inode), when that file can be found from here.
    backing: Option<(u64, u64)>,
}

/// Every bound loop device.
fn loop_devices() -> Vec<LoopDev> {
    use std::os::unix::fs::MetadataExt;
    let Ok(dir) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for d in dir.flatten() {
        let name = d.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        let Ok(file) = std::fs::read_to_string(d.path().join("loop/backing_file")) else {
            continue; // not bound
        };
        let Some(rdev) = std::fs::read_to_string(d.path().join("dev"))
            .ok()
            .and_then(|s| parse_dev(s.trim()))
        else {
            continue;
        };
        let backing = std::fs::metadata(file.trim_end_matches('\n'))
            .ok()
            .map(|m| (m.dev(), m.ino()));
        out.push(LoopDev {
            name,
            rdev,
            backing,
        });
    }
    out
}

/// `major:minor` as sysfs and mountinfo write it.
fn parse_dev(s: &str) -> Option<(u32, u32)> {
    let (a, b) = s.split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Why a loop device is in use: mounted (where), or held by another device (device mapper,
/// md). `None` when neither.
fn loop_in_use(l: &LoopDev, mounts: &str) -> Option<String> {
    let at = mounts.lines().find_map(|line| {
        let f: Vec<&str> = line.split(' ').collect();
        (parse_dev(f.get(2)?)? == l.rdev).then(|| f.get(4).map(|m| m.to_string()))?
    });
    if let Some(at) = at {
        return Some(format!("mounted at {at}"));
    }
    let holders = std::fs::read_dir(format!("/sys/block/{}/holders", l.name))
        .map(|d| {
            d.flatten()
                .map(|h| h.file_name().to_string_lossy().into_owned())
        })
        .map(Iterator::collect::<Vec<_>>)
        .unwrap_or_default();
    (!holders.is_empty()).then(|| format!("held by {}", holders.join(", ")))
}

/// Refuses a target whose bytes a mounted filesystem uses through a loop device, which
/// `O_EXCL` on the target alone does not see: the backing file of a mounted loop device,
/// or another loop device on that same file. The file is named by (device, inode), so a
/// loop device bound through another name of it is found too.
fn check_loop_users(target: &std::fs::Metadata) -> std::result::Result<(), String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let loops = loop_devices();
    let own = (
        rustix::fs::major(target.rdev()),
        rustix::fs::minor(target.rdev()),
    );
    let is_dev = target.file_type().is_block_device();
    let file = if is_dev {
        match loops.iter().find(|l| l.rdev == own) {
            Some(l) => l.backing,
            None => return Ok(()), // not a loop device: O_EXCL told
        }
    } else {
        Some((target.dev(), target.ino()))
    };
    let Some(file) = file else { return Ok(()) };
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for l in loops
        .iter()
        .filter(|l| l.backing == Some(file) && !(is_dev && l.rdev == own))
    {
        if let Some(why) = loop_in_use(l, &mounts) {
            let how = if is_dev {
                "its backing file also backs"
            } else {
                "it is the backing file of"
            };
            return Err(format!(
                "in use: {how} /dev/{}, which is {why}; unmount it (and detach /dev/{}) first",
                l.name, l.name
            ));
        }
    }
    Ok(())
}

pub fn restore_to_device(
    opts: &DeviceOptions,
    kms: &Kms,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<DeviceReport> {
    let started = Instant::now();
    let store = crate::store::open(&opts.vault)?;
    let mut unlocked = unlock(&*store, kms)?;
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
            opts.entry, opts.vault
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
    let ctx = RecordCtx::new(&*store, &r.header, &r.batches, &r.objects, opts.jobs);
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
