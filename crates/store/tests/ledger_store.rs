//! The store's behavioural suite: every test runs against SQLite and against PostgreSQL, through
//! the real posting `Engine` over the real `Store`.

// The test bodies are plain `async fn`s that macro-generated `#[tokio::test]`s call, which
// clippy's `allow-unwrap-in-tests` does not recognise as tests.
#![allow(clippy::unwrap_used)]

use turnpike_store::testing as common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::{Kind, TestDb};
use turnpike_ledger::{
    Account, AccountFlags, AccountId, AccountKind, Clock, Engine, EngineConfig, ManualClock,
    NewAccount, PendingState, TransferError, TransferId, TransferKind, TransferRequest,
    TransferResult,
};
use turnpike_store::{
    Cursor, Database, Phase, Store, StoreEngine, StoreError, Total, Violation, spawn_expiry_sweeper,
};

use turnpike_store::on_both_databases;

on_both_databases!(
    concurrent_spends_from_an_account_funded_for_600_post_exactly_600,
    same_transfer_id_submitted_concurrently_posts_once,
    pending_transfer_posted_in_full_moves_pending_to_posted,
    pending_transfer_voided_releases_its_reservation,
    pending_transfer_expires_at_its_timeout_by_expire_and_by_the_sweeper,
    partial_post_releases_the_remainder,
    failed_linked_batch_leaves_no_trace_of_its_first_transfer,
    failed_linked_batch_that_posts_a_pending_transfer_leaves_it_pending,
    account_creation_is_idempotent_and_other_fields_are_refused,
    transfer_with_same_id_and_other_fields_is_refused,
    account_history_pages_neither_overlap_nor_skip_under_concurrent_inserts,
    check_names_an_account_whose_balance_was_altered_by_hand,
    check_detects_a_deleted_transfer,
    two_replicas_on_one_database_never_overdraw_and_post_an_id_once,
    amounts_up_to_u128_max_are_stored_exactly,
    any_user_data_and_u64_timeout_round_trip,
    reopening_and_migrating_again_is_harmless,
);

const T0: i64 = 1_800_000_000_000;
const WORLD: AccountId = AccountId(1);
const PAYER: AccountId = AccountId(2);
const MERCHANT: AccountId = AccountId(3);

struct Ledger {
    store: Store,
    engine: StoreEngine,
    clock: Arc<ManualClock>,
}

fn new_account(id: AccountId, kind: AccountKind, flags: AccountFlags) -> NewAccount {
    NewAccount {
        id,
        tenant: "t1".into(),
        owner: "owner".into(),
        kind,
        currency: "usd".into(),
        flags,
    }
}

fn no_overdraft() -> AccountFlags {
    AccountFlags {
        debits_must_not_exceed_credits: true,
        ..AccountFlags::default()
    }
}

fn start_engine(store: &Store, clock: Arc<ManualClock>) -> StoreEngine {
    Engine::start(
        Arc::new(store.clone()),
        EngineConfig {
            clock,
            ..EngineConfig::default()
        },
    )
}

/// A store with a world account (1, no limits), a payer (2, no overdraft) and a merchant (3).
async fn ledger(db: &TestDb) -> Ledger {
    let store = db.open().await;
    let expected = match db.kind {
        Kind::Sqlite => Database::Sqlite,
        Kind::Postgres => Database::Postgres,
    };
    assert_eq!(store.database(), expected);
    for account in [
        new_account(WORLD, AccountKind::External, AccountFlags::default()),
        new_account(PAYER, AccountKind::PayerBalance, no_overdraft()),
        new_account(
            MERCHANT,
            AccountKind::MerchantRevenue,
            AccountFlags::default(),
        ),
    ] {
        store.create_account(account, T0).await.unwrap().unwrap();
    }
    let clock = Arc::new(ManualClock::new(T0));
    let engine = start_engine(&store, clock.clone());
    Ledger {
        store,
        engine,
        clock,
    }
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

fn pending(id: u128, amount: u128, timeout_ms: u64) -> TransferRequest {
    TransferRequest::Transfer {
        id: TransferId(id),
        debit_account_id: PAYER,
        credit_account_id: MERCHANT,
        amount,
        currency: "usd".into(),
        timeout_ms: Some(timeout_ms),
        code: 7,
        user_data: Some("reservation".into()),
    }
}

async fn submit(l: &Ledger, request: TransferRequest) -> TransferResult {
    l.engine.transfer(request).await.expect("engine")
}

async fn fund(l: &Ledger, amount: u128) {
    let posted = submit(l, transfer(1_000_000, WORLD, PAYER, amount))
        .await
        .unwrap();
    assert!(posted.created);
}

async fn account(l: &Ledger, id: AccountId) -> Account {
    l.store
        .account(None, id)
        .await
        .unwrap()
        .expect("account exists")
}

/// (debits_pending, debits_posted, credits_pending, credits_posted)
async fn totals(l: &Ledger, id: AccountId) -> (u128, u128, u128, u128) {
    let a = account(l, id).await;
    (
        a.debits_pending,
        a.debits_posted,
        a.credits_pending,
        a.credits_posted,
    )
}

async fn assert_check_ok(store: &Store) -> turnpike_store::CheckReport {
    let report = store.check().await.unwrap();
    assert!(report.is_ok(), "ledger check failed:\n{report}");
    report
}

async fn concurrent_spends_from_an_account_funded_for_600_post_exactly_600(db: &TestDb) {
    let l = ledger(db).await;
    fund(&l, 600).await;
    let mut tasks = Vec::new();
    for task in 0..50u128 {
        let engine = l.engine.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut refused) = (0u32, 0u32);
            for i in 0..20u128 {
                match engine
                    .transfer(transfer(10_000 + task * 100 + i, PAYER, MERCHANT, 1))
                    .await
                    .expect("engine")
                {
                    Ok(posted) => {
                        assert!(posted.created);
                        ok += 1;
                    }
                    Err(TransferError::ExceedsCredits) => refused += 1,
                    Err(other) => panic!("unexpected refusal: {other}"),
                }
            }
            (ok, refused)
        }));
    }
    let (mut ok, mut refused) = (0, 0);
    for task in tasks {
        let (o, r) = task.await.unwrap();
        ok += o;
        refused += r;
    }
    assert_eq!((ok, refused), (600, 400));
    assert_eq!(totals(&l, PAYER).await, (0, 600, 0, 600));
    assert_eq!(totals(&l, MERCHANT).await, (0, 0, 0, 600));
    assert_eq!(totals(&l, WORLD).await, (0, 600, 0, 0));
    let report = assert_check_ok(&l.store).await;
    assert_eq!(report.accounts_checked, 3);
    assert_eq!(report.transfers_checked, 601);
    assert_eq!(report.currencies_checked, 1);
}

async fn same_transfer_id_submitted_concurrently_posts_once(db: &TestDb) {
    let l = ledger(db).await;
    fund(&l, 100).await;
    let barrier = Arc::new(tokio::sync::Barrier::new(20));
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let engine = l.engine.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            engine
                .transfer(transfer(77, PAYER, MERCHANT, 5))
                .await
                .expect("engine")
                .expect("transfer")
        }));
    }
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    assert_eq!(results.iter().filter(|p| p.created).count(), 1);
    assert_eq!(results.iter().filter(|p| !p.created).count(), 19);
    assert!(results.iter().all(|p| p.transfer == results[0].transfer));
    assert_eq!(totals(&l, MERCHANT).await, (0, 0, 0, 5));
    let history = l.store.account_history(MERCHANT, None, 100).await.unwrap();
    let ids: Vec<_> = history.transfers.iter().map(|t| t.id).collect();
    assert_eq!(ids, vec![TransferId(77)], "one row");
    assert_check_ok(&l.store).await;
}

async fn pending_transfer_posted_in_full_moves_pending_to_posted(db: &TestDb) {
    let l = ledger(db).await;
    fund(&l, 100).await;
    let reserved = submit(&l, pending(10, 80, 60_000)).await.unwrap();
    assert_eq!(reserved.transfer.kind, TransferKind::Pending);
    assert_eq!(reserved.transfer.expires_at_ms, Some(T0 + 60_000));
    assert_eq!(totals(&l, PAYER).await, (80, 0, 0, 100));
    assert_eq!(totals(&l, MERCHANT).await, (0, 0, 80, 0));
    assert_eq!(account(&l, PAYER).await.credit_balance_available(), 20);
    assert_eq!(
        l.store.pending_state(TransferId(10)).await.unwrap(),
        Some(PendingState::Pending)
    );
    assert_check_ok(&l.store).await;

    let post = TransferRequest::Post {
        id: TransferId(11),
        pending_id: TransferId(10),
        amount: None,
    };
    let posted = submit(&l, post).await.unwrap();
    assert_eq!(
        (posted.transfer.kind, posted.transfer.amount),
        (TransferKind::PostPending, 80)
    );
    assert_eq!(totals(&l, PAYER).await, (0, 80, 0, 100));
    assert_eq!(totals(&l, MERCHANT).await, (0, 0, 0, 80));
    assert_eq!(
        l.store.pending_state(TransferId(10)).await.unwrap(),
        Some(PendingState::Posted)
    );
    let again = TransferRequest::Post {
        id: TransferId(12),
        pending_id: TransferId(10),
        amount: None,
    };
    assert_eq!(
        submit(&l, again).await,
        Err(TransferError::PendingAlreadyPosted)
    );
    assert_check_ok(&l.store).await;
}

async fn pending_transfer_voided_releases_its_reservation(db: &TestDb) {
    let l = ledger(db).await;
    fund(&l, 100).await;
    submit(&l, pending(20, 50, 60_000)).await.unwrap();
    let void = TransferRequest::Void {
        id: TransferId(21),
        pending_id: TransferId(20),
    };
    let voided = submit(&l, void.clone()).await.unwrap();
    assert_eq!(
        (voided.transfer.kind, voided.transfer.amount),
        (TransferKind::VoidPending, 50)
    );
    assert_eq!(totals(&l, PAYER).await, (0, 0, 0, 100));
    assert_eq!(totals(&l, MERCHANT).await, (0, 0, 0, 0));
    assert_eq!(
        l.store.pending_state(TransferId(20)).await.unwrap(),
        Some(PendingState::Voided)
    );
    // The void is idempotent; a post after it is refused.
    assert!(!submit(&l, void).await.unwrap().created);
    let post = TransferRequest::Post {
        id: TransferId(22),
        pending_id: TransferId(20),
        amount: None,
    };
    assert_eq!(
        submit(&l, post).await,
        Err(TransferError::PendingAlreadyVoided)
    );
    assert_check_ok(&l.store).await;
}

async fn pending_transfer_expires_at_its_timeout_by_expire_and_by_the_sweeper(db: &TestDb) {
    let l = ledger(db).await;
    fund(&l, 100).await;
    submit(&l, pending(30, 70, 1_000)).await.unwrap();
    submit(&l, pending(40, 20, 5_000)).await.unwrap();
    assert_eq!(
        l.store.due_pending(l.engine.now_ms(), 10).await.unwrap(),
        vec![]
    );
    assert_eq!(
        l.engine.expire(vec![TransferId(30)]).await.unwrap(),
        vec![],
        "not due yet"
    );

    l.clock.advance(Duration::from_millis(1_000));
    assert_eq!(
        l.store.due_pending(l.engine.now_ms(), 10).await.unwrap(),
        vec![TransferId(30)]
    );
    let late_post = TransferRequest::Post {
        id: TransferId(31),
        pending_id: TransferId(30),
        amount: None,
    };
    assert_eq!(
        submit(&l, late_post).await,
        Err(TransferError::PendingExpired)
    );
    assert_eq!(
        l.engine.expire(vec![TransferId(30)]).await.unwrap(),
        vec![TransferId(30)]
    );
    assert_eq!(
        l.engine.expire(vec![TransferId(30)]).await.unwrap(),
        vec![],
        "expires once"
    );
    assert_eq!(
        l.store.pending_state(TransferId(30)).await.unwrap(),
        Some(PendingState::Expired)
    );
    assert_eq!(totals(&l, PAYER).await, (20, 0, 0, 100));
    assert_check_ok(&l.store).await;

    // The sweeper expires the second one once the (manual) clock passes its expiry.
    let sweeper = spawn_expiry_sweeper(
        l.store.clone(),
        l.engine.clone(),
        Duration::from_millis(5),
        100,
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        l.store.pending_state(TransferId(40)).await.unwrap(),
        Some(PendingState::Pending),
        "the sweeper leaves what is not due"
    );
    l.clock.advance(Duration::from_millis(4_000));
    let mut state = None;
    for _ in 0..1_000 {
        state = l.store.pending_state(TransferId(40)).await.unwrap();
        if state == Some(PendingState::Expired) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sweeper.abort();
    assert_eq!(state, Some(PendingState::Expired));
    assert_eq!(totals(&l, PAYER).await, (0, 0, 0, 100));
    assert_eq!(totals(&l, MERCHANT).await, (0, 0, 0, 0));
    assert!(
        l.store
            .due_pending(l.engine.now_ms(), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_check_ok(&l.store).await;
}

async fn partial_post_releases_the_remainder(db: &TestDb) {
    let l = ledger(db).await;
    fund(&l, 100).await;
    submit(&l, pending(50, 80, 60_000)).await.unwrap();
    let post = TransferRequest::Post {
        id: TransferId(51),
        pending_id: TransferId(50),
        amount: Some(30),
    };
    let posted = submit(&l, post).await.unwrap();
    assert_eq!(posted.transfer.amount, 30);
    assert_eq!(totals(&l, PAYER).await, (0, 30, 0, 100));
    assert_eq!(totals(&l, MERCHANT).await, (0, 0, 0, 30));
    assert_eq!(account(&l, PAYER).await.credit_balance_available(), 70);
    let void = TransferRequest::Void {
        id: TransferId(52),
        pending_id: TransferId(50),
    };
    assert_eq!(
        submit(&l, void).await,
        Err(TransferError::PendingAlreadyPosted)
    );
    assert_check_ok(&l.store).await;
}

async fn failed_linked_batch_leaves_no_trace_of_its_first_transfer(db: &TestDb) {
    let l = ledger(db).await;
    fund(&l, 100).await;
    let results = l
        .engine
        .linked(vec![
            transfer(60, PAYER, MERCHANT, 60),
            transfer(61, PAYER, MERCHANT, 60),
        ])
        .await
        .unwrap();
    assert_eq!(
        results,
        vec![
            Err(TransferError::LinkedEventFailed),
            Err(TransferError::ExceedsCredits)
        ]
    );
    assert_eq!(l.store.transfer(TransferId(60)).await.unwrap(), None);
    assert_eq!(l.store.transfer(TransferId(61)).await.unwrap(), None);
    assert_eq!(totals(&l, PAYER).await, (0, 0, 0, 100));
    assert_eq!(totals(&l, MERCHANT).await, (0, 0, 0, 0));
    let history = l.store.account_history(MERCHANT, None, 10).await.unwrap();
    assert!(history.transfers.is_empty());
    assert_check_ok(&l.store).await;
    // The first id was not consumed.
    assert!(
        submit(&l, transfer(60, PAYER, MERCHANT, 60))
            .await
            .unwrap()
            .created
    );
    assert_check_ok(&l.store).await;
}

async fn failed_linked_batch_that_posts_a_pending_transfer_leaves_it_pending(db: &TestDb) {
    let l = ledger(db).await;
    fund(&l, 100).await;
    submit(&l, pending(65, 40, 60_000)).await.unwrap();
    let post = TransferRequest::Post {
        id: TransferId(66),
        pending_id: TransferId(65),
        amount: None,
    };
    let results = l
        .engine
        .linked(vec![post.clone(), transfer(67, PAYER, MERCHANT, 61)])
        .await
        .unwrap();
    assert_eq!(
        results,
        vec![
            Err(TransferError::LinkedEventFailed),
            Err(TransferError::ExceedsCredits)
        ]
    );
    assert_eq!(
        l.store.pending_state(TransferId(65)).await.unwrap(),
        Some(PendingState::Pending)
    );
    assert_eq!(l.store.transfer(TransferId(66)).await.unwrap(), None);
    assert_eq!(totals(&l, PAYER).await, (40, 0, 0, 100));
    assert_check_ok(&l.store).await;
    assert!(submit(&l, post).await.unwrap().created);
    assert_eq!(totals(&l, PAYER).await, (0, 40, 0, 100));
    assert_check_ok(&l.store).await;
}

async fn account_creation_is_idempotent_and_other_fields_are_refused(db: &TestDb) {
    let l = ledger(db).await;
    let new = new_account(AccountId(9), AccountKind::Budget, no_overdraft());
    let first = l
        .store
        .create_account(new.clone(), T0 + 5)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.created_at_ms, T0 + 5);
    let again = l
        .store
        .create_account(new.clone(), T0 + 9)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again, first, "the original, unchanged");
    let other_owner = NewAccount {
        owner: "someone else".into(),
        ..new.clone()
    };
    assert_eq!(
        l.store.create_account(other_owner, T0).await.unwrap(),
        Err(TransferError::AccountExistsWithDifferentFields)
    );
    let other_flags = NewAccount {
        flags: AccountFlags::default(),
        ..new.clone()
    };
    assert_eq!(
        l.store.create_account(other_flags, T0).await.unwrap(),
        Err(TransferError::AccountExistsWithDifferentFields)
    );
    let bad_currency = NewAccount {
        id: AccountId(10),
        currency: "us d".into(),
        ..new.clone()
    };
    assert_eq!(
        l.store.create_account(bad_currency, T0).await.unwrap(),
        Err(TransferError::InvalidCurrency)
    );
    let zero = NewAccount {
        id: AccountId(0),
        ..new.clone()
    };
    assert_eq!(
        l.store.create_account(zero, T0).await.unwrap(),
        Err(TransferError::IdMustNotBeZero)
    );
    assert_eq!(
        l.store.account(Some("t1"), AccountId(9)).await.unwrap(),
        Some(first.clone())
    );
    assert_eq!(
        l.store.account(Some("t2"), AccountId(9)).await.unwrap(),
        None
    );
    assert_eq!(l.store.account(None, AccountId(10)).await.unwrap(), None);
    let found = l
        .store
        .accounts(&[AccountId(9), WORLD, AccountId(404), WORLD])
        .await
        .unwrap();
    let ids: Vec<_> = found.iter().map(|a| a.id).collect();
    assert_eq!(ids, vec![WORLD, AccountId(9)]);
    assert_check_ok(&l.store).await;
}

async fn transfer_with_same_id_and_other_fields_is_refused(db: &TestDb) {
    let l = ledger(db).await;
    fund(&l, 100).await;
    let first = submit(&l, transfer(7, PAYER, MERCHANT, 10)).await.unwrap();
    l.clock.advance(Duration::from_secs(5));
    let again = submit(&l, transfer(7, PAYER, MERCHANT, 10)).await.unwrap();
    assert!(first.created && !again.created);
    assert_eq!(again.transfer, first.transfer);
    assert_eq!(
        submit(&l, transfer(7, PAYER, MERCHANT, 11)).await,
        Err(TransferError::ExistsWithDifferentFields)
    );
    assert_eq!(
        submit(&l, transfer(7, WORLD, MERCHANT, 10)).await,
        Err(TransferError::ExistsWithDifferentFields)
    );
    assert_eq!(
        submit(&l, pending(7, 10, 1_000)).await,
        Err(TransferError::ExistsWithDifferentFields)
    );
    assert_eq!(totals(&l, MERCHANT).await, (0, 0, 0, 10));
    assert_check_ok(&l.store).await;
}

async fn account_history_pages_neither_overlap_nor_skip_under_concurrent_inserts(db: &TestDb) {
    let l = ledger(db).await;
    fund(&l, 10_000).await;
    // 25 transfers, three per millisecond, so that pages split timestamp ties.
    let mut original = Vec::new();
    for i in 0..25u128 {
        if i % 3 == 0 {
            l.clock.advance(Duration::from_millis(1));
        }
        let id = 500 + (i * 7919) % 101; // ids not in time order
        submit(&l, transfer(id, PAYER, MERCHANT, 1)).await.unwrap();
        original.push(TransferId(id));
    }
    let mut seen = Vec::new();
    let mut cursor = None;
    let mut extra = 9_000u128;
    let mut pages = 0;
    loop {
        let page = l.store.account_history(MERCHANT, cursor, 7).await.unwrap();
        pages += 1;
        assert!(page.transfers.len() <= 7);
        let keys: Vec<_> = page
            .transfers
            .iter()
            .map(|t| (t.timestamp_ms, t.id))
            .collect();
        assert!(keys.windows(2).all(|w| w[0] > w[1]), "newest first");
        if let (Some(last), Some(first)) = (seen.last(), keys.first()) {
            assert!(last > first, "pages continue strictly below the cursor");
        }
        seen.extend(keys);
        // Between pages: one newer transfer and one back-dated into the pages already read.
        submit(&l, transfer(extra, PAYER, MERCHANT, 1))
            .await
            .unwrap();
        let now = l.clock.now_ms();
        l.clock.set(T0 + 2);
        submit(&l, transfer(extra + 1, PAYER, MERCHANT, 1))
            .await
            .unwrap();
        l.clock.set(now);
        extra += 2;
        match page.next_cursor {
            Some(next) => {
                let text = next.to_string();
                cursor = Some(text.parse::<Cursor>().unwrap());
            }
            None => break,
        }
    }
    assert!(pages >= 4);
    let ids: Vec<_> = seen.iter().map(|(_, id)| *id).collect();
    let unique: HashSet<_> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "no transfer on two pages");
    for id in &original {
        assert!(unique.contains(id), "transfer {id} skipped");
    }
    let first_page = l.store.account_history(MERCHANT, None, 3).await.unwrap();
    assert!(
        first_page.transfers[0].id.0 >= 9_000,
        "new transfers come first"
    );

    // The payer's history merges its credit (the funding) with its debits.
    let mut all = Vec::new();
    let mut cursor = None;
    loop {
        let page = l.store.account_history(PAYER, cursor, 1_000).await.unwrap();
        all.extend(page.transfers);
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(all.len(), 1 + 25 + usize::try_from(extra - 9_000).unwrap());
    assert!(all.iter().any(|t| t.id == TransferId(1_000_000)));
    assert_eq!(
        "not a cursor".parse::<Cursor>(),
        Err(StoreError::InvalidCursor)
    );
    assert_check_ok(&l.store).await;
}

async fn check_names_an_account_whose_balance_was_altered_by_hand(db: &TestDb) {
    let l = ledger(db).await;
    fund(&l, 100).await;
    submit(&l, transfer(80, PAYER, MERCHANT, 40)).await.unwrap();
    assert_check_ok(&l.store).await;
    let merchant = format!("{MERCHANT}");
    let changed = db
        .exec_raw(&format!(
            "UPDATE ledger_accounts SET credits_posted = '999' WHERE id = '{merchant}'"
        ))
        .await;
    assert_eq!(changed, 1);
    let report = l.store.check().await.unwrap();
    assert!(!report.is_ok());
    assert!(
        report
            .violations
            .contains(&Violation::AccountTotalMismatch {
                account_id: MERCHANT,
                total: Total::CreditsPosted,
                stored: 999,
                recomputed: 40,
            }),
        "{report}"
    );
    assert!(
        report.violations.contains(&Violation::CurrencyUnbalanced {
            currency: "usd".into(),
            phase: Phase::Posted,
            debits: "140".into(),
            credits: "1099".into(),
        }),
        "{report}"
    );
    assert!(report.to_string().contains(&merchant), "{report}");
}

async fn check_detects_a_deleted_transfer(db: &TestDb) {
    let l = ledger(db).await;
    fund(&l, 100).await;
    submit(&l, transfer(81, PAYER, MERCHANT, 40)).await.unwrap();
    submit(&l, pending(82, 10, 60_000)).await.unwrap();
    assert_check_ok(&l.store).await;
    let deleted = db
        .exec_raw(&format!(
            "DELETE FROM ledger_transfers WHERE id = '{}'",
            TransferId(81)
        ))
        .await;
    assert_eq!(deleted, 1);
    let report = l.store.check().await.unwrap();
    assert!(
        report
            .violations
            .contains(&Violation::AccountTotalMismatch {
                account_id: PAYER,
                total: Total::DebitsPosted,
                stored: 40,
                recomputed: 0,
            }),
        "{report}"
    );
    assert!(
        report
            .violations
            .contains(&Violation::AccountTotalMismatch {
                account_id: MERCHANT,
                total: Total::CreditsPosted,
                stored: 40,
                recomputed: 0,
            }),
        "{report}"
    );
    assert_eq!(report.violations.len(), 2, "{report}");

    // A pending row without its transfer's state, and a state that disagrees.
    db.exec_raw(&format!(
        "UPDATE ledger_pending SET state = 'posted' WHERE transfer_id = '{}'",
        TransferId(82)
    ))
    .await;
    let report = l.store.check().await.unwrap();
    assert!(
        report
            .violations
            .contains(&Violation::PendingStateMismatch {
                transfer_id: TransferId(82),
                state: PendingState::Posted,
                resolved_by: None,
            }),
        "{report}"
    );
    assert!(
        report
            .violations
            .contains(&Violation::AccountTotalMismatch {
                account_id: PAYER,
                total: Total::DebitsPending,
                stored: 10,
                recomputed: 0,
            }),
        "{report}"
    );
}

async fn two_replicas_on_one_database_never_overdraw_and_post_an_id_once(db: &TestDb) {
    let l = ledger(db).await;
    fund(&l, 300).await;
    let replica_store = db.open().await;
    let replica = start_engine(&replica_store, Arc::new(ManualClock::new(T0)));
    let engines = [l.engine.clone(), replica];

    let mut tasks = Vec::new();
    // 40 submitters, half on each replica: 800 spends of 1 against a balance of 300.
    for task in 0..40u128 {
        let engine = engines[usize::try_from(task % 2).unwrap()].clone();
        tasks.push(tokio::spawn(async move {
            let mut ok = 0u32;
            for i in 0..20u128 {
                match engine
                    .transfer(transfer(100_000 + task * 100 + i, PAYER, MERCHANT, 1))
                    .await
                    .expect("engine")
                {
                    Ok(_) => ok += 1,
                    Err(TransferError::ExceedsCredits) => {}
                    Err(other) => panic!("unexpected refusal: {other}"),
                }
            }
            (ok, 0u32)
        }));
    }
    // 10 ids, each submitted 3 times to each replica at once.
    for id in 0..10u128 {
        for copy in 0..6 {
            let engine = engines[copy % 2].clone();
            tasks.push(tokio::spawn(async move {
                let posted = engine
                    .transfer(transfer(200_000 + id, WORLD, MERCHANT, 1_000))
                    .await
                    .expect("engine")
                    .expect("transfer");
                (0, u32::from(posted.created))
            }));
        }
    }
    let (mut spends, mut created) = (0, 0);
    for task in tasks {
        let (s, c) = task.await.unwrap();
        spends += s;
        created += c;
    }
    assert_eq!(spends, 300, "exactly the balance was spent");
    assert_eq!(created, 10, "each shared id created once");
    assert_eq!(totals(&l, PAYER).await, (0, 300, 0, 300));
    assert_eq!(totals(&l, MERCHANT).await, (0, 0, 0, 300 + 10 * 1_000));
    let report = assert_check_ok(&replica_store).await;
    assert_eq!(report.transfers_checked, 1 + 300 + 10);
    replica_store.close().await;
}

async fn amounts_up_to_u128_max_are_stored_exactly(db: &TestDb) {
    let l = ledger(db).await;
    let big = |id: u128| NewAccount {
        currency: "wei".into(),
        ..new_account(
            AccountId(id),
            AccountKind::RailClearing,
            AccountFlags::default(),
        )
    };
    l.store.create_account(big(100), T0).await.unwrap().unwrap();
    l.store.create_account(big(101), T0).await.unwrap().unwrap();
    let request = |id: u128, amount: u128| TransferRequest::Transfer {
        id: TransferId(id),
        debit_account_id: AccountId(100),
        credit_account_id: AccountId(101),
        amount,
        currency: "wei".into(),
        timeout_ms: None,
        code: 0,
        user_data: None,
    };
    let posted = submit(&l, request(90, u128::MAX - 1)).await.unwrap();
    assert_eq!(posted.transfer.amount, u128::MAX - 1);
    submit(&l, request(91, 1)).await.unwrap();
    assert_eq!(
        submit(&l, request(92, 1)).await,
        Err(TransferError::Overflow)
    );
    let receiver = account(&l, AccountId(101)).await;
    assert_eq!(receiver.credits_posted, u128::MAX);
    assert_eq!(
        l.store
            .transfer(TransferId(90))
            .await
            .unwrap()
            .unwrap()
            .amount,
        u128::MAX - 1
    );
    assert_check_ok(&l.store).await;
}

async fn any_user_data_and_u64_timeout_round_trip(db: &TestDb) {
    let l = ledger(db).await;
    fund(&l, 100).await;
    let user_data = "nul\0, quote' \"double\", back\\slash, ünïcödé, 🦀".to_owned();
    let request = TransferRequest::Transfer {
        id: TransferId(u128::MAX),
        debit_account_id: PAYER,
        credit_account_id: MERCHANT,
        amount: 3,
        currency: "usd".into(),
        timeout_ms: Some(u64::MAX),
        code: u16::MAX,
        user_data: Some(user_data.clone()),
    };
    let posted = submit(&l, request.clone()).await.unwrap();
    assert_eq!(posted.transfer.expires_at_ms, Some(i64::MAX));
    let stored = l
        .store
        .transfer(TransferId(u128::MAX))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored, posted.transfer);
    assert_eq!(stored.user_data.as_deref(), Some(user_data.as_str()));
    assert_eq!(stored.timeout_ms, Some(u64::MAX));
    assert_eq!(stored.code, u16::MAX);
    // The stored form matches the request again (an idempotent retry).
    assert!(!submit(&l, request).await.unwrap().created);
    assert_check_ok(&l.store).await;
}

async fn reopening_and_migrating_again_is_harmless(db: &TestDb) {
    let l = ledger(db).await;
    fund(&l, 100).await;
    l.store.migrate().await.unwrap();
    let reopened = db.open().await;
    reopened.migrate().await.unwrap();
    assert_eq!(
        reopened
            .account(None, PAYER)
            .await
            .unwrap()
            .unwrap()
            .credits_posted,
        100
    );
    assert_check_ok(&reopened).await;
    reopened.close().await;
}

#[tokio::test]
async fn connect_refuses_urls_of_other_databases() {
    assert_eq!(
        Store::connect("mysql://localhost/x").await.unwrap_err(),
        StoreError::UnsupportedUrl
    );
}
