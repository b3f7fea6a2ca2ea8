//! Black-box tests of the gateway's answer to an upstream failure after a chain payment, on a
//! real chain (anvil, the project's EIP-3009 stablecoin) and the real `turnpike serve` binary, on
//! SQLite and on PostgreSQL. Turnpike cannot send tokens back (they sit at the merchant's
//! recipient): the payment's booking is reversed, the payment becomes `refund_due` naming the
//! paying address, the client gets the upstream's error without a receipt, and the merchant
//! records its on-chain refund (`refunded`) once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use alloy::primitives::{Address, U256};
use reqwest::Method;
use serde_json::{Value, json};
use support::chain::{self, Anvil};
use support::{DeadPort, FEE_BPS, Reply, Server, TP_PROBLEMS, Tenant, Upstream};
use turnpike_protocol::{Challenge, Credential, b64, parse_challenges_from_lines};
use turnpike_store::on_both_databases;
use turnpike_store::testing::TestDb;

on_both_databases!(
    an_evm_payment_whose_upstream_answers_500_is_owed_back_by_the_merchant,
    an_evm_payment_whose_upstream_does_not_answer_is_a_502_and_owed_back,
);

const NAME: &str = "Turnpike Test USD";
const VERSION: &str = "1";
const PRICE: u128 = 250_000;
const SLUG: &str = "shop";

/// A chain with the token, a merchant with an evm rail, and a funded payer (anvil account 3).
struct World {
    anvil: Anvil,
    server: Server,
    merchant: Tenant,
    token: Address,
    recipient: Address,
    payer: usize,
}

async fn world(db: &TestDb) -> World {
    let anvil = Anvil::start().await;
    let token = chain::deploy_stablecoin(&anvil, NAME, VERSION).await;
    let payer = 3;
    chain::mint(&anvil, token, anvil.address(payer), 10 * PRICE).await;
    let server = Server::start(db).await;
    let merchant = server.create_tenant(SLUG).await;
    let recipient = anvil.address(2);
    server
        .call(
            Method::PUT,
            "/v1/rails/evm",
            Some(&merchant.key),
            Some(json!({
                "chainId": anvil.chain_id(),
                "rpcUrl": anvil.rpc_url(),
                "recipient": recipient.to_checksum(None),
                "confirmations": 1,
                "tokens": [{"currency": "usdc", "address": token.to_checksum(None),
                            "decimals": 6, "name": NAME, "version": VERSION}],
                "hotWalletKey": anvil.private_key_hex(1),
            })),
        )
        .await
        .expect_status(201);
    World {
        anvil,
        server,
        merchant,
        token,
        recipient,
        payer,
    }
}

impl World {
    /// An `evm` price for `GET path` in front of `upstream`.
    async fn gateway_price(&self, path: &str, upstream: &str) {
        self.server
            .create_price(
                &self.merchant,
                json!({"route": {"method": "GET", "path": path}, "amount": PRICE.to_string(),
                       "currency": "usdc", "methods": ["evm"], "upstreamUrl": upstream}),
            )
            .await;
    }

    /// The gateway's 402 challenge for `GET path`.
    async fn challenge(&self, path: &str) -> Challenge {
        let reply = Server::read(self.server.gateway(Method::GET, SLUG, path)).await;
        assert_eq!(reply.status, 402, "{reply:?}");
        let headers = reply.header_all("www-authenticate");
        assert_eq!(headers.len(), 1, "{reply:?}");
        parse_challenges_from_lines(headers.iter().map(String::as_str))
            .expect("parse")
            .remove(0)
    }

    /// An EIP-3009 `authorization` credential of the payer for `challenge`.
    fn authorization(&self, challenge: &Challenge) -> String {
        let domain = chain::token_domain(NAME, VERSION, self.anvil.chain_id(), self.token);
        let auth = chain::sign_authorization(
            &self.anvil.signer(self.payer),
            &domain,
            self.recipient,
            PRICE,
            0,
            chain::unix_now() + 600,
            chain::challenge_hash(&challenge.id, &challenge.realm),
        );
        credential(challenge, auth.payload())
    }

    /// A `hash` credential: the payer broadcast the transfer itself (the payer is then known
    /// only from the chain).
    async fn hash_credential(&self, challenge: &Challenge) -> String {
        let signer = self.anvil.signer(self.payer);
        let hash =
            chain::broadcast_transfer(&self.anvil, &signer, self.token, self.recipient, PRICE)
                .await;
        credential(challenge, json!({"type": "hash", "hash": hash.to_string()}))
    }

    async fn pay_through_gateway(&self, path: &str, authorization: &str) -> Reply {
        Server::read(
            self.server
                .gateway(Method::GET, SLUG, path)
                .header("authorization", authorization),
        )
        .await
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

    async fn payments_in(&self, state: &str) -> Vec<Value> {
        self.server
            .get(&format!("/v1/payments?state={state}"), &self.merchant.key)
            .await
            .expect_status(200)
            .json()["data"]
            .as_array()
            .unwrap()
            .clone()
    }

    async fn record_refund(&self, payment_id: &str, body: Value) -> Reply {
        self.server
            .post(
                &format!("/v1/payments/{payment_id}/refunds"),
                &self.merchant.key,
                body,
            )
            .await
    }

    /// The payment is `refund_due` from the payer, its booking reversed; returns it.
    async fn assert_refund_due(&self, payment_id: &str) -> Value {
        let payment = self.server.payment(&self.merchant, payment_id).await;
        assert_eq!(payment["state"], "refund_due", "{payment}");
        assert_eq!(payment["method"], "evm", "{payment}");
        assert_eq!(payment["amount"], PRICE.to_string(), "{payment}");
        assert_eq!(payment["currency"], "usdc", "{payment}");
        assert_eq!(
            payment["payerAddress"],
            self.anvil.address(self.payer).to_checksum(None),
            "{payment}"
        );
        assert_eq!(payment["refundReference"], Value::Null, "{payment}");
        // Booked (payment and fee), then reversed (net revenue and fee back to clearing).
        let fee = PRICE * u128::from(FEE_BPS) / 10_000;
        let mut amounts: Vec<String> = payment["transfers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["amount"].as_str().unwrap().to_owned())
            .collect();
        amounts.sort();
        let mut expected = vec![
            PRICE.to_string(),
            fee.to_string(),
            (PRICE - fee).to_string(),
            fee.to_string(),
        ];
        expected.sort();
        assert_eq!(amounts, expected, "{payment}");
        payment
    }
}

/// `Payment <b64(JSON)>` for `payload` answering `challenge`.
fn credential(challenge: &Challenge, payload: Value) -> String {
    let Value::Object(payload) = payload else {
        panic!("payload must be an object")
    };
    let credential = Credential {
        challenge: challenge.echo(),
        source: None,
        payload,
    };
    format!(
        "Payment {}",
        b64::encode(serde_json::to_vec(&credential).unwrap())
    )
}

fn tp(code: &str) -> String {
    format!("{TP_PROBLEMS}{code}")
}

async fn an_evm_payment_whose_upstream_answers_500_is_owed_back_by_the_merchant(db: &TestDb) {
    let w = world(db).await;
    let upstream = Upstream::start().await;
    upstream.fail();
    w.gateway_price("/flaky", &upstream.url).await;

    let challenge = w.challenge("/flaky").await;
    let reply = w
        .pay_through_gateway("/flaky", &w.authorization(&challenge))
        .await;

    // The upstream's own error, without a receipt (not even the upstream's forged one).
    assert_eq!(reply.status, 500, "{reply:?}");
    assert_eq!(reply.json(), json!({"error": "upstream broke"}));
    assert!(reply.header("payment-receipt").is_none(), "{reply:?}");
    assert_eq!(reply.header("x-turnpike-refund").as_deref(), Some("due"));
    let payment_id = reply.header("x-turnpike-payment").expect("payment id");
    assert_eq!(upstream.hits(), 1);

    // The tokens moved on chain, to the merchant: it owes them back.
    assert_eq!(
        w.anvil.token_balance(w.token, w.recipient).await,
        U256::from(PRICE)
    );
    w.assert_refund_due(&payment_id).await;
    let (credits, debits) = w.revenue().await;
    assert_eq!(credits, debits, "the merchant keeps no revenue");
    assert!(credits > 0);

    // The merchant's work list.
    let due = w.payments_in("refund_due").await;
    assert_eq!(due.len(), 1, "{due:?}");
    assert_eq!(due[0]["id"], payment_id.as_str());
    assert!(w.payments_in("settled").await.is_empty());
    w.server
        .get("/v1/payments?state=lost", &w.merchant.key)
        .await
        .expect_problem(400, &tp("invalid-request"));

    // Bad input changes nothing.
    for bad in [
        json!({}),
        json!({"reference": "not a hash"}),
        json!({"reference": format!("0x{}", "g".repeat(64))}),
        json!({"reference": format!("0x{}", "a".repeat(63))}),
        json!({"reference": format!("0x{}", "a".repeat(64)), "extra": true}),
    ] {
        w.record_refund(&payment_id, bad)
            .await
            .expect_problem(400, &tp("invalid-request"));
    }
    w.record_refund(
        "pay_unknown",
        json!({"reference": format!("0x{}", "a".repeat(64))}),
    )
    .await
    .expect_problem(404, &tp("not-found"));
    w.assert_refund_due(&payment_id).await;

    // The merchant sends the tokens back on chain and records it: refunded, once.
    let refund = chain::broadcast_transfer(
        &w.anvil,
        &w.anvil.signer(2),
        w.token,
        w.anvil.address(w.payer),
        PRICE,
    )
    .await;
    let recorded = w
        .record_refund(&payment_id, json!({"reference": refund.to_string()}))
        .await
        .expect_status(200)
        .json();
    assert_eq!(recorded["state"], "refunded", "{recorded}");
    assert_eq!(
        recorded["refundReference"],
        refund.to_string(),
        "{recorded}"
    );
    assert_eq!(
        recorded["payerAddress"],
        w.anvil.address(w.payer).to_checksum(None)
    );
    let again = w
        .record_refund(&payment_id, json!({"reference": refund.to_string()}))
        .await;
    let problem = again.expect_problem(409, &tp("refund-not-due"));
    assert_eq!(problem["state"], "refunded", "{problem}");
    assert!(w.payments_in("refund_due").await.is_empty());
    assert_eq!(w.payments_in("refunded").await.len(), 1);
    assert_eq!(
        w.revenue().await,
        (credits, debits),
        "nothing more is booked"
    );
    w.server.assert_ledger_consistent().await;
}

async fn an_evm_payment_whose_upstream_does_not_answer_is_a_502_and_owed_back(db: &TestDb) {
    let w = world(db).await;
    let fine = Upstream::start().await;
    w.gateway_price("/fine", &fine.url).await;
    let dead = DeadPort::reserve();
    w.gateway_price("/down", &dead.url).await;

    // A payment whose upstream answered is settled and not the merchant's to refund.
    let challenge = w.challenge("/fine").await;
    let served = w
        .pay_through_gateway("/fine", &w.authorization(&challenge))
        .await;
    assert_eq!(served.status, 200, "{served:?}");
    assert!(served.header("payment-receipt").is_some());
    assert!(served.header("x-turnpike-refund").is_none());
    let settled = w.payments_in("settled").await;
    assert_eq!(settled.len(), 1);
    let settled_id = settled[0]["id"].as_str().unwrap().to_owned();
    let problem = w
        .record_refund(
            &settled_id,
            json!({"reference": format!("0x{}", "b".repeat(64))}),
        )
        .await
        .expect_problem(409, &tp("refund-not-due"));
    assert_eq!(problem["state"], "settled");
    let booked = w.revenue().await;

    // Paid by a transaction the payer broadcast itself; the upstream does not answer.
    let challenge = w.challenge("/down").await;
    let authorization = w.hash_credential(&challenge).await;
    let reply = w.pay_through_gateway("/down", &authorization).await;
    let problem = reply.expect_problem(502, &tp("upstream-failed"));
    assert!(reply.header("payment-receipt").is_none(), "{reply:?}");
    assert_eq!(problem["refund"], "due", "{problem}");
    let payment_id = problem["paymentId"].as_str().unwrap().to_owned();
    assert_ne!(payment_id, settled_id);
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("returned to the payer by the merchant"),
        "{detail}"
    );
    assert!(!reply.text().contains(&authorization[8..]), "no credential");

    // The payer is found on chain; only this payment's booking is reversed.
    w.assert_refund_due(&payment_id).await;
    let (credits, debits) = w.revenue().await;
    assert_eq!(
        credits - debits,
        booked.0 - booked.1,
        "the merchant keeps the first payment's revenue only"
    );
    assert_eq!(
        w.server.payment(&w.merchant, &settled_id).await["state"],
        "settled"
    );

    // The same credential again is a replay: nothing more is booked or reversed.
    let replay = w.pay_through_gateway("/down", &authorization).await;
    assert_eq!(replay.status, 403, "{replay:?}");
    assert_eq!(w.revenue().await, (credits, debits));
    w.server.assert_ledger_consistent().await;
}
