//! Guarded ledger commands on both databases: a payment row and the transfers it pays commit
//! together or not at all, and a challenge or proof pays once, within a batch, across batches
//! and under concurrent submission.

// The test bodies are plain `async fn`s that macro-generated `#[tokio::test]`s call, which
// clippy's `allow-unwrap-in-tests` does not recognise as tests.
#![allow(clippy::unwrap_used)]

use turnpike_store::testing as common;

use std::sync::Arc;

use common::TestDb;
use turnpike_ledger::{
    AccountFlags, AccountId, AccountKind, Engine, EngineConfig, NewAccount, TransferError,
    TransferId, TransferRequest,
};
use turnpike_store::{
    ApiKeyRow, BindingSecretRow, DepositRow, GuardRefusal, LedgerGuard, PaymentRow, RefundDueGuard,
    SettleGuard, Store, StoreEngine, TenantRow,
};

use turnpike_store::on_both_databases;

on_both_databases!(
    guarded_payment_commits_its_row_with_its_transfer,
    second_payment_of_a_challenge_or_a_proof_is_refused_and_moves_nothing,
    failed_transfer_leaves_no_payment_row_and_frees_the_challenge,
    concurrent_payments_of_one_challenge_settle_once,
    a_deposit_log_is_credited_once_across_replicas_and_a_failed_credit_leaves_no_row,
    a_rail_payment_is_reversed_once_into_refund_due_and_refunded_once,
);

const T0: i64 = 1_800_000_000_000;
const WORLD: AccountId = AccountId(1);
const PAYER: AccountId = AccountId(2);
const MERCHANT: AccountId = AccountId(3);
const TENANT: &str = "ten_guard";

async fn setup(db: &TestDb) -> (Store, StoreEngine) {
    let store = db.open().await;
    let tenant = TenantRow {
        id: TENANT.into(),
        name: "Guard".into(),
        slug: "guard".into(),
        realm: "guard.example".into(),
        created_at: T0,
    };
    let key = ApiKeyRow {
        id: "key_guard".into(),
        tenant_id: TENANT.into(),
        name: "first".into(),
        prefix: "tp_sk_gu".into(),
        secret_hash: "00".repeat(32),
        created_at: T0,
        revoked_at: None,
    };
    let secret = BindingSecretRow {
        version: 1,
        secret: "c2VjcmV0".into(),
        created_at: T0,
    };
    store
        .create_tenant(&tenant, &key, &secret)
        .await
        .unwrap()
        .unwrap();
    let no_overdraft = AccountFlags {
        debits_must_not_exceed_credits: true,
        ..AccountFlags::default()
    };
    for (id, kind, flags) in [
        (WORLD, AccountKind::External, AccountFlags::default()),
        (PAYER, AccountKind::PayerBalance, no_overdraft),
        (
            MERCHANT,
            AccountKind::MerchantRevenue,
            AccountFlags::default(),
        ),
    ] {
        let account = NewAccount {
            id,
            tenant: TENANT.into(),
            owner: "owner".into(),
            kind,
            currency: "usd".into(),
            flags,
        };
        store.create_account(account, T0).await.unwrap().unwrap();
    }
    let engine = Engine::start(Arc::new(store.clone()), EngineConfig::default());
    engine
        .transfer(transfer(1_000, WORLD, PAYER, 1_000))
        .await
        .unwrap()
        .unwrap();
    (store, engine)
}

fn transfer(id: u128, debit: AccountId, credit: AccountId, amount: u128) -> TransferRequest {
    TransferRequest::Transfer {
        id: TransferId(id),
        debit_account_id: debit,
        credit_account_id: credit,
        amount,
        currency: "usd".into(),
        timeout_ms: None,
        code: 1,
        user_data: None,
    }
}

fn payment(id: &str, challenge: &str, proof: &str) -> LedgerGuard {
    LedgerGuard::Payment(Box::new(PaymentRow {
        id: id.into(),
        tenant_id: TENANT.into(),
        challenge_id: challenge.into(),
        proof_key: proof.into(),
        state: "settled".into(),
        method: "turnpike".into(),
        amount: "10".into(),
        currency: "usd".into(),
        price_id: "price_1".into(),
        price_version: 1,
        payer_tenant_id: Some(TENANT.into()),
        reference: Some(id.into()),
        created_at: T0,
        updated_at: T0,
    }))
}

async fn balance(store: &Store, id: AccountId) -> (u128, u128) {
    let account = store.account(None, id).await.unwrap().unwrap();
    (account.debits_posted, account.credits_posted)
}

async fn guarded_payment_commits_its_row_with_its_transfer(db: &TestDb) {
    let (store, engine) = setup(db).await;
    let results = engine
        .guarded(
            payment("pay_1", "ch_1", "p:1"),
            vec![transfer(1, PAYER, MERCHANT, 10)],
        )
        .await
        .unwrap()
        .unwrap();
    assert!(results.iter().all(Result::is_ok));
    let row = store.payment(TENANT, "pay_1").await.unwrap().unwrap();
    assert_eq!(row.state, "settled");
    assert_eq!(balance(&store, MERCHANT).await, (0, 10));
    assert!(store.check().await.unwrap().is_ok());
}

async fn second_payment_of_a_challenge_or_a_proof_is_refused_and_moves_nothing(db: &TestDb) {
    let (store, engine) = setup(db).await;
    engine
        .guarded(
            payment("pay_1", "ch_1", "p:1"),
            vec![transfer(1, PAYER, MERCHANT, 10)],
        )
        .await
        .unwrap()
        .unwrap();
    // Same challenge, other proof; same proof, other challenge: both refused.
    for (id, challenge, proof, transfer_id) in
        [("pay_2", "ch_1", "p:2", 2), ("pay_3", "ch_3", "p:1", 3)]
    {
        let refused = engine
            .guarded(
                payment(id, challenge, proof),
                vec![transfer(transfer_id, PAYER, MERCHANT, 10)],
            )
            .await
            .unwrap();
        assert_eq!(refused, Err(GuardRefusal::PaymentTaken));
        assert!(store.payment(TENANT, id).await.unwrap().is_none());
        assert!(
            store
                .transfer(TransferId(transfer_id))
                .await
                .unwrap()
                .is_none()
        );
    }
    assert_eq!(balance(&store, MERCHANT).await, (0, 10));
    assert!(store.check().await.unwrap().is_ok());
}

async fn failed_transfer_leaves_no_payment_row_and_frees_the_challenge(db: &TestDb) {
    let (store, engine) = setup(db).await;
    // More than the payer holds: the transfer fails, so the row must not stay.
    let results = engine
        .guarded(
            payment("pay_1", "ch_1", "p:1"),
            vec![transfer(1, PAYER, MERCHANT, 5_000)],
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(results, vec![Err(TransferError::ExceedsCredits)]);
    assert!(store.payment(TENANT, "pay_1").await.unwrap().is_none());
    // The challenge and the proof were not used up: a payment that can be made goes through.
    let results = engine
        .guarded(
            payment("pay_2", "ch_1", "p:1"),
            vec![transfer(2, PAYER, MERCHANT, 10)],
        )
        .await
        .unwrap()
        .unwrap();
    assert!(results.iter().all(Result::is_ok));
    assert!(store.payment(TENANT, "pay_2").await.unwrap().is_some());
    assert_eq!(balance(&store, MERCHANT).await, (0, 10));
    assert!(store.check().await.unwrap().is_ok());
}

async fn concurrent_payments_of_one_challenge_settle_once(db: &TestDb) {
    let (store, engine) = setup(db).await;
    // Two engines on one database stand for two replicas; 20 submissions of one challenge.
    let other = Engine::start(Arc::new(store.clone()), EngineConfig::default());
    let mut tasks = Vec::new();
    for i in 0..20u128 {
        let engine = if i % 2 == 0 {
            engine.clone()
        } else {
            other.clone()
        };
        tasks.push(tokio::spawn(async move {
            engine
                .guarded(
                    payment(&format!("pay_{i}"), "ch_same", &format!("p:{i}")),
                    vec![transfer(100 + i, PAYER, MERCHANT, 10)],
                )
                .await
                .unwrap()
        }));
    }
    let mut paid = 0;
    let mut taken = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(results) if results.iter().all(Result::is_ok) => paid += 1,
            Err(GuardRefusal::PaymentTaken) => taken += 1,
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    assert_eq!((paid, taken), (1, 19));
    assert_eq!(balance(&store, MERCHANT).await, (0, 10));
    assert_eq!(
        store.payments(TENANT, None, None, 100).await.unwrap().len(),
        1
    );
    assert!(store.check().await.unwrap().is_ok());
}

fn deposit(log_index: i64, amount: u128) -> LedgerGuard {
    LedgerGuard::Deposit(Box::new(DepositRow {
        chain_id: 31337,
        tx_hash: format!("0x{}", "ab".repeat(32)),
        log_index,
        tenant_id: TENANT.into(),
        method: "evm".into(),
        block_number: 7,
        token: "0x0000000000000000000000000000000000000001".into(),
        sender: "0x0000000000000000000000000000000000000002".into(),
        address: "0x0000000000000000000000000000000000000003".into(),
        currency: "usd".into(),
        amount: amount.to_string(),
        transfer_id: (500 + log_index).to_string(),
        credited_at: T0,
    }))
}

async fn a_deposit_log_is_credited_once_across_replicas_and_a_failed_credit_leaves_no_row(
    db: &TestDb,
) {
    let (store, engine) = setup(db).await;
    let other = Engine::start(Arc::new(store.clone()), EngineConfig::default());
    // Twenty submissions of one log from two replicas: one credit.
    let mut tasks = Vec::new();
    for i in 0..20u128 {
        let engine = if i % 2 == 0 {
            engine.clone()
        } else {
            other.clone()
        };
        tasks.push(tokio::spawn(async move {
            engine
                .guarded(deposit(0, 25), vec![transfer(500, WORLD, PAYER, 25)])
                .await
                .unwrap()
        }));
    }
    let mut credited = 0;
    let mut refused = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(results) if results.iter().all(Result::is_ok) => credited += 1,
            Err(GuardRefusal::DepositCredited) => refused += 1,
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    assert_eq!((credited, refused), (1, 19));
    assert_eq!(balance(&store, PAYER).await, (0, 1_025));
    assert_eq!(store.deposits(TENANT, 100).await.unwrap().len(), 1);
    // A credit whose transfer fails (a payer balance cannot be debited below zero) leaves no
    // row, so the log is credited when it can be.
    let results = engine
        .guarded(deposit(1, 5_000), vec![transfer(501, PAYER, WORLD, 5_000)])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(results, vec![Err(TransferError::ExceedsCredits)]);
    assert_eq!(store.deposits(TENANT, 100).await.unwrap().len(), 1);
    let results = engine
        .guarded(deposit(1, 5), vec![transfer(502, WORLD, PAYER, 5)])
        .await
        .unwrap()
        .unwrap();
    assert!(results.iter().all(Result::is_ok));
    let listed = store.deposits(TENANT, 100).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!((listed[0].log_index, listed[0].amount.as_str()), (1, "5"));
    assert_eq!(balance(&store, PAYER).await, (0, 1_030));
    assert!(store.check().await.unwrap().is_ok());
}

fn refund_due(payment_id: &str, payer: &str) -> LedgerGuard {
    LedgerGuard::RefundDue(Box::new(RefundDueGuard {
        payment_id: payment_id.into(),
        payer_address: Some(payer.into()),
    }))
}

async fn a_rail_payment_is_reversed_once_into_refund_due_and_refunded_once(db: &TestDb) {
    let (store, engine) = setup(db).await;
    const PAYER_ADDRESS: &str = "0x00000000000000000000000000000000000000A1";
    // A payment claimed on an outside rail, then booked (WORLD stands for the rail clearing).
    let row = PaymentRow {
        id: "pay_rail".into(),
        tenant_id: TENANT.into(),
        challenge_id: "ch_rail".into(),
        proof_key: "evm:1:tx:0xaa".into(),
        state: "claimed".into(),
        method: "evm".into(),
        amount: "10".into(),
        currency: "usd".into(),
        price_id: "price_1".into(),
        price_version: 1,
        payer_tenant_id: None,
        reference: None,
        created_at: T0,
        updated_at: T0,
    };
    assert!(store.claim_payment(&row).await.unwrap());
    let settle = LedgerGuard::Settle(Box::new(SettleGuard {
        payment_id: "pay_rail".into(),
        reference: "0xaa".into(),
    }));
    let booked = engine
        .guarded(settle, vec![transfer(500, WORLD, MERCHANT, 10)])
        .await
        .unwrap()
        .unwrap();
    assert!(booked.iter().all(Result::is_ok));
    assert!(
        store
            .payments(TENANT, Some("refund_due"), None, 100)
            .await
            .unwrap()
            .is_empty()
    );

    // A reversal the ledger refuses leaves the payment settled, with no payer recorded.
    let refused = engine
        .guarded(
            refund_due("pay_rail", PAYER_ADDRESS),
            vec![transfer(501, PAYER, WORLD, 1_000_000)],
        )
        .await
        .unwrap()
        .unwrap();
    assert!(refused.iter().any(Result::is_err));
    let row = store.payment(TENANT, "pay_rail").await.unwrap().unwrap();
    assert_eq!(row.state, "settled");
    let refund = store
        .payment_refund(TENANT, "pay_rail")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(refund.payer_address, None);

    // Racing reversals (two replicas) with the same derived transfer: one applies.
    let other = Engine::start(Arc::new(store.clone()), EngineConfig::default());
    let mut tasks = Vec::new();
    for i in 0..10 {
        let engine = if i % 2 == 0 {
            engine.clone()
        } else {
            other.clone()
        };
        tasks.push(tokio::spawn(async move {
            engine
                .guarded(
                    refund_due("pay_rail", PAYER_ADDRESS),
                    vec![transfer(502, MERCHANT, WORLD, 10)],
                )
                .await
                .unwrap()
        }));
    }
    let mut reversed = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(results) if results.iter().all(Result::is_ok) => reversed += 1,
            Err(GuardRefusal::PaymentTaken) => {}
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    assert_eq!(reversed, 1);
    assert_eq!(balance(&store, MERCHANT).await, (10, 10));
    let row = store.payment(TENANT, "pay_rail").await.unwrap().unwrap();
    assert_eq!(row.state, "refund_due");
    let refund = store
        .payment_refund(TENANT, "pay_rail")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(refund.payer_address.as_deref(), Some(PAYER_ADDRESS));
    let due = store
        .payments(TENANT, Some("refund_due"), None, 100)
        .await
        .unwrap();
    assert_eq!(due.len(), 1);

    // A balance-method payment is never marked refund_due.
    let results = engine
        .guarded(
            payment("pay_t", "ch_t", "p:t"),
            vec![transfer(503, PAYER, MERCHANT, 10)],
        )
        .await
        .unwrap()
        .unwrap();
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(
        engine
            .guarded(
                refund_due("pay_t", PAYER_ADDRESS),
                vec![transfer(504, MERCHANT, PAYER, 10)]
            )
            .await
            .unwrap(),
        Err(GuardRefusal::PaymentTaken)
    );

    // The merchant records its refund once, and only its own.
    let hash = format!("0x{}", "cd".repeat(32));
    assert!(
        !store
            .record_refund("ten_other", "pay_rail", &hash, T0)
            .await
            .unwrap()
    );
    assert!(
        !store
            .record_refund(TENANT, "pay_t", &hash, T0)
            .await
            .unwrap()
    );
    assert!(
        store
            .record_refund(TENANT, "pay_rail", &hash, T0)
            .await
            .unwrap()
    );
    assert!(
        !store
            .record_refund(TENANT, "pay_rail", &hash, T0)
            .await
            .unwrap()
    );
    let refund = store
        .payment_refund(TENANT, "pay_rail")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(refund.refund_reference.as_deref(), Some(hash.as_str()));
    assert_eq!(
        store
            .payments(TENANT, Some("refunded"), None, 100)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(
        store
            .payments(TENANT, Some("refund_due"), None, 100)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.payments(TENANT, None, None, 100).await.unwrap().len(),
        2
    );
    assert!(store.check().await.unwrap().is_ok());
}
