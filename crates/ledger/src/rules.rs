//! The ledger's rules as a pure function over an in-memory snapshot: a storage backend loads the
//! rows a batch needs ([`BatchKeys`]), the rules apply every command in order
//! ([`apply_batch`]), and the backend writes the outcome in the same database transaction.
//!
//! Each command succeeds or fails on its own; the transfers of one linked command succeed or
//! fail together. Invariants are asserted: a broken one stops the batch loudly rather than
//! letting it write bad data.

use std::collections::{BTreeSet, HashMap};

use crate::model::{
    Account, AccountId, PendingState, Posted, Transfer, TransferError, TransferId, TransferKind,
    TransferRequest, TransferResult, USER_DATA_LEN_MAX, is_valid_currency,
};

/// A condition a backend checks, and a record it writes, in the same transaction as a guarded
/// command's transfers: either the record and the transfers are both written, or neither
/// (e.g. a payment row whose challenge and proof may be used only once). The ledger only
/// carries guards; what they mean is the backend's.
pub trait Guard: std::fmt::Debug + Clone + Send + Sync + 'static {
    /// Why the backend refused a guard (its command's transfers were then not applied).
    type Refusal: std::fmt::Debug + Clone + PartialEq + Eq + Send + Sync + 'static;
}

/// No guards: the guard type of backends that support none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoGuard {}

impl Guard for NoGuard {
    type Refusal = std::convert::Infallible;
}

/// One unit of work for the posting engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<G: Guard = NoGuard> {
    /// Transfers applied all or nothing (a single transfer is a batch of one).
    Linked(Vec<TransferRequest>),
    /// Expire these pending transfers if they are still pending and due.
    Expire(Vec<TransferId>),
    /// Transfers applied all or nothing, and only if the backend accepts the guard; the guard's
    /// record is kept only if the transfers are applied.
    Guarded(G, Vec<TransferRequest>),
}

/// The result of one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandResult<G: Guard = NoGuard> {
    /// One result per transfer of a [`Command::Linked`] or an accepted [`Command::Guarded`].
    Linked(Vec<TransferResult>),
    /// The pending transfers that expired.
    Expired(Vec<TransferId>),
    /// The backend refused the guard of a [`Command::Guarded`]: nothing was applied.
    Refused(G::Refusal),
}

impl<G: Guard> CommandResult<G> {
    /// True for a linked result whose transfers were all applied.
    pub fn applied(&self) -> bool {
        matches!(self, Self::Linked(results) if results.iter().all(Result::is_ok))
    }
}

/// What a backend must load before applying a batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchKeys {
    /// Transfers to look up: every id in the batch (idempotency) and every pending id named.
    pub transfer_ids: BTreeSet<TransferId>,
    /// Accounts named directly by the batch's transfers.
    pub account_ids: BTreeSet<AccountId>,
}

impl BatchKeys {
    /// The keys of a batch.
    pub fn of<G: Guard>(commands: &[Command<G>]) -> Self {
        let mut keys = Self::default();
        for command in commands {
            match command {
                Command::Linked(requests) | Command::Guarded(_, requests) => {
                    for request in requests {
                        keys.transfer_ids.insert(request.id());
                        keys.transfer_ids.extend(request.pending_id());
                        keys.account_ids
                            .extend(request.account_ids().into_iter().flatten());
                    }
                }
                Command::Expire(ids) => keys.transfer_ids.extend(ids.iter().copied()),
            }
        }
        keys
    }
}

/// The rows a batch reads, loaded by the backend (accounts locked for the transaction).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Accounts by id.
    pub accounts: HashMap<AccountId, Account>,
    /// Existing transfers whose id is in [`BatchKeys::transfer_ids`].
    pub transfers: HashMap<TransferId, Transfer>,
    /// States of the existing pending transfers among them.
    pub pending: HashMap<TransferId, PendingState>,
}

impl Snapshot {
    /// Accounts the batch needs: those named, plus both sides of every loaded pending transfer.
    /// Sorted, so that backends lock rows in one global order (no deadlocks).
    pub fn accounts_needed(
        keys: &BatchKeys,
        loaded: &HashMap<TransferId, Transfer>,
    ) -> Vec<AccountId> {
        let mut ids = keys.account_ids.clone();
        for t in loaded.values().filter(|t| t.kind == TransferKind::Pending) {
            ids.insert(t.debit_account_id);
            ids.insert(t.credit_account_id);
        }
        ids.into_iter().collect()
    }

    /// Loaded pending transfers whose state the backend must read (after locking accounts).
    pub fn pending_ids_needed(loaded: &HashMap<TransferId, Transfer>) -> Vec<TransferId> {
        let mut ids: Vec<_> = loaded
            .values()
            .filter(|t| t.kind == TransferKind::Pending)
            .map(|t| t.id)
            .collect();
        ids.sort_unstable();
        ids
    }
}

/// What a backend writes after [`apply_batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchOutcome<G: Guard = NoGuard> {
    /// One result per command, in order.
    pub results: Vec<CommandResult<G>>,
    /// Transfers to insert.
    pub new_transfers: Vec<Transfer>,
    /// Final totals of every account the batch changed.
    pub accounts: Vec<Account>,
    /// Pending rows to insert: (transfer id, state, expires at ms).
    pub new_pending: Vec<(TransferId, PendingState, i64)>,
    /// Existing pending rows whose state changed.
    pub pending_updates: Vec<(TransferId, PendingState)>,
}

/// Undo log of one linked command.
#[derive(Default)]
struct Journal {
    accounts: Vec<(AccountId, Account)>,
    pending: Vec<(TransferId, Option<PendingState>)>,
    transfers: Vec<TransferId>,
    touched: Vec<AccountId>,
    new_transfers_len: usize,
}

struct Batch<'a> {
    snap: &'a mut Snapshot,
    now_ms: i64,
    new_transfers: Vec<Transfer>,
    touched: BTreeSet<AccountId>,
    pending_changed: BTreeSet<TransferId>,
    journal: Journal,
}

impl Batch<'_> {
    fn save_account(&mut self, id: AccountId) {
        if !self.journal.accounts.iter().any(|(a, _)| *a == id)
            && let Some(account) = self.snap.accounts.get(&id)
        {
            self.journal.accounts.push((id, account.clone()));
        }
        if self.touched.insert(id) {
            self.journal.touched.push(id);
        }
    }

    fn set_pending(&mut self, id: TransferId, state: PendingState) {
        let old = self.snap.pending.insert(id, state);
        self.journal.pending.push((id, old));
        self.pending_changed.insert(id);
    }

    fn record(&mut self, transfer: Transfer) -> Transfer {
        self.journal.transfers.push(transfer.id);
        self.snap.transfers.insert(transfer.id, transfer.clone());
        self.new_transfers.push(transfer.clone());
        transfer
    }

    fn rollback(&mut self) {
        let journal = std::mem::take(&mut self.journal);
        for (id, account) in journal.accounts.into_iter().rev() {
            self.snap.accounts.insert(id, account);
        }
        for (id, old) in journal.pending.into_iter().rev() {
            match old {
                Some(state) => self.snap.pending.insert(id, state),
                None => {
                    // Created by this command: no earlier command changed it either.
                    self.pending_changed.remove(&id);
                    self.snap.pending.remove(&id)
                }
            };
        }
        for id in journal.transfers {
            self.snap.transfers.remove(&id);
        }
        for id in journal.touched {
            self.touched.remove(&id);
        }
        self.new_transfers.truncate(journal.new_transfers_len);
    }

    fn begin(&mut self) {
        self.journal = Journal {
            new_transfers_len: self.new_transfers.len(),
            ..Journal::default()
        };
    }

    fn apply(&mut self, request: &TransferRequest) -> TransferResult {
        if request.id().0 == 0 {
            return Err(TransferError::IdMustNotBeZero);
        }
        if let Some(existing) = self.snap.transfers.get(&request.id()) {
            return if existing.matches(request) {
                Ok(Posted {
                    transfer: existing.clone(),
                    created: false,
                })
            } else {
                Err(TransferError::ExistsWithDifferentFields)
            };
        }
        match request {
            TransferRequest::Transfer { .. } => self.apply_transfer(request),
            TransferRequest::Post {
                id,
                pending_id,
                amount,
            } => self.resolve(*id, *pending_id, Some(*amount)),
            TransferRequest::Void { id, pending_id } => self.resolve(*id, *pending_id, None),
        }
    }

    fn apply_transfer(&mut self, request: &TransferRequest) -> TransferResult {
        let TransferRequest::Transfer {
            id,
            debit_account_id,
            credit_account_id,
            amount,
            currency,
            timeout_ms,
            code,
            user_data,
        } = request
        else {
            unreachable!("called for plain transfers only")
        };
        let (amount, debit_id, credit_id) = (*amount, *debit_account_id, *credit_account_id);
        if amount == 0 {
            return Err(TransferError::AmountMustNotBeZero);
        }
        if debit_id == credit_id {
            return Err(TransferError::AccountsMustBeDifferent);
        }
        if !is_valid_currency(currency) {
            return Err(TransferError::InvalidCurrency);
        }
        if user_data
            .as_ref()
            .is_some_and(|u| u.len() > USER_DATA_LEN_MAX)
        {
            return Err(TransferError::UserDataTooLong);
        }
        if *timeout_ms == Some(0) {
            return Err(TransferError::TimeoutMustNotBeZero);
        }
        let debit = self
            .snap
            .accounts
            .get(&debit_id)
            .ok_or(TransferError::DebitAccountNotFound)?;
        let credit = self
            .snap
            .accounts
            .get(&credit_id)
            .ok_or(TransferError::CreditAccountNotFound)?;
        if debit.currency != *currency || credit.currency != *currency {
            return Err(TransferError::CurrencyMismatch);
        }
        if debit.tenant != credit.tenant {
            return Err(TransferError::TenantMismatch);
        }
        let pending = timeout_ms.is_some();
        let mut debit = debit.clone();
        let mut credit = credit.clone();
        if pending {
            add_pending(&mut debit, &mut credit, amount)?;
        } else {
            add_posted(&mut debit, &mut credit, amount)?;
        }
        check_limits(&debit, &credit)?;
        let expires_at_ms = timeout_ms.map(|t| {
            self.now_ms
                .saturating_add(i64::try_from(t).unwrap_or(i64::MAX))
        });
        let transfer = Transfer {
            id: *id,
            debit_account_id: debit_id,
            credit_account_id: credit_id,
            amount,
            currency: currency.clone(),
            kind: if pending {
                TransferKind::Pending
            } else {
                TransferKind::Posted
            },
            pending_id: None,
            expires_at_ms,
            timeout_ms: *timeout_ms,
            code: *code,
            user_data: user_data.clone(),
            timestamp_ms: self.now_ms,
        };
        self.store_accounts(debit, credit);
        if pending {
            self.set_pending(*id, PendingState::Pending);
        }
        Ok(Posted {
            transfer: self.record(transfer),
            created: true,
        })
    }

    /// Post (`post = Some(amount)`) or void (`post = None`) a pending transfer.
    fn resolve(
        &mut self,
        id: TransferId,
        pending_id: TransferId,
        post: Option<Option<u128>>,
    ) -> TransferResult {
        let pending = self
            .snap
            .transfers
            .get(&pending_id)
            .ok_or(TransferError::PendingTransferNotFound)?;
        if pending.kind != TransferKind::Pending {
            return Err(TransferError::PendingTransferNotPending);
        }
        match self.snap.pending.get(&pending_id) {
            Some(PendingState::Pending) => {}
            Some(PendingState::Posted) => return Err(TransferError::PendingAlreadyPosted),
            Some(PendingState::Voided) => return Err(TransferError::PendingAlreadyVoided),
            Some(PendingState::Expired) => return Err(TransferError::PendingExpired),
            None => {
                panic!("ledger invariant: pending transfer {pending_id} has no pending state row")
            }
        }
        if pending.expires_at_ms.is_some_and(|at| self.now_ms >= at) {
            return Err(TransferError::PendingExpired);
        }
        let posted_amount = match post {
            Some(Some(0)) => return Err(TransferError::AmountMustNotBeZero),
            Some(Some(a)) if a > pending.amount => return Err(TransferError::ExceedsPendingAmount),
            Some(Some(a)) => Some(a),
            Some(None) => Some(pending.amount),
            None => None,
        };
        let pending = pending.clone();
        let (mut debit, mut credit) = self.pending_accounts(&pending);
        release(&mut debit, &mut credit, pending.amount);
        if let Some(a) = posted_amount {
            add_posted(&mut debit, &mut credit, a)?;
        }
        check_limits(&debit, &credit)?;
        let transfer = Transfer {
            id,
            debit_account_id: pending.debit_account_id,
            credit_account_id: pending.credit_account_id,
            amount: posted_amount.unwrap_or(pending.amount),
            currency: pending.currency.clone(),
            kind: if posted_amount.is_some() {
                TransferKind::PostPending
            } else {
                TransferKind::VoidPending
            },
            pending_id: Some(pending_id),
            expires_at_ms: None,
            timeout_ms: None,
            code: pending.code,
            user_data: pending.user_data.clone(),
            timestamp_ms: self.now_ms,
        };
        self.store_accounts(debit, credit);
        let state = if posted_amount.is_some() {
            PendingState::Posted
        } else {
            PendingState::Voided
        };
        self.set_pending(pending_id, state);
        Ok(Posted {
            transfer: self.record(transfer),
            created: true,
        })
    }

    fn pending_accounts(&self, pending: &Transfer) -> (Account, Account) {
        let get = |id: &AccountId| {
            self.snap.accounts.get(id).cloned().unwrap_or_else(|| {
                panic!(
                    "ledger invariant: account {id} of pending transfer {} not loaded",
                    pending.id
                )
            })
        };
        (
            get(&pending.debit_account_id),
            get(&pending.credit_account_id),
        )
    }

    fn store_accounts(&mut self, debit: Account, credit: Account) {
        self.save_account(debit.id);
        self.save_account(credit.id);
        self.snap.accounts.insert(debit.id, debit);
        self.snap.accounts.insert(credit.id, credit);
    }

    fn expire(&mut self, id: TransferId) -> bool {
        let Some(pending) = self.snap.transfers.get(&id) else {
            return false;
        };
        let due = pending.expires_at_ms.is_some_and(|at| self.now_ms >= at);
        if pending.kind != TransferKind::Pending
            || !due
            || self.snap.pending.get(&id) != Some(&PendingState::Pending)
        {
            return false;
        }
        let pending = pending.clone();
        let (mut debit, mut credit) = self.pending_accounts(&pending);
        release(&mut debit, &mut credit, pending.amount);
        self.store_accounts(debit, credit);
        self.set_pending(id, PendingState::Expired);
        true
    }
}

/// Add `amount` to the pending totals of both sides.
fn add_pending(
    debit: &mut Account,
    credit: &mut Account,
    amount: u128,
) -> Result<(), TransferError> {
    debit.debits_pending = debit
        .debits_pending
        .checked_add(amount)
        .ok_or(TransferError::Overflow)?;
    credit.credits_pending = credit
        .credits_pending
        .checked_add(amount)
        .ok_or(TransferError::Overflow)?;
    Ok(())
}

/// Add `amount` to the posted totals of both sides.
fn add_posted(
    debit: &mut Account,
    credit: &mut Account,
    amount: u128,
) -> Result<(), TransferError> {
    debit.debits_posted = debit
        .debits_posted
        .checked_add(amount)
        .ok_or(TransferError::Overflow)?;
    credit.credits_posted = credit
        .credits_posted
        .checked_add(amount)
        .ok_or(TransferError::Overflow)?;
    Ok(())
}

/// Remove a pending transfer's `amount` from the pending totals of both sides.
fn release(debit: &mut Account, credit: &mut Account, amount: u128) {
    debit.debits_pending = debit.debits_pending.checked_sub(amount).unwrap_or_else(|| {
        panic!(
            "ledger invariant: account {} pending debits below a pending transfer",
            debit.id
        )
    });
    credit.credits_pending = credit
        .credits_pending
        .checked_sub(amount)
        .unwrap_or_else(|| {
            panic!(
                "ledger invariant: account {} pending credits below a pending transfer",
                credit.id
            )
        });
}

fn check_limits(debit: &Account, credit: &Account) -> Result<(), TransferError> {
    if debit.flags.debits_must_not_exceed_credits
        && debit
            .debits_posted
            .checked_add(debit.debits_pending)
            .ok_or(TransferError::Overflow)?
            > debit.credits_posted
    {
        return Err(TransferError::ExceedsCredits);
    }
    if credit.flags.credits_must_not_exceed_debits
        && credit
            .credits_posted
            .checked_add(credit.credits_pending)
            .ok_or(TransferError::Overflow)?
            > credit.debits_posted
    {
        return Err(TransferError::ExceedsDebits);
    }
    Ok(())
}

/// Apply `commands` in order to `snapshot` at time `now_ms` and return what to write.
///
/// `refused` holds, for each command, the refusal of its guard if the backend refused it (the
/// command then applies nothing and results in [`CommandResult::Refused`]); it is either empty
/// (no refusals) or as long as `commands`.
///
/// # Panics
///
/// When `refused` is neither empty nor as long as `commands`, or a ledger invariant breaks.
pub fn apply_batch<G: Guard>(
    snapshot: &mut Snapshot,
    commands: &[Command<G>],
    refused: &[Option<G::Refusal>],
    now_ms: i64,
) -> BatchOutcome<G> {
    assert!(
        refused.is_empty() || refused.len() == commands.len(),
        "one refusal slot per command"
    );
    let mut batch = Batch {
        snap: snapshot,
        now_ms,
        new_transfers: Vec::new(),
        touched: BTreeSet::new(),
        pending_changed: BTreeSet::new(),
        journal: Journal::default(),
    };
    let mut results = Vec::with_capacity(commands.len());
    for (i, command) in commands.iter().enumerate() {
        batch.begin();
        let result = match command {
            Command::Guarded(..) if refused.get(i).is_some_and(Option::is_some) => {
                CommandResult::Refused(refused[i].clone().expect("checked to be a refusal"))
            }
            Command::Linked(requests) | Command::Guarded(_, requests) => {
                CommandResult::Linked(apply_linked(&mut batch, requests))
            }
            Command::Expire(ids) => {
                CommandResult::Expired(ids.iter().copied().filter(|id| batch.expire(*id)).collect())
            }
        };
        results.push(result);
    }
    let accounts: Vec<Account> = batch
        .touched
        .iter()
        .map(|id| batch.snap.accounts[id].clone())
        .collect();
    for account in &accounts {
        assert!(
            account.within_limits(),
            "ledger invariant: account {} beyond its limits after a batch",
            account.id
        );
    }
    let mut new_pending = Vec::new();
    let mut pending_updates = Vec::new();
    let new_ids: BTreeSet<TransferId> = batch.new_transfers.iter().map(|t| t.id).collect();
    for id in &batch.pending_changed {
        let state = batch.snap.pending[id];
        if new_ids.contains(id) {
            let expires_at = batch.snap.transfers[id]
                .expires_at_ms
                .expect("a pending transfer has an expiry");
            new_pending.push((*id, state, expires_at));
        } else {
            pending_updates.push((*id, state));
        }
    }
    BatchOutcome {
        results,
        new_transfers: batch.new_transfers,
        accounts,
        new_pending,
        pending_updates,
    }
}

fn apply_linked(batch: &mut Batch<'_>, requests: &[TransferRequest]) -> Vec<TransferResult> {
    let ids: BTreeSet<_> = requests.iter().map(TransferRequest::id).collect();
    if ids.len() != requests.len() {
        return requests
            .iter()
            .map(|_| Err(TransferError::DuplicateIdInBatch))
            .collect();
    }
    let mut results = Vec::with_capacity(requests.len());
    for (i, request) in requests.iter().enumerate() {
        match batch.apply(request) {
            Ok(posted) => results.push(Ok(posted)),
            Err(err) => {
                batch.rollback();
                return (0..requests.len())
                    .map(|j| {
                        Err(if j == i {
                            err
                        } else {
                            TransferError::LinkedEventFailed
                        })
                    })
                    .collect();
            }
        }
    }
    results
}
