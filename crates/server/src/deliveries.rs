//! The delivery job: finishes gateway requests that a crash or a kill left unfinished. A
//! paid gateway request is recorded (`gateway_deliveries`) before its credential may pay and
//! cleared once it is served or refunded ([`crate::http::gateway`]); a record older than the
//! upstream timeout plus [`DELIVERY_GRACE_MS`] belongs to a request nobody is finishing. Its
//! payment, if one settled, is refunded (a `turnpike` payer at once; a chain payment reversed
//! and owed back by the merchant): nobody can tell whether the upstream served it, and the
//! payer never got an answer.

use std::time::Duration;

use turnpike_store::DeliveryRow;

use crate::error::ApiError;
use crate::http::gateway::{Owed, owe_back};
use crate::state::AppState;

/// How often the job looks for unfinished deliveries.
pub const DELIVERY_INTERVAL: Duration = Duration::from_secs(1);
/// How long past the upstream timeout a delivery may stay unfinished before the job takes it.
pub const DELIVERY_GRACE_MS: i64 = 5_000;
/// Most deliveries finished per pass.
pub const DELIVERY_BATCH_MAX: i64 = 100;

/// Start the delivery job.
pub fn spawn_job(state: AppState) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(DELIVERY_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(err) = finish_once(&state).await {
                tracing::warn!(error = ?err, "delivery pass failed");
            }
        }
    });
}

/// One pass: finish every delivery left unfinished; returns how many it finished.
pub async fn finish_once(state: &AppState) -> Result<usize, ApiError> {
    let timeout_ms = i64::try_from(state.config.upstream_timeout.as_millis()).unwrap_or(i64::MAX);
    let before = state
        .now_ms()
        .saturating_sub(timeout_ms.saturating_add(DELIVERY_GRACE_MS));
    let mut finished = 0;
    for row in state
        .store
        .stale_deliveries(before, DELIVERY_BATCH_MAX)
        .await?
    {
        if finish(state, &row).await? {
            state
                .store
                .end_delivery(&row.tenant_id, &row.challenge_id)
                .await?;
            finished += 1;
        }
    }
    Ok(finished)
}

/// Refund what an unfinished delivery's payment settled; true when nothing more is owed.
async fn finish(state: &AppState, row: &DeliveryRow) -> Result<bool, ApiError> {
    let Some(payment) = state
        .store
        .payment_of_challenge(&row.tenant_id, &row.challenge_id)
        .await?
    else {
        return Ok(true); // the credential never paid
    };
    if payment.state != "settled" {
        // Never settled (refused, or pending on a chain: the client's retry is answered with
        // its receipt), or already refunded or owed back.
        return Ok(true);
    }
    if payment.payer_tenant_id.is_some() {
        crate::refunds::refund_balance(state, &payment).await?;
        tracing::warn!(payment = %payment.id,
            "a gateway request left unfinished (crash or kill) was refunded");
        return Ok(true);
    }
    let owed = owe_back(state, &payment).await;
    tracing::warn!(payment = %payment.id, refund = owed.as_str(),
        "a gateway request left unfinished (crash or kill) is owed back on chain");
    Ok(owed != Owed::Unrecorded)
}
