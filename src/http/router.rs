//! The route table and the router: method + path segments to an endpoint, with
//! 404 and 405 (+ `Allow`) answered here, and the token check run before any
//! protected endpoint.
//!
//! [`ROUTES`] is the one list of what the API serves. An endpoint is either
//! [`Public`] or [`Protected`]; the router calls a protected one only with the
//! [`AuthUser`](auth::AuthUser) that [`auth::authenticate`] returned, so adding a route cannot
//! forget the check.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::http::request::Parts;
use hyper::{Method, Request};

use super::auth;
use super::body::{read_fields, Fields};
use super::error::ApiError;
use super::HttpResponse;
use crate::api;
use crate::app::App;

/// An endpoint anyone may call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Public {
    ApiRoot,
    OpenApi,
    Health,
    Register,
    Login,
    Logout,
}

/// An endpoint that needs a valid token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protected {
    Me,
    ListUsers,
    CreateUser,
    GetUser,
    UpdateUser,
    DeleteUser,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Public(Public),
    Protected(Protected),
}

pub struct Route {
    pub method: Method,
    /// Segments separated by `/`; a last segment `{id}` matches any one
    /// non-empty segment.
    pub path: &'static str,
    pub endpoint: Endpoint,
}

const fn public(method: Method, path: &'static str, endpoint: Public) -> Route {
    Route {
        method,
        path,
        endpoint: Endpoint::Public(endpoint),
    }
}

const fn protected(method: Method, path: &'static str, endpoint: Protected) -> Route {
    Route {
        method,
        path,
        endpoint: Endpoint::Protected(endpoint),
    }
}

/// Everything gatehouse serves.
pub const ROUTES: &[Route] = &[
    public(Method::GET, "/api", Public::ApiRoot),
    public(Method::GET, "/api/openapi.json", Public::OpenApi),
    public(Method::GET, "/healthz", Public::Health),
    public(Method::POST, "/api/auth/register", Public::Register),
    public(Method::POST, "/api/auth/login", Public::Login),
    protected(Method::GET, "/api/auth/me", Protected::Me),
    public(Method::GET, "/api/auth/logout", Public::Logout),
    public(Method::POST, "/api/auth/logout", Public::Logout),
    protected(Method::GET, "/api/users", Protected::ListUsers),
    protected(Method::POST, "/api/users", Protected::CreateUser),
    protected(Method::GET, "/api/users/{id}", Protected::GetUser),
    protected(Method::PUT, "/api/users/{id}", Protected::UpdateUser),
    protected(Method::PATCH, "/api/users/{id}", Protected::UpdateUser),
    protected(Method::DELETE, "/api/users/{id}", Protected::DeleteUser),
];

/// What a method and path resolve to.
#[derive(Debug, PartialEq, Eq)]
pub enum Resolution<'p> {
    /// The route, and the `{id}` segment if its path has one.
    Found(&'static Route, Option<&'p str>),
    /// The path exists but not with this method; the methods it has.
    MethodNotAllowed(String),
    NotFound,
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

pub fn resolve<'p>(method: &Method, path: &'p str) -> Resolution<'p> {
    // Express routes ignore one trailing slash; so do we.
    let path = match path.strip_suffix('/') {
        Some(stripped) if !stripped.is_empty() => stripped,
        _ => path,
    };
    let mut allowed: Vec<&str> = Vec::new();
    for route in ROUTES {
        let Some(id) = matches(route.path, path) else {
            continue;
        };
        if route.method == *method {
            return Resolution::Found(route, id);
        }
        allowed.push(route.method.as_str());
    }
    if allowed.is_empty() {
        Resolution::NotFound
    } else {
        Resolution::MethodNotAllowed(allowed.join(", "))
    }
}

/// `Some(id segment or None)` if `path` fits `pattern`. Compares whole
/// strings rather than splitting into segments: this runs for every route on
/// every request.
fn matches<'p>(pattern: &str, path: &'p str) -> Option<Option<&'p str>> {
    match pattern.strip_suffix("{id}") {
        None => (pattern == path).then_some(None),
        Some(prefix) => {
            let id = path.strip_prefix(prefix)?;
            (!id.is_empty() && !id.contains('/')).then_some(Some(id))
        }
    }
}

/// Everything a handler may read about its request.
pub struct RequestContext {
    pub app: Arc<App>,
    pub parts: Parts,
    /// The unread body; [`RequestContext::read_body`] takes it.
    pub body: Option<Incoming>,
    pub peer: SocketAddr,
    /// The `{id}` path segment, on routes that have one.
    pub id: Option<String>,
}

impl RequestContext {
    /// The client's address: the TCP peer, or the last address in
    /// `server.client_ip_header` (the one our trusted proxy saw) if set.
    pub fn client_ip(&self) -> IpAddr {
        let Some(header) = &self.app.settings.server.client_ip_header else {
            return self.peer.ip();
        };
        self.parts
            .headers
            .get(header.as_str())
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(self.peer.ip())
    }

    /// Reads and decodes the body within `limits.body_bytes` and
    /// `server.header_timeout_secs`.
    pub async fn read_body(&mut self) -> Result<Fields, ApiError> {
        let body = self
            .body
            .take()
            .ok_or_else(|| ApiError::Internal("the body was read twice".into()))?;
        let settings = &self.app.settings;
        read_fields(
            &self.parts,
            body,
            settings.limits.body_bytes,
            Duration::from_secs(settings.server.header_timeout_secs),
        )
        .await
    }

    /// The `{id}` path segment (empty on routes without one, which never ask).
    pub fn id(&self) -> &str {
        self.id.as_deref().unwrap_or_default()
    }
}

/// Routes one request to its handler and turns any error into its response.
pub async fn handle(app: Arc<App>, request: Request<Incoming>, peer: SocketAddr) -> HttpResponse {
    let (parts, body) = request.into_parts();
    let (route, id) = match resolve(&parts.method, parts.uri.path()) {
        Resolution::Found(route, id) => (route, id.map(str::to_string)),
        Resolution::MethodNotAllowed(allow) => {
            return ApiError::MethodNotAllowed { allow }.into_response()
        }
        Resolution::NotFound => return ApiError::NotFound.into_response(),
    };
    let context = RequestContext {
        app,
        parts,
        body: Some(body),
        peer,
        id,
    };
    let result = match route.endpoint {
        Endpoint::Public(endpoint) => api::call_public(endpoint, context).await,
        Endpoint::Protected(endpoint) => {
            match auth::authenticate(&context.app, &context.parts.headers).await {
                Ok(user) => api::call_protected(endpoint, context, user).await,
                Err(error) => Err(error),
            }
        }
    };
    result.unwrap_or_else(ApiError::into_response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(method: Method, path: &str) -> (Endpoint, Option<&str>) {
        match resolve(&method, path) {
            Resolution::Found(route, id) => (route.endpoint, id),
            other => panic!("{method} {path}: {other:?}"),
        }
    }

    #[test]
    fn paths_resolve_to_their_endpoints() {
        assert_eq!(
            found(Method::GET, "/api").0,
            Endpoint::Public(Public::ApiRoot)
        );
        assert_eq!(
            found(Method::GET, "/api/auth/me/"),
            (Endpoint::Protected(Protected::Me), None)
        );
        assert_eq!(
            found(Method::PATCH, "/api/users/abc"),
            (Endpoint::Protected(Protected::UpdateUser), Some("abc"))
        );
        assert_eq!(
            found(Method::POST, "/api/auth/logout").0,
            Endpoint::Public(Public::Logout)
        );
    }

    #[test]
    fn unknown_paths_and_methods() {
        assert_eq!(resolve(&Method::GET, "/nope"), Resolution::NotFound);
        assert_eq!(
            resolve(&Method::GET, "/api/users/a/b"),
            Resolution::NotFound
        );
        assert_eq!(resolve(&Method::GET, "/api/users//"), Resolution::NotFound);
        assert_eq!(resolve(&Method::GET, "/"), Resolution::NotFound);
        assert_eq!(
            resolve(&Method::DELETE, "/api/auth/login"),
            Resolution::MethodNotAllowed("POST".into())
        );
        assert_eq!(
            resolve(&Method::POST, "/api/users/x"),
            Resolution::MethodNotAllowed("GET, PUT, PATCH, DELETE".into())
        );
    }

    #[test]
    fn every_route_is_reachable() {
        for route in ROUTES {
            let id_segments = route.path.matches("{id}").count();
            assert!(
                id_segments == 0 || (id_segments == 1 && route.path.ends_with("/{id}")),
                "{route:?}: `{{id}}` may only be the last segment"
            );
            let path = route.path.replace("{id}", "some-id");
            assert!(
                matches!(resolve(&route.method, &path), Resolution::Found(r, _) if r == route),
                "{route:?}"
            );
        }
    }
}
