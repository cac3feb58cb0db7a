//! A small LRU cache of opened (authenticated) segments, bounded in bytes: a mount's memory
//! does not grow with the files read.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

type Key = (u64, u64);

struct Inner {
    /// Segment -> (plaintext, last use).
    map: HashMap<Key, (Arc<Vec<u8>>, u64)>,
    /// Last use -> segment: the oldest first.
    order: BTreeMap<u64, Key>,
    tick: u64,
    bytes: usize,
}

pub struct SegmentCache {
    inner: Mutex<Inner>,
    cap: usize,
}

impl SegmentCache {
    /// At most `cap` bytes, but always room for one segment of `segment_size`.
    pub fn new(cap: usize, segment_size: usize) -> SegmentCache {
        SegmentCache {
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                order: BTreeMap::new(),
                tick: 0,
                bytes: 0,
            }),
            cap: cap.max(segment_size),
        }
    }

    /// Segment `seg` of inode `ino`, if kept (it becomes the newest).
    pub fn get(&self, ino: u64, seg: u64) -> Option<Arc<Vec<u8>>> {
        let mut g = self.inner.lock().ok()?;
        let inner = &mut *g;
        inner.tick += 1;
        let tick = inner.tick;
        let (data, used) = inner.map.get_mut(&(ino, seg))?;
        inner.order.remove(used);
        *used = tick;
        inner.order.insert(tick, (ino, seg));
        Some(data.clone())
    }

    /// Keeps a segment, dropping the least recently used ones beyond the bound.
    pub fn put(&self, ino: u64, seg: u64, data: Arc<Vec<u8>>) {
        let Ok(mut g) = self.inner.lock() else {
            return;
        };
        let inner = &mut *g;
        inner.tick += 1;
        let tick = inner.tick;
        inner.bytes += data.len();
        if let Some((old, used)) = inner.map.insert((ino, seg), (data, tick)) {
            inner.bytes -= old.len();
            inner.order.remove(&used);
        }
        inner.order.insert(tick, (ino, seg));
        while inner.bytes > self.cap {
            let Some((_, k)) = inner.order.pop_first() else {
                break;
            };
            if let Some((old, _)) = inner.map.remove(&k) {
                inner.bytes -= old.len();
            }
        }
    }

    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.inner.lock().map(|g| g.bytes).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_recently_used_within_its_bound() {
        let c = SegmentCache::new(30, 10);
        for s in 0..3 {
            c.put(1, s, Arc::new(vec![s as u8; 10]));
        }
        assert!(c.get(1, 0).is_some()); // 0 is now newer than 1
        c.put(2, 0, Arc::new(vec![9; 10]));
        assert!(c.get(1, 1).is_none(), "the least recently used goes first");
        assert_eq!(c.get(1, 0).unwrap()[0], 0);
        assert_eq!(c.get(2, 0).unwrap()[0], 9);
        assert_eq!(c.bytes(), 30);
        c.put(2, 0, Arc::new(vec![8; 10]));
        assert_eq!(c.bytes(), 30, "a segment put again replaces itself");
    }
}
