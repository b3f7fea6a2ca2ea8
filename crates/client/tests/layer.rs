//! `PaymentLayer` against an in-process fake Turnpike.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::*;
use serde_json::{Value, json};
use turnpike_client::{BODY_BYTES_MAX, PaidRequest, PaymentLayer, UNAVAILABLE_PROBLEM_TYPE};
use turnpike_protocol::ContentDigest;

fn get(uri: &str) -> axum::http::request::Builder {
    Request::builder().method("GET").uri(uri)
}

fn header_values(headers: &axum::http::HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

fn json_body(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

/// A 503 problem that leaks neither the API key nor a credential.
fn assert_fails_closed(status: StatusCode, headers: &axum::http::HeaderMap, body: &[u8]) {
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        header_values(headers, "content-type"),
        ["application/problem+json"]
    );
    assert!(header_values(headers, "payment-receipt").is_empty());
    let text = std::str::from_utf8(body).unwrap();
    assert!(!text.contains(API_KEY) && !text.contains("eyJjaGFsbGVuZ2Ui"));
    let problem = json_body(body);
    assert_eq!(problem["type"], UNAVAILABLE_PROBLEM_TYPE);
    assert_eq!(problem["status"], 503);
}

#[tokio::test]
async fn no_credential_gets_the_challenge_decision_as_is() {
    let fake = FakeTurnpike::start().await;
    let merchant = Merchant::new(PaymentLayer::new(fake.client()));

    let (status, headers, body) = merchant
        .send(
            get("/weather/paris?units=metric")
                .header("accept-payment", "turnpike/charge")
                .header("accept-payment", "stripe/*;q=0.5")
                .body(Body::empty())
                .unwrap(),
        )
        .await;

    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    let challenges = header_values(&headers, "www-authenticate");
    assert_eq!(challenges.len(), 2);
    assert!(challenges[0].contains("ch_a") && challenges[1].contains("ch_b"));
    assert_eq!(header_values(&headers, "cache-control"), ["no-store"]);
    assert_eq!(
        header_values(&headers, "content-type"),
        ["application/problem+json"]
    );
    assert_eq!(json_body(&body), payment_required_decision()["body"]);
    assert!(merchant.seen().is_empty(), "the paid handler must not run");

    let call = fake.only_call();
    assert_eq!(call.endpoint, "/v1/challenges");
    assert_eq!(
        call.body,
        json!({
            "method": "GET",
            "path": "/weather/paris",
            "acceptPayment": "turnpike/charge, stripe/*;q=0.5"
        })
    );
    assert_eq!(
        call.authorization.as_deref(),
        Some(&*format!("Bearer {API_KEY}"))
    );
}

#[tokio::test]
async fn free_route_never_calls_turnpike() {
    let fake = FakeTurnpike::start().await;
    let merchant = Merchant::new(PaymentLayer::new(fake.client()));
    let (status, _, body) = merchant.send(get("/").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"free");
    assert!(fake.received().is_empty());
}

#[tokio::test]
async fn paid_request_runs_the_handler_with_receipt_and_private_caching() {
    let fake = FakeTurnpike::start().await;
    let merchant = Merchant::new(PaymentLayer::new(fake.client()));

    let (status, headers, body) = merchant
        .send(
            get("/weather/paris")
                .header("authorization", CREDENTIAL_A)
                .body(Body::empty())
                .unwrap(),
        )
        .await;

    assert_eq!(status, StatusCode::OK);
    assert_eq!(json_body(&body), json!({"ok": true}));
    assert_eq!(header_values(&headers, "payment-receipt"), [RECEIPT]);
    // The handler's own `public, max-age=60` is replaced: a receipt response MUST be private.
    assert_eq!(header_values(&headers, "cache-control"), ["private"]);

    let seen = merchant.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].paid,
        Some(PaidRequest {
            payment_id: PAYMENT_ID.to_owned()
        })
    );
    assert!(
        seen[0].authorization.is_empty(),
        "the credential is not passed on to the handler"
    );

    let call = fake.only_call();
    assert_eq!(call.endpoint, "/v1/verify");
    assert_eq!(
        call.body,
        json!({"authorization": CREDENTIAL_A, "method": "GET", "path": "/weather/paris"})
    );
    assert_eq!(call.idempotency_key, None);
}

#[tokio::test]
async fn paid_request_whose_handler_fails_gets_no_receipt() {
    let fake = FakeTurnpike::start().await;
    let merchant = Merchant::new(PaymentLayer::new(fake.client()));

    let (status, headers, _) = merchant
        .send(
            get("/broken")
                .header("authorization", CREDENTIAL_A)
                .body(Body::empty())
                .unwrap(),
        )
        .await;

    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(header_values(&headers, "payment-receipt").is_empty());
    assert!(header_values(&headers, "cache-control").is_empty());
    assert_eq!(merchant.seen().len(), 1, "the handler ran once");
}

#[tokio::test]
async fn bearer_only_authorization_is_treated_as_no_credential() {
    let fake = FakeTurnpike::start().await;
    let merchant = Merchant::new(PaymentLayer::new(fake.client()));

    let (status, _, _) = merchant
        .send(
            get("/weather/paris")
                .header("authorization", "Bearer merchant-user-token")
                .body(Body::empty())
                .unwrap(),
        )
        .await;

    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    let call = fake.only_call();
    assert_eq!(call.endpoint, "/v1/challenges");
    assert!(!call.body.to_string().contains("merchant-user-token"));
    assert!(merchant.seen().is_empty());
}

#[tokio::test]
async fn payment_scheme_is_matched_case_insensitively_and_other_schemes_stay_with_the_handler() {
    let fake = FakeTurnpike::start().await;
    let merchant = Merchant::new(PaymentLayer::new(fake.client()));
    let lowercase = CREDENTIAL_A.replacen("Payment", "payment", 1);

    let (status, _, _) = merchant
        .send(
            get("/weather/paris")
                .header("authorization", "Bearer merchant-user-token")
                .header("authorization", &lowercase)
                .body(Body::empty())
                .unwrap(),
        )
        .await;

    assert_eq!(status, StatusCode::OK);
    let call = fake.only_call();
    assert_eq!(call.endpoint, "/v1/verify");
    assert_eq!(call.body["authorization"], json!(lowercase));
    assert_eq!(
        merchant.seen()[0].authorization,
        ["Bearer merchant-user-token"]
    );
}

#[tokio::test]
async fn two_payment_credentials_are_both_forwarded_as_an_array() {
    let fake = FakeTurnpike::start().await;
    fake.set_verify_answer(
        200,
        json!({
            "decision": "bad_request",
            "status": 400,
            "headers": [["Content-Type", "application/problem+json"], ["Cache-Control", "no-store"]],
            "body": {"type": "https://turnpike.dev/problems/invalid-request", "title": "Bad Request", "status": 400, "detail": "several Payment credentials"}
        }),
    );
    let merchant = Merchant::new(PaymentLayer::new(fake.client()));

    let (status, headers, body) = merchant
        .send(
            get("/weather/paris")
                .header("authorization", CREDENTIAL_A)
                .header("authorization", "Bearer merchant-user-token")
                .header("authorization", CREDENTIAL_B)
                .body(Body::empty())
                .unwrap(),
        )
        .await;

    let call = fake.only_call();
    assert_eq!(call.endpoint, "/v1/verify");
    assert_eq!(
        call.body["authorization"],
        json!([CREDENTIAL_A, CREDENTIAL_B])
    );
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(header_values(&headers, "cache-control"), ["no-store"]);
    assert_eq!(json_body(&body)["detail"], "several Payment credentials");
    assert!(merchant.seen().is_empty());
}

#[tokio::test]
async fn failed_verification_is_returned_as_is_without_running_the_handler() {
    let fake = FakeTurnpike::start().await;
    let mut decision = payment_required_decision();
    decision["body"]["type"] = json!("https://paymentauth.org/problems/verification-failed");
    fake.set_verify_answer(200, decision.clone());
    let merchant = Merchant::new(PaymentLayer::new(fake.client()));

    let (status, headers, body) = merchant
        .send(
            get("/weather/paris")
                .header("authorization", CREDENTIAL_A)
                .body(Body::empty())
                .unwrap(),
        )
        .await;

    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(header_values(&headers, "www-authenticate").len(), 2);
    assert_eq!(json_body(&body), decision["body"]);
    assert!(merchant.seen().is_empty());
}

#[tokio::test]
async fn forbidden_decision_is_returned_as_is() {
    let fake = FakeTurnpike::start().await;
    fake.set_verify_answer(
        200,
        json!({
            "decision": "forbidden",
            "status": 403,
            "headers": [["Content-Type", "application/problem+json"]],
            "body": {"type": "https://turnpike.dev/problems/credential-replayed", "title": "Forbidden", "status": 403}
        }),
    );
    let merchant = Merchant::new(PaymentLayer::new(fake.client()));
    let (status, headers, _) = merchant
        .send(
            get("/weather/paris")
                .header("authorization", CREDENTIAL_A)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(header_values(&headers, "payment-receipt").is_empty());
    assert!(merchant.seen().is_empty());
}

#[tokio::test]
async fn turnpike_down_fails_closed_with_503_and_the_handler_never_runs() {
    install_crypto_provider();
    // A port nothing listens on: bind, note it, close.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let client = turnpike_client::TurnpikeClient::new(&url, API_KEY).unwrap();
    let merchant = Merchant::new(PaymentLayer::new(client));

    for authorization in [None, Some(CREDENTIAL_A)] {
        let mut request = get("/weather/paris");
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        let (status, headers, body) = merchant.send(request.body(Body::empty()).unwrap()).await;
        assert_fails_closed(status, &headers, &body);
    }
    assert!(merchant.seen().is_empty());
}

#[tokio::test]
async fn turnpike_error_answers_fail_closed_with_503() {
    let fake = FakeTurnpike::start().await;
    let problem = |status: u16, code: &str| json!({"type": format!("https://turnpike.dev/problems/{code}"), "title": code, "status": status});
    fake.set_challenge_answer(404, problem(404, "no-matching-price"));
    fake.set_verify_answer(401, problem(401, "unauthorized"));
    let merchant = Merchant::new(PaymentLayer::new(fake.client()));

    let (status, headers, body) = merchant
        .send(get("/weather/paris").body(Body::empty()).unwrap())
        .await;
    assert_fails_closed(status, &headers, &body);

    let (status, headers, body) = merchant
        .send(
            get("/weather/paris")
                .header("authorization", CREDENTIAL_A)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_fails_closed(status, &headers, &body);

    fake.set_verify_answer(
        200,
        json!({"decision": "paid", "status": 200, "headers": []}),
    );
    let (status, headers, body) = merchant
        .send(
            get("/weather/paris")
                .header("authorization", CREDENTIAL_A)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_fails_closed(status, &headers, &body);
    assert!(merchant.seen().is_empty());
}

#[tokio::test]
async fn slow_turnpike_times_out_and_fails_closed() {
    let fake = FakeTurnpike::start().await;
    fake.set_delay(Duration::from_secs(5));
    let merchant = Merchant::new(PaymentLayer::new(
        fake.client_with_timeout(Duration::from_millis(200)),
    ));
    let started = std::time::Instant::now();
    let (status, headers, body) = merchant
        .send(
            get("/weather/paris")
                .header("authorization", CREDENTIAL_A)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_fails_closed(status, &headers, &body);
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(merchant.seen().is_empty());
}

#[tokio::test]
async fn body_digest_sent_is_the_sha256_of_the_body_and_the_handler_gets_the_body() {
    let fake = FakeTurnpike::start().await;
    let merchant = Merchant::new(PaymentLayer::new(fake.client()));
    let body = br#"{"text": "the quick brown fox jumps over the lazy dog"}"#;
    let expected_digest = ContentDigest::sha256(body).to_header_value();

    let post = || {
        Request::builder()
            .method("POST")
            .uri("/summarize")
            .header("content-type", "application/json")
    };
    let (status, _, _) = merchant
        .send(post().body(Body::from(&body[..])).unwrap())
        .await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    let (status, _, _) = merchant
        .send(
            post()
                .header("authorization", CREDENTIAL_A)
                .body(Body::from(&body[..]))
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let calls = fake.received();
    assert_eq!(calls.len(), 2);
    for call in &calls {
        assert_eq!(call.body["method"], "POST");
        assert_eq!(call.body["path"], "/summarize");
        assert_eq!(call.body["bodyDigest"], json!(expected_digest));
    }
    assert!(
        ContentDigest::parse(calls[0].body["bodyDigest"].as_str().unwrap())
            .unwrap()
            .matches(body)
    );
    assert_eq!(&merchant.seen()[0].body[..], &body[..]);
}

#[tokio::test]
async fn empty_body_sends_no_digest() {
    let fake = FakeTurnpike::start().await;
    let merchant = Merchant::new(PaymentLayer::new(fake.client()));
    merchant
        .send(get("/weather/paris").body(Body::empty()).unwrap())
        .await;
    assert!(fake.only_call().body.get("bodyDigest").is_none());
}

#[tokio::test]
async fn idempotency_key_is_forwarded_to_verify() {
    let fake = FakeTurnpike::start().await;
    let merchant = Merchant::new(PaymentLayer::new(fake.client()));
    let (status, _, _) = merchant
        .send(
            Request::builder()
                .method("POST")
                .uri("/summarize")
                .header("authorization", CREDENTIAL_A)
                .header("idempotency-key", "order-42")
                .body(Body::from("hello"))
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let call = fake.only_call();
    assert_eq!(call.endpoint, "/v1/verify");
    assert_eq!(call.idempotency_key.as_deref(), Some("order-42"));
}

#[tokio::test]
async fn body_over_the_limit_gets_413_without_calling_turnpike() {
    let fake = FakeTurnpike::start().await;
    let merchant = Merchant::new(PaymentLayer::new(fake.client()));
    let too_big = vec![b'x'; BODY_BYTES_MAX + 1];

    // Once with a declared Content-Length (refused before reading), once without (read up to the limit).
    let declared = Request::builder()
        .method("POST")
        .uri("/summarize")
        .header("content-length", too_big.len())
        .body(Body::from(too_big.clone()))
        .unwrap();
    let streamed = Request::builder()
        .method("POST")
        .uri("/summarize")
        .body(Body::from(too_big))
        .unwrap();

    for request in [declared, streamed] {
        let (status, headers, body) = merchant.send(request).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            header_values(&headers, "content-type"),
            ["application/problem+json"]
        );
        assert_eq!(json_body(&body)["status"], 413);
    }
    assert!(fake.received().is_empty());
    assert!(merchant.seen().is_empty());
}

#[tokio::test]
async fn path_prefix_strip_removes_the_mount_prefix() {
    let fake = FakeTurnpike::start().await;
    let merchant = Merchant::new(PaymentLayer::new(fake.client()).path_prefix_strip("/weather/"));
    merchant
        .send(get("/weather/paris").body(Body::empty()).unwrap())
        .await;
    assert_eq!(fake.only_call().body["path"], "/paris");
}
