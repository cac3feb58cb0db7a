//! What a terminal shows, captured from a tmux pane: encrypt's bar with a percentage and an
//! ETA early in the run, and a passphrase prompt that stays on screen while it waits.
//! Skipped (with a line saying so) where tmux is not installed; `.ci/run` installs it.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::tree::{gen_file, write};

/// A tmux server of this test's own (its own socket), killed when dropped.
struct Tmux {
    socket: String,
    _dir: tempfile::TempDir,
}

impl Tmux {
    /// Starts `script` (a shell script file) in a detached 200x50 pane; `None` without tmux.
    fn start(name: &str, script: &Path) -> Option<Tmux> {
        if Command::new("tmux").arg("-V").output().is_err() {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("CI=true but tmux is not installed (.ci/run installs it)");
            }
            eprintln!("skipping: tmux is not installed");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join(name).display().to_string();
        let ok = Command::new("tmux")
            .args(["-S", &socket, "new-session", "-d", "-x", "200", "-y", "50"])
            .arg(format!("sh {}", script.display()))
            .env("TERM", "xterm-256color")
            .status()
            .unwrap()
            .success();
        assert!(ok, "tmux new-session failed");
        Some(Tmux { socket, _dir: dir })
    }

    /// The pane's text now.
    fn screen(&self) -> String {
        let o = Command::new("tmux")
            .args(["-S", &self.socket, "capture-pane", "-p", "-t", "0"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        let ok = Command::new("tmux")
            .args(["-S", &self.socket, "send-keys", "-t", "0"])
            .args(keys)
            .status()
            .unwrap()
            .success();
        assert!(ok, "tmux send-keys failed");
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-S", &self.socket, "kill-server"])
            .status();
    }
}

/// A shell script that runs envseal with `args` (after `env`), then writes its exit code to
/// `done` and keeps the pane open.
fn script(dir: &Path, home: &Path, env: &str, args: &str, done: &Path) -> PathBuf {
    let bin = env!("CARGO_BIN_EXE_envseal");
    let s = dir.join("run.sh");
    write(
        &s,
        format!(
            "unset ENVSEAL_KMS ENVSEAL_PASSPHRASE RUST_LOG NO_COLOR\nexport ENVSEAL_HOME='{}' {env}\n'{bin}' {args}\necho $? > '{}.tmp' && mv '{}.tmp' '{}'\nsleep 60\n",
            home.display(),
            done.display(),
            done.display(),
            done.display()
        )
        .as_bytes(),
    );
    s
}

/// Waits for the `done` file and returns the exit code it holds.
fn wait_done(done: &Path, limit: Duration) -> i32 {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Ok(s) = std::fs::read_to_string(done) {
            return s.trim().parse().unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the run did not end within {limit:?}");
}

/// The bar shows a percentage and an ETA before half of the run has passed: the walk of a
/// small tree ends at once, the rest of the run (slowed to ~5 s by the test-only knob, one
/// file at a time) shows what is left.
#[test]
fn progress_shows_percent_and_eta_early() {
    let t = tempfile::tempdir().unwrap();
    for i in 0..50 {
        gen_file(&t.path().join(format!("src/f{i:02}")), 64 << 10, i);
    }
    let done = t.path().join("done");
    let s = script(
        t.path(),
        &t.path().join("home"),
        "ENVSEAL_TEST_SLOW_FILE_MS=100",
        &format!(
            "encrypt -j 1 '{}' -o '{}'",
            t.path().join("src").display(),
            t.path().join("v").display()
        ),
        &done,
    );
    let start = Instant::now();
    let Some(tmux) = Tmux::start("progress", &s) else {
        return;
    };
    let mut first_bar: Option<(Duration, String)> = None;
    while !done.exists() && start.elapsed() < Duration::from_secs(120) {
        let screen = tmux.screen();
        if first_bar.is_none() {
            let bar = screen
                .lines()
                .find(|l| l.contains("encrypt") && l.contains('%') && l.contains("ETA"));
            if let Some(l) = bar {
                first_bar = Some((start.elapsed(), l.to_string()));
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let total = start.elapsed();
    assert_eq!(
        wait_done(&done, Duration::from_secs(5)),
        0,
        "{}",
        tmux.screen()
    );
    let (at, line) =
        first_bar.unwrap_or_else(|| panic!("no bar with % and ETA: {}", tmux.screen()));
    assert!(
        at < total / 2,
        "the bar with % and ETA first showed at {at:?} of a {total:?} run: {line}"
    );
    assert!(line.contains("50 files"), "done/found files: {line}");
}

/// A sealed key store's passphrase prompt is not erased by the bar: still on screen after
/// 2 s, and the run goes on once it is answered.
#[test]
fn a_passphrase_prompt_stays_on_screen() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    write(&t.path().join("src/a.txt"), b"a\n");
    // A sealed store with the default key in it.
    let o = common::envseal(&home)
        .args(["encrypt", "-q"])
        .arg(t.path().join("src"))
        .arg("-o")
        .arg(t.path().join("v0"))
        .env("ENVSEAL_PASSPHRASE", "correct horse")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", common::stderr(&o));
    let done = t.path().join("done");
    let s = script(
        t.path(),
        &home,
        "",
        &format!(
            "encrypt '{}' -o '{}'",
            t.path().join("src").display(),
            t.path().join("v").display()
        ),
        &done,
    );
    let Some(tmux) = Tmux::start("prompt", &s) else {
        return;
    };
    let start = Instant::now();
    while !tmux.screen().contains("passphrase:") {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no prompt: {}",
            tmux.screen()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(2000));
    let screen = tmux.screen();
    assert!(
        screen.contains("envseal: key store passphrase:"),
        "the prompt was erased: {screen}"
    );
    assert!(!done.exists(), "the run waits for the answer");
    tmux.keys(&["correct horse", "Enter"]);
    assert_eq!(
        wait_done(&done, Duration::from_secs(60)),
        0,
        "{}",
        tmux.screen()
    );
    assert!(t.path().join("v/manifest.jsonl").exists());
}
