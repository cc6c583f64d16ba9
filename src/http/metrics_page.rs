//! The answers of the metrics listener (`server::metrics_listener`):
//! `GET /metrics` (and `HEAD`) is the page [`Metrics::encode`] writes, in
//! the Prometheus text format; any other path is the usual 404 and any other
//! method on `/metrics` a 405 with `Allow`, with the contract's JSON error
//! bodies. The API's own router never routes `/metrics`: this is the only
//! place that answers it.

use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Response, StatusCode};

use super::error::ApiError;
use super::HttpResponse;
use crate::metrics::{self, Metrics};

/// The one path the metrics listener serves.
pub const PATH: &str = "/metrics";

/// The answer to `method` on `path` at the metrics listener.
pub fn answer(metrics: &Metrics, method: &Method, path: &str) -> HttpResponse {
    if path != PATH {
        return ApiError::NotFound.into_response();
    }
    if method != Method::GET && method != Method::HEAD {
        return ApiError::MethodNotAllowed {
            allow: "GET, HEAD".into(),
        }
        .into_response();
    }
    // The listener runs only with metrics on; off, there is no page.
    let Some(page) = metrics.encode() else {
        return ApiError::NotFound.into_response();
    };
    let mut response = Response::new(crate::http::Body::full(page));
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(metrics::CONTENT_TYPE),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_and_head_of_the_metrics_path_answer_the_page() {
        let metrics = Metrics::on(&["/api"]);
        let page = answer(&metrics, &Method::GET, "/metrics");
        assert_eq!(page.status(), StatusCode::OK);
        assert_eq!(
            page.headers()[CONTENT_TYPE],
            "text/plain; version=0.0.4; charset=utf-8"
        );
        assert_eq!(answer(&metrics, &Method::HEAD, "/metrics").status(), 200);
        assert_eq!(answer(&metrics, &Method::GET, "/metrics/").status(), 404);
        assert_eq!(answer(&metrics, &Method::GET, "/api").status(), 404);
        let post = answer(&metrics, &Method::POST, "/metrics");
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(post.headers()["allow"], "GET, HEAD");
        assert_eq!(
            answer(&Metrics::off(), &Method::GET, "/metrics").status(),
            404
        );
    }
}
