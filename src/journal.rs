//! The journal (`journal.jsonl`): what an unfinished run has durably done.
//!
//! Line 1 is the `run` record (the arguments, so a resumed run can check it is the same run).
//! `batch` records follow, each written and synced before any ciphertext of its batch exists
//! (FORMAT-RULES 12). `done` records name files whose objects are complete and synced; each
//! carries a keyed BLAKE3 MAC (key derived from the first batch's data key) over its exact
//! JSON text, so a damaged or forged journal cannot put wrong digests into a manifest. A torn
//! or unauthenticated tail (a crash mid-write) is cut off on resume and its files are redone.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Seek, SeekFrom, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use zeroize::Zeroizing;

use crate::error::{Error, IoContext, Result};
use crate::format::{self, layout};
use crate::manifest::{BatchRecord, EntryRecord, Lines};

/// The arguments that define a run; a resume must present the same ones.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunParams {
    /// Absolute source paths (base64 of their bytes: they need not be UTF-8).
    pub sources: Vec<String>,
    pub key: Option<String>,
    pub kms: String,
    pub segment_size: u32,
    pub conceal_names: bool,
    pub excludes: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunRecord {
    pub format: u16,
    pub vault_id: String,
    pub created: String,
    pub params: RunParams,
}

/// A finished file: its manifest record plus the source identity it was read from.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DoneRecord {
    pub entry: EntryRecord,
    pub dev: u64,
    pub ino: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Line<'a> {
    Run(RunRecord),
    Batch(BatchRecord),
    Done {
        mac: String,
        #[serde(borrow)]
        rec: &'a RawValue,
    },
}

/// An open journal, locked against a second concurrent run.
pub struct Journal {
    file: File,
    path: PathBuf,
    mac_key: Option<Zeroizing<[u8; 32]>>,
}

/// What an existing journal holds, before its `done` records are authenticated.
pub struct Loaded {
    pub run: RunRecord,
    pub batches: Vec<BatchRecord>,
    /// (mac, exact JSON text, offsets of the line's start and just past its end)
    done: Vec<(String, Vec<u8>, u64, u64)>,
    /// Offset just past the last structurally valid line.
    good_end: u64,
}

fn lock(file: &File, path: &Path) -> Result<()> {
    // SAFETY: flock on a valid, open descriptor.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r != 0 {
        return Err(Error::Runtime(format!(
            "{}: another envseal run is using this vault",
            path.display()
        )));
    }
    Ok(())
}

/// The `type` field of a journal line.
#[derive(Deserialize)]
struct Tag<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
}

/// A `done` line. Parsed apart from [`Line`]: serde buffers internally tagged enums, and a
/// `RawValue` cannot be read back from that buffer, so every `done` line would fail to parse
/// and be taken for a torn tail (a resume would then redo every file).
#[derive(Deserialize)]
struct DoneLine<'a> {
    mac: String,
    #[serde(borrow)]
    rec: &'a RawValue,
}

fn parse_line(line: &[u8]) -> serde_json::Result<Line<'_>> {
    let tag: Tag = serde_json::from_slice(line)?;
    if tag.kind == "done" {
        let d: DoneLine = serde_json::from_slice(line)?;
        return Ok(Line::Done {
            mac: d.mac,
            rec: d.rec,
        });
    }
    serde_json::from_slice(line)
}

fn line_bytes<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    let mut b = serde_json::to_vec(v).map_err(|e| Error::Runtime(e.to_string()))?;
    b.push(b'\n');
    Ok(b)
}

impl Journal {
    /// Starts a new journal with its run record, durably.
    pub fn create(vault: &Path, run: &RunRecord) -> Result<Journal> {
        let path = vault.join(layout::JOURNAL);
        let mut file = OpenOptions::new()
            .create_new(true)
            .read(true)
            .append(true)
            .open(&path)
            .at(&path)?;
        lock(&file, &path)?;
        file.write_all(&line_bytes(&Line::Run(run.clone()))?)
            .at(&path)?;
        file.sync_all().at(&path)?;
        crate::manifest::sync_dir(vault)?;
        Ok(Journal {
            file,
            path,
            mac_key: None,
        })
    }

    /// Opens an existing journal for resuming: parses it, then positions appends after its
    /// last good line (see [`Journal::authenticated_done`]).
    pub fn open(vault: &Path) -> Result<(Journal, Loaded)> {
        let path = vault.join(layout::JOURNAL);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .at(&path)?;
        lock(&file, &path)?;
        let what = path.display().to_string();
        let len = file.metadata().at(&path)?.len();
        let mut lines = Lines::new(BufReader::new(&file), &path);
        let mut run = None;
        let mut batches = Vec::new();
        let mut done = Vec::new();
        let mut offset = 0u64;
        let mut good_end = 0u64;
        while let Some(line) = lines.next_line()? {
            let start = offset;
            offset += line.len() as u64 + 1;
            // Every record ends with a newline: a last line without one was torn by a crash,
            // even if it parses (and keeping it would put the next record on its line).
            let parsed = if offset > len {
                None
            } else {
                parse_line(&line).ok()
            };
            let Some(parsed) = parsed else {
                // A torn append: it and whatever follows it were never synced.
                break;
            };
            match parsed {
                Line::Run(r) if run.is_none() => run = Some(r),
                Line::Batch(b) if run.is_some() => batches.push(b),
                Line::Done { mac, rec } if run.is_some() => {
                    done.push((mac, rec.get().as_bytes().to_vec(), start, offset))
                }
                _ => return Err(Error::integrity(&what, "journal records out of order")),
            }
            good_end = offset;
        }
        let run = run.ok_or_else(|| Error::format(&what, "journal has no run record"))?;
        if run.format != format::FORMAT_VERSION {
            return Err(Error::format(&what, "journal of another format version"));
        }
        let journal = Journal {
            file,
            path,
            mac_key: None,
        };
        Ok((
            journal,
            Loaded {
                run,
                batches,
                done,
                good_end,
            },
        ))
    }

    /// Sets the MAC key (from the first batch's data key); needed before `append_done`.
    pub fn set_mac_key(&mut self, key: Zeroizing<[u8; 32]>) {
        self.mac_key = Some(key);
    }

    /// Authenticates the loaded `done` records and truncates the journal after its last good
    /// line, so new records follow it. Only the last line may fail (a write torn by a crash);
    /// a bad record followed by good ones means the journal was modified.
    pub fn authenticated_done(&mut self, loaded: &Loaded) -> Result<Vec<DoneRecord>> {
        let mut out = Vec::new();
        let mut end = loaded.good_end;
        for (mac, raw, line_start, line_end) in &loaded.done {
            // Only `done` records need the key: a run stopped before its first batch record
            // has none, and no key to check them with either.
            let key = self
                .mac_key
                .as_ref()
                .ok_or_else(|| Error::Runtime("journal MAC key not set".into()))?;
            let ok = format::from_hex::<32>(mac)
                .map(|m| blake3::keyed_hash(key, raw) == blake3::Hash::from(m))
                .unwrap_or(false);
            match serde_json::from_slice::<DoneRecord>(raw) {
                Ok(rec) if ok => out.push(rec),
                _ if *line_end == loaded.good_end => {
                    end = *line_start;
                    break;
                }
                _ => {
                    return Err(Error::integrity(
                        self.path.display().to_string(),
                        "journal record fails authentication (the journal was modified)",
                    ))
                }
            }
        }
        self.file.set_len(end).at(&self.path)?;
        self.file.seek(SeekFrom::End(0)).at(&self.path)?;
        Ok(out)
    }

    /// Appends a batch record durably (before any of its ciphertext is written).
    pub fn append_batch(&mut self, b: &BatchRecord) -> Result<()> {
        self.file
            .write_all(&line_bytes(&Line::Batch(b.clone()))?)
            .at(&self.path)?;
        self.file.sync_data().at(&self.path)
    }

    /// Appends `done` records and syncs. Callers sync the objects first.
    pub fn append_done(&mut self, recs: &[DoneRecord]) -> Result<()> {
        let key = self
            .mac_key
            .as_ref()
            .ok_or_else(|| Error::Runtime("journal MAC key not set".into()))?;
        let mut buf = Vec::new();
        for r in recs {
            let raw = serde_json::to_string(r).map_err(|e| Error::Runtime(e.to_string()))?;
            let mac = blake3::keyed_hash(key, raw.as_bytes()).to_hex().to_string();
            let rv = RawValue::from_string(raw).map_err(|e| Error::Runtime(e.to_string()))?;
            buf.extend(line_bytes(&Line::Done { mac, rec: &rv })?);
        }
        self.file.write_all(&buf).at(&self.path)?;
        self.file.sync_data().at(&self.path)
    }

    /// Removes the journal once the manifest is durable.
    pub fn remove(self, vault: &Path) -> Result<()> {
        std::fs::remove_file(&self.path).at(&self.path)?;
        crate::manifest::sync_dir(vault)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run() -> RunRecord {
        RunRecord {
            format: format::FORMAT_VERSION,
            vault_id: "00".repeat(16),
            created: "2026-11-28T00:00:00Z".into(),
            params: RunParams {
                sources: vec!["L3Q=".into()],
                key: None,
                kms: "local".into(),
                segment_size: 4096,
                conceal_names: false,
                excludes: vec![],
            },
        }
    }

    fn done(i: u64) -> DoneRecord {
        DoneRecord {
            entry: EntryRecord {
                path: Some(format!("t/f{i}")),
                kind: "file".into(),
                size: Some(i),
                ..Default::default()
            },
            dev: 1,
            ino: i,
        }
    }

    /// Done records survive a reopen (they once all failed to parse and were cut off as a torn
    /// tail), and a torn last line is cut off while the records before it are kept.
    #[test]
    fn done_records_survive_reopen_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let key = || Zeroizing::new([7u8; 32]);
        {
            let mut j = Journal::create(dir.path(), &run()).unwrap();
            j.set_mac_key(key());
            j.append_done(&[done(1), done(2)]).unwrap();
        }
        let path = dir.path().join(layout::JOURNAL);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"type":"done","mac":"00","rec":{"ent"#)
            .unwrap();
        drop(f);
        let (mut j, loaded) = Journal::open(dir.path()).unwrap();
        assert_eq!(loaded.run.params, run().params);
        j.set_mac_key(key());
        assert_eq!(
            j.authenticated_done(&loaded).unwrap(),
            vec![done(1), done(2)]
        );
        j.append_done(&[done(3)]).unwrap();
        drop(j);
        let (mut j, loaded) = Journal::open(dir.path()).unwrap();
        j.set_mac_key(key());
        assert_eq!(
            j.authenticated_done(&loaded).unwrap(),
            vec![done(1), done(2), done(3)]
        );
    }

    /// A crash can tear an append just before its final newline: that line parses, but it is
    /// torn. Keeping it used to extend the file by one NUL byte (`set_len` past the end) and
    /// glue the next record to it, so that a later resume lost both.
    #[test]
    fn a_last_line_without_its_newline_is_torn() {
        let dir = tempfile::tempdir().unwrap();
        let key = || Zeroizing::new([7u8; 32]);
        {
            let mut j = Journal::create(dir.path(), &run()).unwrap();
            j.set_mac_key(key());
            j.append_done(&[done(1), done(2)]).unwrap();
        }
        let path = dir.path().join(layout::JOURNAL);
        let len = std::fs::metadata(&path).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 1)
            .unwrap();
        let (mut j, loaded) = Journal::open(dir.path()).unwrap();
        j.set_mac_key(key());
        assert_eq!(j.authenticated_done(&loaded).unwrap(), vec![done(1)]);
        j.append_done(&[done(3)]).unwrap();
        drop(j);
        let (mut j, loaded) = Journal::open(dir.path()).unwrap();
        j.set_mac_key(key());
        assert_eq!(
            j.authenticated_done(&loaded).unwrap(),
            vec![done(1), done(3)]
        );
        assert!(!std::fs::read(&path).unwrap().contains(&0));
    }
}
