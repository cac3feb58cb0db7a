//! Progress for the terminal: indicatif bars when stderr is a terminal, plain lines otherwise,
//! nothing with `-q`.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use envseal::progress::Progress;
use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The binary's `Progress`.
pub enum Bars {
    Quiet,
    Plain(Plain),
    Fancy(Fancy),
}

pub struct Plain {
    verb: &'static str,
    files: AtomicU64,
    bytes: AtomicU64,
    total: Mutex<(u64, u64)>,
    last: Mutex<Instant>,
}

pub struct Fancy {
    multi: MultiProgress,
    walk: ProgressBar,
    bytes: ProgressBar,
    files: ProgressBar,
}

impl Bars {
    pub fn new(verb: &'static str, quiet: bool) -> Bars {
        if quiet {
            return Bars::Quiet;
        }
        if !std::io::stderr().is_terminal() {
            return Bars::Plain(Plain {
                verb,
                files: AtomicU64::new(0),
                bytes: AtomicU64::new(0),
                total: Mutex::new((0, 0)),
                last: Mutex::new(Instant::now()),
            });
        }
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(8));
        let walk = multi.add(ProgressBar::new_spinner());
        walk.set_style(
            ProgressStyle::with_template("{spinner} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        walk.enable_steady_tick(Duration::from_millis(120));
        walk.set_message("walking...");
        let bytes = multi.add(ProgressBar::new(0));
        bytes.set_style(
            ProgressStyle::with_template(
                "{prefix:>8} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bytes.set_prefix(verb);
        let files = multi.add(ProgressBar::new(0));
        files.set_style(
            ProgressStyle::with_template("{prefix:>8} {pos}/{len} files")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        files.set_prefix("");
        Bars::Fancy(Fancy {
            multi,
            walk,
            bytes,
            files,
        })
    }
}

impl Plain {
    fn maybe_print(&self) {
        let Ok(mut last) = self.last.lock() else {
            return;
        };
        if last.elapsed() < Duration::from_secs(5) {
            return;
        }
        *last = Instant::now();
        let (tf, tb) = self.total.lock().map(|t| *t).unwrap_or((0, 0));
        eprintln!(
            "envseal: {} {}/{} files, {}/{}",
            self.verb,
            self.files.load(Ordering::Relaxed),
            tf,
            HumanBytes(self.bytes.load(Ordering::Relaxed)),
            HumanBytes(tb)
        );
    }
}

impl Progress for Bars {
    fn walking(&self, files: u64, bytes: u64) {
        if let Bars::Fancy(f) = self {
            if files % 256 == 0 {
                f.walk
                    .set_message(format!("walking: {files} entries, {}", HumanBytes(bytes)));
            }
        }
    }

    fn start(&self, files: u64, bytes: u64) {
        match self {
            Bars::Quiet => {}
            Bars::Plain(p) => {
                if let Ok(mut t) = p.total.lock() {
                    *t = (files, bytes);
                }
            }
            Bars::Fancy(f) => {
                f.walk.finish_and_clear();
                f.bytes.set_length(bytes);
                f.files.set_length(files);
            }
        }
    }

    fn bytes(&self, n: u64) {
        match self {
            Bars::Quiet => {}
            Bars::Plain(p) => {
                p.bytes.fetch_add(n, Ordering::Relaxed);
                p.maybe_print();
            }
            Bars::Fancy(f) => f.bytes.inc(n),
        }
    }

    fn file_done(&self) {
        match self {
            Bars::Quiet => {}
            Bars::Plain(p) => {
                p.files.fetch_add(1, Ordering::Relaxed);
            }
            Bars::Fancy(f) => f.files.inc(1),
        }
    }

    fn notice(&self, msg: &str) {
        let msg = super::output::sanitize(msg);
        match self {
            Bars::Quiet => {}
            Bars::Plain(_) => eprintln!("envseal: {msg}"),
            Bars::Fancy(f) => {
                let _ = f.multi.println(format!("envseal: {msg}"));
            }
        }
    }

    fn finish(&self) {
        if let Bars::Fancy(f) = self {
            f.walk.finish_and_clear();
            f.bytes.finish_and_clear();
            f.files.finish_and_clear();
        }
    }
}
