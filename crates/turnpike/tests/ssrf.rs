//! Black-box tests of the outbound policy (issue 14, item 5: SSRF): a server started without
//! `--outbound-allow` refuses gateway upstreams and rail RPCs on loopback, private, link-local,
//! unspecified or numerically obfuscated hosts, userinfo, and DNS names resolving to such
//! addresses; with the switch, loopback works; and a stored upstream the policy no longer allows
//! is never reached. On SQLite and on PostgreSQL.

// The test bodies are plain `async fn`s that macro-generated `#[tokio::test]`s call, which
// clippy's `allow-unwrap-in-tests` does not recognise as tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use reqwest::Method;
use serde_json::{Value, json};
use support::{ADMIN_TOKEN, Options, Reply, Server, TP_PROBLEMS, Tenant, Upstream};
use turnpike_store::on_both_databases;
use turnpike_store::testing::TestDb;

on_both_databases!(
    hostile_upstream_urls_are_refused_and_nothing_is_created,
    rail_and_deposit_rpc_urls_on_loopback_are_refused,
    with_the_switch_loopback_is_allowed_and_the_rest_still_refused,
    a_stored_upstream_the_policy_no_longer_allows_is_never_reached,
);

const STRICT: Options = Options {
    admin: true,
    fee_bps: support::FEE_BPS,
    test_clock: false,
    secrets_key: true,
    metrics_token: None,
    outbound_allow: false,
    limits: support::Limits::GENEROUS,
};

/// A test address (EIP-55 irrelevant: the server parses any hex).
const RECIPIENT: &str = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8";
const TOKEN: &str = "0x5FbDB2315678afecb367f032d93F642f64180aa3";

/// Upstream URLs a server without `--outbound-allow` must refuse; `{up}` is a live loopback
/// upstream, `{self}` the server itself (its `/metrics`).
const HOSTILE: &[&str] = &[
    "{up}",
    "{self}",
    "http://127.1/",
    "http://127.0.1:80/",
    "http://2130706433/",
    "http://0x7f.1/",
    "http://0x7f000001/",
    "http://0177.0.0.1/",
    "http://0/",
    "http://[::1]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:7f00:1]/",
    "http://[fe80::1]/",
    "http://[fd00::1]/",
    "http://169.254.169.254/latest/meta-data",
    "http://0.0.0.0/",
    "http://10.0.0.1/",
    "http://172.16.0.1/",
    "http://192.168.1.1/",
    "http://100.64.0.1/",
    "http://u:p@example.com/",
    "http://user@upstream.invalid/",
    "http://localhost/",
    "http://LOCALHOST./",
];

fn hostile(up: &str, server: &str) -> Vec<String> {
    HOSTILE
        .iter()
        .map(|u| {
            u.replace("{up}", up)
                .replace("{self}", &format!("{server}/metrics"))
        })
        .collect()
}

fn price_body(upstream: &str) -> Value {
    json!({
        "route": {"method": "GET", "path": "/data/*"},
        "amount": "100",
        "currency": "usd",
        "upstreamUrl": upstream,
    })
}

#[track_caller]
fn expect_refused(reply: &Reply, field: &str, url: &str) {
    let problem = reply.expect_problem(400, &format!("{TP_PROBLEMS}invalid-request"));
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains(&format!("`{field}`")), "{url}: {problem}");
    assert_eq!(problem["field"], field, "{url}: {problem}");
    // The answer says why, never which address a name resolved to.
    assert!(!detail.contains("127.0.0.1"), "{url}: {problem}");
}

async fn prices(server: &Server, tenant: &Tenant) -> Vec<Value> {
    server
        .get("/v1/prices", &tenant.key)
        .await
        .expect_status(200)
        .json()["data"]
        .as_array()
        .unwrap()
        .clone()
}

async fn hostile_upstream_urls_are_refused_and_nothing_is_created(db: &TestDb) {
    let server = Server::start_with(db, STRICT).await;
    let merchant = server.create_tenant("shop").await;
    let upstream = Upstream::start().await;
    for url in hostile(&upstream.url, &server.url) {
        let reply = server
            .post("/v1/prices", &merchant.key, price_body(&url))
            .await;
        expect_refused(&reply, "upstreamUrl", &url);
    }
    assert!(prices(&server, &merchant).await.is_empty());

    // A patch cannot point an existing price there either.
    let price = server.price(&merchant, "GET", "/plain", 100, None).await;
    let id = price["id"].as_str().unwrap();
    for url in hostile(&upstream.url, &server.url) {
        let reply = server
            .call(
                Method::PATCH,
                &format!("/v1/prices/{id}"),
                Some(&merchant.key),
                Some(json!({"upstreamUrl": url})),
            )
            .await;
        expect_refused(&reply, "upstreamUrl", &url);
    }
    let after = prices(&server, &merchant).await;
    assert_eq!(after.len(), 1);
    assert_eq!(after[0]["version"], 1, "{after:?}");
    assert!(after[0].get("upstreamUrl").is_none(), "{after:?}");
    assert_eq!(upstream.hits(), 0);

    // A public address, and a name that does not resolve now, are fine.
    for (path, url) in [
        ("/public/*", "http://93.184.216.34/api"),
        ("/later/*", "https://upstream.invalid/v1"),
    ] {
        let mut body = price_body(url);
        body["route"]["path"] = json!(path);
        server
            .post("/v1/prices", &merchant.key, body)
            .await
            .expect_status(201);
    }
    assert_eq!(prices(&server, &merchant).await.len(), 3);
    server.assert_ledger_consistent().await;
}

fn evm_body(rpc: &str) -> Value {
    json!({
        "chainId": 31337,
        "rpcUrl": rpc,
        "recipient": RECIPIENT,
        "tokens": [{"currency": "usdc", "address": TOKEN, "decimals": 6}],
    })
}

fn tempo_body(rpc: &str) -> Value {
    json!({
        "chainId": 42431,
        "rpcUrl": rpc,
        "recipient": RECIPIENT,
        "tokens": [{"currency": "usdc", "address": TOKEN}],
    })
}

async fn rail_and_deposit_rpc_urls_on_loopback_are_refused(db: &TestDb) {
    let server = Server::start_with(db, STRICT).await;
    let merchant = server.create_tenant("shop").await;
    for rpc in [
        "http://127.0.0.1:8545",
        "http://localhost:8545",
        "http://127.1:8545",
        "http://[::1]:8545",
        "http://169.254.169.254/",
        "http://u:p@rpc.invalid/",
        "http://rpc.localhost:8545",
    ] {
        for (method, body) in [("evm", evm_body(rpc)), ("tempo", tempo_body(rpc))] {
            let reply = server
                .call(
                    Method::PUT,
                    &format!("/v1/rails/{method}"),
                    Some(&merchant.key),
                    Some(body),
                )
                .await;
            expect_refused(&reply, "rpcUrl", rpc);
            server
                .get(&format!("/v1/rails/{method}"), &merchant.key)
                .await
                .expect_status(404);
        }
        let deposit = json!({
            "chainId": 31337,
            "rpcUrl": rpc,
            "confirmations": 1,
            "tokens": {"usdc": {"address": TOKEN, "decimals": 6}},
        });
        let reply = server
            .call(
                Method::PUT,
                "/v1/admin/deposits/evm",
                Some(ADMIN_TOKEN),
                Some(deposit),
            )
            .await;
        expect_refused(&reply, "rpcUrl", rpc);
    }
    // Other mistakes still name their own field first.
    let mut body = evm_body("http://127.0.0.1:8545");
    body["recipient"] = json!("0x12");
    let reply = server
        .call(
            Method::PUT,
            "/v1/rails/evm",
            Some(&merchant.key),
            Some(body),
        )
        .await;
    let problem = reply.expect_problem(400, &format!("{TP_PROBLEMS}invalid-request"));
    assert!(
        problem["detail"].as_str().unwrap().contains("recipient"),
        "{problem}"
    );
}

async fn with_the_switch_loopback_is_allowed_and_the_rest_still_refused(db: &TestDb) {
    let server = Server::start(db).await;
    let merchant = server.create_tenant("shop").await;
    let upstream = Upstream::start().await;
    let port = upstream.url.rsplit(':').next().unwrap();
    for url in [upstream.url.clone(), format!("http://localhost:{port}")] {
        server
            .post("/v1/prices", &merchant.key, price_body(&url))
            .await
            .expect_status(201);
        let id = prices(&server, &merchant).await[0]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        server
            .call(
                Method::DELETE,
                &format!("/v1/prices/{id}"),
                Some(&merchant.key),
                None,
            )
            .await
            .expect_status(200);
    }
    // The switch allows 127.0.0.0/8 and ::1, nothing else; numeric tricks stay refused.
    for url in [
        "http://127.1/",
        "http://2130706433/",
        "http://169.254.169.254/",
        "http://10.0.0.1/",
        "http://u:p@127.0.0.1/",
    ] {
        let reply = server
            .post("/v1/prices", &merchant.key, price_body(url))
            .await;
        expect_refused(&reply, "upstreamUrl", url);
    }
    // A loopback RPC passes the policy (the rail itself is checked by the evm tests).
    let reply = server
        .call(
            Method::PUT,
            "/v1/rails/evm",
            Some(&merchant.key),
            Some(evm_body("http://127.0.0.1:1")),
        )
        .await;
    assert_eq!(reply.status, 201, "{reply:?}");
}

/// A price stored while loopback was allowed, served by a server started without the switch:
/// the paid request never reaches the upstream (the gateway checks the literal before sending),
/// and the payer is refunded as for any unreachable upstream.
async fn a_stored_upstream_the_policy_no_longer_allows_is_never_reached(db: &TestDb) {
    let upstream = Upstream::start().await;
    let (merchant, payer) = {
        let server = Server::start(db).await;
        let merchant = server.create_tenant("shop").await;
        let payer = server.payer("buyer", 10_000).await;
        server
            .price(&merchant, "GET", "/data/*", 100, Some(&upstream.url))
            .await;
        (merchant, payer)
    };
    let server = Server::start_with(db, STRICT).await;
    let first = Server::read(server.gateway(Method::GET, &merchant.slug, "/data/x")).await;
    assert_eq!(first.status, 402, "{first:?}");
    let paid = server
        .pay_ok(&payer, &first.header_all("www-authenticate"))
        .await;
    let reply = Server::read(
        server
            .gateway(Method::GET, &merchant.slug, "/data/x")
            .header("authorization", paid["authorization"].as_str().unwrap()),
    )
    .await;
    let problem = reply.expect_problem(502, &format!("{TP_PROBLEMS}upstream-failed"));
    assert!(!problem.to_string().contains("127.0.0.1"), "{problem}");
    assert_eq!(upstream.hits(), 0);
    let balance = server.balance(&payer.tenant, "payer_balance").await;
    assert_eq!((balance.available, balance.debits_pending), (10_000, 0));
    server.assert_ledger_consistent().await;
}
