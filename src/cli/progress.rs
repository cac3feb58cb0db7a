//! Progress for the terminal: one indicatif bar when stderr is a terminal, plain lines every
//! `--progress-interval` otherwise, nothing with `-q`.

use std::collections::HashSet;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use envseal::progress::Progress;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::output::human_bytes;

/// How often the walking spinner and the bar are redrawn: soon enough that even a walk of a
/// few thousand files shows the spinner.
const TICK: Duration = Duration::from_millis(100);

/// The binary's `Progress`, and which notices it showed.
pub struct Bars {
    display: Display,
    /// `path: why` of each notice shown (`failed PATH: WHY`), so the end of a run lists only
    /// the failures that were not shown as they happened.
    shown: Mutex<HashSet<String>>,
}

enum Display {
    Quiet,
    Plain(Plain),
    Fancy(Fancy),
}

/// Counters shared by both displays.
#[derive(Default)]
struct Counts {
    files: AtomicU64,
    bytes: AtomicU64,
    total_files: AtomicU64,
    total_bytes: AtomicU64,
}

impl Counts {
    /// `3/10 files` (or `3 files` while the total is unknown, as in `verify`).
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
}

pub struct Plain {
    verb: &'static str,
    counts: Counts,
    interval: Duration,
    last: Mutex<Instant>,
}

pub struct Fancy {
    verb: &'static str,
    multi: MultiProgress,
    walk: ProgressBar,
    bar: ProgressBar,
    counts: Counts,
    started: AtomicBool,
}

impl Bars {
    /// `interval`: how often plain lines are printed when stderr is not a terminal.
    pub fn new(verb: &'static str, quiet: bool, interval: Duration) -> Bars {
        Bars {
            display: Display::new(verb, quiet, interval),
            shown: Mutex::new(HashSet::new()),
        }
    }

    /// Whether a failure was shown as a notice while the run went on.
    pub fn showed(&self, f: &envseal::encrypt::Failure) -> bool {
        self.shown
            .lock()
            .is_ok_and(|s| s.contains(&format!("{}: {}", f.path, f.why)))
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
                counts: Counts::default(),
                interval,
                last: Mutex::new(Instant::now()),
            });
        }
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10));
        let walk = multi.add(ProgressBar::new_spinner());
        walk.set_style(
            ProgressStyle::with_template("{spinner} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        // encrypt walks its sources; decrypt and verify read the manifest first.
        walk.set_message(if verb == "encrypt" {
            format!("{verb}: walking...")
        } else {
            format!("{verb}: reading the manifest...")
        });
        // Drawn now, not at the first steady tick: a short walk would end before it.
        walk.tick();
        walk.enable_steady_tick(TICK);
        // One bar for bytes and files, so a full byte bar never hides files still counting.
        let bar = ProgressBar::hidden();
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>8} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}, {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(verb);
        Display::Fancy(Fancy {
            verb,
            multi,
            walk,
            bar,
            counts: Counts::default(),
            started: AtomicBool::new(false),
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
        let c = &self.counts;
        eprintln!(
            "envseal: {} {}, {}/{}",
            self.verb,
            c.files_text(),
            human_bytes(c.bytes.load(Ordering::Relaxed)),
            human_bytes(c.total_bytes.load(Ordering::Relaxed))
        );
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
    fn walking(&self, files: u64, bytes: u64) {
        match &self.display {
            Display::Quiet => {}
            Display::Plain(p) => {
                if let Ok(mut last) = p.last.lock() {
                    if last.elapsed() >= p.interval {
                        *last = Instant::now();
                        eprintln!(
                            "envseal: {} walking: {files} files, {} found",
                            p.verb,
                            human_bytes(bytes)
                        );
                    }
                }
            }
            Display::Fancy(f) => {
                if files % 64 == 0 {
                    f.walk.set_message(format!(
                        "{}: walking: {files} files, {} found",
                        f.verb,
                        human_bytes(bytes)
                    ));
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
                // One line as the work starts, whatever the interval.
                p.line(true);
            }
            Display::Fancy(f) => {
                f.counts.total_files.store(files, Ordering::Relaxed);
                f.counts.total_bytes.store(bytes, Ordering::Relaxed);
                f.walk.finish_and_clear();
                if !f.started.swap(true, Ordering::Relaxed) {
                    let bar = f.multi.add(f.bar.clone());
                    bar.set_length(bytes);
                    bar.set_message(f.counts.files_text());
                    bar.enable_steady_tick(TICK);
                }
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
                f.bar.inc(n);
            }
        }
    }

    fn file_done(&self) {
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
        if let (Some((_, what)), Ok(mut shown)) = (msg.split_once(' '), self.shown.lock()) {
            shown.insert(what.to_string());
        }
        let msg = super::output::sanitize(msg);
        match &self.display {
            Display::Quiet => {}
            Display::Plain(_) => eprintln!("envseal: {msg}"),
            Display::Fancy(f) => {
                let _ = f.multi.println(format!("envseal: {msg}"));
            }
        }
    }

    fn finish(&self) {
        if let Display::Fancy(f) = &self.display {
            f.walk.finish_and_clear();
            f.bar.finish_and_clear();
        }
    }
}
