//! The expiry sweeper: a background task that expires pending transfers once they are due,
//! releasing their reservations. Any number of replicas may run one: expiring is idempotent
//! (the ledger rules only expire a transfer that is still pending and due).

use std::time::Duration;

use tokio::task::JoinHandle;
use turnpike_ledger::EngineError;

use crate::error::StoreError;
use crate::{Store, StoreEngine};

/// Most pending transfers expired in one engine command.
pub const EXPIRE_BATCH_MAX: usize = 1_024;
/// Shortest pause between sweeps.
pub const SWEEP_INTERVAL_MIN: Duration = Duration::from_millis(1);

/// Why a sweep failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SweepError {
    /// Listing due transfers failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The engine refused or failed the expiry.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// What one sweep did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sweep {
    /// Pending transfers found due.
    pub due: usize,
    /// Of those, expired by this sweep (others were resolved or expired meanwhile).
    pub expired: usize,
}

/// One sweep: list up to `batch_max` due pending transfers (at the engine's clock) and expire
/// them.
pub async fn sweep_once(
    store: &Store,
    engine: &StoreEngine,
    batch_max: usize,
) -> Result<Sweep, SweepError> {
    let batch_max = batch_max.clamp(1, EXPIRE_BATCH_MAX);
    let limit = u32::try_from(batch_max).unwrap_or(u32::MAX);
    let due = store.due_pending(engine.now_ms(), limit).await?;
    if due.is_empty() {
        return Ok(Sweep { due: 0, expired: 0 });
    }
    let count = due.len();
    let expired = engine.expire(due).await?;
    Ok(Sweep {
        due: count,
        expired: expired.len(),
    })
}

/// Sweep every `interval` (at once again while full batches keep expiring) until the engine
/// stops. Failures are logged and retried at the next interval.
pub fn spawn_expiry_sweeper(
    store: Store,
    engine: StoreEngine,
    interval: Duration,
    batch_max: usize,
) -> JoinHandle<()> {
    let interval = interval.max(SWEEP_INTERVAL_MIN);
    let batch_max = batch_max.clamp(1, EXPIRE_BATCH_MAX);
    tokio::spawn(async move {
        loop {
            match sweep_once(&store, &engine, batch_max).await {
                Ok(sweep) if sweep.due == batch_max && sweep.expired > 0 => continue,
                Ok(sweep) => {
                    if sweep.expired > 0 {
                        tracing::debug!(expired = sweep.expired, "expired pending transfers");
                    }
                }
                Err(SweepError::Engine(EngineError::Stopped)) => return,
                Err(err) => tracing::warn!(error = %err, "expiry sweep failed"),
            }
            tokio::time::sleep(interval).await;
        }
    })
}
