//! `/api/auth`: register, login, me, logout.
//!
//! Login answers an unknown email, a wrong password and an over-long password
//! identically and in about the same time (one bcrypt verification each), and
//! goes through the login throttle first.

use hyper::StatusCode;
use serde_json::json;

use crate::api::users::NewUser;
use crate::app::App;
use crate::domain::unix_now;
use crate::domain::user::{earlier_normalized_email, normalize_email, Role, User};
use crate::http::auth::{check_token, presented_token, AuthUser};
use crate::http::context::RequestContext;
use crate::http::error::ApiError;
use crate::http::{json, json_bytes, HttpResponse};

/// `POST /api/auth/register {name, email, password}`: a new `user`, and a
/// token for it. Unknown fields are ignored, as tutorial clients send extras.
pub async fn register(mut ctx: RequestContext) -> Result<HttpResponse, ApiError> {
    if !ctx.app.settings.auth.allow_registration {
        return Err(ApiError::RegistrationClosed);
    }
    // Counted first, whatever follows (a refused body too), so that a flood
    // of registrations costs no bcrypt hash beyond the limit.
    let client = ctx.client_ip();
    ctx.app.store.begin_registration(client).await??;
    let mut fields = ctx.read_body().await?;
    let app = &ctx.app;
    let user = NewUser::from_fields(&mut fields)?
        .insert(app, Role::User)
        .await?;
    tracing::info!(user = %user.id, "registered");
    token_response(app, &user)
}

/// `POST /api/auth/login {email, password}`.
pub async fn login(mut ctx: RequestContext) -> Result<HttpResponse, ApiError> {
    let mut fields = ctx.read_body().await?;
    let app = &ctx.app;
    let client = ctx.client_ip();
    let typed = fields.required("email")?;
    let email = normalize_email(&typed);
    let password = fields.required("password")?;
    let attempt = app.store.begin_login(&email, client).await??;
    let mut user = app.store.user_by_email(&email).await?;
    if user.is_none() {
        // An account stored before emails were NFKC/UTS #46-normalized keeps
        // its address as it was then (trimmed, lower-cased): still found.
        let earlier = earlier_normalized_email(&typed);
        if earlier != email {
            user = app.store.user_by_email(&earlier).await?;
        }
    }
    let hash = user.as_ref().map(|u| u.password_hash.clone());
    match (app.passwords.verify(password, hash).await?, user) {
        (true, Some(user)) => {
            app.store.login_succeeded(attempt).await?;
            token_response(app, &user)
        }
        _ => Err(ApiError::InvalidCredentials),
    }
}

/// `GET /api/auth/me`: the caller's user object.
pub async fn me(_ctx: RequestContext, caller: AuthUser) -> Result<HttpResponse, ApiError> {
    Ok(json_bytes(StatusCode::OK, caller.user().view().to_json()))
}

/// `GET|POST /api/auth/logout`: always 200; a valid token sent with it is
/// revoked, durably, until it expires.
pub async fn logout(ctx: RequestContext) -> Result<HttpResponse, ApiError> {
    if let Ok(Some(token)) = presented_token(&ctx.parts.headers) {
        match check_token(&ctx.app, token).await {
            Ok(caller) => {
                let claims = caller.claims();
                ctx.app.store.revoke(&claims.jti, claims.exp).await?;
            }
            Err(ApiError::StoreUnavailable) => return Err(ApiError::StoreUnavailable),
            Err(_) => {} // An invalid token has nothing left to revoke.
        }
    }
    Ok(json(StatusCode::OK, &json!({"auth": false, "token": null})))
}

fn token_response(app: &App, user: &User) -> Result<HttpResponse, ApiError> {
    // Signing with our own HS256 key cannot fail short of a bug: a 500, not
    // the 401 that `From<TokenError>` would make of it.
    let (token, _) = app
        .tokens
        .issue(user, unix_now())
        .map_err(|e| ApiError::Internal(format!("signing a token: {e}")))?;
    Ok(json(StatusCode::OK, &json!({"auth": true, "token": token})))
}
