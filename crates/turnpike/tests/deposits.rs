//! Black-box tests of deposits on a real chain: anvil, the project's test stablecoin, and the
//! real `turnpike serve` binary over HTTP, on SQLite and on PostgreSQL. Stablecoins sent to an
//! organisation's deposit address credit its Turnpike balance once, after the configured
//! confirmations; other addresses and unconfigured tokens are ignored; a restart, a rescan and a
//! second replica credit nothing twice; the deposited balance pays a merchant with `turnpike`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use alloy::primitives::Address;
use alloy::signers::local::PrivateKeySigner;
use reqwest::Method;
use serde_json::{Value, json};
use support::chain::{self, Anvil, RpcProxy};
use support::{ADMIN_TOKEN, Options, Payer, Reply, Server, TP_PROBLEMS, Tenant};
use turnpike_server::secrets::SecretsKey;
use turnpike_store::on_both_databases;
use turnpike_store::testing::TestDb;

on_both_databases!(
    deposits_are_credited_once_after_their_confirmations_and_pay_a_merchant,
    a_restart_a_rescan_and_a_second_replica_credit_nothing_twice,
    an_rpc_that_stops_answering_only_delays_deposits,
    bad_deposit_configuration_is_refused_and_nothing_is_stored,
    deposit_addresses_need_the_secrets_key_and_never_show_their_key,
);

const CONFIG_PATH: &str = "/v1/admin/deposits/evm";
const ADDRESS_PATH: &str = "/v1/deposits/evm/address";
/// Longest wait for the watcher (it polls every second).
const WAIT: Duration = Duration::from_secs(30);

fn config_body(anvil: &Anvil, token: Address, confirmations: u32) -> Value {
    json!({
        "chainId": anvil.chain_id(),
        "rpcUrl": anvil.rpc_url(),
        "confirmations": confirmations,
        "tokens": {"usdc": {"address": token.to_checksum(None), "decimals": 6}},
    })
}

async fn put_config(server: &Server, body: Value) -> Reply {
    server
        .call(Method::PUT, CONFIG_PATH, Some(ADMIN_TOKEN), Some(body))
        .await
}

/// The tenant's deposit address (created on first call).
async fn deposit_address(server: &Server, tenant: &Tenant) -> Address {
    let reply = server
        .call(Method::POST, ADDRESS_PATH, Some(&tenant.key), None)
        .await;
    assert!(reply.status == 201 || reply.status == 200, "{reply:?}");
    reply.json()["address"].as_str().unwrap().parse().unwrap()
}

/// The tenant's available `usdc` Turnpike balance.
async fn usdc(server: &Server, tenant: &Tenant) -> u128 {
    let body = server
        .get("/v1/balances", &tenant.key)
        .await
        .expect_status(200)
        .json();
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["kind"] == "payer_balance" && a["currency"] == "usdc")
        .map(|a| a["available"].as_str().unwrap().parse::<u128>().unwrap())
        .sum()
}

async fn deposits(server: &Server, tenant: &Tenant) -> Vec<Value> {
    server
        .get("/v1/deposits", &tenant.key)
        .await
        .expect_status(200)
        .json()["data"]
        .as_array()
        .unwrap()
        .clone()
}

/// The watcher's cursor (the next block it scans) as the operator API reports it.
async fn next_block(server: &Server) -> u64 {
    server
        .get(CONFIG_PATH, ADMIN_TOKEN)
        .await
        .expect_status(200)
        .json()["nextBlock"]
        .as_u64()
        .unwrap()
}

/// Wait until the watcher's cursor is at least `block`.
async fn wait_scanned_to(server: &Server, block: u64) {
    let deadline = Instant::now() + WAIT;
    while next_block(server).await < block {
        assert!(
            Instant::now() < deadline,
            "the watcher did not reach block {block}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Wait until the tenant's `usdc` balance is `expected`.
async fn wait_balance(server: &Server, tenant: &Tenant, expected: u128) {
    let deadline = Instant::now() + WAIT;
    loop {
        let now = usdc(server, tenant).await;
        if now == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "balance {now}, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn deposits_are_credited_once_after_their_confirmations_and_pay_a_merchant(db: &TestDb) {
    let anvil = Anvil::start().await;
    let token = chain::deploy_stablecoin(&anvil, chain::TOKEN_NAME, chain::TOKEN_VERSION).await;
    let unconfigured = chain::deploy_stablecoin(&anvil, "Other USD", "1").await;
    let sender = 3;
    chain::mint(&anvil, token, anvil.address(sender), 10_000_000).await;
    let server = Server::start(db).await;
    let reply = put_config(&server, config_body(&anvil, token, 3))
        .await
        .expect_status(201);
    let config = reply.json();
    assert_eq!(config["confirmations"], 3, "{config}");
    assert_eq!(
        config["tokens"]["usdc"]["address"],
        token.to_checksum(None),
        "{config}"
    );
    assert_eq!(config["nextBlock"], anvil.block_number().await, "{config}");

    let org = server.create_tenant("org").await;
    let first = server
        .call(Method::POST, ADDRESS_PATH, Some(&org.key), None)
        .await
        .expect_status(201)
        .json();
    assert_eq!(first["chainId"], anvil.chain_id(), "{first}");
    assert_eq!(first["confirmations"], 3, "{first}");
    assert_eq!(first["tokens"]["usdc"]["decimals"], 6, "{first}");
    assert!(first.get("rpcUrl").is_none(), "{first}");
    let again = server
        .call(Method::POST, ADDRESS_PATH, Some(&org.key), None)
        .await
        .expect_status(200)
        .json();
    assert_eq!(again, first, "the same address every time");
    let read = server.get(ADDRESS_PATH, &org.key).await.expect_status(200);
    assert_eq!(read.json(), first);
    let address: Address = first["address"].as_str().unwrap().parse().unwrap();
    // Another organisation has its own address, which receives nothing.
    let other = server.create_tenant("other").await;
    server
        .get(ADDRESS_PATH, &other.key)
        .await
        .expect_problem(404, &format!("{TP_PROBLEMS}not-found"));
    let other_address = deposit_address(&server, &other).await;
    assert_ne!(other_address, address);

    // A transfer is credited only once three blocks include and follow it.
    let hash =
        chain::broadcast_transfer(&anvil, &anvil.signer(sender), token, address, 1_000_000).await;
    let included = anvil.receipt(hash).await.unwrap().block_number.unwrap();
    assert_eq!(anvil.block_number().await, included);
    wait_scanned_to(&server, included - 1).await;
    assert_eq!(
        usdc(&server, &org).await,
        0,
        "one confirmation is not enough"
    );
    anvil.mine(1).await;
    wait_scanned_to(&server, included).await;
    assert_eq!(
        usdc(&server, &org).await,
        0,
        "two confirmations are not enough"
    );
    assert!(deposits(&server, &org).await.is_empty());
    anvil.mine(1).await;
    wait_balance(&server, &org, 1_000_000).await;

    // An unconfigured token sent to the address is ignored; so is what the batch below sends
    // to an address that is no deposit address. The batch's two transfers to the deposit
    // address, one transaction with two logs, are both credited.
    chain::mint(&anvil, unconfigured, address, 5_000_000).await;
    let batcher = chain::deploy_batch_sender(&anvil).await;
    chain::mint(&anvil, token, batcher, 900_000).await;
    let batch = chain::batch_send(
        &anvil,
        batcher,
        token,
        &[
            (address, 200_000),
            (address, 300_000),
            (anvil.address(5), 400_000),
        ],
    )
    .await;
    assert_eq!(chain::transfers(token, &batch).len(), 3);
    anvil.mine(2).await;
    wait_balance(&server, &org, 1_500_000).await;
    let batch_block = batch.block_number.unwrap();
    wait_scanned_to(&server, batch_block + 1).await;
    assert_eq!(usdc(&server, &org).await, 1_500_000);

    let listed = deposits(&server, &org).await;
    assert_eq!(listed.len(), 3, "{listed:?}");
    let batch_hash = batch.transaction_hash.to_string();
    assert_eq!(listed[0]["txHash"], batch_hash);
    assert_eq!(listed[1]["txHash"], batch_hash);
    assert_eq!(listed[0]["amount"], "300000", "newest first: {listed:?}");
    assert_eq!(listed[1]["amount"], "200000", "{listed:?}");
    assert_ne!(listed[0]["logIndex"], listed[1]["logIndex"]);
    assert_eq!(listed[0]["blockNumber"], batch_block);
    assert_eq!(listed[2]["txHash"], hash.to_string());
    assert_eq!(listed[2]["blockNumber"], included);
    assert_eq!(listed[2]["amount"], "1000000");
    assert_eq!(listed[2]["currency"], "usdc");
    assert_eq!(listed[2]["token"], token.to_checksum(None));
    assert_eq!(listed[2]["from"], anvil.address(sender).to_checksum(None));
    assert_eq!(listed[2]["address"], address.to_checksum(None));
    assert!(listed[2]["creditedAt"].is_string());
    assert_eq!(usdc(&server, &other).await, 0);
    assert!(deposits(&server, &other).await.is_empty());
    let newest = server
        .get("/v1/deposits?limit=1", &org.key)
        .await
        .expect_status(200)
        .json();
    assert_eq!(newest["data"].as_array().unwrap().len(), 1);
    assert_eq!(newest["data"][0], listed[0]);
    server
        .get("/v1/deposits?limit=many", &org.key)
        .await
        .expect_problem(400, &format!("{TP_PROBLEMS}invalid-request"));

    // The deposited balance pays a merchant with the `turnpike` method.
    let shop = server.create_tenant("shop").await;
    server
        .create_price(
            &shop,
            json!({"route": {"method": "GET", "path": "/v1/data"}, "amount": "250000",
                   "currency": "usdc"}),
        )
        .await;
    let agent_id = server.create_agent(&org, "buyer").await;
    let (token_id, agent_token) = server.create_token(&org, &agent_id, json!({})).await;
    let payer = Payer {
        tenant: org.clone(),
        agent_id,
        token_id,
        token: agent_token,
    };
    let authorization = server.credential(&shop, &payer, "GET", "/v1/data").await;
    let decision = server
        .verify(&shop, json!(authorization), "GET", "/v1/data", None)
        .await
        .expect_status(200)
        .json();
    assert_eq!(decision["decision"], "paid", "{decision}");
    assert_eq!(usdc(&server, &org).await, 1_250_000);

    let metrics = server.metrics().await;
    assert!(
        metrics.contains(&format!(
            "turnpike_deposits_next_block{{chain_id=\"{}\"}}",
            anvil.chain_id()
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains("turnpike_deposits_credited_total 3"),
        "{metrics}"
    );
    server.assert_ledger_consistent().await;
}

async fn a_restart_a_rescan_and_a_second_replica_credit_nothing_twice(db: &TestDb) {
    let anvil = Anvil::start().await;
    let token = chain::deploy_stablecoin(&anvil, chain::TOKEN_NAME, chain::TOKEN_VERSION).await;
    chain::mint(&anvil, token, anvil.address(3), 10_000_000).await;
    let server = Server::start(db).await;
    put_config(&server, config_body(&anvil, token, 1))
        .await
        .expect_status(201);
    let org = server.create_tenant("org").await;
    let address = deposit_address(&server, &org).await;
    let hash = chain::broadcast_transfer(&anvil, &anvil.signer(3), token, address, 700_000).await;
    let included = anvil.receipt(hash).await.unwrap().block_number.unwrap();
    wait_balance(&server, &org, 700_000).await;
    drop(server);

    // Restarted on the same database, with a second replica beside it, both told to scan the
    // whole chain again: the log is credited already, so nothing moves.
    let server = Server::start(db).await;
    let replica = Server::start(db).await;
    assert_eq!(usdc(&server, &org).await, 700_000);
    let rescan = {
        let mut body = config_body(&anvil, token, 1);
        body["startBlock"] = json!(0);
        body
    };
    let reply = put_config(&replica, rescan).await.expect_status(200);
    assert_eq!(reply.json()["version"], 2);
    assert_eq!(reply.json()["nextBlock"], 0);
    wait_scanned_to(&server, included + 1).await;
    assert_eq!(usdc(&server, &org).await, 700_000);
    assert_eq!(deposits(&replica, &org).await.len(), 1);

    // A new transfer, watched by both replicas, is credited once.
    chain::broadcast_transfer(&anvil, &anvil.signer(3), token, address, 50_000).await;
    wait_balance(&replica, &org, 750_000).await;
    let head = anvil.block_number().await;
    wait_scanned_to(&server, head + 1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(usdc(&server, &org).await, 750_000);
    assert_eq!(deposits(&server, &org).await.len(), 2);
    // The address survives the restart.
    assert_eq!(deposit_address(&server, &org).await, address);
    drop(replica);
    server.assert_ledger_consistent().await;
}

async fn an_rpc_that_stops_answering_only_delays_deposits(db: &TestDb) {
    let anvil = Anvil::start().await;
    let token = chain::deploy_stablecoin(&anvil, chain::TOKEN_NAME, chain::TOKEN_VERSION).await;
    chain::mint(&anvil, token, anvil.address(3), 10_000_000).await;
    let proxy = RpcProxy::start(anvil.rpc_url()).await;
    let server = Server::start(db).await;
    let mut body = config_body(&anvil, token, 1);
    body["rpcUrl"] = json!(proxy.url());
    put_config(&server, body).await.expect_status(201);
    let org = server.create_tenant("org").await;
    let address = deposit_address(&server, &org).await;
    let scanned = next_block(&server).await;
    proxy.cut();
    chain::broadcast_transfer(&anvil, &anvil.signer(3), token, address, 123_456).await;
    anvil.mine(2).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(usdc(&server, &org).await, 0);
    assert_eq!(next_block(&server).await, scanned, "no block is skipped");
    server.get("/readyz", &org.key).await.expect_status(200);
    assert!(
        server.log().contains("deposit scan failed"),
        "a warning is logged: {}",
        server.log()
    );
    proxy.restore();
    wait_balance(&server, &org, 123_456).await;
    assert_eq!(deposits(&server, &org).await.len(), 1);
    server.assert_ledger_consistent().await;
}

async fn bad_deposit_configuration_is_refused_and_nothing_is_stored(db: &TestDb) {
    let anvil = Anvil::start().await;
    let token = chain::deploy_stablecoin(&anvil, chain::TOKEN_NAME, chain::TOKEN_VERSION).await;
    let server = Server::start(db).await;
    let org = server.create_tenant("org").await;
    let disabled = format!("{TP_PROBLEMS}deposits-disabled");
    server
        .call(Method::POST, ADDRESS_PATH, Some(&org.key), None)
        .await
        .expect_problem(404, &disabled);
    let good = config_body(&anvil, token, 2);
    let with = |pointer: &str, value: Value| {
        let mut body = good.clone();
        *body.pointer_mut(pointer).unwrap() = value;
        body
    };
    let mut unknown_field = good.clone();
    unknown_field["hotWalletKey"] = json!(anvil.private_key_hex(1));
    let mut unknown_token_field = good.clone();
    unknown_token_field["tokens"]["usdc"]["name"] = json!("USD Coin");
    let mut two_currencies_one_token = good.clone();
    two_currencies_one_token["tokens"]["usd"] = good["tokens"]["usdc"].clone();
    let mut negative_start = good.clone();
    negative_start["startBlock"] = json!(-1);
    let mut missing = good.clone();
    missing.as_object_mut().unwrap().remove("confirmations");
    let invalid = format!("{TP_PROBLEMS}invalid-request");
    for (what, body) in [
        ("chain id zero", with("/chainId", json!(0))),
        ("chain id of another chain", with("/chainId", json!(1))),
        ("chain id as a string", with("/chainId", json!("31337"))),
        (
            "rpc url not http",
            with("/rpcUrl", json!("ftp://127.0.0.1:1")),
        ),
        ("no confirmations", with("/confirmations", json!(0))),
        ("too many confirmations", with("/confirmations", json!(65))),
        ("confirmations missing", missing),
        ("no tokens", with("/tokens", json!({}))),
        (
            "zero token address",
            with("/tokens/usdc/address", json!(Address::ZERO.to_string())),
        ),
        (
            "bad token address",
            with("/tokens/usdc/address", json!("0x12")),
        ),
        (
            "too many decimals",
            with("/tokens/usdc/decimals", json!(99)),
        ),
        (
            "uppercase currency",
            with("/tokens", json!({"USDC": good["tokens"]["usdc"].clone()})),
        ),
        ("one token for two currencies", two_currencies_one_token),
        ("unknown field", unknown_field),
        ("unknown token field", unknown_token_field),
        ("negative start block", negative_start),
        ("not an object", json!([1, 2])),
    ] {
        let reply = put_config(&server, body).await;
        let problem = reply.expect_problem(400, &invalid);
        assert!(
            !reply.text().contains(&anvil.private_key_hex(1)[2..]),
            "{what}: {problem}"
        );
        server
            .get(CONFIG_PATH, ADMIN_TOKEN)
            .await
            .expect_problem(404, &format!("{TP_PROBLEMS}not-found"));
    }
    // Only the operator configures deposits.
    server
        .call(Method::PUT, CONFIG_PATH, Some(&org.key), Some(good.clone()))
        .await
        .expect_problem(401, &format!("{TP_PROBLEMS}unauthorized"));
    // An RPC that does not answer: 503, nothing stored.
    let dead = support::DeadPort::reserve();
    put_config(&server, with("/rpcUrl", json!(dead.url)))
        .await
        .expect_problem(503, &format!("{TP_PROBLEMS}unavailable"));
    server
        .get(CONFIG_PATH, ADMIN_TOKEN)
        .await
        .expect_problem(404, &format!("{TP_PROBLEMS}not-found"));
    server
        .call(Method::POST, ADDRESS_PATH, Some(&org.key), None)
        .await
        .expect_problem(404, &disabled);

    let stored = put_config(&server, good).await.expect_status(201).json();
    assert_eq!(stored["version"], 1);
    assert_eq!(
        server
            .get(CONFIG_PATH, ADMIN_TOKEN)
            .await
            .expect_status(200)
            .json(),
        stored
    );
    // A bad change leaves the stored configuration as it was.
    put_config(&server, with_confirmations(&stored, 0))
        .await
        .expect_problem(400, &invalid);
    assert_eq!(
        server
            .get(CONFIG_PATH, ADMIN_TOKEN)
            .await
            .expect_status(200)
            .json(),
        stored
    );
}

/// A stored configuration as a PUT body, with other confirmations.
fn with_confirmations(stored: &Value, confirmations: u32) -> Value {
    json!({
        "chainId": stored["chainId"],
        "rpcUrl": stored["rpcUrl"],
        "confirmations": confirmations,
        "tokens": stored["tokens"],
    })
}

async fn deposit_addresses_need_the_secrets_key_and_never_show_their_key(db: &TestDb) {
    let anvil = Anvil::start().await;
    let token = chain::deploy_stablecoin(&anvil, chain::TOKEN_NAME, chain::TOKEN_VERSION).await;
    let keyless = Server::start_with(
        db,
        Options {
            secrets_key: false,
            ..Options::default()
        },
    )
    .await;
    put_config(&keyless, config_body(&anvil, token, 1))
        .await
        .expect_status(201);
    let org = keyless.create_tenant("org").await;
    keyless
        .call(Method::POST, ADDRESS_PATH, Some(&org.key), None)
        .await
        .expect_problem(409, &format!("{TP_PROBLEMS}secrets-key-missing"));
    keyless
        .get(ADDRESS_PATH, &org.key)
        .await
        .expect_problem(404, &format!("{TP_PROBLEMS}not-found"));
    drop(keyless);

    let server = Server::start(db).await;
    let reply = server
        .call(Method::POST, ADDRESS_PATH, Some(&org.key), None)
        .await
        .expect_status(201);
    let body = reply.json();
    let mut fields: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        ["address", "chainId", "confirmations", "method", "tokens"]
    );
    let address: Address = body["address"].as_str().unwrap().parse().unwrap();
    // The key is sealed at rest, bound to the tenant, and opens to the address's key (so the
    // platform can sweep it); it never reaches a response or the log.
    let store = turnpike_store::Store::connect(&db.url).await.unwrap();
    let row = store
        .deposit_address(&org.id, "evm")
        .await
        .unwrap()
        .unwrap();
    assert!(row.sealed.starts_with("v1."), "sealed");
    let secrets = SecretsKey::parse(support::SECRETS_KEY).unwrap();
    assert!(
        secrets
            .open(&row.sealed, &format!("{}/evm", org.id))
            .is_err(),
        "a deposit key does not open as the tenant's rail secret"
    );
    let key = secrets
        .open(&row.sealed, &format!("{}/deposit/evm", org.id))
        .unwrap();
    let key = String::from_utf8(key).unwrap();
    let signer: PrivateKeySigner = key.parse().unwrap();
    assert_eq!(signer.address(), address);
    let bare = key.trim_start_matches("0x");
    assert!(!row.sealed.contains(bare));
    let again = server.get(ADDRESS_PATH, &org.key).await.expect_status(200);
    for text in [reply.text(), again.text(), server.log()] {
        assert!(!text.contains(bare), "the deposit key leaked: {text}");
    }
    store.close().await;
}
