//! The IO edge: the accept loop, the connection cap, HTTP/1.1 with keep-alive
//! and timeouts, the per-request log line, and graceful shutdown.
//!
//! Everything the network sends is bounded here or in `http::body`: headers by
//! size (16 KiB, else 431) and time (`server.header_timeout_secs`), bodies by
//! `limits.body_bytes` and the same time, connections by
//! `server.max_connections` (a permit is taken before `accept`, so excess
//! clients wait in the kernel's backlog and cost us nothing).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::app::App;
use crate::domain::unix_now;
use crate::http::router;

/// How long shutdown waits for in-flight requests before closing anyway.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest request head (request line and headers) we read; more is a 431.
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// How often expired revocations are purged.
const PURGE_INTERVAL: Duration = Duration::from_secs(600);

/// Binds the configured address. Port 0 picks a free port.
pub async fn bind(app: &App) -> anyhow::Result<TcpListener> {
    let server = &app.settings.server;
    let address = SocketAddr::new(server.host, server.port);
    TcpListener::bind(address)
        .await
        .with_context(|| format!("server.host/server.port: cannot listen on {address}"))
}

/// Serves until `shutdown` completes, then stops accepting, lets in-flight
/// requests finish (for at most [`DRAIN_TIMEOUT`]), and flushes the store.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let address = listener.local_addr()?;
    tracing::info!(%address, "gatehouse listening");
    let settings = &app.settings.server;
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(settings.header_timeout_secs))
        .keep_alive(true)
        .max_buf_size(MAX_HEAD_BYTES);
    let connections = Arc::new(Semaphore::new(settings.max_connections));
    let graceful = GracefulShutdown::new();
    let purger = tokio::spawn(purge_revocations(app.clone()));
    let warm_up = tokio::spawn({
        let app = app.clone();
        async move { app.passwords.warm_up().await }
    });
    tokio::pin!(shutdown);

    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = connections.clone().acquire_owned() => permit?,
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off briefly
                    // instead of spinning on a failing accept.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service = service_fn(move |request| respond(app.clone(), request, peer));
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
            drop(permit);
        });
    }

    drop(listener);
    tracing::info!("shutting down: draining in-flight requests");
    for task in [purger, warm_up] {
        task.abort();
        let _ = task.await;
    }
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain timed out; closing remaining connections");
    }
    app.store
        .flush()
        .await
        .context("final flush of the store")?;
    tracing::info!("stopped");
    Ok(())
}

/// One request: route it, then log one line (never the query, headers or body,
/// which may carry tokens or passwords).
async fn respond(
    app: Arc<App>,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Result<crate::http::HttpResponse, Infallible> {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let response = router::handle(app, request, peer).await;
    tracing::info!(
        %method,
        path = %path,
        status = response.status().as_u16(),
        micros = started.elapsed().as_micros() as u64,
        %peer,
        "request"
    );
    Ok(response)
}

async fn purge_revocations(app: Arc<App>) {
    let mut interval = tokio::time::interval(PURGE_INTERVAL);
    loop {
        interval.tick().await;
        match app.store.purge_revoked(unix_now()).await {
            Ok(0) => {}
            Ok(removed) => tracing::info!(removed, "purged expired revocations"),
            Err(error) => tracing::warn!(%error, "purging revocations failed"),
        }
    }
}
