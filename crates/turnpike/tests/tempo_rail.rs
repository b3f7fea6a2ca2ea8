//! Black-box tests of the `tempo` rail (draft-tempo-charge-00) on a real Tempo-family chain:
//! `anvil --network tempo` (the pinned foundry 1.7.1) runs Tempo's 0x76 transactions, the TIP-20
//! precompile tokens (pathUSD at `0x20c0…0000`, with `TransferWithMemo` events) and fees paid
//! in a USD TIP-20, including a fee payer's co-signature. The real `turnpike serve` binary
//! settles `transaction` (the server broadcasts, co-signing when it sponsors fees), `hash` (the
//! client broadcast) and zero-amount `proof` credentials, on SQLite and on PostgreSQL, with the
//! chain and the ledger agreeing; a settlement cut off from its RPC stays pending and the
//! resolver books it once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::num::NonZeroU64;
use std::time::Duration;

use alloy::eips::Encodable2718;
use alloy::primitives::{Address, B256, Bytes, TxKind, U256, address};
use alloy::providers::Provider;
use alloy::signers::SignerSync;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::SolCall;
use serde_json::{Value, json};
use support::chain::{self, Anvil, RpcProxy};
use support::{MPP_PROBLEMS, Server, TP_PROBLEMS, Tenant, Upstream, decision_header};
use turnpike_protocol::{Credential, Receipt, b64, parse_challenges_from_lines};
use turnpike_rails::tempo::proof::{ProofVersion, signing_hash};
use turnpike_rails::tempo::tempo_primitives::TempoTransaction;
use turnpike_rails::tempo::tempo_primitives::transaction::{
    Call, PrimitiveSignature, TEMPO_EXPIRING_NONCE_KEY, TempoSignature,
};
use turnpike_rails::tempo::{ITip20Payments, attribution, sign_for_sponsor};
use turnpike_store::on_both_databases;
use turnpike_store::testing::TestDb;

on_both_databases!(
    a_tempo_transaction_and_a_broadcast_hash_are_settled_and_booked_once,
    bad_tempo_credentials_are_refused_and_nothing_is_booked,
    a_sponsored_transaction_is_cosigned_and_the_fee_payer_pays_the_fees,
    a_tempo_settlement_cut_off_from_its_rpc_stays_pending_and_the_resolver_books_it_once,
    a_zero_amount_price_is_paid_with_a_proof_and_books_nothing,
    tempo_rail_configuration_keeps_its_secret_and_validates_input,
    a_gateway_route_is_paid_with_tempo_and_discovery_offers_the_token,
    a_tempo_payment_whose_gateway_upstream_fails_is_owed_back_and_a_proof_owes_nothing,
);

/// pathUSD, the TIP-20 precompile token every Tempo chain has (6 decimals).
const PATH_USD: Address = address!("20c0000000000000000000000000000000000000");
/// Tempo's fee manager precompile, where transaction fees go.
const FEE_MANAGER: Address = address!("feec000000000000000000000000000000000000");
const PRICE: u128 = 250_000; // 0.25 pathUSD
const PATH: &str = "/v1/data";
const FREE_PATH: &str = "/v1/whoami";
/// Gas limit of the test's transactions (a TIP-20 transfer with memo uses ~40k).
const GAS_LIMIT: u64 = 1_000_000;
/// Anvil account indexes.
const RECIPIENT: usize = 2;
const PAYER: usize = 3;
const FEE_PAYER: usize = 5;

/// A Tempo chain and a merchant with a tempo rail.
struct World {
    anvil: Anvil,
    server: Server,
    merchant: Tenant,
    recipient: Address,
}

async fn world(db: &TestDb, rpc_url: Option<&str>, sponsor: bool) -> World {
    let anvil = Anvil::start_with(&["--network", "tempo"]).await;
    world_on(db, anvil, rpc_url, sponsor).await
}

async fn world_on(db: &TestDb, anvil: Anvil, rpc_url: Option<&str>, sponsor: bool) -> World {
    let server = Server::start(db).await;
    let merchant = server.create_tenant("shop").await;
    let recipient = anvil.address(RECIPIENT);
    let rpc = rpc_url.unwrap_or(anvil.rpc_url()).to_owned();
    let mut config = json!({
        "chainId": anvil.chain_id(),
        "rpcUrl": rpc,
        "recipient": recipient.to_checksum(None),
        "tokens": [{"currency": "usd", "address": PATH_USD.to_checksum(None)}],
    });
    if sponsor {
        config["feePayerKey"] = json!(anvil.private_key_hex(FEE_PAYER));
    }
    let reply = server
        .call(
            reqwest::Method::PUT,
            "/v1/rails/tempo",
            Some(&merchant.key),
            Some(config),
        )
        .await
        .expect_status(201);
    assert!(
        !reply
            .text()
            .contains(&anvil.private_key_hex(FEE_PAYER)[2..])
    );
    server
        .create_price(
            &merchant,
            json!({"route": {"method": "GET", "path": PATH}, "amount": PRICE.to_string(),
                   "currency": "usd", "methods": ["tempo"]}),
        )
        .await;
    World {
        anvil,
        server,
        merchant,
        recipient,
    }
}

impl World {
    async fn challenge_for(&self, path: &str) -> turnpike_protocol::Challenge {
        let decision = self.server.challenge(&self.merchant, "GET", path).await;
        let headers = decision_header(&decision, "www-authenticate");
        assert_eq!(headers.len(), 1, "{decision}");
        parse_challenges_from_lines(headers.iter().map(String::as_str))
            .expect("parse")
            .remove(0)
    }

    async fn challenge(&self) -> turnpike_protocol::Challenge {
        self.challenge_for(PATH).await
    }

    /// The payer's next protocol nonce (nonce key 0).
    async fn nonce(&self, who: usize) -> u64 {
        self.anvil
            .provider()
            .get_transaction_count(self.anvil.address(who))
            .pending()
            .await
            .unwrap()
    }

    /// A 0x76 transaction from `PAYER` paying `amount` to `to` with `memo`, fees in pathUSD.
    async fn payment_tx(&self, to: Address, amount: u128, memo: B256) -> TempoTransaction {
        TempoTransaction {
            chain_id: self.anvil.chain_id(),
            max_priority_fee_per_gas: 1_000_000_000,
            max_fee_per_gas: 20_000_000_000,
            gas_limit: GAS_LIMIT,
            calls: vec![memo_call(to, amount, memo)],
            access_list: Default::default(),
            nonce_key: U256::ZERO,
            nonce: self.nonce(PAYER).await,
            fee_token: Some(PATH_USD),
            fee_payer_signature: None,
            valid_before: NonZeroU64::new(chain::unix_now() + 240),
            valid_after: None,
            key_authorization: None,
            tempo_authorization_list: vec![],
        }
    }

    /// The challenge's price paid to the merchant with the challenge-bound memo, signed.
    async fn pay(&self, challenge: &turnpike_protocol::Challenge) -> (Bytes, B256) {
        let tx = self
            .payment_tx(self.recipient, PRICE, bound_memo(challenge))
            .await;
        sign(&self.anvil.signer(PAYER), tx)
    }

    async fn verify(&self, authorization: &str) -> Value {
        self.verify_at(PATH, authorization).await
    }

    async fn verify_at(&self, path: &str, authorization: &str) -> Value {
        self.server
            .verify(&self.merchant, json!(authorization), "GET", path, None)
            .await
            .expect_status(200)
            .json()
    }

    /// The merchant's `usd` revenue (credits posted, debits posted).
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
            .find(|a| a["kind"] == "merchant_revenue" && a["currency"] == "usd")
            .map_or((0, 0), |a| {
                (
                    a["creditsPosted"].as_str().unwrap().parse().unwrap(),
                    a["debitsPosted"].as_str().unwrap().parse().unwrap(),
                )
            })
    }

    async fn balance(&self, who: Address) -> U256 {
        self.anvil.token_balance(PATH_USD, who).await
    }

    /// The node's receipt JSON (alloy's Ethereum receipt type does not read type 0x76).
    async fn receipt(&self, hash: B256) -> Value {
        let receipt: Value = self
            .anvil
            .provider()
            .raw_request("eth_getTransactionReceipt".into(), (hash,))
            .await
            .unwrap();
        assert!(receipt.is_object(), "no receipt for {hash}");
        receipt
    }
}

fn memo_call(to: Address, amount: u128, memo: B256) -> Call {
    Call {
        to: TxKind::Call(PATH_USD),
        value: U256::ZERO,
        input: ITip20Payments::transferWithMemoCall {
            to,
            amount: U256::from(amount),
            memo,
        }
        .abi_encode()
        .into(),
    }
}

fn bound_memo(challenge: &turnpike_protocol::Challenge) -> B256 {
    attribution::encode(&challenge.realm, None, &challenge.id)
}

/// Sign as the sender (secp256k1); the 0x76 bytes and the transaction hash.
fn sign(signer: &PrivateKeySigner, tx: TempoTransaction) -> (Bytes, B256) {
    let signature = signer.sign_hash_sync(&tx.signature_hash()).unwrap();
    let signed = tx.into_signed(TempoSignature::Primitive(PrimitiveSignature::Secp256k1(
        signature,
    )));
    (signed.encoded_2718().into(), *signed.hash())
}

/// `Payment <b64(JSON)>` for `payload` answering `challenge`.
fn credential(
    challenge: &turnpike_protocol::Challenge,
    payload: Value,
    source: Option<String>,
) -> String {
    let Value::Object(payload) = payload else {
        panic!("payload must be an object")
    };
    let credential = Credential {
        challenge: challenge.echo(),
        source: source.map(Value::from),
        payload,
    };
    format!(
        "Payment {}",
        b64::encode(serde_json::to_vec(&credential).unwrap())
    )
}

fn transaction(challenge: &turnpike_protocol::Challenge, raw: &Bytes) -> String {
    credential(
        challenge,
        json!({"type": "transaction", "signature": raw.to_string()}),
        None,
    )
}

fn hash_credential(challenge: &turnpike_protocol::Challenge, hash: B256) -> String {
    credential(
        challenge,
        json!({"type": "hash", "hash": hash.to_string()}),
        None,
    )
}

fn receipt_of(decision: &Value) -> Receipt {
    let value = decision_header(decision, "payment-receipt");
    Receipt::parse(&value[0]).expect("receipt")
}

fn fee(amount: u128) -> u128 {
    amount * u128::from(support::FEE_BPS) / 10_000
}

/// The `TransferWithMemo` logs of pathUSD in a receipt: (from, to, amount, memo).
fn memo_transfers(receipt: &Value) -> Vec<(Address, Address, U256, B256)> {
    let topic = format!("{:#x}", turnpike_rails::tempo::TRANSFER_WITH_MEMO_TOPIC);
    receipt["logs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|log| {
            log["address"].as_str().unwrap().parse::<Address>().unwrap() == PATH_USD
                && log["topics"][0] == topic
        })
        .map(|log| {
            let t = |i: usize| log["topics"][i].as_str().unwrap().parse::<B256>().unwrap();
            let data: Bytes = log["data"].as_str().unwrap().parse().unwrap();
            (
                Address::from_word(t(1)),
                Address::from_word(t(2)),
                U256::from_be_slice(&data[..32]),
                t(3),
            )
        })
        .collect()
}

async fn a_tempo_transaction_and_a_broadcast_hash_are_settled_and_booked_once(db: &TestDb) {
    let w = world(db, None, false).await;
    let challenge = w.challenge().await;
    let request = challenge.request_json();
    assert_eq!(request["amount"], PRICE.to_string());
    assert_eq!(request["currency"], PATH_USD.to_checksum(None));
    assert_eq!(request["recipient"], w.recipient.to_checksum(None));
    assert_eq!(request["methodDetails"]["chainId"], w.anvil.chain_id());
    assert!(request["methodDetails"].get("feePayer").is_none());
    let payer = w.anvil.address(PAYER);
    let payer_before = w.balance(payer).await;
    let recipient_before = w.balance(w.recipient).await;
    // `transaction`: the client signs a 0x76 transaction, Turnpike broadcasts it.
    let (raw, hash) = w.pay(&challenge).await;
    let authorization = transaction(&challenge, &raw);
    let decision = w.verify(&authorization).await;
    assert_eq!(decision["decision"], "paid", "{decision}");
    let receipt = receipt_of(&decision);
    assert_eq!(receipt.method.as_deref(), Some("tempo"));
    assert_eq!(receipt.reference, hash.to_string());
    assert_eq!(receipt.extra["challengeId"], challenge.id);
    // The chain agrees: a successful 0x76 transaction moving the price with the bound memo.
    let mined = w.receipt(hash).await;
    assert_eq!(mined["type"], "0x76");
    assert_eq!(mined["status"], "0x1");
    assert_eq!(
        memo_transfers(&mined),
        vec![(
            payer,
            w.recipient,
            U256::from(PRICE),
            bound_memo(&challenge)
        )]
    );
    assert_eq!(
        w.balance(w.recipient).await,
        recipient_before + U256::from(PRICE)
    );
    assert!(
        w.balance(payer).await < payer_before - U256::from(PRICE),
        "the payer paid the price and its own fee in pathUSD"
    );
    // The ledger agrees: revenue credited once, minus the platform fee.
    assert_eq!(w.revenue().await, (PRICE, fee(PRICE)));
    let payment = w
        .server
        .payment(&w.merchant, decision["paymentId"].as_str().unwrap())
        .await;
    assert_eq!(payment["state"], "settled", "{payment}");
    assert_eq!(payment["method"], "tempo");
    // Replaying it: 403, nothing more moves.
    let replay = w.verify(&authorization).await;
    assert_eq!(replay["decision"], "forbidden", "{replay}");
    // The same transaction as a `hash` for another challenge: one transaction, one payment.
    let other = w.challenge().await;
    let reuse = w.verify(&hash_credential(&other, hash)).await;
    assert_eq!(reuse["decision"], "forbidden", "{reuse}");

    // `hash`: the client broadcasts it itself.
    let challenge = w.challenge().await;
    let (raw, hash) = w.pay(&challenge).await;
    chain::send_raw(&w.anvil, &raw).await.unwrap();
    let decision = w.verify(&hash_credential(&challenge, hash)).await;
    assert_eq!(decision["decision"], "paid", "{decision}");
    assert_eq!(receipt_of(&decision).reference, hash.to_string());
    let replay = w.verify(&hash_credential(&challenge, hash)).await;
    assert_eq!(replay["decision"], "forbidden", "{replay}");
    assert_eq!(w.revenue().await, (2 * PRICE, 2 * fee(PRICE)));
    assert_eq!(
        w.balance(w.recipient).await,
        recipient_before + U256::from(2 * PRICE)
    );
    w.server.assert_ledger_consistent().await;
}

/// Builds a credential for a challenge (one bad-input case).
type MakeCredential<'a> = Box<
    dyn Fn(&'a World, turnpike_protocol::Challenge) -> futures_util::future::BoxFuture<'a, String>
        + 'a,
>;

async fn bad_tempo_credentials_are_refused_and_nothing_is_booked(db: &TestDb) {
    use futures_util::FutureExt;
    let w = world(db, None, false).await;
    let recipient_before = w.balance(w.recipient).await;
    let cases: Vec<(&str, MakeCredential<'_>, &str)> = vec![
        (
            "wrong amount",
            Box::new(|w: &World, c| {
                async move {
                    let tx = w.payment_tx(w.recipient, PRICE - 1, bound_memo(&c)).await;
                    transaction(&c, &sign(&w.anvil.signer(PAYER), tx).0)
                }
                .boxed()
            }),
            "verification-failed",
        ),
        (
            "wrong recipient",
            Box::new(|w: &World, c| {
                async move {
                    let tx = w
                        .payment_tx(w.anvil.address(7), PRICE, bound_memo(&c))
                        .await;
                    transaction(&c, &sign(&w.anvil.signer(PAYER), tx).0)
                }
                .boxed()
            }),
            "verification-failed",
        ),
        (
            "memo bound to another challenge",
            Box::new(|w: &World, c| {
                async move {
                    let memo = attribution::encode(&c.realm, None, "another-challenge");
                    let tx = w.payment_tx(w.recipient, PRICE, memo).await;
                    transaction(&c, &sign(&w.anvil.signer(PAYER), tx).0)
                }
                .boxed()
            }),
            "verification-failed",
        ),
        (
            "another chain",
            Box::new(|w: &World, c| {
                async move {
                    let mut tx = w.payment_tx(w.recipient, PRICE, bound_memo(&c)).await;
                    tx.chain_id = 4217;
                    transaction(&c, &sign(&w.anvil.signer(PAYER), tx).0)
                }
                .boxed()
            }),
            "verification-failed",
        ),
        (
            "garbage",
            Box::new(|_: &World, c| {
                async move {
                    credential(
                        &c,
                        json!({"type": "transaction", "signature": "0x76abcdef"}),
                        None,
                    )
                }
                .boxed()
            }),
            "malformed-credential",
        ),
        (
            "a proof for a priced charge",
            Box::new(|w: &World, c| async move { proof(w, &c, PAYER) }.boxed()),
            "verification-failed",
        ),
        (
            "a mined hash without the bound memo",
            Box::new(|w: &World, c| {
                async move {
                    let tx = w
                        .payment_tx(w.recipient, PRICE, B256::repeat_byte(0x42))
                        .await;
                    let (raw, hash) = sign(&w.anvil.signer(PAYER), tx);
                    chain::send_raw(&w.anvil, &raw).await.unwrap();
                    hash_credential(&c, hash)
                }
                .boxed()
            }),
            "verification-failed",
        ),
        (
            "an unknown hash",
            Box::new(|_: &World, c| {
                async move { hash_credential(&c, B256::repeat_byte(7)) }.boxed()
            }),
            "verification-failed",
        ),
    ];
    let mut moved_by_tests = U256::ZERO;
    for (what, make, problem) in cases {
        let challenge = w.challenge().await;
        let authorization = make(&w, challenge).await;
        if what == "a mined hash without the bound memo" {
            moved_by_tests += U256::from(PRICE);
        }
        let decision = w.verify(&authorization).await;
        assert_eq!(
            decision["decision"], "payment_required",
            "{what}: {decision}"
        );
        let body = &decision["body"];
        assert_eq!(
            body["type"],
            format!("{MPP_PROBLEMS}{problem}"),
            "{what}: {body}"
        );
        assert!(
            !body.to_string().contains("abcdef"),
            "{what}: no credential bytes in the problem: {body}"
        );
    }
    assert_eq!(w.revenue().await, (0, 0), "nothing booked");
    assert_eq!(
        w.balance(w.recipient).await,
        recipient_before + moved_by_tests,
        "no refused transaction was broadcast"
    );
    w.server.assert_ledger_consistent().await;
}

/// A `proof` credential for `challenge` signed by anvil account `who` (the spec's EIP-712
/// domain, version "1").
fn proof(w: &World, challenge: &turnpike_protocol::Challenge, who: usize) -> String {
    let chain_id = w.anvil.chain_id();
    let hash = signing_hash(ProofVersion::V1, chain_id, &challenge.id, &challenge.realm);
    let signature = w.anvil.signer(who).sign_hash_sync(&hash).unwrap();
    credential(
        challenge,
        json!({"type": "proof", "signature": Bytes::from(signature.as_bytes()).to_string()}),
        Some(format!(
            "did:pkh:eip155:{chain_id}:{}",
            w.anvil.address(PAYER)
        )),
    )
}

async fn a_sponsored_transaction_is_cosigned_and_the_fee_payer_pays_the_fees(db: &TestDb) {
    let w = world(db, None, true).await;
    let challenge = w.challenge().await;
    let request = challenge.request_json();
    assert_eq!(request["methodDetails"]["feePayer"], true);
    assert_eq!(request["methodDetails"]["supportedModes"], json!(["pull"]));
    let payer = w.anvil.address(PAYER);
    let fee_payer = w.anvil.address(FEE_PAYER);
    let (payer_before, fee_payer_before) = (w.balance(payer).await, w.balance(fee_payer).await);
    // The client signs for a sponsor: no fee token, the placeholder, an expiring nonce.
    let mut tx = w
        .payment_tx(w.recipient, PRICE, bound_memo(&challenge))
        .await;
    tx.fee_token = None;
    tx.nonce_key = TEMPO_EXPIRING_NONCE_KEY;
    tx.nonce = 0;
    tx.valid_before = NonZeroU64::new(chain::unix_now() + 25);
    let raw = sign_for_sponsor(tx, &w.anvil.signer(PAYER)).unwrap();
    let decision = w.verify(&transaction(&challenge, &raw)).await;
    assert_eq!(decision["decision"], "paid", "{decision}");
    let hash: B256 = receipt_of(&decision).reference.parse().unwrap();
    let mined = w.receipt(hash).await;
    assert_eq!(mined["status"], "0x1");
    // The fee moved from the fee payer to the fee manager (anvil 1.7.1's receipt `feePayer`
    // member names the sender even then, so the logs and balances are what is checked).
    let fee_payer_topic = format!("{:#x}", fee_payer.into_word());
    let fee_paid = mined["logs"].as_array().unwrap().iter().any(|log| {
        log["topics"][0] == format!("{:#x}", turnpike_rails::tempo::TRANSFER_TOPIC)
            && log["topics"][1] == fee_payer_topic
            && log["topics"][2] == format!("{:#x}", FEE_MANAGER.into_word())
    });
    assert!(fee_paid, "{mined:#}");
    assert_eq!(
        w.balance(payer).await,
        payer_before - U256::from(PRICE),
        "the payer paid exactly the price, no fee"
    );
    assert!(
        w.balance(fee_payer).await < fee_payer_before,
        "the fee payer paid the fee"
    );
    assert_eq!(w.revenue().await, (PRICE, fee(PRICE)));
    // A `hash` is refused when the server pays fees (spec).
    let challenge = w.challenge().await;
    let decision = w.verify(&hash_credential(&challenge, hash)).await;
    assert_eq!(decision["decision"], "payment_required", "{decision}");
    assert_eq!(w.revenue().await, (PRICE, fee(PRICE)));
    w.server.assert_ledger_consistent().await;
}

async fn a_tempo_settlement_cut_off_from_its_rpc_stays_pending_and_the_resolver_books_it_once(
    db: &TestDb,
) {
    let anvil = Anvil::start_with(&["--network", "tempo"]).await;
    let proxy = RpcProxy::start(anvil.rpc_url()).await;
    let w = world_on(db, anvil, Some(proxy.url()), false).await;
    let challenge = w.challenge().await;
    let (raw, hash) = w.pay(&challenge).await;
    let authorization = transaction(&challenge, &raw);
    let recipient_before = w.balance(w.recipient).await;
    // Mine nothing until the test says so; cut the RPC once the transaction is in the pool.
    w.anvil.set_automine(false).await;
    let verify = {
        let server_url = w.server.url.clone();
        let key = w.merchant.key.clone();
        let authorization = authorization.clone();
        let http = w.server.http.clone();
        tokio::spawn(async move {
            http.post(format!("{server_url}/v1/verify"))
                .bearer_auth(key)
                .json(&json!({"authorization": authorization, "method": "GET", "path": PATH}))
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        })
    };
    let provider = w.anvil.provider();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let pool: Value = provider
            .raw_request("txpool_content".into(), ())
            .await
            .unwrap();
        if pool["pending"].as_object().is_some_and(|p| !p.is_empty()) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no transaction reached the pool"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.cut();
    w.anvil.mine(1).await;
    let decision = verify.await.unwrap();
    assert_eq!(decision["decision"], "pending", "{decision}");
    assert_eq!(decision["status"], 202);
    assert_eq!(
        decision["body"]["type"],
        format!("{TP_PROBLEMS}settlement-pending")
    );
    let payment_id = decision["paymentId"].as_str().unwrap().to_owned();
    assert_eq!(
        w.server.payment(&w.merchant, &payment_id).await["state"],
        "pending"
    );
    assert_eq!(w.revenue().await, (0, 0), "nothing booked while unknown");
    // The same credential again meanwhile: still pending (the same payment), not sent twice.
    let again = w.verify(&authorization).await;
    assert_eq!(again["decision"], "pending", "{again}");
    assert_eq!(again["paymentId"], payment_id.as_str());
    // The chain comes back: the resolver reads the receipt and books the payment once.
    proxy.restore();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let payment = w.server.payment(&w.merchant, &payment_id).await;
        if payment["state"] == "settled" {
            assert_eq!(payment["reference"], hash.to_string(), "{payment}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never resolved: {payment}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(2_500)).await; // a few more resolver passes
    assert_eq!(
        w.revenue().await,
        (PRICE, fee(PRICE)),
        "booked exactly once"
    );
    assert_eq!(
        w.balance(w.recipient).await,
        recipient_before + U256::from(PRICE),
        "moved exactly once on chain"
    );
    // The client told to retry gets its receipt once; after that the credential is a replay.
    let delivered = w.verify(&authorization).await;
    assert_eq!(delivered["decision"], "paid", "{delivered}");
    assert_eq!(receipt_of(&delivered).reference, hash.to_string());
    let replay = w.verify(&authorization).await;
    assert_eq!(replay["decision"], "forbidden", "{replay}");
    w.server.assert_ledger_consistent().await;
}

async fn a_zero_amount_price_is_paid_with_a_proof_and_books_nothing(db: &TestDb) {
    let w = world(db, None, false).await;
    // "0" is only for methods that prove an account without moving money.
    let refused = w
        .server
        .post(
            "/v1/prices",
            &w.merchant.key,
            json!({"route": {"method": "GET", "path": FREE_PATH}, "amount": "0",
                   "currency": "usd", "methods": ["tempo", "turnpike"]}),
        )
        .await;
    let problem = refused.expect_problem(400, &format!("{TP_PROBLEMS}invalid-request"));
    assert!(
        problem["detail"].as_str().unwrap().contains("amount"),
        "{problem}"
    );
    w.server
        .create_price(
            &w.merchant,
            json!({"route": {"method": "GET", "path": FREE_PATH}, "amount": "0",
                   "currency": "usd", "methods": ["tempo"]}),
        )
        .await;
    let challenge = w.challenge_for(FREE_PATH).await;
    assert_eq!(challenge.request_json()["amount"], "0");
    // A transaction is refused for a zero amount.
    let (raw, _) = w.pay(&challenge).await;
    let decision = w.verify_at(FREE_PATH, &transaction(&challenge, &raw)).await;
    assert_eq!(decision["decision"], "payment_required", "{decision}");
    // A proof signed by another key than the source's: refused.
    let challenge = w.challenge_for(FREE_PATH).await;
    let decision = w.verify_at(FREE_PATH, &proof(&w, &challenge, 7)).await;
    assert_eq!(decision["decision"], "payment_required", "{decision}");
    assert_eq!(
        decision["body"]["type"],
        format!("{MPP_PROBLEMS}verification-failed")
    );
    // The payer's own proof: paid, the reference is the challenge id, nothing moves.
    let challenge = w.challenge_for(FREE_PATH).await;
    let authorization = proof(&w, &challenge, PAYER);
    let decision = w.verify_at(FREE_PATH, &authorization).await;
    assert_eq!(decision["decision"], "paid", "{decision}");
    let receipt = receipt_of(&decision);
    assert_eq!(receipt.method.as_deref(), Some("tempo"));
    assert_eq!(receipt.reference, challenge.id);
    let payment = w
        .server
        .payment(&w.merchant, decision["paymentId"].as_str().unwrap())
        .await;
    assert_eq!(payment["state"], "settled", "{payment}");
    assert_eq!(payment["amount"], "0");
    let replay = w.verify_at(FREE_PATH, &authorization).await;
    assert_eq!(replay["decision"], "forbidden", "{replay}");
    assert_eq!(w.revenue().await, (0, 0), "a proof books nothing");
    w.server.assert_ledger_consistent().await;
}

async fn tempo_rail_configuration_keeps_its_secret_and_validates_input(db: &TestDb) {
    let w = world(db, None, true).await;
    let key = w.anvil.private_key_hex(FEE_PAYER);
    let read = w
        .server
        .get("/v1/rails/tempo", &w.merchant.key)
        .await
        .expect_status(200)
        .json();
    assert_eq!(
        read["feePayerAddress"],
        w.anvil.address(FEE_PAYER).to_checksum(None)
    );
    assert!(read.get("feePayerKey").is_none());
    assert!(!read.to_string().contains(&key[2..]));
    assert_eq!(read["method"], "tempo");
    assert_eq!(read["version"], 1);
    let base = |extra: Value| {
        let mut body = json!({"chainId": w.anvil.chain_id(), "rpcUrl": w.anvil.rpc_url(),
            "recipient": w.recipient, "tokens": [{"currency": "usd", "address": PATH_USD}]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    for (body, needle) in [
        (base(json!({"rpcUrl": "ftp://x"})), "rpcUrl"),
        (base(json!({"recipient": "0x12"})), "recipient"),
        (base(json!({"chainId": 0})), "chainId"),
        (base(json!({"feePayerKey": "0xnope"})), "feePayerKey"),
        (
            base(json!({"tokens": [{"currency": "usd", "address": Address::ZERO}]})),
            "tokens[0].address",
        ),
        (
            base(json!({"tokens": [{"currency": "USD", "address": PATH_USD}]})),
            "tokens[0].currency",
        ),
        (
            base(json!({"supportedModes": ["push"], "feePayerKey": key})),
            "supportedModes",
        ),
        (
            base(json!({"supportedModes": ["stream"]})),
            "supportedModes",
        ),
        (
            base(json!({"feeToken": PATH_USD, "feePayerKey": null})),
            "feeToken",
        ),
        (
            base(json!({"feePayerAddress": w.recipient})),
            "feePayerAddress",
        ),
        (base(json!({"decimals": 6})), "decimals"),
        (base(json!({"minFeeBalance": "1.5"})), "minFeeBalance"),
    ] {
        let reply = w
            .server
            .call(
                reqwest::Method::PUT,
                "/v1/rails/tempo",
                Some(&w.merchant.key),
                Some(body.clone()),
            )
            .await;
        let problem = reply.expect_problem(400, &format!("{TP_PROBLEMS}invalid-request"));
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains(needle), "{body}: {problem}");
        assert!(!detail.contains(&key[2..]), "{problem}");
    }
    let again = w
        .server
        .get("/v1/rails/tempo", &w.merchant.key)
        .await
        .expect_status(200)
        .json();
    assert_eq!(again, read, "nothing changed");
    // A change that omits the key keeps it; `null` removes it (and fee sponsorship with it).
    let kept = w
        .server
        .call(
            reqwest::Method::PUT,
            "/v1/rails/tempo",
            Some(&w.merchant.key),
            Some(base(json!({"confirmations": 2}))),
        )
        .await
        .expect_status(200)
        .json();
    assert_eq!(kept["feePayerAddress"], read["feePayerAddress"]);
    assert_eq!(kept["version"], 2);
    let challenge = w.challenge().await;
    let request = challenge.request_json();
    assert_eq!(request["methodDetails"]["feePayer"], true);
    // A fee payer below its floor: tempo is not offered (the spec: a sponsor MUST reject new
    // requests when its fee balance runs low) and the alert metric is raised.
    w.server
        .call(
            reqwest::Method::PUT,
            "/v1/rails/tempo",
            Some(&w.merchant.key),
            Some(base(json!({"minFeeBalance": "1000000000000000000000000"}))),
        )
        .await
        .expect_status(200);
    w.server
        .post(
            "/v1/challenges",
            &w.merchant.key,
            json!({"method": "GET", "path": PATH}),
        )
        .await
        .expect_problem(503, &format!("{TP_PROBLEMS}unavailable"));
    let metrics = w.server.metrics().await;
    let alert = metrics
        .lines()
        .find(|l| l.starts_with("turnpike_tempo_fee_payer_low{"))
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(alert.ends_with(" 1"), "{alert}");
    let removed = w
        .server
        .call(
            reqwest::Method::PUT,
            "/v1/rails/tempo",
            Some(&w.merchant.key),
            Some(base(json!({"feePayerKey": null}))),
        )
        .await
        .expect_status(200)
        .json();
    assert!(removed.get("feePayerAddress").is_none(), "{removed}");
    let challenge = w.challenge().await;
    let request = challenge.request_json();
    assert!(
        request["methodDetails"].get("feePayer").is_none(),
        "{request:?}"
    );
    // Another tenant sees nothing; deleting stops the offer.
    let other = w.server.create_tenant("other").await;
    w.server
        .get("/v1/rails/tempo", &other.key)
        .await
        .expect_status(404);
    w.server
        .call(
            reqwest::Method::DELETE,
            "/v1/rails/tempo",
            Some(&w.merchant.key),
            None,
        )
        .await
        .expect_status(204);
    let reply = w
        .server
        .post(
            "/v1/challenges",
            &w.merchant.key,
            json!({"method": "GET", "path": PATH}),
        )
        .await;
    reply.expect_problem(503, &format!("{TP_PROBLEMS}unavailable"));
}

async fn a_gateway_route_is_paid_with_tempo_and_discovery_offers_the_token(db: &TestDb) {
    let w = world(db, None, false).await;
    let upstream = Upstream::start().await;
    w.server
        .create_price(
            &w.merchant,
            json!({"route": {"method": "GET", "path": "/report"}, "amount": PRICE.to_string(),
                   "currency": "usd", "methods": ["tempo"], "upstreamUrl": upstream.url}),
        )
        .await;
    // Discovery offers tempo with the token's address as the currency.
    let document: Value = w
        .server
        .gateway(reqwest::Method::GET, "shop", "/openapi.json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let offer = &document["paths"]["/report"]["get"]["x-payment-info"]["offers"][0];
    assert_eq!(offer["method"], "tempo", "{document}");
    assert_eq!(offer["currency"], PATH_USD.to_checksum(None), "{document}");
    assert_eq!(offer["amount"], PRICE.to_string());
    let recipient_before = w.balance(w.recipient).await;
    // One route paid twice through the gateway: a `transaction`, then a `hash`.
    for push in [false, true] {
        let unpaid = w
            .server
            .gateway(reqwest::Method::GET, "shop", "/report")
            .send()
            .await
            .unwrap();
        assert_eq!(unpaid.status(), 402);
        let header = unpaid
            .headers()
            .get("www-authenticate")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        let challenge = parse_challenges_from_lines([header.as_str()])
            .unwrap()
            .remove(0);
        assert_eq!(challenge.method, "tempo");
        let (raw, hash) = w.pay(&challenge).await;
        let authorization = if push {
            chain::send_raw(&w.anvil, &raw).await.unwrap();
            hash_credential(&challenge, hash)
        } else {
            transaction(&challenge, &raw)
        };
        let paid = w
            .server
            .gateway(reqwest::Method::GET, "shop", "/report")
            .header("authorization", &authorization)
            .send()
            .await
            .unwrap();
        assert_eq!(paid.status(), 200);
        let receipt = Receipt::parse(
            paid.headers()
                .get("payment-receipt")
                .unwrap()
                .to_str()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(receipt.method.as_deref(), Some("tempo"));
        assert_eq!(receipt.reference, hash.to_string());
        // Replayed at the gateway: refused, the upstream is not reached again.
        let replay = w
            .server
            .gateway(reqwest::Method::GET, "shop", "/report")
            .header("authorization", &authorization)
            .send()
            .await
            .unwrap();
        assert_eq!(replay.status(), 403);
    }
    assert_eq!(
        upstream.hits(),
        2,
        "only the paid requests reach the upstream"
    );
    assert_eq!(
        w.balance(w.recipient).await,
        recipient_before + U256::from(2 * PRICE)
    );
    assert_eq!(w.revenue().await, (2 * PRICE, 2 * fee(PRICE)));
    w.server.assert_ledger_consistent().await;
}

async fn a_tempo_payment_whose_gateway_upstream_fails_is_owed_back_and_a_proof_owes_nothing(
    db: &TestDb,
) {
    let w = world(db, None, false).await;
    let upstream = Upstream::start().await;
    upstream.fail();
    for (path, amount) in [("/report", PRICE.to_string()), (FREE_PATH, "0".to_owned())] {
        w.server
            .create_price(
                &w.merchant,
                json!({"route": {"method": "GET", "path": path}, "amount": amount,
                       "currency": "usd", "methods": ["tempo"], "upstreamUrl": upstream.url}),
            )
            .await;
    }
    let gateway_challenge = |path: &'static str| {
        let server = &w.server;
        async move {
            let unpaid = Server::read(server.gateway(reqwest::Method::GET, "shop", path)).await;
            assert_eq!(unpaid.status, 402, "{unpaid:?}");
            let headers = unpaid.header_all("www-authenticate");
            parse_challenges_from_lines(headers.iter().map(String::as_str))
                .unwrap()
                .remove(0)
        }
    };
    let pay = |path: &'static str, authorization: String| {
        let server = &w.server;
        async move {
            Server::read(
                server
                    .gateway(reqwest::Method::GET, "shop", path)
                    .header("authorization", authorization),
            )
            .await
        }
    };

    // Paid with a transaction the server broadcast; the upstream answers 500.
    let challenge = gateway_challenge("/report").await;
    let (raw, _) = w.pay(&challenge).await;
    let reply = pay("/report", transaction(&challenge, &raw)).await;
    assert_eq!(reply.status, 500, "{reply:?}");
    assert_eq!(reply.json(), json!({"error": "upstream broke"}));
    assert!(reply.header("payment-receipt").is_none(), "{reply:?}");
    assert_eq!(reply.header("x-turnpike-refund").as_deref(), Some("due"));
    let payment_id = reply.header("x-turnpike-payment").unwrap();
    let payment = w.server.payment(&w.merchant, &payment_id).await;
    assert_eq!(payment["state"], "refund_due", "{payment}");
    assert_eq!(payment["amount"], PRICE.to_string());
    assert_eq!(
        payment["payerAddress"],
        w.anvil.address(PAYER).to_checksum(None),
        "the payer is read from the receipt's TIP-20 transfer"
    );
    assert_eq!(
        w.revenue().await,
        (PRICE, PRICE),
        "reversed: no revenue kept"
    );

    // A zero-amount proof moved nothing: nothing is owed, nothing booked.
    let challenge = gateway_challenge(FREE_PATH).await;
    let reply = pay(FREE_PATH, proof(&w, &challenge, PAYER)).await;
    assert_eq!(reply.status, 500, "{reply:?}");
    assert!(reply.header("payment-receipt").is_none(), "{reply:?}");
    assert_eq!(reply.header("x-turnpike-refund").as_deref(), Some("none"));
    let free_id = reply.header("x-turnpike-payment").unwrap();
    assert_eq!(
        w.server.payment(&w.merchant, &free_id).await["state"],
        "settled"
    );

    // The merchant returns the tokens and records it.
    let recorded = w
        .server
        .post(
            &format!("/v1/payments/{payment_id}/refunds"),
            &w.merchant.key,
            json!({"reference": format!("0x{}", "ab".repeat(32))}),
        )
        .await
        .expect_status(200)
        .json();
    assert_eq!(recorded["state"], "refunded", "{recorded}");
    assert_eq!(w.revenue().await, (PRICE, PRICE));
    assert_eq!(upstream.hits(), 2);
    w.server.assert_ledger_consistent().await;
}
