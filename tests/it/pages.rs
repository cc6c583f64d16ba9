//! The pages a mail's link opens, `GET /reset-password` and `GET
//! /verify-email`: their headers over HTTP, and both flows end to end in a
//! real headless Chromium (`webdriver`), typing and clicking as a person
//! does, with the link read out of the mail the SMTP sink caught. Both
//! stores.

use base64::Engine as _;
use gatehouse::config::Secret;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::mailsink::MailSink;
use crate::support::*;
use crate::webdriver::Browser;

const RESET: &str = "/reset-password#token=";
const VERIFY: &str = "/verify-email#token=";

async fn start(sink: &MailSink) -> TestServer {
    let url = sink.smtp_url();
    TestServer::start_with(move |s| {
        s.mail.smtp_url = Some(Secret::new(url));
        s.mail.resend_secs = 0;
    })
    .await
}

/// CSP's hash of the text inside the page's one `<tag>` element.
fn inline_hash(html: &str, tag: &str) -> String {
    let inside = html
        .split_once(&format!("<{tag}>"))
        .and_then(|(_, rest)| rest.split_once(&format!("</{tag}>")))
        .map(|(inside, _)| inside)
        .unwrap_or_else(|| panic!("no <{tag}> in the page"));
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(inside.as_bytes()))
}

#[tokio::test]
async fn the_pages_are_self_contained_and_say_so_in_their_headers() {
    let server = TestServer::start().await;
    for path in ["/reset-password", "/verify-email"] {
        let reply = server.get(path).send().await;
        assert_eq!(reply.status, 200, "{path}");
        assert_eq!(
            reply.header("content-type"),
            Some("text/html; charset=utf-8")
        );
        assert_eq!(reply.header("referrer-policy"), Some("no-referrer"));
        assert_ne!(reply.header("cache-control"), Some("no-store"), "{path}");
        let html = &reply.text;
        let policy = reply.header("content-security-policy").expect("a CSP");
        for directive in [
            "default-src 'none'",
            &format!("script-src 'sha256-{}'", inline_hash(html, "script")),
            &format!("style-src 'sha256-{}'", inline_hash(html, "style")),
            "connect-src 'self'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
        ] {
            assert!(
                policy.contains(directive),
                "{path}: {directive} not in {policy}"
            );
        }
        assert!(!policy.contains("unsafe"), "{policy}");
        for outside in ["http://", "https://", " src=", "<link"] {
            assert!(
                !html.contains(outside),
                "{path} refers outside itself: {outside}"
            );
        }
        let head = server.request(reqwest::Method::HEAD, path).send().await;
        assert_eq!(head.status, 200);
        assert!(head.text.is_empty());
    }
}

store_test! {
/// A person with a browser and a mailbox resets their password: the page
/// takes the token out of the address bar, refuses two different passwords
/// before calling the API, then sets the new one.
async fn a_person_resets_their_password_in_a_browser() {
    let Some(browser) = Browser::start("a_person_resets_their_password_in_a_browser").await else {
        return;
    };
    let sink = MailSink::start().await;
    let server = start(&sink).await;
    let user = server.register("Bea", "bea@example.com").await;
    server
        .post("/api/auth/password/forgot")
        .json(json!({"email": "bea@example.com"}))
        .send()
        .await
        .assert_ok(202);
    let link = sink.nth_with("bea@example.com", RESET, 1).await.link();

    browser.load(&link).await;
    browser.find_displayed("#password").await;
    let url = browser.url().await;
    assert!(!url.contains("token"), "the token left the address bar: {url}");

    browser.type_into("#password", "a new horse battery").await;
    browser.type_into("#confirm", "a new horse batterz").await;
    browser.click("#submit").await;
    browser.wait_for_text("#message", "not the same").await;
    // Nothing was sent: the old password still works.
    server.login("bea@example.com", PASSWORD).await;

    browser.type_into("#confirm", "\u{E003}y").await; // Backspace, then the right letter.
    browser.click("#submit").await;
    browser.wait_for_text("#message", "Your new password is set").await;
    server.me(&user.token).await.assert_error(401, "invalid_token");
    server.login("bea@example.com", "a new horse battery").await;

    // The same link again: the API's refusal, shown.
    browser.load(&link).await;
    browser.type_into("#password", "another new password").await;
    browser.type_into("#confirm", "another new password").await;
    browser.click("#submit").await;
    browser.wait_for_text("#message", "not valid").await;
}
}

store_test! {
/// A person confirms their address by opening the link: the page calls the
/// API as it opens and shows the result; a link without a token says so.
async fn a_person_verifies_their_address_in_a_browser() {
    let Some(browser) = Browser::start("a_person_verifies_their_address_in_a_browser").await else {
        return;
    };
    let sink = MailSink::start().await;
    let server = start(&sink).await;
    let user = server.register("Ved", "ved@example.com").await;
    let link = sink.nth_with("ved@example.com", VERIFY, 1).await.link();

    browser.load(&link).await;
    browser.wait_for_text("#message", "ved@example.com is confirmed").await;
    assert!(!browser.url().await.contains("token"));
    assert_eq!(server.me(&user.token).await.body["email_verified"], true);

    browser.load(&link).await;
    browser.wait_for_text("#message", "not valid").await;
    browser.load(&format!("{}/verify-email", server.base)).await;
    browser.wait_for_text("#message", "no token").await;
}
}
