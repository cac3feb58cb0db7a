//! Progress for the terminal: one indicatif bar when stderr is a terminal, plain lines every
//! `--progress-interval` otherwise, nothing with `-q`.
//!
//! Encrypt shows done/found from its first file: while the walk goes on, the bytes done of
//! those found so far and the rate; once the walk has ended, a percentage and an ETA. A
//! passphrase prompt suspends the bar ([`suspended`]), so it stays on screen while the user
//! types.

use std::collections::HashSet;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use envseal::progress::Progress;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::size::human_bytes;

/// How often the bar is redrawn: soon enough that even a walk of a few thousand files shows.
const TICK: Duration = Duration::from_millis(100);

/// The bar on the terminal now, if any: a prompt hides it while it waits (see [`suspended`]).
static SHOWN: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Runs `f` (a prompt on the terminal) with the progress bar cleared and frozen: nothing is
/// drawn until `f` returns, so a prompt is never overwritten while the user reads or types.
pub fn suspended<R>(f: impl FnOnce() -> R) -> R {
    let bar = SHOWN.lock().ok().and_then(|b| b.clone());
    match bar {
        Some(b) => b.suspend(f),
        None => f(),
    }
}

/// A test-only knob: `ENVSEAL_TEST_SLOW_FILE_MS` makes each finished file wait this long in
/// the display, so that a pty test sees a run of a few seconds on any machine. Never set by
/// users; the library is not slowed.
fn test_delay() -> Option<Duration> {
    std::env::var("ENVSEAL_TEST_SLOW_FILE_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&ms| ms > 0 && ms <= 10_000)
        .map(Duration::from_millis)
}

/// The binary's `Progress`, and which notices it showed.
pub struct Bars {
    display: Display,
    /// `path: why` of each notice shown (`failed PATH: WHY`), so the end of a run lists only
    /// the failures that were not shown as they happened.
    shown: Mutex<HashSet<String>>,
    /// Set by Ctrl-C: files in flight then report themselves interrupted, which is no failure
    /// (the run stops and says how to resume), so their notices are not shown.
    cancel: Option<&'static AtomicBool>,
    delay: Option<Duration>,
}

enum Display {
    Quiet,
    Plain(Plain),
    Fancy(Fancy),
}

/// Counters shared by both displays.
struct Counts {
    started: Instant,
    files: AtomicU64,
    bytes: AtomicU64,
    /// Found so far while walking; the final totals once `walked`.
    total_files: AtomicU64,
    total_bytes: AtomicU64,
    walked: AtomicBool,
}

impl Counts {
    fn new() -> Counts {
        Counts {
            started: Instant::now(),
            files: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            total_files: AtomicU64::new(0),
            total_bytes: AtomicU64::new(0),
            walked: AtomicBool::new(false),
        }
    }

    /// `3/10 files` (or `3 files` while nothing was found, as in `verify`).
    fn files_text(&self) -> String {
        let (done, total) = (
            self.files.load(Ordering::Relaxed),
            self.total_files.load(Ordering::Relaxed),
        );
        if total > 0 {
            format!("{done}/{total} files")
        } else {
            format!("{done} files")
        }
    }

    /// Bytes per second since the display started.
    fn rate(&self) -> f64 {
        let secs = self.started.elapsed().as_secs_f64();
        if secs > 0.0 {
            self.bytes.load(Ordering::Relaxed) as f64 / secs
        } else {
            0.0
        }
    }

    /// The plain line: done/found, rate, and once the walk has ended a percentage and ETA.
    fn line(&self, verb: &str) -> String {
        let (done, total) = (
            self.bytes.load(Ordering::Relaxed),
            self.total_bytes.load(Ordering::Relaxed),
        );
        let rate = self.rate();
        let mut s = format!(
            "{verb} {}, {}/{}, {}/s",
            self.files_text(),
            human_bytes(done),
            human_bytes(total),
            human_bytes(rate as u64)
        );
        if !self.walked.load(Ordering::Relaxed) {
            s += " (still walking: more to find)";
        } else if total > 0 {
            let pct = (done as f64 / total as f64 * 100.0).min(100.0);
            s += &format!(", {pct:.0}%");
            if rate > 0.0 {
                let left = total.saturating_sub(done) as f64 / rate;
                s += &format!(
                    ", ETA {}",
                    indicatif::HumanDuration(Duration::from_secs_f64(left))
                );
            }
        }
        s
    }
}

pub struct Plain {
    verb: &'static str,
    counts: Counts,
    interval: Duration,
    last: Mutex<Instant>,
}

pub struct Fancy {
    bar: ProgressBar,
    counts: Counts,
    /// The bar shows bytes (encrypt from its first file, the others once the work is known).
    counting: AtomicBool,
}

/// The bar while encrypt's walk goes on: done of found so far, and the rate; no ETA, the
/// total is still growing.
const WALKING: &str =
    "{prefix:>8} [{bar:30}] {bytes}/{total_bytes} found so far, {binary_bytes_per_sec}, {msg} (walking...)";
/// The bar once the work is known.
const KNOWN: &str =
    "{prefix:>8} [{bar:30}] {percent:>3}% {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}, {msg}";

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

impl Bars {
    /// Lists the files that failed, after the run, except those this display already
    /// showed as they failed (so `-q` lists them all: failures are never silent).
    pub fn print_failures(&self, list: &[envseal::pipeline::encrypt::Failure]) {
        super::output::print_all_failures(list.iter().filter(|f| !self.showed(f)));
    }

    /// `interval`: how often plain lines are printed when stderr is not a terminal.
    pub fn new(verb: &'static str, quiet: bool, interval: Duration) -> Bars {
        Bars {
            display: Display::new(verb, quiet, interval),
            shown: Mutex::new(HashSet::new()),
            cancel: None,
            delay: test_delay(),
        }
    }

    /// Notices of failures are not shown once `cancel` is set (Ctrl-C): see `Bars::cancel`.
    pub fn cancelled_by(mut self, cancel: &'static AtomicBool) -> Bars {
        self.cancel = Some(cancel);
        self
    }

    /// Whether a failure was shown as a notice while the run went on.
    fn showed(&self, f: &envseal::pipeline::encrypt::Failure) -> bool {
        self.shown
            .lock()
            .is_ok_and(|s| s.contains(&format!("{}: {}", f.path, f.why)))
    }

    fn cancelled(&self) -> bool {
        self.cancel.is_some_and(|c| c.load(Ordering::Relaxed))
    }
}

impl Drop for Bars {
    fn drop(&mut self) {
        if let Display::Fancy(_) = &self.display {
            if let Ok(mut s) = SHOWN.lock() {
                *s = None;
            }
        }
    }
}

impl Display {
    fn new(verb: &'static str, quiet: bool, interval: Duration) -> Display {
        if quiet {
            return Display::Quiet;
        }
        if !std::io::stderr().is_terminal() {
            return Display::Plain(Plain {
                verb,
                counts: Counts::new(),
                interval,
                last: Mutex::new(Instant::now()),
            });
        }
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr_with_hz(10));
        bar.set_prefix(verb);
        // Encrypt and plan walk their sources: the bar counts what they found from the first file.
        let counting = verb == "encrypt" || verb == "plan";
        if counting {
            bar.set_style(style(WALKING));
            bar.set_message("0 files");
        } else {
            // Decrypt and verify read the manifest first.
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.set_message(format!("{verb}: reading the manifest..."));
        }
        // Drawn now, not at the first steady tick: a short walk would end before it.
        bar.tick();
        bar.enable_steady_tick(TICK);
        if let Ok(mut s) = SHOWN.lock() {
            *s = Some(bar.clone());
        }
        Display::Fancy(Fancy {
            bar,
            counts: Counts::new(),
            counting: AtomicBool::new(counting),
        })
    }
}

impl Plain {
    /// A line now if `force` or the interval has passed since the last one.
    fn line(&self, force: bool) {
        let Ok(mut last) = self.last.lock() else {
            return;
        };
        if !force && last.elapsed() < self.interval {
            return;
        }
        *last = Instant::now();
        eprintln!("envseal: {}", self.counts.line(self.verb));
    }
}

impl Fancy {
    fn update_files(&self, done: u64) {
        let total = self.counts.total_files.load(Ordering::Relaxed);
        // A message per file would contend on the bar's lock with a million small files.
        if done % 32 == 0 || done == total {
            self.bar.set_message(self.counts.files_text());
        }
    }
}

impl Progress for Bars {
    fn wants_totals(&self) -> bool {
        !matches!(self.display, Display::Quiet)
    }

    fn walking(&self, files: u64, bytes: u64) {
        match &self.display {
            Display::Quiet => {}
            Display::Plain(p) => {
                p.counts.total_files.store(files, Ordering::Relaxed);
                p.counts.total_bytes.store(bytes, Ordering::Relaxed);
                p.line(false);
            }
            Display::Fancy(f) => {
                f.counts.total_files.store(files, Ordering::Relaxed);
                f.counts.total_bytes.store(bytes, Ordering::Relaxed);
                // Every entry would contend on the bar's lock; the first ones show at once.
                if files < 64 || files % 64 == 0 {
                    f.bar.set_length(bytes);
                    f.bar.set_message(f.counts.files_text());
                }
            }
        }
    }

    fn start(&self, files: u64, bytes: u64) {
        match &self.display {
            Display::Quiet => {}
            Display::Plain(p) => {
                p.counts.total_files.store(files, Ordering::Relaxed);
                p.counts.total_bytes.store(bytes, Ordering::Relaxed);
                p.counts.walked.store(true, Ordering::Relaxed);
                // One line as the work is known, whatever the interval.
                p.line(true);
            }
            Display::Fancy(f) => {
                f.counts.total_files.store(files, Ordering::Relaxed);
                f.counts.total_bytes.store(bytes, Ordering::Relaxed);
                f.counts.walked.store(true, Ordering::Relaxed);
                if !f.counting.swap(true, Ordering::Relaxed) {
                    // Bytes counted before the bar showed them (none: they come after start).
                    f.bar.set_position(f.counts.bytes.load(Ordering::Relaxed));
                }
                f.bar.set_style(style(KNOWN));
                f.bar.set_length(bytes);
                f.bar.set_message(f.counts.files_text());
            }
        }
    }

    fn bytes(&self, n: u64) {
        match &self.display {
            Display::Quiet => {}
            Display::Plain(p) => {
                p.counts.bytes.fetch_add(n, Ordering::Relaxed);
                p.line(false);
            }
            Display::Fancy(f) => {
                f.counts.bytes.fetch_add(n, Ordering::Relaxed);
                if f.counting.load(Ordering::Relaxed) {
                    f.bar.inc(n);
                }
            }
        }
    }

    fn file_done(&self) {
        if let Some(d) = self.delay {
            std::thread::sleep(d);
        }
        match &self.display {
            Display::Quiet => {}
            Display::Plain(p) => {
                p.counts.files.fetch_add(1, Ordering::Relaxed);
                p.line(false);
            }
            Display::Fancy(f) => {
                let done = f.counts.files.fetch_add(1, Ordering::Relaxed) + 1;
                f.update_files(done);
            }
        }
    }

    fn notice(&self, msg: &str) {
        if matches!(self.display, Display::Quiet) {
            return;
        }
        if self.cancelled() && msg.starts_with("failed ") {
            return;
        }
        if let (Some((_, what)), Ok(mut shown)) = (msg.split_once(' '), self.shown.lock()) {
            shown.insert(what.to_string());
        }
        let msg = super::output::sanitize(msg);
        match &self.display {
            Display::Quiet => {}
            Display::Plain(_) => eprintln!("envseal: {msg}"),
            Display::Fancy(f) => f.bar.println(format!("envseal: {msg}")),
        }
    }

    fn finish(&self) {
        if let Display::Fancy(f) = &self.display {
            f.bar.finish_and_clear();
        }
    }
}
