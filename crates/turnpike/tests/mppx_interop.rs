//! Interoperability with an independent MPP client: the `mppx` CLI (npm mppx 0.11.0, pinned in
//! package.json, installed by `npm ci`) pays a Turnpike gateway route offering the `evm` rail on a
//! real chain (anvil + the project's EIP-3009 stablecoin), against the real `turnpike serve`
//! binary, on SQLite and on PostgreSQL; and `mppx validate` against the gateway passes.
//! How mppx is configured and how it reports: tests/mppx/README.md.

// The test bodies are plain `async fn`s that macro-generated `#[tokio::test]`s call, which
// clippy's `allow-unwrap-in-tests` does not recognise as tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use alloy::primitives::{Address, B256, U256};
use serde_json::{Value, json};
use support::chain::{self, Anvil};
use support::{Server, Tenant, Upstream, describe};
use turnpike_store::on_both_databases;
use turnpike_store::testing::TestDb;

on_both_databases!(
    the_mppx_cli_pays_a_gateway_route_on_chain_and_turnpike_books_it,
    mppx_validate_passes_against_the_gateway,
);

const NAME: &str = chain::TOKEN_NAME;
const VERSION: &str = chain::TOKEN_VERSION;
const PRICE: u128 = 250_000; // 0.25 of a 6-decimal token
const ROUTE: &str = "/weather";
const SLUG: &str = "shop";
/// Anvil account indexes: the hot wallet submits, the recipient is paid, the payer pays.
const HOT_WALLET: usize = 1;
const RECIPIENT: usize = 2;
const PAYER: usize = 3;
/// Longest a single mppx run may take before it is killed.
const MPPX_TIMEOUT: Duration = Duration::from_secs(120);

/// A chain with the token, a merchant with an evm rail and a gateway price, a funded payer key.
struct World {
    anvil: Anvil,
    server: Server,
    upstream: Upstream,
    merchant: Tenant,
    token: Address,
    recipient: Address,
}

async fn world(db: &TestDb) -> World {
    let anvil = Anvil::start().await;
    let token = chain::deploy_stablecoin(&anvil, NAME, VERSION).await;
    chain::mint(&anvil, token, anvil.address(PAYER), 100 * PRICE).await;
    let upstream = Upstream::start().await;
    let server = Server::start(db).await;
    let merchant = server.create_tenant(SLUG).await;
    let recipient = anvil.address(RECIPIENT);
    server
        .call(
            reqwest::Method::PUT,
            "/v1/rails/evm",
            Some(&merchant.key),
            Some(json!({
                "chainId": anvil.chain_id(),
                "rpcUrl": anvil.rpc_url(),
                "recipient": recipient.to_checksum(None),
                "confirmations": 1,
                "tokens": [{"currency": "usdc", "address": token.to_checksum(None),
                            "decimals": chain::TOKEN_DECIMALS, "name": NAME,
                            "version": VERSION}],
                "hotWalletKey": anvil.private_key_hex(HOT_WALLET),
            })),
        )
        .await
        .expect_status(201);
    server
        .create_price(
            &merchant,
            json!({"route": {"method": "GET", "path": ROUTE}, "amount": PRICE.to_string(),
                   "currency": "usdc", "methods": ["evm"], "upstreamUrl": upstream.url}),
        )
        .await;
    World {
        anvil,
        server,
        upstream,
        merchant,
        token,
        recipient,
    }
}

impl World {
    /// `http://127.0.0.1:PORT/gw/shop`.
    fn gateway_url(&self) -> String {
        format!("{}/gw/{SLUG}", self.server.url)
    }

    /// Run the mppx CLI with `args`, configured by tests/mppx/mppx.config.mjs for this chain,
    /// token and payer; killed when it outlives [`MPPX_TIMEOUT`].
    async fn mppx(&self, args: &[&str]) -> Output {
        let root = chain::repo_root();
        let out = tokio::process::Command::new(mppx_binary())
            .args(args)
            .current_dir(&root)
            .env("MPPX_CONFIG", root.join("tests/mppx/mppx.config.mjs"))
            .env("MPPX_EVM_PRIVATE_KEY", self.anvil.private_key_hex(PAYER))
            .env("MPPX_EVM_TOKEN", self.token.to_checksum(None))
            .env("MPPX_EVM_CHAIN_ID", self.anvil.chain_id().to_string())
            .env("MPPX_EVM_TOKEN_NAME", NAME)
            .env("MPPX_EVM_TOKEN_VERSION", VERSION)
            .env("NO_UPDATE_NOTIFIER", "1")
            .env("NO_COLOR", "1")
            // Nothing of the developer's: no other key, account or proxy.
            .env_remove("MPPX_PRIVATE_KEY")
            .env_remove("MPPX_ACCOUNT")
            .env_remove("HTTP_PROXY")
            .env_remove("HTTPS_PROXY")
            .env_remove("http_proxy")
            .env_remove("https_proxy")
            .env_remove("ALL_PROXY")
            .env_remove("all_proxy")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let started = Instant::now();
        let out = tokio::time::timeout(MPPX_TIMEOUT, out)
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "mppx {args:?} did not finish within {MPPX_TIMEOUT:?} (killed)\n{}",
                    self.server.log()
                )
            })
            .unwrap_or_else(|e| panic!("run mppx: {e}"));
        eprintln!("mppx {args:?}: {:?}", started.elapsed());
        out
    }

    /// The merchant's `usdc` revenue: (credits posted, debits posted).
    async fn revenue(&self) -> (u128, u128) {
        let body = self
            .server
            .get("/v1/balances", &self.merchant.key)
            .await
            .expect_status(200)
            .json();
        body["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["kind"] == "merchant_revenue" && a["currency"] == "usdc")
            .map_or((0, 0), |a| {
                (
                    a["creditsPosted"].as_str().unwrap().parse().unwrap(),
                    a["debitsPosted"].as_str().unwrap().parse().unwrap(),
                )
            })
    }

    /// The one settled `evm` payment the merchant must have, for `amount`, whose reference is a
    /// successful mined transaction moving `amount` from the payer to the recipient.
    async fn assert_settled_on_chain(&self, payments: &[Value]) -> Value {
        assert_eq!(payments.len(), 1, "{payments:?}");
        let payment = &payments[0];
        assert_eq!(payment["state"], "settled", "{payment}");
        assert_eq!(payment["method"], "evm", "{payment}");
        assert_eq!(payment["amount"], PRICE.to_string(), "{payment}");
        assert_eq!(payment["currency"], "usdc", "{payment}");
        let reference = payment["reference"].as_str().expect("reference");
        let hash: B256 = reference
            .parse()
            .unwrap_or_else(|e| panic!("reference {reference} is not a tx hash: {e}"));
        let mined = self.anvil.receipt(hash).await.expect("reference is mined");
        assert!(mined.status(), "{mined:?}");
        assert_eq!(
            mined.from,
            self.anvil.address(HOT_WALLET),
            "hot wallet submits"
        );
        let moved = chain::transfers(self.token, &mined);
        assert_eq!(moved.len(), 1, "{moved:?}");
        assert_eq!(
            (moved[0].from, moved[0].to, moved[0].value),
            (self.anvil.address(PAYER), self.recipient, U256::from(PRICE))
        );
        payment.clone()
    }
}

/// node_modules/.bin/mppx, which must be installed (never skipped).
fn mppx_binary() -> PathBuf {
    let root = chain::repo_root();
    let binary = root.join("node_modules/.bin/mppx");
    assert!(
        binary.is_file(),
        "mppx not found at {}: run `npm ci` at the repository root ({}) to install the pinned \
         test tools (package.json)",
        binary.display(),
        root.display()
    );
    binary
}

async fn the_mppx_cli_pays_a_gateway_route_on_chain_and_turnpike_books_it(db: &TestDb) {
    let w = world(db).await;
    let payer = w.anvil.address(PAYER);
    let payer_before = w.anvil.token_balance(w.token, payer).await;
    let recipient_before = w.anvil.token_balance(w.token, w.recipient).await;
    let url = format!("{}{ROUTE}", w.gateway_url());
    // `-v`: the challenge and the decoded Payment-Receipt on stderr; stdout stays the body.
    let out = w.mppx(&["-v", &url]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "mppx {url}:\n{}",
        describe(&out)
    );
    // The upstream's answer, relayed by the gateway after payment.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let body: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "stdout is not the upstream's JSON ({e}):\n{}",
            describe(&out)
        )
    });
    assert_eq!(body["method"], "GET", "{body}");
    assert_eq!(body["path"], ROUTE, "{body}");
    assert_eq!(
        w.upstream.hits(),
        1,
        "the upstream is reached once, after payment"
    );
    // The chain agrees: exactly the price moved from the payer to the recipient.
    assert_eq!(
        w.anvil.token_balance(w.token, w.recipient).await,
        recipient_before + U256::from(PRICE)
    );
    assert_eq!(
        w.anvil.token_balance(w.token, payer).await,
        payer_before - U256::from(PRICE)
    );
    // Turnpike agrees: revenue credited once (minus the platform fee), one settled payment
    // referencing the mined transaction.
    let fee = PRICE * u128::from(support::FEE_BPS) / 10_000;
    assert_eq!(w.revenue().await, (PRICE, fee));
    let payment = w
        .assert_settled_on_chain(&w.server.payments(&w.merchant).await)
        .await;
    // The upstream was told which payment it was, and never saw the credential.
    assert_eq!(body["payment"], payment["id"], "{body}");
    assert_eq!(body["authorization"], false, "{body}");
    // mppx decoded the same receipt: status success, reference = the mined hash.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let receipt_field = |name: &str| {
        stderr
            .lines()
            .skip_while(|l| l.trim() != "Payment Receipt")
            .find_map(|l| l.trim().strip_prefix(name).map(str::trim))
            .unwrap_or_else(|| panic!("no receipt `{name}` on stderr:\n{}", describe(&out)))
            .to_owned()
    };
    assert_eq!(receipt_field("status"), "success");
    assert_eq!(
        receipt_field("reference"),
        payment["reference"].as_str().unwrap()
    );
    assert_eq!(
        receipt_field("challengeId"),
        payment["challengeId"].as_str().unwrap()
    );
    w.server.assert_ledger_consistent().await;
}

async fn mppx_validate_passes_against_the_gateway(db: &TestDb) {
    let w = world(db).await;
    let recipient_before = w.anvil.token_balance(w.token, w.recipient).await;
    let base = w.gateway_url();
    let out = w.mppx(&["validate", &base, "--yes"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "mppx validate {base} --yes:\n{}",
        describe(&out)
    );
    // No check failed; the checks that matter for a gateway route passed. (Its one warning is
    // the realm, the tenant's slug, not being the server's hostname; its one suggestion is
    // /llms.txt at the origin's root, outside any tenant's gateway.)
    let report = describe(&out);
    assert!(!stdout.contains('✗'), "a check failed:\n{report}");
    for check in [
        "✓ Document found and parseable",
        "✓ Valid OpenAPI structure",
        "✓ Paid endpoints found (1 endpoint(s))",
        "✓ Returns 402 without credentials",
        "✓ Challenge parseable (evm/charge)",
        "✓ Has chainId (31337)",
        "✓ Malformed credential returns 402 (not 500)",
        "✓ Error response includes fresh challenge",
        "✓ Payment [evm]: submitted",
        "✓ Payment: successful (HTTP 200)",
        "✓ Receipt status is \"success\"",
        "✓ Receipt reference valid",
        "✓ Receipt timestamp recent",
    ] {
        assert!(stdout.contains(check), "missing `{check}`:\n{report}");
    }
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("Summary:"))
        .unwrap_or_else(|| panic!("no summary:\n{report}"));
    assert!(
        !summary.contains("failed") && !summary.contains("skipped"),
        "{summary}\n{report}"
    );
    let warnings: Vec<&str> = stdout.lines().filter(|l| l.contains('⚠')).collect();
    assert!(
        warnings
            .iter()
            .all(|l| l.contains("Realm matches server hostname")),
        "a new warning: {warnings:?}\n{report}"
    );
    assert!(stdout.contains("GET /weather"), "{report}");
    assert_eq!(
        w.upstream.hits(),
        1,
        "only the paid request reaches the upstream"
    );
    // It really paid: once on chain, once in the ledger.
    assert_eq!(
        w.anvil.token_balance(w.token, w.recipient).await,
        recipient_before + U256::from(PRICE),
        "{}",
        describe(&out)
    );
    w.assert_settled_on_chain(&w.server.payments(&w.merchant).await)
        .await;
    w.server.assert_ledger_consistent().await;
}
