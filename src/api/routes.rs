//! [`ROUTES`]: everything gatehouse serves, one line per route: method, path,
//! who may call it (public, or protected by the token check), its handler,
//! and whether caches may keep the answer. The router (`http::router`) reads
//! this table and nothing else; the OpenAPI document is checked against it
//! (`tests/it/openapi.rs`).

use hyper::Method;

use super::{audit, auth, export, health, keys, openapi, pages, recovery, sessions, users};
use crate::http::router::Route;

/// A public handler as a table entry: `public!(module::function)`.
macro_rules! public {
    ($handler:path) => {
        |ctx| Box::pin($handler(ctx))
    };
}

/// A protected handler as a table entry: it also receives the caller.
macro_rules! protected {
    ($handler:path) => {
        |ctx, caller| Box::pin($handler(ctx, caller))
    };
}

pub static ROUTES: &[Route] = &[
    Route::public(Method::GET, "/api", public!(health::api_root)).cacheable(),
    Route::public(Method::GET, "/api/openapi.json", public!(openapi::document)).cacheable(),
    Route::public(Method::GET, "/.well-known/jwks.json", public!(keys::jwks)).cacheable(),
    Route::public(Method::GET, "/healthz", public!(health::healthz)),
    Route::public(Method::POST, "/api/auth/register", public!(auth::register)),
    Route::public(Method::POST, "/api/auth/login", public!(auth::login)),
    Route::protected(Method::GET, "/api/auth/me", protected!(auth::me)),
    Route::public(Method::GET, "/api/auth/logout", public!(auth::logout)),
    Route::public(Method::POST, "/api/auth/logout", public!(auth::logout)),
    Route::public(Method::POST, "/api/auth/refresh", public!(auth::refresh)),
    Route::protected(
        Method::POST,
        "/api/auth/password",
        protected!(auth::change_password),
    ),
    Route::public(
        Method::POST,
        "/api/auth/password/forgot",
        public!(recovery::forgot),
    ),
    Route::public(
        Method::POST,
        "/api/auth/password/reset",
        public!(recovery::reset),
    ),
    Route::public(Method::POST, "/api/auth/verify", public!(recovery::verify)),
    Route::public(
        Method::POST,
        "/api/auth/verify/request",
        public!(recovery::verify_request),
    ),
    Route::protected(
        Method::GET,
        "/api/auth/sessions",
        protected!(sessions::list_own),
    ),
    Route::protected(
        Method::DELETE,
        "/api/auth/sessions/{id}",
        protected!(sessions::end_own),
    ),
    Route::protected(Method::GET, "/api/auth/events", protected!(audit::own)),
    Route::protected(Method::GET, "/api/audit", protected!(audit::list)),
    Route::protected(Method::GET, "/api/admin/export", protected!(export::export)),
    Route::protected(Method::GET, "/api/users", protected!(users::list)),
    Route::protected(Method::POST, "/api/users", protected!(users::create)),
    Route::protected(Method::GET, "/api/users/{id}", protected!(users::get)),
    Route::protected(Method::PUT, "/api/users/{id}", protected!(users::update)),
    Route::protected(Method::PATCH, "/api/users/{id}", protected!(users::update)),
    Route::protected(Method::DELETE, "/api/users/{id}", protected!(users::delete)),
    Route::protected(
        Method::GET,
        "/api/users/{id}/sessions",
        protected!(sessions::list_user),
    ),
    Route::protected(
        Method::DELETE,
        "/api/users/{id}/sessions",
        protected!(sessions::end_user),
    ),
    Route::protected(Method::GET, "/api/admin/keys", protected!(keys::list)),
    Route::protected(
        Method::POST,
        "/api/admin/keys/rotate",
        protected!(keys::rotate),
    ),
    // Last: the router tries routes in order, and these are rarely asked for.
    Route::public(
        Method::GET,
        "/reset-password",
        public!(pages::reset_password),
    )
    .cacheable(),
    Route::public(Method::GET, "/verify-email", public!(pages::verify_email)).cacheable(),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::router::{resolve, Resolution};

    #[test]
    fn every_route_is_reachable_and_declared_once() {
        for route in ROUTES {
            assert!(
                route.path.matches('{').count() <= 1,
                "{route:?}: at most one path parameter"
            );
            let path = route.path.replace("{id}", "some-id");
            assert!(
                matches!(resolve(ROUTES, &route.method, &path), Resolution::Found(r, _) if r == route),
                "{route:?} is shadowed by an earlier route"
            );
            let same = ROUTES.iter().filter(|r| *r == route).count();
            assert_eq!(same, 1, "{route:?} is declared {same} times");
        }
    }

    #[test]
    fn only_static_documents_are_cacheable() {
        let cacheable: Vec<&str> = ROUTES
            .iter()
            .filter(|r| r.cacheable)
            .map(|r| r.path)
            .collect();
        assert_eq!(
            cacheable,
            [
                "/api",
                "/api/openapi.json",
                "/.well-known/jwks.json",
                "/reset-password",
                "/verify-email"
            ]
        );
    }
}
