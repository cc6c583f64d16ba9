//! Signing keys over HTTP: `GET /.well-known/jwks.json`, the public keys as
//! an RFC 7517 JWK set, for gateways and services that verify gatehouse's
//! tokens without holding a secret; and the admin's view of the keys
//! (`GET /api/admin/keys`, `POST /api/admin/keys/rotate`).
//!
//! Tokens are signed with HS256 (a shared secret, which is never published),
//! so the set is empty, the listing names the keys only by `kid`, and
//! rotation is by configuration (`auth.previous_secrets`).

use hyper::header::{HeaderValue, CACHE_CONTROL};
use hyper::StatusCode;
use serde_json::json;

use crate::http::auth::AuthUser;
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

/// `GET /api/admin/keys` (admin): the keys tokens are signed and accepted
/// with, by `kid` (never their bytes): the signing secret (`current`) and
/// `auth.previous_secrets` (`previous`). When a configured secret was made
/// is not known: `created_at` is null; a previous secret retires when the
/// operator drops it, so `retires_at` is null too.
pub async fn list(ctx: RequestContext, caller: AuthUser) -> Result<HttpResponse, ApiError> {
    if !caller.is_admin() {
        return Err(ApiError::Forbidden);
    }
    let keys: Vec<_> = ctx
        .app
        .tokens
        .key_ids()
        .enumerate()
        .map(|(i, kid)| {
            json!({
                "kid": kid,
                "alg": "HS256",
                "state": if i == 0 { "current" } else { "previous" },
                "created_at": null,
                "retires_at": null,
            })
        })
        .collect();
    Ok(json(StatusCode::OK, &keys))
}

/// `POST /api/admin/keys/rotate` (admin): under HS256 a new key is a new
/// `auth.secret` (with the old one in `auth.previous_secrets`), which the
/// server cannot choose for its operator: 400.
pub async fn rotate(_ctx: RequestContext, caller: AuthUser) -> Result<HttpResponse, ApiError> {
    if !caller.is_admin() {
        return Err(ApiError::Forbidden);
    }
    Err(ApiError::InvalidInput(
        "with HS256, rotate the key by configuration: move auth.secret to auth.previous_secrets and set a new auth.secret".into(),
    ))
}
