//! The envseal binary: a thin CLI over the library.

mod cli;

use clap::Parser;

use cli::args::{Cli, Command, KmsCommand};

fn main() {
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("envseal: error: {e:#}");
            e.downcast_ref::<envseal::Error>()
                .map(|e| e.exit_code())
                .unwrap_or(1)
        }
    };
    std::process::exit(code);
}

fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Kms(KmsCommand::Serve(args)) => cli::serve_cmd::run(args),
        Command::Kms(cmd) => cli::kms_cmd::run(cmd),
        Command::Bench(args) => cli::bench_cmd::run(args),
        _ => anyhow::bail!("not built yet"),
    }
}
