//! `kms serve` under a crowd of slow, unauthenticated connections: authenticated clients are
//! still answered (connection cap, per-client limit, header and body read timeouts).

use crate::common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::servers::{KmsServer, ALI_ID, ALI_SECRET};

#[test]
fn three_hundred_slow_unauthenticated_connections_do_not_lock_out_clients() {
    // Few file descriptors, as on a small server: without limits, the slow connections
    // alone would use them all up.
    let server = KmsServer::start_with(|c| {
        use std::os::unix::process::CommandExt;
        c.env("ENVSEAL_KMS_ACCESS_KEY_ID", ALI_ID)
            .env("ENVSEAL_KMS_ACCESS_KEY_SECRET", ALI_SECRET);
        // SAFETY: setrlimit between fork and exec (async-signal-safe).
        unsafe {
            c.pre_exec(|| {
                let lim = libc::rlimit {
                    rlim_cur: 200,
                    rlim_max: 200,
                };
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
                Ok(())
            });
        }
    });
    let addr = format!("127.0.0.1:{}", server.port);
    // 300 connections that announce a body and send it a byte at a time (slow-body), or
    // never finish their headers (slow-header): held open for the whole test.
    let mut slow = Vec::new();
    for i in 0..300 {
        let mut s = TcpStream::connect(&addr).unwrap();
        let head = if i % 2 == 0 {
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100000\r\n\r\nAction="
        } else {
            "GET / HTTP/1.1\r\nHost: x\r\n"
        };
        s.write_all(head.as_bytes()).unwrap();
        slow.push(s);
    }
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    // Authenticated requests, one after another, each answered in bounded time while the
    // slow connections are still being fed.
    for round in 0..3 {
        for s in &mut slow {
            let _ = s.write_all(b"a");
        }
        let started = Instant::now();
        let o = common::envseal(&home)
            .env("ALIBABA_CLOUD_ACCESS_KEY_ID", ALI_ID)
            .env("ALIBABA_CLOUD_ACCESS_KEY_SECRET", ALI_SECRET)
            .args(["kms", "create-key", "--kms", &server.url()])
            .output()
            .unwrap();
        let took = started.elapsed();
        assert!(
            o.status.success(),
            "round {round}: {} / server: {}",
            common::stderr(&o),
            server.stderr()
        );
        assert!(took < Duration::from_secs(8), "round {round} took {took:?}");
    }
    drop(slow);
}
