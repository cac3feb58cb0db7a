//! Local KMS servers for end-to-end tests: `envseal kms serve`, moto (AWS), and a fault proxy.
//! Every server listens on 127.0.0.1 only and is killed and reaped on drop.

#[cfg(feature = "server")]
use std::io::{BufRead, BufReader};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
#[cfg(feature = "server")]
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
#[cfg(feature = "server")]
use std::sync::Mutex;
use std::time::{Duration, Instant};

use envseal::kms::aws::AwsClient;
use envseal::kms::retry::RetryPolicy;
use envseal::kms::KmsOptions;

pub const ALI_ID: &str = "LTAIe2etestkey";
pub const ALI_SECRET: &str = "e2e-secret-do-not-print-0123456789";
pub const AWS_ID: &str = "AKIAE2ETEST";
pub const AWS_SECRET: &str = "aws-e2e-secret-do-not-print-987654";
pub const AWS_REGION: &str = "us-east-1";

/// A running `envseal kms serve` with a key store of its own.
#[cfg(feature = "server")]
pub struct KmsServer {
    pub child: Child,
    pub port: u16,
    pub store: PathBuf,
    _tmp: tempfile::TempDir,
    stderr: Arc<Mutex<String>>,
}

#[cfg(feature = "server")]
impl KmsServer {
    /// Starts a server with the test credentials in its environment.
    pub fn start() -> KmsServer {
        Self::start_with(|c| {
            c.env("ENVSEAL_KMS_ACCESS_KEY_ID", ALI_ID)
                .env("ENVSEAL_KMS_ACCESS_KEY_SECRET", ALI_SECRET);
        })
    }

    /// Starts a server; `configure` sets its environment (credentials are removed first).
    pub fn start_with(configure: impl FnOnce(&mut Command)) -> KmsServer {
        let tmp = tempfile::tempdir().unwrap();
        let store = tmp.path().join("kms");
        let mut cmd = super::envseal(tmp.path());
        cmd.args(["kms", "serve", "--listen", "127.0.0.1:0", "--store"])
            .arg(&store)
            .env_remove("ENVSEAL_KMS_ACCESS_KEY_ID")
            .env_remove("ENVSEAL_KMS_ACCESS_KEY_SECRET")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        configure(&mut cmd);
        let mut child = cmd.spawn().expect("cannot start envseal kms serve");
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        let port = first
            .trim()
            .strip_prefix("listening on http://127.0.0.1:")
            .or_else(|| first.trim().strip_prefix("listening on https://127.0.0.1:"))
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| {
                let _ = child.kill();
                panic!(
                    "kms serve said {first:?}; stderr: {}",
                    stderr.lock().unwrap()
                );
            });
        KmsServer {
            child,
            port,
            store,
            _tmp: tmp,
            stderr,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn url(&self) -> String {
        format!("aliyun:http://127.0.0.1:{}", self.port)
    }

    /// How many times the server's key store performed `op` (its audit log).
    pub fn count(&self, op: &str) -> usize {
        let text = std::fs::read_to_string(self.store.join("audit.jsonl")).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["op"] == op && v["ok"] == true)
            .count()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The server's stderr once it contains `needle` (lines arrive asynchronously).
    pub fn stderr_with(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let s = self.stderr();
            if s.contains(needle) || Instant::now() > deadline {
                return s;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[cfg(feature = "server")]
impl Drop for KmsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// moto's server as a local AWS KMS; `None` (skip) when the venv is absent outside CI.
pub struct Moto {
    child: Child,
    pub port: u16,
}

impl Moto {
    pub fn start() -> Option<Moto> {
        let pyenv = super::pyenv()?;
        // A port from free_port() may be taken before moto binds it: moto then exits at once.
        for _ in 0..5 {
            let port = super::free_port();
            let child = Command::new(pyenv.join("bin/moto_server"))
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("cannot start moto_server");
            let mut m = Moto { child, port };
            if m.wait_ready() {
                return Some(m);
            }
        }
        panic!("moto_server did not start");
    }

    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if self.client().create_key("readiness probe").is_ok() {
                return true;
            }
            assert!(Instant::now() < deadline, "moto_server did not answer");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn url(&self) -> String {
        format!("aws:{}?region={AWS_REGION}", self.endpoint())
    }

    /// A library client with the test credentials (one attempt: callers decide on retries).
    pub fn client(&self) -> AwsClient {
        let opts = KmsOptions {
            retry: RetryPolicy {
                max_attempts: 1,
                ..RetryPolicy::default()
            },
            ..KmsOptions::default()
        };
        AwsClient::from_vars(
            &self.endpoint(),
            Some(AWS_REGION),
            &opts,
            |name| match name {
                "AWS_ACCESS_KEY_ID" => Some(AWS_ID.into()),
                "AWS_SECRET_ACCESS_KEY" => Some(AWS_SECRET.into()),
                _ => None,
            },
        )
        .expect("aws client")
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Answers the first `n` connections with `reply` (a whole HTTP response) and forwards the
/// rest to 127.0.0.1:`target`. Counts connections.
pub struct FaultProxy {
    pub port: u16,
    pub seen: Arc<AtomicUsize>,
}

impl FaultProxy {
    pub fn start(target: u16, n: usize, reply: String) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(AtomicUsize::new(0));
        let counter = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut client) = conn else { return };
                if counter.fetch_add(1, Ordering::SeqCst) < n {
                    let mut buf = [0u8; 8192];
                    let mut head = Vec::new();
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match client.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(k) => head.extend_from_slice(&buf[..k]),
                        }
                    }
                    let _ = client.write_all(reply.as_bytes());
                    continue;
                }
                let Ok(upstream) = TcpStream::connect(("127.0.0.1", target)) else {
                    return;
                };
                let (mut c2, mut u2) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
                let mut upstream = upstream;
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c2, &mut u2);
                    let _ = u2.shutdown(std::net::Shutdown::Write);
                });
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut upstream, &mut client);
                    let _ = client.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        FaultProxy { port, seen }
    }
}

/// An HTTP response carrying a JSON error body.
pub fn json_reply(status: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json;charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}
