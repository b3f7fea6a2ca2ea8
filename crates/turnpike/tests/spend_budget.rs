//! Budgets that hold under concurrency, black-box: the real `turnpike serve` over real HTTP on
//! SQLite and PostgreSQL. 200 parallel `/v1/agent/pay` calls against a budget that covers
//! exactly 37 payments issue exactly 37 credentials, and the audit log says so.

// The test bodies are plain `async fn`s that macro-generated `#[tokio::test]`s call, which
// clippy's `allow-unwrap-in-tests` does not recognise as tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::{Value, json};
use support::{Server, TP_PROBLEMS, decision_header};
use turnpike_store::on_both_databases;
use turnpike_store::testing::TestDb;

on_both_databases!(two_hundred_concurrent_payments_against_a_budget_of_37_issue_exactly_37);

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
