//! Request bodies and the network's bounds: content types, size and time
//! limits, malformed input, and text stored verbatim.

use std::time::Duration;

use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::*;

const REGISTER: &str = "/api/auth/register";

store_test! {
async fn other_content_types_are_415() {
    let server = TestServer::start().await;
    let body = br#"{"name":"A","email":"a@example.com","password":"correct horse"}"#.to_vec();
    for content_type in [
        "text/plain",
        "multipart/form-data; boundary=x",
        "application/xml",
    ] {
        server
            .post(REGISTER)
            .raw(content_type, body.clone())
            .send()
            .await
            .assert_error(415, "unsupported_media_type");
    }
    // No content type at all.
    let reply = server
        .client
        .post(server.url(REGISTER))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 415);
    // Parameters and letter case are fine.
    server
        .post(REGISTER)
        .raw("Application/JSON; charset=utf-8", body)
        .send()
        .await
        .assert_ok(200);
}
}

store_test! {
async fn malformed_bodies_are_400_invalid_body() {
    let server = TestServer::start().await;
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("application/json", b"{\"name\": ".to_vec()),
        ("application/json", b"".to_vec()),
        ("application/json", b"{\"name\":\"\xff\xfe\"}".to_vec()),
        ("application/json", deep.into_bytes()),
        (
            "application/x-www-form-urlencoded",
            b"name=%ff%fe&email=a%40example.com".to_vec(),
        ),
    ];
    for (content_type, body) in cases {
        let reply = server
            .post(REGISTER)
            .raw(content_type, body.clone())
            .send()
            .await;
        reply.assert_error(400, "invalid_body");
    }
    // Well-formed but not an object: the input is wrong, not the syntax.
    server
        .post(REGISTER)
        .raw("application/json", b"[1, 2]".to_vec())
        .send()
        .await
        .assert_error(400, "invalid_input");
}
}

store_test! {
async fn names_are_stored_and_returned_verbatim() {
    let server = TestServer::start().await;
    let names = [
        "nul\u{0}inside",
        "emoji 🦀🔐",
        "Robert'); DROP TABLE users;--",
        "<script>alert(1)</script>",
        "{\"$gt\": \"\"}",
    ];
    for (i, name) in names.iter().enumerate() {
        let reply = server
            .post(REGISTER)
            .json(json!({"name": name, "email": format!("v{i}@example.com"), "password": PASSWORD}))
            .send()
            .await;
        reply.assert_ok(200);
        let token = reply.body["token"].as_str().unwrap();
        let me = server.get("/api/auth/me").token(token).send().await;
        assert_eq!(me.body["name"], *name);
    }
    // Form bodies carry the same bytes.
    let reply = server
        .post(REGISTER)
        .form(&[
            ("name", "emoji 🦀 & co=1"),
            ("email", "form@example.com"),
            ("password", PASSWORD),
        ])
        .send()
        .await;
    let token = reply.body["token"].as_str().unwrap().to_string();
    let me = server.get("/api/auth/me").token(&token).send().await;
    assert_eq!(me.body["name"], "emoji 🦀 & co=1");
}
}

store_test! {
async fn a_declared_oversized_body_is_refused_before_it_is_read() {
    let server = TestServer::start().await;
    let mut stream = TcpStream::connect(server.address())
        .await
        .unwrap();
    // Declare 10 MB, send only the head and a few bytes: the answer must come
    // without the server waiting for the rest.
    stream
        .write_all(
            b"POST /api/auth/register HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 10485760\r\n\r\n{\"name\":",
        )
        .await
        .unwrap();
    let response = read_response(&mut stream).await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains("payload_too_large"), "{response}");
}
}

store_test! {
async fn a_chunked_body_over_the_limit_is_413() {
    let server = TestServer::start_with(|s| s.limits.body_bytes = 1024).await;
    let mut stream = TcpStream::connect(server.address())
        .await
        .unwrap();
    let chunk = "a".repeat(600);
    let request = format!(
        "POST /api/auth/register HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let response = read_response(&mut stream).await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
}
}

store_test! {
async fn a_slow_client_is_cut_off_while_others_are_served() {
    let server = TestServer::start_with(|s| s.server.header_timeout_secs = 1).await;
    let address = server.address();

    // Headers that never finish.
    let mut slow_headers = TcpStream::connect(&address).await.unwrap();
    slow_headers
        .write_all(b"GET /api HTTP/1.1\r\nhost: x\r\nx-slow: ")
        .await
        .unwrap();
    // A body that never finishes.
    let mut slow_body = TcpStream::connect(&address).await.unwrap();
    slow_body
        .write_all(
            b"POST /api/auth/login HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"email\"",
        )
        .await
        .unwrap();

    // Others are served meanwhile. (`connection: close` keeps these out of
    // the client's pool: an idle pooled connection is itself closed after the
    // 1 s timeout, and reusing it at that instant would race the close.)
    server
        .get("/api")
        .header("connection", "close")
        .send()
        .await
        .assert_ok(200);

    assert!(
        closed_within(&mut slow_headers, Duration::from_secs(10)).await,
        "slow headers not cut off"
    );
    let response = read_response(&mut slow_body).await;
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    assert!(response.contains("invalid_body"), "{response}");
    server
        .get("/api")
        .header("connection", "close")
        .send()
        .await
        .assert_ok(200);
}
}

store_test! {
async fn a_silent_connection_is_closed() {
    let server = TestServer::start_with(|s| s.server.header_timeout_secs = 1).await;
    let mut silent = TcpStream::connect(server.address())
        .await
        .unwrap();
    assert!(closed_within(&mut silent, Duration::from_secs(10)).await);
}
}

store_test! {
async fn a_key_given_twice_is_refused_never_last_one_wins() {
    let server = TestServer::start().await;
    let victim = server.register("Victim", "victim@example.com").await;
    let admin = server.admin().await;
    // A proxy that keeps the first key would see a different login than we would.
    let login = br#"{"email":"attacker@example.com","email":"victim@example.com","password":"correct horse"}"#;
    let reply = server
        .post("/api/auth/login")
        .raw("application/json", login.to_vec())
        .send()
        .await;
    reply.assert_error(400, "invalid_body");
    let patch = br#"{"role":"user","name":"A","role":"admin"}"#;
    let reply = server
        .patch(&format!("/api/users/{}", victim.id))
        .token(&admin.token)
        .raw("application/json", patch.to_vec())
        .send()
        .await;
    reply.assert_error(400, "invalid_body");
    let form = server
        .post("/api/auth/login")
        .form(&[("email", "a@example.com"), ("email", "victim@example.com"), ("password", PASSWORD)])
        .send()
        .await;
    assert_eq!(form.status, 400, "{}", form.text);
    let me = server.get("/api/auth/me").token(&victim.token).send().await;
    assert_eq!(me.body["role"], "user");
    assert_eq!(me.body["name"], "Victim");
}
}
