//! `/api/users`: who may call what (one table for every route and caller),
//! roles, emails, input rules for PUT and PATCH, password changes, deletion,
//! admin creation and the paged list. Every user object seen on the way is
//! checked for the contract's fields and for the absence of any password or
//! bcrypt hash.

use std::collections::HashSet;

use reqwest::Method;
use serde_json::{json, Value};

use crate::support::*;

/// A well-formed id that no user has.
const MISSING_ID: &str = "01900000-0000-7000-8000-000000000000";
const NEW_PASSWORD: &str = "battery staple";

fn user_path(id: &str) -> String {
    format!("/api/users/{id}")
}

/// No password, password field or bcrypt hash anywhere in a response text.
#[track_caller]
fn assert_no_secrets(text: &str) {
    assert!(
        !text.to_ascii_lowercase().contains("password") && !text.contains("$2"),
        "secret in response: {text}"
    );
}

/// The contract's user object: exactly its seven fields, nothing secret.
#[track_caller]
fn assert_user_object(user: &Value) {
    let object = user
        .as_object()
        .unwrap_or_else(|| panic!("not a user object: {user}"));
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "_id",
            "created_at",
            "email",
            "email_verified",
            "name",
            "role",
            "updated_at"
        ],
        "{user}"
    );
    assert!(user["email_verified"].is_boolean(), "{user}");
    assert!(
        user["_id"].as_str().is_some_and(|id| !id.is_empty()),
        "{user}"
    );
    assert!(
        matches!(user["role"].as_str(), Some("user" | "admin")),
        "{user}"
    );
    assert_no_secrets(&user.to_string());
}

/// Asserts the status and a user-object body, and returns the body.
#[track_caller]
fn user_body(reply: &Reply, status: u16) -> &Value {
    reply.assert_ok(status);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_no_secrets(&reply.text);
    assert_user_object(&reply.body);
    &reply.body
}

/// Asserts a 200 list of user objects and returns their ids in order.
#[track_caller]
fn list_ids(reply: &Reply) -> Vec<String> {
    reply.assert_ok(200);
    assert_no_secrets(&reply.text);
    let users = reply
        .body
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {}", reply.text));
    users
        .iter()
        .map(|user| {
            assert_user_object(user);
            user["_id"].as_str().unwrap().to_string()
        })
        .collect()
}

/// The path of a `Link: <...>; rel="next"` header, if there is one.
fn next_link(server: &TestServer, reply: &Reply) -> Option<String> {
    let link = reply.header("link")?;
    let (target, params) = link
        .split_once(';')
        .unwrap_or_else(|| panic!("bad Link: {link}"));
    assert_eq!(params.trim(), "rel=\"next\"", "{link}");
    let url = target
        .trim()
        .strip_prefix('<')
        .and_then(|t| t.strip_suffix('>'))
        .unwrap_or_else(|| panic!("bad Link: {link}"));
    let path = url.strip_prefix(server.base.as_str()).unwrap_or(url);
    assert!(path.starts_with("/api/users?"), "{link}");
    Some(path.to_string())
}

/// A 401 of the token check: code, `"auth": false` and `WWW-Authenticate`.
#[track_caller]
fn assert_unauthorized(reply: &Reply, code: &str) {
    reply.assert_error(401, code);
    assert_eq!(reply.body["auth"], false, "{}", reply.text);
    let challenge = reply.header("www-authenticate").unwrap_or_default();
    assert!(challenge.starts_with("Bearer"), "{code}: {challenge:?}");
}

/// A refused login: 401 `invalid_credentials`, `"auth": false, "token": null`.
#[track_caller]
fn assert_login_refused(reply: &Reply) {
    reply.assert_error(401, "invalid_credentials");
    assert_eq!(
        (&reply.body["auth"], &reply.body["token"]),
        (&json!(false), &Value::Null),
        "{}",
        reply.text
    );
}

async fn get_user(server: &TestServer, token: &str, id: &str) -> Reply {
    server.get(&user_path(id)).token(token).send().await
}

async fn patch_user(server: &TestServer, token: &str, id: &str, body: Value) -> Reply {
    server
        .patch(&user_path(id))
        .token(token)
        .json(body)
        .send()
        .await
}

/// Every user id, via the admin list.
async fn all_ids(server: &TestServer, admin: &TestUser) -> Vec<String> {
    list_ids(
        &server
            .get("/api/users?limit=1000")
            .token(&admin.token)
            .send()
            .await,
    )
}

/// Creates `n` users as admin and returns their ids.
async fn seed(server: &TestServer, admin: &TestUser, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let reply = server
            .post("/api/users")
            .token(&admin.token)
            .json(json!({"name": format!("Seed {i}"), "email": format!("seed{i}@example.com"), "password": PASSWORD}))
            .send()
            .await;
        ids.push(user_body(&reply, 201)["_id"].as_str().unwrap().to_string());
    }
    ids
}

async fn login_reply(server: &TestServer, email: &str, password: &str) -> Reply {
    server
        .post("/api/auth/login")
        .json(json!({"email": email, "password": password}))
        .send()
        .await
}

// --- authorization matrix ---------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Who {
    Anonymous,
    Themself,
    Other,
    Admin,
}

#[derive(Clone, Copy, Debug)]
enum Target {
    /// `/api/users`
    Collection,
    /// `/api/users/{id}` of a fresh user ("the victim").
    Existing,
    /// `/api/users/{id}` of no user.
    Missing,
}

/// One request of the matrix, against fresh users, and its aftermath.
async fn run_case(
    server: &TestServer,
    admin: &TestUser,
    n: usize,
    (method, target, who, status, code): (&str, Target, Who, u16, Option<&str>),
) {
    let context = format!("case {n}: {method} {target:?} as {who:?}");
    let victim_name = format!("Victim {n}");
    let victim = server
        .register(&victim_name, &format!("victim{n}@example.com"))
        .await;
    let other = server
        .register(&format!("Other {n}"), &format!("other{n}@example.com"))
        .await;
    let created_email = format!("created{n}@example.com");
    let path = match target {
        Target::Collection => "/api/users".to_string(),
        Target::Existing => user_path(&victim.id),
        Target::Missing => user_path(MISSING_ID),
    };
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = server.request(method.clone(), &path);
    request = match who {
        Who::Anonymous => request,
        Who::Themself => request.token(&victim.token),
        Who::Other => request.token(&other.token),
        Who::Admin => request.token(&admin.token),
    };
    request = match method.as_str() {
        "POST" => {
            request.json(json!({"name": "Created", "email": created_email, "password": PASSWORD}))
        }
        "PUT" | "PATCH" => request.json(json!({"name": "Renamed"})),
        _ => request,
    };
    let reply = request.send().await;
    assert_eq!(reply.status, status, "{context}: {}", reply.text);
    assert_no_secrets(&reply.text);

    let succeeded = code.is_none();
    match code {
        Some(code) if status == 401 => assert_unauthorized(&reply, code),
        Some(code) => {
            reply.assert_error(status, code);
        }
        None => match (method.as_str(), target) {
            ("GET", Target::Collection) => {
                let ids = list_ids(&reply);
                assert!(
                    ids.contains(&victim.id) && ids.contains(&admin.id),
                    "{context}"
                );
            }
            ("POST", _) => assert_eq!(user_body(&reply, 201)["email"], created_email.as_str()),
            ("GET", _) => assert_eq!(user_body(&reply, 200)["_id"], victim.id.as_str()),
            ("PUT" | "PATCH", _) => {
                let user = user_body(&reply, 200);
                assert_eq!(
                    (user["_id"].as_str(), user["name"].as_str()),
                    (Some(victim.id.as_str()), Some("Renamed"))
                );
            }
            ("DELETE", _) => {
                let message = format!("User {victim_name} was deleted.");
                assert_eq!(reply.body, json!({ "message": message }), "{context}");
            }
            other => panic!("no check for {other:?}"),
        },
    }

    // The aftermath, seen by the admin: only a success changed anything.
    let after = get_user(server, &admin.token, &victim.id).await;
    match (
        method.as_str(),
        succeeded && matches!(target, Target::Existing),
    ) {
        ("DELETE", true) => {
            after.assert_error(404, "not_found");
        }
        ("PUT" | "PATCH", true) => {
            assert_eq!(user_body(&after, 200)["name"], "Renamed", "{context}")
        }
        _ => assert_eq!(
            user_body(&after, 200)["name"],
            victim_name.as_str(),
            "{context}"
        ),
    }
    let everyone = server
        .get("/api/users?limit=1000")
        .token(&admin.token)
        .send()
        .await;
    list_ids(&everyone);
    let created = everyone
        .body
        .as_array()
        .unwrap()
        .iter()
        .any(|u| u["email"] == created_email.as_str());
    assert_eq!(created, method == Method::POST && succeeded, "{context}");
}

store_test! {
async fn authorization_matrix_for_every_users_route() {
    use Target::*;
    use Who::*;
    let forbidden = Some("forbidden");
    let missing = Some("missing_token");
    let not_found = Some("not_found");
    let mut cases = vec![
        ("GET", Collection, Anonymous, 401, missing),
        ("GET", Collection, Other, 403, forbidden),
        ("GET", Collection, Admin, 200, None),
        ("POST", Collection, Anonymous, 401, missing),
        ("POST", Collection, Other, 403, forbidden),
        ("POST", Collection, Admin, 201, None),
    ];
    for method in ["GET", "PUT", "PATCH", "DELETE"] {
        cases.extend([
            (method, Existing, Anonymous, 401, missing),
            (method, Existing, Themself, 200, None),
            (method, Existing, Other, 403, forbidden),
            (method, Existing, Admin, 200, None),
            (method, Missing, Anonymous, 401, missing),
            (method, Missing, Other, 403, forbidden),
            (method, Missing, Admin, 404, not_found),
        ]);
    }
    assert_eq!(cases.len(), 34);

    let server = TestServer::start().await;
    let admin = server.admin().await;
    for (n, case) in cases.into_iter().enumerate() {
        run_case(&server, &admin, n, case).await;
    }
}
}

// --- roles --------------------------------------------------------------------

store_test! {
async fn a_user_cannot_set_a_role_not_even_on_themself() {
    let server = TestServer::start().await;
    let user = server.register("Mike", "mike@example.com").await;
    for method in [Method::PUT, Method::PATCH] {
        for body in [
            json!({"role": "admin"}),
            json!({"role": "user"}),
            json!({"name": "Sneaky", "role": "admin"}),
        ] {
            server
                .request(method.clone(), &user_path(&user.id))
                .token(&user.token)
                .json(body)
                .send()
                .await
                .assert_error(403, "forbidden");
        }
    }
    let reply = server.me(&user.token).await;
    let current = user_body(&reply, 200);
    assert_eq!(
        (current["role"].as_str(), current["name"].as_str()),
        (Some("user"), Some("Mike"))
    );
    server
        .get("/api/users")
        .token(&user.token)
        .send()
        .await
        .assert_error(403, "forbidden");
}
}

store_test! {
async fn an_admin_promotes_and_demotes_and_the_same_token_follows_at_once() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    let user = server.register("Mike", "mike@example.com").await;
    let other = server.register("Olga", "olga@example.com").await;
    let list = || server.get("/api/users").token(&user.token).send();

    list().await.assert_error(403, "forbidden");
    let reply = patch_user(&server, &admin.token, &user.id, json!({"role": "admin"})).await;
    assert_eq!(user_body(&reply, 200)["role"], "admin");
    // The token issued while a plain user now carries admin rights.
    assert_eq!(list_ids(&list().await).len(), 3);
    assert_eq!(
        user_body(&get_user(&server, &user.token, &other.id).await, 200)["_id"],
        other.id.as_str()
    );

    let reply = server
        .put(&user_path(&user.id))
        .token(&admin.token)
        .json(json!({"role": "user"}))
        .send()
        .await;
    assert_eq!(user_body(&reply, 200)["role"], "user");
    list().await.assert_error(403, "forbidden");
    get_user(&server, &user.token, &other.id)
        .await
        .assert_error(403, "forbidden");
    patch_user(&server, &user.token, &user.id, json!({"role": "admin"}))
        .await
        .assert_error(403, "forbidden");
    assert_eq!(
        user_body(&server.me(&user.token).await, 200)["role"],
        "user"
    );
}
}

store_test! {
async fn a_demoted_admin_loses_admin_rights_with_its_own_token() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    let second = server.register("Second", "second@example.com").await;
    patch_user(&server, &admin.token, &second.id, json!({"role": "admin"}))
        .await
        .assert_ok(200);
    // The second admin demotes the first; the first's token is still valid
    // but no longer an admin's.
    let reply = patch_user(&server, &second.token, &admin.id, json!({"role": "user"})).await;
    assert_eq!(user_body(&reply, 200)["role"], "user");
    assert_eq!(
        user_body(&server.me(&admin.token).await, 200)["role"],
        "user"
    );
    server
        .get("/api/users")
        .token(&admin.token)
        .send()
        .await
        .assert_error(403, "forbidden");
    get_user(&server, &admin.token, &second.id)
        .await
        .assert_error(403, "forbidden");
    patch_user(&server, &admin.token, &admin.id, json!({"role": "admin"}))
        .await
        .assert_error(403, "forbidden");
}
}

store_test! {
async fn an_invalid_role_value_is_400_even_for_an_admin() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    let user = server.register("Mike", "mike@example.com").await;
    for role in [
        json!("superuser"),
        json!("Admin"),
        json!(""),
        json!(true),
        json!(["admin"]),
    ] {
        let reply = patch_user(&server, &admin.token, &user.id, json!({"role": role})).await;
        reply.assert_error(400, "invalid_input");
        assert!(
            reply.body["message"].as_str().unwrap().contains("role"),
            "{}",
            reply.text
        );
    }
    assert_eq!(
        user_body(&get_user(&server, &admin.token, &user.id).await, 200)["role"],
        "user"
    );
}
}

// --- emails -------------------------------------------------------------------

store_test! {
async fn a_user_cannot_take_another_users_email_in_any_letter_case() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    let mike = server.register("Mike", "mike@example.com").await;
    server.register("Olga", "olga@example.com").await;
    for email in [
        "olga@example.com",
        "OLGA@Example.COM",
        "  Olga@example.com ",
    ] {
        for method in [Method::PUT, Method::PATCH] {
            server
                .request(method, &user_path(&mike.id))
                .token(&mike.token)
                .json(json!({"email": email, "current_password": PASSWORD}))
                .send()
                .await
                .assert_error(409, "email_taken");
        }
    }
    // Nor may an admin give it away.
    patch_user(
        &server,
        &admin.token,
        &mike.id,
        json!({"email": "Admin@Example.com", "current_password": PASSWORD}),
    )
    .await
    .assert_error(409, "email_taken");
    assert_eq!(
        user_body(&server.me(&mike.token).await, 200)["email"],
        "mike@example.com"
    );
    // Their own email in another case is not "another user's".
    let reply = patch_user(
        &server,
        &mike.token,
        &mike.id,
        json!({"email": "MIKE@EXAMPLE.COM"}),
    )
    .await;
    assert_eq!(user_body(&reply, 200)["email"], "mike@example.com");
}
}

store_test! {
async fn changing_ones_own_email_frees_the_old_one() {
    let server = TestServer::start().await;
    let mike = server.register("Mike", "mike@example.com").await;
    let reply = patch_user(
        &server,
        &mike.token,
        &mike.id,
        json!({"email": " Mike.New@Example.com ", "current_password": PASSWORD}),
    )
    .await;
    let user = user_body(&reply, 200);
    assert_eq!(
        (user["_id"].as_str(), user["email"].as_str()),
        (Some(mike.id.as_str()), Some("mike.new@example.com"))
    );
    assert_eq!(
        user_body(&server.me(&mike.token).await, 200)["email"],
        "mike.new@example.com"
    );

    server.login("mike.new@example.com", PASSWORD).await;
    assert_login_refused(&login_reply(&server, "mike@example.com", PASSWORD).await);
    let newcomer = server.register("Newcomer", "mike@example.com").await;
    assert_ne!(newcomer.id, mike.id);
    // And the new one is taken.
    server
        .post("/api/auth/register")
        .json(json!({"name": "X", "email": "mike.new@example.com", "password": PASSWORD}))
        .send()
        .await
        .assert_error(409, "email_taken");
}
}

store_test! {
async fn two_users_racing_for_one_new_email_yield_exactly_one_winner() {
    let server = TestServer::start().await;
    let mike = server.register("Mike", "mike@example.com").await;
    let olga = server.register("Olga", "olga@example.com").await;
    let body = json!({"email": "shared@example.com", "current_password": PASSWORD});
    let (a, b) = tokio::join!(
        patch_user(&server, &mike.token, &mike.id, body.clone()),
        patch_user(&server, &olga.token, &olga.id, body),
    );
    let mut statuses = [a.status, b.status];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 409], "{} / {}", a.text, b.text);
    let (winner, loser) = if a.status == 200 {
        (&mike, &olga)
    } else {
        (&olga, &mike)
    };
    let winner_email = user_body(&server.me(&winner.token).await, 200)["email"].clone();
    let loser_email = user_body(&server.me(&loser.token).await, 200)["email"].clone();
    assert_eq!(winner_email, "shared@example.com");
    assert_eq!(loser_email, loser.email.as_str());
    let token = server.login("shared@example.com", PASSWORD).await;
    assert_eq!(
        user_body(&server.me(&token).await, 200)["_id"],
        winner.id.as_str()
    );
}
}

// --- PUT and PATCH bodies -------------------------------------------------------

store_test! {
async fn put_and_patch_refuse_unknown_fields_wrong_types_and_broken_rules() {
    let server = TestServer::start().await;
    let user = server.register("Mike", "mike@example.com").await;
    let cases = [
        (json!({"nickname": "Mikey"}), "nickname"),
        (json!({"name": "Ok", "_id": "someone-else"}), "_id"),
        (json!({"password_hash": "$2b$04$abc"}), "password_hash"),
        (json!({"created_at": "2020-01-01T00:00:00Z"}), "created_at"),
        (json!({"name": 5}), "name"),
        (json!({"name": null}), "name"),
        (json!({"email": ["mike@example.com"]}), "email"),
        (json!({"password": 12345678}), "password"),
        (json!({"name": "   "}), "name"),
        (json!({"name": "n".repeat(101)}), "name"),
        (json!({"email": "not-an-email"}), "email"),
        (json!({"email": "mike@localhost"}), "email"),
        (json!({"email": "@example.com"}), "email"),
        (json!({"password": "short"}), "password"),
        (json!({"password": "p".repeat(73)}), "password"),
        (json!({"password": "€".repeat(25)}), "password"),
    ];
    for method in [Method::PUT, Method::PATCH] {
        for (body, field) in &cases {
            let reply = server
                .request(method.clone(), &user_path(&user.id))
                .token(&user.token)
                .json(body.clone())
                .send()
                .await;
            reply.assert_error(400, "invalid_input");
            let message = reply.body["message"].as_str().unwrap();
            assert!(message.contains(field), "{method} {body}: {message}");
        }
    }
    // The same through a form body.
    for (pairs, field) in [
        (vec![("name", "Ok"), ("nickname", "Mikey")], "nickname"),
        (vec![("email", "not-an-email")], "email"),
        (vec![("password", "short")], "password"),
    ] {
        let reply = server
            .patch(&user_path(&user.id))
            .token(&user.token)
            .form(&pairs)
            .send()
            .await;
        reply.assert_error(400, "invalid_input");
        assert!(
            reply.body["message"].as_str().unwrap().contains(field),
            "{}",
            reply.text
        );
    }
    // Nothing was applied: same name and email, and the password (hence the
    // token) unchanged.
    let reply = server.me(&user.token).await;
    let current = user_body(&reply, 200);
    assert_eq!(
        (current["name"].as_str(), current["email"].as_str()),
        (Some("Mike"), Some("mike@example.com"))
    );
    server.login("mike@example.com", PASSWORD).await;
}
}

store_test! {
async fn put_and_patch_accept_json_and_form_bodies() {
    let server = TestServer::start().await;
    let user = server.register("Mike", "mike@example.com").await;

    let reply = patch_user(
        &server,
        &user.token,
        &user.id,
        json!({"name": "  Json Mike "}),
    )
    .await;
    assert_eq!(user_body(&reply, 200)["name"], "Json Mike");

    let reply = server
        .patch(&user_path(&user.id))
        .token(&user.token)
        .form(&[
            ("name", "Form Mike"),
            ("email", "Form.Mike@Example.com"),
            ("current_password", PASSWORD),
        ])
        .send()
        .await;
    let user_object = user_body(&reply, 200);
    assert_eq!(
        (user_object["name"].as_str(), user_object["email"].as_str()),
        (Some("Form Mike"), Some("form.mike@example.com"))
    );

    let reply = server
        .put(&user_path(&user.id))
        .token(&user.token)
        .form(&[("name", "Put Mike")])
        .send()
        .await;
    assert_eq!(user_body(&reply, 200)["name"], "Put Mike");

    let reply = server.me(&user.token).await;
    let current = user_body(&reply, 200);
    assert_eq!(
        (current["name"].as_str(), current["email"].as_str()),
        (Some("Put Mike"), Some("form.mike@example.com"))
    );
}
}

// --- passwords ------------------------------------------------------------------

store_test! {
async fn a_password_change_revokes_old_tokens_and_the_old_password() {
    let server = TestServer::start().await;
    let user = server.register("Mike", "mike@example.com").await;
    let second_token = server.login("mike@example.com", PASSWORD).await;

    let reply = patch_user(
        &server,
        &user.token,
        &user.id,
        json!({"password": NEW_PASSWORD, "current_password": PASSWORD}),
    )
    .await;
    assert_eq!(user_body(&reply, 200)["_id"], user.id.as_str());

    for token in [&user.token, &second_token] {
        assert_unauthorized(&server.me(token).await, "invalid_token");
        assert_unauthorized(&get_user(&server, token, &user.id).await, "invalid_token");
    }
    let reply = login_reply(&server, "mike@example.com", PASSWORD).await;
    assert_login_refused(&reply);

    let token = server.login("mike@example.com", NEW_PASSWORD).await;
    assert_eq!(
        user_body(&server.me(&token).await, 200)["_id"],
        user.id.as_str()
    );
    assert_eq!(
        user_body(&get_user(&server, &token, &user.id).await, 200)["_id"],
        user.id.as_str()
    );
}
}

store_test! {
async fn an_admin_setting_a_password_revokes_that_users_tokens_only() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    let user = server.register("Mike", "mike@example.com").await;
    let reply = server
        .put(&user_path(&user.id))
        .token(&admin.token)
        .form(&[("password", NEW_PASSWORD)])
        .send()
        .await;
    user_body(&reply, 200);
    assert_unauthorized(&server.me(&user.token).await, "invalid_token");
    user_body(&server.me(&admin.token).await, 200);
    let token = server.login("mike@example.com", NEW_PASSWORD).await;
    user_body(&get_user(&server, &token, &user.id).await, 200);
}
}

// --- DELETE -----------------------------------------------------------------------

store_test! {
async fn delete_names_the_user_ends_its_tokens_and_frees_its_email() {
    let server = TestServer::start().await;
    let user = server.register("Mike O'Hara", "mike@example.com").await;
    let reply = server
        .delete(&user_path(&user.id))
        .token(&user.token)
        .send()
        .await;
    reply.assert_ok(200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(
        reply.body,
        json!({"message": "User Mike O'Hara was deleted."})
    );

    assert_unauthorized(&server.me(&user.token).await, "invalid_token");
    assert_unauthorized(
        &get_user(&server, &user.token, &user.id).await,
        "invalid_token",
    );
    assert_unauthorized(
        &server
            .delete(&user_path(&user.id))
            .token(&user.token)
            .send()
            .await,
        "invalid_token",
    );
    assert_login_refused(&login_reply(&server, "mike@example.com", PASSWORD).await);

    let again = server.register("Mike Again", "MIKE@example.com").await;
    assert_ne!(again.id, user.id);
    // The old token does not come back to life with the email.
    assert_unauthorized(&server.me(&user.token).await, "invalid_token");
    assert_eq!(
        user_body(&server.me(&again.token).await, 200)["name"],
        "Mike Again"
    );
}
}

// --- POST /api/users ----------------------------------------------------------------

store_test! {
async fn an_admin_creates_users_with_a_default_or_given_role() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    let create = |body: Value| {
        server
            .post("/api/users")
            .token(&admin.token)
            .json(body)
            .send()
    };

    let reply =
        create(json!({"name": " Mike ", "email": " Mike@Example.com", "password": PASSWORD})).await;
    let mike = user_body(&reply, 201).clone();
    assert_eq!(
        (
            mike["name"].as_str(),
            mike["email"].as_str(),
            mike["role"].as_str()
        ),
        (Some("Mike"), Some("mike@example.com"), Some("user"))
    );
    let token = server.login("mike@example.com", PASSWORD).await;
    assert_eq!(user_body(&server.me(&token).await, 200), &mike);
    server
        .get("/api/users")
        .token(&token)
        .send()
        .await
        .assert_error(403, "forbidden");

    let reply = create(
        json!({"name": "Boss", "email": "boss@example.com", "password": PASSWORD, "role": "admin"}),
    )
    .await;
    assert_eq!(user_body(&reply, 201)["role"], "admin");
    let boss = server.login("boss@example.com", PASSWORD).await;
    assert_eq!(
        list_ids(&server.get("/api/users").token(&boss).send().await).len(),
        3
    );

    let reply = server
        .post("/api/users")
        .token(&admin.token)
        .form(&[
            ("name", "Form"),
            ("email", "form@example.com"),
            ("password", PASSWORD),
            ("role", "user"),
        ])
        .send()
        .await;
    assert_eq!(user_body(&reply, 201)["role"], "user");
}
}

store_test! {
async fn create_refuses_unknown_fields_duplicates_bad_roles_and_bad_input() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    server.register("Mike", "mike@example.com").await;
    let base = |extra: Value| {
        let mut body = json!({"name": "New", "email": "new@example.com", "password": PASSWORD});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    let cases = [
        (base(json!({"nickname": "x"})), "nickname"),
        (base(json!({"_id": MISSING_ID})), "_id"),
        (base(json!({"role": "superuser"})), "role"),
        (base(json!({"role": 1})), "role"),
        (base(json!({"name": ""})), "name"),
        (base(json!({"email": "nope"})), "email"),
        (base(json!({"password": "short"})), "password"),
        (
            json!({"name": "New", "email": "new@example.com"}),
            "password",
        ),
        (
            json!({"email": "new@example.com", "password": PASSWORD}),
            "name",
        ),
    ];
    for (body, field) in cases {
        let reply = server
            .post("/api/users")
            .token(&admin.token)
            .json(body.clone())
            .send()
            .await;
        reply.assert_error(400, "invalid_input");
        let message = reply.body["message"].as_str().unwrap();
        assert!(message.contains(field), "{body}: {message}");
    }
    for email in ["mike@example.com", "MIKE@Example.COM", "admin@example.com"] {
        server
            .post("/api/users")
            .token(&admin.token)
            .json(base(json!({"email": email})))
            .send()
            .await
            .assert_error(409, "email_taken");
    }
    // None of it created anyone: the admin and Mike only.
    assert_eq!(all_ids(&server, &admin).await.len(), 2);
}
}

// --- GET /api/users -------------------------------------------------------------------

store_test! {
async fn the_list_is_ordered_by_id_and_limit_is_bounded() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    let mut ids = seed(&server, &admin, 4).await;
    ids.push(admin.id.clone());
    ids.sort();
    let list = |query: &str| {
        server
            .get(&format!("/api/users{query}"))
            .token(&admin.token)
            .send()
    };

    let reply = list("").await;
    assert_eq!(list_ids(&reply), ids);
    assert_eq!(reply.header("link"), None);

    for bad in ["0", "1001", "abc", "-1", "", "2.5"] {
        let reply = list(&format!("?limit={bad}")).await;
        reply.assert_error(400, "invalid_input");
        assert!(
            reply.body["message"].as_str().unwrap().contains("limit"),
            "{}",
            reply.text
        );
    }
    assert_eq!(list_ids(&list("?limit=1").await), ids[..1]);
    assert_eq!(list_ids(&list("?limit=1000").await), ids);

    // Exactly as many as the limit: no next page. One fewer: a next page.
    assert_eq!(next_link(&server, &list("?limit=5").await), None);
    let reply = list("?limit=4").await;
    assert_eq!(list_ids(&reply), ids[..4]);
    let next = next_link(&server, &reply).expect("a next link");
    let last = server.get(&next).token(&admin.token).send().await;
    assert_eq!(list_ids(&last), ids[4..]);
    assert_eq!(last.header("link"), None);

    // `after` starts past the given id, whatever it is.
    assert_eq!(
        list_ids(&list(&format!("?after={}", ids[1])).await),
        ids[2..]
    );
    assert_eq!(
        list_ids(&list(&format!("?after={}", ids[4])).await),
        Vec::<String>::new()
    );
    assert_eq!(
        list_ids(&list(&format!("?limit=2&after={}", ids[0])).await),
        ids[1..3]
    );
    // A cursor no id could be is refused before it reaches a store, which
    // might refuse it worse (PostgreSQL: SQLSTATE 22021 for a NUL).
    let long = "a".repeat(3000);
    for bad in ["%00", "a%00b", "%FF", "%20", "a/b", "", long.as_str()] {
        let reply = list(&format!("?after={bad}")).await;
        reply.assert_error(400, "invalid_input");
    }
}
}

store_test! {
async fn following_the_link_header_walks_every_user_exactly_once() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    seed(&server, &admin, 6).await;
    let everyone = all_ids(&server, &admin).await;
    assert_eq!(everyone.len(), 7);

    let mut seen = Vec::new();
    let mut pages = Vec::new();
    let mut next = Some("/api/users?limit=2".to_string());
    while let Some(path) = next {
        let reply = server.get(&path).token(&admin.token).send().await;
        let page = list_ids(&reply);
        pages.push(page.len());
        seen.extend(page);
        next = next_link(&server, &reply);
        assert!(pages.len() <= 4, "too many pages: {path}");
    }
    assert_eq!(pages, [2, 2, 2, 1]);
    assert_eq!(seen, everyone);
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 7);
}
}

store_test! {
async fn the_default_page_is_100() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    seed(&server, &admin, 100).await;

    let reply = server.get("/api/users").token(&admin.token).send().await;
    let first = list_ids(&reply);
    assert_eq!(first.len(), 100);
    let next = next_link(&server, &reply).expect("a next link after 100 of 101");
    assert!(next.contains("limit=100"), "{next}");
    let rest = server.get(&next).token(&admin.token).send().await;
    let rest = list_ids(&rest);
    assert_eq!(rest.len(), 1);
    assert!(first.last().unwrap() < &rest[0]);
}
}

store_test! {
async fn the_last_admin_can_be_neither_demoted_nor_deleted() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    let user = server.register("Mike", "mike@example.com").await;
    patch_user(&server, &admin.token, &admin.id, json!({"role": "user"}))
        .await
        .assert_error(409, "last_admin");
    server
        .put(&user_path(&admin.id))
        .token(&admin.token)
        .json(json!({"role": "user", "name": "Still Admin"}))
        .send()
        .await
        .assert_error(409, "last_admin");
    server
        .delete(&user_path(&admin.id))
        .token(&admin.token)
        .send()
        .await
        .assert_error(409, "last_admin");
    let reply = server.me(&admin.token).await;
    assert_eq!(user_body(&reply, 200)["role"], "admin");
    assert_eq!(reply.body["name"], "Admin", "a refused change changes nothing");
    // Setting `admin` on an admin is no demotion.
    let reply = patch_user(&server, &admin.token, &admin.id, json!({"role": "admin"})).await;
    assert_eq!(user_body(&reply, 200)["role"], "admin");
    // With a second admin, the first may step down, and then the second is last.
    patch_user(&server, &admin.token, &user.id, json!({"role": "admin"}))
        .await
        .assert_ok(200);
    patch_user(&server, &admin.token, &admin.id, json!({"role": "user"}))
        .await
        .assert_ok(200);
    server
        .delete(&user_path(&user.id))
        .token(&user.token)
        .send()
        .await
        .assert_error(409, "last_admin");
    // A plain user deletes themself as before.
    server
        .delete(&user_path(&admin.id))
        .token(&admin.token)
        .send()
        .await
        .assert_ok(200);
}
}

store_test! {
async fn two_admins_demoting_each_other_at_once_leave_one() {
    let server = TestServer::start().await;
    let first = server.admin().await;
    let second = server.register("Second", "second@example.com").await;
    for round in 0..8 {
        patch_user(&server, &first.token, &second.id, json!({"role": "admin"}))
            .await
            .assert_ok(200);
        let restore_by = |survivor: &str| if survivor == first.id { &first } else { &second };
        let replies = tokio::join!(
            patch_user(&server, &first.token, &second.id, json!({"role": "user"})),
            patch_user(&server, &second.token, &first.id, json!({"role": "user"})),
        );
        let statuses = [replies.0.status, replies.1.status];
        // The loser is refused by the last-admin rule (409), or, if the
        // winner committed before its token check, as a plain user (403).
        assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 1, "round {round}: {statuses:?}");
        assert!(statuses.iter().all(|s| [200, 403, 409].contains(s)), "{statuses:?}");
        let admins = all_ids_with_role(&server, [&first, &second], "admin").await;
        assert_eq!(admins.len(), 1, "round {round}: {statuses:?} left {admins:?}");
        // Make `first` the admin again for the next round.
        if admins[0] != first.id {
            let survivor = restore_by(&admins[0]);
            patch_user(&server, &survivor.token, &first.id, json!({"role": "admin"}))
                .await
                .assert_ok(200);
            patch_user(&server, &first.token, &survivor.id, json!({"role": "user"}))
                .await
                .assert_ok(200);
        }
    }
}
}

/// The ids among `users` that still exist with `role`, read by each user's
/// own token (an admin can read any of them; a user only itself).
async fn all_ids_with_role(server: &TestServer, users: [&TestUser; 2], role: &str) -> Vec<String> {
    let mut found = Vec::new();
    for user in users {
        let reply = server.me(&user.token).await;
        if reply.status == 200 && reply.body["role"] == role {
            found.push(user.id.clone());
        }
    }
    found
}

store_test! {
async fn changing_ones_own_password_or_email_needs_the_current_password() {
    let server = TestServer::start_with(|s| s.limits.login_failures_per_account = 3).await;
    let admin = server.admin().await;
    let mike = server.register("Mike", "mike@example.com").await;
    let path = user_path(&mike.id);
    // Without it: 400 naming the field, and nothing changes.
    for body in [
        json!({"password": NEW_PASSWORD}),
        json!({"email": "mike.new@example.com", "name": "Renamed"}),
    ] {
        let reply = patch_user(&server, &mike.token, &mike.id, body).await;
        reply.assert_error(400, "invalid_input");
        assert!(reply.text.contains("current_password"), "{}", reply.text);
    }
    let current = user_body(&server.me(&mike.token).await, 200).clone();
    assert_eq!((current["name"].as_str(), current["email"].as_str()), (Some("Mike"), Some("mike@example.com")));
    // A name alone, or the same email, needs no password.
    patch_user(&server, &mike.token, &mike.id, json!({"name": "Mikey", "email": "MIKE@example.com"}))
        .await
        .assert_ok(200);
    // A wrong one: 403, counted as a failed login; past the limit 429, even
    // with the right password, on this route and on login alike.
    for _ in 0..3 {
        server
            .put(&path)
            .token(&mike.token)
            .json(json!({"password": NEW_PASSWORD, "current_password": "wrong password"}))
            .send()
            .await
            .assert_error(403, "wrong_password");
    }
    let throttled = patch_user(
        &server,
        &mike.token,
        &mike.id,
        json!({"password": NEW_PASSWORD, "current_password": PASSWORD}),
    )
    .await;
    throttled.assert_error(429, "too_many_attempts");
    assert!(throttled.header("retry-after").is_some());
    server
        .post("/api/auth/login")
        .json(json!({"email": "mike@example.com", "password": PASSWORD}))
        .send()
        .await
        .assert_error(429, "too_many_attempts");
    // An admin changes someone else's password and email without theirs.
    patch_user(&server, &admin.token, &mike.id, json!({"password": NEW_PASSWORD, "email": "mike2@example.com"}))
        .await
        .assert_ok(200);
    // With the right current password (a fresh account, not throttled), the
    // change goes through and the old password stops working.
    let olga = server.register("Olga", "olga@example.com").await;
    patch_user(
        &server,
        &olga.token,
        &olga.id,
        json!({"password": NEW_PASSWORD, "current_password": PASSWORD}),
    )
    .await
    .assert_ok(200);
    assert_login_refused(
        &server
            .post("/api/auth/login")
            .json(json!({"email": "olga@example.com", "password": PASSWORD}))
            .send()
            .await,
    );
    // The admin changing their own email needs theirs.
    patch_user(&server, &admin.token, &admin.id, json!({"email": "boss@example.com"}))
        .await
        .assert_error(400, "invalid_input");
    patch_user(
        &server,
        &admin.token,
        &admin.id,
        json!({"email": "boss@example.com", "current_password": PASSWORD}),
    )
    .await
    .assert_ok(200);
}
}
