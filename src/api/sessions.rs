//! Sessions over HTTP: the token pair every sign-in answers, and the routes
//! that list and end sessions (`/api/auth/sessions`, `/api/users/{id}/sessions`).
//!
//! A session is listed only while it is alive (`Session::is_alive`: sessions
//! past their time or from before a password change may still be stored
//! until the purge). Ending one deletes it, which the token check sees at
//! once.

use hyper::header::USER_AGENT;
use hyper::StatusCode;
use serde_json::json;

use crate::app::App;
use crate::domain::audit::{Action, Event};
use crate::domain::session::{Client, Session, SessionView};
use crate::domain::unix_now;
use crate::domain::user::User;
use crate::http::auth::AuthUser;
use crate::http::context::RequestContext;
use crate::http::error::ApiError;
use crate::http::{json, HttpResponse};
use crate::metrics::SessionEnd;
use crate::store::StoreError;

/// Starts a session of `user` for the request's client (its `User-Agent`
/// and address, as the throttle sees it) and answers its token pair. With
/// `login`, the session's start is recorded as a `login` event (a
/// registration, a password change or a reset records its own).
pub async fn start_session(
    ctx: &RequestContext,
    user: &User,
    login: bool,
) -> Result<HttpResponse, ApiError> {
    let app = &ctx.app;
    let user_agent = ctx
        .parts
        .headers
        .get(USER_AGENT)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let client = Client::new(&user_agent, ctx.client_ip().to_string());
    let (session, refresh_token) = Session::start(
        &app.refresh_keys,
        &app.sessions,
        &user.id,
        user.password_version,
        client,
        unix_now(),
    );
    let id = session.id.clone();
    let events = if login {
        let event = Event::new(
            Action::Login,
            Some(&user.id),
            &ctx.origin(Some(&user.id)),
            unix_now(),
        );
        vec![event.with("session_id", id.as_str())]
    } else {
        Vec::new()
    };
    match app.store.insert_session(session, events).await {
        Ok(()) => token_pair(app, user, &id, refresh_token),
        // Deleted while signing in.
        Err(StoreError::NotFound) => Err(ApiError::InvalidCredentials),
        Err(error) => Err(error.into()),
    }
}

/// Deletes every session of `user_id` after its password changed (`reason`:
/// a change or a reset). The new password version already refuses them and
/// their tokens; deleting them keeps the store from holding them until the
/// purge. (The change's own event says why they ended.)
pub async fn end_sessions_after_new_password(
    app: &App,
    user_id: &str,
    reason: SessionEnd,
) -> Result<(), ApiError> {
    let ended = app
        .store
        .end_user_sessions(user_id, None, Vec::new())
        .await?;
    app.metrics.sessions_ended(reason, ended.len());
    Ok(())
}

/// The token pair: `{auth, token, refresh_token, token_type, expires_in}`
/// (tutorial clients read `auth` and `token`).
pub fn token_pair(
    app: &App,
    user: &User,
    session_id: &str,
    refresh_token: String,
) -> Result<HttpResponse, ApiError> {
    // Signing with our own key cannot fail short of a bug: a 500, not the
    // 401 that `From<TokenError>` would make of it.
    let (token, _) = app
        .tokens
        .issue(user, Some(session_id), unix_now())
        .map_err(|e| ApiError::Internal(format!("signing a token: {e}")))?;
    Ok(json(
        StatusCode::OK,
        &json!({
            "auth": true,
            "token": token,
            "refresh_token": refresh_token,
            "token_type": "Bearer",
            "expires_in": app.tokens.ttl_secs(),
        }),
    ))
}

/// `GET /api/auth/sessions`: the caller's live sessions, newest first.
pub async fn list_own(ctx: RequestContext, caller: AuthUser) -> Result<HttpResponse, ApiError> {
    let sessions = alive_sessions(&ctx.app, caller.user()).await?;
    Ok(listing(&sessions, &caller))
}

/// `DELETE /api/auth/sessions/{id}`: ends one of the caller's live
/// sessions; 404 for any other id (someone else's included, so ids cannot
/// be probed).
pub async fn end_own(ctx: RequestContext, caller: AuthUser) -> Result<HttpResponse, ApiError> {
    let app = &ctx.app;
    let id = ctx.id();
    let owned = match app.store.session_and_user(id).await? {
        Some((session, user)) => {
            session.user_id == caller.user().id
                && session.is_alive(&app.sessions, user.password_version, unix_now())
        }
        None => false,
    };
    if !owned {
        return Err(ApiError::NotFound);
    }
    let caller_id = caller.user().id.as_str();
    let event = Event::new(
        Action::SessionRevoked,
        Some(caller_id),
        &ctx.origin(Some(caller_id)),
        unix_now(),
    )
    .with("session_id", id);
    let ended = app.store.end_session(id, vec![event]).await?;
    app.metrics
        .sessions_ended(SessionEnd::Revoked, usize::from(ended.is_some()));
    Ok(json(
        StatusCode::OK,
        &json!({"message": "Session revoked."}),
    ))
}

/// `GET /api/users/{id}/sessions` (themself or admin).
pub async fn list_user(ctx: RequestContext, caller: AuthUser) -> Result<HttpResponse, ApiError> {
    let user = sessions_owner(&ctx, &caller).await?;
    let sessions = alive_sessions(&ctx.app, &user).await?;
    Ok(listing(&sessions, &caller))
}

/// `DELETE /api/users/{id}/sessions` (themself or admin): ends them all
/// and answers how many were alive.
pub async fn end_user(ctx: RequestContext, caller: AuthUser) -> Result<HttpResponse, ApiError> {
    let user = sessions_owner(&ctx, &caller).await?;
    let app = &ctx.app;
    let now = unix_now();
    let origin = ctx.origin(Some(&caller.user().id));
    let event = Event::new(Action::SessionRevoked, Some(&user.id), &origin, now).with("all", true);
    let ended = app
        .store
        .end_user_sessions(&user.id, None, vec![event])
        .await?;
    app.metrics.sessions_ended(SessionEnd::Revoked, ended.len());
    let revoked = ended
        .iter()
        .filter(|s| s.is_alive(&app.sessions, user.password_version, now))
        .count();
    Ok(json(StatusCode::OK, &json!({ "revoked": revoked })))
}

/// The user `{id}` whose sessions the caller may see: 403 for anyone but
/// themself or an admin (whether or not the id exists), 404 for an admin
/// asking about an unknown id.
async fn sessions_owner(
    ctx: &RequestContext,
    caller: &AuthUser,
) -> Result<std::sync::Arc<User>, ApiError> {
    let id = ctx.id();
    if !caller.may_access(id) {
        return Err(ApiError::Forbidden);
    }
    ctx.app
        .store
        .user_by_id(id)
        .await?
        .ok_or(ApiError::NotFound)
}

/// `user`'s live sessions, newest first.
async fn alive_sessions(app: &App, user: &User) -> Result<Vec<Session>, ApiError> {
    let now = unix_now();
    let mut sessions: Vec<Session> = app
        .store
        .sessions_of(&user.id)
        .await?
        .into_iter()
        .filter(|s| s.is_alive(&app.sessions, user.password_version, now))
        .collect();
    // Ids are UUIDv7s: their order is their creation's, to the millisecond.
    sessions.sort_by(|a, b| {
        b.created_at
            .cmp(&a.created_at)
            .then_with(|| b.id.cmp(&a.id))
    });
    Ok(sessions)
}

fn listing(sessions: &[Session], caller: &AuthUser) -> HttpResponse {
    let current = caller.claims().sid.as_deref();
    let views: Vec<SessionView> = sessions
        .iter()
        .map(|s| s.view(Some(s.id.as_str()) == current))
        .collect();
    json(StatusCode::OK, &views)
}
