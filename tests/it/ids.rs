//! User ids: only the spelling gatehouse issued (lowercase, hyphenated)
//! names a user, on both stores; every other spelling of the same UUID is an
//! unknown id.

use serde_json::json;

use crate::support::*;

store_test! {
async fn only_the_issued_spelling_of_an_id_names_a_user() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    let user = server.register("Spelled", "spelled@example.com").await;
    let uuid = uuid::Uuid::parse_str(&user.id).unwrap();
    assert_eq!(uuid.to_string(), user.id, "ids are issued lowercase, hyphenated");
    let spellings = [
        user.id.to_uppercase(),
        format!("{{{}}}", user.id),
        format!("urn:uuid:{}", user.id),
        uuid.simple().to_string(),
    ];
    for spelling in &spellings {
        let path = format!("/api/users/{spelling}");
        server
            .get(&path)
            .token(&admin.token)
            .send()
            .await
            .assert_error(404, "not_found");
        server
            .patch(&path)
            .token(&admin.token)
            .json(json!({"name": "Renamed"}))
            .send()
            .await
            .assert_error(404, "not_found");
        server
            .delete(&path)
            .token(&admin.token)
            .send()
            .await
            .assert_error(404, "not_found");
    }
    let unchanged = server
        .get(&format!("/api/users/{}", user.id))
        .token(&admin.token)
        .send()
        .await;
    unchanged.assert_ok(200);
    assert_eq!(unchanged.body["name"], "Spelled");
    server
        .get("/api/auth/me")
        .token(&user.token)
        .send()
        .await
        .assert_ok(200);
}
}
