//! A small LRU cache of opened (authenticated) segments, bounded in bytes: a mount's memory
//! does not grow with the files read.
//!
//! The segments of one fetch stay in the buffer they were read and opened in (a [`Block`]),
//! and a read replies straight from it. When the last holder of a block drops it, its buffer
//! goes back to a small [`BufPool`] for the next fetch, so steady reading neither copies
//! segments out of their buffer nor allocates and zero-fills new ones.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::{Arc, Mutex};

/// Buffers kept for reuse, a few at most (each up to a fetch's size).
pub struct BufPool {
    bufs: Mutex<Vec<Vec<u8>>>,
    keep: usize,
}

impl BufPool {
    pub fn new(keep: usize) -> Arc<BufPool> {
        Arc::new(BufPool {
            bufs: Mutex::new(Vec::new()),
            keep,
        })
    }

    /// A buffer of at least `want` bytes: the smallest kept one that holds them, else the
    /// largest grown, else a new one. Kept bytes are stale, never cleared: the caller
    /// overwrites what it uses.
    pub fn take(&self, want: usize) -> Vec<u8> {
        let mut buf = match self.bufs.lock() {
            Ok(mut bufs) => {
                let fits = (0..bufs.len())
                    .filter(|&k| bufs[k].len() >= want)
                    .min_by_key(|&k| bufs[k].len());
                let pick = fits.or_else(|| (0..bufs.len()).max_by_key(|&k| bufs[k].len()));
                pick.map(|k| bufs.swap_remove(k)).unwrap_or_default()
            }
            Err(_) => Vec::new(),
        };
        if buf.len() < want {
            buf.reserve_exact(want - buf.len());
            huge_pages(&mut buf);
            buf.resize(want, 0);
        }
        buf
    }

    /// Keeps `buf` for a later [`Self::take`]; when full, the larger buffers are kept.
    pub fn give(&self, buf: Vec<u8>) {
        let Ok(mut bufs) = self.bufs.lock() else {
            return;
        };
        if bufs.len() < self.keep {
            bufs.push(buf);
        } else if let Some(k) = (0..bufs.len()).min_by_key(|&k| bufs[k].len()) {
            if bufs[k].len() < buf.len() {
                bufs[k] = buf;
            }
        }
    }

    #[cfg(test)]
    fn kept(&self) -> usize {
        self.bufs.lock().map(|b| b.len()).unwrap_or(0)
    }
}

/// Asks the kernel to back `buf`'s allocation with transparent huge pages where it can (the
/// 2 MiB-aligned part of it), before its pages are first touched. Replies are copied out of
/// these buffers by the kernel page by page: with 4 KiB pages, pinning and copying them took
/// a third of the mount's time in a sequential read, half that with huge pages
/// (docs/PERFORMANCE.md "Mount"). Advice only: where THP is off it changes nothing.
fn huge_pages(buf: &mut Vec<u8>) {
    const HUGE: usize = 2 << 20;
    let at = buf.as_mut_ptr() as usize;
    let start = at.next_multiple_of(HUGE);
    let end = (at + buf.capacity()) / HUGE * HUGE;
    if end > start {
        // SAFETY: the range lies within `buf`'s own allocation, which stays valid for the
        // call; MADV_HUGEPAGE only changes how the kernel backs those pages, never their
        // contents or whether they are mapped. Its failure (no THP) is harmless, so ignored.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
    }
}

/// Segments `first..first + ranges.len()` of one file, opened: segment `first + k` is
/// `buf[ranges[k]]`. Its buffer returns to the pool when the block is dropped.
pub struct Block {
    first: u64,
    buf: Vec<u8>,
    ranges: Vec<Range<usize>>,
    pool: Arc<BufPool>,
}

impl Block {
    pub fn new(first: u64, buf: Vec<u8>, ranges: Vec<Range<usize>>, pool: Arc<BufPool>) -> Block {
        Block {
            first,
            buf,
            ranges,
            pool,
        }
    }

    /// The plaintext of segment `i`, if the block holds it.
    pub fn segment(&self, i: u64) -> Option<&[u8]> {
        let k = usize::try_from(i.checked_sub(self.first)?).ok()?;
        self.buf.get(self.ranges.get(k)?.clone())
    }

    /// The segments held.
    fn segments(&self) -> Range<u64> {
        self.first..self.first + self.ranges.len() as u64
    }

    /// The segment after the last one held.
    pub fn end(&self) -> u64 {
        self.segments().end
    }

    /// Memory held (what the cache's bound counts).
    fn bytes(&self) -> usize {
        self.buf.capacity()
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.buf));
    }
}

type Key = (u64, u64);

struct Entry {
    block: Arc<Block>,
    ino: u64,
    /// Last use (a key of `order`).
    used: u64,
    /// Segments of the block still reached through `index` (a newer block may hold the
    /// others): at zero the block is dropped.
    live: usize,
}

struct Inner {
    /// (inode, segment) -> the block holding it.
    index: HashMap<Key, u64>,
    blocks: HashMap<u64, Entry>,
    /// Last use -> block: the oldest first.
    order: BTreeMap<u64, u64>,
    tick: u64,
    next_id: u64,
    bytes: usize,
}

impl Inner {
    fn remove(&mut self, id: u64) {
        let Some(e) = self.blocks.remove(&id) else {
            return;
        };
        self.order.remove(&e.used);
        self.bytes -= e.block.bytes();
        for s in e.block.segments() {
            if self.index.get(&(e.ino, s)) == Some(&id) {
                self.index.remove(&(e.ino, s));
            }
        }
    }
}

pub struct SegmentCache {
    inner: Mutex<Inner>,
    cap: usize,
}

impl SegmentCache {
    /// At most `cap` bytes of blocks, but always the newest block.
    pub fn new(cap: usize) -> SegmentCache {
        SegmentCache {
            inner: Mutex::new(Inner {
                index: HashMap::new(),
                blocks: HashMap::new(),
                order: BTreeMap::new(),
                tick: 0,
                next_id: 0,
                bytes: 0,
            }),
            cap,
        }
    }

    /// The block holding segment `seg` of inode `ino`, if kept (it becomes the newest).
    pub fn get(&self, ino: u64, seg: u64) -> Option<Arc<Block>> {
        let mut g = self.inner.lock().ok()?;
        let inner = &mut *g;
        let id = *inner.index.get(&(ino, seg))?;
        inner.tick += 1;
        let tick = inner.tick;
        let e = inner.blocks.get_mut(&id)?;
        inner.order.remove(&e.used);
        e.used = tick;
        inner.order.insert(tick, id);
        Some(e.block.clone())
    }

    /// Whether segment `seg` of inode `ino` is kept (its block's age unchanged).
    pub fn contains(&self, ino: u64, seg: u64) -> bool {
        self.inner
            .lock()
            .is_ok_and(|g| g.index.contains_key(&(ino, seg)))
    }

    /// Keeps a block of inode `ino` (its segments replace any older copies), dropping the
    /// least recently used blocks beyond the bound; returns it shared.
    pub fn put(&self, ino: u64, block: Block) -> Arc<Block> {
        let block = Arc::new(block);
        let Ok(mut g) = self.inner.lock() else {
            return block;
        };
        let inner = &mut *g;
        inner.tick += 1;
        inner.next_id += 1;
        let (tick, id) = (inner.tick, inner.next_id);
        for s in block.segments() {
            let Some(old) = inner.index.insert((ino, s), id) else {
                continue;
            };
            let gone = inner.blocks.get_mut(&old).is_some_and(|e| {
                e.live -= 1;
                e.live == 0
            });
            if gone {
                inner.remove(old);
            }
        }
        inner.bytes += block.bytes();
        inner.order.insert(tick, id);
        inner.blocks.insert(
            id,
            Entry {
                block: block.clone(),
                ino,
                used: tick,
                live: block.ranges.len(),
            },
        );
        while inner.bytes > self.cap && inner.blocks.len() > 1 {
            let Some((_, oldest)) = inner.order.pop_first() else {
                break;
            };
            inner.remove(oldest);
        }
        block
    }

    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.inner.lock().map(|g| g.bytes).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A block of `count` segments of `len` bytes each, segment `first + k` filled with
    /// `fill + k`, in a buffer from `pool`.
    fn block(pool: &Arc<BufPool>, first: u64, count: usize, len: usize, fill: u8) -> Block {
        let mut buf = pool.take(count * len);
        let mut ranges = Vec::new();
        for k in 0..count {
            buf[k * len..(k + 1) * len].fill(fill + k as u8);
            ranges.push(k * len..(k + 1) * len);
        }
        Block::new(first, buf, ranges, pool.clone())
    }

    #[test]
    fn keeps_the_recently_used_within_its_bound() {
        let pool = BufPool::new(0);
        let c = SegmentCache::new(30);
        for s in 0..3 {
            c.put(1, block(&pool, s, 1, 10, s as u8));
        }
        assert!(c.get(1, 0).is_some()); // 0 is now newer than 1
        c.put(2, block(&pool, 0, 1, 10, 9));
        assert!(c.get(1, 1).is_none(), "the least recently used goes first");
        assert_eq!(c.get(1, 0).unwrap().segment(0).unwrap()[0], 0);
        assert_eq!(c.get(2, 0).unwrap().segment(0).unwrap()[0], 9);
        assert_eq!(c.bytes(), 30);
        c.put(2, block(&pool, 0, 1, 10, 8));
        assert_eq!(c.bytes(), 30, "a segment put again replaces its block");
        assert_eq!(c.get(2, 0).unwrap().segment(0).unwrap()[0], 8);
    }

    /// Blocks of several segments: a segment is found in the block that holds it, a newer
    /// block supersedes the segments it holds again, and a block none of whose segments is
    /// reached any more is dropped (its bytes no longer counted).
    #[test]
    fn blocks_hold_several_segments() {
        let pool = BufPool::new(0);
        let c = SegmentCache::new(1000);
        c.put(1, block(&pool, 0, 4, 10, 0));
        assert_eq!(c.get(1, 3).unwrap().segment(3).unwrap(), &[3u8; 10]);
        assert!(c.get(1, 4).is_none());
        // Segments 2..6 again: 0 and 1 are still reached through the first block.
        c.put(1, block(&pool, 2, 4, 10, 20));
        assert_eq!(c.get(1, 1).unwrap().segment(1).unwrap(), &[1u8; 10]);
        assert_eq!(c.get(1, 2).unwrap().segment(2).unwrap(), &[20u8; 10]);
        assert_eq!(c.bytes(), 80);
        // Now 0 and 1 too: the first block is reached by nothing and goes.
        c.put(1, block(&pool, 0, 2, 10, 40));
        assert_eq!(c.bytes(), 60);
        assert_eq!(c.get(1, 0).unwrap().segment(0).unwrap(), &[40u8; 10]);
        assert_eq!(c.get(1, 5).unwrap().segment(5).unwrap(), &[23u8; 10]);
        assert!(
            c.get(2, 0).is_none(),
            "another inode's segment 0 is not this one"
        );
    }

    /// The bound counts the buffers' memory; the newest block stays even when it alone is
    /// over the bound (it serves the read that fetched it).
    #[test]
    fn memory_stays_bounded() {
        let pool = BufPool::new(2);
        let c = SegmentCache::new(100);
        for k in 0..50u64 {
            let b = c.put(7, block(&pool, 4 * k, 4, 10, 0));
            assert_eq!(b.segment(4 * k).unwrap().len(), 10);
            assert!(c.bytes() <= 100, "{} bytes kept", c.bytes());
        }
        assert!(c.get(7, 0).is_none() && c.get(7, 196).is_some());
        c.put(7, block(&pool, 1000, 30, 10, 0));
        assert_eq!(
            c.bytes(),
            300,
            "only the newest block, over the bound, is kept"
        );
        assert!(c.get(7, 196).is_none() && c.get(7, 1029).is_some());
        assert!(pool.kept() <= 2, "the pool keeps a few buffers at most");
    }

    /// A buffer goes back to the pool once the cache and every reader dropped its block, and
    /// its next use shows only its own segments: a short last segment read after a full one
    /// in the same buffer is its own length, not the stale rest of the buffer.
    #[test]
    fn a_reused_buffer_shows_only_its_own_segment() {
        let pool = BufPool::new(4);
        let c = SegmentCache::new(64);
        let full = c.put(1, block(&pool, 0, 1, 64, 0xAA));
        assert_eq!(full.segment(0).unwrap(), &[0xAA; 64]);
        // A second block pushes the first out of the cache; a reader still holds it.
        c.put(1, block(&pool, 1, 1, 64, 0xBB));
        assert!(c.get(1, 0).is_none());
        assert_eq!(pool.kept(), 0, "a block a reader holds keeps its buffer");
        drop(full);
        assert_eq!(
            pool.kept(),
            1,
            "dropped by its last reader, the buffer is back"
        );
        // The short last segment (5 bytes) lands in that 64-byte buffer, stale bytes after it.
        let mut buf = pool.take(5);
        assert_eq!(buf.len(), 64);
        assert!(
            buf.iter().all(|&b| b == 0xAA),
            "the pool does not clear (stale bytes)"
        );
        buf[..5].copy_from_slice(b"short");
        let short = std::iter::once(0..5).collect();
        let last = c.put(1, Block::new(2, buf, short, pool.clone()));
        assert_eq!(last.segment(2).unwrap(), b"short");
        assert_eq!(c.get(1, 2).unwrap().segment(2).unwrap(), b"short");
        assert!(last.segment(3).is_none() && last.segment(1).is_none());
    }

    #[test]
    fn the_pool_hands_out_the_smallest_that_fits() {
        let pool = BufPool::new(2);
        pool.give(vec![0; 10]);
        pool.give(vec![0; 100]);
        pool.give(vec![0; 5]); // full: smaller than both kept, dropped
        assert_eq!(pool.take(8).len(), 10);
        pool.give(vec![0; 50]);
        let grown = pool.take(200);
        assert_eq!(grown.len(), 200, "none fits: the largest, grown");
        assert!(
            grown.capacity() < 400,
            "grown exactly (no spare capacity kept)"
        );
        assert_eq!(pool.take(1).len(), 50);
        assert_eq!(pool.take(1).len(), 1, "none kept: a new one");
        // Large buffers may get huge pages: their contents are the same.
        let mut big = pool.take(5 << 20);
        assert!(big.iter().all(|&b| b == 0));
        big[4 << 20] = 7;
        pool.give(big);
        assert_eq!(pool.take(5 << 20)[4 << 20], 7);
    }
}
