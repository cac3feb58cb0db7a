//! Durability: `syncfs` of a directory's filesystem, the one call by which a local vault's
//! group commits and decrypt make what they wrote durable (one sync per group, never one
//! fsync per file).

use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use crate::error::{Error, IoContext, Result};

/// Writes back everything dirty on the filesystem that holds `dir`.
pub fn syncfs(dir: &File) -> std::io::Result<()> {
    // SAFETY: syncfs on a valid open descriptor.
    match unsafe { libc::syncfs(dir.as_raw_fd()) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// [`syncfs`] of the filesystem that holds `path`, errors naming it.
pub fn sync_path(path: &Path) -> Result<()> {
    let d = File::open(path).at(path)?;
    syncfs(&d).map_err(|e| Error::io(path, e))
}
