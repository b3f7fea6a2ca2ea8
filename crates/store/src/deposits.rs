//! Deposits: the operator's deposit configuration per method, each tenant's deposit address (its
//! key sealed by the caller), the chain watcher's cursor per chain, and the credited deposits.
//!
//! A deposit row is written by the ledger transaction that credits it
//! ([`crate::LedgerGuard::Deposit`]): its primary key `(chain_id, tx_hash, log_index)` makes a
//! second credit of the same log impossible, on any replica, before or after a restart.

use crate::error::StoreError;
use crate::merchant::LIST_LIMIT_MAX;
use crate::{Db, Store};

/// The operator's deposit configuration of one method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DepositConfigRow {
    /// The method (`evm`).
    pub method: String,
    /// Settings (JSON).
    pub settings: String,
    /// Bumped on every change.
    pub version: i64,
    /// Unix ms.
    pub updated_at: i64,
}

/// A tenant's deposit address on one method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DepositAddressRow {
    /// The tenant it credits.
    pub tenant_id: String,
    /// The method (`evm`).
    pub method: String,
    /// The address (EIP-55 checksummed for `evm`).
    pub address: String,
    /// Its private key, sealed (never returned).
    pub sealed: String,
    /// Unix ms.
    pub created_at: i64,
}

/// One credited deposit: one token transfer log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DepositRow {
    /// EIP-155 chain id.
    pub chain_id: i64,
    /// The transaction (`0x` + 64 hex digits).
    pub tx_hash: String,
    /// The log's index in its block.
    pub log_index: i64,
    /// The tenant credited.
    pub tenant_id: String,
    /// The method (`evm`).
    pub method: String,
    /// The block that includes it.
    pub block_number: i64,
    /// The token contract.
    pub token: String,
    /// Who sent it.
    pub sender: String,
    /// The deposit address it was sent to.
    pub address: String,
    /// The ledger currency credited.
    pub currency: String,
    /// Minor units, canonical decimal.
    pub amount: String,
    /// The ledger transfer that credited it.
    pub transfer_id: String,
    /// Unix ms.
    pub credited_at: i64,
}

type DepositTuple = (
    i64,
    String,
    i64,
    String,
    String,
    i64,
    String,
    String,
    String,
    String,
    String,
    String,
    i64,
);

const DEPOSIT_COLUMNS: &str = "chain_id, tx_hash, log_index, tenant_id, method, block_number, \
     token, sender, address, currency, amount, transfer_id, credited_at";

fn deposit(t: DepositTuple) -> DepositRow {
    DepositRow {
        chain_id: t.0,
        tx_hash: t.1,
        log_index: t.2,
        tenant_id: t.3,
        method: t.4,
        block_number: t.5,
        token: t.6,
        sender: t.7,
        address: t.8,
        currency: t.9,
        amount: t.10,
        transfer_id: t.11,
        credited_at: t.12,
    }
}

/// Insert a deposit row unless its log is credited already (used by the ledger guard).
pub(crate) const INSERT_DEPOSIT: &str = "INSERT INTO deposits (chain_id, tx_hash, log_index, \
     tenant_id, method, block_number, token, sender, address, currency, amount, transfer_id, \
     credited_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
     ON CONFLICT DO NOTHING";
/// Remove a deposit row whose transfer failed (used by the ledger guard).
pub(crate) const DELETE_DEPOSIT: &str =
    "DELETE FROM deposits WHERE chain_id = $1 AND tx_hash = $2 AND log_index = $3";

/// Where the watcher of a chain starts when the configuration is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CursorStart {
    /// Start at this block unless the chain has a cursor already (then keep it).
    IfNew(i64),
    /// Scan again from this block (credited logs are never credited twice).
    Reset(i64),
}

impl Store {
    /// Store the deposit configuration of `method` and the cursor of `chain_id`, in one
    /// transaction; returns the configuration's new version.
    pub async fn put_deposit_config(
        &self,
        method: &str,
        settings: &str,
        chain_id: i64,
        start: CursorStart,
        now_ms: i64,
    ) -> Result<i64, StoreError> {
        const UPSERT: &str = "INSERT INTO deposit_configs (method, settings, version, updated_at) \
             VALUES ($1, $2, 1, $3) ON CONFLICT (method) DO UPDATE SET \
             settings = excluded.settings, version = deposit_configs.version + 1, \
             updated_at = excluded.updated_at RETURNING version";
        let cursor = match start {
            CursorStart::IfNew(_) => {
                "INSERT INTO deposit_cursors (method, chain_id, next_block, updated_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (method, chain_id) DO NOTHING"
            }
            CursorStart::Reset(_) => {
                "INSERT INTO deposit_cursors (method, chain_id, next_block, updated_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (method, chain_id) DO UPDATE SET \
                 next_block = excluded.next_block, updated_at = excluded.updated_at"
            }
        };
        let (CursorStart::IfNew(block) | CursorStart::Reset(block)) = start;
        let version = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let (version,): (i64,) = sqlx::query_as(UPSERT)
                .bind(method).bind(settings).bind(now_ms)
                .fetch_one(&mut *tx).await?;
            sqlx::query(cursor)
                .bind(method).bind(chain_id).bind(block).bind(now_ms)
                .execute(&mut *tx).await?;
            tx.commit().await?;
            version
        });
        Ok(version)
    }

    /// The deposit configuration of `method`.
    pub async fn deposit_config(
        &self,
        method: &str,
    ) -> Result<Option<DepositConfigRow>, StoreError> {
        let row: Option<(String, String, i64, i64)> = on_pool!(self, pool => sqlx::query_as(
            "SELECT method, settings, version, updated_at FROM deposit_configs WHERE method = $1")
            .bind(method).fetch_optional(pool).await?);
        Ok(row.map(|r| DepositConfigRow {
            method: r.0,
            settings: r.1,
            version: r.2,
            updated_at: r.3,
        }))
    }

    /// Insert a tenant's deposit address unless it has one for `method` already; then return
    /// the one it has (the first writer wins when two requests race).
    pub async fn ensure_deposit_address(
        &self,
        row: &DepositAddressRow,
    ) -> Result<(DepositAddressRow, bool), StoreError> {
        let inserted = on_pool!(self, pool => sqlx::query(
            "INSERT INTO deposit_addresses (tenant_id, method, address, sealed, created_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING")
            .bind(&row.tenant_id).bind(&row.method).bind(&row.address).bind(&row.sealed)
            .bind(row.created_at).execute(pool).await?.rows_affected())
            == 1;
        let stored = self
            .deposit_address(&row.tenant_id, &row.method)
            .await?
            .ok_or(StoreError::Corrupt {
                table: "deposit_addresses",
                reason: "the address row vanished after its insert",
            })?;
        Ok((stored, inserted))
    }

    /// A tenant's deposit address on `method`.
    pub async fn deposit_address(
        &self,
        tenant_id: &str,
        method: &str,
    ) -> Result<Option<DepositAddressRow>, StoreError> {
        let row: Option<(String, String, String, String, i64)> = on_pool!(self, pool =>
            sqlx::query_as(
                "SELECT tenant_id, method, address, sealed, created_at FROM deposit_addresses \
                 WHERE tenant_id = $1 AND method = $2")
            .bind(tenant_id).bind(method).fetch_optional(pool).await?);
        Ok(row.map(|r| DepositAddressRow {
            tenant_id: r.0,
            method: r.1,
            address: r.2,
            sealed: r.3,
            created_at: r.4,
        }))
    }

    /// The deposit addresses of `method` after `after` (by address), at most `limit`:
    /// `(address, tenant id)` pairs, for the watcher to page through.
    pub async fn deposit_addresses_page(
        &self,
        method: &str,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let rows: Vec<(String, String)> = on_pool!(self, pool => sqlx::query_as(
            "SELECT address, tenant_id FROM deposit_addresses \
             WHERE method = $1 AND address > $2 ORDER BY address LIMIT $3")
            .bind(method).bind(after.unwrap_or("")).bind(limit.max(1))
            .fetch_all(pool).await?);
        Ok(rows)
    }

    /// The next block the watcher scans on `chain_id`.
    pub async fn deposit_cursor(
        &self,
        method: &str,
        chain_id: i64,
    ) -> Result<Option<i64>, StoreError> {
        let row: Option<(i64,)> = on_pool!(self, pool => sqlx::query_as(
            "SELECT next_block FROM deposit_cursors WHERE method = $1 AND chain_id = $2")
            .bind(method).bind(chain_id).fetch_optional(pool).await?);
        Ok(row.map(|(b,)| b))
    }

    /// Move the cursor of `chain_id` from `from` to `to`; false when it is not at `from` any
    /// more (another replica moved it, or the operator reset it): nothing changes then.
    pub async fn advance_deposit_cursor(
        &self,
        method: &str,
        chain_id: i64,
        from: i64,
        to: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let done = on_pool!(self, pool => sqlx::query(
            "UPDATE deposit_cursors SET next_block = $4, updated_at = $5 \
             WHERE method = $1 AND chain_id = $2 AND next_block = $3")
            .bind(method).bind(chain_id).bind(from).bind(to).bind(now_ms)
            .execute(pool).await?.rows_affected());
        Ok(done == 1)
    }

    /// A tenant's credited deposits, newest first, at most `limit` (capped at
    /// [`LIST_LIMIT_MAX`]).
    pub async fn deposits(
        &self,
        tenant_id: &str,
        limit: i64,
    ) -> Result<Vec<DepositRow>, StoreError> {
        let sql = format!(
            "SELECT {DEPOSIT_COLUMNS} FROM deposits WHERE tenant_id = $1 \
             ORDER BY credited_at DESC, block_number DESC, log_index DESC LIMIT $2"
        );
        let rows: Vec<DepositTuple> = on_pool!(self, pool =>
            sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(tenant_id)
                .bind(limit.clamp(1, LIST_LIMIT_MAX)).fetch_all(pool).await?);
        Ok(rows.into_iter().map(deposit).collect())
    }
}
