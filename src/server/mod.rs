//! The IO edge: the accept loop, the connection cap, HTTP/1.1 with keep-alive
//! and timeouts, the per-request log line, and graceful shutdown.
//!
//! Everything the network sends is bounded here or in `http::body`: headers by
//! size (16 KiB, else 431) and time (`server.header_timeout_secs`), bodies by
//! `limits.body_bytes` and the same time, connections by
//! `server.max_connections`: a connection over the limit is answered at once
//! with `503 server_busy` and closed, without reading its request, so a flood
//! of clients costs a few bytes each instead of memory and waiting. What a
//! client can hold after that is bounded by `connection`: an answer it does
//! not read (`server.write_timeout_secs`), an idle keep-alive connection
//! (`server.idle_timeout_secs`), a slow head. `answers` gives the answers
//! hyper writes by itself the contract's JSON body. This module does not
//! route, and knows no status code but the canned 503's. Each answered
//! request is also recorded in the metrics (route pattern, method, status,
//! time), which `metrics_listener` serves on an address of their own.

mod answers;
mod connection;
mod metrics_listener;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::app::App;
use crate::domain::unix_now;
use crate::http::error::ApiError;
use crate::log::RequestLine;
use answers::ErrorAnswers;
use connection::{Connection, Limits, Requests};

/// How long shutdown waits for in-flight requests before closing anyway.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest request head (request line and headers) we read; more is a 431.
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// How often ended sessions and expired revocations are purged.
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
    if let Some(mailer) = &app.mailer {
        mailer.bound_to(address);
    }
    // Bound before the API's "listening" line, so that once it is logged
    // the metrics address answers too; logged after it, so that the first
    // "listening" line names the API.
    let metrics_listener = metrics_listener::bind(&app).await?;
    tracing::info!(%address, store = %app.store.kind(), "gatehouse listening");
    let error_answers = Arc::new(ErrorAnswers::new().await);
    let metrics_server = metrics_listener.map(|listener| {
        Background(metrics_listener::start(
            listener,
            &app,
            error_answers.clone(),
        ))
    });
    let settings = &app.settings.server;
    let mut http = http1::Builder::new();
    // No `header_read_timeout`: `Connection` keeps the header timeout, as
    // hyper's would also cut idle keep-alive connections (see `connection`).
    http.keep_alive(true).max_buf_size(MAX_HEAD_BYTES);
    let limits = Limits {
        header: Duration::from_secs(settings.header_timeout_secs),
        idle: Duration::from_secs(settings.idle_timeout_secs),
        write: Duration::from_secs(settings.write_timeout_secs),
    };
    let connections = Arc::new(Semaphore::new(settings.max_connections));
    let graceful = GracefulShutdown::new();
    let purger = Background(tokio::spawn(purge_expired(app.clone())));
    let key_follower = Background(tokio::spawn(crate::keyring::follow(app.clone())));
    let warm_up = Background(tokio::spawn({
        let app = app.clone();
        async move { app.passwords.warm_up().await }
    }));
    tokio::pin!(shutdown);

    let busy_reply = Arc::new(busy_response().await);
    let rejectors = Arc::new(Semaphore::new(MAX_REJECTORS));
    let mut last_busy_warning: Option<Instant> = None;
    loop {
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
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            if last_busy_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                tracing::warn!(
                    limit = settings.max_connections,
                    "connection limit reached; answering 503"
                );
                last_busy_warning = Some(Instant::now());
            }
            if let Ok(rejector) = rejectors.clone().try_acquire_owned() {
                tokio::spawn(reject(stream, busy_reply.clone(), rejector));
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let requests = Arc::new(Requests::default());
        let io = Connection::new(stream, requests.clone(), limits, error_answers.clone());
        let service =
            service_fn(move |request| respond(app.clone(), requests.clone(), request, peer));
        let connection = graceful.watch(http.serve_connection(TokioIo::new(io), service));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
            drop(permit);
        });
    }

    drop(listener);
    tracing::info!("shutting down: draining in-flight requests");
    // The background tasks end before the drain, the metrics listener (its
    // connections with it) among them: the draining requests' numbers have
    // no reader left.
    let tasks = [purger, key_follower, warm_up]
        .into_iter()
        .chain(metrics_server);
    for mut task in tasks {
        task.0.abort();
        let _ = (&mut task.0).await;
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

/// A background task of [`serve`], ended with it however `serve` ends (its
/// future dropped included: dropping a `JoinHandle` only detaches the task,
/// which would keep, say, the metrics port answering).
struct Background(tokio::task::JoinHandle<()>);

impl Drop for Background {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Connections over the limit being answered at once; beyond this many, an
/// excess connection is simply closed.
const MAX_REJECTORS: usize = 64;

/// The whole HTTP response sent to a connection over the limit, without
/// reading its request: `503 server_busy`, `Retry-After: 1`, then close.
async fn busy_response() -> Vec<u8> {
    let response = ApiError::ServerBusy.into_response();
    let mut bytes = format!("HTTP/1.1 {}\r\n", response.status()).into_bytes();
    bytes.extend(headers_and_body(response).await);
    bytes
}

/// A response as HTTP/1.1 bytes after its status line: its header lines, a
/// `content-length`, the blank line and the body. For the answers written
/// without hyper (the busy 503) or in place of hyper's own (`answers`).
async fn headers_and_body(response: crate::http::HttpResponse) -> Vec<u8> {
    let (parts, body) = response.into_parts();
    // A `Full` body cannot fail to collect.
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut out = Vec::new();
    for (name, value) in &parts.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(&body);
    out
}

/// Answers an excess connection with the busy response, then lets the client
/// finish sending (at most briefly) so that closing does not reset the
/// connection before the client has read the answer.
async fn reject(mut stream: TcpStream, reply: Arc<Vec<u8>>, _permit: OwnedSemaphorePermit) {
    let linger = async {
        stream.write_all(&reply).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<(), std::io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), linger).await;
}

/// One request: route it, then log one line (never the query, headers or body,
/// which may carry tokens or passwords) and record it in the metrics (by the
/// pattern of the route that answered, never the path).
async fn respond(
    app: Arc<App>,
    requests: Arc<Requests>,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Result<crate::http::HttpResponse, Infallible> {
    let started = Instant::now();
    // Until this returns, the connection's idle timer stays off.
    let _in_progress = requests.begin(request.method() == Method::HEAD);
    let method = request.method().clone();
    // A `Uri` clone shares its bytes: no copy of the path per request.
    let uri = request.uri().clone();
    let log = app.request_log.clone();
    let metrics = app.metrics.clone();
    let routed = crate::api::handle(app, request, peer).await;
    let (response, elapsed) = (routed.response, started.elapsed());
    let line = RequestLine {
        method: &method,
        path: uri.path(),
        status: response.status(),
        micros: elapsed.as_micros() as u64,
        peer,
    };
    log.write(|out| line.push_to(out));
    metrics.request(
        routed.route,
        method.as_str(),
        response.status().as_u16(),
        elapsed,
    );
    Ok(response)
}

async fn purge_expired(app: Arc<App>) {
    let mut interval = tokio::time::interval(PURGE_INTERVAL);
    loop {
        interval.tick().await;
        match app.store.purge_expired(unix_now(), &app.sessions).await {
            Ok(0) => {}
            Ok(removed) => tracing::info!(removed, "purged expired sessions and revocations"),
            Err(error) => tracing::warn!(%error, "purging expired sessions and revocations failed"),
        }
        let retention_days = app.settings.audit.retention_days;
        match app.store.purge_audit(unix_now(), retention_days).await {
            Ok(0) => {}
            Ok(removed) => tracing::info!(removed, retention_days, "purged old audit events"),
            Err(error) => tracing::warn!(%error, "purging old audit events failed"),
        }
    }
}
