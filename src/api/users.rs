//! `/api/users`: user management. A user may read, change and delete only
//! themself; an admin may do anything, and only an admin lists users, creates
//! them, or sets a `role`. These routes refuse unknown fields.

use std::sync::Arc;

use hyper::header::{HeaderValue, LINK};
use hyper::StatusCode;
use serde_json::json;

use crate::app::App;
use crate::domain::audit::{self, Action, Event, Origin};
use crate::domain::unix_now;
use crate::domain::user::{
    earlier_normalized_email, valid_email, valid_name, valid_password, Role, User, UserView,
};
use crate::http::auth::AuthUser;
use crate::http::body::{parse_query, Fields};
use crate::http::context::RequestContext;
use crate::http::error::ApiError;
use crate::http::{json, json_bytes, HttpResponse};
use crate::metrics::{LoginOutcome, SessionEnd};
use crate::store::{StoreError, UserPatch};

pub const DEFAULT_PAGE: usize = 100;
pub const MAX_PAGE: usize = 1000;

/// `GET /api/users?limit=&after=` (admin): users in `_id` order, with a
/// `Link: <…>; rel="next"` header when more follow.
pub async fn list(ctx: RequestContext, caller: AuthUser) -> Result<HttpResponse, ApiError> {
    if !caller.is_admin() {
        return Err(ApiError::Forbidden);
    }
    let mut query = parse_query(ctx.parts.uri.query().unwrap_or_default())?;
    let limit = page_limit(&mut query)?;
    let after = query.optional("after")?;
    // A cursor is an `_id` from an earlier page; anything else never names
    // a position, and text a database would refuse (NUL, kilobytes) must not
    // reach one.
    if after.as_deref().is_some_and(|a| !plausible_id(a)) {
        return Err(ApiError::InvalidInput("after must be a user _id".into()));
    }
    let (users, more) = ctx.app.store.list_users(after.as_deref(), limit).await?;
    let views: Vec<UserView> = users.iter().map(User::view).collect();
    let mut response = json(StatusCode::OK, &views);
    if let (true, Some(last)) = (more, users.last()) {
        let after: String =
            percent_encoding::utf8_percent_encode(&last.id, percent_encoding::NON_ALPHANUMERIC)
                .to_string();
        let link = format!("</api/users?limit={limit}&after={after}>; rel=\"next\"");
        if let Ok(value) = HeaderValue::from_str(&link) {
            response.headers_mut().insert(LINK, value);
        }
    }
    Ok(response)
}

/// `POST /api/users {name, email, password, role?}` (admin): 201 and the user.
pub async fn create(mut ctx: RequestContext, caller: AuthUser) -> Result<HttpResponse, ApiError> {
    if !caller.is_admin() {
        return Err(ApiError::Forbidden);
    }
    let mut fields = ctx.read_body().await?;
    let app = &ctx.app;
    let new = NewUser::from_fields(&mut fields)?;
    let role = role(&mut fields)?.unwrap_or(Role::User);
    let email_verified = fields.optional_bool("email_verified")?.unwrap_or(false);
    fields.refuse_unknown()?;
    let origin = ctx.origin(Some(&caller.user().id));
    let user = new
        .insert(app, role, email_verified, Action::UserCreated, &origin)
        .await?;
    crate::api::recovery::after_creation(&ctx.app, &user);
    Ok(json_bytes(StatusCode::CREATED, user.view().to_json()))
}

/// A new account's fields, taken from a body but not yet checked against
/// the password rule: registration and `POST /api/users` both create users
/// through this one path.
pub struct NewUser {
    name: String,
    email: String,
    password: String,
}

impl NewUser {
    /// Takes `name`, `email` and `password`, checking the name and email
    /// rules (the email normalized).
    pub fn from_fields(fields: &mut Fields) -> Result<NewUser, ApiError> {
        Ok(NewUser {
            name: valid_name(&fields.required("name")?)?,
            email: valid_email(&fields.required("email")?)?,
            password: fields.required("password")?,
        })
    }

    /// Checks the password rule, hashes it and stores the user with `role`.
    /// `EmailTaken` if the address has an account (decided by the store's
    /// transaction when two requests race).
    /// Stores the user, recorded as `action` (`register`: by the new user
    /// themself; `user_created`: by `origin`'s admin).
    pub async fn insert(
        self,
        app: &App,
        role: Role,
        email_verified: bool,
        action: Action,
        origin: &Origin,
    ) -> Result<User, ApiError> {
        valid_password(&self.password, app.settings.auth.min_password_len)?;
        // Spare a bcrypt hash when the answer is already known.
        if app.store.user_by_email(&self.email).await?.is_some() {
            return Err(ApiError::EmailTaken);
        }
        let hash = app.passwords.hash(self.password).await?;
        let now = unix_now();
        let mut user = User::new(self.name, self.email, role, hash, now);
        user.email_verified = email_verified;
        let origin = match action {
            Action::Register => origin.by(&user.id),
            _ => origin.clone(),
        };
        let event = Event::new(action, Some(&user.id), &origin, now)
            .with("email", user.email.as_str())
            .with("role", role.as_str())
            .with("email_verified", email_verified);
        Ok(app.store.insert_user(user, vec![event]).await?)
    }
}

/// The account of an address as typed (`typed`) and normalized: found by
/// its normalized form, or by the earlier trim-and-lower-case form an
/// account stored before NFKC/UTS #46 normalization keeps. Login and the mail
/// routes look accounts up through this one path.
pub async fn find_by_email(
    app: &App,
    typed: &str,
    normalized: &str,
) -> Result<Option<User>, StoreError> {
    if let Some(user) = app.store.user_by_email(normalized).await? {
        return Ok(Some(user));
    }
    let earlier = earlier_normalized_email(typed);
    if earlier == normalized {
        return Ok(None);
    }
    app.store.user_by_email(&earlier).await
}

/// `GET /api/users/{id}` (themself or admin). Anyone else gets 403 whether or
/// not the id exists, so ids cannot be probed.
pub async fn get(ctx: RequestContext, caller: AuthUser) -> Result<HttpResponse, ApiError> {
    let id = ctx.id();
    if !caller.may_access(id) {
        return Err(ApiError::Forbidden);
    }
    let user = ctx
        .app
        .store
        .user_by_id(id)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(json_bytes(StatusCode::OK, user.view().to_json()))
}

/// `PUT|PATCH /api/users/{id} {name?, email?, password?, role?}` (themself or
/// admin; only an admin sets `role`). A new password ends every session and
/// token of the user.
pub async fn update(mut ctx: RequestContext, caller: AuthUser) -> Result<HttpResponse, ApiError> {
    if !caller.may_access(ctx.id()) {
        return Err(ApiError::Forbidden);
    }
    let mut fields = ctx.read_body().await?;
    let app = &ctx.app;
    let id = ctx.id.as_deref().unwrap_or_default();
    let name = fields
        .optional("name")?
        .map(|n| valid_name(&n))
        .transpose()?;
    let email = fields
        .optional("email")?
        .map(|e| valid_email(&e))
        .transpose()?;
    let password = fields.optional("password")?;
    let role = role(&mut fields)?;
    let email_verified = fields.optional_bool("email_verified")?;
    let current_password = fields.optional("current_password")?;
    fields.refuse_unknown()?;
    // Whether an address is confirmed is the mail link's to say, or an
    // admin's.
    if (role.is_some() || email_verified.is_some()) && !caller.is_admin() {
        return Err(ApiError::Forbidden);
    }
    if let Some(password) = &password {
        valid_password(password, app.settings.auth.min_password_len)?;
    }
    // A stolen access token must not be enough to take the account over: a
    // user changing their own password or email proves they know the
    // current password. (An admin changing someone else's does not.)
    let own = caller.user().id == id;
    let new_email = email.as_ref().is_some_and(|e| *e != caller.user().email);
    if own && (password.is_some() || new_email) {
        let current = current_password.ok_or_else(|| {
            ApiError::InvalidInput(
                "current_password is required to change your own password or email".into(),
            )
        })?;
        confirm_password(&ctx, caller.user(), current).await?;
    }
    // The user as it is now, for the mails of an email change and for an
    // empty change's answer (the caller's own record was read by the token
    // check just now). The events are decided by the store, from the user
    // as its write finds it.
    let before = if own {
        caller.shared_user()
    } else {
        app.store.user_by_id(id).await?.ok_or(ApiError::NotFound)?
    };
    let password_hash = match password {
        Some(password) => Some(app.passwords.hash(password).await?),
        None => None,
    };
    let patch = UserPatch {
        name,
        email,
        role,
        password_hash,
        email_verified,
    };
    let new_password = patch.password_hash.is_some();
    let user = if patch.is_empty() {
        Arc::clone(&before)
    } else {
        let (now, origin) = (unix_now(), ctx.origin(Some(&caller.user().id)));
        Arc::new(app.store.update_user(id, patch, now, &origin).await?)
    };
    if new_password {
        // The caller's own session too.
        crate::api::sessions::end_sessions_after_new_password(
            app,
            &user.id,
            SessionEnd::PasswordChange,
        )
        .await?;
    }
    if before.email != user.email {
        crate::api::recovery::after_email_change(&ctx.app, &before, &user);
    }
    Ok(json_bytes(StatusCode::OK, user.view().to_json()))
}

/// Checks `password` against `user`'s, as a login would: throttled (429)
/// with logins for the same email and address, and a wrong one counted as a
/// failed login (403 `wrong_password`), so it cannot be guessed faster here.
/// Recorded (`login_failed` or `login_throttled`, reason
/// `wrong_current_password`) like a login. The metrics count a refusal as
/// a login's; a right password is no sign-in.
pub async fn confirm_password(
    ctx: &RequestContext,
    user: &User,
    password: String,
) -> Result<(), ApiError> {
    let checked = check_password(ctx, user, password).await;
    if let (Err(_), Some(outcome)) = (&checked, login_outcome(&checked)) {
        ctx.app.metrics.login(outcome);
    }
    checked
}

/// What the answer to a password check (a login, a `current_password`)
/// counts as in `gatehouse_logins_total`; `None` for a request that checked
/// no password (a malformed body, a store that did not answer).
pub fn login_outcome<T>(answer: &Result<T, ApiError>) -> Option<LoginOutcome> {
    match answer {
        Ok(_) => Some(LoginOutcome::Success),
        Err(ApiError::InvalidCredentials | ApiError::WrongPassword) => Some(LoginOutcome::Failure),
        Err(ApiError::TooManyAttempts { .. }) => Some(LoginOutcome::Throttled),
        Err(ApiError::EmailNotVerified) => Some(LoginOutcome::Unverified),
        Err(_) => None,
    }
}

async fn check_password(
    ctx: &RequestContext,
    user: &User,
    password: String,
) -> Result<(), ApiError> {
    let app = &ctx.app;
    let origin = ctx.origin(Some(&user.id));
    let reason = Some("wrong_current_password");
    let attempt = match app.store.begin_login(&user.email, ctx.client_ip()).await? {
        Ok(attempt) => attempt,
        Err(wait) => {
            let action = Action::LoginThrottled;
            record_failed_login(app, action, Some(user), &user.email, &origin, reason).await?;
            return Err(wait.into());
        }
    };
    if !app
        .passwords
        .verify(password, Some(user.password_hash.clone()))
        .await?
    {
        let action = Action::LoginFailed;
        record_failed_login(app, action, Some(user), &user.email, &origin, reason).await?;
        return Err(ApiError::WrongPassword);
    }
    app.store.login_succeeded(attempt).await?;
    Ok(())
}

/// Records a failed or throttled login (`action`) of `user` (`None`: no
/// account has `email`, the normalized address typed), with `reason` when
/// it is not a wrong password at the login route. Stored within the
/// per-minute bound (`Store::record`).
pub async fn record_failed_login(
    app: &App,
    action: Action,
    user: Option<&User>,
    email: &str,
    origin: &Origin,
    reason: Option<&str>,
) -> Result<(), ApiError> {
    let now = unix_now();
    let looks_like_email = valid_email(email).is_ok();
    let mut event = audit::failed_login(action, user, email, looks_like_email, origin, now);
    if let Some(reason) = reason {
        event = event.with("reason", reason);
    }
    Ok(app.store.record(event, now).await?)
}

/// `DELETE /api/users/{id}` (themself or admin): the email is free again and
/// the user's sessions and tokens stop working.
pub async fn delete(ctx: RequestContext, caller: AuthUser) -> Result<HttpResponse, ApiError> {
    let id = ctx.id();
    if !caller.may_access(id) {
        return Err(ApiError::Forbidden);
    }
    // Read first, so that the event names the address of the account gone.
    let app = &ctx.app;
    let before = app.store.user_by_id(id).await?.ok_or(ApiError::NotFound)?;
    let origin = ctx.origin(Some(&caller.user().id));
    let event = Event::new(Action::UserDeleted, Some(id), &origin, unix_now())
        .with("email", before.email.as_str());
    let user = app.store.delete_user(id, vec![event]).await?;
    let message = format!("User {} was deleted.", user.name);
    Ok(json(StatusCode::OK, &json!({ "message": message })))
}

/// A listing's `?limit=`: 1 to [`MAX_PAGE`], [`DEFAULT_PAGE`] when absent.
pub fn page_limit(query: &mut Fields) -> Result<usize, ApiError> {
    match query.optional("limit")? {
        None => Ok(DEFAULT_PAGE),
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| {
                ApiError::InvalidInput(format!("limit must be an integer between 1 and {MAX_PAGE}"))
            }),
    }
}

/// Whether `text` could be an `_id` this server issued: 1 to 64 ASCII
/// letters, digits and hyphens.
pub fn plausible_id(text: &str) -> bool {
    (1..=MAX_ID_BYTES).contains(&text.len())
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Longer than any id we issue (a UUID is 36).
const MAX_ID_BYTES: usize = 64;

fn role(fields: &mut Fields) -> Result<Option<Role>, ApiError> {
    fields
        .optional("role")?
        .map(|r| {
            Role::parse(&r)
                .ok_or_else(|| ApiError::InvalidInput("role must be \"user\" or \"admin\"".into()))
        })
        .transpose()
}
