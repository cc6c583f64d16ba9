//! Signing keys: every token names its key (`kid`), the verifier picks the
//! key by it, `auth.previous_secrets` keeps tokens of a rotated secret
//! working, and the JWKS document (empty under HS256) is published.

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::support::*;
use crate::tokens::SECRET;

const NEW_SECRET: &str = "a-new-secret-a-new-secret-a-new-secret!!";

fn header(token: &str) -> Value {
    jwt_part(token, 0)
}

store_test! {
/// HS256 keys are shared secrets: the JWK set publishes none, and tells
/// caches they may keep it five minutes (API.md).
async fn the_jwks_document_is_empty_under_hs256_and_cacheable() {
    let server = TestServer::start().await;
    let reply = server.get("/.well-known/jwks.json").send().await;
    reply.assert_ok(200);
    assert_eq!(reply.body, json!({"keys": []}));
    assert_eq!(reply.header("cache-control"), Some("public, max-age=300"));
    let head = server
        .request(reqwest::Method::HEAD, "/.well-known/jwks.json")
        .send()
        .await;
    assert_eq!(head.status, 200);
}
}

store_test! {
/// A token says which key signed it, and only that key is tried: the right
/// secret under a `kid` the server does not know is refused.
async fn tokens_name_their_key_and_an_unknown_kid_is_refused() {
    let server = TestServer::start().await;
    let user = server.register("Kid", "kid@example.com").await;
    let kid = header(&user.token)["kid"]
        .as_str()
        .expect("a kid")
        .to_string();
    assert_eq!(header(&user.token)["alg"], "HS256");
    assert!(!kid.is_empty() && !SECRET.windows(kid.len()).any(|w| w == kid.as_bytes()));
    let now = gatehouse::domain::unix_now();
    let claims = json!({"sub": user.id, "id": user.id, "iat": now, "exp": now + 600,
                        "jti": "fedcba9876543210", "iss": "gatehouse", "pwv": 0});
    let sign = |kid: Option<&str>| {
        let header = Header {
            kid: kid.map(str::to_string),
            ..Header::new(Algorithm::HS256)
        };
        encode(&header, &claims, &EncodingKey::from_secret(SECRET).unwrap()).unwrap()
    };
    server
        .get("/api/auth/me")
        .token(&sign(Some(&kid)))
        .send()
        .await
        .assert_ok(200);
    server
        .get("/api/auth/me")
        .token(&sign(Some("not-a-key-of-ours")))
        .send()
        .await
        .assert_error(401, "invalid_token");
}
}

store_test! {
/// Rotating the secret: with the old one in `auth.previous_secrets`, its
/// access and refresh tokens keep working (a refresh moves the session to
/// the new key); once it is dropped, they stop.
async fn a_previous_secret_keeps_its_tokens_working_until_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = None;
    let server = TestServer::start_with(|s| {
        s.data_dir = dir.path().to_path_buf();
        first = Some(s.clone());
    })
    .await;
    let first = first.expect("settings seen");
    let old = server.register("Rotate", "rotate@example.com").await;
    let reply = server
        .post("/api/auth/login")
        .json(json!({"email": "rotate@example.com", "password": PASSWORD}))
        .send()
        .await;
    reply.assert_ok(200);
    let refresh_token = reply.body["refresh_token"].as_str().unwrap().to_string();
    let old_kid = header(&old.token)["kid"].clone();
    server.stop().await.expect("graceful stop");

    let mut rotated = first.clone();
    rotated.auth.previous_secrets = vec![first.auth.secret.clone().unwrap()];
    rotated.auth.secret = Some(gatehouse::config::Secret::new(NEW_SECRET));
    let server = TestServer::start_settings(rotated).await;
    server
        .me(&old.token).await
        .assert_ok(200);
    let reply = server
        .post("/api/auth/refresh")
        .json(json!({"refresh_token": refresh_token}))
        .send()
        .await;
    reply.assert_ok(200);
    let new_token = reply.body["token"].as_str().unwrap().to_string();
    assert_ne!(header(&new_token)["kid"], old_kid, "signed with the new secret");
    let new_refresh = reply.body["refresh_token"].as_str().unwrap().to_string();
    server.stop().await.expect("graceful stop");

    let mut dropped = first.clone();
    dropped.auth.secret = Some(gatehouse::config::Secret::new(NEW_SECRET));
    let server = TestServer::start_settings(dropped).await;
    server
        .me(&old.token).await
        .assert_error(401, "invalid_token");
    server
        .me(&new_token).await
        .assert_ok(200);
    let reply = server
        .post("/api/auth/refresh")
        .json(json!({"refresh_token": new_refresh}))
        .send()
        .await;
    reply.assert_ok(200);
    server.stop().await.expect("graceful stop");
}
}

store_test! {
/// The admin sees the keys by `kid` only, the signing one first; under
/// HS256 rotation is by configuration, so the rotate route refuses (400);
/// both are the admin's alone.
async fn the_admin_lists_the_keys_by_kid_and_hs256_rotation_is_by_configuration() {
    let server = TestServer::start_with(|s| {
        s.auth.previous_secrets = vec![gatehouse::config::Secret::new(NEW_SECRET)];
    })
    .await;
    let admin = server.admin().await;
    let user = server.register("Plain", "plain@example.com").await;
    let reply = server.get("/api/admin/keys").token(&admin.token).send().await;
    reply.assert_ok(200);
    let keys = reply.body.as_array().expect("an array").clone();
    assert_eq!(keys.len(), 2, "{}", reply.text);
    assert_eq!(keys[0]["kid"], header(&admin.token)["kid"]);
    assert_eq!(keys[0]["state"], "current");
    assert_eq!(keys[1]["state"], "previous");
    assert_ne!(keys[0]["kid"], keys[1]["kid"]);
    assert!(keys.iter().all(|k| k["alg"] == "HS256"));
    for secret in [std::str::from_utf8(SECRET).unwrap(), NEW_SECRET] {
        assert!(!reply.text.contains(secret), "a secret in the listing");
    }
    server
        .post("/api/admin/keys/rotate")
        .token(&admin.token)
        .json(json!({}))
        .send()
        .await
        .assert_error(400, "invalid_input");
    crate::signing::key_routes_are_forbidden(&server, &user.token).await;
}
}
