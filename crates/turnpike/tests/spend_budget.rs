//! Budgets that hold under concurrency, black-box: the real `turnpike serve` over real HTTP on
//! SQLite and PostgreSQL. 200 parallel `/v1/agent/pay` calls against a budget that covers
//! exactly 37 payments issue exactly 37 credentials, and the audit log says so; also with the
//! calls split between two `turnpike serve` processes on one database (two replicas: on
//! PostgreSQL the spend guard locks the agent's row, on SQLite every ledger batch takes the
//! file's write lock, `BEGIN IMMEDIATE`, which a second process sharing the file waits for).

// The test bodies are plain `async fn`s that macro-generated `#[tokio::test]`s call, which
// clippy's `allow-unwrap-in-tests` does not recognise as tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::{Value, json};
use support::{Options, Server, TP_PROBLEMS, Tenant, decision_header};
use turnpike_store::on_both_databases;
use turnpike_store::testing::TestDb;

on_both_databases!(
    two_hundred_concurrent_payments_against_a_budget_of_37_issue_exactly_37,
    a_budget_holds_across_two_replicas_on_one_database,
);

const PRICE: u128 = 10;
const CALLS: usize = 200;
const COVERED: usize = 37;

async fn two_hundred_concurrent_payments_against_a_budget_of_37_issue_exactly_37(db: &TestDb) {
    let server = Server::start(db).await;
    let merchant = server.create_tenant("shop").await;
    server
        .price(&merchant, "GET", "/item/{n}", PRICE, None)
        .await;
    // The balance covers every call: only the budget may stop them.
    let payer = server.payer("buyer", 1_000_000).await;
    let budget = (PRICE * COVERED as u128).to_string();
    let policy = server
        .call(
            reqwest::Method::PUT,
            &format!("/v1/agents/{}/policy", payer.agent_id),
            Some(&payer.tenant.key),
            Some(json!({"budgets": [{"amount": budget, "currency": "usd", "period": "day"}]})),
        )
        .await
        .expect_status(200)
        .json();
    assert_eq!(policy["version"], 1);

    let mut challenges = Vec::with_capacity(CALLS);
    for n in 0..CALLS {
        let decision = server
            .challenge(&merchant, "GET", &format!("/item/{n}"))
            .await;
        challenges.push(decision_header(&decision, "www-authenticate"));
    }
    let mut tasks = Vec::with_capacity(CALLS);
    for www in challenges {
        let http = server.http.clone();
        let url = format!("{}/v1/agent/pay", server.url);
        let token = payer.token.clone();
        tasks.push(tokio::spawn(async move {
            let reply = http
                .post(url)
                .bearer_auth(token)
                .json(&json!({"challenges": www}))
                .send()
                .await
                .unwrap();
            let status = reply.status().as_u16();
            (status, reply.json::<Value>().await.unwrap())
        }));
    }
    let mut paid = 0;
    let mut exhausted = 0;
    for task in tasks {
        let (status, body) = task.await.unwrap();
        match status {
            200 => {
                assert!(
                    body["authorization"]
                        .as_str()
                        .unwrap()
                        .starts_with("Payment ")
                );
                paid += 1;
            }
            403 => {
                assert_eq!(
                    body["type"],
                    format!("{TP_PROBLEMS}policy-denied"),
                    "{body}"
                );
                assert_eq!(body["reason"], "budget_exhausted", "{body}");
                assert!(body["retryAt"].is_string(), "{body}");
                exhausted += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!((paid, exhausted), (COVERED, CALLS - COVERED));

    // The ledger reserved exactly the budget.
    let balance = server.balance(&payer.tenant, "payer_balance").await;
    assert_eq!(balance.debits_pending, PRICE * COVERED as u128);

    // The audit log holds every decision.
    let audit = |outcome: &'static str| {
        let server = &server;
        let key = payer.tenant.key.clone();
        async move {
            server
                .get(&format!("/v1/audit?outcome={outcome}&limit=1000"), &key)
                .await
                .expect_status(200)
                .json()["data"]
                .as_array()
                .unwrap()
                .clone()
        }
    };
    let allows = audit("allow").await;
    let denials = audit("deny").await;
    assert_eq!(allows.len(), COVERED);
    assert_eq!(denials.len(), CALLS - COVERED);
    assert!(
        denials
            .iter()
            .all(|d| d["reason"] == "budget_exhausted" && d["policyVersion"] == 1)
    );
    server.assert_ledger_consistent().await;
}

/// The price in the two-replica race: its 2.5% fee (10) is not rounded away.
const REPLICA_PRICE: u128 = 400;
/// The payer's credit in the two-replica race: it covers every call.
const REPLICA_CREDIT: u128 = 1_000_000;

/// Send every challenge's `/v1/agent/pay` at once, call `n` through `replicas[n / 2 % len]`:
/// the credentials issued, each with its call's index, and the count of budget denials.
async fn pay_all(
    replicas: &[&Server],
    token: &str,
    challenges: Vec<Vec<String>>,
) -> (Vec<(usize, String)>, usize) {
    let mut tasks = Vec::with_capacity(challenges.len());
    for (n, www) in challenges.into_iter().enumerate() {
        let server = replicas[n / 2 % replicas.len()];
        let (http, url) = (server.http.clone(), format!("{}/v1/agent/pay", server.url));
        let token = token.to_owned();
        tasks.push(tokio::spawn(async move {
            let reply = http
                .post(url)
                .bearer_auth(token)
                .json(&json!({"challenges": www}))
                .send()
                .await
                .unwrap();
            let status = reply.status().as_u16();
            (n, status, reply.json::<Value>().await.unwrap())
        }));
    }
    let (mut paid, mut exhausted) = (Vec::new(), 0);
    for task in tasks {
        let (n, status, body) = task.await.unwrap();
        match status {
            200 => {
                let authorization = body["authorization"].as_str().unwrap();
                assert!(authorization.starts_with("Payment "), "{body}");
                paid.push((n, authorization.to_owned()));
            }
            403 => {
                assert_eq!(
                    body["type"],
                    format!("{TP_PROBLEMS}policy-denied"),
                    "{body}"
                );
                assert_eq!(body["reason"], "budget_exhausted", "{body}");
                exhausted += 1;
            }
            other => panic!("call {n}: unexpected {other}: {body}"),
        }
    }
    (paid, exhausted)
}

/// Both replicas read the same books: the payer paid exactly `paid` payments of the price,
/// the merchant earned them less the fee, the platform the fee, to the unit.
async fn assert_books_on_each(replicas: &[&Server], merchant: &Tenant, payer: &Tenant, paid: u128) {
    let fee = REPLICA_PRICE * u128::from(support::FEE_BPS) / 10_000;
    assert_eq!(fee, 10);
    let signed = |v: u128| i128::try_from(v).unwrap();
    for server in replicas {
        let payer_balance = server.balance(payer, "payer_balance").await;
        assert_eq!(payer_balance.debits_pending, 0);
        assert_eq!(payer_balance.debits_posted, paid * REPLICA_PRICE);
        assert_eq!(
            server.signed_balance(payer, "payer_balance", "usd").await,
            signed(REPLICA_CREDIT - paid * REPLICA_PRICE)
        );
        let revenue = server.balance(merchant, "merchant_revenue").await;
        assert_eq!(revenue.credits_posted, paid * REPLICA_PRICE);
        assert_eq!(revenue.debits_posted, paid * fee);
        assert_eq!(
            server
                .signed_balance(merchant, "merchant_revenue", "usd")
                .await,
            signed(paid * (REPLICA_PRICE - fee))
        );
        assert_eq!(
            server.platform_balance("platform_fees", "usd").await,
            signed(paid * fee)
        );
    }
}

async fn a_budget_holds_across_two_replicas_on_one_database(db: &TestDb) {
    // Two processes on one database behind one public URL; each step below goes through one or
    // the other.
    let a = Server::start(db).await;
    let b = a.start_replica(db, Options::default()).await;
    let replicas = [&a, &b];
    let merchant = a.create_tenant("shop").await;
    b.price(&merchant, "GET", "/item/{n}", REPLICA_PRICE, None)
        .await;
    let payer = a.payer("buyer", REPLICA_CREDIT).await;
    let budget = (REPLICA_PRICE * COVERED as u128).to_string();
    b.call(
        reqwest::Method::PUT,
        &format!("/v1/agents/{}/policy", payer.agent_id),
        Some(&payer.tenant.key),
        Some(json!({"budgets": [{"amount": budget, "currency": "usd", "period": "day"}]})),
    )
    .await
    .expect_status(200);
    // Challenge `n` issued by replica `n % 2` and paid through replica `n / 2 % 2`: every
    // pairing, half the calls on each replica.
    let mut challenges = Vec::with_capacity(CALLS);
    for n in 0..CALLS {
        let decision = replicas[n % 2]
            .challenge(&merchant, "GET", &format!("/item/{n}"))
            .await;
        challenges.push(decision_header(&decision, "www-authenticate"));
    }
    let (paid, exhausted) = pay_all(&replicas, &payer.token, challenges).await;
    assert_eq!((paid.len(), exhausted), (COVERED, CALLS - COVERED));
    // Each credential is settled, by the replica that did not take its payment.
    for (n, authorization) in &paid {
        let reply = replicas[(n / 2 + 1) % 2]
            .verify(
                &merchant,
                json!(authorization),
                "GET",
                &format!("/item/{n}"),
                None,
            )
            .await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.json()["decision"], "paid", "{reply:?}");
    }
    assert_books_on_each(&replicas, &merchant, &payer.tenant, COVERED as u128).await;
    let audit = |outcome: &'static str| {
        let key = payer.tenant.key.clone();
        let b = &b;
        async move {
            b.get(&format!("/v1/audit?outcome={outcome}&limit=1000"), &key)
                .await
                .expect_status(200)
                .json()["data"]
                .as_array()
                .unwrap()
                .len()
        }
    };
    assert_eq!(audit("allow").await, COVERED);
    assert_eq!(audit("deny").await, CALLS - COVERED);
    a.assert_ledger_consistent().await;
}
