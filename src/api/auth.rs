//! `/api/auth`: register, login, me, logout, refresh, password change.
//! Register, login, refresh and password change answer a token pair (see
//! `api::sessions`).
//!
//! Login answers an unknown email, a wrong password and an over-long password
//! identically and in about the same time (one bcrypt verification each), and
//! goes through the login throttle first.

use hyper::header::CONTENT_TYPE;
use hyper::{Method, StatusCode};
use serde_json::json;

use crate::api::sessions::{end_sessions_after_new_password, start_session, token_pair};
use crate::api::users::{
    confirm_password, find_by_email, login_outcome, record_failed_login, NewUser,
};
use crate::domain::audit::{Action, Event};
use crate::domain::unix_now;
use crate::domain::user::{normalize_email, valid_password, Role};
use crate::http::auth::{check_token, presented_token, AuthUser};
use crate::http::body::parse_query;
use crate::http::context::RequestContext;
use crate::http::error::ApiError;
use crate::http::{json, json_bytes, HttpResponse};
use crate::metrics::{RefreshOutcome, SessionEnd};
use crate::store::{Refresh, UserPatch};

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
        .insert(app, Role::User, false, Action::Register, &ctx.origin(None))
        .await?;
    app.metrics.registration();
    crate::api::recovery::after_creation(&ctx.app, &user);
    if app.settings.auth.require_verified_email {
        // No session until the address is confirmed: the mail's link, then
        // a login.
        return Ok(json(
            StatusCode::ACCEPTED,
            &json!({
                "auth": false,
                "token": null,
                "message": "Registered. Confirm your email address with the link we sent, then log in."
            }),
        ));
    }
    start_session(&ctx, &user, false).await
}

/// `POST /api/auth/login {email, password}`. A failure, a throttled attempt
/// and the right password for an unverified address are recorded as
/// `login_failed` / `login_throttled` (see `record_failed_login`), a
/// success as `login` with its session; and counted in
/// `gatehouse_logins_total` by outcome.
pub async fn login(ctx: RequestContext) -> Result<HttpResponse, ApiError> {
    let metrics = ctx.app.metrics.clone();
    let answer = sign_in(ctx).await;
    if let Some(outcome) = login_outcome(&answer) {
        metrics.login(outcome);
    }
    answer
}

async fn sign_in(mut ctx: RequestContext) -> Result<HttpResponse, ApiError> {
    let mut fields = ctx.read_body().await?;
    let app = &ctx.app;
    let client = ctx.client_ip();
    let typed = fields.required("email")?;
    let email = normalize_email(&typed);
    let password = fields.required("password")?;
    let origin = ctx.origin(None);
    let attempt = match app.store.begin_login(&email, client).await? {
        Ok(attempt) => attempt,
        Err(wait) => {
            let user = find_by_email(app, &typed, &email).await?;
            let action = Action::LoginThrottled;
            record_failed_login(app, action, user.as_ref(), &email, &origin, None).await?;
            return Err(wait.into());
        }
    };
    let user = find_by_email(app, &typed, &email).await?;
    let hash = user.as_ref().map(|u| u.password_hash.clone());
    // Kept only for a hash below the configured cost (see below).
    let upgrade = user
        .as_ref()
        .filter(|u| app.passwords.needs_upgrade(&u.password_hash))
        .map(|_| password.clone());
    match (app.passwords.verify(password, hash).await?, user) {
        (true, Some(user)) => {
            app.store.login_succeeded(attempt).await?;
            if let Some(password) = upgrade {
                upgrade_hash(app, &user, password).await;
            }
            // Only after the right password: the 403 tells nothing to
            // someone who does not know it.
            if app.settings.auth.require_verified_email && !user.email_verified {
                let reason = Some("email_not_verified");
                let action = Action::LoginFailed;
                record_failed_login(app, action, Some(&user), &email, &origin, reason).await?;
                return Err(ApiError::EmailNotVerified);
            }
            start_session(&ctx, &user, true).await
        }
        (_, user) => {
            let action = Action::LoginFailed;
            record_failed_login(app, action, user.as_ref(), &email, &origin, None).await?;
            Err(ApiError::InvalidCredentials)
        }
    }
}

/// Stores a hash of `password` at `auth.bcrypt_cost` for `user`, whose hash
/// was made at a lower one (an imported account, a lowered cost raised
/// again). A failure only leaves the old hash, which still works: logged,
/// and the login goes on.
async fn upgrade_hash(app: &crate::app::App, user: &crate::domain::user::User, password: String) {
    let upgraded = match app.passwords.hash(password).await {
        Ok(new) => {
            app.store
                .upgrade_password_hash(&user.id, user.password_hash.clone(), new)
                .await
        }
        Err(error) => {
            tracing::warn!(user = %user.id, %error, "password hash not upgraded");
            return;
        }
    };
    match upgraded {
        Ok(true) => tracing::info!(user = %user.id, "password hash upgraded to auth.bcrypt_cost"),
        Ok(false) => {} // changed meanwhile: the newer hash stands
        Err(error) => tracing::warn!(user = %user.id, %error, "password hash not upgraded"),
    }
}

/// `GET /api/auth/me`: the caller's user object.
pub async fn me(_ctx: RequestContext, caller: AuthUser) -> Result<HttpResponse, ApiError> {
    Ok(json_bytes(StatusCode::OK, caller.user().view().to_json()))
}

/// `GET|POST /api/auth/logout[?scope=local|global|others]`: always 200
/// (unless the scope is not one of those, or the store cannot answer). With
/// a valid token: `local` (the default) ends its session, `global` every
/// session of its user, `others` every one but its own; a token from before
/// sessions is revoked, durably, until it expires. A body's
/// `refresh_token` ends that token's session too (for a client whose access
/// token has expired). An invalid token or refresh token has nothing left
/// to end. What ended is recorded as one `logout` event per write (none when
/// nothing ended).
pub async fn logout(mut ctx: RequestContext) -> Result<HttpResponse, ApiError> {
    let scope = LogoutScope::from_query(ctx.parts.uri.query())?;
    let refresh_token = logout_refresh_token(&mut ctx).await;
    let app = &ctx.app;
    let now = unix_now();
    if let Ok(Some(token)) = presented_token(&ctx.parts.headers) {
        match check_token(app, token).await {
            Ok(caller) => {
                let claims = caller.claims();
                let own = claims.sid.as_deref();
                let event = Event::new(
                    Action::Logout,
                    Some(&claims.sub),
                    &ctx.origin(Some(&claims.sub)),
                    now,
                )
                .with("scope", scope.as_str());
                let ended = match (scope, own) {
                    (LogoutScope::Local, Some(sid)) => {
                        let event = event.clone().with("session_id", sid);
                        usize::from(app.store.end_session(sid, vec![event]).await?.is_some())
                    }
                    (LogoutScope::Local, None) => 0,
                    (LogoutScope::Global, _) => {
                        let events = vec![event.clone()];
                        let ended = app
                            .store
                            .end_user_sessions(&claims.sub, None, events)
                            .await?;
                        ended.len()
                    }
                    (LogoutScope::Others, _) => {
                        let events = vec![event.clone()];
                        // Never followed by a revocation (below).
                        app.store
                            .end_user_sessions(&claims.sub, own, events)
                            .await?
                            .len()
                    }
                };
                app.metrics.sessions_ended(SessionEnd::Logout, ended);
                if own.is_none() && scope != LogoutScope::Others {
                    // One event per logout: on the revocation when no
                    // session write recorded it.
                    let events = if ended > 0 { Vec::new() } else { vec![event] };
                    app.store.revoke(&claims.jti, claims.exp, events).await?;
                }
            }
            Err(ApiError::StoreUnavailable) => return Err(ApiError::StoreUnavailable),
            Err(_) => {} // An invalid token has nothing left to end.
        }
    }
    if let Some(presented) = refresh_token.and_then(|t| app.refresh_keys.parse(&t).ok()) {
        // Read first, for the event's user; ending it decides again.
        if let Some((session, _)) = app.store.session_and_user(&presented.session_id).await? {
            let user_id = session.user_id.as_str();
            let event = Event::new(
                Action::Logout,
                Some(user_id),
                &ctx.origin(Some(user_id)),
                now,
            )
            .with("scope", "refresh_token")
            .with("session_id", session.id.as_str());
            let ended = app.store.end_session(&session.id, vec![event]).await?;
            app.metrics
                .sessions_ended(SessionEnd::Logout, usize::from(ended.is_some()));
        }
    }
    Ok(json(StatusCode::OK, &json!({"auth": false, "token": null})))
}

/// What a logout ends, besides a refresh token's session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LogoutScope {
    Local,
    Global,
    Others,
}

impl LogoutScope {
    fn as_str(self) -> &'static str {
        match self {
            LogoutScope::Local => "local",
            LogoutScope::Global => "global",
            LogoutScope::Others => "others",
        }
    }

    /// `?scope=`; absent means `local`. Anything else is refused rather than
    /// read as `local`: a client asking to end every session must not be told
    /// "done" when only one ended.
    fn from_query(query: Option<&str>) -> Result<LogoutScope, ApiError> {
        let mut query = parse_query(query.unwrap_or_default())?;
        match query.optional("scope")?.as_deref() {
            None | Some("local") => Ok(LogoutScope::Local),
            Some("global") => Ok(LogoutScope::Global),
            Some("others") => Ok(LogoutScope::Others),
            Some(_) => Err(ApiError::InvalidInput(
                "scope must be \"local\", \"global\" or \"others\"".into(),
            )),
        }
    }
}

/// The `refresh_token` of a logout's body, if it has a readable one. A
/// logout answers 200 whatever its body (tutorial clients post empty or
/// unrelated ones), so an unreadable body names no session.
async fn logout_refresh_token(ctx: &mut RequestContext) -> Option<String> {
    if ctx.parts.method != Method::POST || !ctx.parts.headers.contains_key(CONTENT_TYPE) {
        return None;
    }
    match ctx.read_body().await {
        Ok(mut fields) => fields.optional("refresh_token").ok().flatten(),
        Err(error) => {
            tracing::debug!(%error, "logout body not read");
            None
        }
    }
}

/// `POST /api/auth/refresh {refresh_token}`: a new token pair, the
/// presented token spent (see `Store::refresh` for the reuse window and
/// reuse detection).
pub async fn refresh(mut ctx: RequestContext) -> Result<HttpResponse, ApiError> {
    let mut fields = ctx.read_body().await?;
    let text = fields.required("refresh_token")?;
    if text.is_empty() {
        return Err(ApiError::InvalidInput(
            "refresh_token must not be empty".into(),
        ));
    }
    let app = &ctx.app;
    let Ok(presented) = app.refresh_keys.parse(&text) else {
        app.metrics.refresh(RefreshOutcome::Refused);
        return Err(ApiError::InvalidRefreshToken);
    };
    let refreshed = app
        .store
        .refresh(
            &presented,
            &app.refresh_keys,
            &app.sessions,
            unix_now(),
            &ctx.origin(None),
        )
        .await?;
    app.metrics.refresh(refresh_outcome(&refreshed));
    match refreshed {
        Refresh::Granted {
            session,
            user,
            refresh_token,
        } => token_pair(app, &user, &session.id, refresh_token),
        Refresh::Reused { session, ended } => {
            // Counted by the presentation that ended it, once.
            app.metrics
                .sessions_ended(SessionEnd::Reuse, usize::from(ended));
            tracing::warn!(
                user = %session.user_id,
                session = %session.id,
                "refresh token reused: session ended"
            );
            Err(ApiError::InvalidRefreshToken)
        }
        Refresh::Refused => Err(ApiError::InvalidRefreshToken),
    }
}

/// What presenting a refresh token counts as in `gatehouse_refreshes_total`.
fn refresh_outcome(refreshed: &Refresh) -> RefreshOutcome {
    match refreshed {
        Refresh::Granted { .. } => RefreshOutcome::Granted,
        Refresh::Reused { .. } => RefreshOutcome::Reused,
        Refresh::Refused => RefreshOutcome::Refused,
    }
}

/// `POST /api/auth/password {current_password, new_password}`: the
/// current password checked as a login would be (throttled; a wrong one
/// counts as a failure), then the new one stored, which ends every session
/// and token of the user; the answer is the token pair of a new session.
pub async fn change_password(
    mut ctx: RequestContext,
    caller: AuthUser,
) -> Result<HttpResponse, ApiError> {
    let mut fields = ctx.read_body().await?;
    let current = fields.required("current_password")?;
    let new_password = fields.required("new_password")?;
    fields.refuse_unknown()?;
    let app = &ctx.app;
    valid_password(&new_password, app.settings.auth.min_password_len)?;
    confirm_password(&ctx, caller.user(), current).await?;
    let patch = UserPatch {
        password_hash: Some(app.passwords.hash(new_password).await?),
        ..UserPatch::default()
    };
    let (now, origin) = (unix_now(), ctx.origin(Some(&caller.user().id)));
    let user = app
        .store
        .update_user(&caller.user().id, patch, now, &origin)
        .await?;
    end_sessions_after_new_password(app, &user.id, SessionEnd::PasswordChange).await?;
    start_session(&ctx, &user, false).await
}
