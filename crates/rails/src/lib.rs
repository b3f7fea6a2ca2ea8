//! Turnpike's settlement rails behind one trait (ARCHITECTURE.md, "Rails"): build a challenge's
//! method `request` from a price and the tenant's rail configuration, verify a credential (offline
//! where the method allows), settle it on the rail, and resolve a settlement whose outcome was
//! unknown. The verify pipeline and the ledger never see a rail's JSON.
//!
//! Settling is split in two so that nothing is ever submitted twice: [`Rail::prepare`] returns
//! what will be submitted (for a chain: the signed transaction and its hash) for the caller to
//! record durably first, then [`Rail::submit`] sends it and waits for the outcome. A submission
//! whose outcome is unknown is [`Settlement::Pending`]; [`Rail::resolve`] finishes it from the
//! recorded [`Prepared`] alone, after a restart too.

pub mod balance;
pub mod evm;
pub mod outbound;
pub mod rpc;
pub mod tempo;

pub use balance::BalanceRail;
pub use evm::EvmRail;
pub use tempo::TempoRail;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use turnpike_protocol::{Credential, ProblemType};

/// What a price asks for, as a rail sees it (charge intent fields, spec §2).
#[derive(Debug, Clone)]
pub struct PriceTerms<'a> {
    /// Minor units of `currency` (charge `amount`), canonical decimal.
    pub amount: &'a str,
    /// The same amount as an integer.
    pub amount_minor: u128,
    /// The ledger's currency code (e.g. `usdc`); a rail maps it to its asset.
    pub currency: &'a str,
    /// Charge `description`.
    pub description: Option<&'a str>,
}

/// The challenge a credential answers, as far as a rail needs it.
#[derive(Debug, Clone, Copy)]
pub struct ChallengeFacts<'a> {
    /// Challenge `id`.
    pub id: &'a str,
    /// Challenge `realm`.
    pub realm: &'a str,
    /// Challenge `expires`, Unix seconds.
    pub expires_at_s: i64,
}

/// Why a rail refused a credential: the problem type of the 402 and a detail safe to show (it
/// never quotes a signature or other credential bytes).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct Rejection {
    /// The problem type (`verification-failed`, `payment-expired`, ...).
    pub kind: ProblemType,
    /// Human-readable reason.
    pub detail: String,
}

impl Rejection {
    /// A `verification-failed` rejection.
    pub fn failed(detail: impl Into<String>) -> Self {
        Self {
            kind: ProblemType::VerificationFailed,
            detail: detail.into(),
        }
    }

    /// A `malformed-credential` rejection.
    pub fn malformed(detail: impl Into<String>) -> Self {
        Self {
            kind: ProblemType::MalformedCredential,
            detail: detail.into(),
        }
    }

    /// A `payment-expired` rejection.
    pub fn expired(detail: impl Into<String>) -> Self {
        Self {
            kind: ProblemType::PaymentExpired,
            detail: detail.into(),
        }
    }
}

/// Why a rail cannot offer or settle right now (configuration, funds for gas, the rail's
/// network): not the payer's fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

/// What will be submitted to the rail, recorded durably by the caller before [`Rail::submit`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prepared {
    /// The receipt `reference` it will have (a transaction hash).
    pub reference: String,
    /// Rail-private state needed to submit again or resolve (e.g. the signed transaction).
    pub state: Value,
}

/// The outcome of a submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// Final and successful: book it.
    Settled {
        /// Receipt `reference`.
        reference: String,
    },
    /// Submitted, outcome not known yet (timeout, the rail unreachable): never `failed`.
    Pending,
    /// Final and unsuccessful: nothing moved, release the claim.
    Failed(Rejection),
}

/// One settlement rail (one MPP payment method).
#[async_trait]
pub trait Rail: Send + Sync {
    /// The tenant's configuration of this rail, parsed and validated.
    type Config: Send + Sync;
    /// What offline verification established about a credential.
    type Verified: Send + Sync;

    /// The MPP method name (`evm`, `tempo`, ...).
    fn method(&self) -> &'static str;

    /// The challenge's method `request` for a price, or why the rail cannot offer it.
    fn challenge_request(
        &self,
        config: &Self::Config,
        price: &PriceTerms<'_>,
    ) -> Result<Map<String, Value>, Unavailable>;

    /// Check a credential against the challenge and price without touching the rail where the
    /// method allows.
    fn verify(
        &self,
        config: &Self::Config,
        challenge: ChallengeFacts<'_>,
        price: &PriceTerms<'_>,
        credential: &Credential,
        now_s: i64,
    ) -> Result<Self::Verified, Rejection>;

    /// The single-use token of a verified credential (the spec's replay table), unique across
    /// the platform.
    fn replay_token(&self, verified: &Self::Verified) -> String;

    /// What will be submitted; nothing is sent yet.
    async fn prepare(
        &self,
        config: &Self::Config,
        verified: &Self::Verified,
    ) -> Result<Prepared, PrepareError>;

    /// Submit what [`Rail::prepare`] returned and wait for the outcome.
    async fn submit(&self, config: &Self::Config, prepared: &Prepared) -> Settlement;

    /// Finish a [`Settlement::Pending`] from what was recorded.
    async fn resolve(&self, config: &Self::Config, prepared: &Prepared, now_s: i64) -> Settlement;
}

/// Why [`Rail::prepare`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrepareError {
    /// The credential will not settle (e.g. the simulation reverted): the payer's problem.
    #[error(transparent)]
    Rejected(Rejection),
    /// The rail cannot settle now.
    #[error(transparent)]
    Unavailable(Unavailable),
}
