//! `GET /.well-known/jwks.json`: the public signing keys as an RFC 7517 JWK
//! set, for gateways and services that verify gatehouse's tokens without
//! holding a secret. Tokens are signed with HS256 (a shared secret, which is
//! never published), so the set is empty; asymmetric keys are issue 12's
//! next step.

use hyper::header::{HeaderValue, CACHE_CONTROL};
use hyper::StatusCode;
use serde_json::json;

use crate::http::context::RequestContext;
use crate::http::error::ApiError;
use crate::http::{json, HttpResponse};

/// How long verifiers may cache the set (API.md).
const CACHE: &str = "public, max-age=300";

pub async fn jwks(_ctx: RequestContext) -> Result<HttpResponse, ApiError> {
    let mut response = json(StatusCode::OK, &json!({"keys": []}));
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static(CACHE));
    Ok(response)
}
