//! A paid gateway request is finished whatever the client, the upstream or the server does:
//! a hostile upstream (slow, hanging, oversized, cut off, forging payment headers) is
//! refunded or relayed without its forged headers; a client that goes away is still served or
//! refunded; a server killed with `kill -9` mid-request leaves the request to the delivery job
//! of the next server. Through the real binary on both databases, balances to the unit.

// The test bodies are plain `async fn`s that macro-generated `#[tokio::test]`s call, which
// clippy's `allow-unwrap-in-tests` does not recognise as tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;
use support::{
    FEE_BPS, HostileUpstream, Limits, Options, Payer, Reply, Server, TP_PROBLEMS, Tenant,
};
use turnpike_protocol::Receipt;
use turnpike_store::on_both_databases;
use turnpike_store::testing::TestDb;

on_both_databases!(
    a_hostile_upstream_is_refunded_or_relayed_without_forged_headers,
    no_payment_credential_reaches_the_upstream_however_it_is_spelled,
    a_client_that_goes_away_is_still_served_or_refunded,
    a_server_killed_mid_request_leaves_it_to_the_next_servers_job,
);

const CREDIT: u128 = 100_000;
const PRICE: u128 = 1_000;

fn fee(amount: u128) -> u128 {
    amount * u128::from(FEE_BPS) / 10_000
}

/// Options with a 3 s upstream timeout (a hanging upstream fails fast, a slow one does not).
fn quick() -> Options {
    Options {
        limits: Limits {
            upstream_timeout_s: 3,
            ..Limits::GENEROUS
        },
        ..Options::default()
    }
}

struct Scene {
    server: Server,
    merchant: Tenant,
    payer: Payer,
    upstream: HostileUpstream,
}

async fn scene(db: &TestDb) -> Scene {
    let server = Server::start_with(db, quick()).await;
    let merchant = server.create_tenant("shop").await;
    let payer = server.payer("buyer", CREDIT).await;
    let upstream = HostileUpstream::start().await;
    server
        .price(&merchant, "*", "/*", PRICE, Some(&upstream.url))
        .await;
    Scene {
        server,
        merchant,
        payer,
        upstream,
    }
}

/// Payer, merchant and platform, signed, in usd.
async fn books(server: &Server, merchant: &Tenant, payer: &Payer) -> (i128, i128, i128) {
    (
        server
            .signed_balance(&payer.tenant, "payer_balance", "usd")
            .await,
        server
            .signed_balance(merchant, "merchant_revenue", "usd")
            .await,
        server.platform_balance("platform_fees", "usd").await,
    )
}

/// The books after `served` payments kept (the others refunded).
fn kept(served: u128) -> (i128, i128, i128) {
    let paid = served * PRICE;
    let fees = served * fee(PRICE);
    ((CREDIT - paid) as i128, (paid - fees) as i128, fees as i128)
}

async fn authorization(server: &Server, payer: &Payer, path: &str) -> String {
    let first = Server::read(server.gateway(Method::GET, "shop", path)).await;
    assert_eq!(first.status, 402, "{first:?}");
    let paid = server
        .pay_ok(payer, &first.header_all("www-authenticate"))
        .await;
    paid["authorization"].as_str().unwrap().to_owned()
}

async fn paid_get(s: &Scene, path: &str) -> Reply {
    let authorization = authorization(&s.server, &s.payer, path).await;
    Server::read(
        s.server
            .gateway(Method::GET, "shop", path)
            .header("authorization", authorization),
    )
    .await
}

async fn a_hostile_upstream_is_refunded_or_relayed_without_forged_headers(db: &TestDb) {
    let s = scene(db).await;
    for (path, detail) in [
        ("/big", "too large"),
        ("/cut", "broke off"),
        ("/hang", "did not answer in time"),
    ] {
        let reply = paid_get(&s, path).await;
        let problem = reply.expect_problem(502, &format!("{TP_PROBLEMS}upstream-failed"));
        let said = problem["detail"].as_str().unwrap();
        // A body cut off may fail before or after its head reached the gateway.
        assert!(
            said.contains(detail) || (path == "/cut" && said.contains("could not be reached")),
            "{path}: {problem}"
        );
        assert!(said.ends_with("the payment was refunded"), "{problem}");
        assert!(reply.header("payment-receipt").is_none(), "{reply:?}");
        assert_eq!(
            books(&s.server, &s.merchant, &s.payer).await,
            kept(0),
            "{path}"
        );
    }
    let reply = paid_get(&s, "/forge").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    // Only Turnpike's own receipt, for this payment; none of the upstream's payment headers.
    let receipts = reply.header_all("payment-receipt");
    assert_eq!(receipts.len(), 1, "{reply:?}");
    let receipt = Receipt::parse(&receipts[0]).unwrap();
    let payments = s.server.payments(&s.merchant).await;
    let settled = payments.iter().find(|p| p["state"] == "settled").unwrap();
    assert_eq!(receipt.reference, settled["id"].as_str().unwrap());
    assert!(reply.header("www-authenticate").is_none(), "{reply:?}");
    assert!(reply.header("x-turnpike-payment").is_none(), "{reply:?}");
    assert_eq!(reply.text(), "forged");
    assert_eq!(books(&s.server, &s.merchant, &s.payer).await, kept(1));
    let states: Vec<&str> = payments
        .iter()
        .map(|p| p["state"].as_str().unwrap())
        .collect();
    assert_eq!(
        states.iter().filter(|s| **s == "refunded").count(),
        3,
        "{states:?}"
    );
    s.server.assert_ledger_consistent().await;
}

async fn no_payment_credential_reaches_the_upstream_however_it_is_spelled(db: &TestDb) {
    let s = scene(db).await;
    let mut served = 0;
    for spelling in [
        "Payment {}",
        "Bearer x, payment {}",
        "Basic eA==,Payment {}",
    ] {
        let authorization = authorization(&s.server, &s.payer, "/echo").await;
        let token = authorization.strip_prefix("Payment ").unwrap();
        let value = spelling.replace("{}", token);
        let reply = Server::read(
            s.server
                .gateway(Method::GET, "shop", "/echo")
                .header("authorization", &value)
                .header("authorization", "Bearer for-the-upstream"),
        )
        .await;
        assert_eq!(reply.status, 200, "{spelling}: {reply:?}");
        served += 1;
        // The upstream's own credential goes through; the payment never does.
        assert_eq!(
            reply.json()["authorizations"],
            serde_json::json!(["Bearer for-the-upstream"]),
            "{spelling}"
        );
    }
    // A tab after the scheme: whether or not it pays, it never reaches the upstream.
    let authorization = authorization(&s.server, &s.payer, "/echo").await;
    let tabbed = authorization.replacen(' ', "\t", 1);
    let reply = Server::read(
        s.server
            .gateway(Method::GET, "shop", "/echo")
            .header("authorization", &tabbed),
    )
    .await;
    if reply.status == 200 {
        served += 1;
        assert_eq!(reply.json()["authorizations"], serde_json::json!([]));
    } else {
        assert_eq!(reply.status, 402, "{reply:?}");
    }
    assert_eq!(
        books(&s.server, &s.merchant, &s.payer).await.1,
        kept(served).1
    );
}

/// Wait (at most `within`) until `done` says so.
async fn eventually<F, Fut>(within: Duration, what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !done().await {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The state of the payment for `path`'s newest challenge... by the merchant's newest payment.
async fn newest_state(server: &Server, merchant: &Tenant) -> Option<String> {
    server
        .payments(merchant)
        .await
        .first()
        .map(|p| p["state"].as_str().unwrap().to_owned())
}

/// Send a paid request and go away once the upstream has it, before it answers.
async fn send_and_hang_up(s: &Scene, path: &str) -> String {
    let authorization = authorization(&s.server, &s.payer, path).await;
    let hits = s.upstream.hits();
    let request = s
        .server
        .gateway(Method::GET, "shop", path)
        .header("authorization", &authorization);
    let client = tokio::spawn(request.send());
    eventually(
        Duration::from_secs(10),
        "the upstream is called",
        || async { s.upstream.hits() == hits + 1 },
    )
    .await;
    // Dropping the request closes its connection: the client is gone.
    client.abort();
    assert!(client.await.is_err_and(|e| e.is_cancelled()));
    authorization
}

async fn a_client_that_goes_away_is_still_served_or_refunded(db: &TestDb) {
    let s = scene(db).await;
    // The upstream fails after the client left: refunded all the same.
    send_and_hang_up(&s, "/slow-fail").await;
    eventually(Duration::from_secs(10), "refunded", || async {
        newest_state(&s.server, &s.merchant).await.as_deref() == Some("refunded")
    })
    .await;
    assert_eq!(books(&s.server, &s.merchant, &s.payer).await, kept(0));

    // The upstream serves after the client left: the payment stands, charged once; the
    // client's retry of the credential pays nothing more.
    let authorization = send_and_hang_up(&s, "/slow-ok").await;
    eventually(Duration::from_secs(10), "served", || async {
        s.upstream.finished() == 2
    })
    .await;
    let retry = Server::read(
        s.server
            .gateway(Method::GET, "shop", "/slow-ok")
            .header("authorization", &authorization),
    )
    .await;
    retry.expect_problem(403, &format!("{TP_PROBLEMS}credential-already-used"));
    // Past the job's grace (upstream timeout + 5 s): a finished delivery is never refunded.
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert_eq!(
        newest_state(&s.server, &s.merchant).await.as_deref(),
        Some("settled")
    );
    assert_eq!(books(&s.server, &s.merchant, &s.payer).await, kept(1));
    assert_eq!(s.upstream.hits(), 2);
    s.server.assert_ledger_consistent().await;
}

async fn a_server_killed_mid_request_leaves_it_to_the_next_servers_job(db: &TestDb) {
    let mut s = scene(db).await;
    let authorization = authorization(&s.server, &s.payer, "/hang").await;
    let request = s
        .server
        .gateway(Method::GET, "shop", "/hang")
        .header("authorization", &authorization);
    let pending = tokio::spawn(request.send());
    eventually(
        Duration::from_secs(10),
        "the upstream is called",
        || async { s.upstream.hits() == 1 },
    )
    .await;
    // Paid, the upstream working: the server dies.
    assert_eq!(
        newest_state(&s.server, &s.merchant).await.as_deref(),
        Some("settled")
    );
    s.server.kill9();
    assert!(pending.await.unwrap().is_err());

    // The next server takes another platform fee (10% against 2.5%): the refund returns the
    // fee the payment paid, not the one configured now.
    let server = Server::start_with(
        db,
        Options {
            fee_bps: 1_000,
            ..quick()
        },
    )
    .await;
    let merchant = &s.merchant;
    eventually(Duration::from_secs(20), "refunded by the job", || async {
        newest_state(&server, merchant).await.as_deref() == Some("refunded")
    })
    .await;
    assert!(server.log().contains("left unfinished"), "{}", server.log());
    assert_eq!(books(&server, merchant, &s.payer).await, kept(0));
    let payments: Vec<Value> = server.payments(merchant).await;
    assert_eq!(payments.len(), 1);
    // The credential pays nothing more (this server has another address, so its challenge no
    // longer matches either).
    let retry = Server::read(
        server
            .gateway(Method::GET, "shop", "/hang")
            .header("authorization", &authorization),
    )
    .await;
    assert!(matches!(retry.status, 402 | 403), "{retry:?}");
    assert_eq!(server.payments(merchant).await.len(), 1);
    server.assert_ledger_consistent().await;
}
