//! An in-memory [`LedgerBackend`]: the same load → apply → write cycle as the SQL backends,
//! over a mutex-guarded map. For unit tests of the rules and the engine; not durable.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::engine::{BackendError, LedgerBackend};
use crate::model::{
    Account, AccountId, NewAccount, PendingState, Transfer, TransferError, TransferId,
};
use crate::rules::{BatchKeys, Command, CommandResult, Snapshot, apply_batch};

/// Rows of an in-memory ledger.
#[derive(Debug, Default)]
pub struct MemoryLedger {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    accounts: HashMap<AccountId, Account>,
    transfers: HashMap<TransferId, Transfer>,
    pending: HashMap<TransferId, PendingState>,
}

impl MemoryLedger {
    /// Create an account; idempotent for the same fields.
    pub fn create_account(&self, new: NewAccount, now_ms: i64) -> Result<Account, TransferError> {
        let mut state = self.state.lock().expect("ledger mutex");
        if let Some(existing) = state.accounts.get(&new.id) {
            return if existing.matches(&new) {
                Ok(existing.clone())
            } else {
                Err(TransferError::AccountExistsWithDifferentFields)
            };
        }
        let account = Account::open(new, now_ms);
        state.accounts.insert(account.id, account.clone());
        Ok(account)
    }

    /// An account's current totals.
    pub fn account(&self, id: AccountId) -> Option<Account> {
        self.state
            .lock()
            .expect("ledger mutex")
            .accounts
            .get(&id)
            .cloned()
    }

    /// A pending transfer's state.
    pub fn pending_state(&self, id: TransferId) -> Option<PendingState> {
        self.state
            .lock()
            .expect("ledger mutex")
            .pending
            .get(&id)
            .copied()
    }

    /// Number of transfers recorded.
    pub fn transfer_count(&self) -> usize {
        self.state.lock().expect("ledger mutex").transfers.len()
    }
}

impl LedgerBackend for MemoryLedger {
    async fn execute(
        &self,
        commands: &[Command],
        now_ms: i64,
    ) -> Result<Vec<CommandResult>, BackendError> {
        let mut state = self
            .state
            .lock()
            .map_err(|_| BackendError::Storage("poisoned".into()))?;
        let keys = BatchKeys::of(commands);
        let mut snapshot = Snapshot::default();
        for id in &keys.transfer_ids {
            if let Some(t) = state.transfers.get(id) {
                snapshot.transfers.insert(*id, t.clone());
            }
        }
        for id in Snapshot::accounts_needed(&keys, &snapshot.transfers) {
            if let Some(a) = state.accounts.get(&id) {
                snapshot.accounts.insert(id, a.clone());
            }
        }
        for id in Snapshot::pending_ids_needed(&snapshot.transfers) {
            if let Some(p) = state.pending.get(&id) {
                snapshot.pending.insert(id, *p);
            }
        }
        let outcome = apply_batch(&mut snapshot, commands, &[], now_ms);
        for t in outcome.new_transfers {
            let previous = state.transfers.insert(t.id, t);
            assert!(previous.is_none(), "a transfer is written once");
        }
        for a in outcome.accounts {
            state.accounts.insert(a.id, a);
        }
        for (id, s, _) in outcome.new_pending {
            state.pending.insert(id, s);
        }
        for (id, s) in outcome.pending_updates {
            state.pending.insert(id, s);
        }
        Ok(outcome.results)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::engine::{Engine, EngineConfig, ManualClock};
    use crate::model::{AccountFlags, AccountKind, TransferKind, TransferRequest};

    const T0: i64 = 1_800_000_000_000;

    fn account(id: u128, flags: AccountFlags) -> NewAccount {
        NewAccount {
            id: AccountId(id),
            tenant: "t1".into(),
            owner: "o".into(),
            kind: AccountKind::PayerBalance,
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

    fn transfer(
        id: u128,
        debit: u128,
        credit: u128,
        amount: u128,
        timeout_ms: Option<u64>,
    ) -> TransferRequest {
        TransferRequest::Transfer {
            id: TransferId(id),
            debit_account_id: AccountId(debit),
            credit_account_id: AccountId(credit),
            amount,
            currency: "usd".into(),
            timeout_ms,
            code: 1,
            user_data: None,
        }
    }

    /// World (1, unlimited) funds payer (2, no overdraft) with `funds`; merchant is 3.
    fn setup() -> (Arc<MemoryLedger>, Engine, Arc<ManualClock>) {
        let ledger = Arc::new(MemoryLedger::default());
        ledger
            .create_account(account(1, AccountFlags::default()), T0)
            .unwrap();
        ledger
            .create_account(account(2, no_overdraft()), T0)
            .unwrap();
        ledger
            .create_account(account(3, AccountFlags::default()), T0)
            .unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let engine = Engine::start(
            ledger.clone(),
            EngineConfig {
                clock: clock.clone(),
                ..EngineConfig::default()
            },
        );
        (ledger, engine, clock)
    }

    async fn fund(engine: &Engine, funds: u128) {
        engine
            .transfer(transfer(1_000_000, 1, 2, funds, None))
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn overdraft_is_refused_with_exceeds_credits() {
        let (ledger, engine, _) = setup();
        fund(&engine, 100).await;
        assert!(
            engine
                .transfer(transfer(1, 2, 3, 60, None))
                .await
                .unwrap()
                .is_ok()
        );
        assert_eq!(
            engine.transfer(transfer(2, 2, 3, 41, None)).await.unwrap(),
            Err(TransferError::ExceedsCredits)
        );
        assert_eq!(
            ledger
                .account(AccountId(2))
                .unwrap()
                .credit_balance_posted(),
            40
        );
    }

    #[tokio::test]
    async fn same_id_same_fields_returns_the_original_and_different_fields_is_an_error() {
        let (ledger, engine, clock) = setup();
        fund(&engine, 100).await;
        let first = engine
            .transfer(transfer(7, 2, 3, 10, None))
            .await
            .unwrap()
            .unwrap();
        clock.advance(Duration::from_secs(5));
        let again = engine
            .transfer(transfer(7, 2, 3, 10, None))
            .await
            .unwrap()
            .unwrap();
        assert!(first.created && !again.created);
        assert_eq!(again.transfer, first.transfer);
        let other = engine.transfer(transfer(7, 2, 3, 11, None)).await.unwrap();
        assert_eq!(other, Err(TransferError::ExistsWithDifferentFields));
        assert_eq!(ledger.account(AccountId(3)).unwrap().credits_posted, 10);
    }

    #[tokio::test]
    async fn partial_post_releases_the_remainder() {
        let (ledger, engine, _) = setup();
        fund(&engine, 100).await;
        engine
            .transfer(transfer(10, 2, 3, 80, Some(60_000)))
            .await
            .unwrap()
            .unwrap();
        let payer = ledger.account(AccountId(2)).unwrap();
        assert_eq!(
            (payer.debits_pending, payer.credit_balance_available()),
            (80, 20)
        );
        let post = TransferRequest::Post {
            id: TransferId(11),
            pending_id: TransferId(10),
            amount: Some(30),
        };
        let posted = engine.transfer(post).await.unwrap().unwrap();
        assert_eq!(
            (posted.transfer.kind, posted.transfer.amount),
            (TransferKind::PostPending, 30)
        );
        let payer = ledger.account(AccountId(2)).unwrap();
        assert_eq!(
            (
                payer.debits_pending,
                payer.debits_posted,
                payer.credit_balance_available()
            ),
            (0, 30, 70)
        );
        let again = TransferRequest::Void {
            id: TransferId(12),
            pending_id: TransferId(10),
        };
        assert_eq!(
            engine.transfer(again).await.unwrap(),
            Err(TransferError::PendingAlreadyPosted)
        );
    }

    #[tokio::test]
    async fn void_releases_and_expiry_releases_after_the_timeout() {
        let (ledger, engine, clock) = setup();
        fund(&engine, 100).await;
        engine
            .transfer(transfer(20, 2, 3, 50, Some(1_000)))
            .await
            .unwrap()
            .unwrap();
        let void = TransferRequest::Void {
            id: TransferId(21),
            pending_id: TransferId(20),
        };
        assert_eq!(
            engine
                .transfer(void)
                .await
                .unwrap()
                .unwrap()
                .transfer
                .amount,
            50
        );
        assert_eq!(
            ledger.pending_state(TransferId(20)),
            Some(PendingState::Voided)
        );

        engine
            .transfer(transfer(30, 2, 3, 70, Some(1_000)))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            engine.expire(vec![TransferId(30)]).await.unwrap(),
            vec![],
            "not due yet"
        );
        clock.advance(Duration::from_millis(1_000));
        let late_post = TransferRequest::Post {
            id: TransferId(31),
            pending_id: TransferId(30),
            amount: None,
        };
        assert_eq!(
            engine.transfer(late_post).await.unwrap(),
            Err(TransferError::PendingExpired)
        );
        assert_eq!(
            engine.expire(vec![TransferId(30)]).await.unwrap(),
            vec![TransferId(30)]
        );
        let payer = ledger.account(AccountId(2)).unwrap();
        assert_eq!(
            (payer.debits_pending, payer.credit_balance_available()),
            (0, 100)
        );
    }

    #[tokio::test]
    async fn linked_batch_failure_leaves_no_trace() {
        let (ledger, engine, _) = setup();
        fund(&engine, 100).await;
        let before = ledger.transfer_count();
        let results = engine
            .linked(vec![
                transfer(40, 2, 3, 60, None),
                transfer(41, 2, 3, 60, None),
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
        assert_eq!(ledger.transfer_count(), before);
        assert_eq!(ledger.account(AccountId(3)).unwrap().credits_posted, 0);
        // The first id was not consumed: it can be used again.
        assert!(
            engine
                .transfer(transfer(40, 2, 3, 60, None))
                .await
                .unwrap()
                .is_ok()
        );
    }

    #[tokio::test]
    async fn failed_linked_batch_that_created_a_pending_transfer_leaves_no_pending_row() {
        let (ledger, engine, _) = setup();
        fund(&engine, 100).await;
        let results = engine
            .linked(vec![
                transfer(60, 2, 3, 5, Some(1_000)),
                transfer(61, 2, 3, 500, None),
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
        assert_eq!(ledger.pending_state(TransferId(60)), None);
        assert_eq!(ledger.account(AccountId(2)).unwrap().debits_pending, 0);
        // The engine is still alive.
        assert!(
            engine
                .transfer(transfer(62, 2, 3, 5, None))
                .await
                .unwrap()
                .is_ok()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_spends_never_overdraw() {
        let (ledger, engine, _) = setup();
        fund(&engine, 600).await;
        let mut tasks = Vec::new();
        for task in 0..50u128 {
            let engine = engine.clone();
            tasks.push(tokio::spawn(async move {
                let mut ok = 0;
                for i in 0..20u128 {
                    if engine
                        .transfer(transfer(10_000 + task * 100 + i, 2, 3, 1, None))
                        .await
                        .unwrap()
                        .is_ok()
                    {
                        ok += 1;
                    }
                }
                ok
            }));
        }
        let mut ok = 0;
        for t in tasks {
            ok += t.await.unwrap();
        }
        assert_eq!(ok, 600);
        assert_eq!(
            ledger
                .account(AccountId(2))
                .unwrap()
                .credit_balance_posted(),
            0
        );
    }

    #[tokio::test]
    async fn currency_and_account_checks_have_reasons() {
        let (_, engine, _) = setup();
        let mut eur = transfer(50, 1, 3, 5, None);
        if let TransferRequest::Transfer { currency, .. } = &mut eur {
            *currency = "eur".into();
        }
        assert_eq!(
            engine.transfer(eur).await.unwrap(),
            Err(TransferError::CurrencyMismatch)
        );
        assert_eq!(
            engine.transfer(transfer(51, 9, 3, 5, None)).await.unwrap(),
            Err(TransferError::DebitAccountNotFound)
        );
        assert_eq!(
            engine.transfer(transfer(52, 1, 1, 5, None)).await.unwrap(),
            Err(TransferError::AccountsMustBeDifferent)
        );
        assert_eq!(
            engine.transfer(transfer(53, 1, 3, 0, None)).await.unwrap(),
            Err(TransferError::AmountMustNotBeZero)
        );
    }
}
