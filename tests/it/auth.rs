//! `/api`, `/healthz` and `/api/auth`: register, login, me, logout, the
//! login throttle, and the router's own 404 and 405.

use std::collections::HashSet;

use serde_json::json;

use crate::support::*;

store_test! {
async fn api_root_and_health_answer() {
    let server = TestServer::start().await;
    let reply = server.get("/api").send().await;
    reply.assert_ok(200);
    assert_eq!(reply.text, "API works.");
    assert!(reply
        .header("content-type")
        .unwrap()
        .starts_with("text/plain"));
    let reply = server.get("/healthz").send().await;
    reply.assert_ok(200);
    assert_eq!(reply.body, json!({"status": "ok"}));
}
}

store_test! {
async fn register_me_login_logout_then_the_old_token_fails() {
    let server = TestServer::start().await;
    let reply = server
        .post("/api/auth/register")
        .json(json!({"name": " Mike ", "email": " Mike@Example.COM", "password": PASSWORD}))
        .send()
        .await;
    reply.assert_ok(200);
    assert_eq!(reply.body["auth"], true);
    let token = reply.body["token"].as_str().unwrap().to_string();

    let me = server.get("/api/auth/me").token(&token).send().await;
    me.assert_ok(200);
    assert_eq!(me.body["name"], "Mike");
    assert_eq!(me.body["email"], "mike@example.com");
    assert_eq!(me.body["role"], "user");
    assert!(me.body["_id"].as_str().is_some_and(|id| !id.is_empty()));
    assert!(me.body["created_at"].as_str().unwrap().ends_with('Z'));
    assert_no_secrets(&me.text);

    let login_token = server.login("MIKE@example.com", PASSWORD).await;
    let me_again = server.get("/api/auth/me").bearer(&login_token).send().await;
    assert_eq!(me_again.body, me.body);

    let out = server
        .post("/api/auth/logout")
        .token(&login_token)
        .send()
        .await;
    out.assert_ok(200);
    assert_eq!(out.body, json!({"auth": false, "token": null}));
    server
        .get("/api/auth/me")
        .token(&login_token)
        .send()
        .await
        .assert_error(401, "invalid_token");
    // Logging out one token leaves the user's other tokens alone.
    server
        .get("/api/auth/me")
        .token(&token)
        .send()
        .await
        .assert_ok(200);
    // GET logout works too (the tutorial's verb).
    server
        .get("/api/auth/logout")
        .bearer(&token)
        .send()
        .await
        .assert_ok(200);
    server
        .get("/api/auth/me")
        .bearer(&token)
        .send()
        .await
        .assert_error(401, "invalid_token");
}
}

store_test! {
async fn logout_without_a_valid_token_still_answers_200() {
    let server = TestServer::start().await;
    for reply in [
        server.get("/api/auth/logout").send().await,
        server
            .post("/api/auth/logout")
            .token("garbage")
            .send()
            .await,
    ] {
        reply.assert_ok(200);
        assert_eq!(reply.body, json!({"auth": false, "token": null}));
    }
}
}

store_test! {
async fn forms_work_like_json_and_unknown_fields_are_ignored() {
    let server = TestServer::start().await;
    let reply = server
        .post("/api/auth/register")
        .form(&[
            ("name", "Form User"),
            ("email", "form@example.com"),
            ("password", PASSWORD),
            ("favourite_colour", "green"),
        ])
        .send()
        .await;
    reply.assert_ok(200);
    let reply = server
        .post("/api/auth/login")
        .form(&[
            ("email", "form@example.com"),
            ("password", PASSWORD),
            ("extra", "1"),
        ])
        .send()
        .await;
    reply.assert_ok(200);
    assert_eq!(reply.body["auth"], true);
}
}

store_test! {
async fn register_enforces_the_input_rules() {
    let server = TestServer::start().await;
    let long_name = "n".repeat(101);
    let long_password = "p".repeat(73);
    let cases = [
        (
            json!({"email": "a@example.com", "password": PASSWORD}),
            "name",
        ),
        (json!({"name": "A", "password": PASSWORD}), "email"),
        (json!({"name": "A", "email": "a@example.com"}), "password"),
        (
            json!({"name": "  ", "email": "a@example.com", "password": PASSWORD}),
            "name",
        ),
        (
            json!({"name": long_name, "email": "a@example.com", "password": PASSWORD}),
            "name",
        ),
        (
            json!({"name": "A", "email": "not-an-email", "password": PASSWORD}),
            "email",
        ),
        (
            json!({"name": "A", "email": "a@localhost", "password": PASSWORD}),
            "email",
        ),
        (
            json!({"name": "A", "email": "a@example.com", "password": "short"}),
            "password",
        ),
        (
            json!({"name": "A", "email": "a@example.com", "password": long_password}),
            "password",
        ),
        (
            json!({"name": 5, "email": "a@example.com", "password": PASSWORD}),
            "name",
        ),
        (
            json!({"name": "A", "email": ["a@example.com"], "password": PASSWORD}),
            "email",
        ),
    ];
    for (body, field) in cases {
        let reply = server
            .post("/api/auth/register")
            .json(body.clone())
            .send()
            .await;
        reply.assert_error(400, "invalid_input");
        let message = reply.body["message"].as_str().unwrap();
        assert!(message.contains(field), "{body}: {message}");
    }
    // Nothing was stored along the way.
    server.register("A", "a@example.com").await;
}
}

store_test! {
async fn passwords_of_72_bytes_work_and_73_are_refused_never_truncated() {
    let server = TestServer::start().await;
    let seventy_two = "é".repeat(36); // 36 two-byte characters
    assert_eq!(seventy_two.len(), 72);
    server
        .post("/api/auth/register")
        .json(json!({"name": "L", "email": "long@example.com", "password": seventy_two}))
        .send()
        .await
        .assert_ok(200);
    server.login("long@example.com", &seventy_two).await;
    // bcrypt alone would accept this one: it only reads 72 bytes.
    let seventy_three = format!("{seventy_two}x");
    server
        .post("/api/auth/login")
        .json(json!({"email": "long@example.com", "password": seventy_three}))
        .send()
        .await
        .assert_error(401, "invalid_credentials");
}
}

store_test! {
async fn duplicate_emails_get_409_in_any_letter_case() {
    let server = TestServer::start().await;
    server.register("A", "dup@example.com").await;
    let reply = server
        .post("/api/auth/register")
        .json(json!({"name": "B", "email": "DUP@Example.com ", "password": PASSWORD}))
        .send()
        .await;
    reply.assert_error(409, "email_taken");
}
}

store_test! {
async fn concurrent_registrations_of_one_email_yield_exactly_one_200() {
    let server = TestServer::start().await;
    let attempts = (0..50).map(|i| {
        let email = if i % 2 == 0 {
            "race@example.com"
        } else {
            "RACE@Example.COM"
        };
        server
            .post("/api/auth/register")
            .json(json!({"name": format!("racer {i}"), "email": email, "password": PASSWORD}))
            .send()
    });
    let replies = futures_join_all(attempts).await;
    let ok = replies.iter().filter(|r| r.status == 200).count();
    let conflicts = replies.iter().filter(|r| r.status == 409).count();
    assert_eq!((ok, conflicts), (1, 49));
    let admin = server.admin().await;
    let users = server.get("/api/users").token(&admin.token).send().await;
    let raced: Vec<_> = users
        .body
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| u["email"] == "race@example.com")
        .collect();
    assert_eq!(raced.len(), 1);
}
}

store_test! {
async fn unknown_email_and_wrong_password_get_identical_answers() {
    let server = TestServer::start().await;
    server.register("Known", "known@example.com").await;
    let wrong_password = server
        .post("/api/auth/login")
        .json(json!({"email": "known@example.com", "password": "wrong password"}))
        .send()
        .await;
    let unknown_email = server
        .post("/api/auth/login")
        .json(json!({"email": "nobody@example.com", "password": "wrong password"}))
        .send()
        .await;
    wrong_password.assert_error(401, "invalid_credentials");
    assert_eq!(wrong_password.status, unknown_email.status);
    assert_eq!(wrong_password.text, unknown_email.text);
    assert_eq!(wrong_password.body["auth"], false);
    assert_eq!(wrong_password.body["token"], serde_json::Value::Null);
}
}

store_test! {
async fn login_needs_both_fields() {
    let server = TestServer::start().await;
    let reply = server
        .post("/api/auth/login")
        .json(json!({"email": "a@example.com"}))
        .send()
        .await;
    reply.assert_error(400, "invalid_input");
    assert!(reply.body["message"].as_str().unwrap().contains("password"));
}
}

store_test! {
async fn closed_registration_is_403() {
    let server = TestServer::start_with(|s| s.auth.allow_registration = false).await;
    server
        .post("/api/auth/register")
        .json(json!({"name": "A", "email": "a@example.com", "password": PASSWORD}))
        .send()
        .await
        .assert_error(403, "registration_closed");
}
}

store_test! {
async fn repeated_failures_are_throttled_with_retry_after() {
    let server = TestServer::start_with(|s| {
        s.limits.login_failures_per_account = 3;
        s.limits.login_failures_per_address = 6;
        s.limits.login_window_secs = 600;
    })
    .await;
    server.register("Victim", "victim@example.com").await;
    let attempt = |email: &'static str, password: &'static str| {
        server
            .post("/api/auth/login")
            .json(json!({"email": email, "password": password}))
            .send()
    };
    for _ in 0..3 {
        attempt("victim@example.com", "wrong password")
            .await
            .assert_error(401, "invalid_credentials");
    }
    // Throttled now, even with the right password.
    let reply = attempt("Victim@Example.com", PASSWORD).await;
    reply.assert_error(429, "too_many_attempts");
    let retry_after: u64 = reply.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=600).contains(&retry_after), "{retry_after}");

    // Another account from the same address is not throttled yet, and a
    // success resets nothing but its own count.
    server.register("Other", "other@example.com").await;
    server.login("other@example.com", PASSWORD).await;
    // The per-address limit (6) spans emails: 3 failures so far, 3 more.
    for email in ["x1@example.com", "x2@example.com", "x3@example.com"] {
        attempt(email, "wrong password")
            .await
            .assert_error(401, "invalid_credentials");
    }
    attempt("other@example.com", PASSWORD)
        .await
        .assert_error(429, "too_many_attempts");
}
}

store_test! {
async fn a_success_resets_the_account_count() {
    let server = TestServer::start_with(|s| s.limits.login_failures_per_account = 2).await;
    server.register("U", "u@example.com").await;
    let fail = || {
        server
            .post("/api/auth/login")
            .json(json!({"email": "u@example.com", "password": "wrong password"}))
            .send()
    };
    fail().await.assert_error(401, "invalid_credentials");
    server.login("u@example.com", PASSWORD).await;
    fail().await.assert_error(401, "invalid_credentials");
    // Without the reset this would be the third failure in the window.
    server.login("u@example.com", PASSWORD).await;
}
}

store_test! {
async fn a_trusted_proxy_header_names_the_client() {
    let server = TestServer::start_with(|s| {
        s.server.client_ip_header = Some("x-forwarded-for".into());
        s.limits.login_failures_per_account = 1;
    })
    .await;
    server.register("U", "u@example.com").await;
    let fail_from = |address: &'static str| {
        server
            .post("/api/auth/login")
            .header("x-forwarded-for", address)
            .json(json!({"email": "u@example.com", "password": "wrong password"}))
            .send()
    };
    fail_from("203.0.113.7")
        .await
        .assert_error(401, "invalid_credentials");
    fail_from("10.0.0.1, 203.0.113.7")
        .await
        .assert_error(429, "too_many_attempts");
    fail_from("198.51.100.9")
        .await
        .assert_error(401, "invalid_credentials");
}
}

store_test! {
async fn unknown_paths_are_404_and_wrong_methods_405_with_allow() {
    let server = TestServer::start().await;
    server
        .get("/nope")
        .send()
        .await
        .assert_error(404, "not_found");
    server
        .get("/api/auth")
        .send()
        .await
        .assert_error(404, "not_found");
    let reply = server.delete("/api/auth/login").send().await;
    reply.assert_error(405, "method_not_allowed");
    assert_eq!(reply.header("allow"), Some("POST"));
    let reply = server.put("/api/auth/logout").send().await;
    let allowed: HashSet<&str> = reply.header("allow").unwrap().split(", ").collect();
    assert_eq!(allowed, HashSet::from(["GET", "HEAD", "POST"]));
}
}

#[tokio::test]
async fn a_stopped_server_releases_its_data_to_the_next_one() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_settings(test_settings(dir.path())).await;
    let user = server.register("Kept", "kept@example.com").await;
    server.stop().await.expect("graceful stop succeeds");
    // The database lock is released and every write is there.
    let server = TestServer::start_settings(test_settings(dir.path())).await;
    let me = server.get("/api/auth/me").token(&user.token).send().await;
    me.assert_ok(200);
    assert_eq!(me.body["_id"], user.id.as_str());
    server.login("kept@example.com", PASSWORD).await;
}

/// No user-facing body may carry a password or a bcrypt hash.
pub fn assert_no_secrets(text: &str) {
    assert!(!text.contains("password"), "{text}");
    assert!(!text.contains("$2"), "{text}");
    assert!(!text.contains(PASSWORD), "{text}");
}

/// Runs request futures concurrently on the test's runtime.
pub async fn futures_join_all<F>(futures: impl IntoIterator<Item = F>) -> Vec<Reply>
where
    F: std::future::Future<Output = Reply> + Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut replies = Vec::new();
    for handle in handles {
        replies.push(handle.await.expect("request task"));
    }
    replies
}

store_test! {
async fn lookalike_emails_are_one_account_and_invisible_characters_are_refused() {
    let server = TestServer::start().await;
    server.register("Mike", "mike@bücher.de").await;
    for alike in [
        "ＭＩＫＥ@ＢÜＣＨＥＲ.de",
        "MIKE@xn--bcher-kva.de",
        "mike@bu\u{308}cher.de",
    ] {
        server
            .post("/api/auth/register")
            .json(json!({"name": "Copy", "email": alike, "password": PASSWORD}))
            .send()
            .await
            .assert_error(409, "email_taken");
        // The owner logs in with any spelling.
        let login = server
            .post("/api/auth/login")
            .json(json!({"email": alike, "password": PASSWORD}))
            .send()
            .await;
        login.assert_ok(200);
    }
    for invisible in ["mi\u{200b}ke@bücher.de", "mike\u{200d}@example.com", "mi\u{ad}ke@example.com"] {
        server
            .post("/api/auth/register")
            .json(json!({"name": "Ghost", "email": invisible, "password": PASSWORD}))
            .send()
            .await
            .assert_error(400, "invalid_input");
    }
    // Names stay as typed.
    let odd_name = "Ｍｉｋｅ\u{301}";
    let reply = server
        .post("/api/auth/register")
        .json(json!({"name": odd_name, "email": "other@example.com", "password": PASSWORD}))
        .send()
        .await;
    reply.assert_ok(200);
    let token = reply.body["token"].as_str().unwrap();
    let me = server.get("/api/auth/me").token(token).send().await;
    assert_eq!(me.body["name"], odd_name);
    assert_eq!(me.body["email"], "other@example.com");
}
}

store_test! {
async fn accounts_stored_before_email_normalization_still_log_in() {
    let server = TestServer::start().await;
    // What an earlier version stored for `A@XN--BCHER-KVA.DE`: trimmed and
    // lower-cased only, the domain in punycode.
    let legacy = gatehouse::domain::user::User::new(
        "Legacy".into(),
        "a@xn--bcher-kva.de".into(),
        gatehouse::domain::user::Role::User,
        bcrypt::hash(PASSWORD, 4).unwrap(),
        gatehouse::domain::unix_now(),
    );
    server.app.store.insert_user(legacy, Vec::new()).await.unwrap();
    let login = |email: &'static str| {
        server
            .post("/api/auth/login")
            .json(json!({"email": email, "password": PASSWORD}))
            .send()
    };
    login("A@XN--BCHER-KVA.DE").await.assert_ok(200);
    login("  a@xn--bcher-kva.de ").await.assert_ok(200);
    // A wrong password is still refused, with the usual answer.
    let wrong = server
        .post("/api/auth/login")
        .json(json!({"email": "a@xn--bcher-kva.de", "password": "wrong password"}))
        .send()
        .await;
    wrong.assert_error(401, "invalid_credentials");
}
}

store_test! {
/// A successful login whose stored hash has a lower cost than
/// `auth.bcrypt_cost` stores a new hash of the same password at the
/// configured cost (any of the `$2a$`/`$2b$`/`$2y$` variants, as imported
/// accounts have them), keeping the password version, so the session goes
/// on; a failed login changes nothing.
async fn a_login_upgrades_a_hash_below_the_configured_cost() {
    use gatehouse::domain::user::{Role, User};
    let server = TestServer::start_with(|s| s.auth.bcrypt_cost = 5).await;
    for (email, version) in [
        ("a@example.com", bcrypt::Version::TwoA),
        ("b@example.com", bcrypt::Version::TwoB),
        ("y@example.com", bcrypt::Version::TwoY),
    ] {
        let hash = bcrypt::hash_with_result(PASSWORD, 4)
            .unwrap()
            .format_for_version(version);
        let now = gatehouse::domain::unix_now();
        let user = User::new("Old".into(), email.into(), Role::User, hash.clone(), now);
        let user = server.app.store.insert_user(user, Vec::new()).await.unwrap();
        let stored = || async {
            server.app.store.user_by_id(&user.id).await.unwrap().unwrap()
        };

        server
            .post("/api/auth/login")
            .json(json!({"email": email, "password": "not the password"}))
            .send()
            .await
            .assert_error(401, "invalid_credentials");
        assert_eq!(stored().await.password_hash, hash, "a failed login upgrades nothing");

        let token = server.login(email, PASSWORD).await;
        let upgraded = stored().await;
        assert!(upgraded.password_hash.starts_with("$2b$05$"), "{}", upgraded.password_hash);
        assert!(bcrypt::verify(PASSWORD, &upgraded.password_hash).unwrap());
        assert_eq!(upgraded.password_version, user.password_version);
        server.me(&token).await.assert_ok(200);
        // Again: already at the cost, nothing to do; the password works.
        server.login(email, PASSWORD).await;
        assert_eq!(stored().await.password_hash, upgraded.password_hash);
    }
}
}
