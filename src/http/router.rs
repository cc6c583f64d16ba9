//! The router: method + path to a [`Route`] of a route table, with 404 and
//! 405 (+ `Allow`) answered here, the token check run before any protected
//! handler, and the headers every response shares (`Cache-Control`).
//!
//! The table itself is `api::routes::ROUTES`: a route is one declaration
//! there, next to its handler. A [`Route`] is either public or protected by
//! construction ([`Handler`]); a protected handler's signature needs the
//! [`AuthUser`] that only [`auth::authenticate`] makes, so adding a route
//! cannot forget the check. This module knows no handler and no route.
//!
//! Requests refused before routing: an HTTP/1.1 request without exactly one
//! `Host` header (RFC 9112 §3.2) is a 400. `HEAD` is answered on every `GET`
//! route, by the `GET` handler (hyper sends the head only).
//!
//! [`handle`] also says which entry of the table answered, by its position
//! ([`Routed`]): the server labels the request's metrics with that route's
//! pattern, never with the raw path.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL, HOST};
use hyper::{Method, Request, Version};

use super::auth::{self, AuthUser};
use super::context::RequestContext;
use super::cors;
use super::error::ApiError;
use super::HttpResponse;
use crate::app::App;

/// What a handler returns.
pub type HandlerResult = Result<HttpResponse, ApiError>;

/// A handler's future, boxed so that handlers of every route share one type.
pub type HandlerFuture = Pin<Box<dyn Future<Output = HandlerResult> + Send>>;

/// How a route is called: without a user, or only with one.
#[derive(Clone, Copy)]
pub enum Handler {
    Public(fn(RequestContext) -> HandlerFuture),
    Protected(fn(RequestContext, AuthUser) -> HandlerFuture),
}

/// One entry of a route table.
pub struct Route {
    pub method: Method,
    /// Segments separated by `/`; at most one segment may be a parameter
    /// `{id}`, anywhere (`/api/users/{id}/sessions`); it matches one
    /// non-empty segment.
    pub path: &'static str,
    /// Where the `{…}` parameter of `path` starts and ends (byte offsets,
    /// the braces included), found once when the table is built rather than
    /// on every request.
    param: Option<(usize, usize)>,
    pub handler: Handler,
    /// Whether caches may keep the answer (static documents only); every
    /// other response carries `Cache-Control: no-store`, as it may hold a
    /// token or user data.
    pub cacheable: bool,
}

impl Route {
    pub const fn public(
        method: Method,
        path: &'static str,
        handler: fn(RequestContext) -> HandlerFuture,
    ) -> Route {
        Route {
            method,
            path,
            param: param_of(path),
            handler: Handler::Public(handler),
            cacheable: false,
        }
    }

    pub const fn protected(
        method: Method,
        path: &'static str,
        handler: fn(RequestContext, AuthUser) -> HandlerFuture,
    ) -> Route {
        Route {
            method,
            path,
            param: param_of(path),
            handler: Handler::Protected(handler),
            cacheable: false,
        }
    }

    /// Lets caches keep this route's answers.
    pub const fn cacheable(mut self) -> Route {
        self.cacheable = true;
        self
    }

    pub fn is_protected(&self) -> bool {
        matches!(self.handler, Handler::Protected(_))
    }
}

/// The byte range of the first `{…}` in `path`, braces included.
const fn param_of(path: &str) -> Option<(usize, usize)> {
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'{' {
            let mut j = i + 1;
            while j < bytes.len() {
                if bytes[j] == b'}' {
                    return Some((i, j + 1));
                }
                j += 1;
            }
            return None;
        }
        i += 1;
    }
    None
}

impl PartialEq for Route {
    fn eq(&self, other: &Self) -> bool {
        self.method == other.method && self.path == other.path
    }
}

impl Eq for Route {}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method, self.path)
    }
}

/// What a method and path resolve to.
#[derive(Debug, PartialEq, Eq)]
pub enum Resolution<'p> {
    /// The route, and the `{id}` segment if its path has one.
    Found(&'static Route, Option<&'p str>),
    /// The path exists but not with this method; the methods it has.
    MethodNotAllowed(String),
    NotFound,
}

/// Finds the route for `method` and `path` in `routes`. `HEAD` finds the
/// `GET` route of its path.
pub fn resolve<'p>(routes: &'static [Route], method: &Method, path: &'p str) -> Resolution<'p> {
    resolve_indexed(routes, method, path).0
}

/// [`resolve`], and the position in `routes` of the route whose pattern the
/// path matched: the route found, or for a known path with another method
/// the first route of that path (`None` for an unknown path). The metrics
/// label a request with that route's pattern.
fn resolve_indexed<'p>(
    routes: &'static [Route],
    method: &Method,
    path: &'p str,
) -> (Resolution<'p>, Option<usize>) {
    // Express routes ignore one trailing slash; so do we.
    let path = match path.strip_suffix('/') {
        Some(stripped) if !stripped.is_empty() => stripped,
        _ => path,
    };
    let wanted = if method == Method::HEAD {
        &Method::GET
    } else {
        method
    };
    let mut allowed: Vec<&str> = Vec::new();
    let mut first_match = None;
    for (index, route) in routes.iter().enumerate() {
        let Some(id) = route.matches(path) else {
            continue;
        };
        if route.method == *wanted {
            return (Resolution::Found(route, id), Some(index));
        }
        first_match.get_or_insert(index);
        allowed.push(route.method.as_str());
        if route.method == Method::GET {
            allowed.push(Method::HEAD.as_str());
        }
    }
    if allowed.is_empty() {
        (Resolution::NotFound, None)
    } else {
        (
            Resolution::MethodNotAllowed(allowed.join(", ")),
            first_match,
        )
    }
}

impl Route {
    /// `Some(id segment or None)` if `path` fits this route's pattern.
    /// Compares whole strings (a prefix and a suffix around the one
    /// parameter) rather than splitting into segments: this runs for every
    /// route on every request.
    fn matches<'p>(&self, path: &'p str) -> Option<Option<&'p str>> {
        let Some((start, end)) = self.param else {
            return (self.path == path).then_some(None);
        };
        let (prefix, suffix) = (self.path.get(..start)?, self.path.get(end..)?);
        let id = path.strip_prefix(prefix)?.strip_suffix(suffix)?;
        (!id.is_empty() && !id.contains('/')).then_some(Some(id))
    }
}

/// A request's answer, and which route answered it.
pub struct Routed {
    pub response: HttpResponse,
    /// The position in the route table of the route whose pattern the path
    /// matched (see `resolve_indexed`); `None` for an unknown path or a
    /// request refused before routing.
    pub route: Option<usize>,
}

/// Routes one request through `routes` and turns any error into its
/// response; every response leaves with its `Cache-Control`.
pub async fn handle(
    routes: &'static [Route],
    app: Arc<App>,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Routed {
    let (parts, body) = request.into_parts();
    // A CORS request from an allowed origin: its Access-Control-Allow-Origin.
    let cors = app
        .cors
        .as_ref()
        .and_then(|cors| cors.allow(&parts.headers));
    if let (Some(allow_origin), true) = (&cors, parts.method == Method::OPTIONS) {
        if let Some(routed) = preflight(routes, &app, &parts, allow_origin.clone()) {
            return routed;
        }
    }
    let mut cacheable = false;
    let (resolved, route) = resolve_request(routes, &parts);
    let mut response = match resolved {
        Ok((route, id)) => {
            cacheable = route.cacheable;
            let context = RequestContext {
                app,
                id: id.map(str::to_string),
                parts,
                body: Some(body),
                peer,
            };
            call(route, context).await
        }
        Err(error) => Err(error),
    }
    .unwrap_or_else(ApiError::into_response);
    if !cacheable {
        response
            .headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    if let Some(allow_origin) = cors {
        cors::decorate(&mut response, allow_origin);
    }
    Routed { response, route }
}

/// The answer to a CORS preflight (`OPTIONS` from an allowed origin) for a
/// known path: its methods. `None` for an unknown path, which is answered
/// as any request is (404).
fn preflight(
    routes: &'static [Route],
    app: &App,
    parts: &hyper::http::request::Parts,
    allow_origin: HeaderValue,
) -> Option<Routed> {
    let policy = app.cors.as_ref()?;
    match resolve_indexed(routes, &Method::OPTIONS, parts.uri.path()) {
        (Resolution::MethodNotAllowed(methods), route) => Some(Routed {
            response: policy.preflight(allow_origin, &methods),
            route,
        }),
        _ => None,
    }
}

/// A route found for a request, and its `{id}` segment if it has one.
type Found<'p> = (&'static Route, Option<&'p str>);

/// The route of a request head, or the error that answers it; and the
/// route whose pattern the path matched (`None` when refused before
/// routing).
fn resolve_request<'p>(
    routes: &'static [Route],
    parts: &'p hyper::http::request::Parts,
) -> (Result<Found<'p>, ApiError>, Option<usize>) {
    if parts.version == Version::HTTP_11 && parts.headers.get_all(HOST).iter().count() != 1 {
        let refused =
            ApiError::InvalidInput("an HTTP/1.1 request must carry exactly one Host header".into());
        return (Err(refused), None);
    }
    match resolve_indexed(routes, &parts.method, parts.uri.path()) {
        (Resolution::Found(route, id), index) => (Ok((route, id)), index),
        (Resolution::MethodNotAllowed(allow), index) => {
            (Err(ApiError::MethodNotAllowed { allow }), index)
        }
        (Resolution::NotFound, index) => (Err(ApiError::NotFound), index),
    }
}

async fn call(route: &Route, context: RequestContext) -> HandlerResult {
    match route.handler {
        Handler::Public(handler) => handler(context).await,
        Handler::Protected(handler) => {
            let user = auth::authenticate(&context.app, &context.parts.headers).await?;
            handler(context, user).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn public(_: RequestContext) -> HandlerFuture {
        Box::pin(async { Err(ApiError::NotFound) })
    }

    fn protected(_: RequestContext, _: AuthUser) -> HandlerFuture {
        Box::pin(async { Err(ApiError::NotFound) })
    }

    static TABLE: &[Route] = &[
        Route::public(Method::GET, "/api", public).cacheable(),
        Route::protected(Method::GET, "/api/auth/me", protected),
        Route::public(Method::POST, "/api/auth/login", public),
        Route::protected(Method::GET, "/api/users/{id}", protected),
        Route::protected(Method::PATCH, "/api/users/{id}", protected),
        Route::protected(Method::GET, "/api/users/{id}/sessions", protected),
        Route::protected(Method::DELETE, "/api/users/{id}/sessions", protected),
    ];

    fn found(method: Method, path: &str) -> (&'static str, Option<&str>) {
        match resolve(TABLE, &method, path) {
            Resolution::Found(route, id) => (route.path, id),
            other => panic!("{method} {path}: {other:?}"),
        }
    }

    #[test]
    fn paths_resolve_to_their_routes_with_the_id_anywhere() {
        assert_eq!(found(Method::GET, "/api"), ("/api", None));
        assert_eq!(found(Method::GET, "/api/auth/me/"), ("/api/auth/me", None));
        assert_eq!(
            found(Method::PATCH, "/api/users/abc"),
            ("/api/users/{id}", Some("abc"))
        );
        assert_eq!(
            found(Method::GET, "/api/users/abc/sessions"),
            ("/api/users/{id}/sessions", Some("abc"))
        );
        assert_eq!(found(Method::HEAD, "/api"), ("/api", None));
    }

    #[test]
    fn the_matched_pattern_is_reported_by_its_position() {
        let position = |method: Method, path: &str| resolve_indexed(TABLE, &method, path).1;
        assert_eq!(position(Method::GET, "/api/auth/me"), Some(1));
        assert_eq!(position(Method::HEAD, "/api/auth/me"), Some(1));
        assert_eq!(position(Method::PATCH, "/api/users/abc"), Some(4));
        // A known path with another method: its first route.
        assert_eq!(position(Method::POST, "/api/users/abc"), Some(3));
        assert_eq!(
            position(Method::OPTIONS, "/api/users/abc/sessions"),
            Some(5)
        );
        assert_eq!(position(Method::GET, "/nope"), None);
    }

    #[test]
    fn unknown_paths_and_methods() {
        assert_eq!(resolve(TABLE, &Method::GET, "/nope"), Resolution::NotFound);
        for path in [
            "/api/users/a/b",
            "/api/users//",
            "/api/users//sessions",
            "/api/users/a/b/sessions",
            "/",
        ] {
            assert_eq!(
                resolve(TABLE, &Method::GET, path),
                Resolution::NotFound,
                "{path}"
            );
        }
        assert_eq!(
            resolve(TABLE, &Method::DELETE, "/api/auth/login"),
            Resolution::MethodNotAllowed("POST".into())
        );
        assert_eq!(
            resolve(TABLE, &Method::HEAD, "/api/auth/login"),
            Resolution::MethodNotAllowed("POST".into())
        );
        assert_eq!(
            resolve(TABLE, &Method::POST, "/api/users/x"),
            Resolution::MethodNotAllowed("GET, HEAD, PATCH".into())
        );
    }
}
