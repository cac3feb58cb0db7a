//! `verify`: is the vault intact?
//!
//! Without `--deep` no key is needed: every object named by the manifest must exist, have the
//! exact length its plaintext size implies, and hash (BLAKE3) to the manifest's ciphertext
//! digest; objects the manifest does not name are reported as extra; each batch's key file
//! must agree with the manifest. What keyless verify cannot know: whether the manifest itself
//! was rewritten consistently (its MAC needs the key). `--deep` unwraps the keys,
//! authenticates the manifest, opens every segment and checks every plaintext digest, and
//! writes no plaintext anywhere. See docs/VERIFY.md.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::Read;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::format::{self, layout};
use crate::keys::Kms;
use crate::manifest::{Entry, KeyFile, Manifest};
use crate::object::{open_object, ObjectError};
use crate::progress::Progress;
use crate::vault;

/// One problem found, by vault path (or object name for extra objects).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The entry's path (or `<concealed>`), or the stray file for extra objects.
    pub path: String,
    /// The object's name in the vault.
    pub object: String,
    pub kind: ProblemKind,
    pub detail: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProblemKind {
    Missing,
    Corrupt,
    Extra,
    KeyFile,
}

impl ProblemKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemKind::Missing => "missing",
            ProblemKind::Corrupt => "corrupt",
            ProblemKind::Extra => "extra",
            ProblemKind::KeyFile => "key-file",
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct VerifyReport {
    pub deep: bool,
    pub files: u64,
    pub bytes: u64,
    pub problems: Vec<Problem>,
    pub seconds: f64,
}

#[derive(Clone, Debug)]
pub struct VerifyOptions {
    pub deep: bool,
    pub jobs: usize,
}

/// Hashes a whole object file with BLAKE3 (parallel for large ones).
fn hash_file(path: &Path) -> std::io::Result<blake3::Hash> {
    let mut f = File::open(path)?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 8 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if n >= 1 << 20 {
            h.update_rayon(&buf[..n]);
        } else {
            h.update(&buf[..n]);
        }
    }
    Ok(h.finalize())
}

fn check_keyless(
    vault: &Path,
    m: &Manifest,
    e: &Entry,
    progress: &dyn Progress,
) -> Option<Problem> {
    let f = e.file()?;
    let path = vault.join(f.object());
    let problem = |kind, detail: String| Problem {
        path: e.path.display(),
        object: f.object(),
        kind,
        detail,
    };
    let md = match fs::metadata(&path) {
        Ok(md) => md,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Some(problem(
                ProblemKind::Missing,
                "object file is missing".into(),
            ))
        }
        Err(err) => return Some(problem(ProblemKind::Corrupt, err.to_string())),
    };
    let expected = format::object_len(f.size, m.segment_size);
    if md.len() != expected {
        return Some(problem(
            ProblemKind::Corrupt,
            format!("{} bytes, expected {expected}", md.len()),
        ));
    }
    let r = match hash_file(&path) {
        Ok(h) if h == blake3::Hash::from(f.ct_blake3) => None,
        Ok(_) => Some(problem(
            ProblemKind::Corrupt,
            "ciphertext digest mismatch".into(),
        )),
        Err(err) => Some(problem(ProblemKind::Corrupt, err.to_string())),
    };
    progress.bytes(f.size);
    r
}

/// What the vault holds and the format does not name: files under `objects/` that no entry
/// names (links not followed), and anything in the vault root but the manifest, the journal,
/// `objects/` and the key files of the manifest's batches (a stray key file, a `.tmp`).
fn extras(vault: &Path, m: &Manifest) -> Vec<Problem> {
    let extra = |path: String, detail: String| Problem {
        object: path.clone(),
        path,
        kind: ProblemKind::Extra,
        detail,
    };
    let named: HashSet<String> = m
        .entries
        .iter()
        .filter_map(|e| e.file().map(|f| f.object()))
        .collect();
    let mut out = Vec::new();
    match vault::object_files(vault) {
        Ok(files) => out.extend(
            files
                .into_iter()
                .filter(|p| !p.to_str().is_some_and(|s| named.contains(s)))
                .map(|p| {
                    let p = p.display().to_string();
                    extra(p, "not an object named by the manifest".into())
                }),
        ),
        Err(e) => out.push(extra(
            layout::OBJECTS_DIR.into(),
            format!("cannot list objects: {e}"),
        )),
    }
    let keys: HashSet<String> = m.batches.iter().map(|b| b.keys_file()).collect();
    let format_names = [layout::MANIFEST, layout::JOURNAL, layout::OBJECTS_DIR];
    let root = fs::read_dir(vault).and_then(|d| d.collect::<std::io::Result<Vec<_>>>());
    match root {
        Ok(root) => out.extend(root.into_iter().filter_map(|d| {
            let name = d.file_name();
            let known = name
                .to_str()
                .is_some_and(|n| format_names.contains(&n) || keys.contains(n));
            (!known).then(|| {
                let n = name.to_string_lossy().into_owned();
                extra(n, "not part of the vault format".into())
            })
        })),
        Err(e) => out.push(extra(
            vault.display().to_string(),
            format!("cannot list the vault: {e}"),
        )),
    }
    out
}

/// Each batch's key file must exist and agree with the manifest (it is the manifest-free
/// copy of the wrapped keys, FORMAT-RULES 10).
fn key_files(vault: &Path, m: &Manifest) -> Vec<Problem> {
    let mut out = Vec::new();
    for b in &m.batches {
        let name = b.keys_file();
        let p = vault.join(&name);
        // Untrusted input: read at most the limit (FORMAT-RULES 17); more is not a key file.
        let mut d = Vec::new();
        let read = File::open(&p)
            .and_then(|f| f.take(format::MAX_KEY_FILE + 1).read_to_end(&mut d))
            .is_ok_and(|n| n as u64 <= format::MAX_KEY_FILE);
        let ok = read
            .then(|| serde_json::from_slice::<KeyFile>(&d).ok())
            .flatten()
            // The whole record, wrapped keys included: recovery without the manifest uses them.
            .is_some_and(|kf| {
                kf.format == format::FORMAT_VERSION
                    && kf.vault_id == format::to_hex(&m.vault_id)
                    && kf.batch == b.to_record()
            });
        if !ok {
            out.push(Problem {
                path: name.clone(),
                object: name,
                kind: ProblemKind::KeyFile,
                detail: "key file missing, unreadable or not matching the manifest".into(),
            });
        }
    }
    out
}

pub fn verify(
    vault: &Path,
    opts: &VerifyOptions,
    kms: Option<&Kms>,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<VerifyReport> {
    let started = Instant::now();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.jobs.max(1))
        .build()
        .map_err(|e| Error::Runtime(format!("thread pool: {e}")))?;
    let mut report = VerifyReport {
        deep: opts.deep,
        ..Default::default()
    };
    let (m, keys) = if opts.deep {
        let kms = kms.ok_or_else(|| Error::Usage("verify --deep needs a KMS".into()))?;
        let u = crate::vault::unlock(vault, kms)?;
        (u.manifest, Some(u.keys))
    } else {
        (Manifest::read(vault)?, None)
    };
    let files: Vec<&Entry> = m.entries.iter().filter(|e| e.file().is_some()).collect();
    let total: u64 = files
        .iter()
        .filter_map(|e| e.file())
        .fold(0u64, |t, f| t.saturating_add(f.size));
    progress.start(files.len() as u64, total);
    let mut problems: Vec<Problem> = pool.install(|| {
        files
            .par_iter()
            .filter_map(|e| {
                let r = match &keys {
                    None => check_keyless(vault, &m, e, progress),
                    Some(keys) => {
                        let f = e.file()?;
                        match open_object(
                            vault,
                            &m,
                            f,
                            &keys[f.batch],
                            opts.jobs,
                            None,
                            progress,
                            cancel,
                        ) {
                            Ok(()) => None,
                            Err(err) => {
                                let (kind, detail) = match err {
                                    ObjectError::Missing(d) => (ProblemKind::Missing, d),
                                    ObjectError::Integrity(d) => (ProblemKind::Corrupt, d),
                                    ObjectError::Io(e) => (ProblemKind::Corrupt, e.to_string()),
                                    ObjectError::Cancelled => {
                                        (ProblemKind::Corrupt, "interrupted".to_string())
                                    }
                                };
                                Some(Problem {
                                    path: e.path.display(),
                                    object: f.object(),
                                    kind,
                                    detail,
                                })
                            }
                        }
                    }
                };
                progress.file_done();
                r
            })
            .collect()
    });
    if cancel.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(Error::Interrupted);
    }
    problems.extend(extras(vault, &m));
    problems.extend(key_files(vault, &m));
    report.files = files.len() as u64;
    report.bytes = total;
    report.problems = problems;
    progress.finish();
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}
