//! The handlers, one file per resource, and [`routes::ROUTES`], the table
//! that names them. Each handler takes a
//! [`RequestContext`](crate::http::context::RequestContext) (and, if
//! protected, the [`AuthUser`](crate::http::auth::AuthUser)) and returns a
//! response or an [`ApiError`](crate::http::error::ApiError).
//!
//! Handlers decide who may do what and call the domain and the store; they
//! never touch sockets, and they never build an error body themselves.

pub mod audit;
pub mod auth;
pub mod export;
pub mod health;
pub mod keys;
pub mod openapi;
pub mod pages;
pub mod recovery;
pub mod routes;
pub mod sessions;
pub mod users;

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::Request;

use crate::app::App;
use crate::http::router::{self, Routed};

/// Answers one request through [`routes::ROUTES`].
pub async fn handle(app: Arc<App>, request: Request<Incoming>, peer: SocketAddr) -> Routed {
    router::handle(routes::ROUTES, app, request, peer).await
}
