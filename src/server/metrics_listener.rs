//! The metrics listener (`metrics.listen`): a second HTTP/1.1 listener that
//! answers only `/metrics` (`http::metrics_page`), on an address of its own,
//! so the API's port never serves it and the page can be kept to the
//! monitoring network.
//!
//! It is bounded as the API's connections are: the same
//! [`Connection`](super::connection::Connection) time limits (head, idle,
//! write) from `server.*_timeout_secs`, a 16 KiB head, and at most
//! [`MAX_CONNECTIONS`] connections, beyond which a new one is closed at once.
//! It lives and dies with `serve`: its connections are tasks of a `JoinSet`
//! owned by the accept task, which `serve` aborts when it shuts down, and
//! aborting it drops them all.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Method;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use super::answers::ErrorAnswers;
use super::connection::{Connection, Limits, Requests};
use super::MAX_HEAD_BYTES;
use crate::app::App;
use crate::http::metrics_page;
use crate::metrics::Metrics;

/// Scrapers connected at once, at most: a Prometheus server or two, and
/// someone with curl.
pub const MAX_CONNECTIONS: usize = 16;

/// Binds `metrics.listen`; `None` when metrics are off. The bound address
/// is kept in `app.metrics` ([`Metrics::listening_on`]), so port 0 works.
/// An address that cannot be bound is an error naming the key.
pub async fn bind(app: &App) -> anyhow::Result<Option<TcpListener>> {
    let (Some(address), true) = (app.settings.metrics.listen, app.metrics.is_on()) else {
        return Ok(None);
    };
    let listener = TcpListener::bind(address)
        .await
        .with_context(|| format!("metrics.listen: cannot listen on {address}"))?;
    app.metrics.bound_to(listener.local_addr()?);
    Ok(Some(listener))
}

/// Logs the bound address (`metrics listening address=…`) and answers on
/// `listener` until the returned task is aborted.
pub fn start(listener: TcpListener, app: &App, error_answers: Arc<ErrorAnswers>) -> JoinHandle<()> {
    if let Ok(address) = listener.local_addr() {
        tracing::info!(%address, "metrics listening");
    }
    let server = &app.settings.server;
    let limits = Limits {
        header: Duration::from_secs(server.header_timeout_secs),
        idle: Duration::from_secs(server.idle_timeout_secs),
        write: Duration::from_secs(server.write_timeout_secs),
    };
    tokio::spawn(accept(listener, app.metrics.clone(), limits, error_answers))
}

async fn accept(
    listener: TcpListener,
    metrics: Metrics,
    limits: Limits,
    error_answers: Arc<ErrorAnswers>,
) {
    let mut http = http1::Builder::new();
    http.keep_alive(true).max_buf_size(MAX_HEAD_BYTES);
    let mut connections = JoinSet::new();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        if connections.len() >= MAX_CONNECTIONS {
            // Closed unanswered: a scraper retries at its next interval.
            continue;
        }
        let _ = stream.set_nodelay(true);
        let requests = Arc::new(Requests::default());
        let io = Connection::new(stream, requests.clone(), limits, error_answers.clone());
        let metrics = metrics.clone();
        let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            let in_progress = requests.begin(request.method() == Method::HEAD);
            let response = metrics_page::answer(&metrics, request.method(), request.uri().path());
            async move {
                drop(in_progress);
                Ok::<_, Infallible>(response)
            }
        });
        let connection = http.serve_connection(TokioIo::new(io), service);
        connections.spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "metrics connection ended with an error");
            }
        });
    }
}
