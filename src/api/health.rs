//! `GET /api` (the tutorial's liveness answer) and `GET /healthz`.

use hyper::StatusCode;
use serde_json::json;

use crate::http::context::RequestContext;
use crate::http::error::ApiError;
use crate::http::{json, text, HttpResponse};

pub async fn api_root(_ctx: RequestContext) -> Result<HttpResponse, ApiError> {
    Ok(text(StatusCode::OK, "API works."))
}

/// 200 when the store answers, 503 `store_unavailable` when it does not: on
/// sled, also once a write has failed (the process is then exiting), so a
/// load balancer never routes to a store that has lost a write.
pub async fn healthz(ctx: RequestContext) -> Result<HttpResponse, ApiError> {
    match ctx.app.store.health().await {
        Ok(()) => Ok(json(StatusCode::OK, &json!({"status": "ok"}))),
        Err(error) => {
            tracing::error!(%error, "health check failed");
            Err(ApiError::StoreUnavailable)
        }
    }
}
