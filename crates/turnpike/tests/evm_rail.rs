//! Black-box tests of the `evm` rail (draft-evm-charge-00) on a real chain: anvil, the project's
//! EIP-3009 stablecoin, and the real `turnpike serve` binary over HTTP, on SQLite and on
//! PostgreSQL. Each credential type is paid and settled with the ledger matching the chain; bad
//! credentials are refused; a settlement cut off from its RPC stays pending and the resolver
//! books it once when the chain is back; concurrent verifies of one credential settle once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use alloy::primitives::{Address, U256};
use serde_json::{Value, json};
use support::chain::{self, Anvil, RpcProxy};
use support::{MPP_PROBLEMS, Server, TP_PROBLEMS, Tenant, decision_header};
use turnpike_protocol::{Credential, Receipt, b64, parse_challenges_from_lines};
use turnpike_store::on_both_databases;
use turnpike_store::testing::TestDb;

on_both_databases!(
    an_authorization_is_settled_on_chain_and_booked_once,
    a_signed_transaction_and_a_broadcast_hash_are_settled,
    bad_evm_credentials_are_refused_and_nothing_is_booked,
    a_settlement_cut_off_from_its_rpc_stays_pending_and_the_resolver_books_it_once,
    twenty_concurrent_verifies_of_one_authorization_settle_once_on_chain,
    rail_configuration_keeps_its_secret_and_validates_input,
    a_permit2_transfer_is_settled_once_and_bad_permits_are_refused,
);

const NAME: &str = "Turnpike Test USD";
const VERSION: &str = "1";
const PRICE: u128 = 250_000; // 0.25 of a 6-decimal token
const PATH: &str = "/v1/data";

/// A chain with the token, a merchant with an evm rail, and a funded payer key.
struct World {
    anvil: Anvil,
    server: Server,
    merchant: Tenant,
    token: Address,
    /// Where the merchant is paid.
    recipient: Address,
    /// The merchant's hot wallet (anvil account 1).
    hot_wallet: Address,
    /// Anvil account index of the payer.
    payer: usize,
}

async fn world(db: &TestDb, rpc_url: Option<&str>) -> World {
    let anvil = Anvil::start().await;
    world_on(db, anvil, rpc_url).await
}

async fn world_on(db: &TestDb, anvil: Anvil, rpc_url: Option<&str>) -> World {
    let token = chain::deploy_stablecoin(&anvil, NAME, VERSION).await;
    let payer = 3;
    chain::mint(&anvil, token, anvil.address(payer), 100 * PRICE).await;
    let server = Server::start(db).await;
    let merchant = server.create_tenant("shop").await;
    let recipient = anvil.address(2);
    let rpc = rpc_url.unwrap_or(anvil.rpc_url()).to_owned();
    let reply = server
        .call(
            reqwest::Method::PUT,
            "/v1/rails/evm",
            Some(&merchant.key),
            Some(json!({
                "chainId": anvil.chain_id(),
                "rpcUrl": rpc,
                "recipient": recipient.to_checksum(None),
                "confirmations": 1,
                "tokens": [{"currency": "usdc", "address": token.to_checksum(None),
                            "decimals": 6, "name": NAME, "version": VERSION}],
                "hotWalletKey": anvil.private_key_hex(1),
            })),
        )
        .await
        .expect_status(201);
    assert!(!reply.text().contains(&anvil.private_key_hex(1)[2..]));
    server
        .create_price(
            &merchant,
            json!({"route": {"method": "GET", "path": PATH}, "amount": PRICE.to_string(),
                   "currency": "usdc", "methods": ["evm"]}),
        )
        .await;
    World {
        hot_wallet: anvil.address(1),
        anvil,
        server,
        merchant,
        token,
        recipient,
        payer,
    }
}

impl World {
    /// A fresh `evm` challenge for the priced route: (header value, parsed request).
    async fn challenge(&self) -> (String, turnpike_protocol::Challenge) {
        let decision = self.server.challenge(&self.merchant, "GET", PATH).await;
        let headers = decision_header(&decision, "www-authenticate");
        assert_eq!(headers.len(), 1, "{decision}");
        let challenge = parse_challenges_from_lines(headers.iter().map(String::as_str))
            .expect("parse")
            .remove(0);
        (headers[0].clone(), challenge)
    }

    /// An `authorization` credential for `challenge` signed by the payer, with overrides.
    fn authorization(
        &self,
        challenge: &turnpike_protocol::Challenge,
        to: Address,
        value: u128,
        valid_before: u64,
    ) -> String {
        let domain = chain::token_domain(NAME, VERSION, self.anvil.chain_id(), self.token);
        let auth = chain::sign_authorization(
            &self.anvil.signer(self.payer),
            &domain,
            to,
            value,
            0,
            valid_before,
            chain::challenge_hash(&challenge.id, &challenge.realm),
        );
        credential(
            challenge,
            auth.payload(),
            Some(self.anvil.address(self.payer)),
            self.anvil.chain_id(),
        )
    }

    async fn verify(&self, authorization: &str) -> Value {
        self.server
            .verify(&self.merchant, json!(authorization), "GET", PATH, None)
            .await
            .expect_status(200)
            .json()
    }

    /// The merchant's `usdc` revenue (credits posted minus debits posted).
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
}

/// `Payment <b64(JSON)>` for `payload` answering `challenge`.
fn credential(
    challenge: &turnpike_protocol::Challenge,
    payload: Value,
    payer: Option<Address>,
    chain_id: u64,
) -> String {
    let Value::Object(payload) = payload else {
        panic!("payload must be an object")
    };
    let credential = Credential {
        challenge: challenge.echo(),
        source: payer.map(|a| json!(format!("did:pkh:eip155:{chain_id}:{a}"))),
        payload,
    };
    format!(
        "Payment {}",
        b64::encode(serde_json::to_vec(&credential).unwrap())
    )
}

fn receipt_of(decision: &Value) -> Receipt {
    let value = decision_header(decision, "payment-receipt");
    Receipt::parse(&value[0]).expect("receipt")
}

/// Builds a credential for a challenge (one bad-input case).
type MakeCredential<'a> = Box<dyn Fn(&turnpike_protocol::Challenge) -> String + 'a>;

fn unix_now() -> u64 {
    chain::unix_now()
}

async fn an_authorization_is_settled_on_chain_and_booked_once(db: &TestDb) {
    let w = world(db, None).await;
    let (header, challenge) = w.challenge().await;
    assert!(header.starts_with("Payment "), "{header}");
    let request = challenge.request_json();
    assert_eq!(request["amount"], PRICE.to_string());
    assert_eq!(request["currency"], w.token.to_checksum(None));
    assert_eq!(request["recipient"], w.recipient.to_checksum(None));
    assert_eq!(request["methodDetails"]["chainId"], w.anvil.chain_id());
    assert_eq!(
        request["methodDetails"]["credentialTypes"],
        json!(["authorization", "transaction", "hash"])
    );
    let payer_before = w
        .anvil
        .token_balance(w.token, w.anvil.address(w.payer))
        .await;
    let gas_before = w.anvil.balance(w.anvil.address(w.payer)).await;
    let authorization = w.authorization(&challenge, w.recipient, PRICE, unix_now() + 300);
    let decision = w.verify(&authorization).await;
    assert_eq!(decision["decision"], "paid", "{decision}");
    let receipt = receipt_of(&decision);
    assert_eq!(receipt.method.as_deref(), Some("evm"));
    assert_eq!(receipt.extra["chainId"], w.anvil.chain_id());
    assert_eq!(receipt.extra["challengeId"], challenge.id);
    // The chain agrees: the reference is a successful transaction moving exactly the price.
    let hash = receipt.reference.parse().unwrap();
    let mined = w.anvil.receipt(hash).await.expect("mined");
    assert!(mined.status());
    assert_eq!(
        mined.from, w.hot_wallet,
        "the hot wallet submits and pays gas"
    );
    let moved = chain::transfers(w.token, &mined);
    assert_eq!(moved.len(), 1);
    assert_eq!(
        (moved[0].from, moved[0].to),
        (w.anvil.address(w.payer), w.recipient)
    );
    assert_eq!(moved[0].value, U256::from(PRICE));
    assert_eq!(
        w.anvil
            .token_balance(w.token, w.anvil.address(w.payer))
            .await,
        payer_before - U256::from(PRICE)
    );
    assert_eq!(
        w.anvil.balance(w.anvil.address(w.payer)).await,
        gas_before,
        "payer pays no gas"
    );
    // The ledger agrees: revenue credited once (minus the platform fee).
    let fee = PRICE * u128::from(support::FEE_BPS) / 10_000;
    assert_eq!(w.revenue().await, (PRICE, fee));
    let payment = w
        .server
        .payment(&w.merchant, decision["paymentId"].as_str().unwrap())
        .await;
    assert_eq!(payment["state"], "settled", "{payment}");
    assert_eq!(payment["method"], "evm");
    // Replaying the paid credential: 403, no challenge, nothing more moves.
    let replay = w.verify(&authorization).await;
    assert_eq!(replay["decision"], "forbidden", "{replay}");
    assert_eq!(w.revenue().await, (PRICE, fee));
    w.server.assert_ledger_consistent().await;
}

async fn a_signed_transaction_and_a_broadcast_hash_are_settled(db: &TestDb) {
    let w = world(db, None).await;
    let payer = w.anvil.signer(w.payer);
    // `transaction`: the client signs, Turnpike broadcasts.
    let (_, challenge) = w.challenge().await;
    let signed = chain::sign_transfer(&w.anvil, &payer, w.token, w.recipient, PRICE).await;
    let authorization = credential(&challenge, signed.payload(), None, w.anvil.chain_id());
    let decision = w.verify(&authorization).await;
    assert_eq!(decision["decision"], "paid", "{decision}");
    assert_eq!(receipt_of(&decision).reference, signed.hash.to_string());
    assert!(w.anvil.receipt(signed.hash).await.unwrap().status());
    // `hash`: the client broadcast it already.
    let (_, challenge) = w.challenge().await;
    let hash = chain::broadcast_transfer(&w.anvil, &payer, w.token, w.recipient, PRICE).await;
    let authorization = credential(
        &challenge,
        json!({"type": "hash", "hash": hash.to_string()}),
        None,
        w.anvil.chain_id(),
    );
    let decision = w.verify(&authorization).await;
    assert_eq!(decision["decision"], "paid", "{decision}");
    assert_eq!(receipt_of(&decision).reference, hash.to_string());
    // The same hash for another challenge: refused (one proof, one payment).
    let (_, challenge) = w.challenge().await;
    let reuse = credential(
        &challenge,
        json!({"type": "hash", "hash": hash.to_string()}),
        None,
        w.anvil.chain_id(),
    );
    let decision = w.verify(&reuse).await;
    assert_eq!(decision["decision"], "forbidden", "{decision}");
    let fee = PRICE * u128::from(support::FEE_BPS) / 10_000;
    assert_eq!(w.revenue().await, (2 * PRICE, 2 * fee));
    // `hash` is not bound to its challenge: with `hashMaxAmount` below the price it is neither
    // offered nor accepted (and nothing moves for it).
    w.server
        .call(
            reqwest::Method::PUT,
            "/v1/rails/evm",
            Some(&w.merchant.key),
            Some(json!({
                "chainId": w.anvil.chain_id(),
                "rpcUrl": w.anvil.rpc_url(),
                "recipient": w.recipient.to_checksum(None),
                "tokens": [{"currency": "usdc", "address": w.token.to_checksum(None),
                            "decimals": 6, "name": NAME, "version": VERSION}],
                "hashMaxAmount": (PRICE - 1).to_string(),
            })),
        )
        .await
        .expect_status(200);
    let (_, challenge) = w.challenge().await;
    assert_eq!(
        challenge.request_json()["methodDetails"]["credentialTypes"],
        json!(["authorization", "transaction"])
    );
    let hash = chain::broadcast_transfer(&w.anvil, &payer, w.token, w.recipient, PRICE).await;
    let over = credential(
        &challenge,
        json!({"type": "hash", "hash": hash.to_string()}),
        None,
        w.anvil.chain_id(),
    );
    let decision = w.verify(&over).await;
    assert_eq!(decision["decision"], "payment_required", "{decision}");
    assert_eq!(
        decision["body"]["type"],
        format!("{MPP_PROBLEMS}verification-failed")
    );
    assert_eq!(w.revenue().await, (2 * PRICE, 2 * fee));
    w.server.assert_ledger_consistent().await;
}

/// Permit2 (the spec's RECOMMENDED type) on the canonical Permit2 contract: the merchant lists
/// `permit2` first; the payer approved Permit2 once and signs a witness transfer bound to the
/// challenge with the hot wallet as spender.
async fn a_permit2_transfer_is_settled_once_and_bad_permits_are_refused(db: &TestDb) {
    let w = world(db, None).await;
    chain::install_permit2(&w.anvil).await;
    chain::approve_permit2(&w.anvil, w.payer, w.token).await;
    w.server
        .call(
            reqwest::Method::PUT,
            "/v1/rails/evm",
            Some(&w.merchant.key),
            Some(json!({
                "chainId": w.anvil.chain_id(),
                "rpcUrl": w.anvil.rpc_url(),
                "recipient": w.recipient.to_checksum(None),
                "tokens": [{"currency": "usdc", "address": w.token.to_checksum(None),
                            "decimals": 6, "name": NAME, "version": VERSION}],
                "credentialTypes": ["permit2", "authorization", "transaction", "hash"],
            })),
        )
        .await
        .expect_status(200);
    let (_, challenge) = w.challenge().await;
    let details = &challenge.request_json()["methodDetails"];
    assert_eq!(
        details["credentialTypes"],
        json!(["permit2", "authorization", "transaction", "hash"])
    );
    assert_eq!(details["permit2Address"], chain::PERMIT2.to_checksum(None));
    assert_eq!(details["spender"], w.hot_wallet.to_checksum(None));
    let payer = w.anvil.signer(w.payer);
    let permit = |c: &turnpike_protocol::Challenge, spender, to, nonce, deadline| {
        let signed = chain::sign_permit2(
            &payer,
            w.anvil.chain_id(),
            w.token,
            spender,
            to,
            PRICE,
            nonce,
            deadline,
            chain::challenge_hash(&c.id, &c.realm),
        );
        credential(
            c,
            signed.payload(),
            Some(payer.address()),
            w.anvil.chain_id(),
        )
    };
    let payer_before = w.anvil.token_balance(w.token, payer.address()).await;
    let paid = permit(&challenge, w.hot_wallet, w.recipient, 7, unix_now() + 300);
    let decision = w.verify(&paid).await;
    assert_eq!(decision["decision"], "paid", "{decision}");
    let receipt = receipt_of(&decision);
    let mined = w
        .anvil
        .receipt(receipt.reference.parse().unwrap())
        .await
        .expect("mined");
    assert!(mined.status());
    assert_eq!(mined.from, w.hot_wallet, "the spender submits and pays gas");
    assert_eq!(mined.to, Some(chain::PERMIT2));
    let moved = chain::transfers(w.token, &mined);
    assert_eq!(moved.len(), 1);
    assert_eq!((moved[0].from, moved[0].to), (payer.address(), w.recipient));
    assert_eq!(moved[0].value, U256::from(PRICE));
    assert_eq!(
        w.anvil.token_balance(w.token, payer.address()).await,
        payer_before - U256::from(PRICE)
    );
    let fee = PRICE * u128::from(support::FEE_BPS) / 10_000;
    assert_eq!(w.revenue().await, (PRICE, fee));
    // The same credential again: 403.
    let replay = w.verify(&paid).await;
    assert_eq!(replay["decision"], "forbidden", "{replay}");
    // The same Permit2 nonce signed for a new challenge: the replay token (signer, nonce) is
    // spent, 403 and nothing moves.
    let (_, challenge) = w.challenge().await;
    let reused = w
        .verify(&permit(
            &challenge,
            w.hot_wallet,
            w.recipient,
            7,
            unix_now() + 300,
        ))
        .await;
    assert_eq!(reused["decision"], "forbidden", "{reused}");
    let stranger = w.anvil.address(7);
    let refusals: Vec<(&str, MakeCredential<'_>, &str)> = vec![
        (
            "another spender",
            Box::new(|c| permit(c, stranger, w.recipient, 8, unix_now() + 300)),
            "verification-failed",
        ),
        (
            "another recipient",
            Box::new(|c| permit(c, w.hot_wallet, stranger, 9, unix_now() + 300)),
            "verification-failed",
        ),
        (
            "deadline passed",
            Box::new(|c| permit(c, w.hot_wallet, w.recipient, 10, unix_now() - 1)),
            "payment-expired",
        ),
        (
            "another challenge's witness",
            Box::new(|c| {
                let signed = chain::sign_permit2(
                    &payer,
                    w.anvil.chain_id(),
                    w.token,
                    w.hot_wallet,
                    w.recipient,
                    PRICE,
                    11,
                    unix_now() + 300,
                    chain::challenge_hash("another-challenge", &c.realm),
                );
                credential(
                    c,
                    signed.payload(),
                    Some(payer.address()),
                    w.anvil.chain_id(),
                )
            }),
            "verification-failed",
        ),
    ];
    for (what, make, problem) in refusals {
        let (_, challenge) = w.challenge().await;
        let decision = w.verify(&make(&challenge)).await;
        assert_eq!(
            decision["decision"], "payment_required",
            "{what}: {decision}"
        );
        assert_eq!(
            decision["body"]["type"],
            format!("{MPP_PROBLEMS}{problem}"),
            "{what}: {decision}"
        );
    }
    // A payer who never approved Permit2: the simulation refuses it before anything is sent.
    let unapproved = w.anvil.signer(6);
    chain::mint(&w.anvil, w.token, unapproved.address(), PRICE).await;
    let (_, challenge) = w.challenge().await;
    let signed = chain::sign_permit2(
        &unapproved,
        w.anvil.chain_id(),
        w.token,
        w.hot_wallet,
        w.recipient,
        PRICE,
        1,
        unix_now() + 300,
        chain::challenge_hash(&challenge.id, &challenge.realm),
    );
    let decision = w
        .verify(&credential(
            &challenge,
            signed.payload(),
            Some(unapproved.address()),
            w.anvil.chain_id(),
        ))
        .await;
    assert_eq!(decision["decision"], "payment_required", "{decision}");
    assert!(
        decision["body"]["detail"]
            .as_str()
            .unwrap()
            .contains("Permit2 refused the permit"),
        "{decision}"
    );
    assert_eq!(
        w.anvil.token_balance(w.token, unapproved.address()).await,
        U256::from(PRICE)
    );
    assert_eq!(w.revenue().await, (PRICE, fee), "booked once in all");
    assert_eq!(w.server.payments(&w.merchant).await.len(), 1);
    w.server.assert_ledger_consistent().await;
}

async fn bad_evm_credentials_are_refused_and_nothing_is_booked(db: &TestDb) {
    let w = world(db, None).await;
    let stranger = w.anvil.address(7);
    let cases: Vec<(&str, MakeCredential<'_>, &str)> = vec![
        (
            "wrong recipient",
            Box::new(|c| w.authorization(c, stranger, PRICE, unix_now() + 300)),
            "verification-failed",
        ),
        (
            "wrong amount",
            Box::new(|c| w.authorization(c, w.recipient, PRICE - 1, unix_now() + 300)),
            "verification-failed",
        ),
        (
            "expired validBefore",
            Box::new(|c| w.authorization(c, w.recipient, PRICE, unix_now() - 1)),
            "payment-expired",
        ),
    ];
    for (what, make, problem) in cases {
        let (_, challenge) = w.challenge().await;
        let decision = w.verify(&make(&challenge)).await;
        assert_eq!(
            decision["decision"], "payment_required",
            "{what}: {decision}"
        );
        assert_eq!(
            decision["body"]["type"],
            format!("{MPP_PROBLEMS}{problem}"),
            "{what}: {decision}"
        );
        assert!(!decision["body"].to_string().contains("signature\":\"0x"));
    }
    // An authorization signed for one challenge does not pay another (its nonce binds it).
    let (_, first) = w.challenge().await;
    let (_, second) = w.challenge().await;
    let for_first = w.authorization(&first, w.recipient, PRICE, unix_now() + 300);
    let moved: Credential = Credential::parse(&for_first).unwrap();
    let mut other = moved.clone();
    other.challenge = second.echo();
    let replayed = format!(
        "Payment {}",
        b64::encode(serde_json::to_vec(&other).unwrap())
    );
    let decision = w.verify(&replayed).await;
    assert_eq!(
        decision["body"]["type"],
        format!("{MPP_PROBLEMS}verification-failed"),
        "{decision}"
    );
    // Garbage in the payload: 402 malformed, never a 500.
    let (_, challenge) = w.challenge().await;
    let garbage = credential(
        &challenge,
        json!({"type": "transaction", "signature": "0xdeadbeef"}),
        None,
        w.anvil.chain_id(),
    );
    let decision = w.verify(&garbage).await;
    assert_eq!(
        decision["body"]["type"],
        format!("{MPP_PROBLEMS}malformed-credential"),
        "{decision}"
    );
    // The authorization already used on chain by someone else: the token refuses it (simulation).
    let (_, challenge) = w.challenge().await;
    let authorization = w.authorization(&challenge, w.recipient, PRICE, unix_now() + 300);
    let parsed = Credential::parse(&authorization).unwrap();
    let domain = chain::token_domain(NAME, VERSION, w.anvil.chain_id(), w.token);
    let again = chain::sign_authorization(
        &w.anvil.signer(w.payer),
        &domain,
        w.recipient,
        PRICE,
        0,
        parsed.payload["validBefore"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap(),
        chain::challenge_hash(&challenge.id, &challenge.realm),
    );
    chain::submit_authorization(&w.anvil, w.anvil.signer(5), w.token, &again)
        .await
        .expect("someone else submits it first");
    let decision = w.verify(&authorization).await;
    assert_eq!(decision["decision"], "payment_required", "{decision}");
    assert_eq!(
        decision["body"]["type"],
        format!("{MPP_PROBLEMS}verification-failed")
    );
    assert!(
        decision["body"]["detail"]
            .as_str()
            .unwrap()
            .contains("refused"),
        "{decision}"
    );
    assert_eq!(w.revenue().await, (0, 0), "nothing booked");
    assert!(
        w.server.payments(&w.merchant).await.is_empty(),
        "every claim released"
    );
    w.server.assert_ledger_consistent().await;
}

async fn a_settlement_cut_off_from_its_rpc_stays_pending_and_the_resolver_books_it_once(
    db: &TestDb,
) {
    let anvil = Anvil::start().await;
    let proxy = RpcProxy::start(anvil.rpc_url()).await;
    let w = world_on(db, anvil, Some(proxy.url())).await;
    let (_, challenge) = w.challenge().await;
    let authorization = w.authorization(&challenge, w.recipient, PRICE, unix_now() + 600);
    // Mine nothing until the test says so, and cut the RPC once the transaction is in the pool.
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
        use alloy::providers::Provider;
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
    assert_eq!(
        w.revenue().await,
        (0, 0),
        "nothing booked while the outcome is unknown"
    );
    // The same credential again meanwhile: still pending (the same payment), never submitted
    // twice.
    let again = w.verify(&authorization).await;
    assert_eq!(again["decision"], "pending", "{again}");
    assert_eq!(again["paymentId"], payment_id.as_str());
    // The chain comes back: the resolver finds the receipt and books the payment once.
    proxy.restore();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let payment = w.server.payment(&w.merchant, &payment_id).await;
        if payment["state"] == "settled" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never resolved: {payment}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(2_500)).await; // a few more resolver passes
    let fee = PRICE * u128::from(support::FEE_BPS) / 10_000;
    assert_eq!(w.revenue().await, (PRICE, fee), "booked exactly once");
    assert_eq!(
        w.anvil.token_balance(w.token, w.recipient).await,
        U256::from(PRICE),
        "moved exactly once on chain"
    );
    // The client that was told to retry gets its receipt, once: the settled transaction.
    let settled = w.server.payment(&w.merchant, &payment_id).await;
    let delivered = w.verify(&authorization).await;
    assert_eq!(delivered["decision"], "paid", "{delivered}");
    assert_eq!(delivered["paymentId"], payment_id.as_str());
    assert_eq!(
        receipt_of(&delivered).reference,
        settled["reference"].as_str().unwrap()
    );
    let replay = w.verify(&authorization).await;
    assert_eq!(replay["decision"], "forbidden", "{replay}");
    assert_eq!(w.revenue().await, (PRICE, fee), "delivering books nothing");
    w.server.assert_ledger_consistent().await;
}

async fn twenty_concurrent_verifies_of_one_authorization_settle_once_on_chain(db: &TestDb) {
    let w = world(db, None).await;
    let (_, challenge) = w.challenge().await;
    let authorization = w.authorization(&challenge, w.recipient, PRICE, unix_now() + 300);
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let http = w.server.http.clone();
        let url = format!("{}/v1/verify", w.server.url);
        let key = w.merchant.key.clone();
        let body = json!({"authorization": authorization, "method": "GET", "path": PATH});
        tasks.push(tokio::spawn(async move {
            http.post(url)
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }));
    }
    let mut paid = 0;
    for task in tasks {
        let decision = task.await.unwrap();
        match decision["decision"].as_str().unwrap() {
            "paid" => paid += 1,
            "forbidden" => {}
            other => panic!("unexpected {other}: {decision}"),
        }
    }
    assert_eq!(paid, 1);
    assert_eq!(
        w.anvil.token_balance(w.token, w.recipient).await,
        U256::from(PRICE)
    );
    let fee = PRICE * u128::from(support::FEE_BPS) / 10_000;
    assert_eq!(w.revenue().await, (PRICE, fee));
    w.server.assert_ledger_consistent().await;
}

async fn rail_configuration_keeps_its_secret_and_validates_input(db: &TestDb) {
    let w = world(db, None).await;
    let read = w
        .server
        .get("/v1/rails/evm", &w.merchant.key)
        .await
        .expect_status(200)
        .json();
    assert_eq!(read["hotWalletAddress"], w.hot_wallet.to_checksum(None));
    assert!(read.get("hotWalletKey").is_none());
    assert!(!read.to_string().contains(&w.anvil.private_key_hex(1)[2..]));
    assert_eq!(read["version"], 1);
    // Bad input names the field and changes nothing.
    for (body, needle) in [
        (
            json!({"chainId": 1, "rpcUrl": "ftp://x", "recipient": w.recipient, "tokens": []}),
            "rpcUrl",
        ),
        (
            json!({"chainId": 1, "rpcUrl": "http://x", "recipient": "0x12", "tokens": []}),
            "recipient",
        ),
        (
            json!({"chainId": 1, "rpcUrl": "http://x", "recipient": w.recipient,
                "tokens": [{"currency": "usdc", "address": w.token, "decimals": 6}],
                "hotWalletKey": "0xnope"}),
            "hotWalletKey",
        ),
        (
            json!({"chainId": 1, "rpcUrl": "http://x", "recipient": w.recipient,
                "tokens": [{"currency": "usdc", "address": w.token, "decimals": 6}],
                "hashMaxAmount": "0.5"}),
            "hashMaxAmount",
        ),
    ] {
        let reply = w
            .server
            .call(
                reqwest::Method::PUT,
                "/v1/rails/evm",
                Some(&w.merchant.key),
                Some(body),
            )
            .await;
        let problem = reply.expect_problem(400, &format!("{TP_PROBLEMS}invalid-request"));
        assert!(
            problem["detail"].as_str().unwrap().contains(needle),
            "{problem}"
        );
    }
    let again = w
        .server
        .get("/v1/rails/evm", &w.merchant.key)
        .await
        .expect_status(200)
        .json();
    assert_eq!(again["version"], 1, "nothing changed");
    // Another tenant sees nothing of it.
    let other = w.server.create_tenant("other").await;
    w.server
        .get("/v1/rails/evm", &other.key)
        .await
        .expect_status(404);
    // Low gas: the hot wallet drained below the floor, evm is no longer offered.
    let high_floor = json!({
        "chainId": w.anvil.chain_id(), "rpcUrl": w.anvil.rpc_url(), "recipient": w.recipient,
        "tokens": [{"currency": "usdc", "address": w.token, "decimals": 6, "name": NAME, "version": VERSION}],
        "minGasWei": "1000000000000000000000000",
    });
    w.server
        .call(
            reqwest::Method::PUT,
            "/v1/rails/evm",
            Some(&w.merchant.key),
            Some(high_floor),
        )
        .await
        .expect_status(200);
    let reply = w
        .server
        .post(
            "/v1/challenges",
            &w.merchant.key,
            json!({"method": "GET", "path": PATH}),
        )
        .await;
    reply.expect_problem(503, &format!("{TP_PROBLEMS}unavailable"));
    let metrics = w.server.metrics().await;
    assert!(
        metrics.contains("turnpike_evm_hot_wallet_low{") && metrics.contains("} 1"),
        "{metrics}"
    );
}
