//! The manifest (`manifest.jsonl`), key files (`keys-<batch>.json`) and their records.
//!
//! JSON Lines, written and read as a stream (docs/FORMAT.md §6): a `vault` record; per batch a
//! `batch` record and its `wrap` records; one `object` record per object; one `entry` record
//! per path in tree order; an `end` record with the counts and one MAC per batch. The MAC covers
//! every line but the `wrap` lines and the `end` line, through one running BLAKE3 of the body,
//! so that no writer or reader holds the entries in memory and rewrapping a key replaces
//! wrappings without touching the authenticated body.

use std::io::{BufRead, BufReader, BufWriter, Read, Write};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::crypto::{BatchKey, NameKey};
use crate::error::{Error, IoContext, Result};
use crate::format::wrap::WrappedKey;
use crate::format::{self, layout, DIGEST_LEN, ID_LEN, SALT_LEN};

/// Associated data for sealed names, so a sealed path cannot stand in for a link target.
const AAD_PATH: &[u8] = b"envseal path";
const AAD_TARGET: &[u8] = b"envseal link target";
const AAD_HARDLINK: &[u8] = b"envseal hard link";
const AAD_XATTRS: &[u8] = b"envseal xattrs";
/// Attribute names are 1 to 255 bytes (Linux's limit); a list's size is bounded by its line's
/// (docs/FORMAT.md §6.1, "Extended attributes").
const MAX_XATTR_NAME: usize = 255;

/// What a source file was when it was read: a resume reuses its entry only if the file is
/// still the same (device, inode, size, mtime in the entry, ctime here).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SourceId {
    pub dev: u64,
    pub ino: u64,
    pub ctime: i64,
    pub ctime_nsec: u32,
}

/// An entry's extended attributes (docs/FORMAT.md §6.1): read in the clear, always stored
/// sealed under the name key of batch 0 (names and values can hold secrets).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Xattrs {
    #[default]
    None,
    Clear(Vec<(Vec<u8>, Vec<u8>)>),
    Sealed(Vec<u8>),
}

impl Xattrs {
    /// Clear attributes sealed; anything else unchanged.
    pub fn sealed(&self, nk: &NameKey) -> Result<Xattrs> {
        let Xattrs::Clear(list) = self else {
            return Ok(self.clone());
        };
        if list.is_empty() {
            return Ok(Xattrs::None);
        }
        let mut plain = Vec::new();
        for (n, v) in list {
            plain.extend_from_slice(&(n.len() as u32).to_be_bytes());
            plain.extend_from_slice(n);
            plain.extend_from_slice(&(v.len() as u32).to_be_bytes());
            plain.extend_from_slice(v);
        }
        let s = nk
            .seal(&plain, AAD_XATTRS)
            .map_err(|e| Error::Runtime(e.to_string()))?;
        Ok(Xattrs::Sealed(s))
    }

    /// The attributes, opened and checked (docs/FORMAT.md §6.1): at least one, names not
    /// empty, at most 255 bytes, no NUL, in strictly increasing byte order. A list that
    /// breaks these rules was authenticated by a key holder, yet two readers could apply it
    /// differently (the first or the last of two equal names): it is refused (exit 3).
    pub fn open(&self, nk: &NameKey) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let sealed = match self {
            Xattrs::None => return Ok(Vec::new()),
            Xattrs::Clear(l) => return Ok(l.clone()),
            Xattrs::Sealed(s) => s,
        };
        let bad = |why: &str| Error::integrity("manifest", format!("extended attributes: {why}"));
        let plain = nk
            .open(sealed, AAD_XATTRS)
            .map_err(|_| bad("do not decrypt"))?;
        let mut list: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut rest = &plain[..];
        let take = |rest: &mut &[u8]| -> Option<Vec<u8>> {
            let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
            let v = rest.get(4..4 + len)?.to_vec();
            *rest = &rest[4 + len..];
            Some(v)
        };
        while !rest.is_empty() {
            let n = take(&mut rest).ok_or_else(|| bad("truncated"))?;
            let v = take(&mut rest).ok_or_else(|| bad("truncated"))?;
            list.push((n, v));
        }
        check_xattr_list(&list).map_err(bad)?;
        Ok(list)
    }
}

/// The rules of an attribute list (docs/FORMAT.md §6.1): at least one, names not empty, at
/// most 255 bytes, no NUL, in strictly increasing byte order. Readers apply them to what they
/// open; a writer to what it is about to seal.
pub fn check_xattr_list(list: &[(Vec<u8>, Vec<u8>)]) -> std::result::Result<(), &'static str> {
    if list.is_empty() {
        return Err("an empty list");
    }
    for (i, (n, _)) in list.iter().enumerate() {
        if n.is_empty() || n.len() > MAX_XATTR_NAME || n.contains(&0) {
            return Err("a bad name");
        }
        if i > 0 && list[i - 1].0 >= *n {
            return Err("names not in strictly increasing order (unsorted, or one twice)");
        }
    }
    Ok(())
}

/// One batch: a data key, its commitment and its wrappings.
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

/// An object file of the vault: a pack of small files' records, or one large file's record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectRef {
    pub id: [u8; ID_LEN],
    pub len: u64,
}

impl ObjectRef {
    /// The object's path relative to the vault (derived from its id, never stored input).
    pub fn name(&self) -> String {
        object_name(&self.id)
    }
}

/// `objects/<first two hex digits>/<object id hex>`.
pub fn object_name(id: &[u8; ID_LEN]) -> String {
    let h = format::to_hex(id);
    format!("{}/{}/{}", layout::OBJECTS_DIR, &h[..2], h)
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

/// A regular file's record: where its sealed record lies and its digests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileEntry {
    /// The record's plaintext length: the file's length less its gaps (§6.4).
    pub size: u64,
    /// Index of the batch (data key).
    pub batch: u32,
    /// Index of the object holding the record, and the record's offset in it.
    pub obj: u64,
    pub off: u64,
    pub salt: [u8; SALT_LEN],
    pub ct: [u8; DIGEST_LEN],
    pub pt: [u8; DIGEST_LEN],
    /// Holes and zero extents, for a file that has them (§6.4).
    pub sparse: Option<Box<crate::format::sparse::Sparse>>,
    /// The record's length when it is compressed (suite 2, §4.5); `None` for suite 1, whose
    /// length follows from `size`.
    pub rlen: Option<u64>,
}

impl FileEntry {
    /// The file's length (what `stat` says): its stored bytes plus its gaps.
    pub fn file_len(&self) -> u64 {
        self.sparse.as_ref().map_or(self.size, |s| s.file_len())
    }

    /// The record's length: recorded for a compressed record (§4.5), else implied by the
    /// size and the segment size (§4.2).
    pub fn record_len(&self, segment_size: u32) -> u64 {
        self.rlen
            .unwrap_or_else(|| format::object_len(self.size, segment_size))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    File(FileEntry),
    Dir,
    Symlink(Name),
    /// Another name of an earlier file entry (the path it was stored under) (§6.1).
    HardLink(Name),
    Fifo,
    /// A character or block device node, with its `st_rdev`.
    CharDev(u64),
    BlockDev(u64),
}

/// Who owned an entry: ids always, names where the source machine had them (§6.1).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
    pub user: Option<String>,
    pub group: Option<String>,
}

/// One path in the vault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub path: Name,
    pub mode: u32,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub kind: EntryKind,
    /// `None` in vaults written without ownership (restore leaves ownership to the user).
    pub owner: Option<Owner>,
    /// A file with other hard links in the tree: later `HardLink` entries may name it.
    pub linked: bool,
    pub xattrs: Xattrs,
}

impl Entry {
    pub fn file(&self) -> Option<&FileEntry> {
        match &self.kind {
            EntryKind::File(f) => Some(f),
            _ => None,
        }
    }

    pub fn is_dir(&self) -> bool {
        matches!(self.kind, EntryKind::Dir)
    }
}

/// The first record: what every other record is read against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub vault_id: [u8; ID_LEN],
    pub created: String,
    pub generator: String,
    pub segment_size: u32,
    pub conceal_names: bool,
    /// Set in a part of a sharded run (`encrypt --plan --shard`), which `merge` joins.
    pub shard: Option<ShardMark>,
}

/// Which part of a plan's run a vault is: shard `index` of `count` (§6.1). The parts of one
/// plan share its vault id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardMark {
    pub index: u32,
    pub count: u32,
}

impl ShardMark {
    /// `index` < `count` ≤ `MAX_SHARDS`.
    pub fn valid(&self) -> bool {
        self.count >= 1 && self.count as usize <= format::MAX_SHARDS && self.index < self.count
    }
}

// ---- wire records ----------------------------------------------------------------------
//
// Every record is one JSON object on one line and begins with its `type` member (a reader
// dispatches on that prefix); unknown members and duplicate members are errors, and every
// number is range-checked, so that two readers never read one line two ways (§6.1).

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct VaultLine {
    #[serde(rename = "type")]
    kind: String,
    format: u16,
    vault_id: String,
    created: String,
    generator: String,
    segment_size: u32,
    conceal_names: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    shard: Option<ShardMark>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchLine {
    #[serde(rename = "type")]
    kind: String,
    batch: u32,
    id: String,
    key_commitment: String,
}

/// A `wrap` record as written.
#[derive(Serialize)]
struct WrapLine {
    #[serde(rename = "type")]
    kind: String,
    batch: u32,
    #[serde(flatten)]
    wrapped: WrappedKey,
}

/// A `wrap` record as read: its members spelled out rather than flattened from
/// [`WrappedKey`], whose context map would keep the last of two equal members; here a
/// member twice is refused (§5: a duplicate is a mismatch).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WrapLineIn {
    #[serde(rename = "type")]
    #[allow(dead_code)]
    kind: String,
    batch: u32,
    kms: String,
    key_id: String,
    blob: String,
    #[serde(default)]
    context: StrictContext,
}

/// An encryption context whose members are all distinct.
#[derive(Default)]
struct StrictContext(std::collections::BTreeMap<String, String>);

impl<'de> Deserialize<'de> for StrictContext {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = StrictContext;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of strings")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<StrictContext, A::Error> {
                let mut out = std::collections::BTreeMap::new();
                while let Some((k, v)) = m.next_entry::<String, String>()? {
                    if out.contains_key(&k) {
                        return Err(serde::de::Error::custom(format!(
                            "context member {k:?} appears twice"
                        )));
                    }
                    out.insert(k, v);
                }
                Ok(StrictContext(out))
            }
        }
        d.deserialize_map(V)
    }
}

impl WrapLineIn {
    fn wrapped(self) -> WrappedKey {
        Self::wrapped_key(self.kms, self.key_id, self.blob, self.context)
    }

    fn wrapped_key(kms: String, key_id: String, blob: String, c: StrictContext) -> WrappedKey {
        WrappedKey {
            kms,
            key_id,
            blob,
            context: crate::format::wrap::EncryptionContext(c.0),
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ObjectLine {
    #[serde(rename = "type")]
    kind: String,
    obj: u64,
    id: String,
    len: u64,
}

/// An entry as written in the manifest (and, verbatim, in the journal).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EntryLine {
    #[serde(rename = "type")]
    pub kind_tag: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_b64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enc_path: Option<String>,
    pub kind: String,
    pub mode: u32,
    pub mtime: i64,
    pub nsec: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub obj: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub off: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub salt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ct: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_b64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enc_target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rdev: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub linked: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xattrs: Option<String>,
    /// Files: the source as it was read (device, inode, ctime), so that `encrypt --since`
    /// can tell an unchanged file without reading it (§6.1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src: Option<SourceId>,
    /// Files: holes and zero extents, `[offset, length]` pairs (§6.4).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holes: Option<Vec<[u64; 2]>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zeros: Option<Vec<[u64; 2]>>,
    /// Files: the length of a compressed record (§4.5).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rlen: Option<u64>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndLine {
    #[serde(rename = "type")]
    kind: String,
    batches: u64,
    objects: u64,
    entries: u64,
    macs: Vec<BatchMac>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchMac {
    batch: u32,
    mac: String,
}

/// The key file of one batch, written before any of its ciphertext exists: the copy of the
/// wrappings that survives the loss of the manifest (§5). Read as strictly as a `wrap` record.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(from = "KeyFileIn")]
pub struct KeyFile {
    pub format: u16,
    pub vault_id: String,
    pub batch_id: String,
    pub key_commitment: String,
    pub wrapped: Vec<WrappedKey>,
}

/// A key file as read: no unknown or duplicate member, in the file or in a wrapping.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFileIn {
    format: u16,
    vault_id: String,
    batch_id: String,
    key_commitment: String,
    wrapped: Vec<WrapIn>,
}

/// One wrapping in a key file (§5).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WrapIn {
    kms: String,
    key_id: String,
    blob: String,
    #[serde(default)]
    context: StrictContext,
}

impl From<KeyFileIn> for KeyFile {
    fn from(k: KeyFileIn) -> KeyFile {
        KeyFile {
            format: k.format,
            vault_id: k.vault_id,
            batch_id: k.batch_id,
            key_commitment: k.key_commitment,
            wrapped: k
                .wrapped
                .into_iter()
                .map(|w| WrapLineIn::wrapped_key(w.kms, w.key_id, w.blob, w.context))
                .collect(),
        }
    }
}

impl KeyFile {
    pub fn new(vault_id: &[u8; ID_LEN], b: &Batch) -> KeyFile {
        KeyFile {
            format: format::FORMAT_VERSION,
            vault_id: format::to_hex(vault_id),
            batch_id: b.id_hex(),
            key_commitment: format::to_hex(&b.key_commitment),
            wrapped: b.wrapped.clone(),
        }
    }

    /// Parses a key file's record (limits, ids and counts checked; `what` names it).
    pub fn to_batch(&self, what: &str) -> Result<Batch> {
        if self.format != format::FORMAT_VERSION {
            return Err(bad(what, format!("unknown format version {}", self.format)));
        }
        batch_from(
            &self.batch_id,
            &self.key_commitment,
            self.wrapped.clone(),
            what,
        )
    }
}

fn batch_from(id: &str, commitment: &str, wrapped: Vec<WrappedKey>, what: &str) -> Result<Batch> {
    let batch_id = format::from_hex(id).ok_or_else(|| bad(what, "bad batch id"))?;
    let key_commitment =
        format::from_hex(commitment).ok_or_else(|| bad(what, "bad key_commitment"))?;
    if wrapped.len() > format::MAX_WRAPPED_KEYS {
        return Err(bad(what, "more than 64 wrapped keys"));
    }
    Ok(Batch {
        batch_id,
        key_commitment,
        wrapped,
    })
}

fn bad(what: &str, why: impl Into<String>) -> Error {
    Error::format(what, why)
}

/// A record of a known format version that does not validate (a field that disagrees with
/// another, an unsafe path) can only come from damage or tampering: exit 3, not 1.
fn integrity(what: &str, why: impl Into<String>) -> Error {
    Error::integrity(what, why)
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
) -> std::result::Result<Name, String> {
    match (clear, b64, sealed) {
        (Some(s), None, None) => Ok(Name::Clear(s.as_bytes().to_vec())),
        (None, Some(b), None) => {
            let raw = B64.decode(b).map_err(|_| format!("{what}: bad base64"))?;
            // One spelling per name: base64 only for names that are not UTF-8.
            if std::str::from_utf8(&raw).is_ok() {
                return Err(format!("{what}: a UTF-8 name in base64"));
            }
            Ok(Name::Clear(raw))
        }
        (None, None, Some(e)) => Ok(Name::Sealed(
            B64.decode(e)
                .map_err(|_| format!("{what}: bad base64 sealed name"))?,
        )),
        _ => Err(format!("exactly one {what} field is required")),
    }
}

impl Entry {
    /// This entry's record line (without the newline); names sealed when `name_key` is given.
    pub fn to_line(&self, name_key: Option<&NameKey>) -> Result<Vec<u8>> {
        self.to_line_src(name_key, None)
    }

    /// [`Entry::to_line`], with a file's source identity (`src`) when given.
    pub fn to_line_src(
        &self,
        name_key: Option<&NameKey>,
        src: Option<&SourceId>,
    ) -> Result<Vec<u8>> {
        let (path, path_b64, enc_path) = name_fields(&self.path, name_key, AAD_PATH)?;
        let mut r = EntryLine {
            kind_tag: "entry".into(),
            path,
            path_b64,
            enc_path,
            mode: self.mode,
            mtime: self.mtime,
            nsec: self.mtime_nsec,
            ..Default::default()
        };
        r.xattrs = match &self.xattrs {
            Xattrs::None => None,
            Xattrs::Clear(l) if l.is_empty() => None,
            Xattrs::Clear(_) => {
                return Err(Error::Runtime(
                    "extended attributes must be sealed before they are written".into(),
                ))
            }
            Xattrs::Sealed(s) => Some(B64.encode(s)),
        };
        if let Some(o) = &self.owner {
            (r.uid, r.gid) = (Some(o.uid), Some(o.gid));
            (r.user, r.group) = (o.user.clone(), o.group.clone());
        }
        match &self.kind {
            EntryKind::Dir => r.kind = "dir".into(),
            EntryKind::Symlink(t) => {
                r.kind = "symlink".into();
                (r.target, r.target_b64, r.enc_target) = name_fields(t, name_key, AAD_TARGET)?;
            }
            EntryKind::HardLink(t) => {
                r.kind = "hardlink".into();
                (r.target, r.target_b64, r.enc_target) = name_fields(t, name_key, AAD_HARDLINK)?;
            }
            EntryKind::Fifo => r.kind = "fifo".into(),
            EntryKind::CharDev(d) => (r.kind, r.rdev) = ("chardev".into(), Some(*d)),
            EntryKind::BlockDev(d) => (r.kind, r.rdev) = ("blockdev".into(), Some(*d)),
            EntryKind::File(f) => {
                r.kind = "file".into();
                r.size = Some(f.file_len());
                if let Some(sp) = &f.sparse {
                    let (holes, zeros) = sp.fields();
                    r.holes = (!holes.is_empty()).then_some(holes);
                    r.zeros = (!zeros.is_empty()).then_some(zeros);
                }
                r.batch = Some(f.batch);
                r.obj = Some(f.obj);
                r.off = Some(f.off);
                r.salt = Some(format::to_hex(&f.salt));
                r.ct = Some(format::to_hex(&f.ct));
                r.pt = Some(format::to_hex(&f.pt));
                r.rlen = f.rlen;
                r.linked = self.linked.then_some(true);
                r.src = src.copied();
            }
        }
        serde_json::to_vec(&r).map_err(|e| Error::Runtime(e.to_string()))
    }

    /// Parses and validates one entry line against the vault header: its spelling
    /// (`parse_line`), then its values ([`Entry::check`]). Batch and object indices
    /// are checked by the reader, which knows the counts.
    pub fn from_line(line: &[u8], h: &Header) -> std::result::Result<Entry, String> {
        Self::from_line_src(line, h).map(|(e, _)| e)
    }

    /// [`Entry::from_line`], also returning a file's `src` when the line has one.
    pub fn from_line_src(
        line: &[u8],
        h: &Header,
    ) -> std::result::Result<(Entry, Option<SourceId>), String> {
        let (e, src) = Self::parse_line(line, h)?;
        e.check(h, src.as_ref())?;
        Ok((e, src))
    }

    /// The rules of an entry line's spelling (§6.1): at most 1 MiB, strict JSON, the members
    /// its kind has and no others, one spelling per value (base64 only for names that are not
    /// UTF-8, `linked` only `true`, gap lists not empty and in order of offset), names sealed
    /// exactly in a vault that conceals them, valid base64 and hex. What the members say is
    /// left to [`Entry::check`]; an entry the writer built and [`Entry::to_line_src`] wrote
    /// meets these rules by construction.
    fn parse_line(
        line: &[u8],
        h: &Header,
    ) -> std::result::Result<(Entry, Option<SourceId>), String> {
        // A writer checks its own lines' length too: one its readers refuse is never written.
        if line.len() > format::MAX_MANIFEST_LINE {
            return Err("the entry's line is longer than 1 MiB".into());
        }
        let r: EntryLine = serde_json::from_slice(line).map_err(|e| e.to_string())?;
        if (r.src.is_some() || r.holes.is_some() || r.zeros.is_some() || r.rlen.is_some())
            && r.kind != "file"
        {
            return Err(format!("src, holes, zeros or rlen on a {}", r.kind));
        }
        // One spelling per gap list: each field's pairs in increasing order of offset.
        for (field, pairs) in [("holes", &r.holes), ("zeros", &r.zeros)] {
            if pairs
                .as_deref()
                .is_some_and(|p| p.windows(2).any(|w| w[0][0] >= w[1][0]))
            {
                return Err(format!("{field} not in increasing order of offset"));
            }
        }
        if r.kind_tag != "entry" {
            return Err("not an entry record".into());
        }
        let path = parse_name(&r.path, &r.path_b64, &r.enc_path, "path")?;
        if matches!(path, Name::Sealed(_)) != h.conceal_names {
            return Err("names sealed in a clear vault, or clear in a concealed one".into());
        }
        let file_fields = [
            r.size.is_some(),
            r.batch.is_some(),
            r.obj.is_some(),
            r.off.is_some(),
            r.salt.is_some(),
            r.ct.is_some(),
            r.pt.is_some(),
        ];
        let link_fields = r.target.is_some() || r.target_b64.is_some() || r.enc_target.is_some();
        let owner = match (r.uid, r.gid) {
            (Some(uid), Some(gid)) => Some(Owner {
                uid,
                gid,
                user: r.user.clone(),
                group: r.group.clone(),
            }),
            (None, None) if r.user.is_none() && r.group.is_none() => None,
            _ => return Err("uid and gid go together, and names only with them".into()),
        };
        // Only `true` is written (one spelling per record); only a file may be linked.
        if r.linked == Some(false) || (r.linked.is_some() && r.kind != "file") {
            return Err("linked is only `true`, on a file".into());
        }
        if r.rdev.is_some() && !matches!(r.kind.as_str(), "chardev" | "blockdev") {
            return Err("rdev on an entry that is not a device".into());
        }
        let plain = !file_fields.contains(&true) && !link_fields;
        // Bounded by the line's length (checked above); opened by readers holding the key.
        let xattrs = match &r.xattrs {
            None => Xattrs::None,
            Some(b) => Xattrs::Sealed(
                B64.decode(b)
                    .map_err(|_| "xattrs: bad base64".to_string())?,
            ),
        };
        let target = |h: &Header| -> std::result::Result<Name, String> {
            let t = parse_name(&r.target, &r.target_b64, &r.enc_target, "target")?;
            if matches!(t, Name::Sealed(_)) != h.conceal_names {
                return Err(
                    "a link target sealed in a clear vault, or clear in a concealed one".into(),
                );
            }
            Ok(t)
        };
        let kind = match r.kind.as_str() {
            "dir" if plain => EntryKind::Dir,
            "fifo" if plain => EntryKind::Fifo,
            "chardev" if plain && r.rdev.is_some() => EntryKind::CharDev(r.rdev.unwrap_or(0)),
            "blockdev" if plain && r.rdev.is_some() => EntryKind::BlockDev(r.rdev.unwrap_or(0)),
            "hardlink" if !file_fields.contains(&true) => EntryKind::HardLink(target(h)?),
            "symlink" if !file_fields.contains(&true) => EntryKind::Symlink(target(h)?),
            "file" if !file_fields.contains(&false) && !link_fields => {
                let hex32 =
                    |v: &Option<String>, f: &str| -> std::result::Result<[u8; 32], String> {
                        v.as_deref()
                            .and_then(format::from_hex)
                            .ok_or_else(|| format!("bad {f}"))
                    };
                let len = r.size.unwrap_or_default();
                let sparse = crate::format::sparse::Sparse::from_fields(
                    len,
                    r.holes.as_deref(),
                    r.zeros.as_deref(),
                )?;
                EntryKind::File(FileEntry {
                    size: sparse.as_ref().map_or(len, |s| s.stored()),
                    batch: r.batch.unwrap_or_default(),
                    obj: r.obj.unwrap_or_default(),
                    off: r.off.unwrap_or_default(),
                    salt: hex32(&r.salt, "salt")?,
                    ct: hex32(&r.ct, "ct")?,
                    pt: hex32(&r.pt, "pt")?,
                    sparse: sparse.map(Box::new),
                    rlen: r.rlen,
                })
            }
            "dir" | "symlink" | "file" | "hardlink" | "fifo" | "chardev" | "blockdev" => {
                return Err(format!("fields missing or out of place for a {}", r.kind))
            }
            other => return Err(format!("unknown entry kind {other:?}")),
        };
        Ok((
            Entry {
                path,
                mode: r.mode,
                mtime: r.mtime,
                mtime_nsec: r.nsec,
                kind,
                owner,
                linked: r.linked == Some(true),
                xattrs,
            },
            r.src,
        ))
    }

    /// The rules an entry's values obey (§6.1), whoever holds it: safe paths and link targets,
    /// permission bits only, nanoseconds and numbers in range, owners that name someone, `linked`
    /// and `src` on files only, sizes bounded, attribute lists by [`check_xattr_list`]. A reader
    /// applies them to every line it parses ([`Entry::from_line`]); a writer to each entry it
    /// builds, its names and attributes still clear, so that it need not parse its own line
    /// again: one set of rules, two entry points. Sealed names and attributes are checked by
    /// the same rules when opened ([`Entry::reveal`], [`Xattrs::open`]); holes and zero extents
    /// by [`crate::format::sparse::Sparse::new`], the only way to make them. `src` is the source
    /// identity a file's line carries.
    pub fn check(&self, h: &Header, src: Option<&SourceId>) -> std::result::Result<(), String> {
        // A name still sealed is checked when revealed; sealed in a clear vault, never.
        let name = |n: &Name, rule: fn(&[u8]) -> std::result::Result<(), String>| match n {
            Name::Clear(b) => rule(b),
            Name::Sealed(_) if h.conceal_names => Ok(()),
            Name::Sealed(_) => Err("names sealed in a clear vault".to_string()),
        };
        name(&self.path, check_path)?;
        if self.mode & !0o7777 != 0 {
            return Err("mode holds more than permission bits".into());
        }
        if self.mtime_nsec > 999_999_999 {
            return Err("nsec out of range".into());
        }
        if let Some(o) = &self.owner {
            // (uid_t)-1 means "leave the owner" to chown(2): no file has it.
            if o.uid == u32::MAX || o.gid == u32::MAX {
                return Err("uid or gid 4294967295 ((uid_t)-1, no owner)".into());
            }
            for n in [&o.user, &o.group].into_iter().flatten() {
                if n.is_empty() || n.len() > 256 || n.contains(['\0', '/', ':', '\n']) {
                    return Err(format!("bad owner name {n:?}"));
                }
            }
        }
        let file = self.file();
        if self.linked && file.is_none() {
            return Err("linked is only `true`, on a file".into());
        }
        if let Some(s) = src {
            if file.is_none() {
                return Err("src on an entry that is not a file".into());
            }
            if s.ctime_nsec > 999_999_999 {
                return Err("src ctime_nsec out of range".into());
            }
        }
        match &self.kind {
            EntryKind::HardLink(t) => name(t, check_path)?,
            EntryKind::Symlink(t) => name(t, check_target)?,
            // Sizes are hostile input to keyless readers: bounded before any size arithmetic
            // (record lengths, totals).
            EntryKind::File(f)
                if format::segment_count(f.size, h.segment_size) > format::MAX_SEGMENTS =>
            {
                return Err("file size over 2^32 segments".into())
            }
            // A compressed record's length lies between all segments empty and all raw
            // (§4.5); the table, once opened, must add up to it exactly.
            EntryKind::File(FileEntry {
                size,
                rlen: Some(rlen),
                ..
            }) => {
                let (lo, hi) = format::compress::record_len_range(*size, h.segment_size);
                if !(lo..=hi).contains(rlen) {
                    return Err(format!(
                        "rlen {rlen} out of range for a compressed record of {size} bytes"
                    ));
                }
            }
            _ => {}
        }
        if let Xattrs::Clear(l) = &self.xattrs {
            if !l.is_empty() {
                check_xattr_list(l).map_err(|why| format!("extended attributes: {why}"))?;
            }
        }
        Ok(())
    }

    /// Decrypts this entry's sealed path and link target (no-op for clear names).
    pub fn reveal(&mut self, nk: &NameKey) -> Result<()> {
        let open = |n: &mut Name, aad: &[u8]| -> Result<()> {
            if let Name::Sealed(s) = n {
                let clear = nk.open(s, aad).map_err(|_| {
                    Error::integrity("manifest", "a concealed name does not decrypt")
                })?;
                let r = if aad == AAD_PATH || aad == AAD_HARDLINK {
                    check_path(&clear)
                } else {
                    check_target(&clear)
                };
                r.map_err(|why| Error::integrity("manifest", why))?;
                *n = Name::Clear(clear);
            }
            Ok(())
        };
        open(&mut self.path, AAD_PATH)?;
        match &mut self.kind {
            EntryKind::Symlink(t) => open(t, AAD_TARGET)?,
            EntryKind::HardLink(t) => open(t, AAD_HARDLINK)?,
            _ => {}
        }
        Ok(())
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

/// The parent of a vault path (`None` for a top-level entry).
pub fn parent(p: &[u8]) -> Option<&[u8]> {
    p.iter().rposition(|&b| b == b'/').map(|i| &p[..i])
}

/// Compares vault paths in tree order: component by component, each by its bytes. This is a
/// depth-first walk with the entries of each directory sorted by name.
pub fn tree_cmp(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    a.split(|&c| c == b'/').cmp(b.split(|&c| c == b'/'))
}

/// Checks, as a stream and in memory proportional to the depth, that entries come in tree
/// order, that every entry's parent is a directory entry listed before it, and that no path
/// comes twice (§6.2).
#[derive(Default)]
pub struct TreeOrder {
    /// The directories from the top down to the last one entered, each with the name of the
    /// last child seen in it.
    stack: Vec<(Vec<u8>, Vec<u8>)>,
    /// The last top-level name.
    top: Vec<u8>,
    /// Files marked `linked` so far: the only paths a hard link may name.
    linkable: std::collections::HashSet<Vec<u8>>,
}

impl TreeOrder {
    /// [`TreeOrder::push`], and a hard link must name an earlier `linked` file.
    pub fn push_entry(&mut self, e: &Entry) -> std::result::Result<(), String> {
        let p = e.path.clear().ok_or("names not revealed")?;
        self.push(p, e.is_dir())?;
        if e.linked {
            self.linkable.insert(p.to_vec());
        }
        if let EntryKind::HardLink(t) = &e.kind {
            let t = t.clear().ok_or("names not revealed")?;
            if !self.linkable.contains(t) {
                return Err(format!(
                    "hard link {} names {}, which is not an earlier linked file",
                    String::from_utf8_lossy(p),
                    String::from_utf8_lossy(t)
                ));
            }
        }
        Ok(())
    }

    pub fn push(&mut self, path: &[u8], is_dir: bool) -> std::result::Result<(), String> {
        let (up, name) = match parent(path) {
            Some(up) => (Some(up), &path[up.len() + 1..]),
            None => (None, path),
        };
        let last = match up {
            None => {
                self.stack.clear();
                &mut self.top
            }
            Some(up) => {
                while self.stack.last().is_some_and(|(d, _)| d.as_slice() != up) {
                    self.stack.pop();
                }
                match self.stack.last_mut() {
                    Some((_, last)) => last,
                    None => {
                        return Err(format!(
                            "{} does not follow its parent directory's entry (out of tree order, or no parent)",
                            String::from_utf8_lossy(path)
                        ))
                    }
                }
            }
        };
        if !last.is_empty() && name <= last.as_slice() {
            return Err(format!(
                "{} is out of tree order or listed twice",
                String::from_utf8_lossy(path)
            ));
        }
        *last = name.to_vec();
        if is_dir {
            if self.stack.len() >= format::MAX_DEPTH {
                return Err("directories nested too deep".into());
            }
            self.stack.push((path.to_vec(), Vec::new()));
        }
        Ok(())
    }
}

/// Puts revealed entries of a concealed vault in tree order and checks the tree rules on them
/// (every parent a directory listed before, no path twice).
pub fn check_tree(entries: &mut [Entry]) -> Result<()> {
    entries.sort_by(|a, b| {
        tree_cmp(
            a.path.clear().unwrap_or_default(),
            b.path.clear().unwrap_or_default(),
        )
    });
    let mut order = TreeOrder::default();
    for e in entries.iter() {
        order
            .push_entry(e)
            .map_err(|why| integrity("manifest", why))?;
    }
    Ok(())
}

fn json<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| Error::Runtime(e.to_string()))
}

/// The MAC of a manifest body under one batch key (§6.3).
fn body_mac(key: &BatchKey, body: &blake3::Hash, counts: [u64; 3]) -> blake3::Hash {
    let mut h = blake3::Hasher::new_keyed(&key.manifest_mac_key());
    h.update(format::MANIFEST_END_LABEL);
    h.update(body.as_bytes());
    for c in counts {
        h.update(&c.to_be_bytes());
    }
    h.finalize()
}

/// Writes a manifest as a stream into `W`; [`ManifestWriter::finish`] adds the end record
/// and hands `W` back (the vault publishes it under its name only then: a reader never
/// sees a partial one).
pub struct ManifestWriter<W: Write> {
    out: BufWriter<W>,
    what: String,
    body: blake3::Hasher,
    batches: u64,
    objects: u64,
    entries: u64,
}

impl<W: Write> ManifestWriter<W> {
    /// A manifest of a vault with header `h` written into `out`, named `what` in errors.
    pub fn new(out: W, what: String, h: &Header) -> Result<ManifestWriter<W>> {
        let mut w = ManifestWriter {
            out: BufWriter::with_capacity(1 << 20, out),
            what,
            body: blake3::Hasher::new(),
            batches: 0,
            objects: 0,
            entries: 0,
        };
        w.line(
            &json(&VaultLine {
                kind: "vault".into(),
                format: format::FORMAT_VERSION,
                vault_id: format::to_hex(&h.vault_id),
                created: h.created.clone(),
                generator: h.generator.clone(),
                segment_size: h.segment_size,
                conceal_names: h.conceal_names,
                shard: h.shard,
            })?,
            true,
        )?;
        Ok(w)
    }

    fn line(&mut self, l: &[u8], authenticated: bool) -> Result<()> {
        if authenticated {
            self.body.update(l);
            self.body.update(b"\n");
        }
        self.out.write_all(l).at(&self.what)?;
        self.out.write_all(b"\n").at(&self.what)
    }

    /// A batch record and its wrappings; all batches come before any object.
    pub fn batch(&mut self, b: &Batch) -> Result<()> {
        let index = self.batches as u32;
        self.line(
            &json(&BatchLine {
                kind: "batch".into(),
                batch: index,
                id: b.id_hex(),
                key_commitment: format::to_hex(&b.key_commitment),
            })?,
            true,
        )?;
        for w in &b.wrapped {
            self.line(&wrap_line(index, w)?, false)?;
        }
        self.batches += 1;
        Ok(())
    }

    /// The next object record; all objects come before any entry.
    pub fn object(&mut self, o: &ObjectRef) -> Result<()> {
        let l = json(&ObjectLine {
            kind: "object".into(),
            obj: self.objects,
            id: format::to_hex(&o.id),
            len: o.len,
        })?;
        self.objects += 1;
        self.line(&l, true)
    }

    /// The next entry, as the line [`Entry::to_line`] made (the journal keeps them verbatim).
    pub fn entry_line(&mut self, l: &[u8]) -> Result<()> {
        self.entries += 1;
        self.line(l, true)
    }

    /// Adds the end record with one MAC per batch (`keys[i]` is batch i's key) and returns
    /// the output, flushed.
    pub fn finish(mut self, keys: &[&BatchKey]) -> Result<W> {
        let body = self.body.finalize();
        let counts = [self.batches, self.objects, self.entries];
        let macs = keys
            .iter()
            .enumerate()
            .map(|(i, k)| BatchMac {
                batch: i as u32,
                mac: body_mac(k, &body, counts).to_hex().to_string(),
            })
            .collect();
        let end = json(&EndLine {
            kind: "end".into(),
            batches: self.batches,
            objects: self.objects,
            entries: self.entries,
            macs,
        })?;
        self.line(&end, false)?;
        self.out
            .into_inner()
            .map_err(|e| Error::io(&self.what, e.into_error()))
    }
}

/// The record types, by the prefix every record begins with.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Vault,
    Batch,
    Wrap,
    Object,
    Entry,
    End,
}

/// A `wrap` line for batch `index` (§6.1), as [`ManifestWriter`] writes it.
pub fn wrap_line(index: u32, w: &WrappedKey) -> Result<Vec<u8>> {
    json(&WrapLine {
        kind: "wrap".into(),
        batch: index,
        wrapped: w.clone(),
    })
}

/// Whether a manifest line is a `wrap` record, and whether it is a `batch` record.
pub fn is_wrap_line(line: &[u8]) -> bool {
    kind_of(line) == Some(Kind::Wrap)
}

pub fn is_batch_line(line: &[u8]) -> bool {
    kind_of(line) == Some(Kind::Batch)
}

fn kind_of(line: &[u8]) -> Option<Kind> {
    const KINDS: [(&[u8], Kind); 6] = [
        (b"{\"type\":\"entry\"", Kind::Entry),
        (b"{\"type\":\"object\"", Kind::Object),
        (b"{\"type\":\"batch\"", Kind::Batch),
        (b"{\"type\":\"wrap\"", Kind::Wrap),
        (b"{\"type\":\"vault\"", Kind::Vault),
        (b"{\"type\":\"end\"", Kind::End),
    ];
    KINDS
        .iter()
        .find(|(p, _)| line.starts_with(p) && matches!(line.get(p.len()), Some(b',' | b'}')))
        .map(|(_, k)| *k)
}

/// Reads a manifest as a stream: the header, batches and objects on open; entries one by one
/// from [`ManifestReader::next_entry`], validated as they come; the end record last. Nothing
/// read is authenticated until [`ManifestReader::authenticate`] succeeds after the last entry.
pub struct ManifestReader {
    lines: Lines<BufReader<Box<dyn Read + Send>>>,
    what: String,
    pub header: Header,
    pub batches: Vec<Batch>,
    pub objects: Vec<ObjectRef>,
    body: blake3::Hasher,
    order: TreeOrder,
    /// Revealed names are checked for tree order (clear vaults: always).
    name_key: Option<NameKey>,
    pending: Option<Vec<u8>>,
    /// Concealed vaults: the previous entry line (their order is that of the sealed names).
    prev: Vec<u8>,
    entries: u64,
    end: Option<EndLine>,
    /// The `src` of the entry last returned, if it had one.
    last_src: Option<SourceId>,
}

impl ManifestReader {
    /// Reads a manifest from `file`, named `what` in messages.
    pub fn from_reader(file: Box<dyn Read + Send>, what: String) -> Result<ManifestReader> {
        let mut r = ManifestReader {
            lines: Lines::new(BufReader::with_capacity(1 << 20, file), &what),
            what,
            header: Header {
                vault_id: [0; ID_LEN],
                created: String::new(),
                generator: String::new(),
                segment_size: 0,
                conceal_names: false,
                shard: None,
            },
            batches: Vec::new(),
            objects: Vec::new(),
            body: blake3::Hasher::new(),
            order: TreeOrder::default(),
            name_key: None,
            pending: None,
            prev: Vec::new(),
            entries: 0,
            end: None,
            last_src: None,
        };
        r.read_head()?;
        Ok(r)
    }

    fn at(&self) -> String {
        format!("{} line {}", self.what, self.lines.number)
    }

    /// The next line of the manifest: every line ends with its newline and holds at most
    /// `MAX_MANIFEST_LINE` bytes before it; anything else is damage (docs/FORMAT.md §1.1).
    fn next_line(&mut self) -> Result<Option<Vec<u8>>> {
        let line = self.lines.next_line().map_err(|e| match e {
            Error::Format { what, why } => Error::Integrity { what, why },
            e => e,
        })?;
        if line.is_some() && !self.lines.terminated {
            return Err(integrity(
                &self.at(),
                "the last line lacks its newline (truncated)",
            ));
        }
        Ok(line)
    }

    fn next_raw(&mut self) -> Result<Option<(Kind, Vec<u8>)>> {
        let Some(line) = self.next_line()? else {
            return Ok(None);
        };
        let kind =
            kind_of(&line).ok_or_else(|| integrity(&self.at(), "not a record of this format"))?;
        if !matches!(kind, Kind::Wrap | Kind::End) {
            self.body.update(&line);
            self.body.update(b"\n");
        }
        Ok(Some((kind, line)))
    }

    fn read_head(&mut self) -> Result<()> {
        let first = self.next_line()?;
        let Some(line) = first else {
            return Err(integrity(&self.what, "empty manifest"));
        };
        // The version first, with a message of its own: a vault of another format version is
        // not damaged, just not readable by this build.
        #[derive(Deserialize)]
        struct Version {
            format: Option<u64>,
        }
        let v: Version = serde_json::from_slice(&line)
            .map_err(|_| bad(&self.what, "not an envseal manifest"))?;
        match v.format {
            Some(f) if f == u64::from(format::FORMAT_VERSION) => {}
            Some(1) => {
                return Err(bad(
                    &self.what,
                    "a vault of format version 1, which this envseal no longer reads; decrypt it with envseal 0.1 and encrypt it again",
                ))
            }
            Some(f) => return Err(bad(&self.what, format!("unknown format version {f}"))),
            None => return Err(bad(&self.what, "not an envseal manifest")),
        }
        if kind_of(&line) != Some(Kind::Vault) {
            return Err(integrity(
                &self.at(),
                "the first record must be the vault record",
            ));
        }
        self.body.update(&line);
        self.body.update(b"\n");
        let v: VaultLine =
            serde_json::from_slice(&line).map_err(|e| integrity(&self.at(), e.to_string()))?;
        if !format::valid_segment_size(u64::from(v.segment_size)) {
            return Err(integrity(&self.at(), "invalid segment size"));
        }
        if v.shard.is_some_and(|s| !s.valid()) {
            return Err(integrity(&self.at(), "invalid shard"));
        }
        self.header = Header {
            vault_id: format::from_hex(&v.vault_id)
                .ok_or_else(|| integrity(&self.at(), "bad vault_id"))?,
            created: v.created,
            generator: v.generator,
            segment_size: v.segment_size,
            conceal_names: v.conceal_names,
            shard: v.shard,
        };
        loop {
            let Some((kind, line)) = self.next_raw()? else {
                return Err(integrity(&self.what, "truncated (no end record)"));
            };
            let at = self.at();
            let parse_err = |e: serde_json::Error| integrity(&at, e.to_string());
            match kind {
                Kind::Batch if self.objects.is_empty() => {
                    let b: BatchLine = serde_json::from_slice(&line).map_err(parse_err)?;
                    if b.batch as usize != self.batches.len() {
                        return Err(integrity(&at, "batches out of order"));
                    }
                    if self.batches.len() >= format::MAX_BATCHES {
                        return Err(integrity(&at, "too many batches"));
                    }
                    let batch = batch_from(&b.id, &b.key_commitment, Vec::new(), &at)
                        .map_err(|e| integrity(&at, e.to_string()))?;
                    self.batches.push(batch);
                }
                Kind::Wrap if self.objects.is_empty() => {
                    let w: WrapLineIn = serde_json::from_slice(&line).map_err(parse_err)?;
                    let n = self.batches.len();
                    let b = self
                        .batches
                        .last_mut()
                        .filter(|_| w.batch as usize + 1 == n)
                        .ok_or_else(|| integrity(&at, "a wrap record must follow its batch"))?;
                    if b.wrapped.len() >= format::MAX_WRAPPED_KEYS {
                        return Err(integrity(&at, "more than 64 wrapped keys"));
                    }
                    b.wrapped.push(w.wrapped());
                }
                Kind::Object if !self.batches.is_empty() => {
                    let o: ObjectLine = serde_json::from_slice(&line).map_err(parse_err)?;
                    if o.obj != self.objects.len() as u64 || o.obj >= format::MAX_OBJECTS {
                        return Err(integrity(&at, "objects out of order"));
                    }
                    self.objects.push(ObjectRef {
                        id: format::from_hex(&o.id).ok_or_else(|| integrity(&at, "bad id"))?,
                        len: o.len,
                    });
                }
                Kind::Entry | Kind::End if !self.batches.is_empty() => {
                    self.pending = Some(line);
                    return self.check_head();
                }
                _ => return Err(integrity(&at, "record out of order")),
            }
        }
    }

    fn check_head(&self) -> Result<()> {
        if let Some(b) = self.batches.iter().find(|b| b.wrapped.is_empty()) {
            return Err(integrity(
                &self.what,
                format!("batch {} has no wrapped key", b.id_hex()),
            ));
        }
        let mut ids: Vec<&[u8; ID_LEN]> = self.objects.iter().map(|o| &o.id).collect();
        ids.sort_unstable();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            return Err(integrity(&self.what, "an object is listed twice"));
        }
        // Batch ids name key files and bind keys and headers: one record each, like objects.
        let mut ids: Vec<&[u8; ID_LEN]> = self.batches.iter().map(|b| &b.batch_id).collect();
        ids.sort_unstable();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            return Err(integrity(&self.what, "a batch is listed twice"));
        }
        Ok(())
    }

    /// Batch 0's name key (docs/FORMAT.md §6.1): from now on, concealed names are revealed
    /// (and their tree order checked), and every entry's extended attributes are opened and
    /// checked as the entry is read, in clear vaults too.
    pub fn set_name_key(&mut self, k: NameKey) {
        self.name_key = Some(k);
    }

    /// The next entry, validated; `None` after the end record (whose counts are checked).
    pub fn next_entry(&mut self) -> Result<Option<Entry>> {
        if self.end.is_some() {
            return Ok(None);
        }
        let (kind, line) = match self.pending.take() {
            Some(l) => (kind_of(&l).unwrap_or(Kind::Vault), l),
            None => match self.next_raw()? {
                Some(x) => x,
                None => return Err(integrity(&self.what, "truncated (no end record)")),
            },
        };
        let at = self.at();
        match kind {
            Kind::Entry => {
                if self.entries >= format::MAX_ENTRIES {
                    return Err(integrity(&at, "too many entries"));
                }
                let (mut e, src) =
                    Entry::from_line_src(&line, &self.header).map_err(|why| integrity(&at, why))?;
                self.last_src = src;
                if let (Some(nk), Xattrs::Sealed(_)) = (&self.name_key, &e.xattrs) {
                    e.xattrs.open(nk).map_err(|err| match err {
                        Error::Integrity { why, .. } => integrity(&at, why),
                        err => err,
                    })?;
                }
                if let Some(f) = e.file() {
                    let obj = self
                        .objects
                        .get(f.obj as usize)
                        .ok_or_else(|| integrity(&at, "entry names an unknown object"))?;
                    if f.batch as usize >= self.batches.len() {
                        return Err(integrity(&at, "entry names an unknown batch"));
                    }
                    let end = f.off.checked_add(f.record_len(self.header.segment_size));
                    if end.is_none_or(|end| end > obj.len) {
                        return Err(integrity(&at, "record lies outside its object"));
                    }
                }
                if self.header.conceal_names {
                    // Ordered by the sealed name, an order unrelated to the tree (§6.2);
                    // tree rules are checked once the names are revealed ([`check_tree`]).
                    if line <= self.prev {
                        return Err(integrity(
                            &at,
                            "concealed entries out of order, or repeated",
                        ));
                    }
                    self.prev = line;
                    if let Some(nk) = &self.name_key {
                        e.reveal(nk)?;
                    }
                } else {
                    self.order
                        .push_entry(&e)
                        .map_err(|why| integrity(&at, why))?;
                }
                self.entries += 1;
                Ok(Some(e))
            }
            Kind::End => {
                let end: EndLine =
                    serde_json::from_slice(&line).map_err(|e| integrity(&at, e.to_string()))?;
                if end.entries != self.entries
                    || end.objects != self.objects.len() as u64
                    || end.batches != self.batches.len() as u64
                {
                    return Err(integrity(
                        &self.what,
                        "record counts do not match the end record",
                    ));
                }
                if end.macs.len() != self.batches.len()
                    || end
                        .macs
                        .iter()
                        .enumerate()
                        .any(|(i, m)| m.batch as usize != i)
                {
                    return Err(integrity(&self.what, "one MAC per batch expected"));
                }
                if self.next_line()?.is_some() {
                    return Err(integrity(&self.what, "data after the end record"));
                }
                self.end = Some(end);
                Ok(None)
            }
            _ => Err(integrity(&at, "record out of order")),
        }
    }

    /// Checks the end record's MAC of batch `index` with its key. Call after
    /// [`ManifestReader::next_entry`] returned `None`: every line read is then authenticated.
    pub fn authenticate(&self, index: usize, key: &BatchKey) -> Result<()> {
        let end = self
            .end
            .as_ref()
            .ok_or_else(|| Error::Runtime("manifest not read to its end".into()))?;
        let stored = end
            .macs
            .get(index)
            .and_then(|m| format::from_hex::<32>(&m.mac))
            .ok_or_else(|| integrity(&self.what, format!("no MAC for batch {index}")))?;
        let counts = [end.batches, end.objects, end.entries];
        if body_mac(key, &self.body.finalize(), counts) != blake3::Hash::from(stored) {
            return Err(integrity(
                &self.what,
                "manifest authentication failed (it was modified)",
            ));
        }
        Ok(())
    }

    /// The source identity (`src`) recorded with the entry last returned, if any.
    pub fn last_src(&self) -> Option<SourceId> {
        self.last_src
    }

    /// The number of entries read so far.
    pub fn entries_read(&self) -> u64 {
        self.entries
    }
}

/// Reads lines with a length limit (docs/FORMAT.md §8).
pub struct Lines<R> {
    reader: R,
    pub number: u64,
    /// Whether the line last returned ended with its newline (a torn last line does not).
    pub terminated: bool,
    what: String,
    buf: Vec<u8>,
}

impl<R: BufRead> Lines<R> {
    pub fn new(reader: R, what: &str) -> Self {
        Lines {
            reader,
            number: 0,
            terminated: true,
            what: what.to_string(),
            buf: Vec::new(),
        }
    }

    /// The next line without its newline; `None` at the end. A last line without a newline is
    /// returned as is (callers decide whether a torn line matters).
    pub fn next_line(&mut self) -> Result<Option<Vec<u8>>> {
        self.buf.clear();
        let n = (&mut self.reader)
            .take(format::MAX_MANIFEST_LINE as u64 + 1)
            .read_until(b'\n', &mut self.buf)
            .at(&self.what)?;
        if n == 0 {
            return Ok(None);
        }
        self.number += 1;
        self.terminated = self.buf.last() == Some(&b'\n');
        if self.terminated {
            self.buf.pop();
        } else if self.buf.len() > format::MAX_MANIFEST_LINE {
            return Err(Error::format(
                self.what.clone(),
                format!("line {} is longer than the limit", self.number),
            ));
        }
        Ok(Some(self.buf.clone()))
    }
}

/// The bytes of a batch's key file (`keys-<batch>.json`, docs/FORMAT.md §5).
pub fn key_file_bytes(vault_id: &[u8; ID_LEN], batch: &Batch) -> Result<Vec<u8>> {
    let mut body = serde_json::to_vec_pretty(&KeyFile::new(vault_id, batch))
        .map_err(|e| Error::Runtime(e.to_string()))?;
    body.push(b'\n');
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_order_accepts_a_walk_and_refuses_disorder() {
        let mut t = TreeOrder::default();
        for (p, d) in [
            ("a", true),
            ("a/b", true),
            ("a/b/x", false),
            ("a/b-c", false),
            ("a/bz", false),
            ("d", false),
        ] {
            t.push(p.as_bytes(), d).unwrap();
        }
        assert_eq!(tree_cmp(b"a/b/x", b"a/b-c"), std::cmp::Ordering::Less);
        for bad in [
            vec![("a", true), ("a", true)],
            vec![("a", true), ("b", false), ("a/x", false)],
            vec![("b", false), ("a", false)],
            vec![("a", false), ("a/x", false)],
            vec![("a", true), ("a/y", false), ("a/x", false)],
            vec![("x/y", false)],
        ] {
            let mut t = TreeOrder::default();
            let r: std::result::Result<Vec<()>, String> =
                bad.iter().map(|(p, d)| t.push(p.as_bytes(), *d)).collect();
            assert!(r.is_err(), "{bad:?}");
        }
    }

    fn header() -> Header {
        Header {
            vault_id: [1; 16],
            created: String::new(),
            generator: String::new(),
            segment_size: 4096,
            conceal_names: false,
            shard: None,
        }
    }

    /// One reading of every byte: unknown or duplicate members, fields of another kind, UTF-8
    /// names spelled in base64 and out-of-range numbers are refused.
    #[test]
    fn entry_lines_are_strict() {
        let h = header();
        let good = br#"{"type":"entry","path":"a","kind":"dir","mode":493,"mtime":1,"nsec":0}"#;
        assert!(Entry::from_line(good, &h).is_ok());
        for bad in [
            &br#"{"type":"entry","path":"a","kind":"dir","mode":493,"mtime":1,"nsec":0,"x":1}"#[..],
            br#"{"type":"entry","path":"a","path":"b","kind":"dir","mode":493,"mtime":1,"nsec":0}"#,
            br#"{"type":"entry","path":"a","kind":"dir","mode":493,"mtime":1,"nsec":0,"size":1}"#,
            br#"{"type":"entry","path_b64":"YQ==","kind":"dir","mode":493,"mtime":1,"nsec":0}"#,
            br#"{"type":"entry","path":"a","kind":"dir","mode":4294967296,"mtime":1,"nsec":0}"#,
            br#"{"type":"entry","path":"a","kind":"dir","mode":493,"mtime":1,"nsec":1000000000}"#,
            br#"{"type":"entry","path":"../a","kind":"dir","mode":493,"mtime":1,"nsec":0}"#,
            br#"{"type":"entry","path":"a","kind":"file","mode":493,"mtime":1,"nsec":0}"#,
            br#"{"type":"entry","type":"entry","path":"a","kind":"dir","mode":493,"mtime":1,"nsec":0}"#,
        ] {
            assert!(
                Entry::from_line(bad, &h).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// One set of rules, two entry points: every bad entry value below is refused by the
    /// writer's [`Entry::check`] AND its line is refused by the reader (parsed, then its names
    /// revealed and its attributes opened, as `ManifestReader` and `decrypt` do), rule by rule;
    /// the good entries pass both.
    #[test]
    fn the_writer_checks_every_rule_the_reader_applies() {
        let nk = name_key();
        let clear = header();
        let concealed = Header {
            conceal_names: true,
            ..header()
        };
        let reader_refuses = |e: &Entry, src: Option<&SourceId>, h: &Header| {
            let sealed = Entry {
                xattrs: e.xattrs.sealed(&nk).unwrap(),
                ..e.clone()
            };
            let line = sealed
                .to_line_src(h.conceal_names.then_some(&nk), src)
                .unwrap();
            match Entry::from_line_src(&line, h) {
                Err(_) => true,
                Ok((mut e, _)) => e.reveal(&nk).is_err() || e.xattrs.open(&nk).is_err(),
            }
        };
        let file = |size: u64| {
            EntryKind::File(FileEntry {
                size,
                batch: 0,
                obj: 0,
                off: 0,
                salt: [1; 32],
                ct: [2; 32],
                pt: [3; 32],
                sparse: None,
                rlen: None,
            })
        };
        let good = Entry {
            path: Name::Clear(b"top/f".to_vec()),
            mode: 0o644,
            mtime: -5,
            mtime_nsec: 999_999_999,
            kind: file(10),
            owner: Some(Owner {
                uid: 1000,
                gid: 100,
                user: Some("ann".into()),
                group: Some("users".into()),
            }),
            linked: true,
            xattrs: Xattrs::Clear(vec![(b"user.a".to_vec(), b"1".to_vec())]),
        };
        let src = SourceId {
            dev: 1,
            ino: 2,
            ctime: 3,
            ctime_nsec: 999_999_999,
        };
        let with = |f: &dyn Fn(&mut Entry)| {
            let mut e = good.clone();
            f(&mut e);
            e
        };
        let symlink = |t: &[u8]| {
            with(&|e| {
                e.kind = EntryKind::Symlink(Name::Clear(t.to_vec()));
                e.linked = false;
            })
        };
        let hardlink = |t: &[u8]| {
            with(&|e| {
                e.kind = EntryKind::HardLink(Name::Clear(t.to_vec()));
                e.linked = false;
            })
        };
        let path = |p: &[u8]| with(&|e| e.path = Name::Clear(p.to_vec()));
        let owner = |uid: u32, gid: u32, user: &str, group: &str| {
            with(&|e| {
                e.owner = Some(Owner {
                    uid,
                    gid,
                    user: Some(user.into()),
                    group: Some(group.into()),
                })
            })
        };
        let xattrs = |l: &[(&[u8], &[u8])]| {
            let l: Vec<_> = l.iter().map(|(n, v)| (n.to_vec(), v.to_vec())).collect();
            with(&|e| e.xattrs = Xattrs::Clear(l.clone()))
        };
        let long = vec![b'a'; format::MAX_PATH_BYTES + 1];
        let bad_src = SourceId {
            ctime_nsec: 1_000_000_000,
            ..src
        };
        let big = format::MAX_SEGMENTS * 4096 + 1;
        for h in [&clear, &concealed] {
            for (e, s) in [
                (good.clone(), Some(&src)),
                (symlink(b"/anywhere/../at/all"), None),
                (hardlink(b"top/g"), None),
                (with(&|e| e.kind = EntryKind::Dir), None),
            ] {
                let e = Entry {
                    linked: e.file().is_some(),
                    ..e
                };
                assert_eq!(e.check(h, s), Ok(()), "{e:?}");
                assert!(!reader_refuses(&e, s, h), "{e:?}");
            }
            let table: Vec<(&str, Entry, Option<&SourceId>)> = vec![
                ("a .. component", path(b"top/../etc"), None),
                ("a . component", path(b"top/./f"), None),
                ("an absolute path", path(b"/etc/passwd"), None),
                ("an empty component", path(b"top//f"), None),
                ("a trailing slash", path(b"top/"), None),
                ("an empty path", path(b""), None),
                ("a NUL in the path", path(b"top/f\0"), None),
                ("an over-long path", path(&long), None),
                ("file type bits", with(&|e| e.mode = 0o100644), None),
                ("nsec", with(&|e| e.mtime_nsec = 1_000_000_000), None),
                ("uid (uid_t)-1", owner(u32::MAX, 1, "a", "b"), None),
                ("gid (uid_t)-1", owner(1, u32::MAX, "a", "b"), None),
                ("an empty user", owner(1, 1, "", "b"), None),
                ("a / in a user", owner(1, 1, "a/b", "b"), None),
                ("a : in a group", owner(1, 1, "a", "b:c"), None),
                ("a newline in a group", owner(1, 1, "a", "b\n"), None),
                ("a NUL in a user", owner(1, 1, "a\0", "b"), None),
                ("a 257-byte user", owner(1, 1, &"u".repeat(257), "b"), None),
                ("src ctime_nsec", good.clone(), Some(&bad_src)),
                ("over 2^32 segments", with(&|e| e.kind = file(big)), None),
                ("an empty link target", symlink(b""), None),
                ("a NUL in a link target", symlink(b"a\0b"), None),
                ("an over-long link target", symlink(&long), None),
                ("a hard link to ..", hardlink(b"top/../x"), None),
                ("an absolute hard link", hardlink(b"/etc/shadow"), None),
                (
                    "unsorted attributes",
                    xattrs(&[(b"user.b", b""), (b"user.a", b"")]),
                    None,
                ),
                (
                    "an attribute twice",
                    xattrs(&[(b"user.a", b"1"), (b"user.a", b"2")]),
                    None,
                ),
                ("an empty attribute name", xattrs(&[(b"", b"1")]), None),
                (
                    "a NUL in an attribute name",
                    xattrs(&[(b"user.\0", b"1")]),
                    None,
                ),
                (
                    "a 256-byte attribute name",
                    xattrs(&[(&[b'n'; 256], b"1")]),
                    None,
                ),
            ];
            for (what, e, s) in &table {
                let why = h.conceal_names;
                assert!(
                    e.check(h, *s).is_err(),
                    "check passes {what} (concealed: {why})"
                );
                assert!(
                    reader_refuses(e, *s, h),
                    "the reader reads {what} (concealed: {why})"
                );
            }
            // `linked` on anything but a file: refused, though a line cannot even say it
            // (`to_line` writes the member on files only; the reader refuses it elsewhere).
            let dir = with(&|e| e.kind = EntryKind::Dir);
            assert!(dir.check(h, None).is_err());
            let line = br#"{"type":"entry","path":"a","kind":"dir","mode":493,"mtime":1,"nsec":0,"linked":true}"#;
            assert!(Entry::from_line(line, &clear).is_err());
        }
    }

    /// Holes and zero extents: only on files, valid layouts only, written back as read, and
    /// the record's length follows the stored bytes, not the file's length (§6.4).
    #[test]
    fn sparse_fields_are_strict_and_round_trip() {
        let h = header();
        let file = |extra: &str| {
            format!(
                r#"{{"type":"entry","path":"f","kind":"file","mode":420,"mtime":1,"nsec":0,"size":10000,"batch":0,"obj":0,"off":0,"salt":"{z}","ct":"{z}","pt":"{z}"{extra}}}"#,
                z = "00".repeat(32)
            )
        };
        let line = file(r#","holes":[[0,4096]],"zeros":[[8192,1000]]"#);
        let e = Entry::from_line(line.as_bytes(), &h).unwrap();
        let f = e.file().unwrap();
        assert_eq!((f.file_len(), f.size), (10000, 10000 - 4096 - 1000));
        assert_eq!(f.record_len(4096), format::object_len(4904, 4096));
        assert_eq!(e.to_line(None).unwrap(), line.as_bytes());
        for bad in [
            file(r#","holes":[]"#),
            file(r#","holes":[[0,0]]"#),
            file(r#","holes":[[9000,1001]]"#),
            file(r#","holes":[[0,10],[10,10]]"#),
            file(r#","holes":[[0,10]],"zeros":[[5,10]]"#),
            file(r#","holes":[[0,10,3]]"#),
            r#"{"type":"entry","path":"a","kind":"dir","mode":493,"mtime":1,"nsec":0,"holes":[[0,1]]}"#.to_string(),
        ] {
            assert!(Entry::from_line(bad.as_bytes(), &h).is_err(), "{bad}");
        }
    }

    fn name_key() -> NameKey {
        let dk = crate::crypto::DataKey::from_bytes(&[7u8; 32]).unwrap();
        BatchKey::new(dk, [1; 16], [2; 16]).name_key()
    }

    fn xattr_list(attrs: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut plain = Vec::new();
        for (n, v) in attrs {
            plain.extend_from_slice(&(n.len() as u32).to_be_bytes());
            plain.extend_from_slice(n);
            plain.extend_from_slice(&(v.len() as u32).to_be_bytes());
            plain.extend_from_slice(v);
        }
        plain
    }

    /// Item 8 of the hostile-vault review: an authenticated list with names out of order or
    /// twice restored "the last one wins"; the format says sorted, so every reader refuses it
    /// (an integrity error), and an empty or malformed list too (§6.1).
    #[test]
    fn xattr_lists_must_be_sorted_unique_and_well_formed() {
        let nk = name_key();
        let sealed = |plain: &[u8]| Xattrs::Sealed(nk.seal(plain, AAD_XATTRS).unwrap());
        let good = [(&b"user.a"[..], &b"1"[..]), (b"user.b", b"")];
        assert_eq!(
            sealed(&xattr_list(&good)).open(&nk).unwrap(),
            vec![
                (b"user.a".to_vec(), b"1".to_vec()),
                (b"user.b".to_vec(), vec![])
            ]
        );
        // What a writer seals, a reader opens.
        let clear = Xattrs::Clear(vec![(b"user.a".to_vec(), b"x".to_vec())]);
        assert_eq!(clear.sealed(&nk).unwrap().open(&nk).unwrap().len(), 1);
        let mut truncated = xattr_list(&good);
        truncated.pop();
        let long_name = vec![b'n'; 256];
        for (what, plain) in [
            (
                "unsorted",
                xattr_list(&[(b"user.b", b"1"), (b"user.a", b"2")]),
            ),
            ("twice", xattr_list(&[(b"user.a", b"1"), (b"user.a", b"2")])),
            ("empty list", Vec::new()),
            ("empty name", xattr_list(&[(b"", b"1")])),
            ("NUL in a name", xattr_list(&[(b"user.\0a", b"1")])),
            ("name over 255 bytes", xattr_list(&[(&long_name, b"1")])),
            ("truncated", truncated),
        ] {
            match sealed(&plain).open(&nk) {
                Err(Error::Integrity { .. }) => {}
                other => panic!("{what}: {other:?}"),
            }
        }
        // Sealed under another key, or as a path: refused too.
        let other = Xattrs::Sealed(nk.seal(&xattr_list(&good), AAD_PATH).unwrap());
        assert!(matches!(other.open(&nk), Err(Error::Integrity { .. })));
    }

    fn dir_line(fields: &str) -> String {
        format!(r#"{{"type":"entry","path":"a","kind":"dir",{fields}}}"#)
    }

    /// JSON numbers have one spelling (§1.1): no fraction, exponent or `-0`, and values that
    /// do not fit their field are refused, never truncated. Times before 1970 are negative
    /// seconds with positive nanoseconds.
    #[test]
    fn numbers_have_one_spelling_and_a_range() {
        let h = header();
        let e = Entry::from_line(
            dir_line(r#""mode":493,"mtime":-1,"nsec":250000000"#).as_bytes(),
            &h,
        )
        .unwrap();
        assert_eq!((e.mtime, e.mtime_nsec), (-1, 250_000_000));
        let min = dir_line(r#""mode":0,"mtime":-9223372036854775808,"nsec":0"#);
        assert_eq!(
            Entry::from_line(min.as_bytes(), &h).unwrap().mtime,
            i64::MIN
        );
        for bad in [
            r#""mode":493.0,"mtime":1,"nsec":0"#,
            r#""mode":4.93e2,"mtime":1,"nsec":0"#,
            r#""mode":493,"mtime":1e3,"nsec":0"#,
            r#""mode":493,"mtime":1E3,"nsec":0"#,
            r#""mode":493,"mtime":-0,"nsec":0"#,
            r#""mode":493,"mtime":1,"nsec":-0"#,
            r#""mode":-0,"mtime":1,"nsec":0"#,
            r#""mode":0493,"mtime":1,"nsec":0"#,
            r#""mode":+493,"mtime":1,"nsec":0"#,
            r#""mode":"493","mtime":1,"nsec":0"#,
            r#""mode":493,"mtime":9223372036854775808,"nsec":0"#,
            r#""mode":493,"mtime":-9223372036854775809,"nsec":0"#,
            r#""mode":493,"mtime":1,"nsec":-1"#,
            r#""mode":493,"mtime":1,"nsec":4294967296"#,
            r#""mode":4096,"mtime":1,"nsec":0"#,
            r#""mode":493,"mtime":1,"nsec":0,"uid":4294967295,"gid":0"#,
            r#""mode":493,"mtime":1,"nsec":0,"uid":0,"gid":4294967295"#,
            r#""mode":493,"mtime":1,"nsec":0,"uid":0,"gid":4294967296"#,
        ] {
            let line = dir_line(bad);
            assert!(Entry::from_line(line.as_bytes(), &h).is_err(), "{line}");
        }
        // A lone surrogate is no string (§1.1).
        let lone = r#"{"type":"entry","path":"\ud800","kind":"dir","mode":493,"mtime":1,"nsec":0}"#;
        assert!(Entry::from_line(lone.as_bytes(), &h).is_err());
        let ok = dir_line(r#""mode":493,"mtime":1,"nsec":0,"uid":4294967294,"gid":0"#);
        assert!(Entry::from_line(ok.as_bytes(), &h).is_ok());
    }

    /// Base64 is RFC 4648's standard alphabet, padded and canonical, nothing else (§1.1).
    #[test]
    fn base64_has_one_spelling() {
        let h = header();
        let line = |b64: &str| {
            format!(
                r#"{{"type":"entry","path_b64":"{b64}","kind":"dir","mode":493,"mtime":1,"nsec":0}}"#
            )
        };
        // b"\xff\xfe" (not UTF-8) is "//4=".
        let e = Entry::from_line(line("//4=").as_bytes(), &h).unwrap();
        assert_eq!(e.path, Name::Clear(vec![0xff, 0xfe]));
        for bad in ["//4", "//5=", "__4=", "//4=\\n", " //4=", "//4=="] {
            assert!(Entry::from_line(line(bad).as_bytes(), &h).is_err(), "{bad}");
        }
    }

    /// Gaps: each field's pairs in increasing order (one spelling per layout); a hole may
    /// touch a zero extent; the `src` times and the line's length are range-checked.
    #[test]
    fn gaps_src_and_line_length_are_strict() {
        let h = header();
        let file = |extra: &str| {
            format!(
                r#"{{"type":"entry","path":"f","kind":"file","mode":420,"mtime":1,"nsec":0,"size":100000,"batch":0,"obj":0,"off":0,"salt":"{z}","ct":"{z}","pt":"{z}"{extra}}}"#,
                z = "00".repeat(32)
            )
        };
        for ok in [
            r#","holes":[[0,4096],[8192,10]]"#,
            r#","holes":[[0,4096]],"zeros":[[4096,4096]]"#,
            r#","src":{"dev":1,"ino":2,"ctime":-5,"ctime_nsec":999999999}"#,
        ] {
            assert!(Entry::from_line(file(ok).as_bytes(), &h).is_ok(), "{ok}");
        }
        for bad in [
            r#","holes":[[8192,10],[0,4096]]"#,
            r#","zeros":[[8192,10],[0,4096]]"#,
            r#","holes":[[0,4096],[4096,10]]"#,
            r#","holes":[[0,4096]],"zeros":[[4095,10]]"#,
            r#","holes":[[18446744073709551615,2]]"#,
            r#","src":{"dev":1,"ino":2,"ctime":1,"ctime_nsec":1000000000}"#,
            r#","src":{"dev":1,"ino":2,"ctime":1,"ctime_nsec":0,"x":1}"#,
        ] {
            assert!(Entry::from_line(file(bad).as_bytes(), &h).is_err(), "{bad}");
        }
        // A line of exactly 1 MiB is read; one byte more is not (the newline is not counted).
        let long = |n: usize| {
            let base = dir_line(r#""mode":493,"mtime":1,"nsec":0"#);
            // Whitespace before the closing brace is valid JSON and pads the line exactly.
            let mut l = base[..base.len() - 1].to_string();
            l.push_str(&" ".repeat(n - base.len()));
            l.push('}');
            l
        };
        assert!(Entry::from_line(long(format::MAX_MANIFEST_LINE).as_bytes(), &h).is_ok());
        assert!(Entry::from_line(long(format::MAX_MANIFEST_LINE + 1).as_bytes(), &h).is_err());
    }

    /// Reads `lines` as a manifest (each with its newline unless `torn`) to its
    /// end record, without keys: the structural checks every reader makes.
    fn read_manifest(lines: &[String], torn: bool) -> Result<()> {
        let mut text = lines.join("\n");
        if !torn {
            text.push('\n');
        }
        let mut r = ManifestReader::from_reader(Box::new(std::io::Cursor::new(text)), "m".into())?;
        while r.next_entry()?.is_some() {}
        Ok(())
    }

    fn head_lines(batch_ids: &[u8], wrap: &str) -> Vec<String> {
        let mut v = vec![format!(
            r#"{{"type":"vault","format":2,"vault_id":"{}","created":"","generator":"","segment_size":4096,"conceal_names":false}}"#,
            "01".repeat(16)
        )];
        for (i, b) in batch_ids.iter().enumerate() {
            let id = format!("{b:02x}").repeat(16);
            v.push(format!(
                r#"{{"type":"batch","batch":{i},"id":"{id}","key_commitment":"{}"}}"#,
                "00".repeat(32)
            ));
            v.push(wrap.replace("{i}", &i.to_string()).replace("{id}", &id));
        }
        v
    }

    const WRAP: &str = r#"{"type":"wrap","batch":{i},"kms":"local","key_id":"k","blob":"b","context":{"envseal:batch":"{id}","envseal:vault":"01010101010101010101010101010101"}}"#;

    fn end_line(batches: usize, entries: usize) -> String {
        let macs: Vec<String> = (0..batches)
            .map(|i| format!(r#"{{"batch":{i},"mac":"{}"}}"#, "00".repeat(32)))
            .collect();
        format!(
            r#"{{"type":"end","batches":{batches},"objects":0,"entries":{entries},"macs":[{}]}}"#,
            macs.join(",")
        )
    }

    /// The manifest's structure, as every reader checks it before any key: duplicate batch
    /// ids, strict wrap records (no unknown or duplicate members, a context without a
    /// duplicate member), every line ended by its newline and within 1 MiB (§1.1, §5, §6.1).
    #[test]
    fn manifest_structure_is_strict() {
        let ok = |lines: Vec<String>| read_manifest(&lines, false);
        let with = |ids: &[u8], wrap: &str, entries: &[&str]| {
            let mut l = head_lines(ids, wrap);
            l.extend(entries.iter().map(|e| e.to_string()));
            l.push(end_line(ids.len(), entries.len()));
            l
        };
        let a = dir_line(r#""mode":493,"mtime":1,"nsec":0"#);
        ok(with(&[0xb0, 0xb1], WRAP, &[&a])).unwrap();
        // The MAC is checked later with the keys; these fail before.
        let integrity = |r: Result<()>, what: &str| match r {
            Err(Error::Integrity { .. }) => {}
            other => panic!("{what}: {other:?}"),
        };
        integrity(ok(with(&[0xb0, 0xb0], WRAP, &[&a])), "batch id twice");
        for (what, wrap) in [
            (
                "unknown member",
                WRAP.replace(r#""blob":"b","#, r#""blob":"b","x":1,"#),
            ),
            (
                "member twice",
                WRAP.replace(r#""blob":"b","#, r#""blob":"b","blob":"c","#),
            ),
            (
                "context member twice",
                WRAP.replace(
                    r#""context":{"#,
                    r#""context":{"envseal:batch":"ffffffffffffffffffffffffffffffff","#,
                ),
            ),
            (
                "a context value not a string",
                WRAP.replace(
                    r#""envseal:vault":"01010101010101010101010101010101""#,
                    r#""envseal:vault":1"#,
                ),
            ),
        ] {
            integrity(ok(with(&[0xb0], &wrap, &[&a])), what);
        }
        // A last line without its newline is a truncated manifest.
        integrity(read_manifest(&with(&[0xb0], WRAP, &[&a]), true), "torn");
        // A line over 1 MiB (not counting its newline) is damage, exit 3; 1 MiB exactly is read.
        let mut long = a[..a.len() - 1].to_string();
        long.push_str(&" ".repeat(format::MAX_MANIFEST_LINE - a.len()));
        long.push('}');
        assert_eq!(long.len(), format::MAX_MANIFEST_LINE);
        ok(with(&[0xb0], WRAP, &[&long])).unwrap();
        let longer = long.replacen(' ', "  ", 1);
        integrity(ok(with(&[0xb0], WRAP, &[&longer])), "over-long line");
    }

    /// A part's shard mark is read back as written; one out of range (an index not below
    /// the count, no shards, more than `MAX_SHARDS`) or with a member more is refused.
    #[test]
    fn shard_marks_are_strict() {
        let mark = ShardMark { index: 2, count: 4 };
        let mut out = Vec::new();
        let h = Header {
            shard: Some(mark),
            ..header()
        };
        drop(ManifestWriter::new(&mut out, "m".into(), &h).unwrap());
        let first = String::from_utf8(out).unwrap();
        let first = first.lines().next().unwrap().to_string();
        assert!(
            first.ends_with(r#","shard":{"index":2,"count":4}}"#),
            "{first}"
        );
        let read = |vault: String| {
            let mut l = head_lines(&[0xb0], WRAP);
            l[0] = vault;
            l.push(end_line(1, 0));
            let text = l.join("\n") + "\n";
            ManifestReader::from_reader(Box::new(std::io::Cursor::new(text)), "m".into())
                .map(|r| r.header.shard)
        };
        let vault = |shard: &str| first.replace(r#""index":2,"count":4"#, shard);
        assert_eq!(read(vault(r#""index":2,"count":4"#)).unwrap(), Some(mark));
        for bad in [
            r#""index":4,"count":4"#,
            r#""index":0,"count":0"#,
            r#""index":0,"count":4097"#,
            r#""index":0,"count":4,"x":1"#,
            r#""index":-1,"count":4"#,
        ] {
            assert!(
                matches!(read(vault(bad)), Err(Error::Integrity { .. })),
                "{bad}"
            );
        }
    }

    /// Key files are read as strictly as `wrap` records: what they write, they read; an unknown
    /// or repeated member, in the file or in a wrapping or its context, is refused.
    #[test]
    fn key_files_are_read_strictly() {
        let ctx =
            crate::format::wrap::EncryptionContext::for_batch(&"01".repeat(16), &"02".repeat(16));
        let b = Batch {
            batch_id: [2; 16],
            key_commitment: [3; 32],
            wrapped: vec![WrappedKey {
                kms: "local".into(),
                key_id: "k".into(),
                blob: "b".into(),
                context: ctx,
            }],
        };
        let kf = KeyFile::new(&[1; 16], &b);
        let text = serde_json::to_string_pretty(&kf).unwrap();
        assert_eq!(serde_json::from_str::<KeyFile>(&text).unwrap(), kf);
        for (what, from, to) in [
            (
                "unknown member",
                r#""format": 2,"#,
                r#""format": 2, "x": 1,"#,
            ),
            (
                "member twice",
                r#""format": 2,"#,
                r#""format": 2, "format": 2,"#,
            ),
            (
                "unknown wrapping member",
                r#""blob": "b","#,
                r#""blob": "b", "x": 1,"#,
            ),
            (
                "wrapping member twice",
                r#""blob": "b","#,
                r#""blob": "b", "blob": "c","#,
            ),
            (
                "context member twice",
                r#""context": {"#,
                r#""context": { "envseal:vault": "ff","#,
            ),
        ] {
            let bad = text.replacen(from, to, 1);
            assert_ne!(bad, text, "{what}");
            assert!(serde_json::from_str::<KeyFile>(&bad).is_err(), "{what}");
        }
    }

    /// Owners, devices and hard links: strict fields, and a hard link must name an earlier
    /// file marked `linked` (§6.1, §6.2).
    #[test]
    fn fidelity_fields_are_strict_and_links_name_earlier_linked_files() {
        let h = header();
        let line = |rest: &str| {
            format!(r#"{{"type":"entry","path":{rest},"mode":420,"mtime":1,"nsec":0}}"#)
        };
        let ok = |rest: &str| Entry::from_line(line(rest).as_bytes(), &h);
        let e = ok(r#""d","kind":"chardev","rdev":259,"uid":7,"gid":8,"user":"u","group":"g""#)
            .unwrap();
        assert_eq!(e.kind, EntryKind::CharDev(259));
        assert_eq!(e.owner.unwrap().user.as_deref(), Some("u"));
        for bad in [
            r#""d","kind":"chardev""#,                          // no rdev
            r#""d","kind":"fifo","rdev":1"#,                    // rdev on a FIFO
            r#""d","kind":"dir","uid":1"#,                      // uid without gid
            r#""d","kind":"dir","user":"u""#,                   // a name without ids
            r#""d","kind":"dir","uid":1,"gid":1,"user":"a/b""#, // a bad name
            r#""d","kind":"dir","linked":true"#,                // linked on a directory
            r#""d","kind":"hardlink","target":"../x""#,         // unsafe target
            r#""d","kind":"hardlink""#,                         // no target
        ] {
            assert!(ok(bad).is_err(), "{bad}");
        }
        let file = |p: &str, linked: bool| Entry {
            path: Name::Clear(p.as_bytes().to_vec()),
            mode: 0o644,
            mtime: 0,
            mtime_nsec: 0,
            kind: EntryKind::Dir,
            owner: None,
            linked,
            xattrs: Default::default(),
        };
        let link = |p: &str, t: &str| Entry {
            kind: EntryKind::HardLink(Name::Clear(t.as_bytes().to_vec())),
            ..file(p, false)
        };
        let mut t = TreeOrder::default();
        t.push_entry(&file("a", true)).unwrap();
        t.push_entry(&file("b", false)).unwrap();
        t.push_entry(&link("c", "a")).unwrap();
        // Not linked, not listed, or later: refused.
        assert!(t.push_entry(&link("d", "b")).is_err());
        assert!(t.push_entry(&link("e", "zz")).is_err());
        let mut t = TreeOrder::default();
        assert!(t.push_entry(&link("a", "b")).is_err());
    }
}
