//! The OpenAPI document: served as shipped, and in step with the route table
//! (every route documented, nothing documented that is not routed), with the
//! security of each operation matching the router's public/protected split.

use std::collections::BTreeSet;

use gatehouse::api::openapi::OPENAPI_JSON;
use gatehouse::api::routes::ROUTES;
use serde_json::Value;

use crate::support::*;

/// The keys of an OpenAPI path item that are operations.
const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn document() -> Value {
    serde_json::from_str(OPENAPI_JSON).expect("openapi.json is JSON")
}

/// Every (METHOD, path, operation) in the document.
fn operations(doc: &Value) -> Vec<(String, String, &Value)> {
    let paths = doc["paths"].as_object().expect("paths is an object");
    let mut found = Vec::new();
    for (path, item) in paths {
        let item = item.as_object().expect("a path item is an object");
        for (key, operation) in item {
            if METHODS.contains(&key.as_str()) {
                found.push((key.to_uppercase(), path.clone(), operation));
            }
        }
    }
    found
}

/// Follows a local `$ref` (`#/components/...`) to what it names.
fn resolve<'d>(doc: &'d Value, reference: &str) -> Option<&'d Value> {
    doc.pointer(reference.strip_prefix('#')?)
}

#[tokio::test]
async fn the_document_is_served_as_shipped() {
    let server = TestServer::start().await;
    let reply = server.get("/api/openapi.json").send().await;
    reply.assert_ok(200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(
        reply.text, OPENAPI_JSON,
        "served bytes differ from the file"
    );
    let version = reply.body["openapi"].as_str().expect("openapi field");
    assert!(version.starts_with("3.1."), "openapi = {version}");
}

#[test]
fn documented_operations_are_exactly_the_routes() {
    let doc = document();
    let documented: BTreeSet<(String, String)> = operations(&doc)
        .into_iter()
        .map(|(method, path, _)| (method, path))
        .collect();
    let routed: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|route| (route.method.as_str().to_string(), route.path.to_string()))
        .collect();
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(
        undocumented.is_empty() && unrouted.is_empty(),
        "routes missing from openapi.json: {undocumented:?}; \
         documented but not routed: {unrouted:?}"
    );
}

#[test]
fn every_operation_has_responses_and_the_security_of_its_route() {
    let doc = document();
    assert!(
        doc.get("security").is_none(),
        "no document-wide security: public routes would inherit it"
    );
    let schemes = doc["components"]["securitySchemes"]
        .as_object()
        .expect("security schemes");
    assert_eq!(schemes["accessToken"]["type"], "apiKey");
    assert_eq!(schemes["accessToken"]["in"], "header");
    assert_eq!(schemes["accessToken"]["name"], "x-access-token");
    assert_eq!(schemes["bearerAuth"]["type"], "http");
    assert_eq!(schemes["bearerAuth"]["scheme"], "bearer");

    for (method, path, operation) in operations(&doc) {
        let label = format!("{method} {path}");
        let responses = operation["responses"].as_object();
        assert!(
            responses.is_some_and(|r| !r.is_empty()),
            "{label} declares no responses"
        );
        let route = ROUTES
            .iter()
            .find(|r| r.method.as_str() == method && r.path == path)
            .unwrap_or_else(|| panic!("{label} is not routed"));
        match route.is_protected() {
            true => {
                let security = operation["security"]
                    .as_array()
                    .unwrap_or_else(|| panic!("{label} is protected but declares no security"));
                let named: BTreeSet<&str> = security
                    .iter()
                    .flat_map(|requirement| requirement.as_object().unwrap().keys())
                    .map(String::as_str)
                    .collect();
                assert_eq!(
                    named,
                    BTreeSet::from(["accessToken", "bearerAuth"]),
                    "{label}: either token header must do"
                );
                assert!(
                    responses.unwrap().contains_key("401"),
                    "{label} is protected but does not document 401"
                );
            }
            false => assert!(
                operation.get("security").is_none(),
                "{label} is public but declares security"
            ),
        }
    }
}

#[test]
fn every_error_code_is_documented_and_every_documented_code_exists() {
    let doc = document();
    let documented: BTreeSet<&str> = doc["components"]["schemas"]["Error"]["properties"]["error"]
        ["enum"]
        .as_array()
        .expect("the Error schema lists its codes")
        .iter()
        .map(|code| code.as_str().unwrap())
        .collect();
    let kinds = gatehouse::http::error::ApiError::every_kind();
    let codes: BTreeSet<&str> = kinds.iter().map(|e| e.code()).collect();
    assert_eq!(
        codes, documented,
        "ApiError codes vs the OpenAPI Error enum"
    );
}

#[test]
fn every_reference_resolves() {
    fn walk<'d>(value: &'d Value, refs: &mut Vec<&'d str>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(reference)) = map.get("$ref") {
                    refs.push(reference);
                }
                map.values().for_each(|v| walk(v, refs));
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, refs)),
            _ => {}
        }
    }
    let doc = document();
    let mut refs = Vec::new();
    walk(&doc, &mut refs);
    assert!(!refs.is_empty());
    for reference in refs {
        assert!(
            resolve(&doc, reference).is_some(),
            "dangling $ref {reference}"
        );
    }
}
