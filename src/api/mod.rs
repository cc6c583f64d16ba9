//! The handlers, one file per resource. Each takes a
//! [`RequestContext`](crate::http::router::RequestContext) (and, if protected,
//! the [`AuthUser`]) and returns a response or an [`ApiError`].
//!
//! Handlers decide who may do what and call the domain and the store; they
//! never touch sockets, and they never build an error body themselves.

pub mod auth;
pub mod health;
pub mod openapi;
pub mod users;

use crate::http::auth::AuthUser;
use crate::http::error::ApiError;
use crate::http::router::{Protected, Public, RequestContext};
use crate::http::HttpResponse;

pub async fn call_public(endpoint: Public, ctx: RequestContext) -> Result<HttpResponse, ApiError> {
    match endpoint {
        Public::ApiRoot => Ok(health::api_root()),
        Public::OpenApi => Ok(openapi::document()),
        Public::Health => health::healthz(ctx).await,
        Public::Register => auth::register(ctx).await,
        Public::Login => auth::login(ctx).await,
        Public::Logout => auth::logout(ctx).await,
    }
}

pub async fn call_protected(
    endpoint: Protected,
    ctx: RequestContext,
    caller: AuthUser,
) -> Result<HttpResponse, ApiError> {
    match endpoint {
        Protected::Me => auth::me(caller),
        Protected::ListUsers => users::list(ctx, caller).await,
        Protected::CreateUser => users::create(ctx, caller).await,
        Protected::GetUser => users::get(ctx, caller).await,
        Protected::UpdateUser => users::update(ctx, caller).await,
        Protected::DeleteUser => users::delete(ctx, caller).await,
    }
}
