//! The audit log (API.md "Audit log"), both stores: each action's event
//! with the right `user_id`, `actor_id`, `ip` and `user_agent`; no password,
//! hash or token in any event; filters and `before` paging with `Link`;
//! admin-only and own-only views; the bound on stored failed logins with
//! `detail.suppressed`; retention; an event acknowledged before `kill -9`
//! survives it; every event is a log line too.

use std::collections::BTreeSet;
use std::time::Duration;

use gatehouse::domain::audit::{Action, Event, Origin};
use gatehouse::domain::unix_now;
use serde_json::{json, Value};

use crate::auth::futures_join_all;
use crate::mailsink::MailSink;
use crate::support::*;

const AGENT: &str = "AuditTest/1.0";
const NEW_PASSWORD: &str = "another long password";
const RESET_PASSWORD: &str = "a password from the mail";
const RESET: &str = "/reset-password#token=";
const VERIFY: &str = "/verify-email#token=";

/// Every event of the admin listing, newest first, following `Link`s.
async fn all_events(server: &TestServer, token: &str, query: &str) -> Vec<Value> {
    let mut events = Vec::new();
    let mut path = format!("/api/audit?limit=1000{query}");
    loop {
        let reply = server.get(&path).token(token).send().await;
        reply.assert_ok(200);
        events.extend(reply.body.as_array().expect("an array").iter().cloned());
        match reply.header("link") {
            Some(link) => {
                path = link
                    .trim_start_matches('<')
                    .split('>')
                    .next()
                    .expect("a link")
                    .to_string()
            }
            None => return events,
        }
    }
}

fn of<'e>(events: &'e [Value], action: &str) -> Vec<&'e Value> {
    events.iter().filter(|e| e["action"] == action).collect()
}

/// The one event of `action` about `user_id` (None: about no account).
#[track_caller]
fn one<'e>(events: &'e [Value], action: &str, user_id: Option<&str>) -> &'e Value {
    let found: Vec<&Value> = of(events, action)
        .into_iter()
        .filter(|e| e["user_id"].as_str() == user_id)
        .collect();
    assert_eq!(found.len(), 1, "{action} of {user_id:?}: {found:#?}");
    found[0]
}

#[track_caller]
fn by(event: &Value, actor: Option<&str>) {
    assert_eq!(event["actor_id"].as_str(), actor, "actor of {event}");
    assert_eq!(event["ip"], "127.0.0.1", "ip of {event}");
    assert_eq!(event["user_agent"], AGENT, "user agent of {event}");
    let time = event["time"].as_str().expect("a time");
    assert!(time.len() == 20 && time.ends_with('Z'), "{time}");
}

async fn post(server: &TestServer, path: &str, token: Option<&str>, body: Value) -> Reply {
    let mut request = server.post(path).header("user-agent", AGENT).json(body);
    if let Some(token) = token {
        request = request.token(token);
    }
    request.send().await
}

store_test! {
/// Every action of API.md's list leaves its event, with the account it is
/// about, who did it (the user themself, the admin, or nobody), the client
/// address and user agent; and no event holds any password, hash or token
/// the requests carried.
async fn every_action_records_who_did_what_from_where() {
    let sink = MailSink::start().await;
    let url = sink.smtp_url();
    let server = TestServer::start_with(move |s| {
        s.mail.smtp_url = Some(gatehouse::config::Secret::new(url));
        s.auth.algorithm = gatehouse::domain::signing::SigningAlgorithm::EdDSA;
        s.limits.login_failures_per_account = 3;
    })
    .await;
    let mut secrets: Vec<String> = vec![PASSWORD.into(), NEW_PASSWORD.into(), RESET_PASSWORD.into()];
    let admin = server.admin().await;
    secrets.push(admin.token.clone());

    // register, login_failed (known and unknown), login, refresh, reuse.
    let registered = post(&server, "/api/auth/register", None,
        json!({"name": "Ann", "email": "ann@example.com", "password": PASSWORD})).await;
    registered.assert_ok(200);
    let ann_token = registered.body["token"].as_str().unwrap().to_string();
    let ann = server.me(&ann_token).await.body["_id"].as_str().unwrap().to_string();
    secrets.push(ann_token.clone());
    post(&server, "/api/auth/login", None, json!({"email": "ann@example.com", "password": "wrong password"}))
        .await
        .assert_error(401, "invalid_credentials");
    post(&server, "/api/auth/login", None, json!({"email": "Nobody@Example.com", "password": PASSWORD}))
        .await
        .assert_error(401, "invalid_credentials");
    // A password typed into the email field stays out of the log.
    post(&server, "/api/auth/login", None, json!({"email": "hunter2-in-the-wrong-field", "password": "x"}))
        .await
        .assert_error(401, "invalid_credentials");
    let login = post(&server, "/api/auth/login", None, json!({"email": "ann@example.com", "password": PASSWORD})).await;
    login.assert_ok(200);
    let (access, refresh) = (login.body["token"].as_str().unwrap(), login.body["refresh_token"].as_str().unwrap());
    secrets.extend([access.to_string(), refresh.to_string()]);
    // 17 rotations: the first token falls out of the spend times a session
    // keeps (16), so presenting it again is reuse whatever the clock says.
    let mut current = refresh.to_string();
    for _ in 0..17 {
        let refreshed = post(&server, "/api/auth/refresh", None, json!({"refresh_token": current})).await;
        refreshed.assert_ok(200);
        current = refreshed.body["refresh_token"].as_str().unwrap().to_string();
        secrets.push(current.clone());
        secrets.push(refreshed.body["token"].as_str().unwrap().to_string());
    }
    post(&server, "/api/auth/refresh", None, json!({"refresh_token": refresh}))
        .await
        .assert_error(401, "invalid_refresh_token");

    // session_revoked (own), logout.
    let second = post(&server, "/api/auth/login", None, json!({"email": "ann@example.com", "password": PASSWORD})).await;
    let second_token = second.body["token"].as_str().unwrap().to_string();
    let second_sid = jwt_part(&second_token, 1)["sid"].as_str().unwrap().to_string();
    server
        .delete(&format!("/api/auth/sessions/{second_sid}"))
        .header("user-agent", AGENT)
        .token(&ann_token)
        .send()
        .await
        .assert_ok(200);
    post(&server, "/api/auth/logout", Some(&ann_token), json!({})).await.assert_ok(200);

    // password_changed (own), then email_changed (own) and its verification.
    let third = post(&server, "/api/auth/login", None, json!({"email": "ann@example.com", "password": PASSWORD})).await;
    let token = third.body["token"].as_str().unwrap().to_string();
    let changed = post(&server, "/api/auth/password", Some(&token),
        json!({"current_password": PASSWORD, "new_password": NEW_PASSWORD})).await;
    changed.assert_ok(200);
    let token = changed.body["token"].as_str().unwrap().to_string();
    secrets.push(token.clone());
    server
        .patch(&format!("/api/users/{ann}"))
        .header("user-agent", AGENT)
        .token(&token)
        .json(json!({"email": "ann.new@example.com", "current_password": NEW_PASSWORD}))
        .send()
        .await
        .assert_ok(200);
    let verification = sink.nth_with("ann.new@example.com", VERIFY, 1).await.token();
    secrets.push(verification.clone());
    post(&server, "/api/auth/verify", None, json!({"token": verification})).await.assert_ok(200);

    // role_changed and user_updated, by the admin.
    for body in [json!({"role": "admin"}), json!({"role": "user", "name": "Ann B"})] {
        server
            .patch(&format!("/api/users/{ann}"))
            .header("user-agent", AGENT)
            .token(&admin.token)
            .json(body)
            .send()
            .await
            .assert_ok(200);
    }

    // password_reset_requested and password_reset.
    post(&server, "/api/auth/password/forgot", None, json!({"email": "ann.new@example.com"}))
        .await
        .assert_ok(202);
    let reset = sink.nth_with("ann.new@example.com", RESET, 1).await.token();
    secrets.push(reset.clone());
    let after_reset = post(&server, "/api/auth/password/reset", None,
        json!({"token": reset, "password": RESET_PASSWORD})).await;
    after_reset.assert_ok(200);
    secrets.push(after_reset.body["token"].as_str().unwrap().to_string());

    // user_created, user_deleted, key_rotated, by the admin.
    let created = post(&server, "/api/users", Some(&admin.token),
        json!({"name": "Bob", "email": "bob@example.com", "password": PASSWORD})).await;
    created.assert_ok(201);
    let bob = created.body["_id"].as_str().unwrap().to_string();
    server
        .delete(&format!("/api/users/{bob}"))
        .header("user-agent", AGENT)
        .token(&admin.token)
        .send()
        .await
        .assert_ok(200);
    post(&server, "/api/admin/keys/rotate", Some(&admin.token), json!({})).await.assert_ok(200);

    // login_throttled: the account's limit is 3 failures.
    for _ in 0..3 {
        post(&server, "/api/auth/login", None, json!({"email": "bob.gone@example.com", "password": "guess"}))
            .await
            .assert_error(401, "invalid_credentials");
    }
    post(&server, "/api/auth/login", None, json!({"email": "bob.gone@example.com", "password": "guess"}))
        .await
        .assert_error(429, "too_many_attempts");

    let listing = server.get("/api/audit?limit=1000").token(&admin.token).send().await;
    listing.assert_ok(200);
    let events = listing.body.as_array().unwrap().clone();
    let (me, admin_id) = (Some(ann.as_str()), Some(admin.id.as_str()));

    by(one(&events, "register", me), me);
    assert_eq!(one(&events, "register", me)["detail"]["email"], "ann@example.com");
    let failed = of(&events, "login_failed");
    let wrong = failed.iter().find(|e| e["user_id"] == ann.as_str()).expect("ann's failure");
    by(wrong, None);
    let unknown = failed
        .iter()
        .find(|e| e["detail"]["email"] == "nobody@example.com")
        .expect("the unknown address, normalized");
    assert_eq!(unknown["user_id"], Value::Null);
    by(unknown, None);
    assert!(
        failed.iter().any(|e| e["user_id"].is_null() && e["detail"].get("email").is_none()),
        "the non-address is withheld: {failed:#?}"
    );
    let logins = of(&events, "login");
    assert!(logins.iter().filter(|e| e["user_id"] == ann.as_str()).count() >= 3);
    for event in logins.iter().filter(|e| e["user_id"] == ann.as_str()) {
        by(event, me);
        assert!(event["detail"]["session_id"].is_string());
    }
    let refreshes = of(&events, "refresh");
    assert_eq!(refreshes.len(), 17);
    for event in &refreshes {
        by(event, me);
    }
    let reused = one(&events, "refresh_token_reused", me);
    by(reused, None);
    assert_eq!(reused["detail"]["session_id"], refreshes[0]["detail"]["session_id"]);
    let revoked = one(&events, "session_revoked", me);
    by(revoked, me);
    assert_eq!(revoked["detail"]["session_id"], second_sid.as_str());
    let logout = one(&events, "logout", me);
    by(logout, me);
    assert_eq!(logout["detail"]["scope"], "local");
    by(one(&events, "password_changed", me), me);
    let email = one(&events, "email_changed", me);
    by(email, me);
    assert_eq!((&email["detail"]["from"], &email["detail"]["to"]), (&json!("ann@example.com"), &json!("ann.new@example.com")));
    by(one(&events, "email_verified", me), None);
    let role: Vec<&Value> = of(&events, "role_changed").into_iter().filter(|e| e["user_id"] == ann.as_str()).collect();
    assert_eq!(role.len(), 2);
    for event in &role {
        by(event, admin_id);
    }
    assert_eq!((&role[0]["detail"]["from"], &role[0]["detail"]["to"]), (&json!("admin"), &json!("user")), "newest first");
    let updated = one(&events, "user_updated", me);
    by(updated, admin_id);
    assert_eq!(updated["detail"]["fields"], json!(["name"]));
    let requested = one(&events, "password_reset_requested", me);
    by(requested, None);
    assert_eq!(requested["detail"]["email"], "ann.new@example.com");
    by(one(&events, "password_reset", me), None);
    let bob = Some(bob.as_str());
    by(one(&events, "user_created", bob), admin_id);
    let deleted = one(&events, "user_deleted", bob);
    by(deleted, admin_id);
    assert_eq!(deleted["detail"]["email"], "bob@example.com");
    let rotated = one(&events, "key_rotated", None);
    by(rotated, admin_id);
    assert!(rotated["detail"]["kid"].is_string());
    let console = one(&events, "user_created", admin_id);
    assert_eq!((&console["actor_id"], &console["detail"]["via"]), (&Value::Null, &json!("command line")));
    let throttled = of(&events, "login_throttled");
    assert_eq!(throttled.len(), 1, "{throttled:#?}");
    by(throttled[0], None);
    assert_eq!(throttled[0]["detail"]["email"], "bob.gone@example.com");

    // Every action of the contract was seen, and nothing secret anywhere.
    let seen: BTreeSet<&str> = events.iter().map(|e| e["action"].as_str().unwrap()).collect();
    for action in Action::ALL {
        assert!(seen.contains(action.as_str()), "no {} event", action.as_str());
    }
    let raw = &listing.text;
    assert!(raw.contains("ann@example.com"), "the search reads the events");
    for secret in &secrets {
        for needle in needles(secret) {
            assert!(memchr::memmem::find(raw.as_bytes(), &needle).is_none(), "a secret in the audit log: {secret}");
        }
    }
    assert!(!raw.contains("hunter2") && !raw.contains("$2b$") && !raw.contains("$2a$"), "{raw}");
}
}

store_test! {
/// `?user_id=`, `?action=`, `?limit=` and `before` paging: newest first,
/// every event once, a `Link` while more follow and none after; bad
/// parameters are 400; the retention purge empties the log and its indexes.
async fn filters_and_paging() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    let ann = server.register("Ann", "ann@example.com").await;
    let bob = server.register("Bob", "bob@example.com").await;
    for _ in 0..7 {
        server.login("ann@example.com", PASSWORD).await;
    }
    for _ in 0..5 {
        server.login("bob@example.com", PASSWORD).await;
    }
    let all = all_events(&server, &admin.token, "").await;
    let ids: Vec<&str> = all.iter().map(|e| e["id"].as_str().unwrap()).collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(ids, sorted, "newest first");

    for (query, expected) in [
        // A registration's session is its `register` event, not a login.
        (format!("&user_id={}&action=login", ann.id), 7),
        (format!("&user_id={}", bob.id), 1 + 5),
        ("&action=register".to_string(), 2),
        // The admin's login too.
        ("&action=login".to_string(), 7 + 5 + 1),
    ] {
        let whole = all_events(&server, &admin.token, &query).await;
        assert_eq!(whole.len(), expected, "{query}: {whole:#?}");
        // Pages of 3 give the same events, in the same order, once each.
        let mut paged = Vec::new();
        let mut path = format!("/api/audit?limit=3{query}");
        loop {
            let reply = server.get(&path).token(&admin.token).send().await;
            reply.assert_ok(200);
            let page = reply.body.as_array().unwrap();
            assert!(page.len() <= 3);
            paged.extend(page.iter().cloned());
            match reply.header("link") {
                Some(link) => {
                    assert!(link.ends_with("; rel=\"next\""), "{link}");
                    assert!(!page.is_empty());
                    path = link[1..link.find('>').unwrap()].to_string();
                    assert!(path.contains(&format!("before={}", page.last().unwrap()["id"].as_str().unwrap())));
                }
                None => break,
            }
        }
        assert_eq!(paged, whole, "{query}");
        for event in &whole {
            if query.contains("user_id") {
                assert!(query.contains(event["user_id"].as_str().unwrap()));
            }
            if let Some(action) = query.split("action=").nth(1) {
                assert_eq!(event["action"], action);
            }
        }
    }
    for bad in [
        "limit=0",
        "limit=1001",
        "limit=ten",
        "action=logged_in",
        "before=not-an-id",
        "user_id=%20",
        "colour=red",
    ] {
        server
            .get(&format!("/api/audit?{bad}"))
            .token(&admin.token)
            .send()
            .await
            .assert_error(400, "invalid_input");
    }

    // Retention: nothing is old yet; 91 days on, everything is.
    let now = unix_now();
    assert_eq!(server.app.store.purge_audit(now, 90).await.unwrap(), 0);
    let removed = server.app.store.purge_audit(now + 91 * 86_400, 90).await.unwrap();
    assert_eq!(removed, all.len());
    assert!(all_events(&server, &admin.token, "").await.is_empty());
    assert!(all_events(&server, &admin.token, &format!("&user_id={}", ann.id)).await.is_empty());
    assert!(all_events(&server, &admin.token, "&action=login").await.is_empty());
}
}

store_test! {
/// `GET /api/audit` is an admin's; `GET /api/auth/events` shows a user the
/// events about their own account (an admin's change included), nobody
/// else's, and takes no `user_id`.
async fn admins_see_everything_users_their_own() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    let ann = server.register("Ann", "ann@example.com").await;
    let bob = server.register("Bob", "bob@example.com").await;
    server.get("/api/audit").send().await.assert_error(401, "missing_token");
    server.get("/api/audit").token(&ann.token).send().await.assert_error(403, "forbidden");
    server
        .patch(&format!("/api/users/{}", ann.id))
        .token(&admin.token)
        .json(json!({"name": "Ann B"}))
        .send()
        .await
        .assert_ok(200);
    let own = server.get("/api/auth/events").token(&ann.token).send().await;
    own.assert_ok(200);
    let events = own.body.as_array().unwrap();
    let actions: Vec<&str> = events.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["user_updated", "register"], "{events:#?}");
    assert!(events.iter().all(|e| e["user_id"] == ann.id.as_str()));
    assert_eq!(events[0]["actor_id"], admin.id.as_str());
    assert!(!own.text.contains(&bob.id));
    let filtered = server.get("/api/auth/events?action=register&limit=1").token(&ann.token).send().await;
    filtered.assert_ok(200);
    assert_eq!(filtered.body.as_array().unwrap().len(), 1);
    assert_eq!(filtered.header("link"), None);
    server
        .get(&format!("/api/auth/events?user_id={}", bob.id))
        .token(&ann.token)
        .send()
        .await
        .assert_error(400, "invalid_input");
    server.get("/api/auth/events").send().await.assert_error(401, "missing_token");
}
}

store_test! {
/// A flood of failed logins is recorded up to
/// `audit.max_failures_per_minute` a minute of the clock; the next one
/// stored after some were dropped carries how many in `detail.suppressed`,
/// so every failure is accounted for.
async fn a_flood_of_failed_logins_is_bounded() {
    let server = TestServer::start_with(|s| {
        s.audit.max_failures_per_minute = 5;
        s.limits.login_failures_per_account = 1000;
        s.limits.login_failures_per_address = 1000;
    })
    .await;
    let admin = server.admin().await;
    let guesses: Vec<_> = (0..20)
        .map(|i| {
            server
                .post("/api/auth/login")
                .json(json!({"email": format!("victim{i}@example.com"), "password": "guess"}))
                .send()
        })
        .collect();
    for reply in futures_join_all(guesses).await {
        reply.assert_error(401, "invalid_credentials");
    }
    let stored = all_events(&server, &admin.token, "&action=login_failed").await;
    // At most 5 in any minute of the clock (the burst may straddle two).
    let mut per_minute = std::collections::BTreeMap::new();
    for event in &stored {
        *per_minute.entry(event["time"].as_str().unwrap()[..16].to_string()).or_insert(0) += 1;
    }
    assert!(per_minute.values().all(|n| *n <= 5), "{per_minute:?}");
    assert!((5..=10).contains(&stored.len()), "{}", stored.len());

    // The next failure stored (a minute on, as the clock would have it)
    // counts those dropped since the last stored one.
    let later = unix_now() + 120;
    let next = Event::new(Action::LoginFailed, None, &Origin::default(), later)
        .with("email", "late@example.com");
    server.app.store.record(next, later).await.unwrap();
    let stored = all_events(&server, &admin.token, "&action=login_failed").await;
    assert_eq!(stored[0]["detail"]["email"], "late@example.com");
    let suppressed: u64 = stored
        .iter()
        .map(|e| e["detail"]["suppressed"].as_u64().unwrap_or(0))
        .sum();
    assert!(stored[0]["detail"]["suppressed"].as_u64().unwrap_or(0) > 0, "{:#}", stored[0]);
    assert_eq!(stored.len() - 1 + suppressed as usize, 20, "every failure accounted for");
    // Counted once: the one after has nothing suppressed.
    let after = Event::new(Action::LoginFailed, None, &Origin::default(), later);
    server.app.store.record(after, later).await.unwrap();
    let stored_after = all_events(&server, &admin.token, "&action=login_failed").await;
    assert_eq!(stored_after.len(), stored.len() + 1);
    assert!(stored_after[0]["detail"].get("suppressed").is_none(), "{:#}", stored_after[0]);
}
}

store_test! {
/// Events say what the write changed, decided under its lock: two admins
/// promoting and demoting a user at once leave `role_changed` events that
/// alternate and end at the role stored.
async fn role_change_events_follow_the_stored_role() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    let bob = server.register("Bob", "bob@example.com").await;
    for _ in 0..8 {
        let changes: Vec<_> = ["admin", "user"]
            .iter()
            .map(|role| {
                server
                    .patch(&format!("/api/users/{}", bob.id))
                    .token(&admin.token)
                    .json(json!({"role": role}))
                    .send()
            })
            .collect();
        for reply in futures_join_all(changes).await {
            reply.assert_ok(200);
        }
    }
    let stored = server.get(&format!("/api/users/{}", bob.id)).token(&admin.token).send().await;
    let events = all_events(&server, &admin.token, &format!("&user_id={}&action=role_changed", bob.id)).await;
    assert!(!events.is_empty());
    assert_eq!(events[0]["detail"]["to"], stored.body["role"], "the newest event ends at the stored role");
    for pair in events.windows(2) {
        // Newest first: each change starts where the one before it ended.
        assert_eq!(pair[0]["detail"]["from"], pair[1]["detail"]["to"], "{events:#?}");
    }
    assert_eq!(events.last().unwrap()["detail"]["from"], "user");
}
}

store_test! {
/// An event is written with its change: after a 2xx and a `kill -9` at
/// once, the registration, the login and a name change are in the log
/// after the restart; and each event was also a log line.
async fn events_acknowledged_before_kill_9_survive_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut env: Vec<(String, String)> = Vec::new();
    if backend() == Backend::Postgres {
        env.push(("GATEHOUSE_STORE__URL".into(), fresh_schema_url().await));
        env.push(("GATEHOUSE_AUTH__SECRET".into(), "test-secret-test-secret-test-secret!".into()));
    }
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut first = Binary::start(dir.path(), &env_refs);
    let registered = first
        .request(reqwest::Method::POST, "/api/auth/register")
        .json(json!({"name": "Crash", "email": "crash@example.com", "password": PASSWORD}))
        .send()
        .await;
    registered.assert_ok(200);
    // Each event is a log line too (written a few milliseconds later: wait
    // for it before the crash).
    let line = first
        .wait_for_line("action=register", Duration::from_secs(10))
        .expect("an audit line for the registration");
    let token = registered.body["token"].as_str().unwrap().to_string();
    let me = first.request(reqwest::Method::GET, "/api/auth/me").token(&token).send().await;
    let id = me.body["_id"].as_str().unwrap().to_string();
    let renamed = first
        .request(reqwest::Method::PATCH, &format!("/api/users/{id}"))
        .token(&token)
        .json(json!({"name": "Crashed"}))
        .send()
        .await;
    first.kill9();
    renamed.assert_ok(200);
    assert!(line.contains(&format!("user_id={id}")) && line.contains("ip=127.0.0.1"), "{line}");
    assert!(!line.contains(PASSWORD) && !line.contains(&token), "{line}");

    let second = Binary::start(dir.path(), &env_refs);
    let events = second
        .request(reqwest::Method::GET, "/api/auth/events")
        .token(&token)
        .send()
        .await;
    events.assert_ok(200);
    let actions: Vec<&str> = events.body.as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["user_updated", "register"], "{}", events.text);
}
}
