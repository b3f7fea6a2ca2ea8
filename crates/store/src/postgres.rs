//! PostgreSQL (and, by keeping to what they accept, CockroachDB and YugabyteDB): the
//! production store, shared by every replica.
//!
//! A ledger batch runs at READ COMMITTED: it loads the transfers it names, then locks its
//! accounts in id order (`SELECT ... FOR UPDATE`, one global order, so replicas never deadlock
//! on accounts), then reads the pending states under those locks. A replica that loaded
//! "no such transfer" before another replica committed it fails on the primary key (23505) and
//! is retried by the engine, and then sees the transfer. Each step is one statement with arrays
//! bound as parameters (`= ANY($1)`, `unnest(...)`), whatever the batch size.

use std::time::Duration;

use futures_util::TryStreamExt;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use turnpike_ledger::{
    Account, AccountId, BackendError, BatchKeys, Command, CommandResult, NewAccount, PendingState,
    Snapshot, Transfer, TransferId, apply_batch,
};

use crate::check::{CheckReport, Checker};
use crate::error::{Dialect, StoreError, backend_error, expect_rows};
use crate::guard::{self, Conn, LedgerGuard};
use crate::history::{Cursor, Page};
use crate::rows::{
    TransferParams, account_columns, account_from_row, amount_text, id_text, parse_pending_state,
    parse_transfer_id, transfer_columns, transfer_from_row,
};

/// Connections per pool (per replica).
pub(crate) const POOL_CONNECTIONS_MAX: u32 = 16;
/// How long to wait for a free connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

const SELECT_TRANSFERS: &str = concat!(
    "SELECT ",
    transfer_columns!("::TEXT"),
    " FROM ledger_transfers WHERE id = ANY($1::TEXT[])"
);
const LOCK_ACCOUNTS: &str = concat!(
    "SELECT ",
    account_columns!("::TEXT"),
    " FROM ledger_accounts WHERE id = ANY($1::TEXT[]) ORDER BY id FOR UPDATE"
);
const SELECT_ACCOUNTS: &str = concat!(
    "SELECT ",
    account_columns!("::TEXT"),
    " FROM ledger_accounts WHERE id = ANY($1::TEXT[]) ORDER BY id"
);
const SELECT_ACCOUNT: &str = concat!(
    "SELECT ",
    account_columns!("::TEXT"),
    " FROM ledger_accounts WHERE id = $1 AND ($2::TEXT IS NULL OR tenant = $2::TEXT)"
);
const SELECT_PENDING: &str =
    "SELECT transfer_id, state FROM ledger_pending WHERE transfer_id = ANY($1::TEXT[])";
const INSERT_TRANSFERS: &str = "INSERT INTO ledger_transfers (id, debit_account_id, \
     credit_account_id, amount, currency, kind, pending_id, expires_at_ms, timeout_ms, code, \
     user_data, timestamp_ms) \
     SELECT t.id, t.debit, t.credit, t.amount::NUMERIC, t.currency, t.kind, t.pending_id, \
     t.expires_at_ms, t.timeout_ms::NUMERIC, t.code, t.user_data, t.timestamp_ms \
     FROM unnest($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[], $6::TEXT[], \
     $7::TEXT[], $8::BIGINT[], $9::TEXT[], $10::INTEGER[], $11::BYTEA[], $12::BIGINT[]) \
     AS t(id, debit, credit, amount, currency, kind, pending_id, expires_at_ms, timeout_ms, \
     code, user_data, timestamp_ms)";
const UPDATE_ACCOUNTS: &str = "UPDATE ledger_accounts AS a SET \
     debits_pending = u.debits_pending::NUMERIC, debits_posted = u.debits_posted::NUMERIC, \
     credits_pending = u.credits_pending::NUMERIC, credits_posted = u.credits_posted::NUMERIC \
     FROM unnest($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[]) \
     AS u(id, debits_pending, debits_posted, credits_pending, credits_posted) \
     WHERE a.id = u.id";
const INSERT_PENDING: &str = "INSERT INTO ledger_pending (transfer_id, state, expires_at_ms) \
     SELECT * FROM unnest($1::TEXT[], $2::TEXT[], $3::BIGINT[])";
// A pending row only ever moves forward, out of `pending`.
// `(p.state = 'pending') IS TRUE` is the same test, written so that no index can serve it: the
// plan made on an empty table (see `BEGIN_BATCH`) then looks each row up by its primary key
// instead of walking every pending reservation through `ledger_pending_due`.
const UPDATE_PENDING: &str = "UPDATE ledger_pending AS p SET state = u.state \
     FROM unnest($1::TEXT[], $2::TEXT[]) AS u(transfer_id, state) \
     WHERE p.transfer_id = u.transfer_id AND (p.state = 'pending') IS TRUE";
const INSERT_ACCOUNT: &str = "INSERT INTO ledger_accounts \
     (id, tenant, owner, kind, currency, flags, created_at_ms) \
     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING";
const SELECT_TRANSFER: &str = concat!(
    "SELECT ",
    transfer_columns!("::TEXT"),
    " FROM ledger_transfers WHERE id = $1"
);
const SELECT_PENDING_STATE: &str = "SELECT state FROM ledger_pending WHERE transfer_id = $1";
const DUE_PENDING: &str = "SELECT transfer_id FROM ledger_pending \
     WHERE state = 'pending' AND expires_at_ms <= $1 ORDER BY expires_at_ms LIMIT $2";

// History: each side of the account (debit, credit) walks its own index newest first; the two
// ordered streams are merged. An account is never on both sides of one transfer.
macro_rules! history_side {
    ($side:literal, $after:literal, $limit:literal) => {
        concat!(
            "(SELECT ",
            transfer_columns!("::TEXT"),
            " FROM ledger_transfers WHERE ",
            $side,
            " = $1",
            $after,
            " ORDER BY timestamp_ms DESC, id DESC LIMIT ",
            $limit,
            ")"
        )
    };
}
const HISTORY_AFTER: &str = concat!(
    history_side!(
        "debit_account_id",
        " AND (timestamp_ms, id) < ($2, $3)",
        "$4"
    ),
    " UNION ALL ",
    history_side!(
        "credit_account_id",
        " AND (timestamp_ms, id) < ($2, $3)",
        "$4"
    ),
    " ORDER BY timestamp_ms DESC, id DESC LIMIT $4"
);
const HISTORY_FIRST: &str = concat!(
    history_side!("debit_account_id", "", "$2"),
    " UNION ALL ",
    history_side!("credit_account_id", "", "$2"),
    " ORDER BY timestamp_ms DESC, id DESC LIMIT $2"
);

const CHECK_ACCOUNTS: &str = concat!(
    "SELECT ",
    account_columns!("::TEXT"),
    " FROM ledger_accounts"
);
const CHECK_TRANSFERS: &str = "SELECT t.id, t.debit_account_id, t.credit_account_id, \
     t.amount::TEXT, t.currency, t.kind, t.pending_id, p.state, rp.transfer_id \
     FROM ledger_transfers AS t \
     LEFT JOIN ledger_pending AS p ON p.transfer_id = t.id \
     LEFT JOIN ledger_pending AS rp ON rp.transfer_id = t.pending_id";
const CHECK_PENDING: &str = "SELECT p.transfer_id, p.state, p.expires_at_ms, t.kind, \
     t.amount::TEXT, t.debit_account_id, t.credit_account_id, t.expires_at_ms, \
     r.id, r.kind, r.amount::TEXT, r.debit_account_id, r.credit_account_id \
     FROM ledger_pending AS p \
     LEFT JOIN ledger_transfers AS t ON t.id = p.transfer_id \
     LEFT JOIN ledger_transfers AS r ON r.pending_id = p.transfer_id \
     ORDER BY p.transfer_id";

/// A ledger batch's transaction never plans a sequential scan.
///
/// PostgreSQL switches a prepared statement to a generic plan after five runs and keeps it until
/// the table is next analyzed: a plan made while the ledger tables were empty (a sequential scan
/// for `id = ANY($1)`) then slows every batch as the table grows, ten times within seconds on a
/// fresh database. Every batch statement has an index for its lookups, so with sequential scans
/// disabled the generic plan is the index plan whatever the statistics say, and it is reused.
/// (Forcing custom plans instead, as before, re-planned every statement and every foreign-key
/// check of every row: about a fifth of PostgreSQL's time per paid cycle.) `SET LOCAL` keeps it
/// to the batch.
const BEGIN_BATCH: &str = "BEGIN; SET LOCAL enable_seqscan = off";

pub(crate) async fn open(
    options: PgConnectOptions,
    connections: u32,
) -> Result<PgPool, StoreError> {
    Ok(PgPoolOptions::new()
        .max_connections(connections.max(1))
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options)
        .await?)
}

fn id_texts<I: IntoIterator<Item = u128>>(ids: I) -> Vec<String> {
    ids.into_iter().map(id_text).collect()
}

/// Apply a ledger batch in one READ COMMITTED transaction with its accounts locked.
pub(crate) async fn execute(
    pool: &PgPool,
    commands: &[Command<LedgerGuard>],
    now_ms: i64,
) -> Result<Vec<CommandResult<LedgerGuard>>, BackendError> {
    let db = |err: sqlx::Error| backend_error(Dialect::Postgres, &err);
    let mut tx = pool.begin_with(BEGIN_BATCH).await.map_err(db)?;
    // Guards first: a command whose row is refused loads and locks nothing it does not need.
    let guards = guard::before_ledger(&mut Conn::Pg(&mut tx), commands, now_ms).await?;
    let keys = BatchKeys::of(commands);
    let mut snapshot = Snapshot::default();

    if !keys.transfer_ids.is_empty() {
        let rows = sqlx::query(SELECT_TRANSFERS)
            .bind(id_texts(keys.transfer_ids.iter().map(|id| id.0)))
            .fetch_all(&mut *tx)
            .await
            .map_err(db)?;
        for row in &rows {
            let transfer = transfer_from_row(row)?;
            snapshot.transfers.insert(transfer.id, transfer);
        }
    }
    let account_ids = Snapshot::accounts_needed(&keys, &snapshot.transfers);
    if !account_ids.is_empty() {
        let rows = sqlx::query(LOCK_ACCOUNTS)
            .bind(id_texts(account_ids.iter().map(|id| id.0)))
            .fetch_all(&mut *tx)
            .await
            .map_err(db)?;
        for row in &rows {
            let account = account_from_row(row)?;
            snapshot.accounts.insert(account.id, account);
        }
    }
    let pending_ids = Snapshot::pending_ids_needed(&snapshot.transfers);
    if !pending_ids.is_empty() {
        let rows: Vec<(String, String)> = sqlx::query_as(SELECT_PENDING)
            .bind(id_texts(pending_ids.iter().map(|id| id.0)))
            .fetch_all(&mut *tx)
            .await
            .map_err(db)?;
        for (id, state) in &rows {
            snapshot.pending.insert(
                parse_transfer_id("ledger_pending", id)?,
                parse_pending_state("ledger_pending", state)?,
            );
        }
    }

    let outcome = apply_batch(&mut snapshot, commands, guards.refused(), now_ms);
    guard::after_ledger(
        &mut Conn::Pg(&mut tx),
        &guards,
        &outcome.results,
        &outcome.pending_updates,
        now_ms,
    )
    .await?;

    if !outcome.new_transfers.is_empty() {
        let rows: Vec<TransferParams> = outcome.new_transfers.iter().map(Into::into).collect();
        let n = rows.len();
        let mut columns = TransferColumns::with_capacity(n);
        for row in rows {
            columns.push(row);
        }
        let done = sqlx::query(INSERT_TRANSFERS)
            .bind(columns.id)
            .bind(columns.debit)
            .bind(columns.credit)
            .bind(columns.amount)
            .bind(columns.currency)
            .bind(columns.kind)
            .bind(columns.pending_id)
            .bind(columns.expires_at_ms)
            .bind(columns.timeout_ms)
            .bind(columns.code)
            .bind(columns.user_data)
            .bind(columns.timestamp_ms)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        expect_rows("ledger_transfers insert", done.rows_affected(), n)?;
    }
    if !outcome.accounts.is_empty() {
        let a = &outcome.accounts;
        let done = sqlx::query(UPDATE_ACCOUNTS)
            .bind(id_texts(a.iter().map(|a| a.id.0)))
            .bind(
                a.iter()
                    .map(|a| amount_text(a.debits_pending))
                    .collect::<Vec<_>>(),
            )
            .bind(
                a.iter()
                    .map(|a| amount_text(a.debits_posted))
                    .collect::<Vec<_>>(),
            )
            .bind(
                a.iter()
                    .map(|a| amount_text(a.credits_pending))
                    .collect::<Vec<_>>(),
            )
            .bind(
                a.iter()
                    .map(|a| amount_text(a.credits_posted))
                    .collect::<Vec<_>>(),
            )
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        expect_rows("ledger_accounts update", done.rows_affected(), a.len())?;
    }
    if !outcome.new_pending.is_empty() {
        let p = &outcome.new_pending;
        let done = sqlx::query(INSERT_PENDING)
            .bind(id_texts(p.iter().map(|(id, _, _)| id.0)))
            .bind(p.iter().map(|(_, s, _)| s.as_str()).collect::<Vec<_>>())
            .bind(p.iter().map(|(_, _, at)| *at).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        expect_rows("ledger_pending insert", done.rows_affected(), p.len())?;
    }
    if !outcome.pending_updates.is_empty() {
        let p = &outcome.pending_updates;
        let done = sqlx::query(UPDATE_PENDING)
            .bind(id_texts(p.iter().map(|(id, _)| id.0)))
            .bind(p.iter().map(|(_, s)| s.as_str()).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        expect_rows("ledger_pending update", done.rows_affected(), p.len())?;
    }
    tx.commit().await.map_err(db)?;
    Ok(outcome.results)
}

/// The new transfers as one array per column, for `unnest`.
struct TransferColumns {
    id: Vec<String>,
    debit: Vec<String>,
    credit: Vec<String>,
    amount: Vec<String>,
    currency: Vec<String>,
    kind: Vec<&'static str>,
    pending_id: Vec<Option<String>>,
    expires_at_ms: Vec<Option<i64>>,
    timeout_ms: Vec<Option<String>>,
    code: Vec<i32>,
    user_data: Vec<Option<Vec<u8>>>,
    timestamp_ms: Vec<i64>,
}

impl TransferColumns {
    fn with_capacity(n: usize) -> Self {
        Self {
            id: Vec::with_capacity(n),
            debit: Vec::with_capacity(n),
            credit: Vec::with_capacity(n),
            amount: Vec::with_capacity(n),
            currency: Vec::with_capacity(n),
            kind: Vec::with_capacity(n),
            pending_id: Vec::with_capacity(n),
            expires_at_ms: Vec::with_capacity(n),
            timeout_ms: Vec::with_capacity(n),
            code: Vec::with_capacity(n),
            user_data: Vec::with_capacity(n),
            timestamp_ms: Vec::with_capacity(n),
        }
    }

    fn push(&mut self, t: TransferParams) {
        self.id.push(t.id);
        self.debit.push(t.debit);
        self.credit.push(t.credit);
        self.amount.push(t.amount);
        self.currency.push(t.currency);
        self.kind.push(t.kind);
        self.pending_id.push(t.pending_id);
        self.expires_at_ms.push(t.expires_at_ms);
        self.timeout_ms.push(t.timeout_ms);
        self.code.push(t.code);
        self.user_data.push(t.user_data);
        self.timestamp_ms.push(t.timestamp_ms);
    }
}

/// Insert the account unless its id exists; true when inserted.
pub(crate) async fn insert_account(
    pool: &PgPool,
    new: &NewAccount,
    now_ms: i64,
) -> Result<bool, StoreError> {
    let flags = i32::try_from(new.flags.bits())
        .map_err(|_| StoreError::Database("account flags out of range".to_owned()))?;
    let done = sqlx::query(INSERT_ACCOUNT)
        .bind(id_text(new.id.0))
        .bind(&new.tenant)
        .bind(&new.owner)
        .bind(new.kind.as_str())
        .bind(&new.currency)
        .bind(flags)
        .bind(now_ms)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}

pub(crate) async fn account(
    pool: &PgPool,
    tenant: Option<&str>,
    id: AccountId,
) -> Result<Option<Account>, StoreError> {
    let row = sqlx::query(SELECT_ACCOUNT)
        .bind(id_text(id.0))
        .bind(tenant)
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(account_from_row).transpose()
}

pub(crate) async fn accounts(pool: &PgPool, ids: &[AccountId]) -> Result<Vec<Account>, StoreError> {
    let rows = sqlx::query(SELECT_ACCOUNTS)
        .bind(id_texts(ids.iter().map(|id| id.0)))
        .fetch_all(pool)
        .await?;
    rows.iter().map(account_from_row).collect()
}

pub(crate) async fn transfer(
    pool: &PgPool,
    id: TransferId,
) -> Result<Option<Transfer>, StoreError> {
    let row = sqlx::query(SELECT_TRANSFER)
        .bind(id_text(id.0))
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(transfer_from_row).transpose()
}

pub(crate) async fn pending_state(
    pool: &PgPool,
    id: TransferId,
) -> Result<Option<PendingState>, StoreError> {
    let state: Option<(String,)> = sqlx::query_as(SELECT_PENDING_STATE)
        .bind(id_text(id.0))
        .fetch_optional(pool)
        .await?;
    state
        .map(|(s,)| parse_pending_state("ledger_pending", &s))
        .transpose()
}

pub(crate) async fn account_history(
    pool: &PgPool,
    account_id: AccountId,
    cursor: Option<Cursor>,
    limit: u32,
) -> Result<Page, StoreError> {
    let fetch = i64::from(limit) + 1;
    let query = match cursor {
        Some(c) => sqlx::query(HISTORY_AFTER)
            .bind(id_text(account_id.0))
            .bind(c.timestamp_ms())
            .bind(id_text(c.id().0))
            .bind(fetch),
        None => sqlx::query(HISTORY_FIRST)
            .bind(id_text(account_id.0))
            .bind(fetch),
    };
    let rows = query.fetch_all(pool).await?;
    let transfers = rows
        .iter()
        .map(transfer_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Page::from_rows(transfers, limit))
}

pub(crate) async fn due_pending(
    pool: &PgPool,
    now_ms: i64,
    limit: u32,
) -> Result<Vec<TransferId>, StoreError> {
    let rows: Vec<(String,)> = sqlx::query_as(DUE_PENDING)
        .bind(now_ms)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|(id,)| parse_transfer_id("ledger_pending", id))
        .collect()
}

/// Stream the whole ledger through the checker from one snapshot (REPEATABLE READ, read only).
pub(crate) async fn check(pool: &PgPool) -> Result<CheckReport, StoreError> {
    let mut tx = pool
        .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .await?;
    let mut checker = Checker::default();
    {
        let mut rows = sqlx::query(CHECK_ACCOUNTS).fetch(&mut *tx);
        while let Some(row) = rows.try_next().await? {
            checker.account(&row)?;
        }
    }
    {
        let mut rows = sqlx::query(CHECK_TRANSFERS).fetch(&mut *tx);
        while let Some(row) = rows.try_next().await? {
            checker.transfer(&row)?;
        }
    }
    {
        let mut rows = sqlx::query(CHECK_PENDING).fetch(&mut *tx);
        let mut previous = None;
        while let Some(row) = rows.try_next().await? {
            checker.pending(&row, &mut previous)?;
        }
    }
    tx.rollback().await?;
    Ok(checker.finish())
}
