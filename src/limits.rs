//! Process limits: the cap on worker threads (`-j`) and core dumps.

/// The most worker threads a run starts per available core. Past a few per core, more
/// threads only add memory (each holds a buffer of up to a window, 8 MiB when encrypting,
/// 32 MiB per file when decrypting) and scheduling work, and a runaway `-j 100000` would
/// start tens of thousands of threads that take minutes to answer SIGTERM.
pub const JOBS_PER_CORE: usize = 4;
/// The absolute cap, whatever the core count.
pub const MAX_JOBS: usize = 256;

/// `requested` clamped to `[1, min(MAX_JOBS, JOBS_PER_CORE × cores)]`, and the notice to
/// show when it was lowered.
pub fn clamp_jobs(requested: usize) -> (usize, Option<String>) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cap = cores.saturating_mul(JOBS_PER_CORE).clamp(1, MAX_JOBS);
    if requested > cap {
        let why = format!(
            "-j {requested} lowered to {cap} ({JOBS_PER_CORE} per core on {cores} cores, at most {MAX_JOBS}): more threads add memory, not speed"
        );
        (cap, Some(why))
    } else {
        (requested.max(1), None)
    }
}

/// Keeps secrets out of core dumps: the process is made non-dumpable (no core file, no
/// ptrace attach by other processes of the same user, /proc/<pid>/mem unreadable to them)
/// and its core size limit set to 0. Called first thing by the binary; failures are ignored
/// (nothing to do about them, and the run is no less correct).
pub fn disable_core_dumps() {
    use rustix::process::{set_dumpable_behavior, setrlimit, DumpableBehavior, Resource, Rlimit};
    let zero = Rlimit {
        current: Some(0),
        maximum: Some(0),
    };
    let _ = setrlimit(Resource::Core, zero);
    let _ = set_dumpable_behavior(DumpableBehavior::NotDumpable);
}

/// Runs `build` (which starts an HTTP client's I/O threads) with SIGPIPE blocked in the
/// calling thread, so that the threads it starts inherit the blocked signal. The binary
/// sets SIGPIPE to its default action (ending the process, for `envseal ls | head`), and a
/// socket written after its peer went away (a storage or KMS server that crashed or cut
/// the connection) raises SIGPIPE in the writing thread: hyper's vectored writes
/// (`writev`) cannot ask for `MSG_NOSIGNAL`. Blocked there, the write fails with EPIPE
/// instead, and the request is retried or reported like any lost connection.
pub fn with_sigpipe_blocked<T>(build: impl FnOnce() -> T) -> T {
    use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow, Signal};
    let mut old = SigSet::empty();
    let blocked = pthread_sigmask(
        SigmaskHow::SIG_BLOCK,
        Some(&SigSet::from(Signal::SIGPIPE)),
        Some(&mut old),
    )
    .is_ok();
    let out = build();
    if blocked {
        let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_are_clamped_with_a_notice() {
        let (j, notice) = clamp_jobs(100_000);
        assert!((1..=MAX_JOBS).contains(&j));
        assert!(notice.unwrap().contains("lowered to"));
        assert_eq!(clamp_jobs(1), (1, None));
        assert_eq!(clamp_jobs(0).0, 1);
    }

    /// Whether SIGPIPE is blocked in the calling thread.
    fn sigpipe_blocked() -> bool {
        use nix::sys::signal::{SigSet, Signal};
        SigSet::thread_get_mask().unwrap().contains(Signal::SIGPIPE)
    }

    /// Threads started inside have SIGPIPE blocked; the caller's mask is given back.
    #[test]
    fn threads_started_with_sigpipe_blocked_keep_it_blocked() {
        std::thread::spawn(|| {
            assert!(!sigpipe_blocked());
            let inner = with_sigpipe_blocked(|| std::thread::spawn(sigpipe_blocked));
            assert!(
                inner.join().unwrap(),
                "the started thread has SIGPIPE blocked"
            );
            assert!(!sigpipe_blocked(), "the caller's mask was not restored");
        })
        .join()
        .unwrap();
    }
}
