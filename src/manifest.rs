//! The manifest (`manifest.jsonl`), key files (`keys-<batch>.json`) and their records.
//!
//! JSON Lines, readable with standard tools: a `vault` record, one `batch` record per data
//! key, one `entry` record per path (sorted by path bytes), and a final `end` record with the
//! entry count and one MAC per batch. Each MAC is a keyed BLAKE3 (key derived from that batch's
//! data key) over every byte before the `end` line and the count, so any change, truncation,
//! reordering or addition is detected with any one batch key. See docs/FORMAT.md §Manifest.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::crypto::{BatchKey, NameKey};
use crate::error::{Error, IoContext, Result};
use crate::format::{self, layout, DIGEST_LEN, ID_LEN, SALT_LEN};
use crate::kms::WrappedKey;

/// Associated data for sealed names, so a sealed path cannot stand in for a link target.
const AAD_PATH: &[u8] = b"envseal path";
const AAD_TARGET: &[u8] = b"envseal link target";

/// One batch: a data key and its wrappings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub batch_id: [u8; ID_LEN],
    pub key_commitment: [u8; DIGEST_LEN],
    pub wrapped: Vec<WrappedKey>,
}

impl Batch {
    pub fn id_hex(&self) -> String {
        format::to_hex(&self.batch_id)
    }

    /// The key file's name in the vault.
    pub fn keys_file(&self) -> String {
        format!(
            "{}{}{}",
            layout::KEYS_PREFIX,
            self.id_hex(),
            layout::KEYS_SUFFIX
        )
    }
}

/// A path as stored: clear bytes, or sealed under the name key until revealed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Name {
    Clear(Vec<u8>),
    Sealed(Vec<u8>),
}

impl Name {
    /// The clear bytes, if revealed.
    pub fn clear(&self) -> Option<&[u8]> {
        match self {
            Name::Clear(b) => Some(b),
            Name::Sealed(_) => None,
        }
    }

    /// For messages: the path, or a placeholder when it is concealed.
    pub fn display(&self) -> String {
        match self {
            Name::Clear(b) => String::from_utf8_lossy(b).into_owned(),
            Name::Sealed(_) => "<concealed>".to_string(),
        }
    }
}

/// A regular file's record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileEntry {
    pub size: u64,
    /// Index into the manifest's batches.
    pub batch: usize,
    pub file_id: [u8; ID_LEN],
    pub salt: [u8; SALT_LEN],
    pub ct_blake3: [u8; DIGEST_LEN],
    pub pt_mac: [u8; DIGEST_LEN],
}

impl FileEntry {
    /// The object's path relative to the vault (derived from the file id, never stored input).
    pub fn object(&self) -> String {
        object_name(&self.file_id)
    }
}

/// `objects/<first two hex digits>/<file id hex>`.
pub fn object_name(file_id: &[u8; ID_LEN]) -> String {
    let h = format::to_hex(file_id);
    format!("{}/{}/{}", layout::OBJECTS_DIR, &h[..2], h)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    File(FileEntry),
    Dir,
    Symlink(Name),
}

/// One path in the vault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub path: Name,
    pub mode: u32,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub kind: EntryKind,
}

impl Entry {
    pub fn file(&self) -> Option<&FileEntry> {
        match &self.kind {
            EntryKind::File(f) => Some(f),
            _ => None,
        }
    }
}

/// A whole manifest in memory.
#[derive(Debug)]
pub struct Manifest {
    pub vault_id: [u8; ID_LEN],
    pub created: String,
    pub generator: String,
    pub segment_size: u32,
    pub conceal_names: bool,
    pub batches: Vec<Batch>,
    pub entries: Vec<Entry>,
}

// ---- wire records ----------------------------------------------------------------------

#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum Record {
    Vault(VaultRecord),
    Batch(BatchRecord),
    Entry(Box<EntryRecord>),
    End(EndRecord),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct VaultRecord {
    format: u16,
    vault_id: String,
    created: String,
    generator: String,
    segment_size: u32,
    conceal_names: bool,
}

/// A batch as written in the manifest, the journal and (with a header) its key file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BatchRecord {
    pub batch_id: String,
    pub key_commitment: String,
    pub keys_file: String,
    pub wrapped: Vec<WrappedKey>,
}

/// An entry as written in the manifest and the journal.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EntryRecord {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_b64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enc_path: Option<String>,
    pub kind: String,
    pub mode: u32,
    pub mtime: i64,
    pub mtime_nsec: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub salt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ct_blake3: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pt_mac: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_b64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enc_target: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndRecord {
    entries: u64,
    macs: Vec<BatchMac>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchMac {
    batch_id: String,
    mac: String,
}

/// The key file of one batch, written before any of its ciphertext exists.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    pub format: u16,
    pub vault_id: String,
    #[serde(flatten)]
    pub batch: BatchRecord,
}

fn bad(what: &str, why: impl Into<String>) -> Error {
    Error::format(what, why)
}

/// A record of a known format version that does not validate (a field that disagrees with
/// another, an unsafe path) can only come from damage or tampering: exit 3, not 1.
fn tampered(e: Error) -> Error {
    match e {
        Error::Format { what, why } => Error::Integrity { what, why },
        e => e,
    }
}

impl Batch {
    pub fn to_record(&self) -> BatchRecord {
        BatchRecord {
            batch_id: self.id_hex(),
            key_commitment: format::to_hex(&self.key_commitment),
            keys_file: self.keys_file(),
            wrapped: self.wrapped.clone(),
        }
    }

    pub fn from_record(r: &BatchRecord, what: &str) -> Result<Self> {
        let batch_id = format::from_hex(&r.batch_id).ok_or_else(|| bad(what, "bad batch_id"))?;
        let key_commitment =
            format::from_hex(&r.key_commitment).ok_or_else(|| bad(what, "bad key_commitment"))?;
        if r.wrapped.is_empty() || r.wrapped.len() > format::MAX_WRAPPED_KEYS {
            return Err(bad(what, "a batch needs 1 to 64 wrapped keys"));
        }
        let b = Batch {
            batch_id,
            key_commitment,
            wrapped: r.wrapped.clone(),
        };
        if r.keys_file != b.keys_file() {
            return Err(bad(what, "keys_file does not match batch_id"));
        }
        Ok(b)
    }
}

fn name_fields(
    name: &Name,
    name_key: Option<&NameKey>,
    aad: &[u8],
) -> Result<(Option<String>, Option<String>, Option<String>)> {
    let Name::Clear(bytes) = name else {
        return Err(Error::Runtime("cannot write a still-sealed name".into()));
    };
    if let Some(k) = name_key {
        let sealed = k
            .seal(bytes, aad)
            .map_err(|e| Error::Runtime(e.to_string()))?;
        return Ok((None, None, Some(B64.encode(sealed))));
    }
    Ok(match std::str::from_utf8(bytes) {
        Ok(s) => (Some(s.to_string()), None, None),
        Err(_) => (None, Some(B64.encode(bytes)), None),
    })
}

fn parse_name(
    clear: &Option<String>,
    b64: &Option<String>,
    sealed: &Option<String>,
    what: &str,
) -> Result<Name> {
    match (clear, b64, sealed) {
        (Some(s), None, None) => Ok(Name::Clear(s.as_bytes().to_vec())),
        (None, Some(b), None) => Ok(Name::Clear(
            B64.decode(b).map_err(|_| bad(what, "bad base64 name"))?,
        )),
        (None, None, Some(e)) => Ok(Name::Sealed(
            B64.decode(e)
                .map_err(|_| bad(what, "bad base64 sealed name"))?,
        )),
        _ => Err(bad(what, "exactly one name field is required")),
    }
}

impl Entry {
    /// The record for this entry; names are sealed when `name_key` is given.
    pub fn to_record(&self, batches: &[Batch], name_key: Option<&NameKey>) -> Result<EntryRecord> {
        let (path, path_b64, enc_path) = name_fields(&self.path, name_key, AAD_PATH)?;
        let mut r = EntryRecord {
            path,
            path_b64,
            enc_path,
            mode: self.mode,
            mtime: self.mtime,
            mtime_nsec: self.mtime_nsec,
            ..Default::default()
        };
        match &self.kind {
            EntryKind::Dir => r.kind = "dir".into(),
            EntryKind::Symlink(t) => {
                r.kind = "symlink".into();
                (r.target, r.target_b64, r.enc_target) = name_fields(t, name_key, AAD_TARGET)?;
            }
            EntryKind::File(f) => {
                r.kind = "file".into();
                r.size = Some(f.size);
                r.batch_id = Some(
                    batches
                        .get(f.batch)
                        .ok_or_else(|| Error::Runtime("entry names a missing batch".into()))?
                        .id_hex(),
                );
                r.file_id = Some(format::to_hex(&f.file_id));
                r.object = Some(f.object());
                r.salt = Some(format::to_hex(&f.salt));
                r.ct_blake3 = Some(format::to_hex(&f.ct_blake3));
                r.pt_mac = Some(format::to_hex(&f.pt_mac));
            }
        }
        Ok(r)
    }

    /// Parses and validates a record (paths are checked for safety by [`check_path`]).
    pub fn from_record(r: &EntryRecord, batches: &[Batch], what: &str) -> Result<Entry> {
        let path = parse_name(&r.path, &r.path_b64, &r.enc_path, what)?;
        if let Name::Clear(p) = &path {
            check_path(p).map_err(|why| bad(what, why))?;
        }
        let hex32 = |v: &Option<String>, f: &str| -> Result<[u8; 32]> {
            v.as_deref()
                .and_then(format::from_hex)
                .ok_or_else(|| bad(what, format!("missing or bad {f}")))
        };
        if r.mode & !0o7777 != 0 {
            return Err(bad(what, "mode holds more than permission bits"));
        }
        let kind = match r.kind.as_str() {
            "dir" => EntryKind::Dir,
            "symlink" => {
                let t = parse_name(&r.target, &r.target_b64, &r.enc_target, what)?;
                if let Name::Clear(t) = &t {
                    check_target(t).map_err(|why| bad(what, why))?;
                }
                EntryKind::Symlink(t)
            }
            "file" => {
                let bid: [u8; ID_LEN] = r
                    .batch_id
                    .as_deref()
                    .and_then(format::from_hex)
                    .ok_or_else(|| bad(what, "missing or bad batch_id"))?;
                let batch = batches
                    .iter()
                    .position(|b| b.batch_id == bid)
                    .ok_or_else(|| bad(what, "entry names an unknown batch"))?;
                let file_id: [u8; ID_LEN] = r
                    .file_id
                    .as_deref()
                    .and_then(format::from_hex)
                    .ok_or_else(|| bad(what, "missing or bad file_id"))?;
                let f = FileEntry {
                    size: r.size.ok_or_else(|| bad(what, "file without size"))?,
                    batch,
                    file_id,
                    salt: hex32(&r.salt, "salt")?,
                    ct_blake3: hex32(&r.ct_blake3, "ct_blake3")?,
                    pt_mac: hex32(&r.pt_mac, "pt_mac")?,
                };
                if r.object.as_deref() != Some(f.object().as_str()) {
                    return Err(bad(what, "object name does not match file_id"));
                }
                EntryKind::File(f)
            }
            other => return Err(bad(what, format!("unknown entry kind {other:?}"))),
        };
        Ok(Entry {
            path,
            mode: r.mode,
            mtime: r.mtime,
            mtime_nsec: r.mtime_nsec,
            kind,
        })
    }
}

/// A vault path must be relative, '/'-separated, without empty, `.` or `..` components and
/// without NUL bytes, so that joining it under a destination cannot escape it.
pub fn check_path(p: &[u8]) -> std::result::Result<(), String> {
    if p.is_empty() || p.len() > format::MAX_PATH_BYTES {
        return Err("empty or over-long path".into());
    }
    if p.contains(&0) {
        return Err("path contains NUL".into());
    }
    for c in p.split(|&b| b == b'/') {
        if c.is_empty() || c == b"." || c == b".." {
            return Err(format!(
                "unsafe path {:?} (absolute, empty, . or .. component)",
                String::from_utf8_lossy(p)
            ));
        }
    }
    Ok(())
}

/// A link target: not empty, at most 4096 bytes, no NUL (it may point anywhere: links are
/// created after every file, so nothing is ever written through one).
fn check_target(t: &[u8]) -> std::result::Result<(), String> {
    if t.is_empty() || t.len() > format::MAX_PATH_BYTES || t.contains(&0) {
        return Err("empty, over-long or NUL-holding link target".into());
    }
    Ok(())
}

fn end_mac_input(entries: u64) -> [u8; 28] {
    let mut b = [0u8; 28];
    b[..20].copy_from_slice(b"envseal manifest end");
    b[20..].copy_from_slice(&entries.to_be_bytes());
    b
}

fn json_line(r: &Record) -> Result<Vec<u8>> {
    let mut v = serde_json::to_vec(r).map_err(|e| Error::Runtime(e.to_string()))?;
    v.push(b'\n');
    Ok(v)
}

impl Manifest {
    /// Serializes the manifest and writes it atomically to `vault/manifest.jsonl`
    /// (temporary file, fsync, rename, directory fsync). `keys[i]` is batch i's key.
    pub fn write(&self, vault: &Path, keys: &[&BatchKey]) -> Result<()> {
        let name_key = if self.conceal_names {
            Some(
                keys.first()
                    .ok_or_else(|| Error::Runtime("no batch key".into()))?
                    .name_key(),
            )
        } else {
            None
        };
        let mut body = Vec::new();
        body.extend(json_line(&Record::Vault(VaultRecord {
            format: format::FORMAT_VERSION,
            vault_id: format::to_hex(&self.vault_id),
            created: self.created.clone(),
            generator: self.generator.clone(),
            segment_size: self.segment_size,
            conceal_names: self.conceal_names,
        }))?);
        for b in &self.batches {
            body.extend(json_line(&Record::Batch(b.to_record()))?);
        }
        let mut lines = Vec::new();
        for e in &self.entries {
            let line = json_line(&Record::Entry(Box::new(
                e.to_record(&self.batches, name_key.as_ref())?,
            )))?;
            if name_key.is_some() {
                lines.push(line);
            } else {
                body.extend(line);
            }
        }
        // Listed in clear-path order, concealed entries (whose kinds, sizes and times stay
        // visible) would give the tree's shape away. Their lines start with `enc_path`, whose
        // first bytes are a random nonce: sorted lines are in an order unrelated to the names.
        lines.sort_unstable();
        for line in lines {
            body.extend(line);
        }
        let n = self.entries.len() as u64;
        let mut macs = Vec::new();
        for (b, k) in self.batches.iter().zip(keys) {
            let mut h = blake3::Hasher::new_keyed(&k.manifest_mac_key());
            h.update(&body);
            h.update(&end_mac_input(n));
            macs.push(BatchMac {
                batch_id: b.id_hex(),
                mac: h.finalize().to_hex().to_string(),
            });
        }
        body.extend(json_line(&Record::End(EndRecord { entries: n, macs }))?);
        write_atomic(&vault.join(layout::MANIFEST), &body)
    }

    /// Opens `vault/manifest.jsonl`, with a hint when the vault is unfinished.
    fn open(vault: &Path) -> Result<File> {
        let path = vault.join(layout::MANIFEST);
        File::open(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                let hint = if vault.join(layout::JOURNAL).exists() {
                    "the vault is unfinished: run the same encrypt command again to resume it"
                } else {
                    "not an envseal vault (no manifest.jsonl)"
                };
                Error::format(vault.display().to_string(), hint)
            } else {
                Error::io(&path, e)
            }
        })
    }

    /// The whole manifest file. Readers that authenticate it parse and MAC these same bytes
    /// ([`Manifest::parse`], [`Manifest::authenticate_bytes`]): reading the file twice would
    /// let it change in between, so that the entries used are not the ones authenticated.
    pub fn read_bytes(vault: &Path) -> Result<Vec<u8>> {
        let mut data = Vec::new();
        Self::open(vault)?
            .read_to_end(&mut data)
            .at(vault.join(layout::MANIFEST))?;
        Ok(data)
    }

    /// Reads and parses `vault/manifest.jsonl` without any key (structure and limits only).
    pub fn read(vault: &Path) -> Result<Manifest> {
        Self::parse(BufReader::new(Self::open(vault)?), vault)
    }

    /// Parses a manifest (of the vault `vault`, for messages) without any key.
    pub fn parse(reader: impl BufRead, vault: &Path) -> Result<Manifest> {
        let path = vault.join(layout::MANIFEST);
        let what = path.display().to_string();
        let mut lines = Lines::new(reader, &path);
        let mut m: Option<Manifest> = None;
        let mut ended = false;
        while let Some(line) = lines.next_line()? {
            if ended {
                return Err(Error::integrity(&what, "data after the end record"));
            }
            let rec: Record = serde_json::from_slice(&line)
                .map_err(|e| Error::integrity(&what, format!("line {}: {e}", lines.number)))?;
            let at = format!("{what} line {}", lines.number);
            match (rec, m.as_mut()) {
                (Record::Vault(v), None) => {
                    if v.format != format::FORMAT_VERSION {
                        return Err(bad(&at, format!("unknown format version {}", v.format)));
                    }
                    if !format::valid_segment_size(u64::from(v.segment_size)) {
                        return Err(bad(&at, "invalid segment size"));
                    }
                    m = Some(Manifest {
                        vault_id: format::from_hex(&v.vault_id)
                            .ok_or_else(|| bad(&at, "bad vault_id"))?,
                        created: v.created,
                        generator: v.generator,
                        segment_size: v.segment_size,
                        conceal_names: v.conceal_names,
                        batches: Vec::new(),
                        entries: Vec::new(),
                    })
                }
                (Record::Batch(b), Some(m)) if m.entries.is_empty() => {
                    if m.batches.len() >= format::MAX_BATCHES {
                        return Err(bad(&at, "too many batches"));
                    }
                    m.batches
                        .push(Batch::from_record(&b, &at).map_err(tampered)?)
                }
                (Record::Entry(e), Some(m)) if !m.batches.is_empty() => {
                    if m.entries.len() as u64 >= format::MAX_ENTRIES {
                        return Err(bad(&at, "too many entries"));
                    }
                    let entry = Entry::from_record(&e, &m.batches, &at).map_err(tampered)?;
                    let sealed = |n: &Name| matches!(n, Name::Sealed(_));
                    let target_sealed = match &entry.kind {
                        EntryKind::Symlink(t) => sealed(t),
                        _ => m.conceal_names,
                    };
                    if sealed(&entry.path) != m.conceal_names || target_sealed != m.conceal_names {
                        return Err(Error::integrity(
                            &at,
                            "names sealed in a clear vault, or clear in a concealed one",
                        ));
                    }
                    // One entry per path, in path order (concealed ones: checked once revealed).
                    if let (Some(prev), Some(p)) = (
                        m.entries.last().and_then(|e| e.path.clear()),
                        entry.path.clear(),
                    ) {
                        if p <= prev {
                            return Err(Error::integrity(
                                &at,
                                "entries out of path order, or a path listed twice",
                            ));
                        }
                    }
                    // Sizes are hostile input to keyless readers: bound them before any size
                    // arithmetic (object lengths, totals).
                    if entry.file().is_some_and(|f| {
                        format::segment_count(f.size, m.segment_size) > format::MAX_SEGMENTS
                    }) {
                        return Err(Error::integrity(&at, "file size over 2^32 segments"));
                    }
                    m.entries.push(entry)
                }
                (Record::End(end), Some(m)) => {
                    if end.entries != m.entries.len() as u64 {
                        return Err(Error::integrity(&what, "entry count does not match"));
                    }
                    if end.macs.len() != m.batches.len() {
                        return Err(Error::integrity(&what, "one MAC per batch expected"));
                    }
                    ended = true;
                }
                _ => return Err(Error::integrity(&at, "record out of order")),
            }
        }
        if !ended {
            return Err(Error::integrity(&what, "truncated (no end record)"));
        }
        m.ok_or_else(|| Error::integrity(&what, "empty manifest"))
    }

    /// Authenticates manifest bytes with a batch key: recomputes that batch's MAC and compares
    /// it (constant time) with the one in the end record. Parse the same bytes that were
    /// authenticated ([`Manifest::read_bytes`], [`Manifest::parse`]), as
    /// [`crate::vault::unlock`] does: re-reading the file would prove nothing about an earlier
    /// read.
    pub fn authenticate_bytes(
        data: &[u8],
        vault: &Path,
        batch: &Batch,
        key: &BatchKey,
    ) -> Result<()> {
        let what = vault.join(layout::MANIFEST).display().to_string();
        // The end record is the last line; everything before it is MAC input.
        let body_end = data[..data.len().saturating_sub(1)]
            .iter()
            .rposition(|&b| b == b'\n')
            .map(|i| i + 1)
            .ok_or_else(|| Error::integrity(&what, "no end record"))?;
        let end: Record = serde_json::from_slice(&data[body_end..])
            .map_err(|_| Error::integrity(&what, "bad end record"))?;
        let Record::End(end) = end else {
            return Err(Error::integrity(&what, "last line is not the end record"));
        };
        let id = batch.id_hex();
        let stored = end
            .macs
            .iter()
            .find(|m| m.batch_id == id)
            .and_then(|m| format::from_hex::<32>(&m.mac))
            .ok_or_else(|| Error::integrity(&what, format!("no MAC for batch {id}")))?;
        let mut h = blake3::Hasher::new_keyed(&key.manifest_mac_key());
        h.update(&data[..body_end]);
        h.update(&end_mac_input(end.entries));
        if h.finalize() != blake3::Hash::from(stored) {
            return Err(Error::integrity(
                &what,
                "manifest authentication failed (it was modified)",
            ));
        }
        Ok(())
    }

    /// Decrypts concealed names with the first batch's key.
    pub fn reveal_names(&mut self, first_batch_key: &BatchKey) -> Result<()> {
        if !self.conceal_names {
            return Ok(());
        }
        let nk = first_batch_key.name_key();
        for e in &mut self.entries {
            e.reveal(&nk)?;
        }
        self.entries
            .sort_by(|a, b| a.path.clear().cmp(&b.path.clear()));
        if self.entries.windows(2).any(|w| w[0].path == w[1].path) {
            return Err(Error::integrity("manifest", "a path is listed twice"));
        }
        Ok(())
    }
}

impl Entry {
    /// Decrypts this entry's sealed path and link target (no-op for clear names).
    pub fn reveal(&mut self, nk: &NameKey) -> Result<()> {
        let open = |n: &mut Name, aad: &[u8]| -> Result<()> {
            if let Name::Sealed(s) = n {
                let clear = nk.open(s, aad).map_err(|_| {
                    Error::integrity("manifest", "a concealed name does not decrypt")
                })?;
                check_path_or_target(&clear, aad)?;
                *n = Name::Clear(clear);
            }
            Ok(())
        };
        open(&mut self.path, AAD_PATH)?;
        if let EntryKind::Symlink(t) = &mut self.kind {
            open(t, AAD_TARGET)?;
        }
        Ok(())
    }
}

fn check_path_or_target(clear: &[u8], aad: &[u8]) -> Result<()> {
    let r = if aad == AAD_PATH {
        check_path(clear)
    } else {
        check_target(clear)
    };
    r.map_err(|why| Error::integrity("manifest", why))
}

/// Reads lines with a length limit (FORMAT-RULES 17).
pub struct Lines<R> {
    reader: R,
    pub number: u64,
    path: PathBuf,
}

impl<R: BufRead> Lines<R> {
    pub fn new(reader: R, path: &Path) -> Self {
        Lines {
            reader,
            number: 0,
            path: path.to_path_buf(),
        }
    }

    /// The next line without its newline; `None` at the end. A last line without a newline is
    /// returned as is (callers decide whether a torn line matters).
    pub fn next_line(&mut self) -> Result<Option<Vec<u8>>> {
        let mut buf = Vec::new();
        let n = (&mut self.reader)
            .take(format::MAX_MANIFEST_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)
            .at(&self.path)?;
        if n == 0 {
            return Ok(None);
        }
        self.number += 1;
        if buf.last() == Some(&b'\n') {
            buf.pop();
        } else if buf.len() > format::MAX_MANIFEST_LINE {
            return Err(Error::format(
                self.path.display().to_string(),
                format!("line {} is longer than the limit", self.number),
            ));
        }
        Ok(Some(buf))
    }
}

/// Writes a key file (`vault/keys-<batch>.json`) atomically.
pub fn write_key_file(vault: &Path, vault_id: &[u8; ID_LEN], batch: &Batch) -> Result<()> {
    let kf = KeyFile {
        format: format::FORMAT_VERSION,
        vault_id: format::to_hex(vault_id),
        batch: batch.to_record(),
    };
    let mut body = serde_json::to_vec_pretty(&kf).map_err(|e| Error::Runtime(e.to_string()))?;
    body.push(b'\n');
    write_atomic(&vault.join(batch.keys_file()), &body)
}

/// Writes `data` to `path` via a temporary file, fsync and rename, then syncs the directory.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    // The name is predictable and the directory may be writable by others: remove what is
    // there (a stale file, or a planted symlink: the link, not its target) and create anew,
    // never following a link.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io(&tmp, e)),
        _ => {}
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .at(&tmp)?;
    f.write_all(data).at(&tmp)?;
    f.sync_all().at(&tmp)?;
    drop(f);
    std::fs::rename(&tmp, path).at(path)?;
    sync_dir(dir)
}

/// Makes a directory's entries (new names, renames) durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The temporary name of `manifest.jsonl` is predictable: a symlink planted there (by
    /// anyone who can write the vault directory) must not be followed, which would overwrite
    /// its target with the manifest.
    #[test]
    fn write_atomic_does_not_follow_a_planted_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let path = dir.path().join(layout::MANIFEST);
        std::os::unix::fs::symlink(&victim, path.with_extension("tmp")).unwrap();
        write_atomic(&path, b"manifest").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(std::fs::read(&path).unwrap(), b"manifest");
    }
}
