//! `GET /reset-password` and `GET /verify-email`: the small pages the mail
//! links open by default, so a project without a frontend still works. Each
//! is one self-contained HTML file (`src/pages/`): its style and script are
//! inline and allowed by their SHA-256 in the `Content-Security-Policy`,
//! which allows nothing else but calls to this origin. The script reads the
//! token from the URL fragment (which browsers never send, so it reaches no
//! server log), takes it out of the address bar, and calls the API.
//!
//! This module serves the pages and their headers; what they do is theirs.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hyper::body::Bytes;
use hyper::header::{
    HeaderValue, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY,
    X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use hyper::{Response, StatusCode};
use sha2::{Digest, Sha256};

use crate::http::context::RequestContext;
use crate::http::error::ApiError;
use crate::http::HttpResponse;

const RESET_PASSWORD: &str = include_str!("../pages/reset-password.html");
const VERIFY_EMAIL: &str = include_str!("../pages/verify-email.html");

/// `GET /reset-password`: asks for the new password twice, then posts it
/// with the link's token to `/api/auth/password/reset`.
pub async fn reset_password(_ctx: RequestContext) -> Result<HttpResponse, ApiError> {
    Ok(page(RESET_PASSWORD))
}

/// `GET /verify-email`: posts the link's token to `/api/auth/verify` when it
/// opens, and shows the answer.
pub async fn verify_email(_ctx: RequestContext) -> Result<HttpResponse, ApiError> {
    Ok(page(VERIFY_EMAIL))
}

fn page(html: &'static str) -> HttpResponse {
    let mut response = Response::new(crate::http::Body::full(Bytes::from_static(html.as_bytes())));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    if let Ok(policy) = HeaderValue::from_str(&content_security_policy(html)) {
        headers.insert(CONTENT_SECURITY_POLICY, policy);
    }
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // The same bytes for every visitor until the binary changes.
    headers.insert(
        CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    response
}

/// Nothing but the page's own inline `<script>` and `<style>` (by hash) and
/// requests to this origin (the API call); no frames, forms posted
/// elsewhere, plugins, images or `<base>`.
pub fn content_security_policy(html: &str) -> String {
    format!(
        "default-src 'none'; script-src 'sha256-{}'; style-src 'sha256-{}'; \
         connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'",
        inline_hash(html, "script"),
        inline_hash(html, "style"),
    )
}

/// Base64 SHA-256 of the text inside the page's one `<tag>` element, as
/// CSP hashes it.
fn inline_hash(html: &str, tag: &str) -> String {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let text = html
        .split_once(&open)
        .and_then(|(_, rest)| rest.split_once(&close))
        .map_or("", |(inside, _)| inside);
    STANDARD.encode(Sha256::digest(text.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_page_has_one_script_and_one_style_and_no_outside_reference() {
        for html in [RESET_PASSWORD, VERIFY_EMAIL] {
            assert_eq!(html.matches("<script>").count(), 1);
            assert_eq!(html.matches("<style>").count(), 1);
            for outside in [
                "http://", "https://", "src=", "<link", "style=", "onclick", "onload",
            ] {
                assert!(!html.contains(outside), "{outside}");
            }
            let policy = content_security_policy(html);
            assert!(
                !policy.contains("sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="),
                "an empty element hashed: {policy}"
            );
        }
    }
}
