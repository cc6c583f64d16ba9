//! Login and registration throttling: limits that hold exactly under
//! concurrency (several instances on one PostgreSQL database: see
//! `instances`), a `Retry-After` on every 429, and throttle keys that no
//! email, however long, can break.

use serde_json::json;

use crate::support::*;

/// Sends `n` wrong-password logins for `email` at once, spread round-robin
/// over `servers`, and returns their statuses.
pub async fn concurrent_wrong_guesses(servers: &[&TestServer], email: &str, n: usize) -> Vec<u16> {
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let request = servers[i % servers.len()]
                .post("/api/auth/login")
                .json(json!({"email": email, "password": "wrong password"}));
            tokio::spawn(request.send())
        })
        .collect();
    let mut statuses = Vec::new();
    for handle in handles {
        statuses.push(handle.await.expect("request task").status);
    }
    statuses
}

/// How many of `statuses` are `status`.
pub fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|&&s| s == status).count()
}

/// A registration body for `email`.
pub fn registration(email: &str) -> serde_json::Value {
    json!({"name": "Someone", "email": email, "password": PASSWORD})
}

store_test! {
async fn concurrent_wrong_guesses_get_exactly_the_limit_of_401s() {
    let server = TestServer::start_with(|s| s.limits.login_failures_per_account = 5).await;
    server.register("Target", "target@example.com").await;
    let statuses = concurrent_wrong_guesses(&[&server], "target@example.com", 30).await;
    assert_eq!(
        (count(&statuses, 401), count(&statuses, 429)),
        (5, 25),
        "{statuses:?}"
    );
    // The right password is refused too until the window frees the account.
    let reply = server
        .post("/api/auth/login")
        .json(json!({"email": "target@example.com", "password": PASSWORD}))
        .send()
        .await;
    reply.assert_error(429, "too_many_attempts");
}
}

store_test! {
async fn registrations_are_limited_per_address_whatever_their_outcome() {
    let server = TestServer::start_with(|s| s.limits.registrations_per_address = 3).await;
    server.register("One", "one@example.com").await;
    // A refused body counts as well: the limit is on requests.
    server
        .post("/api/auth/register")
        .json(json!({"name": "Two"}))
        .send()
        .await
        .assert_error(400, "invalid_input");
    server.register("Three", "three@example.com").await;
    let reply = server
        .post("/api/auth/register")
        .json(registration("four@example.com"))
        .send()
        .await;
    reply.assert_error(429, "too_many_attempts");
    let wait: u64 = reply
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((1..=900).contains(&wait), "{wait}");
    // The refused registration created nothing.
    server
        .post("/api/auth/login")
        .json(json!({"email": "four@example.com", "password": PASSWORD}))
        .send()
        .await
        .assert_error(401, "invalid_credentials");
}
}

store_test! {
async fn a_very_long_email_is_refused_never_a_500() {
    let server = TestServer::start().await;
    // Random text, so that no compression brings it under an index's
    // row size limit.
    let noise: String = (0..100).map(|_| uuid::Uuid::new_v4().simple().to_string()).collect();
    for email in [format!("{noise}@example.com"), format!("{}@example.com", "é".repeat(3000))] {
        let login = server
            .post("/api/auth/login")
            .json(json!({"email": email, "password": "wrong password"}))
            .send()
            .await;
        assert!([400, 401].contains(&login.status), "{}", login.text);
        let register = server
            .post("/api/auth/register")
            .json(registration(&email))
            .send()
            .await;
        register.assert_error(400, "invalid_input");
    }
}
}
