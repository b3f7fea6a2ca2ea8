//! JSON-RPC to EVM-compatible chains, shared by the `evm` and `tempo` rails: one client per
//! endpoint with bounded timeouts, broadcasts classified into accepted / rejected / unknown, and
//! receipts counted only with enough confirmations.
//!
//! Receipts are read field by field ([`MinedReceipt`]) rather than as alloy's Ethereum receipt
//! type, which refuses transaction types it does not know (Tempo's `0x76`).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use alloy::primitives::{Address, B256, Bytes, U64, U256};
use alloy::providers::{Provider, RootProvider};
use alloy::rpc::client::RpcClient;
use alloy::rpc::types::{Filter, Log};
use alloy::sol_types::SolEvent;
use alloy::transports::http::Http;
use alloy::transports::{RpcError, TransportErrorKind};
use serde::Deserialize;

use crate::Unavailable;
use crate::outbound::OutboundPolicy;

/// Longest one JSON-RPC call may take.
pub const CALL_TIMEOUT_MS: u64 = 5_000;
/// Interval between receipt polls while waiting.
pub const POLL_INTERVAL_MS: u64 = 100;
/// The first pause of [`wait_receipt`]; each next one doubles up to [`POLL_INTERVAL_MS`].
pub const POLL_FIRST_MS: u64 = 5;

/// Providers by endpoint URL, created once, connecting only where the [`OutboundPolicy`]
/// allows (the default: public addresses only).
#[derive(Debug, Default)]
pub struct Providers {
    by_url: Mutex<HashMap<String, RootProvider>>,
    policy: OutboundPolicy,
}

impl Providers {
    /// Providers that connect under `policy`.
    pub fn new(policy: OutboundPolicy) -> Self {
        Self {
            by_url: Mutex::default(),
            policy,
        }
    }

    /// The provider for `url` (http or https). A URL the policy refuses (an IP literal outside
    /// it, userinfo, a numeric host in another form) gets none; a DNS name's addresses are
    /// filtered at every connection.
    pub fn get(&self, url: &str) -> Result<RootProvider, Unavailable> {
        let mut map = self.by_url.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(provider) = map.get(url) {
            return Ok(provider.clone());
        }
        self.policy
            .check_url(url)
            .map_err(|err| Unavailable(format!("the rail's RPC URL {err}")))?;
        let parsed = url
            .parse()
            .map_err(|_| Unavailable("the rail's RPC URL is invalid".into()))?;
        let client = self
            .policy
            .guard(reqwest::Client::builder())
            .timeout(Duration::from_millis(CALL_TIMEOUT_MS))
            .connect_timeout(Duration::from_millis(CALL_TIMEOUT_MS))
            .build()
            .map_err(|_| Unavailable("no HTTP client for the rail's RPC".into()))?;
        let http = Http::with_client(client, parsed);
        let local = http.guess_local();
        let provider = RootProvider::new(RpcClient::new(http, local));
        map.insert(url.to_owned(), provider.clone());
        Ok(provider)
    }
}

/// What a broadcast achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Broadcast {
    /// The node took it (or already had it).
    Accepted,
    /// The node refused it for good (invalid, reverted, underfunded): the message says why.
    Rejected(String),
    /// Unknown: the node was unreachable or answered ambiguously.
    Unknown,
}

/// Send a signed transaction.
pub async fn broadcast(provider: &RootProvider, raw: &Bytes) -> Broadcast {
    match provider.send_raw_transaction(raw).await {
        Ok(_) => Broadcast::Accepted,
        Err(err) => classify_send_error(&err),
    }
}

fn classify_send_error(err: &RpcError<TransportErrorKind>) -> Broadcast {
    let Some(payload) = err.as_error_resp() else {
        return Broadcast::Unknown;
    };
    let message = payload.message.to_ascii_lowercase();
    if message.contains("already known") || message.contains("already imported") {
        Broadcast::Accepted
    } else if message.contains("nonce too low") || message.contains("replacement") {
        // Perhaps this very transaction was mined already: only its receipt can tell.
        Broadcast::Unknown
    } else {
        Broadcast::Rejected(payload.message.to_string())
    }
}

/// A mined transaction's receipt, the fields the rails read (`eth_getTransactionReceipt`), for
/// any transaction type.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MinedReceipt {
    /// `transactionHash`.
    pub transaction_hash: B256,
    /// `blockNumber` (absent while pending on some nodes).
    #[serde(default)]
    pub block_number: Option<U64>,
    /// `status`: 1 success, 0 reverted (post-Byzantium).
    #[serde(default)]
    pub status: Option<U64>,
    /// `logs`.
    #[serde(default)]
    pub logs: Vec<alloy::rpc::types::Log>,
}

impl MinedReceipt {
    /// True when the transaction succeeded.
    pub fn success(&self) -> bool {
        self.status == Some(U64::from(1))
    }

    /// The logs without their block context.
    pub fn primitive_logs(&self) -> Vec<alloy::primitives::Log> {
        self.logs.iter().map(|log| log.inner.clone()).collect()
    }
}

/// `eth_getTransactionReceipt`, `None` when the node knows no mined transaction `hash`.
pub async fn get_receipt(
    provider: &RootProvider,
    hash: B256,
) -> Result<Option<MinedReceipt>, Unavailable> {
    provider
        .raw_request::<_, Option<MinedReceipt>>("eth_getTransactionReceipt".into(), (hash,))
        .await
        .map_err(|_| Unavailable("the chain's RPC did not answer".into()))
}

/// What the chain says about a transaction.
#[derive(Debug, Clone)]
pub enum ReceiptState {
    /// Mined, successful, with enough confirmations.
    Confirmed(Box<MinedReceipt>),
    /// Mined and reverted (final once confirmed).
    Reverted,
    /// Mined but fewer confirmations than required so far.
    Unconfirmed,
    /// Not mined (not known, or still in the mempool).
    NotFound,
    /// The node did not answer.
    Unreachable,
}

/// The state of `hash`, requiring `confirmations` blocks (the including block counts as one).
pub async fn receipt_state(
    provider: &RootProvider,
    hash: B256,
    confirmations: u32,
) -> ReceiptState {
    let receipt = match get_receipt(provider, hash).await {
        Ok(Some(receipt)) => receipt,
        Ok(None) => return ReceiptState::NotFound,
        Err(_) => return ReceiptState::Unreachable,
    };
    let Some(included) = receipt.block_number.map(|n| n.to::<u64>()) else {
        return ReceiptState::NotFound;
    };
    if confirmations > 1 {
        match provider.get_block_number().await {
            Ok(head) if head.saturating_sub(included) + 1 >= u64::from(confirmations) => {}
            Ok(_) => return ReceiptState::Unconfirmed,
            Err(_) => return ReceiptState::Unreachable,
        }
    }
    if receipt.success() {
        ReceiptState::Confirmed(Box::new(receipt))
    } else {
        ReceiptState::Reverted
    }
}

/// Poll [`receipt_state`] until it is final (confirmed or reverted) or `wait_ms` passes; returns
/// the last state seen.
pub async fn wait_receipt(
    provider: &RootProvider,
    hash: B256,
    confirmations: u32,
    wait_ms: u64,
) -> ReceiptState {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
    // A fast chain (or a local one) mines within milliseconds: poll soon, then back off to
    // POLL_INTERVAL_MS so a slow chain is not asked more than ten times a second.
    let mut pause_ms = POLL_FIRST_MS;
    loop {
        let state = receipt_state(provider, hash, confirmations).await;
        if matches!(state, ReceiptState::Confirmed(_) | ReceiptState::Reverted)
            || tokio::time::Instant::now() >= deadline
        {
            return state;
        }
        tokio::time::sleep(Duration::from_millis(pause_ms)).await;
        pause_ms = (pause_ms * 2).min(POLL_INTERVAL_MS);
    }
}

alloy::sol! {
    /// ERC-20 `Transfer` (topic `0xddf252ad…`).
    event Transfer(address indexed from, address indexed to, uint256 value);
}

/// One ERC-20 transfer found in a receipt's logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenTransfer {
    /// Sender.
    pub from: Address,
    /// Recipient.
    pub to: Address,
    /// Base units.
    pub value: U256,
}

/// The `Transfer` logs emitted by `token` in `receipt` (logs of other contracts never count).
pub fn token_transfers(receipt: &MinedReceipt, token: Address) -> Vec<TokenTransfer> {
    receipt
        .logs
        .iter()
        .filter(|log| log.address() == token)
        .filter_map(decode_transfer)
        .collect()
}

/// The ERC-20 `Transfer` a log carries, if it is one (three topics, a 32-byte value).
pub fn decode_transfer(log: &Log) -> Option<TokenTransfer> {
    let topics = log.topics();
    if topics.len() != 3 || topics[0] != Transfer::SIGNATURE_HASH {
        return None;
    }
    let data = &log.data().data;
    (data.len() == 32).then(|| TokenTransfer {
        from: Address::from_word(topics[1]),
        to: Address::from_word(topics[2]),
        value: U256::from_be_slice(data),
    })
}

/// Most addresses one [`transfer_logs`] call filters recipients by (one `eth_getLogs` topic
/// list; providers limit its length).
pub const LOG_RECIPIENTS_MAX: usize = 500;
/// Most blocks one [`transfer_logs`] call spans (providers limit `eth_getLogs` ranges).
pub const LOG_BLOCK_RANGE_MAX: u64 = 1_000;

/// One ERC-20 transfer found by [`transfer_logs`], with where the chain put it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferLog {
    /// The token contract that emitted it.
    pub token: Address,
    /// The transfer.
    pub transfer: TokenTransfer,
    /// The block that includes it.
    pub block_number: u64,
    /// Its transaction.
    pub tx_hash: B256,
    /// Its index among the block's logs.
    pub log_index: u64,
}

/// The chain's latest block number.
pub async fn block_number(provider: &RootProvider) -> Result<u64, Unavailable> {
    provider
        .get_block_number()
        .await
        .map_err(|_| Unavailable("the RPC did not answer eth_blockNumber".into()))
}

/// The chain id the RPC serves.
pub async fn chain_id(provider: &RootProvider) -> Result<u64, Unavailable> {
    provider
        .get_chain_id()
        .await
        .map_err(|_| Unavailable("the RPC did not answer eth_chainId".into()))
}

/// The `Transfer` logs of `tokens` to any of `recipients` in blocks `from_block..=to_block`
/// (`eth_getLogs`), in chain order. At most [`LOG_RECIPIENTS_MAX`] recipients and
/// [`LOG_BLOCK_RANGE_MAX`] blocks per call. Removed (reorged) logs and logs without a block,
/// transaction or index are left out.
pub async fn transfer_logs(
    provider: &RootProvider,
    tokens: &[Address],
    recipients: &[Address],
    from_block: u64,
    to_block: u64,
) -> Result<Vec<TransferLog>, Unavailable> {
    assert!(
        recipients.len() <= LOG_RECIPIENTS_MAX,
        "transfer_logs: too many recipients"
    );
    assert!(
        from_block <= to_block && to_block - from_block < LOG_BLOCK_RANGE_MAX,
        "transfer_logs: bad block range"
    );
    if tokens.is_empty() || recipients.is_empty() {
        return Ok(Vec::new());
    }
    let topic = |a: &Address| a.into_word();
    let filter = Filter::new()
        .address(tokens.to_vec())
        .event_signature(Transfer::SIGNATURE_HASH)
        .topic2(recipients.iter().map(topic).collect::<Vec<B256>>())
        .from_block(from_block)
        .to_block(to_block);
    let logs = provider
        .get_logs(&filter)
        .await
        .map_err(|_| Unavailable("the RPC did not answer eth_getLogs".into()))?;
    let mut found: Vec<TransferLog> = logs
        .iter()
        .filter(|log| !log.removed)
        .filter_map(|log| {
            Some(TransferLog {
                token: log.address(),
                transfer: decode_transfer(log)?,
                block_number: log.block_number?,
                tx_hash: log.transaction_hash?,
                log_index: log.log_index?,
            })
        })
        .filter(|found| tokens.contains(&found.token) && recipients.contains(&found.transfer.to))
        .collect();
    found.sort_by_key(|log| (log.block_number, log.log_index));
    Ok(found)
}

/// How long a submission waits for its receipt before it is left pending.
pub const SUBMIT_WAIT_MS: u64 = 20_000;
/// How long a `hash` credential's transaction may take to appear before it is refused.
pub const HASH_APPEAR_WAIT_MS: u64 = 3_000;

/// How a submission ended, as far as the chain told within [`SUBMIT_WAIT_MS`].
#[derive(Debug, Clone)]
pub enum Submitted {
    /// The node refused the signed transaction for good (its message).
    Refused(String),
    /// A client-broadcast hash that is not mined (within [`HASH_APPEAR_WAIT_MS`]).
    NotMined,
    /// Mined and reverted.
    Reverted,
    /// Mined, successful, with enough confirmations.
    Confirmed(Box<MinedReceipt>),
    /// Not known yet: leave it pending.
    Unknown,
}

/// Broadcast `raw` (a transaction the server submits) or, without it, give a client-broadcast
/// `hash` a moment to be mined; then wait for `hash`'s receipt with `confirmations`.
pub async fn submit_and_wait(
    provider: &RootProvider,
    raw: Option<&Bytes>,
    hash: B256,
    confirmations: u32,
) -> Submitted {
    if let Some(raw) = raw {
        if let Broadcast::Rejected(message) = broadcast(provider, raw).await {
            return Submitted::Refused(message);
        }
    } else if let ReceiptState::NotFound =
        wait_receipt(provider, hash, 1, HASH_APPEAR_WAIT_MS).await
    {
        return Submitted::NotMined;
    }
    match wait_receipt(provider, hash, confirmations, SUBMIT_WAIT_MS).await {
        ReceiptState::Reverted => Submitted::Reverted,
        ReceiptState::Confirmed(receipt) => Submitted::Confirmed(receipt),
        _ => Submitted::Unknown,
    }
}

/// At most 200 characters of a node's message (it never holds credential bytes, but it is
/// foreign text).
pub fn short(message: &str) -> String {
    message.chars().take(200).collect()
}
