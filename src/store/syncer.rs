//! The thread that runs a store's barrier (a local vault's `syncfs`; object storage's
//! uploads in flight) for the writer's group commits, one at a time, so that the writer goes
//! on writing while the data is made durable.

use std::sync::Arc;

use crossbeam_channel::Receiver;

use super::Store;
use crate::error::{Error, Result};

fn stopped(url: &str) -> Error {
    Error::io(url, std::io::Error::other("the sync thread stopped"))
}

/// A store's barrier thread: [`Syncer::request`] starts a barrier, [`Syncer::result`] says
/// how it went.
pub struct Syncer {
    request: Option<crossbeam_channel::Sender<()>>,
    done: Receiver<Result<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    in_flight: bool,
    /// The vault, as errors name it.
    url: String,
}

impl Syncer {
    pub fn start(store: Arc<dyn Store>) -> std::io::Result<Syncer> {
        let url = store.url();
        let (request, requests) = crossbeam_channel::bounded::<()>(1);
        let (done_tx, done) = crossbeam_channel::bounded(1);
        let thread = std::thread::Builder::new()
            .name("envseal-sync".into())
            .spawn(move || {
                for () in requests {
                    if done_tx.send(store.barrier()).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Syncer {
            request: Some(request),
            done,
            thread: Some(thread),
            in_flight: false,
            url,
        })
    }

    /// Whether a requested sync has not been reported yet.
    pub fn in_flight(&self) -> bool {
        self.in_flight
    }

    /// Starts a sync (none may be in flight).
    pub fn request(&mut self) -> Result<()> {
        // The thread ends only when this sender is dropped, or if it panicked.
        match &self.request {
            Some(r) if r.send(()).is_ok() => {
                self.in_flight = true;
                Ok(())
            }
            _ => Err(stopped(&self.url)),
        }
    }

    /// The in-flight sync's result: `None` if none is in flight, or (without `wait`) it
    /// has not returned yet.
    pub fn result(&mut self, wait: bool) -> Option<Result<()>> {
        if !self.in_flight {
            return None;
        }
        let r = if wait {
            self.done.recv().unwrap_or_else(|_| Err(stopped(&self.url)))
        } else {
            match self.done.try_recv() {
                Ok(r) => r,
                Err(crossbeam_channel::TryRecvError::Empty) => return None,
                Err(crossbeam_channel::TryRecvError::Disconnected) => Err(stopped(&self.url)),
            }
        };
        self.in_flight = false;
        Some(r)
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.request = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syncer_reports_one_result_per_request() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(crate::store::local::LocalStore::new(dir.path()));
        let mut s = Syncer::start(store).unwrap();
        assert!(s.result(true).is_none(), "no sync was requested");
        s.request().unwrap();
        assert!(s.in_flight);
        assert!(matches!(s.result(true), Some(Ok(()))));
        assert!(!s.in_flight);
        assert!(s.result(false).is_none(), "the result was taken");
        // Polled without waiting, a requested sync reports once it has returned.
        s.request().unwrap();
        let r = loop {
            if let Some(r) = s.result(false) {
                break r;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        };
        assert!(r.is_ok());
        drop(s); // joins the thread
    }
}
