//! Rail configurations and payments settled on outside rails: the claim before submission, the
//! record of what was submitted, and the resolver's work list. Booking a settled payment goes
//! through the ledger with [`crate::LedgerGuard::Settle`].

use crate::error::StoreError;
use crate::merchant::{PAYMENT_COLUMNS, PaymentRow, PaymentTuple, payment};
use crate::{Db, Store};

/// A tenant's configuration of one rail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RailConfigRow {
    /// The tenant.
    pub tenant_id: String,
    /// The MPP method (`evm`, ...).
    pub method: String,
    /// Public settings (JSON).
    pub settings: String,
    /// Sealed secrets, if any.
    pub sealed: Option<String>,
    /// Bumped on every change.
    pub version: i64,
    /// Unix ms.
    pub updated_at: i64,
}

type RailTuple = (String, String, String, Option<String>, i64, i64);

fn rail(t: RailTuple) -> RailConfigRow {
    RailConfigRow {
        tenant_id: t.0,
        method: t.1,
        settings: t.2,
        sealed: t.3,
        version: t.4,
        updated_at: t.5,
    }
}

const RAIL_COLUMNS: &str = "tenant_id, method, settings, sealed, version, updated_at";

/// A payment not settled yet, with what its rail recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsettledPayment {
    /// The payment (`claimed` or `pending`).
    pub payment: PaymentRow,
    /// The rail's record of the submission (JSON), once prepared.
    pub settlement: Option<String>,
}

/// What an outside-rail payment owed back on chain records: who paid, and the merchant's refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentRefund {
    /// The paying address (EIP-55), when the rail knew it.
    pub payer_address: Option<String>,
    /// The merchant's refund transaction, once recorded.
    pub refund_reference: Option<String>,
}

impl Store {
    /// Create or replace a tenant's configuration of `method`; returns its new version.
    pub async fn put_rail_config(
        &self,
        tenant_id: &str,
        method: &str,
        settings: &str,
        sealed: Option<&str>,
        now_ms: i64,
    ) -> Result<i64, StoreError> {
        let (version,): (i64,) = on_pool!(self, pool => sqlx::query_as(
            "INSERT INTO rail_configs (tenant_id, method, settings, sealed, version, updated_at) \
             VALUES ($1, $2, $3, $4, 1, $5) \
             ON CONFLICT (tenant_id, method) DO UPDATE SET settings = excluded.settings, \
             sealed = excluded.sealed, version = rail_configs.version + 1, \
             updated_at = excluded.updated_at RETURNING version")
            .bind(tenant_id).bind(method).bind(settings).bind(sealed).bind(now_ms)
            .fetch_one(pool).await?);
        Ok(version)
    }

    /// A tenant's configuration of `method`.
    pub async fn rail_config(
        &self,
        tenant_id: &str,
        method: &str,
    ) -> Result<Option<RailConfigRow>, StoreError> {
        let sql =
            format!("SELECT {RAIL_COLUMNS} FROM rail_configs WHERE tenant_id = $1 AND method = $2");
        let row: Option<RailTuple> = on_pool!(self, pool =>
            sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(tenant_id).bind(method)
                .fetch_optional(pool).await?);
        Ok(row.map(rail))
    }

    /// Every tenant's configuration of `method` (for background jobs), at most `limit`.
    pub async fn rail_configs(
        &self,
        method: &str,
        limit: i64,
    ) -> Result<Vec<RailConfigRow>, StoreError> {
        let sql = format!(
            "SELECT {RAIL_COLUMNS} FROM rail_configs WHERE method = $1 ORDER BY tenant_id LIMIT $2"
        );
        let rows: Vec<RailTuple> = on_pool!(self, pool =>
            sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(method).bind(limit)
                .fetch_all(pool).await?);
        Ok(rows.into_iter().map(rail).collect())
    }

    /// Remove a tenant's configuration of `method`; false when there was none.
    pub async fn delete_rail_config(
        &self,
        tenant_id: &str,
        method: &str,
    ) -> Result<bool, StoreError> {
        let done = on_pool!(self, pool => sqlx::query(
            "DELETE FROM rail_configs WHERE tenant_id = $1 AND method = $2")
            .bind(tenant_id).bind(method).execute(pool).await?.rows_affected());
        Ok(done == 1)
    }

    /// Claim a challenge and a proof for a payment that will settle on an outside rail: insert
    /// `row` (state `claimed`). False when the challenge or the proof is already used, by any
    /// payment on any replica (the database's unique constraints decide).
    pub async fn claim_payment(&self, row: &PaymentRow) -> Result<bool, StoreError> {
        let done = on_pool!(self, pool => sqlx::query(
            "INSERT INTO payments (id, tenant_id, challenge_id, proof_key, state, method, amount, \
             currency, price_id, price_version, payer_tenant_id, reference, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
             ON CONFLICT DO NOTHING")
            .bind(&row.id).bind(&row.tenant_id).bind(&row.challenge_id).bind(&row.proof_key)
            .bind(&row.state).bind(&row.method).bind(&row.amount).bind(&row.currency)
            .bind(&row.price_id).bind(row.price_version).bind(&row.payer_tenant_id)
            .bind(&row.reference).bind(row.created_at).bind(row.updated_at)
            .execute(pool).await?.rows_affected());
        Ok(done == 1)
    }

    /// Record what a claimed payment will submit (before it is submitted).
    pub async fn record_settlement(
        &self,
        payment_id: &str,
        reference: &str,
        settlement: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let done = on_pool!(self, pool => sqlx::query(
            "UPDATE payments SET reference = $2, settlement = $3, updated_at = $4 \
             WHERE id = $1 AND state = 'claimed'")
            .bind(payment_id).bind(reference).bind(settlement).bind(now_ms)
            .execute(pool).await?.rows_affected());
        Ok(done == 1)
    }

    /// Mark a claimed payment `pending`: submitted, outcome unknown (the resolver finishes it).
    /// Its client is told `202 pending`, so its receipt is owed ([`Store::owed_payment`]).
    pub async fn mark_pending(&self, payment_id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let done = on_pool!(self, pool => sqlx::query(
            "UPDATE payments SET state = 'pending', receipt_owed = 1, updated_at = $2 \
             WHERE id = $1 AND state IN ('claimed', 'pending')")
            .bind(payment_id).bind(now_ms).execute(pool).await?.rows_affected());
        Ok(done == 1)
    }

    /// The payment of `tenant_id` answering `challenge_id` with the proof `proof_key` whose
    /// client was told `pending` and has not had its receipt: `Owed::Pending` while it is
    /// unsettled; `Owed::Settled` once, for the one call that takes the receipt (atomically:
    /// concurrent retries get it once); `None` otherwise (a replay).
    pub async fn owed_payment(
        &self,
        tenant_id: &str,
        challenge_id: &str,
        proof_key: &str,
        now_ms: i64,
    ) -> Result<Option<Owed>, StoreError> {
        let found: Option<(String, String, Option<String>)> = on_pool!(self, pool => sqlx::query_as(
            "SELECT id, state, reference FROM payments \
             WHERE tenant_id = $1 AND challenge_id = $2 AND proof_key = $3 AND receipt_owed = 1")
            .bind(tenant_id).bind(challenge_id).bind(proof_key).fetch_optional(pool).await?);
        let Some((id, state, reference)) = found else {
            return Ok(None);
        };
        match state.as_str() {
            "claimed" | "pending" => Ok(Some(Owed::Pending { payment_id: id })),
            "settled" => {
                let taken = on_pool!(self, pool => sqlx::query(
                    "UPDATE payments SET receipt_owed = 0, updated_at = $2 \
                     WHERE id = $1 AND state = 'settled' AND receipt_owed = 1")
                    .bind(&id).bind(now_ms).execute(pool).await?.rows_affected());
                Ok((taken == 1).then(|| Owed::Settled {
                    payment_id: id,
                    reference: reference.unwrap_or_default(),
                }))
            }
            _ => Ok(None),
        }
    }

    /// Release the claim of a payment whose settlement failed for good (nothing moved): its
    /// challenge and proof may be used again. False when it is not claimed or pending.
    pub async fn release_payment(&self, payment_id: &str) -> Result<bool, StoreError> {
        let done = on_pool!(self, pool => sqlx::query(
            "DELETE FROM payments WHERE id = $1 AND state IN ('claimed', 'pending')")
            .bind(payment_id).execute(pool).await?.rows_affected());
        Ok(done == 1)
    }

    /// The rail's record of what a tenant's payment submitted (JSON), if any.
    pub async fn payment_settlement(
        &self,
        tenant_id: &str,
        payment_id: &str,
    ) -> Result<Option<String>, StoreError> {
        let row: Option<(Option<String>,)> = on_pool!(self, pool => sqlx::query_as(
            "SELECT settlement FROM payments WHERE tenant_id = $1 AND id = $2")
            .bind(tenant_id).bind(payment_id).fetch_optional(pool).await?);
        Ok(row.and_then(|r| r.0))
    }

    /// The payer and the refund of a tenant's payment (both `None` for most payments).
    pub async fn payment_refund(
        &self,
        tenant_id: &str,
        payment_id: &str,
    ) -> Result<Option<PaymentRefund>, StoreError> {
        let row: Option<(Option<String>, Option<String>)> = on_pool!(self, pool => sqlx::query_as(
            "SELECT payer_address, refund_reference FROM payments WHERE tenant_id = $1 AND id = $2")
            .bind(tenant_id).bind(payment_id).fetch_optional(pool).await?);
        Ok(row.map(|(payer_address, refund_reference)| PaymentRefund {
            payer_address,
            refund_reference,
        }))
    }

    /// Record the merchant's on-chain refund of a `refund_due` payment: it becomes `refunded`
    /// with `reference` kept. False when the tenant has no such payment in `refund_due`.
    pub async fn record_refund(
        &self,
        tenant_id: &str,
        payment_id: &str,
        reference: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let done = on_pool!(self, pool => sqlx::query(
            "UPDATE payments SET state = 'refunded', refund_reference = $3, updated_at = $4 \
             WHERE tenant_id = $1 AND id = $2 AND state = 'refund_due'")
            .bind(tenant_id).bind(payment_id).bind(reference).bind(now_ms)
            .execute(pool).await?.rows_affected());
        Ok(done == 1)
    }

    /// Payments of `method` claimed or pending and not touched since `before_ms`, oldest
    /// first: the resolver's work.
    pub async fn unsettled_payments(
        &self,
        method: &str,
        before_ms: i64,
        limit: i64,
    ) -> Result<Vec<UnsettledPayment>, StoreError> {
        let sql = format!(
            "SELECT {PAYMENT_COLUMNS}, settlement FROM payments \
             WHERE state IN ('claimed', 'pending') AND method = $1 AND updated_at < $2 \
             ORDER BY updated_at LIMIT $3"
        );
        type Row = (
            String,
            String,
            String,
            String,
            String,
            String,
            String,
            String,
            String,
            i64,
            Option<String>,
            Option<String>,
            i64,
            i64,
            Option<String>,
        );
        let rows: Vec<Row> = on_pool!(self, pool =>
            sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(method).bind(before_ms)
                .bind(limit).fetch_all(pool).await?);
        Ok(rows
            .into_iter()
            .map(|r| {
                let tuple: PaymentTuple = (
                    r.0, r.1, r.2, r.3, r.4, r.5, r.6, r.7, r.8, r.9, r.10, r.11, r.12, r.13,
                );
                UnsettledPayment {
                    payment: payment(tuple),
                    settlement: r.14,
                }
            })
            .collect())
    }
}

/// A receipt still owed to a client that was told `202 pending` ([`Store::owed_payment`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owed {
    /// Still unsettled: answer `pending` again.
    Pending {
        /// The payment.
        payment_id: String,
    },
    /// Settled; this caller delivers the receipt (no other will).
    Settled {
        /// The payment.
        payment_id: String,
        /// The rail's reference (the receipt's `reference`).
        reference: String,
    },
}
