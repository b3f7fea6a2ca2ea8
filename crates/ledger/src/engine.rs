//! The posting engine: callers submit commands concurrently; one writer task drains whatever is
//! queued (up to `batch_max`) into a single database transaction (group commit), so a hot
//! account costs one commit per batch rather than one per transfer. Each caller gets its own
//! result; a failed transfer does not fail its neighbours.
//!
//! Batching is natural: while one batch commits, the next requests queue up and form the next
//! batch, so an idle engine adds no latency. An optional `batch_window` waits that long for more
//! requests before committing a batch that is not full.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::model::{TransferError, TransferId, TransferRequest, TransferResult};
use crate::rules::{Command, CommandResult, Guard, NoGuard};

/// Why a backend could not apply a batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// A conflict with a concurrent writer (serialization failure, deadlock, a duplicate key
    /// inserted by another replica): the whole batch may be retried.
    #[error("conflict with a concurrent writer: {0}")]
    Conflict(String),
    /// Anything else: nothing of the batch was written.
    #[error("storage error: {0}")]
    Storage(String),
}

/// A store that applies a batch of commands in one transaction: check and record the guards of
/// guarded commands, load the rows ([`crate::rules::BatchKeys`]), run
/// [`crate::rules::apply_batch`], write the outcome, drop the records of guarded commands whose
/// transfers failed, commit.
pub trait LedgerBackend<G: Guard = NoGuard>: Send + Sync + 'static {
    /// Apply `commands` atomically at `now_ms` and return one result per command.
    fn execute(
        &self,
        commands: &[Command<G>],
        now_ms: i64,
    ) -> impl Future<Output = Result<Vec<CommandResult<G>>, BackendError>> + Send;
}

/// The ledger's notion of now, injectable so tests move time without sleeping.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
    }
}

/// A clock tests set by hand.
#[derive(Debug, Default)]
pub struct ManualClock(std::sync::atomic::AtomicI64);

impl ManualClock {
    /// A clock at `now_ms`.
    pub fn new(now_ms: i64) -> Self {
        Self(std::sync::atomic::AtomicI64::new(now_ms))
    }

    /// Move time forward.
    pub fn advance(&self, by: Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.0.fetch_add(ms, std::sync::atomic::Ordering::SeqCst);
    }

    /// Set the time.
    pub fn set(&self, now_ms: i64) {
        self.0.store(now_ms, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Engine settings.
#[derive(Clone)]
pub struct EngineConfig {
    /// Most commands in one transaction (1 = one transaction per command, no batching).
    pub batch_max: usize,
    /// How long to wait for more commands before committing a batch that is not full.
    pub batch_window: Duration,
    /// Most commands waiting for the writer; submitters wait when it is full (back-pressure).
    pub queue_max: usize,
    /// Most attempts of one batch on [`BackendError::Conflict`].
    pub conflict_retries_max: u32,
    /// Source of time.
    pub clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for EngineConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineConfig")
            .field("batch_max", &self.batch_max)
            .field("batch_window", &self.batch_window)
            .field("queue_max", &self.queue_max)
            .field("conflict_retries_max", &self.conflict_retries_max)
            .finish_non_exhaustive()
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            batch_max: 512,
            batch_window: Duration::ZERO,
            queue_max: 16_384,
            conflict_retries_max: 16,
            clock: Arc::new(SystemClock),
        }
    }
}

/// Why a submission got no result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// The store failed; nothing of the submission was written (resubmitting the same transfer
    /// ids is safe: transfers are idempotent).
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The engine has stopped.
    #[error("ledger engine stopped")]
    Stopped,
    /// A linked batch longer than [`LINKED_LEN_MAX`] or empty.
    #[error("a linked batch holds 1 to {LINKED_LEN_MAX} transfers")]
    BadBatchLength,
}

/// Most transfers in one linked batch.
pub const LINKED_LEN_MAX: usize = 64;

struct Job<G: Guard> {
    command: Command<G>,
    reply: oneshot::Sender<Result<CommandResult<G>, EngineError>>,
}

/// A cheap, cloneable handle to submit work to the engine.
pub struct Engine<G: Guard = NoGuard> {
    queue: mpsc::Sender<Job<G>>,
    clock: Arc<dyn Clock>,
}

impl<G: Guard> Clone for Engine<G> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
            clock: self.clock.clone(),
        }
    }
}

impl<G: Guard> std::fmt::Debug for Engine<G> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

impl<G: Guard> Engine<G> {
    /// Start the writer task on the current Tokio runtime. It stops when every handle is dropped.
    pub fn start<B: LedgerBackend<G>>(backend: Arc<B>, config: EngineConfig) -> Self {
        assert!(config.batch_max >= 1, "batch_max must be at least 1");
        let (queue, rx) = mpsc::channel(config.queue_max.max(1));
        let clock = config.clock.clone();
        tokio::spawn(writer(backend, config, rx));
        Self { queue, clock }
    }

    /// True once the writer task has stopped (a broken invariant or every handle dropped).
    pub fn is_stopped(&self) -> bool {
        self.queue.is_closed()
    }

    /// The engine's clock.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    async fn submit(&self, command: Command<G>) -> Result<CommandResult<G>, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.queue
            .send(Job { command, reply })
            .await
            .map_err(|_| EngineError::Stopped)?;
        rx.await.map_err(|_| EngineError::Stopped)?
    }

    /// Apply one transfer.
    pub async fn transfer(&self, request: TransferRequest) -> Result<TransferResult, EngineError> {
        let mut results = self.linked(vec![request]).await?;
        Ok(results
            .pop()
            .unwrap_or(Err(TransferError::LinkedEventFailed)))
    }

    /// Apply transfers all or nothing; one result per transfer. When one fails, it carries its
    /// reason and the others `linked_event_failed`.
    pub async fn linked(
        &self,
        requests: Vec<TransferRequest>,
    ) -> Result<Vec<TransferResult>, EngineError> {
        if requests.is_empty() || requests.len() > LINKED_LEN_MAX {
            return Err(EngineError::BadBatchLength);
        }
        match self.submit(Command::Linked(requests)).await? {
            CommandResult::Linked(results) => Ok(results),
            CommandResult::Expired(_) | CommandResult::Refused(_) => {
                unreachable!("a linked command has a linked result")
            }
        }
    }

    /// Apply transfers all or nothing under `guard`, in one transaction with the guard's record:
    /// `Err(refusal)` when the backend refused the guard (nothing applied), otherwise one result
    /// per transfer as [`Engine::linked`] (the guard's record is kept only if all succeeded).
    pub async fn guarded(
        &self,
        guard: G,
        requests: Vec<TransferRequest>,
    ) -> Result<Result<Vec<TransferResult>, G::Refusal>, EngineError> {
        if requests.is_empty() || requests.len() > LINKED_LEN_MAX {
            return Err(EngineError::BadBatchLength);
        }
        match self.submit(Command::Guarded(guard, requests)).await? {
            CommandResult::Linked(results) => Ok(Ok(results)),
            CommandResult::Refused(refusal) => Ok(Err(refusal)),
            CommandResult::Expired(_) => unreachable!("a guarded command has a linked result"),
        }
    }

    /// Check and record `guard` alone, with no transfers, in the same batch transaction as
    /// [`Engine::guarded`] commands (so it is serialised with them): `Err(refusal)` when the
    /// backend refused it. For what is paid outside the ledger but must still pass the guard
    /// (e.g. an agent's spend paid from an on-chain wallet).
    pub async fn guard(&self, guard: G) -> Result<Result<(), G::Refusal>, EngineError> {
        match self.submit(Command::Guarded(guard, Vec::new())).await? {
            CommandResult::Linked(results) if results.is_empty() => Ok(Ok(())),
            CommandResult::Refused(refusal) => Ok(Err(refusal)),
            CommandResult::Linked(_) | CommandResult::Expired(_) => {
                unreachable!("a guard without transfers has an empty linked result")
            }
        }
    }

    /// Expire those of `ids` that are still pending and due; returns the ones expired.
    pub async fn expire(&self, ids: Vec<TransferId>) -> Result<Vec<TransferId>, EngineError> {
        match self.submit(Command::Expire(ids)).await? {
            CommandResult::Expired(ids) => Ok(ids),
            CommandResult::Linked(_) | CommandResult::Refused(_) => {
                unreachable!("an expire command has an expire result")
            }
        }
    }
}

async fn writer<G: Guard, B: LedgerBackend<G>>(
    backend: Arc<B>,
    config: EngineConfig,
    mut rx: mpsc::Receiver<Job<G>>,
) {
    let mut jobs: Vec<Job<G>> = Vec::with_capacity(config.batch_max);
    while let Some(first) = rx.recv().await {
        jobs.push(first);
        while jobs.len() < config.batch_max {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        if jobs.len() < config.batch_max && !config.batch_window.is_zero() {
            let deadline = tokio::time::Instant::now() + config.batch_window;
            while jobs.len() < config.batch_max {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(job)) => jobs.push(job),
                    _ => break,
                }
            }
        }
        let (commands, replies): (Vec<Command<G>>, Vec<_>) =
            jobs.drain(..).map(|j| (j.command, j.reply)).unzip();
        let outcome = execute_with_retries(&*backend, &config, &commands).await;
        match outcome {
            Ok(results) => {
                assert_eq!(
                    results.len(),
                    replies.len(),
                    "backend returned one result per command"
                );
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(Ok(result));
                }
            }
            Err(err) => {
                tracing::error!(error = %err, batch = commands.len(), "ledger batch failed");
                for reply in replies {
                    let _ = reply.send(Err(EngineError::Backend(err.clone())));
                }
            }
        }
    }
}

async fn execute_with_retries<G: Guard, B: LedgerBackend<G>>(
    backend: &B,
    config: &EngineConfig,
    commands: &[Command<G>],
) -> Result<Vec<CommandResult<G>>, BackendError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match backend.execute(commands, config.clock.now_ms()).await {
            Err(BackendError::Conflict(reason)) if attempt < config.conflict_retries_max => {
                tracing::debug!(attempt, %reason, "ledger batch conflicted; retrying");
                let backoff_ms = u64::from(attempt.min(10)) * 2;
                tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
            }
            other => return other,
        }
    }
}
