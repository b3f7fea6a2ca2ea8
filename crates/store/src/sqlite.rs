//! SQLite: the embedded default. One file, WAL, one writer at a time.
//!
//! A ledger batch takes the write lock up front (`BEGIN IMMEDIATE`), so its read-check-write
//! cycle is serialized against every other writer, in this process or another one sharing the
//! file. Each step of the batch is one statement whatever the batch size: ids and rows travel
//! as one JSON array bound to one parameter and unpacked with `json_each`, so the statements
//! are constant (prepared once per connection) and no bind-variable limit applies.

use std::time::Duration;

use futures_util::TryStreamExt;
use serde::Serialize;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use turnpike_ledger::{
    Account, AccountId, BackendError, BatchKeys, Command, CommandResult, NewAccount, PendingState,
    Snapshot, Transfer, TransferId, apply_batch,
};

use crate::check::{CheckReport, Checker};
use crate::error::{Dialect, StoreError, backend_error, expect_rows};
use crate::guard::{self, Conn, LedgerGuard};
use crate::history::{Cursor, Page};
use crate::rows::{
    account_columns, account_from_row, amount_text, id_text, parse_pending_state,
    parse_transfer_id, transfer_columns, transfer_from_row,
};

/// How long a writer waits for another connection's write lock before `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections per pool (one writer at a time; the rest read from WAL snapshots).
pub(crate) const POOL_CONNECTIONS_MAX: u32 = 8;

const SELECT_TRANSFERS: &str = concat!(
    "SELECT ",
    transfer_columns!(""),
    " FROM ledger_transfers WHERE id IN (SELECT value FROM json_each(?1))"
);
const SELECT_ACCOUNTS: &str = concat!(
    "SELECT ",
    account_columns!(""),
    " FROM ledger_accounts WHERE id IN (SELECT value FROM json_each(?1)) ORDER BY id"
);
const SELECT_ACCOUNT: &str = concat!(
    "SELECT ",
    account_columns!(""),
    " FROM ledger_accounts WHERE id = ?1 AND (?2 IS NULL OR tenant = ?2)"
);
const SELECT_PENDING: &str = "SELECT transfer_id, state FROM ledger_pending \
     WHERE transfer_id IN (SELECT value FROM json_each(?1))";
const INSERT_TRANSFERS: &str = "INSERT INTO ledger_transfers (id, debit_account_id, \
     credit_account_id, amount, currency, kind, pending_id, expires_at_ms, timeout_ms, code, \
     user_data, timestamp_ms) \
     SELECT value->>'id', value->>'debit', value->>'credit', value->>'amount', \
     value->>'currency', value->>'kind', value->>'pending_id', value->>'expires_at_ms', \
     value->>'timeout_ms', value->>'code', unhex(value->>'user_data'), value->>'timestamp_ms' \
     FROM json_each(?1)";
const UPDATE_ACCOUNTS: &str = "UPDATE ledger_accounts SET \
     debits_pending = u.value->>'debits_pending', debits_posted = u.value->>'debits_posted', \
     credits_pending = u.value->>'credits_pending', credits_posted = u.value->>'credits_posted' \
     FROM json_each(?1) AS u WHERE ledger_accounts.id = u.value->>'id'";
const INSERT_PENDING: &str = "INSERT INTO ledger_pending (transfer_id, state, expires_at_ms) \
     SELECT value->>'id', value->>'state', value->>'expires_at_ms' FROM json_each(?1)";
// A pending row only ever moves forward, out of `pending`. (The unary `+` keeps the planner
// from scanning every pending row through the state index instead of looking up each id.)
const UPDATE_PENDING: &str = "UPDATE ledger_pending SET state = u.value->>'state' \
     FROM json_each(?1) AS u \
     WHERE ledger_pending.transfer_id = u.value->>'id' AND +ledger_pending.state = 'pending'";
const INSERT_ACCOUNT: &str = "INSERT INTO ledger_accounts \
     (id, tenant, owner, kind, currency, flags, created_at_ms) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (id) DO NOTHING";
const SELECT_TRANSFER: &str = concat!(
    "SELECT ",
    transfer_columns!(""),
    " FROM ledger_transfers WHERE id = ?1"
);
const SELECT_PENDING_STATE: &str = "SELECT state FROM ledger_pending WHERE transfer_id = ?1";
const DUE_PENDING: &str = "SELECT transfer_id FROM ledger_pending \
     WHERE state = 'pending' AND expires_at_ms <= ?1 \
     ORDER BY expires_at_ms, transfer_id LIMIT ?2";

// History: each side of the account (debit, credit) walks its own index newest first; the two
// ordered streams are merged. An account is never on both sides of one transfer.
macro_rules! history_side {
    ($side:literal, $after:literal) => {
        concat!(
            "SELECT * FROM (SELECT ",
            transfer_columns!(""),
            " FROM ledger_transfers WHERE ",
            $side,
            " = ?1",
            $after,
            " ORDER BY timestamp_ms DESC, id DESC LIMIT ?4)"
        )
    };
}
const HISTORY_AFTER: &str = concat!(
    history_side!("debit_account_id", " AND (timestamp_ms, id) < (?2, ?3)"),
    " UNION ALL ",
    history_side!("credit_account_id", " AND (timestamp_ms, id) < (?2, ?3)"),
    " ORDER BY timestamp_ms DESC, id DESC LIMIT ?4"
);
const HISTORY_FIRST: &str = concat!(
    history_side!("debit_account_id", ""),
    " UNION ALL ",
    history_side!("credit_account_id", ""),
    " ORDER BY timestamp_ms DESC, id DESC LIMIT ?4"
);

const CHECK_ACCOUNTS: &str = concat!("SELECT ", account_columns!(""), " FROM ledger_accounts");
const CHECK_TRANSFERS: &str = "SELECT t.id, t.debit_account_id, t.credit_account_id, t.amount, \
     t.currency, t.kind, t.pending_id, p.state, rp.transfer_id \
     FROM ledger_transfers AS t \
     LEFT JOIN ledger_pending AS p ON p.transfer_id = t.id \
     LEFT JOIN ledger_pending AS rp ON rp.transfer_id = t.pending_id";
const CHECK_PENDING: &str = "SELECT p.transfer_id, p.state, p.expires_at_ms, t.kind, t.amount, \
     t.debit_account_id, t.credit_account_id, t.expires_at_ms, \
     r.id, r.kind, r.amount, r.debit_account_id, r.credit_account_id \
     FROM ledger_pending AS p \
     LEFT JOIN ledger_transfers AS t ON t.id = p.transfer_id \
     LEFT JOIN ledger_transfers AS r ON r.pending_id = p.transfer_id \
     ORDER BY p.transfer_id";

/// Open (creating the file if needed) with the store's pragmas.
pub(crate) async fn open(
    options: SqliteConnectOptions,
    connections: u32,
) -> Result<SqlitePool, StoreError> {
    let in_memory = options.get_filename().as_os_str() == ":memory:";
    let options = options
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // With WAL, NORMAL syncs the WAL at checkpoints rather than at every commit: a power
        // loss may roll back the last commits, but never corrupts the file or splits a
        // transaction. A batch is all or nothing either way; clients resubmit the same ids.
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(BUSY_TIMEOUT)
        .foreign_keys(true)
        // A 64 MiB page cache per connection (the default is 2 MiB): the ledger's indexes are
        // read on every batch, and re-reading their pages from the OS cost ~4% of a hot run.
        .pragma("cache_size", "-65536");
    // Every connection to `:memory:` is its own database: keep to one.
    let connections = if in_memory { 1 } else { connections.max(1) };
    Ok(SqlitePoolOptions::new()
        .max_connections(connections)
        .connect_with(options)
        .await?)
}

fn json<T: Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value)
        .map_err(|_| StoreError::Database("cannot encode batch parameters".to_owned()))
}

fn ids_json<I: IntoIterator<Item = u128>>(ids: I) -> Result<String, StoreError> {
    json(&ids.into_iter().map(id_text).collect::<Vec<_>>())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Serialize)]
struct TransferJson<'a> {
    id: String,
    debit: String,
    credit: String,
    amount: String,
    currency: &'a str,
    kind: &'static str,
    pending_id: Option<String>,
    expires_at_ms: Option<i64>,
    timeout_ms: Option<String>,
    code: u16,
    /// Hex, unpacked with `unhex` into a BLOB (JSON strings cannot carry every byte safely).
    user_data: Option<String>,
    timestamp_ms: i64,
}

impl<'a> From<&'a Transfer> for TransferJson<'a> {
    fn from(t: &'a Transfer) -> Self {
        Self {
            id: id_text(t.id.0),
            debit: id_text(t.debit_account_id.0),
            credit: id_text(t.credit_account_id.0),
            amount: amount_text(t.amount),
            currency: &t.currency,
            kind: t.kind.as_str(),
            pending_id: t.pending_id.map(|p| id_text(p.0)),
            expires_at_ms: t.expires_at_ms,
            timeout_ms: t.timeout_ms.map(|m| m.to_string()),
            code: t.code,
            user_data: t.user_data.as_deref().map(|u| hex(u.as_bytes())),
            timestamp_ms: t.timestamp_ms,
        }
    }
}

#[derive(Serialize)]
struct TotalsJson {
    id: String,
    debits_pending: String,
    debits_posted: String,
    credits_pending: String,
    credits_posted: String,
}

impl From<&Account> for TotalsJson {
    fn from(a: &Account) -> Self {
        Self {
            id: id_text(a.id.0),
            debits_pending: amount_text(a.debits_pending),
            debits_posted: amount_text(a.debits_posted),
            credits_pending: amount_text(a.credits_pending),
            credits_posted: amount_text(a.credits_posted),
        }
    }
}

#[derive(Serialize)]
struct PendingJson {
    id: String,
    state: &'static str,
    expires_at_ms: Option<i64>,
}

/// Apply a ledger batch in one `BEGIN IMMEDIATE` transaction.
pub(crate) async fn execute(
    pool: &SqlitePool,
    commands: &[Command<LedgerGuard>],
    now_ms: i64,
) -> Result<Vec<CommandResult<LedgerGuard>>, BackendError> {
    let db = |err: sqlx::Error| backend_error(Dialect::Sqlite, &err);
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.map_err(db)?;
    let guards = guard::before_ledger(&mut Conn::Lite(&mut tx), commands, now_ms).await?;
    let keys = BatchKeys::of(commands);
    let mut snapshot = Snapshot::default();

    if !keys.transfer_ids.is_empty() {
        let ids = ids_json(keys.transfer_ids.iter().map(|id| id.0))?;
        let rows = sqlx::query(SELECT_TRANSFERS)
            .bind(ids)
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
        let rows = sqlx::query(SELECT_ACCOUNTS)
            .bind(ids_json(account_ids.iter().map(|id| id.0))?)
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
        let rows = sqlx::query_as::<_, (String, String)>(SELECT_PENDING)
            .bind(ids_json(pending_ids.iter().map(|id| id.0))?)
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
        &mut Conn::Lite(&mut tx),
        &guards,
        &outcome.results,
        &outcome.pending_updates,
        now_ms,
    )
    .await?;

    if !outcome.new_transfers.is_empty() {
        let rows: Vec<TransferJson<'_>> = outcome.new_transfers.iter().map(Into::into).collect();
        let done = sqlx::query(INSERT_TRANSFERS)
            .bind(json(&rows)?)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        expect_rows("ledger_transfers insert", done.rows_affected(), rows.len())?;
    }
    if !outcome.accounts.is_empty() {
        let rows: Vec<TotalsJson> = outcome.accounts.iter().map(Into::into).collect();
        let done = sqlx::query(UPDATE_ACCOUNTS)
            .bind(json(&rows)?)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        expect_rows("ledger_accounts update", done.rows_affected(), rows.len())?;
    }
    if !outcome.new_pending.is_empty() {
        let rows: Vec<PendingJson> = outcome
            .new_pending
            .iter()
            .map(|(id, state, expires_at_ms)| PendingJson {
                id: id_text(id.0),
                state: state.as_str(),
                expires_at_ms: Some(*expires_at_ms),
            })
            .collect();
        let done = sqlx::query(INSERT_PENDING)
            .bind(json(&rows)?)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        expect_rows("ledger_pending insert", done.rows_affected(), rows.len())?;
    }
    if !outcome.pending_updates.is_empty() {
        let rows: Vec<PendingJson> = outcome
            .pending_updates
            .iter()
            .map(|(id, state)| PendingJson {
                id: id_text(id.0),
                state: state.as_str(),
                expires_at_ms: None,
            })
            .collect();
        let done = sqlx::query(UPDATE_PENDING)
            .bind(json(&rows)?)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        expect_rows("ledger_pending update", done.rows_affected(), rows.len())?;
    }
    tx.commit().await.map_err(db)?;
    Ok(outcome.results)
}

/// Insert the account unless its id exists; true when inserted.
pub(crate) async fn insert_account(
    pool: &SqlitePool,
    new: &NewAccount,
    now_ms: i64,
) -> Result<bool, StoreError> {
    let done = sqlx::query(INSERT_ACCOUNT)
        .bind(id_text(new.id.0))
        .bind(&new.tenant)
        .bind(&new.owner)
        .bind(new.kind.as_str())
        .bind(&new.currency)
        .bind(i64::from(new.flags.bits()))
        .bind(now_ms)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}

pub(crate) async fn account(
    pool: &SqlitePool,
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

pub(crate) async fn accounts(
    pool: &SqlitePool,
    ids: &[AccountId],
) -> Result<Vec<Account>, StoreError> {
    let rows = sqlx::query(SELECT_ACCOUNTS)
        .bind(ids_json(ids.iter().map(|id| id.0))?)
        .fetch_all(pool)
        .await?;
    rows.iter().map(account_from_row).collect()
}

pub(crate) async fn transfer(
    pool: &SqlitePool,
    id: TransferId,
) -> Result<Option<Transfer>, StoreError> {
    let row = sqlx::query(SELECT_TRANSFER)
        .bind(id_text(id.0))
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(transfer_from_row).transpose()
}

pub(crate) async fn pending_state(
    pool: &SqlitePool,
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
    pool: &SqlitePool,
    account_id: AccountId,
    cursor: Option<Cursor>,
    limit: u32,
) -> Result<Page, StoreError> {
    let sql = if cursor.is_some() {
        HISTORY_AFTER
    } else {
        HISTORY_FIRST
    };
    let (timestamp_ms, id) = cursor.map_or((0, String::new()), |c| {
        (c.timestamp_ms(), id_text(c.id().0))
    });
    let rows = sqlx::query(sql)
        .bind(id_text(account_id.0))
        .bind(timestamp_ms)
        .bind(id)
        .bind(i64::from(limit) + 1)
        .fetch_all(pool)
        .await?;
    let transfers = rows
        .iter()
        .map(transfer_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Page::from_rows(transfers, limit))
}

pub(crate) async fn due_pending(
    pool: &SqlitePool,
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

/// Stream the whole ledger through the checker from one read snapshot (a WAL read transaction).
pub(crate) async fn check(pool: &SqlitePool) -> Result<CheckReport, StoreError> {
    let mut tx = pool.begin().await?;
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
