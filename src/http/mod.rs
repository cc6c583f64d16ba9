//! The HTTP layer between the server's IO edge and the handlers: the route
//! table and router, [`error::ApiError`] and its bodies, the token check,
//! request-body decoding, and the metrics listener's answers. Only this
//! module and `api` know status codes and headers.

pub mod auth;
pub mod body;
pub mod context;
pub mod cors;
pub mod error;
pub mod metrics_page;
pub mod router;

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body_util::Full;
use hyper::body::{Bytes, Frame, SizeHint};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde::Serialize;
use tokio::sync::mpsc;

/// Every response gatehouse sends.
pub type HttpResponse = Response<Body>;

/// A response body: complete and small (every answer but one), or streamed
/// from a channel (the export, `GET /api/admin/export`, whose size has no
/// bound). An enum rather than a boxed body: the common answer costs no
/// allocation or dynamic call more than a `Full` did.
pub enum Body {
    Full(Full<Bytes>),
    /// `first` (already received), then chunks until the sender is
    /// dropped; an `Err` ends the response without its last chunk, so the
    /// client sees a broken transfer rather than a complete-looking one.
    Stream {
        first: Option<Bytes>,
        rest: mpsc::Receiver<Result<Bytes, String>>,
    },
}

impl Body {
    pub fn full(bytes: impl Into<Bytes>) -> Body {
        Body::Full(Full::new(bytes.into()))
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match self.get_mut() {
            Body::Full(full) => Pin::new(full)
                .poll_frame(cx)
                .map(|frame| frame.map(|f| f.map_err(|never| match never {}))),
            Body::Stream { first, rest } => match first.take() {
                Some(chunk) => Poll::Ready(Some(Ok(Frame::data(chunk)))),
                None => rest.poll_recv(cx).map(|chunk| {
                    chunk.map(|chunk| chunk.map(Frame::data).map_err(std::io::Error::other))
                }),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Full(full) => full.is_end_stream(),
            Body::Stream { .. } => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(full) => full.size_hint(),
            Body::Stream { .. } => SizeHint::default(),
        }
    }
}

/// A JSON response.
pub fn json(status: StatusCode, body: &impl Serialize) -> HttpResponse {
    // Our bodies are plain structs and `serde_json::Value`s: serializing them
    // cannot fail, and an empty body would still be answered with its status.
    let mut bytes = Vec::with_capacity(128);
    if serde_json::to_writer(&mut bytes, body).is_err() {
        bytes.clear();
    }
    json_bytes(status, bytes)
}

/// A response whose body is JSON already.
pub fn json_bytes(status: StatusCode, bytes: Vec<u8>) -> HttpResponse {
    let mut response = Response::new(Body::full(bytes));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A plain-text response (only `GET /api` uses one).
pub fn text(status: StatusCode, body: &'static str) -> HttpResponse {
    let mut response = Response::new(Body::full(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
