//! Payer wallets: an organisation's own wallet on an outside rail (`PUT /v1/wallets/{method}`),
//! with which its agents answer that rail's challenges. The key is stored sealed; the store never
//! sees it in the clear.

use crate::error::StoreError;
use crate::{Db, Store};

/// An organisation's wallet on one rail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayerWalletRow {
    /// The paying tenant.
    pub tenant_id: String,
    /// The MPP method (`evm`).
    pub method: String,
    /// The wallet's public address.
    pub address: String,
    /// Public settings (JSON).
    pub settings: String,
    /// The sealed private key.
    pub sealed: String,
    /// Bumped on every change.
    pub version: i64,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms.
    pub updated_at: i64,
}

type WalletTuple = (String, String, String, String, String, i64, i64, i64);

const WALLET_COLUMNS: &str =
    "tenant_id, method, address, settings, sealed, version, created_at, updated_at";

fn wallet(t: WalletTuple) -> PayerWalletRow {
    PayerWalletRow {
        tenant_id: t.0,
        method: t.1,
        address: t.2,
        settings: t.3,
        sealed: t.4,
        version: t.5,
        created_at: t.6,
        updated_at: t.7,
    }
}

impl Store {
    /// Create or replace a tenant's wallet on `row.method` (`version`, `created_at` are kept on
    /// a replace); returns the stored row.
    pub async fn put_payer_wallet(
        &self,
        row: &PayerWalletRow,
    ) -> Result<PayerWalletRow, StoreError> {
        let sql = format!(
            "INSERT INTO payer_wallets ({WALLET_COLUMNS}) VALUES ($1, $2, $3, $4, $5, 1, $6, $6) \
             ON CONFLICT (tenant_id, method) DO UPDATE SET address = excluded.address, \
             settings = excluded.settings, sealed = excluded.sealed, \
             version = payer_wallets.version + 1, updated_at = excluded.updated_at \
             RETURNING {WALLET_COLUMNS}"
        );
        let stored: WalletTuple = on_pool!(self, pool =>
            sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(&row.tenant_id).bind(&row.method).bind(&row.address).bind(&row.settings)
                .bind(&row.sealed).bind(row.updated_at)
                .fetch_one(pool).await?);
        Ok(wallet(stored))
    }

    /// A tenant's wallet on `method`.
    pub async fn payer_wallet(
        &self,
        tenant_id: &str,
        method: &str,
    ) -> Result<Option<PayerWalletRow>, StoreError> {
        let sql = format!(
            "SELECT {WALLET_COLUMNS} FROM payer_wallets WHERE tenant_id = $1 AND method = $2"
        );
        let row: Option<WalletTuple> = on_pool!(self, pool =>
            sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(tenant_id).bind(method)
                .fetch_optional(pool).await?);
        Ok(row.map(wallet))
    }

    /// Remove a tenant's wallet on `method`; false when there was none.
    pub async fn delete_payer_wallet(
        &self,
        tenant_id: &str,
        method: &str,
    ) -> Result<bool, StoreError> {
        let done = on_pool!(self, pool => sqlx::query(
            "DELETE FROM payer_wallets WHERE tenant_id = $1 AND method = $2")
            .bind(tenant_id).bind(method).execute(pool).await?.rows_affected());
        Ok(done == 1)
    }
}
