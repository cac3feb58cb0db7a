//! Connection limits of `kms serve`: a cap on open connections and on unauthenticated ones
//! per client address, so that slow or idle clients that never authenticate cannot hold the
//! file descriptors that authenticated clients need.
//!
//! A connection counts as unauthenticated until one of its requests passes authentication.
//! When a new connection would pass a limit, the oldest unauthenticated connection (of that
//! client, for the per-client limit) is closed to make room; only when every open connection
//! is authenticated is the new one refused. Together with the header and body read timeouts
//! this bounds what unauthenticated clients can hold, whatever their number.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// Open connections at most (well under the usual 1024 file descriptors); lower when the
/// process may open fewer files (see [`max_connections`]).
pub const MAX_CONNECTIONS: usize = 256;

/// The connection cap for this process: [`MAX_CONNECTIONS`], or half its file descriptor
/// limit if that is lower (the key store, TLS files and the runtime need the rest).
pub fn max_connections() -> usize {
    // `None` is no limit.
    let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
    (nofile / 2).clamp(8, MAX_CONNECTIONS)
}
/// Unauthenticated connections one client address may hold at once.
pub const MAX_UNAUTHENTICATED_PER_CLIENT: usize = 32;

struct Open {
    ip: IpAddr,
    authed: Arc<AtomicBool>,
    close: Arc<Notify>,
}

/// The table of open connections, oldest first.
pub struct Conns {
    inner: Mutex<(u64, BTreeMap<u64, Open>)>,
    max: usize,
}

/// One admitted connection: its flags, and its place in the table until dropped.
pub struct Slot {
    conns: Arc<Conns>,
    id: u64,
    /// Set once a request on this connection passed authentication.
    pub authed: Arc<AtomicBool>,
    /// Notified when the connection must close to make room.
    pub close: Arc<Notify>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut g) = self.conns.inner.lock() {
            g.1.remove(&self.id);
        }
    }
}

impl Conns {
    /// A table admitting at most `max` connections.
    pub fn new(max: usize) -> Conns {
        Conns {
            inner: Mutex::new((0, BTreeMap::new())),
            max,
        }
    }

    /// The cap.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Admits a connection from `ip`, closing the oldest unauthenticated one where a limit
    /// would be passed; `None` if every open connection is authenticated and the cap is
    /// reached.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let mut g = self.inner.lock().ok()?;
        let (next, open) = &mut *g;
        let unauthed = |o: &Open| !o.authed.load(Ordering::Relaxed);
        let mine = open.values().filter(|o| o.ip == ip && unauthed(o)).count();
        if mine >= MAX_UNAUTHENTICATED_PER_CLIENT.min(self.max / 2) {
            evict(open, |o| o.ip == ip && unauthed(o));
        }
        if open.len() >= self.max && !evict(open, unauthed) {
            return None;
        }
        let id = *next;
        *next += 1;
        let authed = Arc::new(AtomicBool::new(false));
        let close = Arc::new(Notify::new());
        open.insert(
            id,
            Open {
                ip,
                authed: authed.clone(),
                close: close.clone(),
            },
        );
        Some(Slot {
            conns: self.clone(),
            id,
            authed,
            close,
        })
    }
}

/// Closes (and forgets) the oldest connection matching `pick`; false if none does.
fn evict(open: &mut BTreeMap<u64, Open>, pick: impl Fn(&Open) -> bool) -> bool {
    let Some(id) = open.iter().find(|(_, o)| pick(o)).map(|(id, _)| *id) else {
        return false;
    };
    if let Some(o) = open.remove(&id) {
        // A stored permit: the connection closes even if it is not waiting yet.
        o.close.notify_one();
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unauthenticated_connections_make_room_and_authenticated_ones_stay() {
        let conns = Arc::new(Conns::new(MAX_CONNECTIONS));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        // One client's unauthenticated connections are capped: the oldest are closed.
        let slots: Vec<Slot> = (0..MAX_UNAUTHENTICATED_PER_CLIENT + 5)
            .map(|_| conns.admit(a).unwrap())
            .collect();
        let open = conns.inner.lock().unwrap().1.len();
        assert_eq!(open, MAX_UNAUTHENTICATED_PER_CLIENT);
        drop(slots);
        assert_eq!(conns.inner.lock().unwrap().1.len(), 0);
        // Authenticated connections fill the table: new ones are refused, none closed.
        let full: Vec<Slot> = (0..MAX_CONNECTIONS)
            .map(|i| {
                let s = conns.admit(if i % 2 == 0 { a } else { b }).unwrap();
                s.authed.store(true, Ordering::Relaxed);
                s
            })
            .collect();
        assert!(conns.admit(b).is_none());
        drop(full);
        assert!(conns.admit(b).is_some());
    }
}
