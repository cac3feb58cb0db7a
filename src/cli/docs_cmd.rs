//! `envseal completions <SHELL>` and `envseal man`: generated from the clap definitions, so
//! they never drift from `--help`.

use std::io::Write;

use anyhow::Context;
use clap::CommandFactory;

use super::args::{Cli, CompletionsArgs, ManArgs};

pub fn completions(a: CompletionsArgs) -> anyhow::Result<i32> {
    let mut cmd = Cli::command();
    let mut buf = Vec::new();
    clap_complete::generate(a.shell, &mut cmd, "envseal", &mut buf);
    print(&buf)
}

/// Writes to stdout; a reader that stops early (`| head`) is not an error.
fn print(bytes: &[u8]) -> anyhow::Result<i32> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(0),
    }
}

pub fn man(a: ManArgs) -> anyhow::Result<i32> {
    let mut cmd = Cli::command();
    cmd.build();
    let Some(dir) = a.out_dir else {
        let mut buf = Vec::new();
        clap_mangen::Man::new(cmd).render(&mut buf)?;
        return print(&buf);
    };
    std::fs::create_dir_all(&dir).map_err(|e| envseal::Error::io(&dir, e))?;
    let mut written = Vec::new();
    write_pages(&cmd, &dir, &mut written)?;
    eprintln!(
        "envseal: wrote {} man pages into {}",
        written.len(),
        dir.display()
    );
    Ok(0)
}

/// One page per command, named as `git` names them: `envseal-kms-create-key.1` (clap's
/// display name once the command is built).
fn write_pages(
    cmd: &clap::Command,
    dir: &std::path::Path,
    written: &mut Vec<std::path::PathBuf>,
) -> anyhow::Result<()> {
    let name = cmd.get_display_name().unwrap_or(cmd.get_name());
    let path = dir.join(format!("{name}.1"));
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut buf)?;
    std::fs::write(&path, buf).with_context(|| format!("{}", path.display()))?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() != "help" {
            write_pages(sub, dir, written)?;
        }
    }
    Ok(())
}
