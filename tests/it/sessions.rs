//! Sessions and refresh tokens (issue 11): the token pair and its session id,
//! rotation and the reuse window, concurrent refreshes on one instance and on
//! two sharing PostgreSQL, every way a session ends (logout scopes, revocation
//! by id or by user, password change, absolute and idle expiry, user
//! deletion) killing its access and refresh tokens at once, the session list,
//! durability across `kill -9`, a store that never holds a refresh token's
//! text, and tokens from before sessions.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use crate::instances::two_instances;
use crate::support::*;
use crate::tokens::{sign, SECRET};

const NEW_PASSWORD: &str = "a brand new password";
/// The default `auth.token_ttl_secs` and `auth.session_ttl_secs`.
const TOKEN_TTL: u64 = 86_400;
const SESSION_TTL: u64 = 2_592_000;
/// How long a test waits for a session to expire or a reuse window to close,
/// when the configured times are a few seconds.
const EXPIRY_DEADLINE: Duration = Duration::from_secs(20);
/// The pause between two polls of a condition that must eventually hold.
const POLL: Duration = Duration::from_millis(50);

/// A token pair as the server answered it.
#[derive(Clone, Debug)]
struct Pair {
    token: String,
    refresh: String,
}

impl Pair {
    /// The pair of a 200 answer, checked against the contract's shape.
    #[track_caller]
    fn of(reply: &Reply) -> Pair {
        reply.assert_ok(200);
        Pair::from_body(&reply.body)
    }

    #[track_caller]
    fn from_body(body: &Value) -> Pair {
        assert_eq!(body["auth"], true, "{body}");
        assert_eq!(body["token_type"], "Bearer", "{body}");
        let token = body["token"].as_str().expect("token").to_string();
        let refresh = body["refresh_token"]
            .as_str()
            .expect("refresh_token")
            .to_string();
        let claims = claims(&token);
        let lifetime = claims["exp"].as_u64().expect("exp") - claims["iat"].as_u64().expect("iat");
        assert_eq!(body["expires_in"].as_u64(), Some(lifetime), "{body}");
        // At least 256 bits of URL-safe text (43 characters of base64url).
        assert!(
            refresh.len() >= 43
                && refresh
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b)),
            "refresh token {refresh:?}"
        );
        assert_ne!(refresh, token);
        sid(&token);
        Pair { token, refresh }
    }

    fn sid(&self) -> String {
        sid(&self.token)
    }
}

/// Where requests go: an in-process server or the built binary.
trait Api {
    fn call(&self, method: Method, path: &str) -> Req;
}

impl Api for TestServer {
    fn call(&self, method: Method, path: &str) -> Req {
        self.request(method, path)
    }
}

impl Api for Binary {
    fn call(&self, method: Method, path: &str) -> Req {
        self.request(method, path)
    }
}

/// The claims of a JWT, read without verifying it.
fn claims(token: &str) -> Value {
    jwt_part(token, 1)
}

/// The `sid` claim of an access token, checked to be a lowercase hyphenated
/// UUID.
#[track_caller]
fn sid(token: &str) -> String {
    let sid = claims(token)["sid"]
        .as_str()
        .unwrap_or_else(|| panic!("a sid claim in {}", claims(token)))
        .to_string();
    let parsed = uuid::Uuid::parse_str(&sid).expect("sid is a UUID");
    assert_eq!(parsed.hyphenated().to_string(), sid, "canonical spelling");
    sid
}

/// A Unix time from an RFC 3339 string (`2026-11-28T21:00:00Z`).
#[track_caller]
fn time(value: &Value) -> u64 {
    let text = value.as_str().unwrap_or_else(|| panic!("a time: {value}"));
    assert!(text.ends_with('Z'), "UTC: {text}");
    humantime::parse_rfc3339(text)
        .unwrap_or_else(|e| panic!("RFC 3339 {text}: {e}"))
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Registers a user; returns its `_id` and the registration's pair.
async fn register_pair(server: &TestServer, name: &str, email: &str) -> (String, Pair) {
    let reply = server
        .post("/api/auth/register")
        .json(json!({"name": name, "email": email, "password": PASSWORD}))
        .send()
        .await;
    let pair = Pair::of(&reply);
    let me = me(server, &pair.token).await;
    me.assert_ok(200);
    (me.body["_id"].as_str().expect("_id").to_string(), pair)
}

async fn login_pair(server: &TestServer, email: &str) -> Pair {
    Pair::from_body(&server.login_pair(email, PASSWORD).await)
}

/// A user with three sessions (register, then two logins), oldest first.
async fn three_sessions(server: &TestServer, email: &str) -> (String, [Pair; 3]) {
    let (id, first) = register_pair(server, "Three", email).await;
    let second = login_pair(server, email).await;
    let third = login_pair(server, email).await;
    (id, [first, second, third])
}

async fn me(api: &impl Api, token: &str) -> Reply {
    api.call(Method::GET, "/api/auth/me")
        .token(token)
        .send()
        .await
}

async fn refresh(api: &impl Api, refresh_token: &str) -> Reply {
    api.call(Method::POST, "/api/auth/refresh")
        .json(json!({"refresh_token": refresh_token}))
        .send()
        .await
}

/// Refreshes and asserts the answer is a token pair.
async fn refreshed(api: &impl Api, refresh_token: &str) -> Pair {
    Pair::of(&refresh(api, refresh_token).await)
}

#[track_caller]
fn assert_refresh_refused(reply: &Reply) {
    reply.assert_error(401, "invalid_refresh_token");
    assert_eq!(reply.body["auth"], false, "{}", reply.text);
}

/// Asserts the session of `pair` has ended: its access token and its refresh
/// token are refused.
async fn assert_ended(api: &impl Api, pair: &Pair, what: &str) {
    let reply = me(api, &pair.token).await;
    assert_eq!(
        (reply.status, reply.body["error"].as_str()),
        (401, Some("invalid_token")),
        "{what}: the access token of an ended session: {}",
        reply.text
    );
    let reply = refresh(api, &pair.refresh).await;
    assert_eq!(
        (reply.status, reply.body["error"].as_str()),
        (401, Some("invalid_refresh_token")),
        "{what}: the refresh token of an ended session: {}",
        reply.text
    );
    assert_eq!(reply.body["auth"], false, "{what}: {}", reply.text);
}

/// Asserts the access token of `pair` still works (without refreshing, which
/// would spend its refresh token).
async fn assert_alive(api: &impl Api, pair: &Pair, what: &str) {
    let reply = me(api, &pair.token).await;
    assert_eq!(reply.status, 200, "{what}: {}", reply.text);
}

/// The caller's live sessions.
async fn sessions(server: &TestServer, token: &str) -> Vec<Value> {
    let reply = server.get("/api/auth/sessions").token(token).send().await;
    reply.assert_ok(200);
    reply
        .body
        .as_array()
        .unwrap_or_else(|| panic!("a JSON array: {}", reply.text))
        .clone()
}

fn ids(list: &[Value]) -> Vec<String> {
    list.iter()
        .map(|s| s["id"].as_str().expect("id").to_string())
        .collect()
}

/// The ids of a list, sorted: for tests that are not about the order.
fn id_set(list: &[Value]) -> Vec<String> {
    let mut ids = ids(list);
    ids.sort();
    ids
}

fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

/// Whether the list marks `id` as the current session.
fn is_current(list: &[Value], id: &str) -> bool {
    let session = list
        .iter()
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("{id} in {list:?}"));
    session["current"].as_bool().expect("current is a boolean")
}

fn currents(list: &[Value]) -> Vec<bool> {
    list.iter()
        .map(|s| s["current"].as_bool().expect("current is a boolean"))
        .collect()
}

/// Polls `check` until it holds, failing after `within`.
async fn eventually(within: Duration, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(POLL).await;
    }
}

// ---------------------------------------------------------------------------
// The token pair and rotation.

store_test! {
/// Register, login and refresh answer the token pair; every access token
/// names its session, a new one for each sign-in, kept across refreshes.
async fn register_login_and_refresh_answer_token_pairs_naming_their_session() {
    let server = TestServer::start().await;
    let reply = server
        .post("/api/auth/register")
        .json(json!({"name": "Pair", "email": "pair@example.com", "password": PASSWORD}))
        .send()
        .await;
    let registered = Pair::of(&reply);
    assert_eq!(reply.body["expires_in"], TOKEN_TTL, "{}", reply.text);
    let logged_in = login_pair(&server, "pair@example.com").await;
    assert_ne!(registered.sid(), logged_in.sid(), "each sign-in is a session");
    assert_ne!(registered.refresh, logged_in.refresh);
    let refreshed = refreshed(&server, &logged_in.refresh).await;
    assert_eq!(refreshed.sid(), logged_in.sid());
    let list = sessions(&server, &registered.token).await;
    assert_eq!(id_set(&list), sorted(vec![logged_in.sid(), registered.sid()]));
}
}

store_test! {
/// Each refresh spends the presented token and answers its successor; every
/// access token issued along the chain stays valid.
async fn a_refresh_rotates_the_refresh_token_and_keeps_the_session() {
    let server = TestServer::start().await;
    let (_, first) = register_pair(&server, "Rota", "rota@example.com").await;
    let second = refreshed(&server, &first.refresh).await;
    assert_ne!(second.refresh, first.refresh, "rotated");
    assert_ne!(second.token, first.token, "a new access token");
    assert_eq!(second.sid(), first.sid(), "the same session");
    assert_alive(&server, &first, "the access token from before the refresh").await;
    assert_alive(&server, &second, "the refreshed access token").await;
    // A form body works like JSON, and the successor rotates in turn.
    let reply = server
        .post("/api/auth/refresh")
        .form(&[("refresh_token", &second.refresh)])
        .send()
        .await;
    let third = Pair::of(&reply);
    assert!(
        third.refresh != first.refresh && third.refresh != second.refresh,
        "rotated again"
    );
    assert_eq!(third.sid(), first.sid());
    assert_alive(&server, &third, "the second refresh's access token").await;
    assert_eq!(ids(&sessions(&server, &third.token).await), vec![first.sid()]);
}
}

store_test! {
/// Two tabs refreshing at once: the late one presents a spent token inside
/// the window and must get the same successor, not a second chain.
async fn a_spent_refresh_token_inside_the_window_gets_the_same_successor() {
    let server = TestServer::start_with(|s| s.auth.refresh_reuse_secs = 60).await;
    let (_, first) = register_pair(&server, "Tabs", "tabs@example.com").await;
    let second = refreshed(&server, &first.refresh).await;
    for attempt in 0..2 {
        let again = refreshed(&server, &first.refresh).await;
        assert_eq!(again.refresh, second.refresh, "attempt {attempt}: the same successor");
        assert_ne!(again.token, second.token, "attempt {attempt}: a fresh access token");
        assert_eq!(again.sid(), first.sid());
        assert_alive(&server, &again, "the access token answered in the window").await;
    }
    // The session lives on: its tokens work and the successor rotates.
    assert_alive(&server, &first, "the first access token").await;
    assert_alive(&server, &second, "the successor's access token").await;
    let third = refreshed(&server, &second.refresh).await;
    assert!(third.refresh != second.refresh && third.refresh != first.refresh);
    assert_alive(&server, &third, "the next link").await;
}
}

store_test! {
/// Signing in needs only the password, so a script holding it could start
/// sessions without end: a user keeps the newest
/// `MAX_SESSIONS_PER_USER`, and one more ends the oldest (its access and
/// refresh tokens with it), never a newer one.
async fn a_user_keeps_at_most_the_newest_sessions_and_the_oldest_ends() {
    use gatehouse::store::MAX_SESSIONS_PER_USER;
    let server = TestServer::start().await;
    let (_, oldest) = register_pair(&server, "Many", "many@example.com").await;
    let second = login_pair(&server, "many@example.com").await;
    let mut newest = second.clone();
    for _ in 2..MAX_SESSIONS_PER_USER {
        newest = login_pair(&server, "many@example.com").await;
    }
    assert_eq!(sessions(&server, &newest.token).await.len(), MAX_SESSIONS_PER_USER);
    assert_alive(&server, &oldest, "at the limit, nothing has ended").await;
    let one_more = login_pair(&server, "many@example.com").await;
    assert_ended(&server, &oldest, "the oldest session, past the limit").await;
    assert_alive(&server, &second, "the next oldest").await;
    assert_alive(&server, &one_more, "the new one").await;
    let listed = sessions(&server, &one_more.token).await;
    assert_eq!(listed.len(), MAX_SESSIONS_PER_USER);
    assert!(!ids(&listed).contains(&sid(&oldest.token)));
}
}

store_test! {
/// The window is each spent token's own (API.md: "within
/// `auth.refresh_reuse_secs` of its rotation"): a tab that slept through two
/// rotations by another tab, inside that window, is no thief. It gets the
/// session's current refresh token, and the session lives on.
async fn a_token_spent_two_rotations_ago_inside_its_window_gets_the_current_token() {
    let server = TestServer::start_with(|s| s.auth.refresh_reuse_secs = 60).await;
    let (_, first) = register_pair(&server, "Sleepy", "sleepy@example.com").await;
    let second = refreshed(&server, &first.refresh).await;
    let third = refreshed(&server, &second.refresh).await;
    let reply = refresh(&server, &first.refresh).await;
    assert_eq!(reply.status, 200, "spent seconds ago, inside its window: {}", reply.text);
    let again = Pair::of(&reply);
    assert_eq!(again.refresh, third.refresh, "the session's current refresh token");
    assert_alive(&server, &again, "the access token answered in the window").await;
    assert_alive(&server, &third, "the current pair").await;
    let fourth = refreshed(&server, &third.refresh).await;
    assert_alive(&server, &fourth, "the chain goes on").await;
}
}

store_test! {
/// The converse: a token whose own window has passed is reuse, even when a
/// later rotation of the chain has just opened a window of its own.
async fn a_token_past_its_own_window_is_reuse_even_after_a_fresh_rotation() {
    let server = TestServer::start_with(|s| s.auth.refresh_reuse_secs = 1).await;
    let (_, first) = register_pair(&server, "Stale", "stale@example.com").await;
    let second = refreshed(&server, &first.refresh).await;
    let spent_at = gatehouse::domain::unix_now();
    // Let the first token's window pass (times are whole seconds) without
    // presenting it, which would itself be reuse.
    eventually(EXPIRY_DEADLINE, "the first window passes", async || {
        gatehouse::domain::unix_now() > spent_at + 2
    })
    .await;
    let third = refreshed(&server, &second.refresh).await;
    assert_refresh_refused(&refresh(&server, &first.refresh).await);
    for pair in [&first, &second, &third] {
        assert_ended(&server, pair, "after reuse of a token past its window").await;
    }
}
}

store_test! {
/// A spent token presented after the window is a stolen one (or a thief
/// racing the owner): the whole session ends, and nothing else does.
async fn a_spent_refresh_token_after_the_window_ends_its_whole_session() {
    let server = TestServer::start_with(|s| s.auth.refresh_reuse_secs = 1).await;
    let (_, first) = register_pair(&server, "Victim", "victim@example.com").await;
    let other = login_pair(&server, "victim@example.com").await;
    let second = refreshed(&server, &first.refresh).await;
    let mut issued = vec![first.clone(), second.clone()];
    // Inside the window the spent token answers the successor; once the window
    // has passed, the same request is reuse.
    let deadline = Instant::now() + EXPIRY_DEADLINE;
    let refused = loop {
        let reply = refresh(&server, &first.refresh).await;
        if reply.status != 200 {
            break reply;
        }
        let again = Pair::of(&reply);
        assert_eq!(again.refresh, second.refresh, "inside the window");
        issued.push(again);
        assert!(Instant::now() < deadline, "the reuse window never closed");
        tokio::time::sleep(POLL).await;
    };
    assert_refresh_refused(&refused);
    for pair in &issued {
        assert_ended(&server, pair, "after reuse").await;
    }
    // The user's other session is untouched.
    assert_alive(&server, &other, "another session of the user").await;
    let other = refreshed(&server, &other.refresh).await;
    assert_eq!(ids(&sessions(&server, &other.token).await), vec![other.sid()]);
}
}

store_test! {
/// Rotation is one atomic step: five refreshes of one token at once all
/// succeed with one successor, and the session goes on from it.
async fn five_concurrent_refreshes_of_one_token_all_get_the_same_successor() {
    let server = TestServer::start().await;
    let (_, first) = register_pair(&server, "Racer", "racer@example.com").await;
    let handles: Vec<_> = (0..5)
        .map(|_| {
            let request = server
                .post("/api/auth/refresh")
                .json(json!({"refresh_token": first.refresh}));
            tokio::spawn(request.send())
        })
        .collect();
    let mut answers = Vec::new();
    for handle in handles {
        answers.push(Pair::of(&handle.await.expect("refresh task")));
    }
    let successor = answers[0].refresh.clone();
    assert_ne!(successor, first.refresh);
    for pair in &answers {
        assert_eq!(pair.refresh, successor, "one successor, one chain");
        assert_eq!(pair.sid(), first.sid());
        assert_alive(&server, pair, "an access token of the race").await;
    }
    let next = refreshed(&server, &successor).await;
    assert_ne!(next.refresh, successor, "the successor rotates");
    assert_alive(&server, &next, "after the race").await;
    assert_eq!(ids(&sessions(&server, &next.token).await), vec![first.sid()]);
}
}

store_test! {
/// A logout's 200 means the session has ended, whatever raced it: a refresh
/// (and token checks filling a cache) at the same moment must not revive it.
async fn a_refresh_racing_a_logout_never_revives_the_session() {
    let server = TestServer::start().await;
    let (_, _) = register_pair(&server, "Racing", "racing@example.com").await;
    for round in 0..10 {
        let pair = login_pair(&server, "racing@example.com").await;
        let refreshing = tokio::spawn(
            server
                .post("/api/auth/refresh")
                .json(json!({"refresh_token": pair.refresh}))
                .send(),
        );
        let checking = tokio::spawn(server.get("/api/auth/me").token(&pair.token).send());
        let logout = server.post("/api/auth/logout").token(&pair.token).send().await;
        logout.assert_ok(200);
        let refreshed = refreshing.await.expect("refresh task");
        checking.await.expect("me task");
        assert_ended(&server, &pair, &format!("round {round}")).await;
        if refreshed.status == 200 {
            let successor = Pair::of(&refreshed);
            assert_ended(&server, &successor, &format!("round {round}: the racing refresh")).await;
        } else {
            assert_refresh_refused(&refreshed);
        }
    }
}
}

/// Rotation is atomic across instances too: in every round, two refreshes of
/// one token on each of two instances all answer one successor.
#[tokio::test]
async fn two_instances_refreshing_one_token_at_once_keep_one_chain() {
    let Some((a, b, _dirs)) = two_instances(
        "two_instances_refreshing_one_token_at_once_keep_one_chain",
        |_| {},
    )
    .await
    else {
        return;
    };
    let (_, first) = register_pair(&a, "Shared", "shared@example.com").await;
    let mut current = first.clone();
    // Several rounds, so that the instances' rotations truly overlap in some.
    for round in 0..5 {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let server = if i % 2 == 0 { &a } else { &b };
                let request = server
                    .post("/api/auth/refresh")
                    .json(json!({"refresh_token": current.refresh}));
                tokio::spawn(request.send())
            })
            .collect();
        let mut answers = Vec::new();
        for handle in handles {
            answers.push(Pair::of(&handle.await.expect("refresh task")));
        }
        let successor = answers[0].refresh.clone();
        assert_ne!(successor, current.refresh, "round {round}: rotated");
        for pair in &answers {
            assert_eq!(pair.refresh, successor, "round {round}: one chain");
        }
        current = answers.swap_remove(0);
    }
    // The one chain goes on, on either instance, and it is still one session.
    assert_alive(&a, &current, "on A").await;
    assert_alive(&b, &current, "on B").await;
    let next = refreshed(&b, &current.refresh).await;
    assert_alive(&a, &next, "a token from B on A").await;
    assert_eq!(ids(&sessions(&a, &next.token).await), vec![first.sid()]);
}

/// The token check consults the shared store: a session ended on one
/// instance refuses its tokens at once on the other, which had just accepted
/// them.
#[tokio::test]
async fn a_session_ended_on_one_instance_is_refused_at_once_on_the_other() {
    let Some((a, b, _dirs)) = two_instances(
        "a_session_ended_on_one_instance_is_refused_at_once_on_the_other",
        |_| {},
    )
    .await
    else {
        return;
    };
    let (_, first) = register_pair(&a, "Roaming", "roaming@example.com").await;
    let second = login_pair(&a, "roaming@example.com").await;
    assert_alive(&a, &first, "before, on A").await;
    assert_alive(&b, &first, "before, on B").await;
    b.delete(&format!("/api/auth/sessions/{}", first.sid()))
        .token(&second.token)
        .send()
        .await
        .assert_ok(200);
    assert_ended(&a, &first, "revoked on B, checked on A").await;
    assert_alive(&a, &second, "the other session, on A").await;
    b.post("/api/auth/logout?scope=global")
        .token(&second.token)
        .send()
        .await
        .assert_ok(200);
    assert_ended(&a, &second, "logged out everywhere on B, checked on A").await;
}

// ---------------------------------------------------------------------------
// Logout.

store_test! {
/// The default scope is local: the token's own session ends, access and
/// refresh token both, and the user's other sessions live on.
async fn logout_ends_the_tokens_own_session_only() {
    let server = TestServer::start().await;
    let (_, [first, second, third]) = three_sessions(&server, "local@example.com").await;
    let reply = server
        .post("/api/auth/logout")
        .token(&second.token)
        .send()
        .await;
    reply.assert_ok(200);
    assert_eq!(reply.body, json!({"auth": false, "token": null}));
    assert_ended(&server, &second, "logged out").await;
    // `scope=local` said out loud, with GET, is the same.
    let reply = server
        .get("/api/auth/logout?scope=local")
        .bearer(&third.token)
        .send()
        .await;
    reply.assert_ok(200);
    assert_eq!(reply.body, json!({"auth": false, "token": null}));
    assert_ended(&server, &third, "logged out with scope=local").await;
    assert_alive(&server, &first, "the session not logged out").await;
    let first = refreshed(&server, &first.refresh).await;
    assert_eq!(ids(&sessions(&server, &first.token).await), vec![first.sid()]);
}
}

store_test! {
/// `scope=global` ends every session of the user, and only that user's.
async fn logout_with_scope_global_ends_every_session_of_the_user() {
    let server = TestServer::start().await;
    let (_, sessions_of_user) = three_sessions(&server, "global@example.com").await;
    let (_, bystander) = register_pair(&server, "Bystander", "bystander@example.com").await;
    let reply = server
        .post("/api/auth/logout?scope=global")
        .token(&sessions_of_user[1].token)
        .send()
        .await;
    reply.assert_ok(200);
    assert_eq!(reply.body, json!({"auth": false, "token": null}));
    for (i, pair) in sessions_of_user.iter().enumerate() {
        assert_ended(&server, pair, &format!("session {i} after a global logout")).await;
    }
    assert_alive(&server, &bystander, "another user").await;
    refreshed(&server, &bystander.refresh).await;
    // Signing in again starts afresh.
    let again = login_pair(&server, "global@example.com").await;
    assert_eq!(ids(&sessions(&server, &again.token).await), vec![again.sid()]);
}
}

store_test! {
/// `scope=others` ("sign out my other devices") ends every session but the
/// caller's.
async fn logout_with_scope_others_ends_every_session_but_the_callers() {
    let server = TestServer::start().await;
    let (_, [first, second, third]) = three_sessions(&server, "others@example.com").await;
    let (_, bystander) = register_pair(&server, "Bystander", "bystander@example.com").await;
    let reply = server
        .get("/api/auth/logout?scope=others")
        .token(&second.token)
        .send()
        .await;
    reply.assert_ok(200);
    assert_eq!(reply.body, json!({"auth": false, "token": null}));
    assert_ended(&server, &first, "an older session").await;
    assert_ended(&server, &third, "a newer session").await;
    assert_alive(&server, &second, "the caller's session").await;
    let list = sessions(&server, &second.token).await;
    assert_eq!((ids(&list), currents(&list)), (vec![second.sid()], vec![true]));
    refreshed(&server, &second.refresh).await;
    assert_alive(&server, &bystander, "another user").await;
}
}

store_test! {
/// A client whose access token has expired names its session by the refresh
/// token (JSON or form); an unknown or spent one changes nothing, still 200.
async fn logout_with_a_refresh_token_ends_its_session_without_an_access_token() {
    let server = TestServer::start().await;
    let (_, [first, second, third]) = three_sessions(&server, "body@example.com").await;
    let reply = server
        .post("/api/auth/logout")
        .json(json!({"refresh_token": second.refresh}))
        .send()
        .await;
    reply.assert_ok(200);
    assert_eq!(reply.body, json!({"auth": false, "token": null}));
    assert_ended(&server, &second, "logged out by its refresh token").await;
    server
        .post("/api/auth/logout")
        .form(&[("refresh_token", &third.refresh)])
        .send()
        .await
        .assert_ok(200);
    assert_ended(&server, &third, "logged out by its refresh token in a form").await;
    for body in [
        json!({"refresh_token": second.refresh}),
        json!({"refresh_token": "no-such-refresh-token-no-such-refresh-token"}),
    ] {
        let reply = server.post("/api/auth/logout").json(body).send().await;
        reply.assert_ok(200);
        assert_eq!(reply.body, json!({"auth": false, "token": null}));
    }
    assert_alive(&server, &first, "the session not named").await;
    let first = refreshed(&server, &first.refresh).await;
    assert_eq!(ids(&sessions(&server, &first.token).await), vec![first.sid()]);
}
}

store_test! {
/// A scope the server does not know is refused rather than guessed at (a
/// typo must not leave sessions open silently); no token is still a 200.
async fn logout_with_an_unknown_scope_is_400_and_ends_nothing() {
    let server = TestServer::start().await;
    let (_, pair) = register_pair(&server, "Typo", "typo@example.com").await;
    for path in [
        "/api/auth/logout?scope=everywhere",
        "/api/auth/logout?scope=all",
    ] {
        server
            .post(path)
            .token(&pair.token)
            .send()
            .await
            .assert_error(400, "invalid_input");
        server
            .get(path)
            .token(&pair.token)
            .send()
            .await
            .assert_error(400, "invalid_input");
    }
    assert_alive(&server, &pair, "after refused logouts").await;
    for reply in [
        server.post("/api/auth/logout?scope=global").send().await,
        server.get("/api/auth/logout?scope=others").send().await,
    ] {
        reply.assert_ok(200);
        assert_eq!(reply.body, json!({"auth": false, "token": null}));
    }
    assert_alive(&server, &pair, "after logouts without a token").await;
    refreshed(&server, &pair.refresh).await;
}
}

// ---------------------------------------------------------------------------
// Listing sessions.

store_test! {
/// The list shows the caller's live sessions newest first, each with the
/// client it was started from, and marks the one the request's token
/// belongs to.
async fn the_session_list_is_newest_first_marks_the_current_one_and_names_the_client() {
    let server = TestServer::start().await;
    let email = "lister@example.com";
    // Without `server.client_ip_header`, a client's X-Forwarded-For is not
    // believed.
    let reply = server
        .post("/api/auth/register")
        .header("user-agent", "agent-one/1.0")
        .header("x-forwarded-for", "203.0.113.9")
        .json(json!({"name": "Lister", "email": email, "password": PASSWORD}))
        .send()
        .await;
    let one = Pair::of(&reply);
    let login_as = |agent: String| {
        server
            .post("/api/auth/login")
            .header("user-agent", &agent)
            .json(json!({"email": email, "password": PASSWORD}))
            .send()
    };
    let two = Pair::of(&login_as("agent-two/2.0".into()).await);
    let long_agent = "L".repeat(300);
    let three = Pair::of(&login_as(long_agent.clone()).await);
    let (_, stranger) = register_pair(&server, "Stranger", "stranger@example.com").await;

    let list = sessions(&server, &two.token).await;
    assert_eq!(ids(&list), vec![three.sid(), two.sid(), one.sid()], "newest first");
    assert_eq!(currents(&list), vec![false, true, false]);
    let now = gatehouse::domain::unix_now();
    for session in &list {
        let keys: std::collections::BTreeSet<&str> =
            session.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            ["created_at", "current", "expires_at", "id", "ip", "last_used_at", "user_agent"]
                .into_iter()
                .collect(),
            "{session}"
        );
        let created = time(&session["created_at"]);
        assert!(created <= now && now - created < 60, "{session}");
        assert_eq!(session["last_used_at"], session["created_at"], "no refresh yet: {session}");
        assert_eq!(time(&session["expires_at"]) - created, SESSION_TTL, "{session}");
        assert_eq!(session["ip"], "127.0.0.1", "{session}");
    }
    assert_eq!(list[2]["user_agent"], "agent-one/1.0");
    assert_eq!(list[1]["user_agent"], "agent-two/2.0");
    let kept = list[0]["user_agent"].as_str().expect("a user agent");
    assert!(
        !kept.is_empty() && kept.chars().count() <= 256 && long_agent.starts_with(kept),
        "at most 256 characters of the header: {} characters",
        kept.chars().count()
    );
    let text = serde_json::to_string(&list).unwrap();
    for pair in [&one, &two, &three] {
        assert!(!text.contains(&pair.refresh), "no refresh token in the list");
    }
    // `current` follows the token used; another user sees only their own.
    assert_eq!(currents(&sessions(&server, &three.token).await), vec![true, false, false]);
    let theirs = sessions(&server, &stranger.token).await;
    assert_eq!((ids(&theirs), currents(&theirs)), (vec![stranger.sid()], vec![true]));
    server
        .get("/api/auth/sessions")
        .send()
        .await
        .assert_error(401, "missing_token");
}
}

store_test! {
/// Behind a trusted proxy the session records the address the throttle
/// uses: the header's last entry, without a port; the TCP peer without it.
async fn the_session_list_takes_the_address_from_a_trusted_proxy_header() {
    let server = TestServer::start_with(|s| {
        s.server.client_ip_header = Some("x-forwarded-for".into());
    })
    .await;
    let email = "proxied@example.com";
    let reply = server
        .post("/api/auth/register")
        .header("x-forwarded-for", "10.0.0.1, 203.0.113.7")
        .json(json!({"name": "Proxied", "email": email, "password": PASSWORD}))
        .send()
        .await;
    let first = Pair::of(&reply);
    let reply = server
        .post("/api/auth/login")
        .header("x-forwarded-for", "198.51.100.9:4711")
        .json(json!({"email": email, "password": PASSWORD}))
        .send()
        .await;
    let second = Pair::of(&reply);
    let third = login_pair(&server, email).await;
    let list = sessions(&server, &first.token).await;
    let address = |pair: &Pair| {
        let session = list.iter().find(|s| s["id"] == pair.sid().as_str());
        session.expect("listed")["ip"].clone()
    };
    assert_eq!(address(&first), "203.0.113.7", "the last entry");
    assert_eq!(address(&second), "198.51.100.9", "without its port");
    assert_eq!(address(&third), "127.0.0.1", "no header: the TCP peer");
}
}

store_test! {
/// `last_used_at` records the last refresh; `created_at` and the absolute
/// `expires_at` do not move.
async fn a_refresh_moves_last_used_at_but_not_created_at_or_expires_at() {
    let server = TestServer::start().await;
    let (_, mut pair) = register_pair(&server, "Used", "used@example.com").await;
    let before = sessions(&server, &pair.token).await.remove(0);
    // Times are whole seconds: refresh until one lands in a later second.
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        pair = refreshed(&server, &pair.refresh).await;
        let list = sessions(&server, &pair.token).await;
        assert_eq!(list.len(), 1, "{list:?}");
        let session = list.into_iter().next().unwrap();
        if session["last_used_at"] != before["last_used_at"] {
            break session;
        }
        assert!(Instant::now() < deadline, "last_used_at never moved: {session}");
        tokio::time::sleep(POLL).await;
    };
    assert!(time(&after["last_used_at"]) > time(&before["created_at"]), "{after}");
    assert_eq!(after["id"], before["id"]);
    assert_eq!(after["created_at"], before["created_at"]);
    assert_eq!(after["expires_at"], before["expires_at"], "an absolute bound");
    assert_eq!(after["current"], true);
}
}

// ---------------------------------------------------------------------------
// Ending sessions by id and by user.

store_test! {
/// A user ends one of their sessions by id; any id that is not a live
/// session of the caller, an admin's call included, is 404 and ends nothing.
async fn a_user_ends_their_own_sessions_by_id_and_no_one_elses() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    let (_, mine) = register_pair(&server, "Owner", "owner@example.com").await;
    let spare = login_pair(&server, "owner@example.com").await;
    let (_, theirs) = register_pair(&server, "Other", "other@example.com").await;
    let path = |id: &str| format!("/api/auth/sessions/{id}");

    let reply = server.delete(&path(&spare.sid())).token(&mine.token).send().await;
    reply.assert_ok(200);
    assert_eq!(reply.body, json!({"message": "Session revoked."}));
    assert_ended(&server, &spare, "revoked by id").await;
    assert_alive(&server, &mine, "the caller's session").await;

    let unknown = uuid::Uuid::new_v4().to_string();
    let cases = [
        (&mine.token, spare.sid(), "an ended session"),
        (&mine.token, theirs.sid(), "another user's session"),
        (&admin.token, mine.sid(), "an admin, on another user's session"),
        (&mine.token, unknown, "an unknown id"),
        (&mine.token, "not-a-session".to_string(), "garbage"),
    ];
    for (token, id, case) in cases {
        let reply = server.delete(&path(&id)).token(token).send().await;
        assert_eq!(reply.status, 404, "{case}: {}", reply.text);
        reply.assert_error(404, "not_found");
    }
    assert_alive(&server, &theirs, "the other user's session").await;
    assert_alive(&server, &mine, "the caller's session").await;
    server
        .delete(&path(&mine.sid()))
        .send()
        .await
        .assert_error(401, "missing_token");
    // One's own current session, too.
    server
        .delete(&path(&mine.sid()))
        .token(&mine.token)
        .send()
        .await
        .assert_ok(200);
    assert_ended(&server, &mine, "the caller's own session").await;
    refreshed(&server, &theirs.refresh).await;
}
}

store_test! {
/// `/api/users/{id}/sessions` is for the user and admins: another user gets
/// 403 for any id and ends nothing; DELETE counts and ends them all.
async fn user_sessions_are_listed_and_ended_by_that_user_or_an_admin_only() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    let (id, first) = register_pair(&server, "Owner", "owner@example.com").await;
    let second = login_pair(&server, "owner@example.com").await;
    let (_, nosy) = register_pair(&server, "Nosy", "nosy@example.com").await;
    let path = format!("/api/users/{id}/sessions");
    let unknown = format!("/api/users/{}/sessions", uuid::Uuid::new_v4());

    let own = server.get(&path).token(&first.token).send().await;
    own.assert_ok(200);
    let own = own.body.as_array().expect("an array").clone();
    assert_eq!(id_set(&own), sorted(vec![second.sid(), first.sid()]));
    assert!(is_current(&own, &first.sid()) && !is_current(&own, &second.sid()));
    let seen = server.get(&path).token(&admin.token).send().await;
    seen.assert_ok(200);
    let seen = seen.body.as_array().expect("an array").clone();
    assert_eq!(id_set(&seen), id_set(&own));
    assert_eq!(currents(&seen), vec![false, false], "not the admin's sessions");

    for target in [&path, &unknown] {
        for method in [Method::GET, Method::DELETE] {
            server
                .request(method.clone(), target)
                .token(&nosy.token)
                .send()
                .await
                .assert_error(403, "forbidden");
            server
                .request(method.clone(), target)
                .send()
                .await
                .assert_error(401, "missing_token");
        }
    }
    server.get(&unknown).token(&admin.token).send().await.assert_error(404, "not_found");
    server.delete(&unknown).token(&admin.token).send().await.assert_error(404, "not_found");
    assert_alive(&server, &first, "after refused calls").await;
    assert_alive(&server, &second, "after refused calls").await;

    let reply = server.delete(&path).token(&admin.token).send().await;
    reply.assert_ok(200);
    assert_eq!(reply.body, json!({"revoked": 2}));
    assert_ended(&server, &first, "ended by an admin").await;
    assert_ended(&server, &second, "ended by an admin").await;
    let again = server.delete(&path).token(&admin.token).send().await;
    again.assert_ok(200);
    assert_eq!(again.body, json!({"revoked": 0}));
    assert_eq!(
        server.get(&path).token(&admin.token).send().await.body,
        json!([])
    );
    me(&server, &admin.token).await.assert_ok(200);
    assert_alive(&server, &nosy, "another user").await;

    // The user ends all their own, the calling session included.
    let third = login_pair(&server, "owner@example.com").await;
    let fourth = login_pair(&server, "owner@example.com").await;
    let reply = server.delete(&path).token(&third.token).send().await;
    reply.assert_ok(200);
    assert_eq!(reply.body, json!({"revoked": 2}));
    assert_ended(&server, &third, "the caller's own").await;
    assert_ended(&server, &fourth, "ended by the user").await;
}
}

// ---------------------------------------------------------------------------
// Password change.

store_test! {
/// A password change is the way to lock out whoever holds a stolen token:
/// every earlier access and refresh token dies, spent ones in their window
/// too, and the answer is a pair of a new session.
async fn a_password_change_ends_every_earlier_session_and_answers_a_new_one() {
    let server = TestServer::start().await;
    let (id, first) = register_pair(&server, "Changer", "changer@example.com").await;
    let second = login_pair(&server, "changer@example.com").await;
    let rotated = refreshed(&server, &second.refresh).await;
    let (_, bystander) = register_pair(&server, "Bystander", "bystander@example.com").await;
    let reply = server
        .post("/api/auth/password")
        .token(&first.token)
        .json(json!({"current_password": PASSWORD, "new_password": NEW_PASSWORD}))
        .send()
        .await;
    let fresh = Pair::of(&reply);
    assert!(fresh.sid() != first.sid() && fresh.sid() != second.sid(), "a new session");
    for (pair, what) in [(&first, "the caller's"), (&second, "a spent pair"), (&rotated, "a rotated pair")] {
        assert_ended(&server, pair, what).await;
    }
    let me_now = me(&server, &fresh.token).await;
    me_now.assert_ok(200);
    assert_eq!(me_now.body["_id"], id.as_str());
    assert_eq!(ids(&sessions(&server, &fresh.token).await), vec![fresh.sid()]);
    let next = refreshed(&server, &fresh.refresh).await;
    assert_alive(&server, &next, "the new session refreshed").await;
    server
        .post("/api/auth/login")
        .json(json!({"email": "changer@example.com", "password": PASSWORD}))
        .send()
        .await
        .assert_error(401, "invalid_credentials");
    server.login("changer@example.com", NEW_PASSWORD).await;
    assert_alive(&server, &bystander, "another user").await;
}
}

store_test! {
/// A wrong current password is a guess at the password: 403, counted with
/// failed logins of that email and address, and throttled like them.
async fn a_wrong_current_password_is_403_and_repeated_ones_are_throttled_like_logins() {
    let server = TestServer::start_with(|s| s.limits.login_failures_per_account = 3).await;
    let (_, pair) = register_pair(&server, "Guessed", "guessed@example.com").await;
    let change = |current: &str| {
        server
            .post("/api/auth/password")
            .token(&pair.token)
            .json(json!({"current_password": current, "new_password": NEW_PASSWORD}))
            .send()
    };
    let login = |password: &str| {
        server
            .post("/api/auth/login")
            .json(json!({"email": "guessed@example.com", "password": password}))
            .send()
    };
    change("wrong password").await.assert_error(403, "wrong_password");
    login("wrong password").await.assert_error(401, "invalid_credentials");
    change("wrong password").await.assert_error(403, "wrong_password");
    // A wrong guess ends nothing.
    assert_alive(&server, &pair, "after wrong guesses").await;
    // Three failures, mixed: even the right password is refused now.
    for reply in [change(PASSWORD).await, login(PASSWORD).await] {
        reply.assert_error(429, "too_many_attempts");
        let retry = reply.header("retry-after").expect("Retry-After");
        assert!(retry.parse::<u64>().unwrap() >= 1, "{retry}");
    }
    assert_alive(&server, &pair, "after throttled attempts").await;
    refreshed(&server, &pair.refresh).await;
}
}

store_test! {
/// A new password must follow the password rule; a refused change changes
/// nothing.
async fn a_password_change_refuses_bad_input_and_changes_nothing() {
    let server = TestServer::start().await;
    let (_, pair) = register_pair(&server, "Careful", "careful@example.com").await;
    let cases = [
        json!({"current_password": PASSWORD, "new_password": "short"}),
        json!({"current_password": PASSWORD, "new_password": "p".repeat(73)}),
        json!({"current_password": PASSWORD}),
        json!({"new_password": NEW_PASSWORD}),
        json!({"current_password": PASSWORD, "new_password": 12345678}),
        json!({"current_password": 5, "new_password": NEW_PASSWORD}),
    ];
    for body in cases {
        let reply = server
            .post("/api/auth/password")
            .token(&pair.token)
            .json(body.clone())
            .send()
            .await;
        assert_eq!(reply.status, 400, "{body}: {}", reply.text);
        reply.assert_error(400, "invalid_input");
        assert!(reply.body["message"].as_str().unwrap().contains("password"), "{body}: {}", reply.text);
    }
    server
        .post("/api/auth/password")
        .json(json!({"current_password": PASSWORD, "new_password": NEW_PASSWORD}))
        .send()
        .await
        .assert_error(401, "missing_token");
    assert_alive(&server, &pair, "after refused changes").await;
    refreshed(&server, &pair.refresh).await;
    server.login("careful@example.com", PASSWORD).await;
}
}

store_test! {
/// A password set through `PUT`/`PATCH /api/users/{id}` ends the user's
/// sessions as `POST /api/auth/password` does: refresh tokens included (the
/// `current_password` rule itself is tested in `users`).
async fn a_password_set_through_the_user_routes_ends_every_session_of_that_user() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    let (id, first) = register_pair(&server, "Patcher", "patcher@example.com").await;
    let second = login_pair(&server, "patcher@example.com").await;
    let rotated = refreshed(&server, &second.refresh).await;
    server
        .patch(&format!("/api/users/{id}"))
        .token(&first.token)
        .json(json!({"password": NEW_PASSWORD, "current_password": PASSWORD}))
        .send()
        .await
        .assert_ok(200);
    for (pair, what) in [(&first, "the caller's"), (&second, "a spent pair"), (&rotated, "a rotated pair")] {
        assert_ended(&server, pair, &format!("after PATCH: {what}")).await;
    }
    // An admin setting the password ends that user's sessions, not the admin's.
    let again = Pair::from_body(&server.login_pair("patcher@example.com", NEW_PASSWORD).await);
    server
        .request(Method::PUT, &format!("/api/users/{id}"))
        .token(&admin.token)
        .json(json!({"password": PASSWORD}))
        .send()
        .await
        .assert_ok(200);
    assert_ended(&server, &again, "after an admin's PUT").await;
    me(&server, &admin.token).await.assert_ok(200);
    login_pair(&server, "patcher@example.com").await;
}
}

store_test! {
/// Sessions that can no longer matter leave the store (issue 11, item 6):
/// those from before a password change at once, idle ones once idle; live
/// ones stay. The server runs this purge at start and periodically.
async fn sessions_that_can_no_longer_matter_are_purged_and_live_ones_kept() {
    let server = TestServer::start().await;
    let store = &server.app.store;
    let policy = &server.app.sessions;
    let (id, first) = register_pair(&server, "Purged", "purged@example.com").await;
    login_pair(&server, "purged@example.com").await;
    let (other_id, other) = register_pair(&server, "Kept", "kept@example.com").await;
    let reply = server
        .post("/api/auth/password")
        .token(&first.token)
        .json(json!({"current_password": PASSWORD, "new_password": NEW_PASSWORD}))
        .send()
        .await;
    let fresh = Pair::of(&reply);
    let stored = |user: String| async move {
        let sessions = store.sessions_of(&user).await.expect("sessions read");
        sorted(sessions.into_iter().map(|s| s.id).collect())
    };
    let now = gatehouse::domain::unix_now();
    store.purge_expired(now, policy).await.expect("purge");
    assert_eq!(stored(id.clone()).await, vec![fresh.sid()], "ended by the password change");
    assert_eq!(stored(other_id.clone()).await, vec![other.sid()], "alive");
    assert_alive(&server, &fresh, "after a purge").await;
    assert_alive(&server, &other, "after a purge").await;
    // Past the idle time, nothing is left.
    let idle = server.app.settings.auth.session_idle_secs;
    store.purge_expired(now + idle + 1, policy).await.expect("purge");
    assert_eq!(stored(id).await, Vec::<String>::new());
    assert_eq!(stored(other_id).await, Vec::<String>::new());
}
}

// ---------------------------------------------------------------------------
// Expiry and deletion.

store_test! {
/// `session_ttl_secs` bounds a session however often it is refreshed, and
/// its end kills its access tokens at once, not when they expire.
async fn a_session_ends_at_its_absolute_expiry_however_often_it_is_refreshed() {
    let server = TestServer::start_with(|s| {
        s.auth.session_ttl_secs = 3;
        s.auth.session_idle_secs = 2;
        s.auth.refresh_reuse_secs = 1;
    })
    .await;
    let started = Instant::now();
    let (_, first) = register_pair(&server, "Mortal", "mortal@example.com").await;
    let mut issued = vec![first.clone()];
    // Refreshing often keeps the session from idling: only the absolute
    // bound can end it.
    let refused = loop {
        let reply = refresh(&server, &issued.last().unwrap().refresh).await;
        if reply.status != 200 {
            break reply;
        }
        issued.push(Pair::of(&reply));
        assert!(started.elapsed() < EXPIRY_DEADLINE, "the session outlived session_ttl_secs");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_refresh_refused(&refused);
    assert!(issued.len() > 2, "the session lived until it expired: {} pairs", issued.len());
    assert!(started.elapsed() >= Duration::from_secs(1), "{:?}", started.elapsed());
    for pair in &issued {
        assert_ended(&server, pair, "after the absolute expiry").await;
    }
}
}

store_test! {
/// `session_idle_secs` ends a session nobody refreshes; refreshing keeps
/// one alive past that time from its creation, until it is left alone too.
async fn an_idle_session_ends_and_a_refresh_keeps_one_alive() {
    let server = TestServer::start_with(|s| {
        s.auth.session_idle_secs = 2;
        s.auth.refresh_reuse_secs = 1;
    })
    .await;
    let (_, kept) = register_pair(&server, "Idler", "idler@example.com").await;
    let idle = login_pair(&server, "idler@example.com").await;
    let started = Instant::now();
    let mut latest = kept.clone();
    // Refresh one session while the other idles (the token check is not a
    // use: only a refresh is).
    loop {
        latest = refreshed(&server, &latest.refresh).await;
        if me(&server, &idle.token).await.status == 401 {
            break;
        }
        assert!(started.elapsed() < EXPIRY_DEADLINE, "the idle session never ended");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(started.elapsed() >= Duration::from_secs(1), "{:?}", started.elapsed());
    assert_ended(&server, &idle, "idle").await;
    // The refreshed session, as old as the idle one, lives on.
    assert_alive(&server, &kept, "the first access token of the refreshed session").await;
    latest = refreshed(&server, &latest.refresh).await;
    // Left alone, it idles out too: its access tokens die without any refresh
    // attempt.
    eventually(EXPIRY_DEADLINE, "the refreshed session idles out once left alone", async || {
        me(&server, &latest.token).await.status == 401
    })
    .await;
    assert_ended(&server, &latest, "idle at last").await;
    assert_ended(&server, &kept, "idle at last").await;
}
}

store_test! {
/// A deleted user's refresh tokens die with it, and a new account on the
/// freed email does not inherit them.
async fn deleting_a_user_ends_its_refresh_tokens() {
    let server = TestServer::start().await;
    let (id, first) = register_pair(&server, "Leaving", "leaving@example.com").await;
    let second = refreshed(&server, &first.refresh).await;
    let (_, stayer) = register_pair(&server, "Staying", "staying@example.com").await;
    server
        .delete(&format!("/api/users/{id}"))
        .token(&second.token)
        .send()
        .await
        .assert_ok(200);
    assert_refresh_refused(&refresh(&server, &second.refresh).await);
    assert_refresh_refused(&refresh(&server, &first.refresh).await);
    let (_, newcomer) = register_pair(&server, "Leaving", "leaving@example.com").await;
    assert_refresh_refused(&refresh(&server, &second.refresh).await);
    assert_ended(&server, &second, "of the deleted user").await;
    assert_alive(&server, &newcomer, "the new account").await;
    refreshed(&server, &stayer.refresh).await;
}
}

// ---------------------------------------------------------------------------
// Bad input, old tokens.

store_test! {
/// Whatever a client sends as a refresh token: a missing, empty or
/// non-string one is 400, anything else that is not a live token 401, never
/// 500, and none of it touches the real session.
async fn bad_refresh_tokens_are_400_or_401_and_never_500() {
    let server = TestServer::start().await;
    let (_, pair) = register_pair(&server, "Fuzzy", "fuzzy@example.com").await;
    // One character changed in the middle (the last one may carry only
    // padding bits in base64url).
    let middle = pair.refresh.len() / 2;
    let swapped = if &pair.refresh[middle..=middle] == "A" { "B" } else { "A" };
    let mangled = format!(
        "{}{swapped}{}",
        &pair.refresh[..middle],
        &pair.refresh[middle + 1..]
    );
    let invalid_input = [
        json!({}),
        json!({"refresh_token": ""}),
        json!({"refresh_token": 5}),
        json!({"refresh_token": null}),
        json!({"refresh_token": true}),
        json!({"refresh_token": {"token": pair.refresh}}),
        json!({"refresh_token": [pair.refresh]}),
        json!({"token": pair.refresh}),
    ];
    for body in invalid_input {
        let reply = server.post("/api/auth/refresh").json(body.clone()).send().await;
        assert_eq!(reply.status, 400, "{body}: {}", reply.text);
        reply.assert_error(400, "invalid_input");
    }
    for form in [vec![], vec![("refresh_token", "")]] {
        let reply = server.post("/api/auth/refresh").form(&form).send().await;
        assert_eq!(reply.status, 400, "form {form:?}: {}", reply.text);
        reply.assert_error(400, "invalid_input");
    }
    let invalid_token = [
        ("garbage", "garbage".to_string()),
        ("43 letters", "A".repeat(43)),
        ("10 KB", "A".repeat(10 * 1024)),
        ("a character changed", mangled),
        ("the access token", pair.token.clone()),
        ("non-ASCII", "é".repeat(43)),
        ("a NUL inside", format!("{}\0", pair.refresh)),
        ("a prefix", pair.refresh[..pair.refresh.len() - 1].to_string()),
    ];
    for (case, token) in &invalid_token {
        let reply = refresh(&server, token).await;
        assert_eq!(reply.status, 401, "{case}: {}", reply.text);
        assert_refresh_refused(&reply);
    }
    let reply = server
        .post("/api/auth/refresh")
        .form(&[("refresh_token", "garbage")])
        .send()
        .await;
    assert_refresh_refused(&reply);
    server
        .post("/api/auth/refresh")
        .raw("application/json", b"{\"refresh_token\": ".to_vec())
        .send()
        .await
        .assert_error(400, "invalid_body");
    assert_alive(&server, &pair, "after the bad refreshes").await;
    refreshed(&server, &pair.refresh).await;
}
}

store_test! {
/// Tokens issued before sessions existed carry no `sid` and no `kid`: they
/// keep their old behaviour (valid until logout, password change or expiry).
async fn tokens_from_before_sessions_keep_working_until_logged_out() {
    let server = TestServer::start().await;
    let (id, pair) = register_pair(&server, "Veteran", "veteran@example.com").await;
    let now = gatehouse::domain::unix_now();
    let old = |jti: &str| {
        sign(
            &json!({"sub": id, "id": id, "iat": now, "exp": now + 3600,
                    "jti": jti, "iss": "gatehouse", "pwv": 0}),
            SECRET,
        )
    };
    let (one, two) = (old("0123456789abcdef0001"), old("0123456789abcdef0002"));
    for token in [&one, &two] {
        let reply = me(&server, token).await;
        reply.assert_ok(200);
        assert_eq!(reply.body["_id"], id.as_str());
    }
    server
        .post("/api/auth/logout")
        .token(&one)
        .send()
        .await
        .assert_ok(200);
    me(&server, &one).await.assert_error(401, "invalid_token");
    me(&server, &two).await.assert_ok(200);
    assert_alive(&server, &pair, "the user's session").await;
    // A password change ends them too.
    let reply = server
        .post("/api/auth/password")
        .token(&pair.token)
        .json(json!({"current_password": PASSWORD, "new_password": NEW_PASSWORD}))
        .send()
        .await;
    Pair::of(&reply);
    me(&server, &two).await.assert_error(401, "invalid_token");
}
}

// ---------------------------------------------------------------------------
// Durability and what the store keeps.

/// The binary's environment for the test's store, with a reuse window long
/// enough to outlast a restart.
async fn crash_env() -> Vec<(String, String)> {
    let mut env = vec![(
        "GATEHOUSE_AUTH__REFRESH_REUSE_SECS".to_string(),
        "120".to_string(),
    )];
    if backend() == Backend::Postgres {
        env.push(("GATEHOUSE_STORE__URL".into(), fresh_schema_url().await));
        env.push((
            "GATEHOUSE_AUTH__SECRET".into(),
            String::from_utf8(SECRET.to_vec()).unwrap(),
        ));
    }
    env
}

fn env_refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

async fn binary_pair(binary: &Binary, path: &str, body: Value) -> Pair {
    Pair::of(&binary.request(Method::POST, path).json(body).send().await)
}

store_test! {
/// A 2xx refresh is on disk: after `kill -9` right after it, the successor
/// is the live token, and the spent one starts no second chain.
async fn a_refresh_acknowledged_right_before_kill_9_survives_it() {
    let dir = tempfile::tempdir().unwrap();
    let env = crash_env().await;
    let mut first = Binary::start(dir.path(), &env_refs(&env));
    let registered = binary_pair(
        &first,
        "/api/auth/register",
        json!({"name": "Crash", "email": "crash@example.com", "password": PASSWORD}),
    )
    .await;
    let rotated = refreshed(&first, &registered.refresh).await;
    first.kill9();

    let second = Binary::start(dir.path(), &env_refs(&env));
    // Had the rotation been lost, the successor would be unknown.
    let next = refreshed(&second, &rotated.refresh).await;
    assert!(next.refresh != rotated.refresh && next.refresh != registered.refresh);
    assert_eq!(next.sid(), registered.sid());
    assert_alive(&second, &rotated, "the access token answered before the crash").await;
    assert_alive(&second, &next, "after the restart").await;
    // The spent token is spent: inside its window it answers the chain's
    // token, after it, it is reuse; never a new chain.
    let reply = refresh(&second, &registered.refresh).await;
    if reply.status == 200 {
        let again = Pair::of(&reply);
        assert!(
            again.refresh == rotated.refresh || again.refresh == next.refresh,
            "a spent token forked the chain"
        );
    } else {
        assert_refresh_refused(&reply);
    }
}
}

store_test! {
/// A 2xx logout is on disk: after `kill -9` right after it, the sessions it
/// ended stay ended, by access token and by refresh token alike.
async fn a_logout_acknowledged_right_before_kill_9_survives_it() {
    let dir = tempfile::tempdir().unwrap();
    let env = crash_env().await;
    let mut first = Binary::start(dir.path(), &env_refs(&env));
    let kept = binary_pair(
        &first,
        "/api/auth/register",
        json!({"name": "Crash", "email": "crash@example.com", "password": PASSWORD}),
    )
    .await;
    let login = json!({"email": "crash@example.com", "password": PASSWORD});
    let by_token = binary_pair(&first, "/api/auth/login", login.clone()).await;
    let by_refresh = binary_pair(&first, "/api/auth/login", login).await;
    let (one, two) = tokio::join!(
        first
            .request(Method::POST, "/api/auth/logout")
            .token(&by_token.token)
            .send(),
        first
            .request(Method::POST, "/api/auth/logout")
            .json(json!({"refresh_token": by_refresh.refresh}))
            .send(),
    );
    first.kill9();
    one.assert_ok(200);
    two.assert_ok(200);

    let second = Binary::start(dir.path(), &env_refs(&env));
    assert_ended(&second, &by_token, "logged out by token before kill -9").await;
    assert_ended(&second, &by_refresh, "logged out by refresh token before kill -9").await;
    // The session nobody ended still works, so the 401s above are the logouts.
    assert_alive(&second, &kept, "the session not logged out").await;
    refreshed(&second, &kept.refresh).await;
}
}

store_test! {
/// The store keeps only hashes of refresh tokens: a copy of the data dir or
/// of the database cannot be replayed. Every kind of issued token is looked
/// for, in every file and every row.
async fn no_file_or_column_of_the_store_holds_a_refresh_token() {
    let dir = tempfile::tempdir().unwrap();
    let mut store_url = None;
    let server = TestServer::start_with(|s| {
        s.data_dir = dir.path().to_path_buf();
        store_url = s.store.url.as_ref().map(|url| url.expose().to_string());
    })
    .await;
    let email = "stored@example.com";
    let (_, registered) = register_pair(&server, "Stored", email).await;
    let logged_in = login_pair(&server, email).await;
    let rotated = refreshed(&server, &registered.refresh).await;
    let again = refreshed(&server, &registered.refresh).await;
    let rotated_twice = refreshed(&server, &rotated.refresh).await;
    server
        .post("/api/auth/logout")
        .json(json!({"refresh_token": logged_in.refresh}))
        .send()
        .await
        .assert_ok(200);
    let reply = server
        .post("/api/auth/password")
        .token(&rotated_twice.token)
        .json(json!({"current_password": PASSWORD, "new_password": NEW_PASSWORD}))
        .send()
        .await;
    let changed = Pair::of(&reply);
    let last = refreshed(&server, &changed.refresh).await;
    let issued: Vec<Vec<u8>> = [registered, logged_in, rotated, again, rotated_twice, changed, last]
        .iter()
        .flat_map(|pair| needles(&pair.refresh))
        .collect();
    // Every answer above was a 2xx, so every write is on disk already; the
    // store is searched again once the server has stopped.
    let url = store_url.as_deref();
    assert_no_refresh_token_stored(dir.path(), url, &issued, email, "while serving").await;
    server.stop().await.expect("graceful stop");
    assert_no_refresh_token_stored(dir.path(), url, &issued, email, "after a stop").await;
}
}

async fn assert_no_refresh_token_stored(
    dir: &std::path::Path,
    store_url: Option<&str>,
    issued: &[Vec<u8>],
    email: &str,
    moment: &str,
) {
    let (files, marked) = files_holding(dir, issued, email.as_bytes());
    assert!(
        files.is_empty(),
        "{moment}: files holding a refresh token: {files:?}"
    );
    match store_url {
        None => assert!(
            marked,
            "{moment}: the search found the user's email in the data dir"
        ),
        Some(url) => {
            let (rows, marked) = rows_holding(url, issued, email.as_bytes()).await;
            assert!(
                rows.is_empty(),
                "{moment}: rows holding a refresh token: {rows:#?}"
            );
            assert!(
                marked,
                "{moment}: the search found the user's email in the database"
            );
        }
    }
}
