//! `check()`: the ledger's invariants verified over the whole database, from one consistent
//! snapshot, with every sum computed in Rust as checked `u128` over streamed rows (SQLite
//! cannot sum 128-bit integers exactly, and neither database should be trusted to).
//!
//! Invariants:
//! - per currency, posted debits = posted credits and pending debits = pending credits, summed
//!   over the accounts' stored totals;
//! - every account's four totals equal those recomputed from its transfers: a `posted`
//!   transfer adds to `*_posted`; a `pending` one adds to `*_pending` while its pending row says
//!   `pending`; a `post_pending` one adds its (posted) amount to `*_posted`; a void adds nothing;
//! - no account beyond its flags;
//! - every pending transfer has a pending row and every pending row a pending transfer; a row's
//!   state agrees with the transfer that resolved it (at most one), which moves at most the
//!   pending amount between the same accounts;
//! - every transfer's accounts exist and hold its currency.

use std::collections::BTreeMap;
use std::fmt;

use turnpike_ledger::{Account, AccountId, AccountKind, PendingState, TransferId, TransferKind};

use crate::error::StoreError;
use crate::rows::{
    Cols, account_from_row, parse_account_id, parse_amount, parse_pending_state, parse_transfer_id,
    parse_transfer_kind,
};

/// Most violations listed in one report; the rest are only counted.
pub const VIOLATIONS_LISTED_MAX: usize = 1_000;

/// One of an account's four totals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Total {
    /// `debits_pending`.
    DebitsPending,
    /// `debits_posted`.
    DebitsPosted,
    /// `credits_pending`.
    CreditsPending,
    /// `credits_posted`.
    CreditsPosted,
}

impl Total {
    /// The column name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DebitsPending => "debits_pending",
            Self::DebitsPosted => "debits_posted",
            Self::CreditsPending => "credits_pending",
            Self::CreditsPosted => "credits_posted",
        }
    }
}

/// Whether a currency's posted or pending totals are unbalanced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Posted debits against posted credits.
    Posted,
    /// Pending debits against pending credits.
    Pending,
}

/// A broken invariant, naming the rows involved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// A currency's debits and credits differ over all accounts.
    CurrencyUnbalanced {
        /// Currency.
        currency: String,
        /// Posted or pending totals.
        phase: Phase,
        /// Sum of the accounts' debits (in decimal: it may exceed u128).
        debits: String,
        /// Sum of the accounts' credits (likewise).
        credits: String,
    },
    /// A merchant's revenue account whose debits (posted and pending) exceed its posted
    /// credits: more was reversed or refunded from it than it received.
    RevenueBelowZero {
        /// Account.
        account_id: AccountId,
        /// Posted credits less posted and pending debits (negative), in decimal.
        available: String,
    },
    /// A payment whose row disagrees with the transfers it booked (or its refunds with them).
    PaymentBooking {
        /// The payment (`pay_...`).
        payment_id: String,
        /// What disagrees.
        reason: String,
    },
    /// An account's stored total differs from the sum of its transfers.
    AccountTotalMismatch {
        /// Account.
        account_id: AccountId,
        /// Which total.
        total: Total,
        /// As stored on the account row.
        stored: u128,
        /// As recomputed from the transfers.
        recomputed: u128,
    },
    /// The sum of an account's transfers overflowed u128.
    AccountTotalOverflow {
        /// Account.
        account_id: AccountId,
    },
    /// An account's stored totals break its flags.
    AccountBeyondLimits {
        /// Account.
        account_id: AccountId,
    },
    /// A row that does not read back as a ledger value.
    UnreadableRow {
        /// Table.
        table: &'static str,
        /// The row's key as stored.
        key: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A transfer names an account that does not exist.
    TransferAccountMissing {
        /// Transfer.
        transfer_id: TransferId,
        /// Missing account.
        account_id: AccountId,
    },
    /// A transfer's currency differs from one of its accounts'.
    TransferCurrencyMismatch {
        /// Transfer.
        transfer_id: TransferId,
        /// Account of another currency.
        account_id: AccountId,
    },
    /// A pending transfer without a pending row.
    PendingRowMissing {
        /// Pending transfer.
        transfer_id: TransferId,
    },
    /// A pending row whose transfer is missing or not a pending transfer.
    PendingRowWithoutPendingTransfer {
        /// Key of the pending row.
        transfer_id: TransferId,
    },
    /// A pending row's state disagrees with the transfer that resolved it (or its absence).
    PendingStateMismatch {
        /// Pending transfer.
        transfer_id: TransferId,
        /// State stored.
        state: PendingState,
        /// The post or void naming it, if any.
        resolved_by: Option<TransferId>,
    },
    /// A pending transfer resolved by more than one transfer.
    PendingResolvedTwice {
        /// Pending transfer.
        transfer_id: TransferId,
    },
    /// A post or void of a transfer that has no pending row.
    ResolutionWithoutPendingRow {
        /// The post or void.
        transfer_id: TransferId,
        /// The pending id it names.
        pending_id: TransferId,
    },
    /// A post or void that does not fit its pending transfer.
    ResolutionMismatch {
        /// The post or void.
        transfer_id: TransferId,
        /// Its pending transfer.
        pending_id: TransferId,
        /// How it does not fit.
        reason: &'static str,
    },
    /// A pending row's expiry differs from its transfer's.
    PendingExpiryMismatch {
        /// Pending transfer.
        transfer_id: TransferId,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::CurrencyUnbalanced {
                currency,
                phase,
                debits,
                credits,
            } => write!(
                f,
                "currency {currency}: {phase:?} debits {debits} != credits {credits}"
            ),
            Self::AccountTotalMismatch {
                account_id,
                total,
                stored,
                recomputed,
            } => write!(
                f,
                "account {account_id}: {} stored {stored} but its transfers sum to {recomputed}",
                total.as_str()
            ),
            Self::AccountTotalOverflow { account_id } => {
                write!(f, "account {account_id}: its transfers overflow u128")
            }
            Self::RevenueBelowZero {
                account_id,
                available,
            } => write!(
                f,
                "account {account_id}: merchant revenue below zero (available {available})"
            ),
            Self::PaymentBooking { payment_id, reason } => {
                write!(f, "payment {payment_id}: {reason}")
            }
            Self::AccountBeyondLimits { account_id } => {
                write!(f, "account {account_id}: totals beyond its flags")
            }
            Self::UnreadableRow { table, key, reason } => {
                write!(f, "{table} row {key:?}: {reason}")
            }
            Self::TransferAccountMissing {
                transfer_id,
                account_id,
            } => write!(
                f,
                "transfer {transfer_id}: account {account_id} does not exist"
            ),
            Self::TransferCurrencyMismatch {
                transfer_id,
                account_id,
            } => write!(
                f,
                "transfer {transfer_id}: currency differs from account {account_id}"
            ),
            Self::PendingRowMissing { transfer_id } => {
                write!(f, "pending transfer {transfer_id}: no pending row")
            }
            Self::PendingRowWithoutPendingTransfer { transfer_id } => write!(
                f,
                "pending row {transfer_id}: no pending transfer with that id"
            ),
            Self::PendingStateMismatch {
                transfer_id,
                state,
                resolved_by,
            } => match resolved_by {
                Some(by) => write!(
                    f,
                    "pending transfer {transfer_id}: state {} but resolved by {by}",
                    state.as_str()
                ),
                None => write!(
                    f,
                    "pending transfer {transfer_id}: state {} but no transfer resolved it",
                    state.as_str()
                ),
            },
            Self::PendingResolvedTwice { transfer_id } => {
                write!(f, "pending transfer {transfer_id}: resolved more than once")
            }
            Self::ResolutionWithoutPendingRow {
                transfer_id,
                pending_id,
            } => write!(
                f,
                "transfer {transfer_id}: resolves {pending_id}, which has no pending row"
            ),
            Self::ResolutionMismatch {
                transfer_id,
                pending_id,
                reason,
            } => write!(f, "transfer {transfer_id} resolving {pending_id}: {reason}"),
            Self::PendingExpiryMismatch { transfer_id } => write!(
                f,
                "pending transfer {transfer_id}: pending row expiry differs from the transfer's"
            ),
        }
    }
}

/// What `check()` verified and what it found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Accounts read.
    pub accounts_checked: u64,
    /// Transfers read.
    pub transfers_checked: u64,
    /// Pending rows read.
    pub pending_checked: u64,
    /// Currencies whose debits and credits were compared.
    pub currencies_checked: u64,
    /// Payments tied to their transfers (by [`CheckReport::record_payment`]'s caller).
    pub payments_checked: u64,
    /// Violations found, at most [`VIOLATIONS_LISTED_MAX`].
    pub violations: Vec<Violation>,
    /// Violations found beyond those listed.
    pub violations_unlisted: u64,
}

impl CheckReport {
    /// True when no invariant is broken.
    pub fn is_ok(&self) -> bool {
        self.violations.is_empty() && self.violations_unlisted == 0
    }

    /// Add a violation (listed while fewer than [`VIOLATIONS_LISTED_MAX`] are).
    pub fn push(&mut self, violation: Violation) {
        if self.violations.len() < VIOLATIONS_LISTED_MAX {
            self.violations.push(violation);
        } else {
            self.violations_unlisted += 1;
        }
    }

    /// Count one payment checked against its transfers, with what disagrees (if anything).
    pub fn record_payment(&mut self, payment_id: &str, problems: Vec<String>) {
        self.payments_checked += 1;
        for reason in problems {
            self.push(Violation::PaymentBooking {
                payment_id: payment_id.to_owned(),
                reason,
            });
        }
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "checked {} accounts, {} transfers, {} pending rows, {} currencies, {} payments: {}",
            self.accounts_checked,
            self.transfers_checked,
            self.pending_checked,
            self.currencies_checked,
            self.payments_checked,
            if self.is_ok() { "ok" } else { "VIOLATIONS" }
        )?;
        for violation in &self.violations {
            writeln!(f, "  {violation}")?;
        }
        if self.violations_unlisted > 0 {
            writeln!(f, "  ... and {} more", self.violations_unlisted)?;
        }
        Ok(())
    }
}

/// Totals recomputed from transfers; `None` once a sum overflowed.
#[derive(Debug, Clone, Copy)]
struct Totals {
    debits_pending: Option<u128>,
    debits_posted: Option<u128>,
    credits_pending: Option<u128>,
    credits_posted: Option<u128>,
}

impl Default for Totals {
    fn default() -> Self {
        Self {
            debits_pending: Some(0),
            debits_posted: Some(0),
            credits_pending: Some(0),
            credits_posted: Some(0),
        }
    }
}

fn add(total: &mut Option<u128>, amount: u128) {
    *total = total.and_then(|t| t.checked_add(amount));
}

#[derive(Debug)]
struct Tally {
    stored: Account,
    recomputed: Totals,
}

/// A sum of `u128` amounts that cannot overflow in practice: 256 bits as (high, low) halves.
/// Each account's totals fit u128 (the ledger refuses more), but a currency's sum over many
/// accounts may not.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Wide {
    high: u128,
    low: u128,
}

impl Wide {
    fn add(&mut self, amount: u128) {
        let (low, carried) = self.low.overflowing_add(amount);
        self.low = low;
        // 2^128 accounts of u128::MAX cannot exist: the high half never overflows.
        self.high += u128::from(carried);
    }
}

impl Wide {
    /// `self - amount`, for `self >= amount`.
    fn minus(self, amount: u128) -> Self {
        let (low, borrowed) = self.low.overflowing_sub(amount);
        Self {
            high: self.high - u128::from(borrowed),
            low,
        }
    }
}

impl fmt::Display for Wide {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.high == 0 {
            return write!(f, "{}", self.low);
        }
        // Long division by 10^19 (each step's remainder and quotient fit u128).
        const CHUNK: u128 = 10_000_000_000_000_000_000;
        let mut limbs = [
            self.high >> 64,
            self.high & u128::from(u64::MAX),
            self.low >> 64,
            self.low & u128::from(u64::MAX),
        ];
        let mut chunks = Vec::new();
        while limbs.iter().any(|l| *l != 0) {
            let mut rem = 0u128;
            for limb in &mut limbs {
                let cur = (rem << 64) | *limb;
                *limb = cur / CHUNK;
                rem = cur % CHUNK;
            }
            chunks.push(rem);
        }
        let mut out = format!("{}", chunks.pop().unwrap_or(0));
        for chunk in chunks.iter().rev() {
            out.push_str(&format!("{chunk:019}"));
        }
        f.write_str(&out)
    }
}

#[derive(Debug, Default)]
struct CurrencySums {
    debits_posted: Wide,
    credits_posted: Wide,
    debits_pending: Wide,
    credits_pending: Wide,
}

/// Accumulates the streamed rows; the backend feeds it in order: accounts, transfers, pending.
#[derive(Debug, Default)]
pub(crate) struct Checker {
    accounts: BTreeMap<AccountId, Tally>,
    report: CheckReport,
}

impl Checker {
    fn violation(&mut self, violation: Violation) {
        self.report.push(violation);
    }

    fn unreadable(&mut self, table: &'static str, key: String, err: StoreError) {
        let reason = match err {
            StoreError::Corrupt { reason, .. } => reason,
            _ => "cannot be decoded",
        };
        self.violation(Violation::UnreadableRow { table, key, reason });
    }

    /// One row of the accounts query (columns of `account_columns!`).
    pub(crate) fn account(&mut self, row: &impl Cols) -> Result<(), StoreError> {
        self.report.accounts_checked += 1;
        match account_from_row(row) {
            Ok(account) => {
                self.accounts.insert(
                    account.id,
                    Tally {
                        stored: account,
                        recomputed: Totals::default(),
                    },
                );
            }
            Err(err) => self.unreadable("ledger_accounts", row.text(0)?, err),
        }
        Ok(())
    }

    /// One row of the transfers query. Columns: id, debit, credit, amount (text), currency,
    /// kind, pending_id, the transfer's own pending row state (NULL if none), and the key of the
    /// pending row of the transfer it resolves (NULL if none).
    pub(crate) fn transfer(&mut self, row: &impl Cols) -> Result<(), StoreError> {
        self.report.transfers_checked += 1;
        let key = row.text(0)?;
        if let Err(err) = self.transfer_facts(row) {
            match err {
                StoreError::Corrupt { .. } => self.unreadable("ledger_transfers", key, err),
                other => return Err(other),
            }
        }
        Ok(())
    }

    fn transfer_facts(&mut self, row: &impl Cols) -> Result<(), StoreError> {
        const T: &str = "ledger_transfers";
        let id = parse_transfer_id(T, &row.text(0)?)?;
        let debit_id = parse_account_id(T, &row.text(1)?)?;
        let credit_id = parse_account_id(T, &row.text(2)?)?;
        let amount = parse_amount(T, &row.text(3)?)?;
        let currency = row.text(4)?;
        let kind = parse_transfer_kind(T, &row.text(5)?)?;
        let pending_id = row
            .opt_text(6)?
            .map(|p| parse_transfer_id(T, &p))
            .transpose()?;
        let own_state = row
            .opt_text(7)?
            .map(|s| parse_pending_state("ledger_pending", &s))
            .transpose()?;
        let resolves_row = row.opt_text(8)?.is_some();

        let mut counts = true;
        match kind {
            TransferKind::Pending if own_state.is_none() => {
                self.violation(Violation::PendingRowMissing { transfer_id: id });
                counts = false;
            }
            TransferKind::PostPending | TransferKind::VoidPending if !resolves_row => {
                if let Some(pending_id) = pending_id {
                    self.violation(Violation::ResolutionWithoutPendingRow {
                        transfer_id: id,
                        pending_id,
                    });
                }
            }
            _ => {}
        }
        // (kind, pending state) -> which totals the transfer adds to.
        let (debit_total, credit_total) = match kind {
            TransferKind::Posted | TransferKind::PostPending => {
                (Total::DebitsPosted, Total::CreditsPosted)
            }
            TransferKind::Pending if own_state == Some(PendingState::Pending) => {
                (Total::DebitsPending, Total::CreditsPending)
            }
            TransferKind::Pending | TransferKind::VoidPending => {
                counts = false;
                (Total::DebitsPosted, Total::CreditsPosted)
            }
        };
        for (account_id, total) in [(debit_id, debit_total), (credit_id, credit_total)] {
            let Some(tally) = self.accounts.get_mut(&account_id) else {
                self.violation(Violation::TransferAccountMissing {
                    transfer_id: id,
                    account_id,
                });
                continue;
            };
            let currency_differs = tally.stored.currency != currency;
            if counts {
                let r = &mut tally.recomputed;
                match total {
                    Total::DebitsPending => add(&mut r.debits_pending, amount),
                    Total::DebitsPosted => add(&mut r.debits_posted, amount),
                    Total::CreditsPending => add(&mut r.credits_pending, amount),
                    Total::CreditsPosted => add(&mut r.credits_posted, amount),
                }
            }
            if currency_differs {
                self.violation(Violation::TransferCurrencyMismatch {
                    transfer_id: id,
                    account_id,
                });
            }
        }
        Ok(())
    }

    /// One row of the pending query, ordered by key; `previous` is the key of the previous row.
    /// Columns: p.transfer_id, p.state, p.expires_at_ms, t.kind, t.amount (text), t.debit,
    /// t.credit, t.expires_at_ms, r.id, r.kind, r.amount (text), r.debit, r.credit, where t is
    /// the pending transfer and r the transfer resolving it.
    pub(crate) fn pending(
        &mut self,
        row: &impl Cols,
        previous: &mut Option<String>,
    ) -> Result<(), StoreError> {
        let key = row.text(0)?;
        if previous.as_deref() == Some(key.as_str()) {
            // The same pending row joined to a second resolving transfer.
            if let Ok(transfer_id) = parse_transfer_id("ledger_pending", &key) {
                self.violation(Violation::PendingResolvedTwice { transfer_id });
            }
            return Ok(());
        }
        *previous = Some(key.clone());
        self.report.pending_checked += 1;
        if let Err(err) = self.pending_facts(row) {
            match err {
                StoreError::Corrupt { .. } => self.unreadable("ledger_pending", key, err),
                other => return Err(other),
            }
        }
        Ok(())
    }

    fn pending_facts(&mut self, row: &impl Cols) -> Result<(), StoreError> {
        const P: &str = "ledger_pending";
        const T: &str = "ledger_transfers";
        let transfer_id = parse_transfer_id(P, &row.text(0)?)?;
        let state = parse_pending_state(P, &row.text(1)?)?;
        let row_expires_at_ms = row.int64(2)?;
        let kind = row
            .opt_text(3)?
            .map(|k| parse_transfer_kind(T, &k))
            .transpose()?;
        if kind != Some(TransferKind::Pending) {
            self.violation(Violation::PendingRowWithoutPendingTransfer { transfer_id });
            return Ok(());
        }
        let amount = parse_amount(T, &row.text(4)?)?;
        let accounts = (row.text(5)?, row.text(6)?);
        if row.opt_int64(7)? != Some(row_expires_at_ms) {
            self.violation(Violation::PendingExpiryMismatch { transfer_id });
        }
        let resolved_by = row
            .opt_text(8)?
            .map(|r| parse_transfer_id(T, &r))
            .transpose()?;
        let resolution_kind = row
            .opt_text(9)?
            .map(|k| parse_transfer_kind(T, &k))
            .transpose()?;
        let consistent = matches!(
            (state, resolution_kind),
            (PendingState::Posted, Some(TransferKind::PostPending))
                | (PendingState::Voided, Some(TransferKind::VoidPending))
                | (PendingState::Pending | PendingState::Expired, None)
        );
        if !consistent {
            self.violation(Violation::PendingStateMismatch {
                transfer_id,
                state,
                resolved_by,
            });
        }
        let (Some(resolution_id), Some(resolution_kind)) = (resolved_by, resolution_kind) else {
            return Ok(());
        };
        let resolution_amount = parse_amount(T, &row.text(10)?)?;
        let resolution_accounts = (row.text(11)?, row.text(12)?);
        let reason = if resolution_accounts != accounts {
            Some("accounts differ from the pending transfer's")
        } else if resolution_kind == TransferKind::PostPending && resolution_amount > amount {
            Some("posts more than the pending amount")
        } else if resolution_kind == TransferKind::VoidPending && resolution_amount != amount {
            Some("voids another amount than the pending amount")
        } else if !matches!(
            resolution_kind,
            TransferKind::PostPending | TransferKind::VoidPending
        ) {
            Some("names a pending id but is not a post or void")
        } else {
            None
        };
        if let Some(reason) = reason {
            self.violation(Violation::ResolutionMismatch {
                transfer_id: resolution_id,
                pending_id: transfer_id,
                reason,
            });
        }
        Ok(())
    }

    /// Per currency, debits must equal credits, posted and pending.
    fn compare_currencies(&mut self, currencies: &BTreeMap<String, CurrencySums>) {
        self.report.currencies_checked = u64::try_from(currencies.len()).unwrap_or(u64::MAX);
        for (currency, sums) in currencies {
            let phases = [
                (Phase::Posted, sums.debits_posted, sums.credits_posted),
                (Phase::Pending, sums.debits_pending, sums.credits_pending),
            ];
            for (phase, debits, credits) in phases {
                if debits != credits {
                    self.violation(Violation::CurrencyUnbalanced {
                        currency: currency.clone(),
                        phase,
                        debits: debits.to_string(),
                        credits: credits.to_string(),
                    });
                }
            }
        }
    }

    /// A merchant's revenue may not go below zero: more reversed or refunded from it than it
    /// received is a loss someone has to explain.
    fn revenue_floor(&mut self, account: &Account) {
        if account.kind != AccountKind::MerchantRevenue {
            return;
        }
        let mut debits = Wide::default();
        debits.add(account.debits_posted);
        debits.add(account.debits_pending);
        if debits.high > 0 || debits.low > account.credits_posted {
            self.violation(Violation::RevenueBelowZero {
                account_id: account.id,
                available: format!("-{}", debits.minus(account.credits_posted)),
            });
        }
    }

    /// Compare what was read and return the report.
    pub(crate) fn finish(mut self) -> CheckReport {
        let accounts = std::mem::take(&mut self.accounts);
        let mut currencies: BTreeMap<String, CurrencySums> = BTreeMap::new();
        for (account_id, tally) in &accounts {
            let stored = &tally.stored;
            let sums = currencies.entry(stored.currency.clone()).or_default();
            sums.debits_posted.add(stored.debits_posted);
            sums.credits_posted.add(stored.credits_posted);
            sums.debits_pending.add(stored.debits_pending);
            sums.credits_pending.add(stored.credits_pending);
            self.revenue_floor(stored);

            let r = tally.recomputed;
            let pairs = [
                (
                    Total::DebitsPending,
                    stored.debits_pending,
                    r.debits_pending,
                ),
                (Total::DebitsPosted, stored.debits_posted, r.debits_posted),
                (
                    Total::CreditsPending,
                    stored.credits_pending,
                    r.credits_pending,
                ),
                (
                    Total::CreditsPosted,
                    stored.credits_posted,
                    r.credits_posted,
                ),
            ];
            for (total, stored, recomputed) in pairs {
                match recomputed {
                    None => self.violation(Violation::AccountTotalOverflow {
                        account_id: *account_id,
                    }),
                    Some(recomputed) if recomputed != stored => {
                        self.violation(Violation::AccountTotalMismatch {
                            account_id: *account_id,
                            total,
                            stored,
                            recomputed,
                        });
                    }
                    Some(_) => {}
                }
            }
            if !stored.within_limits() {
                self.violation(Violation::AccountBeyondLimits {
                    account_id: *account_id,
                });
            }
        }
        self.compare_currencies(&currencies);
        self.report
    }
}

#[cfg(test)]
mod tests {
    use super::Wide;

    fn wide(amounts: &[u128]) -> Wide {
        let mut sum = Wide::default();
        for amount in amounts {
            sum.add(*amount);
        }
        sum
    }

    #[test]
    fn wide_sums_print_in_decimal_beyond_u128() {
        assert_eq!(wide(&[]).to_string(), "0");
        assert_eq!(wide(&[5, 7]).to_string(), "12");
        assert_eq!(
            wide(&[u128::MAX, 1]).to_string(),
            "340282366920938463463374607431768211456"
        );
        assert_eq!(
            wide(&[u128::MAX, u128::MAX]).to_string(),
            "680564733841876926926749214863536422910"
        );
        // 10^19 boundaries inside the long division keep their zeros.
        assert_eq!(
            wide(&[u128::MAX, u128::MAX, 10_000_000_000_000_000_000]).to_string(),
            "680564733841876926936749214863536422910"
        );
    }

    #[test]
    fn wide_differences_borrow_from_the_high_half() {
        assert_eq!(
            wide(&[u128::MAX, 1]).minus(1).to_string(),
            u128::MAX.to_string()
        );
        assert_eq!(wide(&[10, 5]).minus(15).to_string(), "0");
        assert_eq!(wide(&[u128::MAX, 9]).minus(u128::MAX), wide(&[9]));
    }
}
