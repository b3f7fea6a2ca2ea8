//! What an adversarial probe found the gateway and the verify pipeline giving away, pinned
//! through the real binary on both databases: refunds of the live price instead of the
//! payment, a cheap overlapping price paying for a dear route, and paths that leave the
//! priced route. Every money test asserts the signed balances of payer, merchant and platform.

// The test bodies are plain `async fn`s that macro-generated `#[tokio::test]`s call, which
// clippy's `allow-unwrap-in-tests` does not recognise as tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use reqwest::Method;
use serde_json::{Value, json};
use support::{MPP_PROBLEMS, Payer, Reply, Server, TP_PROBLEMS, Tenant, Upstream, decision_header};
use turnpike_protocol::parse_challenges;
use turnpike_store::on_both_databases;
use turnpike_store::testing::TestDb;

on_both_databases!(
    a_refund_returns_what_was_paid_when_the_price_was_raised_since,
    a_refund_returns_the_currency_paid_when_the_price_switched_currency,
    a_cheap_overlapping_price_does_not_pay_for_a_dearer_route,
    a_deleted_price_stops_its_challenges_paying,
    paths_that_leave_the_priced_route_are_refused,
    encoded_segments_reach_the_upstream_as_one_segment_under_its_base,
    verify_refuses_a_path_with_dot_segments,
    ledger_check_ties_every_payment_to_its_transfers,
    amounts_beyond_the_bound_are_refused,
);

const CREDIT: u128 = 10_000;

struct Scene {
    server: Server,
    merchant: Tenant,
    payer: Payer,
}

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

/// Payer, merchant and platform, signed, in `currency`.
async fn books(s: &Scene, currency: &str) -> (i128, i128, i128) {
    (
        s.server
            .signed_balance(&s.payer.tenant, "payer_balance", currency)
            .await,
        s.server
            .signed_balance(&s.merchant, "merchant_revenue", currency)
            .await,
        s.server.platform_balance("platform_fees", currency).await,
    )
}

/// A gateway 402: its challenges.
#[track_caller]
fn challenges_of(reply: &Reply) -> Vec<String> {
    assert_eq!(reply.status, 402, "{reply:?}");
    reply.header_all("www-authenticate")
}

/// Challenge `path` at the gateway and have the payer pay it: the `Authorization`.
async fn paid_authorization(s: &Scene, path: &str) -> String {
    let first = Server::read(s.server.gateway(Method::GET, "shop", path)).await;
    let paid = s.server.pay_ok(&s.payer, &challenges_of(&first)).await;
    paid["authorization"].as_str().unwrap().to_owned()
}

async fn patch_price(s: &Scene, price: &Value, body: Value) {
    s.server
        .call(
            Method::PATCH,
            &format!("/v1/prices/{}", price["id"].as_str().unwrap()),
            Some(&s.merchant.key),
            Some(body),
        )
        .await
        .expect_status(200);
}

async fn a_refund_returns_what_was_paid_when_the_price_was_raised_since(db: &TestDb) {
    let s = scene(db).await;
    let failing = Upstream::start().await;
    failing.fail();
    let price = s
        .server
        .price(&s.merchant, "GET", "/item/*", 100, Some(&failing.url))
        .await;
    let authorization = paid_authorization(&s, "/item/1").await;
    // Raised after the challenge was paid: the refund must not follow it.
    patch_price(&s, &price, json!({"amount": "5000"})).await;
    let reply = Server::read(
        s.server
            .gateway(Method::GET, "shop", "/item/1")
            .header("authorization", &authorization),
    )
    .await;
    assert_eq!(reply.status, 500, "{reply:?}");
    assert_eq!(failing.hits(), 1);
    // Everything back where it was, to the unit: nothing gained, nothing lost, no fee kept or
    // refunded that was never charged.
    assert_eq!(books(&s, "usd").await, (CREDIT as i128, 0, 0));
    let payment = &s.server.payments(&s.merchant).await[0];
    assert_eq!(
        (payment["state"].as_str(), payment["amount"].as_str()),
        (Some("refunded"), Some("100")),
        "{payment}"
    );
    // The refund is exactly the payment's postings reversed: 100 back, fee 2 back.
    let detail = s
        .server
        .payment(&s.merchant, payment["id"].as_str().unwrap())
        .await;
    let mut amounts: Vec<&str> = detail["transfers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["kind"] == "posted")
        .map(|t| t["amount"].as_str().unwrap())
        .collect();
    amounts.sort_unstable();
    assert_eq!(amounts, ["100", "2", "2"], "{detail}");
    // The same credential cannot be refunded twice.
    let again = Server::read(
        s.server
            .gateway(Method::GET, "shop", "/item/1")
            .header("authorization", &authorization),
    )
    .await;
    assert_eq!(again.status, 403, "{again:?}");
    assert_eq!(books(&s, "usd").await, (CREDIT as i128, 0, 0));
    s.server.assert_ledger_consistent().await;
}

async fn a_refund_returns_the_currency_paid_when_the_price_switched_currency(db: &TestDb) {
    let s = scene(db).await;
    let failing = Upstream::start().await;
    failing.fail();
    let price = s
        .server
        .price(&s.merchant, "GET", "/fx", 1000, Some(&failing.url))
        .await;
    let authorization = paid_authorization(&s, "/fx").await;
    patch_price(&s, &price, json!({"currency": "eur"})).await;
    let reply = Server::read(
        s.server
            .gateway(Method::GET, "shop", "/fx")
            .header("authorization", &authorization),
    )
    .await;
    assert_eq!(reply.status, 500, "{reply:?}");
    assert_eq!(books(&s, "usd").await, (CREDIT as i128, 0, 0));
    // No euro was paid, so none is refunded, and no euro account goes below zero.
    assert_eq!(books(&s, "eur").await, (0, 0, 0));
    s.server.assert_ledger_consistent().await;
}

async fn a_cheap_overlapping_price_does_not_pay_for_a_dearer_route(db: &TestDb) {
    let s = scene(db).await;
    let upstream = Upstream::start().await;
    // Each pair: a cheap, general price and a dear, specific one for a request it also matches.
    let pairs = [
        (
            ("GET", "/shop/*"),
            ("GET", "/shop/gold"),
            "/shop/x",
            "/shop/gold",
        ),
        (("GET", "/a/{id}"), ("GET", "/a/vip"), "/a/1", "/a/vip"),
        (("*", "/m"), ("DELETE", "/m"), "/m", "/m"),
    ];
    for ((cheap_method, cheap_path), (dear_method, dear_path), cheap_req, dear_req) in pairs {
        s.server
            .price(
                &s.merchant,
                cheap_method,
                cheap_path,
                10,
                Some(&upstream.url),
            )
            .await;
        s.server
            .price(
                &s.merchant,
                dear_method,
                dear_path,
                1000,
                Some(&upstream.url),
            )
            .await;
        let dear = Method::from_bytes(dear_method.as_bytes()).unwrap();
        // A challenge for the cheap request (GET), paid.
        let first = Server::read(s.server.gateway(Method::GET, "shop", cheap_req)).await;
        let paid = s.server.pay_ok(&s.payer, &challenges_of(&first)).await;
        assert_eq!(paid["amount"], "10", "{paid}");
        let authorization = paid["authorization"].as_str().unwrap().to_owned();
        let hits = upstream.hits();

        // Through the gateway: a fresh challenge for the dear price, nothing served.
        let reply = Server::read(
            s.server
                .gateway(dear.clone(), "shop", dear_req)
                .header("authorization", &authorization),
        )
        .await;
        let problem = reply.expect_problem(402, &format!("{MPP_PROBLEMS}invalid-challenge"));
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("another resource or price"),
            "{problem}"
        );
        let fresh = parse_challenges(&reply.header_all("www-authenticate")[0]).unwrap();
        assert_eq!(fresh[0].request_json()["amount"], "1000", "{reply:?}");
        assert_eq!(upstream.hits(), hits, "the dear route was served");

        // Through /v1/verify: the same.
        let decision = s
            .server
            .verify(
                &s.merchant,
                json!(authorization),
                dear.as_str(),
                dear_req,
                None,
            )
            .await
            .expect_status(200)
            .json();
        assert_eq!(decision["decision"], "payment_required", "{decision}");
        let challenge = &decision_header(&decision, "www-authenticate")[0];
        assert_eq!(
            parse_challenges(challenge).unwrap()[0].request_json()["amount"],
            "1000"
        );
        // And the credential still pays for what it was issued for, once.
        let reply = Server::read(
            s.server
                .gateway(Method::GET, "shop", cheap_req)
                .header("authorization", &authorization),
        )
        .await;
        assert_eq!(reply.status, 200, "{reply:?}");
    }
    // Three cheap payments, nothing else: 3 × 10, fee 0 on each (2.5% of 10 rounds down).
    assert_eq!(books(&s, "usd").await, (CREDIT as i128 - 30, 30, 0));
    assert_eq!(s.server.payments(&s.merchant).await.len(), 3);
    s.server.assert_ledger_consistent().await;
}

async fn a_deleted_price_stops_its_challenges_paying(db: &TestDb) {
    let s = scene(db).await;
    let price = s.server.price(&s.merchant, "GET", "/gone", 100, None).await;
    let decision = s.server.challenge(&s.merchant, "GET", "/gone").await;
    let paid = s
        .server
        .pay_ok(&s.payer, &decision_header(&decision, "www-authenticate"))
        .await;
    s.server
        .call(
            Method::DELETE,
            &format!("/v1/prices/{}", price["id"].as_str().unwrap()),
            Some(&s.merchant.key),
            None,
        )
        .await
        .expect_status(200);
    let reply = s
        .server
        .verify(
            &s.merchant,
            paid["authorization"].clone(),
            "GET",
            "/gone",
            None,
        )
        .await;
    reply.expect_problem(404, &format!("{TP_PROBLEMS}no-matching-price"));
    assert!(s.server.payments(&s.merchant).await.is_empty());
    let payer = s.server.balance(&s.payer.tenant, "payer_balance").await;
    // Reserved by the agent's pay call (released at expiry), never posted.
    assert_eq!((payer.debits_posted, payer.debits_pending), (0, 100));
    assert_eq!(books(&s, "usd").await.1, 0);
}

async fn paths_that_leave_the_priced_route_are_refused(db: &TestDb) {
    let s = scene(db).await;
    let cheap = Upstream::start().await;
    let vip = Upstream::start().await;
    s.server
        .price(&s.merchant, "GET", "/cheap/*", 10, Some(&cheap.url))
        .await;
    s.server
        .price(&s.merchant, "GET", "/vip/*", 1000, Some(&vip.url))
        .await;
    let authorization = paid_authorization(&s, "/cheap/x").await;
    for path in [
        "/gw/shop/cheap/../vip/secret",
        "/gw/shop/cheap/./../vip/secret",
        "/gw/shop/cheap/%2e%2e/vip/secret",
        "/gw/shop/cheap/.%2E/vip/secret",
        "/gw/shop/cheap/%2E/x",
        "/gw/shop/cheap/a%2f..%2f..%2fvip",
        "/gw/shop/cheap/a%5c..%5cvip",
        "/gw/shop/cheap/a%3fx",
        "/gw/shop/cheap/a%23x",
        "/gw/shop/cheap/a%00",
        "/gw/shop/cheap//vip",
        "/gw/shop/cheap/%ff",
    ] {
        for with_credential in [false, true] {
            let mut head = format!("GET {path} HTTP/1.1");
            if with_credential {
                head.push_str(&format!("\r\nAuthorization: {authorization}"));
            }
            let (status, head, body) = s.server.raw(&head).await;
            assert_eq!(status, 400, "{path}: {head}\n{body}");
            assert!(
                head.to_ascii_lowercase()
                    .contains("application/problem+json"),
                "{path}: {head}\n{body}"
            );
            let problem: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(
                problem["type"],
                format!("{TP_PROBLEMS}invalid-path"),
                "{body}"
            );
        }
    }
    assert_eq!((cheap.hits(), vip.hits()), (0, 0));
    // Nothing was charged: the credential still pays for its own request.
    assert!(s.server.payments(&s.merchant).await.is_empty());
    let reply = Server::read(
        s.server
            .gateway(Method::GET, "shop", "/cheap/x")
            .header("authorization", &authorization),
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json()["path"], "/cheap/x");
}

async fn encoded_segments_reach_the_upstream_as_one_segment_under_its_base(db: &TestDb) {
    let s = scene(db).await;
    let upstream = Upstream::start().await;
    s.server
        .price(
            &s.merchant,
            "GET",
            "/files/*",
            10,
            Some(&format!("{}/base/", upstream.url)),
        )
        .await;
    for (sent, seen) in [
        ("/files/a%20b", "/base/files/a%20b"),
        ("/files/caf%C3%A9/", "/base/files/caf%C3%A9/"),
        ("/files/50%25", "/base/files/50%25"),
    ] {
        let authorization = paid_authorization(&s, sent).await;
        let reply = Server::read(
            s.server
                .gateway(Method::GET, "shop", &format!("{sent}?q=1"))
                .header("authorization", &authorization),
        )
        .await;
        assert_eq!(reply.status, 200, "{reply:?}");
        let echoed = reply.json();
        assert_eq!(echoed["path"], seen, "{sent}: {echoed}");
        assert_eq!(echoed["query"], "q=1", "{echoed}");
    }
}

async fn verify_refuses_a_path_with_dot_segments(db: &TestDb) {
    let s = scene(db).await;
    s.server
        .price(&s.merchant, "GET", "/cheap/*", 10, None)
        .await;
    for path in ["/cheap/../vip", "/cheap/./x", "/cheap/.."] {
        let reply = s
            .server
            .post(
                "/v1/challenges",
                &s.merchant.key,
                json!({"method": "GET", "path": path}),
            )
            .await;
        reply.expect_problem(400, &format!("{TP_PROBLEMS}invalid-request"));
        let reply = s
            .server
            .verify(&s.merchant, Value::Null, "GET", path, None)
            .await;
        reply.expect_problem(400, &format!("{TP_PROBLEMS}invalid-request"));
    }
}

async fn ledger_check_ties_every_payment_to_its_transfers(db: &TestDb) {
    let s = scene(db).await;
    let ok = Upstream::start().await;
    let failing = Upstream::start().await;
    failing.fail();
    s.server
        .price(&s.merchant, "GET", "/ok", 1000, Some(&ok.url))
        .await;
    s.server
        .price(&s.merchant, "GET", "/fail", 1000, Some(&failing.url))
        .await;
    for path in ["/ok", "/fail"] {
        let authorization = paid_authorization(&s, path).await;
        Server::read(
            s.server
                .gateway(Method::GET, "shop", path)
                .header("authorization", &authorization),
        )
        .await;
    }
    let out = s.server.ledger_check().await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(stdout.contains(", 2 payments: ok"), "{stdout}");
    let payments = s.server.payments(&s.merchant).await;
    let id_of = |state: &str| {
        payments
            .iter()
            .find(|p| p["state"] == state)
            .and_then(|p| p["id"].as_str())
            .unwrap()
            .to_owned()
    };
    let (settled, refunded) = (id_of("settled"), id_of("refunded"));
    // By hand: the settled payment's row claims more than it booked, and the refunded one is
    // put back to settled although its refund is in the ledger.
    let changed = db
        .exec_raw(&format!(
            "UPDATE payments SET amount = '5000' WHERE id = '{settled}'"
        ))
        .await;
    assert_eq!(changed, 1);
    let changed = db
        .exec_raw(&format!(
            "UPDATE payments SET state = 'settled' WHERE id = '{refunded}'"
        ))
        .await;
    assert_eq!(changed, 1);
    let out = s.server.ledger_check().await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        stdout.contains(&format!(
            "payment {settled}: booked 1000 usd, the row says 5000 usd"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "payment {refunded}: a refund or reversal was booked while settled"
        )),
        "{stdout}"
    );
}

async fn amounts_beyond_the_bound_are_refused(db: &TestDb) {
    let s = scene(db).await;
    let max = "1000000000000000000000000000000"; // 10^30
    let over = "1000000000000000000000000000001";
    for amount in [over, &u128::MAX.to_string()] {
        let reply = s
            .server
            .post(
                "/v1/prices",
                &s.merchant.key,
                json!({"route": {"method": "GET", "path": "/big"}, "amount": amount, "currency": "usd"}),
            )
            .await;
        reply.expect_problem(400, &format!("{TP_PROBLEMS}invalid-request"));
        let reply = s
            .server
            .post(
                &format!("/v1/admin/tenants/{}/credit", s.payer.tenant.id),
                support::ADMIN_TOKEN,
                json!({"amount": amount, "currency": "usd"}),
            )
            .await;
        reply.expect_problem(400, &format!("{TP_PROBLEMS}invalid-request"));
    }
    assert!(
        s.server.get("/v1/prices", &s.merchant.key).await.json()["data"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.server
            .signed_balance(&s.payer.tenant, "payer_balance", "usd")
            .await,
        CREDIT as i128
    );
    // The bound itself is accepted.
    let price = s
        .server
        .create_price(
            &s.merchant,
            json!({"route": {"method": "GET", "path": "/big"}, "amount": max, "currency": "usd"}),
        )
        .await;
    assert_eq!(price["amount"], max);
}
