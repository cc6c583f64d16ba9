//! Asymmetric signing keys (`auth.algorithm` = EdDSA, ES256, RS256): tokens
//! verify with an independent library from the published JWKS alone, the
//! JWKS holds no private member, the verifier refuses every way of choosing
//! the key or algorithm from the token, keys survive restarts and algorithm
//! switches, and rotation (standby, promote, retirement) works on one
//! instance and across instances sharing PostgreSQL.

use std::time::{Duration, Instant};

use gatehouse::domain::signing::SigningAlgorithm;
use gatehouse::Settings;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{json, Value};

use crate::support::*;

const ASYMMETRIC: [SigningAlgorithm; 3] = [
    SigningAlgorithm::EdDSA,
    SigningAlgorithm::ES256,
    SigningAlgorithm::RS256,
];

/// Members a private JWK would carry (RFC 7518 §6).
const PRIVATE_MEMBERS: [&str; 9] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k", "priv"];

/// An Ed25519 key of the attacker's (a fixed seed, as PKCS#8 v1), made
/// without any of gatehouse's code.
fn attacker_key() -> (EncodingKey, Jwk) {
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    der.extend_from_slice(&[42u8; 32]);
    let key = EncodingKey::from_ed_der(&der);
    let jwk = Jwk::from_encoding_key(&key, Algorithm::EdDSA).unwrap();
    (key, jwk)
}

/// A server under `alg`, and its settings (to restart it on the same store).
async fn start(alg: SigningAlgorithm, dir: &std::path::Path) -> (TestServer, Settings) {
    start_configured(dir, |s| s.auth.algorithm = alg).await
}

async fn start_configured(
    dir: &std::path::Path,
    configure: impl FnOnce(&mut Settings),
) -> (TestServer, Settings) {
    let mut seen = None;
    let server = TestServer::start_with(|s| {
        s.data_dir = dir.to_path_buf();
        configure(s);
        seen = Some(s.clone());
    })
    .await;
    (server, seen.expect("settings seen"))
}

async fn jwks(server: &TestServer) -> (JwkSet, Value) {
    let reply = server.get("/.well-known/jwks.json").send().await;
    reply.assert_ok(200);
    assert_eq!(reply.header("cache-control"), Some("public, max-age=300"));
    let set: JwkSet = serde_json::from_str(&reply.text).expect("an RFC 7517 JWK set");
    (set, reply.body.clone())
}

fn kid(token: &str) -> String {
    jwt_part(token, 0)["kid"]
        .as_str()
        .expect("a kid")
        .to_string()
}

/// Verifies `token` the way a gateway would: the key by `kid` from the JWK
/// set, the algorithm the JWK names.
fn verify_with(set: &JwkSet, token: &str) -> Result<Value, String> {
    let kid = kid(token);
    let jwk = set.find(&kid).ok_or(format!("no key {kid} in the JWKS"))?;
    let alg: Algorithm = jwk
        .common
        .key_algorithm
        .ok_or("the JWK names no alg")?
        .to_string()
        .parse()
        .map_err(|e| format!("{e:?}"))?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    let mut validation = Validation::new(alg);
    validation.set_issuer(&["gatehouse"]);
    decode::<Value>(token, &key, &validation)
        .map(|data| data.claims)
        .map_err(|e| e.to_string())
}

async fn keys_listing(server: &TestServer, admin: &TestUser) -> Vec<Value> {
    let reply = server
        .get("/api/admin/keys")
        .token(&admin.token)
        .send()
        .await;
    reply.assert_ok(200);
    reply.body.as_array().expect("an array").clone()
}

async fn rotate(server: &TestServer, admin: &TestUser, body: Value) -> Vec<Value> {
    let reply = server
        .post("/api/admin/keys/rotate")
        .token(&admin.token)
        .json(body)
        .send()
        .await;
    reply.assert_ok(200);
    reply.body.as_array().expect("the listing").clone()
}

/// Both key routes answer 403 to `token` (a user's, not an admin's).
pub(crate) async fn key_routes_are_forbidden(server: &TestServer, token: &str) {
    for (method, path) in [
        (reqwest::Method::GET, "/api/admin/keys"),
        (reqwest::Method::POST, "/api/admin/keys/rotate"),
    ] {
        server
            .request(method, path)
            .token(token)
            .json(json!({}))
            .send()
            .await
            .assert_error(403, "forbidden");
    }
}

store_test! {
/// Under each algorithm, a token verifies with jsonwebtoken from the JWKS
/// document alone (parsed from the HTTP answer), the JWKS publishes only
/// public members, and the admin listing names the key without its bytes.
async fn each_algorithm_verifies_from_the_jwks_alone() {
    for alg in ASYMMETRIC {
        let dir = tempfile::tempdir().unwrap();
        let (server, _) = start(alg, dir.path()).await;
        let admin = server.admin().await;
        let user = server.register("Jwk", "jwk@example.com").await;
        let header = jwt_part(&user.token, 0);
        assert_eq!(header["alg"], alg.name());
        let (set, raw) = jwks(&server).await;
        assert_eq!(set.keys.len(), 1, "{alg:?}: the current key only: {raw}");
        for key in raw["keys"].as_array().unwrap() {
            for member in PRIVATE_MEMBERS {
                assert!(key.get(member).is_none(), "{alg:?}: {member} published: {key}");
            }
            assert_eq!(key["use"], "sig");
            assert_eq!(key["alg"], alg.name());
            let kty = key["kty"].as_str().unwrap();
            match alg {
                SigningAlgorithm::EdDSA => {
                    assert_eq!((kty, key["crv"].as_str()), ("OKP", Some("Ed25519")));
                    assert!(key["x"].is_string());
                }
                SigningAlgorithm::ES256 => {
                    assert_eq!((kty, key["crv"].as_str()), ("EC", Some("P-256")));
                    assert!(key["x"].is_string() && key["y"].is_string());
                }
                _ => {
                    assert_eq!(kty, "RSA");
                    assert!(key["n"].is_string() && key["e"].is_string());
                }
            }
        }
        let claims = verify_with(&set, &user.token).expect("verifies from the JWKS");
        assert_eq!(claims["sub"], user.id.as_str());
        assert_eq!(server.me(&user.token).await.status, 200);
        // A refreshed token is signed by the same key, and verifies too.
        let pair = server.login_pair("jwk@example.com", PASSWORD).await;
        let reply = server
            .post("/api/auth/refresh")
            .json(json!({"refresh_token": pair["refresh_token"]}))
            .send()
            .await;
        reply.assert_ok(200);
        verify_with(&set, reply.body["token"].as_str().unwrap()).expect("refreshed token");

        let listing = keys_listing(&server, &admin).await;
        let current: Vec<_> = listing.iter().filter(|k| k["state"] == "current").collect();
        assert_eq!(current.len(), 1, "{listing:?}");
        assert_eq!(current[0]["kid"], kid(&user.token).as_str());
        assert_eq!(current[0]["alg"], alg.name());
        assert!(current[0]["created_at"].as_str().is_some_and(|t| t.ends_with('Z')));
        assert!(current[0]["retires_at"].is_null());
        server.stop().await.expect("graceful stop");
    }
}
}

store_test! {
/// What an attacker can put in a token does not choose the key or the
/// algorithm: HS256 keyed with the public key's bytes under the real kid,
/// `alg: none`, a key of their own embedded as `jwk` or pointed at by
/// `jku`/`x5u`, an unknown kid, no kid: all 401, under each algorithm.
async fn tokens_cannot_choose_their_key_or_algorithm() {
    let (attacker, attacker_jwk) = attacker_key();
    for alg in ASYMMETRIC {
        let dir = tempfile::tempdir().unwrap();
        let (server, _) = start(alg, dir.path()).await;
        let user = server.register("Eve", "eve@example.com").await;
        let real_kid = kid(&user.token);
        let claims = jwt_part(&user.token, 1);
        let (_, raw) = jwks(&server).await;
        let public = &raw["keys"][0];
        let mut forged = Vec::new();
        // Algorithm confusion: the public key, in each form a verifier might
        // hold it, as an HMAC secret.
        let b64 = |name: &str| {
            public[name].as_str().map(|v| {
                base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, v)
                    .unwrap()
            })
        };
        let mut secrets = vec![public.to_string().into_bytes()];
        secrets.extend(["x", "y", "n"].into_iter().filter_map(b64));
        for secret in &secrets {
            let header = Header {
                kid: Some(real_kid.clone()),
                ..Header::new(Algorithm::HS256)
            };
            forged.push(("HS256 with the public key", encode(&header, &claims, &EncodingKey::from_secret(secret).unwrap()).unwrap()));
        }
        // alg none, under the real kid.
        let none_header = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            json!({"alg": "none", "typ": "JWT", "kid": real_kid}).to_string(),
        );
        let body = user.token.split('.').nth(1).unwrap();
        forged.push(("alg none", format!("{none_header}.{body}.")));
        // The attacker's own key, offered through the header.
        let signed_by_attacker = |header: Header| encode(&header, &claims, &attacker).unwrap();
        let attacker_kid = attacker_jwk.thumbprint(jsonwebtoken::jwk::ThumbprintHash::SHA256).unwrap();
        let own = |kid: &str| Header {
            kid: Some(kid.to_string()),
            ..Header::new(Algorithm::EdDSA)
        };
        forged.push(("embedded jwk", signed_by_attacker(Header { jwk: Some(attacker_jwk.clone()), ..own(&attacker_kid) })));
        forged.push(("embedded jwk, real kid", signed_by_attacker(Header { jwk: Some(attacker_jwk.clone()), ..own(&real_kid) })));
        forged.push(("jku", signed_by_attacker(Header { jku: Some(format!("{}/evil.json", server.base)), ..own(&attacker_kid) })));
        forged.push(("x5u", signed_by_attacker(Header { x5u: Some(format!("{}/evil.pem", server.base)), ..own(&real_kid) })));
        forged.push(("unknown kid", signed_by_attacker(own("made-up-kid"))));
        forged.push(("no kid", signed_by_attacker(Header::new(Algorithm::EdDSA))));
        for (what, token) in &forged {
            let reply = server.get("/api/auth/me").token(token).send().await;
            assert_eq!(reply.status, 401, "{alg:?}: {what}: {}", reply.text);
            assert_eq!(reply.body["error"], "invalid_token");
        }
        assert_eq!(server.me(&user.token).await.status, 200, "the real token still works");
        server.stop().await.expect("graceful stop");
    }
}
}

store_test! {
/// The key pair is generated once and kept in the store: after a restart
/// the same key signs and old tokens verify. Switching from HS256 keeps the
/// HS256 tokens valid (they expire as usual), and switching to another
/// algorithm keeps the old key's tokens valid as a previous key.
async fn keys_survive_restarts_and_algorithm_switches() {
    let dir = tempfile::tempdir().unwrap();
    let (server, settings) = start_configured(dir.path(), |_| {}).await;
    let hs256 = server.register("Switch", "switch@example.com").await;
    assert_eq!(jwt_part(&hs256.token, 0)["alg"], "HS256");
    server.stop().await.expect("graceful stop");

    let restart = |alg: SigningAlgorithm| {
        let mut s = settings.clone();
        s.auth.algorithm = alg;
        TestServer::start_settings(s)
    };
    let server = restart(SigningAlgorithm::EdDSA).await;
    assert_eq!(server.me(&hs256.token).await.status, 200, "HS256 token after the switch");
    let eddsa = server.login("switch@example.com", PASSWORD).await;
    assert_eq!(jwt_part(&eddsa, 0)["alg"], "EdDSA");
    let (set, _) = jwks(&server).await;
    assert_eq!(set.keys.len(), 1, "HS256 is never published");
    server.stop().await.expect("graceful stop");

    let server = restart(SigningAlgorithm::EdDSA).await;
    assert_eq!(server.me(&eddsa).await.status, 200, "the stored key after a restart");
    let again = server.login("switch@example.com", PASSWORD).await;
    assert_eq!(kid(&again), kid(&eddsa), "the same key signs");
    assert_eq!(jwks(&server).await.0, set, "the same JWKS");
    server.stop().await.expect("graceful stop");

    let server = restart(SigningAlgorithm::ES256).await;
    let es256 = server.login("switch@example.com", PASSWORD).await;
    assert_eq!(jwt_part(&es256, 0)["alg"], "ES256");
    assert_eq!(server.me(&eddsa).await.status, 200, "the EdDSA key is a previous key");
    assert_eq!(server.me(&es256).await.status, 200);
    let (set, _) = jwks(&server).await;
    assert_eq!(set.keys.len(), 2, "current and previous");
    verify_with(&set, &eddsa).expect("the previous key stays published");
    let admin = server.admin().await;
    let listing = keys_listing(&server, &admin).await;
    let state = |kid: &str| {
        listing
            .iter()
            .find(|k| k["kid"] == kid)
            .map(|k| (k["state"].as_str().unwrap().to_string(), k["alg"].as_str().unwrap().to_string(), k["retires_at"].is_string()))
    };
    assert_eq!(state(&kid(&es256)), Some(("current".into(), "ES256".into(), false)));
    assert_eq!(state(&kid(&eddsa)), Some(("previous".into(), "EdDSA".into(), true)));
    assert_eq!(state(&kid(&hs256.token)), Some(("previous".into(), "HS256".into(), true)));
    server.stop().await.expect("graceful stop");
}
}

store_test! {
/// Rotation while serving: a standby key is published before it signs;
/// promoting it makes it sign while the old key's tokens keep working and
/// the old key stays published; after the token lifetime (and the
/// followers' margin) the old key is dropped from the JWKS and the listing.
async fn standby_then_promote_then_the_previous_key_retires() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = start_configured(dir.path(), |s| {
        s.auth.algorithm = SigningAlgorithm::EdDSA;
        s.auth.token_ttl_secs = 5;
    })
    .await;
    let admin = server.admin().await;
    let first = kid(&admin.token);
    let listing = rotate(&server, &admin, json!({"standby": true})).await;
    let standby: Vec<_> = listing.iter().filter(|k| k["state"] == "standby").collect();
    assert_eq!(standby.len(), 1, "{listing:?}");
    let second = standby[0]["kid"].as_str().unwrap().to_string();
    assert_ne!(second, first);
    let (set, _) = jwks(&server).await;
    assert!(set.find(&second).is_some(), "the standby key is published");
    assert!(set.find(&first).is_some());
    let user = server.register("Rot", "rot@example.com").await;
    assert_eq!(kid(&user.token), first, "the standby key does not sign yet");
    // A second standby request keeps the standby key.
    let again = rotate(&server, &admin, json!({"standby": true})).await;
    assert_eq!(again, listing);

    let listing = rotate(&server, &admin, json!({})).await;
    let by_kid = |kid: &str| listing.iter().find(|k| k["kid"] == kid).cloned().unwrap();
    assert_eq!(by_kid(&second)["state"], "current");
    assert_eq!(by_kid(&first)["state"], "previous");
    assert!(by_kid(&first)["retires_at"].is_string());
    let promoted = server.login("rot@example.com", PASSWORD).await;
    assert_eq!(kid(&promoted), second, "the promoted key signs");
    assert_eq!(server.me(&user.token).await.status, 200, "old tokens still valid");
    assert_eq!(server.me(&promoted).await.status, 200);
    let (set, _) = jwks(&server).await;
    verify_with(&set, &user.token).expect("the previous key stays published");

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (set, _) = jwks(&server).await;
        if set.find(&first).is_none() {
            break;
        }
        assert!(Instant::now() < deadline, "the previous key was not dropped");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let admin_token = server.login(&admin.email, PASSWORD).await;
    let listing = server.get("/api/admin/keys").token(&admin_token).send().await;
    assert!(!listing.text.contains(&first), "{}", listing.text);
    let stored = server.app.store.signing_keys().await.unwrap().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut stored_kids: Vec<String> = stored.keys.iter().map(|k| k.kid.clone()).collect();
    while stored_kids.contains(&first) {
        assert!(Instant::now() < deadline, "the retired key stays in the store");
        tokio::time::sleep(Duration::from_millis(250)).await;
        let stored = server.app.store.signing_keys().await.unwrap().unwrap();
        stored_kids = stored.keys.iter().map(|k| k.kid.clone()).collect();
    }
    server.stop().await.expect("graceful stop");
}
}

store_test! {
/// The key routes are the admin's; rotate takes `{}` or `{"standby": bool}`
/// and nothing else.
async fn key_routes_are_the_admins_and_rotate_checks_its_body() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = start(SigningAlgorithm::ES256, dir.path()).await;
    let admin = server.admin().await;
    let user = server.register("Plain", "plain@example.com").await;
    key_routes_are_forbidden(&server, &user.token).await;
    for body in [json!({"standby": "maybe"}), json!({"standby": 1}), json!({"kid": "x"})] {
        server
            .post("/api/admin/keys/rotate")
            .token(&admin.token)
            .json(body)
            .send()
            .await
            .assert_error(400, "invalid_input");
    }
    let before = keys_listing(&server, &admin).await;
    assert_eq!(before.len(), 2, "ES256 current, HS256 until its tokens expire: {before:?}");
    let reply = server
        .post("/api/admin/keys/rotate")
        .token(&admin.token)
        .form(&[("standby", "true")])
        .send()
        .await;
    reply.assert_ok(200);
    assert!(reply.text.contains("\"standby\""), "{}", reply.text);
}
}

/// Two instances on one database share the key set; a standby key added on
/// A is published by B within 10 s; a key promoted on A (never seen by B)
/// is accepted by B at once; and a flood of made-up kids costs B at most
/// about one store read a second.
#[tokio::test]
async fn a_rotation_on_one_instance_is_followed_by_another() {
    let Some((a, b, _dirs)) =
        crate::instances::two_instances("a_rotation_on_one_instance_is_followed_by_another", |s| {
            s.auth.algorithm = SigningAlgorithm::EdDSA
        })
        .await
    else {
        return;
    };
    assert_eq!(jwks(&a).await.0, jwks(&b).await.0, "one key set");
    let admin = a.admin().await;
    let listing = rotate(&a, &admin, json!({"standby": true})).await;
    let standby = listing.iter().find(|k| k["state"] == "standby").unwrap()["kid"]
        .as_str()
        .unwrap()
        .to_string();
    let started = Instant::now();
    while jwks(&b).await.0.find(&standby).is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "B did not publish A's standby key within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Promote twice: the second promotion makes a key B has never seen.
    rotate(&a, &admin, json!({})).await;
    let admin_token = a.login(&admin.email, PASSWORD).await;
    let listing = a
        .post("/api/admin/keys/rotate")
        .token(&admin_token)
        .json(json!({}))
        .send()
        .await;
    listing.assert_ok(200);
    let user = a.register("Follow", "follow@example.com").await;
    let new_kid = kid(&user.token);
    assert!(
        jwks(&b).await.0.find(&new_kid).is_none(),
        "B has not read it yet"
    );
    assert_eq!(
        b.me(&user.token).await.status,
        200,
        "B looks the new kid up at once"
    );

    // Made-up kids: all refused, and B reads the store about once a second.
    let reads_before = b.app.key_lookups.reads();
    let claims = jwt_part(&user.token, 1);
    let (attacker, _) = attacker_key();
    let started = Instant::now();
    for i in 0..200 {
        let header = Header {
            kid: Some(format!("made-up-{i}")),
            ..Header::new(Algorithm::EdDSA)
        };
        let token = encode(&header, &claims, &attacker).unwrap();
        assert_eq!(b.me(&token).await.status, 401);
    }
    let reads = b.app.key_lookups.reads() - reads_before;
    let seconds = started.elapsed().as_secs() + 1;
    assert!(reads <= seconds + 1, "{reads} reads in about {seconds} s");
}
