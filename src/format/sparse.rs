//! A file's layout of stored bytes and gaps (holes and zero extents, docs/FORMAT.md §6.4):
//! the manifest's `holes`/`zeros` lists, validated, and the map from offsets in the stored
//! bytes to offsets in the file. Finding gaps and recreating them is `fs::sparse`'s.

use crate::format::MAX_GAPS;

/// One gap: `len` bytes at `off` that read as zeros.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gap {
    pub off: u64,
    pub len: u64,
    /// Allocated zeros (a zero extent), not a hole.
    pub zero: bool,
}

impl Gap {
    pub fn end(&self) -> u64 {
        self.off + self.len
    }
}

/// A file's length and gaps, sorted by offset, none overlapping, none empty, and no two of a
/// kind adjacent (one spelling per layout).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sparse {
    len: u64,
    gaps: Vec<Gap>,
    /// Bytes stored: `len` less the gaps.
    stored: u64,
}

/// A run of stored bytes: `len` bytes at `file` in the file, at `stored` in the record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Run {
    pub(crate) stored: u64,
    pub(crate) file: u64,
    pub(crate) len: u64,
}

impl Sparse {
    /// A layout from the manifest's fields (validated: the manifest is hostile input to
    /// keyless readers) or from a scan. `None` for a file without gaps.
    pub fn new(len: u64, mut gaps: Vec<Gap>) -> Result<Option<Sparse>, String> {
        if gaps.is_empty() {
            return Ok(None);
        }
        if gaps.len() > MAX_GAPS {
            return Err(format!("more than {MAX_GAPS} holes and zero extents"));
        }
        gaps.sort_by_key(|g| g.off);
        let mut at = 0u64;
        let mut prev: Option<Gap> = None;
        let mut gap_bytes = 0u64;
        for g in &gaps {
            let end = g.off.checked_add(g.len).ok_or("gap past 2^64")?;
            if g.len == 0 || g.off < at || end > len {
                return Err(
                    "holes and zero extents must be non-empty, within the file and not overlap"
                        .into(),
                );
            }
            if prev.is_some_and(|p| p.end() == g.off && p.zero == g.zero) {
                return Err("adjacent holes (or zero extents) must be written as one".into());
            }
            gap_bytes += g.len;
            at = end;
            prev = Some(*g);
        }
        Ok(Some(Sparse {
            len,
            stored: len - gap_bytes,
            gaps,
        }))
    }

    /// The file's length (what `stat` says).
    pub fn file_len(&self) -> u64 {
        self.len
    }

    /// The bytes stored (the record's plaintext length).
    pub fn stored(&self) -> u64 {
        self.stored
    }

    pub fn gaps(&self) -> &[Gap] {
        &self.gaps
    }

    /// The manifest's `holes` and `zeros` fields: `[offset, length]` pairs.
    pub fn fields(&self) -> (Vec<[u64; 2]>, Vec<[u64; 2]>) {
        let pick = |zero: bool| {
            self.gaps
                .iter()
                .filter(|g| g.zero == zero)
                .map(|g| [g.off, g.len])
                .collect()
        };
        (pick(false), pick(true))
    }

    /// From the manifest's fields (either may be absent).
    pub fn from_fields(
        len: u64,
        holes: Option<&[[u64; 2]]>,
        zeros: Option<&[[u64; 2]]>,
    ) -> Result<Option<Sparse>, String> {
        if holes.is_some_and(|h| h.is_empty()) || zeros.is_some_and(|z| z.is_empty()) {
            return Err("holes and zeros, when present, are not empty".into());
        }
        let gap = |zero: bool| move |&[off, len]: &[u64; 2]| Gap { off, len, zero };
        let gaps = holes
            .unwrap_or_default()
            .iter()
            .map(gap(false))
            .chain(zeros.unwrap_or_default().iter().map(gap(true)))
            .collect();
        Sparse::new(len, gaps)
    }

    pub(crate) fn runs(&self) -> Vec<Run> {
        let mut runs = Vec::with_capacity(self.gaps.len() + 1);
        let (mut file, mut stored) = (0u64, 0u64);
        for g in &self.gaps {
            if g.off > file {
                runs.push(Run {
                    stored,
                    file,
                    len: g.off - file,
                });
                stored += g.off - file;
            }
            file = g.end();
        }
        if self.len > file {
            runs.push(Run {
                stored,
                file,
                len: self.len - file,
            });
        }
        runs
    }
}

/// Translates offsets in the stored bytes to offsets in the file.
#[derive(Debug)]
pub struct Runs(Vec<Run>);

impl Runs {
    pub fn new(s: &Sparse) -> Runs {
        Runs(s.runs())
    }

    /// Calls `f(file offset, range of the buffer)` for each piece of `len` stored bytes from
    /// stored offset `at`.
    pub fn each<E>(
        &self,
        at: u64,
        len: usize,
        mut f: impl FnMut(u64, std::ops::Range<usize>) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut i = self.0.partition_point(|r| r.stored + r.len <= at);
        let mut done = 0usize;
        while done < len {
            let Some(r) = self.0.get(i) else {
                // Past the stored bytes: the callers' lengths come from the same layout, so
                // this is unreachable; stop rather than loop.
                return Ok(());
            };
            let pos = at + done as u64;
            let skip = pos - r.stored;
            let n = ((r.len - skip) as usize).min(len - done);
            f(r.file + skip, done..done + n)?;
            done += n;
            i += 1;
        }
        Ok(())
    }
}
