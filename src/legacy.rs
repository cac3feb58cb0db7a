//! `import-legacy`: reads the files written by the Alibaba Cloud KMS guide's Python
//! envelope-encryption sample and stores their plaintext in a vault (or a directory).
//!
//! Such a file is four lines: the data key's `CiphertextBlob` exactly as `GenerateDataKey`
//! returned it, then base64 of the 16-byte AES-EAX nonce, of the whole-file ciphertext and of
//! the 16-byte tag (pycryptodome's `AES.MODE_EAX`, no associated data, no encryption context).
//! Each key is unwrapped by one `Decrypt` at the KMS the user names; the EAX tag is checked
//! (RustCrypto's `eax`) before any plaintext is kept. A file that does not parse, whose key
//! does not unwrap or whose tag does not check out is named and skipped.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use aes::Aes256;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use eax::aead::generic_array::GenericArray;
use eax::aead::{AeadInPlace, KeyInit};
use zeroize::Zeroizing;

use crate::encrypt::{encrypt, EncryptOptions, EncryptReport, Failure};
use crate::error::{Error, IoContext, Result};
use crate::format;
use crate::keys::Kms;
use crate::kms::{EncryptionContext, WrappedKey};
use crate::progress::Progress;

/// EAX nonce and tag length in the guide's files (pycryptodome's defaults).
const NONCE_LEN: usize = 16;
const TAG_LEN: usize = 16;
/// The guide's files hold a whole file in one base64 line; refuse ones past this size.
pub const MAX_LEGACY_FILE: u64 = 1 << 30;
/// The suffix the guide gives its output files, dropped from the imported names.
const SUFFIX: &str = ".cipher";

/// One parsed guide file.
pub struct LegacyFile {
    pub path: PathBuf,
    /// The name its plaintext gets (`x.cipher` -> `x`).
    pub name: std::ffi::OsString,
    blob: String,
    nonce: [u8; NONCE_LEN],
    ciphertext: Vec<u8>,
    tag: [u8; TAG_LEN],
}

/// Parses one guide file; the error says what is wrong with it.
pub fn parse(path: &Path) -> std::result::Result<LegacyFile, String> {
    let f = crate::vault::open_regular(path).map_err(|e| e.to_string())?;
    let mut text = String::new();
    f.take(MAX_LEGACY_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read it as text: {e}"))?;
    if text.len() as u64 > MAX_LEGACY_FILE {
        return Err(format!("larger than {MAX_LEGACY_FILE} bytes"));
    }
    let lines: Vec<&str> = text
        .strip_suffix('\n')
        .unwrap_or(&text)
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect();
    // The ciphertext of an empty file is an empty line; the other three never are.
    if lines.len() != 4 || [0, 1, 3].iter().any(|&i| lines[i].is_empty()) {
        return Err(format!(
            "{} line(s); expected 4 (CiphertextBlob, base64 nonce, base64 ciphertext, base64 tag)",
            lines.len()
        ));
    }
    let b64 = |i: usize, what: &str| {
        B64.decode(lines[i].trim())
            .map_err(|_| format!("line {}: the {what} is not valid base64", i + 1))
    };
    b64(0, "CiphertextBlob")?;
    let fixed = |i: usize, what: &str| -> std::result::Result<[u8; 16], String> {
        let v = b64(i, what)?;
        v.as_slice().try_into().map_err(|_| {
            format!(
                "line {}: the {what} has {} bytes, expected 16",
                i + 1,
                v.len()
            )
        })
    };
    let nonce = fixed(1, "nonce")?;
    let ciphertext = b64(2, "ciphertext")?;
    let tag = fixed(3, "tag")?;
    let file_name = path
        .file_name()
        .ok_or_else(|| "no file name".to_string())?
        .to_string_lossy()
        .into_owned();
    let name = match file_name.strip_suffix(SUFFIX) {
        Some(n) if !n.is_empty() => path
            .file_name()
            .map(|f| {
                let b = std::os::unix::ffi::OsStrExt::as_bytes(f);
                std::os::unix::ffi::OsStrExt::from_bytes(&b[..b.len() - SUFFIX.len()])
            })
            .map(std::ffi::OsStr::to_os_string)
            .unwrap_or_default(),
        _ => path
            .file_name()
            .map(|f| f.to_os_string())
            .unwrap_or_default(),
    };
    Ok(LegacyFile {
        path: path.to_path_buf(),
        name,
        blob: lines[0].trim().to_string(),
        nonce,
        ciphertext,
        tag,
    })
}

impl LegacyFile {
    /// Unwraps the data key (one `Decrypt` at `kms_url`, no encryption context, as the guide
    /// generates it) and opens the ciphertext; plaintext only if the tag checks out.
    pub fn open(
        &mut self,
        kms: &Kms,
        kms_url: &str,
    ) -> std::result::Result<Zeroizing<Vec<u8>>, String> {
        let provider = kms.provider(kms_url).map_err(|e| e.to_string())?;
        let wrapped = WrappedKey {
            kms: provider.url(),
            key_id: String::new(),
            blob: self.blob.clone(),
            context: EncryptionContext::default(),
        };
        let key = provider
            .decrypt(&wrapped)
            .map_err(|e| format!("cannot unwrap its data key: {e}"))?;
        let cipher = eax::Eax::<Aes256>::new(GenericArray::from_slice(key.expose()));
        let mut buf = Zeroizing::new(std::mem::take(&mut self.ciphertext));
        cipher
            .decrypt_in_place_detached(
                GenericArray::from_slice(&self.nonce),
                b"",
                &mut buf,
                GenericArray::from_slice(&self.tag),
            )
            .map_err(|_| {
                "the EAX tag does not check out (damaged, or not made with this key); nothing released"
                    .to_string()
            })?;
        Ok(buf)
    }
}

/// Where the plaintext goes.
#[derive(Clone, Debug)]
pub enum ImportTo {
    /// Plaintext files in this directory (created if absent; existing files are kept).
    Dir(PathBuf),
    /// A new vault, made by `encrypt` with these options (`sources` is filled in).
    Vault(Box<EncryptOptions>),
}

#[derive(Clone, Debug)]
pub struct ImportOptions {
    pub files: Vec<PathBuf>,
    /// The KMS that holds the guide's CMK.
    pub kms_url: String,
    pub to: ImportTo,
}

#[derive(Clone, Debug, Default)]
pub struct ImportReport {
    pub imported: u64,
    pub bytes: u64,
    /// Files named and skipped, with why.
    pub bad: Vec<Failure>,
    /// The vault run, for `ImportTo::Vault` when anything was imported.
    pub encrypt: Option<EncryptReport>,
}

/// Imports guide files (see the module documentation).
pub fn import(
    opts: &ImportOptions,
    kms: &Kms,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<ImportReport> {
    let mut report = ImportReport::default();
    let mut opened: Vec<(LegacyFile, Zeroizing<Vec<u8>>)> = Vec::new();
    let mut names = std::collections::HashSet::new();
    for path in &opts.files {
        let bad = |why: String| Failure {
            path: path.display().to_string(),
            why,
        };
        let lf = match parse(path) {
            Ok(lf) => lf,
            Err(why) => {
                report.bad.push(bad(why));
                continue;
            }
        };
        if !names.insert(lf.name.clone()) {
            report.bad.push(bad(format!(
                "another input is imported as {} too",
                lf.name.to_string_lossy()
            )));
            continue;
        }
        let mut lf = lf;
        match lf.open(kms, &opts.kms_url) {
            Ok(pt) => {
                report.imported += 1;
                report.bytes += pt.len() as u64;
                opened.push((lf, pt));
            }
            Err(why) => report.bad.push(bad(why)),
        }
    }
    if opened.is_empty() {
        return Ok(report);
    }
    match &opts.to {
        ImportTo::Dir(dest) => {
            fs::create_dir_all(dest).at(dest)?;
            for (lf, pt) in &opened {
                let out = dest.join(&lf.name);
                if let Err(e) = write_new(&out, pt, &lf.path) {
                    report.imported -= 1;
                    report.bytes -= pt.len() as u64;
                    report.bad.push(Failure {
                        path: lf.path.display().to_string(),
                        why: e.to_string(),
                    });
                }
            }
        }
        ImportTo::Vault(enc) => {
            let staging = Staging::new()?;
            let mut sources = Vec::new();
            for (lf, pt) in &opened {
                let p = staging.dir.join(&lf.name);
                write_new(&p, pt, &lf.path)?;
                sources.push(p);
            }
            drop(opened);
            let run = EncryptOptions {
                sources,
                ..(**enc).clone()
            };
            report.encrypt = Some(encrypt(&run, kms, progress, cancel)?);
        }
    }
    Ok(report)
}

/// Writes a new file (never replacing one) with the mode and mtime of the guide file it
/// comes from, synced.
fn write_new(out: &Path, data: &[u8], from: &Path) -> Result<()> {
    let md = fs::metadata(from).at(from)?;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(out)
        .at(out)?;
    let done = f
        .write_all(data)
        .and_then(|_| {
            f.set_permissions(fs::Permissions::from_mode(md.permissions().mode() & 0o7777))
        })
        .and_then(|_| f.set_modified(md.modified()?))
        .and_then(|_| f.sync_all());
    if let Err(e) = done {
        let _ = fs::remove_file(out);
        return Err(Error::io(out, e));
    }
    Ok(())
}

/// A private directory (0700) for the plaintext on its way into the vault: in `/dev/shm`
/// (memory) when there is one, else the temporary directory. Removed when dropped.
struct Staging {
    dir: PathBuf,
}

impl Staging {
    fn new() -> Result<Staging> {
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let id: [u8; 16] = format::random().at(&base)?;
        let dir = base.join(format!("envseal-import-{}", format::to_hex(&id)));
        fs::DirBuilder::new().mode(0o700).create(&dir).at(&dir)?;
        Ok(Staging { dir })
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> std::result::Result<LegacyFile, String> {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.txt.cipher");
        fs::write(&p, text).unwrap();
        parse(&p)
    }

    #[test]
    fn the_four_lines_are_checked() {
        let n = B64.encode([7u8; 16]);
        let ok = parsed(&format!("YmxvYg==\n{n}\n{}\n{n}\n", B64.encode(b"ct"))).unwrap();
        assert_eq!(ok.name, "x.txt");
        assert_eq!(ok.ciphertext, b"ct");
        // An empty file's ciphertext is an empty line.
        assert!(parsed(&format!("YmxvYg==\n{n}\n\n{n}\n")).is_ok());
        for (bad, why) in [
            (format!("YmxvYg==\n{n}\n{n}\n"), "3 line(s)"),
            (format!("YmxvYg==\n{n}\nYQ==\n{n}\nextra\n"), "5 line(s)"),
            (format!("YmxvYg==\n!!\nYQ==\n{n}\n"), "line 2"),
            (
                format!("YmxvYg==\n{n}\nYQ==\n{}\n", B64.encode([1u8; 12])),
                "12 bytes",
            ),
            (format!("\n{n}\nYQ==\n{n}\n"), "expected 4"),
        ] {
            let e = parsed(&bad).err().unwrap();
            assert!(e.contains(why), "{e}");
        }
    }
}
