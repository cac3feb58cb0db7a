//! The envseal binary: a thin CLI over the library.

mod cli;

use std::sync::atomic::{AtomicBool, Ordering};

use clap::{CommandFactory, FromArgMatches};

use cli::args::{Cli, Command};

/// Set by Ctrl-C / SIGTERM; runs stop between segments and leave a resumable vault.
static CANCEL: AtomicBool = AtomicBool::new(false);
/// `mount` runs: Ctrl-C unmounts (nothing to resume).
static MOUNTED: AtomicBool = AtomicBool::new(false);

/// A minimal stderr logger: warnings by default, `-v` info, `-vv` debug.
struct StderrLog(log::LevelFilter);

impl log::Log for StderrLog {
    fn enabled(&self, m: &log::Metadata) -> bool {
        // The FUSE library's own lines (requests it answers by default, an unmount already
        // done by `fusermount3 -u`) are its debugging, not the user's news: -vv shows them.
        if m.target().starts_with("fuser") {
            return self.0 >= log::LevelFilter::Debug;
        }
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
    // `envseal kms list | head`: a reader that goes away ends us quietly, as it ends `cat`
    // (Rust ignores SIGPIPE, and a print to the closed pipe would panic).
    // SAFETY: setting a signal's disposition to the default before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // NO_COLOR (no-color.org) wins over clap's own terminal detection and CLICOLOR_FORCE.
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let mut cmd = Cli::command();
    if no_color {
        cmd = cmd.color(clap::ColorChoice::Never);
    }
    let cli = match cmd
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m).map(|c| (c, m)))
    {
        Ok((mut cli, m)) => {
            if let Command::Encrypt(a) = &mut cli.command {
                a.kms_flag = m
                    .subcommand_matches("encrypt")
                    .and_then(|e| e.value_source("kms"))
                    == Some(clap::parser::ValueSource::CommandLine);
            }
            cli
        }
        // A value refused by our own parsers (src/cli/values.rs) reads as our other usage
        // errors do; everything else (help, version, unknown flags) is clap's to print.
        Err(e) => match cli::values::BadValue::in_clap_error(&e) {
            Some(bad) => std::process::exit(report(&bad.clone().into_error())),
            None => e.exit(),
        },
    };
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
        if MOUNTED.load(Ordering::SeqCst) {
            eprintln!("envseal: unmounting");
        } else {
            eprintln!("envseal: stopping (the run can be resumed; Ctrl-C again to quit at once)");
        }
    });
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => report(&e),
    };
    std::process::exit(code);
}

/// Prints an error and its hint on stderr; returns the exit code.
fn report(e: &anyhow::Error) -> i32 {
    let (line, hint, code) = cli::messages::report(e);
    eprintln!("envseal: error: {}", cli::output::sanitize(&line));
    if let Some(h) = hint {
        eprintln!("envseal: hint: {}", cli::output::sanitize(&h));
    }
    code
}

fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Encrypt(a) => cli::run::encrypt_cmd(a, &CANCEL),
        Command::Plan(a) => cli::plan_cmd::plan_cmd(a, &CANCEL),
        Command::Decrypt(a) => cli::run::decrypt_cmd(a, &CANCEL),
        Command::Verify(a) => cli::run::verify_cmd(a, &CANCEL),
        Command::Ls(a) => cli::run::ls_cmd(a),
        Command::Mount(a) => {
            MOUNTED.store(true, Ordering::SeqCst);
            cli::mount_cmd::run(a, &CANCEL)
        }
        Command::Rewrap(a) => cli::lifecycle::rewrap_cmd(a),
        Command::Merge(a) => cli::merge_cmd::merge_cmd(a),
        Command::ImportLegacy(a) => cli::lifecycle::import_legacy_cmd(a, &CANCEL),
        #[cfg(feature = "server")]
        Command::Kms(cli::args::KmsCommand::Serve(args)) => cli::serve_cmd::run(args),
        Command::Kms(cmd) => cli::kms_cmd::run(cmd),
        Command::Bench(args) => cli::bench_cmd::run(args),
        Command::Completions(args) => cli::docs_cmd::completions(args),
        Command::Man(args) => cli::docs_cmd::man(args),
    }
}
