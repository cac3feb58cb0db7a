//! `--help` of every command, shell completions, the man page, `NO_COLOR`, and the README's
//! commands, checked against the built binary.

use crate::common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};

use common::{envseal, stderr, stdout};

fn es(args: &[&str]) -> Output {
    let t = std::env::temp_dir();
    envseal(&t.join("envseal-cli-help-home"))
        .args(args)
        .env_remove("NO_COLOR")
        .env_remove("CLICOLOR_FORCE")
        .output()
        .unwrap()
}

fn help(cmd: &[&str]) -> String {
    let mut a = cmd.to_vec();
    a.push("--help");
    let o = es(&a);
    assert_eq!(o.status.code(), Some(0), "{cmd:?}: {}", stderr(&o));
    stdout(&o)
}

/// The names listed under `Commands:` in a help text.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter(|l| !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .collect()
}

/// Every command path: `["encrypt"]`, `["kms", "create-key"]`, ...
fn all_commands() -> Vec<Vec<String>> {
    let mut out = vec![vec![]];
    for c in subcommands(&help(&[])) {
        let nested = subcommands(&help(&[&c]));
        out.push(vec![c.clone()]);
        for n in nested {
            out.push(vec![c.clone(), n]);
        }
    }
    out
}

/// Arguments and options in a help text whose description is empty. An entry line is indented
/// two spaces and starts with `-` or `<` / `[`; its description follows on the same line
/// (after two spaces) or on the next lines, indented deeper.
fn undescribed(help: &str) -> Vec<String> {
    let lines: Vec<&str> = help.lines().collect();
    let mut bad = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        // The examples that follow the options are not arguments.
        if l.starts_with("Examples:") {
            break;
        }
        // Entries are indented 2 (short flags, arguments) or 6 (long-only flags) spaces;
        // descriptions 10 or more.
        let indent = l.len() - l.trim_start().len();
        let rest = l.trim();
        if !(2..=6).contains(&indent) || !rest.starts_with(['-', '<', '[']) {
            continue;
        }
        let same_line = rest.contains("  ");
        let next_line = lines
            .get(i + 1)
            .is_some_and(|n| n.starts_with("          ") && !n.trim().is_empty());
        if !same_line && !next_line {
            bad.push(rest.trim().to_string());
        }
    }
    bad
}

#[test]
fn the_description_checker_catches_an_empty_one() {
    let h = "Options:\n  -j, --jobs <N>\n  -q, --quiet  No progress\n      --deep\n          Unwrap the keys\n";
    assert_eq!(undescribed(h), ["-j, --jobs <N>"]);
    let with_examples = format!("{h}\nExamples:\n  envseal x \\\n      --kms y --key z\n");
    assert_eq!(undescribed(&with_examples), ["-j, --jobs <N>"]);
}

#[test]
fn every_argument_of_every_command_has_a_description() {
    let cmds = all_commands();
    let names: BTreeSet<String> = cmds.iter().map(|c| c.join(" ")).collect();
    for want in [
        "encrypt",
        "decrypt",
        "verify",
        "ls",
        "kms create-alias",
        "bench",
        "completions",
        "man",
    ] {
        assert!(names.contains(want), "{want} missing from {names:?}");
    }
    // The KMS server is built with the `server` feature only (a default one).
    assert_eq!(
        names.contains("kms serve"),
        cfg!(feature = "server"),
        "{names:?}"
    );
    let mut bad = Vec::new();
    for c in &cmds {
        let args: Vec<&str> = c.iter().map(String::as_str).collect();
        let h = help(&args);
        for b in undescribed(&h) {
            bad.push(format!("envseal {}: {b}", c.join(" ")));
        }
    }
    assert!(
        bad.is_empty(),
        "arguments without a description:\n{}",
        bad.join("\n")
    );
}

#[test]
fn bash_completions_parse_and_name_the_commands() {
    let o = es(&["completions", "bash"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let script = stdout(&o);
    for w in [
        "encrypt",
        "decrypt",
        "create-alias",
        "--only",
        "--progress-interval",
    ] {
        assert!(script.contains(w), "{w} not completed");
    }
    let t = tempfile::tempdir().unwrap();
    let f = t.path().join("envseal.bash");
    std::fs::write(&f, &script).unwrap();
    let n = Command::new("bash").arg("-n").arg(&f).output().unwrap();
    assert!(n.status.success(), "bash -n: {}", stderr(&n));
    for shell in ["zsh", "fish"] {
        let o = es(&["completions", shell]);
        assert_eq!(o.status.code(), Some(0), "{shell}");
        assert!(stdout(&o).contains("create-alias"), "{shell}");
    }
    let o = es(&["completions", "tcsh"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn the_man_page_names_every_command_and_renders() {
    let o = es(&["man"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let troff = stdout(&o);
    assert!(
        troff.contains(".TH envseal 1"),
        "{}",
        &troff[..200.min(troff.len())]
    );
    assert!(
        troff.contains("encrypt whole directory trees"),
        "no description in NAME"
    );
    for c in [
        "encrypt",
        "decrypt",
        "verify",
        "ls",
        "kms",
        "bench",
        "completions",
        "man",
    ] {
        assert!(
            troff.contains(&format!("envseal\\-{c}(1)")),
            "{c} not listed"
        );
    }
    assert!(
        troff.contains("Exit codes"),
        "no exit codes in the man page"
    );
    // One page per command with --out-dir.
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("man1");
    let o = es(&["man", "--out-dir", dir.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    for page in [
        "envseal.1",
        "envseal-encrypt.1",
        "envseal-kms-create-alias.1",
    ] {
        assert!(dir.join(page).is_file(), "{page} not written");
    }
    assert_eq!(
        dir.join("envseal-kms-serve.1").is_file(),
        cfg!(feature = "server")
    );
    let enc = std::fs::read_to_string(dir.join("envseal-encrypt.1")).unwrap();
    assert!(
        enc.contains("segment\\-size"),
        "envseal-encrypt.1 lacks its options"
    );
    // man(1) renders it (where man is installed).
    if Path::new("/usr/bin/man").exists() {
        let r = Command::new("man")
            .arg("-l")
            .arg(dir.join("envseal.1"))
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "100")
            .output()
            .unwrap();
        assert!(r.status.success(), "man -l: {}", stderr(&r));
        let text = stdout(&r);
        assert!(text.contains("NAME") && text.contains("encrypt"), "{text}");
    }
}

#[test]
fn no_color_wins_over_clicolor_force() {
    let run = |no_color: bool| {
        let t = std::env::temp_dir();
        let mut c = envseal(&t.join("envseal-cli-help-home"));
        c.arg("encrypt").env("CLICOLOR_FORCE", "1");
        if no_color {
            c.env("NO_COLOR", "1");
        } else {
            c.env_remove("NO_COLOR");
        }
        stderr(&c.output().unwrap())
    };
    assert!(
        run(false).contains('\x1b'),
        "CLICOLOR_FORCE gave no colour: the check below proves nothing"
    );
    assert!(!run(true).contains('\x1b'), "colour despite NO_COLOR");
}

/// Every `envseal <command> ... --flag` the README shows is a real command with that flag.
#[test]
fn the_readme_commands_and_flags_exist() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let cmds = all_commands();
    let known: BTreeSet<Vec<String>> = cmds.into_iter().collect();
    let mut helps = std::collections::HashMap::new();
    let mut checked = 0;
    let mut in_code = false;
    for line in readme.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if !in_code {
            continue;
        }
        // A line may hold several commands (`a && b`, `$B encrypt`).
        for part in line.split(['&', '|', ';', '(', ')']) {
            let words: Vec<&str> = part.split_whitespace().collect();
            let Some(start) = words.iter().position(|w| *w == "envseal" || *w == "$B") else {
                continue;
            };
            let words = &words[start + 1..];
            // A build without the `server` feature has no `kms serve`.
            if !cfg!(feature = "server") && words.starts_with(&["kms", "serve"]) {
                continue;
            }
            let Some(first) = words.first() else { continue };
            let mut cmd = vec![first.to_string()];
            if let Some(second) = words.get(1) {
                if known.contains(&vec![first.to_string(), second.to_string()]) {
                    cmd.push(second.to_string());
                }
            }
            if !known.contains(&cmd) {
                // Prose like "envseal kms create-key|create-alias": check each alternative.
                let alts: Vec<&str> = cmd.last().unwrap().split('|').collect();
                let ok = alts.iter().all(|a| {
                    let mut c = cmd.clone();
                    *c.last_mut().unwrap() = a.to_string();
                    known.contains(&c)
                });
                assert!(ok, "README names an unknown command: {line}");
                continue;
            }
            let h = helps.entry(cmd.clone()).or_insert_with(|| {
                let a: Vec<&str> = cmd.iter().map(String::as_str).collect();
                help(&a)
            });
            for w in words {
                let w = w.trim_start_matches('[');
                if let Some(flag) = w.strip_prefix("--") {
                    let flag: String = flag
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                        .collect();
                    if flag.is_empty() {
                        continue;
                    }
                    assert!(
                        h.contains(&format!("--{flag}")),
                        "README: envseal {} has no --{flag} ({line})",
                        cmd.join(" ")
                    );
                    checked += 1;
                }
            }
        }
    }
    assert!(
        checked >= 20,
        "only {checked} README flags found: the parser is broken"
    );
}

/// Every relative link in the README and docs/ names a file of the repository (KMS-SERVE.md
/// once pointed to a wire reference that was not in it).
#[test]
fn doc_links_point_to_files_in_the_repository() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut docs = vec![root.join("README.md")];
    for e in std::fs::read_dir(root.join("docs")).unwrap() {
        docs.push(e.unwrap().path());
    }
    let mut checked = 0;
    for doc in docs
        .iter()
        .filter(|d| d.extension().is_some_and(|x| x == "md"))
    {
        let text = std::fs::read_to_string(doc).unwrap();
        for (i, _) in text.match_indices("](") {
            let rest = &text[i + 2..];
            let target = &rest[..rest.find(')').unwrap_or(0)];
            let file = target.split('#').next().unwrap_or("");
            if file.is_empty() || file.contains("://") {
                continue;
            }
            let path = doc.parent().unwrap().join(file);
            assert!(path.exists(), "{}: link to missing {target}", doc.display());
            checked += 1;
        }
        // Spelled in parts, so that this test does not itself cite the directory.
        let outside = ["..", "shared", ""].join("/");
        assert!(
            !text.contains(&outside),
            "{} cites a file outside the repository",
            doc.display()
        );
    }
    assert!(checked >= 5, "only {checked} links found");
}
