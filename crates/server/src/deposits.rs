//! Deposits: stablecoins sent to an organisation's deposit address credit its Turnpike balance
//! (the `payer_balance` account the `turnpike` method spends).
//!
//! The platform custodies deposited tokens: the operator configures the chain, its RPC, the
//! confirmations and the tokens (`PUT /v1/admin/deposits/evm`), and each tenant gets its own
//! address whose key is sealed with the server's [`SecretsKey`](crate::secrets::SecretsKey),
//! bound to the tenant (so the platform can sweep it later; sweeping is not done here).
//!
//! The watcher polls `eth_getLogs` for ERC-20 `Transfer` logs of the configured tokens to any
//! deposit address, only in blocks with the configured confirmations, from a cursor persisted per
//! chain, in bounded ranges. Each log `(chainId, txHash, logIndex)` is credited once: its
//! `deposits` row and its ledger transfer (custody clearing → the tenant's balance, with an id
//! derived from the log) commit in one ledger transaction guarded by the row's primary key
//! ([`LedgerGuard::Deposit`]). Replicas may scan the same blocks, the operator may rescan: a
//! credited log is refused, never credited twice. The cursor only moves after a whole range was
//! credited, and only from where this pass found it. An RPC that does not answer only delays.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use alloy::primitives::{Address, B256};
use alloy::providers::RootProvider;
use alloy::signers::local::PrivateKeySigner;
use serde::{Deserialize, Serialize};
use turnpike_ledger::{AccountKind, TransferId, TransferRequest};
use turnpike_rails::rpc::{self, LOG_BLOCK_RANGE_MAX, LOG_RECIPIENTS_MAX, TransferLog};
use turnpike_store::{DepositRow, GuardRefusal, LedgerGuard};

use crate::error::ApiError;
use crate::ids;
use crate::state::{AppState, PLATFORM_OWNER};

/// The only deposit method so far: ERC-20 tokens on an EVM chain.
pub const METHOD: &str = "evm";
/// Ledger code of a deposit credit (beside [`crate::method_turnpike::codes`] and
/// [`crate::rails::codes`]).
pub const DEPOSIT_CODE: u16 = 12;
/// How often the watcher looks for new confirmed blocks.
pub const SCAN_INTERVAL: Duration = Duration::from_secs(1);
/// Most block ranges (of up to [`LOG_BLOCK_RANGE_MAX`] blocks) one pass scans.
pub const RANGES_PER_PASS_MAX: u32 = 10;
/// Largest chain id accepted (JSON-safe integers).
pub const CHAIN_ID_MAX: u64 = (1 << 53) - 1;
/// Most confirmations the operator may ask for.
pub const CONFIRMATIONS_MAX: u32 = 64;
/// Most tokens one configuration may list.
pub const TOKENS_MAX: usize = 16;
/// Most decimals a token may have.
pub const DECIMALS_MAX: u8 = 36;

/// One ERC-20 token accepted for deposits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DepositToken {
    /// The token contract.
    #[serde(serialize_with = "checksummed")]
    pub address: Address,
    /// Its `decimals()` (informational: one minor unit is one base unit).
    pub decimals: u8,
}

/// The operator's `evm` deposit configuration, as stored and returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EvmDepositSettings {
    /// EIP-155 chain id.
    pub chain_id: u64,
    /// JSON-RPC endpoint (http or https).
    pub rpc_url: String,
    /// Blocks that must include and follow a transfer before it is credited (at least 1).
    pub confirmations: u32,
    /// Ledger currency → the token credited in it (one minor unit per base unit).
    pub tokens: BTreeMap<String, DepositToken>,
}

/// The body of `PUT /v1/admin/deposits/evm`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EvmDepositInput {
    /// See [`EvmDepositSettings::chain_id`].
    pub chain_id: u64,
    /// See [`EvmDepositSettings::rpc_url`].
    pub rpc_url: String,
    /// See [`EvmDepositSettings::confirmations`].
    pub confirmations: u32,
    /// See [`EvmDepositSettings::tokens`].
    pub tokens: BTreeMap<String, DepositToken>,
    /// Scan (again) from this block; default: a chain new to this server starts at its latest
    /// block, a known chain keeps its cursor.
    #[serde(default)]
    pub start_block: Option<u64>,
}

fn checksummed<S: serde::Serializer>(address: &Address, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&address.to_checksum(None))
}

impl EvmDepositInput {
    /// Validate: the settings and the start block, or why not (naming the field).
    pub fn validate(self) -> Result<(EvmDepositSettings, Option<i64>), String> {
        if self.chain_id == 0 || self.chain_id > CHAIN_ID_MAX {
            return Err(format!("`chainId` must be 1 to {CHAIN_ID_MAX}"));
        }
        let scheme = self.rpc_url.split_once("://");
        if !matches!(scheme, Some(("http" | "https", rest)) if !rest.is_empty() && !rest.starts_with('/'))
        {
            return Err("`rpcUrl` must be an http or https URL".into());
        }
        if self.confirmations == 0 || self.confirmations > CONFIRMATIONS_MAX {
            return Err(format!("`confirmations` must be 1 to {CONFIRMATIONS_MAX}"));
        }
        if self.tokens.is_empty() || self.tokens.len() > TOKENS_MAX {
            return Err(format!("`tokens` must list 1 to {TOKENS_MAX} tokens"));
        }
        let mut seen = Vec::with_capacity(self.tokens.len());
        for (currency, token) in &self.tokens {
            let code_ok = (1..=16).contains(&currency.len())
                && currency
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
            if !code_ok {
                return Err(format!(
                    "`tokens` key `{currency}` must be a lowercase currency code (a-z, 0-9, 1 to 16)"
                ));
            }
            if token.address == Address::ZERO {
                return Err(format!("`tokens.{currency}.address` must not be zero"));
            }
            if seen.contains(&token.address) {
                return Err(format!(
                    "`tokens.{currency}.address` is listed for another currency too"
                ));
            }
            seen.push(token.address);
            if token.decimals > DECIMALS_MAX {
                return Err(format!(
                    "`tokens.{currency}.decimals` must be at most {DECIMALS_MAX}"
                ));
            }
        }
        let start_block = match self.start_block {
            None => None,
            Some(block) => {
                Some(i64::try_from(block).map_err(|_| "`startBlock` is too large".to_owned())?)
            }
        };
        Ok((
            EvmDepositSettings {
                chain_id: self.chain_id,
                rpc_url: self.rpc_url,
                confirmations: self.confirmations,
                tokens: self.tokens,
            },
            start_block,
        ))
    }
}

/// The stored `evm` deposit configuration, if the operator set one.
pub async fn evm_settings(state: &AppState) -> Result<Option<EvmDepositSettings>, ApiError> {
    let Some(row) = state.store.deposit_config(METHOD).await? else {
        return Ok(None);
    };
    serde_json::from_str(&row.settings).map(Some).map_err(|_| {
        tracing::error!("the stored deposit configuration is unreadable");
        ApiError::internal()
    })
}

/// The row context a deposit address's sealed key is bound to (never a rail's context).
pub fn sealed_context(tenant_id: &str) -> String {
    format!("{tenant_id}/deposit/{METHOD}")
}

/// A new deposit key from the operating system's randomness.
pub fn new_deposit_key() -> PrivateKeySigner {
    loop {
        // Out of range (zero, or at least the curve order) with probability ~2^-128.
        if let Ok(signer) = PrivateKeySigner::from_bytes(&B256::from(ids::random_bytes::<32>())) {
            return signer;
        }
    }
}

/// The ledger owner of the platform's custody of deposits on a chain.
pub fn custody_owner(chain_id: u64) -> String {
    format!("{PLATFORM_OWNER}/deposits/{METHOD}/{chain_id}")
}

/// The ledger transfer that credits a log (the same log, the same id: idempotent).
pub fn deposit_transfer_id(chain_id: u64, tx_hash: &B256, log_index: u64) -> TransferId {
    TransferId(ids::derived_u128(&[
        "deposit",
        METHOD,
        &chain_id.to_string(),
        &tx_hash.to_string(),
        &log_index.to_string(),
    ]))
}

/// Start the watcher.
pub fn spawn_watcher(state: AppState) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SCAN_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Consecutive failed passes: the first is logged, then one in every
        // `SCAN_FAILURE_LOG_EVERY` (an RPC down for an hour is 60 lines, not 3,600).
        let mut failing: u32 = 0;
        loop {
            tick.tick().await;
            match scan_once(&state).await {
                Ok(()) => {
                    if failing > 0 {
                        tracing::info!(failed_passes = failing, "deposit scan recovered");
                    }
                    failing = 0;
                }
                Err(err) => {
                    failing = failing.saturating_add(1);
                    if logs_scan_failure(failing) {
                        tracing::warn!(error = %err, failed_passes = failing,
                            "deposit scan failed; it is retried");
                    }
                }
            }
        }
    });
}

/// One failed pass in this many is logged while the scan keeps failing.
pub const SCAN_FAILURE_LOG_EVERY: u32 = 60;

/// Whether the `failing`-th consecutive failed pass is logged: the first, then one in every
/// [`SCAN_FAILURE_LOG_EVERY`].
fn logs_scan_failure(failing: u32) -> bool {
    failing == 1 || failing.is_multiple_of(SCAN_FAILURE_LOG_EVERY)
}

/// One watcher pass: scan up to [`RANGES_PER_PASS_MAX`] ranges of confirmed blocks.
pub async fn scan_once(state: &AppState) -> Result<(), ApiError> {
    let Some(settings) = evm_settings(state).await? else {
        return Ok(());
    };
    let provider = state
        .rails
        .deposits_rpc
        .get(&settings.rpc_url)
        .map_err(|why| ApiError::unavailable(why.0))?;
    for _ in 0..RANGES_PER_PASS_MAX {
        if !scan_range(state, &settings, &provider).await? {
            break;
        }
    }
    Ok(())
}

/// Scan the next range of confirmed blocks and credit what it holds; true when more confirmed
/// blocks follow it.
async fn scan_range(
    state: &AppState,
    settings: &EvmDepositSettings,
    provider: &RootProvider,
) -> Result<bool, ApiError> {
    let chain_id = i64::try_from(settings.chain_id).map_err(|_| ApiError::internal())?;
    let Some(cursor) = state.store.deposit_cursor(METHOD, chain_id).await? else {
        return Ok(false);
    };
    let from_block = u64::try_from(cursor).map_err(|_| ApiError::internal())?;
    // The head is read before the addresses: an address created after this read cannot have
    // received anything in a block up to the head.
    let head = rpc::block_number(provider)
        .await
        .map_err(|why| ApiError::unavailable(why.0))?;
    state.deposits.record_head(settings.chain_id, head);
    // The last block with enough confirmations (its own block counts as one).
    let Some(safe) = (head + 1).checked_sub(u64::from(settings.confirmations)) else {
        return Ok(false);
    };
    if from_block > safe {
        state.deposits.record_cursor(settings.chain_id, from_block);
        return Ok(false);
    }
    let to_block = safe.min(from_block + LOG_BLOCK_RANGE_MAX - 1);
    let currencies: HashMap<Address, &str> = settings
        .tokens
        .iter()
        .map(|(currency, token)| (token.address, currency.as_str()))
        .collect();
    let tokens: Vec<Address> = currencies.keys().copied().collect();
    let page_len = i64::try_from(LOG_RECIPIENTS_MAX).map_err(|_| ApiError::internal())?;
    let mut after: Option<String> = None;
    loop {
        let page = state
            .store
            .deposit_addresses_page(METHOD, after.as_deref(), page_len)
            .await?;
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        let owners: HashMap<Address, &str> = page
            .iter()
            .filter_map(|(address, tenant)| Some((address.parse().ok()?, tenant.as_str())))
            .collect();
        let recipients: Vec<Address> = owners.keys().copied().collect();
        let logs = rpc::transfer_logs(provider, &tokens, &recipients, from_block, to_block)
            .await
            .map_err(|why| ApiError::unavailable(why.0))?;
        for log in &logs {
            let (Some(tenant_id), Some(currency)) =
                (owners.get(&log.transfer.to), currencies.get(&log.token))
            else {
                continue;
            };
            credit(state, settings.chain_id, tenant_id, currency, log).await?;
        }
        if page.len() < LOG_RECIPIENTS_MAX {
            break;
        }
    }
    let next = to_block + 1;
    let next_i64 = i64::try_from(next).map_err(|_| ApiError::internal())?;
    let moved = state
        .store
        .advance_deposit_cursor(METHOD, chain_id, cursor, next_i64, state.now_ms())
        .await?;
    if !moved {
        // Another replica moved it, or the operator reset it: read it again next time.
        return Ok(false);
    }
    state.deposits.record_cursor(settings.chain_id, next);
    Ok(to_block < safe)
}

/// Credit one log to a tenant's balance, once.
async fn credit(
    state: &AppState,
    chain_id: u64,
    tenant_id: &str,
    currency: &str,
    log: &TransferLog,
) -> Result<(), ApiError> {
    let Some(amount) = u128::try_from(log.transfer.value).ok().filter(|a| *a > 0) else {
        tracing::warn!(chain_id, tx = %log.tx_hash, log_index = log.log_index,
            "a deposit of zero or of more than 2^128 base units is not credited");
        return Ok(());
    };
    let id = deposit_transfer_id(chain_id, &log.tx_hash, log.log_index);
    let custody = state
        .account(
            &custody_owner(chain_id),
            AccountKind::RailClearing,
            currency,
        )
        .await?;
    let balance = state
        .account(tenant_id, AccountKind::PayerBalance, currency)
        .await?;
    let int = |n: u64| i64::try_from(n).map_err(|_| ApiError::internal());
    let row = DepositRow {
        chain_id: int(chain_id)?,
        tx_hash: log.tx_hash.to_string(),
        log_index: int(log.log_index)?,
        tenant_id: tenant_id.to_owned(),
        method: METHOD.to_owned(),
        block_number: int(log.block_number)?,
        token: log.token.to_checksum(None),
        sender: log.transfer.from.to_checksum(None),
        address: log.transfer.to.to_checksum(None),
        currency: currency.to_owned(),
        amount: amount.to_string(),
        transfer_id: id.0.to_string(),
        credited_at: state.now_ms(),
    };
    let transfer = TransferRequest::Transfer {
        id,
        debit_account_id: custody,
        credit_account_id: balance,
        amount,
        currency: currency.to_owned(),
        timeout_ms: None,
        code: DEPOSIT_CODE,
        user_data: Some(format!(
            "deposit:{chain_id}:{}:{}",
            log.tx_hash, log.log_index
        )),
    };
    let result = state
        .engine
        .guarded(LedgerGuard::Deposit(Box::new(row)), vec![transfer])
        .await
        .map_err(|err| {
            tracing::error!(error = %err, "ledger failed while crediting a deposit");
            ApiError::unavailable("the ledger failed; the deposit is credited later")
        })?;
    match result {
        Err(GuardRefusal::DepositCredited) => Ok(()),
        Err(other) => {
            tracing::error!(refusal = ?other, "unexpected refusal crediting a deposit");
            Err(ApiError::internal())
        }
        Ok(results) if results.iter().all(Result::is_ok) => {
            tracing::info!(tenant = %tenant_id, chain_id, tx = %log.tx_hash,
                log_index = log.log_index, amount = %amount, currency, "deposit credited");
            state.deposits.credited.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        Ok(results) => {
            tracing::error!(?results, tx = %log.tx_hash, "the ledger refused a deposit credit");
            Err(ApiError::unavailable(
                "the ledger refused a deposit credit; it is retried",
            ))
        }
    }
}

/// What this replica's watcher last saw, for `/metrics`.
#[derive(Debug, Default)]
pub struct DepositReadings {
    /// Chain id → (latest block seen, next block to scan).
    chains: Mutex<BTreeMap<u64, (u64, u64)>>,
    /// Deposits this replica credited since it started.
    pub credited: AtomicU64,
}

impl DepositReadings {
    fn record_head(&self, chain_id: u64, head: u64) {
        if let Ok(mut map) = self.chains.lock() {
            map.entry(chain_id).or_default().0 = head;
        }
    }

    fn record_cursor(&self, chain_id: u64, next_block: u64) {
        if let Ok(mut map) = self.chains.lock() {
            map.entry(chain_id).or_default().1 = next_block;
        }
    }

    /// Prometheus text lines.
    pub fn metrics(&self) -> String {
        let mut heads = String::from(
            "# HELP turnpike_deposits_head_block The latest block the deposit watcher saw.\n\
             # TYPE turnpike_deposits_head_block gauge\n",
        );
        let mut cursors = String::from(
            "# HELP turnpike_deposits_next_block The next block the deposit watcher scans (every block before it is scanned).\n\
             # TYPE turnpike_deposits_next_block gauge\n",
        );
        if let Ok(map) = self.chains.lock() {
            for (chain_id, (head, next)) in map.iter() {
                heads.push_str(&format!(
                    "turnpike_deposits_head_block{{chain_id=\"{chain_id}\"}} {head}\n"
                ));
                cursors.push_str(&format!(
                    "turnpike_deposits_next_block{{chain_id=\"{chain_id}\"}} {next}\n"
                ));
            }
        }
        format!(
            "{heads}{cursors}# HELP turnpike_deposits_credited_total Deposits this replica credited.\n\
             # TYPE turnpike_deposits_credited_total counter\n\
             turnpike_deposits_credited_total {}\n",
            self.credited.load(Ordering::Relaxed)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_scan_is_logged_first_and_then_once_a_minute() {
        let logged: Vec<u32> = (1..=3 * SCAN_FAILURE_LOG_EVERY)
            .filter(|n| logs_scan_failure(*n))
            .collect();
        assert_eq!(
            logged,
            [
                1,
                SCAN_FAILURE_LOG_EVERY,
                2 * SCAN_FAILURE_LOG_EVERY,
                3 * SCAN_FAILURE_LOG_EVERY
            ]
        );
        assert_eq!(
            SCAN_INTERVAL * SCAN_FAILURE_LOG_EVERY,
            Duration::from_secs(60)
        );
    }
}
