//! The token check (the tutorial's `VerifyToken`) and [`AuthUser`], the proof
//! that it passed.
//!
//! `AuthUser` has private fields and no public constructor: the only way to get
//! one is [`authenticate`], and every protected handler takes one as an
//! argument, so no protected handler can run for an unauthenticated request.
//! The check loads the user (and the token's session) on every request, so
//! logout, ended sessions, password changes, deletion and role changes take
//! effect at once on every route.

use std::sync::Arc;

use hyper::header::{HeaderMap, HeaderName, AUTHORIZATION};

use super::error::ApiError;
use crate::app::App;
use crate::domain::token::{Claims, TokenError};
use crate::domain::unix_now;
use crate::domain::user::User;
use crate::keyring;

/// The tutorial's header.
pub const ACCESS_TOKEN_HEADER: HeaderName = HeaderName::from_static("x-access-token");

/// A request's user, proven by a valid, unrevoked token.
#[derive(Debug)]
pub struct AuthUser {
    user: Arc<User>,
    claims: Arc<Claims>,
}

impl AuthUser {
    /// The user, shared (no copy).
    pub fn shared_user(&self) -> Arc<User> {
        Arc::clone(&self.user)
    }

    pub fn user(&self) -> &User {
        &self.user
    }

    pub fn claims(&self) -> &Claims {
        &self.claims
    }

    pub fn is_admin(&self) -> bool {
        self.user.is_admin()
    }

    /// True if the caller is the user `id` or an admin.
    pub fn may_access(&self, id: &str) -> bool {
        self.user.id == id || self.is_admin()
    }
}

/// Runs the token check on a request's headers.
pub async fn authenticate(app: &App, headers: &HeaderMap) -> Result<AuthUser, ApiError> {
    let token = presented_token(headers)?.ok_or(ApiError::MissingToken)?;
    check_token(app, token).await
}

/// The token a request carries, from `x-access-token` or `Authorization:
/// Bearer`. Two different tokens are refused: which one would be meant is a
/// guess we will not make.
pub fn presented_token(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    // `from_utf8` rather than `HeaderValue::to_str`: the same answer for a
    // token (a non-ASCII one fails verification instead of this check, with
    // the same error), but word-at-a-time over ASCII where `to_str` checks
    // each byte: it cost 400 instructions a request (BENCHMARKS.md).
    let access = match headers.get(ACCESS_TOKEN_HEADER) {
        Some(value) => Some(
            std::str::from_utf8(value.as_bytes())
                .map_err(|_| ApiError::InvalidToken)?
                .trim(),
        ),
        None => None,
    }
    .filter(|t| !t.is_empty());
    let bearer = match headers.get(AUTHORIZATION) {
        Some(value) => {
            let value = value.to_str().map_err(|_| ApiError::InvalidToken)?;
            match value.split_once(' ') {
                Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
                    Some(token.trim())
                }
                _ => None,
            }
        }
        None => None,
    }
    .filter(|t| !t.is_empty());
    match (access, bearer) {
        (Some(a), Some(b)) if a != b => Err(ApiError::InvalidToken),
        (a, b) => Ok(a.or(b)),
    }
}

/// Verifies a token and loads its user; every failure is the same
/// `invalid_token` to the client (the reason is logged at debug).
///
/// A token with a `sid` is good while its session is alive (ending a session
/// is deleting it, so one lookup answers for logout, revocation and reuse);
/// a token from before sessions (no `sid`) while its `jti` is not revoked.
pub async fn check_token(app: &App, token: &str) -> Result<AuthUser, ApiError> {
    let now = unix_now();
    let claims = match app.tokens.verify(token, now) {
        // Perhaps another instance just rotated the keys.
        Err(TokenError::UnknownKey(kid)) if keyring::look_up(app, &kid).await => {
            app.tokens.verify(token, now)?
        }
        verdict => verdict?,
    };
    let refuse = |reason: &str| {
        tracing::debug!(reason, "token refused");
        ApiError::InvalidToken
    };
    if claims.sub != claims.id {
        return Err(refuse("sub and id differ"));
    }
    let user = match &claims.sid {
        Some(sid) => {
            let Some((session, user)) = app.store.session_and_user(sid).await? else {
                return Err(refuse("session ended or user deleted"));
            };
            if session.user_id != claims.sub {
                return Err(refuse("the session is another user's"));
            }
            if !session.is_alive(&app.sessions, user.password_version, now) {
                return Err(refuse("session expired"));
            }
            user
        }
        None => {
            if app.store.is_revoked(&claims.jti).await? {
                return Err(refuse("revoked"));
            }
            match app.store.user_by_id(&claims.sub).await? {
                Some(user) => user,
                None => return Err(refuse("user deleted")),
            }
        }
    };
    if user.password_version != claims.pwv {
        return Err(refuse("issued before a password change"));
    }
    Ok(AuthUser { user, claims })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_static(v));
        }
        map
    }

    #[test]
    fn tokens_come_from_either_header_but_must_agree() {
        assert_eq!(presented_token(&headers(&[])).unwrap(), None);
        assert_eq!(
            presented_token(&headers(&[("x-access-token", "abc")])).unwrap(),
            Some("abc")
        );
        assert_eq!(
            presented_token(&headers(&[("authorization", "Bearer abc")])).unwrap(),
            Some("abc")
        );
        assert_eq!(
            presented_token(&headers(&[("authorization", "Basic abc")])).unwrap(),
            None
        );
        assert_eq!(
            presented_token(&headers(&[
                ("x-access-token", "abc"),
                ("authorization", "bearer abc")
            ]))
            .unwrap(),
            Some("abc")
        );
        assert!(presented_token(&headers(&[
            ("x-access-token", "abc"),
            ("authorization", "Bearer xyz")
        ]))
        .is_err());
    }
}
