//! `merge`: the parts of a sharded run joined into one vault (docs/FORMAT.md §6.6).
//!
//! Nothing is encrypted again. The parts' batches (key files and wrappings unchanged) and the
//! objects their entries name are carried over (hard-linked, copied on the storage service,
//! or copied through this process where neither can be done), and a new manifest lists the
//! parts' entries in tree order, renumbered, with the names and attributes of the parts after
//! the first sealed again under the merged batch 0's name key.
//!
//! Two passes over each part's manifest, both authenticated with every batch key of the part
//! (one KMS `Decrypt` per batch, in the first): the first checks that the parts join (no
//! overlap), finds the hard-link groups split across parts and the objects the kept entries
//! name; nothing is created before it is done, so a refusal leaves nothing behind. The second
//! streams the merged manifest. In memory: the files marked `linked` (to join split hard-link
//! groups), the split ones, one flag per object; a concealed vault's entries besides, since its
//! lines are sorted (§6.2).
//!
//! Crash safety: the manifest is published last, so nothing claims to be finished before
//! everything it names is in place and durable. A rerun of the same merge takes up what a
//! killed one left (key files, objects of the right length) and copies only the rest.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use crate::crypto::{BatchKey, NameKey};
use crate::error::{Error, Result};
use crate::format::manifest::{
    key_file_bytes, tree_cmp, Batch, Entry, EntryKind, Header, ManifestReader, Name, ObjectRef,
    ShardMark, SourceId, TreeOrder, Xattrs,
};
use crate::format::{layout, MAX_BATCHES};
use crate::kms::keys::Kms;
use crate::pipeline::vault;
use crate::progress::Progress;
use crate::store::{Location, Store};

/// What to merge, and where.
#[derive(Clone, Debug, Default)]
pub struct MergeOptions {
    /// The parts, in any order: every shard `0..N-1` of one plan, each once.
    pub parts: Vec<Location>,
    /// The merged vault: absent or empty (or what a killed merge of the same parts left).
    pub vault: Location,
}

/// What a merge did.
#[derive(Clone, Debug, Default)]
pub struct MergeReport {
    pub parts: u64,
    pub batches: u64,
    /// Objects of the merged vault (those its entries name).
    pub objects: u64,
    pub entries: u64,
    /// Directories on the way to a part's first path, already listed by an earlier part.
    pub repeated_dirs: u64,
    /// Files of hard-link groups split across parts, listed again as links (§6.6).
    pub joined_links: u64,
    /// Objects hard-linked or copied by the storage service (no byte through this process).
    pub objects_linked: u64,
    pub bytes_linked: u64,
    /// Objects copied through this process (stores of different kinds, another filesystem).
    pub objects_copied: u64,
    pub bytes_copied: u64,
    /// Objects already in place, left by an interrupted merge.
    pub objects_in_place: u64,
    pub bytes_in_place: u64,
    /// Batch keys unwrapped: one KMS `Decrypt` each (more only when a wrapping fails before
    /// one that opens the batch).
    pub unwrapped_batches: u64,
    pub seconds: f64,
}

/// One part: its store, records and keys, and what the first pass learnt of it.
struct Part {
    store: Arc<dyn Store>,
    mark: ShardMark,
    header: Header,
    batches: Vec<Batch>,
    objects: Vec<ObjectRef>,
    keys: Vec<BatchKey>,
    /// Objects its kept entries name.
    used: Vec<bool>,
    /// Its new object indices (`None`: not carried over) and the index of its batch 0.
    obj_map: Vec<Option<u64>>,
    batch_base: u32,
    /// Files that become hard links: path -> the earlier part's file of the same inode.
    joined: HashMap<Vec<u8>, Vec<u8>>,
    /// A concealed part's entries, in tree order (read once: they are sorted in memory).
    held: Option<Vec<(Entry, Option<SourceId>)>>,
    /// Entries it contributes (counted in both passes: they must agree).
    kept: u64,
}

impl Part {
    fn url(&self) -> String {
        self.store.url()
    }
}

/// The inode a file entry was read from (§6.6, "Hard links across parts").
type Inode = (u64, u64, i64, u32, u64);

/// Where the merged tree stands: the last entry written, and the part it came from.
#[derive(Default)]
struct Joiner {
    last: Option<(Vec<u8>, bool, usize)>,
}

impl Joiner {
    /// Whether entry `e` of part `i` is kept (`true`) or is a directory on the way that an
    /// earlier part already listed (`false`); any other repeat is an overlap of two parts
    /// (named by `url`).
    fn admit(&mut self, i: usize, e: &Entry, url: &dyn Fn(usize) -> String) -> Result<bool> {
        let p = clear(e)?;
        if let Some((last, last_dir, j)) = &self.last {
            if tree_cmp(p, last) != std::cmp::Ordering::Greater {
                let on_the_way =
                    last.len() > p.len() && last.starts_with(p) && last[p.len()] == b'/';
                if e.is_dir() && *j != i && ((p == last.as_slice() && *last_dir) || on_the_way) {
                    return Ok(false);
                }
                return Err(Error::Usage(format!(
                    "{} and {} overlap: both hold {} (the parts of one plan hold disjoint ranges of paths; was one of them made with another plan's ranges?)",
                    url(*j),
                    url(i),
                    String::from_utf8_lossy(p)
                )));
            }
        }
        self.last = Some((p.to_vec(), e.is_dir(), i));
        Ok(true)
    }
}

fn clear(e: &Entry) -> Result<&[u8]> {
    e.path
        .clear()
        .ok_or_else(|| Error::Runtime("merge: a concealed name was not revealed".into()))
}

/// Merges the parts into a new vault (see the module documentation).
pub fn merge(opts: &MergeOptions, kms: &Kms, progress: &dyn Progress) -> Result<MergeReport> {
    let started = Instant::now();
    let mut report = MergeReport::default();
    let out = crate::store::open(&opts.vault)?;
    let mut parts = open_parts(opts)?;
    report.parts = parts.len() as u64;
    check_target(&*out, &parts)?;

    // Pass 1: every part unwrapped, read and authenticated; the joins planned.
    let mut links: HashMap<Inode, (usize, Vec<u8>)> = HashMap::new();
    let mut joiner = Joiner::default();
    for i in 0..parts.len() {
        let store = parts[i].store.clone();
        let mut u = vault::unlock(&*store, kms)?;
        report.unwrapped_batches += u.keys.len() as u64;
        same_records(&parts[i], &u.reader)?;
        let held = if parts[i].header.conceal_names {
            let mut held = Vec::new();
            while let Some(e) = u.reader.next_entry()? {
                held.push((e, u.reader.last_src()));
            }
            u.authenticate()?;
            held.sort_by(|a, b| tree_cmp(clear(&a.0).unwrap_or(&[]), clear(&b.0).unwrap_or(&[])));
            let mut order = TreeOrder::default();
            for (e, _) in &held {
                order
                    .push_entry(e)
                    .map_err(|why| Error::integrity(store.describe(layout::MANIFEST), why))?;
            }
            for (e, src) in &held {
                plan(
                    &mut parts,
                    i,
                    e,
                    src.as_ref(),
                    &mut joiner,
                    &mut links,
                    &mut report,
                )?;
            }
            Some(held)
        } else {
            while let Some(e) = u.reader.next_entry()? {
                let src = u.reader.last_src();
                plan(
                    &mut parts,
                    i,
                    &e,
                    src.as_ref(),
                    &mut joiner,
                    &mut links,
                    &mut report,
                )?;
            }
            u.authenticate()?;
            None
        };
        parts[i].held = held;
        parts[i].keys = u.keys;
    }
    drop(links);

    // Numbering: batches part by part, then the objects kept entries name.
    let mut batches: Vec<Batch> = Vec::new();
    let mut objects: Vec<(usize, ObjectRef)> = Vec::new();
    for (i, p) in parts.iter_mut().enumerate() {
        p.batch_base = batches.len() as u32;
        batches.extend(p.batches.iter().cloned());
        p.obj_map = p
            .used
            .iter()
            .zip(&p.objects)
            .map(|(&u, o)| {
                u.then(|| {
                    objects.push((i, o.clone()));
                    objects.len() as u64 - 1
                })
            })
            .collect();
    }
    if batches.len() > MAX_BATCHES {
        return Err(Error::Usage(format!(
            "the parts have {} batches together, more than a vault holds ({MAX_BATCHES})",
            batches.len()
        )));
    }
    report.batches = batches.len() as u64;
    report.objects = objects.len() as u64;

    // Writing: under the lock, key files, then objects, then the manifest. What this run
    // made stays for a rerun after a failure of the storage or the network; after a refusal
    // (the target is no longer new, a part fails authentication on its second reading) it
    // is removed, and the target too if this run created it.
    let existed = out.root_exists()?;
    let lock = out.lock(true)?;
    let mut made: Vec<String> = Vec::new();
    let written = write_vault(
        &*out,
        &parts,
        &batches,
        &objects,
        progress,
        &mut report,
        &mut made,
    );
    if let Err(e) = written {
        if matches!(e, Error::Usage(_) | Error::Integrity { .. }) {
            for n in made.iter().rev() {
                let _ = out.remove(n);
            }
            out.remove_empty(!existed);
        }
        return Err(e);
    }
    drop(lock);
    progress.finish();
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Writes the merged vault (see [`merge`]): key files, objects, then the manifest, published
/// last. `made` collects the names this run created.
fn write_vault(
    out: &dyn Store,
    parts: &[Part],
    batches: &[Batch],
    objects: &[(usize, ObjectRef)],
    progress: &dyn Progress,
    report: &mut MergeReport,
    made: &mut Vec<String>,
) -> Result<()> {
    check_target(out, parts)?;
    tidy(out, batches)?;
    let vault_id = parts[0].header.vault_id;
    for b in batches {
        let want = key_file_bytes(&vault_id, b)?;
        let have = out.get(&b.keys_file(), crate::format::MAX_KEY_FILE)?;
        if have.as_deref() != Some(&want[..]) {
            made.push(b.keys_file());
            vault::write_key_file(out, &vault_id, b)?;
        }
    }
    carry_objects(out, parts, objects, progress, report, made)?;
    // Everything the manifest names is durable before the manifest exists.
    out.barrier()?;

    let header = Header {
        vault_id,
        created: parts
            .iter()
            .map(|p| p.header.created.clone())
            .min()
            .unwrap_or_default(),
        generator: format!("envseal {}", env!("CARGO_PKG_VERSION")),
        segment_size: parts[0].header.segment_size,
        conceal_names: parts[0].header.conceal_names,
        shard: None,
    };
    let mut m = vault::manifest_writer(out, layout::MANIFEST, &header)?;
    for b in batches {
        m.batch(b)?;
    }
    for (_, o) in objects {
        m.object(o)?;
    }
    let nk0 = parts[0].keys[0].name_key();
    let mut sorted: Vec<Vec<u8>> = Vec::new();
    let mut joiner = Joiner::default();
    for i in 0..parts.len() {
        let mut kept = 0u64;
        let part_nk = parts[i].keys[0].name_key();
        let mut emit = |e: Entry, src: Option<SourceId>, joiner: &mut Joiner| -> Result<()> {
            if !joiner.admit(i, &e, &|k| parts[k].url())? {
                return Ok(());
            }
            kept += 1;
            let line = rewrite(&parts[i], i, e, src, &nk0, &part_nk, header.conceal_names)?;
            if header.conceal_names {
                sorted.push(line);
                Ok(())
            } else {
                m.entry_line(&line)
            }
        };
        if let Some(held) = parts[i].held.as_ref() {
            for (e, src) in held.iter().cloned() {
                emit(e, src, &mut joiner)?;
            }
        } else {
            let mut r = vault::read_manifest(&*parts[i].store, layout::MANIFEST)?;
            r.set_name_key(parts[i].keys[0].name_key());
            same_records(&parts[i], &r)?;
            while let Some(e) = r.next_entry()? {
                let src = r.last_src();
                emit(e, src, &mut joiner)?;
            }
            for (k, key) in parts[i].keys.iter().enumerate() {
                r.authenticate(k, key)?;
            }
        }
        if kept != parts[i].kept {
            return Err(Error::Runtime(format!(
                "{}: the manifest changed while merging; run the merge again",
                parts[i].url()
            )));
        }
        report.entries += kept;
    }
    if header.conceal_names {
        // §6.2: concealed lines in strictly increasing byte order.
        sorted.sort_unstable();
        for l in &sorted {
            m.entry_line(l)?;
        }
    }
    let keys: Vec<&BatchKey> = parts.iter().flat_map(|p| p.keys.iter()).collect();
    vault::publish_manifest(m, &keys, false, out)?;
    Ok(())
}

/// Opens every part's manifest (no key yet) and checks that they are the parts `0..N-1` of
/// one plan, each once; returns them in shard order.
fn open_parts(opts: &MergeOptions) -> Result<Vec<Part>> {
    if opts.parts.is_empty() {
        return Err(Error::Usage("merge: give the parts (PART...)".into()));
    }
    let mut parts: Vec<Part> = Vec::new();
    for loc in &opts.parts {
        if loc.same_place(&opts.vault) {
            return Err(Error::Usage(format!(
                "{loc} is both a part and the merged vault (-o); merge writes a new vault"
            )));
        }
        let store = crate::store::open(loc)?;
        let r = vault::open_manifest(&*store)?;
        let Some(mark) = r.header.shard else {
            return Err(Error::Usage(format!(
                "{}: not a part of a sharded run (its vault record has no shard mark); merge joins the parts made by `encrypt --plan PLAN --shard I`",
                store.url()
            )));
        };
        parts.push(Part {
            store,
            mark,
            header: r.header.clone(),
            batches: r.batches.clone(),
            used: vec![false; r.objects.len()],
            objects: r.objects.clone(),
            keys: Vec::new(),
            obj_map: Vec::new(),
            batch_base: 0,
            joined: HashMap::new(),
            held: None,
            kept: 0,
        });
    }
    let first = &parts[0];
    for p in &parts[1..] {
        let what = if p.header.vault_id != first.header.vault_id {
            Some("another plan (another vault id)")
        } else if p.mark.count != first.mark.count {
            Some("another number of shards")
        } else if p.header.segment_size != first.header.segment_size {
            Some("another segment size")
        } else if p.header.conceal_names != first.header.conceal_names {
            Some("another --conceal-names setting")
        } else {
            None
        };
        if let Some(what) = what {
            return Err(Error::Usage(format!(
                "{} and {} are not parts of one run: {what}; merge the parts of one plan",
                first.url(),
                p.url()
            )));
        }
    }
    parts.sort_by_key(|p| p.mark.index);
    for w in parts.windows(2) {
        if w[0].mark.index == w[1].mark.index {
            return Err(Error::Usage(format!(
                "shard {} given twice: {} and {}",
                w[0].mark.index,
                w[0].url(),
                w[1].url()
            )));
        }
    }
    // Ids are random: one shared by two parts means a part's records were copied into
    // another, and the merged manifest would list it twice (§6.1 refuses that).
    let mut seen: HashMap<[u8; crate::format::ID_LEN], usize> = HashMap::new();
    for (i, p) in parts.iter().enumerate() {
        let ids = p.batches.iter().map(|b| b.batch_id);
        for id in ids.chain(p.objects.iter().map(|o| o.id)) {
            if let Some(j) = seen.insert(id, i).filter(|&j| j != i) {
                return Err(Error::Usage(format!(
                    "{} and {} share the batch or object {}: they are not separate parts of one run",
                    parts[j].url(),
                    p.url(),
                    crate::format::to_hex(&id)
                )));
            }
        }
    }
    let count = parts[0].mark.count;
    let have: HashSet<u32> = parts.iter().map(|p| p.mark.index).collect();
    let missing: Vec<String> = (0..count)
        .filter(|k| !have.contains(k))
        .map(|k| k.to_string())
        .collect();
    if !missing.is_empty() {
        return Err(Error::Usage(format!(
            "missing shard {} of {count} (shards are numbered 0..{}); give every part of the plan",
            missing.join(", "),
            count - 1
        )));
    }
    Ok(parts)
}

/// The second reading of a part must be of the same records as the first.
fn same_records(p: &Part, r: &ManifestReader) -> Result<()> {
    if r.header != p.header || r.batches != p.batches || r.objects != p.objects {
        return Err(Error::Runtime(format!(
            "{}: the manifest changed while merging; run the merge again",
            p.url()
        )));
    }
    Ok(())
}

/// The first pass's view of one entry of part `i`: whether it is kept, whether it is a file
/// that joins an earlier part's hard-link group, and which object it names.
fn plan(
    parts: &mut [Part],
    i: usize,
    e: &Entry,
    src: Option<&SourceId>,
    joiner: &mut Joiner,
    links: &mut HashMap<Inode, (usize, Vec<u8>)>,
    report: &mut MergeReport,
) -> Result<()> {
    if !joiner.admit(i, e, &|k| parts[k].url())? {
        report.repeated_dirs += 1;
        return Ok(());
    }
    parts[i].kept += 1;
    let Some(f) = e.file() else {
        return Ok(());
    };
    if let (true, Some(s)) = (e.linked, src) {
        let key = (s.dev, s.ino, s.ctime, s.ctime_nsec, f.file_len());
        match links.get(&key) {
            None => {
                links.insert(key, (i, clear(e)?.to_vec()));
            }
            Some((j, path)) if *j < i => {
                parts[i].joined.insert(clear(e)?.to_vec(), path.clone());
                report.joined_links += 1;
                return Ok(());
            }
            Some(_) => {}
        }
    }
    if let Some(u) = parts[i].used.get_mut(f.obj as usize) {
        *u = true;
    }
    Ok(())
}

/// Entry `e` of part `i` as a line of the merged manifest: batch and object renumbered, a
/// split hard link joined (and links to it pointed at the earlier file), names and
/// attributes of parts after the first sealed again under the merged batch 0's name key.
fn rewrite(
    p: &Part,
    i: usize,
    mut e: Entry,
    mut src: Option<SourceId>,
    nk0: &NameKey,
    part_nk: &NameKey,
    conceal: bool,
) -> Result<Vec<u8>> {
    let path = clear(&e)?.to_vec();
    if let (true, Some(first)) = (e.file().is_some(), p.joined.get(&path)) {
        e.kind = EntryKind::HardLink(Name::Clear(first.clone()));
        e.linked = false;
        src = None;
    }
    match &mut e.kind {
        EntryKind::File(f) => {
            f.batch += p.batch_base;
            f.obj = p
                .obj_map
                .get(f.obj as usize)
                .copied()
                .flatten()
                .ok_or_else(|| {
                    Error::Runtime(format!(
                        "{}: the manifest changed while merging; run the merge again",
                        p.url()
                    ))
                })?;
        }
        EntryKind::HardLink(Name::Clear(t)) => {
            if let Some(first) = p.joined.get(t.as_slice()) {
                *t = first.clone();
            }
        }
        _ => {}
    }
    if i > 0 && matches!(e.xattrs, Xattrs::Sealed(_)) {
        let list = e.xattrs.open(part_nk)?;
        e.xattrs = Xattrs::Clear(list).sealed(nk0)?;
    }
    e.to_line_src(conceal.then_some(nk0), src.as_ref())
}

/// The merged vault must be new: absent, empty, or holding only what a killed merge of these
/// parts left (their key files and objects, scratch files of atomic writes).
fn check_target(out: &dyn Store, parts: &[Part]) -> Result<()> {
    if !out.root_exists()? {
        return Ok(());
    }
    let listed = out.list("")?;
    if listed.iter().any(|l| l.name == layout::MANIFEST) {
        return Err(Error::Usage(format!(
            "{} is a finished vault; merge writes a new one: give -o a path that does not exist or is empty",
            out.url()
        )));
    }
    let mut ours: HashSet<String> = HashSet::new();
    for p in parts {
        for b in &p.batches {
            ours.extend(out.scratch_name(&b.keys_file()));
            ours.insert(b.keys_file());
        }
        ours.extend(p.objects.iter().map(ObjectRef::name));
    }
    ours.extend(out.scratch_name(layout::MANIFEST));
    if let Some(l) = listed.iter().find(|l| !ours.contains(&l.name)) {
        return Err(Error::Usage(format!(
            "{} is not empty ({} is there) and not an unfinished merge of these parts; give -o a path that does not exist or is empty",
            out.url(),
            l.name
        )));
    }
    Ok(())
}

/// Removes what a killed merge left that is of no use: scratch files of atomic writes and
/// unfinished uploads.
fn tidy(out: &dyn Store, batches: &[Batch]) -> Result<()> {
    let names = batches
        .iter()
        .map(Batch::keys_file)
        .chain([layout::MANIFEST.to_string()]);
    for n in names {
        if let Some(s) = out.scratch_name(&n) {
            out.remove(&s)?;
        }
    }
    out.sweep_uploads(layout::OBJECTS_PREFIX, &HashSet::new())
}

/// Puts the objects into the merged vault: those already there (of the right length) are
/// kept; the others are linked or copied by the storage service where it can, else copied.
fn carry_objects(
    out: &dyn Store,
    parts: &[Part],
    objects: &[(usize, ObjectRef)],
    progress: &dyn Progress,
    report: &mut MergeReport,
    made: &mut Vec<String>,
) -> Result<()> {
    let there: HashMap<String, u64> = out
        .list(layout::OBJECTS_PREFIX)?
        .into_iter()
        .filter(|l| l.file)
        .map(|l| (l.name, l.len))
        .collect();
    progress.start(
        objects.len() as u64,
        objects.iter().map(|(_, o)| o.len).sum(),
    );
    for (i, o) in objects {
        let name = o.name();
        let from = &*parts[*i].store;
        match there.get(&name) {
            Some(&len) if len == o.len => {
                report.objects_in_place += 1;
                report.bytes_in_place += o.len;
            }
            found => {
                // A copy cut short by a kill (a local copy is written under its name).
                if found.is_some() {
                    out.remove(&name)?;
                }
                crate::pipeline::object::open_object_file(from, o).map_err(|e| {
                    Error::Runtime(format!(
                        "{}: {e:?}; run `envseal verify` on that part",
                        from.url()
                    ))
                })?;
                made.push(name.clone());
                if out.link_from(from, &name)? {
                    report.objects_linked += 1;
                    report.bytes_linked += o.len;
                } else {
                    crate::store::copy(from, out, &name)?;
                    report.objects_copied += 1;
                    report.bytes_copied += o.len;
                }
            }
        }
        progress.bytes(o.len);
        progress.file_done();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, dir: bool) -> Entry {
        Entry {
            path: Name::Clear(path.as_bytes().to_vec()),
            mode: 0o755,
            mtime: 0,
            mtime_nsec: 0,
            kind: if dir { EntryKind::Dir } else { EntryKind::Fifo },
            owner: None,
            linked: false,
            xattrs: Xattrs::None,
        }
    }

    /// The parts of the walk test in src/fs/tree.rs: the directories on the way a later part
    /// repeats are dropped, everything else is kept; a repeated file, a directory repeated
    /// within one part's order or a later part going back are overlaps.
    #[test]
    fn joiner_drops_directories_on_the_way_and_refuses_overlaps() {
        let parts: [&[(&str, bool)]; 5] = [
            &[
                ("a", true),
                ("a/x", true),
                ("a/x/2", false),
                ("a/x/deep", true),
            ],
            &[
                ("a", true),
                ("a/x", true),
                ("a/x/deep", true),
                ("a/x/deep/1", false),
                ("a/y", true),
                ("a/y/3", false),
            ],
            &[("a", true), ("a/y", true), ("a/y/4", false), ("a/z", false)],
            &[("b", true)],
            &[("b", true), ("b/5", false)],
        ];
        let url = |k: usize| format!("part-{k}");
        let mut j = Joiner::default();
        let mut kept = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            for (p, dir) in part.iter() {
                if j.admit(i, &entry(p, *dir), &url).unwrap() {
                    kept.push(*p);
                }
            }
        }
        assert_eq!(
            kept,
            [
                "a",
                "a/x",
                "a/x/2",
                "a/x/deep",
                "a/x/deep/1",
                "a/y",
                "a/y/3",
                "a/y/4",
                "a/z",
                "b",
                "b/5"
            ]
        );

        let overlap = |seq: &[(usize, &str, bool)]| {
            let mut j = Joiner::default();
            for (i, p, dir) in &seq[..seq.len() - 1] {
                assert!(j.admit(*i, &entry(p, *dir), &url).unwrap());
            }
            let (i, p, dir) = seq[seq.len() - 1];
            match j.admit(i, &entry(p, dir), &url) {
                Err(Error::Usage(m)) => assert!(m.contains("part-0 and part-1 overlap"), "{m}"),
                r => panic!("{seq:?}: {r:?}"),
            }
        };
        // The same file in two parts.
        overlap(&[(0, "a", true), (0, "a/f", false), (1, "a/f", false)]);
        // A directory that is not on the way to the last entry (a part going back).
        overlap(&[
            (0, "a", true),
            (0, "a/d", true),
            (0, "a/e", false),
            (1, "a/d", true),
        ]);
        // A directory where the earlier part has a file.
        overlap(&[(0, "a", true), (0, "a/d", false), (1, "a/d", true)]);
        // A later part behind the earlier one.
        overlap(&[(0, "b", true), (1, "a", true)]);
    }
}
