//! Signing keys over HTTP: `GET /.well-known/jwks.json`, the public keys as
//! an RFC 7517 JWK set, for gateways and services that verify gatehouse's
//! tokens without holding a secret; and the admin's view of the keys
//! (`GET /api/admin/keys`, `POST /api/admin/keys/rotate`).
//!
//! Under HS256 (a shared secret, never published) the set is empty, the
//! listing names the configured secrets only by `kid`, and rotation is by
//! configuration (`auth.previous_secrets`): 400. The set, the listing and
//! the rotation itself come from `TokenKeys` and `keyring`; this file only
//! speaks HTTP.

use hyper::header::{HeaderValue, CACHE_CONTROL};
use hyper::StatusCode;

use crate::http::auth::AuthUser;
use crate::http::context::RequestContext;
use crate::http::error::ApiError;
use crate::http::{json, json_bytes, HttpResponse};
use crate::keyring;

/// How long verifiers may cache the set (API.md).
const CACHE: &str = "public, max-age=300";

pub async fn jwks(ctx: RequestContext) -> Result<HttpResponse, ApiError> {
    let body = ctx.app.tokens.jwks();
    let mut response = json_bytes(StatusCode::OK, body.as_ref().clone());
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static(CACHE));
    Ok(response)
}

/// `GET /api/admin/keys` (admin): the keys tokens are signed and accepted
/// with, by `kid` (never their bytes), the signing key first. A configured
/// HS256 secret has no known creation time and retires when the operator
/// drops it: both null.
pub async fn list(ctx: RequestContext, caller: AuthUser) -> Result<HttpResponse, ApiError> {
    if !caller.is_admin() {
        return Err(ApiError::Forbidden);
    }
    Ok(json(StatusCode::OK, &ctx.app.tokens.listing()))
}

/// `POST /api/admin/keys/rotate` (admin): `{"standby": true}` publishes a
/// standby key, `{}` makes it (or a new key) current. Answers the listing.
pub async fn rotate(mut ctx: RequestContext, caller: AuthUser) -> Result<HttpResponse, ApiError> {
    if !caller.is_admin() {
        return Err(ApiError::Forbidden);
    }
    let mut fields = ctx.read_body().await?;
    let standby = fields.optional_bool("standby")?.unwrap_or(false);
    fields.refuse_unknown()?;
    let origin = ctx.origin(Some(&caller.user().id));
    keyring::rotate(&ctx.app, standby, &origin).await?;
    Ok(json(StatusCode::OK, &ctx.app.tokens.listing()))
}
