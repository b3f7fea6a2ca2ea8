//! Black-box tests of discovery (draft-payment-discovery-00): `GET /gw/{slug}/openapi.json`
//! from the real `turnpike serve` binary, on SQLite and on PostgreSQL. The document's
//! `x-payment-info` objects are validated against the spec's own JSON Schema.

// The test bodies are plain `async fn`s that macro-generated `#[tokio::test]`s call, which
// clippy's `allow-unwrap-in-tests` does not recognise as tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use reqwest::Method;
use serde_json::{Value, json};
use support::{Reply, Server, TP_PROBLEMS, Tenant};
use turnpike_protocol::parse_challenges;
use turnpike_store::on_both_databases;
use turnpike_store::testing::TestDb;

on_both_databases!(
    the_document_lists_gateway_routes_with_their_offers,
    prices_without_an_upstream_and_deleted_prices_are_absent,
    an_unknown_slug_or_a_gateway_without_paid_routes_is_a_404_problem,
    other_methods_on_the_document_path_still_reach_the_gateway,
);

/// Never called: the document only names it.
const UPSTREAM: &str = "http://upstream.test";

/// The JSON Schema for `x-payment-info`, as the spec's appendix gives it.
fn payment_info_schema() -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "x-payment-info",
        "oneOf": [
            { "$ref": "#/$defs/offer" },
            {
                "type": "object",
                "required": ["offers"],
                "properties": {
                    "offers": {
                        "type": "array",
                        "minItems": 1,
                        "items": { "$ref": "#/$defs/offer" }
                    }
                },
                "additionalProperties": false
            }
        ],
        "$defs": {
            "offer": {
                "type": "object",
                "required": ["intent", "method", "amount"],
                "properties": {
                    "intent": { "type": "string", "enum": ["charge", "session"] },
                    "method": { "type": "string" },
                    "amount": {
                        "oneOf": [
                            { "type": "null" },
                            { "type": "string", "pattern": "^(0|[1-9][0-9]*)$" }
                        ]
                    },
                    "currency": { "type": "string" },
                    "description": { "type": "string" }
                },
                "additionalProperties": false
            }
        }
    })
}

#[test]
fn the_schema_refuses_what_the_spec_forbids() {
    let validator = jsonschema::validator_for(&payment_info_schema()).unwrap();
    let offer = json!({"intent": "charge", "method": "turnpike", "amount": "250"});
    assert!(validator.is_valid(&json!({"offers": [offer]})));
    assert!(validator.is_valid(&offer));
    for bad in [
        json!({"offers": []}),
        json!({"offers": [{"intent": "charge", "method": "turnpike", "amount": "0250"}]}),
        json!({"offers": [{"intent": "subscription", "method": "turnpike", "amount": "1"}]}),
        json!({"offers": [{"intent": "charge", "method": "turnpike", "amount": 250}]}),
        json!({"offers": [{"intent": "charge", "method": "turnpike"}]}),
        json!({"offers": [offer], "extra": true}),
    ] {
        assert!(!validator.is_valid(&bad), "{bad}");
    }
}

async fn fetch(server: &Server, slug: &str) -> Reply {
    Server::read(server.gateway(Method::GET, slug, "/openapi.json")).await
}

/// A 200 document with the spec's headers and required fields, every `x-payment-info`
/// valid against the spec's schema and every operation declaring a `402`.
#[track_caller]
fn expect_document(reply: &Reply) -> Value {
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.header("content-type").as_deref(),
        Some("application/json"),
        "{reply:?}"
    );
    assert_eq!(
        reply.header("cache-control").as_deref(),
        Some("max-age=300")
    );
    assert_eq!(
        reply.header("access-control-allow-origin").as_deref(),
        Some("*")
    );
    let document = reply.json();
    assert_eq!(document["openapi"], "3.1.0", "{document}");
    assert!(document["info"]["title"].is_string(), "{document}");
    assert!(
        document["info"]["version"]
            .as_str()
            .is_some_and(|v| !v.is_empty()),
        "{document}"
    );
    let paths = document["paths"].as_object().expect("paths");
    assert!(!paths.is_empty(), "{document}");
    let validator = jsonschema::validator_for(&payment_info_schema()).expect("the spec's schema");
    for (path, item) in paths {
        let item = item.as_object().expect("a path item");
        assert!(!item.is_empty(), "{path}: {document}");
        for (op, operation) in item {
            let info = &operation["x-payment-info"];
            let errors: Vec<String> = validator.iter_errors(info).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "{op} {path}: {errors:?}\n{info}");
            assert!(
                operation["responses"]["402"]["description"].is_string(),
                "{op} {path}: {operation}"
            );
        }
    }
    document
}

fn path_keys(document: &Value) -> Vec<&str> {
    document["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .map(String::as_str)
        .collect()
}

fn operation_keys<'a>(document: &'a Value, path: &str) -> Vec<&'a str> {
    document["paths"][path]
        .as_object()
        .unwrap_or_else(|| panic!("no path item {path}: {document}"))
        .keys()
        .map(String::as_str)
        .collect()
}

async fn price(server: &Server, tenant: &Tenant, body: Value) -> Value {
    server.create_price(tenant, body).await
}

async fn the_document_lists_gateway_routes_with_their_offers(db: &TestDb) {
    let server = Server::start(db).await;
    let shop = server.create_tenant("shop").await;
    price(
        &server,
        &shop,
        json!({
            "route": {"method": "GET", "path": "/weather/{city}"},
            "amount": "250",
            "currency": "usd",
            "description": "Weather for one city",
            "upstreamUrl": UPSTREAM,
        }),
    )
    .await;
    price(
        &server,
        &shop,
        json!({
            "route": {"method": "POST", "path": "/v1/chat/{model}/completions"},
            "amount": "1200",
            "currency": "eur",
            "upstreamUrl": UPSTREAM,
        }),
    )
    .await;
    server
        .price(&shop, "*", "/files/*", 100, Some(UPSTREAM))
        .await;
    server
        .price(&shop, "DELETE", "/files/{name}", 900, Some(UPSTREAM))
        .await;

    let document = expect_document(&fetch(&server, "shop").await);
    assert_eq!(document["info"]["title"], "Tenant shop");
    let servers = document["servers"].as_array().expect("servers");
    assert_eq!(servers.len(), 1, "{document}");
    assert!(
        servers[0]["url"].as_str().unwrap().ends_with("/gw/shop"),
        "{document}"
    );
    assert_eq!(
        path_keys(&document),
        [
            "/files/{rest}",
            "/v1/chat/{model}/completions",
            "/weather/{city}"
        ]
    );

    let weather = &document["paths"]["/weather/{city}"];
    assert_eq!(operation_keys(&document, "/weather/{city}"), ["get"]);
    assert_eq!(
        weather["get"]["parameters"],
        json!([{"name": "city", "in": "path", "required": true, "schema": {"type": "string"}}])
    );
    assert!(weather["get"].get("requestBody").is_none(), "{weather}");
    assert_eq!(weather["get"]["summary"], "Weather for one city");
    assert_eq!(
        weather["get"]["x-payment-info"],
        json!({"offers": [{
            "intent": "charge",
            "method": "turnpike",
            "amount": "250",
            "currency": "usd",
            "description": "Weather for one city",
        }]})
    );

    let chat = &document["paths"]["/v1/chat/{model}/completions"]["post"];
    assert_eq!(chat["parameters"][0]["name"], "model");
    assert!(
        chat["requestBody"]["content"]
            .as_object()
            .is_some_and(|c| !c.is_empty()),
        "{chat}"
    );
    assert_eq!(
        chat["x-payment-info"]["offers"],
        json!([{"intent": "charge", "method": "turnpike", "amount": "1200", "currency": "eur"}])
    );

    // `*` stands for every OpenAPI operation; DELETE of one segment is the more specific
    // `DELETE /files/{name}`, whose parameter name the path item then uses.
    assert_eq!(
        operation_keys(&document, "/files/{rest}"),
        [
            "get", "put", "post", "delete", "options", "head", "patch", "trace"
        ]
    );
    let files = &document["paths"]["/files/{rest}"];
    assert_eq!(files["get"]["x-payment-info"]["offers"][0]["amount"], "100");
    assert_eq!(
        files["delete"]["x-payment-info"]["offers"][0]["amount"],
        "900"
    );
    assert!(files["put"]["requestBody"].is_object(), "{files}");
    assert!(files["delete"].get("requestBody").is_none(), "{files}");

    // The offers say what the gateway's 402 asks for.
    let challenge = Server::read(server.gateway(Method::GET, "shop", "/weather/paris"))
        .await
        .expect_status(402);
    let www = challenge.header_all("www-authenticate");
    let parsed = parse_challenges(&www[0]).unwrap().remove(0);
    let offer = &weather["get"]["x-payment-info"]["offers"][0];
    assert_eq!(offer["method"], parsed.method.as_str());
    assert_eq!(offer["intent"], parsed.intent.as_str());
    assert_eq!(offer["amount"], parsed.request_json()["amount"]);
    assert_eq!(offer["currency"], parsed.request_json()["currency"]);

    // The version follows the content.
    let version = document["info"]["version"].clone();
    assert_eq!(
        expect_document(&fetch(&server, "shop").await)["info"]["version"],
        version
    );
    server.price(&shop, "GET", "/news", 5, Some(UPSTREAM)).await;
    let changed = expect_document(&fetch(&server, "shop").await);
    assert!(path_keys(&changed).contains(&"/news"), "{changed}");
    assert_ne!(changed["info"]["version"], version);
}

async fn prices_without_an_upstream_and_deleted_prices_are_absent(db: &TestDb) {
    let server = Server::start(db).await;
    let shop = server.create_tenant("shop").await;
    server
        .price(&shop, "GET", "/paid/{id}", 250, Some(UPSTREAM))
        .await;
    // Priced for /v1/verify only: not a gateway route.
    server.price(&shop, "GET", "/verify-only", 250, None).await;
    // The same route without an upstream, created first: the gateway charges it, so it 404s.
    server.price(&shop, "PUT", "/shadowed", 250, None).await;
    server
        .price(&shop, "PUT", "/shadowed", 300, Some(UPSTREAM))
        .await;
    let deleted = server
        .price(&shop, "GET", "/deleted", 250, Some(UPSTREAM))
        .await;
    let unlinked = server
        .price(&shop, "GET", "/unlinked", 250, Some(UPSTREAM))
        .await;
    let all = expect_document(&fetch(&server, "shop").await);
    assert_eq!(path_keys(&all), ["/deleted", "/paid/{id}", "/unlinked"]);

    server
        .call(
            Method::DELETE,
            &format!("/v1/prices/{}", deleted["id"].as_str().unwrap()),
            Some(&shop.key),
            None,
        )
        .await
        .expect_status(200);
    server
        .call(
            Method::PATCH,
            &format!("/v1/prices/{}", unlinked["id"].as_str().unwrap()),
            Some(&shop.key),
            Some(json!({"upstreamUrl": null})),
        )
        .await
        .expect_status(200);
    let document = expect_document(&fetch(&server, "shop").await);
    assert_eq!(path_keys(&document), ["/paid/{id}"]);
    let shadowed = Server::read(server.gateway(Method::PUT, "shop", "/shadowed")).await;
    shadowed.expect_problem(404, &format!("{TP_PROBLEMS}no-matching-price"));
}

async fn an_unknown_slug_or_a_gateway_without_paid_routes_is_a_404_problem(db: &TestDb) {
    let server = Server::start(db).await;
    let unknown = fetch(&server, "nobody").await;
    let problem = unknown.expect_problem(404, &format!("{TP_PROBLEMS}not-found"));
    // The same answer as the gateway's for that slug.
    let gateway = Server::read(server.gateway(Method::GET, "nobody", "/weather")).await;
    assert_eq!(
        gateway.expect_problem(404, &format!("{TP_PROBLEMS}not-found")),
        problem
    );
    assert_eq!(
        unknown.header("access-control-allow-origin").as_deref(),
        Some("*")
    );

    let shop = server.create_tenant("shop").await;
    fetch(&server, "shop")
        .await
        .expect_problem(404, &format!("{TP_PROBLEMS}not-found"));
    server.price(&shop, "GET", "/verify-only", 250, None).await;
    fetch(&server, "shop")
        .await
        .expect_problem(404, &format!("{TP_PROBLEMS}not-found"));
}

async fn other_methods_on_the_document_path_still_reach_the_gateway(db: &TestDb) {
    let server = Server::start(db).await;
    let shop = server.create_tenant("shop").await;
    server
        .price(&shop, "*", "/openapi.json", 250, Some(UPSTREAM))
        .await;
    let post = Server::read(server.gateway(Method::POST, "shop", "/openapi.json"))
        .await
        .expect_status(402);
    assert_eq!(post.header_all("www-authenticate").len(), 1, "{post:?}");
    // GET and HEAD of this path are the document's, so the document does not offer them.
    let document = expect_document(&fetch(&server, "shop").await);
    assert_eq!(
        operation_keys(&document, "/openapi.json"),
        ["put", "post", "delete", "options", "patch", "trace"]
    );
    let head = Server::read(server.gateway(Method::HEAD, "shop", "/openapi.json"))
        .await
        .expect_status(200);
    assert_eq!(
        head.header("content-type").as_deref(),
        Some("application/json")
    );
}
