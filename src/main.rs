//! The envseal binary: a thin CLI over the library.

mod cli;

use std::sync::atomic::{AtomicBool, Ordering};

use clap::Parser;

use cli::args::{Cli, Command, KmsCommand};

/// Set by Ctrl-C / SIGTERM; runs stop between segments and leave a resumable vault.
static CANCEL: AtomicBool = AtomicBool::new(false);

/// A minimal stderr logger: warnings by default, `-v` info, `-vv` debug.
struct StderrLog(log::LevelFilter);

impl log::Log for StderrLog {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= self.0
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            let msg = cli::output::sanitize(&r.args().to_string());
            match r.level() {
                log::Level::Error | log::Level::Warn => eprintln!("envseal: {msg}"),
                _ => eprintln!("envseal: [{}] {msg}", r.level().as_str().to_lowercase()),
            }
        }
    }
    fn flush(&self) {}
}

fn main() {
    // Before anything holds a key or a passphrase.
    envseal::limits::disable_core_dumps();
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Info,
        _ => log::LevelFilter::Debug,
    };
    if log::set_boxed_logger(Box::new(StderrLog(level))).is_ok() {
        log::set_max_level(level);
    }
    let _ = ctrlc::set_handler(|| {
        if CANCEL.swap(true, Ordering::SeqCst) {
            std::process::exit(130); // second Ctrl-C: stop now
        }
        eprintln!("envseal: stopping (the run can be resumed; Ctrl-C again to quit at once)");
    });
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!(
                "envseal: error: {}",
                cli::output::sanitize(&format!("{e:#}"))
            );
            e.downcast_ref::<envseal::Error>()
                .map(|e| e.exit_code())
                .unwrap_or(1)
        }
    };
    std::process::exit(code);
}

fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Encrypt(a) => cli::run::encrypt_cmd(a, &CANCEL),
        Command::Decrypt(a) => cli::run::decrypt_cmd(a, &CANCEL),
        Command::Verify(a) => cli::run::verify_cmd(a, &CANCEL),
        Command::Ls(a) => cli::run::ls_cmd(a),
        Command::Kms(KmsCommand::Serve(args)) => cli::serve_cmd::run(args),
        Command::Kms(cmd) => cli::kms_cmd::run(cmd),
        Command::Bench(args) => cli::bench_cmd::run(args),
    }
}
