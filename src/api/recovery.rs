//! Account recovery and email verification by mail: `POST
//! /api/auth/password/forgot`, `/password/reset`, `/verify`,
//! `/verify/request`, and the mails registration and email changes send.
//!
//! The rules that matter (API.md, "Account recovery"): the answer to a mail
//! request never says whether the address has an account and takes about as
//! long either way (the lookup, token and mail happen after the answer, in a
//! task of their own); a request never waits on the mail server (`mail.rs`
//! queues); mail routes answer 400, then 503 without mail, then 429, then
//! the rest. What a token is and when one is accepted is
//! `domain::mail_token`'s; spending it atomically with its change is the
//! store's.

use std::sync::Arc;

use hyper::StatusCode;
use serde_json::json;

use crate::api::sessions::start_session;
use crate::api::users::find_by_email;
use crate::app::App;
use crate::domain::audit::{Action, Event};
use crate::domain::mail_token::{self, MailTokenKind};
use crate::domain::unix_now;
use crate::domain::user::{valid_email, valid_password, User};
use crate::http::auth::{check_token, presented_token};
use crate::http::context::RequestContext;
use crate::http::error::ApiError;
use crate::http::{json, json_bytes, HttpResponse};
use crate::mail::{MailKind, Mailer, Outgoing};
use crate::metrics::SessionEnd;

/// The one answer of `forgot` and of `verify/request` by address, whatever
/// the address.
fn accepted() -> HttpResponse {
    json(
        StatusCode::ACCEPTED,
        &json!({"message": "If an account has this address and needs the mail, it is on its way."}),
    )
}

/// `POST /api/auth/password/forgot {email}`: 202 for every address; a known
/// one gets a reset link (at most one per `mail.resend_secs`).
pub async fn forgot(mut ctx: RequestContext) -> Result<HttpResponse, ApiError> {
    let mut fields = ctx.read_body().await?;
    let typed = fields.required("email")?;
    let email = valid_email(&typed)?;
    if ctx.app.mailer.is_none() {
        return Err(ApiError::MailUnavailable);
    }
    ctx.app.store.begin_mail_request(ctx.client_ip()).await??;
    let app = Arc::clone(&ctx.app);
    let origin = ctx.origin(None);
    tokio::spawn(async move {
        match find_by_email(&app, &typed, &email).await {
            Ok(Some(user)) => {
                // Recorded with the token, if one is issued (not within the
                // resend window).
                let event = Event::new(
                    Action::PasswordResetRequested,
                    Some(&user.id),
                    &origin,
                    unix_now(),
                )
                .with("email", user.email.as_str());
                mail_token_link(&app, &user, MailTokenKind::Reset, false, vec![event]).await
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(%error, "password reset mail: the store did not answer"),
        }
    });
    Ok(accepted())
}

/// `POST /api/auth/password/reset {token, password}`: the new password
/// (its rule first: a refused password does not spend the token), the
/// address marked verified, every earlier session and token ended, and a
/// token pair for a new session.
pub async fn reset(mut ctx: RequestContext) -> Result<HttpResponse, ApiError> {
    let mut fields = ctx.read_body().await?;
    let token = fields.required("token")?;
    let password = fields.required("password")?;
    let app = Arc::clone(&ctx.app);
    valid_password(&password, app.settings.auth.min_password_len)?;
    let presented =
        mail_token::parse(token.trim(), MailTokenKind::Reset).ok_or(ApiError::InvalidResetToken)?;
    // A bcrypt hash only for a token that can work: anyone can make up one
    // that parses, and hashing is the scarce resource.
    if !app.store.mail_token_is_live(&presented, unix_now()).await? {
        return Err(ApiError::InvalidResetToken);
    }
    let hash = app.passwords.hash(password).await?;
    let now = unix_now();
    let event = Event::new(
        Action::PasswordReset,
        Some(&presented.user_id),
        &ctx.origin(None),
        now,
    );
    let user = app
        .store
        .use_mail_token(
            presented,
            now,
            move |user| {
                user.password_hash = hash.clone();
                // The new version ends every session and token issued before.
                user.password_version += 1;
                // The mail reached its owner: the address is theirs.
                user.email_verified = true;
            },
            vec![event],
        )
        .await?
        .ok_or(ApiError::InvalidResetToken)?;
    crate::api::sessions::end_sessions_after_new_password(&app, &user.id, SessionEnd::Reset)
        .await?;
    start_session(&ctx, &user, false).await
}

/// `POST /api/auth/verify {token}`: 200 and the user, now verified.
pub async fn verify(mut ctx: RequestContext) -> Result<HttpResponse, ApiError> {
    let mut fields = ctx.read_body().await?;
    let token = fields.required("token")?;
    let presented = mail_token::parse(token.trim(), MailTokenKind::Verify)
        .ok_or(ApiError::InvalidVerificationToken)?;
    let now = unix_now();
    let event = Event::new(
        Action::EmailVerified,
        Some(&presented.user_id),
        &ctx.origin(None),
        now,
    );
    let user = ctx
        .app
        .store
        .use_mail_token(
            presented,
            now,
            |user| user.email_verified = true,
            vec![event],
        )
        .await?
        .ok_or(ApiError::InvalidVerificationToken)?;
    Ok(json_bytes(StatusCode::OK, user.view().to_json()))
}

/// `POST /api/auth/verify/request`: with a token, a new verification mail
/// for the caller (409 if already verified); without one, `{email}` and
/// the same 202 for every address, mailing only an unverified account.
pub async fn verify_request(mut ctx: RequestContext) -> Result<HttpResponse, ApiError> {
    let app = Arc::clone(&ctx.app);
    if let Some(token) = presented_token(&ctx.parts.headers)? {
        let caller = check_token(&app, token).await?;
        if app.mailer.is_none() {
            return Err(ApiError::MailUnavailable);
        }
        app.store.begin_mail_request(ctx.client_ip()).await??;
        let user = caller.user();
        if user.email_verified {
            return Err(ApiError::AlreadyVerified);
        }
        mail_token_link(&app, user, MailTokenKind::Verify, false, Vec::new()).await;
        return Ok(json(
            StatusCode::ACCEPTED,
            &json!({"message": "A verification mail is on its way, unless one was sent moments ago."}),
        ));
    }
    let mut fields = ctx.read_body().await?;
    let typed = fields.required("email")?;
    let email = valid_email(&typed)?;
    if app.mailer.is_none() {
        return Err(ApiError::MailUnavailable);
    }
    app.store.begin_mail_request(ctx.client_ip()).await??;
    tokio::spawn(async move {
        match find_by_email(&app, &typed, &email).await {
            Ok(Some(user)) if !user.email_verified => {
                mail_token_link(&app, &user, MailTokenKind::Verify, false, Vec::new()).await
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "verification mail: the store did not answer"),
        }
    });
    Ok(accepted())
}

/// After a registration or an admin's creation of an unverified user: a
/// verification mail, when mail is configured. Never fails the request.
pub fn after_creation(app: &Arc<App>, user: &User) {
    if app.mailer.is_none() || user.email_verified {
        return;
    }
    let (app, user) = (Arc::clone(app), user.clone());
    tokio::spawn(async move {
        mail_token_link(&app, &user, MailTokenKind::Verify, true, Vec::new()).await
    });
}

/// After an email change (`old` → `user.email`): a verification mail to the
/// new address whatever the resend window (unless an admin marked it
/// verified in the same change), and a notice to the old one.
pub fn after_email_change(app: &Arc<App>, old: &User, user: &User) {
    let Some(mailer) = &app.mailer else {
        return;
    };
    mailer.send(Outgoing {
        kind: MailKind::EmailChanged,
        user_id: user.id.clone(),
        to: old.email.clone(),
        name: user.name.clone(),
        email: user.email.clone(),
        link: None,
        expires_minutes: 0,
    });
    if !user.email_verified {
        let (app, user) = (Arc::clone(app), user.clone());
        tokio::spawn(async move {
            mail_token_link(&app, &user, MailTokenKind::Verify, true, Vec::new()).await
        });
    }
}

/// Issues a token of `kind` for `user`, stores it (unless a mail of that
/// kind went out less than `mail.resend_secs` ago and `force` is false) and
/// queues its mail. Failures are logged, never the token.
async fn mail_token_link(
    app: &App,
    user: &User,
    kind: MailTokenKind,
    force: bool,
    events: Vec<Event>,
) {
    let Some(mailer) = &app.mailer else {
        return;
    };
    let (ttl, mail_kind) = match kind {
        MailTokenKind::Reset => (app.settings.auth.reset_token_ttl_secs, MailKind::Reset),
        MailTokenKind::Verify => (app.settings.auth.verify_token_ttl_secs, MailKind::Verify),
    };
    let resend = if force {
        0
    } else {
        app.settings.mail.resend_secs
    };
    let (token, pending) = match mail_token::issue(kind, user, unix_now(), ttl) {
        Ok(issued) => issued,
        Err(error) => {
            tracing::warn!(user = %user.id, %error, "no mail token: no randomness");
            return;
        }
    };
    match app
        .store
        .put_mail_token(&user.id, kind, pending, resend, events)
        .await
    {
        Ok(true) => send_link(mailer, mail_kind, user, &token, ttl),
        Ok(false) => {
            tracing::info!(user = %user.id, kind = mail_kind.as_str(), "mail not sent: one was sent moments ago")
        }
        Err(error) => tracing::warn!(user = %user.id, %error, "mail token not stored"),
    }
}

fn send_link(mailer: &Mailer, kind: MailKind, user: &User, token: &str, ttl: u64) {
    mailer.send(Outgoing {
        kind,
        user_id: user.id.clone(),
        to: user.email.clone(),
        name: user.name.clone(),
        email: user.email.clone(),
        link: Some(mailer.link(kind, token)),
        expires_minutes: ttl.div_ceil(60),
    });
}
