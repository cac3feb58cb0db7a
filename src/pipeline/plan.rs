//! `plan`: cuts the sources, by their metadata alone, into `N` contiguous ranges of the
//! vault's tree order (docs/FORMAT.md §6.2, §6.6) and fixes what every part of the run
//! shares; `encrypt --plan PLAN --shard I` then encrypts range `I` as an ordinary run
//! (docs/SCALE-OUT.md).
//!
//! Two metadata-only walks (no file is opened for reading, no extended attribute read): the
//! first counts entries and bytes, the second places the cuts. Memory is the walk's own plus
//! `O(N)` (one boundary path and three counters per part): no list of paths is kept.
//!
//! Balance: every entry weighs `bytes / total_bytes + 1 / total_entries`, so a part holds
//! about its share of both the bytes and the entries (files, directories, links: each costs
//! a manifest record and metadata calls). A file that weighs a share or more is a part of
//! its own; the other parts share the rest ([`Cutter`]).

use std::fs;
use std::io::Write;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::format::manifest::{check_path, tree_cmp, ShardMark};
use crate::format::{self, ID_LEN};
use crate::fs::tree::{self, Found, PathRange, SourceKind};
use crate::kms::keyspec::KeySpec;
use crate::pipeline::encrypt::{EncryptOptions, ShardRun};
use crate::progress::Progress;
use crate::store::Location;

/// The plan file's format version (`"envseal_plan"`).
pub const PLAN_VERSION: u32 = 1;

/// A plan file larger than this is not one (a plan holds `N ≤ MAX_SHARDS` boundary paths).
const MAX_PLAN_BYTES: u64 = 64 << 20;

/// What `plan` is asked for.
#[derive(Clone, Debug)]
pub struct PlanOptions {
    pub sources: Vec<PathBuf>,
    pub shards: usize,
    /// The CMKs, each with its provider: new batches are generated under the first, and
    /// also wrapped under the others (as encrypt's `--key` order).
    pub keys: Vec<KeySpec>,
    /// The default provider URL (`--kms`), recorded as given.
    pub kms_url: String,
    pub excludes: Vec<String>,
    pub segment_size: u32,
    pub conceal_names: bool,
    /// `--compress`: the Zstandard level every part compresses at (docs/FORMAT.md §4.5).
    pub compress: Option<i32>,
}

/// A plan file (docs/SCALE-OUT.md, "The plan file").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub envseal_plan: u32,
    /// The vault id every part carries (hex), and so the merged vault.
    pub vault_id: String,
    /// Informational: when and by what the plan was made.
    pub created: String,
    pub generator: String,
    /// Absolute paths of the sources, as each shard run reads them.
    pub sources: Vec<PlanPath>,
    pub kms: String,
    /// `KMS#CMK`, the first the one new batches are generated under.
    pub keys: Vec<String>,
    pub excludes: Vec<String>,
    pub segment_size: u32,
    pub conceal_names: bool,
    /// The Zstandard level of `--compress`, absent without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compress: Option<i32>,
    /// What the planning walk found.
    pub totals: Counts,
    /// Part `i` holds the paths from its `from` (the start for part 0) up to, not including,
    /// its `until` (the end for the last part): `until` of part `i` is `from` of part `i+1`.
    pub shards: Vec<PlanShard>,
}

/// A path: UTF-8 in `path`, else base64 of its bytes in `path_b64` (as the manifest does).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanPath {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_b64: Option<String>,
}

/// Entries (of every kind), regular files and their bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Counts {
    pub entries: u64,
    pub files: u64,
    pub bytes: u64,
}

/// One part of a plan: its range (vault paths, as [`PlanPath`]'s two forms) and what the
/// planning walk counted in it (not counting the directories on the way to its first path,
/// which the part before holds).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanShard {
    pub index: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_b64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_b64: Option<String>,
    pub entries: u64,
    pub files: u64,
    pub bytes: u64,
}

/// `(text, b64)` fields of a path: UTF-8 as text, anything else as base64.
fn path_fields(p: &[u8]) -> (Option<String>, Option<String>) {
    match std::str::from_utf8(p) {
        Ok(s) => (Some(s.to_string()), None),
        Err(_) => (None, Some(B64.encode(p))),
    }
}

/// The bytes of a path given as `(text, b64)` fields: at most one of them (`None`: neither).
fn path_bytes(
    text: &Option<String>,
    b64: &Option<String>,
    what: &str,
) -> std::result::Result<Option<Vec<u8>>, String> {
    match (text, b64) {
        (None, None) => Ok(None),
        (Some(t), None) => Ok(Some(t.as_bytes().to_vec())),
        (None, Some(b)) => B64
            .decode(b)
            .map(Some)
            .map_err(|e| format!("{what}_b64 is not base64: {e}")),
        (Some(_), Some(_)) => Err(format!("{what} and {what}_b64 both given")),
    }
}

/// Makes a plan: checks what encrypt would refuse, then walks the sources twice (counts,
/// then cuts). `cancel` stops the walk ([`Error::Interrupted`]); nothing is written here.
pub fn plan(opts: &PlanOptions, progress: &dyn Progress, cancel: &AtomicBool) -> Result<Plan> {
    if opts.shards == 0 || opts.shards > format::MAX_SHARDS {
        return Err(Error::Usage(format!(
            "--shards {}: must be from 1 to {}",
            opts.shards,
            format::MAX_SHARDS
        )));
    }
    if !format::valid_segment_size(u64::from(opts.segment_size)) {
        return Err(Error::Usage(format!(
            "--segment-size {}: must be a power of two from 4KiB to 64MiB",
            opts.segment_size
        )));
    }
    if opts.keys.is_empty() {
        return Err(Error::Usage("a plan needs a key (--key)".into()));
    }
    if opts.sources.is_empty() {
        return Err(Error::Usage("a plan needs at least one SRC".into()));
    }
    let select = tree::excludes(&opts.excludes)?;
    let sources: Vec<PathBuf> = opts
        .sources
        .iter()
        .map(|s| std::path::absolute(s).at(s))
        .collect::<Result<_>>()?;
    // Missing sources, sockets, base names shared: refused as encrypt refuses them.
    tree::order_sources(&sources)?;

    // First walk: the totals the weights are shares of.
    let mut totals = Counts::default();
    let mut largest = Largest::new(opts.shards);
    walk(&sources, &select, cancel, |f| {
        if let Found::Entry(e) = f {
            if let SourceKind::File { size, .. } = e.kind {
                largest.offer(size, &e.path, totals);
                totals.files += 1;
                totals.bytes = totals.bytes.saturating_add(size);
            }
            totals.entries += 1;
            progress.walking(totals.files, totals.bytes);
        }
    })?;
    if totals.entries == 0 {
        return Err(Error::Usage(
            "the sources hold nothing to encrypt (every path excluded?)".into(),
        ));
    }
    progress.start(totals.files, totals.bytes);

    // Second walk: the cuts, as the entries go by.
    let mut cutter = Cutter::new(opts.shards, totals, largest);
    walk(&sources, &select, cancel, |f| {
        if let Found::Entry(e) = f {
            let size = match e.kind {
                SourceKind::File { size, .. } => Some(size),
                _ => None,
            };
            cutter.add(&e.path, size);
            if let Some(size) = size {
                progress.bytes(size);
                progress.file_done();
            }
        }
    })?;
    progress.finish();
    let cut = cutter.finish();

    let vault_id: [u8; ID_LEN] = format::random().map_err(|e| Error::Runtime(e.to_string()))?;
    let shards = cut
        .iter()
        .enumerate()
        .map(|(i, part)| {
            let (from, from_b64) = part.from.as_deref().map_or((None, None), path_fields);
            let next = cut.get(i + 1).and_then(|p| p.from.as_deref());
            let (until, until_b64) = next.map_or((None, None), path_fields);
            PlanShard {
                index: i as u32,
                from,
                from_b64,
                until,
                until_b64,
                entries: part.counts.entries,
                files: part.counts.files,
                bytes: part.counts.bytes,
            }
        })
        .collect();
    Ok(Plan {
        envseal_plan: PLAN_VERSION,
        vault_id: format::to_hex(&vault_id),
        created: crate::pipeline::encrypt::now_rfc3339(),
        generator: format!("envseal {}", env!("CARGO_PKG_VERSION")),
        sources: sources
            .iter()
            .map(|s| {
                let (path, path_b64) = path_fields(s.as_os_str().as_bytes());
                PlanPath { path, path_b64 }
            })
            .collect(),
        kms: opts.kms_url.clone(),
        keys: opts
            .keys
            .iter()
            .map(|k| format!("{}#{}", k.kms, k.key))
            .collect(),
        excludes: opts.excludes.clone(),
        segment_size: opts.segment_size,
        conceal_names: opts.conceal_names,
        compress: opts.compress,
        totals,
        shards,
    })
}

/// A metadata-only walk (no extended attributes, nothing opened for reading) that stops
/// when `cancel` is set.
fn walk(
    sources: &[PathBuf],
    select: &tree::Select,
    cancel: &AtomicBool,
    mut on: impl FnMut(Found),
) -> Result<()> {
    tree::walk_each(sources, select, false, |f| {
        on(f);
        !cancel.load(Ordering::Relaxed)
    })?;
    if cancel.load(Ordering::Relaxed) {
        return Err(Error::Interrupted);
    }
    Ok(())
}

/// One part as the cutter made it: its first path (`None` for part 0) and what it holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Part {
    pub from: Option<Vec<u8>>,
    pub counts: Counts,
}

/// The `N` largest files of a walk (by size, then path) and what came before each in the
/// walk, kept in `O(N)` memory: only these can weigh a part's share or more.
#[derive(Debug)]
pub struct Largest {
    n: usize,
    heap: std::collections::BinaryHeap<std::cmp::Reverse<Big>>,
}

/// A large file: its size, path, and the entries and bytes the walk found before it.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Big {
    size: u64,
    path: Vec<u8>,
    before: (u64, u64, u64),
}

impl Largest {
    pub fn new(n: usize) -> Largest {
        Largest {
            n,
            heap: std::collections::BinaryHeap::new(),
        }
    }

    /// A file of `size` bytes at `path`, after `before` (the walk's counts so far).
    pub fn offer(&mut self, size: u64, path: &[u8], before: Counts) {
        if self.heap.len() == self.n && self.heap.peek().is_none_or(|m| m.0.size >= size) {
            return;
        }
        if self.heap.len() == self.n {
            self.heap.pop();
        }
        self.heap.push(std::cmp::Reverse(Big {
            size,
            path: path.to_vec(),
            before: (before.entries, before.files, before.bytes),
        }));
    }
}

/// Places the cuts as the entries go by, in `O(N)` memory. Weights are integers: an entry of
/// `b` bytes weighs `b · E + max(B, 1)` for totals of `E` entries and `B` bytes (that is
/// `b/B + 1/E` scaled by `B · E`; entries alone when there are no bytes).
///
/// Files that weigh a share or more (of what the parts not given to such files share) are
/// parts of their own, known from the first walk ([`Largest`]). They cut the walk into
/// segments, and the other parts are dealt to the segments: one to each that holds files,
/// the others by weight (each next part to the segment whose parts would be heaviest with
/// one more, as D'Hondt deals seats); a segment dealt none (directories alone, such as those
/// before a first large file) goes into the part of the file before it (at the start: after
/// it). Within a segment
/// each part aims at the segment's weight not yet placed over its parts left, and ends
/// before the entry whose middle would pass that.
#[derive(Debug)]
pub struct Cutter {
    n: usize,
    totals: Counts,
    /// The files that are parts of their own, in tree order, and how many were passed.
    alone: Vec<Vec<u8>>,
    passed: usize,
    /// Per segment (before the first such file, between them, after the last): its weight
    /// and the parts it is given.
    segments: Vec<(u128, usize)>,
    /// In the current segment: the weight not yet added, and the parts not yet started.
    seg_left: u128,
    seg_parts: usize,
    /// The current part's weight, whether it holds one of those files, and whether it is
    /// one of the parts dealt to a segment.
    held: u128,
    holds_alone: bool,
    allotted: bool,
    /// The walk's first path.
    first: Option<Vec<u8>>,
    parts: Vec<Part>,
}

impl Cutter {
    pub fn new(n: usize, totals: Counts, largest: Largest) -> Cutter {
        let n = n.max(1);
        let mut c = Cutter {
            n,
            totals,
            alone: Vec::new(),
            passed: 0,
            segments: Vec::new(),
            seg_left: 0,
            seg_parts: 0,
            held: 0,
            holds_alone: false,
            allotted: false,
            first: None,
            parts: vec![Part::default()],
        };
        let total = c.weight_of(totals.entries, totals.bytes);
        // Heaviest first: each that weighs the share of the parts left is one of them (and
        // lowers the share of the others); one part at least is left for the rest.
        let mut rest = total;
        let mut alone: Vec<Big> = Vec::new();
        for std::cmp::Reverse(big) in largest.heap.into_sorted_vec() {
            let w = c.weight(big.size);
            let parts_left = (n - alone.len()) as u128;
            if parts_left < 2 || w < rest.div_ceil(parts_left) {
                break;
            }
            rest -= w;
            alone.push(big);
        }
        alone.sort_by(|a, b| tree_cmp(&a.path, &b.path));
        // The segments' weights (and files): what lies between one such file and the next.
        let mut at = (0u128, 0u64);
        let mut files = Vec::new();
        for big in &alone {
            let before = c.weight_of(big.before.0, big.before.2);
            c.segments.push((before.saturating_sub(at.0), 0));
            files.push(big.before.1.saturating_sub(at.1));
            at = (before + c.weight(big.size), big.before.1 + 1);
        }
        c.segments.push((total.saturating_sub(at.0), 0));
        files.push(totals.files.saturating_sub(at.1));
        // A part for each segment that holds files, the heaviest first; the parts left each
        // to the segment whose parts would be heaviest with one more (as D'Hondt deals
        // seats). A segment of directories alone goes into a neighbour's part.
        let mut dealt = 0;
        let mut by_weight: Vec<usize> = (0..c.segments.len()).filter(|&i| files[i] > 0).collect();
        by_weight.sort_by(|&a, &b| c.segments[b].0.cmp(&c.segments[a].0));
        for &i in by_weight.iter().take(n - alone.len()) {
            c.segments[i].1 = 1;
            dealt += 1;
        }
        for _ in dealt..n - alone.len() {
            let next = by_weight
                .iter()
                .copied()
                .filter(|&i| c.segments[i].1 > 0)
                .max_by(|&a, &b| {
                    let (a, b) = (c.segments[a], c.segments[b]);
                    (a.0 * (b.1 as u128 + 1)).cmp(&(b.0 * (a.1 as u128 + 1)))
                });
            match next {
                Some(i) => c.segments[i].1 += 1,
                None => break,
            }
        }
        c.alone = alone.into_iter().map(|b| b.path).collect();
        c.enter_segment(0);
        // Part 0 is the first segment's first part; when it has none, the first such file's
        // (with what lies before it).
        c.allotted = c.seg_parts > 0;
        c.seg_parts = c.seg_parts.saturating_sub(1);
        c
    }

    fn enter_segment(&mut self, s: usize) {
        (self.seg_left, self.seg_parts) = self.segments.get(s).copied().unwrap_or((0, 0));
    }

    /// An entry's weight.
    fn weight(&self, bytes: u64) -> u128 {
        self.weight_of(1, bytes)
    }

    /// The weight of `entries` entries holding `bytes` bytes.
    fn weight_of(&self, entries: u64, bytes: u64) -> u128 {
        u128::from(bytes) * u128::from(self.totals.entries.max(1))
            + u128::from(entries) * u128::from(self.totals.bytes.max(1))
    }

    /// The next entry in tree order: `size` for a regular file.
    pub fn add(&mut self, path: &[u8], size: Option<u64>) {
        use std::cmp::Ordering::Less;
        if self.first.is_none() {
            self.first = Some(path.to_vec());
        }
        // Files the first walk saw that this one did not (gone meanwhile) are passed.
        while self
            .alone
            .get(self.passed)
            .is_some_and(|a| tree_cmp(a, path) == Less)
        {
            self.passed += 1;
            self.enter_segment(self.passed);
        }
        let alone = size.is_some() && self.alone.get(self.passed).is_some_and(|a| a == path);
        let w = self.weight(size.unwrap_or(0));
        let started = self.parts.last().is_some_and(|p| p.counts.entries > 0);
        if started && self.parts.len() < self.n {
            let cut = if alone {
                // What lies before it without a part of its own (the directories of the
                // start, say) goes into its part.
                self.allotted || self.holds_alone
            } else if self.seg_parts == 0 {
                false
            } else if self.holds_alone {
                true
            } else {
                let target = (self.held + self.seg_left).div_ceil(self.seg_parts as u128 + 1);
                2 * self.held + w > 2 * target
            };
            if cut {
                self.parts.push(Part {
                    from: Some(path.to_vec()),
                    counts: Counts::default(),
                });
                self.held = 0;
                self.holds_alone = false;
                self.allotted = !alone;
                if !alone {
                    self.seg_parts -= 1;
                }
            }
        }
        self.held += w;
        if alone {
            self.holds_alone = true;
            self.passed += 1;
            self.enter_segment(self.passed);
        } else {
            self.seg_left = self.seg_left.saturating_sub(w);
        }
        if let Some(p) = self.parts.last_mut() {
            p.counts.entries += 1;
            if let Some(s) = size {
                p.counts.files += 1;
                p.counts.bytes = p.counts.bytes.saturating_add(s);
            }
        }
    }

    /// The `N` parts. When the walk ran out of entries before `N` parts (more parts than
    /// entries), the missing ones are empty ranges placed just before the last part (their
    /// `from` is its `from`), so that the ranges still cover the path space in order; when
    /// no cut was made at all (one entry), part 0 is empty and the last part starts at the
    /// first path.
    pub fn finish(mut self) -> Vec<Part> {
        if self.parts.len() == self.n {
            return self.parts;
        }
        let Some(mut last) = self.parts.pop() else {
            return self.parts;
        };
        if last.from.is_none() {
            self.parts.push(Part::default());
            last.from = self.first.clone();
        }
        while self.parts.len() + 1 < self.n {
            self.parts.push(Part {
                from: last.from.clone(),
                counts: Counts::default(),
            });
        }
        self.parts.push(last);
        self.parts
    }
}

impl Plan {
    /// Writes the plan to `path` atomically (a temporary file beside it, synced, then moved
    /// into place). An existing file is refused unless `force`: a plan is what the parts of
    /// one run agree on, and a new one (another vault id) would not match parts already made.
    pub fn write(&self, path: &Path, force: bool) -> Result<()> {
        if !force && fs::symlink_metadata(path).is_ok() {
            return Err(Error::Usage(format!(
                "-o {}: exists; a plan is shared by the parts of one run, so it is not replaced (choose another name, or --force to replace it)",
                path.display()
            )));
        }
        let mut text =
            serde_json::to_vec_pretty(self).map_err(|e| Error::Runtime(format!("plan: {e}")))?;
        text.push(b'\n');
        let name = path
            .file_name()
            .ok_or_else(|| Error::Usage(format!("-o {}: names no file", path.display())))?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".tmp{}", std::process::id()));
        let tmp = path.with_file_name(tmp_name);
        let written = (|| -> Result<()> {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .at(&tmp)?;
            f.write_all(&text).at(&tmp)?;
            f.sync_all().at(&tmp)?;
            if force {
                fs::rename(&tmp, path).at(path)
            } else {
                // A link fails if the name exists: no plan appearing meanwhile is replaced.
                fs::hard_link(&tmp, path).map_err(|e| {
                    if e.kind() == std::io::ErrorKind::AlreadyExists {
                        Error::Usage(format!(
                            "-o {}: exists; choose another name, or --force to replace it",
                            path.display()
                        ))
                    } else {
                        Error::io(path, e)
                    }
                })
            }
        })();
        // Gone after a rename; after a link, or a failure, it is ours to remove.
        let _ = fs::remove_file(&tmp);
        written?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        fs::File::open(dir).and_then(|d| d.sync_all()).at(dir)
    }

    /// Reads and checks a plan file: anything malformed is a usage error naming the file and
    /// what is wrong.
    pub fn load(path: &Path) -> Result<Plan> {
        let bad = |why: String| {
            Error::Usage(format!(
                "--plan {}: {why}; give the file `envseal plan` wrote (or make a new plan, and encrypt every part with it)",
                path.display()
            ))
        };
        let f = fs::File::open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                bad("does not exist".into())
            } else {
                Error::io(path, e)
            }
        })?;
        let mut text = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(f, MAX_PLAN_BYTES + 1), &mut text)
            .at(path)?;
        if text.len() as u64 > MAX_PLAN_BYTES {
            return Err(bad("too large for a plan".into()));
        }
        let plan: Plan =
            serde_json::from_slice(&text).map_err(|e| bad(format!("not a plan file ({e})")))?;
        plan.check().map_err(bad)?;
        Ok(plan)
    }

    /// What a plan file must hold for its parts to make one vault.
    fn check(&self) -> std::result::Result<(), String> {
        if self.envseal_plan != PLAN_VERSION {
            return Err(format!(
                "plan format {} (this envseal reads {PLAN_VERSION})",
                self.envseal_plan
            ));
        }
        self.id()?;
        if !format::valid_segment_size(u64::from(self.segment_size)) {
            return Err(format!("invalid segment_size {}", self.segment_size));
        }
        if let Some(l) = self.compress {
            if !format::compress::ZSTD_LEVELS.contains(&l) {
                return Err(format!("invalid compress level {l}"));
            }
        }
        if self.sources.is_empty() {
            return Err("no sources".into());
        }
        for s in self.source_paths()? {
            if !s.is_absolute() {
                return Err(format!("source {} is not an absolute path", s.display()));
            }
        }
        self.key_specs()?;
        tree::excludes(&self.excludes).map_err(|e| e.to_string())?;
        let n = self.shards.len();
        if n == 0 || n > format::MAX_SHARDS {
            return Err(format!(
                "{n} shards (from 1 to {} are possible)",
                format::MAX_SHARDS
            ));
        }
        let mut prev: Option<Vec<u8>> = None;
        for (i, s) in self.shards.iter().enumerate() {
            if s.index as usize != i {
                return Err(format!("shard {i} has index {}", s.index));
            }
            let from = path_bytes(&s.from, &s.from_b64, "from")?;
            let until = path_bytes(&s.until, &s.until_b64, "until")?;
            for p in from.iter().chain(until.iter()) {
                check_path(p).map_err(|why| format!("shard {i}: {why}"))?;
            }
            if (i == 0) != from.is_none() {
                return Err(format!(
                    "shard {i}: only the first shard starts at the start (no \"from\")"
                ));
            }
            if (i + 1 == n) != until.is_none() {
                return Err(format!(
                    "shard {i}: only the last shard ends at the end (no \"until\")"
                ));
            }
            if i > 0 && from != prev {
                return Err(format!(
                    "shard {i} does not start where shard {} ends",
                    i - 1
                ));
            }
            if let (Some(f), Some(u)) = (&from, &until) {
                if tree_cmp(f, u) == std::cmp::Ordering::Greater {
                    return Err(format!("shard {i} ends before it starts"));
                }
            }
            prev = until;
        }
        Ok(())
    }

    fn id(&self) -> std::result::Result<[u8; ID_LEN], String> {
        format::from_hex(&self.vault_id).ok_or_else(|| "vault_id is not an id".to_string())
    }

    /// The sources, as paths.
    pub fn source_paths(&self) -> std::result::Result<Vec<PathBuf>, String> {
        self.sources
            .iter()
            .map(|s| {
                path_bytes(&s.path, &s.path_b64, "path")?
                    .map(|b| PathBuf::from(std::ffi::OsString::from_vec(b)))
                    .ok_or_else(|| "a source without \"path\" or \"path_b64\"".to_string())
            })
            .collect()
    }

    fn key_specs(&self) -> std::result::Result<Vec<KeySpec>, String> {
        if self.keys.is_empty() {
            return Err("no keys".into());
        }
        self.keys
            .iter()
            .map(|k| {
                if !k.contains('#') {
                    return Err(format!("key {k:?} is not KMS#CMK"));
                }
                KeySpec::parse(k, &self.kms).map_err(|e| e.to_string())
            })
            .collect()
    }

    /// The encrypt options of part `index` into `vault`: sources, keys and options from the
    /// plan, the rest as [`EncryptOptions::new`] sets it. `plan_path` is the plan file as the
    /// resume hint names it.
    pub fn encrypt_options(
        &self,
        plan_path: &Path,
        index: u32,
        vault: Location,
    ) -> Result<EncryptOptions> {
        let bad = |why: String| Error::Usage(format!("--plan {}: {why}", plan_path.display()));
        let n = self.shards.len();
        let Some(shard) = self.shards.get(index as usize) else {
            return Err(Error::Usage(format!(
                "--shard {index}: the plan {} has {n} shards, numbered 0 to {}",
                plan_path.display(),
                n.saturating_sub(1)
            )));
        };
        let mut keys = self.key_specs().map_err(bad)?.into_iter();
        let first = keys.next().ok_or_else(|| bad("no keys".to_string()))?;
        let range = PathRange {
            from: path_bytes(&shard.from, &shard.from_b64, "from").map_err(bad)?,
            until: path_bytes(&shard.until, &shard.until_b64, "until").map_err(bad)?,
        };
        Ok(EncryptOptions {
            key: Some(first.key),
            also_keys: keys.collect(),
            segment_size: self.segment_size,
            excludes: self.excludes.clone(),
            conceal_names: self.conceal_names,
            compress: self.compress,
            pack_threshold: match self.compress {
                Some(_) => format::compress::COMPRESS_PACK_THRESHOLD,
                None => format::DEFAULT_PACK_THRESHOLD,
            },
            shard: Some(ShardRun {
                plan: plan_path.to_path_buf(),
                vault_id: self.id().map_err(bad)?,
                mark: ShardMark {
                    index,
                    count: n as u32,
                },
                range,
            }),
            ..EncryptOptions::new(self.source_paths().map_err(bad)?, vault, first.kms)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut(n: usize, entries: &[(&str, Option<u64>)]) -> Vec<Part> {
        let mut totals = Counts::default();
        let mut largest = Largest::new(n);
        for (p, s) in entries {
            if let Some(s) = s {
                largest.offer(*s, p.as_bytes(), totals);
                totals.files += 1;
                totals.bytes += s;
            }
            totals.entries += 1;
        }
        let mut c = Cutter::new(n, totals, largest);
        for (p, s) in entries {
            c.add(p.as_bytes(), *s);
        }
        c.finish()
    }

    fn froms(parts: &[Part]) -> Vec<Option<String>> {
        parts
            .iter()
            .map(|p| {
                p.from
                    .as_ref()
                    .map(|f| String::from_utf8(f.clone()).unwrap())
            })
            .collect()
    }

    /// Equal entries are shared equally; cuts fall in tree order.
    #[test]
    fn equal_entries_make_equal_parts() {
        let names: Vec<String> = (0..100).map(|i| format!("t/{i:03}")).collect();
        let mut e: Vec<(&str, Option<u64>)> = vec![("t", None)];
        e.extend(names.iter().map(|n| (n.as_str(), Some(1000))));
        let parts = cut(4, &e);
        let counts: Vec<u64> = parts.iter().map(|p| p.counts.files).collect();
        assert_eq!(parts.len(), 4);
        assert_eq!(counts.iter().sum::<u64>(), 100);
        for c in &counts {
            assert!((24..=26).contains(c), "{counts:?}");
        }
        assert_eq!(parts[0].from, None);
        let f = froms(&parts);
        assert!(f.windows(2).skip(1).all(|w| w[0] < w[1]), "{f:?}");
    }

    /// A file weighing more than a share is a part of its own, wherever it lies, and the
    /// other parts share the rest as equally as the file's place allows.
    #[test]
    fn a_huge_file_is_a_part_of_its_own() {
        let names: Vec<String> = (0..120).map(|i| format!("d/m{i:03}")).collect();
        for huge in ["d/a-huge", "d/m050-huge", "d/z-huge"] {
            let mut e: Vec<(&str, Option<u64>)> = vec![("d", None)];
            e.extend(names.iter().map(|n| (n.as_str(), Some(10))));
            e.push((huge, Some(1 << 30)));
            e.sort_by(|a, b| a.0.cmp(b.0));
            let parts = cut(4, &e);
            let alone: Vec<&Part> = parts.iter().filter(|p| p.counts.bytes >= 1 << 30).collect();
            assert_eq!(alone.len(), 1);
            assert_eq!(alone[0].counts.files, 1, "{huge}: {parts:?}");
            if huge == "d/a-huge" {
                // With the directories before it, which alone would be a part of nothing.
                assert_eq!(
                    (alone[0].from.as_deref(), alone[0].counts.entries),
                    (None, 2)
                );
            } else {
                assert_eq!(alone[0].from.as_deref(), Some(huge.as_bytes()));
                assert_eq!(alone[0].counts.entries, 1, "{huge}: {parts:?}");
            }
            // The 121 other entries in the three other parts: equally when the file is at
            // an end; in the middle, 52 entries lie before it (one part) and 69 after (two).
            let n: Vec<u64> = parts
                .iter()
                .filter(|p| p.counts.bytes < 1 << 30)
                .map(|p| p.counts.entries)
                .collect();
            assert_eq!(n.iter().sum::<u64>(), 121 - alone[0].counts.entries + 1);
            let bounds = if huge == "d/m050-huge" {
                33..=53
            } else {
                39..=42
            };
            assert!(n.iter().all(|c| bounds.contains(c)), "{huge}: {parts:?}");
        }
        // Two huge files among five parts: each alone, the rest in three parts, one per
        // place between them (32 entries before the first, 60 between, 29 after).
        let mut e: Vec<(&str, Option<u64>)> = vec![("d", None)];
        e.extend(names.iter().map(|n| (n.as_str(), Some(10))));
        e.push(("d/m030-huge", Some(1 << 30)));
        e.push(("d/m090-huge", Some(1 << 30)));
        e.sort_by(|a, b| a.0.cmp(b.0));
        let parts = cut(5, &e);
        let n: Vec<(u64, u64)> = parts
            .iter()
            .map(|p| (p.counts.entries, p.counts.bytes))
            .collect();
        assert_eq!(n.iter().filter(|c| *c == &(1, 1 << 30)).count(), 2, "{n:?}");
        let mut n: Vec<u64> = n.iter().map(|c| c.0).collect();
        n.sort();
        assert_eq!(n, [1, 1, 29, 32, 60]);
    }

    /// More parts than entries: the missing parts are empty ranges just before the last
    /// one (here both files weigh a share, the first with the directory before it); a
    /// single entry makes part 0 empty too.
    #[test]
    fn more_parts_than_entries_leaves_empty_parts() {
        let parts = cut(5, &[("a", None), ("a/1", Some(5)), ("a/2", Some(5))]);
        assert_eq!(
            froms(&parts),
            [
                None,
                Some("a/2".into()),
                Some("a/2".into()),
                Some("a/2".into()),
                Some("a/2".into())
            ]
        );
        let n: Vec<u64> = parts.iter().map(|p| p.counts.entries).collect();
        assert_eq!(n, [2, 0, 0, 0, 1]);
        let parts = cut(3, &[("file", Some(9))]);
        assert_eq!(
            froms(&parts),
            [None, Some("file".into()), Some("file".into())]
        );
        let n: Vec<u64> = parts.iter().map(|p| p.counts.entries).collect();
        assert_eq!(n, [0, 0, 1]);
        assert_eq!(froms(&cut(1, &[("file", Some(9))])), [None]);
    }

    fn sample() -> (tempfile::TempDir, Plan) {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::create_dir_all(src.join("sub")).unwrap();
        for i in 0..8 {
            fs::write(src.join(format!("sub/{i}")), vec![0u8; 100 * i]).unwrap();
        }
        let opts = PlanOptions {
            sources: vec![src],
            shards: 3,
            keys: vec![KeySpec {
                kms: "local".into(),
                key: "alias/k".into(),
            }],
            kms_url: "local".into(),
            excludes: vec!["*.tmp".into()],
            segment_size: 1 << 16,
            conceal_names: true,
            compress: Some(4),
        };
        let p = plan(&opts, &crate::progress::NoProgress, &AtomicBool::new(false)).unwrap();
        (t, p)
    }

    /// A plan is written and read back as it was; an existing file is kept without
    /// `force`; the options of a part are the plan's.
    #[test]
    fn plans_round_trip_and_give_parts_their_options() {
        let (t, p) = sample();
        assert_eq!(
            p.totals,
            Counts {
                entries: 10,
                files: 8,
                bytes: 2800
            }
        );
        assert_eq!(p.shards.len(), 3);
        let path = t.path().join("plan.json");
        p.write(&path, false).unwrap();
        assert_eq!(Plan::load(&path).unwrap(), p);
        assert!(matches!(p.write(&path, false), Err(Error::Usage(_))));
        p.write(&path, true).unwrap();
        let names: Vec<_> = fs::read_dir(t.path())
            .unwrap()
            .map(|d| d.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "no temporary file left: {names:?}");
        let o = p
            .encrypt_options(&path, 1, Location::Local(t.path().join("v")))
            .unwrap();
        assert_eq!(o.key.as_deref(), Some("alias/k"));
        assert_eq!((o.segment_size, o.conceal_names), (1 << 16, true));
        assert_eq!(
            (o.compress, o.pack_threshold),
            (Some(4), crate::format::compress::COMPRESS_PACK_THRESHOLD)
        );
        let s = o.shard.unwrap();
        assert_eq!(s.mark, ShardMark { index: 1, count: 3 });
        assert_eq!(format::to_hex(&s.vault_id), p.vault_id);
        assert_eq!(
            s.range.from.as_deref().map(|f| f.to_vec()),
            p.shards[1].from.clone().map(String::into_bytes)
        );
        assert!(matches!(
            p.encrypt_options(&path, 3, Location::Local(t.path().join("v"))),
            Err(Error::Usage(_))
        ));
    }

    /// Plans that would not make one vault are refused, naming what is wrong.
    #[test]
    fn malformed_plans_are_refused() {
        let (t, p) = sample();
        let path = t.path().join("plan.json");
        let check = |edit: &dyn Fn(&mut Plan), what: &str| {
            let mut q = p.clone();
            edit(&mut q);
            q.write(&path, true).unwrap();
            match Plan::load(&path) {
                Err(Error::Usage(m)) => assert!(m.contains(what), "{m}"),
                other => panic!("{what}: {other:?}"),
            }
        };
        check(&|q| q.envseal_plan = 2, "plan format 2");
        check(&|q| q.compress = Some(30), "compress level 30");
        check(&|q| q.vault_id = "zz".into(), "vault_id");
        check(&|q| q.segment_size = 1000, "segment_size");
        check(&|q| q.keys = vec!["alias/k".into()], "KMS#CMK");
        check(
            &|q| q.shards[1].from = Some("elsewhere".into()),
            "does not start where",
        );
        check(&|q| q.shards[0].from = Some("src".into()), "first shard");
        check(&|q| q.shards[2].index = 7, "index 7");
        check(&|q| q.sources[0].path = Some("relative".into()), "absolute");
        check(&|q| q.shards.clear(), "0 shards");
        fs::write(&path, b"{\"envseal_plan\":1}").unwrap();
        assert!(matches!(Plan::load(&path), Err(Error::Usage(m)) if m.contains("not a plan file")));
    }
}
