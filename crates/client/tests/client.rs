//! `TurnpikeClient` and the wire types against an in-process fake Turnpike.

#![allow(clippy::unwrap_used)]

mod common;

use axum::body::Body;
use axum::http::{Response, StatusCode};
use common::*;
use serde_json::json;
use turnpike_client::{
    ChallengeQuery, ClientError, Decision, DecisionKind, TurnpikeClient, VerifyQuery,
};

fn verify_query(authorization: &[&str]) -> VerifyQuery {
    VerifyQuery {
        authorization: authorization.iter().map(|s| (*s).to_owned()).collect(),
        method: "GET".to_owned(),
        path: "/weather/paris".to_owned(),
        body_digest: None,
        accept_payment: None,
    }
}

#[test]
fn verify_query_sends_one_credential_as_a_string_and_several_as_an_array() {
    let one = serde_json::to_value(verify_query(&[CREDENTIAL_A])).unwrap();
    assert_eq!(
        one,
        json!({"authorization": CREDENTIAL_A, "method": "GET", "path": "/weather/paris"})
    );
    let two = serde_json::to_value(verify_query(&[CREDENTIAL_A, CREDENTIAL_B])).unwrap();
    assert_eq!(two["authorization"], json!([CREDENTIAL_A, CREDENTIAL_B]));
    for value in [one, two] {
        let back: VerifyQuery = serde_json::from_value(value.clone()).unwrap();
        assert_eq!(serde_json::to_value(back).unwrap(), value);
    }
}

#[test]
fn challenge_query_uses_camel_case_and_omits_absent_fields() {
    let query = ChallengeQuery {
        method: "POST".to_owned(),
        path: "/summarize".to_owned(),
        accept_payment: Some("turnpike/charge".to_owned()),
        body_digest: Some("sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:".to_owned()),
    };
    assert_eq!(
        serde_json::to_value(&query).unwrap(),
        json!({
            "method": "POST",
            "path": "/summarize",
            "acceptPayment": "turnpike/charge",
            "bodyDigest": "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"
        })
    );
    let bare = ChallengeQuery {
        accept_payment: None,
        body_digest: None,
        ..query
    };
    assert_eq!(
        serde_json::to_value(&bare).unwrap(),
        json!({"method": "POST", "path": "/summarize"})
    );
}

#[test]
fn decision_parses_the_documented_shapes() {
    let required: Decision = serde_json::from_value(payment_required_decision()).unwrap();
    assert_eq!(required.decision, DecisionKind::PaymentRequired);
    assert_eq!(required.status, 402);
    assert_eq!(required.challenge_ids, ["ch_a", "ch_b"]);
    assert_eq!(required.payment_id, None);
    assert!(!required.is_paid());

    let paid: Decision = serde_json::from_value(paid_decision()).unwrap();
    assert_eq!(paid.decision, DecisionKind::Paid);
    assert_eq!(paid.payment_id.as_deref(), Some(PAYMENT_ID));
    assert!(paid.challenge_ids.is_empty());
    assert_eq!(paid.body, None);
    assert_eq!(
        paid.headers,
        [
            ("Payment-Receipt".to_owned(), RECEIPT.to_owned()),
            ("Cache-Control".to_owned(), "private".to_owned())
        ]
    );
    for kind in ["paid", "payment_required", "forbidden", "bad_request"] {
        let parsed: DecisionKind = serde_json::from_value(json!(kind)).unwrap();
        assert_eq!(serde_json::to_value(parsed).unwrap(), json!(kind));
    }
}

#[tokio::test]
async fn decision_into_response_keeps_status_header_order_and_body() {
    let decision: Decision = serde_json::from_value(payment_required_decision()).unwrap();
    let response: Response<Body> = decision.into_response();
    assert_eq!(response.status(), StatusCode::PAYMENT_REQUIRED);
    let challenges: Vec<_> = response
        .headers()
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert!(challenges[0].contains("ch_a") && challenges[1].contains("ch_b"));
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body, payment_required_decision()["body"]);

    // A body without a Content-Type pair still goes out as problem+json.
    let bare = Decision {
        headers: Vec::new(),
        ..serde_json::from_value(payment_required_decision()).unwrap()
    };
    let response: Response<Body> = bare.into_response();
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
}

#[test]
fn debug_output_hides_the_api_key_credentials_and_receipts() {
    install_crypto_provider();
    let client = TurnpikeClient::new("http://127.0.0.1:8402", API_KEY).unwrap();
    let client_debug = format!("{client:?}");
    assert!(!client_debug.contains(API_KEY), "{client_debug}");
    assert!(client_debug.contains("127.0.0.1:8402"));

    let query_debug = format!("{:?}", verify_query(&[CREDENTIAL_A, CREDENTIAL_B]));
    assert!(!query_debug.contains("eyJjaGFsbGVuZ2Ui"), "{query_debug}");
    assert!(query_debug.contains("/weather/paris"));

    let paid: Decision = serde_json::from_value(paid_decision()).unwrap();
    let decision_debug = format!("{paid:?}");
    assert!(!decision_debug.contains(RECEIPT), "{decision_debug}");
    assert!(decision_debug.contains(PAYMENT_ID));
}

#[test]
fn bad_configuration_is_refused_without_echoing_secrets() {
    install_crypto_provider();
    let refused = [
        ("ftp://turnpike.example", API_KEY),
        ("not a url", API_KEY),
        ("https://user:hunter2@turnpike.example", API_KEY),
        ("https://turnpike.example?x=1", API_KEY),
        ("https://turnpike.example", ""),
        ("https://turnpike.example", "tp_sk_bad\nkey"),
    ];
    for (base_url, api_key) in refused {
        let error = TurnpikeClient::new(base_url, api_key).unwrap_err();
        assert!(matches!(error, ClientError::Config(_)), "{error:?}");
        let text = format!("{error} {error:?}");
        assert!(
            !text.contains("hunter2") && !text.contains("tp_sk_"),
            "{text}"
        );
    }
}

#[tokio::test]
async fn client_calls_both_endpoints_with_the_api_key() {
    let fake = FakeTurnpike::start().await;
    // A trailing slash on the base URL is fine.
    let client = TurnpikeClient::new(&format!("{}/", fake.url()), API_KEY).unwrap();
    let challenge = ChallengeQuery {
        method: "GET".to_owned(),
        path: "/weather/paris".to_owned(),
        accept_payment: None,
        body_digest: None,
    };
    let required = client.challenge(&challenge).await.unwrap();
    assert_eq!(required.decision, DecisionKind::PaymentRequired);
    let paid = client
        .verify(&verify_query(&[CREDENTIAL_A]), Some("retry-1"))
        .await
        .unwrap();
    assert_eq!(paid.payment_id.as_deref(), Some(PAYMENT_ID));

    let calls = fake.received();
    assert_eq!(calls.len(), 2);
    assert_eq!(
        (calls[0].endpoint, calls[1].endpoint),
        ("/v1/challenges", "/v1/verify")
    );
    for call in &calls {
        assert_eq!(
            call.authorization.as_deref(),
            Some(&*format!("Bearer {API_KEY}"))
        );
    }
    assert_eq!(calls[0].idempotency_key, None);
    assert_eq!(calls[1].idempotency_key.as_deref(), Some("retry-1"));
}

#[tokio::test]
async fn problem_answers_become_api_errors() {
    let fake = FakeTurnpike::start().await;
    fake.set_verify_answer(
        409,
        json!({
            "type": "https://turnpike.dev/problems/idempotency-key-in-use",
            "title": "Conflict",
            "status": 409,
            "detail": "a request with this Idempotency-Key is in progress"
        }),
    );
    let error = fake
        .client()
        .verify(&verify_query(&[CREDENTIAL_A]), Some("k"))
        .await
        .unwrap_err();
    let ClientError::Api {
        status,
        problem_type,
        detail,
    } = &error
    else {
        panic!("expected an Api error, got {error:?}");
    };
    assert_eq!(*status, 409);
    assert_eq!(
        problem_type,
        "https://turnpike.dev/problems/idempotency-key-in-use"
    );
    assert_eq!(
        detail.as_deref(),
        Some("a request with this Idempotency-Key is in progress")
    );
    let text = format!("{error} {error:?}");
    assert!(!text.contains(API_KEY) && !text.contains("eyJjaGFsbGVuZ2Ui"));

    fake.set_challenge_answer(502, json!("not a problem"));
    let query = ChallengeQuery {
        method: "GET".to_owned(),
        path: "/".to_owned(),
        accept_payment: None,
        body_digest: None,
    };
    let error = fake.client().challenge(&query).await.unwrap_err();
    assert!(
        matches!(&error, ClientError::Api { status: 502, problem_type, detail: None } if problem_type == "about:blank"),
        "{error:?}"
    );
}

#[tokio::test]
async fn malformed_decisions_are_refused_without_quoting_them() {
    let fake = FakeTurnpike::start().await;
    fake.set_verify_answer(
        200,
        // serde's own message would quote the string it could not use as a status.
        json!({"decision": "paid", "status": RECEIPT, "headers": [["Payment-Receipt", RECEIPT]]}),
    );
    let error = fake
        .client()
        .verify(&verify_query(&[CREDENTIAL_A]), None)
        .await
        .unwrap_err();
    assert!(
        matches!(error, ClientError::InvalidResponse(_)),
        "{error:?}"
    );
    assert!(!format!("{error} {error:?}").contains(RECEIPT));

    fake.set_verify_answer(
        200,
        json!({"decision": "refunded", "status": 200, "headers": []}),
    );
    let error = fake
        .client()
        .verify(&verify_query(&[CREDENTIAL_A]), None)
        .await
        .unwrap_err();
    assert!(
        matches!(error, ClientError::InvalidResponse(_)),
        "{error:?}"
    );
}

#[tokio::test]
async fn unreachable_turnpike_is_unavailable_and_bad_idempotency_keys_are_refused() {
    install_crypto_provider();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let client = TurnpikeClient::new(&url, API_KEY).unwrap();

    let error = client
        .verify(&verify_query(&[CREDENTIAL_A]), None)
        .await
        .unwrap_err();
    assert!(matches!(error, ClientError::Unavailable(_)), "{error:?}");
    assert_eq!(error.to_string(), "Turnpike is unavailable: cannot connect");
    assert!(!format!("{error} {error:?}").contains(API_KEY));

    let error = client
        .verify(&verify_query(&[CREDENTIAL_A]), Some("bad\nkey"))
        .await
        .unwrap_err();
    assert!(matches!(error, ClientError::InvalidRequest(_)), "{error:?}");
}

#[test]
fn clones_share_one_client() {
    install_crypto_provider();
    let client = TurnpikeClient::new("http://127.0.0.1:8402", API_KEY).unwrap();
    let clone = client.clone();
    assert_eq!(clone.base_url(), "http://127.0.0.1:8402/");
}
