//! Black-box tests of the payer side of the `evm` rail on a real chain (anvil, the project's
//! EIP-3009 stablecoin) and the real `turnpike` binary, on SQLite and on PostgreSQL: an
//! organisation keeps an EVM wallet (`/v1/wallets/evm`) and its agents answer `evm` challenges
//! through `/v1/agent/pay` and `turnpike pay` with authorizations the merchant settles on chain,
//! under the same spend policy as `turnpike` payments.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Stdio;

use alloy::primitives::{Address, U256};
use reqwest::Method;
use serde_json::{Value, json};
use support::chain::{self, Anvil};
use support::{Options, Server, TP_PROBLEMS, Tenant, Upstream, decision_header};
use turnpike_protocol::challenge::EncodedRequest;
use turnpike_protocol::{Challenge, Credential, Receipt};
use turnpike_store::on_both_databases;
use turnpike_store::testing::TestDb;

on_both_databases!(
    an_agent_pays_an_evm_gateway_route_from_its_organisations_wallet,
    evm_spends_obey_the_agents_policy_and_count_once,
    an_evm_payment_above_the_approval_threshold_is_signed_only_once_approved,
    the_first_payable_challenge_wins_and_the_others_say_why,
    the_wallet_api_keeps_the_key_secret_and_validates_input,
    a_server_without_a_secrets_key_keeps_no_wallet,
);

const NAME: &str = "Turnpike Test USD";
const VERSION: &str = "1";
const PRICE: u128 = 250_000; // 0.25 of a 6-decimal token
const PATH: &str = "/v1/data";
/// Anvil accounts: 1 the merchant's hot wallet, 2 its recipient, 3 the payer's wallet.
const HOT_WALLET: usize = 1;
const RECIPIENT: usize = 2;
const WALLET: usize = 3;

/// A chain with the token; merchant `shop` selling `GET /v1/data` for usdc over evm only
/// (behind the gateway); payer organisation `buyer` with an agent.
struct World {
    anvil: Anvil,
    server: Server,
    upstream: Upstream,
    merchant: Tenant,
    payer: Tenant,
    agent_id: String,
    token: Address,
    recipient: Address,
}

async fn world(db: &TestDb) -> World {
    let anvil = Anvil::start().await;
    let token = chain::deploy_stablecoin(&anvil, NAME, VERSION).await;
    chain::mint(&anvil, token, anvil.address(WALLET), 100 * PRICE).await;
    let server = Server::start(db).await;
    let upstream = Upstream::start().await;
    let merchant = server.create_tenant("shop").await;
    let recipient = anvil.address(RECIPIENT);
    server
        .call(
            Method::PUT,
            "/v1/rails/evm",
            Some(&merchant.key),
            Some(json!({
                "chainId": anvil.chain_id(),
                "rpcUrl": anvil.rpc_url(),
                "recipient": recipient.to_checksum(None),
                "tokens": [{"currency": "usdc", "address": token.to_checksum(None),
                            "decimals": 6, "name": NAME, "version": VERSION}],
                "hotWalletKey": anvil.private_key_hex(HOT_WALLET),
            })),
        )
        .await
        .expect_status(201);
    server
        .create_price(
            &merchant,
            json!({"route": {"method": "GET", "path": PATH}, "amount": PRICE.to_string(),
                   "currency": "usdc", "methods": ["evm"], "upstreamUrl": upstream.url}),
        )
        .await;
    let payer = server.create_tenant("buyer").await;
    let agent_id = server.create_agent(&payer, "buyer-bot").await;
    World {
        anvil,
        server,
        upstream,
        merchant,
        payer,
        agent_id,
        token,
        recipient,
    }
}

impl World {
    /// The wallet body importing anvil account `WALLET`.
    fn wallet_body(&self) -> Value {
        json!({
            "privateKey": self.anvil.private_key_hex(WALLET),
            "tokens": [{"chainId": self.anvil.chain_id(), "address": self.token.to_checksum(None),
                        "currency": "usdc", "name": NAME, "version": VERSION}],
        })
    }

    async fn put_wallet(&self, body: Value) -> support::Reply {
        self.server
            .call(
                Method::PUT,
                "/v1/wallets/evm",
                Some(&self.payer.key),
                Some(body),
            )
            .await
    }

    /// An agent token of the payer with `body` (`{}`: unlimited).
    async fn token(&self, body: Value) -> String {
        self.server
            .create_token(&self.payer, &self.agent_id, body)
            .await
            .1
    }

    async fn set_policy(&self, policy: Value) {
        self.server
            .call(
                Method::PUT,
                &format!("/v1/agents/{}/policy", self.agent_id),
                Some(&self.payer.key),
                Some(policy),
            )
            .await
            .expect_status(200);
    }

    /// A fresh `evm` challenge from the merchant API: its `WWW-Authenticate` values.
    async fn challenge(&self) -> Vec<String> {
        let decision = self.server.challenge(&self.merchant, "GET", PATH).await;
        decision_header(&decision, "www-authenticate")
    }

    async fn usdc(&self, who: Address) -> U256 {
        self.anvil.token_balance(self.token, who).await
    }

    /// The merchant's usdc revenue: (credits posted, debits posted).
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

    /// The payer's audit rows with `outcome`.
    async fn audit(&self, outcome: &str) -> Vec<Value> {
        self.server
            .get(&format!("/v1/audit?outcome={outcome}"), &self.payer.key)
            .await
            .expect_status(200)
            .json()["data"]
            .as_array()
            .unwrap()
            .clone()
    }
}

/// The decoded credential of an `authorization` value.
fn decoded(authorization: &str) -> Credential {
    Credential::parse(authorization).expect("a Payment credential")
}

async fn an_agent_pays_an_evm_gateway_route_from_its_organisations_wallet(db: &TestDb) {
    let w = world(db).await;
    let created = w.put_wallet(w.wallet_body()).await.expect_status(201);
    let wallet = w.anvil.address(WALLET);
    assert_eq!(created.json()["address"], wallet.to_checksum(None));
    let token = w.token(json!({})).await;
    let (wallet_before, recipient_before) = (w.usdc(wallet).await, w.usdc(w.recipient).await);

    // The gateway asks for payment; the agent has Turnpike answer with the wallet.
    let first = Server::read(w.server.gateway(Method::GET, "shop", PATH)).await;
    assert_eq!(first.status, 402, "{first:?}");
    let challenges = first.header_all("www-authenticate");
    let paid = w
        .server
        .pay(&token, &challenges)
        .await
        .expect_status(200)
        .json();
    assert_eq!(paid["method"], "evm", "{paid}");
    assert_eq!(paid["amount"], PRICE.to_string());
    assert_eq!(paid["currency"], "usdc");
    assert_eq!(paid["recipient"], w.recipient.to_checksum(None));
    assert_eq!(paid["from"], wallet.to_checksum(None));
    let authorization = paid["authorization"].as_str().unwrap();
    let credential = decoded(authorization);
    assert_eq!(credential.payload["type"], "authorization");
    assert_eq!(
        credential.payload["nonce"],
        chain::challenge_hash(&credential.challenge.id, &credential.challenge.realm).to_string()
    );
    assert_eq!(
        credential.source,
        Some(json!(format!(
            "did:pkh:eip155:{}:{}",
            w.anvil.chain_id(),
            wallet.to_checksum(None)
        )))
    );

    // The paid request goes through, with a receipt of the on-chain transfer.
    let second = Server::read(
        w.server
            .gateway(Method::GET, "shop", PATH)
            .header("authorization", authorization),
    )
    .await;
    assert_eq!(second.status, 200, "{second:?}");
    assert_eq!(w.upstream.hits(), 1);
    let receipt = Receipt::parse(&second.header("payment-receipt").expect("receipt")).unwrap();
    assert_eq!(receipt.method.as_deref(), Some("evm"));
    let mined = w
        .anvil
        .receipt(receipt.reference.parse().unwrap())
        .await
        .expect("mined");
    assert!(mined.status());
    let moved = chain::transfers(w.token, &mined);
    assert_eq!(moved.len(), 1);
    assert_eq!((moved[0].from, moved[0].to), (wallet, w.recipient));
    assert_eq!(moved[0].value, U256::from(PRICE));
    assert_eq!(w.usdc(wallet).await, wallet_before - U256::from(PRICE));
    assert_eq!(
        w.usdc(w.recipient).await,
        recipient_before + U256::from(PRICE)
    );
    let fee = PRICE * u128::from(support::FEE_BPS) / 10_000;
    assert_eq!(w.revenue().await, (PRICE, fee), "the merchant's ledger");

    // `turnpike pay` does the same in one command.
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_turnpike"));
    for var in [
        "TURNPIKE_AGENT_TOKEN",
        "TURNPIKE_API",
        "HTTP_PROXY",
        "http_proxy",
    ] {
        cmd.env_remove(var);
    }
    let out = cmd
        .args(["pay", &format!("{}/gw/shop{PATH}", w.server.url)])
        .args(["--token", &token, "--api", &w.server.url])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{}", support::describe(&out));
    assert!(
        stderr.contains(&format!(
            "paid {PRICE} usdc to {}",
            w.recipient.to_checksum(None)
        )),
        "{stderr}"
    );
    assert!(!stderr.contains(&token) && !stderr.contains("Payment "));
    assert_eq!(w.upstream.hits(), 2);
    assert_eq!(w.usdc(wallet).await, wallet_before - U256::from(2 * PRICE));
    assert_eq!(w.revenue().await, (2 * PRICE, 2 * fee));

    // The payer's audit log shows both evm spends.
    let allows = w.audit("allow").await;
    assert_eq!(allows.len(), 2, "{allows:?}");
    assert!(allows.iter().all(|a| a["method"] == "evm"
        && a["currency"] == "usdc"
        && a["amount"] == PRICE.to_string()));
    // The wallet key appears in no answer and no log line.
    let key_digits = &w.anvil.private_key_hex(WALLET)[2..];
    assert!(!w.server.log().contains(key_digits));
    w.server.assert_ledger_consistent().await;
}

async fn evm_spends_obey_the_agents_policy_and_count_once(db: &TestDb) {
    let w = world(db).await;
    w.put_wallet(w.wallet_body()).await.expect_status(201);
    let wallet = w.anvil.address(WALLET);

    // Over the token's per-payment cap: refused, nothing signed.
    let capped = w
        .token(json!({"maxPerPayment": {"amount": (PRICE - 1).to_string(), "currency": "usdc"}}))
        .await;
    let reply = w.server.pay(&capped, &w.challenge().await).await;
    let problem = reply.expect_problem(403, &format!("{TP_PROBLEMS}policy-denied"));
    assert_eq!(problem["reason"], "over_max_per_payment", "{problem}");
    assert!(problem.get("authorization").is_none());

    // A budget of two payments a day counts evm spends; asking twice counts once.
    w.set_policy(
        json!({"budgets": [{"amount": (2 * PRICE).to_string(), "currency": "usdc",
                                     "period": "day"}]}),
    )
    .await;
    let token = w.token(json!({})).await;
    let first = w.challenge().await;
    // Asked for several times at once, then again: one spend, the same authorization each time.
    let mut asks = Vec::new();
    for _ in 0..6 {
        let (http, url) = (
            w.server.http.clone(),
            format!("{}/v1/agent/pay", w.server.url),
        );
        let (token, first) = (token.clone(), first.clone());
        asks.push(tokio::spawn(async move {
            let reply = http
                .post(url)
                .bearer_auth(token)
                .json(&json!({"challenges": first}))
                .send()
                .await
                .unwrap();
            (
                reply.status().as_u16(),
                reply.json::<Value>().await.unwrap(),
            )
        }));
    }
    let mut answers = Vec::new();
    for ask in asks {
        let (status, answer) = ask.await.unwrap();
        assert_eq!(status, 200, "{answer}");
        answers.push(answer);
    }
    answers.push(w.server.pay(&token, &first).await.expect_status(200).json());
    let paid = answers[0].clone();
    for again in &answers {
        assert_eq!(
            again["authorization"], paid["authorization"],
            "the same authorization"
        );
        assert_eq!(again["spendId"], paid["spendId"]);
    }
    let second = w
        .server
        .pay(&token, &w.challenge().await)
        .await
        .expect_status(200)
        .json();
    let third = w.server.pay(&token, &w.challenge().await).await;
    let problem = third.expect_problem(403, &format!("{TP_PROBLEMS}policy-denied"));
    assert_eq!(problem["reason"], "budget_exhausted", "{problem}");

    // Both authorizations settle at the merchant: the wallet paid exactly the budget.
    let before = w.usdc(wallet).await;
    for answer in [&paid, &second] {
        let decision = w
            .server
            .verify(
                &w.merchant,
                answer["authorization"].clone(),
                "GET",
                PATH,
                None,
            )
            .await
            .expect_status(200)
            .json();
        assert_eq!(decision["decision"], "paid", "{decision}");
    }
    assert_eq!(w.usdc(wallet).await, before - U256::from(2 * PRICE));

    // A merchant not on the allow list is refused; its recipient account (CAIP-10) may be listed.
    w.set_policy(json!({"merchants": {"allow": ["elsewhere.example"]}}))
        .await;
    let reply = w.server.pay(&token, &w.challenge().await).await;
    let problem = reply.expect_problem(403, &format!("{TP_PROBLEMS}policy-denied"));
    assert_eq!(problem["reason"], "merchant_not_allowed", "{problem}");
    let account = format!(
        "eip155:{}:{}",
        w.anvil.chain_id(),
        w.recipient.to_checksum(None)
    );
    w.set_policy(json!({"merchants": {"allow": [account]}}))
        .await;
    w.server
        .pay(&token, &w.challenge().await)
        .await
        .expect_status(200);

    // The audit log: three denials.
    let denials = w.audit("deny").await;
    let mut reasons: Vec<&str> = denials
        .iter()
        .map(|d| d["reason"].as_str().unwrap())
        .collect();
    reasons.sort_unstable();
    assert_eq!(
        reasons,
        [
            "budget_exhausted",
            "merchant_not_allowed",
            "over_max_per_payment"
        ]
    );
    w.server.assert_ledger_consistent().await;
}

async fn an_evm_payment_above_the_approval_threshold_is_signed_only_once_approved(db: &TestDb) {
    let w = world(db).await;
    w.put_wallet(w.wallet_body()).await.expect_status(201);
    w.set_policy(
        json!({"approvalAbove": [{"amount": (PRICE - 1).to_string(), "currency": "usdc"}]}),
    )
    .await;
    let token = w.token(json!({})).await;
    let challenges = w.challenge().await;
    let reply = w.server.pay(&token, &challenges).await;
    let held = reply.expect_problem(202, &format!("{TP_PROBLEMS}approval-required"));
    assert!(held.get("authorization").is_none());
    let approval_id = held["approvalId"].as_str().unwrap().to_owned();
    let pending = w
        .server
        .get("/v1/approvals?state=pending", &w.payer.key)
        .await
        .expect_status(200)
        .json();
    let listed = &pending["data"][0];
    assert_eq!(listed["id"], approval_id.as_str(), "{pending}");
    assert_eq!(listed["method"], "evm");
    assert_eq!(listed["currency"], "usdc");
    assert_eq!(listed["amount"], PRICE.to_string());
    assert_eq!(
        listed["merchant"],
        format!(
            "eip155:{}:{}",
            w.anvil.chain_id(),
            w.recipient.to_checksum(None)
        )
    );
    let with_approval = json!({"challenges": challenges, "approvalId": approval_id});
    w.server
        .post("/v1/agent/pay", &token, with_approval.clone())
        .await
        .expect_problem(409, &format!("{TP_PROBLEMS}approval-invalid"));
    w.server
        .post(
            &format!("/v1/approvals/{approval_id}/approve"),
            &w.payer.key,
            json!({}),
        )
        .await
        .expect_status(200);
    let paid = w
        .server
        .post("/v1/agent/pay", &token, with_approval)
        .await
        .expect_status(200)
        .json();
    let decision = w
        .server
        .verify(
            &w.merchant,
            paid["authorization"].clone(),
            "GET",
            PATH,
            None,
        )
        .await
        .expect_status(200)
        .json();
    assert_eq!(decision["decision"], "paid", "{decision}");
}

async fn the_first_payable_challenge_wins_and_the_others_say_why(db: &TestDb) {
    let w = world(db).await;
    w.put_wallet(w.wallet_body()).await.expect_status(201);
    let token = w.token(json!({})).await;
    let real = w.challenge().await;
    let parsed = Challenge::parse(&real[0]).unwrap();
    // Variants of the offer the wallet cannot pay: another token, an expired challenge.
    let variant = |id: &str, edit: &dyn Fn(&mut Challenge, &mut serde_json::Map<String, Value>)| {
        let mut c = parsed.clone();
        let mut request = c.request_json().clone();
        edit(&mut c, &mut request);
        c.id = id.to_owned();
        c.request = EncodedRequest::from_json(request).unwrap();
        c.header = None;
        c.to_header_value().unwrap()
    };
    let other_token = variant("othertoken", &|_, r| {
        r["currency"] = json!(Address::repeat_byte(9).to_checksum(None));
    });
    let expired = variant("expired", &|c, _| {
        c.expires = Some("2020-01-01T00:00:00Z".into());
    });
    let paid = w
        .server
        .pay(
            &token,
            &[other_token.clone(), expired.clone(), real[0].clone()],
        )
        .await
        .expect_status(200)
        .json();
    assert_eq!(paid["challengeId"], parsed.id, "{paid}");
    let reply = w.server.pay(&token, &[other_token, expired]).await;
    let problem = reply.expect_problem(422, &format!("{TP_PROBLEMS}no-supported-challenge"));
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("pays no token") && detail.contains("expired"),
        "{detail}"
    );
    assert_eq!(w.audit("allow").await.len(), 1);
}

async fn the_wallet_api_keeps_the_key_secret_and_validates_input(db: &TestDb) {
    let w = world(db).await;
    let key_digits = w.anvil.private_key_hex(WALLET)[2..].to_owned();
    let token = w.token(json!({})).await;

    // No wallet yet: an evm-only challenge is not payable, and says why.
    let reply = w.server.pay(&token, &w.challenge().await).await;
    let problem = reply.expect_problem(422, &format!("{TP_PROBLEMS}no-supported-challenge"));
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("no evm wallet"),
        "{problem}"
    );
    w.server
        .get("/v1/wallets/evm", &w.payer.key)
        .await
        .expect_status(404);

    // Bad input: 400 naming the field, nothing stored, the key never echoed.
    let good = w.wallet_body();
    let with = |field: &str, value: Value| {
        let mut body = good.clone();
        body[field] = value;
        body
    };
    let token_with = |field: &str, value: Value| {
        let mut body = good.clone();
        body["tokens"][0][field] = value;
        body
    };
    let mut unknown = good.clone();
    unknown["colour"] = json!("blue");
    let mut unknown_in_token = good.clone();
    unknown_in_token["tokens"][0]["decimals"] = json!(6);
    for (body, needle) in [
        (with("privateKey", json!("0xnope")), "privateKey"),
        (
            with("privateKey", json!(format!("0x{}", "ab".repeat(31)))),
            "privateKey",
        ),
        (with("privateKey", json!(12)), "privateKey"),
        (with("generate", json!(true)), "not both"),
        (token_with("address", json!("0x12")), "tokens[0].address"),
        (token_with("currency", json!("USDC")), "tokens[0].currency"),
        (token_with("chainId", json!(0)), "tokens[0].chainId"),
        (with("tokens", json!([])), "tokens"),
        (unknown, "colour"),
        (unknown_in_token, "decimals"),
        (json!({"tokens": good["tokens"]}), "privateKey"),
        (json!([1]), "object"),
    ] {
        let reply = w.put_wallet(body).await;
        assert!(!reply.text().contains(&key_digits), "{reply:?}");
        let problem = reply.expect_problem(400, &format!("{TP_PROBLEMS}invalid-request"));
        assert!(
            problem["detail"].as_str().unwrap().contains(needle),
            "{needle}: {problem}"
        );
    }
    w.server
        .get("/v1/wallets/evm", &w.payer.key)
        .await
        .expect_status(404);

    // Import: the answer and every read show the address, never the key.
    let created = w.put_wallet(good.clone()).await.expect_status(201);
    assert!(!created.text().contains(&key_digits));
    let read = w
        .server
        .get("/v1/wallets/evm", &w.payer.key)
        .await
        .expect_status(200);
    assert!(!read.text().contains(&key_digits));
    let body = read.json();
    assert_eq!(body["address"], w.anvil.address(WALLET).to_checksum(None));
    assert_eq!(body["version"], 1);
    assert_eq!(body["tokens"][0]["currency"], "usdc");
    assert!(body.get("privateKey").is_none());
    // A bad update changes nothing.
    w.put_wallet(token_with("address", json!("nope")))
        .await
        .expect_status(400);
    let unchanged = w
        .server
        .get("/v1/wallets/evm", &w.payer.key)
        .await
        .expect_status(200)
        .json();
    assert_eq!(unchanged, body);

    // Another tenant sees none of it.
    let other = w.server.create_tenant("other").await;
    w.server
        .get("/v1/wallets/evm", &other.key)
        .await
        .expect_status(404);
    w.server
        .call(Method::DELETE, "/v1/wallets/evm", Some(&other.key), None)
        .await
        .expect_status(404);
    w.server
        .get("/v1/wallets/tempo", &w.payer.key)
        .await
        .expect_status(404);

    // Tokens only: the key is kept. Generate: a new key whose address is shown, never the key.
    let mut tokens_only = good.clone();
    tokens_only.as_object_mut().unwrap().remove("privateKey");
    let kept = w.put_wallet(tokens_only).await.expect_status(200).json();
    assert_eq!(kept["address"], body["address"]);
    assert_eq!(kept["version"], 2);
    let mut generate = good.clone();
    generate.as_object_mut().unwrap().remove("privateKey");
    generate["generate"] = json!(true);
    let generated = w.put_wallet(generate).await.expect_status(200);
    let generated_text = generated.text();
    let generated = generated.json();
    assert_ne!(generated["address"], body["address"]);
    assert_eq!(generated["version"], 3);
    assert!(!generated_text.contains("privateKey"));
    // The generated wallet signs (it holds no tokens, so the merchant would refuse it on chain).
    let paid = w
        .server
        .pay(&token, &w.challenge().await)
        .await
        .expect_status(200)
        .json();
    assert_eq!(paid["from"], generated["address"]);

    // Delete: gone, and evm challenges are not payable any more.
    w.server
        .call(Method::DELETE, "/v1/wallets/evm", Some(&w.payer.key), None)
        .await
        .expect_status(204);
    w.server
        .get("/v1/wallets/evm", &w.payer.key)
        .await
        .expect_status(404);
    w.server
        .pay(&token, &w.challenge().await)
        .await
        .expect_problem(422, &format!("{TP_PROBLEMS}no-supported-challenge"));
    assert!(!w.server.log().contains(&key_digits));
}

async fn a_server_without_a_secrets_key_keeps_no_wallet(db: &TestDb) {
    let server = Server::start_with(
        db,
        Options {
            secrets_key: false,
            ..Options::default()
        },
    )
    .await;
    let payer = server.create_tenant("buyer").await;
    let body = json!({
        "generate": true,
        "tokens": [{"chainId": 31337, "address": Address::repeat_byte(7).to_checksum(None),
                    "currency": "usdc", "name": NAME, "version": VERSION}],
    });
    server
        .call(Method::PUT, "/v1/wallets/evm", Some(&payer.key), Some(body))
        .await
        .expect_problem(409, &format!("{TP_PROBLEMS}secrets-key-missing"));
    server
        .get("/v1/wallets/evm", &payer.key)
        .await
        .expect_status(404);
}
