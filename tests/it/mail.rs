//! Account recovery and email verification by mail, through a real SMTP
//! sink (`mailsink`): the same answer for known and unknown addresses,
//! links that work once, for their address and (resets) their password,
//! superseded by newer ones, resend suppression and per-address throttling,
//! verification on registration and email change, `require_verified_email`,
//! tokens hashed at rest, and a mail server that is slow or refuses, which
//! requests never wait for. Both stores.

use std::time::{Duration, Instant};

use gatehouse::config::Secret;
use gatehouse::Settings;
use serde_json::json;

use crate::mailsink::{MailSink, Mode};
use crate::support::*;

const NEW_PASSWORD: &str = "a brand new password";
const RESET: &str = "/reset-password#token=";
const VERIFY: &str = "/verify-email#token=";

/// A server sending mail to `sink`, with `configure` applied after.
async fn start(sink: &MailSink, configure: impl FnOnce(&mut Settings)) -> TestServer {
    let url = sink.smtp_url();
    TestServer::start_with(move |s| {
        s.mail.smtp_url = Some(Secret::new(url));
        configure(s);
    })
    .await
}

async fn forgot(server: &TestServer, email: &str) -> Reply {
    server
        .post("/api/auth/password/forgot")
        .json(json!({"email": email}))
        .send()
        .await
}

async fn reset(server: &TestServer, token: &str, password: &str) -> Reply {
    server
        .post("/api/auth/password/reset")
        .json(json!({"token": token, "password": password}))
        .send()
        .await
}

async fn verify(server: &TestServer, token: &str) -> Reply {
    server
        .post("/api/auth/verify")
        .json(json!({"token": token}))
        .send()
        .await
}

async fn login_status(server: &TestServer, email: &str, password: &str) -> Reply {
    server
        .post("/api/auth/login")
        .json(json!({"email": email, "password": password}))
        .send()
        .await
}

store_test! {
/// The answer is the same for a known and an unknown address; only the known
/// one gets a mail, whose link resets the password once: every earlier
/// session ends, the address counts as verified, a token pair comes back.
async fn a_reset_link_goes_only_to_a_known_address_and_works_once() {
    let sink = MailSink::start().await;
    let server = start(&sink, |_| {}).await;
    let user = server.register("Rita", "rita@example.com").await;
    // Registration sent a verification mail.
    assert!(sink.nth("rita@example.com", 1).await.subject().contains("Confirm"));

    let unknown = forgot(&server, "nobody@example.com").await;
    let known = forgot(&server, "Rita@Example.com").await;
    unknown.assert_ok(202);
    known.assert_ok(202);
    assert_eq!(unknown.body, known.body, "the same answer either way");

    let mail = sink.nth_with("rita@example.com", RESET, 1).await;
    assert!(mail.subject().contains("Reset"), "{}", mail.subject());
    let link = mail.link();
    assert!(
        link.starts_with(&format!("{}/reset-password#token=", server.base)),
        "the default public_url is the bound address: {link}"
    );
    assert!(mail.html().contains("reset-password#token="), "{}", mail.html());
    let token = mail.token();

    let reply = reset(&server, &token, NEW_PASSWORD).await;
    reply.assert_ok(200);
    assert_eq!(reply.body["auth"], true);
    let new_token = reply.body["token"].as_str().unwrap().to_string();
    let me = server.me(&new_token).await;
    assert_eq!(me.body["email_verified"], true, "{}", me.body);
    server.me(&user.token).await.assert_error(401, "invalid_token");
    login_status(&server, "rita@example.com", PASSWORD)
        .await
        .assert_error(401, "invalid_credentials");
    login_status(&server, "rita@example.com", NEW_PASSWORD).await.assert_ok(200);

    // Single use.
    reset(&server, &token, "yet another password")
        .await
        .assert_error(400, "invalid_reset_token");
    assert!(sink.to("nobody@example.com").is_empty());
}
}

store_test! {
/// A password the rule refuses does not spend the token; made-up, mangled
/// and verification tokens are refused with the same error.
async fn a_refused_password_keeps_the_token_and_bad_tokens_are_refused() {
    let sink = MailSink::start().await;
    let server = start(&sink, |_| {}).await;
    server.register("Otto", "otto@example.com").await;
    forgot(&server, "otto@example.com").await.assert_ok(202);
    let token = sink.nth_with("otto@example.com", RESET, 1).await.token();
    let verification = sink.nth_with("otto@example.com", VERIFY, 1).await.token();

    reset(&server, &token, "short").await.assert_error(400, "invalid_input");
    for bad in ["", "garbage", &token[..65], &format!("{token}A"), &verification] {
        reset(&server, bad, NEW_PASSWORD)
            .await
            .assert_error(400, "invalid_reset_token");
    }
    let mut mangled = token.clone().into_bytes();
    mangled[40] = if mangled[40] == b'A' { b'B' } else { b'A' };
    reset(&server, std::str::from_utf8(&mangled).unwrap(), NEW_PASSWORD)
        .await
        .assert_error(400, "invalid_reset_token");
    server
        .post("/api/auth/password/reset")
        .json(json!({"token": token}))
        .send()
        .await
        .assert_error(400, "invalid_input");
    reset(&server, &token, NEW_PASSWORD).await.assert_ok(200);
}
}

store_test! {
/// A newer mail supersedes an older one, and any password change voids a
/// pending reset link.
async fn newer_links_supersede_older_ones_and_a_password_change_voids_them() {
    let sink = MailSink::start().await;
    let server = start(&sink, |s| s.mail.resend_secs = 0).await;
    let user = server.register("Sue", "sue@example.com").await;
    forgot(&server, "sue@example.com").await.assert_ok(202);
    let first = sink.nth_with("sue@example.com", RESET, 1).await.token();
    forgot(&server, "sue@example.com").await.assert_ok(202);
    let second = sink.nth_with("sue@example.com", RESET, 2).await.token();
    assert_ne!(first, second);
    reset(&server, &first, NEW_PASSWORD)
        .await
        .assert_error(400, "invalid_reset_token");

    // The user changes the password some other way: the link is void.
    server
        .post("/api/auth/password")
        .token(&user.token)
        .json(json!({"current_password": PASSWORD, "new_password": NEW_PASSWORD}))
        .send()
        .await
        .assert_ok(200);
    reset(&server, &second, "the attacker's password")
        .await
        .assert_error(400, "invalid_reset_token");
    login_status(&server, "sue@example.com", NEW_PASSWORD).await.assert_ok(200);
}
}

store_test! {
/// Within `mail.resend_secs` a second request sends nothing and leaves the
/// first link working; mail requests are throttled per client address,
/// known and unknown addresses alike.
async fn resends_are_suppressed_and_requests_throttled_per_address() {
    let sink = MailSink::start().await;
    let server = start(&sink, |s| s.limits.mail_requests_per_address = 3).await;
    server.register("Max", "max@example.com").await;
    server.register("Mia", "mia@example.com").await;
    forgot(&server, "max@example.com").await.assert_ok(202);
    let first = sink.nth_with("max@example.com", RESET, 1).await.token();
    forgot(&server, "max@example.com").await.assert_ok(202);
    // A later mail to someone else has gone out: the suppressed request's
    // task ran before it (tasks start in order; sends overlap at most 4).
    forgot(&server, "mia@example.com").await.assert_ok(202);
    sink.nth_with("mia@example.com", RESET, 1).await;
    assert_eq!(sink.to("max@example.com").len(), 2, "no second reset mail");

    let throttled = forgot(&server, "unknown@example.com").await;
    throttled.assert_error(429, "too_many_attempts");
    // A malformed request is still told so first.
    forgot(&server, "not an address").await.assert_error(400, "invalid_input");
    let retry: u64 = throttled.header("retry-after").unwrap().parse().unwrap();
    assert!(retry >= 1, "{retry}");
    server
        .post("/api/auth/verify/request")
        .json(json!({"email": "max@example.com"}))
        .send()
        .await
        .assert_error(429, "too_many_attempts");
    // The first link still works.
    reset(&server, &first, NEW_PASSWORD).await.assert_ok(200);
}
}

store_test! {
/// Without `mail.smtp_url` the mail routes answer 503 (after 400 for a bad
/// body), and registration sends nothing and still works.
async fn without_mail_the_mail_routes_are_503_after_400() {
    let server = TestServer::start().await;
    let user = server.register("Nomail", "nomail@example.com").await;
    forgot(&server, "nomail@example.com")
        .await
        .assert_error(503, "mail_unavailable");
    forgot(&server, "not an address").await.assert_error(400, "invalid_input");
    server
        .post("/api/auth/password/forgot")
        .json(json!({}))
        .send()
        .await
        .assert_error(400, "invalid_input");
    server
        .post("/api/auth/verify/request")
        .token(&user.token)
        .send()
        .await
        .assert_error(503, "mail_unavailable");
    server
        .post("/api/auth/verify/request")
        .json(json!({"email": "nomail@example.com"}))
        .send()
        .await
        .assert_error(503, "mail_unavailable");
}
}

store_test! {
/// Registration mails a link that verifies the address once; asking again
/// for a verified account is 409; asking by address is the same 202 for
/// every address.
async fn registration_mails_a_verification_link_that_works_once() {
    let sink = MailSink::start().await;
    let server = start(&sink, |s| s.mail.resend_secs = 0).await;
    let user = server.register("Vic", "vic@example.com").await;
    let mail = sink.nth("vic@example.com", 1).await;
    assert!(mail.link().contains("/verify-email#token="), "{}", mail.link());
    let reply = verify(&server, &mail.token()).await;
    reply.assert_ok(200);
    assert_eq!(reply.body["email_verified"], true, "{}", reply.body);
    assert_eq!(reply.body["email"], "vic@example.com");
    verify(&server, &mail.token())
        .await
        .assert_error(400, "invalid_verification_token");
    assert_eq!(server.me(&user.token).await.body["email_verified"], true);
    server
        .post("/api/auth/verify/request")
        .token(&user.token)
        .send()
        .await
        .assert_error(409, "already_verified");

    // By address: the same 202 for a verified, an unverified and no account.
    let other = server.register("Una", "una@example.com").await;
    sink.nth("una@example.com", 1).await;
    let mut bodies = Vec::new();
    for email in ["vic@example.com", "una@example.com", "ghost@example.com"] {
        let reply = server
            .post("/api/auth/verify/request")
            .json(json!({"email": email}))
            .send()
            .await;
        reply.assert_ok(202);
        bodies.push(reply.body.clone());
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "{bodies:?}");
    let again = sink.nth("una@example.com", 2).await;
    // With a token, for the caller.
    let reply = server.post("/api/auth/verify/request").token(&other.token).send().await;
    reply.assert_ok(202);
    let third = sink.nth("una@example.com", 3).await;
    verify(&server, &again.token())
        .await
        .assert_error(400, "invalid_verification_token");
    verify(&server, &third.token()).await.assert_ok(200);
    assert_eq!(sink.to("vic@example.com").len(), 1, "a verified account gets none");
    assert!(sink.to("ghost@example.com").is_empty());
}
}

store_test! {
/// An email change mails a link to the new address (whatever the resend
/// window) and a notice to the old one; links for the old address are dead.
async fn an_email_change_mails_both_addresses_and_voids_old_links() {
    let sink = MailSink::start().await;
    let server = start(&sink, |_| {}).await;
    let user = server.register("Eve", "eve@example.com").await;
    let old_link = sink.nth("eve@example.com", 1).await.token();
    let reply = server
        .patch(&format!("/api/users/{}", user.id))
        .token(&user.token)
        .json(json!({"email": "eve.new@example.com", "current_password": PASSWORD}))
        .send()
        .await;
    reply.assert_ok(200);
    let notice = sink.nth("eve@example.com", 2).await;
    assert!(notice.subject().contains("changed"), "{}", notice.subject());
    assert!(notice.text().contains("eve.new@example.com"), "{}", notice.text());
    let new_link = sink.nth("eve.new@example.com", 1).await.token();
    verify(&server, &old_link)
        .await
        .assert_error(400, "invalid_verification_token");
    let verified = verify(&server, &new_link).await;
    verified.assert_ok(200);
    assert_eq!(verified.body["email"], "eve.new@example.com");
    assert_eq!(verified.body["email_verified"], true);
}
}

store_test! {
/// With `auth.require_verified_email`, a correct password on an unverified
/// address is 403 (a wrong one stays 401), until the link is followed.
async fn require_verified_email_refuses_only_after_a_correct_password() {
    let sink = MailSink::start().await;
    let server = start(&sink, |s| s.auth.require_verified_email = true).await;
    // Registering starts no session: 202, and the mail.
    let registered = server
        .post("/api/auth/register")
        .json(json!({"name": "Ria", "email": "ria@example.com", "password": PASSWORD}))
        .send()
        .await;
    registered.assert_ok(202);
    assert_eq!(registered.body["auth"], false, "{}", registered.body);
    assert!(registered.body["token"].is_null(), "{}", registered.body);
    assert!(registered.body.get("refresh_token").is_none(), "{}", registered.body);
    login_status(&server, "ria@example.com", "wrong password")
        .await
        .assert_error(401, "invalid_credentials");
    login_status(&server, "ria@example.com", PASSWORD)
        .await
        .assert_error(403, "email_not_verified");
    let token = sink.nth("ria@example.com", 1).await.token();
    verify(&server, &token).await.assert_ok(200);
    login_status(&server, "ria@example.com", PASSWORD).await.assert_ok(200);
}
}

store_test! {
/// Requests never wait for the mail server: a sink that takes seconds to
/// greet does not slow the answers, and its mail still arrives. A sink that
/// refuses costs the mail only: the account, and later mail, work.
async fn a_slow_or_refusing_mail_server_never_holds_a_request() {
    let sink = MailSink::start().await;
    let server = start(&sink, |s| s.mail.resend_secs = 0).await;
    sink.set_mode(Mode::Slow(Duration::from_secs(3)));
    let started = Instant::now();
    server.register("Sam", "sam@example.com").await;
    forgot(&server, "sam@example.com").await.assert_ok(202);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered in {:?} while the mail server stalls 3 s",
        started.elapsed()
    );
    let mails = sink.wait_for("sam@example.com", 2).await;
    assert_eq!(mails.len(), 2);

    // Refused for good: tried once, lost; the account is untouched.
    sink.set_mode(Mode::Refuse);
    forgot(&server, "sam@example.com").await.assert_ok(202);
    sink.wait_for_refusals(1).await;
    login_status(&server, "sam@example.com", PASSWORD).await.assert_ok(200);

    // Refused for now: tried again after a second, and delivered.
    sink.set_mode(Mode::DeferOnce);
    forgot(&server, "sam@example.com").await.assert_ok(202);
    let retried = sink.nth_with("sam@example.com", RESET, 2).await;
    assert_eq!(sink.refusals(), 2, "a permanent refusal is not tried again");
    reset(&server, &retried.token(), NEW_PASSWORD).await.assert_ok(200);
}
}

store_test! {
/// The store keeps mail tokens only as hashes: no file of the data dir and
/// no row of the database holds a link's token, used or pending.
async fn no_file_or_row_of_the_store_holds_a_mail_token() {
    let sink = MailSink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut store_url = None;
    let url = sink.smtp_url();
    let server = TestServer::start_with(|s| {
        s.data_dir = dir.path().to_path_buf();
        s.mail.smtp_url = Some(Secret::new(url));
        s.mail.resend_secs = 0;
        store_url = s.store.url.as_ref().map(|u| u.expose().to_string());
    })
    .await;
    server.register("Hal", "hal.marker@example.com").await;
    forgot(&server, "hal.marker@example.com").await.assert_ok(202);
    let verification = sink.nth_with("hal.marker@example.com", VERIFY, 1).await.token();
    let reset_token = sink.nth_with("hal.marker@example.com", RESET, 1).await.token();
    reset(&server, &reset_token, NEW_PASSWORD).await.assert_ok(200);
    let tokens = [verification, reset_token];
    let issued: Vec<Vec<u8>> = tokens.iter().flat_map(|t| needles(t)).collect();
    server.stop().await.expect("graceful stop");
    let marker = b"hal.marker@example.com";
    match store_url {
        Some(url) => {
            let (found, marked) = rows_holding(&url, &issued, marker).await;
            assert!(marked, "the search reads the users' rows");
            assert!(found.is_empty(), "rows holding a mail token: {found:?}");
        }
        None => {
            let (found, marked) = files_holding(dir.path(), &issued, marker);
            assert!(marked, "the search reads the store's files");
            assert!(found.is_empty(), "files holding a mail token: {found:?}");
        }
    }
}
}

store_test! {
/// A link stops working when its time is up (`auth.reset_token_ttl_secs`,
/// here 2 s); a new one works.
async fn a_reset_link_expires() {
    let sink = MailSink::start().await;
    let server = start(&sink, |s| {
        s.auth.reset_token_ttl_secs = 2;
        s.mail.resend_secs = 0;
    })
    .await;
    server.register("Tim", "tim@example.com").await;
    let asked = gatehouse::domain::unix_now();
    forgot(&server, "tim@example.com").await.assert_ok(202);
    let token = sink.nth_with("tim@example.com", RESET, 1).await.token();
    // Wait out the link's life on the clock (not on the server).
    while gatehouse::domain::unix_now() < asked + 3 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    reset(&server, &token, NEW_PASSWORD)
        .await
        .assert_error(400, "invalid_reset_token");
    forgot(&server, "tim@example.com").await.assert_ok(202);
    let fresh = sink.nth_with("tim@example.com", RESET, 2).await.token();
    reset(&server, &fresh, NEW_PASSWORD).await.assert_ok(200);
}
}

store_test! {
/// A link is for the address it was sent to: after an email change it is
/// dead, and it stays dead if the address changes back.
async fn an_email_change_voids_pending_links_for_good() {
    let sink = MailSink::start().await;
    let server = start(&sink, |s| s.mail.resend_secs = 0).await;
    let admin = server.admin().await;
    let user = server.register("Ada", "ada@example.com").await;
    forgot(&server, "ada@example.com").await.assert_ok(202);
    let token = sink.nth_with("ada@example.com", RESET, 1).await.token();
    let path = format!("/api/users/{}", user.id);
    for email in ["ada.elsewhere@example.com", "ada@example.com"] {
        server
            .patch(&path)
            .token(&admin.token)
            .json(json!({"email": email}))
            .send()
            .await
            .assert_ok(200);
    }
    reset(&server, &token, NEW_PASSWORD)
        .await
        .assert_error(400, "invalid_reset_token");
    login_status(&server, "ada@example.com", PASSWORD).await.assert_ok(200);
}
}

store_test! {
/// Of several resets racing with one token, exactly one sets its password.
async fn racing_resets_with_one_token_set_one_password() {
    let sink = MailSink::start().await;
    let server = start(&sink, |_| {}).await;
    server.register("Rex", "rex@example.com").await;
    forgot(&server, "rex@example.com").await.assert_ok(202);
    let token = sink.nth_with("rex@example.com", RESET, 1).await.token();
    let passwords: Vec<String> = (0..6).map(|i| format!("racing password {i}")).collect();
    let replies = crate::auth::futures_join_all(
        passwords
            .iter()
            .map(|p| {
                server
                    .post("/api/auth/password/reset")
                    .json(json!({"token": token, "password": p}))
                    .send()
            })
            .collect::<Vec<_>>(),
    )
    .await;
    let winners: Vec<usize> = (0..replies.len()).filter(|&i| replies[i].status == 200).collect();
    assert_eq!(winners.len(), 1, "{:?}", replies.iter().map(|r| r.status).collect::<Vec<_>>());
    for (i, reply) in replies.iter().enumerate() {
        if reply.status != 200 {
            reply.assert_error(400, "invalid_reset_token");
        } else {
            assert_eq!(i, winners[0]);
        }
    }
    login_status(&server, "rex@example.com", &passwords[winners[0]]).await.assert_ok(200);
}
}

store_test! {
/// An account stored before emails were NFKC/UTS #46-normalized (trimmed and
/// lower-cased only, the domain in punycode) gets its link, as it can log in.
async fn an_account_stored_before_normalization_gets_its_link() {
    let sink = MailSink::start().await;
    let server = start(&sink, |_| {}).await;
    let legacy = gatehouse::domain::user::User::new(
        "Legacy".into(),
        "a@xn--bcher-kva.de".into(),
        gatehouse::domain::user::Role::User,
        bcrypt::hash(PASSWORD, 4).unwrap(),
        gatehouse::domain::unix_now(),
    );
    server.app.store.insert_user(legacy, Vec::new()).await.unwrap();
    forgot(&server, "A@XN--BCHER-KVA.DE").await.assert_ok(202);
    let token = sink.nth_with("a@xn--bcher-kva.de", RESET, 1).await.token();
    reset(&server, &token, NEW_PASSWORD).await.assert_ok(200);
    login_status(&server, "a@xn--bcher-kva.de", NEW_PASSWORD).await.assert_ok(200);
}
}
