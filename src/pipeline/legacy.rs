//! `import-legacy`: reads the files written by the Alibaba Cloud KMS guide's Python
//! envelope-encryption sample and stores their plaintext in a vault (or a directory).
//!
//! Such a file is four lines: the data key's `CiphertextBlob` exactly as `GenerateDataKey`
//! returned it, then base64 of the 16-byte AES-EAX nonce, of the whole-file ciphertext and of
//! the 16-byte tag (pycryptodome's `AES.MODE_EAX`, no associated data, no encryption context).
//! Each key is unwrapped by one `Decrypt` at the KMS the user names; the EAX tag is checked
//! (RustCrypto's `eax`) before any plaintext is kept. A file that does not parse, whose key
//! does not unwrap or whose tag does not check out is named and skipped.
//!
//! The plaintext, in memory already (the guide's files hold a whole file in one line), is
//! sealed straight into a new vault of one batch and one object: nothing is staged on disk
//! and nothing is written outside the vault (or, with `--to`, the destination).

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use aes::Aes256;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use eax::aead::generic_array::GenericArray;
use eax::aead::{AeadInPlace, KeyInit};
use zeroize::Zeroizing;

use crate::error::{Error, IoContext, Result};
use crate::format::manifest::{self, Entry, EntryKind, FileEntry, Header, Name, ObjectRef};
use crate::format::{self, layout, ObjectHeader, ID_LEN};
use crate::kms::keys::Kms;
use crate::kms::keyspec::KeySpec;
use crate::kms::{EncryptionContext, WrappedKey};
use crate::pipeline::encrypt::Failure;
use crate::store::{Shape, Store};

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
    /// The CMK that wrapped its data key, once [`LegacyFile::open`] unwrapped it (when the
    /// KMS's `Decrypt` answer names it).
    pub cmk: Option<String>,
}

/// Parses one guide file; the error says what is wrong with it.
pub fn parse(path: &Path) -> std::result::Result<LegacyFile, String> {
    let f = crate::store::local::open_regular(path)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "no such file".to_string())?;
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
        cmk: None,
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
        let (key, cmk) = provider
            .decrypt_naming_key(&wrapped)
            .map_err(|e| format!("cannot unwrap its data key: {e}"))?;
        self.cmk = cmk;
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
    /// A new vault of one batch, its data key generated under the first key and wrapped
    /// under the others (as `encrypt --key ... --key ...`). No keys: under the CMK that
    /// wrapped the guide files' data keys, at their KMS (as its `Decrypt` names it).
    Vault {
        vault: crate::store::Location,
        keys: Vec<KeySpec>,
    },
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
    /// Batches of the vault written (1), 0 when no vault was written.
    pub batches: u64,
}

/// Imports guide files (see the module documentation).
pub fn import(opts: &ImportOptions, kms: &Kms, cancel: &AtomicBool) -> Result<ImportReport> {
    let mut report = ImportReport::default();
    let mut opened: Vec<(LegacyFile, Zeroizing<Vec<u8>>)> = Vec::new();
    let mut names = std::collections::HashSet::new();
    for path in &opts.files {
        if cancel.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(Error::Interrupted);
        }
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
        ImportTo::Vault { vault, keys } => {
            opened.sort_by(|a, b| {
                std::os::unix::ffi::OsStrExt::as_bytes(a.0.name.as_os_str())
                    .cmp(std::os::unix::ffi::OsStrExt::as_bytes(b.0.name.as_os_str()))
            });
            let keys = if keys.is_empty() {
                vec![legacy_cmk(&opened, &opts.kms_url)?]
            } else {
                keys.clone()
            };
            write_vault(&*crate::store::open(vault)?, &keys, kms, &opened)?;
            report.batches = 1;
        }
    }
    Ok(report)
}

/// The CMK a vault made without `--key` is sealed under: the one that wrapped every imported
/// file's data key (their readers can read the vault, nobody else), else the default alias
/// when the KMS did not name it. Files under different CMKs need an explicit `--key`: one
/// CMK for all would let each CMK's users read the others' files.
fn legacy_cmk(opened: &[(LegacyFile, Zeroizing<Vec<u8>>)], kms_url: &str) -> Result<KeySpec> {
    let mut cmks: Vec<&str> = opened
        .iter()
        .filter_map(|(f, _)| f.cmk.as_deref())
        .collect();
    cmks.sort_unstable();
    cmks.dedup();
    let key = match cmks.as_slice() {
        [] => crate::kms::DEFAULT_ALIAS.to_string(),
        [one] => (*one).to_string(),
        many => {
            return Err(Error::Usage(format!(
                "the files' data keys are wrapped by {} different CMKs ({}); give the vault's CMK with --key",
                many.len(),
                many.join(", ")
            )))
        }
    };
    Ok(KeySpec {
        kms: kms_url.to_string(),
        key,
    })
}

/// Seals the plaintexts into a new vault: one batch (one `GenerateDataKey`, plus one
/// `Encrypt` per further key), one object holding every record, then the manifest (its
/// presence marks the vault finished; a vault killed before it has none and is refused by
/// every reader). `files` are sorted by name (tree order for top-level entries).
fn write_vault(
    vault: &dyn Store,
    keys: &[KeySpec],
    kms: &Kms,
    files: &[(LegacyFile, Zeroizing<Vec<u8>>)],
) -> Result<()> {
    // One writer at a time (docs/LIFECYCLE.md); creates the directory if absent.
    let _lock = vault.lock(true)?;
    let shown = vault.url();
    if !vault.list("")?.is_empty() {
        // An import killed before its manifest left only key files and objects that no
        // manifest will ever name: start it again (docs/RESUME.md, `import-legacy`).
        if vault.len(layout::MANIFEST)?.is_some() {
            return Err(Error::Usage(format!(
                "{shown} is a finished vault; refusing to overwrite it (choose another -o)"
            )));
        }
        if !crate::pipeline::leftovers::unfinished_import(vault)? {
            return Err(Error::Usage(format!(
                "{shown} exists and is not empty; choose another -o (a new directory or prefix) for the vault"
            )));
        }
        crate::pipeline::leftovers::clear_unfinished_import(vault)?;
    }
    let vault_id: [u8; ID_LEN] = format::random().at(&shown)?;
    let batch_id: [u8; ID_LEN] = format::random().at(&shown)?;
    let (batch, bk) = kms.generate_all(keys, &vault_id, batch_id)?;
    crate::pipeline::vault::write_key_file(vault, &vault_id, &batch)?;
    let header = Header {
        vault_id,
        created: crate::pipeline::encrypt::now_rfc3339(),
        generator: format!("envseal {} import-legacy", env!("CARGO_PKG_VERSION")),
        segment_size: format::DEFAULT_SEGMENT_SIZE,
        conceal_names: false,
        shard: None,
    };
    let obj_id: [u8; ID_LEN] = format::random().at(&shown)?;
    // One object of every record, written in order (its length known at the end).
    let shape = Shape {
        len: None,
        head: 0,
        piece: crate::store::COPY_PIECE,
        bound: None,
    };
    let mut out = vault.create_object(&manifest::object_name(&obj_id), shape)?;
    let mut entries = Vec::with_capacity(files.len());
    let mut off = 0u64;
    for (lf, pt) in files {
        let name = std::os::unix::ffi::OsStrExt::as_bytes(lf.name.as_os_str()).to_vec();
        manifest::check_path(&name).map_err(|why| {
            Error::Usage(format!(
                "{}: cannot be imported as {why}",
                lf.path.display()
            ))
        })?;
        let mut h = ObjectHeader {
            version: format::FORMAT_VERSION,
            alg: format::ALG_AES256GCM_BLAKE3,
            segment_size: header.segment_size,
            plain_len: pt.len() as u64,
            vault_id,
            batch_id,
            file_id: format::random().at(&shown)?,
            salt: format::random().at(&shown)?,
            commitment: [0; 32],
        };
        let (record, ct, pt_mac) = crate::pipeline::object::seal_object(&bk, &mut h, pt);
        out.write_at(off, &record)?;
        let md = fs::metadata(&lf.path).at(&lf.path)?;
        use std::os::unix::fs::MetadataExt;
        entries.push(Entry {
            path: Name::Clear(name),
            mode: md.mode() & 0o7777,
            mtime: md.mtime(),
            mtime_nsec: md.mtime_nsec() as u32,
            owner: Some(crate::fs::owner::owner_of(md.uid(), md.gid())),
            linked: false,
            xattrs: crate::format::manifest::Xattrs::None,
            kind: EntryKind::File(FileEntry {
                size: pt.len() as u64,
                batch: 0,
                obj: 0,
                off,
                salt: h.salt,
                ct,
                pt: *pt_mac.as_bytes(),
                sparse: None,
                rlen: None,
            }),
        });
        off += record.len() as u64;
    }
    out.finish()?;
    vault.barrier()?;
    let mut m = crate::pipeline::vault::manifest_writer(vault, layout::MANIFEST, &header)?;
    m.batch(&batch)?;
    m.object(&ObjectRef {
        id: obj_id,
        len: off,
    })?;
    for e in &entries {
        m.entry_line(&e.to_line(None)?)?;
    }
    crate::pipeline::vault::publish_manifest(m, &[&bk], false, vault)
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
