//! `GET /api/admin/export[?with_audit=true]` (admins): the export file
//! (`transfer::format`) of the running server's store, streamed as it is
//! read, a page of users at a time, so memory stays flat however many users
//! there are. On either store the users in the file are one state of the
//! store (a PostgreSQL snapshot; on sled a copy made between two writes,
//! see `SledStore::export`), so it always imports.
//!
//! The answer holds every password hash and the signing keys: admins only,
//! never cached, and each export is logged with the admin who asked. The
//! status is sent once the first page was read (a store that cannot be
//! read is a 503, not a 200 with a cut body); a failure after that ends the
//! body without its trailer. The connection closes after it (the server's
//! follower of written answers does not follow chunked bodies, see
//! `server::answers`). `HEAD` answers the headers and reads nothing.

use hyper::body::Bytes;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONNECTION, CONTENT_DISPOSITION, CONTENT_TYPE};
use hyper::{Method, Response, StatusCode};

use crate::domain::unix_now;
use crate::http::auth::AuthUser;
use crate::http::body::parse_query;
use crate::http::context::RequestContext;
use crate::http::error::ApiError;
use crate::http::{Body, HttpResponse};
use crate::transfer::{self, ExportOptions};

pub async fn export(ctx: RequestContext, caller: AuthUser) -> Result<HttpResponse, ApiError> {
    if !caller.is_admin() {
        return Err(ApiError::Forbidden);
    }
    let mut fields = parse_query(ctx.parts.uri.query().unwrap_or_default())?;
    let with_audit = fields.optional_bool("with_audit")?.unwrap_or(false);
    fields.refuse_unknown()?;
    if ctx.parts.method == Method::HEAD {
        return Ok(export_response(Body::full(Bytes::new())));
    }
    let secret = crate::app::generated_secret(&ctx.app.settings)
        .map_err(|e| ApiError::Internal(format!("{e:#}")))?;
    let options = ExportOptions {
        with_audit,
        secret,
        now: unix_now(),
    };
    let admin = caller.user().id.clone();
    tracing::info!(admin = %admin, ip = %ctx.client_ip(), with_audit, "export started");
    let (mut chunks, counts) = transfer::spawn_export(ctx.app.store.clone(), options);
    let first = match chunks.recv().await {
        Some(Ok(first)) => first,
        Some(Err(reason)) => {
            tracing::error!(%reason, "export not started");
            return Err(ApiError::StoreUnavailable);
        }
        None => {
            return Err(ApiError::Internal(
                "the export ended before it began".into(),
            ))
        }
    };
    tokio::spawn(async move {
        match counts.await {
            Ok(counts) => tracing::info!(
                admin = %admin,
                users = counts.users,
                events = counts.events,
                "export sent"
            ),
            Err(_) => {
                tracing::warn!(admin = %admin, "export not finished (client gone or store error)")
            }
        }
    });
    Ok(export_response(Body::Stream {
        first: Some(first),
        rest: chunks,
    }))
}

fn export_response(body: Body) -> HttpResponse {
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"gatehouse-export.jsonl\""),
    );
    headers.insert(CONNECTION, HeaderValue::from_static("close"));
    response
}
