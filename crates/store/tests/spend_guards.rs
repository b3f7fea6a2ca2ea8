//! Spend guards without transfers on both databases: a payment made outside the ledger (an
//! organisation's on-chain wallet) still passes the agent's policy and counts against its
//! budgets, once per spend id, whether asked for again later or several times in one batch.

// The test bodies are plain `async fn`s that macro-generated `#[tokio::test]`s call, which
// clippy's `allow-unwrap-in-tests` does not recognise as tests.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use turnpike_ledger::{Engine, EngineConfig, TransferId};
use turnpike_policy::policy::{Budget, Period, Policy};
use turnpike_store::testing::TestDb;
use turnpike_store::{
    AgentRow, AgentTokenRow, ApiKeyRow, BindingSecretRow, GuardRefusal, LedgerGuard, SpendGuard,
    Store, StoreEngine, TenantRow, on_both_databases,
};

on_both_databases!(
    a_guard_without_transfers_records_a_spend_that_counts_against_the_budget,
    one_spend_asked_for_several_times_in_one_batch_counts_once,
);

const TENANT: &str = "ten_wallet";
const AGENT: &str = "agt_wallet";
const TOKEN: &str = "tok_wallet";
/// The rolling budget: one payment of `AMOUNT` fits, two do not.
const BUDGET: u128 = 100;
const AMOUNT: u128 = 60;

async fn setup(db: &TestDb, config: EngineConfig) -> (Store, StoreEngine) {
    let store = db.open().await;
    let now = now_ms();
    let tenant = TenantRow {
        id: TENANT.into(),
        name: "Wallet".into(),
        slug: "wallet".into(),
        realm: "wallet.example".into(),
        created_at: now,
    };
    let key = ApiKeyRow {
        id: "key_wallet".into(),
        tenant_id: TENANT.into(),
        name: "first".into(),
        prefix: "tp_sk_wa".into(),
        secret_hash: "00".repeat(32),
        created_at: now,
        revoked_at: None,
    };
    let secret = BindingSecretRow {
        version: 1,
        secret: "c2VjcmV0".into(),
        created_at: now,
    };
    store
        .create_tenant(&tenant, &key, &secret)
        .await
        .unwrap()
        .unwrap();
    store
        .insert_agent(&AgentRow {
            id: AGENT.into(),
            tenant_id: TENANT.into(),
            name: "bot".into(),
            policy_version: 0,
            created_at: now,
        })
        .await
        .unwrap();
    store
        .insert_agent_token(&AgentTokenRow {
            id: TOKEN.into(),
            agent_id: AGENT.into(),
            tenant_id: TENANT.into(),
            parent_id: None,
            lineage: TOKEN.into(),
            limits: None,
            expires_at: now + 3_600_000,
            created_at: now,
            revoked_at: None,
        })
        .await
        .unwrap();
    let engine = Engine::start(Arc::new(store.clone()), config);
    (store, engine)
}

/// An evm spend of `AMOUNT` usdc under a rolling budget of `BUDGET`.
fn spend(id: u128, challenge: &str) -> LedgerGuard {
    let policy = Policy {
        budgets: vec![Budget {
            amount: BUDGET.to_string(),
            currency: "usdc".into(),
            period: Period::Rolling,
            window_seconds: Some(3_600),
        }],
        ..Policy::default()
    };
    LedgerGuard::Spend(Box::new(SpendGuard {
        spend_id: TransferId(id),
        audit_id: format!("aud_{id}_{}", rand_suffix()),
        tenant_id: TENANT.into(),
        agent_id: AGENT.into(),
        token_id: TOKEN.into(),
        lineage: TOKEN.into(),
        chain: vec![None],
        policy_version: 0,
        policy: Arc::new(policy.compile().unwrap()),
        challenge_id: challenge.into(),
        merchant_id: "eip155:31337:0x70997970C51812dc3A010C7d01b50e0d17dc79C8".into(),
        merchant_realm: "shop.example".into(),
        method: "evm".into(),
        amount: AMOUNT,
        currency: "usdc".into(),
        approval_id: None,
        hold_id: format!("apr_{id}"),
    }))
}

fn now_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    i64::try_from(since.as_millis()).unwrap()
}

/// A unique suffix for audit ids (every guard writes one audit row).
fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The agent's unreleased spends.
async fn spends(store: &Store) -> Vec<String> {
    let now = now_ms();
    store
        .spends(AGENT, now - 3_600_000, now + 3_600_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|s| s.released_at.is_none())
        .map(|s| s.amount)
        .collect()
}

async fn a_guard_without_transfers_records_a_spend_that_counts_against_the_budget(db: &TestDb) {
    let (store, engine) = setup(db, EngineConfig::default()).await;
    engine.guard(spend(1, "ch_1")).await.unwrap().unwrap();
    assert_eq!(spends(&store).await, [AMOUNT.to_string()]);
    // A second payment would exceed the budget: refused, nothing recorded.
    match engine.guard(spend(2, "ch_2")).await.unwrap() {
        Err(GuardRefusal::Denied(d)) => assert_eq!(d.reason, "budget_exhausted", "{d:?}"),
        other => panic!("expected a budget denial, got {other:?}"),
    }
    // Asking again for the first: it passes and still counts once.
    engine.guard(spend(1, "ch_1")).await.unwrap().unwrap();
    assert_eq!(spends(&store).await, [AMOUNT.to_string()]);
    // No ledger transfer was written.
    assert!(store.transfer(TransferId(1)).await.unwrap().is_none());
}

async fn one_spend_asked_for_several_times_in_one_batch_counts_once(db: &TestDb) {
    // A long batch window: concurrent submissions share one transaction.
    let config = EngineConfig {
        batch_window: Duration::from_millis(300),
        ..EngineConfig::default()
    };
    let (store, engine) = setup(db, config).await;
    let engine = Arc::new(engine);
    let mut asks = Vec::new();
    for _ in 0..5 {
        let engine = Arc::clone(&engine);
        asks.push(tokio::spawn(
            async move { engine.guard(spend(7, "ch_7")).await },
        ));
    }
    for ask in asks {
        ask.await.unwrap().unwrap().unwrap();
    }
    assert_eq!(spends(&store).await, [AMOUNT.to_string()]);
}
