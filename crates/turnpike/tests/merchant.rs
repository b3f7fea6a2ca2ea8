//! Black-box end-to-end tests of the merchant core: the real `turnpike serve` binary over real
//! HTTP, on SQLite and on PostgreSQL (a private server this test binary starts:
//! `turnpike_store::testing`). Each test runs one server and, at the end, `turnpike ledger
//! check` on the same database.

// The test bodies are plain `async fn`s that macro-generated `#[tokio::test]`s call, which
// clippy's `allow-unwrap-in-tests` does not recognise as tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::Method;
use serde_json::{Map, Value, json};
use support::{
    ADMIN_TOKEN, DeadPort, MPP_PROBLEMS, Options, Payer, Reply, Server, TP_PROBLEMS, Tenant,
    Upstream, decision_header, describe, run_turnpike,
};
use turnpike_protocol::challenge::EncodedRequest;
use turnpike_protocol::{Challenge, ContentDigest, Receipt, b64, jcs, parse_challenges};
use turnpike_store::on_both_databases;
use turnpike_store::testing::TestDb;

on_both_databases!(
    no_credential_through_the_gateway_is_a_402_with_one_challenge,
    paid_flow_through_the_gateway_serves_the_upstream_with_a_receipt_and_moves_the_money,
    paid_flow_through_challenges_and_verify_settles_a_payment,
    two_buyers_of_one_resource_at_the_same_moment_both_pay,
    asking_to_pay_one_challenge_twice_reserves_once,
    garbage_credentials_are_malformed_credential_never_a_500,
    a_replayed_credential_is_forbidden_without_a_challenge,
    a_tampered_challenge_is_an_invalid_challenge,
    an_expired_challenge_is_refused_by_pay_and_by_verify,
    a_body_changed_after_the_challenge_fails_verification,
    concurrent_verifies_of_one_credential_pay_exactly_once,
    an_idempotent_verify_retry_returns_the_first_decision,
    an_upstream_failure_after_payment_refunds_the_payer,
    revoked_api_keys_and_agent_tokens_are_unauthorized,
    another_tenants_objects_are_not_found,
    insufficient_balance_and_over_max_per_payment_reserve_nothing,
    a_challenge_issued_before_a_binding_secret_rotation_still_pays,
    a_price_change_keeps_issued_challenges_at_their_price,
    several_payment_credentials_are_a_bad_request,
    bad_input_is_a_400_problem_and_the_operator_api_needs_its_token,
    the_operator_api_is_off_without_an_admin_token,
    admin_tenant_create_prints_a_key_that_works_on_the_server,
    payments_are_listed_page_by_page_newest_first,
);

// Unused reservations void at challenge expiry + RESERVATION_GRACE_MS (60 s,
// crates/server/src/method_turnpike.rs): too long for this suite, so that is not tested here.

/// A server with a merchant (`shop`) and a payer (`buyer`, 10 000 usd minor units).
struct Scene {
    server: Server,
    merchant: Tenant,
    payer: Payer,
}

const CREDIT: u128 = 10_000;

async fn scene(db: &TestDb) -> Scene {
    let server = Server::start(db).await;
    let merchant = server.create_tenant("shop").await;
    let payer = server.payer("buyer", CREDIT).await;
    Scene {
        server,
        merchant,
        payer,
    }
}

fn now_ms() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

fn mpp(code: &str) -> String {
    format!("{MPP_PROBLEMS}{code}")
}

fn tp(code: &str) -> String {
    format!("{TP_PROBLEMS}{code}")
}

/// The fee the harness's servers take on `amount`.
fn fee(amount: u128) -> u128 {
    amount * u128::from(support::FEE_BPS) / 10_000
}

/// A `/v1/verify` reply that is a `paid` decision: the decision.
#[track_caller]
fn expect_paid(reply: &Reply) -> Value {
    assert_eq!(reply.status, 200, "{reply:?}");
    let decision = reply.json();
    assert_eq!(decision["decision"], "paid", "{decision}");
    assert_eq!(decision["status"], 200, "{decision}");
    assert!(decision["body"].is_null(), "{decision}");
    decision
}

/// A `/v1/verify` reply that is a 402 decision with a fresh challenge and this MPP problem.
#[track_caller]
fn expect_payment_required(reply: &Reply, code: &str) -> Value {
    assert_eq!(reply.status, 200, "{reply:?}");
    let decision = reply.json();
    assert_eq!(decision["decision"], "payment_required", "{decision}");
    assert_eq!(decision["status"], 402, "{decision}");
    assert_eq!(decision["body"]["type"], mpp(code), "{decision}");
    let challenges = decision_header(&decision, "www-authenticate");
    assert_eq!(challenges.len(), 1, "{decision}");
    let parsed = parse_challenges(&challenges[0]).unwrap();
    assert_eq!(decision["body"]["challengeId"], parsed[0].id.as_str());
    assert_eq!(decision_header(&decision, "cache-control"), ["no-store"]);
    decision
}

/// A `/v1/verify` reply that is a `forbidden` decision (403, no challenge).
#[track_caller]
fn expect_forbidden(reply: &Reply) -> Value {
    assert_eq!(reply.status, 200, "{reply:?}");
    let decision = reply.json();
    assert_eq!(decision["decision"], "forbidden", "{decision}");
    assert_eq!(decision["status"], 403, "{decision}");
    assert_eq!(decision["body"]["status"], 403, "{decision}");
    assert!(
        decision_header(&decision, "www-authenticate").is_empty(),
        "{decision}"
    );
    assert!(
        decision_header(&decision, "payment-receipt").is_empty(),
        "{decision}"
    );
    decision
}

/// The receipt of a `paid` decision; checks it names the payment.
#[track_caller]
fn decision_receipt(decision: &Value) -> Receipt {
    let receipts = decision_header(decision, "payment-receipt");
    assert_eq!(receipts.len(), 1, "{decision}");
    let receipt = Receipt::parse(&receipts[0]).unwrap();
    assert_eq!(receipt.status, "success");
    assert_eq!(receipt.method.as_deref(), Some("turnpike"));
    assert_eq!(
        Some(receipt.reference.as_str()),
        decision["paymentId"].as_str()
    );
    assert_eq!(decision_header(decision, "cache-control"), ["private"]);
    receipt
}

/// The only challenge of a 402 gateway reply.
#[track_caller]
fn only_challenge(reply: &Reply) -> Challenge {
    let values = reply.header_all("www-authenticate");
    assert_eq!(values.len(), 1, "{reply:?}");
    let mut challenges = parse_challenges(&values[0]).unwrap();
    assert_eq!(challenges.len(), 1, "{reply:?}");
    challenges.remove(0)
}

/// A gateway 402 problem with a fresh challenge.
#[track_caller]
fn expect_gateway_402(reply: &Reply, code: &str) -> Challenge {
    let problem = reply.expect_problem(402, &mpp(code));
    assert_eq!(reply.header_all("cache-control"), ["no-store"], "{reply:?}");
    assert!(reply.header("payment-receipt").is_none(), "{reply:?}");
    let challenge = only_challenge(reply);
    assert_eq!(problem["challengeId"], challenge.id.as_str(), "{reply:?}");
    challenge
}

fn authorization_of(paid: &Value) -> String {
    paid["authorization"].as_str().unwrap().to_owned()
}

/// The credential JSON inside an `Authorization: Payment <b64>` value.
fn decode_credential(authorization: &str) -> Value {
    let token = authorization.strip_prefix("Payment ").unwrap();
    serde_json::from_slice(&b64::decode(token).unwrap()).unwrap()
}

fn encode_credential(credential: &Value) -> String {
    format!(
        "Payment {}",
        b64::encode(serde_json::to_vec(credential).unwrap())
    )
}

fn decode_b64_json(text: &str) -> Map<String, Value> {
    serde_json::from_slice(&b64::decode(text).unwrap()).unwrap()
}

// ---------------------------------------------------------------------------------------------

async fn no_credential_through_the_gateway_is_a_402_with_one_challenge(db: &TestDb) {
    let s = scene(db).await;
    let upstream = Upstream::start().await;
    s.server
        .price(
            &s.merchant,
            "GET",
            "/weather/{city}",
            1000,
            Some(&upstream.url),
        )
        .await;

    let before = now_ms();
    let reply = Server::read(s.server.gateway(Method::GET, "shop", "/weather/paris")).await;
    let challenge = expect_gateway_402(&reply, "payment-required");

    assert_eq!(challenge.method, "turnpike");
    assert_eq!(challenge.intent, "charge");
    assert_eq!(challenge.realm, s.merchant.realm);
    let request = challenge.request_json();
    assert_eq!(request["amount"], "1000");
    assert_eq!(request["currency"], "usd");
    assert_eq!(request["recipient"], s.merchant.id.as_str());
    assert_eq!(request["methodDetails"]["issuer"], s.server.url.as_str());
    let expires = challenge
        .expires_at()
        .expect("a turnpike challenge carries expires");
    assert!(expires.timestamp_millis() > before, "{reply:?}");

    // An unpaid request reaches nobody and records nothing.
    assert_eq!(upstream.hits(), 0);
    assert!(s.server.payments(&s.merchant).await.is_empty());
    // A route without a price is not the gateway's.
    Server::read(s.server.gateway(Method::GET, "shop", "/free"))
        .await
        .expect_problem(404, &tp("no-matching-price"));
    s.server.assert_ledger_consistent().await;
}

async fn paid_flow_through_the_gateway_serves_the_upstream_with_a_receipt_and_moves_the_money(
    db: &TestDb,
) {
    let s = scene(db).await;
    let upstream = Upstream::start().await;
    s.server
        .price(
            &s.merchant,
            "GET",
            "/weather/{city}",
            1000,
            Some(&upstream.url),
        )
        .await;
    let path = "/weather/paris?units=metric";

    let first = Server::read(s.server.gateway(Method::GET, "shop", path)).await;
    let challenge = expect_gateway_402(&first, "payment-required");
    let paid = s
        .server
        .pay_ok(&s.payer, &first.header_all("www-authenticate"))
        .await;
    assert_eq!(paid["challengeId"], challenge.id.as_str());
    assert_eq!(paid["amount"], "1000");
    assert_eq!(paid["currency"], "usd");
    assert_eq!(paid["recipient"], s.merchant.id.as_str());
    // Reserved, not spent.
    let reserved = s.server.balance(&s.payer.tenant, "payer_balance").await;
    assert_eq!((reserved.available, reserved.debits_pending), (9000, 1000));
    assert_eq!(reserved.debits_posted, 0);

    let reply = Server::read(
        s.server
            .gateway(Method::GET, "shop", path)
            .header("authorization", authorization_of(&paid))
            .header("x-turnpike-payment", "pay_forged_by_the_client")
            .header("x-custom", "kept"),
    )
    .await
    .expect_status(200);
    assert_eq!(reply.header_all("cache-control"), ["private"], "{reply:?}");
    let receipts = reply.header_all("payment-receipt");
    assert_eq!(receipts.len(), 1, "{reply:?}");
    let receipt = Receipt::parse(&receipts[0]).unwrap();
    assert_eq!(receipt.status, "success");
    assert_eq!(receipt.method.as_deref(), Some("turnpike"));
    assert!(receipt.reference.starts_with("pay_"), "{receipt:?}");

    // The upstream's own answer, for the paid request only, without the credential.
    let echoed = reply.json();
    assert_eq!(upstream.hits(), 1);
    assert_eq!(echoed["method"], "GET");
    assert_eq!(echoed["path"], "/weather/paris");
    assert_eq!(echoed["query"], "units=metric");
    assert_eq!(echoed["payment"], receipt.reference.as_str());
    assert_eq!(echoed["authorization"], false, "{echoed}");
    assert_eq!(echoed["custom"], "kept");

    // The money moved: payer -1000, merchant +1000 - 2.5%.
    let payer = s.server.balance(&s.payer.tenant, "payer_balance").await;
    assert_eq!(payer.available, CREDIT - 1000);
    assert_eq!((payer.debits_pending, payer.debits_posted), (0, 1000));
    let revenue = s.server.balance(&s.merchant, "merchant_revenue").await;
    assert_eq!(revenue.credits_posted, 1000);
    assert_eq!(revenue.debits_posted, fee(1000));
    assert_eq!(revenue.available, 1000 - fee(1000));
    assert_eq!(fee(1000), 25);

    let payment = s.server.payment(&s.merchant, &receipt.reference).await;
    assert_eq!(payment["state"], "settled", "{payment}");
    assert_eq!(payment["method"], "turnpike");
    assert_eq!(payment["amount"], "1000");
    assert_eq!(payment["currency"], "usd");
    assert_eq!(payment["challengeId"], challenge.id.as_str());
    assert_eq!(payment["payerTenantId"], s.payer.tenant.id.as_str());
    assert_eq!(payment["reference"], receipt.reference.as_str());
    let transfers = payment["transfers"].as_array().unwrap();
    let amounts: Vec<(&str, &str)> = transfers
        .iter()
        .map(|t| (t["kind"].as_str().unwrap(), t["amount"].as_str().unwrap()))
        .collect();
    assert!(amounts.contains(&("pending", "1000")), "{payment}");
    assert!(amounts.contains(&("post_pending", "1000")), "{payment}");
    assert!(amounts.contains(&("posted", "25")), "{payment}");
    assert_eq!(transfers.len(), 3, "{payment}");
    s.server.assert_ledger_consistent().await;
}

async fn paid_flow_through_challenges_and_verify_settles_a_payment(db: &TestDb) {
    let s = scene(db).await;
    let price = s
        .server
        .price(&s.merchant, "GET", "/report/{id}", 1000, None)
        .await;

    let decision = s.server.challenge(&s.merchant, "GET", "/report/7").await;
    assert_eq!(decision["status"], 402);
    assert_eq!(decision["body"]["type"], mpp("payment-required"));
    let ids = decision["challengeIds"].as_array().unwrap();
    assert_eq!(ids.len(), 1, "{decision}");
    assert_eq!(decision["body"]["challengeId"], ids[0]);
    assert_eq!(decision_header(&decision, "cache-control"), ["no-store"]);
    let www = decision_header(&decision, "www-authenticate");
    assert_eq!(www.len(), 1);
    assert_eq!(
        parse_challenges(&www[0]).unwrap()[0].id,
        ids[0].as_str().unwrap()
    );

    let paid = s.server.pay_ok(&s.payer, &www).await;
    let reply = s
        .server
        .verify(
            &s.merchant,
            json!(authorization_of(&paid)),
            "GET",
            "/report/7",
            None,
        )
        .await;
    let decision = expect_paid(&reply);
    let payment_id = decision["paymentId"].as_str().unwrap();
    assert!(payment_id.starts_with("pay_"), "{decision}");
    decision_receipt(&decision);

    let payment = s.server.payment(&s.merchant, payment_id).await;
    assert_eq!(payment["state"], "settled");
    assert_eq!(payment["priceId"], price["id"]);
    assert_eq!(payment["priceVersion"], 1);
    assert_eq!(payment["challengeId"], ids[0]);
    assert_eq!(payment["amount"], "1000");
    assert_eq!(payment["payerTenantId"], s.payer.tenant.id.as_str());
    assert_eq!(
        s.server
            .balance(&s.payer.tenant, "payer_balance")
            .await
            .available,
        CREDIT - 1000
    );
    assert_eq!(
        s.server
            .balance(&s.merchant, "merchant_revenue")
            .await
            .available,
        1000 - fee(1000)
    );

    // A request no price matches has no challenge.
    s.server
        .post(
            "/v1/challenges",
            &s.merchant.key,
            json!({"method": "GET", "path": "/free"}),
        )
        .await
        .expect_problem(404, &tp("no-matching-price"));
    s.server.assert_ledger_consistent().await;
}

async fn two_buyers_of_one_resource_at_the_same_moment_both_pay(db: &TestDb) {
    let s = scene(db).await;
    let other = s.server.payer("buyer-2", CREDIT).await;
    let upstream = Upstream::start().await;
    s.server
        .price(
            &s.merchant,
            "GET",
            "/weather/{city}",
            1000,
            Some(&upstream.url),
        )
        .await;

    // Two 402s for the same resource, within the same second.
    let first = Server::read(s.server.gateway(Method::GET, "shop", "/weather/paris")).await;
    let second = Server::read(s.server.gateway(Method::GET, "shop", "/weather/paris")).await;
    let (a, b) = (
        expect_gateway_402(&first, "payment-required"),
        expect_gateway_402(&second, "payment-required"),
    );
    assert_ne!(
        a.id, b.id,
        "two 402s handed out the same single-use challenge"
    );

    let mut references = Vec::new();
    for (payer, reply) in [(&s.payer, &first), (&other, &second)] {
        let paid = s
            .server
            .pay_ok(payer, &reply.header_all("www-authenticate"))
            .await;
        let served = Server::read(
            s.server
                .gateway(Method::GET, "shop", "/weather/paris")
                .header("authorization", authorization_of(&paid)),
        )
        .await
        .expect_status(200);
        let receipt = Receipt::parse(&served.header("payment-receipt").unwrap()).unwrap();
        references.push(receipt.reference);
    }
    assert_ne!(references[0], references[1]);
    assert_eq!(upstream.hits(), 2);
    for payer in [&s.payer, &other] {
        let balance = s.server.balance(&payer.tenant, "payer_balance").await;
        assert_eq!(
            (balance.available, balance.debits_pending),
            (CREDIT - 1000, 0)
        );
    }
    s.server.assert_ledger_consistent().await;
}

async fn asking_to_pay_one_challenge_twice_reserves_once(db: &TestDb) {
    let s = scene(db).await;
    s.server
        .price(&s.merchant, "GET", "/weather/{city}", 1000, None)
        .await;
    let decision = s
        .server
        .challenge(&s.merchant, "GET", "/weather/paris")
        .await;
    let www = decision_header(&decision, "www-authenticate");

    let first = s.server.pay_ok(&s.payer, &www).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    // A retry (say, after a lost answer) gets the same reservation, not a second one.
    let again = s.server.pay_ok(&s.payer, &www).await;
    assert_eq!(first["reservationId"], again["reservationId"]);
    assert_eq!(first["expiresAt"], again["expiresAt"]);
    let balance = s.server.balance(&s.payer.tenant, "payer_balance").await;
    assert_eq!(
        (balance.available, balance.debits_pending),
        (CREDIT - 1000, 1000)
    );

    expect_paid(
        &s.server
            .verify(
                &s.merchant,
                json!(authorization_of(&again)),
                "GET",
                "/weather/paris",
                None,
            )
            .await,
    );
    expect_forbidden(
        &s.server
            .verify(
                &s.merchant,
                json!(authorization_of(&first)),
                "GET",
                "/weather/paris",
                None,
            )
            .await,
    );
    // Once spent, the challenge is not paid again.
    s.server
        .pay(&s.payer.token, &www)
        .await
        .expect_problem(409, &tp("conflict"));
    let balance = s.server.balance(&s.payer.tenant, "payer_balance").await;
    assert_eq!(
        (
            balance.available,
            balance.debits_posted,
            balance.debits_pending
        ),
        (CREDIT - 1000, 1000, 0)
    );
    s.server.assert_ledger_consistent().await;
}

async fn garbage_credentials_are_malformed_credential_never_a_500(db: &TestDb) {
    let s = scene(db).await;
    let upstream = Upstream::start().await;
    s.server
        .price(
            &s.merchant,
            "GET",
            "/weather/{city}",
            1000,
            Some(&upstream.url),
        )
        .await;

    for garbage in [
        "Payment !!!notbase64",
        // base64url of {"not":"a credential"}
        "Payment eyJub3QiOiJhIGNyZWRlbnRpYWwifQ",
    ] {
        let reply = s
            .server
            .verify(&s.merchant, json!(garbage), "GET", "/weather/paris", None)
            .await;
        expect_payment_required(&reply, "malformed-credential");

        let reply = Server::read(
            s.server
                .gateway(Method::GET, "shop", "/weather/paris")
                .header("authorization", garbage),
        )
        .await;
        expect_gateway_402(&reply, "malformed-credential");
    }
    assert_eq!(upstream.hits(), 0);
    assert!(s.server.payments(&s.merchant).await.is_empty());
    s.server.assert_ledger_consistent().await;
}

async fn a_replayed_credential_is_forbidden_without_a_challenge(db: &TestDb) {
    let s = scene(db).await;
    let upstream = Upstream::start().await;
    s.server
        .price(
            &s.merchant,
            "GET",
            "/weather/{city}",
            1000,
            Some(&upstream.url),
        )
        .await;

    // Paid once through /v1/verify, then replayed there and through the gateway.
    let auth = s
        .server
        .credential(&s.merchant, &s.payer, "GET", "/weather/paris")
        .await;
    expect_paid(
        &s.server
            .verify(&s.merchant, json!(auth), "GET", "/weather/paris", None)
            .await,
    );
    expect_forbidden(
        &s.server
            .verify(&s.merchant, json!(auth), "GET", "/weather/paris", None)
            .await,
    );
    let replay = Server::read(
        s.server
            .gateway(Method::GET, "shop", "/weather/paris")
            .header("authorization", &auth),
    )
    .await;
    replay.expect_problem(403, &tp("credential-already-used"));
    assert!(replay.header("www-authenticate").is_none(), "{replay:?}");
    assert!(replay.header("payment-receipt").is_none(), "{replay:?}");
    assert_eq!(upstream.hits(), 0);

    // Paid once through the gateway, then replayed there.
    let first = Server::read(s.server.gateway(Method::GET, "shop", "/weather/rome")).await;
    let paid = s
        .server
        .pay_ok(&s.payer, &first.header_all("www-authenticate"))
        .await;
    let send = || {
        Server::read(
            s.server
                .gateway(Method::GET, "shop", "/weather/rome")
                .header("authorization", authorization_of(&paid)),
        )
    };
    send().await.expect_status(200);
    let replay = send().await;
    replay.expect_problem(403, &tp("credential-already-used"));
    assert!(replay.header("www-authenticate").is_none(), "{replay:?}");
    assert!(replay.header("payment-receipt").is_none(), "{replay:?}");
    assert_eq!(upstream.hits(), 1);

    // Each payment moved the money once.
    assert_eq!(s.server.payments(&s.merchant).await.len(), 2);
    let payer = s.server.balance(&s.payer.tenant, "payer_balance").await;
    assert_eq!(
        (payer.available, payer.debits_posted),
        (CREDIT - 2000, 2000)
    );
    assert_eq!(
        s.server
            .balance(&s.merchant, "merchant_revenue")
            .await
            .credits_posted,
        2000
    );
    s.server.assert_ledger_consistent().await;
}

async fn a_tampered_challenge_is_an_invalid_challenge(db: &TestDb) {
    let s = scene(db).await;
    s.server
        .price(&s.merchant, "GET", "/weather/{city}", 1000, None)
        .await;
    let cheap = s.server.price(&s.merchant, "GET", "/cheap", 10, None).await;

    let auth = s
        .server
        .credential(&s.merchant, &s.payer, "GET", "/weather/paris")
        .await;
    let credential = decode_credential(&auth);
    let echo = &credential["challenge"];

    let mut tampered = Vec::new();
    // (a) the request re-encoded with another amount
    let mut request = decode_b64_json(echo["request"].as_str().unwrap());
    assert_eq!(request["amount"], "1000");
    request.insert("amount".into(), json!("1"));
    let mut c = credential.clone();
    c["challenge"]["request"] = json!(jcs::to_b64(&request).unwrap());
    tampered.push(("request", c));
    // (b) the realm
    let mut c = credential.clone();
    c["challenge"]["realm"] = json!("elsewhere");
    tampered.push(("realm", c));
    // (c) expires, a year later
    let expires = echo["expires"].as_str().unwrap();
    let year: u32 = expires[..4].parse().unwrap();
    let mut c = credential.clone();
    c["challenge"]["expires"] = json!(format!("{}{}", year + 1, &expires[4..]));
    tampered.push(("expires", c));
    // (d) the opaque pointed at the cheap price
    let mut opaque = decode_b64_json(echo["opaque"].as_str().unwrap());
    opaque.insert("price".into(), cheap["id"].clone());
    let mut c = credential.clone();
    c["challenge"]["opaque"] = json!(jcs::to_b64(&opaque).unwrap());
    tampered.push(("opaque", c));

    for (what, credential) in &tampered {
        let reply = s
            .server
            .verify(
                &s.merchant,
                json!(encode_credential(credential)),
                "GET",
                "/weather/paris",
                None,
            )
            .await;
        assert_eq!(reply.status, 200, "tampered {what}: {reply:?}");
        assert_eq!(
            reply.json()["body"]["type"],
            mpp("invalid-challenge"),
            "tampered {what}: {reply:?}"
        );
        expect_payment_required(&reply, "invalid-challenge");
    }
    // Nothing was consumed: the genuine credential still pays.
    expect_paid(
        &s.server
            .verify(&s.merchant, json!(auth), "GET", "/weather/paris", None)
            .await,
    );

    // A credential for the cheap route is no good on another route, but is on its own.
    let cheap_auth = s
        .server
        .credential(&s.merchant, &s.payer, "GET", "/cheap")
        .await;
    let reply = s
        .server
        .verify(
            &s.merchant,
            json!(cheap_auth),
            "GET",
            "/weather/paris",
            None,
        )
        .await;
    expect_payment_required(&reply, "invalid-challenge");
    expect_paid(
        &s.server
            .verify(&s.merchant, json!(cheap_auth), "GET", "/cheap", None)
            .await,
    );

    // The agent does not pay a forged challenge either (a lower amount under the same id).
    let decision = s
        .server
        .challenge(&s.merchant, "GET", "/weather/paris")
        .await;
    let genuine = parse_challenges(&decision_header(&decision, "www-authenticate")[0])
        .unwrap()
        .remove(0);
    let mut request = genuine.request_json().clone();
    request.insert("amount".into(), json!("1"));
    let forged = Challenge {
        request: EncodedRequest::from_json(request).unwrap(),
        ..genuine
    };
    s.server
        .pay(&s.payer.token, &[forged.to_header_value().unwrap()])
        .await
        .expect_problem(422, &tp("no-supported-challenge"));

    let payer = s.server.balance(&s.payer.tenant, "payer_balance").await;
    assert_eq!(payer.debits_posted, 1010);
    assert_eq!(payer.debits_pending, 0);
    assert_eq!(s.server.payments(&s.merchant).await.len(), 2);
    s.server.assert_ledger_consistent().await;
}

async fn an_expired_challenge_is_refused_by_pay_and_by_verify(db: &TestDb) {
    let s = scene(db).await;
    s.server
        .create_price(
            &s.merchant,
            json!({
                "route": {"method": "GET", "path": "/soon"},
                "amount": "1000", "currency": "usd", "challengeTtlS": 1,
            }),
        )
        .await;

    let issued = now_ms();
    let to_pay = s.server.challenge(&s.merchant, "GET", "/soon").await;
    let to_verify = s.server.challenge(&s.merchant, "GET", "/soon").await;
    let www_pay = decision_header(&to_pay, "www-authenticate");
    let www_verify = decision_header(&to_verify, "www-authenticate");
    let expires_ms = parse_challenges(&www_verify[0]).unwrap()[0]
        .expires_at()
        .unwrap()
        .timestamp_millis();
    // A challenge lives at least its price's challengeTtlS.
    assert!(
        expires_ms >= issued + 1000,
        "challengeTtlS 1 but the challenge expires {} ms after it was asked for",
        expires_ms - issued
    );
    let paid = s.server.pay_ok(&s.payer, &www_verify).await;

    let wait_ms = u64::try_from(expires_ms + 250 - now_ms()).unwrap_or(0);
    assert!(wait_ms <= 2_300, "{wait_ms}");
    tokio::time::sleep(Duration::from_millis(wait_ms)).await;

    // Verify refuses it (invalid-challenge, as the digest's errata recommends) ...
    let reply = s
        .server
        .verify(
            &s.merchant,
            json!(authorization_of(&paid)),
            "GET",
            "/soon",
            None,
        )
        .await;
    expect_payment_required(&reply, "invalid-challenge");
    // ... and the agent will not pay one.
    s.server
        .pay(&s.payer.token, &www_pay)
        .await
        .expect_problem(422, &tp("no-supported-challenge"));

    // Nothing settled; only the first reservation is held (until it voids).
    assert!(s.server.payments(&s.merchant).await.is_empty());
    let payer = s.server.balance(&s.payer.tenant, "payer_balance").await;
    assert_eq!((payer.debits_posted, payer.debits_pending), (0, 1000));
    assert_eq!(
        s.server
            .balance(&s.merchant, "merchant_revenue")
            .await
            .credits_posted,
        0
    );
    s.server.assert_ledger_consistent().await;
}

async fn a_body_changed_after_the_challenge_fails_verification(db: &TestDb) {
    let s = scene(db).await;
    let upstream = Upstream::start().await;
    s.server
        .price(&s.merchant, "POST", "/summarize", 1000, Some(&upstream.url))
        .await;
    let body_a = r#"{"text":"a long story"}"#;
    let body_b = r#"{"text":"another story"}"#;
    let post = |body: &'static str, auth: Option<&str>| {
        let mut request = s
            .server
            .gateway(Method::POST, "shop", "/summarize")
            .header("content-type", "application/json")
            .body(body);
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        Server::read(request)
    };

    // Through the gateway.
    let first = post(body_a, None).await;
    let challenge = expect_gateway_402(&first, "payment-required");
    assert_eq!(
        challenge.digest.as_deref(),
        Some(
            ContentDigest::sha256(body_a.as_bytes())
                .to_header_value()
                .as_str()
        )
    );
    let paid = s
        .server
        .pay_ok(&s.payer, &first.header_all("www-authenticate"))
        .await;
    let auth = authorization_of(&paid);
    expect_gateway_402(&post(body_b, Some(&auth)).await, "verification-failed");
    assert_eq!(upstream.hits(), 0);
    let reply = post(body_a, Some(&auth)).await.expect_status(200);
    assert!(reply.header("payment-receipt").is_some(), "{reply:?}");
    assert_eq!(reply.json()["body"], body_a);
    assert_eq!(upstream.hits(), 1);

    // Through /v1/challenges and /v1/verify.
    let digest_a = ContentDigest::sha256(body_a.as_bytes()).to_header_value();
    let digest_b = ContentDigest::sha256(body_b.as_bytes()).to_header_value();
    let decision = s
        .server
        .challenge_with(
            &s.merchant,
            json!({"method": "POST", "path": "/summarize", "bodyDigest": digest_a}),
        )
        .await;
    let paid = s
        .server
        .pay_ok(&s.payer, &decision_header(&decision, "www-authenticate"))
        .await;
    let verify = |digest: Option<&str>| {
        let mut body = json!({
            "authorization": authorization_of(&paid), "method": "POST", "path": "/summarize",
        });
        if let Some(digest) = digest {
            body["bodyDigest"] = json!(digest);
        }
        s.server.verify_with(&s.merchant, body, None)
    };
    expect_payment_required(&verify(Some(&digest_b)).await, "verification-failed");
    expect_payment_required(&verify(None).await, "verification-failed");
    expect_paid(&verify(Some(&digest_a)).await);

    let payer = s.server.balance(&s.payer.tenant, "payer_balance").await;
    assert_eq!((payer.debits_posted, payer.debits_pending), (2000, 0));
    s.server.assert_ledger_consistent().await;
}

async fn concurrent_verifies_of_one_credential_pay_exactly_once(db: &TestDb) {
    let s = scene(db).await;
    s.server
        .price(&s.merchant, "GET", "/weather/{city}", 1000, None)
        .await;
    let auth = s
        .server
        .credential(&s.merchant, &s.payer, "GET", "/weather/paris")
        .await;

    let tasks: Vec<_> =
        (0..20)
            .map(|_| {
                let (http, url, key, auth) = (
                    s.server.http.clone(),
                    s.server.url.clone(),
                    s.merchant.key.clone(),
                    auth.clone(),
                );
                tokio::spawn(async move {
                    Server::read(http.post(format!("{url}/v1/verify")).bearer_auth(key).json(
                        &json!({
                            "authorization": auth, "method": "GET", "path": "/weather/paris",
                        }),
                    ))
                    .await
                })
            })
            .collect();
    let replies: Vec<Reply> = futures_util::future::join_all(tasks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();

    let mut paid = 0;
    let mut forbidden = 0;
    for reply in &replies {
        assert_eq!(reply.status, 200, "{reply:?}");
        match reply.json()["decision"].as_str() {
            Some("paid") => paid += 1,
            Some("forbidden") => forbidden += 1,
            _ => panic!("unexpected decision: {reply:?}"),
        }
    }
    assert_eq!((paid, forbidden), (1, 19), "{replies:#?}");

    assert_eq!(s.server.payments(&s.merchant).await.len(), 1);
    let payer = s.server.balance(&s.payer.tenant, "payer_balance").await;
    assert_eq!(
        (payer.available, payer.debits_posted),
        (CREDIT - 1000, 1000)
    );
    let revenue = s.server.balance(&s.merchant, "merchant_revenue").await;
    assert_eq!(
        (revenue.credits_posted, revenue.available),
        (1000, 1000 - fee(1000))
    );
    s.server.assert_ledger_consistent().await;
}

async fn an_idempotent_verify_retry_returns_the_first_decision(db: &TestDb) {
    let s = scene(db).await;
    s.server
        .price(&s.merchant, "GET", "/weather/{city}", 1000, None)
        .await;
    let auth = s
        .server
        .credential(&s.merchant, &s.payer, "GET", "/weather/paris")
        .await;
    let verify = |auth: Value, path: &'static str, key: Option<&'static str>| {
        s.server.verify(&s.merchant, auth, "GET", path, key)
    };

    let first = expect_paid(&verify(json!(auth), "/weather/paris", Some("order-17")).await);
    let again = expect_paid(&verify(json!(auth), "/weather/paris", Some("order-17")).await);
    assert_eq!(
        first, again,
        "the retry must return the first decision unchanged"
    );
    decision_receipt(&again);

    // The same key for another request.
    for (other_auth, path) in [
        (Value::Null, "/weather/paris"),
        (json!(auth), "/weather/london"),
    ] {
        verify(other_auth, path, Some("order-17"))
            .await
            .expect_problem(409, &tp("idempotency-key-in-use"));
    }
    // Without the key the same credential is a replay.
    expect_forbidden(&verify(json!(auth), "/weather/paris", None).await);

    assert_eq!(s.server.payments(&s.merchant).await.len(), 1);
    let payer = s.server.balance(&s.payer.tenant, "payer_balance").await;
    assert_eq!(
        (payer.available, payer.debits_posted),
        (CREDIT - 1000, 1000)
    );
    s.server.assert_ledger_consistent().await;
}

async fn an_upstream_failure_after_payment_refunds_the_payer(db: &TestDb) {
    let s = scene(db).await;
    let flaky = Upstream::start().await;
    flaky.fail();
    s.server
        .price(&s.merchant, "GET", "/flaky", 1000, Some(&flaky.url))
        .await;
    let dead = DeadPort::reserve();
    s.server
        .price(&s.merchant, "GET", "/down", 1000, Some(&dead.url))
        .await;

    // A day budget of exactly one payment: the second payment passes only if the refund of
    // the first gave its budget back.
    s.server
        .call(
            Method::PUT,
            &format!("/v1/agents/{}/policy", s.payer.agent_id),
            Some(&s.payer.tenant.key),
            Some(json!({"budgets": [{"amount": "1000", "currency": "usd", "period": "day"}]})),
        )
        .await
        .expect_status(200);

    let mut payment_ids = Vec::new();
    for path in ["/flaky", "/down"] {
        let first = Server::read(s.server.gateway(Method::GET, "shop", path)).await;
        expect_gateway_402(&first, "payment-required");
        let paid = s
            .server
            .pay_ok(&s.payer, &first.header_all("www-authenticate"))
            .await;
        let reply = Server::read(
            s.server
                .gateway(Method::GET, "shop", path)
                .header("authorization", authorization_of(&paid)),
        )
        .await;
        if path == "/flaky" {
            assert_eq!(reply.status, 500, "{reply:?}");
            assert_eq!(flaky.hits(), 1);
        } else {
            reply.expect_problem(502, &tp("upstream-failed"));
        }
        assert!(reply.header("payment-receipt").is_none(), "{reply:?}");

        // The payer has all its money back at once, the merchant keeps nothing.
        let payer = s.server.balance(&s.payer.tenant, "payer_balance").await;
        assert_eq!(
            (payer.available, payer.debits_pending),
            (CREDIT, 0),
            "{path}"
        );
        let revenue = s.server.balance(&s.merchant, "merchant_revenue").await;
        assert_eq!(revenue.available, 0, "{path}");

        let payments = s.server.payments(&s.merchant).await;
        let newest = &payments[0];
        assert_eq!(newest["state"], "refunded", "{newest}");
        let id = newest["id"].as_str().unwrap().to_owned();
        let payment = s.server.payment(&s.merchant, &id).await;
        let refunded: Vec<&str> = payment["transfers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["kind"] == "posted")
            .map(|t| t["amount"].as_str().unwrap())
            .collect();
        // The fee, its return, and the refund of the amount.
        assert_eq!(
            refunded.iter().filter(|a| **a == "25").count(),
            2,
            "{payment}"
        );
        assert!(refunded.contains(&"1000"), "{payment}");
        payment_ids.push(id);
    }
    assert_ne!(payment_ids[0], payment_ids[1]);
    s.server.assert_ledger_consistent().await;
}

async fn revoked_api_keys_and_agent_tokens_are_unauthorized(db: &TestDb) {
    let s = scene(db).await;
    let created = s
        .server
        .post("/v1/api-keys", &s.merchant.key, json!({"name": "ci"}))
        .await
        .expect_status(201)
        .json();
    let (key_id, second) = (
        created["id"].as_str().unwrap(),
        created["secret"].as_str().unwrap(),
    );
    assert!(second.starts_with("tp_sk_"));
    let me = s.server.get("/v1/tenant", second).await.expect_status(200);
    assert_eq!(me.json()["id"], s.merchant.id.as_str());

    let revoked = s
        .server
        .call(
            Method::DELETE,
            &format!("/v1/api-keys/{key_id}"),
            Some(&s.merchant.key),
            None,
        )
        .await
        .expect_status(200)
        .json();
    assert!(revoked["revokedAt"].is_string(), "{revoked}");
    s.server
        .get("/v1/tenant", second)
        .await
        .expect_problem(401, &tp("unauthorized"));
    s.server
        .post(
            "/v1/prices",
            second,
            json!({"route": {"method": "GET", "path": "/x"}, "amount": "1", "currency": "usd"}),
        )
        .await
        .expect_problem(401, &tp("unauthorized"));
    // The other key still works.
    s.server
        .get("/v1/tenant", &s.merchant.key)
        .await
        .expect_status(200);

    // Agent tokens.
    s.server
        .price(&s.merchant, "GET", "/weather/{city}", 100, None)
        .await;
    let www = |d: Value| decision_header(&d, "www-authenticate");
    let before = s.server.challenge(&s.merchant, "GET", "/weather/a").await;
    s.server.pay_ok(&s.payer, &www(before)).await;
    s.server
        .call(
            Method::DELETE,
            &format!(
                "/v1/agents/{}/tokens/{}",
                s.payer.agent_id, s.payer.token_id
            ),
            Some(&s.payer.tenant.key),
            None,
        )
        .await
        .expect_status(200);
    let after = www(s.server.challenge(&s.merchant, "GET", "/weather/b").await);
    s.server
        .pay(&s.payer.token, &after)
        .await
        .expect_problem(401, &tp("unauthorized"));
    // Revocation is per token: a new token of the same agent pays.
    let (_, fresh) = s
        .server
        .create_token(&s.payer.tenant, &s.payer.agent_id, json!({}))
        .await;
    s.server.pay(&fresh, &after).await.expect_status(200);

    let payer = s.server.balance(&s.payer.tenant, "payer_balance").await;
    assert_eq!(payer.debits_pending, 200);
    s.server.assert_ledger_consistent().await;
}

async fn another_tenants_objects_are_not_found(db: &TestDb) {
    let s = scene(db).await;
    let other = s.server.create_tenant("other").await;
    let price = s
        .server
        .price(&s.merchant, "GET", "/weather/{city}", 1000, None)
        .await;
    let price_id = price["id"].as_str().unwrap();
    let auth = s
        .server
        .credential(&s.merchant, &s.payer, "GET", "/weather/paris")
        .await;
    let decision = expect_paid(
        &s.server
            .verify(&s.merchant, json!(auth), "GET", "/weather/paris", None)
            .await,
    );
    let payment_id = decision["paymentId"].as_str().unwrap();
    let agent_id = s.server.create_agent(&s.merchant, "shop-agent").await;
    let (token_id, _) = s
        .server
        .create_token(&s.merchant, &agent_id, json!({}))
        .await;
    let key_id = s
        .server
        .post("/v1/api-keys", &s.merchant.key, json!({}))
        .await
        .expect_status(201)
        .json()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let not_found = tp("not-found");
    let attempts: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, format!("/v1/prices/{price_id}"), None),
        (
            Method::PATCH,
            format!("/v1/prices/{price_id}"),
            Some(json!({"amount": "1"})),
        ),
        (Method::DELETE, format!("/v1/prices/{price_id}"), None),
        (Method::GET, format!("/v1/payments/{payment_id}"), None),
        (
            Method::POST,
            format!("/v1/agents/{agent_id}/tokens"),
            Some(json!({})),
        ),
        (
            Method::DELETE,
            format!("/v1/agents/{agent_id}/tokens/{token_id}"),
            None,
        ),
        (Method::DELETE, format!("/v1/api-keys/{key_id}"), None),
    ];
    for (method, path, body) in attempts {
        let reply = s
            .server
            .call(method.clone(), &path, Some(&other.key), body)
            .await;
        assert_eq!(reply.status, 404, "{method} {path}: {reply:?}");
        reply.expect_problem(404, &not_found);
    }
    // Lists hold only one's own objects.
    for path in ["/v1/prices", "/v1/payments", "/v1/agents"] {
        let list = s
            .server
            .get(path, &other.key)
            .await
            .expect_status(200)
            .json();
        assert_eq!(list["data"], json!([]), "{path}: {list}");
    }
    // A's credential is no good at B, even for the same route.
    s.server
        .price(&other, "GET", "/weather/{city}", 1000, None)
        .await;
    let fresh = s
        .server
        .credential(&s.merchant, &s.payer, "GET", "/weather/rome")
        .await;
    expect_payment_required(
        &s.server
            .verify(&other, json!(fresh), "GET", "/weather/rome", None)
            .await,
        "invalid-challenge",
    );

    // A's objects are untouched.
    let mine = s
        .server
        .get(&format!("/v1/prices/{price_id}"), &s.merchant.key)
        .await
        .expect_status(200)
        .json();
    assert_eq!(
        (mine["amount"].as_str(), mine["version"].as_i64()),
        (Some("1000"), Some(1))
    );
    s.server
        .get("/v1/tenant", &s.merchant.key)
        .await
        .expect_status(200);
    s.server.assert_ledger_consistent().await;
}

async fn insufficient_balance_and_over_max_per_payment_reserve_nothing(db: &TestDb) {
    let s = scene(db).await;
    s.server.price(&s.merchant, "GET", "/big", 5000, None).await;
    s.server
        .price(&s.merchant, "GET", "/small", 100, None)
        .await;
    let www = |d: Value| decision_header(&d, "www-authenticate");

    let poor = s.server.payer("poor", 1000).await;
    let big = www(s.server.challenge(&s.merchant, "GET", "/big").await);
    s.server
        .pay(&poor.token, &big)
        .await
        .expect_problem(403, &tp("insufficient-balance"));
    let balance = s.server.balance(&poor.tenant, "payer_balance").await;
    assert_eq!((balance.available, balance.debits_pending), (1000, 0));

    let (_, capped) = s
        .server
        .create_token(
            &s.payer.tenant,
            &s.payer.agent_id,
            json!({"maxPerPayment": {"amount": "500", "currency": "usd"}}),
        )
        .await;
    let (_, capped_eur) = s
        .server
        .create_token(
            &s.payer.tenant,
            &s.payer.agent_id,
            json!({"maxPerPayment": {"amount": "100000", "currency": "eur"}}),
        )
        .await;
    let problem = s
        .server
        .pay(&capped, &big)
        .await
        .expect_problem(403, &tp("policy-denied"));
    assert_eq!(problem["reason"], "over_max_per_payment");
    let balance = s.server.balance(&s.payer.tenant, "payer_balance").await;
    assert_eq!((balance.available, balance.debits_pending), (CREDIT, 0));

    // Under the maximum the same token pays.
    let small = www(s.server.challenge(&s.merchant, "GET", "/small").await);
    s.server.pay(&capped, &small).await.expect_status(200);
    let balance = s.server.balance(&s.payer.tenant, "payer_balance").await;
    assert_eq!(
        (balance.available, balance.debits_pending),
        (CREDIT - 100, 100)
    );
    // A cap in another currency does not limit this one: the euro-capped token pays dollars.
    s.server.pay(&capped_eur, &big).await.expect_status(200);
    let balance = s.server.balance(&s.payer.tenant, "payer_balance").await;
    assert_eq!(
        (balance.available, balance.debits_pending),
        (CREDIT - 5100, 5100)
    );
    assert!(s.server.payments(&s.merchant).await.is_empty());
    s.server.assert_ledger_consistent().await;
}

async fn a_challenge_issued_before_a_binding_secret_rotation_still_pays(db: &TestDb) {
    let s = scene(db).await;
    s.server
        .price(&s.merchant, "GET", "/weather/{city}", 1000, None)
        .await;
    let www = |d: Value| decision_header(&d, "www-authenticate");
    let old = www(s
        .server
        .challenge(&s.merchant, "GET", "/weather/paris")
        .await);

    let rotated = s
        .server
        .post("/v1/binding-secrets/rotate", &s.merchant.key, json!({}))
        .await
        .expect_status(200)
        .json();
    assert_eq!(rotated["version"], 2, "{rotated}");
    let new = www(s
        .server
        .challenge(&s.merchant, "GET", "/weather/paris")
        .await);

    for challenges in [old, new] {
        let paid = s.server.pay_ok(&s.payer, &challenges).await;
        expect_paid(
            &s.server
                .verify(
                    &s.merchant,
                    json!(authorization_of(&paid)),
                    "GET",
                    "/weather/paris",
                    None,
                )
                .await,
        );
    }
    assert_eq!(s.server.payments(&s.merchant).await.len(), 2);
    s.server.assert_ledger_consistent().await;
}

async fn a_price_change_keeps_issued_challenges_at_their_price(db: &TestDb) {
    let s = scene(db).await;
    let price = s
        .server
        .price(&s.merchant, "GET", "/weather/{city}", 1000, None)
        .await;
    let price_id = price["id"].as_str().unwrap();
    assert_eq!(price["version"], 1);
    let www = |d: Value| decision_header(&d, "www-authenticate");
    let v1 = www(s
        .server
        .challenge(&s.merchant, "GET", "/weather/paris")
        .await);

    let patched = s
        .server
        .call(
            Method::PATCH,
            &format!("/v1/prices/{price_id}"),
            Some(&s.merchant.key),
            Some(json!({"amount": "3000"})),
        )
        .await
        .expect_status(200)
        .json();
    assert_eq!(
        (patched["version"].as_i64(), patched["amount"].as_str()),
        (Some(2), Some("3000"))
    );
    let v2 = www(s
        .server
        .challenge(&s.merchant, "GET", "/weather/paris")
        .await);
    assert_eq!(
        parse_challenges(&v2[0]).unwrap()[0].request_json()["amount"],
        "3000"
    );

    let mut paid_amounts = Vec::new();
    for (challenges, amount, version) in [(v1, "1000", 1), (v2, "3000", 2)] {
        let paid = s.server.pay_ok(&s.payer, &challenges).await;
        assert_eq!(paid["amount"], amount);
        let decision = expect_paid(
            &s.server
                .verify(
                    &s.merchant,
                    json!(authorization_of(&paid)),
                    "GET",
                    "/weather/paris",
                    None,
                )
                .await,
        );
        let payment = s
            .server
            .payment(&s.merchant, decision["paymentId"].as_str().unwrap())
            .await;
        assert_eq!(payment["amount"], amount, "{payment}");
        assert_eq!(payment["priceVersion"], version, "{payment}");
        paid_amounts.push(amount);
    }
    assert_eq!(paid_amounts, ["1000", "3000"]);

    // Deleting the price stops new challenges and those already issued: the request is no
    // longer priced by it (docs/api.md), through verify as through the gateway.
    let issued = www(s
        .server
        .challenge(&s.merchant, "GET", "/weather/paris")
        .await);
    let paid = s.server.pay_ok(&s.payer, &issued).await;
    s.server
        .call(
            Method::DELETE,
            &format!("/v1/prices/{price_id}"),
            Some(&s.merchant.key),
            None,
        )
        .await
        .expect_status(200);
    s.server
        .post(
            "/v1/challenges",
            &s.merchant.key,
            json!({"method": "GET", "path": "/weather/paris"}),
        )
        .await
        .expect_problem(404, &tp("no-matching-price"));
    s.server
        .verify(
            &s.merchant,
            json!(authorization_of(&paid)),
            "GET",
            "/weather/paris",
            None,
        )
        .await
        .expect_problem(404, &tp("no-matching-price"));

    // Two payments (1000 and 3000); the third is reserved until it expires, never posted.
    let payer = s.server.balance(&s.payer.tenant, "payer_balance").await;
    assert_eq!((payer.debits_posted, payer.debits_pending), (4000, 3000));
    let revenue = s.server.balance(&s.merchant, "merchant_revenue").await;
    assert_eq!(revenue.available, 4000 - fee(1000) - fee(3000));
    s.server.assert_ledger_consistent().await;
}

async fn several_payment_credentials_are_a_bad_request(db: &TestDb) {
    let s = scene(db).await;
    let upstream = Upstream::start().await;
    s.server
        .price(
            &s.merchant,
            "GET",
            "/weather/{city}",
            1000,
            Some(&upstream.url),
        )
        .await;
    let one = s
        .server
        .credential(&s.merchant, &s.payer, "GET", "/weather/paris")
        .await;
    let two = s
        .server
        .credential(&s.merchant, &s.payer, "GET", "/weather/paris")
        .await;

    let reply = s
        .server
        .verify(
            &s.merchant,
            json!([one, two]),
            "GET",
            "/weather/paris",
            None,
        )
        .await
        .expect_status(200);
    let decision = reply.json();
    assert_eq!(decision["decision"], "bad_request", "{decision}");
    assert_eq!(decision["status"], 400, "{decision}");
    assert_eq!(decision["body"]["status"], 400, "{decision}");
    assert!(decision_header(&decision, "www-authenticate").is_empty());

    let reply = Server::read(
        s.server
            .gateway(Method::GET, "shop", "/weather/paris")
            .header("authorization", &one)
            .header("authorization", &two),
    )
    .await;
    assert_eq!(reply.status, 400, "{reply:?}");
    assert!(reply.header("payment-receipt").is_none(), "{reply:?}");
    assert!(reply.header("www-authenticate").is_none(), "{reply:?}");
    assert_eq!(upstream.hits(), 0);
    assert!(s.server.payments(&s.merchant).await.is_empty());

    // Neither credential was spent: each pays alone.
    for auth in [one, two] {
        expect_paid(
            &s.server
                .verify(&s.merchant, json!(auth), "GET", "/weather/paris", None)
                .await,
        );
    }
    s.server.assert_ledger_consistent().await;
}

async fn bad_input_is_a_400_problem_and_the_operator_api_needs_its_token(db: &TestDb) {
    let s = scene(db).await;
    let route = json!({"method": "GET", "path": "/weather/{city}"});

    let reply = s
        .server
        .post(
            "/v1/prices",
            &s.merchant.key,
            json!({"route": route, "amount": "1.5", "currency": "usd"}),
        )
        .await;
    let problem = reply.expect_problem(400, &tp("invalid-request"));
    assert!(
        problem["detail"].as_str().unwrap().contains("amount"),
        "{problem}"
    );
    let reply = s
        .server
        .post(
            "/v1/prices",
            &s.merchant.key,
            json!({"route": route, "amount": "100", "currency": "usd", "colour": "red"}),
        )
        .await;
    let problem = reply.expect_problem(400, &tp("invalid-request"));
    assert!(
        problem["detail"].as_str().unwrap().contains("colour"),
        "{problem}"
    );
    assert_eq!(
        s.server.get("/v1/prices", &s.merchant.key).await.json()["data"],
        json!([])
    );

    // The operator API wants the admin token, and only it.
    let tenant = json!({"name": "Mallory", "slug": "mallory"});
    let no_token = s
        .server
        .call(
            Method::POST,
            "/v1/admin/tenants",
            None,
            Some(tenant.clone()),
        )
        .await;
    no_token.expect_problem(401, &tp("unauthorized"));
    for wrong in ["not-the-admin-token-at-all", s.merchant.key.as_str()] {
        s.server
            .post("/v1/admin/tenants", wrong, tenant.clone())
            .await
            .expect_problem(401, &tp("unauthorized"));
    }
    s.server
        .post(
            &format!("/v1/admin/tenants/{}/credit", s.payer.tenant.id),
            &s.payer.tenant.key,
            json!({"amount": "1000000", "currency": "usd"}),
        )
        .await
        .expect_problem(401, &tp("unauthorized"));
    assert_eq!(
        s.server
            .balance(&s.payer.tenant, "payer_balance")
            .await
            .available,
        CREDIT
    );
    // Each credential opens only its own door.
    s.server
        .call(Method::GET, "/v1/prices", None, None)
        .await
        .expect_problem(401, &tp("unauthorized"));
    s.server
        .get("/v1/prices", &s.payer.token)
        .await
        .expect_problem(401, &tp("unauthorized"));
    s.server
        .get("/v1/prices", ADMIN_TOKEN)
        .await
        .expect_problem(401, &tp("unauthorized"));
    s.server
        .post(
            "/v1/agent/pay",
            &s.payer.tenant.key,
            json!({"challenges": ["Payment id=\"x\""]}),
        )
        .await
        .expect_problem(401, &tp("unauthorized"));
    s.server.assert_ledger_consistent().await;
}

async fn the_operator_api_is_off_without_an_admin_token(db: &TestDb) {
    let server = Server::start_with(
        db,
        Options {
            admin: false,
            ..Options::default()
        },
    )
    .await;
    for (path, body) in [
        ("/v1/admin/tenants", json!({"name": "X", "slug": "x"})),
        (
            "/v1/admin/tenants/ten_x/credit",
            json!({"amount": "1", "currency": "usd"}),
        ),
    ] {
        server
            .post(path, ADMIN_TOKEN, body.clone())
            .await
            .expect_problem(404, &tp("admin-disabled"));
        server
            .call(Method::POST, path, None, Some(body))
            .await
            .expect_problem(404, &tp("admin-disabled"));
    }
    server.assert_ledger_consistent().await;
}

async fn admin_tenant_create_prints_a_key_that_works_on_the_server(db: &TestDb) {
    let create = |slug: &'static str| async move {
        let out = run_turnpike(
            db,
            &[
                "admin", "tenant", "create", "--name", "Cli Shop", "--slug", slug,
            ],
        )
        .await;
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
        let printed: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", describe(&out)));
        let secret = printed["apiKey"]["secret"].as_str().unwrap().to_owned();
        assert!(secret.starts_with("tp_sk_"), "{printed}");
        assert_eq!(printed["tenant"]["slug"], slug);
        (printed["tenant"]["id"].as_str().unwrap().to_owned(), secret)
    };

    // Before the server runs, and while it runs.
    let (first_id, first_key) = create("cli-shop").await;
    let server = Server::start(db).await;
    let (second_id, second_key) = create("cli-shop-2").await;
    for (id, key) in [(first_id, first_key), (second_id, second_key)] {
        let me = server
            .get("/v1/tenant", &key)
            .await
            .expect_status(200)
            .json();
        assert_eq!(me["id"], id.as_str());
        server
            .post(
                "/v1/prices",
                &key,
                json!({"route": {"method": "GET", "path": "/a"}, "amount": "5", "currency": "usd"}),
            )
            .await
            .expect_status(201);
    }
    // A taken slug is refused.
    let out = run_turnpike(
        db,
        &[
            "admin", "tenant", "create", "--name", "Again", "--slug", "cli-shop",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cli-shop"),
        "{}",
        describe(&out)
    );
    server.assert_ledger_consistent().await;
}

async fn payments_are_listed_page_by_page_newest_first(db: &TestDb) {
    let s = scene(db).await;
    s.server
        .price(&s.merchant, "GET", "/report/{id}", 10, None)
        .await;
    let mut paid_ids = Vec::new();
    for n in 0..5 {
        let path = format!("/report/{n}");
        let decision = s.server.challenge(&s.merchant, "GET", &path).await;
        let www = decision_header(&decision, "www-authenticate");
        let paid = s.server.pay_ok(&s.payer, &www).await;
        let reply = s
            .server
            .verify(
                &s.merchant,
                json!(authorization_of(&paid)),
                "GET",
                &path,
                None,
            )
            .await;
        paid_ids.push(
            expect_paid(&reply)["paymentId"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }

    // Pages of two: 2 + 2 + 1, each payment once, newest first, the last page without a cursor.
    let mut listed: Vec<Value> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            None => "/v1/payments?limit=2".to_owned(),
            Some(c) => format!("/v1/payments?limit=2&cursor={c}"),
        };
        let page = s
            .server
            .get(&path, &s.merchant.key)
            .await
            .expect_status(200)
            .json();
        let data = page["data"].as_array().unwrap().clone();
        pages += 1;
        assert!(data.len() <= 2, "{page}");
        listed.extend(data);
        match page["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
        assert!(pages < 10, "the cursor never ends");
    }
    assert_eq!(pages, 3);
    let ids: Vec<&str> = listed.iter().map(|p| p["id"].as_str().unwrap()).collect();
    let mut expected: Vec<&str> = paid_ids.iter().map(String::as_str).collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    expected.sort_unstable();
    assert_eq!(sorted, expected, "every payment exactly once");
    let keys: Vec<(String, &str)> = listed
        .iter()
        .map(|p| (p["createdAt"].to_string(), p["id"].as_str().unwrap()))
        .collect();
    assert!(
        keys.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {keys:?}"
    );
    // One page of everything has no cursor; the state filter pages the same way.
    let all = s
        .server
        .get("/v1/payments", &s.merchant.key)
        .await
        .expect_status(200)
        .json();
    assert_eq!(all["data"].as_array().unwrap().len(), 5);
    assert!(all["nextCursor"].is_null(), "{all}");
    let settled = s
        .server
        .get("/v1/payments?state=settled&limit=4", &s.merchant.key)
        .await
        .expect_status(200)
        .json();
    assert_eq!(settled["data"].as_array().unwrap().len(), 4);
    assert!(settled["nextCursor"].is_string(), "{settled}");

    // Bad paging input is a 400 naming the parameter.
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("cursor=not-a-cursor", "cursor"),
        ("after=x", "after"),
    ] {
        let reply = s
            .server
            .get(&format!("/v1/payments?{query}"), &s.merchant.key)
            .await;
        let problem = reply.expect_problem(400, &tp("invalid-request"));
        let detail = problem["detail"].as_str().unwrap_or_default().to_owned();
        assert!(detail.contains(field), "{query}: {detail}");
    }
    // Another tenant's cursor position lists only that tenant's own payments.
    let other = s.server.create_tenant("other-shop").await;
    let page = s
        .server
        .get(
            &format!("/v1/payments?cursor={}", cursor.unwrap()),
            &other.key,
        )
        .await
        .expect_status(200)
        .json();
    assert_eq!(page["data"].as_array().unwrap().len(), 0, "{page}");
}
