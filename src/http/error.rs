//! [`ApiError`]: every way a request can fail, and the one place where a
//! failure becomes a status code and the contract's `{error, message}` body.
//!
//! Lower layers keep their own small error types and convert with `From`.
//! Internal details (store and hashing failures) go to the log, never to the
//! client.

use hyper::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONNECTION, RETRY_AFTER, WWW_AUTHENTICATE};
use hyper::StatusCode;
use serde_json::{json, Map, Value};

use super::{json, HttpResponse};
use crate::domain::password::HashError;
use crate::domain::throttle::RetryAfter;
use crate::domain::token::TokenError;
use crate::domain::user::RuleError;
use crate::keyring::KeyringError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not well-formed JSON or form data.
    #[error("{0}")]
    InvalidBody(String),
    /// A field or parameter breaks a rule; the message names it.
    #[error("{0}")]
    InvalidInput(String),
    #[error("No token provided.")]
    MissingToken,
    #[error("Failed to authenticate token.")]
    InvalidToken,
    #[error("Invalid email or password.")]
    InvalidCredentials,
    /// Unknown, spent outside the reuse window, expired, or its session ended.
    #[error("The refresh token is not valid; log in again.")]
    InvalidRefreshToken,
    #[error("You are not allowed to do this.")]
    Forbidden,
    /// `current_password` does not match; counted as a failed login.
    #[error("The current password is wrong.")]
    WrongPassword,
    #[error("Registration is closed.")]
    RegistrationClosed,
    #[error("No such resource.")]
    NotFound,
    #[error("Method not allowed on this path.")]
    MethodNotAllowed { allow: String },
    #[error("This email is already registered.")]
    EmailTaken,
    #[error("This would leave no admin: make another user admin first.")]
    LastAdmin,
    #[error("The request body is larger than {limit} bytes.")]
    PayloadTooLarge { limit: usize },
    #[error("Send the body as application/json or application/x-www-form-urlencoded.")]
    UnsupportedMediaType,
    #[error("Too many attempts; try again later.")]
    TooManyAttempts { retry_after_secs: u64 },
    #[error("The user store is unavailable; try again later.")]
    StoreUnavailable,
    /// Too many open connections; sent by the server before any request is read.
    #[error("Too many connections; try again shortly.")]
    ServerBusy,
    /// A bug or an unexpected failure; the detail is logged, not shown.
    #[error("Internal server error.")]
    Internal(String),
    /// Unknown, used, superseded, expired, voided by a password change, or
    /// for an address the account no longer has.
    #[error("This password reset link is not valid (any more); ask for a new one.")]
    InvalidResetToken,
    #[error("This verification link is not valid (any more); ask for a new one.")]
    InvalidVerificationToken,
    #[error("This email address is already verified.")]
    AlreadyVerified,
    /// `auth.require_verified_email`, after a correct password.
    #[error("Confirm your email address first: follow the link in the verification mail.")]
    EmailNotVerified,
    /// A route that must send mail, with no `mail.smtp_url`.
    #[error("Mail is not configured on this server.")]
    MailUnavailable,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidBody(_)
            | ApiError::InvalidInput(_)
            | ApiError::InvalidResetToken
            | ApiError::InvalidVerificationToken => StatusCode::BAD_REQUEST,
            ApiError::EmailNotVerified => StatusCode::FORBIDDEN,
            ApiError::AlreadyVerified => StatusCode::CONFLICT,
            ApiError::MailUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::MissingToken
            | ApiError::InvalidToken
            | ApiError::InvalidCredentials
            | ApiError::InvalidRefreshToken => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden | ApiError::RegistrationClosed | ApiError::WrongPassword => {
                StatusCode::FORBIDDEN
            }
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::EmailTaken | ApiError::LastAdmin => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::TooManyAttempts { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::StoreUnavailable | ApiError::ServerBusy => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The contract's error code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidBody(_) => "invalid_body",
            ApiError::InvalidInput(_) => "invalid_input",
            ApiError::MissingToken => "missing_token",
            ApiError::InvalidToken => "invalid_token",
            ApiError::InvalidCredentials => "invalid_credentials",
            ApiError::InvalidRefreshToken => "invalid_refresh_token",
            ApiError::Forbidden => "forbidden",
            ApiError::WrongPassword => "wrong_password",
            ApiError::RegistrationClosed => "registration_closed",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::EmailTaken => "email_taken",
            ApiError::LastAdmin => "last_admin",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::TooManyAttempts { .. } => "too_many_attempts",
            ApiError::StoreUnavailable => "store_unavailable",
            ApiError::ServerBusy => "server_busy",
            ApiError::Internal(_) => "internal",
            ApiError::InvalidResetToken => "invalid_reset_token",
            ApiError::InvalidVerificationToken => "invalid_verification_token",
            ApiError::AlreadyVerified => "already_verified",
            ApiError::EmailNotVerified => "email_not_verified",
            ApiError::MailUnavailable => "mail_unavailable",
        }
    }

    /// One error of every kind, for tests that hold other lists (the
    /// OpenAPI document's codes) against this one.
    pub fn every_kind() -> Vec<ApiError> {
        let every = vec![
            ApiError::InvalidBody(String::new()),
            ApiError::InvalidInput(String::new()),
            ApiError::MissingToken,
            ApiError::InvalidToken,
            ApiError::InvalidCredentials,
            ApiError::InvalidRefreshToken,
            ApiError::Forbidden,
            ApiError::WrongPassword,
            ApiError::RegistrationClosed,
            ApiError::NotFound,
            ApiError::MethodNotAllowed {
                allow: String::new(),
            },
            ApiError::EmailTaken,
            ApiError::LastAdmin,
            ApiError::PayloadTooLarge { limit: 0 },
            ApiError::UnsupportedMediaType,
            ApiError::TooManyAttempts {
                retry_after_secs: 0,
            },
            ApiError::StoreUnavailable,
            ApiError::ServerBusy,
            ApiError::Internal(String::new()),
            ApiError::InvalidResetToken,
            ApiError::InvalidVerificationToken,
            ApiError::AlreadyVerified,
            ApiError::EmailNotVerified,
            ApiError::MailUnavailable,
        ];
        // No wildcard: a new variant does not compile until it is handled
        // here, which is the reminder to list it above as well.
        for error in &every {
            match error {
                ApiError::InvalidBody(_)
                | ApiError::InvalidInput(_)
                | ApiError::MissingToken
                | ApiError::InvalidToken
                | ApiError::InvalidCredentials
                | ApiError::InvalidRefreshToken
                | ApiError::Forbidden
                | ApiError::WrongPassword
                | ApiError::RegistrationClosed
                | ApiError::NotFound
                | ApiError::MethodNotAllowed { .. }
                | ApiError::EmailTaken
                | ApiError::LastAdmin
                | ApiError::PayloadTooLarge { .. }
                | ApiError::UnsupportedMediaType
                | ApiError::TooManyAttempts { .. }
                | ApiError::StoreUnavailable
                | ApiError::ServerBusy
                | ApiError::Internal(_)
                | ApiError::InvalidResetToken
                | ApiError::InvalidVerificationToken
                | ApiError::AlreadyVerified
                | ApiError::EmailNotVerified
                | ApiError::MailUnavailable => {}
            }
        }
        every
    }

    pub fn into_response(self) -> HttpResponse {
        if let ApiError::Internal(detail) = &self {
            tracing::error!(%detail, "internal error");
        }
        let mut body = Map::new();
        body.insert("error".into(), json!(self.code()));
        body.insert("message".into(), json!(self.to_string()));
        match &self {
            ApiError::MissingToken | ApiError::InvalidToken | ApiError::InvalidRefreshToken => {
                body.insert("auth".into(), json!(false));
            }
            ApiError::InvalidCredentials => {
                body.insert("auth".into(), json!(false));
                body.insert("token".into(), Value::Null);
            }
            _ => {}
        }
        let mut response = json(self.status(), &body);
        let headers = response.headers_mut();
        // No error is worth caching, wherever it is sent from (the router,
        // the busy 503, the answers that replace hyper's own).
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        match &self {
            ApiError::MissingToken => {
                headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::InvalidToken => {
                headers.insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"invalid_token\""),
                );
            }
            ApiError::MethodNotAllowed { allow } => {
                if let Ok(value) = HeaderValue::from_str(allow) {
                    headers.insert(ALLOW, value);
                }
            }
            ApiError::TooManyAttempts { retry_after_secs } => {
                headers.insert(RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            // The rest of the body is left unread; tell the client this
            // connection ends here rather than leaving it to guess.
            ApiError::PayloadTooLarge { .. } => {
                headers.insert(CONNECTION, HeaderValue::from_static("close"));
            }
            ApiError::ServerBusy => {
                headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
                headers.insert(CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }
}

impl From<RuleError> for ApiError {
    fn from(error: RuleError) -> Self {
        ApiError::InvalidInput(error.0)
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::EmailTaken => ApiError::EmailTaken,
            StoreError::NotFound => ApiError::NotFound,
            StoreError::LastAdmin => ApiError::LastAdmin,
            StoreError::Database(e) => {
                tracing::error!(error = %e, "store failure");
                ApiError::StoreUnavailable
            }
            StoreError::Unavailable(reason) => {
                tracing::error!(%reason, "store unavailable");
                ApiError::StoreUnavailable
            }
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<HashError> for ApiError {
    fn from(error: HashError) -> Self {
        ApiError::Internal(error.to_string())
    }
}

impl From<KeyringError> for ApiError {
    fn from(error: KeyringError) -> Self {
        match error {
            KeyringError::Store(error) => error.into(),
            KeyringError::Symmetric => ApiError::InvalidInput(error.to_string()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<TokenError> for ApiError {
    fn from(error: TokenError) -> Self {
        tracing::debug!(reason = %error, "token refused");
        ApiError::InvalidToken
    }
}

impl From<RetryAfter> for ApiError {
    fn from(wait: RetryAfter) -> Self {
        ApiError::TooManyAttempts {
            retry_after_secs: wait.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_errors_carry_the_tutorial_fields_and_rfc6750_header() {
        let response = ApiError::InvalidToken.into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            response.headers()[WWW_AUTHENTICATE],
            "Bearer error=\"invalid_token\""
        );
        let response = ApiError::TooManyAttempts {
            retry_after_secs: 42,
        }
        .into_response();
        assert_eq!(response.headers()[RETRY_AFTER], "42");
    }

    #[tokio::test]
    async fn internal_details_never_reach_the_body() {
        use http_body_util::BodyExt;
        let response = ApiError::Internal("secret detail at db.rs:42".into()).into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            body,
            json!({"error": "internal", "message": "Internal server error."})
        );
    }

    #[test]
    fn every_kind_has_its_own_code() {
        let every = ApiError::every_kind();
        let codes: std::collections::BTreeSet<&str> = every.iter().map(ApiError::code).collect();
        assert_eq!(codes.len(), every.len(), "two kinds share a code");
    }
}
