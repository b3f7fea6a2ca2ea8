//! Schema migrations, one set per database, embedded in the binary with `include_str!` (no
//! proc macro, no files needed at run time) and applied by sqlx's runtime [`Migrator`].
//!
//! The migrator's advisory lock is off (CockroachDB and YugabyteDB may not offer advisory
//! locks). Replicas starting together may race to apply a migration: the loser's transaction
//! fails and is retried, and then finds the migration applied. Rolling out a new migration
//! across running replicas is still best done once, with `turnpike migrate`.

use std::borrow::Cow;
use std::time::Duration;

use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};

use crate::error::StoreError;

/// (version, description, SQL) of every SQLite migration, in order.
const SQLITE: &[(i64, &str, &str)] = &[
    (
        1,
        "ledger",
        include_str!("../../../migrations/sqlite/0001_ledger.sql"),
    ),
    (
        2,
        "merchant",
        include_str!("../../../migrations/sqlite/0002_merchant.sql"),
    ),
    (
        3,
        "collation",
        include_str!("../../../migrations/sqlite/0003_collation.sql"),
    ),
    (
        4,
        "spend controls",
        include_str!("../../../migrations/sqlite/0004_spend_controls.sql"),
    ),
    (
        5,
        "spend usage index",
        include_str!("../../../migrations/sqlite/0005_spend_usage_index.sql"),
    ),
    (
        6,
        "rails",
        include_str!("../../../migrations/sqlite/0006_rails.sql"),
    ),
    (
        7,
        "payer wallets",
        include_str!("../../../migrations/sqlite/0007_payer_wallets.sql"),
    ),
    (
        8,
        "deposits",
        include_str!("../../../migrations/sqlite/0008_deposits.sql"),
    ),
    (
        9,
        "refund due",
        include_str!("../../../migrations/sqlite/0009_refund_due.sql"),
    ),
    (
        10,
        "receipt owed",
        include_str!("../../../migrations/sqlite/0010_receipt_owed.sql"),
    ),
    (
        11,
        "ledger write path",
        include_str!("../../../migrations/sqlite/0011_ledger_write_path.sql"),
    ),
    (
        12,
        "unique realms",
        include_str!("../../../migrations/sqlite/0012_unique_realms.sql"),
    ),
    (
        13,
        "gateway deliveries",
        include_str!("../../../migrations/sqlite/0013_gateway_deliveries.sql"),
    ),
];

/// (version, description, SQL) of every PostgreSQL migration, in order.
const POSTGRES: &[(i64, &str, &str)] = &[
    (
        1,
        "ledger",
        include_str!("../../../migrations/postgres/0001_ledger.sql"),
    ),
    (
        2,
        "merchant",
        include_str!("../../../migrations/postgres/0002_merchant.sql"),
    ),
    (
        3,
        "collation",
        include_str!("../../../migrations/postgres/0003_collation.sql"),
    ),
    (
        4,
        "spend controls",
        include_str!("../../../migrations/postgres/0004_spend_controls.sql"),
    ),
    (
        5,
        "spend usage index",
        include_str!("../../../migrations/postgres/0005_spend_usage_index.sql"),
    ),
    (
        6,
        "rails",
        include_str!("../../../migrations/postgres/0006_rails.sql"),
    ),
    (
        7,
        "payer wallets",
        include_str!("../../../migrations/postgres/0007_payer_wallets.sql"),
    ),
    (
        8,
        "deposits",
        include_str!("../../../migrations/postgres/0008_deposits.sql"),
    ),
    (
        9,
        "refund due",
        include_str!("../../../migrations/postgres/0009_refund_due.sql"),
    ),
    (
        10,
        "receipt owed",
        include_str!("../../../migrations/postgres/0010_receipt_owed.sql"),
    ),
    (
        11,
        "ledger write path",
        include_str!("../../../migrations/postgres/0011_ledger_write_path.sql"),
    ),
    (
        12,
        "unique realms",
        include_str!("../../../migrations/postgres/0012_unique_realms.sql"),
    ),
    (
        13,
        "gateway deliveries",
        include_str!("../../../migrations/postgres/0013_gateway_deliveries.sql"),
    ),
];

/// Attempts at applying migrations when a concurrent migrator got there first.
const ATTEMPTS_MAX: u32 = 3;
const RETRY_DELAY: Duration = Duration::from_millis(250);

fn migrator(set: &'static [(i64, &'static str, &'static str)]) -> Migrator {
    let migrations = set
        .iter()
        .map(|(version, description, sql)| {
            Migration::new(
                *version,
                Cow::Borrowed(*description),
                MigrationType::Simple,
                sql.into_sql_str(),
                false,
            )
        })
        .collect();
    let mut migrator = Migrator::with_migrations(migrations);
    migrator.set_locking(false);
    migrator
}

async fn with_retries<F, Fut>(mut run: F) -> Result<(), StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), sqlx::migrate::MigrateError>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        match run().await {
            Ok(()) => return Ok(()),
            Err(err) if attempt < ATTEMPTS_MAX => {
                tracing::warn!(attempt, error = %err, "migration failed; retrying");
                tokio::time::sleep(RETRY_DELAY).await;
            }
            Err(err) => return Err(StoreError::Migrate(err.to_string())),
        }
    }
}

pub(crate) async fn sqlite(pool: &sqlx::SqlitePool) -> Result<(), StoreError> {
    let migrator = migrator(SQLITE);
    with_retries(|| migrator.run(pool)).await
}

pub(crate) async fn postgres(pool: &sqlx::PgPool) -> Result<(), StoreError> {
    let migrator = migrator(POSTGRES);
    with_retries(|| migrator.run(pool)).await
}
