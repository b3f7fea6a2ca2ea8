//! `turnpike-store`: Turnpike's ledger on SQLite (embedded default) and PostgreSQL
//! (production, shared by every replica), behind one [`Store`] type that passes one test suite
//! on both.
//!
//! - [`Store`] implements [`turnpike_ledger::LedgerBackend`]: the posting engine's batches run
//!   as one transaction each (load, lock, apply the pure ledger rules, write, commit), with a
//!   constant number of statements per batch whatever its size.
//! - [`Store::check`] verifies the ledger's invariants over the whole database.
//! - [`spawn_expiry_sweeper`] expires pending transfers when they are due.
//! - Migrations (`migrations/{sqlite,postgres}`) are embedded and applied at open.
//!
//! Money is `u128` minor units everywhere: `NUMERIC(39,0)` on PostgreSQL (bound and read as
//! text), canonical decimal TEXT on SQLite. No floats, and no sums in SQL.

/// Run one body on whichever pool the store has (the same SQL text on both databases).
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.db {
            Db::Sqlite($pool) => $body,
            Db::Postgres($pool) => $body,
        }
    };
}

mod agents;
mod check;
mod deliveries;
mod deposits;
mod error;
mod guard;
mod history;
mod merchant;
mod migrate;
mod postgres;
mod rails;
mod rows;
mod spend_guard;
mod sqlite;
mod sweeper;
#[cfg(feature = "test-support")]
pub mod testing;
mod wallets;

use std::path::Path;
use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{PgPool, SqlitePool};
use turnpike_ledger::{
    Account, AccountId, BackendError, Command, CommandResult, LedgerBackend, NewAccount,
    PendingState, Transfer, TransferError, TransferId, model::is_valid_currency,
};

pub use agents::{
    AgentRow, AgentTokenRow, ApprovalRow, AuditFilter, AuditRow, Decided, PolicyRow, SpendRow,
};
pub use check::{CheckReport, Phase, Total, VIOLATIONS_LISTED_MAX, Violation};
pub use deliveries::DeliveryRow;
pub use deposits::{CursorStart, DepositAddressRow, DepositConfigRow, DepositRow};
pub use error::StoreError;
pub use guard::{GuardRefusal, LedgerGuard, RefundDueGuard, RefundGuard, SettleGuard, StoreEngine};
pub use history::{Cursor, HISTORY_PAGE_LIMIT_MAX, Page};
pub use merchant::{
    ApiKeyRow, BindingSecretRow, Idempotency, LIST_LIMIT_MAX, PaymentRow, PriceRow, Revocation,
    TenantConflict, TenantRow,
};
pub use rails::{Owed, PaymentRefund, RailConfigRow, UnsettledPayment};
pub use spend_guard::{SpendDenial, SpendGuard, lineage_within};
pub use sweeper::{
    EXPIRE_BATCH_MAX, SWEEP_INTERVAL_MIN, Sweep, SweepError, spawn_expiry_sweeper, sweep_once,
};
pub use wallets::PayerWalletRow;

/// Most pending transfers listed by one [`Store::due_pending`] call.
pub const DUE_PENDING_LIMIT_MAX: u32 = 10_000;
/// Most accounts looked up by one [`Store::accounts`] call.
pub const ACCOUNTS_LOOKUP_MAX: usize = 10_000;

/// Which database a [`Store`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Database {
    /// SQLite, one file.
    Sqlite,
    /// PostgreSQL (or a compatible distributed SQL database).
    Postgres,
}

/// The ledger's storage. Cheap to clone (a handle on a connection pool).
#[derive(Debug, Clone)]
pub struct Store {
    db: Db,
}

#[derive(Debug, Clone)]
enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl Store {
    /// Open the database a URL names (`sqlite:PATH[?mode=...]`, `postgres://...` or
    /// `postgresql://...`) and apply the migrations.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)
                .map_err(|_| StoreError::Database("invalid sqlite url".to_owned()))?;
            Self::open_sqlite_with(options).await
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Self::open_postgres(url).await
        } else {
            Err(StoreError::UnsupportedUrl)
        }
    }

    /// Open (creating it if needed) the SQLite file at `path` and apply the migrations.
    pub async fn open_sqlite(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_sqlite_with(SqliteConnectOptions::new().filename(path)).await
    }

    async fn open_sqlite_with(options: SqliteConnectOptions) -> Result<Self, StoreError> {
        let store = Self {
            db: Db::Sqlite(sqlite::open(options, sqlite::POOL_CONNECTIONS_MAX).await?),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Connect to PostgreSQL and apply the migrations.
    pub async fn open_postgres(url: &str) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|_| StoreError::Database("invalid postgres url".to_owned()))?;
        let store = Self {
            db: Db::Postgres(postgres::open(options, postgres::POOL_CONNECTIONS_MAX).await?),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// A second store on the same database with its own connections, for a task that runs on
    /// another Tokio runtime (a connection belongs to the runtime that opened it). An in-memory
    /// SQLite database cannot be shared: that store is returned as is.
    pub async fn reconnect(&self) -> Result<Self, StoreError> {
        self.reconnect_with(None).await
    }

    /// Like [`Store::reconnect`], with a single connection: for the ledger engine's writer,
    /// which runs one batch at a time. Its one connection keeps its caches warm from batch to
    /// batch (SQLite's page cache, which another connection's commit would empty; PostgreSQL's
    /// prepared statements and plans), where a pool would hand each batch the least recently
    /// used connection.
    pub async fn reconnect_writer(&self) -> Result<Self, StoreError> {
        self.reconnect_with(Some(1)).await
    }

    async fn reconnect_with(&self, connections: Option<u32>) -> Result<Self, StoreError> {
        let db = match &self.db {
            Db::Sqlite(pool) => {
                let options = (*pool.connect_options()).clone();
                if options.get_filename().as_os_str() == ":memory:" {
                    return Ok(self.clone());
                }
                let n = connections.unwrap_or(sqlite::POOL_CONNECTIONS_MAX);
                Db::Sqlite(sqlite::open(options, n).await?)
            }
            Db::Postgres(pool) => {
                let n = connections.unwrap_or(postgres::POOL_CONNECTIONS_MAX);
                Db::Postgres(postgres::open((*pool.connect_options()).clone(), n).await?)
            }
        };
        Ok(Self { db })
    }

    /// The database this store runs on.
    pub fn database(&self) -> Database {
        match self.db {
            Db::Sqlite(_) => Database::Sqlite,
            Db::Postgres(_) => Database::Postgres,
        }
    }

    /// Apply the migrations not yet applied (idempotent).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match &self.db {
            Db::Sqlite(pool) => migrate::sqlite(pool).await,
            Db::Postgres(pool) => migrate::postgres(pool).await,
        }
    }

    /// Close the connections (waits for those in use to be returned).
    pub async fn close(&self) {
        match &self.db {
            Db::Sqlite(pool) => pool.close().await,
            Db::Postgres(pool) => pool.close().await,
        }
    }

    /// Create an account with zero totals. Idempotent: the same fields again return the
    /// existing account; other fields under the same id are refused with
    /// `AccountExistsWithDifferentFields`.
    pub async fn create_account(
        &self,
        new: NewAccount,
        now_ms: i64,
    ) -> Result<Result<Account, TransferError>, StoreError> {
        if new.id.0 == 0 {
            return Ok(Err(TransferError::IdMustNotBeZero));
        }
        if !is_valid_currency(&new.currency) {
            return Ok(Err(TransferError::InvalidCurrency));
        }
        let inserted = match &self.db {
            Db::Sqlite(pool) => sqlite::insert_account(pool, &new, now_ms).await?,
            Db::Postgres(pool) => postgres::insert_account(pool, &new, now_ms).await?,
        };
        if inserted {
            return Ok(Ok(Account::open(new, now_ms)));
        }
        // Accounts are never deleted: the row that won the insert is there.
        let existing = self
            .account(None, new.id)
            .await?
            .ok_or(StoreError::Corrupt {
                table: "ledger_accounts",
                reason: "conflicting account row vanished",
            })?;
        Ok(if existing.matches(&new) {
            Ok(existing)
        } else {
            Err(TransferError::AccountExistsWithDifferentFields)
        })
    }

    /// An account and its totals; with `tenant`, only if it belongs to that tenant.
    pub async fn account(
        &self,
        tenant: Option<&str>,
        id: AccountId,
    ) -> Result<Option<Account>, StoreError> {
        match &self.db {
            Db::Sqlite(pool) => sqlite::account(pool, tenant, id).await,
            Db::Postgres(pool) => postgres::account(pool, tenant, id).await,
        }
    }

    /// The accounts among `ids` that exist, ordered by id.
    pub async fn accounts(&self, ids: &[AccountId]) -> Result<Vec<Account>, StoreError> {
        let mut found = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(ACCOUNTS_LOOKUP_MAX) {
            found.extend(match &self.db {
                Db::Sqlite(pool) => sqlite::accounts(pool, chunk).await?,
                Db::Postgres(pool) => postgres::accounts(pool, chunk).await?,
            });
        }
        found.sort_by_key(|a| a.id);
        found.dedup_by_key(|a| a.id);
        Ok(found)
    }

    /// One transfer by id.
    pub async fn transfer(&self, id: TransferId) -> Result<Option<Transfer>, StoreError> {
        match &self.db {
            Db::Sqlite(pool) => sqlite::transfer(pool, id).await,
            Db::Postgres(pool) => postgres::transfer(pool, id).await,
        }
    }

    /// The state of a pending transfer (`None` if `id` is not a pending transfer).
    pub async fn pending_state(&self, id: TransferId) -> Result<Option<PendingState>, StoreError> {
        match &self.db {
            Db::Sqlite(pool) => sqlite::pending_state(pool, id).await,
            Db::Postgres(pool) => postgres::pending_state(pool, id).await,
        }
    }

    /// An account's transfers, newest first by `(timestamp_ms, id)`, `limit` (at most
    /// [`HISTORY_PAGE_LIMIT_MAX`]) per page; pass the previous page's `next_cursor` for the next.
    pub async fn account_history(
        &self,
        account_id: AccountId,
        cursor: Option<Cursor>,
        limit: u32,
    ) -> Result<Page, StoreError> {
        let limit = history::page_limit(limit);
        match &self.db {
            Db::Sqlite(pool) => sqlite::account_history(pool, account_id, cursor, limit).await,
            Db::Postgres(pool) => postgres::account_history(pool, account_id, cursor, limit).await,
        }
    }

    /// Pending transfers still pending whose expiry is at or before `now_ms`, soonest first, at
    /// most `limit` (capped at [`DUE_PENDING_LIMIT_MAX`]).
    pub async fn due_pending(
        &self,
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<TransferId>, StoreError> {
        let limit = limit.clamp(1, DUE_PENDING_LIMIT_MAX);
        match &self.db {
            Db::Sqlite(pool) => sqlite::due_pending(pool, now_ms, limit).await,
            Db::Postgres(pool) => postgres::due_pending(pool, now_ms, limit).await,
        }
    }

    /// Verify the ledger's invariants over the whole database, from one consistent snapshot.
    pub async fn check(&self) -> Result<CheckReport, StoreError> {
        match &self.db {
            Db::Sqlite(pool) => sqlite::check(pool).await,
            Db::Postgres(pool) => postgres::check(pool).await,
        }
    }
}

impl LedgerBackend<LedgerGuard> for Store {
    async fn execute(
        &self,
        commands: &[Command<LedgerGuard>],
        now_ms: i64,
    ) -> Result<Vec<CommandResult<LedgerGuard>>, BackendError> {
        match &self.db {
            Db::Sqlite(pool) => sqlite::execute(pool, commands, now_ms).await,
            Db::Postgres(pool) => postgres::execute(pool, commands, now_ms).await,
        }
    }
}
