//! The store's error type and the mapping of database errors to the ledger engine's
//! [`BackendError`]: retryable conflicts versus everything else.
//!
//! Messages never carry bound values (amounts, user data, tenant names): a database error is
//! described by its SQLSTATE / result code, constraint and table, and by the server's message
//! only where that message cannot quote a value.

use turnpike_ledger::BackendError;

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The URL names no supported database.
    #[error("unsupported database url: expected `sqlite:...` or `postgres://...`")]
    UnsupportedUrl,
    /// The database failed (description without bound values).
    #[error("database error: {0}")]
    Database(String),
    /// Applying the migrations failed.
    #[error("migration failed: {0}")]
    Migrate(String),
    /// A stored row could not be read back as a ledger value.
    #[error("corrupt row in {table}: {reason}")]
    Corrupt {
        /// Table read.
        table: &'static str,
        /// What was wrong (no values).
        reason: &'static str,
    },
    /// A history cursor that this store did not issue.
    #[error("invalid history cursor")]
    InvalidCursor,
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        Self::Database(describe(&err))
    }
}

impl From<StoreError> for BackendError {
    fn from(err: StoreError) -> Self {
        BackendError::Storage(err.to_string())
    }
}

/// Constraints whose unique violation means another replica wrote the same row first: the
/// batch is retried and then sees that row (an idempotent retry or a resolved pending transfer).
const RACE_CONSTRAINTS: [&str; 3] = [
    "ledger_transfers_pkey",
    "ledger_transfers_pending_id_key",
    "ledger_pending_pkey",
];

/// PostgreSQL SQLSTATEs that mean "retry the transaction".
const PG_RETRYABLE: [&str; 2] = [
    "40001", // serialization_failure (also CockroachDB's restart errors)
    "40P01", // deadlock_detected
];

/// SQLite primary result codes that mean "another connection holds the lock".
const SQLITE_BUSY: i64 = 5;
const SQLITE_LOCKED: i64 = 6;

/// Which database produced an error (their codes overlap in form but not in meaning).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

/// Map a database error met while applying a ledger batch.
pub(crate) fn backend_error(dialect: Dialect, err: &sqlx::Error) -> BackendError {
    if is_conflict(dialect, err) {
        BackendError::Conflict(describe(err))
    } else {
        BackendError::Storage(describe(err))
    }
}

fn is_conflict(dialect: Dialect, err: &sqlx::Error) -> bool {
    let Some(db) = err.as_database_error() else {
        return false;
    };
    let code = db.code();
    let code = code.as_deref().unwrap_or_default();
    match dialect {
        Dialect::Postgres => {
            PG_RETRYABLE.contains(&code)
                || (code == "23505"
                    && db
                        .constraint()
                        .is_some_and(|c| RACE_CONSTRAINTS.contains(&c)))
        }
        Dialect::Sqlite => code
            .parse::<i64>()
            .is_ok_and(|extended| matches!(extended & 0xff, SQLITE_BUSY | SQLITE_LOCKED)),
    }
}

/// A description of `err` that quotes no bound value.
pub(crate) fn describe(err: &sqlx::Error) -> String {
    match err {
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            let mut out = format!("code {code}");
            if let Some(constraint) = db.constraint() {
                out.push_str(&format!(", constraint {constraint}"));
            }
            if let Some(table) = db.table() {
                out.push_str(&format!(", table {table}"));
            }
            // PostgreSQL classes 22 (data exception) and 23 (integrity constraint) may quote
            // the offending value in their message; the others name objects, not values.
            // SQLite's messages name columns and constraints only.
            let postgres = db
                .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                .is_some();
            if !(postgres && (code.starts_with("22") || code.starts_with("23"))) {
                out.push_str(": ");
                out.push_str(db.message());
            }
            out
        }
        sqlx::Error::Io(io) => format!("i/o error: {}", io.kind()),
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::RowNotFound
        | sqlx::Error::BeginFailed
        | sqlx::Error::InvalidSavePointStatement
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::TypeNotFound { .. } => err.to_string(),
        sqlx::Error::ColumnDecode { index, .. } => format!("cannot decode column {index}"),
        sqlx::Error::Tls(_) => "tls error".to_owned(),
        sqlx::Error::Protocol(_) => "protocol error".to_owned(),
        sqlx::Error::Configuration(_) => "invalid connection configuration".to_owned(),
        sqlx::Error::Migrate(m) => format!("migration: {m}"),
        _ => "database driver error".to_owned(),
    }
}

/// A write that touched another number of rows than the batch computed: something else changed
/// the rows under the lock. Nothing is committed.
pub(crate) fn expect_rows(what: &str, affected: u64, expected: usize) -> Result<(), BackendError> {
    if usize::try_from(affected).ok() == Some(expected) {
        Ok(())
    } else {
        Err(BackendError::Storage(format!(
            "{what}: {affected} rows written, {expected} expected"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_database_errors_are_storage_errors() {
        let err = sqlx::Error::PoolTimedOut;
        assert!(matches!(
            backend_error(Dialect::Postgres, &err),
            BackendError::Storage(_)
        ));
        assert!(matches!(
            backend_error(Dialect::Sqlite, &err),
            BackendError::Storage(_)
        ));
    }
}
