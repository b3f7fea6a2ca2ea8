//! Guards: what the store checks and records in the same transaction as a ledger command's
//! transfers (see [`turnpike_ledger::Guard`]).
//!
//! A payment settled in the ledger itself (the `turnpike` balance method) is one guarded
//! command: the payment row (its challenge and its proof, each usable once) and the posting of
//! the payer's reservation commit together, in the posting engine's group commit, so a paid
//! verification costs no autocommit of its own and a crash between the two cannot happen.
//!
//! In a batch: the guard rows are inserted first (`ON CONFLICT DO NOTHING`: a row whose
//! challenge or proof is already used — by an earlier command of the same batch, or by another
//! transaction, committed or not yet, on any replica — is skipped and its command refused);
//! then the ledger applies the transfers; then the rows of guarded commands whose transfers
//! failed are deleted again; then the transaction commits.

use std::collections::HashSet;

use sqlx::{PgConnection, SqliteConnection};
use turnpike_ledger::{
    BackendError, Command, CommandResult, Engine, Guard, PendingState, TransferId,
};

use crate::deposits::{DELETE_DEPOSIT, DepositRow, INSERT_DEPOSIT};
use crate::error::{Dialect, backend_error};
use crate::merchant::PaymentRow;
use crate::spend_guard::{SpendDenial, SpendGuard, SpendState};

/// What the store checks and records with a guarded ledger command.
#[derive(Debug, Clone)]
pub enum LedgerGuard {
    /// Insert this payment row. Refused with [`GuardRefusal::PaymentTaken`] when its
    /// (tenant, challenge id) or its proof key is already used by another payment.
    Payment(Box<PaymentRow>),
    /// Evaluate an agent's payment against its policy and record its spend
    /// (see [`crate::spend_guard`]).
    Spend(Box<SpendGuard>),
    /// Mark a claimed or pending payment (settled on an outside rail) `settled` with its rail
    /// reference. Refused with [`GuardRefusal::PaymentTaken`] when it is not claimed or pending
    /// any more (settled already, or released): the booking then never happens twice.
    Settle(Box<SettleGuard>),
    /// Insert this deposit row: a token transfer log credited to a tenant. Refused with
    /// [`GuardRefusal::DepositCredited`] when its log is credited already (by another command,
    /// replica or an earlier run), so that a log is never credited twice.
    Deposit(Box<DepositRow>),
    /// Mark a settled outside-rail payment `refund_due` (its booking is reversed by the
    /// command's transfers; the merchant owes the payer an on-chain refund). Refused with
    /// [`GuardRefusal::PaymentTaken`] when it is not settled any more (marked already, by a
    /// racing failure or another replica): the reversal then never happens twice.
    RefundDue(Box<RefundDueGuard>),
    /// Mark a settled `turnpike` payment `refunded` (the command's transfers return exactly
    /// what it booked to its payer) and release the paying agent's spend, in the same
    /// transaction. Refused with [`GuardRefusal::PaymentTaken`] when it is not settled any more
    /// (refunded already, by a racing failure or another replica): nothing is returned twice.
    Refund(Box<RefundGuard>),
}

/// A settled `turnpike` payment returned to its payer, with its transfers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundGuard {
    /// The payment (`pay_...`).
    pub payment_id: String,
    /// The paying agent's spend row (`agent_spends.id`) released with it, when there is one.
    pub spend_id: Option<String>,
}

/// A settled outside-rail payment to be returned by its merchant, reversed with its transfers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundDueGuard {
    /// The payment (`pay_...`).
    pub payment_id: String,
    /// The address that paid (EIP-55), when the rail knows it.
    pub payer_address: Option<String>,
}

/// A payment settled on an outside rail, booked with its transfers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettleGuard {
    /// The payment (`pay_...`).
    pub payment_id: String,
    /// The rail's reference (receipt `reference`).
    pub reference: String,
}

/// Why the store refused a guard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuardRefusal {
    /// Another payment already used this challenge or this proof.
    PaymentTaken,
    /// The agent's policy changed since the guard was built: evaluate again under the new one.
    PolicyChanged,
    /// The policy (or a revoked token) denies the payment.
    Denied(SpendDenial),
    /// The payment is above the approval threshold: hold it for the owner (the detail says why).
    NeedsApproval(String),
    /// The approval the guard carried is not granted for this payment, was used, or expired.
    ApprovalInvalid,
    /// This deposit's log is credited already.
    DepositCredited,
}

impl Guard for LedgerGuard {
    type Refusal = GuardRefusal;
}

/// The posting engine over a [`crate::Store`].
pub type StoreEngine = Engine<LedgerGuard>;

/// The guard rows a batch inserted.
#[derive(Debug, Default)]
pub(crate) struct Recorded<'a> {
    /// One slot per command (or none at all when the batch has no guards): the refusal of
    /// each guarded command whose row was not inserted.
    pub(crate) refused: Vec<Option<GuardRefusal>>,
    /// The payment rows of the batch's guarded commands, with their command's index.
    rows: Vec<(usize, &'a PaymentRow)>,
}

impl Recorded<'_> {
    /// Merge other refusals (e.g. the spend guards') into the slots.
    pub(crate) fn merge(
        &mut self,
        commands: usize,
        refusals: impl Iterator<Item = (usize, GuardRefusal)>,
    ) {
        for (i, refusal) in refusals {
            if self.refused.is_empty() {
                self.refused = vec![None; commands];
            }
            self.refused[i] = Some(refusal);
        }
    }

    /// The ids of the rows whose command was accepted but whose transfers failed.
    fn failed_ids(&self, results: &[CommandResult<LedgerGuard>]) -> Vec<String> {
        self.rows
            .iter()
            .filter(|(i, _)| self.refused[*i].is_none() && !results[*i].applied())
            .map(|(_, row)| row.id.clone())
            .collect()
    }
}

/// The payment rows of the batch's guarded commands, with their command's index.
fn payments(commands: &[Command<LedgerGuard>]) -> Vec<(usize, &PaymentRow)> {
    commands
        .iter()
        .enumerate()
        .filter_map(|(i, command)| match command {
            Command::Guarded(LedgerGuard::Payment(row), _) => Some((i, &**row)),
            Command::Guarded(
                LedgerGuard::Spend(_)
                | LedgerGuard::Settle(_)
                | LedgerGuard::Deposit(_)
                | LedgerGuard::RefundDue(_)
                | LedgerGuard::Refund(_),
                _,
            )
            | Command::Linked(_)
            | Command::Expire(_) => None,
        })
        .collect()
}

/// One refusal slot per command: the guarded commands whose row was not inserted.
fn refusals(
    commands: &[Command<LedgerGuard>],
    rows: &[(usize, &PaymentRow)],
    inserted: &HashSet<String>,
) -> Vec<Option<GuardRefusal>> {
    let mut refused = vec![None; commands.len()];
    for (i, row) in rows {
        if !inserted.contains(&row.id) {
            refused[*i] = Some(GuardRefusal::PaymentTaken);
        }
    }
    refused
}

/// A connection of either database, in the batch's transaction.
pub(crate) enum Conn<'c> {
    Pg(&'c mut PgConnection),
    Lite(&'c mut SqliteConnection),
}

/// Run one body with `$c` bound to whichever connection `$conn` holds.
macro_rules! on_conn {
    ($conn:expr, $c:ident => $body:expr) => {
        match $conn {
            Conn::Pg($c) => $body,
            Conn::Lite($c) => $body,
        }
    };
}
pub(crate) use on_conn;

/// How a database error on `conn` becomes a [`BackendError`].
pub(crate) fn db_err(conn: &Conn<'_>) -> impl Fn(sqlx::Error) -> BackendError + use<> {
    let dialect = match conn {
        Conn::Pg(_) => Dialect::Postgres,
        Conn::Lite(_) => Dialect::Sqlite,
    };
    move |err| backend_error(dialect, &err)
}

/// What a batch's guards decided before the ledger ran.
pub(crate) struct Guards<'a> {
    payments: Recorded<'a>,
    spends: SpendState<'a>,
    /// The settle guards that marked their payment settled: (command index, payment id).
    settled: Vec<(usize, &'a str)>,
    /// The deposit guards whose row was inserted: (command index, row).
    deposits: Vec<(usize, &'a DepositRow)>,
    /// The refund-due guards that marked their payment: (command index, payment id).
    refunds_due: Vec<(usize, &'a str)>,
    /// The refund guards that marked their payment: (command index, guard).
    refunded: Vec<(usize, &'a RefundGuard)>,
}

impl Guards<'_> {
    /// One refusal slot per command (or none at all), for [`turnpike_ledger::apply_batch`].
    pub(crate) fn refused(&self) -> &[Option<GuardRefusal>] {
        &self.payments.refused
    }
}

/// Check and record the batch's guards: payment rows first, then spends.
pub(crate) async fn before_ledger<'a>(
    conn: &mut Conn<'_>,
    commands: &'a [Command<LedgerGuard>],
    now_ms: i64,
) -> Result<Guards<'a>, BackendError> {
    let mut payments = record_payments(conn, commands).await?;
    let spends = crate::spend_guard::before_ledger(conn, commands, now_ms).await?;
    payments.merge(commands.len(), spends.refusals());
    let (settled, refused) = mark_settled(conn, commands, now_ms).await?;
    payments.merge(commands.len(), refused.into_iter());
    let (deposits, refused) = record_deposits(conn, commands).await?;
    payments.merge(commands.len(), refused.into_iter());
    let (refunds_due, refused) = mark_refund_due(conn, commands, now_ms).await?;
    payments.merge(commands.len(), refused.into_iter());
    let (refunded, refused) = mark_refunded(conn, commands, now_ms).await?;
    payments.merge(commands.len(), refused.into_iter());
    Ok(Guards {
        payments,
        spends,
        settled,
        deposits,
        refunds_due,
        refunded,
    })
}

/// Undo the guards whose transfers failed and record what the batch decided.
pub(crate) async fn after_ledger(
    conn: &mut Conn<'_>,
    guards: &Guards<'_>,
    results: &[CommandResult<LedgerGuard>],
    pending_updates: &[(TransferId, PendingState)],
    now_ms: i64,
) -> Result<(), BackendError> {
    drop_failed_payments(conn, &guards.payments, results).await?;
    unmark_failed(conn, &guards.settled, results, now_ms, UNMARK_SETTLED).await?;
    drop_failed_deposits(conn, &guards.deposits, results).await?;
    unmark_failed(
        conn,
        &guards.refunds_due,
        results,
        now_ms,
        UNMARK_REFUND_DUE,
    )
    .await?;
    finish_refunds(conn, &guards.refunded, results, now_ms).await?;
    crate::spend_guard::after_ledger(conn, &guards.spends, results, pending_updates, now_ms).await
}

const PG_INSERT_PAYMENTS: &str = "INSERT INTO payments (id, tenant_id, challenge_id, proof_key, \
     state, method, amount, currency, price_id, price_version, payer_tenant_id, reference, \
     created_at, updated_at) \
     SELECT * FROM unnest($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[], \
     $6::TEXT[], $7::TEXT[], $8::TEXT[], $9::TEXT[], $10::BIGINT[], $11::TEXT[], $12::TEXT[], \
     $13::BIGINT[], $14::BIGINT[]) \
     ON CONFLICT DO NOTHING RETURNING id";
// SQLite: the rows as one JSON array, unpacked with `json_each` (one statement per batch, as
// on PostgreSQL; `WHERE true` lets the upsert clause follow a SELECT).
const SQLITE_INSERT_PAYMENTS: &str = "INSERT INTO payments (id, tenant_id, challenge_id, \
     proof_key, state, method, amount, currency, price_id, price_version, payer_tenant_id, \
     reference, created_at, updated_at) \
     SELECT value->>'id', value->>'tenant_id', value->>'challenge_id', value->>'proof_key', \
     value->>'state', value->>'method', value->>'amount', value->>'currency', \
     value->>'price_id', value->>'price_version', value->>'payer_tenant_id', \
     value->>'reference', value->>'created_at', value->>'updated_at' \
     FROM json_each($1) WHERE true ON CONFLICT DO NOTHING RETURNING id";
const DELETE_PAYMENT: &str = "DELETE FROM payments WHERE id = $1";
const MARK_SETTLED: &str = "UPDATE payments SET state = 'settled', reference = $2, \
     updated_at = $3 WHERE id = $1 AND state IN ('claimed', 'pending')";
const UNMARK_SETTLED: &str =
    "UPDATE payments SET state = 'pending', updated_at = $2 WHERE id = $1 AND state = 'settled'";

const MARK_REFUND_DUE: &str = "UPDATE payments SET state = 'refund_due', payer_address = $2, \
     updated_at = $3 WHERE id = $1 AND state = 'settled' AND payer_tenant_id IS NULL";
const UNMARK_REFUND_DUE: &str = "UPDATE payments SET state = 'settled', payer_address = NULL, \
     updated_at = $2 WHERE id = $1 AND state = 'refund_due'";

const MARK_REFUNDED: &str = "UPDATE payments SET state = 'refunded', updated_at = $2 \
     WHERE id = $1 AND state = 'settled' AND payer_tenant_id IS NOT NULL";
const UNMARK_REFUNDED: &str =
    "UPDATE payments SET state = 'settled', updated_at = $2 WHERE id = $1 AND state = 'refunded'";
const RELEASE_SPEND: &str =
    "UPDATE agent_spends SET released_at = $2 WHERE id = $1 AND released_at IS NULL";

/// What a batch's payment-state guards of one kind did: the payments marked, and the refusals.
type Marks<'a> = (Vec<(usize, &'a str)>, Vec<(usize, GuardRefusal)>);

/// The batch's guards that `pick` selects, each a (payment id, value): run `mark` (binds: the
/// payment id, the value, now) for each, and refuse those it changes nothing for (the payment
/// is no longer in the state the guard expects).
async fn mark_payments<'a>(
    conn: &mut Conn<'_>,
    commands: &'a [Command<LedgerGuard>],
    now_ms: i64,
    mark: &'static str,
    pick: impl Fn(&'a LedgerGuard) -> Option<(&'a str, Option<&'a str>)>,
) -> Result<Marks<'a>, BackendError> {
    let err = db_err(conn);
    let mut marked = Vec::new();
    let mut refused = Vec::new();
    for (i, command) in commands.iter().enumerate() {
        let Command::Guarded(guard, _) = command else {
            continue;
        };
        let Some((payment_id, value)) = pick(guard) else {
            continue;
        };
        let done = on_conn!(conn, c => sqlx::query(mark)
            .bind(payment_id)
            .bind(value)
            .bind(now_ms)
            .execute(&mut **c).await.map_err(&err)?.rows_affected());
        if done == 0 {
            refused.push((i, GuardRefusal::PaymentTaken));
        } else {
            marked.push((i, payment_id));
        }
    }
    Ok((marked, refused))
}

/// The settle guards: mark each payment settled; refuse those not claimed or pending.
async fn mark_settled<'a>(
    conn: &mut Conn<'_>,
    commands: &'a [Command<LedgerGuard>],
    now_ms: i64,
) -> Result<Marks<'a>, BackendError> {
    mark_payments(conn, commands, now_ms, MARK_SETTLED, |guard| match guard {
        LedgerGuard::Settle(g) => Some((g.payment_id.as_str(), Some(g.reference.as_str()))),
        _ => None,
    })
    .await
}

/// The refund-due guards: mark each settled outside-rail payment `refund_due`; refuse those
/// not settled (any more).
async fn mark_refund_due<'a>(
    conn: &mut Conn<'_>,
    commands: &'a [Command<LedgerGuard>],
    now_ms: i64,
) -> Result<Marks<'a>, BackendError> {
    mark_payments(
        conn,
        commands,
        now_ms,
        MARK_REFUND_DUE,
        |guard| match guard {
            LedgerGuard::RefundDue(g) => Some((g.payment_id.as_str(), g.payer_address.as_deref())),
            _ => None,
        },
    )
    .await
}

/// The refund guards: mark each settled `turnpike` payment `refunded`; refuse those not
/// settled (any more).
async fn mark_refunded<'a>(
    conn: &mut Conn<'_>,
    commands: &'a [Command<LedgerGuard>],
    now_ms: i64,
) -> Result<(Vec<(usize, &'a RefundGuard)>, Vec<(usize, GuardRefusal)>), BackendError> {
    let err = db_err(conn);
    let mut marked = Vec::new();
    let mut refused = Vec::new();
    for (i, command) in commands.iter().enumerate() {
        let Command::Guarded(LedgerGuard::Refund(guard), _) = command else {
            continue;
        };
        let done = on_conn!(conn, c => sqlx::query(MARK_REFUNDED)
            .bind(guard.payment_id.as_str())
            .bind(now_ms)
            .execute(&mut **c).await.map_err(&err)?.rows_affected());
        if done == 0 {
            refused.push((i, GuardRefusal::PaymentTaken));
        } else {
            marked.push((i, &**guard));
        }
    }
    Ok((marked, refused))
}

/// The refunds whose transfers were applied release their agent's spend (the payment no
/// longer counts against its budgets); the others are put back to `settled`.
async fn finish_refunds(
    conn: &mut Conn<'_>,
    refunded: &[(usize, &RefundGuard)],
    results: &[CommandResult<LedgerGuard>],
    now_ms: i64,
) -> Result<(), BackendError> {
    let err = db_err(conn);
    for (i, guard) in refunded {
        if !results[*i].applied() {
            on_conn!(conn, c => sqlx::query(UNMARK_REFUNDED)
                .bind(guard.payment_id.as_str())
                .bind(now_ms)
                .execute(&mut **c).await.map_err(&err)?.rows_affected());
        } else if let Some(spend) = guard.spend_id.as_deref() {
            on_conn!(conn, c => sqlx::query(RELEASE_SPEND)
                .bind(spend)
                .bind(now_ms)
                .execute(&mut **c).await.map_err(&err)?.rows_affected());
        }
    }
    Ok(())
}

/// Put back the payments `marked` whose commands failed, with `unmark` (binds: the payment id,
/// now): a failed settlement is pending again (the resolver retries); a failed reversal leaves
/// its payment settled, as it was.
async fn unmark_failed(
    conn: &mut Conn<'_>,
    marked: &[(usize, &str)],
    results: &[CommandResult<LedgerGuard>],
    now_ms: i64,
    unmark: &'static str,
) -> Result<(), BackendError> {
    let err = db_err(conn);
    for (i, payment_id) in marked {
        if !results[*i].applied() {
            on_conn!(conn, c => sqlx::query(unmark)
                .bind(*payment_id)
                .bind(now_ms)
                .execute(&mut **c).await.map_err(&err)?.rows_affected());
        }
    }
    Ok(())
}

/// Insert the batch's payment rows in one statement; one refusal slot per command.
async fn record_payments<'a>(
    conn: &mut Conn<'_>,
    commands: &'a [Command<LedgerGuard>],
) -> Result<Recorded<'a>, BackendError> {
    let rows = payments(commands);
    if rows.is_empty() {
        return Ok(Recorded::default());
    }
    let err = db_err(conn);
    let inserted: HashSet<String> = match conn {
        Conn::Pg(c) => {
            let column =
                |f: fn(&PaymentRow) -> String| rows.iter().map(|(_, r)| f(r)).collect::<Vec<_>>();
            let ids: Vec<(String,)> = sqlx::query_as(PG_INSERT_PAYMENTS)
                .bind(column(|r| r.id.clone()))
                .bind(column(|r| r.tenant_id.clone()))
                .bind(column(|r| r.challenge_id.clone()))
                .bind(column(|r| r.proof_key.clone()))
                .bind(column(|r| r.state.clone()))
                .bind(column(|r| r.method.clone()))
                .bind(column(|r| r.amount.clone()))
                .bind(column(|r| r.currency.clone()))
                .bind(column(|r| r.price_id.clone()))
                .bind(
                    rows.iter()
                        .map(|(_, r)| r.price_version)
                        .collect::<Vec<_>>(),
                )
                .bind(
                    rows.iter()
                        .map(|(_, r)| r.payer_tenant_id.clone())
                        .collect::<Vec<_>>(),
                )
                .bind(
                    rows.iter()
                        .map(|(_, r)| r.reference.clone())
                        .collect::<Vec<_>>(),
                )
                .bind(rows.iter().map(|(_, r)| r.created_at).collect::<Vec<_>>())
                .bind(rows.iter().map(|(_, r)| r.updated_at).collect::<Vec<_>>())
                .fetch_all(&mut **c)
                .await
                .map_err(&err)?;
            ids.into_iter().map(|(id,)| id).collect()
        }
        Conn::Lite(c) => {
            let json: Vec<serde_json::Value> = rows
                .iter()
                .map(|(_, r)| {
                    serde_json::json!({
                        "id": r.id, "tenant_id": r.tenant_id, "challenge_id": r.challenge_id,
                        "proof_key": r.proof_key, "state": r.state, "method": r.method,
                        "amount": r.amount, "currency": r.currency, "price_id": r.price_id,
                        "price_version": r.price_version, "payer_tenant_id": r.payer_tenant_id,
                        "reference": r.reference, "created_at": r.created_at,
                        "updated_at": r.updated_at,
                    })
                })
                .collect();
            let ids: Vec<(String,)> = sqlx::query_as(SQLITE_INSERT_PAYMENTS)
                .bind(serde_json::Value::Array(json).to_string())
                .fetch_all(&mut **c)
                .await
                .map_err(&err)?;
            ids.into_iter().map(|(id,)| id).collect()
        }
    };
    let refused = refusals(commands, &rows, &inserted);
    Ok(Recorded { refused, rows })
}

/// Delete the payment rows whose transfers failed (rare: one statement each).
async fn drop_failed_payments(
    conn: &mut Conn<'_>,
    recorded: &Recorded<'_>,
    results: &[CommandResult<LedgerGuard>],
) -> Result<(), BackendError> {
    let err = db_err(conn);
    for id in recorded.failed_ids(results) {
        on_conn!(conn, c => sqlx::query(DELETE_PAYMENT).bind(id)
            .execute(&mut **c).await.map_err(&err)?.rows_affected());
    }
    Ok(())
}

/// What the batch's deposit guards did: the rows inserted, and the refusals.
type DepositMarks<'a> = (Vec<(usize, &'a DepositRow)>, Vec<(usize, GuardRefusal)>);

/// The batch's deposit guards: insert each row; refuse those whose log is credited already
/// (rare, and one statement each: a watcher credits a handful of logs per pass).
async fn record_deposits<'a>(
    conn: &mut Conn<'_>,
    commands: &'a [Command<LedgerGuard>],
) -> Result<DepositMarks<'a>, BackendError> {
    let err = db_err(conn);
    let mut inserted = Vec::new();
    let mut refused = Vec::new();
    for (i, command) in commands.iter().enumerate() {
        let Command::Guarded(LedgerGuard::Deposit(row), _) = command else {
            continue;
        };
        let done = on_conn!(conn, c => sqlx::query(INSERT_DEPOSIT)
            .bind(row.chain_id)
            .bind(&row.tx_hash)
            .bind(row.log_index)
            .bind(&row.tenant_id)
            .bind(&row.method)
            .bind(row.block_number)
            .bind(&row.token)
            .bind(&row.sender)
            .bind(&row.address)
            .bind(&row.currency)
            .bind(&row.amount)
            .bind(&row.transfer_id)
            .bind(row.credited_at)
            .execute(&mut **c).await.map_err(&err)?.rows_affected());
        if done == 0 {
            refused.push((i, GuardRefusal::DepositCredited));
        } else {
            inserted.push((i, &**row));
        }
    }
    Ok((inserted, refused))
}

/// A deposit guard whose transfer failed leaves no row: the watcher credits the log again later.
async fn drop_failed_deposits(
    conn: &mut Conn<'_>,
    inserted: &[(usize, &DepositRow)],
    results: &[CommandResult<LedgerGuard>],
) -> Result<(), BackendError> {
    let err = db_err(conn);
    for (i, row) in inserted {
        if !results[*i].applied() {
            on_conn!(conn, c => sqlx::query(DELETE_DEPOSIT)
                .bind(row.chain_id)
                .bind(&row.tx_hash)
                .bind(row.log_index)
                .execute(&mut **c).await.map_err(&err)?.rows_affected());
        }
    }
    Ok(())
}
