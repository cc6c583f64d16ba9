//! The audit log over HTTP: `GET /api/audit` (admins: every event, filtered
//! by `user_id` and `action`) and `GET /api/auth/events` (the caller's own),
//! newest first, paged by `before` with a `Link` to the next page.
//!
//! Reading only: events are written by the store with the changes they
//! record (`domain::audit`, `store::Store`).

use hyper::header::{HeaderValue, LINK};
use hyper::StatusCode;

use crate::api::users::{page_limit, plausible_id};
use crate::domain::audit::{Action, Query};
use crate::http::auth::AuthUser;
use crate::http::body::parse_query;
use crate::http::context::RequestContext;
use crate::http::error::ApiError;
use crate::http::{json, HttpResponse};

/// `GET /api/audit[?user_id=][&action=][&limit=][&before=]` (admin).
pub async fn list(ctx: RequestContext, caller: AuthUser) -> Result<HttpResponse, ApiError> {
    if !caller.is_admin() {
        return Err(ApiError::Forbidden);
    }
    let mut fields = parse_query(ctx.parts.uri.query().unwrap_or_default())?;
    let user_id = fields.optional("user_id")?;
    if user_id.as_deref().is_some_and(|id| !plausible_id(id)) {
        return Err(ApiError::InvalidInput("user_id must be a user _id".into()));
    }
    let query = page_query(fields, user_id)?;
    page(&ctx, "/api/audit", query).await
}

/// `GET /api/auth/events[?action=][&limit=][&before=]`: the events about
/// the caller's own account (whoever did them).
pub async fn own(ctx: RequestContext, caller: AuthUser) -> Result<HttpResponse, ApiError> {
    let fields = parse_query(ctx.parts.uri.query().unwrap_or_default())?;
    let query = page_query(fields, Some(caller.user().id.clone()))?;
    page(&ctx, "/api/auth/events", query).await
}

/// The paging and `action` parameters; any other is refused (a `user_id`
/// on the own route included: it is not a filter there).
fn page_query(
    mut fields: crate::http::body::Fields,
    user_id: Option<String>,
) -> Result<Query, ApiError> {
    let action = match fields.optional("action")? {
        Some(name) => Some(Action::parse(&name).ok_or_else(|| {
            ApiError::InvalidInput(format!("action must be one of: {}", action_names()))
        })?),
        None => None,
    };
    let limit = page_limit(&mut fields)?;
    let before = match fields.optional("before")? {
        Some(id) => Some(
            uuid::Uuid::try_parse(&id)
                .map_err(|_| ApiError::InvalidInput("before must be an event id".into()))?,
        ),
        None => None,
    };
    fields.refuse_unknown()?;
    Ok(Query {
        user_id,
        action,
        before,
        limit,
    })
}

fn action_names() -> String {
    let names: Vec<&str> = Action::ALL.iter().map(|a| a.as_str()).collect();
    names.join(", ")
}

/// One page as a JSON array, with a `Link` to the next when there is one
/// (the same filters, `before` the last event listed).
async fn page(ctx: &RequestContext, path: &str, query: Query) -> Result<HttpResponse, ApiError> {
    let (events, more) = ctx.app.store.audit_events(&query).await?;
    let mut response = json(StatusCode::OK, &events);
    if let (true, Some(last)) = (more, events.last()) {
        let mut link = format!("<{path}?limit={}&before={}", query.limit, last.id);
        // Only on /api/audit: the own route's user is the caller.
        if let (Some(user_id), "/api/audit") = (&query.user_id, path) {
            link.push_str(&format!("&user_id={user_id}"));
        }
        if let Some(action) = query.action {
            link.push_str(&format!("&action={}", action.as_str()));
        }
        link.push_str(">; rel=\"next\"");
        if let Ok(value) = HeaderValue::from_str(&link) {
            response.headers_mut().insert(LINK, value);
        }
    }
    Ok(response)
}
