//! The messages a new user meets, as the built binary prints them: each wrong argument is
//! exit 2, each message names the argument or path, says what to do, and never repeats the
//! OS error. Small data only: these run in well under a second each.

use crate::common;

use std::fs;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

#[cfg(feature = "server")]
use common::servers::{KmsServer, ALI_ID, ALI_SECRET};
use common::tree::{flip_byte, gen_file, objects_by_path, write};
use common::{envseal, stderr, stdout};
use serde_json::Value;

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

/// Runs `envseal ARGS` with a private home; returns the output.
fn es(home: &Path, args: &[&str]) -> Output {
    envseal(home).args(args).output().unwrap()
}

/// Every message keeps its OS error to one mention and has an `envseal: error:` line.
fn assert_error(o: &Output, exit: i32, needles: &[&str]) {
    let e = stderr(o);
    assert_eq!(code(o), exit, "{e}");
    assert!(e.contains("envseal: error: "), "{e}");
    assert!(e.matches("os error").count() <= 1, "repeated OS error: {e}");
    for n in needles {
        assert!(e.contains(n), "{n:?} not in: {e}");
    }
}

struct Fx {
    t: tempfile::TempDir,
}

impl Fx {
    fn new() -> Fx {
        let t = tempfile::tempdir().unwrap();
        write(&t.path().join("s/a.txt"), b"a\n");
        write(&t.path().join("s/sub/b.txt"), b"b\n");
        write(&t.path().join("afile"), b"x");
        Fx { t }
    }
    fn p(&self, rel: &str) -> String {
        self.t.path().join(rel).display().to_string()
    }
    fn home(&self) -> std::path::PathBuf {
        self.t.path().join("home")
    }
    fn run(&self, args: &[&str]) -> Output {
        es(&self.home(), args)
    }
    /// A finished vault of `s` at `v`.
    fn vault(&self) -> String {
        let v = self.p("v");
        if !Path::new(&v).exists() {
            let o = self.run(&["encrypt", "-q", &self.p("s"), "-o", &v]);
            assert_eq!(code(&o), 0, "{}", stderr(&o));
        }
        v
    }
}

#[test]
fn output_naming_a_file_is_a_usage_error_with_advice() {
    let f = Fx::new();
    let afile = f.p("afile");
    let o = f.run(&["encrypt", &f.p("s"), "-o", &afile]);
    assert_error(
        &o,
        2,
        &[
            &format!("-o {afile}: exists and is not a directory"),
            "hint: -o takes a directory",
        ],
    );
    let v = f.vault();
    let o = f.run(&["decrypt", &v, "-o", &afile]);
    assert_error(
        &o,
        2,
        &[
            &format!("-o {afile}: exists and is not a directory"),
            "hint: -o takes a directory",
        ],
    );
    // Below a file: "Not a directory" from the OS, once, as a usage error.
    let o = f.run(&["decrypt", &v, "-o", &format!("{afile}/out")]);
    assert_error(
        &o,
        2,
        &[
            "a part of this path is a file",
            "hint: -o takes a directory",
        ],
    );
    assert_eq!(fs::read(&afile).unwrap(), b"x", "the file was touched");
}

#[test]
fn an_io_error_is_printed_once_with_advice() {
    // ENVSEAL_HOME is a file: the key store cannot be made below it.
    let f = Fx::new();
    let o = envseal(Path::new(&f.p("afile")))
        .args(["encrypt", "-q", &f.p("s"), "-o", &f.p("v")])
        .output()
        .unwrap();
    assert_error(
        &o,
        1,
        &[
            "Not a directory",
            "hint: check that the key store directory",
            "--kms local:<DIR>",
        ],
    );
    assert_eq!(
        stderr(&o).matches("Not a directory").count(),
        1,
        "{}",
        stderr(&o)
    );
}

#[test]
fn an_unknown_provider_lists_the_known_ones() {
    let f = Fx::new();
    let o = f.run(&["encrypt", &f.p("s"), "-o", &f.p("v"), "--kms", "gcp:x"]);
    assert_error(
        &o,
        2,
        &[
            "unknown KMS provider \"gcp\"",
            "local, local:<DIR>, aliyun:",
            "aws:<http(s)",
        ],
    );
    assert!(!Path::new(&f.p("v")).exists());
    let o = f.run(&["decrypt", &f.vault(), "-o", &f.p("out"), "--kms", "gcp:x"]);
    assert_error(&o, 2, &["unknown KMS provider \"gcp\""]);
}

#[test]
fn aws_without_an_endpoint_says_it_needs_one() {
    let f = Fx::new();
    let o = f.run(&["encrypt", &f.p("s"), "-o", &f.p("v"), "--kms", "aws:"]);
    assert_error(
        &o,
        2,
        &[
            "needs the endpoint URL",
            "aws:https://kms.us-east-1.amazonaws.com",
        ],
    );
}

#[test]
fn kms_commands_that_do_not_apply_to_aws_say_what_to_run_instead() {
    let f = Fx::new();
    let aws = "aws:https://kms.us-east-1.amazonaws.com";
    for (args, instead) in [
        (vec!["kms", "create-key"], "aws kms create-key"),
        (
            vec!["kms", "create-alias", "alias/a", "k1"],
            "aws kms create-alias --alias-name alias/a --target-key-id k1",
        ),
        (vec!["kms", "list"], "aws kms list-keys"),
        (
            vec!["kms", "describe", "k1"],
            "aws kms describe-key --key-id k1",
        ),
        (
            vec!["kms", "enable-key", "k1"],
            "aws kms enable-key --key-id k1",
        ),
        (
            vec!["kms", "disable-key", "k1"],
            "aws kms disable-key --key-id k1",
        ),
        (
            vec!["kms", "schedule-key-deletion", "k1"],
            "aws kms schedule-key-deletion --key-id k1 --pending-window-in-days 30",
        ),
    ] {
        let mut a = args.clone();
        a.extend(["--kms", aws]);
        let o = f.run(&a);
        assert_error(&o, 2, &["does not manage AWS KMS keys", instead]);
        // Their help does not offer aws: either.
        let mut h = args[..2].to_vec();
        h.push("--help");
        let help = stdout(&f.run(&h));
        assert!(
            help.contains("--kms <URL>") && !help.contains("aws:"),
            "{help}"
        );
    }
}

#[test]
fn an_unknown_key_hints_kms_list() {
    let f = Fx::new();
    let o = f.run(&[
        "encrypt",
        "-q",
        &f.p("s"),
        "-o",
        &f.p("v"),
        "--key",
        "alias/nope",
    ]);
    assert_error(
        &o,
        1,
        &[
            "alias/nope",
            "hint: no key or alias \"alias/nope\"",
            "envseal kms list",
        ],
    );
}

#[test]
fn a_disabled_key_hints_enable_key() {
    let f = Fx::new();
    let o = f.run(&["kms", "create-key"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let meta: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let id = meta["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
    assert_eq!(code(&f.run(&["kms", "disable-key", &id])), 0);
    let o = f.run(&["encrypt", "-q", &f.p("s"), "-o", &f.p("v"), "--key", &id]);
    assert_error(
        &o,
        1,
        &[
            "Rejected.Disabled",
            &format!("\"envseal kms enable-key {id}\""),
        ],
    );
}

#[test]
#[cfg(feature = "server")]
fn aliyun_without_key_hints_key_or_create_alias() {
    let server = KmsServer::start();
    let f = Fx::new();
    let o = envseal(&f.home())
        .args([
            "encrypt",
            "-q",
            &f.p("s"),
            "-o",
            &f.p("v"),
            "--kms",
            &server.url(),
        ])
        .env("ALIBABA_CLOUD_ACCESS_KEY_ID", ALI_ID)
        .env("ALIBABA_CLOUD_ACCESS_KEY_SECRET", ALI_SECRET)
        .output()
        .unwrap();
    assert_error(
        &o,
        1,
        &[
            "Forbidden.AliasNotFound",
            "hint: no --key was given",
            "pass --key",
            &format!(
                "envseal kms create-alias alias/envseal/default <KEY_ID> --kms {}",
                server.url()
            ),
        ],
    );
}

#[test]
fn a_new_local_store_says_it_is_unsealed_once() {
    let f = Fx::new();
    let o = f.run(&["encrypt", "-q", &f.p("s"), "-o", &f.p("v")]);
    assert_eq!(code(&o), 0);
    let e = stderr(&o);
    let line: Vec<&str> = e
        .lines()
        .filter(|l| l.contains("unsealed key store"))
        .collect();
    assert_eq!(line.len(), 1, "{e}");
    assert!(line[0].contains("ENVSEAL_PASSPHRASE") && line[0].contains("back this directory up"));
    let o = f.run(&["encrypt", "-q", &f.p("s"), "-o", &f.p("v2")]);
    assert!(!stderr(&o).contains("unsealed"), "{}", stderr(&o));
    // A store created with a passphrase is sealed and says nothing of the kind.
    let home = f.t.path().join("home2");
    let o = envseal(&home)
        .args(["encrypt", "-q", &f.p("s"), "-o", &f.p("v3")])
        .env("ENVSEAL_PASSPHRASE", "correct horse")
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(!stderr(&o).contains("unsealed"), "{}", stderr(&o));
}

/// Kills an encrypt as soon as its journal exists: an unfinished vault.
fn unfinished(f: &Fx, src: &str, vault: &str) {
    for i in 0..64u64 {
        gen_file(&Path::new(src).join(format!("f{i:02}")), 1 << 20, i);
    }
    let mut child = envseal(&f.home())
        .args(["encrypt", "-q", "-j", "1", src, "-o", vault])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let journal = Path::new(vault).join("journal.jsonl");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !journal.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        journal.exists() && !Path::new(vault).join("manifest.jsonl").exists(),
        "the run was not caught unfinished"
    );
}

#[test]
fn an_unfinished_vault_names_the_command_that_started_it() {
    let f = Fx::new();
    let (src, v) = (f.p("big"), f.p("v"));
    unfinished(&f, &src, &v);
    let o = f.run(&["encrypt", "-q", "--segment-size", "64KiB", &src, "-o", &v]);
    assert_error(
        &o,
        2,
        &[
            "unfinished run with other arguments",
            &format!("started by: envseal encrypt {src} -o {v};"),
            "run that command again",
        ],
    );
}

/// A run made with `--compress` is finished with it: the same arguments without it are
/// other arguments, and the hint spells the level.
#[test]
fn an_unfinished_compressed_run_names_its_level() {
    let f = Fx::new();
    let (src, v) = (f.p("big"), f.p("v"));
    for i in 0..64u64 {
        gen_file(&Path::new(&src).join(format!("f{i:02}")), 1 << 20, i);
    }
    let mut child = envseal(&f.home())
        .args([
            "encrypt",
            "-q",
            "-j",
            "1",
            "--compress",
            "zstd:7",
            &src,
            "-o",
            &v,
        ])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let journal = Path::new(&v).join("journal.jsonl");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !journal.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(journal.exists(), "the run was not caught unfinished");
    let o = f.run(&["encrypt", "-q", &src, "-o", &v]);
    assert_error(
        &o,
        2,
        &[
            "unfinished run with other arguments",
            &format!("started by: envseal encrypt {src} -o {v} --compress zstd:7;"),
        ],
    );
    let o = f.run(&["encrypt", "-q", "--compress", "zstd:7", &src, "-o", &v]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

#[test]
fn a_vault_that_does_not_exist_is_named_as_such() {
    let f = Fx::new();
    let missing = f.p("nothere");
    for args in [
        vec!["verify", missing.as_str()],
        vec!["verify", "--deep", missing.as_str()],
        vec!["ls", missing.as_str()],
        vec![
            "decrypt",
            missing.as_str(),
            "-o",
            "/nonexistent-dir-for-test",
        ],
    ] {
        let o = f.run(&args);
        assert_error(
            &o,
            2,
            &[
                &format!("{missing}: does not exist"),
                "hint: give the directory made by",
            ],
        );
        assert!(!stderr(&o).contains("not an envseal vault"));
    }
    assert!(!Path::new("/nonexistent-dir-for-test").exists());
    let o = f.run(&["verify", &f.p("afile")]);
    assert_error(&o, 2, &["not a vault (a vault is a directory)"]);
}

#[test]
fn star_in_only_and_exclude_stops_at_a_slash() {
    let f = Fx::new();
    let v = f.vault();
    let out = f.p("out");
    let o = f.run(&["decrypt", "-q", &v, "-o", &out, "--only", "s/*.txt"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(Path::new(&out).join("s/a.txt").exists());
    assert!(
        !Path::new(&out).join("s/sub/b.txt").exists(),
        "* crossed a /"
    );
    let out2 = f.p("out2");
    let o = f.run(&["decrypt", "-q", &v, "-o", &out2, "--only", "s/**/*.txt"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        Path::new(&out2).join("s/sub/b.txt").exists() && Path::new(&out2).join("s/a.txt").exists()
    );
    // A glob without a slash is matched against names too: it skips at any depth.
    let o = f.run(&[
        "encrypt",
        "-q",
        "--json",
        &f.p("s"),
        "-o",
        &f.p("v2"),
        "--exclude",
        "*.txt",
    ]);
    let j: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(j["files"], 0, "{j}");
    let help = stdout(&f.run(&["decrypt", "--help"]));
    let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        help.contains("'*' and '?' stop at '/'") && help.contains("'**' crosses"),
        "{help}"
    );
}

#[test]
fn sizes_take_decimal_and_binary_units_distinctly() {
    let f = Fx::new();
    let o = f.run(&[
        "encrypt",
        &f.p("s"),
        "-o",
        &f.p("v"),
        "--segment-size",
        "1MB",
    ]);
    assert_error(
        &o,
        2,
        &[
            "--segment-size 1MB: must be a power of two",
            "1MB is 1000000 bytes",
        ],
    );
    let o = f.run(&[
        "encrypt",
        &f.p("s"),
        "-o",
        &f.p("v"),
        "--segment-size",
        "1XB",
    ]);
    assert_error(
        &o,
        2,
        &[
            "--segment-size: invalid size '1XB'",
            "KB, MB, GB, TB for powers of 1000",
        ],
    );
    let o = f.run(&[
        "encrypt",
        "-q",
        &f.p("s"),
        "-o",
        &f.p("v"),
        "--segment-size",
        "64KiB",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

/// `-j` and `--segment-size` are refused as the command line is read, in envseal's words
/// (naming the flag and the range), before any path is looked at.
#[test]
fn bad_jobs_and_segment_sizes_are_usage_errors_of_every_command() {
    let f = Fx::new();
    let missing = f.p("no-such-source");
    for args in [
        vec!["encrypt", missing.as_str(), "-o", "v", "-j", "0"],
        vec!["decrypt", missing.as_str(), "-o", "d", "--jobs", "0"],
        vec!["verify", missing.as_str(), "-j", "zero"],
        vec!["bench", "-j", "1.5"],
    ] {
        let o = f.run(&args);
        let value = args.last().unwrap();
        assert_error(
            &o,
            2,
            &[
                &format!("-j {value}: "),
                "a whole number, at least one thread",
            ],
        );
        assert!(!stderr(&o).contains("no-such-source"), "{}", stderr(&o));
    }
    let o = f.run(&["encrypt", &missing, "-o", "v", "--segment-size", "128MiB"]);
    assert_error(
        &o,
        2,
        &["--segment-size 128MiB: must be a power of two from 4KiB to 64MiB"],
    );
    assert!(!stderr(&o).contains("no-such-source"), "{}", stderr(&o));
}

#[test]
fn a_failed_file_is_listed_once() {
    let f = Fx::new();
    gen_file(&f.t.path().join("s/big.bin"), 3 << 20, 7);
    let v = f.vault();
    let (obj, off) = objects_by_path(Path::new(&v))["s/big.bin"].clone();
    flip_byte(&Path::new(&v).join(obj), off + 100);
    for (i, quiet) in [false, true].into_iter().enumerate() {
        let out = f.p(&format!("out{i}"));
        let mut args = vec!["decrypt", v.as_str(), "-o", out.as_str()];
        if quiet {
            args.push("-q");
        }
        let o = f.run(&args);
        assert_eq!(code(&o), 3, "{}", stderr(&o));
        let e = stderr(&o);
        assert_eq!(e.matches("s/big.bin").count(), 1, "quiet={quiet}: {e}");
    }
}

#[test]
fn summaries_use_human_units_and_json_keeps_exact_numbers() {
    let f = Fx::new();
    gen_file(&f.t.path().join("s/big.bin"), 3 << 20, 7);
    let o = f.run(&["encrypt", "--json", &f.p("s"), "-o", &f.p("v")]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("3.00 MiB in "), "{e}");
    assert!(!e.contains("bytes in"), "{e}");
    let j: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(j["bytes"], (3u64 << 20) + 4);
    assert_eq!(j["schema_version"], 1);
    let o = f.run(&["verify", "--json", &f.p("v")]);
    let j: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(
        (j["schema_version"].clone(), j["command"].clone()),
        (1.into(), "verify".into())
    );
}

#[test]
fn plain_progress_prints_a_line_at_the_start_and_takes_an_interval() {
    let f = Fx::new();
    // stderr is a pipe here: plain lines.
    let o = f.run(&[
        "encrypt",
        &f.p("s"),
        "-o",
        &f.p("v"),
        "--progress-interval",
        "0.5",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("envseal: encrypt 0/2 files, 0 B/4 B"),
        "{}",
        stderr(&o)
    );
    let o = f.run(&[
        "encrypt",
        &f.p("s"),
        "-o",
        &f.p("v2"),
        "--progress-interval",
        "0",
    ]);
    assert_error(&o, 2, &["--progress-interval 0: expected seconds"]);
}

#[test]
fn a_disabled_key_on_decrypt_hints_enable_key_with_the_vaults_key() {
    let f = Fx::new();
    let v = f.vault();
    let list: Value = serde_json::from_str(&stdout(&f.run(&["kms", "list"]))).unwrap();
    let id = list["Keys"][0]["KeyId"].as_str().unwrap().to_string();
    assert_eq!(code(&f.run(&["kms", "disable-key", &id])), 0);
    let o = f.run(&["decrypt", "-q", &v, "-o", &f.p("out")]);
    assert_error(
        &o,
        1,
        &[
            "cannot unwrap the data key",
            "Rejected.Disabled",
            &format!("\"envseal kms enable-key {id}\""),
        ],
    );
    let o = f.run(&["verify", "--deep", "-q", &v]);
    assert_error(&o, 1, &[&format!("\"envseal kms enable-key {id}\"")]);
    assert_eq!(code(&f.run(&["kms", "enable-key", &id])), 0);
    let o = f.run(&["verify", "--deep", "-q", &v]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

/// Every field of the `--json` summaries is documented in docs/JSON.md.
#[test]
fn json_summary_fields_are_documented() {
    let doc =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/JSON.md")).unwrap();
    let f = Fx::new();
    let (v, s, out) = (f.p("v"), f.p("s"), f.p("out"));
    let runs = [
        vec!["encrypt", "-q", "--json", &s, "-o", &v],
        vec!["decrypt", "-q", "--json", &v, "-o", &out],
        vec!["verify", "-q", "--json", "--deep", &v],
    ];
    for args in runs {
        let o = f.run(&args);
        assert_eq!(code(&o), 0, "{args:?}: {}", stderr(&o));
        let j: Value = serde_json::from_str(&stdout(&o)).unwrap();
        let section = &doc[doc.find(&format!("## `{}`", args[0])).unwrap()..];
        let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
        for key in j.as_object().unwrap().keys() {
            if key == "schema_version" {
                continue;
            }
            assert!(
                section.contains(&format!("`{key}`")),
                "{}: `{key}` is not in docs/JSON.md",
                args[0]
            );
        }
    }
}

/// On a terminal: encrypt's bar (decrypt's spinner) is drawn at once, even for a tiny tree,
/// and one bar carries bytes and files. `script` gives the binary a pseudo-terminal.
#[test]
fn a_terminal_gets_the_spinner_at_once_and_one_bar() {
    if !Path::new("/usr/bin/script").exists() {
        eprintln!("skipping: no script(1)");
        return;
    }
    let f = Fx::new();
    let bin = env!("CARGO_BIN_EXE_envseal");
    for (cmd, want) in [
        (
            format!("{bin} encrypt {} -o {}", f.p("s"), f.p("v")),
            "found so far",
        ),
        (
            format!("{bin} decrypt {} -o {}", f.p("v"), f.p("out")),
            "decrypt: reading the manifest",
        ),
    ] {
        let o = std::process::Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .env("ENVSEAL_HOME", f.home())
            .env_remove("NO_COLOR")
            .output()
            .unwrap();
        let out = stdout(&o);
        assert!(o.status.success(), "{cmd}: {out}");
        assert!(out.contains(want), "{cmd}: no spinner: {out:?}");
        assert!(
            out.contains("/2 files") && out.contains("B/4 B"),
            "{cmd}: no bar with bytes and files: {out:?}"
        );
    }
}

/// With `--kms` overriding the vault's endpoint, errors name the KMS actually asked.
#[test]
fn an_overriding_kms_is_the_one_errors_name() {
    let f = Fx::new();
    let v = f.vault();
    // Another key store: it exists, but does not hold the vault's CMK.
    let other = f.p("other-store");
    let o = f.run(&["kms", "create-key", "--kms", &format!("local:{other}")]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let url = format!("local:{other}");
    let o = f.run(&["decrypt", "-q", &v, "-o", &f.p("out"), "--kms", &url]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains(&format!("({url})")), "{err}");
    assert!(!err.contains("(local)"), "the vault's own URL named: {err}");
}

/// `envseal kms create-key | head -c0`: a reader that went away ends the run quietly (as it
/// ends `cat`), never with a panic about a broken pipe.
#[test]
fn a_closed_stdout_pipe_is_no_panic() {
    use std::os::unix::process::ExitStatusExt;
    let home = tempfile::tempdir().unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = envseal(home.path())
        .args(["kms", "create-key"])
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{err}");
}
