//! `GET /api/openapi.json`: the OpenAPI 3.1 description of the whole API,
//! written by hand in `openapi.json` beside this file and embedded in the
//! binary at build time. A test keeps it and the route table in step.

use hyper::body::Bytes;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};

use crate::http::context::RequestContext;
use crate::http::error::ApiError;
use crate::http::HttpResponse;

/// The document, as shipped.
pub const OPENAPI_JSON: &str = include_str!("openapi.json");

pub async fn document(_ctx: RequestContext) -> Result<HttpResponse, ApiError> {
    let mut response = Response::new(crate::http::Body::full(Bytes::from_static(
        OPENAPI_JSON.as_bytes(),
    )));
    *response.status_mut() = StatusCode::OK;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}
