//! The settlement rails as the server uses them: each tenant's rail configuration (cached,
//! secrets opened with the server's [`SecretsKey`](crate::secrets::SecretsKey)), settling a
//! verified credential on an outside rail (claim, prepare, record, submit, book), the resolver
//! that finishes settlements whose outcome was unknown, and the hot-wallet gas watcher.
//!
//! All of it is written once over [`ServerRail`] (a [`Rail`] plus where the server keeps its
//! configurations): `evm` and `tempo` go through the same code.
//!
//! A payment on an outside rail moves through `claimed` (its challenge and proof are taken) →
//! `pending` (submitted, outcome unknown) → `settled` (booked in the ledger, once: the
//! [`LedgerGuard::Settle`] guard only books a claimed or pending payment), or is released
//! (deleted: nothing moved, the client may pay again).

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use turnpike_ledger::{AccountKind, TransferId, TransferRequest};
use turnpike_rails::evm::{ConfigError, EvmConfig, EvmSettings, VerifiedEvm};
use turnpike_rails::outbound::OutboundPolicy;
use turnpike_rails::tempo::{TempoConfig, TempoRail, TempoSettings, VerifiedTempo};
use turnpike_rails::{EvmRail, PrepareError, Prepared, PriceTerms, Rail, Rejection, Settlement};
use turnpike_store::{
    GuardRefusal, LedgerGuard, Owed, PaymentRow, RailConfigRow, RefundDueGuard, SettleGuard,
};

use crate::cache::TtlCache;
use crate::catalog::PriceDefinition;
use crate::error::ApiError;
use crate::ids;
use crate::method_turnpike::fee_minor;
use crate::state::{AppState, PLATFORM_OWNER};

/// Ledger codes of outside-rail settlements (beside [`crate::method_turnpike::codes`]).
pub mod codes {
    /// A payment received on an outside rail, from its clearing account to the merchant.
    pub const RAIL_PAYMENT: u16 = 10;
    /// The platform fee on it.
    pub const RAIL_FEE: u16 = 11;
    /// The reversal of a rail payment whose gateway upstream failed: the merchant's revenue
    /// (net of the fee) back to the clearing account; the merchant returns the tokens on chain.
    pub const RAIL_REVERSAL: u16 = 13;
    /// The platform fee of a reversed rail payment back to the clearing account.
    pub const RAIL_FEE_REVERSAL: u16 = 14;
}

/// How often the resolver looks for unsettled payments.
pub const RESOLVE_INTERVAL: Duration = Duration::from_secs(1);
/// A `pending` payment is resolved once it is this old (the verify that submitted it gave up).
pub const PENDING_RESOLVE_AFTER_MS: i64 = 500;
/// A `claimed` payment untouched this long was abandoned mid-verify (a crash): resolved too.
pub const CLAIM_ABANDONED_AFTER_MS: i64 = 60_000;
/// Most payments one resolver pass looks at.
pub const RESOLVE_BATCH_MAX: i64 = 100;
/// How often hot wallets' gas is read.
pub const GAS_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// Most rail configurations one gas pass reads.
pub const GAS_CHECK_BATCH_MAX: i64 = 1_000;

/// The rails this server settles on.
#[derive(Debug, Default)]
pub struct Rails {
    /// `evm`.
    pub evm: EvmRail,
    /// RPC clients of the deposit watcher.
    pub deposits_rpc: turnpike_rails::rpc::Providers,
    /// `tempo`.
    pub tempo: TempoRail,
}

impl Rails {
    /// The rails, their RPC connections following `outbound`.
    pub fn new(outbound: &OutboundPolicy) -> Self {
        Self {
            evm: EvmRail::with_outbound(outbound.clone()),
            deposits_rpc: turnpike_rails::rpc::Providers::new(outbound.clone()),
            tempo: TempoRail::with_outbound(outbound.clone()),
        }
    }
}

/// A [`Rail`] as the server holds it: its configuration API (public settings, one sealed
/// secret), where its tenants' configurations are cached, and what its receipts add.
pub trait ServerRail: Rail<Config: 'static> + 'static {
    /// The method name (`evm`, `tempo`).
    const METHOD: &'static str;
    /// The configuration API's secret member (sealed at rest, never returned).
    const SECRET_FIELD: &'static str;
    /// The configuration API's read-only member derived from the secret (an address).
    const DERIVED_FIELD: &'static str;
    /// The public settings, as stored and returned.
    type Settings: Serialize + DeserializeOwned;

    /// The server's instance of the rail.
    fn of(state: &AppState) -> &Self;
    /// The configuration cache.
    fn cache(state: &AppState) -> &TtlCache<String, Option<Arc<Self::Config>>>;
    /// Validate settings with the secret.
    fn open(settings: Self::Settings, secret: Option<&str>) -> Result<Self::Config, ConfigError>;
    /// The validated public settings.
    fn settings(config: &Self::Config) -> &Self::Settings;
    /// The JSON-RPC endpoint the rail connects to (`rpcUrl`).
    fn rpc_url(config: &Self::Config) -> &str;
    /// The secret of a configuration (to keep it when a change omits it).
    fn secret(config: &Self::Config) -> Option<String>;
    /// The receipt's chain id.
    fn chain_id(verified: &Self::Verified) -> u64;
    /// The address that paid a settled payment, from its settlement record (and the chain when
    /// the record does not say).
    fn payer(
        state: &AppState,
        config: &Self::Config,
        prepared: &Prepared,
    ) -> impl std::future::Future<Output = Option<alloy::primitives::Address>> + Send;
    /// Read what the rail's offer depends on now (a hot wallet's gas, a fee payer's balance),
    /// after a configuration change and on every gas pass.
    fn watch(
        state: &AppState,
        tenant_id: &str,
        config: &Self::Config,
    ) -> impl std::future::Future<Output = ()> + Send;
}

fn key_hex(signer: &alloy::signers::local::PrivateKeySigner) -> String {
    format!("0x{}", alloy::hex::encode(signer.to_bytes()))
}

impl ServerRail for EvmRail {
    const METHOD: &'static str = "evm";
    const SECRET_FIELD: &'static str = "hotWalletKey";
    const DERIVED_FIELD: &'static str = "hotWalletAddress";
    type Settings = EvmSettings;

    fn of(state: &AppState) -> &Self {
        &state.rails.evm
    }
    fn cache(state: &AppState) -> &TtlCache<String, Option<Arc<EvmConfig>>> {
        &state.caches.evm_configs
    }
    fn open(settings: EvmSettings, secret: Option<&str>) -> Result<EvmConfig, ConfigError> {
        EvmConfig::new(settings, secret)
    }
    fn settings(config: &EvmConfig) -> &EvmSettings {
        &config.settings
    }
    fn rpc_url(config: &EvmConfig) -> &str {
        &config.settings.rpc_url
    }
    fn secret(config: &EvmConfig) -> Option<String> {
        config.hot_wallet.as_ref().map(key_hex)
    }
    fn chain_id(verified: &VerifiedEvm) -> u64 {
        verified.chain_id
    }
    async fn payer(
        state: &AppState,
        config: &EvmConfig,
        prepared: &Prepared,
    ) -> Option<alloy::primitives::Address> {
        state.rails.evm.payer(config, prepared).await
    }
    async fn watch(state: &AppState, tenant_id: &str, config: &EvmConfig) {
        check_gas(state, tenant_id, config).await;
    }
}

impl ServerRail for TempoRail {
    const METHOD: &'static str = "tempo";
    const SECRET_FIELD: &'static str = "feePayerKey";
    const DERIVED_FIELD: &'static str = "feePayerAddress";
    type Settings = TempoSettings;

    fn of(state: &AppState) -> &Self {
        &state.rails.tempo
    }
    fn cache(state: &AppState) -> &TtlCache<String, Option<Arc<TempoConfig>>> {
        &state.caches.tempo_configs
    }
    fn open(settings: TempoSettings, secret: Option<&str>) -> Result<TempoConfig, ConfigError> {
        TempoConfig::new(settings, secret)
    }
    fn settings(config: &TempoConfig) -> &TempoSettings {
        &config.settings
    }
    fn rpc_url(config: &TempoConfig) -> &str {
        &config.settings.rpc_url
    }
    fn secret(config: &TempoConfig) -> Option<String> {
        config.fee_payer.as_ref().map(key_hex)
    }
    fn chain_id(verified: &VerifiedTempo) -> u64 {
        verified.chain_id
    }
    async fn payer(
        state: &AppState,
        config: &TempoConfig,
        prepared: &Prepared,
    ) -> Option<alloy::primitives::Address> {
        state.rails.tempo.payer(config, prepared).await
    }
    async fn watch(state: &AppState, tenant_id: &str, config: &TempoConfig) {
        check_fee_payer(state, tenant_id, config).await;
    }
}

/// The row context a sealed secret is bound to.
pub fn sealed_context(tenant_id: &str, method: &str) -> String {
    format!("{tenant_id}/{method}")
}

/// Seal a rail's secret for storage: `{"<SECRET_FIELD>": key}` under the row's context.
pub fn seal_secret<R: ServerRail>(
    state: &AppState,
    tenant_id: &str,
    key: &str,
) -> Result<Option<String>, ApiError> {
    let Some(secrets_key) = state.config.secrets_key.as_ref() else {
        return Ok(None);
    };
    let mut secrets = Map::new();
    secrets.insert(R::SECRET_FIELD.into(), Value::from(key));
    let plain = serde_json::to_vec(&secrets).map_err(|_| ApiError::internal())?;
    secrets_key
        .seal(&plain, &sealed_context(tenant_id, R::METHOD))
        .map(Some)
        .map_err(|_| ApiError::internal())
}

/// A tenant's `evm` configuration, or `None` when it has none (cached briefly).
pub async fn evm_config(
    state: &AppState,
    tenant_id: &str,
) -> Result<Option<Arc<EvmConfig>>, ApiError> {
    rail_config::<EvmRail>(state, tenant_id).await
}

/// A tenant's `tempo` configuration, or `None` when it has none (cached briefly).
pub async fn tempo_config(
    state: &AppState,
    tenant_id: &str,
) -> Result<Option<Arc<TempoConfig>>, ApiError> {
    rail_config::<TempoRail>(state, tenant_id).await
}

/// A tenant's configuration of rail `R`, or `None` when it has none (cached briefly).
pub async fn rail_config<R: ServerRail>(
    state: &AppState,
    tenant_id: &str,
) -> Result<Option<Arc<R::Config>>, ApiError> {
    let key = tenant_id.to_owned();
    if let Some(config) = R::cache(state).get(&key) {
        return Ok(config);
    }
    let config = match state.store.rail_config(tenant_id, R::METHOD).await? {
        None => None,
        Some(row) => Some(Arc::new(open_config::<R>(state, &row)?)),
    };
    R::cache(state).insert(key, config.clone());
    Ok(config)
}

/// Parse a stored `evm` configuration and open its secrets.
pub fn open_evm_config(state: &AppState, row: &RailConfigRow) -> Result<EvmConfig, ApiError> {
    open_config::<EvmRail>(state, row)
}

/// Parse a stored configuration of rail `R` and open its secret.
pub fn open_config<R: ServerRail>(
    state: &AppState,
    row: &RailConfigRow,
) -> Result<R::Config, ApiError> {
    let broken = |what: &str| {
        tracing::error!(tenant = %row.tenant_id, method = R::METHOD, what,
            "a stored rail configuration is unusable");
        ApiError::unavailable(format!(
            "this merchant's {} rail configuration is unusable",
            R::METHOD
        ))
    };
    let settings: R::Settings =
        serde_json::from_str(&row.settings).map_err(|_| broken("settings"))?;
    let secret = match &row.sealed {
        None => None,
        Some(sealed) => {
            let key = state
                .config
                .secrets_key
                .as_ref()
                .ok_or_else(|| broken("no TURNPIKE_SECRETS_KEY"))?;
            let plain = key
                .open(sealed, &sealed_context(&row.tenant_id, &row.method))
                .map_err(|_| broken("secrets do not open"))?;
            let secrets: Map<String, Value> =
                serde_json::from_slice(&plain).map_err(|_| broken("secrets"))?;
            secrets
                .get(R::SECRET_FIELD)
                .and_then(Value::as_str)
                .map(str::to_owned)
        }
    };
    R::open(settings, secret.as_deref()).map_err(|_| broken("validation"))
}

/// The price as a rail sees it.
pub fn price_terms(def: &PriceDefinition) -> PriceTerms<'_> {
    PriceTerms {
        amount: &def.amount,
        amount_minor: def.amount_minor(),
        currency: &def.currency,
        description: def.description.as_deref(),
    }
}

/// How an outside-rail settlement ended for the verify call.
#[derive(Debug)]
pub enum Outcome {
    /// Settled and booked.
    Paid {
        /// The payment.
        payment_id: String,
        /// Receipt `reference`.
        reference: String,
    },
    /// Submitted; the outcome is not known yet (the resolver finishes it).
    Pending {
        /// The payment.
        payment_id: String,
    },
    /// The challenge or the proof was already used.
    Taken,
    /// Refused: nothing moved, the claim is released.
    Refused(Rejection),
}

/// Settle a verified credential on rail `R`: claim its challenge and proof, prepare and record
/// the submission, submit it, and book it once it is final. A zero amount (a `tempo` proof)
/// moves nothing: the payment is claimed as settled at once, with nothing booked.
pub async fn settle_on<R: ServerRail>(
    state: &AppState,
    config: &R::Config,
    mut row: PaymentRow,
    verified: &R::Verified,
) -> Result<Outcome, ApiError> {
    let rail = R::of(state);
    row.payer_tenant_id = None;
    if row.amount == "0" {
        let prepared = match rail.prepare(config, verified).await {
            Ok(prepared) => prepared,
            Err(PrepareError::Rejected(rejection)) => return Ok(Outcome::Refused(rejection)),
            Err(PrepareError::Unavailable(why)) => {
                return Err(ApiError::unavailable(format!(
                    "the {} rail is unavailable; nothing was charged ({why})",
                    R::METHOD
                )));
            }
        };
        row.state = "settled".to_owned();
        row.reference = Some(prepared.reference.clone());
        if !state.store.claim_payment(&row).await? {
            return Ok(Outcome::Taken);
        }
        tracing::info!(payment = %row.id, tenant = %row.tenant_id, method = R::METHOD,
            "zero-amount payment proven");
        return Ok(Outcome::Paid {
            payment_id: row.id,
            reference: prepared.reference,
        });
    }
    row.state = "claimed".to_owned();
    if !state.store.claim_payment(&row).await? {
        // The same credential again after a `202 pending`: its outcome, once; else a replay.
        let owed = state
            .store
            .owed_payment(
                &row.tenant_id,
                &row.challenge_id,
                &row.proof_key,
                state.now_ms(),
            )
            .await?;
        return Ok(match owed {
            Some(Owed::Pending { payment_id }) => Outcome::Pending { payment_id },
            Some(Owed::Settled {
                payment_id,
                reference,
            }) => {
                tracing::info!(payment = %payment_id, method = R::METHOD, "owed receipt delivered");
                Outcome::Paid {
                    payment_id,
                    reference,
                }
            }
            None => Outcome::Taken,
        });
    }
    let payment_id = row.id.clone();
    let prepared = match rail.prepare(config, verified).await {
        Ok(prepared) => prepared,
        Err(err) => {
            state.store.release_payment(&payment_id).await?;
            return match err {
                PrepareError::Rejected(rejection) => Ok(Outcome::Refused(rejection)),
                PrepareError::Unavailable(why) => {
                    tracing::warn!(payment = %payment_id, method = R::METHOD, reason = %why, "rail unavailable");
                    Err(ApiError::unavailable(format!(
                        "the {} rail is unavailable; nothing was charged ({why})",
                        R::METHOD
                    )))
                }
            };
        }
    };
    // Recorded before anything is sent: after a crash the resolver finds and finishes it.
    let record = serde_json::to_string(&prepared).map_err(|_| ApiError::internal())?;
    if !state
        .store
        .record_settlement(&payment_id, &prepared.reference, &record, state.now_ms())
        .await?
    {
        return Err(ApiError::internal());
    }
    let settlement = rail.submit(config, &prepared).await;
    finish(state, &row, settlement).await
}

/// Act on a settlement's outcome: book it, leave it pending, or release the claim.
async fn finish(
    state: &AppState,
    row: &PaymentRow,
    settlement: Settlement,
) -> Result<Outcome, ApiError> {
    match settlement {
        Settlement::Settled { reference } => {
            book(state, row, &reference).await?;
            tracing::info!(payment = %row.id, tenant = %row.tenant_id, method = %row.method, "payment settled");
            Ok(Outcome::Paid {
                payment_id: row.id.clone(),
                reference,
            })
        }
        Settlement::Pending => {
            state.store.mark_pending(&row.id, state.now_ms()).await?;
            tracing::warn!(payment = %row.id, method = %row.method, "settlement outcome unknown; pending");
            Ok(Outcome::Pending {
                payment_id: row.id.clone(),
            })
        }
        Settlement::Failed(rejection) => {
            state.store.release_payment(&row.id).await?;
            tracing::info!(payment = %row.id, reason = %rejection.detail, "settlement failed; claim released");
            Ok(Outcome::Refused(rejection))
        }
    }
}

/// The transfer that books an outside-rail payment.
pub fn rail_payment_id(payment_id: &str) -> TransferId {
    TransferId(ids::derived_u128(&["rail-payment", payment_id]))
}

/// The platform fee on it.
pub fn rail_fee_id(payment_id: &str) -> TransferId {
    TransferId(ids::derived_u128(&["rail-fee", payment_id]))
}

/// Book a payment settled on an outside rail: the rail's clearing account pays the merchant's
/// revenue, and the platform fee moves as a linked transfer, with the payment marked settled in
/// the same transaction. A payment already settled is not booked again.
pub async fn book(state: &AppState, row: &PaymentRow, reference: &str) -> Result<bool, ApiError> {
    let amount: u128 = row.amount.parse().map_err(|_| ApiError::internal())?;
    let clearing = state
        .account(PLATFORM_OWNER, AccountKind::RailClearing, &row.currency)
        .await?;
    let revenue = state
        .account(&row.tenant_id, AccountKind::MerchantRevenue, &row.currency)
        .await?;
    let mut transfers = vec![TransferRequest::Transfer {
        id: rail_payment_id(&row.id),
        debit_account_id: clearing,
        credit_account_id: revenue,
        amount,
        currency: row.currency.clone(),
        timeout_ms: None,
        code: codes::RAIL_PAYMENT,
        user_data: Some(row.id.clone()),
    }];
    let fee = fee_minor(amount, state.config.platform_fee_bps);
    if fee > 0 {
        let fees = state
            .account(PLATFORM_OWNER, AccountKind::PlatformFees, &row.currency)
            .await?;
        transfers.push(TransferRequest::Transfer {
            id: rail_fee_id(&row.id),
            debit_account_id: revenue,
            credit_account_id: fees,
            amount: fee,
            currency: row.currency.clone(),
            timeout_ms: None,
            code: codes::RAIL_FEE,
            user_data: Some(row.id.clone()),
        });
    }
    let guard = LedgerGuard::Settle(Box::new(SettleGuard {
        payment_id: row.id.clone(),
        reference: reference.to_owned(),
    }));
    let results = state
        .engine
        .guarded(guard, transfers)
        .await
        .map_err(|err| {
            tracing::error!(error = %err, "ledger failed while booking a rail payment");
            ApiError::unavailable("the ledger failed; the payment stays pending")
        })?;
    match results {
        Err(GuardRefusal::PaymentTaken) => Ok(false),
        Err(other) => {
            tracing::error!(refusal = ?other, "unexpected refusal booking a rail payment");
            Err(ApiError::internal())
        }
        Ok(results) if results.iter().all(Result::is_ok) => Ok(true),
        Ok(results) => {
            tracing::error!(?results, payment = %row.id, "booking a rail payment failed; left pending");
            Err(ApiError::unavailable(
                "the ledger refused the booking; the payment stays pending",
            ))
        }
    }
}

/// The reversal of an outside-rail payment's booking.
pub fn rail_reversal_id(payment_id: &str) -> TransferId {
    TransferId(ids::derived_u128(&["rail-reversal", payment_id]))
}

/// The reversal of its platform fee.
pub fn rail_fee_reversal_id(payment_id: &str) -> TransferId {
    TransferId(ids::derived_u128(&["rail-fee-reversal", payment_id]))
}

/// The address that paid a settled outside-rail payment (EIP-55), when it can be found: the
/// rail's settlement record, else the chain. `None` for other methods, a tenant without that
/// rail any more, or a chain that does not answer.
pub async fn payer_address(state: &AppState, row: &PaymentRow) -> Result<Option<String>, ApiError> {
    let Some(record) = state
        .store
        .payment_settlement(&row.tenant_id, &row.id)
        .await?
    else {
        return Ok(None);
    };
    let Ok(prepared) = serde_json::from_str::<Prepared>(&record) else {
        tracing::error!(payment = %row.id, "unreadable settlement record");
        return Ok(None);
    };
    let payer = match row.method.as_str() {
        EvmRail::METHOD => payer_on::<EvmRail>(state, row, &prepared).await?,
        TempoRail::METHOD => payer_on::<TempoRail>(state, row, &prepared).await?,
        _ => None,
    };
    Ok(payer.map(|address| address.to_checksum(None)))
}

async fn payer_on<R: ServerRail>(
    state: &AppState,
    row: &PaymentRow,
    prepared: &Prepared,
) -> Result<Option<alloy::primitives::Address>, ApiError> {
    let Some(config) = rail_config::<R>(state, &row.tenant_id).await? else {
        return Ok(None);
    };
    Ok(R::payer(state, &config, prepared).await)
}

/// Reverse the booking of a settled outside-rail payment (its gateway upstream failed after
/// payment): the merchant's revenue net of the fee and the platform fee go back to the rail's
/// clearing account as linked transfers, with the payment marked `refund_due` (naming
/// `payer_address`) in the same transaction. The tokens stay at the merchant's recipient: the
/// merchant owes the payer a refund on chain. True when reversed now, false when the payment
/// was not settled any more (reversed already): nothing is booked twice.
pub async fn reverse(
    state: &AppState,
    row: &PaymentRow,
    payer_address: Option<String>,
) -> Result<bool, ApiError> {
    // What the payment booked, not what the price or the fee rate say now.
    let Some(booked) = crate::refunds::booked(state, row).await? else {
        tracing::error!(payment = %row.id, "a settled rail payment without its booking; not reversed");
        return Err(ApiError::internal());
    };
    let net = booked.net().ok_or_else(ApiError::internal)?;
    // Back to the accounts it came from: the rail's clearing paid the merchant's revenue.
    let (clearing, revenue) = (
        booked.payment.debit_account_id,
        booked.payment.credit_account_id,
    );
    let mut transfers = Vec::with_capacity(2);
    if net > 0 {
        transfers.push(TransferRequest::Transfer {
            id: rail_reversal_id(&row.id),
            debit_account_id: revenue,
            credit_account_id: clearing,
            amount: net,
            currency: booked.payment.currency.clone(),
            timeout_ms: None,
            code: codes::RAIL_REVERSAL,
            user_data: Some(row.id.clone()),
        });
    }
    if let Some(fee) = booked.fee.as_ref().filter(|f| f.amount > 0) {
        transfers.push(TransferRequest::Transfer {
            id: rail_fee_reversal_id(&row.id),
            debit_account_id: fee.credit_account_id,
            credit_account_id: clearing,
            amount: fee.amount,
            currency: fee.currency.clone(),
            timeout_ms: None,
            code: codes::RAIL_FEE_REVERSAL,
            user_data: Some(row.id.clone()),
        });
    }
    let guard = LedgerGuard::RefundDue(Box::new(RefundDueGuard {
        payment_id: row.id.clone(),
        payer_address,
    }));
    let results = state
        .engine
        .guarded(guard, transfers)
        .await
        .map_err(|err| {
            tracing::error!(error = %err, payment = %row.id, "ledger failed while reversing a rail payment");
            ApiError::unavailable("the ledger failed; the payment could not be reversed yet")
        })?;
    match results {
        Err(GuardRefusal::PaymentTaken) => Ok(false),
        Err(other) => {
            tracing::error!(refusal = ?other, "unexpected refusal reversing a rail payment");
            Err(ApiError::internal())
        }
        Ok(results) if results.iter().all(Result::is_ok) => Ok(true),
        Ok(results) => {
            tracing::error!(?results, payment = %row.id, "reversing a rail payment failed; left settled");
            Err(ApiError::unavailable(
                "the ledger refused the reversal; the payment stays settled",
            ))
        }
    }
}

/// One resolver pass over every rail's payments not settled yet; returns how many it finished.
pub async fn resolve_once(state: &AppState) -> Result<usize, ApiError> {
    Ok(resolve_rail::<EvmRail>(state).await? + resolve_rail::<TempoRail>(state).await?)
}

/// One resolver pass over rail `R`'s payments not settled yet.
pub async fn resolve_rail<R: ServerRail>(state: &AppState) -> Result<usize, ApiError> {
    let now_ms = state.now_ms();
    let mut finished = 0;
    let candidates = state
        .store
        .unsettled_payments(
            R::METHOD,
            now_ms - PENDING_RESOLVE_AFTER_MS,
            RESOLVE_BATCH_MAX,
        )
        .await?;
    for unsettled in candidates {
        let row = &unsettled.payment;
        let abandoned = row.updated_at < now_ms - CLAIM_ABANDONED_AFTER_MS;
        if row.state == "claimed" && !abandoned {
            continue; // a verify call is still on it
        }
        let Some(record) = unsettled.settlement.as_deref() else {
            // Claimed and abandoned before anything was recorded: nothing was sent.
            state.store.release_payment(&row.id).await?;
            finished += 1;
            continue;
        };
        let Ok(prepared) = serde_json::from_str::<Prepared>(record) else {
            tracing::error!(payment = %row.id, "unreadable settlement record; left for an operator");
            continue;
        };
        let Some(config) = rail_config::<R>(state, &row.tenant_id).await? else {
            tracing::warn!(payment = %row.id, method = R::METHOD,
                "pending payment but the tenant has no such rail any more");
            continue;
        };
        let settlement = R::of(state)
            .resolve(&config, &prepared, now_ms.div_euclid(1000))
            .await;
        if settlement == Settlement::Pending {
            state.store.mark_pending(&row.id, state.now_ms()).await?;
            continue;
        }
        finish(state, row, settlement).await?;
        finished += 1;
    }
    Ok(finished)
}

/// One gas pass: read every `evm` hot wallet's native balance and every `tempo` fee payer's
/// fee-token balance.
pub async fn check_gas_once(state: &AppState) -> Result<(), ApiError> {
    watch_all::<EvmRail>(state).await?;
    watch_all::<TempoRail>(state).await
}

async fn watch_all<R: ServerRail>(state: &AppState) -> Result<(), ApiError> {
    for row in state
        .store
        .rail_configs(R::METHOD, GAS_CHECK_BATCH_MAX)
        .await?
    {
        if let Ok(config) = open_config::<R>(state, &row) {
            R::watch(state, &row.tenant_id, &config).await;
        }
    }
    Ok(())
}

/// Read one fee payer's balance: below its floor, `tempo` is not offered and the alert metric
/// is raised.
pub async fn check_fee_payer(state: &AppState, tenant_id: &str, config: &TempoConfig) {
    match state.rails.tempo.refresh_fee_balance(config).await {
        Ok(Some(balance)) => {
            let low = state.rails.tempo.fee_low(config);
            if low {
                tracing::warn!(tenant = %tenant_id, chain_id = config.settings.chain_id,
                    "tempo fee payer below its floor: tempo challenges are not offered");
            }
            if let Some(address) = config.settings.fee_payer_address {
                state.gas.record_fee_payer(
                    tenant_id,
                    config.settings.chain_id,
                    address,
                    balance,
                    low,
                );
            }
        }
        Ok(None) => {}
        Err(err) => {
            tracing::warn!(tenant = %tenant_id, error = %err, "reading the fee payer's balance failed");
        }
    }
}

/// Read one hot wallet's balance: below its floor, `evm` is not offered and the alert metric
/// is raised.
pub async fn check_gas(state: &AppState, tenant_id: &str, config: &EvmConfig) {
    match state.rails.evm.refresh_gas(config).await {
        Ok(Some(balance)) => {
            let low = state.rails.evm.gas_low(config);
            if low {
                tracing::warn!(tenant = %tenant_id, chain_id = config.settings.chain_id,
                    "evm hot wallet below its gas floor: evm challenges are not offered");
            }
            state.gas.record(tenant_id, config, balance, low);
        }
        Ok(None) => {}
        Err(err) => {
            tracing::warn!(tenant = %tenant_id, error = %err, "reading hot wallet gas failed");
        }
    }
}

/// Start the resolver and the gas watcher.
pub fn spawn_jobs(state: AppState) {
    let resolver = state.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(RESOLVE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(err) = resolve_once(&resolver).await {
                tracing::warn!(error = ?err, "resolver pass failed");
            }
        }
    });
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(GAS_CHECK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(err) = check_gas_once(&state).await {
                tracing::warn!(error = ?err, "gas check failed");
            }
        }
    });
}

/// (tenant, chain id, hot wallet address) → (balance in wei, below the floor).
type GasMap = std::collections::BTreeMap<(String, u64, String), (String, bool)>;

/// The last gas reading of each hot wallet and fee payer, for `/metrics`.
#[derive(Debug, Default)]
pub struct GasReadings {
    readings: std::sync::Mutex<GasMap>,
    fee_payers: std::sync::Mutex<GasMap>,
}

impl GasReadings {
    fn record_fee_payer(
        &self,
        tenant_id: &str,
        chain_id: u64,
        address: alloy::primitives::Address,
        balance: alloy::primitives::U256,
        low: bool,
    ) {
        if let Ok(mut map) = self.fee_payers.lock() {
            map.insert(
                (tenant_id.to_owned(), chain_id, address.to_string()),
                (balance.to_string(), low),
            );
        }
    }

    fn record(
        &self,
        tenant_id: &str,
        config: &EvmConfig,
        balance: alloy::primitives::U256,
        low: bool,
    ) {
        let Some(address) = config.settings.hot_wallet_address else {
            return;
        };
        if let Ok(mut map) = self.readings.lock() {
            map.insert(
                (
                    tenant_id.to_owned(),
                    config.settings.chain_id,
                    address.to_string(),
                ),
                (balance.to_string(), low),
            );
        }
    }

    /// Prometheus text lines: `turnpike_evm_hot_wallet_low` and
    /// `turnpike_tempo_fee_payer_low` (the alerts) and the balances.
    pub fn metrics(&self) -> String {
        let mut out = self.evm_metrics();
        out.push_str(
            "# HELP turnpike_tempo_fee_payer_low 1 when a tempo fee payer is below its floor (tempo is not offered).\n\
             # TYPE turnpike_tempo_fee_payer_low gauge\n",
        );
        let mut balances = String::from(
            "# HELP turnpike_tempo_fee_payer_balance The fee payer's fee-token balance (base units) at the last check.\n\
             # TYPE turnpike_tempo_fee_payer_balance gauge\n",
        );
        if let Ok(map) = self.fee_payers.lock() {
            for ((tenant, chain, address), (balance, low)) in map.iter() {
                let labels =
                    format!("tenant=\"{tenant}\",chain_id=\"{chain}\",address=\"{address}\"");
                out.push_str(&format!(
                    "turnpike_tempo_fee_payer_low{{{labels}}} {}\n",
                    u8::from(*low)
                ));
                balances.push_str(&format!(
                    "turnpike_tempo_fee_payer_balance{{{labels}}} {balance}\n"
                ));
            }
        }
        out + &balances
    }

    fn evm_metrics(&self) -> String {
        let mut out = String::from(
            "# HELP turnpike_evm_hot_wallet_low 1 when an evm hot wallet is below its gas floor (evm is not offered).\n\
             # TYPE turnpike_evm_hot_wallet_low gauge\n",
        );
        let mut balances = String::from(
            "# HELP turnpike_evm_hot_wallet_balance_wei The hot wallet's native balance at the last check.\n\
             # TYPE turnpike_evm_hot_wallet_balance_wei gauge\n",
        );
        if let Ok(map) = self.readings.lock() {
            for ((tenant, chain, address), (balance, low)) in map.iter() {
                let labels =
                    format!("tenant=\"{tenant}\",chain_id=\"{chain}\",address=\"{address}\"");
                out.push_str(&format!(
                    "turnpike_evm_hot_wallet_low{{{labels}}} {}\n",
                    u8::from(*low)
                ));
                balances.push_str(&format!(
                    "turnpike_evm_hot_wallet_balance_wei{{{labels}}} {balance}\n"
                ));
            }
        }
        out + &balances
    }
}
