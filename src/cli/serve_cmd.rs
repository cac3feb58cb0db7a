//! `envseal kms serve`: checks the listen address, opens the key store and credentials,
//! prints `listening on <URL>` as the first stdout line, logs one line per request on stderr,
//! and stops cleanly on SIGINT/SIGTERM.

use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use anyhow::Context;
use envseal::kms::keystore::KeyStore;
use envseal::kms::server::credentials::{Credentials, Source, ENV_ACCESS_KEY_ID};
use envseal::kms::server::{load_tls, AccessRecord, Server};

use super::args::ServeArgs;

pub fn run(args: ServeArgs) -> anyhow::Result<i32> {
    let addrs: Vec<SocketAddr> = args
        .listen
        .to_socket_addrs()
        .map_err(|e| {
            envseal::Error::Usage(format!("--listen {}: not an address: {e}", args.listen))
        })?
        .collect();
    let addr = *addrs.first().ok_or_else(|| {
        envseal::Error::Usage(format!("--listen {}: resolves to no address", args.listen))
    })?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(load_tls(cert, key).map_err(envseal::Error::from)?),
        _ => None,
    };
    // Anyone on the network could read plaintext data keys off an unencrypted connection.
    if tls.is_none() && !args.insecure && addrs.iter().any(|a| !a.ip().is_loopback()) {
        return Err(envseal::Error::Usage(format!(
            "refusing to serve plain HTTP on the non-loopback address {}: data keys would cross the network in the clear; give --tls-cert and --tls-key, or --insecure",
            args.listen
        ))
        .into());
    }

    let passphrase = std::env::var("ENVSEAL_PASSPHRASE")
        .ok()
        .map(zeroize::Zeroizing::new);
    // A store created now says itself that it is unsealed; an existing one is reminded here.
    let existed = args.store.join("store.json").exists();
    let store = KeyStore::open(&args.store, passphrase.as_deref().map(String::as_str))
        .map_err(envseal::Error::from)?;
    if existed && !store.sealed() {
        eprintln!(
            "envseal kms serve: warning: the key store {} is not sealed; its master keys are stored unencrypted (files 0600). Create the store with ENVSEAL_PASSPHRASE set to seal them at rest (Argon2id).",
            store.dir().display()
        );
    }
    let (credentials, source) =
        Credentials::load_or_create(store.dir()).map_err(envseal::Error::from)?;
    match &source {
        Source::Environment => eprintln!(
            "envseal kms serve: access key id {} (from {ENV_ACCESS_KEY_ID})",
            credentials.access_key_id
        ),
        Source::File { path, created } => eprintln!(
            "envseal kms serve: access key id {}; the pair is in {}{}",
            credentials.access_key_id,
            path.display(),
            if *created {
                " (created now, mode 0600)"
            } else {
                ""
            }
        ),
    }

    let scheme = if tls.is_some() { "https" } else { "http" };
    let server = Server::new(
        store,
        credentials,
        tls,
        Arc::new(|r: &AccessRecord| eprintln!("{r}")),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let local = listener.local_addr()?;
        let mut out = std::io::stdout();
        writeln!(out, "listening on {scheme}://{local}")?;
        out.flush()?;
        server.run(listener, shutdown_signal()).await?;
        eprintln!("envseal kms serve: stopped");
        anyhow::Ok(())
    })?;
    Ok(0)
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
