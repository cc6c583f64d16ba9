//! CORS (`cors.allowed_origins`), header by header: off by default (no CORS
//! header, `OPTIONS` is 405), an allowed origin's preflight and responses,
//! a disallowed origin (nothing), the wildcard, and errors (401) carrying
//! the headers too, so a browser app can read them.

use serde_json::json;

use crate::support::*;

const APP: &str = "https://app.example.com";

fn no_cors_header(reply: &Reply) {
    for name in [
        "access-control-allow-origin",
        "access-control-allow-methods",
        "access-control-allow-headers",
        "access-control-max-age",
        "access-control-expose-headers",
    ] {
        assert_eq!(reply.header(name), None, "{name} on {}", reply.text);
    }
}

#[tokio::test]
async fn by_default_there_is_no_cors_at_all() {
    let server = TestServer::start().await;
    let preflight = server
        .request(reqwest::Method::OPTIONS, "/api/auth/login")
        .header("origin", APP)
        .header("access-control-request-method", "POST")
        .send()
        .await;
    preflight.assert_error(405, "method_not_allowed");
    no_cors_header(&preflight);
    let reply = server.get("/api").header("origin", APP).send().await;
    assert_eq!(reply.status, 200);
    no_cors_header(&reply);
}

#[tokio::test]
async fn an_allowed_origin_gets_its_preflight_and_its_headers() {
    let server = TestServer::start_with(|s| {
        s.cors.allowed_origins = vec![APP.into(), "http://localhost:5173".into()];
        s.cors.max_age_secs = 120;
    })
    .await;
    let preflight = server
        .request(reqwest::Method::OPTIONS, "/api/users/some-id")
        .header("origin", APP)
        .header("access-control-request-method", "PATCH")
        .header(
            "access-control-request-headers",
            "content-type, x-access-token",
        )
        .send()
        .await;
    assert_eq!(preflight.status, 204, "{}", preflight.text);
    assert!(preflight.text.is_empty());
    assert_eq!(preflight.header("access-control-allow-origin"), Some(APP));
    assert_eq!(
        preflight.header("access-control-allow-methods"),
        Some("GET, HEAD, PUT, PATCH, DELETE")
    );
    assert_eq!(
        preflight.header("access-control-allow-headers"),
        Some("content-type, authorization, x-access-token")
    );
    assert_eq!(preflight.header("access-control-max-age"), Some("120"));
    assert_eq!(preflight.header("vary"), Some("Origin"));
    assert_eq!(preflight.header("access-control-allow-credentials"), None);
    assert_eq!(preflight.header("cache-control"), Some("no-store"));

    // An actual request, a success and an error alike.
    let user = server.register("Cora", "cora@example.com").await;
    let me = server.me(&user.token).await;
    no_cors_header(&me);
    for reply in [
        server
            .get("/api/auth/me")
            .token(&user.token)
            .header("origin", APP)
            .send()
            .await,
        server
            .get("/api/auth/me")
            .header("origin", APP)
            .send()
            .await,
        server
            .post("/api/auth/login")
            .header("origin", "http://localhost:5173")
            .json(json!({"email": "cora@example.com", "password": "wrong password"}))
            .send()
            .await,
    ] {
        let origin = reply
            .header("access-control-allow-origin")
            .map(str::to_string);
        assert!(
            origin.as_deref() == Some(APP) || origin.as_deref() == Some("http://localhost:5173"),
            "{origin:?}"
        );
        assert_eq!(reply.header("vary"), Some("Origin"));
        assert_eq!(
            reply.header("access-control-expose-headers"),
            Some("Retry-After, Link, WWW-Authenticate")
        );
    }

    // Another origin: no CORS header; its preflight is the usual 405.
    let other = server
        .get("/api/auth/me")
        .token(&user.token)
        .header("origin", "https://evil.example.com")
        .send()
        .await;
    assert_eq!(other.status, 200);
    no_cors_header(&other);
    let other_preflight = server
        .request(reqwest::Method::OPTIONS, "/api/auth/me")
        .header("origin", "https://evil.example.com")
        .send()
        .await;
    other_preflight.assert_error(405, "method_not_allowed");
    no_cors_header(&other_preflight);
    // An unknown path is a 404 for a preflight too.
    let unknown = server
        .request(reqwest::Method::OPTIONS, "/api/nothing-here")
        .header("origin", APP)
        .send()
        .await;
    unknown.assert_error(404, "not_found");
}

#[tokio::test]
async fn the_wildcard_answers_star_to_every_origin() {
    let server = TestServer::start_with(|s| s.cors.allowed_origins = vec!["*".into()]).await;
    let preflight = server
        .request(reqwest::Method::OPTIONS, "/api/auth/login")
        .header("origin", "https://anything.example")
        .send()
        .await;
    assert_eq!(preflight.status, 204);
    assert_eq!(preflight.header("access-control-allow-origin"), Some("*"));
    assert_eq!(
        preflight.header("access-control-allow-methods"),
        Some("POST")
    );
    assert_eq!(preflight.header("access-control-max-age"), Some("600"));
    let reply = server
        .get("/api")
        .header("origin", "https://other.example")
        .send()
        .await;
    assert_eq!(reply.header("access-control-allow-origin"), Some("*"));
    // Not a CORS request: no header.
    no_cors_header(&server.get("/api").send().await);
}
