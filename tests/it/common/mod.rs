//! Shared helpers for the integration tests: temp trees, the real binary, local servers.
#![allow(dead_code)]

pub mod s3;
pub mod servers;
pub mod slurm;
pub mod tree;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The envseal binary under test, with a private ENVSEAL_HOME so no test touches the user's keys.
pub fn envseal(home: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_envseal"));
    c.env("ENVSEAL_HOME", home)
        .env_remove("ENVSEAL_KMS")
        .env_remove("ENVSEAL_PASSPHRASE")
        .env_remove("RUST_LOG");
    c
}

/// Runs a command and returns its output; panics with stderr if it could not start.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("failed to start command")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on 127.0.0.1")
}

/// The Python venv with moto and the Alibaba SDKs, made by `.ci/pyenv`. `None` when it does not
/// exist; under CI (CI=true) its absence is a failure, so interop tests never pass silently there.
pub fn pyenv() -> Option<PathBuf> {
    let dir = std::env::var_os("ENVSEAL_PYENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pyenv"));
    if dir.join("bin/python").exists() {
        return Some(dir);
    }
    if std::env::var("CI").map(|v| v == "true").unwrap_or(false) {
        panic!(
            "CI=true but no Python venv at {} (run .ci/pyenv)",
            dir.display()
        );
    }
    eprintln!(
        "skipping: no Python venv at {} (run .ci/pyenv to build it)",
        dir.display()
    );
    None
}

/// A tmpfs mounted for the test (root only; `None` where mounting is refused), unmounted on
/// drop: a small one makes ENOSPC.
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    pub fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        st.success().then(|| Tmpfs(at.to_path_buf()))
    }

    pub fn resize(&self, size: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(st.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// The embedded key store in `dir/keystore`, as a library caller opens it: the KMS and its
/// provider URL.
pub fn local_kms(dir: &Path) -> (envseal::kms::keys::Kms, String) {
    use envseal::kms::{keys::Kms, local::LocalProvider, KmsOptions};
    let store = dir.join("keystore");
    let url = format!("local:{}", store.display());
    let provider = LocalProvider::open(Some(&store), &KmsOptions::default()).unwrap();
    let kms =
        Kms::new(KmsOptions::default(), None).with_provider(&url, std::sync::Arc::new(provider));
    (kms, url)
}

/// Progress that stops the run (as Ctrl-C does) once `after` bytes were sealed, through
/// the cancel flag it hands out.
pub struct StopAfter {
    seen: std::sync::atomic::AtomicU64,
    after: u64,
    pub cancel: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl StopAfter {
    pub fn new(after: u64) -> StopAfter {
        StopAfter {
            seen: Default::default(),
            after,
            cancel: Default::default(),
        }
    }
}

impl envseal::progress::Progress for StopAfter {
    fn bytes(&self, n: u64) {
        use std::sync::atomic::Ordering;
        if self.seen.fetch_add(n, Ordering::SeqCst) + n >= self.after {
            self.cancel.store(true, Ordering::SeqCst);
        }
    }
}
