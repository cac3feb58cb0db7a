//! The journal (`journal.jsonl`): what an unfinished run has durably done (docs/FORMAT.md §7).
//!
//! Line 1 is the `run` record (the arguments, so a resumed run can check it is the same run).
//! `batch` records are written and synced before any ciphertext of their batch exists
//! (docs/FORMAT.md §7). Every later line is authenticated: it begins `{"mac":"<hex>",` and the
//! MAC (keyed BLAKE3, key derived from the first batch's data key) covers the rest of the line.
//! `object` lines name the objects in the order of their indices; `done` lines carry entries,
//! verbatim as the manifest will hold them, in tree order, each appended only after its data
//! is synced; a `gen` line starts the entries of a resumed run. The entries of the last
//! generation are the manifest's entries; earlier generations only feed the resume.

use std::io::BufReader;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
pub use crate::format::manifest::SourceId;
use crate::format::manifest::{Batch, Lines};
use crate::format::{self, layout, ID_LEN};
use crate::kms::WrappedKey;
use crate::store::{Log, Store};

/// The arguments that define a run; a resume must present the same ones.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RunParams {
    /// Absolute source paths (base64 of their bytes: they need not be UTF-8).
    pub sources: Vec<String>,
    pub key: Option<String>,
    pub kms: String,
    pub segment_size: u32,
    pub conceal_names: bool,
    pub excludes: Vec<String>,
    /// The other CMKs every batch key is wrapped under (`KMS#CMK`), absent when none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also_keys: Vec<String>,
    /// An incremental run's earlier vault (base64 of its absolute path), absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// A part of a sharded run (`encrypt --plan --shard`), absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<ShardParams>,
    /// `--compress`: the Zstandard level, absent without it (a resumed run compresses as
    /// the run it finishes did).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compress: Option<i32>,
}

/// What makes a run one part of a plan (docs/FORMAT.md §6.6): the plan file (base64 of its
/// absolute path), the shard's index and count, and its range of paths (base64; absent at
/// the start and the end of the path space). The plan's vault id is the run's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardParams {
    pub plan: String,
    pub index: u32,
    pub count: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRecord {
    #[serde(rename = "type")]
    pub kind: String,
    pub format: u16,
    pub vault_id: String,
    pub created: String,
    pub params: RunParams,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchLine {
    #[serde(rename = "type")]
    kind: String,
    batch: u32,
    id: String,
    key_commitment: String,
    wrapped: Vec<WrappedKey>,
}

/// An authenticated record of an existing journal.
#[derive(Debug)]
pub enum Record {
    Object {
        obj: u64,
        id: [u8; ID_LEN],
    },
    Gen,
    Done {
        src: Option<SourceId>,
        rec: Vec<u8>,
    },
    /// A segment checkpoint of a large file: its first `segs` segments are sealed into
    /// object `obj` (synced before this record), from the source as identified.
    Ckpt(Box<Ckpt>),
}

/// A segment checkpoint (docs/FORMAT.md §7).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ckpt {
    pub src: SourceId,
    pub size: u64,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub batch: u32,
    pub obj: u64,
    pub segs: u64,
    /// The record's header (at offset 0 of the object): what a resume derives the file's
    /// keys from when the object cannot be read back before it is finished (object
    /// storage keeps an unfinished upload unreadable).
    pub head: Option<[u8; format::HEADER_LEN]>,
    /// A compressed record's prefix (its slots have no fixed offsets, §4.5): where the
    /// checkpointed segments end in the record, and the BLAKE3 of its bytes up to there.
    pub prefix: Option<Prefix>,
    /// With `prefix`: the stored lengths of the segments sealed since the previous
    /// checkpoint of the same object (the lines of one record give its table so far).
    pub lens: Option<Lens>,
}

/// Stored lengths of a compressed record's segments `from..from + lens.len()` (§4.5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lens {
    pub from: u64,
    pub lens: Vec<u32>,
}

/// A compressed record's first `segs` segments as a checkpoint recorded them: they end at
/// record offset `rpos`, and the record's bytes up to there hash (BLAKE3) to `hash`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefix {
    pub segs: u64,
    pub rpos: u64,
    pub hash: [u8; 32],
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MacLine<'a> {
    mac: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    obj: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    src: Option<SourceId>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    rec: Option<&'a RawValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mtime: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nsec: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    batch: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    segs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    head: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rpos: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rhash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lfrom: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lens: Option<String>,
}

/// `{"mac":"` + 64 hex digits + `",`: the fixed start of every authenticated line.
const MAC_PREFIX_LEN: usize = 8 + 64 + 2;

/// An open journal (its run holds the vault's lock).
pub struct Journal {
    log: Box<dyn Log>,
    what: String,
    mac_key: Option<Zeroizing<[u8; 32]>>,
    vault_id: String,
    params: RunParams,
}

/// What an existing journal holds, before its authenticated lines are checked.
pub struct Loaded {
    pub run: RunRecord,
    pub batches: Vec<Batch>,
    /// (line, offsets of its start and just past its end)
    authed: Vec<(Vec<u8>, u64, u64)>,
    /// Offset just past the last structurally valid line.
    good_end: u64,
}

fn json<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    let mut b = serde_json::to_vec(v).map_err(|e| Error::Runtime(e.to_string()))?;
    b.push(b'\n');
    Ok(b)
}

fn mac_of(key: &[u8; 32], rest: &[u8]) -> blake3::Hash {
    blake3::keyed_hash(key, rest)
}

/// The line of an authenticated record: `{"mac":"<hex>",` followed by `rest`, the record's
/// JSON without its opening brace.
fn mac_line(key: &[u8; 32], rest: &[u8]) -> Vec<u8> {
    let mut l = Vec::with_capacity(MAC_PREFIX_LEN + rest.len() + 1);
    l.extend_from_slice(b"{\"mac\":\"");
    l.extend_from_slice(mac_of(key, rest).to_hex().as_bytes());
    l.extend_from_slice(b"\",");
    l.extend_from_slice(rest);
    l.push(b'\n');
    l
}

impl Journal {
    /// Starts a new journal with its run record, durably and atomically: a
    /// `journal.jsonl` never exists without its run record (a kill at any moment leaves
    /// either no journal, or a whole one), and one another run put there first is never
    /// replaced.
    pub fn create(store: &dyn Store, run: &RunRecord) -> Result<Journal> {
        let line = json(run)?;
        let Some(log) = store.create_log(layout::JOURNAL, &line)? else {
            return Err(Error::Runtime(format!(
                "{}: another envseal run created this journal",
                store.describe(layout::JOURNAL)
            )));
        };
        Ok(Journal {
            log,
            what: store.describe(layout::JOURNAL),
            mac_key: None,
            vault_id: run.vault_id.clone(),
            params: run.params.clone(),
        })
    }

    /// Opens an existing journal for resuming: parses its structure; the authenticated lines
    /// are checked by [`Journal::authenticated`] once the first batch key is known.
    pub fn open(store: &dyn Store) -> Result<(Journal, Loaded)> {
        let what = store.describe(layout::JOURNAL);
        let Some((log, body)) = store.open_log(layout::JOURNAL)? else {
            return Err(Error::format(&what, "no journal"));
        };
        let len = body.len() as u64;
        let mut lines = Lines::new(&body[..], &what);
        let mut run: Option<RunRecord> = None;
        let mut batches = Vec::new();
        let mut authed = Vec::new();
        let mut offset = 0u64;
        let mut good_end = 0u64;
        while let Some(line) = lines.next_line()? {
            let start = offset;
            offset += line.len() as u64 + 1;
            // Every record ends with a newline: a last line without one was torn by a crash,
            // even if it parses (and keeping it would put the next record on its line).
            if offset > len {
                break;
            }
            if run.is_none() {
                match serde_json::from_slice::<RunRecord>(&line) {
                    Ok(r) if r.kind == "run" => run = Some(r),
                    _ => break,
                }
            } else if line.starts_with(b"{\"type\":\"batch\"") {
                let Ok(b) = serde_json::from_slice::<BatchLine>(&line) else {
                    break; // a torn append
                };
                if b.batch as usize != batches.len() {
                    return Err(Error::integrity(&what, "journal batches out of order"));
                }
                let at = format!("{what} batch {}", b.batch);
                let key_file = crate::format::manifest::KeyFile {
                    format: format::FORMAT_VERSION,
                    vault_id: String::new(),
                    batch_id: b.id,
                    key_commitment: b.key_commitment,
                    wrapped: b.wrapped,
                };
                let batch = key_file.to_batch(&at)?;
                if batch.wrapped.is_empty() {
                    return Err(Error::integrity(&at, "a batch without a wrapped key"));
                }
                batches.push(batch);
            } else if line.len() > MAC_PREFIX_LEN && line.starts_with(b"{\"mac\":\"") {
                authed.push((line, start, offset));
            } else {
                break; // a torn append
            }
            good_end = offset;
        }
        let run = run.ok_or_else(|| {
            Error::format(
                &what,
                "journal has no run record (a run stopped before it started); remove the vault directory and run the command again",
            )
        })?;
        if run.format != format::FORMAT_VERSION {
            return Err(Error::format(&what, "journal of another format version"));
        }
        let journal = Journal {
            log,
            what,
            mac_key: None,
            vault_id: run.vault_id.clone(),
            params: run.params.clone(),
        };
        Ok((
            journal,
            Loaded {
                run,
                batches,
                authed,
                good_end,
            },
        ))
    }

    /// Sets the MAC key (from the first batch's data key); needed before any authenticated
    /// line is written or read.
    pub fn set_mac_key(&mut self, key: Zeroizing<[u8; 32]>) {
        self.mac_key = Some(key);
    }

    fn key(&self) -> Result<&[u8; 32]> {
        self.mac_key
            .as_deref()
            .ok_or_else(|| Error::Runtime("journal MAC key not set".into()))
    }

    /// Authenticates the loaded lines and truncates the journal after the last good one, so new
    /// records follow it. Only the last line may fail (a write torn by a crash); a bad line
    /// followed by others means the journal was modified.
    pub fn authenticated(&mut self, loaded: &Loaded) -> Result<Vec<Record>> {
        let mut out = Vec::with_capacity(loaded.authed.len());
        let mut end = loaded.good_end;
        let what = self.what.clone();
        for (line, start, stop) in &loaded.authed {
            match self.parse_authed(line) {
                Some(r) => out.push(r),
                None if *stop == loaded.good_end => {
                    end = *start;
                    break;
                }
                None => {
                    return Err(Error::integrity(
                        &what,
                        "journal record fails authentication (the journal was modified)",
                    ))
                }
            }
        }
        if end != self.log.position() {
            self.log.truncate(end)?;
        }
        Ok(out)
    }

    fn parse_authed(&self, line: &[u8]) -> Option<Record> {
        let key = self.key().ok()?;
        let mac = format::from_hex::<32>(std::str::from_utf8(&line[8..72]).ok()?)?;
        if mac_of(key, &line[MAC_PREFIX_LEN..]) != blake3::Hash::from(mac) {
            return None;
        }
        let l: MacLine = serde_json::from_slice(line).ok()?;
        if l.kind == "ckpt" {
            return match (l.src, l.obj, l.size, l.mtime, l.nsec, l.batch, l.segs) {
                (
                    Some(src),
                    Some(obj),
                    Some(size),
                    Some(mtime),
                    Some(nsec),
                    Some(batch),
                    Some(segs),
                ) if l.id.is_none() && l.rec.is_none() && nsec <= 999_999_999 => {
                    let head = match &l.head {
                        Some(h) => Some(format::from_hex::<{ format::HEADER_LEN }>(h)?),
                        None => None,
                    };
                    let (prefix, lens) = match (l.rpos, &l.rhash, l.lfrom, &l.lens) {
                        (Some(rpos), Some(h), Some(from), Some(b)) => {
                            use base64::Engine;
                            let bytes = base64::engine::general_purpose::STANDARD.decode(b).ok()?;
                            if bytes.len() % 4 != 0 {
                                return None;
                            }
                            let lens = bytes
                                .chunks_exact(4)
                                .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                                .collect();
                            (
                                Some(Prefix {
                                    segs,
                                    rpos,
                                    hash: format::from_hex::<32>(h)?,
                                }),
                                Some(Lens { from, lens }),
                            )
                        }
                        (None, None, None, None) => (None, None),
                        _ => return None,
                    };
                    Some(Record::Ckpt(Box::new(Ckpt {
                        src,
                        size,
                        mtime,
                        mtime_nsec: nsec,
                        batch,
                        obj,
                        segs,
                        head,
                        prefix,
                        lens,
                    })))
                }
                _ => None,
            };
        }
        if l.size.is_some()
            || l.mtime.is_some()
            || l.nsec.is_some()
            || l.batch.is_some()
            || l.segs.is_some()
            || l.head.is_some()
            || l.rpos.is_some()
            || l.rhash.is_some()
            || l.lfrom.is_some()
            || l.lens.is_some()
        {
            return None;
        }
        match (l.kind.as_str(), l.obj, l.id, l.rec) {
            ("object", Some(obj), Some(id), None) if l.src.is_none() => Some(Record::Object {
                obj,
                id: format::from_hex(&id)?,
            }),
            ("gen", None, None, None) if l.src.is_none() => Some(Record::Gen),
            ("done", None, None, Some(rec)) => Some(Record::Done {
                src: l.src,
                rec: rec.get().as_bytes().to_vec(),
            }),
            _ => None,
        }
    }

    /// The offset where the next record goes.
    pub fn position(&self) -> u64 {
        self.log.position()
    }

    /// Appends a batch record durably (before any of its ciphertext is written).
    pub fn append_batch(&mut self, index: u32, b: &Batch) -> Result<()> {
        let line = json(&BatchLine {
            kind: "batch".into(),
            batch: index,
            id: b.id_hex(),
            key_commitment: format::to_hex(&b.key_commitment),
            wrapped: b.wrapped.clone(),
        })?;
        self.log.append(&line)
    }

    /// Queues an authenticated line for the next [`Journal::write_queued`].
    pub fn object_line(&self, obj: u64, id: &[u8; ID_LEN]) -> Result<Vec<u8>> {
        let rest = format!(
            r#""type":"object","obj":{obj},"id":"{}"}}"#,
            format::to_hex(id)
        );
        Ok(mac_line(self.key()?, rest.as_bytes()))
    }

    /// The authenticated line of a segment checkpoint.
    pub fn ckpt_line(&self, c: &Ckpt) -> Result<Vec<u8>> {
        let src = serde_json::to_string(&c.src).map_err(|e| Error::Runtime(e.to_string()))?;
        let head = match &c.head {
            Some(h) => format!(r#","head":"{}""#, format::to_hex(h)),
            None => String::new(),
        };
        let prefix = match (&c.prefix, &c.lens) {
            (Some(p), Some(l)) => {
                use base64::Engine;
                let bytes: Vec<u8> = l.lens.iter().flat_map(|c| c.to_be_bytes()).collect();
                format!(
                    r#","rpos":{},"rhash":"{}","lfrom":{},"lens":"{}""#,
                    p.rpos,
                    format::to_hex(&p.hash),
                    l.from,
                    base64::engine::general_purpose::STANDARD.encode(bytes)
                )
            }
            _ => String::new(),
        };
        let rest = format!(
            r#""type":"ckpt","obj":{},"src":{src},"size":{},"mtime":{},"nsec":{},"batch":{},"segs":{}{head}{prefix}}}"#,
            c.obj, c.size, c.mtime, c.mtime_nsec, c.batch, c.segs
        );
        Ok(mac_line(self.key()?, rest.as_bytes()))
    }

    /// The authenticated line that starts a new generation of entries.
    pub fn gen_line(&self) -> Result<Vec<u8>> {
        Ok(mac_line(self.key()?, br#""type":"gen"}"#))
    }

    /// The authenticated line of a finished entry (`rec` = its manifest line).
    pub fn done_line(&self, src: Option<&SourceId>, rec: &[u8]) -> Result<Vec<u8>> {
        let mut rest = Vec::with_capacity(rec.len() + 128);
        rest.extend_from_slice(br#""type":"done","#);
        if let Some(s) = src {
            rest.extend_from_slice(b"\"src\":");
            rest.extend(serde_json::to_vec(s).map_err(|e| Error::Runtime(e.to_string()))?);
            rest.push(b',');
        }
        rest.extend_from_slice(b"\"rec\":");
        rest.extend_from_slice(rec);
        rest.push(b'}');
        Ok(mac_line(self.key()?, &rest))
    }

    /// Appends lines made by the methods above and syncs. Callers sync the data they name
    /// first.
    pub fn write_synced(&mut self, lines: &[u8]) -> Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        self.log.append(lines)
    }

    /// Reads back the entries written from `from` on (this run's generation), in order: the
    /// manifest's entries. Each line is authenticated again (the file is on disk, and could
    /// have changed since it was written).
    pub fn entries_from(&self, from: u64, mut each: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
        let what = self.what.clone();
        let f = self.log.read_from(from)?;
        let mut lines = Lines::new(BufReader::with_capacity(1 << 20, f), &what);
        while let Some(line) = lines.next_line()? {
            if !line.starts_with(b"{\"mac\":\"") {
                continue; // a batch record of this run
            }
            match self.parse_authed(&line) {
                Some(Record::Done { rec, .. }) => each(&rec)?,
                Some(_) => {}
                None => {
                    return Err(Error::integrity(
                        &what,
                        "journal record fails authentication (the journal was modified)",
                    ))
                }
            }
        }
        Ok(())
    }

    /// Once the manifest is durable: replaces the journal (atomically) by the receipt of the
    /// finished run, so that the same command run again (after a kill at any later moment)
    /// knows the vault is its own and finished.
    pub fn finish(self, store: &dyn Store) -> Result<()> {
        let mac = params_mac(self.key()?, &self.params)?;
        drop(self.log);
        write_receipt(store, &self.vault_id, &mac)
    }
}

/// The last state of a journal: `{"type":"finished","format":2,"vault_id","params_mac"}`.
/// The run's arguments are kept only as a keyed MAC (they name source paths, which a vault
/// with concealed names must not show).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    #[serde(rename = "type")]
    pub kind: String,
    pub format: u16,
    pub vault_id: String,
    pub params_mac: String,
}

/// The keyed MAC (journal MAC key of batch 0) of a run's arguments, for the receipt.
pub fn params_mac(key: &[u8; 32], params: &RunParams) -> Result<String> {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(b"envseal finished run\n");
    h.update(&serde_json::to_vec(params).map_err(|e| Error::Runtime(e.to_string()))?);
    Ok(h.finalize().to_hex().to_string())
}

/// Writes the receipt in place of the journal, atomically.
pub fn write_receipt(store: &dyn Store, vault_id: &str, params_mac: &str) -> Result<()> {
    let line = json(&Receipt {
        kind: "finished".into(),
        format: format::FORMAT_VERSION,
        vault_id: vault_id.into(),
        params_mac: params_mac.into(),
    })?;
    store.replace(layout::JOURNAL, &line)
}

/// What the first line of a vault's journal says, read without locking and within the line
/// limit: `None` when there is no journal.
pub enum Head {
    Run(Box<RunRecord>),
    Finished(Receipt),
    /// Empty, torn or not a journal line.
    Unreadable,
}

/// Reads the first line of `journal.jsonl` (a regular file only, at most one line's limit).
pub fn head(store: &dyn Store) -> Result<Option<Head>> {
    use crate::error::IoContext;
    use std::io::Read;
    let Some(f) = store.reader(layout::JOURNAL)? else {
        return Ok(None);
    };
    let mut buf = Vec::new();
    f.take(format::MAX_MANIFEST_LINE as u64 + 1)
        .read_to_end(&mut buf)
        .at(store.describe(layout::JOURNAL))?;
    let Some(end) = buf.iter().position(|&b| b == b'\n') else {
        return Ok(Some(Head::Unreadable));
    };
    let line = &buf[..end];
    if let Ok(r) = serde_json::from_slice::<RunRecord>(line) {
        if r.kind == "run" {
            return Ok(Some(Head::Run(Box::new(r))));
        }
    }
    if let Ok(r) = serde_json::from_slice::<Receipt>(line) {
        if r.kind == "finished" {
            return Ok(Some(Head::Finished(r)));
        }
    }
    Ok(Some(Head::Unreadable))
}

/// What to tell a reader (`verify`, `decrypt`, `ls`) of a vault without a manifest that has
/// a journal: the exact command that finishes it, or that there is nothing to finish.
pub fn resume_hint(store: &dyn Store) -> String {
    match head(store) {
        Ok(Some(Head::Run(r))) => format!(
            "the vault is unfinished: run `{}` again to finish it (an encrypt of the same sources with the same options resumes)",
            resume_command(&store.url(), &r.params)
        ),
        Ok(Some(Head::Finished(_))) => {
            "the vault has lost its manifest.jsonl (its journal says it was finished): restore the manifest from a backup".into()
        }
        _ => "the vault holds no run record: an encrypt stopped before it started, so it holds no data; delete the directory and encrypt again".into(),
    }
}

/// The `envseal encrypt` command line of a run: what a resume hint, the "started by"
/// refusal and the full-disk advice all name (paths shown lossily if not UTF-8). Options at
/// their defaults are left out; every key, `--since` and the rest are spelled, so that the
/// command is the very run the journal records.
pub fn resume_command(vault: &str, p: &RunParams) -> String {
    use base64::Engine;
    let quote = |s: &str| {
        if !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/._-:+=@,%".contains(&b))
        {
            s.to_string()
        } else {
            format!("'{}'", s.replace('\'', r"'\''"))
        }
    };
    let decoded = |s: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    };
    let mut c = String::from("envseal encrypt");
    // A part's sources, keys and options are its plan's.
    if let Some(s) = &p.shard {
        return format!(
            "{c} --plan {} --shard {} -o {}",
            quote(&decoded(&s.plan)),
            s.index,
            quote(vault)
        );
    }
    for s in &p.sources {
        c += &format!(" {}", quote(&decoded(s)));
    }
    c += &format!(" -o {}", quote(vault));
    // The first key is the one new batches are generated under: spelled whenever others
    // follow it, as the order of `--key` flags decides it.
    let first = match (&p.key, p.also_keys.is_empty()) {
        (Some(k), _) => Some(k.as_str()),
        (None, false) => Some(crate::kms::DEFAULT_ALIAS),
        (None, true) => None,
    };
    if let Some(k) = first {
        c += &format!(" --key {}", quote(k));
    }
    for k in &p.also_keys {
        c += &format!(" --key {}", quote(k));
    }
    if p.kms != "local" {
        c += &format!(" --kms {}", quote(&p.kms));
    }
    if p.segment_size != format::DEFAULT_SEGMENT_SIZE {
        c += &format!(" --segment-size {}KiB", p.segment_size / 1024);
    }
    for e in &p.excludes {
        c += &format!(" --exclude {}", quote(e));
    }
    if p.conceal_names {
        c += " --conceal-names";
    }
    if let Some(s) = &p.since {
        c += &format!(" --since {}", quote(&decoded(s)));
    }
    match p.compress {
        Some(format::compress::DEFAULT_ZSTD_LEVEL) => c += " --compress zstd",
        Some(l) => c += &format!(" --compress zstd:{l}"),
        None => {}
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run() -> RunRecord {
        RunRecord {
            kind: "run".into(),
            format: format::FORMAT_VERSION,
            vault_id: "00".repeat(16),
            created: "2026-12-01T00:00:00Z".into(),
            params: RunParams {
                sources: vec!["L3Q=".into()],
                key: None,
                kms: "local".into(),
                segment_size: 4096,
                conceal_names: false,
                excludes: vec![],
                also_keys: vec![],
                since: None,
                shard: None,
                compress: None,
            },
        }
    }

    fn rec(i: u64) -> Vec<u8> {
        format!(r#"{{"type":"entry","path":"t/f{i}","kind":"dir","mode":493,"mtime":0,"nsec":0}}"#)
            .into_bytes()
    }

    fn done_recs(j: &mut Journal, loaded: &Loaded) -> Vec<Vec<u8>> {
        j.authenticated(loaded)
            .unwrap()
            .into_iter()
            .filter_map(|r| match r {
                Record::Done { rec, .. } => Some(rec),
                _ => None,
            })
            .collect()
    }

    /// The command a hint names is the run the journal records: every key in order (the
    /// default one spelled when others follow), non-default options, `--since` and
    /// `--compress`.
    #[test]
    fn the_command_line_spells_every_key_and_since() {
        use base64::Engine;
        let mut p = run().params;
        assert_eq!(
            resume_command("/v", &p),
            "envseal encrypt /t -o /v --segment-size 4KiB"
        );
        p.also_keys = vec!["aliyun:http://h:1#alias/b".into()];
        p.since = Some(base64::engine::general_purpose::STANDARD.encode("/old vault"));
        assert_eq!(
            resume_command("/v", &p),
            "envseal encrypt /t -o /v --key alias/envseal/default --key 'aliyun:http://h:1#alias/b' --segment-size 4KiB --since '/old vault'"
        );
        p.compress = Some(3);
        assert!(resume_command("/v", &p).ends_with(" --compress zstd"));
        p.compress = Some(12);
        assert!(resume_command("/v", &p).ends_with(" --since '/old vault' --compress zstd:12"));
    }

    /// A checkpoint keeps the record's header (what a resume on object storage derives the
    /// keys from) and a compressed record's prefix; one without `head` (older runs) still
    /// reads.
    #[test]
    fn checkpoints_keep_their_header() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::local::LocalStore::new(dir.path());
        let mut c = Ckpt {
            src: SourceId {
                dev: 1,
                ino: 2,
                ctime: 3,
                ctime_nsec: 4,
            },
            size: 1 << 30,
            mtime: 5,
            mtime_nsec: 6,
            batch: 0,
            obj: 0,
            segs: 64,
            head: Some([9u8; format::HEADER_LEN]),
            prefix: None,
            lens: None,
        };
        let compressed = Ckpt {
            prefix: Some(Prefix {
                segs: 64,
                rpos: 12345,
                hash: [3u8; 32],
            }),
            lens: Some(Lens {
                from: 60,
                lens: vec![1, 70000, 0, 1 << 20],
            }),
            ..c.clone()
        };
        {
            let mut j = Journal::create(&store, &run()).unwrap();
            j.set_mac_key(Zeroizing::new([7u8; 32]));
            let mut l = j.ckpt_line(&c).unwrap();
            l.extend(j.ckpt_line(&compressed).unwrap());
            c.head = None;
            l.extend(j.ckpt_line(&c).unwrap());
            j.write_synced(&l).unwrap();
        }
        let (mut j, loaded) = Journal::open(&store).unwrap();
        j.set_mac_key(Zeroizing::new([7u8; 32]));
        let heads: Vec<_> = j
            .authenticated(&loaded)
            .unwrap()
            .into_iter()
            .filter_map(|r| match r {
                Record::Ckpt(c) => Some(*c),
                _ => None,
            })
            .collect();
        let with = |head| Ckpt {
            head,
            prefix: None,
            lens: None,
            ..c.clone()
        };
        assert_eq!(
            heads,
            vec![
                with(Some([9u8; format::HEADER_LEN])),
                compressed,
                with(None)
            ]
        );
    }

    /// Done records survive a reopen, and a torn last line is cut off (also one torn just
    /// before its newline, which parses) while the records before it are kept.
    #[test]
    fn done_records_survive_reopen_and_a_torn_tail_is_cut() {
        use std::fs::OpenOptions;
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::local::LocalStore::new(dir.path());
        let key = || Zeroizing::new([7u8; 32]);
        let src = SourceId {
            dev: 1,
            ino: 2,
            ctime: 3,
            ctime_nsec: 4,
        };
        {
            let mut j = Journal::create(&store, &run()).unwrap();
            j.set_mac_key(key());
            let mut l = j.done_line(Some(&src), &rec(1)).unwrap();
            l.extend(j.done_line(None, &rec(2)).unwrap());
            j.write_synced(&l).unwrap();
        }
        let path = dir.path().join(layout::JOURNAL);
        let len = std::fs::metadata(&path).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 1)
            .unwrap();
        let (mut j, loaded) = Journal::open(&store).unwrap();
        assert_eq!(loaded.run.params, run().params);
        j.set_mac_key(key());
        assert_eq!(done_recs(&mut j, &loaded), vec![rec(1)]);
        let l = j.done_line(None, &rec(3)).unwrap();
        j.write_synced(&l).unwrap();
        drop(j);
        let (mut j, loaded) = Journal::open(&store).unwrap();
        j.set_mac_key(key());
        assert_eq!(done_recs(&mut j, &loaded), vec![rec(1), rec(3)]);
        assert!(!std::fs::read(&path).unwrap().contains(&0));
        drop(j);
        // A modified line followed by another is tampering, not a torn tail.
        let text = std::fs::read(&path).unwrap();
        let changed = String::from_utf8(text).unwrap().replace("t/f1", "t/f9");
        std::fs::write(&path, changed).unwrap();
        let (mut j, loaded) = Journal::open(&store).unwrap();
        j.set_mac_key(key());
        assert!(matches!(
            j.authenticated(&loaded),
            Err(Error::Integrity { .. })
        ));
    }
}
