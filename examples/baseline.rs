//! The load benchmark's ceiling for token-checked reads: a bare hyper 1.x
//! HTTP/1.1 server on tokio that answers every request with the same
//! ~150-byte JSON body, and does nothing else (no routing, no log, no store).
//!
//! Usage: `baseline [ADDRESS]` (default `127.0.0.1:0`, a free port). Prints
//! `baseline listening address=IP:PORT` on stdout once bound, for
//! `bench/run.sh` to find.

use std::convert::Infallible;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// About the size of a `GET /api/auth/me` answer.
const BODY: &[u8] = br#"{"_id":"0192f5c2-7c3a-7d2e-9b1a-3f5e8c2d4a61","name":"Bench User","email":"bench@example.com","role":"user","created_at":"2026-01-01T00:00:00Z"}"#;

async fn answer(_request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut response = Response::new(Full::new(Bytes::from_static(BODY)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_string());
    let listener = TcpListener::bind(&address).await?;
    println!("baseline listening address={}", listener.local_addr()?);
    loop {
        let (stream, _peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                eprintln!("baseline: accept failed: {error}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            // A client closing mid-request is not worth reporting here.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(answer))
                .await;
        });
    }
}
