//! Gateway deliveries in flight (`gateway_deliveries`): written before a gateway request's
//! credential is verified, deleted once the request is finished (its upstream served it, or it
//! was refunded). A row left behind by a crash is finished by the server's delivery job.

use crate::error::StoreError;
use crate::merchant::{PAYMENT_COLUMNS, PaymentRow, PaymentTuple, payment};
use crate::{Db, Store};

/// A delivery in flight, or left behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRow {
    /// The merchant.
    pub tenant_id: String,
    /// The challenge the credential answers.
    pub challenge_id: String,
    /// When it began (unix ms).
    pub created_at: i64,
}

impl Store {
    /// Record that a gateway request with a credential for `challenge_id` is being handled.
    /// False when one is already (the same credential sent twice at once): the pipeline's
    /// single-use claim decides which pays, and the row stays until both are finished.
    pub async fn begin_delivery(
        &self,
        tenant_id: &str,
        challenge_id: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let done = on_pool!(self, pool => sqlx::query(
            "INSERT INTO gateway_deliveries (tenant_id, challenge_id, created_at) \
             VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
            .bind(tenant_id).bind(challenge_id).bind(now_ms).execute(pool).await?.rows_affected());
        Ok(done == 1)
    }

    /// The request for `challenge_id` is finished: served, refunded, or never paid.
    pub async fn end_delivery(
        &self,
        tenant_id: &str,
        challenge_id: &str,
    ) -> Result<(), StoreError> {
        on_pool!(self, pool => sqlx::query(
            "DELETE FROM gateway_deliveries WHERE tenant_id = $1 AND challenge_id = $2")
            .bind(tenant_id).bind(challenge_id).execute(pool).await?.rows_affected());
        Ok(())
    }

    /// Deliveries begun before `before_ms` and never finished, oldest first, at most `limit`.
    pub async fn stale_deliveries(
        &self,
        before_ms: i64,
        limit: i64,
    ) -> Result<Vec<DeliveryRow>, StoreError> {
        let rows: Vec<(String, String, i64)> = on_pool!(self, pool => sqlx::query_as(
            "SELECT tenant_id, challenge_id, created_at FROM gateway_deliveries \
             WHERE created_at < $1 ORDER BY created_at LIMIT $2")
            .bind(before_ms).bind(limit).fetch_all(pool).await?);
        Ok(rows
            .into_iter()
            .map(|(tenant_id, challenge_id, created_at)| DeliveryRow {
                tenant_id,
                challenge_id,
                created_at,
            })
            .collect())
    }

    /// The payment that used `challenge_id` at `tenant_id`, if any.
    pub async fn payment_of_challenge(
        &self,
        tenant_id: &str,
        challenge_id: &str,
    ) -> Result<Option<PaymentRow>, StoreError> {
        let sql = format!(
            "SELECT {PAYMENT_COLUMNS} FROM payments WHERE tenant_id = $1 AND challenge_id = $2"
        );
        let row: Option<PaymentTuple> = on_pool!(self, pool =>
            sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(tenant_id).bind(challenge_id).fetch_optional(pool).await?);
        Ok(row.map(payment))
    }
}
