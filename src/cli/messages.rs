//! Error messages as the user sees them: what failed (naming the argument or path), the cause
//! once, and on a second line what to do.

use std::fmt;
use std::io::ErrorKind;
use std::path::Path;

/// An error with advice for the user.
#[derive(Debug)]
pub struct Advised {
    pub error: anyhow::Error,
    pub hint: String,
}

impl fmt::Display for Advised {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&render(&self.error))
    }
}

impl std::error::Error for Advised {}

/// Attaches advice to an error.
pub fn advise(error: impl Into<anyhow::Error>, hint: impl Into<String>) -> anyhow::Error {
    Advised {
        error: error.into(),
        hint: hint.into(),
    }
    .into()
}

/// A usage error (exit 2) with advice.
pub fn usage(msg: impl Into<String>, hint: impl Into<String>) -> anyhow::Error {
    advise(envseal::Error::Usage(msg.into()), hint)
}

/// The error's chain on one line, each cause once: a library error that already shows its
/// source (`{path}: {io error}`) is not followed by that source again.
pub fn render(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if s.is_empty() || out.ends_with(&s) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&s);
    }
    out
}

/// What the user reads (the error line and an optional hint) and the exit code.
pub fn report(e: &anyhow::Error) -> (String, Option<String>, i32) {
    let (inner, hint) = match e.downcast_ref::<Advised>() {
        Some(a) => (&a.error, Some(a.hint.clone())),
        None => (e, None),
    };
    let lib = inner
        .chain()
        .find_map(|c| c.downcast_ref::<envseal::Error>());
    let code = lib.map_or(1, envseal::Error::exit_code);
    let hint = hint.or_else(|| lib.and_then(io_advice));
    (render(inner), hint, code)
}

/// Advice for an I/O failure on a path, by its kind.
fn io_advice(e: &envseal::Error) -> Option<String> {
    let envseal::Error::Io { path, source } = e else {
        return None;
    };
    let p = path.display();
    Some(match source.kind() {
        ErrorKind::PermissionDenied => {
            format!("check the permissions of {p} and of the directories above it")
        }
        ErrorKind::NotFound => format!("{p} does not exist; check the path"),
        ErrorKind::NotADirectory => {
            format!("a part of {p} is a file, not a directory; check the path")
        }
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded => {
            "free some space, then run the same command again: the run resumes where it stopped"
                .into()
        }
        ErrorKind::ReadOnlyFilesystem => format!("{p} is on a read-only file system"),
        ErrorKind::AlreadyExists => format!("{p} is in the way; move it or choose another path"),
        _ => return None,
    })
}

/// Checks an output directory argument (`-o`): it may be absent (it is created) or a
/// directory, not a file or anything else.
pub fn check_output_dir(flag: &str, path: &Path) -> anyhow::Result<()> {
    match std::fs::metadata(path) {
        Ok(md) if md.is_dir() => Ok(()),
        Ok(_) => Err(usage(
            format!("{flag} {}: exists and is not a directory", path.display()),
            format!("{flag} takes a directory (created if absent); choose a new path"),
        )),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotADirectory => Err(usage(
            format!(
                "{flag} {}: a part of this path is a file, not a directory",
                path.display()
            ),
            format!("{flag} takes a directory (created if absent); choose another path"),
        )),
        // Anything else (permissions) is reported by the command itself, with its path.
        Err(_) => Ok(()),
    }
}

/// Checks a vault argument: it must exist and be a directory that holds a vault (a finished
/// one, or an unfinished run whose journal the reader explains).
pub fn check_vault(vault: &envseal::store::Location) -> anyhow::Result<()> {
    use envseal::format::layout;
    // A vault on a storage service is checked by its store as it is opened.
    let Some(path) = vault.local_dir() else {
        return Ok(());
    };
    match std::fs::metadata(path) {
        Ok(md) if md.is_dir() => {
            let has = |f: &str| std::fs::symlink_metadata(path.join(f)).is_ok();
            if has(layout::MANIFEST) || has(layout::JOURNAL) {
                return Ok(());
            }
            let shown = path.display().to_string();
            let name = path
                .file_name()
                .map_or_else(|| "backup".into(), |n| n.to_string_lossy().into_owned());
            Err(advise(
                envseal::Error::format(&shown, "not an envseal vault (no manifest.jsonl)"),
                format!(
                    "give the directory that \"envseal encrypt SRC -o VAULT\" made (it holds manifest.jsonl); to store this directory in a new vault instead: envseal encrypt {shown} -o {name}.vault"
                ),
            ))
        }
        Ok(_) => Err(usage(
            format!("{}: not a vault (a vault is a directory)", path.display()),
            "give the directory made by \"envseal encrypt ... -o VAULT\"",
        )),
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => Err(usage(
            format!("{}: does not exist", path.display()),
            "give the directory made by \"envseal encrypt ... -o VAULT\"",
        )),
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_io_error_is_printed_once_with_advice() {
        let io = std::io::Error::from(ErrorKind::PermissionDenied);
        let e: anyhow::Error = envseal::Error::io("/x/y", io).into();
        let (line, hint, code) = report(&e);
        assert_eq!(line.matches("ermission denied").count(), 1, "{line}");
        assert!(line.starts_with("/x/y: "), "{line}");
        assert!(hint.unwrap().contains("permissions of /x/y"));
        assert_eq!(code, 1);
    }

    #[test]
    fn advice_keeps_the_exit_code_of_the_error() {
        let (line, hint, code) = report(&usage("-o f: exists", "choose"));
        assert_eq!(
            (line.as_str(), hint.as_deref(), code),
            ("-o f: exists", Some("choose"), 2)
        );
    }
}
