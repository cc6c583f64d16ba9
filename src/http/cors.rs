//! CORS for browser apps on other origins (`cors.allowed_origins`): which
//! origins may call, the preflight answer, and the headers an allowed
//! origin's responses carry. Off by default: then no CORS header is ever
//! written and `OPTIONS` is an ordinary 405.
//!
//! No credentials mode: tokens travel in headers, not cookies. This module
//! decides headers only; the router decides when to ask it.

use hyper::body::Bytes;
use hyper::header::{
    HeaderMap, HeaderValue, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    CACHE_CONTROL, ORIGIN, VARY,
};
use hyper::{Response, StatusCode};

use crate::config::CorsSettings;
use crate::http::HttpResponse;

/// The allowed origins, ready to compare and echo.
pub struct CorsPolicy {
    /// `["*"]`: every origin, answered with `*`.
    any: bool,
    origins: Vec<String>,
    max_age: HeaderValue,
}

impl CorsPolicy {
    /// `None` when `cors.allowed_origins` is empty (CORS off).
    pub fn from_settings(settings: &CorsSettings) -> Option<CorsPolicy> {
        if settings.allowed_origins.is_empty() {
            return None;
        }
        Some(CorsPolicy {
            any: settings.allowed_origins.iter().any(|o| o == "*"),
            origins: settings
                .allowed_origins
                .iter()
                .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
            max_age: HeaderValue::from(settings.max_age_secs),
        })
    }

    /// The `Access-Control-Allow-Origin` value for this request, if its
    /// `Origin` is allowed (a request without one is not a CORS request).
    pub fn allow(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        let origin = headers.get(ORIGIN)?;
        if self.any {
            return Some(HeaderValue::from_static("*"));
        }
        let text = origin.to_str().ok()?.to_ascii_lowercase();
        self.origins.contains(&text).then(|| origin.clone())
    }

    /// The preflight answer: 204, the route's methods, the headers a client
    /// may send, how long to remember it.
    pub fn preflight(&self, allow_origin: HeaderValue, methods: &str) -> HttpResponse {
        let mut response = Response::new(crate::http::Body::full(Bytes::new()));
        *response.status_mut() = StatusCode::NO_CONTENT;
        let headers = response.headers_mut();
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin);
        if let Ok(methods) = HeaderValue::from_str(methods) {
            headers.insert(ACCESS_CONTROL_ALLOW_METHODS, methods);
        }
        headers.insert(
            ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("content-type, authorization, x-access-token"),
        );
        headers.insert(ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        headers.insert(VARY, HeaderValue::from_static("Origin"));
        // As every answer but the static documents (the browser's preflight
        // cache follows Access-Control-Max-Age, not this).
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}

/// What every response to an allowed origin carries.
pub fn decorate(response: &mut HttpResponse, allow_origin: HeaderValue) {
    let headers = response.headers_mut();
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin);
    headers.append(VARY, HeaderValue::from_static("Origin"));
    headers.insert(
        ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Retry-After, Link, WWW-Authenticate"),
    );
}
