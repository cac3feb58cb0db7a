//! Throughput of the primitives a run is made of, and of a whole `encrypt` (docs/PERFORMANCE.md).
//!
//! The machine is shared and noisy, so absolute figures mean little: what matters is how close a
//! whole `encrypt` comes to the slowest primitive it must use (AES-GCM on all threads, BLAKE3,
//! writing to the page cache), all measured in the same process, moments apart. Each figure is
//! the best of a few runs, because noise only ever slows a run down.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rayon::prelude::*;
use serde::Serialize;

use crate::crypto::{BatchKey, FileKeys};
use crate::encrypt::{encrypt, EncryptOptions};
use crate::error::{Error, IoContext, Result};
use crate::format::{self, ObjectHeader, DEFAULT_SEGMENT_SIZE, ID_LEN, TAG_LEN};
use crate::keys::Kms;
use crate::kms::local::LocalProvider;
use crate::kms::{DataKey, KeyProvider, KmsOptions};
use crate::progress::NoProgress;

/// Segment size of the primitive measurements: `encrypt`'s default.
pub const SEGMENT: usize = DEFAULT_SEGMENT_SIZE as usize;
/// Largest buffer one measurement holds; larger sizes loop over it, so memory stays bounded.
const MAX_BUFFER: usize = 64 << 20;
/// Size of the small files of the generated tree.
const SMALL_FILE: u64 = 16 << 10;
/// Number of large files of the generated tree.
const LARGE_FILES: u64 = 4;

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Bytes processed per run of each figure (also the size of the generated tree).
    pub size: u64,
    /// Threads of the parallel figures and of `encrypt`.
    pub jobs: usize,
    /// Runs per figure; the fastest is kept.
    pub runs: usize,
    /// Where scratch files go: the page cache and disk of this file system are measured.
    pub dir: PathBuf,
}

/// Throughputs in bytes per second.
#[derive(Clone, Debug, Serialize)]
pub struct Figures {
    /// AES-256-GCM segment seal, 1 thread.
    pub seal_single: f64,
    /// AES-256-GCM segment seal, `jobs` threads.
    pub seal_parallel: f64,
    /// AES-256-GCM segment open, 1 thread.
    pub open_single: f64,
    /// AES-256-GCM segment open, `jobs` threads.
    pub open_parallel: f64,
    /// Keyed BLAKE3, 1 thread.
    pub blake3_single: f64,
    /// Keyed BLAKE3 (`update_rayon`), `jobs` threads.
    pub blake3_parallel: f64,
    /// Copying memory to memory, 1 thread.
    pub memcpy: f64,
    /// Writing new files into the page cache, `jobs` threads (no sync).
    pub page_cache_write: f64,
    /// Writing new files and `syncfs`, `jobs` threads: what durable storage takes.
    pub durable_write: f64,
    /// Writing a copy of the generated tree's files into the page cache, `jobs` threads: what
    /// creating that many files costs on this file system, as `encrypt` creates its objects.
    pub tree_write: f64,
    /// `encrypt` of a generated tree (a few large files, many small ones), `jobs` threads,
    /// sources in the page cache, with the local provider.
    pub encrypt_tree: f64,
}

/// The figures and how close `encrypt` comes to the machine's limits.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub size: u64,
    pub jobs: usize,
    pub runs: usize,
    /// The AES-256-GCM implementation compiled in ([`crate::aead::BACKEND`]).
    pub aead_backend: &'static str,
    pub figures: Figures,
    /// min(seal_parallel, blake3_parallel, page_cache_write): what `encrypt` should approach.
    pub limit: f64,
    /// encrypt_tree / limit: the figure that matters.
    pub ratio: f64,
    /// min(seal_parallel, blake3_parallel, tree_write): the limit for this tree's shape, with
    /// the cost of creating its files counted.
    pub tree_limit: f64,
    /// encrypt_tree / tree_limit.
    pub tree_ratio: f64,
}

/// Measures every figure. Takes a few times `size` of scratch space in `dir` and about
/// `min(size, 64 MiB)` twice over of memory.
pub fn run(opts: &BenchOptions) -> Result<BenchReport> {
    if opts.size == 0 || opts.jobs == 0 || opts.runs == 0 {
        return Err(Error::Usage(
            "bench: size, jobs and runs must be positive".into(),
        ));
    }
    let (size, jobs, runs) = (opts.size, opts.jobs, opts.runs);
    let (tree_write, encrypt_tree) = tree_rates(&opts.dir, size, jobs, runs)?;
    let figures = Figures {
        seal_single: seal_rate(size, 1, runs)?,
        seal_parallel: seal_rate(size, jobs, runs)?,
        open_single: open_rate(size, 1, runs)?,
        open_parallel: open_rate(size, jobs, runs)?,
        blake3_single: blake3_rate(size, 1, runs)?,
        blake3_parallel: blake3_rate(size, jobs, runs)?,
        memcpy: memcpy_rate(size, runs)?,
        page_cache_write: write_rate(&opts.dir, size, jobs, false, runs)?,
        durable_write: write_rate(&opts.dir, size, jobs, true, runs)?,
        tree_write,
        encrypt_tree,
    };
    let limit = figures
        .seal_parallel
        .min(figures.blake3_parallel)
        .min(figures.page_cache_write);
    let tree_limit = figures
        .seal_parallel
        .min(figures.blake3_parallel)
        .min(figures.tree_write);
    Ok(BenchReport {
        size,
        jobs,
        runs,
        aead_backend: crate::aead::BACKEND,
        limit,
        ratio: figures.encrypt_tree / limit,
        tree_limit,
        tree_ratio: figures.encrypt_tree / tree_limit,
        figures,
    })
}

fn rate(bytes: u64, t: Duration) -> f64 {
    // A run faster than the clock's resolution still counts as taking some time.
    bytes as f64 / t.as_secs_f64().max(1e-9)
}

/// The fastest of `runs` timings.
fn best(runs: usize, mut f: impl FnMut() -> Result<Duration>) -> Result<Duration> {
    let mut min = Duration::MAX;
    for _ in 0..runs {
        min = min.min(f()?);
    }
    Ok(min)
}

fn pool(threads: usize) -> Result<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| Error::Runtime(format!("thread pool: {e}")))
}

/// Random bytes: content does not change the speed of AES or BLAKE3, but keeps file systems
/// from compressing or deduplicating what is written.
fn random_bytes(len: usize) -> Result<Vec<u8>> {
    let mut v = vec![0u8; len];
    getrandom::getrandom(&mut v)
        .map_err(|e| Error::Runtime(format!("no random bytes from the OS: {e}")))?;
    Ok(v)
}

/// Bytes one buffer pass covers and how many passes make up `size`.
fn passes(size: u64, unit: usize) -> (usize, u64) {
    let units = size
        .div_ceil(unit as u64)
        .clamp(1, (MAX_BUFFER / unit) as u64);
    let len = units as usize * unit;
    (len, size.div_ceil(len as u64))
}

/// One file's keys under a random data key, derived exactly as `encrypt` derives them.
pub fn random_file_keys() -> Result<FileKeys> {
    let key = DataKey::from_bytes(&random_bytes(32)?)?;
    let id = || format::random::<ID_LEN>().map_err(|e| Error::Runtime(e.to_string()));
    let (vault_id, batch_id, file_id) = (id()?, id()?, id()?);
    let header = ObjectHeader {
        version: format::FORMAT_VERSION,
        alg: format::ALG_AES256GCM_BLAKE3,
        segment_size: DEFAULT_SEGMENT_SIZE,
        plain_len: u64::MAX >> 1,
        vault_id,
        batch_id,
        file_id,
        salt: format::random().map_err(|e| Error::Runtime(e.to_string()))?,
        commitment: [0; 32],
    };
    Ok(BatchKey::new(key, vault_id, batch_id).file_keys(&header))
}

/// Seals every `SEGMENT + TAG_LEN` slot of `buf` in place, on the current rayon pool.
pub fn seal_slots(keys: &FileKeys, buf: &mut [u8]) {
    buf.par_chunks_mut(SEGMENT + TAG_LEN)
        .enumerate()
        .for_each(|(i, slot)| keys.seal_segment(i as u64, false, slot));
}

/// Opens every slot sealed by [`seal_slots`] in place, on the current rayon pool.
pub fn open_slots(keys: &FileKeys, buf: &mut [u8]) -> Result<()> {
    buf.par_chunks_mut(SEGMENT + TAG_LEN)
        .enumerate()
        .try_for_each(|(i, slot)| {
            keys.open_segment(i as u64, false, slot)
                .map(|_| ())
                .map_err(|_| Error::Runtime(format!("bench: segment {i} did not open")))
        })
}

/// AES-256-GCM segment seal over 1 MiB segments, bytes/s.
pub fn seal_rate(size: u64, threads: usize, runs: usize) -> Result<f64> {
    let keys = random_file_keys()?;
    let (len, n) = passes(size, SEGMENT);
    let mut buf = random_bytes(len / SEGMENT * (SEGMENT + TAG_LEN))?;
    let pool = pool(threads)?;
    let t = best(runs, || {
        let start = Instant::now();
        for _ in 0..n {
            pool.install(|| seal_slots(&keys, &mut buf));
        }
        Ok(start.elapsed())
    })?;
    Ok(rate(n * len as u64, t))
}

/// AES-256-GCM segment open over 1 MiB segments, bytes/s. Only the opening is timed; each
/// pass is sealed again, untimed, for the next.
pub fn open_rate(size: u64, threads: usize, runs: usize) -> Result<f64> {
    let keys = random_file_keys()?;
    let (len, n) = passes(size, SEGMENT);
    let mut buf = random_bytes(len / SEGMENT * (SEGMENT + TAG_LEN))?;
    let pool = pool(threads)?;
    let t = best(runs, || {
        let mut t = Duration::ZERO;
        for _ in 0..n {
            pool.install(|| seal_slots(&keys, &mut buf));
            let start = Instant::now();
            pool.install(|| open_slots(&keys, &mut buf))?;
            t += start.elapsed();
        }
        Ok(t)
    })?;
    Ok(rate(n * len as u64, t))
}

/// Keyed BLAKE3, bytes/s: `update` on one thread, `update_rayon` on more.
pub fn blake3_rate(size: u64, threads: usize, runs: usize) -> Result<f64> {
    let key: [u8; 32] = format::random().map_err(|e| Error::Runtime(e.to_string()))?;
    let (len, n) = passes(size, SEGMENT);
    let buf = random_bytes(len)?;
    let pool = pool(threads)?;
    let t = best(runs, || {
        let start = Instant::now();
        let mut h = blake3::Hasher::new_keyed(&key);
        for _ in 0..n {
            if threads == 1 {
                h.update(&buf);
            } else {
                pool.install(|| h.update_rayon(&buf));
            }
        }
        std::hint::black_box(h.finalize());
        Ok(start.elapsed())
    })?;
    Ok(rate(n * len as u64, t))
}

/// Memory to memory copy, one thread, bytes/s.
pub fn memcpy_rate(size: u64, runs: usize) -> Result<f64> {
    let (len, n) = passes(size, SEGMENT);
    let src = random_bytes(len)?;
    let mut dst = vec![0u8; len];
    let t = best(runs, || {
        let start = Instant::now();
        for _ in 0..n {
            dst.copy_from_slice(std::hint::black_box(&src));
            std::hint::black_box(&mut dst);
        }
        Ok(start.elapsed())
    })?;
    Ok(rate(n * len as u64, t))
}

/// Writing `size` bytes as `threads` new files in `parent` (1 MiB writes), bytes/s; with
/// `sync`, the `syncfs` that makes them durable is timed too. The files are removed, untimed.
pub fn write_rate(
    parent: &Path,
    size: u64,
    threads: usize,
    sync: bool,
    runs: usize,
) -> Result<f64> {
    let scratch = Scratch::new(parent)?;
    let chunk = random_bytes(SEGMENT)?;
    let per_file = size.div_ceil(threads as u64).max(1);
    let pool = pool(threads)?;
    let t = best(runs, || {
        // Earlier dirty pages (ours or others') must not be flushed on our clock.
        scratch.syncfs()?;
        let start = Instant::now();
        pool.install(|| {
            (0..threads).into_par_iter().try_for_each(|i| {
                let path = scratch.path().join(format!("write-{i}"));
                write_file(&path, &chunk, per_file)
            })
        })?;
        if sync {
            scratch.syncfs()?;
        }
        let t = start.elapsed();
        for i in 0..threads {
            let path = scratch.path().join(format!("write-{i}"));
            fs::remove_file(&path).at(&path)?;
        }
        Ok(t)
    })?;
    Ok(rate(per_file * threads as u64, t))
}

/// Writes `len` bytes to a new file at `path`, repeating `chunk`.
fn write_file(path: &Path, chunk: &[u8], len: u64) -> Result<()> {
    let mut f = File::create(path).at(path)?;
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n]).at(path)?;
        left -= n as u64;
    }
    Ok(())
}

/// Writing a copy of a generated tree of about `size` bytes, and `encrypt` of it, bytes/s.
///
/// Runs alternate, because creating files is slowed by recent deletions nearby (ext4 without a
/// journal avoids reusing inodes freed in the last minutes), and every run deletes its output:
/// alternating makes both figures pay the same.
pub fn tree_rates(parent: &Path, size: u64, jobs: usize, runs: usize) -> Result<(f64, f64)> {
    let mut rig = EncryptRig::new(parent, size, jobs)?;
    let (mut write, mut enc) = (Duration::MAX, Duration::MAX);
    for _ in 0..runs {
        write = write.min(rig.write_copy()?);
        enc = enc.min(rig.run()?);
    }
    Ok((rate(rig.bytes(), write), rate(rig.bytes(), enc)))
}

/// A source tree in the page cache and a local key store, ready for timed `encrypt` runs.
pub struct EncryptRig {
    scratch: Scratch,
    pool: rayon::ThreadPool,
    kms: Kms,
    opts: EncryptOptions,
    bytes: u64,
    runs: u64,
}

impl EncryptRig {
    /// Generates the tree (`LARGE_FILES` files sharing 3/4 of `size`, 16 KiB files for the
    /// rest) and a key store with one CMK under a scratch directory in `parent`.
    pub fn new(parent: &Path, size: u64, jobs: usize) -> Result<Self> {
        let scratch = Scratch::new(parent)?;
        let src = scratch.path().join("src");
        let pool = pool(jobs)?;
        let bytes = make_tree(&src, size, &pool)?;
        // The tree was just written: flush it now, not in the first run's group commit.
        scratch.syncfs()?;

        let store = scratch.path().join("keystore");
        // A scratch store, removed with the rest: no advice to back it up.
        let kms_opts = KmsOptions {
            scratch_store: true,
            ..KmsOptions::default()
        };
        let provider = LocalProvider::open(Some(&store), &kms_opts)?;
        let key = provider.store().create_key("envseal bench")?.key_id;
        let url = provider.url();
        let kms = Kms::new(kms_opts, None).with_provider(&url, Arc::new(provider));
        let opts = EncryptOptions {
            key: Some(key),
            segment_size: DEFAULT_SEGMENT_SIZE,
            jobs,
            ..EncryptOptions::new(vec![src], PathBuf::new(), url)
        };
        Ok(EncryptRig {
            scratch,
            pool,
            kms,
            opts,
            bytes,
            runs: 0,
        })
    }

    /// Plaintext bytes in the tree.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Writes a copy of the tree's files into the page cache, as `encrypt` must write its
    /// objects at the least (it also syncs them); only that is timed, the copy is removed
    /// afterwards.
    pub fn write_copy(&mut self) -> Result<Duration> {
        self.runs += 1;
        let dir = self.scratch.path().join(format!("copy-{}", self.runs));
        // Dirty pages of earlier runs must not be flushed on this run's clock.
        self.scratch.syncfs()?;
        let start = Instant::now();
        make_tree(&dir, self.bytes, &self.pool)?;
        let t = start.elapsed();
        fs::remove_dir_all(&dir).at(&dir)?;
        Ok(t)
    }

    /// One `encrypt` into a new vault; only the run is timed, the vault is removed afterwards.
    pub fn run(&mut self) -> Result<Duration> {
        self.runs += 1;
        let vault = self.scratch.path().join(format!("vault-{}", self.runs));
        let opts = EncryptOptions {
            vault: vault.clone().into(),
            ..self.opts.clone()
        };
        let start = Instant::now();
        let report = encrypt(&opts, &self.kms, &NoProgress, &AtomicBool::new(false))?;
        let t = start.elapsed();
        fs::remove_dir_all(&vault).at(&vault)?;
        if !report.failed.is_empty() || report.bytes != self.bytes {
            return Err(Error::Runtime(format!(
                "bench: encrypt sealed {} of {} bytes ({} files failed)",
                report.bytes,
                self.bytes,
                report.failed.len()
            )));
        }
        Ok(t)
    }
}

/// The generated tree: `LARGE_FILES` files sharing 3/4 of `size`, and 16 KiB files, 256 per
/// subdirectory, for the rest. Relative paths and lengths.
pub fn tree_layout(size: u64) -> Vec<(PathBuf, u64)> {
    let large = size / 4 * 3;
    let mut files: Vec<(PathBuf, u64)> = (0..LARGE_FILES)
        .map(|i| {
            let len = large / LARGE_FILES + if i == 0 { large % LARGE_FILES } else { 0 };
            (PathBuf::from(format!("large-{i}.bin")), len)
        })
        .collect();
    let mut left = size - large;
    let mut i = 0u64;
    while left > 0 {
        let len = SMALL_FILE.min(left);
        files.push((PathBuf::from(format!("small-{:03}/{i}.dat", i / 256)), len));
        left -= len;
        i += 1;
    }
    files
}

/// Writes the tree of [`tree_layout`] into `dir` (created), files in parallel on `pool`.
/// Returns the bytes written.
pub fn make_tree(dir: &Path, size: u64, pool: &rayon::ThreadPool) -> Result<u64> {
    let chunk = random_bytes(SEGMENT)?;
    let files = tree_layout(size);
    fs::create_dir_all(dir).at(dir)?;
    for (rel, _) in &files {
        if let Some(sub) = rel.parent().filter(|p| !p.as_os_str().is_empty()) {
            let sub = dir.join(sub);
            if !sub.exists() {
                fs::create_dir(&sub).at(&sub)?;
            }
        }
    }
    pool.install(|| {
        files
            .par_iter()
            .enumerate()
            .try_for_each(|(i, (rel, len))| {
                // Start each file elsewhere in the chunk so the small files differ.
                let off = (i * 4099) % (SEGMENT - SMALL_FILE as usize);
                let data = if *len > SMALL_FILE {
                    &chunk[..]
                } else {
                    &chunk[off..]
                };
                write_file(&dir.join(rel), data, *len)
            })
    })?;
    Ok(files.iter().map(|(_, len)| len).sum())
}

/// A scratch directory, removed (best effort) when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(parent: &Path) -> Result<Self> {
        let id = format::random::<8>().at(parent)?;
        let path = parent.join(format!("envseal-bench-{}", format::to_hex(&id)));
        fs::create_dir(&path).at(&path)?;
        Ok(Scratch(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn syncfs(&self) -> Result<()> {
        crate::durable::sync_path(&self.0)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.0) {
            log::warn!("could not remove {}: {e}", self.0.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_cover_size_with_bounded_buffer() {
        assert_eq!(passes(1, SEGMENT), (SEGMENT, 1));
        assert_eq!(passes(3 * SEGMENT as u64, SEGMENT), (3 * SEGMENT, 1));
        assert_eq!(passes(3 * SEGMENT as u64 + 1, SEGMENT), (4 * SEGMENT, 1));
        assert_eq!(passes(1 << 30, SEGMENT), (MAX_BUFFER, 16));
    }

    #[test]
    fn seal_then_open_round_trips_and_detects_tampering() {
        let keys = random_file_keys().unwrap();
        let plain = random_bytes(2 * SEGMENT).unwrap();
        let mut buf = vec![0u8; 2 * (SEGMENT + TAG_LEN)];
        for (slot, p) in buf.chunks_mut(SEGMENT + TAG_LEN).zip(plain.chunks(SEGMENT)) {
            slot[..SEGMENT].copy_from_slice(p);
        }
        seal_slots(&keys, &mut buf);
        assert_ne!(&buf[..SEGMENT], &plain[..SEGMENT]);
        let mut tampered = buf.clone();
        tampered[SEGMENT + TAG_LEN + 5] ^= 1;
        assert!(open_slots(&keys, &mut tampered).is_err());
        open_slots(&keys, &mut buf).unwrap();
        assert_eq!(&buf[..SEGMENT], &plain[..SEGMENT]);
        assert_eq!(
            &buf[SEGMENT + TAG_LEN..2 * SEGMENT + TAG_LEN],
            &plain[SEGMENT..]
        );
    }

    #[test]
    fn tree_has_large_and_small_files_of_the_given_size() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("t");
        let size = 3 * SEGMENT as u64 + 12345;
        assert_eq!(make_tree(&dir, size, &pool(2).unwrap()).unwrap(), size);
        let mut total = 0;
        let mut small = 0;
        for e in walkdir::WalkDir::new(&dir) {
            let e = e.unwrap();
            if e.file_type().is_file() {
                total += e.metadata().unwrap().len();
                small += u64::from(e.path().extension().is_some_and(|x| x == "dat"));
            }
        }
        assert_eq!(total, size);
        assert!(small > 16, "{small} small files");
    }

    #[test]
    fn encrypt_rig_seals_the_whole_tree_and_cleans_up() {
        let tmp = tempfile::tempdir().unwrap();
        let mut rig = EncryptRig::new(tmp.path(), 2 * SEGMENT as u64, 2).unwrap();
        assert_eq!(rig.bytes(), 2 * SEGMENT as u64);
        assert!(rig.run().unwrap() > Duration::ZERO);
        assert!(rig.write_copy().unwrap() > Duration::ZERO);
        assert!(rig.run().unwrap() > Duration::ZERO);
        let left: Vec<_> = fs::read_dir(rig.scratch.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left.len(), 2, "{left:?}"); // the source tree and the key store
        drop(rig);
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0);
    }

    #[test]
    fn report_ratios_follow_the_figures() {
        let tmp = tempfile::tempdir().unwrap();
        let r = run(&BenchOptions {
            size: 2 << 20,
            jobs: 2,
            runs: 1,
            dir: tmp.path().to_path_buf(),
        })
        .unwrap();
        let f = &r.figures;
        for v in [
            f.seal_single,
            f.seal_parallel,
            f.open_single,
            f.open_parallel,
            f.blake3_single,
            f.blake3_parallel,
            f.memcpy,
            f.page_cache_write,
            f.durable_write,
            f.tree_write,
            f.encrypt_tree,
        ] {
            assert!(v.is_finite() && v > 0.0, "{f:?}");
        }
        let limit = f
            .seal_parallel
            .min(f.blake3_parallel)
            .min(f.page_cache_write);
        assert_eq!(r.limit, limit);
        assert_eq!(r.ratio, f.encrypt_tree / limit);
        let tree_limit = f.seal_parallel.min(f.blake3_parallel).min(f.tree_write);
        assert_eq!(r.tree_limit, tree_limit);
        assert_eq!(r.tree_ratio, f.encrypt_tree / tree_limit);
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0);
    }
}
