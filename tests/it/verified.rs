//! `email_verified` in the user object: false for a new account, set only by
//! an admin (or, with issue 14's mail, by a link), false again after an email
//! change, and kept by the store across restarts (both stores).

use serde_json::json;

use crate::support::*;

store_test! {
async fn a_new_account_is_unverified_and_only_an_admin_may_set_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = None;
    let server = TestServer::start_with(|s| {
        s.data_dir = dir.path().to_path_buf();
        settings = Some(s.clone());
    })
    .await;
    let admin = server.admin().await;
    let user = server.register("Una", "una@example.com").await;
    let me = server.me(&user.token).await;
    assert_eq!(me.body["email_verified"], false, "{}", me.body);

    // A user may not say their own address is confirmed.
    server
        .patch(&format!("/api/users/{}", user.id))
        .token(&user.token)
        .json(json!({"email_verified": true}))
        .send()
        .await
        .assert_error(403, "forbidden");
    // Nor is a non-boolean taken from anyone.
    server
        .patch(&format!("/api/users/{}", user.id))
        .token(&admin.token)
        .json(json!({"email_verified": "yes"}))
        .send()
        .await
        .assert_error(400, "invalid_input");
    assert_eq!(server.me(&user.token).await.body["email_verified"], false);

    let reply = server
        .patch(&format!("/api/users/{}", user.id))
        .token(&admin.token)
        .json(json!({"email_verified": true}))
        .send()
        .await;
    reply.assert_ok(200);
    assert_eq!(reply.body["email_verified"], true, "{}", reply.body);

    // Admin-created users: unverified unless the admin says so (JSON or form).
    let created = server
        .post("/api/users")
        .token(&admin.token)
        .json(json!({"name": "Vera", "email": "vera@example.com", "password": PASSWORD,
                     "email_verified": true}))
        .send()
        .await;
    created.assert_ok(201);
    assert_eq!(created.body["email_verified"], true, "{}", created.body);
    let plain = server
        .post("/api/users")
        .token(&admin.token)
        .form(&[("name", "Nils"), ("email", "nils@example.com"), ("password", PASSWORD)])
        .send()
        .await;
    plain.assert_ok(201);
    assert_eq!(plain.body["email_verified"], false, "{}", plain.body);

    // Kept by the store.
    server.stop().await.expect("graceful stop");
    let server = TestServer::start_settings(settings.unwrap()).await;
    let token = server.login("una@example.com", PASSWORD).await;
    assert_eq!(server.me(&token).await.body["email_verified"], true);
    let token = server.login("nils@example.com", PASSWORD).await;
    assert_eq!(server.me(&token).await.body["email_verified"], false);
}
}

store_test! {
async fn an_email_change_unverifies_unless_an_admin_sets_it_in_the_same_change() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    let user = server.register("Ema", "ema@example.com").await;
    let path = format!("/api/users/{}", user.id);
    let set = |body: serde_json::Value| {
        server.patch(&path).token(&admin.token).json(body).send()
    };
    set(json!({"email_verified": true})).await.assert_ok(200);

    // The same address again, or another field: still verified.
    let same = set(json!({"email": "EMA@example.com", "name": "Ema B"})).await;
    assert_eq!(same.body["email_verified"], true, "{}", same.body);

    // The user moves to another address: not confirmed yet.
    let moved = server
        .patch(&path)
        .token(&user.token)
        .json(json!({"email": "ema.new@example.com", "current_password": PASSWORD}))
        .send()
        .await;
    moved.assert_ok(200);
    assert_eq!(moved.body["email_verified"], false, "{}", moved.body);

    // An admin moving it and vouching for the new one in one change.
    let vouched = set(json!({"email": "ema.third@example.com", "email_verified": true})).await;
    vouched.assert_ok(200);
    assert_eq!(vouched.body["email_verified"], true, "{}", vouched.body);
    // An admin moving it without a word about it: not confirmed.
    let unsaid = set(json!({"email": "ema.fourth@example.com"})).await;
    assert_eq!(unsaid.body["email_verified"], false, "{}", unsaid.body);
}
}
