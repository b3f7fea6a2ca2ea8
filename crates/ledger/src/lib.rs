//! `turnpike-ledger`: the double-entry ledger every cent Turnpike moves is booked in.
//!
//! - [`model`]: accounts, transfers and their typed failure reasons.
//! - [`rules`]: the ledger's rules as a pure function over a snapshot of rows.
//! - [`engine`]: the posting engine that batches concurrent submissions into one transaction.
//! - [`memory`]: an in-memory backend, for unit tests of the rules and the engine.
//!
//! Storage backends (SQLite, PostgreSQL) live in `turnpike-store` and implement
//! [`engine::LedgerBackend`].

pub mod engine;
pub mod memory;
pub mod model;
pub mod rules;

pub use engine::{
    BackendError, Clock, Engine, EngineConfig, EngineError, LedgerBackend, ManualClock, SystemClock,
};
pub use model::{
    Account, AccountFlags, AccountId, AccountKind, NewAccount, PendingState, Posted, Transfer,
    TransferError, TransferId, TransferKind, TransferRequest, TransferResult,
};
pub use rules::{
    BatchKeys, BatchOutcome, Command, CommandResult, Guard, NoGuard, Snapshot, apply_batch,
};
