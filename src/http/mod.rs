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

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde::Serialize;

/// Every response gatehouse sends: a complete, small body.
pub type HttpResponse = Response<Full<Bytes>>;

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
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A plain-text response (only `GET /api` uses one).
pub fn text(status: StatusCode, body: &'static str) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
