//! The request line and head, as raw bytes on a socket: `HEAD` on every
//! `GET` route, the HTTP/1.1 `Host` rule, and `Cache-Control` on every
//! answer that may carry a token or user data.

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::*;

/// Sends `request` as it is on a new connection and reads one response.
async fn raw(server: &TestServer, request: &str) -> String {
    let mut stream = TcpStream::connect(server.address()).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    read_response(&mut stream).await
}

fn status_of(response: &str) -> &str {
    response.split(' ').nth(1).unwrap_or_default()
}

fn body_of(response: &str) -> Value {
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or(Value::Null)
}

store_test! {
async fn head_is_answered_on_every_get_route_with_headers_only() {
    let server = TestServer::start().await;
    let user = server.register("Hea D", "head@example.com").await;
    for path in ["/api", "/healthz", "/api/openapi.json", "/api/auth/me"] {
        let get = server.get(path).token(&user.token).send().await;
        get.assert_ok(200);
        let head = server
            .request(reqwest::Method::HEAD, path)
            .token(&user.token)
            .send()
            .await;
        assert_eq!(head.status, 200, "HEAD {path}");
        assert!(head.text.is_empty(), "HEAD {path} sent a body");
        assert_eq!(
            head.header("content-length").map(str::to_string),
            Some(get.text.len().to_string()),
            "HEAD {path}: the GET's length"
        );
        assert_eq!(head.header("content-type"), get.header("content-type"));
    }
    // HEAD still passes the token check first.
    let head = server.request(reqwest::Method::HEAD, "/api/auth/me").send().await;
    assert_eq!(head.status, 401);
    // A POST-only route does not grow a HEAD.
    let head = server.request(reqwest::Method::HEAD, "/api/auth/login").send().await;
    assert_eq!(head.status, 405);
    assert_eq!(head.header("allow"), Some("POST"));
}
}

store_test! {
async fn http_1_1_needs_exactly_one_host_header() {
    let server = TestServer::start().await;
    for request in [
        "GET /api HTTP/1.1\r\n\r\n",
        "GET /api HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n",
        "GET /api/auth/me HTTP/1.1\r\nconnection: close\r\n\r\n",
    ] {
        let response = raw(&server, request).await;
        assert_eq!(status_of(&response), "400", "{request:?}: {response}");
        assert_eq!(body_of(&response)["error"], "invalid_input", "{response}");
    }
    let response = raw(&server, "GET /api HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n").await;
    assert_eq!(status_of(&response), "200", "{response}");
    // HTTP/1.0 has no Host rule.
    let response = raw(&server, "GET /api HTTP/1.0\r\n\r\n").await;
    assert_eq!(status_of(&response), "200", "{response}");
}
}

store_test! {
async fn answers_with_tokens_or_user_data_are_never_cached() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    let register = server
        .post("/api/auth/register")
        .json(json!({"name": "C", "email": "cache@example.com", "password": PASSWORD}))
        .send()
        .await;
    register.assert_ok(200);
    let token = register.body["token"].as_str().unwrap().to_string();
    let replies = [
        register,
        server
            .post("/api/auth/login")
            .json(json!({"email": "cache@example.com", "password": PASSWORD}))
            .send()
            .await,
        server.get("/api/auth/me").token(&token).send().await,
        server.get("/api/users").token(&admin.token).send().await,
        server.get("/api/auth/me").send().await,
        server.get("/nope").send().await,
        server.get("/healthz").send().await,
        server.get("/api/auth/logout").token(&token).send().await,
    ];
    for reply in &replies {
        assert_eq!(reply.header("cache-control"), Some("no-store"), "{}", reply.text);
    }
    for path in ["/api", "/api/openapi.json"] {
        let reply = server.get(path).send().await;
        assert_eq!(reply.header("cache-control"), None, "{path}");
    }
}
}

/// A login through a proxy that appends its own `x-forwarded-for` line (as
/// HAProxy does) after whatever lines the client wrote.
fn proxied_login(client_lines: &[&str], proxy_line: &str, email: &str, password: &str) -> String {
    let body = json!({"email": email, "password": password}).to_string();
    let mut request =
        String::from("POST /api/auth/login HTTP/1.1\r\nhost: x\r\nconnection: close\r\n");
    for line in client_lines.iter().chain([&proxy_line]) {
        request.push_str(&format!("x-forwarded-for: {line}\r\n"));
    }
    request.push_str(&format!(
        "content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    ));
    request
}

store_test! {
async fn the_client_address_is_the_last_entry_of_all_forwarded_lines() {
    let server = TestServer::start_with(|s| {
        s.server.client_ip_header = Some("x-forwarded-for".into());
        s.limits.login_failures_per_account = 5;
    })
    .await;
    server.register("Victim", "victim@example.com").await;
    // The attacker varies the line it writes; the proxy's line stays its own
    // address: every guess counts against that address.
    let mut unauthorized = 0;
    for i in 0..30 {
        let spoofed = format!("10.9.{}.{}", i / 250, i % 250);
        let request = proxied_login(&[&spoofed], "198.51.100.66:40000", "victim@example.com", "wrong password");
        let response = raw(&server, &request).await;
        match status_of(&response) {
            "401" => unauthorized += 1,
            "429" => {}
            other => panic!("{other}: {response}"),
        }
    }
    assert_eq!(unauthorized, 5, "guesses evaluated past the limit of 5");
    // The attacker cannot lock the victim out by writing the victim's address
    // first: the victim's own requests arrive with the proxy's line for them.
    for _ in 0..10 {
        let request = proxied_login(&["203.0.113.5"], "198.51.100.66", "victim@example.com", "wrong password");
        raw(&server, &request).await;
    }
    let request = proxied_login(&[], "[2001:db8::5]:5678", "victim@example.com", PASSWORD);
    let response = raw(&server, &request).await;
    assert_eq!(status_of(&response), "200", "{response}");
    let request = proxied_login(&[], "203.0.113.5", "victim@example.com", PASSWORD);
    let response = raw(&server, &request).await;
    assert_eq!(status_of(&response), "200", "{response}");
}
}
